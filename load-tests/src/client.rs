//! A small HTTP/1.1 client over hyper: a pool of kept-alive connections
//! shared by all virtual users, as many browsers behind one NAT would be
//! (fledge keeps each user on its version by cookie, not by connection).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::target::Target;

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An answer.
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

/// The shared client.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    /// A client with a connection pool.
    pub fn new() -> Http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        Http { client }
    }

    /// Send `method` to `url` with `headers` and `body`.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Answer> {
        let mut req = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Full::new(body))?;
        let exchange = async {
            let resp = self.client.request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("no answer in {REQUEST_TIMEOUT:?}"))?
    }

    /// PUT a JSON body.
    pub async fn put_json(&self, url: &str, value: &serde_json::Value) -> anyhow::Result<Answer> {
        let body = Bytes::from(serde_json::to_vec(value)?);
        let a = self
            .send(Method::PUT, url, &[("content-type", "application/json")], body)
            .await?;
        anyhow::ensure!(a.status.is_success(), "{url}: {}", a.status);
        Ok(a)
    }

    /// GET from the admin API; the JSON answer.
    pub async fn admin_get(&self, target: &Target, path: &str) -> anyhow::Result<serde_json::Value> {
        self.admin(target, Method::GET, path).await
    }

    /// POST (no body) to the admin API; the JSON answer.
    pub async fn admin_post(&self, target: &Target, path: &str) -> anyhow::Result<serde_json::Value> {
        self.admin(target, Method::POST, path).await
    }

    /// GET from one replica's admin API (`admin`, `http://host:port`).
    pub async fn admin_get_at(
        &self,
        target: &Target,
        admin: &str,
        path: &str,
    ) -> anyhow::Result<serde_json::Value> {
        self.admin_at(target, admin, Method::GET, path).await
    }

    async fn admin(&self, target: &Target, method: Method, path: &str) -> anyhow::Result<serde_json::Value> {
        self.admin_at(target, &target.admin, method, path).await
    }

    async fn admin_at(
        &self,
        target: &Target,
        admin: &str,
        method: Method,
        path: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let auth = format!("Bearer {}", target.token);
        let url = format!("{admin}{path}");
        let a = self
            .send(method, &url, &[("authorization", &auth)], Bytes::new())
            .await?;
        anyhow::ensure!(a.status.is_success(), "{url}: {}", a.status);
        Ok(serde_json::from_slice(&a.body)?)
    }
}
