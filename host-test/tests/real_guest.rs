//! introvisor against QEMU on real Linux guests.
//!
//! `host-test/real-guest/capture.sh` boots Linux under QEMU with 4-level and 5-level
//! paging, stops it, asks QEMU (`gva2gpa`, `memsave`) to translate and read a few
//! thousand virtual addresses, and saves the guest with `dump-guest-memory`, one
//! directory per guest under `${INTROVISOR_REAL_GUEST_DIR:-$HOME/.cache/introvisor/real-guest}`:
//!
//! | file | content |
//! |---|---|
//! | `dump.elf` | QEMU's ELF core of the guest |
//! | `cr3.txt` | the CR3 the queries used, hex |
//! | `mode.txt` | `4` or `5` |
//! | `translations.tsv` | `# va\tresult\tcategory`, then `0x<va>\t0x<gpa>\t<category>` or `0x<va>\tunmapped\t<category>\t<qemu text>` |
//! | `bytes.tsv` | `# va\tlen\thex`, then `0x<va>\t<len>\t<hex>` |
//! | `pagesizes.tsv` | optional: `0x<va>\t<page size>` for the mapped VAs |
//!
//! This test opens `dump.elf` with introvisor's ELF reader, takes vCPU 0's registers
//! (CR3 must equal `cr3.txt`, the paging mode `mode.txt`), and holds every translation
//! and every byte read of QEMU against `VmiCore`'s (and the page sizes the capture
//! recorded against `Translation::page_size`). It prints the counts per category
//! and fails on any mismatch.
//!
//! With no fixture it prints a SKIP line and passes, unless `INTROVISOR_REQUIRE_REAL_GUEST=1`.
//! The comparison itself is tested on synthetic fixtures written in the same format (a
//! guest built with `GuestBuilder`, saved as a QEMU-style ELF core, with the builder's own
//! record as the expected answers), untouched and tampered with.

use core::fmt::Write as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use introvisor::arch::amd64::{PagingMode, Registers, Segment};
use introvisor::{AccessContext, Pa, Va, VcpuId, VmiCore, VmiDriver, VmiError};
use introvisor_host::HostDriver;
use introvisor_host::builder::{GuestBuilder, MapFlags, PageSize};
use introvisor_host::dump::DumpFormat;
use introvisor_host::dump::write::{Run, write_qemu_elf};

// ----- the comparison ------------------------------------------------------------------

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    matches: u64,
    mismatches: u64,
    /// Disagreements explained by a known QEMU deviation from the SDM (see `compare`).
    qemu_deviations: u64,
}

#[derive(Default, Debug)]
struct Report {
    guest: String,
    by_category: BTreeMap<String, Tally>,
    /// The first mismatches, in words.
    details: Vec<String>,
}

impl Report {
    fn tally(&mut self, category: &str) -> &mut Tally {
        self.by_category.entry(category.to_owned()).or_default()
    }

    fn mismatch(&mut self, category: &str, detail: String) {
        self.tally(category).mismatches += 1;
        if self.details.len() < 40 {
            self.details.push(detail);
        }
    }

    fn total(&self) -> Tally {
        let mut t = Tally::default();
        for c in self.by_category.values() {
            t.matches += c.matches;
            t.mismatches += c.mismatches;
            t.qemu_deviations += c.qemu_deviations;
        }
        t
    }

    fn print(&self) {
        let mut s = String::new();
        let _ = writeln!(s, "real guest {}:", self.guest);
        let _ = writeln!(
            s,
            "  {:<24} {:>8} {:>10} {:>14}",
            "category", "matches", "mismatches", "qemu-deviation"
        );
        for (cat, t) in &self.by_category {
            let _ = writeln!(
                s,
                "  {cat:<24} {:>8} {:>10} {:>14}",
                t.matches, t.mismatches, t.qemu_deviations
            );
        }
        let t = self.total();
        let _ = writeln!(
            s,
            "  {:<24} {:>8} {:>10} {:>14}",
            "total", t.matches, t.mismatches, t.qemu_deviations
        );
        for d in &self.details {
            let _ = writeln!(s, "  MISMATCH {d}");
        }
        println!("{s}");
    }
}

fn hex(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let body = t.strip_prefix("0x").unwrap_or(t);
    u64::from_str_radix(body, 16).map_err(|e| format!("bad hex number {t:?}: {e}"))
}

fn read_text(dir: &Path, name: &str) -> Result<String, String> {
    std::fs::read_to_string(dir.join(name))
        .map_err(|e| format!("{}: {e}", dir.join(name).display()))
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err(format!("odd-length hex string of {} digits", text.len()));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| format!("bad hex byte at {i}"))
        })
        .collect()
}

/// Whether QEMU's failure to translate `va` is explained by QEMU 7.2 using CR3 bit 63 as
/// an address bit of the PML5 table in its 5-level debug walk (`gva2gpa`).
///
/// The SDM says otherwise: with CR4.PCIDE = 1, bit 63 of MOV to CR3's source operand only
/// asks the processor not to flush the TLB and is not stored in CR3 (Vol. 3A §4.10.4.1),
/// and the PML4/PML5 table is at CR3 bits M-1:12 (Vol. 3A §4.5, Table 4-12), so bits 63:M
/// never take part in the walk. introvisor masks them, as the hardware does. This function
/// accepts a disagreement only when all of it holds: 5-level paging, CR3 bit 63 set, QEMU
/// found no mapping, introvisor did, and the PML5 entry QEMU would have read (with bit 63
/// left in) lies outside guest memory, so QEMU's walk must have failed there.
fn qemu_cr3_bit63_deviation(
    mode: PagingMode,
    cr3: u64,
    va: u64,
    driver: &HostDriver,
    introvisor_mapped: bool,
) -> bool {
    if mode != PagingMode::Level5 || cr3 & (1 << 63) == 0 || !introvisor_mapped {
        return false;
    }
    let qemu_pml5e = (cr3 & !0xfff).wrapping_add(((va >> 48) & 0x1ff) * 8);
    let mut b = [0u8; 8];
    driver.read_physical(Pa(qemu_pml5e), &mut b).is_err()
}

/// Holds one guest directory against introvisor.
fn compare(dir: &Path) -> Result<Report, String> {
    let mut report = Report {
        guest: dir.display().to_string(),
        ..Report::default()
    };
    let mode = match read_text(dir, "mode.txt")?.trim() {
        "4" => PagingMode::Level4,
        "5" => PagingMode::Level5,
        other => return Err(format!("mode.txt says {other:?}, not 4 or 5")),
    };
    let cr3 = hex(&read_text(dir, "cr3.txt")?)?;
    let (driver, info) = HostDriver::open_dump(dir.join("dump.elf")).map_err(|e| e.to_string())?;
    if !matches!(info.format, DumpFormat::Elf { .. }) {
        return Err(format!("dump.elf is not an ELF core but {}", info.format));
    }
    let vcpu0 = info.vcpus.first().ok_or("dump.elf has no vCPU notes")?;
    if !vcpu0.has_control_registers() {
        return Err("vCPU 0 has no QEMU CPU-state note (no CR3)".to_owned());
    }
    let regs: Registers = driver.registers(VcpuId(0)).map_err(|e| e.to_string())?;
    if regs.cr3 != cr3 {
        return Err(format!(
            "vCPU 0's CR3 in dump.elf is {:#x}, cr3.txt says {cr3:#x}",
            regs.cr3
        ));
    }
    if regs.paging_mode() != mode {
        return Err(format!(
            "vCPU 0 is in {:?} (CR0 {:#x}, CR4 {:#x}, derived EFER {:#x}); mode.txt says {mode:?}",
            regs.paging_mode(),
            regs.cr0,
            regs.cr4,
            regs.efer
        ));
    }
    let root = regs.translation_root();
    let core = VmiCore::new(driver).with_paging(regs.paging());

    let translations = read_text(dir, "translations.tsv")?;
    for (n, line) in translations.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let (va, result, category) = match fields.as_slice() {
            [va, result, category, ..] => (hex(va)?, *result, *category),
            _ => return Err(format!("translations.tsv line {}: {line:?}", n + 1)),
        };
        let ours = core.translate(Va(va), root);
        if result == "unmapped" {
            match ours {
                Err(VmiError::Translation(_)) => report.tally(category).matches += 1,
                Ok(t) if qemu_cr3_bit63_deviation(mode, cr3, va, core.driver(), true) => {
                    let _ = t;
                    report.tally(category).qemu_deviations += 1;
                }
                Ok(t) => report.mismatch(
                    category,
                    format!(
                        "{va:#x} ({category}): QEMU unmapped ({}), introvisor {:#x}",
                        fields.get(3).unwrap_or(&""),
                        t.pa.0
                    ),
                ),
                Err(e) => report.mismatch(
                    category,
                    format!("{va:#x} ({category}): introvisor failed otherwise: {e}"),
                ),
            }
        } else {
            let gpa = hex(result)?;
            match ours {
                Ok(t) if t.pa.0 == gpa => report.tally(category).matches += 1,
                Ok(t) => report.mismatch(
                    category,
                    format!(
                        "{va:#x} ({category}): QEMU {gpa:#x}, introvisor {:#x}",
                        t.pa.0
                    ),
                ),
                Err(e) => report.mismatch(
                    category,
                    format!("{va:#x} ({category}): QEMU {gpa:#x}, introvisor {e}"),
                ),
            }
        }
    }

    let bytes = read_text(dir, "bytes.tsv")?;
    for (n, line) in bytes.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [va, len, data] = fields.as_slice() else {
            return Err(format!("bytes.tsv line {}: {line:?}", n + 1));
        };
        let va = hex(va)?;
        let len: usize = len
            .parse()
            .map_err(|e| format!("bytes.tsv line {}: length: {e}", n + 1))?;
        let want = unhex(data)?;
        if want.len() != len {
            return Err(format!(
                "bytes.tsv line {}: {len} bytes announced, {} given",
                n + 1,
                want.len()
            ));
        }
        let mut got = vec![0u8; len];
        match core.read(AccessContext::paging(Va(va), root), &mut got) {
            Ok(()) if got == want => report.tally("bytes").matches += 1,
            Ok(()) => {
                let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
                report.mismatch(
                    "bytes",
                    format!("{va:#x}+{len}: first difference at byte {at}"),
                );
            }
            Err(e) => report.mismatch("bytes", format!("{va:#x}+{len}: introvisor {e}")),
        }
    }
    // Page sizes, where the capture recorded them (from qmp.py's own walk of dump.elf, whose
    // addresses equal QEMU's on every line): a check of `Translation::page_size`.
    if let Ok(sizes) = read_text(dir, "pagesizes.tsv") {
        for line in sizes
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let mut fields = line.split('\t');
            let (Some(va), Some(size)) = (fields.next(), fields.next()) else {
                return Err(format!("pagesizes.tsv: {line:?}"));
            };
            let va = hex(va)?;
            let size: u64 = size
                .trim()
                .parse()
                .map_err(|e| format!("pagesizes.tsv: {line:?}: {e}"))?;
            match core.translate(Va(va), root) {
                Ok(t) if t.page_size == size => report.tally("page-size").matches += 1,
                Ok(t) => report.mismatch(
                    "page-size",
                    format!("{va:#x}: capture {size:#x}, introvisor {:#x}", t.page_size),
                ),
                Err(e) => report.mismatch("page-size", format!("{va:#x}: introvisor {e}")),
            }
        }
    }
    Ok(report)
}

fn fixture_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("INTROVISOR_REAL_GUEST_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    Path::new(&home).join(".cache/introvisor/real-guest")
}

#[test]
fn real_guests_agree_with_qemu() {
    let root = fixture_root();
    let dirs: Vec<PathBuf> = ["l4", "l5"]
        .iter()
        .map(|g| root.join(g))
        .filter(|d| d.join("dump.elf").is_file())
        .collect();
    if dirs.is_empty() {
        let required = std::env::var("INTROVISOR_REQUIRE_REAL_GUEST").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "INTROVISOR_REQUIRE_REAL_GUEST=1 but no real-guest fixture in {} (run host-test/real-guest/capture.sh)",
            root.display()
        );
        println!(
            "SKIP real_guests_agree_with_qemu: no real-guest fixture in {}/{{l4,l5}} (run host-test/real-guest/capture.sh; set INTROVISOR_REQUIRE_REAL_GUEST=1 to make this a failure)",
            root.display()
        );
        return;
    }
    let mut failures = Vec::new();
    for dir in &dirs {
        match compare(dir) {
            Ok(report) => {
                report.print();
                let t = report.total();
                if t.mismatches > 0 {
                    failures.push(format!("{}: {} mismatches", dir.display(), t.mismatches));
                }
                if t.matches == 0 {
                    failures.push(format!("{}: nothing was compared", dir.display()));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", dir.display())),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ----- the comparison, tested on synthetic fixtures ------------------------------------

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use core::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "introvisor-real-guest-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a guest directory in capture.sh's format: a 4- or 5-level guest with 4 KiB,
/// 2 MiB and 1 GiB pages, saved as a QEMU-style ELF core; the expected answers come from
/// the builder's record of its mappings, not from introvisor.
fn synthetic_fixture(dir: &Path, levels: u8, cr3_flags: u64) {
    let la57 = levels == 5;
    let mut g = GuestBuilder::with_levels(16 << 20, levels);
    let user = 0x5555_5555_4000u64;
    let ktext = 0xffff_ffff_8100_0000u64;
    let direct = if la57 {
        0xff11_0000_0000_0000u64
    } else {
        0xffff_8880_0000_0000u64
    };
    for i in 0..4 {
        g.map_new(Va(user + i * 0x1000), PageSize::Size4K, MapFlags::USER_DATA)
            .unwrap();
    }
    g.map_new(Va(ktext), PageSize::Size2M, MapFlags::KERNEL_TEXT)
        .unwrap();
    g.map(Va(direct), Pa(0), PageSize::Size1G, MapFlags::KERNEL_DATA)
        .unwrap();
    let noise: Vec<u8> = (0..0x6000u32).map(|i| (i ^ (i >> 8)) as u8).collect();
    g.write_virtual(Va(user), &noise[..0x4000]).unwrap();
    g.write_virtual(Va(ktext + 0x1000), &noise).unwrap();
    let g = g.finish();

    let mut rows = vec!["# va\tresult\tcategory".to_owned()];
    let mut add = |va: u64, category: &str| match g.lookup(Va(va)) {
        Some(pa) => rows.push(format!("{va:#x}\t{:#x}\t{category}", pa.0)),
        None => rows.push(format!("{va:#x}\tunmapped\t{category}\tUnmapped")),
    };
    for i in 0..64 {
        add(user + i * 0x101, "user");
        add(ktext + i * 0x8_1234, "ktext");
        add(direct + i * 0x3_4567, "directmap");
        add(user + 0x10_0000 + i * 0x1000, "unmapped");
        add(0x8000_0000_0000_0000 + i * 0x1000, "noncanonical");
    }
    // Beyond 48 bits: canonical (and unmapped) only under 5-level paging.
    add(0x0100_0000_0000_0000, "noncanonical");
    let translations = rows.join("\n") + "\n";

    let mut rows = vec!["# va\tlen\thex".to_owned()];
    for (va, len) in [
        (user + 0xffa, 64),
        (user + 0x10, 8192 + 17),
        (ktext + 0x1ff0, 64),
        (direct + 0x123, 64),
    ] {
        let bytes: Vec<u8> = (0..len)
            .map(|i| g.memory[g.lookup(Va(va + i)).unwrap().0 as usize])
            .collect();
        let hexed: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        rows.push(format!("{va:#x}\t{len}\t{hexed}"));
    }
    let bytes_tsv = rows.join("\n") + "\n";

    let cr3 = g.root.0 | cr3_flags;
    let regs = Registers {
        cr0: 0x8005_0033,
        cr3,
        cr4: 0x3606e0 | if la57 { 1 << 12 } else { 0 },
        efer: 0xd01,
        rip: user,
        cs: Segment {
            selector: 0x33,
            limit: 0xffff_ffff,
            access: 0xa0fb,
            base: 0,
        },
        ..Registers::default()
    };
    let mut elf = Vec::new();
    // Two runs with a hole between them, as RAM below and above a PCI hole.
    let half = g.memory.len() / 2;
    write_qemu_elf(
        &mut elf,
        &[
            Run {
                paddr: 0,
                bytes: &g.memory[..half],
            },
            Run {
                paddr: half as u64,
                bytes: &g.memory[half..],
            },
        ],
        &[regs],
    )
    .unwrap();
    std::fs::write(dir.join("dump.elf"), elf).unwrap();
    std::fs::write(dir.join("cr3.txt"), format!("{cr3:#x}\n")).unwrap();
    std::fs::write(dir.join("mode.txt"), format!("{levels}\n")).unwrap();
    std::fs::write(dir.join("translations.tsv"), translations).unwrap();
    std::fs::write(dir.join("bytes.tsv"), bytes_tsv).unwrap();
    std::fs::write(dir.join("regs.txt"), format!("CR3={cr3:016x}\n")).unwrap();
    std::fs::write(dir.join("counts.txt"), "# synthetic\n").unwrap();
    std::fs::write(dir.join("stamp"), "synthetic\n").unwrap();
}

#[test]
fn the_comparison_passes_on_synthetic_guests_and_finds_planted_mismatches() {
    let tmp = TempDir::new("fixture");
    for (levels, flags) in [(4u8, 0x0u64), (5, 0x7)] {
        let dir = tmp.0.join(format!("l{levels}"));
        std::fs::create_dir_all(&dir).unwrap();
        synthetic_fixture(&dir, levels, flags);
        let report = compare(&dir).unwrap();
        report.print();
        let t = report.total();
        assert_eq!(t.mismatches, 0, "{:?}", report.details);
        assert_eq!(t.qemu_deviations, 0);
        assert_eq!(t.matches, 5 * 64 + 1 + 4);
        for cat in [
            "user",
            "ktext",
            "directmap",
            "unmapped",
            "noncanonical",
            "bytes",
        ] {
            assert!(report.by_category[cat].matches > 0, "{cat}");
        }

        // Plant three mismatches: a wrong GPA, a mapped address said to be unmapped, a
        // changed byte. The comparison must find exactly those.
        let path = dir.join("translations.tsv");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let user_row = lines.iter().position(|l| l.ends_with("\tuser")).unwrap();
        let fields: Vec<String> = lines[user_row].split('\t').map(str::to_owned).collect();
        let wrong = hex(&fields[1]).unwrap() + 0x1000;
        lines[user_row] = format!("{}\t{wrong:#x}\tuser", fields[0]);
        let ktext_row = lines.iter().position(|l| l.ends_with("\tktext")).unwrap();
        let va = lines[ktext_row].split('\t').next().unwrap().to_owned();
        lines[ktext_row] = format!("{va}\tunmapped\tktext\tUnmapped");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let path = dir.join("bytes.tsv");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let last = lines.last_mut().unwrap();
        let flipped = if last.ends_with('0') { '1' } else { '0' };
        last.pop();
        last.push(flipped);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let report = compare(&dir).unwrap();
        assert_eq!(report.total().mismatches, 3, "{:?}", report.details);
        assert_eq!(report.by_category["user"].mismatches, 1);
        assert_eq!(report.by_category["ktext"].mismatches, 1);
        assert_eq!(report.by_category["bytes"].mismatches, 1);
    }
}

#[test]
fn the_comparison_checks_cr3_and_mode_against_the_dump() {
    let tmp = TempDir::new("header");
    let dir = tmp.0.join("l4");
    std::fs::create_dir_all(&dir).unwrap();
    synthetic_fixture(&dir, 4, 0);
    std::fs::write(dir.join("cr3.txt"), "0x1234000\n").unwrap();
    let err = compare(&dir).unwrap_err();
    assert!(err.contains("cr3.txt"), "{err}");
    synthetic_fixture(&dir, 4, 0);
    std::fs::write(dir.join("mode.txt"), "5\n").unwrap();
    let err = compare(&dir).unwrap_err();
    assert!(err.contains("mode.txt"), "{err}");
    std::fs::write(dir.join("dump.elf"), b"not a dump").unwrap();
    assert!(compare(&dir).is_err());
}

#[test]
fn qemu_cr3_bit63_deviation_is_recognised_only_where_it_applies() {
    let tmp = TempDir::new("bit63");
    let dir = tmp.0.join("l5");
    std::fs::create_dir_all(&dir).unwrap();
    synthetic_fixture(&dir, 5, 1 << 63);
    // What QEMU 7.2 would report with bit 63 left in CR3: every address unmapped.
    let path = dir.join("translations.tsv");
    let text = std::fs::read_to_string(&path).unwrap();
    let mapped = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains("\tunmapped\t"))
        .count() as u64;
    assert!(mapped > 64);
    let rewritten: Vec<String> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            if l.starts_with('#') || f[1] == "unmapped" {
                l.to_owned()
            } else {
                format!("{}\tunmapped\t{}\tUnmapped", f[0], f[2])
            }
        })
        .collect();
    std::fs::write(&path, rewritten.join("\n") + "\n").unwrap();
    let report = compare(&dir).unwrap();
    let t = report.total();
    assert_eq!(t.mismatches, 0, "{:?}", report.details);
    assert_eq!(t.qemu_deviations, mapped);
    // The same answers in a 4-level guest are plain mismatches.
    let dir4 = tmp.0.join("l4");
    std::fs::create_dir_all(&dir4).unwrap();
    synthetic_fixture(&dir4, 4, 1 << 63);
    std::fs::copy(&path, dir4.join("translations.tsv")).unwrap();
    let report = compare(&dir4).unwrap();
    assert!(report.total().mismatches > 0);
    assert_eq!(report.total().qemu_deviations, 0);
}
