//! The admin listener's connections: capped, and each request header due
//! within a deadline.
//!
//! Pingora's `ServeHttp` loop has neither: 300 clients sending half a header
//! each held 300 connections open, on the proxy's own descriptors. So the
//! admin app runs behind [`Listener`], which refuses connections beyond
//! `admin.max_connections` at accept and closes one whose request header
//! (the first, or the next on a kept-alive connection, idle time included)
//! is not whole within `limits.header_timeout_seconds`. The rest is what
//! Pingora's loop does: read the header, answer, reuse the connection.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::apps::{HttpPersistentSettings, ReusedHttpStream, ServerApp};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{MetricFamily, MetricType};
use tokio::time::{timeout_at, Instant};

use super::Admin;
use crate::control::Control;

/// How long a kept-alive admin connection waits for its next request
/// (Pingora's `ServeHttp` default), capped by the header deadline.
const KEEPALIVE_SECONDS: u64 = 60;

/// The admin app behind its cap and header deadline.
pub struct Listener {
    admin: Admin,
    control: Arc<Control>,
    max_connections: usize,
    counts: Arc<Counts>,
}

/// The admin listener's connection counts, and their Prometheus view.
pub struct Counts {
    open: AtomicUsize,
    refused: AtomicU64,
    slow: AtomicU64,
    descs: Vec<Desc>,
}

const OPEN: &str = "fledge_admin_connections_open";
const REFUSED: &str = "fledge_admin_connections_refused_total";
const SLOW: &str = "fledge_admin_slow_headers_total";

/// A place taken under the cap; given back when dropped.
struct Place<'a>(&'a AtomicUsize);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Counts {
    /// Zeros.
    pub fn new() -> Arc<Counts> {
        use crate::metrics::desc;
        Arc::new(Counts {
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            descs: vec![
                desc(OPEN, "Connections open on the admin listener.", &[]),
                desc(
                    REFUSED,
                    "Admin connections closed on arrival at admin.max_connections.",
                    &[],
                ),
                desc(
                    SLOW,
                    "Admin connections closed because a request header took longer than limits.header_timeout_seconds.",
                    &[],
                ),
            ],
        })
    }
}

impl Collector for Counts {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use crate::metrics::{counter, family, gauge};
        vec![
            family(
                OPEN,
                &self.descs[0].help,
                MetricType::GAUGE,
                vec![gauge(&[], self.open.load(Relaxed) as f64)],
            ),
            family(
                REFUSED,
                &self.descs[1].help,
                MetricType::COUNTER,
                vec![counter(&[], self.refused.load(Relaxed) as f64)],
            ),
            family(
                SLOW,
                &self.descs[2].help,
                MetricType::COUNTER,
                vec![counter(&[], self.slow.load(Relaxed) as f64)],
            ),
        ]
    }
}

impl Listener {
    /// `admin`, taking at most `max_connections` at once, counting in
    /// `counts`; the header deadline comes from `control`'s current limits.
    pub fn new(admin: Admin, control: Arc<Control>, max_connections: usize, counts: Arc<Counts>) -> Self {
        Listener {
            admin,
            control,
            max_connections,
            counts,
        }
    }

    fn admit(&self) -> Option<Place<'_>> {
        let c = &self.counts;
        if c.open.fetch_add(1, Relaxed) >= self.max_connections {
            c.open.fetch_sub(1, Relaxed);
            c.refused.fetch_add(1, Relaxed);
            return None;
        }
        Some(Place(&c.open))
    }

    /// Answer one request on `session`; the stream back, with what the next
    /// request's session takes over (bytes a client pipelined), when it may
    /// be reused.
    async fn serve(
        &self,
        mut session: ServerSession,
        stopping: bool,
    ) -> Option<(Stream, Option<HttpPersistentSettings>)> {
        session.set_keepalive((!stopping).then_some(KEEPALIVE_SECONDS));
        // Draining (SIGTERM, or a graceful upgrade handing over): not ready,
        // so that a load balancer sends no new client here.
        let draining = stopping && session.req_header().uri.path() == "/readyz";
        let response = if draining {
            http::Response::builder()
                .status(http::StatusCode::SERVICE_UNAVAILABLE)
                .header("Content-Type", "text/plain")
                .header("Cache-Control", "no-store")
                .body(b"not ready: draining\n".to_vec())
                .expect("static response parts are valid")
        } else {
            self.admin.response(&mut session).await
        };
        let (parts, body) = response.into_parts();
        let header: ResponseHeader = parts.into();
        if let Err(e) = session.write_response_header(Box::new(header)).await {
            tracing::debug!(error = %e, "admin: could not write the answer");
            return None;
        }
        if !body.is_empty() {
            if let Err(e) = session.write_response_body(body.into(), true).await {
                tracing::debug!(error = %e, "admin: could not write the answer");
                return None;
            }
        }
        let settings = HttpPersistentSettings::for_session(&session);
        let reusable = session.finish().await.ok().flatten()?;
        Some(ReusedHttpStream::from_reusable_stream(reusable, settings).consume())
    }
}

#[async_trait]
impl ServerApp for Listener {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let Some(_place) = self.admit() else {
            tracing::debug!("admin connection refused at admin.max_connections");
            return None;
        };
        let mut settings = None;
        loop {
            let header_timeout = self.control.routes().load().tuning().limits.header_timeout;
            let deadline = Instant::now() + header_timeout;
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings.take() {
                HttpPersistentSettings::apply_to_session(settings, &mut session);
            }
            match timeout_at(deadline, session.read_request()).await {
                Ok(Ok(true)) => {}
                // Closed between requests, or not HTTP.
                Ok(Ok(false)) | Ok(Err(_)) => return None,
                Err(_) => {
                    self.counts.slow.fetch_add(1, Relaxed);
                    tracing::debug!("admin request header not complete in time: connection closed");
                    return None;
                }
            }
            let stopping = *shutdown.borrow();
            (stream, settings) = self.serve(session, stopping).await?;
        }
    }
}
