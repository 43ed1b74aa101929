//! The LiME reader over arbitrary bytes: `Ok` or a named `LimeError`, never a panic, and
//! what it accepts lies inside the input: each range starts at or before its end, below
//! 2^52, holds no more bytes than it spans, lies inside the file, and overlaps no other.
#![no_main]

use introvisor_host::dump::lime;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert_eq!(lime::is_lime(data), data.starts_with(b"EMiL"));
    let Ok(image) = lime::parse(data) else {
        return;
    };
    assert!(!image.ranges.is_empty());
    assert!(image.ranges.len() <= lime::MAX_RANGES);
    for r in &image.ranges {
        assert!(r.start <= r.end);
        assert!(r.end < 1 << lime::MAX_PHYS_BITS);
        assert!(r.in_file <= r.end - r.start + 1);
        assert!(r.offset.checked_add(r.in_file).unwrap() <= data.len() as u64);
    }
    let mut spans: Vec<_> = image.ranges.iter().map(|r| (r.start, r.end)).collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        assert!(w[0].1 < w[1].0, "overlapping ranges {w:?}");
    }
    for m in image.memory_ranges() {
        assert!(m.len > 0);
        assert!(m.offset + m.len <= data.len() as u64);
    }
});
