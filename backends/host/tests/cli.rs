//! The `introvisor` binary, run as a user would run it, on dumps built with GuestBuilder.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use introvisor::Va;
use introvisor::arch::amd64::{Registers, Segment};
use introvisor_host::builder::{Guest, GuestBuilder, MapFlags, PageSize};
use introvisor_host::dump::write::{Run, write_lime, write_qemu_elf};

const BIN: &str = env!("CARGO_BIN_EXE_introvisor");

/// A file in the temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, bytes: &[u8]) -> Self {
        use core::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "introvisor-cli-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Output {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Output {
    fn text(&self) -> String {
        String::from_utf8(self.stdout.clone()).unwrap()
    }
}

fn run_with(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Output {
        code: out.status.code().unwrap(),
        stdout: out.stdout,
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn run(args: &[&str]) -> Output {
    run_with(args, b"")
}

const USER: u64 = 0x40_0000;
const KTEXT: u64 = 0xffff_ffff_8100_0000;
const DIRECT: u64 = 0xffff_8880_0000_0000;
const FAR: u64 = 0xffff_c900_0000_0000;
const TEXT: &[u8] = b"a string that crosses a page boundary\0";

/// A 4-level guest: two user 4 KiB pages with a string across them (and an unmapped page
/// after them), a 2 MiB kernel text page, a 1 GiB direct map of all memory, and a 4 KiB
/// page mapped to a frame above 4 GiB (outside memory).
fn guest() -> Guest {
    let mut g = GuestBuilder::new(8 << 20);
    g.map_new(Va(USER), PageSize::Size4K, MapFlags::USER_DATA)
        .unwrap();
    g.map_new(Va(USER + 0x1000), PageSize::Size4K, MapFlags::USER_DATA)
        .unwrap();
    g.map_new(Va(KTEXT), PageSize::Size2M, MapFlags::KERNEL_TEXT)
        .unwrap();
    g.map(
        Va(DIRECT),
        introvisor::Pa(0),
        PageSize::Size1G,
        MapFlags::KERNEL_DATA,
    )
    .unwrap();
    g.map(
        Va(FAR),
        introvisor::Pa(0x1_0000_0000),
        PageSize::Size4K,
        MapFlags::KERNEL_DATA,
    )
    .unwrap();
    g.write_virtual(Va(USER + 0xff0), TEXT).unwrap();
    let pattern: Vec<u8> = (0..0x20_0000u32)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    g.write_virtual(Va(KTEXT), &pattern).unwrap();
    g.finish()
}

fn raw_dump(g: &Guest) -> TempFile {
    TempFile::new("raw.bin", &g.memory)
}

fn long_mode(cr3: u64) -> Registers {
    Registers {
        cr0: 0x8005_0033,
        cr3,
        cr4: 0x6a0,
        efer: 0xd00,
        rip: 0x40_0000,
        cs: Segment {
            selector: 0x33,
            limit: 0xffff_ffff,
            access: 0xa0fb,
            base: 0,
        },
        ss: Segment {
            selector: 0x2b,
            limit: 0xffff_ffff,
            access: 0xc0f3,
            base: 0,
        },
        ..Registers::default()
    }
}

/// The guest as a QEMU-style ELF with two vCPUs: vCPU 1's CR3 carries a PCID and the
/// no-flush bit, which the walker must mask.
fn elf_dump(g: &Guest) -> TempFile {
    let mut bytes = Vec::new();
    write_qemu_elf(
        &mut bytes,
        &[Run {
            paddr: 0,
            bytes: &g.memory,
        }],
        &[
            long_mode(g.root.0),
            long_mode(g.root.0 | 0x8000_0000_0000_0005),
        ],
    )
    .unwrap();
    TempFile::new("dump.elf", &bytes)
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

fn cr3(g: &Guest) -> String {
    hex(g.root.0)
}

fn expected_line(g: &Guest, va: u64) -> String {
    format!("{:#x} {:#x}", va, g.lookup(Va(va)).unwrap().0)
}

#[test]
fn translate_arguments_cover_every_page_size_and_unmapped() {
    let g = guest();
    let dump = raw_dump(&g);
    let vas = [USER + 0x123, KTEXT + 0x12345, DIRECT + 0x34_5678, FAR + 8];
    let mut args = vec!["translate", dump.path(), "--cr3"];
    let root = cr3(&g);
    args.push(&root);
    let va_args: Vec<String> = vas.iter().map(|&v| hex(v)).collect();
    args.extend(va_args.iter().map(String::as_str));
    args.push("0x0000800000000000"); // non-canonical
    args.push("7fff_0000_0000"); // no 0x, an underscore; not mapped
    let out = run(&args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<String> = out.text().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    for (line, &va) in lines.iter().zip(&vas) {
        assert_eq!(line, &expected_line(&g, va));
    }
    assert_eq!(
        lines[1],
        format!("{:#x} {:#x}", KTEXT + 0x12345, 0x20_0000 + 0x12345)
    );
    assert_eq!(
        lines[2],
        format!("{:#x} {:#x}", DIRECT + 0x345678, 0x345678)
    );
    assert_eq!(lines[3], format!("{:#x} 0x100000008", FAR + 8));
    assert_eq!(
        lines[4],
        "0x800000000000 unmapped non-canonical level=4 entry=0x0 value=0x0"
    );
    // 0x7fff_0000_0000: PML4 index 255 is empty.
    assert_eq!(
        lines[5],
        format!(
            "0x7fff00000000 unmapped not-present level=4 entry={:#x} value=0x0",
            g.root.0 + 255 * 8
        )
    );
}

#[test]
fn translate_reads_stdin_like_arguments() {
    let g = guest();
    let dump = raw_dump(&g);
    let root = cr3(&g);
    let vas = [
        "0x400123",
        "ffffffff81000000",
        "0xffff888000001000",
        "0x500000",
    ];
    let by_args = run(&[&["translate", dump.path(), "--cr3", &root][..], &vas[..]].concat());
    assert_eq!(by_args.code, 0);
    let input = format!(
        "# a comment\n{}\n\n  {}  \n{}\n{}",
        vas[0], vas[1], vas[2], vas[3]
    );
    let by_stdin = run_with(
        &["translate", dump.path(), "--cr3", &root],
        input.as_bytes(),
    );
    assert_eq!(by_stdin.code, 0, "{}", by_stdin.stderr);
    assert_eq!(by_stdin.stdout, by_args.stdout);
    assert_eq!(by_stdin.text().lines().count(), 4);
    assert!(
        by_stdin
            .text()
            .lines()
            .last()
            .unwrap()
            .contains(" unmapped not-present level=1 ")
    );
}

#[test]
fn malformed_numbers_exit_2() {
    let g = guest();
    let dump = raw_dump(&g);
    let root = cr3(&g);
    // In arguments: nothing is printed.
    let out = run(&[
        "translate",
        dump.path(),
        "--cr3",
        &root,
        "0x400000",
        "0xnope",
    ]);
    assert_eq!(out.code, 2);
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("0xnope"), "{}", out.stderr);
    // Too large for 64 bits.
    let out = run(&[
        "translate",
        dump.path(),
        "--cr3",
        &root,
        "1_0000_0000_0000_0000",
    ]);
    assert_eq!(out.code, 2);
    // A bad CR3.
    let out = run(&["translate", dump.path(), "--cr3", "xyz", "0"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("CR3"), "{}", out.stderr);
    // On stdin: the line is reported and skipped, the others answered.
    let out = run_with(
        &["translate", dump.path(), "--cr3", &root],
        b"0x400000\nbogus\n0x401000\n",
    );
    assert_eq!(out.code, 2);
    assert_eq!(out.text().lines().count(), 2);
    assert!(out.stderr.contains("line 2"), "{}", out.stderr);
    assert!(out.stderr.contains("bogus"), "{}", out.stderr);
    // A bad LEN.
    let out = run(&["read", dump.path(), "--cr3", &root, "0x400000", "12q"]);
    assert_eq!(out.code, 2);
}

#[test]
fn unreadable_dumps_and_bad_usage_exit_2() {
    let missing = std::env::temp_dir().join("introvisor-cli-test-no-such-dump");
    let missing = missing.to_str().unwrap();
    let out = run(&["translate", missing, "--cr3", "0", "0x1000"]);
    assert_eq!(out.code, 2);
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("no-such-dump"), "{}", out.stderr);
    let out = run(&["info", missing]);
    assert_eq!(out.code, 2);
    let out = run(&["read", missing, "--cr3", "0", "0", "1"]);
    assert_eq!(out.code, 2);

    let corrupt = TempFile::new("corrupt.elf", b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x04");
    let out = run(&["info", corrupt.path()]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("truncated"), "{}", out.stderr);

    let g = guest();
    let dump = raw_dump(&g);
    // A raw dump has no registers: --cr3 is needed.
    let out = run(&["translate", dump.path(), "0x400000"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--cr3"), "{}", out.stderr);
    for args in [
        &[][..],
        &["frobnicate"][..],
        &["translate"][..],
        &["translate", dump.path(), "--cr3"][..],
        &["translate", dump.path(), "--cr3", "0", "--bogus", "0"][..],
        &["translate", dump.path(), "--cr3", "0", "--paging", "6", "0"][..],
        &["translate", dump.path(), "--cr3", "0", "--nxe", "2", "0"][..],
        &[
            "translate",
            dump.path(),
            "--cr3",
            "0",
            "--maxphyaddr",
            "60",
            "0",
        ][..],
        &["read", dump.path(), "--cr3", "0", "0x400000"][..],
        &["info"][..],
        &["demo", "extra"][..],
    ] {
        let out = run(args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}

#[test]
fn read_hex_dump_across_a_page_boundary() {
    let g = guest();
    let dump = raw_dump(&g);
    let root = cr3(&g);
    let out = run(&["read", dump.path(), "--cr3", &root, "0x400ff0", "26"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.text(),
        "0000000000400ff0: 6120 7374 7269 6e67 2074 6861 7420 6372  a string that cr\n\
         0000000000401000: 6f73 7365 7320 6120 7061 6765 2062 6f75  osses a page bou\n\
         0000000000401010: 6e64 6172 7900                           ndary.\n"
    );
}

#[test]
fn read_raw_gives_exactly_the_bytes() {
    let g = guest();
    let dump = raw_dump(&g);
    let root = cr3(&g);
    let expect = |va: u64, len: usize| -> Vec<u8> {
        (0..len)
            .map(|i| {
                let pa = g.lookup(Va(va + i as u64)).unwrap().0 as usize;
                g.memory[pa]
            })
            .collect()
    };
    // Across the two user pages (two frames that are not adjacent).
    let out = run(&[
        "read",
        dump.path(),
        "--cr3",
        &root,
        "0x400ff0",
        "0x20",
        "--raw",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, expect(0x40_0ff0, 0x20));
    assert_eq!(&out.stdout[..TEXT.len() - 1 - 6], &TEXT[..TEXT.len() - 7]);
    // 1.5 MiB of the 2 MiB page, from an odd address: many chunks.
    let va = KTEXT + 0x333;
    let len = 0x18_0000;
    let out = run(&[
        "read",
        dump.path(),
        "--cr3",
        &root,
        &hex(va),
        &hex(len as u64),
        "--raw",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.len(), len);
    assert_eq!(out.stdout, expect(va, len));
    // All of memory through the 1 GiB direct map.
    let out = run(&[
        "read",
        dump.path(),
        "--cr3",
        &root,
        &hex(DIRECT),
        "800000",
        "--raw",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout == g.memory);
    // Zero bytes.
    let out = run(&[
        "read",
        dump.path(),
        "--cr3",
        &root,
        "0x400000",
        "0",
        "--raw",
    ]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.is_empty());
}

#[test]
fn read_of_a_partly_unmapped_range_names_the_first_fault_and_prints_nothing() {
    let g = guest();
    let dump = raw_dump(&g);
    let root = cr3(&g);
    // 0x400000 and 0x401000 are mapped, 0x402000 is not.
    for raw in [true, false] {
        let mut args = vec!["read", dump.path(), "--cr3", &root, "0x400800", "0x2000"];
        if raw {
            args.push("--raw");
        }
        let out = run(&args);
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(out.stdout.is_empty(), "partial output");
        assert!(
            out.stderr.contains("0x402000 is not mapped"),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("not-present level=1"), "{}", out.stderr);
    }
    // Mapped to a frame the dump does not hold.
    let out = run(&[
        "read",
        dump.path(),
        "--cr3",
        &root,
        &hex(FAR + 0x10),
        "4",
        "--raw",
    ]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr
            .contains(&format!("{:#x} maps to 0x100000010", FAR + 0x10)),
        "{}",
        out.stderr
    );
    // A range that wraps around the address space is malformed.
    let out = run(&[
        "read",
        dump.path(),
        "--cr3",
        &root,
        "0xffffffffffffff00",
        "0x200",
    ]);
    assert_eq!(out.code, 2);
}

#[test]
fn info_describes_raw_and_elf_dumps() {
    let g = guest();
    let raw = raw_dump(&g);
    let out = run(&["info", raw.path()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = out.text();
    assert!(text.contains("format:  raw (no known header)\n"), "{text}");
    assert!(text.contains("size:    8388608 bytes (8.0 MiB)"), "{text}");
    assert!(
        text.contains("0x0000000000000000-0x00000000007fffff"),
        "{text}"
    );
    assert!(text.contains("vcpus:   0"), "{text}");

    let elf = elf_dump(&g);
    let out = run(&["info", elf.path()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = out.text();
    assert!(text.contains("ELF64 core file, machine x86-64"), "{text}");
    assert!(text.contains("in 1 range(s)"), "{text}");
    assert!(text.contains("vcpus:   2"), "{text}");
    assert!(
        text.contains(&format!("vcpu 0: cr3={:#x} 4-level paging", g.root.0)),
        "{text}"
    );
    assert!(text.contains("efer=0xd00 (derived)"), "{text}");
    assert!(text.contains("cpl=3"), "{text}");
}

#[test]
fn elf_dumps_take_cr3_and_mode_from_the_vcpu() {
    let g = guest();
    let elf = elf_dump(&g);
    let va = hex(USER + 0x10);
    let want = format!("{}\n", expected_line(&g, USER + 0x10));
    for args in [
        vec!["translate", elf.path(), &va],
        vec!["translate", elf.path(), "--vcpu", "1", &va],
    ] {
        let out = run(&args);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(out.text(), want);
    }
    let out = run(&["translate", elf.path(), "--vcpu", "2", &va]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("2 vCPU"), "{}", out.stderr);
    // --cr3 overrides the vCPU's: at 0x400000 there is no page table.
    let out = run(&["translate", elf.path(), "--cr3", "0x7ff000", &va]);
    assert_eq!(out.code, 0);
    assert!(
        out.text().contains("unmapped not-present level=4"),
        "{}",
        out.text()
    );
    let out = run(&["read", elf.path(), "0x400ff0", "8", "--raw"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, b"a string");
}

#[test]
fn verbose_prints_the_walk_before_the_result() {
    let g = guest();
    let dump = raw_dump(&g);
    let root = cr3(&g);
    let plain = run(&[
        "translate",
        dump.path(),
        "--cr3",
        &root,
        "0xffffffff81001234",
        "0x402000",
    ]);
    let out = run(&[
        "translate",
        dump.path(),
        "--cr3",
        &root,
        "-v",
        "0xffffffff81001234",
        "0x402000",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = out.text();
    let results: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(results.join("\n") + "\n", plain.text());
    let walk: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
    // 2 MiB page: header, PML4E, PDPTE, PDE, result; then 4 KiB not present: header,
    // PML4E, PDPTE, PDE, PTE, result.
    assert_eq!(walk.len(), 5 + 6, "{text}");
    assert!(walk[0].contains("4-level paging"), "{text}");
    assert!(walk[1].contains("PML4E[511]"), "{text}");
    assert!(walk[2].contains("PDPTE[510]"), "{text}");
    assert!(
        walk[3].contains("PDE[8]") && walk[3].contains(" PS"),
        "{text}"
    );
    assert!(walk[3].contains(" P "), "{text}");
    assert!(
        walk[4].contains("2M page at 0x200000, r-x supervisor"),
        "{text}"
    );
    assert!(
        walk[9].contains("PTE[2]") && walk[9].ends_with("= 0x0000000000000000  "),
        "{text}"
    );
    assert!(walk[10].contains("not present at level 1"), "{text}");
}

#[test]
fn paging_options_change_the_walk() {
    // A 5-level guest in a raw dump needs --paging 5.
    let mut b = GuestBuilder::with_levels(1 << 20, 5);
    let va = 0x00ff_8000_0000_0000u64; // PML5 index 1
    b.map_new(Va(va), PageSize::Size4K, MapFlags::KERNEL_DATA)
        .unwrap();
    let g5 = b.finish();
    let dump = TempFile::new("l5.bin", &g5.memory);
    let root = cr3(&g5);
    let out = run(&[
        "translate",
        dump.path(),
        "--cr3",
        &root,
        "--paging",
        "5",
        &hex(va + 0x18),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.text(), format!("{}\n", expected_line(&g5, va + 0x18)));
    // Under 4-level paging the same address is not canonical.
    let out = run(&["translate", dump.path(), "--cr3", &root, &hex(va)]);
    assert!(
        out.text().contains("unmapped non-canonical"),
        "{}",
        out.text()
    );

    // NXE off: the XD bit of kernel data is reserved.
    let g = guest();
    let dump = raw_dump(&g);
    let root = cr3(&g);
    let out = run(&[
        "translate",
        dump.path(),
        "--cr3",
        &root,
        "--nxe",
        "0",
        "0xffff888000000000",
    ]);
    assert!(
        out.text().contains("unmapped reserved-bit level=3"),
        "{}",
        out.text()
    );
    let out = run(&[
        "translate",
        dump.path(),
        "--cr3",
        &root,
        "--nxe=1",
        "0xffff888000000000",
    ]);
    assert_eq!(out.text(), "0xffff888000000000 0x0\n");
    // MAXPHYADDR 32: the frame at 4 GiB sets a reserved bit.
    let out = run(&[
        "translate",
        dump.path(),
        "--cr3",
        &root,
        "--maxphyaddr",
        "32",
        &hex(FAR),
    ]);
    assert!(
        out.text().contains("unmapped reserved-bit level=1"),
        "{}",
        out.text()
    );

    // 32-bit paging with a 4 MiB page, which needs CR4.PSE.
    let mut mem = vec![0u8; 0x4000];
    mem[0x1004..0x1008].copy_from_slice(&0x0040_0083u32.to_le_bytes()); // PDE[1]: 4M page at 4M
    let dump32 = TempFile::new("bits32.bin", &mem);
    let out = run(&[
        "translate",
        dump32.path(),
        "--cr3",
        "1000",
        "--paging",
        "32",
        "0x401234",
    ]);
    assert_eq!(out.text(), "0x401234 0x401234\n");
    let out = run(&[
        "translate",
        dump32.path(),
        "--cr3",
        "1000",
        "--paging",
        "32",
        "--pse",
        "0",
        "0x401234",
    ]);
    assert_eq!(
        out.text(),
        "0x401234 unmapped table-outside-memory level=1 entry=0x400004 value=0x0\n"
    );
}

#[test]
fn help_for_every_command() {
    let top = run(&["--help"]);
    assert_eq!(top.code, 0);
    assert!(top.text().contains("Usage: introvisor <COMMAND>"));
    for cmd in ["demo", "info", "translate", "read"] {
        let out = run(&[cmd, "--help"]);
        assert_eq!(out.code, 0, "{cmd}");
        assert!(
            out.text().contains(&format!("Usage: introvisor {cmd}")),
            "{cmd}: {}",
            out.text()
        );
        let same = run(&["help", cmd]);
        assert_eq!(same.stdout, out.stdout);
    }
    let t = run(&["translate", "-h"]).text();
    for reason in [
        "not-present",
        "reserved-bit",
        "table-outside-memory",
        "non-canonical",
    ] {
        assert!(t.contains(reason), "{reason}");
    }
}

#[test]
fn demo_runs_without_input() {
    let out = run(&["demo"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = out.text();
    assert!(text.contains("0x0000000000400ff8 -> 0x"), "{text}");
    for want in [
        " 4K ",
        " 2M ",
        " 1G ",
        "gfn_cache_metrics",
        "v2p_cache_metrics",
        " hits",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    assert!(text.contains("Grüße"), "{text}");
    assert!(
        text.contains("introvisor reads across page boundaries"),
        "{text}"
    );
}

#[test]
fn forced_progress_goes_to_stderr_only() {
    let g = guest();
    let dump = raw_dump(&g);
    let root = cr3(&g);
    let input: String = (0..5000u64)
        .map(|i| format!("{:#x}\n", DIRECT + i * 4096))
        .collect();
    let out = run_with(
        &["translate", dump.path(), "--cr3", &root, "--progress"],
        input.as_bytes(),
    );
    assert_eq!(out.code, 0);
    assert_eq!(out.text().lines().count(), 5000);
    assert!(
        out.stderr.contains("translate: 5000 addresses"),
        "{}",
        out.stderr
    );
    let out = run(&[
        "read",
        dump.path(),
        "--cr3",
        &root,
        &hex(DIRECT),
        "0x100000",
        "--raw",
        "--progress",
    ]);
    assert_eq!(out.code, 0);
    assert_eq!(out.stdout.len(), 0x10_0000);
    assert!(out.stderr.contains("100%"), "{}", out.stderr);
    // Not a terminal, not forced: nothing.
    let out = run(&[
        "read",
        dump.path(),
        "--cr3",
        &root,
        "--paging",
        "4",
        &hex(DIRECT),
        "0x1000",
        "--raw",
    ]);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
}

#[test]
fn paths_are_just_paths() {
    let g = guest();
    let dump = raw_dump(&g);
    let root = cr3(&g);
    // A path given after "--" and a dump whose name starts with '-'.
    let dir = Path::new(dump.path()).parent().unwrap().to_owned();
    let odd = TempFile(dir.join(format!("-introvisor-cli-test-{}", std::process::id())));
    std::fs::copy(dump.path(), &odd.0).unwrap();
    let out = Command::new(BIN)
        .current_dir(&dir)
        .args([
            "translate",
            "--cr3",
            &root,
            "--",
            odd.0.file_name().unwrap().to_str().unwrap(),
            "400000",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        expected_line(&g, USER) + "\n"
    );
}

// ----- issue 13: what an adversarial pass broke ----------------------------------------

/// Runs the tool with no stdin, and kills it if it has not finished after a minute (a
/// guard against a hang, not a timing assertion: a healthy run takes milliseconds).
fn run_guarded(args: &[&str]) -> Option<Output> {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return Some(Output {
                code: out.status.code().unwrap(),
                stdout: out.stdout,
                stderr: String::from_utf8(out.stderr).unwrap(),
            });
        }
        std::thread::sleep(core::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A FIFO, character devices and a directory as the dump: refused at once, exit 2.
#[test]
fn fifos_devices_and_directories_are_refused_at_once() {
    let dir = std::env::temp_dir().join(format!("introvisor-cli-test-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let made = Command::new("mkfifo").arg(&dir).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    let fifo = TempFile(dir);
    let temp = std::env::temp_dir();
    let mut cases = vec![
        (fifo.path().to_owned(), "FIFO"),
        (temp.to_str().unwrap().to_owned(), "directory"),
    ];
    for dev in ["/dev/null", "/dev/zero"] {
        if Path::new(dev).exists() {
            cases.push((dev.to_owned(), "character device"));
        }
    }
    for (path, kind) in &cases {
        for args in [
            vec!["info", path.as_str()],
            vec!["translate", path.as_str(), "--cr3", "0", "0"],
            vec!["read", path.as_str(), "--cr3", "0", "0", "8"],
        ] {
            let out = run_guarded(&args).unwrap_or_else(|| panic!("{args:?} hangs"));
            assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
            assert!(out.stdout.is_empty(), "{args:?}");
            assert!(
                out.stderr.contains(kind) && out.stderr.contains("not a regular file"),
                "{args:?}: {}",
                out.stderr
            );
        }
    }
}

/// A line of a megabyte without a newline on `translate`'s stdin: an error naming the
/// line and its length, not an echo of it; the lines after it are answered.
#[test]
fn overlong_stdin_lines_are_refused_not_buffered_or_echoed() {
    let g = guest();
    let dump = raw_dump(&g);
    let root = cr3(&g);
    let mut input = vec![b'4'; 1 << 20];
    input.extend_from_slice(b"\n0x400000\n");
    input.extend(core::iter::repeat_n(b'a', 5000));
    let out = run_with(&["translate", dump.path(), "--cr3", &root], &input);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(out.text(), format!("{}\n", expected_line(&g, USER)));
    assert!(out.stderr.contains("line 1"), "{}", out.stderr);
    assert!(out.stderr.contains("1048576 bytes"), "{}", out.stderr);
    assert!(out.stderr.contains("line 3"), "{}", out.stderr);
    assert!(out.stderr.contains("5000 bytes"), "{}", out.stderr);
    assert!(
        out.stderr.len() < 2000,
        "{} bytes on stderr",
        out.stderr.len()
    );
}

/// Bytes from a file or stdin are escaped before they reach the terminal, and long ones
/// are cut.
#[test]
fn hostile_bytes_are_escaped_and_cut() {
    // A note name with an escape sequence, a BEL and a byte that is not UTF-8; and a
    // name of 100 000 bytes.
    let g = guest();
    let mut bytes = Vec::new();
    write_qemu_elf(
        &mut bytes,
        &[Run {
            paddr: 0,
            bytes: &g.memory[..0x1000],
        }],
        &[],
    )
    .unwrap();
    // Replace the (empty) note segment with two hostile notes at the end of the file.
    let note = |name: &[u8]| {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
        n.extend_from_slice(&4u32.to_le_bytes());
        n.extend_from_slice(&7u32.to_le_bytes());
        n.extend_from_slice(name);
        n.push(0);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend_from_slice(&[0; 4]);
        n
    };
    let mut notes = note(b"\x1b]0;owned\x07\x1b[31mRED\xff");
    notes.extend(note(&vec![b'N'; 100_000]));
    let at = bytes.len() as u64;
    bytes[64 + 8..64 + 16].copy_from_slice(&at.to_le_bytes());
    bytes[64 + 32..64 + 40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&notes);
    let elf = TempFile::new("hostile.elf", &bytes);
    let out = run(&["info", elf.path()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.stdout.contains(&0x1b), "{text}");
    assert!(!out.stdout.contains(&0x07), "{text}");
    assert!(text.contains(r"\x1b]0;owned\x07\x1b[31mRED\xff"), "{text}");
    assert!(text.contains("… (100000 bytes)"), "{text}");
    assert!(
        out.stdout.len() < 4000,
        "{} bytes of output",
        out.stdout.len()
    );

    // A malformed stdin line with escape sequences.
    let dump = raw_dump(&g);
    let root = cr3(&g);
    let out = run_with(
        &["translate", dump.path(), "--cr3", &root],
        b"\x1b]0;owned\x07\xfe\n",
    );
    assert_eq!(out.code, 2);
    assert!(!out.stderr.contains('\x1b'), "{}", out.stderr);
    assert!(
        out.stderr.contains(r"\x1b]0;owned\x07\xfe"),
        "{}",
        out.stderr
    );
}

/// A raw dump has no registers: the paging mode the tool assumes is said aloud.
#[test]
fn the_assumed_paging_mode_is_said() {
    let g = guest();
    let dump = raw_dump(&g);
    let root = cr3(&g);
    let out = run(&["translate", dump.path(), "--cr3", &root, "0x400000"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("assuming 4-level paging") && out.stderr.contains("--paging 5"),
        "{}",
        out.stderr
    );
    let out = run(&["read", dump.path(), "--cr3", &root, "0x400000", "4"]);
    assert!(
        out.stderr.contains("assuming 4-level paging"),
        "{}",
        out.stderr
    );
    // Said nothing when the mode was given, or came from a vCPU.
    let out = run(&[
        "translate",
        dump.path(),
        "--cr3",
        &root,
        "--paging",
        "4",
        "0x400000",
    ]);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    let elf = elf_dump(&g);
    let out = run(&["translate", elf.path(), "0x400000"]);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
}

/// `read` names LEN in hexadecimal, as it was given.
#[test]
fn read_errors_give_len_in_hex() {
    let g = guest();
    let dump = raw_dump(&g);
    let root = cr3(&g);
    let out = run(&["read", dump.path(), "--cr3", &root, "0x400800", "0x2000"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("cannot read 0x2000 bytes at 0x400800"),
        "{}",
        out.stderr
    );
}

/// A write error on stdout (a full disk, a closed pipe) has its own exit status, 3,
/// which the help names.
#[test]
fn output_errors_exit_3() {
    let g = guest();
    let dump = raw_dump(&g);
    let root = cr3(&g);
    if let Ok(full) = std::fs::File::create("/dev/full") {
        let out = Command::new(BIN)
            .args(["read", dump.path(), "--cr3", &root, "0x400000", "0x100"])
            .stdout(full)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot write the output"), "{err}");
    }
    // A reader that goes away: 8 MiB of hex dump cannot fit in a pipe's buffer.
    let mut child = Command::new(BIN)
        .args([
            "read",
            dump.path(),
            "--cr3",
            &root,
            &hex(DIRECT),
            "0x800000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    for text in [run(&["--help"]).text(), run(&["read", "--help"]).text()] {
        assert!(text.contains("3 the output could not be written"), "{text}");
    }
}

/// The guest as a LiME image: RAM in two ranges around a hole at [0xa0000, 0x100000)
/// (the legacy VGA/BIOS hole), the upper range first.
fn lime_dump(g: &Guest) -> TempFile {
    let (low, high) = (0xa_0000usize, 0x10_0000usize);
    assert!(
        g.memory[low..high].iter().all(|&b| b == 0),
        "hole not empty"
    );
    let mut bytes = Vec::new();
    write_lime(
        &mut bytes,
        &[
            Run {
                paddr: high as u64,
                bytes: &g.memory[high..],
            },
            Run {
                paddr: 0,
                bytes: &g.memory[..low],
            },
        ],
    )
    .unwrap();
    TempFile::new("dump.lime", &bytes)
}

#[test]
fn a_lime_image_translates_and_reads_like_the_raw_dump_it_holds() {
    let g = guest();
    let raw = raw_dump(&g);
    let lime = lime_dump(&g);
    let root = cr3(&g);
    let vas: Vec<String> = [
        USER,
        USER + 0xff0,
        USER + 0x2000,
        KTEXT + 0x1234,
        DIRECT + 0x40_0000,
        FAR,
        0x8000_0000_0000,
    ]
    .iter()
    .map(|&v| hex(v))
    .collect();
    let mut args = vec!["translate", "", "--cr3", &root];
    args.extend(vas.iter().map(String::as_str));
    args[1] = raw.path();
    let from_raw = run(&args);
    args[1] = lime.path();
    let from_lime = run(&args);
    assert_eq!(from_raw.code, 0, "{}", from_raw.stderr);
    assert_eq!(from_lime.code, 0, "{}", from_lime.stderr);
    assert_eq!(from_lime.text(), from_raw.text());
    assert!(
        from_lime
            .text()
            .contains(&expected_line(&g, KTEXT + 0x1234))
    );

    let read = |path: &str, va: u64| run(&["read", path, "--cr3", &root, &hex(va), "40", "--raw"]);
    let (a, b) = (
        read(raw.path(), USER + 0xff0),
        read(lime.path(), USER + 0xff0),
    );
    assert_eq!((a.code, b.code), (0, 0), "{}", b.stderr);
    assert_eq!(b.stdout, a.stdout);
    assert!(b.stdout.starts_with(b"a string that crosses"));
    // Through the direct map into the hole: the raw image holds zeros there, LiME nothing.
    let hole = DIRECT + 0xb_8000;
    assert_eq!(read(raw.path(), hole).code, 0);
    let out = read(lime.path(), hole);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("which the dump does not hold"),
        "{}",
        out.stderr
    );

    let out = run(&["info", lime.path()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = out.text();
    assert!(text.contains("format:  LiME image, 2 range(s)\n"), "{text}");
    assert!(text.contains("in 2 range(s)"), "{text}");
    assert!(
        text.contains("0x0000000000000000-0x000000000009ffff"),
        "{text}"
    );
    assert!(
        text.contains("0x0000000000100000-0x00000000007fffff"),
        "{text}"
    );
}

#[test]
fn compressed_and_malformed_files_exit_2_naming_what_they_are() {
    for (magic, name) in [
        (&[0x28u8, 0xb5, 0x2f, 0xfd][..], "zstd"),
        (&[0x1f, 0x8b, 0x08, 0][..], "gzip"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0][..], "xz"),
        (&[0x04, 0x22, 0x4d, 0x18][..], "LZ4 frame"),
    ] {
        let mut bytes = magic.to_vec();
        bytes.resize(4096, 0x42);
        let file = TempFile::new("compressed", &bytes);
        for args in [
            vec!["info", file.path()],
            vec!["translate", file.path(), "--cr3", "0", "0x1000"],
            vec!["read", file.path(), "--cr3", "0", "0", "10"],
        ] {
            let out = run(&args);
            assert_eq!(out.code, 2, "{name} {args:?}");
            assert!(out.stdout.is_empty());
            assert!(
                out.stderr
                    .contains(&format!("compressed ({name}): decompress it first")),
                "{}",
                out.stderr
            );
        }
        // --format raw reads it anyway, and info says so.
        let out = run(&["info", file.path(), "--format", "raw"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let text = out.text();
        assert!(
            text.contains("format:  raw (as --format raw asked)\n"),
            "{text}"
        );
        assert!(text.contains("warning: read as raw as asked"), "{text}");
    }
    // A LiME image whose second range ends before it starts.
    let mut bad = Vec::new();
    write_lime(
        &mut bad,
        &[Run {
            paddr: 0x1000,
            bytes: &[1; 16],
        }],
    )
    .unwrap();
    let mut header = bad[..32].to_vec();
    header[8..16].copy_from_slice(&0x9000u64.to_le_bytes());
    bad.extend(header);
    let file = TempFile::new("bad.lime", &bad);
    let out = run(&["info", file.path()]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("LiME range 1: ends at 0x100f, before its start 0x9000"),
        "{}",
        out.stderr
    );
}

#[test]
fn format_forces_a_reading() {
    let g = guest();
    let lime = lime_dump(&g);
    let root = cr3(&g);
    // A raw image that starts with the ELF magic: by content it is a broken ELF file;
    // forced, it is raw, and translates. (The PML4 is at 0: the magic overwrites the
    // low half of PML4[0], the user half; the kernel text walks through PML4[511].)
    assert_eq!(g.root.0, 0);
    let mut memory = g.memory.clone();
    memory[..4].copy_from_slice(b"\x7fELF");
    let elfish = TempFile::new("elfish.raw", &memory);
    let va = hex(KTEXT + 0x1234);
    let out = run(&["translate", elfish.path(), "--cr3", &root, &va]);
    assert_eq!(out.code, 2, "{}", out.stdout.len());
    let out = run(&[
        "translate",
        elfish.path(),
        "--format",
        "raw",
        "--cr3",
        &root,
        &va,
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.text(),
        format!("{}\n", expected_line(&g, KTEXT + 0x1234))
    );
    let out = run(&["info", elfish.path(), "--format=raw"]);
    assert!(
        out.text().contains("starts like an ELF file"),
        "{}",
        out.text()
    );
    // The same for a Windows crash dump's magic, which is refused by content.
    memory[..8].copy_from_slice(b"PAGEDU64");
    let crashish = TempFile::new("crashish.raw", &memory);
    let out = run(&["translate", crashish.path(), "--cr3", &root, &va]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("Windows crash"), "{}", out.stderr);
    let out = run(&[
        "translate",
        crashish.path(),
        "--cr3",
        &root,
        &va,
        "--format",
        "raw",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.text(),
        format!("{}\n", expected_line(&g, KTEXT + 0x1234))
    );
    // --format elf on a LiME image: the ELF error; --format lime: read as LiME.
    let out = run(&["info", lime.path(), "--format", "elf"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("not an ELF file"), "{}", out.stderr);
    let out = run(&["info", lime.path(), "--format", "LIME"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.text()
            .contains("format:  LiME image, 2 range(s) (as --format asked)"),
        "{}",
        out.text()
    );
    let out = run(&["info", lime.path(), "--format", "vmdk"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("unknown format 'vmdk'"),
        "{}",
        out.stderr
    );
}

fn json_of(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn hex_of(v: &serde_json::Value) -> u64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    u64::from_str_radix(s.strip_prefix("0x").unwrap(), 16).unwrap()
}

/// A minimal ELF64 core: one `PT_NOTE` with a note of the given name bytes, one
/// `PT_LOAD` of 4 KiB at guest-physical 0.
fn elf_with_note(name: &[u8]) -> Vec<u8> {
    let mut note = Vec::new();
    note.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
    note.extend_from_slice(&8u32.to_le_bytes()); // descsz
    note.extend_from_slice(&0x1234u32.to_le_bytes()); // n_type
    note.extend_from_slice(name);
    note.push(0);
    note.resize(note.len().next_multiple_of(4), 0);
    note.extend_from_slice(&[0xaa; 8]);
    let notes_at = 64 + 2 * 56;
    let load_at = (notes_at + note.len()).next_multiple_of(4096);
    let mut out = Vec::new();
    out.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    out.extend_from_slice(&4u16.to_le_bytes()); // ET_CORE
    out.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    out.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for v in [64u16, 56, 2, 0, 0, 0] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let phdr = |out: &mut Vec<u8>, kind: u32, offset: usize, size: usize| {
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for v in [offset as u64, 0, 0, size as u64, size as u64, 0] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    };
    phdr(&mut out, 4, notes_at, note.len()); // PT_NOTE
    phdr(&mut out, 1, load_at, 4096); // PT_LOAD
    out.extend_from_slice(&note);
    out.resize(load_at, 0);
    out.extend((0..4096u32).map(|i| i as u8));
    out
}

#[test]
fn info_json_describes_elf_lime_and_raw_dumps() {
    let g = guest();
    let elf = elf_dump(&g);
    let out = run(&["info", elf.path(), "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = out.text();
    assert_eq!(text.lines().count(), 1, "{text}");
    let v = json_of(&text);
    assert_eq!(v["format"], "elf");
    assert_eq!(v["forced"], false);
    assert_eq!(v["elf"]["class"], "ELF64");
    assert_eq!(v["elf"]["machine"], "x86-64");
    assert_eq!(v["file"], elf.path());
    assert_eq!(v["memory_size"], g.memory.len() as u64);
    assert_eq!(v["ranges"].as_array().unwrap().len(), 1);
    assert_eq!(hex_of(&v["ranges"][0]["start"]), 0);
    assert_eq!(hex_of(&v["ranges"][0]["end"]), g.memory.len() as u64 - 1);
    let vcpus = v["vcpus"].as_array().unwrap();
    assert_eq!(vcpus.len(), 2);
    assert_eq!(hex_of(&vcpus[0]["cr3"]), g.root.0);
    assert_eq!(hex_of(&vcpus[1]["cr3"]), g.root.0 | 0x8000_0000_0000_0005);
    assert_eq!(vcpus[0]["paging"], "4");
    assert_eq!(vcpus[0]["source"], "qemu-cpu-state");
    assert_eq!(vcpus[0]["cpl"], 3);
    assert_eq!(hex_of(&vcpus[0]["efer"]), 0xd00);

    let lime = lime_dump(&g);
    let v = json_of(&run(&["info", lime.path(), "--json"]).text());
    assert_eq!(v["format"], "lime");
    assert_eq!(v["description"], "LiME image, 2 range(s)");
    assert_eq!(v["elf"], serde_json::Value::Null);
    let starts: Vec<u64> = v["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| hex_of(&r["start"]))
        .collect();
    assert_eq!(starts, [0, 0x10_0000]);
    assert_eq!(v["memory_size"], g.memory.len() as u64 - 0x6_0000);
    assert_eq!(v["vcpus"].as_array().unwrap().len(), 0);

    let raw = raw_dump(&g);
    let v = json_of(&run(&["info", raw.path(), "--json", "--format", "raw"]).text());
    assert_eq!(v["format"], "raw");
    assert_eq!(v["forced"], true);
    assert_eq!(v["file_size"], g.memory.len() as u64);
}

#[test]
fn info_json_escapes_control_characters_and_non_utf8_note_names() {
    let name = b"\x1b]0;pwned\x07\x1b[2J\"quoted\"\\ \xff\xfe\x7f\xc2\x85end";
    let file = TempFile::new("hostile-note.elf", &elf_with_note(name));
    let out = run(&["info", file.path(), "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Nothing a terminal would act on reaches stdout: every control is an escape.
    for (i, &b) in out.stdout.iter().enumerate() {
        assert!(b >= 0x20 && b != 0x7f || b == b'\n', "byte {b:#x} at {i}");
    }
    assert!(!out.text().contains('\u{85}'));
    let v = json_of(&out.text());
    let notes = v["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 1);
    assert_eq!(
        notes[0]["name"],
        "\u{1b}]0;pwned\u{7}\u{1b}[2J\"quoted\"\\ \u{fffd}\u{fffd}\u{7f}\u{85}end"
    );
    let mut name_hex = String::new();
    for b in name {
        name_hex.push_str(&format!("{b:02x}"));
    }
    assert_eq!(notes[0]["name_hex"], name_hex.as_str());
    assert_eq!(notes[0]["name_len"], name.len());
    assert_eq!(notes[0]["type"], 0x1234);
    assert_eq!(notes[0]["size"], 8);
}

/// The plain line of `translate` for the JSON object of the same address.
fn plain_from_json(v: &serde_json::Value) -> String {
    let va = hex_of(&v["va"]);
    if v["mapped"] == true {
        return format!("{va:#x} {:#x}", hex_of(&v["pa"]));
    }
    assert_eq!(v["error"], "page-fault", "{v}");
    format!(
        "{va:#x} unmapped {} level={} entry={:#x} value={:#x}",
        v["reason"].as_str().unwrap(),
        v["level"],
        hex_of(&v["entry"]),
        hex_of(&v["value"])
    )
}

#[test]
fn translate_json_gives_one_object_per_address_with_the_fault_fields() {
    let g = guest();
    let dump = raw_dump(&g);
    let root = cr3(&g);
    let vas = [
        USER + 0xff0,
        USER + 0x1008,
        USER + 0x2000,
        KTEXT + 0x1234,
        DIRECT + 0x7f_fff8,
        FAR + 0x10,
        0x8000_0000_0000,
        USER,
    ];
    let va_args: Vec<String> = vas.iter().map(|&v| hex(v)).collect();
    let mut args = vec!["translate", dump.path(), "--cr3", &root];
    args.extend(va_args.iter().map(String::as_str));
    let plain = run(&args);
    args.push("--json");
    let out = run(&args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let objects: Vec<serde_json::Value> = out.text().lines().map(json_of).collect();
    assert_eq!(objects.len(), vas.len());
    // Field by field, the JSON says what the plain line says.
    let from_json: Vec<String> = objects.iter().map(plain_from_json).collect();
    assert_eq!(from_json.join("\n") + "\n", plain.text());
    for (v, &va) in objects.iter().zip(&vas) {
        assert_eq!(hex_of(&v["va"]), va);
    }
    // Mapped: the builder's answer, with the page size and rights.
    assert_eq!(
        hex_of(&objects[0]["pa"]),
        g.lookup(Va(USER + 0xff0)).unwrap().0
    );
    assert_eq!(objects[0]["page_size"], 4096);
    assert_eq!(objects[0]["user"], true);
    assert_eq!(objects[3]["page_size"], 0x20_0000);
    assert_eq!(objects[3]["user"], false);
    assert_eq!(objects[4]["page_size"], 0x4000_0000);
    // Faults: the reason, the level and the entry.
    let unmapped = &objects[2];
    assert_eq!(unmapped["mapped"], false);
    assert_eq!(unmapped["reason"], "not-present");
    assert_eq!(unmapped["level"], 1);
    assert_eq!(hex_of(&unmapped["value"]), 0);
    assert_eq!(objects[6]["reason"], "non-canonical");
    // FAR maps a frame above 4 GiB: the walk itself succeeds.
    assert_eq!(hex_of(&objects[5]["pa"]), 0x1_0000_0010);

    // --verbose adds the walk, entry by entry, ending at the leaf.
    let out = run(&[
        "translate",
        dump.path(),
        "--cr3",
        &root,
        "--json",
        "-v",
        &hex(KTEXT + 0x1234),
    ]);
    let v = json_of(out.text().trim_end());
    let walk = v["walk"].as_array().unwrap();
    let levels: Vec<u64> = walk.iter().map(|s| s["level"].as_u64().unwrap()).collect();
    assert_eq!(levels, [4, 3, 2]);
    assert_eq!(walk[0]["name"], "PML4E");
    assert_eq!(walk[0]["index"], 511);
    assert_eq!(hex_of(&walk[0]["entry"]), g.root.0 + 511 * 8);
    assert!(walk[2]["flags"].as_str().unwrap().contains("PS"), "{v}");
    assert_eq!(
        hex_of(&v["pa"]),
        hex_of(&walk[2]["value"]) & 0x000f_ffff_ffe0_0000 | 0x1234
    );

    // From stdin: objects for the good lines only; a malformed one goes to stderr, exit 2.
    let out = run_with(
        &["translate", dump.path(), "--cr3", &root, "--json"],
        format!(
            "{:#x}\nnot-a-number\n# comment\n{:#x}\n",
            USER,
            USER + 0x2000
        )
        .as_bytes(),
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    let lines: Vec<serde_json::Value> = out.text().lines().map(json_of).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["mapped"], true);
    assert_eq!(lines[1]["mapped"], false);
    assert!(
        out.stderr.contains("line 2: malformed VA"),
        "{}",
        out.stderr
    );
}

/// Decodes padded base64 (RFC 4648 §4).
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    assert_eq!(text.len() % 4, 0, "{text}");
    let mut out = Vec::new();
    for quad in text.as_bytes().chunks(4) {
        let mut v = 0u32;
        let mut pad = 0;
        for &c in quad {
            v <<= 6;
            if c == b'=' {
                pad += 1;
            } else {
                v |= ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
            }
        }
        out.extend_from_slice(&v.to_be_bytes()[1..4 - pad]);
    }
    out
}

fn hex_decode(text: &str) -> Vec<u8> {
    assert_eq!(text.len() % 2, 0);
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn read_json_in_hex_and_base64_holds_exactly_the_bytes() {
    let g = guest();
    let dump = raw_dump(&g);
    let root = cr3(&g);
    // Across the user page boundary, and a large read of kernel text (several chunks,
    // with a length that is not a multiple of 3).
    for (va, len) in [(USER + 0xff0, 0x26u64), (KTEXT + 0x11, 0x3_0001)] {
        let expected: Vec<u8> = {
            let raw = run(&[
                "read",
                dump.path(),
                "--cr3",
                &root,
                &hex(va),
                &hex(len),
                "--raw",
            ]);
            assert_eq!(raw.code, 0, "{}", raw.stderr);
            raw.stdout
        };
        assert_eq!(expected.len() as u64, len);
        let out = run(&[
            "read",
            dump.path(),
            "--cr3",
            &root,
            &hex(va),
            &hex(len),
            "--json",
        ]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(out.text().lines().count(), 1);
        let v = json_of(&out.text());
        assert_eq!(hex_of(&v["va"]), va);
        assert_eq!(v["len"], len);
        assert_eq!(v["encoding"], "hex");
        assert_eq!(hex_decode(v["data"].as_str().unwrap()), expected);
        let out = run(&[
            "read",
            dump.path(),
            "--cr3",
            &root,
            &hex(va),
            &hex(len),
            "--json",
            "--base64",
        ]);
        let v = json_of(&out.text());
        assert_eq!(v["encoding"], "base64");
        assert_eq!(base64_decode(v["data"].as_str().unwrap()), expected);
    }
    // An unmapped range: nothing on stdout, exit 1, as without --json.
    let out = run(&[
        "read",
        dump.path(),
        "--cr3",
        &root,
        &hex(USER + 0x1ff0),
        "20",
        "--json",
    ]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.is_empty());
    // Options that do not go together.
    for extra in [
        &["--json", "--raw"][..],
        &["--base64"][..],
        &["--base64", "--raw"][..],
    ] {
        let mut args = vec!["read", dump.path(), "--cr3", &root, "0x400000", "10"];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert_eq!(out.code, 2, "{extra:?}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn read_physical_reads_without_translation() {
    let g = guest();
    let dump = raw_dump(&g);
    let user_pa = g.lookup(Va(USER + 0xff0)).unwrap().0;
    // The string at its physical address, no --cr3 needed.
    let out = run(&[
        "read",
        dump.path(),
        "--physical",
        &hex(user_pa),
        "10",
        "--raw",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        &g.memory[user_pa as usize..user_pa as usize + 0x10]
    );
    // The page tables themselves, which no virtual address maps here.
    let out = run(&[
        "read",
        dump.path(),
        "--physical",
        &hex(g.root.0),
        "1000",
        "--raw",
    ]);
    assert_eq!(
        out.stdout,
        &g.memory[g.root.0 as usize..g.root.0 as usize + 0x1000]
    );
    // A hex dump addressed by PA, and JSON keyed "pa".
    let out = run(&["read", dump.path(), "--physical", "0x7ffff0", "10"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.text().starts_with("00000000007ffff0: "),
        "{}",
        out.text()
    );
    let v = json_of(&run(&["read", dump.path(), "--physical", "7ffff0", "10", "--json"]).text());
    assert_eq!(hex_of(&v["pa"]), 0x7f_fff0);
    assert!(v.get("va").is_none());
    assert_eq!(
        hex_decode(v["data"].as_str().unwrap()),
        &g.memory[0x7f_fff0..0x80_0000]
    );
    // Past the end of memory: exit 1, naming the first missing byte.
    let out = run(&["read", dump.path(), "--physical", "0x7ffff8", "10"]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains("physical 0x800000 is not in the dump"),
        "{}",
        out.stderr
    );
    // In a LiME image's hole: not in the dump either.
    let lime = lime_dump(&g);
    let out = run(&["read", lime.path(), "--physical", "0xb8000", "2"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let out = run(&["read", lime.path(), "--physical", "0x9fff0", "10", "--raw"]);
    assert_eq!(out.stdout, &g.memory[0x9_fff0..0xa_0000]);
    // The paging options do not apply.
    for opt in [
        &["--cr3", "0"][..],
        &["--paging", "4"][..],
        &["--vcpu", "0"][..],
    ] {
        let mut args = vec!["read", dump.path(), "--physical", "0", "10"];
        args.extend_from_slice(opt);
        let out = run(&args);
        assert_eq!(out.code, 2, "{opt:?}");
        assert!(
            out.stderr.contains("does not apply to --physical"),
            "{}",
            out.stderr
        );
    }
}

/// A segment that ends exactly at 2^64: `info` shows its last address, in both outputs.
#[test]
fn info_shows_a_range_that_ends_at_the_top_of_the_address_space() {
    let mem = vec![0x5au8; 0x2000];
    let mut bytes = Vec::new();
    write_qemu_elf(
        &mut bytes,
        &[
            Run {
                paddr: 0,
                bytes: &mem[..0x1000],
            },
            Run {
                paddr: 0u64.wrapping_sub(0x1000),
                bytes: &mem[0x1000..],
            },
        ],
        &[],
    )
    .unwrap();
    let elf = TempFile::new("top.elf", &bytes);
    let out = run(&["info", elf.path()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.text().contains("0xfffffffffffff000-0xffffffffffffffff"),
        "{}",
        out.text()
    );
    let out = run(&["info", elf.path(), "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = json_of(out.text().trim());
    let top = &v["ranges"][1];
    assert_eq!(hex_of(&top["start"]), 0xffff_ffff_ffff_f000);
    assert_eq!(hex_of(&top["end"]), u64::MAX);
    assert_eq!(top["len"], 0x1000);
}
