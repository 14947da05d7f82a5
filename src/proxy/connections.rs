//! Data plane, per connection: caps on open client connections, in total
//! and per client address. Pingora has none (`docs/reliability.md` §0).
//!
//! [`Guarded`] wraps the proxy's Pingora app: it sees each accepted
//! connection at accept, before a byte is read, counts it, and drops it at
//! once when a cap is reached; connections already open are untouched. On
//! the TLS listener it then does the TLS handshake itself (Pingora's
//! listener would do it before any app sees the connection, unbounded by
//! the caps, for up to a hard-coded 60 s, logging every abandoned one at
//! error level), within `limits.tls_handshake_timeout_seconds`; a failed
//! or abandoned handshake is counted (`fledge_tls_handshake_failures_total`)
//! and logged at debug only. It then runs an HTTP/1
//! connection's requests itself (Pingora's keep-alive loop, which Pingora
//! keeps inside one call, moved here): it reads each request header, serves
//! the common request on fledge's own path (`fast_path`)
//! and hands any other, header read, to Pingora's `HttpProxy`. HTTP/2
//! connections go to Pingora whole.
//!
//! It also bounds the time a request header may take as a whole (Pingora's
//! timer restarts on every read, so a client sending a byte every 59 s
//! holds a connection for as long as it likes): from the connection's start
//! for its first request, from a kept-alive request's first byte for the
//! next ones (on TLS too, through `replay::Replay`), the header must be complete
//! within `limits.header_timeout_seconds`, or the connection is closed.
//!
//! Between kept-alive requests a clear-text connection waits for its
//! socket to turn readable and reads ahead what has come (up to 4 KiB, on
//! the stack of the poll) for the request's own read to take, so a request
//! costs no extra receive and no buffer is held while idle. A TLS
//! connection peeks through `replay::Replay`. One timer per connection
//! serves both clocks (idle time, header deadline), moved rather than made
//! anew for each request.
//!
//! Per-address counts live in a fixed table of atomic counters indexed by a
//! keyed hash of the address: no lock, no allocation, bounded memory
//! whatever the number of clients. Two addresses that share a slot share a
//! cap, which errs towards refusing; with 65 536 slots that takes thousands
//! of clients at once, each near the cap.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use pingora::ErrorType::InvalidHTTPHeader;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{MetricFamily, MetricType};
use tokio::time::{timeout_at, Instant, Sleep};

use super::fast_path::{self, Proxy};
use super::proxy_protocol;
use super::replay::Replay;
use super::WRITE_BUFFER;
use crate::routing::RouteTable;

const SLOTS: usize = 1 << 16;

/// Counts shared by the guard and the metrics.
pub struct Connections {
    open: AtomicUsize,
    per_ip: Box<[AtomicU32]>,
    hasher: ahash::RandomState,
    refused_total: AtomicU64,
    refused_per_ip: AtomicU64,
    slow_headers: AtomicU64,
    tls_timeouts: AtomicU64,
    tls_errors: AtomicU64,
    proxy_refused: AtomicU64,
    forwarded_refused: AtomicU64,
}

/// The TLS listener: its address, and what does its handshakes.
pub struct TlsListener {
    /// `tls.listen`: a connection accepted on this port (and address, unless
    /// it is the unspecified one) is a TLS connection.
    pub listen: std::net::SocketAddr,
    /// Pingora's rustls acceptor, with fledge's certificate resolver.
    pub acceptor: pingora::listeners::tls::Acceptor,
}

/// The proxy behind the caps.
pub struct Guarded {
    inner: Arc<Proxy>,
    routes: Arc<ArcSwap<RouteTable>>,
    counts: Arc<Connections>,
    /// Serve the common request on fledge's own path (else all go to
    /// `HttpProxy`).
    own_path: bool,
    /// The TLS listener, if any: its connections are handshaken here.
    tls: Option<TlsListener>,
}

/// A request header not complete by its deadline.
struct Overdue;

/// One admitted connection; gives its place back when dropped.
struct Admitted<'a> {
    counts: &'a Connections,
    slot: Option<usize>,
}

impl Connections {
    /// Empty counts.
    pub fn new() -> Arc<Connections> {
        Arc::new(Connections {
            open: AtomicUsize::new(0),
            per_ip: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
            hasher: ahash::RandomState::new(),
            refused_total: AtomicU64::new(0),
            refused_per_ip: AtomicU64::new(0),
            slow_headers: AtomicU64::new(0),
            tls_timeouts: AtomicU64::new(0),
            tls_errors: AtomicU64::new(0),
            proxy_refused: AtomicU64::new(0),
            forwarded_refused: AtomicU64::new(0),
        })
    }

    /// Take a place for a connection, or `None` at the total cap.
    fn admit(&self, max_total: usize) -> Option<Admitted<'_>> {
        if self.open.fetch_add(1, Relaxed) >= max_total {
            self.open.fetch_sub(1, Relaxed);
            self.refused_total.fetch_add(1, Relaxed);
            return None;
        }
        Some(Admitted {
            counts: self,
            slot: None,
        })
    }
}

impl Admitted<'_> {
    /// Count the connection against `ip`'s cap too; `false` at the cap
    /// (the connection is to be closed; dropping `self` gives its total
    /// place back).
    fn count_ip(&mut self, ip: IpAddr, max_per_ip: u32) -> bool {
        let counts = self.counts;
        let slot = (counts.hasher.hash_one(ip.to_canonical()) as usize) % SLOTS;
        if counts.per_ip[slot].fetch_add(1, Relaxed) >= max_per_ip {
            counts.per_ip[slot].fetch_sub(1, Relaxed);
            counts.refused_per_ip.fetch_add(1, Relaxed);
            return false;
        }
        self.slot = Some(slot);
        true
    }
}

/// A request's place among those a client has in flight through trusted
/// proxies (`Connections::admit_forwarded`); given back when dropped.
pub(crate) struct ForwardedSlot {
    counts: Arc<Connections>,
    slot: usize,
}

impl Drop for ForwardedSlot {
    fn drop(&mut self) {
        self.counts.per_ip[self.slot].fetch_sub(1, Relaxed);
    }
}

impl Connections {
    /// A place for a request from `client`, forwarded by a trusted proxy:
    /// behind Traefik one connection carries many clients, so the
    /// per-address cap counts each client's requests in flight instead
    /// (with its direct connections, in the same table). `None` at the
    /// cap (counted).
    pub(crate) fn admit_forwarded(
        self: &Arc<Self>,
        client: IpAddr,
        max_per_ip: u32,
    ) -> Option<ForwardedSlot> {
        let slot = (self.hasher.hash_one(client.to_canonical()) as usize) % SLOTS;
        if self.per_ip[slot].fetch_add(1, Relaxed) >= max_per_ip {
            self.per_ip[slot].fetch_sub(1, Relaxed);
            self.forwarded_refused.fetch_add(1, Relaxed);
            return None;
        }
        Some(ForwardedSlot {
            counts: Arc::clone(self),
            slot,
        })
    }
}

impl Connections {
    /// Count a connection closed for a slow header; what its caller returns.
    fn slow(&self, ip: Option<IpAddr>) -> Option<Stream> {
        self.slow_headers.fetch_add(1, Relaxed);
        tracing::debug!(?ip, "request header not complete in time: connection closed");
        None
    }
}

/// Whether a clear-text connection opens with HTTP/2's preface (h2c with
/// prior knowledge). Peeks one byte first, so that a short HTTP/1 request is
/// not held waiting for 24 bytes that will never come. That byte is peeked
/// in place (`TcpStream::poll_peek`); only a `P` goes on to Pingora's
/// `try_peek`, which reads and pushes back.
async fn is_h2_preface(stream: &mut Stream) -> std::io::Result<bool> {
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut first = [0u8; 1];
    let peeked = match stream.as_any().downcast_ref::<TcpStream>() {
        Some(tcp) => std::future::poll_fn(|cx| tcp.poll_peek(cx, &mut first)).await? == 1,
        None => stream.try_peek(&mut first).await?,
    };
    if !peeked || first[0] != PREFACE[0] {
        return Ok(false);
    }
    let mut head = [0u8; 24];
    Ok(stream.try_peek(&mut head).await? && &head == PREFACE)
}

/// Wait until a kept-alive connection's next request begins to arrive.
/// `None` when the client closed the connection or it failed. Clear text
/// reads ahead (`TcpStream::poll_read_ahead`: the bytes that came, read
/// once and put back for the request's read; no buffer held while idle,
/// the write buffer given back meanwhile); TLS peeks through [`Replay`].
async fn next_request(stream: Stream, tls: bool) -> Option<Stream> {
    // Our listeners hand clear-text connections over as Pingora's TCP
    // stream; the downcast gives back the same box.
    let mut stream = if tls {
        stream
    } else {
        let mut tcp = stream.into_any().downcast::<TcpStream>().ok()?;
        tcp.set_idle_write_buffer(None);
        let read = std::future::poll_fn(|cx| tcp.poll_read_ahead(cx)).await.ok()?;
        if read == 0 {
            return None;
        }
        tcp.set_idle_write_buffer(Some(WRITE_BUFFER));
        return Some(tcp);
    };
    let mut byte = [0u8; 1];
    match stream.try_peek(&mut byte).await {
        Ok(true) => Some(stream),
        Ok(false) | Err(_) => None,
    }
}

/// The session of a connection's next request: the first takes the
/// listener's reuse limit and keep-alive (`first`), a later one the settings
/// the request before left.
fn session(
    stream: Stream,
    first: Option<(Option<u32>, Option<u64>)>,
    settings: Option<HttpPersistentSettings>,
) -> ServerSession {
    let mut session = ServerSession::new_http1(stream);
    match first {
        Some((limit, keepalive)) => {
            session.set_keepalive(keepalive);
            session.set_keepalive_reuses_remaining(limit);
        }
        None => {
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
        }
    }
    session
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.counts.open.fetch_sub(1, Relaxed);
        if let Some(slot) = self.slot {
            self.counts.per_ip[slot].fetch_sub(1, Relaxed);
        }
    }
}

impl Guarded {
    /// Cap the connections `inner` serves, with the limits of the current
    /// route table (so a reload changes them for new connections).
    /// `own_path`: serve the common request on fledge's own path.
    pub fn new(
        inner: Proxy,
        routes: Arc<ArcSwap<RouteTable>>,
        counts: Arc<Connections>,
        own_path: bool,
        tls: Option<TlsListener>,
    ) -> Self {
        Guarded {
            inner: Arc::new(inner),
            routes,
            counts,
            own_path,
            tls,
        }
    }

    /// The TLS listener's acceptor, when `local` is its address.
    fn tls_for(&self, local: Option<std::net::SocketAddr>) -> Option<&TlsListener> {
        let (tls, local) = (self.tls.as_ref()?, local?);
        (tls.listen.port() == local.port()
            && (tls.listen.ip().is_unspecified() || tls.listen.ip() == local.ip()))
        .then_some(tls)
    }

    /// The TLS handshake of a connection accepted on the TLS listener,
    /// within `deadline`. `None`: it failed or took too long (counted).
    async fn handshake(
        &self,
        tls: &TlsListener,
        stream: Stream,
        deadline: Instant,
        ip: Option<IpAddr>,
    ) -> Option<Stream> {
        // Our listeners hand connections over as Pingora's TCP stream.
        let tcp = stream.into_any().downcast::<TcpStream>().ok()?;
        // Boxed: a rustls handshake's future is large, and only its
        // connection's first moments need it.
        let handshake = Box::pin(tls.acceptor.tls_handshake(*tcp));
        match timeout_at(deadline, handshake).await {
            Ok(Ok(stream)) => Some(Box::new(stream)),
            Ok(Err(e)) => {
                self.counts.tls_errors.fetch_add(1, Relaxed);
                tracing::debug!(?ip, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                self.counts.tls_timeouts.fetch_add(1, Relaxed);
                tracing::debug!(?ip, "TLS handshake not done in time: connection closed");
                None
            }
        }
    }

    /// The PROXY header of a connection from a load balancer, by
    /// `deadline`: the stream with the header's client as its peer, and
    /// that client (`peer` for a header that names none). `None`: refused
    /// (counted), the connection is to be closed.
    async fn proxy_header(
        &self,
        stream: Stream,
        deadline: Instant,
        peer: Option<IpAddr>,
    ) -> Option<(Stream, Option<IpAddr>)> {
        // Our listeners hand connections over as Pingora's TCP stream.
        let mut tcp = stream.into_any().downcast::<TcpStream>().ok()?;
        match timeout_at(deadline, proxy_protocol::read_header(&mut tcp)).await {
            Ok(Ok(Some(client))) => {
                proxy_protocol::set_peer(&mut tcp, client);
                Some((tcp, Some(client.ip())))
            }
            Ok(Ok(None)) => Some((tcp, peer)),
            Ok(Err(why)) => {
                self.counts.proxy_refused.fetch_add(1, Relaxed);
                tracing::debug!(?peer, ?why, "PROXY header refused: connection closed");
                None
            }
            Err(_) => {
                self.counts.slow(peer);
                None
            }
        }
    }

    /// One request of an HTTP/1 connection: its header read by `deadline`
    /// (`timer` set to it only if the header is not whole at once), then
    /// served. A shutdown (`closing`) while the header is awaited drops the
    /// connection, as Pingora does.
    async fn request(
        &self,
        mut session: ServerSession,
        deadline: Instant,
        mut timer: std::pin::Pin<&mut Sleep>,
        closing: std::pin::Pin<&mut (impl std::future::Future<Output = ()> + Send)>,
        shutdown: &ShutdownWatch,
    ) -> Result<Option<ReusedHttpStream>, Overdue> {
        let read = tokio::select! {
            biased;
            read = session.read_request() => read,
            () = async {
                timer.as_mut().reset(deadline);
                timer.as_mut().await;
            } => return Err(Overdue),
            () = closing => return Ok(None),
        };
        match read {
            Ok(true) => {}
            // The client closed a kept-alive connection between requests.
            Ok(false) => return Ok(None),
            Err(mut e) => {
                e.as_down();
                if *e.etype() == InvalidHTTPHeader {
                    if let Err(e) = session.respond_error(400).await {
                        tracing::debug!(error = %e, "could not send error response");
                    }
                }
                tracing::debug!(error = %e, "request header not read");
                session.shutdown().await;
                return Ok(None);
            }
        }
        Ok(if self.own_path && fast_path::takes(&mut session) {
            fast_path::serve(&self.inner, session).await
        } else {
            self.inner.process_new_http(session, shutdown).await
        })
    }
}

#[async_trait]
impl ServerApp for Guarded {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let digest = stream.get_socket_digest();
        let peer = digest
            .as_ref()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr())
            .and_then(|a| a.as_inet())
            .copied();
        let (max_total, max_per_ip, header_timeout, handshake_timeout, idle, proxy_protocol) = {
            let table = self.routes.load();
            let tuning = table.tuning();
            let limits = &tuning.limits;
            let from = &tuning.proxy_protocol_from;
            (
                limits.max_connections,
                limits.max_connections_per_ip,
                limits.header_timeout,
                limits.tls_handshake_timeout,
                tuning.timeouts.client_keepalive,
                !from.is_empty() && peer.is_some_and(|ip| super::forwarded::is_trusted(from, ip)),
            )
        };
        let Some(mut admitted) = self.counts.admit(max_total) else {
            tracing::debug!(ip = ?peer, "connection refused at the total cap");
            // Dropping the stream closes it.
            return None;
        };
        // The connection's clock: its PROXY header, TLS handshake and first
        // request header are each due within their deadline from here.
        let start = Instant::now();
        // From a load balancer in `proxy_protocol.from`, the client is the
        // one its PROXY header names; read before anything else.
        let (stream, ip) = if proxy_protocol {
            self.proxy_header(stream, start + header_timeout, peer).await?
        } else {
            (stream, peer)
        };
        // A trusted proxy carries many clients: it counts against the
        // total only, never against the per-address cap.
        let via_proxy = ip.is_some_and(|ip| {
            let table = self.routes.load();
            let trusted = &table.tuning().trusted_proxies;
            !trusted.is_empty() && super::forwarded::is_trusted(trusted, ip)
        });
        if let Some(ip) = ip.filter(|_| !via_proxy) {
            if !admitted.count_ip(ip, max_per_ip) {
                tracing::debug!(?ip, "connection refused at the per-address cap");
                return None;
            }
        }
        // Counted from accept: a TLS connection holds its place while it
        // shakes hands, for the handshake's deadline at most.
        let stream = match self.tls_for(local) {
            Some(tls) => self.handshake(tls, stream, start + handshake_timeout, ip).await?,
            None => stream,
        };
        let tls = stream.get_ssl_digest().is_some();
        // HTTP/2 by ALPN, and a stream without a socket (never on our
        // listeners): Pingora serves them whole. h2 bounds its own headers
        // (64 KiB, CONTINUATION cap) and its idle time.
        if local.is_none() || (tls && stream.selected_alpn_proto() == Some(ALPN::H2)) {
            return self.inner.process_new(stream, shutdown).await;
        }
        let mut stream: Stream = if tls {
            // TLS does not peek; kept-alive requests need it (below).
            Box::new(Replay::new(stream))
        } else {
            stream
        };
        // The first request's header is due within the deadline from the
        // connection's start (nginx's client_header_timeout does the same).
        let mut deadline = Instant::now() + header_timeout;
        let h2c = self.inner.server_options().is_some_and(|o| o.h2c);
        if !tls && h2c {
            match timeout_at(deadline, is_h2_preface(&mut stream)).await {
                Ok(Ok(true)) => return self.inner.process_new(stream, shutdown).await,
                Ok(Ok(false)) => {}
                Ok(Err(_)) => return None,
                Err(_) => return self.counts.slow(ip),
            }
        }

        // HTTP/1: Pingora's keep-alive loop (apps/mod.rs), run here so that
        // each request gets its header deadline and an idle connection can
        // be closed at shutdown. Between requests the loop holds only the
        // stream and its settings; the session (most of a KiB) is built for
        // each request and lives in the request's own boxed future.
        let mut first = Some(
            self.inner
                .server_options()
                .and_then(|o| o.keepalive_request_limit),
        );
        let mut settings: Option<HttpPersistentSettings> = None;
        // A shutdown (SIGTERM, or an upgrade handing over) closes an idle
        // connection at once, as nginx does, so that its client moves on
        // while idle rather than find it reset under a request when the
        // process exits. One wait on the shutdown flag for the connection's
        // life, polled between requests: registering and removing a waiter
        // on every request cost two lock round trips.
        let mut stopping = shutdown.clone();
        let closing = async move {
            if !*stopping.borrow() {
                let _ = stopping.changed().await;
            }
        };
        tokio::pin!(closing);
        // One timer for the connection's life, moved before each use: the
        // keep-alive idle time between requests, and a request header's
        // deadline when the header is not whole at once (`request`). Moved
        // later, it only updates its registered deadline (an atomic
        // exchange); a timer made, registered and removed for every wait
        // cost about a thousand instructions a request, and a second one
        // ~170 bytes per idle connection.
        let timer = tokio::time::sleep(idle);
        tokio::pin!(timer);
        loop {
            // The request's (boxed, large) future is dropped as soon as it is
            // done: an idle kept-alive connection holds only its stream. The
            // session goes straight into it: a local would keep its room
            // (680 bytes) in this future for the connection's life. Its
            // header is most often whole in what the wait read ahead, and
            // then parsed on the first poll: the deadline needs no timer.
            //
            // The future is made in its box: `Box::pin(self.request(…))`
            // would make it on the stack and copy all of it (8 KiB, most of
            // it room for later states) into the box, ~8 000 instructions a
            // request. (Bound in a statement of its own, too: a temporary
            // in `Box::pin(f).await` keeps its room in this future, which
            // every idle connection holds, until the await ends.)
            let request = {
                // Only the first request reads the shutdown flag (a lock).
                let first = first
                    .take()
                    .map(|limit| (limit, (!*shutdown.borrow()).then_some(idle.as_secs())));
                let session = session(stream, first, settings.take());
                Box::into_pin(Box::write(
                    Box::new_uninit(),
                    self.request(session, deadline, timer.as_mut(), closing.as_mut(), shutdown),
                ))
            };
            let served = request.await;
            let Ok(served) = served else {
                return self.counts.slow(ip);
            };
            let (reused, kept) = served?.consume();
            settings = kept;

            // Wait for the next request's first byte (the keep-alive idle
            // time), then start its clock; closed at once on a shutdown
            // (above).
            timer.as_mut().reset(Instant::now() + idle);
            stream = tokio::select! {
                biased;
                next = next_request(reused, tls) => match next {
                    Some(stream) => stream,
                    None => return None,
                },
                () = &mut timer => return None,
                () = &mut closing => return None,
            };
            deadline = Instant::now() + header_timeout;
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

// === metrics ===

const OPEN: &str = "fledge_connections_open";
const REFUSED: &str = "fledge_connections_refused_total";
const SLOW: &str = "fledge_slow_headers_total";
const TLS_FAILURES: &str = "fledge_tls_handshake_failures_total";
const PROXY_REFUSED: &str = "fledge_proxy_headers_refused_total";
const FORWARDED_REFUSED: &str = "fledge_forwarded_requests_refused_total";

/// Prometheus view of the connection counts.
pub struct ConnectionExporter {
    counts: Arc<Connections>,
    descs: Vec<Desc>,
}

impl ConnectionExporter {
    /// Export `counts`.
    pub fn new(counts: Arc<Connections>) -> Self {
        use crate::metrics::desc;
        let descs = vec![
            desc(OPEN, "Client connections open on the proxy listeners.", &[]),
            desc(
                REFUSED,
                "Client connections closed on arrival at a cap, by cap.",
                &["cap"],
            ),
            desc(
                SLOW,
                "Client connections closed because a request header took longer than limits.header_timeout_seconds.",
                &[],
            ),
            desc(
                TLS_FAILURES,
                "TLS connections closed before their handshake was done, by reason (timeout: limits.tls_handshake_timeout_seconds).",
                &["reason"],
            ),
            desc(
                PROXY_REFUSED,
                "Connections from proxy_protocol.from closed for a missing, malformed or truncated PROXY header (one not whole in time counts as a slow header).",
                &[],
            ),
            desc(
                FORWARDED_REFUSED,
                "Requests forwarded by a trusted proxy answered 429 because their client had limits.max_connections_per_ip requests in flight.",
                &[],
            ),
        ];
        ConnectionExporter { counts, descs }
    }
}

impl Collector for ConnectionExporter {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use crate::metrics::{counter, family, gauge};
        let c = &self.counts;
        vec![
            family(
                OPEN,
                &self.descs[0].help,
                MetricType::GAUGE,
                vec![gauge(&[], c.open.load(Relaxed) as f64)],
            ),
            family(
                REFUSED,
                &self.descs[1].help,
                MetricType::COUNTER,
                vec![
                    counter(&[("cap", "total")], c.refused_total.load(Relaxed) as f64),
                    counter(&[("cap", "per_ip")], c.refused_per_ip.load(Relaxed) as f64),
                ],
            ),
            family(
                SLOW,
                &self.descs[2].help,
                MetricType::COUNTER,
                vec![counter(&[], c.slow_headers.load(Relaxed) as f64)],
            ),
            family(
                TLS_FAILURES,
                &self.descs[3].help,
                MetricType::COUNTER,
                vec![
                    counter(&[("reason", "timeout")], c.tls_timeouts.load(Relaxed) as f64),
                    counter(&[("reason", "error")], c.tls_errors.load(Relaxed) as f64),
                ],
            ),
            family(
                PROXY_REFUSED,
                &self.descs[4].help,
                MetricType::COUNTER,
                vec![counter(&[], c.proxy_refused.load(Relaxed) as f64)],
            ),
            family(
                FORWARDED_REFUSED,
                &self.descs[5].help,
                MetricType::COUNTER,
                vec![counter(&[], c.forwarded_refused.load(Relaxed) as f64)],
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn caps_hold_and_places_come_back() {
        let c = Connections::new();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let admit = |ip: IpAddr| {
            let mut admitted = c.admit(3)?;
            admitted.count_ip(ip, 2).then_some(admitted)
        };
        let first = admit(a);
        let second = admit(a);
        assert!(first.is_some() && second.is_some());
        assert!(admit(a).is_none(), "a third from one address");
        let other = admit(b);
        assert!(other.is_some());
        assert!(admit(b).is_none(), "a fourth in total");
        assert_eq!(c.refused_per_ip.load(Relaxed), 1);
        assert_eq!(c.refused_total.load(Relaxed), 1);
        drop(first);
        let again = admit(a);
        assert!(again.is_some(), "a place came back");
        assert_eq!(c.open.load(Relaxed), 3);
    }

    /// A client socket and fledge's side of it, after a read the exact size
    /// of what the client sent (as a request body's last read is): the
    /// socket stays marked readable with nothing to read.
    async fn after_an_exact_read() -> (tokio::net::TcpStream, Stream) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut stream: Stream = Box::new(TcpStream::from(server));
        client.write_all(b"body").await.unwrap();
        let mut body = [0u8; 4];
        stream.read_exact(&mut body).await.unwrap();
        (client, stream)
    }

    #[tokio::test]
    async fn an_idle_connection_is_not_taken_for_a_next_request() {
        let (_client, stream) = after_an_exact_read().await;
        let waited = tokio::time::timeout(Duration::from_millis(300), next_request(stream, false)).await;
        assert!(waited.is_err(), "woke with nothing sent");
    }

    #[tokio::test]
    async fn the_next_request_wakes_the_wait_and_is_read_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, stream) = after_an_exact_read().await;
        let next = tokio::spawn(next_request(stream, false));
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut stream = tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("the request woke it")
            .unwrap()
            .expect("the connection is fine");
        let mut head = [0u8; 18];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"GET / HTTP/1.1\r\n\r\n");
    }

    /// A request longer than what is read ahead comes whole: the rest is
    /// read from the socket after the bytes put back.
    #[tokio::test]
    async fn a_request_longer_than_the_read_ahead_is_read_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, stream) = after_an_exact_read().await;
        let cookie = "c".repeat(3 * pingora::protocols::l4::stream::READ_AHEAD);
        let sent = format!("GET / HTTP/1.1\r\nCookie: {cookie}\r\n\r\n");
        let writer = tokio::spawn(async move {
            client.write_all(sent.as_bytes()).await.unwrap();
            (client, sent)
        });
        let mut stream = next_request(stream, false).await.expect("the connection is fine");
        let (_client, sent) = writer.await.unwrap();
        let mut read = vec![0u8; sent.len()];
        stream.read_exact(&mut read).await.unwrap();
        assert_eq!(read, sent.as_bytes());
    }

    /// A client that closes its idle connection ends the wait, and with it
    /// the connection.
    #[tokio::test]
    async fn a_client_closing_while_idle_ends_the_connection() {
        let (client, stream) = after_an_exact_read().await;
        let next = tokio::spawn(next_request(stream, false));
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(client);
        let next = tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("the close woke it")
            .unwrap();
        assert!(next.is_none(), "a closed connection is not served");
    }

    /// The h2c check looks at an HTTP/1 request without taking any of it,
    /// and still knows the preface.
    #[tokio::test]
    async fn the_h2c_check_leaves_an_http1_request_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for (sent, h2) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], false),
            (&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], true),
        ] {
            let (mut client, mut stream) = after_an_exact_read().await;
            client.write_all(sent).await.unwrap();
            assert_eq!(is_h2_preface(&mut stream).await.unwrap(), h2);
            let mut read = vec![0u8; sent.len()];
            stream.read_exact(&mut read).await.unwrap();
            assert_eq!(read, sent);
        }
    }

    /// The write buffer given back while idle comes back with the request:
    /// a response's header and body still leave together, at the flush.
    #[tokio::test]
    async fn the_next_request_gets_its_write_buffer_back() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, stream) = after_an_exact_read().await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut stream = next_request(stream, false).await.expect("the connection is fine");
        let mut head = [0u8; 18];
        stream.read_exact(&mut head).await.unwrap();
        stream.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        stream.write_all(b"Content-Length: 0\r\n\r\n").await.unwrap();
        let mut answer = [0u8; 40];
        let early = tokio::time::timeout(Duration::from_millis(200), client.read(&mut answer)).await;
        assert!(early.is_err(), "written before the flush: unbuffered");
        stream.flush().await.unwrap();
        let mut answer = [0u8; 38];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    }
}
