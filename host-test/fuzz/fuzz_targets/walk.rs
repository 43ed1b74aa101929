//! The AMD64 walker in every paging mode, over arbitrary memory, roots and addresses, with
//! the CPU settings (MAXPHYADDR, EFER.NXE, CR4.PSE, 1 GiB pages, PAE PDPTEs held by the
//! CPU) and the rights policy (CR0.WP, SMEP, SMAP, RFLAGS.AC) picked from the input.
//!
//! It must return (Ok or Err) without panicking, and:
//! - read at most one entry per level, and report each entry it used (`translate_observed`);
//! - agree with itself: `translate` = `translate_observed`, and a `translate_access` that
//!   succeeds gives the same translation; a walk that faults faults with any access;
//! - on success: the page size is one the mode has, the page offset is the address's, the
//!   rights include R, the address is valid in the mode, and a
//!   walk with paging off is the identity;
//! - on a page fault: the fault names the address and root it was given.
//!
//! Memory is the input's tail seen through a 64 KiB window (addresses wrap modulo 64 KiB),
//! so tables alias one another, loop, and share frames, as a hostile guest's may.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::cell::Cell;

use common::Input;
use introvisor::arch::amd64::{Access, AccessKind, Amd64, Paging, PagingMode, RightsPolicy};
use introvisor::{Architecture, MemoryAccess, Pa, PhysRead, Va, VmiError};
use libfuzzer_sys::fuzz_target;

const WINDOW: u64 = 0x10000;

/// The memory, counting the entries read (attempts: a read that fails counts too) and
/// those that came back (`got`).
struct Counting<'a> {
    bytes: &'a [u8],
    reads: Cell<u32>,
    got: Cell<u32>,
}

impl Counting<'_> {
    fn count<T>(&self, r: Result<T, VmiError>) -> Result<T, VmiError> {
        self.reads.set(self.reads.get() + 1);
        if r.is_ok() {
            self.got.set(self.got.get() + 1);
        }
        r
    }
}

impl PhysRead for Counting<'_> {
    fn read_u64(&self, pa: Pa) -> Result<u64, VmiError> {
        self.count(self.bytes.read_u64(Pa(pa.0 % WINDOW)))
    }

    fn read_u32(&self, pa: Pa) -> Result<u32, VmiError> {
        self.count(self.bytes.read_u32(Pa(pa.0 % WINDOW)))
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let knobs = input.u32();
    let root = input.u64();
    let va = input.u64();
    let pdptes = [input.u64(), input.u64(), input.u64(), input.u64()];
    let memory = input.rest();

    let mode = match knobs % 5 {
        0 => PagingMode::Disabled,
        1 => PagingMode::Bits32,
        2 => PagingMode::Pae,
        3 => PagingMode::Level4,
        _ => PagingMode::Level5,
    };
    let mut paging = Paging::new(mode);
    // Out-of-range widths too: the walker clamps them.
    paging.max_phys_addr = (knobs >> 8) as u8 & 0x3f;
    paging.nxe = knobs & (1 << 16) != 0;
    paging.pse = knobs & (1 << 17) != 0;
    paging.page_1gb = knobs & (1 << 18) != 0;
    if knobs & (1 << 19) != 0 {
        paging.pdptes = Some(pdptes);
    }
    let rights = RightsPolicy {
        wp: knobs & (1 << 20) != 0,
        smep: knobs & (1 << 21) != 0,
        smap: knobs & (1 << 22) != 0,
        ac: knobs & (1 << 23) != 0,
    };
    let kind = match (knobs >> 24) % 3 {
        0 => AccessKind::Read,
        1 => AccessKind::Write,
        _ => AccessKind::Fetch,
    };
    let access = Access::new(kind, knobs & (1 << 26) != 0);
    let (va, root) = (Va(va), Pa(root));

    let mem = Counting {
        bytes: memory,
        reads: Cell::new(0),
        got: Cell::new(0),
    };
    let plain = Amd64::translate(&mem, &paging, va, root);
    let reads = mem.reads.replace(0);
    assert!(
        reads <= u32::from(mode.levels()),
        "{reads} reads in {mode:?}"
    );

    mem.got.set(0);
    let mut steps = 0u32;
    let observed = Amd64::translate_observed(&mem, &paging, va, root, |_| steps += 1);
    assert_eq!(observed, plain);
    // Every entry read is reported; PDPTEs the CPU holds (PAE) are reported unread.
    let read = mem.got.get();
    assert!(
        read <= steps,
        "{read} entries read, {steps} reported: {paging:?} {va:?} {plain:?}"
    );
    assert!(steps <= u32::from(mode.levels()));

    let checked = Amd64::translate_access(&mem, &paging, va, root, access, rights);
    match (&plain, &checked) {
        (Ok(t), Ok(c)) => assert_eq!(t, c),
        (Ok(_), Err(VmiError::Translation(_))) => {}
        (Err(e), Ok(_)) => panic!("the walk failed ({e:?}) but the checked walk did not"),
        (Err(_), Err(_)) => {}
        (Ok(_), Err(e)) => panic!("a rights check failed with {e:?}"),
    }

    match plain {
        Ok(t) => {
            let sizes: &[u64] = match mode {
                PagingMode::Disabled => &[0x1000],
                PagingMode::Bits32 => &[0x1000, 0x40_0000],
                PagingMode::Pae => &[0x1000, 0x20_0000],
                PagingMode::Level4 | PagingMode::Level5 => &[0x1000, 0x20_0000, 0x4000_0000],
            };
            assert!(
                sizes.contains(&t.page_size),
                "{:#x} in {mode:?}",
                t.page_size
            );
            let offset = t.page_size - 1;
            assert_eq!(t.pa.0 & offset, va.0 & offset);
            assert!(t.access.contains(MemoryAccess::R));
            assert!(mode.is_valid_va(va));
            if mode == PagingMode::Disabled {
                assert_eq!(t.pa, Pa(va.0));
            } else {
                assert!(t.pa.0 < 1 << 52, "{:#x} past 2^52", t.pa.0);
            }
            if mode == PagingMode::Bits32 && t.page_size == 0x1000 {
                assert!(t.pa.0 < 1 << 32);
            }
        }
        Err(VmiError::Translation(pf)) => {
            assert_eq!((pf.va, pf.root), (va, root));
            assert!(pf.level <= mode.levels());
        }
        Err(_) => {}
    }
});
