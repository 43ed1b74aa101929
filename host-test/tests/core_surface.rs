//! The core's surface that a dump backend leaves at its defaults: every capability a
//! dump cannot offer (rights, views, frames, monitors, events, vCPU control) reaches the
//! caller as `NotSupported` naming the capability, through `VmiCore`'s pass-throughs,
//! and the caches are reset on the way; and what the core prints about errors and
//! addresses (the text a tool shows a user) says what went wrong.

use core::time::Duration;

use introvisor::arch::amd64::{EventMonitor, Interrupt, Registers};
use introvisor::{
    AccessContext, AddressContext, FaultReason, Gfn, Hex, MemoryAccess, Pa, PageFault,
    TranslationMechanism, Va, VcpuId, View, VmiCore, VmiError, VmiEventResponse,
};
use introvisor_host::HostDriver;
use introvisor_host::builder::{GuestBuilder, MapFlags, PageSize};

fn core() -> (VmiCore<HostDriver>, Pa) {
    let mut b = GuestBuilder::new(0x10000);
    b.map_new(Va(0x40_0000), PageSize::Size4K, MapFlags::USER_DATA)
        .unwrap();
    b.write_virtual(Va(0x40_0000), b"guest\0").unwrap();
    let root = b.root();
    let guest = b.finish();
    (VmiCore::new(HostDriver::from_vec(guest.memory)), root)
}

fn unsupported<T: core::fmt::Debug>(r: Result<T, VmiError>, name: &str) {
    match r {
        Err(VmiError::NotSupported(what)) => assert_eq!(what, name),
        other => panic!("{name}: {other:?}, not NotSupported"),
    }
}

#[test]
fn a_dump_driver_refuses_what_it_cannot_do_by_name() {
    let (core, _) = core();
    let (gfn, view) = (Gfn(1), View(0));
    unsupported(
        core.set_registers(VcpuId(0), Registers::default()),
        "set_registers",
    );
    unsupported(core.memory_access(gfn, view), "memory_access");
    unsupported(
        core.set_memory_access(gfn, view, MemoryAccess::R),
        "set_memory_access",
    );
    unsupported(core.default_view(), "default_view");
    unsupported(core.create_view(MemoryAccess::RWX), "create_view");
    unsupported(core.destroy_view(View(1)), "destroy_view");
    unsupported(core.switch_to_view(View(1)), "switch_to_view");
    unsupported(
        core.change_view_gfn(View(1), gfn, Gfn(2)),
        "change_view_gfn",
    );
    unsupported(core.reset_view_gfn(View(1), gfn), "reset_view_gfn");
    unsupported(core.monitor_enable(EventMonitor::Cpuid), "monitor_enable");
    unsupported(
        core.monitor_disable(EventMonitor::Msr(0xc000_0080)),
        "monitor_disable",
    );
    unsupported(
        core.inject_interrupt(VcpuId(0), Interrupt::exception(14, Some(2))),
        "inject_interrupt",
    );
    unsupported(core.events_pending(), "events_pending");
    unsupported(
        core.event_processing_overhead(),
        "event_processing_overhead",
    );
    let mut called = false;
    unsupported(
        core.wait_for_event(Duration::from_millis(1), |_| {
            called = true;
            VmiEventResponse::default()
        }),
        "wait_for_event",
    );
    assert!(!called, "no event can come from a dump");
}

#[test]
fn reset_state_flushes_the_caches_even_when_the_driver_refuses() {
    let (core, root) = core();
    let core = core.with_v2p_cache(64);
    let va = Va(0x40_0000);
    assert_eq!(
        core.read_string(AccessContext::paging(va, root)).unwrap(),
        "guest"
    );
    core.translate(va, root).unwrap();
    assert!(core.v2p_cache_metrics().len > 0);
    unsupported(core.reset_state(), "reset_state");
    // A translation after the reset is a miss (the cache was flushed), then a hit.
    let before = core.v2p_cache_metrics();
    core.translate(va, root).unwrap();
    let after = core.v2p_cache_metrics();
    assert_eq!(after.misses, before.misses + 1, "served from a reset cache");
    core.translate(va, root).unwrap();
    assert_eq!(core.v2p_cache_metrics().hits, after.hits + 1);
}

#[test]
fn errors_say_what_went_wrong() {
    let pf = PageFault {
        va: Va(0xffff_8000_dead_b000),
        root: Pa(0x1aa000),
        level: 2,
        entry: Pa(0x3008),
        value: 0x8000_0000_0000_0001,
        reason: FaultReason::ReservedBit,
    };
    let cases: [(VmiError, &[&str]); 13] = [
        (
            VmiError::Translation(pf),
            &[
                "0xffff8000deadb000",
                "reserved bit",
                "0x1aa000",
                "level 2",
                "0x3008",
            ],
        ),
        (
            VmiError::OutOfBounds(Pa(0x4000_0123)),
            &["0x40000123", "outside"],
        ),
        (
            VmiError::GfnNotPresent(Gfn(0x40000)),
            &["0x40000", "not backed"],
        ),
        (VmiError::NotSupported("pause"), &["not supported", "pause"]),
        (VmiError::InvalidAddressWidth(3), &["3"]),
        (VmiError::InvalidArgument("buffer range"), &["buffer range"]),
        (VmiError::BufferTooSmall, &["buffer too small"]),
        (VmiError::CapacityExceeded, &[]),
        (VmiError::OutOfFrames, &["frame pool"]),
        (VmiError::NotFound, &[]),
        (VmiError::InvalidUtf8 { valid_up_to: 17 }, &["17"]),
        (VmiError::Timeout, &[]),
        (
            VmiError::Driver("the hypervisor went away"),
            &["the hypervisor went away"],
        ),
    ];
    let mut seen = Vec::new();
    for (error, needles) in cases {
        let text = error.to_string();
        assert!(!text.is_empty());
        for needle in needles {
            assert!(text.contains(needle), "{text:?} lacks {needle:?}");
        }
        assert!(!seen.contains(&text), "two errors print as {text:?}");
        seen.push(text);
        assert_eq!(
            error.page_fault().is_some(),
            matches!(error, VmiError::Translation(_))
        );
    }
    assert_eq!(VmiError::from(pf), VmiError::Translation(pf));
    let reasons = [
        FaultReason::NotPresent,
        FaultReason::ReservedBit,
        FaultReason::OutOfMemory,
        FaultReason::NonCanonical,
        FaultReason::AccessDenied,
    ];
    let texts: Vec<String> = reasons.iter().map(ToString::to_string).collect();
    for (i, t) in texts.iter().enumerate() {
        assert!(!texts[..i].contains(t), "two reasons print as {t:?}");
    }
}

#[test]
fn addresses_print_in_hex_and_do_checked_arithmetic() {
    assert_eq!(
        format!("{}", Va(0xffff_8000_0000_1000)),
        "0xffff800000001000"
    );
    assert_eq!(format!("{:?}", Pa(0x1000)), "Pa(0x1000)");
    assert_eq!(format!("{:x}", Gfn(0x1aa)), "1aa");
    assert_eq!(format!("{}", Hex(0xdead_u32)), "0xdead");
    assert_eq!(format!("{:?}", Hex(7u8)), "0x7");
    assert_eq!(VcpuId(3).to_string(), "vcpu3");
    assert_eq!(View(2).to_string(), "view2");
    assert_eq!(Pa::new(5).get(), 5);
    assert_eq!(u64::from(Gfn::from(9)), 9);
    assert_eq!(Pa(u64::MAX).checked_add(1), None);
    assert_eq!(Pa(1).checked_add(1), Some(Pa(2)));
    assert_eq!(Gfn(0).checked_sub(1), None);
    assert_eq!(Gfn(3).checked_sub(1), Some(Gfn(2)));
    assert_eq!(Va(u64::MAX).wrapping_add(2), Va(1));
    assert_eq!(Va(u64::MAX) + 1, Va(0));
    assert_eq!(Va(0) - 1, Va(u64::MAX));
    assert!(Va(0).is_null() && !Va(1).is_null());
    assert_eq!(MemoryAccess::RW.to_string(), "rw-");
    assert_eq!(MemoryAccess::X.to_string(), "--x");
    assert_eq!(MemoryAccess::empty().to_string(), "---");
}

#[test]
fn contexts_convert_as_their_parts_say() {
    let (va, root) = (Va(0x40_0123), Pa(0x1000));
    let ctx = AccessContext::from((va, root));
    assert_eq!(ctx, AccessContext::paging(va, root));
    assert_eq!(ctx, AccessContext::from(AddressContext::from((va, root))));
    assert_eq!(ctx.offset(0x10).address, 0x40_0133);
    assert_eq!(
        AccessContext::paging(Va(u64::MAX), root).offset(1).address,
        0,
        "offsets wrap"
    );
    let direct = AccessContext::from(Pa(0x2000));
    assert_eq!(direct.mechanism, TranslationMechanism::Direct);
    assert_eq!(direct, AccessContext::direct(Pa(0x2000)));
}
