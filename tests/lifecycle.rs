//! Process lifecycle: Pingora's graceful upgrade (`fledge run --upgrade`,
//! then SIGQUIT to the old process) under load, and SIGTERM.

use std::time::Duration;

use crate::util::{eventually, mock, start_browser_load, two_pools, TestProxy};

const HOST: &str = "acme.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_upgrade_under_load_fails_no_request_and_keeps_the_canary_state() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    // A short grace keeps the test short; requests here take milliseconds.
    let config = two_pools(&[&s], &[&c], 20.0, "") + "timeouts:\n  shutdown_grace_seconds: 3\n";
    let mut proxy = TestProxy::start(&config);
    // A weight set through the API: the new process must serve it too.
    let r = proxy
        .admin("PUT", "/api/v1/tenants/acme/weight", r#"{"weight": 35}"#)
        .await;
    assert_eq!(r.status, 200);
    let load = start_browser_load(proxy.addr, HOST, 200);
    assert!(eventually(10, || async { load.get(&load.stats.sent) > 100 }).await);

    // One upgrade here; FLEDGE_TEST_UPGRADES=10 for the figure in the notes.
    let upgrades: usize = std::env::var("FLEDGE_TEST_UPGRADES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let first = load.get(&load.stats.sent);
    for _ in 0..upgrades {
        let old = proxy.pid();
        tokio::task::block_in_place(|| proxy.upgrade());
        assert_ne!(proxy.pid(), old);
        // The load goes on against the new process alone.
        let after = load.get(&load.stats.sent);
        assert!(eventually(10, || async { load.get(&load.stats.sent) > after + 100 }).await);
    }
    eprintln!(
        "{upgrades} upgrades under load: {} requests, {} failed, {} without an HTTP answer (refused or reset), {} sent again after their idle connection closed under them",
        load.get(&load.stats.sent) - first,
        load.get(&load.stats.failed),
        load.get(&load.stats.transport_errors),
        load.get(&load.stats.retried)
    );

    assert_eq!(
        load.get(&load.stats.failed),
        0,
        "requests failed:\n{}",
        proxy.log()
    );
    assert_eq!(load.get(&load.stats.transport_errors), 0);
    assert_eq!(
        proxy.metric("fledge_canary_weight{tenant=\"acme\"}").await,
        Some(35.0)
    );
    // Every request answered is counted once, by one process or the other:
    // the new process started from the old one's counters and added what
    // the old one served while it drained.
    let stats = std::sync::Arc::clone(&load.stats);
    drop(load);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = stats.sent.load(std::sync::atomic::Ordering::Relaxed);
    // A page load sent again may have been counted twice (as a client
    // abort, then answered), or once.
    let retried = stats.retried.load(std::sync::atomic::Ordering::Relaxed);
    let counted = || async {
        proxy
            .metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("fledge_requests_total{tenant=\"acme\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let carried = eventually(10, || async {
        let n = counted().await;
        n >= sent as f64 && n <= (sent + retried) as f64
    })
    .await;
    assert!(
        carried,
        "{} requests answered, {} counted by the new process:\n{}",
        sent,
        counted().await,
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_slow_requests_in_flight_finish() {
    use fledge::mock_odoo::Knobs;
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let config = two_pools(&[&s], &[&c], 0.0, "") + "timeouts:\n  shutdown_grace_seconds: 3\n";
    let mut proxy = TestProxy::start(&config);
    s.set_knobs(Knobs {
        latency_ms: 1500,
        ..Knobs::default()
    });
    let addr = proxy.addr;
    let slow: Vec<_> = (0..5)
        .map(|i| {
            tokio::spawn(async move {
                crate::util::Client::new(addr)
                    .get(HOST, &format!("/web/login?slow={i}"), &[])
                    .await
                    .status
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    proxy.terminate();
    for request in slow {
        assert_eq!(request.await.unwrap(), 200, "{}", proxy.log());
    }
    // Gone after the grace period (3 s) and Pingora's runtime shutdown.
    let exited = tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(15)));
    assert!(exited, "still running 15 s after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_kept_alive_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let s = mock("17.0").await;
    let config = crate::util::one_worker(s.addr(), "timeouts:\n  shutdown_grace_seconds: 20\n");
    let proxy = TestProxy::start(&config);
    // Idle after one request, and after three (the wait between requests
    // is the same one for a connection's whole life).
    let mut idle = Vec::new();
    for requests in [1, 3] {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        for _ in 0..requests {
            tcp.write_all(b"GET /web/login HTTP/1.1\r\nHost: acme.example.com\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(crate::util::response_status(&mut tcp).await, Some(200));
        }
        idle.push(tcp);
    }
    proxy.terminate();
    // Closed well inside the 20 s grace period, without an answer.
    for mut tcp in idle {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "an idle connection outlived the shutdown: {read:?}\n{}",
            proxy.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_given_during_shutdown_says_connection_close() {
    use fledge::mock_odoo::Knobs;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let s = mock("17.0").await;
    let config = crate::util::one_worker(s.addr(), "timeouts:\n  shutdown_grace_seconds: 10\n");
    let proxy = TestProxy::start(&config);
    s.set_knobs(Knobs {
        latency_ms: 1500,
        ..Knobs::default()
    });
    // A kept-alive client whose request is with the worker when the
    // shutdown begins.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"GET /web/login HTTP/1.1\r\nHost: acme.example.com\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    proxy.terminate();
    // The answer comes, says the connection closes, and it does.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), tcp.read_to_end(&mut answer)).await;
    assert!(matches!(read, Ok(Ok(_))), "{read:?}\n{}", proxy.log());
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    let head = answer.split("\r\n\r\n").next().unwrap_or_default();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.lines().any(|l| l == "connection: close"),
        "an answer during shutdown kept its connection alive:\n{head}"
    );
}

/// Kills whatever process `state_dir/fledge.pid` names when dropped: the
/// processes `fledge upgrade` starts are nobody's children here.
struct KillServing(std::path::PathBuf);

impl Drop for KillServing {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("fledge.pid")) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", pid.trim()])
                .status();
        }
    }
}

fn sigquit(pid: u32) {
    let quit = std::process::Command::new("kill")
        .args(["-QUIT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(quit.success());
}

fn serving_pid(proxy: &TestProxy) -> u32 {
    std::fs::read_to_string(proxy.state_dir().join("fledge.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// `fledge upgrade --config config`, with the environment the proxy runs in.
async fn fledge_upgrade(config: std::path::PathBuf, log: std::path::PathBuf) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fledge"))
            .args(["upgrade", "--wait-seconds", "20", "--config"])
            .arg(&config)
            .arg("--output")
            .arg(&log)
            .env("FLEDGE_TEST_ADMIN_TOKEN", crate::util::ADMIN_TOKEN)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

/// Issue 23: an upgrade that cannot complete never takes fledge down. A new
/// process that cannot start (its environment lacks the admin token), then
/// SIGQUIT: the old one refuses it and serves on, no request refused or
/// failed. `fledge upgrade` with a broken file exits non-zero and changes
/// nothing; with a good one, five upgrades in a row under load fail no
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_that_cannot_complete_never_takes_fledge_down() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let config = two_pools(&[&s], &[&c], 20.0, "") + "timeouts:\n  shutdown_grace_seconds: 2\n";
    let mut proxy = TestProxy::start(&config);
    let _cleanup = KillServing(proxy.state_dir());
    let load = start_browser_load(proxy.addr, HOST, 200);
    assert!(eventually(10, || async { load.get(&load.stats.sent) > 100 }).await);

    // The successor dies at start: no FLEDGE_TEST_ADMIN_TOKEN.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_fledge"))
        .args(["run", "--upgrade", "--config"])
        .arg(proxy.config_path())
        .env_remove("FLEDGE_TEST_ADMIN_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    let before = load.get(&load.stats.sent);
    sigquit(proxy.pid());
    // Past Pingora's 5 s of accepting after a hand-over: still serving.
    assert!(
        !proxy.wait_exit(Duration::from_secs(7)),
        "SIGQUIT took fledge down:\n{}",
        proxy.log()
    );
    assert!(load.get(&load.stats.sent) > before + 500, "the load stopped");
    assert_eq!(
        proxy
            .metric("fledge_upgrades_total{result=\"no_successor\"}")
            .await,
        Some(1.0)
    );
    assert!(proxy.log().contains("SIGQUIT refused"), "{}", proxy.log());

    // A new process that said it waits, then never took the sockets (a
    // live process that is no fledge stands for it): Pingora cannot send
    // them, and the old process takes charge again and serves on.
    let mut impostor = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(
        proxy.state_dir().join("upgrade.waiting"),
        impostor.id().to_string(),
    )
    .unwrap();
    let _ = std::fs::remove_file(proxy.state_dir().join("upgrade.sock"));
    let before = load.get(&load.stats.sent);
    sigquit(proxy.pid());
    let not_taken = eventually(20, || async {
        proxy.metric("fledge_upgrades_total{result=\"not_taken\"}").await == Some(1.0)
    })
    .await;
    let _ = impostor.kill();
    let _ = impostor.wait();
    assert!(not_taken, "{}", proxy.log());
    assert!(!proxy.wait_exit(Duration::from_secs(1)), "{}", proxy.log());
    assert!(load.get(&load.stats.sent) > before + 500, "the load stopped");
    // In charge again: an operator's change is applied.
    let r = proxy
        .admin("PUT", "/api/v1/tenants/acme/weight", r#"{"weight": 30}"#)
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        proxy.metric("fledge_canary_weight{tenant=\"acme\"}").await,
        Some(30.0)
    );
    let _ = std::fs::remove_file(proxy.state_dir().join("upgrade.waiting"));

    // A broken file: refused before anything starts.
    let broken = proxy.dir.path().join("broken.yaml");
    let text = std::fs::read_to_string(proxy.config_path()).unwrap();
    std::fs::write(
        &broken,
        text.replace("canary_weight: 20\n", "canary_weight: 200\n"),
    )
    .unwrap();
    let log = proxy.dir.path().join("upgrades.log");
    let (ok, out) = fledge_upgrade(broken, log.clone()).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("broken.yaml") && out.contains("canary_weight"),
        "{out}"
    );
    assert_eq!(serving_pid(&proxy), proxy.pid());

    // Five good upgrades in a row, under load.
    let mut serving = proxy.pid();
    for _ in 0..5 {
        let (ok, out) = fledge_upgrade(proxy.config_path(), log.clone()).await;
        assert!(ok, "{out}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        let now = serving_pid(&proxy);
        assert_ne!(now, serving);
        assert!(out.contains(&format!("pid {now} serves")), "{out}");
        serving = now;
        let after = load.get(&load.stats.sent);
        assert!(eventually(10, || async { load.get(&load.stats.sent) > after + 100 }).await);
    }
    assert_eq!(
        load.get(&load.stats.failed),
        0,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(load.get(&load.stats.transport_errors), 0);
}
