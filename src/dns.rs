//! Control plane: workers by DNS name (`workers: ["odoo-v18.acme.svc.cluster.local:8069"]`).
//!
//! Every address a name resolves to is a worker: a Kubernetes headless
//! Service answers with its ready pods, so a rollout of the Odoo
//! Deployment changes the pool without a config change. Names are
//! resolved at start (a name that does not resolve refuses the start, and
//! a reload that brings a new one), then again every pool's
//! `dns_refresh_seconds`. A changed answer rebuilds the route table with
//! the pool's new members, as a reload does: requests in flight finish on
//! the table they started with (their worker included), new ones pick
//! from the new members, and pools whose members did not change keep
//! their health state. A name that stops resolving keeps its last
//! addresses, with a warning in the log and `fledge_worker_name_resolving`
//! at 0.
//!
//! Why not Pingora's `ServiceDiscovery`, which a `LoadBalancer` can call
//! on its own: fledge selects workers from its own per-member arrays
//! (health as the checks last found it, passive ejections; see
//! `upstream`), built with the pool, so a membership change must build a
//! new pool; and the data plane reads one route-table snapshot per
//! request. So the control plane resolves, and publishes a new table when
//! the answer changes, which is what the discovery's `update` would do
//! behind the proxy's back.
//!
//! Resolution: `hickory-resolver` (the maintained pure-Rust stub resolver:
//! async on our runtime, `/etc/resolv.conf`'s search domains and `ndots`
//! as Kubernetes sets them, `/etc/hosts`), or the name servers of
//! `dns.servers`, as nginx's `resolver` directive takes them. Its cache is
//! off: each refresh asks the server.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use tokio::time::Instant;

use crate::config::{Config, WorkerName};

/// One name server's answer may take this long; tried twice.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// What is known of each worker name.
#[derive(Default)]
pub struct Dns {
    /// `dns.servers`; empty: the system's.
    servers: Vec<SocketAddr>,
    /// The last good answer of each name (control plane writes, the
    /// metrics read).
    answers: ArcSwap<BTreeMap<WorkerName, Answer>>,
}

/// A name's last good answer and how its resolution goes.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    /// Sorted, without duplicates; never empty.
    pub addrs: Vec<SocketAddr>,
    /// The last attempt failed (the addresses are the last good ones).
    pub failing: bool,
    /// Failed attempts since start.
    pub failures: Arc<AtomicU64>,
}

/// A name that does not resolve.
#[derive(Debug, thiserror::Error)]
#[error("`{name}` does not resolve: {reason}")]
pub struct Unresolved {
    /// The name.
    pub name: WorkerName,
    /// The resolver's error.
    pub reason: String,
}

impl Unresolved {
    /// The config key that lists the name: `pools.NAME.workers` (or
    /// `websocket_workers`).
    pub fn path(&self, config: &Config) -> String {
        for (pool, p) in &config.pools {
            if p.worker_names.contains(&self.name) {
                return format!("pools.{pool}.workers");
            }
            if p.websocket_worker_names.contains(&self.name) {
                return format!("pools.{pool}.websocket_workers");
            }
        }
        "pools".to_owned()
    }
}

impl Dns {
    /// Resolution for `config`'s names, none resolved yet.
    pub fn new(config: &Config) -> Dns {
        Dns {
            servers: config.dns_servers.clone(),
            answers: ArcSwap::default(),
        }
    }

    /// Every worker name of `config`, each with the shortest refresh
    /// period of the pools that list it.
    fn names(config: &Config) -> BTreeMap<WorkerName, Duration> {
        let mut names: BTreeMap<WorkerName, Duration> = BTreeMap::new();
        for pool in config.pools.values() {
            for name in pool.worker_names.iter().chain(&pool.websocket_worker_names) {
                let period = names.entry(name.clone()).or_insert(pool.dns_refresh);
                *period = (*period).min(pool.dns_refresh);
            }
        }
        names
    }

    /// A resolver for one round of lookups (made anew each round: it reads
    /// `/etc/resolv.conf` again, and holds no connection between rounds).
    fn resolver(&self) -> Result<TokioResolver, String> {
        let mut builder = if self.servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system's DNS settings: {e}"))?
        } else {
            let mut group = NameServerConfigGroup::new();
            for server in &self.servers {
                group.merge(NameServerConfigGroup::from_ips_clear(
                    &[server.ip()],
                    server.port(),
                    true,
                ));
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), group),
                TokioConnectionProvider::default(),
            )
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.cache_size = 0;
        opts.timeout = QUERY_TIMEOUT;
        opts.attempts = 2;
        Ok(builder.build())
    }

    /// `name`'s addresses now: sorted, deduplicated, never empty.
    async fn lookup(resolver: &TokioResolver, name: &WorkerName) -> Result<Vec<SocketAddr>, String> {
        let found = resolver
            .lookup_ip(name.host.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let mut addrs: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, name.port)).collect();
        addrs.sort_unstable();
        addrs.dedup();
        if addrs.is_empty() {
            return Err("no address".to_owned());
        }
        Ok(addrs)
    }

    /// Resolve every name of `config` not resolved yet (a start, a
    /// reload); the first that does not resolve is the error, and nothing
    /// is learnt.
    pub async fn learn(&self, config: &Config) -> Result<(), Unresolved> {
        let known = self.answers.load();
        let new: Vec<WorkerName> = Self::names(config)
            .into_keys()
            .filter(|n| !known.contains_key(n))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let resolver = self.resolver().map_err(|reason| Unresolved {
            name: new[0].clone(),
            reason,
        })?;
        let found = futures_util::future::join_all(new.iter().map(|n| Self::lookup(&resolver, n))).await;
        let mut answers = BTreeMap::clone(&known);
        for (name, found) in new.into_iter().zip(found) {
            match found {
                Ok(addrs) => {
                    answers.insert(
                        name,
                        Answer {
                            addrs,
                            ..Answer::default()
                        },
                    );
                }
                Err(reason) => return Err(Unresolved { name, reason }),
            }
        }
        self.answers.store(Arc::new(answers));
        Ok(())
    }

    /// Resolve again the names of `config` that are due (`due`: when each
    /// is next, kept by the caller between rounds). Whether any answer
    /// changed: the table must then be built again.
    pub async fn refresh(&self, config: &Config, due: &mut HashMap<WorkerName, Instant>) -> bool {
        let now = Instant::now();
        let names = Self::names(config);
        due.retain(|n, _| names.contains_key(n));
        let ripe: Vec<(WorkerName, Duration)> = names
            .into_iter()
            .filter(|(n, _)| due.get(n).is_none_or(|at| *at <= now))
            .collect();
        if ripe.is_empty() {
            return false;
        }
        for (name, period) in &ripe {
            due.insert(name.clone(), now + *period);
        }
        let found = match self.resolver() {
            Ok(resolver) => {
                futures_util::future::join_all(ripe.iter().map(|(n, _)| Self::lookup(&resolver, n))).await
            }
            Err(reason) => ripe.iter().map(|_| Err(reason.clone())).collect(),
        };
        let mut answers = BTreeMap::clone(&self.answers.load());
        let mut changed = false;
        for ((name, _), found) in ripe.into_iter().zip(found) {
            let answer = answers.entry(name.clone()).or_default();
            match found {
                Ok(addrs) => {
                    if answer.failing {
                        tracing::info!(name = %name, addresses = addrs.len(), "worker name resolves again");
                    }
                    answer.failing = false;
                    if answer.addrs != addrs {
                        tracing::info!(
                            name = %name,
                            from = ?answer.addrs,
                            to = ?addrs,
                            "worker name's addresses changed: the pool follows"
                        );
                        answer.addrs = addrs;
                        changed = true;
                    }
                }
                Err(reason) => {
                    answer.failures.fetch_add(1, Relaxed);
                    if !answer.failing {
                        tracing::warn!(
                            name = %name,
                            %reason,
                            kept = ?answer.addrs,
                            "worker name does not resolve: its last addresses stay workers"
                        );
                    }
                    answer.failing = true;
                }
            }
        }
        self.answers.store(Arc::new(answers));
        changed
    }

    /// `config` as the proxy serves it: each pool's workers with every
    /// address of its names added (sorted after the written ones). The
    /// config itself when it has no names.
    pub fn effective<'a>(&self, config: &'a Config) -> Cow<'a, Config> {
        if !config
            .pools
            .values()
            .any(|p| !p.worker_names.is_empty() || !p.websocket_worker_names.is_empty())
        {
            return Cow::Borrowed(config);
        }
        let answers = self.answers.load();
        let mut config = config.clone();
        let add = |addrs: &mut Vec<SocketAddr>, names: &[WorkerName]| {
            let mut found: Vec<SocketAddr> = names
                .iter()
                .filter_map(|n| answers.get(n))
                .flat_map(|a| a.addrs.iter().copied())
                .filter(|a| !addrs.contains(a))
                .collect();
            found.sort_unstable();
            found.dedup();
            addrs.extend(found);
        };
        for pool in config.pools.values_mut() {
            add(&mut pool.workers, &pool.worker_names);
            add(&mut pool.websocket_workers, &pool.websocket_worker_names);
        }
        Cow::Owned(config)
    }

    /// Every name's answer, for the metrics.
    pub fn answers(&self) -> Arc<BTreeMap<WorkerName, Answer>> {
        self.answers.load_full()
    }
}

// === metrics ===

const ADDRESSES: &str = "fledge_worker_name_addresses";
const RESOLVING: &str = "fledge_worker_name_resolving";
const FAILURES: &str = "fledge_worker_name_failures_total";

/// Prometheus view of the worker names.
pub struct DnsExporter {
    dns: Arc<Dns>,
    descs: Vec<prometheus::core::Desc>,
}

impl DnsExporter {
    /// Export `dns`'s names.
    pub fn new(dns: Arc<Dns>) -> Self {
        use crate::metrics::desc;
        let descs = vec![
            desc(ADDRESSES, "Workers a worker name stands for (its last good answer).", &["name"]),
            desc(
                RESOLVING,
                "1 while a worker name resolves; 0 when its last attempt failed (its last addresses stay workers).",
                &["name"],
            ),
            desc(FAILURES, "Failed resolutions of a worker name.", &["name"]),
        ];
        DnsExporter { dns, descs }
    }
}

impl prometheus::core::Collector for DnsExporter {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use crate::metrics::{counter, family, gauge};
        use prometheus::proto::MetricType::{COUNTER, GAUGE};
        let answers = self.dns.answers();
        if answers.is_empty() {
            return Vec::new();
        }
        let names: Vec<String> = answers.keys().map(ToString::to_string).collect();
        let each = |f: &dyn Fn(&Answer) -> f64, counter_kind: bool| {
            names
                .iter()
                .zip(answers.values())
                .map(|(n, a)| {
                    if counter_kind {
                        counter(&[("name", n)], f(a))
                    } else {
                        gauge(&[("name", n)], f(a))
                    }
                })
                .collect()
        };
        vec![
            family(
                ADDRESSES,
                &self.descs[0].help,
                GAUGE,
                each(&|a| a.addrs.len() as f64, false),
            ),
            family(
                RESOLVING,
                &self.descs[1].help,
                GAUGE,
                each(&|a| if a.failing { 0.0 } else { 1.0 }, false),
            ),
            family(
                FAILURES,
                &self.descs[2].help,
                COUNTER,
                each(&|a| a.failures.load(Relaxed) as f64, true),
            ),
        ]
    }
}
