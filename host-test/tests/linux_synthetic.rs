//! `os::linux` on synthetic guests (`introvisor_host_test::linux_fixture`): the kernel
//! found from memory alone, every symbol decoded, the lists walked, and each kind of
//! corruption refused with its named error.

use core::ops::ControlFlow;
use std::collections::BTreeMap;

use introvisor::arch::amd64::{PagingMode, Registers};
use introvisor::os::linux::{
    BtfFoundBy, FindHint, ImageFoundBy, KallsymsLayout, LinuxError, LinuxOs, NAME_MAX,
    VmcoreinfoUse,
};
use introvisor::os::{ProcessObject, RegionKind, VmiOs};
use introvisor::{MemoryAccess, Pa, Va, VmiCore, VmiError};
use introvisor_host::HostDriver;
use introvisor_host_test::linux_fixture::{Fixture, KsLayout, Spec, build};

fn core_of(f: &Fixture) -> VmiCore<HostDriver> {
    VmiCore::new(HostDriver::from_vec(f.memory.clone()))
}

fn find(f: &Fixture) -> Result<LinuxOs, LinuxError> {
    let core = core_of(f);
    let mut scratch = vec![0u8; 64 << 10];
    LinuxOs::find(&core, FindHint::default(), &mut scratch)
}

fn w64(f: &mut Fixture, pa: u64, v: u64) {
    f.memory[pa as usize..pa as usize + 8].copy_from_slice(&v.to_le_bytes());
}

fn pa_of_direct(f: &Fixture, va: u64) -> u64 {
    va - f.spec.page_offset_base
}

fn check_everything(f: &Fixture) -> LinuxOs {
    let core = core_of(f);
    let os = find(f).unwrap_or_else(|e| panic!("find: {e}"));
    // the kernel
    assert_eq!(os.space.text, Va(f.text));
    assert_eq!(os.space.end, Va(f.end));
    assert_eq!(os.space.root, Pa(f.root));
    assert_eq!(os.space.page_offset_base, f.spec.page_offset_base);
    assert_eq!(os.space.kaslr_slide(), f.spec.slide);
    assert_eq!(
        os.space.phys_base(),
        f.spec.pa_text.wrapping_sub(f.text - 0xffff_ffff_8000_0000)
    );
    let mode = if f.spec.levels == 5 {
        PagingMode::Level5
    } else {
        PagingMode::Level4
    };
    assert_eq!(os.space.mode, mode);
    assert_eq!(os.pti, f.spec.pti);
    assert_eq!(os.btf_found_by, BtfFoundBy::Symbols);
    assert!(
        os.banner().starts_with("Linux version 6."),
        "{}",
        os.banner()
    );
    let want_layout = match f.spec.layout {
        KsLayout::OffsetsFirst => KallsymsLayout::OffsetsFirst,
        KsLayout::OffsetsFirstWithSeqs => KallsymsLayout::OffsetsFirstWithSeqs,
        KsLayout::OffsetsLast => KallsymsLayout::OffsetsLast,
    };
    assert_eq!(os.kallsyms.layout, want_layout);
    assert_eq!(os.kallsyms.names, f.ks_names);
    assert_eq!(os.kallsyms.token_table, f.ks_token_table);
    // every symbol, in order
    let mut got = Vec::new();
    os.kallsyms
        .for_each(&core, |s| {
            got.push((s.address, s.kind as char, s.name_str().to_string()));
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(got, f.symbols);
    assert!(
        got.iter().any(|s| s.2.len() > 127),
        "a name needing the 2-byte length"
    );
    // lookups
    assert_eq!(
        os.kallsyms.lookup(&core, "init_task").unwrap(),
        os.symbols.init_task
    );
    assert_eq!(
        os.kallsyms.lookup(&core, "dup_name").unwrap(),
        f.text + 0x20200
    );
    assert_eq!(
        os.kallsyms.lookup(&core, "no_such_symbol"),
        Err(LinuxError::SymbolNotFound)
    );
    let mut buf = [0u8; NAME_MAX];
    let (s, off) = os
        .kallsyms
        .symbolize(&core, f.text + 0x1000 + 5 * 0x40 + 0x13, &mut buf)
        .unwrap();
    assert_eq!((s.name_str(), off), ("sys_call_005_handler", 0x13));
    let (s, off) = os.kallsyms.symbolize(&core, f.text + 8, &mut buf).unwrap();
    assert_eq!(
        (s.name_str(), off),
        ("_text", 8),
        "the first of the symbols at _text"
    );
    let (s, _) = os.kallsyms.symbolize(&core, 0x2ad88, &mut buf).unwrap();
    assert!(
        s.kind == b'A',
        "a per-CPU symbol below the base: {}",
        s.name_str()
    );
    // processes
    let mut tasks = Vec::new();
    os.tasks(&core, |t| {
        tasks.push((
            t.task.0,
            t.pid,
            t.tgid,
            t.ppid,
            t.comm_str().to_string(),
            t.pgd.0,
            t.user_pgd,
        ));
        ControlFlow::Continue(())
    })
    .unwrap();
    let want: Vec<_> = f
        .tasks
        .iter()
        .map(|t| {
            let user = (f.spec.pti && t.pgd != f.root).then_some(Pa(t.pgd + 0x1000));
            let user = if t.pgd == f.root { None } else { user };
            (t.task, t.pid, t.tgid, t.ppid, t.comm.clone(), t.pgd, user)
        })
        .collect();
    assert_eq!(tasks, want);
    // threads of sh
    let sh = &f.tasks[f.threads.0];
    let mut tids = Vec::new();
    os.threads_of(&core, Va(sh.task), |t| {
        assert_eq!(t.tgid, 88);
        tids.push(t.pid);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(tids, f.threads.1);
    // modules
    let mut mods = Vec::new();
    os.modules_list(&core, |m| {
        mods.push((m.name_str().to_string(), m.base.0, m.size));
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(mods, f.modules);
    // current task, from __per_cpu_offset (no GS base in these registers) and from GS
    let regs = Registers {
        cr3: sh.pgd,
        ..Registers::default()
    };
    assert_eq!(os.current_task(&core, &regs).unwrap().task, Va(f.current));
    let regs_gs = Registers {
        gs_base: f.per_cpu,
        ..Registers::default()
    };
    assert_eq!(os.current_task(&core, &regs_gs).unwrap().pid, 88);
    // VMAs
    let mut vmas = Vec::new();
    os.vmas(&core, Va(sh.task), |v| {
        vmas.push((v.start.0, v.end.0, v.flags, v.file_name_str().to_string()));
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(vmas, f.vmas.1);
    // kernel threads have none
    let mut n = 0;
    os.vmas(&core, Va(f.tasks[1].task), |_| {
        n += 1;
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(n, 0);
    os
}

#[test]
fn a_6_12_like_guest_without_vmcoreinfo_is_found_by_scanning() {
    let f = build(Spec::v612());
    let os = check_everything(&f);
    assert_eq!(os.image_found_by, ImageFoundBy::Scan);
    assert_eq!(os.vmcoreinfo, VmcoreinfoUse::Absent);
    assert!(os.offsets.module_mem.is_some() && os.offsets.pcpu_hot_current_task.is_some());
}

#[test]
fn a_debian_6_1_like_5_level_guest_uses_its_checked_vmcoreinfo() {
    let f = build(Spec::v61());
    let os = check_everything(&f);
    assert_eq!(os.image_found_by, ImageFoundBy::Vmcoreinfo);
    assert!(matches!(os.vmcoreinfo, VmcoreinfoUse::Used(v) if v.osrelease() == "6.1.0-synthetic"));
    assert!(os.offsets.module_core_layout.is_some());
}

#[test]
fn the_pre_seqs_order_and_other_combinations_are_read_too() {
    let f = build(Spec {
        layout: KsLayout::OffsetsFirst,
        pti: true,
        ..Spec::v61()
    });
    check_everything(&f);
    let f = build(Spec {
        levels: 5,
        vmcoreinfo: true,
        slide: 0x1e0_0000,
        ..Spec::v612()
    });
    let os = check_everything(&f);
    assert_eq!(os.image_found_by, ImageFoundBy::Vmcoreinfo);
}

#[test]
fn without_the_btf_symbols_the_btf_is_found_by_scanning_past_a_decoy() {
    let f = build(Spec {
        btf_symbols: false,
        ..Spec::v612()
    });
    let os = find(&f).unwrap();
    assert_eq!(os.btf_found_by, BtfFoundBy::Scan);
    assert_eq!((os.btf.start, os.btf.len), f.btf);
    let mut n = 0;
    os.tasks(&core_of(&f), |_| {
        n += 1;
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(n, f.tasks.len());
}

#[test]
fn a_cr3_hint_places_the_image_without_the_scan() {
    let f = build(Spec::v612());
    let core = core_of(&f);
    let mut scratch = vec![0u8; 64 << 10];
    let hint = FindHint {
        cr3: Some(Pa(f.tasks[5].pgd)),
        ..FindHint::default()
    };
    // a process PGD shares the kernel half with the kernel's
    let os = LinuxOs::find(&core, hint, &mut scratch).unwrap();
    assert_eq!(os.image_found_by, ImageFoundBy::Cr3);
    assert_eq!(os.space.root, Pa(f.root));
}

#[test]
fn a_vmcoreinfo_that_lies_is_rejected_by_name_and_the_scan_finds_the_kernel() {
    let mut f = build(Spec::v61());
    // rewrite the real page's OSRELEASE
    let pos = f
        .memory
        .windows(25)
        .position(|w| w == b"OSRELEASE=6.1.0-synthetic")
        .unwrap();
    f.memory[pos + 10..pos + 15].copy_from_slice(b"9.9.9");
    let os = find(&f).unwrap();
    match os.vmcoreinfo {
        VmcoreinfoUse::Rejected(v, LinuxError::VmcoreinfoInvalid(why)) => {
            assert_eq!(v.osrelease(), "9.9.9-synthetic");
            assert!(why.contains("OSRELEASE"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(os.image_found_by, ImageFoundBy::Scan);
    assert_eq!(os.space.root, Pa(f.root));
}

#[test]
fn the_vmios_trait_reports_the_same_guest() {
    let f = build(Spec::v612());
    let core = core_of(&f);
    let os = find(&f).unwrap();
    let regs = Registers {
        kernel_gs_base: f.per_cpu,
        ..Registers::default()
    };
    let dynos: &dyn VmiOs<HostDriver> = &os;
    assert_eq!(dynos.kernel_image_base(&core, &regs).unwrap(), Va(f.text));
    let mut procs = Vec::new();
    dynos
        .processes(&core, &regs, &mut |p| {
            procs.push((p.id.0, p.root.0, p.object));
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(procs.len(), f.tasks.len());
    let mut name = [0u8; 4];
    let n = dynos
        .process_name(&core, &regs, procs[5].2, &mut name)
        .unwrap();
    assert_eq!(&name[..n], b"sh");
    let mut long = [0u8; 3];
    let n = dynos
        .process_name(&core, &regs, procs[3].2, &mut long)
        .unwrap();
    assert_eq!(&long[..n], b"kso", "truncated to the buffer");
    let cur = dynos.current_process(&core, &regs).unwrap();
    assert_eq!(cur.id.0, 88);
    let thread = dynos.current_thread(&core, &regs).unwrap();
    assert_eq!(
        (thread.id.0, thread.process),
        (88, ProcessObject(Va(f.current)))
    );
    let mut mods = Vec::new();
    dynos
        .modules(&core, &regs, &mut |m| {
            mods.push(m);
            ControlFlow::Continue(())
        })
        .unwrap();
    let mut buf = [0u8; 64];
    let n = dynos.module_name(&core, &regs, &mods[1], &mut buf).unwrap();
    assert_eq!(&buf[..n], b"crc_itu_t");
    let mut regions = Vec::new();
    dynos
        .regions(&core, &regs, ProcessObject(Va(f.current)), &mut |r| {
            regions.push(r);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(regions.len(), 6);
    assert_eq!(regions[1].kind, RegionKind::Image);
    assert_eq!(regions[1].access, MemoryAccess::R | MemoryAccess::X);
    assert_eq!(regions[3].kind, RegionKind::Private);
    let args = Registers {
        rdi: 1,
        rsi: 2,
        r10: 4,
        rcx: 5,
        ..Registers::default()
    };
    assert_eq!(dynos.syscall_argument(&core, &args, 3).unwrap(), 4);
    assert_eq!(dynos.function_argument(&core, &args, 3).unwrap(), 5);
    assert!(matches!(
        dynos.syscall_argument(&core, &args, 6),
        Err(VmiError::InvalidArgument(_))
    ));
    let mut threads = 0;
    dynos
        .threads(&core, &regs, ProcessObject(Va(f.current)), &mut |_| {
            threads += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(threads, 3);
}

// ----- corruption: each a named error, never a hang ---------------------------------------

#[test]
fn a_task_list_that_loops_is_a_cycle_error() {
    let mut f = build(Spec::v612());
    // the last task points back to the third: a ring that never passes init_task
    let last = f.tasks.last().unwrap().tasks_node;
    let third = f.tasks[2].tasks_node;
    {
        let at = pa_of_direct(&f, last);
        w64(&mut f, at, third);
    }
    let core = core_of(&f);
    let os = find(&f).unwrap();
    let mut visits = 0;
    let r = os.tasks(&core, |_| {
        visits += 1;
        ControlFlow::Continue(())
    });
    assert_eq!(r, Err(LinuxError::ListCycle { list: "tasks" }));
    assert!(visits < 3 * f.tasks.len(), "{visits} visits");
    // a task pointing at itself
    let mut f = build(Spec::v612());
    let n = f.tasks[1].tasks_node;
    {
        let at = pa_of_direct(&f, n);
        w64(&mut f, at, n);
    }
    let os = find(&f).unwrap();
    assert_eq!(
        os.tasks(&core_of(&f), |_| ControlFlow::Continue(())),
        Err(LinuxError::ListCycle { list: "tasks" })
    );
}

#[test]
fn a_task_list_that_points_outside_memory_is_a_pointer_error() {
    for bad in [
        0xffff_9a4d_ffff_0000u64,
        0x0000_7fff_0000_1000,
        0xffff_ffff_c7ff_f000,
        0,
    ] {
        let mut f = build(Spec::v612());
        let n = f.tasks[3].tasks_node;
        {
            let at = pa_of_direct(&f, n);
            w64(&mut f, at, bad);
        }
        let os = find(&f).unwrap();
        let r = os.tasks(&core_of(&f), |_| ControlFlow::Continue(()));
        assert!(
            matches!(r, Err(LinuxError::ListPointer { list: "tasks", .. })),
            "{bad:#x}: {r:?}"
        );
        let e: VmiError = r.unwrap_err().into();
        assert!(matches!(e, VmiError::Malformed(_)), "{e:?}");
    }
    // a module list node in an unmapped page
    let mut f = build(Spec::v612());
    let os = find(&f).unwrap();
    let head = os.symbols.modules.unwrap();
    let head_pa = head - f.text + f.spec.pa_text;
    w64(&mut f, head_pa, 0xffff_ffff_c100_0000);
    let r = os.modules_list(&core_of(&f), |_| ControlFlow::Continue(()));
    assert!(
        matches!(
            r,
            Err(LinuxError::ListPointer {
                list: "modules",
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn corrupt_kallsyms_are_named_errors() {
    let base = build(Spec::v612());
    // 1. a names entry made longer: names no longer meet the markers
    let mut f = build(Spec::v612());
    let p = f.ks_names as usize;
    f.memory[p] = f.memory[p].wrapping_add(9);
    assert!(
        matches!(find(&f), Err(LinuxError::KallsymsCorrupt(_))),
        "{:?}",
        find(&f).err()
    );
    // 2. a marker changed
    let mut f = build(Spec::v612());
    let m = f.ks_markers as usize + 4;
    f.memory[m] ^= 0x10;
    assert!(
        matches!(
            find(&f),
            Err(LinuxError::KallsymsCorrupt(_) | LinuxError::KallsymsUnsupported(_))
        ),
        "{:?}",
        find(&f).err()
    );
    // 3. the token index no longer increasing: no table checks out
    let mut f = build(Spec::v612());
    let t = f.ks_token_index as usize + 2 * 0x41;
    f.memory[t..t + 2].copy_from_slice(&0xffffu16.to_le_bytes());
    assert_eq!(find(&f).err(), Some(LinuxError::KallsymsNotFound));
    // 4. offsets out of order
    let mut f = build(Spec::v612());
    let o = f.ks_offsets as usize + 4 * 400;
    f.memory[o..o + 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    assert!(
        matches!(find(&f), Err(LinuxError::KallsymsCorrupt(why)) if why.contains("sorted")),
        "{:?}",
        find(&f).err()
    );
    // 5. no kallsyms at all
    let mut f = build(Spec::v612());
    for p in (0..f.memory.len() - 20).rev() {
        if &f.memory[p..p + 20] == b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00" {
            f.memory[p] = b'x';
        }
    }
    assert_eq!(find(&f).err(), Some(LinuxError::KallsymsNotFound));
    let _ = base;
}

#[test]
fn corrupt_btf_is_a_named_error() {
    let cases: [(usize, &[u8], &str); 4] = [
        (0, &[0x9e], "not found"),                   // magic
        (12, &0x7fff_0000u32.to_le_bytes(), "span"), // type_len past the span
        (24 + 4 + 3, &[0x1f], "kind"),               // first record: kind 31
        (24 + 4, &[0xff, 0xff], "past"), // first record: vlen 65535 (an INT: only kind 1)
    ];
    for (off, bytes, what) in cases {
        let mut f = build(Spec::v612());
        let p = f.btf.0 as usize + off;
        f.memory[p..p + bytes.len()].copy_from_slice(bytes);
        if off == 24 + 4 {
            // make the first record a struct so vlen counts members
            f.memory[p + 3] = 4;
        }
        let e = find(&f).err().unwrap_or_else(|| panic!("{what}: found"));
        match (what, e) {
            ("not found", LinuxError::BtfNotFound) => {}
            (_, LinuxError::BtfCorrupt(why)) => assert!(why.contains(what), "{what}: {why}"),
            (_, e) => panic!("{what}: {e:?}"),
        }
    }
}

#[test]
fn an_unnamed_member_that_contains_itself_is_a_named_error_not_a_hang() {
    let mut f = build(Spec::v612());
    // `tgid` becomes an unnamed member whose type is its own struct: a cycle
    let (at, id) = f.btf_pid_struct;
    let tgid = at as usize + 12 + 12;
    f.memory[tgid..tgid + 4].copy_from_slice(&0u32.to_le_bytes());
    f.memory[tgid + 4..tgid + 8].copy_from_slice(&id.to_le_bytes());
    match find(&f) {
        Err(LinuxError::BtfCorrupt(why)) => assert!(why.contains("too deep"), "{why}"),
        other => panic!("{:?}", other.map(|o| o.space)),
    }
}

#[test]
fn a_corrupt_maple_tree_is_a_named_error() {
    let mut f = build(Spec::v612());
    let os = find(&f).unwrap();
    let core = core_of(&f);
    let sh = f.tasks[f.vmas.0].task;
    let mm = core
        .read_u64(introvisor::AccessContext::direct(Pa(pa_of_direct(
            &f,
            sh + f.off.mm,
        ))))
        .unwrap();
    let root_at = pa_of_direct(&f, mm + f.off.mm_mt + 8);
    let root = core
        .read_u64(introvisor::AccessContext::direct(Pa(root_at)))
        .unwrap();
    // a node type that does not exist
    w64(&mut f, root_at, (root & !0x78) | (7 << 3));
    let r = os.vmas(&core_of(&f), Va(sh), |_| ControlFlow::Continue(()));
    assert!(matches!(r, Err(LinuxError::MapleTreeCorrupt(_))), "{r:?}");
    // a leaf pointing at its own parent as a VMA: VMAs out of order
    w64(&mut f, root_at, root);
    let leaf1 = core
        .read_u64(introvisor::AccessContext::direct(Pa(pa_of_direct(
            &f,
            root & !0xff,
        ) + 80)))
        .unwrap();
    let first_vma = core
        .read_u64(introvisor::AccessContext::direct(Pa(pa_of_direct(
            &f,
            leaf1 & !0xff,
        ) + 128
            + 8)))
        .unwrap();
    {
        let at = pa_of_direct(&f, leaf1 & !0xff) + 128 + 16;
        w64(&mut f, at, first_vma);
    }
    let r = os.vmas(&core_of(&f), Va(sh), |_| ControlFlow::Continue(()));
    assert!(matches!(r, Err(LinuxError::MapleTreeCorrupt(_))), "{r:?}");
}

#[test]
fn every_symbol_of_both_orders_decodes_the_same() {
    let mut names = BTreeMap::new();
    for layout in [
        KsLayout::OffsetsFirst,
        KsLayout::OffsetsFirstWithSeqs,
        KsLayout::OffsetsLast,
    ] {
        let f = build(Spec {
            layout,
            ..Spec::v612()
        });
        let os = find(&f).unwrap();
        let mut n = 0;
        os.kallsyms
            .for_each(&core_of(&f), |_| {
                n += 1;
                ControlFlow::Continue(())
            })
            .unwrap();
        names.insert(format!("{layout:?}"), n);
    }
    assert!(
        names.values().all(|&n| n == names["OffsetsLast"]),
        "{names:?}"
    );
}

#[test]
fn random_damage_anywhere_gives_ok_or_err_never_a_panic_or_a_hang() {
    use introvisor_host_test::{Rng, seed};
    let s = seed(0x11_4e55);
    println!("seed {s}");
    let mut rng = Rng::new(s);
    let clean = build(Spec::v612());
    let sh = clean.tasks[clean.vmas.0].task;
    // the places the layer reads: kallsyms, BTF, task structs, the maple tree area
    let regions = [
        (clean.ks_names, 0x4000u64),
        (clean.ks_token_table, 0x800),
        (clean.ks_offsets, 0x1000),
        (clean.btf.0, clean.btf.1),
        (pa_of_direct(&clean, clean.tasks[0].task), 0x40000),
        (pa_of_direct(&clean, sh), 0x8000),
    ];
    for round in 0..12 {
        let mut f = build(Spec::v612());
        let (start, len) = regions[round % regions.len()];
        for _ in 0..1 + rng.below(24) {
            let at = (start + rng.below(len)) as usize;
            f.memory[at] = rng.next_u64() as u8;
        }
        let core = core_of(&f);
        let mut scratch = vec![0u8; 64 << 10];
        let Ok(os) = LinuxOs::find(&core, FindHint::default(), &mut scratch) else {
            continue;
        };
        let mut n = 0u32;
        let _ = os.tasks(&core, |t| {
            n += 1;
            let _ = os.threads_of(&core, t.task, |_| ControlFlow::Continue(()));
            let _ = os.vmas(&core, t.task, |_| ControlFlow::Continue(()));
            ControlFlow::Continue(())
        });
        let _ = os.modules_list(&core, |_| ControlFlow::Continue(()));
        let _ = os.current_task(&core, &Registers::default());
        let mut buf = [0u8; NAME_MAX];
        let _ = os.kallsyms.symbolize(&core, f.text + 0x1234, &mut buf);
        let _ = os.kallsyms.for_each(&core, |_| ControlFlow::Continue(()));
        assert!(n < 1 << 20);
    }
}
