//! `introvisor info`: what a dump holds.

use core::fmt::Write as _;
use std::ffi::OsString;
use std::io::Write;

use super::args;
use super::target::{self, mode_name};
use super::{EXIT_OK, Failure, help};
use introvisor_host::dump::{DumpInfo, RegisterSource};

/// A size in bytes, with a binary unit when it is large.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}

/// The description `info` prints.
pub(crate) fn describe(info: &DumpInfo) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "file:    {}", info.path.display());
    let _ = writeln!(s, "format:  {}", info.format);
    let _ = writeln!(
        s,
        "size:    {} bytes ({})",
        info.file_size,
        human(info.file_size)
    );
    let total: u64 = info.ranges.iter().map(|r| r.len).sum();
    let _ = writeln!(
        s,
        "memory:  {} bytes ({}) in {} range(s)",
        total,
        human(total),
        info.ranges.len()
    );
    for r in &info.ranges {
        let _ = writeln!(
            s,
            "  {:#018x}-{:#018x}  {:>10}  at file offset {:#x}",
            r.start.0,
            r.end().saturating_sub(1),
            human(r.len),
            r.offset
        );
    }
    let _ = writeln!(s, "vcpus:   {}", info.vcpus.len());
    for (i, v) in info.vcpus.iter().enumerate() {
        let r = &v.registers;
        match v.source {
            RegisterSource::QemuCpuState { version, size } => {
                let _ = writeln!(
                    s,
                    "  vcpu {i}: cr3={:#x} {} cr0={:#x} cr4={:#x} efer={:#x} (derived) rip={:#x} cpl={} (QEMU CPU state v{version}, {size} bytes)",
                    r.cr3,
                    mode_name(r.paging_mode()),
                    r.cr0,
                    r.cr4,
                    r.efer,
                    r.rip,
                    r.cpl(),
                );
            }
            RegisterSource::PrStatus => {
                let _ = writeln!(
                    s,
                    "  vcpu {i}: rip={:#x} rsp={:#x} (NT_PRSTATUS only: no control registers, use --cr3)",
                    r.rip, r.rsp
                );
            }
        }
    }
    for n in &info.other_notes {
        let _ = writeln!(s, "note:    {} type {} ({} bytes)", n.name, n.kind, n.size);
    }
    for w in &info.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    s
}

pub(crate) fn run(argv: &[OsString], stdout: &mut dyn Write) -> Result<i32, Failure> {
    let opts = args::parse(argv, &[])?;
    if opts.flag("help") {
        stdout.write_all(help::INFO.as_bytes())?;
        return Ok(EXIT_OK);
    }
    let [path] = opts.positionals.as_slice() else {
        return Err(Failure::usage(format!(
            "expected one DUMP argument, got {}",
            opts.positionals.len()
        )));
    };
    let (_, info) = target::open(path)?;
    stdout.write_all(describe(&info).as_bytes())?;
    Ok(EXIT_OK)
}
