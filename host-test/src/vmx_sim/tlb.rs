//! A vCPU's EPT translation caches (SDM Vol. 3C §29.4.2): guest-physical mappings at the
//! size of their leaf (4 KiB, 2 MiB or 1 GiB, as a TLB holds large pages as one entry),
//! and paging-structure caches of the non-leaf entries (each remembers the table a
//! PML4E/PDPTE/PDE points to, with the AND of the rights above it). Both are keyed by the
//! EP4TA they were made with.
//!
//! Entries are created by a walk that translated (a faulting walk caches nothing) and
//! dropped only:
//! - by INVEPT: single-context drops the entries of one EP4TA, all-context every entry
//!   (SDM Vol. 3C §29.4.3.1);
//! - by an EPT violation, which invalidates the cached mappings that would be used to
//!   translate the faulting guest-physical address for the current EP4TA (SDM Vol. 3C
//!   §29.4.3.1, "operations that invalidate cached mappings").
//!
//! A VM exit, a VM entry, or a change of the EPTP does not flush them: entries of other
//! EP4TAs simply stay cached (hardware tags them so), so switching views needs no INVEPT,
//! and a missed INVEPT after tightening, remapping, splitting, merging or freeing tables
//! shows up as a stale access.

use std::collections::HashMap;

use super::ept::{Rights, WalkStart};

/// A cached leaf translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cached {
    /// The host-physical address of the 4 KiB frame that holds the looked-up address.
    pub hpa_page: u64,
    /// The AND of the walk's rights.
    pub rights: Rights,
    /// The size of the leaf it was made from: 12, 21 or 30.
    pub shift: u8,
}

/// The EPT caches of one vCPU.
#[derive(Debug, Default)]
pub struct EptTlb {
    /// (EP4TA, leaf shift, gpa >> shift) -> (leaf base, rights).
    leaves: HashMap<(u64, u8, u64), (u64, Rights)>,
    /// (EP4TA, table level, gpa >> (12 + 9 * level)) -> the table.
    tables: HashMap<(u64, u8, u64), WalkStart>,
    hits: u64,
    fills: u64,
}

const SHIFTS: [u8; 3] = [12, 21, 30];

impl EptTlb {
    /// The cached translation of `gpa` under `ep4ta`.
    pub fn lookup(&mut self, ep4ta: u64, gpa: u64) -> Option<Cached> {
        for shift in SHIFTS {
            if let Some(&(base, rights)) = self.leaves.get(&(ep4ta, shift, gpa >> shift)) {
                self.hits += 1;
                let within = gpa & ((1u64 << shift) - 1) & !0xfff;
                return Some(Cached {
                    hpa_page: base | within,
                    rights,
                    shift,
                });
            }
        }
        None
    }

    /// The deepest cached table on the way to `gpa` (a walk of `levels` levels).
    pub fn lookup_table(&self, ep4ta: u64, gpa: u64, levels: u8) -> Option<WalkStart> {
        (1..levels).find_map(|level| {
            let shift = 12 + 9 * u32::from(level);
            self.tables.get(&(ep4ta, level, gpa >> shift)).copied()
        })
    }

    /// Caches a leaf of size `1 << shift` whose 4 KiB frame for `gpa` is `hpa_page`.
    pub fn fill(&mut self, ep4ta: u64, gpa: u64, shift: u8, hpa_page: u64, rights: Rights) {
        self.fills += 1;
        let mask = (1u64 << shift) - 1;
        let base = hpa_page & !mask;
        self.leaves
            .insert((ep4ta, shift, gpa >> shift), (base, rights));
    }

    /// Caches a table the walk of `gpa` entered.
    pub fn fill_table(&mut self, ep4ta: u64, gpa: u64, t: WalkStart) {
        let shift = 12 + 9 * u32::from(t.level);
        self.tables.insert((ep4ta, t.level, gpa >> shift), t);
    }

    /// Drops every mapping used for `gpa` under `ep4ta` (an EPT violation).
    pub fn invalidate_gpa(&mut self, ep4ta: u64, gpa: u64) {
        for shift in SHIFTS {
            self.leaves.remove(&(ep4ta, shift, gpa >> shift));
        }
        for level in 1..5u8 {
            let shift = 12 + 9 * u32::from(level);
            self.tables.remove(&(ep4ta, level, gpa >> shift));
        }
    }

    /// Single-context INVEPT.
    pub fn invalidate_context(&mut self, ep4ta: u64) {
        self.leaves.retain(|&(root, _, _), _| root != ep4ta);
        self.tables.retain(|&(root, _, _), _| root != ep4ta);
    }

    /// All-context INVEPT.
    pub fn invalidate_all(&mut self) {
        self.leaves.clear();
        self.tables.clear();
    }

    /// The number of cached leaf translations.
    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty() && self.tables.is_empty()
    }

    /// Lookups that hit, and fills, so far.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.fills)
    }
}
