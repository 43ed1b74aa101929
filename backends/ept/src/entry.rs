//! EPT paging-structure entries and the EPT pointer (SDM Vol. 3C §29.3.2 and §25.6.11).
//!
//! An [`EptEntry`] is a `u64` newtype: the backend reads and writes entries as single
//! atomic 64-bit words, so neither a CPU's page walker nor another thread of the backend
//! ever sees half an update. Its flags are [`EptFlags`], one doc line per bit, reserved
//! and ignored bits kept. The constructors that take rights check them
//! ([`EptEntry::try_leaf`]): a misconfiguration (SDM §29.3.3.1) is refused with an
//! [`EptError`], never written.

use core::fmt;

use introvisor::MemoryAccess;

use crate::caps::EptCapabilities;
use crate::error::EptError;
use crate::platform::Hpa;

/// Bits 51:12: the physical address field of an entry or of the EPTP. (The CPU's
/// MAXPHYADDR may be smaller; bits above it must be zero, which the backend ensures by
/// writing only addresses the platform maps.)
pub const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

bitflags::bitflags! {
    /// The flag bits of an EPT entry (SDM Vol. 3C §29.3.2, Tables 29-1 to 29-6).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct EptFlags: u64 {
        /// Bit 0, R: reads allowed.
        const READ = 1 << 0;
        /// Bit 1, W: writes allowed.
        const WRITE = 1 << 1;
        /// Bit 2, X: instruction fetches allowed (supervisor-mode fetches when
        /// mode-based execute control is on).
        const EXECUTE = 1 << 2;
        /// Bits 5:3, the EPT memory type of a leaf (see [`MemoryType`]).
        const MEMORY_TYPE = 0b111 << 3;
        /// Bit 6, ignore PAT: the leaf's memory type wins over the guest's PAT.
        const IGNORE_PAT = 1 << 6;
        /// Bit 7: the entry maps a page (2 MiB in a PDE, 1 GiB in a PDPTE) instead of
        /// referencing a table.
        const LARGE_PAGE = 1 << 7;
        /// Bit 8, accessed (with EPTP bit 6).
        const ACCESSED = 1 << 8;
        /// Bit 9, dirty, of a leaf (with EPTP bit 6).
        const DIRTY = 1 << 9;
        /// Bit 10: user-mode instruction fetches allowed, with mode-based execute control
        /// (MBEC); ignored otherwise. The backend does not enable MBEC and keeps it clear.
        const USER_EXECUTE = 1 << 10;
        /// Bit 11, ignored by the CPU: the backend's mark that a leaf maps a frame. A leaf
        /// with no right is not present to the CPU, yet it still maps its frame (a view
        /// that denies every access to it), so the walk needs this bit to tell it apart
        /// from a hole.
        const MAPPED = 1 << 11;
        /// Bit 63: suppress #VE: an EPT violation of this leaf is a VM exit, never a #VE.
        const SUPPRESS_VE = 1 << 63;
    }
}

/// An EPT memory type (SDM Vol. 3C §29.3.7, Vol. 3A §12.3): the encoding of bits 5:3 of
/// a leaf and bits 2:0 of the EPTP. Values 2, 3 and 7 are reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum MemoryType {
    /// Uncacheable.
    Uncacheable = 0,
    /// Write combining.
    WriteCombining = 1,
    /// Write-through.
    WriteThrough = 4,
    /// Write-protected.
    WriteProtected = 5,
    /// Write-back.
    WriteBack = 6,
}

impl MemoryType {
    /// The type from its 3-bit encoding.
    ///
    /// # Errors
    /// [`EptError::ReservedMemoryType`] for 2, 3, 7 and anything above 7.
    pub const fn from_bits(bits: u8) -> Result<Self, EptError> {
        Ok(match bits {
            0 => Self::Uncacheable,
            1 => Self::WriteCombining,
            4 => Self::WriteThrough,
            5 => Self::WriteProtected,
            6 => Self::WriteBack,
            _ => return Err(EptError::ReservedMemoryType(bits)),
        })
    }
}

/// An EPT paging-structure entry (SDM Vol. 3C §29.3.2): the raw 64-bit word.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct EptEntry(pub u64);

impl fmt::Debug for EptEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EptEntry({:#x})", self.0)
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for EptEntry {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "EptEntry({=u64:#x})", self.0)
    }
}

impl EptEntry {
    /// The entry that maps nothing.
    pub const EMPTY: Self = Self(0);

    /// The flags, every bit kept.
    pub const fn flags(self) -> EptFlags {
        EptFlags::from_bits_retain(self.0)
    }

    /// Present: any of R, W, X is set (SDM Vol. 3C §29.3.2: an entry with bits 2:0 clear
    /// is not present). Execute-only entries are present.
    pub const fn is_present(self) -> bool {
        self.0 & 0b111 != 0
    }

    /// The R/W/X rights, as introvisor's [`MemoryAccess`].
    pub const fn access(self) -> MemoryAccess {
        MemoryAccess::from_bits_truncate((self.0 & 0b111) as u8)
    }

    /// Whether the entry is a leaf that maps a frame, present or not (R/W/X or the
    /// backend's [`EptFlags::MAPPED`] mark).
    pub const fn is_mapped(self) -> bool {
        self.is_present() || self.0 & EptFlags::MAPPED.bits() != 0
    }

    /// Bit 7: a large-page leaf (meaningful in PDEs and PDPTEs only).
    pub const fn is_large(self) -> bool {
        self.0 & EptFlags::LARGE_PAGE.bits() != 0
    }

    /// The physical address in bits 51:12 (a table's or a page's frame).
    pub const fn address(self) -> Hpa {
        Hpa(self.0 & ADDRESS_MASK)
    }

    /// The raw memory-type bits 5:3.
    pub const fn memory_type_bits(self) -> u8 {
        ((self.0 >> 3) & 0b111) as u8
    }

    /// An entry that references the next-level table at `table`, with every right (the
    /// leaves decide; SDM §29.3.2: the access rights of a translation are the
    /// intersection of all levels).
    pub const fn table(table: Hpa) -> Self {
        Self((table.0 & ADDRESS_MASK) | 0b111)
    }

    /// A leaf mapping `frame` at `level` (1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB) with `access`,
    /// `memory_type` and the extra `flags` given (IGNORE_PAT, SUPPRESS_VE, ...).
    ///
    /// # Errors
    /// [`EptError::WriteWithoutRead`] for W without R, [`EptError::WriteExecuteWithoutRead`]
    /// for W and X without R, [`EptError::ExecuteOnlyUnsupported`] for X alone when the
    /// capabilities lack bit 0, [`EptError::LargePageUnsupported`] for a level the
    /// capabilities cannot map, [`EptError::Misaligned`] for a frame not aligned to the
    /// leaf's size. A leaf with no right at all is allowed: it is not present.
    pub fn try_leaf(
        frame: Hpa,
        level: u8,
        access: MemoryAccess,
        memory_type: MemoryType,
        flags: EptFlags,
        caps: EptCapabilities,
    ) -> Result<Self, EptError> {
        check_access(access, caps)?;
        if !caps.leaf_at(level) {
            return Err(EptError::LargePageUnsupported(level));
        }
        let size = crate::table::level_size(level);
        // A level's size is a power of two from 4 KiB: one less cannot wrap.
        if frame.0 & size.wrapping_sub(1) != 0 || frame.0 & !ADDRESS_MASK != 0 {
            return Err(EptError::Misaligned(frame));
        }
        let extra = flags.bits() & (EptFlags::IGNORE_PAT.bits() | EptFlags::SUPPRESS_VE.bits());
        let large = if level > 1 {
            EptFlags::LARGE_PAGE.bits()
        } else {
            0
        };
        Ok(Self(
            frame.0
                | u64::from(access.bits() & 0b111)
                | (u64::from(memory_type as u8) << 3)
                | extra
                | large
                | EptFlags::MAPPED.bits(),
        ))
    }

    /// The same entry mapping `frame` instead (bits 51:12 replaced).
    pub const fn with_address(self, frame: Hpa) -> Self {
        Self((self.0 & !ADDRESS_MASK) | (frame.0 & ADDRESS_MASK))
    }

    /// The same entry with its rights replaced by `access` (unchecked: the caller checked
    /// `access` with [`check_access`]).
    pub const fn with_access(self, access: MemoryAccess) -> Self {
        Self((self.0 & !0b111) | (access.bits() & 0b111) as u64)
    }
}

/// Checks rights against the EPT misconfiguration rules (SDM Vol. 3C §29.3.3.1): W
/// requires R, and X alone requires the execute-only capability.
///
/// # Errors
/// [`EptError::WriteWithoutRead`], [`EptError::WriteExecuteWithoutRead`],
/// [`EptError::ExecuteOnlyUnsupported`].
pub const fn check_access(access: MemoryAccess, caps: EptCapabilities) -> Result<(), EptError> {
    let r = access.contains(MemoryAccess::R);
    let w = access.contains(MemoryAccess::W);
    let x = access.contains(MemoryAccess::X);
    match (r, w, x) {
        (false, true, false) => Err(EptError::WriteWithoutRead),
        (false, true, true) => Err(EptError::WriteExecuteWithoutRead),
        (false, false, true) if !caps.execute_only() => Err(EptError::ExecuteOnlyUnsupported),
        _ => Ok(()),
    }
}

/// The EPT pointer (SDM Vol. 3C §25.6.11, Table 25-9): the root of one hierarchy with
/// its memory type, walk length and A/D enable.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct EptPointer(pub u64);

impl fmt::Debug for EptPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EptPointer({:#x})", self.0)
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for EptPointer {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "EptPointer({=u64:#x})", self.0)
    }
}

impl EptPointer {
    /// An EPTP for the hierarchy rooted at `root` (bits 51:12), walking `levels` (4 or 5;
    /// bits 5:3 hold `levels - 1`), with the paging structures of `memory_type` (bits 2:0:
    /// only UC and WB are valid there) and A/D flags when `accessed_dirty` (bit 6).
    ///
    /// # Errors
    /// [`EptError::WalkLengthUnsupported`], [`EptError::MemoryTypeUnsupported`],
    /// [`EptError::AccessedDirtyUnsupported`] when `caps` lack them;
    /// [`EptError::Misaligned`] for a root not 4 KiB aligned.
    pub const fn try_new(
        root: Hpa,
        levels: u8,
        memory_type: MemoryType,
        accessed_dirty: bool,
        caps: EptCapabilities,
    ) -> Result<Self, EptError> {
        if !caps.walk_length(levels) {
            return Err(EptError::WalkLengthUnsupported(levels));
        }
        let type_ok = match memory_type {
            MemoryType::Uncacheable => caps.contains(EptCapabilities::MEMORY_TYPE_UC),
            MemoryType::WriteBack => caps.contains(EptCapabilities::MEMORY_TYPE_WB),
            _ => false,
        };
        if !type_ok {
            return Err(EptError::MemoryTypeUnsupported(memory_type as u8));
        }
        if accessed_dirty && !caps.contains(EptCapabilities::ACCESSED_DIRTY) {
            return Err(EptError::AccessedDirtyUnsupported);
        }
        if root.0 & !ADDRESS_MASK != 0 {
            return Err(EptError::Misaligned(root));
        }
        let ad = if accessed_dirty { 1 << 6 } else { 0 };
        // `walk_length` (checked first) accepts 4 and 5 only: `levels - 1` is 3 or 4.
        let length = (levels as u64).wrapping_sub(1);
        Ok(Self(root.0 | (length << 3) | (memory_type as u64) | ad))
    }

    /// The root table's address.
    pub const fn root(self) -> Hpa {
        Hpa(self.0 & ADDRESS_MASK)
    }

    /// The walk length: bits 5:3 plus one.
    #[expect(
        clippy::arithmetic_side_effects,
        reason = "bits 5:3 are at most 7: the sum is at most 8"
    )]
    pub const fn levels(self) -> u8 {
        (((self.0 >> 3) & 0b111) + 1) as u8
    }

    /// The raw memory-type bits 2:0.
    pub const fn memory_type_bits(self) -> u8 {
        (self.0 & 0b111) as u8
    }

    /// Bit 6: accessed and dirty flags enabled.
    pub const fn accessed_dirty(self) -> bool {
        self.0 & (1 << 6) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: EptCapabilities = EptCapabilities::typical();

    #[test]
    fn leaves_encode_the_sdm_bits() {
        let e = EptEntry::try_leaf(
            Hpa(0x1234_5000),
            1,
            MemoryAccess::RX,
            MemoryType::WriteBack,
            EptFlags::IGNORE_PAT | EptFlags::SUPPRESS_VE | EptFlags::DIRTY,
            CAPS,
        )
        .unwrap();
        // R=1, X=4, WB=6<<3, IPAT=1<<6, MAPPED=1<<11, suppress #VE=1<<63; DIRTY dropped.
        assert_eq!(
            e.0,
            0x8000_0000_1234_5000 | 0b101 | (6 << 3) | (1 << 6) | (1 << 11)
        );
        assert!(e.is_present() && e.is_mapped() && !e.is_large());
        assert_eq!(e.access(), MemoryAccess::RX);
        assert_eq!(e.memory_type_bits(), 6);
        assert_eq!(e.address(), Hpa(0x1234_5000));
        let big = EptEntry::try_leaf(
            Hpa(0x4000_0000),
            3,
            MemoryAccess::RWX,
            MemoryType::Uncacheable,
            EptFlags::empty(),
            CAPS,
        )
        .unwrap();
        assert_eq!(big.0, 0x4000_0000 | 0b111 | (1 << 7) | (1 << 11));
        assert!(big.is_large());
        // No rights: not present, but still mapped.
        let none = big.with_access(MemoryAccess::empty());
        assert!(!none.is_present() && none.is_mapped());
        assert_eq!(EptEntry::table(Hpa(0x7000)).0, 0x7007);
        assert_eq!(
            EptEntry(0xfff0_0000_0000_0fff).with_address(Hpa(0x5000)).0,
            0xfff0_0000_0000_5fff
        );
    }

    #[test]
    fn misconfigurations_are_refused_by_name() {
        let leaf = |a, caps| {
            EptEntry::try_leaf(
                Hpa(0x1000),
                1,
                a,
                MemoryType::WriteBack,
                EptFlags::empty(),
                caps,
            )
        };
        assert_eq!(leaf(MemoryAccess::W, CAPS), Err(EptError::WriteWithoutRead));
        assert_eq!(
            leaf(MemoryAccess::W | MemoryAccess::X, CAPS),
            Err(EptError::WriteExecuteWithoutRead)
        );
        assert!(leaf(MemoryAccess::X, CAPS).is_ok());
        let no_xo = CAPS.difference(EptCapabilities::EXECUTE_ONLY);
        assert_eq!(
            leaf(MemoryAccess::X, no_xo),
            Err(EptError::ExecuteOnlyUnsupported)
        );
        assert!(leaf(MemoryAccess::empty(), no_xo).is_ok());
        let no_1g = CAPS.difference(EptCapabilities::PAGE_1G);
        assert_eq!(
            EptEntry::try_leaf(
                Hpa(0x4000_0000),
                3,
                MemoryAccess::R,
                MemoryType::WriteBack,
                EptFlags::empty(),
                no_1g
            ),
            Err(EptError::LargePageUnsupported(3))
        );
        assert_eq!(
            EptEntry::try_leaf(
                Hpa(0x20_1000),
                2,
                MemoryAccess::R,
                MemoryType::WriteBack,
                EptFlags::empty(),
                CAPS
            ),
            Err(EptError::Misaligned(Hpa(0x20_1000)))
        );
        for reserved in [2u8, 3, 7, 8, 255] {
            assert_eq!(
                MemoryType::from_bits(reserved),
                Err(EptError::ReservedMemoryType(reserved))
            );
        }
        for (bits, t) in [
            (0, MemoryType::Uncacheable),
            (1, MemoryType::WriteCombining),
            (4, MemoryType::WriteThrough),
            (5, MemoryType::WriteProtected),
            (6, MemoryType::WriteBack),
        ] {
            assert_eq!(MemoryType::from_bits(bits), Ok(t));
        }
    }

    #[test]
    fn ept_pointers_follow_section_25_6_11() {
        let p = EptPointer::try_new(Hpa(0xabc_d000), 4, MemoryType::WriteBack, true, CAPS).unwrap();
        assert_eq!(p.0, 0xabc_d000 | 6 | (3 << 3) | (1 << 6));
        assert_eq!(
            (p.root(), p.levels(), p.memory_type_bits()),
            (Hpa(0xabc_d000), 4, 6)
        );
        assert!(p.accessed_dirty());
        assert_eq!(
            EptPointer::try_new(Hpa(0x1000), 5, MemoryType::WriteBack, false, CAPS),
            Err(EptError::WalkLengthUnsupported(5))
        );
        let five = CAPS.union(EptCapabilities::WALK_LENGTH_5);
        let p5 = EptPointer::try_new(Hpa(0x1000), 5, MemoryType::Uncacheable, false, five).unwrap();
        assert_eq!(p5.0, 0x1000 | (4 << 3));
        assert_eq!(
            EptPointer::try_new(Hpa(0x1000), 3, MemoryType::WriteBack, false, five),
            Err(EptError::WalkLengthUnsupported(3))
        );
        assert_eq!(
            EptPointer::try_new(Hpa(0x1000), 4, MemoryType::WriteThrough, false, CAPS),
            Err(EptError::MemoryTypeUnsupported(4))
        );
        let no_ad = CAPS.difference(EptCapabilities::ACCESSED_DIRTY);
        assert_eq!(
            EptPointer::try_new(Hpa(0x1000), 4, MemoryType::WriteBack, true, no_ad),
            Err(EptError::AccessedDirtyUnsupported)
        );
        assert_eq!(
            EptPointer::try_new(Hpa(0x1008), 4, MemoryType::WriteBack, false, CAPS),
            Err(EptError::Misaligned(Hpa(0x1008)))
        );
    }

    #[test]
    fn capabilities_decode_a_real_msr_value() {
        // IA32_VMX_EPT_VPID_CAP of a Skylake-SP (0x00000f0106734141): execute-only, walk
        // length 4, UC, WB, 2 MiB, 1 GiB, INVEPT (single and all), A/D, advanced info,
        // INVVPID of every type.
        let caps = EptCapabilities::from_msr(0x0000_0f01_0673_4141);
        assert!(caps.execute_only());
        assert!(caps.walk_length(4) && !caps.walk_length(5) && !caps.walk_length(6));
        assert!(caps.leaf_at(1) && caps.leaf_at(2) && caps.leaf_at(3) && !caps.leaf_at(4));
        assert!(caps.invept_single_context() && caps.invept_all_context());
        assert!(
            caps.contains(EptCapabilities::ACCESSED_DIRTY | EptCapabilities::ADVANCED_EXIT_INFO)
        );
        assert!(caps.contains(EptCapabilities::INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS));
        assert_eq!(caps.bits(), 0x0000_0f01_0673_4141);
        let bare = EptCapabilities::from_msr(1 << 6);
        assert!(!bare.leaf_at(2) && !bare.execute_only() && !bare.invept_all_context());
    }
}
