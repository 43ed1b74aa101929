//! Batches: many translations or reads in one call, their page walks interleaved so that
//! their memory accesses overlap, with no allocation and the results in input order.

use core::sync::atomic::Ordering;

use super::VmiCore;
use super::translate::{CoreReader, DirectReader};
use crate::access::AccessContext;
use crate::addr::{Pa, Va};
use crate::arch::{Architecture, Translation};
use crate::driver::VmiDriver;
use crate::error::VmiError;

/// Addresses a batch takes at a time: probed in the translation cache, then the misses
/// walked together.
const BATCH: usize = 8;

impl<D: VmiDriver, const TLB: usize, const PAGES: usize> VmiCore<D, TLB, PAGES> {
    /// Translates each of `vas` under `root` into the slot of `out` at the same index, as
    /// [`VmiCore::translate`] would one after the other (the same results), and returns
    /// how many it translated: the shorter length of the two. Addresses may repeat.
    ///
    /// The addresses are taken eight at a time: each is looked up in the translation
    /// cache, and the misses are walked together, one level of every walk before the next
    /// level of any (on AMD64 in 4- and 5-level paging), so that their memory accesses
    /// overlap instead of following one another; their results are then offered to the
    /// cache. Nothing is allocated.
    ///
    /// Each address counts one hit or one miss in [`VmiCore::v2p_cache_metrics`], as one
    /// translation does, exactly for one thread. The lookups of a group of eight come
    /// before its walks: two addresses of one page in a group both count a miss where
    /// two translations one after the other would count a miss and a hit.
    ///
    /// Each slot gets its own error, as [`VmiCore::translate`]'s.
    pub fn translate_many(
        &self,
        vas: &[Va],
        root: Pa,
        out: &mut [Result<Translation, VmiError>],
    ) -> usize {
        let n = vas.len().min(out.len());
        let cached = self.v2p_cache_enabled.load(Ordering::Relaxed);
        let key = self.root_table(root);
        for (vas, out) in vas.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
            // Read before the walks, as for one translation: a flush during them
            // outdates what they find.
            let generation = self.v2p_cache.generation();
            let mut pending = [Va(0); BATCH];
            let mut at = [0usize; BATCH];
            let mut misses = 0usize;
            for (i, (va, slot)) in vas.iter().zip(out.iter_mut()).enumerate() {
                if cached {
                    if let Some(t) = self.v2p_cache.lookup(key, *va, generation) {
                        *slot = Ok(t);
                        continue;
                    }
                    self.v2p_cache.record_miss();
                }
                // At most `BATCH` addresses a chunk: `misses` stays in bounds.
                if let (Some(p), Some(a)) = (pending.get_mut(misses), at.get_mut(misses)) {
                    (*p, *a) = (*va, i);
                    misses = misses.saturating_add(1);
                }
            }
            let mut walked = [Err(VmiError::NotFound); BATCH];
            let (pending, walked) = (
                pending.get(..misses).unwrap_or(&[]),
                walked.get_mut(..misses).unwrap_or(&mut []),
            );
            self.walk_many(pending, root, walked);
            for ((va, i), result) in pending.iter().zip(at).zip(walked.iter()) {
                if cached && let Ok(t) = result {
                    self.v2p_cache.insert_walked(key, *va, t, generation);
                }
                if let Some(slot) = out.get_mut(i) {
                    *slot = *result;
                }
            }
        }
        n
    }

    /// Reads the little-endian `u64` at each of `vas` under `root` into the slot of `out`
    /// at the same index, as [`VmiCore::read_u64`] would one after the other, and returns
    /// how many it read (the shorter length). The translations are a
    /// [`VmiCore::translate_many`] batch; a `u64` that spans two pages is read as
    /// [`VmiCore::read_u64`] reads it. Nothing is allocated.
    pub fn read_u64_many(&self, vas: &[Va], root: Pa, out: &mut [Result<u64, VmiError>]) -> usize {
        let n = vas.len().min(out.len());
        for (vas, out) in vas.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
            // The u64s inside one page go to the batch; one across two pages is read by
            // `read_u64` (two translations, as one call counts them).
            let mut inside = [Va(0); BATCH];
            let mut at = [0usize; BATCH];
            let mut count = 0usize;
            for (i, (va, slot)) in vas.iter().zip(out.iter_mut()).enumerate() {
                if Self::to_page_end(va.0) < 8 {
                    *slot = self.read_u64(AccessContext::paging(*va, root));
                } else if let (Some(v), Some(a)) = (inside.get_mut(count), at.get_mut(count)) {
                    // At most `BATCH` addresses a chunk: `count` stays in bounds.
                    (*v, *a) = (*va, i);
                    count = count.saturating_add(1);
                }
            }
            let inside = inside.get(..count).unwrap_or(&[]);
            let mut translations = [Err(VmiError::NotFound); BATCH];
            self.translate_many(inside, root, &mut translations);
            for ((i, t), _) in at.iter().zip(translations).zip(inside) {
                if let Some(slot) = out.get_mut(*i) {
                    *slot = t.and_then(|t| {
                        let mut raw = [0u8; 8];
                        self.read_physical_in_page(t.pa, &mut raw)?;
                        Ok(u64::from_le_bytes(raw))
                    });
                }
            }
        }
        n
    }

    /// Walks each of `vas`, bypassing the translation cache, as
    /// [`VmiCore::translate_uncached`] does one.
    fn walk_many(&self, vas: &[Va], root: Pa, out: &mut [Result<Translation, VmiError>]) {
        let memory = self.driver.physical_memory();
        if memory.is_none() && self.gfn_cache_enabled.load(Ordering::Relaxed) {
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
