//! [`CountingAllocator`]: a global allocator that counts the allocations made inside
//! [`count_allocations`], so that a test can prove a path allocates nothing.
//!
//! The test harness runs the tests of a binary on several threads at once, so a
//! process-wide counter would also count what the other tests allocate meanwhile. Counting
//! is therefore per thread: [`count_allocations`] switches it on for the calling thread
//! only, for as long as its closure runs, and counts only that thread's allocations
//! (threads the closure spawns are not counted). Every allocation, zeroed allocation and
//! reallocation counts as one; freeing does not count.
//!
//! A test binary that counts installs the allocator as its global allocator:
//!
//! ```standalone_crate
//! use introvisor_host_test::counting_alloc::{CountingAllocator, count_allocations};
//!
//! #[global_allocator]
//! static ALLOCATOR: CountingAllocator = CountingAllocator;
//!
//! fn main() {
//!     let mut sum = 0u64;
//!     assert_eq!(count_allocations(|| sum = (1..=10).sum()), 0);
//!     assert_eq!(sum, 55);
//!     assert_eq!(count_allocations(|| drop(std::hint::black_box(vec![0u8; 64]))), 1);
//! }
//! ```
//!
//! Without it, [`count_allocations`] panics rather than report a count of zero that would
//! prove nothing:
//!
//! ```standalone_crate,should_panic
//! // No #[global_allocator] in this binary.
//! introvisor_host_test::counting_alloc::count_allocations(|| {});
//! ```

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use std::alloc::System;

thread_local! {
    /// How many [`count_allocations`] calls are running on this thread (they may nest).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// The allocations made on this thread while `DEPTH` was non-zero.
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting the allocations of the threads that run
/// [`count_allocations`]; see the [module documentation](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct CountingAllocator;

/// Counts one allocation if this thread is counting.
fn note_allocation() {
    // `try_with`: the thread's slots may be gone while the thread exits. Both are
    // const-initialised `Cell`s without a destructor, so touching them never allocates.
    let _ = DEPTH.try_with(|depth| {
        if depth.get() > 0 {
            let _ = COUNT.try_with(|n| n.set(n.get().wrapping_add(1)));
        }
    });
}

// SAFETY: every method forwards to the system allocator with the caller's arguments
// unchanged, so `System` upholds the `GlobalAlloc` contract; the counting touches only
// const-initialised thread-local `Cell`s, which neither allocate nor unwind.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: `ptr` was allocated by this allocator, hence by `System`, with `layout`,
        // as the caller guarantees; the rest of the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Counting on for this thread while it lives, off again when dropped (also when the
/// closure panics, so that a failed test leaves its thread as it found it).
struct Counting;

impl Counting {
    fn on() -> Self {
        DEPTH.with(|d| d.set(d.get() + 1));
        Self
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get() - 1));
    }
}

/// The allocations `f` makes on the calling thread.
///
/// Calls may nest: an allocation counts in every call that is running, and none counts
/// the probe described below.
///
/// # Panics
/// If [`CountingAllocator`] is not the binary's global allocator: a probe allocation made
/// before `f` runs is not seen. A count of zero then would prove nothing.
pub fn count_allocations(f: impl FnOnce()) -> u64 {
    let _counting = Counting::on();
    let before = COUNT.with(Cell::get);
    drop(core::hint::black_box(Box::new(0u8)));
    assert!(
        COUNT.with(Cell::get) != before,
        "count_allocations: CountingAllocator is not this binary's #[global_allocator]"
    );
    // The probe is not `f`'s: no call, this one or an enclosing one, counts it.
    COUNT.with(|n| n.set(before));
    f();
    COUNT.with(Cell::get).wrapping_sub(before)
}

#[cfg(test)]
#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[cfg(test)]
mod tests {
    use super::*;
    use core::hint::black_box;
    use std::sync::{Arc, Barrier};

    #[test]
    fn counts_allocations_and_reallocations_not_frees() {
        let n = count_allocations(|| {
            let mut v: Vec<u64> = Vec::with_capacity(1);
            v.push(1);
            v.reserve(1000); // a reallocation
            let b = black_box(Box::new([0u8; 64]));
            drop(black_box(v));
            drop(b);
        });
        assert_eq!(n, 3);
    }

    #[test]
    fn work_without_allocations_counts_zero() {
        let mut x = 0u64;
        let n = count_allocations(|| {
            for i in 0..1000u64 {
                x = black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        });
        assert_eq!(n, 0);
        assert_ne!(x, 0);
    }

    #[test]
    fn nested_calls_each_count_what_runs_inside_them() {
        let mut inner = u64::MAX;
        let outer = count_allocations(|| {
            drop(black_box(vec![1u8; 8]));
            inner = count_allocations(|| {
                drop(black_box(vec![2u8; 8]));
                drop(black_box(vec![3u8; 8]));
            });
        });
        assert_eq!(inner, 2);
        assert_eq!(outer, 3, "the inner call's probe must not count");
        assert_eq!(DEPTH.with(Cell::get), 0);
    }

    /// Another thread allocating at the same time is not counted: the harness runs tests
    /// in parallel, and a process-wide counter would see them.
    #[test]
    fn other_threads_are_not_counted() {
        let barrier = Arc::new(Barrier::new(2));
        let other = {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let mut kept = Vec::new();
                for i in 0..1000usize {
                    kept.push(black_box(vec![0u8; i % 64 + 1]));
                }
                barrier.wait();
                kept.len()
            })
        };
        let n = count_allocations(|| {
            barrier.wait(); // the other thread allocates now
            barrier.wait(); // and is done
        });
        assert_eq!(other.join().ok(), Some(1000));
        assert_eq!(n, 0);
    }

    #[test]
    fn a_panicking_closure_leaves_counting_off() {
        let result = std::panic::catch_unwind(|| count_allocations(|| panic!("on purpose")));
        assert!(result.is_err());
        assert_eq!(DEPTH.with(Cell::get), 0);
        let before = COUNT.with(Cell::get);
        drop(black_box(vec![0u8; 8]));
        assert_eq!(
            COUNT.with(Cell::get),
            before,
            "counted outside count_allocations"
        );
    }
}
