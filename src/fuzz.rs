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
pub const TARGETS: [(&str, Target); 5] = [
    ("config", config),
    ("routing", routing),
    ("http1_request", http1_request),
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
        (RouteTable::build(&config, key, None, &BTreeMap::new()), config)
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
