//! A page-table entry and its names: [`PageTableEntry`], [`EntryFlags`], [`TableIndex`],
//! and the SDM's name of each level ([`level_name`]) and bit ([`EntryNames`]).
//!
//! References: Intel SDM Vol. 3A §4.3 to §4.5, Tables 4-4 to 4-20 (entry formats), and
//! Figures 4-2, 4-5, 4-8 and 4-9 (which linear-address bits index each level).

use core::fmt;

use super::PagingMode;
use crate::addr::Va;

bitflags::bitflags! {
    /// The named bits of a page-table entry, by the SDM's names (Vol. 3A §4.5, Tables 4-14
    /// to 4-20; §4.3 and §4.4 for 32-bit and PAE entries). Address and reserved bits are
    /// kept as they are (`from_bits_retain`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct EntryFlags: u64 {
        /// Bit 0, P: the entry maps a page or references a table.
        const PRESENT = 1 << 0;
        /// Bit 1, R/W: writes allowed (combined with CR0.WP for supervisor writes).
        const WRITABLE = 1 << 1;
        /// Bit 2, U/S: user-mode accesses allowed.
        const USER = 1 << 2;
        /// Bit 3, PWT: page-level write-through.
        const WRITE_THROUGH = 1 << 3;
        /// Bit 4, PCD: page-level cache disable.
        const CACHE_DISABLE = 1 << 4;
        /// Bit 5, A: accessed.
        const ACCESSED = 1 << 5;
        /// Bit 6, D: dirty (leaf entries).
        const DIRTY = 1 << 6;
        /// Bit 7, PS/PAT: in a PDE or PDPTE, PS (the entry maps a large page); PAT in a
        /// 4 KiB PTE; reserved in a PML4E/PML5E, and in a PDPTE without 1 GiB pages.
        const PAGE_SIZE = 1 << 7;
        /// Bit 8, G: global (leaf entries).
        const GLOBAL = 1 << 8;
        /// Bit 12, PAT, in a large-page leaf (bit 7 in a 4 KiB PTE).
        const LARGE_PAT = 1 << 12;
        /// Bits 62:59, PK: the protection key of a 4/5-level leaf when CR4.PKE or CR4.PKS
        /// is set; ignored otherwise (Tables 4-17, 4-19, 4-20). The walker ignores them.
        const PROTECTION_KEY = 0xf << 59;
        /// Bit 63, XD: instruction fetches not allowed (when EFER.NXE = 1; reserved otherwise).
        const EXECUTE_DISABLE = 1 << 63;
    }
}

/// One page-table entry, as the raw word the guest wrote (4-byte entries of 32-bit
/// paging zero-extended). Every bit is kept: [`PageTableEntry::flags`] retains the
/// address and reserved bits as well as the named ones.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct PageTableEntry(u64);

impl PageTableEntry {
    /// The entry whose raw value is `raw`.
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Whether every bit is zero (an entry never written).
    pub const fn is_unused(self) -> bool {
        self.0 == 0
    }

    /// The bits, named where the SDM names them; the others retained.
    pub const fn flags(self) -> EntryFlags {
        EntryFlags::from_bits_retain(self.0)
    }

    /// Bit 0, P.
    pub const fn is_present(self) -> bool {
        self.0 & EntryFlags::PRESENT.bits() != 0
    }

    /// Whether bit 7 is PS with PS set, at a level where it may map a large page: a PDE
    /// in any mode (a 32-bit PDE only under CR4.PSE, which this does not know), a PDPTE
    /// in 4/5-level paging (only on a CPU with 1 GiB pages). Elsewhere bit 7 is PAT (a
    /// PTE) or reserved (a PAE PDPTE, a PML4E, a PML5E).
    pub const fn is_large(self, mode: PagingMode, level: u8) -> bool {
        let may_map = match (mode, level) {
            (PagingMode::Disabled, _) => false,
            (_, 2) => true,
            (PagingMode::Level4 | PagingMode::Level5, 3) => true,
            _ => false,
        };
        may_map && self.0 & EntryFlags::PAGE_SIZE.bits() != 0
    }

    /// Bits 62:59, the protection key, in a 4/5-level leaf (`None` elsewhere).
    pub const fn protection_key(self, mode: PagingMode, level: u8) -> Option<u8> {
        let long = matches!(mode, PagingMode::Level4 | PagingMode::Level5);
        if long && (level == 1 || self.is_large(mode, level)) {
            Some(((self.0 >> 59) & 0xf) as u8)
        } else {
            None
        }
    }

    /// The set bits by the SDM's names, for this entry at `level` of `mode`.
    pub const fn names(self, mode: PagingMode, level: u8) -> EntryNames {
        EntryNames {
            entry: self,
            mode,
            level,
        }
    }
}

impl fmt::Debug for PageTableEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageTableEntry({:#x})", self.0)
    }
}

impl From<u64> for PageTableEntry {
    fn from(raw: u64) -> Self {
        Self(raw)
    }
}

/// The set bits of an entry by the SDM's names, space-separated: `P RW US PWT PCD A D`,
/// then `PS` (`PAT` in a PTE), `G`, `PAT` (bit 12, in a large leaf), `PK=<key>` (a
/// nonzero protection key, in a 4/5-level leaf), and `XD` (8-byte entries). What
/// `introvisor translate --verbose` prints after each entry.
///
/// # Examples
/// ```
/// use introvisor::arch::amd64::{PageTableEntry, PagingMode};
///
/// let pde = PageTableEntry::new(0x8000_0000_0020_10e3); // a 2 MiB leaf, PAT bit set
/// assert_eq!(pde.names(PagingMode::Level4, 2).to_string(), "P RW A D PS PAT XD");
/// let pte = PageTableEntry::new(0x1000_0000_0000_5085);
/// assert_eq!(pte.names(PagingMode::Level4, 1).to_string(), "P US PAT PK=2");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryNames {
    entry: PageTableEntry,
    mode: PagingMode,
    level: u8,
}

impl fmt::Display for EntryNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.entry.raw();
        let large = self.entry.is_large(self.mode, self.level);
        let bit7 = if self.level == 1 { "PAT" } else { "PS" };
        let named: [(u64, &str); 10] = [
            (EntryFlags::PRESENT.bits(), "P"),
            (EntryFlags::WRITABLE.bits(), "RW"),
            (EntryFlags::USER.bits(), "US"),
            (EntryFlags::WRITE_THROUGH.bits(), "PWT"),
            (EntryFlags::CACHE_DISABLE.bits(), "PCD"),
            (EntryFlags::ACCESSED.bits(), "A"),
            (EntryFlags::DIRTY.bits(), "D"),
            (EntryFlags::PAGE_SIZE.bits(), bit7),
            (EntryFlags::GLOBAL.bits(), "G"),
            (
                if large {
                    EntryFlags::LARGE_PAT.bits()
                } else {
                    0
                },
                "PAT",
            ),
        ];
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| -> fmt::Result {
            if !core::mem::take(&mut first) {
                f.write_str(" ")?;
            }
            Ok(())
        };
        for (bit, name) in named {
            if value & bit != 0 {
                sep(f)?;
                f.write_str(name)?;
            }
        }
        if let Some(key @ 1..) = self.entry.protection_key(self.mode, self.level) {
            sep(f)?;
            write!(f, "PK={key}")?;
        }
        if self.mode != PagingMode::Bits32 && value & EntryFlags::EXECUTE_DISABLE.bits() != 0 {
            sep(f)?;
            f.write_str("XD")?;
        }
        Ok(())
    }
}

/// The SDM's name of the entries at `level` (1 for the page table) of `mode`: `PTE`,
/// `PDE`, `PDPTE`, `PML4E`, `PML5E`; `entry` for a level the mode does not have.
pub const fn level_name(mode: PagingMode, level: u8) -> &'static str {
    match (mode, level) {
        (_, 1) => "PTE",
        (_, 2) => "PDE",
        (PagingMode::Pae | PagingMode::Level4 | PagingMode::Level5, 3) => "PDPTE",
        (_, 4) => "PML4E",
        (_, 5) => "PML5E",
        _ => "entry",
    }
}

impl PagingMode {
    /// The index of `va`'s entry in its table at `level` (1 for the page table): bits
    /// 21:12 or 31:22 in 32-bit paging (0..1024), bits 31:30 for the PAE PDPTE (0..4),
    /// nine bits per level otherwise (0..512); 0 for a level the mode does not have.
    ///
    /// # Examples
    /// ```
    /// use introvisor::Va;
    /// use introvisor::arch::amd64::PagingMode;
    ///
    /// let va = Va(0xffff_ffff_8020_3000);
    /// assert_eq!(PagingMode::Level4.table_index(4, va), 511);
    /// assert_eq!(PagingMode::Level4.table_index(3, va), 510);
    /// assert_eq!(PagingMode::Bits32.table_index(2, Va(0xc040_0000)), 0x301);
    /// ```
    pub const fn table_index(self, level: u8, va: Va) -> u16 {
        let desc = self.desc();
        let [b1, b2, b3, b4, b5] = desc.index_bits;
        // The index widths are the constant mode tables' (at most 10 bits a level, 45 in
        // all): the sums and the shift stay far below 64, so wrapping never happens.
        let (below, bits) = match level {
            1 => (0, b1),
            2 => (b1, b2),
            3 => (b1.wrapping_add(b2), b3),
            4 => (b1.wrapping_add(b2).wrapping_add(b3), b4),
            5 => (b1.wrapping_add(b2).wrapping_add(b3).wrapping_add(b4), b5),
            _ => (0, 0),
        };
        if level > desc.levels {
            return 0;
        }
        let shift = 12u32.wrapping_add(below as u32);
        let bits = bits as u32;
        ((va.0 >> shift) & (1u64 << bits).wrapping_sub(1)) as u16
    }
}

/// The index of an entry in a table of 512 eight-byte entries (a PAE PD or PT, any 4/5-level
/// table): a number that can only be 0..512.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TableIndex(u16);

impl TableIndex {
    /// Entries in a table.
    pub const COUNT: u16 = 512;

    /// `index` modulo 512.
    pub const fn new_truncate(index: u16) -> Self {
        Self(index % Self::COUNT)
    }

    /// `index`, if it is below 512.
    pub const fn try_new(index: u16) -> Option<Self> {
        if index < Self::COUNT {
            Some(Self(index))
        } else {
            None
        }
    }

    /// The index of `va`'s entry at `level` (1 for the page table, up to 5) of 4/5-level
    /// paging: bits `12 + 9 * (level - 1)` and up, nine of them; 0 for level 0 or above 5.
    pub const fn of(va: Va, level: u8) -> Self {
        if level == 0 || level > 5 {
            return Self(0);
        }
        // `level` is 1..=5 here: the shift is 12..=48.
        let shift = 12u32.wrapping_add(9u32.wrapping_mul((level as u32).wrapping_sub(1)));
        Self::new_truncate((va.0 >> shift) as u16)
    }

    /// The index.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl From<TableIndex> for u16 {
    fn from(index: TableIndex) -> Self {
        index.0
    }
}

impl From<TableIndex> for usize {
    fn from(index: TableIndex) -> Self {
        usize::from(index.0)
    }
}

impl From<TableIndex> for u64 {
    fn from(index: TableIndex) -> Self {
        u64::from(index.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn table_index_holds_only_0_to_511() {
        assert_eq!(TableIndex::new_truncate(511).get(), 511);
        assert_eq!(TableIndex::new_truncate(512).get(), 0);
        assert_eq!(TableIndex::new_truncate(u16::MAX).get(), 511);
        assert_eq!(TableIndex::try_new(511).map(TableIndex::get), Some(511));
        assert_eq!(TableIndex::try_new(512), None);
        let va = Va(0xffff_ff7f_bfdf_e000 | 0x123);
        let idx: [u16; 5] = [1, 2, 3, 4, 5].map(|l| TableIndex::of(va, l).get());
        assert_eq!(idx, [0x1fe, 0x1fe, 0x1fe, 0x1fe, 0x1ff]);
        assert_eq!(TableIndex::of(va, 0).get(), 0);
        assert_eq!(TableIndex::of(va, 6).get(), 0);
        assert_eq!(usize::from(TableIndex::of(Va(0x20_1000), 2)), 1);
    }

    #[test]
    fn table_index_per_mode() {
        let va = Va(0xc060_3000);
        assert_eq!(PagingMode::Bits32.table_index(1, va), 0x203);
        assert_eq!(PagingMode::Bits32.table_index(2, va), 0x301);
        assert_eq!(PagingMode::Bits32.table_index(3, va), 0);
        assert_eq!(PagingMode::Pae.table_index(1, va), 0x003);
        assert_eq!(PagingMode::Pae.table_index(2, va), 0x003);
        assert_eq!(PagingMode::Pae.table_index(3, va), 3);
        assert_eq!(PagingMode::Disabled.table_index(1, va), 0);
        let high = Va(0xff5f_ffff_ffff_f000);
        assert_eq!(PagingMode::Level5.table_index(5, high), 0x15f);
        assert_eq!(PagingMode::Level4.table_index(5, high), 0);
        for level in 1..=5 {
            assert_eq!(
                PagingMode::Level5.table_index(level, high),
                TableIndex::of(high, level).get()
            );
        }
    }

    #[test]
    fn level_names() {
        let names = [1, 2, 3, 4, 5].map(|l| level_name(PagingMode::Level5, l));
        assert_eq!(names, ["PTE", "PDE", "PDPTE", "PML4E", "PML5E"]);
        assert_eq!(level_name(PagingMode::Pae, 3), "PDPTE");
        assert_eq!(level_name(PagingMode::Bits32, 3), "entry");
        assert_eq!(level_name(PagingMode::Level4, 0), "entry");
    }

    #[test]
    fn entry_bits_and_names() {
        // A 1 GiB leaf with a protection key, global, XD.
        let e = PageTableEntry::new(0x9800_0000_4000_1187);
        assert!(e.is_present() && e.is_large(PagingMode::Level4, 3));
        assert!(!e.is_large(PagingMode::Pae, 3));
        assert_eq!(e.protection_key(PagingMode::Level4, 3), Some(3));
        assert_eq!(e.protection_key(PagingMode::Level4, 4), None);
        assert!(
            e.flags()
                .contains(EntryFlags::GLOBAL | EntryFlags::LARGE_PAT)
        );
        // Reserved and address bits survive the flags.
        assert_eq!(e.flags().bits(), e.raw());
        assert_eq!(
            e.names(PagingMode::Level4, 3).to_string(),
            "P RW US PS G PAT PK=3 XD"
        );
        // The same word as a PML4E: bit 7 is named PS (reserved there), bit 12 is address.
        assert_eq!(
            e.names(PagingMode::Level4, 4).to_string(),
            "P RW US PS G XD"
        );
        // A table-referencing PDE: bit 12 is an address bit, not PAT.
        let pde = PageTableEntry::new(0x0000_0000_0003_1027);
        assert_eq!(pde.names(PagingMode::Level4, 2).to_string(), "P RW US A");
        // 32-bit paging: no XD, bit 63 cannot exist in a 4-byte entry anyway.
        let pte32 = PageTableEntry::new(0x0040_0001);
        assert_eq!(pte32.names(PagingMode::Bits32, 1).to_string(), "P");
        assert_eq!(
            PageTableEntry::new(0)
                .names(PagingMode::Level4, 1)
                .to_string(),
            ""
        );
        assert!(PageTableEntry::default().is_unused());
    }
}
