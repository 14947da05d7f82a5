//! A bare Pingora passthrough: every request goes to one fixed upstream, no
//! routing, no header work. Built with fledge's profile and dependencies, it
//! is the baseline fledge's per-request CPU is measured against
//! (`load-tests/bench/routing-overhead.sh`).
//!
//! Usage: `passthrough LISTEN UPSTREAM THREADS [forwarded]`. With
//! `forwarded` it also sets `X-Forwarded-For/-Proto/-Host` as fledge does:
//! the header work any proxy in front of Odoo's `proxy_mode` must do, so the
//! difference to fledge is the cost of routing alone.

#![allow(missing_docs)]

#[path = "shared/stick.rs"]
mod stick;

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, ProxyServiceBuilder, Session};

/// mimalloc, as Pingora's own examples use a non-glibc allocator: glibc's
/// malloc spends a tenth of the proxy's CPU in free/consolidate under load.
/// The same allocator as fledge's (`alloc/`), so that the two compare.
#[global_allocator]
static GLOBAL: fledge_alloc::Mimalloc = fledge_alloc::Mimalloc;

struct Passthrough {
    upstream: SocketAddr,
    forwarded: bool,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        if self.forwarded {
            stick::set_forwarded(upstream, session.req_header(), session.client_addr())?;
        }
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream, threads, forwarded) = match args.as_slice() {
        [_, l, u, t, rest @ ..] if rest.len() <= 1 => (
            l.clone(),
            u.parse().expect("UPSTREAM is IP:port"),
            t.parse().expect("THREADS is a number"),
            rest.first().is_some_and(|f| f == "forwarded"),
        ),
        _ => {
            eprintln!("usage: passthrough LISTEN UPSTREAM THREADS [forwarded]");
            std::process::exit(2);
        }
    };
    let mut server = stick::server(threads);
    let mut proxy = ProxyServiceBuilder::new(&server.configuration, Passthrough { upstream, forwarded })
        .name("passthrough")
        .server_options(stick::server_options())
        .build();
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
