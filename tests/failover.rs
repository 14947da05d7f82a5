//! Dead canary workers, POSTs that must not be replayed, WebSocket workers,
//! kept-alive worker connections.

use fledge::mock_odoo::{Knobs, Options};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{
    call_kw, dead_addr, eventually, mock, mock_with, one_worker, two_pools, Client, TestProxy,
};

const HOST: &str = "acme.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_canary_workers_down_every_request_succeeds_on_stable_and_the_canary_is_rolled_back() {
    let s = mock("17.0").await;
    // Two canary workers that refuse connections: nothing listens there.
    let ((_a, a), (_b, b)) = (dead_addr(), dead_addr());
    let dead = format!(
        r#"listen: "{{listen}}"
threads: 2
pools:
  v17: {{ workers: ["{}"] }}
  v18: {{ workers: ["{}", "{}"], health_check: {{ interval_ms: 200 }} }}
tenants:
  acme:
    hosts: ["acme.example.com"]
    stable: v17
    canary: v18
    canary_weight: 100
"#,
        s.addr(),
        a,
        b
    );
    let proxy = TestProxy::start(&dead);
    let client = Client::new(proxy.addr);
    for i in 0..200 {
        let r = if i % 2 == 0 {
            client
                .get(HOST, "/web/login", &[("cookie", &format!("session_id=u{i}"))])
                .await
        } else {
            client
                .post_json(HOST, "/web/dataset/call_kw/res.partner/read", &[], &call_kw(i))
                .await
        };
        assert_eq!(r.status, 200, "request {i}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.version(), "stable");
        assert_eq!(r.header("x-odoo-version"), Some("17.0"));
    }
    // Every POST reached stable exactly once.
    assert_eq!(s.stats().posts, 100);
    // A canary whose workers are all down is a failing release: every
    // request routed to it counted a failed connect, and the policy rolled
    // it back. A breach seen again counts only with new requests, so the
    // tenant's traffic goes on (as a live one's would) until it is.
    let failures = proxy
        .metric("fledge_requests_total{tenant=\"acme\",version=\"canary\",outcome=\"connect_failure\"}")
        .await;
    assert!(failures >= Some(50.0), "{failures:?}");
    let rolled_back = crate::util::eventually(10, || async {
        let r = client.get(HOST, "/web/login", &[]).await;
        assert_eq!((r.status.as_u16(), r.version()), (200, "stable"));
        proxy
            .metric("fledge_canary_state{tenant=\"acme\",state=\"rolled_back\"}")
            .await
            == Some(1.0)
    })
    .await;
    assert!(rolled_back, "{}", proxy.metrics().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_reached_a_worker_is_never_sent_again() {
    let s = mock("17.0").await;
    // The canary reads each request, then drops the connection unanswered.
    let mut crashing = Options::new("18.0");
    crashing.knobs = Knobs {
        close_rate: 1.0,
        ..Knobs::default()
    };
    let c = mock_with(crashing).await;
    let proxy = TestProxy::start(&two_pools(&[&s], &[&c], 100.0, ""));
    let client = Client::new(proxy.addr);
    for i in 0..20 {
        let r = client
            .post_json(
                HOST,
                "/web/dataset/call_kw/sale.order/action_confirm",
                &[],
                &call_kw(i),
            )
            .await;
        assert_eq!(r.status, 502, "request {i}");
    }
    assert_eq!(c.stats().posts, 20, "each POST reached the canary once");
    assert_eq!(s.stats().posts, 0, "a POST was replayed on stable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_longpolling_go_to_the_websocket_workers() {
    let http = mock("17.0").await;
    let mut ws_options = Options::new("17.0");
    ws_options.longpoll_hold = std::time::Duration::from_millis(100);
    let ws = mock_with(ws_options).await;
    let plain = mock("17.0").await;
    let config = format!(
        r#"listen: "{{listen}}"
threads: 2
pools:
  gevent: {{ workers: ["{}"], websocket_workers: ["{}"] }}
  plain: {{ workers: ["{}"] }}
tenants:
  acme:
    hosts: ["acme.example.com"]
    stable: gevent
  beta:
    hosts: ["beta.example.com"]
    stable: plain
"#,
        http.addr(),
        ws.addr(),
        plain.addr()
    );
    let proxy = TestProxy::start(&config);
    let client = Client::new(proxy.addr);

    let r = client.get(HOST, "/longpolling/poll", &[]).await;
    assert_eq!(r.header("x-odoo-worker"), Some(ws.addr().to_string().as_str()));
    let r = client.get(HOST, "/web/login", &[]).await;
    assert_eq!(r.header("x-odoo-worker"), Some(http.addr().to_string().as_str()));

    for (host, worker) in [(HOST, &ws), ("beta.example.com", &plain)] {
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let (mut socket, resp) = tokio_tungstenite::client_async(format!("ws://{host}/websocket"), tcp)
            .await
            .unwrap();
        assert_eq!(resp.status(), 101);
        assert_eq!(resp.headers()["x-fledge-version"], "stable");
        socket.send(Message::Text("ping".into())).await.unwrap();
        let echo = socket.next().await.unwrap().unwrap();
        assert_eq!(echo, Message::Text("ping".into()));
        assert_eq!(worker.stats().websockets, 1, "{host}");
    }
    assert_eq!(http.stats().websockets, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_failing_in_a_row_is_ejected_but_never_the_last_one() {
    let (good, bad, lonely) = (mock("17.0").await, mock("17.0").await, mock("17.0").await);
    let failing = Knobs {
        error_rate: 1.0,
        ..Knobs::default()
    };
    bad.set_knobs(failing.clone());
    lonely.set_knobs(failing);
    let config = format!(
        r#"listen: "{{listen}}"
threads: 2
pools:
  two: {{ workers: ["{}", "{}"] }}
  one: {{ workers: ["{}"] }}
tenants:
  acme:
    hosts: ["{HOST}"]
    stable: two
  beta:
    hosts: ["beta.example.com"]
    stable: one
"#,
        good.addr(),
        bad.addr(),
        lonely.addr()
    );
    let proxy = TestProxy::start(&config);
    let client = Client::new(proxy.addr);

    // Round robin sends every other request to the failing worker until its
    // fifth failure in a row; then it is left out.
    let mut failed = 0;
    for _ in 0..100 {
        if client.get(HOST, "/web/login", &[]).await.status != 200 {
            failed += 1;
        }
    }
    assert_eq!(failed, 5, "failed requests");
    assert_eq!(bad.stats().requests, 5);
    assert_eq!(good.stats().requests, 95);
    assert_eq!(
        proxy.metric("fledge_worker_ejections_total{pool=\"two\"}").await,
        Some(1.0)
    );

    // The only worker of a pool stays in it, failing or not: its 500s reach
    // the client as they are, never a 503 for an empty pool.
    for _ in 0..20 {
        assert_eq!(
            client.get("beta.example.com", "/web/login", &[]).await.status,
            500
        );
    }
    assert_eq!(lonely.stats().requests, 20);
    assert_eq!(
        proxy.metric("fledge_worker_ejections_total{pool=\"one\"}").await,
        Some(0.0)
    );
}

/// A worker speaking plain HTTP/1.1 keep-alive that counts the connections
/// that carried a request. With `idle_end`, it ends a connection that has
/// been idle that long after an answer the way a server whose keep-alive
/// timeout ran out does (it stops writing), then counts when the proxy
/// closes its end.
struct KeptAliveWorker {
    addr: SocketAddr,
    used: Arc<AtomicU64>,
    closed_by_proxy: Arc<AtomicU64>,
}

async fn kept_alive_worker(idle_end: Option<Duration>) -> KeptAliveWorker {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let used = Arc::new(AtomicU64::new(0));
    let closed_by_proxy = Arc::new(AtomicU64::new(0));
    let (u, c) = (used.clone(), closed_by_proxy.clone());
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let (used, closed_by_proxy) = (u.clone(), c.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut first = true;
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 4096];
                        let read = match idle_end {
                            Some(idle) if !first => tokio::time::timeout(idle, conn.read(&mut chunk)).await,
                            _ => Ok(conn.read(&mut chunk).await),
                        };
                        match read {
                            Ok(Ok(0)) | Ok(Err(_)) => return,
                            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                            Err(_) => {
                                // Idle too long: stop writing, wait for the proxy to close.
                                conn.shutdown().await.unwrap();
                                if let Ok(0) = conn.read(&mut chunk).await {
                                    closed_by_proxy.fetch_add(1, Relaxed);
                                }
                                return;
                            }
                        }
                    }
                    if first {
                        used.fetch_add(1, Relaxed);
                        first = false;
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    let answer =
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
                    if conn.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    KeptAliveWorker {
        addr,
        used,
        closed_by_proxy,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_worker_connection_serves_request_after_request() {
    let worker = kept_alive_worker(None).await;
    let proxy = TestProxy::start(&one_worker(worker.addr, ""));
    let client = Client::new(proxy.addr);
    for i in 0..30 {
        let r = client.get(HOST, "/web/login", &[]).await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(&r.body[..], b"ok");
    }
    // One client connection, one request at a time: one worker connection,
    // kept between requests.
    assert_eq!(worker.used.load(Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_connections_ended_while_idle_are_closed_and_never_reused() {
    let worker = kept_alive_worker(Some(Duration::from_millis(100))).await;
    let proxy = TestProxy::start(&one_worker(worker.addr, ""));
    let client = Client::new(proxy.addr);
    assert_eq!(client.get(HOST, "/web/login", &[]).await.status, 200);
    // No further request comes: fledge still closes the connection the
    // worker ended, rather than keep it half-open in its pool.
    let closed = eventually(5, || async { worker.closed_by_proxy.load(Relaxed) == 1 }).await;
    assert!(closed, "fledge kept a connection the worker had ended");
    // A request right after a worker ended the kept connection (before any
    // sweep) is not sent down it: it gets a fresh one and its answer.
    assert_eq!(client.get(HOST, "/web/login", &[]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = client.get(HOST, "/web/login", &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(&r.body[..], b"ok");
    assert_eq!(worker.used.load(Relaxed), 3);
    // Counted once the answer is sent: on a busy machine a moment after
    // the client has it.
    let series = "fledge_requests_total{tenant=\"acme\",version=\"stable\",outcome=\"ok\"}";
    let counted = eventually(5, || async { proxy.metric(series).await == Some(3.0) }).await;
    assert!(counted, "{:?}", proxy.metric(series).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_its_answer_frees_the_worker_connection() {
    // A worker that reads a request and never answers (a long poll), and
    // reports when the proxy closes the connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker = listener.local_addr().unwrap();
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return, // a health check
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let left = conn.read(&mut buf).await;
                let _ = closed_tx.send(matches!(left, Ok(0) | Err(_))).await;
            });
        }
    });
    let proxy = TestProxy::start(&one_worker(worker, ""));
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET /longpolling/poll HTTP/1.1\r\nHost: acme.example.com\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(client);
    // fledge notices the client is gone while it waits for the worker, and
    // gives the worker its connection back at once.
    let closed = tokio::time::timeout(Duration::from_secs(5), closed_rx.recv()).await;
    assert!(
        matches!(closed, Ok(Some(true))),
        "the worker's connection outlived its client: {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_worker_pool_keeps_no_more_idle_connections_than_its_cap() {
    // A worker that thinks 300 ms per request and counts its open
    // connections that carried one.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker = listener.local_addr().unwrap();
    let open = Arc::new(AtomicU64::new(0));
    let counted = open.clone();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let open = counted.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                let mut counted = false;
                loop {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                if counted {
                                    open.fetch_sub(1, Relaxed);
                                }
                                return;
                            }
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if !counted {
                        counted = true;
                        open.fetch_add(1, Relaxed);
                    }
                    head.clear();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if conn.write_all(answer).await.is_err() {
                        open.fetch_sub(1, Relaxed);
                        return;
                    }
                }
            });
        }
    });
    // One proxy thread: Pingora's pool keeps at most 128 idle connections.
    let proxy = TestProxy::start(&one_worker(worker, "").replace("threads: 2", "threads: 1"));
    // 200 requests at once: 200 worker connections, then all idle.
    let mut requests = Vec::new();
    for _ in 0..200 {
        let addr = proxy.addr;
        requests.push(tokio::spawn(async move {
            Client::new(addr).get(HOST, "/web/login", &[]).await.status
        }));
    }
    for r in requests {
        assert_eq!(r.await.unwrap(), 200);
    }
    let capped = eventually(5, || async { open.load(Relaxed) <= 128 }).await;
    assert!(capped, "{} idle worker connections kept", open.load(Relaxed));
    // And the pool does keep them: the closed ones are the surplus only.
    assert!(open.load(Relaxed) >= 100, "{}", open.load(Relaxed));
}

/// `balance: least_connections` sends the next request to the worker with
/// the fewest in flight: a worker slowed down (a long report, an import)
/// gets few, where round robin gives it its turn every other request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_spares_a_slow_worker_that_round_robin_keeps_feeding() {
    use fledge::mock_odoo::{Knobs, MockOdoo, Options};
    let mut slow_options = Options::new("17.0");
    slow_options.knobs = Knobs {
        latency_ms: 400,
        ..Knobs::default()
    };
    let slow = MockOdoo::start("127.0.0.1:0".parse().unwrap(), slow_options)
        .await
        .unwrap();
    let fast = crate::util::mock("17.0").await;
    let mut shares = Vec::new();
    for balance in ["round_robin", "least_connections"] {
        let config = format!(
            "listen: \"{{listen}}\"\nthreads: 2\npools:\n  v17:\n    workers: [\"{}\", \"{}\"]\n    balance: {balance}\ntenants:\n  acme:\n    hosts: [\"acme.example.com\"]\n    stable: v17\n",
            slow.addr(),
            fast.addr()
        );
        let proxy = TestProxy::start(&config);
        let (slow_before, fast_before) = (slow.stats().requests, fast.stats().requests);
        let load = crate::util::start_load(proxy.addr, "acme.example.com", 100, false);
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let stats = std::sync::Arc::clone(&load.stats);
        drop(load);
        // The slow worker's last answers come in.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let failed = stats.failed.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(failed, 0, "{balance}: failed requests");
        let (s, f) = (
            slow.stats().requests - slow_before,
            fast.stats().requests - fast_before,
        );
        assert!(s + f > 150, "{balance}: {s} + {f} requests");
        shares.push(s as f64 / (s + f) as f64);
    }
    assert!(
        shares[0] > 0.4,
        "round robin gave the slow worker {:.0} %",
        shares[0] * 100.0
    );
    assert!(
        shares[1] < 0.25,
        "least connections gave the slow worker {:.0} %",
        shares[1] * 100.0
    );
}
