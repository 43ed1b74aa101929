//! Fixed-capacity caches that know no guest type: an LRU ([`Lru`]), a sharded,
//! lock-protected wrapper that lets many vCPUs use one ([`ShardedLru`], the page cache),
//! and [`Tlb`], a set-associative translation cache whose lookups take no lock (the
//! translation cache, read on every access, by every vCPU).
//!
//! This module holds what they share: the key trait, the hash and the counters.
//!
//! Layer: may import only `addr`, `access` and `error` (and imports none of them today).

use core::fmt;

mod lru;
mod sharded;
mod tlb;

pub use self::lru::Lru;
pub use self::sharded::ShardedLru;
pub use self::tlb::Tlb;

/// A key of a fixed-capacity cache: copyable, comparable, and hashable to 64 bits.
///
/// The hash need not be strong; [`Lru`] mixes it again before use.
pub trait CacheKey: Copy + Eq {
    /// A 64-bit hash of the key.
    fn hash64(&self) -> u64;
}

impl CacheKey for u64 {
    #[inline]
    fn hash64(&self) -> u64 {
        *self
    }
}

/// The splitmix64 finaliser: a cheap, well-distributed 64-bit mix.
#[inline]
pub(crate) const fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hit, miss and eviction counters of a cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CacheMetrics {
    /// Lookups that found their key.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Entries removed to make room for new ones (not counting explicit flushes).
    pub evictions: u64,
    /// Entries held now.
    pub len: usize,
    /// The effective capacity.
    pub capacity: usize,
}

impl CacheMetrics {
    /// Adds another cache's counters to these (for sharded caches).
    pub fn merge(&mut self, other: &CacheMetrics) {
        self.hits = self.hits.saturating_add(other.hits);
        self.misses = self.misses.saturating_add(other.misses);
        self.evictions = self.evictions.saturating_add(other.evictions);
        self.len = self.len.saturating_add(other.len);
        self.capacity = self.capacity.saturating_add(other.capacity);
    }
}

impl fmt::Display for CacheMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} hits, {} misses, {} evictions, {}/{} entries",
            self.hits, self.misses, self.evictions, self.len, self.capacity
        )
    }
}
