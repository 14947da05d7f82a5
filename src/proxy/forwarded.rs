//! Data plane: who the client is behind a trusted proxy (Traefik, a cloud
//! load balancer). From a peer in `trusted_proxies`, fledge believes
//! `X-Forwarded-For` (or RFC 7239 `Forwarded` without it), and the client is
//! the rightmost address that is not itself a trusted proxy: every hop
//! appends the address it saw, so the hops right of the client are trusted
//! ones and anything left of it is the client's own claim. From any other
//! peer nothing of it is believed (`docs/config.md`).
//!
//! Pure and allocation-free: headers in, an address out. Parsed by hand
//! (a split on commas and semicolons) rather than with a crate: the two
//! grammars are a few lines, and the request path allocates nothing here.

use std::net::IpAddr;

use http::header::HeaderName;
use ipnet::IpNet;

use crate::routing::Fields;

// Names built at compile time: a lookup by `&str` parses the name first,
// every time (about half of a lookup's cost).
#[allow(clippy::declare_interior_mutable_const)]
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
#[allow(clippy::declare_interior_mutable_const)]
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
#[allow(clippy::declare_interior_mutable_const)]
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
#[allow(clippy::declare_interior_mutable_const)]
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Whether `ip` is in `nets` (IPv4-mapped IPv6 addresses as IPv4).
pub(crate) fn is_trusted(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

/// One address of a forwarding header: `203.0.113.7`, `2001:db8::1`,
/// `[2001:db8::1]:4711`, `203.0.113.7:4711`, quoted or not.
fn address(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    // IPv4 with a port (an IPv6 address has more than one colon).
    match s.split_once(':') {
        Some((v4, port)) if !port.contains(':') => v4.parse().ok(),
        _ => None,
    }
}

/// The client behind a trusted peer, from the request's `X-Forwarded-For`
/// (every field line, in order), or `Forwarded`'s `for=` without one:
/// the rightmost address not in `nets`, or the leftmost when all are.
/// `None` when neither header names an address.
pub(crate) fn client_behind<H: Fields + ?Sized>(headers: &H, nets: &[IpNet]) -> Option<IpAddr> {
    let mut walk = Walk::default();
    let mut any = false;
    headers.each_value(&X_FORWARDED_FOR, |line| {
        if let Ok(line) = std::str::from_utf8(line) {
            any = true;
            line.split(',').for_each(|hop| walk.hop(hop, nets));
        }
    });
    if any {
        return walk.client();
    }
    headers.each_value(&FORWARDED, |line| {
        if let Ok(line) = std::str::from_utf8(line) {
            for element in line.split(',') {
                walk.hop(param(element, "for").unwrap_or(""), nets);
            }
        }
    });
    walk.client()
}

/// The hops of a forwarding chain, read from the left (header lines come
/// in order), keeping what the walk from the right would find: the
/// rightmost hop not trusted is the client; a hop that is no address ends
/// that walk (what is left of it is unknown, so it restarts here), and
/// with no untrusted hop the leftmost trusted one reached is the client.
#[derive(Default)]
struct Walk {
    untrusted: Option<IpAddr>,
    leftmost_trusted: Option<IpAddr>,
}

impl Walk {
    fn hop(&mut self, hop: &str, nets: &[IpNet]) {
        match address(hop) {
            None => *self = Walk::default(),
            Some(ip) if !is_trusted(nets, ip) => {
                self.untrusted = Some(ip);
                self.leftmost_trusted = None;
            }
            Some(ip) => {
                self.leftmost_trusted.get_or_insert(ip);
            }
        }
    }

    fn client(&self) -> Option<IpAddr> {
        self.untrusted.or(self.leftmost_trusted)
    }
}

/// The value of `key` in one element of `Forwarded` (`for=…;proto=…`),
/// quotes and spaces left for the caller.
fn param<'a>(element: &'a str, key: &str) -> Option<&'a str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim().eq_ignore_ascii_case(key).then_some(v)
    })
}

/// The first value of `x_header` (`X-Forwarded-Proto`, `-Host`), or else
/// `key` of `Forwarded`'s first element; trimmed and unquoted.
fn first<'a, H: Fields + ?Sized>(headers: &'a H, x_header: &HeaderName, key: &str) -> Option<&'a str> {
    let text = |name: &HeaderName| {
        headers
            .first_value(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    };
    let value = match text(x_header) {
        Some(v) => v.split(',').next()?,
        None => param(text(&FORWARDED)?.split(',').next()?, key)?,
    };
    Some(value.trim().trim_matches('"'))
}

/// The scheme the trusted peer was reached with: `X-Forwarded-Proto`'s
/// first value, or `Forwarded`'s first `proto=`; only `http` or `https`.
pub(crate) fn proto<H: Fields + ?Sized>(headers: &H) -> Option<&'static str> {
    match first(headers, &X_FORWARDED_PROTO, "proto")? {
        p if p.eq_ignore_ascii_case("https") => Some("https"),
        p if p.eq_ignore_ascii_case("http") => Some("http"),
        _ => None,
    }
}

/// The host the trusted peer was asked for: `X-Forwarded-Host`'s first
/// value, or `Forwarded`'s first `host=`, if it is a host name.
pub(crate) fn host<H: Fields + ?Sized>(headers: &H) -> Option<&str> {
    first(headers, &X_FORWARDED_HOST, "host").filter(|h| super::limits::is_host(h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn the_client_is_the_rightmost_address_no_trusted_proxy_owns() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        type Case<'a> = (&'a [(&'static str, &'a str)], Option<&'a str>);
        let cases: &[Case<'_>] = &[
            // Traefik appended what it saw; the client's own claim is left.
            (
                &[("x-forwarded-for", "6.6.6.6, 203.0.113.7")],
                Some("203.0.113.7"),
            ),
            // Two trusted hops right of the client.
            (
                &[("x-forwarded-for", "203.0.113.7, 10.1.2.3, 10.4.5.6")],
                Some("203.0.113.7"),
            ),
            // Several field lines are one list, in order.
            (
                &[
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x-forwarded-for", "198.51.100.9, 10.0.0.2"),
                ],
                Some("198.51.100.9"),
            ),
            // Every hop trusted: the leftmost.
            (&[("x-forwarded-for", "10.0.0.9, 10.0.0.2")], Some("10.0.0.9")),
            // Garbage left of the client does not matter; right of it, the
            // walk ends at the last trusted hop.
            (
                &[("x-forwarded-for", "not-an-ip, 203.0.113.7")],
                Some("203.0.113.7"),
            ),
            (
                &[("x-forwarded-for", "203.0.113.7, junk, 10.0.0.2")],
                Some("10.0.0.2"),
            ),
            (
                &[("x-forwarded-for", "[2001:db8::7]:4711, 10.0.0.2")],
                Some("2001:db8::7"),
            ),
            // IPv4-mapped trusted hops are trusted.
            (
                &[("x-forwarded-for", "203.0.113.7, ::ffff:10.0.0.2")],
                Some("203.0.113.7"),
            ),
            // RFC 7239 without X-Forwarded-For.
            (
                &[(
                    "forwarded",
                    r#"for=6.6.6.6, for="[2001:db8::cafe]:4711";proto=https, for=10.0.0.2"#,
                )],
                Some("2001:db8::cafe"),
            ),
            // X-Forwarded-For wins over Forwarded.
            (
                &[
                    ("forwarded", "for=198.51.100.1"),
                    ("x-forwarded-for", "203.0.113.7"),
                ],
                Some("203.0.113.7"),
            ),
            (&[], None),
            (&[("x-forwarded-for", "")], None),
        ];
        for (h, want) in cases {
            let got = client_behind(&headers(h), &trusted);
            assert_eq!(got, want.map(|w| w.parse().unwrap()), "{h:?}");
        }
    }

    #[test]
    fn proto_and_host_are_believed_only_when_well_formed() {
        assert_eq!(proto(&headers(&[("x-forwarded-proto", "https")])), Some("https"));
        assert_eq!(
            proto(&headers(&[("x-forwarded-proto", "HTTPS, http")])),
            Some("https")
        );
        assert_eq!(proto(&headers(&[("x-forwarded-proto", "gopher")])), None);
        assert_eq!(
            proto(&headers(&[("forwarded", "for=1.2.3.4;proto=https")])),
            Some("https")
        );
        assert_eq!(
            host(&headers(&[("x-forwarded-host", "acme.example.com")])),
            Some("acme.example.com")
        );
        assert_eq!(
            host(&headers(&[("x-forwarded-host", "evil.example.com/x")])),
            None
        );
        assert_eq!(
            host(&headers(&[("forwarded", r#"host="acme.example.com:8443""#)])),
            Some("acme.example.com:8443")
        );
    }
}
