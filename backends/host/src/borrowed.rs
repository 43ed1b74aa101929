//! [`BorrowedDriver`]: a [`VmiDriver`] over guest-physical memory the caller already
//! holds, borrowed, not copied (issue 12, must-have 8).
//!
//! A caller with guest RAM in hand (a buffer it filled, a mapping it owns, a snapshot in
//! a test) lends it as `&'a [u8]`; the driver and every page handle borrow it for `'a`,
//! so starting costs nothing, whatever the size. The slice is guest-physical address 0
//! onward, read-only, and lent whole to the core ([`VmiDriver::physical_memory`]), which
//! then reads page-table entries with one bounds check and one load each and bypasses its
//! page cache, as for [`HostDriver::from_vec`](crate::HostDriver::from_vec).
//!
//! # Contract
//! Frames and addresses come from guest page tables: for any of them every method returns
//! `Ok` or an error and never panics. The last frame may be held in part (a slice whose
//! length is not a page multiple): its bytes read, a read of a missing byte fails with
//! [`VmiError::OutOfBounds`] naming it.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use core::time::Duration;
use std::time::Instant;

use introvisor::arch::amd64::{Amd64, Registers};
use introvisor::{Gfn, Pa, PageRef, VcpuId, VmiDriver, VmiError, VmiInfo};

const PAGE_SIZE: u64 = 4096;
const PAGE_SHIFT: u32 = 12;

/// The first byte of `[pa, pa + len)` that `memory` (from address 0) does not hold.
fn first_missing(memory: &[u8], pa: Pa) -> VmiError {
    VmiError::OutOfBounds(Pa(pa.0.max(memory.len() as u64)))
}

/// `len` bytes of `memory` at guest-physical `pa`, if it holds them all.
#[inline(always)]
fn span(memory: &[u8], pa: Pa, len: usize) -> Result<&[u8], VmiError> {
    usize::try_from(pa.0)
        .ok()
        .and_then(|start| memory.get(start..start.checked_add(len)?))
        .ok_or_else(|| first_missing(memory, pa))
}

/// A handle to one frame of a [`BorrowedDriver`]'s memory: the frame's bytes, borrowed
/// (fewer than a page for a last frame held in part). Cloning it copies two words.
#[derive(Clone, Copy, Debug)]
pub struct BorrowedPage<'a> {
    frame: &'a [u8],
    gfn: Gfn,
}

impl PageRef for BorrowedPage<'_> {
    fn gfn(&self) -> Gfn {
        self.gfn
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VmiError> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > PAGE_SIZE) {
            return Err(VmiError::InvalidArgument("range outside the page"));
        }
        // The page's first address; the first missing byte is at most 4096 past it.
        let base = self.gfn.0.wrapping_shl(PAGE_SHIFT);
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| self.frame.get(start..start.checked_add(buf.len())?))
            .ok_or_else(|| {
                let held = self.frame.len() as u64;
                VmiError::OutOfBounds(Pa(base.wrapping_add(offset.max(held))))
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A read-only driver over guest-physical memory borrowed from the caller: byte `n` of
/// the slice is guest-physical address `n`. Nothing is copied, and the core reads the
/// slice directly ([`VmiDriver::physical_memory`]).
///
/// Like [`HostDriver`](crate::HostDriver), it has no vCPUs that run: `pause` and
/// `resume` succeed and do nothing, registers are those given, and there are no events.
///
/// ```
/// use introvisor::{AccessContext, Va, VmiCore};
/// use introvisor_host::BorrowedDriver;
/// use introvisor_host::builder::{GuestBuilder, MapFlags, PageSize};
///
/// let mut b = GuestBuilder::new(1 << 20);
/// b.map_new(Va(0x40_0000), PageSize::Size4K, MapFlags::USER_DATA)?;
/// b.write_virtual(Va(0x40_0010), &0x1122_3344_u64.to_le_bytes())?;
/// let guest = b.finish();
/// // The caller keeps the memory; the core borrows it.
/// let core = VmiCore::new(BorrowedDriver::new(&guest.memory));
/// let v = core.read_u64(AccessContext::paging(Va(0x40_0010), guest.root))?;
/// assert_eq!(v, 0x1122_3344);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BorrowedDriver<'a> {
    memory: &'a [u8],
    registers: Vec<Registers>,
    clock: Instant,
}

impl<'a> BorrowedDriver<'a> {
    /// A driver over `memory`, guest-physical address 0 onward, with no vCPU registers.
    pub fn new(memory: &'a [u8]) -> Self {
        Self {
            memory,
            registers: Vec::new(),
            clock: Instant::now(),
        }
    }

    /// Sets the vCPUs' registers (one entry per vCPU).
    pub fn with_registers(mut self, registers: Vec<Registers>) -> Self {
        self.registers = registers;
        self
    }

    /// The borrowed memory.
    pub fn memory(&self) -> &'a [u8] {
        self.memory
    }
}

impl<'a> VmiDriver for BorrowedDriver<'a> {
    type Architecture = Amd64;
    type Page = BorrowedPage<'a>;

    fn info(&self) -> Result<VmiInfo, VmiError> {
        let last = (self.memory.len() as u64).saturating_sub(1);
        Ok(VmiInfo {
            page_size: PAGE_SIZE,
            page_shift: PAGE_SHIFT,
            max_gfn: Gfn(last >> PAGE_SHIFT),
            vcpus: u16::try_from(self.registers.len()).unwrap_or(u16::MAX),
        })
    }

    /// A handle to the frame if memory holds any byte of it.
    ///
    /// # Errors
    /// [`VmiError::GfnNotPresent`] if memory holds no byte of the frame.
    fn read_page(&self, gfn: Gfn) -> Result<BorrowedPage<'a>, VmiError> {
        let frame = gfn
            .0
            .checked_mul(PAGE_SIZE)
            .and_then(|pa| usize::try_from(pa).ok())
            .and_then(|start| {
                let end = start
                    .saturating_add(PAGE_SIZE as usize)
                    .min(self.memory.len());
                self.memory.get(start..end)
            })
            .filter(|frame| !frame.is_empty())
            .ok_or(VmiError::GfnNotPresent(gfn))?;
        Ok(BorrowedPage { frame, gfn })
    }

    #[inline(always)]
    fn read_physical(&self, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
        buf.copy_from_slice(span(self.memory, pa, buf.len())?);
        Ok(())
    }

    /// Yes: a read is one bounds check of the borrowed slice, whatever it spans.
    #[inline]
    fn read_physical_spans_pages(&self) -> bool {
        true
    }

    #[inline]
    fn physical_memory(&self) -> Option<&[u8]> {
        Some(self.memory)
    }

    #[inline(always)]
    fn prefetch_physical(&self, pa: Pa) {
        crate::prefetch::prefetch(self.memory, pa);
    }

    fn now(&self) -> Option<Duration> {
        Some(self.clock.elapsed())
    }

    fn pause(&self) -> Result<(), VmiError> {
        Ok(())
    }

    fn resume(&self) -> Result<(), VmiError> {
        Ok(())
    }

    fn registers(&self, vcpu: VcpuId) -> Result<Registers, VmiError> {
        self.registers
            .get(usize::from(vcpu.0))
            .copied()
            .ok_or(VmiError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::HostDriver;

    /// Every read answers as the owning driver's does, for frames whole, in part and
    /// absent, and nothing was copied: the page handles point into the caller's bytes.
    #[test]
    fn borrowed_reads_match_the_owning_driver_without_a_copy() {
        // Two and a half pages: the last frame is held in part.
        let bytes: Vec<u8> = (0..10_240u32).map(|i| (i * 7 + 3) as u8).collect();
        let borrowed = BorrowedDriver::new(&bytes);
        let owned = HostDriver::from_vec(bytes.clone());
        assert_eq!(borrowed.info(), owned.info());
        assert!(core::ptr::eq(
            borrowed.physical_memory().unwrap(),
            &bytes[..]
        ));
        let page = borrowed.read_page(Gfn(1)).unwrap();
        assert!(core::ptr::eq(page.frame.as_ptr(), bytes[4096..].as_ptr()));
        for (pa, len) in [
            (0u64, 8usize),
            (4090, 6),
            (8192, 2048),
            (10_232, 8),
            (10_236, 8),
            (10_240, 1),
            (u64::MAX - 3, 8),
            (1 << 40, 4),
        ] {
            let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
            let (ra, rb) = (
                borrowed.read_physical(Pa(pa), &mut a),
                owned.read_physical(Pa(pa), &mut b),
            );
            assert_eq!(ra, rb, "read_physical at {pa:#x}+{len}");
            // After an error the buffer's contents are unspecified.
            if ra.is_ok() {
                assert_eq!(a, b);
            }
        }
        for gfn in [0u64, 2, 3, u64::MAX] {
            let (pa, pb) = (borrowed.read_page(Gfn(gfn)), owned.read_page(Gfn(gfn)));
            assert_eq!(pa.is_ok(), pb.is_ok(), "frame {gfn}");
            if let (Ok(pa), Ok(pb)) = (pa, pb) {
                for (offset, len) in [(0u64, 16usize), (2040, 16), (4088, 8), (4090, 8)] {
                    let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
                    let (ra, rb) = (pa.read(offset, &mut a), pb.read(offset, &mut b));
                    assert_eq!(ra, rb, "frame {gfn} at {offset}+{len}");
                    if ra.is_ok() {
                        assert_eq!(a, b);
                    }
                }
            }
        }
        assert_eq!(borrowed.registers(VcpuId(0)), Err(VmiError::NotFound));
    }
}
