//! [`VmiDriver`] for references and, with `alloc`, for [`Arc`](alloc::sync::Arc): one
//! driver can serve a core and the hypervisor's own code (or several cores) at once.
//!
//! Every method forwards to the driver behind the pointer, the provided ones too, so a
//! driver's own versions of `read_physical`, `physical_memory` and the rest are kept.

use core::time::Duration;

use super::{EventHandler, VmiDriver};
use crate::access::{MemoryAccess, VmiInfo};
use crate::addr::{Gfn, Pa, VcpuId, View};
use crate::arch::Architecture;
use crate::error::VmiError;

/// The registers, event monitor and interrupt types of `D`'s architecture, for a `D`
/// that may be unsized (the crate's `RegistersOf` aliases take a sized parameter).
type Regs<D> = <<D as VmiDriver>::Architecture as Architecture>::Registers;
type Monitor<D> = <<D as VmiDriver>::Architecture as Architecture>::EventMonitor;
type Irq<D> = <<D as VmiDriver>::Architecture as Architecture>::Interrupt;

/// The body of a forwarding impl: every method of [`VmiDriver`], on `(**self)`.
macro_rules! forward_driver {
    ($d:ident) => {
        type Architecture = $d::Architecture;
        type Page = $d::Page;

        #[inline]
        fn info(&self) -> Result<VmiInfo, VmiError> {
            (**self).info()
        }
        #[inline]
        fn read_page(&self, gfn: Gfn) -> Result<Self::Page, VmiError> {
            (**self).read_page(gfn)
        }
        #[inline]
        fn read_physical(&self, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
            (**self).read_physical(pa, buf)
        }
        #[inline]
        fn read_physical_spans_pages(&self) -> bool {
            (**self).read_physical_spans_pages()
        }
        #[inline]
        fn physical_memory(&self) -> Option<&[u8]> {
            (**self).physical_memory()
        }
        #[inline]
        fn prefetch_physical(&self, pa: Pa) {
            (**self).prefetch_physical(pa)
        }
        #[inline]
        fn write_physical(&self, pa: Pa, data: &[u8]) -> Result<(), VmiError> {
            (**self).write_physical(pa, data)
        }
        #[inline]
        fn now(&self) -> Option<Duration> {
            (**self).now()
        }
        #[inline]
        fn pause(&self) -> Result<(), VmiError> {
            (**self).pause()
        }
        #[inline]
        fn resume(&self) -> Result<(), VmiError> {
            (**self).resume()
        }
        #[inline]
        fn registers(&self, vcpu: VcpuId) -> Result<Regs<$d>, VmiError> {
            (**self).registers(vcpu)
        }
        #[inline]
        fn set_registers(&self, vcpu: VcpuId, registers: Regs<$d>) -> Result<(), VmiError> {
            (**self).set_registers(vcpu, registers)
        }
        #[inline]
        fn memory_access(&self, gfn: Gfn, view: View) -> Result<MemoryAccess, VmiError> {
            (**self).memory_access(gfn, view)
        }
        #[inline]
        fn set_memory_access(
            &self,
            gfn: Gfn,
            view: View,
            access: MemoryAccess,
        ) -> Result<(), VmiError> {
            (**self).set_memory_access(gfn, view, access)
        }
        #[inline]
        fn allocate_gfn(&self, gfn: Gfn) -> Result<(), VmiError> {
            (**self).allocate_gfn(gfn)
        }
        #[inline]
        fn free_gfn(&self, gfn: Gfn) -> Result<(), VmiError> {
            (**self).free_gfn(gfn)
        }
        #[inline]
        fn default_view(&self) -> Result<View, VmiError> {
            (**self).default_view()
        }
        #[inline]
        fn create_view(&self, default_access: MemoryAccess) -> Result<View, VmiError> {
            (**self).create_view(default_access)
        }
        #[inline]
        fn destroy_view(&self, view: View) -> Result<(), VmiError> {
            (**self).destroy_view(view)
        }
        #[inline]
        fn switch_to_view(&self, view: View) -> Result<(), VmiError> {
            (**self).switch_to_view(view)
        }
        #[inline]
        fn change_view_gfn(&self, view: View, old_gfn: Gfn, new_gfn: Gfn) -> Result<(), VmiError> {
            (**self).change_view_gfn(view, old_gfn, new_gfn)
        }
        #[inline]
        fn reset_view_gfn(&self, view: View, gfn: Gfn) -> Result<(), VmiError> {
            (**self).reset_view_gfn(view, gfn)
        }
        #[inline]
        fn monitor_enable(&self, monitor: Monitor<$d>) -> Result<(), VmiError> {
            (**self).monitor_enable(monitor)
        }
        #[inline]
        fn monitor_disable(&self, monitor: Monitor<$d>) -> Result<(), VmiError> {
            (**self).monitor_disable(monitor)
        }
        #[inline]
        fn inject_interrupt(&self, vcpu: VcpuId, interrupt: Irq<$d>) -> Result<(), VmiError> {
            (**self).inject_interrupt(vcpu, interrupt)
        }
        #[inline]
        fn events_pending(&self) -> Result<usize, VmiError> {
            (**self).events_pending()
        }
        #[inline]
        fn event_processing_overhead(&self) -> Result<Duration, VmiError> {
            (**self).event_processing_overhead()
        }
        #[inline]
        fn wait_for_event(
            &self,
            timeout: Duration,
            handler: &mut EventHandler<'_, Self::Architecture>,
        ) -> Result<(), VmiError> {
            (**self).wait_for_event(timeout, handler)
        }
        #[inline]
        fn reset_state(&self) -> Result<(), VmiError> {
            (**self).reset_state()
        }
    };
}

/// A shared reference is a driver: `VmiCore::new(&DRIVER)`, with `DRIVER` a `static` the
/// hypervisor also uses.
impl<D: VmiDriver + ?Sized> VmiDriver for &D {
    forward_driver!(D);
}

/// A shared, reference-counted driver.
#[cfg(feature = "alloc")]
#[cfg_attr(docsrs, doc(cfg(feature = "alloc")))]
impl<D: VmiDriver + ?Sized> VmiDriver for alloc::sync::Arc<D> {
    forward_driver!(D);
}
