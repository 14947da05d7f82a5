//! The headers fledge sets on every request and response (`X-Forwarded-*`,
//! `X-Fledge-Version`), with their names built once.
//!
//! Given a name as text, Pingora's `insert_header` parses it on every call
//! (and copies a name that is not a standard one into a fresh allocation);
//! given a `HeaderName`, our vendored `pingora-http` inserts it as it is
//! where the message keeps no spelling of names (`preserve_header_case:
//! false`, the default). Where it keeps one, ours go in with their usual
//! spelling.

use http::header::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

/// A header of ours: its name, and how it is spelt where names keep their
/// case.
pub(super) struct Ours {
    name: HeaderName,
    spelt: &'static str,
}

impl Ours {
    /// `name` in lower case; `spelt` as it goes out where case is kept.
    const fn new(name: &'static str, spelt: &'static str) -> Self {
        Ours {
            name: HeaderName::from_static(name),
            spelt,
        }
    }
}

// A `HeaderName` constant is how `http` declares its own (`http::header::HOST`):
// built at compile time, a static name that clones without counting.
#[allow(clippy::declare_interior_mutable_const)]
pub(super) const X_FORWARDED_FOR: Ours = Ours::new("x-forwarded-for", "X-Forwarded-For");
#[allow(clippy::declare_interior_mutable_const)]
pub(super) const X_FORWARDED_PROTO: Ours = Ours::new("x-forwarded-proto", "X-Forwarded-Proto");
#[allow(clippy::declare_interior_mutable_const)]
pub(super) const X_FORWARDED_HOST: Ours = Ours::new("x-forwarded-host", "X-Forwarded-Host");
/// The request id, with the access log on (`proxy::access_log`).
#[allow(clippy::declare_interior_mutable_const)]
pub(super) const X_REQUEST_ID: Ours = Ours::new("x-request-id", "X-Request-Id");
/// The version header: fledge answers with it, and reads it (by default) as
/// the override a request may carry, so its names come from there.
#[allow(clippy::declare_interior_mutable_const)]
pub(super) const X_FLEDGE_VERSION: Ours = Ours::new(
    super::DEFAULT_OVERRIDE_HEADER_LC,
    crate::config::DEFAULT_OVERRIDE_HEADER,
);

/// A message fledge sets its own headers on.
pub(super) trait SetOurs {
    /// Set `header` to `value`, replacing any value it had.
    fn set(&mut self, header: Ours, value: HeaderValue) -> Result<()>;
    /// Remove `header`.
    fn unset(&mut self, header: Ours);
    /// Make room for `more` headers at once (a map grows by rehashing).
    fn room_for(&mut self, more: usize);
}

macro_rules! set_ours {
    ($message:ty) => {
        impl SetOurs for $message {
            fn set(&mut self, header: Ours, value: HeaderValue) -> Result<()> {
                if self.has_case() {
                    self.insert_header(header.spelt, value)
                } else {
                    self.insert_header(header.name, value)
                }
            }

            fn unset(&mut self, header: Ours) {
                self.remove_header(&header.name);
            }

            fn room_for(&mut self, more: usize) {
                self.reserve_headers(more);
            }
        }
    };
}

set_ours!(RequestHeader);
set_ours!(ResponseHeader);

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(request: &RequestHeader) -> String {
        let mut buf = Vec::new();
        request.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn ours_replace_what_came_and_are_spelt_as_the_message_spells() {
        let mut plain = RequestHeader::build_no_case("GET", b"/", None).unwrap();
        plain.append_header("X-Forwarded-For", "6.6.6.6").unwrap();
        plain.room_for(2);
        plain
            .set(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"))
            .unwrap();
        plain
            .set(X_FLEDGE_VERSION, HeaderValue::from_static("canary"))
            .unwrap();
        assert_eq!(
            wire(&plain),
            "x-forwarded-for: 10.0.0.1\r\nx-fledge-version: canary\r\n"
        );

        let mut cased = RequestHeader::build("GET", b"/", None).unwrap();
        cased.append_header("x-forwarded-for", "6.6.6.6").unwrap();
        cased
            .set(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"))
            .unwrap();
        cased
            .set(X_FLEDGE_VERSION, HeaderValue::from_static("canary"))
            .unwrap();
        cased.unset(X_FLEDGE_VERSION);
        assert_eq!(wire(&cased), "X-Forwarded-For: 10.0.0.1\r\n");
        assert_eq!(cased.headers.len(), 1);
    }
}
