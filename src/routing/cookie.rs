//! fledge's two cookies, signed so that a client cannot pick its version.
//!
//! * `fledge_version=<s|c>.<bucket>.<epoch>.<issued>.<mac>`: the version a
//!   client was given while a canary is active, the bucket it was given it
//!   for, the canary's epoch (a hash of tenant, canary pool and the
//!   rollout's generation, which a rollback and a resume move on: a new
//!   release, or the same one re-armed, starts afresh) and when it was
//!   issued (Unix seconds). Past `cookies.max_age_seconds` it is refused,
//!   whatever the browser keeps: a cookie copied to other clients puts them
//!   on the canary for that long at most, and only until the next rollback.
//! * `fledge_bucket=<bucket>.<mac>`: the client's bucket when its sticky key
//!   was only its address.
//!
//! The MAC is SipHash-2-4, a keyed PRF made for short inputs, under a
//! 128-bit key. It costs tens of nanoseconds, against several hundred for
//! HMAC-SHA256, and verifying a cookie is on every request. Values are ASCII
//! digits and hex only, so they need no quoting.

use std::hash::Hasher;

use http::header::COOKIE;
use siphasher::sip::SipHasher24;

use super::{Version, BUCKETS};

/// Name of the version cookie.
pub const VERSION_COOKIE: &str = "fledge_version";
/// Name of the bucket cookie.
pub const BUCKET_COOKIE: &str = "fledge_bucket";

/// How far in the future an issue time may be: replicas' clocks differ by
/// less (NTP keeps them within milliseconds; five minutes is what Kerberos
/// allows).
const CLOCK_SKEW_SECONDS: u32 = 300;

/// Now, in Unix seconds (`u32` lasts until 2106).
pub fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

/// Secret key for fledge's cookies.
#[derive(Clone)]
pub struct CookieKey {
    k0: u64,
    k1: u64,
}

/// A verified version cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pin {
    pub(super) version: Version,
    pub(super) bucket: u16,
}

/// The cookies routing cares about, borrowed from the request.
#[derive(Debug, Default)]
pub(super) struct Cookies<'a> {
    pub(super) sticky: Option<&'a [u8]>,
    pub(super) version: Option<&'a [u8]>,
    pub(super) bucket: Option<&'a [u8]>,
}

// === impl CookieKey ===

impl CookieKey {
    /// A key drawn from the OS random source.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        // getrandom fails only where the OS has no entropy source at all.
        getrandom::getrandom(&mut bytes).expect("the OS random source is available");
        Self::from_bytes(bytes)
    }

    /// A key derived from an operator's secret (any length; it should hold
    /// at least 128 bits of entropy). Instances sharing the secret accept
    /// each other's cookies.
    pub fn from_secret(secret: &[u8]) -> Self {
        // Two domain-separated SipHash outputs of the secret under a fixed key.
        let derive = |domain: u8| {
            let mut h = SipHasher24::new_with_keys(0x6665_646c_6765_2d6b, 0x6579_2d64_6572_6976);
            h.write_u8(domain);
            h.write(secret);
            h.finish()
        };
        CookieKey {
            k0: derive(0),
            k1: derive(1),
        }
    }

    fn from_bytes(b: [u8; 16]) -> Self {
        let (lo, hi) = b.split_at(8);
        CookieKey {
            k0: u64::from_le_bytes(lo.try_into().expect("8 bytes")),
            k1: u64::from_le_bytes(hi.try_into().expect("8 bytes")),
        }
    }

    /// A fingerprint of the key, safe to share: replicas of a fleet compare
    /// it (in Redis) to find one that signs with another key. A MAC of a
    /// fixed message under the key tells nothing of the key itself.
    pub fn fingerprint(&self) -> String {
        format!("{:016x}", self.mac(b'f', 0, 0x666c_6565_742d_6670))
    }

    fn mac(&self, kind: u8, bucket: u16, context: u64) -> u64 {
        let mut h = SipHasher24::new_with_keys(self.k0, self.k1);
        h.write_u8(kind);
        h.write_u16(bucket);
        h.write_u64(context);
        h.finish()
    }

    /// A version cookie's MAC: the epoch and the issue time are both in it.
    fn version_mac(&self, kind: u8, bucket: u16, epoch: u32, issued: u32) -> u64 {
        self.mac(kind, bucket, u64::from(epoch) << 32 | u64::from(issued))
    }

    /// Value of a version cookie issued at `issued` (Unix seconds;
    /// allocates: only on responses that set it).
    pub fn version_cookie(&self, version: Version, bucket: u16, epoch: u32, issued: u32) -> String {
        let v = version_char(version);
        let mac = self.version_mac(v, bucket, epoch, issued);
        format!("{}.{bucket}.{epoch:08x}.{issued:08x}.{mac:016x}", v as char)
    }

    /// Value of a bucket cookie (allocates: only on responses that set it).
    pub fn bucket_cookie(&self, bucket: u16, seed: u64) -> String {
        let mac = self.mac(b'b', bucket, seed);
        format!("{bucket}.{mac:016x}")
    }

    /// A version cookie of this `epoch`, signed by us, issued no more than
    /// `max_age` seconds before `now` (and not far after it: another
    /// replica's clock may be a little ahead), and not before `since` (the
    /// rollout's start, give or take the same skew).
    pub(super) fn verify_version(
        &self,
        value: &[u8],
        epoch: u32,
        (now, since): (u32, u32),
        max_age: u32,
    ) -> Option<Pin> {
        let mut parts = value.split(|&b| b == b'.');
        let v = match parts.next()? {
            b"s" => Version::Stable,
            b"c" => Version::Canary,
            _ => return None,
        };
        let bucket = parse_bucket(parts.next()?)?;
        let their_epoch = parse_hex(parts.next()?, 8)?;
        let issued = parse_hex(parts.next()?, 8)? as u32;
        let mac = parse_hex(parts.next()?, 16)?;
        if parts.next().is_some() || their_epoch != u64::from(epoch) {
            return None;
        }
        let fresh = issued <= now.saturating_add(CLOCK_SKEW_SECONDS)
            && now.saturating_sub(issued) <= max_age
            && issued.saturating_add(CLOCK_SKEW_SECONDS) >= since;
        (fresh && self.version_mac(version_char(v), bucket, epoch, issued) == mac)
            .then_some(Pin { version: v, bucket })
    }

    pub(super) fn verify_bucket(&self, value: &[u8], seed: u64) -> Option<u16> {
        let dot = value.iter().position(|&b| b == b'.')?;
        let bucket = parse_bucket(&value[..dot])?;
        let mac = parse_hex(&value[dot + 1..], 16)?;
        (self.mac(b'b', bucket, seed) == mac).then_some(bucket)
    }
}

impl std::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieKey(..)")
    }
}

fn version_char(v: Version) -> u8 {
    match v {
        Version::Stable => b's',
        Version::Canary => b'c',
    }
}

fn parse_bucket(s: &[u8]) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = s.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).ok().filter(|&b| b < BUCKETS)
}

fn parse_hex(s: &[u8], len: usize) -> Option<u64> {
    if s.len() != len {
        return None;
    }
    s.iter().try_fold(0u64, |n, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u64::from(d))
    })
}

/// Find the sticky, version and bucket cookies in every `Cookie` header
/// (HTTP/2 clients may send one header per cookie). First occurrence wins.
pub(super) fn scan<'a, H: super::Fields + ?Sized>(headers: &'a H, sticky_name: &str) -> Cookies<'a> {
    let mut found = Cookies::default();
    let sticky = sticky_name.as_bytes();
    headers.each_value(&COOKIE, |value| {
        let mut rest = value;
        while !rest.is_empty() {
            let end = memchr::memchr(b';', rest).unwrap_or(rest.len());
            let pair = rest[..end].trim_ascii_start();
            rest = rest.get(end + 1..).unwrap_or_default();
            let Some(eq) = memchr::memchr(b'=', pair) else {
                continue;
            };
            let (name, value) = (&pair[..eq], pair[eq + 1..].trim_ascii_end());
            let slot = if name == sticky {
                &mut found.sticky
            } else if name.starts_with(b"fledge_") {
                match &name[7..] {
                    b"version" => &mut found.version,
                    b"bucket" => &mut found.bucket,
                    _ => continue,
                }
            } else {
                continue;
            };
            if slot.is_none() && !value.is_empty() {
                *slot = Some(value);
            }
        }
    });
    found
}
