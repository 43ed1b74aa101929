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
//! # What it needs of the kernel
//! x86-64; `CONFIG_KALLSYMS_ALL` (`init_task`, `init_top_pgt`, `modules`, `linux_banner`
//! are data symbols) with the base-relative offsets of every kernel since 4.6 (the
//! layouts [`Kallsyms`] lists; others are refused by name); `CONFIG_DEBUG_INFO_BTF`;
//! `init_top_pgt` mapping `_text` (every x86-64 kernel). Checked on Debian 12's 6.1.192
//! and bookworm-backports' 6.12.95, KASLR on and off, `pti=on`, 4- and 5-level paging
//! (`host-test/tests/linux_guest.rs`), and on synthetic guests of each layout
//! (`host-test/tests/linux_synthetic.rs`).
//!
//! # Known limits
//! - Names are `task_struct.comm` (15 bytes): `/proc` shows a kernel thread's full name
//!   and a workqueue worker's queue, which `comm` does not hold.
//! - Without a kernel-mode GS base in the registers (a dump stopped in user mode keeps
//!   the kernel's in `KERNEL_GS_BASE`, which older QEMUs' ELF notes lack), the current
//!   task is CPU 0's (`__per_cpu_offset[0]`): right for one vCPU only.
//! - Only core-kernel symbols: module symbols (`[module]` lines of `/proc/kallsyms`) are
//!   not read.
//! - VMAs before 6.1 (`mm->mmap`, `vm_next`) are read by the same code but were not
//!   checked on a real guest.
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
