//! Architectures: the [`Architecture`] trait and its implementations.
//!
//! An architecture defines the page geometry, the page-table walk, the register set and
//! the event types. The walk reads page tables through [`PhysRead`], a small trait that
//! knows nothing of `VmiCore`: the core hands it a reader that goes through the page
//! cache, tests hand it a byte slice, and a hypervisor backend can hand it one that walks
//! its second-level tables first.

pub mod amd64;

use core::fmt::Debug;

use crate::access::MemoryAccess;
use crate::addr::{Gfn, Pa, Va};
use crate::error::{PageFault, VmiError};

/// Reads little-endian page-table entries from guest-physical memory.
///
/// An implementation returns [`VmiError::OutOfBounds`] or [`VmiError::GfnNotPresent`] for
/// an address outside guest memory (the walker turns both into a fault with reason
/// [`FaultReason::OutOfMemory`](crate::FaultReason::OutOfMemory)); any other error ends
/// the walk as it is.
pub trait PhysRead {
    /// Reads the 8 bytes at `pa`.
    fn read_u64(&self, pa: Pa) -> Result<u64, VmiError>;

    /// Reads the 8 bytes at `pa` the cheap way, if the reader has one: `None` when it has
    /// none (the default) or when the read fails. The walker tries this first and calls
    /// [`PhysRead::read_u64`] when it returns `None`, for the value or for the error; a
    /// reader that implements both may so be asked for a failing address twice.
    ///
    /// It exists because a `Result` carrying a [`VmiError`] costs a page walk more than
    /// its four loads: an `Option<u64>` comes back in registers.
    #[inline]
    fn read_u64_fast(&self, pa: Pa) -> Option<u64> {
        let _ = pa;
        None
    }

    /// Reads the 4 bytes at `pa`.
    fn read_u32(&self, pa: Pa) -> Result<u32, VmiError>;

    /// Guest-physical memory from address 0 as one byte slice, when the reader holds it so
    /// (`None`, the default, when it does not). Byte `n` of the slice must be what
    /// [`PhysRead::read_u64`] reads at address `n`; addresses past its end may still be
    /// readable through [`PhysRead::read_u64`].
    ///
    /// The AMD64 walker in 4- and 5-level paging reads entries inside the slice without a
    /// call, and goes through [`PhysRead::read_u64_fast`] and [`PhysRead::read_u64`] for
    /// anything past its end.
    #[inline]
    fn physical_memory(&self) -> Option<&[u8]> {
        None
    }
}

/// Guest-physical memory as a byte slice starting at address zero.
impl PhysRead for [u8] {
    #[inline]
    fn read_u64_fast(&self, pa: Pa) -> Option<u64> {
        // `start <= len - 8` is one comparison per read once `len - 8` is known, which a
        // walk computes once for its four or five reads.
        let last = self.len().checked_sub(8)?;
        let start = usize::try_from(pa.0).ok().filter(|&start| start <= last)?;
        let raw = self.get(start..)?.first_chunk::<8>()?;
        Some(u64::from_le_bytes(*raw))
    }

    fn read_u64(&self, pa: Pa) -> Result<u64, VmiError> {
        let start = usize::try_from(pa.0).map_err(|_| VmiError::OutOfBounds(pa))?;
        let bytes = start
            .checked_add(8)
            .and_then(|end| self.get(start..end))
            .ok_or(VmiError::OutOfBounds(pa))?;
        let mut raw = [0u8; 8];
        raw.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(raw))
    }

    fn read_u32(&self, pa: Pa) -> Result<u32, VmiError> {
        let start = usize::try_from(pa.0).map_err(|_| VmiError::OutOfBounds(pa))?;
        let bytes = start
            .checked_add(4)
            .and_then(|end| self.get(start..end))
            .ok_or(VmiError::OutOfBounds(pa))?;
        let mut raw = [0u8; 4];
        raw.copy_from_slice(bytes);
        Ok(u32::from_le_bytes(raw))
    }

    #[inline]
    fn physical_memory(&self) -> Option<&[u8]> {
        Some(self)
    }
}

impl<T: PhysRead + ?Sized> PhysRead for &T {
    fn read_u64(&self, pa: Pa) -> Result<u64, VmiError> {
        (**self).read_u64(pa)
    }

    #[inline]
    fn read_u64_fast(&self, pa: Pa) -> Option<u64> {
        (**self).read_u64_fast(pa)
    }

    fn read_u32(&self, pa: Pa) -> Result<u32, VmiError> {
        (**self).read_u32(pa)
    }

    #[inline]
    fn physical_memory(&self) -> Option<&[u8]> {
        (**self).physical_memory()
    }
}

/// The result of a successful page walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Translation {
    /// The guest-physical address the virtual address maps to.
    pub pa: Pa,
    /// The size of the page that maps it, in bytes (4 KiB, 2 MiB, 4 MiB or 1 GiB on AMD64).
    pub page_size: u64,
    /// The effective rights, combined over every level: `R` always, `W` if every level
    /// allows writes, `X` unless a level forbids execution.
    pub access: MemoryAccess,
    /// Whether every level allows user-mode access.
    pub user: bool,
}

impl Translation {
    /// The guest-physical base of the page.
    pub const fn page_base(&self) -> Pa {
        Pa(self.pa.0 & !(self.page_size.wrapping_sub(1)))
    }
}

/// One entry the walker read, reported by [`Architecture::translate_observed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct WalkStep {
    /// The level, 1 for the last-level page table.
    pub level: u8,
    /// The guest-physical address of the entry.
    pub entry: Pa,
    /// The raw entry.
    pub value: u64,
}

/// What the architecture-independent layers (the event context, OS layers) need to know
/// of a vCPU's registers.
pub trait Registers: Copy + Debug + Default + Send + Sync {
    /// The address of the next instruction (AMD64: RIP).
    fn instruction_pointer(&self) -> Va;

    /// The stack pointer (AMD64: RSP).
    fn stack_pointer(&self) -> Va;

    /// The root of the page tables the vCPU translates with (AMD64: CR3 as it is; the
    /// walker masks it for the paging mode).
    fn translation_root(&self) -> Pa;

    /// The width in bytes of an address in the code running now (AMD64: 8 in 64-bit
    /// mode, 4 in compatibility and protected mode, 2 in 16-bit code).
    fn address_width(&self) -> u8;
}

/// The empty register set, for an architecture that has none to offer (a test
/// architecture, say): every pointer and the root are zero, addresses are 8 bytes wide.
impl Registers for () {
    fn instruction_pointer(&self) -> Va {
        Va(0)
    }

    fn stack_pointer(&self) -> Va {
        Va(0)
    }

    fn translation_root(&self) -> Pa {
        Pa(0)
    }

    fn address_width(&self) -> u8 {
        8
    }
}

/// The general-purpose register subset of an architecture.
pub type GpRegistersOf<A> = <A as Architecture>::GpRegisters;

/// An instruction-set architecture as the core sees it.
pub trait Architecture: Sized + Send + Sync + 'static {
    /// The base page size in bytes.
    const PAGE_SIZE: u64;
    /// log2 of [`Self::PAGE_SIZE`].
    const PAGE_SHIFT: u32;
    /// The mask of the page-number bits of an address (`!(PAGE_SIZE - 1)`).
    const PAGE_MASK: u64;

    /// The register set of one vCPU.
    type Registers: Registers;
    /// The general-purpose subset of [`Self::Registers`] that an event response can set:
    /// small, so that a response stays cheap to copy.
    type GpRegisters: Copy + Debug + Default + PartialEq + Send + Sync;
    /// How the page tables are to be read (mode, physical address width, ...).
    type Paging: Copy + Debug + Default + PartialEq + Send + Sync;
    /// The paging a new core starts with (a `const`, so that [`VmiCore::new`] can be:
    /// equal to `Paging::default()`).
    ///
    /// [`VmiCore::new`]: crate::VmiCore::new
    const DEFAULT_PAGING: Self::Paging;
    /// An event source a driver can enable or disable.
    type EventMonitor: Copy + Debug + PartialEq + Send + Sync;
    /// The architecture-specific part of an event.
    type EventReason: Copy + Debug + PartialEq + Send + Sync;
    /// An interrupt or exception to inject.
    type Interrupt: Copy + Debug + Send + Sync;

    /// The frame that holds `pa`.
    #[inline]
    fn gfn_from_pa(pa: Pa) -> Gfn {
        Gfn(pa.0 >> Self::PAGE_SHIFT)
    }

    /// The first address of `gfn` (address bits above 64 are dropped).
    #[inline]
    fn pa_from_gfn(gfn: Gfn) -> Pa {
        Pa(gfn.0.wrapping_shl(Self::PAGE_SHIFT))
    }

    /// The offset of `address` inside its page.
    #[inline]
    fn page_offset(address: u64) -> u64 {
        address & !Self::PAGE_MASK
    }

    /// `va` rounded down to its page.
    #[inline]
    fn va_align_down(va: Va) -> Va {
        Va(va.0 & Self::PAGE_MASK)
    }

    /// The bits of a translation root that name its top-level table under `paging`
    /// (AMD64: CR3 without its PCID, no-flush and LAM bits,
    /// [`Paging::root_table`](amd64::Paging::root_table)): the root under this mask names
    /// one address space. The translation cache keys its entries by it, so every form of
    /// a root is one key and a flush under any form drops them all; an architecture whose
    /// walk masks its root must answer with the walk's own mask. [`VmiCore`](crate::VmiCore)
    /// computes it once per [`set_paging`](crate::VmiCore::set_paging), so that a
    /// cached translation's key costs one AND. The default, for an architecture that
    /// reads the root as it is, is every bit.
    #[inline]
    fn root_mask(paging: &Self::Paging) -> u64 {
        let _ = paging;
        u64::MAX
    }

    /// [`Self::root_mask`] of [`Self::DEFAULT_PAGING`], as a constant (for the `const`
    /// constructor of [`VmiCore`](crate::VmiCore)). An architecture that changes
    /// `root_mask` must change this to match (a test of the core checks AMD64's).
    const DEFAULT_ROOT_MASK: u64 = u64::MAX;

    /// Translates `va` through the page tables rooted at `root`, read from `mem`.
    ///
    /// # Errors
    /// [`VmiError::Translation`] with a [`PageFault`] that names the level, the entry and
    /// the reason when the walk fails; any other error `mem` returns.
    fn translate(
        mem: &(impl PhysRead + ?Sized),
        paging: &Self::Paging,
        va: Va,
        root: Pa,
    ) -> Result<Translation, VmiError> {
        Self::translate_observed(mem, paging, va, root, |_| {})
    }

    /// What a walk computes from a [`Self::Paging`] alone (masks, reserved bits), computed
    /// once by [`Self::plan`]: [`VmiCore`](crate::VmiCore) keeps the plan of its paging,
    /// made at each [`set_paging`](crate::VmiCore::set_paging), and walks with it. `()`
    /// for an architecture whose walk has nothing to precompute.
    type Plan: Copy + Debug + Send + Sync;
    /// [`Self::plan`] of [`Self::DEFAULT_PAGING`], as a constant (for the `const`
    /// constructor of [`VmiCore`](crate::VmiCore)).
    const DEFAULT_PLAN: Self::Plan;

    /// The plan of `paging`.
    fn plan(paging: &Self::Paging) -> Self::Plan;

    /// [`Self::translate`], with `plan` the [`Self::plan`] of `paging` (the result of
    /// any other plan is unspecified, but as safe). The default ignores the plan.
    ///
    /// # Errors
    /// As [`Self::translate`].
    #[inline]
    fn translate_planned(
        mem: &(impl PhysRead + ?Sized),
        paging: &Self::Paging,
        plan: &Self::Plan,
        va: Va,
        root: Pa,
    ) -> Result<Translation, VmiError> {
        let _ = plan;
        Self::translate(mem, paging, va, root)
    }

    /// [`Self::translate_planned`] through the reader that `reader` builds, whose
    /// [`PhysRead::physical_memory`] is `memory`. `reader` also gives `paging` and `plan`
    /// again (the caller's own references): an architecture may walk `memory` directly
    /// and call `reader` only for what lies outside it (its walk's rare paths), so that
    /// the common path keeps neither a reader in memory nor those references in
    /// registers. The result must be the one [`Self::translate_planned`] gives through
    /// the reader. The default builds the reader first.
    ///
    /// # Errors
    /// As [`Self::translate`].
    #[inline]
    fn translate_lent<'a, R: PhysRead>(
        memory: &[u8],
        reader: impl FnOnce() -> (R, &'a Self::Paging, &'a Self::Plan),
        paging: &Self::Paging,
        plan: &Self::Plan,
        va: Va,
        root: Pa,
    ) -> Result<Translation, VmiError> {
        let _ = memory;
        Self::translate_planned(&reader().0, paging, plan, va, root)
    }

    /// [`Self::translate_planned`] for each of `vas`, into `out` in the same order (as
    /// many as the shorter of the two holds). An architecture may interleave the walks so
    /// that their memory accesses overlap; each result must be the one
    /// [`Self::translate_planned`] gives. The default walks them one after the other.
    #[inline]
    fn translate_many_planned(
        mem: &(impl PhysRead + ?Sized),
        paging: &Self::Paging,
        plan: &Self::Plan,
        vas: &[Va],
        root: Pa,
        out: &mut [Result<Translation, VmiError>],
    ) {
        for (va, slot) in vas.iter().zip(out.iter_mut()) {
            *slot = Self::translate_planned(mem, paging, plan, *va, root);
        }
    }

    /// The translations of `count` consecutive base pages from the page of `va`, in
    /// order, each given to `each` (which returns whether to go on; each is the
    /// translation of its page's first byte, as [`Self::translate_planned`] gives it);
    /// the first failure ends the range and is returned. An architecture may read the
    /// leaves of neighbouring pages without a walk from the root each (AMD64 reads
    /// consecutive PTEs, every check kept). The default walks each page.
    ///
    /// # Errors
    /// The first page's failure, as [`Self::translate`]'s.
    #[inline]
    fn translate_pages_planned(
        mem: &(impl PhysRead + ?Sized),
        paging: &Self::Paging,
        plan: &Self::Plan,
        va: Va,
        root: Pa,
        count: u64,
        mut each: impl FnMut(Translation) -> bool,
    ) -> Result<(), VmiError> {
        let mut page = Self::va_align_down(va);
        for _ in 0..count {
            if !each(Self::translate_planned(mem, paging, plan, page, root)?) {
                break;
            }
            page = Va(page.0.wrapping_add(Self::PAGE_SIZE));
        }
        Ok(())
    }

    /// [`Self::translate`], calling `observe` with every entry read, in walk order.
    ///
    /// # Errors
    /// As [`Self::translate`].
    fn translate_observed(
        mem: &(impl PhysRead + ?Sized),
        paging: &Self::Paging,
        va: Va,
        root: Pa,
        observe: impl FnMut(WalkStep),
    ) -> Result<Translation, VmiError>;
}

/// A convenience: builds the error for a walk that stopped at `level`.
pub(crate) const fn fault(
    va: Va,
    root: Pa,
    level: u8,
    entry: Pa,
    value: u64,
    reason: crate::error::FaultReason,
) -> VmiError {
    VmiError::Translation(PageFault {
        va,
        root,
        level,
        entry,
        value,
        reason,
    })
}
