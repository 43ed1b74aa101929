//! AMD64 (x86-64): paging in every mode, registers, event and interrupt types.

mod paging;
mod registers;

pub use paging::{Access, AccessKind, EntryFlags, Paging, PagingMode, PfErrorCode, RightsPolicy};
pub use registers::{DescriptorTable, Registers, Segment};

use crate::addr::{Pa, Va};
use crate::arch::{Architecture, PhysRead, Translation, WalkStep};
use crate::error::VmiError;

/// The AMD64 architecture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Amd64;

impl Architecture for Amd64 {
    const PAGE_SIZE: u64 = 0x1000;
    const PAGE_SHIFT: u32 = 12;
    const PAGE_MASK: u64 = !0xfff;

    type Registers = Registers;
    type Paging = Paging;
    type EventMonitor = EventMonitor;
    type EventReason = EventReason;
    type Interrupt = Interrupt;

    #[inline]
    fn translate_observed(
        mem: &(impl PhysRead + ?Sized),
        paging: &Paging,
        va: Va,
        root: Pa,
        observe: impl FnMut(WalkStep),
    ) -> Result<Translation, VmiError> {
        paging::walk(mem, paging, va, root, observe)
    }
}

/// A control register that can be monitored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ControlRegister {
    /// CR0.
    Cr0,
    /// CR3.
    Cr3,
    /// CR4.
    Cr4,
    /// XCR0 (written by XSETBV).
    Xcr0,
}

/// An AMD64 event source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EventMonitor {
    /// Writes to a control register.
    Register(ControlRegister),
    /// Writes to the MSR with this index.
    Msr(u32),
    /// Exceptions with this vector (3 for breakpoints).
    Exception(u8),
    /// Single-stepping (monitor trap flag).
    Singlestep,
    /// CPUID.
    Cpuid,
    /// I/O instructions on this port.
    Io(u16),
}

/// The AMD64 part of an event: why the vCPU stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum EventReason {
    /// A memory access violated the rights of a view.
    MemoryAccess {
        /// The guest-physical address.
        pa: Pa,
        /// The guest-virtual address, when the hardware reported one.
        va: Option<Va>,
        /// The kind of access.
        access: crate::MemoryAccess,
    },
    /// A control register was written.
    WriteControlRegister {
        /// Which register.
        register: ControlRegister,
        /// The value before the write.
        old: u64,
        /// The value written.
        new: u64,
    },
}

/// The type of an injected event (SDM Vol. 3C §25.8.3, Table 25-17).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum InterruptType {
    /// An external interrupt.
    External,
    /// A non-maskable interrupt.
    Nmi,
    /// A hardware exception (#PF, #GP, ...).
    HardwareException,
    /// A software interrupt (INT n).
    SoftwareInterrupt,
    /// A privileged software exception (INT1).
    PrivilegedSoftwareException,
    /// A software exception (INT3, INTO).
    SoftwareException,
}

/// An interrupt or exception to inject into a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Interrupt {
    /// The vector.
    pub vector: u8,
    /// The type.
    pub typ: InterruptType,
    /// The error code, for exceptions that push one.
    pub error_code: Option<u32>,
    /// The instruction length, for software interrupts and exceptions.
    pub instruction_length: u8,
    /// The value CR2 takes (for a page fault).
    pub cr2: Option<u64>,
}

impl Interrupt {
    /// A page fault (#PF, vector 14) at `va` with `error_code` (SDM Vol. 3A §4.7).
    pub const fn page_fault(va: Va, error_code: u32) -> Self {
        Self {
            vector: 14,
            typ: InterruptType::HardwareException,
            error_code: Some(error_code),
            instruction_length: 0,
            cr2: Some(va.0),
        }
    }
}
