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
//!
//! # Files
//! - `mod.rs`: [`PagingMode`] and [`Paging`], what the walk needs to know of a vCPU;
//! - `modes.rs`: each mode's table geometry and bit meanings, as constant data;
//! - `entry.rs`: [`PageTableEntry`], [`EntryFlags`] and [`TableIndex`], the names of an
//!   entry's bits and levels (also what the CLI's `translate --verbose` prints);
//! - `walk.rs`: the walker, one loop over a mode's description;
//! - `rights.rs`: the rights check and the #PF error code.

use crate::addr::{Pa, Va};

mod entry;
mod modes;
mod rights;
mod walk;

pub use entry::{EntryFlags, EntryNames, PageTableEntry, TableIndex, level_name};
pub use rights::{Access, AccessKind, PfErrorCode, RightsPolicy};
pub use walk::WalkPlan;
pub(crate) use walk::{
    LANES, translate_lent, translate_planned, walk, walk_many_planned, walk_pages_planned,
};

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
                // `bits` is 48 or 57 here: the shift is 16 or 7.
                let unused = 64u32.wrapping_sub(bits as u32);
                let shifted = (va.0 as i64) << unused;
                (shifted >> unused) as u64 == va.0
            }
        }
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
    /// 4-level paging, as [`Amd64::DEFAULT_PAGING`](crate::Architecture::DEFAULT_PAGING).
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
        Pa(cr3.0 & self.root_mask())
    }

    /// The CR3 bits [`Paging::root_table`] keeps: it is CR3 under this mask.
    pub const fn root_mask(&self) -> u64 {
        match self.mode {
            PagingMode::Disabled => 0,
            PagingMode::Bits32 => 0xffff_f000,
            PagingMode::Pae => 0xffff_ffe0,
            PagingMode::Level4 | PagingMode::Level5 => self.phys_mask() & !0xfff,
        }
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
        // MAXPHYADDR is clamped to 32..=52: `1 << m` is not zero.
        (1u64 << self.maxphy()).wrapping_sub(1)
    }
}
