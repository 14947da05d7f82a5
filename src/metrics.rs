//! Per-(tenant, version) statistics: recorded lock-free on the data plane,
//! read by the analysis loop and exported to Prometheus.
//!
//! [`TenantStats`] is allocated when a tenant first appears in a route table
//! and carried over by every later table, so counters only ever grow.
//! Recording is two or three relaxed atomic adds: the outcome, and for
//! requests that have one, the latency bucket and sum. Nothing on the hot
//! path allocates, locks or looks up a label.
//!
//! Exposition ([`Exporter`]) is a `prometheus::core::Collector` reading the
//! current route table at scrape time, registered in an explicit `Registry`
//! (no globals, so every test builds its own).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};

use crate::routing::{RouteTable, Version};
pub use crate::vocab::Outcome;

pub mod dump;

/// Upper bounds of the latency buckets, in microseconds. Fine enough (about
/// 25 % apart) for the analysis to read a p99 from, and a superset of the
/// conventional Prometheus bounds in [`EXPORTED_BOUNDS_US`].
pub const LATENCY_BOUNDS_US: [u64; 47] = [
    250, 500, 750, 1_000, 1_500, 2_000, 2_500, 3_000, 4_000, 5_000, 6_000, 8_000, 10_000, 12_500, 15_000,
    20_000, 25_000, 30_000, 40_000, 50_000, 60_000, 75_000, 100_000, 125_000, 150_000, 200_000, 250_000,
    300_000, 400_000, 500_000, 600_000, 750_000, 1_000_000, 1_250_000, 1_500_000, 2_000_000, 2_500_000,
    3_000_000, 4_000_000, 5_000_000, 6_000_000, 7_500_000, 10_000_000, 15_000_000, 20_000_000, 30_000_000,
    60_000_000,
];
/// Latency buckets, with the last one open-ended.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;
/// Bounds exported as `le` of `fledge_request_duration_seconds`: the
/// customary 1 ms … 60 s ladder, so dashboards stay small.
pub const EXPORTED_BOUNDS_US: [u64; 15] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 30_000_000, 60_000_000,
];

/// Groups the failing clients of a version are counted in: a failed
/// request adds one to the group of its client (its sticky key's bucket,
/// or its address), so the analysis can tell many failing clients from a
/// few failing often (`analysis::verdict`'s `min_failing_clients` and
/// `max_client_failure_share`). 32 groups tell apart the handful of
/// clients those checks are about (five clients fall in five groups 72 %
/// of the time, in four or more 98 %) for 128 bytes a version, and a
/// window's checkpoint keeps a copy of them.
pub const CLIENT_GROUPS: usize = 32;

/// Counters of one version of one tenant.
#[derive(Debug)]
pub struct VersionStats {
    outcomes: [AtomicU64; Outcome::COUNT],
    /// Failed requests by client group ([`CLIENT_GROUPS`]), cumulative and
    /// wrapping, as the analysis window keeps them.
    failing_clients: [AtomicU32; CLIENT_GROUPS],
    /// The part of `outcomes` that was rehearsal traffic
    /// ([`REHEARSAL_HEADER`]).
    rehearsal: [AtomicU64; Outcome::COUNT],
    latency: [AtomicU64; LATENCY_BUCKETS],
    latency_sum_us: AtomicU64,
}

/// A copy of [`VersionStats`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Requests by outcome.
    pub outcomes: [u64; Outcome::COUNT],
    /// Failed requests by client group, cumulative modulo 2^32.
    pub failing_clients: [u32; CLIENT_GROUPS],
    /// Requests by latency bucket.
    pub latency: [u64; LATENCY_BUCKETS],
    /// Sum of latencies, microseconds.
    pub latency_sum_us: u64,
}

/// Counters of both versions of one tenant, its rollback count and the
/// last analysis verdict.
#[derive(Debug, Default)]
pub struct TenantStats {
    stable: VersionStats,
    /// Made when the canary serves its first request: most tenants have no
    /// canary, or one not yet served, and each would cost half a KiB.
    canary: OnceLock<Box<VersionStats>>,
    rollbacks: [AtomicU64; crate::vocab::Check::ALL.len() + 1],
    verdict: AtomicU8,
}

/// Reloads applied, rejected and found unchanged, for `/metrics`.
#[derive(Debug, Default)]
pub struct ReloadCounters {
    /// Applied.
    pub applied: AtomicU64,
    /// Refused (the old config kept serving).
    pub rejected: AtomicU64,
    /// The file had not changed.
    pub unchanged: AtomicU64,
    /// Graceful upgrades: sockets handed to a new process.
    pub upgrades_handed_over: AtomicU64,
    /// SIGQUITs refused: no new process was waiting for the sockets.
    pub upgrades_no_successor: AtomicU64,
    /// Upgrades whose new process did not take the sockets (this one went
    /// on serving).
    pub upgrades_not_taken: AtomicU64,
}

/// Prometheus view of the current route table.
pub struct Exporter {
    routes: Arc<ArcSwap<RouteTable>>,
    reloads: Arc<ReloadCounters>,
    descs: Vec<Desc>,
}

// === impl VersionStats ===

impl Default for VersionStats {
    fn default() -> Self {
        VersionStats {
            outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
            failing_clients: std::array::from_fn(|_| AtomicU32::new(0)),
            rehearsal: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_us: AtomicU64::new(0),
        }
    }
}

impl VersionStats {
    /// Record one request of `client` (any stable hash of who sent it:
    /// failures are grouped by it modulo [`CLIENT_GROUPS`]). `latency` is
    /// `None` for requests whose duration means nothing (WebSocket
    /// sessions, which last as long as the tab).
    pub fn record(&self, outcome: Outcome, latency: Option<Duration>, client: u16) {
        self.outcomes[outcome.index()].fetch_add(1, Relaxed);
        if outcome.is_failure() {
            self.failing_clients[usize::from(client) % CLIENT_GROUPS].fetch_add(1, Relaxed);
        }
        if let Some(latency) = latency {
            let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            self.latency[bucket_of(us)].fetch_add(1, Relaxed);
            self.latency_sum_us.fetch_add(us, Relaxed);
        }
    }

    /// Count a request already [recorded](Self::record) as rehearsal
    /// traffic too.
    pub fn record_rehearsal(&self, outcome: Outcome) {
        self.rehearsal[outcome.index()].fetch_add(1, Relaxed);
    }

    /// Rehearsal requests by outcome.
    pub fn rehearsal(&self) -> [u64; Outcome::COUNT] {
        std::array::from_fn(|i| self.rehearsal[i].load(Relaxed))
    }

    /// Requests counted so far, every outcome: a few loads, no copy of
    /// the rest (a fleet's heartbeat sums them over every tenant).
    pub fn requests(&self) -> u64 {
        self.outcomes.iter().map(|o| o.load(Relaxed)).sum()
    }

    /// Read every counter (each atomically; not all at one instant).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            outcomes: std::array::from_fn(|i| self.outcomes[i].load(Relaxed)),
            failing_clients: std::array::from_fn(|i| self.failing_clients[i].load(Relaxed)),
            latency: std::array::from_fn(|i| self.latency[i].load(Relaxed)),
            latency_sum_us: self.latency_sum_us.load(Relaxed),
        }
    }
}

/// Index of the latency bucket of `us` (binary search over 47 bounds).
pub fn bucket_of(us: u64) -> usize {
    LATENCY_BOUNDS_US.partition_point(|&b| b < us)
}

// === impl Snapshot ===

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            outcomes: [0; Outcome::COUNT],
            failing_clients: [0; CLIENT_GROUPS],
            latency: [0; LATENCY_BUCKETS],
            latency_sum_us: 0,
        }
    }
}

impl Snapshot {
    /// Judged requests (client aborts excluded).
    pub fn requests(&self) -> u64 {
        Outcome::ALL
            .iter()
            .filter(|o| o.is_judged())
            .map(|o| self.outcomes[o.index()])
            .sum()
    }

    /// Failed requests.
    pub fn errors(&self) -> u64 {
        Outcome::ALL
            .iter()
            .filter(|o| o.is_failure())
            .map(|o| self.outcomes[o.index()])
            .sum()
    }
}

// === impl TenantStats ===

impl TenantStats {
    /// The counters of `version`, to count into (a canary's are made here
    /// the first time).
    pub fn version(&self, version: Version) -> &VersionStats {
        match version {
            Version::Stable => &self.stable,
            Version::Canary => self.canary.get_or_init(Box::default),
        }
    }

    /// The counters of `version` if it has counted anything (a canary that
    /// never served has none).
    pub fn served(&self, version: Version) -> Option<&VersionStats> {
        match version {
            Version::Stable => Some(&self.stable),
            Version::Canary => self.canary.get().map(|c| &**c),
        }
    }

    /// A copy of `version`'s counters (zeros for one never served).
    pub fn snapshot(&self, version: Version) -> Snapshot {
        self.served(version)
            .map_or_else(Snapshot::default, VersionStats::snapshot)
    }

    /// Count a rollback; `check` is `None` for an operator's.
    pub fn count_rollback(&self, check: Option<crate::vocab::Check>) {
        self.rollbacks[rollback_index(check)].fetch_add(1, Relaxed);
    }

    /// Remember the last verdict (`inconclusive`, `healthy`, `breach`).
    pub fn set_verdict(&self, verdict: crate::vocab::VerdictKind) {
        use crate::vocab::VerdictKind;
        let v = match verdict {
            VerdictKind::Inconclusive => 1,
            VerdictKind::Healthy => 2,
            VerdictKind::Breach => 3,
        };
        self.verdict.store(v, Relaxed);
    }

    /// The last verdict's label, if the tenant was analysed.
    pub fn verdict(&self) -> Option<&'static str> {
        use crate::vocab::VerdictKind;
        match self.verdict.load(Relaxed) {
            1 => Some(VerdictKind::Inconclusive.as_str()),
            2 => Some(VerdictKind::Healthy.as_str()),
            3 => Some(VerdictKind::Breach.as_str()),
            _ => None,
        }
    }

    /// Rollbacks so far, by reason.
    pub fn rollbacks(&self, check: Option<crate::vocab::Check>) -> u64 {
        self.rollbacks[rollback_index(check)].load(Relaxed)
    }
}

fn rollback_index(check: Option<crate::vocab::Check>) -> usize {
    use crate::vocab::Check;
    check.map_or(Check::ALL.len(), |c| {
        Check::ALL.iter().position(|x| *x == c).unwrap_or(0)
    })
}

/// Reason label of a rollback.
pub fn rollback_reason(check: Option<crate::vocab::Check>) -> &'static str {
    check.map_or("manual", |c| c.as_str())
}

// === impl Exporter ===

const REQUESTS: &str = "fledge_requests_total";
const DURATION: &str = "fledge_request_duration_seconds";
const WEIGHT: &str = "fledge_canary_weight";
const STATE: &str = "fledge_canary_state";
const VERDICT: &str = "fledge_canary_verdict";
const ROLLBACKS: &str = "fledge_rollbacks_total";
const RELOADS: &str = "fledge_config_reloads_total";
const EJECTIONS: &str = "fledge_worker_ejections_total";
const REHEARSALS: &str = "fledge_rehearsal_requests_total";
const UPGRADES: &str = "fledge_upgrades_total";
const HEALTHY: &str = "fledge_worker_healthy";

/// Request header marking rehearsal traffic (`load-tests/`'s runner sends
/// it). Such requests are routed, judged and counted like any other, and
/// also counted in `fledge_rehearsal_requests_total`, so that a rehearsal
/// on a shared deployment can be told apart from users' traffic. A
/// `HeaderName`, so looking for it on every request hashes a known name
/// instead of parsing text.
pub const REHEARSAL_HEADER: http::HeaderName = http::HeaderName::from_static("x-fledge-rehearsal");

impl Exporter {
    /// An exporter of whatever table `routes` holds.
    pub fn new(routes: Arc<ArcSwap<RouteTable>>, reloads: Arc<ReloadCounters>) -> Self {
        let descs = vec![
            desc(
                REQUESTS,
                "Requests by tenant, version and outcome.",
                &["tenant", "version", "outcome"],
            ),
            desc(
                DURATION,
                "Request duration from request header to response end (WebSockets excluded).",
                &["tenant", "version"],
            ),
            desc(WEIGHT, "Canary weight in percent.", &["tenant"]),
            desc(
                STATE,
                "Canary state: 1 for the current one.",
                &["tenant", "state"],
            ),
            desc(
                VERDICT,
                "Last analysis verdict: 1 for the current one.",
                &["tenant", "verdict"],
            ),
            desc(ROLLBACKS, "Canary rollbacks by reason.", &["tenant", "reason"]),
            desc(RELOADS, "Config reloads by result.", &["result"]),
            desc(
                EJECTIONS,
                "Workers taken out of their pool after failures in a row, by pool (counted since the pool was last changed).",
                &["pool"],
            ),
            desc(
                REHEARSALS,
                "The part of fledge_requests_total that carried the X-Fledge-Rehearsal header.",
                &["tenant", "version", "outcome"],
            ),
            desc(
                UPGRADES,
                "Graceful upgrades (SIGQUIT) by result: handed_over, no_successor (refused, still serving), not_taken (the new process never took the sockets, still serving).",
                &["result"],
            ),
            desc(
                HEALTHY,
                "1 while a worker passes its pool's health checks (TCP, or HTTP with health_check.path), else 0.",
                &["pool", "worker"],
            ),
        ];
        Exporter {
            routes,
            reloads,
            descs,
        }
    }

    /// Register in `registry`.
    pub fn register(self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self))
    }
}

/// A metric family's description (static names and labels).
pub(crate) fn desc(name: &str, help: &str, labels: &[&str]) -> Desc {
    Desc::new(
        name.into(),
        help.into(),
        labels.iter().map(|l| (*l).to_owned()).collect(),
        Default::default(),
    )
    .expect("static metric descriptions are valid")
}

pub(crate) fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_owned());
            l.set_value((*v).to_owned());
            l
        })
        .collect()
}

pub(crate) fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

pub(crate) fn counter(pairs: &[(&str, &str)], value: f64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_counter(c);
    m
}

pub(crate) fn gauge(pairs: &[(&str, &str)], value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_gauge(g);
    m
}

impl Collector for Exporter {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use crate::vocab::Check;
        use crate::vocab::RolloutState;
        let table = self.routes.load_full();
        let mut rehearsals = Vec::new();
        let (mut requests, mut durations, mut weights, mut states, mut verdicts, mut rollbacks) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for t in table.tenants() {
            let name = t.name();
            for version in [Version::Stable, Version::Canary] {
                let s = t.stats().snapshot(version);
                let v = version.as_str();
                // Only series that happened: 10 000 tenants × 2 versions × 8
                // outcomes of zeros would drown the scrape.
                let rehearsed = t
                    .stats()
                    .served(version)
                    .map(VersionStats::rehearsal)
                    .unwrap_or_default();
                for o in Outcome::ALL {
                    let n = s.outcomes[o.index()];
                    let labels = [("tenant", name), ("version", v), ("outcome", o.as_str())];
                    if n > 0 {
                        requests.push(counter(&labels, n as f64));
                    }
                    if rehearsed[o.index()] > 0 {
                        rehearsals.push(counter(&labels, rehearsed[o.index()] as f64));
                    }
                }
                let count: u64 = s.latency.iter().sum();
                if count > 0 {
                    let mut h = Histogram::default();
                    h.set_sample_count(count);
                    h.set_sample_sum(s.latency_sum_us as f64 / 1e6);
                    let mut cumulative = 0u64;
                    let mut next = 0usize;
                    let mut buckets = Vec::with_capacity(EXPORTED_BOUNDS_US.len());
                    for &bound in &EXPORTED_BOUNDS_US {
                        while next < LATENCY_BOUNDS_US.len() && LATENCY_BOUNDS_US[next] <= bound {
                            cumulative += s.latency[next];
                            next += 1;
                        }
                        let mut b = prometheus::proto::Bucket::default();
                        b.set_upper_bound(bound as f64 / 1e6);
                        b.set_cumulative_count(cumulative);
                        buckets.push(b);
                    }
                    h.set_bucket(buckets);
                    let mut m = Metric::default();
                    m.set_label(labels(&[("tenant", name), ("version", v)]));
                    m.set_histogram(h);
                    durations.push(m);
                }
            }
            if t.canary().is_some() {
                weights.push(gauge(&[("tenant", name)], t.weight().percent()));
                for state in RolloutState::ALL {
                    let on = t.rollout_state() == state;
                    states.push(gauge(
                        &[("tenant", name), ("state", state.as_str())],
                        f64::from(u8::from(on)),
                    ));
                }
                if let Some(verdict) = t.stats().verdict() {
                    for label in ["inconclusive", "healthy", "breach"] {
                        verdicts.push(gauge(
                            &[("tenant", name), ("verdict", label)],
                            f64::from(u8::from(verdict == label)),
                        ));
                    }
                }
            }
            for check in Check::ALL.iter().copied().map(Some).chain([None]) {
                let n = t.stats().rollbacks(check);
                if n > 0 {
                    rollbacks.push(counter(
                        &[("tenant", name), ("reason", rollback_reason(check))],
                        n as f64,
                    ));
                }
            }
        }
        let help = |i: usize| self.descs[i].help.as_str();
        vec![
            family(REQUESTS, help(0), MetricType::COUNTER, requests),
            family(DURATION, help(1), MetricType::HISTOGRAM, durations),
            family(WEIGHT, help(2), MetricType::GAUGE, weights),
            family(STATE, help(3), MetricType::GAUGE, states),
            family(VERDICT, help(4), MetricType::GAUGE, verdicts),
            family(ROLLBACKS, help(5), MetricType::COUNTER, rollbacks),
            family(
                RELOADS,
                help(6),
                MetricType::COUNTER,
                [
                    ("applied", &self.reloads.applied),
                    ("rejected", &self.reloads.rejected),
                    ("unchanged", &self.reloads.unchanged),
                ]
                .iter()
                .map(|(result, n)| counter(&[("result", result)], n.load(Relaxed) as f64))
                .collect(),
            ),
            family(
                EJECTIONS,
                help(7),
                MetricType::COUNTER,
                table
                    .pools()
                    .iter()
                    .map(|p| counter(&[("pool", p.name())], p.ejections() as f64))
                    .collect(),
            ),
            family(REHEARSALS, help(8), MetricType::COUNTER, rehearsals),
            family(
                UPGRADES,
                help(9),
                MetricType::COUNTER,
                [
                    ("handed_over", &self.reloads.upgrades_handed_over),
                    ("no_successor", &self.reloads.upgrades_no_successor),
                    ("not_taken", &self.reloads.upgrades_not_taken),
                ]
                .iter()
                .map(|(result, n)| counter(&[("result", result)], n.load(Relaxed) as f64))
                .collect(),
            ),
            family(
                HEALTHY,
                help(10),
                MetricType::GAUGE,
                table
                    .pools()
                    .iter()
                    .flat_map(|p| {
                        p.health().into_iter().map(|(worker, up)| {
                            let worker = worker.to_string();
                            gauge(
                                &[("pool", p.name()), ("worker", &worker)],
                                if up { 1.0 } else { 0.0 },
                            )
                        })
                    })
                    .collect(),
            ),
        ]
        .into_iter()
        .filter(|f| !f.get_metric().is_empty())
        .collect()
    }
}
