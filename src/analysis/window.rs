//! The sliding window of one tenant: a ring of time slots holding what each
//! version did during the slot (requests, errors, a latency histogram),
//! filled from the cumulative counters at every tick. Only the analysis loop
//! owns it, so it needs no lock.
//!
//! The window the verdict sees adapts to traffic: the newest slots, going
//! back until the canary has `min_requests` (or the whole window is used).
//! A busy tenant is judged on its last fraction of a second, so a failing
//! canary is caught within a second; a quiet one on up to `window_seconds`.
//! Stable is always judged over exactly the same slots.

use std::collections::VecDeque;

use super::verdict::Sample;
use crate::metrics::{Snapshot, LATENCY_BOUNDS_US, LATENCY_BUCKETS};

/// Upper bounds (µs) of the coarser histogram kept per slot: 16 buckets are
/// enough to read a p95/p99 for thresholds in the tens of milliseconds and
/// above, and keep a 30 s window of 100 ms slots near 45 KiB per canary.
pub const SLOT_BOUNDS_US: [u64; 15] = [
    5_000, 10_000, 25_000, 50_000, 100_000, 150_000, 250_000, 400_000, 500_000, 750_000, 1_000_000,
    1_500_000, 2_500_000, 5_000_000, 10_000_000,
];
const SLOT_BUCKETS: usize = SLOT_BOUNDS_US.len() + 1;

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    requests: u32,
    errors: u32,
    latency: [u32; SLOT_BUCKETS],
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    stable: Counts,
    canary: Counts,
}

/// One tenant's window.
#[derive(Debug)]
pub struct Window {
    slots: VecDeque<Slot>,
    capacity: usize,
    last: Option<(Snapshot, Snapshot)>,
}

/// Which coarse bucket each fine bucket falls in.
fn coarse_of(fine: usize) -> usize {
    match LATENCY_BOUNDS_US.get(fine) {
        Some(&bound) => SLOT_BOUNDS_US.partition_point(|&b| b < bound),
        None => SLOT_BUCKETS - 1,
    }
}

fn delta(now: &Snapshot, before: Option<&Snapshot>) -> Counts {
    let d = |a: u64, b: u64| u32::try_from(a.saturating_sub(b)).unwrap_or(u32::MAX);
    let zero = Snapshot {
        outcomes: Default::default(),
        latency: [0; LATENCY_BUCKETS],
        latency_sum_us: 0,
    };
    let before = before.unwrap_or(&zero);
    let mut c = Counts {
        requests: d(now.requests(), before.requests()),
        errors: d(now.errors(), before.errors()),
        latency: [0; SLOT_BUCKETS],
    };
    for i in 0..LATENCY_BUCKETS {
        c.latency[coarse_of(i)] += d(now.latency[i], before.latency[i]);
    }
    c
}

/// The `q`-quantile (0..1) of a coarse histogram, interpolated within its
/// bucket; the open last bucket answers its lower bound.
fn quantile(hist: &[u64; SLOT_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0);
    let mut seen = 0u64;
    for (i, &n) in hist.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if (seen + n) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { SLOT_BOUNDS_US[i - 1] as f64 };
            let Some(&upper) = SLOT_BOUNDS_US.get(i) else {
                return Some(lower / 1000.0);
            };
            let within = (rank - seen as f64) / n as f64;
            return Some((lower + (upper as f64 - lower) * within) / 1000.0);
        }
        seen += n;
    }
    None
}

impl Window {
    /// A window of `slots` slots (window length over tick length).
    pub fn new(slots: usize) -> Self {
        Window {
            slots: VecDeque::with_capacity(slots.max(1)),
            capacity: slots.max(1),
            last: None,
        }
    }

    /// Add a slot: what happened since the previous call, from cumulative
    /// snapshots. The first call only sets the baseline.
    pub fn push(&mut self, stable: Snapshot, canary: Snapshot) {
        if let Some((s, c)) = &self.last {
            let slot = Slot {
                stable: delta(&stable, Some(s)),
                canary: delta(&canary, Some(c)),
            };
            if self.slots.len() == self.capacity {
                self.slots.pop_front();
            }
            self.slots.push_back(slot);
        }
        self.last = Some((stable, canary));
    }

    /// Canary requests in the newest slot.
    pub fn newest_canary_requests(&self) -> u64 {
        self.slots.back().map_or(0, |s| u64::from(s.canary.requests))
    }

    /// Stable and canary over the newest slots holding `min_requests` canary
    /// requests (or all of them), latency at quantile `q` (0..1).
    pub fn samples(&self, min_requests: u64, q: f64) -> (Sample, Sample) {
        let mut first = None;
        self.scales(min_requests, q, |s, c| {
            first = Some((s, c));
            true
        });
        first.unwrap_or_default()
    }

    /// Call `judge` with stable and canary over growing stretches of the
    /// newest slots: the first holding `min_requests` canary requests, then
    /// twice, four times as many…, and the whole window last (or at once,
    /// when it holds fewer). Stops when `judge` returns true.
    ///
    /// The shortest stretch sees a fault within moments of its start; the
    /// longer ones have the numbers to tell a real regression from noise.
    pub fn scales(&self, min_requests: u64, q: f64, mut judge: impl FnMut(Sample, Sample) -> bool) {
        let mut sums = [(0u64, 0u64, [0u64; SLOT_BUCKETS]); 2];
        let mut next = min_requests.max(1);
        let sample = |(requests, errors, hist): &(u64, u64, [u64; SLOT_BUCKETS])| Sample {
            requests: *requests,
            errors: *errors,
            latency_ms: quantile(hist, q),
        };
        let last = self.slots.len();
        for (i, slot) in self.slots.iter().rev().enumerate() {
            for (sum, counts) in sums.iter_mut().zip([&slot.stable, &slot.canary]) {
                sum.0 += u64::from(counts.requests);
                sum.1 += u64::from(counts.errors);
                for (h, &n) in sum.2.iter_mut().zip(&counts.latency) {
                    *h += u64::from(n);
                }
            }
            let at_end = i + 1 == last;
            if sums[1].0 >= next || at_end {
                if judge(sample(&sums[0]), sample(&sums[1])) {
                    return;
                }
                while next <= sums[1].0 {
                    next = next.saturating_mul(2);
                }
            }
        }
        if last == 0 {
            judge(Sample::default(), Sample::default());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn scales_double_until_the_whole_window() {
        let (s, c) = (VersionStats::default(), VersionStats::default());
        let mut w = Window::new(100);
        w.push(s.snapshot(), c.snapshot());
        for _ in 0..100 {
            record(&c, 10, Outcome::Ok, 10);
            w.push(s.snapshot(), c.snapshot());
        }
        let mut seen = Vec::new();
        w.scales(100, 0.99, |_, canary| {
            seen.push(canary.requests);
            false
        });
        assert_eq!(seen, vec![100, 200, 400, 800, 1000]);
    }

    use super::*;
    use crate::metrics::{Outcome, VersionStats};
    use std::time::Duration;

    fn record(stats: &VersionStats, n: usize, outcome: Outcome, ms: u64) {
        for _ in 0..n {
            stats.record(outcome, Some(Duration::from_millis(ms)));
        }
    }

    #[test]
    fn window_reads_the_newest_slots_holding_min_requests() {
        let (s, c) = (VersionStats::default(), VersionStats::default());
        let mut w = Window::new(300);
        w.push(s.snapshot(), c.snapshot());
        // Ten healthy slots of 20 canary requests each...
        for _ in 0..10 {
            record(&s, 80, Outcome::Ok, 20);
            record(&c, 20, Outcome::Ok, 20);
            w.push(s.snapshot(), c.snapshot());
        }
        // ...then two failing ones.
        for _ in 0..2 {
            record(&s, 80, Outcome::Ok, 20);
            record(&c, 14, Outcome::Ok, 20);
            record(&c, 6, Outcome::ServerError, 20);
            w.push(s.snapshot(), c.snapshot());
        }
        let (stable, canary) = w.samples(40, 0.99);
        assert_eq!((canary.requests, canary.errors), (40, 12));
        assert_eq!((stable.requests, stable.errors), (160, 0));
        // All of it when the threshold is never reached.
        let (stable, canary) = w.samples(10_000, 0.99);
        assert_eq!((canary.requests, canary.errors, stable.requests), (240, 12, 960));
    }

    #[test]
    fn old_slots_fall_out_and_client_aborts_are_not_judged() {
        let (s, c) = (VersionStats::default(), VersionStats::default());
        let mut w = Window::new(3);
        w.push(s.snapshot(), c.snapshot());
        record(&c, 50, Outcome::ServerError, 10);
        w.push(s.snapshot(), c.snapshot());
        for _ in 0..3 {
            record(&c, 10, Outcome::Ok, 10);
            record(&c, 10, Outcome::ClientAbort, 10);
            w.push(s.snapshot(), c.snapshot());
        }
        let (_, canary) = w.samples(1_000, 0.99);
        assert_eq!((canary.requests, canary.errors), (30, 0));
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let (s, c) = (VersionStats::default(), VersionStats::default());
        let mut w = Window::new(10);
        w.push(s.snapshot(), c.snapshot());
        record(&c, 98, Outcome::Ok, 3);
        record(&c, 2, Outcome::Ok, 900);
        w.push(s.snapshot(), c.snapshot());
        let (stable, canary) = w.samples(1, 0.99);
        let p99 = canary.latency_ms.unwrap();
        assert!((750.0..=1000.0).contains(&p99), "{p99}");
        let (_, p50) = w.samples(1, 0.5);
        assert!(p50.latency_ms.unwrap() <= 5.0);
        assert_eq!(stable.latency_ms, None);
    }
}
