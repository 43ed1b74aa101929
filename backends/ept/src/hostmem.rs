//! The one module that touches host memory, and the only one allowed `unsafe`.
//!
//! Everything the backend reads or writes in host memory (EPT tables, guest frames,
//! shadow frames) goes through here, by raw pointer from [`Platform::host_frame`].
//!
//! # Rules
//! - No `&[u8]`/`&mut [u8]` (or any reference) is ever created over host memory: the
//!   guest (and, in a simulator, other threads) may change it at any moment, and a Rust
//!   reference would promise it does not (vm-memory's rule, its `volatile_memory.rs`).
//!   Bytes are copied in and out one atomic access at a time.
//! - Every access is a relaxed atomic: `AtomicU64::from_ptr` for aligned 8-byte words
//!   (each EPT entry is one, so a CPU's page walker never sees a torn entry), and
//!   `AtomicU8::from_ptr` for the unaligned edges of a copy. Concurrent accesses by other
//!   atomics or by hardware are then well-defined in Rust's memory model (and clean under
//!   Miri).
//! - Every offset is checked against the 4 KiB frame before a pointer is formed; an
//!   offset outside the frame is an error, never an access.
//!
//! The soundness of each block rests on the [`Platform`] safety contract: the pointer
//! names 4096 bytes, 8-aligned, valid for reads and writes for the rest of the program,
//! and accessed by nothing else but atomically or by hardware.

#![allow(unsafe_code)]

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use crate::entry::EptEntry;
use crate::error::EptError;
use crate::platform::{Hpa, Platform};

/// The size of a frame.
pub(crate) const FRAME: usize = 4096;

/// A pointer to one 4 KiB host frame, from [`Platform::host_frame`]: valid, aligned to
/// 8, for the rest of the program (the platform's contract). The only way to build one is
/// [`FramePtr::of`], so every `FramePtr` carries that promise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FramePtr(NonNull<u8>);

// SAFETY: the pointer is to memory valid for the rest of the program (Platform contract
// 1) that every party accesses atomically or by hardware (contract 2); sending it to
// another thread lets that thread make the same atomic accesses, which cannot race.
unsafe impl Send for FramePtr {}
// SAFETY: as for `Send`: shared use means concurrent relaxed atomic accesses only.
unsafe impl Sync for FramePtr {}

impl FramePtr {
    /// The frame holding `hpa`.
    ///
    /// # Errors
    /// [`EptError::HostFrameUnmapped`] when the platform maps none;
    /// [`EptError::Misaligned`] if the platform's pointer is not 8-aligned (a broken
    /// platform: refused rather than trusted).
    pub(crate) fn of<P: Platform + ?Sized>(platform: &P, hpa: Hpa) -> Result<Self, EptError> {
        let ptr = platform
            .host_frame(hpa.frame())
            .ok_or(EptError::HostFrameUnmapped(hpa.frame()))?;
        if ptr.as_ptr().align_offset(8) != 0 {
            return Err(EptError::Misaligned(hpa.frame()));
        }
        Ok(Self(ptr))
    }

    /// The 8-byte word at `index` (0..512).
    fn word(self, index: usize) -> Option<&'static AtomicU64> {
        if index >= FRAME / 8 {
            return None;
        }
        // SAFETY: `index * 8 + 8 <= 4096`, so the word lies inside the frame, which is
        // valid for reads and writes for the rest of the program ('static) and 8-aligned
        // (checked in `of`), so the word is 8-aligned too. Every other access to it is
        // atomic or by hardware (Platform contract 2), so treating it as an `AtomicU64` is
        // sound; `AtomicU64` has interior mutability, so a shared reference to it does not
        // promise the bytes stay unchanged (unlike a `&u64` or `&[u8]`).
        Some(unsafe { AtomicU64::from_ptr(self.0.as_ptr().add(index * 8).cast::<u64>()) })
    }

    /// The byte at `offset` (0..4096).
    fn byte(self, offset: usize) -> Option<&'static AtomicU8> {
        if offset >= FRAME {
            return None;
        }
        // SAFETY: `offset < 4096` lies inside the frame, valid for the rest of the program;
        // alignment 1 always holds; every other access is atomic or by hardware (Platform
        // contract 2), and `AtomicU8` has interior mutability.
        Some(unsafe { AtomicU8::from_ptr(self.0.as_ptr().add(offset)) })
    }

    /// Reads the 8-byte word at `index` (an EPT entry when the frame is a table).
    pub(crate) fn load(self, index: usize) -> Result<u64, EptError> {
        self.word(index)
            .map(|w| w.load(Ordering::Relaxed))
            .ok_or(EptError::OutsideFrame)
    }

    /// Writes the 8-byte word at `index`.
    pub(crate) fn store(self, index: usize, value: u64) -> Result<(), EptError> {
        self.word(index)
            .map(|w| w.store(value, Ordering::Relaxed))
            .ok_or(EptError::OutsideFrame)
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`.
    ///
    /// # Errors
    /// [`EptError::OutsideFrame`] (no byte copied) when the range leaves the
    /// frame.
    pub(crate) fn read(self, offset: usize, buf: &mut [u8]) -> Result<(), EptError> {
        let end = offset
            .checked_add(buf.len())
            .filter(|&e| e <= FRAME)
            .ok_or(EptError::OutsideFrame)?;
        let mut at = offset;
        let mut out = buf.iter_mut();
        while at < end {
            if at.is_multiple_of(8) && end - at >= 8 {
                let word = self.word(at / 8).map_or(0, |w| w.load(Ordering::Relaxed));
                for b in word.to_le_bytes() {
                    if let Some(o) = out.next() {
                        *o = b;
                    }
                }
                at += 8;
            } else {
                if let (Some(o), Some(b)) = (out.next(), self.byte(at)) {
                    *o = b.load(Ordering::Relaxed);
                }
                at += 1;
            }
        }
        Ok(())
    }

    /// Copies `data` to `offset`.
    ///
    /// # Errors
    /// As [`FramePtr::read`] (nothing written).
    pub(crate) fn write(self, offset: usize, data: &[u8]) -> Result<(), EptError> {
        let end = offset
            .checked_add(data.len())
            .filter(|&e| e <= FRAME)
            .ok_or(EptError::OutsideFrame)?;
        let mut at = offset;
        let mut input = data.iter();
        while at < end {
            if at.is_multiple_of(8) && end - at >= 8 {
                let mut raw = [0u8; 8];
                for r in &mut raw {
                    *r = input.next().copied().unwrap_or(0);
                }
                if let Some(w) = self.word(at / 8) {
                    w.store(u64::from_le_bytes(raw), Ordering::Relaxed);
                }
                at += 8;
            } else {
                if let (Some(&d), Some(b)) = (input.next(), self.byte(at)) {
                    b.store(d, Ordering::Relaxed);
                }
                at += 1;
            }
        }
        Ok(())
    }

    /// Sets the whole frame to zero, one word at a time.
    pub(crate) fn zero(self) {
        for i in 0..FRAME / 8 {
            if let Some(w) = self.word(i) {
                w.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Copies the whole frame `src` into this one, one word at a time.
    pub(crate) fn copy_from(self, src: FramePtr) {
        for i in 0..FRAME / 8 {
            if let (Some(d), Some(s)) = (self.word(i), src.word(i)) {
                d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }
}

/// Reads entry `index` of the EPT table at `table`.
pub(crate) fn read_entry<P: Platform + ?Sized>(
    platform: &P,
    table: Hpa,
    index: usize,
) -> Result<EptEntry, EptError> {
    FramePtr::of(platform, table)?.load(index).map(EptEntry)
}

/// Writes entry `index` of the EPT table at `table`, as one atomic 64-bit store.
pub(crate) fn write_entry<P: Platform + ?Sized>(
    platform: &P,
    table: Hpa,
    index: usize,
    entry: EptEntry,
) -> Result<(), EptError> {
    FramePtr::of(platform, table)?.store(index, entry.0)
}
