//! The per-tenant counters as a file, so that a graceful upgrade hands them
//! to the new process with its sockets: Prometheus sees the counters go on
//! rather than reset, and the analysis keeps its history.
//!
//! Outcomes and latency buckets are keyed by label and bound rather than by
//! array position, so a new binary whose vocabulary or buckets changed
//! still takes what it recognises (and says how much it dropped).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

use serde::{Deserialize, Serialize};

use super::{
    rollback_reason, Outcome, Snapshot, TenantStats, VersionStats, CLIENT_GROUPS, LATENCY_BOUNDS_US,
    LATENCY_BUCKETS,
};
use crate::routing::{RouteTable, Version};
use crate::vocab::Check;

/// Every tenant's counters at one moment.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsDump {
    /// By tenant name.
    pub tenants: BTreeMap<String, TenantDump>,
}

/// One tenant's counters.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantDump {
    stable: VersionDump,
    canary: VersionDump,
    /// Rollbacks by reason label.
    rollbacks: BTreeMap<String, u64>,
}

/// One version's counters; zeros are left out.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionDump {
    /// Requests by outcome label.
    outcomes: BTreeMap<String, u64>,
    /// Requests by latency bucket, keyed by its upper bound in µs (`inf`
    /// for the last).
    latency: BTreeMap<String, u64>,
    latency_sum_us: u64,
    /// Rehearsal requests by outcome label.
    #[serde(default)]
    rehearsal: BTreeMap<String, u64>,
    /// Failed requests by client group (`CLIENT_GROUPS` of them, modulo
    /// 2^32; empty when none failed), so that failures carried over stay
    /// under the analysis' per-client share.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    failing_clients: Vec<u32>,
}

/// Counts [`StatsDump::add_to`] could not place.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Tenants no longer in the table.
    pub tenants: usize,
    /// Outcome labels, bucket bounds or reasons this binary does not know.
    pub keys: usize,
}

fn bound_key(bucket: usize) -> String {
    LATENCY_BOUNDS_US
        .get(bucket)
        .map_or_else(|| "inf".to_owned(), u64::to_string)
}

fn rollback_reasons() -> impl Iterator<Item = Option<Check>> {
    Check::ALL.iter().copied().map(Some).chain([None])
}

impl StatsDump {
    /// Read every tenant's counters in `table`.
    pub fn of(table: &RouteTable) -> StatsDump {
        let tenants = table
            .tenants()
            .iter()
            .map(|t| (t.name().to_owned(), TenantDump::of(t.stats())))
            .collect();
        StatsDump { tenants }
    }

    /// What was counted since `earlier` (counters only grow; a tenant new
    /// since then counts from zero).
    pub fn since(&self, earlier: &StatsDump) -> StatsDump {
        let empty = TenantDump::default();
        let tenants = self
            .tenants
            .iter()
            .map(|(name, now)| {
                let before = earlier.tenants.get(name).unwrap_or(&empty);
                (name.clone(), now.since(before))
            })
            .filter(|(_, d)| !d.is_empty())
            .collect();
        StatsDump { tenants }
    }

    /// Add these counts to the counters of `table`'s tenants of the same
    /// names.
    pub fn add_to(&self, table: &RouteTable) -> Dropped {
        let mut dropped = Dropped::default();
        for (name, dump) in &self.tenants {
            match table.tenants().iter().find(|t| t.name() == name) {
                Some(t) => dropped.keys += dump.add_to(t.stats()),
                None => dropped.tenants += 1,
            }
        }
        dropped
    }

    /// Requests counted, all tenants and versions.
    pub fn requests(&self) -> u64 {
        self.tenants
            .values()
            .flat_map(|t| [&t.stable, &t.canary])
            .flat_map(|v| v.outcomes.values())
            .sum()
    }
}

impl TenantDump {
    fn of(stats: &TenantStats) -> TenantDump {
        TenantDump {
            stable: VersionDump::of(stats.served(Version::Stable)),
            canary: VersionDump::of(stats.served(Version::Canary)),
            rollbacks: rollback_reasons()
                .map(|c| (rollback_reason(c).to_owned(), stats.rollbacks(c)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }

    fn since(&self, before: &TenantDump) -> TenantDump {
        TenantDump {
            stable: self.stable.since(&before.stable),
            canary: self.canary.since(&before.canary),
            rollbacks: minus(&self.rollbacks, &before.rollbacks),
        }
    }

    fn is_empty(&self) -> bool {
        self.stable.outcomes.is_empty() && self.canary.outcomes.is_empty() && self.rollbacks.is_empty()
    }

    /// Add to `stats`; how many keys were not recognised.
    fn add_to(&self, stats: &TenantStats) -> usize {
        let mut unknown = 0;
        for (dump, version) in [(&self.stable, Version::Stable), (&self.canary, Version::Canary)] {
            // A version that counted nothing gets no counters made for it.
            if !dump.is_empty() {
                unknown += dump.add_to(stats.version(version));
            }
        }
        for (reason, n) in &self.rollbacks {
            match rollback_reasons().position(|c| rollback_reason(c) == reason) {
                Some(i) => stats.rollbacks[i].fetch_add(*n, Relaxed),
                None => {
                    unknown += 1;
                    0
                }
            };
        }
        unknown
    }
}

impl VersionDump {
    fn of(stats: Option<&VersionStats>) -> VersionDump {
        let s = stats.map_or_else(Snapshot::default, VersionStats::snapshot);
        let rehearsal = stats.map(VersionStats::rehearsal).unwrap_or_default();
        VersionDump {
            outcomes: Outcome::ALL
                .iter()
                .map(|o| (o.as_str().to_owned(), s.outcomes[o.index()]))
                .filter(|(_, n)| *n > 0)
                .collect(),
            latency: (0..LATENCY_BUCKETS)
                .map(|b| (bound_key(b), s.latency[b]))
                .filter(|(_, n)| *n > 0)
                .collect(),
            latency_sum_us: s.latency_sum_us,
            rehearsal: Outcome::ALL
                .iter()
                .zip(rehearsal)
                .map(|(o, n)| (o.as_str().to_owned(), n))
                .filter(|(_, n)| *n > 0)
                .collect(),
            failing_clients: if s.failing_clients.iter().all(|&n| n == 0) {
                Vec::new()
            } else {
                s.failing_clients.to_vec()
            },
        }
    }

    fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
            && self.latency.is_empty()
            && self.latency_sum_us == 0
            && self.rehearsal.is_empty()
            && self.failing_clients.is_empty()
    }

    fn since(&self, before: &VersionDump) -> VersionDump {
        VersionDump {
            outcomes: minus(&self.outcomes, &before.outcomes),
            latency: minus(&self.latency, &before.latency),
            latency_sum_us: self.latency_sum_us.saturating_sub(before.latency_sum_us),
            rehearsal: minus(&self.rehearsal, &before.rehearsal),
            failing_clients: {
                let d: Vec<u32> = (0..self.failing_clients.len())
                    .map(|i| {
                        self.failing_clients[i]
                            .wrapping_sub(before.failing_clients.get(i).copied().unwrap_or(0))
                    })
                    .collect();
                if d.iter().all(|&n| n == 0) {
                    Vec::new()
                } else {
                    d
                }
            },
        }
    }

    fn add_to(&self, stats: &VersionStats) -> usize {
        let mut unknown = 0;
        for (label, n) in &self.outcomes {
            match Outcome::ALL.iter().find(|o| o.as_str() == label) {
                Some(o) => _ = stats.outcomes[o.index()].fetch_add(*n, Relaxed),
                None => unknown += 1,
            }
        }
        for (bound, n) in &self.latency {
            match (0..LATENCY_BUCKETS).find(|b| bound_key(*b) == *bound) {
                Some(b) => _ = stats.latency[b].fetch_add(*n, Relaxed),
                None => unknown += 1,
            }
        }
        stats.latency_sum_us.fetch_add(self.latency_sum_us, Relaxed);
        for (label, n) in &self.rehearsal {
            match Outcome::ALL.iter().find(|o| o.as_str() == label) {
                Some(o) => _ = stats.rehearsal[o.index()].fetch_add(*n, Relaxed),
                None => unknown += 1,
            }
        }
        if !self.failing_clients.is_empty() && self.failing_clients.len() != CLIENT_GROUPS {
            unknown += 1;
        } else {
            for (group, n) in self.failing_clients.iter().enumerate() {
                stats.failing_clients[group].fetch_add(*n, Relaxed);
            }
        }
        unknown
    }
}

fn minus(now: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    now.iter()
        .map(|(k, n)| (k.clone(), n.saturating_sub(before.get(k).copied().unwrap_or(0))))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_survive_a_round_trip_and_differences_add_up() {
        let a = TenantStats::default();
        a.version(Version::Stable)
            .record(Outcome::Ok, Some(Duration::from_millis(3)), 0);
        a.version(Version::Stable).record_rehearsal(Outcome::Ok);
        a.version(Version::Canary)
            .record(Outcome::JsonRpcError, Some(Duration::from_secs(90)), 0);
        a.count_rollback(Some(Check::ErrorRate));
        let first = TenantDump::of(&a);
        a.version(Version::Stable).record(Outcome::ServerError, None, 0);

        // Into a fresh process's counters: the dump at hand-over, then what
        // the old process counted while draining.
        let b = TenantStats::default();
        let json = serde_json::to_string(&first).unwrap();
        let back: TenantDump = serde_json::from_str(&json).unwrap();
        assert_eq!(back.add_to(&b), 0);
        assert_eq!(TenantDump::of(&a).since(&first).add_to(&b), 0);
        assert_eq!(TenantDump::of(&b), TenantDump::of(&a));
        assert_eq!(b.rollbacks(Some(Check::ErrorRate)), 1);
        assert_eq!(
            b.version(Version::Canary).snapshot().latency[LATENCY_BUCKETS - 1],
            1
        );
    }

    /// A canary that never served has no counters (half a KiB per tenant),
    /// reads as zeros, and gets none from a hand-over that has nothing for
    /// it; its first request makes them.
    #[test]
    fn a_canary_that_never_served_has_no_counters() {
        let a = TenantStats::default();
        a.version(Version::Stable).record(Outcome::Ok, None, 0);
        assert!(a.served(Version::Canary).is_none());
        assert_eq!(a.snapshot(Version::Canary), Snapshot::default());
        let b = TenantStats::default();
        assert_eq!(TenantDump::of(&a).add_to(&b), 0);
        assert!(b.served(Version::Canary).is_none(), "made for nothing");
        assert_eq!(b.snapshot(Version::Stable).requests(), 1);

        a.version(Version::Canary).record(Outcome::ServerError, None, 0);
        assert_eq!(a.snapshot(Version::Canary).errors(), 1);
        assert_eq!(TenantDump::of(&a).add_to(&b), 0);
        assert_eq!(b.snapshot(Version::Canary).errors(), 1);
    }

    #[test]
    fn unknown_labels_and_bounds_are_counted_not_guessed() {
        let mut dump = TenantDump::default();
        dump.stable.outcomes.insert("teleported".into(), 3);
        dump.stable.outcomes.insert("ok".into(), 2);
        dump.canary.latency.insert("333".into(), 1);
        let stats = TenantStats::default();
        assert_eq!(dump.add_to(&stats), 2);
        assert_eq!(stats.version(Version::Stable).snapshot().requests(), 2);
    }
}
