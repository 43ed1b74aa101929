//! AMD64 paging: the modes as data, one walker loop that reads them, and the access-rights
//! check that says whether an access would fault and with which error code.
//!
//! References: Intel SDM Vol. 3A, chapter 4 ("Paging"): §4.1.4 (the CPUID features that
//! matter: MAXPHYADDR, 1 GiB pages, PSE-36), §4.3 (32-bit paging), §4.4 (PAE paging), §4.5
//! (4-level and 5-level paging), §4.6 (access rights), §4.7 (page-fault exceptions), and
//! Tables 4-3 to 4-20 for the formats of CR3 and of every entry.
//!
//! # What the walk checks
//! - **The root** is CR3 bits 31:12 (32-bit, Table 4-3), 31:5 (PAE, Table 4-7) or M-1:12
//!   (4/5-level, Tables 4-12 and 4-13), M being MAXPHYADDR: the PCID (or PWT/PCD) in bits
//!   11:0, the no-flush bit 63 and the LAM bits 61 and 62 are not part of it.
//! - **The linear address** is checked before any memory is read: canonical for 48 or 57
//!   bits in 4/5-level paging, below 4 GiB in the 32-bit modes.
//! - **Present first**: an entry with P = 0 ends the walk as not present, whatever its
//!   other bits; reserved bits count only in a present entry (§4.7).
//! - **Reserved bits** (a [`ReservedBit`](crate::FaultReason::ReservedBit) fault):
//!   - address bits at or above M: 51:M in 4/5-level entries (62:52 are ignored), 62:M in
//!     PAE PDEs and PTEs, 63:M in a PAE PDPTE;
//!   - bit 63 (XD) when EFER.NXE = 0, and always in a PAE PDPTE;
//!   - PAE PDPTE bits 2:1 and 8:5 (Table 4-8);
//!   - PS (bit 7) in a PML5E or PML4E, and in a PDPTE when the CPU has no 1 GiB pages;
//!   - in a 2 MiB or 1 GiB leaf, bits 20:13 or 29:13, between the PAT bit 12 and the page
//!     base; neither they nor the PAT bit are part of the frame (Tables 4-9, 4-16, 4-18);
//!   - in a 32-bit 4 MiB leaf, bits 21:(M'-19), where M' = min(M, 40); bits (M'-20):13 are
//!     physical-address bits (M'-1):32 (PSE-36, Table 4-4). With CR4.PSE = 0, PS in a 32-bit
//!     PDE is ignored and the entry references a page table (Table 4-5).
//! - **Rights** combine over every level (§4.6.1): writable if R/W = 1 everywhere, user if
//!   U/S = 1 everywhere, executable unless XD = 1 somewhere with EFER.NXE = 1. The PAE PDPTE
//!   has no rights bits. [`Paging::check_access`] turns them into an answer for one access.
//!
//! Not modelled: protection keys (bits 62:59 are treated as ignored), the masking of
//! linear-address metadata by LAM before the canonical check, HLAT paging, shadow stacks.
//!
//! # Contract
//! For any page-table contents, any root and any virtual address, [`Amd64::translate`]
//! returns `Ok` or `Err` after reading at most one entry per level of the mode (at most
//! five): it never panics, never loops, and reads memory only through the [`PhysRead`] it
//! is given.
//!
//! [`Amd64::translate`]: crate::Architecture::translate

use crate::FaultReason;
use crate::access::MemoryAccess;
use crate::addr::{Pa, Va};
use crate::arch::{PhysRead, Translation, WalkStep, fault};
use crate::error::VmiError;

mod rights;

pub use rights::{Access, AccessKind, PfErrorCode, RightsPolicy};

/// The paging mode of a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PagingMode {
    /// CR0.PG = 0: linear addresses are physical addresses.
    Disabled,
    /// 32-bit paging (§4.3): 4-byte entries, 4 KiB pages, and 4 MiB pages under CR4.PSE.
    Bits32,
    /// PAE paging (§4.4): a 4-entry PDPT, 4 KiB and 2 MiB pages.
    Pae,
    /// 4-level paging (§4.5): 48-bit linear addresses, 4 KiB, 2 MiB and 1 GiB pages.
    #[default]
    Level4,
    /// 5-level paging (§4.5, CR4.LA57): 57-bit linear addresses.
    Level5,
}

impl PagingMode {
    /// The mode a vCPU is in, from CR0.PG (bit 31), CR4.PAE (bit 5), CR4.LA57 (bit 12)
    /// and EFER.LMA (bit 10) (SDM Vol. 3A §4.1.1, Table 4-1).
    pub const fn from_control_registers(cr0: u64, cr4: u64, efer: u64) -> Self {
        if cr0 & (1 << 31) == 0 {
            Self::Disabled
        } else if cr4 & (1 << 5) == 0 {
            Self::Bits32
        } else if efer & (1 << 10) == 0 {
            Self::Pae
        } else if cr4 & (1 << 12) != 0 {
            Self::Level5
        } else {
            Self::Level4
        }
    }

    /// The number of page-table levels (0 with paging disabled).
    pub const fn levels(self) -> u8 {
        self.desc().levels
    }

    /// The number of significant linear-address bits: 32, 48 or 57 (64 with paging off).
    pub const fn va_bits(self) -> u8 {
        self.desc().va_bits
    }

    /// Whether `va` is valid in this mode: canonical in 4- and 5-level paging, below
    /// 4 GiB in the 32-bit modes.
    pub const fn is_valid_va(self, va: Va) -> bool {
        let bits = self.desc().va_bits;
        match self {
            Self::Disabled => true,
            Self::Bits32 | Self::Pae => va.0 >> 32 == 0,
            Self::Level4 | Self::Level5 => {
                let shifted = (va.0 as i64) << (64 - bits as u32);
                (shifted >> (64 - bits as u32)) as u64 == va.0
            }
        }
    }

    const fn desc(self) -> &'static ModeDesc {
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
enum Bit7 {
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
struct ModeDesc {
    /// Number of levels.
    levels: u8,
    /// Bytes per entry: 4 or 8.
    entry_size: u8,
    /// Significant linear-address bits.
    va_bits: u8,
    /// Linear-address bits that index the table of each level.
    index_bits: [u8; 5],
    /// The meaning of bit 7 at each level.
    bit7: [Bit7; 5],
    /// Whether R/W, U/S and XD exist at this level (all but the PAE PDPTE, Table 4-8).
    rights: [bool; 5],
    /// Reserved bits that do not depend on MAXPHYADDR or on the entry's PS bit.
    fixed_reserved: [u64; 5],
    /// 8-byte entries: bits MAXPHYADDR up to (not including) this one are reserved; 52 for
    /// 4/5-level paging, where bits 62:52 are ignored (or protection keys), 63 for PAE
    /// paging, where bits 62:M are reserved (Tables 4-8 to 4-11 and 4-14 to 4-20).
    /// Bit 63 is XD where `rights` holds and EFER.NXE = 1, and reserved everywhere else.
    high_reserved_end: u8,
}

const DISABLED: ModeDesc = ModeDesc {
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
const BITS32: ModeDesc = ModeDesc {
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
const PAE: ModeDesc = ModeDesc {
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
const LEVEL4: ModeDesc = ModeDesc {
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
const LEVEL5: ModeDesc = ModeDesc {
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
const fn bit_range(lo: u32, hi: u32) -> u64 {
    if hi <= lo || lo >= 64 {
        0
    } else {
        let upper = if hi >= 64 { u64::MAX } else { (1u64 << hi) - 1 };
        upper & !((1u64 << lo) - 1)
    }
}

bitflags::bitflags! {
    /// The flag bits of a page-table entry that the walker uses (SDM Vol. 3A Tables 4-14
    /// to 4-20). Address and reserved bits are kept as they are (`from_bits_retain`).
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
        /// Bit 7, PS: the entry maps a large page (PDE, PDPTE); reserved in PML4E/PML5E,
        /// and in a PDPTE on a CPU without 1 GiB pages.
        const PAGE_SIZE = 1 << 7;
        /// Bit 8, G: global (leaf entries).
        const GLOBAL = 1 << 8;
        /// Bit 12, PAT, in a large-page leaf (bit 7 in a 4 KiB PTE).
        const LARGE_PAT = 1 << 12;
        /// Bit 63, XD: instruction fetches not allowed (when EFER.NXE = 1; reserved otherwise).
        const EXECUTE_DISABLE = 1 << 63;
    }
}

/// How to read a vCPU's page tables: the paging mode and the CPU features and control bits
/// that change what an entry means.
///
/// The defaults are those every 64-bit OS runs with: 4-level paging, MAXPHYADDR 52,
/// EFER.NXE = 1, CR4.PSE = 1, 1 GiB pages supported. Build one with [`Paging::new`] or
/// [`Paging::from_control_registers`] and adjust it with the `with_*` methods or the
/// fields; the struct is `#[non_exhaustive]` so that later CPU features (protection keys,
/// LAM) can join without breaking callers.
///
/// # Examples
/// ```
/// use introvisor::arch::amd64::{Paging, PagingMode};
///
/// // A PAE guest on a CPU with 36 physical-address bits, without NX enabled.
/// let paging = Paging::new(PagingMode::Pae).with_max_phys_addr(36).with_nxe(false);
/// assert_eq!(paging.mode, PagingMode::Pae);
/// assert!(!paging.nxe);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct Paging {
    /// The paging mode.
    pub mode: PagingMode,
    /// MAXPHYADDR, the physical-address width (CPUID 0x8000_0008, EAX bits 7:0, §4.1.4);
    /// clamped to 32..=52 by the walker. Address bits at or above it in a present entry
    /// are reserved. In 32-bit paging, 4 MiB pages use min(MAXPHYADDR, 40) bits (PSE-36,
    /// Table 4-4); a CPU without PSE-36 is described by MAXPHYADDR 32.
    pub max_phys_addr: u8,
    /// EFER.NXE: bit 63 of an entry is XD when set, reserved when clear (8-byte entries).
    pub nxe: bool,
    /// CR4.PSE: whether a 32-bit PDE with PS = 1 maps a 4 MiB page (ignored in the other
    /// modes, where PS always means a large page).
    pub pse: bool,
    /// Whether the CPU has 1 GiB pages (CPUID 0x8000_0001, EDX bit 26, §4.1.4). When clear,
    /// PS in a 4- or 5-level PDPTE is a reserved bit.
    pub page_1gb: bool,
    /// PAE only: the four PDPTEs as the processor holds them (§4.4.1; in the VMCS for a
    /// hypervisor). When `None`, they are read from memory at CR3 bits 31:5. Walk steps
    /// and faults name the PDPTE by its address in that table either way.
    pub pdptes: Option<[u64; 4]>,
}

impl Default for Paging {
    fn default() -> Self {
        Self::new(PagingMode::Level4)
    }
}

impl Paging {
    /// A mode with the defaults: MAXPHYADDR 52, NXE and PSE set, 1 GiB pages, PDPTEs from
    /// memory.
    pub const fn new(mode: PagingMode) -> Self {
        Self {
            mode,
            max_phys_addr: 52,
            nxe: true,
            pse: true,
            page_1gb: true,
            pdptes: None,
        }
    }

    /// The paging a vCPU uses, from its CR0, CR4 and EFER (mode, EFER.NXE bit 11,
    /// CR4.PSE bit 4), with MAXPHYADDR 52 and 1 GiB pages.
    pub const fn from_control_registers(cr0: u64, cr4: u64, efer: u64) -> Self {
        Self {
            mode: PagingMode::from_control_registers(cr0, cr4, efer),
            max_phys_addr: 52,
            nxe: efer & (1 << 11) != 0,
            pse: cr4 & (1 << 4) != 0,
            page_1gb: true,
            pdptes: None,
        }
    }

    /// The same paging with another mode.
    #[must_use]
    pub const fn with_mode(mut self, mode: PagingMode) -> Self {
        self.mode = mode;
        self
    }

    /// The same paging with another MAXPHYADDR (clamped to 32..=52 by the walker).
    #[must_use]
    pub const fn with_max_phys_addr(mut self, max_phys_addr: u8) -> Self {
        self.max_phys_addr = max_phys_addr;
        self
    }

    /// The same paging with EFER.NXE set or clear.
    #[must_use]
    pub const fn with_nxe(mut self, nxe: bool) -> Self {
        self.nxe = nxe;
        self
    }

    /// The same paging with CR4.PSE set or clear.
    #[must_use]
    pub const fn with_pse(mut self, pse: bool) -> Self {
        self.pse = pse;
        self
    }

    /// The same paging on a CPU with or without 1 GiB pages.
    #[must_use]
    pub const fn with_page_1gb(mut self, page_1gb: bool) -> Self {
        self.page_1gb = page_1gb;
        self
    }

    /// The same paging with the PAE PDPTEs supplied (or read from memory, with `None`).
    #[must_use]
    pub const fn with_pdptes(mut self, pdptes: Option<[u64; 4]>) -> Self {
        self.pdptes = pdptes;
        self
    }

    /// The physical address of the top-level table for a raw CR3 value: bits 31:12
    /// (32-bit, Table 4-3), 31:5 (PAE, Table 4-7) or MAXPHYADDR-1:12 (4- and 5-level,
    /// Tables 4-12 and 4-13), which drops the PCID or PWT/PCD in bits 11:0, the no-flush
    /// bit 63 (§4.10.4.1) and the LAM bits 61 and 62. CR3 bits between MAXPHYADDR and 60
    /// cannot be set on a real vCPU (MOV to CR3 faults), and are dropped too.
    ///
    /// # Examples
    /// ```
    /// use introvisor::Pa;
    /// use introvisor::arch::amd64::{Paging, PagingMode};
    ///
    /// let cr3 = Pa(0x8000_0000_0012_3abc); // no-flush bit, PCID 0xabc
    /// assert_eq!(Paging::new(PagingMode::Level4).root_table(cr3), Pa(0x12_3000));
    /// ```
    pub const fn root_table(&self, cr3: Pa) -> Pa {
        Pa(match self.mode {
            PagingMode::Disabled => 0,
            PagingMode::Bits32 => cr3.0 & 0xffff_f000,
            PagingMode::Pae => cr3.0 & 0xffff_ffe0,
            PagingMode::Level4 | PagingMode::Level5 => cr3.0 & self.phys_mask() & !0xfff,
        })
    }

    /// MAXPHYADDR clamped to 32..=52.
    pub(crate) const fn maxphy(&self) -> u32 {
        let m = self.max_phys_addr as u32;
        if m < 32 {
            32
        } else if m > 52 {
            52
        } else {
            m
        }
    }

    /// The physical-address width of a 32-bit 4 MiB page: min(MAXPHYADDR, 40) (Table 4-4).
    const fn maxphy_pse36(&self) -> u32 {
        let m = self.maxphy();
        if m > 40 { 40 } else { m }
    }

    /// Bits below MAXPHYADDR.
    const fn phys_mask(&self) -> u64 {
        (1u64 << self.maxphy()) - 1
    }
}

/// The walk itself; see the module documentation.
///
/// 4- and 5-level paging, by far the commonest, get a straight-line copy of the walk in
/// which the mode's description is a constant: every per-level lookup and mask folds at
/// compile time. The other modes run the same steps in a loop over their description.
#[inline]
pub(crate) fn walk(
    mem: &(impl PhysRead + ?Sized),
    paging: &Paging,
    va: Va,
    root: Pa,
    observe: impl FnMut(WalkStep),
) -> Result<Translation, VmiError> {
    match paging.mode {
        PagingMode::Level4 => walk_long::<4>(mem, paging, &LEVEL4, va, root, observe),
        PagingMode::Level5 => walk_long::<5>(mem, paging, &LEVEL5, va, root, observe),
        _ => walk_other(mem, paging, va, root, observe),
    }
}

/// 4- or 5-level paging (`LEVELS`, described by `desc`): the levels written out.
#[inline(always)]
fn walk_long<const LEVELS: u8>(
    mem: &(impl PhysRead + ?Sized),
    paging: &Paging,
    desc: &'static ModeDesc,
    va: Va,
    root: Pa,
    observe: impl FnMut(WalkStep),
) -> Result<Translation, VmiError> {
    let mut w = Walker::new(mem, paging, desc, va, root, observe)?;
    let mut table = paging.root_table(root);
    // The levels one after the other, not in a loop, so that each is compiled with its
    // level a constant. An entry the reader cannot read the fast way sends the rest of the
    // walk out of line (`finish`): the fast path never rejoins the slow one, so what the
    // reader loads once (its memory's bounds, say) stays loaded.
    macro_rules! level {
        ($level:expr) => {
            let (shift, _, entry) = w.locate($level, table);
            let Some(value) = w.mem.read_u64_fast(entry) else {
                return w.finish($level, table);
            };
            match w.check($level, shift, entry, value)? {
                Step::Table(next) => table = next,
                Step::Leaf(t) => return Ok(t),
            }
        };
    }
    if LEVELS == 5 {
        level!(5);
    }
    level!(4);
    level!(3);
    level!(2);
    level!(1);
    // Level 1 always maps a page; this is the bound made explicit.
    Err(fault(va, root, 0, table, 0, FaultReason::NotPresent))
}

/// Paging disabled, 32-bit and PAE paging: the steps in a loop over the mode's description.
#[inline(never)]
fn walk_other(
    mem: &(impl PhysRead + ?Sized),
    paging: &Paging,
    va: Va,
    root: Pa,
    observe: impl FnMut(WalkStep),
) -> Result<Translation, VmiError> {
    let desc = paging.mode.desc();
    if paging.mode == PagingMode::Disabled {
        if !paging.mode.is_valid_va(va) {
            return Err(fault(va, root, 0, Pa(0), 0, FaultReason::NonCanonical));
        }
        return Ok(Translation {
            pa: Pa(va.0),
            page_size: 1 << 12,
            access: MemoryAccess::RWX,
            user: true,
        });
    }
    let mut w = Walker::new(mem, paging, desc, va, root, observe)?;
    let mut table = paging.root_table(root);
    let mut level = desc.levels;
    // One iteration per level, top to bottom: bounded by the level count.
    for _ in 0..desc.levels {
        match w.step(level, table)? {
            Step::Leaf(t) => return Ok(t),
            Step::Table(next) => table = next,
        }
        level -= 1;
    }
    // Level 1 always returns above; this is the bound made explicit.
    Err(fault(va, root, level, table, 0, FaultReason::NotPresent))
}

/// [`fault`], out of line: failures are the rare path.
#[cold]
#[inline(never)]
fn cold_fault(va: Va, root: Pa, level: u8, entry: Pa, value: u64, reason: FaultReason) -> VmiError {
    fault(va, root, level, entry, value, reason)
}

/// An entry read through [`PhysRead::read_u64`] or [`PhysRead::read_u32`] (8 or 4 bytes,
/// `wide`), with a failure turned into the walk's error: the path a reader without
/// [`PhysRead::read_u64_fast`] takes, and every failing read. Out of line, and without the
/// walker's state, which so stays in registers.
#[inline(never)]
fn read_entry_slow(
    mem: &(impl PhysRead + ?Sized),
    wide: bool,
    va: Va,
    root: Pa,
    level: u8,
    entry: Pa,
) -> Result<u64, VmiError> {
    let read = if wide {
        mem.read_u64(entry)
    } else {
        mem.read_u32(entry).map(u64::from)
    };
    match read {
        Ok(value) => Ok(value),
        Err(VmiError::OutOfBounds(_) | VmiError::GfnNotPresent(_)) => {
            Err(fault(va, root, level, entry, 0, FaultReason::OutOfMemory))
        }
        Err(e) => Err(e),
    }
}

/// What one level of the walk found.
enum Step {
    /// A table to read next.
    Table(Pa),
    /// The translation, at a leaf.
    Leaf(Translation),
}

/// The state of one walk: what the paging says, computed once, and the rights combined so
/// far.
struct Walker<'a, M: PhysRead + ?Sized, F: FnMut(WalkStep)> {
    mem: &'a M,
    paging: &'a Paging,
    desc: &'static ModeDesc,
    va: Va,
    root: Pa,
    observe: F,
    /// Whether entries are 8 bytes wide.
    wide: bool,
    /// Bits below MAXPHYADDR.
    phys_mask: u64,
    /// The address bits of an entry that references a table.
    table_mask: u64,
    /// 8-byte entries: the reserved bits at or above MAXPHYADDR of a level with rights (bit
    /// 63 included unless EFER.NXE = 1).
    high_reserved: u64,
    /// 8-byte entries: the same for a level without rights (bit 63 always reserved).
    high_reserved_no_rights: u64,
    /// The AND of the entries read so far at levels with rights (R/W and U/S).
    rights_and: u64,
    /// The OR of the same entries (XD).
    rights_or: u64,
}

impl<'a, M: PhysRead + ?Sized, F: FnMut(WalkStep)> Walker<'a, M, F> {
    /// Checks the linear address, before any memory is read: a non-canonical linear
    /// address raises #GP or #SS, never a walk (SDM Vol. 1 §3.3.7.1, Vol. 3A §4.5).
    #[inline(always)]
    fn new(
        mem: &'a M,
        paging: &'a Paging,
        desc: &'static ModeDesc,
        va: Va,
        root: Pa,
        observe: F,
    ) -> Result<Self, VmiError> {
        if !paging.mode.is_valid_va(va) {
            return Err(fault(
                va,
                root,
                desc.levels,
                Pa(0),
                0,
                FaultReason::NonCanonical,
            ));
        }
        let maxphy = paging.maxphy();
        let phys_mask = paging.phys_mask();
        let wide = desc.entry_size == 8;
        let high = bit_range(maxphy, u32::from(desc.high_reserved_end));
        let xd = EntryFlags::EXECUTE_DISABLE.bits();
        Ok(Self {
            mem,
            paging,
            desc,
            va,
            root,
            observe,
            wide,
            phys_mask,
            table_mask: if wide {
                phys_mask & !0xfff
            } else {
                0xffff_f000
            },
            high_reserved: if paging.nxe { high } else { high | xd },
            high_reserved_no_rights: high | xd,
            rights_and: u64::MAX,
            rights_or: 0,
        })
    }

    /// The entry of `level` (1 for the PTE) at `entry`, index `index` in its table.
    #[inline(always)]
    fn read_entry(&self, level: u8, index: u64, entry: Pa) -> Result<u64, VmiError> {
        if let (PagingMode::Pae, 3, Some(pdptes)) = (self.paging.mode, level, self.paging.pdptes) {
            return Ok(pdptes.get(index as usize).copied().unwrap_or(0));
        }
        if self.wide
            && let Some(value) = self.mem.read_u64_fast(entry)
        {
            return Ok(value);
        }
        read_entry_slow(self.mem, self.wide, self.va, self.root, level, entry)
    }

    /// The shift of `level`'s index in the address (12 plus the index bits of the levels
    /// below), the index, and the address of the entry in `table`.
    #[inline(always)]
    fn locate(&self, level: u8, table: Pa) -> (u32, u64, Pa) {
        let desc = self.desc;
        let at = usize::from(level).saturating_sub(1);
        let shift = 12u32
            + desc
                .index_bits
                .iter()
                .take(at)
                .map(|&b| u32::from(b))
                .sum::<u32>();
        let bits = desc.index_bits.get(at).copied().unwrap_or(0);
        let index = (self.va.0 >> shift) & ((1u64 << bits) - 1);
        let entry = Pa(table.0.wrapping_add(index * u64::from(desc.entry_size)));
        (shift, index, entry)
    }

    /// One level: reads the entry that `table` holds for the address, checks it, and
    /// says where the walk goes next.
    #[inline(always)]
    fn step(&mut self, level: u8, table: Pa) -> Result<Step, VmiError> {
        let (shift, index, entry) = self.locate(level, table);
        let value = self.read_entry(level, index, entry)?;
        self.check(level, shift, entry, value)
    }

    /// The rest of a walk whose entry at `level` in `table` the reader could not read the
    /// fast way: that entry through [`read_entry_slow`] (for its value or its error), the
    /// levels below it with [`Walker::step`].
    #[inline(never)]
    fn finish(mut self, level: u8, table: Pa) -> Result<Translation, VmiError> {
        let (shift, _, entry) = self.locate(level, table);
        let value = read_entry_slow(self.mem, self.wide, self.va, self.root, level, entry)?;
        let mut table = match self.check(level, shift, entry, value)? {
            Step::Leaf(t) => return Ok(t),
            Step::Table(next) => next,
        };
        // At most four more levels: bounded by `level`.
        for below in (1..level).rev() {
            match self.step(below, table)? {
                Step::Leaf(t) => return Ok(t),
                Step::Table(next) => table = next,
            }
        }
        // Level 1 always maps a page; this is the bound made explicit.
        Err(fault(
            self.va,
            self.root,
            0,
            table,
            0,
            FaultReason::NotPresent,
        ))
    }

    /// Checks `value`, the entry of `level` at `entry` (`shift` as [`Walker::locate`]
    /// gives it), and says where the walk goes next.
    #[inline(always)]
    fn check(&mut self, level: u8, shift: u32, entry: Pa, value: u64) -> Result<Step, VmiError> {
        let desc = self.desc;
        let va = self.va;
        let at = usize::from(level).saturating_sub(1);
        (self.observe)(WalkStep {
            level,
            entry,
            value,
        });
        let paging = self.paging;
        let ps_bit = value & EntryFlags::PAGE_SIZE.bits() != 0;
        let has_rights = desc.rights.get(at).copied().unwrap_or(false);
        let (ps, ps_reserved) = match desc.bit7.get(at).copied().unwrap_or(Bit7::Other) {
            Bit7::Other => (false, false),
            Bit7::Reserved => (false, true),
            Bit7::PageSize => (ps_bit, false),
            Bit7::PageSizeWithPse => (ps_bit && paging.pse, false),
            Bit7::PageSizeWith1Gib => (ps_bit && paging.page_1gb, !paging.page_1gb),
        };
        let mut reserved = desc.fixed_reserved.get(at).copied().unwrap_or(0);
        if ps_reserved {
            reserved |= EntryFlags::PAGE_SIZE.bits();
        }
        if self.wide {
            reserved |= if has_rights {
                self.high_reserved
            } else {
                self.high_reserved_no_rights
            };
            if ps {
                // Between the PAT bit 12 and the page base: bits 20:13 of a 2 MiB leaf,
                // 29:13 of a 1 GiB leaf (Tables 4-9, 4-16, 4-18).
                reserved |= bit_range(13, shift);
            }
        } else if ps {
            // 4 MiB PDE (Table 4-4): bits 21:(M-19), M = min(MAXPHYADDR, 40).
            reserved |= bit_range(paging.maxphy_pse36() - 19, 22);
        }
        // One test for both ways an entry can stop the walk: P = 0, or a reserved bit set.
        // Reserved bits count only in a present entry (§4.7), so P decides which.
        let present = EntryFlags::PRESENT.bits();
        if (value ^ present) & (reserved | present) != 0 {
            let reason = if value & present == 0 {
                FaultReason::NotPresent
            } else {
                FaultReason::ReservedBit
            };
            return Err(self.fault(level, entry, value, reason));
        }

        // Rights combine over every level that has them (§4.6.1): kept as the AND and the
        // OR of those entries, and read at the leaf.
        if has_rights {
            self.rights_and &= value;
            self.rights_or |= value;
        }

        if level == 1 || ps {
            let page_size = 1u64 << shift;
            let base = if self.wide {
                // The frame bits only: not the PAT bit 12 of a large leaf, nor bit 63.
                value & self.phys_mask & !(page_size - 1)
            } else if ps {
                // PSE-36: PDE bits (M-20):13 are physical-address bits (M-1):32.
                let high = (value >> 13) & ((1u64 << (paging.maxphy_pse36() - 32)) - 1);
                (value & 0xffc0_0000) | (high << 32)
            } else {
                value & 0xffff_f000
            };
            // Writable if R/W = 1 and user if U/S = 1 at every level with rights;
            // executable unless XD = 1 at one of them with EFER.NXE = 1.
            // R/W is bit 1 of an entry and W bit 1 of the rights: the AND's bit is the
            // answer as it is, without a branch.
            const {
                assert!(EntryFlags::WRITABLE.bits() == MemoryAccess::W.bits() as u64);
            }
            let no_exec =
                self.wide && paging.nxe && self.rights_or & EntryFlags::EXECUTE_DISABLE.bits() != 0;
            let access = MemoryAccess::from_bits_retain(
                MemoryAccess::R.bits()
                    | (self.rights_and & EntryFlags::WRITABLE.bits()) as u8
                    | if no_exec { 0 } else { MemoryAccess::X.bits() },
            );
            return Ok(Step::Leaf(Translation {
                pa: Pa(base | (va.0 & (page_size - 1))),
                page_size,
                access,
                user: self.rights_and & EntryFlags::USER.bits() != 0,
            }));
        }
        Ok(Step::Table(Pa(value & self.table_mask)))
    }

    /// The error of a walk that stopped at `level`.
    #[inline(always)]
    fn fault(&self, level: u8, entry: Pa, value: u64, reason: FaultReason) -> VmiError {
        cold_fault(self.va, self.root, level, entry, value, reason)
    }
}

#[cfg(test)]
mod tests {
    //! Byte fixtures, one small set of tables per mode, each entry written out by hand.

    use super::*;
    use crate::PageFault;
    use crate::arch::Architecture;
    use crate::arch::amd64::Amd64;
    use std::vec;
    use std::vec::Vec;

    fn w32(mem: &mut [u8], at: u64, v: u32) {
        let at = at as usize;
        mem[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn w64(mem: &mut [u8], at: u64, v: u64) {
        let at = at as usize;
        mem[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// (level, entry address, value) of one walk step.
    type Step = (u8, u64, u64);

    fn walk_steps(
        mem: &[u8],
        paging: &Paging,
        va: u64,
        cr3: u64,
    ) -> (Result<Translation, VmiError>, Vec<Step>) {
        let mut steps = Vec::new();
        let r = Amd64::translate_observed(mem, paging, Va(va), Pa(cr3), |s| {
            steps.push((s.level, s.entry.0, s.value));
        });
        (r, steps)
    }

    fn pf(r: Result<Translation, VmiError>) -> (FaultReason, u8, u64) {
        match r {
            Err(VmiError::Translation(pf)) => (pf.reason, pf.level, pf.entry.0),
            other => panic!("expected a page fault, got {other:?}"),
        }
    }

    fn ok(r: Result<Translation, VmiError>) -> (u64, u64, MemoryAccess, bool) {
        let t = r.expect("translation");
        (t.pa.0, t.page_size, t.access, t.user)
    }

    /// A reader that must never be called.
    struct Untouchable;
    impl PhysRead for Untouchable {
        fn read_u64(&self, pa: Pa) -> Result<u64, VmiError> {
            panic!("read_u64({pa:?}) before the canonical check")
        }
        fn read_u32(&self, pa: Pa) -> Result<u32, VmiError> {
            panic!("read_u32({pa:?}) before the canonical check")
        }
    }

    #[test]
    fn bit_range_masks() {
        assert_eq!(bit_range(13, 21), 0x001f_e000);
        assert_eq!(bit_range(13, 30), 0x3fff_e000);
        assert_eq!(bit_range(40, 52), 0x000f_ff00_0000_0000);
        assert_eq!(bit_range(52, 52), 0);
        assert_eq!(bit_range(36, 64), 0xffff_fff0_0000_0000);
        assert_eq!(bit_range(64, 64), 0);
    }

    /// 32-bit paging: PD at 0x1000, a PT at 0x2000; a 4 MiB PSE-36 page at PDE 1.
    fn bits32_fixture() -> Vec<u8> {
        let mut m = vec![0u8; 0x3000];
        w32(&mut m, 0x1000, 0x2000 | 0x7); // PDE 0 -> PT, P|RW|US
        w32(&mut m, 0x2000 + 4, 0x0012_3000 | 0x1 | 0x4 | 0x180); // PTE 1: P|US, PAT, G
        // PDE 1: 4 MiB page at 0x5_0080_0000 (bits 20:13 = 0x05 are PA 39:32), P|RW|PS,
        // PAT bit 12 set (not part of the address).
        w32(&mut m, 0x1004, 0x0080_0000 | (0x05 << 13) | 0x1000 | 0x83);
        m
    }

    #[test]
    fn bits32_4k_page() {
        let m = bits32_fixture();
        let p = Paging::new(PagingMode::Bits32);
        // CR3 bits 3 and 4 (PWT, PCD) and 11:5 are not part of the root.
        let (r, steps) = walk_steps(&m, &p, 0x1abc, 0x1000 | 0x18);
        assert_eq!(ok(r), (0x12_3abc, 0x1000, MemoryAccess::RX, true));
        assert_eq!(
            steps,
            [(2, 0x1000, 0x2007), (1, 0x2004, 0x0012_3185)],
            "a PDE and a PTE, 4 bytes each"
        );
        // PTE 2 is empty: not present at level 1.
        assert_eq!(
            pf(Amd64::translate(&m[..], &p, Va(0x2000), Pa(0x1000))),
            (FaultReason::NotPresent, 1, 0x2008)
        );
        // Above 4 GiB is no 32-bit address.
        assert_eq!(
            pf(Amd64::translate(&Untouchable, &p, Va(1 << 32), Pa(0x1000))),
            (FaultReason::NonCanonical, 2, 0)
        );
    }

    #[test]
    fn bits32_4m_page_pse36() {
        let m = bits32_fixture();
        let va = 0x0040_0000 + 0x12_3456;
        for (maxphy, pa) in [
            (52, 0x5_0080_0000u64), // M' = 40: all of bits 20:13
            (40, 0x5_0080_0000),
            (36, 0x5_0080_0000), // 0x5 fits in bits 16:13
            (35, 0x5_0080_0000), // bits 15:13 = 0b101
        ] {
            let p = Paging::new(PagingMode::Bits32).with_max_phys_addr(maxphy);
            let (r, steps) = walk_steps(&m, &p, va, 0x1000);
            assert_eq!(
                ok(r),
                (pa + 0x12_3456, 0x40_0000, MemoryAccess::RWX, false),
                "MAXPHYADDR {maxphy}"
            );
            assert_eq!(steps.len(), 1);
        }
        // MAXPHYADDR 34: PDE bit 15 is reserved (21:15), and it is set.
        let p = Paging::new(PagingMode::Bits32).with_max_phys_addr(34);
        assert_eq!(
            pf(Amd64::translate(&m[..], &p, Va(va), Pa(0x1000))),
            (FaultReason::ReservedBit, 2, 0x1004)
        );
        // No PSE-36 (MAXPHYADDR 32): bits 21:13 reserved.
        let p = Paging::new(PagingMode::Bits32).with_max_phys_addr(32);
        assert_eq!(
            pf(Amd64::translate(&m[..], &p, Va(va), Pa(0x1000))).0,
            FaultReason::ReservedBit
        );
        // Bit 21 is reserved whatever MAXPHYADDR is.
        let mut m2 = m.clone();
        w32(&mut m2, 0x1004, 0x0080_0000 | (1 << 21) | 0x83);
        let p = Paging::new(PagingMode::Bits32);
        assert_eq!(
            pf(Amd64::translate(&m2[..], &p, Va(va), Pa(0x1000))),
            (FaultReason::ReservedBit, 2, 0x1004)
        );
        // CR4.PSE = 0: PS is ignored and the PDE references a "page table" at 0x80_b000
        // (bits 31:12, PAT and PSE-36 bits included), outside this memory.
        let p = Paging::new(PagingMode::Bits32).with_pse(false);
        assert_eq!(
            pf(Amd64::translate(&m[..], &p, Va(va), Pa(0x1000))),
            (FaultReason::OutOfMemory, 1, 0x0080_b000 + 0x123 * 4)
        );
    }

    /// PAE: PDPT at 0x1020 (32-byte aligned), PD at 0x2000, PT at 0x3000.
    fn pae_fixture() -> Vec<u8> {
        let mut m = vec![0u8; 0x4000];
        w64(&mut m, 0x1020 + 2 * 8, 0x2000 | 0x1 | 0x18); // PDPTE 2: P, PWT, PCD
        // PDE 1: 2 MiB page at 0x4_0000_0000, P|RW|US|PS, PAT (bit 12), XD.
        w64(&mut m, 0x2008, (1 << 63) | 0x4_0000_0000 | 0x1000 | 0x87);
        w64(&mut m, 0x2000, 0x3000 | 0x7); // PDE 0 -> PT
        w64(&mut m, 0x3000 + 5 * 8, 0x7_6543_2000 | 0x3); // PTE 5: P|RW, supervisor
        m
    }

    #[test]
    fn pae_pages_from_memory_and_supplied_pdptes() {
        let m = pae_fixture();
        let p = Paging::new(PagingMode::Pae);
        let va_2m = 0x8020_0000 + 0x1_2345;
        // CR3 bits 4:0 are not part of the PDPT address.
        let (r, steps) = walk_steps(&m, &p, va_2m, 0x1020 | 0x1f);
        assert_eq!(ok(r), (0x4_0001_2345, 0x20_0000, MemoryAccess::RW, true));
        assert_eq!(
            steps.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(),
            [(3, 0x1030), (2, 0x2008)]
        );
        let (r, steps) = walk_steps(&m, &p, 0x8000_5abc, 0x1020);
        assert_eq!(ok(r), (0x7_6543_2abc, 0x1000, MemoryAccess::RWX, false));
        assert_eq!(steps.len(), 3);
        // NXE = 0: bit 63 of the 2 MiB PDE is reserved.
        let p_nonx = p.with_nxe(false);
        assert_eq!(
            pf(Amd64::translate(&m[..], &p_nonx, Va(va_2m), Pa(0x1020))),
            (FaultReason::ReservedBit, 2, 0x2008)
        );
        // PDPTE 0 is empty.
        assert_eq!(
            pf(Amd64::translate(&m[..], &p, Va(0x1000), Pa(0x1020))),
            (FaultReason::NotPresent, 3, 0x1020)
        );

        // The same tables with the PDPTEs supplied, and the PDPT in memory wiped: the
        // walk must not read it.
        let mut wiped = m.clone();
        w64(&mut wiped, 0x1030, 0);
        let supplied = p.with_pdptes(Some([0, 0, 0x2001, 0]));
        let (r, steps) = walk_steps(&wiped, &supplied, va_2m, 0x1020);
        assert_eq!(ok(r).0, 0x4_0001_2345);
        assert_eq!(steps[0], (3, 0x1030, 0x2001));
        // And the memory PDPT is ignored even when it is valid.
        let none = p.with_pdptes(Some([0; 4]));
        assert_eq!(
            pf(Amd64::translate(&m[..], &none, Va(va_2m), Pa(0x1020))),
            (FaultReason::NotPresent, 3, 0x1030)
        );
    }

    #[test]
    fn pae_pdpte_reserved_bits() {
        let p = Paging::new(PagingMode::Pae).with_max_phys_addr(40);
        for bit in [1, 2, 5, 6, 7, 8, 40, 51, 62, 63] {
            let mut m = pae_fixture();
            w64(&mut m, 0x1030, 0x2001 | (1u64 << bit));
            assert_eq!(
                pf(Amd64::translate(&m[..], &p, Va(0x8000_5000), Pa(0x1020))),
                (FaultReason::ReservedBit, 3, 0x1030),
                "PDPTE bit {bit}"
            );
        }
        for bit in [3, 4, 9, 10, 11, 39] {
            let mut m = pae_fixture();
            w64(&mut m, 0x1030, 0x2001 | (1u64 << bit));
            let r = Amd64::translate(&m[..], &p, Va(0x8000_5000), Pa(0x1020));
            assert!(
                !matches!(r, Err(VmiError::Translation(PageFault { level: 3, .. }))),
                "PDPTE bit {bit} is not reserved: {r:?}"
            );
        }
    }

    /// 4-level: PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT at 0x4000.
    fn level4_fixture() -> Vec<u8> {
        let mut m = vec![0u8; 0x5000];
        // VA 0xffff_8000_0000_0000: PML4 index 256.
        w64(&mut m, 0x1000 + 256 * 8, 0x2000 | 0x3); // P|RW
        // PDPTE 1: a 1 GiB page at 0x80_4000_0000 with PAT (bit 12), XD, P|RW|US|PS.
        w64(&mut m, 0x2008, (1 << 63) | 0x80_4000_0000 | 0x1000 | 0x87);
        w64(&mut m, 0x2000, 0x3000 | 0x7); // PDPTE 0 -> PD
        // PDE 3: 2 MiB page at 0x1234_5600_0000 | PAT, P|US|PS (read-only).
        w64(&mut m, 0x3000 + 3 * 8, 0x1234_5660_0000 | 0x1000 | 0x85);
        w64(&mut m, 0x3000, 0x4000 | 0x7); // PDE 0 -> PT
        // PTE 7: 4 KiB page at 0xf_edcb_a000, P|RW|US, bits 62:52 (ignored) set.
        w64(
            &mut m,
            0x4000 + 7 * 8,
            0x7ff0_0000_0000_0000 | 0xf_edcb_a000 | 0x7,
        );
        m
    }

    const K: u64 = 0xffff_8000_0000_0000;

    #[test]
    fn level4_every_page_size() {
        let m = level4_fixture();
        let p = Paging::new(PagingMode::Level4);
        // CR3 with PCID 0x123, LAM bits 61 and 62 and the no-flush bit 63.
        let cr3 = 0xe000_0000_0000_1123;
        let (r, steps) = walk_steps(&m, &p, K + 0x4000_0000 + 0x1234_5678, cr3);
        assert_eq!(
            ok(r),
            (
                0x80_4000_0000 + 0x1234_5678,
                1 << 30,
                MemoryAccess::RW,
                false
            )
        );
        assert_eq!(
            steps.iter().map(|s| s.1).collect::<Vec<_>>(),
            [0x1800, 0x2008]
        );
        let (r, _) = walk_steps(&m, &p, K + 3 * 0x20_0000 + 0x1_2345, cr3);
        assert_eq!(
            ok(r),
            (
                0x1234_5660_0000 + 0x1_2345,
                1 << 21,
                MemoryAccess::RX,
                false
            )
        );
        let (r, steps) = walk_steps(&m, &p, K + 0x7abc, cr3);
        assert_eq!(ok(r), (0xf_edcb_aabc, 0x1000, MemoryAccess::RWX, false));
        assert_eq!(
            steps.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(),
            [(4, 0x1800), (3, 0x2000), (2, 0x3000), (1, 0x4038)]
        );
        // The lower half is empty.
        assert_eq!(
            pf(Amd64::translate(&m[..], &p, Va(0x7fff_ffff_f000), Pa(cr3))),
            (FaultReason::NotPresent, 4, 0x1000 + 255 * 8)
        );
    }

    #[test]
    fn level4_reserved_bits() {
        let p = Paging::new(PagingMode::Level4).with_max_phys_addr(46);
        let va_1g = K + 0x4000_0000;
        let va_2m = K + 3 * 0x20_0000;
        let va_4k = K + 0x7000;
        let cases: &[(u64, u64, u64, u8)] = &[
            // (entry address, bit to set, va, level)
            (0x1800, 7, va_4k, 4),  // PS in a PML4E
            (0x1800, 46, va_4k, 4), // address bit at MAXPHYADDR
            (0x1800, 51, va_4k, 4),
            (0x2008, 13, va_1g, 3), // 1 GiB leaf: bits 29:13
            (0x2008, 29, va_1g, 3),
            (0x3018, 13, va_2m, 2), // 2 MiB leaf: bits 20:13
            (0x3018, 20, va_2m, 2),
            (0x4038, 50, va_4k, 1),
        ];
        for &(entry, bit, va, level) in cases {
            let mut m = level4_fixture();
            let at = entry as usize;
            let old = u64::from_le_bytes(m[at..at + 8].try_into().unwrap());
            // Keep the fixture's addresses below MAXPHYADDR 46.
            let old = old & !0x0000_3000_0000_0000;
            w64(&mut m, entry, old | (1 << bit));
            assert_eq!(
                pf(Amd64::translate(&m[..], &p, Va(va), Pa(0x1000))),
                (FaultReason::ReservedBit, level, entry),
                "bit {bit} of the entry at {entry:#x}"
            );
        }
        // Not present beats reserved: P = 0 with every other bit set.
        for (entry, va, level) in [(0x1800, va_4k, 4), (0x2008, va_1g, 3), (0x4038, va_4k, 1)] {
            let mut m = level4_fixture();
            w64(&mut m, entry, !1);
            assert_eq!(
                pf(Amd64::translate(&m[..], &p, Va(va), Pa(0x1000))),
                (FaultReason::NotPresent, level, entry)
            );
        }
        // Bits 62:52 are ignored, not reserved (the PTE of the fixture sets them all).
        let m = level4_fixture();
        assert!(Amd64::translate(&m[..], &p, Va(va_4k), Pa(0x1000)).is_ok());
        // NXE = 0: XD is reserved (the 1 GiB leaf has it).
        let p_nonx = Paging::new(PagingMode::Level4).with_nxe(false);
        assert_eq!(
            pf(Amd64::translate(&m[..], &p_nonx, Va(va_1g), Pa(0x1000))),
            (FaultReason::ReservedBit, 3, 0x2008)
        );
        // No 1 GiB pages on this CPU: PS in a PDPTE is reserved.
        let p_no1g = Paging::new(PagingMode::Level4).with_page_1gb(false);
        assert_eq!(
            pf(Amd64::translate(&m[..], &p_no1g, Va(va_1g), Pa(0x1000))),
            (FaultReason::ReservedBit, 3, 0x2008)
        );
        // ... but a PDPTE that references a PD is fine.
        assert!(Amd64::translate(&m[..], &p_no1g, Va(va_4k), Pa(0x1000)).is_ok());
    }

    #[test]
    fn level5_walk_and_canonical_bound() {
        // PML5 at 0x1000, then the 4-level fixture's tables shifted by one page.
        let mut m = vec![0u8; 0x6000];
        let l4 = level4_fixture();
        for (i, chunk) in l4.chunks(8).enumerate() {
            let v = u64::from_le_bytes(chunk.try_into().unwrap());
            // Move table pointers (not leaf frames) one page up.
            let moved = if (v & 1 != 0)
                && (0x2000..0x5000).contains(&(v & 0xf000))
                && v & 0x80 == 0
                && v >> 52 == 0
            {
                v + 0x1000
            } else {
                v
            };
            w64(&mut m, 0x1000 + i as u64 * 8, moved);
        }
        // PML5E 0x1ff (VA bits 56:48 all ones) -> PML4 at 0x2000.
        w64(&mut m, 0x1000 + 0x1ff * 8, 0x2000 | 0x7);
        let p = Paging::new(PagingMode::Level5);
        let va = 0xffff_8000_0000_7abc; // canonical for 57 bits too
        let (r, steps) = walk_steps(&m, &p, va, 0x1000);
        assert_eq!(ok(r).0, 0xf_edcb_aabc);
        assert_eq!(
            steps.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(),
            [
                (5, 0x1ff8),
                (4, 0x2800),
                (3, 0x3000),
                (2, 0x4000),
                (1, 0x5038)
            ]
        );
        // PS in a PML5E is reserved.
        w64(&mut m, 0x1ff8, 0x2000 | 0x87);
        assert_eq!(
            pf(Amd64::translate(&m[..], &p, Va(va), Pa(0x1000))),
            (FaultReason::ReservedBit, 5, 0x1ff8)
        );
        // Canonical for 48 bits is not the bound in 5-level paging, 57 bits is: bit 47 is
        // an index bit of the PML4 (PML5 index 0, empty here).
        assert_eq!(
            pf(Amd64::translate(
                &m[..],
                &p,
                Va(0x0000_8000_0000_0000),
                Pa(0x1000)
            )),
            (FaultReason::NotPresent, 5, 0x1000)
        );
        for va in [
            0x0100_0000_0000_0000u64,
            0xfeff_ffff_ffff_ffff,
            0x8000_0000_0000_0000,
        ] {
            assert_eq!(
                pf(Amd64::translate(&Untouchable, &p, Va(va), Pa(0x1000))),
                (FaultReason::NonCanonical, 5, 0),
                "{va:#x}"
            );
        }
        let p4 = Paging::new(PagingMode::Level4);
        for va in [0x0000_8000_0000_0000u64, 0xffff_7fff_ffff_ffff, 1 << 63] {
            assert_eq!(
                pf(Amd64::translate(&Untouchable, &p4, Va(va), Pa(0x1000))),
                (FaultReason::NonCanonical, 4, 0),
                "{va:#x}"
            );
        }
    }

    #[test]
    fn paging_disabled_is_identity() {
        let p = Paging::new(PagingMode::Disabled);
        let t = Amd64::translate(&Untouchable, &p, Va(0x1234_5678), Pa(0)).unwrap();
        assert_eq!(
            (t.pa, t.access, t.user),
            (Pa(0x1234_5678), MemoryAccess::RWX, true)
        );
        let any = Access::supervisor(AccessKind::Fetch);
        let strict = RightsPolicy {
            wp: true,
            smep: true,
            smap: true,
            ac: false,
        };
        assert_eq!(p.check_access(&t, any, strict), Ok(()));
    }

    #[test]
    fn mode_from_control_registers() {
        let pg = 1 << 31;
        let pae = 1 << 5;
        let la57 = 1 << 12;
        let lma = 1 << 10;
        assert_eq!(
            PagingMode::from_control_registers(0, pae, lma),
            PagingMode::Disabled
        );
        assert_eq!(
            PagingMode::from_control_registers(pg, 0, 0),
            PagingMode::Bits32
        );
        assert_eq!(
            PagingMode::from_control_registers(pg, pae, 0),
            PagingMode::Pae
        );
        assert_eq!(
            PagingMode::from_control_registers(pg, pae, lma),
            PagingMode::Level4
        );
        assert_eq!(
            PagingMode::from_control_registers(pg, pae | la57, lma),
            PagingMode::Level5
        );
        let p = Paging::from_control_registers(pg, pae | (1 << 4), lma | (1 << 11));
        assert!(p.nxe && p.pse && p.page_1gb);
        let p = Paging::from_control_registers(pg, pae, lma);
        assert!(!p.nxe && !p.pse);
    }

    // ----- rights -----------------------------------------------------------------------

    fn t(access: MemoryAccess, user: bool) -> Translation {
        Translation {
            pa: Pa(0x1000),
            page_size: 0x1000,
            access,
            user,
        }
    }

    const P: PfErrorCode = PfErrorCode::PRESENT;
    const W: PfErrorCode = PfErrorCode::WRITE;
    const U: PfErrorCode = PfErrorCode::USER;
    const I: PfErrorCode = PfErrorCode::INSTRUCTION;

    #[test]
    fn rights_user_accesses() {
        let p = Paging::default();
        let r = RightsPolicy::new();
        let read = Access::user(AccessKind::Read);
        let write = Access::user(AccessKind::Write);
        let fetch = Access::user(AccessKind::Fetch);
        // A supervisor page is closed to user mode, whatever its other rights.
        let kpage = t(MemoryAccess::RWX, false);
        assert_eq!(p.check_access(&kpage, read, r), Err(P | U));
        assert_eq!(p.check_access(&kpage, write, r), Err(P | W | U));
        assert_eq!(p.check_access(&kpage, fetch, r), Err(P | U | I));
        // A read-only, non-executable user page.
        let upage = t(MemoryAccess::R, true);
        assert_eq!(p.check_access(&upage, read, r), Ok(()));
        assert_eq!(p.check_access(&upage, write, r), Err(P | W | U));
        assert_eq!(p.check_access(&upage, fetch, r), Err(P | U | I));
        // CR0.WP does not matter to user mode.
        let no_wp = RightsPolicy { wp: false, ..r };
        assert_eq!(p.check_access(&upage, write, no_wp), Err(P | W | U));
        assert_eq!(
            p.check_access(&t(MemoryAccess::RWX, true), write, r),
            Ok(())
        );
        assert_eq!(
            p.check_access(&t(MemoryAccess::RWX, true), fetch, r),
            Ok(())
        );
    }

    #[test]
    fn rights_supervisor_wp_smep_smap() {
        let p = Paging::default();
        let read = Access::supervisor(AccessKind::Read);
        let write = Access::supervisor(AccessKind::Write);
        let fetch = Access::supervisor(AccessKind::Fetch);
        let ro_k = t(MemoryAccess::RX, false);
        let rw_u = t(MemoryAccess::RWX, true);
        let ro_u = t(MemoryAccess::R, true);
        let wp = RightsPolicy::new();
        let no_wp = RightsPolicy { wp: false, ..wp };
        assert_eq!(p.check_access(&ro_k, write, wp), Err(P | W));
        assert_eq!(p.check_access(&ro_k, write, no_wp), Ok(()));
        assert_eq!(p.check_access(&ro_u, write, no_wp), Ok(()));
        assert_eq!(p.check_access(&ro_u, write, wp), Err(P | W));
        assert_eq!(p.check_access(&ro_k, fetch, wp), Ok(()));
        assert_eq!(p.check_access(&ro_u, fetch, wp), Err(P | I), "XD");
        assert_eq!(p.check_access(&rw_u, fetch, wp), Ok(()), "no SMEP");
        let smep = RightsPolicy { smep: true, ..wp };
        assert_eq!(p.check_access(&rw_u, fetch, smep), Err(P | I));
        assert_eq!(p.check_access(&ro_k, fetch, smep), Ok(()));
        assert_eq!(
            p.check_access(&rw_u, read, smep),
            Ok(()),
            "SMEP is fetches only"
        );
        let smap = RightsPolicy { smap: true, ..wp };
        let smap_ac = RightsPolicy { ac: true, ..smap };
        assert_eq!(p.check_access(&rw_u, read, smap), Err(P));
        assert_eq!(p.check_access(&rw_u, write, smap), Err(P | W));
        assert_eq!(p.check_access(&rw_u, read, smap_ac), Ok(()));
        assert_eq!(p.check_access(&rw_u, write, smap_ac), Ok(()));
        assert_eq!(
            p.check_access(&ro_u, write, smap_ac),
            Err(P | W),
            "AC does not lift WP"
        );
        assert_eq!(
            p.check_access(
                &ro_u,
                write,
                RightsPolicy {
                    wp: false,
                    ..smap_ac
                }
            ),
            Ok(())
        );
        assert_eq!(
            p.check_access(&ro_k, read, smap),
            Ok(()),
            "SMAP is user pages only"
        );
        assert_eq!(
            p.check_access(&rw_u, fetch, smap),
            Ok(()),
            "SMAP is data only"
        );
    }

    #[test]
    fn error_code_instruction_bit() {
        let fetch = Access::supervisor(AccessKind::Fetch);
        let r = RightsPolicy::new();
        let smep = RightsPolicy { smep: true, ..r };
        let code = |mode, nxe, rights| {
            PfErrorCode::for_access(&Paging::new(mode).with_nxe(nxe), fetch, rights)
        };
        // I/D: a fetch, and SMEP or (PAE-style entries and NXE) (§4.7).
        assert_eq!(code(PagingMode::Bits32, true, r), PfErrorCode::empty());
        assert_eq!(code(PagingMode::Bits32, true, smep), I);
        assert_eq!(code(PagingMode::Pae, false, r), PfErrorCode::empty());
        assert_eq!(code(PagingMode::Pae, true, r), I);
        assert_eq!(code(PagingMode::Level4, true, r), I);
        assert_eq!(code(PagingMode::Level5, false, smep), I);
        // A 32-bit user fetch from a supervisor page: P|U, no I/D.
        let p32 = Paging::new(PagingMode::Bits32);
        assert_eq!(
            p32.check_access(
                &t(MemoryAccess::RWX, false),
                Access::user(AccessKind::Fetch),
                r
            ),
            Err(P | U)
        );
    }

    #[test]
    fn error_code_of_walk_faults() {
        let p = Paging::default();
        let r = RightsPolicy::new();
        let m = level4_fixture();
        let write = Access::user(AccessKind::Write);
        let fault_of = |va: u64, mem: &[u8]| match Amd64::translate(mem, &p, Va(va), Pa(0x1000)) {
            Err(VmiError::Translation(f)) => f,
            other => panic!("{other:?}"),
        };
        let np = fault_of(0x1000, &m);
        assert_eq!(p.fault_error_code(&np, write, r), Some(W | U));
        let mut bad = m.clone();
        w64(&mut bad, 0x1800, 0x2000 | 0x83);
        let rsvd = fault_of(K, &bad);
        assert_eq!(
            p.fault_error_code(&rsvd, Access::supervisor(AccessKind::Fetch), r),
            Some(P | PfErrorCode::RESERVED | I)
        );
        let nc = fault_of(1 << 47, &m);
        assert_eq!(p.fault_error_code(&nc, write, r), None);
        let oom = fault_of(K, &m[..0x1000]);
        assert_eq!(oom.reason, FaultReason::OutOfMemory);
        assert_eq!(p.fault_error_code(&oom, write, r), None);
    }

    #[test]
    fn translate_access_names_the_leaf() {
        let m = level4_fixture();
        let p = Paging::default();
        let r = RightsPolicy::new();
        // The 2 MiB page is read-only: with CR0.WP, a supervisor write is denied at its PDE.
        let va = K + 3 * 0x20_0000 + 0x10;
        let write = Access::supervisor(AccessKind::Write);
        let err = Amd64::translate_access(&m[..], &p, Va(va), Pa(0x1000), write, r).unwrap_err();
        let f = *err.page_fault().unwrap();
        assert_eq!(
            (f.reason, f.level, f.entry, f.value),
            (FaultReason::AccessDenied, 2, Pa(0x3018), 0x1234_5660_1085)
        );
        assert_eq!(p.fault_error_code(&f, write, r), Some(P | W));
        // The PML4E is supervisor-only, so user mode may not even read.
        let user_read = Access::user(AccessKind::Read);
        let err = Amd64::translate_access(&m[..], &p, Va(va), Pa(0x1000), user_read, r);
        assert_eq!(
            err.unwrap_err().page_fault().unwrap().reason,
            FaultReason::AccessDenied
        );
        let read = Access::supervisor(AccessKind::Read);
        let ok = Amd64::translate_access(&m[..], &p, Va(va), Pa(0x1000), read, r).unwrap();
        assert_eq!(ok.pa, Pa(0x1234_5660_0010));
        // A walk failure comes back unchanged.
        let err = Amd64::translate_access(&m[..], &p, Va(0x1000), Pa(0x1000), read, r);
        assert_eq!(
            err.unwrap_err().page_fault().unwrap().reason,
            FaultReason::NotPresent
        );
    }

    #[test]
    fn rights_policy_from_registers() {
        assert_eq!(
            RightsPolicy::from_registers(0, 0, 0),
            RightsPolicy {
                wp: false,
                smep: false,
                smap: false,
                ac: false
            }
        );
        let p = RightsPolicy::from_registers(1 << 16, 1 << 21, 1 << 18);
        assert!(p.wp && !p.smep && p.smap && p.ac);
        assert_eq!(RightsPolicy::default(), RightsPolicy::new());
    }
}
