//! EPT hierarchies over pool frames: walks, leaves, splits, merges, copies.
//!
//! A hierarchy is `levels` (4 or 5) levels of 512-entry tables; level 1 holds 4 KiB
//! leaves, level 2 may hold 2 MiB leaves and level 3 1 GiB leaves (bit 7), as the
//! capabilities allow (SDM Vol. 3C §29.3.2). Every walk is bounded by the level count and
//! every index is below 512. Tables are written completely before they are linked, and
//! each link is one atomic 64-bit store, so a CPU walking concurrently sees the old or the
//! new structure, never a half-built one.

use introvisor::MemoryAccess;

use crate::caps::EptCapabilities;
use crate::entry::{ADDRESS_MASK, EptEntry, EptFlags};
use crate::error::EptError;
use crate::hostmem::{FramePtr, read_entry, write_entry};
use crate::platform::{Hpa, Platform};
use crate::pool::{Pool, Usage};

/// The bytes a leaf at `level` maps: 4 KiB at 1, 2 MiB at 2, 1 GiB at 3, 512 GiB at 4,
/// 256 TiB at 5 (levels outside 1..=5 are clamped).
pub const fn level_size(level: u8) -> u64 {
    1u64 << level_shift(level)
}

/// The bit the range of an entry at `level` starts at: 12 at 1, 21 at 2, ... 48 at 5
/// (levels outside 1..=5 are clamped).
#[expect(
    clippy::arithmetic_side_effects,
    reason = "`l` is clamped to 1..=5: the shift is 12..=48"
)]
const fn level_shift(level: u8) -> u32 {
    let l = if level == 0 {
        1
    } else if level > 5 {
        5
    } else {
        level
    };
    12 + 9 * (l as u32 - 1)
}

/// The guest-physical reach of a `levels`-level hierarchy: 2^48 or 2^57 bytes (`u64::MAX`
/// for a walk length of 6 or more, whose reach does not fit).
pub const fn reach(levels: u8) -> u64 {
    #[expect(
        clippy::arithmetic_side_effects,
        reason = "`levels` is a u8: the shift is at most 12 + 9 * 255, far below u32::MAX"
    )]
    let shift = 12 + 9 * levels as u32;
    match 1u64.checked_shl(shift) {
        Some(reach) => reach,
        None => u64::MAX,
    }
}

/// The index of `gpa` in a table at `level`.
pub(crate) const fn index_of(gpa: u64, level: u8) -> usize {
    ((gpa >> level_shift(level)) & 511) as usize
}

/// The bits two leaves must share to be merged: everything but the address and the A/D
/// flags.
const MERGE_MASK: u64 = !(ADDRESS_MASK | EptFlags::ACCESSED.bits() | EptFlags::DIRTY.bits());

/// One entry of a walk: the table it lies in, its index, its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) table: Hpa,
    pub(crate) index: usize,
    pub(crate) entry: EptEntry,
    pub(crate) level: u8,
}

/// The entries a walk read, top level first; the last is the leaf or the hole.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Path {
    steps: [Step; 5],
    len: usize,
}

impl Path {
    /// The last entry read.
    pub(crate) fn last(&self) -> Option<Step> {
        self.len
            .checked_sub(1)
            .and_then(|i| self.steps.get(i))
            .copied()
    }

    /// The entry at `level`, if the walk read one there.
    pub(crate) fn at(&self, level: u8) -> Option<Step> {
        self.steps
            .iter()
            .take(self.len)
            .find(|s| s.level == level)
            .copied()
    }

    /// The leaf, if the walk ended on a mapping one.
    pub(crate) fn leaf(&self) -> Option<Step> {
        self.last()
            .filter(|s| s.entry.is_mapped() && is_leaf(s.entry, s.level))
    }
}

/// Whether `entry` at `level` is a leaf (as opposed to a table reference).
pub(crate) const fn is_leaf(entry: EptEntry, level: u8) -> bool {
    level <= 1 || entry.is_large() || !entry.is_present()
}

/// Operations on hierarchies with one platform, capabilities and walk length, taking
/// frames from one pool. Built under the backend's state lock.
pub(crate) struct Tables<'a, P: Platform, const FRAMES: usize> {
    pub(crate) platform: &'a P,
    pub(crate) caps: EptCapabilities,
    pub(crate) levels: u8,
    pub(crate) pool: &'a mut Pool<FRAMES>,
}

impl<P: Platform, const FRAMES: usize> Tables<'_, P, FRAMES> {
    /// Walks `gpa` from `root`, recording every entry read.
    ///
    /// # Errors
    /// [`EptError::BeyondWalkReach`] for an address the hierarchy cannot map; a host
    /// frame the platform does not map.
    pub(crate) fn walk(&self, root: Hpa, gpa: u64) -> Result<Path, EptError> {
        if gpa >= reach(self.levels) {
            return Err(EptError::BeyondWalkReach(introvisor::Pa(gpa)));
        }
        let first = Step {
            table: root,
            index: 0,
            entry: EptEntry::EMPTY,
            level: 0,
        };
        let mut path = Path {
            steps: [first; 5],
            len: 0,
        };
        let mut table = root;
        let mut level = self.levels;
        for slot in path.steps.iter_mut().take(self.levels as usize) {
            let index = index_of(gpa, level);
            let entry = read_entry(self.platform, table, index)?;
            *slot = Step {
                table,
                index,
                entry,
                level,
            };
            // One step per slot of `path.steps`: at most 5.
            path.len = path.len.saturating_add(1);
            if !entry.is_mapped() || is_leaf(entry, level) {
                break;
            }
            table = entry.address();
            // Not a leaf, so `level` is 2 or more (`is_leaf` holds at 1 and below).
            level = level.saturating_sub(1);
        }
        Ok(path)
    }

    /// The leaf that maps `gpa`, or `None` for a hole.
    ///
    /// # Errors
    /// As [`Tables::walk`].
    pub(crate) fn leaf(&self, root: Hpa, gpa: u64) -> Result<Option<Step>, EptError> {
        Ok(self.walk(root, gpa)?.leaf())
    }

    /// The host address `gpa` maps to through the leaf `leaf`.
    pub(crate) fn hpa_of(leaf: Step, gpa: u64) -> Hpa {
        // A level's size is a power of two from 4 KiB: one less cannot wrap.
        Hpa(leaf.entry.address().0 | (gpa & level_size(leaf.level).wrapping_sub(1)))
    }

    /// A zeroed table from the pool.
    ///
    /// # Errors
    /// [`EptError::PoolExhausted`]; an unmapped pool frame (the frame goes back).
    pub(crate) fn new_table(&mut self) -> Result<Hpa, EptError> {
        let hpa = self
            .pool
            .allocate(Usage::Table)
            .ok_or(EptError::PoolExhausted)?;
        match FramePtr::of(self.platform, hpa) {
            Ok(frame) => {
                frame.zero();
                Ok(hpa)
            }
            Err(e) => {
                self.pool.release(hpa);
                Err(e)
            }
        }
    }

    /// The tables [`Tables::map`] would create to map a leaf at `level` for `gpa` in
    /// the hierarchy at `root`: one for each level between the hole the walk ends in and
    /// `level`. `None` when `map` would refuse with [`EptError::Overlap`] (a leaf, or at
    /// `level` a table, is mapped there already).
    ///
    /// # Errors
    /// As [`Tables::walk`].
    pub(crate) fn tables_to_map(
        &self,
        root: Hpa,
        gpa: u64,
        level: u8,
    ) -> Result<Option<usize>, EptError> {
        let Some(last) = self.walk(root, gpa)?.last() else {
            return Ok(None);
        };
        if last.entry.is_mapped() {
            return Ok(None);
        }
        Ok(last.level.checked_sub(level).map(usize::from))
    }

    /// Writes `entry` as the leaf for `gpa` at `level` into a hole, creating the tables
    /// above it. Anything already mapped there is [`EptError::Overlap`].
    ///
    /// # Errors
    /// [`EptError::Overlap`]; [`EptError::PoolExhausted`] (tables created before stay,
    /// empty: the mapping is not made); as [`Tables::walk`].
    pub(crate) fn map(
        &mut self,
        root: Hpa,
        gpa: u64,
        level: u8,
        entry: EptEntry,
    ) -> Result<(), EptError> {
        if gpa >= reach(self.levels) {
            return Err(EptError::BeyondWalkReach(introvisor::Pa(gpa)));
        }
        let mut table = root;
        let mut at = self.levels;
        while at > level {
            let index = index_of(gpa, at);
            let e = read_entry(self.platform, table, index)?;
            table = if !e.is_mapped() {
                let t = self.new_table()?;
                write_entry(self.platform, table, index, EptEntry::table(t))?;
                t
            } else if is_leaf(e, at) {
                return Err(EptError::Overlap);
            } else {
                e.address()
            };
            // `at > level` (the loop condition): never below zero.
            at = at.saturating_sub(1);
        }
        let index = index_of(gpa, level);
        if read_entry(self.platform, table, index)?.is_mapped() {
            return Err(EptError::Overlap);
        }
        write_entry(self.platform, table, index, entry)
    }

    /// Splits the large leaf `leaf` into a table of 512 leaves one level down with the
    /// same frames and attributes, and returns the new table. The table is complete before
    /// the one store that links it.
    ///
    /// # Errors
    /// [`EptError::PoolExhausted`] (nothing changed); [`EptError::LargePageUnsupported`]
    /// when the level below cannot hold leaves (never for levels 2 and 3).
    pub(crate) fn split(&mut self, leaf: Step) -> Result<Hpa, EptError> {
        let child_level = leaf.level.saturating_sub(1);
        if child_level == 0 || !self.caps.leaf_at(child_level) {
            return Err(EptError::LargePageUnsupported(child_level));
        }
        let table = self.new_table()?;
        let frame = FramePtr::of(self.platform, table)?;
        let size = level_size(child_level);
        let base = leaf.entry.address().0;
        let mut flags = leaf.entry.0 & !ADDRESS_MASK;
        if child_level == 1 {
            flags &= !EptFlags::LARGE_PAGE.bits();
        }
        for i in 0..512u64 {
            #[expect(
                clippy::arithmetic_side_effects,
                reason = "`base` is an entry's address (bits 51:12), `i` < 2^9 and `size` <= \
                          2^48 (`level_size` clamps): the sum is below 2^58"
            )]
            let entry = (base + i * size) | flags;
            frame.store(i as usize, entry)?;
        }
        write_entry(
            self.platform,
            leaf.table,
            leaf.index,
            EptEntry::table(table),
        )?;
        Ok(table)
    }

    /// If the table under `parent` holds 512 leaves that map one aligned, contiguous
    /// range with the same attributes, and a leaf can exist at `parent`'s level, replaces
    /// it with one large leaf and returns the table (to retire after a shootdown).
    ///
    /// # Errors
    /// A host frame the platform does not map.
    pub(crate) fn try_merge(&mut self, parent: Step) -> Result<Option<Hpa>, EptError> {
        let level = parent.level;
        if level < 2
            || !self.caps.leaf_at(level)
            || !parent.entry.is_present()
            || is_leaf(parent.entry, level)
        {
            return Ok(None);
        }
        let table = parent.entry.address();
        // `level >= 2` (checked above).
        let child_level = level.saturating_sub(1);
        let child_size = level_size(child_level);
        let frame = FramePtr::of(self.platform, table)?;
        let first = EptEntry(frame.load(0)?);
        if !first.is_mapped()
            || !is_leaf(first, child_level)
            || first.address().0 & level_size(level).wrapping_sub(1) != 0
        {
            return Ok(None);
        }
        let attributes = first.0 & MERGE_MASK;
        for i in 1..512u64 {
            let e = EptEntry(frame.load(i as usize)?);
            if !e.is_mapped()
                || !is_leaf(e, child_level)
                || e.0 & MERGE_MASK != attributes
                || Some(e.address().0)
                    != i.checked_mul(child_size)
                        .and_then(|offset| first.address().0.checked_add(offset))
            {
                return Ok(None);
            }
        }
        let merged = EptEntry(
            first.address().0
                | (attributes & !(EptFlags::ACCESSED.bits() | EptFlags::DIRTY.bits()))
                | EptFlags::LARGE_PAGE.bits(),
        );
        write_entry(self.platform, parent.table, parent.index, merged)?;
        self.pool.retire(table);
        Ok(Some(table))
    }

    /// The number of tables in the hierarchy at `root` (the root included).
    ///
    /// # Errors
    /// A host frame the platform does not map.
    pub(crate) fn count_tables(&self, root: Hpa) -> Result<usize, EptError> {
        self.count_below(root, self.levels)
    }

    fn count_below(&self, table: Hpa, level: u8) -> Result<usize, EptError> {
        let mut n = 1usize;
        if level <= 1 {
            return Ok(n);
        }
        let frame = FramePtr::of(self.platform, table)?;
        for i in 0..512 {
            let e = EptEntry(frame.load(i)?);
            if e.is_mapped() && !is_leaf(e, level) {
                // `level >= 2` (checked above).
                n = n.saturating_add(self.count_below(e.address(), level.saturating_sub(1))?);
            }
        }
        Ok(n)
    }

    /// A copy of the hierarchy at `root`, with every leaf's rights set to `access` when
    /// given. The pool must hold [`Tables::count_tables`] frames (checked first: on
    /// [`EptError::PoolExhausted`] nothing was taken).
    ///
    /// # Errors
    /// [`EptError::PoolExhausted`]; a host frame the platform does not map.
    pub(crate) fn copy(
        &mut self,
        root: Hpa,
        access: Option<MemoryAccess>,
    ) -> Result<Hpa, EptError> {
        if self.count_tables(root)? > self.pool.available() {
            return Err(EptError::PoolExhausted);
        }
        self.copy_below(root, self.levels, access)
    }

    fn copy_below(
        &mut self,
        table: Hpa,
        level: u8,
        access: Option<MemoryAccess>,
    ) -> Result<Hpa, EptError> {
        let copy = self.new_table()?;
        let src = FramePtr::of(self.platform, table)?;
        let dst = FramePtr::of(self.platform, copy)?;
        for i in 0..512 {
            let e = EptEntry(src.load(i)?);
            let out = if !e.is_mapped() {
                e
            } else if is_leaf(e, level) {
                match access {
                    Some(a) => e.with_access(a),
                    None => e,
                }
            } else {
                // Not a leaf, so `level` is 2 or more (`is_leaf` holds at 1 and below).
                EptEntry::table(self.copy_below(e.address(), level.saturating_sub(1), access)?)
            };
            dst.store(i, out.0)?;
        }
        Ok(copy)
    }

    /// Frees every table of the hierarchy at `root` (the root included): for a hierarchy
    /// no CPU can reach any more (unlinked, and shot down).
    ///
    /// # Errors
    /// A host frame the platform does not map (the tables visited so far are freed).
    pub(crate) fn free_all(&mut self, root: Hpa) -> Result<(), EptError> {
        self.free_below(root, self.levels)
    }

    fn free_below(&mut self, table: Hpa, level: u8) -> Result<(), EptError> {
        if level > 1 {
            let frame = FramePtr::of(self.platform, table)?;
            for i in 0..512 {
                let e = EptEntry(frame.load(i)?);
                if e.is_mapped() && !is_leaf(e, level) {
                    self.free_below(e.address(), level.saturating_sub(1))?;
                }
            }
        }
        self.pool.release(table);
        Ok(())
    }

    /// Calls `visit` for every entry of the hierarchy at `root` that is mapped, with the
    /// guest-physical address it starts at and its step; tables before their entries.
    ///
    /// # Errors
    /// The first error of `visit`; a host frame the platform does not map.
    pub(crate) fn visit(
        &self,
        root: Hpa,
        visit: &mut dyn FnMut(u64, Step) -> Result<(), EptError>,
    ) -> Result<(), EptError> {
        self.visit_below(root, self.levels, 0, visit)
    }

    fn visit_below(
        &self,
        table: Hpa,
        level: u8,
        base: u64,
        visit: &mut dyn FnMut(u64, Step) -> Result<(), EptError>,
    ) -> Result<(), EptError> {
        let frame = FramePtr::of(self.platform, table)?;
        for i in 0..512 {
            let entry = EptEntry(frame.load(i)?);
            if !entry.is_mapped() {
                continue;
            }
            let gpa = base | ((i as u64) << level_shift(level));
            let step = Step {
                table,
                index: i,
                entry,
                level,
            };
            visit(gpa, step)?;
            if !is_leaf(entry, level) {
                // Not a leaf, so `level` is 2 or more (`is_leaf` holds at 1 and below).
                self.visit_below(entry.address(), level.saturating_sub(1), gpa, visit)?;
            }
        }
        Ok(())
    }
}
