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
    RightsPolicy, TableIndex, level_name,
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

    /// [`Paging::root_table`], the masking the walker applies.
    #[inline]
    fn root_table(paging: &Paging, root: Pa) -> Pa {
        paging.root_table(root)
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
