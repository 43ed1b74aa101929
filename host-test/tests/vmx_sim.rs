//! The simulated VMX machine on its own, under EPT tables written by a small mapper in
//! this file (not by the backend): it translates as the SDM says, keeps stale
//! translations until INVEPT, and raises exits with the SDM's information.

use core::sync::atomic::Ordering;

use introvisor_host_test::vmx_sim::exit::{RawExit, reason};
use introvisor_host_test::vmx_sim::guest::{self, ALIAS, BIG_2M, DATA, HIGH, Sim, SimConfig, TEXT};
use introvisor_host_test::vmx_sim::{FRAME, Gpr, Insn, Observed, RunError, Step};

const R: u64 = 1;
const W: u64 = 2;
const X: u64 = 4;
const WB: u64 = 6 << 3;

/// A minimal EPT writer: 4-level, 4 KiB leaves, tables from the pool frames in order.
struct Mapper {
    root: u64,
    next: u64,
}

impl Mapper {
    fn new(sim: &Sim) -> Self {
        let mut m = Self {
            root: sim.pool.base.0,
            next: sim.pool.base.0 + FRAME,
        };
        for r in &sim.regions {
            for off in (0..r.size).step_by(FRAME as usize) {
                m.map(sim, r.gpa.0 + off, r.hpa.0 + off, R | W | X);
            }
        }
        m
    }

    fn eptp(&self) -> u64 {
        self.root | (3 << 3) | 6
    }

    fn slot(&mut self, sim: &Sim, gpa: u64) -> u64 {
        let mem = &sim.machine.mem;
        let mut table = self.root;
        for level in (2..=4).rev() {
            let slot = table + ((gpa >> (12 + 9 * (level - 1))) & 0x1ff) * 8;
            let e = mem.load_u64(slot).unwrap();
            if e & 7 == 0 {
                let t = self.next;
                self.next += FRAME;
                mem.store_u64(slot, t | R | W | X);
                table = t;
            } else {
                table = e & 0x000f_ffff_ffff_f000;
            }
        }
        table + ((gpa >> 12) & 0x1ff) * 8
    }

    fn map(&mut self, sim: &Sim, gpa: u64, hpa: u64, rights: u64) {
        let slot = self.slot(sim, gpa);
        sim.machine.mem.store_u64(slot, hpa | WB | rights);
    }

    fn set_rights(&mut self, sim: &Sim, gpa: u64, rights: u64) {
        let slot = self.slot(sim, gpa);
        let e = sim.machine.mem.load_u64(slot).unwrap();
        sim.machine.mem.store_u64(slot, (e & !7) | rights);
    }
}

fn setup(caps: Option<u64>) -> (Sim, Mapper) {
    let mut cfg = SimConfig {
        vcpus: 2,
        pool_frames: 64,
        ..SimConfig::default()
    };
    if let Some(c) = caps {
        cfg.caps = c;
    }
    let sim = Sim::new(cfg);
    let m = Mapper::new(&sim);
    for v in sim.machine.vcpus.iter() {
        v.lock().vmcs.eptp = m.eptp();
    }
    (sim, m)
}

fn load(rip: u64, va: u64) -> Step {
    Step::new(rip, 4, Insn::Load { va, size: 8 })
}

fn loads(log: &[Observed]) -> Vec<(u64, u64)> {
    log.iter()
        .filter_map(|o| match *o {
            Observed::Loaded { va, value, .. } => Some((va, value)),
            _ => None,
        })
        .collect()
}

/// Runs `script` on vCPU 0, collecting exits; each exit runs `f`.
fn run(
    sim: &Sim,
    script: &[Step],
    mut f: impl FnMut(&RawExit),
) -> (Result<(), RunError>, Vec<RawExit>) {
    let mut exits = Vec::new();
    let r = sim.machine.run(0, script, 50, &mut |e| {
        exits.push(*e);
        f(e);
        Ok(())
    });
    (r, exits)
}

#[test]
fn reads_go_through_guest_tables_and_ept() {
    let (sim, _m) = setup(None);
    let script = [
        load(TEXT, DATA + 8),
        load(TEXT + 4, ALIAS + 16),
        load(TEXT + 8, DATA + 3 * FRAME + 16),
        Step::new(TEXT + 12, 10, Insn::Mov(Gpr::Rax, 0x1122_3344_5566_7788)),
        Step::new(
            TEXT + 22,
            4,
            Insn::Store {
                va: BIG_2M + 0x1f_fff8,
                size: 8,
            },
        ),
        load(TEXT + 26, BIG_2M + 0x1f_fff8),
        Step::new(
            TEXT + 30,
            4,
            Insn::Store {
                va: HIGH + 0x3ffc,
                size: 8,
            },
        ),
        load(TEXT + 34, HIGH + 0x3ffc),
    ];
    let (r, exits) = run(&sim, &script, |_| {});
    r.unwrap();
    assert!(exits.is_empty(), "{exits:?}");
    let log = sim.machine.vcpus[0].lock().log.clone();
    let l = loads(&log);
    assert_eq!(l[0], (DATA + 8, 0xdada_0000_0000_0001));
    assert_eq!(l[1].1, 0xdada_0000_0003_0002, "alias reads page 3");
    assert_eq!(l[1].1, l[2].1);
    assert_eq!(l[3].1, 0x1122_3344_5566_7788);
    // A store across two pages of the second region lands in both host frames.
    assert_eq!(l[4].1, 0x1122_3344_5566_7788);
    let gpa = guest::gpa_of(&sim.guest, HIGH + 0x3ffc);
    let hpa = sim.hpa_of(gpa).unwrap();
    assert_eq!(sim.machine.mem.load_u8(hpa), Some(0x88));
    assert_eq!(
        sim.machine.mem.load_u8(sim.hpa_of(gpa + 4).unwrap()),
        Some(0x44)
    );
}

#[test]
fn violation_qualification_follows_table_28_7_and_tlb_goes_stale() {
    let (sim, mut m) = setup(None);
    let data_gpa = guest::gpa_of(&sim.guest, DATA);
    // Warm vCPU 0's TLB with a read of DATA, then take read away without INVEPT.
    let (r, _) = run(&sim, &[load(TEXT, DATA)], |_| {});
    r.unwrap();
    m.set_rights(&sim, data_gpa, 0);
    let (r, exits) = run(&sim, &[load(TEXT, DATA + 8)], |_| {});
    r.unwrap();
    assert!(exits.is_empty(), "the stale translation is used");
    // INVEPT on another thread does not reach vCPU 0; a shootdown does.
    sim.machine.invept(None);
    let (r, exits) = run(&sim, &[load(TEXT, DATA + 16)], |_| {});
    r.unwrap();
    assert!(
        exits.is_empty(),
        "an INVEPT by the introspection thread flushes no vCPU"
    );
    sim.machine.shootdown(None);
    let (r, exits) = run(&sim, &[load(TEXT, DATA + 16)], |e| {
        assert_eq!(e.reason, reason::EPT_VIOLATION);
    });
    // The violation repeats until the rights come back: the run hits its exit bound.
    assert!(matches!(r, Err(RunError::ExitStorm { .. })), "{r:?}");
    let e = exits[0];
    assert_eq!(e.guest_physical, data_gpa + 16);
    assert_eq!(e.guest_linear, DATA + 16);
    // Read access, rights 000, GLA valid, final translation.
    assert_eq!(e.qualification, 0b1_1000_0001);
}

#[test]
fn loosened_rights_give_one_spurious_violation_then_the_new_rights() {
    let (sim, mut m) = setup(None);
    let data_gpa = guest::gpa_of(&sim.guest, DATA);
    m.set_rights(&sim, data_gpa, R);
    sim.machine.shootdown(None);
    let (r, _) = run(&sim, &[load(TEXT, DATA)], |_| {});
    r.unwrap();
    // Loosen to RW with no invalidation: the cached R-only translation faults once.
    m.set_rights(&sim, data_gpa, R | W);
    let script = [
        Step::new(TEXT, 10, Insn::Mov(Gpr::Rax, 7)),
        Step::new(
            TEXT + 10,
            4,
            Insn::Store {
                va: DATA + 0x40,
                size: 8,
            },
        ),
    ];
    let (r, exits) = run(&sim, &script, |_| {});
    r.unwrap();
    assert_eq!(exits.len(), 1);
    // Write access, rights R (from the cached entry), GLA valid, final.
    assert_eq!(exits[0].qualification, 0b1_1000_1010);
    let log = sim.machine.vcpus[0].lock().log.clone();
    assert!(
        log.iter()
            .any(|o| matches!(o, Observed::Stored { va, value: 7, .. } if *va == DATA + 0x40))
    );
}

#[test]
fn a_guest_table_without_read_faults_as_a_paging_structure_access() {
    let (sim, mut m) = setup(None);
    // The guest's PML4 is the builder's first frame (guest-physical 0).
    let root = sim.regs.cr3;
    m.set_rights(&sim, root, 0);
    let (r, exits) = run(&sim, &[load(TEXT, DATA)], |_| {});
    assert!(r.is_err());
    let e = exits[0];
    assert_eq!(e.reason, reason::EPT_VIOLATION);
    // The first access is the fetch's walk: a read of the PML4 entry for TEXT.
    assert_eq!(e.guest_physical, root + ((TEXT >> 39) & 0x1ff) * 8);
    assert_eq!(e.guest_linear, TEXT);
    // Read, rights 000, GLA valid, bit 8 clear (a paging-structure access).
    assert_eq!(e.qualification, 0b0_1000_0001);
}

#[test]
fn misconfigurations_and_execute_only_follow_the_capabilities() {
    use introvisor_host_test::vmx_sim::ept::cap;
    let text_gpa;
    {
        let (sim, mut m) = setup(None);
        let data_gpa = guest::gpa_of(&sim.guest, DATA);
        m.set_rights(&sim, data_gpa, W);
        let (r, exits) = run(&sim, &[load(TEXT, DATA)], |_| {});
        assert!(r.is_err());
        assert_eq!(exits[0].reason, reason::EPT_MISCONFIG);
        assert_eq!(exits[0].guest_physical, data_gpa);
        // Execute-only code is fetched; a read of it faults with rights X.
        text_gpa = guest::gpa_of(&sim.guest, TEXT);
        m.set_rights(&sim, data_gpa, R | W);
        m.set_rights(&sim, text_gpa, X);
        sim.machine.shootdown(None);
        let (r, exits) = run(&sim, &[load(TEXT, TEXT + 0x100)], |_| {});
        assert!(r.is_err());
        assert_eq!(exits[0].reason, reason::EPT_VIOLATION);
        assert_eq!(exits[0].qualification, 0b1_1010_0001);
    }
    let (sim, mut m) = setup(Some(cap::FULL & !cap::EXECUTE_ONLY));
    m.set_rights(&sim, text_gpa, X);
    let (r, exits) = run(&sim, &[Step::new(TEXT, 1, Insn::Nop)], |_| {});
    assert!(r.is_err());
    assert_eq!(exits[0].reason, reason::EPT_MISCONFIG);
}

#[test]
fn mtf_interrupts_and_windows_at_instruction_boundaries() {
    let (sim, _m) = setup(None);
    let nops: Vec<Step> = (0..4).map(|i| Step::new(TEXT + i, 1, Insn::Nop)).collect();
    // MTF: one exit after each instruction.
    sim.machine.vcpus[0].lock().vmcs.controls.mtf = true;
    let (r, exits) = run(&sim, &nops, |_| {});
    r.unwrap();
    assert_eq!(exits.len(), 4);
    assert!(exits.iter().all(|e| e.reason == reason::MONITOR_TRAP_FLAG));
    sim.machine.vcpus[0].lock().vmcs.controls.mtf = false;

    // An interrupt asserted at step 2 with IF = 1 is delivered there.
    let mut script = nops.clone();
    script[2] = script[2].with_irq(0x41);
    sim.machine.vcpus[0].lock().log.clear();
    let (r, exits) = run(&sim, &script, |_| {});
    r.unwrap();
    assert!(exits.is_empty());
    let log = sim.machine.vcpus[0].lock().log.clone();
    let at = log
        .iter()
        .position(|o| {
            matches!(
                o,
                Observed::Delivered {
                    vector: 0x41,
                    injected: false,
                    ..
                }
            )
        })
        .unwrap();
    assert_eq!(
        log.iter()
            .take(at)
            .filter(|o| matches!(o, Observed::Retired { .. }))
            .count(),
        2
    );

    // Held by external-interrupt exiting: exits until the control goes off, then delivered.
    sim.machine.vcpus[0]
        .lock()
        .vmcs
        .controls
        .external_interrupt_exiting = true;
    let machine = sim.machine.clone();
    let (r, exits) = run(&sim, &script, |e| {
        assert_eq!(e.reason, reason::EXTERNAL_INTERRUPT);
        machine.vcpus[0]
            .lock()
            .vmcs
            .controls
            .external_interrupt_exiting = false;
    });
    r.unwrap();
    assert_eq!(exits.len(), 1);
    assert_eq!(sim.machine.vcpus[0].pending_interrupt(), None);

    // IF = 0: the interrupt waits; STI opens the window one instruction later.
    let mut script = vec![Step::new(TEXT, 1, Insn::Cli)];
    script.push(Step::new(TEXT + 1, 1, Insn::Nop).with_irq(0x42));
    script.push(Step::new(TEXT + 2, 1, Insn::Sti));
    script.push(Step::new(TEXT + 3, 1, Insn::Nop));
    script.push(Step::new(TEXT + 4, 1, Insn::Nop));
    sim.machine.vcpus[0].lock().log.clear();
    let (r, _) = run(&sim, &script, |_| {});
    r.unwrap();
    let log = sim.machine.vcpus[0].lock().log.clone();
    let at = log
        .iter()
        .position(|o| matches!(o, Observed::Delivered { vector: 0x42, .. }))
        .unwrap();
    // Cli, Nop, Sti, and the instruction in STI's shadow retire first.
    assert_eq!(
        log.iter()
            .take(at)
            .filter(|o| matches!(o, Observed::Retired { .. }))
            .count(),
        4
    );
    assert!(sim.machine.vcpus[0].exits.load(Ordering::Relaxed) > 0);
}

#[test]
fn int3_and_intercepted_instructions_exit_with_their_information() {
    let (sim, _m) = setup(None);
    let text_hpa = sim.hpa_of(guest::gpa_of(&sim.guest, TEXT)).unwrap();
    sim.machine.mem.store_u8(text_hpa + 0x20, 0xcc);
    {
        let mut st = sim.machine.vcpus[0].lock();
        st.vmcs.controls.exception_bitmap = 1 << 3;
        st.vmcs.controls.cr3_load_exiting = true;
        st.vmcs.controls.io_exiting = vec![0x3f8];
    }
    let cr3 = sim.regs.cr3;
    let script = [
        Step::new(TEXT + 0x20, 1, Insn::Nop),
        Step::new(TEXT + 0x21, 10, Insn::Mov(Gpr::Rax, cr3)),
        Step::new(TEXT + 0x2b, 3, Insn::MovCr3),
        Step::new(
            TEXT + 0x2e,
            2,
            Insn::Out {
                port: 0x3f8,
                size: 1,
            },
        ),
    ];
    let machine = sim.machine.clone();
    let (r, exits) = run(&sim, &script, |e| {
        if e.reason == reason::EXCEPTION_OR_NMI {
            // Skip the INT3 as a debugger would.
            machine.vcpus[0].lock().vmcs.regs.rip += 1;
        } else {
            machine.complete_instruction(0, false);
        }
    });
    r.unwrap();
    assert_eq!(exits.len(), 3);
    assert_eq!(exits[0].reason, reason::EXCEPTION_OR_NMI);
    assert_eq!(exits[0].interruption_info, 0x8000_0603);
    assert_eq!(exits[0].instruction_length, 1);
    assert_eq!(exits[1].reason, reason::CR_ACCESS);
    assert_eq!(exits[1].qualification, 3);
    assert_eq!(exits[2].reason, reason::IO_INSTRUCTION);
    assert_eq!(exits[2].qualification, (0x3f8 << 16) | (1 << 6));
    let log = sim.machine.vcpus[0].lock().log.clone();
    assert!(log.contains(&Observed::Cr3Loaded(cr3)));
}

#[test]
fn paging_structure_caches_keep_a_replaced_table_until_invept() {
    let (sim, mut m) = setup(None);
    let mem = &sim.machine.mem;
    // DATA pages 0 and 1 share a PT. vCPU 0 reads page 0 (caching the PDE -> PT).
    let p0 = guest::gpa_of(&sim.guest, DATA);
    let p1 = guest::gpa_of(&sim.guest, DATA + FRAME);
    assert_eq!(p0 >> 21, p1 >> 21);
    let (r, _) = run(&sim, &[load(TEXT, DATA)], |_| {});
    r.unwrap();
    // A new PT, identical but for page 1, which now maps page 2's frame; swap the PDE.
    let pte1 = m.slot(&sim, p1);
    let old_pt = pte1 & !0xfff;
    let new_pt = m.next;
    m.next += FRAME;
    for i in 0..512 {
        let e = mem.load_u64(old_pt + i * 8).unwrap();
        mem.store_u64(new_pt + i * 8, e);
    }
    let p2_hpa = sim
        .hpa_of(guest::gpa_of(&sim.guest, DATA + 2 * FRAME))
        .unwrap();
    mem.store_u64(new_pt + (pte1 & 0xfff), p2_hpa | WB | R | W | X);
    let walker = sim.machine.walker;
    let eptp = introvisor_host_test::vmx_sim::Eptp::decode(m.eptp(), walker.caps, 46).unwrap();
    let pde = walker
        .path(mem, &eptp, p1)
        .into_iter()
        .find(|p| p.0 == 2)
        .unwrap()
        .1;
    mem.store_u64(pde, new_pt | R | W | X);
    // Page 1 was never cached as a leaf, but the cached PDE still leads to the old PT.
    let (r, _) = run(&sim, &[load(TEXT, DATA + FRAME)], |_| {});
    r.unwrap();
    let l = loads(&sim.machine.vcpus[0].lock().log);
    assert_eq!(
        l.last().unwrap().1,
        0xdada_0000_0001_0000,
        "through the cached table"
    );
    // After INVEPT on vCPU 0's own thread, the new table is walked.
    let machine = sim.machine.clone();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _me = machine.enter_vcpu_thread(0);
            machine.invept(None);
        });
    });
    let (r, _) = run(&sim, &[load(TEXT, DATA + FRAME)], |_| {});
    r.unwrap();
    let l = loads(&sim.machine.vcpus[0].lock().log);
    assert_eq!(
        l.last().unwrap().1,
        0xdada_0000_0002_0000,
        "through the new table"
    );
    let (single, all, _, _) = sim.machine.counters.snapshot();
    assert_eq!((single, all), (0, 1));
}
