//! # introvisor
//!
//! Virtual machine introspection for Rust hypervisors and firmware: read a guest's memory
//! through its own page tables, translate its addresses, and answer its VM exits, from a
//! core that needs no operating system and no heap.
//!
//! The crate is `#![no_std]` and allocates nothing unless the `alloc` feature is on.
//! A backend implements [`VmiDriver`] (two methods are required: [`VmiDriver::info`] and
//! [`VmiDriver::read_page`]); [`VmiCore`] adds the caches and the whole read surface.
//!
//! ## Layers
//! Each module is one layer, and imports only from itself and the layers listed before
//! it (`.ci/check-layers` checks this). Everything a user needs is also re-exported at
//! the crate root.
//!
//! - [`addr`], [`access`], [`error`]: address newtypes, rights and access contexts, and
//!   [`VmiError`]. They import only one another.
//! - [`cache`]: fixed-capacity containers that know no guest type ([`cache::Lru`],
//!   [`cache::ClockCache`], [`cache::Tlb`]). Imports the layer above.
//! - [`arch`]: the [`Architecture`] trait; [`arch::amd64`] has the paging modes, the
//!   entries, the walker, the rights check, registers and events. Imports the layers above.
//! - [`driver`]: all a backend implements or delivers: [`VmiDriver`], [`PageRef`],
//!   [`VmiEvent`], [`VmiEventResponse`]. Imports the layers above.
//! - [`vmi`]: [`VmiCore`], with its page and translation caches, translation, memory,
//!   strings, and vCPU and view control. Imports the layers above.
//! - [`os`]: [`VmiOs`], the trait an OS layer implements, and [`NoOs`]. Imports the
//!   layers above.
//! - [`session`]: [`VmiSession`] and its event loop, [`VmiHandler`], [`VmiContext`],
//!   [`VmiProber`]. Imports every layer.
//!
//! ## Example: a driver over a byte slice
//! ```
//! use introvisor::{
//!     AccessContext, Gfn, Pa, PageRef, Va, VmiCore, VmiDriver, VmiError, VmiInfo,
//!     arch::amd64::Amd64,
//! };
//!
//! /// Guest-physical memory in a static slice: frame `n` is bytes `n*4096..(n+1)*4096`.
//! struct SliceDriver(&'static [u8]);
//!
//! #[derive(Clone)]
//! struct SlicePage(&'static [u8], Gfn);
//!
//! impl PageRef for SlicePage {
//!     fn gfn(&self) -> Gfn { self.1 }
//!     fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VmiError> {
//!         let start = offset as usize;
//!         let src = self.0.get(start..start + buf.len())
//!             .ok_or(VmiError::InvalidArgument("range outside the page"))?;
//!         buf.copy_from_slice(src);
//!         Ok(())
//!     }
//! }
//!
//! impl VmiDriver for SliceDriver {
//!     type Architecture = Amd64;
//!     type Page = SlicePage;
//!     fn info(&self) -> Result<VmiInfo, VmiError> {
//!         Ok(VmiInfo { page_size: 4096, page_shift: 12,
//!                      max_gfn: Gfn(self.0.len() as u64 / 4096 - 1), vcpus: 1 })
//!     }
//!     fn read_page(&self, gfn: Gfn) -> Result<SlicePage, VmiError> {
//!         let start = (gfn.0 as usize).checked_mul(4096).ok_or(VmiError::GfnNotPresent(gfn))?;
//!         let page = self.0.get(start..start + 4096).ok_or(VmiError::GfnNotPresent(gfn))?;
//!         Ok(SlicePage(page, gfn))
//!     }
//! }
//!
//! // Four pages: a PML4 at 0x0, a PDPT at 0x1000, a PD at 0x2000 mapping VA 0 with one
//! // 2 MiB page at PA 0, and some text at 0x3000.
//! let mut mem = vec![0u8; 4 * 4096];
//! mem[0..8].copy_from_slice(&0x1003u64.to_le_bytes()); // PML4E -> PDPT, present+writable
//! mem[0x1000..0x1008].copy_from_slice(&0x2003u64.to_le_bytes()); // PDPTE -> PD
//! mem[0x2000..0x2008].copy_from_slice(&0x83u64.to_le_bytes()); // PDE: 2 MiB page at 0
//! mem[0x3000..0x3006].copy_from_slice(b"hello\0");
//! let core = VmiCore::new(SliceDriver(mem.leak()));
//!
//! let ctx = AccessContext::paging(Va(0x3000), Pa(0));
//! let mut buf = [0u8; 16];
//! assert_eq!(core.read_string_into(ctx, &mut buf)?, "hello");
//! assert_eq!(core.translate_address((Va(0x3004), Pa(0)).into())?, Pa(0x3004));
//! # Ok::<(), VmiError>(())
//! ```
//!
//! ## Contract
//! Guest memory is hostile input. For any bytes in guest memory, every method returns
//! `Ok` or `Err`: nothing panics, loops without bound, reads outside the memory the driver
//! offers, or allocates without bound.
//!
//! ## Features
//! All are additive; `--all-features` builds (on a host target: `std` needs one).
//! - `alloc`: reads that return `Vec`/`String`, and [`VmiDriver`] for `Arc<D>`.
//! - `std`: implies `alloc`; for host builds. The page cache's locks then yield to the
//!   operating system's scheduler while they wait, instead of spinning through a
//!   preempted holder's time slice (without `std`, where the holder is another CPU in an
//!   exit handler, they spin: see [`cache::ClockCache`]).
//! - `defmt`: `defmt::Format` on the public types, logging through defmt.
//! - `log`: logging through the `log` facade. With both `defmt` and `log` on, defmt wins:
//!   the crate logs through defmt only.
//!
//! The crate logs what a user would want to know, never on a hot path (a translation, a
//! read that hits): a failed resume when a [`PauseGuard`] drops (`warn`); a cache enabled,
//! disabled, resized or (the page cache) flushed (`debug`); an evicted page-cache entry
//! and a translation-cache flush (`trace`).
//!
//! ## A core in a static
//! [`VmiCore::new`] is a `const fn`, so a hypervisor or firmware declares its core as
//! static data, built by the compiler, on no stack:
//! `static CORE: VmiCore<MyDriver> = VmiCore::new(MyDriver::new());` when the driver's
//! constructor is `const`. The caches are sized by the type:
//! `static SMALL: VmiCore<MyDriver, 64, 0> = VmiCore::sized(MyDriver::new());` holds 64
//! translations and no page cache. See [`VmiCore`] for the sizes, and for drivers that
//! learn their memory at boot.

#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

mod fmt;

pub mod access;
pub mod addr;
pub mod arch;
pub mod cache;
pub mod driver;
pub mod error;
pub mod os;
pub mod session;
pub mod vmi;

pub use self::access::{
    AccessContext, AddressContext, MemoryAccess, TranslationMechanism, VmiInfo,
};
pub use self::addr::{Gfn, Hex, Pa, Va, VcpuId, View};
pub use self::arch::{Architecture, PhysRead, Translation, WalkStep};
pub use self::cache::CacheMetrics;
pub use self::driver::{
    PageRef, VmiDriver, VmiEvent, VmiEventFlags, VmiEventResponse, VmiEventResponseFlags,
};
pub use self::error::{FaultReason, PageFault, VmiError};
pub use self::os::{NoOs, VmiOs};
pub use self::session::{
    DEFAULT_EVENT_TIMEOUT, PageFaults, Probed, VmiContext, VmiHandler, VmiOsContext, VmiProber,
    VmiSession,
};
pub use self::vmi::{
    DEFAULT_STRING_LENGTH_LIMIT, GFN_CACHE_CAPACITY, PauseGuard, V2P_CACHE_CAPACITY, VmiCore,
};

/// The crate's README (`core/README.md`, packaged with the crate), its example compiled
/// and run as a doctest both in the workspace and in the published package. The
/// repository's README is tested by `introvisor-host-test`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
