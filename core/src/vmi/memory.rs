//! Reads and writes of guest memory: bytes, integers, addresses and structures.

use zerocopy::{FromBytes, Immutable, IntoBytes};

use core::sync::atomic::Ordering;

use super::translate::{CoreReader, DirectReader};
use super::{SCAN_PAGES, VmiCore};
use crate::access::{AccessContext, TranslationMechanism};
use crate::addr::{Gfn, Pa, Va};
use crate::arch::Architecture;
use crate::driver::VmiDriver;
use crate::error::VmiError;

impl<D: VmiDriver, const TLB: usize, const PAGES: usize> VmiCore<D, TLB, PAGES> {
    /// Fills `buf` from guest memory at `ctx`, across as many pages as it spans.
    ///
    /// A page of a large leaf (2 MiB, 1 GiB) reuses the translation of the leaf's first
    /// page the read touched. In a read longer than 16 pages, the pages
    /// between the first and the last are walked without the translation cache: a scan
    /// touches each once, and probing and filling the cache for them costs more than
    /// the walk (the copy has pushed the cache's lines out of the CPU's caches); such
    /// pages see the guest's current tables even before a flush. They are one range
    /// walk ([`Architecture::translate_pages_planned`]: on AMD64, consecutive PTEs of a
    /// table are read without a walk from the root each, every check kept), and each
    /// run of physically contiguous frames is read from the memory the driver lends
    /// ([`VmiDriver::physical_memory`]) with one bounds check, or page by page from the
    /// driver otherwise.
    ///
    /// # Errors
    /// The first failure: for a translation, the [`PageFault`](crate::PageFault) names the
    /// first address that could not be read.
    pub fn read(&self, ctx: AccessContext, buf: &mut [u8]) -> Result<(), VmiError> {
        let scan = buf.len() as u64 > SCAN_PAGES.saturating_mul(Self::PAGE_SIZE);
        // The last large leaf: its first virtual address, its frame, its offset mask.
        let mut leaf: Option<(u64, u64, u64)> = None;
        let mut done = 0usize;
        while let Some(left) = buf.len().checked_sub(done).filter(|&left| left > 0) {
            let address = ctx.address.wrapping_add(done as u64);
            // The middle pages of a long read: one range walk, and one copy per run of
            // physically contiguous frames.
            if scan
                && done != 0
                && let TranslationMechanism::Paging { root } = ctx.mechanism
            {
                // `done` ends a page here; every page but the last is whole.
                let middle = (left.saturating_sub(1) as u64) >> Self::PAGE_SHIFT;
                if middle > 0 {
                    done = self.read_pages(Va(address), root, middle, buf, done)?;
                    continue;
                }
            }
            // At least one byte (the page end is after `address`), at most `left`: the
            // loop ends, and `end` is at most `buf.len()`.
            let chunk = Self::to_page_end(address).min(left);
            let end = done.saturating_add(chunk);
            let pa = match ctx.mechanism {
                TranslationMechanism::Direct => Pa(address),
                TranslationMechanism::Paging { root } => match leaf {
                    Some((va_base, pa_base, mask)) if address & !mask == va_base => {
                        Pa(pa_base | (address & mask))
                    }
                    _ => {
                        let t = self.translate(Va(address), root)?;
                        if t.page_size > Self::PAGE_SIZE && t.page_size.is_power_of_two() {
                            // A power of two above the page size: not zero.
                            let mask = t.page_size.wrapping_sub(1);
                            leaf = Some((address & !mask, t.pa.0 & !mask, mask));
                        }
                        t.pa
                    }
                },
            };
            let dst = buf
                .get_mut(done..end)
                .ok_or(VmiError::InvalidArgument("buffer range"))?;
            self.read_physical_in_page(pa, dst)?;
            done = end;
        }
        Ok(())
    }

    /// The `count` whole pages of `buf` from `done` on, at `va` (a page's start) under
    /// `root`: one range walk without the translation cache
    /// ([`Architecture::translate_pages_planned`]), each run of physically contiguous
    /// frames copied at once. Returns where the pages end in `buf`.
    ///
    /// # Errors
    /// The first failure in address order: a run's copy, or the walk of the page after it.
    fn read_pages(
        &self,
        va: Va,
        root: Pa,
        count: u64,
        buf: &mut [u8],
        done: usize,
    ) -> Result<usize, VmiError> {
        let page = usize::try_from(Self::PAGE_SIZE).unwrap_or(usize::MAX);
        // The run being gathered: its first frame, where it starts in `buf`, its length.
        let mut run: Option<(Pa, usize, usize)> = None;
        let mut at = done;
        let mut failed = None;
        let mut each = |t: crate::arch::Translation| {
            let extends = run.is_some_and(|(pa, _, len)| {
                pa.0.checked_add(len as u64) == Some(t.pa.0) && len.checked_add(page).is_some()
            });
            match run.as_mut() {
                Some((_, _, len)) if extends => *len = len.saturating_add(page),
                _ => {
                    if let Some(r) = run.take()
                        && let Err(e) = self.copy_run(r, buf)
                    {
                        failed = Some(e);
                        return false;
                    }
                    run = Some((t.pa, at, page));
                }
            }
            at = at.saturating_add(page);
            true
        };
        let memory = self.driver.physical_memory();
        let walked = if memory.is_none() && self.gfn_cache_enabled.load(Ordering::Relaxed) {
            <D::Architecture as Architecture>::translate_pages_planned(
                &CoreReader(self),
                &self.paging,
                &self.plan,
                va,
                root,
                count,
                &mut each,
            )
        } else {
            <D::Architecture as Architecture>::translate_pages_planned(
                &DirectReader::new(&self.driver, memory),
                &self.paging,
                &self.plan,
                va,
                root,
                count,
                &mut each,
            )
        };
        // The run before a failure comes first in address order.
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some(r) = run {
            self.copy_run(r, buf)?;
        }
        walked?;
        Ok(at)
    }

    /// Copies the run `(pa, start, len)` into `buf[start..start + len]`: from the memory
    /// the driver lends when it holds the whole run (one bounds check), else page by page
    /// through [`VmiCore::read_physical_in_page`] (which names the first byte that fails).
    fn copy_run(
        &self,
        (pa, start, len): (Pa, usize, usize),
        buf: &mut [u8],
    ) -> Result<(), VmiError> {
        let dst = start
            .checked_add(len)
            .and_then(|end| buf.get_mut(start..end))
            .ok_or(VmiError::InvalidArgument("buffer range"))?;
        let page = usize::try_from(Self::PAGE_SIZE).unwrap_or(usize::MAX);
        if !self.page_cache_in_use()
            && let Some(src) = self.driver.physical_memory().and_then(|m| {
                let from = usize::try_from(pa.0).ok()?;
                m.get(from..from.checked_add(len)?)
            })
        {
            // One bounds check for the run, copied a page at a time: as fast as one copy
            // of the whole run (measured, walk_profile bulk), and a copy above a few KiB
            // makes glibc use `rep movsb`, whose every iteration callgrind counts as an
            // instruction, which would hide the rest of any profile.
            for (d, s) in dst.chunks_mut(page).zip(src.chunks(page)) {
                d.copy_from_slice(s);
            }
            return Ok(());
        }
        let mut frame = pa;
        for piece in dst.chunks_mut(page) {
            self.read_physical_in_page(frame, piece)?;
            frame = Pa(frame.0.wrapping_add(Self::PAGE_SIZE));
        }
        Ok(())
    }

    /// Writes `data` to guest memory at `ctx`, across as many pages as it spans. The
    /// written frames leave the page cache and the translation cache is flushed (a write
    /// may change a page table), so no later read sees stale data.
    ///
    /// # Errors
    /// The first failure; bytes before it have been written.
    pub fn write(&self, ctx: AccessContext, data: &[u8]) -> Result<(), VmiError> {
        let mut done = 0usize;
        while let Some(left) = data.len().checked_sub(done).filter(|&left| left > 0) {
            let address = ctx.address.wrapping_add(done as u64);
            // As in `read`: 1..=left bytes, so the loop ends and `end <= data.len()`.
            let chunk = Self::to_page_end(address).min(left);
            let end = done.saturating_add(chunk);
            let pa = self.translate_access_context(ctx.offset(done as u64))?;
            let src = data
                .get(done..end)
                .ok_or(VmiError::InvalidArgument("buffer range"))?;
            let result = self.driver.write_physical(pa, src);
            self.forget_frame(Gfn(pa.0 >> Self::PAGE_SHIFT));
            result?;
            done = end;
        }
        Ok(())
    }

    /// The bytes from `address` to the end of its page: 1 to the page size.
    #[inline]
    pub(super) fn to_page_end(address: u64) -> usize {
        let offset = <D::Architecture as Architecture>::page_offset(address);
        #[expect(
            clippy::arithmetic_side_effects,
            reason = "the offset in a page is below the page size"
        )]
        let left = Self::PAGE_SIZE - offset;
        usize::try_from(left).unwrap_or(usize::MAX)
    }

    /// Reads a `u8`.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_u8(&self, ctx: AccessContext) -> Result<u8, VmiError> {
        let mut b = [0u8; 1];
        self.read(ctx, &mut b)?;
        Ok(b[0])
    }

    /// Reads a little-endian `u16`.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_u16(&self, ctx: AccessContext) -> Result<u16, VmiError> {
        let mut b = [0u8; 2];
        self.read(ctx, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Reads a little-endian `u32`.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_u32(&self, ctx: AccessContext) -> Result<u32, VmiError> {
        let mut b = [0u8; 4];
        self.read(ctx, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a little-endian `u64`.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    #[inline]
    pub fn read_u64(&self, ctx: AccessContext) -> Result<u64, VmiError> {
        let mut b = [0u8; 8];
        self.read(ctx, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a `u8`.
    ///
    /// # Errors
    /// As [`VmiCore::write`].
    pub fn write_u8(&self, ctx: AccessContext, value: u8) -> Result<(), VmiError> {
        self.write(ctx, &[value])
    }

    /// Writes a little-endian `u16`.
    ///
    /// # Errors
    /// As [`VmiCore::write`].
    pub fn write_u16(&self, ctx: AccessContext, value: u16) -> Result<(), VmiError> {
        self.write(ctx, &value.to_le_bytes())
    }

    /// Writes a little-endian `u32`.
    ///
    /// # Errors
    /// As [`VmiCore::write`].
    pub fn write_u32(&self, ctx: AccessContext, value: u32) -> Result<(), VmiError> {
        self.write(ctx, &value.to_le_bytes())
    }

    /// Writes a little-endian `u64`.
    ///
    /// # Errors
    /// As [`VmiCore::write`].
    pub fn write_u64(&self, ctx: AccessContext, value: u64) -> Result<(), VmiError> {
        self.write(ctx, &value.to_le_bytes())
    }

    /// Reads an address of `width` bytes (4 or 8), zero-extended.
    ///
    /// # Errors
    /// [`VmiError::InvalidAddressWidth`] for any other width; otherwise as
    /// [`VmiCore::read`].
    pub fn read_address(&self, ctx: AccessContext, width: u8) -> Result<u64, VmiError> {
        match width {
            4 => self.read_u32(ctx).map(u64::from),
            8 => self.read_u64(ctx),
            other => Err(VmiError::InvalidAddressWidth(other)),
        }
    }

    /// Reads a 4-byte address.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_address32(&self, ctx: AccessContext) -> Result<u64, VmiError> {
        self.read_u32(ctx).map(u64::from)
    }

    /// Reads an 8-byte address.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_address64(&self, ctx: AccessContext) -> Result<u64, VmiError> {
        self.read_u64(ctx)
    }

    /// Reads a virtual address of `width` bytes (4 or 8).
    ///
    /// # Errors
    /// As [`VmiCore::read_address`].
    pub fn read_va(&self, ctx: AccessContext, width: u8) -> Result<Va, VmiError> {
        self.read_address(ctx, width).map(Va)
    }

    /// Reads a 4-byte virtual address.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_va32(&self, ctx: AccessContext) -> Result<Va, VmiError> {
        self.read_address32(ctx).map(Va)
    }

    /// Reads an 8-byte virtual address.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_va64(&self, ctx: AccessContext) -> Result<Va, VmiError> {
        self.read_address64(ctx).map(Va)
    }

    /// Reads a plain-old-data structure.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_struct<T: FromBytes + IntoBytes>(&self, ctx: AccessContext) -> Result<T, VmiError> {
        let mut value = T::new_zeroed();
        self.read(ctx, value.as_mut_bytes())?;
        Ok(value)
    }

    /// Writes a plain-old-data structure.
    ///
    /// # Errors
    /// As [`VmiCore::write`].
    pub fn write_struct<T: IntoBytes + Immutable>(
        &self,
        ctx: AccessContext,
        value: &T,
    ) -> Result<(), VmiError> {
        self.write(ctx, value.as_bytes())
    }
}
