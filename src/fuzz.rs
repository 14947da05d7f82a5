//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz), one per
//! input an outsider controls. Each must return, whatever the bytes: a
//! panic is a bug. `tests/fuzz_corpus.rs` replays every target's corpus
//! (`fuzz/corpus/<target>/`) through the same functions on each
//! `cargo test`, so a crash found once stays fixed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::RequestHeader;

use crate::config::Config;
use crate::proxy::classify::JsonRpcSniffer;
use crate::routing::{CookieKey, RequestView, RouteTable};

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// The targets, by name (as in `fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: [(&str, Target); 6] = [
    ("config", config),
    ("routing", routing),
    ("http1_request", http1_request),
    ("http1_differential", http1_differential),
    ("admin_body", admin_body),
    ("jsonrpc_sniffer", jsonrpc_sniffer),
];

const TABLE_CONFIG: &str = r#"
listen: "127.0.0.1:8080"
pools:
  v17: { workers: ["127.0.0.1:18069"], websocket_workers: ["127.0.0.1:18072"] }
  v18: { workers: ["127.0.0.1:19069"] }
policies:
  default:
    override_from: ["127.0.0.0/8"]
tenants:
  acme:
    hosts: ["acme.example.com", "*.acme.example.com"]
    stable: v17
    canary: v18
    canary_weight: 20
  beta:
    hosts: ["beta.example.com"]
    stable: v17
"#;

fn table() -> &'static (RouteTable, Config) {
    static TABLE: OnceLock<(RouteTable, Config)> = OnceLock::new();
    TABLE.get_or_init(|| {
        let config = crate::config::parse(TABLE_CONFIG, "fuzz.yaml").expect("the fuzz config is valid");
        let key = Arc::new(CookieKey::from_secret(b"fuzzing fuzzing fuzzing"));
        (
            RouteTable::build(
                &config,
                key,
                None,
                &BTreeMap::<String, crate::analysis::rollout::Rollout>::new(),
            ),
            config,
        )
    })
}

/// A config file: parsed and validated, or refused with reasons.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::parse(text, "fuzz.yaml");
    }
}

/// The routing decision on an arbitrary host and headers: the first line
/// is the host, each further line a `name: value` header (cookies, the
/// override header, anything); the last byte picks the client address.
pub fn routing(data: &[u8]) {
    let mut lines = data.split(|b| *b == b'\n');
    let host = lines
        .next()
        .and_then(|h| std::str::from_utf8(h).ok())
        .unwrap_or("");
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    let last = data.last().copied().unwrap_or(0);
    let view = RequestView {
        host,
        headers: &headers,
        client_ip: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))),
        now: None,
    };
    let _ = table().0.decide(&view);
}

/// The HTTP/1 ingress path through fledge's own checks: raw request bytes
/// parsed as Pingora parses them (httparse), then the limits, then routing.
pub fn http1_request(data: &[u8]) {
    let mut parsed = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut parsed);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return;
    };
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return;
    };
    let Ok(mut header) = RequestHeader::build(method, path.as_bytes(), Some(req.headers.len())) else {
        return;
    };
    for h in req.headers.iter() {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            let _ = header.append_header(n, v);
        }
    }
    let (table, config) = table();
    if crate::proxy::limits::check(&header, &config.limits, &["x-fledge-version"]).is_some() {
        return;
    }
    let view = RequestView {
        host: crate::proxy::host_of(&header).unwrap_or(""),
        headers: &header.headers,
        client_ip: None,
        now: None,
    };
    let _ = table.decide(&view);
}

/// One request as fledge's HTTP/1 codec decided it, or as the reference
/// parser read what fledge forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// The method.
    pub method: Vec<u8>,
    /// The request target.
    pub target: Vec<u8>,
    /// The body's payload (a chunked body's data, without its framing).
    pub body: Vec<u8>,
}

/// What fledge's HTTP/1 codec forwards of `input`, a client's bytes: each
/// request it takes, in order, with the bytes that go on for it (the head
/// rewritten, the body as it came), up to the first it refuses or that is
/// not whole; and where each request's bytes end in them. The same steps
/// as the request path, without the sockets.
pub fn codec_forwards(input: &[u8]) -> (Vec<Decided>, Vec<u8>, Vec<usize>) {
    use crate::http1::{chunked::Chunked, framing, head::RequestHead, write};
    let config = &table().1;
    let mut decided = Vec::new();
    let mut out = Vec::new();
    let mut ends = Vec::new();
    let mut rest = input;
    while let Ok(Some(head)) = RequestHead::parse(rest) {
        if crate::proxy::limits::check_head(rest, &head, &config.limits, &["x-fledge-version"]).is_err() {
            break;
        }
        let Ok(body) = framing::request(rest, &head) else {
            break;
        };
        let hop = write::Hop::read(rest, &head.fields);
        if hop.too_many || hop.upgrade {
            break;
        }
        let after = &rest[head.len..];
        let (payload, used) = match body {
            framing::Body::None => (Vec::new(), 0),
            framing::Body::Length(n) => {
                let Some(body) = usize::try_from(n).ok().and_then(|n| after.get(..n)) else {
                    break;
                };
                (body.to_vec(), body.len())
            }
            framing::Body::Chunked => {
                let mut chunked = Chunked::new();
                let mut payload = Vec::new();
                match chunked.feed(after, |d| payload.extend_from_slice(d)) {
                    Ok(p) if p.done => (payload, p.used),
                    _ => break,
                }
            }
            framing::Body::UntilClose => break,
        };
        let mut forwarded = Vec::new();
        write::request_head(&mut forwarded, rest, &head, &hop, body, |_| false, &[]);
        forwarded.extend_from_slice(&after[..used]);
        out.extend_from_slice(&forwarded);
        ends.push(out.len());
        decided.push(Decided {
            method: head.method.get(rest).to_vec(),
            target: head.target.get(rest).to_vec(),
            body: payload,
        });
        rest = &after[used..];
    }
    (decided, out, ends)
}

/// The requests hyper's HTTP/1 server reads from `bytes` (its own framing
/// and chunked decoding; `httparse` only for heads), until it stops: at the
/// end, or at its first error.
pub fn hyper_reads(bytes: &[u8]) -> (Vec<Decided>, bool) {
    use http_body_util::BodyExt;
    use std::sync::mpsc;
    use tokio::io::AsyncWriteExt;
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
    }
    let (tx, rx) = mpsc::channel();
    let failed = RUNTIME.with(|rt| {
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(bytes.len() + 64 * 1024);
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let tx = tx.clone();
                async move {
                    let method = req.method().as_str().as_bytes().to_vec();
                    let target = req.uri().to_string().into_bytes();
                    let body = req.into_body().collect().await?.to_bytes().to_vec();
                    let _ = tx.send(Decided { method, target, body });
                    Ok::<_, hyper::Error>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
                }
            });
            let _ = client.write_all(bytes).await;
            let _ = client.shutdown().await;
            let conn = hyper::server::conn::http1::Builder::new()
                .max_headers(crate::http1::head::MAX_FIELDS + 8)
                .half_close(true)
                .serve_connection(hyper_util::rt::TokioIo::new(server), service);
            // The responses pile up in the pipe, which is big enough.
            let failed = conn.await.is_err();
            drop(client);
            failed
        })
    });
    (rx.try_iter().collect(), failed)
}

/// Differential: whatever fledge's HTTP/1 codec forwards of a client's
/// bytes, hyper's server reads back as exactly the requests fledge
/// decided — none more (a smuggled request), none with its body cut
/// elsewhere — and without an error (fledge never forwards what a strict
/// parser refuses). Compared up to the first request whose target the
/// `http` crate's URI parser refuses: bytes such as `|`, `^` or a backtick
/// that browsers send unencoded in a query (WHATWG URL) and Odoo takes,
/// which fledge passes on as they are; where the message ends is not in
/// question there.
pub fn http1_differential(data: &[u8]) {
    let (mut decided, forwarded, ends) = codec_forwards(data);
    let comparable = decided
        .iter()
        .position(|d| http::Uri::try_from(d.target.as_slice()).is_err())
        .unwrap_or(decided.len());
    decided.truncate(comparable);
    if decided.is_empty() {
        return;
    }
    // As hyper reports a target: through the `http` crate's URI, which
    // writes an absolute target's empty path as `/`.
    for d in &mut decided {
        if let Ok(uri) = http::Uri::try_from(d.target.as_slice()) {
            d.target = uri.to_string().into_bytes();
        }
    }
    let forwarded = &forwarded[..ends[comparable - 1]];
    let (read, failed) = hyper_reads(forwarded);
    assert!(
        !failed && read == decided,
        "fledge decided {decided:?}\nhyper read {read:?} (error: {failed})\nfrom {:?}\nforwarded {:?}",
        String::from_utf8_lossy(data),
        String::from_utf8_lossy(forwarded)
    );
}

/// Admin API inputs: the weight body, and a journal query string.
pub fn admin_body(data: &[u8]) {
    let _ = crate::admin::parse_weight(data);
    if let Ok(query) = std::str::from_utf8(data) {
        let _ = crate::admin::parse_since(query);
    }
}

/// A worker's JSON-RPC response, fed to the sniffer in pieces (the first
/// byte says where to cut).
pub fn jsonrpc_sniffer(data: &[u8]) {
    let mut sniffer = JsonRpcSniffer::start();
    let cut = data.first().map_or(1, |b| usize::from(*b).max(1));
    for piece in data.chunks(cut) {
        sniffer.feed(piece);
    }
    let _ = sniffer.answer(&crate::proxy::classify::DEFAULT_CLIENT_EXCEPTIONS);
}

#[cfg(test)]
mod tests {
    use super::TARGETS;

    /// Every committed input of every target runs through its entry point.
    #[test]
    fn the_fuzz_corpora_replay_without_a_panic() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        let mut replayed = 0;
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let mut count = 0;
            for entry in entries {
                let path = entry.unwrap().path();
                target(&std::fs::read(&path).unwrap());
                count += 1;
            }
            assert!(count > 0, "no inputs for `{name}` in {}", dir.display());
            replayed += count;
        }
        assert!(replayed >= TARGETS.len());
    }
}
