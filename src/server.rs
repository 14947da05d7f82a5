//! Assembles the Pingora [`Server`]: the proxy service on `listen`, and the
//! control-plane background services. `main` only parses the command line
//! and calls [`build`]; the demo calls it too.

use std::time::Duration;

use anyhow::Context as _;
use pingora::apps::HttpServerOptions;
use pingora::proxy::ProxyServiceBuilder;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;

use std::sync::Arc;

use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::analysis::AnalysisService;
use crate::config::Config;
use crate::control::Control;
use crate::metrics::Exporter;
use crate::proxy::FledgeProxy;
use crate::routing::CookieKey;
use crate::upstream::HealthChecks;

/// Requests served on one client connection before it is closed (nginx's
/// `keepalive_requests` default): bounds per-connection memory.
const KEEPALIVE_REQUEST_LIMIT: u32 = 1_000;
/// Idle HTTP/2 client connections are closed after this long.
const H2_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// On SIGTERM, in-flight requests get this long to finish.
const GRACE_PERIOD_SECONDS: u64 = 10;

/// Process-level switches that are not part of the config file.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Take the listening sockets over from a running fledge (Pingora's
    /// graceful upgrade: start with this, then SIGQUIT the old process).
    pub upgrade: bool,
}

/// Build the server for `config`. It starts serving on `run_forever`.
pub fn build(config: &Config, options: &Options) -> anyhow::Result<Server> {
    let cookie_key = cookie_key(config)?;
    let control = Arc::new(Control::start(config.clone(), cookie_key)?);
    let registry = prometheus::Registry::new();
    Exporter::new(control.routes())
        .register(&registry)
        .context("cannot register metrics")?;

    let conf = ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(GRACE_PERIOD_SECONDS),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: options.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut server_options = HttpServerOptions::default();
    server_options.h2c = true;
    server_options.keepalive_request_limit = Some(KEEPALIVE_REQUEST_LIMIT);
    server_options.h2_idle_timeout = Some(H2_IDLE_TIMEOUT);
    let mut proxy = ProxyServiceBuilder::new(&server.configuration, FledgeProxy::new(control.routes()))
        .name("fledge proxy")
        .server_options(server_options)
        .build();
    proxy.add_tcp(&config.listen.to_string());
    server.add_service(proxy);

    server.add_service(background_service(
        "health checks",
        HealthChecks::new(control.routes()),
    ));
    server.add_service(background_service(
        "analysis",
        AnalysisService::new(Arc::clone(&control)),
    ));

    let mut admin = Service::new(
        "fledge admin".to_owned(),
        Admin::new(Arc::clone(&control), registry),
    );
    admin.add_tcp(&config.admin.listen.to_string());
    admin.threads = Some(1);
    server.add_service(admin);
    tracing::info!(
        listen = %config.listen,
        admin = %config.admin.listen,
        state_dir = %config.state_dir.display(),
        tenants = config.tenants.len(),
        pools = config.pools.len(),
        threads = config.threads,
        "fledge starting"
    );
    Ok(server)
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
