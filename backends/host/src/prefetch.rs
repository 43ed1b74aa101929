//! A software prefetch of guest memory the drivers hold, for
//! [`VmiDriver::prefetch_physical`](introvisor::VmiDriver::prefetch_physical).

use introvisor::Pa;

/// Starts loading the cache line of byte `pa` of `memory` into the CPU's caches, if
/// `memory` holds that byte; a hint, with no other effect. A no-op where the target has
/// no prefetch instruction this crate issues, and under Miri (which has none).
#[inline(always)]
pub(crate) fn prefetch(memory: &[u8], pa: Pa) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse", not(miri)))]
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
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse", not(miri))))]
    let _ = (memory, pa);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BorrowedDriver, HostDriver};
    use introvisor::VmiDriver;

    /// Any address, in memory or not, is a hint and nothing else: no panic, no change.
    #[test]
    fn a_prefetch_of_any_address_changes_nothing() {
        let bytes: Vec<u8> = (0..3 * 4096u32).map(|i| (i * 7) as u8).collect();
        let addresses = [0, 4095, 4096, 3 * 4096 - 1, 3 * 4096, 1 << 40, u64::MAX];
        for pa in addresses {
            prefetch(&bytes, Pa(pa));
            prefetch(&[], Pa(pa));
        }
        let lent = HostDriver::from_vec(bytes.clone());
        let writable = HostDriver::from_vec_writable(bytes.clone());
        let borrowed = BorrowedDriver::new(&bytes);
        for pa in addresses {
            lent.prefetch_physical(Pa(pa));
            writable.prefetch_physical(Pa(pa));
            borrowed.prefetch_physical(Pa(pa));
        }
        assert_eq!(lent.physical_memory(), Some(&bytes[..]));
        assert_eq!(borrowed.physical_memory(), Some(&bytes[..]));
        let mut back = [0u8; 8];
        writable.read_physical(Pa(4096), &mut back).unwrap();
        assert_eq!(back, bytes[4096..4104]);
    }
}
