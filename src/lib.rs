//! fledge: a progressive-delivery edge proxy for hosted Odoo, on Pingora.
//!
//! Crate map. The data plane serves every request and never blocks, locks or
//! reads files; the control plane builds what the data plane reads and
//! publishes it atomically (see `docs/architecture.md`).
//!
//! Data plane:
//! - [`routing`]: pure routing decision (tenant by host, stable or canary).
//! - [`proxy`]: Pingora `ProxyHttp` hooks gluing routing to upstream, and
//!   outcome classification (JSON-RPC errors included).
//! - [`http1`]: fledge's own HTTP/1 codec: heads as spans of the read
//!   buffer, body framing, chunked bodies checked as they stream, heads
//!   rewritten by copying (issue 18; not yet on the request path).
//! - [`upstream`]: worker pools, load balancing and health checks.
//! - [`tls`]: the certificate resolver the TLS listener asks (by SNI).
//! - [`metrics`]: lock-free per-(tenant, version) counters; Prometheus view.
//!
//! Control plane:
//! - [`config`]: the YAML file, parsed and validated.
//! - [`control`]: the single writer of the route table; rollout states, the
//!   state file and the decision journal.
//! - [`analysis`]: the tick loop judging canaries (window, verdict, rollout).
//! - [`fleet`]: replicas acting as one on Redis: shared canary states, a
//!   leader judging the fleet's traffic, the fleet's journal.
//! - [`admin`]: the admin listener (`/metrics`, health).
//! - [`tls`] (its `load` and `watch`): certificates read, checked, reloaded.
//! - [`dns`]: workers by DNS name, resolved again while serving.
//! - [`watch`]: debounced directory watching (config and certificates).
//! - [`server`]: assembles the Pingora server and its services.
//! - [`state_dir`]: the state directory and secret files, checked so that
//!   nobody else can plant them; atomic, symlink-proof writes.
//! - [`handover`]: a graceful upgrade's hand-over of canary states and
//!   counters (the sockets are Pingora's part); [`upgrade`]: `fledge
//!   upgrade`, the whole upgrade, every step checked.
//!
//! Shared by both: [`vocab`], the closed vocabularies (outcome, version,
//! check, rollout state, verdict) every plane speaks, importing nothing.
//!
//! Tools:
//! - [`mock_odoo`]: an Odoo stand-in for tests, demos and rehearsals.
//! - [`demo`]: the embedded demo (`fledge demo`).
//! - [`fuzz`]: entry points of the fuzz targets (`fuzz/`), replayed in tests.
//! - [`ctl`]: `fledge ctl`, the admin API's command-line client.

pub mod admin;
pub mod analysis;
pub mod config;
pub mod control;
pub mod ctl;
pub mod demo;
pub mod dns;
pub mod error;
pub mod fleet;
pub mod fuzz;
pub mod handover;
pub mod http1;
pub mod metrics;
pub mod mock_odoo;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod state_dir;
pub mod tls;
pub mod upgrade;
pub mod upstream;
pub mod vocab;
pub mod watch;

#[cfg(test)]
mod test_util;
