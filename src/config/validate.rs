//! `raw::File` → [`Config`]: every cross-field rule lives here.
//!
//! Each problem is collected with its key path, so one `fledge check` run
//! lists everything that is wrong, not just the first thing.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use super::locate::line_of;
use super::raw;
use std::path::PathBuf;

use super::{
    AdminConfig, AnalysisPolicy, Balance, ClientKey, Config, ConfigError, Cookies, FleetConfig,
    HealthCheckConfig, HostPattern, Limits, LogFormat, Policy, PoolConfig, Problem, Promotion, Rehearsal,
    TenantConfig, Thresholds, Timeouts, TlsConfig, TokenSource, Weight, WorkerName, DEFAULT_OVERRIDE_HEADER,
    DEFAULT_STICKY_COOKIE,
};

/// Name of the policy used by tenants that name none.
const DEFAULT_POLICY: &str = "default";
/// Upper bound on `threads`: beyond this it is a typo, not a machine.
const MAX_THREADS: usize = 1024;
/// Default admin listener: loopback only.
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// Default `admin.max_connections`: operators, scripts and a Prometheus or
/// two need a handful; 64 leaves room and keeps the proxy's descriptors.
const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;
/// Default state directory, relative to the working directory.
const DEFAULT_STATE_DIR: &str = "fledge-state";

/// A replica silent for 3 s (30 ticks) is gone: long enough for a GC-free
/// process's scheduling hiccup, short enough that a dead replica's figures
/// stop counting within the 1 s-to-act budget's order of magnitude.
const DEFAULT_REPLICA_TIMEOUT_MS: u64 = 3_000;

/// The host name, as `replica_id` defaults to (a pod's name on Kubernetes).
fn default_replica_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "fledge".to_owned())
}
/// Longest analysis window: beyond this a rollback is no longer "fast".
const MAX_WINDOW_SECONDS: u64 = 600;

/// Default `analysis.min_failing_clients`: five clients. One attacker, or
/// a couple of users whose sessions expired, or one broken integration
/// script, are fewer; a release that fails its users fails far more than
/// five of them within the first second at the 200 requests a second
/// fledge's rollback target is stated for. (`docs/analysis.md`.)
const DEFAULT_MIN_FAILING_CLIENTS: u64 = 5;
/// Highest `analysis.min_failing_clients`: half the client groups, beyond
/// which group collisions would make the count reach it only for far more
/// clients than asked.
const MAX_MIN_FAILING_CLIENTS: u64 = (crate::metrics::CLIENT_GROUPS / 2) as u64;
/// Lowest `analysis.max_client_failure_share_percent`: at a share `s`,
/// failures count only from at least `1 / s` client groups failing alike;
/// half the groups (16) is as many as the count can ask for.
const MIN_CLIENT_FAILURE_SHARE_PERCENT: f64 = 200.0 / crate::metrics::CLIENT_GROUPS as f64;
/// Default `analysis.max_client_failure_share_percent`: no client counts for
/// more than a quarter of a window's failures.
const DEFAULT_MAX_CLIENT_FAILURE_SHARE_PERCENT: f64 = 25.0;

/// Default `Max-Age` of fledge's cookies: a week, about an Odoo session's life.
const DEFAULT_COOKIE_MAX_AGE_SECONDS: u64 = 7 * 24 * 3600;

struct Checker<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

pub(super) fn validate(text: &str, file: &str) -> Result<Config, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        file: file.to_owned(),
        problems,
    };
    let raw: raw::File = match parse_yaml(text) {
        Ok(raw) => raw,
        Err(p) => return Err(invalid(vec![p])),
    };
    let mut c = Checker {
        text,
        problems: Vec::new(),
    };
    let config = c.file(raw);
    if c.problems.is_empty() {
        Ok(config)
    } else {
        c.problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(invalid(c.problems))
    }
}

fn parse_yaml(text: &str) -> Result<raw::File, Problem> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let line = inner.location().map(|l| l.line());
        let mut reason = inner.to_string();
        // serde_yaml repeats the path and the position; we print both apart.
        if let Some((prefix, rest)) = reason.split_once(": ") {
            if path.starts_with(prefix) {
                reason = rest.to_owned();
            }
        }
        while let Some(at) = reason.find(" at line ") {
            // Drop " at line N column M", keep what follows (", while parsing …").
            let rest = &reason[at + 1..];
            let end = rest.find(',').map_or(reason.len(), |c| at + 1 + c);
            reason.replace_range(at..end, "");
        }
        // A syntax error leaves an unknown last segment (`tenants.?`).
        let path = path.trim_end_matches(".?");
        Problem {
            line,
            path: if path == "." || path == "?" {
                "(file)".into()
            } else {
                path.to_owned()
            },
            reason,
        }
    })
}

impl Checker<'_> {
    fn problem(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        let path = path.into();
        self.problems.push(Problem {
            line: line_of(self.text, &path),
            path,
            reason: reason.into(),
        });
    }

    fn file(&mut self, raw: raw::File) -> Config {
        let listen = self
            .socket_addr("listen", &raw.listen)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)));
        let threads = match raw.threads {
            Some(0) => {
                self.problem("threads", "must be at least 1");
                1
            }
            Some(n) if n > MAX_THREADS => {
                self.problem("threads", format!("must be at most {MAX_THREADS}"));
                1
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let timeouts = self.timeouts(&raw.timeouts);
        let limits = self.limits(&raw.limits);
        let cookies = self.cookies(raw.cookies);
        let rehearsal = self.rehearsal(&raw.rehearsal);
        let admin_listen = raw.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
        let token = match (raw.admin.token_env, raw.admin.token_file) {
            (Some(_), Some(_)) => {
                self.problem("admin.token_file", "give `token_env` or `token_file`, not both");
                TokenSource::Generated
            }
            (Some(var), None) => {
                if !is_env_name(&var) {
                    self.problem(
                        "admin.token_env",
                        format!("`{var}` is not an environment variable name"),
                    );
                }
                TokenSource::Env(var)
            }
            (None, Some(file)) => TokenSource::File(PathBuf::from(file)),
            (None, None) => TokenSource::Generated,
        };
        let admin = AdminConfig {
            listen: self
                .socket_addr("admin.listen", admin_listen)
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9901))),
            token,
            max_connections: match raw.admin.max_connections {
                Some(0) => {
                    self.problem("admin.max_connections", "must be at least 1");
                    DEFAULT_ADMIN_MAX_CONNECTIONS
                }
                Some(n) if n > 100_000 => {
                    self.problem("admin.max_connections", "must be at most 100000");
                    DEFAULT_ADMIN_MAX_CONNECTIONS
                }
                Some(n) => n as usize,
                None => DEFAULT_ADMIN_MAX_CONNECTIONS,
            },
        };
        let tls = raw.tls.map(|t| {
            let tls_listen = self.socket_addr("tls.listen", &t.listen);
            // fledge tells its TLS connections by the port they came in on.
            if tls_listen.is_some_and(|t| t.port() == 0) {
                self.problem("tls.listen", "needs a port of its own (not 0)");
            } else if tls_listen.is_some_and(|t| t.port() == listen.port()) {
                self.problem(
                    "tls.listen",
                    "has the port of `listen`: give the TLS listener its own port",
                );
            }
            if t.certs_dir.is_empty() {
                self.problem("tls.certs_dir", "must not be empty");
            }
            TlsConfig {
                listen: tls_listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8443))),
                certs_dir: PathBuf::from(t.certs_dir),
                allow_readable_keys: t.allow_readable_keys,
            }
        });
        let fleet = raw.fleet.map(|f| self.fleet(f, cookies.secret_env.is_some()));
        let trusted_proxies = self.networks("trusted_proxies", &raw.trusted_proxies);
        let dns_servers = raw.dns.map_or_else(Vec::new, |d| {
            if d.servers.is_empty() {
                self.problem(
                    "dns.servers",
                    "names no server: list IP:port, or leave dns out for the system's",
                );
            }
            self.addresses("dns.servers", &d.servers)
        });
        let proxy_protocol_from = raw.proxy_protocol.map_or_else(Vec::new, |p| {
            if p.from.is_empty() {
                self.problem(
                    "proxy_protocol.from",
                    "names no peer: list the load balancers' addresses, or leave proxy_protocol out",
                );
            }
            self.networks("proxy_protocol.from", &p.from)
        });
        let log_format = match raw.log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                self.problem("log.format", format!("`{other}` is not `text` or `json`"));
                LogFormat::Text
            }
        };
        let metrics_listen = raw.metrics.and_then(|m| {
            let addr = self.socket_addr("metrics.listen", &m.listen)?;
            let taken = [Some(listen), Some(admin.listen), tls.as_ref().map(|t| t.listen)];
            if addr.port() != 0 && taken.iter().flatten().any(|a| a.port() == addr.port()) {
                self.problem(
                    "metrics.listen",
                    "has the port of another listener: give the scrapers' listener its own",
                );
            }
            Some(addr)
        });
        let state_dir = PathBuf::from(raw.state_dir.as_deref().unwrap_or(DEFAULT_STATE_DIR));
        if state_dir.as_os_str().is_empty() {
            self.problem("state_dir", "must not be empty");
        }

        if raw.pools.is_empty() {
            self.problem("pools", "at least one pool is required");
        }
        let pools: BTreeMap<String, PoolConfig> = raw
            .pools
            .into_iter()
            .map(|(name, p)| {
                let pool = self.pool(&name, &p);
                (name, pool)
            })
            .collect();

        let mut policies: BTreeMap<String, Policy> = raw
            .policies
            .into_iter()
            .map(|(name, p)| {
                let policy = self.policy(&name, p);
                (name, policy)
            })
            .collect();
        policies
            .entry(DEFAULT_POLICY.to_owned())
            .or_insert_with(|| Policy {
                override_header: http::HeaderName::from_static("x-fledge-version"),
                override_from: Vec::new(),
                sticky_cookie: DEFAULT_STICKY_COOKIE.to_owned(),
                analysis: default_analysis(),
                promotion: None,
            });

        let tenants: BTreeMap<String, TenantConfig> = raw
            .tenants
            .into_iter()
            .map(|(name, t)| {
                let tenant = self.tenant(&name, t, &pools, &policies, tls.is_some());
                (name, tenant)
            })
            .collect();
        self.hosts_unique(&tenants);

        Config {
            listen,
            threads,
            work_stealing: raw.work_stealing.unwrap_or(true),
            preserve_header_case: raw.preserve_header_case.unwrap_or(false),
            timeouts,
            limits,
            cookies,
            rehearsal,
            state_dir,
            admin,
            tls,
            fleet,
            metrics_listen,
            trusted_proxies,
            proxy_protocol_from,
            dns_servers,
            log_format,
            access_log: raw.log.access.unwrap_or(false),
            pools,
            policies,
            tenants,
        }
    }

    fn fleet(&mut self, f: raw::Fleet, shared_secret: bool) -> FleetConfig {
        match f.redis_url.split_once("://") {
            Some(("redis" | "rediss", rest)) if !rest.is_empty() => {}
            _ => self.problem(
                "fleet.redis_url",
                "must be redis://host:port[/db] or rediss://host:port[/db]",
            ),
        }
        let id_like = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !id_like(&f.name) {
            self.problem("fleet.name", "must be 1 to 64 letters, digits, `-`, `_` or `.`");
        }
        let replica_id = f.replica_id.unwrap_or_else(default_replica_id);
        if !id_like(&replica_id) {
            self.problem(
                "fleet.replica_id",
                format!("`{replica_id}` must be 1 to 64 letters, digits, `-`, `_` or `.`"),
            );
        }
        if !shared_secret {
            self.problem(
                "fleet",
                "needs cookies.secret_env: every replica must sign cookies with the fleet's key, or a client moving between replicas changes version",
            );
        }
        let password = f.redis_password_env.and_then(|var| {
            if !is_env_name(&var) {
                self.problem(
                    "fleet.redis_password_env",
                    format!("`{var}` is not an environment variable name"),
                );
                return None;
            }
            let value = std::env::var(&var).ok();
            if value.is_none() {
                self.problem("fleet.redis_password_env", format!("`{var}` is not set"));
            }
            value
        });
        let timeout_ms = f.replica_timeout_ms.unwrap_or(DEFAULT_REPLICA_TIMEOUT_MS);
        if !(500..=60_000).contains(&timeout_ms) {
            self.problem("fleet.replica_timeout_ms", "must be 500 to 60000");
        }
        FleetConfig {
            redis_url: f.redis_url,
            name: f.name,
            replica_id,
            password,
            replica_timeout: Duration::from_millis(timeout_ms.clamp(500, 60_000)),
        }
    }

    fn socket_addr(&mut self, path: &str, value: &str) -> Option<SocketAddr> {
        match value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    path,
                    format!("`{value}` is not an address: expected IP:port, e.g. 127.0.0.1:8069 (host names are not resolved)"),
                );
                None
            }
        }
    }

    fn positive(&mut self, path: &str, value: Option<u64>, default: u64) -> u64 {
        match value {
            Some(0) => {
                self.problem(path, "must be greater than 0");
                default
            }
            Some(v) => v,
            None => default,
        }
    }

    fn timeouts(&mut self, t: &raw::Timeouts) -> Timeouts {
        Timeouts {
            connect: Duration::from_millis(self.positive("timeouts.connect_ms", t.connect_ms, 2_000)),
            upstream_read: Duration::from_secs(self.positive(
                "timeouts.upstream_read_seconds",
                t.upstream_read_seconds,
                300,
            )),
            client_keepalive: Duration::from_secs(self.positive(
                "timeouts.client_keepalive_seconds",
                t.client_keepalive_seconds,
                75,
            )),
            websocket_idle: Duration::from_secs(self.positive(
                "timeouts.websocket_idle_seconds",
                t.websocket_idle_seconds,
                3_600,
            )),
            shutdown_grace: Duration::from_secs(t.shutdown_grace_seconds.unwrap_or(10)),
        }
    }

    fn limits(&mut self, l: &raw::Limits) -> Limits {
        // Pingora's parser stops at 1 MiB and 256 fields: ours must fit;
        // the connection caps are bounded to catch a slipped digit.
        let mut bounded = |path: &str, value: Option<u64>, default: u64, max: u64| {
            let v = self.positive(path, value, default);
            if v > max {
                self.problem(path, format!("must be at most {max}"));
                return usize::try_from(default).unwrap_or(usize::MAX);
            }
            usize::try_from(v).unwrap_or(usize::MAX)
        };
        Limits {
            max_header_bytes: bounded(
                "limits.max_header_bytes",
                l.max_header_bytes,
                64 * 1024,
                1024 * 1024,
            ),
            max_header_fields: bounded("limits.max_header_fields", l.max_header_fields, 100, 256),
            max_request_line_bytes: bounded(
                "limits.max_request_line_bytes",
                l.max_request_line_bytes,
                8 * 1024,
                1024 * 1024,
            ),
            max_connections: bounded("limits.max_connections", l.max_connections, 20_000, 10_000_000),
            max_connections_per_ip: u32::try_from(bounded(
                "limits.max_connections_per_ip",
                l.max_connections_per_ip,
                1_000,
                10_000_000,
            ))
            .unwrap_or(u32::MAX),
            min_upload_bytes_per_second: l.min_upload_bytes_per_second.unwrap_or(1024),
            header_timeout: Duration::from_secs(self.positive(
                "limits.header_timeout_seconds",
                l.header_timeout_seconds,
                15,
            )),
            tls_handshake_timeout: Duration::from_secs(self.positive(
                "limits.tls_handshake_timeout_seconds",
                l.tls_handshake_timeout_seconds,
                10,
            )),
        }
    }

    fn cookies(&mut self, c: raw::Cookies) -> Cookies {
        if let Some(name) = &c.secret_env {
            if !is_env_name(name) {
                self.problem(
                    "cookies.secret_env",
                    format!("`{name}` is not an environment variable name"),
                );
            }
        }
        Cookies {
            secret_env: c.secret_env,
            max_age_seconds: self.positive(
                "cookies.max_age_seconds",
                c.max_age_seconds,
                DEFAULT_COOKIE_MAX_AGE_SECONDS,
            ),
        }
    }

    /// CIDRs (or single addresses) at `path`.
    fn networks(&mut self, path: &str, list: &[String]) -> Vec<IpNet> {
        let mut out = Vec::with_capacity(list.len());
        for (i, cidr) in list.iter().enumerate() {
            let parsed = cidr
                .parse::<IpNet>()
                .or_else(|_| cidr.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => out.push(net),
                Err(_) => self.problem(
                    format!("{path}[{i}]"),
                    format!("`{cidr}` is not a CIDR (e.g. 10.0.0.0/8) or IP address"),
                ),
            }
        }
        out
    }

    fn rehearsal(&mut self, r: &raw::Rehearsal) -> Rehearsal {
        let from = self.networks("rehearsal.from", &r.from);
        let token = r.token_env.as_ref().and_then(|var| {
            if !is_env_name(var) {
                self.problem(
                    "rehearsal.token_env",
                    format!("`{var}` is not an environment variable name"),
                );
                return None;
            }
            match std::env::var(var) {
                Ok(token) if token.len() >= 16 => Some(token),
                Ok(_) => {
                    self.problem(
                        "rehearsal.token_env",
                        format!("`{var}` holds fewer than 16 bytes: too short for a token"),
                    );
                    None
                }
                Err(_) => {
                    self.problem("rehearsal.token_env", format!("`{var}` is not set"));
                    None
                }
            }
        });
        Rehearsal { from, token }
    }

    fn addresses(&mut self, path: &str, list: &[String]) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::with_capacity(list.len());
        for (i, a) in list.iter().enumerate() {
            let item = format!("{path}[{i}]");
            if let Some(addr) = self.socket_addr(&item, a) {
                if out.contains(&addr) {
                    self.problem(item, format!("`{addr}` is listed twice"));
                } else {
                    out.push(addr);
                }
            }
        }
        out
    }

    /// Workers: `IP:port` each, or `host:port` with a DNS name, resolved
    /// at start and again every `dns_refresh_seconds` (`dns`).
    fn workers(&mut self, path: &str, list: &[String]) -> (Vec<SocketAddr>, Vec<WorkerName>) {
        let mut addrs: Vec<SocketAddr> = Vec::with_capacity(list.len());
        let mut names: Vec<WorkerName> = Vec::new();
        for (i, a) in list.iter().enumerate() {
            let item = format!("{path}[{i}]");
            if let Ok(addr) = a.parse::<SocketAddr>() {
                if addrs.contains(&addr) {
                    self.problem(item, format!("`{addr}` is listed twice"));
                } else {
                    addrs.push(addr);
                }
                continue;
            }
            let name = a.rsplit_once(':').and_then(|(host, port)| {
                let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
                is_dns_name(host).then(|| WorkerName {
                    host: host.to_owned(),
                    port,
                })
            });
            match name {
                Some(name) if names.contains(&name) => {
                    self.problem(item, format!("`{name}` is listed twice"));
                }
                Some(name) => names.push(name),
                None => self.problem(
                    item,
                    format!(
                        "`{a}` is not a worker: expected IP:port (127.0.0.1:8069) or host:port (odoo.acme.svc.cluster.local:8069)"
                    ),
                ),
            }
        }
        (addrs, names)
    }

    fn pool(&mut self, name: &str, p: &raw::Pool) -> PoolConfig {
        let base = format!("pools.{name}");
        self.name("pools", name);
        if p.workers.is_empty() {
            self.problem(format!("{base}.workers"), "a pool needs at least one worker");
        }
        let (workers, worker_names) = self.workers(&format!("{base}.workers"), &p.workers);
        let (websocket_workers, websocket_worker_names) =
            self.workers(&format!("{base}.websocket_workers"), &p.websocket_workers);
        let balance = match p.balance.as_deref() {
            None | Some("round_robin") => Balance::RoundRobin,
            Some("least_connections") => Balance::LeastConnections,
            Some(other) => {
                self.problem(
                    format!("{base}.balance"),
                    format!("`{other}` is not `round_robin` or `least_connections`"),
                );
                Balance::RoundRobin
            }
        };
        let dns_refresh = Duration::from_secs(self.positive(
            &format!("{base}.dns_refresh_seconds"),
            p.dns_refresh_seconds,
            5,
        ));
        let hc = &p.health_check;
        let health_check = HealthCheckConfig {
            interval: Duration::from_millis(self.positive(
                &format!("{base}.health_check.interval_ms"),
                hc.interval_ms,
                1_000,
            )),
            timeout: Duration::from_millis(self.positive(
                &format!("{base}.health_check.timeout_ms"),
                hc.timeout_ms,
                500,
            )),
            http: match (&hc.path, hc.expect_status) {
                (Some(path), status) => {
                    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                        self.problem(
                            format!("{base}.health_check.path"),
                            "must be an absolute path (`/web/health`), no spaces",
                        );
                    }
                    let status = status.unwrap_or(200);
                    if !(100..=599).contains(&status) {
                        self.problem(format!("{base}.health_check.expect_status"), "must be 100 to 599");
                    }
                    Some((path.clone(), status))
                }
                (None, Some(_)) => {
                    self.problem(
                        format!("{base}.health_check.expect_status"),
                        "needs `path` (an HTTP check)",
                    );
                    None
                }
                (None, None) => None,
            },
            failures: self.positive(&format!("{base}.health_check.failures"), hc.failures, 1) as usize,
            successes: self.positive(&format!("{base}.health_check.successes"), hc.successes, 1) as usize,
        };
        PoolConfig {
            workers,
            websocket_workers,
            worker_names,
            websocket_worker_names,
            dns_refresh,
            balance,
            health_check,
        }
    }

    fn policy(&mut self, name: &str, p: raw::Policy) -> Policy {
        let base = format!("policies.{name}");
        self.name("policies", name);
        let header = p.override_header.as_deref().unwrap_or(DEFAULT_OVERRIDE_HEADER);
        let override_header = match http::HeaderName::from_bytes(header.as_bytes()) {
            Ok(h) if !header.contains('_') => h,
            _ => {
                self.problem(
                    format!("{base}.override_header"),
                    format!("`{header}` is not a valid header name (letters, digits and '-')"),
                );
                http::HeaderName::from_static("x-fledge-version")
            }
        };
        let override_from = self.networks(&format!("{base}.override_from"), &p.override_from);
        let sticky_cookie = p
            .sticky_cookie
            .unwrap_or_else(|| DEFAULT_STICKY_COOKIE.to_owned());
        if sticky_cookie.is_empty() || !sticky_cookie.bytes().all(is_cookie_name_byte) {
            self.problem(
                format!("{base}.sticky_cookie"),
                format!("`{sticky_cookie}` is not a cookie name"),
            );
        }
        let analysis = self.analysis(&base, &p.analysis);
        let promotion = self.promotion(&base, p.steps.as_deref(), p.step_interval_seconds);
        Policy {
            override_header,
            override_from,
            sticky_cookie,
            analysis,
            promotion,
        }
    }

    fn analysis(&mut self, base: &str, a: &raw::Analysis) -> AnalysisPolicy {
        let d = default_analysis();
        let window_seconds = self.positive(
            &format!("{base}.analysis.window_seconds"),
            a.window_seconds,
            d.window.as_secs(),
        );
        if window_seconds > MAX_WINDOW_SECONDS {
            self.problem(
                format!("{base}.analysis.window_seconds"),
                format!("must be at most {MAX_WINDOW_SECONDS}"),
            );
        }
        let min_requests = self.positive(
            &format!("{base}.analysis.min_requests"),
            a.min_requests,
            d.thresholds.min_requests,
        );
        let percentile = a.latency_percentile.unwrap_or(d.quantile * 100.0);
        if !(50.0..=99.99).contains(&percentile) {
            self.problem(
                format!("{base}.analysis.latency_percentile"),
                format!("`{percentile}` is not between 50 and 99.99"),
            );
        }
        let mut limit = |key: &str, value: Option<Option<f64>>, default: Option<f64>| {
            let v = value.unwrap_or(default);
            if let Some(x) = v {
                if !x.is_finite() || x <= 0.0 {
                    self.problem(
                        format!("{base}.analysis.{key}"),
                        format!("`{x}` must be a positive number (or null: off)"),
                    );
                }
            }
            v
        };
        let t = &d.thresholds;
        let thresholds = Thresholds {
            min_requests,
            max_error_rate_percent: limit(
                "max_error_rate_percent",
                a.max_error_rate_percent,
                t.max_error_rate_percent,
            ),
            max_error_rate_increase_percent: limit(
                "max_error_rate_increase_percent",
                a.max_error_rate_increase_percent,
                t.max_error_rate_increase_percent,
            ),
            max_latency_ms: limit("max_p99_latency_ms", a.max_p99_latency_ms, t.max_latency_ms),
            max_latency_ratio: limit(
                "max_p99_latency_ratio",
                a.max_p99_latency_ratio,
                t.max_latency_ratio,
            ),
            min_failing_clients: t.min_failing_clients,
            max_client_failure_share: t.max_client_failure_share,
        };
        let mut thresholds = thresholds;
        match a.min_failing_clients {
            Some(n) if !(1..=MAX_MIN_FAILING_CLIENTS).contains(&n) => self.problem(
                format!("{base}.analysis.min_failing_clients"),
                format!(
                    "must be between 1 and {MAX_MIN_FAILING_CLIENTS} (clients are told apart in {} groups)",
                    crate::metrics::CLIENT_GROUPS
                ),
            ),
            Some(n) => thresholds.min_failing_clients = n,
            None => {}
        }
        match a.max_client_failure_share_percent {
            Some(p) if !(MIN_CLIENT_FAILURE_SHARE_PERCENT..=100.0).contains(&p) => self.problem(
                format!("{base}.analysis.max_client_failure_share_percent"),
                format!(
                    "`{p}` is not between {MIN_CLIENT_FAILURE_SHARE_PERCENT} and 100 (100: no limit; below, failures would count only from more client groups than are told apart, {})",
                    crate::metrics::CLIENT_GROUPS / 2
                ),
            ),
            Some(p) => thresholds.max_client_failure_share = p / 100.0,
            None => {}
        }
        if thresholds.max_latency_ratio.is_some_and(|r| r <= 1.0) {
            self.problem(
                format!("{base}.analysis.max_p99_latency_ratio"),
                "must be above 1 (canary over stable)",
            );
        }
        let consecutive_breaches = match a.consecutive_breaches {
            Some(0) => {
                self.problem(
                    format!("{base}.analysis.consecutive_breaches"),
                    "must be at least 1",
                );
                1
            }
            Some(n) => n,
            None => d.consecutive_breaches,
        };
        let client_exceptions = match &a.client_exceptions {
            None => d.client_exceptions,
            Some(names) => {
                for (i, name) in names.iter().enumerate() {
                    let ok = !name.is_empty()
                        && name.len() <= crate::proxy::classify::NAME_MAX
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
                    if !ok {
                        self.problem(
                            format!("{base}.analysis.client_exceptions[{i}]"),
                            format!(
                                "`{name}` is not an exception name as Odoo writes it (`module.ClassName`, at most {} bytes)",
                                crate::proxy::classify::NAME_MAX
                            ),
                        );
                    }
                }
                names.clone()
            }
        };
        let failing_clients_by = match a.failing_clients_by.as_deref() {
            None | Some("sticky_key") => ClientKey::StickyKey,
            Some("address") => ClientKey::Address,
            Some(other) => {
                self.problem(
                    format!("{base}.analysis.failing_clients_by"),
                    format!("`{other}` is neither `sticky_key` nor `address`"),
                );
                ClientKey::StickyKey
            }
        };
        AnalysisPolicy {
            window: Duration::from_secs(window_seconds),
            quantile: percentile / 100.0,
            thresholds,
            consecutive_breaches,
            client_exceptions,
            failing_clients_by,
        }
    }

    fn promotion(&mut self, base: &str, steps: Option<&[f64]>, interval: Option<u64>) -> Option<Promotion> {
        let Some(steps) = steps else {
            if interval.is_some() {
                self.problem(format!("{base}.step_interval_seconds"), "needs `steps`");
            }
            return None;
        };
        let mut weights = Vec::with_capacity(steps.len());
        for (i, &s) in steps.iter().enumerate() {
            match Weight::from_percent(s) {
                Some(w) if w.basis_points() > 0 && weights.last().is_none_or(|l| *l < w) => weights.push(w),
                Some(_) => self.problem(format!("{base}.steps[{i}]"), "steps must rise, each above 0"),
                None => self.problem(
                    format!("{base}.steps[{i}]"),
                    format!("`{s}` is not a percentage from 0 to 100 with at most two decimals"),
                ),
            }
        }
        if weights.last().is_none_or(|w| w.basis_points() != Weight::FULL) {
            self.problem(format!("{base}.steps"), "the last step must be 100");
        }
        let Some(seconds) = interval else {
            self.problem(format!("{base}.steps"), "steps need `step_interval_seconds`");
            return None;
        };
        let seconds = self.positive(&format!("{base}.step_interval_seconds"), Some(seconds), 1);
        Some(Promotion {
            steps: weights,
            step_interval: Duration::from_secs(seconds),
        })
    }

    fn tenant(
        &mut self,
        name: &str,
        t: raw::Tenant,
        pools: &BTreeMap<String, PoolConfig>,
        policies: &BTreeMap<String, Policy>,
        has_tls: bool,
    ) -> TenantConfig {
        let base = format!("tenants.{name}");
        if t.redirect_http && !has_tls {
            self.problem(
                format!("{base}.redirect_http"),
                "redirects to https need a `tls` listener",
            );
        }
        self.name("tenants", name);
        if t.hosts.is_empty() {
            self.problem(format!("{base}.hosts"), "a tenant needs at least one host name");
        }
        let mut hosts = Vec::with_capacity(t.hosts.len());
        for (i, h) in t.hosts.iter().enumerate() {
            match parse_host(h) {
                Ok(p) if hosts.contains(&p) => {
                    self.problem(format!("{base}.hosts[{i}]"), format!("`{h}` is listed twice"))
                }
                Ok(p) => hosts.push(p),
                Err(why) => self.problem(format!("{base}.hosts[{i}]"), format!("`{h}` {why}")),
            }
        }
        if !pools.contains_key(&t.stable) {
            self.problem(format!("{base}.stable"), unknown("pool", &t.stable, pools.keys()));
        }
        if let Some(canary) = &t.canary {
            if !pools.contains_key(canary) {
                self.problem(format!("{base}.canary"), unknown("pool", canary, pools.keys()));
            } else if *canary == t.stable {
                self.problem(
                    format!("{base}.canary"),
                    format!("`{canary}` is also the stable pool"),
                );
            }
        }
        let canary_weight = match t.canary_weight {
            None => Weight::default(),
            Some(w) => match Weight::from_percent(w) {
                Some(w) if w.basis_points() > 0 && t.canary.is_none() => {
                    self.problem(
                        format!("{base}.canary_weight"),
                        "a weight above 0 needs a `canary` pool",
                    );
                    Weight::default()
                }
                Some(w) => w,
                None => {
                    self.problem(
                        format!("{base}.canary_weight"),
                        format!("`{w}` is not a percentage from 0 to 100 with at most two decimals"),
                    );
                    Weight::default()
                }
            },
        };
        let policy = t.policy.unwrap_or_else(|| DEFAULT_POLICY.to_owned());
        if !policies.contains_key(&policy) {
            self.problem(
                format!("{base}.policy"),
                unknown("policy", &policy, policies.keys()),
            );
        }
        TenantConfig {
            hosts,
            stable: t.stable,
            canary: t.canary,
            canary_weight,
            policy,
            redirect_http: t.redirect_http,
        }
    }

    /// Names become metric labels and URL segments: keep them plain.
    fn name(&mut self, section: &str, name: &str) {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !ok {
            self.problem(
                format!("{section}.{name}"),
                "names are 1 to 64 letters, digits, '_', '-' or '.'",
            );
        }
    }

    /// No host pattern may match a pattern of another tenant: routing must
    /// never depend on which of two tenants is more specific.
    fn hosts_unique(&mut self, tenants: &BTreeMap<String, TenantConfig>) {
        let mut exact: HashMap<&str, (&str, usize)> = HashMap::new();
        let mut wild: HashMap<&str, (&str, usize)> = HashMap::new();
        for (tenant, t) in tenants {
            for (i, h) in t.hosts.iter().enumerate() {
                let (map, key) = match h {
                    HostPattern::Exact(n) => (&mut exact, n.as_str()),
                    HostPattern::Wildcard(s) => (&mut wild, s.as_str()),
                };
                if let Some((other, _)) = map.insert(key, (tenant, i)) {
                    let reason = format!("`{h}` is also a host of tenant `{other}`");
                    self.problem(format!("tenants.{tenant}.hosts[{i}]"), reason);
                }
            }
        }
        // An exact name or a wildcard under another tenant's wildcard overlaps it.
        let mut overlaps = Vec::new();
        for (is_wild, map) in [(false, &exact), (true, &wild)] {
            for (name, (tenant, i)) in map {
                let mut rest: &str = name;
                if is_wild {
                    rest = match rest.split_once('.') {
                        Some((_, r)) => r,
                        None => continue,
                    };
                }
                loop {
                    if let Some((other, _)) = wild.get(rest) {
                        let same = other == tenant;
                        let itself = is_wild && rest == *name;
                        if !same && !itself {
                            let shown = if is_wild {
                                format!("*.{name}")
                            } else {
                                (*name).to_owned()
                            };
                            overlaps.push((
                                format!("tenants.{tenant}.hosts[{i}]"),
                                format!("`{shown}` overlaps `*.{rest}` of tenant `{other}`"),
                            ));
                        }
                    }
                    match rest.split_once('.') {
                        Some((_, r)) => rest = r,
                        None => break,
                    }
                }
            }
        }
        for (path, reason) in overlaps {
            self.problem(path, reason);
        }
    }
}

/// Defaults for Odoo: judged relative to stable only, so a platform-wide
/// incident never rolls a canary back; 5 points more errors or a p99 twice
/// stable's, three times in a row, over up to 30 s and at least 50 requests.
fn default_analysis() -> AnalysisPolicy {
    AnalysisPolicy {
        window: Duration::from_secs(30),
        quantile: 0.99,
        thresholds: Thresholds {
            min_requests: 50,
            max_error_rate_percent: None,
            max_error_rate_increase_percent: Some(5.0),
            max_latency_ms: None,
            max_latency_ratio: Some(2.0),
            min_failing_clients: DEFAULT_MIN_FAILING_CLIENTS,
            max_client_failure_share: DEFAULT_MAX_CLIENT_FAILURE_SHARE_PERCENT / 100.0,
        },
        consecutive_breaches: 3,
        client_exceptions: crate::proxy::classify::DEFAULT_CLIENT_EXCEPTIONS
            .iter()
            .map(|&n| n.to_owned())
            .collect(),
        failing_clients_by: ClientKey::StickyKey,
    }
}

fn unknown<'a>(what: &str, name: &str, known: impl Iterator<Item = &'a String>) -> String {
    let known: Vec<&str> = known.map(String::as_str).collect();
    format!("unknown {what} `{name}` (known: {})", known.join(", "))
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parse `acme.example.com` or `*.acme.example.com` (lower-cased, no port).
pub(crate) fn parse_host(host: &str) -> Result<HostPattern, &'static str> {
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    let (wildcard, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest.to_owned()),
        None => (false, lower),
    };
    if name.is_empty() || name.len() > 253 {
        return Err("is not a host name");
    }
    if name.contains(':') {
        return Err("must not carry a port");
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err("is not a host name (wildcards only as a leading `*.`)");
        }
    }
    Ok(if wildcard {
        HostPattern::Wildcard(name)
    } else {
        HostPattern::Exact(name)
    })
}

/// A DNS host name: labels of letters, digits and `-` (not first or last),
/// 1 to 63 bytes each, 253 in all, one trailing dot allowed (absolute), at
/// least one letter (so that a mistyped IP address is not taken for one).
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.bytes().any(|b| b.is_ascii_alphabetic())
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
