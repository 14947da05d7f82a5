//! One request's exchange with its worker, over streams: the request head
//! rewritten and its body forwarded, the response head read, rewritten and
//! stamped, its body forwarded to the client. The request path's loop
//! (admission, the worker's connection, retries, recording) is the
//! caller's; this is the part that only moves bytes.
//!
//! What goes to the worker: the request line as sent (as HTTP/1.1), the
//! client's fields but the hop-by-hop ones, the framing fields and those
//! the caller drops (fledge's own), the caller's fields (`X-Forwarded-*`),
//! the framing fledge decided in one canonical field, the body as it came.
//!
//! What goes to the client: the status line (as HTTP/1.1), the worker's
//! fields but the hop-by-hop and framing ones, what the caller's `stamp`
//! adds (`X-Fledge-Version`, cookies), the framing, the body as it came. A
//! body that ends at the worker's close ends at the client's too
//! (`Connection: close`). Interim answers (`100 Continue`, `103`) are passed
//! on before the final one.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::framing::{self, Body};
use super::head::{RequestHead, ResponseHead};
use super::io::{forward_body, read_response_head, BodyError, HeadReadError};
use super::write::{self, Hop};

/// The most bytes a worker's response head may take.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// What the request path changes in the request.
pub struct Edits<'a> {
    /// Request fields not passed on besides the hop-by-hop and framing
    /// ones (fledge's own: `X-Fledge-*`, the forwarding fields it sets).
    pub drop: &'a dyn Fn(&[u8]) -> bool,
    /// Fields added to the request.
    pub add: &'a [(&'a [u8], &'a [u8])],
}

/// How an exchange went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    /// The final status.
    pub status: u16,
    /// Request body payload forwarded.
    pub bytes_in: u64,
    /// Response body payload forwarded.
    pub bytes_out: u64,
    /// The client's connection may take another request.
    pub client_reusable: bool,
    /// The worker's connection may take another request.
    pub upstream_reusable: bool,
}

/// Why an exchange failed, and on which side.
#[derive(Debug)]
pub enum ExchangeError {
    /// Sending the request to the worker failed.
    Send {
        /// Some of the request went (a retry could duplicate it).
        sent: bool,
        /// Why.
        error: std::io::Error,
    },
    /// The worker's answer did not come or broke its framing before the
    /// client got anything: the caller answers (502) or retries.
    Answer(HeadReadError),
    /// The worker's response framing is refused (a 502 for the client).
    Framing(framing::Refused),
    /// The client's body broke off or broke its framing.
    RequestBody(BodyError),
    /// Once the client had the answer's head: the exchange cannot be
    /// saved, both connections close.
    AfterHead(BodyError),
}

/// Exchange the request whose head is at the start of `buf` (the client's
/// buffer, with what was read past the head) with the worker on
/// `upstream`. On return `buf` holds what the client sent past this
/// request (its next one). `stamp` adds fields to the client's response
/// head; `sniff` sees the response body's payload.
#[allow(clippy::too_many_arguments)]
pub async fn exchange<C, U>(
    buf: &mut BytesMut,
    head: &RequestHead,
    body: Body,
    client: &mut C,
    upstream: &mut U,
    edits: &Edits<'_>,
    stamp: impl FnOnce(&ResponseHead, &[u8], &mut Vec<u8>),
    mut sniff: impl FnMut(&[u8]),
) -> Result<Answered, ExchangeError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let request_hop = Hop::read(buf, &head.fields);
    let to_head = head.method.get(buf) == b"HEAD";
    let client_wants_keep = !request_hop.close && (head.minor == 1 || request_hop.keep_alive);

    // The request's head, then its body.
    let mut out = Vec::with_capacity(head.len + 256);
    write::request_head(&mut out, buf, head, &request_hop, body, edits.drop, edits.add);
    buf.advance(head.len);
    upstream
        .write_all(&out)
        .await
        .map_err(|error| ExchangeError::Send { sent: false, error })?;
    let bytes_in = match forward_body(body, buf, client, upstream, |_| {}).await {
        Ok(n) => n,
        Err(BodyError::Write(error)) => return Err(ExchangeError::Send { sent: true, error }),
        Err(e) => return Err(ExchangeError::RequestBody(e)),
    };
    if matches!(body, Body::None) {
        upstream
            .flush()
            .await
            .map_err(|error| ExchangeError::Send { sent: true, error })?;
    }

    // The answer: interim ones passed on, then the final one.
    let mut answer = BytesMut::with_capacity(4096);
    let (response, framing) = loop {
        let response = read_response_head(upstream, &mut answer, MAX_RESPONSE_HEAD)
            .await
            .map_err(ExchangeError::Answer)?;
        if (100..200).contains(&response.status) && response.status != 101 {
            out.clear();
            write::status_line(&mut out, response.status, response.reason.get(&answer));
            let hop = Hop::read(&answer, &response.fields);
            write::fields_but(&mut out, &answer, &response.fields, |n| hop.drops(&answer, n));
            write::end(&mut out);
            answer.advance(response.len);
            client
                .write_all(&out)
                .await
                .map_err(|e| ExchangeError::AfterHead(BodyError::Write(e)))?;
            continue;
        }
        let framing = framing::response(&answer, &response, to_head).map_err(ExchangeError::Framing)?;
        break (response, framing);
    };
    let response_hop = Hop::read(&answer, &response.fields);
    let until_close = framing == Body::UntilClose;
    let client_reusable = client_wants_keep && !until_close;
    out.clear();
    write::status_line(&mut out, response.status, response.reason.get(&answer));
    write::fields_but(&mut out, &answer, &response.fields, |name| {
        // A HEAD's answer keeps the length of the body it does not have.
        response_hop.drops(&answer, name) || (write::is_framing(name) && !to_head)
    });
    stamp(&response, &answer, &mut out);
    write::framing(&mut out, framing);
    if !client_reusable {
        write::field(&mut out, b"Connection", b"close");
    } else if head.minor == 0 {
        // An HTTP/1.0 client keeps the connection only when told so.
        write::field(&mut out, b"Connection", b"keep-alive");
    }
    write::end(&mut out);
    let status = response.status;
    let upstream_reusable = !until_close && !response_hop.close && response.minor == 1;
    answer.advance(response.len);
    client
        .write_all(&out)
        .await
        .map_err(|e| ExchangeError::AfterHead(BodyError::Write(e)))?;
    let bytes_out = forward_body(framing, &mut answer, upstream, client, &mut sniff)
        .await
        .map_err(ExchangeError::AfterHead)?;
    if matches!(framing, Body::None) {
        client
            .flush()
            .await
            .map_err(|e| ExchangeError::AfterHead(BodyError::Write(e)))?;
    }
    Ok(Answered {
        status,
        bytes_in,
        bytes_out,
        client_reusable,
        // Bytes past the answer: the worker said more than it was asked.
        upstream_reusable: upstream_reusable && answer.is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::io::read_request_head;
    use tokio::io::{duplex, AsyncReadExt, DuplexStream};

    /// A worker that reads one request (head and `body_len` bytes of body)
    /// and answers `answer`; what it read comes back.
    fn worker(
        mut side: DuplexStream,
        body_len: usize,
        answer: &'static [u8],
    ) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            let mut got = Vec::new();
            let mut b = [0u8; 4096];
            loop {
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    if got.len() >= end + 4 + body_len {
                        break;
                    }
                }
                let n = side.read(&mut b).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&b[..n]);
            }
            side.write_all(answer).await.unwrap();
            side.flush().await.unwrap();
            // Keep the connection open while the proxy reads.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            got
        })
    }

    struct Run {
        sent: String,
        answered: Answered,
        client_got: String,
        sniffed: Vec<u8>,
        left: Vec<u8>,
    }

    async fn run(request: &[u8], answer: &'static [u8]) -> Run {
        let (mut client, mut proxy_side) = duplex(1 << 16);
        let (mut upstream, worker_side) = duplex(1 << 16);
        client.write_all(request).await.unwrap();
        let mut buf = BytesMut::new();
        let head = read_request_head(&mut proxy_side, &mut buf, 8192)
            .await
            .unwrap()
            .unwrap();
        let body = framing::request(&buf, &head).unwrap();
        let body_len = match body {
            Body::Length(n) => n as usize,
            _ => 0,
        };
        let w = worker(worker_side, body_len, answer);
        let ours = |name: &[u8]| name.eq_ignore_ascii_case(b"x-fledge-version");
        let edits = Edits {
            drop: &ours,
            add: &[(b"X-Forwarded-For", b"203.0.113.7")],
        };
        let mut sniffed = Vec::new();
        let answered = exchange(
            &mut buf,
            &head,
            body,
            &mut proxy_side,
            &mut upstream,
            &edits,
            |_, _, out| write::field(out, b"X-Fledge-Version", b"stable"),
            |d| sniffed.extend_from_slice(d),
        )
        .await
        .unwrap();
        let sent = String::from_utf8(w.await.unwrap()).unwrap();
        drop(proxy_side);
        let mut client_got = Vec::new();
        client.read_to_end(&mut client_got).await.unwrap();
        Run {
            sent,
            answered,
            client_got: String::from_utf8(client_got).unwrap(),
            sniffed,
            left: buf.to_vec(),
        }
    }

    #[tokio::test]
    async fn a_json_rpc_call_goes_on_rewritten_and_its_answer_comes_back_stamped() {
        let r = run(
            b"POST /web/dataset/call_kw HTTP/1.1\r\nHost: acme.example.com\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-Fledge-Version: canary\r\nContent-Length: 5, 5\r\n\r\nhelloGET /next HTTP/1.1\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nKeep-Alive: timeout=5\r\nContent-Length: 12\r\n\r\n{\"result\":1}",
        )
        .await;
        assert_eq!(
            r.sent,
            "POST /web/dataset/call_kw HTTP/1.1\r\nHost: acme.example.com\r\nX-Forwarded-For: 203.0.113.7\r\nContent-Length: 5\r\n\r\nhello"
        );
        assert_eq!(
            r.client_got,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Fledge-Version: stable\r\nContent-Length: 12\r\n\r\n{\"result\":1}"
        );
        assert_eq!(r.sniffed, b"{\"result\":1}");
        assert_eq!(r.left, b"GET /next HTTP/1.1\r\n", "the next request stays");
        assert_eq!(
            r.answered,
            Answered {
                status: 200,
                bytes_in: 5,
                bytes_out: 12,
                client_reusable: true,
                upstream_reusable: true,
            }
        );
    }

    #[tokio::test]
    async fn a_body_until_close_closes_the_client_and_chunked_goes_on_as_it_came() {
        let r = run(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>",
        )
        .await;
        assert_eq!(
            r.client_got,
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nX-Fledge-Version: stable\r\nConnection: close\r\n\r\n<html>"
        );
        assert!(!r.answered.client_reusable && !r.answered.upstream_reusable);

        let r = run(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        assert!(
            r.client_got
                .ends_with("Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            "{}",
            r.client_got
        );
        assert_eq!((r.answered.bytes_out, r.answered.client_reusable), (5, true));
    }

    #[tokio::test]
    async fn interim_answers_come_first_and_head_keeps_its_length() {
        let r = run(
            b"HEAD /web HTTP/1.1\r\nHost: a\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
        )
        .await;
        assert_eq!(
            r.client_got,
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1234\r\nX-Fledge-Version: stable\r\n\r\n"
        );
        assert_eq!(r.answered.status, 200);
    }

    #[tokio::test]
    async fn a_client_that_asks_to_close_is_not_kept_nor_a_http10_one() {
        for request in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\n\r\n",
        ] {
            let r = run(request, b"HTTP/1.1 204 No Content\r\n\r\n").await;
            assert!(
                !r.answered.client_reusable,
                "{:?}",
                String::from_utf8_lossy(request)
            );
            assert!(r.client_got.contains("Connection: close\r\n"), "{}", r.client_got);
            assert!(r.answered.upstream_reusable);
        }
        let r = run(
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        )
        .await;
        assert!(r.answered.client_reusable);
        assert!(
            r.client_got.contains("Connection: keep-alive\r\n"),
            "{}",
            r.client_got
        );
    }

    #[tokio::test]
    async fn a_worker_that_breaks_its_framing_or_goes_away_is_an_error_before_the_head() {
        let (mut client, mut proxy_side) = duplex(1 << 16);
        let (mut upstream, worker_side) = duplex(1 << 16);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        let head = read_request_head(&mut proxy_side, &mut buf, 8192)
            .await
            .unwrap()
            .unwrap();
        let w = worker(
            worker_side,
            0,
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        );
        let edits = Edits {
            drop: &|_| false,
            add: &[],
        };
        let r = exchange(
            &mut buf,
            &head,
            Body::None,
            &mut proxy_side,
            &mut upstream,
            &edits,
            |_, _, _| {},
            |_| {},
        )
        .await;
        assert!(
            matches!(r, Err(ExchangeError::Framing(framing::Refused::ContentLength))),
            "{r:?}"
        );
        let _ = w.await;

        let (mut upstream, worker_side) = duplex(1 << 16);
        drop(worker_side);
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..]);
        let head = crate::http1::head::RequestHead::parse(&buf).unwrap().unwrap();
        let r = exchange(
            &mut buf,
            &head,
            Body::None,
            &mut proxy_side,
            &mut upstream,
            &edits,
            |_, _, _| {},
            |_| {},
        )
        .await;
        assert!(
            matches!(r, Err(ExchangeError::Send { .. } | ExchangeError::Answer(_))),
            "{r:?}"
        );
    }
}
