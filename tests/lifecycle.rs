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
