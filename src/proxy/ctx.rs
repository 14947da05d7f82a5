//! Per-request state, created once in `new_ctx` and read by every hook.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;

use super::classify::JsonRpcSniffer;
use super::retry::InFlight;
use crate::routing::{Route, RouteTable, Version};

/// What the hooks of one request share.
pub struct RequestCtx {
    /// One route-table snapshot for the whole request, whatever reloads
    /// happen meanwhile.
    pub(crate) table: Arc<RouteTable>,
    /// Set by `request_filter` for routed requests.
    pub(crate) route: Option<Route>,
    /// The version actually serving the request: the route's, or stable
    /// after a canary fallback.
    pub(crate) served: Version,
    /// The client's address (failures are grouped by it, or by the route's
    /// bucket: `proxy::failing_client`).
    pub(crate) client_ip: Option<std::net::IpAddr>,
    /// `/websocket` or `/longpolling/`: long-lived, to the WebSocket workers.
    pub(crate) long_lived: bool,
    /// The worker of the current attempt, until its outcome is reported
    /// to its pool (passive health).
    pub(crate) peer: Option<SocketAddr>,
    /// This request in the retry budget (and its retry, once taken).
    pub(crate) in_flight: InFlight,
    /// When the request header was read.
    pub(crate) started: Instant,
    /// Request body bytes received so far (the upload rate check).
    pub(crate) body_bytes: u64,
    /// When the request body began to come in (the upload rate check).
    pub(crate) body_since: Option<Instant>,
    /// Watches a JSON-RPC response for an `error` member.
    pub(crate) sniffer: JsonRpcSniffer,
    /// The request carried the rehearsal header.
    pub(crate) rehearsal: bool,
    /// The peer is a trusted proxy (`trusted_proxies`): its forwarding
    /// headers were believed, and `client_ip` is the client behind it.
    pub(crate) via_proxy: bool,
    /// The client reached us (or the trusted proxy) over TLS.
    pub(crate) secure: bool,
    /// This request's id in the access log (0: the log is off).
    pub(crate) request_id: u64,
    /// Its client's place under the per-address cap, behind a trusted
    /// proxy (held until the request ends).
    pub(crate) forwarded_slot: Option<super::connections::ForwardedSlot>,
    /// The request counted on its worker (least-connections pools).
    pub(crate) in_flight_on: Option<crate::upstream::InFlight>,
}

impl RequestCtx {
    pub(crate) fn new(table: Arc<RouteTable>, in_flight: InFlight) -> Self {
        RequestCtx {
            table,
            route: None,
            served: Version::Stable,
            client_ip: None,
            long_lived: false,
            peer: None,
            in_flight,
            started: Instant::now(),
            body_bytes: 0,
            body_since: None,
            sniffer: JsonRpcSniffer::default(),
            rehearsal: false,
            via_proxy: false,
            secure: false,
            request_id: 0,
            forwarded_slot: None,
            in_flight_on: None,
        }
    }
}
