//! Tenant by host, the weighted split, stickiness, the override header and
//! forwarded headers, through the real proxy.

use crate::util::{call_kw, h2_get, mock, one_worker, two_pools, Client, TestProxy};

const HOST: &str = "acme.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_sends_about_the_weight_of_2000_clients_to_the_canary() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let proxy = TestProxy::start(&two_pools(&[&s], &[&c], 20.0, ""));
    let client = Client::new(proxy.addr);
    let mut canary = 0;
    for i in 0..2_000 {
        let cookie = format!("session_id=client-{i}");
        let r = client.get(HOST, "/web/login", &[("cookie", &cookie)]).await;
        assert_eq!(r.status, 200);
        // The header says the truth: the mock that answered agrees.
        let served_by = r.header("x-odoo-version").unwrap();
        match r.version() {
            "canary" => {
                assert_eq!(served_by, "18.0");
                canary += 1;
            }
            "stable" => assert_eq!(served_by, "17.0"),
            other => panic!("X-Fledge-Version: {other}"),
        }
    }
    let share = canary as f64 / 20.0;
    assert!(
        (17.0..=23.0).contains(&share),
        "{share}% of 2000 clients on a 20% canary"
    );
    assert_eq!(s.stats().requests + c.stats().requests, 2_000);
}

/// A browser: keeps the cookies it is given.
struct Browser {
    cookies: Vec<String>,
}

impl Browser {
    fn new(session: &str) -> Self {
        Browser {
            cookies: vec![format!("session_id={session}")],
        }
    }

    async fn visit(&mut self, client: &Client) -> String {
        let jar = self.cookies.join("; ");
        let r = client.get(HOST, "/web/login", &[("cookie", &jar)]).await;
        assert_eq!(r.status, 200);
        for set in r.cookies() {
            let name = set.split('=').next().unwrap().to_owned();
            self.cookies.retain(|c| !c.starts_with(&format!("{name}=")));
            self.cookies.push(set);
        }
        r.version().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stick_and_raising_the_weight_moves_nobody_back_to_stable() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let env = [("FLEDGE_TEST_COOKIE_SECRET", "a shared secret of 32 bytes.....")];
    let config =
        |w: f64| two_pools(&[&s], &[&c], w, "") + "cookies:\n  secret_env: FLEDGE_TEST_COOKIE_SECRET\n";

    // 10 %: one session keeps its version for 200 requests.
    let proxy = TestProxy::start_with_env(&config(10.0), &env);
    let client = Client::new(proxy.addr);
    let mut one = Browser::new("steady");
    let first = one.visit(&client).await;
    for _ in 0..200 {
        assert_eq!(one.visit(&client).await, first);
    }
    let mut browsers: Vec<Browser> = (0..300).map(|i| Browser::new(&format!("user-{i}"))).collect();
    let mut before = Vec::new();
    for b in &mut browsers {
        before.push(b.visit(&client).await);
    }
    drop(proxy);

    // 30 %, same cookie secret (as another instance or a restart would have).
    let proxy = TestProxy::start_with_env(&config(30.0), &env);
    let client = Client::new(proxy.addr);
    let mut gained = 0;
    for (b, was) in browsers.iter_mut().zip(&before) {
        let now = b.visit(&client).await;
        assert!(
            !(was == "canary" && now == "stable"),
            "a canary client went back to stable"
        );
        gained += usize::from(was == "stable" && now == "canary");
    }
    assert!(
        gained > 20,
        "raising 10 → 30 % added only {gained} of 300 clients"
    );
    drop(proxy);

    // 0 %: everyone on stable, canary cookies or not.
    let proxy = TestProxy::start_with_env(&config(0.0), &env);
    let client = Client::new(proxy.addr);
    for b in &mut browsers {
        assert_eq!(b.visit(&client).await, "stable");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_header_is_honoured_from_allowed_networks_and_always_stripped() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let allowed = TestProxy::start(&two_pools(&[&s], &[&c], 0.0, "\"127.0.0.0/8\""));
    let denied = TestProxy::start(&two_pools(&[&s], &[&c], 0.0, "\"10.0.0.0/8\""));

    let r = Client::new(allowed.addr)
        .get(HOST, "/__mock/echo", &[("x-fledge-version", "canary")])
        .await;
    assert_eq!(
        (r.version(), r.json()["version"].as_str()),
        ("canary", Some("18.0"))
    );
    assert!(
        r.json()["headers"].get("x-fledge-version").is_none(),
        "override header reached the worker"
    );

    for _ in 0..20 {
        let r = Client::new(denied.addr)
            .get(HOST, "/__mock/echo", &[("x-fledge-version", "canary")])
            .await;
        assert_eq!(
            (r.version(), r.json()["version"].as_str()),
            ("stable", Some("17.0"))
        );
        assert!(
            r.json()["headers"].get("x-fledge-version").is_none(),
            "override header reached the worker"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarded_headers_are_replaced() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let proxy = TestProxy::start(&two_pools(&[&s], &[&c], 0.0, ""));
    let client = Client::new(proxy.addr);
    let r = client
        .get(
            "shop.acme.example.com:8443",
            "/__mock/echo",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-for", "198.51.100.7"),
                ("x-forwarded-host", "evil.example.net"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(
        h["x-forwarded-host"],
        serde_json::json!(["shop.acme.example.com:8443"])
    );
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["http"]));
    assert_eq!(r.version(), "stable");
}

/// `Connection: X-Forwarded-For` asks a proxy to drop the header after
/// setting it (CVE-2026-105299's class): refused before any worker sees it.
/// Nominating other headers only strips those, never the ones we add.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_nominated_headers_cannot_remove_the_ones_fledge_adds() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let proxy = TestProxy::start(&two_pools(&[&s], &[&c], 0.0, "\"127.0.0.0/8\""));
    let client = Client::new(proxy.addr);
    for protected in ["X-Forwarded-For", "x-forwarded-host", "X-Forwarded-Proto", "Host"] {
        let r = client
            .get(
                HOST,
                "/__mock/echo",
                &[("connection", &format!("keep-alive, {protected}"))],
            )
            .await;
        assert_eq!(r.status, 400, "{protected}");
    }
    assert_eq!(
        s.stats().requests + c.stats().requests,
        0,
        "a refused request reached a worker"
    );

    let r = client
        .get(
            HOST,
            "/__mock/echo",
            &[
                ("connection", "keep-alive, X-Custom, X-Fledge-Version"),
                ("x-custom", "1"),
                ("x-fledge-version", "canary"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let h = &r.json()["headers"];
    assert!(
        h.get("x-custom").is_none() && h.get("x-fledge-version").is_none(),
        "{h}"
    );
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["http"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_hosts_get_a_plain_404_and_reach_no_worker() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let proxy = TestProxy::start(&two_pools(&[&s], &[&c], 50.0, ""));
    let client = Client::new(proxy.addr);
    for host in [
        "other.example.com",
        "acme.example.com.evil.net",
        "example.com",
        "",
    ] {
        let r = client.get(host, "/web/login", &[]).await;
        assert_eq!(r.status, 404, "{host}");
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert!(String::from_utf8_lossy(&r.body).contains("no tenant"));
    }
    assert_eq!(s.stats().requests + c.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_visit_gets_signed_http_only_cookies_and_json_rpc_passes() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let proxy = TestProxy::start(&two_pools(&[&s], &[&c], 50.0, ""));
    let client = Client::new(proxy.addr);
    let r = client.get(HOST, "/web/login", &[]).await;
    let set: Vec<&str> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    for name in ["fledge_version=", "fledge_bucket="] {
        let cookie = set
            .iter()
            .find(|c| c.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not set: {set:?}"));
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
            "{cookie}"
        );
    }
    let r = client
        .post_json(HOST, "/web/dataset/call_kw/res.partner/read", &[], &call_kw(7))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], 7);
    assert!(r.json()["result"]["server_version"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_are_routed_by_authority() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let proxy = TestProxy::start(&two_pools(&[&s], &[&c], 0.0, ""));
    let r = h2_get(proxy.addr, "http://shop.acme.example.com/__mock/echo").await;
    assert_eq!((r.status.as_u16(), r.version()), (200, "stable"));
    assert_eq!(
        r.json()["headers"]["x-forwarded-host"],
        serde_json::json!(["shop.acme.example.com"])
    );
    let r = h2_get(proxy.addr, "http://nobody.example.com/").await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rehearsal_traffic_is_counted_apart_as_well() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let text = two_pools(&[&s], &[&c], 0.0, "").replace(
        "pools:",
        "rehearsal:\n  from: [\"10.9.9.0/24\"]\n  token_env: FLEDGE_TEST_REHEARSAL_TOKEN\npools:",
    );
    let token = "rehearsal-token-0123456789";
    let proxy = TestProxy::start_with_env(&text, &[("FLEDGE_TEST_REHEARSAL_TOKEN", token)]);
    let client = Client::new(proxy.addr);
    // Loopback is not in `rehearsal.from`: only the tagged requests with
    // the token count as rehearsal; a tag alone, or with a wrong token,
    // counts for nothing.
    for i in 0..7 {
        let tag: &[(&str, &str)] = match i {
            0..3 => &[
                ("x-fledge-rehearsal", "steady"),
                ("x-fledge-rehearsal-token", token),
            ],
            3 => &[("x-fledge-rehearsal", "steady")],
            4 => &[
                ("x-fledge-rehearsal", "steady"),
                ("x-fledge-rehearsal-token", "wrong-token-0123456789"),
            ],
            _ => &[],
        };
        assert_eq!(
            client.get("acme.example.com", "/web/login", tag).await.status,
            200
        );
    }
    let series = |name: &str| format!("{name}{{tenant=\"acme\",version=\"stable\",outcome=\"ok\"}}");
    // A request is counted once its answer is sent: wait for the last.
    let all = series("fledge_requests_total");
    let counted = crate::util::eventually(5, || async { proxy.metric(&all).await == Some(7.0) }).await;
    assert!(counted, "{}", proxy.metrics().await);
    assert_eq!(
        proxy.metric(&series("fledge_rehearsal_requests_total")).await,
        Some(3.0)
    );
}

/// Issue 23: every header only fledge may set is gone at the worker, and
/// a host that is no host name gets 400 and reaches no worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_only_fledge_sets_never_reach_the_worker_and_bad_hosts_get_400() {
    let head = through_to_worker(
        b"GET /web HTTP/1.1\r\nHost: acme.example.com\r\nX-Fledge-Version: canary\r\n\
X-Fledge-Rehearsal: steady\r\nX-Fledge-Anything: 1\r\nForwarded: for=6.6.6.6;proto=https\r\n\
X-Real-IP: 6.6.6.6\r\nX-Forwarded-Port: 443\r\nX-Forwarded-Prefix: /admin\r\n\
X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nX-Odoo-Db: acme\r\nConnection: close\r\n\r\n",
    )
    .await;
    for gone in [
        "x-fledge-version:",
        "x-fledge-rehearsal:",
        "x-fledge-anything:",
        "forwarded:",
        "x-real-ip:",
        "x-forwarded-port:",
        "x-forwarded-prefix:",
        "6.6.6.6",
        "evil.example",
    ] {
        assert!(!head.contains(gone), "{gone} reached the worker:\n{head}");
    }
    assert!(head.contains("x-forwarded-for: 127.0.0.1"), "{head}");
    assert!(head.contains("x-forwarded-host: acme.example.com"), "{head}");
    assert!(
        head.contains("x-odoo-db: acme"),
        "the application's own headers pass:\n{head}"
    );

    // Hosts that are no host names: 400, no worker, no redirect.
    let (worker, mut seen) = recording_worker().await;
    let proxy = TestProxy::start(&one_worker(worker, "").replace(
        "hosts: [\"acme.example.com\"]",
        "hosts: [\"*.acme.example.com\", \"acme.example.com\"]",
    ));
    for host in [
        "evil.example/.acme.example.com",
        "evil.example?.acme.example.com",
        "evil.example#.acme.example.com",
        "user@shop.acme.example.com",
        "shop.acme.example.com:http",
        "shop%2eacme.example.com",
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        c.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 400"), "{host}: {out}");
        assert!(!out.to_ascii_lowercase().contains("location:"), "{host}: {out}");
    }
    assert!(seen.try_recv().is_err(), "a bad host reached the worker");
}

/// A worker that records the head of the one request it gets and answers
/// with headers spelt in mixed case.
/// Send `request` (which asks to close) through fledge to a recording
/// worker; expect a 200 and return the head the worker got, lowercased.
async fn through_to_worker(request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (worker, head) = recording_worker().await;
    let proxy = TestProxy::start(&one_worker(worker, ""));
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(request).await.unwrap();
    let mut response = Vec::new();
    client.read_to_end(&mut response).await.unwrap();
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    head.await.unwrap().to_ascii_lowercase()
}

async fn recording_worker() -> (std::net::SocketAddr, tokio::sync::oneshot::Receiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break, // a health check
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            if head.is_empty() {
                continue;
            }
            let answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Odoo-Version: 17.0\r\nContent-Length: 2\r\n\r\nok";
            conn.write_all(answer).await.unwrap();
            if let Some(tx) = tx.take() {
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            }
        }
    });
    (addr, rx)
}

/// Sends one request with a mixed-case custom header through a fledge with
/// `preserve_header_case: preserve`; the head the worker got and the
/// response head the client got.
async fn through_fledge(preserve: bool) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (worker, head) = recording_worker().await;
    let proxy = TestProxy::start(&one_worker(
        worker,
        &format!("preserve_header_case: {preserve}\n"),
    ));
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET /web/login HTTP/1.1\r\nHost: acme.example.com\r\nX-Client-Tag: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    client.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    (head.await.unwrap(), response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_keep_their_case_only_when_asked() {
    // The default: standard names title-cased, the others lower-cased.
    let (to_worker, to_client) = through_fledge(false).await;
    assert!(to_worker.contains("\r\nx-client-tag: a\r\n"), "{to_worker}");
    assert!(
        to_worker.contains("\r\nHost: acme.example.com\r\n"),
        "{to_worker}"
    );
    assert!(to_client.contains("\r\nx-odoo-version: 17.0\r\n"), "{to_client}");
    assert!(
        to_client.contains("\r\nContent-Type: text/plain\r\n"),
        "{to_client}"
    );
    assert!(to_client.ends_with("\r\n\r\nok"), "{to_client}");
    // fledge's own headers go like the others.
    assert!(
        to_worker.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
        "{to_worker}"
    );
    assert!(
        to_client.contains("\r\nx-fledge-version: stable\r\n"),
        "{to_client}"
    );
    // Asked to: spelt as sent, both ways; fledge's own in their usual spelling.
    let (to_worker, to_client) = through_fledge(true).await;
    assert!(to_worker.contains("\r\nX-Client-Tag: a\r\n"), "{to_worker}");
    assert!(to_client.contains("\r\nX-Odoo-Version: 17.0\r\n"), "{to_client}");
    assert!(
        to_worker.contains("\r\nX-Forwarded-For: 127.0.0.1\r\n"),
        "{to_worker}"
    );
    assert!(
        to_worker.contains("\r\nX-Forwarded-Proto: http\r\n"),
        "{to_worker}"
    );
    assert!(
        to_client.contains("\r\nX-Fledge-Version: stable\r\n"),
        "{to_client}"
    );
    assert!(to_client.ends_with("\r\n\r\nok"), "{to_client}");
}

/// An absolute-form request (as a client configured for a forward proxy
/// sends it) is served, and reaches the worker with its `Host`: its
/// authority goes through the same reconciling step as in Pingora's proxy.
/// (Without a `Host` it names no tenant fledge knows: a 404.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_request_reaches_the_worker_with_its_host() {
    let to_worker = through_to_worker(
        b"GET http://acme.example.com/web/login HTTP/1.1\r\nHost: acme.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        to_worker.contains("\r\nhost: acme.example.com\r\n"),
        "{to_worker}"
    );
}

/// A client may name `Content-Length` in `Connection`, which makes it a
/// hop-by-hop header that stops at fledge: the body still reaches the
/// worker whole (chunked), not dropped for want of a length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_whose_length_is_named_in_connection_still_reaches_the_worker() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let worker = mock("17.0").await;
    let proxy = TestProxy::start(&one_worker(worker.addr(), ""));
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let body = r#"{"jsonrpc":"2.0","params":{}}"#;
    let request = format!(
        "POST /web/binary/upload HTTP/1.1\r\nHost: acme.example.com\r\nContent-Length: {}\r\n\
         Connection: close, content-length\r\n\r\n{body}",
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    client.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.ends_with(&format!(r#"{{"received":{}}}"#, body.len())),
        "the worker did not get the body: {response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stop_at_fledge() {
    let to_worker = through_to_worker(
        b"GET /web/login HTTP/1.1\r\nHost: acme.example.com\r\nKeep-Alive: timeout=5\r\n\
          Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic YTpi\r\nTE: trailers\r\n\
          Trailer: X-Sum\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nX-Client-Tag: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    for name in [
        "keep-alive:",
        "proxy-connection:",
        "proxy-authorization:",
        "te:",
        "trailer:",
        "http2-settings:",
    ] {
        assert!(
            !to_worker.contains(&format!("\r\n{name}")),
            "{name} reached the worker: {to_worker}"
        );
    }
    assert!(to_worker.contains("\r\nx-client-tag: a\r\n"), "{to_worker}");
}
