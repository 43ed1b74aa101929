//! The core's catalogue of bad input (issue 13, "Must have" 6): one table, one row per
//! hostile or absurd input, each with the named error (or the bounded answer) it must
//! get. Rows: non-canonical addresses, a root past memory, looping page tables, strings
//! with no NUL, lengths of 0 and of `usize::MAX`, GFNs beyond the maximum, and their
//! neighbours (an address that wraps, entries that point past memory, a bad width).
//!
//! Every row runs against two cores over the same memory: a read-only driver that lends
//! its memory whole (the walker reads it directly) and a writable one (reads go through
//! the page cache). Where the two name an out-of-memory access differently, the row says
//! which error each gets.

use introvisor::arch::amd64::{Paging, PagingMode};
use introvisor::{AccessContext, FaultReason, Gfn, Pa, PageRef, Va, VmiCore, VmiError};
use introvisor_host::HostDriver;
use introvisor_host::builder::{GuestBuilder, MapFlags, PageSize};

const MEMORY: usize = 4 << 20;
/// A user page holding a short NUL-terminated string.
const TEXT: u64 = 0x0000_7f00_0000_0000;
/// A kernel page with no NUL anywhere; the page after it is unmapped.
const NO_NUL: u64 = 0xffff_8880_0000_0000;
/// A page whose PTE points past the end of memory.
const PAST: u64 = 0xffff_8880_0000_4000;
/// The PML4 slot that points back at the PML4 (a loop: the table is its own PDPT, PD
/// and PT).
const LOOP_SLOT: u64 = 0x1fe;

struct Fixture {
    /// Read-only memory, lent whole to the walker.
    ro: VmiCore<HostDriver>,
    /// Writable memory: reads through the page cache.
    rw: VmiCore<HostDriver>,
    root: Pa,
    max_gfn: Gfn,
}

fn fixture() -> Fixture {
    let mut b = GuestBuilder::new(MEMORY);
    b.map_new(Va(TEXT), PageSize::Size4K, MapFlags::USER_DATA)
        .unwrap();
    b.write_virtual(Va(TEXT + 0x10), b"init\0").unwrap();
    b.map_new(Va(NO_NUL), PageSize::Size4K, MapFlags::KERNEL_DATA)
        .unwrap();
    b.write_virtual(Va(NO_NUL), &[b'x'; 4096]).unwrap();
    b.map(
        Va(PAST),
        Pa(16 << 30),
        PageSize::Size4K,
        MapFlags::KERNEL_DATA,
    )
    .unwrap();
    let root = b.root();
    b.write_physical(Pa(root.0 + LOOP_SLOT * 8), &(root.0 | 0x3).to_le_bytes())
        .unwrap();
    let guest = b.finish();
    let max_gfn = Gfn((MEMORY as u64 >> 12) - 1);
    Fixture {
        ro: VmiCore::new(HostDriver::from_vec(guest.memory.clone())),
        rw: VmiCore::new(HostDriver::from_vec_writable(guest.memory)),
        root,
        max_gfn,
    }
}

/// The virtual address whose 4-level indices are `indices` (PML4 first), sign-extended.
fn va_of(indices: [u64; 4]) -> u64 {
    let raw = indices
        .iter()
        .enumerate()
        .fold(0u64, |va, (i, &ix)| va | (ix << (39 - 9 * i as u32)));
    (((raw << 16) as i64) >> 16) as u64
}

/// What a row must get.
#[derive(Debug)]
enum Want {
    /// This exact error.
    Err(VmiError),
    /// A failed translation: this reason, at this level, for this address.
    Fault(FaultReason, u8, u64),
    /// Success, with this answer (as the row formats it).
    Ok(String),
}

/// The result of a row, with its answer formatted.
type Got = Result<String, VmiError>;

fn fmt<T: core::fmt::Debug>(r: Result<T, VmiError>) -> Got {
    r.map(|v| format!("{v:?}"))
}

struct Row {
    name: &'static str,
    run: fn(&Fixture, &VmiCore<HostDriver>) -> Got,
    /// For the read-only core, and for the writable one when it differs.
    want: fn(&Fixture) -> (Want, Option<Want>),
}

fn same(w: Want) -> (Want, Option<Want>) {
    (w, None)
}

fn paging(root: Pa, va: u64) -> AccessContext {
    AccessContext::paging(Va(va), root)
}

fn rows() -> Vec<Row> {
    vec![
        // ----- non-canonical addresses ----------------------------------------------
        Row {
            name: "non-canonical VA, 4-level (bit 47 set, 63:48 clear)",
            run: |f, c| fmt(c.translate(Va(0x0000_8000_0000_0000), f.root)),
            want: |_| {
                same(Want::Fault(
                    FaultReason::NonCanonical,
                    4,
                    0x0000_8000_0000_0000,
                ))
            },
        },
        Row {
            name: "non-canonical VA, 4-level, read through it",
            run: |f, c| fmt(c.read_u64(paging(f.root, 0xfff0_0000_0000_0000))),
            want: |_| {
                same(Want::Fault(
                    FaultReason::NonCanonical,
                    4,
                    0xfff0_0000_0000_0000,
                ))
            },
        },
        Row {
            name: "non-canonical VA, 5-level (bit 56 set, 63:57 clear)",
            run: |f, c| {
                let five = Paging::new(PagingMode::Level5);
                fmt(c.translate_with(&five, Va(1 << 56), f.root, |_| {}))
            },
            want: |_| same(Want::Fault(FaultReason::NonCanonical, 5, 1 << 56)),
        },
        Row {
            name: "VA at 4 GiB under 32-bit paging",
            run: |f, c| {
                let bits32 = Paging::new(PagingMode::Bits32);
                fmt(c.translate_with(&bits32, Va(1 << 32), f.root, |_| {}))
            },
            want: |_| same(Want::Fault(FaultReason::NonCanonical, 2, 1 << 32)),
        },
        Row {
            name: "VA at 4 GiB under PAE paging",
            run: |f, c| {
                let pae = Paging::new(PagingMode::Pae);
                fmt(c.translate_with(&pae, Va(1 << 32), f.root, |_| {}))
            },
            want: |_| same(Want::Fault(FaultReason::NonCanonical, 3, 1 << 32)),
        },
        // ----- a root past memory ---------------------------------------------------
        Row {
            name: "root past the end of memory",
            run: |_, c| fmt(c.translate(Va(TEXT), Pa(64 << 30))),
            want: |_| same(Want::Fault(FaultReason::OutOfMemory, 4, TEXT)),
        },
        Row {
            name: "root at the last frame's last bytes (entry read straddles the end)",
            run: |_, c| fmt(c.translate(Va(0xffff_ff80_0000_0000), Pa(MEMORY as u64 - 4096))),
            want: |_| {
                // PML4 index 511 is the frame's last entry: inside memory, and zero.
                same(Want::Fault(
                    FaultReason::NotPresent,
                    4,
                    0xffff_ff80_0000_0000,
                ))
            },
        },
        Row {
            name: "root past the end, with PCID and no-flush bits",
            run: |_, c| fmt(c.translate(Va(TEXT), Pa((1 << 63) | (64 << 30) | 0x123))),
            want: |_| same(Want::Fault(FaultReason::OutOfMemory, 4, TEXT)),
        },
        // ----- looping page tables --------------------------------------------------
        Row {
            name: "a PML4 that is its own PDPT, PD and PT: the loop ends at level 1",
            run: |f, c| {
                let va = va_of([LOOP_SLOT, LOOP_SLOT, LOOP_SLOT, 0x1ff]);
                let mut reads = 0;
                let r = c.translate_with(c.paging(), Va(va), f.root, |_| reads += 1);
                assert_eq!(reads, 4, "one entry a level");
                fmt(r)
            },
            want: |_| {
                same(Want::Fault(
                    FaultReason::NotPresent,
                    1,
                    va_of([LOOP_SLOT, LOOP_SLOT, LOOP_SLOT, 0x1ff]),
                ))
            },
        },
        Row {
            name: "the same loop, all the way round: the PML4 maps itself as a page",
            run: |f, c| {
                let va = va_of([LOOP_SLOT; 4]) + 0x18;
                fmt(c.translate(Va(va), f.root).map(|t| (t.pa, t.page_size)))
            },
            want: |f| same(Want::Ok(format!("{:?}", (Pa(f.root.0 + 0x18), 4096u64)))),
        },
        Row {
            name: "a read through the loop reads the PML4 itself, not forever",
            run: |f, c| {
                let va = va_of([LOOP_SLOT; 4]) + LOOP_SLOT * 8;
                fmt(c.read_u64(paging(f.root, va)))
            },
            want: |f| same(Want::Ok(format!("{}", f.root.0 | 0x3))),
        },
        // ----- strings with no NUL --------------------------------------------------
        Row {
            name: "no NUL before an unmapped page: the page the string reaches faults",
            run: |f, c| fmt(c.read_string_bytes(paging(f.root, NO_NUL)).map(|v| v.len())),
            want: |_| same(Want::Fault(FaultReason::NotPresent, 1, NO_NUL + 4096)),
        },
        Row {
            name: "no NUL, UTF-16: the same fault",
            run: |f, c| fmt(c.read_wstring(paging(f.root, NO_NUL + 1)).map(|s| s.len())),
            want: |_| same(Want::Fault(FaultReason::NotPresent, 1, NO_NUL + 4096)),
        },
        Row {
            name: "no NUL within the limit: cut at the limit",
            run: |f, c| {
                fmt(c
                    .read_string_bytes_limited(paging(f.root, NO_NUL), 1000)
                    .map(|v| v.len()))
            },
            want: |_| same(Want::Ok("1000".into())),
        },
        Row {
            name: "no NUL within a buffer shorter than the limit: BufferTooSmall",
            run: |f, c| {
                let mut buf = [0u8; 64];
                fmt(c
                    .read_string_bytes_into(paging(f.root, NO_NUL), &mut buf)
                    .map(<[u8]>::len))
            },
            want: |_| same(Want::Err(VmiError::BufferTooSmall)),
        },
        // ----- lengths of 0 ---------------------------------------------------------
        Row {
            name: "a read of 0 bytes at an unmapped address touches nothing",
            run: |f, c| fmt(c.read(paging(f.root, NO_NUL + 4096), &mut [])),
            want: |_| same(Want::Ok("()".into())),
        },
        Row {
            name: "a write of 0 bytes to read-only memory at an unmapped address",
            run: |f, c| fmt(c.write(paging(f.root, NO_NUL + 4096), &[])),
            want: |_| same(Want::Ok("()".into())),
        },
        Row {
            name: "a string limit of 0",
            run: |f, c| fmt(c.read_string_bytes_limited(paging(f.root, NO_NUL + 4096), 0)),
            want: |_| same(Want::Ok("[]".into())),
        },
        Row {
            name: "a UTF-16 limit of 1 byte (no whole unit)",
            run: |f, c| fmt(c.read_wstring_bytes_limited(paging(f.root, NO_NUL + 4096), 1)),
            want: |_| same(Want::Ok("[]".into())),
        },
        Row {
            name: "an empty buffer for a non-empty string: BufferTooSmall",
            run: |f, c| fmt(c.read_string_bytes_into(paging(f.root, TEXT + 0x10), &mut [])),
            want: |_| same(Want::Err(VmiError::BufferTooSmall)),
        },
        Row {
            name: "an empty buffer for an empty string",
            run: |f, c| fmt(c.read_string_bytes_into(paging(f.root, TEXT + 0x14), &mut [])),
            want: |_| same(Want::Ok("[]".into())),
        },
        // ----- lengths of usize::MAX ------------------------------------------------
        Row {
            name: "a string limit of usize::MAX stops at the fault, allocating as it goes",
            run: |f, c| {
                fmt(c
                    .read_string_bytes_limited(paging(f.root, NO_NUL), usize::MAX)
                    .map(|v| v.len()))
            },
            want: |_| same(Want::Fault(FaultReason::NotPresent, 1, NO_NUL + 4096)),
        },
        Row {
            name: "a UTF-16 limit of usize::MAX stops at the fault",
            run: |f, c| {
                fmt(c
                    .read_wstring_bytes_limited(paging(f.root, NO_NUL), usize::MAX)
                    .map(|v| v.len()))
            },
            want: |_| same(Want::Fault(FaultReason::NotPresent, 1, NO_NUL + 4096)),
        },
        Row {
            name: "a limit of usize::MAX into a buffer is bounded by the buffer",
            run: |f, c| {
                let mut buf = [0u8; 16];
                fmt(c.read_string_bytes_limited_into(
                    paging(f.root, TEXT + 0x10),
                    usize::MAX,
                    &mut buf,
                ))
            },
            want: |_| same(Want::Ok(format!("{:?}", b"init"))),
        },
        Row {
            name: "a core string limit of usize::MAX",
            run: |f, c| {
                let before = c.read_string_length_limit();
                c.set_read_string_length_limit(usize::MAX);
                let r = c.read_string(paging(f.root, TEXT + 0x10));
                c.set_read_string_length_limit(before);
                fmt(r)
            },
            want: |_| same(Want::Ok("\"init\"".into())),
        },
        Row {
            name: "a physical read whose end wraps past 2^64",
            run: |_, c| {
                let mut buf = [0u8; 8];
                fmt(c.read(AccessContext::direct(Pa(u64::MAX - 3)), &mut buf))
            },
            want: |_| {
                (
                    Want::Err(VmiError::OutOfBounds(Pa(u64::MAX - 3))),
                    Some(Want::Err(VmiError::GfnNotPresent(Gfn(u64::MAX >> 12)))),
                )
            },
        },
        Row {
            name: "a virtual read whose end wraps past 2^64 (the last page is unmapped)",
            run: |f, c| {
                let mut buf = [0u8; 16];
                fmt(c.read(paging(f.root, u64::MAX - 7), &mut buf))
            },
            want: |_| same(Want::Fault(FaultReason::NotPresent, 4, u64::MAX - 7)),
        },
        Row {
            name: "an address width of 3",
            run: |f, c| fmt(c.read_address(paging(f.root, TEXT), 3)),
            want: |_| same(Want::Err(VmiError::InvalidAddressWidth(3))),
        },
        // ----- GFNs beyond the maximum ----------------------------------------------
        Row {
            name: "the frame after the last",
            run: |f, c| fmt(c.read_page(Gfn(f.max_gfn.0 + 1)).map(|p| p.gfn())),
            want: |f| same(Want::Err(VmiError::GfnNotPresent(Gfn(f.max_gfn.0 + 1)))),
        },
        Row {
            name: "the last frame is there",
            run: |f, c| fmt(c.read_page(f.max_gfn).map(|p| p.gfn())),
            want: |f| same(Want::Ok(format!("{:?}", f.max_gfn))),
        },
        Row {
            name: "GFN u64::MAX (its address does not fit in 64 bits)",
            run: |_, c| fmt(c.read_page(Gfn(u64::MAX)).map(|p| p.gfn())),
            want: |_| same(Want::Err(VmiError::GfnNotPresent(Gfn(u64::MAX)))),
        },
        Row {
            name: "a physical read one frame past the end",
            run: |f, c| {
                let pa = Pa((f.max_gfn.0 + 1) << 12);
                fmt(c.read_u32(AccessContext::direct(pa)))
            },
            want: |f| {
                let gfn = Gfn(f.max_gfn.0 + 1);
                (
                    Want::Err(VmiError::OutOfBounds(Pa(gfn.0 << 12))),
                    Some(Want::Err(VmiError::GfnNotPresent(gfn))),
                )
            },
        },
        Row {
            name: "a PTE whose frame is past the end: the walk succeeds, the read fails",
            run: |f, c| {
                assert_eq!(
                    c.translate_address((Va(PAST + 8), f.root).into()),
                    Ok(Pa((16 << 30) + 8))
                );
                fmt(c.read_u64(paging(f.root, PAST + 8)))
            },
            want: |_| {
                (
                    Want::Err(VmiError::OutOfBounds(Pa((16 << 30) + 8))),
                    Some(Want::Err(VmiError::GfnNotPresent(Gfn((16 << 30) >> 12)))),
                )
            },
        },
        Row {
            name: "a write to a frame past the end",
            run: |f, c| fmt(c.write_u64(paging(f.root, PAST), 1)),
            // Past the end comes first, read-only memory or not.
            want: |_| same(Want::Err(VmiError::OutOfBounds(Pa(16 << 30)))),
        },
        Row {
            name: "a walk that reaches a table past the end (the root's last frame + 1)",
            run: |f, c| fmt(c.translate(Va(TEXT), Pa(((f.max_gfn.0 + 1) << 12) | 0x18))),
            want: |_| same(Want::Fault(FaultReason::OutOfMemory, 4, TEXT)),
        },
    ]
}

fn check(got: &Got, want: &Want) -> bool {
    match (got, want) {
        (Ok(v), Want::Ok(w)) => v == w,
        (Err(e), Want::Err(w)) => e == w,
        (Err(e), Want::Fault(reason, level, va)) => e
            .page_fault()
            .is_some_and(|pf| pf.reason == *reason && pf.level == *level && pf.va.0 == *va),
        _ => false,
    }
}

#[test]
fn every_bad_input_gets_its_named_error() {
    let f = fixture();
    let rows = rows();
    let mut failures = Vec::new();
    for row in &rows {
        let (want_ro, want_rw) = (row.want)(&f);
        let want_rw = want_rw.as_ref().unwrap_or(&want_ro);
        for (which, core, want) in [("read-only", &f.ro, &want_ro), ("writable", &f.rw, want_rw)] {
            // Twice: the second run may be answered from the caches, and must agree.
            for pass in 0..2 {
                let got = (row.run)(&f, core);
                if !check(&got, want) {
                    failures.push(format!(
                        "{}: {which} core, pass {pass}: got {got:?}, want {want:?}",
                        row.name
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    assert!(rows.len() >= 30);
}
