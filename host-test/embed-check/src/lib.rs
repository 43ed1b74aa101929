//! A no_std crate that embeds introvisor as a hypervisor or firmware would: cores declared
//! as `static`s, built by the compiler (no `Once`, no heap, no stack), one at the default
//! capacities and one firmware-sized, plus one over a driver held by reference.
//!
//! The library builds for `x86_64-unknown-none`; the tests (host target) read through the
//! very statics the library declares.

#![no_std]

use introvisor::arch::amd64::Amd64;
use introvisor::{AccessContext, Gfn, Pa, PageRef, Va, VmiCore, VmiDriver, VmiError, VmiInfo};

/// Bytes per frame.
const PAGE: usize = 4096;
/// Frames of the guest.
const FRAMES: usize = 6;

/// Guest-physical memory handed to the driver at compile time.
pub struct Ram(&'static [u8]);

impl Ram {
    /// A driver over `memory`: frame `n` is bytes `n * 4096..(n + 1) * 4096`.
    pub const fn new(memory: &'static [u8]) -> Self {
        Self(memory)
    }
}

/// A handle to one frame of a [`Ram`].
#[derive(Clone)]
pub struct RamPage(&'static [u8], Gfn);

impl PageRef for RamPage {
    fn gfn(&self) -> Gfn {
        self.1
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VmiError> {
        let start = usize::try_from(offset).map_err(|_| VmiError::InvalidArgument("offset"))?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.0.get(start..end))
            .ok_or(VmiError::InvalidArgument("range outside the page"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl VmiDriver for Ram {
    type Architecture = Amd64;
    type Page = RamPage;

    fn info(&self) -> Result<VmiInfo, VmiError> {
        let frames = (self.0.len() / PAGE) as u64;
        Ok(VmiInfo {
            page_size: PAGE as u64,
            page_shift: 12,
            max_gfn: Gfn(frames.saturating_sub(1)),
            vcpus: 1,
        })
    }

    fn read_page(&self, gfn: Gfn) -> Result<RamPage, VmiError> {
        let start = usize::try_from(gfn.0)
            .ok()
            .and_then(|n| n.checked_mul(PAGE))
            .ok_or(VmiError::GfnNotPresent(gfn))?;
        let page = start
            .checked_add(PAGE)
            .and_then(|end| self.0.get(start..end))
            .ok_or(VmiError::GfnNotPresent(gfn))?;
        Ok(RamPage(page, gfn))
    }
}

/// Stores `value` little-endian at byte `at` of `m`, at compile time.
#[expect(
    clippy::indexing_slicing,
    reason = "const fn over constant offsets in range"
)]
const fn put(mut m: [u8; FRAMES * PAGE], at: usize, value: u64) -> [u8; FRAMES * PAGE] {
    let bytes = value.to_le_bytes();
    let mut i = 0;
    while i < 8 {
        m[at + i] = bytes[i];
        i += 1;
    }
    m
}

/// Stores `s` at byte `at` of `m`, at compile time.
#[expect(
    clippy::indexing_slicing,
    reason = "const fn over constant offsets in range"
)]
const fn put_bytes(mut m: [u8; FRAMES * PAGE], at: usize, s: &[u8]) -> [u8; FRAMES * PAGE] {
    let mut i = 0;
    while i < s.len() {
        m[at + i] = s[i];
        i += 1;
    }
    m
}

/// The translation root of [`GUEST`].
pub const ROOT: Pa = Pa(0);
/// The kernel banner's virtual address: its string crosses from one page into the next.
pub const BANNER: Va = Va(0xffff_8000_0000_1ffa);
/// A user page (no-execute) holding a `u64` at offset 0x40.
pub const USER: Va = Va(0x40_0000);
/// An address whose page-table entry is not present.
pub const HOLE: Va = Va(0xffff_8000_0000_3000);

/// A guest with 4-level tables built by the compiler: PML4 at 0x0 (entry 0 for the user
/// half, entry 256 for the kernel half), PDPT at 0x1000 (both halves share it), PD at
/// 0x2000: entry 0 a page table at 0x3000, entry 2 a 2 MiB page at PA 0 (user, XD).
/// The PT maps VA +0x1000 and +0x2000 to PA 0x4000 and 0x5000 (kernel data); +0x3000 is
/// a hole.
const fn guest() -> [u8; FRAMES * PAGE] {
    const P_W: u64 = 0x3;
    const US: u64 = 0x4;
    const PS: u64 = 0x80;
    const XD: u64 = 1 << 63;
    let mut m = [0u8; FRAMES * PAGE];
    m = put(m, 0, 0x1000 | P_W | US);
    m = put(m, 256 * 8, 0x1000 | P_W);
    m = put(m, 0x1000, 0x2000 | P_W | US);
    m = put(m, 0x2000, 0x3000 | P_W);
    m = put(m, 0x2000 + 2 * 8, P_W | US | PS | XD);
    m = put(m, 0x3000 + 8, 0x4000 | P_W);
    m = put(m, 0x3000 + 2 * 8, 0x5000 | P_W);
    m = put_bytes(m, 0x4ffa, b"introvisor\0");
    m = put(m, 0x40, 0x1122_3344_5566_7788);
    m
}

/// The guest's memory, in static data.
pub static GUEST: [u8; FRAMES * PAGE] = guest();

/// A core at the default capacities (1,024 translations, 256 pages).
pub static CORE: VmiCore<Ram> = VmiCore::new(Ram::new(&GUEST));
/// A firmware-sized core: 64 translations, no page cache.
pub static SMALL: VmiCore<Ram, 64, 0> = VmiCore::sized(Ram::new(&GUEST));
/// A driver the hypervisor keeps using itself, and a core over a reference to it.
pub static DRIVER: Ram = Ram::new(&GUEST);
/// A core over [`DRIVER`], by reference.
pub static SHARED: VmiCore<&Ram, 16, 8> = VmiCore::sized(&DRIVER);

/// What an exit handler would read through a core: the banner (into `buf`), and the
/// user page's `u64`.
///
/// # Errors
/// The core's, for a guest whose tables or memory do not hold them.
pub fn read_guest<'b, D: VmiDriver<Architecture = Amd64>, const TLB: usize, const PAGES: usize>(
    core: &VmiCore<D, TLB, PAGES>,
    buf: &'b mut [u8],
) -> Result<(&'b str, u64), VmiError> {
    let value = core.read_u64(AccessContext::paging(Va(USER.0 + 0x40), ROOT))?;
    let banner = core.read_string_into(AccessContext::paging(BANNER, ROOT), buf)?;
    Ok((banner, value))
}

#[cfg(test)]
mod tests {
    extern crate std;

    use introvisor::{FaultReason, MemoryAccess};

    use super::*;

    #[test]
    fn static_cores_read_the_guest() {
        let mut buf = [0u8; 32];
        assert_eq!(
            read_guest(&CORE, &mut buf),
            Ok(("introvisor", 0x1122_3344_5566_7788))
        );
        assert_eq!(
            read_guest(&SMALL, &mut buf),
            Ok(("introvisor", 0x1122_3344_5566_7788))
        );
        assert_eq!(
            read_guest(&SHARED, &mut buf),
            Ok(("introvisor", 0x1122_3344_5566_7788))
        );
        // The banner crosses a page boundary: two 4 KiB pages, two frames apart.
        let t = SMALL.translate(Va(BANNER.0 + 6), ROOT).expect("mapped");
        assert_eq!((t.pa, t.page_size), (Pa(0x5000), 0x1000));
        let user = SMALL.translate(USER, ROOT).expect("mapped");
        assert_eq!(
            (user.page_size, user.user, user.access),
            (0x20_0000, true, MemoryAccess::RW)
        );
        match CORE.translate(HOLE, ROOT) {
            Err(VmiError::Translation(f)) => assert_eq!(f.reason, FaultReason::NotPresent),
            other => panic!("the hole translated: {other:?}"),
        }
        // The small core's caches are the sizes its type says.
        assert_eq!(SMALL.v2p_cache_metrics().capacity, 64);
        assert_eq!(SMALL.gfn_cache_metrics().capacity, 0);
        assert_eq!(CORE.v2p_cache_metrics().capacity, 1024);
        assert!(core::mem::size_of::<VmiCore<Ram, 64, 0>>() < 8 * 1024);
        // The hypervisor still has the driver the shared core reads through.
        assert!(DRIVER.read_page(Gfn(4)).is_ok());
    }
}
