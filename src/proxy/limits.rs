//! Data plane: what a client may send, checked before routing.
//!
//! Pingora's own parser allows 256 header fields and a 1 MiB header block;
//! fledge answers above its configured, tighter limits (`limits:`) with 431
//! or 414, before any routing, and closes the connection. One pass over the
//! headers, no allocation.

use pingora::http::RequestHeader;

use crate::config::Limits;

/// Header names whose underscore spellings are refused: WSGI servers (Odoo's
/// werkzeug) map `X_Forwarded_For` and `X-Forwarded-For` to the same
/// variable, so an underscore copy could stand in for a header fledge sets
/// or strips. Every `X-Fledge-*` and every policy's override header too.
const GUARDED: [&str; 6] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
];

/// Why a request is refused before it is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Request target over `max_request_line_bytes`: 414.
    UriTooLong,
    /// Header block over `max_header_bytes` or fields over
    /// `max_header_fields`: 431.
    HeadersTooLarge,
    /// An underscore spelling of a header fledge sets or strips: 400.
    UnderscoreAlias,
    /// A `Host` (or `:authority`) that is no host name: 400, before any
    /// tenant is matched (`evil.example/.acme.test` must not match
    /// `*.acme.test`, nor come back in a redirect or `X-Forwarded-Host`).
    BadHost,
    /// `Transfer-Encoding` other than one `chunked`: 400. Pingora already
    /// refuses most such framings; it forwards `chunked, chunked`, two
    /// `Transfer-Encoding` lines and `gzip, chunked`, which HAProxy and
    /// nginx refuse, and which a worker behind us might read otherwise.
    TransferEncoding,
}

impl Refusal {
    /// The status answered.
    pub fn status(self) -> u16 {
        match self {
            Refusal::UriTooLong => 414,
            Refusal::HeadersTooLarge => 431,
            Refusal::UnderscoreAlias | Refusal::BadHost | Refusal::TransferEncoding => 400,
        }
    }
}

/// Check `req` against `limits`; `override_headers` are the policies'
/// override header names (lower case), whose underscore spellings are
/// refused too.
pub fn check<S: AsRef<str>>(req: &RequestHeader, limits: &Limits, override_headers: &[S]) -> Option<Refusal> {
    let target = req.raw_path().len();
    if target > limits.max_request_line_bytes {
        return Some(Refusal::UriTooLong);
    }
    if req.headers.len() > limits.max_header_fields {
        return Some(Refusal::HeadersTooLarge);
    }
    // Request line plus "name: value\r\n" per field: what the client sent,
    // give or take whitespace.
    let mut bytes = req.method.as_str().len() + target + 12;
    for (name, value) in &req.headers {
        let name = name.as_str();
        bytes += name.len() + value.len() + 4;
        if name.contains('_') && is_alias(name, override_headers) {
            return Some(Refusal::UnderscoreAlias);
        }
    }
    if bytes > limits.max_header_bytes {
        return Some(Refusal::HeadersTooLarge);
    }
    if !super::host_of(req).is_none_or(is_host) {
        return Some(Refusal::BadHost);
    }
    let mut encodings = req.headers.get_all(http::header::TRANSFER_ENCODING).iter();
    match (encodings.next(), encodings.next()) {
        (None, _) => None,
        (Some(te), None) if te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") => None,
        _ => Some(Refusal::TransferEncoding),
    }
}

/// `name` with `_` read as `-` is a guarded header (names are lower case).
fn is_alias<S: AsRef<str>>(name: &str, override_headers: &[S]) -> bool {
    let same_prefix = |guarded: &str| {
        guarded.len() <= name.len()
            && guarded
                .bytes()
                .zip(name.bytes())
                .all(|(g, n)| g == n || (g == b'-' && n == b'_'))
    };
    let same = |guarded: &str| guarded.len() == name.len() && same_prefix(guarded);
    same_prefix("x-fledge-")
        || override_headers.iter().any(|h| same(h.as_ref()))
        || GUARDED.iter().any(|g| same(g))
}

/// A host as a client may name one: a registered name (RFC 3986
/// `reg-name` as DNS spells it: letters, digits, `-`, `_`, dots; IDNA
/// names in their `xn--` A-label form) or an IP literal, with an optional
/// port. No userinfo, path, percent-encoding or anything else.
pub fn is_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((v6, tail)) = rest.split_once(']') else {
            return false;
        };
        if v6.is_empty()
            || !v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        let port = match tail {
            "" => None,
            tail => match tail.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        };
        (None, port)
    } else {
        match host.split_once(':') {
            Some((name, port)) => (Some(name), Some(port)),
            None => (Some(host), None),
        }
    };
    if port.is_some_and(|p| p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    name.is_none_or(|name| {
        let name = name.strip_suffix('.').unwrap_or(name);
        !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_header_bytes: 1024,
            max_header_fields: 10,
            max_request_line_bytes: 100,
            max_connections: 10,
            max_connections_per_ip: 10,
            header_timeout: std::time::Duration::from_secs(15),
            tls_handshake_timeout: std::time::Duration::from_secs(10),
            min_upload_bytes_per_second: 1024,
        }
    }

    fn req(path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn requests_within_the_limits_pass() {
        let r = req(
            "/web/login?x=1",
            &[("host", "a"), ("x_custom", "1"), ("cookie", "a=b")],
        );
        assert_eq!(check(&r, &limits(), &["x-fledge-version"]), None);
    }

    #[test]
    fn each_limit_has_its_status() {
        let long = format!("/{}", "a".repeat(100));
        assert_eq!(
            check(&req(&long, &[]), &limits(), &["x"]).map(Refusal::status),
            Some(414)
        );
        let many: Vec<(String, &str)> = (0..11).map(|i| (format!("x-h{i}"), "v")).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            check(&req("/", &many), &limits(), &["x"]).map(Refusal::status),
            Some(431)
        );
        let big = "v".repeat(1000);
        assert_eq!(
            check(&req("/", &[("x-big", &big)]), &limits(), &["x"]).map(Refusal::status),
            Some(431)
        );
    }

    #[test]
    fn underscore_spellings_of_guarded_headers_are_refused() {
        for name in [
            "x_fledge_version",
            "x_fledge_rehearsal",
            "x-fledge_anything",
            "x_forwarded_for",
            "x-forwarded_proto",
            "x_forwarded-host",
            "x_forwarded_port",
            "x_forwarded_prefix",
            "x_real_ip",
            // Every policy's override header, not only the default one.
            "x_canary",
        ] {
            let r = req("/", &[(name, "canary")]);
            assert_eq!(
                check(&r, &limits(), &["x-fledge-version", "x-canary"]),
                Some(Refusal::UnderscoreAlias),
                "{name}"
            );
        }
        // Other underscores are the application's business.
        assert_eq!(
            check(
                &req("/", &[("x_odoo_db", "acme")]),
                &limits(),
                &["x-fledge-version"]
            ),
            None
        );
    }

    #[test]
    fn only_host_names_are_host_names() {
        for good in [
            "acme.example.com",
            "ACME.Example.com.",
            "acme.example.com:8080",
            "xn--bcher-kva.example",
            "odoo_internal.local",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8443",
            "[2001:db8::1]",
        ] {
            assert!(is_host(good), "{good}");
        }
        for bad in [
            "",
            "evil.example/.globex.test",
            "evil.example?.globex.test",
            "evil.example#.globex.test",
            "user@acme.example.com",
            "acme.example.com:",
            "acme.example.com:80:80",
            "acme.example.com:http",
            "acme.example.com:123456",
            "acme..example.com",
            ".acme.example.com",
            "acme.example.com..",
            "acme%2eexample.com",
            "acme example.com",
            "bücher.example",
            "[::1",
            "[::1]x",
            "[]",
            "[::1]:",
            "[zz::1]",
            "*.acme.example.com",
        ] {
            assert!(!is_host(bad), "{bad}");
        }
        let long = format!("{}.example", "a".repeat(64));
        assert!(!is_host(&long));
        let mut r = req("/", &[("host", "evil.example/.acme.example.com")]);
        assert_eq!(check(&r, &limits(), &["x"]), Some(Refusal::BadHost));
        r = req("/", &[("host", "acme.example.com")]);
        assert_eq!(check(&r, &limits(), &["x"]), None);
    }

    #[test]
    fn only_a_single_chunked_transfer_encoding_passes() {
        let te = |values: &[&str]| {
            let headers: Vec<(&str, &str)> = values.iter().map(|v| ("transfer-encoding", *v)).collect();
            check(&req("/", &headers), &limits(), &["x"])
        };
        assert_eq!(te(&["chunked"]), None);
        assert_eq!(te(&["Chunked "]), None);
        for bad in [
            &["chunked", "chunked"][..],
            &["chunked, chunked"],
            &["gzip, chunked"],
            &["gzip"],
        ] {
            assert_eq!(te(bad), Some(Refusal::TransferEncoding), "{bad:?}");
        }
    }
}
