//! A minimal EPT of the hypervisor's own (identity, 2 MiB leaves, RWX), to check VM entry
//! before the backend's EPT is in place.

use crate::hv::Frame;

static mut PML4: Frame = Frame([0; 4096]);
static mut PDPT: Frame = Frame([0; 4096]);
static mut PD0: Frame = Frame([0; 4096]);
static mut PD3: Frame = Frame([0; 4096]);

/// Builds it and returns the EPTP (WB tables, 4-level walk).
pub fn build() -> u64 {
    // SAFETY: the four frames are this module's, identity mapped, and used for nothing
    // else; the CPU reads them only once the EPTP is written.
    unsafe {
        let pml4 = core::ptr::addr_of_mut!(PML4) as *mut u64;
        let pdpt = core::ptr::addr_of_mut!(PDPT) as *mut u64;
        let pd0 = core::ptr::addr_of_mut!(PD0) as *mut u64;
        let pd3 = core::ptr::addr_of_mut!(PD3) as *mut u64;
        *pml4 = pdpt as u64 | 7;
        *pdpt = pd0 as u64 | 7;
        *pdpt.add(3) = pd3 as u64 | 7;
        for i in 0..32u64 {
            *pd0.add(i as usize) = (i << 21) | (6 << 3) | (1 << 7) | 7;
        }
        *pd3.add(0x1F7) = 0xFEE0_0000 | (1 << 7) | 7; // UC
        pml4 as u64 | (3 << 3) | 6
    }
}
