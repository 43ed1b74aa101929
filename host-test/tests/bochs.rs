//! introvisor-ept on an emulated Intel CPU: the bare-metal test hypervisor of
//! `host-test/bochs/`, booted under Bochs.
//!
//! The test installs Bochs with apt when it is missing (`bochs bochsbios vgabios
//! bochs-term`, and `binutils` for objcopy; CI runs as root), builds the hypervisor image (release, into
//! `$HOME/.cache/introvisor/bochs-target`, so repeat runs are fast), boots it headless
//! with `host-test/bochs/run.sh` under a 120 s timeout, and reads the serial log. It
//! fails unless every scenario reports the expected events and values, both as the
//! hypervisor's handler saw them (`SCENARIO` lines) and as the guest saw them (`GUEST`
//! lines), and the expected values are computed here, not taken from the log.
//!
//! When Bochs cannot be installed it prints a SKIP line and passes, unless
//! `INTROVISOR_REQUIRE_BOCHS=1`, which makes that a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Debian packages the run needs (binutils for `objcopy`, which makes the flat image).
const PACKAGES: [&str; 5] = ["bochs", "bochsbios", "vgabios", "bochs-term", "binutils"];

/// The guest's string (host-test/bochs/src/layout.rs, GUEST_STRING).
const GUEST_STRING: &[u8] = b"introvisor walks the guest's own page tables";
/// Addresses of the guest's script (host-test/bochs/src/layout.rs).
const BOOT_TABLES: u64 = 0x0100_0000;
const OWN_TABLES: u64 = 0x0101_0000;
const STRING_VA: u64 = 0xFFFF_8000_1234_5FF3;
const WATCHED_GPA: u64 = 0x0104_0000 + 0x18;
const WATCHED_GVA: u64 = 0x0000_7F00_0000_0000 + 0x18;
const WATCHED_VALUE: u64 = 0x1122_3344_5566_7788;
const HOOK_RESULT: u64 = 0x600D_C0DE;
/// The first byte of the hooked function: `inc qword [rdi]` (48 FF 07).
const HOOKED_BYTE: u64 = 0x48;

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811C_9DC5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn require() -> bool {
    std::env::var("INTROVISOR_REQUIRE_BOCHS").is_ok_and(|v| v == "1")
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs what is missing; `Err` with the reason when it cannot.
fn ensure_bochs() -> Result<(), String> {
    let missing: Vec<&str> = PACKAGES.into_iter().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("bochs test: installing {missing:?} with apt-get");
    let install = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("apt-get: {e}"))
    };
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&missing);
    if !install(&args)?.success() {
        // The package lists may be stale or absent: refresh them once and retry.
        let _ = install(&["update"]);
        if !install(&args)?.success() {
            return Err(format!("apt-get install {missing:?} failed"));
        }
    }
    match PACKAGES.into_iter().find(|p| !installed(p)) {
        Some(p) => Err(format!("{p} is still not installed")),
        None => Ok(()),
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host-test has a parent")
        .to_path_buf()
}

/// Builds the image and boots it; returns the serial log.
fn boot() -> String {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let target = PathBuf::from(home).join(".cache/introvisor/bochs-target");
    let out = target.join("bochs-test-run");
    let crate_dir = repo().join("host-test/bochs");
    let mut cmd = Command::new(crate_dir.join("run.sh"));
    cmd.current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", &target)
        .env("BOCHS_OUT", &out)
        .env("BOCHS_TIMEOUT", "120");
    // The outer cargo's settings must not leak into the bare-metal build (its target,
    // flags and linker script come from host-test/bochs/.cargo/config.toml).
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    if let Ok(cargo) = std::env::var("CARGO") {
        // run.sh calls `cargo`: the same one that runs this test.
        let dir = Path::new(&cargo).parent().map(Path::to_path_buf);
        if let Some(dir) = dir {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", dir.display()));
        }
    }
    let output = cmd.output().expect("run host-test/bochs/run.sh");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let serial = std::fs::read_to_string(out.join("serial.txt")).unwrap_or_default();
    if serial.is_empty() {
        panic!(
            "no serial output (run.sh status {:?}); its stderr:\n{stderr}",
            output.status.code()
        );
    }
    eprintln!("{}", stderr.lines().last().unwrap_or(""));
    serial
}

/// The `key=value` fields of a line (values run to the next space; a quoted value to
/// its closing quote).
fn fields(line: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut rest = line;
    while let Some(eq) = rest.find('=') {
        let key_start = rest[..eq].rfind(' ').map_or(0, |i| i + 1);
        let key = rest[key_start..eq].to_string();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (&quoted[..end], &quoted[(end + 1).min(quoted.len())..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        map.insert(key, value.to_string());
        rest = next;
    }
    map
}

/// The one line starting with `prefix`.
fn line<'a>(log: &'a str, prefix: &str) -> &'a str {
    let found: Vec<&str> = log.lines().filter(|l| l.starts_with(prefix)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one line starting with {prefix:?}, found {found:?}"
    );
    found[0]
}

fn num(map: &BTreeMap<String, String>, key: &str) -> u64 {
    let v = map
        .get(key)
        .unwrap_or_else(|| panic!("no field {key} in {map:?}"));
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("field {key}={v} is not a number"))
}

fn text<'m>(map: &'m BTreeMap<String, String>, key: &str) -> &'m str {
    map.get(key)
        .unwrap_or_else(|| panic!("no field {key} in {map:?}"))
}

/// Checks the serial log; panics with what is wrong.
fn check(log: &str) {
    assert!(
        !log.contains("PANIC") && !log.contains("EXCEPTION") && !log.contains("FATAL"),
        "the hypervisor or the guest failed"
    );
    assert!(!log.contains("UNEXPECTED"), "an unexpected event");
    for name in [
        "cr3_write",
        "cpuid",
        "read_string",
        "write_watch",
        "breakpoint",
        "interrupt_step",
        "vmfunc",
    ] {
        let l = line(log, &format!("SCENARIO {name} "));
        assert!(l.starts_with(&format!("SCENARIO {name} ok ")), "{l}");
        let f = fields(l);
        assert!(num(&f, "exits") >= 1, "{l}");
    }

    // The CR3 write: the handler saw the switch from the boot tables to the guest's own.
    let s = fields(line(log, "SCENARIO cr3_write "));
    assert_eq!(num(&s, "events"), 1);
    assert_eq!(num(&s, "old"), BOOT_TABLES);
    assert_eq!(num(&s, "new"), OWN_TABLES);
    let g = fields(line(log, "GUEST cr3_write "));
    assert_eq!((num(&g, "old"), num(&g, "now")), (BOOT_TABLES, OWN_TABLES));

    // CPUID answered by the handler: the guest read its answer.
    let s = fields(line(log, "SCENARIO cpuid "));
    assert_eq!(num(&s, "answered"), 1);
    let g = fields(line(log, "GUEST cpuid "));
    assert_eq!(text(&g, "name"), "IntroVisorHV");
    assert_eq!(num(&g, "ebx"), u64::from(u32::from_le_bytes(*b"Intr")));

    // The string the guest placed, read by the handler through the guest's own tables.
    let s = fields(line(log, "SCENARIO read_string "));
    assert_eq!(num(&s, "va"), STRING_VA);
    assert_eq!(num(&s, "len"), GUEST_STRING.len() as u64);
    assert_eq!(num(&s, "hash"), u64::from(fnv1a(GUEST_STRING)));
    assert_eq!(text(&s, "text").as_bytes(), &GUEST_STRING[..32]);
    let g = fields(line(log, "GUEST read_string "));
    assert_eq!(num(&g, "handler_len"), GUEST_STRING.len() as u64);
    assert_eq!(num(&g, "handler_hash"), u64::from(fnv1a(GUEST_STRING)));

    // The write watch: one event with the GPA and the GVA of the alias, then allowed.
    let s = fields(line(log, "SCENARIO write_watch "));
    assert_eq!(num(&s, "events"), 1);
    assert_eq!(num(&s, "gpa"), WATCHED_GPA);
    assert_eq!(num(&s, "gva"), WATCHED_GVA);
    assert_eq!(num(&s, "value"), WATCHED_VALUE);
    let g = fields(line(log, "GUEST write_watch "));
    assert_eq!(num(&g, "va"), WATCHED_GVA);
    assert_eq!(num(&g, "read_back"), WATCHED_VALUE);

    // The stealth breakpoint: one breakpoint event; the guest's read of the hooked byte
    // saw the original; the call ran the original instruction; IF untouched (clear).
    let s = fields(line(log, "SCENARIO breakpoint "));
    assert_eq!(num(&s, "breakpoints"), 1);
    assert_eq!(num(&s, "hook_reads"), 1);
    let hooked = num(&s, "va");
    let g = fields(line(log, "GUEST breakpoint "));
    assert_eq!(num(&g, "byte"), HOOKED_BYTE);
    assert_eq!(num(&g, "call"), HOOK_RESULT);
    assert_eq!(num(&g, "runs"), 1, "the hooked instruction ran once");
    assert_eq!(num(&g, "if"), 0);

    // The interrupt during the step: the timer's interrupt was held (an external-interrupt
    // exit), the guest's handler ran once, in the view the guest runs in (where the
    // breakpoint is armed), interrupting the hooked instruction itself; the step was
    // redone (a second breakpoint event), and IF was left as the guest set it.
    let s = fields(line(log, "SCENARIO interrupt_step "));
    assert_eq!(num(&s, "breakpoints"), 2);
    assert!(num(&s, "external_interrupt_exits") >= 1);
    let g = fields(line(log, "GUEST interrupt_step "));
    assert_eq!(num(&g, "call"), HOOK_RESULT);
    assert_eq!(
        num(&g, "runs"),
        1,
        "the redone step ran the instruction once"
    );
    assert_eq!(num(&g, "isr_count"), 1);
    assert_eq!(num(&g, "isr_rip"), hooked);
    assert_eq!(num(&g, "isr_if"), 1);
    assert_eq!(num(&g, "if"), 1);
    let views = line(log, "HV: views: ");
    let watch_view = views
        .split("watch View(")
        .nth(1)
        .and_then(|v| v.split(')').next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("the watch view's number");
    assert_eq!(num(&g, "isr_view"), watch_view);

    // VMFUNC EPTP switching by the guest, without an exit: in the default view the hooked
    // byte reads with no event, back in the breakpoint view the same read is an event; the
    // VMCS's EPTP is the breakpoint view's again.
    let s = fields(line(log, "SCENARIO vmfunc "));
    assert_eq!(num(&s, "hook_reads"), 1);
    assert_eq!(num(&s, "eptp"), num(&s, "watch_view_eptp"));
    let g = fields(line(log, "GUEST vmfunc "));
    assert_eq!(num(&g, "byte_in_view0"), HOOKED_BYTE);
    assert_eq!(num(&g, "byte_in_view1"), HOOKED_BYTE);

    let summary = fields(line(log, "SUMMARY "));
    assert_eq!(text(&summary, "scenarios_passed"), "7/7");
    assert!(num(&summary, "host_stack_used") <= 64 * 1024);
    assert_eq!(line(log, "RESULT "), "RESULT pass");
}

#[test]
fn hypervisor_under_bochs() {
    if let Err(why) = ensure_bochs() {
        if require() {
            panic!("INTROVISOR_REQUIRE_BOCHS=1 but Bochs is not available: {why}");
        }
        eprintln!(
            "\n!!!!!!!! SKIP bochs: {why} (set INTROVISOR_REQUIRE_BOCHS=1 to fail instead)\n"
        );
        return;
    }
    let log = boot();
    let result = std::panic::catch_unwind(|| check(&log));
    if let Err(e) = result {
        eprintln!("---- serial log ----\n{log}---- end of serial log ----");
        std::panic::resume_unwind(e);
    }
    for l in log
        .lines()
        .filter(|l| l.starts_with("SCENARIO") || l.starts_with("SUMMARY"))
    {
        eprintln!("{l}");
    }
}

/// The parser and the checks on a log written by hand: a good one passes; each value
/// changed makes `check` fail.
#[test]
fn checks_reject_wrong_values() {
    let hash = fnv1a(GUEST_STRING);
    let good = format!(
        "HV: views: step (default) View(0), watch View(1); breakpoint at 0xb000\n\
         GUEST cr3_write old=0x1000000 new=0x1010000 now=0x1010000\n\
         SCENARIO cr3_write ok exits=3 insns=10 events=1 old=0x1000000 new=0x1010000 guest_cr3=0x1010000\n\
         GUEST cpuid leaf=0x40000000 eax=0x40000002 ebx=0x72746e49 name=IntroVisorHV\n\
         SCENARIO cpuid ok exits=3 insns=10 answered=1 leaf=0x40000000 name=IntroVisorHV\n\
         GUEST read_string va=0xffff800012345ff3 len=44 hash={hash:#x} handler_len=44 handler_hash={hash:#x}\n\
         SCENARIO read_string ok exits=3 insns=10 va=0xffff800012345ff3 len=44 hash={hash:#x} text=\"introvisor walks the guest's own\"\n\
         GUEST write_watch wrote=0x1122334455667788 va=0x7f0000000018 read_back=0x1122334455667788\n\
         SCENARIO write_watch ok exits=4 insns=10 events=1 gpa=0x1040018 gva=0x7f0000000018 value=0x1122334455667788 mtf=1\n\
         GUEST breakpoint byte=0x48 call=0x600dc0de runs=1 if=0\n\
         SCENARIO breakpoint ok exits=6 insns=10 breakpoints=1 hook_reads=1 va=0xb000 if_at_break=0 mtf=2\n\
         GUEST interrupt_step call=0x600dc0de runs=1 if=1 isr_count=1 isr_view=1 isr_rip=0xb000 isr_if=1\n\
         SCENARIO interrupt_step ok exits=9 insns=10 breakpoints=2 external_interrupt_exits=1 isr_view=Some(View(1)) mtf=1\n\
         GUEST vmfunc byte_in_view0=0x48 byte_in_view1=0x48\n\
         SCENARIO vmfunc ok exits=3 insns=10 hook_reads=1 eptp=0x21a01e watch_view_eptp=0x21a01e\n\
         SUMMARY exits=40 external_interrupts=1 mtf=4 insns=100 scenarios_passed=7/7 host_stack_used=9000 of 65536\n\
         RESULT pass\n"
    );
    check(&good);
    for (from, to) in [
        ("new=0x1010000 guest", "new=0x1020000 guest"),
        ("name=IntroVisorHV\nSCENARIO", "name=IntroVisorHX\nSCENARIO"),
        ("handler_len=44", "handler_len=43"),
        ("gpa=0x1040018", "gpa=0x1041018"),
        ("gva=0x7f0000000018 value", "gva=0x1040018 value"),
        ("byte=0x48", "byte=0xcc"),
        ("runs=1 if=0", "runs=2 if=0"),
        ("runs=1 if=1", "runs=0 if=1"),
        ("breakpoints=1 ", "breakpoints=2 "),
        ("isr_view=1", "isr_view=0"),
        ("isr_rip=0xb000", "isr_rip=0xb005"),
        ("external_interrupt_exits=1", "external_interrupt_exits=0"),
        ("SCENARIO cpuid ok", "SCENARIO cpuid FAIL"),
        ("RESULT pass", "RESULT fail"),
        ("if=0\n", "if=1\n"),
        ("hook_reads=1 eptp", "hook_reads=2 eptp"),
        ("eptp=0x21a01e watch", "eptp=0x21401e watch"),
        ("byte_in_view0=0x48", "byte_in_view0=0xcc"),
    ] {
        assert!(good.contains(from), "{from}");
        let bad = good.replacen(from, to, 1);
        assert!(
            std::panic::catch_unwind(|| check(&bad)).is_err(),
            "check accepted {from:?} -> {to:?}"
        );
    }
    assert_eq!(
        fields("a=1 b=\"x y\" c=0x2"),
        BTreeMap::from([
            ("a".into(), "1".into()),
            ("b".into(), "x y".into()),
            ("c".into(), "0x2".into())
        ])
    );
}
