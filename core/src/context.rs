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

use core::marker::PhantomData;
use core::ops::ControlFlow;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::access::{AccessContext, AddressContext, MemoryAccess};
use crate::addr::{Pa, Va, VcpuId, View};
use crate::arch::amd64::{Amd64, Interrupt};
use crate::arch::{Architecture, Registers, Translation};
use crate::core::VmiCore;
use crate::driver::{InterruptOf, RegistersOf, VmiDriver};
use crate::error::{FaultReason, PageFault, VmiError};
use crate::event::VmiEvent;
use crate::os::{Module, Process, ProcessObject, Region, Thread, VmiOs};

/// The event in hand, with the core and the OS layer: what a
/// [`VmiHandler`](crate::VmiHandler) receives. Cheap to copy (four words).
pub struct VmiContext<'a, D: VmiDriver, O: VmiOs<D>> {
    core: &'a VmiCore<D>,
    os: &'a O,
    event: &'a VmiEvent<D::Architecture>,
    root: Pa,
}

impl<D: VmiDriver, O: VmiOs<D>> Clone for VmiContext<'_, D, O> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D: VmiDriver, O: VmiOs<D>> Copy for VmiContext<'_, D, O> {}

impl<'a, D: VmiDriver, O: VmiOs<D>> VmiContext<'a, D, O> {
    /// A context for `event`; reads go through the event's translation root.
    pub fn new(core: &'a VmiCore<D>, os: &'a O, event: &'a VmiEvent<D::Architecture>) -> Self {
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
    pub fn core(&self) -> &'a VmiCore<D> {
        self.core
    }

    /// The OS layer, bound to the event's vCPU.
    pub fn os(&self) -> VmiOsContext<'a, D, O> {
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
    /// As [`VmiCore::read`].
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
    /// [`VmiError::InvalidUtf8`]; otherwise as [`VmiCore::read`].
    pub fn read_string_into<'b>(&self, va: Va, buf: &'b mut [u8]) -> Result<&'b str, VmiError> {
        self.core.read_string_into(self.access(va), buf)
    }

    /// Reads a NUL-terminated UTF-16LE string into `buf`, with the core's length limit.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
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

impl<D: VmiDriver<Architecture = Amd64>, O: VmiOs<D>> VmiContext<'_, D, O> {
    /// Injects the #PF that asks the guest to bring in the page of `fault` (a fault a
    /// prober recorded): a not-present read, from user mode if the vCPU runs at CPL 3,
    /// with CR2 the page's address.
    ///
    /// A #PF is served in the address space the vCPU runs in, so a fault under another
    /// root is refused: keep it, and inject it on an event of that address space.
    ///
    /// # Errors
    /// [`VmiError::InvalidArgument`] when `fault.root` is not the vCPU's CR3; otherwise
    /// as [`VmiCore::inject_interrupt`].
    pub fn inject_page_fault(&self, fault: AddressContext) -> Result<(), VmiError> {
        let registers = &self.event.registers;
        if fault.root != registers.translation_root() {
            return Err(VmiError::InvalidArgument(
                "page fault under another root than the vCPU's",
            ));
        }
        let user = registers.cpl() == 3;
        self.inject_interrupt(Interrupt::page_in(fault.va, MemoryAccess::R, user))
    }
}

/// The OS layer bound to one vCPU's registers (an event's): the [`VmiOs`] methods without
/// the core and registers arguments.
pub struct VmiOsContext<'a, D: VmiDriver, O: VmiOs<D>> {
    core: &'a VmiCore<D>,
    os: &'a O,
    registers: &'a RegistersOf<D>,
}

impl<D: VmiDriver, O: VmiOs<D>> Clone for VmiOsContext<'_, D, O> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D: VmiDriver, O: VmiOs<D>> Copy for VmiOsContext<'_, D, O> {}

impl<'a, D: VmiDriver, O: VmiOs<D>> VmiOsContext<'a, D, O> {
    /// The OS layer bound to `registers`.
    pub fn new(core: &'a VmiCore<D>, os: &'a O, registers: &'a RegistersOf<D>) -> Self {
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

/// A fixed-capacity set of page faults, each an [`AddressContext`]: the page's first
/// address and the root it was translated under. Insertion order is kept (removal swaps
/// the last entry into the hole).
///
/// `N` must be a power of two greater than 1 (the hash index demands it; another value
/// fails to compile). Every operation is O(1) on average and O(N) at worst; nothing
/// allocates. A full set hands the fault back and counts it as dropped.
#[derive(Clone, Debug, Default)]
pub struct PageFaults<const N: usize> {
    set: heapless::FnvIndexSet<AddressContext, N>,
    dropped: usize,
}

impl<const N: usize> PageFaults<N> {
    /// An empty set.
    pub const fn new() -> Self {
        Self {
            set: heapless::FnvIndexSet::new(),
            dropped: 0,
        }
    }

    /// Adds `fault`; `Ok(true)` if it was new, `Ok(false)` if it was there already.
    ///
    /// # Errors
    /// The fault itself, handed back, when the set is full (it is counted in
    /// [`PageFaults::dropped`]).
    pub fn insert(&mut self, fault: AddressContext) -> Result<bool, AddressContext> {
        let result = self.set.insert(fault);
        if result.is_err() {
            self.dropped = self.dropped.saturating_add(1);
        }
        result
    }

    /// Whether `fault` is in the set.
    pub fn contains(&self, fault: &AddressContext) -> bool {
        self.set.contains(fault)
    }

    /// Removes `fault`; whether it was there.
    pub fn remove(&mut self, fault: &AddressContext) -> bool {
        self.set.remove(fault)
    }

    /// The faults, in insertion order (until a removal).
    pub fn iter(&self) -> impl Iterator<Item = &AddressContext> + '_ {
        self.set.iter()
    }

    /// The first fault.
    pub fn first(&self) -> Option<&AddressContext> {
        self.set.first()
    }

    /// The number of faults.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Whether no other fault fits.
    pub fn is_full(&self) -> bool {
        self.set.len() >= N
    }

    /// The capacity, `N`.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// How many faults did not fit since the set was made or last cleared.
    pub const fn dropped(&self) -> usize {
        self.dropped
    }

    /// Removes every fault and resets the dropped count.
    pub fn clear(&mut self) {
        self.set.clear();
        self.dropped = 0;
    }
}

/// How a [`VmiProber`] filed a page fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Probed {
    /// A fault the guest can serve: recorded (or recorded already) in the prober's faults.
    Recorded,
    /// The fault is in the suppressed set: ignored.
    Suppressed,
    /// A fault no #PF can fix (non-canonical address, reserved bit, table outside guest
    /// memory): added to the suppressed set.
    Unservable,
    /// The set it belongs in is full: counted as dropped there.
    Dropped,
}

/// Runs reads that may hit paged-out memory, recording their page faults instead of
/// failing.
///
/// A fault is recorded by page (the faulting address rounded down to the page, and the
/// root), so many reads of one missing page record it once. For a read that spans pages
/// only the first missing page is known; the next one shows on the retry.
///
/// ```
/// use introvisor::{AddressContext, FaultReason, PageFault, PageFaults, Pa, Va, VmiError, VmiProber};
/// use introvisor::arch::amd64::Amd64;
///
/// let mut suppressed = PageFaults::<16>::new();
/// let mut prober = VmiProber::<Amd64, 16>::new(&mut suppressed);
/// let missing = PageFault {
///     va: Va(0x7000_0123), root: Pa(0x1000), level: 1, entry: Pa(0x5000), value: 0,
///     reason: FaultReason::NotPresent,
/// };
/// // A read that hit the missing page yields None, and the page is remembered.
/// assert_eq!(prober.check(Err::<u64, _>(VmiError::Translation(missing)))?, None);
/// assert_eq!(prober.check(Ok::<u64, VmiError>(7))?, Some(7));
/// assert_eq!(
///     prober.faults().first(),
///     Some(&AddressContext::new(Va(0x7000_0000), Pa(0x1000)))
/// );
/// # Ok::<(), VmiError>(())
/// ```
pub struct VmiProber<'s, A: Architecture, const N: usize> {
    faults: PageFaults<N>,
    suppressed: &'s mut PageFaults<N>,
    arch: PhantomData<fn() -> A>,
}

impl<'s, A: Architecture, const N: usize> VmiProber<'s, A, N> {
    /// A prober with no faults yet, which ignores the faults in `suppressed` and adds to
    /// it the faults no #PF can fix.
    pub fn new(suppressed: &'s mut PageFaults<N>) -> Self {
        Self {
            faults: PageFaults::new(),
            suppressed,
            arch: PhantomData,
        }
    }

    /// Passes `Ok` on as `Some`, turns a failed translation into `None` after filing its
    /// fault, and passes any other error on.
    ///
    /// # Errors
    /// Any error of `result` but [`VmiError::Translation`].
    pub fn check<T>(&mut self, result: Result<T, VmiError>) -> Result<Option<T>, VmiError> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(VmiError::Translation(fault)) => {
                self.file(&fault);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `read` and [`check`](VmiProber::check)s its result.
    ///
    /// # Errors
    /// As [`VmiProber::check`].
    pub fn probe<T>(
        &mut self,
        read: impl FnOnce() -> Result<T, VmiError>,
    ) -> Result<Option<T>, VmiError> {
        let result = read();
        self.check(result)
    }

    /// Files one page fault: recorded if the guest can serve it, suppressed if it never
    /// can, ignored if suppressed already.
    pub fn file(&mut self, fault: &PageFault) -> Probed {
        let page = AddressContext::new(A::va_align_down(fault.va), fault.root);
        if self.suppressed.contains(&page) {
            return Probed::Suppressed;
        }
        let servable = matches!(fault.reason, FaultReason::NotPresent);
        let set = if servable {
            &mut self.faults
        } else {
            &mut *self.suppressed
        };
        match set.insert(page) {
            Err(_) => Probed::Dropped,
            Ok(_) if servable => Probed::Recorded,
            Ok(_) => Probed::Unservable,
        }
    }

    /// The faults recorded so far.
    pub fn faults(&self) -> &PageFaults<N> {
        &self.faults
    }

    /// The suppressed set.
    pub fn suppressed(&self) -> &PageFaults<N> {
        self.suppressed
    }

    /// Ends probing, with the faults recorded.
    pub fn into_faults(self) -> PageFaults<N> {
        self.faults
    }

    /// `Ok` if no fault was recorded (or dropped), else the first recorded fault as a
    /// translation error: for a handler that wants all or nothing.
    ///
    /// # Errors
    /// [`VmiError::Translation`] naming the first recorded page, with reason
    /// [`FaultReason::NotPresent`]; [`VmiError::CapacityExceeded`] if faults were only
    /// dropped.
    pub fn error_for_page_faults(&self) -> Result<(), VmiError> {
        if let Some(first) = self.faults.first() {
            return Err(VmiError::Translation(PageFault {
                va: first.va,
                root: first.root,
                level: 0,
                entry: Pa(0),
                value: 0,
                reason: FaultReason::NotPresent,
            }));
        }
        if self.faults.dropped() > 0 {
            return Err(VmiError::CapacityExceeded);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::amd64::Amd64;

    fn fault(va: u64, root: u64, reason: FaultReason) -> PageFault {
        PageFault {
            va: Va(va),
            root: Pa(root),
            level: 1,
            entry: Pa(0),
            value: 0,
            reason,
        }
    }

    #[test]
    fn faults_are_deduplicated_by_page_and_root() {
        let mut suppressed = PageFaults::<4>::new();
        let mut prober = VmiProber::<Amd64, 4>::new(&mut suppressed);
        assert_eq!(
            prober.file(&fault(0x1001, 0x9000, FaultReason::NotPresent)),
            Probed::Recorded
        );
        assert_eq!(
            prober.file(&fault(0x1fff, 0x9000, FaultReason::NotPresent)),
            Probed::Recorded
        );
        assert_eq!(
            prober.file(&fault(0x1000, 0xa000, FaultReason::NotPresent)),
            Probed::Recorded
        );
        assert_eq!(prober.faults().len(), 2);
        let pages: std::vec::Vec<_> = prober.faults().iter().copied().collect();
        assert_eq!(
            pages,
            [
                AddressContext::new(Va(0x1000), Pa(0x9000)),
                AddressContext::new(Va(0x1000), Pa(0xa000))
            ]
        );
        assert!(prober.suppressed().is_empty());
    }

    #[test]
    fn unservable_faults_are_suppressed_and_suppressed_ones_ignored() {
        let mut suppressed = PageFaults::<4>::new();
        suppressed
            .insert(AddressContext::new(Va(0x5000), Pa(0x9000)))
            .unwrap();
        let mut prober = VmiProber::<Amd64, 4>::new(&mut suppressed);
        assert_eq!(
            prober.file(&fault(0x5008, 0x9000, FaultReason::NotPresent)),
            Probed::Suppressed
        );
        assert_eq!(
            prober.file(&fault(0x8000_0000_0000, 0x9000, FaultReason::NonCanonical)),
            Probed::Unservable
        );
        assert_eq!(
            prober.file(&fault(0x6000, 0x9000, FaultReason::ReservedBit)),
            Probed::Unservable
        );
        assert_eq!(
            prober.file(&fault(0x6000, 0x9000, FaultReason::ReservedBit)),
            Probed::Suppressed
        );
        assert!(prober.faults().is_empty());
        assert_eq!(prober.error_for_page_faults(), Ok(()));
        drop(prober);
        assert_eq!(suppressed.len(), 3);
    }

    #[test]
    fn a_full_set_hands_the_fault_back_and_counts_it() {
        let mut set = PageFaults::<2>::new();
        assert_eq!(set.insert(AddressContext::new(Va(0), Pa(0))), Ok(true));
        assert_eq!(set.insert(AddressContext::new(Va(0), Pa(0))), Ok(false));
        assert_eq!(set.insert(AddressContext::new(Va(0x1000), Pa(0))), Ok(true));
        assert!(set.is_full());
        let third = AddressContext::new(Va(0x2000), Pa(0));
        assert_eq!(set.insert(third), Err(third));
        assert_eq!(set.dropped(), 1);
        assert_eq!(set.len(), 2);
        assert!(set.remove(&AddressContext::new(Va(0), Pa(0))));
        assert!(!set.contains(&AddressContext::new(Va(0), Pa(0))));
        set.clear();
        assert!(set.is_empty());
        assert_eq!(set.dropped(), 0);

        let mut suppressed = PageFaults::<2>::new();
        let mut prober = VmiProber::<Amd64, 2>::new(&mut suppressed);
        for page in 0..3u64 {
            prober.file(&fault(page << 12, 0, FaultReason::NotPresent));
        }
        assert_eq!(prober.faults().len(), 2);
        assert_eq!(prober.faults().dropped(), 1);
        assert!(matches!(
            prober.error_for_page_faults(),
            Err(VmiError::Translation(PageFault { va: Va(0), .. }))
        ));
    }

    #[test]
    fn other_errors_pass_through_the_prober() {
        let mut suppressed = PageFaults::<2>::new();
        let mut prober = VmiProber::<Amd64, 2>::new(&mut suppressed);
        assert_eq!(
            prober.probe(|| Err::<u8, _>(VmiError::OutOfBounds(Pa(1)))),
            Err(VmiError::OutOfBounds(Pa(1)))
        );
        assert_eq!(prober.probe(|| Ok::<u8, VmiError>(3)), Ok(Some(3)));
        assert!(prober.faults().is_empty());
    }
}
