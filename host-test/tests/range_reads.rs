//! Long reads (more than 16 pages) take a range walk over consecutive PTEs and copy each
//! run of physically contiguous frames at once. They must read exactly what reads of one
//! page at a time read, and fail with the same first error, having filled the same bytes
//! before it, over a guest whose frames are partly contiguous and partly shuffled, with
//! mixed flags, a hole at the end of a run, a run that runs past the end of memory, a
//! PTE with a reserved bit, a 2 MiB page inside
//! the range whose frames continue the run before it and into the run after it, frames
//! aliased (one frame under several pages, frames in descending order), and a range that
//! crosses page tables; through memory the driver lends, a driver that reads across pages
//! with one call, and one that reads a page at a time.

use core::sync::atomic::{AtomicUsize, Ordering};

use introvisor::arch::amd64::{Amd64, Paging, PagingMode};
use introvisor::{AccessContext, Gfn, Pa, Va, VmiCore, VmiDriver, VmiError, VmiInfo};
use introvisor_host::builder::{Guest, GuestBuilder, PageSize};
use introvisor_host::{BorrowedDriver, HostDriver};
use introvisor_host_test::{Rng, mixed_flags};

const BASE: u64 = 0xffff_8000_001f_0000; // 16 pages before a 2 MiB boundary
const PAGES: u64 = 1100; // across three page tables
const HOLE: u64 = 700;
const RESERVED: u64 = 900;
const MEMORY: usize = 16 << 20;
const FRAMES: u64 = 8 << 20; // 4 KiB frames from here
/// The 2 MiB leaf: pages 16..528, at this frame; pages 0..16 end right below it, pages
/// 528..540 start right after it (one run of 540 pages across two leaf sizes).
const LEAF: u64 = 2 << 20;
/// Pages 540..556 all map this one frame; pages 556..564 map descending frames.
const ALIAS: u64 = 6 << 20;
/// Pages 680..700, one run that ends at the hole.
const BEFORE_HOLE: u64 = 6 << 20 | 64 << 10;
/// Pages 1000..1010, one run of frames whose last five are past the end of memory.
const PAST_END: u64 = MEMORY as u64 - 5 * 4096;

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
    let frame = |page: u64| match page {
        0..16 => LEAF - (16 - page) * 4096,
        528..540 => LEAF + (2 << 20) + (page - 528) * 4096,
        540..556 => ALIAS,
        556..564 => ALIAS + (564 - page) * 4096,
        680..700 => BEFORE_HOLE + (page - 680) * 4096,
        1000..1010 => PAST_END + (page - 1000) * 4096,
        _ => FRAMES + frame_of[page as usize] * 4096,
    };
    for page in (0..PAGES).filter(|p| !(16..528).contains(p)) {
        if page == HOLE {
            continue;
        }
        b.map(
            Va(BASE + page * 4096),
            Pa(frame(page)),
            PageSize::Size4K,
            mixed_flags::map_flags(&mut rng),
        )
        .unwrap();
    }
    b.map(
        Va(BASE + 16 * 4096),
        Pa(LEAF),
        PageSize::Size2M,
        mixed_flags::map_flags(&mut rng),
    )
    .unwrap();
    let mut g = b.finish();
    mixed_flags::decorate(&mut g, 0x7a9e);
    // Data: every byte its own (the tables are in the first few pages).
    for (i, byte) in g
        .memory
        .iter_mut()
        .enumerate()
        .skip(LEAF as usize - (64 << 10))
    {
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

/// `len` bytes at `va`, read at most one page at a time (never a long read): the bytes
/// and `Ok`, or the bytes read before the page that failed, how many, and the error.
fn reference(
    core: &VmiCore<impl VmiDriver>,
    root: Pa,
    va: u64,
    len: usize,
) -> (Vec<u8>, Result<(), (usize, VmiError)>) {
    let mut out = vec![0u8; len];
    let mut done = 0usize;
    while done < len {
        let at = va + done as u64;
        let n = ((4096 - (at & 0xfff)) as usize).min(len - done);
        if let Err(e) = core.read(
            AccessContext::paging(Va(at), root),
            &mut out[done..done + n],
        ) {
            return (out, Err((done, e)));
        }
        done += n;
    }
    (out, Ok(()))
}

fn check(core: &VmiCore<impl VmiDriver>, root: Pa, name: &str) {
    let mut rng = Rng::new(0x5ca9);
    let mut windows: Vec<(u64, usize)> = vec![
        (0, PAGES as usize * 4096),
        (8, 17 * 4096),
        (4095, 40 * 4096 + 2),
        (HOLE * 4096 - 20 * 4096, 30 * 4096),
        (HOLE * 4096 - 40 * 4096 + 8, 40 * 4096 - 8),
        (RESERVED * 4096 - 18 * 4096 + 100, 20 * 4096),
        (5 * 4096, 600 * 4096),
        (500 * 4096 + 12, 100 * 4096),
        (520 * 4096, 60 * 4096),
        (720 * 4096, 170 * 4096),
        (990 * 4096 + 4, 40 * 4096),
        (1004 * 4096, 20 * 4096),
    ];
    for _ in 0..60 {
        let start = rng.below(PAGES * 4096);
        let len = (17 * 4096 + rng.below(200 * 4096)).min(PAGES * 4096 - start) as usize;
        windows.push((start, len));
    }
    let (mut ok, mut failed) = (0, 0);
    for (offset, len) in windows {
        let va = BASE + offset;
        let (want, result) = reference(core, root, va, len);
        let mut got = vec![0u8; len];
        let r = core.read(AccessContext::paging(Va(va), root), &mut got);
        match result {
            Ok(()) => {
                assert_eq!(r, Ok(()), "{name}: read at {va:#x}+{len:#x}");
                assert!(got == want, "{name}: bytes at {va:#x}+{len:#x}");
                ok += 1;
            }
            Err((done, e)) => {
                assert_eq!(r, Err(e), "{name}: error at {va:#x}+{len:#x}");
                assert!(
                    got[..done] == want[..done],
                    "{name}: bytes before the failure at {va:#x}+{len:#x} (+{done:#x})"
                );
                failed += 1;
            }
        }
    }
    assert!(
        ok > 5 && failed > 5,
        "{name}: {ok} reads, {failed} failures"
    );
}

/// A driver over another that lends no memory, says whether it reads across pages, and
/// records the longest `read_physical` it was given.
struct Spy<D> {
    inner: D,
    spans: bool,
    longest: AtomicUsize,
}

impl<D: VmiDriver<Architecture = Amd64>> VmiDriver for Spy<D> {
    type Architecture = Amd64;
    type Page = D::Page;

    fn info(&self) -> Result<VmiInfo, VmiError> {
        self.inner.info()
    }

    fn read_page(&self, gfn: Gfn) -> Result<D::Page, VmiError> {
        self.inner.read_page(gfn)
    }

    fn read_physical(&self, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
        self.longest.fetch_max(buf.len(), Ordering::Relaxed);
        self.inner.read_physical(pa, buf)
    }

    fn read_physical_spans_pages(&self) -> bool {
        self.spans
    }
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

/// With the page cache off, a driver that reads across pages gets a run of contiguous
/// frames in one call, and one that does not gets pages; both read what page reads read.
/// With the page cache on, neither is asked for more than a page.
#[test]
fn runs_are_read_with_one_call_when_the_driver_spans_pages() {
    let (g, root) = guest();
    let paging = Paging::new(PagingMode::Level4).with_max_phys_addr(40);
    for spans in [true, false] {
        for page_cache in [false, true] {
            let core = VmiCore::new(Spy {
                inner: HostDriver::from_vec(g.memory.clone()),
                spans,
                longest: AtomicUsize::new(0),
            })
            .with_paging(paging);
            if !page_cache {
                core.disable_gfn_cache();
            }
            let name = format!("spans {spans}, page cache {page_cache}");
            // Pages 0..540: one run across the 2 MiB leaf (the first and last pages of a
            // long read are read alone).
            let mut got = vec![0u8; 540 * 4096];
            core.read(AccessContext::paging(Va(BASE), root), &mut got)
                .unwrap();
            let (want, result) = reference(&core, root, BASE, got.len());
            assert_eq!(result, Ok(()), "{name}");
            assert!(got == want, "{name}: bytes");
            let longest = core.driver().longest.load(Ordering::Relaxed);
            if spans && !page_cache {
                assert_eq!(longest, 538 * 4096, "{name}: one call for the run");
            } else {
                assert!(longest <= 4096, "{name}: {longest} bytes in one call");
            }
            check(&core, root, &name);
        }
    }
}

/// Page tables of random entries (most present, some large, some with reserved bits,
/// frames anywhere in memory or past it, so tables alias each other and data): every
/// long read reads what reads of one page at a time read, fails with the same error,
/// and fills the same bytes before it, through lent memory, a driver that reads across
/// pages, and BorrowedDriver.
#[test]
fn long_reads_over_random_tables_match_page_reads() {
    const SIZE: usize = 1 << 20;
    let seed = introvisor_host_test::seed(0x4a11_5eed);
    println!("seed {seed}");
    let mut rng = Rng::new(seed);
    let mut memory = vec![0u8; SIZE];
    let frames = (SIZE / 4096) as u64;
    for word in memory.chunks_exact_mut(8) {
        let frame = match rng.below(16) {
            // Mostly frames inside memory, a few just past it.
            0 => frames + rng.below(4),
            _ => rng.below(frames),
        };
        let mut entry = frame << 12 | rng.below(1 << 12) & !0x80;
        if rng.below(50) != 0 {
            entry |= 1; // present
        }
        if rng.below(12) == 0 {
            entry |= 0x80; // a large page where the level has them
        }
        if rng.below(200) == 0 {
            entry |= 1 << (40 + rng.below(12)); // reserved with MAXPHYADDR 40
        }
        if rng.below(2) == 0 {
            entry |= 1 << 63; // XD
        }
        word.copy_from_slice(&entry.to_le_bytes());
    }
    let root = Pa(0);
    let paging = Paging::new(PagingMode::Level4).with_max_phys_addr(40);
    let lent = VmiCore::new(HostDriver::from_vec(memory.clone())).with_paging(paging);
    let spans = VmiCore::new(HostDriver::from_vec_writable(memory.clone())).with_paging(paging);
    spans.disable_gfn_cache();
    let borrowed = VmiCore::new(BorrowedDriver::new(&memory)).with_paging(paging);
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..400 {
        // Canonical addresses in both halves, most of them where a walk succeeds.
        let mut va = 0;
        for _ in 0..64 {
            let low = rng.below(1 << 47);
            va = if rng.below(2) == 0 {
                low
            } else {
                low | 0xffff_8000_0000_0000
            };
            if lent.translate(Va(va), root).is_ok() {
                break;
            }
        }
        let len = (17 * 4096 + rng.below(100 * 4096)) as usize;
        let (want, result) = reference(&lent, root, va, len);
        let check_one = |name: &str, r: Result<(), VmiError>, got: &[u8]| match &result {
            Ok(()) => {
                assert_eq!(r, Ok(()), "{name}: read at {va:#x}+{len:#x}");
                assert!(got == want, "{name}: bytes at {va:#x}+{len:#x}");
            }
            Err((done, e)) => {
                assert_eq!(r, Err(*e), "{name}: error at {va:#x}+{len:#x}");
                assert!(
                    got[..*done] == want[..*done],
                    "{name}: bytes before the failure at {va:#x}+{len:#x} (+{done:#x})"
                );
            }
        };
        let ctx = AccessContext::paging(Va(va), root);
        let mut got = vec![0u8; len];
        check_one("lent", lent.read(ctx, &mut got), &got);
        let mut got = vec![0u8; len];
        check_one("spans", spans.read(ctx, &mut got), &got);
        let mut got = vec![0u8; len];
        check_one("borrowed", borrowed.read(ctx, &mut got), &got);
        match result {
            Ok(()) => ok += 1,
            Err((done, _)) if done > 17 * 4096 => failed += 1,
            Err(_) => {}
        }
    }
    println!("{ok} whole reads, {failed} failures past the first 17 pages");
    // Some reads succeed whole, some fail past the first 17 pages (in the range walk).
    assert!(ok > 0 && failed > 10, "{ok} reads, {failed} late failures");
}
