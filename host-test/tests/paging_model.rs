//! Differential property test: the AMD64 walker against an independent page-table model.
//!
//! The model below is written from the Intel SDM (Vol. 3A §4.3 to §4.7) and shares no code
//! or constant with `introvisor`'s walker. For each paging mode it builds random page tables
//! in a byte buffer, with a seeded generator:
//! - random CPU settings: MAXPHYADDR, EFER.NXE, CR4.PSE, 1 GiB pages, PAE PDPTEs supplied
//!   by the caller or read from memory, junk in the CR3 bits that are not the root;
//! - tables in random frames, leaves of every size the mode has (4 KiB; 2 MiB; 4 MiB with
//!   PSE-36 address bits; 1 GiB), random R/W, U/S and XD at every level, random values in
//!   the bits the SDM says are ignored, and random not-present entries full of junk.
//!
//! It records what it built: for every entry, whether it references a table (and which) or
//! maps a page (where, how large, with which rights). A query then descends the record,
//! never the bytes, and says what the walker must answer: the translation, or the level and
//! entry where it finds nothing present, and every entry it reads on the way. Each query
//! also asks the rights check about a random access under random CR0.WP/SMEP/SMAP/AC, and
//! compares it with the rules of §4.6.1 and the error code of §4.7.
//!
//! `INTROVISOR_PROPTEST_CASES` sets the number of queries per mode (default 10,000);
//! `INTROVISOR_SEED` replays a run.

use std::collections::HashMap;

use introvisor::arch::amd64::{
    Access, AccessKind, Amd64, Paging, PagingMode, PfErrorCode, RightsPolicy,
};
use introvisor::{Architecture, FaultReason, MemoryAccess, Pa, Translation, Va, VmiError};
use introvisor_host_test::{Rng, seed};

// ----- the model's own reading of the SDM ----------------------------------------------

/// Entry bits, as the SDM's tables name them.
const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const XD: u64 = 1 << 63;
const KIB4: u64 = 1 << 12;
const MIB2: u64 = 1 << 21;
const MIB4: u64 = 1 << 22;
const GIB1: u64 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Bits32,
    Pae,
    Level4,
    Level5,
}

impl Mode {
    /// (lowest linear-address bit, width) of the index into each table, top table first
    /// (Figures 4-2, 4-5, 4-8 and 4-9 of the SDM).
    fn indices(self) -> &'static [(u32, u32)] {
        match self {
            Mode::Bits32 => &[(22, 10), (12, 10)],
            Mode::Pae => &[(30, 2), (21, 9), (12, 9)],
            Mode::Level4 => &[(39, 9), (30, 9), (21, 9), (12, 9)],
            Mode::Level5 => &[(48, 9), (39, 9), (30, 9), (21, 9), (12, 9)],
        }
    }

    fn entry_bytes(self) -> u64 {
        if self == Mode::Bits32 { 4 } else { 8 }
    }

    /// Linear-address bits: 32, or 48/57 with sign extension above.
    fn va_bits(self) -> u32 {
        match self {
            Mode::Bits32 | Mode::Pae => 32,
            Mode::Level4 => 48,
            Mode::Level5 => 57,
        }
    }

    fn levels(self) -> u8 {
        self.indices().len() as u8
    }

    fn walker_mode(self) -> PagingMode {
        match self {
            Mode::Bits32 => PagingMode::Bits32,
            Mode::Pae => PagingMode::Pae,
            Mode::Level4 => PagingMode::Level4,
            Mode::Level5 => PagingMode::Level5,
        }
    }
}

/// The CPU state a guest's tables are read under.
#[derive(Clone, Copy, Debug)]
struct Cpu {
    mode: Mode,
    maxphy: u32,
    nxe: bool,
    pse: bool,
    gb_pages: bool,
    supplied_pdptes: bool,
}

impl Cpu {
    fn random(mode: Mode, rng: &mut Rng) -> Self {
        let widths: &[u32] = if mode == Mode::Bits32 {
            &[32, 34, 36, 39, 40, 46, 52]
        } else {
            &[36, 39, 40, 42, 46, 48, 52]
        };
        Self {
            mode,
            maxphy: widths[rng.below(widths.len() as u64) as usize],
            nxe: rng.below(4) != 0,
            pse: rng.below(4) != 0,
            gb_pages: rng.below(4) != 0,
            supplied_pdptes: mode == Mode::Pae && rng.below(2) == 0,
        }
    }

    /// The size of the page a leaf at `level` (1 = bottom) maps, if a leaf may sit there.
    fn leaf_size(&self, level: u8) -> Option<u64> {
        match (self.mode, level) {
            (_, 1) => Some(KIB4),
            (Mode::Bits32, 2) => self.pse.then_some(MIB4),
            (_, 2) => Some(MIB2),
            (Mode::Level4 | Mode::Level5, 3) => self.gb_pages.then_some(GIB1),
            _ => None,
        }
    }

    /// The exclusive bound of a page frame's physical address.
    fn pa_limit(&self, size: u64) -> u64 {
        match (self.mode, size) {
            // 32-bit 4 KiB pages: bits 31:12 only. 4 MiB pages: PSE-36, min(M, 40) bits.
            (Mode::Bits32, KIB4) => 1 << 32,
            (Mode::Bits32, _) => 1 << self.maxphy.min(40),
            _ => 1 << self.maxphy,
        }
    }

    /// Whether entries at `level` carry R/W, U/S and XD (all but the PAE PDPTE).
    fn has_rights(&self, level: u8) -> bool {
        !(self.mode == Mode::Pae && level == 3)
    }

    /// Bits the SDM says the processor ignores in a present entry of this kind, and which
    /// the model fills at random: they must change nothing.
    fn ignored_bits(&self, level: u8, leaf: bool) -> u64 {
        if self.mode == Mode::Pae && level == 3 {
            // PDPTE (Table 4-8): PWT, PCD and 11:9, besides P and the address.
            return (1 << 3) | (1 << 4) | (0b111 << 9);
        }
        // PWT, PCD, A; bit 6 (D in a leaf, ignored above); G in a leaf (ignored above);
        // bits 11:9.
        let mut bits = (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 8) | (0b111 << 9);
        if leaf && level == 1 {
            bits |= 1 << 7; // PAT of a 4 KiB PTE
        }
        if leaf && level > 1 {
            bits |= 1 << 12; // PAT of a large leaf
        }
        if !leaf && self.mode == Mode::Bits32 && !self.pse {
            bits |= PS; // CR4.PSE = 0: PS in a 32-bit PDE is ignored (Table 4-5)
        }
        if matches!(self.mode, Mode::Level4 | Mode::Level5) {
            bits |= 0x7ff << 52; // 62:52 ignored (or protection keys in a leaf)
        }
        bits
    }
}

#[derive(Clone, Copy, Debug)]
struct Rights {
    rw: bool,
    us: bool,
    xd: bool,
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    /// A present entry that references the table at `base`.
    Table { base: u64, rights: Rights },
    /// A present entry that maps `size` bytes at `pa`.
    Leaf { pa: u64, size: u64, rights: Rights },
    /// P = 0 (the other bits are whatever the model wrote).
    Absent,
}

/// What the walker must answer for one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Mapped {
        pa: u64,
        size: u64,
        writable: bool,
        user: bool,
        executable: bool,
    },
    NotPresent {
        level: u8,
        entry: u64,
        value: u64,
    },
}

struct Guest {
    cpu: Cpu,
    mem: Vec<u8>,
    /// The address of the top table (for PAE, the 32-byte PDPT).
    top: u64,
    cr3: u64,
    /// Every entry written: its address, its meaning and the raw value.
    slots: HashMap<u64, (Slot, u64)>,
    free: Vec<u64>,
    pdptes: Option<[u64; 4]>,
    /// (va, size) of every page mapped.
    pages: Vec<(u64, u64)>,
}

impl Guest {
    fn new(cpu: Cpu, frames: u64, rng: &mut Rng) -> Self {
        let mut free: Vec<u64> = (1..frames).map(|f| f * KIB4).collect();
        // Tables go to random frames, not in address order.
        for i in (1..free.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            free.swap(i, j);
        }
        let root_frame = free.pop().expect("a frame");
        let (top, cr3) = match cpu.mode {
            // CR3 bits 11:0 are ignored or PWT/PCD (Table 4-3).
            Mode::Bits32 => (root_frame, root_frame | (rng.next_u64() & 0xfff)),
            // The PDPT is 32-byte aligned anywhere in its frame; CR3 bits 4:0 are ignored.
            Mode::Pae => {
                let top = root_frame + 32 * rng.below(128);
                (top, top | (rng.next_u64() & 0x1f))
            }
            // PCID in 11:0, LAM in 62:61, no-flush in 63.
            Mode::Level4 | Mode::Level5 => (
                root_frame,
                root_frame | (rng.next_u64() & 0xfff) | (rng.next_u64() & (7 << 61)),
            ),
        };
        Self {
            cpu,
            mem: vec![0; (frames * KIB4) as usize],
            top,
            cr3,
            slots: HashMap::new(),
            free,
            pdptes: None,
            pages: Vec::new(),
        }
    }

    fn write(&mut self, at: u64, value: u64) {
        let at = at as usize;
        if self.cpu.mode == Mode::Bits32 {
            self.mem[at..at + 4].copy_from_slice(&(value as u32).to_le_bytes());
        } else {
            self.mem[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
    }

    fn set(&mut self, at: u64, slot: Slot, value: u64) {
        self.write(at, value);
        self.slots.insert(at, (slot, value));
    }

    fn random_rights(&self, level: u8, rng: &mut Rng) -> Rights {
        if !self.cpu.has_rights(level) {
            return Rights {
                rw: true,
                us: true,
                xd: false,
            };
        }
        Rights {
            rw: rng.below(4) != 0,
            us: rng.below(4) != 0,
            xd: self.cpu.mode != Mode::Bits32 && self.cpu.nxe && rng.below(4) == 0,
        }
    }

    /// R/W, U/S and XD as entry bits; none in a PAE PDPTE, where bits 2:1 are reserved.
    fn rights_bits(&self, level: u8, r: Rights) -> u64 {
        if !self.cpu.has_rights(level) {
            return 0;
        }
        (if r.rw { RW } else { 0 }) | (if r.us { US } else { 0 }) | (if r.xd { XD } else { 0 })
    }

    /// An entry that references the table at `base`.
    fn table_entry(&self, level: u8, base: u64, r: Rights, rng: &mut Rng) -> u64 {
        base | P
            | self.rights_bits(level, r)
            | (rng.next_u64() & self.cpu.ignored_bits(level, false))
    }

    /// An entry that maps `size` bytes at `pa`.
    fn leaf_entry(&self, level: u8, pa: u64, size: u64, r: Rights, rng: &mut Rng) -> u64 {
        let address = if self.cpu.mode == Mode::Bits32 && size == MIB4 {
            // Table 4-4: PA 31:22 in place, PA (M'-1):32 in PDE bits (M'-20):13.
            (pa & 0xffc0_0000) | ((pa >> 32) << 13)
        } else {
            pa
        };
        let ps = if level > 1 { PS } else { 0 };
        address
            | P
            | ps
            | self.rights_bits(level, r)
            | (rng.next_u64() & self.cpu.ignored_bits(level, true))
    }

    /// A not-present entry with random junk in every other bit.
    fn junk(&self, rng: &mut Rng) -> u64 {
        let v = rng.next_u64() & !P;
        if self.cpu.mode == Mode::Bits32 {
            v & 0xffff_ffff
        } else {
            v
        }
    }

    /// Junk not-present entries in a few of the `entries` slots of a new table.
    fn sprinkle(&mut self, table: u64, entries: u64, rng: &mut Rng) {
        for _ in 0..rng.below(8) {
            let at = table + rng.below(entries) * self.cpu.mode.entry_bytes();
            let junk = self.junk(rng);
            self.set(at, Slot::Absent, junk);
        }
    }

    /// Maps the page of `size` at `va` (aligned), creating tables on the way. False when
    /// something is in the way or the frames ran out.
    fn map(&mut self, va: u64, leaf_level: u8, size: u64, rng: &mut Rng) -> bool {
        let mode = self.cpu.mode;
        let eb = mode.entry_bytes();
        let mut table = self.top;
        for (i, &(shift, width)) in mode.indices().iter().enumerate() {
            let level = mode.levels() - i as u8;
            let entry = table + ((va >> shift) & ((1 << width) - 1)) * eb;
            let slot = self.slots.get(&entry).map_or(Slot::Absent, |s| s.0);
            if level == leaf_level {
                if !matches!(slot, Slot::Absent) {
                    return false;
                }
                let limit = self.cpu.pa_limit(size);
                let pa = rng.below(limit / size) * size;
                let rights = self.random_rights(level, rng);
                let value = self.leaf_entry(level, pa, size, rights, rng);
                self.set(entry, Slot::Leaf { pa, size, rights }, value);
                self.pages.push((va, size));
                return true;
            }
            match slot {
                Slot::Leaf { .. } => return false,
                Slot::Table { base, .. } => table = base,
                Slot::Absent => {
                    let Some(base) = self.free.pop() else {
                        return false;
                    };
                    let rights = self.random_rights(level, rng);
                    let value = self.table_entry(level, base, rights, rng);
                    self.set(entry, Slot::Table { base, rights }, value);
                    self.sprinkle(base, KIB4 / eb, rng);
                    table = base;
                }
            }
        }
        unreachable!("the leaf level is one of the mode's levels")
    }

    /// With supplied PDPTEs, the caller holds them and memory at CR3 holds junk that
    /// would fault (bits 2:1 are reserved) if the walker read it.
    fn finish(&mut self, rng: &mut Rng) {
        if !self.cpu.supplied_pdptes {
            return;
        }
        let mut pdptes = [0u64; 4];
        for (i, p) in pdptes.iter_mut().enumerate() {
            let at = self.top + 8 * i as u64;
            *p = self.slots.get(&at).map_or(0, |s| s.1);
            self.write(at, rng.next_u64() | P | RW);
        }
        self.pdptes = Some(pdptes);
    }

    fn paging(&self) -> Paging {
        Paging::new(self.cpu.mode.walker_mode())
            .with_max_phys_addr(self.cpu.maxphy as u8)
            .with_nxe(self.cpu.nxe)
            .with_pse(self.cpu.pse)
            .with_page_1gb(self.cpu.gb_pages)
            .with_pdptes(self.pdptes)
    }

    /// Descends the record (never the bytes) for `va`: the answer and every entry read.
    fn lookup(&self, va: u64) -> (Expect, Vec<(u8, u64, u64)>) {
        let mode = self.cpu.mode;
        let mut steps = Vec::new();
        let mut table = self.top;
        let (mut writable, mut user, mut xd) = (true, true, false);
        for (i, &(shift, width)) in mode.indices().iter().enumerate() {
            let level = mode.levels() - i as u8;
            let entry = table + ((va >> shift) & ((1 << width) - 1)) * mode.entry_bytes();
            let (slot, value) = self.slots.get(&entry).copied().unwrap_or((Slot::Absent, 0));
            steps.push((level, entry, value));
            let rights = match slot {
                Slot::Absent => {
                    return (
                        Expect::NotPresent {
                            level,
                            entry,
                            value,
                        },
                        steps,
                    );
                }
                Slot::Table { rights, .. } | Slot::Leaf { rights, .. } => rights,
            };
            writable &= rights.rw;
            user &= rights.us;
            xd |= rights.xd;
            match slot {
                Slot::Table { base, .. } => table = base,
                Slot::Leaf { pa, size, .. } => {
                    let expect = Expect::Mapped {
                        pa: pa + (va & (size - 1)),
                        size,
                        writable,
                        user,
                        executable: !xd,
                    };
                    return (expect, steps);
                }
                Slot::Absent => unreachable!(),
            }
        }
        unreachable!("every path ends in a leaf or an absent entry")
    }
}

/// Sign-extends `va` from the mode's width (4/5-level), or keeps its low 32 bits.
fn canonical(mode: Mode, va: u64) -> u64 {
    let bits = mode.va_bits();
    if bits == 32 {
        va & 0xffff_ffff
    } else {
        (((va << (64 - bits)) as i64) >> (64 - bits)) as u64
    }
}

/// §4.6.1, restated: may `access` reach a page with these rights under `policy`?
fn model_allows(
    writable: bool,
    user_page: bool,
    executable: bool,
    a: Access,
    p: RightsPolicy,
) -> bool {
    let supervisor_data_blocked = user_page && p.smap && !p.ac;
    match (a.user, a.kind) {
        (true, _) if !user_page => false,
        (true, AccessKind::Read) => true,
        (true, AccessKind::Write) => writable,
        (true, AccessKind::Fetch) => executable,
        (false, AccessKind::Read) => !supervisor_data_blocked,
        (false, AccessKind::Write) => !supervisor_data_blocked && (writable || !p.wp),
        (false, AccessKind::Fetch) => !(user_page && p.smep) && executable,
    }
}

/// §4.7, restated: the error code bits that describe the access.
fn model_code(cpu: &Cpu, a: Access, p: RightsPolicy, present: bool) -> PfErrorCode {
    let mut bits = 0u32;
    if present {
        bits |= 1;
    }
    if a.kind == AccessKind::Write {
        bits |= 2;
    }
    if a.user {
        bits |= 4;
    }
    if a.kind == AccessKind::Fetch && (p.smep || (cpu.mode != Mode::Bits32 && cpu.nxe)) {
        bits |= 16;
    }
    PfErrorCode::from_bits_retain(bits)
}

fn random_access(rng: &mut Rng) -> (Access, RightsPolicy) {
    let kind = [AccessKind::Read, AccessKind::Write, AccessKind::Fetch][rng.below(3) as usize];
    let access = Access::new(kind, rng.below(2) == 0);
    let b = rng.next_u64();
    let policy = RightsPolicy {
        wp: b & 1 != 0,
        smep: b & 2 != 0,
        smap: b & 4 != 0,
        ac: b & 8 != 0,
    };
    (access, policy)
}

// ----- the differential run ------------------------------------------------------------

fn cases() -> u64 {
    std::env::var("INTROVISOR_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.replace('_', "").parse().ok())
        .unwrap_or(10_000)
}

/// Builds one random guest of `mode`.
fn build(mode: Mode, rng: &mut Rng) -> Guest {
    let cpu = Cpu::random(mode, rng);
    let mut g = Guest::new(cpu, 1024, rng);
    let top_entries = 1 << mode.indices()[0].1;
    g.sprinkle(g.top, top_entries, rng);
    let target = 32 + rng.below(224);
    let empty_quarter = rng.below(4);
    let mut attempts = 0;
    while (g.pages.len() as u64) < target && attempts < 4 * target {
        attempts += 1;
        // A leaf level the mode and CPU allow.
        let level = loop {
            let l = 1 + rng.below(u64::from(mode.levels())) as u8;
            if cpu.leaf_size(l).is_some() && (l == 1 || rng.below(3) == 0) {
                break l;
            }
        };
        let size = cpu.leaf_size(level).expect("checked");
        // Half the time next to a page already there, to share its tables.
        let raw = if !g.pages.is_empty() && rng.below(2) == 0 {
            let (near, _) = g.pages[rng.below(g.pages.len() as u64) as usize];
            let (shift, _) = mode.indices()[rng.below(u64::from(mode.levels())) as usize];
            let span = 1u64 << (shift + 9).min(63);
            (near & !(span - 1)) | (rng.next_u64() & (span - 1))
        } else {
            rng.next_u64()
        };
        let va = canonical(mode, raw) & !(size - 1);
        // PAE: keep one quarter of the address space (one PDPTE) empty, or most guests
        // would fill all four PDPTEs.
        if mode == Mode::Pae && (va >> 30) == empty_quarter {
            continue;
        }
        g.map(va, level, size, rng);
    }
    g.finish(rng);
    g
}

#[derive(Default, Debug)]
struct Tally {
    mapped: u64,
    by_size: HashMap<u64, u64>,
    not_present_by_level: HashMap<u8, u64>,
    denied: u64,
    guests: u64,
}

fn run_mode(mode: Mode, seed_value: u64) {
    let want = cases();
    let mut rng = Rng::new(seed_value);
    let mut tally = Tally::default();
    let mut done = 0u64;
    while done < want {
        let g = build(mode, &mut rng);
        tally.guests += 1;
        let paging = g.paging();
        let cr3 = Pa(g.cr3);
        let per_guest = 500.min(want - done);
        let mut singles: Vec<(Va, Result<Translation, VmiError>)> = Vec::new();
        for _ in 0..per_guest {
            let raw = match rng.below(4) {
                // Inside a mapped page, at a random offset.
                0 | 1 if !g.pages.is_empty() => {
                    let (va, size) = g.pages[rng.below(g.pages.len() as u64) as usize];
                    va + rng.below(size)
                }
                // Next to a mapped page: one index changed, the walk ends lower down.
                2 if !g.pages.is_empty() => {
                    let (va, _) = g.pages[rng.below(g.pages.len() as u64) as usize];
                    let (shift, width) =
                        mode.indices()[rng.below(u64::from(mode.levels())) as usize];
                    let mask = ((1u64 << width) - 1) << shift;
                    (va & !mask) | (rng.next_u64() & mask) ^ (rng.next_u64() & 0xfff)
                }
                _ => rng.next_u64(),
            };
            let va = canonical(mode, raw);
            let (expect, steps) = g.lookup(va);

            let mut seen = Vec::new();
            let observed = Amd64::translate_observed(&g.mem[..], &paging, Va(va), cr3, |s| {
                seen.push((s.level, s.entry.0, s.value));
            });
            let plain = Amd64::translate(&g.mem[..], &paging, Va(va), cr3);
            let ctx = || {
                format!(
                    "{mode:?} seed {seed_value} cpu {:?} cr3 {cr3:?} va {va:#x}",
                    g.cpu
                )
            };
            assert_eq!(observed, plain, "{}", ctx());
            assert_eq!(seen, steps, "entries read, {}", ctx());
            singles.push((Va(va), plain));
            let (access, policy) = random_access(&mut rng);
            match expect {
                Expect::Mapped {
                    pa,
                    size,
                    writable,
                    user,
                    executable,
                } => {
                    let mut rights = MemoryAccess::R;
                    if writable {
                        rights |= MemoryAccess::W;
                    }
                    if executable {
                        rights |= MemoryAccess::X;
                    }
                    let t = Translation {
                        pa: Pa(pa),
                        page_size: size,
                        access: rights,
                        user,
                    };
                    assert_eq!(plain, Ok(t), "{}", ctx());
                    tally.mapped += 1;
                    *tally.by_size.entry(size).or_default() += 1;

                    let allowed = model_allows(writable, user, executable, access, policy);
                    let expect_check = if allowed {
                        Ok(())
                    } else {
                        Err(model_code(&g.cpu, access, policy, true))
                    };
                    assert_eq!(
                        paging.check_access(&t, access, policy),
                        expect_check,
                        "{access:?} {policy:?} on {t:?}, {}",
                        ctx()
                    );
                    let through =
                        Amd64::translate_access(&g.mem[..], &paging, Va(va), cr3, access, policy);
                    if allowed {
                        assert_eq!(through, Ok(t), "{}", ctx());
                    } else {
                        tally.denied += 1;
                        let Err(VmiError::Translation(pf)) = through else {
                            panic!("{access:?} must be denied: {through:?}, {}", ctx());
                        };
                        let &(level, entry, value) = steps.last().expect("a leaf");
                        assert_eq!(
                            (pf.reason, pf.level, pf.entry, pf.value),
                            (FaultReason::AccessDenied, level, Pa(entry), value),
                            "{}",
                            ctx()
                        );
                        assert_eq!(
                            paging.fault_error_code(&pf, access, policy),
                            Some(model_code(&g.cpu, access, policy, true))
                        );
                    }
                }
                Expect::NotPresent {
                    level,
                    entry,
                    value,
                } => {
                    let Err(VmiError::Translation(pf)) = plain else {
                        panic!("must not be present: {plain:?}, {}", ctx());
                    };
                    assert_eq!(
                        (pf.va, pf.root, pf.level, pf.entry, pf.value, pf.reason),
                        (
                            Va(va),
                            cr3,
                            level,
                            Pa(entry),
                            value,
                            FaultReason::NotPresent
                        ),
                        "{}",
                        ctx()
                    );
                    assert_eq!(
                        paging.fault_error_code(&pf, access, policy),
                        Some(model_code(&g.cpu, access, policy, false)),
                        "{}",
                        ctx()
                    );
                    *tally.not_present_by_level.entry(level).or_default() += 1;
                }
            }
            done += 1;
        }
        check_batch_and_ranges(&g, &paging, cr3, &singles, mode, seed_value);
    }

    let mut sizes: Vec<_> = tally.by_size.iter().collect();
    sizes.sort();
    let mut levels: Vec<_> = tally.not_present_by_level.iter().collect();
    levels.sort();
    println!(
        "{mode:?}, seed {seed_value}: {done} cases over {} guests: {} mapped (by page size \
         {sizes:?}, {} accesses denied), not present by level {levels:?}",
        tally.guests, tally.mapped, tally.denied
    );
    assert!(done >= want);
    // The run explored what it claims to: every leaf size, every level's "not present".
    if want >= 1000 {
        for level in 1..=mode.levels() {
            let hits = tally.not_present_by_level.get(&level).copied().unwrap_or(0);
            assert!(
                hits > 0,
                "{mode:?}: no walk ended not-present at level {level}"
            );
        }
        let all_sizes: &[u64] = match mode {
            Mode::Bits32 => &[KIB4, MIB4],
            Mode::Pae => &[KIB4, MIB2],
            Mode::Level4 | Mode::Level5 => &[KIB4, MIB2, GIB1],
        };
        for size in all_sizes {
            assert!(
                tally.by_size.contains_key(size),
                "{mode:?}: no {size:#x} page translated"
            );
        }
        assert!(tally.denied > 0 && tally.denied < tally.mapped);
    }
}

/// The batch walk (interleaved on AMD64 in 4- and 5-level paging) answers each address
/// as one walk does, in order; a range walk from an address answers each following page
/// as one walk of that page does, up to and including the first failure.
fn check_batch_and_ranges(
    g: &Guest,
    paging: &Paging,
    cr3: Pa,
    singles: &[(Va, Result<Translation, VmiError>)],
    mode: Mode,
    seed_value: u64,
) {
    let plan = Amd64::plan(paging);
    let vas: Vec<Va> = singles.iter().map(|(va, _)| *va).collect();
    let mut out = vec![Err(VmiError::NotFound); vas.len()];
    Amd64::translate_many_planned(&g.mem[..], paging, &plan, &vas, cr3, &mut out);
    for ((va, want), got) in singles.iter().zip(&out) {
        assert_eq!(got, want, "batch, {mode:?} seed {seed_value} va {va:?}");
    }
    for (va, _) in singles.iter().step_by(7) {
        let mut got = Vec::new();
        let end = Amd64::translate_pages_planned(&g.mem[..], paging, &plan, *va, cr3, 40, |t| {
            got.push(t);
            true
        });
        let mut page = va.0 & !0xfff;
        for (i, t) in got.iter().enumerate() {
            let want = Amd64::translate(&g.mem[..], paging, Va(page), cr3);
            assert_eq!(
                Ok(*t),
                want,
                "range page {i}, {mode:?} seed {seed_value} from {va:?}"
            );
            page = page.wrapping_add(0x1000);
        }
        match end {
            Ok(()) => assert_eq!(got.len(), 40, "{mode:?} seed {seed_value} from {va:?}"),
            Err(e) => assert_eq!(
                Err(e),
                Amd64::translate(&g.mem[..], paging, Va(page), cr3),
                "range failure, {mode:?} seed {seed_value} from {va:?}"
            ),
        }
    }
}

#[test]
fn model_bits32() {
    run_mode(Mode::Bits32, seed(0x3332_6269_7473));
}

#[test]
fn model_pae() {
    run_mode(Mode::Pae, seed(0x7061_6570_6165));
}

#[test]
fn model_level4() {
    run_mode(Mode::Level4, seed(0x6c65_7665_6c34));
}

#[test]
fn model_level5() {
    run_mode(Mode::Level5, seed(0x6c65_7665_6c35));
}
