//! The introspection loop end to end, on host-test's scripted driver: every event
//! reason and every response kind through a session, reads through the event's address
//! space, probers and the page-fault retry, the replay format, the session's clean-up,
//! `Send`/`Sync` of the loop's types, and a warm loop that allocates nothing.

use core::ops::ControlFlow;

use introvisor::arch::amd64::{
    Amd64, ControlRegister, ControlRegisterEvent, CpuidEvent, EventMonitor, EventReason,
    GpRegisters, Interrupt, InterruptEvent, InterruptType, IoDirection, IoEvent, MemoryAccessEvent,
    MsrEvent, Paging, PagingMode, Registers, Segment, vector,
};
use introvisor::{
    AccessContext, AddressContext, FaultReason, MemoryAccess, NoOs, Pa, PageFault, PageFaults,
    Probed, Va, VcpuId, View, VmiContext, VmiCore, VmiError, VmiEvent, VmiEventFlags,
    VmiEventResponse, VmiHandler, VmiOsContext, VmiProber, VmiSession,
};
use introvisor_host_test::counting_alloc::{CountingAllocator, count_allocations};
use introvisor_host_test::scripted::{
    Action, NO_EVENTS_LEFT, ScriptedDriver, ScriptedEvent, Step, parse_script,
};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

// ----- the session loop's types are Send and Sync where expected ------------------------

const _: () = {
    fn send_sync<T: Send + Sync>() {}
    fn copy<T: Copy>() {}
    #[allow(dead_code)]
    fn check() {
        // One core serves every vCPU: shared across threads.
        send_sync::<ScriptedDriver>();
        send_sync::<VmiCore<ScriptedDriver>>();
        send_sync::<NoOs>();
        // A session borrows the core and the OS layer; each thread can hold one.
        send_sync::<VmiSession<'static, ScriptedDriver, NoOs>>();
        send_sync::<VmiContext<'static, ScriptedDriver, NoOs>>();
        send_sync::<VmiOsContext<'static, ScriptedDriver, NoOs>>();
        // Events and responses cross from the exit path to a handler thread.
        send_sync::<VmiEvent<Amd64>>();
        send_sync::<VmiEventResponse<Amd64>>();
        send_sync::<Interrupt>();
        send_sync::<EventMonitor>();
        // A handler's fault sets and prober can move with it.
        send_sync::<PageFaults<16>>();
        send_sync::<VmiProber<'static, Amd64, 16>>();
        send_sync::<PageInHandler>();
        // The small records stay Copy.
        copy::<VmiEvent<Amd64>>();
        copy::<VmiEventResponse<Amd64>>();
        copy::<VmiContext<'static, ScriptedDriver, NoOs>>();
        copy::<VmiSession<'static, ScriptedDriver, NoOs>>();
    }
};

// ----- guest layout -----------------------------------------------------------------

const MEMORY: usize = 1 << 20;
const PRESENT: u64 = 1;
const WRITABLE: u64 = 2;
const USER: u64 = 4;
const FRAME: u64 = 0x000f_ffff_ffff_f000;

/// A minimal 4-level mapper of its own (SDM Vol. 3A §4.5), so the tests do not lean on
/// the walker they exercise.
struct Layout4 {
    memory: Vec<u8>,
    next: u64,
}

impl Layout4 {
    fn new() -> Self {
        Self {
            memory: vec![0; MEMORY],
            next: 0x1000,
        }
    }

    fn frame(&mut self) -> u64 {
        let frame = self.next;
        self.next += 0x1000;
        assert!(self.next as usize <= MEMORY, "test layout out of memory");
        frame
    }

    fn entry(&self, pa: u64) -> u64 {
        u64::from_le_bytes(
            self.memory[pa as usize..pa as usize + 8]
                .try_into()
                .unwrap(),
        )
    }

    fn set_entry(&mut self, pa: u64, value: u64) {
        self.memory[pa as usize..pa as usize + 8].copy_from_slice(&value.to_le_bytes());
    }

    /// Maps the 4 KiB page of `va` to `pa` under `root`; returns the PTE's address.
    fn map(&mut self, root: u64, va: u64, pa: u64) -> u64 {
        let mut table = root;
        for level in (2..=4u32).rev() {
            let slot = table + ((va >> (12 + 9 * (level - 1))) & 0x1ff) * 8;
            let entry = self.entry(slot);
            table = if entry & PRESENT == 0 {
                let next = self.frame();
                self.set_entry(slot, next | PRESENT | WRITABLE | USER);
                next
            } else {
                entry & FRAME
            };
        }
        let slot = table + ((va >> 12) & 0x1ff) * 8;
        self.set_entry(slot, pa | PRESENT | WRITABLE | USER);
        slot
    }

    /// A fresh frame holding `value` at offset 0, mapped at `va`; returns (frame, PTE).
    fn map_u64(&mut self, root: u64, va: u64, value: u64) -> (u64, u64) {
        let frame = self.frame();
        self.set_entry(frame, value);
        (frame, self.map(root, va, frame))
    }

    fn write(&mut self, pa: u64, bytes: &[u8]) {
        self.memory[pa as usize..pa as usize + bytes.len()].copy_from_slice(bytes);
    }
}

/// 64-bit mode at `cpl` (CR0.PG/PE, CR4.PAE, EFER.LME/LMA/NXE, a long-mode CS).
fn registers64(cr3: u64, cpl: u32) -> Registers {
    Registers {
        cr0: 0x8000_0011,
        cr4: 0x20,
        efer: 0xd01,
        cr3,
        rip: 0x40_1000,
        cs: Segment {
            access: 0x209b | (cpl << 5),
            ..Segment::default()
        },
        ss: Segment {
            access: 0x93 | (cpl << 5),
            ..Segment::default()
        },
        ..Registers::default()
    }
}

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("introvisor-{}-{name}", std::process::id()))
}

// ----- every reason, every response ----------------------------------------------------

const LSTAR: u32 = 0xc000_0082;

/// Answers each reason with a different response kind and records what it saw.
#[derive(Default)]
struct Answering {
    seen: Vec<(VcpuId, Option<View>, VmiEventFlags, Registers, EventReason)>,
    given: Vec<VmiEventResponse<Amd64>>,
    timeouts: usize,
}

impl VmiHandler<ScriptedDriver, NoOs> for Answering {
    fn handle_event(
        &mut self,
        ctx: VmiContext<'_, ScriptedDriver, NoOs>,
    ) -> VmiEventResponse<Amd64> {
        let event = ctx.event();
        self.seen.push((
            event.vcpu,
            event.view,
            event.flags,
            event.registers,
            event.reason,
        ));
        let r = VmiEventResponse::continue_();
        let response = match event.reason {
            EventReason::MemoryAccess(_) => r.emulate(),
            EventReason::Interrupt(i) if i.vector == vector::BP => r.reinject_interrupt(),
            EventReason::Interrupt(i) if i.vector == vector::PF => r.fast_singlestep(View(1)),
            EventReason::Singlestep => r.toggle_singlestep().switch_view(View(2)),
            EventReason::WriteControlRegister(w) if w.register == ControlRegister::Cr3 => r.deny(),
            EventReason::Cpuid(c) => {
                // Emulate CPUID: the hypervisor leaf's answer, and skip the instruction.
                let mut gp = ctx.registers().gp();
                gp.rax = 0x4000_0001;
                gp.rbx = 0x6f72_7469;
                gp.rip += u64::from(c.instruction_length);
                r.set_registers(gp)
            }
            _ => r,
        };
        self.given.push(response);
        response
    }

    fn handle_timeout(&mut self, _session: &VmiSession<'_, ScriptedDriver, NoOs>) {
        self.timeouts += 1;
    }

    fn finished(&self) -> bool {
        self.seen.len() == 11
    }
}

#[test]
fn every_reason_and_every_response_kind_through_a_session() {
    let root = 0x1000u64;
    let replay = format!(
        "# vCPU 0 in 64-bit kernel mode
regs 0 cr3={root:#x} cr0=0x80000011 cr4=0x20 efer=0xd01 cs_access=0x209b ss_access=0x93 rip=0x401000
event 0 memory gpa=0x5008 gva=0x401008 access=w
event 0 breakpoint
event 0 interrupt vector=14 type=hardware error=0x2
event 0 singlestep
event 0 cr register=cr3 old={root:#x} new=0x99000
event 0 cr register=cr4 old=0x20 new=0x1020
event 0 msr index=0xc0000082 new=0xffffffff81000000
event 0 cpuid leaf=0x40000000
event 0 io port=0x3f8 size=1 dir=out
timeout
event 0 view=1 async interrupt vector=0x20 type=external
event 0 cr register=xcr0 old=1 new=7
"
    );
    let path = temp_path("every-reason.replay");
    std::fs::write(&path, &replay).unwrap();
    let driver = ScriptedDriver::new(vec![0; MEMORY], 1);
    driver.create_views(2);
    assert_eq!(driver.load_script_file(&path).unwrap(), 13);
    std::fs::remove_file(&path).unwrap();
    let core = VmiCore::new(driver);

    let monitors = [
        EventMonitor::Register(ControlRegister::Cr0),
        EventMonitor::Register(ControlRegister::Cr3),
        EventMonitor::Register(ControlRegister::Cr4),
        EventMonitor::Register(ControlRegister::Xcr0),
        EventMonitor::Msr(LSTAR),
        EventMonitor::Exception(vector::BP),
        EventMonitor::Exception(vector::PF),
        EventMonitor::Singlestep,
        EventMonitor::Cpuid,
        EventMonitor::Io(0x3f8),
    ];
    for m in monitors {
        core.monitor_enable(m).unwrap();
    }
    assert_eq!(core.driver().monitors(), monitors);

    let mut handler = Answering::default();
    VmiSession::new(&core, &NoOs).handle(&mut handler).unwrap();

    // The handler saw every reason, with the fields the replay gave.
    let reasons: Vec<EventReason> = handler.seen.iter().map(|s| s.4).collect();
    let cr = |register, old, new| {
        EventReason::WriteControlRegister(ControlRegisterEvent { register, old, new })
    };
    assert_eq!(
        reasons,
        [
            EventReason::MemoryAccess(MemoryAccessEvent {
                pa: Pa(0x5008),
                va: Some(Va(0x40_1008)),
                access: MemoryAccess::W,
            }),
            EventReason::Interrupt(InterruptEvent {
                vector: 3,
                typ: InterruptType::SoftwareException,
                error_code: None,
                instruction_length: 1,
            }),
            EventReason::Interrupt(InterruptEvent {
                vector: 14,
                typ: InterruptType::HardwareException,
                error_code: Some(2),
                instruction_length: 0,
            }),
            EventReason::Singlestep,
            cr(ControlRegister::Cr3, root, 0x99000),
            cr(ControlRegister::Cr4, 0x20, 0x1020),
            EventReason::WriteMsr(MsrEvent {
                index: LSTAR,
                old: None,
                new: 0xffff_ffff_8100_0000,
            }),
            EventReason::Cpuid(CpuidEvent {
                leaf: 0x4000_0000,
                subleaf: 0,
                instruction_length: 2,
            }),
            EventReason::Io(IoEvent {
                port: 0x3f8,
                size: 1,
                direction: IoDirection::Out,
            }),
            EventReason::Interrupt(InterruptEvent {
                vector: 0x20,
                typ: InterruptType::External,
                error_code: None,
                instruction_length: 0,
            }),
            cr(ControlRegister::Xcr0, 1, 7),
        ]
    );
    assert_eq!(handler.timeouts, 1);

    // The driver recorded the responses as given.
    let recorded: Vec<_> = core.driver().responses().into_iter().map(|r| r.2).collect();
    assert_eq!(recorded, handler.given);
    assert!(recorded.iter().any(VmiEventResponse::is_continue));

    let regs = |i: usize| handler.seen[i].3;
    let view = |i: usize| handler.seen[i].1;
    let log = core.driver().log();
    let count = |f: &dyn Fn(&Action) -> bool| log.iter().filter(|a| f(a)).count();

    // Emulate.
    assert_eq!(count(&|a| matches!(a, Action::Emulated { .. })), 1);
    // Reinject: the breakpoint went back to the guest as it came.
    assert_eq!(
        core.driver().injected(),
        [(VcpuId(0), Interrupt::breakpoint(1))]
    );
    // Fast single step into view 1: the step is recorded, the vCPU's view is unchanged.
    assert!(log.contains(&Action::FastSinglestep {
        vcpu: VcpuId(0),
        view: View(1)
    }));
    assert_eq!(view(2), Some(View(0)));
    assert_eq!(view(3), Some(View(0)));
    // Toggle single step and switch view: the next event is in view 2.
    assert!(log.contains(&Action::SinglestepToggled {
        vcpu: VcpuId(0),
        enabled: true
    }));
    assert_eq!(view(4), Some(View(2)));
    // Deny: the CR3 write did not take effect; the CR4 and LSTAR writes, answered with
    // continue, did.
    assert_eq!(count(&|a| matches!(a, Action::Denied { .. })), 1);
    assert_eq!(regs(5).cr3, root);
    assert_eq!(regs(6).cr4, 0x1020);
    assert_eq!(regs(8).lstar, 0xffff_ffff_8100_0000);
    // Set registers: CPUID's answer and the skipped instruction show in the next event.
    assert_eq!(regs(8).rax, 0x4000_0001);
    assert_eq!(regs(8).rbx, 0x6f72_7469);
    assert_eq!(regs(8).rip, regs(7).rip + 2);
    assert_eq!(regs(8).cr3, regs(7).cr3, "only the GP subset is set");
    // The event's own view and flags: the asynchronous event in view 1.
    assert_eq!(view(9), Some(View(1)));
    assert!(!handler.seen[9].2.contains(VmiEventFlags::VCPU_PAUSED));
    assert!(handler.seen[0].2.contains(VmiEventFlags::VCPU_PAUSED));

    // The session cleaned up: monitors gone, single step off, VM resumed.
    assert!(core.driver().monitors().is_empty());
    assert!(!core.driver().singlestep_enabled(VcpuId(0)).unwrap());
    assert_eq!(core.driver().vcpu_view(VcpuId(0)).unwrap(), View(0));
    let tail: Vec<_> = log.iter().rev().take(3).rev().copied().collect();
    assert_eq!(tail, [Action::StateReset, Action::Paused, Action::Resumed]);
    assert_eq!(
        count(&|a| matches!(a, Action::MonitorEnabled(_))),
        monitors.len()
    );
    assert!(core.event_processing_overhead().is_ok());
}

// ----- the loop: timeouts, finishing, clean-up -----------------------------------------

struct Counting {
    limit: usize,
    handled: usize,
    timeouts: usize,
}

impl VmiHandler<ScriptedDriver, NoOs> for Counting {
    fn handle_event(
        &mut self,
        _ctx: VmiContext<'_, ScriptedDriver, NoOs>,
    ) -> VmiEventResponse<Amd64> {
        self.handled += 1;
        VmiEventResponse::continue_()
    }

    fn handle_timeout(&mut self, _session: &VmiSession<'_, ScriptedDriver, NoOs>) {
        self.timeouts += 1;
    }

    fn finished(&self) -> bool {
        self.handled >= self.limit
    }
}

#[test]
fn the_loop_handles_timeouts_stops_when_finished_and_answers_pending_events() {
    let driver = ScriptedDriver::new(vec![0; MEMORY], 2);
    driver
        .load_script(
            "event 0 singlestep\ntimeout\nevent 1 singlestep\ntimeout\ntimeout\n\
             event 0 cpuid leaf=0\nevent 1 cpuid leaf=1\nevent 0 cpuid leaf=2\n",
        )
        .unwrap();
    let core = VmiCore::new(driver);
    core.monitor_enable(EventMonitor::Cpuid).unwrap();
    let mut handler = Counting {
        limit: 3,
        handled: 0,
        timeouts: 0,
    };
    VmiSession::new(&core, &NoOs).handle(&mut handler).unwrap();

    // Three events in the loop, three timeouts on the way, then two events still queued
    // answered during the clean-up, with the VM paused and the monitors gone.
    assert_eq!(handler.timeouts, 3);
    assert_eq!(handler.handled, 5);
    assert_eq!(core.driver().steps_left(), 0);
    let log = core.driver().log();
    let reset = log.iter().position(|a| *a == Action::StateReset).unwrap();
    let after: Vec<_> = log[reset..]
        .iter()
        .map(|a| match a {
            Action::Handled { vcpu, .. } => format!("handled {}", vcpu.0),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        after,
        ["StateReset", "Paused", "handled 1", "handled 0", "Resumed"]
    );
    assert_eq!(
        log.iter()
            .filter(|a| matches!(a, Action::Handled { .. }))
            .count(),
        5
    );
    assert!(core.driver().monitors().is_empty());
}

struct Forever;

impl VmiHandler<ScriptedDriver, NoOs> for Forever {
    fn handle_event(
        &mut self,
        _ctx: VmiContext<'_, ScriptedDriver, NoOs>,
    ) -> VmiEventResponse<Amd64> {
        VmiEventResponse::continue_()
    }
}

#[test]
fn the_loop_stops_on_a_driver_error_and_still_cleans_up() {
    let driver = ScriptedDriver::new(vec![0; MEMORY], 1);
    driver
        .load_script("event 0 singlestep\nevent 0 singlestep\n")
        .unwrap();
    let core = VmiCore::new(driver);
    core.monitor_enable(EventMonitor::Singlestep).unwrap();
    let result = VmiSession::new(&core, &NoOs).handle(&mut Forever);
    assert_eq!(result, Err(NO_EVENTS_LEFT));
    assert_eq!(core.driver().responses().len(), 2);
    assert!(core.driver().monitors().is_empty());
    let log = core.driver().log();
    assert_eq!(
        log[log.len() - 3..],
        [Action::StateReset, Action::Paused, Action::Resumed]
    );
}

// ----- the context: reads through the event's CR3 -------------------------------------

const SHARED_VA: u64 = 0x7f00_0000_1000;

struct Reader {
    other_root: Pa,
    data_pa: Pa,
    results: Vec<(u64, u64, u64, Va, Va)>,
    names: Vec<String>,
    os_errors: Vec<VmiError>,
}

impl VmiHandler<ScriptedDriver, NoOs> for Reader {
    fn handle_event(
        &mut self,
        ctx: VmiContext<'_, ScriptedDriver, NoOs>,
    ) -> VmiEventResponse<Amd64> {
        let va = Va(SHARED_VA);
        let own = ctx.read_u64(va).unwrap();
        let other = ctx.with_root(self.other_root).read_u64(va).unwrap();
        let direct = ctx
            .core()
            .read_u64(AccessContext::direct(self.data_pa))
            .unwrap();
        let native = ctx.read_va_native(va + 8).unwrap();
        let wide = ctx.read_va64(va + 8).unwrap();
        self.results.push((own, other, direct, native, wide));
        let mut buf = [0u8; 32];
        self.names
            .push(ctx.read_string_into(va + 16, &mut buf).unwrap().to_owned());
        assert_eq!(ctx.root(), ctx.registers().translation_root());
        assert_eq!(
            ctx.translate(va).unwrap().pa,
            ctx.core().translate(va, ctx.root()).unwrap().pa
        );

        // No OS layer: every OS call says so, none panics.
        let os = ctx.os();
        let mut name = [0u8; 16];
        let process = introvisor::os::ProcessObject(Va(0));
        let module = introvisor::os::Module {
            object: Va(0),
            base: Va(0),
            size: 0,
        };
        self.os_errors = vec![
            os.kernel_image_base().unwrap_err(),
            os.processes(|_| ControlFlow::Continue(())).unwrap_err(),
            os.process_name(process, &mut name).unwrap_err(),
            os.threads(process, |_| ControlFlow::Continue(()))
                .unwrap_err(),
            os.modules(|_| ControlFlow::Continue(())).unwrap_err(),
            os.module_name(&module, &mut name).unwrap_err(),
            os.regions(process, |_| ControlFlow::Continue(()))
                .unwrap_err(),
            os.current_process().unwrap_err(),
            os.current_thread().unwrap_err(),
            os.function_argument(0).unwrap_err(),
            os.function_return_value().unwrap_err(),
            os.syscall_argument(0).unwrap_err(),
        ];
        VmiEventResponse::continue_()
    }
}

#[test]
fn reads_go_through_the_events_cr3_unless_told_otherwise() {
    let mut layout = Layout4::new();
    let root_a = layout.frame();
    let root_b = layout.frame();
    let (frame_a, _) = layout.map_u64(root_a, SHARED_VA, 0xaaaa_aaaa);
    let (frame_b, _) = layout.map_u64(root_b, SHARED_VA, 0xbbbb_bbbb);
    for (frame, name) in [(frame_a, "process a"), (frame_b, "process b")] {
        layout.write(frame + 8, &0xffff_8000_dead_beefu64.to_le_bytes());
        layout.write(frame + 16, format!("{name}\0").as_bytes());
    }
    let driver = ScriptedDriver::new(layout.memory, 1).with_registers(registers64(root_a, 3));
    // The first event runs in A (64-bit); then the guest switches to B in compatibility
    // mode (CS.L clear, CS.D set): native pointers are 4 bytes there.
    driver
        .load_script(&format!(
            "event 0 singlestep\nregs 0 cr3={root_b:#x} cs_access=0x40fb\nevent 0 singlestep\n"
        ))
        .unwrap();
    let core = VmiCore::new(driver);
    let mut handler = Reader {
        other_root: Pa(root_b),
        data_pa: Pa(frame_a),
        results: Vec::new(),
        names: Vec::new(),
        os_errors: Vec::new(),
    };
    let session = VmiSession::new(&core, &NoOs);
    session
        .wait_for_event(introvisor::DEFAULT_EVENT_TIMEOUT, &mut handler)
        .unwrap();
    session
        .wait_for_event(introvisor::DEFAULT_EVENT_TIMEOUT, &mut handler)
        .unwrap();
    assert_eq!(
        handler.results,
        [
            (
                0xaaaa_aaaa,
                0xbbbb_bbbb,
                0xaaaa_aaaa,
                Va(0xffff_8000_dead_beef),
                Va(0xffff_8000_dead_beef)
            ),
            (
                0xbbbb_bbbb,
                0xbbbb_bbbb,
                0xaaaa_aaaa,
                Va(0xdead_beef),
                Va(0xffff_8000_dead_beef)
            ),
        ]
    );
    assert_eq!(handler.names, ["process a", "process b"]);
    assert_eq!(handler.os_errors.len(), 12);
    for e in &handler.os_errors {
        assert!(
            matches!(e, VmiError::NotSupported(what) if what.starts_with("os: ")),
            "{e:?}"
        );
    }
}

// ----- probers and the page-fault retry ------------------------------------------------

const PRESENT_VA: u64 = 0x40_0000; // mapped
const PAGED_OUT_VA: u64 = 0x40_1008; // its PTE is not present; the guest pages it in
const UNSERVED_VA: u64 = 0x8000_0123; // no page table at all; the guest never maps it
const NONCANONICAL_VA: u64 = 0x0000_8000_0000_0000;
const RETRIES: u8 = 2;

/// Per event: the four values read, the fault injected, and the sets afterwards.
#[derive(Debug)]
struct Round {
    values: [Option<u64>; 4],
    recorded: Vec<AddressContext>,
    injected: Option<AddressContext>,
    suppressed: Vec<AddressContext>,
}

/// Reads four addresses through a prober on each breakpoint; injects a #PF for the
/// first recorded fault it has not given up on, retries on the next event, and
/// suppresses a fault after `RETRIES` injections that did not serve it.
struct PageInHandler {
    suppressed: PageFaults<8>,
    attempts: [(AddressContext, u8); 8],
    attempts_len: usize,
    rounds: Vec<Round>,
    done: bool,
}

impl PageInHandler {
    fn new() -> Self {
        Self {
            suppressed: PageFaults::new(),
            attempts: [(AddressContext::new(Va(0), Pa(0)), 0); 8],
            attempts_len: 0,
            rounds: Vec::new(),
            done: false,
        }
    }

    fn attempts(&mut self, fault: AddressContext) -> &mut u8 {
        let used = self.attempts_len;
        let index = self.attempts[..used]
            .iter()
            .position(|(f, _)| *f == fault)
            .unwrap_or_else(|| {
                self.attempts[used] = (fault, 0);
                self.attempts_len += 1;
                used
            });
        &mut self.attempts[index].1
    }
}

impl VmiHandler<ScriptedDriver, NoOs> for PageInHandler {
    fn handle_event(
        &mut self,
        ctx: VmiContext<'_, ScriptedDriver, NoOs>,
    ) -> VmiEventResponse<Amd64> {
        let mut prober = VmiProber::<Amd64, 8>::new(&mut self.suppressed);
        let mut values = [None; 4];
        for (value, va) in
            values
                .iter_mut()
                .zip([PRESENT_VA, PAGED_OUT_VA, UNSERVED_VA, NONCANONICAL_VA])
        {
            *value = prober.probe(|| ctx.read_u64(Va(va))).unwrap();
        }
        let faults = prober.into_faults();
        let mut injected = None;
        for &fault in faults.iter() {
            let tries = self.attempts(fault);
            if *tries >= RETRIES {
                // The guest had its chances: it will never serve this one.
                self.suppressed.insert(fault).unwrap();
                continue;
            }
            *tries += 1;
            ctx.inject_page_fault(fault).unwrap();
            injected = Some(fault);
            break;
        }
        self.done = injected.is_none();
        self.rounds.push(Round {
            values,
            recorded: faults.iter().copied().collect(),
            injected,
            suppressed: self.suppressed.iter().copied().collect(),
        });
        VmiEventResponse::continue_()
    }

    fn finished(&self) -> bool {
        self.done
    }
}

#[test]
fn a_prober_records_faults_and_the_handler_pages_them_in_on_retry() {
    let mut layout = Layout4::new();
    let root = layout.frame();
    layout.map_u64(root, PRESENT_VA, 0xaaaa);
    let (frame, pte) = layout.map_u64(root, PAGED_OUT_VA & !0xfff, 0);
    layout.write(frame + (PAGED_OUT_VA & 0xfff), &0xbbbbu64.to_le_bytes());
    // The guest paged it out: the PTE keeps its frame, the present bit is clear.
    let paged_out = layout.entry(pte);
    layout.set_entry(pte, paged_out & !PRESENT);

    let driver = ScriptedDriver::new(layout.memory, 1).with_registers(registers64(root, 0));
    // The guest model: its #PF handler brings in the paged-out page, and nothing else.
    driver.on_interrupt(move |memory, _vcpu, interrupt| {
        if interrupt.vector == vector::PF && interrupt.cr2 == Some(PAGED_OUT_VA & !0xfff) {
            memory[pte as usize..pte as usize + 8].copy_from_slice(&paged_out.to_le_bytes());
        }
    });
    // The breakpoint fires again each time the guest returns from its #PF handler.
    for _ in 0..5 {
        driver.push_event(ScriptedEvent::new(
            0,
            EventReason::Interrupt(InterruptEvent {
                vector: vector::BP,
                typ: InterruptType::SoftwareException,
                error_code: None,
                instruction_length: 1,
            }),
        ));
    }
    let core = VmiCore::new(driver);
    let mut handler = PageInHandler::new();
    VmiSession::new(&core, &NoOs).handle(&mut handler).unwrap();

    let page = |va: u64| AddressContext::new(Va(va & !0xfff), Pa(root));
    let (b, c, n) = (page(PAGED_OUT_VA), page(UNSERVED_VA), page(NONCANONICAL_VA));
    let rounds = &handler.rounds;
    // Four events in the loop, the fifth answered during clean-up.
    assert_eq!(rounds.len(), 5, "{rounds:#?}");

    // 1: the paged-out and the unmapped page are recorded; the non-canonical address can
    //    never be served and goes straight to the suppressed set; a #PF for the first.
    assert_eq!(rounds[0].values, [Some(0xaaaa), None, None, None]);
    assert_eq!(rounds[0].recorded, [b, c]);
    assert_eq!(rounds[0].suppressed, [n]);
    assert_eq!(rounds[0].injected, Some(b));
    // 2: the guest served it: the retry reads it. The unmapped page's turn.
    assert_eq!(rounds[1].values, [Some(0xaaaa), Some(0xbbbb), None, None]);
    assert_eq!(rounds[1].recorded, [c]);
    assert_eq!(rounds[1].injected, Some(c));
    // 3: still missing; the second and last try.
    assert_eq!(rounds[2].injected, Some(c));
    // 4: given up: suppressed, nothing injected, the handler is done.
    assert_eq!(rounds[3].recorded, [c]);
    assert_eq!(rounds[3].injected, None);
    assert_eq!(rounds[3].suppressed, [n, c]);
    // 5: suppressed faults are not recorded again, and the reads still come back empty.
    assert_eq!(rounds[4].values, [Some(0xaaaa), Some(0xbbbb), None, None]);
    assert!(rounds[4].recorded.is_empty());

    // The driver saw exactly three #PFs, each a not-present supervisor read with CR2 the
    // page; delivery set the vCPU's CR2.
    let pf = |p: AddressContext| (VcpuId(0), Interrupt::page_fault(p.va, 0));
    assert_eq!(core.driver().injected(), [pf(b), pf(c), pf(c)]);
    assert_eq!(core.registers(VcpuId(0)).unwrap().cr2, c.va.0);
}

#[test]
fn page_fault_injection_follows_the_cpl_and_refuses_another_root() {
    struct Inject(Vec<Result<(), VmiError>>);
    impl VmiHandler<ScriptedDriver, NoOs> for Inject {
        fn handle_event(
            &mut self,
            ctx: VmiContext<'_, ScriptedDriver, NoOs>,
        ) -> VmiEventResponse<Amd64> {
            let other = AddressContext::new(Va(0x1000), Pa(0x77000));
            self.0.push(ctx.inject_page_fault(other));
            self.0.push(ctx.inject_page_fault(ctx.address(Va(0x5000))));
            // One event per vCPU entry: a second injection is refused by the driver.
            self.0
                .push(ctx.inject_interrupt(Interrupt::general_protection(0)));
            VmiEventResponse::continue_()
        }
    }
    let driver = ScriptedDriver::new(vec![0; MEMORY], 1).with_registers(registers64(0x1000, 3));
    driver.load_script("event 0 singlestep\n").unwrap();
    let core = VmiCore::new(driver);
    let mut handler = Inject(Vec::new());
    VmiSession::new(&core, &NoOs)
        .wait_for_event(introvisor::DEFAULT_EVENT_TIMEOUT, &mut handler)
        .unwrap();
    assert!(matches!(handler.0[0], Err(VmiError::InvalidArgument(_))));
    assert_eq!(handler.0[1], Ok(()));
    assert!(matches!(handler.0[2], Err(VmiError::Driver(_))));
    // CPL 3: the U/S bit is set (SDM Vol. 3A §4.7).
    assert_eq!(
        core.driver().injected(),
        [(VcpuId(0), Interrupt::page_fault(Va(0x5000), 0b100))]
    );
}

#[test]
fn a_prober_passes_other_errors_on_and_files_unservable_faults() {
    let mut layout = Layout4::new();
    let root = layout.frame();
    // A page mapped to a frame past the end of guest memory: the walk succeeds, the read
    // of the data fails, and that is not a page fault.
    layout.map(root, 0x1000, 0x4000_0000);
    // A reserved bit in a present PTE: an address bit at or above MAXPHYADDR (40 here;
    // SDM Vol. 3A §4.5, Table 4-20).
    let pte = layout.map(root, 0x2000, 0x3000);
    layout.set_entry(pte, layout.entry(pte) | (1 << 45));
    let driver = ScriptedDriver::new(layout.memory, 1).with_registers(registers64(root, 0));
    driver.load_script("event 0 singlestep\n").unwrap();
    let core =
        VmiCore::new(driver).with_paging(Paging::new(PagingMode::Level4).with_max_phys_addr(40));

    struct Probe(
        Vec<Result<Option<u64>, VmiError>>,
        PageFaults<4>,
        Vec<Probed>,
    );
    impl VmiHandler<ScriptedDriver, NoOs> for Probe {
        fn handle_event(
            &mut self,
            ctx: VmiContext<'_, ScriptedDriver, NoOs>,
        ) -> VmiEventResponse<Amd64> {
            let mut prober = VmiProber::<Amd64, 4>::new(&mut self.1);
            self.0.push(prober.probe(|| ctx.read_u64(Va(0x1000))));
            self.0.push(prober.probe(|| ctx.read_u64(Va(0x2000))));
            let fault = PageFault {
                va: Va(0x2008),
                root: ctx.root(),
                level: 1,
                entry: Pa(0),
                value: 0,
                reason: FaultReason::ReservedBit,
            };
            self.2.push(prober.file(&fault));
            assert!(prober.faults().is_empty());
            VmiEventResponse::continue_()
        }
    }
    let mut handler = Probe(Vec::new(), PageFaults::new(), Vec::new());
    VmiSession::new(&core, &NoOs)
        .wait_for_event(introvisor::DEFAULT_EVENT_TIMEOUT, &mut handler)
        .unwrap();
    assert!(matches!(
        handler.0[0],
        Err(VmiError::GfnNotPresent(_) | VmiError::OutOfBounds(_))
    ));
    assert_eq!(handler.0[1], Ok(None));
    assert_eq!(handler.2, [Probed::Suppressed]);
    assert_eq!(
        handler.1.iter().copied().collect::<Vec<_>>(),
        [AddressContext::new(Va(0x2000), Pa(root))]
    );
}

// ----- what the driver cannot do is rejected, not half-done ---------------------------

#[test]
fn responses_the_driver_cannot_apply_are_rejected() {
    struct Odd;
    impl VmiHandler<ScriptedDriver, NoOs> for Odd {
        fn handle_event(
            &mut self,
            ctx: VmiContext<'_, ScriptedDriver, NoOs>,
        ) -> VmiEventResponse<Amd64> {
            let r = VmiEventResponse::continue_();
            if ctx.reason().is_singlestep() {
                // No such view, nothing to reinject, no write to deny.
                r.switch_view(View(9)).reinject_interrupt().deny()
            } else {
                // A reinjection while an injected #GP is pending on the vCPU.
                ctx.inject_interrupt(Interrupt::general_protection(0))
                    .unwrap();
                r.reinject_interrupt()
            }
        }
    }
    let driver = ScriptedDriver::new(vec![0; MEMORY], 1);
    driver
        .load_script("event 0 singlestep\nevent 0 breakpoint\nevent 7 singlestep\n")
        .unwrap();
    let core = VmiCore::new(driver);
    let session = VmiSession::new(&core, &NoOs);
    let timeout = introvisor::DEFAULT_EVENT_TIMEOUT;
    session.wait_for_event(timeout, &mut Odd).unwrap();
    session.wait_for_event(timeout, &mut Odd).unwrap();
    // An event for a vCPU the guest does not have is an error, not a panic.
    assert_eq!(
        session.wait_for_event(timeout, &mut Odd),
        Err(VmiError::NotFound)
    );
    let why: Vec<&str> = core
        .driver()
        .log()
        .iter()
        .filter_map(|a| match a {
            Action::Rejected { why, .. } => Some(*why),
            _ => None,
        })
        .collect();
    assert_eq!(
        why,
        [
            "unknown view",
            "nothing to deny",
            "no interrupt to reinject",
            "an interrupt is pending already"
        ]
    );
    assert_eq!(core.driver().vcpu_view(VcpuId(0)).unwrap(), View(0));
    assert_eq!(
        core.driver().injected(),
        [(VcpuId(0), Interrupt::general_protection(0))]
    );
}

// ----- the replay format -----------------------------------------------------------

#[test]
fn the_replay_format_round_trips_every_step() {
    let steps = vec![
        Step::Registers {
            vcpu: VcpuId(1),
            values: vec![("rax", 1), ("cr3", 0x1000), ("cs_access", 0x209b)],
        },
        Step::Write {
            pa: Pa(0x3000),
            data: b"hi\0".to_vec(),
        },
        Step::Timeout,
        Step::Event(
            ScriptedEvent::new(
                2,
                EventReason::MemoryAccess(MemoryAccessEvent {
                    pa: Pa(0x1234),
                    va: None,
                    access: MemoryAccess::RWX,
                }),
            )
            .in_view(View(3))
            .asynchronous(),
        ),
        Step::Event(ScriptedEvent::new(
            0,
            EventReason::Interrupt(InterruptEvent {
                vector: 13,
                typ: InterruptType::HardwareException,
                error_code: Some(0x18),
                instruction_length: 0,
            }),
        )),
        Step::Event(ScriptedEvent::new(
            0,
            EventReason::Interrupt(InterruptEvent {
                vector: 0x80,
                typ: InterruptType::SoftwareInterrupt,
                error_code: None,
                instruction_length: 2,
            }),
        )),
        Step::Event(ScriptedEvent::new(
            0,
            EventReason::Interrupt(InterruptEvent {
                vector: 1,
                typ: InterruptType::PrivilegedSoftwareException,
                error_code: None,
                instruction_length: 1,
            }),
        )),
        Step::Event(ScriptedEvent::new(
            0,
            EventReason::Interrupt(InterruptEvent {
                vector: 2,
                typ: InterruptType::Nmi,
                error_code: None,
                instruction_length: 0,
            }),
        )),
        Step::Event(ScriptedEvent::new(0, EventReason::Singlestep)),
        Step::Event(ScriptedEvent::new(
            0,
            EventReason::WriteControlRegister(ControlRegisterEvent {
                register: ControlRegister::Cr0,
                old: 0x11,
                new: 0x8000_0011,
            }),
        )),
        Step::Event(ScriptedEvent::new(
            0,
            EventReason::WriteMsr(MsrEvent {
                index: 0x174,
                old: Some(8),
                new: 0x10,
            }),
        )),
        Step::Event(ScriptedEvent::new(
            0,
            EventReason::Cpuid(CpuidEvent {
                leaf: 7,
                subleaf: 1,
                instruction_length: 2,
            }),
        )),
        Step::Event(ScriptedEvent::new(
            0,
            EventReason::Io(IoEvent {
                port: 0x60,
                size: 4,
                direction: IoDirection::In,
            }),
        )),
    ];
    let text: String = steps.iter().map(|s| format!("{s}\n")).collect();
    assert_eq!(parse_script(&text).unwrap(), steps, "{text}");
}

#[test]
fn the_replay_parser_names_the_bad_line() {
    let cases = [
        ("event 0 teleport", "unknown event reason"),
        ("event 0 memory gpa=1", "`access=` is missing"),
        ("event 0 memory gpa=1 access=q", "unknown access kind"),
        ("event 0 cpuid leaf=1 leaf=2", "given twice"),
        ("event 0 io port=0x10000 size=1 dir=in", "out of range"),
        ("event 0 io port=1 size=3 dir=in", "not 1, 2 or 4"),
        (
            "event 0 interrupt vector=3 type=magic",
            "unknown interrupt type",
        ),
        ("event 0 singlestep extra=1", "unknown field"),
        ("event 70000 singlestep", "out of range"),
        ("event", "the vCPU is missing"),
        ("event 0", "the event reason is missing"),
        (
            "event 0 cr register=cr9 old=0 new=1",
            "unknown control register",
        ),
        ("regs 0 rax=zz", "not a number"),
        ("regs 0 xmm0=1", "unknown register"),
        ("regs 0 cs_access=0x100000000", "out of range"),
        ("regs 0", "sets no register"),
        ("write 0x10 abc", "pairs"),
        ("timeout now", "takes nothing"),
        ("jump 0", "unknown step"),
    ];
    for (line, expected) in cases {
        let text = format!("# header\ntimeout\n{line}\n");
        let err = parse_script(&text).unwrap_err();
        assert_eq!(err.line, 3, "{line}");
        assert!(err.message.contains(expected), "{line}: {}", err.message);
    }
    let driver = ScriptedDriver::new(vec![0; 4096], 1);
    let err = driver
        .load_script_file(temp_path("does-not-exist.replay"))
        .unwrap_err();
    assert_eq!(err.line, 0);
    assert_eq!(driver.steps_left(), 0);
}

#[test]
fn script_steps_change_memory_and_registers_before_the_next_event() {
    let driver = ScriptedDriver::new(vec![0; 0x4000], 1);
    driver
        .load_script("write 0x2000 0102030405060708\nregs 0 rip=0x1234 r15=7\nevent 0 singlestep\n")
        .unwrap();
    let core = VmiCore::new(driver);
    let mut seen = Vec::new();
    core.wait_for_event(introvisor::DEFAULT_EVENT_TIMEOUT, |event| {
        seen.push(event.registers.gp());
        VmiEventResponse::continue_()
    })
    .unwrap();
    assert_eq!(seen[0].rip, 0x1234);
    assert_eq!(seen[0].r15, 7);
    assert_eq!(
        core.read_u64(AccessContext::direct(Pa(0x2000))).unwrap(),
        0x0807_0605_0403_0201
    );
    // Out of memory writes are ignored by the script, and reads past the end are errors.
    assert_eq!(
        core.read_u8(AccessContext::direct(Pa(0x4000))),
        Err(VmiError::GfnNotPresent(introvisor::Gfn(4)))
    );
}

// ----- no allocation once warm -------------------------------------------------------

/// A handler that does what a real one does on each event: reads through the event's
/// address space, probes a paged-out page, injects a #PF now and then, and answers with
/// registers, views and single steps.
struct Busy {
    suppressed: PageFaults<4>,
    events: u64,
    checksum: u64,
    limit: u64,
}

impl VmiHandler<ScriptedDriver, NoOs> for Busy {
    fn handle_event(
        &mut self,
        ctx: VmiContext<'_, ScriptedDriver, NoOs>,
    ) -> VmiEventResponse<Amd64> {
        self.events += 1;
        let mut prober = VmiProber::<Amd64, 4>::new(&mut self.suppressed);
        let value = prober.probe(|| ctx.read_u64(Va(SHARED_VA))).unwrap();
        let missing = prober.probe(|| ctx.read_u64(Va(PAGED_OUT_VA))).unwrap();
        let mut buf = [0u8; 16];
        let name = ctx
            .read_string_bytes_into(Va(SHARED_VA + 16), &mut buf)
            .unwrap()
            .len();
        self.checksum = self
            .checksum
            .wrapping_add(value.unwrap_or(0) + missing.unwrap_or(0) + name as u64);
        if self.events.is_multiple_of(3)
            && let Some(fault) = prober.faults().first()
        {
            ctx.inject_page_fault(*fault).unwrap();
        }
        let mut gp: GpRegisters = ctx.registers().gp();
        gp.rip += 1;
        let r = VmiEventResponse::continue_();
        match self.events % 4 {
            0 => r.set_registers(gp),
            1 => r.switch_view(View(1)).toggle_singlestep(),
            2 => r.fast_singlestep(View(0)).emulate(),
            _ => r.reinject_interrupt(),
        }
    }

    fn finished(&self) -> bool {
        self.events >= self.limit
    }
}

#[test]
fn a_warm_loop_iteration_allocates_nothing() {
    let mut layout = Layout4::new();
    let root = layout.frame();
    let (frame, _) = layout.map_u64(root, SHARED_VA, 0x1234);
    layout.write(frame + 16, b"busy\0");
    let pte = layout.map(root, PAGED_OUT_VA & !0xfff, 0x9000);
    layout.set_entry(pte, layout.entry(pte) & !PRESENT);
    let driver = ScriptedDriver::new(layout.memory, 1).with_registers(registers64(root, 0));
    driver.create_views(1);
    driver.reserve_log(100_000);
    let breakpoint = ScriptedEvent::new(
        0,
        EventReason::Interrupt(InterruptEvent {
            vector: vector::BP,
            typ: InterruptType::SoftwareException,
            error_code: None,
            instruction_length: 1,
        }),
    );
    for _ in 0..1000 {
        driver.push_event(breakpoint);
    }
    let core = VmiCore::new(driver);
    let session = VmiSession::new(&core, &NoOs);
    let mut handler = Busy {
        suppressed: PageFaults::new(),
        events: 0,
        checksum: 0,
        limit: 900,
    };
    let timeout = introvisor::DEFAULT_EVENT_TIMEOUT;
    // The counter counts.
    assert_eq!(
        count_allocations(|| drop(core::hint::black_box(Vec::<u8>::with_capacity(8)))),
        1
    );
    // Warm up: the caches fill.
    for _ in 0..16 {
        session.wait_for_event(timeout, &mut handler).unwrap();
    }
    let iterations = count_allocations(|| {
        for _ in 0..256 {
            session.wait_for_event(timeout, &mut handler).unwrap();
        }
    });
    assert_eq!(iterations, 0, "allocations in 256 warm loop iterations");
    // The whole loop to the end, with the clean-up (reset, pause, drain, resume).
    let whole = count_allocations(|| session.handle(&mut handler).unwrap());
    assert_eq!(whole, 0, "allocations in a warm session.handle");
    // The work was done: every event answered, #PFs injected, values read.
    assert_eq!(handler.events, 1000);
    assert!(handler.checksum > 0);
    assert_eq!(core.driver().responses().len(), 1000);
    assert!(core.driver().injected().len() > 100);
}
