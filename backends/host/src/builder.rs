//! [`GuestBuilder`]: lays out 4- or 5-level page tables and data in a buffer of guest
//! memory, and records every mapping it made, for tests, benchmarks and the demo.
//!
//! The builder writes entries in the format of the Intel SDM Vol. 3A §4.5 (Tables 4-15 to
//! 4-20) with its own code, independent of the walker in `introvisor`, so that tests can
//! hold one against the other.

use core::fmt;
use std::collections::BTreeMap;

use introvisor::{Pa, Va};

/// The size of a leaf page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PageSize {
    /// 4 KiB, mapped by a PTE.
    Size4K,
    /// 2 MiB, mapped by a PDE with PS = 1.
    Size2M,
    /// 1 GiB, mapped by a PDPTE with PS = 1.
    Size1G,
}

impl PageSize {
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Size4K => 1 << 12,
            Self::Size2M => 1 << 21,
            Self::Size1G => 1 << 30,
        }
    }

    /// The level of the leaf entry (1 = PTE).
    pub const fn level(self) -> u8 {
        match self {
            Self::Size4K => 1,
            Self::Size2M => 2,
            Self::Size1G => 3,
        }
    }
}

/// Rights of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MapFlags {
    /// R/W = 1.
    pub writable: bool,
    /// U/S = 1.
    pub user: bool,
    /// XD = 0.
    pub executable: bool,
}

impl MapFlags {
    /// Supervisor, read-write, not executable: kernel data.
    pub const KERNEL_DATA: Self = Self {
        writable: true,
        user: false,
        executable: false,
    };
    /// Supervisor, read-only, executable: kernel text.
    pub const KERNEL_TEXT: Self = Self {
        writable: false,
        user: false,
        executable: true,
    };
    /// User, read-write, not executable.
    pub const USER_DATA: Self = Self {
        writable: true,
        user: true,
        executable: false,
    };
}

impl Default for MapFlags {
    fn default() -> Self {
        Self::KERNEL_DATA
    }
}

/// One mapping the builder made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// The first virtual address (aligned to the page size).
    pub va: Va,
    /// The first physical address (aligned to the page size).
    pub pa: Pa,
    /// The page size.
    pub size: PageSize,
    /// The rights.
    pub flags: MapFlags,
}

/// Why the builder refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// The frame allocator ran past the end of memory.
    OutOfMemory,
    /// The address is not aligned to the page size.
    Misaligned,
    /// The virtual address is not canonical for the paging mode.
    NonCanonical,
    /// The range overlaps an earlier mapping (or the tables that serve one).
    Overlap(Va),
    /// A write went outside memory or to an unmapped virtual address.
    Unmapped(u64),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfMemory => f.write_str("guest memory exhausted"),
            Self::Misaligned => f.write_str("address not aligned to the page size"),
            Self::NonCanonical => f.write_str("non-canonical virtual address"),
            Self::Overlap(va) => write!(f, "mapping at {va} overlaps an earlier one"),
            Self::Unmapped(a) => write!(f, "address {a:#x} is not mapped"),
        }
    }
}

impl core::error::Error for BuildError {}

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const XD: u64 = 1 << 63;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Builds a guest: memory, page tables, data, and the record of what was mapped.
///
/// ```
/// use introvisor_host::builder::{GuestBuilder, MapFlags, PageSize};
/// use introvisor::Va;
///
/// let mut guest = GuestBuilder::new(16 << 20);
/// let pa = guest.map_new(Va(0xffff_8000_0000_0000), PageSize::Size4K, MapFlags::KERNEL_DATA)?;
/// guest.write_virtual(Va(0xffff_8000_0000_0010), b"hello\0")?;
/// assert_eq!(guest.lookup(Va(0xffff_8000_0000_0010)), Some(introvisor::Pa(pa.0 + 0x10)));
/// # Ok::<(), introvisor_host::builder::BuildError>(())
/// ```
pub struct GuestBuilder {
    memory: Vec<u8>,
    levels: u8,
    root: Pa,
    next_free: u64,
    mappings: BTreeMap<u64, Mapping>,
}

impl GuestBuilder {
    /// A 4-level guest with `size` bytes of zeroed memory; the PML4 takes the first frame.
    ///
    /// # Panics
    /// If `size` is smaller than one page (a programming error in a test, not guest data).
    pub fn new(size: usize) -> Self {
        Self::with_levels(size, 4)
    }

    /// A guest with 4- or 5-level paging.
    ///
    /// # Panics
    /// If `levels` is not 4 or 5, or `size` is smaller than one page.
    pub fn with_levels(size: usize, levels: u8) -> Self {
        assert!(levels == 4 || levels == 5, "levels must be 4 or 5");
        assert!(size >= 4096, "guest memory must hold at least one page");
        let mut builder = Self {
            memory: vec![0; size],
            levels,
            root: Pa(0),
            next_free: 0,
            mappings: BTreeMap::new(),
        };
        builder.root = builder.alloc(4096, 4096).unwrap_or(Pa(0));
        builder
    }

    /// The root of the page tables (the CR3 value, with no flag bits).
    pub fn root(&self) -> Pa {
        self.root
    }

    /// 4 or 5.
    pub fn levels(&self) -> u8 {
        self.levels
    }

    /// The memory size in bytes.
    pub fn memory_size(&self) -> u64 {
        self.memory.len() as u64
    }

    /// Every mapping made, in virtual-address order.
    pub fn mappings(&self) -> impl Iterator<Item = &Mapping> + '_ {
        self.mappings.values()
    }

    /// The number of mappings.
    pub fn mapping_count(&self) -> usize {
        self.mappings.len()
    }

    /// The physical address `va` maps to, by the builder's record (not by walking).
    pub fn lookup(&self, va: Va) -> Option<Pa> {
        self.mapping_of(va).map(|m| Pa(m.pa.0 + (va.0 - m.va.0)))
    }

    /// The mapping that holds `va`, by the builder's record.
    pub fn mapping_of(&self, va: Va) -> Option<&Mapping> {
        let (_, m) = self.mappings.range(..=va.0).next_back()?;
        (va.0 - m.va.0 < m.size.bytes()).then_some(m)
    }

    /// Reserves `bytes` of zeroed memory aligned to `align` (a power of two) from the
    /// builder's bump allocator, which also serves page tables.
    ///
    /// # Errors
    /// [`BuildError::OutOfMemory`].
    pub fn alloc(&mut self, bytes: u64, align: u64) -> Result<Pa, BuildError> {
        let start = self
            .next_free
            .checked_next_multiple_of(align.max(1))
            .ok_or(BuildError::OutOfMemory)?;
        let end = start.checked_add(bytes).ok_or(BuildError::OutOfMemory)?;
        if end > self.memory_size() {
            return Err(BuildError::OutOfMemory);
        }
        self.next_free = end;
        Ok(Pa(start))
    }

    /// Moves the bump allocator to `pa` (to leave a region for `map` at fixed addresses).
    pub fn set_next_free(&mut self, pa: Pa) {
        self.next_free = pa.0;
    }

    fn canonical(&self, va: Va) -> bool {
        let bits = if self.levels == 5 { 57 } else { 48 };
        let shifted = (va.0 as i64) << (64 - bits);
        (shifted >> (64 - bits)) as u64 == va.0
    }

    fn entry(&self, pa: u64) -> u64 {
        let i = pa as usize;
        self.memory
            .get(i..i + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    }

    fn set_entry(&mut self, pa: u64, value: u64) {
        let i = pa as usize;
        if let Some(b) = self.memory.get_mut(i..i + 8) {
            b.copy_from_slice(&value.to_le_bytes());
        }
    }

    /// Maps `va` to `pa` with one leaf of `size`, creating intermediate tables as needed
    /// (they allow everything, so the leaf's flags are the effective rights). `pa` may lie
    /// outside memory: the walk still succeeds, reads of the data then fail.
    ///
    /// # Errors
    /// Misaligned or non-canonical addresses, overlaps, or no memory for a table.
    pub fn map(
        &mut self,
        va: Va,
        pa: Pa,
        size: PageSize,
        flags: MapFlags,
    ) -> Result<(), BuildError> {
        let bytes = size.bytes();
        if !va.0.is_multiple_of(bytes) || !pa.0.is_multiple_of(bytes) {
            return Err(BuildError::Misaligned);
        }
        if !self.canonical(va) {
            return Err(BuildError::NonCanonical);
        }
        let mut table = self.root.0;
        let mut level = self.levels;
        while level > size.level() {
            let shift = 12 + 9 * u32::from(level - 1);
            let slot = table + ((va.0 >> shift) & 0x1ff) * 8;
            let entry = self.entry(slot);
            if entry & P == 0 {
                let new = self.alloc(4096, 4096)?;
                self.set_entry(slot, new.0 | P | RW | US);
                table = new.0;
            } else if entry & PS != 0 && level <= 3 {
                return Err(BuildError::Overlap(va));
            } else {
                table = entry & ADDR;
            }
            level -= 1;
        }
        let shift = 12 + 9 * u32::from(level - 1);
        let slot = table + ((va.0 >> shift) & 0x1ff) * 8;
        if self.entry(slot) & P != 0 {
            return Err(BuildError::Overlap(va));
        }
        let mut value = pa.0 | P;
        if flags.writable {
            value |= RW;
        }
        if flags.user {
            value |= US;
        }
        if !flags.executable {
            value |= XD;
        }
        if size != PageSize::Size4K {
            value |= PS;
        }
        self.set_entry(slot, value);
        self.mappings.insert(
            va.0,
            Mapping {
                va,
                pa,
                size,
                flags,
            },
        );
        Ok(())
    }

    /// Allocates a fresh, aligned frame of `size` and maps `va` to it; returns its address.
    ///
    /// # Errors
    /// As [`GuestBuilder::alloc`] and [`GuestBuilder::map`].
    pub fn map_new(&mut self, va: Va, size: PageSize, flags: MapFlags) -> Result<Pa, BuildError> {
        let pa = self.alloc(size.bytes(), size.bytes())?;
        self.map(va, pa, size, flags)?;
        Ok(pa)
    }

    /// Maps `len` bytes from `va` with fresh 4 KiB frames (`va` rounded down, the end
    /// rounded up); returns the number of pages mapped. The range may end exactly at
    /// 2^64 (the last page of the address space).
    ///
    /// The range is checked before anything is mapped: one that runs past 2^64, or has a
    /// page that is not canonical (in the hole between the halves), that overlaps an
    /// earlier mapping, or that needs more frames than memory has left, maps nothing.
    /// Only running out of memory for a page table can stop it part-way.
    ///
    /// # Errors
    /// [`BuildError::NonCanonical`] for a range past 2^64 or across the non-canonical
    /// hole; [`BuildError::Overlap`]; [`BuildError::OutOfMemory`]; as
    /// [`GuestBuilder::map_new`].
    pub fn map_range(&mut self, va: Va, len: u64, flags: MapFlags) -> Result<u64, BuildError> {
        let Some(last) = len.checked_sub(1) else {
            return Ok(0);
        };
        let last = va.0.checked_add(last).ok_or(BuildError::NonCanonical)?;
        let first_page = va.0 & !0xfff;
        let last_page = last & !0xfff;
        // Canonical addresses are two runs, one in each half: a range whose ends are both
        // canonical and in the same half (bit 63) has only canonical pages.
        if !self.canonical(Va(first_page))
            || !self.canonical(Va(last_page))
            || (first_page ^ last_page) >> 63 != 0
        {
            return Err(BuildError::NonCanonical);
        }
        if let Some(m) = self.mapping_of(Va(first_page)).or_else(|| {
            self.mappings
                .range(first_page..=last_page)
                .next()
                .map(|(_, m)| m)
        }) {
            return Err(BuildError::Overlap(m.va));
        }
        // last_page >= first_page, both multiples of 4096: at most 2^52 pages.
        let count = ((last_page - first_page) >> 12) + 1;
        let free = self
            .memory_size()
            .saturating_sub(self.next_free.next_multiple_of(4096));
        if count > free / 4096 {
            return Err(BuildError::OutOfMemory);
        }
        let mut page = first_page;
        for i in 0..count {
            if i > 0 {
                // Below last_page, so no overflow.
                page += 4096;
            }
            self.map_new(Va(page), PageSize::Size4K, flags)?;
        }
        Ok(count)
    }

    /// Writes bytes at a physical address.
    ///
    /// # Errors
    /// [`BuildError::Unmapped`] if the range leaves memory.
    pub fn write_physical(&mut self, pa: Pa, data: &[u8]) -> Result<(), BuildError> {
        let start = usize::try_from(pa.0).map_err(|_| BuildError::Unmapped(pa.0))?;
        let dst = start
            .checked_add(data.len())
            .and_then(|end| self.memory.get_mut(start..end))
            .ok_or(BuildError::Unmapped(pa.0))?;
        dst.copy_from_slice(data);
        Ok(())
    }

    /// Writes bytes at a virtual address, through the builder's record of its mappings,
    /// page by page.
    ///
    /// # Errors
    /// [`BuildError::Unmapped`] at the first byte that is not mapped or not in memory.
    pub fn write_virtual(&mut self, va: Va, data: &[u8]) -> Result<(), BuildError> {
        let mut done = 0usize;
        while done < data.len() {
            let at = va.0.wrapping_add(done as u64);
            let chunk = ((4096 - (at & 0xfff)) as usize).min(data.len() - done);
            let pa = self.lookup(Va(at)).ok_or(BuildError::Unmapped(at))?;
            self.write_physical(pa, &data[done..done + chunk])?;
            done += chunk;
        }
        Ok(())
    }

    /// The memory so far (read-only).
    pub fn memory(&self) -> &[u8] {
        &self.memory
    }

    /// Finishes: the memory and the record.
    pub fn finish(self) -> Guest {
        Guest {
            root: self.root,
            levels: self.levels,
            mappings: self.mappings.into_values().collect(),
            memory: self.memory,
        }
    }
}

/// A finished guest: its memory, its page-table root, and what was mapped.
pub struct Guest {
    /// Guest-physical memory from address 0.
    pub memory: Vec<u8>,
    /// The page-table root.
    pub root: Pa,
    /// 4 or 5.
    pub levels: u8,
    /// Every mapping, in virtual-address order.
    pub mappings: Vec<Mapping>,
}

impl Guest {
    /// The physical address `va` maps to, by the record.
    pub fn lookup(&self, va: Va) -> Option<Pa> {
        let i = self
            .mappings
            .partition_point(|m| m.va.0 <= va.0)
            .checked_sub(1)?;
        let m = self.mappings.get(i)?;
        (va.0 - m.va.0 < m.size.bytes()).then(|| Pa(m.pa.0 + (va.0 - m.va.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A range at the top of the address space, or across the non-canonical hole, is
    /// refused before anything is mapped (issue 13, item 11).
    #[test]
    fn map_range_refuses_before_mapping_anything() {
        for (va, len) in [
            (0xffff_ffff_ffff_f000, 0x1001), // past 2^64
            (0xffff_ffff_ffff_ffff, 2),      // past 2^64 from the last byte
            (0x7fff_ffff_e000, 0x3000),      // from the low half into the hole
            (0xffff_7fff_ffff_f000, 0x2000), // from the hole into the high half
            (0x0000_8000_0000_0000, 1),      // inside the hole
        ] {
            let mut b = GuestBuilder::new(64 << 10);
            let free = b.alloc(0, 1).unwrap();
            let before = b.memory().to_vec();
            assert!(
                b.map_range(Va(va), len, MapFlags::KERNEL_DATA).is_err(),
                "{va:#x}+{len:#x}"
            );
            assert_eq!(b.mapping_count(), 0, "{va:#x}+{len:#x}");
            assert!(
                b.memory() == &before[..],
                "{va:#x}+{len:#x}: tables written"
            );
            assert_eq!(
                b.alloc(0, 1).unwrap(),
                free,
                "{va:#x}+{len:#x}: frames taken"
            );
        }
        // The last page of the address space maps, however the range ends in it.
        for levels in [4, 5] {
            for (va, len) in [
                (0xffff_ffff_ffff_f000, 0xfff),
                (0xffff_ffff_ffff_f000, 0x1000),
                (0xffff_ffff_ffff_f800, 0x800),
                (0xffff_ffff_ffff_ffff, 1),
            ] {
                let mut b = GuestBuilder::with_levels(64 << 10, levels);
                assert_eq!(
                    b.map_range(Va(va), len, MapFlags::KERNEL_DATA),
                    Ok(1),
                    "{levels}: {va:#x}+{len:#x}"
                );
                assert_eq!(b.mapping_count(), 1);
                assert!(b.lookup(Va(u64::MAX)).is_some());
                assert!(b.lookup(Va(0)).is_none());
            }
        }
        let mut b = GuestBuilder::new(64 << 10);
        assert_eq!(
            b.map_range(Va(0xffff_ffff_ffff_e800), 0x1000, MapFlags::KERNEL_DATA),
            Ok(2)
        );
        assert_eq!(b.map_range(Va(0x1000), 0, MapFlags::KERNEL_DATA), Ok(0));
    }
}
