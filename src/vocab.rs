//! Closed vocabularies every plane speaks: how a request ended, which
//! version served it, which check a verdict failed, where a rollout is,
//! what the last verdict was. A leaf: it imports nothing of fledge, so
//! that the data plane (`routing`, `proxy`, `metrics`) and the control
//! plane (`analysis`, `control`) share words without importing each other.
//! Each has `as_str`, its label in metrics, logs and the journal.

use serde::{Deserialize, Serialize};

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

/// Which release serves a request, for one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// The release in production.
    Stable,
    /// The release being rolled out.
    Canary,
}

// === impl Version ===

impl Version {
    /// Label value, also the value of the `X-Fledge-Version` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Stable => "stable",
            Version::Canary => "canary",
        }
    }
}

/// The checks, in the order they are evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Absolute error rate.
    ErrorRate,
    /// Error rate increase over stable.
    ErrorRateIncrease,
    /// Absolute latency quantile.
    Latency,
    /// Latency quantile ratio over stable.
    LatencyRatio,
}

// === impl Check ===

impl Check {
    /// Label value, also the rollback reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Check::ErrorRate => "error_rate",
            Check::ErrorRateIncrease => "error_rate_increase",
            Check::Latency => "latency",
            Check::LatencyRatio => "latency_ratio",
        }
    }

    /// Every check.
    pub const ALL: [Check; 4] = [
        Check::ErrorRate,
        Check::ErrorRateIncrease,
        Check::Latency,
        Check::LatencyRatio,
    ];
}

/// Where a canary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Receiving its weight, judged at every tick, walking its steps.
    Progressing,
    /// Frozen by an operator: keeps its weight, takes no step; a breach
    /// still rolls it back.
    Paused,
    /// Reached 100 %: the release is done.
    Promoted,
    /// Taken back: weight 0 until an operator resumes it.
    RolledBack,
}

// === impl RolloutState ===

impl RolloutState {
    /// Every state.
    pub const ALL: [RolloutState; 4] = [
        RolloutState::Progressing,
        RolloutState::Paused,
        RolloutState::Promoted,
        RolloutState::RolledBack,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Progressing => "progressing",
            RolloutState::Paused => "paused",
            RolloutState::Promoted => "promoted",
            RolloutState::RolledBack => "rolled_back",
        }
    }

    /// Analysis still watches it (and may roll it back).
    pub fn is_judged(self) -> bool {
        matches!(self, RolloutState::Progressing | RolloutState::Paused)
    }
}

/// What the last verdict on a canary was (the verdict's kind, without its
/// figures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictKind {
    /// Too little traffic to say.
    Inconclusive,
    /// Within every threshold.
    Healthy,
    /// A threshold breached.
    Breach,
}

impl VerdictKind {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Inconclusive => "inconclusive",
            VerdictKind::Healthy => "healthy",
            VerdictKind::Breach => "breach",
        }
    }
}
