//! Reads through the core, end to end: the walker against `GuestBuilder`'s own record over
//! random layouts, every read surface across page boundaries, and the defects of the
//! reference design that must not come back.

use core::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use introvisor::arch::amd64::{Amd64, Paging, PagingMode};
use introvisor::{
    AccessContext, AddressContext, Architecture, FaultReason, Gfn, MemoryAccess, Pa, PageRef,
    PhysRead, Translation, Va, VmiCore, VmiDriver, VmiError, VmiInfo, WalkStep,
};
use introvisor_host::HostDriver;
use introvisor_host::builder::{Guest, GuestBuilder, MapFlags, PageSize};
use introvisor_host_test::{Rng, seed};

// ----- helpers ---------------------------------------------------------------------------

fn random_flags(rng: &mut Rng) -> MapFlags {
    let bits = rng.next_u64();
    MapFlags {
        writable: bits & 1 != 0,
        user: bits & 2 != 0,
        executable: bits & 4 != 0,
    }
}

fn canonical(va: u64, bits: u32) -> u64 {
    (((va << (64 - bits)) as i64) >> (64 - bits)) as u64
}

/// A random layout: hundreds of 4 KiB pages, dozens of 2 MiB pages, a few 1 GiB pages
/// (these alias physical addresses past memory: the walk succeeds, reads would not).
fn random_guest(rng: &mut Rng, levels: u8) -> Guest {
    let va_bits = if levels == 5 { 57 } else { 48 };
    let mut b = GuestBuilder::with_levels(64 << 20, levels);
    let mut made = [0usize; 3];
    let wanted = [400usize, 12, 3];
    let mut attempts = 0;
    while made != wanted && attempts < 100_000 {
        attempts += 1;
        let kind = rng.below(3) as usize;
        if made[kind] == wanted[kind] {
            continue;
        }
        let size = [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G][kind];
        // Cluster half of the addresses so that tables are shared, spread the rest.
        let raw = if rng.below(2) == 0 {
            0xffff_8000_0000_0000u64.wrapping_add(rng.below(1 << 34))
        } else {
            rng.next_u64()
        };
        let va = Va(canonical(raw, va_bits) & !(size.bytes() - 1));
        let flags = random_flags(rng);
        let result = match size {
            PageSize::Size1G => {
                let pa = Pa((1 + rng.below(8)) << 30);
                b.map(va, pa, size, flags)
            }
            _ => b.map_new(va, size, flags).map(|_| ()),
        };
        if result.is_ok() {
            made[kind] += 1;
        }
    }
    assert_eq!(
        made, wanted,
        "the layout generator could not place every mapping"
    );
    b.finish()
}

fn expected_access(flags: MapFlags) -> MemoryAccess {
    let mut a = MemoryAccess::R;
    if flags.writable {
        a |= MemoryAccess::W;
    }
    if flags.executable {
        a |= MemoryAccess::X;
    }
    a
}

// ----- the walker against the builder's record -------------------------------------------

fn walker_matches_record(levels: u8, seed_value: u64) {
    let mut rng = Rng::new(seed_value);
    let guest = random_guest(&mut rng, levels);
    let mode = if levels == 5 {
        PagingMode::Level5
    } else {
        PagingMode::Level4
    };
    let paging = Paging::new(mode);
    let root = guest.root;
    let mappings = guest.mappings.clone();
    let memory = guest.memory.clone();
    let core = VmiCore::new(HostDriver::from_vec(guest.memory)).with_paging(paging);

    let mut checked = 0;
    for m in &mappings {
        for _ in 0..8 {
            let offset = rng.below(m.size.bytes());
            let va = Va(m.va.0 + offset);
            let expect = Translation {
                pa: Pa(m.pa.0 + offset),
                page_size: m.size.bytes(),
                access: expected_access(m.flags),
                user: m.flags.user,
            };
            // Straight from the bytes, and through the core's caches (twice: miss, hit).
            let direct = Amd64::translate(&memory[..], &paging, va, root);
            assert_eq!(direct, Ok(expect), "direct walk of {va:?} in {m:?}");
            assert_eq!(core.translate(va, root), Ok(expect), "cold {va:?}");
            assert_eq!(core.translate(va, root), Ok(expect), "warm {va:?}");
            checked += 1;
        }
    }
    // Unmapped addresses: the walk fails with "not present" at some level.
    let va_bits = if levels == 5 { 57 } else { 48 };
    let mut unmapped = 0;
    while unmapped < 2000 {
        let va = Va(canonical(rng.next_u64(), va_bits));
        if guest_lookup(&mappings, va).is_some() {
            continue;
        }
        match core.translate(va, root) {
            Err(VmiError::Translation(pf)) => {
                assert_eq!(pf.reason, FaultReason::NotPresent, "{va:?}: {pf}");
                assert_eq!(pf.va, va);
                assert!(pf.level >= 1 && pf.level <= levels);
            }
            other => panic!("{va:?} is not mapped but translated to {other:?}"),
        }
        unmapped += 1;
    }
    println!(
        "levels {levels}, seed {seed_value}: {checked} mapped and {unmapped} unmapped addresses agree"
    );
}

fn guest_lookup(mappings: &[introvisor_host::builder::Mapping], va: Va) -> Option<Pa> {
    mappings
        .iter()
        .find(|m| va.0.wrapping_sub(m.va.0) < m.size.bytes())
        .map(|m| Pa(m.pa.0 + (va.0 - m.va.0)))
}

#[test]
fn walker_matches_builder_record_4_level() {
    let s = seed(0x4c45_5645_4c34);
    for i in 0..4 {
        walker_matches_record(4, s.wrapping_add(i));
    }
}

#[test]
fn walker_matches_builder_record_5_level() {
    let s = seed(0x4c45_5645_4c35);
    for i in 0..4 {
        walker_matches_record(5, s.wrapping_add(i));
    }
}

// ----- read surfaces across page boundaries -------------------------------------------

const BASE: u64 = 0x7f00_0000_0000;

/// Four consecutive 4 KiB pages at BASE, backed by scattered frames, followed by an
/// unmapped page, and a 2 MiB page after that.
fn boundary_guest(writable: bool) -> (VmiCore<HostDriver>, Pa, Vec<u8>) {
    let mut b = GuestBuilder::new(16 << 20);
    let mut frames = Vec::new();
    for i in [2u64, 0, 3, 1] {
        // Map in a scrambled physical order so a read that ignored translation per page
        // would get the wrong bytes.
        frames.push((i, b.alloc(4096, 4096).unwrap()));
    }
    for (i, pa) in &frames {
        b.map(
            Va(BASE + i * 4096),
            *pa,
            PageSize::Size4K,
            MapFlags::USER_DATA,
        )
        .unwrap();
    }
    b.map_new(Va(BASE + 0x20_0000), PageSize::Size2M, MapFlags::USER_DATA)
        .unwrap();
    let pattern: Vec<u8> = (0..4 * 4096u32).map(|i| (i * 7 + i / 4096) as u8).collect();
    b.write_virtual(Va(BASE), &pattern).unwrap();
    let guest = b.finish();
    let driver = if writable {
        HostDriver::from_vec_writable(guest.memory)
    } else {
        HostDriver::from_vec(guest.memory)
    };
    (VmiCore::new(driver), guest.root, pattern)
}

#[test]
fn every_read_surface_across_page_boundaries() {
    let (core, root, pattern) = boundary_guest(false);
    let at = |off: u64| AccessContext::paging(Va(BASE + off), root);
    let le = |off: usize, n: usize| {
        let mut v = 0u64;
        for (i, b) in pattern[off..off + n].iter().enumerate() {
            v |= u64::from(*b) << (8 * i);
        }
        v
    };
    for boundary in [4096usize, 8192, 12288] {
        for start in boundary - 7..boundary {
            let off = start as u64;
            assert_eq!(u64::from(core.read_u8(at(off)).unwrap()), le(start, 1));
            assert_eq!(u64::from(core.read_u16(at(off)).unwrap()), le(start, 2));
            assert_eq!(u64::from(core.read_u32(at(off)).unwrap()), le(start, 4));
            assert_eq!(core.read_u64(at(off)).unwrap(), le(start, 8));
            assert_eq!(core.read_address(at(off), 4).unwrap(), le(start, 4));
            assert_eq!(core.read_address(at(off), 8).unwrap(), le(start, 8));
            assert_eq!(core.read_address32(at(off)).unwrap(), le(start, 4));
            assert_eq!(core.read_address64(at(off)).unwrap(), le(start, 8));
            assert_eq!(core.read_va(at(off), 8).unwrap(), Va(le(start, 8)));
            assert_eq!(core.read_va32(at(off)).unwrap(), Va(le(start, 4)));
            assert_eq!(core.read_va64(at(off)).unwrap(), Va(le(start, 8)));
            let s: [u8; 16] = core.read_struct(at(off)).unwrap();
            assert_eq!(&s[..], &pattern[start..start + 16]);
        }
    }
    // One read of everything, and odd-sized reads at odd offsets.
    let mut all = vec![0u8; pattern.len()];
    core.read(at(0), &mut all).unwrap();
    assert_eq!(all, pattern);
    let mut odd = vec![0u8; 5000];
    core.read(at(1234), &mut odd).unwrap();
    assert_eq!(&odd[..], &pattern[1234..6234]);
    // Widths other than 4 and 8 are errors, not truncations.
    for w in [0u8, 1, 2, 3, 5, 7, 16] {
        assert_eq!(
            core.read_address(at(0), w),
            Err(VmiError::InvalidAddressWidth(w))
        );
    }
    // A read that runs into the unmapped page names the first faulting address.
    let mut buf = vec![0u8; 64];
    let err = core.read(at(4 * 4096 - 32), &mut buf).unwrap_err();
    let pf = err.page_fault().copied().expect("a page fault");
    assert_eq!(pf.va, Va(BASE + 4 * 4096));
    assert_eq!(pf.reason, FaultReason::NotPresent);
    // Physical reads see the same bytes.
    let pa = core
        .translate_address(AddressContext::new(Va(BASE + 4090), root))
        .unwrap();
    let mut phys = [0u8; 6];
    core.read(AccessContext::direct(pa), &mut phys).unwrap();
    assert_eq!(&phys[..], &pattern[4090..4096]);
}

#[test]
fn writes_cross_pages_and_read_back() {
    let (core, root, mut pattern) = boundary_guest(true);
    let at = |off: u64| AccessContext::paging(Va(BASE + off), root);
    core.write_u64(at(4093), 0x1122_3344_5566_7788).unwrap();
    pattern[4093..4101].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    core.write_u32(at(8190), 0xdead_beef).unwrap();
    pattern[8190..8194].copy_from_slice(&0xdead_beefu32.to_le_bytes());
    core.write_u16(at(12287), 0xabcd).unwrap();
    pattern[12287..12289].copy_from_slice(&0xabcdu16.to_le_bytes());
    core.write_u8(at(5), 0x5a).unwrap();
    pattern[5] = 0x5a;
    core.write_struct(at(4000), &[9u8; 200]).unwrap();
    pattern[4000..4200].fill(9);
    let mut all = vec![0u8; pattern.len()];
    core.read(at(0), &mut all).unwrap();
    assert_eq!(all, pattern);
}

// ----- the defects of the reference design ----------------------------------------------

/// A string of more than two pages comes back whole: the read position advances by the
/// chunk just read, not by the total.
#[test]
fn defect_long_string_is_correct_on_every_page() {
    let mut b = GuestBuilder::new(8 << 20);
    b.map_range(Va(BASE), 5 * 4096, MapFlags::USER_DATA)
        .unwrap();
    let text: Vec<u8> = (0..3 * 4096 + 1000)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    // Start mid-page so that every chunk boundary differs from a page boundary.
    b.write_virtual(Va(BASE + 100), &text).unwrap();
    b.write_virtual(Va(BASE + 100 + text.len() as u64), &[0])
        .unwrap();
    let guest = b.finish();
    let core = VmiCore::new(HostDriver::from_vec(guest.memory));
    let ctx = AccessContext::paging(Va(BASE + 100), guest.root);
    assert_eq!(core.read_string_bytes(ctx).unwrap(), text);
    assert_eq!(
        core.read_string(ctx).unwrap(),
        String::from_utf8(text.clone()).unwrap()
    );
    let mut buf = vec![0u8; 5 * 4096];
    assert_eq!(
        core.read_string_bytes_into(ctx, &mut buf).unwrap(),
        &text[..]
    );
}

/// A guest cannot make a string read run through all of memory: the default limit is
/// bounded, and both the limit and the per-call limit hold.
#[test]
fn defect_strings_are_bounded_by_default() {
    let mut b = GuestBuilder::new(8 << 20);
    // 1 MiB of non-NUL bytes.
    b.map_range(Va(BASE), 1 << 20, MapFlags::USER_DATA).unwrap();
    b.write_virtual(Va(BASE), &vec![b'x'; 1 << 20]).unwrap();
    let guest = b.finish();
    let core = VmiCore::new(HostDriver::from_vec(guest.memory));
    let ctx = AccessContext::paging(Va(BASE), guest.root);
    let limit = core.read_string_length_limit();
    assert!(limit > 0 && limit < 1 << 20, "default limit {limit}");
    assert_eq!(core.read_string_bytes(ctx).unwrap().len(), limit);
    assert_eq!(core.read_wstring_bytes(ctx).unwrap().len(), limit / 2);
    core.set_read_string_length_limit(10_000);
    assert_eq!(core.read_string(ctx).unwrap().len(), 10_000);
    assert_eq!(core.read_string_bytes_limited(ctx, 5).unwrap(), b"xxxxx");
    assert_eq!(
        core.read_wstring_limited(ctx, 6).unwrap().chars().count(),
        3
    );
    let core = core.with_read_string_length_limit(77);
    let mut buf = vec![0u8; 1 << 20];
    assert_eq!(
        core.read_string_bytes_into(ctx, &mut buf).unwrap().len(),
        77
    );
}

/// A write through the core leaves neither a stale page nor a stale translation behind:
/// rewriting a PTE moves the mapping at once.
#[test]
fn defect_writes_keep_both_caches_true() {
    let mut b = GuestBuilder::new(8 << 20);
    let first = b
        .map_new(Va(BASE), PageSize::Size4K, MapFlags::USER_DATA)
        .unwrap();
    let second = b.alloc(4096, 4096).unwrap();
    b.write_physical(first, b"first\0").unwrap();
    b.write_physical(second, b"second\0").unwrap();
    let guest = b.finish();
    let root = guest.root;
    let core = VmiCore::new(HostDriver::from_vec_writable(guest.memory));
    let ctx = AccessContext::paging(Va(BASE), root);
    assert_eq!(core.read_string(ctx).unwrap(), "first");
    assert!(core.v2p_cache_metrics().len >= 1);

    // Data: the cached page must not hide the write.
    core.write(ctx, b"FIRST").unwrap();
    assert_eq!(core.read_string(ctx).unwrap(), "FIRST");

    // Page table: find the PTE with a detailed walk and point it at the second frame.
    let mut pte = None;
    core.translate_with(core.paging(), Va(BASE), root, |s: WalkStep| {
        if s.level == 1 {
            pte = Some(s);
        }
    })
    .unwrap();
    let pte = pte.unwrap();
    core.write_u64(
        AccessContext::direct(pte.entry),
        (pte.value & !0x000f_ffff_ffff_f000) | second.0,
    )
    .unwrap();
    assert_eq!(
        core.translate_address(AddressContext::new(Va(BASE), root)),
        Ok(second)
    );
    assert_eq!(core.read_string(ctx).unwrap(), "second");

    // Clearing the present bit unmaps it at once.
    core.write_u64(AccessContext::direct(pte.entry), 0).unwrap();
    assert!(matches!(
        core.read_string(ctx),
        Err(VmiError::Translation(pf)) if pf.reason == FaultReason::NotPresent && pf.level == 1
    ));
}

/// The translation cache is keyed by page: every byte of one page shares one entry.
#[test]
fn defect_translation_cache_is_per_page_not_per_byte() {
    let mut b = GuestBuilder::new(8 << 20);
    b.map_range(Va(BASE), 2 * 4096, MapFlags::USER_DATA)
        .unwrap();
    let guest = b.finish();
    let core = VmiCore::new(HostDriver::from_vec(guest.memory));
    for off in 0..4096 {
        core.translate_address(AddressContext::new(Va(BASE + off), guest.root))
            .unwrap();
    }
    let m = core.v2p_cache_metrics();
    assert_eq!((m.len, m.misses, m.hits), (1, 1, 4095));
    core.translate_address(AddressContext::new(Va(BASE + 4096), guest.root))
        .unwrap();
    assert_eq!(core.v2p_cache_metrics().len, 2);
    // A flush is O(1) and complete: everything misses afterwards.
    core.flush_v2p_cache();
    core.translate_address(AddressContext::new(Va(BASE + 5), guest.root))
        .unwrap();
    assert_eq!(core.v2p_cache_metrics().misses, 3);
    // A single-entry flush drops just that page.
    core.flush_v2p_cache_entry(AddressContext::new(Va(BASE + 77), guest.root));
    core.translate_address(AddressContext::new(Va(BASE + 5), guest.root))
        .unwrap();
    assert_eq!(core.v2p_cache_metrics().misses, 4);
}

/// UTF-16 strings at odd addresses, and crossing a page boundary in the middle of a code
/// unit, come back whole.
#[test]
fn defect_utf16_odd_address_and_split_unit() {
    let text = "Ünïcødé ∑ — 日本語 𝄞 path\\to\\file.sys";
    let units: Vec<u16> = text.encode_utf16().collect();
    let mut bytes: Vec<u8> = units.iter().flat_map(|u| u.to_le_bytes()).collect();
    bytes.extend_from_slice(&[0, 0]);
    for start in [
        4096 - 1,
        4096 - 3,
        4096 - 21,
        4096 - 2,
        4096 - 64,
        4096 - 65,
        1,
    ] {
        let mut b = GuestBuilder::new(8 << 20);
        // Two pages backed by frames that are not adjacent physically.
        let p0 = b
            .map_new(Va(BASE), PageSize::Size4K, MapFlags::USER_DATA)
            .unwrap();
        b.alloc(4096, 4096).unwrap();
        let p1 = b
            .map_new(Va(BASE + 4096), PageSize::Size4K, MapFlags::USER_DATA)
            .unwrap();
        assert_ne!(p0.0 + 4096, p1.0);
        b.write_virtual(Va(BASE + start), &bytes).unwrap();
        let guest = b.finish();
        let core = VmiCore::new(HostDriver::from_vec(guest.memory));
        let ctx = AccessContext::paging(Va(BASE + start), guest.root);
        assert_eq!(core.read_wstring(ctx).unwrap(), text, "start {start:#x}");
        assert_eq!(core.read_wstring_bytes(ctx).unwrap(), units);
        let mut buf = [0u16; 128];
        assert_eq!(
            core.read_wstring_bytes_into(ctx, &mut buf).unwrap(),
            &units[..]
        );
    }
}

/// Never the same GFN twice, even from several threads.
#[test]
fn defect_allocate_next_available_gfn_is_unique() {
    let core = Arc::new(VmiCore::new(HostDriver::from_vec(vec![0; 1 << 20])));
    let max = core.info().unwrap().max_gfn;
    let mut handles = Vec::new();
    for _ in 0..4 {
        let core = Arc::clone(&core);
        handles.push(std::thread::spawn(move || {
            (0..250)
                .map(|_| core.allocate_next_available_gfn().unwrap())
                .collect::<Vec<_>>()
        }));
    }
    let mut all: Vec<Gfn> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(all.len(), before, "a GFN was handed out twice");
    assert!(all.iter().all(|g| g.0 > max.0));
    // The driver saw each allocation exactly once.
    assert_eq!(core.driver().allocated_gfns().len(), 1000);
    // Freeing works once, then the frame is unknown.
    core.free_gfn(all[0]).unwrap();
    assert_eq!(core.free_gfn(all[0]), Err(VmiError::NotFound));
}

// ----- page size comes from the architecture ---------------------------------------------

/// A made-up architecture with 16 KiB pages and identity translation: the core must chunk
/// reads, strings and caches by 16 KiB, as the architecture says.
struct Arch16K;

impl Architecture for Arch16K {
    const PAGE_SIZE: u64 = 0x4000;
    const PAGE_SHIFT: u32 = 14;
    const PAGE_MASK: u64 = !0x3fff;
    type Registers = ();
    type GpRegisters = ();
    type Paging = ();
    const DEFAULT_PAGING: () = ();
    type Plan = ();
    const DEFAULT_PLAN: () = ();
    fn plan(_paging: &()) {}
    type EventMonitor = ();
    type EventReason = ();
    type Interrupt = ();

    fn translate_observed(
        _mem: &(impl PhysRead + ?Sized),
        _paging: &(),
        va: Va,
        _root: Pa,
        _observe: impl FnMut(WalkStep),
    ) -> Result<Translation, VmiError> {
        Ok(Translation {
            pa: Pa(va.0),
            page_size: 0x4000,
            access: MemoryAccess::RWX,
            user: true,
        })
    }
}

#[derive(Clone)]
struct Page16K(Arc<Vec<u8>>, Gfn);

impl PageRef for Page16K {
    fn gfn(&self) -> Gfn {
        self.1
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VmiError> {
        let start = (self.1.0 << 14) as usize + offset as usize;
        if offset as usize + buf.len() > 0x4000 {
            return Err(VmiError::InvalidArgument("range outside the page"));
        }
        buf.copy_from_slice(&self.0[start..start + buf.len()]);
        Ok(())
    }
}

struct Driver16K {
    memory: Arc<Vec<u8>>,
    page_reads: AtomicUsize,
}

impl VmiDriver for Driver16K {
    type Architecture = Arch16K;
    type Page = Page16K;

    fn info(&self) -> Result<VmiInfo, VmiError> {
        Ok(VmiInfo {
            page_size: 0x4000,
            page_shift: 14,
            max_gfn: Gfn(self.memory.len() as u64 / 0x4000 - 1),
            vcpus: 0,
        })
    }

    fn read_page(&self, gfn: Gfn) -> Result<Page16K, VmiError> {
        if gfn.0 >= self.memory.len() as u64 / 0x4000 {
            return Err(VmiError::GfnNotPresent(gfn));
        }
        self.page_reads.fetch_add(1, Ordering::Relaxed);
        Ok(Page16K(Arc::clone(&self.memory), gfn))
    }
}

#[test]
fn defect_page_size_comes_from_the_architecture() {
    let memory: Vec<u8> = (0..4 * 0x4000u32).map(|i| (i % 251) as u8 + 1).collect();
    let core = VmiCore::new(Driver16K {
        memory: Arc::new(memory.clone()),
        page_reads: AtomicUsize::new(0),
    });
    // 40 KiB from 8 KiB in: pages 0, 1 and 2 of 16 KiB, three page reads (with 4 KiB pages
    // hard-coded it would be ten).
    let mut buf = vec![0u8; 40 * 1024];
    core.read(AccessContext::paging(Va(0x2000), Pa(0)), &mut buf)
        .unwrap();
    assert_eq!(&buf[..], &memory[0x2000..0x2000 + 40 * 1024]);
    assert_eq!(core.driver().page_reads.load(Ordering::Relaxed), 3);
    // The translation cache holds one entry per 16 KiB page.
    assert_eq!(core.v2p_cache_metrics().len, 3);
    // A string that runs off the end of memory fails at the first byte past the last
    // 16 KiB page, not at a 4 KiB boundary.
    let err = core
        .read_string_bytes(AccessContext::direct(Pa(0x4000 * 4 - 10)))
        .unwrap_err();
    assert_eq!(err, VmiError::GfnNotPresent(Gfn(4)));
}

// ----- compile-time properties ----------------------------------------------------------

const fn assert_send_sync<T: Send + Sync>() {}
const _: () = assert_send_sync::<VmiCore<HostDriver>>();
const _: () = assert_send_sync::<HostDriver>();
const _: () = assert_send_sync::<VmiError>();
const _: () = {
    // Errors are small and Copy: cheap to return from an exit handler.
    const fn assert_copy<T: Copy>() {}
    assert_copy::<VmiError>();
    assert!(size_of::<VmiError>() <= 64);
};

/// Hostile tables through the whole core: a read never panics, whatever the root.
#[test]
fn random_roots_and_addresses_never_panic() {
    let mut rng = Rng::new(seed(99));
    let memory: Vec<u8> = (0..(1 << 20)).map(|_| rng.next_u64() as u8).collect();
    let core = VmiCore::new(HostDriver::from_vec(memory));
    let mut ok = 0;
    for _ in 0..20_000 {
        let root = Pa(rng.next_u64());
        let va = Va(rng.next_u64());
        let mut buf = [0u8; 64];
        if core.read(AccessContext::paging(va, root), &mut buf).is_ok() {
            ok += 1;
        }
        let _ = core.read_string_bytes(AccessContext::paging(va, root));
    }
    println!("{ok} of 20000 random reads succeeded");
}

/// Access-checked translation through the core: allowed accesses come back with the
/// translation (from the cache after the first), denied ones name the leaf entry.
#[test]
fn translate_access_through_the_core() {
    use introvisor::arch::amd64::{Access, AccessKind, RightsPolicy};
    let mut b = GuestBuilder::new(8 << 20);
    b.map_new(Va(BASE), PageSize::Size4K, MapFlags::KERNEL_TEXT)
        .unwrap();
    let guest = b.finish();
    let core = VmiCore::new(HostDriver::from_vec(guest.memory));
    let rights = RightsPolicy::new();
    let fetch = core.translate_access(
        Va(BASE + 8),
        guest.root,
        Access::supervisor(AccessKind::Fetch),
        rights,
    );
    assert_eq!(fetch.map(|t| t.access), Ok(MemoryAccess::RX));
    for denied in [
        Access::supervisor(AccessKind::Write),
        Access::user(AccessKind::Read),
    ] {
        let err = core
            .translate_access(Va(BASE + 8), guest.root, denied, rights)
            .unwrap_err();
        let pf = err.page_fault().copied().unwrap();
        assert_eq!(
            (pf.reason, pf.level),
            (FaultReason::AccessDenied, 1),
            "{denied:?}"
        );
        assert_ne!(pf.value, 0);
        let code = core.paging().fault_error_code(&pf, denied, rights).unwrap();
        assert!(code.contains(introvisor::arch::amd64::PfErrorCode::PRESENT));
    }
    // The first translation missed, the rest hit the cache.
    assert_eq!(core.v2p_cache_metrics().misses, 1);
}

/// The page cache holds page handles; memory a driver lends whole is read directly even
/// with the page cache enabled, and memory it does not lend goes through the cache.
#[test]
fn page_cache_is_used_only_for_memory_not_lent_whole() {
    let (lent, root, pattern) = boundary_guest(false);
    let (cached, root2, _) = boundary_guest(true);
    assert_eq!(root, root2);
    for core in [&lent, &cached] {
        let mut all = vec![0u8; pattern.len()];
        core.read(AccessContext::paging(Va(BASE), root), &mut all)
            .unwrap();
        assert_eq!(all, pattern);
    }
    let m = lent.gfn_cache_metrics();
    assert_eq!(
        (m.hits, m.misses, m.len),
        (0, 0, 0),
        "read-only memory is lent whole"
    );
    let m = cached.gfn_cache_metrics();
    assert!(
        m.misses > 0 && m.len > 0,
        "writable memory goes through the page cache: {m}"
    );
}
