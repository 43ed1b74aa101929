//! Host-physical memory of the simulated machine: one buffer of 4 KiB host frames.
//!
//! Every access goes through relaxed atomic 64-bit loads and stores (sub-word writes are a
//! compare-and-swap on the containing word), because the backend reads and writes the same
//! frames concurrently through raw pointers with relaxed atomics. Nothing here hands out a
//! Rust reference to a frame's bytes.
//!
//! Host-physical addresses start at [`HostMemory::base`], not at zero, so that a test
//! mixing up a guest-physical and a host-physical address fails.

use core::sync::atomic::{AtomicU64, Ordering};

/// The size of a host frame.
pub const FRAME: u64 = 4096;
const WORDS_PER_FRAME: usize = (FRAME / 8) as usize;

/// A buffer of host frames, addressed by host-physical address.
pub struct HostMemory {
    base: u64,
    words: Box<[AtomicU64]>,
}

impl HostMemory {
    /// `frames` zeroed frames at host-physical `base` (4 KiB aligned).
    pub fn new(base: u64, frames: usize) -> Self {
        assert_eq!(base % FRAME, 0, "host memory base must be frame aligned");
        // A zeroed allocation (the allocator hands out untouched zero pages), so that a
        // machine with a 1 GiB guest range costs only the frames a test touches.
        let zeroed: Box<[u64]> = vec![0u64; frames * WORDS_PER_FRAME].into_boxed_slice();
        let len = zeroed.len();
        let ptr = Box::into_raw(zeroed).cast::<AtomicU64>();
        // SAFETY: `AtomicU64` has the same size, alignment and bit validity as `u64` (its
        // documentation guarantees the in-memory representation), so the allocation of
        // `len` u64s is one of `len` AtomicU64s with the same layout, and ownership passes
        // from the one box to the other.
        let words = unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(ptr, len)) };
        Self { base, words }
    }

    /// The host-physical address of the first frame.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The number of frames.
    pub fn frames(&self) -> usize {
        self.words.len() / WORDS_PER_FRAME
    }

    /// The host-physical address just past the last frame.
    pub fn end(&self) -> u64 {
        self.base + self.frames() as u64 * FRAME
    }

    /// Whether `hpa..hpa+len` lies inside the buffer.
    pub fn contains(&self, hpa: u64, len: u64) -> bool {
        hpa >= self.base && hpa.checked_add(len).is_some_and(|end| end <= self.end())
    }

    /// The host-physical address of frame number `index` (0-based in this buffer).
    pub fn frame_hpa(&self, index: usize) -> u64 {
        self.base + index as u64 * FRAME
    }

    fn word(&self, hpa: u64) -> Option<&AtomicU64> {
        let off = hpa.checked_sub(self.base)?;
        self.words.get(usize::try_from(off / 8).ok()?)
    }

    /// The pointer to the byte at `hpa`, or `None` outside the buffer. The memory behind
    /// it must only be accessed with atomic operations (the simulator's own accesses are
    /// relaxed 64-bit atomics).
    pub fn pointer(&self, hpa: u64) -> Option<*mut u8> {
        let word = self.word(hpa & !7)?;
        // The pointer stays inside the word: `hpa & 7` < 8.
        Some(word.as_ptr().cast::<u8>().wrapping_add((hpa & 7) as usize))
    }

    /// The aligned little-endian u64 at `hpa` (8-byte aligned), or `None` outside.
    pub fn load_u64(&self, hpa: u64) -> Option<u64> {
        debug_assert_eq!(hpa % 8, 0);
        Some(self.word(hpa)?.load(Ordering::Relaxed))
    }

    /// Stores the aligned u64 at `hpa`; false outside the buffer.
    pub fn store_u64(&self, hpa: u64, value: u64) -> bool {
        debug_assert_eq!(hpa % 8, 0);
        match self.word(hpa) {
            Some(w) => {
                w.store(value, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Atomically ORs `bits` into the aligned u64 at `hpa` (accessed and dirty flags).
    pub fn fetch_or_u64(&self, hpa: u64, bits: u64) -> Option<u64> {
        Some(self.word(hpa)?.fetch_or(bits, Ordering::Relaxed))
    }

    /// Compare-and-swap of the aligned u64 at `hpa`.
    pub fn compare_exchange_u64(&self, hpa: u64, old: u64, new: u64) -> Option<Result<u64, u64>> {
        Some(
            self.word(hpa)?
                .compare_exchange(old, new, Ordering::Relaxed, Ordering::Relaxed),
        )
    }

    /// The byte at `hpa`.
    pub fn load_u8(&self, hpa: u64) -> Option<u8> {
        let w = self.word(hpa & !7)?.load(Ordering::Relaxed);
        Some((w >> ((hpa & 7) * 8)) as u8)
    }

    /// Stores one byte (a compare-and-swap loop on its word, so concurrent writers of the
    /// neighbouring bytes keep theirs); false outside the buffer.
    pub fn store_u8(&self, hpa: u64, value: u8) -> bool {
        let Some(word) = self.word(hpa & !7) else {
            return false;
        };
        let shift = (hpa & 7) * 8;
        let mask = 0xffu64 << shift;
        let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
            Some((w & !mask) | (u64::from(value) << shift))
        });
        true
    }

    /// Copies `buf.len()` bytes from `hpa` on; false (and `buf` partly filled) if the range
    /// leaves the buffer.
    pub fn read(&self, hpa: u64, buf: &mut [u8]) -> bool {
        for (i, b) in buf.iter_mut().enumerate() {
            match self.load_u8(hpa + i as u64) {
                Some(v) => *b = v,
                None => return false,
            }
        }
        true
    }

    /// Copies `data` to `hpa` on; false if the range leaves the buffer.
    pub fn write(&self, hpa: u64, data: &[u8]) -> bool {
        if !self.contains(hpa, data.len() as u64) {
            return false;
        }
        data.iter()
            .enumerate()
            .all(|(i, &b)| self.store_u8(hpa + i as u64, b))
    }

    /// The 512 entries of the table frame at `hpa` (frame aligned), or `None` outside.
    pub fn frame_words(&self, hpa: u64) -> Option<[u64; 512]> {
        if !hpa.is_multiple_of(FRAME) || !self.contains(hpa, FRAME) {
            return None;
        }
        let mut out = [0u64; 512];
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.load_u64(hpa + i as u64 * 8)?;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_words_agree_and_bounds_hold() {
        let m = HostMemory::new(0x10_0000_0000, 2);
        assert!(m.store_u64(0x10_0000_0008, 0x1122_3344_5566_7788));
        assert_eq!(m.load_u8(0x10_0000_0008), Some(0x88));
        assert_eq!(m.load_u8(0x10_0000_000f), Some(0x11));
        assert!(m.store_u8(0x10_0000_0009, 0xab));
        assert_eq!(m.load_u64(0x10_0000_0008), Some(0x1122_3344_5566_ab88));
        assert_eq!(m.load_u64(0x10_0000_2000), None);
        assert_eq!(m.load_u8(0xfff), None);
        assert!(!m.write(0x10_0000_1ffe, &[1, 2, 3]));
        assert!(m.contains(0x10_0000_1ff8, 8));
        assert!(!m.contains(0x10_0000_1ff8, 9));
    }
}
