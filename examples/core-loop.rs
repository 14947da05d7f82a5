//! A measuring stick, not a proxy to run: the work of the `passthrough`
//! example with `forwarded` (one fixed upstream, `X-Forwarded-*` set, the
//! client's `Connection` header not passed on), done by a request loop of
//! our own straight over pingora-core's HTTP/1 sessions and connector, with
//! pingora-proxy's orchestration (its hooks, duplex, header clones and
//! checks) left out. The difference between the two is what fledge could
//! save by running its own request loop instead of Pingora's `HttpProxy`
//! (`load-tests/bench/instructions.sh`, `load-tests/README.md`).
//!
//! It handles what the benches send: requests without a body, answers with
//! one. Anything else fails the request and closes the connection.
//!
//! Usage: `core-loop LISTEN UPSTREAM THREADS`.

#![allow(missing_docs)]

#[path = "shared/stick.rs"]
mod stick;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::connectors::http::v1::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::server::ShutdownWatch;
use pingora::services::listening::Service;

/// The same allocator as fledge's and the passthrough's, so that all three
/// compare.
#[global_allocator]
static GLOBAL: fledge_alloc::Mimalloc = fledge_alloc::Mimalloc;

struct CoreLoop {
    peer: HttpPeer,
    connector: Connector,
    options: HttpServerOptions,
}

impl CoreLoop {
    /// One request: forward its header, copy the worker's answer, task by
    /// task, to the client, and give the worker connection back to the
    /// pool (which keeps it if its answer allows).
    async fn forward(&self, session: &mut ServerSession) -> Result<()> {
        let mut request: RequestHeader = session.req_header().clone();
        request.remove_header("connection");
        stick::set_forwarded(&mut request, session.req_header(), session.client_addr())?;
        let (mut upstream, _reused) = self.connector.get_http_session(&self.peer).await?;
        upstream.write_request_header(Box::new(request)).await?;
        loop {
            let task = upstream.read_response_task().await?;
            let end = task.is_end();
            match task {
                HttpTask::Header(header, _) => session.write_response_header(header).await?,
                HttpTask::Body(Some(body), _) => session.write_response_body(body, end).await?,
                HttpTask::Body(None, _) | HttpTask::Done => {}
                _ => return Error::e_explain(ErrorType::InternalError, "not a plain answer"),
            }
            if end {
                break;
            }
        }
        self.connector
            .release_http_session(upstream, &self.peer, Some(Duration::from_secs(30)))
            .await;
        Ok(())
    }
}

#[async_trait]
impl HttpServerApp for CoreLoop {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !session.read_request().await.ok()? {
            return None;
        }
        if !session.is_body_empty() {
            let _ = session.respond_error(501).await;
            return None;
        }
        if let Err(e) = self.forward(&mut session).await {
            session.on_proxy_failure(e);
            let _ = session.respond_error(502).await;
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        let reusable = session.finish().await.ok()??;
        Some(ReusedHttpStream::from_reusable_stream(reusable, settings))
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, threads] = args.as_slice() else {
        eprintln!("usage: core-loop LISTEN UPSTREAM THREADS");
        std::process::exit(2);
    };
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM is IP:port");
    let mut server = stick::server(threads.parse().expect("THREADS is a number"));
    let app = CoreLoop {
        peer: HttpPeer::new(upstream, false, String::new()),
        connector: Connector::new(None),
        options: stick::server_options(),
    };
    let mut service = Service::new("core-loop".to_string(), app);
    service.add_tcp(listen);
    server.add_service(service);
    server.run_forever();
}
