#![allow(dead_code)]
#![allow(unreachable_pub, clippy::unwrap_used)]

//! fledge's only integration-test binary. Every test runs the real `fledge`
//! binary as a child process on ports the OS picked, in front of mock Odoo
//! workers (`fledge::mock_odoo`) running in the test, and talks to it over
//! real sockets.
//!
//! - `util`: `TestProxy` (the child process), `Mocks`, an HTTP client.
//! - `routing`: tenant by host, the split, stickiness, the override header,
//!   forwarded headers, HTTP/2.
//! - `failover`: dead canary workers, no replayed POST, WebSocket workers.
//! - `streaming`: 200 MB up and down without buffering; WebSocket idle.
//! - `hot_reload`: 100 reloads under load, broken files refused.
//! - `rollback`: automatic rollback and promotion, persisted across restarts.
//! - `mock_odoo`: the mock answers like Odoo and its fault knobs work.
//! - `admin`: the admin API, its auth, and `docs/admin-api.yaml`.
//! - `fleet`: replicas acting as one on a real `redis-server`.
//! - `edge`: behind a proxy or load balancer: forwarded clients, the PROXY
//!   protocol, health checks, the scrapers' endpoint, the access log.
//! - `dns`: workers by DNS name, answers changing under load.
//! - `cli`: `fledge check` and `fledge ctl`.
//! - `hostile`, `hostile_h2`: the smuggling tables, caps, slow clients, faulty
//!   workers; `tls`: certificates and TLS; `lifecycle`: drain and upgrade.

mod admin;
mod cli;
mod dns;
mod edge;
mod failover;
mod fleet;
mod hostile;
mod hostile_h2;
mod hot_reload;
mod lifecycle;
mod mock_odoo;
mod rollback;
mod routing;
mod streaming;
mod tls;
mod util;
