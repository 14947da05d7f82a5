use super::*;

fn sample(requests: u64, errors: u64, latency_ms: f64) -> Sample {
    Sample::uniform(requests, errors, latency_ms)
}

fn relative() -> Thresholds {
    Thresholds {
        min_requests: 50,
        max_error_rate_percent: None,
        max_error_rate_increase_percent: Some(5.0),
        max_latency_ms: None,
        max_latency_ratio: Some(2.0),
        min_failing_clients: 5,
        max_client_failure_share: 0.25,
    }
}

fn absolute() -> Thresholds {
    Thresholds {
        min_requests: 50,
        max_error_rate_percent: Some(10.0),
        max_error_rate_increase_percent: None,
        max_latency_ms: Some(1000.0),
        max_latency_ratio: None,
        min_failing_clients: 5,
        max_client_failure_share: 0.25,
    }
}

fn both() -> Thresholds {
    Thresholds {
        max_error_rate_percent: Some(10.0),
        max_latency_ms: Some(1000.0),
        ..relative()
    }
}

fn check_of(v: &Verdict) -> Option<Check> {
    match v {
        Verdict::Breach(b) => Some(b.check),
        _ => None,
    }
}

#[test]
fn every_verdict_of_the_table() {
    use Check::*;
    // (name, thresholds, stable, canary, expected verdict label, expected check)
    type Case = (
        &'static str,
        Thresholds,
        Sample,
        Sample,
        &'static str,
        Option<Check>,
    );
    let cases: Vec<Case> = vec![
        (
            "no canary traffic",
            relative(),
            sample(1000, 0, 50.0),
            sample(0, 0, 0.0),
            "inconclusive",
            None,
        ),
        (
            "canary under min_requests, all failing",
            relative(),
            sample(1000, 0, 50.0),
            sample(49, 49, 50.0),
            "inconclusive",
            None,
        ),
        (
            "absolute: under min_requests",
            absolute(),
            sample(0, 0, 0.0),
            sample(10, 10, 5000.0),
            "inconclusive",
            None,
        ),
        (
            "relative: healthy",
            relative(),
            sample(1000, 10, 100.0),
            sample(100, 2, 120.0),
            "healthy",
            None,
        ),
        (
            "relative: 30 % errors vs 1 %",
            relative(),
            sample(1000, 10, 100.0),
            sample(100, 30, 100.0),
            "breach",
            Some(ErrorRateIncrease),
        ),
        (
            "relative: increase exactly at the limit",
            relative(),
            sample(1000, 0, 100.0),
            sample(100, 5, 100.0),
            "healthy",
            None,
        ),
        (
            "relative: just over the limit, but not significant",
            relative(),
            sample(1000, 0, 100.0),
            sample(100, 6, 100.0),
            "healthy",
            None,
        ),
        (
            "relative: clearly over the limit",
            relative(),
            sample(1000, 0, 100.0),
            sample(400, 60, 100.0),
            "breach",
            Some(ErrorRateIncrease),
        ),
        (
            "relative: 30 % errors on 50 requests",
            relative(),
            sample(50, 0, 100.0),
            sample(50, 15, 100.0),
            "breach",
            Some(ErrorRateIncrease),
        ),
        (
            "relative: platform incident, noisy small samples",
            relative(),
            sample(50, 12, 100.0),
            sample(50, 18, 100.0),
            "healthy",
            None,
        ),
        (
            "relative: platform incident, both 30 %",
            relative(),
            sample(1000, 300, 100.0),
            sample(100, 30, 100.0),
            "healthy",
            None,
        ),
        (
            "relative: platform incident, both slow",
            relative(),
            sample(1000, 0, 900.0),
            sample(100, 0, 950.0),
            "healthy",
            None,
        ),
        (
            "relative: stable too quiet to compare",
            relative(),
            sample(10, 0, 100.0),
            sample(100, 50, 100.0),
            "inconclusive",
            None,
        ),
        (
            "relative: canary 2.5x slower",
            relative(),
            sample(1000, 0, 400.0),
            sample(100, 0, 1000.0),
            "breach",
            Some(LatencyRatio),
        ),
        (
            "relative: ratio high but canary fast",
            relative(),
            sample(1000, 0, 2.0),
            sample(100, 0, 30.0),
            "healthy",
            None,
        ),
        (
            "relative: canary faster",
            relative(),
            sample(1000, 0, 400.0),
            sample(100, 0, 100.0),
            "healthy",
            None,
        ),
        (
            "absolute: 30 % errors",
            absolute(),
            sample(0, 0, 0.0),
            sample(100, 30, 100.0),
            "breach",
            Some(ErrorRate),
        ),
        (
            "absolute: at 10 %",
            absolute(),
            sample(0, 0, 0.0),
            sample(100, 10, 100.0),
            "healthy",
            None,
        ),
        (
            "absolute: 14 % of 50, not significant",
            absolute(),
            sample(0, 0, 0.0),
            sample(50, 7, 100.0),
            "healthy",
            None,
        ),
        (
            "absolute: +800 ms",
            absolute(),
            sample(0, 0, 0.0),
            sample(100, 0, 1100.0),
            "breach",
            Some(Latency),
        ),
        (
            "absolute: platform incident still fails",
            absolute(),
            sample(1000, 300, 100.0),
            sample(100, 30, 100.0),
            "breach",
            Some(ErrorRate),
        ),
        (
            "both: absolute wins first",
            both(),
            sample(1000, 0, 100.0),
            sample(100, 40, 100.0),
            "breach",
            Some(ErrorRate),
        ),
        (
            "both: quiet stable, absolute still judges",
            both(),
            sample(0, 0, 0.0),
            sample(100, 1, 100.0),
            "healthy",
            None,
        ),
        (
            "no latencies recorded (WebSockets only)",
            relative(),
            sample(1000, 0, 0.0),
            Sample {
                requests: 100,
                errors: 0,
                latency_ms: None,
                histogram: Default::default(),
                failing_clients: 0,
            },
            "healthy",
            None,
        ),
    ];
    for (name, t, stable, canary, label, check) in cases {
        let v = evaluate(&t, 0.99, &stable, &canary);
        assert_eq!((v.as_str(), check_of(&v)), (label, check), "{name}: {v:?}");
    }
}

#[test]
fn a_breach_carries_the_figures_that_caused_it() {
    let v = evaluate(
        &relative(),
        0.99,
        &sample(1000, 10, 100.0),
        &sample(200, 60, 100.0),
    );
    let Verdict::Breach(b) = v else { panic!("{v:?}") };
    assert_eq!(b.check, Check::ErrorRateIncrease);
    assert!((b.observed - 29.0).abs() < 1e-9, "{}", b.observed);
    assert_eq!(b.limit, 5.0);
    assert_eq!((b.canary.requests, b.canary.errors), (200, 60));
    assert_eq!((b.stable.requests, b.stable.errors), (1000, 10));
}

/// Two versions failing alike must not look different: over many random
/// samples of 50 requests each at 30 %, the relative check almost never fires.
#[test]
fn equal_error_rates_rarely_breach_a_relative_check() {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut draw = |n: u64| (0..n).filter(|_| rng.f64() < 0.3).count() as u64;
    let trials = 20_000;
    let breaches = (0..trials)
        .filter(|_| {
            let (s, c) = (draw(50), draw(50));
            matches!(
                evaluate(&relative(), 0.99, &sample(50, s, 10.0), &sample(50, c, 10.0)),
                Verdict::Breach(_)
            )
        })
        .count();
    assert!(
        breaches * 1000 < trials * 3,
        "{breaches} of {trials} equal samples breached"
    );
}

/// One slow request among a few is a p99 of seconds, not a regression: the
/// latency checks look at the share of slow requests (this rolled a
/// healthy canary back on a loaded CI machine before).
#[test]
fn one_slow_request_in_a_small_sample_is_not_a_latency_breach() {
    let mut canary = sample(16, 0, 8.0);
    canary.histogram[0] = 15;
    canary.histogram[5] = 1; // one request between 100 and 150 ms
    canary.latency_ms = Some(140.0);
    let stable = sample(3000, 0, 9.0);
    let t = Thresholds {
        min_requests: 10,
        ..relative()
    };
    assert_eq!(evaluate(&t, 0.99, &stable, &canary), Verdict::Healthy);
    // Whereas all of them slow is.
    let slow = sample(16, 0, 900.0);
    assert!(
        matches!(evaluate(&t, 0.99, &stable, &slow), Verdict::Breach(b) if b.check == Check::LatencyRatio)
    );
}

fn groups(counts: &[u64]) -> [u64; CLIENT_GROUPS] {
    let mut g = [0; CLIENT_GROUPS];
    g[..counts.len()].copy_from_slice(counts);
    g
}

#[test]
fn no_client_group_counts_for_more_than_its_share() {
    let table: &[(&[u64], f64, u64, u64)] = &[
        // (failures by group, share, counted, groups)
        (&[], 0.25, 0, 0),
        (&[800], 0.25, 0, 0),
        (&[400, 400], 0.25, 0, 0),
        (&[100, 100, 100], 0.25, 0, 0),
        (&[10, 10, 10, 10], 0.25, 40, 4),
        (&[1, 1, 1, 1, 100], 0.25, 5, 5),
        (&[5, 5, 5, 5, 5, 5, 5, 5, 5, 5], 0.25, 50, 10),
        (&[800], 1.0, 800, 1),
        (&[3, 9, 1], 1.0, 13, 3),
    ];
    for &(counts, share, counted, n) in table {
        let s = spread(&groups(counts), share);
        assert_eq!(s.total, counts.iter().sum::<u64>(), "{counts:?}");
        assert_eq!((s.counted, s.groups), (counted, n), "{counts:?} at {share}");
    }
    // Whatever the counts, no group is over its share of what is counted.
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..2_000 {
        let counts: Vec<u64> = (0..rng.usize(1..CLIENT_GROUPS))
            .map(|_| rng.u64(0..500))
            .collect();
        let share = [0.1, 0.25, 0.5][rng.usize(0..3)];
        let s = spread(&groups(&counts), share);
        assert!(s.counted <= s.total);
        if s.counted > 0 {
            // The cap is what one group keeps: the most any group counts.
            let cap = share * s.counted as f64 + 1.0;
            let kept: f64 = counts.iter().map(|&f| (f as f64).min(cap)).sum();
            assert!(kept + 1.0 >= s.counted as f64, "{counts:?} {share} {s:?}");
        }
        // Equal counts over at least 1/share groups count in full.
        let n = (1.0 / share).ceil() as usize + rng.usize(0..5);
        let f = rng.u64(1..100);
        let even = spread(&groups(&vec![f; n.min(CLIENT_GROUPS)]), share);
        assert_eq!(even.counted, even.total);
    }
}

#[test]
fn error_rate_breaches_need_failures_from_enough_clients() {
    // 40 % errors on the canary, stable clean: a breach of both checks,
    // unless the failures come from fewer groups than the policy wants.
    let stable = sample(1000, 0, 20.0);
    for t in [relative(), absolute()] {
        let decisive = |v: &Verdict| match v {
            Verdict::Breach(b) => Some(b.decisive),
            _ => None,
        };
        let mut canary = sample(200, 80, 20.0);
        canary.failing_clients = 5;
        assert_eq!(
            decisive(&evaluate(&t, 0.99, &stable, &canary)),
            Some(true),
            "{t:?}"
        );
        canary.failing_clients = 4;
        assert_eq!(
            decisive(&evaluate(&t, 0.99, &stable, &canary)),
            Some(false),
            "four clients are not enough to roll back: {t:?}"
        );
        let one = Thresholds {
            min_failing_clients: 1,
            ..t.clone()
        };
        canary.failing_clients = 1;
        assert_eq!(decisive(&evaluate(&one, 0.99, &stable, &canary)), Some(true));
    }
    // Latency is no failure count: a slow canary is slow for whoever asks.
    let mut slow = sample(200, 0, 3_000.0);
    slow.failing_clients = 0;
    assert_eq!(
        check_of(&evaluate(&absolute(), 0.99, &stable, &slow)),
        Some(Check::Latency)
    );
}
