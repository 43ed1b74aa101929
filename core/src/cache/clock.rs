//! [`ClockCache`]: a set-associative cache of `N` entries, one lock per entry, for many
//! vCPUs at once.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::{CacheKey, CacheMetrics, Counters, mix64};

/// How a waiting thread spins on an entry's lock.
///
/// Under `std` the waiter yields to the operating system's scheduler
/// ([`spin::relax::Yield`]): on a host, the holder may be a preempted thread, and a waiter
/// that only spins would burn its time slice waiting for a thread that cannot run. Without
/// `std` the waiter spins ([`spin::relax::Spin`]): in a hypervisor or firmware the holder is
/// another CPU running with preemption off (a VM-exit handler), which holds the lock for one
/// page copy at most, so spinning ends within that copy.
#[cfg(feature = "std")]
type Relax = spin::relax::Yield;
#[cfg(not(feature = "std"))]
type Relax = spin::relax::Spin;

type Lock<T> = spin::mutex::SpinMutex<T, Relax>;

/// One slot of a [`ClockCache`]: an entry or none, behind its own lock.
type Slot<K, V> = Lock<Option<Entry<K, V>>>;

struct Entry<K, V> {
    key: K,
    value: V,
    /// Set by a hit, cleared by a sweep that passes over the entry (second chance).
    referenced: bool,
}

/// A fixed-capacity cache of `N` entries in sets of [`ClockCache::WAYS`], each entry behind
/// its own spin lock: vCPUs working on different keys rarely meet on one lock, and nothing
/// is allocated. The page cache of [`VmiCore`](crate::VmiCore).
///
/// A key's hash chooses its set (the last set holds the rest when `N` is not a multiple of
/// `WAYS`). Eviction, within the set: an empty slot, else the first entry not used since
/// the last sweep passed it, sweeping from a slot the key's hash chooses and giving each
/// used entry a second chance (CLOCK, an approximation of least-recently-used). `N = 0` is
/// valid: a cache that holds nothing.
///
/// Two threads that insert one key at once may both store it; a lookup then finds either
/// copy and [`ClockCache::remove`] drops both. Lookups, insertions and removals take one
/// lock at a time, so none can deadlock. All methods take `&self`; the type is `Sync` when
/// `K` and `V` are `Send`.
///
/// ```
/// use introvisor::cache::ClockCache;
///
/// static CACHE: ClockCache<u64, &str, 8> = ClockCache::new();
/// assert_eq!(CACHE.insert(1, "one"), None);
/// assert_eq!(CACHE.with(&1, |v| *v), Some("one"));
/// assert_eq!(CACHE.remove(&1), Some("one"));
/// assert_eq!(CACHE.with(&1, |v| *v), None);
/// let m = CACHE.metrics();
/// assert_eq!((m.hits, m.misses, m.len, m.capacity), (1, 1, 0, 8));
/// ```
pub struct ClockCache<K, V, const N: usize> {
    slots: [Slot<K, V>; N],
    /// The sets in use: the effective capacity in whole sets.
    sets_in_use: AtomicUsize,
    /// Moved on by each [`ClockCache::set_capacity`], before it empties the slots: an
    /// insertion that chose its set under an older epoch stores nothing.
    epoch: AtomicU64,
    counters: Counters,
}

impl<K: CacheKey, V, const N: usize> Default for ClockCache<K, V, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: CacheKey, V, const N: usize> ClockCache<K, V, N> {
    /// The compile-time capacity, `N`.
    pub const CAPACITY: usize = N;
    /// Entries per set (the last set may have fewer).
    pub const WAYS: usize = 4;
    const SETS: usize = N.div_ceil(Self::WAYS);

    /// An empty cache at full capacity. `const`: it can initialise a `static`.
    pub const fn new() -> Self {
        Self {
            slots: [const { Lock::new(None) }; N],
            sets_in_use: AtomicUsize::new(Self::SETS),
            epoch: AtomicU64::new(0),
            counters: Counters::new(),
        }
    }

    /// The set of `key` (its slots) and where its sweep starts, or `None` at capacity 0.
    #[inline]
    fn set_of(&self, key: &K) -> Option<(&[Slot<K, V>], usize)> {
        let sets = self.sets_in_use.load(Ordering::Acquire);
        if sets == 0 {
            return None;
        }
        let h = mix64(key.hash64() ^ 0x5bd1_e995);
        // Lemire's multiply-shift reduction of a well-mixed hash: always < sets.
        // A 64-bit hash times a set count below 2^64 fits in 128 bits.
        let index = (u128::from(h).wrapping_mul(sets as u128) >> 64) as usize;
        let start = index.checked_mul(Self::WAYS)?;
        let end = start.saturating_add(Self::WAYS).min(N);
        let set = self.slots.get(start..end)?;
        let sweep = (h as usize).checked_rem(set.len()).unwrap_or(0);
        Some((set, sweep))
    }

    /// Runs `f` on the value of `key` (marking it used) while its slot is locked; counts a
    /// hit or a miss. O(WAYS).
    #[inline]
    pub fn with<R>(&self, key: &K, f: impl FnOnce(&V) -> R) -> Option<R> {
        let (set, _) = self.set_of(key)?;
        for lock in set {
            let mut slot = lock.lock();
            if let Some(entry) = slot.as_mut()
                && entry.key == *key
            {
                entry.referenced = true;
                self.counters.record(true);
                return Some(f(&entry.value));
            }
        }
        self.counters.record(false);
        None
    }

    /// Inserts or replaces `key`. O(WAYS).
    ///
    /// Returns the entry that made room: the replaced one (same key, old value) or the one
    /// evicted from the set. At capacity 0, or when a resize ran meanwhile, nothing is
    /// stored and the new entry is handed back.
    pub fn insert(&self, key: K, value: V) -> Option<(K, V)> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let Some((set, sweep)) = self.set_of(&key) else {
            return Some((key, value));
        };
        let mut value = value;
        let mut empty = None;
        for (i, lock) in set.iter().enumerate() {
            let mut slot = lock.lock();
            match slot.as_mut() {
                Some(entry) if entry.key == key => {
                    entry.referenced = true;
                    value = core::mem::replace(&mut entry.value, value);
                    return Some((key, value));
                }
                None if empty.is_none() => empty = Some(i),
                _ => {}
            }
        }
        // An empty slot if one is still empty, else a sweep: at most two passes, since the
        // first clears every mark it passes.
        let candidates = empty.into_iter().chain(
            (0..set.len().saturating_mul(2))
                .map(|i| sweep.wrapping_add(i).checked_rem(set.len()).unwrap_or(0)),
        );
        let mut fallback = None;
        for i in candidates {
            let Some(lock) = set.get(i) else { continue };
            let mut slot = lock.lock();
            if self.epoch.load(Ordering::Acquire) != epoch {
                return Some((key, value));
            }
            match slot.as_mut() {
                Some(entry) if entry.referenced => {
                    entry.referenced = false;
                    fallback = Some(i);
                }
                _ => {
                    let old = slot.replace(Entry {
                        key,
                        value,
                        referenced: false,
                    });
                    if old.is_some() {
                        self.counters.eviction();
                    }
                    return old.map(|e| (e.key, e.value));
                }
            }
        }
        // Every entry was marked again by racing hits during both passes: evict the last
        // one swept rather than loop.
        let lock = fallback.and_then(|i| set.get(i));
        let Some(lock) = lock else {
            return Some((key, value));
        };
        let mut slot = lock.lock();
        if self.epoch.load(Ordering::Acquire) != epoch {
            return Some((key, value));
        }
        let old = slot.replace(Entry {
            key,
            value,
            referenced: false,
        });
        if old.is_some() {
            self.counters.eviction();
        }
        old.map(|e| (e.key, e.value))
    }

    /// Removes `key` (every copy of it), returning a value it held. O(WAYS).
    pub fn remove(&self, key: &K) -> Option<V> {
        let (set, _) = self.set_of(key)?;
        let mut removed = None;
        for lock in set {
            let mut slot = lock.lock();
            if slot.as_ref().is_some_and(|e| e.key == *key) {
                removed = slot.take().map(|e| e.value);
            }
        }
        removed
    }

    /// Removes every entry; the counters are kept. O(N).
    pub fn clear(&self) {
        for lock in &self.slots {
            *lock.lock() = None;
        }
    }

    /// Sets the effective capacity: `capacity` rounded down to whole sets (at least one
    /// set unless `capacity` is zero), at most `N`. Empties the cache. O(N).
    pub fn set_capacity(&self, capacity: usize) {
        let sets = if capacity == 0 {
            0
        } else if capacity >= N {
            Self::SETS
        } else {
            (capacity / Self::WAYS).clamp(1, Self::SETS)
        };
        self.sets_in_use.store(sets, Ordering::Release);
        // After the new set count, before the slots empty: an insertion that read the old
        // epoch either sees the new one under its slot's lock and stores nothing, or
        // stores before this thread takes that lock, and the entry is cleared below.
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.clear();
    }

    /// The effective capacity. O(1).
    pub fn capacity(&self) -> usize {
        self.sets_in_use
            .load(Ordering::Relaxed)
            .saturating_mul(Self::WAYS)
            .min(N)
    }

    /// The counters, and the entries held. O(N).
    pub fn metrics(&self) -> CacheMetrics {
        let mut m = CacheMetrics {
            capacity: self.capacity(),
            ..CacheMetrics::default()
        };
        self.counters.add_to(&mut m);
        m.len = self.slots.iter().filter(|s| s.lock().is_some()).count();
        m
    }

    /// Resets the counters to zero. O(1).
    pub fn reset_metrics(&self) {
        self.counters.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_replaces_evicts_within_capacity() {
        let cache: ClockCache<u64, u64, 16> = ClockCache::new();
        for k in 0..100 {
            cache.insert(k, k * 10);
        }
        let m = cache.metrics();
        assert!(m.len <= 16 && m.len >= 4, "{m:?}");
        assert_eq!(m.evictions, 100 - m.len as u64);
        // The last key inserted is always held.
        assert_eq!(cache.with(&99, |v| *v), Some(990));
        assert_eq!(cache.insert(99, 1), Some((99, 990)));
        assert_eq!(cache.with(&99, |v| *v), Some(1));
        assert_eq!(cache.remove(&99), Some(1));
        assert_eq!(cache.with(&99, |v| *v), None);
    }

    #[test]
    fn a_used_entry_survives_a_sweep() {
        // One set of four: key 0 is used before every insertion, so the sweep passes it.
        let cache: ClockCache<u64, u64, 4> = ClockCache::new();
        cache.insert(0, 0);
        for k in 1..40 {
            assert_eq!(cache.with(&0, |v| *v), Some(0), "key 0 evicted at {k}");
            cache.insert(k, k);
        }
        assert_eq!(cache.metrics().len, 4);
    }

    #[test]
    fn capacity_zero_and_resizes() {
        let none: ClockCache<u64, u64, 0> = ClockCache::new();
        assert_eq!(none.insert(1, 1), Some((1, 1)));
        assert_eq!(none.with(&1, |v| *v), None);
        assert_eq!(none.metrics(), CacheMetrics::default());

        let cache: ClockCache<u64, u64, 10> = ClockCache::new();
        assert_eq!(cache.capacity(), 10);
        for k in 0..10 {
            cache.insert(k, k);
        }
        cache.set_capacity(5);
        let m = cache.metrics();
        assert_eq!((m.len, m.capacity), (0, 4));
        cache.set_capacity(0);
        assert_eq!(cache.insert(3, 3), Some((3, 3)));
        assert_eq!(cache.metrics().len, 0);
        cache.set_capacity(usize::MAX);
        assert_eq!(cache.capacity(), 10);
        cache.insert(3, 3);
        assert_eq!(cache.with(&3, |v| *v), Some(3));
    }

    /// Threads inserting, reading and resizing at once: every value read belongs to its
    /// key, and no entry is left in a set the last resize took out of use.
    #[test]
    fn racing_resizes_leave_no_entry_behind() {
        static CACHE: ClockCache<u64, u64, 16> = ClockCache::new();
        let rounds = if cfg!(miri) { 200u64 } else { 20_000 };
        std::thread::scope(|scope| {
            for t in 0..2u64 {
                scope.spawn(move || {
                    let mut x = t;
                    for i in 0..rounds {
                        x = mix64(x.wrapping_add(i));
                        let key = x % 64;
                        match CACHE.with(&key, |v| *v) {
                            Some(v) => assert_eq!(v, key * 3),
                            None => {
                                CACHE.insert(key, key * 3);
                            }
                        }
                    }
                });
            }
            scope.spawn(|| {
                for i in 0..rounds / 100 {
                    CACHE.set_capacity((i as usize % 5) * 4);
                }
                CACHE.set_capacity(4);
            });
        });
        // An insertion that raced a resize stored nothing outside the sets now in use.
        assert_eq!(CACHE.capacity(), 4);
        let outside = CACHE.slots.iter().skip(4);
        assert!(outside.map(|s| s.lock()).all(|s| s.is_none()));
    }
}
