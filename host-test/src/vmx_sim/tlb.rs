//! A vCPU's EPT TLB: the guest-physical mappings it caches (SDM Vol. 3C §29.4.2), keyed by
//! the EP4TA they were made with and the guest-physical page.
//!
//! An entry holds the host-physical frame and the AND of the walk's rights. It is created
//! by a walk that translated (a faulting walk caches nothing) and dropped only:
//! - by INVEPT: single-context drops the entries of one EP4TA, all-context drops every
//!   entry (SDM Vol. 3C §29.4.3.1);
//! - by an EPT violation, which invalidates the cached mappings of the faulting
//!   guest-physical address for the current EP4TA (SDM Vol. 3C §29.4.3.1: "EPT
//!   violations ... invalidate any guest-physical mappings ... associated with the current
//!   EP4TA that would be used to translate the guest-physical address").
//!
//! A VM exit, a VM entry, or a change of the EPTP does not flush it: entries of other
//! EP4TAs simply stay cached (hardware tags them so), so a view switch without INVEPT is
//! correct and a missed INVEPT after tightening shows up as a stale access.

use std::collections::HashMap;

use super::ept::Rights;

/// A cached translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cached {
    /// The host-physical frame.
    pub hpa_page: u64,
    /// The AND of the walk's rights.
    pub rights: Rights,
}

/// The EPT TLB of one vCPU.
#[derive(Debug, Default)]
pub struct EptTlb {
    entries: HashMap<(u64, u64), Cached>,
    hits: u64,
    fills: u64,
}

impl EptTlb {
    /// The entry for `gpa` under `ep4ta`.
    pub fn lookup(&mut self, ep4ta: u64, gpa: u64) -> Option<Cached> {
        let hit = self.entries.get(&(ep4ta, gpa >> 12)).copied();
        if hit.is_some() {
            self.hits += 1;
        }
        hit
    }

    /// Caches a translation.
    pub fn fill(&mut self, ep4ta: u64, gpa: u64, cached: Cached) {
        self.fills += 1;
        self.entries.insert((ep4ta, gpa >> 12), cached);
    }

    /// Drops the entry of `gpa` under `ep4ta` (an EPT violation).
    pub fn invalidate_gpa(&mut self, ep4ta: u64, gpa: u64) {
        self.entries.remove(&(ep4ta, gpa >> 12));
    }

    /// Single-context INVEPT.
    pub fn invalidate_context(&mut self, ep4ta: u64) {
        self.entries.retain(|&(root, _), _| root != ep4ta);
    }

    /// All-context INVEPT.
    pub fn invalidate_all(&mut self) {
        self.entries.clear();
    }

    /// The number of cached translations.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lookups that hit, and fills, so far.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.fills)
    }
}
