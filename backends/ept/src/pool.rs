//! The frame pool: the fixed set of 4 KiB host frames the hypervisor handed over, with
//! a free stack (O(1) allocate and free) and a usage tag per frame.
//!
//! A frame is in exactly one state: free (on the stack), a table of some view's
//! hierarchy, a shadow frame (`allocate_gfn`), or in limbo: unlinked from every table but
//! not yet free, because a CPU may still cache a mapping through it until the shootdown
//! that follows. Frames leave limbo only after that shootdown ([`Pool::release`]).

use crate::error::EptError;
use crate::hostmem::FRAME;
use crate::platform::Hpa;

/// [`FRAME`] as an address offset.
const FRAME_BYTES: u64 = FRAME as u64;

/// What a pool frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Usage {
    /// On the free stack.
    Free = 0,
    /// A table of a view's hierarchy.
    Table = 1,
    /// A shadow frame mapped into guest-physical memory.
    Shadow = 2,
    /// Unlinked, waiting for a shootdown before it is free.
    Limbo = 3,
}

/// The pool's bookkeeping for at most `FRAMES` frames: 5 bytes a frame.
pub(crate) struct Pool<const FRAMES: usize> {
    base: u64,
    /// `base` plus `count` frames (checked in [`Pool::new`]: it does not wrap).
    end: u64,
    count: usize,
    free: [u32; FRAMES],
    top: usize,
    usage: [Usage; FRAMES],
}

impl<const FRAMES: usize> Pool<FRAMES> {
    /// A pool of `count` frames from `base`, all free.
    ///
    /// # Errors
    /// [`EptError::Misaligned`] for a base not 4 KiB aligned; [`EptError::CapacityExceeded`]
    /// for more than `FRAMES` frames (or more than `u32::MAX`); [`EptError::Overlap`] if
    /// the range wraps around the address space.
    pub(crate) fn new(base: Hpa, count: usize) -> Result<Self, EptError> {
        if base.offset() != 0 {
            return Err(EptError::Misaligned(base));
        }
        if count > FRAMES || u32::try_from(count).is_err() {
            return Err(EptError::CapacityExceeded);
        }
        let end = (count as u64)
            .checked_mul(FRAME_BYTES)
            .and_then(|len| base.0.checked_add(len))
            .ok_or(EptError::Overlap)?;
        let mut free = [0u32; FRAMES];
        // Frame 0 on top, so allocations go up from the base (deterministic for tests).
        for (slot, index) in free.iter_mut().zip((0..count).rev()) {
            *slot = index as u32;
        }
        Ok(Self {
            base: base.0,
            end,
            count,
            free,
            top: count,
            usage: [Usage::Free; FRAMES],
        })
    }

    /// The address range `[start, end)` of the pool.
    pub(crate) fn range(&self) -> (u64, u64) {
        (self.base, self.end)
    }

    /// The free frames.
    pub(crate) fn available(&self) -> usize {
        self.top
    }

    /// The frame index of `hpa`, when it lies in the pool.
    pub(crate) fn index(&self, hpa: Hpa) -> Option<usize> {
        if hpa.0 >= self.end {
            return None;
        }
        let offset = hpa.0.checked_sub(self.base)?;
        Some((offset / FRAME_BYTES) as usize)
    }

    /// What the frame at `hpa` holds, when it lies in the pool.
    pub(crate) fn usage(&self, hpa: Hpa) -> Option<Usage> {
        self.index(hpa).and_then(|i| self.usage.get(i).copied())
    }

    /// Takes a free frame for `usage` (O(1)); `None` when the pool is empty.
    pub(crate) fn allocate(&mut self, usage: Usage) -> Option<Hpa> {
        let top = self.top.checked_sub(1)?;
        let index = *self.free.get(top)? as usize;
        // `index < count`, so the frame lies below `end` (checked in `new`): neither
        // operation wraps.
        let hpa = (index as u64)
            .checked_mul(FRAME_BYTES)
            .and_then(|offset| self.base.checked_add(offset))?;
        let tag = self.usage.get_mut(index)?;
        *tag = usage;
        self.top = top;
        Some(Hpa(hpa))
    }

    /// Moves a table or shadow frame to limbo (it stays unusable until released).
    pub(crate) fn retire(&mut self, hpa: Hpa) {
        if let Some(tag) = self.index(hpa).and_then(|i| self.usage.get_mut(i)) {
            *tag = Usage::Limbo;
        }
    }

    /// Frees a frame (from any state but free) after the shootdown that follows its
    /// retirement (O(1)). A frame outside the pool, or already free, is ignored.
    pub(crate) fn release(&mut self, hpa: Hpa) {
        let Some(index) = self.index(hpa) else {
            return;
        };
        let Some(tag) = self.usage.get_mut(index) else {
            return;
        };
        if *tag == Usage::Free {
            return;
        }
        if let Some(slot) = self.free.get_mut(self.top) {
            *tag = Usage::Free;
            *slot = index as u32;
            // `free.get_mut(top)` succeeded: `top < FRAMES`, so this never saturates.
            self.top = self.top.saturating_add(1);
        }
    }

    /// Counts the frames in each state: (free, table, shadow, limbo).
    pub(crate) fn census(&self) -> (usize, usize, usize, usize) {
        // At most `count` frames in all: the counts never saturate.
        let mut c = (0usize, 0usize, 0usize, 0usize);
        for u in self.usage.iter().take(self.count) {
            let n = match u {
                Usage::Free => &mut c.0,
                Usage::Table => &mut c.1,
                Usage::Shadow => &mut c.2,
                Usage::Limbo => &mut c.3,
            };
            *n = n.saturating_add(1);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_every_frame_once_then_runs_dry_and_frees_back() {
        let mut pool = Pool::<8>::new(Hpa(0x10_0000), 3).unwrap();
        assert_eq!(pool.available(), 3);
        let a = pool.allocate(Usage::Table).unwrap();
        let b = pool.allocate(Usage::Shadow).unwrap();
        let c = pool.allocate(Usage::Table).unwrap();
        assert_eq!((a, b, c), (Hpa(0x10_0000), Hpa(0x10_1000), Hpa(0x10_2000)));
        assert_eq!(pool.allocate(Usage::Table), None);
        assert_eq!(pool.usage(b), Some(Usage::Shadow));
        assert_eq!(pool.census(), (0, 2, 1, 0));
        pool.retire(b);
        assert_eq!(pool.census(), (0, 2, 0, 1));
        pool.release(b);
        pool.release(b); // a double free is ignored
        pool.release(Hpa(0x20_0000)); // outside: ignored
        assert_eq!(pool.available(), 1);
        assert_eq!(pool.allocate(Usage::Table), Some(b));
        assert_eq!(pool.usage(Hpa(0x10_3000)), None);
    }

    #[test]
    fn refuses_bad_pools() {
        assert_eq!(
            Pool::<8>::new(Hpa(0x1234), 1).err(),
            Some(EptError::Misaligned(Hpa(0x1234)))
        );
        assert_eq!(
            Pool::<2>::new(Hpa(0x1000), 3).err(),
            Some(EptError::CapacityExceeded)
        );
        assert_eq!(
            Pool::<2>::new(Hpa(!0xfff), 2).err(),
            Some(EptError::Overlap)
        );
    }
}
