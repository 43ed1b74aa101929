//! [`Tlb`]: a set-associative translation cache whose lookups take no lock.

use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};

use super::{Backoff, CacheMetrics, Counters, Local};

/// A key word no key can have: the virtual page number of an empty slot.
const EMPTY: u64 = u64::MAX;

/// The low bits of the generation word count removals, the bits above them count
/// flushes: an entry is current while its flush count is the cache's, and an insertion
/// lands only if the whole word is unchanged since the caller read it (see the
/// concurrency notes of [`Tlb`]).
const REMOVAL_BITS: u32 = 16;
/// One flush, as an increment of the generation word.
const FLUSH: u64 = 1 << REMOVAL_BITS;

/// The flush count of a generation word, in place: what a slot stores, so that a lookup
/// compares its slot's word with one `==`.
const FLUSHES: u64 = !(FLUSH - 1);

/// What [`Tlb::look`] saw of a missed key's set, for [`Tlb::offer_hinted`], in one word:
/// the set's index from bit 8, bit 4 set when it looked at the ways (a set of four), and
/// in bits 0..=3 one bit for each free or stale way.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MissHint(u64);

impl MissHint {
    const LOOKED: u64 = 1 << 4;

    fn new(set: usize, free: Option<u32>) -> Self {
        let set = (set as u64) << 8;
        Self(match free {
            Some(bits) => set | Self::LOOKED | u64::from(bits & 0xf),
            None => set,
        })
    }

    /// The set's index.
    fn set(self) -> usize {
        usize::try_from(self.0 >> 8).unwrap_or(usize::MAX)
    }

    /// The free or stale ways, if the probe looked.
    fn free(self) -> Option<u32> {
        (self.0 & Self::LOOKED != 0).then_some((self.0 & 0xf) as u32)
    }

    /// Whether the probe saw its set full of current entries: a capacity miss, which a
    /// cold cache (after a flush, at start) does not have.
    pub(crate) fn full(self) -> bool {
        self.free() == Some(0)
    }
}

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

    /// The value and generation if the slot holds `(root, vpn)`, read consistently. The
    /// page number is compared first, so a slot holding another key costs two loads.
    /// Reads only: a hit writes nothing to the slot.
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

    /// Runs `f` with the slot held for writing, unless another writer holds it (then
    /// nothing runs: this is a cache, and `None` comes back). `f` may read the slot's
    /// fields as they are (no other writer can change them) and store new ones.
    #[inline]
    fn write<R>(&self, f: impl FnOnce(&Self) -> R) -> Option<R> {
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
            return None;
        }
        // The odd sequence number is visible before any data store.
        fence(Ordering::Release);
        let result = f(self);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
        Some(result)
    }

    /// [`TlbSlot::write`], waiting for a writer that holds the slot: for removals, which
    /// must not be skipped. A writer holds a slot for a few stores, never for a lookup or
    /// a walk, so the wait is bounded by another thread's four stores.
    #[inline]
    fn write_waiting<R>(&self, f: impl FnOnce(&Self) -> R) -> R {
        let mut f = Some(f);
        let mut backoff = Backoff::new();
        loop {
            // `f` runs once: the first time the slot is ours, and then we return.
            if let Some(Some(result)) = self.write(|s| f.take().map(|f| f(s))) {
                return result;
            }
            // Under `std` the wait yields after a few spins: the writer may be preempted.
            backoff.relax();
        }
    }

    /// Empties the slot if it holds `(root, vpn)` (any key, with `None`); the caller holds
    /// it. Returns whether an entry went.
    #[inline]
    fn clear_locked(&self, key: Option<(u64, u64)>) -> bool {
        let vpn = self.vpn.load(Ordering::Relaxed);
        let matches = match key {
            Some((root, want)) => vpn == want && self.root.load(Ordering::Relaxed) == root,
            None => vpn != EMPTY,
        };
        if matches {
            self.vpn.store(EMPTY, Ordering::Relaxed);
        }
        matches
    }
}

/// A fixed-capacity, set-associative translation cache whose lookups take no lock and
/// write nothing shared: a software TLB for many vCPUs at once.
///
/// Keys are a translation root and a virtual page number; values are one opaque word.
/// Entries carry the cache's generation when they were looked up for: [`Tlb::flush`]
/// moves the generation on, so every older entry misses from then on, in O(1).
///
/// `N` slots in sets of [`Tlb::WAYS`] (the last set holds the rest when `N` is not a
/// multiple); a key's hash chooses its set. Each slot is a seqlock over atomics, so a
/// reader sees a whole entry or none (it then counts a miss), and never blocks. Writers
/// that meet on one slot skip their insertion rather than wait. `N = 0` is valid: a cache
/// that holds nothing.
///
/// Eviction: a new key goes into its set's slot holding the same key, else an empty or
/// stale slot, else the slot the set's round-robin pointer names (the oldest insertion,
/// unless a replacement or removal reused a slot since), which is then counted as an
/// eviction (the pointer moves without a locked instruction, so racing insertions may
/// pick the same victim). The slot is chosen from a read of the set that skips the
/// sequence numbers (a hint; the write decides under the slot's lock whether it lands),
/// so racing insertions may also leave a duplicate of a key, which removals visit.
/// Counters are exact for a single thread; with several they
/// spread over stripes chosen by the calling thread's stack address, and an increment is
/// lost only if two threads share a stripe at the same instant. `len` is exact: it moves
/// only under a slot's lock.
///
/// # Concurrency
/// The generation word ([`Tlb::generation`]) counts flushes in its high bits and
/// removals in its low 16 (every 65,536th removal carries into the flush count, which
/// is a flush). A caller reads it before it walks the tables and passes it back with the
/// walk's result. An entry is current while its flush count is the cache's; an
/// insertion is *in flight* from the caller's read of the generation until it unlocks
/// its slot, and lands only if, under the slot's lock, the whole word is unchanged.
///
/// What each operation can see when they race:
/// - **A lookup** ([`Tlb::get`], [`Tlb::probe`]) sees each slot either as a complete
///   write left it or not at all (a miss), never a torn entry. A lookup concurrent with a
///   flush, removal or resize may answer as if it ran just before it; one that starts
///   after the operation returned (that happens after it) sees its effect.
/// - **An insertion** ([`Tlb::insert`], [`Tlb::offer`]) that races a **flush** lands
///   (if its lock comes first) with the old flush count, so no later lookup serves it, or
///   is cancelled (if the flush's increment is visible under its lock).
/// - **An insertion racing a removal** ([`Tlb::remove`], which increments the word
///   *before* it visits the slots, and locks every slot of the key's set, waiting for a
///   writer that holds one): either the removal locks the slot after the insertion
///   unlocked it, and sees and empties the entry; or it locked it before, so its
///   increment happens before the insertion's lock and the insertion sees it and does
///   not land. Either way, after `remove` returns, no lookup serves a value inserted for
///   a generation read before `remove` began; and a caller whose read of the generation
///   saw the increment (an `Acquire` load of a `SeqCst` write) walks after it, so its
///   walk sees what was written before `remove` was called. [`Tlb::cancel_insertions`]
///   is the first half alone, for a caller that must cancel before it knows which keys
///   to remove.
/// - **A resize** ([`Tlb::set_capacity`]) stores the new set count, then flushes and
///   empties every slot (waiting for writers): an insertion that read the generation
///   before the flush is cancelled or emptied; one that read it after also sees the new
///   set count (the flush orders it). Lookups during the resize may look in a set the
///   new count does not use, and miss.
///
/// The generation word is read with `Acquire` and changed with `SeqCst`, and an
/// insertion re-reads it `SeqCst` under the lock, so a caller may build on these
/// guarantees with `SeqCst` operations of its own (the translation cache of
/// [`VmiCore`](crate::VmiCore) does, for its mask of large-page sizes). The flush count
/// has 48 bits: an entry left untouched in its slot through 2^48 flushes would look
/// current again (at one flush a microsecond, after nine years).
pub struct Tlb<const N: usize> {
    /// Set `i` is `slots[i * WAYS..]`, `WAYS` slots or what is left.
    slots: [TlbSlot; N],
    /// The round-robin victim of each set, at the set's index (stable Rust cannot size an
    /// array `N / WAYS`: the entries past the last set are unused).
    next: [AtomicU8; N],
    /// The fingerprint (32 bits) of the last key [`Tlb::offer`] turned away from each set,
    /// at the set's index.
    doorkeeper: [AtomicU32; N],
    /// The sets in use: the effective capacity divided by `WAYS`.
    sets_in_use: AtomicUsize,
    generation: AtomicU64,
    len: AtomicUsize,
    counters: Counters,
}

impl<const N: usize> Default for Tlb<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Tlb<N> {
    /// The compile-time capacity, `N`.
    pub const CAPACITY: usize = N;
    /// Slots per set (the last set may have fewer).
    pub const WAYS: usize = 4;
    /// The number of sets: `N / WAYS`, rounded up.
    const SETS: usize = N.div_ceil(Self::WAYS);

    /// An empty cache at full capacity. `const`: it can initialise a `static`.
    pub const fn new() -> Self {
        Self {
            slots: [const { TlbSlot::new() }; N],
            next: [const { AtomicU8::new(0) }; N],
            doorkeeper: [const { AtomicU32::new(0) }; N],
            sets_in_use: AtomicUsize::new(Self::SETS),
            generation: AtomicU64::new(0),
            len: AtomicUsize::new(0),
            counters: Counters::new(),
        }
    }

    /// The index of the set of `(root, vpn)`, and the set.
    #[inline]
    fn set_of(&self, root: u64, vpn: u64) -> Option<(usize, &[TlbSlot])> {
        let sets = self.sets_in_use.load(Ordering::Relaxed);
        if sets == 0 {
            // Capacity zero: no set is in use, so nothing is stored or found.
            return None;
        }
        let index = self.index_of(root, vpn, sets);
        Some((index, self.set(index)?))
    }

    /// The set of `(root, vpn)` among `sets` (0 when `sets` is 0).
    #[inline]
    fn index_of(&self, root: u64, vpn: u64, sets: usize) -> usize {
        // One multiply by 2^64 / phi (Fibonacci hashing), whose high bits are well spread
        // for consecutive keys (Knuth, TAOCP vol. 3, §6.4), then Lemire's multiply-shift
        // reduction, which reads exactly those high bits: always < sets. A 64-bit hash
        // times a set count below 2^64 fits in 128 bits. A stronger mix (splitmix64)
        // cost a hit ten more instructions; a cache needs spread, not secrecy.
        let h = (root.rotate_left(29) ^ vpn).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (u128::from(h).wrapping_mul(sets as u128) >> 64) as usize
    }

    /// Set `index`: [`Tlb::WAYS`] slots, or fewer for the last set.
    #[inline]
    fn set(&self, index: usize) -> Option<&[TlbSlot]> {
        // `index < sets <= N`: the product does not wrap for any array that fits in
        // memory, and a wrapped one would only find no set.
        let start = index.wrapping_mul(Self::WAYS);
        let end = start.saturating_add(Self::WAYS).min(N);
        self.slots.get(start..end)
    }

    /// The current generation, to pass to [`Tlb::get`] and [`Tlb::insert`]. Read it
    /// before walking the tables, so that a flush or a removal during the walk outdates
    /// the result (see the concurrency notes of [`Tlb`]).
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
    ///
    /// The four ways' page numbers are compared at once into a mask, without a branch
    /// on which way holds the key: in a full cache it is anywhere, and a probe that
    /// stopped at the first match mispredicted that branch on most hits (a working set
    /// of 64 pages in a full cache took 14 ns a hit against 5 in an empty one). Only the
    /// ways in the mask are then read under their seqlocks.
    #[inline]
    pub fn probe(&self, root: u64, vpn: u64, generation: u64) -> Option<u64> {
        const { assert!(Self::WAYS == 4, "probe's fixed-size set") };
        let flushes = generation & FLUSHES;
        // No test of a zero set count here: with none in use, set 0 is empty (a resize
        // empties every slot, and insertions store nothing then), so the probe misses.
        let index = self.index_of(root, vpn, self.sets_in_use.load(Ordering::Relaxed));
        // `index < sets <= N`: the product does not wrap for any array that fits in
        // memory, and a wrapped one would only find no set.
        let start = index.wrapping_mul(Self::WAYS);
        // A whole set is four slots known at compile time: each slot's bounds are checked
        // once. Only the last set of a capacity that is not a multiple of four is shorter.
        let Some(set) = self
            .slots
            .get(start..)
            .and_then(<[TlbSlot]>::first_chunk::<4>)
        else {
            return self.probe_short(index, root, vpn, flushes);
        };
        // Which ways hold the page number, without a branch on where it sits.
        let [s0, s1, s2, s3] = set;
        let mut ways = u32::from(s0.vpn.load(Ordering::Relaxed) == vpn)
            | u32::from(s1.vpn.load(Ordering::Relaxed) == vpn) << 1
            | u32::from(s2.vpn.load(Ordering::Relaxed) == vpn) << 2
            | u32::from(s3.vpn.load(Ordering::Relaxed) == vpn) << 3;
        // The empty-slot marker is never stored, so it is never found: without this, an
        // empty slot whose stale root matches would answer with its stale value.
        if vpn == EMPTY {
            ways = 0;
        }
        // Each candidate read whole under its seqlock; usually there is one (another
        // root's entry for the same page number may share the set).
        while ways != 0 {
            let way = ways.trailing_zeros() as usize;
            ways &= ways.wrapping_sub(1);
            if let Some(slot) = set.get(way)
                && let Some((value, g)) = slot.lookup(root, vpn)
                && g == flushes
            {
                return Some(value);
            }
        }
        None
    }

    /// The hint of a miss of `(root, vpn)`, for [`Tlb::offer_hinted`]: its set, with
    /// the free or stale ways read now (without the sequence numbers, as an insertion's
    /// choice always is) when the set has four ways.
    #[inline]
    pub(crate) fn look(&self, root: u64, vpn: u64, generation: u64) -> MissHint {
        let index = self.index_of(root, vpn, self.sets_in_use.load(Ordering::Relaxed));
        match self
            .slots
            .get(index.wrapping_mul(Self::WAYS)..)
            .and_then(<[TlbSlot]>::first_chunk::<4>)
        {
            Some(set) => Self::hint(index, set, generation & FLUSHES),
            None => MissHint::new(index, None),
        }
    }

    /// The hint of a miss in the four ways of set `index`. Each way is classified
    /// without a branch.
    #[inline]
    fn hint(index: usize, set: &[TlbSlot; 4], flushes: u64) -> MissHint {
        let mut free = 0u32;
        for (i, slot) in set.iter().enumerate() {
            let v = slot.vpn.load(Ordering::Relaxed);
            let g = slot.generation.load(Ordering::Relaxed);
            free |= u32::from((v == EMPTY) | (g != flushes)) << i;
        }
        MissHint::new(index, Some(free))
    }

    /// The probe of a set shorter than four ways (the last of a capacity that is not a
    /// multiple of four), way by way.
    #[cold]
    fn probe_short(&self, index: usize, root: u64, vpn: u64, flushes: u64) -> Option<u64> {
        (vpn != EMPTY)
            .then(|| self.set(index))
            .flatten()
            .and_then(|set| {
                set.iter().find_map(|slot| match slot.lookup(root, vpn) {
                    Some((value, g)) if g == flushes => Some(value),
                    _ => None,
                })
            })
    }

    /// [`Tlb::offer`] of the key a [`Tlb::probe`] missed, choosing among the ways
    /// its hint named (the key itself was not there). Without a usable hint, as
    /// [`Tlb::offer`].
    #[inline]
    pub(crate) fn offer_hinted(
        &self,
        hint: MissHint,
        root: u64,
        vpn: u64,
        value: u64,
        generation: u64,
    ) {
        let sets = self.sets_in_use.load(Ordering::Relaxed);
        let index = hint.set();
        let (Some(free), Some(set)) = (hint.free(), self.set(index)) else {
            return self.offer(root, vpn, value, generation);
        };
        // A resize since the probe: the set may no longer be the key's (the write would
        // be cancelled anyway, the resize having flushed); nothing is stored.
        if vpn == EMPTY || index >= sets || self.generation() != generation {
            return;
        }
        self.store_in(index, set, free, root, vpn, value, generation, true);
    }

    /// Counts one lookup: a hit if `hit`, else a miss. O(1), no locked instruction.
    #[inline]
    pub fn record(&self, hit: bool) {
        self.counters.record(hit);
    }

    /// The calling thread's counters, chosen once for one lookup (see [`Local`]): its
    /// count, and the bypass state ([`Bypass`]).
    #[inline]
    pub(crate) fn local(&self) -> Local<'_> {
        self.counters.local()
    }

    /// Caches `value` for `(root, vpn)` in `generation`, replacing as the type documents.
    /// O(WAYS). A key whose `vpn` is `u64::MAX` is not stored; nor is anything while the
    /// effective capacity is zero, while another thread writes the chosen slot, or if the
    /// cache was flushed or had an entry removed since `generation` was read.
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
        if self.generation() != generation {
            // Flushed or removed from since the walk began: the insertion could only be
            // cancelled under the lock.
            return;
        }
        // The choice of a slot is a hint, read without the slots' sequence numbers (the
        // write decides again under the lock whether to land, and counts `len` there):
        // two racing writers may so make a duplicate or miscount an eviction, which
        // removals and statistics allow for. For one thread it is exact. Each slot is
        // classified without a branch: a set's ways answer in any order.
        let flushes = generation & FLUSHES;
        let (mut same, mut free) = (0u32, 0u32);
        let mut classify = |i: usize, slot: &TlbSlot| {
            let v = slot.vpn.load(Ordering::Relaxed);
            let r = slot.root.load(Ordering::Relaxed);
            let g = slot.generation.load(Ordering::Relaxed);
            same |= u32::from((v == vpn) & (r == root)) << i;
            free |= u32::from((v == EMPTY) | (g != flushes)) << i;
        };
        match set.first_chunk::<4>() {
            Some(four) => four.iter().enumerate().for_each(|(i, s)| classify(i, s)),
            None => set.iter().enumerate().for_each(|(i, s)| classify(i, s)),
        }
        let choice = if same != 0 { same } else { free };
        self.store_in(
            set_index, set, choice, root, vpn, value, generation, filtered,
        );
    }

    /// [`Tlb::store`] once the slot is chosen: `choice` has a bit for each way of `set`
    /// (set `set_index`) that may take the key (the way holding it, else the free or
    /// stale ones); none means the set is full, and the admission filter (if `filtered`)
    /// and the round-robin victim decide.
    #[expect(clippy::too_many_arguments, reason = "the parts of one insertion")]
    #[inline]
    fn store_in(
        &self,
        set_index: usize,
        set: &[TlbSlot],
        choice: u32,
        root: u64,
        vpn: u64,
        value: u64,
        generation: u64,
        filtered: bool,
    ) {
        let (index, evicts) = if choice != 0 {
            (choice.trailing_zeros() as usize, false)
        } else {
            if filtered && let Some(door) = self.doorkeeper.get(set_index) {
                // A fingerprint collision only admits a key early: it evicts an entry,
                // as an unfiltered insertion always does. 32 bits of a multiply of the
                // key, folded.
                let mixed = (root.rotate_left(17) ^ vpn).wrapping_mul(0xd6e8_feb8_6659_fd93);
                let print = ((mixed >> 32) ^ mixed) as u32;
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
                    usize::from(v).checked_rem(set.len()).unwrap_or(0)
                }
                None => 0,
            };
            (victim, true)
        };
        let Some(slot) = set.get(index) else {
            return;
        };
        let landed = slot.write(|s| {
            // Under the lock: cancelled if a flush or a removal came since `generation`
            // was read (the concurrency notes of the type say why this suffices).
            if self.generation.load(Ordering::SeqCst) != generation {
                return false;
            }
            if s.vpn.load(Ordering::Relaxed) == EMPTY {
                self.len.fetch_add(1, Ordering::Relaxed);
            }
            s.root.store(root, Ordering::Relaxed);
            s.vpn.store(vpn, Ordering::Relaxed);
            s.value.store(value, Ordering::Relaxed);
            s.generation.store(generation & FLUSHES, Ordering::Relaxed);
            true
        });
        if landed == Some(true) && evicts {
            self.counters.eviction();
        }
    }

    /// Cancels every insertion in flight: one whose generation was read before this call
    /// does not land, unless it had already (then [`Tlb::remove`] finds it). Counts as a
    /// removal in the generation word. O(1).
    pub fn cancel_insertions(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Drops the entry of `(root, vpn)` (and any duplicate two racing insertions left),
    /// whatever its generation, and cancels insertions in flight
    /// ([`Tlb::cancel_insertions`]): once it returns, no value inserted for a generation
    /// read before the call is served. Waits for a writer that holds a slot of the set.
    /// O(WAYS).
    pub fn remove(&self, root: u64, vpn: u64) {
        self.cancel_insertions();
        self.remove_cancelled(root, vpn);
    }

    /// [`Tlb::remove`] without its cancellation, for a caller that called
    /// [`Tlb::cancel_insertions`] itself before it chose the keys to remove.
    pub(crate) fn remove_cancelled(&self, root: u64, vpn: u64) {
        if vpn == EMPTY {
            // Never stored (see `probe`): an empty slot must not count as a removed entry.
            return;
        }
        let Some((_, set)) = self.set_of(root, vpn) else {
            return;
        };
        for slot in set {
            slot.write_waiting(|s| {
                if s.clear_locked(Some((root, vpn))) {
                    self.len.fetch_sub(1, Ordering::Relaxed);
                }
            });
        }
    }

    /// Outdates every entry. O(1).
    pub fn flush(&self) {
        self.generation.fetch_add(FLUSH, Ordering::SeqCst);
    }

    /// Empties every slot, after a flush (so insertions in flight do not land).
    /// Waits for writers that hold a slot. O(capacity).
    pub fn clear(&self) {
        self.flush();
        for slot in &self.slots {
            slot.write_waiting(|s| {
                if s.clear_locked(None) {
                    self.len.fetch_sub(1, Ordering::Relaxed);
                }
            });
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
        self.sets_in_use.store(sets, Ordering::Relaxed);
        self.clear();
    }

    /// The counters, summed over the stripes. O(1).
    pub fn metrics(&self) -> CacheMetrics {
        let mut m = CacheMetrics {
            len: self.len.load(Ordering::Relaxed),
            capacity: self
                .sets_in_use
                .load(Ordering::Relaxed)
                .saturating_mul(Self::WAYS)
                .min(N),
            ..CacheMetrics::default()
        };
        self.counters.add_to(&mut m);
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
    use crate::cache::mix64;

    #[test]
    fn tlb_hits_misses_generations_and_removal() {
        let tlb: Tlb<8> = Tlb::new();
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

    /// The probe compares the four ways' page numbers at once, then reads the matching
    /// ways: a key is found in any way, behind other roots' entries for the same page
    /// number, and a stale or removed match does not hide a current one.
    #[test]
    fn tlb_probe_finds_a_key_in_any_way_among_same_page_numbers() {
        // One set of four: every key meets in it.
        let tlb: Tlb<4> = Tlb::new();
        let g = tlb.generation();
        for root in 1..=4u64 {
            tlb.insert(root << 12, 0x42, root * 100, g);
        }
        for root in 1..=4u64 {
            assert_eq!(tlb.probe(root << 12, 0x42, g), Some(root * 100));
        }
        assert_eq!(tlb.probe(5 << 12, 0x42, g), None);
        assert_eq!(tlb.probe(1 << 12, 0x43, g), None);
        // Ways 0..=2 go stale (a flush); the key re-inserted lands in a stale way, and
        // the stale entries for the same page number are passed over.
        tlb.flush();
        let g2 = tlb.generation();
        tlb.insert(3 << 12, 0x42, 333, g2);
        assert_eq!(tlb.probe(3 << 12, 0x42, g2), Some(333));
        for root in [1u64, 2, 4] {
            assert_eq!(tlb.probe(root << 12, 0x42, g2), None);
        }
        // A miss's hint, looked at, names the free or stale ways: three of four.
        assert_eq!(tlb.probe(9 << 12, 0x42, g2), None, "a key never inserted");
        let looked = tlb.look(9 << 12, 0x42, g2);
        assert_eq!(looked.free().map(u32::count_ones), Some(3));
        assert!(!looked.full());
    }

    #[test]
    fn tlb_evicts_round_robin_within_a_set_and_honours_capacity() {
        // One set of two slots: every key meets in it.
        let tlb: Tlb<2> = Tlb::new();
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
        let tlb: Tlb<2> = Tlb::new();
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

    #[test]
    fn tlb_insertions_in_flight_do_not_outlive_a_removal() {
        let tlb: Tlb<4> = Tlb::new();
        // Read before a removal: the insertion is cancelled, for any key.
        let g = tlb.generation();
        tlb.remove(1, 5);
        tlb.insert(1, 5, 50, g);
        tlb.insert(2, 6, 60, g);
        assert_eq!(tlb.probe(1, 5, tlb.generation()), None);
        assert_eq!(tlb.metrics().len, 0);
        // Read after it: the insertion lands, and other entries stay current.
        let g = tlb.generation();
        tlb.insert(1, 5, 51, g);
        tlb.insert(2, 6, 61, g);
        tlb.cancel_insertions();
        tlb.remove(3, 3);
        assert_eq!(tlb.probe(1, 5, tlb.generation()), Some(51));
        assert_eq!(tlb.probe(2, 6, tlb.generation()), Some(61));
        assert_eq!(tlb.metrics().len, 2);
        // Removing what is not there changes no count; removing twice counts once.
        tlb.remove(1, 5);
        tlb.remove(1, 5);
        assert_eq!(tlb.metrics().len, 1);
        // Every 65,536th removal carries into the flush count: a flush.
        for _ in 0..FLUSH {
            tlb.cancel_insertions();
        }
        assert_eq!(tlb.probe(2, 6, tlb.generation()), None);
        tlb.clear();
        assert_eq!(tlb.metrics().len, 0);
    }

    /// An insertion racing a removal: once `remove` returns, the value it served for the
    /// key is never older than the version current when it began.
    #[test]
    fn tlb_removal_racing_insertions_leaves_nothing_stale() {
        use core::sync::atomic::AtomicBool;
        static TLB: Tlb<2> = Tlb::new();
        static VERSION: AtomicU64 = AtomicU64::new(0);
        static DONE: AtomicBool = AtomicBool::new(false);
        let rounds = if cfg!(miri) { 100u64 } else { 50_000 };
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !DONE.load(Ordering::SeqCst) {
                    let g = TLB.generation();
                    let v = VERSION.load(Ordering::SeqCst);
                    TLB.insert(7, 9, v, g);
                }
            });
            for v in 1..=rounds {
                VERSION.store(v, Ordering::SeqCst);
                TLB.remove(7, 9);
                if let Some(seen) = TLB.probe(7, 9, TLB.generation()) {
                    assert!(seen >= v, "served version {seen} after removing at {v}");
                }
            }
            DONE.store(true, Ordering::SeqCst);
        });
    }

    /// Readers racing writers on the same slots never see a torn entry: every value a hit
    /// returns is the one written for that key.
    #[test]
    fn tlb_readers_never_see_torn_entries() {
        static TLB: Tlb<4> = Tlb::new();
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
