//! NUL-terminated strings: bytes, UTF-8 and UTF-16LE, into a buffer or (with `alloc`)
//! allocated, never longer than the core's string limit.

use core::sync::atomic::Ordering;

use super::VmiCore;
use crate::access::AccessContext;
use crate::driver::VmiDriver;
use crate::error::VmiError;

impl<D: VmiDriver> VmiCore<D> {
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
        let in_page = (Self::PAGE_SIZE - (address & (Self::PAGE_SIZE - 1))) as usize;
        in_page.min(left).min(step)
    }

    /// Reads a NUL-terminated byte string into `buf`, at most `min(buf.len(), limit)`
    /// bytes; returns the bytes before the NUL (or all that were read if none came).
    /// Pages after the one holding the NUL are never touched.
    ///
    /// # Errors
    /// As [`VmiCore::read`], for a page the string reaches into.
    pub fn read_string_bytes_limited_into<'b>(
        &self,
        ctx: AccessContext,
        limit: usize,
        buf: &'b mut [u8],
    ) -> Result<&'b [u8], VmiError> {
        let cap = buf.len().min(limit);
        let mut len = 0usize;
        let mut step = 64usize;
        while len < cap {
            let address = ctx.address.wrapping_add(len as u64);
            let chunk = Self::string_chunk(address, cap - len, step);
            let dst = buf
                .get_mut(len..len + chunk)
                .ok_or(VmiError::InvalidArgument("buffer range"))?;
            self.read(ctx.offset(len as u64), dst)?;
            if let Some(nul) = dst.iter().position(|&b| b == 0) {
                return buf
                    .get(..len + nul)
                    .ok_or(VmiError::InvalidArgument("buffer range"));
            }
            len += chunk;
            step = step.saturating_mul(2);
        }
        buf.get(..len)
            .ok_or(VmiError::InvalidArgument("buffer range"))
    }

    /// [`VmiCore::read_string_bytes_limited_into`] with the core's string limit.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
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
    /// [`VmiCore::read`].
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

    /// Reads a NUL-terminated UTF-16LE string into `buf` as code units, at most
    /// `min(buf.len(), limit / 2)` units; returns the units before the NUL unit. The string
    /// may start at an odd address and cross pages in the middle of a unit.
    ///
    /// # Errors
    /// As [`VmiCore::read`], for a page the string reaches into.
    pub fn read_wstring_bytes_limited_into<'b>(
        &self,
        ctx: AccessContext,
        limit: usize,
        buf: &'b mut [u16],
    ) -> Result<&'b [u16], VmiError> {
        let cap = buf.len().min(limit / 2);
        let mut units = 0usize;
        let mut step = 64usize;
        let mut raw = [0u8; 256];
        while units < cap {
            let address = ctx.address.wrapping_add((units as u64) * 2);
            let in_page = (Self::PAGE_SIZE - (address & (Self::PAGE_SIZE - 1))) as usize;
            // Round up to whole units: a unit split by the page boundary needs its second
            // byte from the next page anyway.
            let bytes = ((in_page + 1) & !1)
                .min((cap - units) * 2)
                .min(step)
                .min(raw.len());
            let chunk = raw
                .get_mut(..bytes)
                .ok_or(VmiError::InvalidArgument("chunk"))?;
            self.read(ctx.offset((units as u64) * 2), chunk)?;
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
                units += 1;
            }
            step = step.saturating_mul(2);
        }
        buf.get(..units)
            .ok_or(VmiError::InvalidArgument("buffer range"))
    }

    /// [`VmiCore::read_wstring_bytes_limited_into`] with the core's string limit.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_wstring_bytes_into<'b>(
        &self,
        ctx: AccessContext,
        buf: &'b mut [u16],
    ) -> Result<&'b [u16], VmiError> {
        self.read_wstring_bytes_limited_into(ctx, self.read_string_length_limit(), buf)
    }

    #[cfg(feature = "alloc")]
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
        while out.len() < limit {
            let len = out.len();
            let address = ctx.address.wrapping_add(len as u64);
            let chunk = Self::string_chunk(address, limit - len, step);
            out.resize(len + chunk, 0);
            let dst = out
                .get_mut(len..)
                .ok_or(VmiError::InvalidArgument("buffer range"))?;
            self.read(ctx.offset(len as u64), dst)?;
            if let Some(nul) = dst.iter().position(|&b| b == 0) {
                out.truncate(len + nul);
                return Ok(out);
            }
            step = step.saturating_mul(2);
        }
        Ok(out)
    }

    #[cfg(feature = "alloc")]
    /// A NUL-terminated byte string, capped by the core's limit.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_string_bytes(&self, ctx: AccessContext) -> Result<alloc::vec::Vec<u8>, VmiError> {
        self.read_string_bytes_limited(ctx, self.read_string_length_limit())
    }

    #[cfg(feature = "alloc")]
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
    /// A NUL-terminated string as lossy UTF-8, capped by the core's limit.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_string(&self, ctx: AccessContext) -> Result<alloc::string::String, VmiError> {
        self.read_string_limited(ctx, self.read_string_length_limit())
    }

    #[cfg(feature = "alloc")]
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
            let got =
                self.read_wstring_bytes_limited_into(ctx.offset(done as u64 * 2), want * 2, dst)?;
            let n = got.len();
            out.extend_from_slice(got);
            if n < want {
                return Ok(out);
            }
        }
    }

    #[cfg(feature = "alloc")]
    /// A NUL-terminated UTF-16LE string as code units, capped by the core's limit.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_wstring_bytes(&self, ctx: AccessContext) -> Result<alloc::vec::Vec<u16>, VmiError> {
        self.read_wstring_bytes_limited(ctx, self.read_string_length_limit())
    }

    #[cfg(feature = "alloc")]
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
    /// A NUL-terminated UTF-16LE string as lossy text, capped by the core's limit.
    ///
    /// # Errors
    /// As [`VmiCore::read`].
    pub fn read_wstring(&self, ctx: AccessContext) -> Result<alloc::string::String, VmiError> {
        self.read_wstring_limited(ctx, self.read_string_length_limit())
    }
}
