//! Data plane, per request: fledge's own path for the common request — an
//! HTTP/1 request with no body or a small one of known length (up to
//! [`BUFFERED_BODY`]), no upgrade, not `CONNECT`: page loads, assets, and
//! Odoo's JSON-RPC calls. [`connections`](super::connections) reads every
//! HTTP/1 request header itself, then serves such a request here and hands
//! any other to Pingora's `HttpProxy` (with its header read): uploads,
//! chunked bodies, `Expect`, WebSockets, HTTP/2.
//!
//! A small body is read whole before a worker is chosen, as nginx buffers
//! request bodies: a slow client never holds a worker, and a request whose
//! connect fails is retried with its body in hand. It goes to the worker
//! with the header, in one write when it fits.
//!
//! Why not `HttpProxy` for all: its orchestration (a boxed future per hook,
//! a session wrapper with cache, compression and module state, checks for
//! what fledge never does, and the copies of its large nested futures) cost
//! about a fifth of fledge's CPU per request (`load-tests/README.md`,
//! "Leaving Pingora's proxy layer"). This path takes the same steps in the
//! same order, with the same outcomes: fledge's steps
//! (`FledgeProxy::admit`, `pick_worker`, …, `record`), Pingora's hop-by-hop
//! sanitising, its connector and idle pool (shared with `HttpProxy`), its
//! retry rule (a connect failure as fledge decides; a failure on a reused
//! connection for an idempotent method; `ServerConf::max_retries` attempts
//! at most), its error statuses and log lines, and the client watched for a
//! hang-up while the worker answers. `docs/own-request-loop.md` lists, step
//! by step, what `HttpProxy` does and what this path keeps.
//!
//! Left out, because fledge uses none of them for these requests: the cache,
//! downstream and upstream modules, compression, subrequests, HTTP/2 and
//! custom sessions. The authority is reconciled after the filters only for
//! requests not in origin form with a `Host` (for those `read_request`
//! validated it, and fledge's filters change neither `Host` nor target).

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use http::{Method, Version};
use pingora::apps::{HttpPersistentSettings, ReusedHttpStream};
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::protocols::http::v1::client::HttpSession as Upstream1;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::proxy::{
    finalize_h1_upstream_request_framing, sanitize_h1_upstream_request, standard_upstream_authority,
    HttpProxy,
};
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType::InternalError};

use super::{FledgeProxy, RequestCtx};
use crate::proxy::Admission;

/// The proxy this path stands in for: its hooks, connector and limits.
pub(crate) type Proxy = HttpProxy<FledgeProxy>;

/// The largest request body this path reads whole before it goes on: most
/// JSON-RPC calls fit; an upload streams through `HttpProxy`.
pub(crate) const BUFFERED_BODY: u64 = 16 * 1024;

/// Whether this path serves the request whose header `session` has read:
/// HTTP/1, no upgrade (Pingora's test: any `Upgrade` on HTTP/1.1), not
/// `CONNECT` (which `HttpProxy` refuses with a 405), and no body or a small
/// one ([`small_body`]).
pub(crate) fn takes(session: &mut ServerSession) -> bool {
    session.as_http1().is_some()
        && session.req_header().method != Method::CONNECT
        && !session.is_upgrade_req()
        && (session.is_body_empty() || small_body(session.req_header()).is_some())
}

/// The length of a request body small enough to read whole: one
/// `Content-Length` (the header read made sure there is no other framing
/// it conflicts with), no `Transfer-Encoding`, no `Expect` (the client
/// waits for a worker's `100 Continue` before it sends the body).
fn small_body(req: &RequestHeader) -> Option<u64> {
    let headers = &req.headers;
    if headers.contains_key(TRANSFER_ENCODING) || headers.contains_key(EXPECT) {
        return None;
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    let length = lengths.next()?;
    if lengths.next().is_some() {
        return None;
    }
    let length: u64 = std::str::from_utf8(length.as_bytes()).ok()?.trim().parse().ok()?;
    (length <= BUFFERED_BODY).then_some(length)
}

/// Read a small request body whole (fledge's upload rate applies, as to a
/// body `HttpProxy` streams). `None`: the request has no body.
async fn read_body(session: &mut ServerSession, ctx: &mut RequestCtx) -> pingora::Result<Option<Bytes>> {
    if session.is_body_empty() {
        return Ok(None);
    }
    // Most often the body came with the header: one piece, no copy.
    let mut whole: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    // A read error is the client's (the upload rate's 408 keeps its own
    // source, as in `HttpProxy`).
    while let Some(piece) = session.read_request_body().await.map_err(|mut e| {
        e.as_down();
        e
    })? {
        FledgeProxy::check_upload(session, piece.len(), ctx)?;
        match (&mut more, whole.take()) {
            (Some(buf), _) => buf.extend_from_slice(&piece),
            (None, Some(first)) => {
                let mut buf = BytesMut::with_capacity(BUFFERED_BODY as usize);
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&piece);
                more = Some(buf);
            }
            (None, None) => whole = Some(piece),
        }
    }
    Ok(more.map(BytesMut::freeze).or(whole).or(Some(Bytes::new())))
}

/// Serve one request whose header is read and that [`takes`] accepted.
/// The connection's stream comes back when it may serve another.
pub(crate) async fn serve(proxy: &Proxy, mut session: ServerSession) -> Option<ReusedHttpStream> {
    let fledge = proxy.inner();
    // Pingora turns keep-alive off for a request that begins during a
    // shutdown; `stamp` turns it off on every answer given during one.
    if proxy.is_shutting_down() {
        session.set_keepalive(None);
    }
    let mut ctx = fledge.context();
    match fledge.admit(&mut session, &mut ctx) {
        Admission::Proxy => {}
        early => {
            // Rare (a refusal, an unknown host, a redirect): boxed, so that
            // the common request's future does not carry it. (Boxed in a
            // statement of its own: in `Box::pin(f).await` the temporary
            // `f` keeps its room in this future until the await ends.)
            let answer = Box::pin(FledgeProxy::answer(&mut session, early));
            if let Err(e) = answer.await {
                let failed = Box::pin(fail(session, &ctx, e, "Fail to filter request:"));
                return failed.await;
            }
            FledgeProxy::record(&session, None, &ctx);
            return finish(session).await;
        }
    }

    let body = match read_body(&mut session, &mut ctx).await {
        Ok(body) => body,
        Err(e) => {
            let failed = Box::pin(fail(session, &ctx, e, "Fail to read request body:"));
            return failed.await;
        }
    };

    let mut tries = 0;
    let mut reuse = false;
    let mut error = None;
    while tries < proxy.max_retries() {
        tries += 1;
        let (reused, e) = attempt(proxy, &mut session, body.as_ref(), &mut ctx).await;
        reuse = reused;
        let Some(e) = e else {
            error = None;
            break;
        };
        let retry = e.retry();
        if retry {
            tracing::warn!(
                target: "pingora_proxy",
                "Fail to proxy: {e}, tries: {tries}, retry: true, {}",
                session.request_summary()
            );
        }
        error = Some(e);
        if !retry {
            break;
        }
    }
    if let Some(e) = error {
        let context = format!("Fail to proxy: tries: {tries}, retry: false,");
        let failed = Box::pin(fail(session, &ctx, e, &context));
        return failed.await;
    }
    FledgeProxy::record(&session, None, &ctx);
    if !reuse {
        return None;
    }
    finish(session).await
}

/// The request failed: its error answer, the error log line unless the
/// client caused it, its record. The connection is not reused.
async fn fail(
    mut session: ServerSession,
    ctx: &RequestCtx,
    e: Box<Error>,
    context: &str,
) -> Option<ReusedHttpStream> {
    let status = FledgeProxy::error_status(&e);
    if status > 0 {
        if let Err(err) = session.respond_error(status).await {
            tracing::debug!(error = %err, "could not send error response");
        }
    }
    if !FledgeProxy::is_quiet(&e) {
        tracing::error!(
            target: "pingora_proxy",
            "{context} {e}, status: {status}, {}",
            session.request_summary()
        );
    }
    FledgeProxy::record(&session, Some(&e), ctx);
    None
}

/// The answer is complete: the stream back for the next request, unless
/// the connection may not be kept (Pingora's `finish`).
async fn finish(session: ServerSession) -> Option<ReusedHttpStream> {
    let settings = HttpPersistentSettings::for_session(&session);
    let stream = session.finish().await.ok().flatten()?;
    Some(ReusedHttpStream::from_reusable_stream(stream, settings))
}

/// One attempt on one worker: whether the client connection may serve
/// another request, and the error, if any (retried by the caller when it
/// says so).
async fn attempt(
    proxy: &Proxy,
    session: &mut ServerSession,
    body: Option<&Bytes>,
    ctx: &mut RequestCtx,
) -> (bool, Option<Box<Error>>) {
    let fledge = proxy.inner();
    let peer = match fledge.pick_worker(ctx) {
        Ok(peer) => peer,
        Err(e) => return (false, Some(e)),
    };
    let connector = proxy.upstream_connector();
    let (upstream, reused) = match connector.get_http_session(&*peer).await {
        Ok(got) => got,
        Err(mut e) => {
            e.as_up();
            return (false, Some(fledge.connect_failed(&peer, ctx, e).into_up()));
        }
    };
    let UpstreamSession::H1(mut upstream) = upstream else {
        // fledge's peers offer no ALPN and it has no custom connector.
        return (
            false,
            Some(Error::explain(InternalError, "worker session is not HTTP/1")),
        );
    };
    let (server_reuse, client_reuse, error) = forward(proxy, session, &mut upstream, &peer, body, ctx).await;
    if client_reuse {
        connector
            .release_http_session(UpstreamSession::H1(upstream), &*peer, peer.idle_timeout())
            .await;
    }
    (
        server_reuse,
        error.map(|e| while_proxying(&peer, session, e, reused)),
    )
}

/// Pingora's default `error_while_proxy`: an error once a worker connection
/// is held is retried only for an idempotent method, and only when that
/// connection was reused (it may have been closed by the worker as we sent).
fn while_proxying(peer: &HttpPeer, session: &ServerSession, e: Box<Error>, reused: bool) -> Box<Error> {
    let mut e = e.more_context(format!("Peer: {peer}"));
    if session.req_header().method.is_idempotent() {
        e.retry.decide_reuse(reused);
    } else {
        e.set_retry(false);
    }
    e
}

/// Send the request to the worker and its answer to the client. Returns
/// whether the client connection and the worker connection may be reused,
/// and the error, if any.
async fn forward(
    proxy: &Proxy,
    session: &mut ServerSession,
    upstream: &mut Upstream1,
    peer: &HttpPeer,
    body: Option<&Bytes>,
    ctx: &mut RequestCtx,
) -> (bool, bool, Option<Box<Error>>) {
    upstream.read_timeout = peer.options.read_timeout;
    upstream.write_timeout = peer.options.write_timeout;

    let mut req = session.req_header().clone();
    req.set_version(Version::HTTP_11);
    let http11 = session.req_header().version == Version::HTTP_11;
    let had_host = req.headers.contains_key(HOST);
    if let Err(e) = sanitize_h1_upstream_request(&mut req, peer.options.http_upstream_request_policy, http11)
    {
        return (false, true, Some(e.into_down()));
    }
    if let Err(e) = FledgeProxy::set_forwarded(session, ctx, &mut req) {
        return (false, true, Some(e));
    }
    // `HttpProxy` reconciles `Host` with the target after the filters. For
    // an origin-form request with a `Host` (nearly all) that changes
    // nothing, since fledge's filters touch neither; the others (absolute
    // form, no `Host`, `*`) take the same step: an absolute-form request
    // without `Host` gets one from its target.
    if req.uri.authority().is_some() || !had_host || !req.raw_path().starts_with(b"/") {
        if let Err(e) = standard_upstream_authority(&mut req, had_host) {
            return (false, true, Some(e));
        }
    }
    // A body whose `Content-Length` the client nominated in `Connection`
    // (so sanitising removed it) goes on chunked.
    if let Err(e) = finalize_h1_upstream_request_framing(&mut req, body.is_some()) {
        return (false, true, Some(e));
    }
    if let Err(e) = upstream.write_request_header(Box::new(req)).await {
        return (false, false, Some(e.into_up()));
    }
    // The body and its end. A failed send still lets a complete answer
    // through (the worker may have answered before it read), but the
    // worker connection is not reused, and the send error is the one
    // reported if the answer fails too.
    let mut upstream_reusable = true;
    let mut send_error = None;
    if let Err(e) = send_body(upstream, body).await {
        tracing::warn!(target: "pingora_proxy", "send error, draining read buf: {e}");
        upstream_reusable = false;
        send_error = Some(e.into_up());
    }

    // The answer, task by task, while the client is watched: a client that
    // hangs up (or sends bytes it should not) ends the request at once and
    // frees the worker connection. The worker is polled first.
    let mut watch_client = true;
    loop {
        let read = tokio::select! {
            biased;
            read = upstream.read_response_task() => read,
            closed = session.read_body_or_idle(true), if watch_client => match closed {
                Err(e) => return (false, false, Some(e.into_down())),
                Ok(_) => {
                    watch_client = false;
                    continue;
                }
            },
        };
        let (task, upstream_done) = match read {
            Ok(task) => {
                let end = task.is_end();
                (task, end)
            }
            Err(e) => {
                upstream_reusable = false;
                (HttpTask::Failed(send_error.take().unwrap_or(e).into_up()), true)
            }
        };
        let response_done = match deliver(proxy, session, task, ctx).await {
            Ok(done) => done,
            Err(e) => return (false, false, Some(e)),
        };
        if response_done || upstream_done {
            // The client's answer ended by its own framing before the
            // worker's did: bytes are left unread upstream.
            upstream_reusable &= upstream_done;
            break;
        }
    }

    let mut reuse_client = true;
    if let Err(e) = session.finish_body().await {
        tracing::error!(target: "pingora_proxy", "Error finish sending body to downstream: {e}");
        reuse_client = false;
    }
    (reuse_client, upstream_reusable, None)
}

/// The request body, if any, then its end (a flush).
async fn send_body(upstream: &mut Upstream1, body: Option<&Bytes>) -> pingora::Result<()> {
    if let Some(body) = body.filter(|b| !b.is_empty()) {
        upstream.write_body(body).await?;
    }
    upstream.finish_body().await?;
    Ok(())
}

/// One task of the worker's answer through fledge's steps and on to the
/// client (Pingora's `h1_response_filter` and `write_response_tasks`).
/// Returns whether the client's answer is complete.
async fn deliver(
    proxy: &Proxy,
    session: &mut ServerSession,
    task: HttpTask,
    ctx: &mut RequestCtx,
) -> pingora::Result<bool> {
    let task = match task {
        HttpTask::Header(mut header, end) => {
            FledgeProxy::watch_answer(session, &header, ctx);
            // An answer framed by the connection's close goes on chunked,
            // so that the client connection can be kept.
            let no_body =
                session.req_header().method == Method::HEAD || matches!(header.status.as_u16(), 204 | 304);
            if !no_body
                && !header.status.is_informational()
                && !end
                && !header.headers.contains_key(TRANSFER_ENCODING)
                && !header.headers.contains_key(CONTENT_LENGTH)
            {
                header.set_version(Version::HTTP_11);
                header.insert_header(TRANSFER_ENCODING, "chunked")?;
            }
            // Informational answers (100, 103) get the steps too, as in
            // `HttpProxy`; the final header follows them.
            FledgeProxy::stamp(session, proxy.is_shutting_down(), &mut header, ctx)?;
            HttpTask::Header(header, end)
        }
        HttpTask::Body(data, end) => {
            if let Some(bytes) = &data {
                ctx.sniffer.feed(bytes);
            }
            HttpTask::Body(data, end)
        }
        HttpTask::UpgradedBody(..) => {
            // The request was no upgrade: `HttpProxy` refuses this too.
            return Err(Error::explain(
                InternalError,
                "upgraded body on a request that is no upgrade",
            ));
        }
        other => other,
    };
    session.response_task(task).await
}
