//! Data plane, per connection: the PROXY protocol (HAProxy's, v1 text and
//! v2 binary) from the load balancers in `proxy_protocol.from`. A cloud
//! load balancer in TCP mode (AWS NLB, GCP, HAProxy, Traefik's TCP routers)
//! opens each connection with one header naming the client it carries;
//! fledge reads it before anything else (before the TLS handshake on the
//! TLS listener) and the header's source address becomes the connection's
//! peer: the socket digest is replaced, so every later reader of the
//! client address (the split's fallback key, `override_from`, the
//! per-address cap, `X-Forwarded-For`, logs) sees the client.
//!
//! From those peers the header is **required** (the specification says a
//! receiver must not guess whether one is there: a guess lets anyone who
//! reaches the port with a first line of their own pick their address);
//! a connection from them without one, or with a malformed or truncated
//! one, or one not whole by the header deadline, is closed before a byte
//! reaches a worker. From any other peer no header is read, and one sent
//! is an invalid request (HTTP/1 answers 400, TLS fails its handshake).
//!
//! Parsed with the `ppp` crate (both versions, partial input told apart
//! from invalid input), not by hand: the binary format's address families
//! and TLVs are easy to get subtly wrong.

use std::net::SocketAddr;

use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;

/// The longest header read: a v1 line is at most 107 bytes; a v2 header is
/// 16 bytes, its addresses (at most 216) and its TLVs, which the load
/// balancers keep small (AWS's VPC endpoint id, GCP's connection id).
const MAX_HEADER: usize = 1024;

/// Why a connection's PROXY header was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not a PROXY header, a malformed one, or a longer one than
    /// [`MAX_HEADER`].
    Invalid,
    /// The peer closed the connection before the header was whole.
    Closed,
}

/// Read the PROXY header that opens `tcp`, and put back what followed it
/// (the request, or the TLS ClientHello) for the connection's next read.
/// `Ok(Some(client))` for a proxied connection; `Ok(None)` for a header
/// that names no client (v2 `LOCAL`, the load balancer's own health check;
/// v1 `UNKNOWN`; a Unix or unspecified family): the peer stays the peer.
/// The caller bounds the time it takes.
pub(crate) async fn read_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, Refused> {
    // Per connection, from a load balancer only; most headers come in one
    // read with the request behind them.
    let mut buf = Vec::with_capacity(256);
    loop {
        let room = MAX_HEADER - buf.len();
        if room == 0 {
            return Err(Refused::Invalid);
        }
        let read = (&mut *tcp)
            .take(room as u64)
            .read_buf(&mut buf)
            .await
            .map_err(|_| Refused::Closed)?;
        if read == 0 {
            return Err(Refused::Closed);
        }
        let parsed = HeaderResult::parse(&buf);
        if parsed.is_incomplete() {
            continue;
        }
        let (len, client) = match parsed {
            HeaderResult::V1(Ok(h)) => (h.header.len(), v1_client(&h.addresses)),
            HeaderResult::V2(Ok(h)) => (h.len(), v2_client(&h)),
            HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => return Err(Refused::Invalid),
        };
        if len < buf.len() {
            tcp.rewind(&buf[len..]);
        }
        return Ok(client);
    }
}

fn v1_client(addresses: &v1::Addresses) -> Option<SocketAddr> {
    match *addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    }
}

fn v2_client(header: &v2::Header<'_>) -> Option<SocketAddr> {
    if header.command == v2::Command::Local {
        return None;
    }
    match header.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::Unix(_) | v2::Addresses::Unspecified => None,
    }
}

/// Make `client` the peer of `tcp`: a new socket digest with the client as
/// its peer address and the socket's own local address (by which the TLS
/// listener's connections are told apart).
pub(crate) fn set_peer(tcp: &mut TcpStream, client: SocketAddr) {
    use std::os::unix::io::AsRawFd;
    let local = tcp.get_socket_digest().and_then(|d| d.local_addr().cloned());
    let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
    let _ = digest.peer_addr.set(Some(Box::new(PeerAddr::Inet(client))));
    if let Some(local) = local {
        let _ = digest.local_addr.set(Some(Box::new(local)));
    }
    tcp.set_socket_digest(digest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A connected pair: the client's socket and fledge's side of it.
    async fn pair() -> (tokio::net::TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, TcpStream::from(server))
    }

    /// A v2 header for `src` → `dst` (TCP over IPv4 or IPv6), or LOCAL.
    fn v2(command: v2::Command, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        v2::Builder::with_addresses(v2::Version::Two | command, v2::Protocol::Stream, (src, dst))
            .build()
            .unwrap()
    }

    async fn read_after(sent: &[u8]) -> (Result<Option<SocketAddr>, Refused>, Vec<u8>) {
        let (mut client, mut tcp) = pair().await;
        client.write_all(sent).await.unwrap();
        client.shutdown().await.unwrap();
        let read = read_header(&mut tcp).await;
        let mut rest = Vec::new();
        if read.is_ok() {
            tcp.read_to_end(&mut rest).await.unwrap();
        }
        (read, rest)
    }

    #[tokio::test]
    async fn v1_names_the_client_and_leaves_the_request_whole() {
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for (line, client) in [
            (
                "PROXY TCP4 203.0.113.7 10.0.0.1 51000 80\r\n",
                "203.0.113.7:51000",
            ),
            (
                "PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n",
                "[2001:db8::7]:51000",
            ),
        ] {
            let sent = [line.as_bytes(), request].concat();
            let (read, rest) = read_after(&sent).await;
            assert_eq!(read, Ok(Some(client.parse().unwrap())), "{line}");
            assert_eq!(rest, request);
        }
        let (read, rest) = read_after(b"PROXY UNKNOWN\r\nGET").await;
        assert_eq!(read, Ok(None));
        assert_eq!(rest, b"GET");
    }

    #[tokio::test]
    async fn v2_names_the_client_and_local_names_none() {
        let src: SocketAddr = "[2001:db8::9]:40000".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let sent = [v2(v2::Command::Proxy, src, dst), b"\x16\x03\x01".to_vec()].concat();
        let (read, rest) = read_after(&sent).await;
        assert_eq!(read, Ok(Some(src)));
        assert_eq!(rest, b"\x16\x03\x01", "the ClientHello's first bytes stay");

        let local = v2(
            v2::Command::Local,
            "10.0.0.9:1".parse().unwrap(),
            "10.0.0.1:80".parse().unwrap(),
        );
        assert_eq!(read_after(&local).await.0, Ok(None));
    }

    /// A header that comes a few bytes at a time is read whole, and not a
    /// byte of what follows is taken.
    #[tokio::test]
    async fn a_header_in_pieces_is_read_whole() {
        let (mut client, mut tcp) = pair().await;
        let sent = b"PROXY TCP4 198.51.100.2 10.0.0.1 1234 80\r\nGET / HTTP/1.1\r\n\r\n";
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(5) {
                client.write_all(piece).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            client
        });
        let read = read_header(&mut tcp).await;
        assert_eq!(read, Ok(Some("198.51.100.2:1234".parse().unwrap())));
        let _client = writer.await.unwrap();
        let mut rest = [0u8; 18];
        tcp.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        for (sent, why) in [
            (&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..], Refused::Invalid),
            (b"PROXY TCP4 999.0.0.1 10.0.0.1 1 80\r\n", Refused::Invalid),
            (b"PROXY TCP4 203.0.113.7 10.0.0.1 51000", Refused::Closed),
            (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\x01", Refused::Closed),
            (b"\x16\x03\x01\x00\xa5\x01\x00", Refused::Invalid),
        ] {
            assert_eq!(read_after(sent).await.0, Err(why), "{sent:?}");
        }
        let long = [&b"PROXY TCP4 "[..], &[b'1'; MAX_HEADER]].concat();
        assert_eq!(read_after(&long).await.0, Err(Refused::Invalid));
    }

    #[tokio::test]
    async fn the_client_becomes_the_peer() {
        use std::os::unix::io::AsRawFd;
        let (_client, mut tcp) = pair().await;
        // As Pingora's listener hands it over.
        tcp.set_socket_digest(SocketDigest::from_raw_fd(tcp.as_raw_fd()));
        let local = tcp.get_socket_digest().unwrap().local_addr().cloned().unwrap();
        let client: SocketAddr = "203.0.113.7:51000".parse().unwrap();
        set_peer(&mut tcp, client);
        let digest = tcp.get_socket_digest().unwrap();
        assert_eq!(digest.peer_addr().and_then(|a| a.as_inet()), Some(&client));
        assert_eq!(digest.local_addr(), Some(&local));
    }
}
