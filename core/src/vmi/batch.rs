//! Batches: many translations or reads in one call, their page walks interleaved so that
//! their memory accesses overlap, with no allocation and the results in input order.

use core::sync::atomic::Ordering;

use super::VmiCore;
use super::translate::{CoreReader, DirectReader};
use super::translation_cache::Looked;
use crate::access::AccessContext;
use crate::addr::{Pa, Va};
use crate::arch::{Architecture, PhysRead, Translation};
use crate::driver::VmiDriver;
use crate::error::VmiError;

/// Addresses a batch translates at a time: each is looked up in the translation cache,
/// then the misses are walked together.
const CHUNK: usize = 16;

/// Addresses [`VmiCore::read_u64_many`] translates before it reads any of them: the reads
/// of a group follow one another in a short loop, so that their misses overlap.
const GROUP: usize = 64;

impl<D: VmiDriver, const TLB: usize, const PAGES: usize> VmiCore<D, TLB, PAGES> {
    /// Translates each of `vas` under `root` into the slot of `out` at the same index, as
    /// [`VmiCore::translate`] would one after the other (the same results), and returns
    /// how many it translated: the shorter length of the two. Addresses may repeat.
    ///
    /// The addresses are taken sixteen at a time: each is looked up in the translation
    /// cache, and the misses are walked together, one level of every walk before the next
    /// level of any (on AMD64 in 4- and 5-level paging), so that their memory accesses
    /// overlap instead of following one another; their results are then offered to the
    /// cache. Nothing is allocated.
    ///
    /// Each address counts one hit or one miss in [`VmiCore::v2p_cache_metrics`], as one
    /// translation does, exactly for one thread, and the cache steps aside for a thread
    /// whose lookups keep missing in a full cache as it does for one translation (its
    /// addresses are then walked, not looked up nor offered, but for one in 32). The
    /// lookups of a group of sixteen come before its walks: two addresses of one page in
    /// a group both count a miss where two translations one after the other would count
    /// a miss and a hit.
    ///
    /// Each slot gets its own error, as [`VmiCore::translate`]'s.
    pub fn translate_many(
        &self,
        vas: &[Va],
        root: Pa,
        out: &mut [Result<Translation, VmiError>],
    ) -> usize {
        let n = vas.len().min(out.len());
        for (vas, out) in vas.chunks(CHUNK).zip(out.chunks_mut(CHUNK)) {
            self.translate_chunk(vas, root, out, |_| {});
        }
        n
    }

    /// Reads the little-endian `u64` at each of `vas` under `root` into the slot of `out`
    /// at the same index, as [`VmiCore::read_u64`] would one after the other, and returns
    /// how many it read (the shorter length). Nothing is allocated.
    ///
    /// The addresses are taken 64 at a time: they are translated as a
    /// [`VmiCore::translate_many`] batch (hits and misses counted as there), each
    /// translated address given to [`VmiDriver::prefetch_physical`] as soon as it is
    /// known, so that its line loads while the next addresses are walked; then the
    /// group's `u64`s are read one after the other in a short loop, from the memory the
    /// driver lends ([`VmiDriver::physical_memory`]) with one bounds check each when it
    /// does. A `u64` that spans two pages is read as [`VmiCore::read_u64`] reads it, in
    /// its turn. Each slot gets its own error, as [`VmiCore::read_u64`]'s.
    pub fn read_u64_many(&self, vas: &[Va], root: Pa, out: &mut [Result<u64, VmiError>]) -> usize {
        const { assert!(GROUP <= 256, "a slot's index in its group is a byte") };
        let n = vas.len().min(out.len());
        for (vas, out) in vas.chunks(GROUP).zip(out.chunks_mut(GROUP)) {
            // The slots whose translation succeeded and the addresses to read for them.
            let mut at = [0u8; GROUP];
            let mut pas = [Pa(0); GROUP];
            let mut ready = 0usize;
            for (c, (vas, part)) in vas.chunks(CHUNK).zip(out.chunks_mut(CHUNK)).enumerate() {
                // The u64s inside one page go to the batch; one across two pages is read
                // by `read_u64` (two translations, as one call counts them).
                let mut inside = [Va(0); CHUNK];
                let mut index = [0usize; CHUNK];
                let mut count = 0usize;
                for (i, (va, slot)) in vas.iter().zip(part.iter_mut()).enumerate() {
                    if Self::to_page_end(va.0) < 8 {
                        *slot = self.read_u64(AccessContext::paging(*va, root));
                    } else if let (Some(v), Some(x)) = (inside.get_mut(count), index.get_mut(count))
                    {
                        // At most `CHUNK` addresses a chunk: `count` stays in bounds.
                        (*v, *x) = (*va, i);
                        count = count.wrapping_add(1);
                    }
                }
                let inside = inside.get(..count).unwrap_or(&[]);
                let mut translations = [Err(VmiError::NotFound); CHUNK];
                self.translate_chunk(inside, root, &mut translations, |t| {
                    // The line starts loading now; the walks of the next chunk go on
                    // meanwhile.
                    self.driver.prefetch_physical(t.pa);
                });
                for ((x, t), _) in index.iter().zip(&translations).zip(inside) {
                    match t {
                        Ok(t) => {
                            if let (Some(a), Some(p)) = (at.get_mut(ready), pas.get_mut(ready)) {
                                // The index in the group, below `GROUP`: it fits a byte.
                                (*a, *p) = (c.wrapping_mul(CHUNK).wrapping_add(*x) as u8, t.pa);
                                ready = ready.wrapping_add(1);
                            }
                        }
                        Err(e) => {
                            if let Some(slot) = part.get_mut(*x) {
                                *slot = Err(*e);
                            }
                        }
                    }
                }
            }
            // The reads, in a loop of a few instructions each so that many are in flight.
            let at = at.get(..ready).unwrap_or(&[]);
            match self.driver.physical_memory() {
                Some(memory) => {
                    for (x, pa) in at.iter().zip(&pas) {
                        if let Some(slot) = out.get_mut(usize::from(*x)) {
                            *slot = match memory.read_u64_fast(*pa) {
                                Some(value) => Ok(value),
                                None => self.read_u64_physical(*pa),
                            };
                        }
                    }
                }
                None => {
                    for (x, pa) in at.iter().zip(&pas) {
                        if let Some(slot) = out.get_mut(usize::from(*x)) {
                            *slot = self.read_u64_physical(*pa);
                        }
                    }
                }
            }
        }
        n
    }

    /// The `u64` at `pa` (inside one page), as [`VmiCore::read_u64`] reads it once
    /// translated.
    #[inline(never)]
    fn read_u64_physical(&self, pa: Pa) -> Result<u64, VmiError> {
        CoreReader(self).read_u64(pa)
    }

    /// [`VmiCore::translate_many`] for at most [`CHUNK`] addresses: the lookups, then the
    /// walks of the misses together, then the offers.
    #[inline(always)]
    fn translate_chunk(
        &self,
        vas: &[Va],
        root: Pa,
        out: &mut [Result<Translation, VmiError>],
        mut found: impl FnMut(&Translation),
    ) {
        let cached = self.v2p_cache_enabled.load(Ordering::Relaxed);
        let key = self.root_table(root);
        // Read before the walks, as for one translation: a flush during them outdates
        // what they find.
        let generation = self.v2p_cache.generation();
        let mut pending = [Va(0); CHUNK];
        let mut at = [0usize; CHUNK];
        // Whether each walk is offered to the cache: not when the thread bypasses it.
        let mut offer = [false; CHUNK];
        let mut misses = 0usize;
        // The thread's counters, chosen once for the chunk (one stripe for its counts).
        let local = self.v2p_cache.local();
        for (i, (va, slot)) in vas.iter().zip(out.iter_mut()).enumerate() {
            let offered = if cached {
                match self
                    .v2p_cache
                    .look(&local, key, *va, generation, || self.v2p_bypass())
                {
                    Looked::Hit(t) => {
                        found(&t);
                        *slot = Ok(t);
                        continue;
                    }
                    Looked::Miss => true,
                    Looked::Bypassed => false,
                }
            } else {
                false
            };
            // At most `CHUNK` addresses a chunk: `misses` stays in bounds.
            if let (Some(p), Some(a), Some(o)) = (
                pending.get_mut(misses),
                at.get_mut(misses),
                offer.get_mut(misses),
            ) {
                (*p, *a, *o) = (*va, i, offered);
                misses = misses.wrapping_add(1);
            }
        }
        let n = vas.len().min(out.len());
        if misses == n {
            // Nothing was found (no cache, a bypass, a cold cache): the walks go straight
            // to `out`, in order.
            let (vas, out) = (
                vas.get(..n).unwrap_or(&[]),
                out.get_mut(..n).unwrap_or(&mut []),
            );
            self.walk_many(vas, root, out);
            for ((va, offered), result) in vas.iter().zip(offer).zip(out.iter()) {
                if let Ok(t) = result {
                    found(t);
                    if offered {
                        self.v2p_cache.insert_walked(key, *va, t, generation);
                    }
                }
            }
            return;
        }
        let mut walked = [Err(VmiError::NotFound); CHUNK];
        let (pending, walked) = (
            pending.get(..misses).unwrap_or(&[]),
            walked.get_mut(..misses).unwrap_or(&mut []),
        );
        self.walk_many(pending, root, walked);
        for (((va, i), offered), result) in pending.iter().zip(at).zip(offer).zip(walked.iter()) {
            if let Ok(t) = result {
                found(t);
                if offered {
                    self.v2p_cache.insert_walked(key, *va, t, generation);
                }
            }
            if let Some(slot) = out.get_mut(i) {
                *slot = *result;
            }
        }
    }

    /// Walks each of `vas`, bypassing the translation cache, as
    /// [`VmiCore::translate_uncached`] does one.
    fn walk_many(&self, vas: &[Va], root: Pa, out: &mut [Result<Translation, VmiError>]) {
        let memory = self.driver.physical_memory();
        if self.page_cache_in_use_for(memory) {
            <D::Architecture as Architecture>::translate_many_planned(
                &CoreReader(self),
                &self.paging,
                &self.plan,
                vas,
                root,
                out,
            );
        } else {
            <D::Architecture as Architecture>::translate_many_planned(
                &DirectReader::new(&self.driver, memory),
                &self.paging,
                &self.plan,
                vas,
                root,
                out,
            );
        }
    }
}
