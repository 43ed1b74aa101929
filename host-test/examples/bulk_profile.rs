//! Bulk reads against their memcpy floors, interleaved in one process so that a loaded
//! machine disturbs every mode alike (the numbers behind the bulk notes of BENCHMARKS.md).
//!
//! The guest is the peers bench's in miniature: 256 MiB of noise, 64 MiB of 4 KiB pages
//! whose frames are a random permutation of a 64 MiB region, each with its own flags, and
//! 2 MiB pages from PA 0 on (physically contiguous).
//!
//! ```sh
//! cargo build --release -p introvisor-host-test --example bulk_profile
//! target/release/examples/bulk_profile gather read readtlb readnone
//! CHUNK=8388608 target/release/examples/bulk_profile memcpy readcontig
//! ```
//!
//! Modes: `gather` (4 KiB copies of the scattered frames, their addresses known in
//! advance: the bench's floor), `memcpy` (copies of the contiguous region, `CHUNK` bytes
//! each), `read*` (`VmiCore::read` of `CHUNK` bytes; `tlb`: page cache off; `none`: both
//! caches off; `contig`: the 2 MiB range instead of the 4 KiB one). `REPS` repetitions
//! of 64 MiB per mode (default 15); each mode's median and minimum, in µs per MiB.
//! `SHIFT` (0 to 63) puts the destination that many bytes off the guest memory's
//! alignment modulo 64 (the bench's heap buffer is 16 bytes off its guest memory's).

use std::time::Instant;

use introvisor::{AccessContext, Pa, Va, VmiCore};
use introvisor_host::HostDriver;
use introvisor_host::builder::{GuestBuilder, PageSize};
use introvisor_host_test::{Rng, mixed_flags};

const RAM: u64 = 256 << 20;
const VA_4K: u64 = 0xffff_8880_0000_0000;
const LEN: u64 = 64 << 20;
const PA_4K: u64 = 64 << 20;
const VA_2M: u64 = 0xffff_c900_0000_0000;
const MIB2: u64 = 2 << 20;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let modes: Vec<String> = std::env::args().skip(1).collect();
    let reps = env("REPS", 15).max(1);
    let chunk = env("CHUNK", 1 << 20).clamp(4096, LEN as usize);
    let mut rng = Rng::new(0x1e70_5eed);
    let mut flag_rng = Rng::new(0xf1a9_5eed);
    let mut b = GuestBuilder::new(RAM as usize);
    let pages = (LEN / 4096) as usize;
    let mut frames: Vec<u64> = (0..pages as u64).collect();
    for i in (1..pages).rev() {
        frames.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for (i, &f) in frames.iter().enumerate() {
        b.map(
            Va(VA_4K + i as u64 * 4096),
            Pa(PA_4K + f * 4096),
            PageSize::Size4K,
            mixed_flags::map_flags(&mut flag_rng),
        )
        .expect("4 KiB mapping");
    }
    for i in 0..RAM / MIB2 {
        b.map(
            Va(VA_2M + i * MIB2),
            Pa(i * MIB2),
            PageSize::Size2M,
            mixed_flags::map_flags(&mut flag_rng),
        )
        .expect("2 MiB mapping");
    }
    let mut noise = vec![0u8; 1 << 20];
    for mib in 1..RAM >> 20 {
        for word in noise.chunks_exact_mut(8) {
            word.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        b.write_physical(Pa(mib << 20), &noise).expect("fill");
    }
    let mut guest = b.finish();
    mixed_flags::decorate(&mut guest, 0xdec0_5eed);
    let root = guest.root;
    let memory = guest.memory.clone();
    let cores: Vec<VmiCore<HostDriver>> = modes
        .iter()
        .map(|mode| {
            let core = VmiCore::new(HostDriver::from_vec(guest.memory.clone()));
            if mode.contains("tlb") || mode.contains("none") {
                core.disable_gfn_cache();
            }
            if mode.contains("none") {
                core.disable_v2p_cache();
            }
            core
        })
        .collect();
    let gathered: Vec<usize> = frames
        .iter()
        .map(|&f| (PA_4K + f * 4096) as usize)
        .collect();
    // `SHIFT`: where the buffer starts past a 64-byte boundary, against the guest
    // memory's own offset (a heap buffer's alignment differs from a mapping's).
    let shift = env("SHIFT", 0) % 64;
    let mut backing = vec![0u8; chunk + 128];
    let skip =
        (64 - (backing.as_ptr() as usize + 64 - memory.as_ptr() as usize % 64) % 64 + shift) % 64;
    let buf = &mut backing[skip..skip + chunk];
    let reads = LEN as usize / chunk;
    let mut samples = vec![Vec::new(); modes.len()];
    for _ in 0..reps {
        for ((mode, core), times) in modes.iter().zip(&cores).zip(&mut samples) {
            let base = if mode.contains("contig") {
                VA_2M
            } else {
                VA_4K
            };
            let start = Instant::now();
            for i in 0..reads {
                let at = i * chunk;
                if mode == "gather" {
                    let first = at / 4096;
                    for (piece, &pa) in buf.chunks_exact_mut(4096).zip(&gathered[first..]) {
                        piece.copy_from_slice(&memory[pa..pa + 4096]);
                    }
                } else if mode == "memcpy" {
                    buf.copy_from_slice(&memory[at..at + chunk]);
                } else {
                    let ctx = AccessContext::paging(Va(base + at as u64), root);
                    core.read(ctx, buf).expect("read");
                }
                core::hint::black_box(&mut *buf);
            }
            times.push(start.elapsed().as_nanos() as f64 / (LEN >> 20) as f64 / 1e3);
        }
    }
    for (mode, times) in modes.iter().zip(&mut samples) {
        times.sort_by(f64::total_cmp);
        println!(
            "{mode:>12}: median {:6.1}  min {:6.1} µs/MiB",
            times[times.len() / 2],
            times[0]
        );
    }
}
