//! The exit path: a VM exit becomes a `VmiEvent` on the exiting CPU, the handler's
//! response is applied, and the hypervisor learns what to do next.
//!
//! # Steps, and the guest's interrupt flag
//! The backend never changes the guest's RFLAGS.IF or its interruptibility state (a
//! handler's register response keeps the guest's IF too). illusion-rs and HyperDbg clear
//! IF around their single step; here, while a vCPU executes one instruction in a
//! *permissive* view, an external interrupt is held instead:
//!
//! ```text
//!            fast_singlestep(S) / switch_view(S)+toggle_singlestep   (in view H)
//!   Idle ───────────────────────────────────────────────────────────────► Stepping
//!     ▲     EPTP := S, MTF on, and if RFLAGS.IF = 1:                         │
//!     │     external-interrupt exiting on (the interrupt stays pending      │
//!     │     in the local APIC: "acknowledge interrupt on exit" is off)      │
//!     │                                                                     │
//!     │ MTF exit (the instruction ran):                                     │
//!     ├─── fast: EPTP := H, MTF as the user's single-step, ext. exiting off, │
//!     │          resume, no event                                           │
//!     │    handler: ext. exiting off, Singlestep event in S                 │
//!     │                                                                     │
//!     │ external-interrupt exit (the instruction did not run):              │
//!     └─── EPTP := H, MTF off, ext. exiting off, remember Redo{RIP, CR3,    │
//!          frame, step}; resume: the interrupt is delivered in H, by the    │
//!          guest's own IDT, at VM entry.                                    │
//!                                                                           │
//!   Redo: the next EPT violation of this vCPU at the same RIP, CR3 and frame,
//!   in H, starts the same step again without an event; any other event drops it.
//! ```
//!
//! With IF = 0 no interrupt can be delivered before the instruction, and after it the
//! MTF exit comes first (SDM Vol. 3C §26.7.2 and the priorities of §27.2 / Vol. 3A
//! §7.9), so the backend does not hold interrupts then: external-interrupt exiting would
//! exit regardless of IF and the step could never finish.
//!
//! # Delivery
//! Inline: the handler runs on the exiting CPU, inside [`EptBackend::on_exit`]. Queued:
//! the event goes into a fixed-capacity queue that `wait_for_event` serves on another CPU;
//! the exiting CPU spins on its response slot, calling [`Platform::relax`]. When the queue
//! is full the [`QueueFull`] policy applies: wait for room (no event is
//! lost; a queue no shorter than the number of vCPUs is never full, since each vCPU has
//! at most one event outstanding), or resume the guest as if answered "continue" and
//! count the event. No lock is held across the handler call: the vCPU's slot, the queue
//! and the state lock are each taken for a few loads and stores.
//!
//! # What an event cannot say
//! An XSETBV exit for XCR0 (exit reason 55; XSETBV exits unconditionally in VMX non-root
//! operation, SDM Vol. 3C §26.1.2) becomes a [`ControlRegisterEvent`] for
//! [`ControlRegister::Xcr0`] whose `new` is EDX:EAX and whose **`old` is 0, meaning
//! unknown**: the exit does not report the current XCR0, and introvisor's [`Registers`]
//! has no XCR0 field, so the backend cannot read it. A handler that needs the old value
//! keeps the last `new` it saw, or asks the hypervisor, which keeps the guest's XCR0
//! itself (the VMCS does not hold it). CR0, CR3 and CR4 events carry the real old value.
//!
//! # Contract
//! For any exit information (see [`Exit::decode`]) the path returns `Ok` or a named
//! error, never panics. A violation of a frame the current rights already allow is
//! spurious (a stale cached mapping from before a loosening): it is answered with INVEPT
//! single-context on this CPU and no event. An exit the backend did not ask for is
//! [`ExitAction::NotMine`].

use core::sync::atomic::Ordering;

use introvisor::arch::amd64::{
    Amd64, ControlRegister, ControlRegisterEvent, CpuidEvent, EventMonitor, EventReason, Interrupt,
    InterruptEvent, InterruptType, IoEvent, MemoryAccessEvent, MsrEvent, Registers,
};
use introvisor::{
    Pa, Va, VcpuId, View, VmiEvent, VmiEventFlags, VmiEventResponse, VmiEventResponseFlags,
};
use spin::Mutex;

use crate::backend::{EptBackend, ExitAction, InlineHandler, QueueFull};
use crate::error::EptError;
use crate::exit::{CrAccessType, Exit, ExitInfo, InterruptionInfo};
use crate::platform::{Control, Platform};

/// RFLAGS.IF (SDM Vol. 1 §3.4.3).
const RFLAGS_IF: u64 = 1 << 9;

/// How many MSRs and I/O ports can be monitored at once.
pub const MONITOR_CAPACITY: usize = 32;

/// Who asked for a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StepKind {
    /// `FAST_SINGLESTEP`: back to the home view after one instruction, no event.
    Fast,
    /// A view switch with single-stepping turned on: a Singlestep event after it.
    Handler,
}

/// One instruction in a view other than the vCPU's home view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Step {
    /// The view the vCPU returns to.
    pub(crate) home: View,
    /// The view it steps in.
    pub(crate) view: View,
    pub(crate) kind: StepKind,
    /// Whether external-interrupt exiting was turned on for it.
    pub(crate) holding: bool,
    /// The guest frame whose violation started it (`u64::MAX` for none).
    pub(crate) frame: u64,
}

/// A step abandoned for an interrupt, to start again at the same place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Redo {
    pub(crate) rip: u64,
    pub(crate) cr3: u64,
    pub(crate) step: Step,
}

/// One vCPU's backend state; locked only for short reads and writes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VcpuState {
    pub(crate) view: View,
    /// The user's single-step (TOGGLE_SINGLESTEP, the Singlestep monitor).
    pub(crate) singlestep: bool,
    pub(crate) step: Option<Step>,
    pub(crate) redo: Option<Redo>,
    /// The exit being handled.
    pub(crate) exit: Option<Exit>,
}

impl VcpuState {
    pub(crate) const fn new() -> Self {
        Self {
            view: View(0),
            singlestep: false,
            step: None,
            redo: None,
            exit: None,
        }
    }
}

/// The event sources turned on.
#[derive(Clone, Debug)]
pub(crate) struct Monitors {
    /// Bit per [`ControlRegister`]: CR0, CR3, CR4, XCR0.
    crs: u8,
    exceptions: u32,
    cpuid: bool,
    msrs: heapless::Vec<u32, MONITOR_CAPACITY>,
    ports: heapless::Vec<u16, MONITOR_CAPACITY>,
}

const fn cr_bit(cr: ControlRegister) -> u8 {
    match cr {
        ControlRegister::Cr0 => 1,
        ControlRegister::Cr3 => 2,
        ControlRegister::Cr4 => 4,
        ControlRegister::Xcr0 => 8,
    }
}

impl Monitors {
    pub(crate) const fn new() -> Self {
        Self {
            crs: 0,
            exceptions: 0,
            cpuid: false,
            msrs: heapless::Vec::new(),
            ports: heapless::Vec::new(),
        }
    }

    fn has_cr(&self, cr: ControlRegister) -> bool {
        self.crs & cr_bit(cr) != 0
    }

    fn has_exception(&self, vector: u8) -> bool {
        vector < 32 && self.exceptions & (1 << vector) != 0
    }
}

/// The value of general-purpose register `n` in the encoding of Table 28-3 (0 RAX,
/// 1 RCX, 2 RDX, 3 RBX, 4 RSP, 5 RBP, 6 RSI, 7 RDI, 8 to 15 R8 to R15).
const fn gpr(regs: &Registers, n: u8) -> u64 {
    match n & 0xf {
        0 => regs.rax,
        1 => regs.rcx,
        2 => regs.rdx,
        3 => regs.rbx,
        4 => regs.rsp,
        5 => regs.rbp,
        6 => regs.rsi,
        7 => regs.rdi,
        8 => regs.r8,
        9 => regs.r9,
        10 => regs.r10,
        11 => regs.r11,
        12 => regs.r12,
        13 => regs.r13,
        14 => regs.r14,
        _ => regs.r15,
    }
}

/// EDX:EAX.
const fn edx_eax(regs: &Registers) -> u64 {
    ((regs.rdx & 0xffff_ffff) << 32) | (regs.rax & 0xffff_ffff)
}

/// What kind of exit an event came from, for applying its response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Completion {
    /// The guest retries or continues: `Resume`.
    Retry,
    /// An instruction the hypervisor carries out (`Complete`) unless denied (`Skip`).
    Instruction,
}

impl<P: Platform, const VIEWS: usize, const FRAMES: usize, const VCPUS: usize, const QUEUE: usize>
    EptBackend<P, VIEWS, FRAMES, VCPUS, QUEUE>
{
    /// The exit entry point: the hypervisor's exit handler calls it on the CPU that took
    /// the exit, for `vcpu`, with the exit's VMCS fields. With `handler`, the event is
    /// answered inline on this CPU; with `None`, it goes to the queue that
    /// [`VmiDriver::wait_for_event`](introvisor::VmiDriver::wait_for_event) serves on
    /// another CPU, and this CPU waits (calling [`Platform::relax`]) for the response.
    /// Then the response is applied, and the returned [`ExitAction`] says what the
    /// hypervisor does next. See the [module docs](crate::events) for the step state machine.
    ///
    /// # Errors
    /// [`EptError::NoSuchVcpu`]; a decoding error (see [`Exit::decode`]); a platform error
    /// while applying the response (the vCPU's state is then as far as it got; the
    /// hypervisor may resume it); [`EptError::Platform`] with `Unsupported` for an
    /// `emulate` response the platform cannot carry out.
    pub fn on_exit(
        &self,
        vcpu: VcpuId,
        exit: &ExitInfo,
        handler: Option<&mut InlineHandler<'_>>,
    ) -> Result<ExitAction, EptError> {
        let slot = self.vcpu_slot(vcpu)?;
        let decoded = Exit::decode(exit)?;
        self.lock(slot, Some(vcpu)).exit = Some(decoded);
        let result = self.dispatch(vcpu, slot, exit, decoded, handler);
        self.lock(slot, Some(vcpu)).exit = None;
        result
    }

    fn dispatch(
        &self,
        vcpu: VcpuId,
        slot: &Mutex<VcpuState>,
        exit: &ExitInfo,
        decoded: Exit,
        handler: Option<&mut InlineHandler<'_>>,
    ) -> Result<ExitAction, EptError> {
        let monitors = self.lock(&self.monitors, Some(vcpu)).clone();
        // The view the exit happened in, read once: the rights check, the redo and the
        // event all use it, even if a concurrent `destroy` moves the vCPU meanwhile (the
        // event then names the view the access was refused in, not the one the vCPU
        // resumes in).
        let view = self.lock(slot, Some(vcpu)).view;
        let (reason, completion, regs) = match decoded {
            Exit::MonitorTrap => return self.on_monitor_trap(vcpu, slot, exit, handler),
            Exit::ExternalInterrupt => return self.on_external_interrupt(vcpu, slot),
            Exit::EptViolation {
                qualification,
                gpa,
                gla,
            } => {
                let access = qualification.access();
                if access.is_empty() {
                    return Err(EptError::InvalidExitInformation(
                        "EPT violation without an access type",
                    ));
                }
                match self.translate(view, Pa(gpa)) {
                    Ok(t) if t.access.contains(access) => {
                        // Spurious: a stale, tighter mapping from before a loosening.
                        let eptp = self.eptp(view).unwrap_or(self.default_eptp);
                        self.platform.invept(self.scope(Some(eptp)));
                        self.reinject_vectoring(vcpu, exit)?;
                        return Ok(ExitAction::Resume);
                    }
                    Ok(_) => {}
                    // The view was destroyed while the vCPU ran in it: the vCPU is in the
                    // default view now; let it retry there.
                    Err(EptError::NoSuchView(_)) => {
                        self.platform.invept(self.scope(None));
                        self.reinject_vectoring(vcpu, exit)?;
                        return Ok(ExitAction::Resume);
                    }
                    Err(_) => return Ok(ExitAction::NotMine),
                }
                let regs = self.platform.registers(vcpu)?;
                if self.try_redo(vcpu, slot, view, &regs, gpa)? {
                    self.reinject_vectoring(vcpu, exit)?;
                    return Ok(ExitAction::Resume);
                }
                let reason = EventReason::MemoryAccess(MemoryAccessEvent {
                    pa: Pa(gpa),
                    va: gla.map(Va),
                    access,
                });
                (reason, Completion::Retry, regs)
            }
            Exit::Exception(e) => {
                if e.typ == InterruptType::Nmi || !monitors.has_exception(e.vector) {
                    return Ok(ExitAction::NotMine);
                }
                let mut regs = self.platform.registers(vcpu)?;
                if e.vector == introvisor::arch::amd64::vector::PF {
                    // CR2 is not yet written at a #PF exit; the qualification holds it.
                    regs.cr2 = e.qualification;
                }
                let reason = EventReason::Interrupt(InterruptEvent {
                    vector: e.vector,
                    typ: e.typ,
                    error_code: e.error_code,
                    instruction_length: e.instruction_length,
                });
                (reason, Completion::Retry, regs)
            }
            Exit::CrAccess(c) => {
                let Some(register) = c.register() else {
                    return Ok(ExitAction::NotMine);
                };
                if !monitors.has_cr(register) {
                    return Ok(ExitAction::NotMine);
                }
                let regs = self.platform.registers(vcpu)?;
                let old = match register {
                    ControlRegister::Cr0 => regs.cr0,
                    ControlRegister::Cr3 => regs.cr3,
                    _ => regs.cr4,
                };
                let new = match c.access {
                    CrAccessType::MovToCr => gpr(&regs, c.gpr),
                    CrAccessType::MovFromCr => return Ok(ExitAction::NotMine),
                    // CLTS clears CR0.TS (bit 3).
                    CrAccessType::Clts => old & !(1 << 3),
                    // LMSW loads CR0 bits 3:0 but cannot clear PE (SDM Vol. 2A, LMSW).
                    CrAccessType::Lmsw => (old & !0xf) | u64::from(c.lmsw_source & 0xf) | (old & 1),
                };
                let reason =
                    EventReason::WriteControlRegister(ControlRegisterEvent { register, old, new });
                (reason, Completion::Instruction, regs)
            }
            Exit::Xsetbv => {
                let regs = self.platform.registers(vcpu)?;
                if !monitors.has_cr(ControlRegister::Xcr0) || regs.rcx & 0xffff_ffff != 0 {
                    return Ok(ExitAction::NotMine);
                }
                let reason = EventReason::WriteControlRegister(ControlRegisterEvent {
                    register: ControlRegister::Xcr0,
                    // Unknown: `Registers` has no XCR0 (module docs).
                    old: 0,
                    new: edx_eax(&regs),
                });
                (reason, Completion::Instruction, regs)
            }
            Exit::Wrmsr => {
                let regs = self.platform.registers(vcpu)?;
                let index = (regs.rcx & 0xffff_ffff) as u32;
                if !monitors.msrs.contains(&index) {
                    return Ok(ExitAction::NotMine);
                }
                let reason = EventReason::WriteMsr(MsrEvent {
                    index,
                    old: None,
                    new: edx_eax(&regs),
                });
                (reason, Completion::Instruction, regs)
            }
            Exit::Cpuid => {
                if !monitors.cpuid {
                    return Ok(ExitAction::NotMine);
                }
                let regs = self.platform.registers(vcpu)?;
                let reason = EventReason::Cpuid(CpuidEvent {
                    leaf: (regs.rax & 0xffff_ffff) as u32,
                    subleaf: (regs.rcx & 0xffff_ffff) as u32,
                    instruction_length: u8::try_from(exit.instruction_length).unwrap_or(0),
                });
                (reason, Completion::Instruction, regs)
            }
            Exit::Io(io) => {
                if !monitors.ports.contains(&io.port) {
                    return Ok(ExitAction::NotMine);
                }
                let regs = self.platform.registers(vcpu)?;
                let reason = EventReason::Io(IoEvent {
                    port: io.port,
                    size: io.size,
                    direction: io.direction,
                });
                (reason, Completion::Instruction, regs)
            }
            _ => return Ok(ExitAction::NotMine),
        };
        self.lock(slot, Some(vcpu)).redo = None;
        let event = VmiEvent::new(vcpu, Some(view), VmiEventFlags::VCPU_PAUSED, regs, reason);
        let response = self.deliver(vcpu, &event, handler);
        self.apply(vcpu, slot, exit, &event, completion, response)
    }

    /// A monitor-trap exit: the end of a step, or the user's single step.
    fn on_monitor_trap(
        &self,
        vcpu: VcpuId,
        slot: &Mutex<VcpuState>,
        exit: &ExitInfo,
        handler: Option<&mut InlineHandler<'_>>,
    ) -> Result<ExitAction, EptError> {
        // Read once, as in `dispatch`: the event names the view the vCPU was in when the
        // exit came (after a fast step, the home view it went back to).
        let (step, singlestep, mut view) = {
            let s = self.lock(slot, Some(vcpu));
            (s.step, s.singlestep, s.view)
        };
        match step {
            Some(step) if step.kind == StepKind::Fast => {
                view = self.end_step(vcpu, slot, step)?;
                if !singlestep {
                    return Ok(ExitAction::Resume);
                }
            }
            Some(step) => {
                if step.holding {
                    self.platform
                        .set_control(vcpu, Control::ExternalInterruptExiting, false)?;
                }
                self.lock(slot, Some(vcpu)).step = None;
            }
            None if !singlestep => return Ok(ExitAction::NotMine),
            None => {}
        }
        let regs = self.platform.registers(vcpu)?;
        self.lock(slot, Some(vcpu)).redo = None;
        let event = VmiEvent::new(
            vcpu,
            Some(view),
            VmiEventFlags::VCPU_PAUSED,
            regs,
            EventReason::Singlestep,
        );
        let response = self.deliver(vcpu, &event, handler);
        self.apply(vcpu, slot, exit, &event, Completion::Retry, response)
    }

    /// An external-interrupt exit: a held interrupt during a step ends the step (see the
    /// module docs); any other is the hypervisor's.
    fn on_external_interrupt(
        &self,
        vcpu: VcpuId,
        slot: &Mutex<VcpuState>,
    ) -> Result<ExitAction, EptError> {
        let step = self.lock(slot, Some(vcpu)).step;
        let Some(step) = step.filter(|s| s.holding) else {
            return Ok(ExitAction::NotMine);
        };
        let regs = self.platform.registers(vcpu)?;
        if step.kind == StepKind::Handler {
            // The handler's single step starts again with the redo.
            self.lock(slot, Some(vcpu)).singlestep = false;
        }
        self.end_step(vcpu, slot, step)?;
        self.lock(slot, Some(vcpu)).redo = Some(Redo {
            rip: regs.rip,
            cr3: regs.cr3,
            step,
        });
        Ok(ExitAction::Resume)
    }

    /// Starts the remembered step again if this violation (in `view`) is the one it was
    /// for.
    fn try_redo(
        &self,
        vcpu: VcpuId,
        slot: &Mutex<VcpuState>,
        view: View,
        regs: &Registers,
        gpa: u64,
    ) -> Result<bool, EptError> {
        let redo = self.lock(slot, Some(vcpu)).redo;
        let Some(redo) = redo else {
            return Ok(false);
        };
        let matches = redo.rip == regs.rip
            && redo.cr3 == regs.cr3
            && (redo.step.frame == u64::MAX || redo.step.frame == gpa >> 12)
            && view == redo.step.home;
        self.lock(slot, Some(vcpu)).redo = None;
        if !matches {
            return Ok(false);
        }
        if redo.step.kind == StepKind::Handler {
            self.lock(slot, Some(vcpu)).singlestep = true;
        }
        self.begin_step(vcpu, slot, redo.step.view, redo.step.kind, regs.rflags, gpa)?;
        Ok(true)
    }

    /// Puts `vcpu` into `target` for one instruction (see the module docs).
    fn begin_step(
        &self,
        vcpu: VcpuId,
        slot: &Mutex<VcpuState>,
        target: View,
        kind: StepKind,
        rflags: u64,
        gpa: u64,
    ) -> Result<(), EptError> {
        let eptp = self.eptp(target)?;
        let holding = rflags & RFLAGS_IF != 0;
        // A step started from inside another keeps the first one's home.
        let home = {
            let s = self.lock(slot, Some(vcpu));
            s.step.map_or(s.view, |st| st.home)
        };
        self.platform.set_eptp(vcpu, eptp)?;
        self.platform
            .set_control(vcpu, Control::MonitorTrap, true)?;
        if holding {
            self.platform
                .set_control(vcpu, Control::ExternalInterruptExiting, true)?;
        }
        let mut s = self.lock(slot, Some(vcpu));
        s.step = Some(Step {
            home,
            view: target,
            kind,
            holding,
            frame: if gpa == u64::MAX { u64::MAX } else { gpa >> 12 },
        });
        s.view = target;
        Ok(())
    }

    /// Ends a step: back to its home view (the default if the home is gone), the monitor
    /// trap as the user's single step wants it, interrupts no longer held. Returns the
    /// view the vCPU went back to.
    fn end_step(
        &self,
        vcpu: VcpuId,
        slot: &Mutex<VcpuState>,
        step: Step,
    ) -> Result<View, EptError> {
        let (home, eptp) = match self.eptp(step.home) {
            Ok(e) => (step.home, e),
            Err(_) => (View(0), self.default_eptp),
        };
        let singlestep = {
            let mut s = self.lock(slot, Some(vcpu));
            s.step = None;
            s.redo = None;
            s.view = home;
            s.singlestep
        };
        self.platform.set_eptp(vcpu, eptp)?;
        self.platform
            .set_control(vcpu, Control::MonitorTrap, singlestep)?;
        if step.holding {
            self.platform
                .set_control(vcpu, Control::ExternalInterruptExiting, false)?;
        }
        Ok(home)
    }

    /// Hands `event` to the inline handler or the queue, and returns the response.
    fn deliver(
        &self,
        vcpu: VcpuId,
        event: &VmiEvent<Amd64>,
        handler: Option<&mut InlineHandler<'_>>,
    ) -> VmiEventResponse<Amd64> {
        let start = self.platform.now();
        let response = match handler {
            Some(h) => h(event),
            None => self.enqueue_and_wait(vcpu, event),
        };
        let spent = self.platform.now().saturating_sub(start);
        self.overhead_ns.fetch_add(
            u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        response
    }

    /// Queues `event` and waits for its response (module docs, "Delivery").
    fn enqueue_and_wait(&self, vcpu: VcpuId, event: &VmiEvent<Amd64>) -> VmiEventResponse<Amd64> {
        let Some(slot) = self.responses.get(usize::from(vcpu.0)) else {
            return VmiEventResponse::continue_();
        };
        *self.lock(slot, Some(vcpu)) = None;
        loop {
            let pushed = self.lock(&self.queue, Some(vcpu)).push_back(*event).is_ok();
            if pushed {
                break;
            }
            match self.queue_full {
                QueueFull::Wait => self.platform.relax(Some(vcpu)),
                QueueFull::Resume => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return VmiEventResponse::continue_();
                }
            }
        }
        loop {
            if let Some(response) = self.lock(slot, Some(vcpu)).take() {
                return response;
            }
            self.platform.relax(Some(vcpu));
        }
    }

    /// Serves the queue: every event in it, or the first that comes within `timeout`.
    /// Returns whether it served any.
    pub(crate) fn serve_queue(
        &self,
        timeout: core::time::Duration,
        handler: &mut InlineHandler<'_>,
    ) -> bool {
        let deadline = self.platform.now().saturating_add(timeout);
        let mut served = false;
        loop {
            let event = self.lock(&self.queue, None).pop_front();
            match event {
                Some(event) => {
                    let response = handler(&event);
                    if let Some(slot) = self.responses.get(usize::from(event.vcpu.0)) {
                        *self.lock(slot, None) = Some(response);
                    }
                    served = true;
                }
                None if served => return true,
                None if self.platform.now() >= deadline => return false,
                None => self.platform.relax(None),
            }
        }
    }

    /// The number of queued events.
    pub(crate) fn queued(&self) -> usize {
        self.lock(&self.queue, None).len()
    }

    /// Applies `response` to `event` (order: registers, view or fast single step,
    /// single-step toggle, emulation or denial, reinjection).
    fn apply(
        &self,
        vcpu: VcpuId,
        slot: &Mutex<VcpuState>,
        exit: &ExitInfo,
        event: &VmiEvent<Amd64>,
        completion: Completion,
        response: VmiEventResponse<Amd64>,
    ) -> Result<ExitAction, EptError> {
        let regs = &event.registers;
        let mut rflags = regs.rflags;
        if let Some(mut gp) = response.registers {
            // The guest's IF is never changed by the backend (module docs).
            gp.rflags = (gp.rflags & !RFLAGS_IF) | (regs.rflags & RFLAGS_IF);
            rflags = gp.rflags;
            // The event holds the full register set read at this exit, and nothing has
            // changed it since: no second read of the VMCS.
            let mut full = *regs;
            full.set_gp(&gp);
            self.platform.set_registers(vcpu, &full)?;
        }
        let flags = response.flags;
        let mut toggle = flags.contains(VmiEventResponseFlags::TOGGLE_SINGLESTEP);
        let gpa = match event.reason {
            EventReason::MemoryAccess(m) => m.pa.0,
            _ => u64::MAX,
        };
        if flags.contains(VmiEventResponseFlags::FAST_SINGLESTEP) {
            let target = response.view.ok_or(EptError::InvalidExitInformation(
                "fast single step without a view",
            ))?;
            self.begin_step(vcpu, slot, target, StepKind::Fast, rflags, gpa)?;
        } else if let Some(target) = response.view {
            let (current, singlestep) = {
                let s = self.lock(slot, Some(vcpu));
                (s.view, s.singlestep)
            };
            if target != current {
                if toggle && !singlestep {
                    self.lock(slot, Some(vcpu)).singlestep = true;
                    self.begin_step(vcpu, slot, target, StepKind::Handler, rflags, gpa)?;
                    toggle = false;
                } else {
                    let eptp = self.eptp(target)?;
                    self.platform.set_eptp(vcpu, eptp)?;
                    self.lock(slot, Some(vcpu)).view = target;
                }
            }
        }
        if toggle {
            let (on, stepping) = {
                let mut s = self.lock(slot, Some(vcpu));
                s.singlestep = !s.singlestep;
                (s.singlestep, s.step.is_some())
            };
            if !stepping {
                self.platform.set_control(vcpu, Control::MonitorTrap, on)?;
            }
        }
        let mut action = match completion {
            Completion::Retry => ExitAction::Resume,
            Completion::Instruction => ExitAction::Complete,
        };
        if flags.contains(VmiEventResponseFlags::EMULATE) && completion == Completion::Retry {
            self.platform.emulate(vcpu, exit)?;
        }
        if flags.contains(VmiEventResponseFlags::DENY) && completion == Completion::Instruction {
            action = ExitAction::SkipInstruction;
        }
        // A CPUID exit whose response carries registers has been answered: the handler's
        // EAX..EDX are the result, and running CPUID again would overwrite them. The
        // hypervisor only advances RIP (the handler must not move it itself).
        if completion == Completion::Instruction
            && response.registers.is_some()
            && matches!(event.reason, EventReason::Cpuid(_))
        {
            action = ExitAction::SkipInstruction;
        }
        let mut injected = false;
        if flags.contains(VmiEventResponseFlags::REINJECT_INTERRUPT)
            && let EventReason::Interrupt(ie) = event.reason
        {
            let cr2 = Some(event.registers.cr2);
            self.platform.inject(vcpu, ie.reinjection(cr2))?;
            injected = true;
        }
        if action == ExitAction::Resume && !injected {
            self.reinject_vectoring(vcpu, exit)?;
        }
        Ok(action)
    }

    /// Re-injects the event whose delivery the exit interrupted (IDT-vectoring
    /// information, SDM Vol. 3C §25.9.3 and §28.2.4), as a hypervisor must when it
    /// resumes such an exit without emulating it.
    fn reinject_vectoring(&self, vcpu: VcpuId, exit: &ExitInfo) -> Result<(), EptError> {
        let info = InterruptionInfo(exit.idt_vectoring_information);
        if !info.valid() {
            return Ok(());
        }
        let Some(typ) = info.typ() else {
            return Ok(());
        };
        let interrupt = Interrupt {
            vector: info.vector(),
            typ,
            error_code: if info.error_code_valid() {
                Some(exit.idt_vectoring_error_code)
            } else {
                None
            },
            instruction_length: if typ.is_software() {
                u8::try_from(exit.instruction_length).unwrap_or(0)
            } else {
                0
            },
            cr2: None,
        };
        self.platform.inject(vcpu, interrupt)?;
        Ok(())
    }

    /// Turns an event source on (`on`) or off on every vCPU.
    pub(crate) fn monitor(&self, monitor: EventMonitor, on: bool) -> Result<(), EptError> {
        let control = match monitor {
            EventMonitor::Register(cr) => Some(Control::CrWrite(cr)),
            EventMonitor::Msr(i) => Some(Control::MsrWrite(i)),
            EventMonitor::Exception(v) if v < 32 => Some(Control::Exception(v)),
            EventMonitor::Exception(v) => return Err(EptError::InvalidVector(v)),
            EventMonitor::Singlestep => None,
            EventMonitor::Cpuid => Some(Control::Cpuid),
            EventMonitor::Io(p) => Some(Control::Io(p)),
        };
        {
            let mut m = self.lock(&self.monitors, None);
            match monitor {
                EventMonitor::Register(cr) if on => m.crs |= cr_bit(cr),
                EventMonitor::Register(cr) => m.crs &= !cr_bit(cr),
                EventMonitor::Msr(i) if on => {
                    if !m.msrs.contains(&i) {
                        m.msrs.push(i).map_err(|_| EptError::CapacityExceeded)?;
                    }
                }
                EventMonitor::Msr(i) => m.msrs.retain(|&x| x != i),
                EventMonitor::Exception(v) if on => m.exceptions |= 1 << v,
                EventMonitor::Exception(v) => m.exceptions &= !(1 << v),
                EventMonitor::Cpuid => m.cpuid = on,
                EventMonitor::Io(p) if on => {
                    if !m.ports.contains(&p) {
                        m.ports.push(p).map_err(|_| EptError::CapacityExceeded)?;
                    }
                }
                EventMonitor::Io(p) => m.ports.retain(|&x| x != p),
                EventMonitor::Singlestep => {}
            }
        }
        for v in 0..self.vcpu_count {
            let vcpu = VcpuId(v);
            match control {
                Some(c) => self.platform.set_control(vcpu, c, on)?,
                None => {
                    let stepping = {
                        let slot = self.vcpu_slot(vcpu)?;
                        let mut s = self.lock(slot, None);
                        s.singlestep = on;
                        s.step.is_some()
                    };
                    if !stepping {
                        self.platform.set_control(vcpu, Control::MonitorTrap, on)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Every event source off, every vCPU out of any step and single step.
    pub(crate) fn reset_monitors(&self) -> Result<(), EptError> {
        let m = self.lock(&self.monitors, None).clone();
        let mut result = Ok(());
        for cr in [
            ControlRegister::Cr0,
            ControlRegister::Cr3,
            ControlRegister::Cr4,
            ControlRegister::Xcr0,
        ] {
            if m.has_cr(cr) {
                result = result.and(self.monitor(EventMonitor::Register(cr), false));
            }
        }
        for v in 0..32u8 {
            if m.has_exception(v) {
                result = result.and(self.monitor(EventMonitor::Exception(v), false));
            }
        }
        for &i in &m.msrs {
            result = result.and(self.monitor(EventMonitor::Msr(i), false));
        }
        for &p in &m.ports {
            result = result.and(self.monitor(EventMonitor::Io(p), false));
        }
        if m.cpuid {
            result = result.and(self.monitor(EventMonitor::Cpuid, false));
        }
        result.and(self.monitor(EventMonitor::Singlestep, false))
    }
}
