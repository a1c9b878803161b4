//! Random numbers without a dependency: the standard library's randomly keyed SipHash.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// A random `u64` (not cryptographically strong; for jitter and identifiers).
pub fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}
