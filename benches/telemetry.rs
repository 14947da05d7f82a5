//! Telemetry costs: recording one request on the data plane, and one
//! analysis tick over 10 000 canary tenants on the control plane.

#![allow(missing_docs, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use fledge::analysis::Analyzer;
use fledge::config;
use fledge::metrics::{Outcome, VersionStats};
use fledge::routing::{CookieKey, RouteTable, Version};

fn record(c: &mut Criterion) {
    let stats = VersionStats::default();
    let mut group = c.benchmark_group("record");
    group.bench_function("ok_with_latency", |b| {
        b.iter(|| {
            stats.record(
                black_box(Outcome::Ok),
                Some(black_box(Duration::from_micros(1_800))),
                0,
            )
        })
    });
    group.bench_function("websocket_without_latency", |b| {
        b.iter(|| stats.record(black_box(Outcome::Ok), None, 0))
    });
    group.finish();
}

fn tick(c: &mut Criterion) {
    let mut text = String::from(
        "listen: \"127.0.0.1:8080\"\npools:\n  a: { workers: [\"127.0.0.1:1\"] }\n  b: { workers: [\"127.0.0.1:2\"] }\ntenants:\n",
    );
    for t in 0..10_000 {
        let _ = writeln!(
            text,
            "  t{t}:\n    hosts: [\"t{t}.example.com\"]\n    stable: a\n    canary: b\n    canary_weight: 20"
        );
    }
    let config = config::parse(&text, "bench.yaml").unwrap();
    let table = RouteTable::build(
        &config,
        Arc::new(CookieKey::from_secret(b"bench secret, 16+ bytes")),
        None,
        &std::collections::BTreeMap::<String, fledge::analysis::rollout::Rollout>::new(),
    );
    let mut analyzer = Analyzer::default();
    // Traffic on every tenant between ticks, so every tick evaluates.
    let traffic = |table: &RouteTable| {
        for t in table.tenants() {
            t.stats()
                .version(Version::Stable)
                .record(Outcome::Ok, Some(Duration::from_millis(20)), 0);
            t.stats()
                .version(Version::Canary)
                .record(Outcome::Ok, Some(Duration::from_millis(25)), 0);
        }
    };
    for _ in 0..50 {
        traffic(&table);
        analyzer.tick(&table, true);
    }
    let mut group = c.benchmark_group("analysis");
    group.sample_size(20);
    group.bench_function("tick_10000_canary_tenants", |b| {
        b.iter_batched(
            || traffic(&table),
            |()| black_box(analyzer.tick(&table, true).len()),
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, record, tick);
criterion_main!(benches);
