//! A one-page read-through buffer over guest-physical memory, for the byte-by-byte
//! parsers (kallsyms names, BTF types) and the backward scans.

use crate::driver::VmiDriver;

use super::LinuxError;
use super::mem::Phys;

/// Caches the 4 KiB frame last read; every access is bounds checked.
pub(crate) struct Cursor<'p, 'a, D: VmiDriver> {
    phys: &'p Phys<'a, D>,
    block: u64,
    valid: bool,
    buf: [u8; 4096],
}

impl<'p, 'a, D: VmiDriver> Cursor<'p, 'a, D> {
    pub(crate) fn new(phys: &'p Phys<'a, D>) -> Self {
        Self {
            phys,
            block: 0,
            valid: false,
            buf: [0; 4096],
        }
    }

    pub(crate) fn byte(&mut self, pa: u64) -> Result<u8, LinuxError> {
        let block = pa & !0xfff;
        if !self.valid || block != self.block {
            self.valid = false;
            self.phys.read(block, &mut self.buf)?;
            self.block = block;
            self.valid = true;
        }
        let off = (pa & 0xfff) as usize;
        self.buf.get(off).copied().ok_or(LinuxError::BufferTooSmall)
    }

    pub(crate) fn bytes(&mut self, pa: u64, out: &mut [u8]) -> Result<(), LinuxError> {
        for (i, b) in out.iter_mut().enumerate() {
            *b = self.byte(pa.wrapping_add(i as u64))?;
        }
        Ok(())
    }

    pub(crate) fn u16(&mut self, pa: u64) -> Result<u16, LinuxError> {
        let mut b = [0u8; 2];
        self.bytes(pa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    pub(crate) fn u32(&mut self, pa: u64) -> Result<u32, LinuxError> {
        let mut b = [0u8; 4];
        self.bytes(pa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub(crate) fn u64(&mut self, pa: u64) -> Result<u64, LinuxError> {
        let mut b = [0u8; 8];
        self.bytes(pa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}
