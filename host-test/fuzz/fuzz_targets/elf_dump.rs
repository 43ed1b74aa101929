//! The ELF core reader over arbitrary bytes: it must return `Ok` or `Err` without
//! panicking, and what it accepts must lie inside the input: every `PT_LOAD` it keeps is
//! inside the file and does not wrap the physical address space, so are the memory
//! ranges it derives, and the vCPU count is capped.
#![no_main]

use introvisor_host::dump::elf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert_eq!(elf::is_elf(data), data.starts_with(b"\x7fELF"));
    if let Ok(core) = elf::parse(data) {
        for load in &core.loads {
            let end = load.offset.checked_add(load.filesz).unwrap();
            assert!(end <= data.len() as u64);
            // A segment may end exactly at 2^64.
            assert!(load.filesz > 0);
            assert!(load.paddr.checked_add(load.filesz - 1).is_some());
        }
        assert!(core.vcpus.len() <= elf::MAX_VCPUS);
        // The segments as they are (overlaps are trimmed where memory is built: see
        // the dump_open target).
        for r in &core.ranges() {
            assert!(r.len > 0);
            assert!(r.offset.checked_add(r.len).unwrap() <= data.len() as u64);
            assert!(r.start.0.checked_add(r.len - 1).is_some());
        }
    }
});
