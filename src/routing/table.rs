//! Building a [`RouteTable`] from a [`Config`]: off the hot path, once per
//! config change. Host maps, weights in basis points, hash seeds and pool
//! handles are all resolved here so that `decide` only indexes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use super::{CookieKey, RouteTable, Version};
use crate::config::{Config, HostPattern, Limits, Policy, Timeouts, Weight};
use crate::metrics::TenantStats;
use crate::upstream::Pool;
use crate::vocab::RolloutState;

/// One tenant, compiled.
#[derive(Debug)]
pub struct TenantRoute {
    name: Arc<str>,
    stable: Arc<Pool>,
    canary: Option<Arc<Pool>>,
    weight: Weight,
    rollout_state: RolloutState,
    policy: Arc<Policy>,
    seed: u64,
    epoch: u32,
    /// When the canary's rollout started (Unix seconds): older version
    /// cookies are refused.
    since: u32,
    stats: Arc<TenantStats>,
    https_redirect: Option<u16>,
}

/// Per-request settings that come from the config but are not routes.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Timeouts applied to downstream and upstream connections.
    pub timeouts: Timeouts,
    /// Limits on what a client may send.
    pub limits: Limits,
    /// `Max-Age` of fledge's cookies.
    pub cookie_max_age_seconds: u64,
    /// Every policy's override header (their underscore spellings are
    /// refused before routing).
    pub override_headers: Vec<http::HeaderName>,
    /// Who may mark requests as rehearsal traffic.
    pub rehearsal: crate::config::Rehearsal,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Peers whose connections open with a PROXY protocol header.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// Write the access log.
    pub access_log: bool,
}

/// What the table takes of a canary's rollout: the control plane's state
/// (`analysis::rollout::Rollout`), seen through this trait so that the
/// data plane's table does not import the control plane.
pub trait Placement {
    /// The canary pool the rollout is about.
    fn canary_pool(&self) -> &str;
    /// The weight in force.
    fn weight(&self) -> Weight;
    /// Where the rollout is.
    fn state(&self) -> RolloutState;
    /// The rollout's generation (a rollback or resume starts a new one).
    fn generation(&self) -> u32;
    /// When it started (Unix seconds).
    fn started_unix(&self) -> u32;
}

// === impl TenantRoute ===

impl TenantRoute {
    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tenant's name, shared.
    pub fn shared_name(&self) -> &Arc<str> {
        &self.name
    }

    /// The stable pool.
    pub fn stable(&self) -> &Arc<Pool> {
        &self.stable
    }

    /// The canary pool, if a release is rolling out.
    pub fn canary(&self) -> Option<&Arc<Pool>> {
        self.canary.as_ref()
    }

    /// The canary weight.
    pub fn weight(&self) -> Weight {
        self.weight
    }

    /// State of the canary's rollout (`progressing` when there is none).
    pub fn rollout_state(&self) -> RolloutState {
        self.rollout_state
    }

    /// The tenant's counters; the same object across tables.
    pub fn stats(&self) -> &Arc<TenantStats> {
        &self.stats
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Seed of the tenant's split hash.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Identity of the current canary (tenant, canary pool and the
    /// rollout's generation); version cookies from another are ignored.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// When the canary's rollout started (Unix seconds; 0: unknown).
    pub fn since(&self) -> u32 {
        self.since
    }

    /// The TLS listener's port, when plain-HTTP requests are to be
    /// redirected there (`redirect_http` and a running TLS listener).
    pub fn https_redirect(&self) -> Option<u16> {
        self.https_redirect
    }

    /// A canary pool is set and gets a share of clients.
    pub fn canary_active(&self) -> bool {
        self.canary.is_some() && self.weight.basis_points() > 0
    }

    /// Version of a bucket at the current weight.
    pub fn split(&self, bucket: u16) -> Version {
        if bucket < self.weight.basis_points() {
            Version::Canary
        } else {
            Version::Stable
        }
    }

    /// The pool serving `version` (stable when there is no canary).
    pub fn pool(&self, version: Version) -> &Arc<Pool> {
        match (version, &self.canary) {
            (Version::Canary, Some(c)) => c,
            _ => &self.stable,
        }
    }
}

// === impl RouteTable ===

impl RouteTable {
    /// Compile `config`. Pools whose definition did not change since
    /// `previous` are carried over, with their health state, and so are
    /// every tenant's counters. A tenant with a canary takes its weight and
    /// state from its entry in `rollouts`, when it has one.
    pub fn build(
        config: &Config,
        cookie_key: Arc<CookieKey>,
        previous: Option<&RouteTable>,
        rollouts: &BTreeMap<String, impl Placement>,
    ) -> RouteTable {
        let mut old: HashMap<&str, &Arc<Pool>> = HashMap::new();
        let mut old_stats: HashMap<&str, &Arc<TenantStats>> = HashMap::new();
        if let Some(prev) = previous {
            for p in &prev.pools {
                old.insert(p.name(), p);
            }
            for t in &prev.tenants {
                old_stats.insert(t.name(), &t.stats);
            }
        }
        let pools: BTreeMap<&str, Arc<Pool>> = config
            .pools
            .iter()
            .map(|(name, def)| {
                let pool = match old.get(name.as_str()) {
                    Some(p) if p.config() == def => Arc::clone(p),
                    _ => Arc::new(Pool::build(name, def)),
                };
                (name.as_str(), pool)
            })
            .collect();
        let policies: HashMap<&str, Arc<Policy>> = config
            .policies
            .iter()
            .map(|(name, p)| (name.as_str(), Arc::new(p.clone())))
            .collect();

        let mut tenants = Vec::with_capacity(config.tenants.len());
        let mut exact = HashMap::with_hasher(ahash::RandomState::new());
        let mut wildcard = HashMap::with_hasher(ahash::RandomState::new());
        for (i, (name, t)) in config.tenants.iter().enumerate() {
            // Validation guarantees every reference resolves.
            let pool = |n: &str| Arc::clone(pools.get(n).expect("validated config names existing pools"));
            let index = u32::try_from(i).expect("fewer than 2^32 tenants");
            for h in &t.hosts {
                match h {
                    HostPattern::Exact(n) => exact.insert(n.as_str().into(), index),
                    HostPattern::Wildcard(s) => wildcard.insert(s.as_str().into(), index),
                };
            }
            let rollout = rollouts
                .get(name)
                .filter(|r| Some(r.canary_pool()) == t.canary.as_deref());
            let (generation, since) = rollout.map_or((0, 0), |r| (r.generation(), r.started_unix()));
            let epoch_input = format!("{name}\0{}\0{generation}", t.canary.as_deref().unwrap_or(""));
            let (weight, rollout_state) = match rollout {
                Some(r) => (r.weight(), r.state()),
                None => (t.canary_weight, RolloutState::Progressing),
            };
            let stats = old_stats
                .get(name.as_str())
                .map_or_else(Arc::default, |s| Arc::clone(s));
            tenants.push(TenantRoute {
                name: name.as_str().into(),
                stable: pool(&t.stable),
                canary: t.canary.as_deref().map(pool),
                weight,
                rollout_state,
                stats,
                policy: Arc::clone(
                    policies
                        .get(t.policy.as_str())
                        .expect("validated config names existing policies"),
                ),
                seed: xxh3_64(name.as_bytes()),
                epoch: xxh3_64(epoch_input.as_bytes()) as u32,
                since,
                https_redirect: config
                    .tls
                    .as_ref()
                    .filter(|_| t.redirect_http)
                    .map(|tls| tls.listen.port()),
            });
        }

        // Only pools some tenant uses need health checks.
        let mut seen = HashSet::new();
        let mut used: Vec<Arc<Pool>> = Vec::new();
        for t in &tenants {
            for p in std::iter::once(&t.stable).chain(t.canary.as_ref()) {
                if seen.insert(Arc::as_ptr(p)) {
                    used.push(Arc::clone(p));
                }
            }
        }

        RouteTable {
            tenants,
            exact,
            wildcard,
            pools: used,
            cookie_key,
            tuning: Tuning {
                timeouts: config.timeouts.clone(),
                limits: config.limits.clone(),
                cookie_max_age_seconds: config.cookies.max_age_seconds,
                override_headers: {
                    let mut names: Vec<http::HeaderName> = config
                        .policies
                        .values()
                        .map(|p| p.override_header.clone())
                        .collect();
                    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
                    names.dedup();
                    names
                },
                rehearsal: config.rehearsal.clone(),
                trusted_proxies: config.trusted_proxies.clone(),
                proxy_protocol_from: config.proxy_protocol_from.clone(),
                access_log: config.access_log,
            },
        }
    }
}
