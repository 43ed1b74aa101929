//! [`SimPlatform`]: the simulated machine as an `introvisor_ept::Platform`, the way a
//! hypervisor would offer it, plus the hypervisor's exit handler ([`handle_exit`])
//! that hands each VM exit to the backend and carries out the [`ExitAction`] it returns.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use std::sync::Arc;
use std::time::Instant;

use introvisor::VcpuId;
use introvisor::arch::amd64::{ControlRegister, Interrupt, Registers};
use introvisor_ept::{
    Control, EptBackend, EptPointer, ExitAction, ExitInfo, Hpa, InlineHandler, Invept, Platform,
    PlatformError,
};

use super::exit::{RawExit, reason};
use super::vcpu::{Injection, RunError};
use super::{FRAME, Machine};

/// What the platform saw the backend do, beyond the machine's own counters.
#[derive(Debug, Default)]
pub struct PlatformStats {
    /// `set_eptp` calls.
    pub eptp_writes: AtomicU64,
    /// `set_registers` calls that changed RFLAGS.IF (must stay zero: the backend never
    /// touches the guest's IF).
    pub if_changes: AtomicU64,
    /// `set_registers` calls.
    pub register_writes: AtomicU64,
    /// Injections.
    pub injections: AtomicU64,
    /// Emulations.
    pub emulations: AtomicU64,
    /// Exits the backend answered with `NotMine`.
    pub not_mine: AtomicU64,
}

/// A test's one-shot hook into [`Platform::registers`]: it runs on the calling thread
/// (for an exit, the vCPU's, inside the backend's exit path) before the registers are
/// read, so a test can make another thread act at exactly that point.
pub type RegistersHook = Box<dyn FnOnce(VcpuId) + Send>;

/// The simulated machine as the backend's platform.
pub struct SimPlatform {
    /// The machine.
    pub machine: Arc<Machine>,
    /// Calls the backend made.
    pub stats: PlatformStats,
    /// Runs once, at the next `registers` call (see [`RegistersHook`]).
    pub registers_hook: std::sync::Mutex<Option<RegistersHook>>,
    start: Instant,
}

impl SimPlatform {
    /// The platform of `machine`.
    pub fn new(machine: Arc<Machine>) -> Self {
        Self {
            machine,
            stats: PlatformStats::default(),
            registers_hook: std::sync::Mutex::new(None),
            start: Instant::now(),
        }
    }

    fn vcpu(&self, vcpu: VcpuId) -> Result<&super::Vcpu, PlatformError> {
        self.machine
            .vcpus
            .get(usize::from(vcpu.0))
            .ok_or(PlatformError::NoSuchVcpu(vcpu))
    }
}

/// The VMCS fields of a simulated exit, as a hypervisor copies them for the backend.
pub fn exit_info(raw: &RawExit) -> ExitInfo {
    ExitInfo {
        reason: raw.reason,
        qualification: raw.qualification,
        guest_linear_address: raw.guest_linear,
        guest_physical_address: raw.guest_physical,
        instruction_length: raw.instruction_length,
        instruction_information: raw.instruction_info,
        interruption_information: raw.interruption_info,
        interruption_error_code: raw.interruption_error,
        ..ExitInfo::default()
    }
}

// SAFETY: `host_frame` returns pointers into the machine's `HostMemory`, a boxed slice of
// `AtomicU64` that lives as long as the `Arc<Machine>` this platform holds (so as long as
// the platform): each pointer is the first byte of a 4096-byte, 8-aligned frame inside
// it. Every other access to that memory (the simulated vCPUs, the tests) goes through
// `HostMemory`, which uses atomic operations only. Pool frames are handed to the backend
// by the tests' setup and never touched by the simulator except to read them for checks.
unsafe impl Platform for SimPlatform {
    fn host_frame(&self, hpa: Hpa) -> Option<NonNull<u8>> {
        let frame = hpa.0 & !(FRAME - 1);
        if !self.machine.mem.contains(frame, FRAME) {
            return None;
        }
        NonNull::new(self.machine.mem.pointer(frame)?)
    }

    fn invept(&self, scope: Invept) {
        self.machine.invept(match scope {
            Invept::SingleContext(e) => Some(e.0),
            Invept::AllContext => None,
        });
    }

    fn shootdown(&self, scope: Invept) {
        self.machine.shootdown(match scope {
            Invept::SingleContext(e) => Some(e.0),
            Invept::AllContext => None,
        });
    }

    fn relax(&self, _vcpu: Option<VcpuId>) {
        // Shootdowns never wait on a vCPU that is inside the backend (they take only the
        // vCPU's instruction lock, which is released across exits), so there is nothing to
        // serve here.
        std::thread::yield_now();
    }

    fn vcpu_count(&self) -> u16 {
        self.machine.vcpus.len() as u16
    }

    fn set_eptp(&self, vcpu: VcpuId, eptp: EptPointer) -> Result<(), PlatformError> {
        let v = self.vcpu(vcpu)?;
        self.stats.eptp_writes.fetch_add(1, Ordering::SeqCst);
        v.lock().vmcs.eptp = eptp.0;
        Ok(())
    }

    fn set_eptp_list_entry(
        &self,
        index: u16,
        eptp: Option<EptPointer>,
    ) -> Result<(), PlatformError> {
        let i = usize::from(index);
        if i >= 512 {
            return Err(PlatformError::Unsupported("EPTP-list index above 511"));
        }
        for v in self.machine.vcpus.iter() {
            let mut st = v.lock();
            if st.vmcs.eptp_list.len() < 512 {
                st.vmcs.eptp_list.resize(512, 0);
            }
            st.vmcs.eptp_list[i] = eptp.map_or(0, |e| e.0);
        }
        Ok(())
    }

    fn set_control(&self, vcpu: VcpuId, control: Control, on: bool) -> Result<(), PlatformError> {
        let v = self.vcpu(vcpu)?;
        let mut st = v.lock();
        let c = &mut st.vmcs.controls;
        fn set<T: PartialEq>(list: &mut Vec<T>, item: T, on: bool) {
            list.retain(|x| *x != item);
            if on {
                list.push(item);
            }
        }
        match control {
            Control::MonitorTrap => c.mtf = on,
            Control::Exception(n) if n < 32 => {
                if on {
                    c.exception_bitmap |= 1 << n;
                } else {
                    c.exception_bitmap &= !(1 << n);
                }
            }
            Control::Exception(_) => return Err(PlatformError::Unsupported("vector above 31")),
            Control::CrWrite(ControlRegister::Cr3) => c.cr3_load_exiting = on,
            Control::CrWrite(_) => {
                return Err(PlatformError::Unsupported("CR0/CR4/XCR0 write exiting"));
            }
            Control::MsrWrite(index) => set(&mut c.msr_write_exiting, index, on),
            Control::Cpuid => c.cpuid_exiting = on,
            Control::Io(port) => set(&mut c.io_exiting, port, on),
            Control::ExternalInterruptExiting => c.external_interrupt_exiting = on,
            Control::InterruptWindowExiting => c.interrupt_window_exiting = on,
            _ => return Err(PlatformError::Unsupported("control")),
        }
        Ok(())
    }

    fn inject(&self, vcpu: VcpuId, event: Interrupt) -> Result<(), PlatformError> {
        let v = self.vcpu(vcpu)?;
        self.stats.injections.fetch_add(1, Ordering::SeqCst);
        let mut st = v.lock();
        if let Some(cr2) = event.cr2 {
            st.vmcs.regs.cr2 = cr2;
        }
        st.vmcs.injection = Some(Injection {
            vector: event.vector,
            typ: event.typ.to_vmx(),
            error_code: event.error_code,
            instruction_length: event.instruction_length,
        });
        Ok(())
    }

    fn registers(&self, vcpu: VcpuId) -> Result<Registers, PlatformError> {
        let hook = self
            .registers_hook
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(hook) = hook {
            hook(vcpu);
        }
        Ok(self.vcpu(vcpu)?.lock().vmcs.regs)
    }

    fn set_registers(&self, vcpu: VcpuId, registers: &Registers) -> Result<(), PlatformError> {
        let v = self.vcpu(vcpu)?;
        self.stats.register_writes.fetch_add(1, Ordering::SeqCst);
        let mut st = v.lock();
        if (st.vmcs.regs.rflags ^ registers.rflags) & (1 << 9) != 0 {
            self.stats.if_changes.fetch_add(1, Ordering::SeqCst);
        }
        st.vmcs.regs = *registers;
        Ok(())
    }

    fn emulate(&self, vcpu: VcpuId, _exit: &ExitInfo) -> Result<(), PlatformError> {
        let i = usize::from(vcpu.0);
        self.vcpu(vcpu)?;
        self.stats.emulations.fetch_add(1, Ordering::SeqCst);
        if self.machine.emulate_instruction(i) {
            Ok(())
        } else {
            Err(PlatformError::Failed("the instruction does not translate"))
        }
    }

    fn pause_all(&self) -> Result<(), PlatformError> {
        self.machine.pause();
        Ok(())
    }

    fn resume_all(&self) -> Result<(), PlatformError> {
        self.machine.resume();
        Ok(())
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

/// The hypervisor's exit handler: hands `raw` (an exit of vCPU `index`) to `backend` on
/// the calling thread, inline with `handler` or queued with `None`, and carries out the
/// returned [`ExitAction`] ([`carry_out`]).
///
/// # Errors
/// [`RunError::Backend`] with the backend's error.
pub fn handle_exit<const V: usize, const F: usize, const C: usize, const Q: usize>(
    backend: &EptBackend<SimPlatform, V, F, C, Q>,
    index: usize,
    raw: &RawExit,
    handler: Option<&mut InlineHandler<'_>>,
) -> Result<(), RunError> {
    let info = exit_info(raw);
    let action = backend
        .on_exit(VcpuId(index as u16), &info, handler)
        .map_err(RunError::Backend)?;
    carry_out(backend.platform(), index, raw, action);
    Ok(())
}

/// What the hypervisor does after the backend answered `action` for `raw`. For exits the
/// backend does not claim it does what a hypervisor without introspection does:
/// completes intercepted instructions, reflects intercepted exceptions to the guest, and
/// otherwise resumes.
pub fn carry_out(platform: &SimPlatform, index: usize, raw: &RawExit, action: ExitAction) {
    let machine = &platform.machine;
    match action {
        ExitAction::Resume => {}
        ExitAction::Complete => machine.complete_instruction(index, false),
        ExitAction::SkipInstruction => machine.complete_instruction(index, true),
        ExitAction::NotMine => {
            platform.stats.not_mine.fetch_add(1, Ordering::SeqCst);
            match raw.reason {
                reason::CPUID | reason::CR_ACCESS | reason::WRMSR | reason::IO_INSTRUCTION => {
                    machine.complete_instruction(index, false);
                }
                reason::EXCEPTION_OR_NMI => {
                    let info = raw.interruption_info;
                    let typ = ((info >> 8) & 7) as u8;
                    let mut st = machine.vcpus[index].lock();
                    st.vmcs.injection = Some(Injection {
                        vector: info as u8,
                        typ,
                        error_code: (info & (1 << 11) != 0).then_some(raw.interruption_error),
                        instruction_length: raw.instruction_length as u8,
                    });
                }
                _ => {}
            }
        }
    }
}
