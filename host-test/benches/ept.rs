//! The EPT backend on the simulated VMX machine: what a guest-virtual translation costs
//! through the guest's tables and the EPT, with introvisor's caches cold and warm, and
//! what one VM-exit round trip (decode, event, handler, response applied) costs.
//!
//! `cargo bench -p introvisor-host-test --bench ept`. `BENCH_OPS` and `BENCH_REPS` change
//! the batch size and the number of repetitions.
//!
//! The harness is the one of `benches/peers`: each workload is a batch of a fixed number
//! of operations, timed whole and repeated; the table gives the median per operation and
//! the spread. Every translation is checked once against the guest builder's own record
//! of its mappings (never against another walker), and mismatches are counted.
//!
//! The guest is `vmx_sim`'s: 4-level tables with mixed rights, a 2 MiB guest page, an
//! alias, two guest-physical regions behind 2 MiB EPT leaves. Guest memory is read by the
//! backend through the simulated platform's host frames (relaxed atomic loads), as it
//! would be in a hypervisor. The exit costs include the simulated platform's calls (a
//! mutex per VMCS access where a hypervisor does a VMREAD), so they are an upper bound
//! of the backend's own cost.

use core::hint::black_box;
use std::time::Instant;

use introvisor::VmiEventResponse;
use introvisor::arch::amd64::{Amd64, EventMonitor, vector};
use introvisor::{Gfn, MemoryAccess, Pa, Va, VcpuId, View, VmiCore, VmiDriver, VmiEvent};
use introvisor_ept::{Config, EptBackend, EptCapabilities, ExitAction, ExitInfo};
use introvisor_host::builder::PageSize;
use introvisor_host_test::counting_alloc::{CountingAllocator, count_allocations};
use introvisor_host_test::vmx_sim::exit::{RawExit, reason};
use introvisor_host_test::vmx_sim::guest::{self, DATA, SHADOW_GFN, TEXT};
use introvisor_host_test::vmx_sim::{
    FRAME, Gpr, Insn, RunError, Sim, SimConfig, SimPlatform, Step, exit_info,
};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

type Backend = EptBackend<SimPlatform, 3, 512, 4, 8>;
type Response = VmiEventResponse<Amd64>;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Row {
    name: String,
    samples: Vec<f64>,
    note: String,
}

impl Row {
    fn median(&self) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    }

    fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::INFINITY, f64::min)
    }

    fn max(&self) -> f64 {
        self.samples.iter().copied().fold(0.0, f64::max)
    }
}

/// Nanoseconds per operation of `batch` (which runs `ops` operations), `reps` times.
fn measure(reps: usize, ops: usize, mut batch: impl FnMut()) -> Vec<f64> {
    batch();
    (0..reps)
        .map(|_| {
            let start = Instant::now();
            batch();
            start.elapsed().as_nanos() as f64 / ops as f64
        })
        .collect()
}

fn world() -> (Sim, Backend) {
    let sim = Sim::new(SimConfig {
        vcpus: 2,
        ..SimConfig::default()
    });
    let backend = Backend::new(
        SimPlatform::new(sim.machine.clone()),
        &Config::new(EptCapabilities::typical(), &sim.regions, sim.pool),
    )
    .expect("the backend builds over the simulator");
    (sim, backend)
}

/// Guest-virtual addresses over every mapping of the guest (4 KiB pages, the 2 MiB page
/// at 64 offsets, the alias), with the builder's answer for each.
fn addresses(sim: &Sim) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for m in &sim.guest.mappings {
        if m.pa.0 >> 12 >= SHADOW_GFN {
            continue; // not backed until allocate_gfn
        }
        let offsets: Vec<u64> = match m.size {
            PageSize::Size4K => vec![0x18, 0xa40],
            _ => (0..64)
                .map(|i| (i * 0x8_1238 % m.size.bytes()) & !7)
                .collect(),
        };
        for off in offsets {
            out.push((m.va.0 + off, m.pa.0 + off));
        }
    }
    out
}

/// The first exit vCPU 0 takes on `script` (the run stops there).
fn first_exit(sim: &Sim, script: &[Step]) -> RawExit {
    let mut got = None;
    let _ = sim.machine.run(0, script, 1, &mut |raw| {
        got = Some(*raw);
        Err(RunError::Stopped)
    });
    got.expect("the script exits")
}

fn main() {
    let ops = env("BENCH_OPS", 200_000);
    let reps = env("BENCH_REPS", 21);
    let mut rows = Vec::new();

    // Translations through VmiCore over the backend.
    let (sim, backend) = world();
    let root = Pa(sim.regs.cr3);
    let core = VmiCore::new(backend);
    let vas = addresses(&sim);
    let mismatches = vas
        .iter()
        .filter(|&&(va, pa)| core.translate(Va(va), root).map(|t| t.pa.0) != Ok(pa))
        .count();
    let seq: Vec<u64> = (0..ops).map(|i| vas[(i * 7919) % vas.len()].0).collect();
    let cold = measure(reps, ops, || {
        for &va in &seq {
            core.flush_v2p_cache();
            core.flush_gfn_cache();
            black_box(core.translate(Va(va), root).ok());
        }
    });
    let allocs_cold = count_allocations(|| {
        for &va in seq.iter().take(1000) {
            core.flush_v2p_cache();
            core.flush_gfn_cache();
            black_box(core.translate(Va(va), root).ok());
        }
    });
    rows.push(Row {
        name: format!(
            "translate GVA, caches cold ({} addresses, flushed before each)",
            vas.len()
        ),
        samples: cold,
        note: format!("{mismatches} mismatches, {allocs_cold} allocations / 1000"),
    });
    let warm = measure(reps, ops, || {
        for &va in &seq {
            black_box(core.translate(Va(va), root).ok());
        }
    });
    let allocs_warm = count_allocations(|| {
        for &va in seq.iter().take(1000) {
            black_box(core.translate(Va(va), root).ok());
        }
    });
    rows.push(Row {
        name: "translate GVA, caches warm (same addresses)".into(),
        samples: warm,
        note: format!("{mismatches} mismatches, {allocs_warm} allocations / 1000"),
    });
    drop(core);

    // One exit round trip: a write to a watched page, the handler lets it continue.
    let (sim, backend) = world();
    let watched = guest::gpa_of(&sim.guest, DATA + 5 * FRAME) >> 12;
    backend
        .set_memory_access(Gfn(watched), View(0), MemoryAccess::RX)
        .unwrap();
    let store = [
        Step::new(TEXT, 10, Insn::Mov(Gpr::Rax, 0x1234)),
        Step::new(
            TEXT + 10,
            4,
            Insn::Store {
                va: DATA + 5 * FRAME + 8,
                size: 8,
            },
        ),
    ];
    let raw = first_exit(&sim, &store);
    assert_eq!(raw.reason, reason::EPT_VIOLATION);
    let info = exit_info(&raw);
    let _me = sim.machine.enter_vcpu_thread(0);
    let exit_ops = ops / 4;
    let mut events = 0u64;
    let mut handler = |e: &VmiEvent<Amd64>| {
        events += u64::from(e.reason.as_memory_access().is_some());
        Response::continue_()
    };
    let mut round_trip = |info: &ExitInfo| {
        let a = backend.on_exit(VcpuId(0), info, Some(&mut handler));
        assert_eq!(a, Ok(ExitAction::Resume));
    };
    let samples = measure(reps, exit_ops, || {
        for _ in 0..exit_ops {
            round_trip(black_box(&info));
        }
    });
    let allocs = count_allocations(|| {
        for _ in 0..1000 {
            round_trip(&info);
        }
    });
    assert!(events as usize >= exit_ops, "every exit was an event");
    rows.push(Row {
        name: "exit round trip: EPT violation -> event -> continue".into(),
        samples,
        note: format!("{allocs} allocations / 1000 exits"),
    });

    // A spurious violation: the rights were loosened after the CPU cached them.
    backend
        .set_memory_access(Gfn(watched), View(0), MemoryAccess::RWX)
        .unwrap();
    let samples = measure(reps, exit_ops, || {
        for _ in 0..exit_ops {
            let a = backend.on_exit(VcpuId(0), black_box(&info), None);
            assert_eq!(a, Ok(ExitAction::Resume));
        }
    });
    let allocs = count_allocations(|| {
        for _ in 0..1000 {
            let _ = backend.on_exit(VcpuId(0), &info, None);
        }
    });
    rows.push(Row {
        name: "exit round trip: spurious EPT violation (INVEPT, no event)".into(),
        samples,
        note: format!("{allocs} allocations / 1000 exits"),
    });

    // A stealth breakpoint's step: the #BP exit (fast single step into the default view)
    // and the MTF exit that ends it, as one round trip of two exits.
    let code = guest::gpa_of(&sim.guest, TEXT) >> 12;
    let mut page = vec![0u8; FRAME as usize];
    backend.read_physical(Pa(code << 12), &mut page).unwrap();
    page[0x40] = 0xcc;
    let shadow = Gfn(SHADOW_GFN);
    backend.allocate_gfn(shadow).unwrap();
    backend.write_physical(Pa(shadow.0 << 12), &page).unwrap();
    let exec = backend.create_view(MemoryAccess::RWX).unwrap();
    backend.change_view_gfn(exec, Gfn(code), shadow).unwrap();
    backend
        .set_memory_access(Gfn(code), exec, MemoryAccess::X)
        .unwrap();
    backend
        .monitor_enable(EventMonitor::Exception(vector::BP))
        .unwrap();
    backend.switch_to_view(exec).unwrap();
    let bp = first_exit(&sim, &[Step::new(TEXT + 0x40, 2, Insn::Nop)]);
    let bp_info = exit_info(&bp);
    let mtf_info = exit_info(&RawExit {
        reason: reason::MONITOR_TRAP_FLAG,
        ..RawExit::default()
    });
    let mut handler = |_: &VmiEvent<Amd64>| Response::continue_().fast_singlestep(View(0));
    let mut step = || {
        let a = backend.on_exit(VcpuId(0), &bp_info, Some(&mut handler));
        assert_eq!(a, Ok(ExitAction::Resume));
        let a = backend.on_exit(VcpuId(0), &mtf_info, None);
        assert_eq!(a, Ok(ExitAction::Resume));
    };
    let samples = measure(reps, exit_ops, || {
        for _ in 0..exit_ops {
            step();
        }
    });
    let allocs = count_allocations(|| {
        for _ in 0..1000 {
            step();
        }
    });
    assert_eq!(backend.current_view(VcpuId(0)), Ok(exec));
    rows.push(Row {
        name: "stealth-breakpoint step: #BP -> fast single step -> MTF (2 exits)".into(),
        samples,
        note: format!("{allocs} allocations / 1000 steps"),
    });

    println!("| workload | median ns/op | min | max | notes |");
    println!("|---|---:|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {} |",
            r.name,
            r.median(),
            r.min(),
            r.max(),
            r.note
        );
    }
    let ratio = rows[0].median() / rows[1].median();
    println!();
    println!(
        "warm translation is {ratio:.1}x faster than cold (target: at least 5x): {}",
        if ratio >= 5.0 { "met" } else { "missed" }
    );
    println!("({reps} repetitions of {ops} translations and {exit_ops} exits each)");
}
