//! EPT hierarchies: walks, leaves, splits and merges, over tables in pool frames.

/// The bytes a leaf at `level` maps: 4 KiB at 1, 2 MiB at 2, 1 GiB at 3, 512 GiB at 4,
/// 256 TiB at 5 (levels outside 1..=5 are clamped).
pub const fn level_size(level: u8) -> u64 {
    let l = if level == 0 {
        1
    } else if level > 5 {
        5
    } else {
        level
    };
    1u64 << (12 + 9 * (l as u32 - 1))
}
