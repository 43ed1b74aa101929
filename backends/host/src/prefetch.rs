//! A software prefetch of guest memory the drivers hold, for
//! [`VmiDriver::prefetch_physical`](introvisor::VmiDriver::prefetch_physical).

use introvisor::Pa;

/// Starts loading the cache line of byte `pa` of `memory` into the CPU's caches, if
/// `memory` holds that byte; a hint, with no other effect. A no-op where the target has
/// no prefetch instruction this crate issues.
#[inline(always)]
pub(crate) fn prefetch(memory: &[u8], pa: Pa) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    if let Some(byte) = usize::try_from(pa.0).ok().and_then(|at| memory.get(at)) {
        let at: *const u8 = byte;
        // SAFETY: `_mm_prefetch` requires SSE, which the `cfg` above ensures the target
        // has; PREFETCHh reads nothing into a register, never faults and leaves memory
        // unchanged (Intel SDM Vol. 2B, PREFETCHh), and the address is that of a byte
        // `memory` holds.
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(at.cast());
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
    let _ = (memory, pa);
}
