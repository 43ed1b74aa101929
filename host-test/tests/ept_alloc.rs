//! The EPT backend's exit path and its reads allocate nothing: every call of
//! `EptBackend::on_exit` (decode, event, handler, response applied) made by the simulated
//! vCPUs is counted, inline and queued, for EPT violations (real and spurious), a
//! breakpoint with its fast single step, a CR3 write and CPUID; and `VmiCore` reads the
//! guest through the backend without allocating, cold and warm.
//!
//! Only the backend's calls are counted: the simulator's own bookkeeping (its TLB, its
//! logs) runs outside `count_allocations`.

use core::time::Duration;

use introvisor::arch::amd64::{Amd64, ControlRegister, EventMonitor, vector};
use introvisor::{
    AccessContext, Gfn, MemoryAccess, Pa, Va, VcpuId, View, VmiCore, VmiDriver, VmiEvent,
    VmiEventResponse,
};
use introvisor_ept::{Config, EptBackend, EptCapabilities, ExitAction, InlineHandler};
use introvisor_host_test::counting_alloc::{CountingAllocator, count_allocations};
use introvisor_host_test::vmx_sim::guest::{self, BIG_2M, DATA, HIGH, SHADOW_GFN, TEXT};
use introvisor_host_test::vmx_sim::{
    FRAME, Gpr, Insn, RunError, Sim, SimConfig, SimPlatform, Step, carry_out, exit_info,
};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

type Backend = EptBackend<SimPlatform, 3, 512, 4, 8>;
type Response = VmiEventResponse<Amd64>;

fn world(vcpus: usize) -> (Sim, Backend) {
    let sim = Sim::new(SimConfig {
        vcpus,
        ..SimConfig::default()
    });
    let caps = EptCapabilities::typical();
    let backend = Backend::new(
        SimPlatform::new(sim.machine.clone()),
        &Config::new(caps, &sim.regions, sim.pool),
    )
    .unwrap();
    (sim, backend)
}

fn gfn(sim: &Sim, va: u64) -> Gfn {
    Gfn(guest::gpa_of(&sim.guest, va) >> 12)
}

/// Runs `script` on vCPU 0, counting the allocations of each `on_exit` (inline with
/// `handler`, or queued with `None`); returns (exits, allocations).
fn run_counted(
    sim: &Sim,
    backend: &Backend,
    script: &[Step],
    mut handler: Option<&mut InlineHandler<'_>>,
) -> (u64, u64) {
    let (mut exits, mut allocations) = (0u64, 0u64);
    let r = sim.machine.run(0, script, 1000, &mut |raw| {
        let info = exit_info(raw);
        let mut action = Ok(ExitAction::Resume);
        let h = handler.as_deref_mut();
        allocations += count_allocations(|| action = backend.on_exit(VcpuId(0), &info, h));
        exits += 1;
        carry_out(
            backend.platform(),
            0,
            raw,
            action.map_err(RunError::Backend)?,
        );
        Ok(())
    });
    r.unwrap();
    (exits, allocations)
}

/// A script exercising every exit kind the test covers.
fn script(sim: &Sim) -> Vec<Step> {
    let mut at = TEXT + 0x100;
    let mut steps = Vec::new();
    let mut push = |len: u8, insn: Insn| {
        steps.push(Step::new(at, len, insn));
        at += u64::from(len);
    };
    for k in 0..8u64 {
        push(10, Insn::Mov(Gpr::Rax, k));
        push(
            4,
            Insn::Store {
                va: DATA + 5 * FRAME + k * 8,
                size: 8,
            },
        );
        push(
            4,
            Insn::Load {
                va: DATA + 6 * FRAME + k * 8,
                size: 8,
            },
        );
    }
    push(10, Insn::Mov(Gpr::Rax, sim.regs.cr3));
    push(3, Insn::MovCr3);
    push(10, Insn::Mov(Gpr::Rax, 1));
    push(2, Insn::Cpuid);
    steps
}

fn prepare(sim: &Sim, backend: &Backend) -> View {
    // Watched (writes), loosened after a first access (spurious), CR3 and CPUID monitored.
    backend
        .set_memory_access(gfn(sim, DATA + 5 * FRAME), View(0), MemoryAccess::RX)
        .unwrap();
    backend
        .set_memory_access(gfn(sim, DATA + 6 * FRAME), View(0), MemoryAccess::X)
        .unwrap();
    backend
        .monitor_enable(EventMonitor::Register(ControlRegister::Cr3))
        .unwrap();
    backend.monitor_enable(EventMonitor::Cpuid).unwrap();
    backend.create_view(MemoryAccess::RWX).unwrap()
}

#[test]
fn exits_handled_inline_allocate_nothing() {
    let (sim, backend) = world(2);
    let open = prepare(&sim, &backend);
    let data6 = gfn(&sim, DATA + 6 * FRAME);
    let mut events = 0u32;
    let mut handler = |e: &VmiEvent<Amd64>| {
        events += 1;
        if let Some(m) = e.reason.as_memory_access() {
            if m.gfn() == data6 {
                // Loosen from inside the handler: the next reads are spurious at most.
                let _ = backend.set_memory_access(data6, View(0), MemoryAccess::RWX);
                return Response::continue_();
            }
            return Response::continue_().fast_singlestep(open);
        }
        Response::continue_()
    };
    let steps = script(&sim);
    let (exits, allocations) = run_counted(&sim, &backend, &steps, Some(&mut handler));
    assert!(exits >= 8 + 8 + 2, "{exits} exits");
    assert!(events >= 8 + 1 + 2);
    assert_eq!(allocations, 0, "allocations in {exits} exits");
}

#[test]
fn a_stealth_breakpoint_step_allocates_nothing() {
    let (sim, backend) = world(2);
    let code = gfn(&sim, TEXT);
    let mut page = vec![0u8; FRAME as usize];
    backend.read_physical(Pa(code.0 << 12), &mut page).unwrap();
    page[0x40] = 0xcc;
    let shadow = Gfn(SHADOW_GFN);
    backend.allocate_gfn(shadow).unwrap();
    backend.write_physical(Pa(shadow.0 << 12), &page).unwrap();
    let exec = backend.create_view(MemoryAccess::RWX).unwrap();
    backend.change_view_gfn(exec, code, shadow).unwrap();
    backend
        .set_memory_access(code, exec, MemoryAccess::X)
        .unwrap();
    backend
        .monitor_enable(EventMonitor::Exception(vector::BP))
        .unwrap();
    backend.switch_to_view(exec).unwrap();
    let steps: Vec<Step> = (0..4)
        .map(|i| Step::new(TEXT + 0x3e + i * 2, 2, Insn::Nop))
        .collect();
    let mut hits = 0u32;
    let mut handler = |e: &VmiEvent<Amd64>| {
        assert!(e.reason.as_interrupt().is_some());
        hits += 1;
        Response::continue_().fast_singlestep(View(0))
    };
    let (exits, allocations) = run_counted(&sim, &backend, &steps, Some(&mut handler));
    assert_eq!(hits, 1);
    assert!(exits >= 2, "the #BP and the MTF exit of the step");
    assert_eq!(allocations, 0);
}

#[test]
fn queued_exits_allocate_nothing_on_either_side() {
    let (sim, backend) = world(2);
    let open = prepare(&sim, &backend);
    let steps = script(&sim);
    let done = core::sync::atomic::AtomicBool::new(false);
    let (served, server_allocations, (exits, allocations)) = std::thread::scope(|s| {
        let server = s.spawn(|| {
            let mut served = 0u32;
            let mut handler = |e: &VmiEvent<Amd64>| {
                served += 1;
                if e.reason.as_memory_access().is_some() {
                    Response::continue_().fast_singlestep(open)
                } else {
                    Response::continue_()
                }
            };
            let mut allocations = 0;
            while !done.load(core::sync::atomic::Ordering::SeqCst) {
                allocations += count_allocations(|| {
                    let _ = backend.wait_for_event(Duration::from_millis(5), &mut handler);
                });
            }
            (served, allocations)
        });
        let counted = run_counted(&sim, &backend, &steps, None);
        done.store(true, core::sync::atomic::Ordering::SeqCst);
        let (served, allocations) = server.join().unwrap();
        (served, allocations, counted)
    });
    assert!(served >= 8 + 2, "{served} events served");
    assert!(exits >= served.into());
    assert_eq!(allocations, 0, "on the exiting vCPU");
    assert_eq!(server_allocations, 0, "in wait_for_event");
}

#[test]
fn reads_through_the_backend_allocate_nothing() {
    let (sim, backend) = world(1);
    let root = Pa(sim.regs.cr3);
    let core = VmiCore::new(backend);
    let vas = [
        DATA + 0x18,
        DATA + 9 * FRAME,
        BIG_2M + 0x12_3458,
        HIGH + 0x3ff8,
    ];
    for cold in [true, false] {
        let n = count_allocations(|| {
            for &va in &vas {
                if cold {
                    core.flush_v2p_cache();
                    core.flush_gfn_cache();
                }
                core.translate(Va(va), root).unwrap();
                core.read_u64(AccessContext::paging(Va(va), root)).unwrap();
            }
        });
        assert_eq!(n, 0, "cold = {cold}");
    }
    assert_eq!(
        core.read_u64(AccessContext::paging(Va(DATA + 0x18), root))
            .unwrap(),
        0xdada_0000_0000_0003
    );
}
