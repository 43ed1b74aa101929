//! The general-purpose subset of the AMD64 registers, which an event response carries,
//! and the architecture-independent view of [`Registers`].

use super::registers::Registers;
use crate::addr::{Pa, Va};

/// The AMD64 general-purpose registers, RIP and RFLAGS: what an event response may set
/// (144 bytes, against the full [`Registers`] with segments, control and debug
/// registers and MSRs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[allow(missing_docs)] // The field names are the architectural register names.
pub struct GpRegisters {
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
}

impl Registers {
    /// The general-purpose registers, RIP and RFLAGS.
    pub const fn gp(&self) -> GpRegisters {
        GpRegisters {
            rax: self.rax,
            rbx: self.rbx,
            rcx: self.rcx,
            rdx: self.rdx,
            rsi: self.rsi,
            rdi: self.rdi,
            rbp: self.rbp,
            rsp: self.rsp,
            r8: self.r8,
            r9: self.r9,
            r10: self.r10,
            r11: self.r11,
            r12: self.r12,
            r13: self.r13,
            r14: self.r14,
            r15: self.r15,
            rip: self.rip,
            rflags: self.rflags,
        }
    }

    /// Overwrites the general-purpose registers, RIP and RFLAGS with `gp`; every other
    /// register keeps its value.
    pub const fn set_gp(&mut self, gp: &GpRegisters) {
        self.rax = gp.rax;
        self.rbx = gp.rbx;
        self.rcx = gp.rcx;
        self.rdx = gp.rdx;
        self.rsi = gp.rsi;
        self.rdi = gp.rdi;
        self.rbp = gp.rbp;
        self.rsp = gp.rsp;
        self.r8 = gp.r8;
        self.r9 = gp.r9;
        self.r10 = gp.r10;
        self.r11 = gp.r11;
        self.r12 = gp.r12;
        self.r13 = gp.r13;
        self.r14 = gp.r14;
        self.r15 = gp.r15;
        self.rip = gp.rip;
        self.rflags = gp.rflags;
    }
}

impl From<&Registers> for GpRegisters {
    fn from(registers: &Registers) -> Self {
        registers.gp()
    }
}

impl crate::arch::Registers for Registers {
    #[inline]
    fn instruction_pointer(&self) -> Va {
        Va(self.rip)
    }

    #[inline]
    fn stack_pointer(&self) -> Va {
        Va(self.rsp)
    }

    #[inline]
    fn translation_root(&self) -> Pa {
        Registers::translation_root(self)
    }

    #[inline]
    fn address_width(&self) -> u8 {
        Registers::address_width(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_gp_changes_only_the_general_purpose_subset() {
        let mut regs = Registers {
            cr3: 0x1234_5000,
            rax: 1,
            rip: 2,
            efer: 0xd01,
            ..Registers::default()
        };
        let mut gp = regs.gp();
        assert_eq!(gp.rax, 1);
        assert_eq!(gp.rip, 2);
        gp.rax = 0xaaaa;
        gp.r15 = 0xbbbb;
        gp.rflags = 0x202;
        regs.set_gp(&gp);
        assert_eq!(regs.rax, 0xaaaa);
        assert_eq!(regs.r15, 0xbbbb);
        assert_eq!(regs.rflags, 0x202);
        assert_eq!(regs.cr3, 0x1234_5000);
        assert_eq!(regs.efer, 0xd01);
        assert_eq!(GpRegisters::from(&regs), gp);
        assert_eq!(size_of::<GpRegisters>(), 18 * 8);
    }
}
