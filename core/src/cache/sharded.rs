//! [`ShardedLru`]: [`Lru`] shards behind spin locks, for many vCPUs at once.

use super::{CacheKey, CacheMetrics, Lru, mix64};

/// `S` independent [`Lru`] shards of `N` entries each, each behind its own spin lock,
/// chosen by the key's hash. vCPUs working on different pages rarely meet on one lock.
///
/// All methods take `&self`; the type is `Sync` when `K` and `V` are `Send`.
pub struct ShardedLru<K, V, const S: usize, const N: usize> {
    shards: [spin::Mutex<Lru<K, V, N>>; S],
}

impl<K: CacheKey, V, const S: usize, const N: usize> Default for ShardedLru<K, V, S, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: CacheKey, V, const S: usize, const N: usize> ShardedLru<K, V, S, N> {
    /// The total compile-time capacity, `S * N`.
    pub const CAPACITY: usize = S * N;

    /// An empty cache.
    pub const fn new() -> Self {
        Self {
            shards: [const { spin::Mutex::new(Lru::new()) }; S],
        }
    }

    #[inline]
    fn shard(&self, key: &K) -> Option<&spin::Mutex<Lru<K, V, N>>> {
        // The top bits of the mix choose the shard; Lru uses the whole mix for buckets.
        let h = mix64(key.hash64() ^ 0x5bd1_e995);
        self.shards.get((h % S as u64) as usize)
    }

    /// Runs `f` on the value of `key` (promoting it) while its shard is locked. O(1).
    #[inline]
    pub fn with<R>(&self, key: &K, f: impl FnOnce(&V) -> R) -> Option<R> {
        let mut shard = self.shard(key)?.lock();
        shard.get(key).map(f)
    }

    /// Copies out the value of `key` if `valid` accepts it, as [`Lru::get_if`]. O(1).
    #[inline]
    pub fn get_if(&self, key: &K, valid: impl FnOnce(&V) -> bool) -> Option<V>
    where
        V: Copy,
    {
        let mut shard = self.shard(key)?.lock();
        shard.get_if(key, valid).copied()
    }

    /// Inserts or replaces `key`; returns what made room, as [`Lru::insert`]. O(1).
    pub fn insert(&self, key: K, value: V) -> Option<(K, V)> {
        match self.shard(&key) {
            Some(shard) => shard.lock().insert(key, value),
            None => Some((key, value)),
        }
    }

    /// Removes `key`. O(1).
    pub fn remove(&self, key: &K) -> Option<V> {
        self.shard(key)?.lock().remove(key)
    }

    /// Removes every entry. O(S * N).
    pub fn clear(&self) {
        for shard in &self.shards {
            shard.lock().clear();
        }
    }

    /// Sets the total effective capacity (clamped to `S * N`), spread evenly over the
    /// shards. O(S + evicted entries).
    pub fn set_capacity(&self, capacity: usize) {
        let capacity = capacity.min(Self::CAPACITY);
        let base = capacity / S;
        let extra = capacity % S;
        for (i, shard) in self.shards.iter().enumerate() {
            shard.lock().set_capacity(base + usize::from(i < extra));
        }
    }

    /// The counters of all shards added up. O(S).
    pub fn metrics(&self) -> CacheMetrics {
        let mut total = CacheMetrics::default();
        for shard in &self.shards {
            total.merge(&shard.lock().metrics());
        }
        total
    }

    /// Resets every shard's counters. O(S).
    pub fn reset_metrics(&self) {
        for shard in &self.shards {
            shard.lock().reset_metrics();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_capacity_is_spread() {
        let cache: ShardedLru<u64, u64, 4, 8> = ShardedLru::new();
        for k in 0..100 {
            cache.insert(k, k);
        }
        assert!(cache.metrics().len <= 32);
        cache.set_capacity(6);
        let m = cache.metrics();
        assert_eq!(m.capacity, 6);
        assert!(m.len <= 6);
        assert_eq!(cache.with(&1000, |v| *v), None);
        cache.insert(1000, 7);
        assert_eq!(cache.with(&1000, |v| *v), Some(7));
    }
}
