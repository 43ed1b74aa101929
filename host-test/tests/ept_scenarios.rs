//! The EPT backend on the simulated VMX machine: each test is one scenario of issue 10,
//! named after it. The vCPUs walk the guest's tables and the backend's EPT through their
//! own EPT TLB (`vmx_sim`), which keeps stale translations until an INVEPT, so a missing
//! shootdown shows up as a stale access.
//!
//! The rule the backend follows, and these tests hold it to (SDM Vol. 3C §29.4.3):
//! - loosening rights needs no invalidation: a CPU that still caches the tighter rights
//!   takes an EPT violation, which invalidates the cached mapping of the faulting address,
//!   and the backend resumes it without an event (a spurious violation);
//! - tightening, remapping, splitting, merging, freeing a shadow frame and destroying a
//!   view need a shootdown of every other CPU before the change counts as done.

use core::sync::atomic::{AtomicBool, Ordering};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use introvisor::arch::amd64::{Amd64, EventMonitor, EventReason, vector};
use introvisor::{
    Gfn, MemoryAccess, Pa, VcpuId, View, VmiDriver, VmiError, VmiEvent, VmiEventResponse,
};
use introvisor_ept::{Config, EptBackend, EptCapabilities, ShootdownSite};
use introvisor_host_test::vmx_sim::exit::{RawExit, reason};
use introvisor_host_test::vmx_sim::guest::{
    self, ALIAS, BIG_1G, BIG_2M, DATA, REGION2_GPA, SHADOW_GFN, SHADOW_VA, TEXT,
};
use introvisor_host_test::vmx_sim::{
    FRAME, Gpr, Insn, Observed, RunError, Sim, SimConfig, SimPlatform, Step, handle_exit,
};

type Backend = EptBackend<SimPlatform, 3, 512, 4, 8>;
type Event = VmiEvent<Amd64>;
type Response = VmiEventResponse<Amd64>;

struct World {
    sim: Sim,
    backend: Backend,
}

fn world(cfg: SimConfig) -> World {
    let sim = Sim::new(cfg);
    let platform = SimPlatform::new(sim.machine.clone());
    let config = Config::new(EptCapabilities::from_msr(cfg.caps), &sim.regions, sim.pool);
    let backend = Backend::new(platform, &config).expect("the backend builds over the sim");
    World { sim, backend }
}

fn small() -> World {
    world(SimConfig::default())
}

impl World {
    fn gpa(&self, va: u64) -> u64 {
        guest::gpa_of(&self.sim.guest, va)
    }

    fn gfn(&self, va: u64) -> Gfn {
        Gfn(self.gpa(va) >> 12)
    }

    fn eptp(&self, view: View) -> u64 {
        self.backend.eptp(view).expect("the view exists").0
    }

    fn vcpu_eptp(&self, vcpu: usize) -> u64 {
        self.sim.machine.vcpus[vcpu].lock().vmcs.eptp
    }

    fn log(&self, vcpu: usize) -> Vec<Observed> {
        self.sim.machine.vcpus[vcpu].lock().log.clone()
    }

    fn host_u64(&self, va: u64) -> u64 {
        let hpa = self.sim.hpa_of(self.gpa(va)).expect("in guest memory");
        self.sim.machine.mem.load_u64(hpa).expect("in host memory")
    }

    /// Runs `script` on vCPU `vcpu` on the calling thread, each exit through the backend
    /// with `handler` inline; returns the raw exits.
    fn run(
        &self,
        vcpu: usize,
        script: &[Step],
        handler: &mut dyn FnMut(&Event) -> Response,
    ) -> (Result<(), RunError>, Vec<RawExit>) {
        let mut exits = Vec::new();
        let r = self.sim.machine.run(vcpu, script, 20_000, &mut |raw| {
            exits.push(*raw);
            handle_exit(&self.backend, vcpu, raw, Some(&mut *handler))
        });
        (r, exits)
    }

    fn if_changes(&self) -> u64 {
        self.backend
            .platform()
            .stats
            .if_changes
            .load(Ordering::SeqCst)
    }
}

/// Instructions laid out one after the other in kernel text from `at`.
struct Code {
    at: u64,
    steps: Vec<Step>,
}

impl Code {
    fn new(at: u64) -> Self {
        Self {
            at,
            steps: Vec::new(),
        }
    }

    fn push(&mut self, len: u8, insn: Insn) -> u64 {
        let rip = self.at;
        self.steps.push(Step::new(rip, len, insn));
        self.at += u64::from(len);
        rip
    }

    fn store(&mut self, va: u64, value: u64) -> u64 {
        self.push(10, Insn::Mov(Gpr::Rax, value));
        self.push(4, Insn::Store { va, size: 8 })
    }

    fn load(&mut self, va: u64, size: u8) -> u64 {
        self.push(4, Insn::Load { va, size })
    }
}

fn log_len(w: &World, vcpu: usize) -> usize {
    w.sim.machine.vcpus[vcpu].lock().log.len()
}

fn loads(log: &[Observed]) -> Vec<(u64, u64)> {
    log.iter()
        .filter_map(|o| match *o {
            Observed::Loaded { va, value, .. } => Some((va, value)),
            _ => None,
        })
        .collect()
}

fn retired_at(log: &[Observed], rip: u64) -> Vec<u64> {
    log.iter()
        .filter_map(|o| match *o {
            Observed::Retired { rip: r, eptp } if r == rip => Some(eptp),
            _ => None,
        })
        .collect()
}

fn memory_event(e: &Event) -> Option<(u64, Option<u64>, MemoryAccess)> {
    e.reason
        .as_memory_access()
        .map(|m| (m.pa.0, m.va.map(|v| v.0), m.access))
}

#[test]
fn write_watch() {
    let w = small();
    let page = DATA + 5 * FRAME;
    let page3 = DATA + 3 * FRAME;
    for va in [page, page3] {
        w.backend
            .set_memory_access(w.gfn(va), View(0), MemoryAccess::RX)
            .unwrap();
    }
    let open = w.backend.create_view(MemoryAccess::RWX).unwrap();
    let mut c = Code::new(TEXT + 0x100);
    c.store(page + 0x18, 0x1111_0000_0000_0018);
    c.store(DATA + 6 * FRAME + 0x20, 0x2222); // not watched
    c.store(page + 0xff8, 0x3333_0000_0000_0ff8);
    c.store(ALIAS + 0x10, 0x4444_0000_0000_0010); // watched through its alias
    c.load(page + 0x18, 8);
    c.store(page + 0x20, 0x5555); // still watched after the others
    let mut seen = Vec::new();
    let mut n = 0;
    let (r, _) = w.run(0, &c.steps, &mut |e| {
        let (pa, va, access) = memory_event(e).expect("only memory events");
        seen.push((pa, va, access, e.registers.rax, e.view));
        n += 1;
        // Allow each write: by emulation, or by one instruction in the open view.
        if n % 2 == 1 {
            Response::continue_().emulate()
        } else {
            Response::continue_().fast_singlestep(open)
        }
    });
    r.unwrap();
    let want = [
        (page + 0x18, 0x1111_0000_0000_0018),
        (page + 0xff8, 0x3333_0000_0000_0ff8),
        (ALIAS + 0x10, 0x4444_0000_0000_0010),
        (page + 0x20, 0x5555),
    ];
    assert_eq!(seen.len(), want.len(), "{seen:x?}");
    for (got, (va, value)) in seen.iter().zip(want) {
        assert_eq!(got.0, w.gpa(va), "GPA");
        assert_eq!(got.1, Some(va), "GVA");
        assert_eq!(got.2, MemoryAccess::W);
        assert_eq!(got.3, value, "the value being written, in RAX");
        assert_eq!(got.4, Some(View(0)));
        // Then allowed: the value is in memory.
        assert_eq!(w.host_u64(va), value);
    }
    assert_eq!(w.host_u64(DATA + 6 * FRAME + 0x20), 0x2222);
    let log = w.log(0);
    assert_eq!(loads(&log), vec![(page + 0x18, 0x1111_0000_0000_0018)]);
    // Every store retired once; the watch is still there; the vCPU is back in view 0.
    assert_eq!(
        log.iter()
            .filter(|o| matches!(o, Observed::Stored { .. }))
            .count(),
        5
    );
    assert_eq!(
        w.backend.memory_access(w.gfn(page), View(0)).unwrap(),
        MemoryAccess::RX
    );
    assert_eq!(w.backend.current_view(VcpuId(0)).unwrap(), View(0));
    assert_eq!(w.vcpu_eptp(0), w.eptp(View(0)));
    let st = w.sim.machine.vcpus[0].lock();
    assert!(!st.vmcs.controls.mtf, "no single step left on");
    assert_ne!(st.vmcs.regs.rflags & (1 << 9), 0);
    drop(st);
    assert_eq!(w.if_changes(), 0);
}

/// The stealth-breakpoint layout: `exec` maps the text page to a shadow copy holding
/// 0xCC at `bp`, execute-only; the vCPUs run in `exec`.
struct Breakpoint {
    exec: View,
    bp: u64,
    original: Vec<u8>,
    shadow: Gfn,
}

fn stealth_breakpoint_setup(w: &World) -> Breakpoint {
    let bp = TEXT + 0x40;
    let code = w.gfn(TEXT);
    let mut original = vec![0u8; FRAME as usize];
    w.backend
        .read_physical(Pa(code.0 << 12), &mut original)
        .unwrap();
    assert_ne!(original[0x40], 0xcc);
    let shadow = Gfn(SHADOW_GFN + 3);
    w.backend.allocate_gfn(shadow).unwrap();
    let mut copy = original.clone();
    copy[0x40] = 0xcc;
    w.backend.write_physical(Pa(shadow.0 << 12), &copy).unwrap();
    let exec = w.backend.create_view(MemoryAccess::RWX).unwrap();
    w.backend.change_view_gfn(exec, code, shadow).unwrap();
    w.backend
        .set_memory_access(code, exec, MemoryAccess::X)
        .unwrap();
    w.backend
        .monitor_enable(EventMonitor::Exception(vector::BP))
        .unwrap();
    w.backend.switch_to_view(exec).unwrap();
    Breakpoint {
        exec,
        bp,
        original,
        shadow,
    }
}

/// The guest code around the breakpoint: the instruction at `bp` loads DATA + 0x100, the
/// next two read the breakpoint's own byte.
fn breakpoint_code(bp: u64) -> Code {
    let mut c = Code::new(bp - 0x10);
    c.push(1, Insn::Nop);
    c.push(10, Insn::Mov(Gpr::Rax, 0));
    c.push(5, Insn::Nop);
    assert_eq!(c.at, bp);
    c.load(DATA + 0x100, 8); // the instruction under the breakpoint
    c.load(bp, 1);
    c.load(bp, 8);
    c.push(1, Insn::Nop);
    c
}

/// The handler of a stealth breakpoint: a #BP at `bp` and a read of the text page are
/// each answered with one instruction in the default view.
fn breakpoint_handler<'a>(
    bp: u64,
    text_gfn: Gfn,
    breakpoints: &'a mut Vec<Event>,
    reads: &'a mut Vec<Event>,
    mut on_bp: impl FnMut() + 'a,
) -> impl FnMut(&Event) -> Response + 'a {
    move |e| match e.reason {
        EventReason::Interrupt(i) if i.vector == vector::BP && e.registers.rip == bp => {
            breakpoints.push(*e);
            on_bp();
            Response::continue_().fast_singlestep(View(0))
        }
        EventReason::MemoryAccess(m) if m.gfn() == text_gfn && m.access == MemoryAccess::R => {
            reads.push(*e);
            Response::continue_().fast_singlestep(View(0))
        }
        other => panic!("unexpected event {other:?}"),
    }
}

#[test]
fn stealth_breakpoint() {
    let w = small();
    let b = stealth_breakpoint_setup(&w);
    let c = breakpoint_code(b.bp);
    let (mut bps, mut reads) = (Vec::new(), Vec::new());
    let text_gfn = w.gfn(TEXT);
    let mut handler = breakpoint_handler(b.bp, text_gfn, &mut bps, &mut reads, || {});
    let (r, _) = w.run(0, &c.steps, &mut handler);
    drop(handler);
    r.unwrap();
    assert_eq!(bps.len(), 1, "one breakpoint event for one fetch");
    let i = bps[0].reason.as_interrupt().unwrap();
    assert_eq!(i.instruction_length, 1);
    assert_eq!(bps[0].view, Some(b.exec));
    assert_eq!(reads.len(), 2, "both reads of the code byte were seen");
    let log = w.log(0);
    // The instruction under the breakpoint ran once, in the default view (the step).
    assert_eq!(retired_at(&log, b.bp), vec![w.eptp(View(0))]);
    // The guest's reads of the byte see the original, not 0xCC.
    let l = loads(&log);
    let orig8 = u64::from_le_bytes(b.original[0x40..0x48].try_into().unwrap());
    assert_eq!(l[1], (b.bp, u64::from(b.original[0x40])));
    assert_eq!(l[2], (b.bp, orig8));
    // The guest never saw a #BP; the other instructions ran in exec (the reads of the
    // code byte were stepped in view 0 too); IF untouched.
    assert!(!log.iter().any(|o| matches!(o, Observed::Delivered { .. })));
    assert_eq!(retired_at(&log, b.bp + 4), vec![w.eptp(View(0))]);
    assert_eq!(retired_at(&log, b.bp + 8), vec![w.eptp(View(0))]);
    for s in &c.steps {
        if s.rip < b.bp || s.rip > b.bp + 8 {
            assert!(
                retired_at(&log, s.rip).iter().all(|&e| e == w.eptp(b.exec)),
                "{:#x} ran outside exec",
                s.rip
            );
        }
    }
    assert_eq!(w.if_changes(), 0);
    assert_eq!(w.backend.current_view(VcpuId(0)).unwrap(), b.exec);
    assert_eq!(w.vcpu_eptp(0), w.eptp(b.exec));
    assert!(!w.sim.machine.vcpus[0].lock().vmcs.controls.mtf);
    // The shadow still holds the breakpoint, the guest's frame the original.
    let mut byte = [0u8];
    w.backend
        .read_physical(Pa((b.shadow.0 << 12) + 0x40), &mut byte)
        .unwrap();
    assert_eq!(byte[0], 0xcc);
    w.backend
        .read_physical(Pa((text_gfn.0 << 12) + 0x40), &mut byte)
        .unwrap();
    assert_eq!(byte[0], b.original[0x40]);
}

#[test]
fn interrupt_during_step() {
    // 1. The step of a stealth breakpoint, in the default view.
    let w = small();
    let b = stealth_breakpoint_setup(&w);
    let c = breakpoint_code(b.bp);
    let (mut bps, mut reads) = (Vec::new(), Vec::new());
    let text_gfn = w.gfn(TEXT);
    let vcpu = &w.sim.machine.vcpus[0];
    let mut first = true;
    let mut handler = breakpoint_handler(b.bp, text_gfn, &mut bps, &mut reads, || {
        if core::mem::take(&mut first) {
            // The interrupt arrives between the event and the stepped instruction.
            vcpu.assert_interrupt(0x31);
        }
    });
    let (r, _) = w.run(0, &c.steps, &mut handler);
    drop(handler);
    r.unwrap();
    let log = w.log(0);
    let permissive = w.eptp(View(0));
    let delivered: Vec<_> = log
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match *o {
            Observed::Delivered {
                vector: 0x31,
                eptp,
                if_flag,
                ..
            } => Some((i, eptp, if_flag)),
            _ => None,
        })
        .collect();
    assert_eq!(delivered.len(), 1, "{log:x?}");
    assert_ne!(
        delivered[0].1, permissive,
        "the handler ran in the permissive view"
    );
    assert_eq!(
        delivered[0].1,
        w.eptp(b.exec),
        "delivered in the original view"
    );
    assert!(delivered[0].2);
    // The step is redone after the interrupt: the instruction ran once, in view 0, after.
    assert_eq!(retired_at(&log, b.bp), vec![permissive]);
    let step_at = log
        .iter()
        .position(|o| matches!(o, Observed::Retired { rip, .. } if *rip == b.bp))
        .unwrap();
    assert!(delivered[0].0 < step_at);
    // Only the stepped instructions ran in the permissive view.
    let in_permissive = log
        .iter()
        .filter(|o| matches!(o, Observed::Retired { eptp, .. } if *eptp == permissive))
        .count();
    assert_eq!(
        in_permissive, 3,
        "the breakpoint's instruction and the two code reads"
    );
    assert!(
        (1..=2).contains(&bps.len()),
        "one breakpoint event, or two when the redo refetches: {}",
        bps.len()
    );
    assert_eq!(w.if_changes(), 0);
    assert_eq!(vcpu.pending_interrupt(), None);
    let st = vcpu.lock();
    assert!(!st.vmcs.controls.external_interrupt_exiting);
    assert!(!st.vmcs.controls.mtf);
    assert_eq!(st.vmcs.eptp, w.eptp(b.exec));
    drop(st);

    // 2. The step of a write watch, in a view that allows everything.
    let w = small();
    let page = DATA + 9 * FRAME;
    w.backend
        .set_memory_access(w.gfn(page), View(0), MemoryAccess::R)
        .unwrap();
    let open = w.backend.create_view(MemoryAccess::RWX).unwrap();
    let mut c = Code::new(TEXT + 0x200);
    let store = c.store(page + 8, 0xabcd);
    c.load(page + 8, 8);
    let vcpu = &w.sim.machine.vcpus[0];
    let mut events = 0;
    let (r, _) = w.run(0, &c.steps, &mut |e| {
        assert!(e.reason.as_memory_access().is_some());
        events += 1;
        if events == 1 {
            vcpu.assert_interrupt(0x32);
        }
        Response::continue_().fast_singlestep(open)
    });
    r.unwrap();
    let log = w.log(0);
    let eptp_open = w.eptp(open);
    let delivered: Vec<u64> = log
        .iter()
        .filter_map(|o| match *o {
            Observed::Delivered {
                vector: 0x32, eptp, ..
            } => Some(eptp),
            _ => None,
        })
        .collect();
    assert_eq!(
        delivered,
        vec![w.eptp(View(0))],
        "delivered once, in view 0"
    );
    assert_eq!(
        retired_at(&log, store),
        vec![eptp_open],
        "the store ran once, stepped"
    );
    assert_eq!(w.host_u64(page + 8), 0xabcd);
    assert_eq!(loads(&log), vec![(page + 8, 0xabcd)]);
    assert!((1..=2).contains(&events));
    assert_eq!(w.if_changes(), 0);
    assert_eq!(w.vcpu_eptp(0), w.eptp(View(0)));
}

#[test]
fn split_and_merge() {
    let w = world(SimConfig {
        large: true,
        ..SimConfig::default()
    });
    let free0 = w.backend.free_frames();
    let shoot0 = w.sim.machine.counters.shootdowns();
    // A 2 MiB guest page on a 2 MiB EPT leaf, and the 1 GiB region on a 1 GiB leaf.
    let big = w.gpa(BIG_2M);
    assert_eq!(big % (2 << 20), 0);
    assert_eq!(w.backend.translate(View(0), Pa(big)).unwrap().level, 2);
    assert_eq!(
        w.backend.translate(View(0), Pa(REGION2_GPA)).unwrap().level,
        3
    );

    // Split the 2 MiB leaf: one frame read-only, its neighbours untouched.
    let f = big + 7 * FRAME;
    w.backend
        .set_memory_access(Gfn(f >> 12), View(0), MemoryAccess::R)
        .unwrap();
    let t = w.backend.translate(View(0), Pa(f)).unwrap();
    assert_eq!((t.level, t.access), (1, MemoryAccess::R));
    assert_eq!(t.hpa.0, w.sim.hpa_of(f).unwrap());
    let n = w.backend.translate(View(0), Pa(f + FRAME)).unwrap();
    assert_eq!((n.level, n.access), (1, MemoryAccess::RWX));
    assert_eq!(n.hpa.0, w.sim.hpa_of(f + FRAME).unwrap());
    assert_eq!(
        w.backend.free_frames(),
        free0 - 1,
        "one table for the split"
    );
    assert!(
        w.sim.machine.counters.shootdowns() > shoot0,
        "a split needs a shootdown"
    );
    w.backend.verify().unwrap();

    // The guest: a write to the frame is an event; to its neighbour, none.
    let mut c = Code::new(TEXT);
    c.store(BIG_2M + 7 * FRAME + 8, 1);
    c.store(BIG_2M + 8 * FRAME + 8, 2);
    c.load(BIG_1G + 0x1234_5008, 8);
    let mut events = Vec::new();
    let (r, _) = w.run(0, &c.steps, &mut |e| {
        events.push(memory_event(e).unwrap());
        Response::continue_().emulate()
    });
    r.unwrap();
    assert_eq!(
        events,
        vec![(f + 8, Some(BIG_2M + 7 * FRAME + 8), MemoryAccess::W)]
    );

    // Merge it back when the rights agree again.
    let shoot1 = w.sim.machine.counters.shootdowns();
    w.backend
        .set_memory_access(Gfn(f >> 12), View(0), MemoryAccess::RWX)
        .unwrap();
    let t = w.backend.translate(View(0), Pa(f)).unwrap();
    assert_eq!((t.level, t.access), (2, MemoryAccess::RWX));
    assert_eq!(
        w.backend.free_frames(),
        free0,
        "the table went back to the pool"
    );
    assert!(
        w.sim.machine.counters.shootdowns() > shoot1,
        "a merge needs a shootdown"
    );
    w.backend.verify().unwrap();

    // Split the 1 GiB leaf: a table of 2 MiB leaves, one of them split again.
    let g = REGION2_GPA + 0x1234_5000;
    w.backend
        .set_memory_access(Gfn(g >> 12), View(0), MemoryAccess::RX)
        .unwrap();
    let t = w.backend.translate(View(0), Pa(g)).unwrap();
    assert_eq!((t.level, t.access), (1, MemoryAccess::RX));
    assert_eq!(t.hpa.0, w.sim.hpa_of(g).unwrap());
    let far = REGION2_GPA + 0x2000_0000;
    let t = w.backend.translate(View(0), Pa(far)).unwrap();
    assert_eq!((t.level, t.access), (2, MemoryAccess::RWX));
    assert_eq!(t.hpa.0, w.sim.hpa_of(far).unwrap());
    assert_eq!(w.backend.free_frames(), free0 - 2, "a PD and a PT");
    w.backend.verify().unwrap();

    let mut c = Code::new(TEXT);
    c.load(BIG_1G + 0x1234_5008, 8);
    c.store(BIG_1G + 0x1234_5010, 3);
    c.load(BIG_1G + 0x2000_0000, 8);
    c.store(BIG_1G + 0x1234_6010, 4);
    let mut events = Vec::new();
    let (r, _) = w.run(0, &c.steps, &mut |e| {
        events.push(memory_event(e).unwrap());
        Response::continue_().emulate()
    });
    r.unwrap();
    assert_eq!(
        events,
        vec![(g + 0x10, Some(BIG_1G + 0x1234_5010), MemoryAccess::W)]
    );
    let l = loads(&w.log(0));
    // The recognisable word at the start of each 2 MiB of the region (256 = 0x2000_0000 >> 21).
    assert_eq!(l.last().unwrap().1, 0x1a1a_0000_0000 | 256);

    w.backend
        .set_memory_access(Gfn(g >> 12), View(0), MemoryAccess::RWX)
        .unwrap();
    let t = w.backend.translate(View(0), Pa(g)).unwrap();
    assert_eq!((t.level, t.access), (3, MemoryAccess::RWX));
    assert_eq!(
        w.backend.free_frames(),
        free0,
        "both tables went back to the pool"
    );
    w.backend.verify().unwrap();

    // After the merges the guest runs on the large leaves again, without events.
    let mut c = Code::new(TEXT);
    c.store(BIG_2M + 7 * FRAME + 16, 5);
    c.store(BIG_1G + 0x1234_5018, 6);
    let (r, exits) = w.run(0, &c.steps, &mut |e| panic!("no event expected: {e:?}"));
    r.unwrap();
    assert!(
        exits.iter().all(|e| e.reason == reason::EPT_VIOLATION),
        "only spurious violations (cached tighter rights) may exit: {exits:?}"
    );
}

#[test]
fn destroy_view_while_running() {
    let w = world(SimConfig {
        vcpus: 2,
        ..SimConfig::default()
    });
    let free0 = w.backend.free_frames();
    let v = w.backend.create_view(MemoryAccess::RWX).unwrap();
    let watched = DATA + 2 * FRAME;
    // The gate: a page read-only in `v` that each vCPU writes once, two thirds through its
    // script. A vCPU that reaches it while `v` lives waits in its handler until the view
    // is gone, so that no vCPU can finish its script before the destroy (whatever the
    // scheduler does) and each runs on in view 0 after it.
    let gate = DATA + 7 * FRAME;
    let writer_gate = DATA + 11 * FRAME;
    for va in [watched, gate, writer_gate] {
        w.backend
            .set_memory_access(w.gfn(va), v, MemoryAccess::R)
            .unwrap();
    }
    w.backend.switch_to_view(v).unwrap();
    let eptp_v = w.eptp(v);
    let eptp_0 = w.eptp(View(0));
    // vCPU 0 reads pages other than the watched one; vCPU 1 writes the watched one, which
    // exits in `v` (and is emulated), and not in view 0.
    let mut reader = Code::new(TEXT);
    let mut expect = Vec::new();
    for k in 0..3000u64 {
        if k == 2000 {
            reader.store(gate, 0x6a7e);
        }
        let p = [0, 1, 3, 4, 5, 6, 7][(k % 7) as usize];
        let i = (k * 13) % 512;
        let va = DATA + p * FRAME + i * 8;
        reader.load(va, 8);
        let value = if p == 7 && i == 0 && k > 2000 {
            0x6a7e
        } else {
            0xdada_0000_0000_0000 | (p << 16) | i
        };
        expect.push((va, value));
        if reader.at > TEXT + 3 * FRAME {
            reader.at = TEXT;
        }
    }
    let mut writer = Code::new(TEXT + 0x800);
    for k in 0..1500u64 {
        if k == 1000 {
            writer.store(writer_gate, 0x6a7e);
        }
        writer.store(watched + (k % 512) * 8, k);
        if writer.at > TEXT + 3 * FRAME {
            writer.at = TEXT + 0x800;
        }
    }
    let destroyed = AtomicBool::new(false);
    let gate_gfn = w.gfn(gate);
    let gates = [gate_gfn, w.gfn(writer_gate)];
    let wait_at_gate = |e: &Event| {
        if e.reason
            .as_memory_access()
            .is_some_and(|m| gates.contains(&m.gfn()))
        {
            let start = std::time::Instant::now();
            while !destroyed.load(Ordering::SeqCst) {
                assert!(
                    start.elapsed().as_secs() < 20,
                    "the view was never destroyed"
                );
                std::thread::yield_now();
            }
        }
    };
    std::thread::scope(|s| {
        let r0 = s.spawn(|| {
            w.run(0, &reader.steps, &mut |e| {
                wait_at_gate(e);
                assert_eq!(
                    e.reason.as_memory_access().map(|m| m.gfn()),
                    Some(gate_gfn),
                    "vCPU 0 only exits at the gate"
                );
                assert_eq!(e.view, Some(v), "the gate is read-only in v only");
                Response::continue_().emulate()
            })
            .0
        });
        let r1 = s.spawn(|| {
            // View 0 allows every write, so every event comes from an exit in `v`, and
            // names it even when the exit raced with the destroy (the backend reads the
            // view once per exit; `destroyed_view_event_names_the_exit_view` forces the
            // race).
            w.run(1, &writer.steps, &mut |e| {
                wait_at_gate(e);
                assert!(e.reason.as_memory_access().is_some());
                assert_eq!(e.view, Some(v), "an event of vCPU 1 names another view");
                Response::continue_().emulate()
            })
            .0
        });
        while log_len(&w, 0) < 50 || log_len(&w, 1) < 10 {
            std::thread::yield_now();
        }
        w.backend.destroy_view(v).unwrap();
        destroyed.store(true, Ordering::SeqCst);
        r0.join().unwrap().unwrap();
        r1.join().unwrap().unwrap();
    });
    for vcpu in 0..2 {
        assert_eq!(
            w.backend.current_view(VcpuId(vcpu as u16)).unwrap(),
            View(0)
        );
        assert_eq!(w.vcpu_eptp(vcpu), eptp_0);
        let log = w.log(vcpu);
        let eptps: Vec<u64> = log
            .iter()
            .filter_map(|o| match *o {
                Observed::Retired { eptp, .. } => Some(eptp),
                _ => None,
            })
            .collect();
        assert!(eptps.iter().all(|&e| e == eptp_v || e == eptp_0));
        let first0 = eptps.iter().position(|&e| e == eptp_0).unwrap_or_else(|| {
            panic!(
                "vCPU {vcpu} never ran in view 0 ({} instructions, eptp now {:#x})",
                eptps.len(),
                w.vcpu_eptp(vcpu)
            )
        });
        assert!(
            first0 > 0,
            "vCPU {vcpu} ran in the view before it was destroyed"
        );
        assert!(
            eptps[first0..].iter().all(|&e| e == eptp_0),
            "vCPU {vcpu} used the destroyed view's tables after moving"
        );
    }
    assert_eq!(loads(&w.log(0)), expect, "every read saw guest memory");
    assert_eq!(w.host_u64(watched + (1499 % 512) * 8), 1499);
    assert_eq!(w.host_u64(gate), 0x6a7e);
    assert_eq!(w.host_u64(writer_gate), 0x6a7e);
    assert!(w.backend.eptp(v).is_err(), "the view is gone");
    assert_eq!(
        w.backend.free_frames(),
        free0,
        "its tables went back to the pool"
    );
    w.backend.verify().unwrap();
}

/// One probe of stale translations: vCPU 1 (on its own thread) caches a translation, the
/// introspection thread changes the EPT, vCPU 1 accesses again; `Err` when vCPU 1 used
/// what it had cached instead of the change.
type Probe = fn(&World) -> Result<(), String>;

/// Runs `script` on vCPU 1 on another thread, with memory events emulated; the raw exits,
/// or the run's error (other than the stop at a freed shadow frame).
fn on_vcpu1(w: &World, script: &[Step]) -> Result<Vec<RawExit>, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut exits = Vec::new();
            let r = w.sim.machine.run(1, script, 20, &mut |raw| {
                exits.push(*raw);
                if raw.reason == reason::EPT_VIOLATION && raw.guest_physical >> 12 >= SHADOW_GFN {
                    // An access to a freed shadow frame cannot complete: stop here.
                    return Err(RunError::Stopped);
                }
                handle_exit(
                    &w.backend,
                    1,
                    raw,
                    Some(&mut |e: &Event| {
                        if e.reason.as_memory_access().is_some() {
                            Response::continue_().emulate()
                        } else {
                            Response::continue_()
                        }
                    }),
                )
            });
            match r {
                Ok(()) | Err(RunError::Stopped) => Ok(exits),
                Err(e) => Err(format!("vCPU 1 stopped: {e:?} after {exits:x?}")),
            }
        })
        .join()
        .expect("vCPU 1's thread")
    })
}

fn violations_at(exits: &[RawExit], gpa: u64) -> usize {
    exits
        .iter()
        .filter(|e| e.reason == reason::EPT_VIOLATION && e.guest_physical >> 12 == gpa >> 12)
        .count()
}

fn one_store(va: u64, value: u64) -> Vec<Step> {
    let mut c = Code::new(TEXT + 0x400);
    c.store(va, value);
    c.steps
}

fn one_load(va: u64) -> Vec<Step> {
    let mut c = Code::new(TEXT + 0x400);
    c.load(va, 8);
    c.steps
}

fn last_load(w: &World) -> u64 {
    loads(&w.log(1)).last().expect("a load").1
}

/// Splits the 2 MiB leaf that holds `va` in `view` beforehand (by taking X from another
/// frame of it), so that the change a probe makes next is the only one it needs.
fn presplit(w: &World, view: View, va: u64) -> Result<(), String> {
    let other = (w.gpa(va) & !0x1f_ffff) + 0x1f_f000;
    w.backend
        .set_memory_access(Gfn(other >> 12), view, MemoryAccess::RW)
        .map_err(|e| e.to_string())
}

fn probe_tighten(w: &World) -> Result<(), String> {
    let page = DATA + 4 * FRAME;
    presplit(w, View(0), page)?;
    on_vcpu1(w, &one_store(page, 1))?;
    w.backend
        .set_memory_access(w.gfn(page), View(0), MemoryAccess::RX)
        .map_err(|e| e.to_string())?;
    let exits = on_vcpu1(w, &one_store(page, 2))?;
    match violations_at(&exits, w.gpa(page)) {
        0 => Err("a write through rights taken away did not fault".into()),
        _ => Ok(()),
    }
}

fn probe_split(w: &World) -> Result<(), String> {
    // In a view whose leaves are read-execute (so that vCPU 1 runs in it without an
    // exit: a stale translation shows up in its own access, not in an emulation), vCPU 1
    // caches the big page's 2 MiB leaf; then one frame of it gets W too (a loosening
    // split: the split is the only change, and the only shootdown it needs is the
    // split's).
    let v = w
        .backend
        .create_view(MemoryAccess::RX)
        .map_err(|e| e.to_string())?;
    w.backend.switch_to_view(v).map_err(|e| e.to_string())?;
    on_vcpu1(w, &one_load(BIG_2M + 9 * FRAME))?;
    w.backend
        .set_memory_access(w.gfn(BIG_2M + 12 * FRAME), v, MemoryAccess::RWX)
        .map_err(|e| e.to_string())?;
    on_vcpu1(w, &one_load(BIG_2M + 9 * FRAME))?;
    Ok(())
}

fn probe_merge(w: &World) -> Result<(), String> {
    // Split the big page's leaf, let vCPU 1 cache the table (its paging-structure cache
    // holds the PDE), merge, then let the freed table come back from the pool as a shadow
    // frame whose contents the introspection side writes: entry 11 pointing elsewhere.
    let f = w.gfn(BIG_2M + 9 * FRAME);
    w.backend
        .set_memory_access(f, View(0), MemoryAccess::R)
        .map_err(|e| e.to_string())?;
    let walker = &w.sim.machine.walker;
    let eptp = introvisor_host_test::vmx_sim::Eptp::decode(
        w.eptp(View(0)),
        walker.caps,
        walker.maxphyaddr,
    )
    .ok_or("bad EPTP")?;
    let path = walker.path(&w.sim.machine.mem, &eptp, f.0 << 12);
    let &(_, _, pde) = path.iter().find(|p| p.0 == 2).ok_or("no PDE")?;
    let old_table = pde & 0x000f_ffff_ffff_f000;
    on_vcpu1(w, &one_load(BIG_2M + 10 * FRAME))?;
    w.backend
        .set_memory_access(f, View(0), MemoryAccess::RWX)
        .map_err(|e| e.to_string())?;
    let shadow = Gfn(SHADOW_GFN + 2);
    w.backend.allocate_gfn(shadow).map_err(|e| e.to_string())?;
    let got = w
        .backend
        .translate(View(0), Pa(shadow.0 << 12))
        .map_err(|e| e.to_string())?;
    if got.hpa.0 != old_table {
        return Err("the freed table was not handed out again: cannot probe".into());
    }
    let elsewhere = w.sim.hpa_of(w.gpa(DATA)).ok_or("DATA")?;
    let mut fake = vec![0u8; FRAME as usize];
    fake[11 * 8..12 * 8].copy_from_slice(&(elsewhere | (6 << 3) | 7).to_le_bytes());
    w.backend
        .write_physical(Pa(shadow.0 << 12), &fake)
        .map_err(|e| e.to_string())?;
    let marker = 0x77_7777_7777u64;
    let target = BIG_2M + 11 * FRAME;
    let hpa = w.sim.hpa_of(w.gpa(target)).ok_or("target")?;
    w.sim.machine.mem.store_u64(hpa, marker);
    on_vcpu1(w, &one_load(target))?;
    match last_load(w) {
        v if v == marker => Ok(()),
        v => Err(format!(
            "a read through the merged range read {v:#x}, through the freed table"
        )),
    }
}

fn probe_remap(w: &World) -> Result<(), String> {
    let v = w
        .backend
        .create_view(MemoryAccess::RWX)
        .map_err(|e| e.to_string())?;
    w.backend.switch_to_view(v).map_err(|e| e.to_string())?;
    let page = DATA + 8 * FRAME;
    presplit(w, v, page)?;
    on_vcpu1(w, &one_load(page))?;
    let shadow = Gfn(SHADOW_GFN + 1);
    w.backend.allocate_gfn(shadow).map_err(|e| e.to_string())?;
    w.backend
        .write_physical(Pa(shadow.0 << 12), &0x5a5a_5a5au64.to_le_bytes())
        .map_err(|e| e.to_string())?;
    w.backend
        .change_view_gfn(v, w.gfn(page), shadow)
        .map_err(|e| e.to_string())?;
    on_vcpu1(w, &one_load(page))?;
    if last_load(w) != 0x5a5a_5a5a {
        return Err("a read after the remap saw the old frame".into());
    }
    Ok(())
}

fn probe_reset_remap(w: &World) -> Result<(), String> {
    probe_remap(w)?;
    let v = w
        .backend
        .current_view(VcpuId(1))
        .map_err(|e| e.to_string())?;
    let page = DATA + 8 * FRAME;
    on_vcpu1(w, &one_load(page))?;
    w.backend
        .reset_view_gfn(v, w.gfn(page))
        .map_err(|e| e.to_string())?;
    on_vcpu1(w, &one_load(page))?;
    let want = 0xdada_0000_0000_0000 | (8 << 16);
    match last_load(w) {
        v if v == want => Ok(()),
        v => Err(format!("a read after the reset saw {v:#x}")),
    }
}

fn probe_destroy_view(w: &World) -> Result<(), String> {
    // vCPU 1 caches a writable translation in view `a`; `a` is destroyed; a new view with
    // the same root (the backend reuses the frame) takes W away from that page.
    let page = DATA + 10 * FRAME;
    let a = w
        .backend
        .create_view(MemoryAccess::RWX)
        .map_err(|e| e.to_string())?;
    let root = w.eptp(a);
    w.backend.switch_to_view(a).map_err(|e| e.to_string())?;
    on_vcpu1(w, &one_store(page, 1))?;
    w.backend.destroy_view(a).map_err(|e| e.to_string())?;
    let mut made = Vec::new();
    let b = loop {
        match w.backend.create_view(MemoryAccess::RX) {
            Ok(b) if w.eptp(b) == root => break Some(b),
            Ok(b) => made.push(b),
            Err(_) => break None,
        }
    };
    let Some(b) = b else {
        return Err("no new view reused the destroyed view's root: cannot probe".into());
    };
    w.backend.switch_to_view(b).map_err(|e| e.to_string())?;
    let exits = on_vcpu1(w, &one_store(page, 2))?;
    match violations_at(&exits, w.gpa(page)) {
        0 => Err("a write in a read-only view used the destroyed view's mapping".into()),
        _ => Ok(()),
    }
}

fn probe_free_shadow(w: &World) -> Result<(), String> {
    let shadow = Gfn(SHADOW_GFN);
    w.backend.allocate_gfn(shadow).map_err(|e| e.to_string())?;
    on_vcpu1(w, &one_load(SHADOW_VA))?;
    w.backend.free_gfn(shadow).map_err(|e| e.to_string())?;
    let exits = on_vcpu1(w, &one_load(SHADOW_VA))?;
    match violations_at(&exits, shadow.0 << 12) {
        0 => Err("a read of a freed shadow frame did not fault".into()),
        _ => Ok(()),
    }
}

const PROBES: [(&str, Probe); 7] = [
    ("tighten", probe_tighten),
    ("split", probe_split),
    ("merge", probe_merge),
    ("remap", probe_remap),
    ("reset_remap", probe_reset_remap),
    ("destroy_view", probe_destroy_view),
    ("free_shadow", probe_free_shadow),
];

fn run_probes(skip: Option<ShootdownSite>) -> Vec<(&'static str, Result<(), String>)> {
    PROBES
        .iter()
        .map(|&(name, probe)| {
            let w = world(SimConfig {
                vcpus: 2,
                pool_frames: 64,
                ..SimConfig::default()
            });
            w.backend.skip_shootdown(skip);
            w.sim.machine.strict_page_size.store(true, Ordering::SeqCst);
            (name, probe(&w))
        })
        .collect()
}

#[test]
fn stale_translation() {
    let clean = run_probes(None);
    for (name, r) in &clean {
        assert!(
            r.is_ok(),
            "probe {name} fails with every shootdown in place: {r:?}"
        );
    }
    // No site is exempt: `ALL` lists every site once, in index order (so the switch can
    // name each), and each one has its own probe (an exhaustive match: a new site does
    // not compile until it has one).
    for (i, site) in ShootdownSite::ALL.into_iter().enumerate() {
        assert_eq!(
            site as usize, i,
            "ShootdownSite::ALL out of order at {site:?}"
        );
    }
    let own = |site: ShootdownSite| match site {
        ShootdownSite::Tighten => "tighten",
        ShootdownSite::Split => "split",
        ShootdownSite::Merge => "merge",
        ShootdownSite::Remap => "remap",
        ShootdownSite::ResetRemap => "reset_remap",
        ShootdownSite::DestroyView => "destroy_view",
        ShootdownSite::FreeShadow => "free_shadow",
    };
    let owners: BTreeSet<&str> = ShootdownSite::ALL.into_iter().map(own).collect();
    let probes: BTreeSet<&str> = PROBES.iter().map(|p| p.0).collect();
    assert_eq!(
        owners, probes,
        "a site without its probe, or a probe without a site"
    );
    assert_eq!(owners.len(), ShootdownSite::ALL.len());
    // Each site is needed: without it, the probe written for it fails (maybe others too).
    // The split's is caught by the simulator's strict page-size mode, which `run_probes`
    // turns on: after a split whose shootdown is skipped, a vCPU holds the 2 MiB
    // translation next to the new 4 KiB leaf, and which of the two a CPU uses is
    // unpredictable (SDM Vol. 3A §4.10.2.3, applied to EPT by Vol. 3C §29.4), so the
    // simulator stops there rather than pick one.
    let mut undetected = Vec::new();
    for site in ShootdownSite::ALL {
        let results = run_probes(Some(site));
        let failing: Vec<_> = results
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(n, _)| *n)
            .collect();
        eprintln!("without the {site:?} shootdown, failing probes: {failing:?}");
        match results.iter().find(|(n, _)| *n == own(site)) {
            Some((_, Err(why))) => {
                if site == ShootdownSite::Split {
                    assert!(
                        why.contains("PageSizeConflict"),
                        "the split probe failed for another reason: {why}"
                    );
                }
            }
            _ => undetected.push(site),
        }
    }
    assert!(
        undetected.is_empty(),
        "removing these shootdowns changes nothing the vCPUs can see: {undetected:?}"
    );
}

#[test]
fn concurrent_exits() {
    const VCPUS: usize = 4;
    const STORES: u64 = 160;
    const OPS: usize = 300;
    let w = world(SimConfig {
        vcpus: VCPUS,
        pool_frames: 384,
        ..SimConfig::default()
    });
    let free0 = w.backend.free_frames();
    let a = w.backend.create_view(MemoryAccess::RWX).unwrap();
    let b = w.backend.create_view(MemoryAccess::RWX).unwrap();
    let views = [View(0), a, b];
    // Watched pages: read-only in every view, never changed again.
    let watched: Vec<u64> = (0..4).map(|p| DATA + p * FRAME).collect();
    // Gates: at each quarter of its script a vCPU writes a read-only gate page, and its
    // handler holds it until the introspection thread has done that quarter of its
    // operations, so that the two sides overlap whatever the scheduler does.
    let gate = DATA + 7 * FRAME;
    let gate_gfn = w.gfn(gate);
    for &va in watched.iter().chain([&gate]) {
        for &v in &views {
            w.backend
                .set_memory_access(w.gfn(va), v, MemoryAccess::RX)
                .unwrap();
        }
    }
    let ops_done = core::sync::atomic::AtomicUsize::new(0);
    // How many vCPUs have passed gate q (gate 0: started).
    let passed: [core::sync::atomic::AtomicUsize; 4] = Default::default();
    let gate_events = Mutex::new(Vec::new());
    // Churned frames: the introspection thread changes them; the vCPUs only read them.
    let churn: Vec<u64> = (8..16)
        .map(|p| DATA + p * FRAME)
        .chain((0..8).map(|i| BIG_2M + i * 0x3_3000))
        .collect();
    let choices = [
        MemoryAccess::R,
        MemoryAccess::RX,
        MemoryAccess::RW,
        MemoryAccess::RWX,
    ];
    let events = Mutex::new(Vec::new());
    let model = Mutex::new(BTreeMap::new());
    let mut last_view = View(0);
    std::thread::scope(|s| {
        let mut runs = Vec::new();
        for vcpu in 0..VCPUS {
            let (events, churn, watched, w) = (&events, &churn, &watched, &w);
            let (ops_done, gate_events, passed) = (&ops_done, &gate_events, &passed);
            runs.push(s.spawn(move || {
                passed[0].fetch_add(1, Ordering::SeqCst);
                let mut c = Code::new(TEXT + vcpu as u64 * 0x300);
                for k in 0..STORES {
                    if k > 0 && k % (STORES / 4) == 0 {
                        c.store(gate + vcpu as u64 * 8, 0x6a7e_0000 | (k / (STORES / 4)));
                    }
                    let page = watched[((k * 7 + vcpu as u64) % 4) as usize];
                    c.store(
                        page + vcpu as u64 * 64 + (k % 8) * 8,
                        (vcpu as u64) << 32 | k,
                    );
                    c.load(churn[(k as usize + vcpu) % churn.len()] + (k % 64) * 8, 8);
                }
                let mut mine = Vec::new();
                let r = w.sim.machine.run(vcpu, &c.steps, 10_000, &mut |raw| {
                    handle_exit(
                        &w.backend,
                        vcpu,
                        raw,
                        Some(&mut |e: &Event| {
                            let m = e.reason.as_memory_access().expect("memory events only");
                            if m.gfn() == gate_gfn {
                                let quarter = (e.registers.rax & 0xff) as usize;
                                let start = std::time::Instant::now();
                                while ops_done.load(Ordering::SeqCst) < quarter * OPS / 4 {
                                    assert!(start.elapsed().as_secs() < 30, "stuck at a gate");
                                    std::thread::yield_now();
                                }
                                gate_events.lock().unwrap().push((vcpu, quarter));
                                passed[quarter].fetch_add(1, Ordering::SeqCst);
                                return Response::continue_().emulate();
                            }
                            assert_eq!(
                                m.access,
                                MemoryAccess::W,
                                "the vCPUs only write watched pages"
                            );
                            mine.push((vcpu, m.va.unwrap().0, e.registers.rax));
                            Response::continue_().emulate()
                        }),
                    )
                });
                events.lock().unwrap().extend(mine);
                r
            }));
        }
        let mut rng = introvisor_host_test::Rng::new(introvisor_host_test::seed(0xe97));
        for op in 0..OPS {
            // Quarter q of the operations starts once every vCPU has passed gate q.
            if op % (OPS / 4) == 0 {
                let start = std::time::Instant::now();
                while passed[op / (OPS / 4)].load(Ordering::SeqCst) < VCPUS {
                    assert!(
                        start.elapsed().as_secs() < 30,
                        "a vCPU never reached a gate"
                    );
                    std::thread::yield_now();
                }
            }
            match rng.below(10) {
                0 => {
                    last_view = views[rng.below(3) as usize];
                    w.backend.switch_to_view(last_view).unwrap();
                }
                _ => {
                    let va = churn[rng.below(churn.len() as u64) as usize];
                    let view = views[rng.below(3) as usize];
                    let access = choices[rng.below(4) as usize];
                    w.backend
                        .set_memory_access(w.gfn(va), view, access)
                        .unwrap();
                    model.lock().unwrap().insert((va, view), access);
                }
            }
            ops_done.fetch_add(1, Ordering::SeqCst);
        }
        for r in runs {
            r.join().unwrap().unwrap();
        }
    });
    // No event lost or duplicated: exactly the watched stores, once each.
    let got: Vec<_> = events.into_inner().unwrap();
    let mut want = BTreeSet::new();
    for vcpu in 0..VCPUS as u64 {
        for k in 0..STORES {
            let page = watched[((k * 7 + vcpu) % 4) as usize];
            want.insert((
                vcpu as usize,
                page + vcpu * 64 + (k % 8) * 8,
                vcpu << 32 | k,
            ));
        }
    }
    let got_set: BTreeSet<_> = got.iter().copied().collect();
    let mut gates = gate_events.into_inner().unwrap();
    gates.sort_unstable();
    let want_gates: Vec<_> = (0..VCPUS)
        .flat_map(|v| (1..4).map(move |q| (v, q)))
        .collect();
    assert_eq!(gates, want_gates, "each gate once per vCPU");
    assert_eq!(got.len(), got_set.len(), "duplicated events");
    assert_eq!(got_set, want, "lost or unexpected events");
    // The emulated writes landed: the last value of each slot.
    for vcpu in 0..VCPUS as u64 {
        for k in STORES - 32..STORES {
            let page = watched[((k * 7 + vcpu) % 4) as usize];
            let slot = page + vcpu * 64 + (k % 8) * 8;
            let last = (0..STORES)
                .filter(|j| {
                    watched[((j * 7 + vcpu) % 4) as usize] + vcpu * 64 + (j % 8) * 8 == slot
                })
                .max()
                .unwrap();
            assert_eq!(w.host_u64(slot), vcpu << 32 | last);
        }
    }
    // Every read of a churned frame saw guest memory.
    for vcpu in 0..VCPUS {
        for (va, value) in loads(&w.log(vcpu)) {
            let off = va & 0xfff;
            let want = if va >= BIG_2M {
                0
            } else {
                0xdada_0000_0000_0000 | (((va - DATA) >> 12) << 16) | (off / 8)
            };
            assert_eq!(value, want, "vCPU {vcpu} read {va:#x}");
        }
        assert_eq!(
            w.backend.current_view(VcpuId(vcpu as u16)).unwrap(),
            last_view
        );
        assert_eq!(w.vcpu_eptp(vcpu), w.eptp(last_view));
    }
    // The EPT invariants: every leaf's rights are the model's, the tables are well formed.
    w.backend.verify().unwrap();
    for (&(va, view), &access) in model.lock().unwrap().iter() {
        assert_eq!(w.backend.memory_access(w.gfn(va), view).unwrap(), access);
        let t = w.backend.translate(view, Pa(w.gpa(va))).unwrap();
        assert_eq!(t.access, access, "{va:#x} in {view}");
        assert_eq!(t.hpa.0, w.sim.hpa_of(w.gpa(va)).unwrap() & !0xfff);
    }
    for &va in &watched {
        for &v in &views {
            assert_eq!(
                w.backend.memory_access(w.gfn(va), v).unwrap(),
                MemoryAccess::RX
            );
        }
    }
    // The same, read by the simulator's own walker over every frame of guest memory in
    // every view: rights as the model says (RWX where it says nothing), the frame behind
    // each the region's, every table a pool frame.
    let model = model.into_inner().unwrap();
    let expected: BTreeMap<(u64, View), MemoryAccess> = model
        .iter()
        .map(|(&(va, view), &a)| ((w.gpa(va) >> 12, view), a))
        .chain(
            watched
                .iter()
                .chain([&gate])
                .flat_map(|&va| views.map(|v| ((w.gpa(va) >> 12, v), MemoryAccess::RX))),
        )
        .collect();
    let walker = w.sim.machine.walker;
    for &view in &views {
        let eptp = introvisor_host_test::vmx_sim::Eptp::decode(
            w.eptp(view),
            walker.caps,
            walker.maxphyaddr,
        )
        .unwrap();
        for r in &w.sim.regions {
            for gpa in (r.gpa.0..r.gpa.0 + r.size).step_by(FRAME as usize) {
                let leaf = walker.walk(&w.sim.machine.mem, &eptp, gpa, 0).unwrap();
                let want = expected
                    .get(&(gpa >> 12, view))
                    .copied()
                    .unwrap_or(MemoryAccess::RWX);
                assert_eq!(leaf.rights, want.bits(), "{gpa:#x} in {view}");
                assert_eq!(
                    leaf.hpa_page,
                    r.hpa.0 + (gpa - r.gpa.0),
                    "{gpa:#x} in {view}"
                );
                let path = walker.path(&w.sim.machine.mem, &eptp, gpa);
                for &(_, slot, _) in &path {
                    assert!(w.sim.in_pool(slot), "a table outside the pool");
                }
            }
        }
    }
    assert_eq!(w.if_changes(), 0);
    // No frame leaked: undo everything and the pool is whole again.
    w.backend.switch_to_view(View(0)).unwrap();
    for &va in churn.iter().chain(&watched).chain([&gate]) {
        w.backend
            .set_memory_access(w.gfn(va), View(0), MemoryAccess::RWX)
            .unwrap();
    }
    w.backend.destroy_view(a).unwrap();
    w.backend.destroy_view(b).unwrap();
    w.backend.verify().unwrap();
    assert_eq!(w.backend.free_frames(), free0);
}

#[test]
fn pool_exhausted() {
    let w = world(SimConfig {
        pool_frames: 24,
        ..SimConfig::default()
    });
    // Running out of view slots is not running out of frames: every slot taken is
    // `CapacityExceeded` with frames to spare.
    let mut views = Vec::new();
    let full = loop {
        match w.backend.create_view(MemoryAccess::RWX) {
            Ok(v) => views.push(v),
            Err(e) => break e,
        }
    };
    assert_eq!(full, VmiError::CapacityExceeded, "{full}");
    assert_eq!(views.len(), 3);
    assert!(w.backend.free_frames() > 0);
    // Keep a slot free, so that a view is refused below for want of frames only.
    w.backend.destroy_view(views.pop().unwrap()).unwrap();
    // Use the pool up: a few splits of 2 MiB leaves, in view 0 (but not the leaf the test
    // splits below) and the first alternate view...
    let data_leaf = w.gpa(DATA) >> 21;
    for (view, leaf) in [(View(0), 1u64), (View(0), 8), (views[0], 0), (views[0], 9)] {
        assert!(view != View(0) || leaf != data_leaf);
        let free = w.backend.free_frames();
        w.backend
            .set_memory_access(Gfn(((leaf << 21) + 5 * FRAME) >> 12), view, MemoryAccess::R)
            .unwrap();
        assert_eq!(w.backend.free_frames(), free - 1, "a split takes one table");
    }
    // ...then shadow frames to the last frame: each is granted while the pool holds what
    // it needs (the first, its page tables in every view; the next ones, one frame).
    let mut shadows = Vec::new();
    while w.backend.free_frames() > 0 {
        let gfn = Gfn(0x2_0000 + shadows.len() as u64);
        let free = w.backend.free_frames();
        w.backend
            .allocate_gfn(gfn)
            .unwrap_or_else(|e| panic!("{gfn} refused with {free} frames free: {e}"));
        shadows.push(gfn);
        assert!(shadows.len() < 64);
    }
    let refused = w.backend.free_frames();
    assert_eq!(refused, 0, "the pool could be used up");
    w.backend.verify().unwrap();
    let before = w.sim.pool_snapshot();
    let shoot0 = w.sim.machine.counters.snapshot();
    let split_target = w.gfn(DATA + 12 * FRAME);
    let access0 = w.backend.memory_access(split_target, View(0)).unwrap();
    let t0 = w
        .backend
        .translate(View(0), Pa(split_target.0 << 12))
        .unwrap();

    // A split, a view and a shadow frame are each refused, with the tables as they were.
    let err = w
        .backend
        .set_memory_access(split_target, View(0), MemoryAccess::R)
        .unwrap_err();
    assert_eq!(err, VmiError::OutOfFrames, "{err}");
    assert_eq!(
        w.backend.create_view(MemoryAccess::RX),
        Err(VmiError::OutOfFrames)
    );
    let next = Gfn(0x2_0000 + shadows.len() as u64);
    for gfn in [next, Gfn(SHADOW_GFN + 2)] {
        assert_eq!(w.backend.allocate_gfn(gfn), Err(VmiError::OutOfFrames));
    }
    assert_eq!(w.sim.pool_snapshot(), before, "the tables changed");
    assert_eq!(
        w.sim.machine.counters.snapshot(),
        shoot0,
        "a refused change sent a shootdown"
    );
    assert_eq!(
        w.backend.memory_access(split_target, View(0)).unwrap(),
        access0
    );
    assert_eq!(
        w.backend
            .translate(View(0), Pa(split_target.0 << 12))
            .unwrap(),
        t0
    );
    w.backend.verify().unwrap();

    // The guest runs on as before: the refused right was not applied.
    let mut c = Code::new(TEXT);
    c.store(DATA + 12 * FRAME + 8, 9);
    let (r, exits) = w.run(0, &c.steps, &mut |e| panic!("no event expected: {e:?}"));
    r.unwrap();
    assert!(exits.is_empty());
    assert_eq!(w.host_u64(DATA + 12 * FRAME + 8), 9);

    // Giving frames back makes the same change possible.
    for v in views {
        w.backend.destroy_view(v).unwrap();
    }
    for g in shadows {
        w.backend.free_gfn(g).unwrap();
    }
    w.backend
        .set_memory_access(split_target, View(0), MemoryAccess::R)
        .unwrap();
    w.backend.verify().unwrap();
}

/// `allocate_gfn` takes the shadow frame and, in each view, the tables missing on the way
/// to its 4 KiB leaf, and nothing more: it is granted down to the pool's last frame, and
/// refused (`OutOfFrames`, tables unchanged, no shootdown) only when the pool holds fewer
/// frames than the mapping needs.
#[test]
fn allocate_gfn_uses_the_pool_to_the_last_frame() {
    let w = world(SimConfig {
        pool_frames: 48,
        ..SimConfig::default()
    });
    let v = w.backend.create_view(MemoryAccess::RX).unwrap();
    let views = 2; // view 0 and `v`: a mapping's tables are needed in each
    let given = core::cell::RefCell::new(Vec::new());
    let take = |gfn: Gfn, expect: usize| {
        let free = w.backend.free_frames();
        w.backend
            .allocate_gfn(gfn)
            .unwrap_or_else(|e| panic!("{gfn} refused with {free} frames free: {e}"));
        assert_eq!(free - w.backend.free_frames(), expect, "frames {gfn} took");
        given.borrow_mut().push(gfn);
    };
    let gib = |n: u64| Gfn((n << 30) >> 12);
    // Guest memory lies in the first GiB: its page directory exists in both views, so a
    // frame at 256 MiB needs a page table in each; its neighbour, nothing but itself.
    take(Gfn(SHADOW_GFN), 1 + views);
    take(Gfn(SHADOW_GFN + 1), 1);
    // At 2 GiB: a page directory and a page table in each view.
    take(gib(2), 1 + 2 * views);
    // At 512 GiB (PML4 entry 1): a PDPT, a page directory and a page table in each.
    take(gib(512), 1 + 3 * views);
    // Neighbours of the first until four frames are left.
    let mut next = SHADOW_GFN + 2;
    while w.backend.free_frames() > 4 {
        take(Gfn(next), 1);
        next += 1;
    }
    let refused = |gfn: Gfn| {
        let before = w.sim.pool_snapshot();
        let shoot0 = w.sim.machine.counters.snapshot();
        let free = w.backend.free_frames();
        assert_eq!(
            w.backend.allocate_gfn(gfn),
            Err(VmiError::OutOfFrames),
            "{gfn} with {free} frames free"
        );
        assert_eq!(w.sim.pool_snapshot(), before, "the tables changed");
        assert_eq!(w.sim.machine.counters.snapshot(), shoot0, "a shootdown");
        assert_eq!(w.backend.free_frames(), free);
        for view in [View(0), v] {
            assert!(w.backend.memory_access(gfn, view).is_err(), "{gfn} mapped");
        }
    };
    // Four frames: a new GiB needs five, refused; a new page table in each view (three
    // frames) fits, and then the last frame goes to a neighbour.
    refused(gib(3));
    take(Gfn(0x2_0000), 1 + views);
    take(Gfn(0x2_0001), 1);
    assert_eq!(
        w.backend.free_frames(),
        0,
        "the pool is used to its last frame"
    );
    // Empty: even a frame that needs no table is refused.
    refused(Gfn(0x2_0002));
    refused(Gfn(next));
    refused(gib(3));
    for &gfn in given.borrow().iter() {
        assert_eq!(
            w.backend.memory_access(gfn, View(0)).unwrap(),
            MemoryAccess::RWX
        );
        assert_eq!(w.backend.memory_access(gfn, v).unwrap(), MemoryAccess::RX);
    }
    w.backend.verify().unwrap();
    // One frame back: the neighbour that needs no table fits again.
    w.backend.free_gfn(Gfn(next - 1)).unwrap();
    take(Gfn(0x2_0002), 1);
    assert_eq!(w.backend.free_frames(), 0);
    w.backend.verify().unwrap();
}

#[test]
fn the_backend_is_shared_between_threads() {
    fn assert_sync<T: Sync + Send>() {}
    assert_sync::<Backend>();
}

/// A write that faults in view `v` while `v` is being destroyed: the backend has decided
/// the violation is real (the write is not allowed in `v`), then the destroy moves the
/// vCPU to view 0 before the event is built. The event must name the view the exit
/// happened in (or be dropped as spurious, since view 0 allows the write); it must not
/// report a violation "in view 0" of a write that view 0 allows.
#[test]
fn destroyed_view_event_names_the_exit_view() {
    let w = small();
    let v = w.backend.create_view(MemoryAccess::RWX).unwrap();
    let watched = DATA + 2 * FRAME;
    w.backend
        .set_memory_access(w.gfn(watched), v, MemoryAccess::R)
        .unwrap();
    w.backend.switch_to_view(v).unwrap();
    let (go, gone) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
    let (go_tx, go_rx) = go;
    let (gone_tx, gone_rx) = gone;
    // The backend reads the vCPU's registers between its rights check and the event.
    *w.backend.platform().registers_hook.lock().unwrap() = Some(Box::new(move |_| {
        go_tx.send(()).unwrap();
        gone_rx.recv().unwrap();
    }));
    let mut c = Code::new(TEXT);
    c.store(watched + 8, 1);
    let mut views = Vec::new();
    std::thread::scope(|s| {
        let run = s.spawn(|| {
            w.run(0, &c.steps, &mut |e| {
                views.push(e.view);
                Response::continue_().emulate()
            })
            .0
        });
        go_rx.recv().unwrap();
        w.backend.destroy_view(v).unwrap();
        gone_tx.send(()).unwrap();
        run.join().unwrap().unwrap();
    });
    assert_eq!(w.host_u64(watched + 8), 1);
    assert!(
        views.iter().all(|&view| view == Some(v)),
        "events of an exit in {v} were reported in {views:?}"
    );
}
