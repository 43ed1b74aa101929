//! The synthetic guest every subject reads, and the address lists of the workloads.
//!
//! 256 MiB of RAM; 64 MiB of 4 KiB pages whose frames are a random permutation of a
//! 64 MiB region; 1 GiB of 2 MiB pages that wrap around RAM (so they alias it); four 1 GiB
//! pages, two over PA 0 (only the first 256 MiB of them is backed) and two wholly past RAM.
//! Data is pseudo-random; 100,000 NUL-terminated strings live in the last quarter of the
//! 4 KiB range, back to back, so some cross pages (whose frames are not adjacent).
//!
//! Every leaf has its own flags, at random from a fixed seed, as a kernel's do
//! ([`introvisor_host_test::mixed_flags`]): text executable and read-only, data not
//! executable, writable or not, user or supervisor, and A, D, G, PWT/PCD, PAT and
//! software bits that change no translation.

use introvisor::{Pa, Va};
use introvisor_host::builder::{Guest, GuestBuilder, PageSize};
use introvisor_host_test::Rng;
use introvisor_host_test::mixed_flags;

pub(crate) const RAM: u64 = 256 << 20;
pub(crate) const KIB4: u64 = 4 << 10;
pub(crate) const MIB2: u64 = 2 << 20;
pub(crate) const GIB1: u64 = 1 << 30;

/// The 4 KiB range: 16,384 pages.
pub(crate) const VA_4K: u64 = 0xffff_8880_0000_0000;
pub(crate) const LEN_4K: u64 = 64 << 20;
/// Where the 4 KiB pages' frames live (a permutation of this region).
pub(crate) const PA_4K: u64 = 64 << 20;
/// The 2 MiB range: 512 pages, page `i` at PA `(i * 2 MiB) % RAM`.
pub(crate) const VA_2M: u64 = 0xffff_c900_0000_0000;
pub(crate) const LEN_2M: u64 = 1 << 30;
/// The 1 GiB range: four pages.
pub(crate) const VA_1G: u64 = 0xffff_f000_0000_0000;
pub(crate) const PA_1G: [u64; 4] = [0, 0, GIB1, 2 * GIB1];
/// Strings: from here to the end of the 4 KiB range.
pub(crate) const VA_STRINGS: u64 = VA_4K + 48 * (1 << 20);

pub(crate) const STRINGS: usize = 100_000;
/// The longest string, without its NUL; also the limit every subject reads with.
pub(crate) const STRING_MAX: usize = 120;
/// The limit given to string reads.
pub(crate) const STRING_LIMIT: usize = 256;

/// The built guest and the addresses of each workload.
pub(crate) struct Synthetic {
    pub(crate) guest: Guest,
    /// Random 8-byte-aligned addresses over the 4 KiB range.
    pub(crate) random_4k: Vec<u64>,
    /// Random addresses inside 64 pages of the 4 KiB range.
    pub(crate) working_set: Vec<u64>,
    /// 64 fixed addresses (one in each of 64 pages of the 4 KiB range), in random order:
    /// the same byte addresses again and again, the best case of a cache keyed by them.
    pub(crate) fixed: Vec<u64>,
    /// Random u64 addresses across the three page sizes (backed parts only).
    pub(crate) mixed: Vec<u64>,
    /// The first byte of each string.
    pub(crate) strings: Vec<u64>,
}

/// Builds the guest.
///
/// # Panics
/// If the builder refuses a mapping (a bug in this file, not a measurement).
pub(crate) fn build(ops: usize) -> Synthetic {
    let mut rng = Rng::new(0x1e70_5eed);
    let mut b = GuestBuilder::new(RAM as usize);
    // The flags have a generator of their own: the addresses are those of a guest
    // whose entries all had the same flags.
    let mut flag_rng = Rng::new(0xf1a9_5eed);
    let mut flags = || mixed_flags::map_flags(&mut flag_rng);

    // 4 KiB pages over a shuffled 64 MiB region.
    let pages = (LEN_4K / KIB4) as usize;
    let frames = shuffled(&mut rng, pages);
    for (i, &f) in frames.iter().enumerate() {
        b.map(
            Va(VA_4K + i as u64 * KIB4),
            Pa(PA_4K + f * KIB4),
            PageSize::Size4K,
            flags(),
        )
        .expect("4 KiB mapping");
    }
    for i in 0..LEN_2M / MIB2 {
        b.map(
            Va(VA_2M + i * MIB2),
            Pa((i * MIB2) % RAM),
            PageSize::Size2M,
            flags(),
        )
        .expect("2 MiB mapping");
    }
    for (i, &pa) in PA_1G.iter().enumerate() {
        b.map(
            Va(VA_1G + i as u64 * GIB1),
            Pa(pa),
            PageSize::Size1G,
            flags(),
        )
        .expect("1 GiB mapping");
    }
    // The tables took the first few hundred KiB; fill the rest with noise.
    let mut chunk = vec![0u8; 1 << 20];
    for mib in 1..RAM >> 20 {
        for word in chunk.chunks_exact_mut(8) {
            word.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        b.write_physical(Pa(mib << 20), &chunk).expect("fill");
    }
    // Strings, back to back: printable bytes, then a NUL.
    let mut strings = Vec::with_capacity(STRINGS);
    let mut at = VA_STRINGS;
    let mut text = Vec::with_capacity(STRING_MAX + 1);
    for _ in 0..STRINGS {
        let len = 8 + rng.below((STRING_MAX - 8) as u64 + 1) as usize;
        text.clear();
        text.extend((0..len).map(|_| b'a' + rng.below(26) as u8));
        text.push(0);
        b.write_virtual(Va(at), &text).expect("string");
        strings.push(at);
        at += text.len() as u64;
    }
    assert!(at <= VA_4K + LEN_4K, "strings overflow the 4 KiB range");
    let mut guest = b.finish();
    mixed_flags::decorate(&mut guest, 0xdec0_5eed);

    let random_4k = (0..ops).map(|_| VA_4K + (rng.below(LEN_4K) & !7)).collect();
    let ws_pages: Vec<u64> = (0..64).map(|_| rng.below(pages as u64)).collect();
    let working_set = (0..ops)
        .map(|_| {
            let page = ws_pages[rng.below(64) as usize];
            VA_4K + page * KIB4 + (rng.below(KIB4) & !7)
        })
        .collect();
    // Drawn after the others, so that their addresses stay those of earlier runs.
    let mut fixed_rng = Rng::new(0xf1ced);
    let fixed_vas: Vec<u64> = (0..64)
        .map(|_| VA_4K + fixed_rng.below(pages as u64) * KIB4 + (fixed_rng.below(KIB4) & !7))
        .collect();
    let fixed = (0..ops)
        .map(|_| fixed_vas[fixed_rng.below(64) as usize])
        .collect();
    let mixed = (0..ops)
        .map(|_| match rng.below(3) {
            0 => VA_4K + (rng.below(LEN_4K) & !7),
            1 => VA_2M + (rng.below(LEN_2M) & !7),
            // The two 1 GiB pages over PA 0, inside RAM.
            _ => VA_1G + rng.below(2) * GIB1 + (rng.below(RAM) & !7),
        })
        .collect();
    Synthetic {
        guest,
        random_4k,
        working_set,
        fixed,
        mixed,
        strings,
    }
}

/// `0..n` in an order drawn from `rng` (Fisher-Yates).
fn shuffled(rng: &mut Rng, n: usize) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n as u64).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

/// The guest's own answer for a translation (the builder's record, not a walk).
pub(crate) fn expected_pa(guest: &Guest, va: u64) -> Option<u64> {
    guest.lookup(Va(va)).map(|pa| pa.0)
}

/// The guest's own answer for a u64 read.
pub(crate) fn expected_u64(guest: &Guest, va: u64) -> Option<u64> {
    let pa = usize::try_from(expected_pa(guest, va)?).ok()?;
    let bytes = guest.memory.get(pa..pa + 8)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// The guest's own bytes at `va`, page by page (`None` if any byte is unmapped).
pub(crate) fn expected_bytes(guest: &Guest, va: u64, out: &mut [u8]) -> Option<()> {
    let mut done = 0usize;
    while done < out.len() {
        let at = va + done as u64;
        let n = ((KIB4 - (at & (KIB4 - 1))) as usize).min(out.len() - done);
        let pa = usize::try_from(expected_pa(guest, at)?).ok()?;
        out[done..done + n].copy_from_slice(guest.memory.get(pa..pa + n)?);
        done += n;
    }
    Some(())
}

/// The guest's own string at `va`: the bytes before the NUL, at most `limit`.
pub(crate) fn expected_string(guest: &Guest, va: u64, limit: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while out.len() < limit {
        expected_bytes(guest, va + out.len() as u64, &mut byte)?;
        if byte[0] == 0 {
            break;
        }
        out.push(byte[0]);
    }
    Some(out)
}

/// The 5-level guest's 4 KiB range: 16,384 pages under one PML5 entry, whose frames are a
/// random permutation of a 64 MiB region, each with its own flags.
pub(crate) const VA_5L: u64 = 0xff11_1000_0000_0000;

/// A 5-level guest (128 MiB of RAM) with 64 MiB of 4 KiB pages, and `ops` random
/// 8-byte-aligned addresses over them.
///
/// # Panics
/// If the builder refuses a mapping (a bug in this file, not a measurement).
pub(crate) fn build_five_level(ops: usize) -> (Guest, Vec<u64>) {
    let mut rng = Rng::new(0x5_1e7e1);
    let mut flag_rng = Rng::new(0xf1a9_5eed);
    let mut b = GuestBuilder::with_levels(128 << 20, 5);
    let pages = (LEN_4K / KIB4) as usize;
    let frames = shuffled(&mut rng, pages);
    for (i, &f) in frames.iter().enumerate() {
        b.map(
            Va(VA_5L + i as u64 * KIB4),
            Pa(PA_4K + f * KIB4),
            PageSize::Size4K,
            mixed_flags::map_flags(&mut flag_rng),
        )
        .expect("4 KiB mapping");
    }
    let mut guest = b.finish();
    mixed_flags::decorate(&mut guest, 0xdec0_5eed);
    let vas = (0..ops).map(|_| VA_5L + (rng.below(LEN_4K) & !7)).collect();
    (guest, vas)
}
