//! Virtual-to-physical translation: through the translation cache, or a walk.

use core::sync::atomic::Ordering;

use super::VmiCore;
use crate::access::{AccessContext, AddressContext, TranslationMechanism};
use crate::addr::{Pa, Va};
use crate::arch::{Architecture, PhysRead, Translation, WalkStep};
use crate::cache::{Bypass, CacheMetrics, Local};
use crate::driver::VmiDriver;
use crate::error::VmiError;
use crate::fmt::{log_debug, log_trace};

/// Reads page-table entries for the walker through the core's page path.
pub(super) struct CoreReader<'a, D: VmiDriver, const TLB: usize, const PAGES: usize>(
    pub(super) &'a VmiCore<D, TLB, PAGES>,
);

impl<D: VmiDriver, const TLB: usize, const PAGES: usize> PhysRead
    for CoreReader<'_, D, TLB, PAGES>
{
    #[inline(always)]
    fn read_u64(&self, pa: Pa) -> Result<u64, VmiError> {
        let mut raw = [0u8; 8];
        self.0.read_physical_in_page(pa, &mut raw)?;
        Ok(u64::from_le_bytes(raw))
    }

    #[inline]
    fn read_u32(&self, pa: Pa) -> Result<u32, VmiError> {
        let mut raw = [0u8; 4];
        self.0.read_physical_in_page(pa, &mut raw)?;
        Ok(u32::from_le_bytes(raw))
    }
}

/// Reads page-table entries for the walker straight from the driver, for a core whose page
/// cache is disabled: from the driver's [`VmiDriver::physical_memory`] when it lends one,
/// through [`VmiDriver::read_physical`] otherwise (and for the errors).
pub(super) struct DirectReader<'a, D: VmiDriver> {
    driver: &'a D,
    memory: Option<&'a [u8]>,
}

impl<'a, D: VmiDriver> DirectReader<'a, D> {
    /// A reader of `driver`, through `memory` when the driver lends it.
    #[inline]
    pub(super) fn new(driver: &'a D, memory: Option<&'a [u8]>) -> Self {
        Self { driver, memory }
    }
}

impl<D: VmiDriver> PhysRead for DirectReader<'_, D> {
    #[inline]
    fn read_u64(&self, pa: Pa) -> Result<u64, VmiError> {
        let mut raw = [0u8; 8];
        self.driver.read_physical(pa, &mut raw)?;
        Ok(u64::from_le_bytes(raw))
    }

    #[inline]
    fn read_u32(&self, pa: Pa) -> Result<u32, VmiError> {
        let mut raw = [0u8; 4];
        self.driver.read_physical(pa, &mut raw)?;
        Ok(u32::from_le_bytes(raw))
    }

    #[inline(always)]
    fn read_u64_fast(&self, pa: Pa) -> Option<u64> {
        self.memory?.read_u64_fast(pa)
    }

    #[inline(always)]
    fn physical_memory(&self) -> Option<&[u8]> {
        self.memory
    }
}

impl<D: VmiDriver, const TLB: usize, const PAGES: usize> VmiCore<D, TLB, PAGES> {
    /// Sets how page tables are read (AMD64: the paging mode, MAXPHYADDR, NXE, ...).
    pub fn with_paging(mut self, paging: <D::Architecture as Architecture>::Paging) -> Self {
        self.set_paging(paging);
        self
    }

    /// Sets how page tables are read, and flushes the translation cache.
    pub fn set_paging(&mut self, paging: <D::Architecture as Architecture>::Paging) {
        self.paging = paging;
        self.root_mask = <D::Architecture as Architecture>::root_mask(&self.paging);
        self.plan = <D::Architecture as Architecture>::plan(&self.paging);
        self.flush_v2p_cache();
    }

    /// How page tables are read.
    pub fn paging(&self) -> &<D::Architecture as Architecture>::Paging {
        &self.paging
    }

    /// Enables the translation cache with an effective capacity of `size` entries, as
    /// [`VmiCore::resize_v2p_cache`].
    pub fn with_v2p_cache(self, size: usize) -> Self {
        self.resize_v2p_cache(size);
        self.enable_v2p_cache();
        self
    }

    /// Enables the translation cache.
    pub fn enable_v2p_cache(&self) {
        if !self.v2p_cache_enabled.swap(true, Ordering::Relaxed) {
            log_debug!("translation cache: enabled");
        }
    }

    /// Disables the translation cache and flushes it.
    pub fn disable_v2p_cache(&self) {
        self.v2p_cache_enabled.store(false, Ordering::Relaxed);
        self.flush_v2p_cache();
        log_debug!("translation cache: disabled");
    }

    /// Sets the translation cache's effective capacity: `size` rounded down to whole sets
    /// of four, at least one set unless `size` is zero, at most `TLB` (the type's
    /// capacity), base and large pages together. Empties the cache. O(`TLB`).
    pub fn resize_v2p_cache(&self, size: usize) {
        self.v2p_cache.set_capacity(size);
        log_debug!(
            "translation cache: resized to {} entries (asked {}, at most {})",
            self.v2p_cache.metrics().capacity,
            size,
            TLB
        );
    }

    /// Drops the cached translation of the page that holds `ctx.va` under `ctx.root`,
    /// whatever the page's size.
    ///
    /// The root is compared as the walker reads it
    /// ([`Architecture::root_mask`]): on AMD64, a CR3 with PCID, no-flush or LAM bits
    /// names the same entries as the CR3 without them.
    pub fn flush_v2p_cache_entry(&self, ctx: AddressContext) {
        self.v2p_cache
            .flush_entry(self.root_table(ctx.root), ctx.va);
    }

    /// The key of the translation cache for the root `root`: the top-level table the
    /// walker reads for it, so that every form of one root is one key.
    #[inline]
    pub(super) fn root_table(&self, root: Pa) -> Pa {
        // The root under the architecture's `root_mask`, computed once per `set_paging`.
        Pa(root.0 & self.root_mask)
    }

    /// Drops every cached translation. O(1): the cache's generation moves on, and older
    /// entries are never returned again.
    pub fn flush_v2p_cache(&self) {
        self.v2p_cache.flush();
        // At `trace`: sessions flush at every event, and writes through the core flush.
        log_trace!("translation cache: flushed");
    }

    /// The translation cache's counters. Each translation counts one hit or one miss,
    /// whichever part answered; `len`, `capacity` and `evictions` add both parts up, a
    /// large page being one entry. A translation the cache stepped aside for (see
    /// [`VmiCore::translate`]) counts as a miss.
    pub fn v2p_cache_metrics(&self) -> CacheMetrics {
        self.v2p_cache.metrics()
    }

    /// Translates a virtual address through the translation cache.
    ///
    /// # Errors
    /// [`VmiError::Translation`] naming the level, entry and reason of the failure.
    pub fn translate_address(&self, ctx: AddressContext) -> Result<Pa, VmiError> {
        self.translate(ctx.va, ctx.root).map(|t| t.pa)
    }

    /// Resolves an access context to a guest-physical address (identity for direct
    /// contexts).
    ///
    /// # Errors
    /// As [`VmiCore::translate_address`].
    pub fn translate_access_context(&self, ctx: AccessContext) -> Result<Pa, VmiError> {
        match ctx.mechanism {
            TranslationMechanism::Direct => Ok(Pa(ctx.address)),
            TranslationMechanism::Paging { root } => {
                self.translate(Va(ctx.address), root).map(|t| t.pa)
            }
        }
    }

    /// Translates `va` under `root`, through the translation cache, with the page size and
    /// the effective rights. Cached translations are keyed by the root as the walker
    /// reads it ([`Architecture::root_mask`]), so every form of one root shares them.
    ///
    /// The cache steps aside for a thread whose translations keep missing in it when it
    /// is full (a scan over more pages than it holds), where looking and inserting would
    /// cost more than the hits save: that thread then walks without looking, but for one
    /// translation in 32, whose hits bring the cache back. The bar is three hits per such
    /// miss when the driver lends its memory ([`VmiDriver::physical_memory`]: a walk is
    /// then a few loads), one hit in eight misses otherwise. A miss in a cold cache (after
    /// a flush) does not count. Results are the same either way: a walk is what a miss
    /// does.
    ///
    /// # Errors
    /// As [`VmiCore::translate_address`].
    #[inline]
    pub fn translate(&self, va: Va, root: Pa) -> Result<Translation, VmiError> {
        if !self.v2p_cache_enabled.load(Ordering::Relaxed) {
            return self.translate_uncached(va, root);
        }
        // One stripe of counters for this translation, chosen here; a bypassed one walks
        // as an uncached one does.
        let local = self.v2p_cache.local();
        if local.bypassing() {
            return self.translate_uncached(va, root);
        }
        self.translate_cached(&local, va, root)
    }

    /// [`VmiCore::translate`] through the translation cache: its own function, so that
    /// the uncached and bypassed paths do not pay for the cached one's registers; and
    /// the miss in another, so that a hit saves none.
    #[inline(never)]
    fn translate_cached(
        &self,
        local: &Local<'_>,
        va: Va,
        root: Pa,
    ) -> Result<Translation, VmiError> {
        match self.v2p_cache.hit(local, self.root_table(root), va) {
            Some(t) => Ok(t),
            None => self.translate_missed(local, va, root),
        }
    }

    /// The miss path of [`VmiCore::translate_cached`].
    #[inline(never)]
    fn translate_missed(
        &self,
        local: &Local<'_>,
        va: Va,
        root: Pa,
    ) -> Result<Translation, VmiError> {
        self.v2p_cache.miss(
            local,
            self.root_table(root),
            va,
            root,
            || self.v2p_bypass(),
            |va, root| self.translate_uncached(va, root),
        )
    }

    /// When the translation cache steps aside for a thread ([`Bypass`]): below three hits
    /// per capacity miss where the driver lends its memory (a walk is then four loads
    /// from it, and a miss's probe and insertion cost about three hits' saving:
    /// BENCHMARKS.md has the measurements); below one hit in eight misses otherwise,
    /// where each table entry is a driver read.
    #[inline]
    pub(super) fn v2p_bypass(&self) -> Bypass {
        Bypass {
            threshold: if self.driver.physical_memory().is_some() {
                3 << 4
            } else {
                2
            },
        }
    }

    /// The walker's reader for a core whose page cache is disabled.
    #[inline]
    fn direct_reader(&self) -> DirectReader<'_, D> {
        DirectReader {
            driver: &self.driver,
            memory: self.driver.physical_memory(),
        }
    }

    /// Walks the page tables for `va` under `root`, bypassing the translation cache (the
    /// tables themselves are read through the page cache when it is in use).
    ///
    /// # Errors
    /// As [`VmiCore::translate_address`].
    #[inline]
    pub fn translate_uncached(&self, va: Va, root: Pa) -> Result<Translation, VmiError> {
        match self.driver.physical_memory() {
            // Memory lent as one slice: the walker reads it directly (the page cache is
            // not used for such a driver).
            Some(memory) => <D::Architecture as Architecture>::translate_lent(
                memory,
                || (self.direct_reader(), &self.paging, &self.plan),
                &self.paging,
                &self.plan,
                va,
                root,
            ),
            None => self.translate_unlent(va, root),
        }
    }

    /// [`VmiCore::translate_uncached`] for a driver that lends no memory: through the page
    /// cache when it is on, else through the driver's reads. Out of line, so that the
    /// lent walk keeps its registers.
    #[inline(never)]
    fn translate_unlent(&self, va: Va, root: Pa) -> Result<Translation, VmiError> {
        if self.gfn_cache_enabled.load(Ordering::Relaxed) {
            <D::Architecture as Architecture>::translate_planned(
                &CoreReader(self),
                &self.paging,
                &self.plan,
                va,
                root,
            )
        } else {
            <D::Architecture as Architecture>::translate_planned(
                &DirectReader {
                    driver: &self.driver,
                    memory: None,
                },
                &self.paging,
                &self.plan,
                va,
                root,
            )
        }
    }

    /// Walks the page tables with an explicit paging configuration, calling `observe` on
    /// every entry read (for a detailed walk). Bypasses the translation cache.
    ///
    /// # Errors
    /// As [`VmiCore::translate_address`].
    pub fn translate_with(
        &self,
        paging: &<D::Architecture as Architecture>::Paging,
        va: Va,
        root: Pa,
        observe: impl FnMut(WalkStep),
    ) -> Result<Translation, VmiError> {
        if self.page_cache_in_use() {
            <D::Architecture as Architecture>::translate_observed(
                &CoreReader(self),
                paging,
                va,
                root,
                observe,
            )
        } else {
            <D::Architecture as Architecture>::translate_observed(
                &self.direct_reader(),
                paging,
                va,
                root,
                observe,
            )
        }
    }
}
