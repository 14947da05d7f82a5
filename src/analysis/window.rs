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

use super::verdict::{self, Sample, Thresholds, Verdict};
use crate::metrics::{Snapshot, CLIENT_GROUPS, LATENCY_BOUNDS_US, LATENCY_BUCKETS};

/// Upper bounds (µs) of the coarser histogram kept per slot: 16 buckets are
/// enough to read a p95/p99 for thresholds in the tens of milliseconds and
/// above, and keep a 30 s window of 100 ms slots near 45 KiB per canary.
pub const SLOT_BOUNDS_US: [u64; 15] = [
    5_000, 10_000, 25_000, 50_000, 100_000, 150_000, 250_000, 400_000, 500_000, 750_000, 1_000_000,
    1_500_000, 2_500_000, 5_000_000, 10_000_000,
];
/// Buckets of the coarse histogram.
pub const SLOT_BUCKETS: usize = SLOT_BOUNDS_US.len() + 1;

/// Which coarse bucket each fine bucket falls in, computed once.
const COARSE_OF: [usize; LATENCY_BUCKETS] = {
    let mut map = [SLOT_BUCKETS - 1; LATENCY_BUCKETS];
    let mut fine = 0;
    while fine < LATENCY_BOUNDS_US.len() {
        let mut coarse = 0;
        while coarse < SLOT_BOUNDS_US.len() && SLOT_BOUNDS_US[coarse] < LATENCY_BOUNDS_US[fine] {
            coarse += 1;
        }
        map[fine] = coarse;
        fine += 1;
    }
    map
};

/// One version's counters at one tick, coarsened, as cumulative totals
/// modulo 2^32: the difference of two of them is exact as long as a
/// window holds fewer than four billion requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    requests: u32,
    errors: u32,
    latency: [u32; SLOT_BUCKETS],
    /// Failures by client group (`metrics::CLIENT_GROUPS`).
    failing_clients: [u32; CLIENT_GROUPS],
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    tick: u64,
    stable: Totals,
    canary: Totals,
}

/// Ticks kept at full resolution: the last two seconds, where a sudden
/// failure shows first.
const FINE_TICKS: usize = 20;
/// Older checkpoints are thinned to one in this many ticks (one a second):
/// a 30 s window is then ~50 checkpoints (7 KiB), not 300 (43 KiB), which
/// is what lets 10 000 tenants run canaries at once.
const COARSE_EVERY: u64 = 10;

/// One tenant's window.
///
/// Each slot holds the cumulative totals at its tick, so the traffic of any
/// stretch of newest slots is one subtraction, and the stretch holding
/// `min_requests` canary requests is found by binary search: a tick costs
/// the same for a busy tenant as for a quiet one.
#[derive(Debug)]
pub struct Window {
    slots: VecDeque<Slot>,
    span: u64,
    tick: u64,
    fine: usize,
    coarse_every: u64,
}

impl Totals {
    fn of(s: &Snapshot) -> Self {
        let mut t = Totals {
            // Wrapping on purpose: see the type's doc.
            requests: s.requests() as u32,
            errors: s.errors() as u32,
            latency: [0; SLOT_BUCKETS],
            failing_clients: s.failing_clients,
        };
        for (fine, &n) in s.latency.iter().enumerate() {
            t.latency[COARSE_OF[fine]] = t.latency[COARSE_OF[fine]].wrapping_add(n as u32);
        }
        t
    }

    fn minus(&self, older: &Totals) -> Sample64 {
        let mut latency = [0u64; SLOT_BUCKETS];
        for (i, l) in latency.iter_mut().enumerate() {
            *l = u64::from(self.latency[i].wrapping_sub(older.latency[i]));
        }
        Sample64 {
            requests: u64::from(self.requests.wrapping_sub(older.requests)),
            errors: u64::from(self.errors.wrapping_sub(older.errors)),
            latency,
            failing_clients: std::array::from_fn(|i| {
                u64::from(self.failing_clients[i].wrapping_sub(older.failing_clients[i]))
            }),
        }
    }
}

struct Sample64 {
    requests: u64,
    errors: u64,
    latency: [u64; SLOT_BUCKETS],
    failing_clients: [u64; CLIENT_GROUPS],
}

impl Sample64 {
    /// The sample the verdict judges: no client group counts for more than
    /// `max_share` of the failures (the excess is taken out of the errors
    /// and of the requests, as if never sent), and the groups left failing
    /// are counted.
    fn sample(&self, q: f64, max_share: f64) -> Sample {
        let spread = verdict::spread(&self.failing_clients, max_share);
        // The groups are counted at record time, the totals at the tick:
        // a failure between the two reads is in one and not yet the other.
        let excess = (spread.total - spread.counted).min(self.errors);
        Sample {
            requests: self.requests.saturating_sub(excess),
            errors: self.errors - excess,
            latency_ms: quantile(&self.latency, q),
            histogram: self.latency,
            failing_clients: spread.groups,
        }
    }
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
    /// A window spanning `slots` ticks: full resolution for the newest
    /// ticks, one checkpoint a second beyond.
    pub fn new(slots: usize) -> Self {
        Self::with_resolution(slots, FINE_TICKS, COARSE_EVERY)
    }

    /// A window keeping the newest `fine` ticks, then one tick in
    /// `coarse_every`.
    pub fn with_resolution(slots: usize, fine: usize, coarse_every: u64) -> Self {
        Window {
            slots: VecDeque::new(),
            span: slots.max(1) as u64,
            tick: 0,
            fine,
            coarse_every: coarse_every.max(1),
        }
    }

    /// Record the cumulative counters at this tick.
    ///
    /// A tick with no new request adds no checkpoint: the newest one
    /// already holds these totals, and every stretch is a difference of
    /// totals, so nothing a verdict sees changes. An idle tenant's window
    /// thus shrinks to one checkpoint, which is what keeps 10 000 mostly
    /// quiet canaries in a few MiB.
    pub fn push(&mut self, stable: &Snapshot, canary: &Snapshot) {
        self.tick += 1;
        let (stable, canary) = (Totals::of(stable), Totals::of(canary));
        let unchanged = self
            .slots
            .back()
            .is_some_and(|s| s.stable == stable && s.canary == canary);
        if !unchanged {
            if self.slots.len() == self.slots.capacity() && self.slots.len() < 4 {
                // A quiet canary keeps a checkpoint or two: room for what it
                // keeps (a VecDeque's growth makes room for four at once,
                // 600 bytes per tenant).
                self.slots.reserve_exact(1);
            }
            self.slots.push_back(Slot {
                tick: self.tick,
                stable,
                canary,
            });
            // The checkpoint leaving the fine stretch survives only as the
            // last of its coarse period (by period, not by exact tick: with
            // quiet ticks skipped, a tenant's checkpoints may never fall on
            // a multiple, and the baseline would then never move).
            let len = self.slots.len();
            if len > self.fine.saturating_add(1) {
                let leaving = len - 1 - self.fine;
                let period = |i: usize| self.slots[i].tick / self.coarse_every;
                if leaving > 0 && period(leaving) == period(leaving + 1) {
                    self.slots.remove(leaving);
                }
            }
        }
        // The front is the baseline: the newest checkpoint at or before the
        // window's start.
        let start = self.tick.saturating_sub(self.span);
        while self.slots.len() > 1 && self.slots[1].tick <= start {
            self.slots.pop_front();
        }
        // A window that was busy and is now quiet gives its memory back.
        if self.slots.capacity() > 4 * self.slots.len().max(8) {
            self.slots.shrink_to_fit();
        }
    }

    /// Canary requests since the previous tick.
    pub fn newest_canary_requests(&self) -> u64 {
        let n = self.slots.len();
        // No checkpoint this tick: nothing new.
        if n < 2 || self.slots[n - 1].tick != self.tick {
            return 0;
        }
        u64::from(
            self.slots[n - 1]
                .canary
                .requests
                .wrapping_sub(self.slots[n - 2].canary.requests),
        )
    }

    /// Stable and canary over the newest slots holding `min_requests` canary
    /// requests (or all of them), latency at quantile `q` (0..1).
    /// Errors as counted, every client in full.
    pub fn samples(&self, min_requests: u64, q: f64) -> (Sample, Sample) {
        let mut first = None;
        self.scales(min_requests, q, 1.0, |s, c, _| {
            first = Some((s, c));
            true
        });
        first.unwrap_or_default()
    }

    /// The verdict on the canary: the first decisive breach at any scale of
    /// [`Window::scales`] wins; else the first breach not (yet) from enough
    /// clients (`Breach::decisive` false), judged with every canary failure
    /// in full; else the first conclusive verdict; else inconclusive.
    ///
    /// The shortest stretch holding `min_requests` canary requests may hold
    /// fewer stable ones (sticky clients split unevenly: at a 50 % step, 30
    /// clients can be 18 on the canary and 12 on stable). Relative checks
    /// skip it then, and the longer stretches judge; stopping at the
    /// shortest left such a canary inconclusive for as long as the split
    /// lasted, and never promoted.
    pub fn verdict(&self, t: &Thresholds, q: f64) -> Verdict {
        let mut out = Verdict::Inconclusive;
        let mut suspect: Option<Verdict> = None;
        self.scales(
            t.min_requests,
            q,
            t.max_client_failure_share,
            |stable, canary, canary_raw| {
                let v = verdict::evaluate(t, q, &stable, &canary);
                if matches!(&v, Verdict::Breach(b) if b.decisive) {
                    out = v;
                    return true;
                }
                // Not (yet) from enough clients: a fault's first moments, or a
                // few clients failing. Judged on every failure the canary had
                // (stable's few-client failures still left out, so they hide
                // nothing), it is a breach to count towards a streak, never to
                // roll back by itself (`Breach::decisive`).
                if suspect.is_none() {
                    let raw = match v {
                        Verdict::Breach(_) => v.clone(),
                        _ => verdict::evaluate(t, q, &stable, &canary_raw),
                    };
                    if let Verdict::Breach(mut b) = raw {
                        b.decisive = false;
                        suspect = Some(Verdict::Breach(b));
                    }
                }
                if matches!(out, Verdict::Inconclusive) && !matches!(v, Verdict::Breach(_)) {
                    out = v;
                }
                false
            },
        );
        if matches!(&out, Verdict::Breach(b) if b.decisive) {
            return out;
        }
        suspect.unwrap_or(out)
    }

    /// Call `judge` with stable, canary, and the canary with every client in
    /// full, over growing stretches of the newest slots: the first holding `min_requests` canary requests, then
    /// twice, four times as many…, and the whole window last (or at once,
    /// when it holds fewer). Stops when `judge` returns true. No client
    /// group counts for more than `max_share` of a stretch's failures
    /// (1: no limit).
    ///
    /// The shortest stretch sees a fault within moments of its start; the
    /// longer ones have the numbers to tell a real regression from noise.
    pub fn scales(
        &self,
        min_requests: u64,
        q: f64,
        max_share: f64,
        mut judge: impl FnMut(Sample, Sample, Sample) -> bool,
    ) {
        let Some(newest) = self.slots.back() else {
            judge(Sample::default(), Sample::default(), Sample::default());
            return;
        };
        let oldest = 0usize;
        let canary_since =
            |i: usize| u64::from(newest.canary.requests.wrapping_sub(self.slots[i].canary.requests));
        let last = self.slots.len() - 1;
        let mut want = min_requests.max(1);
        loop {
            // The newest baseline whose stretch holds `want` canary requests.
            // Gallop back from the newest slot (a busy tenant's stretch is
            // short, and the slots it touches are adjacent in memory), then
            // bisect the bracket.
            let whole = canary_since(oldest) < want;
            let start = if whole {
                oldest
            } else {
                let mut step = 1usize;
                let mut hi = last;
                let mut lo = last.saturating_sub(step);
                while lo > oldest && canary_since(lo) < want {
                    hi = lo;
                    step *= 2;
                    lo = last.saturating_sub(step).max(oldest);
                }
                // Now canary_since(lo) >= want (the oldest holds enough).
                while lo < hi {
                    let mid = (lo + hi).div_ceil(2);
                    if canary_since(mid) >= want {
                        lo = mid;
                    } else {
                        hi = mid - 1;
                    }
                }
                lo
            };
            let base = &self.slots[start];
            let (s, c) = (
                newest.stable.minus(&base.stable),
                newest.canary.minus(&base.canary),
            );
            let got = c.requests;
            let canary = (c.sample(q, max_share), c.sample(q, 1.0));
            if judge(s.sample(q, max_share), canary.0, canary.1) || whole || start == oldest {
                return;
            }
            while want <= got {
                want = want.saturating_mul(2);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_shortest_stretch_is_the_one_a_linear_scan_finds() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..200 {
            let (s, c) = (VersionStats::default(), VersionStats::default());
            let mut w = Window::with_resolution(50, usize::MAX, 1);
            w.push(&s.snapshot(), &c.snapshot());
            let mut per_slot = Vec::new();
            for _ in 0..rng.usize(1..80) {
                let n = rng.usize(0..6);
                record(&c, n, Outcome::Ok, 10);
                per_slot.push(n as u64);
                w.push(&s.snapshot(), &c.snapshot());
            }
            let kept = &per_slot[per_slot.len().saturating_sub(50)..];
            let min = rng.u64(1..60);
            let mut sum = 0;
            for n in kept.iter().rev() {
                sum += n;
                if sum >= min {
                    break;
                }
            }
            assert_eq!(w.samples(min, 0.99).1.requests, sum, "min {min}, slots {kept:?}");
        }
    }

    #[test]
    fn old_checkpoints_are_thinned_and_the_whole_window_stays_exact() {
        let (s, c) = (VersionStats::default(), VersionStats::default());
        let mut w = Window::new(300);
        w.push(&s.snapshot(), &c.snapshot());
        for i in 0..1_000u64 {
            record(
                &c,
                1,
                if i % 10 == 0 {
                    Outcome::ServerError
                } else {
                    Outcome::Ok
                },
                10,
            );
            w.push(&s.snapshot(), &c.snapshot());
            assert!(
                w.slots.len() <= FINE_TICKS + 300 / 10 + 2,
                "{} checkpoints",
                w.slots.len()
            );
        }
        // The whole window: 300 ticks of one request each, give or take the
        // coarse spacing at its old end.
        let (_, canary) = w.samples(u64::MAX, 0.99);
        assert!((300..310).contains(&canary.requests), "{}", canary.requests);
        assert!((30..32).contains(&canary.errors), "{}", canary.errors);
        // The newest ticks are exact.
        assert_eq!(w.samples(7, 0.99).1.requests, 7);
        assert_eq!(w.newest_canary_requests(), 1);
    }

    #[test]
    fn scales_double_until_the_whole_window() {
        let (s, c) = (VersionStats::default(), VersionStats::default());
        let mut w = Window::with_resolution(100, usize::MAX, 1);
        w.push(&s.snapshot(), &c.snapshot());
        for _ in 0..100 {
            record(&c, 10, Outcome::Ok, 10);
            w.push(&s.snapshot(), &c.snapshot());
        }
        let mut seen = Vec::new();
        w.scales(100, 0.99, 1.0, |_, canary, _| {
            seen.push(canary.requests);
            false
        });
        assert_eq!(seen, vec![100, 200, 400, 800, 1000]);
    }

    use super::*;
    use crate::metrics::{Outcome, VersionStats};
    use std::time::Duration;

    fn record(stats: &VersionStats, n: usize, outcome: Outcome, ms: u64) {
        // Every request from another client.
        for i in 0..n {
            stats.record(outcome, Some(Duration::from_millis(ms)), i as u16);
        }
    }

    #[test]
    fn window_reads_the_newest_slots_holding_min_requests() {
        let (s, c) = (VersionStats::default(), VersionStats::default());
        let mut w = Window::with_resolution(300, usize::MAX, 1);
        w.push(&s.snapshot(), &c.snapshot());
        // Ten healthy slots of 20 canary requests each...
        fill(&mut w, (&s, &c), 10, (80, 20, 0));
        // ...then two failing ones.
        fill(&mut w, (&s, &c), 2, (80, 14, 6));
        let (stable, canary) = w.samples(40, 0.99);
        assert_eq!((canary.requests, canary.errors), (40, 12));
        assert_eq!((stable.requests, stable.errors), (160, 0));
        // All of it when the threshold is never reached.
        let (stable, canary) = w.samples(10_000, 0.99);
        assert_eq!((canary.requests, canary.errors, stable.requests), (240, 12, 960));
    }

    /// Add `slots` slots to `w`, each with `stable` good stable requests,
    /// `canary` good canary requests and `failed` canary 500s.
    fn fill(
        w: &mut Window,
        (s, c): (&VersionStats, &VersionStats),
        slots: usize,
        (stable, canary, failed): (usize, usize, usize),
    ) {
        for _ in 0..slots {
            record(s, stable, Outcome::Ok, 20);
            record(c, canary, Outcome::Ok, 20);
            record(c, failed, Outcome::ServerError, 20);
            w.push(&s.snapshot(), &c.snapshot());
        }
    }

    fn relative(min_requests: u64) -> Thresholds {
        Thresholds {
            min_requests,
            max_error_rate_percent: None,
            max_error_rate_increase_percent: Some(5.0),
            max_latency_ms: None,
            max_latency_ratio: Some(2.0),
            min_failing_clients: 5,
            max_client_failure_share: 0.25,
        }
    }

    #[test]
    fn a_canary_with_more_clients_than_stable_is_judged_on_a_longer_stretch() {
        // Sticky clients split 2 : 1 at a 50 % step: each slot, 6 canary
        // requests and 3 stable ones. The shortest stretch holding 20 canary
        // requests holds 9–10 stable ones, too few for a relative check.
        let (s, c) = (VersionStats::default(), VersionStats::default());
        let mut w = Window::with_resolution(100, usize::MAX, 1);
        w.push(&s.snapshot(), &c.snapshot());
        fill(&mut w, (&s, &c), 30, (3, 6, 0));
        let t = relative(20);
        let (stable, _) = w.samples(20, 0.99);
        assert!(stable.requests < 20, "the shortest stretch: {stable:?}");
        assert_eq!(w.verdict(&t, 0.99), Verdict::Healthy);

        // A stable that gets no traffic at all still leaves it inconclusive.
        let quiet = VersionStats::default();
        let mut w = Window::with_resolution(100, usize::MAX, 1);
        w.push(&quiet.snapshot(), &c.snapshot());
        fill(&mut w, (&quiet, &c), 30, (0, 6, 0));
        assert_eq!(w.verdict(&t, 0.99), Verdict::Inconclusive);
    }

    #[test]
    fn a_breach_in_the_newest_slots_wins_over_a_healthy_longer_stretch() {
        let (s, c) = (VersionStats::default(), VersionStats::default());
        let mut w = Window::with_resolution(100, usize::MAX, 1);
        w.push(&s.snapshot(), &c.snapshot());
        fill(&mut w, (&s, &c), 50, (20, 20, 0));
        // The last two slots: half the canary's answers are 500s.
        fill(&mut w, (&s, &c), 2, (20, 10, 10));
        match w.verdict(&relative(40), 0.99) {
            Verdict::Breach(b) => assert_eq!(b.canary.requests, 40, "{b:?}"),
            other => panic!("expected a breach, got {other:?}"),
        }
    }

    #[test]
    fn old_slots_fall_out_and_client_aborts_are_not_judged() {
        let (s, c) = (VersionStats::default(), VersionStats::default());
        let mut w = Window::new(3);
        w.push(&s.snapshot(), &c.snapshot());
        record(&c, 50, Outcome::ServerError, 10);
        w.push(&s.snapshot(), &c.snapshot());
        for _ in 0..3 {
            record(&c, 10, Outcome::Ok, 10);
            record(&c, 10, Outcome::ClientAbort, 10);
            w.push(&s.snapshot(), &c.snapshot());
        }
        let (_, canary) = w.samples(1_000, 0.99);
        assert_eq!((canary.requests, canary.errors), (30, 0));
    }

    #[test]
    fn a_quiet_window_keeps_one_checkpoint_and_counts_the_same() {
        let (s, c) = (VersionStats::default(), VersionStats::default());
        let mut w = Window::new(300);
        w.push(&s.snapshot(), &c.snapshot());
        record(&c, 40, Outcome::Ok, 10);
        record(&c, 10, Outcome::ServerError, 10);
        w.push(&s.snapshot(), &c.snapshot());
        assert_eq!(w.newest_canary_requests(), 50);
        assert_eq!(w.slots.capacity(), 2, "room for the two checkpoints it holds");
        // 100 s without a request.
        for _ in 0..1_000 {
            w.push(&s.snapshot(), &c.snapshot());
        }
        assert_eq!(w.slots.len(), 1, "an idle window holds one checkpoint");
        assert_eq!(w.newest_canary_requests(), 0);
        record(&c, 20, Outcome::Ok, 10);
        w.push(&s.snapshot(), &c.snapshot());
        assert_eq!(w.newest_canary_requests(), 20);
        // The 50 of 100 s ago are out of the 30 s window.
        let (_, canary) = w.samples(1_000, 0.99);
        assert_eq!((canary.requests, canary.errors), (20, 0));
    }

    #[test]
    fn sparse_traffic_off_the_coarse_ticks_still_leaves_the_window() {
        let (s, c) = (VersionStats::default(), VersionStats::default());
        // A 30 s window; one request every tenth tick, never on a multiple
        // of ten.
        let mut w = Window::new(300);
        for tick in 1..=2_000u64 {
            if tick % 10 == 3 {
                record(&c, 1, Outcome::Ok, 10);
            }
            w.push(&s.snapshot(), &c.snapshot());
        }
        // 30 requests in the last 300 ticks, give or take the one coarse
        // period the baseline may lag.
        let (_, canary) = w.samples(1_000, 0.99);
        assert!((30..=31).contains(&canary.requests), "{}", canary.requests);
        assert!(w.slots.len() <= 60, "{} checkpoints", w.slots.len());
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let (s, c) = (VersionStats::default(), VersionStats::default());
        let mut w = Window::new(10);
        w.push(&s.snapshot(), &c.snapshot());
        record(&c, 98, Outcome::Ok, 3);
        record(&c, 2, Outcome::Ok, 900);
        w.push(&s.snapshot(), &c.snapshot());
        let (stable, canary) = w.samples(1, 0.99);
        let p99 = canary.latency_ms.unwrap();
        assert!((750.0..=1000.0).contains(&p99), "{p99}");
        let (_, p50) = w.samples(1, 0.5);
        assert!(p50.latency_ms.unwrap() <= 5.0);
        assert_eq!(stable.latency_ms, None);
    }
}

#[cfg(test)]
mod client_tests {
    use super::*;
    use crate::metrics::{Outcome, VersionStats};
    use std::time::Duration;

    fn relative() -> Thresholds {
        Thresholds {
            min_requests: 40,
            max_error_rate_percent: None,
            max_error_rate_increase_percent: Some(5.0),
            max_latency_ms: None,
            max_latency_ratio: None,
            min_failing_clients: 5,
            max_client_failure_share: 0.25,
        }
    }

    /// `n` requests of `outcome` from the clients `clients` (cycled).
    fn send(stats: &VersionStats, n: usize, outcome: Outcome, clients: &[u16]) {
        for i in 0..n {
            stats.record(
                outcome,
                Some(Duration::from_millis(20)),
                clients[i % clients.len()],
            );
        }
    }

    fn clients(range: std::ops::Range<u16>) -> Vec<u16> {
        range.collect()
    }

    /// Ten ticks: healthy traffic from 200 clients on both versions, plus
    /// `canary_failures` and `stable_failures` as (count, clients).
    fn judge(canary_failures: (usize, &[u16]), stable_failures: (usize, &[u16])) -> Verdict {
        let (s, c) = (VersionStats::default(), VersionStats::default());
        let mut w = Window::with_resolution(100, usize::MAX, 1);
        w.push(&s.snapshot(), &c.snapshot());
        for _ in 0..10 {
            send(&s, 40, Outcome::Ok, &clients(0..200));
            send(&c, 40, Outcome::Ok, &clients(0..200));
            send(
                &c,
                canary_failures.0 / 10,
                Outcome::ServerError,
                canary_failures.1,
            );
            send(
                &s,
                stable_failures.0 / 10,
                Outcome::ServerError,
                stable_failures.1,
            );
            w.push(&s.snapshot(), &c.snapshot());
        }
        w.verdict(&relative(), 0.99)
    }

    #[test]
    fn failures_from_a_handful_of_clients_roll_nothing_back() {
        let decisive = |v: &Verdict| matches!(v, Verdict::Breach(b) if b.decisive);
        // 800 failing canary requests from two clients: a third of the
        // canary's answers, a breach, but not one to roll back for.
        let few = judge((800, &clients(7..9)), (0, &clients(0..1)));
        assert!(matches!(&few, Verdict::Breach(b) if !b.decisive), "{few:?}");
        // The same from 50 clients is a decisive breach.
        assert!(decisive(&judge((800, &clients(0..50)), (0, &clients(0..1)))));
        // One client flooding stable with failures hides no bad canary.
        assert!(decisive(&judge((200, &clients(0..50)), (2_000, &clients(3..4)))));
        // Many clients failing on stable as on the canary: a platform
        // incident, no breach.
        assert_eq!(
            judge((200, &clients(0..50)), (200, &clients(0..50))),
            Verdict::Healthy
        );
    }
}
