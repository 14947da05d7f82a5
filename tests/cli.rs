//! `fledge check`: the contract scripts rely on.

use std::process::Command;

fn check(path: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fledge"))
        .args(["check", "--config", path])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn check_accepts_the_shipped_configs() {
    for path in ["config/fledge.example.yaml", "config/demo.yaml"] {
        let (ok, text) = check(path);
        assert!(ok, "{path}: {text}");
        assert!(text.contains(": ok"), "{text}");
    }
}

#[test]
fn check_refuses_a_bad_file_naming_file_line_and_key() {
    let path = "tests/fixtures/config/invalid_unknown_stable_pool.yaml";
    let (ok, text) = check(path);
    assert!(!ok);
    assert!(
        text.contains(&format!("{path}:23: tenants.beta.stable: unknown pool `v19`")),
        "{text}"
    );
    let (ok, text) = check("tests/fixtures/config/does-not-exist.yaml");
    assert!(!ok);
    assert!(text.contains("cannot read"), "{text}");
}
