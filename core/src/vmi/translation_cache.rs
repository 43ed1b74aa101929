//! [`TranslationCache`]: the core's cache of translations, over one [`Tlb`] of `N`
//! entries that holds base and large pages alike.
//!
//! # The TLB word
//! A cached translation of one virtual page is packed in one word: the leaf's frame
//! (aligned to the leaf's size), then in the low bits the rights as [`MemoryAccess`]
//! holds them (R, W, X in bits 0..=2, R always set, so that they are the word's low
//! three bits as they are), U (bit 3) and log2 of the leaf's size (bits 4..=9).
//!
//! A base page is keyed by its virtual page number (below 2^52). A large page is one
//! entry, keyed by `va >> log2(size)` with log2(size) (nonzero) in bits 58..=63, so a
//! large-page key is never a base-page key, and a 2 MiB and a 1 GiB page never share one.
//! After a base-page miss, the large-page key is looked up for each size the cache has
//! held (`large_shifts`). One array rather than one per page size (as hardware TLBs
//! have) because stable Rust cannot split a const capacity `N` in two.

use core::marker::PhantomData;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::access::MemoryAccess;
use crate::addr::{Pa, Va};
use crate::arch::{Architecture, Translation};
use crate::cache::{Bypass, CacheMetrics, Local, MissHint, Tlb};
use crate::error::VmiError;

/// The default capacity: base and large pages together.
pub(crate) const CAPACITY: usize = 1024;

/// The rights bits: [`MemoryAccess`]'s own.
const TLB_ACCESS: u64 = 0b111;
const TLB_U: u64 = 1 << 3;
const TLB_SHIFT: u32 = 4;
const TLB_SHIFT_MASK: u64 = 0x3f << TLB_SHIFT;
/// Where a large-page key keeps log2 of the page size.
const TLB_LARGE_TAG: u32 = 58;

/// What [`TranslationCache::look`] found for one address of a batch.
pub(crate) enum Looked {
    /// The cached translation.
    Hit(Translation),
    /// None: the walk is to be offered.
    Miss,
    /// The thread bypasses the cache: the walk is not offered, as in
    /// [`TranslationCache::translate`].
    Bypassed,
}

/// Up to `N` translations of architecture `A`, keyed by root and virtual page, read
/// without a lock. `N = 0` caches nothing.
///
/// Flushes are O(1) (the generation moves on); a walk's result is offered under the
/// generation read before the walk, so a flush during the walk outdates it.
///
/// # Concurrency
/// The cache is a [`Tlb`], with the guarantees its documentation gives for racing
/// lookups, insertions, flushes, removals and resizes. What this type adds is the mask of
/// large-page sizes (`large_shifts`), and one invariant over it: *a current large page's
/// entry (one of the cache's flush count) can exist only once its size is in the mask*,
/// so [`TranslationCache::flush_entry`], which visits the sizes in the mask, cannot miss
/// one that could be served.
/// - **A translation** is a lookup of the base-page key, then of the large-page key for
///   each size in the mask, then a walk whose result is offered under the generation read
///   before the walk. A large page's size is set in the mask (`SeqCst`) before its entry
///   is offered.
/// - **A single-entry flush** removes the base-page key ([`Tlb::remove`], which first
///   cancels insertions in flight), then reads the mask (`SeqCst`) and removes the
///   large-page key of each size in it. An insertion of a size the mask read did not show
///   set that size after the cancellation (the `SeqCst` order of the four operations),
///   so its lock-time check sees the cancellation and it does not land; one whose size
///   was shown is handled by the removal ([`Tlb`]'s argument). Once the flush returns, no
///   translation walked before it began is served.
/// - **A flush** clears the mask (`SeqCst`), then moves the generation on: lookups after
///   it miss everything before it, and walks in flight are outdated. Every entry left in
///   the slots is stale, so the invariant holds of an empty mask; an insertion that read
///   the new generation read it after the clear, and sets its size after it (its own
///   `SeqCst` order: generation, then mask), so the clear cannot take that size away. The
///   misses after a flush so stop probing for sizes the cache no longer holds.
/// - **A resize** resizes and empties the [`Tlb`] ([`Tlb::set_capacity`]) and leaves the
///   mask as it is. Before issue 13 it cleared the mask after emptying the cache: a
///   2 MiB translation inserted in between lost its size from the mask, a later
///   single-entry flush skipped it, and the old frame came back once another 2 MiB page
///   put the size back.
/// - **Enabling and disabling** are [`VmiCore`](crate::VmiCore)'s: a disabled cache is
///   flushed and not consulted; a translation already past the check finishes through
///   the cache, with the guarantees above.
pub(crate) struct TranslationCache<A: Architecture, const N: usize> {
    tlb: Tlb<N>,
    /// Bit `s` is set once a page of `1 << s` bytes was offered since the last flush:
    /// the sizes a base-page miss probes and a single-entry flush visits. Cleared by
    /// [`TranslationCache::flush`] only (a resize leaves it: the type's notes).
    large_shifts: AtomicU64,
    arch: PhantomData<fn() -> A>,
}

impl<A: Architecture, const N: usize> TranslationCache<A, N> {
    const PAGE_SIZE: u64 = A::PAGE_SIZE;
    const PAGE_SHIFT: u32 = A::PAGE_SHIFT;
    /// The offset bits of an address in a base page (`PAGE_SIZE - 1`).
    const OFFSET_MASK: u64 = !A::PAGE_MASK;

    /// An empty cache at full capacity.
    pub(crate) const fn new() -> Self {
        Self {
            tlb: Tlb::new(),
            large_shifts: AtomicU64::new(0),
            arch: PhantomData,
        }
    }

    /// The translation of `va` under `root`: from the cache when it holds one, else from
    /// `walk(va, raw_root)`, whose result is offered to the cache (a large page as one
    /// entry). `root` is the key, `raw_root` the root as the caller gave it; both go to
    /// `walk` as arguments, not captures, so that a hit stores neither.
    ///
    /// # Errors
    /// As `walk`'s.
    ///
    /// A miss in a full set updates the thread's bypass state: `bypass` says below how
    /// many hits per such miss the cache steps aside (the caller knows what a walk costs
    /// against a hit), and [`Local::bypassing`] then tells the caller to walk without
    /// calling this. See [`Bypass`]. (`VmiCore` calls [`TranslationCache::hit`]
    /// and [`TranslationCache::miss`] apart; the tests, this.)
    #[cfg(test)]
    pub(crate) fn translate(
        &self,
        local: &Local<'_>,
        root: Pa,
        va: Va,
        raw_root: Pa,
        bypass: impl FnOnce() -> Bypass,
        walk: impl FnOnce(Va, Pa) -> Result<Translation, VmiError>,
    ) -> Result<Translation, VmiError> {
        match self.hit(local, root, va) {
            Some(t) => Ok(t),
            None => self.miss(local, root, va, raw_root, bypass, walk),
        }
    }

    /// The hit path of [`TranslationCache::translate`]: the base page's key, counted as a
    /// hit when found; `None`, counting nothing, when not (then
    /// [`TranslationCache::miss`] counts). Apart from the miss so that a caller can keep
    /// the miss out of line, and a hit needs no saved registers.
    #[inline(always)]
    pub(crate) fn hit(&self, local: &Local<'_>, root: Pa, va: Va) -> Option<Translation> {
        let generation = self.tlb.generation();
        // After a large page's hit, that size first: a stream of translations in large
        // pages (a kernel's direct map) then takes one probe, not one per size.
        let last = local.last_shift();
        if last != 0
            && let Some(entry) = self
                .tlb
                .probe(root.0, Self::large_key(va, last), generation)
        {
            local.record(true);
            return Some(Self::unpack(entry, va, Self::offset_mask(last)));
        }
        let vpn = va.0 >> Self::PAGE_SHIFT;
        let entry = self.tlb.probe(root.0, vpn, generation)?;
        if last != 0 {
            local.set_last_shift(0);
        }
        local.record(true);
        Some(Self::unpack(entry, va, Self::OFFSET_MASK))
    }

    /// The calling thread's counters, for one translation: whether it should walk
    /// without looking ([`Local::bypassing`], see [`Bypass`]), then its counts in
    /// [`TranslationCache::translate`]. One stripe for all of them, so that the bypass
    /// state a miss sets is the one the next translation at the same call site reads.
    #[inline(always)]
    pub(crate) fn local(&self) -> Local<'_> {
        self.tlb.local()
    }

    /// The current generation, to read before walking for [`TranslationCache::look`]
    /// and [`TranslationCache::insert_walked`].
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.tlb.generation()
    }

    /// The lookup of one address of a batch, under the policy of
    /// [`TranslationCache::translate`] and with its counts, for the thread whose counters
    /// are `local`: a thread that bypasses the cache does not look ([`Looked::Bypassed`],
    /// its miss counted ahead as there); a hit counts a hit; a miss of every key counts a
    /// miss and, in a full set, updates the thread's bypass state (`bypass`, as there).
    /// The caller walks what was not found, and offers the walks of [`Looked::Miss`]
    /// with [`TranslationCache::insert_walked`], as `translate` does.
    #[inline]
    pub(crate) fn look(
        &self,
        local: &Local<'_>,
        root: Pa,
        va: Va,
        generation: u64,
        bypass: impl FnOnce() -> Bypass,
    ) -> Looked {
        if local.bypassing() {
            return Looked::Bypassed;
        }
        if let Some(t) = self.hit(local, root, va) {
            return Looked::Hit(t);
        }
        match self.missed_base(local, root, va, generation, bypass) {
            Ok(t) => Looked::Hit(t),
            Err(_) => Looked::Miss,
        }
    }

    /// Offers `t`, the walk of `va` under `root` that followed a read of `generation`,
    /// as a miss of [`TranslationCache::translate`] does.
    #[inline]
    pub(crate) fn insert_walked(&self, root: Pa, va: Va, t: &Translation, generation: u64) {
        self.offer(root, va, va.0 >> Self::PAGE_SHIFT, t, generation);
    }

    /// The miss path of [`TranslationCache::translate`]: the large-page key for each
    /// size the cache holds, then a walk. An offer evicts only for a page that missed twice in a
    /// row in its set ([`Tlb::offer`]), so a scan over more pages than the cache holds (a
    /// bulk read, random reads over a large range) neither flushes the working set out
    /// nor pays a slot write's locked instruction per page.
    ///
    /// It re-reads the generation (before the walk, which is what the offer needs) and
    /// the base page's set: a hit's path passes on nothing.
    #[inline]
    pub(crate) fn miss(
        &self,
        local: &Local<'_>,
        root: Pa,
        va: Va,
        raw_root: Pa,
        bypass: impl FnOnce() -> Bypass,
        walk: impl FnOnce(Va, Pa) -> Result<Translation, VmiError>,
    ) -> Result<Translation, VmiError> {
        const {
            assert!(
                A::PAGE_SHIFT >= 9,
                "the TLB packs flags and a size in the page offset bits"
            )
        };
        let generation = self.tlb.generation();
        let hint = match self.missed_base(local, root, va, generation, bypass) {
            Ok(t) => return Ok(t),
            Err(hint) => hint,
        };
        let vpn = va.0 >> Self::PAGE_SHIFT;
        let t = walk(va, raw_root)?;
        if t.page_size == Self::PAGE_SIZE {
            // The base page's key, in the set the probe saw.
            self.tlb
                .offer_hinted(hint, root.0, vpn, Self::pack(&t), generation);
        } else {
            self.offer(root, va, vpn, &t, generation);
        }
        Ok(t)
    }

    /// After the base page's key missed: the large-page key of each size the cache
    /// holds, a hit counted as one (and its size probed first next time); else a miss
    /// counted, and in a full set the bypass state updated (a capacity miss), and the
    /// base page's set looked at for the offer.
    #[inline]
    fn missed_base(
        &self,
        local: &Local<'_>,
        root: Pa,
        va: Va,
        generation: u64,
        bypass: impl FnOnce() -> Bypass,
    ) -> Result<Translation, MissHint> {
        if let Some((t, shift)) = self.probe_large(root, va, generation) {
            local.set_last_shift(shift);
            local.record(true);
            return Ok(t);
        }
        local.record(false);
        let hint = self.tlb.look(root.0, va.0 >> Self::PAGE_SHIFT, generation);
        if hint.full() {
            local.capacity_miss(bypass());
        }
        Err(hint)
    }

    /// The large-page translation of `va`, for each large size the cache has held.
    #[inline]
    fn probe_large(&self, root: Pa, va: Va, generation: u64) -> Option<(Translation, u32)> {
        let mut shifts = self.large_shifts.load(Ordering::Relaxed);
        while shifts != 0 {
            let shift = shifts.trailing_zeros();
            shifts ^= 1 << shift;
            if let Some(entry) = self
                .tlb
                .probe(root.0, Self::large_key(va, shift), generation)
            {
                return Some((Self::unpack(entry, va, Self::offset_mask(shift)), shift));
            }
        }
        None
    }

    /// The offset bits of a page of `1 << shift` bytes.
    #[inline]
    fn offset_mask(shift: u32) -> u64 {
        1u64.checked_shl(shift)
            .map_or(u64::MAX, |size| size.wrapping_sub(1))
    }

    /// Offers `t`, the translation of `va`, under the key of its page size.
    fn offer(&self, root: Pa, va: Va, vpn: u64, t: &Translation, generation: u64) {
        if t.page_size == Self::PAGE_SIZE {
            self.tlb.offer(root.0, vpn, Self::pack(t), generation);
        } else if t.page_size.is_power_of_two() && t.page_size > Self::PAGE_SIZE {
            let shift = t.page_size.trailing_zeros();
            if shift < TLB_LARGE_TAG {
                // The size joins the mask before its entry can exist (the concurrency
                // notes of the type).
                let bit = 1u64 << shift;
                if self.large_shifts.load(Ordering::SeqCst) & bit == 0 {
                    self.large_shifts.fetch_or(bit, Ordering::SeqCst);
                }
                self.tlb.offer(
                    root.0,
                    Self::large_key(va, shift),
                    Self::pack(t),
                    generation,
                );
            }
        }
    }

    /// Drops the cached translation of the page that holds `va` under `root`, whatever
    /// the page's size.
    ///
    /// Once it returns, no translation of the page walked before it began is served
    /// (the concurrency notes of the type).
    pub(crate) fn flush_entry(&self, root: Pa, va: Va) {
        // The base page's removal cancels insertions in flight first; the mask is read
        // after it, so an insertion whose size the mask read here lacks set that size
        // after the cancellation, and does not land.
        self.tlb.remove(root.0, va.0 >> Self::PAGE_SHIFT);
        let mut shifts = self.large_shifts.load(Ordering::SeqCst);
        while shifts != 0 {
            let shift = shifts.trailing_zeros();
            shifts ^= 1 << shift;
            self.tlb
                .remove_cancelled(root.0, Self::large_key(va, shift));
        }
    }

    /// Drops every cached translation, and forgets which large-page sizes were seen.
    /// O(1): the generation moves on.
    pub(crate) fn flush(&self) {
        // Before the generation moves (the concurrency notes of the type).
        self.large_shifts.store(0, Ordering::SeqCst);
        self.tlb.flush();
    }

    /// Sets the effective capacity: `size` rounded down to whole sets, at least one set
    /// unless `size` is zero, at most `N`. Empties the cache, but not the mask of
    /// large-page sizes (the concurrency notes of the type). O(N).
    pub(crate) fn set_capacity(&self, size: usize) {
        self.tlb.set_capacity(size);
    }

    /// The counters. Each translation counts one hit or one miss, whichever key
    /// answered; a large page is one entry.
    pub(crate) fn metrics(&self) -> CacheMetrics {
        self.tlb.metrics()
    }

    /// The key of the large page of `1 << shift` bytes that holds `va`.
    #[inline]
    fn large_key(va: Va, shift: u32) -> u64 {
        va.0.checked_shr(shift).unwrap_or(0) | (u64::from(shift) << TLB_LARGE_TAG)
    }

    /// The translation a TLB word holds, for `va` in its page, whose offset bits are
    /// `offset_mask`.
    #[inline]
    fn unpack(entry: u64, va: Va, offset_mask: u64) -> Translation {
        const {
            assert!(
                MemoryAccess::RWX.bits() as u64 == TLB_ACCESS,
                "the word's rights are MemoryAccess's bits"
            )
        };
        Translation {
            pa: Pa((entry & !offset_mask & A::PAGE_MASK) | (va.0 & offset_mask)),
            page_size: 1 << ((entry & TLB_SHIFT_MASK) >> TLB_SHIFT),
            // The low three bits, as `pack` stored them (R always among them).
            access: MemoryAccess::from_bits_retain((entry & TLB_ACCESS) as u8),
            user: entry & TLB_U != 0,
        }
    }

    /// The TLB word of a translation.
    #[inline]
    fn pack(t: &Translation) -> u64 {
        (t.pa.0 & !t.page_size.wrapping_sub(1) & A::PAGE_MASK)
            | (u64::from(t.page_size.trailing_zeros()) << TLB_SHIFT)
            | u64::from((t.access | MemoryAccess::R).bits()) & TLB_ACCESS
            | if t.user { TLB_U } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use core::cell::Cell;

    use super::*;
    use crate::arch::amd64::Amd64;
    use crate::error::{FaultReason, PageFault};

    type Cache = TranslationCache<Amd64, CAPACITY>;

    const ROOT: Pa = Pa(0x1000);
    const OTHER_ROOT: Pa = Pa(0x7000);

    fn page(pa: u64, page_size: u64, access: MemoryAccess, user: bool) -> Translation {
        Translation {
            pa: Pa(pa),
            page_size,
            access,
            user,
        }
    }

    /// Translates `va` through `cache`, counting the walks; the walk answers `t` for any
    /// address of its page.
    fn through(cache: &Cache, root: Pa, va: u64, t: Translation, walks: &Cell<u32>) -> Translation {
        let mask = t.page_size - 1;
        let r = cache.translate(
            &cache.local(),
            root,
            Va(va),
            root,
            || Bypass::NEVER,
            |_, _| {
                walks.set(walks.get() + 1);
                Ok(Translation {
                    pa: Pa((t.pa.0 & !mask) | (va & mask)),
                    ..t
                })
            },
        );
        r.expect("walk succeeds")
    }

    #[test]
    fn word_format_round_trips_rights_and_size() {
        let cases = [
            page(0x0012_3000, 0x1000, MemoryAccess::R, false),
            page(0x0012_3000, 0x1000, MemoryAccess::RW, true),
            page(0x0040_0000, 0x20_0000, MemoryAccess::RX, false),
            page(0x4000_0000, 0x4000_0000, MemoryAccess::RWX, true),
            page(0x000f_ffff_ffff_f000, 0x1000, MemoryAccess::RWX, false),
        ];
        for t in cases {
            let word = Cache::pack(&t);
            let va = Va(0xffff_8000_0000_0000 | (t.page_size - 8));
            let mask = t.page_size - 1;
            let back = Cache::unpack(word, va, mask);
            assert_eq!(back.pa.0, (t.pa.0 & !mask) | (va.0 & mask), "{t:?}");
            assert_eq!(
                (back.page_size, back.access, back.user),
                (t.page_size, t.access, t.user)
            );
        }
        // The offset bits of the frame never leak into the word's flags.
        let odd = page(0x0012_3fff, 0x1000, MemoryAccess::R, false);
        let word = Cache::pack(&odd);
        assert_eq!(word & !(TLB_SHIFT_MASK | TLB_ACCESS), 0x0012_3000);
        assert_eq!(word & TLB_ACCESS, u64::from(MemoryAccess::R.bits()));
    }

    #[test]
    fn insert_then_lookup_hits_without_walking() {
        let cache = Cache::new();
        let walks = Cell::new(0);
        let t = page(0x0abc_d000, 0x1000, MemoryAccess::RW, true);
        assert_eq!(
            through(&cache, ROOT, 0x7fff_0000_0123, t, &walks).pa,
            Pa(0x0abc_d123)
        );
        assert_eq!(
            through(&cache, ROOT, 0x7fff_0000_0ff8, t, &walks).pa,
            Pa(0x0abc_dff8)
        );
        assert_eq!(walks.get(), 1);
        // Another root is another address space: a miss.
        through(&cache, OTHER_ROOT, 0x7fff_0000_0123, t, &walks);
        assert_eq!(walks.get(), 2);
        let m = cache.metrics();
        assert_eq!((m.hits, m.misses, m.len), (1, 2, 2));
    }

    #[test]
    fn a_failed_walk_is_not_cached() {
        let cache = Cache::new();
        let fault = || {
            Err(VmiError::Translation(PageFault {
                va: Va(0x5000),
                root: ROOT,
                level: 1,
                entry: Pa(0x3028),
                value: 0,
                reason: FaultReason::NotPresent,
            }))
        };
        assert!(
            cache
                .translate(
                    &cache.local(),
                    ROOT,
                    Va(0x5000),
                    ROOT,
                    || Bypass::NEVER,
                    |_, _| fault()
                )
                .is_err()
        );
        assert!(
            cache
                .translate(
                    &cache.local(),
                    ROOT,
                    Va(0x5000),
                    ROOT,
                    || Bypass::NEVER,
                    |_, _| fault()
                )
                .is_err()
        );
        assert_eq!(cache.metrics().misses, 2);
        assert_eq!(cache.metrics().len, 0);
    }

    #[test]
    fn flush_entry_drops_one_page_of_any_size() {
        let cache = Cache::new();
        let walks = Cell::new(0);
        let small = page(0x0010_0000, 0x1000, MemoryAccess::R, false);
        let large = page(0x0060_0000, 0x20_0000, MemoryAccess::RWX, false);
        through(&cache, ROOT, 0x2000, small, &walks);
        through(&cache, ROOT, 0x3000, small, &walks);
        through(&cache, ROOT, 0x40_0000, large, &walks);
        assert_eq!(walks.get(), 3);
        cache.flush_entry(ROOT, Va(0x2abc));
        cache.flush_entry(ROOT, Va(0x5f_ffff));
        through(&cache, ROOT, 0x3000, small, &walks);
        assert_eq!(walks.get(), 3, "the neighbour stays");
        through(&cache, ROOT, 0x2000, small, &walks);
        through(&cache, ROOT, 0x40_1000, large, &walks);
        assert_eq!(walks.get(), 5, "both flushed pages walk again");
    }

    #[test]
    fn flush_all_outdates_every_entry_and_walks_in_flight() {
        let cache = Cache::new();
        let walks = Cell::new(0);
        let small = page(0x0010_0000, 0x1000, MemoryAccess::R, false);
        let large = page(0x4000_0000, 0x4000_0000, MemoryAccess::RW, true);
        through(&cache, ROOT, 0x1000, small, &walks);
        through(&cache, ROOT, 0x8000_0000, large, &walks);
        cache.flush();
        through(&cache, ROOT, 0x1000, small, &walks);
        through(&cache, ROOT, 0x8000_0000, large, &walks);
        assert_eq!(walks.get(), 4);
        // A flush while the walk runs: its result must not be served afterwards.
        let r = cache.translate(
            &cache.local(),
            ROOT,
            Va(0x9000),
            ROOT,
            || Bypass::NEVER,
            |_, _| {
                cache.flush();
                Ok(small)
            },
        );
        assert_eq!(r.map(|t| t.pa), Ok(small.pa));
        through(&cache, ROOT, 0x9000, small, &walks);
        assert_eq!(walks.get(), 5, "the walk raced by a flush was not cached");
    }

    #[test]
    fn flush_forgets_the_large_sizes_and_they_come_back() {
        let cache = Cache::new();
        let walks = Cell::new(0);
        let two_mib = page(0x0020_0000, 0x20_0000, MemoryAccess::RX, false);
        let small = page(0x0010_0000, 0x1000, MemoryAccess::R, false);
        through(&cache, ROOT, 0x40_0000, two_mib, &walks);
        assert_eq!(cache.large_shifts.load(Ordering::Relaxed), 1 << 21);
        cache.flush();
        assert_eq!(cache.large_shifts.load(Ordering::Relaxed), 0);
        // A base page after the flush: no size to probe, and it caches as before.
        through(&cache, ROOT, 0x1000, small, &walks);
        through(&cache, ROOT, 0x1000, small, &walks);
        assert_eq!(walks.get(), 2);
        // The 2 MiB page walks once more, brings its size back, and hits again.
        through(&cache, ROOT, 0x40_1000, two_mib, &walks);
        through(&cache, ROOT, 0x5f_f000, two_mib, &walks);
        assert_eq!(walks.get(), 3);
        assert_eq!(cache.large_shifts.load(Ordering::Relaxed), 1 << 21);
        // A single-entry flush after that still finds it.
        cache.flush_entry(ROOT, Va(0x40_0000));
        through(&cache, ROOT, 0x40_2000, two_mib, &walks);
        assert_eq!(walks.get(), 4);
        // A resize empties the cache but keeps the mask (issue 13's race).
        cache.set_capacity(8);
        assert_eq!(cache.large_shifts.load(Ordering::Relaxed), 1 << 21);
    }

    #[test]
    fn large_pages_are_one_entry_and_sizes_never_alias() {
        let cache = Cache::new();
        let walks = Cell::new(0);
        let two_mib = page(0x0020_0000, 0x20_0000, MemoryAccess::RX, false);
        let one_gib = page(0x8000_0000, 0x4000_0000, MemoryAccess::RW, true);
        // Every 4 KiB page of the 2 MiB leaf answers from one entry.
        for va in (0x40_0000..0x60_0000u64).step_by(0x3_1000) {
            let t = through(&cache, ROOT, va, two_mib, &walks);
            assert_eq!(t.pa.0, 0x20_0000 | (va & 0x1f_ffff));
            assert_eq!(t.page_size, 0x20_0000);
        }
        assert_eq!(walks.get(), 1);
        // A 1 GiB leaf whose key, shifted, would equal the 2 MiB key of another address.
        let t = through(&cache, ROOT, 0x4000_0000 | 0x1234, one_gib, &walks);
        assert_eq!((t.pa.0, t.user), (0x8000_1234, true));
        assert_eq!(walks.get(), 2);
        let t = through(&cache, ROOT, 0x7fff_f000, one_gib, &walks);
        assert_eq!((t.pa.0, t.page_size), (0xbfff_f000, 0x4000_0000));
        assert_eq!(walks.get(), 2);
        assert_eq!(cache.metrics().len, 2);
    }

    #[test]
    fn resize_empties_and_bounds_the_cache() {
        let cache = Cache::new();
        let walks = Cell::new(0);
        assert_eq!(cache.metrics().capacity, CAPACITY);
        let small = page(0x0010_0000, 0x1000, MemoryAccess::R, false);
        let large = page(0x0020_0000, 0x20_0000, MemoryAccess::R, false);
        through(&cache, ROOT, 0x1000, small, &walks);
        through(&cache, ROOT, 0x20_0000, large, &walks);
        cache.set_capacity(8);
        let m = cache.metrics();
        assert_eq!((m.len, m.capacity), (0, 8));
        through(&cache, ROOT, 0x1000, small, &walks);
        through(&cache, ROOT, 0x20_0000, large, &walks);
        assert_eq!(walks.get(), 4);
        for i in 0..64u64 {
            through(&cache, ROOT, 0x10_0000 + i * 0x1000, small, &walks);
            through(&cache, ROOT, 0x10_0000 + i * 0x1000, small, &walks);
        }
        assert!(cache.metrics().len <= 8);
        cache.set_capacity(0);
        through(&cache, ROOT, 0x1000, small, &walks);
        let before = walks.get();
        through(&cache, ROOT, 0x1000, small, &walks);
        assert_eq!(
            walks.get(),
            before + 1,
            "a zero-capacity cache holds nothing"
        );
        assert_eq!(cache.metrics().capacity, 0);
    }

    /// A thread whose translations keep missing in a full cache walks without looking,
    /// but for one translation in [`Bypass::EVERY`]; hits bring it back; cold misses
    /// (free or stale ways, as after a flush) never start a bypass; and every
    /// translation counts one hit or one miss throughout.
    #[test]
    fn the_cache_steps_aside_for_capacity_misses_and_comes_back_for_hits() {
        // One set of four ways: every key meets in it.
        let cache: TranslationCache<Amd64, 4> = TranslationCache::new();
        let bypass = Bypass { threshold: 3 << 4 };
        let walks = Cell::new(0u32);
        let mut translations = 0u64;
        let mut go = |vpn: u64| {
            translations += 1;
            let va = Va(vpn << 12 | 0x18);
            let walk = |va: Va, _| {
                walks.set(walks.get() + 1);
                Ok(page(va.0, 0x1000, MemoryAccess::RW, false))
            };
            // As `VmiCore::translate` does: one stripe for the check and the lookup.
            let local = cache.local();
            let r = if local.bypassing() {
                walk(va, ROOT)
            } else {
                cache.translate(&local, ROOT, va, ROOT, || bypass, walk)
            };
            assert_eq!(r.map(|t| t.pa.0), Ok(vpn << 12 | 0x18));
            translations
        };
        // Four cold misses fill the set; they start nothing.
        for vpn in 0..4 {
            go(vpn);
        }
        // Misses in the full set, each turned away or admitted by the filter: from
        // eight hits per miss, eight misses in a row take the average below three.
        let mut n = 0;
        for vpn in 100..108 {
            n = go(vpn);
        }
        // The bypass counts its lookups' misses ahead; the counters take off the ones
        // not yet made: exact at any moment.
        let m = cache.metrics();
        assert_eq!(m.hits + m.misses, n);
        let held = (0..4)
            .chain(100..108)
            .find(|&v| cache.tlb.probe(ROOT.0, v, cache.generation()).is_some())
            .expect("the set holds four of the keys");
        // Bypassing: a cached page is walked for the next EVERY - 1 translations.
        let before = walks.get();
        for _ in 0..Bypass::EVERY - 1 {
            go(held);
        }
        assert_eq!(walks.get() - before, Bypass::EVERY as u32 - 1);
        // The sample looks, and hits; the hits that follow (no bypass is started by a
        // hit) keep the cache in use, and the next capacity miss ends the bypass.
        let before = walks.get();
        for _ in 0..40 {
            go(held);
        }
        assert_eq!(walks.get(), before, "hits after the sample do not walk");
        go(200);
        let before = walks.get();
        go(held);
        assert_eq!(walks.get(), before, "the run of hits ended the bypass");
        let n = go(held);
        let m = cache.metrics();
        assert_eq!(m.hits + m.misses, n);

        // After a flush, every way is stale: cold misses, which do not count.
        let cache: TranslationCache<Amd64, 4> = TranslationCache::new();
        for round in 0..20u64 {
            cache.flush();
            for vpn in 0..4 {
                let va = Va((round * 8 + vpn) << 12);
                let _ = cache.translate(
                    &cache.local(),
                    ROOT,
                    va,
                    ROOT,
                    || bypass,
                    |va, _| Ok(page(va.0, 0x1000, MemoryAccess::RW, false)),
                );
            }
        }
        assert!(
            !cache.tlb.local().bypassing(),
            "cold misses started a bypass"
        );
    }

    /// A large page's hit after a base-page miss in a full set is a hit, not a capacity
    /// miss: a stream of large-page translations never starts a bypass.
    #[test]
    fn large_page_hits_behind_a_full_set_never_start_a_bypass() {
        // One set of four ways: three base pages and one 2 MiB page fill it.
        let cache: TranslationCache<Amd64, 4> = TranslationCache::new();
        let bypass = Bypass { threshold: 3 << 4 };
        let walks = Cell::new(0u32);
        let go = |va: u64, size: u64| {
            let local = cache.local();
            let walk = |va: Va, _| {
                walks.set(walks.get() + 1);
                Ok(page(va.0, size, MemoryAccess::RW, false))
            };
            let r = if local.bypassing() {
                walk(Va(va), ROOT)
            } else {
                cache.translate(&local, ROOT, Va(va), ROOT, || bypass, walk)
            };
            assert_eq!(r.map(|t| t.pa.0), Ok(va));
        };
        for vpn in 1..=3u64 {
            go(vpn << 12, 0x1000);
        }
        let large = 0x4000_0000u64;
        go(large, 0x20_0000);
        assert_eq!(walks.get(), 4);
        for i in 0..200u64 {
            go(large + (i % 512) * 0x1000 + 8, 0x20_0000);
        }
        assert_eq!(
            walks.get(),
            4,
            "large-page hits were walked: a bypass started"
        );
        let m = cache.metrics();
        assert_eq!((m.hits, m.misses), (200, 4));
    }

    /// After a large page's hit, that size is probed first: a stream of large-page
    /// translations hits without walking, a base page's translation in between still
    /// finds its own entry (and resets the order), a page of the other large size is
    /// found, and neither a single-entry flush nor a full flush is hidden by the order.
    #[test]
    fn the_last_large_size_is_probed_first_and_hides_no_flush() {
        let cache = Cache::new();
        let walks = Cell::new(0);
        let small = page(0x0010_0000, 0x1000, MemoryAccess::R, false);
        let mib2 = page(0x0060_0000, 0x20_0000, MemoryAccess::RW, false);
        let gib1 = page(0x4000_0000, 0x4000_0000, MemoryAccess::RWX, true);
        through(&cache, ROOT, 0x2000, small, &walks);
        through(&cache, ROOT, 0x40_0000, mib2, &walks);
        through(&cache, ROOT, 0x8000_0000, gib1, &walks);
        assert_eq!(walks.get(), 3);
        for i in 0..64u64 {
            let t = through(&cache, ROOT, 0x40_0000 + i * 0x8008, mib2, &walks);
            assert_eq!(t.pa.0, 0x60_0000 + i * 0x8008);
            assert_eq!(t.page_size, 0x20_0000);
            let t = through(&cache, ROOT, 0x2000 + (i & 0xff8), small, &walks);
            assert_eq!((t.pa.0, t.page_size), (0x10_0000 + (i & 0xff8), 0x1000));
            let t = through(&cache, ROOT, 0x8000_0000 + (i << 20), gib1, &walks);
            assert_eq!((t.pa.0, t.user), (0x4000_0000 + (i << 20), true));
        }
        assert_eq!(
            walks.get(),
            3,
            "every translation after the first three hit"
        );
        // The last hit was the 1 GiB page: flushing it must not leave it served.
        cache.flush_entry(ROOT, Va(0x8000_0000));
        through(&cache, ROOT, 0x8000_1000, gib1, &walks);
        assert_eq!(walks.get(), 4, "the flushed 1 GiB page walks again");
        cache.flush();
        through(&cache, ROOT, 0x8000_2000, gib1, &walks);
        through(&cache, ROOT, 0x40_0000, mib2, &walks);
        assert_eq!(
            walks.get(),
            6,
            "a full flush outdates the first-probed size too"
        );
        let m = cache.metrics();
        assert_eq!(m.hits + m.misses, 3 + 3 * 64 + 3);
    }
}
