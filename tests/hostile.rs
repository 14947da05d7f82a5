//! Hostile clients: the smuggling and bad-input table of `docs/reliability.md` §3,
//! over raw sockets. Every case gets its own tenant and its own counting
//! mock worker, so the cases run at once and each worker's count is that
//! case's alone. Two things are checked per case: the status the client
//! gets, and that **no worker ever sees more requests than the client
//! meant to send** (a smuggled request would be one more).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{mock, TestProxy};

/// One case: raw bytes, the statuses accepted for the first response, and
/// how many requests the client meant (the most its worker may see).
pub(crate) struct Case {
    name: &'static str,
    raw: String,
    expect: &'static [u16],
    meant: u64,
}

const OK: &[u16] = &[200];
const BAD: &[u16] = &[400];
/// Refused, whichever way: bad request, not implemented, or the connection
/// closed without an answer (status 0).
const REFUSED: &[u16] = &[0, 400, 501];

fn case(name: &'static str, raw: impl Into<String>, expect: &'static [u16], meant: u64) -> Case {
    Case {
        name,
        raw: raw.into(),
        expect,
        meant,
    }
}

/// The cases; `{h}` is the case's own host name.
pub(crate) fn cases() -> Vec<Case> {
    let post = |headers: &str, body: &str| {
        format!("POST /web/dataset/call_kw HTTP/1.1\r\nHost: {{h}}\r\n{headers}\r\n{body}")
    };
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: {h}\r\n\r\n";
    vec![
        // Content-Length.
        case("cl.te", post("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", &format!("0\r\n\r\n{smuggled}")), &[200, 400], 1),
        case("te.cl", post("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", &format!("8\r\nSMUGGLED\r\n0\r\n\r\n{smuggled}")), &[200, 400], 1),
        case("cl duplicate, differing", post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), BAD, 0),
        case("cl list, differing", post("Content-Length: 5, 6\r\n", "hello!"), BAD, 0),
        case("cl duplicate, same", post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"), &[200, 400], 1),
        case("cl +5", post("Content-Length: +5\r\n", "hello"), BAD, 0),
        case("cl -1", post("Content-Length: -1\r\n", "hello"), BAD, 0),
        case("cl 0x10", post("Content-Length: 0x10\r\n", "hello"), BAD, 0),
        case("cl 1_0", post("Content-Length: 1_0\r\n", "hello"), BAD, 0),
        case("cl 5 5", post("Content-Length: 5 5\r\n", "hello"), BAD, 0),
        case("cl empty", post("Content-Length: \r\n", "hello"), BAD, 0),
        case("cl overflow", post("Content-Length: 99999999999999999999\r\n", "hello"), BAD, 0),
        case("cl non-ascii digit", post("Content-Length: \u{0665}\r\n", "hello"), BAD, 0),
        case("cl with spaces around (legal)", post("Content-Length:  5 \r\n", "hello"), OK, 1),
        case("space before colon", post("Content-Length : 5\r\n", "hello"), BAD, 0),
        case("underscore content_length", post("Content_Length: 40\r\n", smuggled), &[200, 400], 1),
        case("empty header name", post(": x\r\nContent-Length: 5\r\n", "hello"), BAD, 0),
        case("leading whitespace before first header", "GET / HTTP/1.1\r\n\tHost: {h}\r\n\r\n", BAD, 0),
        // Transfer-Encoding.
        case("te chunked, chunked", post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"), REFUSED, 0),
        case("te chunked, gzip", post("Transfer-Encoding: chunked, gzip\r\n", "0\r\n\r\n"), REFUSED, 0),
        case("te gzip", post("Transfer-Encoding: gzip\r\n", "hello"), REFUSED, 0),
        case("te gzip, chunked", post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"), REFUSED, 0),
        case("te xchunked", post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"), REFUSED, 0),
        case("te vertical tab", post("Transfer-Encoding: \x0bchunked\r\n", "0\r\n\r\n"), REFUSED, 0),
        case("te on two lines", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), REFUSED, 0),
        case("te with http/1.0", "POST / HTTP/1.0\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", REFUSED, 0),
        case("te obs-folded", post("X-Pad: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "hello"), BAD, 0),
        // Chunked bodies: the header went on before the body was seen to be
        // bad, so the worker may have the request, never a second one.
        case("chunk size Z", post("Transfer-Encoding: chunked\r\n", &format!("Z\r\nabc\r\n0\r\n\r\n{smuggled}")), &[0, 400, 502], 1),
        case("chunk size 0x5", post("Transfer-Encoding: chunked\r\n", "0x5\r\nhello\r\n0\r\n\r\n"), &[0, 400, 502], 1),
        case("chunk size -5", post("Transfer-Encoding: chunked\r\n", "-5\r\nhello\r\n0\r\n\r\n"), &[0, 400, 502], 1),
        case("chunk size overflow", post("Transfer-Encoding: chunked\r\n", "ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"), &[0, 400, 502], 1),
        case("chunk longer than its size", post("Transfer-Encoding: chunked\r\n", &format!("3\r\nabcdef\r\n0\r\n\r\n{smuggled}")), &[0, 200, 400, 502], 1),
        case("chunk bare lf", post("Transfer-Encoding: chunked\r\n", &format!("0\n\r\n{smuggled}")), &[0, 200, 400, 502], 2),
        // Header syntax.
        case("obs-fold", post("X-Custom: a\r\n b\r\nContent-Length: 5\r\n", "hello"), BAD, 0),
        case("obs-fold on content-length", post("Content-Length:\r\n 5\r\n", "hello"), BAD, 0),
        case("nul in a value", post("X-Custom: a\0b\r\nContent-Length: 5\r\n", "hello"), BAD, 0),
        case("bare cr in a value", post("X-Custom: a\rb\r\nContent-Length: 5\r\n", "hello"), BAD, 0),
        case("8-bit byte in a name", post("X-Cust\u{e9}m: a\r\nContent-Length: 5\r\n", "hello"), BAD, 0),
        // (Pingora's h2c detection waits for 24 bytes before it parses a
        // request: a shorter one is answered at the read timeout, hence
        // the padding header.)
        case("no host", "GET / HTTP/1.1\r\nUser-Agent: hostile\r\n\r\n", &[400, 404], 0),
        case("two hosts", "GET / HTTP/1.1\r\nHost: {h}\r\nHost: {h}\r\n\r\n", BAD, 0),
        case("host list", "GET / HTTP/1.1\r\nHost: {h}, other.example.com\r\n\r\n", &[400, 404], 0),
        case("host with userinfo", "GET / HTTP/1.1\r\nHost: user@{h}\r\n\r\n", &[400, 404], 0),
        // Request line.
        case("lf inside the request line", "GET /\nHTTP/1.1\r\nHost: {h}\r\n\r\n", &[0, 400], 0),
        case("http/1.32", "GET / HTTP/1.32\r\nHost: {h}\r\n\r\n", &[0, 400, 505], 0),
        case("http/0.9", "GET /\r\n\r\n", &[0, 400], 0),
        case("illegal method", "G=\":<>(e),[T];?\" / HTTP/1.1\r\nHost: {h}\r\n\r\n", &[0, 400], 0),
        case("connect", "CONNECT {h}:443 HTTP/1.1\r\nHost: {h}:443\r\n\r\n", &[400, 405], 0),
        // Sizes (fledge's limits: 8 KiB target, 100 fields, 64 KiB block).
        case("10 KiB target", format!("GET /{} HTTP/1.1\r\nHost: {{h}}\r\n\r\n", "a".repeat(10 * 1024)), &[414], 0),
        case("101 header fields", format!("GET / HTTP/1.1\r\nHost: {{h}}\r\n{}\r\n", "X-F: v\r\n".repeat(100)), &[431], 0),
        case("257 header fields", format!("GET / HTTP/1.1\r\nHost: {{h}}\r\n{}\r\n", "X-F: v\r\n".repeat(256)), &[400, 431], 0),
        case("70 KiB header block", format!("GET / HTTP/1.1\r\nHost: {{h}}\r\n{}\r\n", format!("X-Big: {}\r\n", "v".repeat(7000)).repeat(10)), &[431], 0),
        case("60 KiB header block (under)", format!("GET /web/login HTTP/1.1\r\nHost: {{h}}\r\n{}\r\n", format!("X-Big: {}\r\n", "v".repeat(6000)).repeat(10)), OK, 1),
        // Routing-control headers.
        case("underscore override header", "GET / HTTP/1.1\r\nHost: {h}\r\nX_Fledge_Version: canary\r\n\r\n", BAD, 0),
        case("underscore forwarded-for", "GET / HTTP/1.1\r\nHost: {h}\r\nX_Forwarded_For: 10.0.0.1\r\n\r\n", BAD, 0),
        // Connections and upgrades.
        case("upgrade refused, then a pipelined request", format!("GET /web/login HTTP/1.1\r\nHost: {{h}}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n{smuggled}"), OK, 2),
        case("h2c upgrade", "GET /web/login HTTP/1.1\r\nHost: {h}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n", &[200, 400], 1),
        // Pingora answers the first and closes (no pipelining): the others
        // are never parsed, by us or by the worker.
        case("three pipelined requests", "GET /web/login HTTP/1.1\r\nHost: {h}\r\n\r\nGET /b HTTP/1.1\r\nHost: {h}\r\n\r\nGET /c HTTP/1.1\r\nHost: {h}\r\n\r\n", OK, 3),
        case("bytes after a content-length body", post("Content-Length: 5\r\n", &format!("hello{smuggled}")), OK, 2),
        case("expect: foo", post("Expect: foo\r\nContent-Length: 5\r\n", "hello"), &[200, 417], 1),
    ]
}

/// fledge's config for one tenant (`case0.example.com`) on one pool of
/// `worker`, two threads, with `extra` (top-level keys) before the pool.
fn case0_config(worker: impl std::fmt::Display, extra: &str) -> String {
    format!(
        "listen: \"{{listen}}\"\nthreads: 2\n{extra}\
         pools:\n  p: {{ workers: [\"{worker}\"] }}\ntenants:\n  t:\n    hosts: [\"case0.example.com\"]\n    stable: p\n"
    )
}

/// First status line's code in `answer` (0: none).
fn first_status(answer: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(answer);
    text.strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Send `raw`, read what comes back until the proxy closes or goes quiet.
async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(raw).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        // Up to 5 s for the answer to start (a busy machine), then 1.5 s of
        // quiet ends it (an open keep-alive connection).
        let wait = if answer.is_empty() { 5000 } else { 1500 };
        match tokio::time::timeout(Duration::from_millis(wait), tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => return answer,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smuggling_table_gets_its_statuses_and_smuggles_nothing() {
    let cases = cases();
    let (proxy, workers) = proxy_with_workers(cases.len()).await;

    let runs = cases.iter().enumerate().map(|(i, c)| {
        let raw = c.raw.replace("{h}", &format!("case{i}.example.com"));
        let addr = proxy.addr;
        async move { exchange(addr, raw.as_bytes()).await }
    });
    let answers = futures_util::future::join_all(runs).await;
    // Let any request still on its way land.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut wrong = Vec::new();
    for ((c, answer), worker) in cases.iter().zip(&answers).zip(&workers) {
        let status = first_status(answer);
        let seen = worker.stats().requests;
        let verdict = if !c.expect.contains(&status) {
            "WRONG STATUS"
        } else if seen > c.meant {
            "SMUGGLED"
        } else {
            "ok"
        };
        if std::env::var_os("FLEDGE_TEST_VERBOSE").is_some() || verdict != "ok" {
            let head = String::from_utf8_lossy(&answer[..answer.len().min(60)]).replace("\r\n", " | ");
            eprintln!(
                "{verdict:12} {:45} status {status:3} (want {:?}), worker saw {seen} (meant {}): {head}",
                c.name, c.expect, c.meant
            );
        }
        if verdict != "ok" {
            wrong.push(c.name);
        }
    }
    assert!(cases.len() >= 40, "the table has {} cases", cases.len());
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong: {wrong:?}",
        wrong.len(),
        cases.len()
    );
}

/// A proxy with `count` tenants, `case<i>.example.com` each, in front of a
/// counting worker of its own, so that cases can run at once.
pub(crate) async fn proxy_with_workers(count: usize) -> (TestProxy, Vec<fledge::mock_odoo::MockOdoo>) {
    let mut workers = Vec::new();
    let mut config = String::from("listen: \"{listen}\"\nthreads: 2\npools:\n");
    for i in 0..count {
        let w = mock("17.0").await;
        config += &format!("  p{i}: {{ workers: [\"{}\"] }}\n", w.addr());
        workers.push(w);
    }
    config += "tenants:\n";
    for i in 0..count {
        config += &format!("  t{i}:\n    hosts: [\"case{i}.example.com\"]\n    stable: p{i}\n");
    }
    (TestProxy::start(&config), workers)
}

/// A kept-alive HTTP/1.1 connection from `source`.
async fn connection_from(
    source: &str,
    proxy: std::net::SocketAddr,
) -> hyper::client::conn::http1::SendRequest<crate::util::Body> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(proxy).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// A request on `send`; `None` when the connection was closed on us.
async fn status_on(send: &mut hyper::client::conn::http1::SendRequest<crate::util::Body>) -> Option<u16> {
    send.ready().await.ok()?;
    let req = http::Request::get("/web/login")
        .header("host", "case0.example.com")
        .body(crate::util::full(bytes::Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    http_body_util::BodyExt::collect(resp.into_body()).await.ok()?;
    Some(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_a_cap_are_closed_and_open_ones_spared() {
    let worker = mock("17.0").await;
    let config = case0_config(
        worker.addr(),
        "limits:\n  max_connections: 8\n  max_connections_per_ip: 5\n",
    );
    let proxy = TestProxy::start(&config);
    // The start-up probes' connections are gone before we count.
    let idle = crate::util::eventually(5, || async {
        proxy.metric("fledge_connections_open").await == Some(0.0)
    })
    .await;
    assert!(idle, "{}", proxy.metrics().await);
    let mut first = Vec::new();
    for _ in 0..5 {
        let mut c = connection_from("127.0.0.1", proxy.addr).await;
        assert_eq!(status_on(&mut c).await, Some(200));
        first.push(c);
    }
    // A sixth from the same address: closed on arrival.
    let mut sixth = connection_from("127.0.0.1", proxy.addr).await;
    assert_eq!(
        status_on(&mut sixth).await,
        None,
        "the per-address cap let a 6th in"
    );
    // Others fill the total...
    let mut second = Vec::new();
    for _ in 0..3 {
        let mut c = connection_from("127.0.0.2", proxy.addr).await;
        assert_eq!(status_on(&mut c).await, Some(200));
        second.push(c);
    }
    // ...and a ninth, from anywhere, is closed.
    let mut ninth = connection_from("127.0.0.3", proxy.addr).await;
    assert_eq!(status_on(&mut ninth).await, None, "the total cap let a 9th in");
    // The open ones were not harmed.
    for c in first.iter_mut().chain(second.iter_mut()) {
        assert_eq!(status_on(c).await, Some(200));
    }
    // A closed connection gives its place back.
    drop(first.pop());
    let mut again = None;
    for _ in 0..50 {
        let mut c = connection_from("127.0.0.1", proxy.addr).await;
        if status_on(&mut c).await == Some(200) {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        again.is_some(),
        "the place of a closed connection never came back"
    );
    let refused = |cap: &str| format!("fledge_connections_refused_total{{cap=\"{cap}\"}}");
    assert!(proxy.metric(&refused("per_ip")).await >= Some(1.0));
    assert!(proxy.metric(&refused("total")).await >= Some(1.0));
    assert_eq!(proxy.metric("fledge_connections_open").await, Some(8.0));
}

/// fledge with a 2 s header deadline in front of one mock worker for
/// `case0.example.com`.
async fn two_second_header_deadline() -> (fledge::mock_odoo::MockOdoo, TestProxy) {
    let worker = mock("17.0").await;
    let config = case0_config(worker.addr(), "limits:\n  header_timeout_seconds: 2\n");
    let proxy = TestProxy::start(&config);
    (worker, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_sent_byte_by_byte_is_cut_at_the_deadline_and_idle_keep_alive_is_not() {
    let (worker, proxy) = two_second_header_deadline().await;

    // Slowloris on a new connection: a header that never ends.
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    let closed_after = crate::util::trickled_header_cut_after(&mut slow, "case0.example.com")
        .await
        .expect("a slow header was never cut");
    crate::util::assert_cut_after_two_seconds(closed_after);
    assert_eq!(worker.stats().requests, 0);

    // A kept-alive connection idle past the deadline is not cut: the clock
    // starts at a request's first byte.
    let mut kept = connection_from("127.0.0.1", proxy.addr).await;
    assert_eq!(status_on(&mut kept).await, Some(200));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status_on(&mut kept).await, Some(200));
    assert_eq!(proxy.metric("fledge_slow_headers_total").await, Some(1.0));

    // ... but a kept-alive connection's next header has its own deadline.
    let mut reused = TcpStream::connect(proxy.addr).await.unwrap();
    reused
        .write_all(b"GET /web/login HTTP/1.1\r\nHost: case0.example.com\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(crate::util::response_status(&mut reused).await, Some(200));
    let cut = crate::util::trickled_header_cut_after(&mut reused, "case0.example.com")
        .await
        .expect("a kept-alive connection's slow header was never cut");
    assert!(
        cut >= Duration::from_secs(2) && cut < Duration::from_secs(8),
        "{cut:?}"
    );
    assert_eq!(proxy.metric("fledge_slow_headers_total").await, Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_after_a_request_body_keeps_its_idle_time() {
    // A request body is read with reads the size of what is left, which can
    // leave the socket marked readable with nothing to read; the wait for
    // the next request must not take that mark for a request, or the header
    // clock starts on an idle connection and cuts it (counted slow) at the
    // header deadline instead of its idle time. The unit tests in
    // `proxy::connections` pin the wait itself down.
    let (_worker, proxy) = two_second_header_deadline().await;
    let body = format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"call\",\"params\":{{}}}}{}",
        " ".repeat(4000)
    );
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    for _ in 0..3 {
        let head = format!(
            "POST /web/dataset/call_kw HTTP/1.1\r\nHost: case0.example.com\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        tcp.write_all(body.as_bytes()).await.unwrap();
        assert_eq!(crate::util::response_status(&mut tcp).await, Some(200));
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    tcp.write_all(b"GET /web/login HTTP/1.1\r\nHost: case0.example.com\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(crate::util::response_status(&mut tcp).await, Some(200));
    assert_eq!(proxy.metric("fledge_slow_headers_total").await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_is_closed_once_idle_for_its_idle_time_counted_from_its_last_request() {
    // `timeouts.client_keepalive_seconds`: the idle time starts afresh after
    // every request, so a client asking every second keeps its connection
    // for twice the idle time and more; once silent, it is closed when the
    // idle time has passed, not before.
    let worker = mock("17.0").await;
    let config = case0_config(worker.addr(), "timeouts:\n  client_keepalive_seconds: 2\n");
    let proxy = TestProxy::start(&config);
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let mut answered = tokio::time::Instant::now();
    for i in 0..5 {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tcp.write_all(b"GET /web/login HTTP/1.1\r\nHost: case0.example.com\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            crate::util::response_status(&mut tcp).await,
            Some(200),
            "request {i}"
        );
        answered = tokio::time::Instant::now();
    }
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("the idle connection was never closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    crate::util::assert_cut_after_two_seconds(answered.elapsed());
    assert_eq!(worker.stats().requests, 5);
}

/// A worker that misbehaves on request: the path names the fault. `/ok`
/// answers properly and keeps the connection for the next request.
async fn faulty_worker() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut pending = Vec::new();
                loop {
                    // One request head (GETs only: no bodies).
                    let end = loop {
                        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut buf = [0u8; 4096];
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                    pending.drain(..end);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    let answer: &[u8] = match path.as_str() {
                        "/ok" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                        "/close-before-headers" => return,
                        "/garbage-status" => b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nhi",
                        "/cl-and-te" => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nSMUGGLE",
                        "/longer-than-length" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nSMUGGLE",
                        "/reset-mid-body" => {
                            let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").await;
                            let _ = tcp.set_zero_linger();
                            return;
                        }
                        _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                    };
                    if tcp.write_all(answer).await.is_err() || path != "/ok" {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_workers_get_502s_and_never_mix_responses_between_clients() {
    let worker = faulty_worker().await;
    let config = case0_config(worker, "");
    let proxy = TestProxy::start(&config);
    let client = crate::util::Client::new(proxy.addr);
    let host = "case0.example.com";

    // Each fault, many times, while other clients fetch `/ok` on the same
    // worker (and, through fledge's pool, maybe on the same upstream
    // connections): every `/ok` must get its own `ok`.
    let mut bystanders = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        bystanders.push(tokio::spawn(async move {
            let mut wrong = Vec::new();
            for _ in 0..40 {
                let r = client.get(host, "/ok", &[]).await;
                if r.status != 200 || r.body != "ok" {
                    wrong.push(format!("{} {:?}", r.status, r.body));
                }
            }
            wrong
        }));
    }
    for _ in 0..10 {
        for (path, want) in [
            ("/close-before-headers", &[502][..]),
            ("/garbage-status", &[502]),
            ("/cl-and-te", &[200, 502]),
        ] {
            let r = client.get(host, path, &[]).await;
            assert!(want.contains(&r.status.as_u16()), "{path}: {}", r.status);
            assert!(
                !r.body.windows(7).any(|w| w == b"SMUGGLE"),
                "{path}: {:?}",
                r.body
            );
        }
        // The client gets the 5 bytes the length promised, nothing more.
        let r = client.get(host, "/longer-than-length", &[]).await;
        assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"hello"[..]));
        // Headers were sent: the client must see the body cut short, not a
        // complete response.
        let r = client.get(host, "/reset-mid-body", &[]).await;
        assert!(
            r.status == 599 || r.body.len() < 100,
            "{} with {} bytes",
            r.status,
            r.body.len()
        );
    }
    for b in bystanders {
        let wrong = b.await.unwrap();
        assert!(wrong.is_empty(), "responses mixed up: {wrong:?}");
    }
}

/// A reference proxy started for the comparison, stopped on drop.
pub(crate) struct Reference {
    pub name: &'static str,
    pub addr: std::net::SocketAddr,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Reference {
    fn drop(&mut self) {
        // SIGTERM, so that nginx's master takes its worker down with it.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// nginx and HAProxy in front of `worker`, configured as a proxy for Odoo
/// would be (keep-alive upstream, `X-Forwarded-*`), each on a free port;
/// speaking HTTP/2 with prior knowledge (h2c) rather than HTTP/1.1 when
/// `h2`.
pub(crate) fn references(worker: std::net::SocketAddr, h2: bool) -> Vec<Reference> {
    let (nginx_h2, haproxy_h2) = if h2 { (" http2", " proto h2") } else { ("", "") };
    let mut refs = Vec::new();
    let port = crate::util::free_port();
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "daemon off;\nworker_processes 1;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n\
         upstream odoo {{ server {worker}; keepalive 16; }}\n\
         server {{ listen 127.0.0.1:{port}{nginx_h2}; large_client_header_buffers 4 64k;\n\
         location / {{ proxy_pass http://odoo; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
         proxy_set_header Host $host; proxy_set_header X-Forwarded-For $remote_addr; }} }}\n}}\n",
        d = dir.path().display()
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    if let Ok(child) = std::process::Command::new("nginx")
        .args(["-p"])
        .arg(dir.path())
        .args(["-c"])
        .arg(dir.path().join("nginx.conf"))
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        refs.push(Reference {
            name: "nginx",
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            child,
            _dir: dir,
        });
    }
    let port = crate::util::free_port();
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "global\n  maxconn 1024\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  \
         timeout server 10s\n  option forwardfor\n  option http-server-close\n\
         frontend f\n  bind 127.0.0.1:{port}{haproxy_h2}\n  default_backend odoo\nbackend odoo\n  server w {worker}\n"
    );
    std::fs::write(dir.path().join("haproxy.cfg"), conf).unwrap();
    if let Ok(child) = std::process::Command::new("haproxy")
        .arg("-f")
        .arg(dir.path().join("haproxy.cfg"))
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        refs.push(Reference {
            name: "haproxy",
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            child,
            _dir: dir,
        });
    }
    refs
}

/// fledge, nginx and HAProxy in front of one counting worker, for
/// comparing verdicts; `out` starts the Markdown table (one column each).
pub(crate) struct Comparison {
    pub worker: fledge::mock_odoo::MockOdoo,
    pub targets: Vec<(&'static str, std::net::SocketAddr)>,
    pub out: String,
    /// Held for the comparison's length.
    pub proxy: TestProxy,
    /// Held for the comparison's length.
    pub refs: Vec<Reference>,
}

/// Start a [`Comparison`]; the references speak h2c when `h2`.
pub(crate) async fn comparison(h2: bool) -> Comparison {
    let worker = mock("17.0").await;
    let config = format!(
        "listen: \"{{listen}}\"\nthreads: 1\npools:\n  p: {{ workers: [\"{}\"] }}\n\
         tenants:\n  t:\n    hosts: [\"case0.example.com\"]\n    stable: p\n",
        worker.addr()
    );
    let proxy = TestProxy::start(&config);
    let refs = references(worker.addr(), h2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut targets = vec![("fledge", proxy.addr)];
    targets.extend(refs.iter().map(|r| (r.name, r.addr)));
    let out = format!(
        "| case | {} |\n|---|{}\n",
        targets.iter().map(|t| t.0).collect::<Vec<_>>().join(" | "),
        "---|".repeat(targets.len())
    );
    Comparison {
        worker,
        targets,
        out,
        proxy,
        refs,
    }
}

/// The table through fledge, nginx and HAProxy, one case at a time against
/// one counting worker: where do the verdicts differ? Prints a Markdown
/// table (and writes it to `FLEDGE_VERDICTS_OUT` when set). Not a gate:
/// `cargo test --test integration -- --ignored --nocapture verdicts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a comparison to read, needs nginx and haproxy"]
async fn verdicts_of_fledge_nginx_and_haproxy_side_by_side() {
    let Comparison {
        worker,
        targets,
        mut out,
        proxy: _proxy,
        refs: _refs,
    } = comparison(false).await;
    let mut differ = 0;
    for c in cases() {
        let raw = c.raw.replace("{h}", "case0.example.com");
        let mut cells = Vec::new();
        for (_, addr) in &targets {
            let before = worker.stats().requests;
            let answer = exchange(*addr, raw.as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let seen = worker.stats().requests - before;
            cells.push(format!("{} ({seen})", first_status(&answer)));
        }
        let statuses: Vec<&str> = cells.iter().map(|c| c.split(' ').next().unwrap()).collect();
        if statuses.iter().any(|s| *s != statuses[0]) {
            differ += 1;
        }
        out += &format!("| {} | {} |\n", c.name, cells.join(" | "));
    }
    out += &format!(
        "\nStatus (requests the worker saw). {differ} of {} cases get different statuses.\n",
        cases().len()
    );
    println!("{out}");
    if let Some(path) = std::env::var_os("FLEDGE_VERDICTS_OUT") {
        std::fs::write(path, &out).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_trickling_below_the_minimum_rate_is_cut_with_408() {
    let worker = mock("17.0").await;
    let config = case0_config(worker.addr(), "limits:\n  min_upload_bytes_per_second: 1000\n");
    let proxy = TestProxy::start(&config);
    // A large body (streamed by Pingora's proxy) and a small one (read
    // whole by fledge's own path) at once.
    tokio::join!(trickle(&proxy, 100_000), trickle(&proxy, 10_000));
}

/// Send the header of a `length`-byte upload, then its body far under the
/// minimum rate, and expect a 408.
async fn trickle(proxy: &TestProxy, length: usize) {
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /web/binary/upload HTTP/1.1\r\nHost: case0.example.com\r\nContent-Length: {length}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&[b'x'; 100]).await.unwrap();
    // 20 bytes a second: far under 1000, each write restarting Pingora's
    // own read timer.
    let mut answer = Vec::new();
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if tcp.write_all(&[b'x'; 10]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            break;
        }
    }
    assert_eq!(
        first_status(&answer),
        408,
        "{length} bytes: {:?}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_sent_at_once_is_not_cut_for_a_slow_connect_to_its_worker() {
    // A worker whose accept queue is full: the kernel holds fledge's
    // connect (the handshake is dropped and retried) until the queue is
    // emptied, 11 s on, past the upload check's 10 s grace. The client
    // sent its whole body at once; the time fledge spent reaching a worker
    // is no slow upload of the client's.
    let worker = tokio::net::TcpSocket::new_v4().unwrap();
    worker.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let worker = worker.listen(1).unwrap();
    let worker_addr = worker.local_addr().unwrap();
    let config = format!(
        "listen: \"{{listen}}\"\nthreads: 2\ntimeouts:\n  connect_ms: 25000\n\
         limits:\n  min_upload_bytes_per_second: 1000\n\
         pools:\n  p: {{ workers: [\"{worker_addr}\"], health_check: {{ interval_ms: 60000 }} }}\n\
         tenants:\n  t:\n    hosts: [\"case0.example.com\"]\n    stable: p\n"
    );
    let proxy = TestProxy::start(&config);
    // Fill the queue: connections that complete and are not accepted.
    let mut fillers = Vec::new();
    while let Ok(Ok(tcp)) =
        tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(worker_addr)).await
    {
        fillers.push(tcp);
        assert!(fillers.len() < 64, "the worker's accept queue never filled");
    }
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(
        b"POST /web/dataset/call_kw HTTP/1.1\r\nHost: case0.example.com\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await
    .unwrap();
    let serve = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(11)).await;
        loop {
            let (mut conn, _) = worker.accept().await.unwrap();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while !got.ends_with(b"hello") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(40), async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    serve.abort();
    drop(fillers);
    assert!(read.is_ok(), "no answer in 40 s:\n{}", proxy.log());
    assert_eq!(
        first_status(&answer),
        200,
        "{:?}\n{}",
        String::from_utf8_lossy(&answer),
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_serves_1000_requests_then_closes() {
    let worker = mock("17.0").await;
    let config = case0_config(worker.addr(), "");
    let proxy = TestProxy::start(&config);
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let mut served = 0;
    for _ in 0..1100 {
        let sent = tcp
            .write_all(b"GET /web/login HTTP/1.1\r\nHost: case0.example.com\r\n\r\n")
            .await;
        if sent.is_err() || crate::util::response_status(&mut tcp).await != Some(200) {
            break;
        }
        served += 1;
    }
    assert_eq!(served, 1000, "requests served on one connection");
}

/// The README says how many cases each table has: it stays true.
#[test]
fn the_readme_counts_the_tables_as_they_are() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let count_before = |marker: &str| -> usize {
        let at = readme
            .find(marker)
            .unwrap_or_else(|| panic!("README lost {marker:?}"));
        readme[..at]
            .split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count before {marker:?}"))
    };
    assert_eq!(
        count_before("HTTP/1 smuggling and bad-input cases"),
        cases().len()
    );
    assert_eq!(
        count_before("HTTP/2 ones over raw frames"),
        crate::hostile_h2::cases().len()
    );
}
