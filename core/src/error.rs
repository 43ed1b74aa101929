//! The crate's one error type.
//!
//! [`VmiError`] is small and `Copy`: it can be returned from an exit handler, stored in a
//! fixed-capacity list, or logged, without allocation. A failed translation carries a
//! [`PageFault`] that says exactly where the walk stopped and why.

use core::fmt;

use crate::addr::{Gfn, Pa, Va};

/// Why a page walk stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FaultReason {
    /// The entry's present bit is clear.
    NotPresent,
    /// The entry has a reserved bit set (address bits above MAXPHYADDR, a PS bit where the
    /// level allows no large page, XD without EFER.NXE, a misaligned large-page frame, ...).
    ReservedBit,
    /// The entry, or the page-table it lies in, is outside guest-physical memory.
    OutOfMemory,
    /// The virtual address is not canonical for the paging mode (checked before any
    /// memory is read).
    NonCanonical,
    /// The effective rights of the translation forbid the access that was checked.
    AccessDenied,
}

impl fmt::Display for FaultReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotPresent => "not present",
            Self::ReservedBit => "reserved bit set",
            Self::OutOfMemory => "page table outside guest memory",
            Self::NonCanonical => "non-canonical address",
            Self::AccessDenied => "access denied",
        })
    }
}

/// Where and why a translation failed.
///
/// `level` counts from the leaf: 1 is the page table (PTE), 2 the page directory, 3 the
/// PDPT, 4 the PML4, 5 the PML5. For a non-canonical address no entry was read: `level`
/// is the top level of the mode and `entry` is zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PageFault {
    /// The virtual address that was being translated.
    pub va: Va,
    /// The translation root, as given (unmasked).
    pub root: Pa,
    /// The level of the entry where the walk stopped (1 = PTE).
    pub level: u8,
    /// The guest-physical address of that entry.
    pub entry: Pa,
    /// The raw value of that entry (zero if it could not be read).
    pub value: u64,
    /// Why the walk stopped.
    pub reason: FaultReason,
}

impl fmt::Display for PageFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (root {:#x}, level {}, entry at {:#x} = {:#x})",
            self.va, self.reason, self.root.0, self.level, self.entry.0, self.value
        )
    }
}

/// Everything that can go wrong in introvisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum VmiError {
    /// A virtual address could not be translated.
    Translation(PageFault),
    /// A guest-physical address outside guest memory was accessed.
    OutOfBounds(Pa),
    /// A guest frame is not backed by memory (a hole, or past the end).
    GfnNotPresent(Gfn),
    /// The driver does not offer this capability.
    NotSupported(&'static str),
    /// An address width other than 4 or 8 bytes was asked for.
    InvalidAddressWidth(u8),
    /// An argument was out of its allowed range.
    InvalidArgument(&'static str),
    /// A caller-supplied buffer was too small for the result.
    BufferTooSmall,
    /// A fixed-capacity container or resource is full.
    CapacityExceeded,
    /// The driver has no frame left for what the request needs: the page-table frames of
    /// a split or a new view, or a shadow frame (a hypervisor backend's fixed frame pool
    /// is empty). The request changed nothing; freeing frames (destroying a view, freeing
    /// a shadow frame, restoring rights so tables merge) makes it possible again.
    OutOfFrames,
    /// The requested item does not exist (a view, a vCPU, a frame).
    NotFound,
    /// Bytes read from the guest are not valid UTF-8; the first `valid_up_to` are.
    InvalidUtf8 {
        /// The length of the valid prefix.
        valid_up_to: usize,
    },
    /// Waiting for an event timed out.
    Timeout,
    /// The driver failed, for the reason given.
    Driver(&'static str),
    /// Guest data an OS layer read is malformed (a corrupt kernel table, a broken list),
    /// for the reason given.
    Malformed(&'static str),
}

impl VmiError {
    /// The page fault behind this error, if it is a failed translation.
    pub const fn page_fault(&self) -> Option<&PageFault> {
        match self {
            Self::Translation(pf) => Some(pf),
            _ => None,
        }
    }
}

impl From<PageFault> for VmiError {
    fn from(pf: PageFault) -> Self {
        Self::Translation(pf)
    }
}

impl fmt::Display for VmiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Translation(pf) => write!(f, "translation failed at {pf}"),
            Self::OutOfBounds(pa) => write!(f, "physical address {pa} is outside guest memory"),
            Self::GfnNotPresent(gfn) => write!(f, "guest frame {gfn} is not backed by memory"),
            Self::NotSupported(what) => write!(f, "not supported by this driver: {what}"),
            Self::InvalidAddressWidth(w) => write!(f, "invalid address width {w} (must be 4 or 8)"),
            Self::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
            Self::BufferTooSmall => f.write_str("buffer too small"),
            Self::CapacityExceeded => f.write_str("capacity exceeded"),
            Self::OutOfFrames => f.write_str("the driver's frame pool is exhausted"),
            Self::NotFound => f.write_str("not found"),
            Self::InvalidUtf8 { valid_up_to } => {
                write!(f, "invalid UTF-8 after {valid_up_to} bytes")
            }
            Self::Timeout => f.write_str("timed out"),
            Self::Driver(why) => write!(f, "driver error: {why}"),
            Self::Malformed(why) => write!(f, "malformed guest data: {why}"),
        }
    }
}

impl core::error::Error for VmiError {}
