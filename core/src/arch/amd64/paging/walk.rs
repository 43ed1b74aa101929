//! The walker: one loop over a mode's description (see the [module documentation](super)).

use super::entry::EntryFlags;
use super::modes::{Bit7, LEVEL4, LEVEL5, ModeDesc, bit_range};
use super::{Paging, PagingMode};
use crate::access::MemoryAccess;
use crate::addr::{Pa, Va};
use crate::arch::{PhysRead, Translation, WalkStep, fault};
use crate::error::FaultReason;
use crate::error::VmiError;

/// What a walk under one [`Paging`] computes from it alone, once: built by
/// [`Paging::plan`] (a [`VmiCore`](crate::VmiCore) builds it at each `set_paging`), so
/// that a walk starts with its masks in hand. Opaque: a plan is only ever the plan of
/// the paging it is passed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkPlan {
    /// The address bits of an entry that references a table: bits MAXPHYADDR-1:12 of an
    /// 8-byte entry (also the frame bits of a leaf, whose offset bits are then cleared),
    /// 31:12 of a 4-byte one.
    table_mask: u64,
    /// 8-byte entries: the reserved bits at or above MAXPHYADDR of a level with rights
    /// (bit 63 included unless EFER.NXE = 1).
    high_reserved: u64,
    /// Over lent memory in 4/5-level paging ([`walk_lent`]): what is added to an entry
    /// before it is tested. It takes 1 away, which clears P in a present entry (bits
    /// 62:1 unchanged) and sets bit 0 in an absent one (the borrow); when XD takes
    /// execution away (8-byte entries, EFER.NXE = 1) it also adds 2^63, which flips XD,
    /// so that the AND of the adjusted entries holds W (bit 1), U/S (bit 2) and "no XD
    /// anywhere" (bit 63) at once. Its bit 63 is clear exactly when XD counts
    /// ([`WalkPlan::no_exec`]).
    adjust: u64,
    /// 4/5-level paging: the bits of an adjusted entry above the leaf that the walk
    /// tests, each 0 on the common path: P inverted (bit 0), PS (bit 7), the address bits
    /// 51:12, and bit 63 when it is reserved (EFER.NXE = 0). A PTE's are the same but PS
    /// (bit 7 is PAT there).
    upper_test: u64,
    /// 2^(MAXPHYADDR - 12), the frames below MAXPHYADDR: an entry's tested bits rotated
    /// right by 12 are below this (and below the pages of memory, for a table) exactly
    /// when P = 1, PS = 0 (above the leaf), no reserved bit is set and the frame is in
    /// range.
    phys_frames: u64,
}

impl Paging {
    /// The walk's plan for this paging: what every walk would otherwise compute from it.
    pub const fn plan(&self) -> WalkPlan {
        let desc = self.mode.desc();
        let maxphy = self.maxphy();
        let phys_mask = self.phys_mask();
        let wide = desc.entry_size == 8;
        let high = bit_range(maxphy, desc.high_reserved_end as u32);
        let xd = EntryFlags::EXECUTE_DISABLE.bits();
        WalkPlan {
            table_mask: if wide {
                phys_mask & !0xfff
            } else {
                0xffff_f000
            },
            high_reserved: if self.nxe { high } else { high | xd },
            adjust: if wide && self.nxe {
                xd.wrapping_sub(1)
            } else {
                u64::MAX
            },
            upper_test: LENT_TESTED | EntryFlags::PAGE_SIZE.bits() | if self.nxe { 0 } else { xd },
            // MAXPHYADDR is 32..=52: the shift is 20..=40.
            phys_frames: 1u64 << maxphy.wrapping_sub(12),
        }
    }
}

impl WalkPlan {
    /// The XD bit (63) when it takes execution away (8-byte entries, EFER.NXE = 1), else
    /// 0: a leaf is executable when the OR of the entries has none of these bits.
    #[inline(always)]
    const fn no_exec(&self) -> u64 {
        !self.adjust & EntryFlags::EXECUTE_DISABLE.bits()
    }
}

/// The bits [`walk_lent`] tests in every adjusted 4/5-level entry: P (inverted by the
/// plan's `adjust`) and the address bits 51:12 (Tables 4-14 to 4-20), whose part at or
/// above MAXPHYADDR is reserved.
const LENT_TESTED: u64 = EntryFlags::PRESENT.bits() | 0x000f_ffff_ffff_f000;

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
    walk_planned(mem, paging, &paging.plan(), va, root, observe)
}

/// [`walk`] with the plan of `paging` given.
#[inline]
pub(crate) fn walk_planned(
    mem: &(impl PhysRead + ?Sized),
    paging: &Paging,
    plan: &WalkPlan,
    va: Va,
    root: Pa,
    observe: impl FnMut(WalkStep),
) -> Result<Translation, VmiError> {
    match paging.mode {
        PagingMode::Level4 => walk_long::<4>(mem, paging, plan, &LEVEL4, va, root, observe),
        PagingMode::Level5 => walk_long::<5>(mem, paging, plan, &LEVEL5, va, root, observe),
        _ => walk_other(mem, paging, plan, va, root, observe),
    }
}

/// [`walk_planned`] without an observer: in 4- and 5-level paging, over memory the
/// reader lends as one slice ([`PhysRead::physical_memory`]), [`translate_lent`]. The
/// result is always the one [`walk_planned`] gives.
#[inline]
pub(crate) fn translate_planned<M: PhysRead + ?Sized>(
    mem: &M,
    paging: &Paging,
    plan: &WalkPlan,
    va: Va,
    root: Pa,
) -> Result<Translation, VmiError> {
    match mem.physical_memory() {
        Some(bytes) => translate_lent(bytes, || (mem, paging, plan), paging, plan, va, root),
        None => walk_planned(mem, paging, plan, va, root, |_| {}),
    }
}

/// [`walk_planned`] through the reader `reader` builds (with `paging` and `plan` again),
/// `bytes` being its [`PhysRead::physical_memory`]: in 4- and 5-level paging, the walk of
/// [`walk_lent`], with `reader` called only when it hands over (to [`lent_rest`]). The
/// result is always the one [`walk_planned`] gives.
#[inline]
pub(crate) fn translate_lent<'a, R: PhysRead>(
    bytes: &[u8],
    reader: impl FnOnce() -> (R, &'a Paging, &'a WalkPlan),
    paging: &Paging,
    plan: &WalkPlan,
    va: Va,
    root: Pa,
) -> Result<Translation, VmiError> {
    let lent = match paging.mode {
        PagingMode::Level4 => walk_lent::<4>(bytes, paging, plan, va, root),
        PagingMode::Level5 => walk_lent::<5>(bytes, paging, plan, va, root),
        _ => return walk_planned(&reader().0, paging, plan, va, root, |_| {}),
    };
    match lent {
        Ok(t) => Ok(t),
        Err(rest) => lent_rest(reader, va, root, rest),
    }
}

/// Where a [`walk_lent`] hands over to [`lent_rest`]: the level whose entry it did not
/// take, the table that holds that entry, and the AND of the adjusted entries above,
/// that entry's possibly included. Including it changes nothing the rest of the walk
/// reads: [`Walker::check`] folds the same entry in again (AND and OR are idempotent,
/// and the adjustment only changes bit 63, inverted in the OR, and bit 0), except when
/// the entry is not present, where the borrow may change other bits and the walk then
/// fails without reading the rights.
#[derive(Clone, Copy)]
struct Resume {
    level: u8,
    rights: u64,
    table: u64,
}

/// The translation of `va` by a large leaf at `level` (2: 2 MiB, 3: 1 GiB) of 4/5-level
/// paging over lent memory, whose adjusted entry is `adjusted` and the AND of the
/// adjusted entries down to it `rights` (see [`WalkPlan::adjust`]); `None` unless the
/// entry is present, has PS, may be a leaf at that level (level 3 only with 1 GiB pages,
/// [`Paging::page_1gb`]) and
/// has no reserved bit: bits MAXPHYADDR..=51, bit 63 without EFER.NXE, and the bits
/// between the PAT bit 12 and the page base, 20:13 or 29:13 (SDM Vol. 3A Tables 4-16,
/// 4-18). The full walk then decides, as it does for every other case.
#[inline]
fn large_leaf(
    paging: &Paging,
    plan: &WalkPlan,
    level: u32,
    adjusted: u64,
    rights: u64,
    va: Va,
) -> Option<Translation> {
    if level == 3 && !paging.page_1gb {
        return None;
    }
    // `adjust` took P away (or added 2^63 as well): the entry as the guest wrote it.
    let raw = adjusted.wrapping_sub(plan.adjust);
    // Level 3 maps 1 GiB, level 2 2 MiB (the only levels this is called for).
    let shift: u32 = if level == 3 { 30 } else { 21 };
    let reserved = plan.high_reserved | bit_range(13, shift);
    let must = EntryFlags::PRESENT.bits() | EntryFlags::PAGE_SIZE.bits();
    if raw & must != must || raw & reserved != 0 {
        return None;
    }
    let offset = (1u64 << shift).wrapping_sub(1);
    let exec = ((rights | plan.adjust) >> 63) as u8;
    Some(Translation {
        pa: Pa((raw & plan.table_mask & !offset) | (va.0 & offset)),
        page_size: 1 << shift,
        access: MemoryAccess::from_bits_retain(
            1 | (rights & EntryFlags::WRITABLE.bits()) as u8 | exec << 2,
        ),
        user: rights & EntryFlags::USER.bits() != 0,
    })
}

/// 4- or 5-level paging (`LEVELS`) over `bytes`, the memory the reader lends from address
/// 0: the common path, one test a level; anything else is handed to [`lent_rest`] as a
/// [`Resume`].
///
/// Each entry, once read, is adjusted by the plan (`adjust`: P cleared when present, XD
/// flipped) and the AND of the adjusted entries is the rights (§4.6.1: W and U/S where
/// every level has them, X where none has XD), without a branch. The entry's tested bits
/// (`upper_test`, without PS for a PTE) rotated right by 12 are the next frame when, and only
/// when, the entry is present, is not a large leaf, has no reserved bit (PS of a PML5E or
/// PML4E, bits 51:MAXPHYADDR, XD without EFER.NXE) and, above the leaf, names a table in
/// the slice: one compare against the number of pages (a PTE's frame, against
/// MAXPHYADDR) decides all of it. The handover happens at the entry that fails it, or at
/// the root for a non-canonical address or a root past the slice. Accessed and dirty bits
/// are never written.
/// A large leaf at level 2 or 3 is answered by [`large_leaf`] without the handover.
#[inline(always)]
fn walk_lent<const LEVELS: u8>(
    bytes: &[u8],
    paging: &Paging,
    plan: &WalkPlan,
    va: Va,
    root: Pa,
) -> Result<Translation, Resume> {
    // The root's table: CR3 bits M-1:12 (Tables 4-12, 4-13).
    let root_table = root.0 & plan.table_mask;
    let from_root = Resume {
        level: LEVELS,
        rights: u64::MAX,
        table: root_table,
    };
    // Canonical for 48 or 57 bits (SDM Vol. 1 §3.3.7.1), before any memory is read.
    let unused: u32 = if LEVELS == 5 { 7 } else { 16 };
    if (((va.0 << unused) as i64) >> unused) as u64 != va.0 {
        return Err(from_root);
    }
    // The slice as tables of 512 entries, the pages below MAXPHYADDR only: a frame
    // number is in range when it is below `frames`.
    let (entries, _) = bytes.as_chunks::<8>();
    let (tables, _) = entries.as_chunks::<512>();
    let below_maxphy = usize::try_from(plan.phys_frames).unwrap_or(usize::MAX);
    let tables = tables.get(..below_maxphy).unwrap_or(tables);
    let frames = tables.len() as u64;
    let mut frame = root_table >> 12;
    let mut rights = u64::MAX;
    // The entry of `va` at `$level` in the table at `frame`, adjusted. Every frame but
    // the root's was checked against `frames` with the entry that names it.
    macro_rules! entry {
        ($level:literal) => {{
            let Some(table) = usize::try_from(frame).ok().and_then(|f| tables.get(f)) else {
                return Err(from_root);
            };
            let index = (va.0 >> (12 + 9 * ($level - 1))) as usize & 0x1ff;
            let Some(raw) = table.get(index) else {
                return Err(from_root);
            };
            u64::from_le_bytes(*raw).wrapping_add(plan.adjust)
        }};
    }
    macro_rules! upper {
        ($level:literal) => {{
            let adjusted = entry!($level);
            // Before the test: the handover's rights may hold this entry already (see
            // `Resume`), and the adjusted entry is then only needed masked.
            rights &= adjusted;
            let next = (adjusted & plan.upper_test).rotate_right(12);
            if next >= frames {
                // A large leaf is answered here; anything else (and any large leaf
                // with a reserved bit) goes to the full walk, which says why.
                if ($level == 2 || $level == 3)
                    && let Some(t) = large_leaf(paging, plan, $level, adjusted, rights, va)
                {
                    return Ok(t);
                }
                return Err(Resume {
                    level: $level,
                    rights,
                    table: frame << 12,
                });
            }
            frame = next;
        }};
    }
    if LEVELS == 5 {
        upper!(5);
    }
    upper!(4);
    upper!(3);
    upper!(2);
    let adjusted = entry!(1);
    rights &= adjusted;
    let leaf = (adjusted & plan.upper_test & !EntryFlags::PAGE_SIZE.bits()).rotate_right(12);
    if leaf >= plan.phys_frames {
        return Err(Resume {
            level: 1,
            rights,
            table: frame << 12,
        });
    }
    // W is bit 1 of the entries and of the rights; X is bit 63 of the AND (no XD at any
    // level), or always with EFER.NXE = 0, where the plan's `adjust` has bit 63 set; U/S
    // is bit 2.
    const {
        assert!(EntryFlags::WRITABLE.bits() == MemoryAccess::W.bits() as u64);
        assert!(MemoryAccess::R.bits() == 1 && MemoryAccess::X.bits() == 4);
    }
    let exec = ((rights | plan.adjust) >> 63) as u8;
    Ok(Translation {
        pa: Pa((leaf << 12) | (va.0 & 0xfff)),
        page_size: 1 << 12,
        access: MemoryAccess::from_bits_retain(
            1 | (rights & EntryFlags::WRITABLE.bits()) as u8 | exec << 2,
        ),
        user: rights & EntryFlags::USER.bits() != 0,
    })
}

/// The rest of a [`walk_lent`], from where it handed over: the canonical check, then
/// [`Walker::step`] level by level from `rest.level` with the rights of the levels above,
/// reading through `mem` (so past the slice's end too) and naming every fault as
/// [`walk_long`] does. Out of line: a fault, a large leaf, a table past the slice.
#[cold]
#[inline(never)]
fn lent_rest<'a, R: PhysRead>(
    reader: impl FnOnce() -> (R, &'a Paging, &'a WalkPlan),
    va: Va,
    root: Pa,
    rest: Resume,
) -> Result<Translation, VmiError> {
    let (mem, paging, plan) = reader();
    let mem = &mem;
    let desc = paging.mode.desc();
    // A resumed walk's address was canonical; this is the check of one that never began.
    let mut w = Walker::new(mem, paging, plan, desc, va, root, |_| {})?;
    // The adjusted entries carry W and U/S as they are, and bit 63 inverted when XD
    // counts (when it does not, the walker ignores the OR's bit 63).
    w.rights_and = rest.rights;
    w.rights_or = !rest.rights & EntryFlags::EXECUTE_DISABLE.bits();
    let mut table = Pa(rest.table);
    // At most `rest.level` (4 or 5) iterations.
    for level in (1..=rest.level).rev() {
        match w.step(level, table)? {
            Step::Leaf(t) => return Ok(t),
            Step::Table(next) => table = next,
        }
    }
    // Level 1 always maps a page; this is the bound made explicit.
    Err(fault(va, root, 0, table, 0, FaultReason::NotPresent))
}

/// The translations of `count` consecutive 4 KiB pages from the page of `va`, in order,
/// each given to `each` (which returns whether to go on); the first failure ends it and
/// is returned. Each translation is the one [`walk_planned`] gives for its page.
///
/// A range walk: after a full walk whose leaf is a PTE (4- and 5-level paging), the
/// pages that follow in the same page table are read from the consecutive PTEs, each
/// checked as the walk's last level checks one (present, reserved bits including those
/// at or above MAXPHYADDR, and the rights combined with the levels above, which do not
/// change within the table); an entry that fails those checks gets a full walk, which
/// names the failure. The pages of a large leaf after the first are its next 4 KiB,
/// without a walk. A table boundary (every 2 MiB) starts a full walk again, with its
/// canonical check.
pub(crate) fn walk_pages_planned(
    mem: &(impl PhysRead + ?Sized),
    paging: &Paging,
    plan: &WalkPlan,
    va: Va,
    root: Pa,
    count: u64,
    mut each: impl FnMut(Translation) -> bool,
) -> Result<(), VmiError> {
    const PAGE: u64 = 4096;
    let long = matches!(paging.mode, PagingMode::Level4 | PagingMode::Level5);
    let present = EntryFlags::PRESENT.bits();
    let mut page = va.0 & !(PAGE - 1);
    let mut left = count;
    while left > 0 {
        // A full walk; the entries above the leaf are folded into the rights a PTE of the
        // same table combines with (every level has rights in 4- and 5-level paging).
        let (mut upper_and, mut upper_or) = (u64::MAX, 0u64);
        let mut leaf: Option<WalkStep> = None;
        let t = walk_planned(mem, paging, plan, Va(page), root, |step| {
            if let Some(above) = leaf.replace(step) {
                upper_and &= above.value;
                upper_or |= above.value;
            }
        })?;
        left = left.saturating_sub(1);
        if !each(t) {
            return Ok(());
        }
        page = page.wrapping_add(PAGE);
        if t.page_size > PAGE && t.page_size.is_power_of_two() {
            // The rest of a large leaf: the same rights, the next frames.
            let mut pa = t.pa.0;
            while left > 0 && page & t.page_size.wrapping_sub(1) != 0 {
                pa = pa.wrapping_add(PAGE);
                left = left.saturating_sub(1);
                if !each(Translation { pa: Pa(pa), ..t }) {
                    return Ok(());
                }
                page = page.wrapping_add(PAGE);
            }
            continue;
        }
        let Some(mut entry) = leaf.filter(|l| long && l.level == 1).map(|l| l.entry) else {
            continue;
        };
        // The next PTEs of the same table (a table is 512 entries, 4 KiB aligned).
        while left > 0 && entry.0 & 0xff8 != 0xff8 {
            entry = Pa(entry.0.wrapping_add(8));
            // Lent memory first; else the reader's own read (the page cache, the
            // driver). A failed read ends the run: the full walk then says why.
            let Some(value) = mem
                .read_u64_fast(entry)
                .or_else(|| mem.read_u64(entry).ok())
            else {
                break;
            };
            // As `Walker::check` at level 1: P, then the reserved bits (a PTE has no PS
            // and no fixed reserved bits in these modes; bit 7 is PAT).
            if (value ^ present) & (plan.high_reserved | present) != 0 {
                break;
            }
            let and = upper_and & value;
            let exec = u8::from((upper_or | value) & plan.no_exec() == 0);
            let t = Translation {
                pa: Pa(value & plan.table_mask),
                page_size: PAGE,
                access: MemoryAccess::from_bits_retain(
                    MemoryAccess::R.bits()
                        | (and & EntryFlags::WRITABLE.bits()) as u8
                        | exec << MemoryAccess::X.bits().trailing_zeros(),
                ),
                user: and & EntryFlags::USER.bits() != 0,
            };
            left = left.saturating_sub(1);
            if !each(t) {
                return Ok(());
            }
            page = page.wrapping_add(PAGE);
        }
    }
    Ok(())
}

/// Walks that a batch interleaves: [`walk_many_planned`] takes the addresses this many at
/// a time, each level of every walk before the next level of any.
pub(crate) const LANES: usize = 16;

/// [`walk_planned`] for each of `vas` (at most [`LANES`] of them, the rest are left),
/// into `out` in the same order: in 4- and 5-level paging the walks are interleaved,
/// level by level, so that the memory accesses of different walks overlap; each result
/// is the one [`walk_planned`] gives.
pub(crate) fn walk_many_planned(
    mem: &(impl PhysRead + ?Sized),
    paging: &Paging,
    plan: &WalkPlan,
    vas: &[Va],
    root: Pa,
    out: &mut [Result<Translation, VmiError>],
) {
    match paging.mode {
        PagingMode::Level4 => walk_long_many::<4>(mem, paging, plan, vas, root, out),
        PagingMode::Level5 => walk_long_many::<5>(mem, paging, plan, vas, root, out),
        _ => {
            for (va, slot) in vas.iter().zip(out.iter_mut()) {
                *slot = walk_other(mem, paging, plan, *va, root, |_| {});
            }
        }
    }
}

/// One walk of [`walk_long_many`] still under way: its address, its index in the batch,
/// the table it reads next and the rights its walk has combined so far.
#[derive(Clone, Copy)]
struct Lane {
    va: Va,
    index: usize,
    table: Pa,
    rights_and: u64,
    rights_or: u64,
}

/// The interleaved walks of [`walk_many_planned`] in 4- or 5-level paging.
///
/// Each level reads the entry of every walk still under way, then the next level those
/// whose entry referenced a table. The walks that stop (a leaf, a fault) leave the list
/// as they stop, the others move up in it: no lane is visited, nor branched on, once its
/// walk is over, so that page sizes mixed at random cost no mispredictions there.
#[inline(always)]
fn walk_long_many<const LEVELS: u8>(
    mem: &(impl PhysRead + ?Sized),
    paging: &Paging,
    plan: &WalkPlan,
    vas: &[Va],
    root: Pa,
    out: &mut [Result<Translation, VmiError>],
) {
    let desc: &'static ModeDesc = if LEVELS == 5 { &LEVEL5 } else { &LEVEL4 };
    let start = Pa(root.0 & plan.table_mask);
    let mut lanes = [Lane {
        va: Va(0),
        index: 0,
        table: start,
        rights_and: u64::MAX,
        rights_or: 0,
    }; LANES];
    let mut live = 0usize;
    for (index, (va, slot)) in vas.iter().zip(out.iter_mut()).take(LANES).enumerate() {
        if paging.mode.is_valid_va(*va) {
            // At most `LANES` addresses: `live` stays below `LANES` here.
            if let Some(lane) = lanes.get_mut(live) {
                lane.va = *va;
                lane.index = index;
            }
            live = live.wrapping_add(1);
        } else {
            *slot = Err(fault(
                *va,
                root,
                desc.levels,
                Pa(0),
                0,
                FaultReason::NonCanonical,
            ));
        }
    }
    // Each level of every walk, then the next: the walks' loads do not depend on one
    // another, so the CPU overlaps them.
    if LEVELS == 5 {
        live = lanes_level::<LEVELS, 5, _>(mem, paging, plan, root, &mut lanes, live, out);
    }
    live = lanes_level::<LEVELS, 4, _>(mem, paging, plan, root, &mut lanes, live, out);
    live = lanes_level::<LEVELS, 3, _>(mem, paging, plan, root, &mut lanes, live, out);
    live = lanes_level::<LEVELS, 2, _>(mem, paging, plan, root, &mut lanes, live, out);
    live = lanes_level::<LEVELS, 1, _>(mem, paging, plan, root, &mut lanes, live, out);
    // Level 1 always maps a page or fails, so no walk is left; this is the bound made
    // explicit.
    for lane in lanes.iter().take(live) {
        if let Some(slot) = out.get_mut(lane.index) {
            *slot = Err(fault(
                lane.va,
                root,
                0,
                lane.table,
                0,
                FaultReason::NotPresent,
            ));
        }
    }
}

/// One level of the first `live` walks of `lanes` ([`walk_long_many`]); returns how many
/// go on, moved to the front of `lanes` in their order. The level is a constant here, so
/// that every lookup in the mode's description folds, as in [`walk_long`]; an entry the
/// reader cannot read the fast way finishes that walk out of line ([`Walker::finish`]).
#[inline(always)]
fn lanes_level<const LEVELS: u8, const LEVEL: u8, M: PhysRead + ?Sized>(
    mem: &M,
    paging: &Paging,
    plan: &WalkPlan,
    root: Pa,
    lanes: &mut [Lane; LANES],
    live: usize,
    out: &mut [Result<Translation, VmiError>],
) -> usize {
    const { assert!(LANES.is_power_of_two()) };
    let desc: &'static ModeDesc = if LEVELS == 5 { &LEVEL5 } else { &LEVEL4 };
    let mut kept = 0usize;
    for n in 0..live.min(LANES) {
        let Some(lane) = lanes.get(n).copied() else {
            break;
        };
        let mut w = Walker::unchecked(mem, paging, plan, desc, lane.va, root, |_: WalkStep| {});
        w.rights_and = lane.rights_and;
        w.rights_or = lane.rights_or;
        let (shift, _, entry) = w.locate(LEVEL, lane.table);
        let Some(value) = w.mem.read_u64_fast(entry) else {
            // The rest of this walk out of line, one level after the other.
            let result = w.finish(LEVEL, lane.table);
            if let Some(slot) = out.get_mut(lane.index) {
                *slot = result;
            }
            continue;
        };
        let slot = out.get_mut(lane.index);
        if let Some((table, rights_and, rights_or)) = w.lane(LEVEL, shift, entry, value, slot) {
            // Still walking: `kept <= n`, so the lane moves up (or stays), over one whose
            // walk has ended or that has been moved already. The mask keeps the index in
            // bounds without a check.
            if let Some(to) = lanes.get_mut(kept & (LANES - 1)) {
                *to = Lane {
                    table,
                    rights_and,
                    rights_or,
                    ..lane
                };
            }
            kept = kept.wrapping_add(1);
        }
    }
    kept
}

/// 4- or 5-level paging (`LEVELS`, described by `desc`): the levels written out.
///
/// Inlined in optimized builds only: unoptimized, each inlined copy keeps its own stack
/// slots for every level, and [`walk_planned`] holding both copies took 16 KiB of stack,
/// half of what a firmware core runs on (host-test's `embedding.rs`).
#[cfg_attr(not(debug_assertions), inline(always))]
#[cfg_attr(debug_assertions, inline(never))]
fn walk_long<const LEVELS: u8>(
    mem: &(impl PhysRead + ?Sized),
    paging: &Paging,
    plan: &WalkPlan,
    desc: &'static ModeDesc,
    va: Va,
    root: Pa,
    observe: impl FnMut(WalkStep),
) -> Result<Translation, VmiError> {
    let mut w = Walker::new(mem, paging, plan, desc, va, root, observe)?;
    // `Paging::root_table` in 4- and 5-level paging: the plan's table mask.
    let mut table = Pa(root.0 & plan.table_mask);
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
    plan: &WalkPlan,
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
    let mut w = Walker::new(mem, paging, plan, desc, va, root, observe)?;
    let mut table = paging.root_table(root);
    let mut level = desc.levels;
    // One iteration per level, top to bottom: bounded by the level count.
    for _ in 0..desc.levels {
        match w.step(level, table)? {
            Step::Leaf(t) => return Ok(t),
            Step::Table(next) => table = next,
        }
        // At most `desc.levels` iterations from `desc.levels`: never below zero.
        level = level.saturating_sub(1);
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
    /// What the paging says, computed once ([`Paging::plan`]).
    plan: WalkPlan,
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
        plan: &WalkPlan,
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
        Ok(Self::unchecked(mem, paging, plan, desc, va, root, observe))
    }

    /// [`Walker::new`] without its check of the address: for a lane of a batch, whose
    /// address was checked when the batch began.
    #[inline(always)]
    fn unchecked(
        mem: &'a M,
        paging: &'a Paging,
        plan: &WalkPlan,
        desc: &'static ModeDesc,
        va: Va,
        root: Pa,
        observe: F,
    ) -> Self {
        Self {
            mem,
            paging,
            desc,
            va,
            root,
            observe,
            wide: desc.entry_size == 8,
            plan: *plan,
            rights_and: u64::MAX,
            rights_or: 0,
        }
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
        // The index widths are the constant mode tables' (at most 10 bits a level, 45 in
        // all) and an entry is 4 or 8 bytes: no sum, shift or product here comes near
        // wrapping, and the entry's address wraps as the hardware's would.
        let shift = desc
            .index_bits
            .iter()
            .take(at)
            .fold(12u32, |sum, &b| sum.wrapping_add(u32::from(b)));
        let bits = desc.index_bits.get(at).copied().unwrap_or(0);
        let index = (self.va.0 >> shift) & (1u64 << bits).wrapping_sub(1);
        let entry = Pa(table
            .0
            .wrapping_add(index.wrapping_mul(u64::from(desc.entry_size))));
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

    /// [`Walker::check`] for a lane of a batch: the next table and the rights so far when
    /// the walk goes on; else the walk's result, written to `slot`.
    #[inline(always)]
    fn lane(
        &mut self,
        level: u8,
        shift: u32,
        entry: Pa,
        value: u64,
        slot: Option<&mut Result<Translation, VmiError>>,
    ) -> Option<(Pa, u64, u64)> {
        let result = match self.check(level, shift, entry, value) {
            Ok(Step::Table(next)) => return Some((next, self.rights_and, self.rights_or)),
            Ok(Step::Leaf(t)) => Ok(t),
            Err(e) => Err(e),
        };
        if let Some(slot) = slot {
            *slot = result;
        }
        None
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
                self.plan.high_reserved
            } else {
                self.plan.high_reserved | EntryFlags::EXECUTE_DISABLE.bits()
            };
            if ps {
                // Between the PAT bit 12 and the page base: bits 20:13 of a 2 MiB leaf,
                // 29:13 of a 1 GiB leaf (Tables 4-9, 4-16, 4-18).
                reserved |= bit_range(13, shift);
            }
        } else if ps {
            // 4 MiB PDE (Table 4-4): bits 21:(M-19), M = min(MAXPHYADDR, 40).
            // M is 32..=40: M - 19 is 13..=21.
            reserved |= bit_range(paging.maxphy_pse36().wrapping_sub(19), 22);
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
            // `shift` is 12..=48: the page size is a power of two, one less cannot wrap.
            let page_size = 1u64 << shift;
            let offset_mask = page_size.wrapping_sub(1);
            let base = if self.wide {
                // The frame bits only: not the PAT bit 12 of a large leaf, nor bit 63.
                value & self.plan.table_mask & !offset_mask
            } else if ps {
                // PSE-36: PDE bits (M-20):13 are physical-address bits (M-1):32.
                // M is 32..=40: M - 32 is 0..=8 bits.
                let high_bits = paging.maxphy_pse36().wrapping_sub(32);
                let high = (value >> 13) & (1u64 << high_bits).wrapping_sub(1);
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
            // X without a branch: 1 when the OR of the entries has no XD that counts
            // (the plan's `no_exec` is 0 when none does), moved to X's bit.
            let exec = u8::from(self.rights_or & self.plan.no_exec() == 0);
            let access = MemoryAccess::from_bits_retain(
                MemoryAccess::R.bits()
                    | (self.rights_and & EntryFlags::WRITABLE.bits()) as u8
                    | exec << MemoryAccess::X.bits().trailing_zeros(),
            );
            return Ok(Step::Leaf(Translation {
                pa: Pa(base | (va.0 & offset_mask)),
                page_size,
                access,
                user: self.rights_and & EntryFlags::USER.bits() != 0,
            }));
        }
        Ok(Step::Table(Pa(value & self.plan.table_mask)))
    }

    /// The error of a walk that stopped at `level`.
    #[inline(always)]
    fn fault(&self, level: u8, entry: Pa, value: u64, reason: FaultReason) -> VmiError {
        cold_fault(self.va, self.root, level, entry, value, reason)
    }
}

#[cfg(test)]
pub(super) mod tests {
    //! Byte fixtures, one small set of tables per mode, each entry written out by hand.

    use super::*;
    use crate::arch::Architecture;
    use crate::arch::amd64::Amd64;
    use crate::arch::amd64::{Access, AccessKind, RightsPolicy};
    use crate::error::PageFault;
    use std::vec;
    use std::vec::Vec;

    fn w32(mem: &mut [u8], at: u64, v: u32) {
        let at = at as usize;
        mem[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    pub(in crate::arch::amd64::paging) fn w64(mem: &mut [u8], at: u64, v: u64) {
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
    pub(in crate::arch::amd64::paging) fn level4_fixture() -> Vec<u8> {
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

    pub(in crate::arch::amd64::paging) const K: u64 = 0xffff_8000_0000_0000;

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

    /// A reader with no fast path: every entry through `read_u64`, as the core's page
    /// cache reads them.
    struct SlowOnly<'a>(&'a [u8]);
    impl PhysRead for SlowOnly<'_> {
        fn read_u64(&self, pa: Pa) -> Result<u64, VmiError> {
            self.0.read_u64(pa)
        }
        fn read_u32(&self, pa: Pa) -> Result<u32, VmiError> {
            self.0.read_u32(pa)
        }
    }

    /// A reader whose fast path fails for the entries of one table (as a driver's lent
    /// memory may not hold every frame), which the slow path reads.
    struct FastBut<'a>(&'a [u8], u64);
    impl PhysRead for FastBut<'_> {
        fn read_u64_fast(&self, pa: Pa) -> Option<u64> {
            (pa.0 & !0xfff != self.1).then(|| self.0.read_u64_fast(pa))?
        }
        fn read_u64(&self, pa: Pa) -> Result<u64, VmiError> {
            self.0.read_u64(pa)
        }
        fn read_u32(&self, pa: Pa) -> Result<u32, VmiError> {
            self.0.read_u32(pa)
        }
    }

    /// The interleaved batch walk gives, slot for slot, what one walk gives: in 4- and
    /// 5-level paging, over more addresses than one set of lanes, with every page size,
    /// faults at each level, non-canonical addresses and repeats, through a reader with
    /// a fast path, one without, and one whose fast path fails for one table.
    #[test]
    fn batch_walks_answer_as_single_walks() {
        let m4 = level4_fixture();
        let mut bad = m4.clone();
        // A reserved bit (MAXPHYADDR 46) in the 2 MiB leaf; a PT entry past memory.
        w64(
            &mut bad,
            0x3000 + 3 * 8,
            0x1234_5660_0000 | 0x1000 | 0x85 | (1 << 47),
        );
        w64(&mut bad, 0x3000 + 8, 0x10_0000 | 0x7);
        let vas: Vec<u64> = [
            K + 0x7abc,                 // 4 KiB
            K + 0x4000_0000 + 0x123,    // 1 GiB
            K + 3 * 0x20_0000 + 0x4567, // 2 MiB (reserved bit in `bad`)
            K + 0x20_0000 + 0x10,       // PT past memory in `bad`, PDE absent in `m4`
            K + 0x8000,                 // PTE absent
            0x7fff_ffff_f000,           // PML4E absent
            0x0000_8000_0000_0000,      // not canonical (4-level)
            0x0100_0000_0000_0000,      // not canonical (5-level too)
            K + 0x8000_0000,            // PDPTE absent
        ]
        .iter()
        .copied()
        .cycle()
        .take(41)
        .collect();
        let vas: Vec<Va> = vas.into_iter().map(Va).collect();
        let p4 = Paging::new(PagingMode::Level4).with_max_phys_addr(46);
        // 5-level: a PML5 at 0x5000 whose entry 0x1ff (and 0) point at the PML4.
        let mut m5 = bad.clone();
        m5.resize(0x6000, 0);
        w64(&mut m5, 0x5000 + 0x1ff * 8, 0x1000 | 0x7);
        let p5 = Paging::new(PagingMode::Level5).with_max_phys_addr(46);
        for (name, mem, paging, root) in [
            ("4-level", &m4, &p4, Pa(0x1000)),
            ("4-level, faults", &bad, &p4, Pa(0x1000)),
            ("5-level", &m5, &p5, Pa(0x5000)),
        ] {
            let plan = paging.plan();
            let want: Vec<_> = vas
                .iter()
                .map(|va| Amd64::translate_planned(&mem[..], paging, &plan, *va, root))
                .collect();
            assert!(want.iter().filter(|r| r.is_ok()).count() >= 9, "{name}");
            let readers: [&dyn PhysRead; 3] = [&&mem[..], &SlowOnly(mem), &FastBut(mem, 0x3000)];
            for (r, reader) in readers.iter().enumerate() {
                let mut got = vec![Err(VmiError::NotFound); vas.len()];
                Amd64::translate_many_planned(reader, paging, &plan, &vas, root, &mut got);
                assert_eq!(got, want, "{name}, reader {r}");
            }
        }
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
}
