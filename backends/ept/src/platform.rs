//! [`Platform`]: what the hypervisor gives the backend, and the backend's only way to
//! touch the machine.
//!
//! The backend owns no hardware state. It never executes a VMX instruction, never reads
//! a VMCS field and never sends an IPI: it asks the platform. That keeps the crate
//! testable on any host (a simulated platform in `host-test`, a real one in a bare-metal
//! hypervisor under Bochs) and keeps its `unsafe` to one module.
//!
//! # Controls are requests
//! [`Platform::set_control`] says what the *backend* needs. A hypervisor that needs a
//! control for itself (external-interrupt exiting for its own scheduler, say) keeps it on
//! when the backend turns its request off, and routes the exits the backend did not ask
//! for to its own handling: [`EptBackend::on_exit`](crate::EptBackend::on_exit) answers
//! [`ExitAction::NotMine`](crate::ExitAction::NotMine) for them.

use core::fmt;
use core::ptr::NonNull;
use core::time::Duration;

use introvisor::VcpuId;
use introvisor::arch::amd64::{ControlRegister, Interrupt, Registers};

use crate::entry::EptPointer;
use crate::exit::ExitInfo;

/// A host-physical address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Hpa(pub u64);

impl Hpa {
    /// `self + rhs`, or `None` on overflow.
    #[inline]
    pub const fn checked_add(self, rhs: u64) -> Option<Self> {
        match self.0.checked_add(rhs) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// The address with its low 12 bits cleared: the 4 KiB frame it lies in.
    #[inline]
    pub const fn frame(self) -> Self {
        Self(self.0 & !0xfff)
    }

    /// The offset inside its 4 KiB frame.
    #[inline]
    pub const fn offset(self) -> u64 {
        self.0 & 0xfff
    }
}

impl fmt::Debug for Hpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hpa({:#x})", self.0)
    }
}

impl fmt::Display for Hpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Hpa {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "Hpa({=u64:#x})", self.0)
    }
}

/// The scope of an INVEPT (SDM Vol. 3C §29.4.3.1, and the INVEPT instruction in
/// Vol. 3C §31.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Invept {
    /// Type 1: the mappings derived from this EPTP (its PML4/PML5 address).
    SingleContext(EptPointer),
    /// Type 2: the mappings derived from every EPTP.
    AllContext,
}

/// A per-vCPU VM-execution control the backend can ask for (SDM Vol. 3C §25.6).
///
/// Each is on or off ([`Platform::set_control`]); a hypervisor that does not offer one
/// returns [`PlatformError::Unsupported`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Control {
    /// The monitor trap flag: a VM exit (reason 37) after the next instruction
    /// (SDM Vol. 3C §26.5.2).
    MonitorTrap,
    /// Bit `n` of the exception bitmap: exception `n` exits (§25.6.3).
    Exception(u8),
    /// Writes to this control register exit: CR0/CR4 through the guest/host mask and
    /// read shadow (§25.6.6), CR3 through CR3-load exiting (§25.6.2), XCR0 through XSETBV
    /// (which always exits).
    CrWrite(ControlRegister),
    /// WRMSR of this MSR exits: its bit in the MSR write bitmap (§25.6.9).
    MsrWrite(u32),
    /// CPUID exits unconditionally under VMX (§26.1.2); on means "hand the CPUID exits to
    /// the backend".
    Cpuid,
    /// I/O to this port exits: its bit in the I/O bitmaps (§25.6.4).
    Io(u16),
    /// External-interrupt exiting (pin-based, §25.6.1), with "acknowledge interrupt on
    /// exit" off, so a held interrupt stays pending in the local APIC.
    ExternalInterruptExiting,
    /// Interrupt-window exiting (primary processor-based, §25.6.2).
    InterruptWindowExiting,
}

/// What a platform reports when it cannot do what the backend asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum PlatformError {
    /// The platform does not offer this (a control, emulation, an EPTP-list slot).
    Unsupported(&'static str),
    /// No such vCPU.
    NoSuchVcpu(VcpuId),
    /// The platform failed, for the reason given.
    Failed(&'static str),
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported(what) => write!(f, "the platform does not support {what}"),
            Self::NoSuchVcpu(v) => write!(f, "no such vCPU: {v}"),
            Self::Failed(why) => write!(f, "platform failure: {why}"),
        }
    }
}

impl core::error::Error for PlatformError {}

/// The hypervisor's side of the backend.
///
/// # Safety
/// The trait is `unsafe` because the backend's host-memory module dereferences the
/// pointers [`Platform::host_frame`] returns: a safe implementation returning a dangling
/// pointer would make the backend's safe API unsound (the same reason `GlobalAlloc` is an
/// `unsafe trait`). An implementor promises:
///
/// 1. For every `hpa` for which `host_frame` returns `Some(ptr)`: `ptr` points at the
///    first byte of the 4 KiB host frame `hpa.frame()`, is aligned to 8 bytes, and the
///    4096 bytes from it are valid for reads and writes for as long as the platform
///    lives (the frame stays mapped and is never unmapped or remapped elsewhere).
/// 2. Every access to those bytes by other Rust code in the same program while the
///    backend lives (a simulator's vCPU threads, the hypervisor itself) is atomic (any
///    `core::sync::atomic` type, any ordering), or is made by hardware (the guest, the
///    CPU's page walker): the backend reads and writes them with relaxed atomics only and
///    never creates a `&`/`&mut` reference over them, so there is no data race in Rust's
///    memory model.
/// 3. The frames of the pool handed to [`EptBackend::new`](crate::EptBackend::new) are
///    used by nothing but the backend from then on (the guest's memory is what the guest
///    regions describe; pool frames must not overlap it).
///
/// Every other method has a safe contract: a platform that breaks it makes the guest
/// misbehave, never the backend unsound.
#[allow(
    unsafe_code,
    reason = "declaring the contract is not an unsafe operation; only `hostmem` relies on it"
)]
pub unsafe trait Platform: Sync {
    /// A pointer to the 4 KiB host frame that holds `hpa` (the pointer is to the frame's
    /// first byte, whatever `hpa`'s offset), or `None` when the platform has no mapping
    /// for it. See the trait's safety contract.
    fn host_frame(&self, hpa: Hpa) -> Option<NonNull<u8>>;

    /// Invalidates, on the calling CPU only, the EPT-derived mappings (guest-physical and
    /// combined) that `scope` names: the INVEPT instruction (SDM Vol. 3C §31.3). The
    /// backend asks for [`Invept::SingleContext`] only when
    /// [`EptCapabilities::invept_single_context`](crate::EptCapabilities::invept_single_context)
    /// is set and for [`Invept::AllContext`] only when `invept_all_context` is.
    fn invept(&self, scope: Invept);

    /// Makes every CPU other than the calling one that may cache mappings derived from
    /// `scope` invalidate them (an IPI or NMI whose handler runs INVEPT), and returns only
    /// once each of them has.
    ///
    /// The backend calls it with none of its locks held. A CPU that spins inside the
    /// backend (waiting for a queued event's response, or for one of the backend's short
    /// locks) calls [`Platform::relax`] in every iteration, and `relax` must serve a
    /// pending shootdown: so a CPU waiting for shootdown acknowledgements never waits on
    /// a CPU that waits on it (see the crate docs, "Deadlocks").
    fn shootdown(&self, scope: Invept);

    /// Called by the backend in every iteration of every busy-wait, on the waiting CPU.
    /// It must serve a shootdown aimed at this CPU (run the INVEPT it asks for and
    /// acknowledge), and may pause the CPU briefly (`core::hint::spin_loop`, or yield the
    /// thread in a simulator). `vcpu` is the vCPU whose exit the CPU is handling, when it
    /// is handling one.
    fn relax(&self, vcpu: Option<VcpuId>);

    /// The number of vCPUs; they are numbered `0..vcpu_count()`.
    fn vcpu_count(&self) -> u16;

    /// Sets the EPT pointer of `vcpu` (the VMCS EPTP field, SDM Vol. 3C §25.6.11).
    ///
    /// For the vCPU whose exit the calling CPU is handling, it takes effect at that
    /// vCPU's next VM entry. For any other vCPU (the introspection side switching every
    /// vCPU's view, or moving the vCPUs out of a view it destroys) the platform makes it
    /// take effect before returning: a vCPU in guest mode is made to exit (an IPI) and
    /// loads the new EPTP before it runs another guest instruction; a vCPU in root mode
    /// loads it at its next VM entry. Once the call returns, `vcpu` no longer walks the
    /// old EPTP's tables (the backend frees them after a destroy).
    ///
    /// The backend makes this call holding `vcpu`'s short slot lock, so the platform must
    /// not wait for a vCPU that is in root mode (it may be spinning on that lock inside the
    /// backend): it records the EPTP for that vCPU's next entry and returns. A kicked vCPU
    /// acknowledges the kick in its exit handler before it calls into the backend.
    ///
    /// # Errors
    /// [`PlatformError::NoSuchVcpu`]; a platform failure.
    fn set_eptp(&self, vcpu: VcpuId, eptp: EptPointer) -> Result<(), PlatformError>;

    /// Writes entry `index` (0..512) of the EPTP list that VMFUNC leaf 0 selects from
    /// (SDM Vol. 3C §25.6.14, §27.5.6.3). The backend keeps view `n`'s EPTP in entry `n`
    /// when the platform offers the list. The default has no list.
    ///
    /// # Errors
    /// [`PlatformError::Unsupported`] by default.
    fn set_eptp_list_entry(
        &self,
        index: u16,
        eptp: Option<EptPointer>,
    ) -> Result<(), PlatformError> {
        let _ = (index, eptp);
        Err(PlatformError::Unsupported("the VMFUNC EPTP list"))
    }

    /// Turns `control` on or off for `vcpu` (a request: see the module docs). It takes
    /// effect as [`Platform::set_eptp`] does: at the next VM entry of the vCPU whose exit
    /// the calling CPU handles, before returning for any other vCPU.
    ///
    /// # Errors
    /// [`PlatformError::Unsupported`] for a control the platform does not offer;
    /// [`PlatformError::NoSuchVcpu`].
    fn set_control(&self, vcpu: VcpuId, control: Control, on: bool) -> Result<(), PlatformError>;

    /// Injects `event` at `vcpu`'s next VM entry (the VM-entry interruption-information,
    /// error-code and instruction-length fields, SDM Vol. 3C §25.8.3; CR2 set first when
    /// `event.cr2` is `Some`).
    ///
    /// # Errors
    /// [`PlatformError::NoSuchVcpu`]; a platform failure.
    fn inject(&self, vcpu: VcpuId, event: Interrupt) -> Result<(), PlatformError>;

    /// The guest state of `vcpu` (from its VMCS guest-state area and the saved GPRs). For
    /// a running vCPU other than the calling CPU's, the values may be stale.
    ///
    /// # Errors
    /// [`PlatformError::NoSuchVcpu`].
    fn registers(&self, vcpu: VcpuId) -> Result<Registers, PlatformError>;

    /// Writes the guest state of `vcpu`. The backend writes the vCPU whose exit the
    /// calling CPU handles (a handler's register response), or any vCPU when the
    /// introspection side asks (`VmiDriver::set_registers`, meant for a paused VM). It
    /// never changes the guest's RFLAGS.IF, and has no way to change its interruptibility
    /// state.
    ///
    /// # Errors
    /// [`PlatformError::NoSuchVcpu`].
    fn set_registers(&self, vcpu: VcpuId, registers: &Registers) -> Result<(), PlatformError>;

    /// Emulates the instruction that caused `exit` on `vcpu` as if the EPT allowed the
    /// access, and advances RIP past it. The default cannot.
    ///
    /// # Errors
    /// [`PlatformError::Unsupported`] by default, or for an instruction the platform
    /// cannot emulate.
    fn emulate(&self, vcpu: VcpuId, exit: &ExitInfo) -> Result<(), PlatformError> {
        let _ = (vcpu, exit);
        Err(PlatformError::Unsupported("instruction emulation"))
    }

    /// Stops every vCPU (each leaves guest mode and waits) and returns once all have.
    /// Never called from a CPU handling a VM exit.
    ///
    /// # Errors
    /// A platform failure.
    fn pause_all(&self) -> Result<(), PlatformError>;

    /// Lets every vCPU run again after [`Platform::pause_all`].
    ///
    /// # Errors
    /// A platform failure.
    fn resume_all(&self) -> Result<(), PlatformError>;

    /// A monotonic clock: the time since some fixed point.
    fn now(&self) -> Duration;
}
