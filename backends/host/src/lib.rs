//! # introvisor-host
//!
//! introvisor on the host: a [`VmiDriver`](introvisor::VmiDriver) over guest-physical
//! memory held by this process (a buffer, or a dump file read with `pread`), a
//! [`GuestBuilder`](builder::GuestBuilder) that lays out page tables and data for tests,
//! and the dump readers and writer. The `introvisor` command-line tool is this package's
//! binary (`src/bin/introvisor/`), built on this library's public API; it is not part of
//! the API itself.
//!
//! ```
//! use introvisor::{AccessContext, VmiCore, Va};
//! use introvisor_host::{HostDriver, builder::{GuestBuilder, MapFlags, PageSize}};
//!
//! let mut guest = GuestBuilder::new(4 << 20);
//! guest.map_new(Va(0x40_0000), PageSize::Size4K, MapFlags::USER_DATA)?;
//! guest.write_virtual(Va(0x40_0100), b"introvisor\0")?;
//! let guest = guest.finish();
//! let root = guest.root;
//!
//! let core = VmiCore::new(HostDriver::from_vec(guest.memory));
//! let mut buf = [0u8; 32];
//! let s = core.read_string_into(AccessContext::paging(Va(0x40_0100), root), &mut buf)?;
//! assert_eq!(s, "introvisor");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod borrowed;
pub mod builder;
mod driver;
pub mod dump;
pub mod memory;
mod prefetch;

pub use borrowed::{BorrowedDriver, BorrowedPage};
pub use driver::{HostDriver, HostPage};
pub use dump::{DumpError, DumpFormat, DumpInfo, DumpKind};
pub use memory::{GuestMemory, MemoryRange};

/// The crate's README, its example compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
