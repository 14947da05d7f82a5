//! Test utilities: the proxy as a child process, mock pools, a client.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use fledge::mock_odoo::{MockOdoo, Options};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

/// The admin token every test proxy runs with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A port that was free a moment ago (Pingora cannot report the port of a
/// `:0` listener, so we pick one and hand it over).
///
/// Taken below the kernel's ephemeral range (32768 and up on Linux), each
/// port once per test process: between our check and the child's bind,
/// a socket bound to port 0 elsewhere in the tests (a mock worker, a
/// client) can never be given it, nor can another `free_port` call.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // A different start in each run, so a port a previous run's process
    // still holds (TIME_WAIT aside) is unlikely to be next.
    let _ = NEXT.compare_exchange(0, std::process::id() % SPAN + 1, Relaxed, Relaxed);
    loop {
        let port = (FIRST + NEXT.fetch_add(1, Relaxed) % SPAN) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// An address that refuses connections and stays so while the returned
/// socket lives: bound, never listening, so no other test can take its port
/// (a port that was merely free a moment ago can be, under load).
pub fn dead_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// `fledge run` as a child process; killed on drop.
pub struct TestProxy {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The TLS listener, where the config has `{tls_listen}`.
    pub tls: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl TestProxy {
    /// Start fledge with `config`, where `{listen}` stands for the address
    /// it must listen on (and `{tls_listen}` for its TLS listener's). Waits
    /// until it accepts connections.
    pub fn start(config: &str) -> TestProxy {
        Self::start_with_env(config, &[])
    }

    /// Unless `config` says otherwise, the admin listener gets a free port
    /// (`{admin_listen}` stands for it in an `admin:` section of its own)
    /// and `state_dir` is the proxy's temporary directory.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> TestProxy {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut text = config
            .replace("{listen}", &addr.to_string())
            .replace("{admin_listen}", &admin.to_string());
        let tls = config.contains("{tls_listen}").then(|| {
            let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            text = text.replace("{tls_listen}", &tls.to_string());
            tls
        });
        if !text.contains("\nadmin:") {
            text += &format!("admin:\n  listen: \"{admin}\"\n  token_env: FLEDGE_TEST_ADMIN_TOKEN\n");
        }
        if !text.contains("\nstate_dir:") {
            text += &format!("state_dir: \"{}\"\n", dir.path().join("state").display());
        }
        std::fs::write(dir.path().join("fledge.yaml"), text).unwrap();
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        env.push(("FLEDGE_TEST_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()));
        let child = Self::spawn(&dir, &env);
        let mut proxy = TestProxy {
            child,
            addr,
            admin,
            tls,
            dir,
            env,
        };
        proxy.wait_ready();
        proxy
    }

    fn spawn(dir: &tempfile::TempDir, env: &Vec<(String, String)>) -> Child {
        Self::spawn_with(dir, env, &[])
    }

    fn spawn_with(dir: &tempfile::TempDir, env: &Vec<(String, String)>, args: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("fledge.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fledge"));
        cmd.args(["run", "--config"])
            .arg(dir.path().join("fledge.yaml"))
            .args(args)
            .env(
                "FLEDGE_LOG",
                std::env::var("FLEDGE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    }

    /// Kill the process (SIGKILL: nothing is flushed on the way out) and
    /// start it again with the same config and state directory.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the process again (after [`kill`](Self::kill)) with the same
    /// config and state directory.
    pub fn start_again(&mut self) {
        self.child = Self::spawn(&self.dir, &self.env);
        self.wait_ready();
    }

    /// Pingora's graceful upgrade: start a new process with `--upgrade`,
    /// let it take the listening sockets from this one (SIGQUIT), and wait
    /// for the old one to drain and exit. The new process is this proxy's
    /// from then on.
    pub fn upgrade(&mut self) {
        let mut new = Self::spawn_with(&self.dir, &self.env, &["--upgrade"]);
        // The new process says it waits for the sockets before the old one
        // may send them (the old one refuses a SIGQUIT nobody waits for).
        let waiting = self.state_dir().join("upgrade.waiting");
        let says = || std::fs::read_to_string(&waiting).is_ok_and(|p| p.trim() == new.id().to_string());
        for _ in 0..200 {
            if says() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        assert!(
            says(),
            "the new process never waited for the sockets:\n{}",
            self.log()
        );
        let old_pid = self.child.id().to_string();
        let quit = Command::new("kill").args(["-QUIT", &old_pid]).status().unwrap();
        assert!(quit.success());
        // The old process drains (grace period), then exits.
        for _ in 0..600 {
            if self.child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            self.child.try_wait().unwrap().is_some(),
            "the old process did not exit"
        );
        std::mem::swap(&mut self.child, &mut new);
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the new process exited with {status}:\n{}", self.log());
        }
    }

    /// Wait up to `limit` for the process to exit on its own.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let step = Duration::from_millis(50);
        for _ in 0..=limit.as_millis() / step.as_millis() {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(step);
        }
        false
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The decision journal, one JSON value per line.
    pub fn journal(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.state_dir().join("journal.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// A request to the admin listener with the token.
    pub async fn admin(&self, method: &str, path: &str, body: &str) -> Resp {
        self.admin_with(method, path, body, &[]).await
    }

    pub async fn admin_with(&self, method: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> Resp {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let mut h = vec![("authorization", auth.as_str())];
        h.extend_from_slice(headers);
        if !body.is_empty() {
            h.push(("content-type", "application/json"));
        }
        Client::new(self.admin)
            .send(method, "", path, &h, full(body.to_owned()))
            .await
    }

    /// `GET /metrics` from the admin listener.
    pub async fn metrics(&self) -> String {
        let r = self.admin("GET", "/metrics", "").await;
        assert_eq!(r.status, 200);
        String::from_utf8(r.body.to_vec()).unwrap()
    }

    /// A sample's value from `/metrics`, e.g. `fledge_canary_weight{tenant="acme"}`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    fn wait_ready(&mut self) {
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("fledge exited with {status}:\n{}", self.log());
            }
            if std::net::TcpStream::connect(self.addr).is_ok()
                && std::net::TcpStream::connect(self.admin).is_ok()
                && self.tls.is_none_or(|a| std::net::TcpStream::connect(a).is_ok())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("fledge did not listen on {} in 10 s:\n{}", self.addr, self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("fledge.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM: the process stops accepting, lets what is in flight finish
    /// within its grace period, and exits.
    pub fn terminate(&self) {
        let term = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
    }

    /// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("fledge.yaml")
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines = std::env::var("FLEDGE_TEST_LOG_LINES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(40);
            let tail: Vec<&str> = log.lines().rev().take(lines).collect();
            eprintln!("--- fledge log (last {lines} lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A mock worker on a free port.
pub async fn mock(version: &str) -> MockOdoo {
    MockOdoo::start("127.0.0.1:0".parse().unwrap(), Options::new(version))
        .await
        .unwrap()
}

pub async fn mock_with(options: Options) -> MockOdoo {
    MockOdoo::start("127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap()
}

/// The standard two-pool config: `acme` with stable `s` and canary `c` at
/// `weight`, overrides from `override_from`.
pub fn two_pools(stable: &[&MockOdoo], canary: &[&MockOdoo], weight: f64, override_from: &str) -> String {
    let list = |m: &[&MockOdoo]| {
        m.iter()
            .map(|m| format!("\"{}\"", m.addr()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"listen: "{{listen}}"
threads: 2
pools:
  v17: {{ workers: [{}] }}
  v18: {{ workers: [{}] }}
policies:
  default:
    override_from: [{override_from}]
tenants:
  acme:
    hosts: ["acme.example.com", "*.acme.example.com"]
    stable: v17
    canary: v18
    canary_weight: {weight}
"#,
        list(stable),
        list(canary)
    )
}

/// `acme` served by one worker at `worker` (any address, mock or raw), with
/// `extra` top-level lines.
pub fn one_worker(worker: SocketAddr, extra: &str) -> String {
    format!(
        r#"listen: "{{listen}}"
threads: 2
{extra}pools:
  one: {{ workers: ["{worker}"] }}
tenants:
  acme:
    hosts: ["acme.example.com"]
    stable: one
"#
    )
}

pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// An HTTP/1.1 client with keep-alive that talks to the proxy.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Body>,
    base: String,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The connection failed: a 599 whose body says why.
    fn transport_error(e: &dyn std::fmt::Debug) -> Resp {
        Resp {
            status: StatusCode::from_u16(599).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(format!("transport error: {e:?}")),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn version(&self) -> &str {
        self.header("x-fledge-version").unwrap_or("(none)")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// `name=value` of every Set-Cookie, attributes dropped.
    pub fn cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
            .collect()
    }
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        let inner = HyperClient::builder(TokioExecutor::new()).build_http();
        Client {
            inner,
            base: format!("http://{addr}"),
        }
    }

    pub async fn send(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Resp {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        // For HTTP/2 the authority is the tenant's host; for HTTP/1 the Host header.
        if !host.is_empty() {
            req = req.header("host", host);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = match self.inner.request(req.body(body).unwrap()).await {
            Ok(r) => r,
            Err(e) => return Resp::transport_error(&e),
        };
        let (parts, body) = resp.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Resp::transport_error(&e),
        };
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.send("GET", host, path, headers, full(Bytes::new())).await
    }

    pub async fn post_json(&self, host: &str, path: &str, headers: &[(&str, &str)], json: &str) -> Resp {
        let mut h = headers.to_vec();
        h.push(("content-type", "application/json"));
        self.send("POST", host, path, &h, full(json.to_owned())).await
    }
}

/// A JSON-RPC call body as Odoo's web client sends it.
pub fn call_kw(id: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","method":"call","params":{{"model":"res.partner","method":"read","args":[[1]],"kwargs":{{}}}},"id":{id}}}"#
    )
}

/// One HTTP/2 (h2c, prior knowledge) request to `addr` for `uri`, whose
/// authority becomes `:authority`; no Host header is sent.
pub async fn h2_get(addr: SocketAddr, uri: &str) -> Resp {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder().uri(uri).body(full(Bytes::new())).unwrap();
    let resp = send.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// What a load run saw, by the version that answered.
#[derive(Default)]
pub struct LoadStats {
    pub sent: std::sync::atomic::AtomicU64,
    pub stable: std::sync::atomic::AtomicU64,
    pub canary: std::sync::atomic::AtomicU64,
    /// 5xx, JSON-RPC errors and transport errors, as a user would see them.
    pub failed: std::sync::atomic::AtomicU64,
    /// Connections that failed without an HTTP answer.
    pub transport_errors: std::sync::atomic::AtomicU64,
    /// Page loads sent again after their kept-alive connection closed under
    /// them (only with [`start_browser_load`]).
    pub retried: std::sync::atomic::AtomicU64,
}

/// Steady traffic from many sessions, until dropped.
pub struct Load {
    stop: tokio::sync::watch::Sender<bool>,
    pub stats: std::sync::Arc<LoadStats>,
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Load {
    pub fn get(&self, counter: &std::sync::atomic::AtomicU64) -> u64 {
        counter.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// `rps` requests a second to `host`, each from one of 500 logged-in
/// sessions in turn: JSON-RPC calls when `jsonrpc`, else page loads. Each request runs
/// in its own task, so a slow canary does not slow the rate.
pub fn start_load(addr: SocketAddr, host: &'static str, rps: u32, jsonrpc: bool) -> Load {
    load(addr, host, rps, jsonrpc, false)
}

/// Page loads as browsers send them: a GET whose reused kept-alive
/// connection closes before any answer is sent once more on a new one
/// (RFC 9112 §9.3.1; browsers do it for idempotent requests). A server
/// that closes idle connections at shutdown races clients picking them at
/// that moment; no server can avoid it, clients absorb it this way.
pub fn start_browser_load(addr: SocketAddr, host: &'static str, rps: u32) -> Load {
    load(addr, host, rps, false, true)
}

fn load(addr: SocketAddr, host: &'static str, rps: u32, jsonrpc: bool, retry: bool) -> Load {
    use std::sync::atomic::Ordering::Relaxed;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let stats = std::sync::Arc::new(LoadStats::default());
    let s = std::sync::Arc::clone(&stats);
    // Sessions as a mock Odoo issues them at login: logged-in users.
    let sessions: std::sync::Arc<Vec<String>> =
        std::sync::Arc::new((0..500).map(|_| fledge::mock_odoo::new_session()).collect());
    tokio::spawn(async move {
        let client = Client::new(addr);
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps)));
        let mut i = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.changed() => return,
            }
            i += 1;
            let (client, s) = (client.clone(), std::sync::Arc::clone(&s));
            let cookie = format!("session_id={}", sessions[(i % 500) as usize]);
            tokio::spawn(async move {
                s.sent.fetch_add(1, Relaxed);
                let r = if jsonrpc {
                    client
                        .post_json(
                            host,
                            "/web/dataset/call_kw/res.partner/read",
                            &[("cookie", &cookie)],
                            &call_kw(i),
                        )
                        .await
                } else {
                    let mut r = client.get(host, "/web/login", &[("cookie", &cookie)]).await;
                    let closed_under_it = |r: &Resp| {
                        let e = String::from_utf8_lossy(&r.body);
                        r.status.as_u16() == 599
                            && (e.contains("ConnectionReset") || e.contains("IncompleteMessage"))
                    };
                    if retry && closed_under_it(&r) {
                        s.retried.fetch_add(1, Relaxed);
                        r = client.get(host, "/web/login", &[("cookie", &cookie)]).await;
                    }
                    r
                };
                match r.version() {
                    "canary" => s.canary.fetch_add(1, Relaxed),
                    _ => s.stable.fetch_add(1, Relaxed),
                };
                let rpc_error = jsonrpc && r.status == 200 && r.json().get("error").is_some();
                if r.status.is_server_error() || rpc_error {
                    s.failed.fetch_add(1, Relaxed);
                }
                if r.status.as_u16() == 599 {
                    s.transport_errors.fetch_add(1, Relaxed);
                    eprintln!("load: {}", String::from_utf8_lossy(&r.body));
                }
            });
        }
    });
    Load { stop, stats }
}

/// Wait up to `secs` for `check` to hold, polling every 50 ms.
pub async fn eventually<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Send the start of a request header on `stream`, then a line every 300 ms,
/// as a slowloris client does (each read restarts Pingora's own timer).
/// How long after the first line the proxy closed the connection, or `None`
/// if it was still open after 12 s.
pub async fn trickled_header_cut_after<S>(stream: &mut S, host: &str) -> Option<Duration>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = format!("GET /web/login HTTP/1.1\r\nHost: {host}\r\n");
    stream.write_all(start.as_bytes()).await.ok()?;
    let started = tokio::time::Instant::now();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
            return Some(started.elapsed());
        }
        let mut buf = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await
        {
            return Some(started.elapsed());
        }
    }
    None
}

/// Read one response with a `Content-Length` from `stream`; its status.
pub async fn response_status<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<u16> {
    let (head, _) = read_message(stream).await?;
    head.get(9..12).and_then(|s| s.parse().ok())
}

/// One HTTP/1 message framed by `Content-Length` (or without a body), read
/// from `stream` byte by byte, so that nothing of the next one is taken:
/// its head (lowercased, without the blank line) and its body. `None`: the
/// stream ended or failed first.
pub async fn read_message<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.ok()?);
    }
    let head = String::from_utf8_lossy(&head[..head.len() - 4]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some((head, body))
}

/// A slow header under a 2 s deadline was cut at it: not before, and not
/// much after (a busy machine's timers are late by seconds at most).
pub fn assert_cut_after_two_seconds(closed_after: Duration) {
    assert!(
        closed_after >= Duration::from_secs(2),
        "cut too early: {closed_after:?}"
    );
    assert!(
        closed_after < Duration::from_secs(8),
        "cut too late: {closed_after:?}"
    );
}
