//! What introvisor-ept says when it refuses: every `EptError` prints a message that names
//! what went wrong (with the number, address, view or vCPU it concerns), no two alike,
//! and becomes the `VmiError` a caller of the generic core can act on (a missing view is
//! `NotFound`, an exhausted pool `OutOfFrames`, an unsupported feature
//! `NotSupported`, a frame outside memory `OutOfBounds`).

use introvisor::{Gfn, Pa, VcpuId, View, VmiError};
use introvisor_ept::platform::Hpa;
use introvisor_ept::{EptError, PlatformError};

#[test]
fn every_ept_error_names_its_cause_and_maps_to_a_core_error() {
    use EptError as E;
    let rows: Vec<(EptError, &[&str], VmiError)> = vec![
        (
            E::WriteWithoutRead,
            &["write without read"],
            VmiError::InvalidArgument("EPT: write without read"),
        ),
        (
            E::WriteExecuteWithoutRead,
            &["write and execute"],
            VmiError::InvalidArgument("EPT: write and execute without read"),
        ),
        (
            E::ExecuteOnlyUnsupported,
            &["execute-only"],
            VmiError::NotSupported("execute-only EPT entries"),
        ),
        (
            E::ReservedMemoryType(2),
            &["reserved", "2"],
            VmiError::InvalidArgument("EPT: reserved memory type"),
        ),
        (
            E::MemoryTypeUnsupported(5),
            &["memory type 5"],
            VmiError::NotSupported("EPTP memory type"),
        ),
        (
            E::WalkLengthUnsupported(3),
            &["walk length 3"],
            VmiError::NotSupported("EPT walk length"),
        ),
        (
            E::LargePageUnsupported(3),
            &["level 3"],
            VmiError::NotSupported("EPT large pages"),
        ),
        (
            E::AccessedDirtyUnsupported,
            &["A/D"],
            VmiError::NotSupported("EPT A/D flags"),
        ),
        (
            E::InveptUnsupported,
            &["INVEPT"],
            VmiError::NotSupported("INVEPT"),
        ),
        (
            E::Misaligned(Hpa(0x1234)),
            &["misaligned", "1234"],
            VmiError::InvalidArgument("misaligned address"),
        ),
        (
            E::PoolExhausted,
            &["pool", "exhausted"],
            VmiError::OutOfFrames,
        ),
        (
            E::HostFrameUnmapped(Hpa(0x5000)),
            &["5000", "not mapped"],
            VmiError::Driver("host frame not mapped"),
        ),
        (
            E::OutsideGuestMemory(Pa(0x9_0000_0000)),
            &["900000000", "outside"],
            VmiError::OutOfBounds(Pa(0x9_0000_0000)),
        ),
        (
            E::Overlap,
            &["overlap"],
            VmiError::InvalidArgument("memory regions overlap"),
        ),
        (
            E::BeyondWalkReach(Pa(1 << 48)),
            &["1000000000000", "reach"],
            VmiError::OutOfBounds(Pa(1 << 48)),
        ),
        (E::NoSuchView(View(9)), &["view9"], VmiError::NotFound),
        (
            E::DefaultView,
            &["default view"],
            VmiError::InvalidArgument("the default view cannot be destroyed"),
        ),
        (
            E::ViewLimit,
            &["every alternate view"],
            VmiError::CapacityExceeded,
        ),
        (E::NoSuchVcpu(VcpuId(4)), &["vcpu4"], VmiError::NotFound),
        (
            E::NotShadowFrame(Gfn(0x77)),
            &["77", "not a shadow"],
            VmiError::InvalidArgument("not a shadow frame"),
        ),
        (
            E::GfnInUse(Gfn(0x88)),
            &["88", "already backed"],
            VmiError::InvalidArgument("frame already backed"),
        ),
        (
            E::InvalidVector(40),
            &["40"],
            VmiError::InvalidArgument("exception vector above 31"),
        ),
        (
            E::OutsideFrame,
            &["4 KiB frame"],
            VmiError::InvalidArgument("range outside the page"),
        ),
        (
            E::CapacityExceeded,
            &["capacity"],
            VmiError::CapacityExceeded,
        ),
        (
            E::UnknownExitReason(99),
            &["99"],
            VmiError::Driver("unknown VM-exit reason"),
        ),
        (
            E::EntryFailure(0x8000_0021),
            &["0x80000021", "entry failure"],
            VmiError::Driver("VM-entry failure"),
        ),
        (
            E::InvalidExitInformation("I/O: access size"),
            &["I/O: access size"],
            VmiError::Driver("I/O: access size"),
        ),
        (
            E::Platform(PlatformError::Unsupported("MTF")),
            &["does not support MTF"],
            VmiError::NotSupported("MTF"),
        ),
        (
            E::Platform(PlatformError::NoSuchVcpu(VcpuId(2))),
            &["vcpu2"],
            VmiError::NotFound,
        ),
        (
            E::Platform(PlatformError::Failed("VMWRITE")),
            &["platform failure: VMWRITE"],
            VmiError::Driver("VMWRITE"),
        ),
    ];
    let mut texts = Vec::new();
    for (error, needles, core) in rows {
        let text = error.to_string();
        for needle in needles {
            assert!(
                text.contains(needle),
                "{error:?} prints {text:?}, without {needle:?}"
            );
        }
        assert!(!texts.contains(&text), "two errors print as {text:?}");
        texts.push(text);
        assert_eq!(VmiError::from(error), core, "{error:?}");
    }
    assert_eq!(
        EptError::from(PlatformError::Failed("x")),
        EptError::Platform(PlatformError::Failed("x"))
    );
}
