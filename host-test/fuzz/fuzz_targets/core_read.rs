//! `VmiCore` over arbitrary guest memory: reads, strings and translations through the
//! caches must return without panicking, whatever the page tables say.
#![no_main]

use introvisor::{AccessContext, Pa, Va, VmiCore};
use introvisor_host::HostDriver;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 24 {
        return;
    }
    let (head, memory) = data.split_at(24);
    let word = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().unwrap());
    let (root, va, len) = (word(0), word(8), word(16));
    let core = VmiCore::new(HostDriver::from_vec(memory.to_vec()))
        .with_read_string_length_limit(4096);
    let ctx = AccessContext::paging(Va(va), Pa(root));
    let mut buf = vec![0u8; (len % 9000) as usize];
    let _ = core.read(ctx, &mut buf);
    let _ = core.read_u64(ctx);
    let _ = core.read_string(ctx);
    let _ = core.read_wstring(ctx);
    let _ = core.read(AccessContext::direct(Pa(va)), &mut buf);
    // Twice: the second time through the caches.
    let first = core.translate(Va(va), Pa(root));
    assert_eq!(first, core.translate(Va(va), Pa(root)));
});
