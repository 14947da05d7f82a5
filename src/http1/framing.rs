//! Which body a message has (RFC 9112 §6), decided by fledge, strictly:
//! where the RFC lets a recipient choose, fledge refuses, because the
//! worker behind it might have chosen otherwise (request smuggling is two
//! parsers disagreeing on where a body ends).
//!
//! A request:
//! - `Transfer-Encoding` must be one field whose value is `chunked`
//!   (`chunked, chunked`, `gzip, chunked`, two fields, anything else:
//!   refused, 501 for a coding fledge does not know, 400 for the rest), and
//!   never in an HTTP/1.0 request (400);
//! - `Transfer-Encoding` with `Content-Length`: refused (400; the RFC lets
//!   a server take the chunked framing, but the message is what smuggling
//!   attempts look like, and no client of Odoo sends it);
//! - `Content-Length`: one or more fields and comma lists whose members
//!   are all the same `1*DIGIT` that fits in 64 bits (`+5`, `0x10`, `5 5`,
//!   an empty value, differing values: 400);
//! - neither: no body.
//!
//! A response (to a request fledge knows): none to `HEAD`, none with a
//! 1xx, 204 or 304 status; otherwise `Transfer-Encoding` ending in
//! `chunked` is chunked and any other ends at the close; then a valid
//! `Content-Length`; otherwise the body ends when the worker closes.
//! A worker's invalid framing is refused too (a 502 for the client).

use super::head::{is_tchar, Fields, RequestHead, ResponseHead};

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked: up to its last chunk and trailers.
    Chunked,
    /// Up to the end of the connection (responses only).
    UntilClose,
}

/// Why a message's framing is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `Content-Length` that is not one non-negative decimal number.
    ContentLength,
    /// `Transfer-Encoding` that is not one `chunked`.
    TransferEncoding,
    /// A transfer coding fledge does not implement (`gzip`, …): 501.
    UnknownCoding,
    /// `Transfer-Encoding` in an HTTP/1.0 request.
    TransferEncodingInHttp10,
    /// Both `Transfer-Encoding` and `Content-Length`.
    Both,
}

impl Refused {
    /// The status a client is answered with.
    pub fn status(self) -> u16 {
        match self {
            Refused::UnknownCoding => 501,
            _ => 400,
        }
    }
}

/// The body of `head`'s request (its bytes are `buf`).
pub fn request(buf: &[u8], head: &RequestHead) -> Result<Body, Refused> {
    let te = transfer_encoding(buf, &head.fields)?;
    let cl = content_length(buf, &head.fields)?;
    match (te, cl) {
        (Some(_), Some(_)) => Err(Refused::Both),
        (Some(_), None) if head.minor == 0 => Err(Refused::TransferEncodingInHttp10),
        (Some(Coding::Chunked), None) => Ok(Body::Chunked),
        (Some(Coding::Other), None) => Err(Refused::UnknownCoding),
        (None, Some(0)) | (None, None) => Ok(Body::None),
        (None, Some(n)) => Ok(Body::Length(n)),
    }
}

/// The body of `head`'s response to a request whose method was `HEAD`
/// (`to_head`) or not.
pub fn response(buf: &[u8], head: &ResponseHead, to_head: bool) -> Result<Body, Refused> {
    if to_head || head.status < 200 || head.status == 204 || head.status == 304 {
        return Ok(Body::None);
    }
    // A response's transfer codings are many in principle; only the last
    // says where the body ends.
    let mut te = head.fields.values(buf, b"transfer-encoding").peekable();
    if te.peek().is_some() {
        let last = te.last().unwrap_or_default();
        let last_coding = last
            .rsplit(|b| *b == b',')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        if content_length(buf, &head.fields)?.is_some() {
            return Err(Refused::Both);
        }
        return Ok(if last_coding.eq_ignore_ascii_case(b"chunked") {
            Body::Chunked
        } else {
            Body::UntilClose
        });
    }
    Ok(match content_length(buf, &head.fields)? {
        Some(n) => Body::Length(n),
        None => Body::UntilClose,
    })
}

/// A request's transfer coding, if it has one.
enum Coding {
    Chunked,
    Other,
}

fn transfer_encoding(buf: &[u8], fields: &Fields) -> Result<Option<Coding>, Refused> {
    let value = match fields.one(buf, b"transfer-encoding") {
        Ok(None) => return Ok(None),
        Ok(Some(v)) => v,
        Err(()) => return Err(Refused::TransferEncoding),
    };
    let codings = value.split(|b| *b == b',').map(<[u8]>::trim_ascii);
    let mut chunked = 0;
    let mut other = 0;
    for coding in codings {
        if coding.eq_ignore_ascii_case(b"chunked") {
            chunked += 1;
        } else if !coding.is_empty() && coding.iter().all(|b| is_tchar(*b)) {
            other += 1;
        } else {
            return Err(Refused::TransferEncoding);
        }
    }
    match (chunked, other) {
        (1, 0) => Ok(Some(Coding::Chunked)),
        (0, _) => Ok(Some(Coding::Other)),
        _ => Err(Refused::TransferEncoding),
    }
}

/// The one length every `Content-Length` field and list member says.
fn content_length(buf: &[u8], fields: &Fields) -> Result<Option<u64>, Refused> {
    let mut length = None;
    for value in fields.values(buf, b"content-length") {
        for member in value.split(|b| *b == b',') {
            let n = digits(member.trim_ascii()).ok_or(Refused::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(Refused::ContentLength);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// `1*DIGIT` that fits in 64 bits.
fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter()
        .try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> Result<Body, Refused> {
        let head = RequestHead::parse(raw.as_bytes()).unwrap().expect("a whole head");
        request(raw.as_bytes(), &head)
    }

    fn post(fields: &str) -> Result<Body, Refused> {
        req(&format!("POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n"))
    }

    /// The framing rows of `tests/hostile.rs`, with the verdict each keeps.
    #[test]
    fn the_hostile_tables_framings_keep_their_verdicts() {
        use Refused::*;
        let cases: &[(&str, Result<Body, Refused>)] = &[
            ("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", Err(Both)),
            ("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", Err(Both)),
            ("Content-Length: 5\r\nContent-Length: 6\r\n", Err(ContentLength)),
            ("Content-Length: 5, 6\r\n", Err(ContentLength)),
            ("Content-Length: 5\r\nContent-Length: 5\r\n", Ok(Body::Length(5))),
            ("Content-Length: 5, 5\r\n", Ok(Body::Length(5))),
            ("Content-Length: +5\r\n", Err(ContentLength)),
            ("Content-Length: -1\r\n", Err(ContentLength)),
            ("Content-Length: 0x10\r\n", Err(ContentLength)),
            ("Content-Length: 1_0\r\n", Err(ContentLength)),
            ("Content-Length: 5 5\r\n", Err(ContentLength)),
            ("Content-Length: \r\n", Err(ContentLength)),
            ("Content-Length: 99999999999999999999\r\n", Err(ContentLength)),
            ("Content-Length:  5 \r\n", Ok(Body::Length(5))),
            ("Content-Length: 0\r\n", Ok(Body::None)),
            (
                "Content-Length: 18446744073709551615\r\n",
                Ok(Body::Length(u64::MAX)),
            ),
            ("Content-Length: 18446744073709551616\r\n", Err(ContentLength)),
            ("Content_Length: 40\r\n", Ok(Body::None)),
            ("Transfer-Encoding: chunked\r\n", Ok(Body::Chunked)),
            ("Transfer-Encoding: Chunked \r\n", Ok(Body::Chunked)),
            ("Transfer-Encoding: chunked, chunked\r\n", Err(TransferEncoding)),
            ("Transfer-Encoding: chunked, gzip\r\n", Err(TransferEncoding)),
            ("Transfer-Encoding: gzip\r\n", Err(UnknownCoding)),
            ("Transfer-Encoding: gzip, chunked\r\n", Err(TransferEncoding)),
            ("Transfer-Encoding: xchunked\r\n", Err(UnknownCoding)),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                Err(TransferEncoding),
            ),
            ("Transfer-Encoding: \r\n", Err(TransferEncoding)),
            ("", Ok(Body::None)),
        ];
        for (fields, want) in cases {
            assert_eq!(&post(fields), want, "{fields:?}");
        }
        assert_eq!(
            req("POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(TransferEncodingInHttp10)
        );
        assert_eq!(
            req("POST / HTTP/1.0\r\nHost: a\r\nContent-Length: 5\r\n\r\n"),
            Ok(Body::Length(5))
        );
        // Statuses: 400 for the malformed, 501 for a coding not known.
        assert_eq!(TransferEncoding.status(), 400);
        assert_eq!(UnknownCoding.status(), 501);
    }

    fn resp(raw: &str, to_head: bool) -> Result<Body, Refused> {
        let head = ResponseHead::parse(raw.as_bytes())
            .unwrap()
            .expect("a whole head");
        response(raw.as_bytes(), &head, to_head)
    }

    #[test]
    fn a_responses_body_follows_rfc_9112_section_6_3() {
        let ok = |fields: &str| format!("HTTP/1.1 200 OK\r\n{fields}\r\n");
        assert_eq!(resp(&ok("Content-Length: 12\r\n"), false), Ok(Body::Length(12)));
        assert_eq!(resp(&ok("Content-Length: 12\r\n"), true), Ok(Body::None));
        assert_eq!(
            resp(&ok("Transfer-Encoding: chunked\r\n"), false),
            Ok(Body::Chunked)
        );
        assert_eq!(
            resp(&ok("Transfer-Encoding: gzip, chunked\r\n"), false),
            Ok(Body::Chunked)
        );
        assert_eq!(
            resp(&ok("Transfer-Encoding: gzip\r\n"), false),
            Ok(Body::UntilClose)
        );
        assert_eq!(resp(&ok(""), false), Ok(Body::UntilClose));
        assert_eq!(
            resp(&ok("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"), false),
            Err(Refused::Both)
        );
        assert_eq!(
            resp(&ok("Content-Length: 3\r\nContent-Length: 4\r\n"), false),
            Err(Refused::ContentLength)
        );
        for status in [
            "101 Switching Protocols",
            "204 No Content",
            "304 Not Modified",
            "100 Continue",
        ] {
            let raw = format!("HTTP/1.1 {status}\r\nContent-Length: 5\r\n\r\n");
            assert_eq!(resp(&raw, false), Ok(Body::None), "{status}");
        }
    }
}
