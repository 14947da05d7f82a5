//! TLS termination: the certificates of `tls.certs_dir`, chosen by SNI.
//!
//! Data plane: [`Certificates`] is the rustls `ResolvesServerCert` that the
//! TLS listener asks during every handshake. It reads one snapshot
//! ([`CertSet`]): an exact-name map, a wildcard map and the default pair;
//! no lock, no allocation.
//!
//! Control plane: [`CertStore::reload`] reads the directory, checks each
//! `name.crt` / `name.key` pair ([`load`]), keeps the last good version of a
//! pair whose new files are refused, and publishes a new snapshot;
//! [`watch::CertWatcher`] calls it whenever the directory changes and tells
//! the journal what happened. Handshakes already made keep the certificate
//! they got; new ones get the new snapshot.
//!
//! Which certificate answers a name: the exact name, else the wildcard one
//! level up (`*.acme.example.com` covers `www.acme.example.com` only, as in
//! RFC 6125), else the `default` pair, else the handshake fails. Two pairs
//! covering one name: the one valid longest wins, so a renewed certificate
//! can be dropped in beside the old one before the old one is removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{MetricFamily, MetricType};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub mod load;
pub mod watch;

pub use self::load::Pair;

/// File stem of the pair that answers clients without SNI or with a name no
/// other pair covers.
pub const DEFAULT_PAIR: &str = "default";

/// The resolver (data plane), with the counters the metrics read.
#[derive(Default)]
pub struct Certificates {
    current: ArcSwap<CertSet>,
    applied: AtomicU64,
    rejected: AtomicU64,
}

/// The control-plane side: the directory and the last good version of each
/// pair. One owner (the watcher) reloads it.
pub struct CertStore {
    dir: PathBuf,
    /// Load key files readable by group or others (with a warning).
    allow_readable_keys: bool,
    pairs: BTreeMap<String, Pair>,
    certs: Arc<Certificates>,
}

/// What the handshakes read: built by `reload`, swapped whole.
#[derive(Default)]
pub struct CertSet {
    exact: ahash::HashMap<Box<str>, Arc<CertifiedKey>>,
    /// `*.acme.example.com` stored as `acme.example.com`.
    wildcard: ahash::HashMap<Box<str>, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// Pair name and expiry (Unix seconds), for the metrics.
    expiries: Vec<(String, i64)>,
}

/// What one `reload` did.
#[derive(Debug, Default)]
pub struct Report {
    /// Pairs loaded for the first time or with new content.
    pub loaded: Vec<Loaded>,
    /// Pairs whose files were refused; the last good version, if any, keeps
    /// serving.
    pub refused: Vec<Refused>,
    /// Pairs whose files are gone.
    pub removed: Vec<String>,
}

/// A pair now serving.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The pair's name (file stem).
    pub name: String,
    /// The host names it covers.
    pub hosts: Vec<String>,
    /// End of validity, RFC 3339.
    pub not_after: String,
}

/// A pair refused, and why.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The pair's name (file stem).
    pub name: String,
    /// `file: reason`.
    pub reason: String,
    /// An earlier version of the pair keeps serving.
    pub kept_previous: bool,
}

// === impl CertStore ===

impl CertStore {
    /// Load `dir`. Fails, naming every file and reason, when no pair in it
    /// is usable: a TLS listener without a certificate would refuse every
    /// client.
    /// A key file readable by group or others is refused, unless
    /// `allow_readable_keys` (then it is loaded with a warning).
    pub fn open(dir: &Path, allow_readable_keys: bool) -> anyhow::Result<(CertStore, Report)> {
        let mut store = CertStore {
            dir: dir.to_owned(),
            allow_readable_keys,
            pairs: BTreeMap::new(),
            certs: Arc::default(),
        };
        let report = store.reload()?;
        if store.certs.current.load().is_empty() {
            let mut why: Vec<String> = report.refused.iter().map(|r| r.reason.clone()).collect();
            if why.is_empty() {
                why.push(format!(
                    "no `name.crt` / `name.key` pair in {} (see certs/README.md)",
                    dir.display()
                ));
            }
            anyhow::bail!("tls.certs_dir: no usable certificate:\n  {}", why.join("\n  "));
        }
        Ok((store, report))
    }

    /// The directory the certificates come from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the TLS listener asks.
    pub fn certificates(&self) -> &Arc<Certificates> {
        &self.certs
    }

    /// Re-read the directory and publish what is usable. Unchanged pairs
    /// are not parsed again. Fails only when the directory cannot be read;
    /// then nothing changes.
    pub fn reload(&mut self) -> anyhow::Result<Report> {
        let files = load::list(&self.dir)?;
        let now = load::now();
        let mut report = Report::default();
        let gone: Vec<String> = self
            .pairs
            .keys()
            .filter(|name| !files.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            self.pairs.remove(&name);
            report.removed.push(name);
        }
        for (name, found) in files {
            let previous = self.pairs.get(&name);
            let digest = previous.map(Pair::digest);
            match load::pair(&self.dir, &name, found, digest, now, self.allow_readable_keys) {
                Ok(None) => {}
                Ok(Some(pair)) => {
                    report.loaded.push(Loaded {
                        name: name.clone(),
                        hosts: pair.hosts().to_vec(),
                        not_after: load::rfc3339(pair.not_after()),
                    });
                    self.pairs.insert(name, pair);
                }
                Err(reason) => report.refused.push(Refused {
                    kept_previous: previous.is_some(),
                    name,
                    reason,
                }),
            }
        }
        if !report.loaded.is_empty() || !report.removed.is_empty() {
            self.certs.current.store(Arc::new(CertSet::build(&self.pairs)));
        }
        self.certs.applied.fetch_add(report.loaded.len() as u64, Relaxed);
        self.certs
            .rejected
            .fetch_add(report.refused.len() as u64, Relaxed);
        Ok(report)
    }
}

// === impl Certificates ===

impl Certificates {
    /// The certificate a handshake for `server_name` gets.
    pub fn lookup(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.current.load().lookup(server_name)
    }
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.current.load();
        f.debug_struct("Certificates")
            .field("pairs", &set.expiries.len())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(hello.server_name())
    }
}

// === impl CertSet ===

impl CertSet {
    fn build(pairs: &BTreeMap<String, Pair>) -> CertSet {
        let mut set = CertSet::default();
        // Longest-valid first, so that it keeps a name another pair covers too.
        let mut by_validity: Vec<(&String, &Pair)> = pairs.iter().collect();
        by_validity.sort_by_key(|(_, p)| std::cmp::Reverse(p.not_after()));
        for (name, pair) in by_validity {
            set.expiries.push((name.clone(), pair.not_after()));
            if name == DEFAULT_PAIR {
                set.default = Some(Arc::clone(pair.key()));
            }
            for host in pair.hosts() {
                let (map, key) = match host.strip_prefix("*.") {
                    Some(suffix) => (&mut set.wildcard, suffix),
                    None => (&mut set.exact, host.as_str()),
                };
                map.entry(key.into()).or_insert_with(|| Arc::clone(pair.key()));
            }
        }
        set.expiries.sort();
        set
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.default.is_none()
    }

    fn lookup(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let found = server_name.and_then(|name| {
            // rustls hands over SNI in lower case, without a trailing dot.
            self.exact.get(name).or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
        });
        found.or(self.default.as_ref()).cloned()
    }
}

// === metrics ===

const EXPIRY: &str = "fledge_tls_cert_expiry_seconds";
const RELOADS: &str = "fledge_tls_cert_reloads_total";

/// Prometheus view of the certificates.
pub struct TlsExporter {
    certs: Arc<Certificates>,
    descs: Vec<Desc>,
}

impl TlsExporter {
    /// Export `certs`.
    pub fn new(certs: Arc<Certificates>) -> Self {
        use crate::metrics::desc;
        let descs = vec![
            desc(
                EXPIRY,
                "End of validity of each served certificate pair, in Unix seconds.",
                &["name"],
            ),
            desc(
                RELOADS,
                "Certificate pairs loaded (applied) or refused (rejected) since start.",
                &["result"],
            ),
        ];
        TlsExporter { certs, descs }
    }
}

impl Collector for TlsExporter {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use crate::metrics::{counter, family, gauge};
        let set = self.certs.current.load();
        let expiries = set
            .expiries
            .iter()
            .map(|(name, t)| gauge(&[("name", name)], *t as f64))
            .collect();
        let reloads = [
            ("applied", &self.certs.applied),
            ("rejected", &self.certs.rejected),
        ]
        .iter()
        .map(|(result, n)| counter(&[("result", result)], n.load(Relaxed) as f64))
        .collect();
        vec![
            family(EXPIRY, &self.descs[0].help, MetricType::GAUGE, expiries),
            family(RELOADS, &self.descs[1].help, MetricType::COUNTER, reloads),
        ]
    }
}
