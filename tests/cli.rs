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

mod ctl {
    use std::process::Command;

    use crate::util::{mock, TestProxy, ADMIN_TOKEN};

    fn ctl(proxy: &TestProxy, token: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_fledge"))
            .arg("ctl")
            .args(["--admin", &proxy.admin.to_string()])
            .args(args)
            .env("FLEDGE_ADMIN_TOKEN", token)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ctl_drives_the_canary_with_tables_or_json() {
        let (s, c) = (mock("17.0").await, mock("18.0").await);
        let proxy = TestProxy::start(&crate::util::two_pools(&[&s], &[&c], 10.0, ""));
        let (ok, text) = ctl(&proxy, ADMIN_TOKEN, &["status"]);
        assert!(ok, "{text}");
        assert!(
            text.contains("TENANT") && text.contains("acme") && text.contains("progressing"),
            "{text}"
        );

        let (ok, text) = ctl(&proxy, ADMIN_TOKEN, &["weight", "acme", "30"]);
        assert!(ok && text.contains("30%"), "{text}");
        let (ok, text) = ctl(&proxy, ADMIN_TOKEN, &["--json", "status"]);
        assert!(ok, "{text}");
        let status: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(status["tenants"][0]["weight"], 30.0);

        for (action, state) in [
            ("pause", "paused"),
            ("resume", "progressing"),
            ("rollback", "rolled_back"),
            ("resume", "progressing"),
            ("promote", "promoted"),
        ] {
            let (ok, text) = ctl(&proxy, ADMIN_TOKEN, &[action, "acme"]);
            assert!(ok && text.contains(state), "{action}: {text}");
        }
        let (ok, text) = ctl(&proxy, ADMIN_TOKEN, &["reload"]);
        assert!(ok && text.contains("reload"), "{text}");
        let (ok, text) = ctl(&proxy, ADMIN_TOKEN, &["journal"]);
        assert!(
            ok && text.contains("rolled_back") && text.contains("api"),
            "{text}"
        );

        // Refusals say what is wrong.
        let (ok, text) = ctl(&proxy, ADMIN_TOKEN, &["pause", "nobody"]);
        assert!(!ok && text.contains("404") && text.contains("nobody"), "{text}");
        let (ok, text) = ctl(&proxy, ADMIN_TOKEN, &["rollback", "acme"]);
        assert!(ok, "{text}");
        let (ok, text) = ctl(&proxy, ADMIN_TOKEN, &["weight", "acme", "5"]);
        assert!(
            !ok && text.contains("409") && text.contains("resume it first"),
            "{text}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ctl_explains_a_wrong_token_and_an_unreachable_proxy() {
        let (s, c) = (mock("17.0").await, mock("18.0").await);
        let proxy = TestProxy::start(&crate::util::two_pools(&[&s], &[&c], 10.0, ""));
        let (ok, text) = ctl(&proxy, "not-the-token-at-all", &["status"]);
        assert!(
            !ok && text.contains("refused the token") && text.contains("FLEDGE_ADMIN_TOKEN"),
            "{text}"
        );
        let out = Command::new(env!("CARGO_BIN_EXE_fledge"))
            .args([
                "ctl",
                "--admin",
                &format!("127.0.0.1:{}", crate::util::free_port()),
                "status",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && text.contains("cannot reach the admin API"),
            "{text}"
        );
    }
}
