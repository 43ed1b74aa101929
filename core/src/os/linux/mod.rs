//! Linux guests from their memory alone: no profile, no System.map, no debug info.
//!
//! A distribution kernel (`CONFIG_KALLSYMS_ALL`, `CONFIG_DEBUG_INFO_BTF`) carries its own
//! symbol table and type information in RAM. This module finds them and reads the
//! kernel's lists with them:
//! - [`Kallsyms`]: the compressed symbol table, found by content;
//! - [`Btf`]: the kernel's BTF, read as a stream for struct sizes and member offsets;
//! - [`Vmcoreinfo`]: the `KEY=value` text the kernel keeps for crash dumps, used when
//!   present and only after its claims are checked;
//! - [`LinuxOs`]: the kernel found ([`LinuxOs::find`]: page-table root, 4/5-level
//!   paging, KASLR slide, `page_offset_base`) and the [`VmiOs`](crate::os::VmiOs) layer:
//!   processes, threads, modules, the current task, a process's VMAs.
//!
//! # Contract
//! No allocation, bounded memory (the largest fixed buffer is the 4 KiB copy of the
//! kallsyms token table; scans take a caller-supplied scratch buffer). For any guest
//! bytes every function returns `Ok` or `Err` and never panics; every scan is bounded by
//! guest memory's size, every list walk by a count and by Brent's cycle check, every
//! parse by the lengths the data claims, checked against their bounds.

mod btf;
mod cursor;
mod error;
mod find;
mod kallsyms;
mod mem;
mod offsets;
mod tasks;
mod vmcoreinfo;
mod vmios;

pub use btf::{BTF_MAGIC, Btf, BtfMember, BtfStruct, MAX_DEPTH, MEMBER_BUDGET};
pub use error::LinuxError;
pub use find::{
    BANNER_MAX, BTF_MAX, BtfFoundBy, FindHint, IMAGE_MAX, ImageFoundBy, KernelSymbols, LinuxOs,
    VmcoreinfoUse,
};
pub use kallsyms::{
    Kallsyms, KallsymsLayout, MAX_SYMBOLS, NAME_MAX, OffsetEncoding, Symbol, TOKEN_TABLE_MAX,
};
pub use mem::{KernelSpace, START_KERNEL, START_KERNEL_MAP};
pub use offsets::Offsets;
pub use tasks::{
    COMM_LEN, FILE_NAME_MAX, LinuxModule, MAPLE_DEPTH_MAX, MAX_LIST, MODULE_NAME_LEN, Task, Vma,
};
pub use vmcoreinfo::{OSRELEASE_MAX, VMCOREINFO_MAX, Vmcoreinfo};
