//! Control plane: the single writer of the route table, and keeper of every
//! canary's rollout state.
//!
//! The data plane reads `Arc<ArcSwap<RouteTable>>` once per request. Every
//! change to routing (a config reload, an admin edit, an analysis verdict)
//! goes through [`Control`], which applies changes one at a time under its
//! lock, makes them durable (the state file and the decision journal under
//! `state_dir`), then builds a complete new table off the hot path and
//! publishes it with one atomic store.
//!
//! At start the states of the previous run are read back, so a rolled-back
//! canary stays rolled back. If they cannot be trusted (the file is
//! corrupted, or missing although the journal shows earlier runs) every
//! canary starts rolled back: stable only, until an operator resumes it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::sync::Mutex;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::analysis::rollout::{Change, Rollout, RolloutState};
use crate::analysis::verdict::Breach;
use crate::config::{Config, ConfigError, Problem, Weight};
use crate::fleet::{self, FleetError, Link, Write};
use crate::routing::{CookieKey, RouteTable};

use self::journal::Entry;
pub use self::journal::{Actor, Journal, Position};
pub use self::store::{Loaded, Store};

pub mod journal;
pub mod services;
pub mod store;

/// Owner of the published route table and of the rollouts.
pub struct Control {
    routes: Arc<ArcSwap<RouteTable>>,
    cookie_key: Arc<CookieKey>,
    source: Option<PathBuf>,
    generation: AtomicU64,
    reloads: Arc<ReloadCounters>,
    /// The fleet this replica belongs to, if any.
    fleet: Option<Arc<Link>>,
    /// The fleet's generation as last read or written here.
    fleet_generation: AtomicU64,
    /// A reload changed canaries: the fleet must hear of them at the next
    /// sync, although its generation did not move.
    fleet_dirty: std::sync::atomic::AtomicBool,
    /// The workers by DNS name, as last resolved.
    dns: Arc<crate::dns::Dns>,
    inner: Mutex<Inner>,
}

struct Inner {
    config: Arc<Config>,
    rollouts: BTreeMap<String, Rollout>,
    store: Store,
    journal: Journal,
    source_hash: u64,
    last_reload: Option<ReloadStatus>,
    /// Whether this process decides, journals and saves. A process started
    /// for a graceful upgrade is not until it has the sockets
    /// ([`Control::take_over`]); the old one stops at SIGQUIT
    /// ([`Control::hand_over`]), so the two never write over each other.
    in_charge: bool,
    /// This replica's id, in a fleet (journal lines carry it).
    replica: Option<String>,
    /// In a fleet: the fleet generation each tenant's state was last
    /// written at, as this replica read or wrote it.
    revs: HashMap<String, u64>,
    /// Rollbacks made alone (Redis away), by tenant, with what they were
    /// made from: written to the fleet on reconnect. Kept in
    /// `state_dir/fleet-pending.json`, so a restart meanwhile loses none.
    pending: BTreeMap<String, store::Pending>,
    /// Tenants whose weight this replica's file changed (a reload): the
    /// fleet's state takes it at the next sync.
    file_pushes: BTreeSet<String>,
    /// The fleet's states were read at least once.
    synced: bool,
}

pub use crate::analysis::Judgement;
pub use crate::metrics::ReloadCounters;

/// The outcome of the last reload attempt.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    /// `applied`, `rejected` or `unchanged`.
    pub result: &'static str,
    /// Who asked.
    pub actor: Actor,
    /// When, RFC 3339.
    pub time: String,
    /// Why it was refused (file, line, key, reason), if it was.
    pub reason: Option<String>,
    /// Generation after it.
    pub generation: u64,
}

/// What an operator can do to a canary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Operation {
    /// Set the weight (not on a rolled-back canary: resume it first).
    Weight(Weight),
    /// Straight to 100 %, state `promoted`.
    Promote,
    /// Straight to 0 %, state `rolled_back`.
    Rollback,
    /// Freeze: no more steps (a breach still rolls back).
    Pause,
    /// Unfreeze a paused canary, or re-arm a rolled-back one from its start.
    Resume,
}

/// Why an operation or reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No such tenant.
    #[error("no tenant `{0}`")]
    UnknownTenant(String),
    /// The tenant has no canary to operate on.
    #[error("tenant `{0}` has no canary")]
    NoCanary(String),
    /// The operation does not apply in the canary's state.
    #[error("{0}")]
    Conflict(String),
    /// `If-Match` named another generation.
    #[error("generation {given} is stale: the current one is {current}")]
    StaleGeneration {
        /// What the client sent.
        given: u64,
        /// What is current.
        current: u64,
    },
    /// The config file was refused.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// There is no file to reload (the demo's embedded config).
    #[error("this fledge runs an embedded config: there is no file to reload")]
    NoSource,
    /// Another replica changed the canary meanwhile.
    #[error("the canary state of `{0}` changed meanwhile on another replica")]
    Moved(String),
    /// The fleet's Redis cannot take the change now.
    #[error("{0}")]
    FleetUnavailable(String),
    /// This process is handing over to a new one (graceful upgrade).
    #[error("this fledge is handing over to a new process: ask again in a moment")]
    HandingOver,
}

/// A journal line to write, owned.
struct Event {
    tenant: Option<String>,
    canary: Option<String>,
    event: &'static str,
    actor: Actor,
    before: Option<Position>,
    after: Option<Position>,
    reason: Option<String>,
    figures: Option<Box<Breach>>,
}

impl Control {
    /// Read the previous run's states from `config.state_dir`, reconcile them
    /// with `config`, and build the first table.
    /// `dns`: the workers by name, resolved ([`Dns::learn`](crate::dns::Dns::learn)).
    pub fn start(
        config: Config,
        cookie_key: CookieKey,
        source: Option<PathBuf>,
        dns: Arc<crate::dns::Dns>,
    ) -> anyhow::Result<Control> {
        Self::open(config, cookie_key, source, dns, true)
    }

    /// As [`start`](Self::start), for a process that will take the sockets
    /// over from a running one: it builds its table from the states as they
    /// are now, but writes nothing until [`take_over`](Self::take_over).
    pub fn standby(
        config: Config,
        cookie_key: CookieKey,
        source: Option<PathBuf>,
        dns: Arc<crate::dns::Dns>,
    ) -> anyhow::Result<Control> {
        Self::open(config, cookie_key, source, dns, false)
    }

    fn open(
        config: Config,
        cookie_key: CookieKey,
        source: Option<PathBuf>,
        dns: Arc<crate::dns::Dns>,
        in_charge: bool,
    ) -> anyhow::Result<Control> {
        let source_hash = source
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .map_or(0, |b| xxhash_rust::xxh3::xxh3_64(&b));
        let dir = &config.state_dir;
        let store = Store::open(dir).with_context(|| format!("cannot use state_dir {}", dir.display()))?;
        let journal =
            Journal::open(dir).with_context(|| format!("cannot open the journal in {}", dir.display()))?;
        let (previous, distrust) = load_states(&store);
        let fleet = match &config.fleet {
            Some(f) => Some(Link::new(f, cookie_key.fingerprint())?),
            None => None,
        };
        let config_fleet = config.fleet.clone();
        let pending = if config_fleet.is_some() {
            store.load_pending()
        } else {
            BTreeMap::new()
        };
        let cookie_key = Arc::new(cookie_key);
        let (rollouts, events) = reconcile(&config, previous, distrust.as_deref(), Actor::File);
        let table = RouteTable::build(&dns.effective(&config), Arc::clone(&cookie_key), None, &rollouts);
        let mut inner = Inner {
            config: Arc::new(config),
            rollouts,
            store,
            journal,
            source_hash,
            last_reload: None,
            in_charge,
            replica: config_fleet.as_ref().map(|f| f.replica_id.clone()),
            revs: HashMap::new(),
            pending,
            file_pushes: BTreeSet::new(),
            synced: false,
        };
        if in_charge {
            inner.record(&events);
            inner.save();
        }
        Ok(Control {
            routes: Arc::new(ArcSwap::from_pointee(table)),
            cookie_key,
            source,
            generation: AtomicU64::new(1),
            reloads: Arc::default(),
            fleet,
            fleet_generation: AtomicU64::new(0),
            fleet_dirty: std::sync::atomic::AtomicBool::new(false),
            dns,
            inner: Mutex::new(inner),
        })
    }

    /// Stop deciding, journaling and saving: a new process is taking the
    /// sockets over (SIGQUIT). Waits for a decision under way to finish.
    pub async fn hand_over(&self) {
        self.inner.lock().await.in_charge = false;
    }

    /// Decide again after a hand-over that did not happen (the new process
    /// never took the sockets): nothing changed the states meanwhile, since
    /// nobody was in charge.
    pub async fn take_back(&self) {
        self.inner.lock().await.in_charge = true;
    }

    /// Start deciding, after a standby process got the sockets: the states
    /// are read again (the old process may have changed them since this
    /// one started, and changes nothing from now on), reconciled, journaled
    /// and published. Not for async contexts (it blocks on the lock).
    pub fn take_over(&self) {
        let mut inner = self.inner.blocking_lock();
        let (previous, distrust) = load_states(&inner.store);
        let (rollouts, events) = reconcile(&inner.config, previous, distrust.as_deref(), Actor::File);
        inner.rollouts = rollouts;
        inner.in_charge = true;
        inner.record(&events);
        inner.save();
        self.publish(&inner);
    }

    /// The handle the data plane reads from.
    pub fn routes(&self) -> Arc<ArcSwap<RouteTable>> {
        Arc::clone(&self.routes)
    }

    /// Counts every published change: a reload, an operator's edit, an
    /// automatic decision. `If-Match` compares against it.
    ///
    /// In a fleet it is the fleet's generation, which moves on at every
    /// change of a canary state on any replica: `If-Match` is fleet-wide.
    pub fn generation(&self) -> u64 {
        match &self.fleet {
            Some(_) => self.fleet_generation.load(Relaxed),
            None => self.generation.load(Relaxed),
        }
    }

    /// The fleet this replica belongs to.
    pub fn fleet(&self) -> Option<&Arc<Link>> {
        self.fleet.as_ref()
    }

    /// Whether this process decides (not a standby waiting for the
    /// sockets, nor one that handed them over): only such a process speaks
    /// for its replica in the fleet.
    pub async fn in_charge(&self) -> bool {
        self.inner.lock().await.in_charge
    }

    /// Whether a reload left canaries the fleet has not heard of (cleared
    /// by the call).
    pub fn take_fleet_dirty(&self) -> bool {
        self.fleet_dirty.swap(false, Relaxed)
    }

    /// In a fleet, whether its states were read since start (readiness).
    pub async fn fleet_synced(&self) -> bool {
        self.fleet.is_none() || self.inner.lock().await.synced
    }

    /// Reload counters, for `/metrics`.
    pub fn reload_counters(&self) -> Arc<ReloadCounters> {
        Arc::clone(&self.reloads)
    }

    /// The config file, its content hash and the last reload's outcome.
    pub async fn source(&self) -> (Option<PathBuf>, u64, Option<ReloadStatus>) {
        let inner = self.inner.lock().await;
        (self.source.clone(), inner.source_hash, inner.last_reload.clone())
    }

    /// The workers by DNS name.
    pub fn dns(&self) -> &Arc<crate::dns::Dns> {
        &self.dns
    }

    /// Resolve the worker names that are due again (`due`: when each is
    /// next); a changed answer publishes a table with the pools' new
    /// members.
    pub async fn refresh_workers(&self, due: &mut HashMap<crate::config::WorkerName, tokio::time::Instant>) {
        // The lookups run without the lock: a slow name server holds up no
        // decision.
        let config = Arc::clone(&self.inner.lock().await.config);
        if self.dns.refresh(&config, due).await {
            let inner = self.inner.lock().await;
            self.publish(&inner);
        }
    }

    /// The config in force.
    pub async fn config(&self) -> Arc<Config> {
        Arc::clone(&self.inner.lock().await.config)
    }

    /// Every rollout, by tenant.
    pub async fn rollouts(&self) -> BTreeMap<String, Rollout> {
        self.inner.lock().await.rollouts.clone()
    }

    /// Apply one tick of this process's own analysis; `elapsed` since the
    /// previous tick. In a fleet whose Redis answers, the leader judges the
    /// fleet's traffic instead ([`judge_fleet`](Self::judge_fleet)) and
    /// this does nothing; cut off from Redis (or refused by the fleet) the
    /// replica protects itself: it may roll back, never step or promote,
    /// and its rollback reaches the fleet on reconnect ([`sync_fleet`](Self::sync_fleet)).
    pub async fn judge(&self, judgements: &[Judgement], elapsed: Duration) {
        let alone = match &self.fleet {
            Some(link) if link.in_fleet() => return,
            Some(_) => true,
            None => false,
        };
        let mut inner = self.inner.lock().await;
        if !inner.in_charge {
            return;
        }
        let config = Arc::clone(&inner.config);
        let mut events = Vec::new();
        for j in judgements {
            let Some(rollout) = inner.rollouts.get_mut(&*j.tenant) else {
                continue;
            };
            let Some(decision) = decide(&config, j, rollout, elapsed, !alone) else {
                continue;
            };
            // Alone, a decision is a rollback, which moved the generation on.
            let made_from = rollout.generation.wrapping_sub(1);
            self.count_decision(&j.tenant, &decision.change, Origin::Local);
            if alone {
                let base = store::Pending {
                    rev: inner.revs.get(&*j.tenant).copied().unwrap_or(0),
                    generation: made_from,
                };
                inner.pending.insert(j.tenant.to_string(), base);
            }
            events.push(decision.event);
        }
        if events.is_empty() {
            return;
        }
        inner.record(&events);
        inner.save();
        if alone {
            inner.save_pending();
        }
        self.publish(&inner);
    }

    /// Apply the fleet leader's verdicts on the fleet's summed traffic: each
    /// change is written to the fleet with the leader's `lease` (a deposed
    /// leader's write is refused), then applied here; every replica applies
    /// it from the fleet within a second.
    pub async fn judge_fleet(&self, judgements: &[Judgement], elapsed: Duration, lease: &str) {
        let Some(link) = self.fleet.clone() else {
            return;
        };
        let mut inner = self.inner.lock().await;
        if !inner.in_charge {
            return;
        }
        let config = Arc::clone(&inner.config);
        for j in judgements {
            let Some(current) = inner.rollouts.get(&*j.tenant) else {
                continue;
            };
            let mut rollout = current.clone();
            let decision = decide(&config, j, &mut rollout, elapsed, true);
            let Some(decision) = decision else {
                // The streak and the time held are the leader's own.
                inner.rollouts.insert(j.tenant.to_string(), rollout);
                continue;
            };
            let write = Write {
                field: fleet::field(&j.tenant, &rollout.canary_pool),
                expected_rev: inner.revs.get(&*j.tenant).copied().unwrap_or(0),
                record: link.record(Actor::Auto, &rollout),
            };
            match link.commit(None, Some(lease), std::slice::from_ref(&write)).await {
                Ok(generation) => {
                    self.count_decision(&j.tenant, &decision.change, Origin::Fleet);
                    inner.revs.insert(j.tenant.to_string(), generation);
                    self.fleet_generation.fetch_max(generation, Relaxed);
                    inner.rollouts.insert(j.tenant.to_string(), rollout);
                    let lines = inner.record(std::slice::from_ref(&decision.event));
                    inner.save();
                    self.publish(&inner);
                    let _ = link.journal(&lines).await;
                }
                Err(FleetError::Deposed) => {
                    tracing::info!(tenant = %j.tenant, "fleet decision refused: this replica no longer leads");
                    return;
                }
                Err(FleetError::Unavailable(e)) => {
                    tracing::debug!(error = %e, "fleet decisions not written: Redis does not answer");
                    return;
                }
                Err(e) => {
                    tracing::debug!(tenant = %j.tenant, error = %e, "fleet decision not written: judged again next tick");
                }
            }
        }
    }

    /// In a fleet: read the fleet's canary states and make this replica's
    /// agree. A state another replica or operator changed is taken as is;
    /// a canary the fleet does not know yet is written to it; a rollback
    /// this replica made alone while Redis was away is written unless the
    /// fleet's canary was changed since by an operator (the fleet's record
    /// is an operator's, written after the state the rollback was made
    /// from, or the canary was resumed: its rollout generation moved); a
    /// Redis that holds no fleet (first start, or restarted empty) is
    /// seeded with this replica's states at the generation it knew, the
    /// highest generation winning among seeds (never over a write made
    /// since).
    pub async fn sync_fleet(&self) -> Result<(), FleetError> {
        let Some(link) = self.fleet.clone() else {
            return Ok(());
        };
        if link.is_refused() {
            return Ok(());
        }
        for _ in 0..3 {
            let state = link.read_state().await?;
            let known = self.fleet_generation.load(Relaxed);
            let generation = match state.generation {
                Some(g) if g >= known => g,
                found => {
                    let mut inner = self.inner.lock().await;
                    if !inner.in_charge {
                        return Ok(());
                    }
                    let records: Vec<(String, fleet::Record)> = inner
                        .rollouts
                        .iter()
                        .map(|(t, r)| (fleet::field(t, &r.canary_pool), link.record(Actor::File, r)))
                        .collect();
                    // Whoever's seed wins, this is a new history: every
                    // record is new to us.
                    inner.revs.clear();
                    drop(inner);
                    let won = link.seed(known.max(1), &records).await?;
                    tracing::warn!(
                        found = ?found,
                        generation = known.max(1),
                        won,
                        "the fleet's Redis held no canary states, or older ones: seeded from the replicas'"
                    );
                    if !won {
                        // Another replica's seed, or writes since it: take it.
                        self.fleet_generation.store(0, Relaxed);
                    }
                    continue;
                }
            };
            return self.adopt(&link, generation, state).await;
        }
        Ok(())
    }

    async fn adopt(&self, link: &Link, generation: u64, state: fleet::FleetState) -> Result<(), FleetError> {
        let mut inner = self.inner.lock().await;
        if !inner.in_charge {
            return Ok(());
        }
        let config = Arc::clone(&inner.config);
        let mut changed = false;
        let mut pending_changed = false;
        // Redis stopped answering halfway: what was taken so far is still
        // published, and the next sync does the rest.
        let mut failure = None;
        for (name, t) in &config.tenants {
            let Some(pool) = &t.canary else {
                continue;
            };
            let field = fleet::field(name, pool);
            let Some(local) = inner.rollouts.get(name).cloned() else {
                continue;
            };
            let Some(stored) = state.records.get(&field) else {
                // New to the fleet: this replica's start is the fleet's.
                let write = Write {
                    field,
                    expected_rev: 0,
                    record: link.record(Actor::File, &local),
                };
                match link.commit(None, None, std::slice::from_ref(&write)).await {
                    Ok(g) => {
                        inner.revs.insert(name.clone(), g);
                        self.fleet_generation.fetch_max(g, Relaxed);
                    }
                    Err(e @ FleetError::Unavailable(_)) => {
                        failure = Some(e);
                        break;
                    }
                    Err(_) => {}
                }
                continue;
            };
            if let Some(&base) = inner.pending.get(name) {
                let fleet_rollout = &stored.record.rollout;
                let operator_later = (stored.record.actor == Actor::Api.as_str() && stored.rev > base.rev)
                    || fleet_rollout.generation != base.generation;
                if fleet_rollout.state != RolloutState::RolledBack && !operator_later {
                    let write = Write {
                        field,
                        expected_rev: stored.rev,
                        record: link.record(Actor::Auto, &local),
                    };
                    match link.commit(None, None, std::slice::from_ref(&write)).await {
                        Ok(g) => {
                            inner.pending.remove(name);
                            pending_changed = true;
                            inner.revs.insert(name.clone(), g);
                            self.fleet_generation.fetch_max(g, Relaxed);
                            tracing::warn!(tenant = %name, "a rollback made while the fleet's Redis was away now applies to the fleet");
                            let event = Event {
                                tenant: Some(name.clone()),
                                canary: Some(pool.clone()),
                                event: "rolled_back",
                                actor: Actor::Auto,
                                before: Some(Position::new(fleet_rollout.state, fleet_rollout.weight)),
                                after: Some(Position::new(local.state, local.weight)),
                                reason: local.reason.clone(),
                                figures: local.figures.clone(),
                            };
                            let lines = inner.record(std::slice::from_ref(&event));
                            let _ = link.journal(&lines).await;
                        }
                        Err(e @ FleetError::Unavailable(_)) => {
                            failure = Some(e);
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(tenant = %name, error = %e, "a rollback made alone not written yet")
                        }
                    }
                    continue;
                }
                if operator_later {
                    tracing::warn!(tenant = %name, "a rollback made while the fleet's Redis was away is superseded: an operator changed the canary since");
                }
                inner.pending.remove(name);
                pending_changed = true;
            }
            // Revs only grow: a record read before this replica's own
            // later write is not taken back.
            let known_rev = inner.revs.get(name).copied();
            if known_rev.is_some_and(|r| stored.rev <= r) && !inner.file_pushes.contains(name) {
                continue;
            }
            let mut adopted = stored.record.rollout.clone();
            if (adopted.state, adopted.weight, adopted.step) == (local.state, local.weight, local.step) {
                adopted.held = local.held;
                adopted.breaches = local.breaches;
                adopted.since_breach = local.since_breach;
            }
            let mut rev = stored.rev;
            // This replica's file changed the weight (a reload): the fleet's
            // state takes it, as an operator's change would.
            if inner.file_pushes.remove(name)
                && adopted.file_weight != t.canary_weight
                && matches!(adopted.state, RolloutState::Progressing | RolloutState::Paused)
            {
                let mut pushed = adopted.clone();
                pushed.file_weight = t.canary_weight;
                pushed.weight = t.canary_weight;
                pushed.step = None;
                let write = Write {
                    field: field.clone(),
                    expected_rev: stored.rev,
                    record: link.record(Actor::File, &pushed),
                };
                match link.commit(None, None, std::slice::from_ref(&write)).await {
                    Ok(g) => {
                        tracing::info!(tenant = %name, weight = t.canary_weight.percent(), "the file's canary weight written to the fleet");
                        self.fleet_generation.fetch_max(g, Relaxed);
                        let event = Event {
                            tenant: Some(name.clone()),
                            canary: Some(pool.clone()),
                            event: "weight",
                            actor: Actor::File,
                            before: Some(Position::new(adopted.state, adopted.weight)),
                            after: Some(Position::new(pushed.state, pushed.weight)),
                            reason: None,
                            figures: None,
                        };
                        let lines = inner.record(std::slice::from_ref(&event));
                        let _ = link.journal(&lines).await;
                        adopted = pushed;
                        rev = g;
                    }
                    Err(e) => {
                        // Tried again at the next sync; meanwhile the
                        // fleet's state is served.
                        inner.file_pushes.insert(name.clone());
                        if matches!(e, FleetError::Unavailable(_)) {
                            failure = Some(e);
                        }
                    }
                }
            }
            if adopted != local {
                changed = true;
            }
            inner.revs.insert(name.clone(), rev);
            inner.rollouts.insert(name.clone(), adopted);
            if failure.is_some() {
                break;
            }
        }
        self.fleet_generation.fetch_max(generation, Relaxed);
        if pending_changed {
            inner.save_pending();
        }
        if changed {
            inner.save();
            self.publish(&inner);
        }
        match failure {
            Some(e) => Err(e),
            None => {
                inner.synced = true;
                Ok(())
            }
        }
    }

    /// Count an automatic decision in the tenant's counters and the
    /// fleet's by origin.
    fn count_decision(&self, tenant: &str, change: &Change, origin: Origin) {
        if let Change::RolledBack(b) = change {
            self.count_rollback(tenant, Some(b.check));
        }
        if let Some(link) = &self.fleet {
            link.count_decision(origin == Origin::Fleet);
        }
    }

    /// Journal an event about the proxy as a whole rather than a tenant's
    /// canary (a certificate loaded or refused, for one).
    pub async fn note(&self, event: &'static str, actor: Actor, reason: String) {
        let mut inner = self.inner.lock().await;
        if !inner.in_charge {
            return;
        }
        inner.record(&[Event {
            tenant: None,
            canary: None,
            event,
            actor,
            before: None,
            after: None,
            reason: Some(reason),
            figures: None,
        }]);
    }

    /// Re-read the config file. Unchanged content is a no-op unless
    /// `force`. A refused file changes nothing: the old config keeps
    /// serving, and the reason goes to the log, the journal, the metrics
    /// and [`ReloadStatus`].
    pub async fn reload(&self, actor: Actor, force: bool) -> Result<ReloadStatus, ControlError> {
        let path = self.source.as_deref().ok_or(ControlError::NoSource)?;
        let mut inner = self.inner.lock().await;
        if !inner.in_charge {
            return Err(ControlError::HandingOver);
        }
        let (time, _) = Entry::now();
        let file = path.display().to_string();
        let parsed = std::fs::read(path)
            .map_err(|source| ConfigError::Read {
                file: file.clone(),
                source,
            })
            .and_then(|bytes| {
                let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
                if hash == inner.source_hash && !force {
                    return Ok(None);
                }
                let text = String::from_utf8(bytes).map_err(|_| ConfigError::Invalid {
                    file: file.clone(),
                    problems: vec![Problem {
                        line: None,
                        path: "(file)".into(),
                        reason: "is not UTF-8 text".into(),
                    }],
                })?;
                crate::config::parse(&text, &file).map(|c| Some((c, hash, text)))
            });
        // A name the new file brings must resolve, as at start.
        let parsed = match parsed {
            Ok(Some((config, hash, text))) => match self.dns.learn(&config).await {
                Ok(()) => Ok(Some((config, hash))),
                Err(e) => Err(crate::config::refusal(
                    &file,
                    &text,
                    &e.path(&config),
                    e.to_string(),
                )),
            },
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        let status = |result, reason, generation| ReloadStatus {
            result,
            actor,
            time: time.clone(),
            reason,
            generation,
        };
        match parsed {
            Ok(None) => {
                self.reloads.unchanged.fetch_add(1, Relaxed);
                Ok(status("unchanged", None, self.generation()))
            }
            Err(e) => {
                self.reloads.rejected.fetch_add(1, Relaxed);
                let reason = e.to_string();
                tracing::warn!(file = %file, reason = %reason, "config reload rejected: the running config keeps serving");
                inner.record(&[Event {
                    tenant: None,
                    canary: None,
                    event: "reload_rejected",
                    actor,
                    before: None,
                    after: None,
                    reason: Some(reason.clone()),
                    figures: None,
                }]);
                inner.last_reload = Some(status("rejected", Some(reason), self.generation()));
                Err(ControlError::Config(e))
            }
            Ok(Some((mut config, hash))) => {
                keep_fixed_settings(&inner.config, &mut config);
                let previous = std::mem::take(&mut inner.rollouts);
                let kept = config.fleet.is_some().then(|| previous.clone());
                let (mut rollouts, mut events) = reconcile(&config, previous, None, actor);
                if let Some(kept) = kept {
                    // In a fleet a canary's state is the fleet's: this
                    // replica's file does not change it here. A weight this
                    // file changed (from this replica's previous file, not
                    // from the fleet's: a replica still on an older file
                    // must not push it back) is written to the fleet at the
                    // next sync, and served by every replica from there.
                    for (name, r) in &mut rollouts {
                        if let Some(k) = kept.get(name).filter(|k| k.canary_pool == r.canary_pool) {
                            r.clone_from(k);
                        }
                    }
                    events.retain(|e| e.event != "weight");
                    let old = Arc::clone(&inner.config);
                    let pushes: Vec<String> = config
                        .tenants
                        .iter()
                        .filter(|(name, t)| {
                            old.tenants.get(*name).is_some_and(|o| {
                                t.canary.is_some()
                                    && o.canary == t.canary
                                    && o.canary_weight != t.canary_weight
                            })
                        })
                        .map(|(name, _)| name.clone())
                        .collect();
                    inner.file_pushes.extend(pushes);
                    // New canaries, too, are the fleet's to hear of.
                    self.fleet_dirty.store(true, Relaxed);
                }
                events.push(Event {
                    tenant: None,
                    canary: None,
                    event: "reload",
                    actor,
                    before: None,
                    after: None,
                    reason: Some(format!("source hash {hash:016x}")),
                    figures: None,
                });
                inner.rollouts = rollouts;
                inner.config = Arc::new(config);
                inner.source_hash = hash;
                inner.record(&events);
                inner.save();
                self.publish(&inner);
                self.reloads.applied.fetch_add(1, Relaxed);
                tracing::info!(file = %file, generation = self.generation(), tenants = inner.config.tenants.len(), "config reloaded");
                let s = status("applied", None, self.generation());
                inner.last_reload = Some(s.clone());
                Ok(s)
            }
        }
    }

    /// An operator's change to a tenant's canary. `if_match`, when given,
    /// must be the current generation (the fleet's, in a fleet).
    ///
    /// In a fleet the change is written to the fleet first (compare-and-set
    /// on the canary's rev, and on the generation with `If-Match`), so two
    /// operators on two replicas never overwrite each other; with Redis
    /// away only a rollback is taken (alone, written on reconnect).
    pub async fn operate(
        &self,
        tenant: &str,
        op: Operation,
        actor: Actor,
        if_match: Option<u64>,
    ) -> Result<Rollout, ControlError> {
        // A change that lost a race with another replica's (without
        // If-Match) is tried again on the fresh state, once.
        for attempt in 0..2 {
            match self.operate_once(tenant, op, actor, if_match).await {
                Err(ControlError::Moved(_)) if attempt == 0 => {
                    self.sync_fleet()
                        .await
                        .map_err(|e| ControlError::FleetUnavailable(e.to_string()))?;
                }
                other => return other,
            }
        }
        Err(ControlError::Conflict(format!(
            "the canary of `{tenant}` keeps changing on other replicas: try again"
        )))
    }

    async fn operate_once(
        &self,
        tenant: &str,
        op: Operation,
        actor: Actor,
        if_match: Option<u64>,
    ) -> Result<Rollout, ControlError> {
        let mut inner = self.inner.lock().await;
        if !inner.in_charge {
            return Err(ControlError::HandingOver);
        }
        let alone = self.fleet.as_ref().is_some_and(|l| !l.in_fleet());
        if alone && op != Operation::Rollback {
            return Err(ControlError::FleetUnavailable(
                "the fleet's Redis is unreachable: only a rollback can be made now".into(),
            ));
        }
        if self.fleet.is_none() || alone {
            let current = self.generation();
            if let Some(given) = if_match.filter(|g| *g != current) {
                return Err(ControlError::StaleGeneration { given, current });
            }
        }
        let config = Arc::clone(&inner.config);
        let t = config
            .tenants
            .get(tenant)
            .ok_or_else(|| ControlError::UnknownTenant(tenant.to_owned()))?;
        let promotion = config.policies[&t.policy].promotion.as_ref();
        let mut rollout = inner
            .rollouts
            .get(tenant)
            .cloned()
            .ok_or_else(|| ControlError::NoCanary(tenant.to_owned()))?;
        let before = Position::new(rollout.state, rollout.weight);
        let conflict = |what: &str, state: RolloutState| {
            ControlError::Conflict(format!("cannot {what} a canary that is {}", state.as_str()))
        };
        let event = match op {
            Operation::Weight(w) => {
                if rollout.state == RolloutState::RolledBack {
                    return Err(ControlError::Conflict(
                        "the canary is rolled_back: resume it first".into(),
                    ));
                }
                rollout.weight = w;
                rollout.step = None;
                rollout.held = Duration::ZERO;
                if rollout.state == RolloutState::Promoted && w.basis_points() < Weight::FULL {
                    rollout.state = RolloutState::Progressing;
                }
                "weight"
            }
            Operation::Promote => {
                if rollout.state == RolloutState::RolledBack {
                    return Err(conflict("promote", rollout.state));
                }
                rollout.weight = Weight::from_basis_points(Weight::FULL).expect("100 % is a weight");
                rollout.state = RolloutState::Promoted;
                rollout.reason = Some("promoted by an operator".into());
                "promoted"
            }
            Operation::Rollback => {
                if rollout.state == RolloutState::RolledBack {
                    return Err(conflict("roll back", rollout.state));
                }
                rollout.roll_back("manual", None);
                "rolled_back"
            }
            Operation::Pause => {
                if rollout.state != RolloutState::Progressing {
                    return Err(conflict("pause", rollout.state));
                }
                rollout.state = RolloutState::Paused;
                rollout.reason = Some("paused by an operator".into());
                "paused"
            }
            Operation::Resume => match rollout.state {
                RolloutState::Paused => {
                    rollout.state = RolloutState::Progressing;
                    rollout.reason = None;
                    "resumed"
                }
                RolloutState::RolledBack => {
                    let pool = rollout.canary_pool.clone();
                    let generation = rollout.generation.wrapping_add(1);
                    rollout = Rollout::start(&pool, t.canary_weight, promotion);
                    rollout.generation = generation;
                    "resumed"
                }
                state => return Err(conflict("resume", state)),
            },
        };
        let mut fleet_lines = None;
        let mut alone = alone;
        if let Some(link) = self.fleet.as_ref().filter(|_| !alone) {
            let write = Write {
                field: fleet::field(tenant, &rollout.canary_pool),
                expected_rev: inner.revs.get(tenant).copied().unwrap_or(0),
                record: link.record(actor, &rollout),
            };
            match link.commit(if_match, None, std::slice::from_ref(&write)).await {
                Ok(generation) => {
                    inner.revs.insert(tenant.to_owned(), generation);
                    self.fleet_generation.fetch_max(generation, Relaxed);
                    fleet_lines = Some(Arc::clone(link));
                }
                Err(FleetError::StaleGeneration { given, current }) => {
                    return Err(ControlError::StaleGeneration { given, current })
                }
                Err(FleetError::Moved(f)) => return Err(ControlError::Moved(f)),
                // Redis stopped answering just now: a rollback is taken
                // alone all the same (safety first), the rest refused.
                Err(e) if op != Operation::Rollback => {
                    return Err(ControlError::FleetUnavailable(e.to_string()))
                }
                Err(_) => alone = true,
            }
        }
        if op == Operation::Rollback {
            self.count_rollback(tenant, None);
            if alone {
                let base = store::Pending {
                    rev: inner.revs.get(tenant).copied().unwrap_or(0),
                    generation: rollout.generation.wrapping_sub(1),
                };
                inner.pending.insert(tenant.to_owned(), base);
                inner.save_pending();
            }
        }
        let after = Position::new(rollout.state, rollout.weight);
        tracing::info!(
            tenant,
            event,
            from = before.weight,
            to = after.weight,
            "canary changed by an operator"
        );
        let lines = inner.record(&[Event {
            tenant: Some(tenant.to_owned()),
            canary: Some(rollout.canary_pool.clone()),
            event,
            actor,
            before: Some(before),
            after: Some(after),
            reason: rollout.reason.clone(),
            figures: None,
        }]);
        inner.rollouts.insert(tenant.to_owned(), rollout.clone());
        inner.save();
        self.publish(&inner);
        if let Some(link) = fleet_lines {
            let _ = link.journal(&lines).await;
        }
        Ok(rollout)
    }

    /// Count a rollback of `tenant` (`check` `None`: an operator's) in its
    /// counters, which every table shares.
    fn count_rollback(&self, tenant: &str, check: Option<crate::analysis::verdict::Check>) {
        let table = self.routes.load();
        if let Some(i) = table.tenants().iter().position(|t| t.name() == tenant) {
            table.tenants()[i].stats().count_rollback(check);
        }
    }

    /// Build and publish the table for `inner`: the only `store` of it.
    fn publish(&self, inner: &Inner) {
        let current = self.routes.load_full();
        let table = RouteTable::build(
            &self.dns.effective(&inner.config),
            Arc::clone(&self.cookie_key),
            Some(&current),
            &inner.rollouts,
        );
        self.routes.store(Arc::new(table));
        self.generation.fetch_add(1, Relaxed);
    }
}

/// An automatic decision: what changed and its journal line.
struct Decision {
    change: Change,
    event: Event,
}

/// Where an automatic decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// By the fleet's leader, on the fleet's traffic.
    Fleet,
    /// By this process, on its own traffic.
    Local,
}

/// Apply one verdict to `rollout` under its tenant's policy; steps and
/// promotions only when `may_promote`. Logs what changed.
fn decide(
    config: &Config,
    j: &Judgement,
    rollout: &mut Rollout,
    elapsed: Duration,
    may_promote: bool,
) -> Option<Decision> {
    let tenant = config.tenants.get(&*j.tenant)?;
    let policy = &config.policies[&tenant.policy];
    let promotion = if may_promote {
        policy.promotion.as_ref()
    } else {
        None
    };
    let before = Position::new(rollout.state, rollout.weight);
    let change = rollout.on_verdict(&j.verdict, elapsed, j.new_requests, &policy.analysis, promotion)?;
    let after = Position::new(rollout.state, rollout.weight);
    let (event, reason, figures) = match &change {
        Change::RolledBack(b) => {
            tracing::warn!(
                tenant = %j.tenant,
                check = b.check.as_str(),
                observed = b.observed,
                limit = b.limit,
                canary_requests = b.canary.requests,
                canary_errors = b.canary.errors,
                stable_requests = b.stable.requests,
                stable_errors = b.stable.errors,
                "canary rolled back"
            );
            ("rolled_back", Some(b.check.as_str().to_owned()), Some(b.clone()))
        }
        Change::Stepped { from, to } => {
            tracing::info!(tenant = %j.tenant, from = from.percent(), to = to.percent(), "canary promotion step");
            ("step", Some("healthy for the step interval".to_owned()), None)
        }
        Change::Promoted { from } => {
            tracing::info!(tenant = %j.tenant, from = from.percent(), "canary promoted");
            ("promoted", Some("healthy at every step".to_owned()), None)
        }
    };
    let event = Event {
        tenant: Some(j.tenant.to_string()),
        canary: Some(rollout.canary_pool.clone()),
        event,
        actor: Actor::Auto,
        before: Some(before),
        after: Some(after),
        reason,
        figures,
    };
    Some(Decision { change, event })
}

/// The canary states the last process left; `distrust` says why they
/// cannot be trusted, when they cannot.
fn load_states(store: &Store) -> (BTreeMap<String, Rollout>, Option<String>) {
    match store.load() {
        Loaded::Fresh => (BTreeMap::new(), None),
        Loaded::States(states) => (states, None),
        Loaded::Unreadable(why) => {
            tracing::error!(reason = %why, "canary states unreadable: every canary starts rolled back (stable only) until resumed");
            (BTreeMap::new(), Some(why))
        }
    }
}

impl Inner {
    /// Journal `events`. A journal that cannot be written is logged, never
    /// a reason to keep a bad canary serving. Returns the lines written
    /// (a fleet's journal takes them too).
    fn record(&mut self, events: &[Event]) -> Vec<String> {
        let (time, unix_ms) = Entry::now();
        let entries: Vec<Entry<'_>> = events
            .iter()
            .map(|e| Entry {
                time: time.clone(),
                unix_ms,
                tenant: e.tenant.as_deref(),
                canary: e.canary.as_deref(),
                event: e.event,
                actor: e.actor,
                before: e.before,
                after: e.after,
                reason: e.reason.as_deref(),
                figures: e.figures.as_deref(),
                replica: self.replica.as_deref(),
            })
            .collect();
        match self.journal.append(&entries) {
            Ok(lines) => lines,
            Err(err) => {
                tracing::error!(path = %self.journal.path().display(), error = %err, "cannot write the journal");
                Vec::new()
            }
        }
    }

    fn save(&self) {
        if let Err(err) = self.store.save(&self.rollouts) {
            tracing::error!(error = %err, "cannot save canary states");
        }
    }

    fn save_pending(&self) {
        if let Err(err) = self.store.save_pending(&self.pending) {
            tracing::error!(error = %err, "cannot save the rollbacks made alone");
        }
    }
}

/// Settings a reload cannot change (listeners, threads, where state lives,
/// the cookie key's source): the running ones stay, and the log says so.
fn keep_fixed_settings(running: &Config, new: &mut Config) {
    let mut fixed = Vec::new();
    if new.listen != running.listen {
        fixed.push("listen");
        new.listen = running.listen;
    }
    if new.timeouts.shutdown_grace != running.timeouts.shutdown_grace {
        fixed.push("timeouts.shutdown_grace_seconds");
        new.timeouts.shutdown_grace = running.timeouts.shutdown_grace;
    }
    if new.threads != running.threads {
        fixed.push("threads");
        new.threads = running.threads;
    }
    if new.work_stealing != running.work_stealing {
        fixed.push("work_stealing");
        new.work_stealing = running.work_stealing;
    }
    if new.dns_servers != running.dns_servers {
        fixed.push("dns");
        new.dns_servers = running.dns_servers.clone();
    }
    if new.preserve_header_case != running.preserve_header_case {
        fixed.push("preserve_header_case");
        new.preserve_header_case = running.preserve_header_case;
    }
    if new.admin != running.admin {
        fixed.push("admin");
        new.admin = running.admin.clone();
    }
    if new.tls != running.tls {
        // Certificates reload on their own; the listener and where the
        // certificates live do not. A redirect to a TLS listener that does
        // not run is not made (see `RouteTable`).
        fixed.push("tls");
        new.tls.clone_from(&running.tls);
    }
    if new.log_format != running.log_format {
        fixed.push("log.format");
        new.log_format = running.log_format;
    }
    if new.metrics_listen != running.metrics_listen {
        fixed.push("metrics.listen");
        new.metrics_listen = running.metrics_listen;
    }
    if new.fleet != running.fleet {
        fixed.push("fleet");
        new.fleet.clone_from(&running.fleet);
    }
    if new.state_dir != running.state_dir {
        fixed.push("state_dir");
        new.state_dir.clone_from(&running.state_dir);
    }
    if new.cookies.secret_env != running.cookies.secret_env {
        fixed.push("cookies.secret_env");
        new.cookies.secret_env.clone_from(&running.cookies.secret_env);
    }
    if !fixed.is_empty() {
        tracing::warn!(keys = ?fixed, "changed keys are not reloadable and keep their running values: restart or upgrade (--upgrade) to apply them");
    }
}

/// The rollouts `config` calls for, given the previous ones: unchanged
/// canaries keep their state; a new canary pool starts a new rollout; a
/// changed weight in the file is an operator's weight change (except on a
/// rolled-back canary, which stays at 0 until resumed).
fn reconcile(
    config: &Config,
    mut previous: BTreeMap<String, Rollout>,
    distrust: Option<&str>,
    actor: Actor,
) -> (BTreeMap<String, Rollout>, Vec<Event>) {
    // Collected, not inserted one by one: a map built in one go has full
    // nodes (sorted inserts leave them half empty, ~0.9 KB per canary).
    let mut rollouts = Vec::new();
    let mut events = Vec::new();
    for (name, t) in &config.tenants {
        let Some(canary) = &t.canary else {
            continue;
        };
        let promotion = config.policies[&t.policy].promotion.as_ref();
        let event = |event, before, after: &Rollout, reason: Option<String>| Event {
            tenant: Some(name.clone()),
            canary: Some(canary.clone()),
            event,
            actor,
            before,
            after: Some(Position::new(after.state, after.weight)),
            reason,
            figures: None,
        };
        let rollout = match previous.remove(name).filter(|r| r.canary_pool == *canary) {
            Some(mut r) => {
                if r.file_weight != t.canary_weight {
                    let before = Position::new(r.state, r.weight);
                    r.file_weight = t.canary_weight;
                    if matches!(r.state, RolloutState::Progressing | RolloutState::Paused) {
                        r.weight = t.canary_weight;
                        r.step = None;
                        events.push(event("weight", Some(before), &r, None));
                    }
                }
                r
            }
            None => {
                let mut r = Rollout::start(canary, t.canary_weight, promotion);
                events.push(event("started", None, &r, None));
                if let Some(why) = distrust {
                    let before = Position::new(r.state, r.weight);
                    r.roll_back("state_unreadable", None);
                    let mut e = event("rolled_back", Some(before), &r, Some(why.to_owned()));
                    e.actor = Actor::Auto;
                    events.push(e);
                }
                r
            }
        };
        rollouts.push((name.clone(), rollout));
    }
    for (name, r) in previous {
        events.push(Event {
            tenant: Some(name),
            canary: Some(r.canary_pool.clone()),
            event: "removed",
            actor,
            before: Some(Position::new(r.state, r.weight)),
            after: None,
            reason: None,
            figures: None,
        });
    }
    (rollouts.into_iter().collect(), events)
}
