//! `introvisor ps`, `modules`, `symbols`, `maps` and `linux`: a Linux guest read from
//! its memory alone (`introvisor::os::linux`), with no profile.

use core::fmt::Write as _;
use core::ops::ControlFlow;
use std::ffi::OsString;
use std::io::Write;
use std::time::Instant;

use introvisor::arch::amd64::PagingMode;
use introvisor::os::linux::{FindHint, LinuxError, LinuxOs, VmcoreinfoUse};
use introvisor::{Pa, VmiCore};
use introvisor_host::HostDriver;

use super::args::{self, Opt};
use super::escape::escape;
use super::json;
use super::target;
use super::{EXIT_FAULT, EXIT_OK, Failure, help};

/// The options every Linux command takes.
const OPTS: [Opt; 5] = [
    target::FORMAT_OPTION,
    Opt {
        name: "json",
        short: None,
        takes_value: false,
    },
    Opt {
        name: "cr3",
        short: None,
        takes_value: true,
    },
    Opt {
        name: "vcpu",
        short: None,
        takes_value: true,
    },
    Opt {
        name: "no-vmcoreinfo",
        short: None,
        takes_value: false,
    },
];

/// A JSON string literal of guest bytes (decoded lossily; see `json`).
fn js(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    json::string(&mut out, &String::from_utf8_lossy(bytes));
    out
}

/// Guest bytes up to their first NUL.
fn until_nul(bytes: &[u8]) -> &[u8] {
    let n = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    bytes.get(..n).unwrap_or(bytes)
}

/// Guest bytes for a terminal (see `escape`).
fn text(bytes: &[u8]) -> String {
    escape(until_nul(bytes))
}

struct Found {
    core: VmiCore<HostDriver>,
    os: LinuxOs,
    registers: Option<introvisor::arch::amd64::Registers>,
    millis: u128,
    hint: FindHint,
}

/// Opens the dump and finds the kernel.
fn find(path: &OsString, opts: &args::Parsed) -> Result<Found, Failure> {
    let cr3 = opts
        .value("cr3")
        .map(|v| args::hex_arg(v, "CR3"))
        .transpose()?;
    let vcpu = opts
        .value("vcpu")
        .map(|v| args::count_arg(v, "vCPU number"))
        .transpose()?;
    let (driver, info) = target::open(path, target::format_choice(opts)?)?;
    // As `translate` and `read` choose it: a --vcpu the dump lacks is an error.
    let registers = target::vcpu_registers(vcpu, &info)?;
    let hint = FindHint {
        cr3: cr3.map(Pa).or(registers.map(|r| r.translation_root())),
        mode: registers
            .map(|r| r.paging_mode())
            .filter(|m| matches!(m, PagingMode::Level4 | PagingMode::Level5)),
        ignore_vmcoreinfo: opts.flag("no-vmcoreinfo"),
    };
    let core = VmiCore::new(driver);
    let mut scratch = vec![0u8; 1 << 20];
    let t = Instant::now();
    let os = LinuxOs::find(&core, hint, &mut scratch)
        .map_err(|e| Failure::Fault(format!("no Linux kernel found: {e}")))?;
    Ok(Found {
        core,
        os,
        registers,
        millis: t.elapsed().as_millis(),
        hint,
    })
}

fn fault(e: LinuxError) -> Failure {
    Failure::Fault(e.to_string())
}

fn parse(
    argv: &[OsString],
    text: &str,
    stdout: &mut dyn Write,
) -> Result<Option<args::Parsed>, Failure> {
    let opts = args::parse(argv, &OPTS)?;
    if opts.flag("help") {
        stdout.write_all(text.as_bytes())?;
        return Ok(None);
    }
    if opts.positionals.is_empty() {
        return Err(Failure::usage("expected a DUMP argument"));
    }
    Ok(Some(opts))
}

/// `introvisor ps DUMP`.
pub(crate) fn ps(argv: &[OsString], stdout: &mut dyn Write) -> Result<i32, Failure> {
    let Some(opts) = parse(argv, help::PS, stdout)? else {
        return Ok(EXIT_OK);
    };
    if opts.positionals.len() != 1 {
        return Err(Failure::usage("expected one DUMP argument"));
    }
    let f = find(&opts.positionals[0], &opts)?;
    let json = opts.flag("json");
    let mut out = String::new();
    f.os.tasks(&f.core, |t| {
        if json {
            let _ = writeln!(
                out,
                "{{\"pid\":{},\"ppid\":{},\"comm\":{},\"pgd\":\"{:#x}\",\"user_pgd\":{},\"tgid\":{},\"state\":{},\"task\":\"{:#x}\",\"kernel_thread\":{}}}",
                t.pid, t.ppid, js(until_nul(&t.comm)), t.pgd.0,
                t.user_pgd.map_or("null".to_owned(), |p| format!("\"{:#x}\"", p.0)),
                t.tgid, t.state, t.task.0, t.is_kernel_thread()
            );
        } else {
            let _ = writeln!(out, "{} {} {} {:#x}", t.pid, t.ppid, text(&t.comm), t.pgd.0);
        }
        ControlFlow::Continue(())
    })
    .map_err(fault)?;
    stdout.write_all(out.as_bytes())?;
    Ok(EXIT_OK)
}

/// `introvisor modules DUMP`.
pub(crate) fn modules(argv: &[OsString], stdout: &mut dyn Write) -> Result<i32, Failure> {
    let Some(opts) = parse(argv, help::MODULES, stdout)? else {
        return Ok(EXIT_OK);
    };
    if opts.positionals.len() != 1 {
        return Err(Failure::usage("expected one DUMP argument"));
    }
    let f = find(&opts.positionals[0], &opts)?;
    let json = opts.flag("json");
    let mut out = String::new();
    f.os.modules_list(&f.core, |m| {
        if json {
            let _ = writeln!(
                out,
                "{{\"name\":{},\"base\":\"{:#x}\",\"size\":{},\"object\":\"{:#x}\"}}",
                js(until_nul(&m.name)),
                m.base.0,
                m.size,
                m.object.0
            );
        } else {
            let _ = writeln!(out, "{} {:#x} {}", text(&m.name), m.base.0, m.size);
        }
        ControlFlow::Continue(())
    })
    .map_err(fault)?;
    stdout.write_all(out.as_bytes())?;
    Ok(EXIT_OK)
}

/// `introvisor symbols DUMP [NAME...]`.
pub(crate) fn symbols(
    argv: &[OsString],
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<i32, Failure> {
    let Some(opts) = parse(argv, help::SYMBOLS, stdout)? else {
        return Ok(EXIT_OK);
    };
    let f = find(&opts.positionals[0], &opts)?;
    let names: Vec<String> = opts.positionals[1..]
        .iter()
        .map(|n| args::show(n))
        .collect();
    let json = opts.flag("json");
    let mut seen = vec![false; names.len()];
    let mut out = Vec::with_capacity(if names.is_empty() { 8 << 20 } else { 4096 });
    let mut write_err = None;
    f.os.kallsyms
        .for_each(&f.core, |s| {
            let name = s.name;
            if !names.is_empty() {
                match names.iter().position(|n| n.as_bytes() == name) {
                    Some(i) => seen[i] = true,
                    None => return ControlFlow::Continue(()),
                }
            }
            let r = if json {
                writeln!(
                    out,
                    "{{\"address\":\"{:#x}\",\"type\":{},\"name\":{}}}",
                    s.address,
                    js(&[s.kind]),
                    js(name)
                )
            } else {
                writeln!(out, "{:016x} {} {}", s.address, text(&[s.kind]), text(name))
            };
            if let Err(e) = r {
                write_err = Some(e);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })
        .map_err(fault)?;
    if let Some(e) = write_err {
        return Err(Failure::Output(e));
    }
    stdout.write_all(&out)?;
    let mut code = EXIT_OK;
    for (n, found) in names.iter().zip(seen) {
        if !found {
            let _ = writeln!(stderr, "introvisor symbols: no symbol named '{n}'");
            code = EXIT_FAULT;
        }
    }
    Ok(code)
}

/// `introvisor maps DUMP PID`.
pub(crate) fn maps(argv: &[OsString], stdout: &mut dyn Write) -> Result<i32, Failure> {
    let Some(opts) = parse(argv, help::MAPS, stdout)? else {
        return Ok(EXIT_OK);
    };
    let [path, pid] = opts.positionals.as_slice() else {
        return Err(Failure::usage("expected DUMP and PID"));
    };
    let pid: u32 = args::show(pid).parse().map_err(|_| {
        Failure::usage(format!(
            "PID must be a decimal number, not '{}'",
            args::show(pid)
        ))
    })?;
    let f = find(path, &opts)?;
    let task = f.os.process(&f.core, pid).map_err(|e| match e {
        LinuxError::ProcessNotFound => Failure::Fault(format!("no process with pid {pid}")),
        e => fault(e),
    })?;
    let json = opts.flag("json");
    let mut out = String::new();
    f.os.vmas(&f.core, task.task, |v| {
        let rights = format!(
            "{}{}{}{}",
            if v.flags & 1 != 0 { 'r' } else { '-' },
            if v.flags & 2 != 0 { 'w' } else { '-' },
            if v.flags & 4 != 0 { 'x' } else { '-' },
            if v.flags & 8 != 0 { 's' } else { 'p' },
        );
        if json {
            let _ = writeln!(
                out,
                "{{\"start\":\"{:#x}\",\"end\":\"{:#x}\",\"rights\":\"{rights}\",\"flags\":\"{:#x}\",\"file\":{}}}",
                v.start.0, v.end.0, v.flags,
                if v.file == 0 { "null".to_owned() } else { js(until_nul(&v.file_name)) }
            );
        } else {
            let _ = writeln!(out, "{:08x}-{:08x} {rights} {}", v.start.0, v.end.0, text(&v.file_name));
        }
        ControlFlow::Continue(())
    })
    .map_err(fault)?;
    stdout.write_all(out.as_bytes())?;
    Ok(EXIT_OK)
}

/// `introvisor linux DUMP`.
pub(crate) fn linux(argv: &[OsString], stdout: &mut dyn Write) -> Result<i32, Failure> {
    let Some(opts) = parse(argv, help::LINUX, stdout)? else {
        return Ok(EXIT_OK);
    };
    if opts.positionals.len() != 1 {
        return Err(Failure::usage("expected one DUMP argument"));
    }
    let f = find(&opts.positionals[0], &opts)?;
    let os = &f.os;
    let k = &os.kallsyms;
    let mode = match os.space.mode {
        PagingMode::Level5 => "5-level",
        _ => "4-level",
    };
    let (vmci, vmci_why) = match &os.vmcoreinfo {
        VmcoreinfoUse::Absent => ("absent".to_owned(), String::new()),
        VmcoreinfoUse::Used(v) => (
            format!("used (at {:#x}, OSRELEASE={})", v.pa, v.osrelease()),
            String::new(),
        ),
        VmcoreinfoUse::Rejected(v, e) => (format!("rejected (at {:#x})", v.pa), e.to_string()),
    };
    let current = f
        .registers
        .and_then(|r| os.current_task(&f.core, &r).ok())
        .map(|t| {
            (
                t.pid,
                String::from_utf8_lossy(until_nul(&t.comm)).into_owned(),
            )
        });
    let rows: Vec<(&str, String)> = vec![
        ("banner", os.banner().to_owned()),
        ("release", os.release().to_owned()),
        ("paging", mode.to_owned()),
        ("kernel_root", format!("{:#x}", os.space.root.0)),
        ("text", format!("{:#x}", os.space.text.0)),
        ("end", format!("{:#x}", os.space.end.0)),
        ("kaslr_slide", format!("{:#x}", os.space.kaslr_slide())),
        ("phys_base", format!("{:#x}", os.space.phys_base())),
        (
            "page_offset_base",
            format!("{:#x}", os.space.page_offset_base),
        ),
        ("image_found_by", format!("{:?}", os.image_found_by)),
        ("pti", os.pti.to_string()),
        ("kallsyms_token_table", format!("{:#x}", k.token_table)),
        ("kallsyms_names", format!("{:#x}", k.names)),
        ("kallsyms_offsets", format!("{:#x}", k.offsets)),
        ("kallsyms_relative_base", format!("{:#x}", k.relative_base)),
        ("kallsyms_symbols", k.num_syms.to_string()),
        ("kallsyms_layout", format!("{:?}", k.layout)),
        ("kallsyms_encoding", format!("{:?}", k.encoding)),
        ("btf", format!("{:#x}", os.btf.start)),
        ("btf_bytes", os.btf.len.to_string()),
        ("btf_types", os.btf.num_types.to_string()),
        ("btf_found_by", format!("{:?}", os.btf_found_by)),
        ("vmcoreinfo", vmci),
        ("vmcoreinfo_rejected_because", vmci_why),
        (
            "cr3_hint",
            f.hint
                .cr3
                .map_or("none".to_owned(), |p| format!("{:#x}", p.0)),
        ),
        (
            "current_task",
            current.map_or("unknown".to_owned(), |(p, c)| format!("{p} {c}")),
        ),
        ("find_ms", f.millis.to_string()),
    ];
    let mut out = String::new();
    if opts.flag("json") {
        out.push('{');
        for (i, (key, value)) in rows.iter().enumerate() {
            let _ = write!(
                out,
                "{}{}:{}",
                if i > 0 { "," } else { "" },
                js(key.as_bytes()),
                js(value.as_bytes())
            );
        }
        out.push_str("}\n");
    } else {
        for (key, value) in rows.iter().filter(|(_, v)| !v.is_empty()) {
            let _ = writeln!(out, "{key}: {}", escape(value.as_bytes()));
        }
    }
    stdout.write_all(out.as_bytes())?;
    Ok(EXIT_OK)
}
