//! The boot stage: real mode, then 32-bit protected mode, then long mode, then Rust.
//!
//! The BIOS loads the first sector of the floppy at 0x7C00 and jumps to it with the drive
//! in DL. That sector loads the rest of the image (`__image_sectors` sectors in all, see
//! `link.ld`) right after itself, one sector per INT 13h call (CHS of a 1.44 MB floppy: 18
//! sectors per track, 2 heads). The 16-bit stage then enables A20, masks both 8259s
//! (the BIOS leaves the timer's IRQ 0 unmasked on vector 8), loads the GDT and enters
//! 32-bit protected mode. The 32-bit stage identity-maps the first 4 GiB with 2 MiB pages
//! (tables at 0x1000..0x7000) and enables long mode (Intel SDM Vol. 3A, 10.8.5
//! "Initializing IA-32e Mode"). The 64-bit stage loads a TSS (VM entry requires a
//! non-zero host TR, SDM Vol. 3C, 28.2.3), zeroes `.bss`, paints the CPU's 64 KiB stack
//! (to measure later how deep it went), switches to it and calls [`kmain`](crate::kmain).

use core::arch::global_asm;

/// The GDT selectors the boot stage sets up and the hypervisor reuses as host state.
pub mod selector {
    /// 64-bit code.
    pub const CODE64: u16 = 0x08;
    /// Flat data.
    pub const DATA: u16 = 0x10;
    /// The 64-bit TSS.
    pub const TSS: u16 = 0x20;
}

/// Size of the CPU's stack: everything runs on it, the exit loop included (it is the
/// VMCS's host RSP).
pub const HOST_STACK_SIZE: usize = 64 * 1024;

/// A page-aligned stack.
#[repr(C, align(4096))]
pub struct Stack<const N: usize>(pub [u8; N]);

/// The CPU's stack: at most 64 KiB per CPU, as the issue asks.
static mut HOST_STACK: Stack<HOST_STACK_SIZE> = Stack([0; HOST_STACK_SIZE]);

/// The byte the boot stage fills the CPU's stack with before using it.
const PAINT: u8 = 0x5A;

/// How many bytes of the CPU's stack were ever used (from its top down to the deepest
/// byte that lost its paint).
pub fn host_stack_used() -> usize {
    let base = core::ptr::addr_of!(HOST_STACK).cast::<u8>();
    // SAFETY: reads inside the static; the bytes below the current stack pointer are not
    // in use, and those above are this call's callers' frames (plain bytes either way).
    let untouched = (0..HOST_STACK_SIZE)
        .take_while(|&i| unsafe { base.add(i).read_volatile() } == PAINT)
        .count();
    HOST_STACK_SIZE - untouched
}

unsafe extern "C" {
    /// The GDT (in the boot stage).
    static boot_gdt: u8;
    /// The 64-bit TSS (in the boot stage).
    static boot_tss: u8;
}

/// The address of the GDT the boot stage loaded, and its limit.
pub fn gdt() -> (u64, u16) {
    (core::ptr::addr_of!(boot_gdt) as u64, 0x2F)
}

/// The address of the TSS the boot stage loaded.
pub fn tss() -> u64 {
    core::ptr::addr_of!(boot_tss) as u64
}

global_asm!(
    r#"
    .section .boot.sector, "awx"
    .code16
    .global boot_start
boot_start:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw $0x7c00, %sp
    ljmpw $0, $2f
2:
    movb %dl, boot_drive
    movw $1, %si                # next LBA to load
3:
    cmpw $__image_sectors, %si
    jae 5f
    movw $3, %di                # tries per sector
4:
    movw %si, %ax               # LBA -> CHS: 18 sectors/track, 2 heads
    xorw %dx, %dx
    movw $18, %bx
    divw %bx
    movb %dl, %cl
    incb %cl                    # sector (1-based)
    xorw %dx, %dx
    movw $2, %bx
    divw %bx
    movb %al, %ch               # cylinder
    movb %dl, %dh               # head
    movb boot_drive, %dl
    movw %si, %ax               # destination 0x7C00 + LBA * 512, as ES:0
    shlw $5, %ax
    addw $0x07c0, %ax
    movw %ax, %es
    xorw %bx, %bx
    movw $0x0201, %ax           # read one sector
    int $0x13
    jnc 6f
    decw %di
    jz 7f
    xorb %ah, %ah               # reset the drive and try again
    movb boot_drive, %dl
    int $0x13
    jmp 4b
6:
    incw %si
    jmp 3b
5:
    xorw %ax, %ax
    movw %ax, %es
    jmp boot_stage16
7:
    movw $0x3f8, %dx            # 'D': the disk read failed
    movb $0x44, %al
    outb %al, %dx
8:
    hlt
    jmp 8b
boot_drive:
    .byte 0
    .org 510
    .word 0xaa55

    .section .boot.stage, "awx"
    .code16
boot_stage16:
    inb $0x92, %al              # A20 through the fast gate
    orb $2, %al
    andb $0xfe, %al
    outb %al, $0x92
    movb $0xff, %al             # mask every 8259 line
    outb %al, $0xa1
    outb %al, $0x21
    lgdtl boot_gdt_ptr
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x18, $boot_stage32

    .code32
boot_stage32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl $0x7c00, %esp
    movl $0x1000, %edi          # zero the tables at 0x1000..0x7000
    movl $0x1800, %ecx
    xorl %eax, %eax
    rep stosl
    movl $0x2003, 0x1000        # PML4[0] -> PDPT
    movl $0x3003, 0x2000        # PDPT[0..4] -> four PDs
    movl $0x4003, 0x2008
    movl $0x5003, 0x2010
    movl $0x6003, 0x2018
    movl $0x3000, %edi          # 2048 PDEs: 2 MiB pages, present, writable
    movl $0x83, %eax
    movl $2048, %ecx
2:
    movl %eax, (%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop 2b
    movl %cr4, %eax             # PAE
    orl $0x20, %eax
    movl %eax, %cr4
    movl $0x1000, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx      # EFER.LME
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax             # PG (and NE, which VMX requires)
    orl $0x80000020, %eax
    movl %eax, %cr0
    ljmpl $0x08, $boot_stage64

    .code64
boot_stage64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    leaq boot_tss(%rip), %rax   # the TSS descriptor's base
    movw %ax, boot_gdt+0x22(%rip)
    shrq $16, %rax
    movb %al, boot_gdt+0x24(%rip)
    movb %ah, boot_gdt+0x27(%rip)
    shrq $16, %rax
    movl %eax, boot_gdt+0x28(%rip)
    movw $0x20, %ax
    ltr %ax
    movq $__bss_start, %rdi     # zero .bss (the stacks among it)
    movq $__bss_end, %rcx
    subq %rdi, %rcx
    shrq $3, %rcx
    xorl %eax, %eax
    rep stosq
    leaq {stack}(%rip), %rdi    # paint the CPU's stack
    movl ${stack_size}, %ecx
    movb ${paint}, %al
    rep stosb
    leaq {stack}+{stack_size}(%rip), %rsp
    xorl %ebp, %ebp
    call {kmain}
3:
    cli
    hlt
    jmp 3b

    .balign 16
    .global boot_gdt
boot_gdt:
    .quad 0
    .quad 0x00af9b000000ffff    # 0x08: 64-bit code (accessed, so no CPU write to set it)
    .quad 0x00cf93000000ffff    # 0x10: flat data (accessed)
    .quad 0x00cf9b000000ffff    # 0x18: 32-bit code (accessed)
    .quad 0x0000890000000067    # 0x20: 64-bit TSS, limit 0x67, base filled in above
    .quad 0
boot_gdt_ptr:
    .word 0x2f
    .quad boot_gdt
    .balign 16
    .global boot_tss
boot_tss:
    .fill 102, 1, 0
    .word 104                   # I/O map base past the limit: no I/O bitmap
"#,
    stack = sym HOST_STACK,
    stack_size = const HOST_STACK_SIZE,
    paint = const PAINT,
    kmain = sym crate::kmain,
    options(att_syntax)
);
