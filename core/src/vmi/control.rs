//! The VM and its vCPUs: clock, pause and resume ([`PauseGuard`]), registers, frame
//! rights and allocation, views, and the event pass-through to the driver.

use core::sync::atomic::Ordering;
use core::time::Duration;

use super::{GFN_CACHE_CAPACITY, V2P_CACHE_CAPACITY, VmiCore};
use crate::access::{MemoryAccess, VmiInfo};
use crate::addr::{Gfn, VcpuId, View};
use crate::driver::{
    EventMonitorOf, InterruptOf, RegistersOf, VmiDriver, VmiEvent, VmiEventResponse,
};
use crate::error::VmiError;

impl<D: VmiDriver, const TLB: usize, const PAGES: usize> VmiCore<D, TLB, PAGES> {
    /// Time since the clock started, by the driver's clock: since [`VmiCore::start`], or,
    /// when `start` was never called, since the first call to `elapsed` (which returns
    /// zero). The constructor is `const` and cannot read the clock.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] when the driver has no clock.
    pub fn elapsed(&self) -> Result<Duration, VmiError> {
        let now = self.driver.now().ok_or(VmiError::NotSupported("clock"))?;
        Ok(now.saturating_sub(self.started_at(now)))
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
    pub fn pause_guard(&self) -> Result<PauseGuard<'_, D, TLB, PAGES>, VmiError> {
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
}

/// Keeps the VM paused; resumes it when dropped.
///
/// Dropping cannot report an error: call [`PauseGuard::resume`] to see whether resuming
/// worked. A failure on drop is logged.
#[must_use = "the VM resumes as soon as the guard is dropped"]
pub struct PauseGuard<
    'a,
    D: VmiDriver,
    const TLB: usize = V2P_CACHE_CAPACITY,
    const PAGES: usize = GFN_CACHE_CAPACITY,
> {
    core: &'a VmiCore<D, TLB, PAGES>,
    armed: bool,
}

impl<D: VmiDriver, const TLB: usize, const PAGES: usize> PauseGuard<'_, D, TLB, PAGES> {
    /// Resumes the VM now, reporting a failure.
    ///
    /// # Errors
    /// As the driver's resume.
    pub fn resume(mut self) -> Result<(), VmiError> {
        self.armed = false;
        self.core.driver.resume()
    }
}

impl<D: VmiDriver, const TLB: usize, const PAGES: usize> Drop for PauseGuard<'_, D, TLB, PAGES> {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = self.core.driver.resume()
        {
            crate::fmt::log_warn!("resuming the VM failed: {:?}", e);
        }
    }
}
