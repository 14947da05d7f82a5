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

use crate::analysis::rollout::{Change, Rollout, RolloutState};
use crate::analysis::verdict::{Breach, Verdict};
use crate::config::Config;
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
    inner: Mutex<Inner>,
}

struct Inner {
    config: Arc<Config>,
    rollouts: BTreeMap<String, Rollout>,
    store: Store,
    journal: Journal,
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
    tenant: String,
    canary: Option<String>,
    event: &'static str,
    actor: Actor,
    before: Option<Position>,
    after: Option<Position>,
    reason: Option<String>,
    figures: Option<Breach>,
}

impl Control {
    /// Read the previous run's states from `config.state_dir`, reconcile them
    /// with `config`, and build the first table.
    pub fn start(config: Config, cookie_key: CookieKey) -> anyhow::Result<Control> {
        let dir = &config.state_dir;
        let store = Store::open(dir).with_context(|| format!("cannot use state_dir {}", dir.display()))?;
        let journal =
            Journal::open(dir).with_context(|| format!("cannot open the journal in {}", dir.display()))?;
        let (previous, distrust) = match store.load() {
            Loaded::Fresh => (BTreeMap::new(), None),
            Loaded::States(states) => (states, None),
            Loaded::Unreadable(why) => {
                tracing::error!(reason = %why, "canary states unreadable: every canary starts rolled back (stable only) until resumed");
                (BTreeMap::new(), Some(why))
            }
        };
        let cookie_key = Arc::new(cookie_key);
        let (rollouts, events) = reconcile(&config, previous, distrust.as_deref());
        let table = RouteTable::build(&config, Arc::clone(&cookie_key), None, &rollouts);
        let mut inner = Inner {
            config: Arc::new(config),
            rollouts,
            store,
            journal,
        };
        inner.record(events);
        inner.save();
        Ok(Control {
            routes: Arc::new(ArcSwap::from_pointee(table)),
            cookie_key,
            inner: Mutex::new(inner),
        })
    }

    /// The handle the data plane reads from.
    pub fn routes(&self) -> Arc<ArcSwap<RouteTable>> {
        Arc::clone(&self.routes)
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
                    if let Some(t) = self
                        .routes
                        .load()
                        .tenants()
                        .iter()
                        .find(|t| t.name() == &*j.tenant)
                    {
                        t.stats().count_rollback(Some(b.check));
                    }
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
                tenant: j.tenant.to_string(),
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
        inner.record(events);
        inner.save();
        self.publish(&inner);
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
    }
}

impl Inner {
    /// Journal `events`. A journal that cannot be written is logged, never
    /// a reason to keep a bad canary serving.
    fn record(&mut self, events: Vec<Event>) {
        for e in events {
            let (time, unix_ms) = Entry::now();
            let entry = Entry {
                time,
                unix_ms,
                tenant: &e.tenant,
                canary: e.canary.as_deref(),
                event: e.event,
                actor: e.actor,
                before: e.before,
                after: e.after,
                reason: e.reason.as_deref(),
                figures: e.figures.as_ref(),
            };
            if let Err(err) = self.journal.append(&entry) {
                tracing::error!(path = %self.journal.path().display(), error = %err, "cannot write the journal");
            }
        }
    }

    fn save(&self) {
        if let Err(err) = self.store.save(&self.rollouts) {
            tracing::error!(error = %err, "cannot save canary states");
        }
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
) -> (BTreeMap<String, Rollout>, Vec<Event>) {
    let mut rollouts = BTreeMap::new();
    let mut events = Vec::new();
    for (name, t) in &config.tenants {
        let Some(canary) = &t.canary else {
            continue;
        };
        let promotion = config.policies[&t.policy].promotion.as_ref();
        let event = |event, before, after: &Rollout, reason: Option<String>| Event {
            tenant: name.clone(),
            canary: Some(canary.clone()),
            event,
            actor: Actor::File,
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
        rollouts.insert(name.clone(), rollout);
    }
    for (name, r) in previous {
        events.push(Event {
            tenant: name,
            canary: Some(r.canary_pool.clone()),
            event: "removed",
            actor: Actor::File,
            before: Some(Position::new(r.state, r.weight)),
            after: None,
            reason: None,
            figures: None,
        });
    }
    (rollouts, events)
}
