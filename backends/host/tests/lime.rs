//! LiME images and content detection: a LiME image reads like the raw memory it holds
//! (with its holes absent); each malformed header gets its named error; compressed files
//! are refused with their format named; `open_as` reads a file as the format asked.

use std::path::PathBuf;

use introvisor::{AccessContext, Pa, Va, VmiCore, VmiError};
use introvisor_host::HostDriver;
use introvisor_host::builder::{GuestBuilder, MapFlags, PageSize};
use introvisor_host::dump::lime::{self, HEADER_SIZE, LimeError, MAX_RANGES};
use introvisor_host::dump::write::{Run, write_lime, write_qemu_elf};
use introvisor_host::dump::{DumpError, DumpFormat, DumpKind, ElfError};

/// A file in the temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, bytes: &[u8]) -> Self {
        use core::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "introvisor-lime-test-{}-{}-{tag}",
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

const USER: u64 = 0x40_0000;
const KTEXT: u64 = 0xffff_ffff_8100_0000;
const DIRECT_MAP: u64 = 0xffff_8880_0000_0000;
/// The legacy VGA/BIOS hole, which real memory maps leave out of RAM.
const HOLE: core::ops::Range<usize> = 0xa_0000..0x10_0000;

/// A 4 MiB guest: user pages (4 KiB), kernel text (a 2 MiB page at 2 MiB), a 1 GiB direct
/// map aliasing all of RAM, and data at known places; nothing in the legacy hole.
fn guest() -> (Vec<u8>, Pa) {
    let mut g = GuestBuilder::new(4 << 20);
    g.map_new(Va(USER), PageSize::Size4K, MapFlags::USER_DATA)
        .unwrap();
    g.map_new(Va(USER + 0x1000), PageSize::Size4K, MapFlags::USER_DATA)
        .unwrap();
    g.map(
        Va(KTEXT),
        Pa(0x20_0000),
        PageSize::Size2M,
        MapFlags::KERNEL_TEXT,
    )
    .unwrap();
    g.map(
        Va(DIRECT_MAP),
        Pa(0),
        PageSize::Size1G,
        MapFlags::KERNEL_DATA,
    )
    .unwrap();
    g.write_virtual(Va(USER + 0xffa), b"across pages\0")
        .unwrap();
    g.write_virtual(Va(KTEXT + 0x10), &[0x55, 0x48, 0x89, 0xe5])
        .unwrap();
    let g = g.finish();
    assert!(
        g.memory[HOLE].iter().all(|&b| b == 0),
        "the builder put something in the hole; move the hole"
    );
    (g.memory, g.root)
}

/// The guest as LiME writes it: RAM below the hole, then above it, in two ranges, and
/// the top 1 MiB as a third range written first (LiME keeps the kernel's order, which
/// need not be sorted).
fn lime_of(mem: &[u8]) -> Vec<u8> {
    let top = mem.len() - (1 << 20);
    let runs = [
        Run {
            paddr: top as u64,
            bytes: &mem[top..],
        },
        Run {
            paddr: 0,
            bytes: &mem[..HOLE.start],
        },
        Run {
            paddr: HOLE.end as u64,
            bytes: &mem[HOLE.end..top],
        },
    ];
    let mut out = Vec::new();
    write_lime(&mut out, &runs).unwrap();
    out
}

#[test]
fn a_lime_image_translates_and_reads_like_the_raw_dump_it_holds() {
    let (mem, root) = guest();
    let raw = TempFile::new("raw.bin", &mem);
    let lime_file = TempFile::new("image.lime", &lime_of(&mem));

    let (raw_driver, raw_info) = HostDriver::open_dump(&raw.0).unwrap();
    let (lime_driver, info) = HostDriver::open_dump(&lime_file.0).unwrap();
    assert_eq!(raw_info.format, DumpFormat::Raw);
    assert_eq!(raw_info.format.to_string(), "raw (no known header)");
    assert_eq!(info.format, DumpFormat::Lime { ranges: 3 });
    assert_eq!(info.format.to_string(), "LiME image, 3 range(s)");
    assert!(!info.forced);
    assert!(info.warnings.is_empty(), "{:?}", info.warnings);
    assert!(info.vcpus.is_empty());
    // Sorted by address, each at its data's file offset.
    let starts: Vec<u64> = info.ranges.iter().map(|r| r.start.0).collect();
    assert_eq!(starts, [0, HOLE.end as u64, (mem.len() - (1 << 20)) as u64]);
    assert_eq!(info.ranges[0].offset, 2 * HEADER_SIZE + (1 << 20));
    let held: u64 = info.ranges.iter().map(|r| r.len).sum();
    assert_eq!(held, (mem.len() - HOLE.len()) as u64);

    let raw_core = VmiCore::new(raw_driver);
    let lime_core = VmiCore::new(lime_driver);
    let vas = [
        USER,
        USER + 0xffa,
        USER + 0x1004,
        USER + 0x2000, // unmapped
        KTEXT + 0x10,
        KTEXT + 0x1f_ffff,
        DIRECT_MAP + 0x1234,
        DIRECT_MAP + (3 << 20) + 0x10,
        0x8000_0000_0000, // non-canonical
    ];
    for va in vas {
        let a = raw_core.translate(Va(va), root);
        let b = lime_core.translate(Va(va), root);
        assert_eq!(a, b, "translation of {va:#x}");
    }
    let mut a = [0u8; 13];
    let mut b = [0u8; 13];
    raw_core
        .read(AccessContext::paging(Va(USER + 0xffa), root), &mut a)
        .unwrap();
    lime_core
        .read(AccessContext::paging(Va(USER + 0xffa), root), &mut b)
        .unwrap();
    assert_eq!(&b, b"across pages\0");
    assert_eq!(a, b);
    // Every page outside the hole reads the same through the direct-map alias.
    let mut page_a = vec![0u8; 4096];
    let mut page_b = vec![0u8; 4096];
    for pa in (0..mem.len() as u64).step_by(4096) {
        let ctx = AccessContext::paging(Va(DIRECT_MAP + pa), root);
        raw_core.read(ctx, &mut page_a).unwrap();
        let in_hole = HOLE.contains(&(pa as usize));
        match lime_core.read(ctx, &mut page_b) {
            Ok(()) => {
                assert!(!in_hole, "{pa:#x} is in the hole but read");
                assert_eq!(page_a, page_b, "page {pa:#x}");
            }
            Err(e) => {
                assert!(in_hole, "{pa:#x}: {e}");
                assert!(
                    matches!(e, VmiError::GfnNotPresent(_) | VmiError::OutOfBounds(_)),
                    "{e:?}"
                );
            }
        }
    }
}

/// A small valid image: three ranges of 0x1000, 0x11 and 0x20 bytes with holes.
fn small_image() -> (Vec<u8>, Vec<(u64, Vec<u8>)>) {
    let runs: Vec<(u64, Vec<u8>)> = vec![
        (0x1000, (0..0x1000u32).map(|i| (i * 7) as u8).collect()),
        (0x9_f000, (0..0x11u8).map(|i| i ^ 0x5a).collect()),
        (0x1_0000_0000, vec![0xcc; 0x20]),
    ];
    let as_runs: Vec<Run<'_>> = runs
        .iter()
        .map(|(paddr, bytes)| Run {
            paddr: *paddr,
            bytes,
        })
        .collect();
    let mut out = Vec::new();
    write_lime(&mut out, &as_runs).unwrap();
    (out, runs)
}

#[test]
fn every_prefix_of_a_valid_image_opens_with_what_it_holds_or_is_truncated() {
    let (image, runs) = small_image();
    // The file offsets where a range's header starts, and the end.
    let mut boundaries = vec![0u64];
    for (_, bytes) in &runs {
        let last = *boundaries.last().unwrap();
        boundaries.push(last + HEADER_SIZE + bytes.len() as u64);
    }
    assert_eq!(*boundaries.last().unwrap(), image.len() as u64);
    for n in 0..=image.len() {
        let prefix = &image[..n];
        if n < HEADER_SIZE as usize {
            assert_eq!(
                lime::parse(prefix),
                Err(LimeError::Truncated { len: n as u64 }),
                "prefix of {n} bytes"
            );
            continue;
        }
        let parsed = lime::parse(prefix).unwrap_or_else(|e| panic!("prefix {n}: {e}"));
        let at_boundary = boundaries.contains(&(n as u64));
        assert_eq!(
            parsed.warnings.is_empty(),
            at_boundary,
            "prefix {n}: {:?}",
            parsed.warnings
        );
        // Whatever the prefix holds of each range is there, at the right address, and
        // nothing more.
        let mut expected_bytes = 0u64;
        for (i, (paddr, bytes)) in runs.iter().enumerate() {
            let data = boundaries[i] + HEADER_SIZE;
            let held = (n as u64).saturating_sub(data).min(bytes.len() as u64);
            expected_bytes += held;
            if (n as u64) < boundaries[i] + HEADER_SIZE {
                assert!(parsed.ranges.len() <= i, "prefix {n}: range {i} parsed");
                continue;
            }
            let r = parsed.ranges[i];
            assert_eq!((r.start, r.in_file, r.offset), (*paddr, held, data));
            assert_eq!(r.end, paddr + bytes.len() as u64 - 1);
        }
        let mem = parsed.memory_ranges();
        assert_eq!(mem.iter().map(|r| r.len).sum::<u64>(), expected_bytes);
        for r in &mem {
            let (_, bytes) = runs.iter().find(|(p, _)| *p == r.start.0).unwrap();
            let off = r.offset as usize;
            assert_eq!(&prefix[off..off + r.len as usize], &bytes[..r.len as usize]);
        }
    }
}

/// A header with the given fields.
fn header(magic: u32, version: u32, start: u64, end: u64) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&magic.to_le_bytes());
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&start.to_le_bytes());
    h.extend_from_slice(&end.to_le_bytes());
    h.extend_from_slice(&[0; 8]);
    h
}

/// An image of ranges `(start, end)` (inclusive), each with its `end - start + 1` bytes of
/// data when that is at most 1 MiB, else 64 (a cut file: enough for the header checks
/// of a last range).
fn image(ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(start, end) in ranges {
        out.extend(header(lime::LIME_MAGIC, 1, start, end));
        let len = end.wrapping_sub(start).wrapping_add(1);
        let len = if len > 1 << 20 { 64 } else { len };
        out.extend(core::iter::repeat_n(0xab, len as usize));
    }
    out
}

#[test]
fn malformed_headers_get_named_errors() {
    let magic = lime::LIME_MAGIC;
    // e_addr < s_addr.
    assert_eq!(
        lime::parse(&image(&[(0x2000, 0x1fff)])),
        Err(LimeError::EndBeforeStart {
            index: 0,
            start: 0x2000,
            end: 0x1fff
        })
    );
    // Absurd ranges: the whole 64-bit space, and one byte at 2^52.
    for (start, end) in [(0, u64::MAX), (1 << 52, 1 << 52), (0xf_f000, 1 << 52)] {
        let e = lime::parse(&image(&[(0, 0xf), (start, end)])).unwrap_err();
        assert_eq!(
            e,
            LimeError::AbsurdRange {
                index: 1,
                start,
                end
            }
        );
        assert!(e.to_string().contains("2^52"), "{e}");
    }
    // Just below 2^52 is a valid (cut) range.
    let top = (1u64 << 52) - 1;
    let ok = lime::parse(&image(&[(top - 0xfff, top)])).unwrap();
    assert_eq!(ok.ranges[0].in_file, 0x1000);
    // Overlaps: inside, identical, straddling the start and the end, across two; in any
    // order. Adjacent ranges do not overlap.
    let overlaps: [(&[(u64, u64)], usize); 5] = [
        (&[(0x1000, 0x1fff), (0x1800, 0x1800)], 0),
        (&[(0x1000, 0x1fff), (0x1000, 0x1fff)], 0),
        (&[(0x1000, 0x1fff), (0x800, 0x1000)], 0),
        (&[(0x5000, 0x5fff), (0x1000, 0x1fff), (0x1fff, 0x2fff)], 1),
        (&[(0x1000, 0x1fff), (0x3000, 0x3fff), (0x0, 0x10_0000)], 1),
    ];
    for (ranges, other) in overlaps {
        let index = ranges.len() - 1;
        let (start, end) = ranges[index];
        assert_eq!(
            lime::parse(&image(ranges)),
            Err(LimeError::Overlap {
                index,
                start,
                end,
                other
            }),
            "{ranges:x?}"
        );
    }
    let adjacent = lime::parse(&image(&[
        (0x2000, 0x2fff),
        (0x1000, 0x1fff),
        (0x3000, 0x3000),
    ]));
    assert_eq!(adjacent.unwrap().ranges.len(), 3);

    // A bad magic on a later header; a bad version; trailing bytes that are not a header.
    let mut bad = image(&[(0, 0xf)]);
    bad.extend(header(0x1234_5678, 1, 0x1000, 0x1fff));
    assert_eq!(
        lime::parse(&bad),
        Err(LimeError::BadMagic {
            index: 1,
            offset: 48,
            found: 0x1234_5678
        })
    );
    let mut v2 = image(&[(0, 0xf)]);
    v2.extend(header(magic, 2, 0x1000, 0x1fff));
    assert_eq!(
        lime::parse(&v2),
        Err(LimeError::UnsupportedVersion {
            index: 1,
            offset: 48,
            version: 2
        })
    );
    let mut trailer = image(&[(0, 0xf)]);
    trailer.extend_from_slice(b"\n\0junk");
    assert!(matches!(
        lime::parse(&trailer),
        Err(LimeError::BadMagic { index: 1, .. })
    ));
    // A nonzero reserved field is odd, not fatal.
    let mut reserved = image(&[(0, 0xf)]);
    reserved[24] = 1;
    let parsed = lime::parse(&reserved).unwrap();
    assert!(
        parsed.warnings[0].contains("reserved"),
        "{:?}",
        parsed.warnings
    );
}

#[test]
fn more_ranges_than_the_cap_are_refused() {
    // MAX_RANGES + 1 one-byte ranges, two bytes apart.
    let mut out = Vec::with_capacity((MAX_RANGES + 1) * 33);
    for i in 0..=MAX_RANGES as u64 {
        out.extend(header(lime::LIME_MAGIC, 1, 2 * i, 2 * i));
        out.push(i as u8);
    }
    assert_eq!(lime::parse(&out), Err(LimeError::TooManyRanges));
    out.truncate(MAX_RANGES * 33);
    assert_eq!(lime::parse(&out).unwrap().ranges.len(), MAX_RANGES);
}

#[test]
fn compressed_files_are_refused_with_their_format_named() {
    let cases: [(&[u8], &str); 4] = [
        (&[0x28, 0xb5, 0x2f, 0xfd, 0x24, 0x04, 0x21, 0], "zstd"),
        (&[0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0, 3], "gzip"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0, 0, 4], "xz"),
        (&[0x04, 0x22, 0x4d, 0x18, 0x64, 0x40, 0xa7], "LZ4 frame"),
    ];
    for (magic, name) in cases {
        let mut bytes = magic.to_vec();
        bytes.resize(8192, 0x11);
        let file = TempFile::new("compressed", &bytes);
        let Err(e) = HostDriver::open_dump(&file.0) else {
            panic!("{name}: opened");
        };
        assert!(
            matches!(e, DumpError::Compressed { format, .. } if format == name),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .ends_with(&format!("compressed ({name}): decompress it first")),
            "{e}"
        );
        // Forced raw, it opens, and says what it looks like.
        let (_, info) = HostDriver::open_dump_as(&file.0, DumpKind::Raw).unwrap();
        assert_eq!(info.format, DumpFormat::Raw);
        assert!(info.forced);
        assert!(
            info.warnings[0].contains("compressed"),
            "{:?}",
            info.warnings
        );
    }
    // A gzip magic without the deflate method byte is not gzip: raw.
    let file = TempFile::new("not-gzip", &[0x1f, 0x8b, 0x09, 0, 1, 2, 3, 4]);
    let (_, info) = HostDriver::open_dump(&file.0).unwrap();
    assert_eq!(info.format, DumpFormat::Raw);
    assert!(info.warnings.is_empty());
}

#[test]
fn open_as_reads_the_format_asked_whatever_the_content() {
    let (image, _) = small_image();
    let lime_file = TempFile::new("small.lime", &image);
    // A LiME image read as raw: its headers become memory.
    let (driver, info) = HostDriver::open_dump_as(&lime_file.0, DumpKind::Raw).unwrap();
    assert_eq!((info.format, info.forced), (DumpFormat::Raw, true));
    assert!(info.warnings[0].contains("LiME"), "{:?}", info.warnings);
    let mut magic = [0u8; 4];
    driver.memory().read(Pa(0), &mut magic).unwrap();
    assert_eq!(&magic, b"EMiL");
    // Read as LiME, as asked.
    let (_, info) = HostDriver::open_dump_as(&lime_file.0, DumpKind::Lime).unwrap();
    assert_eq!(
        (info.format, info.forced),
        (DumpFormat::Lime { ranges: 3 }, true)
    );
    // Read as ELF: not one.
    assert!(matches!(
        HostDriver::open_dump_as(&lime_file.0, DumpKind::Elf),
        Err(DumpError::Elf {
            error: ElfError::BadMagic,
            ..
        })
    ));
    // A raw image read as LiME, and an ELF file read as LiME.
    let raw = TempFile::new("raw", &[0x53, 0xff, 0x00, 0xf0].repeat(64));
    let Err(DumpError::Lime { error, .. }) = HostDriver::open_dump_as(&raw.0, DumpKind::Lime)
    else {
        panic!("raw read as LiME")
    };
    assert_eq!(
        error,
        LimeError::BadMagic {
            index: 0,
            offset: 0,
            found: 0xf000_ff53
        }
    );
    let mut elf = Vec::new();
    write_qemu_elf(
        &mut elf,
        &[Run {
            paddr: 0,
            bytes: &[0; 4096],
        }],
        &[],
    )
    .unwrap();
    let elf_file = TempFile::new("core.elf", &elf);
    assert!(matches!(
        HostDriver::open_dump_as(&elf_file.0, DumpKind::Lime),
        Err(DumpError::Lime {
            error: LimeError::BadMagic { index: 0, .. },
            ..
        })
    ));
    let (_, info) = HostDriver::open_dump_as(&elf_file.0, DumpKind::Elf).unwrap();
    assert!(matches!(info.format, DumpFormat::Elf { .. }) && info.forced);
}

#[test]
fn a_lime_image_cut_inside_a_range_keeps_what_it_holds() {
    let (mem, root) = guest();
    let full = lime_of(&mem);
    // Cut 0x1800 bytes into the last range (the one above the hole).
    let cut_at = full.len() - (mem.len() - (1 << 20) - HOLE.end) + 0x1800;
    let file = TempFile::new("cut.lime", &full[..cut_at]);
    let (driver, info) = HostDriver::open_dump(&file.0).unwrap();
    assert_eq!(info.warnings.len(), 1, "{:?}", info.warnings);
    assert!(
        info.warnings[0].contains("cut short"),
        "{:?}",
        info.warnings
    );
    let core = VmiCore::new(driver);
    // The user string sits in frames the builder allocated low; it still reads.
    let mut buf = [0u8; 13];
    core.read(AccessContext::paging(Va(USER + 0xffa), root), &mut buf)
        .unwrap();
    assert_eq!(&buf, b"across pages\0");
    // The first 0x1000 bytes above the hole read, the page past the cut does not.
    let above = DIRECT_MAP + HOLE.end as u64;
    core.read(AccessContext::paging(Va(above), root), &mut [0u8; 4096])
        .unwrap();
    assert!(
        core.read(
            AccessContext::paging(Va(above + 0x1000), root),
            &mut [0u8; 4096]
        )
        .is_err()
    );
}

/// splitmix64: reproducible mutations without a dependency.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
fn corrupted_images_parse_or_fail_by_name_and_stay_inside_the_file() {
    let (image, _) = small_image();
    let mut state = 0x11fe_u64;
    for round in 0..3000 {
        let mut bytes = image.clone();
        // A few bytes changed, mostly in the headers (where the parser looks).
        for _ in 0..1 + next(&mut state) % 4 {
            let header = (next(&mut state) % 3) as usize;
            let at = if next(&mut state).is_multiple_of(4) {
                (next(&mut state) % bytes.len() as u64) as usize
            } else {
                [0, 32 + 0x1000, 64 + 0x1011][header] + (next(&mut state) % 32) as usize
            };
            bytes[at] = next(&mut state) as u8;
        }
        if next(&mut state).is_multiple_of(5) {
            bytes.truncate((next(&mut state) % bytes.len() as u64) as usize);
        }
        match lime::parse(&bytes) {
            Ok(parsed) => {
                for r in &parsed.ranges {
                    assert!(r.start <= r.end, "round {round}: {r:?}");
                    assert!(r.end < 1 << 52, "round {round}: {r:?}");
                    assert!(r.offset + r.in_file <= bytes.len() as u64, "round {round}");
                    assert!(r.in_file <= r.end - r.start + 1, "round {round}");
                }
                let mut sorted = parsed.ranges.clone();
                sorted.sort_by_key(|r| r.start);
                for pair in sorted.windows(2) {
                    assert!(pair[0].end < pair[1].start, "round {round}: overlap");
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}
