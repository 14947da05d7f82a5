//! Closed vocabularies used as metric labels: each has `as_str`.

/// How a request ended, from the canary's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// 1xx/2xx/3xx, or a WebSocket upgrade that succeeded.
    Ok,
    /// 4xx: the client's mistake, not the release's.
    ClientError,
    /// 5xx from a worker (or ours when no worker could answer).
    ServerError,
    /// HTTP 200 carrying a JSON-RPC `error` member, as Odoo reports
    /// exceptions: one that is the server's fault (`builtins.KeyError`,
    /// `psycopg2.*`, …).
    JsonRpcError,
    /// HTTP 200 carrying a JSON-RPC `error` the user caused: a session Odoo
    /// does not know, a validation or access error… (the policy's
    /// `analysis.client_exceptions`). Counted, not a failure.
    JsonRpcClientError,
    /// The worker could not be connected to.
    ConnectFailure,
    /// The worker did not answer in time.
    Timeout,
    /// The worker closed or reset the connection before answering fully.
    Reset,
    /// The client went away or sent garbage: not the canary's fault, and
    /// left out of every rate.
    ClientAbort,
}

impl Outcome {
    /// Number of outcomes (array sizes).
    pub const COUNT: usize = 9;

    /// Every outcome, in index order.
    pub const ALL: [Outcome; Self::COUNT] = [
        Outcome::Ok,
        Outcome::ClientError,
        Outcome::ServerError,
        Outcome::JsonRpcError,
        Outcome::JsonRpcClientError,
        Outcome::ConnectFailure,
        Outcome::Timeout,
        Outcome::Reset,
        Outcome::ClientAbort,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ClientError => "client_error",
            Outcome::ServerError => "server_error",
            Outcome::JsonRpcError => "jsonrpc_error",
            Outcome::JsonRpcClientError => "jsonrpc_client_error",
            Outcome::ConnectFailure => "connect_failure",
            Outcome::Timeout => "timeout",
            Outcome::Reset => "reset",
            Outcome::ClientAbort => "client_abort",
        }
    }

    /// Index into per-outcome arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Counts against the release.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::ServerError
                | Outcome::JsonRpcError
                | Outcome::ConnectFailure
                | Outcome::Timeout
                | Outcome::Reset
        )
    }

    /// Counts as a judged request (client aborts do not).
    pub fn is_judged(self) -> bool {
        self != Outcome::ClientAbort
    }
}
