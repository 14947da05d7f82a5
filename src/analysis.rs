//! Control plane: the analysis loop. Ten times a second it samples every
//! canary tenant's counters into its sliding window, judges the canary
//! against stable over the same window, and hands the verdicts to
//! [`Control`], which rolls back, steps or promotes.
//!
//! No metrics database is in the loop: the counters are the atomics the data
//! plane increments, read directly. From a canary starting to fail to its
//! weight being 0 takes the time to gather `min_requests` failing requests
//! plus `consecutive_breaches` ticks.
//!
//! - `window`: a tenant's ring of time slots (owned here, so no lock).
//! - `verdict`: the pure judgement.
//! - `rollout`: the state machine the verdicts drive.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::time::Instant;

use crate::control::{Control, Judgement};
use crate::metrics::Snapshot;
use crate::routing::{RouteTable, TenantRoute, Version};

pub mod rollout;
pub mod verdict;
pub mod window;

/// Time between two ticks, and the length of a window slot.
pub const TICK: Duration = Duration::from_millis(100);

/// The analysis state: one window per canary tenant.
#[derive(Debug, Default)]
pub struct Analyzer {
    windows: HashMap<Arc<str>, Tracked, ahash::RandomState>,
}

#[derive(Debug)]
struct Tracked {
    name: Arc<str>,
    epoch: u32,
    window: window::Window,
    last: verdict::Verdict,
}

/// The background service running the [`Analyzer`] against [`Control`].
pub struct AnalysisService {
    control: Arc<Control>,
}

impl Analyzer {
    /// Sample every judged canary of `table` from this process's counters
    /// and judge it; `export` sets each tenant's verdict metric.
    pub fn tick(&mut self, table: &RouteTable, export: bool) -> Vec<Judgement> {
        self.tick_with(table, export, |t| {
            let stats = t.stats();
            (stats.snapshot(Version::Stable), stats.snapshot(Version::Canary))
        })
    }

    /// As [`tick`](Self::tick), the counters (cumulative, stable then
    /// canary) read from `source`: a fleet's leader judges the sum of every
    /// replica's (`crate::fleet`).
    pub fn tick_with(
        &mut self,
        table: &RouteTable,
        export: bool,
        mut source: impl FnMut(&TenantRoute) -> (Snapshot, Snapshot),
    ) -> Vec<Judgement> {
        let mut out = Vec::new();
        let mut seen = 0usize;
        for t in table.tenants() {
            if t.canary().is_none() || !t.rollout_state().is_judged() {
                continue;
            }
            seen += 1;
            let policy = &t.policy().analysis;
            let slots = usize::try_from(policy.window.as_millis() / TICK.as_millis()).unwrap_or(1);
            let tracked = match self.windows.get_mut(t.name()) {
                Some(tracked) => tracked,
                None => {
                    let name = Arc::clone(t.shared_name());
                    let fresh = Tracked {
                        name: Arc::clone(&name),
                        epoch: t.epoch(),
                        window: window::Window::new(slots),
                        last: verdict::Verdict::Inconclusive,
                    };
                    self.windows.entry(name).or_insert(fresh)
                }
            };
            if tracked.epoch != t.epoch() {
                // A new canary pool: a fresh window.
                tracked.epoch = t.epoch();
                tracked.window = window::Window::new(slots);
                tracked.last = verdict::Verdict::Inconclusive;
            }
            let (stable, canary) = source(t);
            tracked.window.push(&stable, &canary);
            let new_requests = tracked.window.newest_canary_requests();
            if new_requests > 0 {
                tracked.last = tracked.window.verdict(&policy.thresholds, policy.quantile);
            }
            if export {
                t.stats().set_verdict(&tracked.last);
            }
            out.push(Judgement {
                tenant: Arc::clone(&tracked.name),
                verdict: tracked.last.clone(),
                new_requests,
            });
        }
        if self.windows.len() > seen {
            let live: std::collections::HashSet<&str> = out.iter().map(|j| &*j.tenant).collect();
            self.windows.retain(|k, _| live.contains(&**k));
        }
        out
    }
}

impl AnalysisService {
    /// The loop for `control`'s tenants.
    pub fn new(control: Arc<Control>) -> Self {
        AnalysisService { control }
    }
}

#[async_trait]
impl BackgroundService for AnalysisService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut analyzer = Analyzer::default();
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = Instant::now();
            let table = self.control.routes().load_full();
            // In a fleet whose Redis answers, the leader judges the fleet's
            // traffic (`crate::fleet`); this loop keeps its windows warm for
            // when Redis does not. The verdict metric is the leader's
            // fleet-wide one on the leader, this replica's own elsewhere.
            let leads = self
                .control
                .fleet()
                .is_some_and(|l| l.is_leader() && l.in_fleet());
            let mut judgements = analyzer.tick(&table, !leads);
            drop(table);
            // A quiet canary still inconclusive changes nothing: spare the
            // control plane's lock and lookups for it (10 000 canaries, ten
            // ticks a second).
            judgements.retain(|j| j.new_requests > 0 || !matches!(j.verdict, verdict::Verdict::Inconclusive));
            if !judgements.is_empty() {
                self.control.judge(&judgements, now - last).await;
            }
            last = now;
        }
    }
}
