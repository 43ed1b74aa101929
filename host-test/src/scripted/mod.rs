//! [`ScriptedDriver`]: an AMD64 guest whose events come from a script, for testing
//! handlers, sessions and probers end to end without a hypervisor.
//!
//! The driver holds guest-physical memory (a `Vec<u8>` from address 0), the registers,
//! view and single-step state of each vCPU, and a queue of [`Step`]s that a test pushes or
//! a replay file supplies (the text format is described in [`script`]). Each
//! [`wait_for_event`](introvisor::VmiDriver::wait_for_event) call runs the queue up to the
//! next event or timeout, hands the event to the handler, and applies the response as a
//! hypervisor would: registers, view switch, single-step toggle, denial of a register
//! write, reinjection.
//!
//! Everything a handler asks of the driver (responses, injected interrupts, monitors,
//! view switches, register writes, pauses) is recorded as an [`Action`] in a log that a
//! test inspects afterwards.
//!
//! Injected interrupts are delivered when the vCPU resumes, at the end of the
//! `wait_for_event` call: the driver sets CR2 for a #PF, then calls the guest model (see
//! [`ScriptedDriver::on_interrupt`]), a closure that plays the guest's handler, e.g.
//! bringing in the page a #PF asks for.
//!
//! When the queue is empty, `wait_for_event` returns
//! `VmiError::Driver("scripted: no events left")`: a script never blocks.
//!
//! # Allocation
//! Pushing steps and growing the log allocate; running the loop does not, as long as
//! the log has room (it reserves [`DEFAULT_LOG_CAPACITY`] entries; see
//! [`ScriptedDriver::reserve_log`]). A test can therefore count allocations across
//! event-loop iterations.
//!
//! ```
//! use introvisor::{NoOs, VmiContext, VmiCore, VmiEventResponse, VmiHandler, VmiSession, View};
//! use introvisor::arch::amd64::Amd64;
//! use introvisor_host_test::scripted::{Action, ScriptedDriver};
//!
//! let driver = ScriptedDriver::new(vec![0; 0x10000], 1);
//! driver.create_views(1);
//! driver.load_script("event 0 breakpoint\nevent 0 singlestep\n")?;
//!
//! struct Stepper(u32);
//! impl VmiHandler<ScriptedDriver, NoOs> for Stepper {
//!     fn handle_event(&mut self, ctx: VmiContext<'_, ScriptedDriver, NoOs>) -> VmiEventResponse<Amd64> {
//!         self.0 += 1;
//!         if ctx.reason().as_interrupt().is_some() {
//!             VmiEventResponse::continue_().toggle_singlestep().switch_view(View(1))
//!         } else {
//!             VmiEventResponse::continue_().toggle_singlestep().switch_view(View(0))
//!         }
//!     }
//!     fn finished(&self) -> bool { self.0 == 2 }
//! }
//!
//! let core = VmiCore::new(driver);
//! VmiSession::new(&core, &NoOs).handle(&mut Stepper(0))?;
//! let switches: Vec<_> = core.driver().log().into_iter()
//!     .filter_map(|a| match a { Action::ViewSwitched { view, .. } => Some(view), _ => None })
//!     .collect();
//! assert_eq!(switches, [View(1), View(0)]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod script;

use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use introvisor::arch::amd64::{
    Amd64, ControlRegister, EventMonitor, EventReason, GpRegisters, Interrupt, Registers, vector,
};
use introvisor::driver::EventHandler;
use introvisor::{
    Gfn, MemoryAccess, Pa, VcpuId, View, VmiDriver, VmiError, VmiEvent, VmiEventResponse,
    VmiEventResponseFlags, VmiInfo,
};
use introvisor_host::{HostDriver, HostPage};

pub use script::{ScriptError, ScriptedEvent, Step, parse_script};

/// The log entries reserved up front.
pub const DEFAULT_LOG_CAPACITY: usize = 4096;

/// The error `wait_for_event` returns once the script has no step left.
pub const NO_EVENTS_LEFT: VmiError = VmiError::Driver("scripted: no events left");

/// One thing the driver did, in the order it happened.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// An event was delivered and the handler answered it.
    Handled {
        /// The vCPU.
        vcpu: VcpuId,
        /// The event's reason.
        reason: EventReason,
        /// The handler's response, as given.
        response: VmiEventResponse<Amd64>,
    },
    /// An interrupt was queued for a vCPU: by `inject_interrupt`, or by a response's
    /// reinjection.
    Injected {
        /// The vCPU.
        vcpu: VcpuId,
        /// The interrupt.
        interrupt: Interrupt,
        /// Whether it was the event's own interrupt, reinjected by the response.
        reinjected: bool,
    },
    /// A monitor was enabled.
    MonitorEnabled(EventMonitor),
    /// A monitor was disabled.
    MonitorDisabled(EventMonitor),
    /// A vCPU (`Some`, by a response) or every vCPU (`None`, by `switch_to_view`) moved to
    /// a view.
    ViewSwitched {
        /// The vCPU, or every vCPU.
        vcpu: Option<VcpuId>,
        /// The view.
        view: View,
    },
    /// A vCPU stepped one instruction in `view` and came back to its own view.
    FastSinglestep {
        /// The vCPU.
        vcpu: VcpuId,
        /// The view the instruction ran in.
        view: View,
    },
    /// A response set a vCPU's general-purpose registers.
    RegistersSet {
        /// The vCPU.
        vcpu: VcpuId,
        /// The registers.
        registers: GpRegisters,
    },
    /// `set_registers` wrote a vCPU's whole register file.
    RegistersWritten {
        /// The vCPU.
        vcpu: VcpuId,
    },
    /// A response toggled single-stepping.
    SinglestepToggled {
        /// The vCPU.
        vcpu: VcpuId,
        /// Whether it is now on.
        enabled: bool,
    },
    /// A response asked for the instruction to be emulated.
    Emulated {
        /// The vCPU.
        vcpu: VcpuId,
    },
    /// A response denied a register write: the register kept its value.
    Denied {
        /// The vCPU.
        vcpu: VcpuId,
    },
    /// A response asked for something the driver could not do; nothing was changed for
    /// that request.
    Rejected {
        /// The vCPU.
        vcpu: VcpuId,
        /// Why.
        why: &'static str,
    },
    /// A view was created.
    ViewCreated(View),
    /// A view was destroyed.
    ViewDestroyed(View),
    /// The rights of a frame in a view were set.
    MemoryAccessSet {
        /// The frame.
        gfn: Gfn,
        /// The view.
        view: View,
        /// The rights.
        access: MemoryAccess,
    },
    /// The VM was paused.
    Paused,
    /// The VM was resumed.
    Resumed,
    /// `reset_state` dropped monitors and views.
    StateReset,
}

/// The guest model: called for each interrupt delivered to a vCPU, with guest memory.
type InterruptHook = Box<dyn FnMut(&mut [u8], VcpuId, &Interrupt) + Send>;

#[derive(Clone, Copy, Default)]
struct Vcpu {
    registers: Registers,
    view: View,
    singlestep: bool,
}

struct State {
    steps: VecDeque<Step>,
    events_queued: usize,
    vcpus: Vec<Vcpu>,
    monitors: Vec<EventMonitor>,
    /// Views other than the default, with their default rights.
    views: BTreeMap<u16, MemoryAccess>,
    next_view: u16,
    access: BTreeMap<(u16, u64), MemoryAccess>,
    /// Interrupts injected and not yet delivered, at most one per vCPU.
    pending: Vec<(VcpuId, Interrupt)>,
    hook: Option<InterruptHook>,
    log: Vec<Action>,
    paused: u32,
    overhead: Duration,
}

impl State {
    fn vcpu(&mut self, vcpu: VcpuId) -> Result<&mut Vcpu, VmiError> {
        self.vcpus
            .get_mut(usize::from(vcpu.0))
            .ok_or(VmiError::NotFound)
    }

    fn view_exists(&self, view: View) -> bool {
        view.0 == 0 || self.views.contains_key(&view.0)
    }
}

/// An AMD64 guest driven by a script: see the [module documentation](self).
pub struct ScriptedDriver {
    /// Guest memory: a writable host buffer, whose reads and page handles this driver
    /// lends as they are.
    memory: HostDriver,
    state: Mutex<State>,
    clock: Instant,
}

impl ScriptedDriver {
    /// A guest with `memory` as its physical memory (from address 0) and `vcpus` vCPUs,
    /// all in view 0 with zeroed registers, and no step queued.
    pub fn new(memory: Vec<u8>, vcpus: u16) -> Self {
        Self {
            memory: HostDriver::from_vec_writable(memory),
            state: Mutex::new(State {
                steps: VecDeque::new(),
                events_queued: 0,
                vcpus: vec![Vcpu::default(); usize::from(vcpus)],
                monitors: Vec::new(),
                views: BTreeMap::new(),
                next_view: 1,
                access: BTreeMap::new(),
                pending: Vec::with_capacity(usize::from(vcpus)),
                hook: None,
                log: Vec::with_capacity(DEFAULT_LOG_CAPACITY),
                paused: 0,
                overhead: Duration::ZERO,
            }),
            clock: Instant::now(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the registers of every vCPU to `registers` (a test's starting point).
    #[must_use]
    pub fn with_registers(self, registers: Registers) -> Self {
        for vcpu in &mut self.state().vcpus {
            vcpu.registers = registers;
        }
        self
    }

    /// Creates `count` views (1, 2, ...) with every right, as a test's setup; not logged.
    pub fn create_views(&self, count: u16) {
        let mut state = self.state();
        for _ in 0..count {
            let view = state.next_view;
            state.next_view = view.saturating_add(1);
            state.views.insert(view, MemoryAccess::RWX);
        }
    }

    /// Sets the guest model: `hook` runs for each interrupt delivered to a vCPU, with
    /// guest memory to change (after CR2 is set for a #PF).
    pub fn on_interrupt(&self, hook: impl FnMut(&mut [u8], VcpuId, &Interrupt) + Send + 'static) {
        self.state().hook = Some(Box::new(hook));
    }

    /// Queues one step.
    pub fn push(&self, step: Step) {
        let mut state = self.state();
        if matches!(step, Step::Event(_)) {
            state.events_queued += 1;
        }
        state.steps.push_back(step);
    }

    /// Queues an event.
    pub fn push_event(&self, event: ScriptedEvent) {
        self.push(Step::Event(event));
    }

    /// Queues steps, in order.
    pub fn push_steps(&self, steps: impl IntoIterator<Item = Step>) {
        for step in steps {
            self.push(step);
        }
    }

    /// Parses a script (see [`script`]) and queues its steps; returns how many.
    ///
    /// # Errors
    /// The first bad line; nothing is queued then.
    pub fn load_script(&self, text: &str) -> Result<usize, ScriptError> {
        let steps = parse_script(text)?;
        let count = steps.len();
        self.push_steps(steps);
        Ok(count)
    }

    /// Reads a replay file and queues its steps; returns how many.
    ///
    /// # Errors
    /// The file cannot be read (reported as line 0), or its first bad line.
    pub fn load_script_file(&self, path: impl AsRef<Path>) -> Result<usize, ScriptError> {
        let text = std::fs::read_to_string(path.as_ref()).map_err(|e| ScriptError {
            line: 0,
            message: format!("{}: {e}", path.as_ref().display()),
        })?;
        self.load_script(&text)
    }

    /// Makes sure the log has room for `additional` more entries without allocating.
    pub fn reserve_log(&self, additional: usize) {
        self.state().log.reserve(additional);
    }

    /// A copy of the log.
    pub fn log(&self) -> Vec<Action> {
        self.state().log.clone()
    }

    /// Takes the log, leaving it empty (with its capacity).
    pub fn take_log(&self) -> Vec<Action> {
        let mut state = self.state();
        let log = state.log.clone();
        state.log.clear();
        log
    }

    /// The responses given so far, with the vCPU and the reason they answered.
    pub fn responses(&self) -> Vec<(VcpuId, EventReason, VmiEventResponse<Amd64>)> {
        self.state()
            .log
            .iter()
            .filter_map(|a| match *a {
                Action::Handled {
                    vcpu,
                    reason,
                    response,
                } => Some((vcpu, reason, response)),
                _ => None,
            })
            .collect()
    }

    /// The interrupts injected so far (including reinjections), in order.
    pub fn injected(&self) -> Vec<(VcpuId, Interrupt)> {
        self.state()
            .log
            .iter()
            .filter_map(|a| match *a {
                Action::Injected {
                    vcpu, interrupt, ..
                } => Some((vcpu, interrupt)),
                _ => None,
            })
            .collect()
    }

    /// The monitors enabled now.
    pub fn monitors(&self) -> Vec<EventMonitor> {
        self.state().monitors.clone()
    }

    /// The view a vCPU is in.
    ///
    /// # Errors
    /// [`VmiError::NotFound`] for an unknown vCPU.
    pub fn vcpu_view(&self, vcpu: VcpuId) -> Result<View, VmiError> {
        self.state().vcpu(vcpu).map(|v| v.view)
    }

    /// Whether a vCPU is single-stepping.
    ///
    /// # Errors
    /// [`VmiError::NotFound`] for an unknown vCPU.
    pub fn singlestep_enabled(&self, vcpu: VcpuId) -> Result<bool, VmiError> {
        self.state().vcpu(vcpu).map(|v| v.singlestep)
    }

    /// How many steps (of any kind) are still queued.
    pub fn steps_left(&self) -> usize {
        self.state().steps.len()
    }

    /// Runs `f` on guest memory (to change it between events, as the guest would).
    ///
    /// # Errors
    /// None in practice: the memory is built writable.
    pub fn with_memory<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> Result<R, VmiError> {
        self.memory.memory().with_bytes_mut(f)
    }

    /// Delivers the pending interrupts: the vCPUs resume, the guest model runs.
    fn deliver(&self, state: &mut State) {
        if state.pending.is_empty() {
            return;
        }
        let State {
            pending,
            vcpus,
            hook,
            ..
        } = state;
        let _ = self.memory.memory().with_bytes_mut(|memory| {
            for (vcpu, interrupt) in pending.drain(..) {
                if interrupt.vector == vector::PF
                    && let (Some(cr2), Some(v)) =
                        (interrupt.cr2, vcpus.get_mut(usize::from(vcpu.0)))
                {
                    v.registers.cr2 = cr2;
                }
                if let Some(hook) = hook.as_mut() {
                    hook(memory, vcpu, &interrupt);
                }
            }
        });
    }

    /// Runs a non-event step.
    fn run(&self, state: &mut State, step: Step) {
        match step {
            Step::Registers { vcpu, values } => {
                if let Ok(v) = state.vcpu(vcpu) {
                    for (name, value) in values {
                        // The parser checked names and widths; a bad pair changes nothing.
                        let _ = script::set_register(&mut v.registers, name, value);
                    }
                }
            }
            Step::Write { pa, data } => {
                // The parser bounds nothing by memory size: a write past the end is dropped.
                let _ = self.memory.write_physical(pa, &data);
            }
            Step::Event(_) | Step::Timeout => {}
        }
    }

    /// Applies a response, as a hypervisor would on VM entry.
    fn apply(
        &self,
        state: &mut State,
        event: &VmiEvent<Amd64>,
        response: &VmiEventResponse<Amd64>,
    ) {
        let id = event.vcpu;
        state.log.push(Action::Handled {
            vcpu: id,
            reason: event.reason,
            response: *response,
        });
        let flags = response.flags;
        let Ok(vcpu) = state.vcpu(id) else {
            return;
        };
        let mut vcpu_state = *vcpu;

        // Registers first: the write a CR/MSR event reports lands on top of them.
        if let Some(gp) = response.registers {
            vcpu_state.registers.set_gp(&gp);
            state.log.push(Action::RegistersSet {
                vcpu: id,
                registers: gp,
            });
        }

        // The view, or a fast single step through one.
        if let Some(view) = response.view {
            if !state.view_exists(view) {
                state.log.push(Action::Rejected {
                    vcpu: id,
                    why: "unknown view",
                });
            } else if flags.contains(VmiEventResponseFlags::FAST_SINGLESTEP) {
                state.log.push(Action::FastSinglestep { vcpu: id, view });
            } else {
                vcpu_state.view = view;
                state.log.push(Action::ViewSwitched {
                    vcpu: Some(id),
                    view,
                });
            }
        } else if flags.contains(VmiEventResponseFlags::FAST_SINGLESTEP) {
            let view = vcpu_state.view;
            state.log.push(Action::FastSinglestep { vcpu: id, view });
        }

        if flags.contains(VmiEventResponseFlags::TOGGLE_SINGLESTEP) {
            vcpu_state.singlestep = !vcpu_state.singlestep;
            let enabled = vcpu_state.singlestep;
            state
                .log
                .push(Action::SinglestepToggled { vcpu: id, enabled });
        }

        if flags.contains(VmiEventResponseFlags::EMULATE) {
            state.log.push(Action::Emulated { vcpu: id });
        }

        // A register write takes effect unless denied.
        let denied = flags.contains(VmiEventResponseFlags::DENY);
        match event.reason {
            EventReason::WriteControlRegister(w) if !denied => {
                let r = &mut vcpu_state.registers;
                match w.register {
                    ControlRegister::Cr0 => r.cr0 = w.new,
                    ControlRegister::Cr3 => r.cr3 = w.new,
                    ControlRegister::Cr4 => r.cr4 = w.new,
                    ControlRegister::Xcr0 => {}
                }
            }
            EventReason::WriteMsr(w) if !denied => {
                let r = &mut vcpu_state.registers;
                match w.index {
                    0x174 => r.sysenter_cs = w.new,
                    0x175 => r.sysenter_esp = w.new,
                    0x176 => r.sysenter_eip = w.new,
                    0x277 => r.pat = w.new,
                    0xc000_0080 => r.efer = w.new,
                    0xc000_0081 => r.star = w.new,
                    0xc000_0082 => r.lstar = w.new,
                    0xc000_0083 => r.cstar = w.new,
                    0xc000_0084 => r.sfmask = w.new,
                    0xc000_0100 => r.fs_base = w.new,
                    0xc000_0101 => r.gs_base = w.new,
                    0xc000_0102 => r.kernel_gs_base = w.new,
                    _ => {}
                }
            }
            EventReason::WriteControlRegister(_) | EventReason::WriteMsr(_) => {
                state.log.push(Action::Denied { vcpu: id });
            }
            _ if denied => state.log.push(Action::Rejected {
                vcpu: id,
                why: "nothing to deny",
            }),
            _ => {}
        }

        if flags.contains(VmiEventResponseFlags::REINJECT_INTERRUPT) {
            match event.reason.as_interrupt() {
                Some(e) if state.pending.iter().all(|(v, _)| *v != id) => {
                    let interrupt = e.reinjection(Some(vcpu_state.registers.cr2));
                    state.pending.push((id, interrupt));
                    state.log.push(Action::Injected {
                        vcpu: id,
                        interrupt,
                        reinjected: true,
                    });
                }
                Some(_) => state.log.push(Action::Rejected {
                    vcpu: id,
                    why: "an interrupt is pending already",
                }),
                None => state.log.push(Action::Rejected {
                    vcpu: id,
                    why: "no interrupt to reinject",
                }),
            }
        }

        if let Ok(vcpu) = state.vcpu(id) {
            *vcpu = vcpu_state;
        }
    }
}

impl VmiDriver for ScriptedDriver {
    type Architecture = Amd64;
    type Page = HostPage;

    fn info(&self) -> Result<VmiInfo, VmiError> {
        Ok(VmiInfo {
            vcpus: u16::try_from(self.state().vcpus.len()).unwrap_or(u16::MAX),
            ..self.memory.info()?
        })
    }

    fn read_page(&self, gfn: Gfn) -> Result<HostPage, VmiError> {
        self.memory.read_page(gfn)
    }

    fn read_physical(&self, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
        self.memory.read_physical(pa, buf)
    }

    fn write_physical(&self, pa: Pa, data: &[u8]) -> Result<(), VmiError> {
        self.memory.write_physical(pa, data)
    }

    fn now(&self) -> Option<Duration> {
        Some(self.clock.elapsed())
    }

    fn pause(&self) -> Result<(), VmiError> {
        let mut state = self.state();
        state.paused = state.paused.saturating_add(1);
        state.log.push(Action::Paused);
        Ok(())
    }

    fn resume(&self) -> Result<(), VmiError> {
        let mut state = self.state();
        if state.paused == 0 {
            return Err(VmiError::Driver("scripted: resume without pause"));
        }
        state.paused -= 1;
        state.log.push(Action::Resumed);
        Ok(())
    }

    fn registers(&self, vcpu: VcpuId) -> Result<Registers, VmiError> {
        self.state().vcpu(vcpu).map(|v| v.registers)
    }

    fn set_registers(&self, vcpu: VcpuId, registers: Registers) -> Result<(), VmiError> {
        let mut state = self.state();
        state.vcpu(vcpu)?.registers = registers;
        state.log.push(Action::RegistersWritten { vcpu });
        Ok(())
    }

    fn memory_access(&self, gfn: Gfn, view: View) -> Result<MemoryAccess, VmiError> {
        let state = self.state();
        if !state.view_exists(view) {
            return Err(VmiError::NotFound);
        }
        let default = state
            .views
            .get(&view.0)
            .copied()
            .unwrap_or(MemoryAccess::RWX);
        Ok(state
            .access
            .get(&(view.0, gfn.0))
            .copied()
            .unwrap_or(default))
    }

    fn set_memory_access(
        &self,
        gfn: Gfn,
        view: View,
        access: MemoryAccess,
    ) -> Result<(), VmiError> {
        let mut state = self.state();
        if !state.view_exists(view) {
            return Err(VmiError::NotFound);
        }
        state.access.insert((view.0, gfn.0), access);
        state
            .log
            .push(Action::MemoryAccessSet { gfn, view, access });
        Ok(())
    }

    fn default_view(&self) -> Result<View, VmiError> {
        Ok(View(0))
    }

    fn create_view(&self, default_access: MemoryAccess) -> Result<View, VmiError> {
        let mut state = self.state();
        let view = state.next_view;
        state.next_view = view.checked_add(1).ok_or(VmiError::CapacityExceeded)?;
        state.views.insert(view, default_access);
        state.log.push(Action::ViewCreated(View(view)));
        Ok(View(view))
    }

    fn destroy_view(&self, view: View) -> Result<(), VmiError> {
        let mut state = self.state();
        if view.0 == 0 {
            return Err(VmiError::InvalidArgument(
                "the default view cannot be destroyed",
            ));
        }
        if state.views.remove(&view.0).is_none() {
            return Err(VmiError::NotFound);
        }
        state.access.retain(|(v, _), _| *v != view.0);
        for vcpu in &mut state.vcpus {
            if vcpu.view == view {
                vcpu.view = View(0);
            }
        }
        state.log.push(Action::ViewDestroyed(view));
        Ok(())
    }

    fn switch_to_view(&self, view: View) -> Result<(), VmiError> {
        let mut state = self.state();
        if !state.view_exists(view) {
            return Err(VmiError::NotFound);
        }
        for vcpu in &mut state.vcpus {
            vcpu.view = view;
        }
        state.log.push(Action::ViewSwitched { vcpu: None, view });
        Ok(())
    }

    fn monitor_enable(&self, monitor: EventMonitor) -> Result<(), VmiError> {
        let mut state = self.state();
        if !state.monitors.contains(&monitor) {
            state.monitors.push(monitor);
        }
        state.log.push(Action::MonitorEnabled(monitor));
        Ok(())
    }

    fn monitor_disable(&self, monitor: EventMonitor) -> Result<(), VmiError> {
        let mut state = self.state();
        let before = state.monitors.len();
        state.monitors.retain(|m| *m != monitor);
        if state.monitors.len() == before {
            return Err(VmiError::NotFound);
        }
        state.log.push(Action::MonitorDisabled(monitor));
        Ok(())
    }

    /// Queues `interrupt` for delivery when the vCPU resumes. A vCPU takes at most one
    /// injected event per entry (SDM Vol. 3C §27.6), so a second one before delivery is
    /// refused.
    fn inject_interrupt(&self, vcpu: VcpuId, interrupt: Interrupt) -> Result<(), VmiError> {
        let mut state = self.state();
        state.vcpu(vcpu)?;
        if state.pending.iter().any(|(v, _)| *v == vcpu) {
            return Err(VmiError::Driver(
                "scripted: an interrupt is pending on this vCPU already",
            ));
        }
        state.pending.push((vcpu, interrupt));
        state.log.push(Action::Injected {
            vcpu,
            interrupt,
            reinjected: false,
        });
        Ok(())
    }

    fn events_pending(&self) -> Result<usize, VmiError> {
        Ok(self.state().events_queued)
    }

    fn event_processing_overhead(&self) -> Result<Duration, VmiError> {
        Ok(self.state().overhead)
    }

    /// Runs the script to its next event or timeout: registers and memory steps on the
    /// way are applied, the event is handed to `handler` and its response applied, and
    /// injected interrupts are delivered. The timeout is not waited for: a `timeout` step
    /// returns [`VmiError::Timeout`] at once.
    fn wait_for_event(
        &self,
        timeout: Duration,
        handler: &mut EventHandler<'_, Amd64>,
    ) -> Result<(), VmiError> {
        let _ = timeout;
        let event = loop {
            let mut state = self.state();
            match state.steps.pop_front() {
                None => return Err(NO_EVENTS_LEFT),
                Some(Step::Timeout) => {
                    self.deliver(&mut state);
                    return Err(VmiError::Timeout);
                }
                Some(Step::Event(e)) => {
                    state.events_queued = state.events_queued.saturating_sub(1);
                    let vcpu = state.vcpu(e.vcpu)?;
                    if let Some(view) = e.view {
                        vcpu.view = view;
                    }
                    break VmiEvent::new(
                        e.vcpu,
                        Some(vcpu.view),
                        e.flags,
                        vcpu.registers,
                        e.reason,
                    );
                }
                Some(step) => self.run(&mut state, step),
            }
        };
        // The lock is not held while the handler runs: it calls back into the driver.
        let start = Instant::now();
        let response = handler(&event);
        let spent = start.elapsed();
        let mut state = self.state();
        state.overhead = state.overhead.saturating_add(spent);
        self.apply(&mut state, &event, &response);
        self.deliver(&mut state);
        Ok(())
    }

    /// Disables every monitor, destroys every view but the default, moves every vCPU
    /// back to it and stops single-stepping. Queued steps stay.
    fn reset_state(&self) -> Result<(), VmiError> {
        let mut state = self.state();
        state.monitors.clear();
        state.views.clear();
        state.access.clear();
        state.next_view = 1;
        for vcpu in &mut state.vcpus {
            vcpu.view = View(0);
            vcpu.singlestep = false;
        }
        state.log.push(Action::StateReset);
        Ok(())
    }
}
