//! Access rights and the contexts that say how an address is to be reached.

use core::fmt;

use crate::addr::{Pa, Va};

bitflags::bitflags! {
    /// Read, write and execute rights of a guest frame (in a view), or the effective
    /// rights of a translation.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct MemoryAccess: u8 {
        /// The frame can be read.
        const R = 1 << 0;
        /// The frame can be written.
        const W = 1 << 1;
        /// The frame can be executed.
        const X = 1 << 2;
        /// Read and write.
        const RW = Self::R.bits() | Self::W.bits();
        /// Read and execute.
        const RX = Self::R.bits() | Self::X.bits();
        /// Every right.
        const RWX = Self::R.bits() | Self::W.bits() | Self::X.bits();
    }
}

#[cfg(feature = "defmt")]
#[cfg_attr(docsrs, doc(cfg(feature = "defmt")))]
impl defmt::Format for MemoryAccess {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "MemoryAccess({=u8:#x})", self.bits())
    }
}

impl fmt::Display for MemoryAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = if self.contains(Self::R) { 'r' } else { '-' };
        let w = if self.contains(Self::W) { 'w' } else { '-' };
        let x = if self.contains(Self::X) { 'x' } else { '-' };
        write!(f, "{r}{w}{x}")
    }
}

/// How an address in an [`AccessContext`] is turned into a guest-physical one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TranslationMechanism {
    /// The address is guest-physical already.
    Direct,
    /// The address is virtual, translated through the page tables whose root is given
    /// (for AMD64, the raw CR3 value: the walker masks the PCID and flag bits itself).
    Paging {
        /// The translation root.
        root: Pa,
    },
}

/// A virtual address together with the root of the page tables that translate it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AddressContext {
    /// The virtual address.
    pub va: Va,
    /// The translation root (for AMD64, CR3).
    pub root: Pa,
}

impl AddressContext {
    /// A virtual address under the page tables rooted at `root`.
    pub const fn new(va: Va, root: Pa) -> Self {
        Self { va, root }
    }
}

impl From<(Va, Pa)> for AddressContext {
    fn from((va, root): (Va, Pa)) -> Self {
        Self { va, root }
    }
}

/// An address and the mechanism that reaches it: the argument of every memory read and
/// write of [`VmiCore`](crate::VmiCore).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AccessContext {
    /// The address, physical or virtual depending on `mechanism`.
    pub address: u64,
    /// How `address` is translated.
    pub mechanism: TranslationMechanism,
}

impl AccessContext {
    /// A guest-physical address, used as it is.
    pub const fn direct(pa: Pa) -> Self {
        Self {
            address: pa.0,
            mechanism: TranslationMechanism::Direct,
        }
    }

    /// A virtual address, translated through the page tables rooted at `root`.
    pub const fn paging(va: Va, root: Pa) -> Self {
        Self {
            address: va.0,
            mechanism: TranslationMechanism::Paging { root },
        }
    }

    /// The same context, `offset` bytes further on (wrapping).
    pub const fn offset(self, offset: u64) -> Self {
        Self {
            address: self.address.wrapping_add(offset),
            mechanism: self.mechanism,
        }
    }
}

impl From<Pa> for AccessContext {
    fn from(pa: Pa) -> Self {
        Self::direct(pa)
    }
}

impl From<AddressContext> for AccessContext {
    fn from(ctx: AddressContext) -> Self {
        Self::paging(ctx.va, ctx.root)
    }
}

impl From<(Va, Pa)> for AccessContext {
    fn from((va, root): (Va, Pa)) -> Self {
        Self::paging(va, root)
    }
}

/// What a driver tells about the virtual machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct VmiInfo {
    /// The page size in bytes.
    pub page_size: u64,
    /// log2 of the page size.
    pub page_shift: u32,
    /// The highest guest frame number backed by memory (holes below it are possible).
    pub max_gfn: crate::addr::Gfn,
    /// The number of virtual CPUs.
    pub vcpus: u16,
}
