//! # introvisor-bochs
//!
//! A bare-metal test hypervisor for `x86_64-unknown-none`, booted under Bochs's emulated
//! Intel VMX. It embeds `introvisor` and `introvisor-ept`, launches a guest of its own and
//! answers the guest's VM exits through introvisor; the guest prints what it sees on
//! COM1. `run.sh` builds the image and boots it headless.

#![no_std]
#![no_main]
#![allow(dead_code, reason = "the Platform implementation, next, uses the rest")]

mod boot;
mod cpu;
#[macro_use]
mod serial;
#[macro_use]
mod guest;
mod hv;
mod idt;
mod layout;
mod tmp_ept;
mod vcpu;
mod vmx;

use core::panic::PanicInfo;

use vmx::{field, vmread};

/// Rust's entry, called by the boot stage in long mode on the host stack.
extern "C" fn kmain() -> ! {
    serial::init();
    let idt = idt::init();
    println!(
        "HV: long mode, host stack {} KiB",
        boot::HOST_STACK_SIZE / 1024
    );
    let caps = match hv::enable() {
        Ok(caps) => caps,
        Err(e) => fail(format_args!("VMX: {e}")),
    };
    hv::print_caps(&caps);
    let start = hv::GuestStart {
        rip: guest::entry as *const () as u64,
        rsp: layout::GUEST_STACK_TOP,
        cr3: guest::build_boot_tables(),
    };
    if let Err((f, e)) = hv::setup_vmcs(&caps, idt, &start) {
        fail(format_args!("VMWRITE {f:#x}: {e}"));
    }
    // SAFETY: the EPTP points at the tables tmp_ept just built.
    if let Err(e) = unsafe { vmx::vmwrite(field::EPT_POINTER, tmp_ept::build()) } {
        fail(format_args!("EPTP: {e}"));
    }
    let mut launched = false;
    let mut exits = 0u64;
    loop {
        // SAFETY: the VMCS is complete (setup_vmcs) with host RIP = the exit stub.
        if let Err(e) = unsafe { vcpu::enter(launched) } {
            fail(format_args!("VM entry: {e}"));
        }
        launched = true;
        exits += 1;
        let reason = vmread(field::EXIT_REASON).unwrap_or(u64::MAX);
        let qual = vmread(field::EXIT_QUALIFICATION).unwrap_or(0);
        let rip = vmread(field::GUEST_RIP).unwrap_or(0);
        println!("HV: exit #{exits} reason={reason:#x} qual={qual:#x} rip={rip:#x}");
        let len = vmread(field::EXIT_INSTRUCTION_LENGTH).unwrap_or(0);
        let mut g = vcpu::GPRS.get();
        match reason {
            18 => {
                println!("HV: vmcall rax={} rbx={}", g.rax, g.rbx);
                if g.rax == layout::call::DONE {
                    println!("RESULT pass exits={exits}");
                    serial::shutdown()
                }
            }
            10 => {
                let [a, b, c, d] = cpu::cpuid(g.rax as u32, g.rcx as u32);
                (g.rax, g.rbx, g.rcx, g.rdx) = (a.into(), b.into(), c.into(), d.into());
                vcpu::GPRS.set(g);
            }
            _ => fail(format_args!("unexpected exit {reason:#x}")),
        }
        // SAFETY: moves the guest's RIP past the instruction that exited.
        let _ = unsafe { vmx::vmwrite(field::GUEST_RIP, rip + len) };
    }
}

/// Prints the reason, a failing result line, and shuts down.
fn fail(why: core::fmt::Arguments<'_>) -> ! {
    println!("HV: FATAL {why}");
    println!("RESULT fail");
    serial::shutdown()
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    println!("PANIC: {info}");
    println!("RESULT fail panic");
    serial::shutdown()
}
