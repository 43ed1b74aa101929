//! The one module that touches host memory, and the only one allowed `unsafe`.
//!
//! Everything the backend reads or writes in host memory (EPT tables, guest frames,
//! shadow frames) goes through here, by raw pointer from [`Platform::host_frame`].
//!
//! # Rules
//! - No `&[u8]`/`&mut [u8]` (or any reference) is ever created over host memory: the
//!   guest (and, in a simulator, other threads) may change it at any moment, and a Rust
//!   reference would promise it does not (vm-memory's rule, its `volatile_memory.rs`).
//!   Bytes are copied in and out one atomic access at a time.
//! - Every access is an atomic on an aligned 8-byte word (`AtomicU64::from_ptr`). Each
//!   EPT entry is one such word, loaded with acquire and stored with release ordering, so
//!   a CPU's page walker never sees a torn entry and a new table is complete before the
//!   store that links it (for the compiler as for the CPU: on x86 both are plain `mov`s).
//!   Guest bytes are copied with relaxed word loads; the unaligned edges of a write are
//!   merged into their word with a compare-exchange that keeps its other bytes.
//! - One access size only. Rust's memory model gives no meaning to concurrent atomic
//!   accesses of different sizes to the same bytes, and Miri rejects them (its
//!   weak-memory store buffers cannot hold a byte store over a word store), so
//!   `AtomicU8` edges would not be Miri-clean. With one size, concurrent accesses by
//!   other atomics or by hardware are well-defined.
//! - Every offset is checked against the 4 KiB frame before a pointer is formed; an
//!   offset outside the frame is an error, never an access.
//!
//! The soundness of each block rests on the [`Platform`] safety contract: the pointer
//! names 4096 bytes, 8-aligned, valid for reads and writes for the rest of the program,
//! and accessed by nothing else but atomically or by hardware.

#![allow(unsafe_code)]

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::entry::EptEntry;
use crate::error::EptError;
use crate::platform::{Hpa, Platform};

/// The size of a frame.
pub(crate) const FRAME: usize = 4096;

/// A pointer to one 4 KiB host frame, from [`Platform::host_frame`]: valid, aligned to
/// 8, for the rest of the program (the platform's contract). The only way to build one is
/// [`FramePtr::of`], so every `FramePtr` carries that promise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FramePtr(NonNull<u8>);

// SAFETY: the pointer is to memory valid for the rest of the program (Platform contract
// 1) that every party accesses atomically or by hardware (contract 2); sending it to
// another thread lets that thread make the same atomic accesses, which cannot race.
unsafe impl Send for FramePtr {}
// SAFETY: as for `Send`: shared use means concurrent relaxed atomic accesses only.
unsafe impl Sync for FramePtr {}

impl FramePtr {
    /// The frame holding `hpa`.
    ///
    /// # Errors
    /// [`EptError::HostFrameUnmapped`] when the platform maps none;
    /// [`EptError::Misaligned`] if the platform's pointer is not 8-aligned (a broken
    /// platform: refused rather than trusted).
    pub(crate) fn of<P: Platform + ?Sized>(platform: &P, hpa: Hpa) -> Result<Self, EptError> {
        let ptr = platform
            .host_frame(hpa.frame())
            .ok_or(EptError::HostFrameUnmapped(hpa.frame()))?;
        if ptr.as_ptr().align_offset(8) != 0 {
            return Err(EptError::Misaligned(hpa.frame()));
        }
        Ok(Self(ptr))
    }

    /// The 8-byte word at `index` (0..512).
    fn word(self, index: usize) -> Option<&'static AtomicU64> {
        if index >= FRAME / 8 {
            return None;
        }
        #[expect(
            clippy::arithmetic_side_effects,
            reason = "`index` < 512 (checked just above): the product is at most 4088"
        )]
        let byte = index * 8;
        // SAFETY: `byte + 8 <= 4096`, so the word lies inside the frame, which is
        // valid for reads and writes for the rest of the program ('static) and 8-aligned
        // (checked in `of`), so the word is 8-aligned too. Every other access to it is
        // atomic or by hardware (Platform contract 2), so treating it as an `AtomicU64` is
        // sound; `AtomicU64` has interior mutability, so a shared reference to it does not
        // promise the bytes stay unchanged (unlike a `&u64` or `&[u8]`).
        Some(unsafe { AtomicU64::from_ptr(self.0.as_ptr().add(byte).cast::<u64>()) })
    }

    /// Reads the 8-byte word at `index` (an EPT entry when the frame is a table), with
    /// acquire ordering: a table reached through an entry is read after the stores that
    /// filled it.
    pub(crate) fn load(self, index: usize) -> Result<u64, EptError> {
        self.word(index)
            .map(|w| w.load(Ordering::Acquire))
            .ok_or(EptError::OutsideFrame)
    }

    /// Writes the 8-byte word at `index`, with release ordering: an entry that links a
    /// new table is stored after every entry of that table (the compiler may not reorder
    /// them; on x86 a release store is a plain `mov`, and TSO keeps the order for the
    /// CPU's page walker).
    pub(crate) fn store(self, index: usize, value: u64) -> Result<(), EptError> {
        self.word(index)
            .map(|w| w.store(value, Ordering::Release))
            .ok_or(EptError::OutsideFrame)
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`, one aligned word load at a
    /// time.
    ///
    /// # Errors
    /// [`EptError::OutsideFrame`] (no byte copied) when the range leaves the frame.
    pub(crate) fn read(self, offset: usize, buf: &mut [u8]) -> Result<(), EptError> {
        let end = offset
            .checked_add(buf.len())
            .filter(|&e| e <= FRAME)
            .ok_or(EptError::OutsideFrame)?;
        let mut at = offset;
        let mut out = buf.iter_mut();
        while at < end {
            let word = self.word(at / 8).map_or(0, |w| w.load(Ordering::Relaxed));
            let bytes = word.to_le_bytes();
            // The word holding `at` starts at `start <= at < end <= 4096`: neither the
            // difference nor the sum below saturates, and `last > first`, so `at` moves on.
            let start = at & !7;
            let first = at % 8;
            let last = end.saturating_sub(start).min(8);
            for &b in bytes.get(first..last).unwrap_or(&[]) {
                if let Some(o) = out.next() {
                    *o = b;
                }
            }
            at = start.saturating_add(last);
        }
        Ok(())
    }

    /// Copies `data` to `offset`: whole words with one store each, the partial words at
    /// the edges with a compare-exchange that keeps the word's other bytes (so a guest
    /// write to them in between is not lost). A compare-exchange that keeps failing
    /// (the guest rewriting the word without pause) gives up after a fixed number of tries
    /// and merges with `fetch_and` plus `fetch_or`, which keeps the other bytes too.
    ///
    /// # Errors
    /// As [`FramePtr::read`] (nothing written).
    pub(crate) fn write(self, offset: usize, data: &[u8]) -> Result<(), EptError> {
        let end = offset
            .checked_add(data.len())
            .filter(|&e| e <= FRAME)
            .ok_or(EptError::OutsideFrame)?;
        let mut at = offset;
        let mut input = data.iter();
        while at < end {
            // As in `read`: `start <= at < end <= 4096`, `last > first`.
            let start = at & !7;
            let first = at % 8;
            let last = end.saturating_sub(start).min(8);
            let mut bytes = [0u8; 8];
            let mut mask = [0u8; 8];
            for (b, m) in bytes.iter_mut().zip(mask.iter_mut()).take(last).skip(first) {
                *b = input.next().copied().unwrap_or(0);
                *m = 0xff;
            }
            let (value, mask) = (u64::from_le_bytes(bytes), u64::from_le_bytes(mask));
            if let Some(w) = self.word(at / 8) {
                if mask == u64::MAX {
                    w.store(value, Ordering::Relaxed);
                } else {
                    merge(w, value, mask);
                }
            }
            at = start.saturating_add(last);
        }
        Ok(())
    }

    /// Sets the whole frame to zero, one word at a time.
    pub(crate) fn zero(self) {
        for i in 0..FRAME / 8 {
            if let Some(w) = self.word(i) {
                w.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// How often a partial-word write retries its compare-exchange before it merges with two
/// read-modify-writes instead.
const MERGE_TRIES: usize = 16;

/// Writes the bytes of `value` that `mask` selects into `word`, keeping the others.
fn merge(word: &AtomicU64, value: u64, mask: u64) {
    let mut current = word.load(Ordering::Relaxed);
    for _ in 0..MERGE_TRIES {
        let new = (current & !mask) | (value & mask);
        match word.compare_exchange_weak(current, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => current = seen,
        }
    }
    word.fetch_and(!mask, Ordering::Relaxed);
    word.fetch_or(value & mask, Ordering::Relaxed);
}

/// Reads entry `index` of the EPT table at `table`.
pub(crate) fn read_entry<P: Platform + ?Sized>(
    platform: &P,
    table: Hpa,
    index: usize,
) -> Result<EptEntry, EptError> {
    FramePtr::of(platform, table)?.load(index).map(EptEntry)
}

/// Writes entry `index` of the EPT table at `table`, as one atomic 64-bit store.
pub(crate) fn write_entry<P: Platform + ?Sized>(
    platform: &P,
    table: Hpa,
    index: usize,
    entry: EptEntry,
) -> Result<(), EptError> {
    FramePtr::of(platform, table)?.store(index, entry.0)
}

/// A tiny platform for the crate's unit tests: host memory is a heap buffer of atomic
/// words at a fixed host-physical base; every platform call is logged.
#[cfg(test)]
pub(crate) mod testing {
    use core::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    use std::vec::Vec;

    use introvisor::VcpuId;
    use introvisor::arch::amd64::{Interrupt, Registers};

    use crate::entry::EptPointer;
    use crate::exit::ExitInfo;
    use crate::platform::{Control, Hpa, Invept, Platform, PlatformError};

    /// One platform call.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Call {
        Invept(Invept),
        Shootdown(Invept),
        SetEptp(VcpuId, EptPointer),
        Control(VcpuId, Control, bool),
        Inject(VcpuId, Interrupt),
        SetRegisters(VcpuId),
        Emulate(VcpuId),
    }

    pub(crate) struct TestPlatform {
        pub(crate) base: u64,
        /// The number of words of host memory.
        words: usize,
        /// Host memory: `words` zeroed `AtomicU64`s from the global allocator, held by raw
        /// pointer (no `Box` or slice whose retagging would cost a pass over every word
        /// on each access under Miri, or whose uniqueness a move would assert).
        mem: core::ptr::NonNull<AtomicU64>,
        layout: core::alloc::Layout,
        pub(crate) regs: Mutex<Vec<Registers>>,
        pub(crate) log: Mutex<Vec<Call>>,
        pub(crate) clock: AtomicU64,
        pub(crate) can_emulate: bool,
    }

    impl TestPlatform {
        /// `frames` frames of host memory from `base`, and `vcpus` vCPUs in 64-bit mode
        /// with IF set.
        pub(crate) fn new(base: u64, frames: usize, vcpus: u16) -> Self {
            let regs = Registers {
                rflags: 0x202,
                cr0: 0x8000_0011,
                cr3: 0x5000,
                cr4: 0x20,
                efer: 0xd00,
                rip: 0xffff_8000_0000_1000,
                ..Registers::default()
            };
            let words = frames * 512;
            let layout = core::alloc::Layout::array::<AtomicU64>(words).unwrap();
            assert!(layout.size() > 0);
            // SAFETY: the layout has a non-zero size; zeroed bytes are valid `AtomicU64`s.
            let raw = unsafe { std::alloc::alloc_zeroed(layout) };
            let mem = core::ptr::NonNull::new(raw.cast::<AtomicU64>()).unwrap();
            Self {
                base,
                words,
                mem,
                layout,
                regs: Mutex::new(std::vec![regs; usize::from(vcpus)]),
                log: Mutex::new(Vec::new()),
                clock: AtomicU64::new(0),
                can_emulate: false,
            }
        }

        /// Word `index` of host memory.
        pub(crate) fn word(&self, index: usize) -> &AtomicU64 {
            assert!(index < self.words);
            // SAFETY: `index` is inside the allocation, which lives as long as `self` and
            // holds initialised `AtomicU64`s; a shared reference to an atomic allows
            // every other atomic access.
            unsafe { &*self.mem.as_ptr().add(index) }
        }

        /// The host word at `hpa` (8-aligned).
        pub(crate) fn peek(&self, hpa: u64) -> u64 {
            self.word(((hpa - self.base) / 8) as usize)
                .load(Ordering::Relaxed)
        }

        /// Takes the log.
        pub(crate) fn take_log(&self) -> Vec<Call> {
            core::mem::take(&mut *self.log.lock().unwrap())
        }

        pub(crate) fn shootdowns(log: &[Call]) -> usize {
            log.iter()
                .filter(|c| matches!(c, Call::Shootdown(_)))
                .count()
        }

        fn push(&self, call: Call) {
            self.log.lock().unwrap().push(call);
        }
    }

    impl Drop for TestPlatform {
        fn drop(&mut self) {
            // SAFETY: `mem` came from `alloc_zeroed` with `layout` and is freed once, here;
            // the backend owning this platform is being dropped, so no pointer is used
            // after this.
            unsafe { std::alloc::dealloc(self.mem.as_ptr().cast::<u8>(), self.layout) }
        }
    }

    // SAFETY: the raw pointer is to memory only ever accessed atomically; sharing it
    // between threads shares atomic accesses only. Every other field is `Sync`.
    unsafe impl Sync for TestPlatform {}
    // SAFETY: as for `Sync`; the allocation is not tied to a thread.
    unsafe impl Send for TestPlatform {}

    // SAFETY: `host_frame` returns pointers into `mem` only, to the first byte of a whole
    // frame inside it (bounds checked), 8-aligned (an `AtomicU64` buffer); the buffer
    // lives as long as the platform, and the backend that owns the platform is the only
    // user of the pointers in these tests (contract 1 for the platform's lifetime);
    // every access to the buffer, the tests' included, is atomic (contract 2); the
    // tests' pools do not overlap their guest regions (contract 3).
    #[allow(unsafe_code)]
    unsafe impl Platform for TestPlatform {
        fn host_frame(&self, hpa: Hpa) -> Option<core::ptr::NonNull<u8>> {
            let offset = hpa.frame().0.checked_sub(self.base)?;
            let word = usize::try_from(offset / 8).ok()?;
            if word.checked_add(512)? > self.words {
                return None;
            }
            core::ptr::NonNull::new(self.mem.as_ptr().wrapping_add(word).cast::<u8>())
        }
        fn invept(&self, scope: Invept) {
            self.push(Call::Invept(scope));
        }
        fn shootdown(&self, scope: Invept) {
            self.push(Call::Shootdown(scope));
        }
        fn relax(&self, _: Option<VcpuId>) {
            std::thread::yield_now();
        }
        fn vcpu_count(&self) -> u16 {
            self.regs.lock().unwrap().len() as u16
        }
        fn set_eptp(&self, vcpu: VcpuId, eptp: EptPointer) -> Result<(), PlatformError> {
            self.push(Call::SetEptp(vcpu, eptp));
            Ok(())
        }
        fn set_control(
            &self,
            vcpu: VcpuId,
            control: Control,
            on: bool,
        ) -> Result<(), PlatformError> {
            self.push(Call::Control(vcpu, control, on));
            Ok(())
        }
        fn inject(&self, vcpu: VcpuId, event: Interrupt) -> Result<(), PlatformError> {
            self.push(Call::Inject(vcpu, event));
            Ok(())
        }
        fn registers(&self, vcpu: VcpuId) -> Result<Registers, PlatformError> {
            self.regs
                .lock()
                .unwrap()
                .get(usize::from(vcpu.0))
                .copied()
                .ok_or(PlatformError::NoSuchVcpu(vcpu))
        }
        fn set_registers(&self, vcpu: VcpuId, registers: &Registers) -> Result<(), PlatformError> {
            let mut regs = self.regs.lock().unwrap();
            let slot = regs
                .get_mut(usize::from(vcpu.0))
                .ok_or(PlatformError::NoSuchVcpu(vcpu))?;
            *slot = *registers;
            drop(regs);
            self.push(Call::SetRegisters(vcpu));
            Ok(())
        }
        fn emulate(&self, vcpu: VcpuId, _: &ExitInfo) -> Result<(), PlatformError> {
            if self.can_emulate {
                self.push(Call::Emulate(vcpu));
                Ok(())
            } else {
                Err(PlatformError::Unsupported("instruction emulation"))
            }
        }
        fn pause_all(&self) -> Result<(), PlatformError> {
            Ok(())
        }
        fn resume_all(&self) -> Result<(), PlatformError> {
            Ok(())
        }
        fn now(&self) -> core::time::Duration {
            core::time::Duration::from_nanos(self.clock.fetch_add(100, Ordering::Relaxed))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestPlatform;
    use super::*;

    #[test]
    fn copies_in_and_out_at_every_alignment_and_refuses_ranges_outside_the_frame() {
        let p = TestPlatform::new(0x10_0000, 2, 1);
        let frame = FramePtr::of(&p, Hpa(0x10_1234)).unwrap();
        let data: std::vec::Vec<u8> = (0..40u8).map(|b| b.wrapping_mul(7)).collect();
        for offset in [0usize, 1, 7, 8, 13, 4096 - 40] {
            frame.write(offset, &data).unwrap();
            let mut back = [0u8; 40];
            frame.read(offset, &mut back).unwrap();
            assert_eq!(&back[..], &data[..], "offset {offset}");
        }
        // The last write put bytes 0..40 at 4056: check the words as the CPU sees them.
        let word = p.peek(0x10_1000 + 4056);
        assert_eq!(word.to_le_bytes(), data[0..8]);
        let mut buf = [0u8; 2];
        assert_eq!(frame.read(4095, &mut buf), Err(EptError::OutsideFrame));
        assert_eq!(frame.write(usize::MAX, &buf), Err(EptError::OutsideFrame));
        assert_eq!(frame.load(512), Err(EptError::OutsideFrame));
        assert_eq!(frame.store(512, 1), Err(EptError::OutsideFrame));
        frame.store(3, 0xdead_beef).unwrap();
        assert_eq!(frame.load(3), Ok(0xdead_beef));
        frame.zero();
        assert_eq!(frame.load(3), Ok(0));
        assert_eq!(
            FramePtr::of(&p, Hpa(0x10_2000)),
            Err(EptError::HostFrameUnmapped(Hpa(0x10_2000)))
        );
        // An empty read at the end is fine.
        frame.read(4096, &mut []).unwrap();
    }

    #[test]
    fn a_partial_word_write_keeps_the_other_bytes_even_under_concurrent_writes() {
        let p = TestPlatform::new(0x10_0000, 1, 1);
        let frame = FramePtr::of(&p, Hpa(0x10_0000)).unwrap();
        frame.store(1, 0x1111_1111_1111_1111).unwrap();
        frame.write(11, &[0xaa, 0xbb]).unwrap();
        assert_eq!(p.peek(0x10_0008), 0x1111_11bb_aa11_1111);
        // A "guest" thread keeps rewriting byte 0 of word 0 while the backend writes
        // bytes 4..8 of it: neither side's bytes are lost.
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..50u64 {
                    p.word(0).fetch_and(!0xff, Ordering::Relaxed);
                    p.word(0).fetch_or(i & 0x7f, Ordering::Relaxed);
                }
            });
            for i in 0..50u8 {
                frame.write(4, &[i, i, i, i]).unwrap();
            }
        });
        let word = p.peek(0x10_0000);
        assert_eq!(word >> 32, 0x3131_3131, "the backend's last write");
        assert_eq!(word & 0xff, 49, "the guest's last write");
        assert_eq!(word & 0xffff_ff00, 0);
    }
}
