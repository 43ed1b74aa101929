//! [`EptError`]: everything the backend refuses or fails at, by name.
//!
//! Small and `Copy`; converted to introvisor's [`VmiError`] at the `VmiDriver` boundary.

use core::fmt;

use introvisor::{Gfn, Pa, VcpuId, View, VmiError};

use crate::platform::{Hpa, PlatformError};

/// Why the backend refused a request or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum EptError {
    /// W without R: an EPT misconfiguration (SDM Vol. 3C §29.3.3.1).
    WriteWithoutRead,
    /// W and X without R: an EPT misconfiguration (SDM Vol. 3C §29.3.3.1).
    WriteExecuteWithoutRead,
    /// X alone, where `IA32_VMX_EPT_VPID_CAP` bit 0 says execute-only is unsupported.
    ExecuteOnlyUnsupported,
    /// A reserved memory type (2, 3, 7) or an encoding above 7.
    ReservedMemoryType(u8),
    /// A memory type the EPTP cannot take (only UC and WB, each when the capabilities
    /// allow it).
    MemoryTypeUnsupported(u8),
    /// A walk length the capabilities lack (5 without bit 7) or that does not exist.
    WalkLengthUnsupported(u8),
    /// A leaf at this level (2 = 2 MiB, 3 = 1 GiB) that the capabilities cannot map.
    LargePageUnsupported(u8),
    /// The capabilities lack INVEPT (bit 20) or both of its types (bits 25, 26): the
    /// backend could not invalidate a change.
    InveptUnsupported,
    /// A/D flags asked for without capability bit 21.
    AccessedDirtyUnsupported,
    /// An address not aligned as it must be (a pool frame, a large-page frame, a root).
    Misaligned(Hpa),
    /// The frame pool has fewer frames than the operation needs; the tables are as they
    /// were. [`VmiError::OutOfFrames`] at the `VmiDriver` boundary.
    PoolExhausted,
    /// The platform maps no host frame at this address.
    HostFrameUnmapped(Hpa),
    /// A guest-physical address outside guest memory (and not a shadow frame).
    OutsideGuestMemory(Pa),
    /// A guest region overlaps another, or the pool.
    Overlap,
    /// Guest memory reaches past the EPT's 48-bit (4-level) or 57-bit (5-level) reach.
    BeyondWalkReach(Pa),
    /// No view with this number exists.
    NoSuchView(View),
    /// The default view cannot be destroyed.
    DefaultView,
    /// Every alternate view is in use.
    ViewLimit,
    /// No vCPU with this number (or more vCPUs than the backend's capacity).
    NoSuchVcpu(VcpuId),
    /// `free_gfn` of a frame `allocate_gfn` did not give, or `allocate_gfn` of a frame in
    /// use.
    NotShadowFrame(Gfn),
    /// The frame is already backed (guest memory or a shadow frame).
    GfnInUse(Gfn),
    /// An exception vector above 31 (the exception bitmap has 32 bits, SDM Vol. 3C
    /// §25.6.3).
    InvalidVector(u8),
    /// An offset or range outside a 4 KiB frame.
    OutsideFrame,
    /// A fixed-capacity table (monitored MSRs or ports) is full, or a pool, the vCPUs or
    /// the regions exceed the backend's capacity. [`VmiError::CapacityExceeded`] at the
    /// `VmiDriver` boundary.
    CapacityExceeded,
    /// An exit reason the backend does not know (bits 15:0 of the exit-reason field).
    UnknownExitReason(u16),
    /// The exit-reason field reports a VM-entry failure (bit 31; SDM Vol. 3C §28.2.1).
    EntryFailure(u32),
    /// An exit qualification or information field with a value the SDM does not define.
    InvalidExitInformation(&'static str),
    /// A handler asked for something the platform cannot do.
    Platform(PlatformError),
}

impl From<PlatformError> for EptError {
    fn from(e: PlatformError) -> Self {
        Self::Platform(e)
    }
}

impl fmt::Display for EptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WriteWithoutRead => f.write_str("EPT misconfiguration: write without read"),
            Self::WriteExecuteWithoutRead => {
                f.write_str("EPT misconfiguration: write and execute without read")
            }
            Self::ExecuteOnlyUnsupported => f.write_str("execute-only EPT entries unsupported"),
            Self::ReservedMemoryType(t) => write!(f, "reserved EPT memory type {t}"),
            Self::MemoryTypeUnsupported(t) => write!(f, "EPTP memory type {t} unsupported"),
            Self::WalkLengthUnsupported(l) => write!(f, "EPT walk length {l} unsupported"),
            Self::LargePageUnsupported(l) => write!(f, "EPT leaves at level {l} unsupported"),
            Self::AccessedDirtyUnsupported => f.write_str("EPT A/D flags unsupported"),
            Self::InveptUnsupported => f.write_str("INVEPT unsupported"),
            Self::Misaligned(a) => write!(f, "misaligned address {a}"),
            Self::PoolExhausted => f.write_str("the EPT frame pool is exhausted"),
            Self::HostFrameUnmapped(a) => write!(f, "host frame {a} is not mapped"),
            Self::OutsideGuestMemory(pa) => write!(f, "{pa} is outside guest memory"),
            Self::Overlap => f.write_str("memory regions overlap"),
            Self::BeyondWalkReach(pa) => write!(f, "{pa} is beyond the EPT walk's reach"),
            Self::NoSuchView(v) => write!(f, "no such view: {v}"),
            Self::DefaultView => f.write_str("the default view cannot be destroyed"),
            Self::ViewLimit => f.write_str("every alternate view is in use"),
            Self::NoSuchVcpu(v) => write!(f, "no such vCPU: {v}"),
            Self::NotShadowFrame(g) => write!(f, "{g} is not a shadow frame"),
            Self::GfnInUse(g) => write!(f, "{g} is already backed"),
            Self::InvalidVector(v) => write!(f, "exception vector {v} has no exception-bitmap bit"),
            Self::OutsideFrame => f.write_str("range outside the 4 KiB frame"),
            Self::CapacityExceeded => f.write_str("capacity exceeded"),
            Self::UnknownExitReason(r) => write!(f, "unknown VM-exit reason {r}"),
            Self::EntryFailure(r) => write!(f, "VM-entry failure (exit reason {r:#x})"),
            Self::InvalidExitInformation(what) => write!(f, "invalid exit information: {what}"),
            Self::Platform(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for EptError {}

impl From<EptError> for VmiError {
    fn from(e: EptError) -> Self {
        match e {
            EptError::WriteWithoutRead => Self::InvalidArgument("EPT: write without read"),
            EptError::WriteExecuteWithoutRead => {
                Self::InvalidArgument("EPT: write and execute without read")
            }
            EptError::ExecuteOnlyUnsupported => Self::NotSupported("execute-only EPT entries"),
            EptError::ReservedMemoryType(_) => Self::InvalidArgument("EPT: reserved memory type"),
            EptError::MemoryTypeUnsupported(_) => Self::NotSupported("EPTP memory type"),
            EptError::WalkLengthUnsupported(_) => Self::NotSupported("EPT walk length"),
            EptError::LargePageUnsupported(_) => Self::NotSupported("EPT large pages"),
            EptError::AccessedDirtyUnsupported => Self::NotSupported("EPT A/D flags"),
            EptError::InveptUnsupported => Self::NotSupported("INVEPT"),
            EptError::Misaligned(_) => Self::InvalidArgument("misaligned address"),
            EptError::PoolExhausted => Self::OutOfFrames,
            EptError::HostFrameUnmapped(_) => Self::Driver("host frame not mapped"),
            EptError::OutsideGuestMemory(pa) => Self::OutOfBounds(pa),
            EptError::Overlap => Self::InvalidArgument("memory regions overlap"),
            EptError::BeyondWalkReach(pa) => Self::OutOfBounds(pa),
            EptError::NoSuchView(_) | EptError::NoSuchVcpu(_) => Self::NotFound,
            EptError::DefaultView => Self::InvalidArgument("the default view cannot be destroyed"),
            EptError::ViewLimit | EptError::CapacityExceeded => Self::CapacityExceeded,
            EptError::NotShadowFrame(_) => Self::InvalidArgument("not a shadow frame"),
            EptError::GfnInUse(_) => Self::InvalidArgument("frame already backed"),
            EptError::InvalidVector(_) => Self::InvalidArgument("exception vector above 31"),
            EptError::OutsideFrame => Self::InvalidArgument("range outside the page"),
            EptError::UnknownExitReason(_) => Self::Driver("unknown VM-exit reason"),
            EptError::EntryFailure(_) => Self::Driver("VM-entry failure"),
            EptError::InvalidExitInformation(what) => Self::Driver(what),
            EptError::Platform(PlatformError::Unsupported(what)) => Self::NotSupported(what),
            EptError::Platform(PlatformError::NoSuchVcpu(_)) => Self::NotFound,
            EptError::Platform(PlatformError::Failed(why)) => Self::Driver(why),
        }
    }
}
