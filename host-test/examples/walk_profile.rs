//! A small, fixed workload to profile under callgrind (the numbers behind BENCHMARKS.md's
//! notes): 200,000 operations at random addresses over 4,096 4 KiB pages, each with its
//! own flags (`mixed_flags`), page cache off.
//!
//! ```sh
//! cargo build --release -p introvisor-host-test --example walk_profile
//! valgrind --tool=callgrind target/release/examples/walk_profile walk
//! ```
//!
//! Modes: `walk` (no translation cache), `tlb` (misses: the walk and an insertion), `ws`
//! (hits: 64 pages), `read` (`read_u64`), `bulk` / `bulkwalk` (16 MiB in 1 MiB reads,
//! with and without the translation cache); `walkmany`, `tlbmany`, `readmany`: `walk`,
//! `tlb` and `read` through the batch APIs, 64 addresses a call; `miss` (a translation
//! cache of one set: every translation a miss and an offer), `naive` (the bench floor's
//! naive walk), `none` (the loop alone, to subtract). `walk5`, `naive5` and `none5`: `walk`,
//! `naive` and `none` with the same pages under a 5-level guest (CR4.LA57).

use std::time::Instant;

use introvisor::arch::amd64::{Paging, PagingMode};
use introvisor::{AccessContext, Va, VmiCore, VmiError};
use introvisor_host::HostDriver;
use introvisor_host::builder::{GuestBuilder, PageSize};
use introvisor_host_test::{Rng, mixed_flags};

const BASE: u64 = 0xffff_8000_0000_0000;
const PAGES: u64 = 4096;
const OPS: u32 = 200_000;
/// The 2 MiB pages of `walk2m`.
const BASE_2M: u64 = 0xffff_c900_0000_0000;
const LARGE: u64 = 256;
/// MiB in the mapped range.
const MIBS: u64 = (PAGES * 4096) >> 20;

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "walk".into());
    // `walk5`, `naive5`, `none5`: the 4-level mode of that name, under 5-level paging.
    let (mode, levels) = match arg.strip_suffix('5') {
        Some(m @ ("walk" | "naive" | "none")) => (m.to_string(), 5),
        _ => (arg.clone(), 4),
    };
    let mut b = GuestBuilder::with_levels(32 << 20, levels);
    // Each page with its own flags, as a kernel's are (mixed_flags).
    let mut flag_rng = Rng::new(0xf1a9_5eed);
    for page in 0..PAGES {
        b.map_new(
            Va(BASE + page * 4096),
            PageSize::Size4K,
            mixed_flags::map_flags(&mut flag_rng),
        )
        .expect("map");
    }
    // 2 MiB pages over the same memory (aliases), for `walk2m`.
    for page in 0..LARGE {
        b.map(
            Va(BASE_2M + page * (2 << 20)),
            introvisor::Pa((page * (2 << 20)) % (32 << 20)),
            PageSize::Size2M,
            mixed_flags::map_flags(&mut flag_rng),
        )
        .expect("map 2 MiB");
    }
    let mut guest = b.finish();
    mixed_flags::decorate(&mut guest, 0xdec0_5eed);
    let memory: &'static [u8] = Box::leak(guest.memory.clone().into_boxed_slice());
    let root = guest.root;
    let mut core = VmiCore::new(HostDriver::from_vec(guest.memory));
    if levels == 5 {
        core.set_paging(Paging::new(PagingMode::Level5));
    }
    core.disable_gfn_cache();
    if mode == "walk" || mode == "walk2m" || mode == "bulkwalk" || mode == "walkmany" {
        core.disable_v2p_cache();
    }
    if mode == "miss" {
        // One set of four: nearly every translation misses, and is offered.
        core.resize_v2p_cache(4);
    }
    if mode.starts_with("bulk") {
        let mut buf = vec![0u8; 1 << 20];
        let start = Instant::now();
        for _ in 0..20 {
            for mib in 0..MIBS {
                core.read(
                    AccessContext::paging(Va(BASE + (mib << 20)), root),
                    &mut buf,
                )
                .expect("read");
                core::hint::black_box(&buf);
            }
        }
        let per_mib = start.elapsed().as_nanos() as f64 / (20 * MIBS) as f64;
        eprintln!("{mode}: {:.1} us per MiB", per_mib / 1e3);
        return;
    }
    if mode == "wsfull" {
        // Fill the translation cache with other pages first, as the bench's earlier
        // workloads do: the working set then shares its sets with older entries.
        let mut rng = Rng::new(7);
        for _ in 0..OPS {
            let va = BASE + (rng.below(PAGES * 4096) & !7);
            core::hint::black_box(core.translate(Va(va), root).ok());
        }
    }
    let (base, span) = if mode == "walk2m" || mode == "tlb2m" {
        (BASE_2M, LARGE * (2 << 20))
    } else {
        (BASE, 0)
    };
    let span = if span != 0 {
        span
    } else if mode.starts_with("ws") {
        64 * 4096
    } else {
        PAGES * 4096
    };
    let mut rng = Rng::new(1);
    let mut acc = 0u64;
    let start = Instant::now();
    if let Some(kind) = mode.strip_suffix("many") {
        // The same addresses as the single modes, 64 to a batch.
        let mut vas = [Va(0); 64];
        let mut ts = [Err(VmiError::NotFound); 64];
        let mut words = [Err(VmiError::NotFound); 64];
        for _ in 0..OPS / 64 {
            for va in &mut vas {
                *va = Va(BASE + (rng.below(PAGES * 4096) & !7));
            }
            if kind == "read" {
                core.read_u64_many(&vas, root, &mut words);
                acc ^= words.iter().map(|w| w.unwrap_or(0)).fold(0, |a, w| a ^ w);
            } else {
                core.translate_many(&vas, root, &mut ts);
                acc ^= ts
                    .iter()
                    .map(|t| t.map_or(0, |t| t.pa.0))
                    .fold(0, |a, p| a ^ p);
            }
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(OPS / 64 * 64);
        eprintln!("{mode}: {ns:.1} ns per operation ({acc:#x})");
        return;
    }
    for _ in 0..OPS {
        let va = base + (rng.below(span) & !7);
        acc ^= if mode == "read" {
            core.read_u64(AccessContext::paging(Va(va), root))
                .expect("read")
        } else if mode == "none" {
            // The loop alone: what the other modes' counts include besides their work.
            core::hint::black_box(va)
        } else if mode == "naive" && levels == 5 {
            naive_walk5(memory, root.0, va)
        } else if mode == "naive" {
            naive_walk(memory, root.0, va)
        } else {
            core.translate(Va(va), root).expect("translate").pa.0
        };
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(OPS);
    eprintln!("{arg}: {ns:.1} ns per operation ({acc:#x})");
    if std::env::var_os("WALK_PROFILE_METRICS").is_some() {
        eprintln!("translation cache: {}", core.v2p_cache_metrics());
    }
}

/// The naive walk of the peers bench's floor: four dependent loads with masks, no checks.
#[inline(always)]
fn naive_walk(memory: &[u8], root: u64, va: u64) -> u64 {
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    let load = |pa: u64| {
        let i = pa as usize;
        u64::from_le_bytes(memory[i..i + 8].try_into().expect("in memory"))
    };
    let e4 = load(root + ((va >> 39) & 0x1ff) * 8);
    let e3 = load((e4 & ADDR) + ((va >> 30) & 0x1ff) * 8);
    let e2 = load((e3 & ADDR) + ((va >> 21) & 0x1ff) * 8);
    let e1 = load((e2 & ADDR) + ((va >> 12) & 0x1ff) * 8);
    (e1 & ADDR) | (va & 0xfff)
}

/// [`naive_walk`] under 5-level paging: five dependent loads with masks, no checks.
#[inline(always)]
fn naive_walk5(memory: &[u8], root: u64, va: u64) -> u64 {
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    let load = |pa: u64| {
        let i = pa as usize;
        u64::from_le_bytes(memory[i..i + 8].try_into().expect("in memory"))
    };
    let e5 = load(root + ((va >> 48) & 0x1ff) * 8);
    let e4 = load((e5 & ADDR) + ((va >> 39) & 0x1ff) * 8);
    let e3 = load((e4 & ADDR) + ((va >> 30) & 0x1ff) * 8);
    let e2 = load((e3 & ADDR) + ((va >> 21) & 0x1ff) * 8);
    let e1 = load((e2 & ADDR) + ((va >> 12) & 0x1ff) * 8);
    (e1 & ADDR) | (va & 0xfff)
}
