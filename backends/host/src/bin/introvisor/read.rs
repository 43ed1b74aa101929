//! `introvisor read`: a hex dump, or raw bytes, of virtual memory.

use std::ffi::OsString;
use std::io::Write;

use introvisor::{AccessContext, VmiError};

use super::args::{self, Opt};
use super::progress::Progress;
use super::target::{self, Target, WALK_OPTIONS};
use super::translate::fault_text;
use super::{EXIT_OK, Failure, help};

/// Bytes read and written at a time.
const CHUNK: usize = 1 << 16;
const PAGE: u64 = 4096;

/// Why the byte at `va` cannot be read, in words.
fn explain(va: u64, error: &VmiError) -> String {
    match error {
        VmiError::Translation(pf) => format!("{va:#x} is not mapped ({})", fault_text(pf)),
        VmiError::OutOfBounds(pa) => {
            format!("{va:#x} maps to {:#x}, which the dump does not hold", pa.0)
        }
        VmiError::GfnNotPresent(gfn) => format!(
            "{va:#x} maps to {:#x}, which the dump does not hold",
            gfn.0.wrapping_mul(PAGE) | (va & (PAGE - 1))
        ),
        other => format!("{va:#x} cannot be read: {other}"),
    }
}

/// Reads `[va, va + len)` page by page into a scratch buffer; the first address that
/// fails, and why.
fn check(
    t: &Target,
    va: u64,
    len: u64,
    progress: &mut Progress,
    err: &mut dyn Write,
) -> Result<(), (u64, VmiError)> {
    let mut scratch = [0u8; PAGE as usize];
    let mut done = 0u64;
    while done < len {
        let at = va.wrapping_add(done);
        let n = (PAGE - (at & (PAGE - 1))).min(len - done);
        let buf = scratch.get_mut(..n as usize).unwrap_or_default();
        t.core
            .read(AccessContext::paging(introvisor::Va(at), t.root), buf)
            .map_err(|e| (at, e))?;
        done += n;
        progress.add(n, err);
    }
    Ok(())
}

/// One line of the hex dump: address, 16 bytes in groups of two, ASCII.
fn hex_line(address: u64, bytes: &[u8], line: &mut String) {
    use core::fmt::Write as _;
    line.clear();
    let _ = write!(line, "{address:016x}:");
    for i in 0..16 {
        if i % 2 == 0 {
            line.push(' ');
        }
        match bytes.get(i) {
            Some(b) => {
                let _ = write!(line, "{b:02x}");
            }
            None => line.push_str("  "),
        }
    }
    line.push_str("  ");
    for &b in bytes {
        line.push(if b.is_ascii_graphic() || b == b' ' {
            char::from(b)
        } else {
            '.'
        });
    }
    line.push('\n');
}

pub(crate) fn run(
    argv: &[OsString],
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    stderr_is_terminal: bool,
) -> Result<i32, Failure> {
    let mut spec: Vec<Opt> = WALK_OPTIONS.into_iter().collect();
    spec.push(Opt {
        name: "raw",
        short: None,
        takes_value: false,
    });
    let opts = args::parse(argv, &spec)?;
    if opts.flag("help") {
        stdout.write_all(help::READ.as_bytes())?;
        return Ok(EXIT_OK);
    }
    let [dump, va, len] = opts.positionals.as_slice() else {
        return Err(Failure::usage(format!(
            "expected DUMP VA LEN, got {} argument(s)",
            opts.positionals.len()
        )));
    };
    let text = |s: &OsString, what: &str| {
        s.to_str()
            .map(str::to_owned)
            .ok_or_else(|| Failure::input(format!("malformed {what} '{}'", args::show(s))))
    };
    let va = args::hex_arg(&text(va, "VA")?, "VA")?;
    let len = args::hex_arg(&text(len, "LEN")?, "LEN")?;
    if len > 0 && va.checked_add(len - 1).is_none() {
        return Err(Failure::input(format!(
            "the range {va:#x} + {len:#x} runs past the end of the address space"
        )));
    }
    let target = target::resolve(dump, &opts)?;
    let raw = opts.flag("raw");
    let mut progress = Progress::new(
        "read",
        "bytes",
        len.checked_mul(2),
        stderr_is_terminal,
        opts.flag("progress"),
    );

    // First pass: every byte must be readable before anything is written.
    if let Err((at, e)) = check(&target, va, len, &mut progress, stderr) {
        progress.finish(stderr);
        return Err(Failure::Fault(format!(
            "cannot read {len} bytes at {va:#x}: {}",
            explain(at, &e)
        )));
    }

    // Second pass: read in chunks and write.
    let mut buf = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
    let mut line = String::with_capacity(80);
    let mut text_out = Vec::with_capacity(CHUNK / 16 * 76);
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        let at = va.wrapping_add(done);
        let chunk = buf.get_mut(..n).unwrap_or_default();
        target
            .core
            .read(
                AccessContext::paging(introvisor::Va(at), target.root),
                chunk,
            )
            .map_err(|e| Failure::Fault(explain(at, &e)))?;
        if raw {
            stdout.write_all(chunk)?;
        } else {
            text_out.clear();
            for (i, row) in chunk.chunks(16).enumerate() {
                hex_line(at.wrapping_add(16 * i as u64), row, &mut line);
                text_out.extend_from_slice(line.as_bytes());
            }
            stdout.write_all(&text_out)?;
        }
        done += n as u64;
        progress.add(n as u64, stderr);
    }
    progress.finish(stderr);
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_lines_look_like_xxd() {
        let mut line = String::new();
        hex_line(0x1000, b"Hello, world!\n\x00\xff", &mut line);
        assert_eq!(
            line,
            "0000000000001000: 4865 6c6c 6f2c 2077 6f72 6c64 210a 00ff  Hello, world!...\n"
        );
        hex_line(0xffff_8000_0000_0010, b"ab", &mut line);
        assert_eq!(
            line,
            "ffff800000000010: 6162                                     ab\n"
        );
    }
}
