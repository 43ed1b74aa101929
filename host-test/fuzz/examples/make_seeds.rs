//! Writes the committed seed corpora (`seeds/<target>/`): small, real-looking inputs for
//! each fuzz target, built with the host crate's guest builder and dump writers so that
//! the fuzzer starts from valid page tables, ELF cores and LiME images rather than from
//! nothing. Run from `host-test/fuzz/`: `cargo +nightly run --example make_seeds`.
//! The output is deterministic (no randomness), so a rerun reproduces the files.

use std::fs;
use std::path::Path;

use introvisor::arch::amd64::{Registers, Segment};
use introvisor::{Pa, Va};
use introvisor_host::builder::{GuestBuilder, MapFlags, PageSize};
use introvisor_host::dump::write::{Run, write_lime, write_qemu_elf};

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("seeds").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn le64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn set64(mem: &mut [u8], at: usize, x: u64) {
    mem[at..at + 8].copy_from_slice(&x.to_le_bytes());
}

fn set32(mem: &mut [u8], at: usize, x: u32) {
    mem[at..at + 4].copy_from_slice(&x.to_le_bytes());
}

const KERNEL: u64 = 0xffff_8000_0000_0000;

/// A 4- or 5-level guest in 64 KiB: kernel text and data, a user page, a 2 MiB and a
/// 1 GiB page (outside memory, as in a dump that holds only part of RAM), an alias (two
/// VAs on one frame), and strings: UTF-8, UTF-16 at an odd address near a page end, and
/// one with no NUL before the page end.
fn guest(levels: u8) -> (introvisor_host::builder::Guest, Vec<(u64, &'static str)>) {
    let mut b = GuestBuilder::with_levels(0x10000, levels);
    let text = b
        .map_new(
            Va(KERNEL | 0x10_0000),
            PageSize::Size4K,
            MapFlags::KERNEL_TEXT,
        )
        .unwrap();
    let data = b
        .map_new(
            Va(KERNEL | 0x10_1000),
            PageSize::Size4K,
            MapFlags::KERNEL_DATA,
        )
        .unwrap();
    b.map(
        Va(KERNEL | 0x20_0000),
        Pa(0x4000_0000),
        PageSize::Size2M,
        MapFlags::KERNEL_DATA,
    )
    .unwrap();
    b.map(
        Va(KERNEL | 0x4000_0000),
        Pa(0x8000_0000),
        PageSize::Size1G,
        MapFlags::KERNEL_TEXT,
    )
    .unwrap();
    b.map_new(Va(0x40_0000), PageSize::Size4K, MapFlags::USER_DATA)
        .unwrap();
    b.map(Va(0x7fff_f000), data, PageSize::Size4K, MapFlags::USER_DATA)
        .unwrap();
    b.write_physical(text, &[0x48, 0x89, 0xe5, 0xc3]).unwrap();
    b.write_virtual(Va(KERNEL | 0x10_1000), b"swapper/0\0")
        .unwrap();
    let w: Vec<u8> = "C:\\Windows\\System32\0"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    b.write_virtual(Va(KERNEL | 0x10_1fd1), &w).unwrap();
    b.write_virtual(Va(KERNEL | 0x10_1f00), &[b'A'; 0xd0])
        .unwrap();
    b.write_virtual(Va(0x40_0010), b"/sbin/init\0").unwrap();
    let names = vec![
        (KERNEL | 0x10_0000, "text"),
        (KERNEL | 0x10_1000, "comm"),
        (KERNEL | 0x10_1fd1, "wide"),
        (KERNEL | 0x10_1f00, "nonul"),
        (KERNEL | 0x20_0123, "2m"),
        (KERNEL | 0x4000_1234, "1g"),
        (0x40_0010, "user"),
        (0x7fff_f000, "alias"),
        (0x0000_8000_0000_0000, "noncanonical"),
    ];
    let mut g = b.finish();
    // Only the frames in use: the seeds stay small.
    let used = g.memory.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
    g.memory.truncate(used.next_multiple_of(0x1000));
    (g, names)
}

/// The knobs word of the walk target for `mode` (0 off, 1 32-bit, 2 PAE, 3 4-level,
/// 4 5-level) and its flag bits.
fn knobs(mode: u32, flags: u32) -> u32 {
    let base = 52 << 8 | flags;
    (0..5).map(|m| base | m).find(|k| k % 5 == mode).unwrap()
}

const NXE: u32 = 1 << 16;
const PSE: u32 = 1 << 17;
const GB: u32 = 1 << 18;
const PDPTES: u32 = 1 << 19;
const WP: u32 = 1 << 20;

fn walk_seed(k: u32, root: u64, va: u64, pdptes: [u64; 4], memory: &[u8]) -> Vec<u8> {
    let mut v = k.to_le_bytes().to_vec();
    le64(&mut v, root);
    le64(&mut v, va);
    for p in pdptes {
        le64(&mut v, p);
    }
    v.extend_from_slice(memory);
    v
}

fn walk_seeds() {
    for levels in [4u8, 5] {
        let (g, names) = guest(levels);
        let mode = u32::from(levels) - 1;
        for (va, name) in names {
            let k = knobs(mode, NXE | PSE | GB | WP);
            put(
                "walk",
                &format!("{levels}level-{name}"),
                &walk_seed(k, g.root.0, va, [0; 4], &g.memory),
            );
        }
    }
    // 32-bit paging: a PD at 0x1000 with a PT and a 4 MiB page (PSE), a PT at 0x2000.
    let mut m = vec![0u8; 0x4000];
    set32(&mut m, 0x1000, 0x2000 | 0x27);
    set32(&mut m, 0x1004, 0x0040_0000 | 0xe3);
    set32(&mut m, 0x1008, 0x0000_2000 | 0x80 | 0x1); // PS without PSE: a table
    set32(&mut m, 0x2000 + 5 * 4, 0x3000 | 0x63);
    set32(&mut m, 0x2000 + 6 * 4, 0x3000 | 0x65);
    for (va, name) in [
        (0x5123, "pte"),
        (0x6fff, "alias"),
        (0x40_0abc, "4m"),
        (0x80_1000, "ps"),
    ] {
        put(
            "walk",
            &format!("32bit-{name}"),
            &walk_seed(knobs(1, PSE | WP), 0x1000, va, [0; 4], &m),
        );
    }
    // PAE: a PDPT at 0x1020 (32-byte aligned), a PD at 0x2000, a PT at 0x3000.
    let mut m = vec![0u8; 0x4000];
    set64(&mut m, 0x1020, 0x2001);
    set64(&mut m, 0x1028, 0x2001);
    set64(&mut m, 0x2000, 0x3000 | 0x27);
    set64(&mut m, 0x2008, 0x8000_0000_0020_0000 | 0xe3);
    set64(&mut m, 0x3008, 0x5000 | 0x63);
    set64(&mut m, 0x3010, 0x000f_0000_0000_6000 | 0x63); // reserved bits above MAXPHYADDR
    for (va, name) in [
        (0x1abc, "pte"),
        (0x2abc, "reserved"),
        (0x20_0abc, "2m"),
        (0x4000_1abc, "pdpt1"),
    ] {
        put(
            "walk",
            &format!("pae-{name}"),
            &walk_seed(knobs(2, NXE | WP), 0x1020, va, [0; 4], &m),
        );
    }
    let held = [0x2001, 0, 0x2001, 0x8000_0001];
    put(
        "walk",
        "pae-held-pdptes",
        &walk_seed(knobs(2, NXE | PDPTES), 0x1020, 0x8000_1abc, held, &m),
    );
    put(
        "walk",
        "off",
        &walk_seed(knobs(0, 0), 0, 0x1234_5678, [0; 4], &m),
    );
}

/// Ops of the core_read target (see its source for the encoding).
struct Ops(Vec<u8>);

impl Ops {
    fn kernel(&mut self, va: u64) {
        self.0.push(5);
        self.0
            .extend_from_slice(&((va & 0xffff_ffff) as u32).to_le_bytes());
    }
    fn small(&mut self, a: u16) {
        self.0.push(0);
        self.0.extend_from_slice(&a.to_le_bytes());
    }
    fn ctx_virtual(&mut self, va: u64) {
        if va >= KERNEL {
            self.kernel(va);
        } else {
            self.0.push(6);
            self.0.extend_from_slice(&(va as u32).to_le_bytes());
        }
        self.0.push(1);
    }
    fn op(&mut self, code: u8, va: u64, extra: &[u8]) {
        self.0.push(code);
        self.ctx_virtual(va);
        self.0.extend_from_slice(extra);
    }
}

fn core_read_seeds() {
    for levels in [4u8, 5] {
        let (g, names) = guest(levels);
        let mode = if levels == 4 { 3u8 } else { 6 };
        for (variant, (v2p, gfn, toggles)) in [(512u16, 64u16, 0u8), (0, 0, 0), (4, 1, 2)]
            .into_iter()
            .enumerate()
        {
            let mut v = vec![mode];
            v.extend_from_slice(&0u16.to_le_bytes()); // root frame 0, no PCID
            v.extend_from_slice(&256u16.to_le_bytes()); // string limit
            v.extend_from_slice(&v2p.to_le_bytes());
            v.extend_from_slice(&gfn.to_le_bytes());
            v.push(toggles);
            v.extend_from_slice(&(g.memory.len() as u16).to_le_bytes());
            v.extend_from_slice(&g.memory);
            let mut ops = Ops(Vec::new());
            for &(va, _) in &names {
                ops.op(0, va, &16u16.to_le_bytes());
                ops.op(1, va, &[3]);
                ops.op(2, va, &[8]);
                ops.op(3, va, &[]);
                ops.op(4, va, &[64, 0, 32, 0]);
                ops.op(5, va, &[0, 1]);
                ops.op(6, va, &[64, 0, 32, 0]);
                ops.op(7, va, &[0, 1]);
                ops.0.push(14);
                ops.kernel(va);
            }
            // A write to a PTE through the physical address, then an entry flush.
            ops.0.push(8);
            ops.small(0x5008);
            ops.0.push(0);
            ops.0.push(0);
            ops.0.extend_from_slice(&0x7003u64.to_le_bytes());
            ops.0.push(9);
            ops.kernel(KERNEL | 0x10_1000);
            ops.0.extend_from_slice(&[1, 1]);
            ops.0
                .extend_from_slice(&[10, 11, 8, 0, 12, 0, 12, 1, 13, 0, 4, 0, 15, 16, 0]);
            v.extend_from_slice(&ops.0);
            put("core_read", &format!("{levels}level-{variant}"), &v);
        }
    }
}

fn registers(cr3: u64) -> Registers {
    let code = Segment {
        selector: 0x10,
        base: 0,
        limit: 0xffff_ffff,
        access: 0xa09b,
    };
    let data = Segment {
        selector: 0x18,
        base: 0,
        limit: 0xffff_ffff,
        access: 0xc093,
    };
    Registers {
        rip: KERNEL | 0x10_0000,
        rsp: KERNEL | 0x10_1ff0,
        rflags: 0x246,
        cr0: 0x8005_0033,
        cr3,
        cr4: 0x0030_06a0,
        efer: 0xd01,
        cs: code,
        ds: data,
        es: data,
        ss: data,
        fs: data,
        gs: Segment {
            base: 0xffff_8880_0000_0000,
            ..data
        },
        ..Registers::default()
    }
}

fn dump_seeds() {
    let (g, _) = guest(4);
    let mem = &g.memory;
    let whole = [Run {
        paddr: 0,
        bytes: &mem[..0x8000],
    }];
    // A hole, a run that is not page-aligned (as Linux vmcores have), a high run.
    let split = [
        Run {
            paddr: 0,
            bytes: &mem[..0x3000],
        },
        Run {
            paddr: 0x4000,
            bytes: &mem[0x4000..0x5800],
        },
        Run {
            paddr: 0x5800,
            bytes: &mem[0x5800..0x8000],
        },
        Run {
            paddr: 0x1_0000_0000,
            bytes: &mem[..0x1000],
        },
    ];
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    for (name, runs, vcpus) in [
        ("elf-one-vcpu", &whole[..], 1),
        ("elf-split-two-vcpus", &split[..], 2),
        ("elf-no-vcpu", &split[..2], 0),
    ] {
        let mut out = Vec::new();
        let regs: Vec<Registers> = (0..vcpus).map(|_| registers(g.root.0)).collect();
        write_qemu_elf(&mut out, runs, &regs).unwrap();
        seeds.push((name, out));
    }
    for (name, runs) in [("lime-one", &whole[..]), ("lime-split", &split[..])] {
        let mut out = Vec::new();
        write_lime(&mut out, runs).unwrap();
        seeds.push((name, out));
    }
    for (name, bytes) in &seeds {
        let target = if name.starts_with("elf") {
            "elf_dump"
        } else {
            "lime_dump"
        };
        put(target, name, bytes);
        let detect = [&[0u8][..], bytes].concat();
        put("dump_open", &format!("detect-{name}"), &detect);
        let forced = if name.starts_with("elf") { 2u8 } else { 3 };
        put(
            "dump_open",
            &format!("forced-{name}"),
            &[&[forced][..], bytes].concat(),
        );
    }
    // The ELF header of a seed, cut inside its first PT_LOAD.
    let cut = &seeds[0].1[..seeds[0].1.len() - 0x2345];
    put("elf_dump", "elf-cut", cut);
    put("dump_open", "detect-elf-cut", &[&[0u8][..], cut].concat());
    put("dump_open", "raw", &[&[1u8][..], &mem[..0x3000]].concat());
    put(
        "dump_open",
        "raw-looks-elf",
        &[&[1u8][..], &seeds[0].1[..0x1800]].concat(),
    );
    put(
        "dump_open",
        "gzip",
        &[0, 0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 3],
    );
    put(
        "dump_open",
        "kdump",
        &[&[0u8][..], b"KDUMP   \x06\0\0\0"].concat(),
    );
}

fn cli_seeds() {
    let argv = |choice: u8, args: &[&str]| {
        let mut v = vec![choice];
        v.extend_from_slice(args.join("\0").as_bytes());
        v
    };
    put(
        "cli_args",
        "translate",
        &argv(
            0,
            &[
                "--cr3",
                "0x1aa000",
                "--paging=5",
                "-v",
                "vm.elf",
                "ffff_8000_0010_0000",
                "0x7fff_f000",
            ],
        ),
    );
    put(
        "cli_args",
        "translate-json",
        &argv(
            0,
            &[
                "vm.elf",
                "--json",
                "--vcpu",
                "1",
                "--maxphyaddr",
                "0x2e",
                "--format",
                "lime",
                "--",
                "-1",
            ],
        ),
    );
    put(
        "cli_args",
        "read",
        &argv(
            1,
            &[
                "--physical",
                "--base64",
                "-f",
                "raw",
                "mem.raw",
                "1000",
                "0X40",
            ],
        ),
    );
    put(
        "cli_args",
        "help",
        &argv(
            2,
            &[
                "-h",
                "--help",
                "--x=1",
                "-",
                "\u{1b}]0;title\u{7}",
                "caf\u{e9}\u{2028}",
            ],
        ),
    );
    let mut bad = argv(0, &["--cr3"]);
    bad.extend_from_slice(b"\0\xff\xfe\x1b[2J\0--paging");
    put("cli_args", "non-utf8", &bad);
}

fn tlb_seeds() {
    // Programs: insertions over a few keys, lookups, removals, flushes, resizes.
    for (n, geometry) in [0u8, 2, 3, 4].into_iter().enumerate() {
        let mut v = vec![geometry];
        for i in 0u8..120 {
            let key = i.wrapping_mul(37) % 240;
            match i % 12 {
                0..=3 => v.extend_from_slice(&[0, key, i, 0, 0, 0, 0, 0, 0, 0x80, 0]),
                4 => v.extend_from_slice(&[2, key, i, 1, 2, 3, 4, 5, 6, 7, 0]),
                5..=7 => v.extend_from_slice(&[3, key.wrapping_sub(37), 0]),
                8 => v.extend_from_slice(&[5, key.wrapping_sub(74)]),
                9 => v.extend_from_slice(&[6, 4, key, 1]),
                10 => v.extend_from_slice(&[8, [0u8, 3, 16, 255][usize::from(i / 12 % 4)]]),
                _ => v.extend_from_slice(&[7, 9]),
            }
        }
        put("tlb", &format!("program-{n}"), &v);
    }
}

/// One `ept_decode` input: an `ExitInfo` (the reason as a whole word), capabilities and
/// an entry to encode (see the target's source for the layout).
#[derive(Clone, Copy, Default)]
struct ExitSeed {
    reason: u32,
    q: u64,
    gla: u64,
    gpa: u64,
    ilen: u8,
    iinfo: u32,
    err: u32,
    frame: u64,
    level: u8,
    rights: u8,
}

fn ept_seeds() {
    // Execute-only, 4- and 5-level walks, UC and WB, 2 MiB and 1 GiB pages, INVEPT, A/D
    // (IA32_VMX_EPT_VPID_CAP, SDM Vol. 3D A.10).
    let caps: u64 = 1 | 1 << 6 | 1 << 7 | 1 << 8 | 1 << 14 | 1 << 16 | 1 << 17 | 1 << 20 | 1 << 21;
    let seeds = [
        (
            "ept-violation-write",
            ExitSeed {
                reason: 48,
                q: 0x182 | 0b001 << 3,
                gla: 0xff_ff80_0000_1000,
                gpa: 0x123_4000,
                frame: 0x20_0000,
                level: 2,
                rights: 3,
                ..Default::default()
            },
        ),
        (
            "ept-violation-fetch-no-gla",
            ExitSeed {
                reason: 48,
                q: 0x4 | 0b011 << 3,
                gpa: 0x5000,
                frame: 0x5000,
                level: 1,
                rights: 5,
                ..Default::default()
            },
        ),
        (
            "cr3-write",
            ExitSeed {
                reason: 28,
                q: 3 | 5 << 8,
                level: 1,
                rights: 3,
                ..Default::default()
            },
        ),
        (
            "lmsw",
            ExitSeed {
                reason: 28,
                q: 3 << 4 | 1 << 6 | 0x33 << 16,
                level: 1,
                rights: 3,
                ..Default::default()
            },
        ),
        (
            "io-out-dx",
            ExitSeed {
                reason: 30,
                q: 0x3f8 << 16,
                level: 1,
                rights: 3,
                ..Default::default()
            },
        ),
        (
            "io-rep-ins",
            ExitSeed {
                reason: 30,
                q: 1 | 1 << 3 | 1 << 4 | 1 << 5 | 1 << 6 | 0x60 << 16,
                level: 1,
                rights: 3,
                ..Default::default()
            },
        ),
        (
            "int3",
            ExitSeed {
                reason: 0,
                iinfo: 1 << 31 | 6 << 8 | 3,
                ilen: 1,
                level: 1,
                rights: 3,
                ..Default::default()
            },
        ),
        (
            "page-fault",
            ExitSeed {
                reason: 0,
                q: 0xdea_d000,
                iinfo: 1 << 31 | 1 << 11 | 3 << 8 | 14,
                err: 2,
                level: 1,
                rights: 3,
                ..Default::default()
            },
        ),
        (
            "debug-single-step",
            ExitSeed {
                reason: 0,
                q: 1 << 14,
                iinfo: 1 << 31 | 3 << 8 | 1,
                level: 1,
                rights: 3,
                ..Default::default()
            },
        ),
        (
            "mtf",
            ExitSeed {
                reason: 37,
                level: 1,
                rights: 3,
                ..Default::default()
            },
        ),
        (
            "cpuid",
            ExitSeed {
                reason: 10,
                level: 1,
                rights: 3,
                ..Default::default()
            },
        ),
        (
            "wrmsr",
            ExitSeed {
                reason: 32,
                level: 1,
                rights: 3,
                ..Default::default()
            },
        ),
        (
            "xsetbv",
            ExitSeed {
                reason: 55,
                level: 1,
                rights: 3,
                ..Default::default()
            },
        ),
        (
            "misconfig",
            ExitSeed {
                reason: 49,
                gpa: 0x7000,
                level: 1,
                rights: 3,
                ..Default::default()
            },
        ),
        (
            "entry-failure",
            ExitSeed {
                reason: 1 << 31 | 33,
                level: 1,
                rights: 3,
                ..Default::default()
            },
        ),
        (
            "unknown",
            ExitSeed {
                reason: 81,
                level: 1,
                rights: 3,
                ..Default::default()
            },
        ),
        (
            "hlt",
            ExitSeed {
                reason: 12,
                level: 1,
                rights: 3,
                ..Default::default()
            },
        ),
    ];
    for (name, s) in seeds {
        let mut v = vec![0u8];
        v.extend_from_slice(&s.reason.to_le_bytes());
        for w in [s.q, s.gla, s.gpa] {
            le64(&mut v, w);
        }
        v.push(s.ilen);
        for w in [s.iinfo, 0, s.err, 0, 0] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        le64(&mut v, caps);
        le64(&mut v, s.frame);
        v.extend_from_slice(&[s.level, s.rights, 6]);
        le64(&mut v, 0);
        v.extend_from_slice(&[4, 0]);
        put("ept_decode", name, &v);
    }
    // ept_sim programs: the pool size, then operations (0, 1 rights; 2 create; 3 destroy;
    // 4 remap; 5 reset a remap; 6 allocate a shadow frame; 7 free it), each with its
    // frame, view and rights bytes.
    let programs: [(&str, Vec<u8>); 4] = [
        (
            "views-rights-remap",
            vec![
                40, 2, 7, 2, 1, 0, 3, 1, 1, 0, 5, 1, 3, 1, 4, 0, 5, 4, 1, 3, 6, 5, 1, 3, 0, 8, 2,
                0, 3, 1, 2, 3,
            ],
        ),
        (
            "shadow-frames",
            vec![
                30, 6, 250, 6, 251, 2, 5, 0, 250, 1, 1, 4, 1, 3, 250, 7, 250, 7, 251, 3, 1,
            ],
        ),
        (
            "exhaust-pool",
            [
                vec![0],
                [2, 7, 0, 2, 1, 1, 0, 6, 2, 5, 0, 9, 3, 3].repeat(6),
            ]
            .concat(),
        ),
        (
            "split-2m",
            vec![50, 0, 6, 0, 1, 0, 7, 0, 3, 0, 6, 0, 7, 0, 7, 0, 7],
        ),
    ];
    for (name, p) in programs {
        put("ept_sim", name, &p);
    }
}

fn main() {
    ept_seeds();
    walk_seeds();
    core_read_seeds();
    dump_seeds();
    cli_seeds();
    tlb_seeds();
}
