//! Bodies stream (200 MB each way without buffering), WebSockets outlive
//! Pingora's default 60 s idle timeout.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{mock, two_pools, Client, TestProxy};

const HOST: &str = "acme.example.com";
const SIZE: u64 = 200 * 1024 * 1024;
/// RSS the proxy may grow by while moving 200 MB each way.
const MAX_GROWTH_KIB: u64 = 32 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_downloads_of_200_mb_stream_through_without_buffering() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let proxy = TestProxy::start(&two_pools(&[&s], &[&c], 0.0, ""));
    let client = Client::new(proxy.addr);
    // Warm up: connections, pools, allocator arenas.
    client.get(HOST, "/web/content/warm?size=1048576", &[]).await;
    let before = proxy.memory_kib("VmRSS");

    // Download, read chunk by chunk and dropped.
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("/web/content/big?size={SIZE}"))
        .header("host", HOST)
        .body(crate::util::full(Bytes::new()))
        .unwrap();
    let mut body = send.send_request(req).await.unwrap().into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, SIZE);

    // Upload, produced chunk by chunk.
    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let chunks = SIZE / chunk.len() as u64;
    let stream =
        futures_util::stream::iter((0..chunks).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))));
    let r = client
        .send(
            "POST",
            HOST,
            "/web/binary/upload_attachment",
            &[("content-length", &SIZE.to_string())],
            BodyExt::boxed(StreamBody::new(stream)),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["received"], SIZE);
    assert_eq!(s.stats().upload_bytes, SIZE);

    let peak = proxy.memory_kib("VmHWM");
    let growth = peak.saturating_sub(before);
    assert!(
        growth < MAX_GROWTH_KIB,
        "proxy peak RSS grew by {growth} KiB (from {before} KiB)"
    );
}

async fn open_websocket(
    addr: std::net::SocketAddr,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (socket, resp) = tokio_tungstenite::client_async(format!("ws://{HOST}/websocket"), tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    socket
}

async fn round_trip(socket: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, text: &str) {
    socket.send(Message::Text(text.into())).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply, Message::Text(text.into()));
}

/// Pingora cuts an idle downstream after 60 s unless told otherwise; Odoo's
/// bus socket idles longer than that between notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_stays_open_past_sixty_five_seconds() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let proxy = TestProxy::start(&two_pools(&[&s], &[&c], 0.0, ""));
    let mut socket = open_websocket(proxy.addr).await;
    round_trip(&mut socket, "hello").await;
    tokio::time::sleep(Duration::from_secs(65)).await;
    round_trip(&mut socket, "still there").await;
    assert_eq!(s.stats().websocket_messages, 2);
}

/// The same mechanism, shortened: `websocket_idle_seconds` is what decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_idle_timeout_is_the_configured_one() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let config = two_pools(&[&s], &[&c], 0.0, "") + "timeouts:\n  websocket_idle_seconds: 2\n";
    let proxy = TestProxy::start(&config);
    let mut socket = open_websocket(proxy.addr).await;
    round_trip(&mut socket, "hello").await;
    // Closed by the proxy after about 2 s of silence.
    let end = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("not closed in 10 s");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
}
