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
    /// A request target in none of the forms RFC 9112 §3.2 allows fledge:
    /// origin form (`/path?query`), absolute form (`http://host/path`), or
    /// `*` for `OPTIONS`; `CONNECT`'s authority form is not proxied. 400.
    BadTarget,
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
            Refusal::UnderscoreAlias | Refusal::BadHost | Refusal::BadTarget | Refusal::TransferEncoding => {
                400
            }
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

/// [`check`] for a head read by fledge's HTTP/1 codec (its bytes are
/// `buf`): the same limits on the bytes as sent, the head's exact size
/// included. Also the host the request is for: the authority of an
/// absolute-form target, else the one `Host` field; a request with none
/// (HTTP/1.1), two, or one that is no host name is refused (400).
pub fn check_head<'b, S: AsRef<str>>(
    buf: &'b [u8],
    head: &crate::http1::head::RequestHead,
    limits: &Limits,
    override_headers: &[S],
) -> Result<Option<&'b str>, Refusal> {
    let target = head.target.get(buf);
    if target.len() > limits.max_request_line_bytes {
        return Err(Refusal::UriTooLong);
    }
    let options = head.method.get(buf) == b"OPTIONS";
    let form_ok = match target {
        [b'/', ..] => true,
        b"*" => options,
        _ => absolute_authority(target).is_some_and(|a| !a.is_empty()),
    };
    if !form_ok {
        return Err(Refusal::BadTarget);
    }
    if head.fields.len() > limits.max_header_fields || head.len > limits.max_header_bytes {
        return Err(Refusal::HeadersTooLarge);
    }
    for f in head.fields.iter() {
        let name = f.name.get(buf);
        // A name is ASCII: `httparse` took only token bytes.
        if memchr::memchr(b'_', name).is_some()
            && is_alias(std::str::from_utf8(name).unwrap_or_default(), override_headers)
        {
            return Err(Refusal::UnderscoreAlias);
        }
    }
    let field = head.fields.one(buf, b"host").map_err(|()| Refusal::BadHost)?;
    let authority = absolute_authority(target);
    let host = match (authority, field) {
        (Some(a), _) => Some(a),
        (None, Some(h)) => Some(h),
        (None, None) if head.minor == 0 => None,
        (None, None) => return Err(Refusal::BadHost),
    };
    match host.map(std::str::from_utf8) {
        None => Ok(None),
        Some(Ok(h)) if is_host(h) => Ok(Some(h)),
        Some(_) => Err(Refusal::BadHost),
    }
}

/// The authority of an absolute-form target (`http://host:port/path`).
fn absolute_authority(target: &[u8]) -> Option<&[u8]> {
    let rest = target
        .strip_prefix(b"http://")
        .or_else(|| target.strip_prefix(b"https://"))?;
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// `name` with `_` read as `-` is a guarded header (names compare without
/// regard to case).
fn is_alias<S: AsRef<str>>(name: &str, override_headers: &[S]) -> bool {
    let same_prefix = |guarded: &str| {
        guarded.len() <= name.len()
            && guarded
                .bytes()
                .zip(name.bytes())
                .all(|(g, n)| g == n.to_ascii_lowercase() || (g == b'-' && n == b'_'))
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

    /// The span-based check agrees with the `RequestHeader` one, and adds
    /// what only the head as sent can tell.
    #[test]
    fn a_head_read_by_the_codec_is_checked_alike() {
        use crate::http1::head::RequestHead;
        let check = |raw: &str| {
            let head = RequestHead::parse(raw.as_bytes()).unwrap().unwrap();
            check_head(raw.as_bytes(), &head, &limits(), &["x-fledge-version"]).map(|h| h.map(str::to_owned))
        };
        let get = |fields: &str| check(&format!("GET /web HTTP/1.1\r\n{fields}\r\n"));
        assert_eq!(
            get("Host: a.example\r\nX_Custom: 1\r\n"),
            Ok(Some("a.example".into()))
        );
        assert_eq!(
            get("Host: a\r\nX_Forwarded_For: 1\r\n"),
            Err(Refusal::UnderscoreAlias)
        );
        assert_eq!(
            get("Host: a\r\nx_FLEDGE_Version: canary\r\n"),
            Err(Refusal::UnderscoreAlias)
        );
        assert_eq!(
            get("Host: a\r\nX_Fledge_Anything: 1\r\n"),
            Err(Refusal::UnderscoreAlias)
        );
        assert_eq!(get(""), Err(Refusal::BadHost), "HTTP/1.1 without a host");
        assert_eq!(get("Host: a\r\nHost: a\r\n"), Err(Refusal::BadHost));
        assert_eq!(get("Host: a, b\r\n"), Err(Refusal::BadHost));
        assert_eq!(get("Host: user@a\r\n"), Err(Refusal::BadHost));
        assert_eq!(get("Host: a/b\r\n"), Err(Refusal::BadHost));
        assert_eq!(check("GET / HTTP/1.0\r\n\r\n"), Ok(None));
        // Target forms (the differential fuzzer's first find: a target
        // with no leading slash, which hyper refuses).
        for bad in [
            "GET Dweb/x HTTP/1.1",
            "GET * HTTP/1.1",
            "CONNECT a:443 HTTP/1.1",
            "GET http:///x HTTP/1.1",
        ] {
            assert_eq!(
                check(&format!("{bad}\r\nHost: a\r\n\r\n")),
                Err(Refusal::BadTarget),
                "{bad}"
            );
        }
        assert_eq!(
            check("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Some("a".into()))
        );
        assert_eq!(
            check("GET http://b.example:8080/x?y HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Some("b.example:8080".into()))
        );
        assert_eq!(
            check(&format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(100))).map(|_| ()),
            Err(Refusal::UriTooLong)
        );
        let many = (0..10).map(|i| format!("X-H{i}: v\r\n")).collect::<String>();
        assert_eq!(get(&format!("Host: a\r\n{many}")), Err(Refusal::HeadersTooLarge));
        assert_eq!(
            get(&format!("Host: a\r\nX-Big: {}\r\n", "v".repeat(1000))),
            Err(Refusal::HeadersTooLarge)
        );
    }
}
