//! The AMD64 walker over arbitrary memory, roots, addresses and paging configurations:
//! it must return (Ok or Err) without panicking, and read at most one entry per level.
#![no_main]

use std::cell::Cell;

use introvisor::arch::amd64::{Amd64, Paging, PagingMode};
use introvisor::{Architecture, Pa, PhysRead, Va, VmiError};
use libfuzzer_sys::fuzz_target;

struct Counting<'a> {
    bytes: &'a [u8],
    reads: Cell<u32>,
}

impl PhysRead for Counting<'_> {
    fn read_u64(&self, pa: Pa) -> Result<u64, VmiError> {
        self.reads.set(self.reads.get() + 1);
        self.bytes.read_u64(Pa(pa.0 % 0x10000))
    }

    fn read_u32(&self, pa: Pa) -> Result<u32, VmiError> {
        self.reads.set(self.reads.get() + 1);
        self.bytes.read_u32(Pa(pa.0 % 0x10000))
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 24 {
        return;
    }
    let (head, memory) = data.split_at(24);
    let word = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().unwrap());
    let (root, va, knobs) = (word(0), word(8), word(16));
    let mode = match knobs % 5 {
        0 => PagingMode::Disabled,
        1 => PagingMode::Bits32,
        2 => PagingMode::Pae,
        3 => PagingMode::Level4,
        _ => PagingMode::Level5,
    };
    let mut paging = Paging::new(mode);
    paging.max_phys_addr = (knobs >> 8) as u8;
    paging.nxe = knobs & (1 << 16) != 0;
    paging.pse = knobs & (1 << 17) != 0;
    if knobs & (1 << 18) != 0 {
        paging.pdptes = Some([word(0), word(8), word(16), root ^ va]);
    }
    let mem = Counting {
        bytes: memory,
        reads: Cell::new(0),
    };
    let _ = Amd64::translate(&mem, &paging, Va(va), Pa(root));
    assert!(mem.reads.get() <= u32::from(mode.levels()));
});
