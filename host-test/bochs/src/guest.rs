//! The guest: a 64-bit program of the hypervisor's own, run in VMX non-root operation
//! from the image's code, with its stack, page tables, IDT and data in guest RAM.
//!
//! It runs a script of accesses (one scenario after another, each between two VMCALLs
//! that tell the hypervisor where it stands) and prints what it sees. It prints each line
//! whole (formatted into a buffer, then sent), so a VM exit in the middle of formatting
//! never splits a line of the hypervisor's. It uses no static of the image: everything
//! it writes is in guest RAM.

use core::arch::{asm, global_asm};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::layout::{self, call, leaf};
use crate::serial;

/// A line of output, sent whole by [`Line::send`].
pub struct Line {
    buf: [u8; 240],
    len: usize,
}

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            buf: [0; 240],
            len: 0,
        }
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties the line.
    pub fn clear(&mut self) {
        self.len = 0;
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

/// What the guest's interrupt handler records, in guest RAM.
#[repr(C)]
struct Vars {
    /// Timer interrupts taken.
    isr_count: AtomicU64,
    /// The view the handler ran in (asked of the introspection handler by CPUID).
    isr_view: AtomicU64,
    /// The RIP the interrupt interrupted.
    isr_rip: AtomicU64,
    /// The RFLAGS it interrupted.
    isr_rflags: AtomicU64,
    /// Runs of the hooked function's first instruction.
    hook_count: AtomicU64,
}

fn vars() -> &'static Vars {
    // SAFETY: GUEST_VARS is a frame of guest RAM that only the guest uses, mapped in
    // both of its page tables at the same address; the fields are atomics, so the
    // interrupt handler and the script may share them.
    unsafe { &*(layout::GUEST_VARS as *const Vars) }
}

/// VMCALL `function` with `arg` in RBX (see [`layout::call`]).
fn vmcall(function: u64, arg: u64) {
    // SAFETY: VMCALL in VMX non-root operation always exits; the hypervisor changes no
    // register but RIP. RBX is reserved by LLVM, so it is swapped in and out.
    unsafe {
        asm!("xchg {a}, rbx", "vmcall", "xchg {a}, rbx", a = inout(reg) arg => _,
             in("rax") function, options(nostack))
    }
}

/// VMFUNC leaf 0: switch to EPTP-list entry `index`, without a VM exit.
fn vmfunc_eptp(index: u32) {
    // SAFETY: the hypervisor enabled VM functions with EPTP switching and filled the list
    // (entry n = view n); an invalid entry would exit instead (reason 59).
    unsafe { asm!("vmfunc", in("eax") 0u32, in("ecx") index, options(nostack)) }
}

/// CPUID `leaf` with RCX = 0 and RDX = `rdx`: (EAX, EBX, ECX, EDX).
fn cpuid(leaf: u32, rdx: u64) -> [u32; 4] {
    let (a, b, c, d): (u32, u64, u32, u64);
    // SAFETY: CPUID exits to the hypervisor, which answers in the four registers. RBX is
    // reserved by LLVM, so it is swapped in and out.
    unsafe {
        asm!("xchg {b}, rbx", "cpuid", "xchg {b}, rbx", b = inout(reg) 0u64 => b,
             inout("eax") leaf => a, inout("ecx") 0u32 => c, inout("rdx") rdx => d,
             options(nostack))
    }
    [a, b as u32, c, d as u32]
}

fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effect.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

fn rflags() -> u64 {
    let v: u64;
    // SAFETY: PUSHFQ/POP reads the flags through the stack.
    unsafe { asm!("pushfq", "pop {}", out(reg) v, options(nomem, preserves_flags)) }
    v
}

fn cli() {
    // SAFETY: the guest masks its own interrupts.
    unsafe { asm!("cli", options(nomem, nostack)) }
}

fn apic_write(offset: u64, value: u32) {
    // SAFETY: the APIC page is mapped uncached in both guest page tables and in the EPT.
    unsafe { core::ptr::write_volatile((layout::APIC + offset) as *mut u32, value) }
}

unsafe extern "C" {
    /// The hooked function (in `.guest.hook`, alone on its page): adds one to `*count`
    /// (its first instruction, the breakpoint's address: so a step run twice or skipped
    /// shows) and returns [`layout::HOOK_RESULT`].
    fn guest_hooked_fn(count: *mut u64) -> u32;
    /// The guest's interrupt stubs.
    static guest_isr_table: [u64; 32];
    fn guest_timer_isr();
    fn guest_spurious_isr();
}

/// The address of the hooked instruction.
pub fn hooked_address() -> u64 {
    guest_hooked_fn as *const () as u64
}

global_asm!(
    r#"
    .section .guest.hook, "ax"
    .global guest_hooked_fn
guest_hooked_fn:
    incq (%rdi)
    movl ${result}, %eax
    ret

    .section .text.guest_isr, "ax"
    .altmacro
    .macro GUEST_ISR v
    .balign 16
guest_isr_\v:
    .if (\v == 8) || (\v >= 10 && \v <= 14) || (\v == 17) || (\v == 21) || (\v == 29) || (\v == 30)
    .else
    pushq $0
    .endif
    pushq $\v
    movq %rsp, %rdi
    andq $-16, %rsp
    call {exception}
    ud2
    .endm
    .set i, 0
    .rept 32
    GUEST_ISR %i
    .set i, i+1
    .endr

    .global guest_timer_isr
guest_timer_isr:
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    leaq 72(%rsp), %rdi         # the interrupt frame: RIP, CS, RFLAGS, RSP, SS
    call {timer}
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rax
    iretq

    .global guest_spurious_isr
guest_spurious_isr:
    iretq

    .section .rodata.guest_isr, "a"
    .balign 8
    .global guest_isr_table
guest_isr_table:
    .macro GUEST_ISR_ENTRY v
    .quad guest_isr_\v
    .endm
    .set i, 0
    .rept 32
    GUEST_ISR_ENTRY %i
    .set i, i+1
    .endr
"#,
    result = const layout::HOOK_RESULT,
    exception = sym guest_exception,
    timer = sym guest_timer,
    options(att_syntax)
);

/// An exception in the guest: the script went wrong.
extern "C" fn guest_exception(frame: &[u64; 4]) -> ! {
    gprintln!(
        "GUEST EXCEPTION vector={} error={:#x} rip={:#x} cr3={:#x}",
        frame[0],
        frame[1],
        frame[2],
        read_cr3()
    );
    gprintln!("RESULT fail guest exception");
    serial::shutdown()
}

/// The local APIC timer's handler: records what it interrupted and in which view it runs,
/// then signals the end of the interrupt.
extern "C" fn guest_timer(frame: &[u64; 5]) {
    let v = vars();
    v.isr_rip.store(frame[0], Ordering::Relaxed);
    v.isr_rflags.store(frame[2], Ordering::Relaxed);
    v.isr_view
        .store(u64::from(cpuid(leaf::VIEW, 0)[0]), Ordering::Relaxed);
    v.isr_count.fetch_add(1, Ordering::Relaxed);
    apic_write(0xB0, 0); // EOI
}

/// One 64-bit interrupt gate (SDM Vol. 3A, 7.14.1).
fn gate(handler: u64) -> [u64; 2] {
    let low = (handler & 0xFFFF)
        | (u64::from(crate::boot::selector::CODE64) << 16)
        | (0x8E << 40)
        | ((handler >> 16 & 0xFFFF) << 48);
    [low, handler >> 32]
}

/// Fills the guest's IDT in guest RAM and loads it.
fn init_idt() {
    let idt = layout::GUEST_IDT as *mut [u64; 2];
    // SAFETY: GUEST_IDT is the guest's own frame in guest RAM (256 gates = 4 KiB); the
    // table of stubs is constant.
    unsafe {
        for vector in 0..256usize {
            let handler = match vector {
                0..32 => guest_isr_table.get(vector).copied().unwrap_or(0),
                v if v == usize::from(layout::TIMER_VECTOR) => guest_timer_isr as *const () as u64,
                _ => guest_spurious_isr as *const () as u64,
            };
            idt.add(vector).write_volatile(gate(handler));
        }
        let pointer: [u16; 5] = [
            0xFFF,
            layout::GUEST_IDT as u16,
            (layout::GUEST_IDT >> 16) as u16,
            (layout::GUEST_IDT >> 32) as u16,
            (layout::GUEST_IDT >> 48) as u16,
        ];
        asm!("lidt [{}]", in(reg) &pointer, options(nostack, readonly));
    }
}

/// Page-table entry bits (SDM Vol. 3A, 5.5.4, Tables 5-15 to 5-20).
mod pte {
    pub(super) const P: u64 = 1 << 0;
    pub(super) const RW: u64 = 1 << 1;
    pub(super) const PWT: u64 = 1 << 3;
    pub(super) const PCD: u64 = 1 << 4;
    pub(super) const PS: u64 = 1 << 7;
    pub(super) const NX: u64 = 1 << 63;
}

/// Writes one 8-byte entry at `table + index * 8`, `table` a frame of guest RAM that the
/// current page tables map one to one.
fn put(table: u64, index: u64, value: u64) {
    assert!(
        table >= layout::GUEST_RAM
            && table + 4096 <= layout::GUEST_RAM + layout::GUEST_RAM_SIZE
            && index < 512
    );
    // SAFETY: checked just above: the entry lies in guest RAM, mapped one to one.
    unsafe { core::ptr::write_volatile((table + index * 8) as *mut u64, value) }
}

fn zero(frames: u64, count: u64) {
    // SAFETY: the caller's frames lie in guest RAM, mapped one to one.
    unsafe { core::ptr::write_bytes(frames as *mut u8, 0, (count * 4096) as usize) }
}

/// Builds the guest's boot page tables (run by the hypervisor before the guest starts,
/// since a 64-bit guest needs paging from its first instruction) and returns their CR3:
/// the first 2 MiB (the image) as one large page, guest RAM one to one with 2 MiB pages,
/// and the APIC page uncached.
pub fn build_boot_tables() -> u64 {
    let pml4 = layout::GUEST_BOOT_TABLES;
    let (pdpt, pd0, pd3, pt_apic) = (pml4 + 0x1000, pml4 + 0x2000, pml4 + 0x3000, pml4 + 0x4000);
    zero(pml4, 5);
    put(pml4, 0, pdpt | pte::P | pte::RW);
    put(pdpt, 0, pd0 | pte::P | pte::RW);
    put(pdpt, 3, pd3 | pte::P | pte::RW);
    put(pd0, 0, pte::PS | pte::P | pte::RW);
    let mut pa = layout::GUEST_RAM;
    while pa < layout::GUEST_RAM + layout::GUEST_RAM_SIZE {
        put(pd0, pa >> 21, pa | pte::PS | pte::P | pte::RW);
        pa += 0x20_0000;
    }
    put(
        pd3,
        (layout::APIC >> 21) & 0x1FF,
        pt_apic | pte::P | pte::RW,
    );
    put(
        pt_apic,
        0,
        layout::APIC | pte::PCD | pte::PWT | pte::P | pte::RW,
    );
    pml4
}

unsafe extern "C" {
    static __text_start: u8;
    static __text_end: u8;
}

/// Builds the guest's own page tables, as an OS would: 4 KiB pages for the first MiB
/// (code read-only and executable, the rest no-execute, page 0 and the second MiB not
/// present), 4 KiB pages for the first 2 MiB of guest RAM and 2 MiB pages for the rest,
/// the string's two pages in the upper half backed by frames out of order, a second
/// address for the watched frame, and the APIC uncached. Returns the new CR3.
fn build_own_tables() -> u64 {
    let t = |n: u64| layout::GUEST_OWN_TABLES + n * 0x1000;
    let (pml4, pdpt_lo, pd_lo, pt_img, pt_ram) = (t(0), t(1), t(2), t(3), t(4));
    let (pdpt_hi, pd_hi, pt_hi) = (t(5), t(6), t(7));
    let (pdpt_alias, pd_alias, pt_alias) = (t(8), t(9), t(10));
    let (pd_apic, pt_apic) = (t(11), t(12));
    zero(pml4, 13);
    let table = pte::P | pte::RW;
    put(pml4, 0, pdpt_lo | table);
    put(pdpt_lo, 0, pd_lo | table);
    put(pd_lo, 0, pt_img | table);
    let text =
        core::ptr::addr_of!(__text_start) as u64 & !0xFFF..(core::ptr::addr_of!(__text_end) as u64);
    for page in 1..(layout::LOW_MEMORY_SIZE >> 12) {
        let pa = page << 12;
        let flags = if text.contains(&pa) {
            pte::P
        } else {
            pte::P | pte::RW | pte::NX
        };
        put(pt_img, page, pa | flags);
    }
    let ram = layout::GUEST_RAM;
    put(pd_lo, ram >> 21, pt_ram | table);
    for page in 0..512 {
        put(
            pt_ram,
            page,
            (ram + (page << 12)) | pte::P | pte::RW | pte::NX,
        );
    }
    let mut pa = ram + 0x20_0000;
    while pa < ram + layout::GUEST_RAM_SIZE {
        put(pd_lo, pa >> 21, pa | pte::PS | pte::P | pte::RW | pte::NX);
        pa += 0x20_0000;
    }
    let va = layout::STRING_VA;
    put(pml4, (va >> 39) & 0x1FF, pdpt_hi | table);
    put(pdpt_hi, (va >> 30) & 0x1FF, pd_hi | table);
    put(pd_hi, (va >> 21) & 0x1FF, pt_hi | table);
    put(
        pt_hi,
        (va >> 12) & 0x1FF,
        layout::STRING_FRAME_A | pte::P | pte::RW | pte::NX,
    );
    put(
        pt_hi,
        ((va >> 12) + 1) & 0x1FF,
        layout::STRING_FRAME_B | pte::P | pte::RW | pte::NX,
    );
    let va = layout::WATCHED_ALIAS_VA;
    put(pml4, (va >> 39) & 0x1FF, pdpt_alias | table);
    put(pdpt_alias, (va >> 30) & 0x1FF, pd_alias | table);
    put(pd_alias, (va >> 21) & 0x1FF, pt_alias | table);
    put(
        pt_alias,
        (va >> 12) & 0x1FF,
        layout::WATCHED_FRAME | pte::P | pte::RW | pte::NX,
    );
    let apic = layout::APIC;
    put(pdpt_lo, (apic >> 30) & 0x1FF, pd_apic | table);
    put(pd_apic, (apic >> 21) & 0x1FF, pt_apic | table);
    put(
        pt_apic,
        (apic >> 12) & 0x1FF,
        apic | pte::P | pte::RW | pte::PCD | pte::PWT | pte::NX,
    );
    pml4
}

/// Runs scenario `n` between its two VMCALLs.
fn scenario(n: u64, body: impl FnOnce()) {
    vmcall(call::BEGIN, n);
    body();
    vmcall(call::END, n);
}

/// The guest's first instruction.
pub extern "C" fn entry() -> ! {
    init_idt();
    gprintln!(
        "GUEST start rip={:#x} cr3={:#x} rflags={:#x}",
        entry as *const () as u64,
        read_cr3(),
        rflags()
    );

    scenario(0, || {
        let old = read_cr3();
        let new = build_own_tables();
        // SAFETY: the new tables map everything the guest uses at the same addresses.
        unsafe { asm!("mov cr3, {}", in(reg) new, options(nostack)) };
        gprintln!(
            "GUEST cr3_write old={old:#x} new={new:#x} now={:#x}",
            read_cr3()
        );
    });

    scenario(1, || {
        let [a, b, c, d] = cpuid(leaf::IDENTITY, 0);
        let mut name = [0u8; 12];
        name[..4].copy_from_slice(&b.to_le_bytes());
        name[4..8].copy_from_slice(&c.to_le_bytes());
        name[8..].copy_from_slice(&d.to_le_bytes());
        for b in &mut name {
            if !b.is_ascii_graphic() {
                *b = b'.';
            }
        }
        let name = core::str::from_utf8(&name).unwrap_or("?");
        gprintln!(
            "GUEST cpuid leaf={:#x} eax={a:#x} ebx={b:#x} name={name}",
            leaf::IDENTITY
        );
    });

    scenario(2, || {
        let s = layout::GUEST_STRING;
        let at = layout::STRING_VA as *mut u8;
        // SAFETY: the string's two pages are mapped writable by the guest's own tables
        // (the current CR3), backed by two frames of guest RAM only the guest uses.
        unsafe {
            for (i, &b) in s.iter().enumerate() {
                at.add(i).write_volatile(b);
            }
            at.add(s.len()).write_volatile(0);
        }
        let [len, hash, _, _] = cpuid(leaf::READ_STRING, layout::STRING_VA);
        gprintln!(
            "GUEST read_string va={:#x} len={} hash={:#x} handler_len={len} handler_hash={hash:#x}",
            layout::STRING_VA,
            s.len(),
            layout::fnv1a(s)
        );
    });

    scenario(3, || {
        let alias = (layout::WATCHED_ALIAS_VA + layout::WATCHED_OFFSET) as *mut u64;
        let direct = (layout::WATCHED_FRAME + layout::WATCHED_OFFSET) as *const u64;
        // SAFETY: both addresses map the watched frame of guest RAM (the guest's tables).
        let back = unsafe {
            alias.write_volatile(layout::WATCHED_VALUE);
            direct.read_volatile()
        };
        gprintln!(
            "GUEST write_watch wrote={:#x} va={:#x} read_back={back:#x}",
            layout::WATCHED_VALUE,
            alias as u64
        );
    });

    scenario(4, || {
        cli();
        // SAFETY: the hooked function's page is mapped (read-only) by the guest's tables.
        let byte = unsafe { (hooked_address() as *const u8).read_volatile() };
        let count = &vars().hook_count;
        let before = count.load(Ordering::Relaxed);
        // SAFETY: the hooked function adds one to the counter (guest RAM) and returns a
        // constant.
        let result = unsafe { guest_hooked_fn(count.as_ptr()) };
        gprintln!(
            "GUEST breakpoint byte={byte:#x} call={result:#x} runs={} if={}",
            count.load(Ordering::Relaxed) - before,
            rflags() >> 9 & 1
        );
    });

    scenario(5, || {
        cli();
        apic_write(0xF0, 0x1FF); // spurious vector 0xFF, APIC software-enabled
        apic_write(0x3E0, 0xB); // divide by 1
        apic_write(0x320, u32::from(layout::TIMER_VECTOR)); // one-shot, unmasked
        let count = &vars().hook_count;
        let before = count.load(Ordering::Relaxed);
        // SAFETY: the IDT handles the timer's vector; arming the timer and calling the
        // hooked function follow at once, so the interrupt falls during the breakpoint's
        // handling (see layout::TIMER_COUNT); the function adds one to the counter.
        let result = unsafe {
            asm!("sti", options(nomem, nostack));
            apic_write(0x380, layout::TIMER_COUNT);
            guest_hooked_fn(count.as_ptr())
        };
        let if_after = rflags() >> 9 & 1;
        cli();
        let v = vars();
        gprintln!(
            "GUEST interrupt_step call={result:#x} runs={} if={if_after} isr_count={} isr_view={} isr_rip={:#x} isr_if={}",
            count.load(Ordering::Relaxed) - before,
            v.isr_count.load(Ordering::Relaxed),
            v.isr_view.load(Ordering::Relaxed),
            v.isr_rip.load(Ordering::Relaxed),
            v.isr_rflags.load(Ordering::Relaxed) >> 9 & 1
        );
    });

    scenario(6, || {
        cli();
        let hooked = hooked_address() as *const u8;
        // VMFUNC leaf 0 (EPTP switching, SDM Vol. 3C, 27.5.6.3) to entry 0 of the EPTP
        // list, the default view: the hooked page is readable there, so the read makes no
        // exit. Then back to entry 1, the breakpoint view, where the same read exits.
        vmfunc_eptp(0);
        // SAFETY: the hooked page is mapped (read-only) by the guest's tables.
        let in_default = unsafe { hooked.read_volatile() };
        vmfunc_eptp(1);
        // SAFETY: as above.
        let in_breakpoint_view = unsafe { hooked.read_volatile() };
        gprintln!(
            "GUEST vmfunc byte_in_view0={in_default:#x} byte_in_view1={in_breakpoint_view:#x}"
        );
    });

    vmcall(call::DONE, 0);
    loop {
        // SAFETY: HLT exits to the hypervisor (HLT exiting).
        unsafe { asm!("hlt", options(nomem, nostack)) }
    }
}
