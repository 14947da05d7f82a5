//! Control plane: the analysis loop. Ten times a second it samples every
//! canary tenant's counters into its sliding window, judges the canary
//! against stable over the same window, and hands the verdicts to
//! `Control` (through `control::services::AnalysisService`), which rolls
//! back, steps or promotes.
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

use self::verdict::Verdict;
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

/// One tenant's verdict of one analysis tick.
#[derive(Debug, Clone)]
pub struct Judgement {
    /// The tenant.
    pub tenant: Arc<str>,
    /// The verdict.
    pub verdict: Verdict,
    /// Canary requests since the previous tick.
    pub new_requests: u64,
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
                t.stats().set_verdict(tracked.last.kind());
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
