//! [`Tlb`]: a set-associative translation cache whose lookups take no lock.

use core::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering, fence};

use super::{CacheMetrics, mix64};

/// Counter stripes of a [`Tlb`]: hits and misses go to the stripe of the calling thread's
/// stack (below), so that vCPUs on different CPUs rarely write the same cache line.
const STRIPES: usize = 8;

/// One stripe of counters, alone on its pair of cache lines (128 bytes: the adjacent-line
/// prefetcher of some CPUs pulls lines in pairs).
#[repr(align(128))]
struct Stripe {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl Stripe {
    const fn new() -> Self {
        Self {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }
}

/// Adds one to a counter with a plain load and store: no locked instruction, so neither
/// a wait for the store buffer to drain (after a page copy, a locked add costs as much as
/// the walk) nor a bus lock. Two threads that share a stripe may, rarely, lose one
/// another's increment: the counters are statistics, exact for a single thread.
#[inline]
fn bump(counter: &AtomicU64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

/// A key word no key can have: the virtual page number of an empty slot.
const EMPTY: u64 = u64::MAX;

/// One way of a [`Tlb`] set, guarded by its own sequence number (a seqlock): odd while a
/// writer holds it, bumped by two for each completed write.
struct TlbSlot {
    seq: AtomicU64,
    root: AtomicU64,
    vpn: AtomicU64,
    value: AtomicU64,
    generation: AtomicU64,
}

impl TlbSlot {
    const fn new() -> Self {
        Self {
            seq: AtomicU64::new(0),
            root: AtomicU64::new(0),
            vpn: AtomicU64::new(EMPTY),
            value: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// A consistent snapshot `(root, vpn, value, generation)`, or `None` while a writer
    /// holds the slot. Reads only: a hit writes nothing to the slot.
    /// The value and generation if the slot holds `(root, vpn)`, read consistently. The
    /// page number is compared first, so a slot holding another key costs two loads.
    #[inline]
    fn lookup(&self, root: u64, vpn: u64) -> Option<(u64, u64)> {
        let before = self.seq.load(Ordering::Acquire);
        if self.vpn.load(Ordering::Relaxed) != vpn || before & 1 != 0 {
            return None;
        }
        let r = self.root.load(Ordering::Relaxed);
        let value = self.value.load(Ordering::Relaxed);
        let generation = self.generation.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let consistent = self.seq.load(Ordering::Relaxed) == before;
        // The page number read before the fence belongs to the same write when the
        // sequence number did not move.
        (consistent && r == root).then_some((value, generation))
    }

    #[inline]
    fn read(&self) -> Option<(u64, u64, u64, u64)> {
        let before = self.seq.load(Ordering::Acquire);
        if before & 1 != 0 {
            return None;
        }
        let snapshot = (
            self.root.load(Ordering::Relaxed),
            self.vpn.load(Ordering::Relaxed),
            self.value.load(Ordering::Relaxed),
            self.generation.load(Ordering::Relaxed),
        );
        // The data loads above happen before the second sequence load.
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == before).then_some(snapshot)
    }

    /// Runs `f` with the slot held for writing, unless another writer holds it (then the
    /// write is skipped: this is a cache). Returns whether `f` ran.
    #[inline]
    fn write(&self, f: impl FnOnce(&Self)) -> bool {
        let seq = self.seq.load(Ordering::Relaxed);
        if seq & 1 != 0
            || self
                .seq
                .compare_exchange(
                    seq,
                    seq.wrapping_add(1),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return false;
        }
        // The odd sequence number is visible before any data store.
        fence(Ordering::Release);
        f(self);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
        true
    }
}

/// A fixed-capacity, set-associative translation cache whose lookups take no lock and
/// write nothing shared: a software TLB for many vCPUs at once.
///
/// Keys are a translation root and a virtual page number; values are one opaque word.
/// Entries carry the cache's generation when they were looked up for: [`Tlb::flush`]
/// moves the generation on, so every older entry misses from then on, in O(1).
///
/// `SETS` sets of `WAYS` slots; a key's hash chooses its set. Each slot is a seqlock over
/// atomics, so a reader sees a whole entry or none (it then counts a miss), and never
/// blocks. Writers that meet on one slot skip their insertion rather than wait.
///
/// Eviction: a new key goes into its set's slot holding the same key, else an empty or
/// stale slot, else the slot the set's round-robin pointer names (the oldest insertion,
/// unless a replacement or removal reused a slot since), which is then counted as an
/// eviction (the pointer moves without a locked instruction, so racing insertions may
/// pick the same victim). Counters are exact for a single thread; with several they
/// spread over stripes chosen by the calling thread's stack address, and an increment is
/// lost only if two threads share a stripe at the same instant.
pub struct Tlb<const SETS: usize, const WAYS: usize> {
    sets: [[TlbSlot; WAYS]; SETS],
    /// The round-robin victim of each set.
    next: [AtomicU8; SETS],
    /// The fingerprint of the last key [`Tlb::offer`] turned away from each set.
    doorkeeper: [AtomicU64; SETS],
    /// The sets in use: the effective capacity divided by `WAYS`.
    sets_in_use: AtomicUsize,
    generation: AtomicU64,
    len: AtomicUsize,
    stripes: [Stripe; STRIPES],
}

impl<const SETS: usize, const WAYS: usize> Default for Tlb<SETS, WAYS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const SETS: usize, const WAYS: usize> Tlb<SETS, WAYS> {
    /// The compile-time capacity, `SETS * WAYS`.
    pub const CAPACITY: usize = SETS * WAYS;

    const CHECK: () = assert!(
        SETS > 0 && WAYS > 0 && WAYS <= 255,
        "a TLB needs at least one set of 1..=255 ways"
    );

    /// An empty cache at full capacity. `const`: it can initialise a `static`.
    pub const fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::CHECK;
        Self {
            sets: [const { [const { TlbSlot::new() }; WAYS] }; SETS],
            next: [const { AtomicU8::new(0) }; SETS],
            doorkeeper: [const { AtomicU64::new(0) }; SETS],
            sets_in_use: AtomicUsize::new(SETS),
            generation: AtomicU64::new(0),
            len: AtomicUsize::new(0),
            stripes: [const { Stripe::new() }; STRIPES],
        }
    }

    /// The counters of the calling thread's stripe, chosen by the address of a local
    /// variable: threads have distinct stacks, whole pages apart.
    #[inline]
    fn stripe(&self) -> &Stripe {
        let marker = 0u8;
        let page = core::ptr::from_ref(&marker).addr() >> 12;
        // `STRIPES` is a power of two: consecutive stacks get consecutive stripes.
        let [first, ..] = &self.stripes;
        self.stripes.get(page % STRIPES).unwrap_or(first)
    }

    /// The index of the set of `(root, vpn)`, and the set.
    #[inline]
    fn set_of(&self, root: u64, vpn: u64) -> Option<(usize, &[TlbSlot; WAYS])> {
        let sets = self.sets_in_use.load(Ordering::Relaxed);
        if sets == 0 {
            // Capacity zero: no set is in use, so nothing is stored or found.
            return None;
        }
        // Lemire's multiply-shift reduction of a well-mixed hash: always < sets.
        let h = mix64(root.rotate_left(29) ^ vpn);
        let index = ((u128::from(h) * sets as u128) >> 64) as usize;
        Some((index, self.sets.get(index)?))
    }

    /// The current generation, to pass to [`Tlb::get`] and [`Tlb::insert`]. Read it
    /// before walking the tables, so that a flush during the walk outdates the result.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The value cached for `(root, vpn)` in `generation`; counts a hit or a miss. O(WAYS),
    /// no lock, and no write but the counter.
    #[inline]
    pub fn get(&self, root: u64, vpn: u64, generation: u64) -> Option<u64> {
        let found = self.probe(root, vpn, generation);
        self.record(found.is_some());
        found
    }

    /// The value cached for `(root, vpn)` in `generation`, as [`Tlb::get`] but counting
    /// nothing: for a caller that probes several keys for one lookup and counts it once
    /// with [`Tlb::record`]. O(WAYS), no lock, no write.
    #[inline]
    pub fn probe(&self, root: u64, vpn: u64, generation: u64) -> Option<u64> {
        self.set_of(root, vpn).and_then(|(_, set)| {
            set.iter().find_map(|slot| match slot.lookup(root, vpn) {
                Some((value, g)) if g == generation => Some(value),
                _ => None,
            })
        })
    }

    /// Counts one lookup: a hit if `hit`, else a miss. O(1), no locked instruction.
    #[inline]
    pub fn record(&self, hit: bool) {
        let stripe = self.stripe();
        if hit {
            bump(&stripe.hits);
        } else {
            bump(&stripe.misses);
        }
    }

    /// Caches `value` for `(root, vpn)` in `generation`, replacing as the type documents.
    /// O(WAYS). A key whose `vpn` is `u64::MAX` is not stored; nor is anything while the
    /// effective capacity is zero, or while another thread writes the chosen slot.
    pub fn insert(&self, root: u64, vpn: u64, value: u64, generation: u64) {
        self.store(root, vpn, value, generation, false);
    }

    /// [`Tlb::insert`] with an admission filter on eviction: when the key's set has no
    /// slot holding the key, empty or stale, the key is stored only if it was the last one
    /// turned away from that set (it missed twice in a row there); otherwise it is
    /// remembered and turned away, and nothing is evicted. O(WAYS).
    ///
    /// A scan over more pages than the cache holds then evicts nothing and takes no
    /// locked instruction (a slot write's compare-and-swap is a full fence, which would
    /// stop the CPU overlapping the scan's memory accesses), while a working set that
    /// misses repeatedly still gets in. The filter is one word per set, written with a
    /// plain store: racing offers may overwrite each other's, which only delays admission.
    pub fn offer(&self, root: u64, vpn: u64, value: u64, generation: u64) {
        self.store(root, vpn, value, generation, true);
    }

    #[inline]
    fn store(&self, root: u64, vpn: u64, value: u64, generation: u64, filtered: bool) {
        if vpn == EMPTY {
            return;
        }
        let Some((set_index, set)) = self.set_of(root, vpn) else {
            return;
        };
        let current = self.generation();
        let mut target = None;
        let mut free = None;
        for (i, slot) in set.iter().enumerate() {
            match slot.read() {
                Some((r, v, _, _)) if r == root && v == vpn => {
                    target = Some((i, false));
                    break;
                }
                Some((_, v, _, _)) if v == EMPTY => {
                    free = free.or(Some((i, true)));
                }
                Some((_, _, _, g)) if g != current => {
                    free = free.or(Some((i, false)));
                }
                _ => {}
            }
        }
        let (index, was_empty, evicts) = match target.or(free) {
            Some((i, empty)) => (i, empty, false),
            None => {
                if filtered && let Some(door) = self.doorkeeper.get(set_index) {
                    // A fingerprint collision only admits a key early: it evicts an
                    // entry, as an unfiltered insertion always does.
                    let print = mix64(root.rotate_left(17) ^ vpn ^ 0x9e37_79b9_7f4a_7c15);
                    if door.load(Ordering::Relaxed) != print {
                        door.store(print, Ordering::Relaxed);
                        return;
                    }
                    door.store(0, Ordering::Relaxed);
                }
                let victim = match self.next.get(set_index) {
                    Some(n) => {
                        let v = n.load(Ordering::Relaxed);
                        n.store(v.wrapping_add(1), Ordering::Relaxed);
                        usize::from(v) % WAYS
                    }
                    None => 0,
                };
                (victim, false, true)
            }
        };
        let Some(slot) = set.get(index) else {
            return;
        };
        let written = slot.write(|s| {
            s.root.store(root, Ordering::Relaxed);
            s.vpn.store(vpn, Ordering::Relaxed);
            s.value.store(value, Ordering::Relaxed);
            s.generation.store(generation, Ordering::Relaxed);
        });
        if written {
            if was_empty {
                self.len.fetch_add(1, Ordering::Relaxed);
            }
            if evicts {
                bump(&self.stripe().evictions);
            }
        }
    }

    /// Drops the entry of `(root, vpn)` (and any duplicate two racing insertions left),
    /// whatever its generation. O(WAYS).
    pub fn remove(&self, root: u64, vpn: u64) {
        let Some((_, set)) = self.set_of(root, vpn) else {
            return;
        };
        for slot in set {
            if let Some((r, v, _, _)) = slot.read()
                && r == root
                && v == vpn
            {
                // Retry until the slot is ours: a removal must not be skipped.
                while !slot.write(|s| s.vpn.store(EMPTY, Ordering::Relaxed)) {
                    core::hint::spin_loop();
                }
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Outdates every entry. O(1).
    pub fn flush(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Empties every slot. O(capacity).
    pub fn clear(&self) {
        self.flush();
        for slot in self.sets.iter().flatten() {
            while !slot.write(|s| s.vpn.store(EMPTY, Ordering::Relaxed)) {
                core::hint::spin_loop();
            }
        }
        self.len.store(0, Ordering::Relaxed);
    }

    /// Sets the effective capacity: `capacity` rounded down to whole sets (at least one
    /// set unless `capacity` is zero), at most `SETS * WAYS`. Empties the cache.
    /// O(capacity).
    pub fn set_capacity(&self, capacity: usize) {
        let sets = if capacity == 0 {
            0
        } else {
            (capacity / WAYS).clamp(1, SETS)
        };
        self.sets_in_use.store(sets, Ordering::Relaxed);
        self.clear();
    }

    /// The counters, summed over the stripes. O(1).
    pub fn metrics(&self) -> CacheMetrics {
        let mut m = CacheMetrics {
            len: self.len.load(Ordering::Relaxed),
            capacity: self.sets_in_use.load(Ordering::Relaxed) * WAYS,
            ..CacheMetrics::default()
        };
        for s in &self.stripes {
            m.hits = m.hits.saturating_add(s.hits.load(Ordering::Relaxed));
            m.misses = m.misses.saturating_add(s.misses.load(Ordering::Relaxed));
            m.evictions = m
                .evictions
                .saturating_add(s.evictions.load(Ordering::Relaxed));
        }
        m
    }

    /// Resets the counters to zero. O(1).
    pub fn reset_metrics(&self) {
        for s in &self.stripes {
            s.hits.store(0, Ordering::Relaxed);
            s.misses.store(0, Ordering::Relaxed);
            s.evictions.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlb_hits_misses_generations_and_removal() {
        let tlb: Tlb<4, 2> = Tlb::new();
        let g = tlb.generation();
        assert_eq!(tlb.get(0x1000, 7, g), None);
        tlb.insert(0x1000, 7, 70, g);
        tlb.insert(0x2000, 7, 71, g);
        assert_eq!(tlb.get(0x1000, 7, g), Some(70));
        assert_eq!(tlb.get(0x2000, 7, g), Some(71));
        // Replacing a key keeps one entry.
        tlb.insert(0x1000, 7, 72, g);
        assert_eq!(tlb.get(0x1000, 7, g), Some(72));
        let m = tlb.metrics();
        assert_eq!((m.hits, m.misses, m.len, m.capacity), (3, 1, 2, 8));
        // A flush outdates everything in O(1); stale slots are reused without eviction.
        tlb.flush();
        let g2 = tlb.generation();
        assert_ne!(g, g2);
        assert_eq!(tlb.get(0x1000, 7, g2), None);
        tlb.insert(0x1000, 7, 73, g2);
        assert_eq!(tlb.get(0x1000, 7, g2), Some(73));
        // An entry looked up for an older generation is stale from the start.
        tlb.insert(0x3000, 1, 9, g);
        assert_eq!(tlb.get(0x3000, 1, g2), None);
        tlb.remove(0x1000, 7);
        assert_eq!(tlb.get(0x1000, 7, g2), None);
        assert_eq!(tlb.metrics().evictions, 0);
        // The empty marker is never stored.
        tlb.insert(0, u64::MAX, 1, g2);
        assert_eq!(tlb.get(0, u64::MAX, g2), None);
    }

    #[test]
    fn tlb_evicts_round_robin_within_a_set_and_honours_capacity() {
        // One set of two ways: every key meets in it.
        let tlb: Tlb<1, 2> = Tlb::new();
        let g = tlb.generation();
        for vpn in 0..5 {
            tlb.insert(1, vpn, vpn * 10, g);
        }
        let m = tlb.metrics();
        assert_eq!((m.len, m.evictions), (2, 3));
        let held = (0..5).filter(|&v| tlb.get(1, v, g).is_some()).count();
        assert_eq!(held, 2);
        // The two most recent insertions survive round-robin replacement.
        assert_eq!(tlb.get(1, 4, g), Some(40));
        assert_eq!(tlb.get(1, 3, g), Some(30));
        tlb.set_capacity(0);
        tlb.insert(1, 9, 90, g);
        assert_eq!(tlb.get(1, 9, tlb.generation()), None);
        assert_eq!(tlb.metrics().capacity, 0);
        tlb.set_capacity(usize::MAX);
        assert_eq!(tlb.metrics().capacity, 2);
        tlb.reset_metrics();
        assert_eq!(tlb.metrics().hits + tlb.metrics().misses, 0);
    }

    #[test]
    fn tlb_offer_evicts_only_a_key_turned_away_just_before() {
        let tlb: Tlb<1, 2> = Tlb::new();
        let g = tlb.generation();
        // Free slots take offers at once.
        tlb.offer(1, 0, 0, g);
        tlb.offer(1, 1, 10, g);
        assert_eq!(tlb.probe(1, 0, g), Some(0));
        // A full set turns a new key away once, then takes it.
        tlb.offer(1, 2, 20, g);
        assert_eq!(tlb.probe(1, 2, g), None);
        assert_eq!(tlb.metrics().evictions, 0);
        tlb.offer(1, 2, 20, g);
        assert_eq!(tlb.probe(1, 2, g), Some(20));
        assert_eq!(tlb.metrics().evictions, 1);
        // A scan of keys that never repeat evicts nothing.
        for vpn in 100..200 {
            tlb.offer(1, vpn, vpn, g);
        }
        let m = tlb.metrics();
        assert_eq!((m.evictions, m.len), (1, 2));
        assert_eq!(tlb.probe(1, 2, g), Some(20));
        // Replacing a held key needs no admission.
        tlb.offer(1, 2, 21, g);
        assert_eq!(tlb.probe(1, 2, g), Some(21));
        // Stale slots are free: after a flush, offers go straight in.
        tlb.flush();
        let g2 = tlb.generation();
        tlb.offer(1, 300, 3, g2);
        assert_eq!(tlb.probe(1, 300, g2), Some(3));
        // probe counts nothing; record counts one lookup.
        let before = tlb.metrics();
        tlb.record(true);
        tlb.record(false);
        let after = tlb.metrics();
        assert_eq!(
            (after.hits - before.hits, after.misses - before.misses),
            (1, 1)
        );
    }

    /// Readers racing writers on the same slots never see a torn entry: every value a hit
    /// returns is the one written for that key.
    #[test]
    fn tlb_readers_never_see_torn_entries() {
        static TLB: Tlb<2, 2> = Tlb::new();
        let rounds = if cfg!(miri) { 200u64 } else { 200_000 };
        std::thread::scope(|scope| {
            for t in 0..2u64 {
                scope.spawn(move || {
                    let mut x = t;
                    for i in 0..rounds {
                        x = mix64(x.wrapping_add(i));
                        let (root, vpn) = (x & 3, (x >> 8) & 15);
                        let g = TLB.generation();
                        match TLB.get(root, vpn, g) {
                            Some(v) => assert_eq!(v, root * 1000 + vpn),
                            None => TLB.insert(root, vpn, root * 1000 + vpn, g),
                        }
                        if i % 97 == 0 {
                            TLB.remove(root, vpn);
                        }
                    }
                });
            }
        });
        let m = TLB.metrics();
        assert!(m.hits + m.misses <= 2 * rounds && m.hits > 0 && m.misses > 0);
    }
}
