//! Long reads (more than 16 pages) take a range walk over consecutive PTEs and copy each
//! run of physically contiguous frames at once. They must read exactly what reads of one
//! page at a time read, and fail with the same first error, over a guest whose frames
//! are partly contiguous and partly shuffled, with mixed flags, a hole, a PTE with a
//! reserved bit, a 2 MiB page inside the range, and a range that crosses page tables.

use introvisor::arch::amd64::{Paging, PagingMode};
use introvisor::{AccessContext, Pa, Va, VmiCore, VmiError};
use introvisor_host::builder::{Guest, GuestBuilder, PageSize};
use introvisor_host::{BorrowedDriver, HostDriver};
use introvisor_host_test::{Rng, mixed_flags};

const BASE: u64 = 0xffff_8000_001f_0000; // 16 pages before a 2 MiB boundary
const PAGES: u64 = 1100; // across three page tables
const HOLE: u64 = 700;
const RESERVED: u64 = 900;
const MEMORY: usize = 16 << 20;
const FRAMES: u64 = 8 << 20; // 4 KiB frames from here

fn guest() -> (Guest, Pa) {
    let mut rng = Rng::new(0x7a9e);
    let mut b = GuestBuilder::new(MEMORY);
    // Frames: runs of 1 to 40 contiguous frames, the runs in shuffled order.
    let mut runs = Vec::new();
    let mut next = 0u64;
    while next < PAGES {
        let len = (1 + rng.below(40)).min(PAGES - next);
        runs.push((next, len));
        next += len;
    }
    for i in (1..runs.len()).rev() {
        runs.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut frame_of = vec![0u64; PAGES as usize];
    let mut at = 0u64;
    for (first, len) in runs {
        for k in 0..len {
            frame_of[(first + k) as usize] = at + k;
        }
        at += len;
    }
    // Pages 16..528 are one 2 MiB leaf (BASE + 16 pages is 2 MiB aligned); the rest are
    // 4 KiB pages but for the hole.
    for page in (0..PAGES).filter(|p| *p == HOLE || !(16..528).contains(p)) {
        if page == HOLE {
            continue;
        }
        b.map(
            Va(BASE + page * 4096),
            Pa(FRAMES + frame_of[page as usize] * 4096),
            PageSize::Size4K,
            mixed_flags::map_flags(&mut rng),
        )
        .unwrap();
    }
    b.map(
        Va(BASE + 16 * 4096),
        Pa(2 << 20),
        PageSize::Size2M,
        mixed_flags::map_flags(&mut rng),
    )
    .unwrap();
    let mut g = b.finish();
    mixed_flags::decorate(&mut g, 0x7a9e);
    // Data: every byte its own.
    for (i, byte) in g.memory.iter_mut().enumerate().skip(2 << 20) {
        *byte = (i as u64).wrapping_mul(0x9e37_79b9) as u8;
    }
    // Bit 45 in one PTE: reserved with MAXPHYADDR 40 (the paging below).
    let root = g.root;
    let core = VmiCore::new(HostDriver::from_vec(g.memory.clone()));
    let mut entry = Pa(0);
    core.translate_with(core.paging(), Va(BASE + RESERVED * 4096), root, |s| {
        entry = s.entry
    })
    .unwrap();
    let at = entry.0 as usize;
    let value = u64::from_le_bytes(g.memory[at..at + 8].try_into().unwrap()) | 1 << 45;
    g.memory[at..at + 8].copy_from_slice(&value.to_le_bytes());
    (g, root)
}

/// `len` bytes at `va`, read at most one page at a time (never a long read).
fn reference(
    core: &VmiCore<impl introvisor::VmiDriver>,
    root: Pa,
    va: u64,
    len: usize,
) -> Result<Vec<u8>, VmiError> {
    let mut out = vec![0u8; len];
    let mut done = 0usize;
    while done < len {
        let at = va + done as u64;
        let n = ((4096 - (at & 0xfff)) as usize).min(len - done);
        core.read(
            AccessContext::paging(Va(at), root),
            &mut out[done..done + n],
        )?;
        done += n;
    }
    Ok(out)
}

fn check(core: &VmiCore<impl introvisor::VmiDriver>, root: Pa, name: &str) {
    let mut rng = Rng::new(0x5ca9);
    let mut windows: Vec<(u64, usize)> = vec![
        (0, PAGES as usize * 4096),
        (8, 17 * 4096),
        (4095, 40 * 4096 + 2),
        (HOLE * 4096 - 20 * 4096, 30 * 4096),
        (RESERVED * 4096 - 18 * 4096 + 100, 20 * 4096),
        (5 * 4096, 600 * 4096),
        (500 * 4096 + 12, 100 * 4096),
        (720 * 4096, 170 * 4096),
    ];
    for _ in 0..60 {
        let start = rng.below(PAGES * 4096);
        let len = (17 * 4096 + rng.below(200 * 4096)).min(PAGES * 4096 - start) as usize;
        windows.push((start, len));
    }
    let (mut ok, mut failed) = (0, 0);
    for (offset, len) in windows {
        let va = BASE + offset;
        let want = reference(core, root, va, len);
        let mut got = vec![0u8; len];
        let r = core.read(AccessContext::paging(Va(va), root), &mut got);
        match want {
            Ok(want) => {
                assert_eq!(r, Ok(()), "{name}: read at {va:#x}+{len:#x}");
                assert!(got == want, "{name}: bytes at {va:#x}+{len:#x}");
                ok += 1;
            }
            Err(e) => {
                assert_eq!(r, Err(e), "{name}: error at {va:#x}+{len:#x}");
                failed += 1;
            }
        }
    }
    assert!(
        ok > 5 && failed > 5,
        "{name}: {ok} reads, {failed} failures"
    );
}

#[test]
fn long_reads_read_what_page_reads_read() {
    let (g, root) = guest();
    let paging = Paging::new(PagingMode::Level4).with_max_phys_addr(40);
    for tlb in [true, false] {
        for pages in [true, false] {
            let core = VmiCore::new(HostDriver::from_vec(g.memory.clone())).with_paging(paging);
            let writable =
                VmiCore::new(HostDriver::from_vec_writable(g.memory.clone())).with_paging(paging);
            for c in [&core, &writable] {
                if !tlb {
                    c.disable_v2p_cache();
                }
                if !pages {
                    c.disable_gfn_cache();
                }
            }
            check(&core, root, &format!("lent, tlb {tlb}, page cache {pages}"));
            check(
                &writable,
                root,
                &format!("not lent, tlb {tlb}, page cache {pages}"),
            );
        }
    }
    let borrowed = VmiCore::new(BorrowedDriver::new(&g.memory)).with_paging(paging);
    check(&borrowed, root, "borrowed");
}
