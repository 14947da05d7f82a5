//! A stand-in for Odoo workers, used by tests, the demo and rehearsals.
//!
//! It answers the routes fledge cares about the way Odoo does:
//!
//! | route | answer |
//! |---|---|
//! | `GET /web/health` | `{"status": "pass"}` (only `health_status` changes it) |
//! | `/web/login` | an HTML page; sets a `session_id` cookie when the client has none |
//! | `POST /web/session/authenticate` | JSON-RPC: logs in (any login), sets a new `session_id` |
//! | `POST /web/session/get_session_info`, `/web/dataset/call_kw/*`, `/jsonrpc` | JSON-RPC 2.0, errors as **HTTP 200 with an `error` member** like Odoo |
//! | `GET /web/assets/*` | a 64 KiB static blob |
//! | `GET /web/content/*?size=N` | an N-byte download (default 1 MiB), streamed |
//! | `POST /web/binary/*` | an upload, streamed and counted, answered with its size |
//! | `GET /websocket` | a WebSocket that echoes, and pushes bus-like notifications |
//! | `/longpolling/poll` | held for the long-poll time, then an empty result |
//! | `/__mock/echo` | the request (method, path, headers) as JSON |
//! | `GET /__mock/stats` | counters (requests, POSTs, bytes uploaded, …) |
//! | `GET/PUT /__mock/knobs` | read or change the fault knobs (JSON, partial updates) |
//!
//! Every response carries `X-Odoo-Version` (the version this mock plays)
//! and `X-Odoo-Worker` (its address). Fault knobs, applied to every route
//! but `/web/health` and `/__mock/*`: `error_rate` (HTTP 500),
//! `jsonrpc_error_rate` (HTTP 200 + `error`, on JSON-RPC routes: a server
//! fault, `builtins.ZeroDivisionError`), `user_error_rate` (the same with
//! `odoo.exceptions.UserError`, the user's doing), `check_sessions` (a
//! JSON-RPC call whose `session_id` no mock issued gets Odoo's
//! `SessionExpiredException`, code 100, as a real Odoo answers a made-up
//! or expired session; mocks share their sessions, as Odoo workers share
//! a session store),
//! `latency_ms` (added before answering) and `close_rate` (the connection is
//! dropped without an answer, as a crashing worker does).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Size of the `/web/assets/*` blob.
const ASSET_SIZE: usize = 64 * 1024;
/// Chunk size of streamed downloads.
const CHUNK: usize = 64 * 1024;
/// Default size of a `/web/content/*` download.
const DEFAULT_DOWNLOAD: u64 = 1024 * 1024;
/// Largest JSON-RPC request body read into memory.
const MAX_JSON_BODY: usize = 1024 * 1024;

/// Fault knobs, changeable at run time through `/__mock/knobs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Knobs {
    /// Share of requests answered with HTTP 500 (0.0..=1.0).
    pub error_rate: f64,
    /// Share of JSON-RPC calls answered with HTTP 200 and an `error` member
    /// that is the server's fault (`builtins.ZeroDivisionError`).
    pub jsonrpc_error_rate: f64,
    /// Share of JSON-RPC calls answered with a `UserError` (the user's doing).
    pub user_error_rate: f64,
    /// JSON-RPC calls with a `session_id` no mock issued get a
    /// `SessionExpiredException` (code 100), as Odoo answers them.
    pub check_sessions: bool,
    /// Delay added before every answer.
    pub latency_ms: u64,
    /// Share of requests whose connection is dropped without an answer.
    pub close_rate: f64,
    /// The status `/web/health` answers (0: 200, `{"status": "pass"}`), to
    /// play an Odoo whose database is down.
    pub health_status: u16,
}

/// Partial update of [`Knobs`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KnobsPatch {
    error_rate: Option<f64>,
    jsonrpc_error_rate: Option<f64>,
    user_error_rate: Option<f64>,
    check_sessions: Option<bool>,
    latency_ms: Option<u64>,
    close_rate: Option<f64>,
    health_status: Option<u16>,
}

/// How a mock starts.
#[derive(Debug, Clone)]
pub struct Options {
    /// The Odoo version it plays, e.g. `17.0`.
    pub version: String,
    /// Initial fault knobs.
    pub knobs: Knobs,
    /// Interval of pushed bus notifications on `/websocket`; `None`: only echo.
    pub push_interval: Option<Duration>,
    /// How long `/longpolling/poll` holds a request.
    pub longpoll_hold: Duration,
}

/// Counters, read through [`MockOdoo::stats`] or `GET /__mock/stats`.
#[derive(Debug, Default)]
struct Stats {
    requests: AtomicU64,
    posts: AtomicU64,
    jsonrpc: AtomicU64,
    upload_bytes: AtomicU64,
    websockets: AtomicU64,
    websocket_messages: AtomicU64,
    dropped: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Requests received (`/__mock/*` excluded).
    pub requests: u64,
    /// POST requests received (`/__mock/*` excluded).
    pub posts: u64,
    /// JSON-RPC calls received.
    pub jsonrpc: u64,
    /// Bytes of request bodies read by `/web/binary/*`.
    pub upload_bytes: u64,
    /// WebSocket sessions accepted.
    pub websockets: u64,
    /// WebSocket messages received.
    pub websocket_messages: u64,
    /// Connections dropped on purpose (`close_rate`).
    pub dropped: u64,
}

struct State {
    options: Options,
    addr: SocketAddr,
    knobs: ArcSwap<Knobs>,
    stats: Stats,
}

/// A running mock worker; stops when dropped.
pub struct MockOdoo {
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
}

type Body = BoxBody<Bytes, Infallible>;

/// Why a request gets no answer at all.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the close_rate knob")
    }
}

impl std::error::Error for Dropped {}

// === impl Options ===

impl Options {
    /// A healthy mock of `version`.
    pub fn new(version: &str) -> Self {
        Options {
            version: version.to_owned(),
            knobs: Knobs::default(),
            push_interval: None,
            longpoll_hold: Duration::from_secs(50),
        }
    }
}

// === impl MockOdoo ===

impl MockOdoo {
    /// Serve on `listener`, on the current tokio runtime.
    pub fn serve(listener: TcpListener, options: Options) -> std::io::Result<MockOdoo> {
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            knobs: ArcSwap::from_pointee(options.knobs.clone()),
            options,
            addr,
            stats: Stats::default(),
        });
        let (shutdown, rx) = watch::channel(false);
        tokio::spawn(accept_loop(listener, Arc::clone(&state), rx));
        Ok(MockOdoo { state, shutdown })
    }

    /// Bind `addr` (port 0: any free port) and serve.
    pub async fn start(addr: SocketAddr, options: Options) -> std::io::Result<MockOdoo> {
        Self::serve(TcpListener::bind(addr).await?, options)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    /// Current counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.state.snapshot()
    }

    /// Replace the fault knobs.
    pub fn set_knobs(&self, knobs: Knobs) {
        self.state.knobs.store(Arc::new(knobs));
    }

    /// Stop accepting connections (open ones finish).
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for MockOdoo {
    fn drop(&mut self) {
        self.stop();
    }
}

// === impl State ===

impl State {
    fn snapshot(&self) -> StatsSnapshot {
        let s = &self.stats;
        StatsSnapshot {
            requests: s.requests.load(Relaxed),
            posts: s.posts.load(Relaxed),
            jsonrpc: s.jsonrpc.load(Relaxed),
            upload_bytes: s.upload_bytes.load(Relaxed),
            websockets: s.websockets.load(Relaxed),
            websocket_messages: s.websocket_messages.load(Relaxed),
            dropped: s.dropped.load(Relaxed),
        }
    }

    fn base(&self, status: StatusCode) -> http::response::Builder {
        Response::builder()
            .status(status)
            .header("X-Odoo-Version", self.options.version.as_str())
            .header("X-Odoo-Worker", self.addr.to_string())
    }

    fn full(&self, status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
        self.base(status)
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(body.into()).boxed())
            .expect("static response parts are valid")
    }

    fn json(&self, status: StatusCode, value: &serde_json::Value) -> Response<Body> {
        self.full(status, "application/json", value.to_string())
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => {
                    // Out of file descriptors and the like: back off, go on.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, Arc::clone(&state)));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
        });
    }
}

fn chance(rate: f64) -> bool {
    rate > 0.0 && fastrand::f64() < rate
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, Dropped> {
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix("/__mock/") {
        return Ok(control(rest, req, &state).await);
    }
    if path == "/web/health" {
        let status = state.knobs.load().health_status;
        return Ok(match StatusCode::from_u16(status) {
            Ok(s) if status != 200 => state.json(s, &serde_json::json!({"status": "fail"})),
            _ => state.json(StatusCode::OK, &serde_json::json!({"status": "pass"})),
        });
    }
    state.stats.requests.fetch_add(1, Relaxed);
    if req.method() == Method::POST {
        state.stats.posts.fetch_add(1, Relaxed);
    }

    let knobs = state.knobs.load_full();
    if knobs.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(knobs.latency_ms)).await;
    }
    if chance(knobs.close_rate) {
        state.stats.dropped.fetch_add(1, Relaxed);
        return Err(Dropped);
    }
    if chance(knobs.error_rate) {
        let body = format!(
            "<html><body><h1>Internal Server Error</h1><p>odoo {}</p></body></html>",
            state.options.version
        );
        return Ok(state.full(StatusCode::INTERNAL_SERVER_ERROR, "text/html", body));
    }

    let response = if path == "/web/login" {
        login(&req, &state)
    } else if path == "/web/session/authenticate" {
        authenticate(&state)
    } else if path == "/jsonrpc"
        || path == "/web/session/get_session_info"
        || path.starts_with("/web/dataset/call_kw")
    {
        jsonrpc(req, &state, &knobs).await
    } else if path.starts_with("/web/assets/") {
        state.full(StatusCode::OK, "application/javascript", vec![b'/'; ASSET_SIZE])
    } else if path.starts_with("/web/content/") {
        download(&req, &state)
    } else if path.starts_with("/web/binary/") && req.method() == Method::POST {
        upload(req, &state).await
    } else if path == "/websocket" {
        websocket(req, &state)
    } else if path.starts_with("/longpolling/") {
        tokio::time::sleep(state.options.longpoll_hold).await;
        state.json(
            StatusCode::OK,
            &serde_json::json!({"jsonrpc": "2.0", "id": null, "result": []}),
        )
    } else {
        state.full(
            StatusCode::NOT_FOUND,
            "text/html",
            "<html><body>404: Not Found</body></html>",
        )
    };
    Ok(response)
}

fn login(req: &Request<Incoming>, state: &State) -> Response<Body> {
    let has_session = req.headers().get_all(header::COOKIE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(';').any(|c| c.trim().starts_with("session_id=")))
    });
    let body = format!("<html><body>Odoo {} login</body></html>", state.options.version);
    let mut builder = state
        .base(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/html");
    if !has_session {
        let sid = new_session();
        builder = builder.header(header::SET_COOKIE, format!("session_id={sid}; HttpOnly; Path=/"));
    }
    builder
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("valid response")
}

/// Tag of the sessions mocks issue: mocks accept each other's, as Odoo
/// workers share a session store, and nothing else.
const SESSION_TAG: u64 = 0x6d6f_636b_2d6f_646f;

/// A session id as a mock issues it: 16 random hex digits and a tag of them.
pub fn new_session() -> String {
    let id = fastrand::u64(..);
    format!("{id:016x}{:016x}", session_tag(id))
}

fn session_tag(id: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(&id.to_le_bytes(), SESSION_TAG)
}

/// The request carries a `session_id` some mock issued.
fn knows_session(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix("session_id="))
        .any(|sid| {
            sid.len() == 32
                && u64::from_str_radix(&sid[..16], 16)
                    .ok()
                    .zip(u64::from_str_radix(&sid[16..], 16).ok())
                    .is_some_and(|(id, tag)| session_tag(id) == tag)
        })
}

/// `/web/session/authenticate`: any login works; a new session.
fn authenticate(state: &State) -> Response<Body> {
    state.stats.jsonrpc.fetch_add(1, Relaxed);
    let sid = new_session();
    let body = serde_json::json!({"jsonrpc": "2.0", "id": null, "result": {"uid": 2, "db": "mock"}});
    state
        .base(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::SET_COOKIE, format!("session_id={sid}; HttpOnly; Path=/"))
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("valid response")
}

/// The `error` member Odoo's `JsonRPCDispatcher.handle_error` writes for
/// an exception `name` (key order as Odoo's).
fn odoo_error(id: &serde_json::Value, code: u16, message: &str, name: &str) -> serde_json::Value {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": code,
            "message": message,
            "data": {
                "name": name,
                "debug": "Traceback (most recent call last): injected by mock-odoo",
                "message": "injected error",
                "arguments": ["injected error"],
                "context": {}
            }
        }
    })
}

async fn jsonrpc(req: Request<Incoming>, state: &State, knobs: &Knobs) -> Response<Body> {
    state.stats.jsonrpc.fetch_add(1, Relaxed);
    let known = !knobs.check_sessions || knows_session(&req);
    let body = match http_body_util::Limited::new(req.into_body(), MAX_JSON_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return state.full(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", "too large"),
    };
    let id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .unwrap_or(serde_json::Value::Null);
    let version = &state.options.version;
    // What Odoo sends for an exception in a controller: HTTP 200.
    let value = if !known {
        odoo_error(
            &id,
            100,
            "Odoo Session Expired",
            "odoo.http.SessionExpiredException",
        )
    } else if chance(knobs.jsonrpc_error_rate) {
        odoo_error(&id, 200, "Odoo Server Error", "builtins.ZeroDivisionError")
    } else if chance(knobs.user_error_rate) {
        odoo_error(&id, 200, "Odoo Server Error", "odoo.exceptions.UserError")
    } else {
        serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "result": {"server_version": version, "served_by": state.addr.to_string()}
        })
    };
    state.json(StatusCode::OK, &value)
}

fn download(req: &Request<Incoming>, state: &State) -> Response<Body> {
    let size = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("size=")))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_DOWNLOAD);
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let stream = futures_util::stream::unfold(size, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(CHUNK as u64);
            Some((
                Ok::<_, Infallible>(Frame::data(chunk.slice(..n as usize))),
                left - n,
            ))
        }
    });
    state
        .base(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, size)
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("valid response")
}

async fn upload(req: Request<Incoming>, state: &State) -> Response<Body> {
    let mut body = req.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(data) = f.data_ref() {
                    received += data.len() as u64;
                    state.stats.upload_bytes.fetch_add(data.len() as u64, Relaxed);
                }
            }
            Err(_) => return state.full(StatusCode::BAD_REQUEST, "text/plain", "upload interrupted"),
        }
    }
    state.json(StatusCode::OK, &serde_json::json!({"received": received}))
}

fn websocket(req: Request<Incoming>, state: &Arc<State>) -> Response<Body> {
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return state.full(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "expected a WebSocket upgrade",
        );
    };
    if !is_upgrade {
        return state.full(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "expected a WebSocket upgrade",
        );
    }
    state.stats.websockets.fetch_add(1, Relaxed);
    let accept = derive_accept_key(key.as_bytes());
    let session_state = Arc::clone(state);
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        bus_session(ws, &session_state).await;
    });
    state
        .base(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Full::new(Bytes::new()).boxed())
        .expect("valid response")
}

async fn bus_session<S>(mut ws: WebSocketStream<S>, state: &State)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut ticker = state.options.push_interval.map(tokio::time::interval);
    let mut sent = 0u64;
    loop {
        let tick = async {
            match ticker.as_mut() {
                Some(t) => t.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    state.stats.websocket_messages.fetch_add(1, Relaxed);
                    if ws.send(Message::Text(t)).await.is_err() { return; }
                }
                Some(Ok(Message::Binary(b))) => {
                    state.stats.websocket_messages.fetch_add(1, Relaxed);
                    if ws.send(Message::Binary(b)).await.is_err() { return; }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = tick => {
                sent += 1;
                let note = serde_json::json!([{
                    "id": sent,
                    "message": {"type": "bus.notification", "payload": {"version": state.options.version, "seq": sent}}
                }]);
                if ws.send(Message::Text(note.to_string())).await.is_err() { return; }
            }
        }
    }
}

async fn control(rest: &str, req: Request<Incoming>, state: &State) -> Response<Body> {
    match (rest, req.method().clone()) {
        ("stats", Method::GET) => state.json(StatusCode::OK, &serde_json::json!(state.snapshot())),
        ("knobs", Method::GET) => state.json(StatusCode::OK, &serde_json::json!(*state.knobs.load_full())),
        ("knobs", Method::PUT | Method::POST) => {
            let body = match http_body_util::Limited::new(req.into_body(), 64 * 1024)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => return state.full(StatusCode::BAD_REQUEST, "text/plain", "unreadable body"),
            };
            let patch: KnobsPatch = match serde_json::from_slice(&body) {
                Ok(p) => p,
                Err(e) => {
                    return state.json(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({"error": e.to_string()}),
                    )
                }
            };
            let mut k = (*state.knobs.load_full()).clone();
            k.error_rate = patch.error_rate.unwrap_or(k.error_rate);
            k.jsonrpc_error_rate = patch.jsonrpc_error_rate.unwrap_or(k.jsonrpc_error_rate);
            k.user_error_rate = patch.user_error_rate.unwrap_or(k.user_error_rate);
            k.check_sessions = patch.check_sessions.unwrap_or(k.check_sessions);
            k.latency_ms = patch.latency_ms.unwrap_or(k.latency_ms);
            k.close_rate = patch.close_rate.unwrap_or(k.close_rate);
            k.health_status = patch.health_status.unwrap_or(k.health_status);
            let rates = [
                k.error_rate,
                k.jsonrpc_error_rate,
                k.user_error_rate,
                k.close_rate,
            ];
            if rates.iter().any(|r| !(0.0..=1.0).contains(r)) {
                return state.json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &serde_json::json!({"error": "rates are between 0 and 1"}),
                );
            }
            let value = serde_json::json!(k);
            state.knobs.store(Arc::new(k));
            state.json(StatusCode::OK, &value)
        }
        ("echo", _) => {
            let mut headers = serde_json::Map::new();
            for (name, value) in req.headers() {
                let entry = headers
                    .entry(name.as_str().to_owned())
                    .or_insert_with(|| serde_json::Value::Array(Vec::new()));
                if let serde_json::Value::Array(list) = entry {
                    list.push(serde_json::Value::String(
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    ));
                }
            }
            state.json(
                StatusCode::OK,
                &serde_json::json!({
                    "method": req.method().as_str(),
                    "path": req.uri().path(),
                    "headers": headers,
                    "version": state.options.version,
                }),
            )
        }
        _ => state.full(StatusCode::NOT_FOUND, "text/plain", "unknown mock endpoint"),
    }
}
