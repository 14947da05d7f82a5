//! Message heads as spans of the read buffer.
//!
//! [`RequestHead::parse`] and [`ResponseHead::parse`] run `httparse` over
//! the bytes read so far and keep, for the method, target, reason and
//! every field, where it lies in the buffer (offsets, so that the head can
//! be kept across reads and awaits while the buffer lives on). Nothing is
//! copied and nothing allocated. `httparse`'s request grammar is strict
//! already: no obs-fold, no whitespace before a colon or before the first
//! field, no bytes outside a field's grammar (NUL, bare CR, 8-bit in a
//! name), only HTTP/1.0 and 1.1; responses get the same, so that a worker's
//! head is read as strictly as a client's.

use std::ops::Range;

/// Fields a head may have: more is refused (431 for a request) before the
/// configured, lower, limit is even looked at.
pub const MAX_FIELDS: usize = 128;

/// Where some bytes lie in the read buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// The span of `part`, which lies inside `buf`.
    fn of(buf: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        debug_assert!(start + part.len() <= buf.len());
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    /// `len` bytes from `start`.
    pub(crate) fn at(start: usize, len: usize) -> Span {
        Span {
            start: start as u32,
            end: (start + len) as u32,
        }
    }

    /// Its bytes in `buf`.
    pub fn get<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.range()]
    }

    /// As a range of the buffer.
    pub fn range(&self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// One field: its name and value as sent (the value without the
/// whitespace around it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Field {
    /// The name, in the case the sender wrote it.
    pub name: Span,
    /// The value.
    pub value: Span,
}

/// A request head: request line and fields.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// The method, as sent.
    pub method: Span,
    /// The request target, as sent.
    pub target: Span,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// The fields, in order.
    pub fields: Fields,
    /// The head's length in the buffer, its final blank line included: the
    /// body (or the next request) begins there.
    pub len: usize,
}

/// A response head: status line and fields.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// The reason phrase, as sent.
    pub reason: Span,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// The fields, in order.
    pub fields: Fields,
    /// The head's length in the buffer, its final blank line included.
    pub len: usize,
}

/// A head's fields, inline (no allocation).
#[derive(Clone)]
pub struct Fields {
    list: [Field; MAX_FIELDS],
    count: u8,
}

/// Why a head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x as RFC 9112 spells it (`httparse`'s reason).
    Malformed(httparse::Error),
    /// More than [`MAX_FIELDS`] fields.
    TooManyFields,
}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Fields {
    fn new() -> Fields {
        Fields {
            list: [Field::default(); MAX_FIELDS],
            count: 0,
        }
    }

    fn fill(buf: &[u8], parsed: &[httparse::Header<'_>]) -> Fields {
        let mut fields = Fields::new();
        for (slot, h) in fields.list.iter_mut().zip(parsed) {
            *slot = Field {
                name: Span::of(buf, h.name.as_bytes()),
                value: Span::of(buf, h.value),
            };
        }
        fields.count = parsed.len() as u8;
        fields
    }

    /// Every field, in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Field> + '_ {
        self.list[..usize::from(self.count)].iter()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The values of the fields named `name` (lower case; names compare
    /// without regard to case), in order.
    pub fn values<'a, 'b>(&'a self, buf: &'b [u8], name: &'a [u8]) -> impl Iterator<Item = &'b [u8]> + 'a
    where
        'b: 'a,
    {
        self.iter()
            .filter(move |f| f.name.get(buf).eq_ignore_ascii_case(name))
            .map(move |f| f.value.get(buf))
    }

    /// The value of the only field named `name`: `Ok(None)` when there is
    /// none, `Err(())` when there are several.
    #[allow(clippy::result_unit_err)]
    pub fn one<'b>(&self, buf: &'b [u8], name: &[u8]) -> Result<Option<&'b [u8]>, ()> {
        let mut values = self.values(buf, name);
        match (values.next(), values.next()) {
            (first, None) => Ok(first),
            (Some(_), Some(_)) => Err(()),
            (None, Some(_)) => unreachable!("an iterator yields in order"),
        }
    }
}

/// A head's fields with the buffer they lie in: what routing reads
/// ([`crate::routing::Fields`]).
#[derive(Clone, Copy)]
pub struct FieldsIn<'a> {
    /// The buffer.
    pub buf: &'a [u8],
    /// The fields.
    pub fields: &'a Fields,
}

impl crate::routing::Fields for FieldsIn<'_> {
    fn each_value<'s>(&'s self, name: &http::HeaderName, each: impl FnMut(&'s [u8])) {
        let buf: &'s [u8] = self.buf;
        self.fields
            .iter()
            .filter(|f| f.name.get(buf).eq_ignore_ascii_case(name.as_str().as_bytes()))
            .map(|f| f.value.get(buf))
            .for_each(each);
    }
}

/// RFC 9110 `tchar`: a byte of a token (a field name, a transfer coding).
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Map `httparse`'s outcome: `Ok(None)` while the head is not whole.
fn outcome<T>(
    status: httparse::Result<usize>,
    done: impl FnOnce(usize) -> T,
) -> Result<Option<T>, HeadError> {
    match status {
        Ok(httparse::Status::Complete(len)) => Ok(Some(done(len))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyFields),
        Err(e) => Err(HeadError::Malformed(e)),
    }
}

impl RequestHead {
    /// Parse the request head at the start of `buf`: `Ok(None)` while it
    /// is not whole.
    pub fn parse(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        let mut parsed = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut parsed);
        let status = req.parse(buf);
        outcome(status, |len| RequestHead {
            method: Span::of(buf, req.method.unwrap_or_default().as_bytes()),
            target: Span::of(buf, req.path.unwrap_or_default().as_bytes()),
            minor: req.version.unwrap_or(1),
            fields: Fields::fill(buf, req.headers),
            len,
        })
    }
}

impl ResponseHead {
    /// Parse the response head at the start of `buf`: `Ok(None)` while it
    /// is not whole.
    pub fn parse(buf: &[u8]) -> Result<Option<ResponseHead>, HeadError> {
        let mut parsed = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut resp = httparse::Response::new(&mut parsed);
        let status = resp.parse(buf);
        outcome(status, |len| ResponseHead {
            status: resp.code.unwrap_or_default(),
            reason: Span::of(buf, resp.reason.unwrap_or_default().as_bytes()),
            minor: resp.version.unwrap_or(1),
            fields: Fields::fill(buf, resp.headers),
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_is_spans_of_its_buffer() {
        let buf = b"POST /web/dataset/call_kw?x=1 HTTP/1.1\r\nHost: acme.example.com\r\nContent-Type:  application/json \r\nX-Empty:\r\n\r\n{\"id\":1}";
        let head = RequestHead::parse(buf).unwrap().unwrap();
        assert_eq!(head.method.get(buf), b"POST");
        assert_eq!(head.target.get(buf), b"/web/dataset/call_kw?x=1");
        assert_eq!(head.minor, 1);
        assert_eq!(&buf[head.len..], b"{\"id\":1}");
        let fields: Vec<(&[u8], &[u8])> = head
            .fields
            .iter()
            .map(|f| (f.name.get(buf), f.value.get(buf)))
            .collect();
        assert_eq!(
            fields,
            [
                (&b"Host"[..], &b"acme.example.com"[..]),
                (b"Content-Type", b"application/json"),
                (b"X-Empty", b""),
            ]
        );
        assert_eq!(head.fields.one(buf, b"host"), Ok(Some(&b"acme.example.com"[..])));
        assert_eq!(head.fields.one(buf, b"cookie"), Ok(None));
        // As routing reads them.
        use crate::routing::Fields as _;
        let fields = FieldsIn {
            buf,
            fields: &head.fields,
        };
        let mut types = Vec::new();
        fields.each_value(&http::header::CONTENT_TYPE, |v| types.push(v));
        assert_eq!(types, [&b"application/json"[..]]);
        assert_eq!(
            fields.first_value(&http::header::HOST),
            Some(&b"acme.example.com"[..])
        );
    }

    #[test]
    fn a_head_not_whole_yet_is_partial_at_every_cut() {
        let buf = b"GET /web/login HTTP/1.1\r\nHost: a\r\nCookie: session_id=1\r\n\r\n";
        for cut in 0..buf.len() {
            assert!(RequestHead::parse(&buf[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        assert!(RequestHead::parse(buf).unwrap().is_some());
    }

    #[test]
    fn what_the_hostile_table_refuses_in_a_head_is_refused() {
        for raw in [
            &b"GET / HTTP/1.1\r\nX-Pad: a\r\n Transfer-Encoding: chunked\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length : 5\r\n\r\n",
            b"GET / HTTP/1.1\r\n: x\r\n\r\n",
            b"GET / HTTP/1.1\r\n\tHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-Custom: a\0b\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: \x0bchunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-Custom: a\rb\r\n\r\n",
            "GET / HTTP/1.1\r\nX-Cust\u{e9}m: a\r\n\r\n".as_bytes(),
            b"GET /\nHTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.32\r\nHost: a\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            b"GET /\r\n\r\n",
            b"G=\":<>(e),[T];?\" / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(
                matches!(RequestHead::parse(raw), Err(HeadError::Malformed(_))),
                "{:?} was taken",
                String::from_utf8_lossy(raw)
            );
        }
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X-F: v\r\n".repeat(MAX_FIELDS + 1));
        assert_eq!(
            RequestHead::parse(many.as_bytes()).unwrap_err(),
            HeadError::TooManyFields
        );
    }

    #[test]
    fn a_response_head_is_spans_of_its_buffer() {
        let buf = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nnopeHTTP/1.1";
        let head = ResponseHead::parse(buf).unwrap().unwrap();
        assert_eq!(head.status, 404);
        assert_eq!(head.reason.get(buf), b"Not Found");
        assert_eq!(&buf[head.len..head.len + 4], b"nope");
        let cookies: Vec<&[u8]> = head.fields.values(buf, b"set-cookie").collect();
        assert_eq!(cookies, [&b"a=1"[..], b"b=2"]);
        assert_eq!(head.fields.one(buf, b"set-cookie"), Err(()));
        assert!(matches!(
            ResponseHead::parse(b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            ResponseHead::parse(b"HTTP/1.1 2000 OK\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }
}
