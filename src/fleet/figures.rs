//! A replica's traffic figures as it publishes them to the fleet: per tick,
//! for each tenant with a judged canary whose counters moved, what each
//! version did since the previous tick (requests by outcome, the latency
//! buckets, failures by client group), as the difference of two
//! [`Snapshot`]s. The leader adds every replica's differences into one
//! cumulative snapshot per tenant and version and feeds the analysis window
//! exactly as a single process feeds its own counters.
//!
//! Differences, not totals, because they are sparse: a tenant with a few
//! requests in a tick touches two or three of the ~60 counters, and only
//! those are written (`index:value` pairs), which keeps 100 busy canaries
//! on three replicas far under a megabyte a second (`docs/fleet.md`).
//! A difference Redis does not take is dropped, not carried over: figures
//! are about now, and an outage's traffic in one entry would look like a
//! burst.

use std::fmt::Write as _;

use crate::metrics::{Outcome, Snapshot, CLIENT_GROUPS, LATENCY_BUCKETS};

const OUTCOMES: usize = Outcome::COUNT;
/// Where each array starts in the flat index space of the encoding.
const LATENCY_AT: usize = OUTCOMES;
const GROUPS_AT: usize = LATENCY_AT + LATENCY_BUCKETS;
const SUM_AT: usize = GROUPS_AT + CLIENT_GROUPS;
const FIELDS: usize = SUM_AT + 1;

/// The flat counter `i` of `s` minus that of `old` (client groups wrap at
/// 2^32, as they are kept).
fn diff(s: &Snapshot, old: &Snapshot, i: usize) -> u64 {
    match i {
        i if i < LATENCY_AT => s.outcomes[i].wrapping_sub(old.outcomes[i]),
        i if i < GROUPS_AT => s.latency[i - LATENCY_AT].wrapping_sub(old.latency[i - LATENCY_AT]),
        i if i < SUM_AT => {
            u64::from(s.failing_clients[i - GROUPS_AT].wrapping_sub(old.failing_clients[i - GROUPS_AT]))
        }
        _ => s.latency_sum_us.wrapping_sub(old.latency_sum_us),
    }
}

/// Append `new - old` to `out` as `index:value` pairs joined by commas;
/// false when nothing moved (then nothing is appended).
pub fn encode(new: &Snapshot, old: &Snapshot, out: &mut String) -> bool {
    let mut any = false;
    for i in 0..FIELDS {
        let d = diff(new, old, i);
        if d == 0 {
            continue;
        }
        if any {
            out.push(',');
        }
        let _ = write!(out, "{i}:{d}");
        any = true;
    }
    any
}

/// Add a difference [`encode`] wrote to `sum`: all of it, or (malformed:
/// another version's encoding, a corrupted entry) none of it.
pub fn add(sum: &mut Snapshot, text: &str) -> Result<(), String> {
    let mut pairs = Vec::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let parsed = pair
            .split_once(':')
            .and_then(|(i, v)| Some((i.parse::<usize>().ok()?, v.parse::<u64>().ok()?)));
        match parsed {
            Some((i, v)) if i < FIELDS => pairs.push((i, v)),
            Some((i, _)) => return Err(format!("unknown figure index {i}")),
            None => return Err(format!("malformed figure `{pair}`")),
        }
    }
    for (i, v) in pairs {
        match i {
            i if i < LATENCY_AT => sum.outcomes[i] = sum.outcomes[i].wrapping_add(v),
            i if i < GROUPS_AT => sum.latency[i - LATENCY_AT] = sum.latency[i - LATENCY_AT].wrapping_add(v),
            i if i < SUM_AT => {
                let g = &mut sum.failing_clients[i - GROUPS_AT];
                *g = g.wrapping_add(v as u32);
            }
            _ => sum.latency_sum_us = sum.latency_sum_us.wrapping_add(v),
        }
    }
    Ok(())
}

/// One tenant's figures of one tick: `stable/canary`.
pub fn encode_tenant(new: (&Snapshot, &Snapshot), old: (&Snapshot, &Snapshot), out: &mut String) -> bool {
    let s = encode(new.0, old.0, out);
    out.push('/');
    let c = encode(new.1, old.1, out);
    s || c
}

/// Add one tenant's `stable/canary` figures to its sums (both or none).
pub fn add_tenant(sums: &mut (Snapshot, Snapshot), text: &str) -> Result<(), String> {
    let (s, c) = text.split_once('/').ok_or("no `/` between stable and canary")?;
    let mut stable = sums.0.clone();
    add(&mut stable, s)?;
    add(&mut sums.1, c)?;
    sums.0 = stable;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::VersionStats;
    use std::time::Duration;

    #[test]
    fn the_sum_of_published_differences_is_the_sum_of_the_counters() {
        // Three replicas' counters, published tick by tick; the leader's sum
        // must equal what one process serving all of it would have counted.
        let replicas: Vec<VersionStats> = (0..3).map(|_| VersionStats::default()).collect();
        let together = VersionStats::default();
        let mut published: Vec<Snapshot> = replicas.iter().map(|r| r.snapshot()).collect();
        let mut sum = Snapshot::default();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..50 {
            for r in &replicas {
                for _ in 0..rng.usize(0..20) {
                    let outcome = if rng.u8(0..10) == 0 {
                        Outcome::ServerError
                    } else {
                        Outcome::Ok
                    };
                    let ms = rng.u64(1..3_000);
                    let client = rng.u16(..);
                    r.record(outcome, Some(Duration::from_millis(ms)), client);
                    together.record(outcome, Some(Duration::from_millis(ms)), client);
                }
            }
            for (r, old) in replicas.iter().zip(published.iter_mut()) {
                let now = r.snapshot();
                let mut text = String::new();
                if encode(&now, old, &mut text) {
                    add(&mut sum, &text).unwrap();
                }
                *old = now;
            }
        }
        assert_eq!(sum, together.snapshot());
    }

    #[test]
    fn an_idle_tick_publishes_nothing_and_garbage_is_refused() {
        let s = VersionStats::default().snapshot();
        let mut text = String::new();
        assert!(!encode_tenant((&s, &s), (&s, &s), &mut text));
        assert_eq!(text, "/");
        let mut sums = (Snapshot::default(), Snapshot::default());
        assert!(add_tenant(&mut sums, "0:3,x/").is_err());
        assert!(add_tenant(&mut sums, "0:3/1:x").is_err());
        assert_eq!(
            sums,
            (Snapshot::default(), Snapshot::default()),
            "a malformed entry adds nothing"
        );
        assert!(add_tenant(&mut sums, "9999:1/").is_err());
        assert!(add_tenant(&mut sums, "no slash").is_err());
    }
}
