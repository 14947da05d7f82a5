//! Control plane: the background services that keep the data plane's
//! picture of the world current. Each reads what the data plane counts or
//! finds and changes nothing but through [`Control`] (which publishes a new
//! route table) or the pools' own health state.
//!
//! - [`AnalysisService`]: ten times a second, the canaries' counters judged
//!   (`analysis`), the verdicts handed to [`Control::judge`].
//! - [`HealthChecks`]: the workers of every pool in the current table
//!   probed (TCP or HTTP), each pool at its interval.
//! - [`WorkerNames`]: the worker names resolved again as they fall due
//!   (`dns`); a changed answer publishes a table with the new members.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use futures_util::future::join_all;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::time::Instant;

use super::Control;
use crate::analysis::{verdict, Analyzer, TICK};
use crate::routing::RouteTable;

/// Granularity of the health-check loop.
const HEALTH_TICK: Duration = Duration::from_millis(100);

/// The background service running the [`Analyzer`] against [`Control`].
pub struct AnalysisService {
    control: Arc<Control>,
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

/// Background service: TCP health checks of every pool in the current table.
pub struct HealthChecks {
    routes: Arc<ArcSwap<RouteTable>>,
}

// === impl HealthChecks ===

impl HealthChecks {
    /// Health checks of the pools of whatever table is current.
    pub fn new(routes: Arc<ArcSwap<RouteTable>>) -> Self {
        HealthChecks { routes }
    }
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Next due time per pool, keyed by the pool's address (pools are
        // shared by `Arc`, so the address is their identity).
        let mut due: HashMap<usize, Instant> = HashMap::new();
        loop {
            let table = self.routes.load_full();
            let now = Instant::now();
            let mut checks = Vec::new();
            for pool in table.pools() {
                let at = due.entry(Arc::as_ptr(pool) as usize).or_insert(now);
                if *at <= now {
                    *at = now + pool.config().health_check.interval;
                    checks.push(pool.check_health());
                }
            }
            join_all(checks).await;
            if due.len() > table.pools().len() {
                let live: HashSet<usize> = table.pools().iter().map(|p| Arc::as_ptr(p) as usize).collect();
                due.retain(|k, _| live.contains(k));
            }
            drop(table);
            tokio::select! {
                _ = tokio::time::sleep(HEALTH_TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Background service: the worker names resolved again as they fall due
/// (`dns`), checked every second.
pub struct WorkerNames(pub Arc<Control>);

#[async_trait]
impl BackgroundService for WorkerNames {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut due = std::collections::HashMap::new();
        loop {
            self.0.refresh_workers(&mut due).await;
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
