//! AMD64 paging: the modes as data, and one walker loop that reads them.
//!
//! References: Intel SDM Vol. 3A, chapter 4 ("Paging"): §4.3 (32-bit paging), §4.4 (PAE
//! paging), §4.5 (4-level and 5-level paging), and Tables 4-4 to 4-20 for the entry formats
//! and their reserved bits.
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

/// A paging mode described as data: the walker has no per-mode code paths beyond what
/// these fields say.
struct ModeDesc {
    /// Number of levels.
    levels: u8,
    /// Bytes per entry: 4 or 8.
    entry_size: u8,
    /// Significant linear-address bits.
    va_bits: u8,
    /// Index bits per level, level 1 first.
    index_bits: [u8; 5],
    /// Whether a PS=1 entry maps a page at this level (level 1 first).
    large: [bool; 5],
}

const DISABLED: ModeDesc = ModeDesc {
    levels: 0,
    entry_size: 8,
    va_bits: 64,
    index_bits: [0; 5],
    large: [false; 5],
};
const BITS32: ModeDesc = ModeDesc {
    levels: 2,
    entry_size: 4,
    va_bits: 32,
    index_bits: [10, 10, 0, 0, 0],
    large: [false, true, false, false, false],
};
const PAE: ModeDesc = ModeDesc {
    levels: 3,
    entry_size: 8,
    va_bits: 32,
    index_bits: [9, 9, 2, 0, 0],
    large: [false, true, false, false, false],
};
const LEVEL4: ModeDesc = ModeDesc {
    levels: 4,
    entry_size: 8,
    va_bits: 48,
    index_bits: [9, 9, 9, 9, 0],
    large: [false, true, true, false, false],
};
const LEVEL5: ModeDesc = ModeDesc {
    levels: 5,
    entry_size: 8,
    va_bits: 57,
    index_bits: [9, 9, 9, 9, 9],
    large: [false, true, true, false, false],
};

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
        /// Bit 7, PS: the entry maps a large page (PDE, PDPTE); reserved in PML4E/PML5E.
        const PAGE_SIZE = 1 << 7;
        /// Bit 8, G: global (leaf entries).
        const GLOBAL = 1 << 8;
        /// Bit 12, PAT, in a large-page leaf (bit 7 in a 4 KiB PTE).
        const LARGE_PAT = 1 << 12;
        /// Bit 63, XD: instruction fetches not allowed (when EFER.NXE = 1; reserved otherwise).
        const EXECUTE_DISABLE = 1 << 63;
    }
}

/// How to read a vCPU's page tables.
///
/// The defaults are those every 64-bit OS runs with: 4-level paging, MAXPHYADDR 52,
/// EFER.NXE = 1, CR4.PSE = 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Paging {
    /// The paging mode.
    pub mode: PagingMode,
    /// MAXPHYADDR, the physical-address width (CPUID 0x8000_0008, EAX bits 7:0); clamped to
    /// 32..=52 by the walker. Address bits at or above it in a present entry are reserved.
    pub max_phys_addr: u8,
    /// EFER.NXE: bit 63 of an entry is XD when set, reserved when clear (64-bit entries).
    pub nxe: bool,
    /// CR4.PSE: whether a 32-bit PDE with PS = 1 maps a 4 MiB page.
    pub pse: bool,
    /// PAE only: the four PDPTEs as the processor holds them (in the VMCS for a
    /// hypervisor). When `None`, they are read from memory at CR3 bits 31:5.
    pub pdptes: Option<[u64; 4]>,
}

impl Default for Paging {
    fn default() -> Self {
        Self::new(PagingMode::Level4)
    }
}

impl Paging {
    /// A mode with the defaults: MAXPHYADDR 52, NXE and PSE set, PDPTEs from memory.
    pub const fn new(mode: PagingMode) -> Self {
        Self {
            mode,
            max_phys_addr: 52,
            nxe: true,
            pse: true,
            pdptes: None,
        }
    }

    /// The paging a vCPU uses, from its CR0, CR4 and EFER (mode, EFER.NXE bit 11,
    /// CR4.PSE bit 4), with MAXPHYADDR 52.
    pub const fn from_control_registers(cr0: u64, cr4: u64, efer: u64) -> Self {
        Self {
            mode: PagingMode::from_control_registers(cr0, cr4, efer),
            max_phys_addr: 52,
            nxe: efer & (1 << 11) != 0,
            pse: cr4 & (1 << 4) != 0,
            pdptes: None,
        }
    }

    /// The physical address of the top-level table for a raw CR3 value: bits 31:12
    /// (32-bit), 31:5 (PAE) or MAXPHYADDR-1:12 (4- and 5-level, which drops the PCID in
    /// bits 11:0, the no-flush bit 63 and the LAM bits 61 and 62).
    pub const fn root_table(&self, cr3: Pa) -> Pa {
        Pa(match self.mode {
            PagingMode::Disabled => 0,
            PagingMode::Bits32 => cr3.0 & 0xffff_f000,
            PagingMode::Pae => cr3.0 & 0xffff_ffe0,
            PagingMode::Level4 | PagingMode::Level5 => cr3.0 & self.phys_mask() & !0xfff,
        })
    }

    const fn maxphy(&self) -> u32 {
        let m = self.max_phys_addr as u32;
        if m < 32 {
            32
        } else if m > 52 {
            52
        } else {
            m
        }
    }

    /// Bits below MAXPHYADDR.
    const fn phys_mask(&self) -> u64 {
        (1u64 << self.maxphy()) - 1
    }

    /// The reserved bits of a present 64-bit entry at `level`, given its PS bit.
    const fn reserved_64(&self, level: u8, ps: bool) -> u64 {
        let above_maxphy = !self.phys_mask();
        let xd = if self.nxe { 0 } else { 1 << 63 };
        match self.mode {
            PagingMode::Pae if level == 3 => {
                // PAE PDPTE (Table 4-8): bits 2:1, 8:5 and 63:M.
                above_maxphy | 0b1_1110_0110
            }
            PagingMode::Pae => (above_maxphy & !(1 << 63)) | xd | self.large_reserved(level, ps),
            _ => {
                // Bits 51:M are reserved; 62:52 are ignored (or protection keys).
                let mut r = (above_maxphy & ((1 << 52) - 1)) | xd;
                if level >= 4 {
                    r |= 1 << 7; // PS in a PML4E or PML5E.
                }
                r | self.large_reserved(level, ps)
            }
        }
    }

    /// Bits between the PAT bit and the page base of a large-page leaf (Tables 4-9, 4-17).
    const fn large_reserved(&self, level: u8, ps: bool) -> u64 {
        if !ps {
            return 0;
        }
        match level {
            2 => 0x001f_e000, // 2 MiB: bits 20:13
            3 => 0x3fff_e000, // 1 GiB: bits 29:13
            _ => 0,
        }
    }
}

#[inline]
fn read_entry(
    mem: &(impl PhysRead + ?Sized),
    paging: &Paging,
    size: u8,
    level: u8,
    index: u64,
    entry: Pa,
) -> Result<u64, VmiError> {
    if let (PagingMode::Pae, 3, Some(pdptes)) = (paging.mode, level, paging.pdptes) {
        return Ok(pdptes.get(index as usize).copied().unwrap_or(0));
    }
    if size == 4 {
        mem.read_u32(entry).map(u64::from)
    } else {
        mem.read_u64(entry)
    }
}

/// The walk itself; see the module documentation.
pub(crate) fn walk(
    mem: &(impl PhysRead + ?Sized),
    paging: &Paging,
    va: Va,
    root: Pa,
    mut observe: impl FnMut(WalkStep),
) -> Result<Translation, VmiError> {
    let mode = paging.mode;
    let desc = mode.desc();
    if !mode.is_valid_va(va) {
        return Err(fault(
            va,
            root,
            desc.levels,
            Pa(0),
            0,
            FaultReason::NonCanonical,
        ));
    }
    if mode == PagingMode::Disabled {
        return Ok(Translation {
            pa: Pa(va.0),
            page_size: 1 << 12,
            access: MemoryAccess::RWX,
            user: true,
        });
    }

    let phys_mask = paging.phys_mask();
    let wide = desc.entry_size == 8;
    let table_mask = if wide {
        phys_mask & !0xfff
    } else {
        0xffff_f000
    };

    let mut table = paging.root_table(root);
    let mut writable = true;
    let mut user = true;
    let mut no_exec = false;
    let mut level = desc.levels;
    // The shift of the current level's index: 12 plus the index bits of the levels below.
    let mut shift = 12u32
        + desc
            .index_bits
            .iter()
            .take(usize::from(desc.levels).saturating_sub(1))
            .map(|&b| u32::from(b))
            .sum::<u32>();

    // One iteration per level, top to bottom: bounded by the level count.
    for _ in 0..desc.levels {
        let bits = desc
            .index_bits
            .get(usize::from(level) - 1)
            .copied()
            .unwrap_or(0);
        let index = (va.0 >> shift) & ((1u64 << bits) - 1);
        let entry = Pa(table.wrapping_add(index * u64::from(desc.entry_size)).0);
        let value = match read_entry(mem, paging, desc.entry_size, level, index, entry) {
            Ok(v) => v,
            Err(VmiError::OutOfBounds(_) | VmiError::GfnNotPresent(_)) => {
                return Err(fault(va, root, level, entry, 0, FaultReason::OutOfMemory));
            }
            Err(e) => return Err(e),
        };
        observe(WalkStep {
            level,
            entry,
            value,
        });
        let flags = EntryFlags::from_bits_retain(value);
        if !flags.contains(EntryFlags::PRESENT) {
            return Err(fault(
                va,
                root,
                level,
                entry,
                value,
                FaultReason::NotPresent,
            ));
        }
        let large_ok = desc
            .large
            .get(usize::from(level) - 1)
            .copied()
            .unwrap_or(false)
            && (wide || paging.pse);
        let ps = flags.contains(EntryFlags::PAGE_SIZE) && large_ok;
        let reserved = if wide {
            paging.reserved_64(level, ps)
        } else if ps {
            // 4 MiB PDE (Table 4-4): bits 21:(M-19), with M capped at 40 by PSE-36.
            let m = if paging.maxphy() > 40 {
                40
            } else {
                paging.maxphy()
            };
            ((1u64 << 22) - 1) & !((1u64 << (m - 19)) - 1)
        } else {
            0
        };
        if value & reserved != 0 {
            return Err(fault(
                va,
                root,
                level,
                entry,
                value,
                FaultReason::ReservedBit,
            ));
        }

        let pae_pdpte = mode == PagingMode::Pae && level == 3;
        if !pae_pdpte {
            writable &= flags.contains(EntryFlags::WRITABLE);
            user &= flags.contains(EntryFlags::USER);
            no_exec |= wide && paging.nxe && flags.contains(EntryFlags::EXECUTE_DISABLE);
        }

        if level == 1 || ps {
            let page_size = 1u64 << shift;
            let base = if wide {
                value & phys_mask & !(page_size - 1)
            } else if ps {
                // PSE-36: PDE bits 20:13 are physical-address bits 39:32.
                let m = if paging.maxphy() > 40 {
                    40
                } else {
                    paging.maxphy()
                };
                let high = (value >> 13) & ((1u64 << (m - 32)) - 1);
                (value & 0xffc0_0000) | (high << 32)
            } else {
                value & 0xffff_f000
            };
            let mut access = MemoryAccess::R;
            if writable {
                access |= MemoryAccess::W;
            }
            if !no_exec {
                access |= MemoryAccess::X;
            }
            return Ok(Translation {
                pa: Pa(base | (va.0 & (page_size - 1))),
                page_size,
                access,
                user,
            });
        }

        table = Pa(value & table_mask);
        level -= 1;
        shift -= u32::from(
            desc.index_bits
                .get(usize::from(level) - 1)
                .copied()
                .unwrap_or(0),
        );
    }
    // Level 1 always returns above; this is the bound made explicit.
    Err(fault(va, root, level, table, 0, FaultReason::NotPresent))
}
