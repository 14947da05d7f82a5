//! The rehearsal itself: virtual users sending Odoo-like requests, the
//! fault timeline, and a poll of fledge's view of the canary; everything
//! recorded against the time since the start.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::Method;
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;

use crate::client::{Answer, Http};
use crate::scenario::Scenario;
use crate::target::Target;

/// The header that marks rehearsal traffic (fledge counts it apart).
pub const REHEARSAL_HEADER: &str = "x-fledge-rehearsal";

/// Which version answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The stable pool.
    Stable,
    /// The canary.
    Canary,
    /// No answer from a worker (a transport error, or fledge's own 5xx).
    Unknown,
}

/// One request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was sent, ms from the start.
    pub sent_ms: u64,
    /// How long its answer took, ms.
    pub latency_ms: f64,
    /// Who answered.
    pub served: Served,
    /// Failed as a user sees it: 5xx, JSON-RPC error, no answer.
    pub failed: bool,
}

/// fledge's view of the canary at one moment.
#[derive(Debug, Clone)]
pub struct Point {
    /// ms from the start.
    pub t_ms: u64,
    /// Canary weight, percent.
    pub weight: f64,
    /// Rollout state.
    pub state: String,
    /// The analysis' last verdict.
    pub verdict: String,
}

/// Something that happened: a fault injected, or a decision from fledge's
/// journal.
#[derive(Debug, Clone)]
pub struct Mark {
    /// ms from the start.
    pub t_ms: u64,
    /// `fault`, or the journal's event (`rolled_back`, `step`, …).
    pub event: String,
    /// Who: `rehearsal`, or the journal's actor.
    pub actor: String,
    /// Details.
    pub detail: String,
}

/// What a run recorded.
#[derive(Debug, Default)]
pub struct Record {
    /// Every request.
    pub samples: Vec<Sample>,
    /// The canary's weight and state, ten times a second.
    pub points: Vec<Point>,
    /// Faults and decisions.
    pub marks: Vec<Mark>,
    /// WebSockets opened, and dropped before the end.
    pub websockets: (u64, u64),
    /// Run length, ms.
    pub duration_ms: u64,
}

/// A browser's cookies.
#[derive(Default)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn take(&mut self, answer: &Answer) {
        for v in answer.headers.get_all("set-cookie") {
            let Some((pair, _)) = v.to_str().ok().map(|s| s.split_once(';').unwrap_or((s, ""))) else {
                continue;
            };
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() {
                    self.0.remove(name.trim());
                } else {
                    self.0.insert(name.trim().to_owned(), value.trim().to_owned());
                }
            }
        }
    }
}

/// What every user task shares.
struct Shared {
    http: Http,
    /// Every replica's proxy; user `i` goes to `bases[i % len]`, or the
    /// next one up when that one was killed.
    bases: Vec<String>,
    down: Arc<Vec<std::sync::atomic::AtomicBool>>,
    host: String,
    tag: String,
    start: Instant,
    end: Instant,
    samples: mpsc::UnboundedSender<Sample>,
    sent: AtomicU64,
    failed: AtomicU64,
    ws_open: AtomicU64,
    ws_dropped: AtomicU64,
}

#[derive(Clone, Copy)]
enum Action {
    Login,
    Read,
    Write,
    Asset,
}

impl Shared {
    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The proxy user `user` goes to (a fleet's replicas share users).
    fn base(&self, user: usize) -> &str {
        let n = self.bases.len();
        (0..n)
            .map(|k| (user + k) % n)
            .find(|i| !self.down[*i].load(Relaxed))
            .map_or(&self.bases[user % n], |i| &self.bases[i])
    }

    /// Send one action for user `user`, whose cookies are `jar`; record it.
    async fn act(&self, user: usize, jar: &Mutex<Jar>, action: Action, id: u64) {
        let cookie = jar.lock().await.header();
        let (method, path, body) = match action {
            Action::Login => (
                Method::POST,
                "/web/session/get_session_info".to_owned(),
                Some(format!(
                    r#"{{"jsonrpc":"2.0","method":"call","params":{{}},"id":{id}}}"#
                )),
            ),
            Action::Asset => (
                Method::GET,
                format!("/web/assets/{}/web.assets_web.min.js", id % 7),
                None,
            ),
            Action::Read | Action::Write => {
                let method = if matches!(action, Action::Read) {
                    "read"
                } else {
                    "write"
                };
                let args = if method == "read" {
                    "[[1]]".to_owned()
                } else {
                    format!("[[1], {{\"name\": \"rehearsal {id}\"}}]")
                };
                let body = format!(
                    r#"{{"jsonrpc":"2.0","method":"call","params":{{"model":"res.partner","method":"{method}","args":{args},"kwargs":{{}}}},"id":{id}}}"#
                );
                (
                    Method::POST,
                    format!("/web/dataset/call_kw/res.partner/{method}"),
                    Some(body),
                )
            }
        };
        let url = format!("{}{path}", self.base(user));
        let mut headers = vec![
            ("host", self.host.as_str()),
            (REHEARSAL_HEADER, self.tag.as_str()),
        ];
        if !cookie.is_empty() {
            headers.push(("cookie", cookie.as_str()));
        }
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let sent_ms = self.ms();
        let started = Instant::now();
        let answer = self
            .http
            .send(method, &url, &headers, body.map(Bytes::from).unwrap_or_default())
            .await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (served, failed) = match &answer {
            Ok(a) => {
                let served = match a.headers.get("x-fledge-version").map(|v| v.as_bytes()) {
                    Some(b"canary") => Served::Canary,
                    Some(b"stable") => Served::Stable,
                    _ => Served::Unknown,
                };
                let rpc_error = body_has_error(&a.body);
                (served, a.status.is_server_error() || rpc_error)
            }
            Err(_) => (Served::Unknown, true),
        };
        if let Ok(a) = &answer {
            jar.lock().await.take(a);
        }
        self.sent.fetch_add(1, Relaxed);
        if failed {
            self.failed.fetch_add(1, Relaxed);
        }
        let _ = self.samples.send(Sample {
            sent_ms,
            latency_ms,
            served,
            failed,
        });
    }

    /// Hold `/websocket` open until the end, as an Odoo tab does.
    async fn hold_websocket(&self, user: usize, jar: &Mutex<Jar>) {
        use tokio_tungstenite::tungstenite::handshake::client::generate_key;
        let ws_url = format!("{}/websocket", self.base(user).replacen("http", "ws", 1));
        let cookie = jar.lock().await.header();
        let Ok(req) = http::Request::builder()
            .uri(&ws_url)
            .header("host", &self.host)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", generate_key())
            .header("cookie", cookie)
            .header(REHEARSAL_HEADER, &self.tag)
            .body(())
        else {
            return;
        };
        let Ok(Ok((mut ws, _))) =
            tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(req)).await
        else {
            self.ws_dropped.fetch_add(1, Relaxed);
            return;
        };
        self.ws_open.fetch_add(1, Relaxed);
        loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(_)) => continue,
                    _ => {
                        // Closed before the end of the run.
                        if Instant::now() < self.end {
                            self.ws_dropped.fetch_add(1, Relaxed);
                        }
                        return;
                    }
                },
                () = tokio::time::sleep_until(self.end) => {
                    let _ = ws.close(None).await;
                    return;
                }
            }
        }
    }
}

/// A JSON-RPC answer with a top-level `error`, as Odoo reports exceptions.
fn body_has_error(body: &[u8]) -> bool {
    body.first() == Some(&b'{')
        && serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v.get("error").is_some())
}

fn pick(scenario: &Scenario) -> Action {
    let m = &scenario.mix;
    let r = fastrand::u32(0..m.read + m.write + m.asset);
    if r < m.read {
        Action::Read
    } else if r < m.read + m.write {
        Action::Write
    } else {
        Action::Asset
    }
}

/// Live figures for the progress line.
pub struct Live {
    shared: Arc<Shared>,
}

impl Live {
    /// Requests sent and failed so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.shared.sent.load(Relaxed), self.shared.failed.load(Relaxed))
    }
}

/// Run `scenario` against `target`; `progress` is called ten times a
/// second with the live counts and the canary's latest point.
pub async fn run(
    scenario: &Scenario,
    target: &mut Target,
    mut progress: impl FnMut(&Live, Option<&Point>, u64),
) -> anyhow::Result<Record> {
    let http = Http::new();
    let duration = Duration::from_secs_f64(scenario.duration_seconds);
    let start_unix_ms = chrono::Utc::now().timestamp_millis() as u64;
    let start = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        http: http.clone(),
        bases: target.bases.clone(),
        down: Arc::clone(&target.down),
        host: target.host.clone(),
        tag: scenario.name.clone(),
        start,
        end: start + duration,
        samples: tx,
        sent: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        ws_open: AtomicU64::new(0),
        ws_dropped: AtomicU64::new(0),
    });

    // Users: each logs in, maybe opens the bus, then acts (closed model) or
    // waits for the open model's scheduler to use its session.
    let users = scenario.users as usize;
    // Each user comes back with the Odoo session of an earlier login, as
    // most users of a running database do: fledge splits (and keeps) users
    // by that session. (First visits without one are split by client
    // address, and every virtual user here shares one.)
    let jars: Arc<Vec<Mutex<Jar>>> = Arc::new(
        (0..users)
            .map(|i| {
                let session = format!("rehearsal-{i}-{:016x}", fastrand::u64(..));
                Mutex::new(Jar(BTreeMap::from([("session_id".to_owned(), session)])))
            })
            .collect(),
    );
    let ramp = Duration::from_secs_f64(scenario.ramp_up_seconds);
    let mut tasks = Vec::new();
    for i in 0..users {
        let (shared, jars, scenario) = (Arc::clone(&shared), Arc::clone(&jars), scenario.clone());
        tasks.push(tokio::spawn(async move {
            let offset = ramp.mul_f64(i as f64 / users as f64);
            tokio::time::sleep_until(shared.start + offset).await;
            let jar = &jars[i];
            // "Logging in": the web client's first call checks the session.
            shared.act(i, jar, Action::Login, i as u64).await;
            if fastrand::u32(0..100) < scenario.mix.websocket_percent {
                let (shared, jars) = (Arc::clone(&shared), Arc::clone(&jars));
                tokio::spawn(async move { shared.hold_websocket(i, &jars[i]).await });
            }
            if scenario.rate.is_some() {
                return;
            }
            let [lo, hi] = scenario.think_time_ms;
            let mut n = 0u64;
            while Instant::now() < shared.end {
                n += 1;
                shared.act(i, jar, pick(&scenario), (i as u64) << 32 | n).await;
                tokio::time::sleep(Duration::from_millis(fastrand::u64(lo..=hi))).await;
            }
        }));
    }
    if let Some(rate) = scenario.rate {
        let (shared, jars, scenario) = (Arc::clone(&shared), Arc::clone(&jars), scenario.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0u64;
            // Every request is awaited, so that slow answers under a fault
            // are recorded too.
            let mut running = tokio::task::JoinSet::new();
            while Instant::now() < shared.end {
                tick.tick().await;
                n += 1;
                // Within the ramp, only the users started so far.
                let elapsed = shared.start.elapsed().as_secs_f64();
                let ramped = if scenario.ramp_up_seconds > 0.0 {
                    (elapsed / scenario.ramp_up_seconds).min(1.0)
                } else {
                    1.0
                };
                let active = ((users as f64 * ramped) as usize).clamp(1, users);
                let user = (n as usize) % active;
                let (shared, jars, scenario) = (Arc::clone(&shared), Arc::clone(&jars), scenario.clone());
                running.spawn(async move { shared.act(user, &jars[user], pick(&scenario), n).await });
                while running.try_join_next().is_some() {}
            }
            while running.join_next().await.is_some() {}
        }));
    }

    // Faults, in time order; reloads repeat when asked to.
    let mut timeline: Vec<(f64, usize)> = Vec::new();
    for (i, f) in scenario.faults.iter().enumerate() {
        let until = f
            .until_seconds
            .unwrap_or(scenario.duration_seconds)
            .min(scenario.duration_seconds);
        match f.every_seconds.filter(|e| *e > 0.0) {
            Some(every) => {
                let mut t = f.at_seconds;
                while t <= until {
                    timeline.push((t, i));
                    t += every;
                }
            }
            None => timeline.push((f.at_seconds, i)),
        }
    }
    timeline.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut timeline = timeline.into_iter().peekable();
    let mut record = Record::default();

    // The poll of fledge's view, the fault timeline and the progress line
    // share this loop: ten times a second.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let tenant_path = format!("/api/v1/tenants/{}", target.tenant);
    while Instant::now() < shared.end {
        tick.tick().await;
        let now_s = start.elapsed().as_secs_f64();
        while let Some((_, i)) = timeline.next_if(|(t, _)| *t <= now_s) {
            let fault = &scenario.faults[i];
            if let Err(e) = target.inject(&http, fault).await {
                // Leave no fault behind on a shared deployment.
                if target.local.is_none() {
                    target.heal(&http).await;
                }
                return Err(e);
            }
            record.marks.push(Mark {
                t_ms: shared.ms(),
                event: if fault.reload {
                    "reload".into()
                } else {
                    "fault".into()
                },
                actor: "rehearsal".into(),
                detail: fault.describe(),
            });
        }
        // The canary as the fleet serves it: the replica giving it the
        // most weight (the last to roll it back).
        let mut view: Option<serde_json::Value> = None;
        for (i, admin) in target.admins.iter().enumerate() {
            if target.down[i].load(Relaxed) {
                continue;
            }
            if let Ok(t) = http.admin_get_at(target, admin, &tenant_path).await {
                let weight = |v: &serde_json::Value| v["weight"].as_f64().unwrap_or(0.0);
                if view.as_ref().is_none_or(|v| weight(&t) > weight(v)) {
                    view = Some(t);
                }
            }
        }
        if let Some(t) = view {
            let point = Point {
                t_ms: shared.ms(),
                weight: t["weight"].as_f64().unwrap_or(0.0),
                state: t["state"].as_str().unwrap_or("none").to_owned(),
                verdict: t["verdict"].as_str().unwrap_or("none").to_owned(),
            };
            // Verdict changes go to the timeline: why a step waited.
            if record.points.last().is_none_or(|p| p.verdict != point.verdict) {
                record.marks.push(Mark {
                    t_ms: point.t_ms,
                    event: "verdict".into(),
                    actor: "analysis".into(),
                    detail: point.verdict.clone(),
                });
            }
            record.points.push(point);
        }
        while let Ok(s) = rx.try_recv() {
            record.samples.push(s);
        }
        progress(
            &Live {
                shared: Arc::clone(&shared),
            },
            record.points.last(),
            shared.ms(),
        );
    }
    for t in tasks {
        let _ = t.await;
    }
    // Requests still in flight finish (or time out) on their own tasks.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if target.local.is_none() {
        target.heal(&http).await;
    }
    record.duration_ms = shared.ms();
    while let Ok(s) = rx.try_recv() {
        record.samples.push(s);
    }
    record.websockets = (shared.ws_open.load(Relaxed), shared.ws_dropped.load(Relaxed));

    // fledge's decisions, from its journal.
    let journal = http
        .admin_get(target, &format!("/api/v1/journal?since={start_unix_ms}"))
        .await?;
    for e in journal["entries"].as_array().into_iter().flatten() {
        let tenant = e["tenant"].as_str();
        if tenant.is_some_and(|t| t != target.tenant) {
            continue;
        }
        let unix_ms = e["unix_ms"].as_u64().unwrap_or(start_unix_ms);
        let after = e["after"]["weight"]
            .as_f64()
            .map(|w| format!("weight {w} %"))
            .unwrap_or_default();
        record.marks.push(Mark {
            t_ms: unix_ms.saturating_sub(start_unix_ms),
            event: e["event"].as_str().unwrap_or("?").to_owned(),
            actor: e["actor"].as_str().unwrap_or("?").to_owned(),
            detail: [
                after,
                e["reason"].as_str().unwrap_or_default().to_owned(),
                e["replica"]
                    .as_str()
                    .map(|r| format!("by {r}"))
                    .unwrap_or_default(),
            ]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
        });
    }
    record.marks.sort_by_key(|m| m.t_ms);
    record.samples.sort_by_key(|s| s.sent_ms);
    Ok(record)
}
