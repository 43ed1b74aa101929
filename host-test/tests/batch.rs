//! The batch APIs (`translate_many`, `read_u64_many`) against one translation or read at
//! a time: the same results in the same order, and one counted lookup each, in every cache
//! configuration, for a driver that lends its memory and one that does not, over a guest
//! with mixed flags, three page sizes, holes, repeats and bad addresses.

use introvisor::{AccessContext, Pa, Translation, Va, VmiCore, VmiError};
use introvisor_host::HostDriver;
use introvisor_host::builder::{Guest, GuestBuilder, PageSize};
use introvisor_host_test::{Rng, mixed_flags};

const V4K: u64 = 0xffff_8000_0000_0000;
const V2M: u64 = 0xffff_8000_4000_0000;
const V1G: u64 = 0xffff_8080_0000_0000;
const MEMORY: usize = 16 << 20;

fn guest() -> Guest {
    let mut rng = Rng::new(0xba7c);
    let mut b = GuestBuilder::new(MEMORY);
    // 256 pages with every fourth left out (holes), each with its own flags.
    for page in (0..256u64).filter(|p| p % 4 != 3) {
        b.map_new(
            Va(V4K + page * 4096),
            PageSize::Size4K,
            mixed_flags::map_flags(&mut rng),
        )
        .unwrap();
    }
    for i in 0..4u64 {
        b.map(
            Va(V2M + i * (2 << 20)),
            Pa((i * (2 << 20)) % MEMORY as u64),
            PageSize::Size2M,
            mixed_flags::map_flags(&mut rng),
        )
        .unwrap();
    }
    // A 1 GiB page over PA 0 (its first 16 MiB backed) and one wholly past memory.
    b.map(
        Va(V1G),
        Pa(0),
        PageSize::Size1G,
        mixed_flags::map_flags(&mut rng),
    )
    .unwrap();
    b.map(
        Va(V1G + (1 << 30)),
        Pa(1 << 30),
        PageSize::Size1G,
        mixed_flags::map_flags(&mut rng),
    )
    .unwrap();
    let mut g = b.finish();
    mixed_flags::decorate(&mut g, 0xba7c);
    g
}

/// Addresses of every kind, at random, with repeats.
fn addresses(n: usize) -> Vec<Va> {
    let mut rng = Rng::new(0xadd5);
    let mut vas: Vec<Va> = (0..n)
        .map(|_| {
            Va(match rng.below(8) {
                0..=2 => V4K + (rng.below(256 * 4096) & !7),
                3 => V2M + (rng.below(8 << 20) & !7),
                4 => V1G + (rng.below(MEMORY as u64) & !7),
                // Past memory: translates, reads fail.
                5 => V1G + (1 << 30) + (rng.below(1 << 30) & !7),
                // A u64 across two 4 KiB pages (the second may be a hole).
                6 => V4K + rng.below(256) * 4096 + 4092,
                // Not canonical, or unmapped.
                _ => [0x0000_8000_0000_0000, V4K + 300 * 4096, 0x1000][rng.below(3) as usize],
            })
        })
        .collect();
    // Repeats, next to each other and apart.
    for i in (0..n).step_by(17) {
        let j = (i * 7 + 3) % n;
        vas[j] = vas[i];
    }
    vas
}

/// A core over the guest's memory: lent (read-only) or not (writable), with the
/// translation cache and the page cache as given.
fn core(g: &Guest, lent: bool, tlb: bool, pages: bool) -> VmiCore<HostDriver> {
    let memory = g.memory.clone();
    let driver = if lent {
        HostDriver::from_vec(memory)
    } else {
        HostDriver::from_vec_writable(memory)
    };
    let core = VmiCore::new(driver);
    if !tlb {
        core.disable_v2p_cache();
    }
    if !pages {
        core.disable_gfn_cache();
    }
    core
}

#[test]
fn batches_answer_as_single_calls_in_every_configuration() {
    let g = guest();
    let vas = addresses(1000);
    for lent in [true, false] {
        for (tlb, pages) in [(true, true), (true, false), (false, true), (false, false)] {
            let name = format!("lent {lent}, tlb {tlb}, page cache {pages}");
            let (single, batch) = (core(&g, lent, tlb, pages), core(&g, lent, tlb, pages));
            // Twice: cold, then warm (answered from the caches where they are on).
            for pass in 0..2 {
                let want: Vec<Result<Translation, VmiError>> =
                    vas.iter().map(|va| single.translate(*va, g.root)).collect();
                let mut got = vec![Err(VmiError::NotFound); vas.len()];
                assert_eq!(batch.translate_many(&vas, g.root, &mut got), vas.len());
                assert_eq!(got, want, "translations, {name}, pass {pass}");
                let want: Vec<Result<u64, VmiError>> = vas
                    .iter()
                    .map(|va| single.read_u64(AccessContext::paging(*va, g.root)))
                    .collect();
                let mut got = vec![Err(VmiError::NotFound); vas.len()];
                assert_eq!(batch.read_u64_many(&vas, g.root, &mut got), vas.len());
                assert_eq!(got, want, "u64 reads, {name}, pass {pass}");
                // One lookup each, counted exactly; a group's lookups come before its
                // walks, so a batch may count a miss where single calls hit.
                let (b, s) = (batch.v2p_cache_metrics(), single.v2p_cache_metrics());
                assert_eq!(b.hits + b.misses, s.hits + s.misses, "lookups, {name}");
                assert!(b.misses >= s.misses, "{b:?} {s:?}, {name}, pass {pass}");
                assert!(b.misses <= s.misses + s.misses / 8, "{b:?} {s:?}, {name}");
            }
            // The workload has every kind of answer: the comparison means something.
            let answers: Vec<_> = vas.iter().map(|va| single.translate(*va, g.root)).collect();
            assert!(answers.iter().filter(|r| r.is_ok()).count() > vas.len() / 2);
            assert!(
                answers
                    .iter()
                    .any(|r| r.is_err_and(|e| e.page_fault().is_some()))
            );
        }
    }
}

#[test]
fn a_batch_fills_the_shorter_of_its_slices_and_leaves_the_rest() {
    let g = guest();
    let c = core(&g, true, true, false);
    let vas = addresses(20);
    let mut out = vec![Err(VmiError::NotFound); 11];
    assert_eq!(c.translate_many(&vas, g.root, &mut out), 11);
    for (va, r) in vas.iter().zip(&out) {
        assert_eq!(*r, c.translate(*va, g.root));
    }
    let mut out = vec![Err(VmiError::InvalidArgument("untouched")); 20];
    assert_eq!(c.read_u64_many(&vas[..5], g.root, &mut out), 5);
    assert!(
        out[5..]
            .iter()
            .all(|r| *r == Err(VmiError::InvalidArgument("untouched")))
    );
    assert_eq!(c.read_u64_many(&[], g.root, &mut out), 0);
}

/// A flush between two batches is seen by the second: a batch is no cache of its own.
#[test]
fn a_batch_after_a_change_and_a_flush_sees_the_new_tables() {
    let g = guest();
    let c = VmiCore::new(HostDriver::from_vec_writable(g.memory.clone()));
    let va = Va(V4K + 8);
    let vas = [va; 9];
    let mut before = [Err(VmiError::NotFound); 9];
    c.translate_many(&vas, g.root, &mut before);
    let old = before[0].unwrap();
    // Point the page's PTE at another frame through the core (which flushes).
    let mut leaf = 0u64;
    let mut entry = Pa(0);
    c.translate_with(c.paging(), va, g.root, |s| {
        (leaf, entry) = (s.value, s.entry)
    })
    .unwrap();
    let moved = (leaf & !0x000f_ffff_ffff_f000) | 0x0080_0000;
    c.write_u64(AccessContext::direct(entry), moved).unwrap();
    let mut after = [Err(VmiError::NotFound); 9];
    c.translate_many(&vas, g.root, &mut after);
    assert!(
        after
            .iter()
            .all(|r| r.is_ok_and(|t| t.pa == Pa(0x0080_0008)))
    );
    assert_ne!(old.pa, Pa(0x0080_0008));
}

/// Batches of every length around the group sizes (16 addresses looked up and walked
/// together, 64 translated before their reads), with a `u64` across two pages, a fault
/// and a repeat placed on each side of each boundary: the same answers as single calls,
/// with the translation cache on, off and of zero capacity, the page cache on and off.
#[test]
fn group_boundaries_change_no_answer() {
    let g = guest();
    let across = Va(V4K + 5 * 4096 + 4092);
    let hole = Va(V4K + 3 * 4096 + 16); // page 3 is left out
    let noncanonical = Va(0x0000_8000_0000_0000);
    let past = Va(V1G + (1 << 30) + 64); // translates; the read fails
    let mut rng = Rng::new(0xb0_da);
    for lent in [true, false] {
        for (tlb, capacity, pages) in [
            (true, None, true),
            (true, None, false),
            (true, Some(0), false),
            (true, Some(0), true),
            (false, None, false),
        ] {
            let name = format!("lent {lent}, tlb {tlb} {capacity:?}, page cache {pages}");
            let (single, batch) = (core(&g, lent, tlb, pages), core(&g, lent, tlb, pages));
            if let Some(c) = capacity {
                single.resize_v2p_cache(c);
                batch.resize_v2p_cache(c);
            }
            for len in [1usize, 2, 15, 16, 17, 31, 33, 63, 64, 65, 127, 128, 130] {
                let mut vas: Vec<Va> = (0..len)
                    .map(|_| Va(V4K + (rng.below(252 * 4096) & !7)))
                    .collect();
                // Each special address at a boundary (if the batch is that long).
                for (at, va) in [
                    (15, across),
                    (16, hole),
                    (17, noncanonical),
                    (63, past),
                    (64, across),
                    (0, hole),
                    (len - 1, across),
                ] {
                    if let Some(slot) = vas.get_mut(at) {
                        *slot = va;
                    }
                }
                if len > 40 {
                    vas[40] = vas[3];
                }
                let words: Vec<Result<u64, VmiError>> = vas
                    .iter()
                    .map(|va| single.read_u64(AccessContext::paging(*va, g.root)))
                    .collect();
                let mut got = vec![Err(VmiError::NotFound); len];
                assert_eq!(batch.read_u64_many(&vas, g.root, &mut got), len);
                assert_eq!(got, words, "u64 reads of {len}, {name}");
                let want: Vec<Result<Translation, VmiError>> =
                    vas.iter().map(|va| single.translate(*va, g.root)).collect();
                let mut got = vec![Err(VmiError::NotFound); len];
                assert_eq!(batch.translate_many(&vas, g.root, &mut got), len);
                assert_eq!(got, want, "translations of {len}, {name}");
                // Each kind of answer is there once the batch is long enough.
                if len > 64 {
                    assert!(words[15].is_ok() && words[64].is_ok(), "{name}");
                    assert!(words[16].is_err_and(|e| e.page_fault().is_some()), "{name}");
                    assert!(words[63].is_err(), "{name}");
                    assert!(words[63..].iter().any(|w| w.is_ok()), "{name}");
                }
            }
            let (b, s) = (batch.v2p_cache_metrics(), single.v2p_cache_metrics());
            assert_eq!(b.hits + b.misses, s.hits + s.misses, "lookups, {name}");
            if capacity == Some(0) {
                assert_eq!((b.hits, s.hits), (0, 0), "{name}");
            }
        }
    }
}

/// A thread that reads at random over more pages than the translation cache holds makes
/// the cache step aside (its lookups are mostly capacity misses): the batch then walks
/// without looking, and its answers stay those of single calls, each address still
/// counted once.
#[test]
fn a_batch_in_a_bypassing_thread_answers_as_single_calls() {
    let g = guest();
    for lent in [true, false] {
        let (single, batch) = (core(&g, lent, true, false), core(&g, lent, true, false));
        // Four sets: 16 entries for 192 pages, so nearly every lookup is a capacity miss.
        single.resize_v2p_cache(16);
        batch.resize_v2p_cache(16);
        let mut rng = Rng::new(0x5ca7);
        let vas: Vec<Va> = (0..4096)
            .map(|_| Va(V4K + (rng.below(256 * 4096) & !7)))
            .collect();
        let want: Vec<Result<u64, VmiError>> = vas
            .iter()
            .map(|va| single.read_u64(AccessContext::paging(*va, g.root)))
            .collect();
        let mut got = vec![Err(VmiError::NotFound); vas.len()];
        for (vas, got) in vas.chunks(64).zip(got.chunks_mut(64)) {
            batch.read_u64_many(vas, g.root, got);
        }
        assert_eq!(got, want, "lent {lent}");
        let (b, s) = (batch.v2p_cache_metrics(), single.v2p_cache_metrics());
        assert_eq!(b.hits + b.misses, s.hits + s.misses, "lent {lent}");
        assert!(b.misses > b.hits * 4, "{b:?}: the workload misses");
        assert!(want.iter().filter(|w| w.is_ok()).count() > vas.len() / 2);
    }
}
