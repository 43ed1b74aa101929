//! The translation cache holds a large page as one entry: every address of a 2 MiB or
//! 1 GiB page hits the entry its first translation made, and every way of dropping a
//! translation (a flush, a single-entry flush, a write to the page tables) drops it.

use introvisor::{AccessContext, AddressContext, MemoryAccess, Pa, Translation, Va, VmiCore};
use introvisor_host::HostDriver;
use introvisor_host::builder::{GuestBuilder, MapFlags, PageSize};
use introvisor_host_test::Rng;

const V4K: u64 = 0x7f00_0000_0000;
const V2M: u64 = 0x7f00_4000_0000;
const V1G: u64 = 0x7f40_0000_0000;
const MIB2: u64 = 2 << 20;
const GIB1: u64 = 1 << 30;

struct Fixture {
    core: VmiCore<HostDriver>,
    root: Pa,
    pa_4k: Pa,
    pa_2m: Pa,
    /// A second 2 MiB frame, for remapping.
    other_2m: Pa,
}

/// One 4 KiB page, one 2 MiB page and one 1 GiB page (over PA 0, of which only the
/// first 16 MiB is backed: only translated, never read past that).
fn fixture() -> Fixture {
    let mut b = GuestBuilder::new(16 << 20);
    let pa_4k = b
        .map_new(Va(V4K), PageSize::Size4K, MapFlags::USER_DATA)
        .unwrap();
    let pa_2m = b
        .map_new(Va(V2M), PageSize::Size2M, MapFlags::KERNEL_DATA)
        .unwrap();
    let other_2m = b.alloc(MIB2, MIB2).unwrap();
    b.map(Va(V1G), Pa(0), PageSize::Size1G, MapFlags::KERNEL_TEXT)
        .unwrap();
    b.write_physical(pa_2m, b"large\0").unwrap();
    b.write_physical(other_2m, b"other\0").unwrap();
    let guest = b.finish();
    Fixture {
        core: VmiCore::new(HostDriver::from_vec_writable(guest.memory)),
        root: guest.root,
        pa_4k,
        pa_2m,
        other_2m,
    }
}

fn translate(f: &Fixture, va: u64) -> Translation {
    f.core.translate(Va(va), f.root).unwrap()
}

#[test]
fn one_entry_serves_a_whole_2m_and_1g_page() {
    let f = fixture();
    let mut rng = Rng::new(7);
    // Every 4 KiB sub-page of the 2 MiB page, at a random offset, after the first miss.
    for sub in 0..512u64 {
        let va = V2M + sub * 4096 + rng.below(4096);
        let t = translate(&f, va);
        assert_eq!(t.pa, Pa(f.pa_2m.0 + (va - V2M)), "{va:#x}");
        assert_eq!(t.page_size, MIB2);
        assert_eq!(t.access, MemoryAccess::RW);
        assert!(!t.user);
    }
    let m = f.core.v2p_cache_metrics();
    assert_eq!((m.len, m.misses, m.hits), (1, 1, 511));

    // The 1 GiB page: one more entry, however far apart the addresses.
    for _ in 0..1000 {
        let off = rng.below(GIB1);
        let t = translate(&f, V1G + off);
        assert_eq!(t.pa, Pa(off));
        assert_eq!(t.page_size, GIB1);
        assert_eq!(t.access, MemoryAccess::RX);
    }
    let m = f.core.v2p_cache_metrics();
    assert_eq!((m.len, m.misses, m.hits), (2, 2, 511 + 999));

    // A 4 KiB page beside them is still its own entry, and both kinds keep hitting.
    assert_eq!(translate(&f, V4K + 8).pa, Pa(f.pa_4k.0 + 8));
    assert_eq!(translate(&f, V4K + 16).pa, Pa(f.pa_4k.0 + 16));
    assert_eq!(translate(&f, V2M + MIB2 - 1).pa, Pa(f.pa_2m.0 + MIB2 - 1));
    let m = f.core.v2p_cache_metrics();
    assert_eq!((m.len, m.misses, m.hits), (3, 3, 1510 + 2));
}

#[test]
fn flushes_drop_large_entries() {
    let f = fixture();
    translate(&f, V2M + 5);
    translate(&f, V1G + 5);
    translate(&f, V4K + 5);
    assert_eq!(f.core.v2p_cache_metrics().len, 3);

    // A single-entry flush at any address of the large page drops the page's entry ...
    f.core
        .flush_v2p_cache_entry(AddressContext::new(Va(V2M + MIB2 - 8), f.root));
    let m = f.core.v2p_cache_metrics();
    assert_eq!((m.len, m.misses), (2, 3));
    translate(&f, V2M + 5);
    assert_eq!(f.core.v2p_cache_metrics().misses, 4);
    // ... and only that one.
    translate(&f, V1G + 12345);
    translate(&f, V4K + 9);
    assert_eq!(f.core.v2p_cache_metrics().misses, 4);
    f.core
        .flush_v2p_cache_entry(AddressContext::new(Va(V1G + GIB1 / 2), f.root));
    translate(&f, V1G);
    assert_eq!(f.core.v2p_cache_metrics().misses, 5);
    // Under another root nothing is dropped.
    f.core
        .flush_v2p_cache_entry(AddressContext::new(Va(V2M), Pa(f.root.0 + 4096)));
    translate(&f, V2M);
    assert_eq!(f.core.v2p_cache_metrics().misses, 5);

    // A whole flush outdates every kind.
    f.core.flush_v2p_cache();
    translate(&f, V2M + 77);
    translate(&f, V1G + 77);
    translate(&f, V4K + 77);
    assert_eq!(f.core.v2p_cache_metrics().misses, 8);
    // A resize empties the cache (base and large pages share its `TLB` entries).
    f.core.resize_v2p_cache(64);
    assert_eq!(f.core.v2p_cache_metrics().len, 0);
    translate(&f, V2M + 77);
    let m = f.core.v2p_cache_metrics();
    assert_eq!((m.len, m.misses, m.capacity), (1, 9, 64));
}

/// Rewriting the PDE of a cached 2 MiB page through the core moves the mapping at once,
/// and clearing it unmaps the whole page at once.
#[test]
fn writes_to_page_tables_invalidate_large_entries() {
    let f = fixture();
    let ctx = AccessContext::paging(Va(V2M), f.root);
    assert_eq!(f.core.read_string(ctx).unwrap(), "large");
    let mut pde = None;
    f.core
        .translate_with(f.core.paging(), Va(V2M), f.root, |s| {
            if s.level == 2 {
                pde = Some(s);
            }
        })
        .unwrap();
    let pde = pde.unwrap();
    assert_eq!(pde.value & 0x000f_ffff_ffe0_0000, f.pa_2m.0);
    f.core
        .write_u64(
            AccessContext::direct(pde.entry),
            (pde.value & !0x000f_ffff_ffe0_0000) | f.other_2m.0,
        )
        .unwrap();
    assert_eq!(f.core.read_string(ctx).unwrap(), "other");
    assert_eq!(translate(&f, V2M + 0x1234).pa, Pa(f.other_2m.0 + 0x1234));
    f.core
        .write_u64(AccessContext::direct(pde.entry), 0)
        .unwrap();
    assert!(f.core.translate(Va(V2M + 0x1f_0000), f.root).is_err());
}

/// A bulk read across a 2 MiB page's sub-pages returns the bytes of the right frame.
#[test]
fn reads_across_a_large_page_are_exact() {
    let f = fixture();
    let mut pattern = vec![0u8; 2 * 4096 + 50];
    let mut rng = Rng::new(3);
    for b in &mut pattern {
        *b = rng.next_u64() as u8;
    }
    let at = V2M + MIB2 - 2 * 4096 - 50;
    // The bytes end at the last byte of the 2 MiB page; one more is unmapped.
    f.core
        .write(AccessContext::paging(Va(at), f.root), &pattern)
        .unwrap();
    let mut back = vec![0u8; 2 * 4096 + 50];
    f.core
        .read(AccessContext::paging(Va(at), f.root), &mut back)
        .unwrap();
    assert_eq!(back, pattern);
    let mut past = vec![0u8; 2 * 4096 + 51];
    assert!(
        f.core
            .read(AccessContext::paging(Va(at), f.root), &mut past)
            .is_err()
    );
}
