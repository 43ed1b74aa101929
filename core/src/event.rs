//! Events a driver delivers, and the responses a handler gives.

use crate::addr::{VcpuId, View};
use crate::arch::Architecture;

bitflags::bitflags! {
    /// Flags of an event.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct VmiEventFlags: u8 {
        /// The vCPU is paused until the response is applied.
        const VCPU_PAUSED = 1 << 0;
    }
}

/// An event: which vCPU, in which view, with which registers, and why.
#[derive(Clone, Copy, Debug)]
pub struct VmiEvent<A: Architecture> {
    /// The vCPU that took the event.
    pub vcpu: VcpuId,
    /// The view the vCPU was in, when the driver has views.
    pub view: Option<View>,
    /// Flags.
    pub flags: VmiEventFlags,
    /// The vCPU's registers at the event.
    pub registers: A::Registers,
    /// Why the vCPU stopped.
    pub reason: A::EventReason,
}

bitflags::bitflags! {
    /// What a response asks of the driver.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct VmiEventResponseFlags: u8 {
        /// Reinject the interrupt or exception that caused the event.
        const REINJECT_INTERRUPT = 1 << 0;
        /// Toggle single-stepping on the vCPU.
        const TOGGLE_SINGLESTEP = 1 << 1;
        /// Step one instruction in the response's view, then return to the current view
        /// without another event.
        const TOGGLE_FAST_SINGLESTEP = 1 << 2;
        /// Emulate the instruction that caused the event.
        const EMULATE = 1 << 3;
        /// Deny the register write that caused the event.
        const DENY = 1 << 4;
    }
}

/// A handler's answer to an event. Small and `Copy`; build it with the methods.
#[derive(Clone, Copy, Debug)]
pub struct VmiEventResponse<A: Architecture> {
    /// What to do.
    pub flags: VmiEventResponseFlags,
    /// Switch the vCPU to this view.
    pub view: Option<View>,
    /// Set these registers on the vCPU.
    pub registers: Option<A::Registers>,
}

impl<A: Architecture> Default for VmiEventResponse<A> {
    fn default() -> Self {
        Self {
            flags: VmiEventResponseFlags::empty(),
            view: None,
            registers: None,
        }
    }
}

impl<A: Architecture> VmiEventResponse<A> {
    /// Let the vCPU continue.
    pub fn continue_() -> Self {
        Self::default()
    }
}
