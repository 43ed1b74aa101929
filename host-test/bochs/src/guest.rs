//! The guest: a 64-bit program of the hypervisor's own, run in VMX non-root operation
//! from the image's code, with its own stack, page tables and IDT in guest RAM.
//!
//! It prints each line whole (formatted into a buffer, then sent), so a VM exit in the
//! middle of formatting never splits a line of the hypervisor's.

use core::arch::asm;
use core::fmt::{self, Write};

use crate::layout::{APIC, GUEST_BOOT_TABLES, GUEST_RAM, GUEST_RAM_SIZE};
use crate::serial;

/// A line of output, sent whole by [`Line::send`].
pub struct Line {
    buf: [u8; 200],
    len: usize,
}

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            buf: [0; 200],
            len: 0,
        }
    }

    /// Sends the line and a newline to COM1.
    pub fn send(&self) {
        self.buf
            .iter()
            .take(self.len)
            .copied()
            .for_each(serial::write_byte);
        serial::write_byte(b'\n');
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            let slot = self.buf.get_mut(self.len).ok_or(fmt::Error)?;
            *slot = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Prints one line from the guest.
macro_rules! gprintln {
    ($($arg:tt)*) => {{
        let mut line = $crate::guest::Line::new();
        let _ = core::fmt::Write::write_fmt(&mut line, format_args!($($arg)*));
        line.send();
    }};
}

/// VMCALL with a function number in RAX: the guest's way to tell the hypervisor where the
/// script stands.
fn vmcall(function: u64) {
    // SAFETY: VMCALL in VMX non-root operation always exits; the hypervisor changes no
    // register but RIP.
    unsafe { asm!("vmcall", in("rax") function, options(nostack)) }
}

/// CR3 as the guest sees it.
fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effect.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// The guest's first instruction.
pub extern "C" fn entry() -> ! {
    gprintln!("GUEST: hello from VMX non-root, cr3={:#x}", read_cr3());
    vmcall(0);
    gprintln!("GUEST: back from VMCALL");
    loop {
        // SAFETY: HLT exits to the hypervisor (HLT exiting).
        unsafe { asm!("hlt", options(nomem, nostack)) }
    }
}

/// Page-table entry bits (SDM Vol. 3A, 5.5, Tables 5-15 to 5-20).
mod pte {
    pub(super) const P: u64 = 1 << 0;
    pub(super) const RW: u64 = 1 << 1;
    pub(super) const PWT: u64 = 1 << 3;
    pub(super) const PCD: u64 = 1 << 4;
    pub(super) const PS: u64 = 1 << 7;
}

/// Writes one 8-byte entry into guest RAM at `table + index * 8`.
fn put(table: u64, index: u64, value: u64) {
    debug_assert!(table >= GUEST_RAM && table + 4096 <= GUEST_RAM + GUEST_RAM_SIZE && index < 512);
    // SAFETY: `table` is a frame of guest RAM (identity mapped in the host), which the
    // guest is not running yet.
    unsafe { core::ptr::write_volatile((table + index * 8) as *mut u64, value) }
}

/// Builds the guest's boot page tables (run by the hypervisor before the guest starts,
/// since a 64-bit guest needs paging from its first instruction) and returns their CR3:
/// the first 2 MiB (the image) as one large page, guest RAM one to one with 2 MiB pages,
/// and the APIC page uncached.
pub fn build_boot_tables() -> u64 {
    let pml4 = GUEST_BOOT_TABLES;
    let pdpt = pml4 + 0x1000;
    let pd0 = pml4 + 0x2000;
    let pd3 = pml4 + 0x3000;
    let pt_apic = pml4 + 0x4000;
    // SAFETY: the five frames lie in guest RAM, which nothing uses yet.
    unsafe { core::ptr::write_bytes(pml4 as *mut u8, 0, 5 * 4096) };
    put(pml4, 0, pdpt | pte::P | pte::RW);
    put(pdpt, 0, pd0 | pte::P | pte::RW);
    put(pdpt, 3, pd3 | pte::P | pte::RW);
    put(pd0, 0, pte::PS | pte::P | pte::RW);
    let mut pa = GUEST_RAM;
    while pa < GUEST_RAM + GUEST_RAM_SIZE {
        put(pd0, pa >> 21, pa | pte::PS | pte::P | pte::RW);
        pa += 0x20_0000;
    }
    put(pd3, (APIC >> 21) & 0x1FF, pt_apic | pte::P | pte::RW);
    put(pt_apic, 0, APIC | pte::PCD | pte::PWT | pte::P | pte::RW);
    pml4
}
