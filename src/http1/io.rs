//! Reading heads and forwarding bodies over streams. Generic over tokio's
//! `AsyncRead`/`AsyncWrite`, so that the same code reads a client's
//! request, a worker's response, over TCP or TLS.
//!
//! A connection keeps one read buffer: a head is parsed where it lies, and
//! whatever was read past a message (a pipelined request, or the start of
//! a body) stays in the buffer for what comes next. A body is forwarded as
//! it comes, a read at a time, each read written before the next is made:
//! a slow reader on one side slows the other (back-pressure), and no more
//! than one read's worth of a body is ever held.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::chunked::{ChunkError, Chunked};
use super::framing::Body;
use super::head::{HeadError, RequestHead, ResponseHead};

/// How much is read at a time.
const READ: usize = 16 * 1024;

/// Why a head could not be read.
#[derive(Debug)]
pub enum HeadReadError {
    /// The peer closed the connection in the middle of a head.
    Closed,
    /// The head is longer than the most that is read for one.
    TooLarge,
    /// The head is not HTTP/1.x as RFC 9112 spells it.
    Malformed(HeadError),
    /// The connection failed.
    Io(std::io::Error),
}

/// Why a body could not be forwarded.
#[derive(Debug)]
pub enum BodyError {
    /// Reading the sender failed.
    Read(std::io::Error),
    /// The sender closed before the body's end.
    Truncated,
    /// A chunked body broke its framing.
    Chunked(ChunkError),
    /// Writing to the receiver failed.
    Write(std::io::Error),
}

/// Read from `r` into `buf` until a whole request head is there (what
/// `buf` holds already counts), and parse it. `Ok(None)`: the peer closed
/// the connection before sending a byte of it (a kept-alive client
/// leaving). The head lies at the start of `buf`, `head.len` bytes long.
pub async fn read_request_head<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<RequestHead>, HeadReadError> {
    read_head(r, buf, max, RequestHead::parse).await
}

/// The same for a response head (a closed connection before any byte is
/// `Closed` too: a worker owes an answer).
pub async fn read_response_head<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<ResponseHead, HeadReadError> {
    match read_head(r, buf, max, ResponseHead::parse).await? {
        Some(head) => Ok(head),
        None => Err(HeadReadError::Closed),
    }
}

async fn read_head<R: AsyncRead + Unpin, H>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
    parse: impl Fn(&[u8]) -> Result<Option<H>, HeadError>,
) -> Result<Option<H>, HeadReadError> {
    loop {
        if !buf.is_empty() {
            match parse(buf) {
                Ok(Some(head)) => return Ok(Some(head)),
                Ok(None) => {}
                Err(e) => return Err(HeadReadError::Malformed(e)),
            }
            if buf.len() >= max {
                return Err(HeadReadError::TooLarge);
            }
        }
        buf.reserve(READ.min(max - buf.len()).max(1));
        let read = r.read_buf(buf).await.map_err(HeadReadError::Io)?;
        if read == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(HeadReadError::Closed)
            };
        }
    }
}

/// Forward a body framed by `body` from `from` to `to`, as its bytes came
/// (a chunked body with its framing). `buf` holds what was read past the
/// head already; what is read past the body's end stays in it (the next
/// message). `data` sees the body's payload (a chunked body's data without
/// its framing). Returns the payload's length.
pub async fn forward_body<R, W>(
    body: Body,
    buf: &mut BytesMut,
    from: &mut R,
    to: &mut W,
    mut data: impl FnMut(&[u8]),
) -> Result<u64, BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut payload = 0u64;
    match body {
        Body::None => {}
        Body::Length(mut left) => {
            while left > 0 {
                if buf.is_empty() {
                    fill(from, buf, left).await?;
                }
                let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                data(&buf[..take]);
                to.write_all(&buf[..take]).await.map_err(BodyError::Write)?;
                buf.advance(take);
                left -= take as u64;
                payload += take as u64;
            }
        }
        Body::Chunked => {
            let mut chunked = Chunked::new();
            loop {
                if buf.is_empty() {
                    fill(from, buf, READ as u64).await?;
                }
                let progress = chunked
                    .feed(buf, |d| {
                        payload += d.len() as u64;
                        data(d);
                    })
                    .map_err(BodyError::Chunked)?;
                to.write_all(&buf[..progress.used])
                    .await
                    .map_err(BodyError::Write)?;
                buf.advance(progress.used);
                if progress.done {
                    break;
                }
            }
        }
        Body::UntilClose => loop {
            if buf.is_empty() {
                buf.reserve(READ);
                if from.read_buf(buf).await.map_err(BodyError::Read)? == 0 {
                    break;
                }
            }
            data(buf);
            payload += buf.len() as u64;
            to.write_all(buf).await.map_err(BodyError::Write)?;
            buf.clear();
        },
    }
    to.flush().await.map_err(BodyError::Write)?;
    Ok(payload)
}

/// Read at least one byte (at most `want`, up to a read's worth) into `buf`.
async fn fill<R: AsyncRead + Unpin>(from: &mut R, buf: &mut BytesMut, want: u64) -> Result<(), BodyError> {
    let want = usize::try_from(want).unwrap_or(usize::MAX).clamp(1, READ);
    buf.reserve(want);
    let read = (&mut *from)
        .take(want as u64)
        .read_buf(buf)
        .await
        .map_err(BodyError::Read)?;
    if read == 0 {
        return Err(BodyError::Truncated);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[tokio::test]
    async fn a_head_in_pieces_is_read_and_what_follows_stays() {
        let (mut client, mut server) = duplex(64);
        let sent = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n";
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(7) {
                client.write_all(piece).await.unwrap();
            }
            client
        });
        let mut buf = BytesMut::new();
        let head = read_request_head(&mut server, &mut buf, 8192)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(head.target.get(&buf), b"/a");
        let _client = writer.await.unwrap();
        buf.advance(head.len);
        let mut out = Vec::new();
        let n = forward_body(Body::Length(5), &mut buf, &mut server, &mut out, |_| {})
            .await
            .unwrap();
        assert_eq!((n, out.as_slice()), (5, &b"hello"[..]));
        // The next request's start stays for its own read.
        let mut rest = buf.to_vec();
        let mut more = vec![0; sent.len()];
        let got = server.read(&mut more).await.unwrap();
        rest.extend_from_slice(&more[..got]);
        assert_eq!(rest, b"GET /b HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_client_leaving_between_requests_is_no_error_and_mid_head_is() {
        let (client, mut server) = duplex(64);
        drop(client);
        let mut buf = BytesMut::new();
        assert!(read_request_head(&mut server, &mut buf, 8192)
            .await
            .unwrap()
            .is_none());

        let (mut client, mut server) = duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        drop(client);
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_request_head(&mut server, &mut buf, 8192).await,
            Err(HeadReadError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_head_longer_than_the_most_read_is_refused() {
        let (mut client, mut server) = duplex(1 << 16);
        let long = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "v".repeat(10_000));
        client.write_all(long.as_bytes()).await.unwrap();
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_request_head(&mut server, &mut buf, 4096).await,
            Err(HeadReadError::TooLarge)
        ));
        assert!(buf.len() <= 4096, "read {} bytes for a 4 KiB head", buf.len());
    }

    #[tokio::test]
    async fn a_chunked_body_goes_on_as_it_came_and_stops_at_its_end() {
        let (mut client, mut server) = duplex(16);
        let body = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nT: 1\r\n\r\nGET /next";
        tokio::spawn(async move {
            client.write_all(body).await.unwrap();
            client
        });
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let n = forward_body(Body::Chunked, &mut buf, &mut server, &mut out, |d| {
            seen.extend_from_slice(d)
        })
        .await
        .unwrap();
        assert_eq!(n, 11);
        assert_eq!(seen, b"hello world");
        assert_eq!(out, &body[..body.len() - 9]);
        let mut next = buf.to_vec();
        while next.len() < 9 {
            let mut b = [0u8; 9];
            let got = server.read(&mut b).await.unwrap();
            next.extend_from_slice(&b[..got]);
        }
        assert_eq!(next, b"GET /next");
    }

    #[tokio::test]
    async fn a_body_cut_short_or_badly_chunked_is_an_error() {
        let (mut client, mut server) = duplex(64);
        client.write_all(b"hel").await.unwrap();
        drop(client);
        let mut out = Vec::new();
        let r = forward_body(
            Body::Length(5),
            &mut BytesMut::new(),
            &mut server,
            &mut out,
            |_| {},
        )
        .await;
        assert!(matches!(r, Err(BodyError::Truncated)));
        assert_eq!(out, b"hel", "what came went on");

        let (mut client, mut server) = duplex(64);
        client.write_all(b"3\r\nabcdef\r\n0\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let r = forward_body(Body::Chunked, &mut BytesMut::new(), &mut server, &mut out, |_| {}).await;
        assert!(matches!(r, Err(BodyError::Chunked(ChunkError::Syntax))));
        assert!(out.is_empty(), "a bad read is not forwarded: {out:?}");
    }

    #[tokio::test]
    async fn a_body_until_close_is_all_the_sender_sends() {
        let (mut worker, mut upstream) = duplex(64);
        tokio::spawn(async move {
            worker.write_all(&[7u8; 1000]).await.unwrap();
        });
        let mut buf = BytesMut::from(&b"abc"[..]);
        let mut out = Vec::new();
        let n = forward_body(Body::UntilClose, &mut buf, &mut upstream, &mut out, |_| {})
            .await
            .unwrap();
        assert_eq!(n, 1003);
        assert_eq!(&out[..3], b"abc");
    }

    #[tokio::test]
    async fn a_response_head_is_read_from_the_worker() {
        let (mut worker, mut upstream) = duplex(64);
        worker
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        let head = read_response_head(&mut upstream, &mut buf, 8192).await.unwrap();
        assert_eq!(head.status, 200);
        drop(worker);
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_response_head(&mut upstream, &mut buf, 8192).await,
            Err(HeadReadError::Closed)
        ));
    }
}
