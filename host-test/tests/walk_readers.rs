//! The walker's read paths agree: every reader it can be given answers every walk the
//! same way, entry for entry, on random garbage tables where a quarter of the table
//! addresses point past the end of memory.
//!
//! The readers: a byte slice (the walker's fast path, `PhysRead::read_u64_fast`), a reader
//! with `read_u64` and `read_u32` only (the slow path for every entry), and `VmiCore` over
//! `HostDriver` with the page cache on (entries through the page cache), off over
//! read-only memory (entries from the memory the driver lends, `physical_memory`), and off
//! over writable memory (which lends none: `read_physical`). Failing entry reads
//! (`OutOfMemory` faults) must come out the same from the fast path's fallback as from the
//! slow path.

use std::collections::HashMap;

use introvisor::arch::amd64::{Amd64, Paging, PagingMode};
use introvisor::{Architecture, Pa, PhysRead, Translation, Va, VmiCore, VmiError, WalkStep};
use introvisor_host::HostDriver;
use introvisor_host_test::{Rng, seed};

/// Guest memory: 32 pages. Table addresses go up to 64 pages, so many point past the end.
const PAGES: u64 = 32;

/// A reader with no fast path: every entry through `read_u64` or `read_u32`.
struct SlowOnly<'a>(&'a [u8]);

impl PhysRead for SlowOnly<'_> {
    fn read_u64(&self, pa: Pa) -> Result<u64, VmiError> {
        self.0.read_u64(pa)
    }

    fn read_u32(&self, pa: Pa) -> Result<u32, VmiError> {
        self.0.read_u32(pa)
    }
}

/// Random entries: mostly present, a frame anywhere in twice the memory, random flags, and
/// now and then random high bits (reserved, XD, ignored).
fn garbage(rng: &mut Rng) -> Vec<u8> {
    let mut mem = vec![0u8; (PAGES * 4096) as usize];
    for chunk in mem.chunks_exact_mut(8) {
        let mut v = (rng.below(2 * PAGES) << 12) | (rng.next_u64() & 0xfff);
        if rng.below(8) != 0 {
            v |= 1;
        }
        if rng.below(4) == 0 {
            v &= !0x80;
        }
        if rng.below(8) == 0 {
            v |= rng.next_u64() & 0xfff0_0000_0000_0000;
        }
        if rng.below(16) == 0 {
            v |= 1 << rng.below(64);
        }
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    mem
}

fn random_paging(rng: &mut Rng, mode: PagingMode) -> Paging {
    let maxphy = [32u8, 36, 40, 46, 52][rng.below(5) as usize];
    let mut paging = Paging::new(mode)
        .with_max_phys_addr(maxphy)
        .with_nxe(rng.below(4) != 0)
        .with_pse(rng.below(4) != 0)
        .with_page_1gb(rng.below(4) != 0);
    if mode == PagingMode::Pae && rng.below(4) == 0 {
        let mut pdptes = [0u64; 4];
        for p in &mut pdptes {
            *p = (rng.below(2 * PAGES) << 12) | (rng.next_u64() & 1);
        }
        paging = paging.with_pdptes(Some(pdptes));
    }
    paging
}

type Outcome = (Result<Translation, VmiError>, Vec<WalkStep>);

fn observed(
    walk: impl FnOnce(&mut dyn FnMut(WalkStep)) -> Result<Translation, VmiError>,
) -> Outcome {
    let mut steps = Vec::new();
    let r = walk(&mut |s| steps.push(s));
    (r, steps)
}

/// A short name for an outcome, to count what the run explored.
fn kind(r: &Result<Translation, VmiError>) -> String {
    match r {
        Ok(t) => format!("ok {:#x}", t.page_size),
        Err(VmiError::Translation(pf)) => format!("{:?}", pf.reason),
        Err(e) => format!("{e:?}"),
    }
}

#[test]
fn every_reader_walks_alike() {
    let seed_value = seed(0x7761_6c6b_7264);
    let mut rng = Rng::new(seed_value);
    for mode in [
        PagingMode::Disabled,
        PagingMode::Bits32,
        PagingMode::Pae,
        PagingMode::Level4,
        PagingMode::Level5,
    ] {
        let mut kinds: HashMap<String, u64> = HashMap::new();
        for _guest in 0..40 {
            let mem = garbage(&mut rng);
            let cached = VmiCore::new(HostDriver::from_vec(mem.clone()));
            let mut lent = VmiCore::new(HostDriver::from_vec(mem.clone()));
            lent.disable_gfn_cache();
            lent.disable_v2p_cache();
            let mut locked = VmiCore::new(HostDriver::from_vec_writable(mem.clone()));
            locked.disable_gfn_cache();
            locked.disable_v2p_cache();
            assert!(lent.driver().memory().as_identity_slice().is_some());
            assert!(locked.driver().memory().as_identity_slice().is_none());
            for _ in 0..250 {
                let paging = random_paging(&mut rng, mode);
                // Roots inside memory mostly, past its end sometimes; CR3 low bits random.
                let root = Pa((rng.below(PAGES + PAGES / 4) << 12) | rng.below(0x1000));
                let va = Va(if rng.below(8) == 0 {
                    rng.next_u64()
                } else {
                    // Canonical for 4-level paging; also below 4 GiB half the time.
                    let v = rng.next_u64() & 0x0000_7fff_ffff_ffff;
                    if rng.below(2) == 0 {
                        v & 0xffff_ffff
                    } else {
                        v
                    }
                });
                let ctx = || format!("{mode:?} seed {seed_value:#x} {paging:?} {root:?} {va:?}");

                let fast = observed(|o| Amd64::translate_observed(&mem[..], &paging, va, root, o));
                let slow =
                    observed(|o| Amd64::translate_observed(&SlowOnly(&mem), &paging, va, root, o));
                assert_eq!(fast, slow, "slice vs read_u64 only, {}", ctx());
                // Without an observer the walk of a lent slice is its own code (4- and
                // 5-level paging): the same answer, on the whole memory and on memory
                // that ends inside a page (tables there are partly outside it).
                assert_eq!(
                    Amd64::translate(&mem[..], &paging, va, root),
                    fast.0,
                    "lent slice, {}",
                    ctx()
                );
                let cut = mem.len() - 1 - rng.below(4096) as usize;
                assert_eq!(
                    Amd64::translate(&mem[..cut], &paging, va, root),
                    Amd64::translate_observed(&SlowOnly(&mem[..cut]), &paging, va, root, |_| {}),
                    "lent slice of {cut} bytes, {}",
                    ctx()
                );
                for (name, core) in [
                    ("page cache", &cached),
                    ("lent", &lent),
                    ("locked", &locked),
                ] {
                    let through = observed(|o| core.translate_with(&paging, va, root, o));
                    assert_eq!(through, fast, "VmiCore ({name}) vs slice, {}", ctx());
                }
                // translate_uncached under the core's own paging, same answer.
                lent.set_paging(paging);
                locked.set_paging(paging);
                assert_eq!(lent.translate_uncached(va, root), fast.0, "{}", ctx());
                assert_eq!(locked.translate_uncached(va, root), fast.0, "{}", ctx());
                *kinds.entry(kind(&fast.0)).or_default() += 1;
            }
        }
        println!("{mode:?}: {kinds:?}");
        // The run explored what it claims to: successful walks, and (with paging on)
        // entries not present, reserved bits, and entries past the end of memory.
        assert!(
            kinds.keys().any(|k| k.starts_with("ok")),
            "{mode:?}: {kinds:?}"
        );
        if mode != PagingMode::Disabled {
            for reason in ["NotPresent", "ReservedBit", "OutOfMemory"] {
                assert!(
                    kinds.contains_key(reason),
                    "{mode:?}: no {reason} in {kinds:?}"
                );
            }
        }
    }
}

#[test]
fn slice_fast_read_agrees_with_read_u64_at_the_edges() {
    let mem: Vec<u8> = (0u8..=40).collect();
    let short = &mem[..7];
    for (bytes, pa) in [
        (&mem[..], 0),
        (&mem[..], 32),           // the last 8 bytes
        (&mem[..], 33),           // one byte short
        (&mem[..], 41),           // just past the end
        (&mem[..], u64::MAX - 3), // the end of the address space
        (&mem[..], 1 << 63),
        (short, 0), // memory smaller than one entry
        (&mem[..0], 0),
    ] {
        let fast = bytes.read_u64_fast(Pa(pa));
        let full = bytes.read_u64(Pa(pa));
        assert_eq!(fast, full.ok(), "pa {pa:#x} in {} bytes", bytes.len());
        if let Err(e) = full {
            assert_eq!(e, VmiError::OutOfBounds(Pa(pa)));
        }
    }
    assert_eq!(
        mem[..].read_u64_fast(Pa(32)),
        Some(u64::from_le_bytes([32, 33, 34, 35, 36, 37, 38, 39]))
    );
}
