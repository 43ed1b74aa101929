//! Where everything lives in the 64 MiB Bochs machine (host-physical; the host's page
//! tables map the first 4 GiB one to one), and the guest's addresses.
//!
//! | range | what |
//! |---|---|
//! | 0x0000_1000..0x0000_7000 | the host's page tables (boot stage) |
//! | 0x0000_7C00..0x0009_F000 | the image: boot stage, code, read-only data, data |
//! | 0x0020_0000..0x0100_0000 | zeroed data: host stack, VMX regions, the EPT frame pool, the static core |
//! | 0x0100_0000..0x0180_0000 | guest RAM (guest-physical = host-physical) |
//! | 0xFEE0_0000 | the local APIC, which the guest programs for its timer |
//!
//! The guest sees its RAM, the first MiB (the image: its code and constants, which it
//! runs from and never writes) and the APIC page. The hypervisor's zeroed data is in no
//! view.

/// The guest-visible low memory: the first MiB, holding the image (guest-physical =
/// host-physical).
pub const LOW_MEMORY_SIZE: u64 = 0x10_0000;
/// Guest RAM: its first byte.
pub const GUEST_RAM: u64 = 0x0100_0000;
/// Guest RAM: its size.
pub const GUEST_RAM_SIZE: u64 = 0x0080_0000;
/// The local APIC's page.
pub const APIC: u64 = 0xFEE0_0000;

/// The guest page tables the hypervisor builds so that the guest can start in long mode
/// ("boot tables"): five frames.
pub const GUEST_BOOT_TABLES: u64 = GUEST_RAM;
/// The page tables the guest builds for itself (16 frames) and switches to.
pub const GUEST_OWN_TABLES: u64 = GUEST_RAM + 0x1_0000;
/// The guest's IDT (256 gates).
pub const GUEST_IDT: u64 = GUEST_RAM + 0x2_0000;
/// The guest's variables (what its interrupt handler records).
pub const GUEST_VARS: u64 = GUEST_RAM + 0x2_1000;
/// The frame holding the first part of the guest's string.
pub const STRING_FRAME_A: u64 = GUEST_RAM + 0x3_7000;
/// The frame holding the rest of it (not adjacent to the first).
pub const STRING_FRAME_B: u64 = GUEST_RAM + 0x3_2000;
/// The guest-virtual address of the string: 13 bytes before a page boundary, in the
/// upper half, so that the string spans two pages backed by frames out of order.
pub const STRING_VA: u64 = 0xFFFF_8000_1234_5FF3;
/// The watched frame.
pub const WATCHED_FRAME: u64 = GUEST_RAM + 0x4_0000;
/// A second guest-virtual address of the watched frame (the guest writes through it).
pub const WATCHED_ALIAS_VA: u64 = 0x0000_7F00_0000_0000;
/// The offset in the watched frame the guest writes.
pub const WATCHED_OFFSET: u64 = 0x18;
/// The value it writes.
pub const WATCHED_VALUE: u64 = 0x1122_3344_5566_7788;
/// The top of the guest's stack (64 KiB below it).
pub const GUEST_STACK_TOP: u64 = GUEST_RAM + 0x0010_0000;

/// The CPUID leaves by which the guest talks to the handler (the hypervisor range,
/// 0x4000_0000 and up, which real CPUs leave to hypervisors).
pub mod leaf {
    /// The handler's identity: EBX, ECX, EDX spell "IntroVisorHV".
    pub const IDENTITY: u32 = 0x4000_0000;
    /// Read the NUL-terminated string at RDX (guest-virtual): the handler answers its
    /// length in EAX and its FNV-1a hash in EBX.
    pub const READ_STRING: u32 = 0x4000_0001;
    /// The view the asking vCPU runs in, in EAX.
    pub const VIEW: u32 = 0x4000_0002;
}

/// The guest's VMCALLs (function in RAX, argument in RBX): where the script stands.
pub mod call {
    /// A scenario begins (RBX = its number).
    pub const BEGIN: u64 = 1;
    /// A scenario ends (RBX = its number).
    pub const END: u64 = 2;
    /// The script is over.
    pub const DONE: u64 = 3;
}

/// The scenarios, by number.
pub const SCENARIOS: [&str; 7] = [
    "cr3_write",
    "cpuid",
    "read_string",
    "write_watch",
    "breakpoint",
    "interrupt_step",
    "vmfunc",
];

/// The string the guest places.
pub const GUEST_STRING: &[u8] = b"introvisor walks the guest's own page tables";

/// The value the hooked function returns.
pub const HOOK_RESULT: u32 = 0x600D_C0DE;
/// The local APIC timer's vector in the guest.
pub const TIMER_VECTOR: u8 = 0x40;
/// The timer's initial count (divide by 1). Bochs's APIC timer counts emulated
/// instructions, so this fires 200 instructions after the guest arms it: after the guest
/// reaches the breakpoint (a handful of instructions) and before the hypervisor has
/// handled the breakpoint's VM exit (about 1,600 instructions in the backend alone), so
/// the interrupt is pending, with IF set, when the step's VM entry happens.
pub const TIMER_COUNT: u32 = 200;

/// FNV-1a, 32 bits: how the guest and the handler agree on a string's bytes.
pub const fn fnv1a(bytes: &[u8]) -> u32 {
    let mut hash = 0x811C_9DC5u32;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u32;
        hash = hash.wrapping_mul(0x0100_0193);
        i += 1;
    }
    hash
}
