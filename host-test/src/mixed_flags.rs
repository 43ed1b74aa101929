//! Leaf entries that carry the mix of flags a kernel's do, for the benches and profiles:
//! a guest whose every entry has the same bits lets a walk predict every branch on them,
//! which no real guest does (issue 12, must-have 1).
//!
//! [`map_flags`] chooses the rights of one mapping (text executable and read-only, data
//! not executable, writable or not, user or supervisor); [`decorate`] then sets, entry by
//! entry, the bits the builder does not: accessed and dirty, global, PWT/PCD, the PAT bit
//! (bit 7 of a PTE, bit 12 of a large leaf), and the software-available bits 11:9 and
//! 58:52 (Intel SDM Vol. 3A, Tables 4-17 to 4-20; bits 62:59 are left alone, as they are
//! protection keys when CR4.PKE = 1). None of these bits changes a translation.

use introvisor_host::builder::{Guest, MapFlags, PageSize};

use crate::Rng;

const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const PAT_4K: u64 = 1 << 7;
const G: u64 = 1 << 8;
const PAT_LARGE: u64 = 1 << 12;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// The rights of one mapping, at random: a quarter text (supervisor, read-only,
/// executable), the rest data (not executable; three in four writable; one in four user).
pub fn map_flags(rng: &mut Rng) -> MapFlags {
    if rng.below(4) == 0 {
        MapFlags::KERNEL_TEXT
    } else {
        MapFlags {
            writable: rng.below(4) != 0,
            user: rng.below(4) == 0,
            executable: false,
        }
    }
}

/// Sets the bits of every leaf of `guest` (and A in every table entry above it) at random
/// from `seed`, as the module documentation lists them. The translations do not change.
///
/// # Panics
/// If a mapping's tables are not in `guest.memory` (the builder made them: a bug).
pub fn decorate(guest: &mut Guest, seed: u64) {
    let mut rng = Rng::new(seed);
    let levels = guest.levels;
    let root = guest.root.0 & ADDR;
    for m in &guest.mappings {
        let mut table = root;
        let leaf = m.size.level();
        for level in (leaf..=levels).rev() {
            let shift = 12 + 9 * u32::from(level - 1);
            let slot = (table + ((m.va.0 >> shift) & 0x1ff) * 8) as usize;
            let bytes: &mut [u8; 8] = (&mut guest.memory[slot..slot + 8])
                .try_into()
                .expect("an entry in memory");
            let entry = u64::from_le_bytes(*bytes);
            let value = if level == leaf {
                entry | leaf_bits(&mut rng, m.size, m.flags)
            } else {
                table = entry & ADDR;
                entry | A
            };
            *bytes = value.to_le_bytes();
        }
    }
}

/// `bit` one time in `n`.
fn one_in(rng: &mut Rng, n: u64, bit: u64) -> u64 {
    if rng.below(n) == 0 { bit } else { 0 }
}

/// The extra bits of one leaf: A seven times in eight, D on half the writable ones, G on
/// three supervisor leaves in four, PWT and PCD one in sixteen each, PAT one in eight
/// (4 KiB) or four (large), bits 11:9 at random and, one leaf in four, bits 58:52.
fn leaf_bits(rng: &mut Rng, size: PageSize, flags: MapFlags) -> u64 {
    let mut bits = A ^ one_in(rng, 8, A);
    if flags.writable {
        bits |= one_in(rng, 2, D);
    }
    if !flags.user {
        bits |= G ^ one_in(rng, 4, G);
    }
    bits |= one_in(rng, 16, PWT) | one_in(rng, 16, PCD);
    bits |= match size {
        PageSize::Size4K => one_in(rng, 8, PAT_4K),
        PageSize::Size2M | PageSize::Size1G => one_in(rng, 4, PAT_LARGE),
    };
    bits |= rng.below(8) << 9;
    bits | (one_in(rng, 4, 1) * (rng.below(128) << 52))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use introvisor::{MemoryAccess, Pa, Va, VmiCore};
    use introvisor_host::HostDriver;
    use introvisor_host::builder::GuestBuilder;

    use super::*;

    /// Decorated leaves translate as before, with the rights their mapping was given,
    /// and their bits do vary.
    #[test]
    fn decorated_guest_translates_as_its_record_says() {
        let mut rng = Rng::new(5);
        let mut b = GuestBuilder::new(8 << 20);
        let base = 0xffff_8000_0000_0000u64;
        for page in 0..256 {
            b.map_new(
                Va(base + page * 4096),
                PageSize::Size4K,
                map_flags(&mut rng),
            )
            .unwrap();
        }
        for i in 0..8 {
            let va = base + (1 << 30) + i * (2 << 20);
            b.map(
                Va(va),
                Pa(i * (2 << 20)),
                PageSize::Size2M,
                map_flags(&mut rng),
            )
            .unwrap();
        }
        b.map(
            Va(base + (4 << 30)),
            Pa(0),
            PageSize::Size1G,
            map_flags(&mut rng),
        )
        .unwrap();
        let mut guest = b.finish();
        let before = guest.memory.clone();
        decorate(&mut guest, 9);
        assert_ne!(before, guest.memory, "decorate set bits");
        let mappings = guest.mappings.clone();
        let root = guest.root;
        let core = VmiCore::new(HostDriver::from_vec(guest.memory));
        core.disable_v2p_cache();
        let mut rights = BTreeSet::new();
        for m in &mappings {
            for va in [m.va.0, m.va.0 + m.size.bytes() - 8] {
                let t = core.translate(Va(va), root).unwrap();
                assert_eq!(t.pa.0, m.pa.0 + (va - m.va.0), "{m:?}");
                assert_eq!(t.page_size, m.size.bytes());
                assert_eq!(t.access.contains(MemoryAccess::W), m.flags.writable);
                assert_eq!(t.access.contains(MemoryAccess::X), m.flags.executable);
                assert_eq!(t.user, m.flags.user);
                rights.insert((m.flags.writable, m.flags.executable, m.flags.user));
            }
        }
        assert!(rights.len() >= 4, "mixed rights: {rights:?}");
        // The leaves' low bits and software bits differ from page to page.
        let mut low = BTreeSet::new();
        for m in mappings.iter().filter(|m| m.size == PageSize::Size4K) {
            let mut leaf = 0u64;
            core.translate_with(core.paging(), m.va, root, |s| leaf = s.value)
                .unwrap();
            low.insert(leaf & 0x0ff0_0000_0000_0fff);
        }
        assert!(low.len() > 32, "{} distinct leaf flag sets", low.len());
    }
}
