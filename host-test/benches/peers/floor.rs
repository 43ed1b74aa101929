//! The floors: what the work costs when written as plainly as possible.
//!
//! The naive walk is four dependent loads from the guest buffer with masks, and a PS test
//! at the two levels where the synthetic guest has large pages. No present bits, no
//! reserved bits, no rights, no caches: it is the cost of the memory accesses a walk cannot
//! avoid, not a correct walker (it trusts the tables it is given).

use crate::Subject;
use crate::guest::KIB4;

const ADDR: u64 = 0x000f_ffff_ffff_f000;
const PS: u64 = 1 << 7;

/// The plain floor over the guest's bytes.
pub(crate) struct Floor {
    pub(crate) memory: &'static [u8],
    pub(crate) root: u64,
}

#[inline(always)]
fn load(memory: &[u8], pa: u64) -> u64 {
    let i = pa as usize;
    u64::from_le_bytes(memory[i..i + 8].try_into().unwrap())
}

impl Floor {
    /// The naive walk: four loads for a 4 KiB page, fewer for a large one.
    #[inline(always)]
    pub(crate) fn walk(&self, va: u64) -> u64 {
        let m = self.memory;
        let e4 = load(m, self.root + ((va >> 39) & 0x1ff) * 8);
        let e3 = load(m, (e4 & ADDR) + ((va >> 30) & 0x1ff) * 8);
        if e3 & PS != 0 {
            return (e3 & ADDR & !((1 << 30) - 1)) | (va & ((1 << 30) - 1));
        }
        let e2 = load(m, (e3 & ADDR) + ((va >> 21) & 0x1ff) * 8);
        if e2 & PS != 0 {
            return (e2 & ADDR & !((1 << 21) - 1)) | (va & ((1 << 21) - 1));
        }
        let e1 = load(m, (e2 & ADDR) + ((va >> 12) & 0x1ff) * 8);
        (e1 & ADDR) | (va & 0xfff)
    }
}

/// The naive 5-level walk: five dependent loads with masks (the 5-level guest has 4 KiB
/// pages only).
#[inline(always)]
pub(crate) fn walk5(memory: &[u8], root: u64, va: u64) -> u64 {
    let e5 = load(memory, root + ((va >> 48) & 0x1ff) * 8);
    let e4 = load(memory, (e5 & ADDR) + ((va >> 39) & 0x1ff) * 8);
    let e3 = load(memory, (e4 & ADDR) + ((va >> 30) & 0x1ff) * 8);
    let e2 = load(memory, (e3 & ADDR) + ((va >> 21) & 0x1ff) * 8);
    let e1 = load(memory, (e2 & ADDR) + ((va >> 12) & 0x1ff) * 8);
    (e1 & ADDR) | (va & (KIB4 - 1))
}

impl Subject for Floor {
    fn name(&self) -> String {
        crate::FLOOR_WALK.into()
    }

    fn flush(&mut self) {}

    #[inline]
    fn translate(&mut self, va: u64) -> Option<u64> {
        Some(self.walk(va))
    }

    #[inline]
    fn read_u64(&mut self, va: u64) -> Option<u64> {
        Some(load(self.memory, self.walk(va)))
    }

    fn read(&mut self, va: u64, buf: &mut [u8]) -> bool {
        let mut done = 0usize;
        while done < buf.len() {
            let at = va + done as u64;
            let n = ((KIB4 - (at & (KIB4 - 1))) as usize).min(buf.len() - done);
            let pa = self.walk(at) as usize;
            buf[done..done + n].copy_from_slice(&self.memory[pa..pa + n]);
            done += n;
        }
        true
    }

    #[inline]
    fn read_string(&mut self, va: u64, limit: usize, buf: &mut [u8]) -> Option<usize> {
        let cap = limit.min(buf.len());
        let mut len = 0usize;
        while len < cap {
            let at = va + len as u64;
            let n = ((KIB4 - (at & (KIB4 - 1))) as usize).min(cap - len);
            let pa = self.walk(at) as usize;
            let src = &self.memory[pa..pa + n];
            let end = src.iter().position(|&b| b == 0);
            let take = end.unwrap_or(n);
            buf[len..len + take].copy_from_slice(&src[..take]);
            len += take;
            if end.is_some() {
                break;
            }
        }
        Some(len)
    }
}

/// The memcpy floor of the bulk read: the same bytes from one contiguous buffer.
pub(crate) fn memcpy(src: &[u8], dst: &mut [u8]) {
    for chunk in src.chunks_exact(dst.len()) {
        dst.copy_from_slice(chunk);
        core::hint::black_box(&mut *dst);
    }
}

/// The floor of the bulk read: the same frames copied in 4 KiB pieces, their addresses
/// known in advance, into a 1 MiB buffer at a time.
pub(crate) fn gather(memory: &[u8], frames: &[usize], dst: &mut [u8]) {
    for chunk in frames.chunks_exact(dst.len() / 4096) {
        for (piece, &pa) in dst.chunks_exact_mut(4096).zip(chunk) {
            piece.copy_from_slice(&memory[pa..pa + 4096]);
        }
        core::hint::black_box(&mut *dst);
    }
}
