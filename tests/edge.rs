//! Deployed behind Traefik or a load balancer, on Kubernetes (issue 17):
//! trusted proxies, the PROXY protocol, HTTP health checks, the
//! scrapers' metrics endpoint, readiness, JSON logs.

use crate::util::{free_port, mock, one_worker, Client, TestProxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapers_get_metrics_without_the_token_and_nothing_else() {
    let worker = mock("17.0").await;
    let scrape = format!("127.0.0.1:{}", free_port());
    let proxy = TestProxy::start(&one_worker(
        worker.addr(),
        &format!("metrics:\n  listen: \"{scrape}\"\n"),
    ));
    let client = Client::new(scrape.parse().unwrap());
    let r = client.get("", "/metrics", &[]).await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        text.contains("fledge_tenants") || text.contains("fledge_config_reloads_total"),
        "{text}"
    );
    // The standard process metrics, as every exporter names them.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    // Nothing else there, with or without a token.
    for path in ["/api/v1/tenants", "/healthz", "/", "/metrics/"] {
        assert_eq!(client.get("", path, &[]).await.status, 404, "{path}");
    }
    let auth = format!("Bearer {}", crate::util::ADMIN_TOKEN);
    let r = client
        .get("", "/api/v1/tenants", &[("authorization", &auth)])
        .await;
    assert_eq!(r.status, 404, "the admin API is not on the scrapers' listener");
    let r = client
        .send("POST", "", "/metrics", &[], crate::util::full(""))
        .await;
    assert_eq!(r.status, 405);
    // The admin listener still wants its token, for /metrics too.
    let admin = Client::new(proxy.admin);
    assert_eq!(admin.get("", "/metrics", &[]).await.status, 401);
    assert_eq!(proxy.admin("GET", "/metrics", "").await.status, 200);
}

/// A worker that records every request head it gets (health checks,
/// which send nothing, are skipped) and answers 200.
pub(crate) async fn recorder(tx: tokio::sync::mpsc::UnboundedSender<String>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer =
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
                    if conn.write_all(answer).await.is_err() {
                        return;
                    }
                    let _ = tx.send(String::from_utf8_lossy(&head).to_ascii_lowercase());
                    head.clear();
                }
            });
        }
    });
    addr
}

/// One request from source address `from` (a loopback address of our
/// choosing, to play a trusted or an untrusted peer); the response.
pub(crate) async fn from(src: &str, proxy: std::net::SocketAddr, request: &str) -> String {
    proxied(src, proxy, b"", request).await
}

/// The versions `n` first visits (no session, no cookie) from `src` land
/// on, each claiming another client in `X-Forwarded-For`.
async fn first_visits(
    src: &str,
    proxy: std::net::SocketAddr,
    heads: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    n: usize,
) -> std::collections::BTreeSet<String> {
    let mut versions = std::collections::BTreeSet::new();
    for i in 0..n {
        let request = format!(
            "GET / HTTP/1.1\r\nHost: acme.example.com\r\nX-Forwarded-For: 198.51.100.{i}\r\nConnection: close\r\n\r\n"
        );
        let r = from(src, proxy, &request).await;
        let _ = heads.recv().await.unwrap();
        let v = r.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-fledge-version:")
                .map(|v| v.trim().to_owned())
        });
        versions.insert(v.unwrap_or_default());
    }
    versions
}

pub(crate) fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

fn behind_traefik(stable: std::net::SocketAddr, canary: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"listen: "{{listen}}"
threads: 2
trusted_proxies: ["127.0.0.2/32"]
{extra}pools:
  v17: {{ workers: ["{stable}"] }}
  v18: {{ workers: ["{canary}"] }}
policies:
  default:
    override_from: ["203.0.113.7/32"]
tenants:
  acme:
    hosts: ["acme.example.com"]
    stable: v17
    canary: v18
    canary_weight: 50
"#
    )
}

pub(crate) const TRUSTED: &str = "127.0.0.2";
pub(crate) const UNTRUSTED: &str = "127.0.0.3";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_client_is_the_one_it_forwards_for() {
    // Both pools' workers record into one channel.
    let (tx, mut heads) = tokio::sync::mpsc::unbounded_channel();
    let (stable, canary) = (recorder(tx.clone()).await, recorder(tx).await);
    let proxy = TestProxy::start(&behind_traefik(stable, canary, ""));
    let request = |extra: &str| {
        format!(
            "GET /web/login HTTP/1.1\r\nHost: acme.example.com\r\nCookie: session_id=s1\r\n\
             X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: acme.example.com\r\n\
             {extra}Connection: close\r\n\r\n"
        )
    };

    // From Traefik: its chain kept, its address appended, its scheme kept.
    let r = from(TRUSTED, proxy.addr, &request("")).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let head = heads.recv().await.unwrap();
    assert_eq!(
        header(&head, "x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.2"),
        "{head}"
    );
    assert_eq!(header(&head, "x-forwarded-proto"), Some("https"), "{head}");
    assert_eq!(
        header(&head, "x-forwarded-host"),
        Some("acme.example.com"),
        "{head}"
    );
    // The same headers from anyone else are replaced.
    let r = from(UNTRUSTED, proxy.addr, &request("")).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let head = heads.recv().await.unwrap();
    assert_eq!(header(&head, "x-forwarded-for"), Some("127.0.0.3"), "{head}");
    assert_eq!(header(&head, "x-forwarded-proto"), Some("http"), "{head}");

    // override_from judges the forwarded client, not the peer.
    let r = from(TRUSTED, proxy.addr, &request("X-Fledge-Version: canary\r\n")).await;
    assert!(r.to_ascii_lowercase().contains("x-fledge-version: canary"), "{r}");
    let _ = heads.recv().await.unwrap();
    // Not honoured from an untrusted peer: the split decides (ten sessions
    // at 50 % are not all on the canary but once in a thousand runs).
    let mut on_canary = 0;
    for i in 0..10 {
        let r = from(
            UNTRUSTED,
            proxy.addr,
            &format!(
                "GET /web/login HTTP/1.1\r\nHost: acme.example.com\r\nCookie: session_id=untrusted-{i}\r\n\
                 X-Forwarded-For: 203.0.113.7\r\nX-Fledge-Version: canary\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        let _ = heads.recv().await.unwrap();
        on_canary += usize::from(r.to_ascii_lowercase().contains("x-fledge-version: canary"));
    }
    assert!(
        on_canary < 10,
        "an untrusted peer's X-Forwarded-For passed override_from"
    );
    // The split's fallback (no session, no cookie) hashes the forwarded
    // client: forty clients behind Traefik are not one client.
    let versions = first_visits(TRUSTED, proxy.addr, &mut heads, 40).await;
    assert_eq!(versions.len(), 2, "forty forwarded clients all on {versions:?}");
    let versions = first_visits(UNTRUSTED, proxy.addr, &mut heads, 10).await;
    assert_eq!(
        versions.len(),
        1,
        "an untrusted peer's forwarding headers moved the split"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_is_not_throttled_by_the_per_address_cap() {
    use tokio::io::AsyncWriteExt;
    let (tx, _heads) = tokio::sync::mpsc::unbounded_channel();
    let (stable, canary) = (recorder(tx.clone()).await, recorder(tx).await);
    let proxy = TestProxy::start(&behind_traefik(
        stable,
        canary,
        "limits:\n  max_connections_per_ip: 2\n",
    ));
    let open = |src: &'static str| async move { connect_from(src, proxy.addr).await };
    // Five connections from Traefik, all kept and served.
    let mut kept = Vec::new();
    for _ in 0..5 {
        kept.push(open(TRUSTED).await);
    }
    for c in &mut kept {
        c.write_all(b"GET / HTTP/1.1\r\nHost: acme.example.com\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(crate::util::response_status(c).await, Some(200));
    }
    // Anyone else: the third connection is closed on arrival.
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(open(UNTRUSTED).await);
    }
    let mut served = 0;
    for c in &mut others {
        let _ = c
            .write_all(b"GET / HTTP/1.1\r\nHost: acme.example.com\r\n\r\n")
            .await;
        if crate::util::response_status(c).await == Some(200) {
            served += 1;
        }
    }
    assert_eq!(served, 2, "the per-address cap let {served} of 3 through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_odoo_worker_failing_web_health_leaves_its_pool_and_comes_back() {
    use fledge::mock_odoo::Knobs;
    let (a, b) = (mock("17.0").await, mock("17.0").await);
    let proxy = TestProxy::start(&format!(
        r#"listen: "{{listen}}"
threads: 2
pools:
  v17:
    workers: ["{}", "{}"]
    health_check: {{ path: "/web/health", expect_status: 200, interval_ms: 100, timeout_ms: 500, failures: 2, successes: 2 }}
tenants:
  acme:
    hosts: ["acme.example.com"]
    stable: v17
"#,
        a.addr(),
        b.addr()
    ));
    let series = format!("fledge_worker_healthy{{pool=\"v17\",worker=\"{}\"}}", b.addr());
    let client = Client::new(proxy.addr);
    let up = crate::util::eventually(5, || async { proxy.metric(&series).await == Some(1.0) }).await;
    assert!(up, "{}", proxy.metrics().await);
    // Its database is down: it accepts connections and answers 500.
    b.set_knobs(Knobs {
        health_status: 500,
        ..Knobs::default()
    });
    let down = crate::util::eventually(5, || async { proxy.metric(&series).await == Some(0.0) }).await;
    assert!(down, "{}", proxy.metrics().await);
    let before = b.stats().requests;
    for _ in 0..20 {
        assert_eq!(
            client.get("acme.example.com", "/web/login", &[]).await.status,
            200
        );
    }
    assert_eq!(
        b.stats().requests,
        before,
        "requests went to a worker failing /web/health"
    );
    // Healthy again: back in the pool, and served.
    b.set_knobs(Knobs::default());
    let back = crate::util::eventually(5, || async { proxy.metric(&series).await == Some(1.0) }).await;
    assert!(back, "{}", proxy.metrics().await);
    for _ in 0..20 {
        client.get("acme.example.com", "/web/login", &[]).await;
    }
    assert!(b.stats().requests > before, "the recovered worker got nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_with_no_healthy_stable_worker_and_while_draining() {
    use tokio::io::AsyncWriteExt;
    let worker = mock("17.0").await;
    let proxy = TestProxy::start(&one_worker(
        worker.addr(),
        "timeouts:\n  shutdown_grace_seconds: 5\n",
    ));
    let admin = Client::new(proxy.admin);
    assert_eq!(admin.get("", "/readyz", &[]).await.status, 200);
    // The only worker stops: health checks take it out, and the replica
    // can serve nobody.
    worker.stop();
    let unready =
        crate::util::eventually(5, || async { admin.get("", "/readyz", &[]).await.status == 503 }).await;
    assert!(unready, "still ready with no worker");

    // A kept-alive probe connection learns of the drain at once.
    let worker = mock("17.0").await;
    let proxy = TestProxy::start(&one_worker(
        worker.addr(),
        "timeouts:\n  shutdown_grace_seconds: 5\n",
    ));
    let mut probe = tokio::net::TcpStream::connect(proxy.admin).await.unwrap();
    let ask = b"GET /readyz HTTP/1.1\r\nHost: admin\r\n\r\n";
    probe.write_all(ask).await.unwrap();
    assert_eq!(crate::util::response_status(&mut probe).await, Some(200));
    proxy.terminate();
    // Asked again on the same connection until the signal has landed: the
    // first answer after it is a 503 (and the connection then closes).
    let mut draining = false;
    for _ in 0..50 {
        probe.write_all(ask).await.unwrap();
        match crate::util::response_status(&mut probe).await {
            Some(503) => {
                draining = true;
                break;
            }
            Some(200) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            other => panic!("{other:?} while draining"),
        }
    }
    assert!(draining, "ready while draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_json_object_a_line() {
    let worker = mock("17.0").await;
    let proxy = TestProxy::start(&one_worker(worker.addr(), "log:\n  format: json\n"));
    // Something worth a line: a reload, refused.
    let path = proxy.config_path();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, std::fs::read_to_string(&path).unwrap() + "\nnot: [valid\n").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert_eq!(proxy.admin("POST", "/api/v1/reload", "").await.status, 422);
    let logged =
        crate::util::eventually(5, || async { proxy.log().contains("config reload rejected") }).await;
    assert!(logged, "{}", proxy.log());
    let log = proxy.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{line}");
    }
    let rejected = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["message"] == "config reload rejected: the running config keeps serving")
        .expect("the rejection as a JSON line");
    // Fields are fields, not text inside the message.
    assert!(
        rejected["reason"]
            .as_str()
            .is_some_and(|r| r.contains("fledge.yaml")),
        "{rejected}"
    );
}

/// A PROXY protocol v2 header for `src` → `dst`, or a LOCAL one.
pub(crate) fn proxy_v2(local: bool, src: &str, dst: &str) -> Vec<u8> {
    use ppp::v2;
    let command = if local {
        v2::Command::Local
    } else {
        v2::Command::Proxy
    };
    let addresses = (
        src.parse::<std::net::SocketAddr>().unwrap(),
        dst.parse::<std::net::SocketAddr>().unwrap(),
    );
    v2::Builder::with_addresses(v2::Version::Two | command, v2::Protocol::Stream, addresses)
        .build()
        .unwrap()
}

/// A connection to `proxy` from source address `src` (a loopback address
/// of our choosing, to play a trusted or an untrusted peer).
pub(crate) async fn connect_from(src: &str, proxy: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{src}:0").parse().unwrap()).unwrap();
    socket.connect(proxy).await.unwrap()
}

/// A connection from `src` that sends `first` and then `request`; the
/// response (empty when the connection was closed without one).
async fn proxied(src: &str, proxy: std::net::SocketAddr, first: &[u8], request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = connect_from(src, proxy).await;
    let _ = conn.write_all(&[first, request.as_bytes()].concat()).await;
    let mut response = Vec::new();
    let _ = conn.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_protocol_load_balancer_the_client_is_the_one_its_header_names() {
    use tokio::io::AsyncWriteExt;
    let (tx, mut heads) = tokio::sync::mpsc::unbounded_channel();
    let (stable, canary) = (recorder(tx.clone()).await, recorder(tx).await);
    let proxy = TestProxy::start(&behind_traefik(
        stable,
        canary,
        "proxy_protocol:\n  from: [\"127.0.0.2/32\"]\n\
         limits:\n  max_connections_per_ip: 2\n  header_timeout_seconds: 2\n",
    ));
    let get = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: acme.example.com\r\nCookie: session_id=s1\r\nConnection: close\r\n\r\n")
    };
    // v1 and v2, TCP over IPv4 and IPv6: the header's source is the client
    // the worker is told of; LOCAL (the balancer's own check) is the peer.
    for (first, client) in [
        (
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 80\r\n".to_vec(),
            "203.0.113.7",
        ),
        (
            b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 80\r\n".to_vec(),
            "2001:db8::7",
        ),
        (
            proxy_v2(false, "198.51.100.4:4000", "10.0.0.1:80"),
            "198.51.100.4",
        ),
        (
            proxy_v2(false, "[2001:db8::9]:4000", "[2001:db8::1]:80"),
            "2001:db8::9",
        ),
        (proxy_v2(true, "0.0.0.0:0", "0.0.0.0:0"), TRUSTED),
        (b"PROXY UNKNOWN\r\n".to_vec(), TRUSTED),
    ] {
        let r = proxied(TRUSTED, proxy.addr, &first, &get("/web/login")).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{client}: {r}");
        let head = heads.recv().await.unwrap();
        assert_eq!(header(&head, "x-forwarded-for"), Some(client), "{head}");
    }
    // override_from judges the header's client.
    let r = proxied(
        TRUSTED,
        proxy.addr,
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 80\r\n",
        "GET / HTTP/1.1\r\nHost: acme.example.com\r\nX-Fledge-Version: canary\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.to_ascii_lowercase().contains("x-fledge-version: canary"), "{r}");
    let _ = heads.recv().await.unwrap();

    // Refused, and nothing reaches a worker: a header from a peer not in
    // `from` (an invalid request there), no header from a balancer, a
    // malformed one, a truncated one.
    let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 80\r\n";
    let r = proxied(UNTRUSTED, proxy.addr, v1, &get("/smuggled")).await;
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 400"), "{r}");
    for first in [
        &b""[..],
        b"PROXY TCP4 203.0.113.999 10.0.0.1 1 80\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1",
    ] {
        let mut conn = connect_from(TRUSTED, proxy.addr).await;
        let request = if first.is_empty() || first.ends_with(b"\r\n") {
            get("/smuggled")
        } else {
            String::new()
        };
        conn.write_all(&[first, request.as_bytes()].concat())
            .await
            .unwrap();
        // Truncated: the balancer goes away mid-header.
        conn.shutdown().await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut answer).await;
        assert!(
            answer.is_empty(),
            "{:?} was answered: {}",
            String::from_utf8_lossy(first),
            String::from_utf8_lossy(&answer)
        );
    }
    // A header that trickles in, a byte at a time, is cut at the header
    // deadline from the connection's start.
    let (mut read, mut write) = connect_from(TRUSTED, proxy.addr).await.into_split();
    let began = tokio::time::Instant::now();
    let trickle = tokio::spawn(async move {
        for byte in v1.iter() {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    });
    let mut buf = [0u8; 64];
    let end = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut read, &mut buf),
    )
    .await;
    trickle.abort();
    assert!(
        matches!(end, Ok(Ok(0) | Err(_))),
        "a trickled PROXY header was never cut: {end:?}"
    );
    assert!(
        began.elapsed() >= std::time::Duration::from_millis(1500),
        "cut before its deadline"
    );
    assert_eq!(proxy.metric("fledge_slow_headers_total").await, Some(1.0));
    // The first request after the refusals is the first a worker sees.
    let r = from(UNTRUSTED, proxy.addr, &get("/after")).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let head = heads.recv().await.unwrap();
    assert!(
        head.starts_with("get /after "),
        "a refused connection reached a worker: {head}"
    );
    assert_eq!(header(&head, "x-forwarded-for"), Some(UNTRUSTED), "{head}");
    assert_eq!(
        proxy.metric("fledge_proxy_headers_refused_total").await,
        Some(3.0)
    );

    // The per-address cap counts the header's client, not the balancer:
    // two connections for one client, the third refused, another
    // client's served.
    let open = |client: &'static str| async move {
        let mut c = connect_from(TRUSTED, proxy.addr).await;
        let header = format!("PROXY TCP4 {client} 10.0.0.1 5000 80\r\n");
        c.write_all(header.as_bytes()).await.unwrap();
        c
    };
    let mut kept = Vec::new();
    for client in ["203.0.113.50", "203.0.113.50", "203.0.113.50", "203.0.113.51"] {
        kept.push(open(client).await);
    }
    let mut served = Vec::new();
    for c in &mut kept {
        let _ = c
            .write_all(b"GET / HTTP/1.1\r\nHost: acme.example.com\r\n\r\n")
            .await;
        served.push(crate::util::response_status(c).await == Some(200));
    }
    // Which of the three loses is the race of their headers.
    let of_one_client = served[..3].iter().filter(|s| **s).count();
    assert_eq!((of_one_client, served[3]), (2, true), "{served:?}");
}

/// The access log's lines in `log` (the others are fledge's own log).
fn access_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("request_id").is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_a_line_per_request_and_its_id_reaches_the_worker() {
    let (tx, mut heads) = tokio::sync::mpsc::unbounded_channel();
    let (stable, canary) = (recorder(tx.clone()).await, recorder(tx).await);
    let proxy = TestProxy::start(&behind_traefik(stable, canary, "log:\n  access: true\n"));
    // Through Traefik, with a query that must not be logged.
    let r = from(
        TRUSTED,
        proxy.addr,
        "POST /web/dataset/call_kw?token=secret HTTP/1.1\r\nHost: acme.example.com\r\n\
         X-Forwarded-For: 203.0.113.7\r\nX-Request-Id: client-chosen\r\nContent-Length: 2\r\n\
         Connection: close\r\n\r\n{}",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let head = heads.recv().await.unwrap();
    let id = header(&head, "x-request-id")
        .expect("the worker gets the request id")
        .to_owned();
    assert_eq!(id.len(), 16, "{head}");
    // An unknown host: logged, no tenant.
    let r = from(
        UNTRUSTED,
        proxy.addr,
        "GET /x HTTP/1.1\r\nHost: nobody.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");

    let logged = crate::util::eventually(5, || async { access_lines(&proxy.log()).len() >= 2 }).await;
    assert!(logged, "{}", proxy.log());
    let lines = access_lines(&proxy.log());
    let post = &lines[0];
    assert_eq!(post["request_id"], id.as_str());
    assert_eq!(post["client"], "203.0.113.7");
    assert_eq!(post["tenant"], "acme");
    assert!(
        post["version"] == "stable" || post["version"] == "canary",
        "{post}"
    );
    let worker = post["worker"].as_str().unwrap();
    assert!(
        worker == stable.to_string() || worker == canary.to_string(),
        "{post}"
    );
    assert_eq!(post["method"], "POST");
    assert_eq!(post["path"], "/web/dataset/call_kw");
    assert_eq!(post["status"], 200);
    assert_eq!(post["outcome"], "ok");
    assert_eq!(post["bytes_in"], 2);
    assert_eq!(post["bytes_out"], 2);
    assert!(post["duration_ms"].as_f64().is_some_and(|d| d > 0.0), "{post}");
    let unknown = &lines[1];
    assert_eq!(unknown["status"], 404);
    assert_eq!(unknown["client"], UNTRUSTED);
    assert!(
        unknown["tenant"].is_null() && unknown["worker"].is_null(),
        "{unknown}"
    );
    assert_ne!(unknown["request_id"], post["request_id"]);
    assert_eq!(proxy.metric("fledge_access_log_lines_total").await, Some(2.0));

    // Turned off by a reload: no more lines, and no request id upstream.
    let path = proxy.config_path();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("access: true", "access: false");
    std::fs::write(&path, text).unwrap();
    assert_eq!(proxy.admin("POST", "/api/v1/reload", "").await.status, 200);
    let r = from(
        UNTRUSTED,
        proxy.addr,
        "GET / HTTP/1.1\r\nHost: acme.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let head = heads.recv().await.unwrap();
    assert_eq!(header(&head, "x-request-id"), None, "{head}");
    assert_eq!(proxy.metric("fledge_access_log_lines_total").await, Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_per_address_cap_counts_each_clients_requests() {
    use fledge::mock_odoo::{Knobs, Options};
    use tokio::io::AsyncWriteExt;
    // A worker slow enough that requests are in flight together.
    let mut options = Options::new("17.0");
    options.knobs = Knobs {
        latency_ms: 1500,
        ..Knobs::default()
    };
    let (slow, other) = (
        crate::util::mock_with(options.clone()).await,
        crate::util::mock_with(options).await,
    );
    let proxy = TestProxy::start(&behind_traefik(
        slow.addr(),
        other.addr(),
        "limits:\n  max_connections_per_ip: 2\n",
    ));
    // Four connections from Traefik, all kept (the proxy is not capped):
    // three for one client, one for another, each with a request at once.
    let mut conns = Vec::new();
    for client in ["203.0.113.9", "203.0.113.9", "203.0.113.9", "203.0.113.10"] {
        let mut c = connect_from(TRUSTED, proxy.addr).await;
        let request =
            format!("GET /web/login HTTP/1.1\r\nHost: acme.example.com\r\nX-Forwarded-For: {client}\r\n\r\n");
        c.write_all(request.as_bytes()).await.unwrap();
        conns.push(c);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut statuses = Vec::new();
    for c in &mut conns {
        statuses.push(crate::util::response_status(c).await);
    }
    let mut first_client = statuses[..3].to_vec();
    first_client.sort_unstable();
    assert_eq!(first_client, [Some(200), Some(200), Some(429)], "{statuses:?}");
    assert_eq!(statuses[3], Some(200), "another client is not capped");
    assert_eq!(
        proxy.metric("fledge_forwarded_requests_refused_total").await,
        Some(1.0)
    );
    // Their answers given, the client's places came back.
    let again = from(
        TRUSTED,
        proxy.addr,
        "GET /web/login HTTP/1.1\r\nHost: acme.example.com\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
}
