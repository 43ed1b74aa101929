//! [`EptBackend`]: the backend itself: construction, its configuration types, and the
//! exit entry points. The `VmiDriver` implementation is in `driver.rs`, the views in
//! `views.rs`, the exit path in `events.rs`.

use core::sync::atomic::{AtomicU64, Ordering};

use introvisor::arch::amd64::Amd64;
use introvisor::{Gfn, MemoryAccess, Pa, VcpuId, View, VmiCore, VmiEvent, VmiEventResponse};
use spin::{Mutex, MutexGuard};

use crate::caps::EptCapabilities;
use crate::entry::{EptEntry, EptPointer, MemoryType};
use crate::error::EptError;
use crate::events::{Monitors, VcpuState};
use crate::exit::{Exit, ExitInfo};
use crate::hostmem::FramePtr;
use crate::platform::{Hpa, Invept, Platform};
use crate::pool::Pool;
use crate::table::{Tables, level_size, reach};

/// The most guest regions a backend keeps.
pub const MAX_REGIONS: usize = 32;

/// One range of guest-physical memory and the host-physical memory behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GuestRegion {
    /// The first guest-physical address (4 KiB aligned).
    pub gpa: Pa,
    /// The host-physical address behind it (4 KiB aligned); the region is contiguous in
    /// host-physical memory.
    pub hpa: Hpa,
    /// The size in bytes (a multiple of 4 KiB, not zero).
    pub size: u64,
    /// The EPT memory type of the region's leaves (write-back for RAM).
    pub memory_type: MemoryType,
}

/// The frames the backend may use for its tables and shadow frames: `frames` 4 KiB host
/// frames from `base` on, contiguous in host-physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FramePool {
    /// The first frame (4 KiB aligned).
    pub base: Hpa,
    /// The number of frames (at most the backend's `FRAMES`).
    pub frames: usize,
}

/// What a vCPU does when the event queue is full (queued delivery only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum QueueFull {
    /// Wait, calling [`Platform::relax`], until a slot frees: no event is lost. (A queue
    /// at least as long as the number of vCPUs is never full, since a vCPU has at most
    /// one event outstanding.)
    #[default]
    Wait,
    /// Resume the guest as if the handler had answered "continue", and count the event
    /// in [`EptBackend::dropped_events`].
    Resume,
}

/// How the backend is set up.
#[derive(Clone, Copy, Debug)]
pub struct Config<'a> {
    /// The CPU's `IA32_VMX_EPT_VPID_CAP`.
    pub capabilities: EptCapabilities,
    /// The EPT walk length: 4 or 5.
    pub levels: u8,
    /// Whether the EPTPs enable accessed and dirty flags.
    pub accessed_dirty: bool,
    /// The memory type of the EPT paging structures (EPTP bits 2:0: UC or WB).
    pub table_memory_type: MemoryType,
    /// Guest-physical memory: sorted or not, not overlapping.
    pub regions: &'a [GuestRegion],
    /// The frame pool.
    pub pool: FramePool,
    /// The full-queue policy.
    pub queue_full: QueueFull,
    /// Whether to keep each view's EPTP in the VMFUNC EPTP list too (entry = view
    /// number).
    pub eptp_list: bool,
}

impl<'a> Config<'a> {
    /// A 4-level, write-back, A/D-off configuration over `regions` and `pool`, waiting
    /// when the queue is full, without the EPTP list.
    pub const fn new(
        capabilities: EptCapabilities,
        regions: &'a [GuestRegion],
        pool: FramePool,
    ) -> Self {
        Self {
            capabilities,
            levels: 4,
            accessed_dirty: false,
            table_memory_type: MemoryType::WriteBack,
            regions,
            pool,
            queue_full: QueueFull::Wait,
            eptp_list: false,
        }
    }
}

/// What the hypervisor does after [`EptBackend::on_exit`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ExitAction {
    /// Enter the guest again as it is: the backend has done everything (the instruction
    /// is retried, or the backend changed RIP).
    Resume,
    /// Carry out the exiting instruction as the hypervisor would without introspection
    /// (perform the CR or MSR write, CPUID, the I/O), advance RIP, then enter the guest.
    Complete,
    /// Advance RIP past the exiting instruction without carrying it out (a denied CR or
    /// MSR write, or a CPUID the handler answered by setting registers), then enter the
    /// guest.
    SkipInstruction,
    /// The backend did not ask for this exit: handle it as if the backend were absent.
    NotMine,
}

/// One guest-physical translation through a view's EPT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EptTranslation {
    /// The host-physical address.
    pub hpa: Hpa,
    /// The rights of the translation (the AND of every level's).
    pub access: MemoryAccess,
    /// The level of the leaf: 1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB.
    pub level: u8,
    /// The leaf entry.
    pub entry: EptEntry,
}

/// The places where the backend sends a shootdown, by index: the test-only switch
/// (feature `fault-injection`) skips one of them, so a simulator can show each is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum ShootdownSite {
    /// 0: rights were taken away from a frame.
    Tighten = 0,
    /// 1: a large leaf was split into a table.
    Split = 1,
    /// 2: a table was merged back into a large leaf.
    Merge = 2,
    /// 3: a frame was remapped (`change_view_gfn`).
    Remap = 3,
    /// 4: a remap was undone (`reset_view_gfn`).
    ResetRemap = 4,
    /// 5: a view was destroyed.
    DestroyView = 5,
    /// 6: a shadow frame was unmapped (`free_gfn`).
    FreeShadow = 6,
}

impl ShootdownSite {
    /// Every site, in index order.
    pub const ALL: [Self; 7] = [
        Self::Tighten,
        Self::Split,
        Self::Merge,
        Self::Remap,
        Self::ResetRemap,
        Self::DestroyView,
        Self::FreeShadow,
    ];
}

/// The handler an inline exit runs: introvisor's event callback for AMD64.
pub type InlineHandler<'a> = dyn FnMut(&VmiEvent<Amd64>) -> VmiEventResponse<Amd64> + 'a;

/// One alternate view.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ViewInfo {
    pub(crate) root: Hpa,
    pub(crate) eptp: EptPointer,
    pub(crate) default_access: MemoryAccess,
}

/// What the state lock protects: the pool and every hierarchy's structure.
pub(crate) struct State<const VIEWS: usize, const FRAMES: usize> {
    pub(crate) pool: Pool<FRAMES>,
    pub(crate) default_root: Hpa,
    pub(crate) views: [Option<ViewInfo>; VIEWS],
    pub(crate) regions: heapless::Vec<GuestRegion, MAX_REGIONS>,
}

/// The EPT backend: a `VmiDriver` over a guest whose memory the hypervisor maps through
/// EPT hierarchies the backend owns.
///
/// - `VIEWS`: the number of alternate views (the default view is view 0, the alternates
///   are 1 to `VIEWS`);
/// - `FRAMES`: the most frames the pool may hold (its bookkeeping is 5 bytes a frame,
///   inside the backend: size the backend's home, a `static` or the stack, for it);
/// - `VCPUS`: the most vCPUs;
/// - `QUEUE`: the length of the event queue for queued delivery.
///
/// It is `Sync` (one instance serves every CPU) and allocates nothing.
pub struct EptBackend<
    P: Platform,
    const VIEWS: usize = 7,
    const FRAMES: usize = 1024,
    const VCPUS: usize = 16,
    const QUEUE: usize = 16,
> {
    pub(crate) platform: P,
    pub(crate) caps: EptCapabilities,
    pub(crate) levels: u8,
    pub(crate) accessed_dirty: bool,
    pub(crate) table_memory_type: MemoryType,
    pub(crate) eptp_list: bool,
    pub(crate) queue_full: QueueFull,
    pub(crate) default_eptp: EptPointer,
    pub(crate) max_gfn: u64,
    pub(crate) vcpu_count: u16,
    pub(crate) state: Mutex<State<VIEWS, FRAMES>>,
    pub(crate) vcpus: [Mutex<VcpuState>; VCPUS],
    pub(crate) responses: [Mutex<Option<VmiEventResponse<Amd64>>>; VCPUS],
    pub(crate) queue: Mutex<heapless::Deque<VmiEvent<Amd64>, QUEUE>>,
    pub(crate) monitors: Mutex<Monitors>,
    pub(crate) dropped: AtomicU64,
    pub(crate) overhead_ns: AtomicU64,
    #[cfg(feature = "fault-injection")]
    pub(crate) skip_site: core::sync::atomic::AtomicU8,
}

impl<P: Platform, const VIEWS: usize, const FRAMES: usize, const VCPUS: usize, const QUEUE: usize>
    EptBackend<P, VIEWS, FRAMES, VCPUS, QUEUE>
{
    /// Builds the default view's EPT over `config.regions` with frames from
    /// `config.pool` (the largest leaves that alignment and the capabilities allow), and
    /// points every vCPU at it ([`Platform::set_eptp`]). The hypervisor calls it before
    /// any vCPU enters the guest.
    ///
    /// # Errors
    /// [`EptError::WalkLengthUnsupported`], [`EptError::MemoryTypeUnsupported`],
    /// [`EptError::AccessedDirtyUnsupported`], [`EptError::InveptUnsupported`] for what the
    /// capabilities lack; [`EptError::Misaligned`], [`EptError::Overlap`],
    /// [`EptError::BeyondWalkReach`], [`EptError::HostFrameUnmapped`] for a bad region or
    /// pool; [`EptError::CapacityExceeded`] for a pool larger than `FRAMES`, more vCPUs than
    /// `VCPUS` or more regions than [`MAX_REGIONS`]; [`EptError::PoolExhausted`]; a
    /// platform error.
    pub fn new(platform: P, config: &Config<'_>) -> Result<Self, EptError> {
        let caps = config.capabilities;
        if !caps.invept_single_context() && !caps.invept_all_context() {
            return Err(EptError::InveptUnsupported);
        }
        // Validates walk length, memory type and A/D before anything is built.
        EptPointer::try_new(
            Hpa(0),
            config.levels,
            config.table_memory_type,
            config.accessed_dirty,
            caps,
        )?;
        let vcpu_count = platform.vcpu_count();
        if usize::from(vcpu_count) > VCPUS {
            return Err(EptError::CapacityExceeded);
        }
        let mut pool = Pool::<FRAMES>::new(config.pool.base, config.pool.frames)?;
        let (pool_start, pool_end) = pool.range();
        let mut frame = pool_start;
        while frame < pool_end {
            FramePtr::of(&platform, Hpa(frame))?;
            // `frame < pool_end <= u64::MAX`: saturating at the top ends the loop.
            frame = frame.saturating_add(4096);
        }
        let mut regions = heapless::Vec::<GuestRegion, MAX_REGIONS>::new();
        let mut max_end = 0u64;
        for r in config.regions {
            let end = check_region(r, config.levels, (pool_start, pool_end))?;
            for other in regions.iter() {
                // `other` passed `check_region` too: its end does not wrap, so the
                // saturating sum is the plain one.
                if r.gpa.0 < other.gpa.0.saturating_add(other.size) && other.gpa.0 < end {
                    return Err(EptError::Overlap);
                }
            }
            regions.push(*r).map_err(|_| EptError::CapacityExceeded)?;
            max_end = max_end.max(end);
        }
        let mut tables = Tables {
            platform: &platform,
            caps,
            levels: config.levels,
            pool: &mut pool,
        };
        let root = tables.new_table()?;
        for r in regions.iter() {
            map_region(&mut tables, root, r)?;
        }
        let default_eptp = EptPointer::try_new(
            root,
            config.levels,
            config.table_memory_type,
            config.accessed_dirty,
            caps,
        )?;
        for v in 0..vcpu_count {
            platform.set_eptp(VcpuId(v), default_eptp)?;
        }
        if config.eptp_list {
            platform.set_eptp_list_entry(0, Some(default_eptp))?;
        }
        Ok(Self {
            platform,
            caps,
            levels: config.levels,
            accessed_dirty: config.accessed_dirty,
            table_memory_type: config.table_memory_type,
            eptp_list: config.eptp_list,
            queue_full: config.queue_full,
            default_eptp,
            max_gfn: (max_end >> 12).saturating_sub(1),
            vcpu_count,
            state: Mutex::new(State {
                pool,
                default_root: root,
                views: [None; VIEWS],
                regions,
            }),
            vcpus: [const { Mutex::new(VcpuState::new()) }; VCPUS],
            responses: [const { Mutex::new(None) }; VCPUS],
            queue: Mutex::new(heapless::Deque::new()),
            monitors: Mutex::new(Monitors::new()),
            dropped: AtomicU64::new(0),
            overhead_ns: AtomicU64::new(0),
            #[cfg(feature = "fault-injection")]
            skip_site: core::sync::atomic::AtomicU8::new(u8::MAX),
        })
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The capabilities the backend was built with.
    pub fn capabilities(&self) -> EptCapabilities {
        self.caps
    }

    /// The EPT walk length (4 or 5).
    pub fn levels(&self) -> u8 {
        self.levels
    }

    /// The highest guest frame (of the guest regions; shadow frames lie above it).
    pub fn max_gfn(&self) -> Gfn {
        Gfn(self.max_gfn)
    }

    /// The EPTP of `view`.
    ///
    /// # Errors
    /// [`EptError::NoSuchView`].
    pub fn eptp(&self, view: View) -> Result<EptPointer, EptError> {
        let state = self.lock(&self.state, None);
        Ok(self.view_of(&state, view)?.1)
    }

    /// Walks `gpa` through `view`'s EPT.
    ///
    /// # Errors
    /// [`EptError::NoSuchView`]; [`EptError::OutsideGuestMemory`] when the view maps
    /// nothing there; [`EptError::BeyondWalkReach`].
    pub fn translate(&self, view: View, gpa: Pa) -> Result<EptTranslation, EptError> {
        let mut state = self.lock(&self.state, None);
        let (root, _) = self.view_of(&state, view)?;
        let t = self.tables(&mut state);
        let path = t.walk(root, gpa.0)?;
        let leaf = path.leaf().ok_or(EptError::OutsideGuestMemory(gpa))?;
        Ok(EptTranslation {
            hpa: Tables::<P, FRAMES>::hpa_of(leaf, gpa.0),
            access: leaf.entry.access(),
            level: leaf.level,
            entry: leaf.entry,
        })
    }

    /// The view `vcpu` runs in.
    ///
    /// # Errors
    /// [`EptError::NoSuchVcpu`].
    pub fn current_view(&self, vcpu: VcpuId) -> Result<View, EptError> {
        Ok(self.lock(self.vcpu_slot(vcpu)?, None).view)
    }

    /// The number of free pool frames.
    pub fn free_frames(&self) -> usize {
        self.lock(&self.state, None).pool.available()
    }

    /// Events not delivered because the queue was full under [`QueueFull::Resume`].
    pub fn dropped_events(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The decoded exit `vcpu` is handling now (for a handler that wants the details an
    /// `EventReason` does not carry: I/O string and REP bits, the EPT entry's rights,
    /// final or paging-structure access).
    pub fn current_exit(&self, vcpu: VcpuId) -> Option<Exit> {
        self.vcpu_slot(vcpu)
            .ok()
            .and_then(|s| self.lock(s, None).exit)
    }

    /// Test-only: skip the shootdown at `site` (or none with `None`) from now on.
    #[cfg(feature = "fault-injection")]
    pub fn skip_shootdown(&self, site: Option<ShootdownSite>) {
        self.skip_site
            .store(site.map_or(u8::MAX, |s| s as u8), Ordering::Relaxed);
    }

    /// [`EptBackend::on_exit`] inline, through a [`VmiHandler`](introvisor::VmiHandler):
    /// the handler receives a [`VmiContext`](introvisor::VmiContext) over `core` (whose
    /// translation cache is flushed first, as a session does at each event) and `os`.
    ///
    /// # Errors
    /// As [`EptBackend::on_exit`].
    pub fn handle_exit<O, H>(
        core: &VmiCore<Self>,
        os: &O,
        handler: &mut H,
        vcpu: VcpuId,
        exit: &ExitInfo,
    ) -> Result<ExitAction, EptError>
    where
        O: introvisor::VmiOs<Self>,
        H: introvisor::VmiHandler<Self, O>,
    {
        let mut inline = |event: &VmiEvent<Amd64>| {
            core.flush_v2p_cache();
            handler.handle_event(introvisor::VmiContext::new(core, os, event))
        };
        core.driver().on_exit(vcpu, exit, Some(&mut inline))
    }

    // ----- internals -------------------------------------------------------------------

    /// Takes `mutex`, calling [`Platform::relax`] while it waits (so a shootdown aimed at
    /// this CPU is served while it spins: see the crate docs, "Deadlocks").
    pub(crate) fn lock<'a, T>(
        &self,
        mutex: &'a Mutex<T>,
        vcpu: Option<VcpuId>,
    ) -> MutexGuard<'a, T> {
        loop {
            if let Some(guard) = mutex.try_lock() {
                return guard;
            }
            self.platform.relax(vcpu);
        }
    }

    /// The table operations over the locked state.
    pub(crate) fn tables<'a>(
        &'a self,
        state: &'a mut State<VIEWS, FRAMES>,
    ) -> Tables<'a, P, FRAMES> {
        Tables {
            platform: &self.platform,
            caps: self.caps,
            levels: self.levels,
            pool: &mut state.pool,
        }
    }

    /// The root and EPTP of `view`.
    pub(crate) fn view_of(
        &self,
        state: &State<VIEWS, FRAMES>,
        view: View,
    ) -> Result<(Hpa, EptPointer), EptError> {
        if view.0 == 0 {
            return Ok((state.default_root, self.default_eptp));
        }
        usize::from(view.0)
            .checked_sub(1)
            .and_then(|slot| state.views.get(slot))
            .and_then(|v| v.as_ref())
            .map(|v| (v.root, v.eptp))
            .ok_or(EptError::NoSuchView(view))
    }

    /// The slot of `vcpu`.
    pub(crate) fn vcpu_slot(&self, vcpu: VcpuId) -> Result<&Mutex<VcpuState>, EptError> {
        if vcpu.0 >= self.vcpu_count {
            return Err(EptError::NoSuchVcpu(vcpu));
        }
        self.vcpus
            .get(usize::from(vcpu.0))
            .ok_or(EptError::NoSuchVcpu(vcpu))
    }

    /// The INVEPT scope for one EPTP: single-context when the CPU has it, else all.
    pub(crate) fn scope(&self, eptp: Option<EptPointer>) -> Invept {
        match eptp {
            Some(e) if self.caps.invept_single_context() => Invept::SingleContext(e),
            _ => Invept::AllContext,
        }
    }

    /// Invalidates `eptp`'s mappings (or every EPTP's with `None`) on this CPU and every
    /// other one, if any of the `sites` (bits by [`ShootdownSite`] index) asks for it
    /// (the fault-injection switch removes one site's request). Called with no lock held.
    pub(crate) fn shootdown(&self, eptp: Option<EptPointer>, sites: u8) {
        #[allow(unused_mut)]
        let mut sites = sites;
        #[cfg(feature = "fault-injection")]
        {
            let skip = self.skip_site.load(Ordering::Relaxed);
            if skip < 8 {
                sites &= !(1 << skip);
            }
        }
        if sites == 0 {
            return;
        }
        let scope = self.scope(eptp);
        self.platform.invept(scope);
        self.platform.shootdown(scope);
    }
}

/// The bit of `site` in a set of requested shootdowns.
pub(crate) const fn site(site: ShootdownSite) -> u8 {
    1 << site as u8
}

/// Checks one guest region, and returns its guest-physical end (which does not wrap).
fn check_region(r: &GuestRegion, levels: u8, pool: (u64, u64)) -> Result<u64, EptError> {
    if r.gpa.0 & 0xfff != 0 {
        return Err(EptError::Misaligned(Hpa(r.gpa.0)));
    }
    if r.hpa.offset() != 0 {
        return Err(EptError::Misaligned(r.hpa));
    }
    if r.size == 0 || r.size & 0xfff != 0 {
        return Err(EptError::Misaligned(Hpa(r.size)));
    }
    let end = r
        .gpa
        .0
        .checked_add(r.size)
        .ok_or(EptError::BeyondWalkReach(r.gpa))?;
    if end > reach(levels) {
        // `r.size` is not zero (checked above): the region's last byte is `end - 1`.
        return Err(EptError::BeyondWalkReach(Pa(end.saturating_sub(1))));
    }
    let hend = r.hpa.0.checked_add(r.size).ok_or(EptError::Overlap)?;
    if r.hpa.0 < pool.1 && pool.0 < hend {
        return Err(EptError::Overlap);
    }
    Ok(end)
}

/// Maps one region into the hierarchy at `root` with the largest leaves that fit.
fn map_region<P: Platform, const FRAMES: usize>(
    tables: &mut Tables<'_, P, FRAMES>,
    root: Hpa,
    r: &GuestRegion,
) -> Result<(), EptError> {
    let mut offset = 0u64;
    while let Some(left) = r.size.checked_sub(offset).filter(|&left| left > 0) {
        // `check_region` refused regions whose ends wrap: these never fail.
        let gpa = r
            .gpa
            .0
            .checked_add(offset)
            .ok_or(EptError::BeyondWalkReach(r.gpa))?;
        let hpa = r.hpa.0.checked_add(offset).ok_or(EptError::Overlap)?;
        let level = [3u8, 2]
            .into_iter()
            .find(|&l| {
                let size = level_size(l);
                tables.caps.leaf_at(l)
                    && gpa.is_multiple_of(size)
                    && hpa.is_multiple_of(size)
                    && left >= size
            })
            .unwrap_or(1);
        let entry = EptEntry::try_leaf(
            Hpa(hpa),
            level,
            MemoryAccess::RWX,
            r.memory_type,
            crate::entry::EptFlags::empty(),
            tables.caps,
        )?;
        tables.map(root, gpa, level, entry)?;
        // The leaf fits in what is left (4 KiB ones too: the size is 4 KiB aligned), so
        // `offset` stays at most `r.size`.
        offset = offset.saturating_add(level_size(level));
    }
    Ok(())
}
