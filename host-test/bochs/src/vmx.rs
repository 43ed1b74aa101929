//! VMX instructions and VMCS field encodings (Intel SDM Vol. 3C, chapter 31 "VMX
//! Instruction Reference", and Vol. 3D Appendix B "Field Encoding in VMCS").
//!
//! Each instruction reports success or failure through RFLAGS (SDM Vol. 3C, 31.2
//! "Conventions"): CF=1 is VMfailInvalid (no current VMCS), ZF=1 is VMfailValid, with the
//! reason in the VM-instruction error field.

use core::arch::asm;
use core::fmt;

/// A failed VMX instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxError {
    /// VMfailInvalid: CF was set (no current VMCS, or VMXON outside VMX operation).
    FailInvalid,
    /// VMfailValid: ZF was set; the VM-instruction error number (SDM Vol. 3C, 31.4).
    FailValid(u32),
}

impl fmt::Display for VmxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FailInvalid => write!(f, "VMfailInvalid"),
            Self::FailValid(n) => write!(f, "VMfailValid, VM-instruction error {n}"),
        }
    }
}

/// Turns the CF and ZF a VMX instruction left into a result.
fn check(cf: u8, zf: u8) -> Result<(), VmxError> {
    if cf != 0 {
        Err(VmxError::FailInvalid)
    } else if zf != 0 {
        // The error number of a VMfailValid is in the current VMCS.
        Err(VmxError::FailValid(
            vmread(field::VM_INSTRUCTION_ERROR).map_or(u32::MAX, |v| v as u32),
        ))
    } else {
        Ok(())
    }
}

/// VMXON with the VMXON region at `region` (host-physical).
///
/// # Safety
/// CR4.VMXE and the fixed CR0/CR4 bits must be set, and `region` must be a zeroed 4 KiB
/// frame holding the VMCS revision identifier, used for nothing else.
pub unsafe fn vmxon(region: u64) -> Result<(), VmxError> {
    let (cf, zf): (u8, u8);
    // SAFETY: per the caller; VMXON reads the 8-byte operand (the region's address).
    unsafe {
        asm!("vmxon [{}]", "setc {}", "setz {}", in(reg) &region, out(reg_byte) cf,
             out(reg_byte) zf, options(nostack))
    };
    check(cf, zf)
}

/// VMCLEAR of the VMCS at `vmcs` (host-physical).
///
/// # Safety
/// `vmcs` must be a VMCS region (4 KiB, revision identifier written) used for nothing else.
pub unsafe fn vmclear(vmcs: u64) -> Result<(), VmxError> {
    let (cf, zf): (u8, u8);
    // SAFETY: per the caller.
    unsafe {
        asm!("vmclear [{}]", "setc {}", "setz {}", in(reg) &vmcs, out(reg_byte) cf,
             out(reg_byte) zf, options(nostack))
    };
    check(cf, zf)
}

/// VMPTRLD: makes the VMCS at `vmcs` current.
///
/// # Safety
/// As [`vmclear`]; the VMCS must have been cleared first.
pub unsafe fn vmptrld(vmcs: u64) -> Result<(), VmxError> {
    let (cf, zf): (u8, u8);
    // SAFETY: per the caller.
    unsafe {
        asm!("vmptrld [{}]", "setc {}", "setz {}", in(reg) &vmcs, out(reg_byte) cf,
             out(reg_byte) zf, options(nostack))
    };
    check(cf, zf)
}

/// VMREAD of `field` from the current VMCS.
pub fn vmread(field: u32) -> Result<u64, VmxError> {
    let (value, cf, zf): (u64, u8, u8);
    // SAFETY: VMREAD changes no memory; outside VMX operation or without a current VMCS
    // it fails (CF), which `check` reports. (It raises #UD outside VMX operation, which
    // this hypervisor never calls it in.)
    unsafe {
        asm!("vmread {}, {}", "setc {}", "setz {}", out(reg) value, in(reg) u64::from(field),
             out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    if cf != 0 {
        Err(VmxError::FailInvalid)
    } else if zf != 0 {
        // Not `check`: reading the error field of a failed read could recurse.
        Err(VmxError::FailValid(u32::MAX))
    } else {
        Ok(value)
    }
}

/// VMWRITE of `value` to `field` of the current VMCS.
///
/// # Safety
/// The field must not make the host state or the VMCS's pointers (EPTP, MSR bitmap,
/// EPTP list) point anywhere but where the hypervisor meant.
pub unsafe fn vmwrite(field: u32, value: u64) -> Result<(), VmxError> {
    let (cf, zf): (u8, u8);
    // SAFETY: per the caller.
    unsafe {
        asm!("vmwrite {}, {}", "setc {}", "setz {}", in(reg) u64::from(field), in(reg) value,
             out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    check(cf, zf)
}

/// INVEPT of `kind` (1 = single context, 2 = all contexts) for `eptp` (SDM Vol. 3C, 31.3).
pub fn invept(kind: u64, eptp: u64) -> Result<(), VmxError> {
    let descriptor: [u64; 2] = [eptp, 0];
    let (cf, zf): (u8, u8);
    // SAFETY: INVEPT only drops cached EPT translations; it reads the 16-byte descriptor.
    unsafe {
        asm!("invept {}, [{}]", "setc {}", "setz {}", in(reg) kind, in(reg) &descriptor,
             out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    check(cf, zf)
}

/// `desired` adjusted to what a capability MSR allows: the low half of the MSR holds the
/// bits that must be 1, the high half the bits that may be 1 (SDM Vol. 3D, A.3 to A.5).
pub fn adjust(msr_value: u64, desired: u32) -> u32 {
    (desired | msr_value as u32) & (msr_value >> 32) as u32
}

/// VMCS field encodings (SDM Vol. 3D Appendix B).
#[allow(missing_docs, reason = "the names are the SDM's")]
pub mod field {
    // 16-bit guest state (B.1.2).
    pub const GUEST_ES: u32 = 0x0800;
    pub const GUEST_CS: u32 = 0x0802;
    pub const GUEST_SS: u32 = 0x0804;
    pub const GUEST_DS: u32 = 0x0806;
    pub const GUEST_FS: u32 = 0x0808;
    pub const GUEST_GS: u32 = 0x080A;
    pub const GUEST_LDTR: u32 = 0x080C;
    pub const GUEST_TR: u32 = 0x080E;
    // 16-bit host state (B.1.3).
    pub const HOST_ES: u32 = 0x0C00;
    pub const HOST_CS: u32 = 0x0C02;
    pub const HOST_SS: u32 = 0x0C04;
    pub const HOST_DS: u32 = 0x0C06;
    pub const HOST_FS: u32 = 0x0C08;
    pub const HOST_GS: u32 = 0x0C0A;
    pub const HOST_TR: u32 = 0x0C0C;
    // 64-bit control (B.2.1).
    pub const MSR_BITMAPS: u32 = 0x2004;
    pub const VM_FUNCTION_CONTROLS: u32 = 0x2018;
    pub const EPT_POINTER: u32 = 0x201A;
    pub const EPTP_LIST_ADDRESS: u32 = 0x2024;
    // 64-bit read-only data (B.2.2).
    pub const GUEST_PHYSICAL_ADDRESS: u32 = 0x2400;
    // 64-bit guest state (B.2.3).
    pub const VMCS_LINK_POINTER: u32 = 0x2800;
    pub const GUEST_IA32_DEBUGCTL: u32 = 0x2802;
    pub const GUEST_IA32_EFER: u32 = 0x2806;
    // 64-bit host state (B.2.4).
    pub const HOST_IA32_EFER: u32 = 0x2C02;
    // 32-bit control (B.3.1).
    pub const PIN_BASED_CONTROLS: u32 = 0x4000;
    pub const PROC_BASED_CONTROLS: u32 = 0x4002;
    pub const EXCEPTION_BITMAP: u32 = 0x4004;
    pub const PAGE_FAULT_ERROR_CODE_MASK: u32 = 0x4006;
    pub const PAGE_FAULT_ERROR_CODE_MATCH: u32 = 0x4008;
    pub const CR3_TARGET_COUNT: u32 = 0x400A;
    pub const EXIT_CONTROLS: u32 = 0x400C;
    pub const EXIT_MSR_STORE_COUNT: u32 = 0x400E;
    pub const EXIT_MSR_LOAD_COUNT: u32 = 0x4010;
    pub const ENTRY_CONTROLS: u32 = 0x4012;
    pub const ENTRY_MSR_LOAD_COUNT: u32 = 0x4014;
    pub const ENTRY_INTERRUPTION_INFO: u32 = 0x4016;
    pub const ENTRY_EXCEPTION_ERROR_CODE: u32 = 0x4018;
    pub const ENTRY_INSTRUCTION_LENGTH: u32 = 0x401A;
    pub const SECONDARY_PROC_BASED_CONTROLS: u32 = 0x401E;
    // 32-bit read-only data (B.3.2).
    pub const VM_INSTRUCTION_ERROR: u32 = 0x4400;
    pub const EXIT_REASON: u32 = 0x4402;
    pub const EXIT_INTERRUPTION_INFO: u32 = 0x4404;
    pub const EXIT_INTERRUPTION_ERROR_CODE: u32 = 0x4406;
    pub const IDT_VECTORING_INFO: u32 = 0x4408;
    pub const IDT_VECTORING_ERROR_CODE: u32 = 0x440A;
    pub const EXIT_INSTRUCTION_LENGTH: u32 = 0x440C;
    pub const EXIT_INSTRUCTION_INFO: u32 = 0x440E;
    // 32-bit guest state (B.3.3).
    pub const GUEST_ES_LIMIT: u32 = 0x4800;
    pub const GUEST_CS_LIMIT: u32 = 0x4802;
    pub const GUEST_SS_LIMIT: u32 = 0x4804;
    pub const GUEST_DS_LIMIT: u32 = 0x4806;
    pub const GUEST_FS_LIMIT: u32 = 0x4808;
    pub const GUEST_GS_LIMIT: u32 = 0x480A;
    pub const GUEST_LDTR_LIMIT: u32 = 0x480C;
    pub const GUEST_TR_LIMIT: u32 = 0x480E;
    pub const GUEST_GDTR_LIMIT: u32 = 0x4810;
    pub const GUEST_IDTR_LIMIT: u32 = 0x4812;
    pub const GUEST_ES_AR: u32 = 0x4814;
    pub const GUEST_CS_AR: u32 = 0x4816;
    pub const GUEST_SS_AR: u32 = 0x4818;
    pub const GUEST_DS_AR: u32 = 0x481A;
    pub const GUEST_FS_AR: u32 = 0x481C;
    pub const GUEST_GS_AR: u32 = 0x481E;
    pub const GUEST_LDTR_AR: u32 = 0x4820;
    pub const GUEST_TR_AR: u32 = 0x4822;
    pub const GUEST_INTERRUPTIBILITY: u32 = 0x4824;
    pub const GUEST_ACTIVITY_STATE: u32 = 0x4826;
    pub const GUEST_SYSENTER_CS: u32 = 0x482A;
    // 32-bit host state (B.3.4).
    pub const HOST_SYSENTER_CS: u32 = 0x4C00;
    // Natural-width control (B.4.1).
    pub const CR0_GUEST_HOST_MASK: u32 = 0x6000;
    pub const CR4_GUEST_HOST_MASK: u32 = 0x6002;
    pub const CR0_READ_SHADOW: u32 = 0x6004;
    pub const CR4_READ_SHADOW: u32 = 0x6006;
    // Natural-width read-only data (B.4.2).
    pub const EXIT_QUALIFICATION: u32 = 0x6400;
    pub const GUEST_LINEAR_ADDRESS: u32 = 0x640A;
    // Natural-width guest state (B.4.3).
    pub const GUEST_CR0: u32 = 0x6800;
    pub const GUEST_CR3: u32 = 0x6802;
    pub const GUEST_CR4: u32 = 0x6804;
    pub const GUEST_ES_BASE: u32 = 0x6806;
    pub const GUEST_CS_BASE: u32 = 0x6808;
    pub const GUEST_SS_BASE: u32 = 0x680A;
    pub const GUEST_DS_BASE: u32 = 0x680C;
    pub const GUEST_FS_BASE: u32 = 0x680E;
    pub const GUEST_GS_BASE: u32 = 0x6810;
    pub const GUEST_LDTR_BASE: u32 = 0x6812;
    pub const GUEST_TR_BASE: u32 = 0x6814;
    pub const GUEST_GDTR_BASE: u32 = 0x6816;
    pub const GUEST_IDTR_BASE: u32 = 0x6818;
    pub const GUEST_DR7: u32 = 0x681A;
    pub const GUEST_RSP: u32 = 0x681C;
    pub const GUEST_RIP: u32 = 0x681E;
    pub const GUEST_RFLAGS: u32 = 0x6820;
    pub const GUEST_PENDING_DEBUG_EXCEPTIONS: u32 = 0x6822;
    pub const GUEST_SYSENTER_ESP: u32 = 0x6824;
    pub const GUEST_SYSENTER_EIP: u32 = 0x6826;
    // Natural-width host state (B.4.4).
    pub const HOST_CR0: u32 = 0x6C00;
    pub const HOST_CR3: u32 = 0x6C02;
    pub const HOST_CR4: u32 = 0x6C04;
    pub const HOST_FS_BASE: u32 = 0x6C06;
    pub const HOST_GS_BASE: u32 = 0x6C08;
    pub const HOST_TR_BASE: u32 = 0x6C0A;
    pub const HOST_GDTR_BASE: u32 = 0x6C0C;
    pub const HOST_IDTR_BASE: u32 = 0x6C0E;
    pub const HOST_SYSENTER_ESP: u32 = 0x6C10;
    pub const HOST_SYSENTER_EIP: u32 = 0x6C12;
    pub const HOST_RIP: u32 = 0x6C16;
}

/// Capability MSRs (SDM Vol. 3D Appendix A).
#[allow(missing_docs, reason = "the names are the SDM's")]
pub mod msr {
    pub const IA32_FEATURE_CONTROL: u32 = 0x3A;
    pub const IA32_VMX_BASIC: u32 = 0x480;
    pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
    pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
    pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
    pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
    pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48B;
    pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48C;
    pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48D;
    pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48E;
    pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48F;
    pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
    pub const IA32_VMX_VMFUNC: u32 = 0x491;
    pub const IA32_EFER: u32 = 0xC000_0080;
}
