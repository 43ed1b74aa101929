//! [`Lru`], a fixed-capacity least-recently-used map.
//!
//! [`Lru`] keeps its entries in an array of `N` slots, indexes them through a chained hash
//! table of `N` buckets, and orders them in an intrusive doubly linked list (most recently
//! used at the head). Lookup, insertion, promotion and eviction are O(1) (expected, for
//! the hash chains), and nothing is ever allocated: the whole structure lives where the
//! `Lru` does.
//!
//! The eviction policy is written out in [`Lru::insert`]: when the number of entries has
//! reached the effective capacity, the least recently used entry (the list's tail) is
//! removed and handed back to the caller.

use super::{CacheKey, CacheMetrics, mix64};

const NIL: u32 = u32::MAX;

struct Slot<K, V> {
    key: K,
    value: V,
    /// Towards the head (more recently used).
    prev: u32,
    /// Towards the tail (less recently used).
    next: u32,
    /// The next slot in the same hash bucket.
    chain: u32,
}

/// A fixed-capacity least-recently-used map of `N` entries at most.
///
/// Capacity is the last const generic, as in `heapless`; `N = 0` is a cache that holds
/// nothing. The effective capacity can be lowered (and raised again, up to `N`) at run
/// time with [`Lru::set_capacity`].
///
/// ```
/// use introvisor::cache::Lru;
///
/// let mut lru: Lru<u64, &str, 2> = Lru::new();
/// assert_eq!(lru.insert(1, "one"), None);
/// assert_eq!(lru.insert(2, "two"), None);
/// assert_eq!(lru.get(&1), Some(&"one")); // 1 is now the most recent
/// assert_eq!(lru.insert(3, "three"), Some((2, "two"))); // 2 was the least recent
/// assert_eq!(lru.metrics().evictions, 1);
/// ```
pub struct Lru<K, V, const N: usize> {
    slots: [Option<Slot<K, V>>; N],
    buckets: [u32; N],
    head: u32,
    tail: u32,
    /// Free slot indices, a stack: `free[..free_top]`.
    free_top: u32,
    free: [u32; N],
    len: u32,
    capacity: u32,
    hits: u64,
    misses: u64,
    evictions: u64,
}

impl<K: CacheKey, V, const N: usize> Default for Lru<K, V, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: CacheKey, V, const N: usize> Lru<K, V, N> {
    /// The compile-time capacity.
    pub const CAPACITY: usize = N;

    const CHECK: () = assert!(N < u32::MAX as usize, "capacity must be below u32::MAX");

    /// An empty cache with effective capacity `N`. O(N), and `const`: it can initialise
    /// a `static`.
    #[expect(
        clippy::indexing_slicing,
        reason = "const fn: `i < N` bounds the index, and slice::get_mut is not const"
    )]
    pub const fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::CHECK;
        let mut free = [0u32; N];
        let mut i = 0;
        while i < N {
            // The stack pops from the top: slot 0 comes out first.
            // `i < N`: neither the difference nor the increment wraps.
            free[i] = N.wrapping_sub(1).wrapping_sub(i) as u32;
            i = i.wrapping_add(1);
        }
        Self {
            slots: [const { None }; N],
            buckets: [NIL; N],
            head: NIL,
            tail: NIL,
            free_top: N as u32,
            free,
            len: 0,
            capacity: N as u32,
            hits: 0,
            misses: 0,
            evictions: 0,
        }
    }

    /// The number of entries. O(1).
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the cache is empty. O(1).
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The effective capacity. O(1).
    pub const fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Sets the effective capacity, clamped to `0..=N`, evicting least recently used
    /// entries until the cache fits. O(evicted entries).
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.min(N) as u32;
        while self.len > self.capacity {
            if self.pop_lru().is_none() {
                break;
            }
            self.evictions = self.evictions.saturating_add(1);
        }
    }

    /// The counters. O(1).
    pub fn metrics(&self) -> CacheMetrics {
        CacheMetrics {
            hits: self.hits,
            misses: self.misses,
            evictions: self.evictions,
            len: self.len(),
            capacity: self.capacity(),
        }
    }

    /// Resets the counters to zero. O(1).
    pub fn reset_metrics(&mut self) {
        self.hits = 0;
        self.misses = 0;
        self.evictions = 0;
    }

    #[inline]
    fn bucket_of(key: &K) -> usize {
        // Lemire's multiply-shift range reduction of a well-mixed hash: always < N.
        // A 64-bit hash times a count below 2^64 fits in 128 bits.
        (u128::from(mix64(key.hash64())).wrapping_mul(N as u128) >> 64) as usize
    }

    #[inline]
    fn slot(&self, index: u32) -> Option<&Slot<K, V>> {
        self.slots.get(index as usize).and_then(Option::as_ref)
    }

    #[inline]
    fn slot_mut(&mut self, index: u32) -> Option<&mut Slot<K, V>> {
        self.slots.get_mut(index as usize).and_then(Option::as_mut)
    }

    #[inline]
    fn find(&self, key: &K) -> Option<u32> {
        let mut index = *self.buckets.get(Self::bucket_of(key))?;
        while index != NIL {
            let slot = self.slot(index)?;
            if slot.key == *key {
                return Some(index);
            }
            index = slot.chain;
        }
        None
    }

    fn unlink_list(&mut self, index: u32) {
        let (prev, next) = match self.slot(index) {
            Some(s) => (s.prev, s.next),
            None => return,
        };
        match self.slot_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slot_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    fn push_front(&mut self, index: u32) {
        let old_head = self.head;
        if let Some(s) = self.slot_mut(index) {
            s.prev = NIL;
            s.next = old_head;
        }
        match self.slot_mut(old_head) {
            Some(h) => h.prev = index,
            None => self.tail = index,
        }
        self.head = index;
    }

    fn unlink_chain(&mut self, index: u32, bucket: usize) {
        let Some(&first) = self.buckets.get(bucket) else {
            return;
        };
        let next_of_removed = self.slot(index).map_or(NIL, |s| s.chain);
        if first == index {
            if let Some(b) = self.buckets.get_mut(bucket) {
                *b = next_of_removed;
            }
            return;
        }
        let mut cursor = first;
        while cursor != NIL {
            let Some(slot) = self.slot_mut(cursor) else {
                return;
            };
            if slot.chain == index {
                slot.chain = next_of_removed;
                return;
            }
            cursor = slot.chain;
        }
    }

    /// Removes the slot at `index` from every structure and returns its contents.
    fn take(&mut self, index: u32) -> Option<(K, V)> {
        let bucket = Self::bucket_of(&self.slot(index)?.key);
        self.unlink_chain(index, bucket);
        self.unlink_list(index);
        let slot = self.slots.get_mut(index as usize)?.take()?;
        if let Some(f) = self.free.get_mut(self.free_top as usize) {
            *f = index;
            // Below N: the slot at `free_top` exists.
            self.free_top = self.free_top.saturating_add(1);
        }
        // The slot was taken: `len` counts it.
        self.len = self.len.saturating_sub(1);
        Some((slot.key, slot.value))
    }

    fn pop_lru(&mut self) -> Option<(K, V)> {
        if self.tail == NIL {
            return None;
        }
        self.take(self.tail)
    }

    /// Looks `key` up and marks it most recently used. Counts a hit or a miss. O(1).
    #[inline]
    pub fn get(&mut self, key: &K) -> Option<&V> {
        match self.find(key) {
            Some(index) => {
                self.hits = self.hits.wrapping_add(1);
                if self.head != index {
                    self.unlink_list(index);
                    self.push_front(index);
                }
                self.slot(index).map(|s| &s.value)
            }
            None => {
                self.misses = self.misses.wrapping_add(1);
                None
            }
        }
    }

    /// Looks `key` up; counts a hit and promotes it only if `valid` accepts the value.
    /// An entry `valid` rejects is removed and counted as a miss. O(1).
    #[inline]
    pub fn get_if(&mut self, key: &K, valid: impl FnOnce(&V) -> bool) -> Option<&V> {
        let Some(index) = self.find(key) else {
            self.misses = self.misses.wrapping_add(1);
            return None;
        };
        if !self.slot(index).is_some_and(|s| valid(&s.value)) {
            self.misses = self.misses.wrapping_add(1);
            self.take(index);
            return None;
        }
        self.hits = self.hits.wrapping_add(1);
        if self.head != index {
            self.unlink_list(index);
            self.push_front(index);
        }
        self.slot(index).map(|s| &s.value)
    }

    /// Looks `key` up without changing the order or the counters. O(1).
    pub fn peek(&self, key: &K) -> Option<&V> {
        self.find(key).and_then(|i| self.slot(i)).map(|s| &s.value)
    }

    /// Whether `key` is present. O(1); changes nothing.
    pub fn contains(&self, key: &K) -> bool {
        self.find(key).is_some()
    }

    /// Inserts or replaces `key`, making it the most recently used. O(1).
    ///
    /// Returns the entry that made room: the replaced one (same key, old value) or the
    /// least recently used one when the cache was at its effective capacity. With an
    /// effective capacity of zero nothing is stored and the new entry is handed back.
    pub fn insert(&mut self, key: K, value: V) -> Option<(K, V)> {
        if let Some(index) = self.find(&key) {
            if self.head != index {
                self.unlink_list(index);
                self.push_front(index);
            }
            let slot = self.slot_mut(index)?;
            let old = core::mem::replace(&mut slot.value, value);
            return Some((key, old));
        }
        if self.capacity == 0 {
            return Some((key, value));
        }
        let mut evicted = None;
        if self.len >= self.capacity {
            evicted = self.pop_lru();
            if evicted.is_some() {
                self.evictions = self.evictions.wrapping_add(1);
            }
        }
        if self.free_top == 0 {
            // Unreachable while len <= capacity <= N; hand the entry back rather than panic.
            return Some((key, value));
        }
        // Not zero: checked above.
        self.free_top = self.free_top.saturating_sub(1);
        let Some(&index) = self.free.get(self.free_top as usize) else {
            return Some((key, value));
        };
        let bucket = Self::bucket_of(&key);
        let chain = self.buckets.get(bucket).copied().unwrap_or(NIL);
        if let Some(s) = self.slots.get_mut(index as usize) {
            *s = Some(Slot {
                key,
                value,
                prev: NIL,
                next: NIL,
                chain,
            });
        }
        if let Some(b) = self.buckets.get_mut(bucket) {
            *b = index;
        }
        self.push_front(index);
        // At most N entries: a free slot was found.
        self.len = self.len.saturating_add(1);
        evicted
    }

    /// Removes `key`, returning its value. O(1).
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let index = self.find(key)?;
        self.take(index).map(|(_, v)| v)
    }

    /// Removes every entry; the counters are kept. O(N).
    pub fn clear(&mut self) {
        while self.pop_lru().is_some() {}
    }

    /// Iterates from the most to the least recently used entry. O(1) per item.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        let mut cursor = self.head;
        core::iter::from_fn(move || {
            let slot = self.slot(cursor)?;
            cursor = slot.next;
            Some((&slot.key, &slot.value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recent_and_reports_it() {
        let mut lru: Lru<u64, u64, 4> = Lru::new();
        for k in 0..4 {
            assert_eq!(lru.insert(k, k * 10), None);
        }
        assert_eq!(lru.get(&0), Some(&0));
        assert_eq!(lru.insert(4, 40), Some((1, 10)));
        assert_eq!(lru.insert(5, 50), Some((2, 20)));
        assert!(lru.contains(&0) && lru.contains(&3) && lru.contains(&4));
        let order: [u64; 4] = {
            let mut o = [0; 4];
            for (slot, (k, _)) in o.iter_mut().zip(lru.iter()) {
                *slot = *k;
            }
            o
        };
        assert_eq!(order, [5, 4, 0, 3]);
        let m = lru.metrics();
        assert_eq!((m.hits, m.misses, m.evictions, m.len), (1, 0, 2, 4));
    }

    #[test]
    fn replace_remove_and_capacity() {
        let mut lru: Lru<u64, u64, 8> = Lru::new();
        for k in 0..8 {
            lru.insert(k, k);
        }
        assert_eq!(lru.insert(3, 33), Some((3, 3)));
        assert_eq!(lru.remove(&3), Some(33));
        assert_eq!(lru.remove(&3), None);
        assert_eq!(lru.len(), 7);
        lru.set_capacity(2);
        assert_eq!(lru.len(), 2);
        // The two most recent survive: 7 and 6 (3 was removed).
        assert!(lru.contains(&7) && lru.contains(&6));
        lru.set_capacity(100);
        assert_eq!(lru.capacity(), 8);
        lru.set_capacity(0);
        assert_eq!(lru.insert(1, 1), Some((1, 1)));
        assert!(lru.is_empty());
    }

    #[test]
    fn capacity_zero_holds_nothing() {
        let mut lru: Lru<u64, u64, 0> = Lru::new();
        assert_eq!(lru.insert(1, 10), Some((1, 10)));
        assert_eq!(lru.get(&1), None);
        assert_eq!((lru.len(), lru.capacity()), (0, 0));
        assert_eq!(lru.remove(&1), None);
        lru.set_capacity(5);
        assert_eq!(lru.insert(2, 20), Some((2, 20)));
        assert_eq!(lru.metrics().misses, 1);
    }

    #[test]
    fn model_check_against_naive_lru() {
        // A naive LRU as a vector ordered by recency, driven by a fixed pseudo-random trace.
        let mut lru: Lru<u64, u64, 16> = Lru::new();
        let mut model: [(u64, u64); 16] = [(0, 0); 16];
        let mut model_len = 0usize;
        let mut x = 0x1234_5678_u64;
        let steps = if cfg!(miri) { 2_000u64 } else { 20_000 };
        for step in 0..steps {
            x = mix64(x.wrapping_add(step));
            let key = x % 40;
            match x >> 62 {
                0 | 1 => {
                    let got = lru.get(&key).copied();
                    let pos = model[..model_len].iter().position(|e| e.0 == key);
                    assert_eq!(got, pos.map(|p| model[p].1));
                    if let Some(p) = pos {
                        let e = model[p];
                        model.copy_within(0..p, 1);
                        model[0] = e;
                    }
                }
                2 => {
                    let got = lru.insert(key, step);
                    let pos = model[..model_len].iter().position(|e| e.0 == key);
                    let expect = match pos {
                        Some(p) => {
                            let old = model[p];
                            model.copy_within(0..p, 1);
                            model[0] = (key, step);
                            Some(old)
                        }
                        None => {
                            let ev = if model_len == 16 {
                                Some(model[15])
                            } else {
                                model_len += 1;
                                None
                            };
                            model.copy_within(0..model_len - 1, 1);
                            model[0] = (key, step);
                            ev
                        }
                    };
                    assert_eq!(got, expect);
                }
                _ => {
                    let got = lru.remove(&key);
                    let pos = model[..model_len].iter().position(|e| e.0 == key);
                    assert_eq!(got, pos.map(|p| model[p].1));
                    if let Some(p) = pos {
                        model.copy_within(p + 1..model_len, p);
                        model_len -= 1;
                    }
                }
            }
            assert_eq!(lru.len(), model_len);
        }
    }
}
