//! Every Redis command fledge sends, and the keys it uses. One fleet's keys
//! share the hash tag `{fledge:NAME}`, so all of them live on one slot and
//! the Lua scripts below (which touch several keys) also run on Redis
//! Cluster.
//!
//! | key | type | what |
//! |---|---|---|
//! | `…:gen` | string | the fleet's generation: moves on at every change of a canary state |
//! | `…:seeded` | string | the generation the last seed left (a later seed may replace only that) |
//! | `…:rollouts` | hash | `tenant/canary_pool` → `rev|{"actor","replica","rollout"}` |
//! | `…:changes` | channel | the new generation, after every change (a hint) |
//! | `…:lease`, `…:fence` | string | the leader's `replica token`, with a TTL; the last token given |
//! | `…:figs:REPLICA` | stream | a replica's traffic figures, one entry per tick (`figures`) |
//! | `…:replicas` | hash | replica → its heartbeat (`Heartbeat`) |
//! | `…:journal` | stream | the fleet's decisions, capped |
//! | `…:key` | string | the cookie key's fingerprint (never the key) |
//!
//! The client is `redis` (redis-rs): its `ConnectionManager` multiplexes
//! every caller on one connection and reconnects by itself, scripts are sent
//! by SHA with a fallback to the source, pipelines are explicit, and TLS
//! goes through rustls with ring, the stack fledge already builds. `fred`
//! does as much with more of its own machinery (its own reconnect policy,
//! pools, a second TLS setup); we resubscribe and re-read ourselves
//! (`super::FleetService`), since a lost message must lose nothing anyway.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamRangeReply, StreamReadReply};
use serde::{Deserialize, Serialize};

use crate::analysis::rollout::Rollout;
use crate::config::FleetConfig;

/// How long one command may take: past it Redis counts as unreachable for
/// this call, and the caller goes on without it (a SIGSTOPped Redis hangs
/// every command; nothing may wait on it longer than this).
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);

/// Entries kept in a replica's figures stream: 30 s of ticks, enough for a
/// new leader to read back the last second and for a slow one to catch up.
const FIGURES_KEPT: usize = 300;

/// Entries kept in the fleet's journal stream (the local files keep all).
const JOURNAL_KEPT: usize = 10_000;

/// Why a call to Redis did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Redis did not answer, or answered with an error.
    #[error("the fleet's Redis is unreachable: {0}")]
    Unavailable(String),
    /// `If-Match` named a generation that is not the fleet's.
    #[error("generation {given} is stale: the fleet's is {current}")]
    StaleGeneration {
        /// What was expected.
        given: u64,
        /// What the fleet has.
        current: u64,
    },
    /// A record changed since it was read (another replica or operator
    /// came first).
    #[error("the canary state of `{0}` changed meanwhile")]
    Moved(String),
    /// The write carried a lease that is no longer the leader's.
    #[error("this replica no longer holds the fleet's lease")]
    Deposed,
}

/// A canary state as the fleet keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Who made the last change: `auto`, `api`, `file`.
    pub actor: String,
    /// The replica that made it.
    pub replica: String,
    /// The rollout.
    pub rollout: Rollout,
}

/// A record with the fleet generation it was written at.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The fleet generation of its last write.
    pub rev: u64,
    /// The record.
    pub record: Record,
}

/// The fleet's canary states, as read in one go.
#[derive(Debug, Default)]
pub struct FleetState {
    /// The fleet's generation; `None`: Redis holds no fleet (first start,
    /// or a Redis that restarted empty).
    pub generation: Option<u64>,
    /// By `tenant/canary_pool`.
    pub records: HashMap<String, Stored>,
}

/// One change of a commit.
#[derive(Debug)]
pub struct Write {
    /// `tenant/canary_pool`.
    pub field: String,
    /// The rev the writer read (0: the record must not exist).
    pub expected_rev: u64,
    /// The new record.
    pub record: Record,
}

/// A replica's heartbeat in `…:replicas`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    /// When it was written, Unix ms on Redis's clock (set by Redis).
    #[serde(default, skip_serializing)]
    pub seen_ms: u64,
    /// When the replica started, Unix ms.
    pub started_ms: u64,
    /// Requests a second it served, over the last heartbeat period.
    pub requests_per_second: f64,
    /// Whether it holds the lease.
    pub leader: bool,
}

/// The connection to the fleet's Redis, shared by the fleet service, the
/// control plane and the admin API.
pub struct Link {
    name: String,
    keys: Keys,
    replica: String,
    client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    up: AtomicBool,
    /// Moves on every time Redis answers after it did not (or for the
    /// first time): the fleet service then checks the key and re-reads.
    returns: AtomicU64,
    failures: AtomicU64,
    /// The cookie key's fingerprint differs from the fleet's: this replica
    /// stays out (judges alone, writes nothing to the fleet).
    refused: AtomicBool,
    fingerprint: String,
    replica_timeout: Duration,
    leader: AtomicBool,
    decisions_fleet: AtomicU64,
    decisions_local: AtomicU64,
    view: ArcSwap<FleetView>,
}

/// The fleet as this replica last saw it (heartbeats and the lease).
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    /// Every replica with a heartbeat in Redis, by id.
    pub replicas: Vec<(String, Heartbeat)>,
    /// Who holds the lease.
    pub leader: Option<String>,
    /// Redis's clock when this was read, Unix ms.
    pub redis_now_ms: u64,
    /// When this was read.
    pub read_at: Option<tokio::time::Instant>,
}

impl FleetView {
    /// Redis's clock now, as far as this view tells (its reading plus the
    /// time since).
    pub fn redis_now_ms(&self) -> u64 {
        let since = self.read_at.map_or(0, |t| t.elapsed().as_millis() as u64);
        self.redis_now_ms + since
    }
}

struct Keys {
    generation: String,
    seeded: String,
    rollouts: String,
    channel: String,
    lease: String,
    fence: String,
    replicas: String,
    journal: String,
    key: String,
    figures_prefix: String,
}

/// Check the expected generation and lease, then the expected rev of every
/// record; write them all at a new generation and announce it. Returns
/// `{status, generation, field}`: 1 done, 0 stale generation, -1 deposed,
/// -2 a record moved.
static COMMIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local gen = tonumber(redis.call('GET', KEYS[1]) or '0')
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= gen then return {0, gen, ''} end
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[3] then return {-1, gen, ''} end
local n = tonumber(ARGV[4])
for i = 0, n - 1 do
  local cur = redis.call('HGET', KEYS[2], ARGV[5 + 3 * i])
  local rev = 0
  if cur then rev = tonumber(string.match(cur, '^(%d+)|')) or 0 end
  if rev ~= tonumber(ARGV[6 + 3 * i]) then return {-2, gen, ARGV[5 + 3 * i]} end
end
local new = redis.call('INCR', KEYS[1])
for i = 0, n - 1 do
  redis.call('HSET', KEYS[2], ARGV[5 + 3 * i], new .. '|' .. ARGV[7 + 3 * i])
end
redis.call('PUBLISH', ARGV[1], new)
return {1, new, ''}
",
    )
});

/// Seed a Redis that holds no fleet with a replica's states at the
/// generation it last knew. A seed may replace another seed of a lower
/// generation (the highest wins), never a fleet written since (`…:seeded`
/// holds the generation the last seed left; any commit moves past it).
static SEED: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if cur then
  if tonumber(cur) >= tonumber(ARGV[2]) then return 0 end
  if redis.call('GET', KEYS[3]) ~= cur then return 0 end
end
redis.call('DEL', KEYS[2])
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  redis.call('HSET', KEYS[2], ARGV[4 + 2 * i], ARGV[2] .. '|' .. ARGV[5 + 2 * i])
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[3], ARGV[2])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
",
    )
});

/// Take the lease when nobody holds it (a new fencing token), or renew it
/// when this replica does. Returns the token, or 0.
static LEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local id, token = string.match(cur, '^(.*) (%d+)$')
  if id == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(token)
  end
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token, 'PX', ARGV[2])
return token
",
    )
});

/// Write a replica's heartbeat stamped with Redis's clock (the replicas'
/// clocks may disagree; ages are measured on one), and read everyone's.
/// Returns `{now_ms, field, value, field, value, …}`.
static HEARTBEAT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], now .. '|' .. ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
table.insert(all, 1, tostring(now))
return all
",
    )
});

/// Give the lease up if this replica holds it.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

impl Link {
    /// The link of this replica to its fleet; no connection yet
    /// ([`connect`](Self::connect) makes one in the calling runtime).
    pub fn new(config: &FleetConfig, fingerprint: String) -> anyhow::Result<Arc<Link>> {
        let mut info: redis::ConnectionInfo =
            redis::IntoConnectionInfo::into_connection_info(config.redis_url.as_str())
                .map_err(|e| anyhow::anyhow!("fleet.redis_url: {e}"))?;
        if let Some(password) = &config.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(|e| anyhow::anyhow!("fleet.redis_url: {e}"))?;
        let tag = format!("{{fledge:{}}}", config.name);
        let key = |k: &str| format!("{tag}:{k}");
        Ok(Arc::new(Link {
            name: config.name.clone(),
            keys: Keys {
                generation: key("gen"),
                seeded: key("seeded"),
                rollouts: key("rollouts"),
                channel: key("changes"),
                lease: key("lease"),
                fence: key("fence"),
                replicas: key("replicas"),
                journal: key("journal"),
                key: key("key"),
                figures_prefix: key("figs:"),
            },
            replica: config.replica_id.clone(),
            client,
            conn: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            returns: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            refused: AtomicBool::new(false),
            fingerprint,
            replica_timeout: config.replica_timeout,
            leader: AtomicBool::new(false),
            decisions_fleet: AtomicU64::new(0),
            decisions_local: AtomicU64::new(0),
            view: ArcSwap::from_pointee(FleetView::default()),
        }))
    }

    /// Make the connection every call uses, in the current tokio runtime
    /// (its driver task runs there; that runtime must outlive the calls).
    /// It connects lazily and reconnects by itself.
    pub fn connect(&self) -> anyhow::Result<()> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(1_000))
            .set_number_of_retries(2);
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|e| anyhow::anyhow!("cannot set up the fleet's Redis connection: {e}"))?;
        self.conn.store(Some(Arc::new(manager)));
        Ok(())
    }

    /// Drop the connection (the runtime it lives in is going away).
    pub fn disconnect(&self) {
        self.conn.store(None);
    }

    /// A connection for a dedicated subscriber (pub/sub needs its own).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, FleetError> {
        let connect = self.client.get_async_pubsub();
        let mut ps = tokio::time::timeout(COMMAND_TIMEOUT, connect)
            .await
            .map_err(|_| FleetError::Unavailable("connect timed out".into()))?
            .map_err(|e| FleetError::Unavailable(e.to_string()))?;
        ps.subscribe(&self.keys.channel)
            .await
            .map_err(|e| FleetError::Unavailable(e.to_string()))?;
        Ok(ps)
    }

    /// The fleet's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Whether the last call reached Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// How many times Redis answered again after it did not.
    pub fn returns(&self) -> u64 {
        self.returns.load(Relaxed)
    }

    /// Calls that failed, since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }

    /// Whether this replica was refused by the fleet (another cookie key).
    pub fn is_refused(&self) -> bool {
        self.refused.load(Relaxed)
    }

    /// Whether the fleet decides for this replica now: Redis answers and
    /// the fleet took it in. Otherwise it protects itself alone.
    pub fn in_fleet(&self) -> bool {
        self.is_up() && !self.is_refused()
    }

    /// A record of `rollout` written by this replica for `actor`.
    pub fn record(&self, actor: crate::control::Actor, rollout: &Rollout) -> Record {
        Record {
            actor: actor.as_str().to_owned(),
            replica: self.replica.clone(),
            rollout: rollout.clone(),
        }
    }

    /// Count an automatic decision: by the leader on the fleet's traffic,
    /// or by this replica alone.
    pub fn count_decision(&self, fleet: bool) {
        let counter = if fleet {
            &self.decisions_fleet
        } else {
            &self.decisions_local
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Automatic decisions made here: (by the fleet's leader, alone).
    pub fn decisions(&self) -> (u64, u64) {
        (
            self.decisions_fleet.load(Relaxed),
            self.decisions_local.load(Relaxed),
        )
    }

    /// Whether this replica holds the lease.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Relaxed)
    }

    /// Set by the fleet service when it takes or loses the lease.
    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Relaxed);
    }

    /// The fleet as last seen.
    pub fn view(&self) -> Arc<FleetView> {
        self.view.load_full()
    }

    /// Set by the fleet service after each heartbeat.
    pub fn set_view(&self, view: FleetView) {
        self.view.store(Arc::new(view));
    }

    /// The replicas seen within the replica timeout (on Redis's clock).
    pub fn live(&self) -> Vec<(String, Heartbeat)> {
        let timeout = self.replica_timeout.as_millis() as u64;
        let view = self.view();
        let now_ms = view.redis_now_ms();
        view.replicas
            .iter()
            .filter(|(_, h)| now_ms.saturating_sub(h.seen_ms) <= timeout)
            .cloned()
            .collect()
    }

    /// After this long without a heartbeat a replica is out of the fleet.
    pub fn replica_timeout(&self) -> Duration {
        self.replica_timeout
    }

    /// The stream key of `replica`'s figures.
    pub fn figures_key(&self, replica: &str) -> String {
        format!("{}{replica}", self.keys.figures_prefix)
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, FleetError> {
        let mut conn = self.connection()?;
        self.settle(cmd.query_async(&mut conn).await)
    }

    async fn run_pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, FleetError> {
        let mut conn = self.connection()?;
        self.settle(pipe.query_async(&mut conn).await)
    }

    fn connection(&self) -> Result<ConnectionManager, FleetError> {
        match self.conn.load_full() {
            Some(c) => Ok((*c).clone()),
            None => {
                self.up.store(false, Relaxed);
                Err(FleetError::Unavailable("not connected".into()))
            }
        }
    }

    fn settle<T>(&self, r: redis::RedisResult<T>) -> Result<T, FleetError> {
        match r {
            Ok(v) => {
                if !self.up.swap(true, Relaxed) {
                    self.returns.fetch_add(1, Relaxed);
                }
                Ok(v)
            }
            Err(e) => {
                if self.up.swap(false, Relaxed) {
                    tracing::warn!(replica = %self.replica, error = %e, "the fleet's Redis does not answer: this replica serves its last states and judges alone (it may roll back, never promote)");
                }
                self.failures.fetch_add(1, Relaxed);
                Err(FleetError::Unavailable(e.to_string()))
            }
        }
    }

    /// Compare this replica's cookie key with the fleet's (the first
    /// replica's fingerprint stays). `Err` carries why it must not join.
    pub async fn check_key(&self) -> Result<Result<(), String>, FleetError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&self.keys.key)
            .arg(&self.fingerprint)
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(&self.keys.key);
        let (fleet,): (Option<String>,) = self.run_pipe(&pipe).await?;
        let ok = fleet.as_deref().is_none_or(|f| f == self.fingerprint);
        self.refused.store(!ok, Relaxed);
        Ok(if ok {
            Ok(())
        } else {
            Err(format!(
                "this replica signs cookies with another key than the fleet's (fingerprint {}, the fleet's {}): give every replica the same cookies.secret_env, or a client moving between replicas changes version",
                self.fingerprint,
                fleet.unwrap_or_default()
            ))
        })
    }

    /// The fleet's generation alone (cheap: read at every period).
    pub async fn generation(&self) -> Result<Option<u64>, FleetError> {
        self.run(redis::cmd("GET").arg(&self.keys.generation)).await
    }

    /// Every canary state and the generation, read atomically.
    pub async fn read_state(&self) -> Result<FleetState, FleetError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("GET")
            .arg(&self.keys.generation)
            .cmd("HGETALL")
            .arg(&self.keys.rollouts);
        let (generation, raw): (Option<u64>, HashMap<String, String>) = self.run_pipe(&pipe).await?;
        let mut records = HashMap::with_capacity(raw.len());
        for (field, value) in raw {
            let parsed = value
                .split_once('|')
                .and_then(|(rev, json)| Some((rev.parse().ok()?, serde_json::from_str(json).ok()?)));
            match parsed {
                Some((rev, record)) => {
                    records.insert(field, Stored { rev, record });
                }
                None => tracing::warn!(field = %field, "unreadable canary state in the fleet: ignored"),
            }
        }
        Ok(FleetState { generation, records })
    }

    /// Write `writes` at a new generation, if the fleet is still at
    /// `expected_generation` (when given), `lease` is still the leader's
    /// (when given) and every record is at the rev its writer read.
    pub async fn commit(
        &self,
        expected_generation: Option<u64>,
        lease: Option<&str>,
        writes: &[Write],
    ) -> Result<u64, FleetError> {
        if self.is_refused() {
            return Err(FleetError::Unavailable(
                "this replica was refused by the fleet".into(),
            ));
        }
        let mut call = COMMIT.prepare_invoke();
        call.key(&self.keys.generation)
            .key(&self.keys.rollouts)
            .key(&self.keys.lease)
            .arg(&self.keys.channel)
            .arg(expected_generation.map(|g| g.to_string()).unwrap_or_default())
            .arg(lease.unwrap_or_default())
            .arg(writes.len());
        for w in writes {
            let json =
                serde_json::to_string(&w.record).map_err(|e| FleetError::Unavailable(e.to_string()))?;
            call.arg(&w.field).arg(w.expected_rev).arg(json);
        }
        let mut conn = self.connection()?;
        let (status, generation, field): (i64, u64, String) =
            self.settle(call.invoke_async(&mut conn).await)?;
        match status {
            1 => Ok(generation),
            0 => Err(FleetError::StaleGeneration {
                given: expected_generation.unwrap_or_default(),
                current: generation,
            }),
            -1 => Err(FleetError::Deposed),
            _ => Err(FleetError::Moved(field)),
        }
    }

    /// Seed the fleet with `records` at `generation`, unless it holds that
    /// generation or a later one. True when this replica's seed won.
    pub async fn seed(&self, generation: u64, records: &[(String, Record)]) -> Result<bool, FleetError> {
        if self.is_refused() {
            return Ok(false);
        }
        let mut call = SEED.prepare_invoke();
        call.key(&self.keys.generation)
            .key(&self.keys.rollouts)
            .key(&self.keys.seeded)
            .arg(&self.keys.channel)
            .arg(generation)
            .arg(records.len());
        for (field, record) in records {
            let json = serde_json::to_string(record).map_err(|e| FleetError::Unavailable(e.to_string()))?;
            call.arg(field).arg(json);
        }
        let mut conn = self.connection()?;
        let won: i64 = self.settle(call.invoke_async(&mut conn).await)?;
        Ok(won == 1)
    }

    /// Take or renew the lease for `ttl`: the fencing token when this
    /// replica holds it, else `None`.
    pub async fn lease(&self, ttl: Duration) -> Result<Option<u64>, FleetError> {
        if self.is_refused() {
            return Ok(None);
        }
        let mut call = LEASE.prepare_invoke();
        call.key(&self.keys.lease)
            .key(&self.keys.fence)
            .arg(&self.replica)
            .arg(ttl.as_millis() as u64);
        let mut conn = self.connection()?;
        let token: u64 = self.settle(call.invoke_async(&mut conn).await)?;
        Ok((token > 0).then_some(token))
    }

    /// The lease's value while this replica holds it with `token`.
    pub fn lease_value(&self, token: u64) -> String {
        format!("{} {token}", self.replica)
    }

    /// Give the lease up (shutting down): another replica leads at once.
    pub async fn release(&self, token: u64) -> Result<(), FleetError> {
        let mut call = RELEASE.prepare_invoke();
        call.key(&self.keys.lease).arg(self.lease_value(token));
        let mut conn = self.connection()?;
        let _: i64 = self.settle(call.invoke_async(&mut conn).await)?;
        Ok(())
    }

    /// Who holds the lease now.
    pub async fn leader(&self) -> Result<Option<String>, FleetError> {
        let value: Option<String> = self.run(redis::cmd("GET").arg(&self.keys.lease)).await?;
        Ok(value.and_then(|v| v.rsplit_once(' ').map(|(id, _)| id.to_owned())))
    }

    /// Write this replica's heartbeat, and read everyone's; `seen_ms` of
    /// each is Redis's clock when written, and the view's `redis_now_ms`
    /// Redis's clock now.
    pub async fn heartbeat(&self, beat: &Heartbeat) -> Result<FleetView, FleetError> {
        if self.is_refused() {
            return Err(FleetError::Unavailable(
                "this replica was refused by the fleet".into(),
            ));
        }
        let json = serde_json::to_string(beat).map_err(|e| FleetError::Unavailable(e.to_string()))?;
        let mut call = HEARTBEAT.prepare_invoke();
        call.key(&self.keys.replicas).arg(&self.replica).arg(json);
        let mut conn = self.connection()?;
        let reply: Vec<String> = self.settle(call.invoke_async(&mut conn).await)?;
        let read_at = tokio::time::Instant::now();
        let mut it = reply.into_iter();
        let redis_now_ms = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let mut replicas = Vec::new();
        while let (Some(id), Some(value)) = (it.next(), it.next()) {
            let parsed = value.split_once('|').and_then(|(ms, json)| {
                let mut h: Heartbeat = serde_json::from_str(json).ok()?;
                h.seen_ms = ms.parse().ok()?;
                Some(h)
            });
            if let Some(h) = parsed {
                replicas.push((id, h));
            }
        }
        replicas.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(FleetView {
            replicas,
            leader: None,
            redis_now_ms,
            read_at: Some(read_at),
        })
    }

    /// Forget replicas gone for long (their heartbeats and figures).
    pub async fn forget(&self, replicas: &[String]) -> Result<(), FleetError> {
        if replicas.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("HDEL").arg(&self.keys.replicas).arg(replicas).ignore();
        for r in replicas {
            pipe.cmd("DEL").arg(self.figures_key(r)).ignore();
        }
        self.run_pipe::<()>(&pipe).await
    }

    /// Append this replica's figures of one tick (nothing from a refused
    /// replica: it is not in the fleet's sum).
    pub async fn publish_figures(&self, fields: &[(&str, &str)]) -> Result<(), FleetError> {
        if self.is_refused() {
            return Ok(());
        }
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.figures_key(&self.replica))
            .arg("MAXLEN")
            .arg("~")
            .arg(FIGURES_KEPT)
            .arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        self.run::<String>(&cmd).await.map(drop)
    }

    /// The id after which `replica`'s newest `n` figures entries lie ("0-0"
    /// when it has fewer): where a new leader starts reading it. Taken
    /// from the stream itself, so the replicas' clocks do not matter.
    pub async fn recent_cursor(&self, replica: &str, n: usize) -> Result<String, FleetError> {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(self.figures_key(replica))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(n + 1);
        let reply: StreamRangeReply = self.run(&cmd).await?;
        Ok(match reply.ids.get(n) {
            Some(id) => id.id.clone(),
            None => "0-0".to_owned(),
        })
    }

    /// Figures of the given streams after the given ids, in one call.
    pub async fn read_figures(&self, streams: &[(String, String)]) -> Result<StreamReadReply, FleetError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(1_000).arg("STREAMS");
        for (key, _) in streams {
            cmd.arg(key);
        }
        for (_, id) in streams {
            cmd.arg(id);
        }
        let reply: Option<StreamReadReply> = self.run(&cmd).await?;
        Ok(reply.unwrap_or_default())
    }

    /// Append decisions to the fleet's journal.
    pub async fn journal(&self, lines: &[String]) -> Result<(), FleetError> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for line in lines {
            pipe.cmd("XADD")
                .arg(&self.keys.journal)
                .arg("MAXLEN")
                .arg("~")
                .arg(JOURNAL_KEPT)
                .arg("*")
                .arg("e")
                .arg(line)
                .ignore();
        }
        self.run_pipe::<()>(&pipe).await
    }

    /// The newest `limit` journal lines written after `since_ms`, oldest
    /// first.
    pub async fn read_journal(&self, since_ms: u64, limit: usize) -> Result<Vec<String>, FleetError> {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(&self.keys.journal)
            .arg("+")
            .arg(format!("({since_ms}-18446744073709551615"))
            .arg("COUNT")
            .arg(limit);
        if since_ms == 0 {
            cmd = redis::cmd("XREVRANGE");
            cmd.arg(&self.keys.journal)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(limit);
        }
        let reply: StreamRangeReply = self.run(&cmd).await?;
        let mut lines: Vec<String> = reply.ids.iter().filter_map(|id| id.get::<String>("e")).collect();
        lines.reverse();
        Ok(lines)
    }
}
