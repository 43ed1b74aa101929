//! The ELF core reader over arbitrary bytes: it must return `Ok` or `Err` without
//! panicking, and what it accepts must lie inside the input.
#![no_main]

use introvisor_host::dump::elf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(core) = elf::parse(data) {
        for load in &core.loads {
            let end = load.offset.checked_add(load.filesz).unwrap();
            assert!(end <= data.len() as u64);
            // A segment may end exactly at 2^64.
            assert!(load.filesz > 0);
            assert!(load.paddr.checked_add(load.filesz - 1).is_some());
        }
        assert!(core.vcpus.len() <= elf::MAX_VCPUS);
        let _ = core.ranges();
    }
});
