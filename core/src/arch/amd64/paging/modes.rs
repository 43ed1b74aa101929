//! The paging modes as data (SDM Vol. 3A §4.3 to §4.5): table geometry, the meaning of
//! bit 7 and the reserved bits of each level. The walker has no per-mode code paths
//! beyond what these descriptions say.

use super::PagingMode;

impl PagingMode {
    pub(super) const fn desc(self) -> &'static ModeDesc {
        match self {
            Self::Disabled => &DISABLED,
            Self::Bits32 => &BITS32,
            Self::Pae => &PAE,
            Self::Level4 => &LEVEL4,
            Self::Level5 => &LEVEL5,
        }
    }
}

/// What bit 7 of an entry means at one level of a mode.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Bit7 {
    /// Not a page-size bit: PAT in a 4 KiB PTE (Tables 4-6, 4-11, 4-20); in a PAE PDPTE,
    /// one of the reserved bits 8:5 that the level's fixed mask covers (Table 4-8).
    Other,
    /// Reserved: a PML5E or PML4E (Tables 4-14, 4-15).
    Reserved,
    /// PS: 1 maps a large page (PAE and 4/5-level PDE: Tables 4-9, 4-18).
    PageSize,
    /// PS when CR4.PSE = 1 (32-bit PDE, Table 4-4); ignored when CR4.PSE = 0 (Table 4-5).
    PageSizeWithPse,
    /// PS when the CPU has 1 GiB pages (CPUID 8000_0001H EDX bit 26, §4.1.4); reserved
    /// otherwise (4/5-level PDPTE, Tables 4-16 and 4-17).
    PageSizeWith1Gib,
}

/// A paging mode described as data: the walker has no per-mode code paths beyond what
/// these fields say. Arrays are indexed by level - 1 (level 1 is the PTE).
pub(super) struct ModeDesc {
    /// Number of levels.
    pub(super) levels: u8,
    /// Bytes per entry: 4 or 8.
    pub(super) entry_size: u8,
    /// Significant linear-address bits.
    pub(super) va_bits: u8,
    /// Linear-address bits that index the table of each level.
    pub(super) index_bits: [u8; 5],
    /// The meaning of bit 7 at each level.
    pub(super) bit7: [Bit7; 5],
    /// Whether R/W, U/S and XD exist at this level (all but the PAE PDPTE, Table 4-8).
    pub(super) rights: [bool; 5],
    /// Reserved bits that do not depend on MAXPHYADDR or on the entry's PS bit.
    pub(super) fixed_reserved: [u64; 5],
    /// 8-byte entries: bits MAXPHYADDR up to (not including) this one are reserved; 52 for
    /// 4/5-level paging, where bits 62:52 are ignored (or protection keys), 63 for PAE
    /// paging, where bits 62:M are reserved (Tables 4-8 to 4-11 and 4-14 to 4-20).
    /// Bit 63 is XD where `rights` holds and EFER.NXE = 1, and reserved everywhere else.
    pub(super) high_reserved_end: u8,
}

pub(super) const DISABLED: ModeDesc = ModeDesc {
    levels: 0,
    entry_size: 8,
    va_bits: 64,
    index_bits: [0; 5],
    bit7: [Bit7::Other; 5],
    rights: [false; 5],
    fixed_reserved: [0; 5],
    high_reserved_end: 52,
};
/// 32-bit paging (§4.3, Tables 4-4 to 4-6).
pub(super) const BITS32: ModeDesc = ModeDesc {
    levels: 2,
    entry_size: 4,
    va_bits: 32,
    index_bits: [10, 10, 0, 0, 0],
    bit7: [
        Bit7::Other,
        Bit7::PageSizeWithPse,
        Bit7::Other,
        Bit7::Other,
        Bit7::Other,
    ],
    rights: [true, true, false, false, false],
    fixed_reserved: [0; 5],
    high_reserved_end: 32,
};
/// PAE paging (§4.4, Tables 4-7 to 4-11).
pub(super) const PAE: ModeDesc = ModeDesc {
    levels: 3,
    entry_size: 8,
    va_bits: 32,
    index_bits: [9, 9, 2, 0, 0],
    bit7: [
        Bit7::Other,
        Bit7::PageSize,
        Bit7::Other,
        Bit7::Other,
        Bit7::Other,
    ],
    rights: [true, true, false, false, false],
    // PDPTE bits 2:1 and 8:5 (Table 4-8).
    fixed_reserved: [0, 0, 0x1e6, 0, 0],
    high_reserved_end: 63,
};
/// 4-level paging (§4.5, Tables 4-12 and 4-15 to 4-20).
pub(super) const LEVEL4: ModeDesc = ModeDesc {
    levels: 4,
    entry_size: 8,
    va_bits: 48,
    index_bits: [9, 9, 9, 9, 0],
    bit7: [
        Bit7::Other,
        Bit7::PageSize,
        Bit7::PageSizeWith1Gib,
        Bit7::Reserved,
        Bit7::Other,
    ],
    rights: [true, true, true, true, false],
    fixed_reserved: [0; 5],
    high_reserved_end: 52,
};
/// 5-level paging (§4.5, CR4.LA57, Tables 4-14 to 4-20).
pub(super) const LEVEL5: ModeDesc = ModeDesc {
    levels: 5,
    entry_size: 8,
    va_bits: 57,
    index_bits: [9, 9, 9, 9, 9],
    bit7: [
        Bit7::Other,
        Bit7::PageSize,
        Bit7::PageSizeWith1Gib,
        Bit7::Reserved,
        Bit7::Reserved,
    ],
    rights: [true; 5],
    fixed_reserved: [0; 5],
    high_reserved_end: 52,
};

/// The mask of bits `lo..hi` (empty when `hi <= lo`; `hi` at most 64).
pub(super) const fn bit_range(lo: u32, hi: u32) -> u64 {
    if hi <= lo || lo >= 64 {
        0
    } else {
        // `lo < hi < 64` where shifted: `1 << n` is not zero, so one less cannot wrap.
        let upper = if hi >= 64 {
            u64::MAX
        } else {
            (1u64 << hi).wrapping_sub(1)
        };
        upper & !(1u64 << lo).wrapping_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_range_masks() {
        assert_eq!(bit_range(13, 21), 0x001f_e000);
        assert_eq!(bit_range(13, 30), 0x3fff_e000);
        assert_eq!(bit_range(40, 52), 0x000f_ff00_0000_0000);
        assert_eq!(bit_range(52, 52), 0);
        assert_eq!(bit_range(36, 64), 0xffff_fff0_0000_0000);
        assert_eq!(bit_range(64, 64), 0);
    }
}
