//! The dump reader: ELF core files written the way QEMU writes them, read back; and
//! crafted, truncated and corrupt files, each of which must give a clear error.

use std::path::PathBuf;

use introvisor::arch::amd64::{PagingMode, Registers, Segment};
use introvisor::{AccessContext, Pa, Va, VcpuId, VmiCore, VmiDriver, VmiError};
use introvisor_host::HostDriver;
use introvisor_host::builder::{GuestBuilder, MapFlags, PageSize};
use introvisor_host::dump::elf::{self, ElfError, Machine, RegisterSource};
use introvisor_host::dump::write::{Run, write_qemu_elf};
use introvisor_host::dump::{DumpError, DumpFormat, ElfClass};

/// A file in the temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, bytes: &[u8]) -> Self {
        use core::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "introvisor-dump-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The registers of a 64-bit vCPU at CPL 3 with paging rooted at `cr3`.
fn long_mode_registers(cr3: u64, la57: bool) -> Registers {
    let code64 = Segment {
        selector: 0x33,
        base: 0,
        limit: 0xffff_ffff,
        access: 0xa0fb, // G, L, P, DPL 3, S, type 0xb
    };
    let data = Segment {
        selector: 0x2b,
        base: 0,
        limit: 0xffff_ffff,
        access: 0xc0f3,
    };
    Registers {
        rax: 0x1111,
        rbx: 0x2222,
        r15: 0xf15,
        rip: 0x40_1000,
        rsp: 0x7fff_0000,
        rflags: 0x202,
        cr0: 0x8005_0033,
        cr2: 0xdead_b000,
        cr3,
        cr4: 0x0000_06a0 | if la57 { 1 << 12 } else { 0 },
        efer: 0xd00, // NXE, LMA, LME: what the reader derives
        cs: code64,
        ss: data,
        ds: data,
        es: data,
        fs: Segment {
            base: 0x7f00_0000_1000,
            ..data
        },
        gs: data,
        tr: Segment {
            selector: 0x40,
            base: 0xffff_fe00_0000_3000,
            limit: 0x4087,
            access: 0x8b,
        },
        ldtr: Segment {
            access: 1 << 16,
            ..Segment::default()
        },
        gdtr: introvisor::arch::amd64::DescriptorTable {
            base: 0xffff_fe00_0000_1000,
            limit: 0x7f,
        },
        idtr: introvisor::arch::amd64::DescriptorTable {
            base: 0xffff_fe00_0000_0000,
            limit: 0xfff,
        },
        fs_base: 0x7f00_0000_1000,
        kernel_gs_base: 0xffff_8880_0fc0_0000,
        ..Registers::default()
    }
}

/// A small 4-level guest, its root, and two mapped addresses with their data.
fn guest() -> (Vec<u8>, Pa) {
    let mut g = GuestBuilder::new(1 << 20);
    g.map_new(Va(0x40_0000), PageSize::Size4K, MapFlags::USER_DATA)
        .unwrap();
    g.map_new(Va(0x40_1000), PageSize::Size4K, MapFlags::USER_DATA)
        .unwrap();
    g.write_virtual(Va(0x40_0ffa), b"across pages\0").unwrap();
    let g = g.finish();
    (g.memory, g.root)
}

fn elf_of(runs: &[Run<'_>], vcpus: &[Registers]) -> Vec<u8> {
    let mut out = Vec::new();
    let n = write_qemu_elf(&mut out, runs, vcpus).unwrap();
    assert_eq!(n, out.len() as u64);
    out
}

#[test]
fn qemu_style_elf_round_trips_memory_and_registers() {
    let (mem, root) = guest();
    let half = mem.len() / 2;
    let regs = [
        long_mode_registers(root.0, false),
        long_mode_registers(root.0 | 0x8000_0000_0000_0001, false),
    ];
    // Two runs of RAM, the second one at a different guest-physical address than its
    // place in `mem` would suggest: 0x8000_0000 (a hole in between).
    let runs = [
        Run {
            paddr: 0,
            bytes: &mem[..half],
        },
        Run {
            paddr: 0x8000_0000,
            bytes: &mem[half..],
        },
    ];
    let bytes = elf_of(&runs, &regs);
    let file = TempFile::new("roundtrip.elf", &bytes);
    let (driver, info) = HostDriver::open_dump(&file.0).unwrap();

    assert_eq!(
        info.format,
        DumpFormat::Elf {
            class: ElfClass::Elf64,
            machine: Machine::X86_64
        }
    );
    assert_eq!(info.file_size, bytes.len() as u64);
    assert_eq!(info.ranges.len(), 2);
    assert_eq!(info.ranges[0].start, Pa(0));
    assert_eq!(info.ranges[0].len, half as u64);
    assert_eq!(info.ranges[1].start, Pa(0x8000_0000));
    assert_eq!(info.vcpus.len(), 2);
    assert!(info.warnings.is_empty(), "{:?}", info.warnings);
    for (i, want) in regs.iter().enumerate() {
        let got = driver.registers(VcpuId(i as u16)).unwrap();
        assert_eq!(&got, want, "vCPU {i}");
        assert_eq!(info.vcpus[i].pid, Some(i as u32 + 1));
        assert_eq!(
            info.vcpus[i].source,
            RegisterSource::QemuCpuState {
                version: 1,
                size: 440
            }
        );
    }
    assert_eq!(driver.registers(VcpuId(2)), Err(VmiError::NotFound));
    assert_eq!(regs[0].paging_mode(), PagingMode::Level4);

    // The memory: the low half is where it was; the high half moved to 0x8000_0000.
    let mut b = [0u8; 8];
    driver.read_physical(Pa(0x10), &mut b).unwrap();
    assert_eq!(b, mem[0x10..0x18]);
    driver
        .read_physical(Pa(0x8000_0000 + 0x20), &mut b)
        .unwrap();
    assert_eq!(&b[..], &mem[half + 0x20..half + 0x28]);
    assert_eq!(
        driver.read_physical(Pa(half as u64), &mut b),
        Err(VmiError::OutOfBounds(Pa(half as u64)))
    );
    assert_eq!(
        driver.read_page(introvisor::Gfn(0x7ffff)).err(),
        Some(VmiError::GfnNotPresent(introvisor::Gfn(0x7ffff)))
    );
}

#[test]
fn page_tables_in_an_elf_dump_translate() {
    let (mem, root) = guest();
    let regs = long_mode_registers(root.0, false);
    let bytes = elf_of(
        &[Run {
            paddr: 0,
            bytes: &mem,
        }],
        &[regs],
    );
    let file = TempFile::new("walk.elf", &bytes);
    let (driver, _) = HostDriver::open_dump(&file.0).unwrap();
    let r = driver.registers(VcpuId(0)).unwrap();
    let core = VmiCore::new(driver).with_paging(r.paging());
    let mut buf = [0u8; 32];
    let s = core
        .read_string_into(
            AccessContext::paging(Va(0x40_0ffa), r.translation_root()),
            &mut buf,
        )
        .unwrap();
    assert_eq!(s, "across pages");
    let pf = core
        .translate(Va(0x40_2000), r.translation_root())
        .unwrap_err();
    assert!(pf.page_fault().is_some(), "{pf:?}");
}

#[test]
fn raw_files_are_raw_and_foreign_formats_are_refused() {
    let (mem, _) = guest();
    let file = TempFile::new("raw.bin", &mem);
    let (driver, info) = HostDriver::open_dump(&file.0).unwrap();
    assert_eq!(info.format, DumpFormat::Raw);
    assert!(info.vcpus.is_empty());
    assert_eq!(info.ranges.len(), 1);
    assert_eq!(info.ranges[0].len, mem.len() as u64);
    assert_eq!(driver.registers(VcpuId(0)), Err(VmiError::NotFound));

    let kdump = TempFile::new("kdump", b"KDUMP   \x06\0\0\0rest");
    assert!(matches!(
        HostDriver::open_dump(&kdump.0),
        Err(DumpError::Unsupported { .. })
    ));

    let missing = std::env::temp_dir().join("introvisor-dump-test-does-not-exist");
    let Err(err) = HostDriver::open_dump(&missing) else {
        panic!("opened")
    };
    assert!(matches!(err, DumpError::Io { .. }), "{err}");
    assert!(err.to_string().contains("does-not-exist"));

    let bad = TempFile::new("bad.elf", b"\x7fELF\x09");
    let Err(err) = HostDriver::open_dump(&bad.0) else {
        panic!("opened")
    };
    assert!(matches!(err, DumpError::Elf { .. }), "{err}");
}

// ----- crafted and corrupt files -------------------------------------------------------

/// A valid dump: one vCPU, one 8 KiB run at 0x1000.
fn valid() -> Vec<u8> {
    let mem = vec![0x5au8; 0x2000];
    elf_of(
        &[Run {
            paddr: 0x1000,
            bytes: &mem,
        }],
        &[long_mode_registers(0x1000, false)],
    )
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

// Offsets in the writer's ELF64 layout.
const PHOFF: usize = 64;
const PHENT: usize = 56;
const NOTE_PH: usize = PHOFF; // program header 0: PT_NOTE
const LOAD_PH: usize = PHOFF + PHENT; // program header 1: PT_LOAD
const NOTES: usize = PHOFF + 2 * PHENT; // the first note header
const QEMU_NOTE: usize = NOTES + 12 + 8 + 336; // after the CORE note (5-byte name padded)

fn parse(b: &[u8]) -> Result<elf::ElfCore, ElfError> {
    elf::parse(b)
}

#[test]
fn the_crafted_valid_file_parses() {
    let core = parse(&valid()).unwrap();
    assert_eq!(core.loads.len(), 1);
    assert_eq!(core.loads[0].paddr, 0x1000);
    assert_eq!(core.vcpus.len(), 1);
    assert_eq!(core.vcpus[0].registers.cr3, 0x1000);
    // The offsets below are right.
    let b = valid();
    assert_eq!(
        u32::from_le_bytes(b[LOAD_PH..LOAD_PH + 4].try_into().unwrap()),
        1
    );
    assert_eq!(&b[QEMU_NOTE + 12..QEMU_NOTE + 16], b"QEMU");
}

#[test]
fn header_errors() {
    let v = valid();
    assert!(matches!(parse(&v[..3]), Err(ElfError::Truncated { .. })));
    assert!(matches!(parse(&v[..40]), Err(ElfError::Truncated { .. })));
    let mut b = v.clone();
    b[0] = b'X';
    assert_eq!(parse(&b).unwrap_err(), ElfError::BadMagic);
    let mut b = v.clone();
    b[4] = 3;
    assert_eq!(parse(&b).unwrap_err(), ElfError::BadClass(3));
    let mut b = v.clone();
    b[5] = 2;
    assert_eq!(parse(&b).unwrap_err(), ElfError::NotLittleEndian(2));
    let mut b = v.clone();
    put16(&mut b, 16, 2);
    assert_eq!(parse(&b).unwrap_err(), ElfError::NotCore(2));
    let mut b = v.clone();
    put16(&mut b, 18, 183);
    assert_eq!(parse(&b).unwrap_err(), ElfError::UnsupportedMachine(183));
    let mut b = v.clone();
    put16(&mut b, 54, 20);
    assert_eq!(parse(&b).unwrap_err(), ElfError::BadProgramHeaderSize(20));
    let mut b = v.clone();
    put16(&mut b, 56, 0);
    assert_eq!(parse(&b).unwrap_err(), ElfError::BadProgramHeaderCount(0));
    // The table runs past the end.
    let mut b = v.clone();
    put16(&mut b, 56, 0xfff0);
    assert!(matches!(
        parse(&b),
        Err(ElfError::Truncated {
            what: "program header table",
            ..
        })
    ));
    let mut b = v.clone();
    put64(&mut b, 32, u64::MAX - 8);
    assert!(matches!(parse(&b), Err(ElfError::Truncated { .. })));
}

#[test]
fn pn_xnum_reads_the_count_from_section_header_zero() {
    let mut b = valid();
    let shoff = b.len();
    b.extend_from_slice(&[0u8; 64]);
    put64(&mut b, 40, shoff as u64);
    put16(&mut b, 58, 64);
    put16(&mut b, 56, 0xffff);
    put32(&mut b, shoff + 44, 2); // sh_info
    let core = parse(&b).unwrap();
    assert_eq!(core.loads.len(), 1);
    // An absurd count is refused before anything is allocated for it.
    put32(&mut b, shoff + 44, u32::MAX);
    assert_eq!(
        parse(&b).unwrap_err(),
        ElfError::BadProgramHeaderCount(u64::from(u32::MAX))
    );
    // Section header 0 past the end.
    put64(&mut b, 40, u64::MAX);
    assert!(matches!(parse(&b), Err(ElfError::Truncated { .. })));
    // A section header size too small to hold sh_info.
    put64(&mut b, 40, shoff as u64);
    put16(&mut b, 58, 8);
    assert!(matches!(parse(&b), Err(ElfError::BadProgramHeaderCount(_))));
}

#[test]
fn segment_errors() {
    let v = valid();
    let len = v.len() as u64;
    // PT_LOAD past the end by one byte: the file is truncated, the segment keeps what
    // it holds, and a warning says what is lost.
    let mut b = v.clone();
    put64(&mut b, LOAD_PH + 32, 0x2001);
    let core = parse(&b).unwrap();
    assert_eq!(core.loads[0].filesz, 0x2000);
    assert!(
        core.warnings
            .iter()
            .any(|w| w.contains("its last 0x1 bytes are lost")),
        "{:?}",
        core.warnings
    );
    // An offset whose range overflows is absurd, not truncated.
    let mut b = v.clone();
    put64(&mut b, LOAD_PH + 8, u64::MAX);
    assert!(matches!(
        parse(&b),
        Err(ElfError::SegmentPastEnd { index: 1, .. })
    ));
    let mut b = v.clone();
    put64(&mut b, LOAD_PH + 32, u64::MAX - 0x100);
    assert!(matches!(
        parse(&b),
        Err(ElfError::SegmentPastEnd { index: 1, .. })
    ));
    // A segment that starts at the end of the file: all of it is lost.
    let mut b = v.clone();
    put64(&mut b, LOAD_PH + 8, len);
    put64(&mut b, LOAD_PH + 32, 1);
    let core = parse(&b).unwrap();
    assert!(core.loads.is_empty());
    assert!(
        core.warnings
            .iter()
            .any(|w| w.contains("all its 0x1 bytes are lost")),
        "{:?}",
        core.warnings
    );
    // A physical range that wraps.
    let mut b = v.clone();
    put64(&mut b, LOAD_PH + 24, u64::MAX - 0x100);
    assert_eq!(
        parse(&b).unwrap_err(),
        ElfError::SegmentAddressOverflow { index: 1 }
    );
    // PT_NOTE past the end.
    let mut b = v.clone();
    put64(&mut b, NOTE_PH + 32, len);
    assert!(matches!(
        parse(&b),
        Err(ElfError::SegmentPastEnd { index: 0, .. })
    ));
    // p_memsz beyond p_filesz: opens, with a warning.
    let mut b = v.clone();
    put64(&mut b, LOAD_PH + 40, 0x10_0000);
    let core = parse(&b).unwrap();
    assert_eq!(core.warnings.len(), 1, "{:?}", core.warnings);
    // Other segment types are skipped, whatever their offsets.
    let mut b = v.clone();
    put32(&mut b, LOAD_PH, 6); // PT_PHDR
    put64(&mut b, LOAD_PH + 8, u64::MAX);
    let core = parse(&b).unwrap();
    assert!(core.loads.is_empty());
    assert!(!core.warnings.is_empty());
}

#[test]
fn note_errors() {
    let v = valid();
    // A name size that runs past the segment.
    let mut b = v.clone();
    put32(&mut b, NOTES, 0xffff_fff0);
    assert!(
        matches!(parse(&b), Err(ElfError::BadNote { .. })),
        "{:?}",
        parse(&b)
    );
    let mut b = v.clone();
    put32(&mut b, NOTES, u32::MAX);
    assert!(matches!(parse(&b), Err(ElfError::BadNote { .. })));
    // A descriptor size that runs past the segment.
    let mut b = v.clone();
    put32(&mut b, NOTES + 4, 0x10_0000);
    assert!(matches!(parse(&b), Err(ElfError::BadNote { .. })));
    let mut b = v.clone();
    put32(&mut b, QEMU_NOTE + 4, u32::MAX);
    assert!(matches!(parse(&b), Err(ElfError::BadNote { .. })));
    // A note segment cut in the middle of a header.
    let mut b = v.clone();
    let filesz = u64::from_le_bytes(b[NOTE_PH + 32..NOTE_PH + 40].try_into().unwrap());
    put64(&mut b, NOTE_PH + 32, filesz + 6);
    b[NOTES + filesz as usize] = 1; // not zero padding
    assert!(matches!(parse(&b), Err(ElfError::BadNote { .. })));
}

#[test]
fn qemu_cpu_state_errors() {
    let v = valid();
    let state = QEMU_NOTE + 12 + 8;
    let mut b = v.clone();
    put32(&mut b, state, 2); // version
    assert!(matches!(
        parse(&b),
        Err(ElfError::BadQemuCpuState { vcpu: 0, .. })
    ));
    let mut b = v.clone();
    put32(&mut b, state + 4, 100); // size: too small
    assert!(matches!(parse(&b), Err(ElfError::BadQemuCpuState { .. })));
    let mut b = v.clone();
    put32(&mut b, state + 4, 441); // size: larger than the note
    assert!(matches!(parse(&b), Err(ElfError::BadQemuCpuState { .. })));
    // A descriptor too short for the version and size fields.
    let b = with_notes(&raw_note(b"QEMU", 0, &[1, 0, 0, 0]));
    assert!(matches!(
        parse(&b),
        Err(ElfError::BadQemuCpuState { vcpu: 0, .. })
    ));
    // The older 432-byte layout (no kernel_gs_base) is read.
    let mut b = v.clone();
    put32(&mut b, state + 4, 432);
    let core = parse(&b).unwrap();
    assert_eq!(core.vcpus[0].registers.kernel_gs_base, 0);
    assert_eq!(core.vcpus[0].registers.cr3, 0x1000);
}

/// A file with one PT_NOTE segment holding `notes`.
fn with_notes(notes: &[u8]) -> Vec<u8> {
    let mut b = valid();
    b.truncate(NOTES);
    put16(&mut b, 56, 1);
    b.truncate(PHOFF + PHENT);
    put64(&mut b, NOTE_PH + 8, (PHOFF + PHENT) as u64);
    put64(&mut b, NOTE_PH + 32, notes.len() as u64);
    b.extend_from_slice(notes);
    b
}

fn raw_note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
    let mut n = Vec::new();
    n.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
    n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    n.extend_from_slice(&kind.to_le_bytes());
    n.extend_from_slice(name);
    n.push(0);
    n.resize(n.len().next_multiple_of(4), 0);
    n.extend_from_slice(desc);
    n.resize(n.len().next_multiple_of(4), 0);
    n
}

#[test]
fn absurd_note_counts_are_refused() {
    let one = raw_note(b"X", 7, &[]);
    let notes = one.repeat(elf::MAX_NOTES + 1);
    assert_eq!(
        parse(&with_notes(&notes)).unwrap_err(),
        ElfError::TooManyNotes
    );
    let one = raw_note(b"QEMU", 0, &[]);
    let notes = one.repeat(elf::MAX_VCPUS + 1);
    assert_eq!(
        parse(&with_notes(&notes)).unwrap_err(),
        ElfError::TooManyVcpus
    );
}

#[test]
fn other_notes_are_listed_and_prstatus_alone_gives_general_registers() {
    let mut pr = vec![0u8; 336];
    pr[32..36].copy_from_slice(&7u32.to_le_bytes());
    pr[112 + 16 * 8..112 + 17 * 8].copy_from_slice(&0xffff_ffff_8100_0000u64.to_le_bytes()); // rip
    pr[112 + 10 * 8..112 + 11 * 8].copy_from_slice(&0xaaaau64.to_le_bytes()); // rax
    let mut notes = raw_note(b"CORE", 1, &pr);
    notes.extend(raw_note(b"VMCOREINFO", 0, b"OSRELEASE=6.1\n"));
    notes.extend(raw_note(b"CORE", 1, &[0u8; 100])); // unknown layout
    let core = parse(&with_notes(&notes)).unwrap();
    assert_eq!(core.vcpus.len(), 2);
    let v = &core.vcpus[0];
    assert_eq!(v.source, RegisterSource::PrStatus);
    assert!(!v.has_control_registers());
    assert_eq!(v.pid, Some(7));
    assert_eq!(v.registers.rip, 0xffff_ffff_8100_0000);
    assert_eq!(v.registers.rax, 0xaaaa);
    assert_eq!(v.registers.cr3, 0);
    assert_eq!(core.other_notes.len(), 1);
    assert_eq!(core.other_notes[0].name, b"VMCOREINFO");
    assert_eq!(core.other_notes[0].name_len, 10);
    assert!(core.warnings.iter().any(|w| w.contains("unknown layout")));
}

#[test]
fn elf32_i386_core_with_a_pae_vcpu() {
    // ELF32 header, one PT_NOTE (i386 prstatus + QEMU state), one PT_LOAD.
    let mut pr = vec![0u8; 144];
    pr[24..28].copy_from_slice(&1u32.to_le_bytes());
    pr[72 + 12 * 4..72 + 13 * 4].copy_from_slice(&0xc010_0000u32.to_le_bytes()); // eip
    let mut state = vec![0u8; 432];
    state[0..4].copy_from_slice(&1u32.to_le_bytes());
    state[4..8].copy_from_slice(&432u32.to_le_bytes());
    state[8 + 16 * 8..8 + 17 * 8].copy_from_slice(&0xc010_0000u64.to_le_bytes()); // rip
    let cs = 8 + 18 * 8; // cs segment
    state[cs..cs + 4].copy_from_slice(&0x60u32.to_le_bytes());
    state[cs + 4..cs + 8].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
    state[cs + 8..cs + 12].copy_from_slice(&0x00cf_9b00u32.to_le_bytes());
    let cr = 8 + 18 * 8 + 10 * 24;
    state[cr..cr + 8].copy_from_slice(&0x8000_0011u64.to_le_bytes());
    state[cr + 24..cr + 32].copy_from_slice(&0x0030_0000u64.to_le_bytes());
    state[cr + 32..cr + 40].copy_from_slice(&0x20u64.to_le_bytes()); // PAE
    let mut notes = raw_note(b"CORE", 1, &pr);
    notes.extend(raw_note(b"QEMU", 0, &state));
    let mem = [0x77u8; 0x1000];
    let notes_at = 52 + 2 * 32;
    let load_at = notes_at + notes.len();
    let mut b = vec![0u8; 52];
    b[..7].copy_from_slice(b"\x7fELF\x01\x01\x01");
    put16(&mut b, 16, 4);
    put16(&mut b, 18, 3);
    put32(&mut b, 28, 52); // phoff
    put16(&mut b, 42, 32); // phentsize
    put16(&mut b, 44, 2); // phnum
    let ph = |t: u32, off: usize, paddr: u32, size: usize| {
        let mut p = vec![0u8; 32];
        p[0..4].copy_from_slice(&t.to_le_bytes());
        p[4..8].copy_from_slice(&(off as u32).to_le_bytes());
        p[12..16].copy_from_slice(&paddr.to_le_bytes());
        p[16..20].copy_from_slice(&(size as u32).to_le_bytes());
        p[20..24].copy_from_slice(&(size as u32).to_le_bytes());
        p
    };
    b.extend(ph(4, notes_at, 0, notes.len()));
    b.extend(ph(1, load_at, 0x10_0000, mem.len()));
    b.extend(&notes);
    b.extend(mem);
    let core = parse(&b).unwrap();
    assert_eq!(core.class, ElfClass::Elf32);
    assert_eq!(core.machine, Machine::I386);
    assert_eq!(core.loads[0].paddr, 0x10_0000);
    let r = &core.vcpus[0].registers;
    assert_eq!(r.rip, 0xc010_0000);
    assert_eq!(r.cr3, 0x30_0000);
    // PAE paging without IA-32e mode: NXE derived, LMA not.
    assert_eq!(r.efer, 1 << 11);
    assert_eq!(r.paging_mode(), PagingMode::Pae);
    assert_eq!(r.cs.selector, 0x60);
    assert_eq!(r.cs.access, 0xc09b);
    assert!(r.cs.default_big());
}

#[test]
fn efer_and_segment_derivation() {
    let code64 = elf::qemu_segment(0x10, 0, 0xffff_ffff, 0x00a0_9b00);
    assert_eq!(code64.access, 0xa09b);
    assert!(code64.long());
    assert_eq!(code64.dpl(), 0);
    assert_eq!(elf::qemu_segment_flags(&code64), 0x00a0_9b00);
    let null = elf::qemu_segment(0, 0, 0, 0);
    assert_eq!(null.access, 1 << 16, "not present: unusable");
    let code32 = elf::qemu_segment(0x08, 0, 0xffff_ffff, 0x00c0_9b00);
    let pg_pae = (0x8000_0001, 0x20);
    // IA-32e: from the machine, or from CS.L.
    assert_eq!(
        elf::derive_efer(pg_pae.0, pg_pae.1, &code32, Machine::X86_64),
        0xd00
    );
    assert_eq!(
        elf::derive_efer(pg_pae.0, pg_pae.1, &code64, Machine::I386),
        0xd00
    );
    assert_eq!(
        elf::derive_efer(pg_pae.0, pg_pae.1, &code32, Machine::I386),
        0x800
    );
    // No paging, or no PAE: nothing.
    assert_eq!(elf::derive_efer(0x1, 0x20, &code64, Machine::X86_64), 0);
    assert_eq!(
        elf::derive_efer(0x8000_0001, 0, &code64, Machine::X86_64),
        0
    );
}

#[test]
fn five_level_vcpu_mode_comes_from_cr4() {
    let regs = long_mode_registers(0x1000, true);
    let bytes = elf_of(
        &[Run {
            paddr: 0,
            bytes: &[0u8; 0x2000],
        }],
        &[regs],
    );
    let core = parse(&bytes).unwrap();
    assert_eq!(core.vcpus[0].registers.paging_mode(), PagingMode::Level5);
}

/// Every prefix of a valid file, and many single-byte corruptions of it, give `Ok` or
/// `Err`: never a panic.
#[test]
fn truncations_and_corruptions_never_panic() {
    let v = valid();
    let header_and_notes = NOTES + 12 + 8 + 336 + 12 + 8 + 440;
    for n in 0..header_and_notes {
        let r = parse(&v[..n]);
        assert!(r.is_err(), "prefix of {n} bytes parsed");
    }
    // Cut right after the notes: the headers are whole, the memory all lost.
    let core = parse(&v[..header_and_notes]).unwrap();
    assert!(core.loads.is_empty());
    assert_eq!(core.vcpus.len(), 1);
    // A deterministic pseudo-random walk over the header and note bytes.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = v.clone();
        let at = (x as usize) % header_and_notes;
        b[at] = (x >> 32) as u8;
        let at2 = ((x >> 16) as usize) % header_and_notes;
        b[at2] ^= 0xff;
        let _ = parse(&b);
    }
}

/// A thousand segments each shorter in the file than in memory make a bounded number of
/// warnings, not a thousand.
#[test]
fn many_short_segments_make_a_bounded_number_of_warnings() {
    let mut b = valid();
    let mut short = b[LOAD_PH..LOAD_PH + PHENT].to_vec();
    short[40..48].copy_from_slice(&0x10_0000u64.to_le_bytes()); // p_memsz > p_filesz
    let table = b.len();
    for _ in 0..1000 {
        b.extend_from_slice(&short);
    }
    put64(&mut b, 32, table as u64); // e_phoff
    put16(&mut b, 56, 1000); // e_phnum
    let core = parse(&b).unwrap();
    assert_eq!(core.loads.len(), 1000);
    // 16 short segments and a count of the rest; the same for the overlaps (all 1000
    // segments are at one address).
    assert!(
        core.warnings.len() <= 2 * 17,
        "{} warnings",
        core.warnings.len()
    );
    assert!(
        core.warnings
            .iter()
            .any(|w| w.contains("984 more segments are shorter")),
        "{:?}",
        core.warnings
    );
    assert!(
        core.warnings
            .iter()
            .any(|w| w.contains("983 more overlaps")),
        "{:?}",
        core.warnings
    );
}

// ----- issue 13: what an adversarial pass broke ----------------------------------------

/// Linux vmcores split pages between PT_LOADs: every byte a segment holds is readable,
/// through the driver's page handles, its physical reads and the core, and a hole inside
/// a page is reported at its first missing byte.
#[test]
fn pt_loads_that_split_a_page_are_read_whole() {
    let mem: Vec<u8> = (0..0x5000u32).map(|i| (i * 13 + i / 4096) as u8).collect();
    // Contiguous in guest-physical memory, but three segments whose edges fall inside
    // pages 1 and 3; a fourth segment after a hole that starts inside page 5.
    let runs = [
        Run {
            paddr: 0,
            bytes: &mem[..0x1800],
        },
        Run {
            paddr: 0x1800,
            bytes: &mem[0x1800..0x3a00],
        },
        Run {
            paddr: 0x3a00,
            bytes: &mem[0x3a00..0x5000],
        },
        Run {
            paddr: 0x5800,
            bytes: &mem[..0x800],
        },
    ];
    let file = TempFile::new("split.elf", &elf_of(&runs, &[]));
    let (driver, info) = HostDriver::open_dump(&file.0).unwrap();
    assert_eq!(info.ranges.len(), 4);
    for gfn in 0..5u64 {
        let page = driver.read_page(introvisor::Gfn(gfn)).unwrap();
        let mut b = vec![0u8; 4096];
        introvisor::PageRef::read(&page, 0, &mut b).unwrap();
        assert_eq!(b, mem[gfn as usize * 4096..][..4096], "page {gfn}");
        let mut b = [0u8; 16];
        driver
            .read_physical(Pa(gfn * 4096 + 0x7f8), &mut b)
            .unwrap();
        assert_eq!(b, mem[gfn as usize * 4096 + 0x7f8..][..16], "page {gfn}");
    }
    // Page 5: 0x5000..0x5800 is a hole, 0x5800.. is held.
    let page = driver.read_page(introvisor::Gfn(5)).unwrap();
    let mut b = [0u8; 8];
    introvisor::PageRef::read(&page, 0x800, &mut b).unwrap();
    assert_eq!(b, mem[..8]);
    assert_eq!(
        introvisor::PageRef::read(&page, 0x7fc, &mut b),
        Err(VmiError::OutOfBounds(Pa(0x57fc)))
    );
    assert_eq!(
        driver.read_physical(Pa(0x4ffc), &mut b),
        Err(VmiError::OutOfBounds(Pa(0x5000)))
    );
    // Through the core, with and without its page cache.
    for cached in [true, false] {
        let core = VmiCore::new(HostDriver::open_dump(&file.0).unwrap().0);
        if !cached {
            core.disable_gfn_cache();
        }
        let mut b = vec![0u8; 0x3000];
        core.read(AccessContext::direct(Pa(0x1100)), &mut b)
            .unwrap();
        assert_eq!(b, mem[0x1100..0x4100]);
        let mut b = [0u8; 0x20];
        assert_eq!(
            core.read(AccessContext::direct(Pa(0x4ff0)), &mut b),
            Err(VmiError::OutOfBounds(Pa(0x5000)))
        );
    }
}

/// Writable memory whose size is not a multiple of a page: the last, partial page is
/// readable up to the end, and a read past it names the first missing byte.
#[test]
fn writable_memory_with_a_partial_last_page() {
    let mem: Vec<u8> = (0..0x1800u32).map(|i| i as u8 ^ 0x5a).collect();
    let driver = HostDriver::from_vec_writable(mem.clone());
    let page = driver.read_page(introvisor::Gfn(1)).unwrap();
    let mut b = vec![0u8; 0x800];
    introvisor::PageRef::read(&page, 0, &mut b).unwrap();
    assert_eq!(b, mem[0x1000..]);
    let mut b = [0u8; 8];
    assert_eq!(
        introvisor::PageRef::read(&page, 0x7fc, &mut b),
        Err(VmiError::OutOfBounds(Pa(0x1800)))
    );
    assert_eq!(
        driver.read_physical(Pa(0x17fc), &mut b),
        Err(VmiError::OutOfBounds(Pa(0x1800)))
    );
    driver.write_physical(Pa(0x17f8), &[1; 8]).unwrap();
    assert!(driver.write_physical(Pa(0x17fc), &[1; 8]).is_err());
    let core = VmiCore::new(driver);
    let mut b = [0u8; 0x10];
    core.read(AccessContext::direct(Pa(0x17f0)), &mut b)
        .unwrap();
    assert_eq!(b[..8], mem[0x17f0..0x17f8]);
    assert_eq!(b[8..], [1; 8]);
    assert_eq!(
        core.read(AccessContext::direct(Pa(0x17f0)), &mut [0u8; 0x20]),
        Err(VmiError::OutOfBounds(Pa(0x1800)))
    );
}

/// A dump file that shrinks while it is open: reads of what is gone fail with an error,
/// and the process is not killed by SIGBUS.
#[test]
fn a_dump_that_shrinks_while_open_gives_errors_not_sigbus() {
    let (mem, root) = guest();
    let elf = elf_of(
        &[Run {
            paddr: 0,
            bytes: &mem,
        }],
        &[long_mode_registers(root.0, false)],
    );
    for (tag, bytes) in [("shrink.raw", &mem), ("shrink.elf", &elf)] {
        let file = TempFile::new(tag, bytes);
        let (driver, _) = HostDriver::open_dump(&file.0).unwrap();
        let mut before = [0u8; 8];
        driver.read_physical(Pa(0x10), &mut before).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file.0)
            .unwrap()
            .set_len(0x2000)
            .unwrap();
        let mut b = [0u8; 8];
        let err = driver.read_physical(Pa(0x8_0000), &mut b).unwrap_err();
        assert!(matches!(err, VmiError::Driver(_)), "{tag}: {err}");
        assert!(err.to_string().contains("shorter"), "{tag}: {err}");
        let page = driver.read_page(introvisor::Gfn(0x80)).unwrap();
        assert!(
            introvisor::PageRef::read(&page, 0, &mut b).is_err(),
            "{tag}"
        );
    }
}

/// A dump cut inside a PT_LOAD opens: a warning says how much the cut lost, bytes before
/// the cut read, bytes after it do not.
#[test]
fn a_dump_cut_inside_a_segment_opens_with_a_warning() {
    let mem: Vec<u8> = (0..0x4000u32).map(|i| (i % 251) as u8).collect();
    let runs = [
        Run {
            paddr: 0x10_0000,
            bytes: &mem[..0x2000],
        },
        Run {
            paddr: 0x20_0000,
            bytes: &mem[0x2000..],
        },
    ];
    let full = elf_of(&runs, &[long_mode_registers(0x1000, false)]);
    // Cut 0x2800 bytes: all but 0x800 of the second segment's 0x2000 bytes.
    let cut = &full[..full.len() - 0x1800];
    let file = TempFile::new("cut.elf", cut);
    let (driver, info) = HostDriver::open_dump(&file.0).unwrap();
    assert!(
        info.warnings
            .iter()
            .any(|w| w.contains("0x1800 bytes") && w.contains("truncated")),
        "{:?}",
        info.warnings
    );
    assert_eq!(info.ranges[1].len, 0x800);
    let mut b = [0u8; 0x10];
    driver.read_physical(Pa(0x20_07f0), &mut b).unwrap();
    assert_eq!(b, mem[0x27f0..0x2800]);
    assert_eq!(
        driver.read_physical(Pa(0x20_07f8), &mut b),
        Err(VmiError::OutOfBounds(Pa(0x20_0800)))
    );
    // Cut before the second segment starts: it is lost whole, the first one reads.
    let cut = &full[..full.len() - 0x2000];
    let file = TempFile::new("cut2.elf", cut);
    let (driver, info) = HostDriver::open_dump(&file.0).unwrap();
    assert!(
        info.warnings.iter().any(|w| w.contains("0x2000 bytes")),
        "{:?}",
        info.warnings
    );
    assert_eq!(info.ranges.len(), 1);
    driver.read_physical(Pa(0x10_1ff8), &mut [0u8; 8]).unwrap();
}

/// A segment that ends exactly at 2^64 holds the last bytes of the address space.
#[test]
fn a_segment_ending_at_the_top_of_the_address_space() {
    let mem: Vec<u8> = (0..0x2000u32).map(|i| (i * 3) as u8).collect();
    let top = 0u64.wrapping_sub(0x1000);
    let runs = [
        Run {
            paddr: 0,
            bytes: &mem[..0x1000],
        },
        Run {
            paddr: top,
            bytes: &mem[0x1000..],
        },
    ];
    let file = TempFile::new("top.elf", &elf_of(&runs, &[]));
    let (driver, info) = HostDriver::open_dump(&file.0).unwrap();
    assert_eq!(info.ranges.len(), 2, "{:?}", info.warnings);
    let mut b = [0u8; 8];
    driver.read_physical(Pa(u64::MAX - 7), &mut b).unwrap();
    assert_eq!(b, mem[0x1ff8..]);
    let page = driver.read_page(introvisor::Gfn(top >> 12)).unwrap();
    introvisor::PageRef::read(&page, 0xff8, &mut b).unwrap();
    assert_eq!(b, mem[0x1ff8..]);
    assert_eq!(driver.info().unwrap().max_gfn, introvisor::Gfn(top >> 12));
    // One byte more is still refused.
    let mut bytes = elf_of(&runs, &[]);
    let second_load = PHOFF + 2 * PHENT;
    put64(&mut bytes, second_load + 24, top + 1);
    assert_eq!(
        parse(&bytes).unwrap_err(),
        ElfError::SegmentAddressOverflow { index: 2 }
    );
}

/// Overlapping PT_LOADs are trimmed as before, and now say so.
#[test]
fn overlapping_segments_are_trimmed_with_a_warning() {
    let a = vec![0xaau8; 0x2000];
    let b = vec![0xbbu8; 0x2000];
    let runs = [
        Run {
            paddr: 0x1000,
            bytes: &a,
        },
        Run {
            paddr: 0x2000,
            bytes: &b,
        },
    ];
    let file = TempFile::new("overlap.elf", &elf_of(&runs, &[]));
    let (driver, info) = HostDriver::open_dump(&file.0).unwrap();
    assert!(
        info.warnings
            .iter()
            .any(|w| w.contains("overlap") && w.contains("0x1000 bytes")),
        "{:?}",
        info.warnings
    );
    let mut x = [0u8; 2];
    driver.read_physical(Pa(0x2fff), &mut x).unwrap();
    assert_eq!(x, [0xaa, 0xbb]);
}

/// A thousand vCPU notes of an unknown layout make a bounded number of warnings.
#[test]
fn many_bad_vcpu_notes_make_a_bounded_number_of_warnings() {
    let notes = raw_note(b"CORE", 1, &[0u8; 100]).repeat(1000);
    let core = parse(&with_notes(&notes)).unwrap();
    assert_eq!(core.vcpus.len(), 1000);
    assert!(
        core.warnings.len() <= 18,
        "{} warnings",
        core.warnings.len()
    );
    assert!(
        core.warnings.iter().any(|w| w.contains("984 more")),
        "{:?}",
        core.warnings
    );
}

/// An empty file is not an empty dump, and neither is `/dev/zero`.
#[test]
fn empty_files_and_dev_zero_are_refused() {
    let empty = TempFile::new("empty.bin", &[]);
    let err = HostDriver::open_dump(&empty.0).err().expect("opened");
    assert!(err.to_string().contains("empty"), "{err}");
    if std::path::Path::new("/dev/zero").exists() {
        let err = HostDriver::open_dump("/dev/zero").err().expect("opened");
        assert!(err.to_string().contains("character device"), "{err}");
    }
}
