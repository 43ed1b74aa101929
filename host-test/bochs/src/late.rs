//! [`LateBackend`]: the EPT backend as a driver that a `static` core can hold from
//! compile time.
//!
//! `VmiCore::new` is a `const fn`, so the core (its caches are most of its 60-odd KiB)
//! is built by the compiler, in a `static`, never on a stack. The backend cannot be: it
//! builds the default view's EPT from the CPU's capability MSRs, at run time. So the
//! core's driver is this handle to a `spin::Once` that the hypervisor fills once VMX is
//! on; every method forwards to the backend in it, and fails with
//! [`VmiError::NotSupported`] before it is there.

use core::time::Duration;

use introvisor::arch::amd64::{Amd64, EventMonitor, Interrupt, Registers};
use introvisor::driver::EventHandler;
use introvisor::{Gfn, MemoryAccess, Pa, VcpuId, View, VmiDriver, VmiError, VmiInfo};
use introvisor_ept::EptPage;

use crate::Backend;

/// A handle to the backend the hypervisor builds at run time.
pub struct LateBackend(pub &'static spin::Once<Backend>);

impl LateBackend {
    /// The backend, once built.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] before the hypervisor built it.
    pub fn get(&self) -> Result<&'static Backend, VmiError> {
        self.0
            .get()
            .ok_or(VmiError::NotSupported("the EPT backend is not built yet"))
    }
}

impl VmiDriver for LateBackend {
    type Architecture = Amd64;
    type Page = EptPage;

    fn info(&self) -> Result<VmiInfo, VmiError> {
        self.get()?.info()
    }
    fn read_page(&self, gfn: Gfn) -> Result<EptPage, VmiError> {
        self.get()?.read_page(gfn)
    }
    fn read_physical(&self, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
        self.get()?.read_physical(pa, buf)
    }
    fn physical_memory(&self) -> Option<&[u8]> {
        self.0.get().and_then(|b| b.physical_memory())
    }
    fn write_physical(&self, pa: Pa, data: &[u8]) -> Result<(), VmiError> {
        self.get()?.write_physical(pa, data)
    }
    fn now(&self) -> Option<Duration> {
        self.0.get().and_then(|b| b.now())
    }
    fn pause(&self) -> Result<(), VmiError> {
        self.get()?.pause()
    }
    fn resume(&self) -> Result<(), VmiError> {
        self.get()?.resume()
    }
    fn registers(&self, vcpu: VcpuId) -> Result<Registers, VmiError> {
        self.get()?.registers(vcpu)
    }
    fn set_registers(&self, vcpu: VcpuId, registers: Registers) -> Result<(), VmiError> {
        self.get()?.set_registers(vcpu, registers)
    }
    fn memory_access(&self, gfn: Gfn, view: View) -> Result<MemoryAccess, VmiError> {
        self.get()?.memory_access(gfn, view)
    }
    fn set_memory_access(
        &self,
        gfn: Gfn,
        view: View,
        access: MemoryAccess,
    ) -> Result<(), VmiError> {
        self.get()?.set_memory_access(gfn, view, access)
    }
    fn allocate_gfn(&self, gfn: Gfn) -> Result<(), VmiError> {
        self.get()?.allocate_gfn(gfn)
    }
    fn free_gfn(&self, gfn: Gfn) -> Result<(), VmiError> {
        self.get()?.free_gfn(gfn)
    }
    fn default_view(&self) -> Result<View, VmiError> {
        self.get()?.default_view()
    }
    fn create_view(&self, default_access: MemoryAccess) -> Result<View, VmiError> {
        self.get()?.create_view(default_access)
    }
    fn destroy_view(&self, view: View) -> Result<(), VmiError> {
        self.get()?.destroy_view(view)
    }
    fn switch_to_view(&self, view: View) -> Result<(), VmiError> {
        self.get()?.switch_to_view(view)
    }
    fn change_view_gfn(&self, view: View, old_gfn: Gfn, new_gfn: Gfn) -> Result<(), VmiError> {
        self.get()?.change_view_gfn(view, old_gfn, new_gfn)
    }
    fn reset_view_gfn(&self, view: View, gfn: Gfn) -> Result<(), VmiError> {
        self.get()?.reset_view_gfn(view, gfn)
    }
    fn monitor_enable(&self, monitor: EventMonitor) -> Result<(), VmiError> {
        self.get()?.monitor_enable(monitor)
    }
    fn monitor_disable(&self, monitor: EventMonitor) -> Result<(), VmiError> {
        self.get()?.monitor_disable(monitor)
    }
    fn inject_interrupt(&self, vcpu: VcpuId, interrupt: Interrupt) -> Result<(), VmiError> {
        self.get()?.inject_interrupt(vcpu, interrupt)
    }
    fn events_pending(&self) -> Result<usize, VmiError> {
        self.get()?.events_pending()
    }
    fn event_processing_overhead(&self) -> Result<Duration, VmiError> {
        self.get()?.event_processing_overhead()
    }
    fn wait_for_event(
        &self,
        timeout: Duration,
        handler: &mut EventHandler<'_, Amd64>,
    ) -> Result<(), VmiError> {
        self.get()?.wait_for_event(timeout, handler)
    }
    fn reset_state(&self) -> Result<(), VmiError> {
        self.get()?.reset_state()
    }
}
