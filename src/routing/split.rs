//! The weighted split: a sticky key hashed into one of [`BUCKETS`] buckets.
//!
//! xxh3 with a per-tenant seed: fast, well distributed, and deterministic
//! across processes and restarts, so every fledge instance puts a session in
//! the same bucket. The seed differs per tenant so that the same unlucky
//! clients are not every tenant's first canary users.

use std::net::IpAddr;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::BUCKETS;

/// Bucket of a sticky key.
pub(super) fn bucket(seed: u64, key: &[u8]) -> u16 {
    // Modulo bias of 2^64 mod 10 000 is below 1e-15: irrelevant.
    (xxh3_64_with_seed(key, seed) % u64::from(BUCKETS)) as u16
}

/// Bucket of a client address (bucket 0 when unknown, e.g. a Unix socket).
pub(super) fn bucket_for_ip(seed: u64, ip: Option<IpAddr>) -> u16 {
    match ip {
        Some(IpAddr::V4(v4)) => bucket(seed, &v4.octets()),
        Some(IpAddr::V6(v6)) => bucket(seed, &v6.octets()),
        None => 0,
    }
}
