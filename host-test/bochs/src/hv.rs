//! VMX operation: VMXON, the VMCS (controls, host state, a 64-bit guest), and the raw
//! facts the capability MSRs report.

use crate::boot::{self, selector};
use crate::cpu::{self, rdmsr, wrmsr};
use crate::vmx::{self, VmxError, adjust, field, msr, vmwrite};

/// A 4 KiB frame in the hypervisor's zeroed data.
#[repr(C, align(4096))]
pub struct Frame(pub [u8; 4096]);

/// The VMXON region (SDM Vol. 3C, 25.11.5).
static mut VMXON_REGION: Frame = Frame([0; 4096]);
/// The one VMCS.
static mut VMCS_REGION: Frame = Frame([0; 4096]);
/// The MSR bitmaps, all zero: no RDMSR or WRMSR exits (SDM Vol. 3C, 25.6.9).
pub static mut MSR_BITMAP: Frame = Frame([0; 4096]);
/// The VMFUNC EPTP list (SDM Vol. 3C, 25.6.14): 512 EPTPs.
pub static mut EPTP_LIST: Frame = Frame([0; 4096]);

/// The capability MSRs the hypervisor reads once.
#[derive(Clone, Copy, Debug, Default)]
pub struct Caps {
    /// IA32_VMX_BASIC.
    pub basic: u64,
    /// IA32_VMX_TRUE_PINBASED_CTLS.
    pub pin: u64,
    /// IA32_VMX_TRUE_PROCBASED_CTLS.
    pub proc: u64,
    /// IA32_VMX_PROCBASED_CTLS2.
    pub proc2: u64,
    /// IA32_VMX_TRUE_EXIT_CTLS.
    pub exit: u64,
    /// IA32_VMX_TRUE_ENTRY_CTLS.
    pub entry: u64,
    /// IA32_VMX_EPT_VPID_CAP.
    pub ept_vpid: u64,
    /// IA32_VMX_VMFUNC.
    pub vmfunc: u64,
}

/// Primary processor-based controls (SDM Vol. 3C, 25.6.2, Table 25-6).
pub mod proc {
    /// Bit 7: HLT exiting.
    pub const HLT_EXITING: u32 = 1 << 7;
    /// Bit 15: CR3-load exiting.
    pub const CR3_LOAD_EXITING: u32 = 1 << 15;
    /// Bit 27: monitor trap flag.
    pub const MONITOR_TRAP_FLAG: u32 = 1 << 27;
    /// Bit 28: use MSR bitmaps.
    pub const USE_MSR_BITMAPS: u32 = 1 << 28;
    /// Bit 31: activate secondary controls.
    pub const SECONDARY_CONTROLS: u32 = 1 << 31;
    /// Bit 2: interrupt-window exiting.
    pub const INTERRUPT_WINDOW_EXITING: u32 = 1 << 2;
}

/// Secondary processor-based controls (SDM Vol. 3C, 25.6.2, Table 25-7).
pub mod proc2 {
    /// Bit 1: enable EPT.
    pub const ENABLE_EPT: u32 = 1 << 1;
    /// Bit 7: unrestricted guest.
    pub const UNRESTRICTED_GUEST: u32 = 1 << 7;
    /// Bit 13: enable VM functions.
    pub const ENABLE_VMFUNC: u32 = 1 << 13;
}

/// Pin-based controls (SDM Vol. 3C, 25.6.1, Table 25-5).
pub mod pin {
    /// Bit 0: external-interrupt exiting.
    pub const EXTERNAL_INTERRUPT_EXITING: u32 = 1 << 0;
}

/// VM-exit controls (SDM Vol. 3C, 25.7.1, Table 25-13).
mod exit_ctl {
    pub(super) const HOST_ADDRESS_SPACE_SIZE: u32 = 1 << 9;
    pub(super) const SAVE_IA32_EFER: u32 = 1 << 20;
    pub(super) const LOAD_IA32_EFER: u32 = 1 << 21;
}

/// VM-entry controls (SDM Vol. 3C, 25.8.1, Table 25-15).
mod entry_ctl {
    pub(super) const IA32E_MODE_GUEST: u32 = 1 << 9;
    pub(super) const LOAD_IA32_EFER: u32 = 1 << 15;
}

fn read_caps() -> Caps {
    // SAFETY: the VMX capability MSRs exist when CPUID.1:ECX.VMX is set (checked by the
    // caller); IA32_VMX_BASIC bit 55 says the TRUE ones do (checked in `enable`).
    unsafe {
        Caps {
            basic: rdmsr(msr::IA32_VMX_BASIC),
            pin: rdmsr(msr::IA32_VMX_TRUE_PINBASED_CTLS),
            proc: rdmsr(msr::IA32_VMX_TRUE_PROCBASED_CTLS),
            proc2: rdmsr(msr::IA32_VMX_PROCBASED_CTLS2),
            exit: rdmsr(msr::IA32_VMX_TRUE_EXIT_CTLS),
            entry: rdmsr(msr::IA32_VMX_TRUE_ENTRY_CTLS),
            ept_vpid: rdmsr(msr::IA32_VMX_EPT_VPID_CAP),
            vmfunc: rdmsr(msr::IA32_VMX_VMFUNC),
        }
    }
}

/// Whether the CPU lets `bit` of a control be 1 (the allowed-1 half of `msr_value`).
pub fn allowed1(msr_value: u64, bit: u32) -> bool {
    (msr_value >> 32) as u32 & bit == bit
}

/// Enters VMX operation and makes a fresh VMCS current (SDM Vol. 3C, 25.7 "Enabling and
/// Entering VMX Operation").
///
/// # Errors
/// What the CPU lacks, as a message.
pub fn enable() -> Result<Caps, &'static str> {
    if cpu::cpuid(1, 0)[2] & (1 << 5) == 0 {
        return Err("CPUID.1:ECX.VMX is clear");
    }
    let caps = read_caps();
    if caps.basic & (1 << 55) == 0 {
        return Err("IA32_VMX_BASIC: no TRUE control MSRs");
    }
    // SAFETY: IA32_FEATURE_CONTROL exists on VMX CPUs; it is written only while unlocked
    // (bit 0), with lock + VMXON outside SMX (bits 0 and 2).
    unsafe {
        let fc = rdmsr(msr::IA32_FEATURE_CONTROL);
        if fc & 1 == 0 {
            wrmsr(msr::IA32_FEATURE_CONTROL, fc | 0b101);
        } else if fc & 0b100 == 0 {
            return Err("IA32_FEATURE_CONTROL is locked with VMXON disabled");
        }
    }
    // SAFETY: the fixed-bit MSRs say which CR0/CR4 bits VMX operation requires (SDM Vol.
    // 3D, A.7 and A.8); the boot stage already set PE, PG, NE and PAE, so forcing the
    // fixed-1 bits (and CR4.VMXE) keeps paging as it is.
    unsafe {
        let cr0 = (cpu::cr0() | rdmsr(msr::IA32_VMX_CR0_FIXED0)) & rdmsr(msr::IA32_VMX_CR0_FIXED1);
        cpu::set_cr0(cr0);
        let cr4 = (cpu::cr4() | (1 << 13) | rdmsr(msr::IA32_VMX_CR4_FIXED0))
            & rdmsr(msr::IA32_VMX_CR4_FIXED1);
        cpu::set_cr4(cr4);
    }
    let revision = (caps.basic & 0x7FFF_FFFF) as u32;
    let vmxon_pa = core::ptr::addr_of!(VMXON_REGION) as u64;
    let vmcs_pa = core::ptr::addr_of!(VMCS_REGION) as u64;
    // SAFETY: both regions are this module's zeroed frames (identity mapped), used for
    // nothing else; the first 4 bytes take the revision identifier (SDM Vol. 3C, 25.2).
    unsafe {
        core::ptr::write_volatile(vmxon_pa as *mut u32, revision);
        core::ptr::write_volatile(vmcs_pa as *mut u32, revision);
        vmx::vmxon(vmxon_pa).map_err(|_| "VMXON failed")?;
        vmx::vmclear(vmcs_pa).map_err(|_| "VMCLEAR failed")?;
        vmx::vmptrld(vmcs_pa).map_err(|_| "VMPTRLD failed")?;
    }
    Ok(caps)
}

/// Writes `value` to `field`, naming the field on failure.
fn w(f: u32, value: u64) -> Result<(), (u32, VmxError)> {
    // SAFETY: the fields written by this module are its own host state, the guest's
    // state and controls, and pointers to this module's frames (and the EPT the caller
    // built), all identity mapped.
    unsafe { vmwrite(f, value) }.map_err(|e| (f, e))
}

/// What the guest starts with.
pub struct GuestStart {
    /// RIP.
    pub rip: u64,
    /// RSP.
    pub rsp: u64,
    /// CR3: the boot page tables.
    pub cr3: u64,
}

/// Fills the current VMCS: controls, host state, and a 64-bit guest at `start`
/// (SDM Vol. 3C, 27.2 and 27.3, the checks VM entry makes of them).
///
/// # Errors
/// The field whose VMWRITE failed.
pub fn setup_vmcs(caps: &Caps, idt_base: u64, start: &GuestStart) -> Result<(), (u32, VmxError)> {
    // Controls. External-interrupt exiting, CR3-load exiting and the MTF start off: the
    // backend asks for them (Platform::set_control).
    w(field::PIN_BASED_CONTROLS, u64::from(adjust(caps.pin, 0)))?;
    let procs = proc::HLT_EXITING | proc::USE_MSR_BITMAPS | proc::SECONDARY_CONTROLS;
    w(
        field::PROC_BASED_CONTROLS,
        u64::from(adjust(caps.proc, procs)),
    )?;
    let mut procs2 = proc2::ENABLE_EPT | proc2::UNRESTRICTED_GUEST;
    if allowed1(caps.proc2, proc2::ENABLE_VMFUNC) && caps.vmfunc & 1 != 0 {
        procs2 |= proc2::ENABLE_VMFUNC;
        w(field::VM_FUNCTION_CONTROLS, 1)?; // bit 0: EPTP switching
        w(
            field::EPTP_LIST_ADDRESS,
            core::ptr::addr_of!(EPTP_LIST) as u64,
        )?;
    }
    w(
        field::SECONDARY_PROC_BASED_CONTROLS,
        u64::from(adjust(caps.proc2, procs2)),
    )?;
    let exits =
        exit_ctl::HOST_ADDRESS_SPACE_SIZE | exit_ctl::SAVE_IA32_EFER | exit_ctl::LOAD_IA32_EFER;
    w(field::EXIT_CONTROLS, u64::from(adjust(caps.exit, exits)))?;
    let entries = entry_ctl::IA32E_MODE_GUEST | entry_ctl::LOAD_IA32_EFER;
    w(
        field::ENTRY_CONTROLS,
        u64::from(adjust(caps.entry, entries)),
    )?;
    for f in [
        field::EXCEPTION_BITMAP,
        field::PAGE_FAULT_ERROR_CODE_MASK,
        field::PAGE_FAULT_ERROR_CODE_MATCH,
        field::CR3_TARGET_COUNT,
        field::EXIT_MSR_STORE_COUNT,
        field::EXIT_MSR_LOAD_COUNT,
        field::ENTRY_MSR_LOAD_COUNT,
        field::ENTRY_INTERRUPTION_INFO,
    ] {
        w(f, 0)?;
    }
    w(field::MSR_BITMAPS, core::ptr::addr_of!(MSR_BITMAP) as u64)?;
    w(field::VMCS_LINK_POINTER, u64::MAX)?;

    // Host state: what the boot stage set up.
    let (gdt, _) = boot::gdt();
    w(field::HOST_CR0, cpu::cr0())?;
    w(field::HOST_CR3, cpu::cr3())?;
    w(field::HOST_CR4, cpu::cr4())?;
    w(field::HOST_CS, u64::from(selector::CODE64))?;
    for f in [
        field::HOST_SS,
        field::HOST_DS,
        field::HOST_ES,
        field::HOST_FS,
        field::HOST_GS,
    ] {
        w(f, u64::from(selector::DATA))?;
    }
    w(field::HOST_TR, u64::from(selector::TSS))?;
    w(field::HOST_FS_BASE, 0)?;
    w(field::HOST_GS_BASE, 0)?;
    w(field::HOST_TR_BASE, boot::tss())?;
    w(field::HOST_GDTR_BASE, gdt)?;
    w(field::HOST_IDTR_BASE, idt_base)?;
    w(field::HOST_SYSENTER_CS, 0)?;
    w(field::HOST_SYSENTER_ESP, 0)?;
    w(field::HOST_SYSENTER_EIP, 0)?;
    // SAFETY: IA32_EFER exists in long mode.
    w(field::HOST_IA32_EFER, unsafe { rdmsr(msr::IA32_EFER) })?;
    w(field::HOST_RIP, crate::vcpu::exit_stub())?;

    // Guest state: 64-bit mode, paging through its own tables, flat segments.
    // CR4.VMXE must stay set under VMX (CR4 fixed-0); the mask hides it from the guest.
    let guest_cr4: u64 = (1 << 5) | (1 << 13); // PAE | VMXE
    w(field::GUEST_CR0, 0x8001_0031)?; // PG | WP | NE | ET | PE
    w(field::GUEST_CR3, start.cr3)?;
    w(field::GUEST_CR4, guest_cr4)?;
    w(field::CR0_GUEST_HOST_MASK, 0)?;
    w(field::CR0_READ_SHADOW, 0)?;
    w(field::CR4_GUEST_HOST_MASK, 1 << 13)?;
    w(field::CR4_READ_SHADOW, guest_cr4 & !(1 << 13))?;
    w(field::GUEST_IA32_EFER, 0xD00)?; // NXE | LMA | LME
    w(field::GUEST_CS, u64::from(selector::CODE64))?;
    w(field::GUEST_CS_BASE, 0)?;
    w(field::GUEST_CS_LIMIT, 0xFFFF_FFFF)?;
    w(field::GUEST_CS_AR, 0xA09B)?; // G, L, P, S, execute/read accessed
    for (sel, base, limit, ar) in [
        (
            field::GUEST_SS,
            field::GUEST_SS_BASE,
            field::GUEST_SS_LIMIT,
            field::GUEST_SS_AR,
        ),
        (
            field::GUEST_DS,
            field::GUEST_DS_BASE,
            field::GUEST_DS_LIMIT,
            field::GUEST_DS_AR,
        ),
        (
            field::GUEST_ES,
            field::GUEST_ES_BASE,
            field::GUEST_ES_LIMIT,
            field::GUEST_ES_AR,
        ),
        (
            field::GUEST_FS,
            field::GUEST_FS_BASE,
            field::GUEST_FS_LIMIT,
            field::GUEST_FS_AR,
        ),
        (
            field::GUEST_GS,
            field::GUEST_GS_BASE,
            field::GUEST_GS_LIMIT,
            field::GUEST_GS_AR,
        ),
    ] {
        w(sel, u64::from(selector::DATA))?;
        w(base, 0)?;
        w(limit, 0xFFFF_FFFF)?;
        w(ar, 0xC093)?; // G, D/B, P, S, read/write accessed
    }
    w(field::GUEST_LDTR, 0)?;
    w(field::GUEST_LDTR_BASE, 0)?;
    w(field::GUEST_LDTR_LIMIT, 0)?;
    w(field::GUEST_LDTR_AR, 0x1_0000)?; // unusable
    w(field::GUEST_TR, u64::from(selector::TSS))?;
    w(field::GUEST_TR_BASE, boot::tss())?;
    w(field::GUEST_TR_LIMIT, 0x67)?;
    w(field::GUEST_TR_AR, 0x8B)?; // P, busy 64-bit TSS
    w(field::GUEST_GDTR_BASE, gdt)?;
    w(field::GUEST_GDTR_LIMIT, 0x2F)?;
    w(field::GUEST_IDTR_BASE, 0)?;
    w(field::GUEST_IDTR_LIMIT, 0)?;
    w(field::GUEST_DR7, 0x400)?;
    w(field::GUEST_RSP, start.rsp)?;
    w(field::GUEST_RIP, start.rip)?;
    w(field::GUEST_RFLAGS, 0x2)?;
    w(field::GUEST_PENDING_DEBUG_EXCEPTIONS, 0)?;
    w(field::GUEST_INTERRUPTIBILITY, 0)?;
    w(field::GUEST_ACTIVITY_STATE, 0)?;
    w(field::GUEST_IA32_DEBUGCTL, 0)?;
    w(field::GUEST_SYSENTER_CS, 0)?;
    w(field::GUEST_SYSENTER_ESP, 0)?;
    w(field::GUEST_SYSENTER_EIP, 0)?;
    Ok(())
}

/// Prints the capability MSRs, once, for the log.
pub fn print_caps(caps: &Caps) {
    println!(
        "HV: VMX basic={:#x} pin={:#x} proc={:#x} proc2={:#x} exit={:#x} entry={:#x} ept_vpid={:#x} vmfunc={:#x}",
        caps.basic,
        caps.pin,
        caps.proc,
        caps.proc2,
        caps.exit,
        caps.entry,
        caps.ept_vpid,
        caps.vmfunc
    );
}
