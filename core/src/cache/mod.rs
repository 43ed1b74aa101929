//! Fixed-capacity caches that know no guest type: an LRU ([`Lru`]), a set-associative
//! cache with one lock per entry that many vCPUs use at once ([`ClockCache`], the page
//! cache), and [`Tlb`], a set-associative translation cache whose lookups take no lock
//! (the translation cache, read on every access, by every vCPU).
//!
//! Each takes its capacity as a const generic, has a `const fn new`, and accepts a
//! capacity of 0 (a cache that holds nothing).
//!
//! This module holds what they share: the key trait, the hash and the counters.
//!
//! Layer: may import only `addr`, `access` and `error` (and imports none of them today).

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

mod clock;
mod lru;
mod tlb;

pub use self::clock::ClockCache;
pub use self::lru::Lru;
pub(crate) use self::tlb::MissHint;
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

/// How a thread waits for another to finish a short critical section (a seqlock write):
/// spin a little, then, under `std`, yield to the scheduler. On a host the other thread
/// may be preempted in the middle, and a waiter that only spins would burn its whole time
/// slice; without `std` (a hypervisor, firmware) the other side is a CPU that runs with
/// preemption off, so spinning ends within a few stores.
pub(crate) struct Backoff {
    spins: u32,
}

impl Backoff {
    /// Spins before the first yield.
    const SPINS: u32 = 64;

    pub(crate) const fn new() -> Self {
        Self { spins: 0 }
    }

    /// Waits a little.
    #[inline]
    pub(crate) fn relax(&mut self) {
        if self.spins < Self::SPINS {
            self.spins = self.spins.saturating_add(1);
            core::hint::spin_loop();
            return;
        }
        #[cfg(feature = "std")]
        std::thread::yield_now();
        #[cfg(not(feature = "std"))]
        core::hint::spin_loop();
    }
}

/// Counter stripes of [`Counters`]: a count goes to the stripe of the calling thread's
/// stack, so that vCPUs on different CPUs rarely write the same cache line.
const STRIPES: usize = 8;

/// One stripe of counters, alone on its pair of cache lines (128 bytes: the adjacent-line
/// prefetcher of some CPUs pulls lines in pairs).
#[repr(align(128))]
struct Stripe {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    /// Lookups still to step aside for ([`Counters::bypassing`]).
    skip: AtomicU64,
    /// Hits per capacity miss, averaged over the last few (fixed point, 16ths).
    score: AtomicU64,
    /// `hits` at the last capacity miss.
    mark: AtomicU64,
    /// log2 of the size of the large page the last translation hit, 0 after a base
    /// page's hit: the key a translation cache probes first ([`Local::last_shift`]).
    last_shift: AtomicU64,
}

impl Stripe {
    const fn new() -> Self {
        Self {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            skip: AtomicU64::new(0),
            score: AtomicU64::new(Bypass::START),
            mark: AtomicU64::new(0),
            last_shift: AtomicU64::new(0),
        }
    }
}

/// When a cache steps aside: the lookups of a thread whose recent lookups mostly missed
/// in a full cache go straight to the source, and one in [`Bypass::EVERY`] still looks,
/// so that a working set that returns is seen again.
///
/// The measure is the number of hits between two *capacity misses* (misses in a set with
/// no free or stale way: a cold cache, after a flush or at start, has none), averaged over
/// the last eight or so. Below a threshold the caller chooses (what a hit saves against
/// what a miss costs), the next `EVERY - 1` lookups are skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bypass {
    /// The least average of hits per capacity miss, in 16ths, at which the cache still
    /// pays.
    pub(crate) threshold: u64,
}

impl Bypass {
    /// A cache that never steps aside.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "for tests of the translation cache")
    )]
    pub(crate) const NEVER: Bypass = Bypass { threshold: 0 };
    /// Lookups per sample while bypassing: one looks, the others go to the source.
    pub(crate) const EVERY: u64 = 32;
    /// The starting score: eight hits per miss, far above any threshold, so that a cache
    /// that has not missed when full never bypasses.
    const START: u64 = 8 << 4;
    /// The most hits one capacity miss's run adds (16 hits, in 16ths), so that one long
    /// run does not hold off the bypass for long.
    const RUN_CAP: u64 = 16 << 4;
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

/// The hit, miss and eviction counters a shared cache keeps, striped by the calling
/// thread's stack address (1 KiB whatever the capacity). Exact for a single thread; with
/// several, an increment is lost only if two threads share a stripe at the same instant.
pub(crate) struct Counters {
    stripes: [Stripe; STRIPES],
}

impl Counters {
    pub(crate) const fn new() -> Self {
        Self {
            stripes: [const { Stripe::new() }; STRIPES],
        }
    }

    /// The calling thread's stripe, chosen by the address of a local variable: threads
    /// have distinct stacks, whole pages apart.
    #[inline]
    fn stripe(&self) -> &Stripe {
        let marker = 0u8;
        // Miri places each local at an address of its own, not on a stack, so a thread's
        // calls would land on any stripe: there, one stripe for all (the counts are the
        // same; only the bypass state needs a thread to find its stripe again).
        let page = if cfg!(miri) {
            0
        } else {
            core::ptr::from_ref(&marker).addr() >> 12
        };
        // `STRIPES` is a power of two: consecutive stacks get consecutive stripes.
        let [first, ..] = &self.stripes;
        self.stripes.get(page % STRIPES).unwrap_or(first)
    }

    /// Counts one lookup: a hit if `hit`, else a miss. O(1), no locked instruction.
    #[inline]
    pub(crate) fn record(&self, hit: bool) {
        let stripe = self.stripe();
        if hit {
            bump(&stripe.hits);
        } else {
            bump(&stripe.misses);
        }
    }

    /// The calling thread's stripe, for several counts of one operation: a stripe
    /// chosen once, so that a deeper call frame on another stack page cannot split
    /// them ([`Local`]).
    #[inline]
    pub(crate) fn local(&self) -> Local<'_> {
        Local {
            stripe: self.stripe(),
        }
    }

    /// Counts one eviction.
    #[inline]
    pub(crate) fn eviction(&self) {
        bump(&self.stripe().evictions);
    }

    /// Adds the counts of every stripe to `m`.
    pub(crate) fn add_to(&self, m: &mut CacheMetrics) {
        for s in &self.stripes {
            m.hits = m.hits.saturating_add(s.hits.load(Ordering::Relaxed));
            // Less the lookups a bypass has counted ahead and not yet skipped.
            let skip = s.skip.load(Ordering::Relaxed);
            let misses = s.misses.load(Ordering::Relaxed).saturating_sub(skip);
            m.misses = m.misses.saturating_add(misses);
            m.evictions = m
                .evictions
                .saturating_add(s.evictions.load(Ordering::Relaxed));
        }
    }

    /// Sets every count to zero.
    pub(crate) fn reset(&self) {
        for s in &self.stripes {
            s.hits.store(0, Ordering::Relaxed);
            s.misses.store(0, Ordering::Relaxed);
            s.evictions.store(0, Ordering::Relaxed);
            s.skip.store(0, Ordering::Relaxed);
            s.score.store(Bypass::START, Ordering::Relaxed);
            s.mark.store(0, Ordering::Relaxed);
        }
    }
}

/// One thread's stripe of [`Counters`], chosen once for one operation: its counts and
/// its [`Bypass`] state stay together whatever the call depth of each count.
pub(crate) struct Local<'a> {
    stripe: &'a Stripe,
}

impl Local<'_> {
    /// Counts one lookup: a hit if `hit`, else a miss.
    #[inline]
    pub(crate) fn record(&self, hit: bool) {
        if hit {
            bump(&self.stripe.hits);
        } else {
            bump(&self.stripe.misses);
        }
    }

    /// The size (log2) of the large page the thread's last translation hit, or 0: a
    /// stream of translations in large pages (a kernel's direct map) probes that size
    /// first and finds it in one probe.
    #[inline]
    pub(crate) fn last_shift(&self) -> u32 {
        // Only `set_last_shift` stores it, with a shift below 64.
        (self.stripe.last_shift.load(Ordering::Relaxed) & 63) as u32
    }

    /// Sets [`Local::last_shift`], writing only when it changes.
    #[inline]
    pub(crate) fn set_last_shift(&self, shift: u32) {
        let shift = u64::from(shift & 63);
        if self.stripe.last_shift.load(Ordering::Relaxed) != shift {
            self.stripe.last_shift.store(shift, Ordering::Relaxed);
        }
    }

    /// Whether the calling thread's lookup should step aside ([`Bypass`]); if so, it is
    /// counted as a miss (the cache did not answer it). O(1), no locked instruction.
    #[inline]
    pub(crate) fn bypassing(&self) -> bool {
        let stripe = self.stripe;
        let skip = stripe.skip.load(Ordering::Relaxed);
        if skip == 0 {
            return false;
        }
        // Its miss was counted when the bypass began (`capacity_miss`).
        stripe.skip.store(skip.wrapping_sub(1), Ordering::Relaxed);
        true
    }

    /// Notes a miss in a full set: updates the calling thread's average of hits per
    /// capacity miss, and starts a bypass ([`Bypass`]) if it fell below `bypass`'s
    /// threshold.
    #[inline]
    pub(crate) fn capacity_miss(&self, bypass: Bypass) {
        let stripe = self.stripe;
        let hits = stripe.hits.load(Ordering::Relaxed);
        let run = hits
            .wrapping_sub(stripe.mark.load(Ordering::Relaxed))
            .saturating_mul(16)
            .min(Bypass::RUN_CAP);
        stripe.mark.store(hits, Ordering::Relaxed);
        // An average over about eight capacity misses: 7/8 of the old, 1/8 of the new.
        let old = stripe.score.load(Ordering::Relaxed);
        let score = old.saturating_sub(old >> 3).saturating_add(run >> 3);
        stripe.score.store(score, Ordering::Relaxed);
        if score < bypass.threshold {
            // The misses of the lookups it skips are counted now, and the ones still to
            // skip are taken off when the counters are read: exact at any moment for one
            // thread, and one store less per skipped lookup.
            let skip = stripe.skip.load(Ordering::Relaxed);
            let more = (Bypass::EVERY - 1).saturating_sub(skip);
            stripe
                .skip
                .store(skip.saturating_add(more), Ordering::Relaxed);
            let misses = stripe.misses.load(Ordering::Relaxed);
            stripe
                .misses
                .store(misses.wrapping_add(more), Ordering::Relaxed);
        }
    }
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
