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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::sync::Mutex;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::analysis::rollout::{Change, Rollout, RolloutState};
use crate::analysis::verdict::{Breach, Verdict};
use crate::config::{Config, ConfigError, Problem, Weight};
use crate::routing::{CookieKey, RouteTable};

use self::journal::Entry;
pub use self::journal::{Actor, Journal, Position};
pub use self::store::{Loaded, Store};

pub mod journal;
pub mod store;

/// Owner of the published route table and of the rollouts.
pub struct Control {
    routes: Arc<ArcSwap<RouteTable>>,
    cookie_key: Arc<CookieKey>,
    source: Option<PathBuf>,
    generation: AtomicU64,
    reloads: Arc<ReloadCounters>,
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
}

/// Reloads applied, rejected and found unchanged, for `/metrics`.
#[derive(Debug, Default)]
pub struct ReloadCounters {
    /// Applied.
    pub applied: AtomicU64,
    /// Refused (the old config kept serving).
    pub rejected: AtomicU64,
    /// The file had not changed.
    pub unchanged: AtomicU64,
    /// Graceful upgrades: sockets handed to a new process.
    pub upgrades_handed_over: AtomicU64,
    /// SIGQUITs refused: no new process was waiting for the sockets.
    pub upgrades_no_successor: AtomicU64,
    /// Upgrades whose new process did not take the sockets (this one went
    /// on serving).
    pub upgrades_not_taken: AtomicU64,
}

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
    /// This process is handing over to a new one (graceful upgrade).
    #[error("this fledge is handing over to a new process: ask again in a moment")]
    HandingOver,
}

/// One tenant's verdict of one analysis tick.
#[derive(Debug, Clone)]
pub struct Judgement {
    /// The tenant.
    pub tenant: Arc<str>,
    /// The verdict.
    pub verdict: Verdict,
    /// Canary requests since the previous tick.
    pub new_requests: u64,
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
    pub fn start(config: Config, cookie_key: CookieKey, source: Option<PathBuf>) -> anyhow::Result<Control> {
        Self::open(config, cookie_key, source, true)
    }

    /// As [`start`](Self::start), for a process that will take the sockets
    /// over from a running one: it builds its table from the states as they
    /// are now, but writes nothing until [`take_over`](Self::take_over).
    pub fn standby(
        config: Config,
        cookie_key: CookieKey,
        source: Option<PathBuf>,
    ) -> anyhow::Result<Control> {
        Self::open(config, cookie_key, source, false)
    }

    fn open(
        config: Config,
        cookie_key: CookieKey,
        source: Option<PathBuf>,
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
        let cookie_key = Arc::new(cookie_key);
        let (rollouts, events) = reconcile(&config, previous, distrust.as_deref(), Actor::File);
        let table = RouteTable::build(&config, Arc::clone(&cookie_key), None, &rollouts);
        let mut inner = Inner {
            config: Arc::new(config),
            rollouts,
            store,
            journal,
            source_hash,
            last_reload: None,
            in_charge,
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
    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
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

    /// The config in force.
    pub async fn config(&self) -> Arc<Config> {
        Arc::clone(&self.inner.lock().await.config)
    }

    /// Every rollout, by tenant.
    pub async fn rollouts(&self) -> BTreeMap<String, Rollout> {
        self.inner.lock().await.rollouts.clone()
    }

    /// Apply one analysis tick's verdicts; `elapsed` since the previous tick.
    pub async fn judge(&self, judgements: &[Judgement], elapsed: Duration) {
        let mut inner = self.inner.lock().await;
        if !inner.in_charge {
            return;
        }
        let config = Arc::clone(&inner.config);
        let mut events = Vec::new();
        for j in judgements {
            let (Some(tenant), Some(rollout)) =
                (config.tenants.get(&*j.tenant), inner.rollouts.get_mut(&*j.tenant))
            else {
                continue;
            };
            let policy = &config.policies[&tenant.policy];
            let before = Position::new(rollout.state, rollout.weight);
            let change = rollout.on_verdict(
                &j.verdict,
                elapsed,
                j.new_requests,
                &policy.analysis,
                policy.promotion.as_ref(),
            );
            let Some(change) = change else {
                continue;
            };
            let after = Position::new(rollout.state, rollout.weight);
            let (event, reason, figures) = match &change {
                Change::RolledBack(b) => ("rolled_back", Some(b.check.as_str().to_owned()), Some(b.clone())),
                Change::Stepped { .. } => ("step", Some("healthy for the step interval".to_owned()), None),
                Change::Promoted { .. } => ("promoted", Some("healthy at every step".to_owned()), None),
            };
            match &change {
                Change::RolledBack(b) => {
                    self.count_rollback(&j.tenant, Some(b.check));
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
                }
                Change::Stepped { from, to } => {
                    tracing::info!(tenant = %j.tenant, from = from.percent(), to = to.percent(), "canary promotion step");
                }
                Change::Promoted { from } => {
                    tracing::info!(tenant = %j.tenant, from = from.percent(), "canary promoted");
                }
            }
            events.push(Event {
                tenant: Some(j.tenant.to_string()),
                canary: Some(rollout.canary_pool.clone()),
                event,
                actor: Actor::Auto,
                before: Some(before),
                after: Some(after),
                reason,
                figures,
            });
        }
        if events.is_empty() {
            return;
        }
        inner.record(&events);
        inner.save();
        self.publish(&inner);
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
                crate::config::parse(&text, &file).map(|c| Some((c, hash)))
            });
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
                let (rollouts, mut events) = reconcile(&config, previous, None, actor);
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
    /// must be the current generation.
    pub async fn operate(
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
        let current = self.generation();
        if let Some(given) = if_match.filter(|g| *g != current) {
            return Err(ControlError::StaleGeneration { given, current });
        }
        let config = Arc::clone(&inner.config);
        let t = config
            .tenants
            .get(tenant)
            .ok_or_else(|| ControlError::UnknownTenant(tenant.to_owned()))?;
        let promotion = config.policies[&t.policy].promotion.as_ref();
        let rollout = inner
            .rollouts
            .get_mut(tenant)
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
                self.count_rollback(tenant, None);
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
                    *rollout = Rollout::start(&pool, t.canary_weight, promotion);
                    rollout.generation = generation;
                    "resumed"
                }
                state => return Err(conflict("resume", state)),
            },
        };
        let after_rollout = rollout.clone();
        let after = Position::new(rollout.state, rollout.weight);
        tracing::info!(
            tenant,
            event,
            from = before.weight,
            to = after.weight,
            "canary changed by an operator"
        );
        inner.record(&[Event {
            tenant: Some(tenant.to_owned()),
            canary: Some(after_rollout.canary_pool.clone()),
            event,
            actor,
            before: Some(before),
            after: Some(after),
            reason: after_rollout.reason.clone(),
            figures: None,
        }]);
        inner.save();
        self.publish(&inner);
        Ok(after_rollout)
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
            &inner.config,
            Arc::clone(&self.cookie_key),
            Some(&current),
            &inner.rollouts,
        );
        self.routes.store(Arc::new(table));
        self.generation.fetch_add(1, Relaxed);
    }
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
    /// a reason to keep a bad canary serving.
    fn record(&mut self, events: &[Event]) {
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
            })
            .collect();
        if let Err(err) = self.journal.append(&entries) {
            tracing::error!(path = %self.journal.path().display(), error = %err, "cannot write the journal");
        }
    }

    fn save(&self) {
        if let Err(err) = self.store.save(&self.rollouts) {
            tracing::error!(error = %err, "cannot save canary states");
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
