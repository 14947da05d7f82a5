//! Data plane: the workers of a pool, picked with Pingora's load balancer,
//! with their health (the checks themselves run on the control side:
//! `control::services::HealthChecks`).
//!
//! A [`Pool`] holds one round-robin [`LoadBalancer`] for its HTTP workers
//! and, when the pool has them, one for its WebSocket workers (Odoo's gevent
//! port). Pools are built with the route table and carried over by a reload
//! that does not change them, so their health state survives.
//!
//! Besides the active TCP checks, each worker has a passive one (outlier
//! detection, as Envoy's `consecutive_5xx`): the proxy reports every
//! answer; after [`EJECT_AFTER`] failures in a row (5xx, refused connect,
//! timeout, reset) the worker is left out of selection for 30 s, doubling
//! with each ejection up to 5 minutes, unless it is the last worker of its
//! kind that could serve.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::health_check::{HealthObserve, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};
use tokio::time::Instant;

use crate::config::PoolConfig;

/// Failures in a row that eject a worker.
pub const EJECT_AFTER: u32 = 5;
/// First ejection; each further one doubles it, up to [`EJECT_MAX`].
const EJECT_BASE: Duration = Duration::from_secs(30);
const EJECT_MAX: Duration = Duration::from_secs(300);

/// A named set of workers running one release.
pub struct Pool {
    name: Arc<str>,
    config: PoolConfig,
    http: Workers,
    websocket: Option<Workers>,
    ejections: AtomicU64,
}

/// Workers behind one port kind, with their health.
///
/// Pingora's `LoadBalancer` holds the membership and runs the health
/// checks. We walk the members ourselves, round robin from an atomic
/// cursor: its own `select` allocates a de-duplicating set on every call,
/// which showed up as the largest part of our per-request cost in
/// callgrind. Whether a member is up we read from [`Workers::down`], which
/// the checks keep (a `HealthObserve` callback), not from
/// `Backends::ready` (a snapshot load and two SipHash lookups per call).
struct Workers {
    lb: LoadBalancer<RoundRobin>,
    /// Shared with the health checks' [`HealthMirror`], which finds a
    /// member's index in it.
    members: Arc<[Backend]>,
    /// Active health, by member index: what the TCP checks last found.
    /// Members start up, as in Pingora.
    down: Arc<[AtomicBool]>,
    next: AtomicUsize,
    /// Passive health, by member index.
    outliers: Box<[Outlier]>,
    /// Members with an ejection set (expired ones are cleared lazily): while
    /// 0, selection does not read the clock.
    ejected: AtomicUsize,
    /// Requests in flight, by member index (`balance: least_connections`
    /// only; `None`: round robin, nothing counted).
    active: Option<Box<[AtomicU32]>>,
    /// Origin of the `until_ms` clock.
    epoch: Instant,
}

/// A request in flight on a worker of a least-connections pool
/// ([`Pool::claim`]); counted out when dropped (the request's context ends).
pub struct InFlight {
    pool: Arc<Pool>,
    websocket: bool,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(active) = &self.pool.workers(self.websocket).active {
            active[self.index].fetch_sub(1, Relaxed);
        }
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// A worker's passive health.
#[derive(Default)]
struct Outlier {
    failures: AtomicU32,
    /// Ejected until this many ms after `epoch`; 0: not ejected.
    until_ms: AtomicU64,
    ejections: AtomicU32,
}

// === impl Pool ===

impl Pool {
    /// Build a pool from its (validated) definition.
    pub fn build(name: &str, config: &PoolConfig) -> Pool {
        let lb = |addrs: &[SocketAddr]| {
            // Socket addresses need no DNS, so this cannot block or fail.
            let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(addrs.iter().copied())
                .expect("socket addresses resolve without I/O");
            let members: Arc<[Backend]> = lb.backends().get_backend().iter().cloned().collect();
            let down: Arc<[AtomicBool]> = members.iter().map(|_| AtomicBool::new(false)).collect();
            let hc = &config.health_check;
            let mirror = Box::new(HealthMirror {
                members: Arc::clone(&members),
                down: Arc::clone(&down),
            });
            match &hc.http {
                // Pingora's HTTP check: an Odoo that accepts connections but
                // answers 500 (its database down) leaves the pool.
                Some((path, status)) => {
                    let mut check = HttpHealthCheck::new("localhost", false);
                    check.req = RequestHeader::build("GET", path.as_bytes(), None)
                        .expect("a validated path makes a request line");
                    check
                        .req
                        .insert_header("Host", "localhost")
                        .expect("a static header is valid");
                    check.peer_template.options.connection_timeout = Some(hc.timeout);
                    check.peer_template.options.read_timeout = Some(hc.timeout);
                    check.consecutive_failure = hc.failures;
                    check.consecutive_success = hc.successes;
                    let expect = *status;
                    check.validator = Some(Box::new(move |resp: &ResponseHeader| {
                        if resp.status.as_u16() == expect {
                            Ok(())
                        } else {
                            Err(pingora::Error::explain(
                                pingora::ErrorType::HTTPStatus(resp.status.as_u16()),
                                "health check status",
                            ))
                        }
                    }));
                    check.health_changed_callback = Some(mirror);
                    lb.set_health_check(Box::new(check));
                }
                None => {
                    let mut check = TcpHealthCheck::new();
                    check.peer_template.options.connection_timeout = Some(hc.timeout);
                    check.consecutive_failure = hc.failures;
                    check.consecutive_success = hc.successes;
                    check.health_changed_callback = Some(mirror);
                    lb.set_health_check(check);
                }
            }
            lb.parallel_health_check = true;
            let least = config.balance == crate::config::Balance::LeastConnections;
            Workers {
                lb,
                active: least.then(|| members.iter().map(|_| AtomicU32::new(0)).collect()),
                outliers: members.iter().map(|_| Outlier::default()).collect(),
                members,
                down,
                next: AtomicUsize::new(0),
                ejected: AtomicUsize::new(0),
                epoch: Instant::now(),
            }
        };
        Pool {
            name: name.into(),
            http: lb(&config.workers),
            websocket: (!config.websocket_workers.is_empty()).then(|| lb(&config.websocket_workers)),
            config: config.clone(),
            ejections: AtomicU64::new(0),
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every worker (WebSocket workers too) with whether it passes its
    /// health checks, for `fledge_worker_healthy`.
    pub fn health(&self) -> Vec<(SocketAddr, bool)> {
        std::iter::once(&self.http)
            .chain(self.websocket.as_ref())
            .flat_map(|w| {
                w.members
                    .iter()
                    .enumerate()
                    .filter_map(|(i, b)| Some((*b.addr.as_inet()?, w.is_up(i))))
            })
            .collect()
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

    /// How the answer of `worker` went (`ok`: not a worker failure). After
    /// [`EJECT_AFTER`] failures in a row the worker is ejected; returns the
    /// ejection's length when this report caused one.
    pub fn report(&self, websocket: bool, worker: SocketAddr, ok: bool) -> Option<Duration> {
        let ejected = self.workers(websocket).report(worker, ok);
        if ejected.is_some() {
            self.ejections.fetch_add(1, Relaxed);
        }
        ejected
    }

    /// Count a request in flight on `worker` (a least-connections pool):
    /// the guard counts it out when dropped. `None` for a round-robin pool.
    pub fn claim(self: &Arc<Self>, websocket: bool, worker: SocketAddr) -> Option<InFlight> {
        let workers = self.workers(websocket);
        let active = workers.active.as_ref()?;
        let index = workers
            .members
            .iter()
            .position(|b| b.addr.as_inet() == Some(&worker))?;
        active[index].fetch_add(1, Relaxed);
        Some(InFlight {
            pool: Arc::clone(self),
            websocket,
            index,
        })
    }

    /// Ejections since the pool was built.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Relaxed)
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
        let now = (healthy_only && self.ejected.load(Relaxed) > 0).then(|| self.now_ms());
        let mut eligible = (0..n)
            .map(|i| start.wrapping_add(i) % n)
            .filter(|&i| !healthy_only || (self.is_up(i) && now.is_none_or(|t| !self.is_ejected(i, t))));
        let i = match &self.active {
            // Round robin: the next eligible member.
            None => eligible.next(),
            // The eligible member with the fewest requests in flight; of
            // equals, the first in turn. Odoo pools are a few workers:
            // one pass over them.
            Some(active) => eligible.min_by_key(|&i| active[i].load(Relaxed)),
        };
        i.and_then(|i| self.members[i].addr.as_inet().copied())
    }

    fn is_up(&self, i: usize) -> bool {
        !self.down[i].load(Relaxed)
    }

    fn now_ms(&self) -> u64 {
        // Never 0, which means "not ejected".
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Ejected at `now`; an ejection found expired is cleared.
    fn is_ejected(&self, i: usize, now: u64) -> bool {
        let until = self.outliers[i].until_ms.load(Relaxed);
        if until == 0 {
            return false;
        }
        if until > now {
            return true;
        }
        if self.outliers[i]
            .until_ms
            .compare_exchange(until, 0, Relaxed, Relaxed)
            .is_ok()
        {
            self.ejected.fetch_sub(1, Relaxed);
        }
        false
    }

    fn report(&self, worker: SocketAddr, ok: bool) -> Option<Duration> {
        let i = self
            .members
            .iter()
            .position(|b| b.addr.as_inet() == Some(&worker))?;
        let o = &self.outliers[i];
        if ok {
            if o.failures.load(Relaxed) != 0 {
                o.failures.store(0, Relaxed);
            }
            return None;
        }
        if o.failures.fetch_add(1, Relaxed) + 1 < EJECT_AFTER {
            return None;
        }
        let now = self.now_ms();
        // Never the last worker that could serve.
        let others = (0..self.members.len())
            .filter(|&j| j != i && self.is_up(j) && !self.is_ejected(j, now))
            .count();
        if others == 0 || self.is_ejected(i, now) {
            return None;
        }
        let times = o.ejections.fetch_add(1, Relaxed).min(4);
        let length = (EJECT_BASE * 2u32.pow(times)).min(EJECT_MAX);
        let until = now.saturating_add(u64::try_from(length.as_millis()).unwrap_or(u64::MAX));
        if o.until_ms.swap(until, Relaxed) == 0 {
            self.ejected.fetch_add(1, Relaxed);
        }
        o.failures.store(0, Relaxed);
        Some(length)
    }
}

/// Keeps [`Workers::down`] as the health checks find the members: Pingora
/// calls it when a member's health flips, right after recording it.
struct HealthMirror {
    members: Arc<[Backend]>,
    down: Arc<[AtomicBool]>,
}

#[async_trait]
impl HealthObserve for HealthMirror {
    async fn observe(&self, target: &Backend, healthy: bool) {
        if let Some(i) = self.members.iter().position(|m| m == target) {
            self.down[i].store(!healthy, Relaxed);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HealthCheckConfig;
    use std::collections::HashSet;

    fn least_connections(workers: Vec<SocketAddr>) -> Arc<Pool> {
        let mut config = pool(workers).config().clone();
        config.balance = crate::config::Balance::LeastConnections;
        Arc::new(Pool::build("p", &config))
    }

    #[test]
    fn least_connections_picks_the_worker_with_the_fewest_requests_in_flight() {
        let (a, b, c) = (vacant(), vacant(), vacant());
        let pool = least_connections(vec![a, b, c]);
        // Nothing in flight: in turn.
        assert_eq!(picks(&pool).len(), 3);
        let on_a = pool.claim(false, a).expect("counted");
        let on_b = pool.claim(false, b).expect("counted");
        for _ in 0..5 {
            assert_eq!(pool.select(false), Some(c), "the idle one");
        }
        let on_c = pool.claim(false, c);
        let on_c2 = pool.claim(false, c);
        drop(on_a);
        for _ in 0..5 {
            assert_eq!(pool.select(false), Some(a), "the one whose request ended");
        }
        drop((on_b, on_c, on_c2));
        assert_eq!(picks(&pool).len(), 3, "in turn again");
        // A round-robin pool counts nothing.
        assert!(Arc::new(pool_rr(vec![a])).claim(false, a).is_none());
    }

    fn pool_rr(workers: Vec<SocketAddr>) -> Pool {
        pool(workers)
    }

    fn pool(workers: Vec<SocketAddr>) -> Pool {
        Pool::build(
            "p",
            &PoolConfig {
                workers,
                websocket_workers: Vec::new(),
                worker_names: Vec::new(),
                websocket_worker_names: Vec::new(),
                dns_refresh: Duration::from_secs(5),
                balance: crate::config::Balance::RoundRobin,
                health_check: HealthCheckConfig {
                    interval: Duration::from_secs(1),
                    timeout: Duration::from_secs(1),
                    http: None,
                    failures: 1,
                    successes: 1,
                },
            },
        )
    }

    /// A port nothing listens on (for now).
    fn vacant() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    fn picks(pool: &Pool) -> HashSet<Option<SocketAddr>> {
        (0..6).map(|_| pool.select(false)).collect()
    }

    #[tokio::test]
    async fn a_worker_the_checks_find_down_is_passed_over_until_they_find_it_up() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = live.local_addr().unwrap();
        let down = vacant();
        let pool = pool(vec![up, down]);
        // Before any check, both serve (workers start up).
        assert_eq!(picks(&pool), HashSet::from([Some(up), Some(down)]));

        pool.check_health().await;
        assert_eq!(picks(&pool), HashSet::from([Some(up)]));
        // The last resort still knows it.
        let any: HashSet<_> = (0..6).map(|_| pool.select_any(false)).collect();
        assert_eq!(any, HashSet::from([Some(up), Some(down)]));

        let _back = tokio::net::TcpListener::bind(down).await.unwrap();
        pool.check_health().await;
        assert_eq!(picks(&pool), HashSet::from([Some(up), Some(down)]));
    }
}
