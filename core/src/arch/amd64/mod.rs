//! AMD64 (x86-64): paging in every mode, registers, event and interrupt types.

mod events;
mod gp_registers;
mod paging;
mod registers;

pub use events::{
    ControlRegister, ControlRegisterEvent, CpuidEvent, EventMonitor, EventReason, Interrupt,
    InterruptEvent, InterruptType, IoDirection, IoEvent, MemoryAccessEvent, MsrEvent, vector,
};
pub use gp_registers::GpRegisters;
pub use paging::{
    Access, AccessKind, EntryFlags, EntryNames, PageTableEntry, Paging, PagingMode, PfErrorCode,
    RightsPolicy, TableIndex, WalkPlan, level_name,
};
pub use registers::{DescriptorTable, Registers, Segment};

use crate::addr::{Pa, Va};
use crate::arch::{Architecture, PhysRead, Translation, WalkStep};
use crate::error::VmiError;

/// The AMD64 architecture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Amd64;

impl Architecture for Amd64 {
    const PAGE_SIZE: u64 = 0x1000;
    const PAGE_SHIFT: u32 = 12;
    const PAGE_MASK: u64 = !0xfff;

    type Registers = Registers;
    type GpRegisters = GpRegisters;
    type Paging = Paging;
    const DEFAULT_PAGING: Paging = Paging::new(PagingMode::Level4);
    type EventMonitor = EventMonitor;
    type EventReason = EventReason;
    type Interrupt = Interrupt;

    /// [`Paging::root_table`], the masking the walker applies, as a mask.
    #[inline]
    fn root_mask(paging: &Paging) -> u64 {
        paging.root_mask()
    }

    const DEFAULT_ROOT_MASK: u64 = Self::DEFAULT_PAGING.root_mask();

    /// The walk without an observer: over memory the reader lends as one slice, the
    /// straight-line walk of 4- and 5-level paging (the same result as
    /// [`Self::translate_observed`]).
    #[inline]
    fn translate(
        mem: &(impl PhysRead + ?Sized),
        paging: &Paging,
        va: Va,
        root: Pa,
    ) -> Result<Translation, VmiError> {
        paging::translate_planned(mem, paging, &paging.plan(), va, root)
    }

    type Plan = WalkPlan;
    const DEFAULT_PLAN: WalkPlan = Self::DEFAULT_PAGING.plan();

    #[inline]
    fn plan(paging: &Paging) -> WalkPlan {
        paging.plan()
    }

    #[inline]
    fn translate_planned(
        mem: &(impl PhysRead + ?Sized),
        paging: &Paging,
        plan: &WalkPlan,
        va: Va,
        root: Pa,
    ) -> Result<Translation, VmiError> {
        paging::translate_planned(mem, paging, plan, va, root)
    }

    /// The walk of `memory` itself in 4- and 5-level paging; the reader is built for its
    /// rare paths only.
    #[inline]
    fn translate_lent<'a, R: PhysRead>(
        memory: &[u8],
        reader: impl FnOnce() -> (R, &'a Paging, &'a WalkPlan),
        paging: &Paging,
        plan: &WalkPlan,
        va: Va,
        root: Pa,
    ) -> Result<Translation, VmiError> {
        paging::translate_lent(memory, reader, paging, plan, va, root)
    }

    /// A range walk: consecutive PTEs of one table without a walk from the root each.
    #[inline]
    fn translate_pages_planned(
        mem: &(impl PhysRead + ?Sized),
        paging: &Paging,
        plan: &WalkPlan,
        va: Va,
        root: Pa,
        count: u64,
        each: impl FnMut(Translation) -> bool,
    ) -> Result<(), VmiError> {
        paging::walk_pages_planned(mem, paging, plan, va, root, count, each)
    }

    /// Interleaved: sixteen walks at a time, level by level.
    #[inline]
    fn translate_many_planned(
        mem: &(impl PhysRead + ?Sized),
        paging: &Paging,
        plan: &WalkPlan,
        vas: &[Va],
        root: Pa,
        out: &mut [Result<Translation, VmiError>],
    ) {
        for (vas, out) in vas.chunks(paging::LANES).zip(out.chunks_mut(paging::LANES)) {
            paging::walk_many_planned(mem, paging, plan, vas, root, out);
        }
    }

    #[inline]
    fn translate_observed(
        mem: &(impl PhysRead + ?Sized),
        paging: &Paging,
        va: Va,
        root: Pa,
        observe: impl FnMut(WalkStep),
    ) -> Result<Translation, VmiError> {
        paging::walk(mem, paging, va, root, observe)
    }
}
