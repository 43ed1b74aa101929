//! The hot paths allocate nothing: translate, `read_u64`, their batches
//! (`translate_many`, `read_u64_many`), a bulk read and a string read into a buffer, cold (caches flushed) and warm, under both cache configurations. A
//! counting global allocator (`introvisor_host_test::counting_alloc`) proves it; and the
//! core at its default capacities fits in 64 KiB of static data.

use introvisor::{AccessContext, Va, VmiCore};
use introvisor_host::HostDriver;
use introvisor_host::builder::{GuestBuilder, MapFlags, PageSize};
use introvisor_host_test::counting_alloc::{CountingAllocator, count_allocations};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const V4K: u64 = 0xffff_8000_0000_0000;
const V2M: u64 = 0xffff_8000_4000_0000;
const V1G: u64 = 0xffff_8080_0000_0000;

struct Fixture {
    core: VmiCore<HostDriver>,
    root: introvisor::Pa,
}

fn fixture(page_cache: bool) -> Fixture {
    let mut b = GuestBuilder::new(16 << 20);
    b.map_range(Va(V4K), 64 * 4096, MapFlags::KERNEL_DATA)
        .unwrap();
    b.map_new(Va(V2M), PageSize::Size2M, MapFlags::KERNEL_DATA)
        .unwrap();
    b.map(
        Va(V1G),
        introvisor::Pa(0),
        PageSize::Size1G,
        MapFlags::KERNEL_TEXT,
    )
    .unwrap();
    // A string across the boundary of two 4 KiB pages.
    b.write_virtual(Va(V4K + 4096 - 5), b"introvisor\0")
        .unwrap();
    let guest = b.finish();
    let core = VmiCore::new(HostDriver::from_vec(guest.memory));
    if !page_cache {
        core.disable_gfn_cache();
    }
    Fixture {
        core,
        root: guest.root,
    }
}

/// Every hot path once: translations and u64 reads in each page size, a bulk read across
/// 41 pages (a long read: a range walk and runs copied at once), and a string read into
/// a buffer.
fn hot_paths(f: &Fixture, bulk: &mut [u8]) {
    let ctx = |va| AccessContext::paging(Va(va), f.root);
    for va in [
        V4K + 8,
        V4K + 63 * 4096 + 8,
        V2M + 0x1_2348,
        V1G + 0x10_0000,
    ] {
        assert!(f.core.translate(Va(va), f.root).is_ok());
        assert!(f.core.read_u64(ctx(va)).is_ok());
    }
    // The batch APIs, over 20 addresses (more than one batch of eight), one of them a
    // u64 across two pages.
    let vas: [Va; 20] = core::array::from_fn(|i| match i % 4 {
        0 => Va(V4K + i as u64 * 4096 + 8),
        1 => Va(V2M + i as u64 * 0x1_0008),
        2 => Va(V1G + i as u64 * 0x1_0000),
        _ => Va(V4K + 4096 - 4),
    });
    let mut translations = [Err(introvisor::VmiError::NotFound); 20];
    assert_eq!(f.core.translate_many(&vas, f.root, &mut translations), 20);
    assert!(translations.iter().all(Result::is_ok));
    let mut words = [Err(introvisor::VmiError::NotFound); 20];
    assert_eq!(f.core.read_u64_many(&vas, f.root, &mut words), 20);
    assert!(words.iter().all(Result::is_ok));
    f.core.read(ctx(V4K + 100), bulk).unwrap();
    let mut buf = [0u8; 64];
    let s = f
        .core
        .read_string_bytes_into(ctx(V4K + 4096 - 5), &mut buf)
        .unwrap();
    assert_eq!(s, b"introvisor");
}

#[test]
fn hot_paths_allocate_nothing_warm_or_cold() {
    for page_cache in [true, false] {
        let f = fixture(page_cache);
        let mut bulk = vec![0u8; 40 * 4096];
        // Cold: the first use fills both caches (walks, page handles, insertions).
        let cold = count_allocations(|| hot_paths(&f, &mut bulk));
        assert_eq!(cold, 0, "cold paths allocated (page cache: {page_cache})");
        // Warm: everything hits.
        let warm = count_allocations(|| {
            for _ in 0..100 {
                hot_paths(&f, &mut bulk);
            }
        });
        assert_eq!(warm, 0, "warm paths allocated (page cache: {page_cache})");
        // After a flush, misses again.
        f.core.flush_v2p_cache();
        f.core.flush_gfn_cache();
        let flushed = count_allocations(|| hot_paths(&f, &mut bulk));
        assert_eq!(
            flushed, 0,
            "paths after a flush allocated (page cache: {page_cache})"
        );
        assert!(f.core.v2p_cache_metrics().hits > 0);
    }
}

/// The counter sees allocations: without this the test above would prove nothing.
#[test]
fn the_counter_counts() {
    let n = count_allocations(|| {
        core::hint::black_box(vec![1u8; 32]);
    });
    assert_eq!(n, 1);
}

/// A hypervisor keeps the core in static data: at the default capacities it fits in 64 KiB.
#[test]
fn core_at_default_capacities_fits_in_64_kib() {
    let size = size_of::<VmiCore<HostDriver>>();
    assert!(size <= 64 * 1024, "VmiCore<HostDriver> is {size} bytes");
}
