//! NUL-terminated strings: bytes, UTF-8 and UTF-16LE, into a buffer or (with `alloc`)
//! allocated, never longer than the core's string limit.

use core::sync::atomic::Ordering;

use super::VmiCore;
use crate::access::AccessContext;
use crate::driver::VmiDriver;
use crate::error::VmiError;

impl<D: VmiDriver, const TLB: usize, const PAGES: usize> VmiCore<D, TLB, PAGES> {
    /// Sets the default cap on string reads, in bytes.
    pub fn with_read_string_length_limit(self, limit: usize) -> Self {
        self.set_read_string_length_limit(limit);
        self
    }

    /// The default cap on string reads, in bytes.
    pub fn read_string_length_limit(&self) -> usize {
        self.string_limit.load(Ordering::Relaxed)
    }

    /// Sets the default cap on string reads, in bytes.
    pub fn set_read_string_length_limit(&self, limit: usize) {
        self.string_limit.store(limit, Ordering::Relaxed);
    }

    /// The length of the next string chunk at `address`: never past the page, never past
    /// `left`, and growing with `step` so short strings cost a short copy.
    #[inline]
    fn string_chunk(address: u64, left: usize, step: usize) -> usize {
        Self::to_page_end(address).min(left).min(step)
    }

    /// Reads a NUL-terminated byte string into `buf`; returns the bytes before the NUL.
    /// Pages after the one holding the NUL are never touched.
    ///
    /// At most `limit` bytes are read: a string longer than `limit` comes back cut to its
    /// first `limit` bytes, as from the allocating reads (the limit is the caller's cap,
    /// and a result of exactly `limit` bytes says it may have been reached). A string
    /// longer than `buf`, when `buf` is shorter than `limit`, is an error
    /// ([`VmiError::BufferTooSmall`]), so that a short string and a cut one cannot be
    /// confused: to accept a cut string, pass a `limit` no greater than `buf.len()`.
    /// When the string fills `buf` exactly, the byte after it is read to see whether it
    /// is the NUL.
    ///
    /// # Errors
    /// [`VmiError::BufferTooSmall`] as above; otherwise as [`VmiCore::read`], for a page
    /// the string reaches into.
    pub fn read_string_bytes_limited_into<'b>(
        &self,
        ctx: AccessContext,
        limit: usize,
        buf: &'b mut [u8],
    ) -> Result<&'b [u8], VmiError> {
        let cap = buf.len().min(limit);
        let mut len = 0usize;
        let mut step = 64usize;
        while let Some(left) = cap.checked_sub(len).filter(|&left| left > 0) {
            let address = ctx.address.wrapping_add(len as u64);
            let chunk = Self::string_chunk(address, left, step);
            // `chunk <= left`: the end is at most `cap`.
            let end = len.saturating_add(chunk);
            let dst = buf
                .get_mut(len..end)
                .ok_or(VmiError::InvalidArgument("buffer range"))?;
            self.read(ctx.offset(len as u64), dst)?;
            if let Some(nul) = dst.iter().position(|&b| b == 0) {
                return buf
                    .get(..len.saturating_add(nul))
                    .ok_or(VmiError::InvalidArgument("buffer range"));
            }
            len = end;
            step = step.saturating_mul(2);
        }
        if cap < limit {
            // The buffer, not the limit, stopped the read: the string was cut unless its
            // NUL comes next.
            let mut next = [0u8; 1];
            self.read(ctx.offset(len as u64), &mut next)?;
            if next != [0] {
                return Err(VmiError::BufferTooSmall);
            }
        }
        buf.get(..len)
            .ok_or(VmiError::InvalidArgument("buffer range"))
    }

    /// [`VmiCore::read_string_bytes_limited_into`] with the core's string limit.
    ///
    /// # Errors
    /// [`VmiError::BufferTooSmall`] for a string longer than `buf` (when `buf` is shorter
    /// than the limit); otherwise as [`VmiCore::read`].
    pub fn read_string_bytes_into<'b>(
        &self,
        ctx: AccessContext,
        buf: &'b mut [u8],
    ) -> Result<&'b [u8], VmiError> {
        self.read_string_bytes_limited_into(ctx, self.read_string_length_limit(), buf)
    }

    /// A NUL-terminated UTF-8 string into `buf`, with the core's limit.
    ///
    /// # Errors
    /// [`VmiError::InvalidUtf8`] if the bytes are not UTF-8; otherwise as
    /// [`VmiCore::read_string_bytes_into`].
    pub fn read_string_into<'b>(
        &self,
        ctx: AccessContext,
        buf: &'b mut [u8],
    ) -> Result<&'b str, VmiError> {
        let bytes = self.read_string_bytes_into(ctx, buf)?;
        core::str::from_utf8(bytes).map_err(|e| VmiError::InvalidUtf8 {
            valid_up_to: e.valid_up_to(),
        })
    }

    /// Reads a NUL-terminated UTF-16LE string into `buf` as code units; returns the units
    /// before the NUL unit. The string may start at an odd address and cross pages in the
    /// middle of a unit; pages after the one holding the NUL are never touched (a NUL
    /// unit that ends a page's last whole unit needs nothing of the next page).
    ///
    /// At most `limit / 2` units are read, and a longer string comes back cut to them;
    /// a string longer than `buf`, when `buf` holds fewer than `limit / 2` units, is
    /// [`VmiError::BufferTooSmall`], as for [`VmiCore::read_string_bytes_limited_into`].
    ///
    /// # Errors
    /// [`VmiError::BufferTooSmall`] as above; otherwise as [`VmiCore::read`], for a page
    /// the string reaches into.
    pub fn read_wstring_bytes_limited_into<'b>(
        &self,
        ctx: AccessContext,
        limit: usize,
        buf: &'b mut [u16],
    ) -> Result<&'b [u16], VmiError> {
        let max_units = limit / 2;
        let cap = buf.len().min(max_units);
        let mut units = 0usize;
        let mut step = 64usize;
        let mut raw = [0u8; 256];
        while let Some(left) = cap.checked_sub(units).filter(|&left| left > 0) {
            // A slice of `u16` has fewer than 2^63 units: its byte offset fits.
            let offset = (units as u64).wrapping_mul(2);
            let in_page = Self::to_page_end(ctx.address.wrapping_add(offset));
            // Whole units of this page only: a unit the page boundary splits (one byte
            // left) is the one read that needs the next page.
            let reach = match in_page & !1 {
                0 => 2,
                whole => whole,
            };
            let bytes = reach.min(left.saturating_mul(2)).min(step).min(raw.len());
            let chunk = raw
                .get_mut(..bytes)
                .ok_or(VmiError::InvalidArgument("chunk"))?;
            self.read(ctx.offset(offset), chunk)?;
            for pair in chunk.chunks_exact(2) {
                let [lo, hi] = *pair else { break };
                let unit = u16::from_le_bytes([lo, hi]);
                if unit == 0 {
                    return buf
                        .get(..units)
                        .ok_or(VmiError::InvalidArgument("buffer range"));
                }
                if let Some(slot) = buf.get_mut(units) {
                    *slot = unit;
                }
                units = units.saturating_add(1);
            }
            step = step.saturating_mul(2);
        }
        if cap < max_units {
            // The buffer, not the limit, stopped the read: the string was cut unless its
            // NUL unit comes next.
            let mut next = [0u8; 2];
            self.read(ctx.offset((units as u64).wrapping_mul(2)), &mut next)?;
            if next != [0, 0] {
                return Err(VmiError::BufferTooSmall);
            }
        }
        buf.get(..units)
            .ok_or(VmiError::InvalidArgument("buffer range"))
    }

    /// [`VmiCore::read_wstring_bytes_limited_into`] with the core's string limit.
    ///
    /// # Errors
    /// [`VmiError::BufferTooSmall`] for a string longer than `buf` (when `buf` holds
    /// fewer units than half the limit); otherwise as [`VmiCore::read`].
    pub fn read_wstring_bytes_into<'b>(
        &self,
        ctx: AccessContext,
        buf: &'b mut [u16],
    ) -> Result<&'b [u16], VmiError> {
        self.read_wstring_bytes_limited_into(ctx, self.read_string_length_limit(), buf)
    }

    #[cfg(feature = "alloc")]
    #[cfg_attr(docsrs, doc(cfg(feature = "alloc")))]
    /// A NUL-terminated byte string, at most `limit` bytes (without the NUL). Allocates at
    /// most `limit` bytes, growing as the string does.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_string_bytes_limited(
        &self,
        ctx: AccessContext,
        limit: usize,
    ) -> Result<alloc::vec::Vec<u8>, VmiError> {
        let mut out = alloc::vec::Vec::new();
        let mut step = 64usize;
        while let Some(left) = limit.checked_sub(out.len()).filter(|&left| left > 0) {
            let len = out.len();
            let address = ctx.address.wrapping_add(len as u64);
            // At most `left`: the vector never grows past `limit`.
            let chunk = Self::string_chunk(address, left, step);
            out.resize(len.saturating_add(chunk), 0);
            let dst = out
                .get_mut(len..)
                .ok_or(VmiError::InvalidArgument("buffer range"))?;
            self.read(ctx.offset(len as u64), dst)?;
            if let Some(nul) = dst.iter().position(|&b| b == 0) {
                out.truncate(len.saturating_add(nul));
                return Ok(out);
            }
            step = step.saturating_mul(2);
        }
        Ok(out)
    }

    #[cfg(feature = "alloc")]
    #[cfg_attr(docsrs, doc(cfg(feature = "alloc")))]
    /// A NUL-terminated byte string, capped by the core's limit.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_string_bytes(&self, ctx: AccessContext) -> Result<alloc::vec::Vec<u8>, VmiError> {
        self.read_string_bytes_limited(ctx, self.read_string_length_limit())
    }

    #[cfg(feature = "alloc")]
    #[cfg_attr(docsrs, doc(cfg(feature = "alloc")))]
    /// A NUL-terminated string as lossy UTF-8, at most `limit` bytes.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_string_limited(
        &self,
        ctx: AccessContext,
        limit: usize,
    ) -> Result<alloc::string::String, VmiError> {
        let bytes = self.read_string_bytes_limited(ctx, limit)?;
        Ok(match alloc::string::String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => alloc::string::String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    #[cfg(feature = "alloc")]
    #[cfg_attr(docsrs, doc(cfg(feature = "alloc")))]
    /// A NUL-terminated string as lossy UTF-8, capped by the core's limit.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_string(&self, ctx: AccessContext) -> Result<alloc::string::String, VmiError> {
        self.read_string_limited(ctx, self.read_string_length_limit())
    }

    #[cfg(feature = "alloc")]
    #[cfg_attr(docsrs, doc(cfg(feature = "alloc")))]
    /// A NUL-terminated UTF-16LE string as code units, at most `limit` bytes.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_wstring_bytes_limited(
        &self,
        ctx: AccessContext,
        limit: usize,
    ) -> Result<alloc::vec::Vec<u16>, VmiError> {
        let mut out = alloc::vec::Vec::new();
        let mut block = [0u16; 512];
        loop {
            let done = out.len();
            let want = (limit / 2).saturating_sub(done).min(block.len());
            if want == 0 {
                return Ok(out);
            }
            let dst = block
                .get_mut(..want)
                .ok_or(VmiError::InvalidArgument("block"))?;
            // `done` counts units of a vector, `want` at most 512: both doubled fit.
            let offset = (done as u64).wrapping_mul(2);
            let got = self.read_wstring_bytes_limited_into(
                ctx.offset(offset),
                want.saturating_mul(2),
                dst,
            )?;
            let n = got.len();
            out.extend_from_slice(got);
            if n < want {
                return Ok(out);
            }
        }
    }

    #[cfg(feature = "alloc")]
    #[cfg_attr(docsrs, doc(cfg(feature = "alloc")))]
    /// A NUL-terminated UTF-16LE string as code units, capped by the core's limit.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_wstring_bytes(&self, ctx: AccessContext) -> Result<alloc::vec::Vec<u16>, VmiError> {
        self.read_wstring_bytes_limited(ctx, self.read_string_length_limit())
    }

    #[cfg(feature = "alloc")]
    #[cfg_attr(docsrs, doc(cfg(feature = "alloc")))]
    /// A NUL-terminated UTF-16LE string as lossy text, at most `limit` bytes.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_wstring_limited(
        &self,
        ctx: AccessContext,
        limit: usize,
    ) -> Result<alloc::string::String, VmiError> {
        let units = self.read_wstring_bytes_limited(ctx, limit)?;
        Ok(alloc::string::String::from_utf16_lossy(&units))
    }

    #[cfg(feature = "alloc")]
    #[cfg_attr(docsrs, doc(cfg(feature = "alloc")))]
    /// A NUL-terminated UTF-16LE string as lossy text, capped by the core's limit.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_wstring(&self, ctx: AccessContext) -> Result<alloc::string::String, VmiError> {
        self.read_wstring_limited(ctx, self.read_string_length_limit())
    }
}
