//! Control plane: a fleet of replicas that acts as one, on Redis.
//!
//! With `fleet:` in the config, every replica of the same `fleet.name`
//! shares three things through Redis (never a protocol of our own):
//!
//! - **One canary state.** The fleet's record of each canary (weight,
//!   state, step, reason, rollout generation) lives in one hash, changed
//!   only by a compare-and-set script on the record's rev and, for
//!   `If-Match`, on the fleet's generation ([`Link::commit`]). Each
//!   replica applies the fleet's records to its own route table
//!   ([`Control::sync_fleet`]): at once on the pub/sub hint every change
//!   sends, after every reconnect, and on a one-second period (a lost
//!   hint loses nothing). The local state file stays, as the fallback of a
//!   start without Redis.
//! - **One judgement.** Every replica publishes, each tick, what its
//!   canaries' traffic did since the last tick (`figures`); one replica
//!   holds a lease (a fencing token that grows at each acquisition) and
//!   judges the sum over the live replicas with the same windows, rules and
//!   thresholds as a single process, writing its decisions with the lease
//!   so that a deposed leader's late write is refused.
//! - **One journal.** Each decision is journaled once, by the replica that
//!   made it (with its id), to a capped stream as well as to its own file.
//!
//! The data plane never waits on Redis: it reads its route table as always.
//! With Redis unreachable (or hanging: every command has
//! [`link::COMMAND_TIMEOUT`]), each replica serves its last state, judges
//! its own traffic and may roll back alone, never step or promote; the
//! rollback reaches the fleet on reconnect unless an operator changed that
//! canary later (`docs/fleet.md` has the rules).
//!
//! - `link`: the keys and every Redis command and script.
//! - `figures`: the per-tick traffic figures, encoded sparse.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::time::Instant;

use crate::analysis::{Analyzer, TICK};
use crate::control::Control;
use crate::metrics::Snapshot;
use crate::routing::{RouteTable, Version};

pub mod figures;
pub mod link;

pub use self::link::{FleetError, FleetState, FleetView, Heartbeat, Link, Record, Stored, Write};

/// How long a lease lasts without renewal: a killed leader's successor
/// takes over within it (plus one heartbeat).
pub const LEASE_TTL: Duration = Duration::from_millis(1_500);

/// How often a replica renews the lease (or tries to take it) and writes
/// its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_millis(250);

/// How often the fleet's generation is read, besides the pub/sub hints.
pub const RESYNC: Duration = Duration::from_secs(1);

/// How far back a new leader reads each replica's figures, in entries (one
/// a tick): the last second of evidence, so a leader killed during an
/// incident does not cost its successor a second of gathering.
const READ_BACK_TICKS: usize = 10;

/// A replica silent for this many replica timeouts is forgotten (its
/// heartbeat and figures deleted).
const FORGET_AFTER_TIMEOUTS: u64 = 20;

/// The field of a canary's record: `tenant/canary_pool` (a new canary
/// pool is a new rollout, as in the state file).
pub fn field(tenant: &str, canary_pool: &str) -> String {
    format!("{tenant}/{canary_pool}")
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A stream entry id (`ms-seq`) as numbers, to compare.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// The background service keeping this replica in its fleet.
pub struct FleetService {
    control: Arc<Control>,
    link: Arc<Link>,
}

/// What this replica last published, per tenant: the next tick's figures
/// are the difference from it.
#[derive(Default)]
struct Publisher {
    last: HashMap<Arc<str>, (u32, Snapshot, Snapshot), ahash::RandomState>,
    text: String,
}

/// The leader's state: its lease, the fleet's summed counters and its
/// windows over them.
struct Leader {
    token: u64,
    lease: String,
    analyzer: Analyzer,
    sums: HashMap<String, (Snapshot, Snapshot)>,
    /// Last entry read of each replica's figures stream.
    cursors: HashMap<String, String>,
    /// The replicas read at the last tick.
    live: Vec<String>,
    last: Instant,
}

impl FleetService {
    /// The service of `control`'s fleet (`None` without one).
    pub fn new(control: Arc<Control>) -> Option<Self> {
        let link = Arc::clone(control.fleet()?);
        Some(FleetService { control, link })
    }
}

#[async_trait]
impl BackgroundService for FleetService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let link = &self.link;
        if let Err(e) = link.connect() {
            tracing::error!(error = %e, "the fleet cannot be joined: this replica judges alone");
            return;
        }
        let (hints, mut hint) = tokio::sync::watch::channel(0u64);
        tokio::spawn(subscribe(Arc::clone(link), hints, shutdown.clone()));
        let mut tick = tokio::time::interval(TICK);
        let mut beat = tokio::time::interval(HEARTBEAT);
        let mut resync = tokio::time::interval(RESYNC);
        for t in [&mut tick, &mut beat, &mut resync] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut publisher = Publisher::default();
        let mut leader: Option<Leader> = None;
        let mut lease_ok = Instant::now();
        let mut seen_returns = 0u64;
        let mut hints_open = true;
        let mut refused_logged = false;
        let started_ms = unix_ms();
        let mut served = (Instant::now(), total_requests(&self.control.routes().load()));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // During a graceful upgrade two processes share this
                    // replica's id: only the one in charge speaks for it.
                    if !self.control.in_charge().await {
                        if let Some(l) = leader.take() {
                            let _ = link.release(l.token).await;
                            link.set_leader(false);
                        }
                        continue;
                    }
                    let table = self.control.routes().load_full();
                    publisher.publish(link, &table).await;
                    if let Some(l) = leader.as_mut() {
                        l.judge(&self.control, link, &table).await;
                    }
                }
                _ = beat.tick() => {
                    if !self.control.in_charge().await {
                        continue;
                    }
                    // Back from an outage (or the first contact): check the
                    // key, then take the fleet's states (and give it the
                    // rollbacks made alone meanwhile).
                    let returns = link.returns();
                    // A refused replica stays out until restarted with the
                    // fleet's key (were it to check again after Redis lost
                    // the fingerprint, its own could become the fleet's).
                    if returns != seen_returns && !link.is_refused() {
                        match link.check_key().await {
                            Ok(Ok(())) => match self.control.sync_fleet().await {
                                Ok(()) => {
                                    seen_returns = returns;
                                    tracing::info!(replica = link.replica(), "the fleet's Redis answers: canary states synced");
                                }
                                Err(e) => tracing::debug!(error = %e, "fleet sync failed"),
                            },
                            Ok(Err(why)) => {
                                seen_returns = returns;
                                if !refused_logged {
                                    tracing::error!(reason = %why, "refused by the fleet: this replica judges alone");
                                    refused_logged = true;
                                }
                            }
                            Err(_) => {}
                        }
                    }
                    match link.lease(LEASE_TTL).await {
                        Ok(Some(token)) => {
                            lease_ok = Instant::now();
                            if leader.as_ref().is_none_or(|l| l.token != token) {
                                tracing::info!(replica = link.replica(), token, "this replica leads the fleet");
                                leader = Some(Leader::new(link, token));
                            }
                        }
                        Ok(None) => {
                            if leader.take().is_some() {
                                tracing::info!(replica = link.replica(), "this replica no longer leads the fleet");
                            }
                        }
                        Err(_) => {
                            if lease_ok.elapsed() >= LEASE_TTL && leader.take().is_some() {
                                tracing::warn!(replica = link.replica(), "lease lapsed with Redis away: this replica no longer leads");
                            }
                        }
                    }
                    link.set_leader(leader.is_some());
                    let now = Instant::now();
                    let total = total_requests(&self.control.routes().load());
                    let secs = (now - served.0).as_secs_f64().max(0.001);
                    let rps = total.saturating_sub(served.1) as f64 / secs;
                    served = (now, total);
                    self.heartbeat(started_ms, rps, leader.is_some()).await;
                }
                _ = resync.tick() => {
                    if let Ok(generation) = link.generation().await {
                        let stale = generation != Some(self.control.generation());
                        if stale || self.control.take_fleet_dirty() || !self.control.fleet_synced().await {
                            let _ = self.control.sync_fleet().await;
                        }
                    }
                }
                r = hint.changed(), if hints_open => {
                    if r.is_err() {
                        // The subscriber is gone: the one-second period
                        // carries on alone.
                        hints_open = false;
                        continue;
                    }
                    let _ = self.control.sync_fleet().await;
                }
                _ = shutdown.changed() => {
                    if let Some(l) = leader.take() {
                        let _ = link.release(l.token).await;
                    }
                    link.set_leader(false);
                    return;
                }
            }
        }
    }
}

impl FleetService {
    async fn heartbeat(&self, started_ms: u64, requests_per_second: f64, leader: bool) {
        let link = &self.link;
        let beat = Heartbeat {
            seen_ms: 0,
            started_ms,
            requests_per_second,
            leader,
        };
        let Ok(mut view) = link.heartbeat(&beat).await else {
            return;
        };
        let now = view.redis_now_ms;
        let forget_ms = link.replica_timeout().as_millis() as u64 * FORGET_AFTER_TIMEOUTS;
        let gone: Vec<String> = view
            .replicas
            .iter()
            .filter(|(_, h)| now.saturating_sub(h.seen_ms) > forget_ms)
            .map(|(id, _)| id.clone())
            .collect();
        if leader && !gone.is_empty() {
            let _ = link.forget(&gone).await;
        }
        view.replicas.retain(|(id, _)| !gone.contains(id));
        view.leader = match link.leader().await {
            Ok(l) => l,
            Err(_) => link.view().leader.clone(),
        };
        link.set_view(view);
    }
}

/// Every request this replica served, both versions of every tenant.
fn total_requests(table: &RouteTable) -> u64 {
    use crate::metrics::VersionStats;
    table
        .tenants()
        .iter()
        .map(|t| {
            let s = t.stats();
            [Version::Stable, Version::Canary]
                .into_iter()
                .map(|v| s.served(v).map_or(0, VersionStats::requests))
                .sum::<u64>()
        })
        .sum()
}

/// Listen for the fleet's change hints; (re)subscribe after every loss of
/// the connection, and count a hint then too (a re-read after a reconnect).
async fn subscribe(link: Arc<Link>, hints: tokio::sync::watch::Sender<u64>, mut shutdown: ShutdownWatch) {
    use futures_util::StreamExt as _;
    let mut n = 0u64;
    loop {
        match link.pubsub().await {
            Ok(mut ps) => {
                n += 1;
                let _ = hints.send(n);
                let mut messages = ps.on_message();
                loop {
                    tokio::select! {
                        m = messages.next() => {
                            if m.is_none() {
                                break;
                            }
                            n += 1;
                            let _ = hints.send(n);
                        }
                        _ = shutdown.changed() => return,
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "fleet subscription failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

impl Publisher {
    /// Publish what each judged canary's traffic did since the last tick,
    /// in one entry. A tenant seen for the first time only sets its
    /// baseline (its counters since start are not this tick's). A tick
    /// whose entry cannot be written is lost, not carried over: an
    /// outage's traffic in one entry would look like a burst now.
    async fn publish(&mut self, link: &Link, table: &RouteTable) {
        let mut fields: Vec<(Arc<str>, std::ops::Range<usize>)> = Vec::new();
        self.text.clear();
        let mut seen = 0usize;
        for t in table.tenants() {
            if t.canary().is_none() || !t.rollout_state().is_judged() {
                continue;
            }
            seen += 1;
            let stats = t.stats();
            let now = (stats.snapshot(Version::Stable), stats.snapshot(Version::Canary));
            match self.last.get_mut(t.name()) {
                Some((epoch, s, c)) if *epoch == t.epoch() => {
                    let start = self.text.len();
                    if figures::encode_tenant((&now.0, &now.1), (s, c), &mut self.text) {
                        fields.push((Arc::clone(t.shared_name()), start..self.text.len()));
                    } else {
                        self.text.truncate(start);
                    }
                    (*s, *c) = now;
                }
                _ => {
                    self.last
                        .insert(Arc::clone(t.shared_name()), (t.epoch(), now.0, now.1));
                }
            }
        }
        if self.last.len() > seen {
            // A canary no longer judged (promoted, gone) starts again from a
            // fresh baseline if it ever is again, never with a lump.
            let judged: std::collections::HashSet<&str> = table
                .tenants()
                .iter()
                .filter(|t| t.canary().is_some() && t.rollout_state().is_judged())
                .map(|t| t.name())
                .collect();
            self.last.retain(|k, _| judged.contains(&**k));
        }
        if fields.is_empty() {
            return;
        }
        let pairs: Vec<(&str, &str)> = fields
            .iter()
            .map(|(name, range)| (&**name, &self.text[range.clone()]))
            .collect();
        if let Err(e) = link.publish_figures(&pairs).await {
            tracing::debug!(error = %e, "figures not published");
        }
    }
}

impl Leader {
    fn new(link: &Link, token: u64) -> Self {
        Leader {
            token,
            lease: link.lease_value(token),
            analyzer: Analyzer::default(),
            sums: HashMap::new(),
            cursors: HashMap::new(),
            live: Vec::new(),
            last: Instant::now(),
        }
    }

    /// Read every live replica's new figures, add them up, and judge the
    /// fleet's canaries on the sums.
    async fn judge(&mut self, control: &Control, link: &Link, table: &RouteTable) {
        let mut live: Vec<String> = link.live().into_iter().map(|(id, _)| id).collect();
        if !live.iter().any(|id| id == link.replica()) {
            live.push(link.replica().to_owned());
        }
        // A replica that stopped publishing drops out of the sum: only live
        // ones are read. One seen for the first time, or back after it was
        // gone, is read from its last second of entries (never from an
        // entry already read).
        for id in &live {
            if self.live.contains(id) {
                continue;
            }
            let Ok(recent) = link.recent_cursor(id, READ_BACK_TICKS).await else {
                return;
            };
            let cursor = self.cursors.entry(id.clone()).or_insert_with(|| recent.clone());
            if stream_id(cursor) < stream_id(&recent) {
                *cursor = recent;
            }
        }
        self.live.clone_from(&live);
        let streams: Vec<(String, String)> = live
            .iter()
            .map(|id| (link.figures_key(id), self.cursors[id].clone()))
            .collect();
        let reply = match link.read_figures(&streams).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "fleet figures not read");
                return;
            }
        };
        for stream in reply.keys {
            let Some((_, id)) = streams.iter().find(|(k, _)| *k == stream.key) else {
                continue;
            };
            let replica = live
                .iter()
                .find(|r| link.figures_key(r) == stream.key)
                .cloned()
                .unwrap_or_default();
            let mut cursor = id.clone();
            for entry in stream.ids {
                for (tenant, value) in &entry.map {
                    let Ok(text) = redis::from_redis_value_ref::<String>(value) else {
                        continue;
                    };
                    let sums = self.sums.entry(tenant.clone()).or_default();
                    if let Err(e) = figures::add_tenant(sums, &text) {
                        tracing::debug!(tenant = %tenant, error = %e, "malformed fleet figures skipped");
                    }
                }
                cursor = entry.id;
            }
            self.cursors.insert(replica, cursor);
        }
        let zero = (Snapshot::default(), Snapshot::default());
        let mut judgements = self
            .analyzer
            .tick_with(table, true, |t| self.sums.get(t.name()).unwrap_or(&zero).clone());
        let now = Instant::now();
        let elapsed = now - self.last;
        self.last = now;
        judgements.retain(|j| {
            j.new_requests > 0 || !matches!(j.verdict, crate::analysis::verdict::Verdict::Inconclusive)
        });
        if !judgements.is_empty() {
            control.judge_fleet(&judgements, elapsed, &self.lease).await;
        }
    }
}

/// `/metrics` for the fleet: replicas, leadership, Redis, decisions.
pub struct FleetExporter {
    link: Arc<Link>,
    descs: Vec<prometheus::core::Desc>,
}

const METRICS: [(&str, &str, &[&str]); 5] = [
    (
        "fledge_fleet_replicas",
        "Replicas of this fleet seen within the replica timeout (this one included).",
        &[],
    ),
    ("fledge_fleet_leader", "1 on the replica that holds the fleet's lease and judges.", &[]),
    ("fledge_fleet_redis_up", "1 while the fleet's Redis answers this replica.", &[]),
    (
        "fledge_fleet_decisions_total",
        "Automatic decisions made on this replica: by the leader on the fleet's traffic, or alone (Redis away).",
        &["origin"],
    ),
    (
        "fledge_fleet_redis_errors_total",
        "Calls to the fleet's Redis that failed or timed out.",
        &[],
    ),
];

impl FleetExporter {
    /// Export `link`'s figures.
    pub fn new(link: Arc<Link>) -> Self {
        let descs = METRICS
            .iter()
            .map(|(name, help, labels)| crate::metrics::desc(name, help, labels))
            .collect();
        FleetExporter { link, descs }
    }
}

impl prometheus::core::Collector for FleetExporter {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use crate::metrics::{counter, family, gauge};
        use prometheus::proto::MetricType;
        let link = &self.link;
        let live = link.live().len().max(1);
        let (fleet, local) = link.decisions();
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let help = |i: usize| &self.descs[i].help;
        vec![
            family(
                METRICS[0].0,
                help(0),
                MetricType::GAUGE,
                vec![gauge(&[], live as f64)],
            ),
            family(
                METRICS[1].0,
                help(1),
                MetricType::GAUGE,
                vec![gauge(&[], flag(link.is_leader()))],
            ),
            family(
                METRICS[2].0,
                help(2),
                MetricType::GAUGE,
                vec![gauge(&[], flag(link.is_up()))],
            ),
            family(
                METRICS[3].0,
                help(3),
                MetricType::COUNTER,
                vec![
                    counter(&[("origin", "fleet")], fleet as f64),
                    counter(&[("origin", "local")], local as f64),
                ],
            ),
            family(
                METRICS[4].0,
                help(4),
                MetricType::COUNTER,
                vec![counter(&[], link.failures() as f64)],
            ),
        ]
    }
}

/// Join the fleet before serving: compare the cookie key with the fleet's
/// (another key refuses the start, with the reason) and take the fleet's
/// states, so a replica started with an empty `state_dir` serves what the
/// fleet serves from its first request. Redis away: the start goes on
/// from the local state file, and the fleet service joins later.
pub fn join(control: &Control) -> anyhow::Result<()> {
    let Some(link) = control.fleet() else {
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start a runtime to join the fleet: {e}"))?;
    let result = runtime.block_on(async {
        link.connect()?;
        match link.check_key().await {
            Ok(Err(why)) => anyhow::bail!("{why}"),
            Err(e) => {
                tracing::warn!(error = %e, "the fleet's Redis is unreachable at start: serving the local state file's canary states until it answers");
                Ok(())
            }
            Ok(Ok(())) => {
                if let Err(e) = control.sync_fleet().await {
                    tracing::warn!(error = %e, "the fleet's states could not be read at start: serving the local state file's until they can");
                } else {
                    tracing::info!(replica = link.replica(), generation = control.generation(), "joined the fleet");
                }
                Ok(())
            }
        }
    });
    link.disconnect();
    result
}
