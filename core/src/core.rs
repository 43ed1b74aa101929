//! [`VmiCore`]: reads, writes and translations through the caches, over one driver.
//!
//! # Contract
//! Every method that reads guest data (page tables, strings, structures) returns `Ok` or
//! `Err` for any guest contents: it never panics, never loops without bound (strings stop
//! at the configured length limit, walks at the level count) and never allocates more
//! than the caller asked for (the `alloc` string methods allocate at most the limit).

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::access::{AccessContext, AddressContext, MemoryAccess, TranslationMechanism, VmiInfo};
use crate::addr::{Gfn, Pa, Va, VcpuId, View};
use crate::arch::{Architecture, PhysRead, Translation, WalkStep};
use crate::cache::{CacheMetrics, ShardedLru, Tlb};
use crate::driver::{EventMonitorOf, InterruptOf, RegistersOf, VmiDriver};
use crate::error::VmiError;
use crate::event::{VmiEvent, VmiEventResponse};
use crate::page::PageRef;

/// The default cap on string reads, in bytes: 64 KiB.
pub const DEFAULT_STRING_LENGTH_LIMIT: usize = 64 * 1024;

/// Shards of the page cache.
const SHARDS: usize = 8;
/// Entries per shard of the page cache.
const GFN_PER_SHARD: usize = 32;
/// Sets of the translation cache.
const TLB_SETS: usize = 128;
/// Ways per set of the translation cache.
const TLB_WAYS: usize = 4;
/// Sets of the translation cache's large-page part (one entry per 2 MiB, 4 MiB or 1 GiB
/// page), beside the 4 KiB part, as hardware TLBs keep one array per page size.
const TLB_LARGE_SETS: usize = 128;

/// Reads longer than this many pages walk their middle pages without the translation
/// cache ([`VmiCore::read`]).
const SCAN_PAGES: u64 = 16;

/// The compile-time capacity of the page (GFN) cache.
pub const GFN_CACHE_CAPACITY: usize = SHARDS * GFN_PER_SHARD;
/// The compile-time capacity of the translation cache: its base-page part and its
/// large-page part.
pub const V2P_CACHE_CAPACITY: usize = (TLB_SETS + TLB_LARGE_SETS) * TLB_WAYS;

/// A cached translation of one virtual page, packed in one word for the [`Tlb`]: the
/// leaf's frame (aligned to the leaf's size), then in the low bits W, X and U
/// (bits 0..=2) and log2 of the leaf's size (bits 3..=8).
///
/// A base page is keyed by its virtual page number in the base part. A large page is one
/// entry of the large part, keyed by `va >> log2(size)` with log2(size) in bits 58..=63
/// (so a 2 MiB and a 1 GiB page never share a key), and looked up for each size the
/// large part has ever held ([`VmiCore`]'s `v2p_large_shifts`) after a base-part miss.
const TLB_W: u64 = 1 << 0;
const TLB_X: u64 = 1 << 1;
const TLB_U: u64 = 1 << 2;
const TLB_SHIFT: u32 = 3;
const TLB_SHIFT_MASK: u64 = 0x3f << TLB_SHIFT;
/// Where a large-page key keeps log2 of the page size.
const TLB_LARGE_TAG: u32 = 58;

/// The introspection core: one driver, a page cache, a translation cache.
///
/// `VmiCore` is `Send + Sync` when its driver and the driver's page handles are: one core
/// serves every vCPU. The page cache is sharded behind spin locks; the translation cache
/// is read without a lock (seqlocks over atomics, see [`Tlb`]). Writes through the core
/// keep both caches true; changes the guest makes itself are not seen by the translation
/// cache until it is flushed ([`VmiCore::flush_v2p_cache`], O(1), at each event).
///
/// # Examples
/// The [crate documentation](crate) builds a complete driver over a byte slice and reads
/// a string through a 4-level walk; `introvisor-host` has ready-made drivers.
pub struct VmiCore<D: VmiDriver> {
    driver: D,
    paging: <D::Architecture as Architecture>::Paging,
    gfn_cache: ShardedLru<Gfn, D::Page, SHARDS, GFN_PER_SHARD>,
    gfn_cache_enabled: AtomicBool,
    v2p_cache: Tlb<TLB_SETS, TLB_WAYS>,
    v2p_large: Tlb<TLB_LARGE_SETS, TLB_WAYS>,
    /// Bit `s` is set once a page of `1 << s` bytes was cached in `v2p_large`: the sizes
    /// a base-part miss probes. Never cleared but by a resize (a stale bit costs a probe).
    v2p_large_shifts: AtomicU64,
    v2p_cache_enabled: AtomicBool,
    string_limit: AtomicUsize,
    next_gfn: AtomicU64,
    created: Option<Duration>,
}

/// Reads page-table entries for the walker through the core's page path.
struct CoreReader<'a, D: VmiDriver>(&'a VmiCore<D>);

impl<D: VmiDriver> PhysRead for CoreReader<'_, D> {
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
struct DirectReader<'a, D: VmiDriver> {
    driver: &'a D,
    memory: Option<&'a [u8]>,
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
}

impl<D: VmiDriver> VmiCore<D> {
    const PAGE_SIZE: u64 = <D::Architecture as Architecture>::PAGE_SIZE;
    const PAGE_SHIFT: u32 = <D::Architecture as Architecture>::PAGE_SHIFT;

    /// A core over `driver`, both caches enabled at full capacity, the architecture's
    /// default paging, and the default string limit.
    pub fn new(driver: D) -> Self {
        let created = driver.now();
        Self {
            driver,
            paging: Default::default(),
            gfn_cache: ShardedLru::new(),
            gfn_cache_enabled: AtomicBool::new(true),
            v2p_cache: Tlb::new(),
            v2p_large: Tlb::new(),
            v2p_large_shifts: AtomicU64::new(0),
            v2p_cache_enabled: AtomicBool::new(true),
            string_limit: AtomicUsize::new(DEFAULT_STRING_LENGTH_LIMIT),
            next_gfn: AtomicU64::new(0),
            created,
        }
    }

    /// The driver.
    pub fn driver(&self) -> &D {
        &self.driver
    }

    // ----- configuration -------------------------------------------------------------

    /// Sets how page tables are read (AMD64: the paging mode, MAXPHYADDR, NXE, ...).
    pub fn with_paging(mut self, paging: <D::Architecture as Architecture>::Paging) -> Self {
        self.set_paging(paging);
        self
    }

    /// Sets how page tables are read, and flushes the translation cache.
    pub fn set_paging(&mut self, paging: <D::Architecture as Architecture>::Paging) {
        self.paging = paging;
        self.flush_v2p_cache();
    }

    /// How page tables are read.
    pub fn paging(&self) -> &<D::Architecture as Architecture>::Paging {
        &self.paging
    }

    /// Enables the page cache with an effective capacity of `size` entries (at most
    /// [`GFN_CACHE_CAPACITY`]).
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
        self.gfn_cache_enabled.store(true, Ordering::Relaxed);
    }

    /// Disables the page cache and drops its entries. Reads then go to
    /// [`VmiDriver::read_physical`] directly: the fastest path for a driver whose memory
    /// is mapped into this process.
    pub fn disable_gfn_cache(&self) {
        self.gfn_cache_enabled.store(false, Ordering::Relaxed);
        self.gfn_cache.clear();
    }

    /// Sets the page cache's effective capacity (clamped to [`GFN_CACHE_CAPACITY`]).
    pub fn resize_gfn_cache(&self, size: usize) {
        self.gfn_cache.set_capacity(size);
    }

    /// Drops one frame from the page cache.
    pub fn flush_gfn_cache_entry(&self, gfn: Gfn) {
        self.gfn_cache.remove(&gfn);
    }

    /// Drops every frame from the page cache. O(capacity).
    pub fn flush_gfn_cache(&self) {
        self.gfn_cache.clear();
    }

    /// The page cache's counters.
    pub fn gfn_cache_metrics(&self) -> CacheMetrics {
        self.gfn_cache.metrics()
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
        self.v2p_cache_enabled.store(true, Ordering::Relaxed);
    }

    /// Disables the translation cache and flushes it.
    pub fn disable_v2p_cache(&self) {
        self.v2p_cache_enabled.store(false, Ordering::Relaxed);
        self.flush_v2p_cache();
    }

    /// Sets the translation cache's effective capacity: `size` rounded down to whole sets
    /// of four, at least one set unless `size` is zero, at most 512, for base pages, and
    /// the same again for large pages (so at most [`V2P_CACHE_CAPACITY`] in all).
    /// Empties the cache. O(capacity).
    pub fn resize_v2p_cache(&self, size: usize) {
        self.v2p_cache.set_capacity(size);
        self.v2p_large.set_capacity(size);
        self.v2p_large_shifts.store(0, Ordering::Relaxed);
    }

    /// Drops the cached translation of the page that holds `ctx.va` under `ctx.root`,
    /// whatever the page's size.
    pub fn flush_v2p_cache_entry(&self, ctx: AddressContext) {
        self.v2p_cache
            .remove(ctx.root.0, ctx.va.0 >> Self::PAGE_SHIFT);
        let mut shifts = self.v2p_large_shifts.load(Ordering::Relaxed);
        while shifts != 0 {
            let shift = shifts.trailing_zeros();
            shifts &= shifts - 1;
            self.v2p_large
                .remove(ctx.root.0, Self::large_key(ctx.va, shift));
        }
    }

    /// Drops every cached translation. O(1): the cache's generation moves on, and older
    /// entries are never returned again.
    pub fn flush_v2p_cache(&self) {
        self.v2p_cache.flush();
        self.v2p_large.flush();
    }

    /// The translation cache's counters. Each translation counts one hit or one miss,
    /// whichever part answered; `len`, `capacity` and `evictions` add both parts up, a
    /// large page being one entry.
    pub fn v2p_cache_metrics(&self) -> CacheMetrics {
        let mut m = self.v2p_cache.metrics();
        let large = self.v2p_large.metrics();
        m.len = m.len.saturating_add(large.len);
        m.capacity = m.capacity.saturating_add(large.capacity);
        m.evictions = m.evictions.saturating_add(large.evictions);
        m
    }

    /// The key of the large page of `1 << shift` bytes that holds `va`.
    #[inline]
    fn large_key(va: Va, shift: u32) -> u64 {
        va.0.checked_shr(shift).unwrap_or(0) | (u64::from(shift) << TLB_LARGE_TAG)
    }

    /// Sets the default cap on string reads, in bytes.
    pub fn with_read_string_length_limit(self, limit: usize) -> Self {
        self.set_read_string_length_limit(limit);
        self
    }

    /// The default cap on string reads, in bytes.
    pub fn read_string_length_limit(&self) -> usize {
        self.string_limit.load(Ordering::Relaxed)
    }

    /// Sets the default cap on string reads, in bytes.
    pub fn set_read_string_length_limit(&self, limit: usize) {
        self.string_limit.store(limit, Ordering::Relaxed);
    }

    // ----- the VM and its vCPUs ------------------------------------------------------

    /// Time since the core was created, by the driver's clock.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] when the driver has no clock.
    pub fn elapsed(&self) -> Result<Duration, VmiError> {
        match (self.created, self.driver.now()) {
            (Some(start), Some(now)) => Ok(now.saturating_sub(start)),
            _ => Err(VmiError::NotSupported("clock")),
        }
    }

    /// Page geometry, highest frame, vCPU count.
    ///
    /// # Errors
    /// As the driver's.
    pub fn info(&self) -> Result<VmiInfo, VmiError> {
        self.driver.info()
    }

    /// Pauses the VM.
    ///
    /// # Errors
    /// As the driver's.
    pub fn pause(&self) -> Result<(), VmiError> {
        self.driver.pause()
    }

    /// Resumes the VM.
    ///
    /// # Errors
    /// As the driver's.
    pub fn resume(&self) -> Result<(), VmiError> {
        self.driver.resume()
    }

    /// Pauses the VM until the guard is dropped or [`PauseGuard::resume`] is called.
    ///
    /// # Errors
    /// As [`VmiCore::pause`].
    pub fn pause_guard(&self) -> Result<PauseGuard<'_, D>, VmiError> {
        self.driver.pause()?;
        Ok(PauseGuard {
            core: self,
            armed: true,
        })
    }

    /// The registers of a vCPU.
    ///
    /// # Errors
    /// As the driver's.
    pub fn registers(&self, vcpu: VcpuId) -> Result<RegistersOf<D>, VmiError> {
        self.driver.registers(vcpu)
    }

    /// Sets the registers of a vCPU.
    ///
    /// # Errors
    /// As the driver's.
    pub fn set_registers(&self, vcpu: VcpuId, registers: RegistersOf<D>) -> Result<(), VmiError> {
        self.driver.set_registers(vcpu, registers)
    }

    /// The rights of a frame in a view.
    ///
    /// # Errors
    /// As the driver's.
    pub fn memory_access(&self, gfn: Gfn, view: View) -> Result<MemoryAccess, VmiError> {
        self.driver.memory_access(gfn, view)
    }

    /// Sets the rights of a frame in a view.
    ///
    /// # Errors
    /// As the driver's.
    pub fn set_memory_access(
        &self,
        gfn: Gfn,
        view: View,
        access: MemoryAccess,
    ) -> Result<(), VmiError> {
        self.driver.set_memory_access(gfn, view, access)
    }

    /// Allocates the next frame past the highest one in use. Each call returns a frame no
    /// earlier call returned, even from several threads at once.
    ///
    /// # Errors
    /// As the driver's; [`VmiError::CapacityExceeded`] if frame numbers run out.
    pub fn allocate_next_available_gfn(&self) -> Result<Gfn, VmiError> {
        let floor = self.driver.info()?.max_gfn.0.saturating_add(1);
        self.next_gfn.fetch_max(floor, Ordering::Relaxed);
        let gfn = self.next_gfn.fetch_add(1, Ordering::Relaxed);
        if gfn >= u64::MAX >> Self::PAGE_SHIFT {
            return Err(VmiError::CapacityExceeded);
        }
        self.driver.allocate_gfn(Gfn(gfn))?;
        Ok(Gfn(gfn))
    }

    /// Allocates a specific frame.
    ///
    /// # Errors
    /// As the driver's.
    pub fn allocate_gfn(&self, gfn: Gfn) -> Result<(), VmiError> {
        self.driver.allocate_gfn(gfn)?;
        self.forget_frame(gfn);
        Ok(())
    }

    /// Frees a frame; its cached page and every cached translation go too.
    ///
    /// # Errors
    /// As the driver's.
    pub fn free_gfn(&self, gfn: Gfn) -> Result<(), VmiError> {
        self.driver.free_gfn(gfn)?;
        self.forget_frame(gfn);
        Ok(())
    }

    /// The default view.
    ///
    /// # Errors
    /// As the driver's.
    pub fn default_view(&self) -> Result<View, VmiError> {
        self.driver.default_view()
    }

    /// Creates a view with `default_access` on every frame.
    ///
    /// # Errors
    /// As the driver's.
    pub fn create_view(&self, default_access: MemoryAccess) -> Result<View, VmiError> {
        self.driver.create_view(default_access)
    }

    /// Destroys a view.
    ///
    /// # Errors
    /// As the driver's.
    pub fn destroy_view(&self, view: View) -> Result<(), VmiError> {
        self.driver.destroy_view(view)
    }

    /// Switches every vCPU to `view`.
    ///
    /// # Errors
    /// As the driver's.
    pub fn switch_to_view(&self, view: View) -> Result<(), VmiError> {
        self.driver.switch_to_view(view)?;
        self.flush_gfn_cache();
        self.flush_v2p_cache();
        Ok(())
    }

    /// Maps `old_gfn` to the frame `new_gfn` inside `view`.
    ///
    /// # Errors
    /// As the driver's.
    pub fn change_view_gfn(&self, view: View, old_gfn: Gfn, new_gfn: Gfn) -> Result<(), VmiError> {
        self.driver.change_view_gfn(view, old_gfn, new_gfn)?;
        self.forget_frame(old_gfn);
        Ok(())
    }

    /// Undoes [`VmiCore::change_view_gfn`].
    ///
    /// # Errors
    /// As the driver's.
    pub fn reset_view_gfn(&self, view: View, gfn: Gfn) -> Result<(), VmiError> {
        self.driver.reset_view_gfn(view, gfn)?;
        self.forget_frame(gfn);
        Ok(())
    }

    /// Enables an event source.
    ///
    /// # Errors
    /// As the driver's.
    pub fn monitor_enable(&self, monitor: EventMonitorOf<D>) -> Result<(), VmiError> {
        self.driver.monitor_enable(monitor)
    }

    /// Disables an event source.
    ///
    /// # Errors
    /// As the driver's.
    pub fn monitor_disable(&self, monitor: EventMonitorOf<D>) -> Result<(), VmiError> {
        self.driver.monitor_disable(monitor)
    }

    /// Injects an interrupt or exception into a vCPU.
    ///
    /// # Errors
    /// As the driver's.
    pub fn inject_interrupt(
        &self,
        vcpu: VcpuId,
        interrupt: InterruptOf<D>,
    ) -> Result<(), VmiError> {
        self.driver.inject_interrupt(vcpu, interrupt)
    }

    /// The number of events waiting.
    ///
    /// # Errors
    /// As the driver's.
    pub fn events_pending(&self) -> Result<usize, VmiError> {
        self.driver.events_pending()
    }

    /// The time spent handling events.
    ///
    /// # Errors
    /// As the driver's.
    pub fn event_processing_overhead(&self) -> Result<Duration, VmiError> {
        self.driver.event_processing_overhead()
    }

    /// Waits up to `timeout` for events and answers each with `handler`.
    ///
    /// # Errors
    /// As the driver's ([`VmiError::Timeout`] when nothing came).
    pub fn wait_for_event(
        &self,
        timeout: Duration,
        mut handler: impl FnMut(&VmiEvent<D::Architecture>) -> VmiEventResponse<D::Architecture>,
    ) -> Result<(), VmiError> {
        self.driver.wait_for_event(timeout, &mut handler)
    }

    /// Drops monitors, views and caches: back to a clean state.
    ///
    /// # Errors
    /// As the driver's; the caches are flushed in any case.
    pub fn reset_state(&self) -> Result<(), VmiError> {
        self.flush_gfn_cache();
        self.flush_v2p_cache();
        self.driver.reset_state()
    }

    fn forget_frame(&self, gfn: Gfn) {
        self.gfn_cache.remove(&gfn);
        self.flush_v2p_cache();
    }

    // ----- translation ---------------------------------------------------------------

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
    /// the effective rights.
    ///
    /// # Errors
    /// As [`VmiCore::translate_address`].
    #[inline]
    pub fn translate(&self, va: Va, root: Pa) -> Result<Translation, VmiError> {
        if !self.v2p_cache_enabled.load(Ordering::Relaxed) {
            return self.translate_uncached(va, root);
        }
        let vpn = va.0 >> Self::PAGE_SHIFT;
        let generation = self.v2p_cache.generation();
        match self.v2p_cache.probe(root.0, vpn, generation) {
            Some(entry) => {
                self.v2p_cache.record(true);
                Ok(Self::unpack(entry, va, Self::PAGE_SIZE - 1))
            }
            None => self.translate_and_cache(va, root, vpn, generation),
        }
    }

    /// The translation a TLB word holds, for `va` in its page, whose offset bits are
    /// `offset_mask`.
    #[inline]
    fn unpack(entry: u64, va: Va, offset_mask: u64) -> Translation {
        let mut access = MemoryAccess::R;
        if entry & TLB_W != 0 {
            access |= MemoryAccess::W;
        }
        if entry & TLB_X != 0 {
            access |= MemoryAccess::X;
        }
        Translation {
            pa: Pa((entry & !offset_mask & !(Self::PAGE_SIZE - 1)) | (va.0 & offset_mask)),
            page_size: 1 << ((entry & TLB_SHIFT_MASK) >> TLB_SHIFT),
            access,
            user: entry & TLB_U != 0,
        }
    }

    /// The TLB word of a translation.
    #[inline]
    fn pack(t: &Translation) -> u64 {
        let mut entry = (t.pa.0 & !t.page_size.wrapping_sub(1) & !(Self::PAGE_SIZE - 1))
            | (u64::from(t.page_size.trailing_zeros()) << TLB_SHIFT);
        if t.access.contains(MemoryAccess::W) {
            entry |= TLB_W;
        }
        if t.access.contains(MemoryAccess::X) {
            entry |= TLB_X;
        }
        if t.user {
            entry |= TLB_U;
        }
        entry
    }

    /// The miss path of [`VmiCore::translate`]: the large-page part for each size it
    /// holds, then a walk, whose result is offered to the cache under the generation read
    /// before the walk (a flush during the walk outdates it): a base page to the base
    /// part, a large page as one entry of the large part. An offer evicts only for a page
    /// that missed twice in a row in its set ([`Tlb::offer`]), so a scan over more pages
    /// than the cache holds (a bulk read, random reads over a large range) neither
    /// flushes the working set out nor pays a slot write's locked instruction per page.
    #[inline(never)]
    fn translate_and_cache(
        &self,
        va: Va,
        root: Pa,
        vpn: u64,
        generation: u64,
    ) -> Result<Translation, VmiError> {
        const {
            assert!(
                <D::Architecture as Architecture>::PAGE_SHIFT >= 9,
                "the TLB packs flags and a size in the page offset bits"
            )
        };
        let large_generation = self.v2p_large.generation();
        let mut shifts = self.v2p_large_shifts.load(Ordering::Relaxed);
        while shifts != 0 {
            let shift = shifts.trailing_zeros();
            shifts &= shifts - 1;
            if let Some(entry) =
                self.v2p_large
                    .probe(root.0, Self::large_key(va, shift), large_generation)
            {
                self.v2p_cache.record(true);
                let offset_mask = 1u64.checked_shl(shift).map_or(u64::MAX, |s| s - 1);
                return Ok(Self::unpack(entry, va, offset_mask));
            }
        }
        self.v2p_cache.record(false);
        let t = self.translate_uncached(va, root)?;
        if t.page_size == Self::PAGE_SIZE {
            self.v2p_cache
                .offer(root.0, vpn, Self::pack(&t), generation);
        } else if t.page_size.is_power_of_two() && t.page_size > Self::PAGE_SIZE {
            let shift = t.page_size.trailing_zeros();
            if shift < TLB_LARGE_TAG {
                self.v2p_large.offer(
                    root.0,
                    Self::large_key(va, shift),
                    Self::pack(&t),
                    large_generation,
                );
                let bit = 1u64 << shift;
                if self.v2p_large_shifts.load(Ordering::Relaxed) & bit == 0 {
                    self.v2p_large_shifts.fetch_or(bit, Ordering::Relaxed);
                }
            }
        }
        Ok(t)
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
    pub fn translate_uncached(&self, va: Va, root: Pa) -> Result<Translation, VmiError> {
        let memory = self.driver.physical_memory();
        if memory.is_none() && self.gfn_cache_enabled.load(Ordering::Relaxed) {
            <D::Architecture as Architecture>::translate(&CoreReader(self), &self.paging, va, root)
        } else {
            let reader = DirectReader {
                driver: &self.driver,
                memory,
            };
            <D::Architecture as Architecture>::translate(&reader, &self.paging, va, root)
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

    // ----- physical access -----------------------------------------------------------

    /// Reads within one page of guest-physical memory.
    ///
    /// Small on purpose: with the page cache off it inlines down to the driver's copy, so
    /// a page-table entry read with a constant length becomes a load, not a `memcpy` call.
    #[inline]
    fn read_physical_in_page(&self, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
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
    fn page_cache_in_use(&self) -> bool {
        self.gfn_cache_enabled.load(Ordering::Relaxed) && self.driver.physical_memory().is_none()
    }

    /// [`VmiCore::read_physical_in_page`] through the page cache.
    #[inline(never)]
    fn read_physical_cached(&self, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
        let gfn = Gfn(pa.0 >> Self::PAGE_SHIFT);
        let offset = pa.0 & (Self::PAGE_SIZE - 1);
        if let Some(result) = self
            .gfn_cache
            .with(&gfn, |page| page.read(offset, &mut *buf))
        {
            return result;
        }
        let page = self.driver.read_page(gfn)?;
        let result = page.read(offset, buf);
        self.gfn_cache.insert(gfn, page);
        result
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
            self.gfn_cache.insert(gfn, page.clone());
            Ok(page)
        } else {
            self.driver.read_page(gfn)
        }
    }

    /// Resolves the page that holds `address` (translated for paging contexts).
    #[inline]
    fn resolve(&self, mechanism: TranslationMechanism, address: u64) -> Result<Pa, VmiError> {
        match mechanism {
            TranslationMechanism::Direct => Ok(Pa(address)),
            TranslationMechanism::Paging { root } => {
                self.translate(Va(address), root).map(|t| t.pa)
            }
        }
    }

    // ----- memory --------------------------------------------------------------------

    /// Fills `buf` from guest memory at `ctx`, across as many pages as it spans.
    ///
    /// A page of a large leaf (2 MiB, 1 GiB) reuses the translation of the leaf's first
    /// page the read touched. In a read longer than 16 pages, the pages
    /// between the first and the last are walked without the translation cache: a scan
    /// touches each once, and probing and filling the cache for them costs more than
    /// the walk (the copy has pushed the cache's lines out of the CPU's caches); such
    /// pages see the guest's current tables even before a flush.
    ///
    /// # Errors
    /// The first failure: for a translation, the [`PageFault`](crate::PageFault) names the
    /// first address that could not be read.
    pub fn read(&self, ctx: AccessContext, buf: &mut [u8]) -> Result<(), VmiError> {
        let scan = buf.len() as u64 > SCAN_PAGES * Self::PAGE_SIZE;
        // The last large leaf: its first virtual address, its frame, its offset mask.
        let mut leaf: Option<(u64, u64, u64)> = None;
        let mut done = 0usize;
        while done < buf.len() {
            let address = ctx.address.wrapping_add(done as u64);
            let in_page = (Self::PAGE_SIZE - (address & (Self::PAGE_SIZE - 1))) as usize;
            let chunk = in_page.min(buf.len() - done);
            let pa = match ctx.mechanism {
                TranslationMechanism::Direct => Pa(address),
                TranslationMechanism::Paging { root } => match leaf {
                    Some((va_base, pa_base, mask)) if address & !mask == va_base => {
                        Pa(pa_base | (address & mask))
                    }
                    _ => {
                        let middle = scan && done != 0 && done + chunk < buf.len();
                        let t = if middle {
                            self.translate_uncached(Va(address), root)?
                        } else {
                            self.translate(Va(address), root)?
                        };
                        if t.page_size > Self::PAGE_SIZE && t.page_size.is_power_of_two() {
                            let mask = t.page_size - 1;
                            leaf = Some((address & !mask, t.pa.0 & !mask, mask));
                        }
                        t.pa
                    }
                },
            };
            let dst = buf
                .get_mut(done..done + chunk)
                .ok_or(VmiError::InvalidArgument("buffer range"))?;
            self.read_physical_in_page(pa, dst)?;
            done += chunk;
        }
        Ok(())
    }

    /// Writes `data` to guest memory at `ctx`, across as many pages as it spans. The
    /// written frames leave the page cache and the translation cache is flushed (a write
    /// may change a page table), so no later read sees stale data.
    ///
    /// # Errors
    /// The first failure; bytes before it have been written.
    pub fn write(&self, ctx: AccessContext, data: &[u8]) -> Result<(), VmiError> {
        let mut done = 0usize;
        while done < data.len() {
            let address = ctx.address.wrapping_add(done as u64);
            let in_page = (Self::PAGE_SIZE - (address & (Self::PAGE_SIZE - 1))) as usize;
            let chunk = in_page.min(data.len() - done);
            let pa = self.resolve(ctx.mechanism, address)?;
            let src = data
                .get(done..done + chunk)
                .ok_or(VmiError::InvalidArgument("buffer range"))?;
            let result = self.driver.write_physical(pa, src);
            self.forget_frame(Gfn(pa.0 >> Self::PAGE_SHIFT));
            result?;
            done += chunk;
        }
        Ok(())
    }

    /// Reads a `u8`.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_u8(&self, ctx: AccessContext) -> Result<u8, VmiError> {
        let mut b = [0u8; 1];
        self.read(ctx, &mut b)?;
        Ok(b[0])
    }

    /// Reads a little-endian `u16`.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_u16(&self, ctx: AccessContext) -> Result<u16, VmiError> {
        let mut b = [0u8; 2];
        self.read(ctx, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Reads a little-endian `u32`.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_u32(&self, ctx: AccessContext) -> Result<u32, VmiError> {
        let mut b = [0u8; 4];
        self.read(ctx, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a little-endian `u64`.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    #[inline]
    pub fn read_u64(&self, ctx: AccessContext) -> Result<u64, VmiError> {
        let mut b = [0u8; 8];
        self.read(ctx, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a `u8`.
    ///
    /// # Errors
    /// As [`VmiCore::write`].
    pub fn write_u8(&self, ctx: AccessContext, value: u8) -> Result<(), VmiError> {
        self.write(ctx, &[value])
    }

    /// Writes a little-endian `u16`.
    ///
    /// # Errors
    /// As [`VmiCore::write`].
    pub fn write_u16(&self, ctx: AccessContext, value: u16) -> Result<(), VmiError> {
        self.write(ctx, &value.to_le_bytes())
    }

    /// Writes a little-endian `u32`.
    ///
    /// # Errors
    /// As [`VmiCore::write`].
    pub fn write_u32(&self, ctx: AccessContext, value: u32) -> Result<(), VmiError> {
        self.write(ctx, &value.to_le_bytes())
    }

    /// Writes a little-endian `u64`.
    ///
    /// # Errors
    /// As [`VmiCore::write`].
    pub fn write_u64(&self, ctx: AccessContext, value: u64) -> Result<(), VmiError> {
        self.write(ctx, &value.to_le_bytes())
    }

    /// Reads an address of `width` bytes (4 or 8), zero-extended.
    ///
    /// # Errors
    /// [`VmiError::InvalidAddressWidth`] for any other width; otherwise as
    /// [`VmiCore::read`].
    pub fn read_address(&self, ctx: AccessContext, width: u8) -> Result<u64, VmiError> {
        match width {
            4 => self.read_u32(ctx).map(u64::from),
            8 => self.read_u64(ctx),
            other => Err(VmiError::InvalidAddressWidth(other)),
        }
    }

    /// Reads a 4-byte address.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_address32(&self, ctx: AccessContext) -> Result<u64, VmiError> {
        self.read_u32(ctx).map(u64::from)
    }

    /// Reads an 8-byte address.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_address64(&self, ctx: AccessContext) -> Result<u64, VmiError> {
        self.read_u64(ctx)
    }

    /// Reads a virtual address of `width` bytes (4 or 8).
    ///
    /// # Errors
    /// As [`VmiCore::read_address`].
    pub fn read_va(&self, ctx: AccessContext, width: u8) -> Result<Va, VmiError> {
        self.read_address(ctx, width).map(Va)
    }

    /// Reads a 4-byte virtual address.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_va32(&self, ctx: AccessContext) -> Result<Va, VmiError> {
        self.read_address32(ctx).map(Va)
    }

    /// Reads an 8-byte virtual address.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_va64(&self, ctx: AccessContext) -> Result<Va, VmiError> {
        self.read_address64(ctx).map(Va)
    }

    /// Reads a plain-old-data structure.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_struct<T: FromBytes + IntoBytes>(&self, ctx: AccessContext) -> Result<T, VmiError> {
        let mut value = T::new_zeroed();
        self.read(ctx, value.as_mut_bytes())?;
        Ok(value)
    }

    /// Writes a plain-old-data structure.
    ///
    /// # Errors
    /// As [`VmiCore::write`].
    pub fn write_struct<T: IntoBytes + Immutable>(
        &self,
        ctx: AccessContext,
        value: &T,
    ) -> Result<(), VmiError> {
        self.write(ctx, value.as_bytes())
    }

    // ----- strings -------------------------------------------------------------------

    /// The length of the next string chunk at `address`: never past the page, never past
    /// `left`, and growing with `step` so short strings cost a short copy.
    #[inline]
    fn string_chunk(address: u64, left: usize, step: usize) -> usize {
        let in_page = (Self::PAGE_SIZE - (address & (Self::PAGE_SIZE - 1))) as usize;
        in_page.min(left).min(step)
    }

    /// Reads a NUL-terminated byte string into `buf`, at most `min(buf.len(), limit)`
    /// bytes; returns the bytes before the NUL (or all that were read if none came).
    /// Pages after the one holding the NUL are never touched.
    ///
    /// # Errors
    /// As [`VmiCore::read`], for a page the string reaches into.
    pub fn read_string_bytes_limited_into<'b>(
        &self,
        ctx: AccessContext,
        limit: usize,
        buf: &'b mut [u8],
    ) -> Result<&'b [u8], VmiError> {
        let cap = buf.len().min(limit);
        let mut len = 0usize;
        let mut step = 64usize;
        while len < cap {
            let address = ctx.address.wrapping_add(len as u64);
            let chunk = Self::string_chunk(address, cap - len, step);
            let dst = buf
                .get_mut(len..len + chunk)
                .ok_or(VmiError::InvalidArgument("buffer range"))?;
            self.read(ctx.offset(len as u64), dst)?;
            if let Some(nul) = dst.iter().position(|&b| b == 0) {
                return buf
                    .get(..len + nul)
                    .ok_or(VmiError::InvalidArgument("buffer range"));
            }
            len += chunk;
            step = step.saturating_mul(2);
        }
        buf.get(..len)
            .ok_or(VmiError::InvalidArgument("buffer range"))
    }

    /// [`VmiCore::read_string_bytes_limited_into`] with the core's string limit.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_string_bytes_into<'b>(
        &self,
        ctx: AccessContext,
        buf: &'b mut [u8],
    ) -> Result<&'b [u8], VmiError> {
        self.read_string_bytes_limited_into(ctx, self.read_string_length_limit(), buf)
    }

    /// A NUL-terminated UTF-8 string into `buf`, with the core's limit.
    ///
    /// # Errors
    /// [`VmiError::InvalidUtf8`] if the bytes are not UTF-8; otherwise as
    /// [`VmiCore::read`].
    pub fn read_string_into<'b>(
        &self,
        ctx: AccessContext,
        buf: &'b mut [u8],
    ) -> Result<&'b str, VmiError> {
        let bytes = self.read_string_bytes_into(ctx, buf)?;
        core::str::from_utf8(bytes).map_err(|e| VmiError::InvalidUtf8 {
            valid_up_to: e.valid_up_to(),
        })
    }

    /// Reads a NUL-terminated UTF-16LE string into `buf` as code units, at most
    /// `min(buf.len(), limit / 2)` units; returns the units before the NUL unit. The string
    /// may start at an odd address and cross pages in the middle of a unit.
    ///
    /// # Errors
    /// As [`VmiCore::read`], for a page the string reaches into.
    pub fn read_wstring_bytes_limited_into<'b>(
        &self,
        ctx: AccessContext,
        limit: usize,
        buf: &'b mut [u16],
    ) -> Result<&'b [u16], VmiError> {
        let cap = buf.len().min(limit / 2);
        let mut units = 0usize;
        let mut step = 64usize;
        let mut raw = [0u8; 256];
        while units < cap {
            let address = ctx.address.wrapping_add((units as u64) * 2);
            let in_page = (Self::PAGE_SIZE - (address & (Self::PAGE_SIZE - 1))) as usize;
            // Round up to whole units: a unit split by the page boundary needs its second
            // byte from the next page anyway.
            let bytes = ((in_page + 1) & !1)
                .min((cap - units) * 2)
                .min(step)
                .min(raw.len());
            let chunk = raw
                .get_mut(..bytes)
                .ok_or(VmiError::InvalidArgument("chunk"))?;
            self.read(ctx.offset((units as u64) * 2), chunk)?;
            for pair in chunk.chunks_exact(2) {
                let [lo, hi] = *pair else { break };
                let unit = u16::from_le_bytes([lo, hi]);
                if unit == 0 {
                    return buf
                        .get(..units)
                        .ok_or(VmiError::InvalidArgument("buffer range"));
                }
                if let Some(slot) = buf.get_mut(units) {
                    *slot = unit;
                }
                units += 1;
            }
            step = step.saturating_mul(2);
        }
        buf.get(..units)
            .ok_or(VmiError::InvalidArgument("buffer range"))
    }

    /// [`VmiCore::read_wstring_bytes_limited_into`] with the core's string limit.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_wstring_bytes_into<'b>(
        &self,
        ctx: AccessContext,
        buf: &'b mut [u16],
    ) -> Result<&'b [u16], VmiError> {
        self.read_wstring_bytes_limited_into(ctx, self.read_string_length_limit(), buf)
    }
}

#[cfg(feature = "alloc")]
impl<D: VmiDriver> VmiCore<D> {
    /// A NUL-terminated byte string, at most `limit` bytes (without the NUL). Allocates at
    /// most `limit` bytes, growing as the string does.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_string_bytes_limited(
        &self,
        ctx: AccessContext,
        limit: usize,
    ) -> Result<alloc::vec::Vec<u8>, VmiError> {
        let mut out = alloc::vec::Vec::new();
        let mut step = 64usize;
        while out.len() < limit {
            let len = out.len();
            let address = ctx.address.wrapping_add(len as u64);
            let chunk = Self::string_chunk(address, limit - len, step);
            out.resize(len + chunk, 0);
            let dst = out
                .get_mut(len..)
                .ok_or(VmiError::InvalidArgument("buffer range"))?;
            self.read(ctx.offset(len as u64), dst)?;
            if let Some(nul) = dst.iter().position(|&b| b == 0) {
                out.truncate(len + nul);
                return Ok(out);
            }
            step = step.saturating_mul(2);
        }
        Ok(out)
    }

    /// A NUL-terminated byte string, capped by the core's limit.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_string_bytes(&self, ctx: AccessContext) -> Result<alloc::vec::Vec<u8>, VmiError> {
        self.read_string_bytes_limited(ctx, self.read_string_length_limit())
    }

    /// A NUL-terminated string as lossy UTF-8, at most `limit` bytes.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_string_limited(
        &self,
        ctx: AccessContext,
        limit: usize,
    ) -> Result<alloc::string::String, VmiError> {
        let bytes = self.read_string_bytes_limited(ctx, limit)?;
        Ok(match alloc::string::String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => alloc::string::String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// A NUL-terminated string as lossy UTF-8, capped by the core's limit.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_string(&self, ctx: AccessContext) -> Result<alloc::string::String, VmiError> {
        self.read_string_limited(ctx, self.read_string_length_limit())
    }

    /// A NUL-terminated UTF-16LE string as code units, at most `limit` bytes.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_wstring_bytes_limited(
        &self,
        ctx: AccessContext,
        limit: usize,
    ) -> Result<alloc::vec::Vec<u16>, VmiError> {
        let mut out = alloc::vec::Vec::new();
        let mut block = [0u16; 512];
        loop {
            let done = out.len();
            let want = (limit / 2).saturating_sub(done).min(block.len());
            if want == 0 {
                return Ok(out);
            }
            let dst = block
                .get_mut(..want)
                .ok_or(VmiError::InvalidArgument("block"))?;
            let got =
                self.read_wstring_bytes_limited_into(ctx.offset(done as u64 * 2), want * 2, dst)?;
            let n = got.len();
            out.extend_from_slice(got);
            if n < want {
                return Ok(out);
            }
        }
    }

    /// A NUL-terminated UTF-16LE string as code units, capped by the core's limit.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_wstring_bytes(&self, ctx: AccessContext) -> Result<alloc::vec::Vec<u16>, VmiError> {
        self.read_wstring_bytes_limited(ctx, self.read_string_length_limit())
    }

    /// A NUL-terminated UTF-16LE string as lossy text, at most `limit` bytes.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_wstring_limited(
        &self,
        ctx: AccessContext,
        limit: usize,
    ) -> Result<alloc::string::String, VmiError> {
        let units = self.read_wstring_bytes_limited(ctx, limit)?;
        Ok(alloc::string::String::from_utf16_lossy(&units))
    }

    /// A NUL-terminated UTF-16LE string as lossy text, capped by the core's limit.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_wstring(&self, ctx: AccessContext) -> Result<alloc::string::String, VmiError> {
        self.read_wstring_limited(ctx, self.read_string_length_limit())
    }
}

/// Keeps the VM paused; resumes it when dropped.
///
/// Dropping cannot report an error: call [`PauseGuard::resume`] to see whether resuming
/// worked. A failure on drop is logged.
#[must_use = "the VM resumes as soon as the guard is dropped"]
pub struct PauseGuard<'a, D: VmiDriver> {
    core: &'a VmiCore<D>,
    armed: bool,
}

impl<D: VmiDriver> PauseGuard<'_, D> {
    /// Resumes the VM now, reporting a failure.
    ///
    /// # Errors
    /// As the driver's resume.
    pub fn resume(mut self) -> Result<(), VmiError> {
        self.armed = false;
        self.core.driver.resume()
    }
}

impl<D: VmiDriver> Drop for PauseGuard<'_, D> {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = self.core.driver.resume()
        {
            crate::fmt::log_warn!("resuming the VM failed: {:?}", e);
        }
    }
}

impl<D: VmiDriver<Architecture = crate::arch::amd64::Amd64>> VmiCore<D> {
    /// Translates `va` as the guest's `access` would, through the translation cache: the
    /// walk, then the rights check of SDM Vol. 3A §4.6 under `rights`.
    ///
    /// A denied access is walked once more without the cache, to name the leaf entry in
    /// the error; [`Paging::fault_error_code`](crate::arch::amd64::Paging::fault_error_code)
    /// gives the #PF error code of any failure.
    ///
    /// # Errors
    /// As [`VmiCore::translate`]; [`VmiError::Translation`] with
    /// [`FaultReason::AccessDenied`](crate::FaultReason::AccessDenied) when the rights
    /// forbid the access.
    pub fn translate_access(
        &self,
        va: Va,
        root: Pa,
        access: crate::arch::amd64::Access,
        rights: crate::arch::amd64::RightsPolicy,
    ) -> Result<Translation, VmiError> {
        let translation = self.translate(va, root)?;
        if self
            .paging
            .check_access(&translation, access, rights)
            .is_ok()
        {
            return Ok(translation);
        }
        crate::arch::amd64::Amd64::translate_access(
            &CoreReader(self),
            &self.paging,
            va,
            root,
            access,
            rights,
        )
    }
}
