//! Control plane: the admin listener (`admin.listen`, loopback by default).
//!
//! Endpoints:
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/healthz` | the process is up |
//! | GET | `/readyz` | a route table is published |
//! | GET | `/metrics` | Prometheus exposition of fledge's registry |
//!
//! It runs as a Pingora service (`ServeHttp`), so it shares the server's
//! lifecycle: graceful shutdown, and its listening socket is handed over on
//! a graceful upgrade like the proxy's.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{Encoder, TextEncoder};

use crate::control::Control;

/// The admin application.
pub struct Admin {
    control: Arc<Control>,
    registry: prometheus::Registry,
}

impl Admin {
    /// Serve `control`'s state and `registry`'s metrics.
    pub fn new(control: Arc<Control>, registry: prometheus::Registry) -> Self {
        Admin { control, registry }
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        let mut body = Vec::new();
        let encoder = TextEncoder::new();
        match encoder.encode(&self.registry.gather(), &mut body) {
            Ok(()) => reply(StatusCode::OK, encoder.format_type(), body),
            Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store")
        .body(body)
        .expect("static response parts are valid")
}

/// A JSON error body: `{"error": "..."}`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Vec<u8>> {
    let body = serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default();
    reply(status, "application/json", body)
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        match (method, path.as_str()) {
            (Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            (Method::GET, "/readyz") => {
                let tenants = self.control.routes().load().tenants().len();
                reply(
                    StatusCode::OK,
                    "text/plain",
                    format!("ready: {tenants} tenants\n").into_bytes(),
                )
            }
            (Method::GET, "/metrics") => self.metrics(),
            (_, "/healthz" | "/readyz" | "/metrics") => {
                json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => json_error(StatusCode::NOT_FOUND, "no such endpoint"),
        }
    }
}
