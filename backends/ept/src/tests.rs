//! The backend's unit tests over the test platform (`hostmem::testing`): tables, splits
//! and merges, views, shadow frames, guest memory, the exit path. Small and fast enough
//! for Miri.

use core::sync::atomic::Ordering;
use std::vec::Vec;

use introvisor::arch::amd64::{
    ControlRegister, EventMonitor, Interrupt, InterruptType, IoDirection, Registers,
};
use introvisor::{
    Gfn, MemoryAccess, Pa, VcpuId, View, VmiDriver, VmiError, VmiEvent, VmiEventResponse,
};

use crate::hostmem::testing::{Call, TestPlatform};
use crate::*;

/// Host memory: 56 frames at 256 MiB; the pool is its first 40 frames.
const BASE: u64 = 0x1000_0000;
const HOST_FRAMES: usize = 56;
const POOL: FramePool = FramePool {
    base: Hpa(BASE),
    frames: 40,
};
/// Guest RAM the tests read and write: 16 frames at GPA 0, backed by host frames 40..56.
const RAM_HPA: u64 = BASE + 40 * 4096;

const fn region(gpa: u64, hpa: u64, size: u64) -> GuestRegion {
    GuestRegion {
        gpa: Pa(gpa),
        hpa: Hpa(hpa),
        size,
        memory_type: MemoryType::WriteBack,
    }
}

/// A guest like a real one: 64 KiB of low RAM in 4 KiB leaves, a hole, 4 MiB in two
/// 2 MiB leaves, 1 GiB in one leaf, and a 2 MiB alias of the 4 MiB region high up.
const REGIONS: [GuestRegion; 4] = [
    region(0, RAM_HPA, 16 * 4096),
    region(0x20_0000, 0x4000_0000, 0x40_0000),
    region(0x4000_0000, 0x1_0000_0000, 0x4000_0000),
    region(0x1_8000_0000, 0x4000_0000, 0x20_0000),
];
/// Tables the default view needs: PML4, PDPT, the PD and PT of GiB 0, the PD of GiB 6.
const DEFAULT_TABLES: usize = 5;

type Backend = EptBackend<TestPlatform, 3, 64, 4, 4>;

fn config(regions: &[GuestRegion]) -> Config<'_> {
    Config::new(EptCapabilities::typical(), regions, POOL)
}

fn backend() -> Backend {
    let b = Backend::new(TestPlatform::new(BASE, HOST_FRAMES, 2), &config(&REGIONS)).unwrap();
    b.platform().take_log();
    b
}

fn log(b: &Backend) -> Vec<Call> {
    b.platform().take_log()
}

fn shootdowns(b: &Backend) -> usize {
    TestPlatform::shootdowns(&log(b))
}

fn level(b: &Backend, view: u16, gpa: u64) -> u8 {
    b.translate(View(view), Pa(gpa)).unwrap().level
}

#[test]
fn builds_the_default_view_with_the_largest_leaves() {
    let b = backend();
    assert_eq!(b.free_frames(), 40 - DEFAULT_TABLES);
    let t = b.translate(View(0), Pa(0x3123)).unwrap();
    assert_eq!(
        (t.hpa, t.level, t.access),
        (Hpa(RAM_HPA + 0x3123), 1, MemoryAccess::RWX)
    );
    assert_eq!(t.entry.memory_type_bits(), 6);
    let t = b.translate(View(0), Pa(0x41_0008)).unwrap();
    assert_eq!((t.hpa, t.level), (Hpa(0x4021_0008), 2));
    let t = b.translate(View(0), Pa(0x7fff_f000)).unwrap();
    assert_eq!((t.hpa, t.level), (Hpa(0x1_3fff_f000), 3));
    // The alias reaches the same host frame as the 4 MiB region.
    let t = b.translate(View(0), Pa(0x1_8000_1000)).unwrap();
    assert_eq!((t.hpa, t.level), (Hpa(0x4000_1000), 2));
    // Holes and addresses past the walk's reach.
    for hole in [
        0x10_000u64,
        0x1f_ffff,
        0x60_0000,
        0x8000_0000,
        0x1_8020_0000,
    ] {
        assert_eq!(
            b.translate(View(0), Pa(hole)),
            Err(EptError::OutsideGuestMemory(Pa(hole)))
        );
    }
    assert_eq!(
        b.translate(View(0), Pa(1 << 48)),
        Err(EptError::BeyondWalkReach(Pa(1 << 48)))
    );
    assert_eq!(
        b.translate(View(1), Pa(0)),
        Err(EptError::NoSuchView(View(1)))
    );
    assert_eq!(b.max_gfn(), Gfn(0x1_8020_0000 / 4096 - 1));
    let info = b.info().unwrap();
    assert_eq!(
        (info.page_size, info.vcpus, info.max_gfn),
        (4096, 2, b.max_gfn())
    );
    // Both vCPUs were pointed at the default view's EPTP.
    let b2 = Backend::new(TestPlatform::new(BASE, HOST_FRAMES, 2), &config(&REGIONS)).unwrap();
    let eptp = b2.eptp(View(0)).unwrap();
    let calls = log(&b2);
    assert_eq!(
        calls,
        [
            Call::SetEptp(VcpuId(0), eptp),
            Call::SetEptp(VcpuId(1), eptp)
        ]
    );
    assert_eq!((eptp.levels(), eptp.memory_type_bits()), (4, 6));
    b.verify().unwrap();
}

#[test]
fn five_level_hierarchies_walk_five_levels() {
    let caps = EptCapabilities::typical().union(EptCapabilities::WALK_LENGTH_5);
    let regions = [
        region(0x1_0000_0000_0000, 0x4000_0000, 0x20_0000),
        REGIONS[0],
    ];
    let mut cfg = Config::new(caps, &regions, POOL);
    cfg.levels = 5;
    let b = Backend::new(TestPlatform::new(BASE, HOST_FRAMES, 1), &cfg).unwrap();
    // Beyond 4-level reach (2^48), within 5-level reach.
    let t = b.translate(View(0), Pa(0x1_0000_0010_0000)).unwrap();
    assert_eq!((t.hpa, t.level), (Hpa(0x4010_0000), 2));
    assert_eq!(b.eptp(View(0)).unwrap().levels(), 5);
    b.set_access(View(0), Gfn(0x0010_0000_0100), MemoryAccess::R)
        .unwrap();
    assert_eq!(level(&b, 0, 0x1_0000_0010_0000), 1);
    b.verify().unwrap();
}

#[test]
fn sizes_that_wrap_the_address_space_are_refused_by_name() {
    let make = |cfg: &Config<'_>| Backend::new(TestPlatform::new(BASE, HOST_FRAMES, 1), cfg).err();
    // A region whose guest-physical end wraps past 2^64.
    let top = 0xffff_ffff_ffff_f000;
    let wraps_gpa = [region(top, RAM_HPA, 0x2000)];
    assert_eq!(
        make(&config(&wraps_gpa)),
        Some(EptError::BeyondWalkReach(Pa(top)))
    );
    // One that ends exactly at the 4-level reach is fine; a frame more is not, and the
    // error names the region's last byte.
    let at_reach = [region((1 << 48) - 0x1000, RAM_HPA, 0x1000)];
    assert_eq!(make(&config(&at_reach)), None);
    let past_reach = [region((1 << 48) - 0x1000, RAM_HPA, 0x2000)];
    assert_eq!(
        make(&config(&past_reach)),
        Some(EptError::BeyondWalkReach(Pa((1 << 48) + 0xfff)))
    );
    // A region whose host end wraps.
    let wraps_hpa = [region(0, top, 0x2000)];
    assert_eq!(make(&config(&wraps_hpa)), Some(EptError::Overlap));
    // A pool whose end wraps.
    let mut wraps_pool = config(&REGIONS);
    wraps_pool.pool.base = Hpa(top);
    wraps_pool.pool.frames = 2;
    assert_eq!(make(&wraps_pool), Some(EptError::Overlap));
}

#[test]
fn the_walk_geometry_is_total() {
    use crate::table::{level_size, reach};
    assert_eq!(
        [0, 1, 2, 3, 4, 5, 6, u8::MAX].map(level_size),
        [
            1 << 12,
            1 << 12,
            1 << 21,
            1 << 30,
            1 << 39,
            1 << 48,
            1 << 48,
            1 << 48
        ]
    );
    assert_eq!(reach(4), 1 << 48);
    assert_eq!(reach(5), 1 << 57);
    // Six levels or more would reach past 2^64: the reach saturates instead.
    assert_eq!(reach(6), u64::MAX);
    assert_eq!(reach(u8::MAX), u64::MAX);
    // Bits 5:3 of any EPTP give a length of 1..=8.
    assert_eq!(EptPointer(0b111 << 3).levels(), 8);
    assert_eq!(EptPointer(0).levels(), 1);
}

#[test]
fn refuses_bad_configurations_by_name() {
    let make = |cfg: &Config<'_>, vcpus| {
        Backend::new(TestPlatform::new(BASE, HOST_FRAMES, vcpus), cfg).err()
    };
    let overlap = [REGIONS[0], region(0xf000, 0x4000_0000, 0x2000)];
    assert_eq!(make(&config(&overlap), 1), Some(EptError::Overlap));
    let misaligned = [region(0x800, RAM_HPA, 0x1000)];
    assert_eq!(
        make(&config(&misaligned), 1),
        Some(EptError::Misaligned(Hpa(0x800)))
    );
    let empty = [region(0, RAM_HPA, 0)];
    assert_eq!(make(&config(&empty), 1), Some(EptError::Misaligned(Hpa(0))));
    let far = [region(0xffff_ffff_f000, RAM_HPA, 0x2000)];
    assert!(matches!(
        make(&config(&far), 1),
        Some(EptError::BeyondWalkReach(_))
    ));
    let over_pool = [region(0, BASE + 0x1000, 0x1000)];
    assert_eq!(make(&config(&over_pool), 1), Some(EptError::Overlap));
    let mut five = config(&REGIONS);
    five.levels = 5;
    assert_eq!(make(&five, 1), Some(EptError::WalkLengthUnsupported(5)));
    let no_invept = Config::new(
        EptCapabilities::typical().difference(EptCapabilities::INVEPT),
        &REGIONS,
        POOL,
    );
    assert_eq!(make(&no_invept, 1), Some(EptError::InveptUnsupported));
    let mut big_pool = config(&REGIONS);
    big_pool.pool.frames = 65;
    assert_eq!(make(&big_pool, 1), Some(EptError::CapacityExceeded));
    let mut unmapped_pool = config(&REGIONS);
    unmapped_pool.pool.base = Hpa(BASE + 20 * 4096);
    assert_eq!(
        make(&unmapped_pool, 1),
        Some(EptError::HostFrameUnmapped(Hpa(
            BASE + HOST_FRAMES as u64 * 4096
        )))
    );
    assert_eq!(make(&config(&REGIONS), 5), Some(EptError::CapacityExceeded));
    let mut tiny = config(&REGIONS);
    tiny.pool.frames = 3;
    assert_eq!(make(&tiny, 1), Some(EptError::PoolExhausted));
    // Without 1 GiB pages the 1 GiB region takes a PD of 2 MiB leaves instead.
    let no_1g = Config::new(
        EptCapabilities::typical().difference(EptCapabilities::PAGE_1G),
        &REGIONS,
        POOL,
    );
    let b = Backend::new(TestPlatform::new(BASE, HOST_FRAMES, 1), &no_1g).unwrap();
    assert_eq!(level(&b, 0, 0x7fff_f000), 2);
    assert_eq!(b.free_frames(), 40 - DEFAULT_TABLES - 1);
}

#[test]
fn splits_a_2m_leaf_for_one_frame_and_merges_it_back() {
    let b = backend();
    let free = b.free_frames();
    b.set_access(View(0), Gfn(0x201), MemoryAccess::R).unwrap();
    assert_eq!(b.access(View(0), Gfn(0x201)), Ok(MemoryAccess::R));
    assert_eq!(level(&b, 0, 0x20_1000), 1);
    // Its neighbours keep every right, now as 4 KiB leaves of the same frames.
    let n = b.translate(View(0), Pa(0x20_2000)).unwrap();
    assert_eq!(
        (n.level, n.access, n.hpa),
        (1, MemoryAccess::RWX, Hpa(0x4000_2000))
    );
    assert_eq!(
        level(&b, 0, 0x40_0000),
        2,
        "the other 2 MiB leaf is untouched"
    );
    assert_eq!(b.free_frames(), free - 1);
    let eptp = b.eptp(View(0)).unwrap();
    let calls = log(&b);
    assert_eq!(
        calls,
        [
            Call::Invept(Invept::SingleContext(eptp)),
            Call::Shootdown(Invept::SingleContext(eptp))
        ]
    );
    b.verify().unwrap();
    // Setting the same rights again changes nothing and needs nothing.
    b.set_access(View(0), Gfn(0x201), MemoryAccess::R).unwrap();
    assert_eq!(log(&b), []);
    // Agreeing again: merged into one 2 MiB leaf, the table back in the pool.
    b.set_access(View(0), Gfn(0x201), MemoryAccess::RWX)
        .unwrap();
    assert_eq!(level(&b, 0, 0x20_1000), 2);
    assert_eq!(b.free_frames(), free);
    assert_eq!(shootdowns(&b), 1, "a merge is shot down");
    b.verify().unwrap();
}

#[test]
fn splits_a_1g_leaf_twice_and_merges_both_levels_back() {
    let b = backend();
    let free = b.free_frames();
    let gfn = Gfn(0x4123_4000 >> 12);
    b.set_access(View(0), gfn, MemoryAccess::RX).unwrap();
    assert_eq!(b.free_frames(), free - 2);
    assert_eq!(level(&b, 0, 0x4123_4000), 1);
    assert_eq!(level(&b, 0, 0x4123_5000), 1);
    assert_eq!(
        level(&b, 0, 0x4163_4000),
        2,
        "the other 2 MiB pieces stay large"
    );
    assert_eq!(level(&b, 0, 0x7000_0000), 2);
    assert_eq!(
        b.translate(View(0), Pa(0x7000_0000)).unwrap().hpa,
        Hpa(0x1_3000_0000)
    );
    b.verify().unwrap();
    b.set_access(View(0), gfn, MemoryAccess::RWX).unwrap();
    assert_eq!(
        level(&b, 0, 0x4123_4000),
        3,
        "merged to 2 MiB, then to 1 GiB"
    );
    assert_eq!(b.free_frames(), free);
    b.verify().unwrap();
}

#[test]
fn loosening_needs_no_shootdown_and_tightening_does() {
    let b = backend();
    b.set_access(View(0), Gfn(3), MemoryAccess::R).unwrap();
    assert_eq!(shootdowns(&b), 1);
    b.set_access(View(0), Gfn(3), MemoryAccess::RW).unwrap();
    assert_eq!(log(&b), [], "loosening: no INVEPT, no shootdown");
    b.set_access(View(0), Gfn(3), MemoryAccess::RX).unwrap();
    assert_eq!(shootdowns(&b), 1, "RW to RX takes W away");
    b.set_access(View(0), Gfn(3), MemoryAccess::empty())
        .unwrap();
    assert_eq!(shootdowns(&b), 1);
    assert!(!b.translate(View(0), Pa(0x3000)).unwrap().entry.is_present());
    // A frame with no right still maps: a read of it through the backend works.
    let mut byte = [0u8; 1];
    b.read_physical(Pa(0x3000), &mut byte).unwrap();
}

#[test]
fn an_empty_pool_is_an_error_and_the_tables_stay_as_they_were() {
    let mut cfg = config(&REGIONS);
    cfg.pool.frames = DEFAULT_TABLES + 1;
    let b = Backend::new(TestPlatform::new(BASE, HOST_FRAMES, 1), &cfg).unwrap();
    assert_eq!(b.free_frames(), 1);
    let before = b.translate(View(0), Pa(0x4123_4000)).unwrap();
    assert_eq!(
        b.set_access(View(0), Gfn(0x41234), MemoryAccess::R),
        Err(EptError::PoolExhausted)
    );
    assert_eq!(b.translate(View(0), Pa(0x4123_4000)), Ok(before));
    assert_eq!(b.free_frames(), 1);
    // One frame is enough for a 2 MiB split.
    b.set_access(View(0), Gfn(0x201), MemoryAccess::R).unwrap();
    assert_eq!(b.free_frames(), 0);
    assert_eq!(b.create(MemoryAccess::RWX), Err(EptError::PoolExhausted));
    assert_eq!(
        b.allocate_shadow(Gfn(0x20_0000)),
        Err(EptError::PoolExhausted)
    );
    assert_eq!(
        b.set_access(View(0), Gfn(0x401), MemoryAccess::R),
        Err(EptError::PoolExhausted)
    );
    assert_eq!(level(&b, 0, 0x40_1000), 2);
    log(&b);
    assert_eq!(
        VmiDriver::set_memory_access(&b, Gfn(0x401), View(0), MemoryAccess::R),
        Err(VmiError::OutOfFrames)
    );
    assert_eq!(log(&b), [], "nothing written, nothing invalidated");
    b.verify().unwrap();
}

#[test]
fn a_shadow_frame_takes_only_the_tables_its_mapping_needs() {
    let mut cfg = config(&REGIONS);
    cfg.pool.frames = 2 * DEFAULT_TABLES + 4;
    let b = Backend::new(TestPlatform::new(BASE, HOST_FRAMES, 1), &cfg).unwrap();
    let v = b.create(MemoryAccess::R).unwrap();
    assert_eq!(b.free_frames(), 4);
    log(&b);
    // Just above guest memory, in GiB 6, whose page directory both views have: a page
    // table in each view, and the frame.
    let first = Gfn(b.max_gfn().0 + 1);
    b.allocate_shadow(first).unwrap();
    assert_eq!(b.free_frames(), 1);
    // Its neighbour: the frame alone, the pool's last.
    b.allocate_shadow(Gfn(first.0 + 1)).unwrap();
    assert_eq!(b.free_frames(), 0);
    for gfn in [first, Gfn(first.0 + 1)] {
        assert_eq!(b.access(View(0), gfn), Ok(MemoryAccess::RWX));
        assert_eq!(b.access(v, gfn), Ok(MemoryAccess::R));
    }
    assert_eq!(log(&b), [], "mapping a hole needs no invalidation");
    // Empty: refused, whatever the mapping would need, with nothing mapped.
    for gfn in [Gfn(first.0 + 2), Gfn(0x20_0000)] {
        assert_eq!(b.allocate_shadow(gfn), Err(EptError::PoolExhausted));
        assert_eq!(VmiDriver::allocate_gfn(&b, gfn), Err(VmiError::OutOfFrames));
        for view in [View(0), v] {
            assert_eq!(
                b.access(view, gfn),
                Err(EptError::OutsideGuestMemory(Pa(gfn.0 << 12)))
            );
        }
    }
    assert_eq!(b.free_frames(), 0);
    b.verify().unwrap();
    // One frame back (after its shootdown): the neighbour fits again.
    b.free_shadow(first).unwrap();
    assert_eq!(b.free_frames(), 1);
    b.allocate_shadow(Gfn(first.0 + 2)).unwrap();
    b.verify().unwrap();
}

#[test]
fn misconfigured_rights_are_refused_and_nothing_is_written() {
    let b = backend();
    assert_eq!(
        b.set_access(View(0), Gfn(1), MemoryAccess::W),
        Err(EptError::WriteWithoutRead)
    );
    assert_eq!(
        b.set_access(View(0), Gfn(1), MemoryAccess::W | MemoryAccess::X),
        Err(EptError::WriteExecuteWithoutRead)
    );
    assert_eq!(b.create(MemoryAccess::W), Err(EptError::WriteWithoutRead));
    assert_eq!(b.access(View(0), Gfn(1)), Ok(MemoryAccess::RWX));
    // Execute-only: allowed with the capability, refused without.
    b.set_access(View(0), Gfn(1), MemoryAccess::X).unwrap();
    let caps = EptCapabilities::typical().difference(EptCapabilities::EXECUTE_ONLY);
    let b2 = Backend::new(
        TestPlatform::new(BASE, HOST_FRAMES, 1),
        &Config::new(caps, &REGIONS, POOL),
    )
    .unwrap();
    assert_eq!(
        b2.set_access(View(0), Gfn(1), MemoryAccess::X),
        Err(EptError::ExecuteOnlyUnsupported)
    );
    assert_eq!(
        b.set_access(View(0), Gfn(0x10), MemoryAccess::R),
        Err(EptError::OutsideGuestMemory(Pa(0x10_000)))
    );
    assert_eq!(
        b.set_access(View(0), Gfn(u64::MAX), MemoryAccess::R),
        Err(EptError::OutsideGuestMemory(Pa(u64::MAX)))
    );
    b.verify().unwrap();
}

#[test]
fn views_have_their_own_rights_and_remaps() {
    let b = backend();
    let free = b.free_frames();
    let v = b.create(MemoryAccess::RX).unwrap();
    assert_eq!(v, View(1));
    assert_eq!(b.free_frames(), free - DEFAULT_TABLES);
    assert_eq!(log(&b), [], "a new view needs no invalidation");
    assert_eq!(b.access(v, Gfn(2)), Ok(MemoryAccess::RX));
    assert_eq!(b.access(View(0), Gfn(2)), Ok(MemoryAccess::RWX));
    assert_eq!(b.access(v, Gfn(0x40000)), Ok(MemoryAccess::RX));
    b.set_access(v, Gfn(2), MemoryAccess::X).unwrap();
    assert_eq!(b.access(v, Gfn(2)), Ok(MemoryAccess::X));
    assert_eq!(b.access(View(0), Gfn(2)), Ok(MemoryAccess::RWX));
    // Remap frame 2 to frame 5's host frame in the view only.
    b.remap(v, Gfn(2), Gfn(5)).unwrap();
    let t = b.translate(v, Pa(0x2008)).unwrap();
    assert_eq!((t.hpa, t.access), (Hpa(RAM_HPA + 0x5008), MemoryAccess::X));
    assert_eq!(
        b.translate(View(0), Pa(0x2008)).unwrap().hpa,
        Hpa(RAM_HPA + 0x2008)
    );
    let eptp = b.eptp(v).unwrap();
    assert_eq!(
        log(&b),
        [
            Call::Invept(Invept::SingleContext(eptp)),
            Call::Shootdown(Invept::SingleContext(eptp)),
            Call::Invept(Invept::SingleContext(eptp)),
            Call::Shootdown(Invept::SingleContext(eptp)),
        ],
        "RX to X tightens; a remap is shot down"
    );
    b.unmap_remap(v, Gfn(2)).unwrap();
    assert_eq!(
        b.translate(v, Pa(0x2008)).unwrap().hpa,
        Hpa(RAM_HPA + 0x2008)
    );
    assert_eq!(shootdowns(&b), 1);
    // Remaps in a 2 MiB leaf split it; undoing merges it back.
    b.remap(v, Gfn(0x300), Gfn(0x301)).unwrap();
    assert_eq!(level(&b, 1, 0x30_0000), 1);
    b.unmap_remap(v, Gfn(0x300)).unwrap();
    assert_eq!(level(&b, 1, 0x30_0000), 2);
    assert_eq!(b.remap(View(0), Gfn(2), Gfn(5)), Err(EptError::DefaultView));
    assert_eq!(
        b.remap(v, Gfn(2), Gfn(0x10)),
        Err(EptError::OutsideGuestMemory(Pa(0x10_000)))
    );
    assert_eq!(b.create(MemoryAccess::R), Ok(View(2)));
    assert_eq!(b.create(MemoryAccess::R), Ok(View(3)));
    assert_eq!(b.create(MemoryAccess::R), Err(EptError::ViewLimit));
    b.verify().unwrap();
    b.destroy(View(2)).unwrap();
    assert_eq!(b.create(MemoryAccess::RWX), Ok(View(2)), "a slot is reused");
    assert_eq!(b.destroy(View(0)), Err(EptError::DefaultView));
    assert_eq!(b.destroy(View(9)), Err(EptError::NoSuchView(View(9))));
    for view in 1..=3 {
        b.destroy(View(view)).unwrap();
    }
    assert_eq!(b.free_frames(), free, "every view's tables went back");
    b.verify().unwrap();
}

#[test]
fn destroying_the_view_a_vcpu_runs_in_moves_it_to_the_default_view_first() {
    let b = backend();
    let v = b.create(MemoryAccess::RWX).unwrap();
    let veptp = b.eptp(v).unwrap();
    b.switch_all(v).unwrap();
    assert_eq!(b.current_view(VcpuId(1)), Ok(v));
    assert_eq!(
        log(&b),
        [
            Call::SetEptp(VcpuId(0), veptp),
            Call::SetEptp(VcpuId(1), veptp)
        ]
    );
    b.destroy(v).unwrap();
    let d = b.eptp(View(0)).unwrap();
    let calls = log(&b);
    // Both vCPUs moved before the shootdown; the shootdown before the tables are freed.
    assert_eq!(
        calls,
        [
            Call::SetEptp(VcpuId(0), d),
            Call::SetEptp(VcpuId(1), d),
            Call::Invept(Invept::SingleContext(veptp)),
            Call::Shootdown(Invept::SingleContext(veptp)),
        ]
    );
    assert_eq!(b.current_view(VcpuId(0)), Ok(View(0)));
    assert_eq!(b.switch_all(v), Err(EptError::NoSuchView(v)));
    b.verify().unwrap();
}

#[test]
fn shadow_frames_live_above_guest_memory() {
    let b = backend();
    let v = b.create(MemoryAccess::R).unwrap();
    let free = b.free_frames();
    let shadow = Gfn(b.max_gfn().0 + 1);
    assert_eq!(b.allocate_shadow(Gfn(3)), Err(EptError::GfnInUse(Gfn(3))));
    assert_eq!(
        b.allocate_shadow(Gfn(0x10)),
        Err(EptError::GfnInUse(Gfn(0x10)))
    );
    let hpa = b.allocate_shadow(shadow).unwrap();
    assert_eq!(log(&b), [], "mapping a hole needs no invalidation");
    assert_eq!(b.allocate_shadow(shadow), Err(EptError::GfnInUse(shadow)));
    assert!(b.free_frames() < free);
    assert_eq!(b.access(v, shadow), Ok(MemoryAccess::R));
    assert_eq!(b.access(View(0), shadow), Ok(MemoryAccess::RWX));
    // Copy guest frame 4 into the shadow, plant a breakpoint, remap frame 4 in the view.
    let code = [0x55u8, 0x48, 0x89, 0xe5, 0x90, 0xc3];
    b.write_physical(Pa(0x4000), &code).unwrap();
    let mut page = [0u8; 4096];
    b.read_physical(Pa(0x4000), &mut page).unwrap();
    let spa = Pa(shadow.0 << 12);
    b.write_physical(spa, &page).unwrap();
    b.write_physical(spa, &[0xcc]).unwrap();
    b.remap(v, Gfn(4), shadow).unwrap();
    assert_eq!(b.translate(v, Pa(0x4000)).unwrap().hpa, hpa);
    let mut first = [0u8; 2];
    b.read_physical(Pa(0x4000), &mut first).unwrap();
    assert_eq!(first, [0x55, 0x48], "the default view sees the original");
    b.read_physical(spa, &mut first).unwrap();
    assert_eq!(first, [0xcc, 0x48]);
    b.verify().unwrap();
    log(&b);
    // Freeing the shadow undoes the remap onto it, then the frame goes back.
    assert_eq!(b.free_shadow(Gfn(4)), Err(EptError::NotShadowFrame(Gfn(4))));
    b.free_shadow(shadow).unwrap();
    assert_eq!(shootdowns(&b), 1);
    assert_eq!(
        b.translate(v, Pa(0x4000)).unwrap().hpa,
        Hpa(RAM_HPA + 0x4000)
    );
    assert!(b.translate(View(0), spa).is_err());
    assert_eq!(b.free_shadow(shadow), Err(EptError::NotShadowFrame(shadow)));
    b.verify().unwrap();
    // Through the core: allocate the next frame past guest memory.
    let core = introvisor::VmiCore::new(b);
    let g = core.allocate_next_available_gfn().unwrap();
    assert_eq!(g, shadow);
    core.free_gfn(g).unwrap();
}

#[test]
fn guest_memory_is_copied_through_the_default_view() {
    let b = backend();
    let data: Vec<u8> = (0..64u8).collect();
    // Across a frame boundary (contiguous RAM here), read back in pieces.
    b.write_physical(Pa(0x1fe0), &data).unwrap();
    let mut back = [0u8; 64];
    b.read_physical(Pa(0x1fe0), &mut back).unwrap();
    assert_eq!(&back[..], &data[..]);
    let page = b.read_page(Gfn(2)).unwrap();
    let mut head = [0u8; 32];
    introvisor::PageRef::read(&page, 0, &mut head).unwrap();
    assert_eq!(&head[..], &data[32..]);
    assert_eq!(
        introvisor::PageRef::read(&page, 4090, &mut head),
        Err(VmiError::InvalidArgument("range outside the page"))
    );
    page.write(0, &[0xaa]).unwrap();
    assert_eq!(b.platform().peek(RAM_HPA + 0x2000) & 0xff, 0xaa);
    assert!(b.physical_memory().is_none());
    // Past the end of RAM, in a hole, in memory the platform does not back.
    assert_eq!(
        b.read_physical(Pa(0xfff0), &mut back),
        Err(VmiError::OutOfBounds(Pa(0x10_000)))
    );
    assert_eq!(
        b.read_page(Gfn(0x10)).err(),
        Some(VmiError::GfnNotPresent(Gfn(0x10)))
    );
    assert_eq!(
        b.read_page(Gfn(u64::MAX)).err(),
        Some(VmiError::GfnNotPresent(Gfn(u64::MAX)))
    );
    assert_eq!(
        b.read_physical(Pa(0x4000_0000), &mut back),
        Err(VmiError::Driver("host frame not mapped"))
    );
    assert_eq!(
        b.read_physical(Pa(u64::MAX - 3), &mut back),
        Err(VmiError::OutOfBounds(Pa(u64::MAX - 3)))
    );
    // The core reads through the backend.
    let core = introvisor::VmiCore::new(b);
    assert_eq!(
        core.read_u8(introvisor::AccessContext::direct(Pa(0x2000))),
        Ok(0xaa)
    );
}

#[test]
fn corrupted_tables_fail_verification() {
    let b = backend();
    b.verify().unwrap();
    // Make the first 4 KiB leaf write-only, behind the backend's back.
    let t = b.translate(View(0), Pa(0)).unwrap();
    let bad = EptEntry(t.entry.0 & !0b111 | 0b010);
    let table = {
        let mut state = b.state.lock();
        let root = state.default_root;
        let tables = b.tables(&mut state);
        tables.walk(root, 0).unwrap().leaf().unwrap().table
    };
    hostmem::write_entry(b.platform(), table, 0, bad).unwrap();
    assert_eq!(b.verify(), Err(EptError::WriteWithoutRead));
    hostmem::write_entry(
        b.platform(),
        table,
        0,
        t.entry.with_address(Hpa(0x9_9999_9000)),
    )
    .unwrap();
    assert_eq!(b.verify(), Err(EptError::OutsideGuestMemory(Pa(0))));
}

// ----- the exit path ------------------------------------------------------------------

fn violation(gpa: u64, gla: u64, qualification: u64) -> ExitInfo {
    ExitInfo {
        reason: 48,
        qualification,
        guest_linear_address: gla,
        guest_physical_address: gpa,
        instruction_length: 3,
        ..ExitInfo::default()
    }
}

/// Runs `on_exit` inline, recording every event and answering with `answer`.
fn exit_with(
    b: &Backend,
    vcpu: u16,
    exit: &ExitInfo,
    answer: VmiEventResponse<introvisor::arch::amd64::Amd64>,
    seen: &mut Vec<VmiEvent<introvisor::arch::amd64::Amd64>>,
) -> Result<ExitAction, EptError> {
    let mut handler = |e: &VmiEvent<introvisor::arch::amd64::Amd64>| {
        seen.push(*e);
        answer
    };
    b.on_exit(VcpuId(vcpu), exit, Some(&mut handler))
}

fn set_regs(b: &Backend, vcpu: u16, f: impl FnOnce(&mut Registers)) {
    let mut regs = b.platform().regs.lock().unwrap();
    f(&mut regs[usize::from(vcpu)]);
}

#[test]
fn write_watch_reports_gpa_gva_and_access() {
    let b = backend();
    b.set_access(View(0), Gfn(6), MemoryAccess::RX).unwrap();
    log(&b);
    let mut seen = Vec::new();
    // A write (bit 1), entry readable+executable (bits 3, 5), GLA valid, final (7, 8).
    let exit = violation(0x6010, 0xffff_8880_0000_6010, 0x1aa);
    let action = exit_with(&b, 1, &exit, VmiEventResponse::continue_(), &mut seen).unwrap();
    assert_eq!(action, ExitAction::Resume);
    assert_eq!(seen.len(), 1);
    let e = seen[0];
    assert_eq!((e.vcpu, e.view), (VcpuId(1), Some(View(0))));
    let m = e.reason.as_memory_access().unwrap();
    assert_eq!(m.pa, Pa(0x6010));
    assert_eq!(m.va, Some(introvisor::Va(0xffff_8880_0000_6010)));
    assert_eq!(m.access, MemoryAccess::W);
    assert_eq!(e.registers.rip, 0xffff_8000_0000_1000);
    assert_eq!(log(&b), [], "a continue changes nothing");
    assert_eq!(b.current_exit(VcpuId(1)), None, "the exit is over");
    // A read of the same frame is allowed: spurious (a stale mapping), no event.
    let read = violation(0x6010, 0, 0x9);
    assert_eq!(
        exit_with(&b, 1, &read, VmiEventResponse::continue_(), &mut seen),
        Ok(ExitAction::Resume)
    );
    assert_eq!(seen.len(), 1);
    let eptp = b.eptp(View(0)).unwrap();
    assert_eq!(log(&b), [Call::Invept(Invept::SingleContext(eptp))]);
    // A violation outside guest memory (MMIO) is the hypervisor's.
    assert_eq!(
        exit_with(
            &b,
            1,
            &violation(0xfee0_0000, 0, 1),
            VmiEventResponse::continue_(),
            &mut seen
        ),
        Ok(ExitAction::NotMine)
    );
    // No access type at all: a hostile qualification, refused.
    assert!(matches!(
        exit_with(
            &b,
            1,
            &violation(0x6010, 0, 0x38),
            VmiEventResponse::continue_(),
            &mut seen
        ),
        Err(EptError::InvalidExitInformation(_))
    ));
    assert_eq!(
        exit_with(&b, 7, &exit, VmiEventResponse::continue_(), &mut seen),
        Err(EptError::NoSuchVcpu(VcpuId(7)))
    );
    // A vCPU whose view is being destroyed under it retries (in the default view the
    // destruction moves it to) without an event.
    log(&b);
    b.vcpus[1].lock().view = View(3);
    assert_eq!(
        exit_with(&b, 1, &exit, VmiEventResponse::continue_(), &mut seen),
        Ok(ExitAction::Resume)
    );
    assert_eq!(log(&b), [Call::Invept(Invept::AllContext)]);
    assert_eq!(seen.len(), 1);
}

#[test]
fn loosened_rights_turn_a_stale_violation_into_a_silent_resume() {
    let b = backend();
    b.set_access(View(0), Gfn(6), MemoryAccess::R).unwrap();
    b.set_access(View(0), Gfn(6), MemoryAccess::RW).unwrap();
    log(&b);
    let mut seen = Vec::new();
    // A CPU that cached the R-only mapping faults on a write.
    let action = exit_with(
        &b,
        0,
        &violation(0x6000, 0, 0x0a),
        VmiEventResponse::continue_(),
        &mut seen,
    );
    assert_eq!(action, Ok(ExitAction::Resume));
    assert!(seen.is_empty());
    let eptp = b.eptp(View(0)).unwrap();
    assert_eq!(log(&b), [Call::Invept(Invept::SingleContext(eptp))]);
    // Without single-context INVEPT the backend falls back to all-context.
    let caps = EptCapabilities::typical().difference(EptCapabilities::INVEPT_SINGLE_CONTEXT);
    let b2 = Backend::new(
        TestPlatform::new(BASE, HOST_FRAMES, 1),
        &Config::new(caps, &REGIONS, POOL),
    )
    .unwrap();
    log(&b2);
    exit_with(
        &b2,
        0,
        &violation(0x6000, 0, 0x0a),
        VmiEventResponse::continue_(),
        &mut seen,
    )
    .unwrap();
    assert_eq!(log(&b2), [Call::Invept(Invept::AllContext)]);
}

#[test]
fn fast_single_step_runs_one_instruction_in_another_view_with_if_untouched() {
    let b = backend();
    let exec = b.create(MemoryAccess::RWX).unwrap();
    b.set_access(View(0), Gfn(4), MemoryAccess::RW).unwrap();
    let d = b.eptp(View(0)).unwrap();
    let x = b.eptp(exec).unwrap();
    log(&b);
    let mut seen = Vec::new();
    let fetch = violation(0x4000, 0xffff_8000_0000_4000, 0x19c);
    let step = VmiEventResponse::continue_().fast_singlestep(exec);
    assert_eq!(
        exit_with(&b, 0, &fetch, step, &mut seen),
        Ok(ExitAction::Resume)
    );
    assert_eq!(seen.len(), 1);
    assert_eq!(
        log(&b),
        [
            Call::SetEptp(VcpuId(0), x),
            Call::Control(VcpuId(0), Control::MonitorTrap, true),
            Call::Control(VcpuId(0), Control::ExternalInterruptExiting, true),
        ],
        "IF is set: interrupts are held during the step"
    );
    assert_eq!(b.current_view(VcpuId(0)), Ok(exec));
    // The instruction ran: back to the default view, no event.
    let mtf = ExitInfo {
        reason: 37,
        ..ExitInfo::default()
    };
    assert_eq!(
        exit_with(&b, 0, &mtf, step, &mut seen),
        Ok(ExitAction::Resume)
    );
    assert_eq!(seen.len(), 1);
    assert_eq!(
        log(&b),
        [
            Call::SetEptp(VcpuId(0), d),
            Call::Control(VcpuId(0), Control::MonitorTrap, false),
            Call::Control(VcpuId(0), Control::ExternalInterruptExiting, false),
        ]
    );
    assert_eq!(b.current_view(VcpuId(0)), Ok(View(0)));
    assert_eq!(
        b.platform().regs.lock().unwrap()[0].rflags,
        0x202,
        "IF untouched"
    );
    // An MTF nobody asked for is the hypervisor's.
    assert_eq!(
        exit_with(&b, 0, &mtf, step, &mut seen),
        Ok(ExitAction::NotMine)
    );
    // With IF clear, interrupts cannot arrive before the instruction: none held.
    set_regs(&b, 1, |r| r.rflags = 0x2);
    exit_with(&b, 1, &fetch, step, &mut seen).unwrap();
    assert_eq!(
        log(&b),
        [
            Call::SetEptp(VcpuId(1), x),
            Call::Control(VcpuId(1), Control::MonitorTrap, true),
        ]
    );
}

#[test]
fn an_interrupt_during_a_step_is_delivered_in_the_original_view_and_the_step_redone() {
    let b = backend();
    let exec = b.create(MemoryAccess::RWX).unwrap();
    b.set_access(View(0), Gfn(4), MemoryAccess::RW).unwrap();
    let d = b.eptp(View(0)).unwrap();
    let x = b.eptp(exec).unwrap();
    log(&b);
    let mut seen = Vec::new();
    let fetch = violation(0x4000, 0xffff_8000_0000_4000, 0x19c);
    let step = VmiEventResponse::continue_().fast_singlestep(exec);
    exit_with(&b, 0, &fetch, step, &mut seen).unwrap();
    log(&b);
    // The held interrupt exits before the instruction runs.
    let irq = ExitInfo {
        reason: 1,
        ..ExitInfo::default()
    };
    assert_eq!(
        exit_with(&b, 0, &irq, step, &mut seen),
        Ok(ExitAction::Resume)
    );
    assert_eq!(
        log(&b),
        [
            Call::SetEptp(VcpuId(0), d),
            Call::Control(VcpuId(0), Control::MonitorTrap, false),
            Call::Control(VcpuId(0), Control::ExternalInterruptExiting, false),
        ],
        "back to the default view, where the guest's IDT delivers the interrupt"
    );
    assert_eq!(b.current_view(VcpuId(0)), Ok(View(0)));
    assert_eq!(seen.len(), 1, "no event for the interrupt");
    // The handler returns to the same instruction: the step is redone, no second event.
    assert_eq!(
        exit_with(&b, 0, &fetch, step, &mut seen),
        Ok(ExitAction::Resume)
    );
    assert_eq!(seen.len(), 1);
    assert_eq!(
        log(&b),
        [
            Call::SetEptp(VcpuId(0), x),
            Call::Control(VcpuId(0), Control::MonitorTrap, true),
            Call::Control(VcpuId(0), Control::ExternalInterruptExiting, true),
        ]
    );
    let mtf = ExitInfo {
        reason: 37,
        ..ExitInfo::default()
    };
    exit_with(&b, 0, &mtf, step, &mut seen).unwrap();
    assert_eq!(b.current_view(VcpuId(0)), Ok(View(0)));
    // An interrupt exit outside any step is the hypervisor's.
    assert_eq!(
        exit_with(&b, 0, &irq, step, &mut seen),
        Ok(ExitAction::NotMine)
    );
    // A redo is only for the same instruction: another RIP gets its event.
    exit_with(&b, 0, &fetch, step, &mut seen).unwrap();
    exit_with(&b, 0, &irq, step, &mut seen).unwrap();
    set_regs(&b, 0, |r| r.rip += 0x40);
    exit_with(&b, 0, &fetch, VmiEventResponse::continue_(), &mut seen).unwrap();
    assert_eq!(seen.len(), 3);
    assert_eq!(b.platform().regs.lock().unwrap()[0].rflags & 0x200, 0x200);
}

#[test]
fn a_handler_step_switches_views_and_reports_the_single_step() {
    let b = backend();
    let exec = b.create(MemoryAccess::RWX).unwrap();
    b.set_access(View(0), Gfn(4), MemoryAccess::RW).unwrap();
    log(&b);
    let mut seen = Vec::new();
    let fetch = violation(0x4000, 0, 0x1c);
    let go = VmiEventResponse::continue_()
        .switch_view(exec)
        .toggle_singlestep();
    exit_with(&b, 0, &fetch, go, &mut seen).unwrap();
    assert_eq!(b.current_view(VcpuId(0)), Ok(exec));
    let calls = log(&b);
    assert!(calls.contains(&Call::Control(
        VcpuId(0),
        Control::ExternalInterruptExiting,
        true
    )));
    let mtf = ExitInfo {
        reason: 37,
        ..ExitInfo::default()
    };
    let back = VmiEventResponse::continue_()
        .switch_view(View(0))
        .toggle_singlestep();
    exit_with(&b, 0, &mtf, back, &mut seen).unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].reason.is_singlestep());
    assert_eq!(seen[1].view, Some(exec));
    assert_eq!(b.current_view(VcpuId(0)), Ok(View(0)));
    let calls = log(&b);
    assert!(calls.contains(&Call::Control(
        VcpuId(0),
        Control::ExternalInterruptExiting,
        false
    )));
    assert!(calls.contains(&Call::Control(VcpuId(0), Control::MonitorTrap, false)));
    assert_eq!(
        exit_with(&b, 0, &mtf, back, &mut seen),
        Ok(ExitAction::NotMine)
    );
}

#[test]
fn a_handler_step_interrupted_is_redone_and_steps_survive_view_changes() {
    let b = backend();
    let exec = b.create(MemoryAccess::RWX).unwrap();
    let other = b.create(MemoryAccess::RWX).unwrap();
    b.set_access(View(0), Gfn(4), MemoryAccess::RW).unwrap();
    log(&b);
    let mut seen = Vec::new();
    let fetch = violation(0x4000, 0, 0x1c);
    let irq = ExitInfo {
        reason: 1,
        ..ExitInfo::default()
    };
    let mtf = ExitInfo {
        reason: 37,
        ..ExitInfo::default()
    };
    let go = VmiEventResponse::continue_()
        .switch_view(exec)
        .toggle_singlestep();
    exit_with(&b, 0, &fetch, go, &mut seen).unwrap();
    // The interrupt ends the handler's step too: back home, single step off for now.
    exit_with(&b, 0, &irq, go, &mut seen).unwrap();
    assert_eq!(b.current_view(VcpuId(0)), Ok(View(0)));
    let calls = log(&b);
    assert!(calls.contains(&Call::Control(VcpuId(0), Control::MonitorTrap, false)));
    assert_eq!(seen.len(), 1);
    // Redone silently at the same instruction, then reported once the step is done.
    exit_with(&b, 0, &fetch, go, &mut seen).unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(b.current_view(VcpuId(0)), Ok(exec));
    let back = VmiEventResponse::continue_()
        .switch_view(View(0))
        .toggle_singlestep();
    exit_with(&b, 0, &mtf, back, &mut seen).unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].reason.is_singlestep());
    assert_eq!(b.current_view(VcpuId(0)), Ok(View(0)));
    log(&b);
    // A fast step whose target view is destroyed mid-step: back to the home view.
    let fast = VmiEventResponse::continue_().fast_singlestep(exec);
    exit_with(&b, 0, &fetch, fast, &mut seen).unwrap();
    assert_eq!(b.current_view(VcpuId(0)), Ok(exec));
    log(&b);
    b.destroy(exec).unwrap();
    assert_eq!(b.current_view(VcpuId(0)), Ok(View(0)));
    let calls = log(&b);
    assert!(calls.contains(&Call::Control(VcpuId(0), Control::MonitorTrap, false)));
    assert!(calls.contains(&Call::Control(
        VcpuId(0),
        Control::ExternalInterruptExiting,
        false
    )));
    assert!(calls.contains(&Call::SetEptp(VcpuId(0), b.eptp(View(0)).unwrap())));
    assert_eq!(
        exit_with(&b, 0, &mtf, fast, &mut seen),
        Ok(ExitAction::NotMine)
    );
    // A switch of every vCPU during a step takes effect when the step ends.
    let fast = VmiEventResponse::continue_().fast_singlestep(other);
    exit_with(&b, 0, &fetch, fast, &mut seen).unwrap();
    b.switch_all(other).unwrap();
    assert_eq!(b.current_view(VcpuId(0)), Ok(other), "still stepping");
    assert_eq!(b.current_view(VcpuId(1)), Ok(other));
    exit_with(&b, 0, &mtf, fast, &mut seen).unwrap();
    assert_eq!(b.current_view(VcpuId(0)), Ok(other));
    assert_eq!(
        b.monitor(EventMonitor::Exception(32), true),
        Err(EptError::InvalidVector(32))
    );
}

#[test]
fn register_exits_follow_their_qualifications() {
    let b = backend();
    let mut seen = Vec::new();
    let cr3_write = ExitInfo {
        reason: 28,
        qualification: 0x0903, // MOV to CR3 from R9
        instruction_length: 3,
        ..ExitInfo::default()
    };
    set_regs(&b, 0, |r| r.r9 = 0x1234_5000);
    let go = VmiEventResponse::continue_();
    assert_eq!(
        exit_with(&b, 0, &cr3_write, go, &mut seen),
        Ok(ExitAction::NotMine)
    );
    b.monitor(EventMonitor::Register(ControlRegister::Cr3), true)
        .unwrap();
    assert_eq!(
        log(&b),
        [
            Call::Control(VcpuId(0), Control::CrWrite(ControlRegister::Cr3), true),
            Call::Control(VcpuId(1), Control::CrWrite(ControlRegister::Cr3), true),
        ]
    );
    assert_eq!(
        exit_with(&b, 0, &cr3_write, go, &mut seen),
        Ok(ExitAction::Complete)
    );
    let cr = seen[0].reason.as_control_register().copied().unwrap();
    assert_eq!(
        (cr.register, cr.old, cr.new),
        (ControlRegister::Cr3, 0x5000, 0x1234_5000)
    );
    assert_eq!(
        exit_with(&b, 0, &cr3_write, go.deny(), &mut seen),
        Ok(ExitAction::SkipInstruction)
    );
    // CR0: LMSW cannot clear PE; CLTS clears TS.
    b.monitor(EventMonitor::Register(ControlRegister::Cr0), true)
        .unwrap();
    set_regs(&b, 0, |r| r.cr0 = 0x8000_0019);
    let lmsw = ExitInfo {
        reason: 28,
        qualification: 0x0002_0030, // LMSW, register operand, source 0x0002
        ..ExitInfo::default()
    };
    exit_with(&b, 0, &lmsw, go, &mut seen).unwrap();
    assert_eq!(
        seen.last()
            .unwrap()
            .reason
            .as_control_register()
            .unwrap()
            .new,
        0x8000_0013
    );
    let clts = ExitInfo {
        reason: 28,
        qualification: 0x20,
        ..ExitInfo::default()
    };
    exit_with(&b, 0, &clts, go, &mut seen).unwrap();
    assert_eq!(
        seen.last()
            .unwrap()
            .reason
            .as_control_register()
            .unwrap()
            .new,
        0x8000_0011
    );
    // MOV from CR3 is not a write.
    let read = ExitInfo {
        reason: 28,
        qualification: 0x13,
        ..ExitInfo::default()
    };
    assert_eq!(
        exit_with(&b, 0, &read, go, &mut seen),
        Ok(ExitAction::NotMine)
    );
    // WRMSR of IA32_LSTAR with EDX:EAX.
    let wrmsr = ExitInfo {
        reason: 32,
        instruction_length: 2,
        ..ExitInfo::default()
    };
    set_regs(&b, 0, |r| {
        r.rcx = 0xc000_0082;
        r.rdx = 0xffff_ffff;
        r.rax = 0x8160_0000;
    });
    assert_eq!(
        exit_with(&b, 0, &wrmsr, go, &mut seen),
        Ok(ExitAction::NotMine)
    );
    b.monitor(EventMonitor::Msr(0xc000_0082), true).unwrap();
    assert_eq!(
        exit_with(&b, 0, &wrmsr, go.deny(), &mut seen),
        Ok(ExitAction::SkipInstruction)
    );
    let msr = seen.last().unwrap().reason.as_msr().copied().unwrap();
    assert_eq!((msr.index, msr.new), (0xc000_0082, 0xffff_ffff_8160_0000));
    // CPUID leaf 0x4000_0000, subleaf 0.
    set_regs(&b, 0, |r| {
        r.rax = 0x4000_0000;
        r.rcx = 0;
    });
    let cpuid = ExitInfo {
        reason: 10,
        instruction_length: 2,
        ..ExitInfo::default()
    };
    assert_eq!(
        exit_with(&b, 0, &cpuid, go, &mut seen),
        Ok(ExitAction::NotMine)
    );
    b.monitor(EventMonitor::Cpuid, true).unwrap();
    assert_eq!(
        exit_with(&b, 0, &cpuid, go, &mut seen),
        Ok(ExitAction::Complete)
    );
    let c = seen.last().unwrap().reason.as_cpuid().copied().unwrap();
    assert_eq!(
        (c.leaf, c.subleaf, c.instruction_length),
        (0x4000_0000, 0, 2)
    );
    // A handler that answers the CPUID (its EAX..EDX in the response's registers) gets
    // the instruction skipped, not carried out again over its answer; RIP is the
    // hypervisor's to advance.
    let mut answer = b.platform().regs.lock().unwrap()[0].gp();
    let rip = answer.rip;
    answer.rax = 0x4000_0002;
    answer.rbx = 0x7274_6e49;
    assert_eq!(
        exit_with(&b, 0, &cpuid, go.set_registers(answer), &mut seen),
        Ok(ExitAction::SkipInstruction)
    );
    let regs = b.platform().regs.lock().unwrap()[0];
    assert_eq!(
        (regs.rax, regs.rbx, regs.rip),
        (0x4000_0002, 0x7274_6e49, rip)
    );
    // REP OUTSB to 0x3f8: the string and REP bits are in the decoded exit.
    b.monitor(EventMonitor::Io(0x3f8), true).unwrap();
    let io = ExitInfo {
        reason: 30,
        qualification: 0x03f8_0030,
        instruction_length: 2,
        ..ExitInfo::default()
    };
    let mut detail = None;
    let mut handler = |e: &VmiEvent<introvisor::arch::amd64::Amd64>| {
        detail = b.current_exit(e.vcpu);
        seen.push(*e);
        VmiEventResponse::continue_()
    };
    assert_eq!(
        b.on_exit(VcpuId(0), &io, Some(&mut handler)),
        Ok(ExitAction::Complete)
    );
    let ev = seen.last().unwrap().reason.as_io().copied().unwrap();
    assert_eq!(
        (ev.port, ev.size, ev.direction),
        (0x3f8, 1, IoDirection::Out)
    );
    match detail {
        Some(Exit::Io(d)) => assert!(d.string && d.rep),
        other => panic!("{other:?}"),
    }
    // XSETBV of XCR0.
    b.monitor(EventMonitor::Register(ControlRegister::Xcr0), true)
        .unwrap();
    set_regs(&b, 0, |r| {
        r.rcx = 0;
        r.rdx = 0;
        r.rax = 0x7;
    });
    let xsetbv = ExitInfo {
        reason: 55,
        ..ExitInfo::default()
    };
    exit_with(&b, 0, &xsetbv, go, &mut seen).unwrap();
    let x = seen
        .last()
        .unwrap()
        .reason
        .as_control_register()
        .copied()
        .unwrap();
    // `old` is unknown for XCR0 (the events module docs): 0, whatever the guest had.
    assert_eq!((x.register, x.old, x.new), (ControlRegister::Xcr0, 0, 7));
    // Everything off again.
    VmiDriver::reset_state(&b).unwrap();
    assert_eq!(
        exit_with(&b, 0, &cpuid, go, &mut seen),
        Ok(ExitAction::NotMine)
    );
    assert_eq!(
        exit_with(&b, 0, &cr3_write, go, &mut seen),
        Ok(ExitAction::NotMine)
    );
}

#[test]
fn exceptions_are_reported_and_reinjected() {
    let b = backend();
    let mut seen = Vec::new();
    let bp = ExitInfo {
        reason: 0,
        interruption_information: 0x8000_0603,
        instruction_length: 1,
        ..ExitInfo::default()
    };
    let go = VmiEventResponse::continue_();
    assert_eq!(
        exit_with(&b, 0, &bp, go, &mut seen),
        Ok(ExitAction::NotMine)
    );
    b.monitor(EventMonitor::Exception(3), true).unwrap();
    b.monitor(EventMonitor::Exception(14), true).unwrap();
    log(&b);
    assert_eq!(
        exit_with(&b, 0, &bp, go.reinject_interrupt(), &mut seen),
        Ok(ExitAction::Resume)
    );
    let ie = seen[0].reason.as_interrupt().copied().unwrap();
    assert!(ie.is_breakpoint());
    assert_eq!(
        (ie.typ, ie.instruction_length),
        (InterruptType::SoftwareException, 1)
    );
    assert_eq!(log(&b), [Call::Inject(VcpuId(0), Interrupt::breakpoint(1))]);
    // A #PF: CR2 comes from the qualification, the error code from its field.
    let pf = ExitInfo {
        reason: 0,
        qualification: 0x7fff_0000_1000,
        interruption_information: 0x8000_0b0e,
        interruption_error_code: 0x6,
        ..ExitInfo::default()
    };
    exit_with(&b, 1, &pf, go.reinject_interrupt(), &mut seen).unwrap();
    assert_eq!(seen[1].registers.cr2, 0x7fff_0000_1000);
    assert_eq!(seen[1].reason.as_interrupt().unwrap().error_code, Some(6));
    assert_eq!(
        log(&b),
        [Call::Inject(
            VcpuId(1),
            Interrupt::page_fault(introvisor::Va(0x7fff_0000_1000), 6)
        )]
    );
    // An exception exit that is not for the backend, and an NMI, are the hypervisor's.
    let gp = ExitInfo {
        reason: 0,
        interruption_information: 0x8000_0b0d,
        ..ExitInfo::default()
    };
    assert_eq!(
        exit_with(&b, 0, &gp, go, &mut seen),
        Ok(ExitAction::NotMine)
    );
    let nmi = ExitInfo {
        reason: 0,
        interruption_information: 0x8000_0202,
        ..ExitInfo::default()
    };
    assert_eq!(
        exit_with(&b, 0, &nmi, go, &mut seen),
        Ok(ExitAction::NotMine)
    );
    assert_eq!(seen.len(), 2);
}

#[test]
fn responses_set_registers_but_never_if_and_emulate_only_where_the_platform_can() {
    let b = backend();
    b.set_access(View(0), Gfn(6), MemoryAccess::R).unwrap();
    log(&b);
    let mut seen = Vec::new();
    let write = violation(0x6000, 0, 0x0a);
    let mut gp = b.platform().regs.lock().unwrap()[0].gp();
    gp.rip += 3;
    gp.rax = 0xabcd;
    gp.rflags = 0x2; // tries to clear IF
    let r = VmiEventResponse::continue_().set_registers(gp);
    assert_eq!(
        exit_with(&b, 0, &write, r, &mut seen),
        Ok(ExitAction::Resume)
    );
    let regs = b.platform().regs.lock().unwrap()[0];
    assert_eq!((regs.rax, regs.rip, regs.rflags), (0xabcd, gp.rip, 0x202));
    assert_eq!(regs.cr3, 0x5000, "the rest of the state is kept");
    assert_eq!(
        exit_with(
            &b,
            0,
            &write,
            VmiEventResponse::continue_().emulate(),
            &mut seen
        ),
        Err(EptError::Platform(PlatformError::Unsupported(
            "instruction emulation"
        )))
    );
    let mut p = TestPlatform::new(BASE, HOST_FRAMES, 1);
    p.can_emulate = true;
    let b2 = Backend::new(p, &config(&REGIONS)).unwrap();
    b2.set_access(View(0), Gfn(6), MemoryAccess::R).unwrap();
    log(&b2);
    assert_eq!(
        exit_with(
            &b2,
            0,
            &write,
            VmiEventResponse::continue_().emulate(),
            &mut seen
        ),
        Ok(ExitAction::Resume)
    );
    assert_eq!(log(&b2), [Call::Emulate(VcpuId(0))]);
    // A violation during event delivery: the vectored event is delivered again.
    let vectored = ExitInfo {
        idt_vectoring_information: 0x8000_0b0e,
        idt_vectoring_error_code: 2,
        ..write
    };
    exit_with(&b2, 0, &vectored, VmiEventResponse::continue_(), &mut seen).unwrap();
    assert_eq!(
        log(&b2),
        [Call::Inject(VcpuId(0), Interrupt::exception(14, Some(2)))]
    );
    // TOGGLE_SINGLESTEP alone turns the monitor trap on, then off.
    exit_with(
        &b2,
        0,
        &write,
        VmiEventResponse::continue_().toggle_singlestep(),
        &mut seen,
    )
    .unwrap();
    assert_eq!(
        log(&b2),
        [Call::Control(VcpuId(0), Control::MonitorTrap, true)]
    );
    let mtf = ExitInfo {
        reason: 37,
        ..ExitInfo::default()
    };
    let before = seen.len();
    exit_with(
        &b2,
        0,
        &mtf,
        VmiEventResponse::continue_().toggle_singlestep(),
        &mut seen,
    )
    .unwrap();
    assert_eq!(seen.len(), before + 1);
    assert!(seen[before].reason.is_singlestep());
    assert_eq!(
        log(&b2),
        [Call::Control(VcpuId(0), Control::MonitorTrap, false)]
    );
}

#[test]
fn queued_events_are_answered_from_another_thread() {
    let b = backend();
    b.set_access(View(0), Gfn(6), MemoryAccess::RX).unwrap();
    let exit = violation(0x6000, 0, 0x2a);
    let action = std::thread::scope(|s| {
        let vcpu = s.spawn(|| b.on_exit(VcpuId(1), &exit, None));
        let mut got = None;
        while got.is_none() {
            match b.wait_for_event(core::time::Duration::from_micros(1), &mut |e| {
                got = Some(*e);
                VmiEventResponse::continue_().deny()
            }) {
                Ok(()) | Err(VmiError::Timeout) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got.unwrap().vcpu, VcpuId(1));
        vcpu.join().unwrap()
    });
    assert_eq!(action, Ok(ExitAction::Resume));
    assert_eq!(b.events_pending(), Ok(0));
    assert_eq!(
        b.wait_for_event(core::time::Duration::ZERO, &mut |_| {
            VmiEventResponse::continue_()
        }),
        Err(VmiError::Timeout)
    );
}

#[test]
fn a_full_queue_waits_or_resumes_as_configured() {
    type Tiny = EptBackend<TestPlatform, 1, 64, 4, 1>;
    for policy in [QueueFull::Resume, QueueFull::Wait] {
        let mut cfg = config(&REGIONS);
        cfg.queue_full = policy;
        let b = Tiny::new(TestPlatform::new(BASE, HOST_FRAMES, 2), &cfg).unwrap();
        b.set_access(View(0), Gfn(6), MemoryAccess::RX).unwrap();
        let exit = violation(0x6000, 0, 0x2a);
        std::thread::scope(|s| {
            let first = s.spawn(|| b.on_exit(VcpuId(0), &exit, None));
            while b.events_pending() != Ok(1) {
                std::thread::yield_now();
            }
            // The queue (one slot) is full now.
            let mut second = Some(s.spawn(|| b.on_exit(VcpuId(1), &exit, None)));
            if policy == QueueFull::Resume {
                let done = second.take().unwrap().join().unwrap();
                assert_eq!(done, Ok(ExitAction::Resume));
                assert_eq!(b.dropped_events(), 1);
            }
            let mut served = Vec::new();
            while served.len() < if policy == QueueFull::Wait { 2 } else { 1 } {
                let _ = b.wait_for_event(core::time::Duration::from_micros(1), &mut |e| {
                    served.push(e.vcpu);
                    VmiEventResponse::continue_()
                });
            }
            assert_eq!(first.join().unwrap(), Ok(ExitAction::Resume));
            if policy == QueueFull::Wait {
                let done = second.take().unwrap().join().unwrap();
                assert_eq!(done, Ok(ExitAction::Resume));
                assert_eq!(served, [VcpuId(0), VcpuId(1)]);
                assert_eq!(b.dropped_events(), 0);
            }
        });
    }
}

#[cfg(feature = "fault-injection")]
#[test]
fn each_shootdown_site_can_be_skipped_alone() {
    let b = backend();
    b.skip_shootdown(Some(ShootdownSite::Tighten));
    b.set_access(View(0), Gfn(3), MemoryAccess::R).unwrap();
    assert_eq!(shootdowns(&b), 0, "a tightening of a 4 KiB leaf: skipped");
    b.set_access(View(0), Gfn(0x201), MemoryAccess::R).unwrap();
    assert_eq!(shootdowns(&b), 1, "the split still asks for one");
    b.skip_shootdown(Some(ShootdownSite::Merge));
    b.set_access(View(0), Gfn(0x201), MemoryAccess::RWX)
        .unwrap();
    assert_eq!(shootdowns(&b), 0);
    b.skip_shootdown(None);
    b.set_access(View(0), Gfn(4), MemoryAccess::R).unwrap();
    assert_eq!(shootdowns(&b), 1);
    assert_eq!(ShootdownSite::ALL.len(), 7);
    for (i, s) in ShootdownSite::ALL.iter().enumerate() {
        assert_eq!(*s as usize, i);
    }
}

#[test]
fn the_exit_path_and_the_introspection_side_run_at_once() {
    // Two vCPU threads take violations while this thread changes rights and views; each
    // event is seen once, and the tables stay consistent.
    let b = backend();
    let v = b.create(MemoryAccess::RWX).unwrap();
    let count = core::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for vcpu in 0..2u16 {
            let (b, count) = (&b, &count);
            s.spawn(move || {
                for i in 0..20u64 {
                    let gfn = 8 + (i % 4);
                    let exit = violation(gfn << 12, 0, 0x2);
                    let mut calls = 0;
                    let mut h = |e: &VmiEvent<introvisor::arch::amd64::Amd64>| {
                        calls += 1;
                        assert_eq!(e.reason.as_memory_access().unwrap().pa, Pa(gfn << 12));
                        VmiEventResponse::continue_()
                    };
                    assert_eq!(
                        b.on_exit(VcpuId(vcpu), &exit, Some(&mut h)),
                        Ok(ExitAction::Resume)
                    );
                    assert!(calls <= 1, "an exit is one event or none");
                    count.fetch_add(calls, Ordering::Relaxed);
                }
            });
        }
        for i in 0..20u64 {
            let gfn = Gfn(8 + (i % 4));
            let access = if i % 2 == 0 {
                MemoryAccess::R
            } else {
                MemoryAccess::RWX
            };
            b.set_access(View(0), gfn, access).unwrap();
            b.set_access(v, Gfn(0x200 + i), MemoryAccess::RX).unwrap();
        }
    });
    assert!(count.load(Ordering::Relaxed) <= 40);
    for i in 0..20u64 {
        assert_eq!(b.access(v, Gfn(0x200 + i)), Ok(MemoryAccess::RX));
    }
    assert_eq!(b.access(v, Gfn(0x214)), Ok(MemoryAccess::RWX));
    b.verify().unwrap();
    b.destroy(v).unwrap();
    b.verify().unwrap();
}
