//! The VM-exit information fields a simulated vCPU fills, encoded as the SDM lays them out,
//! with the simulator's own constants (not the backend's).
//!
//! - Basic exit reasons: SDM Vol. 3D Appendix C, Table C-1.
//! - EPT-violation qualification: SDM Vol. 3C §28.2.1, Table 28-7.
//! - Control-register access qualification: Table 28-3. I/O instruction: Table 28-5.
//! - VM-exit interruption information: SDM Vol. 3C §25.9.2, Table 25-19.

/// Basic exit reasons (SDM Vol. 3D Table C-1).
pub mod reason {
    /// Exception or non-maskable interrupt.
    pub const EXCEPTION_OR_NMI: u32 = 0;
    /// External interrupt.
    pub const EXTERNAL_INTERRUPT: u32 = 1;
    /// Interrupt window.
    pub const INTERRUPT_WINDOW: u32 = 7;
    /// CPUID.
    pub const CPUID: u32 = 10;
    /// Control-register access.
    pub const CR_ACCESS: u32 = 28;
    /// I/O instruction.
    pub const IO_INSTRUCTION: u32 = 30;
    /// WRMSR.
    pub const WRMSR: u32 = 32;
    /// Monitor trap flag.
    pub const MONITOR_TRAP_FLAG: u32 = 37;
    /// EPT violation.
    pub const EPT_VIOLATION: u32 = 48;
    /// EPT misconfiguration.
    pub const EPT_MISCONFIG: u32 = 49;
}

/// EPT-violation exit-qualification bits (SDM Vol. 3C Table 28-7).
pub mod ept_qual {
    /// Bit 0: the access was a data read.
    pub const READ: u64 = 1 << 0;
    /// Bit 1: the access was a data write.
    pub const WRITE: u64 = 1 << 1;
    /// Bit 2: the access was an instruction fetch.
    pub const FETCH: u64 = 1 << 2;
    /// Bits 5:3: the AND of the read, write and execute bits of the entries used.
    pub const RIGHTS_SHIFT: u32 = 3;
    /// Bit 7: the guest linear-address field is valid.
    pub const GLA_VALID: u64 = 1 << 7;
    /// Bit 8 (with bit 7): 1 for the access to the translated address, 0 for an access to
    /// a guest paging-structure entry during the walk.
    pub const FINAL_TRANSLATION: u64 = 1 << 8;
}

/// VM-exit interruption-information bits (SDM Vol. 3C Table 25-19).
pub mod intr_info {
    /// Bits 10:8: the type (0 external interrupt, 2 NMI, 3 hardware exception,
    /// 6 software exception).
    pub const TYPE_SHIFT: u32 = 8;
    /// Type 3.
    pub const HARDWARE_EXCEPTION: u32 = 3;
    /// Type 6 (INT3, INTO).
    pub const SOFTWARE_EXCEPTION: u32 = 6;
    /// Bit 11: an error code was pushed (and is in the error-code field).
    pub const ERROR_CODE_VALID: u32 = 1 << 11;
    /// Bit 31: the field is valid.
    pub const VALID: u32 = 1 << 31;
}

/// One VM exit's information fields, as a hypervisor reads them from the VMCS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawExit {
    /// The basic exit reason (bits 15:0 of the exit-reason field).
    pub reason: u32,
    /// The exit qualification.
    pub qualification: u64,
    /// The guest linear-address field.
    pub guest_linear: u64,
    /// The guest-physical address field.
    pub guest_physical: u64,
    /// The VM-exit instruction length.
    pub instruction_length: u32,
    /// The VM-exit instruction-information field (zero for the exits simulated here:
    /// none of them defines it, SDM Vol. 3C §28.2.5).
    pub instruction_info: u32,
    /// The VM-exit interruption-information field.
    pub interruption_info: u32,
    /// The VM-exit interruption error code.
    pub interruption_error: u32,
}

/// The qualification of an EPT violation.
pub fn ept_violation_qualification(
    access: u8,
    rights: u8,
    gla_valid: bool,
    final_translation: bool,
) -> u64 {
    let mut q = u64::from(access & 7) | (u64::from(rights & 7) << ept_qual::RIGHTS_SHIFT);
    if gla_valid {
        q |= ept_qual::GLA_VALID;
        if final_translation {
            q |= ept_qual::FINAL_TRANSLATION;
        }
    }
    q
}

/// The qualification of a MOV to CR`cr` from general-purpose register `gpr` (0 RAX ..
/// 15 R15): bits 3:0 the register number, bits 5:4 access type 0 (MOV to CR), bits 11:8
/// the GPR (SDM Vol. 3C Table 28-3).
pub fn mov_to_cr_qualification(cr: u8, gpr: u8) -> u64 {
    u64::from(cr & 0xf) | (u64::from(gpr & 0xf) << 8)
}

/// The qualification of an I/O instruction (SDM Vol. 3C Table 28-5): bits 2:0 the size
/// minus one, bit 3 direction (1 = IN), bit 4 string, bit 5 REP, bit 6 operand encoding
/// (1 = immediate), bits 31:16 the port.
pub fn io_qualification(port: u16, size: u8, input: bool, string: bool, rep: bool) -> u64 {
    let mut q = u64::from(size.saturating_sub(1) & 7) | (u64::from(port) << 16);
    if input {
        q |= 1 << 3;
    }
    if string {
        q |= 1 << 4;
    }
    if rep {
        q |= 1 << 5;
    }
    q
}

/// The interruption information of an exception with `vector` and `typ`.
pub fn exception_info(vector: u8, typ: u32, error_code: bool) -> u32 {
    let mut v = u32::from(vector) | (typ << intr_info::TYPE_SHIFT) | intr_info::VALID;
    if error_code {
        v |= intr_info::ERROR_CODE_VALID;
    }
    v
}
