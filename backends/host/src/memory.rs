//! Guest-physical memory held by this process: an owned buffer or a memory-mapped file,
//! with a map from guest-physical ranges to offsets in that storage.
//!
//! # Contract
//! Every access is bounds-checked against the ranges and the storage: for any address and
//! length, a read or write returns `Ok` or [`VmiError::OutOfBounds`], and never panics or
//! touches bytes outside the storage.

use std::fs::File;
use std::sync::{PoisonError, RwLock};

use introvisor::{Pa, VmiError};

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
    /// The first address past the range (saturating).
    pub fn end(&self) -> u64 {
        self.start.0.saturating_add(self.len)
    }
}

enum Storage {
    Owned(Box<[u8]>),
    Mapped(memmap2::Mmap),
    OwnedWritable(RwLock<Box<[u8]>>),
    MappedWritable(RwLock<memmap2::MmapMut>),
}

/// Guest-physical memory: storage plus the ranges that map guest addresses into it.
///
/// Read-only memory is read without any lock. Writable memory sits behind a `RwLock`:
/// correct under concurrent writes, at the price of a lock per access.
pub struct GuestMemory {
    storage: Storage,
    /// Sorted by `start`, non-overlapping, each inside the storage.
    ranges: Vec<MemoryRange>,
    /// The common case: one range at address 0, offset 0.
    identity_len: Option<u64>,
}

impl GuestMemory {
    /// Memory in a buffer: guest-physical address `n` is `bytes[n]`.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let len = bytes.len() as u64;
        Self::new(
            Storage::Owned(bytes.into_boxed_slice()),
            vec![MemoryRange {
                start: Pa(0),
                len,
                offset: 0,
            }],
        )
    }

    /// Writable memory in a buffer.
    pub fn from_vec_writable(bytes: Vec<u8>) -> Self {
        let len = bytes.len() as u64;
        Self::new(
            Storage::OwnedWritable(RwLock::new(bytes.into_boxed_slice())),
            vec![MemoryRange {
                start: Pa(0),
                len,
                offset: 0,
            }],
        )
    }

    /// A file mapped read-only, with the given ranges (`None`: the whole file at address 0,
    /// a raw dump).
    ///
    /// # Errors
    /// The error of mapping the file.
    pub fn map_file(file: &File, ranges: Option<Vec<MemoryRange>>) -> std::io::Result<Self> {
        // SAFETY: the mapping is read-only and private to this process. Like every user of
        // a memory-mapped file, we rely on no other process truncating or rewriting the
        // dump while it is open; that is documented on `HostDriver::open_raw`.
        let map = unsafe { memmap2::Mmap::map(file)? };
        let len = map.len() as u64;
        let ranges = ranges.unwrap_or_else(|| {
            vec![MemoryRange {
                start: Pa(0),
                len,
                offset: 0,
            }]
        });
        Ok(Self::new(Storage::Mapped(map), ranges))
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
        let ranges = ranges.unwrap_or_else(|| {
            vec![MemoryRange {
                start: Pa(0),
                len,
                offset: 0,
            }]
        });
        Ok(Self::new(Storage::MappedWritable(RwLock::new(map)), ranges))
    }

    fn new(storage: Storage, mut ranges: Vec<MemoryRange>) -> Self {
        let storage_len = match &storage {
            Storage::Owned(b) => b.len(),
            Storage::Mapped(m) => m.len(),
            Storage::OwnedWritable(l) => l.read().unwrap_or_else(PoisonError::into_inner).len(),
            Storage::MappedWritable(l) => l.read().unwrap_or_else(PoisonError::into_inner).len(),
        } as u64;
        // Keep only what the storage really holds, sorted, without overlaps.
        ranges.retain_mut(|r| {
            let available = storage_len.saturating_sub(r.offset);
            r.len = r.len.min(available);
            r.len > 0
        });
        ranges.sort_by_key(|r| r.start);
        let mut kept: Vec<MemoryRange> = Vec::with_capacity(ranges.len());
        for mut r in ranges {
            if let Some(prev) = kept.last() {
                let prev_end = prev.end();
                if r.start.0 < prev_end {
                    let cut = prev_end - r.start.0;
                    if cut >= r.len {
                        continue;
                    }
                    r.start = Pa(prev_end);
                    r.offset = r.offset.saturating_add(cut);
                    r.len -= cut;
                }
            }
            kept.push(r);
        }
        let identity_len = match kept.as_slice() {
            [only] if only.start == Pa(0) && only.offset == 0 => Some(only.len),
            _ => None,
        };
        Self {
            storage,
            ranges: kept,
            identity_len,
        }
    }

    /// The same storage under other ranges (clipped, sorted and de-overlapped as in the
    /// constructors): how a dump file mapped whole becomes the memory its headers describe.
    pub(crate) fn with_ranges(self, ranges: Vec<MemoryRange>) -> Self {
        Self::new(self.storage, ranges)
    }

    /// The length of the storage in bytes (the file size for a dump).
    pub fn storage_len(&self) -> u64 {
        self.with_bytes(|b| b.len() as u64)
    }

    /// The guest-physical ranges, sorted.
    pub fn ranges(&self) -> &[MemoryRange] {
        &self.ranges
    }

    /// The number of guest-physical bytes backed by storage.
    pub fn size(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum()
    }

    /// The first address past the highest backed byte.
    pub fn end(&self) -> u64 {
        self.ranges.last().map_or(0, MemoryRange::end)
    }

    /// Whether writes are allowed.
    pub fn is_writable(&self) -> bool {
        matches!(
            self.storage,
            Storage::OwnedWritable(_) | Storage::MappedWritable(_)
        )
    }

    /// The storage offset of `[pa, pa + len)`, if one range holds all of it.
    #[inline]
    pub fn offset_of(&self, pa: Pa, len: u64) -> Option<usize> {
        let end = pa.0.checked_add(len)?;
        if let Some(size) = self.identity_len {
            return (end <= size).then_some(pa.0 as usize);
        }
        let index = self
            .ranges
            .partition_point(|r| r.start.0 <= pa.0)
            .checked_sub(1)?;
        let range = self.ranges.get(index)?;
        if end > range.end() {
            return None;
        }
        usize::try_from(range.offset.checked_add(pa.0 - range.start.0)?).ok()
    }

    /// Runs `f` on the storage bytes.
    #[inline]
    pub(crate) fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match &self.storage {
            Storage::Owned(b) => f(b),
            Storage::Mapped(m) => f(m),
            Storage::OwnedWritable(l) => f(&l.read().unwrap_or_else(PoisonError::into_inner)),
            Storage::MappedWritable(l) => f(&l.read().unwrap_or_else(PoisonError::into_inner)),
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
            Storage::Owned(_) | Storage::Mapped(_) => {
                Err(VmiError::NotSupported("write to read-only memory"))
            }
        }
    }

    /// Copies storage bytes at `offset` into `buf`. Read-only storage, the common case,
    /// is read inline; writable storage takes its lock out of line.
    ///
    /// # Errors
    /// [`VmiError::OutOfBounds`] (reported at `pa`) if the storage is too short.
    #[inline(always)]
    pub(crate) fn read_storage(
        &self,
        offset: usize,
        pa: Pa,
        buf: &mut [u8],
    ) -> Result<(), VmiError> {
        match &self.storage {
            Storage::Owned(b) => copy_out(b, offset, pa, buf),
            Storage::Mapped(m) => copy_out(m, offset, pa, buf),
            Storage::OwnedWritable(_) | Storage::MappedWritable(_) => {
                self.read_locked(offset, pa, buf)
            }
        }
    }

    /// [`GuestMemory::read_storage`] for writable storage, under its lock.
    #[inline(never)]
    fn read_locked(&self, offset: usize, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
        self.with_bytes(|bytes| copy_out(bytes, offset, pa, buf))
    }

    /// Copies guest-physical memory at `pa` into `buf`.
    ///
    /// # Errors
    /// [`VmiError::OutOfBounds`] unless one range holds the whole of `[pa, pa + len)`.
    #[inline(always)]
    pub fn read(&self, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
        let offset = self
            .offset_of(pa, buf.len() as u64)
            .ok_or(VmiError::OutOfBounds(pa))?;
        self.read_storage(offset, pa, buf)
    }

    /// All of guest-physical memory as one slice starting at address 0, for read-only
    /// storage that holds it so (one range at address 0, storage offset 0); `None` for
    /// writable storage (read under its lock) and for memory in several ranges.
    #[inline]
    pub fn as_identity_slice(&self) -> Option<&[u8]> {
        let len = usize::try_from(self.identity_len?).ok()?;
        let bytes: &[u8] = match &self.storage {
            Storage::Owned(b) => b,
            Storage::Mapped(m) => m,
            Storage::OwnedWritable(_) | Storage::MappedWritable(_) => return None,
        };
        bytes.get(..len)
    }

    /// Copies `data` into guest-physical memory at `pa`.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] for read-only memory; [`VmiError::OutOfBounds`] unless one
    /// range holds the whole of `[pa, pa + len)`.
    pub fn write(&self, pa: Pa, data: &[u8]) -> Result<(), VmiError> {
        let offset = self
            .offset_of(pa, data.len() as u64)
            .ok_or(VmiError::OutOfBounds(pa))?;
        let copy = |bytes: &mut [u8]| {
            let dst = offset
                .checked_add(data.len())
                .and_then(|end| bytes.get_mut(offset..end))
                .ok_or(VmiError::OutOfBounds(pa))?;
            dst.copy_from_slice(data);
            Ok(())
        };
        match &self.storage {
            Storage::OwnedWritable(l) => {
                copy(&mut l.write().unwrap_or_else(PoisonError::into_inner))
            }
            Storage::MappedWritable(l) => {
                copy(&mut l.write().unwrap_or_else(PoisonError::into_inner))
            }
            Storage::Owned(_) | Storage::Mapped(_) => {
                Err(VmiError::NotSupported("write to read-only memory"))
            }
        }
    }
}

/// Copies `buf.len()` bytes of `bytes` from `offset` into `buf`.
#[inline(always)]
fn copy_out(bytes: &[u8], offset: usize, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
    let src = offset
        .checked_add(buf.len())
        .and_then(|end| bytes.get(offset..end))
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
    } else {
        dst.copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_clipped_sorted_and_deoverlapped() {
        let storage = Storage::Owned(vec![7u8; 100].into_boxed_slice());
        let mem = GuestMemory::new(
            storage,
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
        assert_eq!(
            mem.read(Pa(0x2001), &mut b),
            Err(VmiError::OutOfBounds(Pa(0x2001)))
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
            Err(VmiError::OutOfBounds(Pa(15)))
        );
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
                    Err(VmiError::OutOfBounds(Pa(64 - len as u64 + 1)))
                );
            }
        }
    }
}
