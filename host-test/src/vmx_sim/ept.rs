//! The simulator's own reading of the EPT format and walk (Intel SDM Vol. 3C §29.3),
//! independent of `introvisor-ept`'s types: every bit is decoded here from the SDM.
//!
//! - EPTP (SDM Vol. 3C §25.6.11, Table 25-9): bits 2:0 memory type of the paging
//!   structures (0 UC, 6 WB), bits 5:3 the page-walk length minus one (3: four levels,
//!   4: five levels), bit 6 enables accessed and dirty flags, bits N-1:12 the address of
//!   the root table (PML4 or PML5).
//! - Entries (SDM Vol. 3C §29.3.2, Tables 29-1 to 29-6): bit 0 read, bit 1 write, bit 2
//!   execute, bits 5:3 the memory type of a leaf, bit 6 ignore PAT (leaf), bit 7 a 1 GiB
//!   (PDPTE) or 2 MiB (PDE) leaf, bit 8 accessed, bit 9 dirty (leaf), bit 10 user-mode
//!   execute (mode-based execute control, not modelled), bits N-1:12 the address, bit 63
//!   suppress #VE. An entry is present when any of bits 2:0 is set (§29.3.2).
//! - Misconfigurations (SDM Vol. 3C §29.3.3.1): write without read, execute-only where
//!   the capabilities lack it, a reserved memory type (2, 3, 7) in a leaf, reserved bits
//!   set (bits 51:N; bits 7:3 of a PML5E/PML4E and of a non-leaf PDPTE/PDE bits 7 aside,
//!   the address bits below the leaf size), and bit 7 set where the page size is not
//!   supported.
//! - Violations (SDM Vol. 3C §29.3.3.2): a not-present entry, or an access the AND of the
//!   walk's rights forbids.
//! - Accessed and dirty flags (SDM Vol. 3C §29.3.5): with EPTP bit 6, the walk sets bit 8
//!   in every entry it uses and bit 9 in the leaf of a write.

use super::memory::HostMemory;

/// `IA32_VMX_EPT_VPID_CAP` bits the simulator honours (SDM Vol. 3D Appendix A.10).
pub mod cap {
    /// Bit 0: execute-only translations are supported.
    pub const EXECUTE_ONLY: u64 = 1 << 0;
    /// Bit 6: a page-walk length of 4.
    pub const WALK_4: u64 = 1 << 6;
    /// Bit 7: a page-walk length of 5.
    pub const WALK_5: u64 = 1 << 7;
    /// Bit 8: the paging structures may be uncacheable.
    pub const UC: u64 = 1 << 8;
    /// Bit 14: the paging structures may be write-back.
    pub const WB: u64 = 1 << 14;
    /// Bit 16: 2 MiB leaves (PDE bit 7).
    pub const PAGE_2M: u64 = 1 << 16;
    /// Bit 17: 1 GiB leaves (PDPTE bit 7).
    pub const PAGE_1G: u64 = 1 << 17;
    /// Bit 20: INVEPT.
    pub const INVEPT: u64 = 1 << 20;
    /// Bit 21: accessed and dirty flags.
    pub const AD: u64 = 1 << 21;
    /// Bit 25: single-context INVEPT.
    pub const INVEPT_SINGLE: u64 = 1 << 25;
    /// Bit 26: all-context INVEPT.
    pub const INVEPT_ALL: u64 = 1 << 26;
    /// A modern CPU: everything above.
    pub const FULL: u64 = EXECUTE_ONLY
        | WALK_4
        | WALK_5
        | UC
        | WB
        | PAGE_2M
        | PAGE_1G
        | INVEPT
        | AD
        | INVEPT_SINGLE
        | INVEPT_ALL;
}

/// Read, write and execute as bits 0, 1, 2 (the layout of an EPT entry's low bits and of
/// the exit qualification's bits 2:0 and 5:3).
pub type Rights = u8;
/// Bit 0 of an entry: read.
pub const R: Rights = 1;
/// Bit 1: write.
pub const W: Rights = 2;
/// Bit 2: execute.
pub const X: Rights = 4;

const ADDR_4K: u64 = 0x000f_ffff_ffff_f000;
const ACCESSED: u64 = 1 << 8;
const DIRTY: u64 = 1 << 9;
const LARGE: u64 = 1 << 7;

/// The decoded EPTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eptp {
    /// The host-physical address of the root table (the EP4TA, or the PML5 table).
    pub root: u64,
    /// 4 or 5.
    pub levels: u8,
    /// Bit 6.
    pub ad: bool,
    /// Bits 2:0.
    pub memory_type: u8,
}

impl Eptp {
    /// Decodes a raw EPTP; `None` for a value VM entry would refuse (SDM Vol. 3C §27.2.1.1:
    /// an unsupported memory type or walk length, A/D without support, reserved bits).
    pub fn decode(raw: u64, caps: u64, maxphyaddr: u32) -> Option<Self> {
        let memory_type = (raw & 7) as u8;
        let ok_type = match memory_type {
            0 => caps & cap::UC != 0,
            6 => caps & cap::WB != 0,
            _ => false,
        };
        let levels = match (raw >> 3) & 7 {
            3 if caps & cap::WALK_4 != 0 => 4,
            4 if caps & cap::WALK_5 != 0 => 5,
            _ => return None,
        };
        let ad = raw & (1 << 6) != 0;
        if !ok_type || (ad && caps & cap::AD == 0) {
            return None;
        }
        // Bits 11:8 and 63:N are reserved (bit 7, supervisor shadow stacks, is refused too:
        // the simulator has none).
        if raw & 0xf80 != 0 || raw >> maxphyaddr != 0 {
            return None;
        }
        Some(Self {
            root: raw & ADDR_4K,
            levels,
            ad,
            memory_type,
        })
    }
}

/// Why a walk ended without a translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EptFault {
    /// An EPT violation (SDM Vol. 3C §29.3.3.2); `rights` is the AND of bits 2:0 of the
    /// entries used, 0 when one was not present.
    Violation {
        /// The AND of the walk's rights.
        rights: Rights,
    },
    /// An EPT misconfiguration (SDM Vol. 3C §29.3.3.1) at the entry at `entry_hpa`.
    Misconfig {
        /// The entry's host-physical address.
        entry_hpa: u64,
        /// Its value.
        value: u64,
    },
    /// A table lies outside host memory: the machine would hang or read garbage; the
    /// simulator reports it.
    OutsideHostMemory {
        /// The address.
        hpa: u64,
    },
}

/// A completed EPT walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EptLeaf {
    /// The host-physical address of the 4 KiB frame that holds the guest-physical address.
    pub hpa_page: u64,
    /// The AND of bits 2:0 over the entries used.
    pub rights: Rights,
    /// The leaf's size: 12, 21 or 30 (the shift).
    pub size_shift: u8,
    /// The leaf entry's memory type (bits 5:3).
    pub memory_type: u8,
}

/// One EPT walker over host memory, with the CPU's capabilities.
#[derive(Clone, Copy, Debug)]
pub struct EptWalker {
    /// `IA32_VMX_EPT_VPID_CAP`.
    pub caps: u64,
    /// The CPU's physical-address width.
    pub maxphyaddr: u32,
}

impl EptWalker {
    fn reserved_high(&self) -> u64 {
        // Bits 51:N (bit 52-62 are ignored, 63 is suppress #VE).
        ((1u64 << 52) - 1) & !((1u64 << self.maxphyaddr) - 1)
    }

    /// Checks one present entry at `level` (5: PML5E .. 1: PTE); `Ok(true)` for a leaf.
    fn check(&self, level: u8, e: u64) -> Result<bool, ()> {
        let rights = (e & 7) as u8;
        if rights & W != 0 && rights & R == 0 {
            return Err(());
        }
        if rights == X && self.caps & cap::EXECUTE_ONLY == 0 {
            return Err(());
        }
        if e & self.reserved_high() != 0 {
            return Err(());
        }
        let leaf = match level {
            5 | 4 => {
                if e & 0xf8 != 0 {
                    return Err(());
                }
                false
            }
            3 | 2 => {
                if e & LARGE != 0 {
                    let supported = if level == 3 {
                        cap::PAGE_1G
                    } else {
                        cap::PAGE_2M
                    };
                    if self.caps & supported == 0 {
                        return Err(());
                    }
                    let low = if level == 3 { 0x3fff_f000 } else { 0x001f_f000 };
                    if e & low != 0 {
                        return Err(());
                    }
                    true
                } else {
                    // Bits 6:3 of a non-leaf PDPTE or PDE are reserved.
                    if e & 0x78 != 0 {
                        return Err(());
                    }
                    false
                }
            }
            _ => true,
        };
        if leaf && matches!((e >> 3) & 7, 2 | 3 | 7) {
            return Err(());
        }
        Ok(leaf)
    }

    /// Walks `gpa` for an access needing `need` (R, W, X bits) through the tables rooted
    /// at `eptp`. With A/D enabled, sets the accessed flags, and the dirty flag of the leaf
    /// for a write, when the translation succeeds.
    ///
    /// # Errors
    /// A violation, a misconfiguration, or a table outside host memory.
    pub fn walk(
        &self,
        mem: &HostMemory,
        eptp: &Eptp,
        gpa: u64,
        need: Rights,
    ) -> Result<EptLeaf, EptFault> {
        let start = WalkStart {
            table: eptp.root,
            level: eptp.levels,
            rights: R | W | X,
        };
        self.walk_from(mem, eptp, gpa, need, start, &mut |_| {})
    }

    /// [`EptWalker::walk`] from a table a paging-structure cache supplied, calling
    /// `on_table` for each table the walk enters below `start` (for the caches to keep).
    ///
    /// # Errors
    /// As [`EptWalker::walk`].
    pub fn walk_from(
        &self,
        mem: &HostMemory,
        eptp: &Eptp,
        gpa: u64,
        need: Rights,
        start: WalkStart,
        on_table: &mut dyn FnMut(WalkStart),
    ) -> Result<EptLeaf, EptFault> {
        let mut table = start.table;
        let mut rights = start.rights;
        let mut used = [0u64; 5];
        let mut n = 0;
        let mut level = start.level;
        let mut entered = [None; 5];
        loop {
            let shift = 12 + 9 * u32::from(level - 1);
            let slot = table + ((gpa >> shift) & 0x1ff) * 8;
            let e = mem
                .load_u64(slot)
                .ok_or(EptFault::OutsideHostMemory { hpa: slot })?;
            if e & 7 == 0 {
                return Err(EptFault::Violation { rights: 0 });
            }
            let leaf = self.check(level, e).map_err(|()| EptFault::Misconfig {
                entry_hpa: slot,
                value: e,
            })?;
            rights &= (e & 7) as u8;
            used[n] = slot;
            if leaf {
                if need & !rights != 0 {
                    return Err(EptFault::Violation { rights });
                }
                let page_mask = (1u64 << shift) - 1;
                let hpa = (e & ADDR_4K & !page_mask) | (gpa & page_mask & !0xfff);
                if eptp.ad {
                    for &s in &used[..=n] {
                        let _ = mem.fetch_or_u64(s, ACCESSED);
                    }
                    if need & W != 0 {
                        let _ = mem.fetch_or_u64(slot, DIRTY);
                    }
                }
                for t in entered.iter().flatten() {
                    on_table(*t);
                }
                return Ok(EptLeaf {
                    hpa_page: hpa,
                    rights,
                    size_shift: shift as u8,
                    memory_type: ((e >> 3) & 7) as u8,
                });
            }
            n += 1;
            table = e & ADDR_4K;
            level -= 1;
            entered[n - 1] = Some(WalkStart {
                table,
                level,
                rights,
            });
        }
    }
}

impl EptWalker {
    /// The entries a walk of `gpa` reads, top down: (level, the entry's host-physical
    /// address, its value), up to the leaf or the first entry that is not present. For
    /// tests that need to know which frame holds which table.
    pub fn path(&self, mem: &HostMemory, eptp: &Eptp, gpa: u64) -> Vec<(u8, u64, u64)> {
        let mut out = Vec::new();
        let mut table = eptp.root;
        for level in (1..=eptp.levels).rev() {
            let shift = 12 + 9 * u32::from(level - 1);
            let slot = table + ((gpa >> shift) & 0x1ff) * 8;
            let Some(e) = mem.load_u64(slot) else { break };
            out.push((level, slot, e));
            if e & 7 == 0 || level == 1 || (e & LARGE != 0 && level <= 3) {
                break;
            }
            table = e & ADDR_4K;
        }
        out
    }
}

/// Where a walk starts: a table, its level (5 PML5 .. 1 PT), and the AND of the rights of
/// the entries above it. Also what a paging-structure cache holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkStart {
    /// The table's host-physical address.
    pub table: u64,
    /// Its level.
    pub level: u8,
    /// The AND of the rights above it.
    pub rights: Rights,
}
