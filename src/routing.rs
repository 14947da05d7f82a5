//! Data plane, pure: which tenant and which version serve a request.
//!
//! [`RouteTable::decide`] takes a [`RequestView`] (host, headers, client
//! address) and returns a [`Decision`]. It does no I/O, never awaits, never
//! locks and never allocates: the control plane has compiled everything it
//! needs into the table (host maps, weights in basis points, hash seeds,
//! policies).
//!
//! Version precedence, first match wins:
//!
//! 1. the policy's override header (`X-Fledge-Version: stable|canary`), only
//!    from a client address in the policy's `override_from` networks;
//! 2. while the canary is active (a canary pool and a weight above 0), the
//!    signed version cookie fledge gave this client earlier (in this
//!    rollout's generation, within `cookies.max_age_seconds`): `canary` stays on
//!    the canary; `stable` is re-split with the bucket the cookie carries, so
//!    raising the weight still adds that client;
//! 3. the weighted split: the sticky key (the policy's application cookie,
//!    Odoo's `session_id`; else fledge's signed bucket cookie; else the client
//!    address) is hashed with a per-tenant seed into one of 10 000 buckets,
//!    and buckets below the weight (in basis points) go to the canary. A
//!    client's bucket never changes, so raising the weight only adds clients.
//!
//! The version cookie exists because the sticky key changes at login: before
//! it, a browser has no `session_id`; after it, it does, and its hash would
//! land elsewhere. The cookie keeps the client on the version it started on.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};

pub use self::cookie::{unix_now, CookieKey, BUCKET_COOKIE, VERSION_COOKIE};
pub use self::table::{Placement, TenantRoute, Tuning};
use crate::config::Weight;
pub use crate::vocab::Version;

mod cookie;
mod split;
mod table;

/// Number of buckets of the weighted split: one per basis point.
pub const BUCKETS: u16 = Weight::FULL;

/// Why a version was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The override header, from an allowed client.
    Override,
    /// The version cookie fledge set earlier.
    Cookie,
    /// The weighted split on the sticky key.
    Split,
    /// No active canary: stable for everyone.
    NoCanary,
}

/// A request's header fields, as routing reads them: an `http::HeaderMap`
/// (HTTP/2, Pingora's HTTP/1), or the spans of fledge's HTTP/1 codec
/// ([`crate::http1::head::FieldsIn`]). Routing reads the policy's override
/// header and the cookies, no more.
pub trait Fields {
    /// Every value of the field `name`, in order, to `each`.
    fn each_value<'s>(&'s self, name: &HeaderName, each: impl FnMut(&'s [u8]));

    /// The first value of the field `name`.
    fn first_value<'s>(&'s self, name: &HeaderName) -> Option<&'s [u8]> {
        let mut first = None;
        self.each_value(name, |v| {
            first.get_or_insert(v);
        });
        first
    }
}

impl Fields for HeaderMap {
    fn each_value<'s>(&'s self, name: &HeaderName, each: impl FnMut(&'s [u8])) {
        self.get_all(name)
            .into_iter()
            .map(http::HeaderValue::as_bytes)
            .for_each(each);
    }

    fn first_value<'s>(&'s self, name: &HeaderName) -> Option<&'s [u8]> {
        self.get(name).map(http::HeaderValue::as_bytes)
    }
}

/// What the request path knows about a request when it routes it.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a, H: Fields + ?Sized = HeaderMap> {
    /// Host name, as sent (case and port are dealt with here).
    pub host: &'a str,
    /// Request headers (override header and cookies are read from them).
    pub headers: &'a H,
    /// The client's address, when known.
    pub client_ip: Option<IpAddr>,
    /// The time to check a version cookie's age against (Unix seconds);
    /// `None`: the system clock, read only when the request carries one.
    pub now: Option<u32>,
}

/// The outcome of [`RouteTable::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No tenant has this host.
    NoTenant,
    /// The request goes to this tenant and version.
    Route(Route),
}

/// A routed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Index of the tenant in [`RouteTable::tenants`].
    pub tenant: usize,
    /// The version picked.
    pub version: Version,
    /// Why.
    pub reason: Reason,
    /// The client's bucket, 0..10 000, when the split was consulted.
    pub bucket: Option<u16>,
    /// The response must set the version cookie (for `version` and `bucket`).
    pub set_version_cookie: bool,
    /// The response must set the bucket cookie (the sticky key was the client
    /// address, which changes when a laptop changes networks).
    pub set_bucket_cookie: bool,
}

/// Everything the data plane needs to route, built by the control plane and
/// published as one snapshot.
#[derive(Debug)]
pub struct RouteTable {
    tenants: Vec<TenantRoute>,
    exact: HostMap,
    wildcard: HostMap,
    pools: Vec<Arc<crate::upstream::Pool>>,
    cookie_key: Arc<CookieKey>,
    tuning: Tuning,
}

/// Host name → tenant index. aHash, randomly keyed per process: several
/// times cheaper than SipHash on short keys, and still not predictable by
/// clients choosing Host headers.
type HostMap = HashMap<Box<str>, u32, ahash::RandomState>;

/// Longest host name we route; longer ones cannot be DNS names.
const MAX_HOST: usize = 253;

// === impl Reason ===

impl Reason {
    /// Label value for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Override => "override",
            Reason::Cookie => "cookie",
            Reason::Split => "split",
            Reason::NoCanary => "no_canary",
        }
    }
}

// === impl RouteTable ===

impl RouteTable {
    /// Route one request. Pure and allocation-free.
    pub fn decide<H: Fields + ?Sized>(&self, req: &RequestView<'_, H>) -> Decision {
        let Some(tenant) = self.tenant_index(req.host) else {
            return Decision::NoTenant;
        };
        let t = &self.tenants[tenant];
        let policy = t.policy();
        let canary_active = t.canary_active();

        if let Some(value) = req.headers.first_value(&policy.override_header) {
            if req
                .client_ip
                .is_some_and(|ip| policy.override_from.iter().any(|n| n.contains(&ip)))
            {
                let wanted = match value {
                    b"canary" if t.canary().is_some() => Some(Version::Canary),
                    b"stable" | b"canary" => Some(Version::Stable),
                    _ => None,
                };
                if let Some(version) = wanted {
                    return Decision::Route(Route {
                        tenant,
                        version,
                        reason: Reason::Override,
                        bucket: None,
                        set_version_cookie: false,
                        set_bucket_cookie: false,
                    });
                }
            }
        }

        if t.canary().is_none() {
            return Decision::Route(Route {
                tenant,
                version: Version::Stable,
                reason: Reason::NoCanary,
                bucket: None,
                set_version_cookie: false,
                set_bucket_cookie: false,
            });
        }

        let cookies = cookie::scan(req.headers, &policy.sticky_cookie);
        if canary_active {
            let max_age = u32::try_from(self.tuning.cookie_max_age_seconds).unwrap_or(u32::MAX);
            if let Some(pin) = cookies.version.and_then(|c| {
                let now = req.now.unwrap_or_else(cookie::unix_now);
                self.cookie_key
                    .verify_version(c, t.epoch(), (now, t.since()), max_age)
            }) {
                let version = match pin.version {
                    Version::Canary => Version::Canary,
                    Version::Stable => t.split(pin.bucket),
                };
                return Decision::Route(Route {
                    tenant,
                    version,
                    reason: Reason::Cookie,
                    bucket: Some(pin.bucket),
                    set_version_cookie: version != pin.version,
                    set_bucket_cookie: false,
                });
            }
        }

        let (bucket, from_address) = if let Some(id) = cookies.sticky {
            (split::bucket(t.seed(), id), false)
        } else if let Some(b) = cookies
            .bucket
            .and_then(|c| self.cookie_key.verify_bucket(c, t.seed()))
        {
            (b, false)
        } else {
            (split::bucket_for_ip(t.seed(), req.client_ip), true)
        };
        let (version, reason) = if canary_active {
            (t.split(bucket), Reason::Split)
        } else {
            (Version::Stable, Reason::NoCanary)
        };
        Decision::Route(Route {
            tenant,
            version,
            reason,
            bucket: Some(bucket),
            set_version_cookie: canary_active,
            set_bucket_cookie: from_address,
        })
    }

    /// Index of the tenant serving `host` (exact names first, then the most
    /// specific wildcard). Case-insensitive; a port and a trailing dot are
    /// ignored. Lower-casing uses a stack buffer, not the heap.
    pub fn tenant_index(&self, host: &str) -> Option<usize> {
        let host = strip_port(host).trim_end_matches('.');
        if host.is_empty() || host.len() > MAX_HOST {
            return None;
        }
        let mut buf = [0u8; MAX_HOST];
        let lower = &mut buf[..host.len()];
        lower.copy_from_slice(host.as_bytes());
        lower.make_ascii_lowercase();
        // Lower-casing ASCII bytes of valid UTF-8 keeps it valid UTF-8.
        let lower = std::str::from_utf8(lower).ok()?;

        if let Some(&i) = self.exact.get(lower) {
            return Some(i as usize);
        }
        let mut rest = lower;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(&i) = self.wildcard.get(parent) {
                return Some(i as usize);
            }
            rest = parent;
        }
        None
    }

    /// All tenants, in name order.
    pub fn tenants(&self) -> &[TenantRoute] {
        &self.tenants
    }

    /// Every pool referenced by a tenant (each once).
    pub fn pools(&self) -> &[Arc<crate::upstream::Pool>] {
        &self.pools
    }

    /// The key that signs fledge's cookies.
    pub fn cookie_key(&self) -> &CookieKey {
        &self.cookie_key
    }

    /// Timeouts and cookie settings the request path applies.
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests;
