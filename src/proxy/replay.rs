//! A client stream that can be peeked although its transport cannot.
//!
//! The header deadline in [`super::connections`] starts its clock at a
//! kept-alive request's first byte, which it learns by peeking. Pingora's TCP
//! stream peeks (it reads, then rewinds); its TLS stream does not, so a
//! client that sent one good request over TLS could trickle the next header
//! a byte at a time for as long as it liked. [`Replay`] wraps a TLS HTTP/1.1
//! stream once, at the connection's start: peeking reads the bytes into a
//! small buffer that the next reads hand out first. Everything else is
//! passed through, so Pingora still sees the TLS session, its digests and
//! its ALPN.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Largest peek served (Pingora peeks at most the 24-byte h2 preface).
const MAX_PEEK: usize = 32;

/// A stream whose peeked bytes are read again.
pub(super) struct Replay {
    inner: Stream,
    peeked: [u8; MAX_PEEK],
    start: usize,
    end: usize,
}

impl Replay {
    /// Wrap `inner`.
    pub(super) fn new(inner: Stream) -> Self {
        Replay {
            inner,
            peeked: [0; MAX_PEEK],
            start: 0,
            end: 0,
        }
    }
}

impl fmt::Debug for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replay")
            .field("inner", &self.inner)
            .field("buffered", &(self.end - self.start))
            .finish()
    }
}

#[async_trait]
impl Peek for Replay {
    /// Wait for `buf.len()` bytes (at most [`MAX_PEEK`]) and copy them
    /// without consuming them. `Ok(true)` when they came, an error when the
    /// client closed first.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if buf.len() > MAX_PEEK {
            return Ok(false);
        }
        // Move what is left to the front, then fill up to the length asked.
        self.peeked.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        while self.end < buf.len() {
            let n = self.inner.read(&mut self.peeked[self.end..buf.len()]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.end += n;
        }
        buf.copy_from_slice(&self.peeked[..buf.len()]);
        Ok(true)
    }
}

impl AsyncRead for Replay {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start < this.end {
            let n = (this.end - this.start).min(buf.remaining());
            buf.put_slice(&this.peeked[this.start..this.start + n]);
            this.start += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Replay {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Replay {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Replay {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Replay {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Replay {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Replay {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn peeked_bytes_are_read_again_in_order() {
        let (client, server) = tokio::io::duplex(64);
        let mut stream = Replay::new(Box::new(server));
        let mut client = client;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut one = [0u8; 1];
        assert!(stream.try_peek(&mut one).await.unwrap());
        assert_eq!(&one, b"G");
        let mut four = [0u8; 4];
        assert!(stream.try_peek(&mut four).await.unwrap());
        assert_eq!(&four, b"GET ");
        let mut all = [0u8; 16];
        stream.read_exact(&mut all).await.unwrap();
        assert_eq!(&all, b"GET / HTTP/1.1\r\n");
        drop(client);
        assert!(
            stream.try_peek(&mut one).await.is_err(),
            "a closed client is an error"
        );
    }
}
