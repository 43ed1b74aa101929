//! What only an AMD64 session offers: [`VmiContext::inject_page_fault`]. Impls for one
//! architecture on the generic session types live in a file named after it.

use super::VmiContext;
use crate::access::{AddressContext, MemoryAccess};
use crate::arch::amd64::{Amd64, Interrupt};
use crate::driver::VmiDriver;
use crate::error::VmiError;
use crate::os::VmiOs;

impl<
    D: VmiDriver<Architecture = Amd64>,
    O: VmiOs<D, TLB, PAGES>,
    const TLB: usize,
    const PAGES: usize,
> VmiContext<'_, D, O, TLB, PAGES>
{
    /// Injects the #PF that asks the guest to bring in the page of `fault` (a fault a
    /// prober recorded): a not-present read, from user mode if the vCPU runs at CPL 3,
    /// with CR2 the page's address.
    ///
    /// A #PF is served in the address space the vCPU runs in, so a fault under another
    /// root is refused: keep it, and inject it on an event of that address space.
    ///
    /// # Errors
    /// [`VmiError::InvalidArgument`] when `fault.root` is not the vCPU's CR3; otherwise
    /// as [`VmiCore::inject_interrupt`](crate::VmiCore::inject_interrupt).
    pub fn inject_page_fault(&self, fault: AddressContext) -> Result<(), VmiError> {
        let registers = &self.event().registers;
        if fault.root != registers.translation_root() {
            return Err(VmiError::InvalidArgument(
                "page fault under another root than the vCPU's",
            ));
        }
        let user = registers.cpl() == 3;
        self.inject_interrupt(Interrupt::page_in(fault.va, MemoryAccess::R, user))
    }
}
