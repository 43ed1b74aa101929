//! `VmiCore` over arbitrary guest memory and page tables: a program of every read API
//! (sized, addresses, structures, byte, UTF-8 and UTF-16 strings, limited or not, into
//! buffers or allocating), writes, translations and cache operations (resizes, flushes,
//! entry flushes, toggles of both caches, string limits), run on two cores over the
//! same memory: one with the caches as the input sets them, one with both caches off.
//!
//! Nothing may panic, and:
//! - every read gives the same answer on both cores (bytes, or the same error), except
//!   that a read through the page tables after a write may differ until the cached core's
//!   translations are flushed (a TLB is stale until flushed, by design);
//! - after an entry flush, the cached translation of that address is the walk's;
//! - with no write since the last full flush, a cached translation is the walk's;
//! - a string is no longer than its limit (and its buffer), and holds no NUL.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use common::Input;
use introvisor::arch::amd64::{Paging, PagingMode};
use introvisor::{AccessContext, AddressContext, Gfn, Pa, Va, VmiCore, VmiError};
use introvisor_host::HostDriver;
use libfuzzer_sys::fuzz_target;

type Core = VmiCore<HostDriver>;

/// An address the program names: small ones (inside the memory), page edges, canonical
/// high halves, and raw 64-bit values.
fn address(input: &mut Input<'_>) -> u64 {
    match input.u8() % 8 {
        0..=3 => u64::from(input.u16()),
        4 => (u64::from(input.u8()) << 12).wrapping_sub(u64::from(input.u8() % 8)),
        5 => 0xffff_8000_0000_0000 | u64::from(input.u32()),
        6 => u64::from(input.u32()),
        _ => input.u64(),
    }
}

fn context(input: &mut Input<'_>, root: Pa) -> AccessContext {
    let address = address(input);
    if input.u8().is_multiple_of(4) {
        AccessContext::direct(Pa(address))
    } else {
        AccessContext::paging(Va(address), root)
    }
}

fn is_paging(ctx: AccessContext) -> bool {
    !matches!(ctx.mechanism, introvisor::TranslationMechanism::Direct)
}

/// Checks a string result: within `limit` units, no NUL unit.
fn check_units<T: PartialEq + Default + Copy + core::fmt::Debug>(s: &[T], limit: usize) {
    assert!(
        s.len() <= limit,
        "{} units over a limit of {limit}",
        s.len()
    );
    assert!(!s.contains(&T::default()), "a NUL inside {s:?}");
}

/// Memory that is not there is `GfnNotPresent` through the page cache (the driver's
/// `read_page`) and `OutOfBounds` past it (`read_physical`): one class here. See
/// FUZZING.md: the two paths name the same condition differently.
fn class(e: VmiError) -> VmiError {
    match e {
        VmiError::OutOfBounds(pa) => VmiError::GfnNotPresent(Gfn(pa.0 >> 12)),
        e => e,
    }
}

fn same<T: PartialEq + core::fmt::Debug>(
    a: Result<T, VmiError>,
    b: Result<T, VmiError>,
    compare: bool,
    what: &str,
) {
    if compare {
        assert_eq!(
            a.map_err(class),
            b.map_err(class),
            "{what}: the cached and the uncached core differ"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = match input.u8() % 8 {
        0 => PagingMode::Disabled,
        1 => PagingMode::Bits32,
        2 => PagingMode::Pae,
        3..=5 => PagingMode::Level4,
        _ => PagingMode::Level5,
    };
    // A root frame inside the memory, sometimes with PCID bits (CR3 bits 11:0).
    let r = input.u16();
    let pcid = if r & 0x10 != 0 { u64::from(r >> 5) } else { 0 };
    let root = Pa(u64::from(r & 0xf) << 12 | pcid);
    let limit = usize::from(input.u16());
    let v2p = usize::from(input.u16() % 1100);
    let gfn = usize::from(input.u16() % 600);
    let toggles = input.u8();
    let memory_len = usize::from(input.u16());
    let memory = input.take(memory_len).to_vec();

    let paging = Paging::new(mode);
    let cached = Core::new(HostDriver::from_vec_writable(memory.clone()))
        .with_paging(paging)
        .with_read_string_length_limit(limit)
        .with_v2p_cache(v2p)
        .with_gfn_cache(gfn);
    if toggles & 1 != 0 {
        cached.disable_v2p_cache();
    }
    if toggles & 2 != 0 {
        cached.disable_gfn_cache();
    }
    let plain = Core::new(HostDriver::from_vec_writable(memory))
        .with_paging(paging)
        .with_read_string_length_limit(limit);
    plain.disable_v2p_cache();
    plain.disable_gfn_cache();

    // Whether a write happened since the cached core's last full translation flush.
    let mut dirty = false;
    let mut steps = 0;
    while !input.is_empty() && steps < 256 {
        steps += 1;
        let op = input.u8();
        match op % 16 {
            0 => {
                let ctx = context(&mut input, root);
                // One length in sixteen is a long read (over 16 pages: the range walk
                // and the runs of contiguous frames), over memory the tables alias.
                let raw = input.u16();
                let len = if raw >= 0xf000 {
                    65_537 + usize::from(raw & 0x0fff) * 16
                } else {
                    usize::from(raw % 9000)
                };
                let (mut x, mut y) = (vec![0u8; len], vec![0u8; len]);
                let (rx, ry) = (cached.read(ctx, &mut x), plain.read(ctx, &mut y));
                let compare = !(dirty && is_paging(ctx));
                same(rx.map(|()| x), ry.map(|()| y), compare, "read");
            }
            1 => {
                let ctx = context(&mut input, root);
                let c = !(dirty && is_paging(ctx));
                match input.u8() % 4 {
                    0 => same(cached.read_u8(ctx), plain.read_u8(ctx), c, "read_u8"),
                    1 => same(cached.read_u16(ctx), plain.read_u16(ctx), c, "read_u16"),
                    2 => same(cached.read_u32(ctx), plain.read_u32(ctx), c, "read_u32"),
                    _ => same(cached.read_u64(ctx), plain.read_u64(ctx), c, "read_u64"),
                }
            }
            2 => {
                let ctx = context(&mut input, root);
                let c = !(dirty && is_paging(ctx));
                let width = input.u8() % 10;
                let r = cached.read_address(ctx, width);
                if !matches!(width, 4 | 8) {
                    assert!(matches!(r, Err(VmiError::InvalidAddressWidth(_))), "{r:?}");
                }
                same(r, plain.read_address(ctx, width), c, "read_address");
                same(
                    cached.read_va(ctx, width),
                    plain.read_va(ctx, width),
                    c,
                    "read_va",
                );
                same(
                    cached.read_address32(ctx),
                    plain.read_address32(ctx),
                    c,
                    "address32",
                );
                same(
                    cached.read_address64(ctx),
                    plain.read_address64(ctx),
                    c,
                    "address64",
                );
                same(cached.read_va32(ctx), plain.read_va32(ctx), c, "read_va32");
                same(cached.read_va64(ctx), plain.read_va64(ctx), c, "read_va64");
                let r32 = cached.read_address32(ctx);
                if let Ok(v) = r32 {
                    assert!(v <= u64::from(u32::MAX));
                }
            }
            3 => {
                let ctx = context(&mut input, root);
                let c = !(dirty && is_paging(ctx));
                same(
                    cached.read_struct::<[u8; 24]>(ctx),
                    plain.read_struct::<[u8; 24]>(ctx),
                    c,
                    "read_struct",
                );
            }
            4 => {
                let ctx = context(&mut input, root);
                let c = !(dirty && is_paging(ctx));
                let lim = usize::from(input.u16());
                let len = usize::from(input.u16() % 5000);
                let (mut x, mut y) = (vec![0u8; len], vec![0u8; len]);
                let rx = cached.read_string_bytes_limited_into(ctx, lim, &mut x);
                if let Ok(s) = rx {
                    check_units(s, lim.min(len));
                }
                let rx = rx.map(<[u8]>::to_vec);
                let ry = plain
                    .read_string_bytes_limited_into(ctx, lim, &mut y)
                    .map(<[u8]>::to_vec);
                same(rx, ry, c, "read_string_bytes_limited_into");
                let rx = cached
                    .read_string_bytes_into(ctx, &mut x)
                    .map(<[u8]>::to_vec);
                let ry = plain
                    .read_string_bytes_into(ctx, &mut y)
                    .map(<[u8]>::to_vec);
                same(rx, ry, c, "read_string_bytes_into");
                let rx = cached.read_string_into(ctx, &mut x).map(str::to_owned);
                let ry = plain.read_string_into(ctx, &mut y).map(str::to_owned);
                same(rx, ry, c, "read_string_into");
            }
            5 => {
                let ctx = context(&mut input, root);
                let c = !(dirty && is_paging(ctx));
                let lim = usize::from(input.u16());
                let rx = cached.read_string_bytes_limited(ctx, lim);
                if let Ok(s) = &rx {
                    check_units(s, lim);
                }
                same(
                    rx,
                    plain.read_string_bytes_limited(ctx, lim),
                    c,
                    "bytes_limited",
                );
                let rx = cached.read_string_bytes(ctx);
                if let Ok(s) = &rx {
                    check_units(s, cached.read_string_length_limit());
                }
                same(rx, plain.read_string_bytes(ctx), c, "read_string_bytes");
                same(
                    cached.read_string_limited(ctx, lim),
                    plain.read_string_limited(ctx, lim),
                    c,
                    "read_string_limited",
                );
                same(
                    cached.read_string(ctx),
                    plain.read_string(ctx),
                    c,
                    "read_string",
                );
            }
            6 => {
                let ctx = context(&mut input, root);
                let c = !(dirty && is_paging(ctx));
                let lim = usize::from(input.u16());
                let len = usize::from(input.u16() % 3000);
                let (mut x, mut y) = (vec![0u16; len], vec![0u16; len]);
                let rx = cached.read_wstring_bytes_limited_into(ctx, lim, &mut x);
                if let Ok(s) = rx {
                    check_units(s, (lim / 2).min(len));
                }
                let rx = rx.map(<[u16]>::to_vec);
                let ry = plain
                    .read_wstring_bytes_limited_into(ctx, lim, &mut y)
                    .map(<[u16]>::to_vec);
                same(rx, ry, c, "read_wstring_bytes_limited_into");
                let rx = cached
                    .read_wstring_bytes_into(ctx, &mut x)
                    .map(<[u16]>::to_vec);
                let ry = plain
                    .read_wstring_bytes_into(ctx, &mut y)
                    .map(<[u16]>::to_vec);
                same(rx, ry, c, "read_wstring_bytes_into");
            }
            7 => {
                let ctx = context(&mut input, root);
                let c = !(dirty && is_paging(ctx));
                let lim = usize::from(input.u16());
                let rx = cached.read_wstring_bytes_limited(ctx, lim);
                if let Ok(s) = &rx {
                    check_units(s, lim / 2);
                }
                same(
                    rx,
                    plain.read_wstring_bytes_limited(ctx, lim),
                    c,
                    "wbytes_limited",
                );
                same(
                    cached.read_wstring_bytes(ctx),
                    plain.read_wstring_bytes(ctx),
                    c,
                    "read_wstring_bytes",
                );
                same(
                    cached.read_wstring_limited(ctx, lim),
                    plain.read_wstring_limited(ctx, lim),
                    c,
                    "read_wstring_limited",
                );
                same(
                    cached.read_wstring(ctx),
                    plain.read_wstring(ctx),
                    c,
                    "read_wstring",
                );
            }
            8 => {
                // A write: to both cores, with the same outcome when the address resolves
                // the same way on both.
                let ctx = context(&mut input, root);
                let c = !(dirty && is_paging(ctx));
                let len = usize::from(input_len(&mut input));
                let bytes = input.take(len).to_vec();
                let (rx, ry) = (cached.write(ctx, &bytes), plain.write(ctx, &bytes));
                same(rx, ry, c, "write");
                dirty = true;
                if !c {
                    // The two cores may have written different frames: the plain core's
                    // memory is the truth from here on, so read only through it.
                    return;
                }
            }
            9 => {
                let va = Va(address(&mut input));
                // Outside PAE (where CR3 bits 11:5 address the PDPT), CR3 bits 11:0 are
                // PCID or flags (SDM Vol. 3A 4.5.2, Table 4-12): the same address space.
                let alias = Pa(root.0 & !0xfff | u64::from(input.u8() % 4));
                let flushed = if input.bool() && mode != PagingMode::Pae {
                    alias
                } else {
                    root
                };
                cached.flush_v2p_cache_entry(AddressContext::new(va, flushed));
                assert_eq!(
                    cached.translate(va, root),
                    cached.translate_uncached(va, root),
                    "a translation flushed by entry is served stale"
                );
            }
            10 => {
                cached.flush_v2p_cache();
                dirty = false;
            }
            11 => {
                cached.resize_v2p_cache(usize::from(input.u16() % 1100));
                dirty = false;
            }
            12 => {
                if input.bool() {
                    cached.disable_v2p_cache();
                    dirty = false;
                } else {
                    cached.enable_v2p_cache();
                }
            }
            13 => match input.u8() % 5 {
                0 => cached.resize_gfn_cache(usize::from(input.u16() % 600)),
                1 => cached.enable_gfn_cache(),
                2 => cached.disable_gfn_cache(),
                3 => cached.flush_gfn_cache(),
                _ => cached.flush_gfn_cache_entry(Gfn(u64::from(input.u8()))),
            },
            14 => {
                let va = Va(address(&mut input));
                let t = cached.translate(va, root);
                if !dirty {
                    assert_eq!(
                        t,
                        cached.translate_uncached(va, root),
                        "a stale translation"
                    );
                    assert_eq!(t, plain.translate(va, root));
                    let ctx = AccessContext::paging(va, root);
                    assert_eq!(
                        cached.translate_access_context(ctx),
                        plain.translate_access_context(ctx)
                    );
                    assert_eq!(
                        cached.translate_address(AddressContext::new(va, root)),
                        t.map(|t| t.pa)
                    );
                }
                let m = cached.v2p_cache_metrics();
                assert!(m.len <= m.capacity, "{m:?}");
            }
            _ => {
                let lim = usize::from(input.u16());
                cached.set_read_string_length_limit(lim);
                plain.set_read_string_length_limit(lim);
                assert_eq!(cached.read_string_length_limit(), lim);
            }
        }
    }
});

/// The length of a write: mostly small, up to two pages.
fn input_len(input: &mut Input<'_>) -> u16 {
    match input.u8() % 4 {
        0 => 8,
        1 => u16::from(input.u8()),
        _ => input.u16() % 0x2001,
    }
}
