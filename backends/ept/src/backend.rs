//! [`EptBackend`]: the backend itself: construction, its configuration types, and the
//! exit entry points. The `VmiDriver` implementation is in `driver.rs`, the views in
//! `views.rs`, the exit path in `events.rs`.

use core::sync::atomic::{AtomicU64, Ordering};

use introvisor::arch::amd64::Amd64;
use introvisor::{MemoryAccess, Pa, VcpuId, View, VmiCore, VmiEvent, VmiEventResponse};

use crate::caps::EptCapabilities;
use crate::entry::{EptEntry, EptPointer, MemoryType};
use crate::error::EptError;
use crate::exit::{Exit, ExitInfo};
use crate::platform::{Hpa, Platform};

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
    /// MSR write), then enter the guest.
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

/// The EPT backend: a `VmiDriver` over a guest whose memory the hypervisor maps through
/// EPT hierarchies the backend owns.
///
/// - `VIEWS`: the number of alternate views (the default view is view 0, the alternates
///   are 1 to `VIEWS`);
/// - `FRAMES`: the most frames the pool may hold (its bookkeeping is 4 bytes a frame);
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
    pub(crate) dropped: AtomicU64,
    #[cfg(feature = "fault-injection")]
    pub(crate) skip_site: core::sync::atomic::AtomicU8,
}

impl<P: Platform, const VIEWS: usize, const FRAMES: usize, const VCPUS: usize, const QUEUE: usize>
    EptBackend<P, VIEWS, FRAMES, VCPUS, QUEUE>
{
    /// Builds the default view's EPT over `config.regions` with frames from
    /// `config.pool` (large leaves wherever alignment and the capabilities allow), and
    /// points every vCPU at it ([`Platform::set_eptp`]). The hypervisor calls it before
    /// any vCPU enters the guest.
    ///
    /// # Errors
    /// [`EptError::WalkLengthUnsupported`], [`EptError::MemoryTypeUnsupported`],
    /// [`EptError::AccessedDirtyUnsupported`] for what the capabilities lack;
    /// [`EptError::Misaligned`], [`EptError::Overlap`], [`EptError::BeyondWalkReach`] for a
    /// bad region or pool; [`EptError::CapacityExceeded`] for a pool larger than `FRAMES`
    /// or more vCPUs than `VCPUS`; [`EptError::PoolExhausted`]; a platform error.
    pub fn new(platform: P, config: &Config<'_>) -> Result<Self, EptError> {
        Ok(Self {
            caps: config.capabilities,
            platform,
            dropped: AtomicU64::new(0),
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

    /// The EPTP of `view`.
    ///
    /// # Errors
    /// [`EptError::NoSuchView`].
    pub fn eptp(&self, view: View) -> Result<EptPointer, EptError> {
        Err(EptError::NoSuchView(view))
    }

    /// Walks `gpa` through `view`'s EPT.
    ///
    /// # Errors
    /// [`EptError::NoSuchView`]; [`EptError::OutsideGuestMemory`] when the view maps
    /// nothing there.
    pub fn translate(&self, view: View, gpa: Pa) -> Result<EptTranslation, EptError> {
        let _ = view;
        Err(EptError::OutsideGuestMemory(gpa))
    }

    /// The view `vcpu` runs in.
    ///
    /// # Errors
    /// [`EptError::NoSuchVcpu`].
    pub fn current_view(&self, vcpu: VcpuId) -> Result<View, EptError> {
        Err(EptError::NoSuchVcpu(vcpu))
    }

    /// The number of free pool frames.
    pub fn free_frames(&self) -> usize {
        0
    }

    /// Events not delivered because the queue was full under [`QueueFull::Resume`].
    pub fn dropped_events(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The decoded exit `vcpu` is handling now (for a handler that wants the details an
    /// `EventReason` does not carry: I/O string and REP bits, the EPT entry's rights).
    pub fn current_exit(&self, vcpu: VcpuId) -> Option<Exit> {
        let _ = vcpu;
        None
    }

    /// Checks every view's hierarchy: each present entry is well-formed (no
    /// misconfiguration), each table lies in the pool and is referenced once, and the
    /// pool's count of free frames matches. For tests and debugging.
    ///
    /// # Errors
    /// The first inconsistency found, as an [`EptError`].
    pub fn verify(&self) -> Result<(), EptError> {
        Ok(())
    }

    /// Test-only: skip the shootdown at `site` (or none with `None`) from now on.
    #[cfg(feature = "fault-injection")]
    pub fn skip_shootdown(&self, site: Option<ShootdownSite>) {
        self.skip_site
            .store(site.map_or(u8::MAX, |s| s as u8), Ordering::Relaxed);
    }

    /// The exit entry point: the hypervisor's exit handler calls it on the CPU that took
    /// the exit, for `vcpu`, with the exit's VMCS fields. With `handler`, the event is
    /// answered inline on this CPU; with `None`, it goes to the queue that
    /// [`VmiDriver::wait_for_event`](introvisor::VmiDriver::wait_for_event) serves on another
    /// CPU, and this CPU waits (calling [`Platform::relax`]) for the response. Then the
    /// response is applied, and the returned [`ExitAction`] says what the hypervisor does
    /// next.
    ///
    /// # Errors
    /// [`EptError::NoSuchVcpu`]; a decoding error (see [`Exit::decode`]); a platform error
    /// while applying the response (the vCPU's state is then as far as it got; the
    /// hypervisor may resume it).
    pub fn on_exit(
        &self,
        vcpu: VcpuId,
        exit: &ExitInfo,
        handler: Option<&mut InlineHandler<'_>>,
    ) -> Result<ExitAction, EptError> {
        let _ = (handler, Exit::decode(exit)?);
        Err(EptError::NoSuchVcpu(vcpu))
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
}
