//! The pure judgement: a policy, what stable did and what the canary did over
//! the same window → a [`Verdict`]. No clock, no I/O: table-tested.

use serde::{Deserialize, Serialize};

use crate::metrics::CLIENT_GROUPS;

/// What one version did over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Requests judged (client aborts excluded).
    pub requests: u64,
    /// Of which failed: 5xx, JSON-RPC errors, connect failures, timeouts, resets.
    pub errors: u64,
    /// The policy's latency quantile, in milliseconds (`None`: no latencies).
    pub latency_ms: Option<f64>,
    /// Latencies by the window's buckets (`window::SLOT_BOUNDS_US`).
    #[serde(skip)]
    pub histogram: [u64; super::window::SLOT_BUCKETS],
    /// Client groups (`metrics::CLIENT_GROUPS`) the counted errors came
    /// from: a lower bound on the distinct failing clients.
    #[serde(default)]
    pub failing_clients: u64,
}

/// A policy's thresholds. Each check is optional; absolute checks judge the
/// canary alone, relative ones against stable over the same window.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Below this many canary requests nothing is judged (inconclusive).
    pub min_requests: u64,
    /// Canary error rate above this (percent) breaches.
    pub max_error_rate_percent: Option<f64>,
    /// Canary error rate minus stable's above this (points) breaches.
    pub max_error_rate_increase_percent: Option<f64>,
    /// Canary latency quantile above this breaches.
    pub max_latency_ms: Option<f64>,
    /// Canary latency quantile over stable's above this breaches.
    pub max_latency_ratio: Option<f64>,
    /// An error-rate breach needs failures from at least this many client
    /// groups: a handful of clients (an attacker, one broken script)
    /// cannot roll a canary back.
    pub min_failing_clients: u64,
    /// No client group counts for more than this share (0..=1) of a
    /// stretch's failures, on the canary and on stable alike: a few
    /// clients can neither push the canary over its limit nor raise
    /// stable's rate to hide a bad canary. 1: no limit.
    pub max_client_failure_share: f64,
}

/// What [`spread`] made of a stretch's failures by client group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spread {
    /// Failures in all groups.
    pub total: u64,
    /// Failures counted once no group has more than its share.
    pub counted: u64,
    /// Groups with counted failures.
    pub groups: u64,
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Too little data to judge: never a failure, never a rollback.
    Inconclusive,
    /// Every configured check passed.
    Healthy,
    /// A check failed (see [`Breach::decisive`]).
    Breach(Box<Breach>),
}

impl Verdict {
    /// Its kind, without the figures.
    pub fn kind(&self) -> crate::vocab::VerdictKind {
        use crate::vocab::VerdictKind;
        match self {
            Verdict::Inconclusive => VerdictKind::Inconclusive,
            Verdict::Healthy => VerdictKind::Healthy,
            Verdict::Breach(_) => VerdictKind::Breach,
        }
    }
}

/// Which check failed, and the figures that made it fail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Breach {
    /// The check.
    pub check: Check,
    /// The observed value (percent, points, milliseconds or ratio).
    pub observed: f64,
    /// The policy's limit for it.
    pub limit: f64,
    /// The canary's figures.
    pub canary: Sample,
    /// Stable's figures over the same window.
    pub stable: Sample,
    /// The breach is evidence enough to roll back: its failures came from
    /// at least `min_failing_clients` client groups (always, for latency).
    /// One that is not counts towards a rollout's streak of breaches, so
    /// that a fault is rolled back as soon as its failures have spread,
    /// but never rolls back by itself.
    #[serde(default)]
    pub decisive: bool,
}

pub use crate::vocab::Check;

/// One-sided z-score an error-rate breach must reach: 99.5 % confidence
/// that the rate (or the increase over stable) is above the limit, not a
/// sampling accident. Without it, two versions failing alike at 30 % differ
/// by more than 5 points in a third of all 50-request samples.
pub const CONFIDENCE_Z: f64 = 2.576;

/// The ratio check ignores canaries faster than this: 3 ms against 1 ms is
/// a ratio of 3 and no regression anyone would roll back for.
pub const LATENCY_RATIO_FLOOR_MS: f64 = 50.0;

// === impl Sample ===

impl Sample {
    /// A sample whose `requests` all took `latency_ms` (for tests and tools).
    pub fn uniform(requests: u64, errors: u64, latency_ms: f64) -> Self {
        let mut histogram = [0u64; super::window::SLOT_BUCKETS];
        let us = latency_ms * 1000.0;
        let i = super::window::SLOT_BOUNDS_US.partition_point(|&b| (b as f64) < us);
        histogram[i] = requests;
        Sample {
            requests,
            errors,
            latency_ms: Some(latency_ms),
            histogram,
            failing_clients: errors.min(CLIENT_GROUPS as u64),
        }
    }

    /// How many latencies exceed `ms`, spreading each bucket evenly.
    pub fn slower_than(&self, ms: f64) -> f64 {
        let bounds = &super::window::SLOT_BOUNDS_US;
        let us = ms * 1000.0;
        let mut slower = 0.0;
        for (i, &n) in self.histogram.iter().enumerate() {
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] as f64 };
            let upper = bounds.get(i).map_or(f64::INFINITY, |&b| b as f64);
            if lower >= us {
                slower += n as f64;
            } else if upper > us && upper.is_finite() {
                slower += n as f64 * (upper - us) / (upper - lower);
            } else if upper > us {
                slower += n as f64;
            }
        }
        slower
    }

    /// Are significantly more than `1 - q` of the latencies above `ms`? A
    /// quantile read from a few requests is their slowest one, so the test
    /// is on the share of slow requests, with the same confidence as the
    /// error-rate checks.
    fn significantly_slower(&self, ms: f64, q: f64) -> bool {
        let n: u64 = self.histogram.iter().sum();
        if n == 0 {
            return false;
        }
        let slow = self.slower_than(ms);
        let nn = n as f64 + 4.0;
        let p = (slow + 2.0) / nn;
        let margin = slow / n as f64 - (1.0 - q);
        margin > CONFIDENCE_Z * (p * (1.0 - p) / nn).sqrt()
    }

    /// Agresti–Coull estimate of the error proportion and its variance; the
    /// variance is what we use: unlike the plain one it is not 0 at 0 and
    /// 100 %, where a small sample would otherwise claim certainty.
    fn proportion(&self) -> (f64, f64) {
        let n = self.requests as f64 + 4.0;
        let p = (self.errors as f64 + 2.0) / n;
        (p, p * (1.0 - p) / n)
    }

    /// Error rate in percent (0 without requests).
    pub fn error_rate_percent(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 * 100.0 / self.requests as f64
        }
    }
}

// === impl Verdict ===

impl Verdict {
    /// Label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Inconclusive => "inconclusive",
            Verdict::Healthy => "healthy",
            Verdict::Breach(_) => "breach",
        }
    }
}

/// Count a stretch's failures by client group (`by_group`) so that no group
/// counts for more than `max_share` of the counted total: each group is
/// capped at the largest `c` with `c <= max_share * sum(min(f, c))`
/// (water-filling). One group alone, or fewer than `1 / max_share` of
/// them, count for nothing; many groups failing alike count in full.
pub fn spread(by_group: &[u64; CLIENT_GROUPS], max_share: f64) -> Spread {
    let total: u64 = by_group.iter().sum();
    let mut groups = *by_group;
    groups.sort_unstable();
    let sorted = &groups[groups.partition_point(|&f| f == 0)..];
    if max_share >= 1.0 || sorted.is_empty() {
        return Spread {
            total,
            counted: total,
            groups: sorted.len() as u64,
        };
    }
    let s = max_share.max(0.0);
    let k = sorted.len();
    // Walk the breakpoints upwards: below the i-th smallest count, the
    // groups above it (k - i of them) all grow with the cap.
    let mut below = 0.0; // sum of the counts under the cap
    let mut cap = sorted[k - 1] as f64;
    for (i, &f) in sorted.iter().enumerate() {
        let f = f as f64;
        let above = (k - i) as f64;
        // g(c) = s * (below + above * c) - c at c = f.
        if s * (below + above * f) - f < -1e-9 * f {
            // The root lies before f: s * below + (s * above - 1) c = 0.
            cap = s * below / (1.0 - s * above);
            break;
        }
        below += f;
    }
    let counted: f64 = sorted.iter().map(|&f| (f as f64).min(cap)).sum();
    let counted = (counted + 1e-6).floor() as u64;
    Spread {
        total,
        counted: counted.min(total),
        groups: if counted == 0 { 0 } else { k as u64 },
    }
}

/// Judge the canary against `t`, and against stable where a check is relative.
///
/// An error-rate check fails only when the excess is significant at
/// [`CONFIDENCE_Z`], so small samples need a large excess. A relative check needs `min_requests` from stable too; without them it is
/// skipped, and if only relative checks are configured the verdict is
/// inconclusive. So a platform-wide incident, where stable is as bad as the
/// canary, never fails a relative policy.
pub fn evaluate(t: &Thresholds, quantile: f64, stable: &Sample, canary: &Sample) -> Verdict {
    if canary.requests < t.min_requests.max(1) {
        return Verdict::Inconclusive;
    }
    let stable_ok = stable.requests >= t.min_requests.max(1);
    // Failures from too few clients say nothing yet about the release: such
    // an error-rate breach is not `decisive` (a rollout counts it towards
    // its streak, but only a decisive breach rolls back). A latency breach
    // always is.
    let spread_enough = canary.failing_clients >= t.min_failing_clients;
    let breach = |check, observed, limit, decisive| Breach {
        check,
        observed,
        limit,
        canary: *canary,
        stable: *stable,
        decisive,
    };
    let mut found: Option<Breach> = None;
    let canary_rate = canary.error_rate_percent();

    let (_, vc) = canary.proportion();
    if let Some(limit) = t.max_error_rate_percent {
        let margin = (canary_rate - limit) / 100.0;
        if canary_rate > limit && margin > CONFIDENCE_Z * vc.sqrt() {
            found = Some(breach(Check::ErrorRate, canary_rate, limit, spread_enough));
        }
    }
    // (Both error-rate checks count the same clients: the second can only
    // add a breach where the first found none.)
    if let (Some(limit), true, None) = (t.max_error_rate_increase_percent, stable_ok, &found) {
        let increase = canary_rate - stable.error_rate_percent();
        let (_, vs) = stable.proportion();
        let margin = (increase - limit) / 100.0;
        if increase > limit && margin > CONFIDENCE_Z * (vc + vs).sqrt() {
            found = Some(breach(Check::ErrorRateIncrease, increase, limit, spread_enough));
        }
    }
    if found.as_ref().is_some_and(|b| b.decisive) {
        return Verdict::Breach(Box::new(found.expect("just checked")));
    }
    if let (Some(limit), Some(latency)) = (t.max_latency_ms, canary.latency_ms) {
        if latency > limit && canary.significantly_slower(limit, quantile) {
            return Verdict::Breach(Box::new(breach(Check::Latency, latency, limit, true)));
        }
    }
    if let (Some(limit), Some(c), Some(s), true) = (
        t.max_latency_ratio,
        canary.latency_ms,
        stable.latency_ms,
        stable_ok,
    ) {
        if c >= LATENCY_RATIO_FLOOR_MS
            && s > 0.0
            && c / s > limit
            && canary.significantly_slower(s * limit, quantile)
        {
            return Verdict::Breach(Box::new(breach(Check::LatencyRatio, c / s, limit, true)));
        }
    }
    if let Some(b) = found {
        return Verdict::Breach(Box::new(b));
    }

    let has_absolute = t.max_error_rate_percent.is_some() || t.max_latency_ms.is_some();
    if !stable_ok && !has_absolute {
        Verdict::Inconclusive
    } else {
        Verdict::Healthy
    }
}

#[cfg(test)]
mod tests;
