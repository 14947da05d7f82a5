//! Data plane: the workers of a pool, picked with Pingora's load balancer,
//! and the control-plane task that health-checks them.
//!
//! A [`Pool`] holds one round-robin [`LoadBalancer`] for its HTTP workers
//! and, when the pool has them, one for its WebSocket workers (Odoo's gevent
//! port). Pools are built with the route table and carried over by a reload
//! that does not change them, so their health state survives.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use futures_util::future::join_all;
use pingora::lb::health_check::TcpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::time::Instant;

use crate::config::PoolConfig;
use crate::routing::RouteTable;

/// Granularity of the health-check loop.
const HEALTH_TICK: Duration = Duration::from_millis(100);

/// A named set of workers running one release.
pub struct Pool {
    name: Arc<str>,
    config: PoolConfig,
    http: Workers,
    websocket: Option<Workers>,
}

/// Workers behind one port kind, with their health.
///
/// Pingora's `LoadBalancer` holds the membership and the health state its
/// checks write. We walk the members ourselves, round robin from an atomic
/// cursor, asking the balancer whether each is ready: its own `select`
/// allocates a de-duplicating set on every call, which showed up as the
/// largest part of our per-request cost in callgrind.
struct Workers {
    lb: LoadBalancer<RoundRobin>,
    members: Vec<Backend>,
    next: AtomicUsize,
}

/// Background service: TCP health checks of every pool in the current table.
pub struct HealthChecks {
    routes: Arc<ArcSwap<RouteTable>>,
}

// === impl Pool ===

impl Pool {
    /// Build a pool from its (validated) definition.
    pub fn build(name: &str, config: &PoolConfig) -> Pool {
        let lb = |addrs: &[SocketAddr]| {
            // Socket addresses need no DNS, so this cannot block or fail.
            let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(addrs.iter().copied())
                .expect("socket addresses resolve without I/O");
            let mut check = TcpHealthCheck::new();
            check.peer_template.options.connection_timeout = Some(config.health_check.timeout);
            lb.set_health_check(check);
            lb.parallel_health_check = true;
            let members = lb.backends().get_backend().iter().cloned().collect();
            Workers {
                lb,
                members,
                next: AtomicUsize::new(0),
            }
        };
        Pool {
            name: name.into(),
            http: lb(&config.workers),
            websocket: (!config.websocket_workers.is_empty()).then(|| lb(&config.websocket_workers)),
            config: config.clone(),
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The definition it was built from.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    fn workers(&self, websocket: bool) -> &Workers {
        match (&self.websocket, websocket) {
            (Some(ws), true) => ws,
            _ => &self.http,
        }
    }

    /// A healthy worker, round robin; `None` when every worker is down.
    pub fn select(&self, websocket: bool) -> Option<SocketAddr> {
        self.workers(websocket).select(true)
    }

    /// Any worker, healthy or not: the last resort when health checks say
    /// the whole pool is down (they may be wrong; a refused connect is then
    /// an honest 502).
    pub fn select_any(&self, websocket: bool) -> Option<SocketAddr> {
        self.workers(websocket).select(false)
    }

    /// Probe every worker once.
    pub async fn check_health(&self) {
        self.http.lb.backends().run_health_check(true).await;
        if let Some(ws) = &self.websocket {
            ws.lb.backends().run_health_check(true).await;
        }
    }
}

// === impl Workers ===

impl Workers {
    fn select(&self, healthy_only: bool) -> Option<SocketAddr> {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Relaxed);
        (0..n)
            .map(|i| &self.members[start.wrapping_add(i) % n])
            .find(|b| !healthy_only || self.lb.backends().ready(b))
            .and_then(|b| b.addr.as_inet().copied())
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

// === impl HealthChecks ===

impl HealthChecks {
    /// Health checks of the pools of whatever table is current.
    pub fn new(routes: Arc<ArcSwap<RouteTable>>) -> Self {
        HealthChecks { routes }
    }
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Next due time per pool, keyed by the pool's address (pools are
        // shared by `Arc`, so the address is their identity).
        let mut due: HashMap<usize, Instant> = HashMap::new();
        loop {
            let table = self.routes.load_full();
            let now = Instant::now();
            let mut checks = Vec::new();
            for pool in table.pools() {
                let at = due.entry(Arc::as_ptr(pool) as usize).or_insert(now);
                if *at <= now {
                    *at = now + pool.config.health_check.interval;
                    checks.push(pool.check_health());
                }
            }
            join_all(checks).await;
            if due.len() > table.pools().len() {
                let live: HashSet<usize> = table.pools().iter().map(|p| Arc::as_ptr(p) as usize).collect();
                due.retain(|k, _| live.contains(k));
            }
            drop(table);
            tokio::select! {
                _ = tokio::time::sleep(HEALTH_TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
