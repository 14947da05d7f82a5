//! Control plane: read and check one certificate pair.
//!
//! A pair is `name.crt` (PEM: the certificate, then its intermediates) and
//! `name.key` (PEM: PKCS#8, PKCS#1 or SEC1). It is refused, with the file
//! and the reason, when either file is missing or unreadable, the chain or
//! the key does not parse, the key is not the certificate's, the certificate
//! is expired or not yet valid, or it names no host (the `default` pair
//! excepted). The host names come from the certificate itself: its DNS
//! subject alternative names, as browsers read them (the subject's CN is
//! ignored, as they ignore it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

use super::DEFAULT_PAIR;

/// A checked pair, ready to serve.
#[derive(Debug, Clone)]
pub struct Pair {
    key: Arc<CertifiedKey>,
    hosts: Vec<String>,
    not_after: i64,
    digest: u64,
}

/// The files of one pair name found in the directory.
#[derive(Debug, Default)]
pub struct Found {
    crt: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl Pair {
    /// What rustls serves.
    pub fn key(&self) -> &Arc<CertifiedKey> {
        &self.key
    }

    /// Host names covered, lower case; wildcards as `*.suffix`.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// End of validity, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Hash of both files' bytes: an unchanged pair is not parsed again.
    pub fn digest(&self) -> u64 {
        self.digest
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A Unix time as RFC 3339, for messages.
pub fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).map_or_else(|| unix.to_string(), |t| t.to_rfc3339())
}

/// The pairs in `dir`, by name. Hidden files (editors' and Kubernetes'
/// `..data`) and other extensions are not ours and are skipped.
pub fn list(dir: &Path) -> anyhow::Result<BTreeMap<String, Found>> {
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read {}", dir.display()))?
            .path();
        let (Some(stem), Some(ext)) = (
            path.file_stem().and_then(|s| s.to_str()).map(str::to_owned),
            path.extension().and_then(|s| s.to_str()).map(str::to_owned),
        ) else {
            continue;
        };
        if stem.starts_with('.') {
            continue;
        }
        match ext.as_str() {
            "crt" => found.entry(stem).or_default().crt = Some(path),
            "key" => found.entry(stem).or_default().key = Some(path),
            _ => {}
        }
    }
    Ok(found)
}

/// Load the pair `name`. `Ok(None)`: its files hash to `previous`, nothing
/// to do. `Err`: `file: reason`.
pub fn pair(
    dir: &Path,
    name: &str,
    found: Found,
    previous: Option<u64>,
    now: i64,
    allow_readable_keys: bool,
) -> Result<Option<Pair>, String> {
    let missing = |ext: &str| {
        format!(
            "{}: missing (a pair is `{name}.crt` and `{name}.key`)",
            dir.join(format!("{name}.{ext}")).display()
        )
    };
    let crt_path = found.crt.ok_or_else(|| missing("crt"))?;
    let key_path = found.key.ok_or_else(|| missing("key"))?;
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: cannot read: {e}", p.display()));
    let (crt, key) = (read(&crt_path)?, read(&key_path)?);
    let digest = xxhash_rust::xxh3::xxh3_64(&[crt.as_slice(), key.as_slice()].concat());
    if previous == Some(digest) {
        return Ok(None);
    }
    let at = |p: &Path, why: String| format!("{}: {why}", p.display());
    // A private key others can read is no longer private.
    match crate::state_dir::key_file_exposure(&key_path) {
        Ok(Some(why)) if allow_readable_keys => {
            tracing::warn!(file = %key_path.display(), "{why} (allowed by tls.allow_readable_keys)");
        }
        Ok(Some(why)) => return Err(at(&key_path, why)),
        Ok(None) => {}
        Err(e) => return Err(at(&key_path, format!("cannot read: {e}"))),
    }

    let chain = CertificateDer::pem_slice_iter(&crt)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| at(&crt_path, format!("not a PEM certificate chain ({e})")))?;
    let Some(leaf) = chain.first() else {
        return Err(at(&crt_path, "holds no PEM `CERTIFICATE`".into()));
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| at(&crt_path, format!("the certificate does not parse ({e})")))?;
    let validity = parsed.validity();
    let (not_before, not_after) = (validity.not_before.timestamp(), validity.not_after.timestamp());
    if now >= not_after {
        return Err(at(&crt_path, format!("expired on {}", rfc3339(not_after))));
    }
    if now < not_before {
        return Err(at(&crt_path, format!("not valid before {}", rfc3339(not_before))));
    }
    let mut hosts = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for general in &san.value.general_names {
            if let GeneralName::DNSName(n) = general {
                let n = n.trim_end_matches('.').to_ascii_lowercase();
                if !n.is_empty() && !hosts.contains(&n) {
                    hosts.push(n);
                }
            }
        }
    }
    if hosts.is_empty() && name != DEFAULT_PAIR {
        return Err(at(
            &crt_path,
            "names no host: it has no DNS subject alternative name".into(),
        ));
    }

    let private = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|e| at(&key_path, format!("not a PEM private key ({e})")))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, private, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            at(&key_path, format!("is not the key of {}", crt_path.display()))
        }
        other => at(&key_path, format!("cannot be used ({other})")),
    })?;
    Ok(Some(Pair {
        key: Arc::new(certified),
        hosts,
        not_after,
        digest,
    }))
}
