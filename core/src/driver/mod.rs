//! All a backend implements or delivers: the driver trait [`VmiDriver`] (everything the
//! core asks of a backend), the page handles it lends ([`PageRef`], `page.rs`), and the
//! event and response records it passes to and from a handler ([`VmiEvent`],
//! [`VmiEventResponse`], `event.rs`).
//!
//! Layer: may import `addr`, `access`, `error`, `cache` and `arch`.
//!
//! Only [`VmiDriver::info`] and [`VmiDriver::read_page`] are required. Every other
//! capability has a default that returns [`VmiError::NotSupported`], so a read-only dump
//! backend implements two methods and a hypervisor backend implements them all. Nothing
//! here panics for want of a capability.

use core::time::Duration;

use crate::access::{MemoryAccess, VmiInfo};
use crate::addr::{Gfn, Pa, VcpuId, View};
use crate::arch::Architecture;
use crate::error::VmiError;

mod event;
mod forward;
mod page;

pub use self::event::{VmiEvent, VmiEventFlags, VmiEventResponse, VmiEventResponseFlags};
pub use self::page::PageRef;

/// The registers type of a driver's architecture.
pub type RegistersOf<D> = <<D as VmiDriver>::Architecture as Architecture>::Registers;
/// The event-monitor type of a driver's architecture.
pub type EventMonitorOf<D> = <<D as VmiDriver>::Architecture as Architecture>::EventMonitor;
/// The interrupt type of a driver's architecture.
pub type InterruptOf<D> = <<D as VmiDriver>::Architecture as Architecture>::Interrupt;

/// The callback a driver runs for each event: it returns the response.
pub type EventHandler<'a, A> = dyn FnMut(&VmiEvent<A>) -> VmiEventResponse<A> + 'a;

/// A backend: the source of guest memory, vCPU state and events.
pub trait VmiDriver {
    /// The guest's architecture.
    type Architecture: Architecture;
    /// The driver's handle to one guest frame.
    type Page: PageRef;

    /// Page geometry, the highest frame, the vCPU count.
    ///
    /// # Errors
    /// A driver-specific error.
    fn info(&self) -> Result<VmiInfo, VmiError>;

    /// A handle to one frame.
    ///
    /// # Errors
    /// [`VmiError::GfnNotPresent`] for a frame outside guest memory.
    fn read_page(&self, gfn: Gfn) -> Result<Self::Page, VmiError>;

    /// Copies guest-physical memory into `buf`; the range lies within one page, unless
    /// the driver says it reads across pages ([`VmiDriver::read_physical_spans_pages`]).
    ///
    /// The core uses this instead of [`VmiDriver::read_page`] when its page cache is
    /// disabled. The default goes through `read_page`; a driver with memory mapped into
    /// the process overrides it with a direct copy.
    ///
    /// # Errors
    /// As [`VmiDriver::read_page`] and [`PageRef::read`].
    fn read_physical(&self, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
        let shift = <Self::Architecture as Architecture>::PAGE_SHIFT;
        let page = self.read_page(Gfn(pa.0 >> shift))?;
        page.read(<Self::Architecture as Architecture>::page_offset(pa.0), buf)
    }

    /// Whether [`VmiDriver::read_physical`] also takes a range that spans several pages
    /// (the default: `false`). When it does, the core reads a run of physically
    /// contiguous frames with one call (a long [`VmiCore::read`](crate::VmiCore::read)
    /// with the page cache disabled). Such a call must succeed exactly when a read of
    /// each page alone would, with the same bytes; when it fails, the core reads the run
    /// again a page at a time, so the error it reports is the failing page's own.
    #[inline]
    fn read_physical_spans_pages(&self) -> bool {
        false
    }

    /// All of guest-physical memory as one byte slice starting at address 0, when the
    /// driver holds it so (read-only memory mapped into the process, without holes);
    /// `None` otherwise (the default). Byte `n` of the slice must be what
    /// [`VmiDriver::read_physical`] reads at address `n`, for as long as the borrow lasts.
    ///
    /// With the page cache disabled, the core's page walker asks for it once per walk and
    /// reads entries from it as one bounds check and one load each; addresses past its
    /// end go through [`VmiDriver::read_physical`], which reports the error.
    #[inline]
    fn physical_memory(&self) -> Option<&[u8]> {
        None
    }

    /// A hint that the core is about to read guest-physical memory at `pa`: a driver
    /// with memory mapped into the process may start loading its cache line (a software
    /// prefetch) so that the read that follows finds it. It reads nothing the caller can
    /// see, changes nothing and cannot fail; the default does nothing. The core's batch
    /// reads ([`VmiCore::read_u64_many`](crate::VmiCore::read_u64_many)) give it each
    /// address as soon as it is translated, so that the misses of many reads overlap
    /// with the walks of the next ones (the core, which has no `unsafe`, cannot issue
    /// a prefetch itself).
    #[inline]
    fn prefetch_physical(&self, pa: Pa) {
        let _ = pa;
    }

    /// Writes `data` to guest-physical memory at `pa`; the range lies within one page.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] for a read-only driver.
    fn write_physical(&self, pa: Pa, data: &[u8]) -> Result<(), VmiError> {
        let _ = (pa, data);
        Err(VmiError::NotSupported("write_physical"))
    }

    /// A monotonic clock, if the platform has one. The default has none.
    fn now(&self) -> Option<Duration> {
        None
    }

    /// Pauses every vCPU.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] by default.
    fn pause(&self) -> Result<(), VmiError> {
        Err(VmiError::NotSupported("pause"))
    }

    /// Resumes every vCPU.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] by default.
    fn resume(&self) -> Result<(), VmiError> {
        Err(VmiError::NotSupported("resume"))
    }

    /// The registers of a vCPU.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] by default; [`VmiError::NotFound`] for an unknown vCPU.
    fn registers(&self, vcpu: VcpuId) -> Result<RegistersOf<Self>, VmiError> {
        let _ = vcpu;
        Err(VmiError::NotSupported("registers"))
    }

    /// Sets the registers of a vCPU.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] by default.
    fn set_registers(&self, vcpu: VcpuId, registers: RegistersOf<Self>) -> Result<(), VmiError> {
        let _ = (vcpu, registers);
        Err(VmiError::NotSupported("set_registers"))
    }

    /// The rights of a frame in a view.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] by default.
    fn memory_access(&self, gfn: Gfn, view: View) -> Result<MemoryAccess, VmiError> {
        let _ = (gfn, view);
        Err(VmiError::NotSupported("memory_access"))
    }

    /// Sets the rights of a frame in a view.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] by default.
    fn set_memory_access(
        &self,
        gfn: Gfn,
        view: View,
        access: MemoryAccess,
    ) -> Result<(), VmiError> {
        let _ = (gfn, view, access);
        Err(VmiError::NotSupported("set_memory_access"))
    }

    /// Backs `gfn` with a new frame.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] by default.
    fn allocate_gfn(&self, gfn: Gfn) -> Result<(), VmiError> {
        let _ = gfn;
        Err(VmiError::NotSupported("allocate_gfn"))
    }

    /// Releases a frame allocated with [`VmiDriver::allocate_gfn`].
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] by default.
    fn free_gfn(&self, gfn: Gfn) -> Result<(), VmiError> {
        let _ = gfn;
        Err(VmiError::NotSupported("free_gfn"))
    }

    /// The default view.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] by default.
    fn default_view(&self) -> Result<View, VmiError> {
        Err(VmiError::NotSupported("default_view"))
    }

    /// Creates a view in which every frame has `default_access`.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] by default.
    fn create_view(&self, default_access: MemoryAccess) -> Result<View, VmiError> {
        let _ = default_access;
        Err(VmiError::NotSupported("create_view"))
    }

    /// Destroys a view.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] by default.
    fn destroy_view(&self, view: View) -> Result<(), VmiError> {
        let _ = view;
        Err(VmiError::NotSupported("destroy_view"))
    }

    /// Switches every vCPU to `view`.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] by default.
    fn switch_to_view(&self, view: View) -> Result<(), VmiError> {
        let _ = view;
        Err(VmiError::NotSupported("switch_to_view"))
    }

    /// Maps `old_gfn` to the frame `new_gfn` inside `view`.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] by default.
    fn change_view_gfn(&self, view: View, old_gfn: Gfn, new_gfn: Gfn) -> Result<(), VmiError> {
        let _ = (view, old_gfn, new_gfn);
        Err(VmiError::NotSupported("change_view_gfn"))
    }

    /// Undoes [`VmiDriver::change_view_gfn`] for `gfn`.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] by default.
    fn reset_view_gfn(&self, view: View, gfn: Gfn) -> Result<(), VmiError> {
        let _ = (view, gfn);
        Err(VmiError::NotSupported("reset_view_gfn"))
    }

    /// Enables an event source.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] by default.
    fn monitor_enable(&self, monitor: EventMonitorOf<Self>) -> Result<(), VmiError> {
        let _ = monitor;
        Err(VmiError::NotSupported("monitor_enable"))
    }

    /// Disables an event source.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] by default.
    fn monitor_disable(&self, monitor: EventMonitorOf<Self>) -> Result<(), VmiError> {
        let _ = monitor;
        Err(VmiError::NotSupported("monitor_disable"))
    }

    /// Injects an interrupt or exception into a vCPU.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] by default.
    fn inject_interrupt(&self, vcpu: VcpuId, interrupt: InterruptOf<Self>) -> Result<(), VmiError> {
        let _ = (vcpu, interrupt);
        Err(VmiError::NotSupported("inject_interrupt"))
    }

    /// The number of events waiting.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] by default.
    fn events_pending(&self) -> Result<usize, VmiError> {
        Err(VmiError::NotSupported("events_pending"))
    }

    /// The time spent handling events so far.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] by default.
    fn event_processing_overhead(&self) -> Result<Duration, VmiError> {
        Err(VmiError::NotSupported("event_processing_overhead"))
    }

    /// Waits up to `timeout` for events, hands each to `handler`, and applies the
    /// response it returns before the vCPU resumes (registers, view, single step,
    /// emulation or denial, reinjection; see [`VmiEventResponse`]).
    ///
    /// The handler calls back into the driver (reads, injections, monitors), so a driver
    /// holds no lock of its own across the call. The path must not allocate: the
    /// handler arrives as `&mut dyn FnMut`, with no `Box`.
    ///
    /// # Errors
    /// [`VmiError::Timeout`] when no event came; [`VmiError::NotSupported`] by default.
    fn wait_for_event(
        &self,
        timeout: Duration,
        handler: &mut EventHandler<'_, Self::Architecture>,
    ) -> Result<(), VmiError> {
        let _ = (timeout, handler);
        Err(VmiError::NotSupported("wait_for_event"))
    }

    /// Drops monitors, views and other state the driver set up.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] by default.
    fn reset_state(&self) -> Result<(), VmiError> {
        Err(VmiError::NotSupported("reset_state"))
    }
}
