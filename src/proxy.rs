//! Data plane: [`FledgeProxy`], fledge's request path as steps, and its
//! `ProxyHttp` hooks. Steps only glue routing and upstream together.
//!
//! Request path: `context` takes one route-table snapshot → `admit` routes
//! (tenant, version), answers unknown hosts and strips the override header
//! → `pick_worker` picks a worker of the chosen pool (canary without a
//! healthy worker: stable) → `connect_failed` retries a refused connect
//! once, a canary on stable (nothing was sent, so this cannot duplicate a
//! request) → `set_forwarded` sets `X-Forwarded-*` (after Pingora's
//! sanitising has removed hop-by-hop and `Connection`-nominated headers, so
//! a client cannot make us drop them) → `watch_answer` and the sniffer watch
//! JSON-RPC answers for an `error` member → `stamp` adds `X-Fledge-Version`
//! and the sticky cookies → `record` classifies the outcome and records it,
//! with the latency, in the tenant's per-version counters. Bodies pass
//! through untouched; errors after bytes reached a worker are retried only
//! for idempotent methods on a reused connection (Pingora's default), never
//! for a POST.
//!
//! Two callers take these steps in this order: fledge's own path for the
//! common request (`fast_path`, from [`connections`]), and Pingora's
//! `HttpProxy` for the rest, through the hooks at the end of this file.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, HOST};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::Peer;

use self::classify::JsonRpcSniffer;
pub use self::ctx::RequestCtx;
use self::headers::{
    SetOurs, X_FLEDGE_VERSION, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID,
};
use crate::metrics::{Outcome, REHEARSAL_HEADER};
use crate::routing::{Decision, Fields, RequestView, RouteTable, Version, BUCKET_COOKIE, VERSION_COOKIE};

pub mod access_log;
pub mod classify;
pub mod connections;
mod ctx;
mod fast_path;
mod forwarded;
mod headers;
pub mod limits;
mod proxy_protocol;
mod replay;
pub mod retry;

/// The default override header, as `http` spells names.
const DEFAULT_OVERRIDE_HEADER_LC: &str = "x-fledge-version";
/// How long an idle upstream connection stays in the pool: below the
/// keep-alive timeouts of the servers Odoo runs behind, so that we do not
/// send a request on a connection the worker is closing.
const UPSTREAM_IDLE: Duration = Duration::from_secs(30);
/// Client sockets' write buffer: one TCP segment, so a small response's
/// header and body leave in one write. A kept-alive connection gives it back
/// while idle ([`connections`]).
pub const WRITE_BUFFER: usize = 1460;
/// Body of the answer to a host no tenant has.
const NO_TENANT_BODY: &[u8] = b"fledge: no tenant is configured for this host\n";

/// The proxy: reads the route table, never writes it.
pub struct FledgeProxy {
    routes: Arc<ArcSwap<RouteTable>>,
    retries: Arc<retry::RetryBudget>,
    /// The per-address counts, for clients behind trusted proxies.
    connections: Arc<connections::Connections>,
}

impl FledgeProxy {
    /// A proxy serving whatever table `routes` holds.
    pub fn new(
        routes: Arc<ArcSwap<RouteTable>>,
        retries: Arc<retry::RetryBudget>,
        connections: Arc<connections::Connections>,
    ) -> Self {
        FledgeProxy {
            routes,
            retries,
            connections,
        }
    }
}

/// The host a request is for: HTTP/2's `:authority`, else `Host`.
pub fn host_of(req: &RequestHeader) -> Option<&str> {
    if let Some(a) = req.uri.authority() {
        return Some(a.as_str());
    }
    req.headers.get(HOST).and_then(|h| h.to_str().ok())
}

fn client_ip(session: &ServerSession) -> Option<IpAddr> {
    session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip())
}

/// A stable key of a client address for the analysis' failing-client
/// groups: the address itself for IPv4, its /64 for IPv6 (one host holds a
/// whole /64, so its addresses are one client).
fn client_group_key(ip: Option<IpAddr>) -> u16 {
    // An IPv4 client on a dual-stack listener comes as `::ffff:a.b.c.d`.
    let folded = match ip.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(v4)) => u64::from(u32::from(v4)),
        Some(IpAddr::V6(v6)) => (u128::from(v6) >> 64) as u64,
        None => 0,
    };
    (xxhash_rust::xxh3::xxh3_64(&folded.to_le_bytes()) >> 48) as u16
}

/// Who sent a failed request, as the analysis groups failing clients: the
/// sticky key's bucket, or (by the policy, or without a bucket) a hash of
/// the address. Worked out only for failures: most requests never need it.
fn failing_client(ctx: &RequestCtx) -> u16 {
    let by = ctx.route.map(|r| {
        let key = ctx.table.tenants()[r.tenant].policy().analysis.failing_clients_by;
        (r.bucket, key)
    });
    match by {
        Some((Some(bucket), crate::config::ClientKey::StickyKey)) => bucket,
        _ => client_group_key(ctx.client_ip),
    }
}

const HTTP: &str = "http";
const HTTPS: &str = "https";

/// An address as a header value, formatted without `fmt` for IPv4 (the
/// common case, and `Display` costs a thousand instructions per request).
fn ip_header_value(ip: IpAddr) -> HeaderValue {
    let mut buf = [0u8; IP_TEXT];
    HeaderValue::from_bytes(ip_text(ip, &mut buf)).expect("an address is a valid header value")
}

/// The longest address as text (an IPv6 address with an IPv4 tail).
const IP_TEXT: usize = 45;

/// `ip` as text in `buf`, IPv4 without `fmt`.
fn ip_text(ip: IpAddr, buf: &mut [u8; IP_TEXT]) -> &[u8] {
    let mut len = 0;
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let mut digits = itoa::Buffer::new();
                let d = digits.format(octet).as_bytes();
                buf[len..len + d.len()].copy_from_slice(d);
                len += d.len();
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{v6}");
            len = cursor.position() as usize;
        }
    }
    &buf[..len]
}

/// Headers only fledge may set: a client's are removed before forwarding.
/// `X-Fledge-*` (the version override, the rehearsal tag and its token, and
/// whatever fledge may add later) and the forwarding headers Odoo or a
/// module might read besides `X-Forwarded-For/-Proto/-Host`, which fledge
/// sets itself. Names are lower case.
fn is_ours(name: &str) -> bool {
    name.starts_with("x-fledge-")
        || matches!(
            name,
            "forwarded" | "x-real-ip" | "x-forwarded-port" | "x-forwarded-prefix"
        )
}

/// Remove every header [`is_ours`] from a request on its way to a worker.
/// One pass over the names; the list is made only when there is one.
fn strip_ours(upstream: &mut RequestHeader) {
    if !upstream.headers.keys().any(|n| is_ours(n.as_str())) {
        return;
    }
    let names: Vec<http::HeaderName> = upstream
        .headers
        .keys()
        .filter(|n| is_ours(n.as_str()))
        .cloned()
        .collect();
    for name in names {
        upstream.remove_header(&name);
    }
}

/// Rehearsal traffic is what a trusted client marks so: one from
/// `rehearsal.from`, or one sending the rehearsal token.
fn is_rehearsal_allowed<H: Fields + ?Sized>(
    r: &crate::config::Rehearsal,
    ip: Option<IpAddr>,
    headers: &H,
) -> bool {
    if ip.is_some_and(|ip| r.from.iter().any(|n| n.contains(&ip))) {
        return true;
    }
    match (&r.token, headers.first_value(&REHEARSAL_TOKEN_NAME)) {
        (Some(token), Some(sent)) => {
            use subtle::ConstantTimeEq;
            bool::from(token.as_bytes().ct_eq(sent))
        }
        _ => false,
    }
}

/// The header carrying the rehearsal token (`rehearsal.token_env`).
pub const REHEARSAL_TOKEN_HEADER: &str = "x-fledge-rehearsal-token";
#[allow(clippy::declare_interior_mutable_const)]
const REHEARSAL_TOKEN_NAME: http::HeaderName = http::HeaderName::from_static(REHEARSAL_TOKEN_HEADER);

fn is_long_lived(path: &str) -> bool {
    path.starts_with("/websocket") || path.starts_with("/longpolling/")
}

fn is_tls(session: &ServerSession) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// Tell `pool` how `worker` answered; an ejection is worth a log line.
fn report_worker(pool: &crate::upstream::Pool, websocket: bool, worker: std::net::SocketAddr, ok: bool) {
    if let Some(length) = pool.report(websocket, worker, ok) {
        tracing::warn!(
            pool = pool.name(),
            %worker,
            seconds = length.as_secs(),
            "worker ejected after {} failures in a row",
            crate::upstream::EJECT_AFTER
        );
    }
}

/// How a request ended, whichever path served it: what
/// [`FledgeProxy::record_end`] records and logs.
pub(crate) struct Ending<'a> {
    /// The status answered (0: none).
    pub(crate) status: u16,
    /// The connection was upgraded (a WebSocket): its duration is no latency.
    pub(crate) upgraded: bool,
    /// The request's method.
    pub(crate) method: &'a http::Method,
    /// The request target's path.
    pub(crate) path: &'a str,
    /// The connection's peer.
    pub(crate) peer: Option<IpAddr>,
    /// Request body bytes read.
    pub(crate) bytes_in: u64,
    /// Response body bytes written.
    pub(crate) bytes_out: u64,
}

/// What routing needs to know of a request, whichever path read it.
pub(crate) struct Arrival<'a, H: Fields + ?Sized> {
    /// The host it is for (`:authority`, the absolute target's, or `Host`).
    pub(crate) host: &'a str,
    /// Its target's path.
    pub(crate) path: &'a str,
    /// Its header fields.
    pub(crate) headers: &'a H,
    /// The connection's peer.
    pub(crate) peer: Option<IpAddr>,
    /// The connection is TLS.
    pub(crate) tls: bool,
}

// By hand: a derive would ask `H: Copy`, and only the reference is copied.
impl<H: Fields + ?Sized> Clone for Arrival<'_, H> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<H: Fields + ?Sized> Copy for Arrival<'_, H> {}

/// What fledge decides about a request before any worker is chosen
/// ([`FledgeProxy::admit`]).
pub(crate) enum Admission {
    /// Routed: on to a worker.
    Proxy,
    /// Refused by a limit, with this status.
    Refuse(u16),
    /// No tenant has this host: a 404.
    NoTenant,
    /// The tenant wants TLS: a 308 to this port.
    Redirect(u16),
}

/// `308` to the same URL on the TLS listener (the method and body are kept
/// by the client, unlike with a 301). Not a request of any version: no
/// worker sees it and no counter records it.
async fn redirect_to_https(session: &mut ServerSession, port: u16) -> Result<()> {
    let req = session.req_header();
    let host = host_of(req).unwrap_or("");
    // The host matched a tenant, so it is a name, with an optional port.
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{port}{path}")
    };
    let mut resp = ResponseHeader::build(308, Some(3))?;
    resp.insert_header("Location", location)?;
    resp.insert_header("Content-Length", "0")?;
    session.write_response_header(Box::new(resp)).await?;
    session.finish_body().await
}

/// fledge's request path, step by step. Each step is a plain method over
/// the client's [`ServerSession`], so that the two callers share it:
/// fledge's own path for the common request (`fast_path`), which calls
/// them in order without Pingora's per-hook boxes, and Pingora's
/// `HttpProxy` through the `ProxyHttp` hooks below (uploads, upgrades,
/// HTTP/2).
impl FledgeProxy {
    /// One snapshot of the route table per request (`load_full`, not a
    /// guard: the context outlives many awaits).
    pub(crate) fn context(&self) -> RequestCtx {
        RequestCtx::new(self.routes.load_full(), self.retries.enter())
    }

    /// Route the request: decided once, here, and kept in the context.
    /// Anything but [`Admission::Proxy`] is answered by [`Self::answer`].
    pub(crate) fn admit(&self, session: &mut ServerSession, ctx: &mut RequestCtx) -> Admission {
        let tuning = ctx.table.tuning();
        if let Some(refusal) = limits::check(session.req_header(), &tuning.limits, &tuning.override_headers) {
            tracing::debug!(?refusal, "request refused before routing");
            return Admission::Refuse(refusal.status());
        }
        let req = session.req_header();
        let arrival = Arrival {
            host: host_of(req).unwrap_or(""),
            path: req.uri.path(),
            headers: &req.headers,
            peer: client_ip(session),
            tls: is_tls(session),
        };
        let admission = self.route(arrival, ctx);
        let Some(route) = ctx.route.filter(|_| matches!(admission, Admission::Proxy)) else {
            return admission;
        };
        // The override header is ours: workers never see it, allowed or not.
        let policy = ctx.table.tenants()[route.tenant].policy();
        session.req_header_mut().remove_header(&policy.override_header);
        let timeouts = &ctx.table.tuning().timeouts;
        session.set_keepalive(Some(timeouts.client_keepalive.as_secs()));
        if ctx.long_lived {
            // Pingora's downstream read timeout (60 s) also covers the bytes
            // of an upgraded connection; an idle Odoo bus socket must outlive it.
            session.set_read_timeout(Some(timeouts.websocket_idle));
        }
        Admission::Proxy
    }

    /// Route a request that passed the limits, whichever path read it
    /// (Pingora's session, or fledge's HTTP/1 codec): the client behind a
    /// trusted proxy, its place under the per-address cap, the tenant and
    /// version, the redirect to TLS; kept in the context. Changes nothing
    /// of the request: removing the override header is the caller's.
    pub(crate) fn route<H: Fields + ?Sized>(
        &self,
        arrival: Arrival<'_, H>,
        ctx: &mut RequestCtx,
    ) -> Admission {
        let tuning = ctx.table.tuning();
        if tuning.access_log {
            ctx.request_id = access_log::next_id();
        }
        let headers = arrival.headers;
        // Behind a trusted proxy the client is the one it forwards for.
        let peer = arrival.peer;
        let trusted = &tuning.trusted_proxies;
        let via_proxy = !trusted.is_empty() && peer.is_some_and(|ip| forwarded::is_trusted(trusted, ip));
        let (client, secure) = if via_proxy {
            let client = forwarded::client_behind(headers, trusted).or(peer);
            (client, arrival.tls || forwarded::proto(headers) == Some(HTTPS))
        } else {
            (peer, arrival.tls)
        };
        // Behind a trusted proxy the per-address cap counts the client's
        // requests in flight (its connections are the proxy's).
        if via_proxy {
            if let Some(client) = client.filter(|c| Some(*c) != peer) {
                match self
                    .connections
                    .admit_forwarded(client, tuning.limits.max_connections_per_ip)
                {
                    Some(slot) => ctx.forwarded_slot = Some(slot),
                    None => {
                        tracing::debug!(%client, "forwarded client at the per-address cap");
                        return Admission::Refuse(429);
                    }
                }
            }
        }
        let view = RequestView {
            host: arrival.host,
            headers,
            client_ip: client,
            now: None,
        };
        let route = match ctx.table.decide(&view) {
            Decision::Route(route) => route,
            Decision::NoTenant => return Admission::NoTenant,
        };
        tracing::debug!(
            tenant = ctx.table.tenants()[route.tenant].name(),
            version = route.version.as_str(),
            reason = route.reason.as_str(),
            "routed"
        );
        if let Some(port) = ctx.table.tenants()[route.tenant].https_redirect() {
            if !secure {
                return Admission::Redirect(port);
            }
        }
        ctx.route = Some(route);
        ctx.served = route.version;
        ctx.client_ip = client;
        ctx.via_proxy = via_proxy;
        ctx.secure = secure;
        ctx.long_lived = is_long_lived(arrival.path);
        ctx.rehearsal = headers.first_value(&REHEARSAL_HEADER).is_some()
            && is_rehearsal_allowed(&ctx.table.tuning().rehearsal, ctx.client_ip, headers);
        Admission::Proxy
    }

    /// Answer a request [`Self::admit`] did not send on.
    pub(crate) async fn answer(session: &mut ServerSession, admission: Admission) -> Result<()> {
        match admission {
            Admission::Proxy => Ok(()),
            Admission::Refuse(status) => {
                session.set_keepalive(None);
                session.respond_error(status).await
            }
            Admission::NoTenant => {
                let mut resp = ResponseHeader::build(404, Some(3))?;
                resp.insert_header("Content-Type", "text/plain; charset=utf-8")?;
                resp.insert_header("Content-Length", NO_TENANT_BODY.len())?;
                session.write_response_header(Box::new(resp)).await?;
                session
                    .write_response_body(Bytes::from_static(NO_TENANT_BODY), true)
                    .await
            }
            Admission::Redirect(port) => redirect_to_https(session, port).await,
        }
    }

    /// Uploads may be large (Odoo imports) but not slow: after
    /// `UPLOAD_GRACE`, a body arriving slower on average than
    /// `limits.min_upload_bytes_per_second` is cut with a 408. Pingora's
    /// read timeout alone restarts on every read, so a byte a minute would
    /// hold a connection and a worker forever. The clock starts when the
    /// body begins to come in (`HttpProxy` reads it once a worker is
    /// reached, and the time that took is not the client's). Called with
    /// each piece of the body, `received` bytes. Upgraded connections
    /// (WebSockets) are not uploads and are left alone.
    pub(crate) fn check_upload(session: &ServerSession, received: usize, ctx: &mut RequestCtx) -> Result<()> {
        let min = ctx.table.tuning().limits.min_upload_bytes_per_second;
        if min == 0 || session.was_upgraded() || ctx.long_lived {
            return Ok(());
        }
        ctx.body_bytes += received as u64;
        let now = tokio::time::Instant::now();
        let elapsed = now - *ctx.body_since.get_or_insert(now);
        if elapsed > crate::config::UPLOAD_GRACE
            && (ctx.body_bytes as f64) < min as f64 * elapsed.as_secs_f64()
        {
            tracing::debug!(bytes = ctx.body_bytes, ?elapsed, "upload too slow");
            return Error::e_explain(
                HTTPStatus(408),
                "request body slower than limits.min_upload_bytes_per_second",
            );
        }
        Ok(())
    }

    /// A worker of the chosen pool. A canary with no healthy worker falls
    /// back to stable, and the miss counts against the canary as a failed
    /// connect (a release whose workers are all down is failing, and the
    /// policy must see it); a stable pool that health checks call dead is
    /// still tried, since they may be wrong.
    pub(crate) fn pick_worker(&self, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .ok_or_else(|| Error::explain(InternalError, "upstream_peer without a route"))?;
        let tenant = &ctx.table.tenants()[route.tenant];
        let ws = ctx.long_lived;
        let mut addr = None;
        if ctx.served == Version::Canary {
            addr = tenant.pool(Version::Canary).select(ws);
            if addr.is_none() {
                let stats = tenant.stats().version(Version::Canary);
                stats.record(Outcome::ConnectFailure, None, failing_client(ctx));
                if ctx.rehearsal {
                    stats.record_rehearsal(Outcome::ConnectFailure);
                }
                ctx.served = Version::Stable;
            }
        }
        if ctx.served == Version::Stable {
            let stable = tenant.stable();
            addr = stable.select(ws).or_else(|| stable.select_any(ws));
        }
        let addr = addr.ok_or_else(|| Error::explain(crate::error::NO_WORKER, "pool has no worker"))?;
        ctx.peer = Some(addr);
        // A least-connections pool counts the request on its worker until
        // the context ends (a retry's pick replaces it).
        ctx.in_flight_on = tenant.pool(ctx.served).claim(ws, addr);

        let timeouts = &ctx.table.tuning().timeouts;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(timeouts.connect);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE);
        peer.options.read_timeout = Some(if ws {
            timeouts.websocket_idle
        } else {
            timeouts.upstream_read
        });
        Ok(Box::new(peer))
    }

    /// Nothing reached the worker: one retry is safe. A canary retries on
    /// stable, stable on its next worker.
    pub(crate) fn connect_failed(
        &self,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        tracing::debug!(peer = %peer.address(), version = ctx.served.as_str(), error = %e, "connect failed");
        if let Some(route) = ctx.route {
            // The attempt counts against the version that failed it, even
            // when the retry on stable then succeeds.
            let tenant = &ctx.table.tenants()[route.tenant];
            let stats = tenant.stats().version(ctx.served);
            stats.record(Outcome::ConnectFailure, None, failing_client(ctx));
            if ctx.rehearsal {
                stats.record_rehearsal(Outcome::ConnectFailure);
            }
            if let Some(worker) = ctx.peer.take() {
                report_worker(tenant.pool(ctx.served), ctx.long_lived, worker, false);
            }
        }
        if ctx.in_flight.try_retry() {
            ctx.served = Version::Stable;
            e.set_retry(true);
        }
        e
    }

    /// `X-Forwarded-*` as Odoo's `proxy_mode` reads them, replacing whatever
    /// the client sent; the other forwarding headers and every `X-Fledge-*`
    /// a client sent are removed ([`is_ours`]). Runs after Pingora's
    /// hop-by-hop sanitising.
    ///
    /// Behind a trusted proxy (`ctx.via_proxy`) its chain is kept and the
    /// peer appended to `X-Forwarded-For`, and its `X-Forwarded-Proto` and
    /// `-Host` (or `Forwarded`'s) are passed on, well-formed ones only.
    pub(crate) fn set_forwarded(
        session: &ServerSession,
        ctx: &RequestCtx,
        upstream: &mut RequestHeader,
    ) -> Result<()> {
        strip_ours(upstream);
        upstream.room_for(3);
        let req = session.req_header();
        match (client_ip(session), ctx.via_proxy) {
            (Some(peer), true) => {
                // The chain, then the peer: built once, in the buffer the
                // header value keeps.
                let mut chain = Vec::with_capacity(64);
                for v in req
                    .headers
                    .get_all(forwarded::X_FORWARDED_FOR)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                {
                    let v = v.trim();
                    if !v.is_empty() {
                        chain.extend_from_slice(v.as_bytes());
                        chain.extend_from_slice(b", ");
                    }
                }
                if chain.is_empty() {
                    if let Some(client) = ctx.client_ip.filter(|c| *c != peer) {
                        chain.extend_from_slice(ip_text(client, &mut [0; IP_TEXT]));
                        chain.extend_from_slice(b", ");
                    }
                }
                chain.extend_from_slice(ip_text(peer.to_canonical(), &mut [0; IP_TEXT]));
                match HeaderValue::from_maybe_shared(Bytes::from(chain)) {
                    Ok(v) => upstream.set(X_FORWARDED_FOR, v)?,
                    Err(_) => upstream.set(X_FORWARDED_FOR, ip_header_value(peer))?,
                }
            }
            (Some(ip), false) => upstream.set(X_FORWARDED_FOR, ip_header_value(ip))?,
            (None, _) => upstream.unset(X_FORWARDED_FOR),
        }
        let proto = if ctx.secure { HTTPS } else { HTTP };
        upstream.set(X_FORWARDED_PROTO, HeaderValue::from_static(proto))?;
        let forwarded_host = ctx
            .via_proxy
            .then(|| forwarded::host(&req.headers))
            .flatten()
            .and_then(|h| HeaderValue::from_str(h).ok());
        let host = match (forwarded_host, req.uri.authority()) {
            (Some(h), _) => Some(h),
            (None, Some(a)) => HeaderValue::from_str(a.as_str()).ok(),
            (None, None) => req.headers.get(HOST).cloned(),
        };
        match host {
            Some(h) => upstream.set(X_FORWARDED_HOST, h)?,
            None => upstream.unset(X_FORWARDED_HOST),
        }
        if ctx.request_id != 0 {
            let mut id = [0u8; 16];
            let id = access_log::format_id(ctx.request_id, &mut id);
            upstream.set(
                X_REQUEST_ID,
                HeaderValue::from_str(id).map_err(|e| Error::because(InternalError, "request id", e))?,
            )?;
        }
        Ok(())
    }

    /// Odoo's JSON-RPC answers (a JSON request, a JSON response, no content
    /// encoding) get their first bytes sniffed for an `error` member.
    pub(crate) fn watch_answer(session: &ServerSession, upstream: &ResponseHeader, ctx: &mut RequestCtx) {
        fn content_type(h: &http::HeaderMap) -> Option<&[u8]> {
            h.get(CONTENT_TYPE).map(HeaderValue::as_bytes)
        }
        Self::watch(
            upstream.status.as_u16(),
            content_type(&upstream.headers),
            upstream.headers.contains_key(CONTENT_ENCODING),
            content_type(&session.req_header().headers),
            ctx,
        );
    }

    /// [`watch_answer`](Self::watch_answer) from the answer's status and
    /// `Content-Type`, whether it has a `Content-Encoding`, and the
    /// request's `Content-Type`.
    pub(crate) fn watch(
        status: u16,
        content_type: Option<&[u8]>,
        encoded: bool,
        request_type: Option<&[u8]>,
        ctx: &mut RequestCtx,
    ) {
        let is_json = |v: Option<&[u8]>| v.is_some_and(|v| v.starts_with(b"application/json"));
        if status == 200 && is_json(content_type) && !encoded && is_json(request_type) {
            ctx.sniffer = JsonRpcSniffer::start();
        }
    }

    /// Tell the client which version served it, and pin it there.
    /// `stopping`: the process is shutting down.
    pub(crate) fn stamp(
        session: &mut ServerSession,
        stopping: bool,
        resp: &mut ResponseHeader,
        ctx: &RequestCtx,
    ) -> Result<()> {
        resp.set(X_FLEDGE_VERSION, HeaderValue::from_static(ctx.served.as_str()))?;
        // A process shutting down (SIGTERM, or a graceful upgrade handing
        // over) says `Connection: close` on every answer it still gives, so
        // that the client takes its next request elsewhere rather than
        // send it down a connection about to close. (`admit` set the
        // keep-alive time before the shutdown, or over Pingora's own "off"
        // for a request that began during it.)
        if stopping {
            session.set_keepalive(None);
        }
        let mut added = Ok(());
        Self::cookies(ctx, |cookie| {
            if added.is_ok() {
                added = resp.append_header("Set-Cookie", cookie).map(|_| ());
            }
        });
        added
    }

    /// The `Set-Cookie` values a response hands out (the version cookie,
    /// the bucket cookie), if its route asks for any. Allocates: only on
    /// the responses that hand out a cookie.
    pub(crate) fn cookies(ctx: &RequestCtx, mut each: impl FnMut(String)) {
        let Some(route) = ctx.route else {
            return;
        };
        if !(route.set_version_cookie || route.set_bucket_cookie) {
            return;
        }
        let bucket = route.bucket.unwrap_or(0);
        let tenant = &ctx.table.tenants()[route.tenant];
        let key = ctx.table.cookie_key();
        let attrs = format!(
            "; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{}",
            ctx.table.tuning().cookie_max_age_seconds,
            if ctx.secure { "; Secure" } else { "" }
        );
        if route.set_version_cookie {
            let value = key.version_cookie(route.version, bucket, tenant.epoch(), crate::routing::unix_now());
            each(format!("{VERSION_COOKIE}={value}{attrs}"));
        }
        if route.set_bucket_cookie {
            let value = key.bucket_cookie(bucket, tenant.seed());
            each(format!("{BUCKET_COOKIE}={value}{attrs}"));
        }
    }

    /// The last step of every request: classify how it ended and record it
    /// against the version that served it. WebSocket sessions count, but
    /// their duration (the tab's lifetime) is no latency.
    pub(crate) fn record(session: &ServerSession, e: Option<&Error>, ctx: &RequestCtx) {
        let req = session.req_header();
        Self::record_end(
            &Ending {
                status: session.response_written().map_or(0, |r| r.status.as_u16()),
                upgraded: session.was_upgraded(),
                method: &req.method,
                path: req.uri.path(),
                peer: client_ip(session),
                bytes_in: session.body_bytes_read() as u64,
                bytes_out: session.body_bytes_sent() as u64,
            },
            e,
            ctx,
        );
    }

    /// [`record`](Self::record) for a request however it was served.
    pub(crate) fn record_end(end: &Ending<'_>, e: Option<&Error>, ctx: &RequestCtx) {
        let status = end.status;
        if let Some(route) = ctx.route {
            let tenant = &ctx.table.tenants()[route.tenant];
            let rpc = ctx.sniffer.answer(&tenant.policy().analysis.client_exceptions);
            let outcome = classify::outcome(status, e, rpc);
            let latency = (!end.upgraded).then(|| ctx.started.elapsed());
            let stats = tenant.stats().version(ctx.served);
            let client = if outcome.is_failure() {
                failing_client(ctx)
            } else {
                0
            };
            stats.record(outcome, latency, client);
            if ctx.rehearsal {
                stats.record_rehearsal(outcome);
            }
            if let Some(worker) = ctx.peer {
                let failed = matches!(
                    outcome,
                    Outcome::ServerError | Outcome::ConnectFailure | Outcome::Timeout | Outcome::Reset
                );
                report_worker(tenant.pool(ctx.served), ctx.long_lived, worker, !failed);
            }
        }
        if ctx.table.tuning().access_log {
            Self::log_access(end, e, ctx);
        }
        tracing::debug!(
            status,
            version = ctx.served.as_str(),
            elapsed_us = ctx.started.elapsed().as_micros() as u64,
            error = e.map(|e| e.etype().as_str()),
            "request done"
        );
    }

    /// The request's line in the access log, handed to its writer.
    fn log_access(end: &Ending<'_>, e: Option<&Error>, ctx: &RequestCtx) {
        let route = ctx.route;
        let tenant = route.map(|r| &ctx.table.tenants()[r.tenant]);
        let outcome = tenant.map(|t| {
            let rpc = ctx.sniffer.answer(&t.policy().analysis.client_exceptions);
            classify::outcome(end.status, e, rpc)
        });
        let at_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        access_log::log(access_log::Entry {
            at_us,
            request_id: if ctx.request_id != 0 {
                ctx.request_id
            } else {
                access_log::next_id()
            },
            tenant: tenant.map(|t| Arc::clone(t.shared_name())),
            version: route.map(|_| ctx.served),
            worker: ctx.peer,
            client: ctx.client_ip.or(end.peer),
            method: end.method.clone(),
            path: access_log::Path::new(end.path),
            status: end.status,
            outcome,
            duration_us: ctx.started.elapsed().as_micros() as u64,
            bytes_in: end.bytes_in,
            bytes_out: end.bytes_out,
        });
    }

    /// The status a failed request gets: Pingora's mapping, plus ours (a
    /// pool without workers is a 503). 0: the client is gone, nothing is
    /// written.
    pub(crate) fn error_status(e: &Error) -> u16 {
        match e.etype() {
            t if *t == crate::error::NO_WORKER => 503,
            HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    WriteError | ReadError | ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        }
    }

    /// Clients' mistakes and aborts (malformed requests, hang-ups) are not
    /// ours to log at error level: scanners would flood the log.
    pub(crate) fn is_quiet(error: &Error) -> bool {
        *error.esource() == ErrorSource::Downstream
    }
}

/// Pingora's hooks, for the requests `HttpProxy` serves: each calls the
/// step of the same name above.
#[async_trait]
impl ProxyHttp for FledgeProxy {
    type CTX = RequestCtx;

    /// No downstream modules. Pingora's default adds a response-compression
    /// module, disabled, that is still built and called on every request;
    /// fledge passes Odoo's bodies through as they are.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        self.context()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        match self.admit(session, ctx) {
            Admission::Proxy => Ok(false),
            early => {
                Self::answer(session, early).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        Self::check_upload(session, body.as_ref().map_or(0, Bytes::len), ctx)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        self.pick_worker(ctx)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.connect_failed(peer, ctx, e)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        Self::set_forwarded(session, ctx, upstream)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        Self::watch_answer(session, upstream, ctx);
        Ok(())
    }

    /// Feed the sniffer; the bytes pass on untouched.
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(b) = body {
            ctx.sniffer.feed(b);
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let stopping = session.is_process_shutting_down();
        Self::stamp(session, stopping, resp, ctx)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        Self::record(session, e, ctx);
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        Self::is_quiet(error)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut RequestCtx) -> FailToProxy {
        let code = Self::error_status(e);
        if code > 0 {
            if let Err(err) = session.respond_error(code).await {
                tracing::debug!(error = %err, "could not send error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_format_as_their_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header_value(ip).to_str().unwrap(), ip.to_string());
        }
    }

    #[test]
    fn websocket_and_longpolling_paths_are_long_lived() {
        assert!(is_long_lived("/websocket"));
        assert!(is_long_lived("/websocket?version=18.0"));
        assert!(is_long_lived("/longpolling/poll"));
        assert!(!is_long_lived("/web/login"));
        assert!(!is_long_lived("/longpolling"));
    }
}
