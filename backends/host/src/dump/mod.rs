//! Memory dump files: a raw image of guest-physical memory, or an ELF core file as QEMU
//! writes it ([`elf`]). [`open`] tells them apart by content and returns a
//! [`HostDriver`] over the file (memory-mapped, read-only) with the vCPU registers the
//! dump holds, and a [`DumpInfo`] that describes it.
//!
//! # Contract
//! A dump file is hostile input: for any content, [`open`] returns `Ok` or a
//! [`DumpError`], never panics, and allocates only in proportion to the headers it
//! accepts (see [`elf`]).

pub mod elf;
pub mod write;

use core::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use introvisor::arch::amd64::Registers;

use crate::driver::HostDriver;
use crate::memory::{GuestMemory, MemoryRange};

pub use elf::{ElfClass, ElfCore, ElfError, ElfVcpu, Machine, RegisterSource};

/// The format of a dump file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpFormat {
    /// A raw image: byte `n` of the file is guest-physical address `n`. No registers.
    Raw,
    /// An ELF core file (QEMU `dump-guest-memory`, `virsh dump --memory-only`, a vmcore).
    Elf {
        /// ELF32 or ELF64.
        class: ElfClass,
        /// The machine.
        machine: Machine,
    },
}

impl fmt::Display for DumpFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Raw => f.write_str("raw physical memory image"),
            Self::Elf { class, machine } => write!(f, "{class} core file, machine {machine}"),
        }
    }
}

/// What is known about an opened dump.
#[derive(Clone, Debug)]
pub struct DumpInfo {
    /// The path it was opened from.
    pub path: PathBuf,
    /// The format.
    pub format: DumpFormat,
    /// The file size in bytes.
    pub file_size: u64,
    /// The guest-physical ranges the file holds, sorted, as the driver uses them.
    pub ranges: Vec<MemoryRange>,
    /// The vCPUs (none for a raw dump).
    pub vcpus: Vec<ElfVcpu>,
    /// Notes other than the vCPUs' (ELF only).
    pub other_notes: Vec<elf::OtherNote>,
    /// Oddities that did not stop the dump from opening.
    pub warnings: Vec<String>,
}

/// Why a dump could not be opened.
#[derive(Debug)]
#[non_exhaustive]
pub enum DumpError {
    /// The file could not be opened, read or mapped.
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// The file is an ELF file, but not one this reader can use.
    Elf {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        error: ElfError,
    },
    /// The file is in a dump format this reader does not read.
    Unsupported {
        /// The path.
        path: PathBuf,
        /// The format, in words.
        format: &'static str,
    },
}

impl fmt::Display for DumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, error } => write!(f, "{}: {error}", path.display()),
            Self::Elf { path, error } => write!(f, "{}: {error}", path.display()),
            Self::Unsupported { path, format } => write!(
                f,
                "{}: {format} dumps are not supported (use QEMU's ELF format or a raw image)",
                path.display()
            ),
        }
    }
}

impl core::error::Error for DumpError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Io { error, .. } => Some(error),
            Self::Elf { error, .. } => Some(error),
            Self::Unsupported { .. } => None,
        }
    }
}

/// Known formats that are not ELF and not raw, by their first bytes.
fn unsupported_format(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"KDUMP   ") {
        Some("kdump-compressed (makedumpfile)")
    } else if bytes.starts_with(b"PAGEDU64") || bytes.starts_with(b"PAGEDUMP") {
        Some("Windows crash")
    } else {
        None
    }
}

/// Opens a dump file: ELF if it starts with the ELF magic, raw otherwise.
///
/// The file is memory-mapped read-only; it must not be truncated or rewritten while the
/// driver is alive (the usual caveat of mapped files).
///
/// # Errors
/// [`DumpError::Io`] if the file cannot be opened or mapped, [`DumpError::Elf`] for an
/// ELF file that is corrupt or not an x86 core file, [`DumpError::Unsupported`] for a
/// kdump-compressed or Windows crash dump.
pub fn open(path: impl AsRef<Path>) -> Result<(HostDriver, DumpInfo), DumpError> {
    let path = path.as_ref();
    let io = |error| DumpError::Io {
        path: path.to_owned(),
        error,
    };
    let file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if meta.is_dir() {
        return Err(io(std::io::Error::other("is a directory")));
    }
    let memory = GuestMemory::map_file(&file, None).map_err(io)?;
    let file_size = memory.storage_len();
    let parsed = memory.with_bytes(|bytes| {
        if let Some(format) = unsupported_format(bytes) {
            return Err(DumpError::Unsupported {
                path: path.to_owned(),
                format,
            });
        }
        if elf::is_elf(bytes) {
            elf::parse(bytes).map(Some).map_err(|error| DumpError::Elf {
                path: path.to_owned(),
                error,
            })
        } else {
            Ok(None)
        }
    })?;
    let (memory, format, vcpus, other_notes, warnings) = match parsed {
        None => (memory, DumpFormat::Raw, Vec::new(), Vec::new(), Vec::new()),
        Some(core) => (
            memory.with_ranges(core.ranges()),
            DumpFormat::Elf {
                class: core.class,
                machine: core.machine,
            },
            core.vcpus,
            core.other_notes,
            core.warnings,
        ),
    };
    let ranges = memory.ranges().to_vec();
    let registers: Vec<Registers> = vcpus.iter().map(|v| v.registers).collect();
    let driver = HostDriver::new(memory).with_registers(registers);
    Ok((
        driver,
        DumpInfo {
            path: path.to_owned(),
            format,
            file_size,
            ranges,
            vcpus,
            other_notes,
            warnings,
        },
    ))
}

impl HostDriver {
    /// Opens a raw or ELF dump by content; see [`open`].
    ///
    /// # Errors
    /// As [`open`].
    pub fn open_dump(path: impl AsRef<Path>) -> Result<(Self, DumpInfo), DumpError> {
        open(path)
    }
}
