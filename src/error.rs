//! Fledge's own failure kinds on the data plane, as Pingora error types.
//!
//! Mapping to an HTTP status happens in one place, `FledgeProxy::fail_to_proxy`.

use pingora::ErrorType;

/// The chosen pool has no worker to send the request to.
pub const NO_WORKER: ErrorType = ErrorType::new("NoWorker");
