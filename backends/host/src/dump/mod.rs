//! Memory dump files: a raw image of guest-physical memory, an ELF core file as QEMU
//! writes it ([`elf`]), or a LiME image ([`lime`]). [`open`] tells them apart by content
//! and returns a [`HostDriver`] over the file (read-only, with positioned reads) with the
//! vCPU registers the dump holds, and a [`DumpInfo`] that describes it; [`open_as`] reads
//! a file as the format the caller names.
//!
//! # Detection
//! By the first bytes: `\x7fELF` is ELF, `EMiL` is LiME; the magics of zstd, gzip, xz and
//! LZ4-frame files, of kdump-compressed and of Windows crash dumps are refused with an
//! error that names the format. A file is read as raw only when no known magic matched
//! (or when the caller asks for raw).
//!
//! # Contract
//! A dump file is hostile input: for any content, [`open`] returns `Ok` or a
//! [`DumpError`], never panics, and allocates only in proportion to the headers it
//! accepts (see [`elf`]).
//!
//! Only regular files are opened. A FIFO, a pipe (`/dev/stdin`, `<(...)`), a device
//! (`/dev/null`, `/dev/zero`), a socket or a directory is refused with
//! [`DumpError::NotAFile`] before it is opened, so that nothing waits for a writer, and an
//! empty file with [`DumpError::Empty`].
//!
//! The file is read with `pread`, not memory-mapped: if another process truncates it
//! while it is open, reads of what is gone fail with
//! [`FILE_SHRANK`](crate::memory::FILE_SHRANK) instead of killing the process with
//! SIGBUS. The price is a system call per access where a mapping would need none;
//! [`HostDriver::open_raw`] still maps a raw file for those who can promise it will not
//! change.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

pub mod elf;
pub mod lime;
pub mod write;

use core::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use introvisor::arch::amd64::Registers;

use crate::driver::HostDriver;
use crate::memory::{GuestMemory, MemoryRange};

pub use elf::{ElfClass, ElfCore, ElfError, ElfVcpu, Machine, RegisterSource};
pub use lime::{LimeError, LimeImage, LimeRange};

/// The format of a dump file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpFormat {
    /// A raw image: byte `n` of the file is guest-physical address `n`. No registers.
    Raw,
    /// A LiME image: range headers, each followed by its bytes. No registers.
    Lime {
        /// The number of ranges.
        ranges: usize,
    },
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
            Self::Raw => f.write_str("raw (no known header)"),
            Self::Lime { ranges } => write!(f, "LiME image, {ranges} range(s)"),
            Self::Elf { class, machine } => write!(f, "{class} core file, machine {machine}"),
        }
    }
}

/// A format to read a dump file as, whatever its first bytes say (see [`open_as`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpKind {
    /// A raw image: byte `n` of the file is guest-physical address `n`.
    Raw,
    /// An ELF core file.
    Elf,
    /// A LiME image.
    Lime,
}

/// What is known about an opened dump.
#[derive(Clone, Debug)]
pub struct DumpInfo {
    /// The path it was opened from.
    pub path: PathBuf,
    /// The format.
    pub format: DumpFormat,
    /// Whether the caller named the format ([`open_as`]) rather than the content.
    pub forced: bool,
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
    /// The file is a LiME image, but a malformed one.
    Lime {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        error: LimeError,
    },
    /// The file is compressed: it must be decompressed before it can be read.
    Compressed {
        /// The path.
        path: PathBuf,
        /// The compression format (`"zstd"`, `"gzip"`, `"xz"`, `"LZ4 frame"`).
        format: &'static str,
    },
    /// The path is not a regular file (a FIFO, a device, a directory...).
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is, in words ("FIFO (named pipe)", "character device", ...).
        kind: &'static str,
    },
    /// The file is empty: it holds no memory.
    Empty {
        /// The path.
        path: PathBuf,
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
            Self::Lime { path, error } => write!(f, "{}: {error}", path.display()),
            Self::Compressed { path, format } => write!(
                f,
                "{}: compressed ({format}): decompress it first",
                path.display()
            ),
            Self::NotAFile { path, kind } => write!(
                f,
                "{}: is a {kind}, not a regular file (a dump must be a file; copy it to one first)",
                path.display()
            ),
            Self::Empty { path } => write!(f, "{}: the file is empty", path.display()),
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
            Self::Lime { error, .. } => Some(error),
            Self::Compressed { .. }
            | Self::NotAFile { .. }
            | Self::Empty { .. }
            | Self::Unsupported { .. } => None,
        }
    }
}

/// The compression format whose magic `bytes` start with: zstd (RFC 8878 §3.1.1), gzip
/// (RFC 1952 §2.3.1: ID1 ID2 and CM = 8, deflate, the only method defined), xz (the
/// stream header magic, "The .xz File Format" §2.1.1.1), LZ4 frame (the LZ4 frame
/// format's magic number).
pub fn compression(bytes: &[u8]) -> Option<&'static str> {
    const MAGICS: [(&[u8], &str); 4] = [
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
        (&[0x1f, 0x8b, 0x08], "gzip"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], "xz"),
        (&[0x04, 0x22, 0x4d, 0x18], "LZ4 frame"),
    ];
    MAGICS
        .iter()
        .find(|(magic, _)| bytes.starts_with(magic))
        .map(|&(_, name)| name)
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

/// What a file that is not a regular file is, in words; `None` for a regular file.
fn not_a_file(file_type: std::fs::FileType) -> Option<&'static str> {
    if file_type.is_file() {
        return None;
    }
    if file_type.is_dir() {
        return Some("directory");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return Some("FIFO (named pipe)");
        }
        if file_type.is_char_device() {
            return Some("character device");
        }
        if file_type.is_block_device() {
            return Some("block device");
        }
        if file_type.is_socket() {
            return Some("socket");
        }
    }
    Some("special file")
}

/// What a known magic at the start of `bytes` says the file is, in words, for a file read
/// as another format.
fn looks_like(bytes: &[u8]) -> Option<&'static str> {
    if elf::is_elf(bytes) {
        Some("an ELF file")
    } else if lime::is_lime(bytes) {
        Some("a LiME image")
    } else if let Some(c) = compression(bytes) {
        Some(match c {
            "zstd" => "a zstd-compressed file",
            "gzip" => "a gzip-compressed file",
            "xz" => "an xz-compressed file",
            _ => "an LZ4-compressed file",
        })
    } else {
        unsupported_format(bytes)
    }
}

/// The parsed headers of a dump that is not raw.
enum Parsed {
    Raw(Vec<String>),
    Elf(ElfCore),
    Lime(LimeImage),
}

/// Reads the file behind `source` as `kind`, or by content (its first bytes are `head`).
fn parse_as(
    head: &[u8],
    source: &elf::FileSource<'_>,
    kind: Option<DumpKind>,
    path: &Path,
) -> Result<Parsed, DumpError> {
    let io = |error| DumpError::Io {
        path: path.to_owned(),
        error,
    };
    let elf = || {
        elf::parse_from(source)
            .map(Parsed::Elf)
            .map_err(|fail| match fail {
                elf::Fail::Elf(error) => DumpError::Elf {
                    path: path.to_owned(),
                    error,
                },
                elf::Fail::Io(error) => io(error),
            })
    };
    let lime = || {
        lime::parse_from(source)
            .map(Parsed::Lime)
            .map_err(|fail| match fail {
                lime::Fail::Lime(error) => DumpError::Lime {
                    path: path.to_owned(),
                    error,
                },
                lime::Fail::Io(error) => io(error),
            })
    };
    match kind {
        Some(DumpKind::Raw) => Ok(Parsed::Raw(
            looks_like(head)
                .map(|what| format!("read as raw as asked, although it starts like {what}"))
                .into_iter()
                .collect(),
        )),
        Some(DumpKind::Elf) => elf(),
        Some(DumpKind::Lime) => lime(),
        None => {
            if let Some(format) = compression(head) {
                Err(DumpError::Compressed {
                    path: path.to_owned(),
                    format,
                })
            } else if let Some(format) = unsupported_format(head) {
                Err(DumpError::Unsupported {
                    path: path.to_owned(),
                    format,
                })
            } else if elf::is_elf(head) {
                elf()
            } else if lime::is_lime(head) {
                lime()
            } else {
                Ok(Parsed::Raw(Vec::new()))
            }
        }
    }
}

/// Opens a dump file, its format told by content (see the module's "Detection"). The file
/// is read with `pread` (see the module documentation): a file that shrinks while it is
/// open gives errors, never SIGBUS.
///
/// # Errors
/// [`DumpError::NotAFile`] for a FIFO, a device, a socket or a directory (refused before
/// it is opened: nothing waits on a FIFO), [`DumpError::Empty`] for an empty file,
/// [`DumpError::Io`] if the file cannot be opened or read, [`DumpError::Elf`] for an ELF
/// file that is corrupt or not an x86 core file, [`DumpError::Lime`] for a malformed LiME
/// image, [`DumpError::Compressed`] for a zstd, gzip, xz or LZ4-frame file,
/// [`DumpError::Unsupported`] for a kdump-compressed or Windows crash dump.
pub fn open(path: impl AsRef<Path>) -> Result<(HostDriver, DumpInfo), DumpError> {
    open_with(path.as_ref(), None)
}

/// Opens a dump file as `kind`, whatever its first bytes say: a raw image that happens to
/// start with a known magic, say. [`DumpInfo::forced`] is set, and for a raw read of a file
/// that starts with a known magic, a warning says what it looks like.
///
/// # Errors
/// As [`open`]; a file that is not of `kind` gets that format's error (an ELF or LiME
/// bad magic). Raw never fails on content.
pub fn open_as(
    path: impl AsRef<Path>,
    kind: DumpKind,
) -> Result<(HostDriver, DumpInfo), DumpError> {
    open_with(path.as_ref(), Some(kind))
}

fn open_with(path: &Path, kind: Option<DumpKind>) -> Result<(HostDriver, DumpInfo), DumpError> {
    let io = |error| DumpError::Io {
        path: path.to_owned(),
        error,
    };
    let refuse = |kind| DumpError::NotAFile {
        path: path.to_owned(),
        kind,
    };
    // Look before opening: opening a FIFO for reading waits for a writer. A path swapped
    // for a FIFO between this look and the open can still wait; the look after the open
    // catches every other swap.
    let meta = std::fs::metadata(path).map_err(io)?;
    if let Some(kind) = not_a_file(meta.file_type()) {
        return Err(refuse(kind));
    }
    let file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if let Some(kind) = not_a_file(meta.file_type()) {
        return Err(refuse(kind));
    }
    let file_size = meta.len();
    if file_size == 0 {
        return Err(DumpError::Empty {
            path: path.to_owned(),
        });
    }
    let source = elf::FileSource {
        file: &file,
        len: file_size,
    };
    let mut magic = [0u8; 8];
    let head_len = usize::try_from(file_size).map_or(magic.len(), |n| n.min(magic.len()));
    let head = magic.get_mut(..head_len).unwrap_or_default();
    if !elf::Source::read_exact_at(&source, 0, head).map_err(io)? {
        return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    let parsed = parse_as(head, &source, kind, path)?;
    let memory = GuestMemory::read_file(file, None).map_err(io)?;
    let (memory, format, vcpus, other_notes, warnings) = match parsed {
        Parsed::Raw(warnings) => (memory, DumpFormat::Raw, Vec::new(), Vec::new(), warnings),
        Parsed::Lime(image) => (
            memory.with_ranges(image.memory_ranges()),
            DumpFormat::Lime {
                ranges: image.ranges.len(),
            },
            Vec::new(),
            Vec::new(),
            image.warnings,
        ),
        Parsed::Elf(core) => (
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
            forced: kind.is_some(),
            file_size,
            ranges,
            vcpus,
            other_notes,
            warnings,
        },
    ))
}

impl HostDriver {
    /// Opens a raw, ELF or LiME dump by content; see [`open`].
    ///
    /// # Errors
    /// As [`open`].
    pub fn open_dump(path: impl AsRef<Path>) -> Result<(Self, DumpInfo), DumpError> {
        open(path)
    }

    /// Opens a dump as `kind`; see [`open_as`].
    ///
    /// # Errors
    /// As [`open_as`].
    pub fn open_dump_as(
        path: impl AsRef<Path>,
        kind: DumpKind,
    ) -> Result<(Self, DumpInfo), DumpError> {
        open_as(path, kind)
    }
}
