//! The AMD64 register set of one vCPU.

use super::paging::{Paging, PagingMode};
use crate::addr::Pa;

/// A segment register: selector and the hidden descriptor cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Segment {
    /// The visible selector.
    pub selector: u16,
    /// The base address.
    pub base: u64,
    /// The limit, in bytes (already scaled by the granularity bit).
    pub limit: u32,
    /// The access rights in the VMX layout (SDM Vol. 3C §25.4.1, Table 25-2): type in
    /// bits 3:0, S 4, DPL 6:5, P 7, AVL 12, L 13, D/B 14, G 15, unusable 16.
    pub access: u32,
}

impl Segment {
    /// The descriptor privilege level.
    pub const fn dpl(&self) -> u8 {
        ((self.access >> 5) & 3) as u8
    }

    /// The L bit: a 64-bit code segment.
    pub const fn long(&self) -> bool {
        self.access & (1 << 13) != 0
    }

    /// The D/B bit: 32-bit default operand size.
    pub const fn default_big(&self) -> bool {
        self.access & (1 << 14) != 0
    }
}

/// A descriptor-table register (GDTR, IDTR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DescriptorTable {
    /// The linear base address.
    pub base: u64,
    /// The limit, in bytes.
    pub limit: u16,
}

/// The AMD64 state of one vCPU that introspection needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[allow(missing_docs)] // The field names are the architectural register names.
pub struct Registers {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,

    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,

    pub dr0: u64,
    pub dr1: u64,
    pub dr2: u64,
    pub dr3: u64,
    pub dr6: u64,
    pub dr7: u64,

    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub ldtr: Segment,
    pub tr: Segment,
    pub gdtr: DescriptorTable,
    pub idtr: DescriptorTable,

    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub sfmask: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub kernel_gs_base: u64,
    pub pat: u64,
}

impl Registers {
    /// The paging mode from CR0, CR4 and EFER.
    pub const fn paging_mode(&self) -> PagingMode {
        PagingMode::from_control_registers(self.cr0, self.cr4, self.efer)
    }

    /// The paging configuration (mode, NXE, PSE) from CR0, CR4 and EFER.
    pub const fn paging(&self) -> Paging {
        Paging::from_control_registers(self.cr0, self.cr4, self.efer)
    }

    /// The translation root: CR3 as it is (the walker masks it for the mode).
    pub const fn translation_root(&self) -> Pa {
        Pa(self.cr3)
    }

    /// The current privilege level: the DPL of SS (SDM Vol. 3A §5.5).
    pub const fn cpl(&self) -> u8 {
        self.ss.dpl()
    }

    /// The address width of the code running now, in bytes: 8 in 64-bit mode (EFER.LMA
    /// and CS.L), 4 otherwise (compatibility, protected mode), 2 for 16-bit code.
    pub const fn address_width(&self) -> u8 {
        if self.efer & (1 << 10) != 0 && self.cs.long() {
            8
        } else if self.cr0 & 1 == 0 || !self.cs.default_big() {
            2
        } else {
            4
        }
    }
}
