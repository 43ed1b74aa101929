//! `introvisor read`: a hex dump, raw bytes or a JSON object, of virtual memory or (with
//! `--physical`) of guest-physical memory.

use std::ffi::OsString;
use std::io::Write;

use introvisor::{AccessContext, Pa, Va, VmiError};

use super::args::{self, Opt};
use super::json::{self, Base64, Object};
use super::progress::Progress;
use super::target::{self, Target, WALK_OPTIONS};
use super::translate::fault_text;
use super::{EXIT_OK, Failure, help};

/// Bytes read and written at a time.
const CHUNK: usize = 1 << 16;
const PAGE: u64 = 4096;

/// Where a read starts: a virtual address, translated through the target's root, or a
/// guest-physical one.
#[derive(Clone, Copy)]
enum Space {
    Virtual,
    Physical,
}

impl Space {
    fn context(self, t: &Target, at: u64) -> AccessContext {
        match self {
            Self::Virtual => AccessContext::paging(Va(at), t.root),
            Self::Physical => AccessContext::direct(Pa(at)),
        }
    }
}

/// Why the byte at `va` cannot be read, in words.
fn explain(space: Space, va: u64, error: &VmiError) -> String {
    if let Space::Physical = space {
        return match error {
            VmiError::OutOfBounds(_) | VmiError::GfnNotPresent(_) => {
                format!("physical {va:#x} is not in the dump")
            }
            other => format!("physical {va:#x} cannot be read: {other}"),
        };
    }
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
    space: Space,
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
            .read(space.context(t, at), buf)
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
    for name in ["raw", "json", "base64", "physical"] {
        spec.push(Opt {
            name,
            short: None,
            takes_value: false,
        });
    }
    let opts = args::parse(argv, &spec)?;
    if opts.flag("help") {
        stdout.write_all(help::READ.as_bytes())?;
        return Ok(EXIT_OK);
    }
    let (raw, json, base64) = (opts.flag("raw"), opts.flag("json"), opts.flag("base64"));
    let space = if opts.flag("physical") {
        Space::Physical
    } else {
        Space::Virtual
    };
    let what = match space {
        Space::Virtual => "VA",
        Space::Physical => "PA",
    };
    let [dump, va, len] = opts.positionals.as_slice() else {
        return Err(Failure::usage(format!(
            "expected DUMP {what} LEN, got {} argument(s)",
            opts.positionals.len()
        )));
    };
    if raw && json {
        return Err(Failure::usage("--raw and --json exclude each other"));
    }
    if base64 && !json {
        return Err(Failure::usage("--base64 chooses the encoding of --json"));
    }
    let text = |s: &OsString, what: &str| {
        s.to_str()
            .map(str::to_owned)
            .ok_or_else(|| Failure::input(format!("malformed {what} '{}'", args::show(s))))
    };
    let va = args::hex_arg(&text(va, what)?, what)?;
    let len = args::hex_arg(&text(len, "LEN")?, "LEN")?;
    if len > 0 && va.checked_add(len - 1).is_none() {
        return Err(Failure::input(format!(
            "the range {va:#x} + {len:#x} runs past the end of the address space"
        )));
    }
    let target = match space {
        Space::Virtual => target::resolve(dump, &opts)?,
        Space::Physical => target::open_physical(dump, &opts)?,
    };
    if let Some(note) = &target.note {
        let _ = writeln!(stderr, "introvisor read: note: {note}");
    }
    let mut progress = Progress::new(
        "read",
        "bytes",
        len.checked_mul(2),
        stderr_is_terminal,
        opts.flag("progress"),
    );

    // First pass: every byte must be readable before anything is written.
    if let Err((at, e)) = check(&target, space, va, len, &mut progress, stderr) {
        progress.finish(stderr);
        let place = match space {
            Space::Virtual => "",
            Space::Physical => "physical ",
        };
        return Err(Failure::Fault(format!(
            "cannot read {len:#x} bytes at {place}{va:#x}: {}",
            explain(space, at, &e)
        )));
    }

    // Second pass: read in chunks and write.
    let mut buf = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
    let mut line = String::with_capacity(80);
    let mut text_out = Vec::with_capacity(CHUNK / 16 * 76);
    let mut encoded = String::new();
    let mut encoder = Base64::default();
    if json {
        let head = Object::new()
            .hex(
                match space {
                    Space::Virtual => "va",
                    Space::Physical => "pa",
                },
                va,
            )
            .num("len", len)
            .str("encoding", if base64 { "base64" } else { "hex" })
            .finish();
        // The object without its `}`, then the data string, streamed.
        let head = head.strip_suffix('}').unwrap_or(&head);
        write!(stdout, "{head},\"data\":\"")?;
    }
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        let at = va.wrapping_add(done);
        let chunk = buf.get_mut(..n).unwrap_or_default();
        target
            .core
            .read(space.context(&target, at), chunk)
            .map_err(|e| Failure::Fault(explain(space, at, &e)))?;
        if raw {
            stdout.write_all(chunk)?;
        } else if json {
            encoded.clear();
            if base64 {
                encoder.push(&mut encoded, chunk);
            } else {
                json::hex_bytes(&mut encoded, chunk);
            }
            stdout.write_all(encoded.as_bytes())?;
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
    if json {
        encoded.clear();
        encoder.finish(&mut encoded);
        writeln!(stdout, "{encoded}\"}}")?;
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
