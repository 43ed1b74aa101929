//! The trait an operating-system layer implements, and [`NoOs`] for guests without one.
//! OS layers (`os/linux/`, ...) go in folders beside this file.
//!
//! Layer: may import `addr`, `access`, `error`, `cache`, `arch`, `driver` and `vmi`.
//!
//! An OS layer knows a guest kernel's structures: where the kernel image is, how to walk
//! its process and module lists, which thread runs on a vCPU, where a function's
//! arguments live under its calling convention. It reads guest memory only through the
//! [`VmiCore`] it is handed, so it inherits the core's contract.
//!
//! # No allocation
//! Nothing in the trait needs an allocator. Lists are walked with a callback that can stop
//! the walk early (return [`ControlFlow::Break`]); names are copied into a buffer the
//! caller supplies. An OS layer for a hypervisor's exit path can therefore be as
//! allocation-free as the core.
//!
//! # Contract for implementations
//! Kernel lists are guest data: a walk must be bounded (a cycle in a list must not loop
//! forever: cap the count, or detect the revisit) and must return an error rather than
//! panic on any guest contents.

use core::fmt;
use core::ops::ControlFlow;

use crate::access::MemoryAccess;
use crate::addr::{Pa, Va};
use crate::driver::{RegistersOf, VmiDriver};
use crate::error::VmiError;
use crate::vmi::{GFN_CACHE_CAPACITY, V2P_CACHE_CAPACITY, VmiCore};

#[cfg(feature = "linux")]
pub mod linux;

/// A process identifier as the guest kernel numbers processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ProcessId(pub u32);

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A thread identifier as the guest kernel numbers threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ThreadId(pub u32);

impl fmt::Display for ThreadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The kernel's object for a process (Linux `task_struct`, Windows `EPROCESS`), by its
/// virtual address in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ProcessObject(pub Va);

/// The kernel's object for a thread (Linux `task_struct`, Windows `ETHREAD`), by its
/// virtual address in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ThreadObject(pub Va);

/// A process, as an OS layer reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Process {
    /// The kernel object.
    pub object: ProcessObject,
    /// The identifier.
    pub id: ProcessId,
    /// The root of its page tables (AMD64: its CR3), for reading its memory.
    pub root: Pa,
}

/// A thread, as an OS layer reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Thread {
    /// The kernel object.
    pub object: ThreadObject,
    /// The identifier.
    pub id: ThreadId,
    /// The process it belongs to.
    pub process: ProcessObject,
}

/// A loaded kernel module or driver image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Module {
    /// The kernel's object for the module (Linux `struct module`, Windows
    /// `KLDR_DATA_TABLE_ENTRY`).
    pub object: Va,
    /// The first address of its image.
    pub base: Va,
    /// The size of its image in bytes.
    pub size: u64,
}

/// What backs a memory region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RegionKind {
    /// Anonymous memory: heap, stack, private allocations.
    Private,
    /// A mapped file.
    File,
    /// A mapped executable image (a shared library, the program itself).
    Image,
}

/// A range of a process's virtual address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Region {
    /// The first address.
    pub start: Va,
    /// The address past the last byte.
    pub end: Va,
    /// The rights the kernel grants on it.
    pub access: MemoryAccess,
    /// What backs it.
    pub kind: RegionKind,
}

/// The operating-system layer of a guest, over a driver `D`.
///
/// Every method gets the core to read through and the registers of the vCPU it is asked
/// about (an event's registers, usually): the current process and thread, and the
/// kernel's address space, are those of that vCPU.
///
/// The trait is dyn-compatible: `&dyn VmiOs<D>` works where the layer is chosen at run
/// time.
pub trait VmiOs<
    D: VmiDriver,
    const TLB: usize = V2P_CACHE_CAPACITY,
    const PAGES: usize = GFN_CACHE_CAPACITY,
>
{
    /// The virtual address of the kernel image's first byte.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] if the layer cannot tell; a read error from the core.
    fn kernel_image_base(
        &self,
        core: &VmiCore<D, TLB, PAGES>,
        registers: &RegistersOf<D>,
    ) -> Result<Va, VmiError>;

    /// Calls `visit` with each process, until the list ends or `visit` breaks.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] if the layer cannot list processes; a read error from
    /// the core, or a malformed list.
    fn processes(
        &self,
        core: &VmiCore<D, TLB, PAGES>,
        registers: &RegistersOf<D>,
        visit: &mut dyn FnMut(Process) -> ControlFlow<()>,
    ) -> Result<(), VmiError>;

    /// Copies the name of `process` into `buf` (UTF-8, truncated to fit, no NUL) and
    /// returns the number of bytes written.
    ///
    /// # Errors
    /// As [`VmiOs::processes`].
    fn process_name(
        &self,
        core: &VmiCore<D, TLB, PAGES>,
        registers: &RegistersOf<D>,
        process: ProcessObject,
        buf: &mut [u8],
    ) -> Result<usize, VmiError>;

    /// Calls `visit` with each thread of `process`, until the list ends or `visit` breaks.
    ///
    /// # Errors
    /// As [`VmiOs::processes`].
    fn threads(
        &self,
        core: &VmiCore<D, TLB, PAGES>,
        registers: &RegistersOf<D>,
        process: ProcessObject,
        visit: &mut dyn FnMut(Thread) -> ControlFlow<()>,
    ) -> Result<(), VmiError>;

    /// Calls `visit` with each loaded kernel module, until the list ends or `visit`
    /// breaks.
    ///
    /// # Errors
    /// As [`VmiOs::processes`].
    fn modules(
        &self,
        core: &VmiCore<D, TLB, PAGES>,
        registers: &RegistersOf<D>,
        visit: &mut dyn FnMut(Module) -> ControlFlow<()>,
    ) -> Result<(), VmiError>;

    /// Copies the name of `module` into `buf` (UTF-8, truncated to fit, no NUL) and
    /// returns the number of bytes written.
    ///
    /// # Errors
    /// As [`VmiOs::processes`].
    fn module_name(
        &self,
        core: &VmiCore<D, TLB, PAGES>,
        registers: &RegistersOf<D>,
        module: &Module,
        buf: &mut [u8],
    ) -> Result<usize, VmiError>;

    /// Calls `visit` with each memory region of `process`, in address order, until the
    /// list ends or `visit` breaks.
    ///
    /// # Errors
    /// As [`VmiOs::processes`].
    fn regions(
        &self,
        core: &VmiCore<D, TLB, PAGES>,
        registers: &RegistersOf<D>,
        process: ProcessObject,
        visit: &mut dyn FnMut(Region) -> ControlFlow<()>,
    ) -> Result<(), VmiError>;

    /// The process running on the vCPU.
    ///
    /// # Errors
    /// As [`VmiOs::processes`].
    fn current_process(
        &self,
        core: &VmiCore<D, TLB, PAGES>,
        registers: &RegistersOf<D>,
    ) -> Result<Process, VmiError>;

    /// The thread running on the vCPU.
    ///
    /// # Errors
    /// As [`VmiOs::processes`].
    fn current_thread(
        &self,
        core: &VmiCore<D, TLB, PAGES>,
        registers: &RegistersOf<D>,
    ) -> Result<Thread, VmiError>;

    /// Argument `index` (from 0) of the function the vCPU has just entered, under the
    /// guest's calling convention (in a register or on the stack).
    ///
    /// # Errors
    /// As [`VmiOs::processes`].
    fn function_argument(
        &self,
        core: &VmiCore<D, TLB, PAGES>,
        registers: &RegistersOf<D>,
        index: u64,
    ) -> Result<u64, VmiError>;

    /// The value the function the vCPU has just returned from returns.
    ///
    /// # Errors
    /// As [`VmiOs::processes`].
    fn function_return_value(
        &self,
        core: &VmiCore<D, TLB, PAGES>,
        registers: &RegistersOf<D>,
    ) -> Result<u64, VmiError>;

    /// Argument `index` (from 0) of the system call the vCPU is entering, under the
    /// guest kernel's system-call convention.
    ///
    /// # Errors
    /// As [`VmiOs::processes`].
    fn syscall_argument(
        &self,
        core: &VmiCore<D, TLB, PAGES>,
        registers: &RegistersOf<D>,
        index: u64,
    ) -> Result<u64, VmiError>;
}

/// The OS layer of a guest whose operating system is unknown (or absent): every method
/// returns [`VmiError::NotSupported`], naming the method, and touches nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct NoOs;

impl<D: VmiDriver, const TLB: usize, const PAGES: usize> VmiOs<D, TLB, PAGES> for NoOs {
    fn kernel_image_base(
        &self,
        _: &VmiCore<D, TLB, PAGES>,
        _: &RegistersOf<D>,
    ) -> Result<Va, VmiError> {
        Err(VmiError::NotSupported("os: kernel_image_base"))
    }

    fn processes(
        &self,
        _: &VmiCore<D, TLB, PAGES>,
        _: &RegistersOf<D>,
        _: &mut dyn FnMut(Process) -> ControlFlow<()>,
    ) -> Result<(), VmiError> {
        Err(VmiError::NotSupported("os: processes"))
    }

    fn process_name(
        &self,
        _: &VmiCore<D, TLB, PAGES>,
        _: &RegistersOf<D>,
        _: ProcessObject,
        _: &mut [u8],
    ) -> Result<usize, VmiError> {
        Err(VmiError::NotSupported("os: process_name"))
    }

    fn threads(
        &self,
        _: &VmiCore<D, TLB, PAGES>,
        _: &RegistersOf<D>,
        _: ProcessObject,
        _: &mut dyn FnMut(Thread) -> ControlFlow<()>,
    ) -> Result<(), VmiError> {
        Err(VmiError::NotSupported("os: threads"))
    }

    fn modules(
        &self,
        _: &VmiCore<D, TLB, PAGES>,
        _: &RegistersOf<D>,
        _: &mut dyn FnMut(Module) -> ControlFlow<()>,
    ) -> Result<(), VmiError> {
        Err(VmiError::NotSupported("os: modules"))
    }

    fn module_name(
        &self,
        _: &VmiCore<D, TLB, PAGES>,
        _: &RegistersOf<D>,
        _: &Module,
        _: &mut [u8],
    ) -> Result<usize, VmiError> {
        Err(VmiError::NotSupported("os: module_name"))
    }

    fn regions(
        &self,
        _: &VmiCore<D, TLB, PAGES>,
        _: &RegistersOf<D>,
        _: ProcessObject,
        _: &mut dyn FnMut(Region) -> ControlFlow<()>,
    ) -> Result<(), VmiError> {
        Err(VmiError::NotSupported("os: regions"))
    }

    fn current_process(
        &self,
        _: &VmiCore<D, TLB, PAGES>,
        _: &RegistersOf<D>,
    ) -> Result<Process, VmiError> {
        Err(VmiError::NotSupported("os: current_process"))
    }

    fn current_thread(
        &self,
        _: &VmiCore<D, TLB, PAGES>,
        _: &RegistersOf<D>,
    ) -> Result<Thread, VmiError> {
        Err(VmiError::NotSupported("os: current_thread"))
    }

    fn function_argument(
        &self,
        _: &VmiCore<D, TLB, PAGES>,
        _: &RegistersOf<D>,
        _: u64,
    ) -> Result<u64, VmiError> {
        Err(VmiError::NotSupported("os: function_argument"))
    }

    fn function_return_value(
        &self,
        _: &VmiCore<D, TLB, PAGES>,
        _: &RegistersOf<D>,
    ) -> Result<u64, VmiError> {
        Err(VmiError::NotSupported("os: function_return_value"))
    }

    fn syscall_argument(
        &self,
        _: &VmiCore<D, TLB, PAGES>,
        _: &RegistersOf<D>,
        _: u64,
    ) -> Result<u64, VmiError> {
        Err(VmiError::NotSupported("os: syscall_argument"))
    }
}
