//! `introvisor info`: what a dump holds.

use core::fmt::Write as _;
use std::ffi::OsString;
use std::io::Write;

use super::args::{self, Opt};
use super::escape;
use super::json::{self, Object};
use super::target::{self, mode_name, mode_option};
use super::{EXIT_OK, Failure, help};
use introvisor_host::dump::{DumpFormat, DumpInfo, RegisterSource};

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

/// The detected format, or the one `--format` asked for.
pub(crate) fn format_line(info: &DumpInfo) -> String {
    match (info.format, info.forced) {
        (DumpFormat::Raw, true) => "raw (as --format raw asked)".to_owned(),
        (format, true) => format!("{format} (as --format asked)"),
        (format, false) => format.to_string(),
    }
}

/// The description `info` prints.
pub(crate) fn describe(info: &DumpInfo) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "file:    {}",
        escape::escape(info.path.as_os_str().as_encoded_bytes())
    );
    let _ = writeln!(s, "format:  {}", format_line(info));
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
            r.last().unwrap_or(r.start.0),
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
        let _ = writeln!(
            s,
            "note:    {} type {} ({} bytes)",
            escape::show(&n.name, n.name_len),
            n.kind,
            n.size
        );
    }
    for w in &info.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    s
}

/// The description `info --json` prints: one object (see `info --help`).
pub(crate) fn describe_json(info: &DumpInfo) -> String {
    let (kind, elf) = match info.format {
        DumpFormat::Raw => ("raw", None),
        DumpFormat::Lime { .. } => ("lime", None),
        DumpFormat::Elf { class, machine } => (
            "elf",
            Some(
                Object::new()
                    .str("class", &class.to_string())
                    .str("machine", &machine.to_string())
                    .finish(),
            ),
        ),
    };
    let ranges = info.ranges.iter().map(|r| {
        Object::new()
            .hex("start", r.start.0)
            .hex("end", r.last().unwrap_or(r.start.0))
            .num("len", r.len)
            .num("file_offset", r.offset)
            .finish()
    });
    let vcpus = info.vcpus.iter().enumerate().map(|(i, v)| {
        let r = &v.registers;
        let o = Object::new().num("index", i as u64);
        match v.source {
            RegisterSource::QemuCpuState { version, size } => o
                .str("source", "qemu-cpu-state")
                .num("state_version", u64::from(version))
                .num("state_size", u64::from(size))
                .bool("control_registers", true)
                .hex("cr0", r.cr0)
                .hex("cr3", r.cr3)
                .hex("cr4", r.cr4)
                .hex("efer", r.efer)
                .bool("efer_derived", true)
                .str("paging", mode_option(r.paging_mode()))
                .hex("rip", r.rip)
                .hex("rsp", r.rsp)
                .num("cpl", u64::from(r.cpl())),
            RegisterSource::PrStatus => o
                .str("source", "prstatus")
                .bool("control_registers", false)
                .hex("rip", r.rip)
                .hex("rsp", r.rsp),
        }
        .finish()
    });
    let notes = info.other_notes.iter().map(|n| {
        Object::new()
            .str("name", &String::from_utf8_lossy(&n.name))
            .str("name_hex", &{
                let mut hex = String::new();
                json::hex_bytes(&mut hex, &n.name);
                hex
            })
            .num("name_len", n.name_len as u64)
            .num("type", u64::from(n.kind))
            .num("size", u64::from(n.size))
            .finish()
    });
    let o = Object::new()
        .str("file", &info.path.to_string_lossy())
        .str("format", kind)
        .str("description", &format_line(info))
        .bool("forced", info.forced);
    let o = match elf {
        Some(elf) => o.raw("elf", &elf),
        None => o.null("elf"),
    };
    o.num("file_size", info.file_size)
        .num("memory_size", info.ranges.iter().map(|r| r.len).sum())
        .raw("ranges", &json::array(ranges))
        .raw("vcpus", &json::array(vcpus))
        .raw("notes", &json::array(notes))
        .raw(
            "warnings",
            &json::strings(info.warnings.iter().map(String::as_str)),
        )
        .finish()
}

pub(crate) fn run(argv: &[OsString], stdout: &mut dyn Write) -> Result<i32, Failure> {
    let json_option = Opt {
        name: "json",
        short: None,
        takes_value: false,
    };
    let opts = args::parse(argv, &[target::FORMAT_OPTION, json_option])?;
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
    let (_, info) = target::open(path, target::format_choice(&opts)?)?;
    if opts.flag("json") {
        writeln!(stdout, "{}", describe_json(&info))?;
    } else {
        stdout.write_all(describe(&info).as_bytes())?;
    }
    Ok(EXIT_OK)
}
