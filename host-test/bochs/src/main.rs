//! # introvisor-bochs
//!
//! A bare-metal test hypervisor for `x86_64-unknown-none`, booted under Bochs's emulated
//! Intel VMX. It embeds `introvisor` and `introvisor-ept`: the EPT backend builds and owns
//! the guest's EPT, [`platform::BochsPlatform`] gives it the machine (VMREAD/VMWRITE,
//! INVEPT, the VMFUNC EPTP list, the monitor trap flag), and every VM exit goes through
//! the backend's exit entry point to a `VmiHandler` ([`script::Script`]) over the
//! `VmiCore` in a `static`, built at compile time ([`CORE`]). The guest ([`guest`]) runs a script of accesses and prints what it sees on
//! COM1; the hypervisor prints one `SCENARIO` line per scenario and a `RESULT` line.
//! `run.sh` builds the image and boots it headless.

#![no_std]
#![no_main]

mod boot;
mod cpu;
#[macro_use]
mod serial;
#[macro_use]
mod guest;
mod hv;
mod idt;
mod late;
mod layout;
mod platform;
mod script;
mod vcpu;
mod vmx;

use core::panic::PanicInfo;

use introvisor::arch::amd64::Amd64;
use introvisor::arch::amd64::{ControlRegister, EventMonitor, vector};
use introvisor::{
    AccessContext, Gfn, MemoryAccess, NoOs, Pa, VcpuId, VmiContext, VmiCore, VmiError, VmiEvent,
    VmiHandler,
};
use introvisor_ept::{
    Config, EptBackend, EptCapabilities, ExitAction, ExitInfo, FramePool, GuestRegion, Hpa,
    MemoryType,
};

use hv::Frame;
use late::LateBackend;
use layout::call;
use platform::BochsPlatform;
use script::{Script, Seen};
use vmx::{field, vmread};

/// The backend: one alternate view, a 512-frame pool, one vCPU, a one-slot queue.
pub type Backend = EptBackend<BochsPlatform, 1, POOL_FRAMES, 1, 1>;

/// Frames in the EPT frame pool (2 MiB).
const POOL_FRAMES: usize = 512;

/// The frame pool handed to the backend: its tables and shadow frames.
static mut POOL: [Frame; POOL_FRAMES] = [const { Frame([0; 4096]) }; POOL_FRAMES];

/// The EPT backend, built once VMX is on (its default view's EPT comes from the CPU's
/// capability MSRs, so it cannot be built by the compiler).
static BACKEND: spin::Once<Backend> = spin::Once::new();

/// The introspection core: a `static`, built at compile time (`VmiCore::new` is a
/// `const fn`), over a handle to the backend it reaches once [`BACKEND`] is filled.
pub static CORE: VmiCore<LateBackend> = VmiCore::new(LateBackend(&BACKEND));

/// Rust's entry, called by the boot stage in long mode on the host stack.
extern "C" fn kmain() -> ! {
    serial::init();
    let idt = idt::init();
    println!(
        "HV: long mode, host stack {} KiB",
        boot::HOST_STACK_SIZE / 1024
    );
    let caps = hv::enable().unwrap_or_else(|e| fail(format_args!("VMX: {e}")));
    hv::print_caps(&caps);
    let start = hv::GuestStart {
        rip: guest::entry as *const () as u64,
        rsp: layout::GUEST_STACK_TOP,
        cr3: guest::build_boot_tables(),
    };
    if let Err((f, e)) = hv::setup_vmcs(&caps, idt, &start) {
        fail(format_args!("VMWRITE {f:#x}: {e}"));
    }
    let backend = build_backend(caps);
    let mut script = setup_views(&CORE).unwrap_or_else(|e| fail(format_args!("setup: {e}")));
    println!(
        "HV: VmiCore in a static built at compile time: {} bytes; the backend: {} bytes; one stack of {} KiB",
        size_of::<VmiCore<LateBackend>>(),
        size_of::<Backend>(),
        boot::HOST_STACK_SIZE / 1024
    );
    run(backend, &mut script)
}

/// Builds the backend (the default view's EPT over the guest's memory) into [`BACKEND`].
fn build_backend(caps: hv::Caps) -> &'static Backend {
    let regions = [
        GuestRegion {
            gpa: Pa(0),
            hpa: Hpa(0),
            size: layout::LOW_MEMORY_SIZE,
            memory_type: MemoryType::WriteBack,
        },
        GuestRegion {
            gpa: Pa(layout::GUEST_RAM),
            hpa: Hpa(layout::GUEST_RAM),
            size: layout::GUEST_RAM_SIZE,
            memory_type: MemoryType::WriteBack,
        },
        GuestRegion {
            gpa: Pa(layout::APIC),
            hpa: Hpa(layout::APIC),
            size: 4096,
            memory_type: MemoryType::Uncacheable,
        },
    ];
    let pool = FramePool {
        base: Hpa(core::ptr::addr_of!(POOL) as u64),
        frames: POOL_FRAMES,
    };
    let mut config = Config::new(EptCapabilities::from_msr(caps.ept_vpid), &regions, pool);
    config.eptp_list = caps.vmfunc & 1 != 0;
    let platform = BochsPlatform::new();
    platform.set_caps(caps);
    let backend = Backend::new(platform, &config)
        .unwrap_or_else(|e| fail(format_args!("EptBackend::new: {e}")));
    BACKEND.call_once(|| backend)
}

/// Creates the breakpoint view, arms the breakpoint and the write watch, enables the
/// monitors, and moves the guest into the breakpoint view.
fn setup_views(core: &VmiCore<LateBackend>) -> Result<Script, VmiError> {
    let step_view = core.default_view()?;
    let watch_view = core.create_view(MemoryAccess::RWX)?;
    // The image is code and constants: read and execute only, in both views.
    for gfn in 1..(layout::LOW_MEMORY_SIZE >> 12) {
        for view in [step_view, watch_view] {
            core.set_memory_access(Gfn(gfn), view, MemoryAccess::RX)?;
        }
    }
    // The stealth breakpoint: a copy of the hooked page with INT3 at the hooked
    // instruction, mapped execute-only in the breakpoint view.
    let hooked_va = guest::hooked_address();
    let hooked_gfn = Gfn(hooked_va >> 12);
    let shadow = core.allocate_next_available_gfn()?;
    let mut page = [0u8; 4096];
    core.read(AccessContext::direct(Pa(hooked_gfn.0 << 12)), &mut page)?;
    let original = page[(hooked_va & 0xFFF) as usize];
    page[(hooked_va & 0xFFF) as usize] = 0xCC;
    core.write(AccessContext::direct(Pa(shadow.0 << 12)), &page)?;
    core.change_view_gfn(watch_view, hooked_gfn, shadow)?;
    core.set_memory_access(hooked_gfn, watch_view, MemoryAccess::X)?;
    // The write watch: the watched frame read-only in the breakpoint view.
    core.set_memory_access(
        Gfn(layout::WATCHED_FRAME >> 12),
        watch_view,
        MemoryAccess::RX,
    )?;
    core.monitor_enable(EventMonitor::Exception(vector::BP))?;
    core.monitor_enable(EventMonitor::Register(ControlRegister::Cr3))?;
    core.monitor_enable(EventMonitor::Cpuid)?;
    core.switch_to_view(watch_view)?;
    println!(
        "HV: views: step (default) {step_view:?}, watch {watch_view:?}; breakpoint at {hooked_va:#x} (gfn {:#x}, original byte {original:#x}) shadow gfn {:#x}; watched gfn {:#x}",
        hooked_gfn.0,
        shadow.0,
        layout::WATCHED_FRAME >> 12
    );
    Ok(Script {
        scenario: None,
        seen: Seen::default(),
        watch_view,
        step_view,
        hooked_va,
        log: guest::Line::new(),
    })
}

/// Counters of the exit loop.
#[derive(Clone, Copy, Default)]
struct Counters {
    exits: u64,
    external_interrupts: u64,
    mtf: u64,
    tf_steps: u64,
    /// Bochs's instruction count (TSC) spent in `EptBackend::on_exit`: decoding,
    /// the handler, applying its response.
    backend_insns: u64,
}

/// The exit loop: enter the guest, read the exit, hand it to the backend, act on its
/// answer.
fn run(backend: &'static Backend, script: &mut Script) -> ! {
    let mut launched = false;
    let mut total = Counters::default();
    let mut at_begin = (Counters::default(), 0u64);
    let mut passed = 0usize;
    let start_tsc = cpu::rdtsc();
    let platform = backend.platform();
    // Does the CPU deliver MTF exits? Where the control is allowed, the first VM entry
    // runs with the monitor trap flag set: an MTF exit after the guest's first
    // instruction says yes.
    let primary = vmread(field::PROC_BASED_CONTROLS).unwrap_or(0);
    let mtf_allowed = hv::allowed1(platform_caps_proc(), hv::proc::MONITOR_TRAP_FLAG);
    if mtf_allowed {
        let probe = primary | u64::from(hv::proc::MONITOR_TRAP_FLAG);
        // SAFETY: the monitor trap flag for the first entry only (cleared below).
        if unsafe { vmx::vmwrite(field::PROC_BASED_CONTROLS, probe) }.is_err() {
            fail(format_args!("VMWRITE primary controls"));
        }
    }
    if !mtf_allowed {
        platform.set_native_mtf(false);
        println!(
            "HV: MTF: not offered by this CPU model: the monitor trap is done with RFLAGS.TF and #DB exiting"
        );
    }
    let mut probing = mtf_allowed;
    loop {
        platform.load_pending_cr2();
        // SAFETY: the VMCS is complete (setup_vmcs, and the backend's EPTP) with host RIP
        // = the exit stub.
        if let Err(e) = unsafe { vcpu::enter(launched) } {
            fail(format_args!("VM entry: {e}"));
        }
        launched = true;
        let mut info = exit_info();
        total.exits += 1;
        if probing {
            probing = false;
            // SAFETY: back to the controls the backend set up.
            if unsafe { vmx::vmwrite(field::PROC_BASED_CONTROLS, primary) }.is_err() {
                fail(format_args!("VMWRITE primary controls"));
            }
            let native = info.reason == 37;
            platform.set_native_mtf(native);
            println!(
                "HV: MTF probe: first exit reason {:#x}: {}",
                info.reason,
                if native {
                    "the CPU delivers MTF exits"
                } else {
                    "no MTF exit (Bochs 2.7): the monitor trap is done with RFLAGS.TF and #DB exiting"
                }
            );
            if native {
                continue;
            }
        }
        if cfg!(feature = "trace") {
            println!(
                "TRACE exit (as Bochs gave it) reason={:#x} qual={:#x} len={} rip={:#x} eptp={:#x} proc={:#x} pin={:#x} intr={:#x} vect={:#x} ia={:#x}",
                info.reason,
                info.qualification,
                info.instruction_length,
                vmread(field::GUEST_RIP).unwrap_or(0),
                vmread(field::EPT_POINTER).unwrap_or(0),
                vmread(field::PROC_BASED_CONTROLS).unwrap_or(0),
                vmread(field::PIN_BASED_CONTROLS).unwrap_or(0),
                info.interruption_information,
                info.idt_vectoring_information,
                vmread(field::GUEST_INTERRUPTIBILITY).unwrap_or(0),
            );
        }
        if platform.translate_exit(&mut info) {
            total.tf_steps += 1;
        }
        match info.reason & 0xFFFF {
            1 => total.external_interrupts += 1,
            37 => total.mtf += 1,
            _ => {}
        }
        let before = cpu::rdtsc();
        let action = {
            // What EptBackend::handle_exit does for a core over the backend itself: the
            // handler answers inline, through a context over the static core.
            let mut inline = |event: &VmiEvent<Amd64>| {
                CORE.flush_v2p_cache();
                script.handle_event(VmiContext::new(&CORE, &NoOs, event))
            };
            backend.on_exit(VcpuId(0), &info, Some(&mut inline))
        };
        total.backend_insns += cpu::rdtsc() - before;
        if !script.log.is_empty() {
            script.log.send();
            script.log.clear();
        }
        let action = action
            .unwrap_or_else(|e| fail(format_args!("on_exit (reason {:#x}): {e}", info.reason)));
        if cfg!(feature = "trace") {
            println!(
                "TRACE action={action:?} eptp={:#x} proc={:#x} pin={:#x} entry_intr={:#x}",
                vmread(field::EPT_POINTER).unwrap_or(0),
                vmread(field::PROC_BASED_CONTROLS).unwrap_or(0),
                vmread(field::PIN_BASED_CONTROLS).unwrap_or(0),
                vmread(field::ENTRY_INTERRUPTION_INFO).unwrap_or(0),
            );
        }
        match action {
            ExitAction::Resume => {}
            ExitAction::Complete => complete(&info),
            ExitAction::SkipInstruction => advance_rip(&info),
            ExitAction::NotMine => match info.reason & 0xFFFF {
                18 => {
                    let g = vcpu::GPRS.get();
                    advance_rip(&info);
                    match g.rax {
                        call::BEGIN => {
                            script.scenario = Some(g.rbx);
                            script.seen = Seen::default();
                            at_begin = (total, cpu::rdtsc());
                        }
                        call::END => {
                            let d = Counters {
                                exits: total.exits - at_begin.0.exits,
                                external_interrupts: total.external_interrupts
                                    - at_begin.0.external_interrupts,
                                mtf: total.mtf - at_begin.0.mtf,
                                tf_steps: total.tf_steps - at_begin.0.tf_steps,
                                backend_insns: total.backend_insns - at_begin.0.backend_insns,
                            };
                            let insns = cpu::rdtsc() - at_begin.1;
                            if report(backend, script, g.rbx, d, insns) {
                                passed += 1;
                            }
                            script.scenario = None;
                        }
                        call::DONE => {
                            let insns = cpu::rdtsc() - start_tsc;
                            println!(
                                "SUMMARY exits={} external_interrupts={} mtf={} insns={insns} backend_insns={} tsc={} scenarios_passed={passed}/{} host_stack_used={} of {}",
                                total.exits,
                                total.external_interrupts,
                                total.mtf,
                                total.backend_insns,
                                cpu::rdtsc(),
                                layout::SCENARIOS.len(),
                                boot::host_stack_used(),
                                boot::HOST_STACK_SIZE
                            );
                            if passed == layout::SCENARIOS.len() {
                                println!("RESULT pass");
                            } else {
                                println!("RESULT fail");
                            }
                            serial::shutdown()
                        }
                        other => fail(format_args!("unknown VMCALL {other}")),
                    }
                }
                10 => complete(&info),
                1 | 7 => {} // an interrupt the backend did not hold: the guest takes it
                other => fail(format_args!(
                    "unexpected exit {other:#x} qual={:#x} gpa={:#x} gla={:#x} rip={:#x}",
                    info.qualification,
                    info.guest_physical_address,
                    info.guest_linear_address,
                    vmread(field::GUEST_RIP).unwrap_or(0)
                )),
            },
        }
    }
}

/// IA32_VMX_TRUE_PROCBASED_CTLS.
fn platform_caps_proc() -> u64 {
    // SAFETY: the MSR exists (hv::enable checked IA32_VMX_BASIC bit 55).
    unsafe { cpu::rdmsr(vmx::msr::IA32_VMX_TRUE_PROCBASED_CTLS) }
}

/// The exit's VM-exit information fields (SDM Vol. 3C, 25.9).
fn exit_info() -> ExitInfo {
    let r = |f| vmread(f).unwrap_or(0);
    ExitInfo {
        reason: r(field::EXIT_REASON) as u32,
        qualification: r(field::EXIT_QUALIFICATION),
        guest_linear_address: r(field::GUEST_LINEAR_ADDRESS),
        guest_physical_address: r(field::GUEST_PHYSICAL_ADDRESS),
        instruction_length: r(field::EXIT_INSTRUCTION_LENGTH) as u32,
        instruction_information: r(field::EXIT_INSTRUCTION_INFO) as u32,
        interruption_information: r(field::EXIT_INTERRUPTION_INFO) as u32,
        interruption_error_code: r(field::EXIT_INTERRUPTION_ERROR_CODE) as u32,
        idt_vectoring_information: r(field::IDT_VECTORING_INFO) as u32,
        idt_vectoring_error_code: r(field::IDT_VECTORING_ERROR_CODE) as u32,
    }
}

fn advance_rip(info: &ExitInfo) {
    let rip = vmread(field::GUEST_RIP).unwrap_or(0);
    // SAFETY: moves the guest's RIP past the instruction that exited.
    if unsafe { vmx::vmwrite(field::GUEST_RIP, rip + u64::from(info.instruction_length)) }.is_err()
    {
        fail(format_args!("VMWRITE guest RIP"));
    }
}

/// Carries out the exiting instruction as a hypervisor without introspection would, then
/// advances RIP.
fn complete(info: &ExitInfo) {
    let mut g = vcpu::GPRS.get();
    match info.reason & 0xFFFF {
        10 => {
            let [a, b, c, d] = cpu::cpuid(g.rax as u32, g.rcx as u32);
            (g.rax, g.rbx, g.rcx, g.rdx) = (a.into(), b.into(), c.into(), d.into());
            vcpu::GPRS.set(g);
        }
        28 => {
            // MOV to CR3 (SDM Vol. 3C, 28.2.1, Table 28-3): the register in bits 11:8.
            let q = info.qualification;
            let gpr = [
                g.rax, g.rcx, g.rdx, g.rbx, 0, g.rbp, g.rsi, g.rdi, g.r8, g.r9, g.r10, g.r11,
                g.r12, g.r13, g.r14, g.r15,
            ];
            let value = match (q >> 8) & 0xF {
                4 => vmread(field::GUEST_RSP).unwrap_or(0),
                n => gpr[n as usize],
            };
            if q & 0xF != 3 || (q >> 4) & 3 != 0 {
                fail(format_args!("cannot complete CR access {q:#x}"));
            }
            // SAFETY: the guest's new CR3 (bit 63, no-flush, is not set by this guest).
            if unsafe { vmx::vmwrite(field::GUEST_CR3, value & !(1 << 63)) }.is_err() {
                fail(format_args!("VMWRITE guest CR3"));
            }
        }
        other => fail(format_args!("cannot complete exit {other:#x}")),
    }
    advance_rip(info);
}

/// Checks one scenario's records and prints its `SCENARIO` line; true if it passed.
fn report(backend: &Backend, script: &Script, n: u64, d: Counters, insns: u64) -> bool {
    let s = &script.seen;
    let name = layout::SCENARIOS
        .get(n as usize)
        .copied()
        .unwrap_or("unknown");
    let common = |ok: bool| {
        if ok && s.unexpected == 0 {
            "ok"
        } else {
            "FAIL"
        }
    };
    let mut line = guest::Line::new();
    let w = &mut line;
    use core::fmt::Write as _;
    let _ = write!(w, "SCENARIO {name} ");
    let tail = |w: &mut guest::Line| {
        let _ = write!(w, " backend_insns={}", d.backend_insns);
    };
    let ok = match n {
        0 => {
            let expect = (layout::GUEST_BOOT_TABLES, layout::GUEST_OWN_TABLES);
            let now = vmread(field::GUEST_CR3).unwrap_or(0);
            let ok = s.cr3_events == 1 && s.cr3 == Some(expect) && now == expect.1;
            let (old, new) = s.cr3.unwrap_or((0, 0));
            let _ = write!(
                w,
                "{} exits={} insns={insns} events={} old={old:#x} new={new:#x} guest_cr3={now:#x}",
                common(ok),
                d.exits,
                s.cr3_events
            );
            ok
        }
        1 => {
            let ok = s.cpuid_answered == 1;
            let _ = write!(
                w,
                "{} exits={} insns={insns} answered={} leaf={:#x} name=IntroVisorHV",
                common(ok),
                d.exits,
                s.cpuid_answered,
                layout::leaf::IDENTITY
            );
            ok
        }
        2 => {
            let expect = layout::GUEST_STRING;
            let (len, h) = s.string.unwrap_or((0, 0));
            let n = len.min(32);
            let text = core::str::from_utf8(&s.string_bytes[..n]).unwrap_or("?");
            let ok = len == expect.len()
                && h == layout::fnv1a(expect)
                && s.string_bytes[..n] == expect[..n];
            let _ = write!(
                w,
                "{} exits={} insns={insns} va={:#x} len={len} hash={h:#x} text=\"{text}\"",
                common(ok),
                d.exits,
                layout::STRING_VA
            );
            ok
        }
        3 => {
            let gpa = layout::WATCHED_FRAME + layout::WATCHED_OFFSET;
            let gva = layout::WATCHED_ALIAS_VA + layout::WATCHED_OFFSET;
            let value = CORE.read_u64(AccessContext::direct(Pa(gpa))).unwrap_or(0);
            let (got_gpa, got_gva) = s.watch.unwrap_or((0, None));
            let ok = s.watch_events == 1
                && got_gpa == gpa
                && got_gva == Some(gva)
                && value == layout::WATCHED_VALUE
                && d.mtf >= 1;
            let _ = write!(
                w,
                "{} exits={} insns={insns} events={} gpa={got_gpa:#x} gva={:#x} value={value:#x} mtf={}",
                common(ok),
                d.exits,
                s.watch_events,
                got_gva.unwrap_or(0),
                d.mtf
            );
            ok
        }
        4 => {
            let ok = s.breakpoints == 1 && s.hook_reads == 1 && s.breakpoint_if == 0 && d.mtf >= 2;
            let _ = write!(
                w,
                "{} exits={} insns={insns} breakpoints={} hook_reads={} va={:#x} if_at_break=0 mtf={}",
                common(ok),
                d.exits,
                s.breakpoints,
                s.hook_reads,
                script.hooked_va,
                d.mtf
            );
            ok
        }
        5 => {
            let isr_view = s.isr_views[0];
            let ok = s.breakpoints == 2
                && s.breakpoint_if == 0b11
                && d.external_interrupts >= 1
                && s.isr_questions == 1
                && isr_view == Some(script.watch_view);
            let _ = write!(
                w,
                "{} exits={} insns={insns} breakpoints={} external_interrupt_exits={} isr_view={:?} mtf={}",
                common(ok),
                d.exits,
                s.breakpoints,
                d.external_interrupts,
                isr_view,
                d.mtf
            );
            ok
        }
        6 => {
            let eptp = vmread(field::EPT_POINTER).unwrap_or(0);
            let expect = backend.eptp(script.watch_view).map_or(0, |e| e.0);
            let ok = s.hook_reads == 1 && eptp == expect && expect != 0;
            let _ = write!(
                w,
                "{} exits={} insns={insns} hook_reads={} eptp={eptp:#x} watch_view_eptp={expect:#x}",
                common(ok),
                d.exits,
                s.hook_reads
            );
            ok
        }
        _ => false,
    };
    tail(w);
    if s.unexpected != 0 {
        let _ = write!(w, " unexpected={}", s.unexpected);
    }
    line.send();
    ok && s.unexpected == 0
}

/// Prints the reason, a failing result line, and shuts down.
fn fail(why: core::fmt::Arguments<'_>) -> ! {
    println!("HV: FATAL {why}");
    println!("RESULT fail");
    serial::shutdown()
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    println!("PANIC: {info}");
    println!("RESULT fail panic");
    serial::shutdown()
}
