//! LiME images: what the Linux Memory Extractor (`lime.ko`, `format=lime`) writes, the
//! format Linux forensic acquisition uses most.
//!
//! # The format
//! A sequence of ranges, each a 32-byte header followed by the range's bytes (LiME's
//! `doc/README.md`, "Memory Range Header Version 1 Specification"). The header's fields are
//! in the byte order of the host that wrote it, little-endian on x86:
//!
//! | offset | size | field | value |
//! |---|---|---|---|
//! | 0 | 4 | magic | `0x4C694D45` (the bytes `EMiL`) |
//! | 4 | 4 | version | 1 |
//! | 8 | 8 | `s_addr` | the first guest-physical address of the range |
//! | 16 | 8 | `e_addr` | the last one (inclusive) |
//! | 24 | 8 | reserved | zero |
//!
//! The range's `e_addr - s_addr + 1` bytes follow, then the next header. Holes between
//! ranges are memory the image does not hold (MMIO, reserved regions): the ranges become
//! the guest's physical memory as an ELF core's `PT_LOAD` segments do.
//!
//! # Contract
//! [`parse`] reads only the bytes it is given: for any input it returns `Ok` or a
//! [`LimeError`] naming the range header at fault, never panics, and allocates in
//! proportion to the headers it accepts (at most [`MAX_RANGES`]). A file cut short (an
//! acquisition that stopped) keeps what it holds: a cut inside a range's bytes, or inside a
//! header after the first, opens with a warning that says what is missing.

use core::fmt;
use std::collections::BTreeMap;

use introvisor::Pa;
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use super::elf::Source;
use crate::memory::MemoryRange;

/// The header magic, `0x4C694D45`: the bytes `EMiL` in a little-endian file.
pub const LIME_MAGIC: u32 = 0x4C69_4D45;
/// The only header version defined.
pub const LIME_VERSION: u32 = 1;
/// The size of a range header.
pub const HEADER_SIZE: u64 = 32;
/// The most ranges accepted (a machine's memory map has a few dozen).
pub const MAX_RANGES: usize = 1 << 20;
/// The highest physical-address width of x86 (MAXPHYADDR is at most 52, Intel SDM Vol. 3A
/// §4.1.4): a range reaching past `2^52` describes no memory a machine can have.
pub const MAX_PHYS_BITS: u32 = 52;

/// A range header as it is in the file.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy)]
#[repr(C)]
struct Header {
    magic: U32,
    version: U32,
    s_addr: U64,
    e_addr: U64,
    reserved: [u8; 8],
}

/// What is wrong with a LiME image. `index` counts range headers from 0, `offset` is the
/// header's file offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimeError {
    /// The file ends inside the first range header: there is no range at all.
    Truncated {
        /// The bytes the file holds.
        len: u64,
    },
    /// A header does not start with the magic.
    BadMagic {
        /// The header's index.
        index: usize,
        /// Its file offset.
        offset: u64,
        /// The four bytes found, read little-endian.
        found: u32,
    },
    /// A header's version is not [`LIME_VERSION`].
    UnsupportedVersion {
        /// The header's index.
        index: usize,
        /// Its file offset.
        offset: u64,
        /// The version found.
        version: u32,
    },
    /// `e_addr < s_addr`.
    EndBeforeStart {
        /// The header's index.
        index: usize,
        /// `s_addr`.
        start: u64,
        /// `e_addr`.
        end: u64,
    },
    /// The range reaches past `2^52` ([`MAX_PHYS_BITS`]), where no x86 machine has memory.
    AbsurdRange {
        /// The header's index.
        index: usize,
        /// `s_addr`.
        start: u64,
        /// `e_addr`.
        end: u64,
    },
    /// The range overlaps an earlier one: the image would say two things about one byte.
    Overlap {
        /// The header's index.
        index: usize,
        /// `s_addr`.
        start: u64,
        /// `e_addr`.
        end: u64,
        /// The index of an earlier range it overlaps (of several, the one that starts last).
        other: usize,
    },
    /// More than [`MAX_RANGES`] ranges.
    TooManyRanges,
}

impl fmt::Display for LimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { len } => write!(
                f,
                "truncated LiME image: {len} bytes, less than one {HEADER_SIZE}-byte range header"
            ),
            Self::BadMagic {
                index,
                offset,
                found,
            } => write!(
                f,
                "LiME range header {index} at offset {offset:#x}: bad magic {found:#010x} (expected {LIME_MAGIC:#010x})"
            ),
            Self::UnsupportedVersion {
                index,
                offset,
                version,
            } => write!(
                f,
                "LiME range header {index} at offset {offset:#x}: version {version} (only {LIME_VERSION} is defined)"
            ),
            Self::EndBeforeStart { index, start, end } => write!(
                f,
                "LiME range {index}: ends at {end:#x}, before its start {start:#x}"
            ),
            Self::AbsurdRange { index, start, end } => write!(
                f,
                "LiME range {index}: {start:#x}-{end:#x} reaches past 2^{MAX_PHYS_BITS}, beyond any x86 physical address"
            ),
            Self::Overlap {
                index,
                start,
                end,
                other,
            } => write!(
                f,
                "LiME range {index}: {start:#x}-{end:#x} overlaps range {other}"
            ),
            Self::TooManyRanges => write!(f, "more than {MAX_RANGES} LiME ranges"),
        }
    }
}

impl core::error::Error for LimeError {}

/// One range of a LiME image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimeRange {
    /// `s_addr`: the first guest-physical address.
    pub start: u64,
    /// `e_addr`: the last guest-physical address (inclusive, as in the header).
    pub end: u64,
    /// The file offset of the range's first byte (just past its header).
    pub offset: u64,
    /// How many of its bytes the file holds: `end - start + 1`, or fewer if the file is cut.
    pub in_file: u64,
}

/// A parsed LiME image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimeImage {
    /// The ranges, in file order.
    pub ranges: Vec<LimeRange>,
    /// Things that are odd but not fatal (a cut file, nonzero reserved bytes), in words.
    pub warnings: Vec<String>,
}

impl LimeImage {
    /// The guest-physical memory ranges the file holds.
    pub fn memory_ranges(&self) -> Vec<MemoryRange> {
        self.ranges
            .iter()
            .filter(|r| r.in_file > 0)
            .map(|r| MemoryRange {
                start: Pa(r.start),
                len: r.in_file,
                offset: r.offset,
            })
            .collect()
    }
}

/// Whether `bytes` start with a LiME range header's magic.
pub fn is_lime(bytes: &[u8]) -> bool {
    bytes.starts_with(&LIME_MAGIC.to_le_bytes())
}

/// Why a file could not be read as LiME.
#[derive(Debug)]
pub(crate) enum Fail {
    /// The file is not a usable LiME image.
    Lime(LimeError),
    /// Reading it failed (an I/O error, not a short file).
    Io(std::io::Error),
}

impl From<LimeError> for Fail {
    fn from(e: LimeError) -> Self {
        Self::Lime(e)
    }
}

/// Parses a LiME image held in memory.
///
/// # Errors
/// A [`LimeError`] naming the range header at fault: a bad magic or version, a range that
/// ends before it starts, reaches past `2^52` or overlaps another, more than
/// [`MAX_RANGES`] ranges, or a file shorter than one header.
pub fn parse(bytes: &[u8]) -> Result<LimeImage, LimeError> {
    parse_from(bytes).map_err(|fail| match fail {
        Fail::Lime(e) => e,
        // Reading from memory cannot fail, only come up short.
        Fail::Io(_) => LimeError::Truncated {
            len: bytes.len() as u64,
        },
    })
}

/// [`parse`] over any [`Source`]: only the headers are read.
pub(crate) fn parse_from<S: Source + ?Sized>(src: &S) -> Result<LimeImage, Fail> {
    let file_len = src.len();
    if file_len < HEADER_SIZE {
        return Err(LimeError::Truncated { len: file_len }.into());
    }
    let mut ranges: Vec<LimeRange> = Vec::new();
    let mut warnings = Vec::new();
    let mut offset = 0u64;
    let mut nonzero_reserved = 0usize;
    // start -> (end, index) of every range so far, for the overlap check.
    let mut by_start: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
    while offset < file_len {
        let index = ranges.len();
        if index >= MAX_RANGES {
            return Err(LimeError::TooManyRanges.into());
        }
        let mut header = Header::new_zeroed();
        if !src
            .read_exact_at(offset, header.as_mut_bytes())
            .map_err(Fail::Io)?
        {
            // Fewer than 32 bytes remain (index > 0: the first header was checked above).
            // The start of a header cut short is a cut file; anything else after the last
            // range is not LiME.
            let rest = usize::try_from(file_len.saturating_sub(offset)).unwrap_or(0);
            let mut tail = [0u8; HEADER_SIZE as usize];
            let tail = tail.get_mut(..rest).unwrap_or_default();
            if !src.read_exact_at(offset, tail).map_err(Fail::Io)? {
                return Err(LimeError::Truncated { len: file_len }.into());
            }
            let magic = LIME_MAGIC.to_le_bytes();
            let n = rest.min(magic.len());
            if magic.get(..n) != tail.get(..n) {
                let mut found = [0u8; 4];
                for (dst, src) in found.iter_mut().zip(tail.iter()) {
                    *dst = *src;
                }
                return Err(LimeError::BadMagic {
                    index,
                    offset,
                    found: u32::from_le_bytes(found),
                }
                .into());
            }
            warnings.push(format!(
                "the file ends inside range header {index} at offset {offset:#x} ({rest} of {HEADER_SIZE} bytes): cut short, the memory after range {} is missing",
                index.saturating_sub(1)
            ));
            break;
        }
        let magic = header.magic.get();
        if magic != LIME_MAGIC {
            return Err(LimeError::BadMagic {
                index,
                offset,
                found: magic,
            }
            .into());
        }
        let version = header.version.get();
        if version != LIME_VERSION {
            return Err(LimeError::UnsupportedVersion {
                index,
                offset,
                version,
            }
            .into());
        }
        let (start, end) = (header.s_addr.get(), header.e_addr.get());
        if end < start {
            return Err(LimeError::EndBeforeStart { index, start, end }.into());
        }
        if end >> MAX_PHYS_BITS != 0 {
            return Err(LimeError::AbsurdRange { index, start, end }.into());
        }
        // The ranges so far are disjoint, so the one that starts last at or before `end`
        // is the only one to check: any other overlapping range would lie before it.
        if let Some((_, &(other_end, other))) = by_start.range(..=end).next_back()
            && other_end >= start
        {
            return Err(LimeError::Overlap {
                index,
                start,
                end,
                other,
            }
            .into());
        }
        if header.reserved != [0; 8] {
            nonzero_reserved = nonzero_reserved.saturating_add(1);
        }
        // end < 2^52, so the length cannot overflow; the offsets saturate at worst.
        let len = end.saturating_sub(start).saturating_add(1);
        let data = offset.saturating_add(HEADER_SIZE);
        let in_file = len.min(file_len.saturating_sub(data));
        if in_file < len {
            warnings.push(format!(
                "range {index} at {start:#x}: the file holds {in_file:#x} of its {len:#x} bytes (cut short); the rest reads as absent"
            ));
        }
        by_start.insert(start, (end, index));
        ranges.push(LimeRange {
            start,
            end,
            offset: data,
            in_file,
        });
        offset = data.saturating_add(len);
    }
    if nonzero_reserved > 0 {
        warnings.push(format!(
            "{nonzero_reserved} range header(s) have nonzero reserved bytes (ignored)"
        ));
    }
    if ranges.iter().all(|r| r.in_file == 0) {
        warnings.push("no LiME range holds memory".to_owned());
    }
    Ok(LimeImage { ranges, warnings })
}
