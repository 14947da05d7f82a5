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

/// `fledge check` refuses what `fledge run` would refuse beyond the file:
/// a short cookie secret or admin token, a folder without a usable
/// certificate; what is not set or not there where it runs is a note.
#[test]
fn check_refuses_what_run_would_refuse_and_notes_what_is_not_here() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let path = dir.path().join("fledge.yaml");
    let write = |certs_dir: &std::path::Path| {
        let text = format!(
            "listen: \"127.0.0.1:0\"\nstate_dir: \"{}\"\ncookies:\n  secret_env: FLEDGE_TEST_SECRET\nadmin:\n  token_env: FLEDGE_TEST_TOKEN\ntls:\n  listen: \"127.0.0.1:18443\"\n  certs_dir: \"{}\"\npools:\n  v17: {{ workers: [\"127.0.0.1:18069\"] }}\ntenants:\n  acme:\n    hosts: [\"acme.example.com\"]\n    stable: v17\n",
            dir.path().join("state").display(),
            certs_dir.display()
        );
        std::fs::write(&path, text).unwrap();
    };
    let check_with = |vars: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fledge"));
        cmd.args(["check", "--config"]).arg(&path);
        cmd.env_remove("FLEDGE_TEST_SECRET")
            .env_remove("FLEDGE_TEST_TOKEN");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let long = "0123456789abcdef0123";
    // Nothing here: notes, and the file is fine.
    write(&certs);
    let (ok, text) = check_with(&[]);
    assert!(ok, "{text}");
    assert!(text.contains("`FLEDGE_TEST_SECRET`, not set here"), "{text}");
    assert!(text.contains("`FLEDGE_TEST_TOKEN`, not set here"), "{text}");
    assert!(text.contains("is not here"), "{text}");
    // Set but short: refused, as `fledge run` refuses them.
    let (ok, text) = check_with(&[("FLEDGE_TEST_SECRET", "short"), ("FLEDGE_TEST_TOKEN", long)]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("cookie secret in `FLEDGE_TEST_SECRET` is shorter than 16 bytes"),
        "{text}"
    );
    let (ok, text) = check_with(&[("FLEDGE_TEST_SECRET", long), ("FLEDGE_TEST_TOKEN", "short")]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("admin token in `FLEDGE_TEST_TOKEN` is shorter than 16 bytes"),
        "{text}"
    );
    // A certificates folder with nothing usable in it.
    std::fs::create_dir(&certs).unwrap();
    std::fs::write(certs.join("acme.crt"), "not a certificate").unwrap();
    let (ok, text) = check_with(&[("FLEDGE_TEST_SECRET", long), ("FLEDGE_TEST_TOKEN", long)]);
    assert!(!ok, "{text}");
    assert!(text.contains("tls.certs_dir: no usable certificate"), "{text}");
    // `fledge run` refuses the same file for the same reason.
    let run = Command::new(env!("CARGO_BIN_EXE_fledge"))
        .args(["run", "--config"])
        .arg(&path)
        .env("FLEDGE_TEST_SECRET", long)
        .env("FLEDGE_TEST_TOKEN", long)
        .env("FLEDGE_LOG", "error")
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("no usable certificate"));
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

/// Issue 23: a state directory someone else can write to, and files planted
/// in it, are refused at start with the reason; nothing is written through
/// a planted symlink.
mod state_dir {
    use std::os::unix::fs::{symlink, PermissionsExt as _};
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    fn config(dir: &Path, state: &Path, token: &str) -> std::path::PathBuf {
        let path = dir.join("fledge.yaml");
        let port = crate::util::free_port();
        let admin = crate::util::free_port();
        std::fs::write(
            &path,
            format!(
                "listen: \"127.0.0.1:{port}\"\nstate_dir: \"{}\"\nadmin:\n  listen: \"127.0.0.1:{admin}\"\n{token}pools:\n  a: {{ workers: [\"127.0.0.1:9\"] }}\n  b: {{ workers: [\"127.0.0.1:9\"] }}\ntenants:\n  acme:\n    hosts: [\"acme.example.com\"]\n    stable: a\n    canary: b\n    canary_weight: 10\n",
                state.display()
            ),
        )
        .unwrap();
        path
    }

    /// `fledge run` on `config`: its exit status and output if it stopped
    /// within 10 s (200 polls 50 ms apart), `None` if it was still running (then it is killed).
    fn run(config: &Path) -> Option<(bool, String)> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fledge"))
            .args(["run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if child.try_wait().unwrap().is_some() {
                let out = child.wait_with_output().unwrap();
                let text =
                    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
                return Some((out.status.success(), text));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn refused(config: &Path, why: &[&str]) {
        let (ok, text) = run(config).expect("fledge started where it must refuse");
        assert!(!ok, "{text}");
        for w in why {
            assert!(text.contains(w), "`{w}` not in:\n{text}");
        }
    }

    #[test]
    fn a_state_dir_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        chmod(&state, 0o777);
        let config = config(dir.path(), &state, "");
        refused(
            &config,
            &[
                "refusing state_dir",
                "writable by everyone",
                &state.display().to_string(),
            ],
        );
        chmod(&state, 0o775);
        refused(&config, &["writable by its group"]);
        // Owned by someone else (only root can make that here).
        chmod(&state, 0o700);
        if nix_chown(&state, 12_345) {
            refused(&config, &["owned by uid 12345"]);
        }
    }

    /// `chown path uid` through the `chown` command; false where not allowed.
    fn nix_chown(path: &Path, uid: u32) -> bool {
        Command::new("chown")
            .arg(uid.to_string())
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    #[test]
    fn planted_tokens_and_symlinks_are_refused_or_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        chmod(&state, 0o700);
        let config = config(dir.path(), &state, "");
        // A token someone left readable (or planted) is not the admin token.
        let token = state.join("admin.token");
        std::fs::write(&token, "planted-token-0123456789").unwrap();
        chmod(&token, 0o644);
        refused(&config, &["refusing", "admin.token", "0644"]);
        std::fs::remove_file(&token).unwrap();
        let planted = dir.path().join("planted");
        std::fs::write(&planted, "planted-token-0123456789").unwrap();
        chmod(&planted, 0o600);
        symlink(&planted, &token).unwrap();
        refused(&config, &["symlink"]);
        std::fs::remove_file(&token).unwrap();

        // The journal through a symlink: refused, the target untouched.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let _ = std::fs::remove_file(state.join("journal.jsonl"));
        symlink(&victim, state.join("journal.jsonl")).unwrap();
        refused(&config, &["journal"]);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        std::fs::remove_file(state.join("journal.jsonl")).unwrap();

        // The old fixed temporary name as a symlink: fledge starts, saves its
        // states, and writes nothing through it.
        symlink(&victim, state.join(".rollouts.json.tmp")).unwrap();
        assert!(run(&config).is_none(), "fledge did not keep running");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(state.join("rollouts.json").is_file());
        // What it made itself is private.
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state.join("admin.token")), 0o600);
        assert_eq!(mode(&state.join("rollouts.json")), 0o600);
        assert_eq!(mode(&state.join("journal.jsonl")), 0o600);

        // An operator's token file others can write to is refused too.
        let theirs = dir.path().join("token");
        std::fs::write(&theirs, "an-operator-token-0123456789").unwrap();
        chmod(&theirs, 0o666);
        let with_file = super::state_dir::config(
            dir.path(),
            &state,
            &format!("  token_file: \"{}\"\n", theirs.display()),
        );
        refused(&with_file, &["admin.token_file", "writable by everyone"]);
    }
}

/// Every command line the demo prints works as printed: each runs in bash
/// (with `pipefail`, so a `grep` that finds nothing fails it) against the
/// demo itself, on ports the test picked, and prints something.
#[test]
fn the_demos_command_lines_do_what_they_say() {
    use std::io::{BufRead, BufReader};
    let port = crate::util::free_port;
    let (listen, tls, admin) = (port(), port(), port());
    let (w17, ws17, w18, ws18) = (port(), port(), port(), port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.yaml");
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.yaml"))
        .unwrap()
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{listen}"))
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{tls}"))
        .replace("127.0.0.1:18069", &format!("127.0.0.1:{w17}"))
        .replace("127.0.0.1:18072", &format!("127.0.0.1:{ws17}"))
        .replace("127.0.0.1:19069", &format!("127.0.0.1:{w18}"))
        .replace("127.0.0.1:19072", &format!("127.0.0.1:{ws18}"))
        + &format!("admin:\n  listen: \"127.0.0.1:{admin}\"\n");
    std::fs::write(&path, demo).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fledge"))
        .args(["demo", "--config"])
        .arg(&path)
        .env("FLEDGE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Read on a thread of its own to the end, so that the demo never
    // writes to a closed pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(30)) {
        if line.starts_with("Ctrl-C") {
            break;
        }
        lines.push(line);
    }
    // The lines are printed as the server starts: wait for its listeners.
    let up = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    for _ in 0..200 {
        if up(listen) && up(tls) && up(admin) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let commands: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("  "))
        .filter(|l| !l.starts_with(' '))
        .collect();
    assert!(commands.len() >= 12, "{lines:#?}");
    let exports: Vec<&str> = commands
        .iter()
        .copied()
        .filter(|c| c.starts_with("export "))
        .collect();
    let mut failed = Vec::new();
    for command in commands.iter().filter(|c| !c.starts_with("export ")) {
        let script = format!("set -o pipefail\n{}\n{command}\n", exports.join("\n"));
        let out = Command::new("bash").args(["-c", &script]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || text.trim().is_empty() {
            failed.push(format!(
                "{command}\n  -> {:?} {text}{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // The split line shows both versions.
        if command.contains("seq 1000") && !(text.contains("canary") && text.contains("stable")) {
            failed.push(format!("{command}\n  -> {text}"));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
