//! The catalogue of bad dumps (issue 13, "a catalogue of bad input", the host rows): one
//! table, each row an input and what it must get: a named error, or an open with a named
//! warning. Every row runs on its own thread with a guard, so that a row that hangs (a
//! FIFO opened for reading waits for a writer) fails instead of stalling the suite.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use introvisor::arch::amd64::Registers;
use introvisor_host::HostDriver;
use introvisor_host::dump::elf::{ElfError, MAX_NOTE_BYTES};
use introvisor_host::dump::write::{Run, write_qemu_elf};
use introvisor_host::dump::{DumpError, DumpInfo};

/// A path in the temporary directory, removed on drop.
struct Temp(PathBuf);

impl Temp {
    fn path(tag: &str) -> Self {
        use core::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        Self(std::env::temp_dir().join(format!(
            "introvisor-bad-input-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )))
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir(&self.0);
    }
}

// Offsets in the writer's ELF64 layout: header, PT_NOTE header, PT_LOAD header, notes.
const PHOFF: usize = 64;
const PHENT: usize = 56;
const NOTE_PH: usize = PHOFF;
const LOAD_PH: usize = PHOFF + PHENT;
const NOTES: usize = PHOFF + 2 * PHENT;
/// Where the PT_LOAD's bytes start: after one vCPU's CORE and QEMU notes.
const MEMORY: usize = NOTES + 12 + 8 + 336 + 12 + 8 + 440;

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A valid dump: one vCPU, one 8 KiB run at 0x1000.
fn valid() -> Vec<u8> {
    let mem: Vec<u8> = (0..0x2000u32).map(|i| (i % 253) as u8).collect();
    let regs = Registers {
        cr0: 0x8005_0033,
        cr3: 0x1000,
        cr4: 0x6a0,
        ..Registers::default()
    };
    let mut out = Vec::new();
    write_qemu_elf(
        &mut out,
        &[Run {
            paddr: 0x1000,
            bytes: &mem,
        }],
        &[regs],
    )
    .unwrap();
    assert_eq!(out.len(), MEMORY + 0x2000);
    out
}

fn edited(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = valid();
    f(&mut b);
    b
}

/// Two runs, the second starting inside the first.
fn overlapping() -> Vec<u8> {
    let a = vec![0xaau8; 0x2000];
    let mut out = Vec::new();
    write_qemu_elf(
        &mut out,
        &[
            Run {
                paddr: 0x1000,
                bytes: &a,
            },
            Run {
                paddr: 0x2800,
                bytes: &a,
            },
        ],
        &[],
    )
    .unwrap();
    out
}

/// What a row feeds to `open_dump`.
enum Input {
    /// A file with these bytes.
    Bytes(Vec<u8>),
    /// A file with these bytes, extended (sparsely) to this size.
    Sparse(Vec<u8>, u64),
    /// A named pipe.
    Fifo,
    /// The read end of an anonymous pipe, by its `/proc/self/fd` path.
    Pipe,
    /// An existing path (a device, a directory), skipped if it does not exist.
    Existing(&'static str),
    /// A directory of our own.
    Directory,
    /// A path that does not exist.
    Missing,
}

/// What a row must get.
enum Want {
    /// Refused: `is` names the error and checks it.
    Refused(&'static str, fn(&DumpError) -> bool),
    /// Opened, with a warning that contains the text.
    Warns(&'static str),
}

struct Row {
    what: &'static str,
    input: Input,
    want: Want,
}

fn elf(e: &DumpError, f: impl Fn(&ElfError) -> bool) -> bool {
    matches!(e, DumpError::Elf { error, .. } if f(error))
}

fn rows() -> Vec<Row> {
    use Input::*;
    use Want::*;
    vec![
        Row {
            what: "an empty file",
            input: Bytes(Vec::new()),
            want: Refused("Empty", |e| matches!(e, DumpError::Empty { .. })),
        },
        Row {
            what: "an ELF file cut inside its identification",
            input: Bytes(valid()[..10].to_vec()),
            want: Refused("Truncated(ELF identification)", |e| {
                elf(e, |x| {
                    matches!(
                        x,
                        ElfError::Truncated {
                            what: "ELF identification",
                            offset: 0
                        }
                    )
                })
            }),
        },
        Row {
            what: "an ELF file cut inside its header",
            input: Bytes(valid()[..40].to_vec()),
            want: Refused("Truncated(ELF header)", |e| {
                elf(e, |x| {
                    matches!(
                        x,
                        ElfError::Truncated {
                            what: "ELF header",
                            ..
                        }
                    )
                })
            }),
        },
        Row {
            what: "an ELF file cut inside its program header table",
            input: Bytes(valid()[..100].to_vec()),
            want: Refused("Truncated(program header table)", |e| {
                elf(e, |x| {
                    matches!(
                        x,
                        ElfError::Truncated {
                            what: "program header table",
                            offset: 64
                        }
                    )
                })
            }),
        },
        Row {
            what: "an ELF file cut inside its notes",
            input: Bytes(valid()[..NOTES + 20].to_vec()),
            want: Refused("SegmentPastEnd(0)", |e| {
                elf(e, |x| {
                    matches!(x, ElfError::SegmentPastEnd { index: 0, .. })
                })
            }),
        },
        Row {
            what: "a dump cut inside a PT_LOAD",
            input: Bytes(valid()[..MEMORY + 0x1800].to_vec()),
            want: Warns(
                "segment 1 at 0x1000: the file is truncated 0x1800 bytes into it; its last 0x800 bytes are lost",
            ),
        },
        Row {
            what: "a dump cut before its PT_LOAD",
            input: Bytes(valid()[..MEMORY].to_vec()),
            want: Warns("the file is truncated before it; all its 0x2000 bytes are lost"),
        },
        Row {
            what: "overlapping PT_LOADs",
            input: Bytes(overlapping()),
            want: Warns("segments overlap at 0x2800: 0x800 bytes of a later segment are ignored"),
        },
        Row {
            what: "a PT_LOAD whose file range overflows",
            input: Bytes(edited(|b| put64(b, LOAD_PH + 8, u64::MAX - 0x10))),
            want: Refused("SegmentPastEnd(1)", |e| {
                elf(e, |x| {
                    matches!(x, ElfError::SegmentPastEnd { index: 1, .. })
                })
            }),
        },
        Row {
            what: "a PT_LOAD whose physical range runs past 2^64",
            input: Bytes(edited(|b| put64(b, LOAD_PH + 24, u64::MAX - 0xfff))),
            want: Refused("SegmentAddressOverflow(1)", |e| {
                elf(e, |x| *x == ElfError::SegmentAddressOverflow { index: 1 })
            }),
        },
        Row {
            what: "a PT_NOTE past the end of the file",
            input: Bytes(edited(|b| put64(b, NOTE_PH + 8, 0x10_0000))),
            want: Refused("SegmentPastEnd(0)", |e| {
                elf(e, |x| {
                    matches!(x, ElfError::SegmentPastEnd { index: 0, .. })
                })
            }),
        },
        Row {
            what: "note segments larger than the cap (a sparse file)",
            input: Sparse(
                edited(|b| put64(b, NOTE_PH + 32, MAX_NOTE_BYTES + 1)),
                MAX_NOTE_BYTES + 0x10_0000,
            ),
            want: Refused("NotesTooLarge", |e| {
                elf(e, |x| *x == ElfError::NotesTooLarge(MAX_NOTE_BYTES + 1))
            }),
        },
        Row {
            what: "an absurd program header count",
            input: Bytes(edited(|b| put16(b, 56, 0xfff0))),
            want: Refused("Truncated(program header table)", |e| {
                elf(e, |x| {
                    matches!(
                        x,
                        ElfError::Truncated {
                            what: "program header table",
                            ..
                        }
                    )
                })
            }),
        },
        Row {
            what: "a program header size too small",
            input: Bytes(edited(|b| put16(b, 54, 8))),
            want: Refused("BadProgramHeaderSize", |e| {
                elf(e, |x| *x == ElfError::BadProgramHeaderSize(8))
            }),
        },
        Row {
            what: "a kdump-compressed dump",
            input: Bytes(b"KDUMP   \x06\0\0\0 and the rest".to_vec()),
            want: Refused("Unsupported", |e| {
                matches!(e, DumpError::Unsupported { .. })
            }),
        },
        Row {
            what: "a FIFO",
            input: Fifo,
            want: Refused("NotAFile(FIFO)", |e| {
                matches!(
                    e,
                    DumpError::NotAFile {
                        kind: "FIFO (named pipe)",
                        ..
                    }
                )
            }),
        },
        Row {
            what: "an anonymous pipe",
            input: Pipe,
            want: Refused("NotAFile(FIFO)", |e| {
                matches!(
                    e,
                    DumpError::NotAFile {
                        kind: "FIFO (named pipe)",
                        ..
                    }
                )
            }),
        },
        Row {
            what: "/dev/null",
            input: Existing("/dev/null"),
            want: Refused("NotAFile(character device)", |e| {
                matches!(
                    e,
                    DumpError::NotAFile {
                        kind: "character device",
                        ..
                    }
                )
            }),
        },
        Row {
            what: "/dev/zero",
            input: Existing("/dev/zero"),
            want: Refused("NotAFile(character device)", |e| {
                matches!(
                    e,
                    DumpError::NotAFile {
                        kind: "character device",
                        ..
                    }
                )
            }),
        },
        Row {
            what: "a directory",
            input: Directory,
            want: Refused("NotAFile(directory)", |e| {
                matches!(
                    e,
                    DumpError::NotAFile {
                        kind: "directory",
                        ..
                    }
                )
            }),
        },
        Row {
            what: "a path that does not exist",
            input: Missing,
            want: Refused(
                "Io(NotFound)",
                |e| matches!(e, DumpError::Io { error, .. } if error.kind() == std::io::ErrorKind::NotFound),
            ),
        },
    ]
}

/// Opens `path` on another thread; `None` if it has not returned after a minute (then
/// the FIFO, if any, is opened for writing to release it).
fn open_guarded(path: &Path, fifo: bool) -> Option<Result<DumpInfo, DumpError>> {
    let (tx, rx) = mpsc::channel();
    let p = path.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(HostDriver::open_dump(&p).map(|(_, info)| info));
    });
    match rx.recv_timeout(core::time::Duration::from_secs(60)) {
        Ok(result) => Some(result),
        Err(_) => {
            if fifo {
                let _ = std::fs::OpenOptions::new().write(true).open(path);
            }
            None
        }
    }
}

#[test]
fn every_bad_dump_gets_its_named_error() {
    let mut checked = 0;
    for row in rows() {
        let temp = Temp::path("row");
        // Keeps a pipe's write end open while the row runs.
        let mut _pipe = None;
        let (path, fifo) = match row.input {
            Input::Bytes(bytes) => {
                std::fs::write(&temp.0, bytes).unwrap();
                (temp.0.clone(), false)
            }
            Input::Sparse(bytes, len) => {
                std::fs::write(&temp.0, bytes).unwrap();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&temp.0)
                    .unwrap()
                    .set_len(len)
                    .unwrap();
                (temp.0.clone(), false)
            }
            Input::Fifo => {
                let made = std::process::Command::new("mkfifo").arg(&temp.0).status();
                assert!(made.is_ok_and(|s| s.success()), "mkfifo");
                (temp.0.clone(), true)
            }
            Input::Pipe => {
                use std::os::fd::AsRawFd;
                let (reader, writer) = std::io::pipe().unwrap();
                let path = PathBuf::from(format!("/proc/self/fd/{}", reader.as_raw_fd()));
                _pipe = Some((reader, writer));
                if !path.exists() {
                    continue;
                }
                (path, false)
            }
            Input::Existing(p) => {
                if !Path::new(p).exists() {
                    continue;
                }
                (PathBuf::from(p), false)
            }
            Input::Directory => {
                std::fs::create_dir(&temp.0).unwrap();
                (temp.0.clone(), false)
            }
            Input::Missing => (temp.0.clone(), false),
        };
        let result =
            open_guarded(&path, fifo).unwrap_or_else(|| panic!("{}: open_dump hangs", row.what));
        match (row.want, result) {
            (Want::Refused(name, is), Err(e)) => {
                assert!(is(&e), "{}: want {name}, got {e:?}", row.what);
                // The message names the file.
                assert!(
                    e.to_string().contains(path.to_str().unwrap()),
                    "{}: {e}",
                    row.what
                );
            }
            (Want::Refused(name, _), Ok(info)) => {
                panic!("{}: want {name}, opened: {:?}", row.what, info.warnings)
            }
            (Want::Warns(text), Ok(info)) => assert!(
                info.warnings.iter().any(|w| w.contains(text)),
                "{}: want a warning with {text:?}, got {:?}",
                row.what,
                info.warnings
            ),
            (Want::Warns(text), Err(e)) => {
                panic!("{}: want it to open with {text:?}, got {e:?}", row.what)
            }
        }
        checked += 1;
    }
    // Every row but the few that depend on the platform ran.
    assert!(checked >= 18, "{checked} rows checked");
}
