//! The translation cache stepping aside for a scan (`VmiCore::translate`'s docs): the
//! answers stay those of a walk throughout, a working set that follows the scan gets its
//! hits back, and a single-entry flush during the bypass still drops what it names.
//!
//! The guest: 2,048 4 KiB pages with mixed flags (`mixed_flags`), a frame permutation,
//! and a few 2 MiB pages; the core's translation cache holds 64 entries.

use introvisor::{AddressContext, Pa, Va, VmiCore, VmiDriver};
use introvisor_host::HostDriver;
use introvisor_host::builder::{Guest, GuestBuilder, PageSize};
use introvisor_host_test::{Rng, mixed_flags};

const BASE: u64 = 0xffff_8880_0000_0000;
const PAGES: u64 = 2048;
const LARGE: u64 = 0xffff_c900_0000_0000;

fn guest() -> Guest {
    let mut b = GuestBuilder::new(64 << 20);
    let mut flags = Rng::new(0xb1a5);
    let mut rng = Rng::new(0x5ca9);
    let mut frames: Vec<u64> = (0..PAGES).collect();
    for i in (1..frames.len()).rev() {
        frames.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for (i, f) in frames.iter().enumerate() {
        b.map(
            Va(BASE + i as u64 * 4096),
            Pa((16 << 20) + f * 4096),
            PageSize::Size4K,
            mixed_flags::map_flags(&mut flags),
        )
        .expect("4 KiB page");
    }
    for i in 0..4u64 {
        b.map(
            Va(LARGE + i * (2 << 20)),
            Pa((32 << 20) + i * (2 << 20)),
            PageSize::Size2M,
            mixed_flags::map_flags(&mut flags),
        )
        .expect("2 MiB page");
    }
    let mut g = b.finish();
    mixed_flags::decorate(&mut g, 0xdec0);
    g
}

#[test]
fn a_scan_then_a_working_set_answers_as_walks_and_gets_its_hits_back() {
    let g = guest();
    let root = g.root;
    let expected = |va: u64| g.lookup(Va(va)).map(|p| p.0);
    let core = VmiCore::new(HostDriver::from_vec(g.memory.clone())).with_v2p_cache(64);
    core.disable_gfn_cache();
    let mut rng = Rng::new(1);
    let mut scan = || {
        let va = if rng.below(8) == 0 {
            LARGE + rng.below(4 * (2 << 20))
        } else {
            BASE + rng.below(PAGES * 4096)
        };
        (va, core.translate(Va(va), root).ok().map(|t| t.pa.0))
    };
    // A scan over 32 times the cache's capacity: the cache steps aside.
    for _ in 0..20_000 {
        let (va, got) = scan();
        assert_eq!(got, expected(va), "scan at {va:#x}");
    }
    let scanned = core.v2p_cache_metrics();
    assert_eq!(scanned.hits + scanned.misses, 20_000);
    assert!(
        scanned.hits < 20_000 / 32,
        "a scan was answered from the cache: {scanned}"
    );

    // A working set of 16 pages: within a few hundred translations the hits are back.
    let ws: Vec<u64> = (0..16).map(|i| BASE + (i * 97 % PAGES) * 4096).collect();
    let mut rng = Rng::new(2);
    let mut at_half = scanned;
    for round in 0..4_000u32 {
        let va = ws[rng.below(16) as usize] + (rng.below(4096) & !7);
        let got = core.translate(Va(va), root).ok().map(|t| t.pa.0);
        assert_eq!(got, expected(va), "working set at {va:#x}");
        if round == 1_999 {
            at_half = core.v2p_cache_metrics();
        }
    }
    let m = core.v2p_cache_metrics();
    let (hits, misses) = (m.hits - at_half.hits, m.misses - at_half.misses);
    assert_eq!(hits + misses, 2_000);
    assert!(
        hits >= 1_990,
        "the working set missed {misses} of its last 2,000: {m}"
    );
}

#[test]
fn a_single_entry_flush_during_a_bypass_still_drops_the_page() {
    let g = guest();
    let root = g.root;
    let core = VmiCore::new(HostDriver::from_vec_writable(g.memory.clone())).with_v2p_cache(64);
    core.disable_gfn_cache();
    let mut rng = Rng::new(3);
    for _ in 0..5_000 {
        let _ = core.translate(Va(BASE + rng.below(PAGES * 4096)), root);
    }
    // Remap page 5 to page 6's frame behind the core's back, flush its entry, and
    // translate it through whatever state the bypass is in: always the new frame.
    let va5 = BASE + 5 * 4096;
    let new_frame = g.lookup(Va(BASE + 6 * 4096)).expect("page 6").0;
    let pte = {
        let mut at = None;
        core.translate_with(core.paging(), Va(va5), root, |step| at = Some(step.entry))
            .expect("walk");
        at.expect("a leaf")
    };
    let mut raw = [0u8; 8];
    core.driver().read_physical(pte, &mut raw).expect("pte");
    let old = u64::from_le_bytes(raw);
    let new = (old & !0x000f_ffff_ffff_f000) | new_frame;
    core.driver()
        .write_physical(pte, &new.to_le_bytes())
        .expect("write pte");
    core.flush_v2p_cache_entry(AddressContext::new(Va(va5), root));
    for i in 0..64u64 {
        let got = core.translate(Va(va5 + i * 8), root).map(|t| t.pa.0);
        assert_eq!(got, Ok(new_frame + i * 8));
    }
}
