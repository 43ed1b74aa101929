//! Where everything lives in the 64 MiB Bochs machine (host-physical; the host's page
//! tables map the first 4 GiB one to one).
//!
//! | range | what |
//! |---|---|
//! | 0x0000_1000..0x0000_7000 | the host's page tables (boot stage) |
//! | 0x0000_7C00..0x0009_F000 | the image: boot stage, code, read-only data, data |
//! | 0x0020_0000..0x0100_0000 | zeroed data: host stack, VMX regions, the EPT frame pool, the static core |
//! | 0x0100_0000..0x0180_0000 | guest RAM (guest-physical = host-physical) |
//! | 0xFEE0_0000 | the local APIC, which the guest programs for its timer |
//!
//! The guest sees its RAM, the image (code and constants, which its own code runs from:
//! it is read and executed, never written) and the APIC page. The hypervisor's zeroed
//! data is mapped in no view.

/// The guest-visible part of the image: everything below 1 MiB (guest-physical =
/// host-physical).
pub const LOW_MEMORY_SIZE: u64 = 0x10_0000;
/// Guest RAM: its first byte.
pub const GUEST_RAM: u64 = 0x0100_0000;
/// Guest RAM: its size.
pub const GUEST_RAM_SIZE: u64 = 0x0080_0000;
/// The local APIC's page.
pub const APIC: u64 = 0xFEE0_0000;

/// The guest page tables the hypervisor builds so that the guest can start in long mode
/// ("boot tables"): PML4, PDPT, two PDs, one PT.
pub const GUEST_BOOT_TABLES: u64 = GUEST_RAM;
/// The top of the guest's stack (64 KiB below it).
pub const GUEST_STACK_TOP: u64 = GUEST_RAM + 0x0010_0000;
