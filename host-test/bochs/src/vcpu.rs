//! The one vCPU: its general-purpose registers while it is out of guest mode, and the
//! VM entry and exit stubs.
//!
//! [`enter`] saves the host's callee-saved registers, writes the stack pointer to the
//! VMCS's host RSP, loads the guest's registers and runs VMLAUNCH or VMRESUME. The exit
//! stub (the VMCS's host RIP) stores the guest's registers back and returns from
//! [`enter`] as if the call had just finished, so every VM exit is a plain return to Rust.

use core::arch::global_asm;
use core::cell::UnsafeCell;

use crate::vmx::{VmxError, field, vmread};

/// The guest registers VMX does not keep in the VMCS (SDM Vol. 3C, 28.3: RSP, RIP and
/// RFLAGS are in the guest-state area; the others are the hypervisor's to save).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Gprs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

/// The guest's registers between a VM exit and the next entry.
pub struct GprCell(UnsafeCell<Gprs>);

// SAFETY: the machine has one CPU, and the hypervisor touches the cell only in VMX root
// operation, between a VM exit and the next entry, on that CPU: never two accesses at once.
unsafe impl Sync for GprCell {}

impl GprCell {
    /// Zeroed registers.
    pub const fn new() -> Self {
        Self(UnsafeCell::new(Gprs {
            rax: 0,
            rbx: 0,
            rcx: 0,
            rdx: 0,
            rsi: 0,
            rdi: 0,
            rbp: 0,
            r8: 0,
            r9: 0,
            r10: 0,
            r11: 0,
            r12: 0,
            r13: 0,
            r14: 0,
            r15: 0,
        }))
    }

    /// A copy of the registers.
    pub fn get(&self) -> Gprs {
        // SAFETY: see the `Sync` impl: no other access runs at the same time.
        unsafe { *self.0.get() }
    }

    /// Replaces the registers.
    pub fn set(&self, gprs: Gprs) {
        // SAFETY: as `get`.
        unsafe { *self.0.get() = gprs }
    }
}

/// The guest's saved registers.
pub static GPRS: GprCell = GprCell::new();

unsafe extern "C" {
    /// The entry stub: returns 0 after a VM exit, 1 on VMfailInvalid, 2 on VMfailValid.
    fn vmx_enter(gprs: *mut Gprs, launched: u64) -> u64;
    /// The exit stub (the VMCS host RIP).
    fn vmx_exit();
}

/// The address of the exit stub, for the VMCS's host RIP.
pub fn exit_stub() -> u64 {
    vmx_exit as *const () as u64
}

/// Enters the guest (VMLAUNCH the first time, VMRESUME after) and returns at its next VM
/// exit.
///
/// # Errors
/// The VM entry failed as an instruction (VMfailInvalid or VMfailValid). A failure of the
/// guest-state checks is a VM exit instead, with bit 31 of the exit reason set.
///
/// # Safety
/// The current VMCS must be fully set up, with the host state of this hypervisor and
/// host RIP = [`exit_stub`].
pub unsafe fn enter(launched: bool) -> Result<(), VmxError> {
    // SAFETY: per the caller; the stub keeps the host's callee-saved registers and
    // stack, and touches no memory but the register cell and its own stack.
    let status = unsafe { vmx_enter(GPRS.0.get(), u64::from(launched)) };
    match status {
        0 => Ok(()),
        1 => Err(VmxError::FailInvalid),
        _ => Err(VmxError::FailValid(
            vmread(field::VM_INSTRUCTION_ERROR).map_or(u32::MAX, |v| v as u32),
        )),
    }
}

global_asm!(
    r#"
    .section .text.vmx_enter, "ax"
    .global vmx_enter
vmx_enter:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    pushq %rdi                  # the register block, for the exit stub
    movl $0x6c14, %eax          # HOST_RSP = this stack pointer
    vmwrite %rsp, %rax
    cmpq $0, %rsi               # launched? (the moves below keep the flags)
    movq 0x00(%rdi), %rax
    movq 0x08(%rdi), %rbx
    movq 0x10(%rdi), %rcx
    movq 0x18(%rdi), %rdx
    movq 0x20(%rdi), %rsi
    movq 0x30(%rdi), %rbp
    movq 0x38(%rdi), %r8
    movq 0x40(%rdi), %r9
    movq 0x48(%rdi), %r10
    movq 0x50(%rdi), %r11
    movq 0x58(%rdi), %r12
    movq 0x60(%rdi), %r13
    movq 0x68(%rdi), %r14
    movq 0x70(%rdi), %r15
    movq 0x28(%rdi), %rdi
    jne 2f
    vmlaunch
    jmp 3f
2:
    vmresume
3:
    movl $1, %eax               # the entry failed: CF set = 1, ZF set = 2
    movl $2, %ecx
    cmovzl %ecx, %eax
    addq $8, %rsp
    jmp 4f

    .global vmx_exit
vmx_exit:
    pushq %rdi
    movq 8(%rsp), %rdi
    movq %rax, 0x00(%rdi)
    movq %rbx, 0x08(%rdi)
    movq %rcx, 0x10(%rdi)
    movq %rdx, 0x18(%rdi)
    movq %rsi, 0x20(%rdi)
    movq %rbp, 0x30(%rdi)
    movq %r8, 0x38(%rdi)
    movq %r9, 0x40(%rdi)
    movq %r10, 0x48(%rdi)
    movq %r11, 0x50(%rdi)
    movq %r12, 0x58(%rdi)
    movq %r13, 0x60(%rdi)
    movq %r14, 0x68(%rdi)
    movq %r15, 0x70(%rdi)
    popq %rax
    movq %rax, 0x28(%rdi)
    addq $8, %rsp
    xorl %eax, %eax
4:
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
"#,
    options(att_syntax)
);
