//! The `VmiDriver` implementation: guest memory, rights, views, registers and events
//! through introvisor's driver surface. Each method is a thin conversion to the inherent
//! method that does the work (`views.rs`, `events.rs`), its [`EptError`] turned into a
//! [`VmiError`].
//!
//! Guest memory: a frame is found by walking the default view's EPT (GPA to HPA), then
//! copied through the host-memory module; [`VmiDriver::physical_memory`] stays `None`
//! (nothing lends a slice over live guest memory). [`VmiDriver::read_physical`] and
//! [`VmiDriver::write_physical`] may span frames: each frame is translated on its own,
//! so they work whether or not the frames are contiguous in host memory.

use core::time::Duration;

use introvisor::arch::amd64::{Amd64, EventMonitor, Interrupt, Registers};
use introvisor::{Gfn, MemoryAccess, Pa, PageRef, VcpuId, View, VmiDriver, VmiError, VmiInfo};

use crate::backend::{EptBackend, InlineHandler};
use crate::error::EptError;
use crate::hostmem::FramePtr;
use crate::platform::Platform;

/// A handle to one guest frame: copies in and out through the host-memory module, never
/// lending a slice over the live frame. It stays valid for the rest of the program (the
/// platform's contract); after a remap it still names the host frame it was made for.
#[derive(Clone, Debug)]
pub struct EptPage {
    pub(crate) gfn: Gfn,
    pub(crate) frame: FramePtr,
}

impl PageRef for EptPage {
    fn gfn(&self) -> Gfn {
        self.gfn
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VmiError> {
        let offset = usize::try_from(offset)
            .map_err(|_| VmiError::InvalidArgument("range outside the page"))?;
        self.frame.read(offset, buf).map_err(VmiError::from)
    }
}

impl EptPage {
    /// Copies `data` into the frame at `offset`.
    ///
    /// # Errors
    /// [`VmiError::InvalidArgument`] for a range outside the page (nothing written).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), VmiError> {
        let offset = usize::try_from(offset)
            .map_err(|_| VmiError::InvalidArgument("range outside the page"))?;
        self.frame.write(offset, data).map_err(VmiError::from)
    }
}

impl<P: Platform, const VIEWS: usize, const FRAMES: usize, const VCPUS: usize, const QUEUE: usize>
    EptBackend<P, VIEWS, FRAMES, VCPUS, QUEUE>
{
    /// The host frame behind `gpa` in the default view, and the offset in it.
    fn frame_of(&self, gpa: u64) -> Result<(FramePtr, usize), VmiError> {
        let t = self
            .translate(View(0), Pa(gpa))
            .map_err(|_| VmiError::OutOfBounds(Pa(gpa)))?;
        let frame = FramePtr::of(&self.platform, t.hpa)?;
        Ok((frame, t.hpa.offset() as usize))
    }

    /// Copies across frames: `each(frame, offset, start, len)` per frame-sized piece.
    fn per_frame(
        &self,
        pa: Pa,
        len: usize,
        mut each: impl FnMut(FramePtr, usize, usize, usize) -> Result<(), EptError>,
    ) -> Result<(), VmiError> {
        let mut done = 0usize;
        while let Some(left) = len.checked_sub(done).filter(|&left| left > 0) {
            let gpa =
                pa.0.checked_add(done as u64)
                    .ok_or(VmiError::OutOfBounds(pa))?;
            let (frame, offset) = self.frame_of(gpa)?;
            // The offset in a frame is below 4096: each piece is 1..=left bytes, so `done`
            // grows to `len` and no further.
            let n = 4096usize
                .checked_sub(offset)
                .filter(|&n| n > 0)
                .ok_or(EptError::OutsideFrame)?
                .min(left);
            each(frame, offset, done, n)?;
            done = done.saturating_add(n);
        }
        Ok(())
    }
}

impl<P: Platform, const VIEWS: usize, const FRAMES: usize, const VCPUS: usize, const QUEUE: usize>
    VmiDriver for EptBackend<P, VIEWS, FRAMES, VCPUS, QUEUE>
{
    type Architecture = Amd64;
    type Page = EptPage;

    fn info(&self) -> Result<VmiInfo, VmiError> {
        Ok(VmiInfo {
            page_size: 4096,
            page_shift: 12,
            max_gfn: Gfn(self.max_gfn),
            vcpus: self.vcpu_count,
        })
    }

    fn read_page(&self, gfn: Gfn) -> Result<EptPage, VmiError> {
        let gpa = gfn
            .0
            .checked_mul(4096)
            .ok_or(VmiError::GfnNotPresent(gfn))?;
        let (frame, _) = self
            .frame_of(gpa)
            .map_err(|_| VmiError::GfnNotPresent(gfn))?;
        Ok(EptPage { gfn, frame })
    }

    fn read_physical(&self, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
        let len = buf.len();
        self.per_frame(pa, len, |frame, offset, start, n| {
            let out = start
                .checked_add(n)
                .and_then(|end| buf.get_mut(start..end))
                .ok_or(EptError::OutsideFrame)?;
            frame.read(offset, out)
        })
    }

    fn write_physical(&self, pa: Pa, data: &[u8]) -> Result<(), VmiError> {
        self.per_frame(pa, data.len(), |frame, offset, start, n| {
            let input = start
                .checked_add(n)
                .and_then(|end| data.get(start..end))
                .ok_or(EptError::OutsideFrame)?;
            frame.write(offset, input)
        })
    }

    fn now(&self) -> Option<Duration> {
        Some(self.platform.now())
    }

    fn pause(&self) -> Result<(), VmiError> {
        Ok(self.platform.pause_all().map_err(EptError::from)?)
    }

    fn resume(&self) -> Result<(), VmiError> {
        Ok(self.platform.resume_all().map_err(EptError::from)?)
    }

    fn registers(&self, vcpu: VcpuId) -> Result<Registers, VmiError> {
        self.vcpu_slot(vcpu)?;
        Ok(self.platform.registers(vcpu).map_err(EptError::from)?)
    }

    /// Writes the registers, keeping the guest's RFLAGS.IF (the backend never changes it).
    fn set_registers(&self, vcpu: VcpuId, registers: Registers) -> Result<(), VmiError> {
        self.vcpu_slot(vcpu)?;
        let current = self.platform.registers(vcpu).map_err(EptError::from)?;
        let mut registers = registers;
        registers.rflags = (registers.rflags & !(1 << 9)) | (current.rflags & (1 << 9));
        Ok(self
            .platform
            .set_registers(vcpu, &registers)
            .map_err(EptError::from)?)
    }

    fn memory_access(&self, gfn: Gfn, view: View) -> Result<MemoryAccess, VmiError> {
        Ok(self.access(view, gfn)?)
    }

    fn set_memory_access(
        &self,
        gfn: Gfn,
        view: View,
        access: MemoryAccess,
    ) -> Result<(), VmiError> {
        Ok(self.set_access(view, gfn, access)?)
    }

    fn allocate_gfn(&self, gfn: Gfn) -> Result<(), VmiError> {
        self.allocate_shadow(gfn)?;
        Ok(())
    }

    fn free_gfn(&self, gfn: Gfn) -> Result<(), VmiError> {
        Ok(self.free_shadow(gfn)?)
    }

    fn default_view(&self) -> Result<View, VmiError> {
        Ok(View(0))
    }

    fn create_view(&self, default_access: MemoryAccess) -> Result<View, VmiError> {
        Ok(self.create(default_access)?)
    }

    fn destroy_view(&self, view: View) -> Result<(), VmiError> {
        Ok(self.destroy(view)?)
    }

    fn switch_to_view(&self, view: View) -> Result<(), VmiError> {
        Ok(self.switch_all(view)?)
    }

    fn change_view_gfn(&self, view: View, old_gfn: Gfn, new_gfn: Gfn) -> Result<(), VmiError> {
        Ok(self.remap(view, old_gfn, new_gfn)?)
    }

    fn reset_view_gfn(&self, view: View, gfn: Gfn) -> Result<(), VmiError> {
        Ok(self.unmap_remap(view, gfn)?)
    }

    fn monitor_enable(&self, monitor: EventMonitor) -> Result<(), VmiError> {
        Ok(self.monitor(monitor, true)?)
    }

    fn monitor_disable(&self, monitor: EventMonitor) -> Result<(), VmiError> {
        Ok(self.monitor(monitor, false)?)
    }

    fn inject_interrupt(&self, vcpu: VcpuId, interrupt: Interrupt) -> Result<(), VmiError> {
        self.vcpu_slot(vcpu)?;
        Ok(self
            .platform
            .inject(vcpu, interrupt)
            .map_err(EptError::from)?)
    }

    fn events_pending(&self) -> Result<usize, VmiError> {
        Ok(self.queued())
    }

    fn event_processing_overhead(&self) -> Result<Duration, VmiError> {
        Ok(Duration::from_nanos(
            self.overhead_ns.load(core::sync::atomic::Ordering::Relaxed),
        ))
    }

    fn wait_for_event(
        &self,
        timeout: Duration,
        handler: &mut InlineHandler<'_>,
    ) -> Result<(), VmiError> {
        if self.serve_queue(timeout, handler) {
            Ok(())
        } else {
            Err(VmiError::Timeout)
        }
    }

    /// Destroys every alternate view (vCPUs go back to the default view) and turns every
    /// monitor and single step off.
    fn reset_state(&self) -> Result<(), VmiError> {
        let mut result: Result<(), EptError> = Ok(());
        for v in 1..=VIEWS {
            match self.destroy(View(v as u16)) {
                Ok(()) | Err(EptError::NoSuchView(_)) => {}
                Err(e) => result = result.and(Err(e)),
            }
        }
        result = result.and(self.switch_all(View(0)));
        Ok(result.and(self.reset_monitors())?)
    }
}
