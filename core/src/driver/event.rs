//! Events a driver delivers, and the responses a handler gives.
//!
//! Both are small `Copy` records: a driver builds a [`VmiEvent`] on its stack in the exit
//! path, hands the handler a reference, and applies the [`VmiEventResponse`] it gets back.
//! Nothing here allocates.

use crate::addr::{VcpuId, View};
use crate::arch::Architecture;

bitflags::bitflags! {
    /// Flags of an event.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct VmiEventFlags: u8 {
        /// The vCPU is paused until the response is applied (a synchronous event).
        const VCPU_PAUSED = 1 << 0;
    }
}

#[cfg(feature = "defmt")]
#[cfg_attr(docsrs, doc(cfg(feature = "defmt")))]
impl defmt::Format for VmiEventFlags {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "VmiEventFlags({=u8:#x})", self.bits())
    }
}

/// An event: which vCPU, in which view, with which registers, and why.
#[derive(Clone, Copy, Debug, PartialEq)]
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

impl<A: Architecture> VmiEvent<A> {
    /// An event of `vcpu`, in `view`, with its registers and reason.
    pub const fn new(
        vcpu: VcpuId,
        view: Option<View>,
        flags: VmiEventFlags,
        registers: A::Registers,
        reason: A::EventReason,
    ) -> Self {
        Self {
            vcpu,
            view,
            flags,
            registers,
            reason,
        }
    }
}

#[cfg(feature = "defmt")]
impl<A: Architecture> defmt::Format for VmiEvent<A>
where
    A::Registers: defmt::Format,
    A::EventReason: defmt::Format,
{
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "VmiEvent {{ vcpu: {}, view: {}, flags: {}, registers: {}, reason: {} }}",
            self.vcpu,
            self.view,
            self.flags,
            self.registers,
            self.reason
        )
    }
}

bitflags::bitflags! {
    /// What a response asks of the driver, besides a view and registers.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct VmiEventResponseFlags: u8 {
        /// Deliver the interrupt or exception that caused the event to the guest after all.
        const REINJECT_INTERRUPT = 1 << 0;
        /// Toggle single-stepping on the vCPU.
        const TOGGLE_SINGLESTEP = 1 << 1;
        /// Execute one instruction in the response's view, then return to the view the
        /// vCPU was in, without an event for the step.
        const FAST_SINGLESTEP = 1 << 2;
        /// Emulate the instruction that caused the event (the access then takes effect
        /// whatever the view's rights).
        const EMULATE = 1 << 3;
        /// Refuse the register write that caused the event: the register keeps its value.
        const DENY = 1 << 4;
    }
}

#[cfg(feature = "defmt")]
#[cfg_attr(docsrs, doc(cfg(feature = "defmt")))]
impl defmt::Format for VmiEventResponseFlags {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "VmiEventResponseFlags({=u8:#x})", self.bits())
    }
}

/// A handler's answer to an event: small and `Copy`, built with chained methods.
///
/// The default (also [`VmiEventResponse::continue_`]) lets the vCPU go on as if nothing
/// happened. Each method adds one request; they combine freely, and the driver applies
/// them in this order: registers, view (or fast single step), single-step toggle,
/// emulation or denial, reinjection.
///
/// ```
/// use introvisor::{View, VmiEventResponse, VmiEventResponseFlags, arch::amd64::Amd64};
///
/// // Step over a hidden breakpoint: one instruction in the unrestricted view, then back.
/// let response = VmiEventResponse::<Amd64>::continue_().fast_singlestep(View(1));
/// assert!(response.flags.contains(VmiEventResponseFlags::FAST_SINGLESTEP));
/// assert_eq!(response.view, Some(View(1)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VmiEventResponse<A: Architecture> {
    /// What to do.
    pub flags: VmiEventResponseFlags,
    /// Switch the vCPU to this view; with [`VmiEventResponseFlags::FAST_SINGLESTEP`], the
    /// view the single instruction runs in.
    pub view: Option<View>,
    /// Set these general-purpose registers on the vCPU before it resumes.
    pub registers: Option<A::GpRegisters>,
}

#[cfg(feature = "defmt")]
impl<A: Architecture> defmt::Format for VmiEventResponse<A>
where
    A::GpRegisters: defmt::Format,
{
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "VmiEventResponse {{ flags: {}, view: {}, registers: {} }}",
            self.flags,
            self.view,
            self.registers
        )
    }
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
    /// Let the vCPU continue: no request at all.
    #[must_use]
    pub fn continue_() -> Self {
        Self::default()
    }

    /// Also deliver the event's interrupt or exception to the guest (a breakpoint that
    /// is the guest's own, say).
    #[must_use]
    pub fn reinject_interrupt(mut self) -> Self {
        self.flags |= VmiEventResponseFlags::REINJECT_INTERRUPT;
        self
    }

    /// Also toggle single-stepping on the vCPU.
    #[must_use]
    pub fn toggle_singlestep(mut self) -> Self {
        self.flags |= VmiEventResponseFlags::TOGGLE_SINGLESTEP;
        self
    }

    /// Also execute one instruction in `view`, then return to the vCPU's current view
    /// without a second event.
    #[must_use]
    pub fn fast_singlestep(mut self, view: View) -> Self {
        self.flags |= VmiEventResponseFlags::FAST_SINGLESTEP;
        self.view = Some(view);
        self
    }

    /// Also emulate the instruction that caused the event.
    #[must_use]
    pub fn emulate(mut self) -> Self {
        self.flags |= VmiEventResponseFlags::EMULATE;
        self
    }

    /// Also refuse the register write that caused the event.
    #[must_use]
    pub fn deny(mut self) -> Self {
        self.flags |= VmiEventResponseFlags::DENY;
        self
    }

    /// Also switch the vCPU (only this one) to `view`.
    #[must_use]
    pub fn switch_view(mut self, view: View) -> Self {
        self.view = Some(view);
        self
    }

    /// Also set the general-purpose registers.
    #[must_use]
    pub fn set_registers(mut self, registers: A::GpRegisters) -> Self {
        self.registers = Some(registers);
        self
    }

    /// Whether the response asks for nothing.
    pub fn is_continue(&self) -> bool {
        self.flags.is_empty() && self.view.is_none() && self.registers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::amd64::{Amd64, GpRegisters};

    #[test]
    fn builders_combine_and_stay_small() {
        let r = VmiEventResponse::<Amd64>::continue_();
        assert!(r.is_continue());
        let gp = GpRegisters {
            rip: 0x1000,
            ..GpRegisters::default()
        };
        let r = r
            .reinject_interrupt()
            .toggle_singlestep()
            .emulate()
            .deny()
            .switch_view(View(2))
            .set_registers(gp);
        assert!(r.flags.contains(
            VmiEventResponseFlags::REINJECT_INTERRUPT
                | VmiEventResponseFlags::TOGGLE_SINGLESTEP
                | VmiEventResponseFlags::EMULATE
                | VmiEventResponseFlags::DENY
        ));
        assert!(!r.flags.contains(VmiEventResponseFlags::FAST_SINGLESTEP));
        assert_eq!(r.view, Some(View(2)));
        assert_eq!(r.registers, Some(gp));
        assert!(!r.is_continue());
        let fast = VmiEventResponse::<Amd64>::continue_().fast_singlestep(View(3));
        assert_eq!(fast.flags, VmiEventResponseFlags::FAST_SINGLESTEP);
        assert_eq!(fast.view, Some(View(3)));
        // The subset keeps the response far smaller than the full register file.
        assert!(
            size_of::<VmiEventResponse<Amd64>>() < size_of::<crate::arch::amd64::Registers>() / 2
        );
    }
}
