//! What the measuring sticks (`passthrough`, `core-loop`) share, so that
//! they run alike and do the same work: the server's settings, and the
//! `X-Forwarded-*` headers set as fledge does (the header work any proxy in
//! front of Odoo's `proxy_mode` must do).

use pingora::apps::HttpServerOptions;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::server::configuration::{Opt, ServerConf};

/// Set `X-Forwarded-For/-Proto/-Host` on `upstream` for a request from
/// `client` whose header is `request`.
pub(crate) fn set_forwarded(
    upstream: &mut RequestHeader,
    request: &RequestHeader,
    client: Option<&SocketAddr>,
) -> Result<()> {
    let ip = client.and_then(|a| a.as_inet()).map(|a| a.ip().to_string());
    upstream.insert_header("X-Forwarded-For", ip.unwrap_or_default())?;
    upstream.insert_header("X-Forwarded-Proto", "http")?;
    if let Some(host) = request.headers.get("host").cloned() {
        upstream.insert_header("X-Forwarded-Host", host)?;
    }
    Ok(())
}

/// A server with THREADS threads that stops at once (no grace), started.
pub(crate) fn server(threads: usize) -> Server {
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    server
}

/// Client connections closed after 1 000 requests, as fledge's.
pub(crate) fn server_options() -> HttpServerOptions {
    let mut options = HttpServerOptions::default();
    options.keepalive_request_limit = Some(1_000);
    options
}
