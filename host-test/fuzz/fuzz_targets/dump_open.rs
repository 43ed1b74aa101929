//! The dump opener (`dump::open` and `dump::open_as`, as the `introvisor` tool calls them)
//! over arbitrary file contents: the input's first byte picks detection by content or a
//! forced format, the rest is written to a file and opened. It must give a driver or a
//! named `DumpError`, never a panic, and a driver whose memory is the file's: the first
//! and the last byte of every range read through `VmiCore` are the file's bytes at the
//! range's offsets, the ranges are sorted and do not overlap (overlapping segments are
//! trimmed), and a warning list is capped.
#![no_main]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use introvisor::{AccessContext, Pa, VmiCore};
use introvisor_host::dump::{self, DumpKind};
use libfuzzer_sys::fuzz_target;

/// One file per fuzzing process, rewritten for each input (in /dev/shm when it exists:
/// no disk writes).
fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::path::Path::new("/dev/shm");
        let dir = if dir.is_dir() {
            dir.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("introvisor-fuzz-dump-{}", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, contents)) = data.split_first() else {
        return;
    };
    let path = path();
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(contents).unwrap();
    drop(file);
    check(choice, contents, path);
    // Nothing is left behind when the fuzzer stops.
    let _ = std::fs::remove_file(path);
});

fn check(choice: u8, contents: &[u8], path: &Path) {
    let kind = match choice % 4 {
        0 => None,
        1 => Some(DumpKind::Raw),
        2 => Some(DumpKind::Elf),
        _ => Some(DumpKind::Lime),
    };
    let opened = match kind {
        None => dump::open(path),
        Some(kind) => dump::open_as(path, kind),
    };
    let Ok((driver, info)) = opened else {
        if contents.is_empty() {
            assert!(matches!(opened, Err(dump::DumpError::Empty { .. })));
        }
        return;
    };
    assert!(!contents.is_empty());
    assert_eq!(info.file_size, contents.len() as u64);
    assert_eq!(info.forced, kind.is_some());
    assert!(
        info.warnings.len() <= 256,
        "{} warnings",
        info.warnings.len()
    );
    for w in info.ranges.windows(2) {
        let end = w[0].start.0 + (w[0].len - 1);
        assert!(end < w[1].start.0, "ranges unsorted or overlapping: {w:?}");
    }
    let core = VmiCore::new(driver);
    for r in info.ranges.iter().take(64) {
        assert!(r.len > 0);
        let last = r.len - 1;
        for (pa, offset) in [(r.start.0, r.offset), (r.start.0 + last, r.offset + last)] {
            let mut byte = [0u8];
            core.read(AccessContext::direct(Pa(pa)), &mut byte)
                .unwrap_or_else(|e| panic!("{pa:#x} of range {r:?} unreadable: {e}"));
            assert_eq!(byte[0], contents[offset as usize], "{pa:#x} of range {r:?}");
        }
    }
}
