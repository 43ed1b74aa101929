//! [`LinuxError`]: what can go wrong while reading a Linux guest from its memory.

use core::fmt;

use crate::addr::Va;
use crate::error::VmiError;

/// Everything the Linux layer can refuse, by name. Small and `Copy`, like [`VmiError`].
///
/// The layer's own methods return it; the [`VmiOs`](crate::os::VmiOs) methods turn it into
/// a [`VmiError`]: a read error stays what it was, an unsupported layout becomes
/// [`VmiError::NotSupported`], anything else [`VmiError::Malformed`], each with the
/// variant's text from [`LinuxError::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum LinuxError {
    /// A read of guest memory failed.
    Read(VmiError),
    /// No kallsyms token table was found in guest memory (the anchor `"0".."9"` occurs
    /// nowhere, or no occurrence is followed by a valid token index).
    KallsymsNotFound,
    /// The kallsyms tables were found but contradict themselves; the text says where.
    KallsymsCorrupt(&'static str),
    /// The kallsyms tables use a layout this crate does not read; the text names it.
    KallsymsUnsupported(&'static str),
    /// No symbol has the name asked for.
    SymbolNotFound,
    /// No BTF header (`0xeB9F`, version 1) was found, or none holds the kernel's types.
    BtfNotFound,
    /// The BTF data contradicts itself; the text says where.
    BtfCorrupt(&'static str),
    /// No struct or union of that name in the BTF.
    BtfTypeNotFound,
    /// The struct has no member of that name, also in its unnamed members.
    BtfMemberNotFound,
    /// The kernel image (its page-table root, its physical place) was not found; the
    /// text says which step failed.
    KernelNotFound(&'static str),
    /// A VMCOREINFO note was found but a claim in it does not hold; the text says which.
    VmcoreinfoInvalid(&'static str),
    /// A kernel list pointed at an address that is not a kernel address or cannot be
    /// read: the list is broken at `at`.
    ListPointer {
        /// The list: `"tasks"`, `"threads"`, `"modules"`.
        list: &'static str,
        /// The bad pointer.
        at: Va,
    },
    /// A kernel list runs in a circle that does not pass its head.
    ListCycle {
        /// The list.
        list: &'static str,
    },
    /// A kernel list is longer than the bound the layer walks.
    ListTooLong {
        /// The list.
        list: &'static str,
    },
    /// A maple tree (a process's VMAs) is malformed; the text says how.
    MapleTreeCorrupt(&'static str),
    /// No process has the pid asked for.
    ProcessNotFound,
    /// A caller-supplied buffer is too small.
    BufferTooSmall,
}

impl LinuxError {
    /// A fixed text for the variant (without the values it carries).
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Read(_) => "a read of guest memory failed",
            Self::KallsymsNotFound => "no kallsyms token table in guest memory",
            Self::KallsymsCorrupt(why) => why,
            Self::KallsymsUnsupported(why) => why,
            Self::SymbolNotFound => "no such kernel symbol",
            Self::BtfNotFound => "no kernel BTF in guest memory",
            Self::BtfCorrupt(why) => why,
            Self::BtfTypeNotFound => "no such struct in the kernel BTF",
            Self::BtfMemberNotFound => "no such struct member in the kernel BTF",
            Self::KernelNotFound(why) => why,
            Self::VmcoreinfoInvalid(why) => why,
            Self::ListPointer { .. } => "a kernel list points outside kernel memory",
            Self::ListCycle { .. } => "a kernel list loops without passing its head",
            Self::ListTooLong { .. } => "a kernel list is longer than the walk bound",
            Self::MapleTreeCorrupt(why) => why,
            Self::ProcessNotFound => "no process with that pid",
            Self::BufferTooSmall => "buffer too small",
        }
    }
}

impl From<VmiError> for LinuxError {
    fn from(e: VmiError) -> Self {
        Self::Read(e)
    }
}

impl From<LinuxError> for VmiError {
    fn from(e: LinuxError) -> Self {
        match e {
            LinuxError::Read(e) => e,
            LinuxError::KallsymsUnsupported(why) => VmiError::NotSupported(why),
            LinuxError::SymbolNotFound | LinuxError::ProcessNotFound => VmiError::NotFound,
            LinuxError::BufferTooSmall => VmiError::BufferTooSmall,
            other => VmiError::Malformed(other.as_str()),
        }
    }
}

impl fmt::Display for LinuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(e) => write!(f, "guest read failed: {e}"),
            Self::KallsymsCorrupt(why) => write!(f, "kallsyms corrupt: {why}"),
            Self::KallsymsUnsupported(why) => write!(f, "kallsyms layout not supported: {why}"),
            Self::BtfCorrupt(why) => write!(f, "BTF corrupt: {why}"),
            Self::KernelNotFound(why) => write!(f, "kernel not found: {why}"),
            Self::VmcoreinfoInvalid(why) => write!(f, "VMCOREINFO rejected: {why}"),
            Self::ListPointer { list, at } => {
                write!(f, "kernel list `{list}` broken: bad pointer {at}")
            }
            Self::ListCycle { list } => {
                write!(f, "kernel list `{list}` loops without passing its head")
            }
            Self::ListTooLong { list } => {
                write!(f, "kernel list `{list}` is longer than the walk bound")
            }
            Self::MapleTreeCorrupt(why) => write!(f, "maple tree corrupt: {why}"),
            other => f.write_str(other.as_str()),
        }
    }
}

impl core::error::Error for LinuxError {}
