//! The translation cache as `VmiCore` uses it: what it must never serve after the page
//! tables change and the cache is told so (a single-entry flush), or when it was asked to
//! hold nothing (capacity 0), or when the same tables are named by two forms of a root.
//!
//! Page-table entries are rewritten here behind the core's back (through the driver, as
//! a guest or another tool would), so only the flush the test makes can drop the old
//! translation: a write through the core would flush everything and hide the defect.

use std::sync::Barrier;

use introvisor::{AddressContext, Pa, Va, VmiCore, VmiDriver};
use introvisor_host::HostDriver;
use introvisor_host::builder::{GuestBuilder, MapFlags, PageSize};

const V4K: u64 = 0x0000_7f12_3456_7000;
const V2M: u64 = 0xffff_8880_0040_0000;
const V2M_OTHER: u64 = 0xffff_8880_0080_0000;
const MIB2: u64 = 2 << 20;
const ADDR_2M: u64 = 0x000f_ffff_ffe0_0000;
const ADDR_4K: u64 = 0x000f_ffff_ffff_f000;

struct Fixture {
    core: VmiCore<HostDriver>,
    root: Pa,
    /// The 4 KiB page's frame, and a spare one to remap it to.
    pa_4k: Pa,
    spare_4k: Pa,
    /// The 2 MiB page's frame, and a spare one to remap it to.
    pa_2m: Pa,
    spare_2m: Pa,
}

/// A 4 KiB user page, two 2 MiB kernel pages, and spare frames of both sizes, in
/// writable memory.
fn fixture() -> Fixture {
    let mut b = GuestBuilder::new(16 << 20);
    let pa_4k = b
        .map_new(Va(V4K), PageSize::Size4K, MapFlags::USER_DATA)
        .unwrap();
    let spare_4k = b.alloc(4096, 4096).unwrap();
    let pa_2m = b
        .map_new(Va(V2M), PageSize::Size2M, MapFlags::KERNEL_DATA)
        .unwrap();
    b.map_new(Va(V2M_OTHER), PageSize::Size2M, MapFlags::KERNEL_TEXT)
        .unwrap();
    let spare_2m = b.alloc(MIB2, MIB2).unwrap();
    let guest = b.finish();
    Fixture {
        core: VmiCore::new(HostDriver::from_vec_writable(guest.memory)),
        root: guest.root,
        pa_4k,
        spare_4k,
        pa_2m,
        spare_2m,
    }
}

impl Fixture {
    /// The address and value of the leaf entry that maps `va`.
    fn leaf(&self, va: u64) -> (Pa, u64) {
        let mut last = None;
        self.core
            .translate_with(self.core.paging(), Va(va), self.root, |s| {
                last = Some((s.entry, s.value));
            })
            .unwrap();
        last.unwrap()
    }

    /// Points the leaf that maps `va` at `frame`, behind the core's back.
    fn remap(&self, va: u64, frame: Pa, addr_mask: u64) {
        let (entry, value) = self.leaf(va);
        let new = (value & !addr_mask) | frame.0;
        self.core
            .driver()
            .write_physical(entry, &new.to_le_bytes())
            .unwrap();
    }

    fn pa(&self, va: u64, root: Pa) -> Pa {
        self.core.translate(Va(va), root).unwrap().pa
    }
}

/// Issue 13, item 2: a translation cache of capacity 0 holds nothing. Before the fix,
/// capacity 0 still used set 0, and the old frame came back after the guest changed a
/// PTE.
#[test]
fn capacity_zero_caches_nothing() {
    for how in ["with_v2p_cache(0)", "resize_v2p_cache(0)"] {
        let mut f = fixture();
        f.core = if how == "with_v2p_cache(0)" {
            f.core.with_v2p_cache(0)
        } else {
            // Used at full capacity first, then shrunk to nothing.
            assert_eq!(f.pa(V4K + 8, f.root), Pa(f.pa_4k.0 + 8));
            f.core.resize_v2p_cache(0);
            f.core
        };
        assert_eq!(f.pa(V4K + 8, f.root), Pa(f.pa_4k.0 + 8), "{how}");
        assert_eq!(f.pa(V2M + 0x1234, f.root), Pa(f.pa_2m.0 + 0x1234), "{how}");
        f.remap(V4K, f.spare_4k, ADDR_4K);
        f.remap(V2M, f.spare_2m, ADDR_2M);
        // No flush: a cache that holds nothing has nothing to flush.
        assert_eq!(f.pa(V4K + 8, f.root), Pa(f.spare_4k.0 + 8), "{how}: 4 KiB");
        assert_eq!(
            f.pa(V2M + 0x1234, f.root),
            Pa(f.spare_2m.0 + 0x1234),
            "{how}: 2 MiB"
        );
        let m = f.core.v2p_cache_metrics();
        assert_eq!((m.len, m.capacity, m.hits), (0, 0, 0), "{how}: {m}");
    }
}

/// Issue 13, item 3: the cache is keyed by the root as the walker reads it. CR3's PCID
/// (bits 11:0), its no-flush bit 63 and the LAM bits 61 and 62 are not part of the root
/// (SDM Vol. 3A, Table 4-12): a flush under one form of the root drops the translation
/// cached under another. Before the fix they were separate keys, and the other stayed.
#[test]
fn every_form_of_a_root_is_one_key() {
    let f = fixture();
    let forms = [
        f.root,
        Pa(f.root.0 | 0x5),
        Pa(f.root.0 | 0xabc),
        Pa(f.root.0 | (1 << 63) | 0x17),
        Pa(f.root.0 | (1 << 61) | (1 << 62)),
    ];
    for (i, &cached) in forms.iter().enumerate() {
        let flushed = forms[(i + 1) % forms.len()];
        for (va, frame, spare, mask) in [
            (V4K + 0x88, f.pa_4k, f.spare_4k, ADDR_4K),
            (V2M + 0x1_2348, f.pa_2m, f.spare_2m, ADDR_2M),
        ] {
            let offset = va & !mask & 0xfff_ffff;
            f.core.flush_v2p_cache();
            f.remap(va, frame, mask);
            assert_eq!(f.pa(va, cached), Pa(frame.0 + offset));
            // Every form hits the one entry.
            let before = f.core.v2p_cache_metrics();
            for &other in &forms {
                assert_eq!(f.pa(va, other), Pa(frame.0 + offset));
            }
            let after = f.core.v2p_cache_metrics();
            assert_eq!(after.misses, before.misses, "{cached:?}: one key per root");
            f.remap(va, spare, mask);
            f.core
                .flush_v2p_cache_entry(AddressContext::new(Va(va), flushed));
            assert_eq!(
                f.pa(va, cached),
                Pa(spare.0 + offset),
                "cached under {cached:?}, flushed under {flushed:?}"
            );
        }
    }
}

/// Issue 13, item 1: a resize racing translations of a 2 MiB page must not leave an entry
/// that a later single-entry flush misses. Before the fix the resize cleared the mask of
/// large-page sizes after emptying the cache; a translation inserted in between kept its
/// entry but lost its size from the mask, so `flush_v2p_cache_entry` skipped it and, once
/// another 2 MiB page put the size back, the old frame came back.
///
/// Fixed operation counts, no timing: in each trial one thread resizes the cache a fixed
/// number of times while another, a fixed number of times, remaps the page to the next
/// frame behind the core's back, flushes the page's entry (and another 2 MiB page's, whose
/// translation puts the size back in the mask), and checks that the new frame comes back.
/// The checker does many more steps than the resizer, so that it keeps checking after
/// the last resize, when an entry that lost its size is no longer swept by a next one.
#[test]
fn a_resize_racing_a_large_translation_leaves_nothing_stale() {
    const TRIALS: usize = 300;
    const REMAPS: usize = 256;
    const RESIZES: usize = 4;
    let f = fixture();
    let frames = [f.pa_2m, f.spare_2m];
    let sizes = [512, 64, 8, 1024, 4];
    let mut stale = 0usize;
    let start = Barrier::new(2);
    for trial in 0..TRIALS {
        stale += std::thread::scope(|s| {
            let checker = s.spawn(|| {
                start.wait();
                let mut stale = 0usize;
                for i in 0..REMAPS {
                    let frame = frames[(trial + i) % frames.len()];
                    f.remap(V2M, frame, ADDR_2M);
                    f.core
                        .flush_v2p_cache_entry(AddressContext::new(Va(V2M), f.root));
                    f.core
                        .flush_v2p_cache_entry(AddressContext::new(Va(V2M_OTHER), f.root));
                    f.pa(V2M_OTHER, f.root);
                    let va = V2M + ((i as u64 * 0x1_1000) % MIB2);
                    if f.pa(va, f.root) != Pa(frame.0 + (va - V2M)) {
                        stale += 1;
                    }
                }
                stale
            });
            start.wait();
            for r in 0..RESIZES {
                f.core.resize_v2p_cache(sizes[(trial + r) % sizes.len()]);
            }
            checker.join().unwrap()
        });
    }
    assert_eq!(
        stale, 0,
        "stale translations in {TRIALS} trials of {REMAPS} remaps"
    );
}
