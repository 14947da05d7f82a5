//! The head sent on: the start line, the fields kept (copied as they came,
//! name case included, each line ended by CRLF whatever ended it before),
//! fledge's own fields added. What is dropped is the caller's choice
//! ([`Hop`] tells the hop-by-hop fields, those a `Connection` field
//! nominates included, RFC 9110 §7.6.1).

use super::head::{Fields, Span};

/// Fields that describe one connection, not the message: never passed on
/// (RFC 9110 §7.6.1, and `Proxy-Connection`, which old clients send).
/// `Transfer-Encoding` is not one here: fledge forwards a body in the
/// framing it came in.
const HOP_BY_HOP: [&[u8]; 6] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
];

/// Most names a `Connection` field may nominate (more: the message is
/// refused by the caller, as no client needs them).
pub const MAX_NOMINATED: usize = 8;

/// What a message's `Connection` fields say.
#[derive(Debug, Clone, Default)]
pub struct Hop {
    /// `close` was among them.
    pub close: bool,
    /// `keep-alive` was among them (an HTTP/1.0 client that wants it).
    pub keep_alive: bool,
    /// `upgrade` was among them.
    pub upgrade: bool,
    /// The other names it nominates, to be dropped too.
    nominated: [Span; MAX_NOMINATED],
    count: u8,
    /// More names than [`MAX_NOMINATED`].
    pub too_many: bool,
}

impl Hop {
    /// Read the `Connection` fields of a head (its bytes are `buf`).
    pub fn read(buf: &[u8], fields: &Fields) -> Hop {
        let mut hop = Hop::default();
        for field in fields.iter() {
            if !field.name.get(buf).eq_ignore_ascii_case(b"connection") {
                continue;
            }
            let value = field.value;
            let mut start = value.range().start;
            for token in value.get(buf).split(|b| *b == b',') {
                let at = start;
                start += token.len() + 1;
                let trimmed = token.trim_ascii();
                if trimmed.is_empty() {
                    continue;
                }
                if trimmed.eq_ignore_ascii_case(b"close") {
                    hop.close = true;
                } else if trimmed.eq_ignore_ascii_case(b"keep-alive") {
                    hop.keep_alive = true;
                } else if trimmed.eq_ignore_ascii_case(b"upgrade") {
                    hop.upgrade = true;
                } else if usize::from(hop.count) < MAX_NOMINATED {
                    let lead = token.len() - token.trim_ascii_start().len();
                    hop.nominated[usize::from(hop.count)] = Span::at(at + lead, trimmed.len());
                    hop.count += 1;
                } else {
                    hop.too_many = true;
                }
            }
        }
        hop
    }

    /// Whether the field named `name` is hop-by-hop for this message.
    pub fn drops(&self, buf: &[u8], name: &[u8]) -> bool {
        HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
            || self.nominated[..usize::from(self.count)]
                .iter()
                .any(|n| n.get(buf).eq_ignore_ascii_case(name))
    }
}

/// `METHOD target HTTP/1.1` and its CRLF.
pub fn request_line(out: &mut Vec<u8>, method: &[u8], target: &[u8]) {
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// The head a request goes on with (its bytes are `buf`): the request line
/// as sent (as HTTP/1.1), the fields but the hop-by-hop ones (`hop`), the
/// framing ones and those `drop` names, then `add`, then the framing fledge
/// decided in one canonical field.
pub fn request_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &super::head::RequestHead,
    hop: &Hop,
    body: super::framing::Body,
    drop: impl Fn(&[u8]) -> bool,
    add: &[(&[u8], &[u8])],
) {
    request_line(out, head.method.get(buf), head.target.get(buf));
    fields_but(out, buf, &head.fields, |name| {
        hop.drops(buf, name) || is_framing(name) || drop(name)
    });
    for (name, value) in add {
        field(out, name, value);
    }
    framing(out, body);
    end(out);
}

/// `HTTP/1.1 status reason` and its CRLF.
pub fn status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

/// The fields of `fields` (bytes in `buf`) but those `drop` names.
pub fn fields_but(out: &mut Vec<u8>, buf: &[u8], fields: &Fields, mut drop: impl FnMut(&[u8]) -> bool) {
    for f in fields.iter() {
        let name = f.name.get(buf);
        if !drop(name) {
            field(out, name, f.value.get(buf));
        }
    }
}

/// Whether `name` is a framing field (`Content-Length`,
/// `Transfer-Encoding`): never copied. The framing fledge decided goes on
/// in one canonical field instead ([`framing`]), so that a worker reads
/// the body exactly where fledge did, whatever spelling, list or duplicate
/// the sender used (RFC 9110 §8.6 lets a recipient replace a list of equal
/// lengths with one; some parsers refuse the list).
pub fn is_framing(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"transfer-encoding")
}

/// The framing field for `body`: none for no body.
pub fn framing(out: &mut Vec<u8>, body: super::framing::Body) {
    use super::framing::Body;
    match body {
        Body::Length(n) => field(out, b"Content-Length", itoa::Buffer::new().format(n).as_bytes()),
        Body::Chunked => field(out, b"Transfer-Encoding", b"chunked"),
        Body::None | Body::UntilClose => {}
    }
}

/// One field line.
pub fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The blank line that ends a head.
pub fn end(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::head::{RequestHead, ResponseHead};

    #[test]
    fn kept_fields_are_copied_as_sent_and_hop_by_hop_ones_dropped() {
        let buf = b"GET /web?x=1 HTTP/1.0\nHost: acme.example.com\r\nConnection: keep-alive, X-Secret ,close\r\nX-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: websocket\r\nCookie: a=1\r\nX-Fledge-Version: canary\r\nx-secret: t\r\n\r\n";
        let head = RequestHead::parse(buf).unwrap().unwrap();
        let hop = Hop::read(buf, &head.fields);
        assert!(hop.close && hop.keep_alive && !hop.upgrade && !hop.too_many);
        let mut out = Vec::new();
        request_line(&mut out, head.method.get(buf), head.target.get(buf));
        fields_but(&mut out, buf, &head.fields, |name| {
            hop.drops(buf, name) || name.len() > 9 && name[..9].eq_ignore_ascii_case(b"x-fledge-")
        });
        field(&mut out, b"X-Forwarded-For", b"203.0.113.7");
        end(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /web?x=1 HTTP/1.1\r\nHost: acme.example.com\r\nCookie: a=1\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n"
        );
    }

    #[test]
    fn a_response_head_is_rewritten_the_same_way() {
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\nSet-Cookie: a=1\r\n\r\nok";
        let head = ResponseHead::parse(buf).unwrap().unwrap();
        let hop = Hop::read(buf, &head.fields);
        let mut out = Vec::new();
        status_line(&mut out, head.status, head.reason.get(buf));
        fields_but(&mut out, buf, &head.fields, |n| hop.drops(buf, n));
        field(&mut out, b"X-Fledge-Version", b"stable");
        end(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: a=1\r\nX-Fledge-Version: stable\r\n\r\n"
        );
    }

    #[test]
    fn a_connection_field_cannot_make_fledge_drop_without_limit() {
        let names: Vec<String> = (0..MAX_NOMINATED + 1).map(|i| format!("x-{i}")).collect();
        let raw = format!(
            "GET / HTTP/1.1\r\nConnection: {}, upgrade\r\n\r\n",
            names.join(",")
        );
        let head = RequestHead::parse(raw.as_bytes()).unwrap().unwrap();
        let hop = Hop::read(raw.as_bytes(), &head.fields);
        assert!(hop.too_many && hop.upgrade);
        assert!(hop.drops(raw.as_bytes(), b"X-0"));
    }
}
