//! Shared helpers of the cross-crate tests and benchmarks, and the test doubles they run
//! against:
//!
//! - [`scripted`]: [`ScriptedDriver`](scripted::ScriptedDriver), an AMD64 guest whose
//!   events come from a script, for handlers, sessions and probers without a hypervisor;
//! - [`counting_alloc`]: a global allocator that counts a thread's allocations, for the
//!   tests that prove a path allocates nothing;
//! - [`mixed_flags`]: leaf entries with the mix of flags a kernel's carry, for benches;
//! - [`Rng`] and [`seed`]: reproducible random layouts.

pub mod counting_alloc;
pub mod mixed_flags;
pub mod scripted;

pub mod vmx_sim;

/// A small, seeded pseudo-random generator (splitmix64): reproducible test layouts without
/// a dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// The seed of a randomised test: `INTROVISOR_SEED` if set, else `default`. Tests print
/// it so a failure can be replayed.
pub fn seed(default: u64) -> u64 {
    std::env::var("INTROVISOR_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
pub mod linux_fixture;

/// The repository's README (`README.md` at the root, which no package ships), its
/// examples compiled and run as doctests here.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct RootReadmeDoctests;
