//! VM-exit information: what the hypervisor copies out of its VMCS ([`ExitInfo`]), and
//! its decoding ([`Exit`]) as the Intel SDM defines each field.
//!
//! # Contract
//! Every field is hostile input (a buggy hypervisor, a fuzzer, a CPU erratum). For any
//! values, [`Exit::decode`] returns `Ok` or a named [`EptError`]: it never panics.
//! - Reserved bits of the EPT-violation and debug-exception qualifications are ignored
//!   (newer CPUs define more of them) and kept in the raw value.
//! - A field whose value the SDM leaves undefined where it matters (a CR number other
//!   than 0, 3, 4, 8; an I/O size of 2 or above 3 in bits 2:0; an interruption type of 1;
//!   an exception exit whose information is not valid) is
//!   [`EptError::InvalidExitInformation`].
//! - A basic exit reason above [`MAX_EXIT_REASON`] is [`EptError::UnknownExitReason`]; a
//!   known reason the backend does not handle is [`Exit::Other`], which the backend
//!   hands back to the hypervisor ([`ExitAction::NotMine`](crate::ExitAction::NotMine)).

use introvisor::arch::amd64::{ControlRegister, InterruptType, IoDirection};

use crate::error::EptError;

/// Basic exit reasons (SDM Vol. 3D Appendix C), as bits 15:0 of the exit-reason field.
pub mod reason {
    /// Exception or non-maskable interrupt.
    pub const EXCEPTION_OR_NMI: u16 = 0;
    /// External interrupt.
    pub const EXTERNAL_INTERRUPT: u16 = 1;
    /// Triple fault.
    pub const TRIPLE_FAULT: u16 = 2;
    /// Interrupt window.
    pub const INTERRUPT_WINDOW: u16 = 7;
    /// NMI window.
    pub const NMI_WINDOW: u16 = 8;
    /// CPUID.
    pub const CPUID: u16 = 10;
    /// HLT.
    pub const HLT: u16 = 12;
    /// VMCALL.
    pub const VMCALL: u16 = 18;
    /// Control-register access.
    pub const CR_ACCESS: u16 = 28;
    /// I/O instruction.
    pub const IO_INSTRUCTION: u16 = 30;
    /// RDMSR.
    pub const RDMSR: u16 = 31;
    /// WRMSR.
    pub const WRMSR: u16 = 32;
    /// Monitor trap flag.
    pub const MONITOR_TRAP_FLAG: u16 = 37;
    /// EPT violation.
    pub const EPT_VIOLATION: u16 = 48;
    /// EPT misconfiguration.
    pub const EPT_MISCONFIGURATION: u16 = 49;
    /// XSETBV.
    pub const XSETBV: u16 = 55;
}

/// The highest basic exit reason the SDM defines (Vol. 3D Appendix C, as of its 2024
/// revisions); anything above is unknown.
pub const MAX_EXIT_REASON: u16 = 80;

/// Bit 31 of the exit-reason field: VM-entry failure (SDM Vol. 3C §25.9.1, the
/// exit-reason field's format).
pub const EXIT_REASON_ENTRY_FAILURE: u32 = 1 << 31;

/// What the hypervisor's exit handler reads from the VMCS and passes to
/// [`EptBackend::on_exit`](crate::EptBackend::on_exit): the VM-exit information fields
/// (SDM Vol. 3C §25.9) and the guest's addresses. Plain data; the backend decodes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ExitInfo {
    /// The exit-reason field (VMCS 0x4402): basic reason in bits 15:0, flags above.
    pub reason: u32,
    /// The exit qualification (VMCS 0x6400).
    pub qualification: u64,
    /// The guest-linear address (VMCS 0x640A).
    pub guest_linear_address: u64,
    /// The guest-physical address (VMCS 0x2400), for EPT violations and
    /// misconfigurations.
    pub guest_physical_address: u64,
    /// The VM-exit instruction length (VMCS 0x440C).
    pub instruction_length: u32,
    /// The VM-exit instruction information (VMCS 0x440E).
    pub instruction_information: u32,
    /// The VM-exit interruption information (VMCS 0x4404).
    pub interruption_information: u32,
    /// The VM-exit interruption error code (VMCS 0x4406).
    pub interruption_error_code: u32,
    /// The IDT-vectoring information (VMCS 0x4408): an event whose delivery the exit
    /// interrupted.
    pub idt_vectoring_information: u32,
    /// The IDT-vectoring error code (VMCS 0x440A).
    pub idt_vectoring_error_code: u32,
}

/// An interruption-information field: the VM-exit interruption information (SDM
/// Vol. 3C §25.9.2, Table 25-19) or the IDT-vectoring information (§25.9.3, Table 25-20),
/// which share their layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct InterruptionInfo(pub u32);

impl InterruptionInfo {
    /// Bits 7:0: the vector.
    pub const fn vector(self) -> u8 {
        (self.0 & 0xff) as u8
    }

    /// Bits 10:8: the interruption type, raw.
    pub const fn type_bits(self) -> u8 {
        ((self.0 >> 8) & 0b111) as u8
    }

    /// Bits 10:8 decoded; `None` for 1 (reserved) and 7 (other event).
    pub const fn typ(self) -> Option<InterruptType> {
        InterruptType::from_vmx(self.type_bits())
    }

    /// Bit 11: an error code was delivered (or would be).
    pub const fn error_code_valid(self) -> bool {
        self.0 & (1 << 11) != 0
    }

    /// Bit 12 (exit interruption information only): NMI unblocking due to IRET.
    pub const fn nmi_unblocking(self) -> bool {
        self.0 & (1 << 12) != 0
    }

    /// Bit 31: the field is valid.
    pub const fn valid(self) -> bool {
        self.0 & (1 << 31) != 0
    }
}

/// The exit qualification of an EPT violation (SDM Vol. 3C §28.2.1, Table 28-7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EptViolation(pub u64);

impl EptViolation {
    /// Bit 0: the access was a data read.
    pub const fn read(self) -> bool {
        self.0 & (1 << 0) != 0
    }
    /// Bit 1: the access was a data write.
    pub const fn write(self) -> bool {
        self.0 & (1 << 1) != 0
    }
    /// Bit 2: the access was an instruction fetch.
    pub const fn fetch(self) -> bool {
        self.0 & (1 << 2) != 0
    }
    /// Bits 2:0 as introvisor rights: the kinds of access that were attempted.
    pub const fn access(self) -> introvisor::MemoryAccess {
        introvisor::MemoryAccess::from_bits_truncate((self.0 & 0b111) as u8)
    }
    /// Bits 5:3: the rights of the guest-physical address (the AND of the R, W, X bits of
    /// every EPT entry of the walk), as introvisor rights.
    pub const fn entry_access(self) -> introvisor::MemoryAccess {
        introvisor::MemoryAccess::from_bits_truncate(((self.0 >> 3) & 0b111) as u8)
    }
    /// Bit 6: the translation allows user-mode fetches (with MBEC; undefined otherwise).
    pub const fn user_executable(self) -> bool {
        self.0 & (1 << 6) != 0
    }
    /// Bit 7: the guest-linear address field is valid.
    pub const fn linear_address_valid(self) -> bool {
        self.0 & (1 << 7) != 0
    }
    /// Bit 8 (when bit 7 is set): the access was to the translated guest-physical address
    /// (`true`), not to a guest paging-structure entry during the walk (`false`).
    /// `None` when bit 7 is clear (the bit is then undefined).
    pub const fn final_translation(self) -> Option<bool> {
        if self.linear_address_valid() {
            Some(self.0 & (1 << 8) != 0)
        } else {
            None
        }
    }
    /// Bit 12: NMI unblocking due to IRET.
    pub const fn nmi_unblocking(self) -> bool {
        self.0 & (1 << 12) != 0
    }
    /// Bits 63:17, which the SDM reserves (cleared by today's CPUs).
    pub const fn reserved_bits(self) -> u64 {
        self.0 & !0x1_ffff
    }
}

/// The access type of a control-register exit (Table 28-3 bits 5:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CrAccessType {
    /// 0: MOV to CR.
    MovToCr,
    /// 1: MOV from CR.
    MovFromCr,
    /// 2: CLTS.
    Clts,
    /// 3: LMSW.
    Lmsw,
}

/// The exit qualification of a control-register access (SDM Vol. 3C §28.2.1,
/// Table 28-3), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CrAccess {
    /// Bits 3:0: the control register (0, 3, 4 or 8).
    pub cr: u8,
    /// Bits 5:4: the access type.
    pub access: CrAccessType,
    /// Bit 6: the LMSW operand was in memory (LMSW only).
    pub lmsw_memory: bool,
    /// Bits 11:8: the general-purpose register of a MOV (0 RAX, 1 RCX, 2 RDX, 3 RBX,
    /// 4 RSP, 5 RBP, 6 RSI, 7 RDI, 8 to 15 R8 to R15).
    pub gpr: u8,
    /// Bits 31:16: the LMSW source data (LMSW only).
    pub lmsw_source: u16,
}

impl CrAccess {
    /// Decodes `qualification`.
    ///
    /// # Errors
    /// [`EptError::InvalidExitInformation`] for a CR number other than 0, 3, 4, 8.
    pub const fn decode(qualification: u64) -> Result<Self, EptError> {
        let cr = (qualification & 0xf) as u8;
        if !matches!(cr, 0 | 3 | 4 | 8) {
            return Err(EptError::InvalidExitInformation(
                "CR-access: control register number",
            ));
        }
        let access = match (qualification >> 4) & 0b11 {
            0 => CrAccessType::MovToCr,
            1 => CrAccessType::MovFromCr,
            2 => CrAccessType::Clts,
            _ => CrAccessType::Lmsw,
        };
        Ok(Self {
            cr,
            access,
            lmsw_memory: qualification & (1 << 6) != 0,
            gpr: ((qualification >> 8) & 0xf) as u8,
            lmsw_source: ((qualification >> 16) & 0xffff) as u16,
        })
    }

    /// The register, as introvisor names it (CR0, CR3, CR4); `None` for CR8.
    pub const fn register(self) -> Option<ControlRegister> {
        match self.cr {
            0 => Some(ControlRegister::Cr0),
            3 => Some(ControlRegister::Cr3),
            4 => Some(ControlRegister::Cr4),
            _ => None,
        }
    }
}

/// The exit qualification of an I/O instruction (SDM Vol. 3C §28.2.1, Table 28-5),
/// decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IoAccess {
    /// Bits 31:16: the port.
    pub port: u16,
    /// Bits 2:0 plus one: the access size in bytes (1, 2 or 4).
    pub size: u8,
    /// Bit 3: IN (1) or OUT (0).
    pub direction: IoDirection,
    /// Bit 4: a string instruction (INS, OUTS).
    pub string: bool,
    /// Bit 5: REP prefixed.
    pub rep: bool,
    /// Bit 6: the port was an immediate operand (otherwise DX).
    pub immediate: bool,
}

impl IoAccess {
    /// Decodes `qualification`.
    ///
    /// # Errors
    /// [`EptError::InvalidExitInformation`] for a size encoding other than 0, 1, 3.
    pub const fn decode(qualification: u64) -> Result<Self, EptError> {
        let size = match qualification & 0b111 {
            0 => 1,
            1 => 2,
            3 => 4,
            _ => return Err(EptError::InvalidExitInformation("I/O: access size")),
        };
        Ok(Self {
            port: ((qualification >> 16) & 0xffff) as u16,
            size,
            direction: if qualification & (1 << 3) != 0 {
                IoDirection::In
            } else {
                IoDirection::Out
            },
            string: qualification & (1 << 4) != 0,
            rep: qualification & (1 << 5) != 0,
            immediate: qualification & (1 << 6) != 0,
        })
    }
}

/// The exit qualification of a debug exception (SDM Vol. 3C §28.2.1, Table 28-1): the
/// DR6 bits the exception would have set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DebugQualification(pub u64);

impl DebugQualification {
    /// Bits 3:0, B0 to B3: which breakpoint conditions were met.
    pub const fn breakpoints(self) -> u8 {
        (self.0 & 0xf) as u8
    }
    /// Bit 13, BD: a debug-register access was detected.
    pub const fn debug_register_access(self) -> bool {
        self.0 & (1 << 13) != 0
    }
    /// Bit 14, BS: a single step (RFLAGS.TF) trap.
    pub const fn single_step(self) -> bool {
        self.0 & (1 << 14) != 0
    }
}

/// An exception exit (basic reason 0) with its information decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ExceptionExit {
    /// The vector.
    pub vector: u8,
    /// The interruption type (hardware exception, software exception, NMI, ...).
    pub typ: InterruptType,
    /// The error code, when bit 11 of the information says one was pushed.
    pub error_code: Option<u32>,
    /// The instruction length (software exceptions: INT3 is 1; 0 for hardware ones).
    pub instruction_length: u8,
    /// The exit qualification: the faulting linear address of a #PF (CR2 is not yet
    /// written, SDM §28.2.1), the DR6 bits of a #DB, zero otherwise.
    pub qualification: u64,
}

/// A decoded VM exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Exit {
    /// Reason 0: an exception or NMI.
    Exception(ExceptionExit),
    /// Reason 1: an external interrupt.
    ExternalInterrupt,
    /// Reason 7: the interrupt window opened.
    InterruptWindow,
    /// Reason 10: CPUID (leaf and subleaf are in RAX and RCX).
    Cpuid,
    /// Reason 28: a control-register access.
    CrAccess(CrAccess),
    /// Reason 30: an I/O instruction.
    Io(IoAccess),
    /// Reason 32: WRMSR (index in ECX, value in EDX:EAX).
    Wrmsr,
    /// Reason 37: the monitor trap flag.
    MonitorTrap,
    /// Reason 48: an EPT violation at `gpa`, with the guest-linear address when the
    /// qualification says it is valid.
    EptViolation {
        /// The qualification.
        qualification: EptViolation,
        /// The guest-physical address.
        gpa: u64,
        /// The guest-linear address (bit 7 of the qualification).
        gla: Option<u64>,
    },
    /// Reason 49: an EPT misconfiguration at this guest-physical address.
    EptMisconfiguration {
        /// The guest-physical address.
        gpa: u64,
    },
    /// Reason 55: XSETBV (XCR index in ECX, value in EDX:EAX).
    Xsetbv,
    /// A known reason the backend does not handle (bits 15:0).
    Other(u16),
}

impl Exit {
    /// Decodes `info` (see the module's contract).
    ///
    /// # Errors
    /// [`EptError::EntryFailure`] when bit 31 of the reason is set,
    /// [`EptError::UnknownExitReason`] above [`MAX_EXIT_REASON`],
    /// [`EptError::InvalidExitInformation`] for an undefined field value.
    pub const fn decode(info: &ExitInfo) -> Result<Self, EptError> {
        if info.reason & EXIT_REASON_ENTRY_FAILURE != 0 {
            return Err(EptError::EntryFailure(info.reason));
        }
        let basic = (info.reason & 0xffff) as u16;
        Ok(match basic {
            reason::EXCEPTION_OR_NMI => {
                let ii = InterruptionInfo(info.interruption_information);
                if !ii.valid() {
                    return Err(EptError::InvalidExitInformation(
                        "exception exit without valid interruption information",
                    ));
                }
                let Some(typ) = ii.typ() else {
                    return Err(EptError::InvalidExitInformation("interruption type"));
                };
                let instruction_length = if typ.is_software() {
                    if info.instruction_length > 15 || info.instruction_length == 0 {
                        return Err(EptError::InvalidExitInformation("instruction length"));
                    }
                    info.instruction_length as u8
                } else {
                    0
                };
                Self::Exception(ExceptionExit {
                    vector: ii.vector(),
                    typ,
                    error_code: if ii.error_code_valid() {
                        Some(info.interruption_error_code)
                    } else {
                        None
                    },
                    instruction_length,
                    qualification: info.qualification,
                })
            }
            reason::EXTERNAL_INTERRUPT => Self::ExternalInterrupt,
            reason::INTERRUPT_WINDOW => Self::InterruptWindow,
            reason::CPUID => Self::Cpuid,
            reason::CR_ACCESS => match CrAccess::decode(info.qualification) {
                Ok(cr) => Self::CrAccess(cr),
                Err(e) => return Err(e),
            },
            reason::IO_INSTRUCTION => match IoAccess::decode(info.qualification) {
                Ok(io) => Self::Io(io),
                Err(e) => return Err(e),
            },
            reason::WRMSR => Self::Wrmsr,
            reason::MONITOR_TRAP_FLAG => Self::MonitorTrap,
            reason::EPT_VIOLATION => {
                let q = EptViolation(info.qualification);
                Self::EptViolation {
                    qualification: q,
                    gpa: info.guest_physical_address,
                    gla: if q.linear_address_valid() {
                        Some(info.guest_linear_address)
                    } else {
                        None
                    },
                }
            }
            reason::EPT_MISCONFIGURATION => Self::EptMisconfiguration {
                gpa: info.guest_physical_address,
            },
            reason::XSETBV => Self::Xsetbv,
            r if r <= MAX_EXIT_REASON => Self::Other(r),
            r => return Err(EptError::UnknownExitReason(r)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(reason: u32, qualification: u64) -> ExitInfo {
        ExitInfo {
            reason,
            qualification,
            ..ExitInfo::default()
        }
    }

    #[test]
    fn ept_violation_qualification_table_28_7() {
        // A write (bit 1) to a read/execute page (bits 3, 5), linear address valid (7),
        // final translation (8), NMI unblocking (12).
        let q = EptViolation(0x11aa);
        assert!(!q.read() && q.write() && !q.fetch());
        assert_eq!(q.access(), introvisor::MemoryAccess::W);
        assert_eq!(q.entry_access(), introvisor::MemoryAccess::RX);
        assert!(q.linear_address_valid());
        assert_eq!(q.final_translation(), Some(true));
        assert!(q.nmi_unblocking());
        assert_eq!(q.reserved_bits(), 0);
        // A read during the guest's page walk (bit 8 clear), entry not present.
        let walk = EptViolation(0x81);
        assert_eq!(walk.final_translation(), Some(false));
        assert_eq!(walk.entry_access(), introvisor::MemoryAccess::empty());
        // No linear address: bit 8 is undefined.
        assert_eq!(EptViolation(0x104).final_translation(), None);
        // Reserved bits are kept, not trusted, never a panic.
        let garbage = EptViolation(u64::MAX);
        assert_eq!(garbage.reserved_bits(), !0x1_ffff);
        assert_eq!(garbage.access(), introvisor::MemoryAccess::RWX);
        let e = Exit::decode(&ExitInfo {
            reason: 48,
            qualification: 0x11aa,
            guest_linear_address: 0xffff_8000_0010_2030,
            guest_physical_address: 0x10_2030,
            ..ExitInfo::default()
        });
        assert_eq!(
            e,
            Ok(Exit::EptViolation {
                qualification: EptViolation(0x11aa),
                gpa: 0x10_2030,
                gla: Some(0xffff_8000_0010_2030),
            })
        );
        let no_gla = Exit::decode(&ExitInfo {
            reason: 48,
            qualification: 0x4,
            guest_linear_address: 0x1234,
            ..ExitInfo::default()
        });
        assert!(matches!(no_gla, Ok(Exit::EptViolation { gla: None, .. })));
    }

    #[test]
    fn cr_access_qualification_table_28_3() {
        // MOV to CR3 from R9: CR 3, type 0, GPR 9.
        let c = CrAccess::decode(0x0903).unwrap();
        assert_eq!((c.cr, c.access, c.gpr), (3, CrAccessType::MovToCr, 9));
        assert_eq!(c.register(), Some(ControlRegister::Cr3));
        // MOV from CR8 to RAX.
        let c = CrAccess::decode(0x0018).unwrap();
        assert_eq!(
            (c.cr, c.access, c.register()),
            (8, CrAccessType::MovFromCr, None)
        );
        // CLTS.
        assert_eq!(CrAccess::decode(0x20).unwrap().access, CrAccessType::Clts);
        // LMSW from memory with source 0x000b.
        let c = CrAccess::decode(0x000b_0070).unwrap();
        assert_eq!(c.access, CrAccessType::Lmsw);
        assert!(c.lmsw_memory);
        assert_eq!(c.lmsw_source, 0xb);
        // CR numbers the SDM does not define.
        for cr in [1u64, 2, 5, 7, 9, 15] {
            assert_eq!(
                CrAccess::decode(cr),
                Err(EptError::InvalidExitInformation(
                    "CR-access: control register number"
                ))
            );
        }
        // Reserved bits set around a valid CR4 write: decoded, bits ignored.
        let c = CrAccess::decode(0xffff_ffff_0000_f004).unwrap();
        assert_eq!((c.cr, c.gpr), (4, 0));
    }

    #[test]
    fn io_qualification_table_28_5() {
        // OUT DX, AL to 0x3f8.
        let io = IoAccess::decode(0x03f8_0000).unwrap();
        assert_eq!(
            (io.port, io.size, io.direction),
            (0x3f8, 1, IoDirection::Out)
        );
        assert!(!io.string && !io.rep && !io.immediate);
        // REP INSW from 0x1f0: size 2 (1), IN (bit 3), string (4), rep (5).
        let io = IoAccess::decode(0x01f0_0039).unwrap();
        assert_eq!(
            (io.port, io.size, io.direction),
            (0x1f0, 2, IoDirection::In)
        );
        assert!(io.string && io.rep && !io.immediate);
        // IN EAX, 0x60 (immediate).
        let io = IoAccess::decode(0x0060_004b).unwrap();
        assert_eq!((io.port, io.size, io.immediate), (0x60, 4, true));
        for bad in [2u64, 4, 5, 6, 7] {
            assert_eq!(
                IoAccess::decode(bad),
                Err(EptError::InvalidExitInformation("I/O: access size"))
            );
        }
    }

    #[test]
    fn exceptions_and_interruption_information() {
        // INT3: vector 3, software exception (6), valid; length 1.
        let bp = Exit::decode(&ExitInfo {
            reason: 0,
            interruption_information: 0x8000_0603,
            instruction_length: 1,
            ..ExitInfo::default()
        });
        assert_eq!(
            bp,
            Ok(Exit::Exception(ExceptionExit {
                vector: 3,
                typ: InterruptType::SoftwareException,
                error_code: None,
                instruction_length: 1,
                qualification: 0,
            }))
        );
        // #PF: vector 14, hardware exception (3), error code valid (bit 11), CR2 in the
        // qualification.
        let pf = Exit::decode(&ExitInfo {
            reason: 0,
            qualification: 0x7fff_dead_b000,
            interruption_information: 0x8000_0b0e,
            interruption_error_code: 0x6,
            instruction_length: 3,
            ..ExitInfo::default()
        });
        assert_eq!(
            pf,
            Ok(Exit::Exception(ExceptionExit {
                vector: 14,
                typ: InterruptType::HardwareException,
                error_code: Some(6),
                instruction_length: 0,
                qualification: 0x7fff_dead_b000,
            }))
        );
        // #DB from a single step: BS (bit 14).
        let db = DebugQualification(0x4000);
        assert!(db.single_step() && !db.debug_register_access());
        assert_eq!(DebugQualification(0x200f).breakpoints(), 0xf);
        assert!(DebugQualification(0x200f).debug_register_access());
        let ii = InterruptionInfo(0x8000_1b0e);
        assert!(ii.valid() && ii.error_code_valid() && ii.nmi_unblocking());
        // Not valid, reserved type 1, a software exception with length 0 or 16.
        for (ii, len) in [
            (0x0000_0603u32, 1u32),
            (0x8000_0103, 0),
            (0x8000_0603, 0),
            (0x8000_0603, 16),
        ] {
            assert!(matches!(
                Exit::decode(&ExitInfo {
                    reason: 0,
                    interruption_information: ii,
                    instruction_length: len,
                    ..ExitInfo::default()
                }),
                Err(EptError::InvalidExitInformation(_))
            ));
        }
    }

    #[test]
    fn reasons_known_unknown_and_failed() {
        assert_eq!(Exit::decode(&info(37, 0)), Ok(Exit::MonitorTrap));
        assert_eq!(Exit::decode(&info(1, 0)), Ok(Exit::ExternalInterrupt));
        assert_eq!(Exit::decode(&info(7, 0)), Ok(Exit::InterruptWindow));
        assert_eq!(Exit::decode(&info(10, 0)), Ok(Exit::Cpuid));
        assert_eq!(Exit::decode(&info(32, 0)), Ok(Exit::Wrmsr));
        assert_eq!(Exit::decode(&info(55, 0)), Ok(Exit::Xsetbv));
        assert_eq!(Exit::decode(&info(12, 0)), Ok(Exit::Other(12)));
        assert_eq!(
            Exit::decode(&ExitInfo {
                reason: 49,
                guest_physical_address: 0xfee0_0000,
                ..ExitInfo::default()
            }),
            Ok(Exit::EptMisconfiguration { gpa: 0xfee0_0000 })
        );
        // Flag bits above the basic reason (bit 28: pending MTF) do not hide it.
        assert_eq!(
            Exit::decode(&info(37 | (1 << 28), 0)),
            Ok(Exit::MonitorTrap)
        );
        assert_eq!(
            Exit::decode(&info(81, 0)),
            Err(EptError::UnknownExitReason(81))
        );
        assert_eq!(
            Exit::decode(&info(0xffff, 0)),
            Err(EptError::UnknownExitReason(0xffff))
        );
        assert_eq!(
            Exit::decode(&info(0x8000_0021, 0)),
            Err(EptError::EntryFailure(0x8000_0021))
        );
    }

    #[test]
    fn hostile_exit_information_never_panics() {
        // A fixed-seed generator: every field random, many reasons biased to the handled
        // ones, each decode returns Ok or a named error.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let reasons = [0u32, 1, 7, 10, 28, 30, 32, 37, 48, 49, 55];
        let mut decoded = 0;
        for i in 0..3000 {
            let r = next();
            let reason = if i % 4 == 0 {
                r as u32
            } else {
                reasons[(r % reasons.len() as u64) as usize] | ((r >> 40) as u32 & 0x3000_0000)
            };
            let e = ExitInfo {
                reason,
                qualification: next(),
                guest_linear_address: next(),
                guest_physical_address: next(),
                instruction_length: next() as u32,
                instruction_information: next() as u32,
                interruption_information: next() as u32,
                interruption_error_code: next() as u32,
                idt_vectoring_information: next() as u32,
                idt_vectoring_error_code: next() as u32,
            };
            if Exit::decode(&e).is_ok() {
                decoded += 1;
            }
        }
        assert!(
            decoded > 1000,
            "the generator should hit valid exits too: {decoded}"
        );
    }
}
