//! Stress (issue 13, must-have 5, second half): threads read through one `VmiCore` while
//! another rewrites page tables through it (and behind its back, with a single-entry
//! flush), flushes, resizes and toggles both caches. Every read is checked against what
//! memory held while it ran: no stale translation is ever served.
//!
//! Fixed operation counts, no timing: the writer spreads its operations over the readers'
//! progress (a count of reads), so they overlap however the threads are scheduled. Each data frame holds, in every 8-byte word, that
//! word's own physical address, so a read names the frame it came from.
//!
//! The check: mapping `m` moves to version `v + 1` by storing `started[m] = v + 1`, then
//! rewriting its leaf entry and making the core forget the old translation (through the
//! core's write, which flushes, or through the driver and `flush_v2p_cache_entry`), then
//! storing `completed[m] = v + 1`. A reader loads `completed[m]` (c) before its read and
//! `started[m]` (s) after it: the frame it read must be that of a version in `c..=s`. An
//! answer from a version before `c` is a stale translation, served after the flush that
//! dropped it returned.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Barrier;

use introvisor::{AccessContext, AddressContext, Pa, Va, VmiCore, VmiDriver};
use introvisor_host::HostDriver;
use introvisor_host::builder::{GuestBuilder, MapFlags, PageSize};
use introvisor_host_test::{Rng, seed};

const SMALL: usize = 8;
const LARGE: usize = 2;
const TARGETS: usize = 3;
const MIB2: u64 = 2 << 20;
const ADDR_4K: u64 = 0x000f_ffff_ffff_f000;
const ADDR_2M: u64 = 0x000f_ffff_ffe0_0000;
const READERS: usize = 2;
const READS: usize = 100_000;
const WRITER_OPS: usize = 10_000;

struct Mapping {
    va: u64,
    size: u64,
    addr_mask: u64,
    /// The leaf entry's address and its flag bits.
    entry: Pa,
    flags: u64,
    targets: [Pa; TARGETS],
    started: AtomicU64,
    completed: AtomicU64,
}

impl Mapping {
    fn frame(&self, version: u64) -> Pa {
        self.targets[(version % TARGETS as u64) as usize]
    }
}

struct Guest {
    core: VmiCore<HostDriver>,
    root: Pa,
    maps: Vec<Mapping>,
}

/// Writes the "each word holds its address" pattern over `[pa, pa + len)`.
fn fill(b: &mut GuestBuilder, pa: Pa, len: u64) {
    let words: Vec<u8> = (0..len / 8)
        .flat_map(|i| (pa.0 + i * 8).to_le_bytes())
        .collect();
    b.write_physical(pa, &words).unwrap();
}

fn guest() -> Guest {
    let mut b = GuestBuilder::new(32 << 20);
    let mut plan = Vec::new();
    // 4 KiB user pages, some adjacent and some apart; then 2 MiB kernel pages.
    for i in 0..SMALL as u64 {
        let va = 0x0000_7f00_0000_0000 + i * 0x1000 + (i / 3) * 0x10_0000;
        let targets: [Pa; TARGETS] = core::array::from_fn(|_| b.alloc(4096, 4096).unwrap());
        b.map(Va(va), targets[0], PageSize::Size4K, MapFlags::USER_DATA)
            .unwrap();
        plan.push((va, 4096, ADDR_4K, targets));
    }
    for j in 0..LARGE as u64 {
        let va = 0xffff_8880_0000_0000 + j * 0x4000_0000;
        let targets: [Pa; TARGETS] = core::array::from_fn(|_| b.alloc(MIB2, MIB2).unwrap());
        b.map(Va(va), targets[0], PageSize::Size2M, MapFlags::KERNEL_DATA)
            .unwrap();
        plan.push((va, MIB2, ADDR_2M, targets));
    }
    for &(_, size, _, targets) in &plan {
        for t in targets {
            fill(&mut b, t, size);
        }
    }
    let root = b.root();
    let guest = b.finish();
    let core = VmiCore::new(HostDriver::from_vec_writable(guest.memory));
    let maps = plan
        .into_iter()
        .map(|(va, size, addr_mask, targets)| {
            let mut leaf = None;
            core.translate_with(core.paging(), Va(va), root, |s| leaf = Some(s))
                .unwrap();
            let leaf = leaf.unwrap();
            assert_eq!(leaf.value & addr_mask, targets[0].0);
            Mapping {
                va,
                size,
                addr_mask,
                entry: leaf.entry,
                flags: leaf.value & !addr_mask,
                targets,
                started: AtomicU64::new(0),
                completed: AtomicU64::new(0),
            }
        })
        .collect();
    Guest { core, root, maps }
}

/// A form of the root: as it is, or with PCID and no-flush bits (the same tables).
fn root_form(root: Pa, pick: u64) -> Pa {
    match pick % 4 {
        0 => root,
        1 => Pa(root.0 | 0x7),
        2 => Pa(root.0 | (1 << 63) | 0x2a),
        _ => Pa(root.0 | 0xfff),
    }
}

/// A mapping: half the time one of two hot ones (a 4 KiB and a 2 MiB page), so that
/// reads and rewrites of one mapping often meet; otherwise any.
fn pick<'g>(g: &'g Guest, rng: &mut Rng) -> &'g Mapping {
    let i = match rng.below(4) {
        0 => 0,
        1 => SMALL,
        _ => rng.below(g.maps.len() as u64) as usize,
    };
    &g.maps[i]
}

/// What the writer did, by kind.
#[derive(Default)]
struct Done {
    through_core: AtomicUsize,
    behind_back: AtomicUsize,
    resizes: AtomicUsize,
    toggles: AtomicUsize,
    page_cache: AtomicUsize,
    flushes: AtomicUsize,
}

/// Reads done so far, by all readers: the writer paces itself by them, so that its
/// changes spread over the whole run (an operation count, not a clock).
static PROGRESS: AtomicUsize = AtomicUsize::new(0);

fn writer(g: &Guest, rng: &mut Rng, done: &Done) {
    let sizes = [0usize, 4, 8, 64, 512, usize::MAX];
    for op in 0..WRITER_OPS {
        // Operation `op` waits for its share of the reads; readers never wait, so this
        // ends (they finish all their reads whatever the writer does).
        let due = op * (READERS * READS) / WRITER_OPS;
        while PROGRESS.load(Ordering::Relaxed) < due {
            std::thread::yield_now();
        }
        match rng.below(10) {
            0..=2 => {
                let m = pick(g, rng);
                let v = m.completed.load(Ordering::SeqCst) + 1;
                m.started.store(v, Ordering::SeqCst);
                let value = m.flags | m.frame(v).0;
                g.core
                    .write_u64(AccessContext::direct(m.entry), value)
                    .unwrap();
                m.completed.store(v, Ordering::SeqCst);
                done.through_core.fetch_add(1, Ordering::Relaxed);
            }
            3..=5 => {
                let m = pick(g, rng);
                let v = m.completed.load(Ordering::SeqCst) + 1;
                m.started.store(v, Ordering::SeqCst);
                let value = m.flags | m.frame(v).0;
                g.core
                    .driver()
                    .write_physical(m.entry, &value.to_le_bytes())
                    .unwrap();
                // Any address of the page, under any form of the root.
                let va = m.va + rng.below(m.size);
                let root = root_form(g.root, rng.next_u64());
                g.core
                    .flush_v2p_cache_entry(AddressContext::new(Va(va), root));
                m.completed.store(v, Ordering::SeqCst);
                done.behind_back.fetch_add(1, Ordering::Relaxed);
            }
            6 => {
                let size = sizes[rng.below(sizes.len() as u64) as usize];
                g.core.resize_v2p_cache(size);
                done.resizes.fetch_add(1, Ordering::Relaxed);
            }
            7 => {
                if rng.below(2) == 0 {
                    g.core.disable_v2p_cache();
                } else {
                    g.core.enable_v2p_cache();
                }
                done.toggles.fetch_add(1, Ordering::Relaxed);
            }
            8 => {
                match rng.below(4) {
                    0 => g.core.disable_gfn_cache(),
                    1 => g.core.enable_gfn_cache(),
                    2 => g
                        .core
                        .resize_gfn_cache([0, 8, 64, usize::MAX][rng.below(4) as usize]),
                    _ => g.core.flush_gfn_cache(),
                }
                done.page_cache.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                g.core.flush_v2p_cache();
                done.flushes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Reads `READS` times; returns the number of stale answers (and panics on a read that
/// fails or names no frame of its mapping at all).
fn reader(g: &Guest, rng: &mut Rng) -> usize {
    let mut stale = 0;
    for i in 0..READS {
        let m = pick(g, rng);
        let offset = rng.below(m.size / 8) * 8;
        let root = root_form(g.root, rng.next_u64());
        let ctx = AccessContext::paging(Va(m.va + offset), root);
        let c = m.completed.load(Ordering::SeqCst);
        let (pa, through) = if i % 5 == 0 {
            let t = g.core.translate(Va(m.va + offset), root).unwrap();
            assert_eq!(t.page_size, m.size);
            (t.pa.0, "translate")
        } else if i % 7 == 0 && offset + 24 <= m.size {
            // Three words in one read: all from one frame.
            let mut raw = [0u8; 24];
            g.core.read(ctx, &mut raw).unwrap();
            let w: Vec<u64> = raw
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert_eq!((w[1] - w[0], w[2] - w[1]), (8, 8), "one frame per read");
            (w[0], "read")
        } else {
            (g.core.read_u64(ctx).unwrap(), "read_u64")
        };
        let s = m.started.load(Ordering::SeqCst);
        PROGRESS.fetch_add(1, Ordering::Relaxed);
        let frame = pa & m.addr_mask;
        assert_eq!(pa - frame, offset, "{through}: the offset survives");
        if !(c..=s).any(|v| m.frame(v).0 == frame) {
            let old = (0..c).rev().take(TARGETS).any(|v| m.frame(v).0 == frame);
            assert!(
                old,
                "{through}: {frame:#x} is no frame of mapping {:#x}",
                m.va
            );
            stale += 1;
        }
    }
    stale
}

#[test]
fn readers_never_see_a_stale_translation_while_tables_and_caches_change() {
    let seed = seed(0x5eed_c0de);
    println!("seed {seed}");
    let g = guest();
    let done = Done::default();
    let start = Barrier::new(READERS + 1);
    let stale: usize = std::thread::scope(|s| {
        let readers: Vec<_> = (0..READERS as u64)
            .map(|r| {
                let (g, start) = (&g, &start);
                s.spawn(move || {
                    let mut rng = Rng::new(seed ^ (r + 1).wrapping_mul(0x9e37_79b9));
                    start.wait();
                    reader(g, &mut rng)
                })
            })
            .collect();
        let mut rng = Rng::new(seed);
        start.wait();
        writer(&g, &mut rng, &done);
        readers.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(stale, 0, "stale answers in {} reads", READERS * READS);
    // Every kind of change happened, and the caches were in use.
    let kinds = [
        done.through_core.load(Ordering::Relaxed),
        done.behind_back.load(Ordering::Relaxed),
        done.resizes.load(Ordering::Relaxed),
        done.toggles.load(Ordering::Relaxed),
        done.page_cache.load(Ordering::Relaxed),
        done.flushes.load(Ordering::Relaxed),
    ];
    assert!(kinds.iter().all(|&n| n > 100), "{kinds:?}");
    assert_eq!(kinds.iter().sum::<usize>(), WRITER_OPS);
    // After the storm, with both caches on: every mapping reads its last version.
    g.core.enable_v2p_cache();
    g.core.resize_v2p_cache(usize::MAX);
    g.core.enable_gfn_cache();
    for m in &g.maps {
        let v = m.completed.load(Ordering::SeqCst);
        assert_eq!(m.started.load(Ordering::SeqCst), v);
        for _ in 0..2 {
            let got = g
                .core
                .read_u64(AccessContext::paging(Va(m.va + 8), g.root))
                .unwrap();
            assert_eq!(got, m.frame(v).0 + 8);
        }
    }
    assert!(g.core.v2p_cache_metrics().hits > 0);
}
