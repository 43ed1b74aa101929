//! Adversarial page tables: every walk ends in its named error, reads at most one entry per
//! level (a counting reader checks it), and never panics.
//!
//! Covered: self-referencing and recursive entries, tables and roots past the end of
//! memory, readers that fail, all-ones entries and all-ones memory, every reserved bit of
//! every entry kind of every mode (from this file's own reading of the SDM's tables),
//! huge and tiny MAXPHYADDR, non-canonical addresses (no read at all), CR3 with PCID,
//! no-flush and LAM bits, and random garbage.

use core::cell::{Cell, RefCell};

use introvisor::arch::amd64::{Amd64, Paging, PagingMode};
use introvisor::{
    Architecture, FaultReason, Gfn, MemoryAccess, Pa, PhysRead, Translation, Va, VmiError,
};
use introvisor_host_test::{Rng, seed};

const KIB4: u64 = 1 << 12;
const MIB2: u64 = 1 << 21;
const MIB4: u64 = 1 << 22;
const GIB1: u64 = 1 << 30;
const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const PS: u64 = 0x80;

const MODES: [PagingMode; 4] = [
    PagingMode::Bits32,
    PagingMode::Pae,
    PagingMode::Level4,
    PagingMode::Level5,
];

/// Memory that counts and logs every read.
struct Counting<'a> {
    mem: &'a [u8],
    reads: Cell<u32>,
    log: RefCell<Vec<u64>>,
}

impl<'a> Counting<'a> {
    fn new(mem: &'a [u8]) -> Self {
        Self {
            mem,
            reads: Cell::new(0),
            log: RefCell::new(Vec::new()),
        }
    }

    fn note(&self, pa: Pa) {
        self.reads.set(self.reads.get() + 1);
        self.log.borrow_mut().push(pa.0);
    }
}

impl PhysRead for Counting<'_> {
    fn read_u64(&self, pa: Pa) -> Result<u64, VmiError> {
        self.note(pa);
        self.mem.read_u64(pa)
    }

    fn read_u32(&self, pa: Pa) -> Result<u32, VmiError> {
        self.note(pa);
        self.mem.read_u32(pa)
    }
}

/// Memory that must not be read at all.
struct Untouchable;

impl PhysRead for Untouchable {
    fn read_u64(&self, pa: Pa) -> Result<u64, VmiError> {
        panic!("read_u64({pa:?}) happened")
    }

    fn read_u32(&self, pa: Pa) -> Result<u32, VmiError> {
        panic!("read_u32({pa:?}) happened")
    }
}

/// Walks with a counting reader, asserts the bound, and returns the result, the number of
/// reads and the addresses read.
fn walk(
    mem: &[u8],
    paging: &Paging,
    va: u64,
    cr3: u64,
) -> (Result<Translation, VmiError>, Vec<u64>) {
    let counting = Counting::new(mem);
    let r = Amd64::translate(&counting, paging, Va(va), Pa(cr3));
    let reads = counting.reads.get();
    assert!(
        reads <= u32::from(paging.mode.levels()),
        "{:?}: {reads} reads for {va:#x}",
        paging.mode
    );
    (r, counting.log.into_inner())
}

/// (reason, level, entry) of a failed walk.
fn fault(r: &Result<Translation, VmiError>) -> (FaultReason, u8, u64) {
    match r {
        Err(VmiError::Translation(pf)) => (pf.reason, pf.level, pf.entry.0),
        other => panic!("expected a page fault, got {other:?}"),
    }
}

fn put(mem: &mut [u8], mode: PagingMode, at: u64, value: u64) {
    let at = at as usize;
    if mode == PagingMode::Bits32 {
        mem[at..at + 4].copy_from_slice(&(value as u32).to_le_bytes());
    } else {
        mem[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }
}

fn entry_bytes(mode: PagingMode) -> u64 {
    if mode == PagingMode::Bits32 { 4 } else { 8 }
}

/// (lowest bit, width) of each level's index, top first.
fn indices(mode: PagingMode) -> &'static [(u32, u32)] {
    match mode {
        PagingMode::Bits32 => &[(22, 10), (12, 10)],
        PagingMode::Pae => &[(30, 2), (21, 9), (12, 9)],
        PagingMode::Level4 => &[(39, 9), (30, 9), (21, 9), (12, 9)],
        PagingMode::Level5 => &[(48, 9), (39, 9), (30, 9), (21, 9), (12, 9)],
        PagingMode::Disabled => &[],
    }
}

// ----- recursion and loops -------------------------------------------------------------

#[test]
fn self_referencing_entry_at_every_level_is_bounded() {
    for mode in MODES {
        let paging = Paging::new(mode);
        let eb = entry_bytes(mode);
        let mut mem = vec![0u8; 0x4000];
        // One table at 0x1000 whose last entry points to itself (the PAE PDPT cannot hold
        // a self-reference: its entries reference page directories, so the PD loops).
        let (top, loop_table) = if mode == PagingMode::Pae {
            put(&mut mem, mode, 0x3000 + 3 * 8, 0x1000 | P);
            (0x3000, 0x1000)
        } else {
            (0x1000, 0x1000)
        };
        let last = (KIB4 / eb) - 1;
        put(&mut mem, mode, loop_table + last * eb, loop_table | P | RW);
        // The address whose every index is the last one.
        let mut va: u64 = indices(mode)
            .iter()
            .map(|&(shift, width)| ((1u64 << width) - 1) << shift)
            .fold(0, |a, b| a | b);
        if matches!(mode, PagingMode::Level4 | PagingMode::Level5) {
            va |= !0u64 << indices(mode)[0].0;
        }
        let (r, reads) = walk(&mem, &paging, va | 0x123, top);
        let t = r.unwrap_or_else(|e| panic!("{mode:?}: {e:?}"));
        // The last level reads the self-reference as a PTE: the page is the table itself.
        assert_eq!(t.pa, Pa(loop_table + 0x123), "{mode:?}");
        assert_eq!(t.page_size, KIB4);
        assert_eq!(reads.len(), usize::from(mode.levels()), "{mode:?}");
    }
}

#[test]
fn every_entry_a_loop_five_levels_deep() {
    // A PML5 whose 512 entries all point back to itself: any address walks five times
    // through the same table, and maps to it.
    let mode = PagingMode::Level5;
    let mut mem = vec![0u8; 0x2000];
    for i in 0..512 {
        put(&mut mem, mode, 0x1000 + i * 8, 0x1000 | P | RW | US);
    }
    let paging = Paging::new(mode);
    let mut rng = Rng::new(seed(0x6c6f_6f70));
    for _ in 0..2000 {
        let va = (((rng.next_u64() << 7) as i64) >> 7) as u64;
        let (r, reads) = walk(&mem, &paging, va, 0x1000);
        assert_eq!(r.map(|t| t.pa), Ok(Pa(0x1000 + (va & 0xfff))));
        assert_eq!(reads.len(), 5);
        assert!(reads.iter().all(|&a| (0x1000..0x2000).contains(&a)));
    }
}

#[test]
fn recursive_pml4_slot_reaches_the_page_tables() {
    // The classic recursive mapping: PML4[510] = PML4. Going through it once maps the
    // page tables of the rest of the address space.
    let mode = PagingMode::Level4;
    let mut mem = vec![0u8; 0x6000];
    put(&mut mem, mode, 0x1000, 0x2000 | P | RW); // PML4[0] -> PDPT
    put(&mut mem, mode, 0x1000 + 510 * 8, 0x1000 | P | RW); // PML4[510] -> PML4
    put(&mut mem, mode, 0x2000 + 3 * 8, 0x3000 | P | RW); // PDPT[3] -> PD
    put(&mut mem, mode, 0x3000 + 5 * 8, 0x4000 | P | RW); // PD[5] -> PT
    put(&mut mem, mode, 0x4000 + 7 * 8, 0x5000 | P | RW); // PT[7] -> page
    let paging = Paging::new(mode);
    let sext = |va: u64| (((va << 16) as i64) >> 16) as u64;
    let x = (3u64 << 30) | (5 << 21) | (7 << 12);
    assert_eq!(
        walk(&mem, &paging, x, 0x1000).0.map(|t| t.pa),
        Ok(Pa(0x5000))
    );
    // Through slot 510 once: the PT that maps x, and x's PTE in it.
    let pt_of_x = sext((510u64 << 39) | (3 << 21) | (5 << 12));
    let (r, reads) = walk(&mem, &paging, pt_of_x + 7 * 8, 0x1000);
    assert_eq!(r.map(|t| t.pa), Ok(Pa(0x4000 + 7 * 8)));
    assert_eq!(
        reads,
        [0x1000 + 510 * 8, 0x1000, 0x2000 + 3 * 8, 0x3000 + 5 * 8]
    );
    // Twice: the PD. Three times: the PDPT. Four: the PML4 itself.
    let pd_of_x = sext((510u64 << 39) | (510 << 30) | (3 << 12));
    assert_eq!(
        walk(&mem, &paging, pd_of_x, 0x1000).0.map(|t| t.pa),
        Ok(Pa(0x3000))
    );
    let pml4 = sext((510u64 << 39) | (510 << 30) | (510 << 21) | (510 << 12));
    assert_eq!(
        walk(&mem, &paging, pml4, 0x1000).0.map(|t| t.pa),
        Ok(Pa(0x1000))
    );
    // An unmapped neighbour through the recursive slot: not present at the right level.
    let (r, _) = walk(&mem, &paging, sext((510u64 << 39) | (4 << 21)), 0x1000);
    assert_eq!(fault(&r), (FaultReason::NotPresent, 2, 0x2000 + 4 * 8));
}

// ----- memory that ends or fails -------------------------------------------------------

#[test]
fn roots_and_tables_past_the_end_of_memory() {
    for mode in MODES {
        let paging = Paging::new(mode);
        let eb = entry_bytes(mode);
        let mem = vec![0u8; 0x3000];
        let (shift, width) = indices(mode)[0];
        let va = 1u64 << shift;
        // The root itself is outside memory.
        let root = 0x8000_0000;
        let (r, reads) = walk(&mem, &paging, va, root);
        let index = (va >> shift) & ((1 << width) - 1);
        assert_eq!(
            fault(&r),
            (FaultReason::OutOfMemory, mode.levels(), root + index * eb),
            "{mode:?}"
        );
        assert_eq!(reads.len(), 1);

        // A top entry that references a table past the end: the fault names the entry in
        // that table it tried to read.
        let mut mem = vec![0u8; 0x3000];
        let far = if mode == PagingMode::Bits32 {
            0xffff_f000
        } else {
            0xf_ffff_ffff_f000
        };
        let flags = if mode == PagingMode::Pae { P } else { P | RW };
        put(&mut mem, mode, 0x1000 + index * eb, far | flags);
        let (r, reads) = walk(&mem, &paging, va, 0x1000);
        assert_eq!(
            fault(&r),
            (FaultReason::OutOfMemory, mode.levels() - 1, far),
            "{mode:?}"
        );
        assert_eq!(reads.len(), 2);
    }
}

#[test]
fn leaf_past_the_end_of_memory_still_translates() {
    // The walker reads tables, never the page: a frame outside memory is the caller's
    // business when it reads.
    let mode = PagingMode::Level4;
    let mut mem = vec![0u8; 0x3000];
    put(&mut mem, mode, 0x1000, 0x2000 | P | RW);
    put(&mut mem, mode, 0x2000, 0x000f_ffff_c000_0000 | P | RW | PS);
    let (r, _) = walk(&mem, &Paging::new(mode), 0x1234_5678, 0x1000);
    assert_eq!(r.map(|t| t.pa), Ok(Pa(0x000f_ffff_c000_0000 + 0x1234_5678)));
}

/// A reader that fails in a chosen way on its second read.
struct FailingReader<'a>(&'a [u8], Cell<u32>, VmiError);

impl PhysRead for FailingReader<'_> {
    fn read_u64(&self, pa: Pa) -> Result<u64, VmiError> {
        self.1.set(self.1.get() + 1);
        if self.1.get() == 2 {
            Err(self.2)
        } else {
            self.0.read_u64(pa)
        }
    }

    fn read_u32(&self, pa: Pa) -> Result<u32, VmiError> {
        self.1.set(self.1.get() + 1);
        if self.1.get() == 2 {
            Err(self.2)
        } else {
            self.0.read_u32(pa)
        }
    }
}

#[test]
fn reader_errors_become_out_of_memory_or_pass_through() {
    let mode = PagingMode::Level4;
    let mut mem = vec![0u8; 0x3000];
    put(&mut mem, mode, 0x1000, 0x2000 | P | RW);
    let paging = Paging::new(mode);
    for (err, expect) in [
        (VmiError::GfnNotPresent(Gfn(2)), None),
        (VmiError::OutOfBounds(Pa(0x2000)), None),
        (
            VmiError::Driver("the hypervisor said no"),
            Some(VmiError::Driver("the hypervisor said no")),
        ),
    ] {
        let reader = FailingReader(&mem, Cell::new(0), err);
        let r = Amd64::translate(&reader, &paging, Va(0x1000), Pa(0x1000));
        match expect {
            None => assert_eq!(fault(&r), (FaultReason::OutOfMemory, 3, 0x2000), "{err:?}"),
            Some(e) => assert_eq!(r, Err(e)),
        }
        assert_eq!(reader.1.get(), 2);
    }
}

// ----- all ones ------------------------------------------------------------------------

#[test]
fn all_ones_memory() {
    let mem = vec![0xffu8; 0x4000];
    let cases: &[(Paging, FaultReason, u8)] = &[
        // PDE with PS = 1: bit 21 of a 4 MiB PDE is reserved.
        (Paging::new(PagingMode::Bits32), FaultReason::ReservedBit, 2),
        // CR4.PSE = 0: PS is ignored, the PT is at 0xffff_f000, outside memory.
        (
            Paging::new(PagingMode::Bits32).with_pse(false),
            FaultReason::OutOfMemory,
            1,
        ),
        // PDPTE bits 2:1 are reserved.
        (Paging::new(PagingMode::Pae), FaultReason::ReservedBit, 3),
        // PS in a PML4E / PML5E.
        (Paging::new(PagingMode::Level4), FaultReason::ReservedBit, 4),
        (Paging::new(PagingMode::Level5), FaultReason::ReservedBit, 5),
    ];
    for (paging, reason, level) in cases {
        let (r, reads) = walk(&mem, paging, 0x1000, 0x1000);
        let (got_reason, got_level, _) = fault(&r);
        assert_eq!((got_reason, got_level), (*reason, *level), "{paging:?}");
        assert!(!reads.is_empty());
    }
}

#[test]
fn all_ones_entry_at_each_level() {
    // A valid chain, then one entry replaced by all ones.
    for mode in MODES {
        for nxe in [true, false] {
            for maxphy in [52u8, 46] {
                let paging = Paging::new(mode).with_nxe(nxe).with_max_phys_addr(maxphy);
                let c = Chain::new(mode, &paging, 1);
                for (i, &(level, at)) in c.entries.iter().enumerate() {
                    // Every bit but P: not present, whatever the reserved bits say (§4.7).
                    let mut mem = c.mem.clone();
                    put(&mut mem, mode, at, !P);
                    let (r, reads) = walk(&mem, &paging, c.va, c.cr3);
                    assert_eq!(fault(&r), (FaultReason::NotPresent, level, at), "{mode:?}");
                    assert_eq!(reads.len(), i + 1);

                    let mut mem = c.mem.clone();
                    put(&mut mem, mode, at, u64::MAX);
                    let (r, reads) = walk(&mem, &paging, c.va, c.cr3);
                    assert_eq!(reads.len(), i + 1);
                    let wide_ok = matches!(mode, PagingMode::Level4 | PagingMode::Level5)
                        && nxe
                        && maxphy == 52;
                    let expect = match (mode, level) {
                        // A 32-bit PTE has no reserved bit: frame 0xffff_f000.
                        (PagingMode::Bits32, 1) => Ok(0xffff_f000 + (c.va & 0xfff)),
                        // A 32-bit PDE: PS = 1 and bit 21 is reserved.
                        (PagingMode::Bits32, _) => Err(FaultReason::ReservedBit),
                        // A 4/5-level PTE: bits 62:52 are ignored, 51:12 the frame, XD.
                        (_, 1) if wide_ok => Ok(0x000f_ffff_ffff_f000 + (c.va & 0xfff)),
                        _ => Err(FaultReason::ReservedBit),
                    };
                    match expect {
                        Ok(pa) => {
                            let t = r.expect("all-ones PTE");
                            assert_eq!(t.pa, Pa(pa), "{mode:?} level {level}");
                            if mode != PagingMode::Bits32 {
                                assert!(!t.access.contains(MemoryAccess::X), "XD is set");
                            }
                        }
                        Err(reason) => assert_eq!(
                            fault(&r),
                            (reason, level, at),
                            "{mode:?} nxe {nxe} maxphy {maxphy} level {level}"
                        ),
                    }
                }
            }
        }
    }
}

// ----- every reserved bit ----------------------------------------------------------------

/// A minimal valid walk: one table per level in frames 1, 2, ..., index 1 at every level,
/// a leaf at `leaf_level`.
struct Chain {
    mem: Vec<u8>,
    cr3: u64,
    va: u64,
    /// (level, entry address), top first.
    entries: Vec<(u8, u64)>,
    pa: u64,
    size: u64,
}

impl Chain {
    fn new(mode: PagingMode, paging: &Paging, leaf_level: u8) -> Self {
        let eb = entry_bytes(mode);
        let levels = mode.levels();
        let mut mem = vec![0u8; (usize::from(levels) + 2) * 0x1000];
        let size = match (mode, leaf_level) {
            (_, 1) => KIB4,
            (PagingMode::Bits32, 2) => MIB4,
            (_, 2) => MIB2,
            _ => GIB1,
        };
        // A frame with several address bits set, below 4 GiB and aligned to its size.
        let pa = 0xa5a5_a5a5 & !(size - 1);
        let mut va = 0x123;
        let mut entries = Vec::new();
        let mut table = 0x1000;
        for (i, &(shift, _)) in indices(mode).iter().enumerate() {
            let level = levels - i as u8;
            va |= 1 << shift;
            let at = table + eb;
            let pdpte = mode == PagingMode::Pae && level == 3;
            let rights = if pdpte { 0 } else { RW | US };
            if level == leaf_level {
                let ps = if level > 1 { PS } else { 0 };
                put(&mut mem, mode, at, pa | P | rights | ps);
                entries.push((level, at));
                break;
            }
            let next = table + 0x1000;
            put(&mut mem, mode, at, next | P | rights);
            entries.push((level, at));
            table = next;
        }
        if matches!(mode, PagingMode::Level4 | PagingMode::Level5) {
            let bits = mode.va_bits();
            va = (((va << (64 - bits)) as i64) >> (64 - bits)) as u64;
        }
        let c = Self {
            mem,
            cr3: 0x1000,
            va,
            entries,
            pa,
            size,
        };
        let (r, _) = walk(&c.mem, paging, c.va, c.cr3);
        let t = r.unwrap_or_else(|e| panic!("{mode:?} leaf level {leaf_level}: {e:?}"));
        assert_eq!((t.pa, t.page_size), (Pa(pa + (va & (size - 1))), size));
        c
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Setting the bit must fail the walk with a reserved-bit fault at this entry.
    Reserved,
    /// Setting the bit must change neither the frame nor the page size.
    Harmless,
    /// An address or page-size bit: the walk goes elsewhere (and must stay bounded).
    Moves,
}

/// This file's own reading of SDM Vol. 3A Tables 4-4 to 4-20: what bit `bit` of a present
/// entry at `level` means. `leaf` is the page size the entry maps, `None` for a reference
/// to a table.
fn classify(mode: PagingMode, paging: &Paging, level: u8, leaf: Option<u64>, bit: u32) -> Class {
    use Class::*;
    let m = u32::from(paging.max_phys_addr).clamp(32, 52);
    match mode {
        PagingMode::Bits32 => {
            let m4 = m.min(40);
            match (leaf, bit) {
                (_, 1 | 2) => Harmless,
                (Some(MIB4), 12) => Harmless, // PAT
                (Some(MIB4), 13..=21) if bit >= m4 - 19 => Reserved,
                (Some(MIB4), 13..=21) => Moves, // PSE-36 address bits
                (None, 7) if !paging.pse => Harmless,
                (None, 7) => Moves,
                (_, 3..=11) => Harmless,
                _ => Moves,
            }
        }
        PagingMode::Pae if level == 3 => match bit {
            1 | 2 | 5..=8 => Reserved,
            3 | 4 | 9..=11 => Harmless,
            b if b >= m => Reserved,
            _ => Moves,
        },
        _ => {
            let high_end = if mode == PagingMode::Pae { 63 } else { 52 };
            match bit {
                1 | 2 => Harmless,
                63 if paging.nxe => Harmless,
                63 => Reserved,
                b if b >= m && b < high_end => Reserved,
                b if b >= 52 => Harmless, // 62:52 of a 4/5-level entry
                7 => match (level, leaf) {
                    (1, _) => Harmless, // PAT of a 4 KiB PTE
                    (4 | 5, _) => Reserved,
                    (3, None) if !paging.page_1gb => Reserved,
                    _ => Moves,
                },
                3..=6 | 8..=11 => Harmless,
                12 if leaf.is_some_and(|s| s > KIB4) => Harmless, // PAT of a large leaf
                b if leaf == Some(MIB2) && (13..21).contains(&b) => Reserved,
                b if leaf == Some(GIB1) && (13..30).contains(&b) => Reserved,
                _ => Moves,
            }
        }
    }
}

fn configs(mode: PagingMode) -> Vec<Paging> {
    let widths: &[u8] = if mode == PagingMode::Bits32 {
        &[32, 34, 36, 40, 52]
    } else {
        &[36, 40, 46, 52]
    };
    let mut v = Vec::new();
    for &m in widths {
        for nxe in [false, true] {
            for pse in [false, true] {
                for gb in [false, true] {
                    v.push(
                        Paging::new(mode)
                            .with_max_phys_addr(m)
                            .with_nxe(nxe)
                            .with_pse(pse)
                            .with_page_1gb(gb),
                    );
                }
            }
        }
    }
    v
}

#[test]
fn every_reserved_bit_of_every_entry_in_every_mode() {
    let mut checked = [0u32; 3];
    for mode in MODES {
        for paging in configs(mode) {
            for leaf_level in 1..=3u8 {
                let allowed = match (mode, leaf_level) {
                    (_, 1) => true,
                    (PagingMode::Bits32, 2) => paging.pse,
                    (_, 2) => true,
                    (PagingMode::Level4 | PagingMode::Level5, 3) => paging.page_1gb,
                    _ => false,
                };
                if !allowed {
                    continue;
                }
                let c = Chain::new(mode, &paging, leaf_level);
                let width = 8 * entry_bytes(mode) as u32;
                for &(level, at) in &c.entries {
                    let base = {
                        let a = at as usize;
                        let mut raw = [0u8; 8];
                        raw[..entry_bytes(mode) as usize]
                            .copy_from_slice(&c.mem[a..a + entry_bytes(mode) as usize]);
                        u64::from_le_bytes(raw)
                    };
                    let leaf = (level == leaf_level).then_some(c.size);
                    for bit in 0..width {
                        if base & (1 << bit) != 0 {
                            continue;
                        }
                        let mut mem = c.mem.clone();
                        put(&mut mem, mode, at, base | (1 << bit));
                        let (r, _) = walk(&mem, &paging, c.va, c.cr3);
                        let class = classify(mode, &paging, level, leaf, bit);
                        let ctx = format!("{paging:?}: level {level} leaf {leaf:?} bit {bit}");
                        match class {
                            Class::Reserved => {
                                assert_eq!(
                                    fault(&r),
                                    (FaultReason::ReservedBit, level, at),
                                    "{ctx}"
                                );
                                checked[0] += 1;
                            }
                            Class::Harmless => {
                                let t = r.unwrap_or_else(|e| panic!("{ctx}: {e:?}"));
                                assert_eq!(
                                    (t.pa, t.page_size),
                                    (Pa(c.pa + (c.va & (c.size - 1))), c.size),
                                    "{ctx}"
                                );
                                checked[1] += 1;
                            }
                            Class::Moves => {
                                // Elsewhere, but never a reserved-bit fault blamed on this
                                // entry for a bit that is not reserved.
                                if let Err(VmiError::Translation(pf)) = &r {
                                    assert!(
                                        !(pf.reason == FaultReason::ReservedBit
                                            && pf.entry == Pa(at)
                                            && bit != 7),
                                        "{ctx}: {pf:?}"
                                    );
                                }
                                checked[2] += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    println!(
        "{} reserved, {} harmless and {} address or page-size bits checked",
        checked[0], checked[1], checked[2]
    );
    assert!(checked.iter().all(|&n| n > 100));
}

#[test]
fn page_size_bit_without_1gib_pages() {
    for mode in [PagingMode::Level4, PagingMode::Level5] {
        let with = Paging::new(mode);
        let c = Chain::new(mode, &with, 3);
        let &(level, at) = c.entries.last().unwrap();
        assert_eq!(level, 3);
        let without = with.with_page_1gb(false);
        let (r, _) = walk(&c.mem, &without, c.va, c.cr3);
        assert_eq!(fault(&r), (FaultReason::ReservedBit, 3, at));
    }
}

#[test]
fn pse36_high_bits_follow_maxphyaddr() {
    // A 4 MiB page whose PDE sets PSE-36 bits 20:13 to 0b0001_0101: physical bits 39:32.
    let mode = PagingMode::Bits32;
    let mut mem = vec![0u8; 0x2000];
    put(
        &mut mem,
        mode,
        0x1000 + 4,
        0x0040_0000 | (0x15 << 13) | P | PS,
    );
    for (m, expect) in [
        (52u8, Ok(0x15_0040_0000u64)), // M' = 40
        (40, Ok(0x15_0040_0000)),
        (37, Ok(0x15_0040_0000)), // bits 17:13, 0x15 fits
        (36, Err(17)),            // bit 17 is reserved now (21:17)
        (33, Err(14)),
        (32, Err(13)), // no PSE-36: 21:13 reserved
    ] {
        let paging = Paging::new(mode).with_max_phys_addr(m);
        let (r, _) = walk(&mem, &paging, 0x0040_0000, 0x1000);
        match expect {
            Ok(pa) => assert_eq!(r.map(|t| t.pa), Ok(Pa(pa)), "MAXPHYADDR {m}"),
            Err(lowest_reserved) => {
                assert_eq!(
                    fault(&r),
                    (FaultReason::ReservedBit, 2, 0x1004),
                    "MAXPHYADDR {m}"
                );
                assert!(0x15u64 << 13 >= 1 << lowest_reserved);
            }
        }
    }
}

// ----- MAXPHYADDR out of range -----------------------------------------------------------

#[test]
fn huge_and_tiny_maxphyaddr_are_clamped() {
    for mode in MODES {
        let c = Chain::new(mode, &Paging::new(mode), 1);
        let &(level, at) = c.entries.first().unwrap();
        // A table address with bit 40 set in the top entry (outside memory if used).
        let mut mem = c.mem.clone();
        let original = u64::from_le_bytes(mem[at as usize..at as usize + 8].try_into().unwrap());
        put(&mut mem, mode, at, original | (1 << 40));
        let results: Vec<_> = [0u8, 12, 31, 32, 40, 41, 52, 53, 64, 255]
            .into_iter()
            .map(|m| {
                (
                    m,
                    walk(&mem, &Paging::new(mode).with_max_phys_addr(m), c.va, c.cr3).0,
                )
            })
            .collect();
        for (m, r) in &results {
            let same_as = (*m).clamp(32, 52);
            let reference = walk(
                &mem,
                &Paging::new(mode).with_max_phys_addr(same_as),
                c.va,
                c.cr3,
            )
            .0;
            assert_eq!(r, &reference, "{mode:?} MAXPHYADDR {m} acts as {same_as}");
            if mode == PagingMode::Bits32 {
                // A 4-byte entry cannot hold bit 40: the walk is unchanged.
                assert!(r.is_ok());
            } else if same_as <= 40 {
                assert_eq!(
                    fault(r),
                    (FaultReason::ReservedBit, level, at),
                    "{mode:?} {m}"
                );
            } else {
                // Bit 40 is an address bit: the next table is far outside memory.
                assert_eq!(fault(r).0, FaultReason::OutOfMemory, "{mode:?} {m}");
            }
        }
    }
}

// ----- linear addresses and CR3 -----------------------------------------------------------

#[test]
fn non_canonical_addresses_read_nothing() {
    let cases: &[(PagingMode, &[u64])] = &[
        (PagingMode::Bits32, &[1 << 32, u64::MAX, 0x1_0000_0000_1000]),
        (
            PagingMode::Pae,
            &[1 << 32, u64::MAX << 32, 0x8000_0000_0000_0000],
        ),
        (
            PagingMode::Level4,
            &[
                1 << 47,
                0x0000_8000_0000_1000,
                0xffff_7fff_ffff_ffff,
                1 << 63,
                0x00ff_ffff_ffff_ffff,
            ],
        ),
        (
            PagingMode::Level5,
            &[
                1 << 56,
                0x0100_0000_0000_0000,
                0xfeff_ffff_ffff_ffff,
                1 << 63,
                0x7fff_ffff_ffff_ffff,
            ],
        ),
    ];
    for &(mode, vas) in cases {
        for &va in vas {
            let r = Amd64::translate(&Untouchable, &Paging::new(mode), Va(va), Pa(0x1000));
            let Err(VmiError::Translation(pf)) = r else {
                panic!("{mode:?} {va:#x}: {r:?}");
            };
            assert_eq!(
                (pf.reason, pf.level, pf.entry, pf.value, pf.va),
                (FaultReason::NonCanonical, mode.levels(), Pa(0), 0, Va(va)),
                "{mode:?} {va:#x}"
            );
        }
    }
    // The edges that are canonical do get walked (and here find nothing).
    let mem = vec![0u8; 0x2000];
    for (mode, va) in [
        (PagingMode::Level4, 0x0000_7fff_ffff_ffffu64),
        (PagingMode::Level4, 0xffff_8000_0000_0000),
        (PagingMode::Level5, 0x00ff_ffff_ffff_ffff),
        (PagingMode::Level5, 0xff00_0000_0000_0000),
        (PagingMode::Pae, 0xffff_ffff),
        (PagingMode::Bits32, 0xffff_ffff),
    ] {
        let (r, reads) = walk(&mem, &Paging::new(mode), va, 0x1000);
        assert_eq!(fault(&r).0, FaultReason::NotPresent, "{mode:?} {va:#x}");
        assert_eq!(reads.len(), 1);
    }
}

#[test]
fn cr3_flag_bits_are_not_part_of_the_root() {
    for mode in MODES {
        let paging = Paging::new(mode);
        let c = Chain::new(mode, &paging, 1);
        let clean = walk(&c.mem, &paging, c.va, c.cr3).0.unwrap();
        let dirty: &[u64] = match mode {
            // CR3 bits 11:0 hold PWT/PCD and ignored bits.
            PagingMode::Bits32 => &[0xfff, 0x18, 0x7],
            // Bits 4:0 are ignored; the PDPT is 32-byte aligned.
            PagingMode::Pae => &[0x1f, 0x18],
            // PCID (11:0), LAM_U57 (61), LAM_U48 (62), no-flush (63).
            _ => &[0xfff, 1 << 61, 1 << 62, 1 << 63, 0xe000_0000_0000_0abc],
        };
        for &bits in dirty {
            let cr3 = c.cr3 | bits;
            let (r, reads) = walk(&c.mem, &paging, c.va, cr3);
            assert_eq!(r, Ok(clean), "{mode:?} CR3 {cr3:#x}");
            assert_eq!(reads[0], c.entries[0].1);
            // A fault reports the CR3 value as given.
            let mut empty = c.mem.clone();
            put(&mut empty, mode, c.entries[0].1, 0);
            let Err(VmiError::Translation(pf)) = walk(&empty, &paging, c.va, cr3).0 else {
                panic!("must fault");
            };
            assert_eq!((pf.root, pf.entry), (Pa(cr3), Pa(c.entries[0].1)));
        }
    }
}

// ----- garbage ------------------------------------------------------------------------------

#[test]
fn random_garbage_tables_are_bounded() {
    let mut rng = Rng::new(seed(0x0067_6172_6261_6765));
    let mut outcomes = [0u32; 5];
    for round in 0..40 {
        // 16 frames of entries that point mostly inside those frames, with random flags and
        // random high bits.
        let mut mem = vec![0u8; 16 * 0x1000];
        for chunk in mem.chunks_mut(8) {
            let mut v = (rng.below(20) << 12) | (rng.next_u64() & 0xfff);
            if rng.below(4) == 0 {
                v |= rng.next_u64() & !0xffff_ffff;
            }
            if rng.below(3) != 0 {
                v |= P;
            }
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        let mode = MODES[round % 4];
        for _ in 0..500 {
            let paging = Paging::new(mode)
                .with_max_phys_addr([0u8, 36, 40, 52, 200][rng.below(5) as usize])
                .with_nxe(rng.below(2) == 0)
                .with_pse(rng.below(2) == 0)
                .with_page_1gb(rng.below(2) == 0)
                .with_pdptes((rng.below(4) == 0).then(|| {
                    [
                        rng.next_u64(),
                        rng.next_u64(),
                        rng.next_u64(),
                        rng.next_u64(),
                    ]
                }));
            let va = if rng.below(8) == 0 {
                rng.next_u64()
            } else {
                rng.next_u64() & 0xffff_ffff
            };
            // Mostly inside memory, with junk in the bits that are not the root.
            let cr3 = (rng.below(18) << 12) | (rng.next_u64() & 0xe000_0000_0000_0fff);
            let (r, _) = walk(&mem, &paging, va, cr3);
            let i = match r {
                Ok(_) => 0,
                Err(VmiError::Translation(pf)) => match pf.reason {
                    FaultReason::NotPresent => 1,
                    FaultReason::ReservedBit => 2,
                    FaultReason::OutOfMemory => 3,
                    FaultReason::NonCanonical => 4,
                    other => panic!("a walk never reports {other:?}"),
                },
                Err(e) => panic!("a slice reader's errors become page faults: {e:?}"),
            };
            outcomes[i] += 1;
        }
    }
    println!("ok / not present / reserved / out of memory / non-canonical: {outcomes:?}");
    assert!(outcomes.iter().all(|&n| n > 0), "{outcomes:?}");
}
