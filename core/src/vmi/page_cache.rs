//! The page (GFN) cache: the driver's page handles, and the physical reads through them.

use core::sync::atomic::Ordering;

use super::VmiCore;
use crate::addr::{Gfn, Pa};
use crate::arch::Architecture;
use crate::cache::{CacheKey, CacheMetrics};
use crate::driver::{PageRef, VmiDriver};
use crate::error::VmiError;
use crate::fmt::{log_debug, log_trace};

/// Frames key the page cache by their number. The generic containers of
/// [`cache`](crate::cache) know no guest type: the impl lives with its one user.
impl CacheKey for Gfn {
    #[inline]
    fn hash64(&self) -> u64 {
        self.0
    }
}

impl<D: VmiDriver, const TLB: usize, const PAGES: usize> VmiCore<D, TLB, PAGES> {
    /// Enables the page cache with an effective capacity of `size` entries, as
    /// [`VmiCore::resize_gfn_cache`].
    pub fn with_gfn_cache(self, size: usize) -> Self {
        self.resize_gfn_cache(size);
        self.enable_gfn_cache();
        self
    }

    /// Enables the page cache (the default).
    ///
    /// The page cache holds the driver's page handles. A driver that lends its whole
    /// memory as one slice ([`VmiDriver::physical_memory`], as `HostDriver` does for
    /// read-only memory) has no handles worth caching: reads of its memory bypass the page
    /// cache even when it is enabled, and its counters stay at zero.
    pub fn enable_gfn_cache(&self) {
        if !self.gfn_cache_enabled.swap(true, Ordering::Relaxed) {
            log_debug!("page cache: enabled");
        }
    }

    /// Disables the page cache and drops its entries. Reads then go to
    /// [`VmiDriver::read_physical`] directly: the fastest path for a driver whose memory
    /// is mapped into this process.
    pub fn disable_gfn_cache(&self) {
        self.gfn_cache_enabled.store(false, Ordering::Relaxed);
        self.gfn_cache.clear();
        log_debug!("page cache: disabled and emptied");
    }

    /// Sets the page cache's effective capacity: `size` rounded down to whole sets of
    /// four, at least one set unless `size` is zero, at most `PAGES` (the type's
    /// capacity). Empties the cache. O(`PAGES`).
    pub fn resize_gfn_cache(&self, size: usize) {
        self.gfn_cache.set_capacity(size);
        log_debug!(
            "page cache: resized to {} entries (asked {}, at most {})",
            self.gfn_cache.capacity(),
            size,
            PAGES
        );
    }

    /// Drops one frame from the page cache.
    pub fn flush_gfn_cache_entry(&self, gfn: Gfn) {
        self.gfn_cache.remove(&gfn);
    }

    /// Drops every frame from the page cache. O(capacity).
    pub fn flush_gfn_cache(&self) {
        self.gfn_cache.clear();
        log_debug!("page cache: flushed");
    }

    /// The page cache's counters.
    pub fn gfn_cache_metrics(&self) -> CacheMetrics {
        self.gfn_cache.metrics()
    }

    /// Reads within one page of guest-physical memory.
    ///
    /// Small on purpose: with the page cache off it inlines down to the driver's copy, so
    /// a page-table entry read with a constant length becomes a load, not a `memcpy` call.
    #[inline(always)]
    pub(super) fn read_physical_in_page(&self, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
        if !self.page_cache_in_use() {
            return self.driver.read_physical(pa, buf);
        }
        self.read_physical_cached(pa, buf)
    }

    /// Whether reads of guest memory go through the page cache: it is enabled, and the
    /// driver does not lend its whole memory ([`VmiDriver::physical_memory`]). Handles to
    /// memory the driver lends are not worth caching: reading the lent bytes is cheaper
    /// than a cache lookup, so such reads bypass the page cache even when it is enabled.
    #[inline]
    pub(super) fn page_cache_in_use(&self) -> bool {
        // The flag first: with the page cache off, the driver is not asked for its memory
        // (on the path of every read).
        self.gfn_cache_enabled.load(Ordering::Relaxed) && self.driver.physical_memory().is_none()
    }

    /// [`VmiCore::page_cache_in_use`] for a caller that already holds the driver's
    /// `physical_memory()`: the one rule for choosing the page cache's reader.
    #[inline]
    pub(super) fn page_cache_in_use_for(&self, memory: Option<&[u8]>) -> bool {
        self.gfn_cache_enabled.load(Ordering::Relaxed) && memory.is_none()
    }

    /// [`VmiCore::read_physical_in_page`] through the page cache.
    #[inline(never)]
    fn read_physical_cached(&self, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
        let gfn = Gfn(pa.0 >> Self::PAGE_SHIFT);
        let offset = <D::Architecture as Architecture>::page_offset(pa.0);
        if let Some(result) = self
            .gfn_cache
            .with(&gfn, |page| page.read(offset, &mut *buf))
        {
            return result;
        }
        let page = self.driver.read_page(gfn)?;
        let result = page.read(offset, buf);
        self.cache_page(gfn, page);
        result
    }

    /// Inserts a page the driver lent into the page cache, logging what it evicts.
    fn cache_page(&self, gfn: Gfn, page: D::Page) {
        if let Some((evicted, _)) = self.gfn_cache.insert(gfn, page)
            && evicted != gfn
        {
            log_trace!("page cache: evicted {:?} for {:?}", evicted, gfn);
        }
    }

    /// One frame, through the page cache.
    ///
    /// # Errors
    /// As the driver's [`VmiDriver::read_page`].
    pub fn read_page(&self, gfn: Gfn) -> Result<D::Page, VmiError> {
        if self.gfn_cache_enabled.load(Ordering::Relaxed) {
            if let Some(page) = self.gfn_cache.with(&gfn, Clone::clone) {
                return Ok(page);
            }
            let page = self.driver.read_page(gfn)?;
            self.cache_page(gfn, page.clone());
            Ok(page)
        } else {
            self.driver.read_page(gfn)
        }
    }

    pub(super) fn forget_frame(&self, gfn: Gfn) {
        self.gfn_cache.remove(&gfn);
        self.flush_v2p_cache();
    }
}
