//! Assembles the Pingora [`Server`]: the proxy service on `listen`, the
//! admin service on `admin.listen`, and the control-plane background
//! services. `main` only parses the command line and calls [`build`]; the
//! demo calls it too.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::{Admin, Token};
use crate::config::watch::ConfigWatcher;
use crate::config::{Config, TokenSource};
use crate::control::services::{AnalysisService, HealthChecks, WorkerNames};
use crate::control::Control;
use crate::handover::{self, DrainCounts, Signals};
use crate::metrics::Exporter;
use crate::proxy::connections::{ConnectionExporter, Connections, Guarded, TlsListener};
use crate::proxy::retry::{RetryBudget, RetryExporter};
use crate::proxy::{FledgeProxy, WRITE_BUFFER};
use crate::routing::CookieKey;
use crate::tls::watch::CertWatcher;
use crate::tls::{CertStore, TlsExporter};

/// Requests served on one client connection before it is closed (nginx's
/// `keepalive_requests` default): bounds per-connection memory.
const KEEPALIVE_REQUEST_LIMIT: u32 = 1_000;
/// Idle HTTP/2 client connections are closed after this long.
const H2_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Client sockets' read buffering below HTTP. Pingora gives every
/// connection a 64 KiB read buffer for as long as it is open, which is most
/// of what an idle kept-alive connection costs (10 000 of them: 640 MiB).
/// In clear text the HTTP layer reads into buffers of its own, so none is
/// needed (nginx reads headers into 1 KiB); over TLS, one TLS record
/// (16 KiB) saves rustls small reads. Writes go through [`WRITE_BUFFER`].
const PLAIN_BUFFERS: L4BufferSettings = L4BufferSettings {
    read: Some(0),
    write: Some(WRITE_BUFFER),
};
const TLS_BUFFERS: L4BufferSettings = L4BufferSettings {
    read: Some(16 * 1024),
    write: Some(WRITE_BUFFER),
};
/// Set (to anything but `0`), every request goes through Pingora's
/// `HttpProxy`, none on fledge's own path (`proxy::fast_path`): an escape
/// hatch should that path misbehave, and how the tests run through
/// `HttpProxy` alone (`make test`).
pub const PINGORA_PATH: &str = "FLEDGE_PINGORA_PATH";

/// Whether the common request takes fledge's own path ([`PINGORA_PATH`]).
fn own_path() -> bool {
    std::env::var_os(PINGORA_PATH).is_none_or(|v| v.is_empty() || v == "0")
}

/// Unix socket of the graceful upgrade, inside `state_dir`.
pub const UPGRADE_SOCKET: &str = "upgrade.sock";
/// File holding the pid of the process serving, inside `state_dir`:
/// written when it has the listening sockets.
pub const PID_FILE: &str = "fledge.pid";
/// File holding the generated admin token, inside `state_dir`.
pub const GENERATED_TOKEN_FILE: &str = "admin.token";

/// Process-level switches that are not part of the config file.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Take the listening sockets over from a running fledge (Pingora's
    /// graceful upgrade: start with this, then SIGQUIT the old process).
    pub upgrade: bool,
    /// The config file, watched and reloaded; `None` for an embedded one.
    pub source: Option<PathBuf>,
}

/// A built fledge, ready to serve.
pub struct Fledge {
    server: Server,
    control: Arc<Control>,
    state_dir: PathBuf,
}

impl Fledge {
    /// Serve until a signal ends the process: SIGTERM drains, SIGQUIT
    /// hands over to a new process (see [`crate::handover`]), SIGINT stops
    /// at once.
    pub fn run(self) -> ! {
        let (signals, handed) = Signals::new(Arc::clone(&self.control), self.state_dir.clone());
        self.server.run(RunArgs {
            shutdown_signal: Box::new(signals),
        });
        handover::after_drain(&self.control, &self.state_dir, &handed);
        std::process::exit(0)
    }
}

/// A collector shared with what it reads (the registry wants it boxed).
struct ArcCollector<C>(Arc<C>);

impl<C: prometheus::core::Collector> prometheus::core::Collector for ArcCollector<C> {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

/// Resolve the workers `config` names by DNS, before anything is served: a
/// name that does not resolve refuses the start, naming it and where it is
/// written.
fn resolve_worker_names(config: &Config, options: &Options) -> anyhow::Result<crate::dns::Dns> {
    let dns = crate::dns::Dns::new(config);
    // Pingora's runtimes do not run yet; the resolver holds nothing
    // between rounds, so a runtime of its own for this one is enough.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime to resolve worker names")?;
    if let Err(e) = runtime.block_on(dns.learn(config)) {
        let file = options
            .source
            .as_ref()
            .map_or_else(|| "(config)".to_owned(), |p| p.display().to_string());
        let text = options
            .source
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        return Err(crate::config::refusal(&file, &text, &e.path(config), e.to_string()).into());
    }
    Ok(dns)
}

/// Build the server for `config`; [`Fledge::run`] serves. Read top-down:
/// the control plane first (it decides what the proxy serves), then the
/// Pingora server that owns the listeners, the proxy (the data plane), the
/// admin and scrapers' listeners, and the control plane's loops.
pub fn build(config: &Config, options: &Options) -> anyhow::Result<Fledge> {
    let control = start_control(config, options)?;
    let token = admin_token(config)?;
    let registry = metrics(&control)?;
    let certificates = open_certificates(config, &registry)?;
    let (mut server, old_pid) = pingora_server(config, options, &control)?;
    add_proxy(&mut server, config, &control, certificates.as_ref(), &registry)?;
    add_admin(&mut server, config, &control, registry, token)?;
    add_control_loops(&mut server, config, options, &control, certificates, old_pid);
    tracing::info!(
        listen = %config.listen,
        tls = ?config.tls.as_ref().map(|t| t.listen),
        admin = %config.admin.listen,
        state_dir = %config.state_dir.display(),
        tenants = config.tenants.len(),
        pools = config.pools.len(),
        threads = config.threads,
        "fledge starting"
    );
    Ok(Fledge {
        server,
        control,
        state_dir: config.state_dir.clone(),
    })
}

/// The certificates of `tls.certs_dir` and their first load's report.
type Certificates = (CertStore, crate::tls::Report);

/// The control plane: canary states read and reconciled, worker names
/// resolved, the fleet joined.
fn start_control(config: &Config, options: &Options) -> anyhow::Result<Arc<Control>> {
    let cookie_key = cookie_key(config)?;
    let (source, start) = (options.source.clone(), config.clone());
    let dns = Arc::new(resolve_worker_names(config, options)?);
    let control = Arc::new(if options.upgrade {
        Control::standby(start, cookie_key, source, dns)?
    } else {
        Control::start(start, cookie_key, source, dns)?
    });
    crate::fleet::join(&control)?;
    Ok(control)
}

/// The metrics registry, with what the control plane exports; the data
/// plane's parts register as they are built.
fn metrics(control: &Arc<Control>) -> anyhow::Result<prometheus::Registry> {
    let registry = prometheus::Registry::new();
    let register =
        |c: Box<dyn prometheus::core::Collector>| registry.register(c).context("cannot register metrics");
    register(Box::new(crate::dns::DnsExporter::new(Arc::clone(control.dns()))))?;
    Exporter::new(control.routes(), control.reload_counters())
        .register(&registry)
        .context("cannot register metrics")?;
    if let Some(link) = control.fleet() {
        register(Box::new(crate::fleet::FleetExporter::new(Arc::clone(link))))?;
    }
    // process_cpu_seconds_total, process_resident_memory_bytes,
    // process_open_fds, process_start_time_seconds, … from /proc.
    register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    register(Box::<crate::proxy::access_log::AccessLogExporter>::default())?;
    Ok(registry)
}

/// The TLS certificates, when there is a TLS listener.
fn open_certificates(
    config: &Config,
    registry: &prometheus::Registry,
) -> anyhow::Result<Option<Certificates>> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let (store, report) = CertStore::open(&tls.certs_dir, tls.allow_readable_keys)?;
    registry
        .register(Box::new(TlsExporter::new(Arc::clone(store.certificates()))))
        .context("cannot register metrics")?;
    Ok(Some((store, report)))
}

/// Pingora's server, bootstrapped: with `--upgrade`, holding the old
/// process's sockets (and the old process's pid, to watch it drain).
fn pingora_server(
    config: &Config,
    options: &Options,
    control: &Control,
) -> anyhow::Result<(Server, Option<u32>)> {
    // The socket a new process (`--upgrade`) takes the listeners from: in
    // our state directory rather than Pingora's shared /tmp default, so two
    // fledge instances on one host never hand each other their sockets.
    let upgrade_sock = std::path::absolute(config.state_dir.join(UPGRADE_SOCKET))
        .context("cannot resolve state_dir")?
        .display()
        .to_string();
    crate::state_dir::prepare(&config.state_dir).map_err(anyhow::Error::msg)?;
    // Process-wide, in the vendored Pingora (`vendor/README.md`): a header
    // map per message instead of two when names need not keep their case.
    pingora::protocols::http::v1::common::set_preserve_header_case(config.preserve_header_case);
    let conf = ServerConf {
        threads: config.threads,
        work_stealing: config.work_stealing,
        // Without work stealing, every thread accepts on its own.
        listener_tasks_per_fd: if config.work_stealing { 1 } else { config.threads },
        upgrade_sock,
        grace_period_seconds: Some(config.timeouts.shutdown_grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: options.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // With --upgrade, this waits for the old process's sockets; the old
    // one hands them over only to a process that says it waits.
    if options.upgrade {
        handover::announce_waiting(&config.state_dir).with_context(|| {
            format!(
                "cannot write {}",
                config.state_dir.join(handover::WAITING_FILE).display()
            )
        })?;
    }
    server.bootstrap();
    let old_pid = if options.upgrade {
        handover::stop_waiting(&config.state_dir);
        handover::take_over(control, &config.state_dir)
    } else {
        None
    };
    // Who serves now, for `fledge upgrade` (and operators' scripts).
    crate::state_dir::write_atomically(
        &config.state_dir,
        PID_FILE,
        std::process::id().to_string().as_bytes(),
    )
    .with_context(|| format!("cannot write {}", config.state_dir.join(PID_FILE).display()))?;
    Ok((server, old_pid))
}

/// The data plane: the proxy service on `listen` (and `tls.listen`).
fn add_proxy(
    server: &mut Server,
    config: &Config,
    control: &Control,
    certificates: Option<&Certificates>,
    registry: &prometheus::Registry,
) -> anyhow::Result<()> {
    if !own_path() {
        tracing::warn!("{PINGORA_PATH} is set: every request goes through Pingora's proxy");
    }
    let mut server_options = HttpServerOptions::default();
    server_options.h2c = true;
    // Pingora counts the reuses after the first request.
    server_options.keepalive_request_limit = Some(KEEPALIVE_REQUEST_LIMIT - 1);
    server_options.h2_idle_timeout = Some(H2_IDLE_TIMEOUT);
    let connections = Connections::new();
    let retries = Arc::new(RetryBudget::default());
    registry
        .register(Box::new(RetryExporter::new(Arc::clone(&retries))))
        .context("cannot register metrics")?;
    registry
        .register(Box::new(ConnectionExporter::new(Arc::clone(&connections))))
        .context("cannot register metrics")?;
    let mut app = pingora::proxy::http_proxy(
        &server.configuration,
        FledgeProxy::new(control.routes(), retries, Arc::clone(&connections)),
    );
    app.server_options = Some(server_options);
    // The TLS listener is a TCP listener whose connections `Guarded`
    // counts from accept and then shakes hands with itself, within
    // `limits.tls_handshake_timeout_seconds` (Pingora's TLS listener would
    // shake hands first, uncounted, for up to 60 s). Pingora's rustls
    // acceptor: TLS 1.2 and 1.3 only; ALPN h2, then http/1.1 (WebSockets);
    // certificates from our resolver.
    let tls_listener = match (&config.tls, certificates) {
        (Some(tls), Some((store, _))) => {
            let mut settings = TlsSettings::intermediate("", "").context("cannot set up TLS")?;
            settings.set_cert_resolver(
                Arc::clone(store.certificates()) as Arc<dyn pingora::tls::ResolvesServerCert>
            );
            settings.enable_h2();
            Some(TlsListener {
                listen: tls.listen,
                acceptor: settings.build(),
            })
        }
        _ => None,
    };
    let mut proxy = Service::new(
        "fledge proxy".to_owned(),
        Guarded::new(app, control.routes(), connections, own_path(), tls_listener),
    );
    proxy.add_listener(ListenerConfig::tcp(config.listen.to_string()).l4_buffer(PLAIN_BUFFERS));
    if let Some(tls) = &config.tls {
        proxy.add_listener(ListenerConfig::tcp(tls.listen.to_string()).l4_buffer(TLS_BUFFERS));
    }
    server.add_service(proxy);
    Ok(())
}

/// The admin listener, and the scrapers' when `metrics.listen` is set.
fn add_admin(
    server: &mut Server,
    config: &Config,
    control: &Arc<Control>,
    registry: prometheus::Registry,
    token: Token,
) -> anyhow::Result<()> {
    let admin_counts = crate::admin::listener::Counts::new();
    registry
        .register(Box::new(ArcCollector(Arc::clone(&admin_counts))))
        .context("cannot register metrics")?;
    if let Some(listen) = config.metrics_listen {
        // Its own connection cap (the admin's size) and counts, not exported:
        // the scrapers' listener is not the admin API.
        let mut scrapers = Service::new(
            "fledge metrics".to_owned(),
            crate::admin::listener::Listener::new(
                Admin::scraper(Arc::clone(control), registry.clone()),
                Arc::clone(control),
                config.admin.max_connections,
                crate::admin::listener::Counts::new(),
            ),
        );
        scrapers.add_tcp(&listen.to_string());
        scrapers.threads = Some(1);
        server.add_service(scrapers);
    }
    let mut admin = Service::new(
        "fledge admin".to_owned(),
        crate::admin::listener::Listener::new(
            Admin::new(Arc::clone(control), registry, token),
            Arc::clone(control),
            config.admin.max_connections,
            admin_counts,
        ),
    );
    admin.add_tcp(&config.admin.listen.to_string());
    admin.threads = Some(1);
    server.add_service(admin);
    Ok(())
}

/// The control plane's loops: health checks, worker names, analysis, the
/// fleet, the certificate and config watchers, and (after an upgrade) the
/// old process's drain.
fn add_control_loops(
    server: &mut Server,
    config: &Config,
    options: &Options,
    control: &Arc<Control>,
    certificates: Option<Certificates>,
    old_pid: Option<u32>,
) {
    server.add_service(background_service(
        "health checks",
        HealthChecks::new(control.routes()),
    ));
    server.add_service(background_service(
        "worker names",
        WorkerNames(Arc::clone(control)),
    ));
    server.add_service(background_service(
        "analysis",
        AnalysisService::new(Arc::clone(control)),
    ));
    if let Some(fleet) = crate::fleet::FleetService::new(Arc::clone(control)) {
        server.add_service(background_service("fleet", fleet));
    }
    if let Some((store, report)) = certificates {
        server.add_service(background_service(
            "certificate watcher",
            CertWatcher::new(Arc::clone(control), store, report),
        ));
    }
    if let Some(path) = &options.source {
        server.add_service(background_service(
            "config watcher",
            ConfigWatcher::new(Arc::clone(control), path.clone()),
        ));
    }
    if let Some(pid) = old_pid {
        // The old process drains for up to the grace period, plus
        // Pingora's wait for the sockets to be taken and its runtime
        // shutdown timeout.
        let wait = config.timeouts.shutdown_grace + Duration::from_secs(5 + 5 + 30);
        server.add_service(background_service(
            "drain counts",
            DrainCounts::new(Arc::clone(control), config.state_dir.clone(), pid, wait),
        ));
    }
}

/// What `fledge run` would refuse of `config` beyond the file itself, for
/// `fledge check`: the cookie secret and admin token it names (set and long
/// enough), a token file (present, private, long enough), the
/// certificates of `tls.certs_dir` (at least one usable pair). Reads only.
/// What depends on where fledge runs and is absent here (a variable not
/// set, a file or folder not there: CI checks files away from the
/// secrets) is a note, not a refusal. Returns (refusals, notes).
pub fn preflight(config: &Config) -> (Vec<String>, Vec<String>) {
    let (mut refused, mut notes) = (Vec::new(), Vec::new());
    let mut secret = |key: &str, var: &str, what: &str| match std::env::var_os(var) {
        None => notes.push(format!(
            "{key} names `{var}`, not set here: `fledge run` needs it"
        )),
        Some(v) if v.len() < 16 => {
            refused.push(format!("{key}: the {what} in `{var}` is shorter than 16 bytes"))
        }
        Some(_) => {}
    };
    if let Some(var) = &config.cookies.secret_env {
        secret("cookies.secret_env", var, "cookie secret");
    }
    match &config.admin.token {
        TokenSource::Env(var) => secret("admin.token_env", var, "admin token"),
        TokenSource::File(path) if !path.exists() => notes.push(format!(
            "admin.token_file {} is not here: `fledge run` needs it",
            path.display()
        )),
        TokenSource::File(path) => match crate::state_dir::check_secret_file(path) {
            Err(why) => refused.push(format!("admin.token_file: {why}")),
            Ok(_) => match std::fs::read_to_string(path) {
                Ok(token) if token.trim().len() < 16 => {
                    refused.push(format!(
                        "admin.token_file {}: the token is shorter than 16 bytes",
                        path.display()
                    ));
                }
                Ok(_) => {}
                Err(e) => refused.push(format!("admin.token_file {}: {e}", path.display())),
            },
        },
        TokenSource::Generated => {}
    }
    if let Some(tls) = &config.tls {
        if tls.certs_dir.is_dir() {
            if let Err(e) = CertStore::open(&tls.certs_dir, tls.allow_readable_keys) {
                refused.push(format!("{e:#}"));
            }
        } else {
            notes.push(format!(
                "tls.certs_dir {} is not here: `fledge run` needs a usable certificate in it",
                tls.certs_dir.display()
            ));
        }
    }
    (refused, notes)
}

fn cookie_key(config: &Config) -> anyhow::Result<CookieKey> {
    match &config.cookies.secret_env {
        Some(var) => {
            let secret = std::env::var(var)
                .with_context(|| format!("cookies.secret_env names `{var}`, which is not set"))?;
            anyhow::ensure!(
                secret.len() >= 16,
                "the cookie secret in `{var}` is shorter than 16 bytes"
            );
            Ok(CookieKey::from_secret(secret.as_bytes()))
        }
        None => {
            tracing::info!("no cookies.secret_env: signing cookies with a random key for this process");
            Ok(CookieKey::random())
        }
    }
}

/// The admin token: from the environment, from a file, or generated into
/// `state_dir/admin.token` (mode 0600) when neither is configured. Never
/// logged.
fn admin_token(config: &Config) -> anyhow::Result<Token> {
    let secret = match &config.admin.token {
        TokenSource::Env(var) => {
            std::env::var(var).with_context(|| format!("admin.token_env names `{var}`, which is not set"))?
        }
        TokenSource::File(path) => {
            if let Some(warning) = crate::state_dir::check_secret_file(path)
                .map_err(|why| anyhow::anyhow!("admin.token_file: {why}"))?
            {
                tracing::warn!(file = %path.display(), "admin.token_file: {warning}");
            }
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read admin.token_file {}", path.display()))?
                .trim()
                .to_owned()
        }
        TokenSource::Generated => {
            crate::state_dir::prepare(&config.state_dir).map_err(anyhow::Error::msg)?;
            let path = config.state_dir.join(GENERATED_TOKEN_FILE);
            let existing = match std::fs::symlink_metadata(&path) {
                Ok(_) => {
                    // Whatever is there must be the one fledge wrote.
                    crate::state_dir::check_own_secret(&path).map_err(anyhow::Error::msg)?;
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?
                        .trim()
                        .to_owned()
                }
                Err(_) => String::new(),
            };
            if existing.is_empty() {
                let mut bytes = [0u8; 24];
                getrandom::getrandom(&mut bytes).context("no OS random source for the admin token")?;
                let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                crate::state_dir::write_atomically(&config.state_dir, GENERATED_TOKEN_FILE, token.as_bytes())
                    .with_context(|| format!("cannot write {}", path.display()))?;
                tracing::info!(file = %path.display(), "no admin token configured: generated one");
                token
            } else {
                existing
            }
        }
    };
    anyhow::ensure!(secret.len() >= 16, "the admin token is shorter than 16 bytes");
    Ok(Token::new(&secret))
}
