//! Control plane: the admin listener (`admin.listen`, loopback by default).
//!
//! Every endpoint but `/healthz` and `/readyz` needs `Authorization: Bearer
//! <token>` (compared in constant time). JSON in, JSON out; errors are
//! `{"error": "..."}` with 400/401/404/405/409/422. GETs change nothing.
//! Mutations accept `If-Match: <generation>` and answer 409 when another
//! change came first; every answer carries the current generation in `ETag`.
//! `docs/admin-api.yaml` is the OpenAPI description, checked against these
//! answers by the tests.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/healthz` | the process is up (no token) |
//! | GET | `/readyz` | a route table is published (no token) |
//! | GET | `/metrics` | Prometheus exposition |
//! | GET | `/api/v1/tenants` | every tenant: pools, weight, state, live figures |
//! | GET | `/api/v1/tenants/{name}` | one tenant |
//! | PUT | `/api/v1/tenants/{name}/weight` | `{"weight": 25}` |
//! | POST | `/api/v1/tenants/{name}/{promote,rollback,pause,resume}` | change the canary's state |
//! | POST | `/api/v1/reload` | re-read the config file |
//! | GET | `/api/v1/config` | generation, source file and hash, last reload |
//! | GET | `/api/v1/journal?since=…` | decisions after `since` (Unix ms or RFC 3339) |
//!
//! It runs as a Pingora service (`ServeHttp`, behind [`listener::Listener`]'s
//! connection cap and header deadline), so it shares the server's
//! lifecycle: graceful shutdown, and its listening socket is handed over on
//! a graceful upgrade like the proxy's.

use std::sync::Arc;

use async_trait::async_trait;
use http::{HeaderValue, Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{Encoder, TextEncoder};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::config::Weight;
use crate::control::{Actor, Control, ControlError, Operation};
use crate::metrics::Outcome;
use crate::routing::Version;

pub mod listener;

/// Largest request body read.
const MAX_BODY: usize = 64 * 1024;
/// Most journal entries returned at once (the newest).
const MAX_JOURNAL_ENTRIES: usize = 1_000;

/// The admin bearer token.
pub struct Token(Vec<u8>);

/// The admin application.
pub struct Admin {
    control: Arc<Control>,
    registry: prometheus::Registry,
    token: Token,
    /// The scrapers' listener (`metrics.listen`): `GET /metrics` without
    /// a token, nothing else.
    scrape_only: bool,
}

/// A refused admin request.
#[derive(Debug)]
pub struct AdminError {
    status: StatusCode,
    message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: f64,
}

impl Token {
    /// A token.
    pub fn new(secret: &str) -> Self {
        Token(secret.as_bytes().to_vec())
    }

    /// Does `Authorization` carry this token? Constant time in the token.
    fn admits(&self, header: Option<&HeaderValue>) -> bool {
        let Some(given) = header.and_then(|h| h.as_bytes().strip_prefix(b"Bearer ")) else {
            return false;
        };
        given.len() == self.0.len() && bool::from(given.ct_eq(&self.0))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl AdminError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        AdminError {
            status,
            message: message.into(),
        }
    }
}

/// The one place control-plane errors become statuses.
impl From<ControlError> for AdminError {
    fn from(e: ControlError) -> Self {
        let status = match &e {
            ControlError::UnknownTenant(_) => StatusCode::NOT_FOUND,
            ControlError::HandingOver | ControlError::FleetUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::NoCanary(_) | ControlError::Config(_) | ControlError::NoSource => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ControlError::Conflict(_) | ControlError::StaleGeneration { .. } | ControlError::Moved(_) => {
                StatusCode::CONFLICT
            }
        };
        AdminError::new(status, e.to_string())
    }
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>, generation: u64) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store")
        .header("ETag", format!("\"{generation}\""))
        .body(body)
        .expect("static response parts are valid")
}

fn json_reply(status: StatusCode, value: &Value, generation: u64) -> Response<Vec<u8>> {
    reply(
        status,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
        generation,
    )
}

impl Admin {
    /// Serve `control`'s state and `registry`'s metrics to holders of `token`.
    pub fn new(control: Arc<Control>, registry: prometheus::Registry, token: Token) -> Self {
        Admin {
            control,
            registry,
            token,
            scrape_only: false,
        }
    }

    /// The scrapers' application: `registry`'s metrics at `GET /metrics`,
    /// with no token, and 404 for everything else, so a Prometheus scraper
    /// never holds the token that can roll canaries back.
    pub fn scraper(control: Arc<Control>, registry: prometheus::Registry) -> Self {
        Admin {
            control,
            registry,
            token: Token::new(""),
            scrape_only: true,
        }
    }

    fn metrics(&self, generation: u64) -> Result<Response<Vec<u8>>, AdminError> {
        let mut body = Vec::new();
        let encoder = TextEncoder::new();
        encoder
            .encode(&self.registry.gather(), &mut body)
            .map_err(|e| AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok(reply(StatusCode::OK, encoder.format_type(), body, generation))
    }

    async fn handle(&self, session: &mut ServerSession) -> Result<Response<Vec<u8>>, AdminError> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_owned();
        let query = req.uri.query().unwrap_or("").to_owned();
        let generation = self.control.generation();
        if self.scrape_only {
            return match path.as_str() {
                "/metrics" => {
                    allow(&method, &[Method::GET])?;
                    self.metrics(generation)
                }
                _ => Err(AdminError::new(
                    StatusCode::NOT_FOUND,
                    "this listener serves GET /metrics only (the admin API is on admin.listen)",
                )),
            };
        }
        match (&method, path.as_str()) {
            (&Method::GET, "/healthz") => {
                return Ok(reply(StatusCode::OK, "text/plain", b"ok\n".to_vec(), generation))
            }
            (&Method::GET, "/readyz") => {
                let waiting =
                    self.control.fleet().is_some_and(|l| l.is_up()) && !self.control.fleet_synced().await;
                if waiting {
                    return Ok(reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        b"not ready: the fleet's canary states are not read yet\n".to_vec(),
                        generation,
                    ));
                }
                let table = self.control.routes().load();
                let tenants = table.tenants();
                // Not ready when no tenant's stable pool has a healthy
                // worker: this replica reaches none (its network, say).
                // One tenant's broken pool does not make it unready: every
                // replica sees the same pool, and a load balancer taking
                // them all out would fail every other tenant too.
                let serving = |t: &crate::routing::TenantRoute| t.stable().health().iter().any(|(_, up)| *up);
                if !tenants.is_empty() && !tenants.iter().any(serving) {
                    return Ok(reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        b"not ready: no worker of any tenant's stable pool is healthy\n".to_vec(),
                        generation,
                    ));
                }
                let down = tenants.iter().filter(|t| !serving(t)).count();
                let body = format!(
                    "ready: {} tenants ({down} with no healthy stable worker)\n",
                    tenants.len()
                )
                .into_bytes();
                return Ok(reply(StatusCode::OK, "text/plain", body, generation));
            }
            (_, "/healthz" | "/readyz") => {
                return Err(AdminError::new(StatusCode::METHOD_NOT_ALLOWED, "use GET"))
            }
            _ => {}
        }
        if !self.token.admits(req.headers.get(http::header::AUTHORIZATION)) {
            return Err(AdminError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token",
            ));
        }
        let if_match = match req.headers.get(http::header::IF_MATCH) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .map(|s| s.trim().trim_start_matches("W/").trim_matches('"'))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| {
                        AdminError::new(StatusCode::BAD_REQUEST, "If-Match must be a generation number")
                    })?,
            ),
        };

        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            ["metrics"] => {
                allow(&method, &[Method::GET])?;
                self.metrics(generation)
            }
            ["api", "v1", "tenants"] => {
                allow(&method, &[Method::GET])?;
                let tenants = self.tenants(None).await?;
                Ok(json_reply(
                    StatusCode::OK,
                    &json!({ "tenants": tenants, "generation": generation }),
                    generation,
                ))
            }
            ["api", "v1", "tenants", name] => {
                allow(&method, &[Method::GET])?;
                let mut tenants = self.tenants(Some(name)).await?;
                let t = tenants
                    .pop()
                    .ok_or_else(|| AdminError::new(StatusCode::NOT_FOUND, format!("no tenant `{name}`")))?;
                Ok(json_reply(StatusCode::OK, &t, generation))
            }
            ["api", "v1", "tenants", name, action] => {
                let name = (*name).to_owned();
                let op = match *action {
                    "weight" => {
                        allow(&method, &[Method::PUT])?;
                        let body = read_body(session).await?;
                        Operation::Weight(parse_weight(&body)?)
                    }
                    "promote" | "rollback" | "pause" | "resume" => {
                        allow(&method, &[Method::POST])?;
                        match *action {
                            "promote" => Operation::Promote,
                            "rollback" => Operation::Rollback,
                            "pause" => Operation::Pause,
                            _ => Operation::Resume,
                        }
                    }
                    _ => return Err(AdminError::new(StatusCode::NOT_FOUND, "no such endpoint")),
                };
                self.control.operate(&name, op, Actor::Api, if_match).await?;
                let mut tenants = self.tenants(Some(&name)).await?;
                let generation = self.control.generation();
                Ok(json_reply(
                    StatusCode::OK,
                    &tenants.pop().unwrap_or(Value::Null),
                    generation,
                ))
            }
            ["api", "v1", "reload"] => {
                allow(&method, &[Method::POST])?;
                if let Some(given) = if_match.filter(|g| *g != generation) {
                    return Err(ControlError::StaleGeneration {
                        given,
                        current: generation,
                    }
                    .into());
                }
                let status = self.control.reload(Actor::Api, true).await?;
                let generation = self.control.generation();
                Ok(json_reply(
                    StatusCode::OK,
                    &serde_json::to_value(&status).unwrap_or_default(),
                    generation,
                ))
            }
            ["api", "v1", "config"] => {
                allow(&method, &[Method::GET])?;
                let (source, hash, last) = self.control.source().await;
                let config = self.control.config().await;
                let value = json!({
                    "generation": generation,
                    "source": source.map(|p| p.display().to_string()),
                    "source_hash": format!("{hash:016x}"),
                    "last_reload": last,
                    "tenants": config.tenants.len(),
                    "pools": config.pools.len(),
                    "policies": config.policies.len(),
                });
                Ok(json_reply(StatusCode::OK, &value, generation))
            }
            ["api", "v1", "fleet"] => {
                allow(&method, &[Method::GET])?;
                let value = self.fleet().ok_or_else(|| {
                    AdminError::new(
                        StatusCode::NOT_FOUND,
                        "this fledge is not in a fleet (no `fleet:` in its config)",
                    )
                })?;
                Ok(json_reply(StatusCode::OK, &value, generation))
            }
            ["api", "v1", "journal"] => {
                allow(&method, &[Method::GET])?;
                let since = parse_since(&query)?;
                let entries = self.journal(since).await;
                Ok(json_reply(
                    StatusCode::OK,
                    &json!({ "entries": entries }),
                    generation,
                ))
            }
            _ => Err(AdminError::new(StatusCode::NOT_FOUND, "no such endpoint")),
        }
    }

    /// Tenants as the API shows them (all, or the one named).
    async fn tenants(&self, only: Option<&str>) -> Result<Vec<Value>, AdminError> {
        let config = self.control.config().await;
        let rollouts = self.control.rollouts().await;
        let table = self.control.routes().load_full();
        let mut out = Vec::new();
        for t in table.tenants() {
            if only.is_some_and(|n| n != t.name()) {
                continue;
            }
            let Some(tc) = config.tenants.get(t.name()) else {
                continue;
            };
            let rollout = rollouts.get(t.name());
            let figures = |v: Version| {
                let s = t.stats().snapshot(v);
                let outcomes: serde_json::Map<String, Value> = Outcome::ALL
                    .iter()
                    .map(|o| (o.as_str().to_owned(), json!(s.outcomes[o.index()])))
                    .collect();
                let count: u64 = s.latency.iter().sum();
                json!({
                    "requests": s.requests(),
                    "errors": s.errors(),
                    "outcomes": outcomes,
                    "mean_latency_ms": if count == 0 { Value::Null } else { json!(s.latency_sum_us as f64 / count as f64 / 1000.0) },
                })
            };
            out.push(json!({
                "name": t.name(),
                "hosts": tc.hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "stable": tc.stable,
                "canary": tc.canary,
                "policy": tc.policy,
                "weight": if t.canary().is_some() { t.weight().percent() } else { 0.0 },
                "state": t.canary().map(|_| t.rollout_state().as_str()),
                "reason": rollout.and_then(|r| r.reason.clone()),
                "last_breach": rollout.and_then(|r| r.figures.clone()),
                "verdict": t.stats().verdict(),
                "figures": { "stable": figures(Version::Stable), "canary": figures(Version::Canary) },
            }));
        }
        if only.is_some() && out.is_empty() {
            return Err(AdminError::new(
                StatusCode::NOT_FOUND,
                format!("no tenant `{}`", only.unwrap_or_default()),
            ));
        }
        Ok(out)
    }

    /// The fleet as this replica sees it: every replica with its last
    /// heartbeat, the leader, and the live replicas' totals.
    fn fleet(&self) -> Option<Value> {
        let link = self.control.fleet()?;
        let view = link.view();
        let now = view.redis_now_ms();
        let timeout = link.replica_timeout().as_millis() as u64;
        let mut total_rps = 0.0;
        let mut live = 0;
        let replicas: Vec<Value> = view
            .replicas
            .iter()
            .map(|(id, h)| {
                let age = now.saturating_sub(h.seen_ms);
                let is_live = age <= timeout;
                if is_live {
                    live += 1;
                    total_rps += h.requests_per_second;
                }
                json!({
                    "id": id,
                    "last_seen_ms": h.seen_ms,
                    "age_ms": age,
                    "live": is_live,
                    "started_ms": h.started_ms,
                    "requests_per_second": (h.requests_per_second * 10.0).round() / 10.0,
                    "leader": view.leader.as_deref() == Some(id.as_str()),
                    "redis_reachable": is_live,
                })
            })
            .collect();
        Some(json!({
            "fleet": link.name(),
            "replica": link.replica(),
            "redis_up": link.is_up(),
            "refused": link.is_refused(),
            "leader": view.leader,
            "generation": self.control.generation(),
            "replicas": replicas,
            "totals": { "live_replicas": live, "requests_per_second": (total_rps * 10.0_f64).round() / 10.0 },
        }))
    }

    async fn journal(&self, since: Option<u64>) -> Vec<Value> {
        if let Some(link) = self.control.fleet().filter(|l| l.in_fleet()) {
            if let Ok(lines) = link.read_journal(since.unwrap_or(0), MAX_JOURNAL_ENTRIES).await {
                return lines
                    .iter()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .collect();
            }
        }
        let dir = self.control.config().await.state_dir.clone();
        let text =
            std::fs::read_to_string(dir.join(crate::control::journal::JOURNAL_FILE)).unwrap_or_default();
        let mut entries: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| since.is_none_or(|s| e["unix_ms"].as_u64().is_some_and(|t| t > s)))
            .collect();
        let skip = entries.len().saturating_sub(MAX_JOURNAL_ENTRIES);
        entries.drain(..skip);
        entries
    }
}

fn allow(method: &Method, allowed: &[Method]) -> Result<(), AdminError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        Err(AdminError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("use {}", names.join(" or ")),
        ))
    }
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, AdminError> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(AdminError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request body too large",
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(AdminError::new(
                    StatusCode::BAD_REQUEST,
                    format!("unreadable body: {e}"),
                ))
            }
        }
    }
}

/// The body of `PUT .../weight`: `{"weight": <percent>}`.
pub(crate) fn parse_weight(body: &[u8]) -> Result<Weight, AdminError> {
    let w: WeightBody = serde_json::from_slice(body).map_err(|e| {
        AdminError::new(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"weight\": <percent>}}: {e}"),
        )
    })?;
    Weight::from_percent(w.weight).ok_or_else(|| {
        AdminError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "`{}` is not a percentage from 0 to 100 with at most two decimals",
                w.weight
            ),
        )
    })
}

/// `since=` as Unix milliseconds or RFC 3339.
pub(crate) fn parse_since(query: &str) -> Result<Option<u64>, AdminError> {
    let Some(raw) = query.split('&').find_map(|kv| kv.strip_prefix("since=")) else {
        return Ok(None);
    };
    let raw = raw
        .replace("%3A", ":")
        .replace("%3a", ":")
        .replace("%2B", "+")
        .replace("%2b", "+");
    if let Ok(ms) = raw.parse::<u64>() {
        return Ok(Some(ms));
    }
    chrono::DateTime::parse_from_rfc3339(&raw)
        .ok()
        .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
        .map(Some)
        .ok_or_else(|| {
            AdminError::new(
                StatusCode::BAD_REQUEST,
                "since must be Unix milliseconds or RFC 3339",
            )
        })
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match self.handle(session).await {
            Ok(r) => r,
            Err(e) => {
                let mut r = json_reply(
                    e.status,
                    &json!({ "error": e.message }),
                    self.control.generation(),
                );
                if e.status == StatusCode::UNAUTHORIZED {
                    r.headers_mut()
                        .insert("WWW-Authenticate", HeaderValue::from_static("Bearer"));
                }
                r
            }
        }
    }
}
