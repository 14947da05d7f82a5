//! TLS termination: certificates by SNI, HTTP/2 and WebSockets over TLS,
//! certificate renewal and refusal while serving, TLS 1.1 refused, the
//! plain-HTTP redirect. Certificates are made here, by a test CA (rcgen);
//! the client is rustls.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{eventually, mock, response_status, trickled_header_cut_after, Client, TestProxy};

// === certificates ===

/// A CA that signs the test's certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A certificate and its key, as files would hold them.
struct Leaf {
    crt: String,
    key: String,
    der: CertificateDer<'static>,
    not_after: i64,
}

impl Ca {
    fn new() -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fledge test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A certificate for `names`, valid from `from` to `until` (years).
    fn leaf_between(&self, names: &[&str], from: i32, until: i32) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let not_after = params.not_after.unix_timestamp();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            // The chain: leaf, then the issuer.
            crt: cert.pem() + &self.cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().clone(),
            not_after,
        }
    }

    fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_between(names, 2020, 2090)
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }
}

/// Write a pair as a renewal tool should: each file to a temporary name
/// (hidden, so fledge skips it), then renamed over the old one.
fn install(dir: &Path, name: &str, crt: &str, key: &str) {
    for (ext, text) in [("key", key), ("crt", crt)] {
        let tmp = dir.join(format!(".{name}.{ext}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        // Keys readable by their owner alone, as fledge wants them.
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{name}.{ext}"))).unwrap();
    }
}

fn config(certs: &Path, stable: SocketAddr, extra_tenant: &str) -> String {
    format!(
        r#"listen: "{{listen}}"
threads: 2
tls:
  listen: "{{tls_listen}}"
  certs_dir: "{}"
pools:
  v17: {{ workers: ["{stable}"], websocket_workers: ["{stable}"] }}
tenants:
  acme:
    hosts: ["acme.example.com", "*.acme.example.com"]
    stable: v17
  beta:
    hosts: ["beta.example.com"]
    stable: v17
{extra_tenant}"#,
        certs.display()
    )
}

// === client ===

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any certificate: for looking at which one is served, under any
/// name, without SNI included.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn any_cert_client(alpn: &[&[u8]]) -> TlsConnector {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// A client that trusts only `ca`, as a browser trusts its roots.
fn verifying_client(ca: &Ca, alpn: &[&[u8]]) -> TlsConnector {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// Handshake with `sni` (`None`: no SNI, as a client connecting by address).
async fn handshake(
    connector: &TlsConnector,
    addr: SocketAddr,
    sni: Option<&str>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_owned()).unwrap(),
        // rustls sends no SNI for an address.
        None => ServerName::IpAddress(addr.ip().into()),
    };
    connector.connect(name, tcp).await
}

fn leaf_of(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// The certificate served to `sni`, or the handshake's error.
async fn served(addr: SocketAddr, sni: Option<&str>) -> Result<CertificateDer<'static>, String> {
    handshake(&any_cert_client(&[b"http/1.1"]), addr, sni)
        .await
        .map(|s| leaf_of(&s))
        .map_err(|e| e.to_string())
}

/// One HTTP/1.1 request on an open TLS connection.
async fn get_h1(
    send: &mut hyper::client::conn::http1::SendRequest<crate::util::Body>,
    host: &str,
    path: &str,
) -> http::Response<Bytes> {
    let req = http::Request::get(path)
        .header("host", host)
        .body(crate::util::full(Bytes::new()))
        .unwrap();
    // The connection takes the next request once it has finished the last.
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    http::Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_name_gets_its_certificate_and_unknown_names_the_default() {
    let ca = Ca::new();
    let certs = tempfile::tempdir().unwrap();
    let acme = ca.leaf(&["acme.example.com", "*.acme.example.com"]);
    let beta = ca.leaf(&["beta.example.com"]);
    let fallback = ca.leaf(&["fallback.example.org"]);
    install(certs.path(), "acme", &acme.crt, &acme.key);
    install(certs.path(), "beta", &beta.crt, &beta.key);
    install(certs.path(), "default", &fallback.crt, &fallback.key);
    let worker = mock("17.0").await;
    let proxy = TestProxy::start(&config(certs.path(), worker.addr(), ""));
    let tls = proxy.tls.unwrap();

    assert_eq!(served(tls, Some("acme.example.com")).await.unwrap(), acme.der);
    assert_eq!(served(tls, Some("WWW.Acme.Example.com")).await.unwrap(), acme.der);
    assert_eq!(served(tls, Some("beta.example.com")).await.unwrap(), beta.der);
    // One label deep only, as browsers match wildcards.
    assert_eq!(
        served(tls, Some("a.b.acme.example.com")).await.unwrap(),
        fallback.der
    );
    assert_eq!(
        served(tls, Some("unknown.example.org")).await.unwrap(),
        fallback.der
    );
    assert_eq!(served(tls, None).await.unwrap(), fallback.der);

    // The expiry of each pair, as Prometheus reads it.
    let expiry = |name: &str| format!("fledge_tls_cert_expiry_seconds{{name=\"{name}\"}}");
    assert_eq!(proxy.metric(&expiry("acme")).await, Some(acme.not_after as f64));
    assert_eq!(
        proxy.metric(&expiry("default")).await,
        Some(fallback.not_after as f64)
    );
    drop(proxy);

    // Without a default pair, a name nobody covers fails the handshake.
    std::fs::remove_file(certs.path().join("default.crt")).unwrap();
    std::fs::remove_file(certs.path().join("default.key")).unwrap();
    let proxy = TestProxy::start(&config(certs.path(), worker.addr(), ""));
    let tls = proxy.tls.unwrap();
    assert!(served(tls, Some("unknown.example.org")).await.is_err());
    assert!(served(tls, None).await.is_err());
    assert_eq!(served(tls, Some("beta.example.com")).await.unwrap(), beta.der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_websockets_over_tls_reach_http1_workers() {
    let ca = Ca::new();
    let certs = tempfile::tempdir().unwrap();
    let acme = ca.leaf(&["acme.example.com", "*.acme.example.com"]);
    install(certs.path(), "acme", &acme.crt, &acme.key);
    let worker = mock("17.0").await;
    let proxy = TestProxy::start(&config(certs.path(), worker.addr(), ""));
    let tls = proxy.tls.unwrap();

    // HTTP/2, chosen by ALPN, with the chain verified against the CA.
    let stream = handshake(
        &verifying_client(&ca, &[b"h2", b"http/1.1"]),
        tls,
        Some("acme.example.com"),
    )
    .await
    .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = http::Request::get("https://acme.example.com/__mock/echo")
            .body(crate::util::full(Bytes::new()))
            .unwrap();
        send.ready().await.unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.headers()["x-fledge-version"], "stable");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
        // The worker speaks HTTP/1.1 and learns the client's scheme.
        assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");
        assert_eq!(echo["headers"]["x-forwarded-host"][0], "acme.example.com");
    }

    // A WebSocket over TLS (HTTP/1.1 by ALPN).
    let stream = handshake(
        &verifying_client(&ca, &[b"http/1.1"]),
        tls,
        Some("www.acme.example.com"),
    )
    .await
    .unwrap();
    let (mut socket, resp) = tokio_tungstenite::client_async("wss://www.acme.example.com/websocket", stream)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    socket.send(Message::Text("over tls".into())).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::Text("over tls".into()));
    assert_eq!(worker.stats().websockets, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_serves_new_handshakes_and_open_connections_carry_on() {
    let ca = Ca::new();
    let certs = tempfile::tempdir().unwrap();
    let old = ca.leaf(&["acme.example.com"]);
    install(certs.path(), "acme", &old.crt, &old.key);
    let worker = mock("17.0").await;
    let proxy = TestProxy::start(&config(certs.path(), worker.addr(), ""));
    let tls = proxy.tls.unwrap();

    let stream = handshake(&any_cert_client(&[b"http/1.1"]), tls, Some("acme.example.com"))
        .await
        .unwrap();
    assert_eq!(leaf_of(&stream), old.der);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(
        get_h1(&mut send, "acme.example.com", "/web/login").await.status(),
        200
    );

    let new = ca.leaf_between(&["acme.example.com"], 2021, 2095);
    install(certs.path(), "acme", &new.crt, &new.key);
    let renewed = eventually(15, || async {
        served(tls, Some("acme.example.com")).await.ok() == Some(new.der.clone())
    })
    .await;
    assert!(
        renewed,
        "new handshakes still get the old certificate:\n{}",
        proxy.log()
    );

    // The connection opened before keeps its session and keeps working.
    for _ in 0..3 {
        assert_eq!(
            get_h1(&mut send, "acme.example.com", "/web/login").await.status(),
            200
        );
    }
    let expiry = "fledge_tls_cert_expiry_seconds{name=\"acme\"}";
    assert_eq!(proxy.metric(expiry).await, Some(new.not_after as f64));
    let loaded = proxy
        .journal()
        .iter()
        .filter(|e| e["event"] == "tls_cert_loaded")
        .count();
    assert_eq!(loaded, 2, "{:?}", proxy.journal());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_tls_connection_trickling_its_next_header_is_cut_at_the_deadline() {
    let ca = Ca::new();
    let certs = tempfile::tempdir().unwrap();
    let acme = ca.leaf(&["acme.example.com"]);
    install(certs.path(), "acme", &acme.crt, &acme.key);
    let worker = mock("17.0").await;
    let config = format!(
        "limits:\n  header_timeout_seconds: 2\n{}",
        config(certs.path(), worker.addr(), "")
    );
    let proxy = TestProxy::start(&config);
    let mut stream = handshake(
        &any_cert_client(&[b"http/1.1"]),
        proxy.tls.unwrap(),
        Some("acme.example.com"),
    )
    .await
    .unwrap();
    let request = b"GET /web/login HTTP/1.1\r\nHost: acme.example.com\r\n\r\n";
    stream.write_all(request).await.unwrap();
    assert_eq!(response_status(&mut stream).await, Some(200));
    // Idle past the header deadline: kept (the clock starts at the next
    // request's first byte, not when the last one ended).
    tokio::time::sleep(Duration::from_secs(3)).await;
    stream.write_all(request).await.unwrap();
    assert_eq!(response_status(&mut stream).await, Some(200));

    // The next header trickles in: each read restarts Pingora's timer, and
    // TLS cannot be peeked, yet it is cut.
    let closed_after = trickled_header_cut_after(&mut stream, "acme.example.com")
        .await
        .expect("a trickled kept-alive header was never cut");
    crate::util::assert_cut_after_two_seconds(closed_after);
    assert_eq!(worker.stats().requests, 2);
    assert_eq!(proxy.metric("fledge_slow_headers_total").await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_pairs_are_refused_and_the_last_good_one_keeps_serving() {
    let ca = Ca::new();
    let certs = tempfile::tempdir().unwrap();
    let good = ca.leaf(&["acme.example.com"]);
    install(certs.path(), "acme", &good.crt, &good.key);
    let worker = mock("17.0").await;
    let proxy = TestProxy::start(&config(certs.path(), worker.addr(), ""));
    let tls = proxy.tls.unwrap();
    let crt_file = certs.path().join("acme.crt").display().to_string();
    let key_file = certs.path().join("acme.key").display().to_string();

    let other = ca.leaf(&["acme.example.com"]);
    let expired = ca.leaf_between(&["acme.example.com"], 2020, 2021);
    let truncated_key = &other.key[..other.key.len() / 2];
    let cases: [(&str, &str, &str, String); 3] = [
        (
            "a truncated key",
            &other.crt,
            truncated_key,
            format!("{key_file}: not a PEM private key"),
        ),
        (
            "a key that is not the certificate's",
            &other.crt,
            &good.key,
            format!("{key_file}: is not the key of {crt_file}"),
        ),
        (
            "an expired certificate",
            &expired.crt,
            &expired.key,
            format!("{crt_file}: expired on 2021-01-01"),
        ),
    ];
    for (i, (what, crt, key, reason)) in cases.iter().enumerate() {
        install(certs.path(), "acme", crt, key);
        let refused = eventually(15, || async {
            proxy.journal().iter().any(|e| {
                e["event"] == "tls_cert_rejected"
                    && e["reason"].as_str().unwrap().starts_with(reason.as_str())
            })
        })
        .await;
        assert!(
            refused,
            "{what} was not refused with `{reason}`: {:?}",
            proxy.journal()
        );
        assert_eq!(
            served(tls, Some("acme.example.com")).await.unwrap(),
            good.der,
            "after {what}, the last good certificate must serve"
        );
        let rejected = proxy
            .metric("fledge_tls_cert_reloads_total{result=\"rejected\"}")
            .await
            .unwrap();
        assert!(rejected >= (i + 1) as f64, "{what}: {rejected}");
    }
    // A good pair again is taken at once.
    let fixed = ca.leaf(&["acme.example.com"]);
    install(certs.path(), "acme", &fixed.crt, &fixed.key);
    let taken = eventually(15, || async {
        served(tls, Some("acme.example.com")).await.ok() == Some(fixed.der.clone())
    })
    .await;
    assert!(taken, "{}", proxy.log());
}

/// A ClientHello offering nothing above TLS 1.1 (and no
/// `supported_versions`), as an old client sends it.
fn tls11_client_hello(sni: &str) -> Vec<u8> {
    let mut ext = Vec::new();
    let name = sni.as_bytes();
    let list_len = 3 + name.len();
    ext.extend_from_slice(&[0x00, 0x00]); // server_name
    ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
    ext.extend_from_slice(&(list_len as u16).to_be_bytes());
    ext.push(0); // host_name
    ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    ext.extend_from_slice(name);

    let mut hello = vec![0x03, 0x02]; // client_version: TLS 1.1
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // session id
    let suites: [u16; 4] = [0xc014, 0xc013, 0x0035, 0x002f];
    hello.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        hello.extend_from_slice(&s.to_be_bytes());
    }
    hello.extend_from_slice(&[0x01, 0x00]); // compression: null
    hello.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    hello.extend_from_slice(&ext);

    let mut handshake = vec![0x01]; // ClientHello
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_1_client_hello_is_refused() {
    let ca = Ca::new();
    let certs = tempfile::tempdir().unwrap();
    let acme = ca.leaf(&["acme.example.com"]);
    install(certs.path(), "acme", &acme.crt, &acme.key);
    let worker = mock("17.0").await;
    let proxy = TestProxy::start(&config(certs.path(), worker.addr(), ""));

    let mut tcp = TcpStream::connect(proxy.tls.unwrap()).await.unwrap();
    tcp.write_all(&tls11_client_hello("acme.example.com"))
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("the connection was not closed");
    // A fatal alert record (21, level 2; rustls says handshake_failure),
    // never a handshake record (22) with a ServerHello.
    assert_eq!(answer.first(), Some(&21), "{answer:02x?}");
    assert_eq!(answer.get(5), Some(&2), "{answer:02x?}");

    // The same listener serves TLS 1.2 and 1.3.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(ca.roots())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let stream = handshake(
            &TlsConnector::from(Arc::new(config)),
            proxy.tls.unwrap(),
            Some("acme.example.com"),
        )
        .await
        .unwrap();
        assert_eq!(stream.get_ref().1.protocol_version(), Some(version.version));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_for_the_tenants_that_ask() {
    let ca = Ca::new();
    let certs = tempfile::tempdir().unwrap();
    let shop = ca.leaf(&["shop.example.com", "acme.example.com"]);
    install(certs.path(), "shop", &shop.crt, &shop.key);
    let worker = mock("17.0").await;
    let tenant = "  shop:\n    hosts: [\"shop.example.com\"]\n    stable: v17\n    redirect_http: true\n";
    let proxy = TestProxy::start(&config(certs.path(), worker.addr(), tenant));
    let tls = proxy.tls.unwrap();
    let client = Client::new(proxy.addr);

    let r = client
        .get("shop.example.com:8080", "/web/login?redirect=%2Fodoo", &[])
        .await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(
            format!(
                "https://shop.example.com:{}/web/login?redirect=%2Fodoo",
                tls.port()
            )
            .as_str()
        )
    );
    assert_eq!(worker.stats().requests, 0, "a redirect reaches no worker");
    // Tenants that did not ask are served over plain HTTP.
    assert_eq!(
        client.get("acme.example.com", "/web/login", &[]).await.status,
        200
    );

    // Over TLS, the tenant is served.
    let stream = handshake(
        &verifying_client(&ca, &[b"http/1.1"]),
        tls,
        Some("shop.example.com"),
    )
    .await
    .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = get_h1(&mut send, "shop.example.com", "/web/login").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(worker.stats().requests, 2);
}

/// What `fledge run` prints and returns when it refuses to start.
fn refused_start(config: &Path) -> (bool, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fledge"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status.success(), err);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("fledge started without a usable certificate");
}

#[test]
fn startup_refuses_a_tls_listener_without_a_usable_certificate() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let certs: PathBuf = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let expired = ca.leaf_between(&["acme.example.com"], 2020, 2021);
    install(&certs, "acme", &expired.crt, &expired.key);
    std::fs::write(certs.join("beta.crt"), ca.leaf(&["beta.example.com"]).crt).unwrap();
    let text = config(&certs, "127.0.0.1:9".parse().unwrap(), "")
        .replace("{listen}", "127.0.0.1:0")
        .replace("{tls_listen}", "127.0.0.2:8443")
        + &format!("state_dir: \"{}\"\n", dir.path().join("state").display());
    let file = dir.path().join("fledge.yaml");
    std::fs::write(&file, text).unwrap();

    let (ok, stderr) = refused_start(&file);
    assert!(!ok);
    assert!(stderr.contains("no usable certificate"), "{stderr}");
    let acme = certs.join("acme.crt").display().to_string();
    assert!(
        stderr.contains(&format!("{acme}: expired on 2021-01-01")),
        "{stderr}"
    );
    let beta_key = certs.join("beta.key").display().to_string();
    assert!(stderr.contains(&format!("{beta_key}: missing")), "{stderr}");
}

/// Issue 23: a private key others can read is refused, naming the file and
/// the reason, unless `tls.allow_readable_keys` says to load it anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_key_others_can_read_is_refused_unless_allowed() {
    use std::os::unix::fs::PermissionsExt as _;
    let ca = Ca::new();
    let certs = tempfile::tempdir().unwrap();
    let (acme, beta) = (ca.leaf(&["acme.example.com"]), ca.leaf(&["beta.example.com"]));
    install(certs.path(), "acme", &acme.crt, &acme.key);
    install(certs.path(), "beta", &beta.crt, &beta.key);
    let beta_key = certs.path().join("beta.key");
    std::fs::set_permissions(&beta_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let worker = mock("17.0").await;
    let proxy = TestProxy::start(&config(certs.path(), worker.addr(), ""));
    let tls = proxy.tls.unwrap();
    assert_eq!(served(tls, Some("acme.example.com")).await.unwrap(), acme.der);
    assert_ne!(
        served(tls, Some("beta.example.com")).await.ok(),
        Some(beta.der.clone())
    );
    let log = proxy.log();
    assert!(
        log.contains(&beta_key.display().to_string()) && log.contains("readable by everyone"),
        "{log}"
    );
    drop(proxy);

    let allowing = config(certs.path(), worker.addr(), "").replace(
        &format!("  certs_dir: \"{}\"\n", certs.path().display()),
        &format!(
            "  certs_dir: \"{}\"\n  allow_readable_keys: true\n",
            certs.path().display()
        ),
    );
    assert!(allowing.contains("allow_readable_keys"), "{allowing}");
    let proxy = TestProxy::start(&allowing);
    assert_eq!(
        served(proxy.tls.unwrap(), Some("beta.example.com"))
            .await
            .unwrap(),
        beta.der
    );
}

/// Issue 23: TLS connections count against the caps from accept, and a
/// handshake that never comes is cut at `limits.tls_handshake_timeout_seconds`
/// with a counter, not an error line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_connections_count_from_accept_and_are_cut_at_the_handshake_deadline() {
    let ca = Ca::new();
    let certs = tempfile::tempdir().unwrap();
    let acme = ca.leaf(&["acme.example.com"]);
    install(certs.path(), "acme", &acme.crt, &acme.key);
    let worker = mock("17.0").await;
    let text = config(certs.path(), worker.addr(), "").replace(
        "pools:",
        "limits:\n  max_connections_per_ip: 100\n  tls_handshake_timeout_seconds: 2\npools:",
    );
    let proxy = TestProxy::start(&text);
    let tls = proxy.tls.unwrap();
    let idle = crate::util::eventually(5, || async {
        proxy.metric("fledge_connections_open").await == Some(0.0)
    })
    .await;
    assert!(idle, "{}", proxy.metrics().await);

    // 300 connections from one address that never say a word.
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(tokio::net::TcpStream::connect(tls).await.unwrap());
    }
    let open = crate::util::eventually(5, || async {
        proxy.metric("fledge_connections_open").await == Some(100.0)
    })
    .await;
    assert!(open, "{}", proxy.metrics().await);
    // The accept loop gets to the last of them a moment later on a busy
    // machine.
    let series = "fledge_connections_refused_total{cap=\"per_ip\"}";
    let refused = crate::util::eventually(5, || async { proxy.metric(series).await == Some(200.0) }).await;
    assert!(
        refused,
        "the 101st and later are closed at accept: {:?} refused",
        proxy.metric(series).await
    );
    // A client from another address still gets in and is served.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = other.connect(tls).await.unwrap();
    let connector = verifying_client(&ca, &[b"http/1.1"]);
    let name = ServerName::try_from("acme.example.com").unwrap();
    assert!(
        connector.connect(name, tcp).await.is_ok(),
        "another client's handshake"
    );

    // The silent ones are closed at the handshake deadline, not 60 s later.
    let started = tokio::time::Instant::now();
    let mut closed = 0;
    for c in silent.iter_mut() {
        let mut b = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(10), c.read(&mut b)).await {
            Ok(Ok(0) | Err(_)) => closed += 1,
            other => panic!("a silent connection got {other:?}"),
        }
    }
    assert_eq!(closed, 300);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let timeouts = crate::util::eventually(5, || async {
        proxy
            .metric("fledge_tls_handshake_failures_total{reason=\"timeout\"}")
            .await
            == Some(100.0)
    })
    .await;
    assert!(timeouts, "{}", proxy.metrics().await);
    assert!(!proxy.log().contains("ERROR"), "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_protocol_header_before_the_handshake_names_the_client() {
    use crate::edge::{header, proxy_v2, recorder, TRUSTED, UNTRUSTED};
    let ca = Ca::new();
    let certs = tempfile::tempdir().unwrap();
    let acme = ca.leaf(&["acme.example.com"]);
    install(certs.path(), "acme", &acme.crt, &acme.key);
    let (tx, mut heads) = tokio::sync::mpsc::unbounded_channel();
    let worker = recorder(tx).await;
    let config = format!(
        "proxy_protocol:\n  from: [\"{TRUSTED}/32\"]\n{}",
        config(certs.path(), worker, "")
    );
    let proxy = TestProxy::start(&config);
    let tls = proxy.tls.unwrap();
    // A connection from `src` that sends `first`, then shakes hands.
    let connect = |src: &'static str, first: Vec<u8>| async move {
        let mut tcp = crate::edge::connect_from(src, tls).await;
        tcp.write_all(&first).await.unwrap();
        let name = ServerName::try_from("acme.example.com").unwrap();
        any_cert_client(&[b"http/1.1"]).connect(name, tcp).await
    };
    let request = b"GET /web/login HTTP/1.1\r\nHost: acme.example.com\r\n\r\n";
    for (first, client) in [
        (
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n".to_vec(),
            "203.0.113.7",
        ),
        (
            proxy_v2(false, "[2001:db8::9]:4000", "[2001:db8::1]:443"),
            "2001:db8::9",
        ),
        (proxy_v2(true, "0.0.0.0:0", "0.0.0.0:0"), TRUSTED),
    ] {
        let mut stream = connect(TRUSTED, first).await.expect("handshake");
        // Two requests on the connection: both carry its client.
        for _ in 0..2 {
            stream.write_all(request).await.unwrap();
            assert_eq!(response_status(&mut stream).await, Some(200));
            let head = heads.recv().await.unwrap();
            assert_eq!(header(&head, "x-forwarded-for"), Some(client), "{head}");
            assert_eq!(header(&head, "x-forwarded-proto"), Some("https"), "{head}");
        }
    }
    // From a peer not in `from`, a PROXY header breaks the handshake; from
    // one in it, a ClientHello without a header is refused.
    let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n".to_vec();
    assert!(connect(UNTRUSTED, v1).await.is_err());
    assert!(connect(TRUSTED, Vec::new()).await.is_err());
    assert!(
        heads.try_recv().is_err(),
        "a refused connection reached the worker"
    );
}
