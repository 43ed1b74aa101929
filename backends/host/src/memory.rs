//! Guest-physical memory held by this process: an owned buffer, a memory-mapped file, or
//! a file read with positioned reads, with a map from guest-physical ranges to offsets in
//! that storage.
//!
//! # Contract
//! Every access is bounds-checked against the ranges and the storage: for any address and
//! length, a read or write returns `Ok` or an error, and never panics or touches bytes
//! outside the storage. An access may span several ranges that are adjacent in
//! guest-physical memory (a page split between two ELF segments, as Linux vmcores have);
//! one that meets a hole fails with [`VmiError::OutOfBounds`] naming the first missing
//! byte.
//!
//! # Files that change underneath
//! A memory-mapped file ([`GuestMemory::map_file`]) is fast, but if another process
//! truncates it, touching a page past the new end raises SIGBUS and kills the process:
//! no error can be returned. [`GuestMemory::read_file`] reads with `pread` instead: one
//! system call per access, and a file that shrank gives [`VmiError::Driver`] ("shorter
//! than when it was opened"), never a signal. The dump openers
//! ([`crate::dump::open`], the `introvisor` tool) use it.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::fs::File;
use std::sync::{PoisonError, RwLock};

use introvisor::{Pa, VmiError};

/// What a read of a file that became shorter than when it was opened returns.
pub const FILE_SHRANK: VmiError =
    VmiError::Driver("the dump file is shorter than when it was opened (truncated while open)");
/// What any other failed read of a file returns.
pub const FILE_READ_FAILED: VmiError = VmiError::Driver("an I/O error while reading the dump file");

/// One contiguous run of guest-physical memory and where its bytes live in the storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRange {
    /// The first guest-physical address.
    pub start: Pa,
    /// The length in bytes.
    pub len: u64,
    /// The offset of `start`'s byte in the storage (the file offset for a dump).
    pub offset: u64,
}

impl MemoryRange {
    /// The first address past the range (saturating: a range that ends at 2^64 says
    /// `u64::MAX`; see [`MemoryRange::last`]).
    pub fn end(&self) -> u64 {
        self.start.0.saturating_add(self.len)
    }

    /// The last address of the range; `None` for an empty range or one that runs past
    /// 2^64. A range may end exactly at 2^64: its last address is `u64::MAX`.
    pub fn last(&self) -> Option<u64> {
        self.len
            .checked_sub(1)
            .and_then(|n| self.start.0.checked_add(n))
    }

    /// Whether the range holds `pa`.
    fn holds(&self, pa: u64) -> bool {
        pa >= self.start.0 && self.last().is_some_and(|last| pa <= last)
    }
}

/// Bytes of a range that [`normalize`] dropped because an earlier range (one with a lower
/// start, or the same start and earlier in the list) holds the same addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Overlap {
    /// The first address dropped.
    pub(crate) start: Pa,
    /// How many bytes were dropped.
    pub(crate) len: u64,
}

/// The ranges as memory uses them: each clipped to the storage and to 2^64, empty ones
/// dropped, sorted by start (stably), and each overlap resolved in favour of the range
/// that starts first; with the overlaps, so that a dump reader can say what it dropped.
pub(crate) fn normalize(
    mut ranges: Vec<MemoryRange>,
    storage_len: u64,
) -> (Vec<MemoryRange>, Vec<Overlap>) {
    ranges.retain_mut(|r| {
        let in_storage = storage_len.saturating_sub(r.offset);
        let below_top = u64::MAX.saturating_sub(r.start.0).saturating_add(1);
        r.len = r.len.min(in_storage).min(below_top);
        r.len > 0
    });
    ranges.sort_by_key(|r| r.start);
    let mut kept: Vec<MemoryRange> = Vec::with_capacity(ranges.len());
    let mut overlaps = Vec::new();
    for mut r in ranges {
        let (Some(prev_last), Some(last)) = (kept.last().and_then(MemoryRange::last), r.last())
        else {
            kept.push(r);
            continue;
        };
        if r.start.0 <= prev_last {
            if last <= prev_last {
                overlaps.push(Overlap {
                    start: r.start,
                    len: r.len,
                });
                continue;
            }
            // prev_last < last <= u64::MAX, and r.start <= prev_last: no overflow.
            let cut = prev_last.saturating_sub(r.start.0).saturating_add(1);
            overlaps.push(Overlap {
                start: r.start,
                len: cut,
            });
            r.start = Pa(prev_last.saturating_add(1));
            r.offset = r.offset.saturating_add(cut);
            r.len = r.len.saturating_sub(cut);
        }
        kept.push(r);
    }
    (kept, overlaps)
}

enum Storage {
    Owned(Box<[u8]>),
    Mapped(memmap2::Mmap),
    /// Read with positioned reads: a file that shrinks gives errors, not SIGBUS.
    File(File),
    OwnedWritable(RwLock<Box<[u8]>>),
    MappedWritable(RwLock<memmap2::MmapMut>),
}

/// Guest-physical memory: storage plus the ranges that map guest addresses into it.
///
/// Read-only memory is read without any lock. Writable memory sits behind a `RwLock`:
/// correct under concurrent writes, at the price of a lock per access.
pub struct GuestMemory {
    storage: Storage,
    /// The storage's length in bytes (a file's, when it was opened).
    storage_len: u64,
    /// Sorted by `start`, non-overlapping, non-empty, each inside the storage and below
    /// 2^64.
    ranges: Vec<MemoryRange>,
    /// The common case: one range at address 0, offset 0.
    identity_len: Option<u64>,
}

/// One range at address 0 holding `len` bytes from offset 0.
fn whole(len: u64) -> Vec<MemoryRange> {
    vec![MemoryRange {
        start: Pa(0),
        len,
        offset: 0,
    }]
}

impl GuestMemory {
    /// Memory in a buffer: guest-physical address `n` is `bytes[n]`.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let len = bytes.len() as u64;
        Self::new(Storage::Owned(bytes.into_boxed_slice()), len, whole(len))
    }

    /// Writable memory in a buffer.
    pub fn from_vec_writable(bytes: Vec<u8>) -> Self {
        let len = bytes.len() as u64;
        Self::new(
            Storage::OwnedWritable(RwLock::new(bytes.into_boxed_slice())),
            len,
            whole(len),
        )
    }

    /// A file mapped read-only, with the given ranges (`None`: the whole file at address 0,
    /// a raw dump).
    ///
    /// The file must not be truncated while the memory is alive: a read past its new end
    /// raises SIGBUS (see the module documentation, and [`GuestMemory::read_file`]).
    ///
    /// # Errors
    /// The error of mapping the file.
    pub fn map_file(file: &File, ranges: Option<Vec<MemoryRange>>) -> std::io::Result<Self> {
        // SAFETY: the mapping is read-only and private to this process. Like every user of
        // a memory-mapped file, we rely on no other process truncating or rewriting the
        // file while it is mapped; that is documented here and on `HostDriver::open_raw`,
        // and the dump openers use `read_file` instead.
        let map = unsafe { memmap2::Mmap::map(file)? };
        let len = map.len() as u64;
        Ok(Self::new(
            Storage::Mapped(map),
            len,
            ranges.unwrap_or_else(|| whole(len)),
        ))
    }

    /// A file mapped for writing (changes go to the file), with the given ranges.
    ///
    /// # Errors
    /// The error of mapping the file.
    pub fn map_file_writable(
        file: &File,
        ranges: Option<Vec<MemoryRange>>,
    ) -> std::io::Result<Self> {
        // SAFETY: as in `map_file`; writes go through the RwLock, so this process never
        // races with itself.
        let map = unsafe { memmap2::MmapMut::map_mut(file)? };
        let len = map.len() as u64;
        Ok(Self::new(
            Storage::MappedWritable(RwLock::new(map)),
            len,
            ranges.unwrap_or_else(|| whole(len)),
        ))
    }

    /// A file read with positioned reads (`pread`), read-only, with the given ranges
    /// (`None`: the whole file at address 0). The ranges are clipped to the file's size
    /// now; if the file shrinks later, reads of what is gone fail with [`FILE_SHRANK`].
    ///
    /// # Errors
    /// The error of reading the file's metadata.
    pub fn read_file(file: File, ranges: Option<Vec<MemoryRange>>) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self::new(
            Storage::File(file),
            len,
            ranges.unwrap_or_else(|| whole(len)),
        ))
    }

    fn new(storage: Storage, storage_len: u64, ranges: Vec<MemoryRange>) -> Self {
        let (ranges, _) = normalize(ranges, storage_len);
        let identity_len = match ranges.as_slice() {
            [only] if only.start == Pa(0) && only.offset == 0 => Some(only.len),
            _ => None,
        };
        Self {
            storage,
            storage_len,
            ranges,
            identity_len,
        }
    }

    /// The same storage under other ranges (clipped, sorted and de-overlapped as in the
    /// constructors): how a dump file opened whole becomes the memory its headers describe.
    pub(crate) fn with_ranges(self, ranges: Vec<MemoryRange>) -> Self {
        Self::new(self.storage, self.storage_len, ranges)
    }

    /// The length of the storage in bytes (the file size for a dump, when it was opened).
    pub fn storage_len(&self) -> u64 {
        self.storage_len
    }

    /// The guest-physical ranges, sorted.
    pub fn ranges(&self) -> &[MemoryRange] {
        &self.ranges
    }

    /// The number of guest-physical bytes backed by storage.
    pub fn size(&self) -> u64 {
        self.ranges
            .iter()
            .fold(0u64, |sum, r| sum.saturating_add(r.len))
    }

    /// The first address past the highest backed byte (saturating at `u64::MAX` when
    /// memory reaches 2^64; see [`GuestMemory::last_address`]).
    pub fn end(&self) -> u64 {
        self.ranges.last().map_or(0, MemoryRange::end)
    }

    /// The highest backed address, if any byte is backed.
    pub fn last_address(&self) -> Option<u64> {
        self.ranges.last().and_then(MemoryRange::last)
    }

    /// Whether writes are allowed.
    pub fn is_writable(&self) -> bool {
        matches!(
            self.storage,
            Storage::OwnedWritable(_) | Storage::MappedWritable(_)
        )
    }

    /// The index of the range that holds `pa`.
    fn range_index(&self, pa: u64) -> Option<usize> {
        let index = self
            .ranges
            .partition_point(|r| r.start.0 <= pa)
            .checked_sub(1)?;
        self.ranges
            .get(index)
            .is_some_and(|r| r.holds(pa))
            .then_some(index)
    }

    /// The storage offset of `[pa, pa + len)`, if one range holds all of it.
    #[inline]
    pub fn offset_of(&self, pa: Pa, len: u64) -> Option<usize> {
        let end = pa.0.checked_add(len)?;
        if let Some(size) = self.identity_len {
            return (end <= size).then_some(usize::try_from(pa.0).ok()?);
        }
        self.storage_offset(pa, len)
            .and_then(|o| usize::try_from(o).ok())
    }

    /// The storage offset (as a `u64`, a file offset) of `[pa, pa + len)`, if one range
    /// holds all of it.
    pub(crate) fn storage_offset(&self, pa: Pa, len: u64) -> Option<u64> {
        let last = pa.0.checked_add(len.checked_sub(1)?)?;
        let range = self.ranges.get(self.range_index(pa.0)?)?;
        if last > range.last()? {
            return None;
        }
        range.offset.checked_add(pa.0.checked_sub(range.start.0)?)
    }

    /// Whether any byte of `[pa, pa + len)` is backed.
    pub fn holds_any(&self, pa: Pa, len: u64) -> bool {
        let Some(last) = len.checked_sub(1).map(|n| pa.0.saturating_add(n)) else {
            return false;
        };
        let Some(index) = self
            .ranges
            .partition_point(|r| r.start.0 <= last)
            .checked_sub(1)
        else {
            return false;
        };
        self.ranges
            .get(index)
            .and_then(MemoryRange::last)
            .is_some_and(|range_last| range_last >= pa.0)
    }

    /// The pieces of `[pa, pa + len)`, each `(guest address, storage offset, length)`, in
    /// order; `f` is called on each. Fails with [`VmiError::OutOfBounds`] at the first
    /// byte no range holds, before `f` sees that piece (but after the pieces before it).
    fn pieces(
        &self,
        pa: Pa,
        len: usize,
        mut f: impl FnMut(u64, u64, usize) -> Result<(), VmiError>,
    ) -> Result<(), VmiError> {
        let mut at = pa.0;
        let mut left = len;
        while left > 0 {
            let range = self
                .range_index(at)
                .and_then(|i| self.ranges.get(i))
                .ok_or(VmiError::OutOfBounds(Pa(at)))?;
            let last = range.last().ok_or(VmiError::OutOfBounds(Pa(at)))?;
            // Bytes of the range from `at` on: at most 2^64, which saturates harmlessly.
            let here = last.saturating_sub(at).saturating_add(1);
            let n = usize::try_from(here).map_or(left, |h| h.min(left));
            let offset = range
                .offset
                .checked_add(at.saturating_sub(range.start.0))
                .ok_or(VmiError::OutOfBounds(Pa(at)))?;
            f(at, offset, n)?;
            left = left.saturating_sub(n);
            if left > 0 {
                // More to come: the range ended below 2^64 (else `n` would be `left`).
                at = at
                    .checked_add(n as u64)
                    .ok_or(VmiError::OutOfBounds(Pa(at)))?;
            }
        }
        Ok(())
    }

    /// Copies storage bytes at `offset` into `buf`. Read-only storage, the common case,
    /// is read inline; writable storage takes its lock out of line.
    ///
    /// # Errors
    /// [`VmiError::OutOfBounds`] (reported at `pa`) if the storage is too short;
    /// [`FILE_SHRANK`] or [`FILE_READ_FAILED`] for a file read with `pread`.
    #[inline(always)]
    pub(crate) fn read_storage(&self, offset: u64, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
        match &self.storage {
            Storage::Owned(b) => copy_out(b, offset, pa, buf),
            Storage::Mapped(m) => copy_out(m, offset, pa, buf),
            Storage::File(file) => read_file_at(file, offset, buf),
            Storage::OwnedWritable(_) | Storage::MappedWritable(_) => {
                self.read_locked(offset, pa, buf)
            }
        }
    }

    /// [`GuestMemory::read_storage`] for writable storage, under its lock.
    #[inline(never)]
    fn read_locked(&self, offset: u64, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
        match &self.storage {
            Storage::OwnedWritable(l) => copy_out(
                &l.read().unwrap_or_else(PoisonError::into_inner),
                offset,
                pa,
                buf,
            ),
            Storage::MappedWritable(l) => copy_out(
                &l.read().unwrap_or_else(PoisonError::into_inner),
                offset,
                pa,
                buf,
            ),
            Storage::Owned(_) | Storage::Mapped(_) | Storage::File(_) => {
                Err(VmiError::NotSupported("locked read of unlocked storage"))
            }
        }
    }

    /// Runs `f` on the storage bytes, writably, holding the write lock: for a test's
    /// guest model that changes memory as the guest would.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] for read-only memory.
    pub fn with_bytes_mut<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> Result<R, VmiError> {
        match &self.storage {
            Storage::OwnedWritable(l) => {
                Ok(f(&mut l.write().unwrap_or_else(PoisonError::into_inner)))
            }
            Storage::MappedWritable(l) => {
                Ok(f(&mut l.write().unwrap_or_else(PoisonError::into_inner)))
            }
            Storage::Owned(_) | Storage::Mapped(_) | Storage::File(_) => {
                Err(VmiError::NotSupported("write to read-only memory"))
            }
        }
    }

    /// Copies guest-physical memory at `pa` into `buf`, from as many adjacent ranges as
    /// it spans.
    ///
    /// # Errors
    /// [`VmiError::OutOfBounds`] naming the first byte of `[pa, pa + len)` that no range
    /// holds (`pa` itself for a range that wraps past 2^64); for a file read with `pread`,
    /// [`FILE_SHRANK`] or [`FILE_READ_FAILED`].
    #[inline(always)]
    pub fn read(&self, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
        if let Some(size) = self.identity_len
            && pa
                .0
                .checked_add(buf.len() as u64)
                .is_some_and(|end| end <= size)
        {
            return self.read_storage(pa.0, pa, buf);
        }
        if let Some(offset) = self.storage_offset(pa, buf.len() as u64) {
            return self.read_storage(offset, pa, buf);
        }
        self.read_pieces(pa, buf)
    }

    /// [`GuestMemory::read`] across ranges, out of line.
    #[inline(never)]
    fn read_pieces(&self, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
        check_span(pa, buf.len())?;
        let mut done = 0usize;
        self.pieces(pa, buf.len(), |at, offset, n| {
            let end = done.checked_add(n).ok_or(VmiError::OutOfBounds(Pa(at)))?;
            let dst = buf
                .get_mut(done..end)
                .ok_or(VmiError::OutOfBounds(Pa(at)))?;
            self.read_storage(offset, Pa(at), dst)?;
            done = end;
            Ok(())
        })
    }

    /// All of guest-physical memory as one slice starting at address 0, for read-only
    /// storage that holds it so (one range at address 0, storage offset 0, in a buffer or
    /// a mapping); `None` for writable storage (read under its lock), a file read with
    /// `pread`, and memory in several ranges.
    #[inline]
    pub fn as_identity_slice(&self) -> Option<&[u8]> {
        let len = usize::try_from(self.identity_len?).ok()?;
        let bytes: &[u8] = match &self.storage {
            Storage::Owned(b) => b,
            Storage::Mapped(m) => m,
            Storage::File(_) | Storage::OwnedWritable(_) | Storage::MappedWritable(_) => {
                return None;
            }
        };
        bytes.get(..len)
    }

    /// Copies `data` into guest-physical memory at `pa`, across as many adjacent ranges
    /// as it spans. Nothing is written unless all of it can be.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] for read-only memory; [`VmiError::OutOfBounds`] naming
    /// the first byte of `[pa, pa + len)` that no range holds.
    pub fn write(&self, pa: Pa, data: &[u8]) -> Result<(), VmiError> {
        // Check every piece, then copy: a write that meets a hole changes nothing. The
        // bounds come first, read-only memory or not, so a write past the end is reported
        // as such whatever the storage.
        check_span(pa, data.len())?;
        self.pieces(pa, data.len(), |_, _, _| Ok(()))?;
        let write = |bytes: &mut [u8]| {
            let mut done = 0usize;
            self.pieces(pa, data.len(), |at, offset, n| {
                let oob = VmiError::OutOfBounds(Pa(at));
                let end = done.checked_add(n).ok_or(oob)?;
                let src = data.get(done..end).ok_or(oob)?;
                let start = usize::try_from(offset).map_err(|_| oob)?;
                let dst = start
                    .checked_add(n)
                    .and_then(|stop| bytes.get_mut(start..stop))
                    .ok_or(oob)?;
                dst.copy_from_slice(src);
                done = end;
                Ok(())
            })
        };
        match &self.storage {
            Storage::OwnedWritable(l) => {
                write(&mut l.write().unwrap_or_else(PoisonError::into_inner))
            }
            Storage::MappedWritable(l) => {
                write(&mut l.write().unwrap_or_else(PoisonError::into_inner))
            }
            Storage::Owned(_) | Storage::Mapped(_) | Storage::File(_) => {
                Err(VmiError::NotSupported("write to read-only memory"))
            }
        }
    }
}

/// `[pa, pa + len)` must not wrap past 2^64.
fn check_span(pa: Pa, len: usize) -> Result<(), VmiError> {
    match (len as u64).checked_sub(1) {
        Some(n) if pa.0.checked_add(n).is_none() => Err(VmiError::OutOfBounds(pa)),
        _ => Ok(()),
    }
}

/// Reads `buf.len()` bytes of `file` at `offset`, with positioned reads.
fn read_file_at(file: &File, offset: u64, buf: &mut [u8]) -> Result<(), VmiError> {
    #[cfg(unix)]
    let result = std::os::unix::fs::FileExt::read_exact_at(file, buf, offset);
    #[cfg(windows)]
    let result = {
        let mut done = 0usize;
        loop {
            let Some(rest) = buf.get_mut(done..) else {
                break Ok(());
            };
            if rest.is_empty() {
                break Ok(());
            }
            let at = offset.saturating_add(done as u64);
            match std::os::windows::fs::FileExt::seek_read(file, rest, at) {
                Ok(0) => break Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done = done.saturating_add(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        }
    };
    result.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FILE_SHRANK
        } else {
            FILE_READ_FAILED
        }
    })
}

/// Copies `buf.len()` bytes of `bytes` from `offset` into `buf`.
#[inline(always)]
fn copy_out(bytes: &[u8], offset: u64, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
    let src = usize::try_from(offset)
        .ok()
        .and_then(|start| Some((start, start.checked_add(buf.len())?)))
        .and_then(|(start, end)| bytes.get(start..end))
        .ok_or(VmiError::OutOfBounds(pa))?;
    copy(src, buf);
    Ok(())
}

/// Copies `src` into `dst` (of the same length). Page-table entries and integers (8 and 4
/// bytes) are the commonest reads: for them the copy is one load and one store rather than
/// a call to `memcpy` with a length known only at run time.
#[inline(always)]
fn copy(src: &[u8], dst: &mut [u8]) {
    if let (Ok(s), Ok(d)) = (
        <&[u8; 8]>::try_from(src),
        <&mut [u8; 8]>::try_from(&mut *dst),
    ) {
        *d = *s;
    } else if let (Ok(s), Ok(d)) = (
        <&[u8; 4]>::try_from(src),
        <&mut [u8; 4]>::try_from(&mut *dst),
    ) {
        *d = *s;
    } else if src.len() == dst.len() {
        dst.copy_from_slice(src);
    }
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests: a panic is a failed test, and the fixtures are fixed"
)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_clipped_sorted_and_deoverlapped() {
        let storage = Storage::Owned(vec![7u8; 100].into_boxed_slice());
        let mem = GuestMemory::new(
            storage,
            100,
            vec![
                MemoryRange {
                    start: Pa(0x2000),
                    len: 50,
                    offset: 60,
                }, // clipped to 40
                MemoryRange {
                    start: Pa(0x1000),
                    len: 10,
                    offset: 0,
                },
                MemoryRange {
                    start: Pa(0x1005),
                    len: 10,
                    offset: 10,
                }, // overlaps: trimmed
                MemoryRange {
                    start: Pa(0x9000),
                    len: 10,
                    offset: 500,
                }, // outside: dropped
            ],
        );
        assert_eq!(
            mem.ranges(),
            &[
                MemoryRange {
                    start: Pa(0x1000),
                    len: 10,
                    offset: 0
                },
                MemoryRange {
                    start: Pa(0x100a),
                    len: 5,
                    offset: 15
                },
                MemoryRange {
                    start: Pa(0x2000),
                    len: 40,
                    offset: 60
                },
            ]
        );
        let mut b = [0u8; 40];
        assert!(mem.read(Pa(0x2000), &mut b).is_ok());
        // The first byte missing is named, not the start of the read.
        assert_eq!(
            mem.read(Pa(0x2001), &mut b),
            Err(VmiError::OutOfBounds(Pa(0x2028)))
        );
        // Across the adjacent ranges at 0x1000 and 0x100a, and into the hole after them.
        let mut c = [0u8; 15];
        mem.read(Pa(0x1000), &mut c).unwrap();
        assert_eq!(
            mem.read(Pa(0x1008), &mut b[..8]),
            Err(VmiError::OutOfBounds(Pa(0x100f)))
        );
        assert_eq!(
            mem.read(Pa(u64::MAX), &mut b[..2]),
            Err(VmiError::OutOfBounds(Pa(u64::MAX)))
        );
        assert_eq!(
            mem.read(Pa(0x500), &mut b[..1]),
            Err(VmiError::OutOfBounds(Pa(0x500)))
        );
    }

    #[test]
    fn writes_need_writable_memory() {
        let ro = GuestMemory::from_vec(vec![0; 16]);
        assert!(matches!(
            ro.write(Pa(0), &[1]),
            Err(VmiError::NotSupported(_))
        ));
        let rw = GuestMemory::from_vec_writable(vec![0; 16]);
        rw.write(Pa(15), &[9]).unwrap();
        let mut b = [0u8; 1];
        rw.read(Pa(15), &mut b).unwrap();
        assert_eq!(b, [9]);
        assert_eq!(
            rw.write(Pa(15), &[1, 2]),
            Err(VmiError::OutOfBounds(Pa(16)))
        );
        // A write that meets a hole changes nothing.
        rw.read(Pa(15), &mut b).unwrap();
        assert_eq!(b, [9]);
    }

    /// The fixed-size copies (8 and 4 bytes) and the general one agree, in read-only and
    /// writable storage, and stay bounds-checked.
    #[test]
    fn reads_of_every_size_copy_the_same_bytes() {
        let bytes: Vec<u8> = (0..64u8).collect();
        for mem in [
            GuestMemory::from_vec(bytes.clone()),
            GuestMemory::from_vec_writable(bytes.clone()),
        ] {
            for len in [1usize, 3, 4, 5, 8, 9, 16] {
                let mut buf = vec![0u8; len];
                mem.read(Pa(10), &mut buf).unwrap();
                assert_eq!(buf, bytes[10..10 + len]);
                assert_eq!(
                    mem.read(Pa(64 - len as u64 + 1), &mut buf),
                    Err(VmiError::OutOfBounds(Pa(64)))
                );
            }
        }
    }
}
