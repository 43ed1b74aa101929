//! What a handler holds while it answers one event: [`VmiContext`] (the core, the OS
//! layer, the event and its registers), [`VmiOsContext`] (the OS layer bound to the
//! event's vCPU), and [`VmiProber`] with its fault set [`PageFaults`].
//!
//! # Reads through the event's address space
//! A context reads virtual addresses through the page tables of the vCPU that took the
//! event (AMD64: its CR3), unless told otherwise with [`VmiContext::with_root`]; physical
//! and other contexts stay one call away through [`VmiContext::core`].
//!
//! # Probers
//! Guest memory is often paged out. A [`VmiProber`] turns a read that fails on a page
//! fault into `Ok(None)` and records the fault, de-duplicated by page, in a fixed-capacity
//! set. The handler can then inject a #PF for a recorded fault (so the guest brings the
//! page in) and retry the read on a later event. Faults a #PF cannot fix (a non-canonical
//! address, a reserved bit, a table outside guest memory) go to a suppressed set the
//! handler keeps across events, together with faults it gave up on; a suppressed fault is
//! never recorded again.
//!
//! Nothing here allocates, and nothing panics on guest data: every read has the core's
//! contract.

use core::ops::ControlFlow;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::access::{AccessContext, AddressContext};
use crate::addr::{Pa, Va, VcpuId, View};
use crate::arch::{Architecture, Registers, Translation};
use crate::driver::VmiEvent;
use crate::driver::{InterruptOf, RegistersOf, VmiDriver};
use crate::error::VmiError;
use crate::os::{Module, Process, ProcessObject, Region, Thread, VmiOs};
use crate::vmi::{GFN_CACHE_CAPACITY, V2P_CACHE_CAPACITY, VmiCore};

/// The event in hand, with the core and the OS layer: what a
/// [`VmiHandler`](crate::VmiHandler) receives. Cheap to copy (four words).
pub struct VmiContext<
    'a,
    D: VmiDriver,
    O: VmiOs<D, TLB, PAGES>,
    const TLB: usize = V2P_CACHE_CAPACITY,
    const PAGES: usize = GFN_CACHE_CAPACITY,
> {
    core: &'a VmiCore<D, TLB, PAGES>,
    os: &'a O,
    event: &'a VmiEvent<D::Architecture>,
    root: Pa,
}

impl<D: VmiDriver, O: VmiOs<D, TLB, PAGES>, const TLB: usize, const PAGES: usize> Clone
    for VmiContext<'_, D, O, TLB, PAGES>
{
    fn clone(&self) -> Self {
        *self
    }
}

impl<D: VmiDriver, O: VmiOs<D, TLB, PAGES>, const TLB: usize, const PAGES: usize> Copy
    for VmiContext<'_, D, O, TLB, PAGES>
{
}

impl<'a, D: VmiDriver, O: VmiOs<D, TLB, PAGES>, const TLB: usize, const PAGES: usize>
    VmiContext<'a, D, O, TLB, PAGES>
{
    /// A context for `event`; reads go through the event's translation root.
    pub fn new(
        core: &'a VmiCore<D, TLB, PAGES>,
        os: &'a O,
        event: &'a VmiEvent<D::Architecture>,
    ) -> Self {
        Self {
            core,
            os,
            event,
            root: event.registers.translation_root(),
        }
    }

    /// The same context, reading through the page tables rooted at `root` instead (another
    /// process's address space, say).
    #[must_use]
    pub fn with_root(self, root: Pa) -> Self {
        Self { root, ..self }
    }

    /// The core.
    pub fn core(&self) -> &'a VmiCore<D, TLB, PAGES> {
        self.core
    }

    /// The OS layer, bound to the event's vCPU.
    pub fn os(&self) -> VmiOsContext<'a, D, O, TLB, PAGES> {
        VmiOsContext {
            core: self.core,
            os: self.os,
            registers: &self.event.registers,
        }
    }

    /// The OS layer itself.
    pub fn underlying_os(&self) -> &'a O {
        self.os
    }

    /// The event.
    pub fn event(&self) -> &'a VmiEvent<D::Architecture> {
        self.event
    }

    /// The vCPU's registers at the event.
    pub fn registers(&self) -> &'a RegistersOf<D> {
        &self.event.registers
    }

    /// Why the vCPU stopped.
    pub fn reason(&self) -> &'a <D::Architecture as Architecture>::EventReason {
        &self.event.reason
    }

    /// The vCPU that took the event.
    pub fn vcpu(&self) -> VcpuId {
        self.event.vcpu
    }

    /// The view the vCPU was in.
    pub fn view(&self) -> Option<View> {
        self.event.view
    }

    /// The root reads go through: the event's, unless [`VmiContext::with_root`] changed it.
    pub fn root(&self) -> Pa {
        self.root
    }

    /// The access context of `va` under this context's root.
    pub fn access(&self, va: Va) -> AccessContext {
        AccessContext::paging(va, self.root)
    }

    /// The address context of `va` under this context's root.
    pub fn address(&self, va: Va) -> AddressContext {
        AddressContext::new(va, self.root)
    }

    /// Translates `va` under this context's root.
    ///
    /// # Errors
    /// As [`VmiCore::translate`].
    pub fn translate(&self, va: Va) -> Result<Translation, VmiError> {
        self.core.translate(va, self.root)
    }

    /// Fills `buf` from `va`.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read(&self, va: Va, buf: &mut [u8]) -> Result<(), VmiError> {
        self.core.read(self.access(va), buf)
    }

    /// Reads a `u8`.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_u8(&self, va: Va) -> Result<u8, VmiError> {
        self.core.read_u8(self.access(va))
    }

    /// Reads a little-endian `u16`.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_u16(&self, va: Va) -> Result<u16, VmiError> {
        self.core.read_u16(self.access(va))
    }

    /// Reads a little-endian `u32`.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_u32(&self, va: Va) -> Result<u32, VmiError> {
        self.core.read_u32(self.access(va))
    }

    /// Reads a little-endian `u64`.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_u64(&self, va: Va) -> Result<u64, VmiError> {
        self.core.read_u64(self.access(va))
    }

    /// Reads an address of `width` bytes (4 or 8).
    ///
    /// # Errors
    /// As [`VmiCore::read_address`].
    pub fn read_address(&self, va: Va, width: u8) -> Result<u64, VmiError> {
        self.core.read_address(self.access(va), width)
    }

    /// Reads a virtual address of `width` bytes (4 or 8).
    ///
    /// # Errors
    /// As [`VmiCore::read_address`].
    pub fn read_va(&self, va: Va, width: u8) -> Result<Va, VmiError> {
        self.core.read_va(self.access(va), width)
    }

    /// Reads a 4-byte virtual address.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_va32(&self, va: Va) -> Result<Va, VmiError> {
        self.core.read_va32(self.access(va))
    }

    /// Reads an 8-byte virtual address.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_va64(&self, va: Va) -> Result<Va, VmiError> {
        self.core.read_va64(self.access(va))
    }

    /// Reads a pointer of the width of the code the vCPU runs (AMD64: 8 bytes in 64-bit
    /// mode, 4 in compatibility mode).
    ///
    /// # Errors
    /// [`VmiError::InvalidAddressWidth`] for 16-bit code; otherwise as [`VmiCore::read`].
    pub fn read_va_native(&self, va: Va) -> Result<Va, VmiError> {
        self.read_va(va, self.event.registers.address_width())
    }

    /// Reads a plain-old-data structure.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_struct<T: FromBytes + IntoBytes>(&self, va: Va) -> Result<T, VmiError> {
        self.core.read_struct(self.access(va))
    }

    /// Reads a NUL-terminated byte string into `buf`, with the core's length limit.
    ///
    /// # Errors
    /// As [`VmiCore::read_string_bytes_into`]: [`VmiError::BufferTooSmall`] for a string
    /// longer than `buf`.
    pub fn read_string_bytes_into<'b>(
        &self,
        va: Va,
        buf: &'b mut [u8],
    ) -> Result<&'b [u8], VmiError> {
        self.core.read_string_bytes_into(self.access(va), buf)
    }

    /// Reads a NUL-terminated UTF-8 string into `buf`, with the core's length limit.
    ///
    /// # Errors
    /// As [`VmiCore::read_string_into`]: [`VmiError::InvalidUtf8`], and
    /// [`VmiError::BufferTooSmall`] for a string longer than `buf`.
    pub fn read_string_into<'b>(&self, va: Va, buf: &'b mut [u8]) -> Result<&'b str, VmiError> {
        self.core.read_string_into(self.access(va), buf)
    }

    /// Reads a NUL-terminated UTF-16LE string into `buf`, with the core's length limit.
    ///
    /// # Errors
    /// As [`VmiCore::read_wstring_bytes_into`]: [`VmiError::BufferTooSmall`] for a string
    /// longer than `buf`.
    pub fn read_wstring_bytes_into<'b>(
        &self,
        va: Va,
        buf: &'b mut [u16],
    ) -> Result<&'b [u16], VmiError> {
        self.core.read_wstring_bytes_into(self.access(va), buf)
    }

    /// Writes `data` at `va`.
    ///
    /// # Errors
    /// As [`VmiCore::write`].
    pub fn write(&self, va: Va, data: &[u8]) -> Result<(), VmiError> {
        self.core.write(self.access(va), data)
    }

    /// Writes a little-endian `u64` at `va`.
    ///
    /// # Errors
    /// As [`VmiCore::write`].
    pub fn write_u64(&self, va: Va, value: u64) -> Result<(), VmiError> {
        self.core.write_u64(self.access(va), value)
    }

    /// Writes a plain-old-data structure at `va`.
    ///
    /// # Errors
    /// As [`VmiCore::write`].
    pub fn write_struct<T: IntoBytes + Immutable>(
        &self,
        va: Va,
        value: &T,
    ) -> Result<(), VmiError> {
        self.core.write_struct(self.access(va), value)
    }

    /// Injects an interrupt or exception into the event's vCPU.
    ///
    /// # Errors
    /// As [`VmiCore::inject_interrupt`].
    pub fn inject_interrupt(&self, interrupt: InterruptOf<D>) -> Result<(), VmiError> {
        self.core.inject_interrupt(self.event.vcpu, interrupt)
    }
}

/// The OS layer bound to one vCPU's registers (an event's): the [`VmiOs`] methods without
/// the core and registers arguments.
pub struct VmiOsContext<
    'a,
    D: VmiDriver,
    O: VmiOs<D, TLB, PAGES>,
    const TLB: usize = V2P_CACHE_CAPACITY,
    const PAGES: usize = GFN_CACHE_CAPACITY,
> {
    core: &'a VmiCore<D, TLB, PAGES>,
    os: &'a O,
    registers: &'a RegistersOf<D>,
}

impl<D: VmiDriver, O: VmiOs<D, TLB, PAGES>, const TLB: usize, const PAGES: usize> Clone
    for VmiOsContext<'_, D, O, TLB, PAGES>
{
    fn clone(&self) -> Self {
        *self
    }
}

impl<D: VmiDriver, O: VmiOs<D, TLB, PAGES>, const TLB: usize, const PAGES: usize> Copy
    for VmiOsContext<'_, D, O, TLB, PAGES>
{
}

impl<'a, D: VmiDriver, O: VmiOs<D, TLB, PAGES>, const TLB: usize, const PAGES: usize>
    VmiOsContext<'a, D, O, TLB, PAGES>
{
    /// The OS layer bound to `registers`.
    pub fn new(core: &'a VmiCore<D, TLB, PAGES>, os: &'a O, registers: &'a RegistersOf<D>) -> Self {
        Self {
            core,
            os,
            registers,
        }
    }

    /// The OS layer itself.
    pub fn underlying_os(&self) -> &'a O {
        self.os
    }

    /// See [`VmiOs::kernel_image_base`].
    ///
    /// # Errors
    /// As the OS layer's.
    pub fn kernel_image_base(&self) -> Result<Va, VmiError> {
        self.os.kernel_image_base(self.core, self.registers)
    }

    /// See [`VmiOs::processes`].
    ///
    /// # Errors
    /// As the OS layer's.
    pub fn processes(
        &self,
        mut visit: impl FnMut(Process) -> ControlFlow<()>,
    ) -> Result<(), VmiError> {
        self.os.processes(self.core, self.registers, &mut visit)
    }

    /// See [`VmiOs::process_name`].
    ///
    /// # Errors
    /// As the OS layer's.
    pub fn process_name(&self, process: ProcessObject, buf: &mut [u8]) -> Result<usize, VmiError> {
        self.os
            .process_name(self.core, self.registers, process, buf)
    }

    /// See [`VmiOs::threads`].
    ///
    /// # Errors
    /// As the OS layer's.
    pub fn threads(
        &self,
        process: ProcessObject,
        mut visit: impl FnMut(Thread) -> ControlFlow<()>,
    ) -> Result<(), VmiError> {
        self.os
            .threads(self.core, self.registers, process, &mut visit)
    }

    /// See [`VmiOs::modules`].
    ///
    /// # Errors
    /// As the OS layer's.
    pub fn modules(
        &self,
        mut visit: impl FnMut(Module) -> ControlFlow<()>,
    ) -> Result<(), VmiError> {
        self.os.modules(self.core, self.registers, &mut visit)
    }

    /// See [`VmiOs::module_name`].
    ///
    /// # Errors
    /// As the OS layer's.
    pub fn module_name(&self, module: &Module, buf: &mut [u8]) -> Result<usize, VmiError> {
        self.os.module_name(self.core, self.registers, module, buf)
    }

    /// See [`VmiOs::regions`].
    ///
    /// # Errors
    /// As the OS layer's.
    pub fn regions(
        &self,
        process: ProcessObject,
        mut visit: impl FnMut(Region) -> ControlFlow<()>,
    ) -> Result<(), VmiError> {
        self.os
            .regions(self.core, self.registers, process, &mut visit)
    }

    /// See [`VmiOs::current_process`].
    ///
    /// # Errors
    /// As the OS layer's.
    pub fn current_process(&self) -> Result<Process, VmiError> {
        self.os.current_process(self.core, self.registers)
    }

    /// See [`VmiOs::current_thread`].
    ///
    /// # Errors
    /// As the OS layer's.
    pub fn current_thread(&self) -> Result<Thread, VmiError> {
        self.os.current_thread(self.core, self.registers)
    }

    /// See [`VmiOs::function_argument`].
    ///
    /// # Errors
    /// As the OS layer's.
    pub fn function_argument(&self, index: u64) -> Result<u64, VmiError> {
        self.os.function_argument(self.core, self.registers, index)
    }

    /// See [`VmiOs::function_return_value`].
    ///
    /// # Errors
    /// As the OS layer's.
    pub fn function_return_value(&self) -> Result<u64, VmiError> {
        self.os.function_return_value(self.core, self.registers)
    }

    /// See [`VmiOs::syscall_argument`].
    ///
    /// # Errors
    /// As the OS layer's.
    pub fn syscall_argument(&self, index: u64) -> Result<u64, VmiError> {
        self.os.syscall_argument(self.core, self.registers, index)
    }
}
