//! `introvisor translate`: one line per virtual address.

use core::fmt::Write as _;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};

use introvisor::arch::amd64::{PageTableEntry, Paging, PagingMode, level_name};
use introvisor::{FaultReason, PageFault, Translation, Va, VmiError, WalkStep};

use super::args::{self, Opt, parse_hex};
use super::escape;
use super::json::{self, Object};
use super::progress::Progress;
use super::target::{self, Target, WALK_OPTIONS, mode_name};
use super::{EXIT_OK, EXIT_USAGE, Failure, help};

/// The longest line read from standard input, in bytes, without its newline. A longer
/// line is an error; it is read past, never held whole.
pub(crate) const MAX_LINE: usize = 4096;

/// Reads one line (up to and without its `\n`) into `line`, keeping at most
/// [`MAX_LINE`] + 1 bytes of it and discarding the rest as it goes; returns the line's
/// full length, or `None` at the end of the input.
fn read_line(input: &mut dyn BufRead, line: &mut Vec<u8>) -> std::io::Result<Option<u64>> {
    line.clear();
    let mut len = 0u64;
    let mut any = false;
    loop {
        let buf = match input.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(any.then_some(len));
        }
        any = true;
        let newline = buf.iter().position(|&b| b == b'\n');
        let text = buf.get(..newline.unwrap_or(buf.len())).unwrap_or_default();
        let room = (MAX_LINE + 1).saturating_sub(line.len());
        line.extend_from_slice(text.get(..room).unwrap_or(text));
        len = len.saturating_add(text.len() as u64);
        let used = newline.map_or(buf.len(), |at| at + 1);
        input.consume(used);
        if newline.is_some() {
            return Ok(Some(len));
        }
    }
}

/// The stable, greppable name of a fault reason (see `translate --help`).
pub(crate) fn reason_name(reason: FaultReason) -> &'static str {
    match reason {
        FaultReason::NotPresent => "not-present",
        FaultReason::ReservedBit => "reserved-bit",
        FaultReason::OutOfMemory => "table-outside-memory",
        FaultReason::NonCanonical => "non-canonical",
        FaultReason::AccessDenied => "access-denied",
        _ => "fault",
    }
}

/// `<reason> level=<n> entry=0x<pa> value=0x<raw>`.
pub(crate) fn fault_text(pf: &PageFault) -> String {
    format!(
        "{} level={} entry={:#x} value={:#x}",
        reason_name(pf.reason),
        pf.level,
        pf.entry.0,
        pf.value
    )
}

fn size_name(size: u64) -> String {
    match size {
        s if s >= 1 << 30 => format!("{}G", s >> 30),
        s if s >= 1 << 20 => format!("{}M", s >> 20),
        s => format!("{}K", s >> 10),
    }
}

/// The walk of `va`, as `#` lines, then the result line.
fn verbose(t: &Target, va: u64, out: &mut dyn Write) -> Result<Option<VmiError>, Failure> {
    let paging: &Paging = &t.paging;
    let mut steps: Vec<WalkStep> = Vec::with_capacity(5);
    let result = t
        .core
        .translate_with(paging, Va(va), t.root, |s| steps.push(s));
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# {va:#x}: {}, cr3 {:#x} (table at {:#x}), MAXPHYADDR {}, NXE {}, PSE {}",
        mode_name(paging.mode),
        t.root.0,
        paging.root_table(t.root).0,
        paging.max_phys_addr,
        u8::from(paging.nxe),
        u8::from(paging.pse)
    );
    let hexw = if paging.mode == PagingMode::Bits32 {
        8
    } else {
        16
    };
    for s in &steps {
        let label = format!(
            "{}[{}]",
            level_name(paging.mode, s.level),
            paging.mode.table_index(s.level, Va(va))
        );
        let _ = writeln!(
            text,
            "#   {label:<11} at {:#x} = 0x{:0hexw$x}  {}",
            s.entry.0,
            s.value,
            PageTableEntry::new(s.value).names(paging.mode, s.level)
        );
    }
    let line = match result {
        Ok(Translation {
            pa,
            page_size,
            access,
            user,
        }) => {
            let _ = writeln!(
                text,
                "#   => {} page at {:#x}, {access} {}",
                size_name(page_size),
                pa.0 & !(page_size - 1),
                if user { "user" } else { "supervisor" }
            );
            format!("{va:#x} {:#x}", pa.0)
        }
        Err(VmiError::Translation(pf)) => {
            let _ = writeln!(
                text,
                "#   => {} at level {} (entry at {:#x} = {:#x})",
                pf.reason, pf.level, pf.entry.0, pf.value
            );
            format!("{va:#x} unmapped {}", fault_text(&pf))
        }
        Err(e) => {
            out.write_all(text.as_bytes())?;
            return Ok(Some(e));
        }
    };
    let _ = writeln!(text, "{line}");
    out.write_all(text.as_bytes())?;
    Ok(None)
}

/// The JSON Lines object of `va` (see `translate --help`), with the walk's entries if
/// `walk`; `Some(error)` for a failure that is not a page fault (its object says so too).
fn one_json(
    t: &Target,
    va: u64,
    walk: bool,
    out: &mut dyn Write,
) -> Result<Option<VmiError>, Failure> {
    let mut steps: Vec<WalkStep> = Vec::new();
    let result = if walk {
        t.core
            .translate_with(&t.paging, Va(va), t.root, |s| steps.push(s))
    } else {
        t.core.translate(Va(va), t.root)
    };
    let o = Object::new().hex("va", va);
    let (o, other) = match result {
        Ok(tr) => (
            o.bool("mapped", true)
                .hex("pa", tr.pa.0)
                .num("page_size", tr.page_size)
                .str("access", &tr.access.to_string())
                .bool("user", tr.user),
            None,
        ),
        Err(VmiError::Translation(pf)) => (
            o.bool("mapped", false)
                .str("error", "page-fault")
                .str("reason", reason_name(pf.reason))
                .num("level", u64::from(pf.level))
                .hex("entry", pf.entry.0)
                .hex("value", pf.value),
            None,
        ),
        Err(e) => (
            o.bool("mapped", false)
                .str("error", "walk-failed")
                .str("message", &e.to_string()),
            Some(e),
        ),
    };
    let o = if walk {
        let mode = t.paging.mode;
        o.raw(
            "walk",
            &json::array(steps.iter().map(|s| {
                Object::new()
                    .num("level", u64::from(s.level))
                    .str("name", level_name(mode, s.level))
                    .num("index", u64::from(mode.table_index(s.level, Va(va))))
                    .hex("entry", s.entry.0)
                    .hex("value", s.value)
                    .str(
                        "flags",
                        &PageTableEntry::new(s.value)
                            .names(mode, s.level)
                            .to_string(),
                    )
                    .finish()
            })),
        )
    } else {
        o
    };
    writeln!(out, "{}", o.finish())?;
    Ok(other)
}

/// Translates one address and prints its line (or, with `json`, its object); `Some(error)`
/// for a failure that is not a page fault.
fn one(
    t: &Target,
    va: u64,
    verbose_walk: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<Option<VmiError>, Failure> {
    if json {
        return one_json(t, va, verbose_walk, out);
    }
    if verbose_walk {
        return verbose(t, va, out);
    }
    match t.core.translate(Va(va), t.root) {
        Ok(tr) => writeln!(out, "{va:#x} {:#x}", tr.pa.0)?,
        Err(VmiError::Translation(pf)) => writeln!(out, "{va:#x} unmapped {}", fault_text(&pf))?,
        Err(e) => return Ok(Some(e)),
    }
    Ok(None)
}

pub(crate) fn run(
    argv: &[OsString],
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    stderr_is_terminal: bool,
) -> Result<i32, Failure> {
    let mut spec: Vec<Opt> = WALK_OPTIONS.into_iter().collect();
    spec.push(Opt {
        name: "verbose",
        short: Some('v'),
        takes_value: false,
    });
    spec.push(Opt {
        name: "json",
        short: None,
        takes_value: false,
    });
    let opts = args::parse(argv, &spec)?;
    if opts.flag("help") {
        stdout.write_all(help::TRANSLATE.as_bytes())?;
        return Ok(EXIT_OK);
    }
    let Some((dump, vas)) = opts.positionals.split_first() else {
        return Err(Failure::usage("missing the DUMP argument"));
    };
    // Arguments are checked before any output.
    let mut addresses = Vec::with_capacity(vas.len());
    for v in vas {
        let text = v
            .to_str()
            .ok_or_else(|| Failure::input(format!("malformed VA '{}'", args::show(v))))?;
        addresses.push(args::hex_arg(text, "VA")?);
    }
    let target = target::resolve(dump, &opts)?;
    if let Some(note) = &target.note {
        let _ = writeln!(stderr, "introvisor translate: note: {note}");
    }
    let verbose_walk = opts.flag("verbose");
    let json = opts.flag("json");
    let forced = opts.flag("progress");
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout);
    let mut other_error = None;

    if !addresses.is_empty() {
        let mut progress = Progress::new(
            "translate",
            "addresses",
            Some(addresses.len() as u64),
            stderr_is_terminal,
            forced,
        );
        for &va in &addresses {
            if let Some(e) = one(&target, va, verbose_walk, json, &mut out)? {
                other_error.get_or_insert((va, e));
            }
            progress.add(1, stderr);
        }
        progress.finish(stderr);
    } else {
        let mut input = BufReader::with_capacity(1 << 16, stdin);
        let mut progress =
            Progress::new("translate", "addresses", None, stderr_is_terminal, forced);
        let mut malformed = 0u64;
        let mut line = Vec::new();
        let mut number = 0u64;
        loop {
            // Flush before blocking on input, so that a coprocess sees each answer.
            if input.buffer().is_empty() {
                out.flush()?;
            }
            let Some(len) = read_line(&mut input, &mut line)
                .map_err(|e| Failure::input(format!("cannot read standard input: {e}")))?
            else {
                break;
            };
            number += 1;
            if len > MAX_LINE as u64 {
                malformed += 1;
                // Best effort, as all messages. The line itself is not echoed.
                let _ = writeln!(
                    stderr,
                    "introvisor translate: line {number}: {len} bytes, longer than the limit of {MAX_LINE} (skipped)"
                );
                continue;
            }
            let text = line.trim_ascii();
            if text.is_empty() || text.starts_with(b"#") {
                continue;
            }
            let Some(va) = core::str::from_utf8(text).ok().and_then(parse_hex) else {
                malformed += 1;
                let _ = writeln!(
                    stderr,
                    "introvisor translate: line {number}: malformed VA '{}' (skipped)",
                    escape::show(text, text.len())
                );
                continue;
            };
            if let Some(e) = one(&target, va, verbose_walk, json, &mut out)? {
                other_error.get_or_insert((va, e));
            }
            progress.add(1, stderr);
        }
        progress.finish(stderr);
        out.flush()?;
        if malformed > 0 {
            let _ = writeln!(
                stderr,
                "introvisor translate: {malformed} malformed line(s) in the input"
            );
            return Ok(EXIT_USAGE);
        }
    }
    out.flush()?;
    if let Some((va, e)) = other_error {
        return Err(Failure::Fault(format!("walk of {va:#x} failed: {e}")));
    }
    Ok(EXIT_OK)
}
