//! Builders shared by unit tests.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{self, Config};
use crate::routing::{CookieKey, Decision, RequestView, Route, RouteTable};

/// Two tenants on pools `v17`/`v18`; `acme` has a canary at `weight` percent
/// and lets loopback use the override header.
pub(crate) fn config(weight: f64) -> Config {
    let text = format!(
        r#"
listen: "127.0.0.1:8080"
pools:
  v17: {{ workers: ["127.0.0.1:18069"], websocket_workers: ["127.0.0.1:18072"] }}
  v18: {{ workers: ["127.0.0.1:19069"] }}
policies:
  default:
    override_from: ["127.0.0.0/8"]
tenants:
  acme:
    hosts: ["acme.example.com", "*.acme.example.com"]
    stable: v17
    canary: v18
    canary_weight: {weight}
  beta:
    hosts: ["beta.example.com", "exact.acme.example.org", "*.example.org"]
    stable: v17
"#
    );
    config::parse(&text, "test.yaml").expect("test config is valid")
}

/// A table for `config(weight)` with a fixed cookie key.
pub(crate) fn table(weight: f64) -> RouteTable {
    RouteTable::build(
        &config(weight),
        Arc::new(CookieKey::from_secret(b"test secret, 16+ bytes")),
        None,
        &std::collections::BTreeMap::<String, crate::analysis::rollout::Rollout>::new(),
    )
}

/// Headers from pairs.
pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

/// The time the routing tests run at (Unix seconds, in 2027).
pub(crate) const NOW: u32 = 1_800_000_000;

/// Route a request at [`NOW`]; panics on `NoTenant`.
pub(crate) fn route(table: &RouteTable, host: &str, headers: &HeaderMap, ip: &str) -> Route {
    route_at(table, host, headers, ip, NOW)
}

/// Route a request at `now`; panics on `NoTenant`.
pub(crate) fn route_at(table: &RouteTable, host: &str, headers: &HeaderMap, ip: &str, now: u32) -> Route {
    let ip: IpAddr = ip.parse().unwrap();
    match table.decide(&RequestView {
        host,
        headers,
        client_ip: Some(ip),
        now: Some(now),
    }) {
        Decision::Route(r) => r,
        Decision::NoTenant => panic!("no tenant for {host}"),
    }
}
