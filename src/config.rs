//! Configuration: the YAML file, parsed and validated into [`Config`].
//!
//! Loading is two steps, as in rpxy: `raw` mirrors the file with serde
//! (unknown keys refused), `validate` turns it into the runtime [`Config`]
//! and applies every cross-field rule. A refused file yields a
//! [`ConfigError`] that names the file, the line and the key path of each
//! problem, so `fledge check` and a refused reload say exactly what is wrong.
//!
//! `config/fledge.example.yaml` documents every key; `docs/config.md` says
//! which ones can be hot-reloaded.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use crate::analysis::rollout::Promotion;
pub use crate::analysis::verdict::Thresholds;

mod locate;
pub(crate) mod raw;
mod validate;
pub mod watch;

/// Header a client may send to pick a version, where its policy allows it.
pub const DEFAULT_OVERRIDE_HEADER: &str = "X-Fledge-Version";
/// Odoo's session cookie: the preferred sticky key.
pub const DEFAULT_STICKY_COOKIE: &str = "session_id";

/// A validated configuration. Building one never fails half-way: either
/// every rule holds, or [`load`]/[`parse`] return a [`ConfigError`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the proxy listens for plain HTTP (HTTP/1.1 and h2c).
    pub listen: SocketAddr,
    /// Worker threads of the proxy service (not hot-reloadable).
    pub threads: usize,
    /// Whether the proxy's threads share one work-stealing runtime (tasks
    /// move to idle threads; the default) rather than each run its own,
    /// connections staying on the thread that accepted them, as nginx's
    /// workers do. Not hot-reloadable.
    pub work_stealing: bool,
    /// Whether HTTP/1 header names keep their case through the proxy (off:
    /// standard names title-cased, others lower-cased; half the header-map
    /// work per request). Not hot-reloadable.
    pub preserve_header_case: bool,
    /// Downstream and upstream timeouts.
    pub timeouts: Timeouts,
    /// Limits on what a client may send.
    pub limits: Limits,
    /// Sticky cookie settings.
    pub cookies: Cookies,
    /// Who may mark requests as rehearsal traffic.
    pub rehearsal: Rehearsal,
    /// Where canary states and the decision journal are kept.
    pub state_dir: PathBuf,
    /// The admin listener.
    pub admin: AdminConfig,
    /// The TLS listener, if any.
    pub tls: Option<TlsConfig>,
    /// The fleet this replica belongs to (shared state on Redis), if any.
    pub fleet: Option<FleetConfig>,
    /// A listener serving `GET /metrics` without a token, for scrapers
    /// (not hot-reloadable).
    pub metrics_listen: Option<SocketAddr>,
    /// Peers (Traefik, a load balancer) whose forwarding headers are
    /// believed (`proxy::forwarded`).
    pub trusted_proxies: Vec<IpNet>,
    /// Load balancers that open each connection with a PROXY protocol
    /// header (`proxy::proxy_protocol`); empty: none is read.
    pub proxy_protocol_from: Vec<IpNet>,
    /// Name servers for workers by name (`dns.servers`); empty: the
    /// system's (`/etc/resolv.conf`).
    pub dns_servers: Vec<SocketAddr>,
    /// How the log is written (not reloadable: set at start).
    pub log_format: LogFormat,
    /// One JSON line a request on stdout (`proxy::access_log`).
    pub access_log: bool,
    /// Worker pools by name.
    pub pools: BTreeMap<String, PoolConfig>,
    /// Canary policies by name (always holds `default`).
    pub policies: BTreeMap<String, Policy>,
    /// Tenants by name.
    pub tenants: BTreeMap<String, TenantConfig>,
}

/// How fledge writes its log (to stderr).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object a line (time, level, target, message, fields), for
    /// a platform's log collector.
    Json,
}

/// A fleet of replicas sharing canary state on Redis (`crate::fleet`). Not
/// hot-reloadable.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// `redis://host:port/db` or `rediss://` (TLS).
    pub redis_url: String,
    /// Replicas with the same name form one fleet; it names the keys'
    /// hash tag (`{fledge:NAME}`).
    pub name: String,
    /// This replica's id, unique in the fleet (default: the host name).
    pub replica_id: String,
    /// The Redis password, read from `redis_password_env` at load.
    pub password: Option<String>,
    /// A replica that has not published for this long drops out of the
    /// fleet's sum (and of `GET /api/v1/fleet`'s live replicas).
    pub replica_timeout: Duration,
}

impl std::fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetConfig")
            .field("redis_url", &self.redis_url)
            .field("name", &self.name)
            .field("replica_id", &self.replica_id)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("replica_timeout", &self.replica_timeout)
            .finish()
    }
}

/// Who may mark requests as rehearsal traffic (`X-Fledge-Rehearsal`): a
/// client in `from`, or one that sends the token in
/// `X-Fledge-Rehearsal-Token`. Anyone else's header is stripped and counts
/// for nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rehearsal {
    /// Client networks whose rehearsal header is honoured.
    pub from: Vec<IpNet>,
    /// The token, read from `rehearsal.token_env` when the file is loaded.
    pub token: Option<String>,
}

/// Timeouts, each with its unit in its name in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to a worker.
    pub connect: Duration,
    /// Longest wait between two reads from a worker (Odoo reports can be slow).
    pub upstream_read: Duration,
    /// How long an idle client keep-alive connection stays open.
    pub client_keepalive: Duration,
    /// How long an idle WebSocket or long-polling connection stays open.
    pub websocket_idle: Duration,
    /// On SIGTERM (or after handing the sockets over in an upgrade), how
    /// long in-flight requests get to finish (not hot-reloadable).
    pub shutdown_grace: Duration,
}

/// Limits on client requests, tighter than Pingora's own (256 header fields,
/// 1 MiB of header block) and in line with Envoy's, nginx's and HAProxy's.
/// A request over one is answered before it is routed, and the connection
/// is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Request line and header fields together, in bytes (431 above).
    pub max_header_bytes: usize,
    /// Header fields (431 above).
    pub max_header_fields: usize,
    /// Request target, in bytes (414 above).
    pub max_request_line_bytes: usize,
    /// Open client connections, all listeners together; more are closed on
    /// arrival.
    pub max_connections: usize,
    /// Open client connections from one address.
    pub max_connections_per_ip: u32,
    /// Longest time a request header may take, all of it (slow clients).
    pub header_timeout: Duration,
    /// Longest time a TLS handshake may take, from accept.
    pub tls_handshake_timeout: Duration,
    /// Slowest average a request body may arrive at, after its first
    /// [`UPLOAD_GRACE`]; 0: no minimum.
    pub min_upload_bytes_per_second: u64,
}

/// How long a request body may trickle before its average rate is judged.
pub const UPLOAD_GRACE: Duration = Duration::from_secs(10);

/// Sticky cookie settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cookies {
    /// Environment variable holding the cookie signing secret. Without it a
    /// random secret is drawn at start, so signed cookies do not survive a
    /// restart (clients then fall back to their sticky key, which gives the
    /// same bucket again).
    pub secret_env: Option<String>,
    /// `Max-Age` of the cookies fledge sets.
    pub max_age_seconds: u64,
}

/// The admin listener (metrics, health, and the admin API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Its address; loopback by default.
    pub listen: SocketAddr,
    /// Where the bearer token comes from; never the config file itself.
    pub token: TokenSource,
    /// Admin connections open at once; more are closed on arrival.
    pub max_connections: usize,
}

/// TLS termination (not hot-reloadable; the certificates are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Where the proxy listens for HTTPS (HTTP/2 and HTTP/1.1 by ALPN).
    pub listen: SocketAddr,
    /// Directory of `name.crt` / `name.key` pairs, watched for changes.
    pub certs_dir: PathBuf,
    /// Load private keys that group or others can read (warned about);
    /// off: such a pair is refused.
    pub allow_readable_keys: bool,
}

/// Where the admin token is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// An environment variable.
    Env(String),
    /// A file (its content, trimmed).
    File(PathBuf),
    /// Neither: a random token is written to `state_dir/admin.token`.
    Generated,
}

/// How a canary is judged.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisPolicy {
    /// Longest stretch of time a verdict looks back over.
    pub window: Duration,
    /// Latency quantile judged, 0..1 (0.99 for p99).
    pub quantile: f64,
    /// The checks and the minimum sample.
    pub thresholds: Thresholds,
    /// Breaches in a row before a rollback.
    pub consecutive_breaches: u32,
    /// Odoo exception names (`error.data.name`) a user causes: their
    /// JSON-RPC errors are counted as `jsonrpc_client_error`, not failures.
    pub client_exceptions: Vec<String>,
    /// What tells failing clients apart.
    pub failing_clients_by: ClientKey,
}

/// What tells one client from another when failures are counted by client
/// (`analysis.failing_clients_by`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientKey {
    /// The sticky key the split used (`session_id`, else fledge's bucket
    /// cookie, else the address): many users behind one address (an
    /// office's NAT, a load balancer fledge does not see through) are many
    /// clients; a client making up sessions is many too.
    #[default]
    StickyKey,
    /// The client's address (IPv6 by its /64): made-up sessions are one
    /// client; so are all users behind one address.
    Address,
}

/// A named set of Odoo workers running one release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Workers for normal HTTP (Odoo's port 8069): the addresses written,
    /// and (in the table the proxy reads, `dns::Dns::effective`) every
    /// address of `worker_names`.
    pub workers: Vec<SocketAddr>,
    /// Workers for `/websocket` and `/longpolling/` (Odoo's gevent port 8072); may be empty.
    pub websocket_workers: Vec<SocketAddr>,
    /// Workers written as `host:port`: every address the name resolves to
    /// is a worker (a headless Service's pods).
    pub worker_names: Vec<WorkerName>,
    /// The same for the WebSocket workers.
    pub websocket_worker_names: Vec<WorkerName>,
    /// How often the names are resolved again.
    pub dns_refresh: Duration,
    /// How a worker is picked for a request.
    pub balance: Balance,
    /// Active health checking of the workers.
    pub health_check: HealthCheckConfig,
}

/// How a pool picks a worker for a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Balance {
    /// In turn.
    #[default]
    RoundRobin,
    /// The one with the fewest requests in flight (ties in turn): Odoo's
    /// workers are few and some requests long (reports, imports), so a
    /// worker busy with one should not get the next in its turn.
    LeastConnections,
}

/// A worker by DNS name and port (`odoo-v18.acme.svc.cluster.local:8069`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerName {
    /// The host name, as written.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl std::fmt::Display for WorkerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// TCP health check settings of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// Time between two checks of a worker.
    pub interval: Duration,
    /// Connect (and, for HTTP, answer) timeout of one check.
    pub timeout: Duration,
    /// `GET path` expecting this status (Odoo's `/web/health`, 200);
    /// `None`: a TCP connect is the check.
    pub http: Option<(String, u16)>,
    /// Failed checks in a row that take a worker out.
    pub failures: usize,
    /// Passed checks in a row that bring it back.
    pub successes: usize,
}

/// How a canary is split and who may override the split.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Request header that picks a version (`stable` or `canary`).
    pub override_header: http::HeaderName,
    /// Client networks allowed to use the override header; empty = nobody.
    pub override_from: Vec<IpNet>,
    /// Application cookie used as the sticky key (Odoo's `session_id`).
    pub sticky_cookie: String,
    /// How canaries under this policy are judged.
    pub analysis: AnalysisPolicy,
    /// Promotion steps, if the policy walks the weight up by itself.
    pub promotion: Option<Promotion>,
}

/// A tenant: an Odoo database known by its host names.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    /// Host patterns, lower case: exact names and `*.suffix` wildcards.
    pub hosts: Vec<HostPattern>,
    /// Name of the stable pool.
    pub stable: String,
    /// Name of the canary pool, while a release rolls out.
    pub canary: Option<String>,
    /// Share of clients sent to the canary.
    pub canary_weight: Weight,
    /// Name of the policy.
    pub policy: String,
    /// Answer plain-HTTP requests with a 308 to the same URL on `https`.
    pub redirect_http: bool,
}

/// A host name pattern.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostPattern {
    /// `acme.example.com`.
    Exact(String),
    /// `*.acme.example.com`, stored as its suffix `acme.example.com`: matches
    /// any name under it, at any depth.
    Wildcard(String),
}

/// A canary weight in basis points (hundredths of a percent): 0..=10_000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Weight(u16);

/// A refused configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read but breaks one or more rules.
    #[error("{}", DisplayProblems(file, problems))]
    Invalid {
        /// The file.
        file: String,
        /// Every problem found, in file order where known.
        problems: Vec<Problem>,
    },
}

/// `file` (whose text is `text`) refused for a reason found after it was
/// parsed (a worker name that does not resolve), at `path`'s line.
pub fn refusal(file: &str, text: &str, path: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_owned(),
        problems: vec![Problem {
            line: locate::line_of(text, path),
            path: path.to_owned(),
            reason,
        }],
    }
}

/// One reason a file is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the offending key, where it could be located.
    pub line: Option<usize>,
    /// Key path, e.g. `tenants.acme.canary_weight`.
    pub path: String,
    /// What is wrong, in a short sentence.
    pub reason: String,
}

struct DisplayProblems<'a>(&'a String, &'a Vec<Problem>);

/// Read, parse and validate the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&text, &file)
}

/// Parse and validate `text`; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    validate::validate(text, file)
}

// === impl Weight ===

impl Weight {
    /// The whole range, in basis points.
    pub const FULL: u16 = 10_000;

    /// A weight from basis points; `None` above 10 000.
    pub fn from_basis_points(bp: u16) -> Option<Self> {
        (bp <= Self::FULL).then_some(Weight(bp))
    }

    /// A weight from a percentage with at most two decimals.
    pub fn from_percent(percent: f64) -> Option<Self> {
        if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
            return None;
        }
        let bp = percent * 100.0;
        if (bp - bp.round()).abs() > 1e-6 {
            return None;
        }
        // In range and integral by the checks above.
        Self::from_basis_points(bp.round() as u16)
    }

    /// Basis points, 0..=10 000.
    pub fn basis_points(self) -> u16 {
        self.0
    }

    /// The weight as a percentage.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

/// On disk and in the API a weight is its percentage.
impl serde::Serialize for Weight {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.percent())
    }
}

impl<'de> serde::Deserialize<'de> for Weight {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let percent = f64::deserialize(d)?;
        Weight::from_percent(percent).ok_or_else(|| {
            serde::de::Error::custom(format!("{percent} is not a percentage with two decimals"))
        })
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.percent())
    }
}

// === impl HostPattern ===

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

// === impl DisplayProblems ===

impl fmt::Display for DisplayProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let DisplayProblems(file, problems) = self;
        for (i, p) in problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            match p.line {
                Some(line) => write!(f, "{file}:{line}: {}: {}", p.path, p.reason)?,
                None => write!(f, "{file}: {}: {}", p.path, p.reason)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
