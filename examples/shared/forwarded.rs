//! The `X-Forwarded-*` headers the measuring sticks set, as fledge does:
//! the header work any proxy in front of Odoo's `proxy_mode` must do. One
//! function for both examples, so that they do the same work.

use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr;

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
