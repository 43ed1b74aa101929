//! The introspection side of the guest's script: the [`VmiHandler`] that answers the
//! guest's events through introvisor, what it records, and the checks of each scenario.

use introvisor::arch::amd64::{ControlRegister, EventReason, vector};
use introvisor::{Gfn, MemoryAccess, NoOs, Va, View, VmiContext, VmiEventResponse, VmiHandler};

use crate::late::LateBackend;
use crate::layout::{self, leaf};

/// What the handler saw during one scenario.
#[derive(Clone, Copy, Default)]
pub struct Seen {
    /// CR3 writes: (old, new) of the last, and their count.
    pub cr3: Option<(u64, u64)>,
    /// CR3 write events.
    pub cr3_events: u32,
    /// CPUID events the handler answered itself.
    pub cpuid_answered: u32,
    /// CPUID events it let the hypervisor complete.
    pub cpuid_passed: u32,
    /// The string read at the guest's request: its length, hash, and bytes (up to 64).
    pub string: Option<(usize, u32)>,
    /// The string's first 32 bytes.
    pub string_bytes: [u8; 32],
    /// Write-watch events: (GPA, GVA) of the last, and their count.
    pub watch: Option<(u64, Option<u64>)>,
    /// Write-watch events.
    pub watch_events: u32,
    /// Reads of the hooked page (EPT violations in the breakpoint view).
    pub hook_reads: u32,
    /// Breakpoint events at the hooked address.
    pub breakpoints: u32,
    /// RFLAGS.IF at each breakpoint event, as bits (bit n = event n).
    pub breakpoint_if: u32,
    /// The views the guest's timer handler asked from (CPUID leaf VIEW).
    pub isr_views: [Option<View>; 4],
    /// Timer-handler view questions.
    pub isr_questions: u32,
    /// Events nobody expected (each printed).
    pub unexpected: u32,
}

/// The handler.
pub struct Script {
    /// The scenario running (between BEGIN and END), if any.
    pub scenario: Option<u64>,
    /// What was seen in it.
    pub seen: Seen,
    /// The view the guest runs in: breakpoint and write watch armed.
    pub watch_view: View,
    /// The view single steps run in: the default view, where nothing is hooked.
    pub step_view: View,
    /// The hooked instruction's address (guest-virtual = guest-physical: the image is
    /// mapped one to one).
    pub hooked_va: u64,
    /// The line the handler wrote about the last event, printed by the exit loop after it
    /// has timed the exit (so the timing leaves the serial port out).
    pub log: crate::guest::Line,
}

impl Script {
    fn hooked_gfn(&self) -> Gfn {
        Gfn(self.hooked_va >> 12)
    }

    /// Notes one line about the event, for the exit loop to print.
    fn note(&mut self, args: core::fmt::Arguments<'_>) {
        let _ = core::fmt::Write::write_fmt(&mut self.log, args);
    }
}

/// FNV-1a over the first `len` bytes of `bytes`.
fn hash(bytes: &[u8]) -> u32 {
    layout::fnv1a(bytes)
}

impl VmiHandler<LateBackend, NoOs> for Script {
    fn handle_event(
        &mut self,
        ctx: VmiContext<'_, LateBackend, NoOs>,
    ) -> VmiEventResponse<introvisor::arch::amd64::Amd64> {
        let regs = ctx.registers();
        match ctx.reason() {
            EventReason::WriteControlRegister(e) if e.register == ControlRegister::Cr3 => {
                self.seen.cr3 = Some((e.old, e.new));
                self.seen.cr3_events += 1;
                self.note(format_args!(
                    "HV: event cr3_write old={:#x} new={:#x} rip={:#x}",
                    e.old, e.new, regs.rip
                ));
                VmiEventResponse::continue_()
            }
            EventReason::Cpuid(e) => {
                let mut gp = regs.gp();
                match e.leaf {
                    leaf::IDENTITY => {
                        gp.rax = u64::from(leaf::VIEW);
                        gp.rbx = u64::from(u32::from_le_bytes(*b"Intr"));
                        gp.rcx = u64::from(u32::from_le_bytes(*b"oVis"));
                        gp.rdx = u64::from(u32::from_le_bytes(*b"orHV"));
                    }
                    leaf::READ_STRING => {
                        let mut buf = [0u8; 256];
                        match ctx.read_string_bytes_into(Va(regs.rdx), &mut buf) {
                            Ok(bytes) => {
                                let n = bytes.len().min(32);
                                self.seen.string_bytes[..n].copy_from_slice(&bytes[..n]);
                                self.seen.string = Some((bytes.len(), hash(bytes)));
                                gp.rax = bytes.len() as u64;
                                gp.rbx = u64::from(hash(bytes));
                            }
                            Err(err) => {
                                self.note(format_args!(
                                    "HV: read_string at {:#x} failed: {err}",
                                    regs.rdx
                                ));
                                self.seen.unexpected += 1;
                                gp.rax = u64::MAX;
                                gp.rbx = 0;
                            }
                        }
                    }
                    leaf::VIEW => {
                        let slot = self.seen.isr_questions as usize;
                        if let Some(v) = self.seen.isr_views.get_mut(slot) {
                            *v = ctx.view();
                        }
                        self.seen.isr_questions += 1;
                        gp.rax = ctx.view().map_or(u64::from(u32::MAX), |v| u64::from(v.0));
                        gp.rbx = 0;
                        gp.rcx = 0;
                        gp.rdx = 0;
                    }
                    _ => {
                        self.seen.cpuid_passed += 1;
                        return VmiEventResponse::continue_();
                    }
                }
                self.seen.cpuid_answered += 1;
                // The answer is in the registers; `deny` makes the backend return
                // SkipInstruction, so the hypervisor moves RIP past CPUID without running
                // it. (A response with registers alone comes back as Complete: the
                // hypervisor would run CPUID and overwrite the answer.)
                VmiEventResponse::continue_().set_registers(gp).deny()
            }
            EventReason::MemoryAccess(e) => {
                let gfn = Gfn(e.pa.0 >> 12);
                if gfn == Gfn(layout::WATCHED_FRAME >> 12) && e.access.contains(MemoryAccess::W) {
                    self.seen.watch = Some((e.pa.0, e.va.map(|v| v.0)));
                    self.seen.watch_events += 1;
                    self.note(format_args!(
                        "HV: event write_watch gpa={:#x} gva={:#x} access={} rip={:#x}",
                        e.pa.0,
                        e.va.map_or(0, |v| v.0),
                        e.access,
                        regs.rip
                    ));
                    // Allow the write: one instruction in the default view, where the page
                    // is writable, then back to the watch view with the watch still armed.
                    VmiEventResponse::continue_().fast_singlestep(self.step_view)
                } else if gfn == self.hooked_gfn() && !e.access.contains(MemoryAccess::X) {
                    self.seen.hook_reads += 1;
                    self.note(format_args!(
                        "HV: event hook_read gpa={:#x} gva={:#x} access={} rip={:#x}",
                        e.pa.0,
                        e.va.map_or(0, |v| v.0),
                        e.access,
                        regs.rip
                    ));
                    // The read runs in the default view, which maps the original frame.
                    VmiEventResponse::continue_().fast_singlestep(self.step_view)
                } else {
                    self.seen.unexpected += 1;
                    self.note(format_args!(
                        "HV: UNEXPECTED memory access gpa={:#x} gva={:#x} access={} view={:?} rip={:#x}",
                        e.pa.0,
                        e.va.map_or(0, |v| v.0),
                        e.access,
                        ctx.view(),
                        regs.rip
                    ));
                    VmiEventResponse::continue_().fast_singlestep(self.step_view)
                }
            }
            EventReason::Interrupt(e) if e.vector == vector::BP && regs.rip == self.hooked_va => {
                let n = self.seen.breakpoints;
                if regs.rflags & (1 << 9) != 0 && n < 32 {
                    self.seen.breakpoint_if |= 1 << n;
                }
                self.seen.breakpoints += 1;
                self.note(format_args!(
                    "HV: event breakpoint rip={:#x} view={:?} if={}",
                    regs.rip,
                    ctx.view(),
                    regs.rflags >> 9 & 1
                ));
                // Execute the original instruction once, in the default view, then return
                // to the breakpoint view: the breakpoint stays invisible and armed.
                VmiEventResponse::continue_().fast_singlestep(self.step_view)
            }
            other => {
                self.seen.unexpected += 1;
                self.note(format_args!(
                    "HV: UNEXPECTED event {other:?} rip={:#x}",
                    regs.rip
                ));
                VmiEventResponse::continue_().reinject_interrupt()
            }
        }
    }
}
