//! Reading guest memory for the Linux layer: physical memory, and the kernel's virtual
//! address space by the shortest safe route.
//!
//! Every read goes through the [`VmiCore`] and so inherits its contract: a read outside
//! guest memory is an error, never a panic.

use crate::access::AccessContext;
use crate::addr::{Pa, Va};
use crate::arch::amd64::{Amd64, Paging, PagingMode};
use crate::driver::VmiDriver;
use crate::vmi::VmiCore;

use super::LinuxError;

/// `__START_KERNEL_map`: the virtual address the kernel image mapping starts at (the
/// image's physical place plus this, minus `phys_base`).
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// `__START_KERNEL`: where `_text` lies without KASLR (`__START_KERNEL_map` plus
/// `CONFIG_PHYSICAL_START`, 16 MiB in distribution kernels).
pub const START_KERNEL: u64 = 0xffff_ffff_8100_0000;

/// Guest-physical memory through a core.
pub(crate) struct Phys<'a, D: VmiDriver> {
    pub(crate) core: &'a VmiCore<D>,
    /// One past the last byte of guest-physical memory.
    pub(crate) end: u64,
}

impl<'a, D: VmiDriver> Phys<'a, D> {
    pub(crate) fn new(core: &'a VmiCore<D>) -> Result<Self, LinuxError> {
        let info = core.info()?;
        let end = info
            .max_gfn
            .0
            .checked_add(1)
            .and_then(|n| n.checked_mul(info.page_size))
            .unwrap_or(u64::MAX);
        Ok(Self { core, end })
    }

    pub(crate) fn read(&self, pa: u64, buf: &mut [u8]) -> Result<(), LinuxError> {
        self.core
            .read(AccessContext::direct(Pa(pa)), buf)
            .map_err(LinuxError::Read)
    }

    pub(crate) fn u32(&self, pa: u64) -> Result<u32, LinuxError> {
        let mut b = [0u8; 4];
        self.read(pa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub(crate) fn u64(&self, pa: u64) -> Result<u64, LinuxError> {
        let mut b = [0u8; 8];
        self.read(pa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Calls `visit(pa, bytes)` over guest-physical memory from `start` to `end` in
    /// pieces of at most `scratch.len()` bytes (a multiple of the page size is best),
    /// each piece overlapping the one before by `overlap` bytes so a pattern shorter
    /// than that is seen whole. Frames that cannot be read (holes) are skipped. The
    /// walk stops when `visit` returns `Some`.
    ///
    /// Uses the memory the driver lends whole when it does (no copy).
    pub(crate) fn scan<T>(
        &self,
        start: u64,
        end: u64,
        scratch: &mut [u8],
        overlap: usize,
        mut visit: impl FnMut(u64, &[u8]) -> Option<T>,
    ) -> Option<T> {
        let end = end.min(self.end);
        if let Some(mem) = self.core.driver().physical_memory() {
            let lo = usize::try_from(start).ok()?;
            let hi = usize::try_from(end).ok()?.min(mem.len());
            return mem.get(lo..hi).and_then(|bytes| visit(start, bytes));
        }
        let step = (scratch.len() & !0xfff).max(0x1000);
        let mut pa = start & !0xfff;
        while pa < end {
            let want = u64::try_from(step)
                .unwrap_or(u64::MAX)
                .min(end.saturating_sub(pa));
            let want = usize::try_from(want).unwrap_or(0);
            let with_overlap = want.saturating_add(overlap).min(scratch.len());
            let with_overlap =
                with_overlap.min(usize::try_from(self.end.saturating_sub(pa)).unwrap_or(0));
            let buf = scratch.get_mut(..with_overlap)?;
            if self.read(pa, buf).is_ok() {
                if let Some(t) = visit(pa, buf) {
                    return Some(t);
                }
            } else {
                // a hole somewhere in the piece: page by page
                let mut off = 0usize;
                while off < want {
                    let page_pa = pa.saturating_add(off as u64);
                    if let Some(page) = buf.get_mut(off..off.saturating_add(0x1000).min(buf.len()))
                        && self.read(page_pa, page).is_ok()
                        && let Some(t) = visit(page_pa, page)
                    {
                        return Some(t);
                    }
                    off = off.saturating_add(0x1000);
                }
            }
            let Some(next) = pa.checked_add(want.max(0x1000) as u64) else {
                break;
            };
            pa = next;
        }
        None
    }
}

/// Where the kernel's address space is and how to read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct KernelSpace {
    /// The kernel's page-table root (`init_top_pgt`, physical).
    pub root: Pa,
    /// 4- or 5-level paging.
    pub mode: PagingMode,
    /// The virtual address of `_text`.
    pub text: Va,
    /// The virtual address one past the image (`_end`).
    pub end: Va,
    /// `va - pa` for every address of the kernel image (`__START_KERNEL_map - phys_base`,
    /// wrapping).
    pub image_delta: u64,
    /// `page_offset_base`: the direct map's first address (physical 0).
    pub page_offset_base: u64,
    /// One past the last byte of guest-physical memory.
    pub phys_end: u64,
}

impl KernelSpace {
    /// The physical address of `va` if it lies in the image or the direct map, where the
    /// mapping is linear by construction (no page walk needed).
    pub fn linear_pa(&self, va: u64) -> Option<u64> {
        if self.text.0 <= va && va < self.end.0 {
            return Some(va.wrapping_sub(self.image_delta));
        }
        let off = va.checked_sub(self.page_offset_base)?;
        (off < self.phys_end).then_some(off)
    }

    /// The paging configuration of the kernel's tables.
    pub fn paging(&self) -> Paging {
        Paging::new(self.mode)
    }

    /// `phys_base`: where the image lies physically, against its link address.
    pub fn phys_base(&self) -> u64 {
        START_KERNEL_MAP.wrapping_sub(self.image_delta)
    }

    /// The KASLR slide of the image: `_text - __START_KERNEL`.
    pub fn kaslr_slide(&self) -> u64 {
        self.text.0.wrapping_sub(START_KERNEL)
    }
}

/// A reader of kernel virtual memory.
pub(crate) struct Kmem<'a, D: VmiDriver<Architecture = Amd64>> {
    pub(crate) phys: Phys<'a, D>,
    pub(crate) space: KernelSpace,
}

impl<'a, D: VmiDriver<Architecture = Amd64>> Kmem<'a, D> {
    pub(crate) fn new(core: &'a VmiCore<D>, space: KernelSpace) -> Result<Self, LinuxError> {
        Ok(Self {
            phys: Phys::new(core)?,
            space,
        })
    }

    /// The physical address of kernel `va`, walking the kernel's tables when it is
    /// neither in the image nor in the direct map.
    pub(crate) fn pa(&self, va: u64) -> Result<u64, LinuxError> {
        if let Some(pa) = self.space.linear_pa(va) {
            return Ok(pa);
        }
        self.walk(va, self.space.root)
    }

    /// The physical address of `va` under `root` (any address space).
    pub(crate) fn walk(&self, va: u64, root: Pa) -> Result<u64, LinuxError> {
        let t = self
            .phys
            .core
            .translate_with(&self.space.paging(), Va(va), root, |_| {})?;
        Ok(t.pa.0)
    }

    /// Reads `buf.len()` bytes at kernel `va`.
    pub(crate) fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), LinuxError> {
        let linear = self.space.linear_pa(va).filter(|_| {
            // the whole read in the same linear range
            let last = va.wrapping_add(buf.len().saturating_sub(1) as u64);
            last >= va && self.space.linear_pa(last).is_some()
        });
        if let Some(pa) = linear {
            return self.phys.read(pa, buf);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = va.wrapping_add(done as u64);
            // the offset in the page is below 0x1000: 1..=0x1000 bytes to its end
            let in_page = 0x1000usize.wrapping_sub((at & 0xfff) as usize);
            let n = in_page.min(buf.len().saturating_sub(done));
            let pa = self.pa(at)?;
            let Some(dst) = buf.get_mut(done..done.saturating_add(n)) else {
                break;
            };
            self.phys.read(pa, dst)?;
            done = done.saturating_add(n);
        }
        Ok(())
    }

    pub(crate) fn u32(&self, va: u64) -> Result<u32, LinuxError> {
        let mut b = [0u8; 4];
        self.read(va, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub(crate) fn u64(&self, va: u64) -> Result<u64, LinuxError> {
        let mut b = [0u8; 8];
        self.read(va, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads a pointer that a kernel list or field holds: it must be a kernel address
    /// (upper half) and 8-aligned, else [`LinuxError::ListPointer`] for `list`.
    pub(crate) fn ptr(&self, va: u64, list: &'static str) -> Result<u64, LinuxError> {
        let p = self
            .u64(va)
            .map_err(|_| LinuxError::ListPointer { list, at: Va(va) })?;
        if !is_kernel_pointer(p) {
            return Err(LinuxError::ListPointer { list, at: Va(p) });
        }
        Ok(p)
    }
}

/// Whether `p` looks like a pointer into the kernel half, 8-aligned.
pub(crate) fn is_kernel_pointer(p: u64) -> bool {
    p >> 47 == 0x1_ffff || (p >> 56 == 0xff && p & 7 == 0)
}
