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

/// A port that was free a moment ago (Pingora cannot report the port of a
/// `:0` listener, so we pick one and hand it over).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `fledge run` as a child process; killed on drop.
pub struct TestProxy {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl TestProxy {
    /// Start fledge with `config`, where `{listen}` stands for the address
    /// it must listen on. Waits until it accepts connections.
    pub fn start(config: &str) -> TestProxy {
        Self::start_with_env(config, &[])
    }

    /// Unless `config` says otherwise, the admin listener gets a free port
    /// and `state_dir` is the proxy's temporary directory.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> TestProxy {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut text = config.replace("{listen}", &addr.to_string());
        if !text.contains("\nadmin:") {
            text += &format!("admin:\n  listen: \"{admin}\"\n");
        }
        if !text.contains("\nstate_dir:") {
            text += &format!("state_dir: \"{}\"\n", dir.path().join("state").display());
        }
        std::fs::write(dir.path().join("fledge.yaml"), text).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let child = Self::spawn(&dir, &env);
        let mut proxy = TestProxy {
            child,
            addr,
            admin,
            dir,
            env,
        };
        proxy.wait_ready();
        proxy
    }

    fn spawn(dir: &tempfile::TempDir, env: &Vec<(String, String)>) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("fledge.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fledge"));
        cmd.args(["run", "--config"])
            .arg(dir.path().join("fledge.yaml"))
            .env("FLEDGE_LOG", "info")
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
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.dir, &self.env);
        self.wait_ready();
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

    /// `GET /metrics` from the admin listener.
    pub async fn metrics(&self) -> String {
        let r = Client::new(self.admin).get("", "/metrics", &[]).await;
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
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn version(&self) -> &str {
        self.header("x-fledge-version").unwrap_or("(none)")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
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
        let resp = self.inner.request(req.body(body).unwrap()).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
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
