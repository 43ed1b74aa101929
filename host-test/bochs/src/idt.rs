//! The host's IDT: every exception in VMX root operation prints its frame and shuts Bochs
//! down (the hypervisor expects none; without an IDT it would triple-fault silently).

use core::arch::global_asm;

use crate::serial;

/// What the stubs push, from the stack pointer up: the vector, the error code (zero for
/// exceptions without one), then the CPU's interrupt frame (SDM Vol. 3A, 7.14.1).
#[repr(C)]
struct Frame {
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

extern "C" fn host_exception(frame: &Frame) -> ! {
    println!(
        "HOST EXCEPTION vector={} error={:#x} rip={:#x} rsp={:#x} rflags={:#x} cr2={:#x}",
        frame.vector,
        frame.error_code,
        frame.rip,
        frame.rsp,
        frame.rflags,
        crate::cpu::cr2()
    );
    println!("RESULT fail host exception");
    serial::shutdown()
}

global_asm!(
    r#"
    .section .text.host_isr, "ax"
    .altmacro
    .macro HOST_ISR v
    .balign 16
host_isr_\v:
    .if (\v == 8) || (\v >= 10 && \v <= 14) || (\v == 17) || (\v == 21) || (\v == 29) || (\v == 30)
    .else
    pushq $0
    .endif
    pushq $\v
    jmp host_isr_common
    .endm
    .set i, 0
    .rept 32
    HOST_ISR %i
    .set i, i+1
    .endr
host_isr_common:
    movq %rsp, %rdi
    andq $-16, %rsp
    call {handler}
    ud2

    .section .rodata.host_isr, "a"
    .balign 8
    .global host_isr_table
host_isr_table:
    .macro HOST_ISR_ENTRY v
    .quad host_isr_\v
    .endm
    .set i, 0
    .rept 32
    HOST_ISR_ENTRY %i
    .set i, i+1
    .endr
"#,
    handler = sym host_exception,
    options(att_syntax)
);

unsafe extern "C" {
    /// The 32 stubs' addresses, in vector order.
    static host_isr_table: [u64; 32];
}

/// One 64-bit interrupt gate (SDM Vol. 3A, 7.14.1, Figure 7-8).
#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

/// The IDT: 32 exception gates.
static mut IDT: [Gate; 32] = [Gate {
    offset_low: 0,
    selector: 0,
    ist: 0,
    type_attr: 0,
    offset_mid: 0,
    offset_high: 0,
    reserved: 0,
}; 32];

/// Fills the IDT and loads it; returns its base (the VMCS's host IDTR base).
pub fn init() -> u64 {
    // SAFETY: called once, before anything else reads IDT; `host_isr_table` is a
    // constant table in .rodata.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        for (gate, &handler) in idt.iter_mut().zip(host_isr_table.iter()) {
            *gate = Gate {
                offset_low: handler as u16,
                selector: crate::boot::selector::CODE64,
                ist: 0,
                type_attr: 0x8E, // present, DPL 0, 64-bit interrupt gate
                offset_mid: (handler >> 16) as u16,
                offset_high: (handler >> 32) as u32,
                reserved: 0,
            };
        }
        let base = idt.as_ptr() as u64;
        let pointer: [u16; 5] = [
            (size_of::<[Gate; 32]>() - 1) as u16,
            base as u16,
            (base >> 16) as u16,
            (base >> 32) as u16,
            (base >> 48) as u16,
        ];
        core::arch::asm!("lidt [{}]", in(reg) &pointer, options(nostack, readonly));
        base
    }
}
