//! What the fuzz targets (host-test/fuzz/) found, each as a test of the behaviour the
//! crash broke. The crashing inputs are kept in host-test/fuzz/regressions/<target>/;
//! FUZZING.md says what each one hit.

use introvisor::cache::Tlb;

const ROOT: u64 = 0x1000;

/// `regressions/tlb/empty-marker-lookup-after-remove`: the page number `u64::MAX` marks
/// an empty slot, and an insertion of it is refused; but a lookup of it matched the
/// emptied slot of a removed entry (whose root and value stay behind) and returned the
/// removed value.
#[test]
fn tlb_lookup_of_the_empty_marker_finds_nothing() {
    let tlb = Tlb::<8>::new();
    let generation = tlb.generation();
    tlb.insert(ROOT, 7, 0xdead_b000, generation);
    assert_eq!(tlb.probe(ROOT, 7, generation), Some(0xdead_b000));
    tlb.remove(ROOT, 7);
    assert_eq!(tlb.probe(ROOT, 7, generation), None);
    // The marker was never stored: nothing may be found under it.
    for root in [ROOT, 0] {
        assert_eq!(
            tlb.probe(root, u64::MAX, generation),
            None,
            "root {root:#x}"
        );
        assert_eq!(tlb.get(root, u64::MAX, generation), None, "root {root:#x}");
    }
}

/// `regressions/tlb/empty-marker-insert-then-probe`: the insertion of the marker is
/// refused, yet the probe straight after it found the value, left in a slot emptied
/// earlier, when the insertion carried the same value.
#[test]
fn tlb_refused_insertion_of_the_empty_marker_is_not_found() {
    let tlb = Tlb::<4>::new();
    let generation = tlb.generation();
    tlb.insert(ROOT, 3, 42, generation);
    tlb.remove(ROOT, 3);
    tlb.insert(ROOT, u64::MAX, 42, generation);
    assert_eq!(tlb.probe(ROOT, u64::MAX, generation), None);
    assert_eq!(tlb.metrics().len, 0);
}

/// A removal of the marker counted every empty slot it matched as a removed entry, and
/// the length wrapped below zero.
#[test]
fn tlb_removal_of_the_empty_marker_keeps_the_length() {
    let tlb = Tlb::<2>::new();
    let generation = tlb.generation();
    tlb.insert(ROOT, 1, 10, generation);
    tlb.remove(ROOT, 1);
    tlb.remove(ROOT, u64::MAX);
    assert_eq!(tlb.metrics().len, 0);
    // A removal cancels insertions for generations read before it: read a new one.
    let generation = tlb.generation();
    tlb.insert(ROOT, 2, 20, generation);
    let m = tlb.metrics();
    assert_eq!(m.len, 1);
    assert!(m.len <= m.capacity);
}
