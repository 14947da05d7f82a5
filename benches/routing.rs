//! Per-request routing cost: `RouteTable::decide` (host lookup + version
//! pick) across 1, 100 and 10 000 tenants, for the request shapes that
//! matter, and the control-plane cost of building a 10 000-tenant table.

#![allow(missing_docs, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use fledge::config;
use fledge::routing::{CookieKey, Decision, RequestView, RouteTable, VERSION_COOKIE};
use http::{HeaderMap, HeaderValue};

/// A config with `n` tenants, each with an exact host and a wildcard, a
/// canary at 20 %, on 8 shared pools.
fn config_text(n: usize) -> String {
    let mut s = String::from("listen: \"127.0.0.1:8080\"\npools:\n");
    for p in 0..8 {
        let _ = writeln!(s, "  p{p}: {{ workers: [\"127.0.0.1:{}\"] }}", 20_000 + p);
    }
    s.push_str("policies:\n  default:\n    override_from: [\"10.0.0.0/8\"]\ntenants:\n");
    for t in 0..n {
        let _ = writeln!(
            s,
            "  t{t}:\n    hosts: [\"t{t}.odoo.example.com\", \"*.t{t}.shops.example.com\"]\n    stable: p{}\n    canary: p{}\n    canary_weight: 20",
            t % 8,
            (t + 1) % 8
        );
    }
    s
}

fn table(n: usize) -> RouteTable {
    let config = config::parse(&config_text(n), "bench.yaml").expect("bench config is valid");
    RouteTable::build(
        &config,
        Arc::new(CookieKey::from_secret(b"bench secret of 16+ bytes")),
        None,
        &std::collections::BTreeMap::<String, fledge::analysis::rollout::Rollout>::new(),
    )
}

fn decide(c: &mut Criterion) {
    let ip: IpAddr = "192.0.2.10".parse().unwrap();
    let mut group = c.benchmark_group("decide");
    for n in [1usize, 100, 10_000] {
        let t = table(n);
        let host = format!("t{}.odoo.example.com", n / 2);
        let wildcard = format!("shop.t{}.shops.example.com", n / 2);

        let mut session = HeaderMap::new();
        session.insert(
            "cookie",
            HeaderValue::from_static("frontend_lang=en_US; session_id=8d3c1f0e5a9b4c2d7e6f"),
        );

        // A returning browser: session id plus the version cookie we gave it.
        let i = t.tenant_index(&host).unwrap();
        let pin = t.cookie_key().version_cookie(
            fledge::routing::Version::Stable,
            7_000,
            t.tenants()[i].epoch(),
            fledge::routing::unix_now(),
        );
        let mut returning = HeaderMap::new();
        returning.insert(
            "cookie",
            HeaderValue::from_str(&format!(
                "session_id=8d3c1f0e5a9b4c2d7e6f; {VERSION_COOKIE}={pin}"
            ))
            .unwrap(),
        );
        let empty = HeaderMap::new();

        for (name, host, headers) in [
            ("session_exact_host", host.as_str(), &session),
            ("returning_exact_host", host.as_str(), &returning),
            ("anonymous_wildcard_host", wildcard.as_str(), &empty),
            ("unknown_host", "nobody.example.net", &empty),
        ] {
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    let view = RequestView {
                        host: black_box(host),
                        headers: black_box(headers),
                        client_ip: Some(ip),
                        now: None,
                    };
                    let d = t.decide(&view);
                    black_box(matches!(d, Decision::Route(_)))
                })
            });
        }
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let config = config::parse(&config_text(10_000), "bench.yaml").expect("bench config is valid");
    let key = Arc::new(CookieKey::from_secret(b"bench secret of 16+ bytes"));
    let mut group = c.benchmark_group("control");
    group.sample_size(10);
    group.bench_function("route_table_build_10000_tenants", |b| {
        b.iter(|| {
            black_box(RouteTable::build(
                &config,
                Arc::clone(&key),
                None,
                &std::collections::BTreeMap::<String, fledge::analysis::rollout::Rollout>::new(),
            ))
        })
    });
    let text = config_text(10_000);
    group.bench_function("config_parse_10000_tenants", |b| {
        b.iter(|| black_box(config::parse(&text, "bench.yaml").is_ok()))
    });
    group.finish();
}

criterion_group!(benches, decide, build);
criterion_main!(benches);
