//! AMD64 events: what a vCPU can stop for, the monitors that make it stop, and the
//! interrupts and exceptions a handler can inject.
//!
//! Everything here is plain `Copy` data. Nothing is read from guest memory, so nothing
//! here can fail on guest data; the constructors that take guest-derived values (a
//! [`PageFault`], an error code) are total.

use crate::access::MemoryAccess;
use crate::addr::{Gfn, Pa, Va};
use crate::error::{FaultReason, PageFault};

/// Exception and interrupt vectors the architecture defines (SDM Vol. 3A §6.3.1,
/// Table 6-1). Vectors 32 to 255 belong to the guest.
pub mod vector {
    /// #DE, divide error.
    pub const DE: u8 = 0;
    /// #DB, debug exception (also INT1).
    pub const DB: u8 = 1;
    /// NMI, the non-maskable interrupt.
    pub const NMI: u8 = 2;
    /// #BP, breakpoint (INT3).
    pub const BP: u8 = 3;
    /// #OF, overflow (INTO).
    pub const OF: u8 = 4;
    /// #BR, BOUND range exceeded.
    pub const BR: u8 = 5;
    /// #UD, invalid opcode.
    pub const UD: u8 = 6;
    /// #NM, device not available.
    pub const NM: u8 = 7;
    /// #DF, double fault (error code zero).
    pub const DF: u8 = 8;
    /// #TS, invalid TSS (error code).
    pub const TS: u8 = 10;
    /// #NP, segment not present (error code).
    pub const NP: u8 = 11;
    /// #SS, stack-segment fault (error code).
    pub const SS: u8 = 12;
    /// #GP, general protection (error code).
    pub const GP: u8 = 13;
    /// #PF, page fault (error code; CR2 holds the linear address).
    pub const PF: u8 = 14;
    /// #MF, x87 floating-point error.
    pub const MF: u8 = 16;
    /// #AC, alignment check (error code zero).
    pub const AC: u8 = 17;
    /// #MC, machine check.
    pub const MC: u8 = 18;
    /// #XM, SIMD floating-point exception.
    pub const XM: u8 = 19;
    /// #VE, virtualization exception.
    pub const VE: u8 = 20;
    /// #CP, control-protection exception (error code).
    pub const CP: u8 = 21;
}

/// A control register whose writes can be monitored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ControlRegister {
    /// CR0.
    Cr0,
    /// CR3, the page-table root: a write is an address-space switch.
    Cr3,
    /// CR4.
    Cr4,
    /// XCR0, written by XSETBV (SDM Vol. 1 §13.3).
    Xcr0,
}

/// An AMD64 event source a driver can enable or disable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EventMonitor {
    /// Writes to a control register (MOV to CR0/CR3/CR4, XSETBV for XCR0).
    Register(ControlRegister),
    /// Writes (WRMSR) to the MSR with this index.
    Msr(u32),
    /// Exceptions and interrupts with this vector ([`vector::BP`] for breakpoints).
    Exception(u8),
    /// Single-stepping: one event after each instruction of a stepping vCPU (the VMX
    /// monitor trap flag, SDM Vol. 3C §26.5.2).
    Singlestep,
    /// CPUID.
    Cpuid,
    /// I/O instructions (IN, OUT, INS, OUTS) on this port.
    Io(u16),
}

/// A memory access that the rights of the vCPU's view forbade (an EPT violation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MemoryAccessEvent {
    /// The guest-physical address accessed.
    pub pa: Pa,
    /// The guest-virtual address, when the hardware reported one (SDM Vol. 3C §28.3.3.2:
    /// the guest linear address is valid only for some violations).
    pub va: Option<Va>,
    /// The kind of access: read, write or fetch (more than one for some instructions).
    pub access: MemoryAccess,
}

impl MemoryAccessEvent {
    /// The frame accessed.
    pub const fn gfn(&self) -> Gfn {
        Gfn(self.pa.0 >> 12)
    }
}

/// An exception or interrupt the vCPU took: a breakpoint, a #PF, an external interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct InterruptEvent {
    /// The vector (see [`vector`]).
    pub vector: u8,
    /// The type of the event.
    pub typ: InterruptType,
    /// The error code, for exceptions that push one.
    pub error_code: Option<u32>,
    /// The length of the instruction that raised it (software interrupts and exceptions:
    /// 1 for INT3), zero otherwise.
    pub instruction_length: u8,
}

impl InterruptEvent {
    /// Whether this is a breakpoint (#BP).
    pub const fn is_breakpoint(&self) -> bool {
        self.vector == vector::BP
    }

    /// The interrupt that delivers this event again to the guest, with `cr2` for a #PF
    /// (the faulting address, from the vCPU's CR2).
    pub const fn reinjection(&self, cr2: Option<u64>) -> Interrupt {
        Interrupt {
            vector: self.vector,
            typ: self.typ,
            error_code: self.error_code,
            instruction_length: self.instruction_length,
            cr2: if self.vector == vector::PF { cr2 } else { None },
        }
    }
}

/// A write to a control register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ControlRegisterEvent {
    /// Which register.
    pub register: ControlRegister,
    /// The value before the write.
    pub old: u64,
    /// The value being written.
    pub new: u64,
}

/// A write to a model-specific register (WRMSR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MsrEvent {
    /// The MSR index (ECX).
    pub index: u32,
    /// The value before the write, when the driver knows it.
    pub old: Option<u64>,
    /// The value being written (EDX:EAX).
    pub new: u64,
}

/// A CPUID instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CpuidEvent {
    /// The leaf (EAX).
    pub leaf: u32,
    /// The subleaf (ECX).
    pub subleaf: u32,
    /// The length of the CPUID instruction (2), to skip it after emulation.
    pub instruction_length: u8,
}

/// The direction of an I/O instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum IoDirection {
    /// IN, INS: the port is read.
    In,
    /// OUT, OUTS: the port is written.
    Out,
}

/// An I/O instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IoEvent {
    /// The port.
    pub port: u16,
    /// The access size in bytes: 1, 2 or 4.
    pub size: u8,
    /// Read or write.
    pub direction: IoDirection,
}

/// The AMD64 part of an event: why the vCPU stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum EventReason {
    /// A memory access the view's rights forbade.
    MemoryAccess(MemoryAccessEvent),
    /// A breakpoint, another exception, or an interrupt.
    Interrupt(InterruptEvent),
    /// One instruction was executed by a single-stepping vCPU.
    Singlestep,
    /// A control register is being written.
    WriteControlRegister(ControlRegisterEvent),
    /// An MSR is being written.
    WriteMsr(MsrEvent),
    /// CPUID was executed.
    Cpuid(CpuidEvent),
    /// An I/O instruction was executed.
    Io(IoEvent),
}

impl EventReason {
    /// The memory access, if this is one.
    pub const fn as_memory_access(&self) -> Option<&MemoryAccessEvent> {
        match self {
            Self::MemoryAccess(e) => Some(e),
            _ => None,
        }
    }

    /// The exception or interrupt, if this is one.
    pub const fn as_interrupt(&self) -> Option<&InterruptEvent> {
        match self {
            Self::Interrupt(e) => Some(e),
            _ => None,
        }
    }

    /// The control-register write, if this is one.
    pub const fn as_control_register(&self) -> Option<&ControlRegisterEvent> {
        match self {
            Self::WriteControlRegister(e) => Some(e),
            _ => None,
        }
    }

    /// The MSR write, if this is one.
    pub const fn as_msr(&self) -> Option<&MsrEvent> {
        match self {
            Self::WriteMsr(e) => Some(e),
            _ => None,
        }
    }

    /// The CPUID, if this is one.
    pub const fn as_cpuid(&self) -> Option<&CpuidEvent> {
        match self {
            Self::Cpuid(e) => Some(e),
            _ => None,
        }
    }

    /// The I/O instruction, if this is one.
    pub const fn as_io(&self) -> Option<&IoEvent> {
        match self {
            Self::Io(e) => Some(e),
            _ => None,
        }
    }

    /// Whether this is a single-step event.
    pub const fn is_singlestep(&self) -> bool {
        matches!(self, Self::Singlestep)
    }
}

/// The type of an event to inject, as the VM-entry interruption-information field
/// encodes it in bits 10:8 (SDM Vol. 3C §25.8.3, Table 25-17); the discriminants are
/// those encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum InterruptType {
    /// An external interrupt.
    External = 0,
    /// A non-maskable interrupt.
    Nmi = 2,
    /// A hardware exception (#PF, #GP, ...).
    HardwareException = 3,
    /// A software interrupt (INT n).
    SoftwareInterrupt = 4,
    /// A privileged software exception (INT1).
    PrivilegedSoftwareException = 5,
    /// A software exception (INT3, INTO).
    SoftwareException = 6,
}

impl InterruptType {
    /// The type from its VMX encoding; `None` for the reserved value 1 and for 7 (other
    /// event), which cannot be injected as an interrupt.
    pub const fn from_vmx(bits: u8) -> Option<Self> {
        Some(match bits {
            0 => Self::External,
            2 => Self::Nmi,
            3 => Self::HardwareException,
            4 => Self::SoftwareInterrupt,
            5 => Self::PrivilegedSoftwareException,
            6 => Self::SoftwareException,
            _ => return None,
        })
    }

    /// The VMX encoding.
    pub const fn to_vmx(self) -> u8 {
        self as u8
    }

    /// Whether the event comes from an instruction whose length matters on injection
    /// (INT n, INT1, INT3, INTO: the guest resumes after it).
    pub const fn is_software(self) -> bool {
        matches!(
            self,
            Self::SoftwareInterrupt | Self::PrivilegedSoftwareException | Self::SoftwareException
        )
    }
}

/// #PF error-code bits (SDM Vol. 3A §4.7, Figure 4-12).
/// They are [`PfErrorCode`](super::PfErrorCode)'s values (one definition), as `u32` for
/// `const` use here.
mod pf_error {
    use super::super::PfErrorCode;

    /// P: 0 for a non-present page, 1 for a protection violation.
    pub(super) const PRESENT: u32 = PfErrorCode::PRESENT.bits();
    /// W/R: the access was a write.
    pub(super) const WRITE: u32 = PfErrorCode::WRITE.bits();
    /// U/S: the access was made in user mode.
    pub(super) const USER: u32 = PfErrorCode::USER.bits();
    /// RSVD: a reserved bit was set in some paging-structure entry.
    pub(super) const RESERVED: u32 = PfErrorCode::RESERVED.bits();
    /// I/D: the access was an instruction fetch. Set for every fetch here; per SDM §4.7
    /// the processor sets it only with NXE (PAE, 4- and 5-level paging) or SMEP, which
    /// [`PfErrorCode::for_access`](super::super::PfErrorCode::for_access) models exactly.
    pub(super) const FETCH: u32 = PfErrorCode::INSTRUCTION.bits();

    /// The W/R, U/S and I/D bits of an access.
    pub(super) const fn access_bits(access: crate::access::MemoryAccess, user: bool) -> u32 {
        use crate::access::MemoryAccess;
        let mut code = 0;
        if access.contains(MemoryAccess::W) {
            code |= WRITE;
        }
        if access.contains(MemoryAccess::X) {
            code |= FETCH;
        }
        if user {
            code |= USER;
        }
        code
    }
}

/// An interrupt or exception to inject into a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Interrupt {
    /// The vector (see [`vector`]).
    pub vector: u8,
    /// The type.
    pub typ: InterruptType,
    /// The error code, for exceptions that push one.
    pub error_code: Option<u32>,
    /// The instruction length, for software interrupts and exceptions.
    pub instruction_length: u8,
    /// The value CR2 takes on delivery (a #PF's faulting address).
    pub cr2: Option<u64>,
}

impl Interrupt {
    /// A hardware exception with `vector` and an optional error code.
    pub const fn exception(vector: u8, error_code: Option<u32>) -> Self {
        Self {
            vector,
            typ: InterruptType::HardwareException,
            error_code,
            instruction_length: 0,
            cr2: None,
        }
    }

    /// A page fault (#PF, vector 14) at `va` with `error_code`: CR2 takes `va`
    /// (SDM Vol. 3A §4.7).
    pub const fn page_fault(va: Va, error_code: u32) -> Self {
        Self {
            vector: vector::PF,
            typ: InterruptType::HardwareException,
            error_code: Some(error_code),
            instruction_length: 0,
            cr2: Some(va.0),
        }
    }

    /// The #PF the guest would take for `fault` on an `access` (read when empty; W for a
    /// write, X for a fetch) from user mode when `user` is set, or `None` when the failure
    /// is not one a #PF reports and the guest can never serve it: a non-canonical address
    /// raises #GP instead, and a table outside guest memory is the hypervisor's problem.
    ///
    /// The error code (SDM Vol. 3A §4.7): P is clear for a non-present entry and set for a
    /// reserved-bit or rights violation, RSVD is set for a reserved bit, W/R, U/S and I/D
    /// follow `access` and `user`.
    pub const fn page_fault_for(
        fault: &PageFault,
        access: MemoryAccess,
        user: bool,
    ) -> Option<Self> {
        let code = match fault.reason {
            FaultReason::NotPresent => 0,
            FaultReason::ReservedBit => pf_error::PRESENT | pf_error::RESERVED,
            FaultReason::AccessDenied => pf_error::PRESENT,
            _ => return None,
        };
        Some(Self::page_fault(
            fault.va,
            code | pf_error::access_bits(access, user),
        ))
    }

    /// The #PF that asks the guest to bring in the page of `va`: the error code of an
    /// `access` (read when empty) to a not-present page, from user mode when `user` is
    /// set. This is what a handler injects for a fault a prober collected.
    pub const fn page_in(va: Va, access: MemoryAccess, user: bool) -> Self {
        Self::page_fault(va, pf_error::access_bits(access, user))
    }

    /// A breakpoint (#BP) raised by an INT3 of `instruction_length` bytes (1 for the
    /// one-byte 0xCC form).
    pub const fn breakpoint(instruction_length: u8) -> Self {
        Self {
            vector: vector::BP,
            typ: InterruptType::SoftwareException,
            error_code: None,
            instruction_length,
            cr2: None,
        }
    }

    /// A general-protection fault (#GP) with `error_code` (zero when no segment is
    /// involved).
    pub const fn general_protection(error_code: u32) -> Self {
        Self::exception(vector::GP, Some(error_code))
    }

    /// An invalid-opcode exception (#UD).
    pub const fn invalid_opcode() -> Self {
        Self::exception(vector::UD, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(reason: FaultReason) -> PageFault {
        PageFault {
            va: Va(0x7fff_1234),
            root: Pa(0x1000),
            level: 1,
            entry: Pa(0x5008),
            value: 0,
            reason,
        }
    }

    #[test]
    fn page_fault_error_codes_follow_the_sdm() {
        let read =
            Interrupt::page_fault_for(&fault(FaultReason::NotPresent), MemoryAccess::R, false)
                .unwrap();
        assert_eq!(read.vector, 14);
        assert_eq!(read.error_code, Some(0));
        assert_eq!(read.cr2, Some(0x7fff_1234));
        assert_eq!(read.typ, InterruptType::HardwareException);

        let user_write =
            Interrupt::page_fault_for(&fault(FaultReason::NotPresent), MemoryAccess::W, true)
                .unwrap();
        assert_eq!(user_write.error_code, Some(0b110));

        let fetch =
            Interrupt::page_fault_for(&fault(FaultReason::AccessDenied), MemoryAccess::X, true)
                .unwrap();
        assert_eq!(fetch.error_code, Some(0b1_0101));

        let rsvd =
            Interrupt::page_fault_for(&fault(FaultReason::ReservedBit), MemoryAccess::R, false)
                .unwrap();
        assert_eq!(rsvd.error_code, Some(0b1001));

        assert_eq!(
            Interrupt::page_in(Va(0x7fff_1234), MemoryAccess::R, true),
            Interrupt::page_fault(Va(0x7fff_1234), 0b100)
        );
        for reason in [FaultReason::NonCanonical, FaultReason::OutOfMemory] {
            assert_eq!(
                Interrupt::page_fault_for(&fault(reason), MemoryAccess::R, false),
                None
            );
        }
    }

    #[test]
    fn interrupt_types_round_trip_through_vmx() {
        for bits in 0..=255u8 {
            match InterruptType::from_vmx(bits) {
                Some(t) => assert_eq!(t.to_vmx(), bits),
                None => assert!(bits == 1 || bits >= 7),
            }
        }
        assert!(InterruptType::SoftwareException.is_software());
        assert!(!InterruptType::HardwareException.is_software());
    }

    #[test]
    fn reinjection_keeps_the_event_and_sets_cr2_only_for_a_page_fault() {
        let pf = InterruptEvent {
            vector: vector::PF,
            typ: InterruptType::HardwareException,
            error_code: Some(2),
            instruction_length: 0,
        };
        assert_eq!(
            pf.reinjection(Some(0xdead_0000)),
            Interrupt::page_fault(Va(0xdead_0000), 2)
        );
        let bp = InterruptEvent {
            vector: vector::BP,
            typ: InterruptType::SoftwareException,
            error_code: None,
            instruction_length: 1,
        };
        assert!(bp.is_breakpoint());
        assert_eq!(bp.reinjection(Some(5)), Interrupt::breakpoint(1));
    }
}
