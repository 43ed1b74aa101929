//! ELF core files of x86 guests: what QEMU's `dump-guest-memory` (and `virsh dump
//! --memory-only`) writes, and what Linux's `/proc/vmcore` looks like.
//!
//! # The format
//! An ELF64 or ELF32 file of type `ET_CORE` (the System V gABI, "ELF Header" and
//! "Program Header"), little-endian, for `EM_X86_64` or `EM_386`:
//! - each `PT_LOAD` program header is a run of guest RAM: `p_paddr` is its guest-physical
//!   address, `p_offset`/`p_filesz` the bytes in the file. Holes between segments are
//!   memory the dump does not hold (MMIO, or RAM left out);
//! - each `PT_NOTE` segment holds notes, each a 12-byte header (`n_namesz`, `n_descsz`,
//!   `n_type`), the name and the descriptor, both padded to 4 bytes. QEMU writes one
//!   `CORE`/`NT_PRSTATUS` note per vCPU (the general registers, in the layout of Linux's
//!   `struct elf_prstatus`), then one `QEMU` note (type 0) per vCPU holding its
//!   `QEMUCPUState`: version, size, the general registers, RIP, RFLAGS, the segment
//!   registers, LDTR, TR, GDTR, IDTR, CR0 to CR4 and, since QEMU added it, the
//!   `KERNEL_GS_BASE` MSR. Other notes (`VMCOREINFO`, say) are counted and skipped.
//!
//! QEMU writes `EM_X86_64` when its first vCPU was in IA-32e mode (EFER.LMA = 1), and
//! `EM_386` otherwise (with class ELF64 when memory reaches above 4 GiB).
//!
//! # Contract
//! [`parse`] reads only the bytes it is given: for any input it returns `Ok` or an
//! [`ElfError`] that says what is wrong, never panics, and allocates in proportion to the
//! headers it accepts, which are capped ([`MAX_PROGRAM_HEADERS`], [`MAX_NOTES`],
//! [`MAX_VCPUS`], [`MAX_NOTE_BYTES`]) and must lie inside the input. Warnings are capped
//! too ([`MAX_WARNINGS_PER_KIND`]).
//!
//! A file cut short inside or before a `PT_LOAD` segment (a copy interrupted, a disk
//! filled) is read: each segment keeps the bytes the file holds, and a warning says how
//! many were lost. Overlapping `PT_LOAD` segments are resolved as
//! [`GuestMemory`](crate::memory::GuestMemory) resolves them (the one that starts first
//! holds the shared bytes), with a warning.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use core::fmt;

use introvisor::Pa;
use introvisor::arch::amd64::{DescriptorTable, Registers, Segment};
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::memory::MemoryRange;

/// The most program headers accepted (QEMU writes one per RAM block).
pub const MAX_PROGRAM_HEADERS: u64 = 1 << 20;
/// The most notes accepted over all `PT_NOTE` segments.
pub const MAX_NOTES: usize = 1 << 16;
/// The most vCPUs accepted (QEMU's x86 machines allow a few thousand at most).
pub const MAX_VCPUS: usize = 8192;

/// `e_type` of a core file.
pub const ET_CORE: u16 = 4;
/// `e_machine` of 32-bit x86.
pub const EM_386: u16 = 3;
/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;
/// `p_type` of a loadable segment.
pub const PT_LOAD: u32 = 1;
/// `p_type` of a note segment.
pub const PT_NOTE: u32 = 4;
/// `n_type` of a `CORE` note with a process status (general registers).
pub const NT_PRSTATUS: u32 = 1;
/// `e_phnum` meaning "the count is in section header 0's `sh_info`".
pub const PN_XNUM: u16 = 0xffff;

/// The version of `QEMUCPUState` this reader knows.
pub const QEMU_CPU_STATE_VERSION: u32 = 1;
/// The size of `QEMUCPUState` up to CR4 (the first layout of version 1).
pub const QEMU_CPU_STATE_MIN_SIZE: usize = 432;
/// The size of `QEMUCPUState` with `kernel_gs_base` (version 1, later QEMUs).
pub const QEMU_CPU_STATE_SIZE: usize = 440;

/// The size of QEMU's (and Linux's) x86-64 `elf_prstatus`.
pub const PRSTATUS_X86_64_SIZE: usize = 336;
/// The size of QEMU's (and Linux's) i386 `elf_prstatus`.
pub const PRSTATUS_I386_SIZE: usize = 144;

/// What is wrong with an ELF core file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ElfError {
    /// The file is shorter than the structure named, which starts at `offset`.
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where it starts in the file.
        offset: u64,
    },
    /// The first four bytes are not `\x7fELF`.
    BadMagic,
    /// `EI_CLASS` is neither 1 (ELF32) nor 2 (ELF64).
    BadClass(u8),
    /// `EI_DATA` is not 1 (little-endian), the only byte order of x86 dumps.
    NotLittleEndian(u8),
    /// `e_type` is not `ET_CORE`.
    NotCore(u16),
    /// `e_machine` is neither `EM_X86_64` nor `EM_386`.
    UnsupportedMachine(u16),
    /// `e_phentsize` is smaller than a program header of the class.
    BadProgramHeaderSize(u16),
    /// More program headers than [`MAX_PROGRAM_HEADERS`], or none at all.
    BadProgramHeaderCount(u64),
    /// A `PT_NOTE` segment's file range ends past the end of the file, or a segment's
    /// file range overflows 64 bits. (A `PT_LOAD` segment cut by the end of the file is
    /// kept, with a warning.)
    SegmentPastEnd {
        /// The index of the program header.
        index: u64,
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        size: u64,
    },
    /// A `PT_LOAD` segment's guest-physical range runs past 2^64 (ending exactly at 2^64
    /// is allowed).
    SegmentAddressOverflow {
        /// The index of the program header.
        index: u64,
    },
    /// A note's sizes do not fit its segment.
    BadNote {
        /// The file offset of the note header.
        offset: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// More notes than [`MAX_NOTES`].
    TooManyNotes,
    /// More vCPU notes than [`MAX_VCPUS`].
    TooManyVcpus,
    /// The `PT_NOTE` segments hold more than [`MAX_NOTE_BYTES`] bytes in all.
    NotesTooLarge(u64),
    /// A `QEMU` CPU-state note this reader cannot use.
    BadQemuCpuState {
        /// The index of the vCPU (the order of the `QEMU` notes).
        vcpu: usize,
        /// What is wrong.
        why: &'static str,
    },
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { what, offset } => {
                write!(
                    f,
                    "truncated file: the {what} at offset {offset:#x} ends past the end"
                )
            }
            Self::BadMagic => f.write_str("not an ELF file (bad magic)"),
            Self::BadClass(c) => write!(f, "bad ELF class {c} (neither ELF32 nor ELF64)"),
            Self::NotLittleEndian(d) => {
                write!(f, "ELF data encoding {d} is not little-endian")
            }
            Self::NotCore(t) => write!(f, "ELF type {t} is not a core file (ET_CORE = 4)"),
            Self::UnsupportedMachine(m) => {
                write!(f, "ELF machine {m} is not x86 (EM_386 = 3, EM_X86_64 = 62)")
            }
            Self::BadProgramHeaderSize(s) => write!(f, "program header size {s} is too small"),
            Self::BadProgramHeaderCount(n) => write!(
                f,
                "{n} program headers (a dump has at least one, at most {MAX_PROGRAM_HEADERS})"
            ),
            Self::SegmentPastEnd {
                index,
                offset,
                size,
            } => write!(
                f,
                "segment {index} (offset {offset:#x}, {size:#x} bytes) does not fit in the file (truncated, or its range overflows)"
            ),
            Self::SegmentAddressOverflow { index } => {
                write!(f, "segment {index}: physical range runs past 2^64")
            }
            Self::BadNote { offset, why } => write!(f, "bad note at offset {offset:#x}: {why}"),
            Self::TooManyNotes => write!(f, "more than {MAX_NOTES} notes"),
            Self::TooManyVcpus => write!(f, "more than {MAX_VCPUS} vCPU notes"),
            Self::NotesTooLarge(n) => write!(
                f,
                "note segments of {n:#x} bytes in all (at most {MAX_NOTE_BYTES:#x} are read)"
            ),
            Self::BadQemuCpuState { vcpu, why } => {
                write!(f, "bad QEMU CPU state of vCPU {vcpu}: {why}")
            }
        }
    }
}

impl core::error::Error for ElfError {}

/// ELF32 or ELF64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfClass {
    /// `ELFCLASS32`.
    Elf32,
    /// `ELFCLASS64`.
    Elf64,
}

impl fmt::Display for ElfClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Elf32 => "ELF32",
            Self::Elf64 => "ELF64",
        })
    }
}

/// The machine of the dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// `EM_X86_64`: QEMU's first vCPU was in IA-32e mode.
    X86_64,
    /// `EM_386`: it was not (real, protected, or PAE mode).
    I386,
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::X86_64 => "x86-64",
            Self::I386 => "i386",
        })
    }
}

/// One `PT_LOAD` segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    /// `p_paddr`: the guest-physical address of the first byte.
    pub paddr: u64,
    /// `p_vaddr` (zero in QEMU dumps taken without paging).
    pub vaddr: u64,
    /// `p_offset`: where the bytes start in the file.
    pub offset: u64,
    /// `p_filesz`: how many bytes the file holds.
    pub filesz: u64,
    /// `p_memsz`: the size in memory. Bytes past `filesz` are not in the file, and this
    /// reader treats them as absent rather than zero.
    pub memsz: u64,
}

/// Where a vCPU's registers came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterSource {
    /// A `QEMU` note: general, segment and control registers.
    QemuCpuState {
        /// The structure's version field.
        version: u32,
        /// The structure's size field.
        size: u32,
    },
    /// A `CORE`/`NT_PRSTATUS` note only: general registers and selectors, no control
    /// registers (CR3 is zero).
    PrStatus,
}

/// One vCPU of the dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElfVcpu {
    /// The registers, in introvisor's layout (see [`qemu_segment`] and [`derive_efer`] for
    /// what is converted or derived).
    pub registers: Registers,
    /// Where they came from.
    pub source: RegisterSource,
    /// The `pr_pid` of its `NT_PRSTATUS` note (QEMU writes the vCPU index plus one).
    pub pid: Option<u32>,
}

impl ElfVcpu {
    /// Whether the control registers (CR0, CR3, CR4) are known.
    pub fn has_control_registers(&self) -> bool {
        matches!(self.source, RegisterSource::QemuCpuState { .. })
    }
}

/// A note that is neither a vCPU's `NT_PRSTATUS` nor its `QEMU` state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtherNote {
    /// The name's bytes as the file holds them, without the NUL, cut to its first
    /// [`MAX_NOTE_NAME`] bytes. They come from the file: escape them before they reach a
    /// terminal.
    pub name: Vec<u8>,
    /// The name's full length in bytes, without the NUL (more than `name.len()` when the
    /// name was cut).
    pub name_len: usize,
    /// `n_type`.
    pub kind: u32,
    /// `n_descsz`.
    pub size: u32,
}

/// A parsed ELF core file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfCore {
    /// ELF32 or ELF64.
    pub class: ElfClass,
    /// The machine.
    pub machine: Machine,
    /// Every `PT_LOAD` segment with bytes in the file, in file order; `filesz` is cut to
    /// what the file holds when the file ends inside the segment.
    pub loads: Vec<LoadSegment>,
    /// The vCPUs, in the order of their notes.
    pub vcpus: Vec<ElfVcpu>,
    /// Other notes.
    pub other_notes: Vec<OtherNote>,
    /// Things that are odd but not fatal, in words.
    pub warnings: Vec<String>,
}

impl ElfCore {
    /// The guest-physical memory ranges the `PT_LOAD` segments describe.
    pub fn ranges(&self) -> Vec<MemoryRange> {
        self.loads
            .iter()
            .map(|l| MemoryRange {
                start: Pa(l.paddr),
                len: l.filesz,
                offset: l.offset,
            })
            .collect()
    }
}

// ----- the raw structures ------------------------------------------------------------

/// `e_ident`: the first 16 bytes of every ELF file.
#[derive(FromBytes, KnownLayout, Immutable, IntoBytes, Clone, Copy)]
#[repr(C)]
struct Ident {
    magic: [u8; 4],
    class: u8,
    data: u8,
    version: u8,
    osabi: u8,
    pad: [u8; 8],
}

/// `Elf64_Ehdr`.
#[derive(FromBytes, KnownLayout, Immutable, IntoBytes, Clone, Copy)]
#[repr(C)]
pub(crate) struct Ehdr64 {
    pub(crate) ident: [u8; 16],
    pub(crate) e_type: U16,
    pub(crate) machine: U16,
    pub(crate) version: U32,
    pub(crate) entry: U64,
    pub(crate) phoff: U64,
    pub(crate) shoff: U64,
    pub(crate) flags: U32,
    pub(crate) ehsize: U16,
    pub(crate) phentsize: U16,
    pub(crate) phnum: U16,
    pub(crate) shentsize: U16,
    pub(crate) shnum: U16,
    pub(crate) shstrndx: U16,
}

/// `Elf32_Ehdr`.
#[derive(FromBytes, KnownLayout, Immutable, IntoBytes, Clone, Copy)]
#[repr(C)]
pub(crate) struct Ehdr32 {
    pub(crate) ident: [u8; 16],
    pub(crate) e_type: U16,
    pub(crate) machine: U16,
    pub(crate) version: U32,
    pub(crate) entry: U32,
    pub(crate) phoff: U32,
    pub(crate) shoff: U32,
    pub(crate) flags: U32,
    pub(crate) ehsize: U16,
    pub(crate) phentsize: U16,
    pub(crate) phnum: U16,
    pub(crate) shentsize: U16,
    pub(crate) shnum: U16,
    pub(crate) shstrndx: U16,
}

/// `Elf64_Phdr`.
#[derive(FromBytes, KnownLayout, Immutable, IntoBytes, Clone, Copy)]
#[repr(C)]
pub(crate) struct Phdr64 {
    pub(crate) p_type: U32,
    pub(crate) flags: U32,
    pub(crate) offset: U64,
    pub(crate) vaddr: U64,
    pub(crate) paddr: U64,
    pub(crate) filesz: U64,
    pub(crate) memsz: U64,
    pub(crate) align: U64,
}

/// `Elf32_Phdr`.
#[derive(FromBytes, KnownLayout, Immutable, IntoBytes, Clone, Copy)]
#[repr(C)]
pub(crate) struct Phdr32 {
    pub(crate) p_type: U32,
    pub(crate) offset: U32,
    pub(crate) vaddr: U32,
    pub(crate) paddr: U32,
    pub(crate) filesz: U32,
    pub(crate) memsz: U32,
    pub(crate) flags: U32,
    pub(crate) align: U32,
}

/// `Elf64_Shdr` (only section 0 is read, for `PN_XNUM`).
#[derive(FromBytes, KnownLayout, Immutable, IntoBytes, Clone, Copy)]
#[repr(C)]
struct Shdr64 {
    name: U32,
    sh_type: U32,
    flags: U64,
    addr: U64,
    offset: U64,
    size: U64,
    link: U32,
    info: U32,
    addralign: U64,
    entsize: U64,
}

/// `Elf32_Shdr`.
#[derive(FromBytes, KnownLayout, Immutable, IntoBytes, Clone, Copy)]
#[repr(C)]
struct Shdr32 {
    name: U32,
    sh_type: U32,
    flags: U32,
    addr: U32,
    offset: U32,
    size: U32,
    link: U32,
    info: U32,
    addralign: U32,
    entsize: U32,
}

/// `Elf32_Nhdr`/`Elf64_Nhdr` (the same 12 bytes).
#[derive(FromBytes, KnownLayout, Immutable, IntoBytes, Clone, Copy)]
#[repr(C)]
pub(crate) struct Nhdr {
    pub(crate) namesz: U32,
    pub(crate) descsz: U32,
    pub(crate) n_type: U32,
}

/// QEMU's `QEMUCPUSegment` (target/i386/arch_dump.c).
#[derive(FromBytes, KnownLayout, Immutable, IntoBytes, Clone, Copy, Default)]
#[repr(C)]
pub(crate) struct QemuSegment {
    pub(crate) selector: U32,
    pub(crate) limit: U32,
    /// QEMU's `SegmentCache.flags`: the second dword of a descriptor, bits 8 to 23
    /// (type, S, DPL, P, AVL, L, D/B, G) in place.
    pub(crate) flags: U32,
    pub(crate) pad: U32,
    pub(crate) base: U64,
}

/// QEMU's `QEMUCPUState`, version 1, with `kernel_gs_base` (440 bytes). Older QEMUs end
/// after `cr` (432 bytes); the `size` field says which.
#[derive(FromBytes, KnownLayout, Immutable, IntoBytes, Clone, Copy, Default)]
#[repr(C)]
pub(crate) struct QemuCpuState {
    pub(crate) version: U32,
    pub(crate) size: U32,
    pub(crate) rax: U64,
    pub(crate) rbx: U64,
    pub(crate) rcx: U64,
    pub(crate) rdx: U64,
    pub(crate) rsi: U64,
    pub(crate) rdi: U64,
    pub(crate) rsp: U64,
    pub(crate) rbp: U64,
    pub(crate) r8: U64,
    pub(crate) r9: U64,
    pub(crate) r10: U64,
    pub(crate) r11: U64,
    pub(crate) r12: U64,
    pub(crate) r13: U64,
    pub(crate) r14: U64,
    pub(crate) r15: U64,
    pub(crate) rip: U64,
    pub(crate) rflags: U64,
    pub(crate) cs: QemuSegment,
    pub(crate) ds: QemuSegment,
    pub(crate) es: QemuSegment,
    pub(crate) fs: QemuSegment,
    pub(crate) gs: QemuSegment,
    pub(crate) ss: QemuSegment,
    pub(crate) ldt: QemuSegment,
    pub(crate) tr: QemuSegment,
    pub(crate) gdt: QemuSegment,
    pub(crate) idt: QemuSegment,
    pub(crate) cr: [U64; 5],
    pub(crate) kernel_gs_base: U64,
}

/// The register block of the x86-64 `elf_prstatus` (Linux's `struct user_regs_struct`),
/// at offset 112 of the 336-byte descriptor.
#[derive(FromBytes, KnownLayout, Immutable, IntoBytes, Clone, Copy, Default)]
#[repr(C)]
pub(crate) struct UserRegs64 {
    pub(crate) r15: U64,
    pub(crate) r14: U64,
    pub(crate) r13: U64,
    pub(crate) r12: U64,
    pub(crate) rbp: U64,
    pub(crate) rbx: U64,
    pub(crate) r11: U64,
    pub(crate) r10: U64,
    pub(crate) r9: U64,
    pub(crate) r8: U64,
    pub(crate) rax: U64,
    pub(crate) rcx: U64,
    pub(crate) rdx: U64,
    pub(crate) rsi: U64,
    pub(crate) rdi: U64,
    pub(crate) orig_rax: U64,
    pub(crate) rip: U64,
    pub(crate) cs: U64,
    pub(crate) eflags: U64,
    pub(crate) rsp: U64,
    pub(crate) ss: U64,
    pub(crate) fs_base: U64,
    pub(crate) gs_base: U64,
    pub(crate) ds: U64,
    pub(crate) es: U64,
    pub(crate) fs: U64,
    pub(crate) gs: U64,
}

/// The offset of `pr_pid` in the x86-64 `elf_prstatus`.
pub(crate) const PRSTATUS_X86_64_PID: usize = 32;
/// The offset of `pr_reg` in the x86-64 `elf_prstatus`.
pub(crate) const PRSTATUS_X86_64_REGS: usize = 112;

/// The register block of the i386 `elf_prstatus`, at offset 72 of the 144-byte
/// descriptor. Selectors are 16-bit, each followed by 16 bits of padding.
#[derive(FromBytes, KnownLayout, Immutable, IntoBytes, Clone, Copy, Default)]
#[repr(C)]
struct UserRegs32 {
    ebx: U32,
    ecx: U32,
    edx: U32,
    esi: U32,
    edi: U32,
    ebp: U32,
    eax: U32,
    ds: U32,
    es: U32,
    fs: U32,
    gs: U32,
    orig_eax: U32,
    eip: U32,
    cs: U32,
    eflags: U32,
    esp: U32,
    ss: U32,
}

/// The offset of `pr_pid` in the i386 `elf_prstatus`.
const PRSTATUS_I386_PID: usize = 24;
/// The offset of `pr_reg` in the i386 `elf_prstatus`.
const PRSTATUS_I386_REGS: usize = 72;

// ----- conversions -------------------------------------------------------------------

/// Converts QEMU's segment cache to introvisor's [`Segment`].
///
/// QEMU keeps a segment's attributes as the second dword of its descriptor (SDM Vol. 3A
/// §3.4.5, Figure 3-8): type in bits 11:8, S 12, DPL 14:13, P 15, AVL 20, L 21, D/B 22,
/// G 23. [`Segment::access`] uses the VMX access-rights layout (SDM Vol. 3C §25.4.1,
/// Table 25-2), which is the same bits shifted right by 8: type 3:0, S 4, DPL 6:5, P 7,
/// AVL 12, L 13, D/B 14, G 15. A segment that is not present is marked unusable (bit 16),
/// as KVM does. QEMU's limit is already scaled by the granularity, as ours is.
pub fn qemu_segment(selector: u32, base: u64, limit: u32, flags: u32) -> Segment {
    let mut access = (flags >> 8) & 0xf0ff;
    if flags & (1 << 15) == 0 {
        access |= 1 << 16;
    }
    Segment {
        selector: selector as u16,
        base,
        limit,
        access,
    }
}

/// The inverse of [`qemu_segment`]: QEMU's descriptor-dword flags from VMX access rights.
pub fn qemu_segment_flags(segment: &Segment) -> u32 {
    (segment.access & 0xf0ff) << 8
}

/// EFER for a vCPU whose dump does not record it (QEMU's CPU-state note has no EFER).
///
/// - LMA and LME (bits 10 and 8) are set when the vCPU was in IA-32e mode: paging on
///   (CR0.PG), PAE on (CR4.PAE), and either the dump's machine is x86-64 (QEMU writes
///   `EM_X86_64` exactly when its first vCPU had EFER.LMA = 1) or CS is a 64-bit code
///   segment (CS.L, meaningful only in IA-32e mode). SDM Vol. 3A §10.8.5: LMA = LME and
///   CR0.PG; IA-32e mode requires CR4.PAE.
/// - NXE (bit 11) is set whenever 64-bit page-table entries are in use (PAE or IA-32e
///   paging), the setting every 64-bit OS runs with: a guest that had NXE clear never has
///   bit 63 set in a present entry (it would fault), so assuming NXE costs nothing there.
/// - Nothing else is derived (SCE, SVME and the rest read as zero).
pub fn derive_efer(cr0: u64, cr4: u64, cs: &Segment, machine: Machine) -> u64 {
    let pg = cr0 & (1 << 31) != 0;
    let pae = cr4 & (1 << 5) != 0;
    let mut efer = 0;
    if pg && pae {
        efer |= 1 << 11;
        if machine == Machine::X86_64 || cs.long() {
            efer |= (1 << 10) | (1 << 8);
        }
    }
    efer
}

fn registers_from_qemu(s: &QemuCpuState, with_kgs: bool, machine: Machine) -> Registers {
    let seg = |q: &QemuSegment| {
        qemu_segment(q.selector.get(), q.base.get(), q.limit.get(), q.flags.get())
    };
    let table = |q: &QemuSegment| DescriptorTable {
        base: q.base.get(),
        limit: u16::try_from(q.limit.get()).unwrap_or(u16::MAX),
    };
    let [cr0, _cr1, cr2, cr3, cr4] = s.cr.map(U64::get);
    let cs = seg(&s.cs);
    Registers {
        rax: s.rax.get(),
        rbx: s.rbx.get(),
        rcx: s.rcx.get(),
        rdx: s.rdx.get(),
        rsi: s.rsi.get(),
        rdi: s.rdi.get(),
        rbp: s.rbp.get(),
        rsp: s.rsp.get(),
        r8: s.r8.get(),
        r9: s.r9.get(),
        r10: s.r10.get(),
        r11: s.r11.get(),
        r12: s.r12.get(),
        r13: s.r13.get(),
        r14: s.r14.get(),
        r15: s.r15.get(),
        rip: s.rip.get(),
        rflags: s.rflags.get(),
        cr0,
        cr2,
        cr3,
        cr4,
        efer: derive_efer(cr0, cr4, &cs, machine),
        cs,
        ds: seg(&s.ds),
        es: seg(&s.es),
        fs: seg(&s.fs),
        gs: seg(&s.gs),
        ss: seg(&s.ss),
        ldtr: seg(&s.ldt),
        tr: seg(&s.tr),
        gdtr: table(&s.gdt),
        idtr: table(&s.idt),
        fs_base: s.fs.base.get(),
        gs_base: s.gs.base.get(),
        kernel_gs_base: if with_kgs { s.kernel_gs_base.get() } else { 0 },
        ..Registers::default()
    }
}

/// Registers from an `NT_PRSTATUS` descriptor (general registers and selectors).
fn registers_from_prstatus(desc: &[u8]) -> Option<(Registers, u32)> {
    let sel = |v: u64| Segment {
        selector: v as u16,
        ..Segment::default()
    };
    let pid = |at: usize| {
        at.checked_add(4)
            .and_then(|end| desc.get(at..end))
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
    };
    match desc.len() {
        PRSTATUS_X86_64_SIZE => {
            let (r, _) = UserRegs64::read_from_prefix(desc.get(PRSTATUS_X86_64_REGS..)?).ok()?;
            let regs = Registers {
                rax: r.rax.get(),
                rbx: r.rbx.get(),
                rcx: r.rcx.get(),
                rdx: r.rdx.get(),
                rsi: r.rsi.get(),
                rdi: r.rdi.get(),
                rbp: r.rbp.get(),
                rsp: r.rsp.get(),
                r8: r.r8.get(),
                r9: r.r9.get(),
                r10: r.r10.get(),
                r11: r.r11.get(),
                r12: r.r12.get(),
                r13: r.r13.get(),
                r14: r.r14.get(),
                r15: r.r15.get(),
                rip: r.rip.get(),
                rflags: r.eflags.get(),
                cs: sel(r.cs.get()),
                ss: sel(r.ss.get()),
                ds: sel(r.ds.get()),
                es: sel(r.es.get()),
                fs: sel(r.fs.get()),
                gs: sel(r.gs.get()),
                fs_base: r.fs_base.get(),
                gs_base: r.gs_base.get(),
                ..Registers::default()
            };
            Some((regs, pid(PRSTATUS_X86_64_PID)?))
        }
        PRSTATUS_I386_SIZE => {
            let (r, _) = UserRegs32::read_from_prefix(desc.get(PRSTATUS_I386_REGS..)?).ok()?;
            let sel32 = |v: U32| sel(u64::from(v.get()));
            let regs = Registers {
                rax: r.eax.get().into(),
                rbx: r.ebx.get().into(),
                rcx: r.ecx.get().into(),
                rdx: r.edx.get().into(),
                rsi: r.esi.get().into(),
                rdi: r.edi.get().into(),
                rbp: r.ebp.get().into(),
                rsp: r.esp.get().into(),
                rip: r.eip.get().into(),
                rflags: r.eflags.get().into(),
                cs: sel32(r.cs),
                ss: sel32(r.ss),
                ds: sel32(r.ds),
                es: sel32(r.es),
                fs: sel32(r.fs),
                gs: sel32(r.gs),
                ..Registers::default()
            };
            Some((regs, pid(PRSTATUS_I386_PID)?))
        }
        _ => None,
    }
}

// ----- the parser --------------------------------------------------------------------

/// Why a file could not be read.
#[derive(Debug)]
pub(crate) enum Fail {
    /// The file is not a usable core file.
    Elf(ElfError),
    /// Reading it failed (an I/O error, not a short file).
    Io(std::io::Error),
}

impl From<ElfError> for Fail {
    fn from(e: ElfError) -> Self {
        Self::Elf(e)
    }
}

/// Where the parser reads the file from: the bytes in memory, or a file read with
/// positioned reads (so that nothing is mapped, and a file that shrinks gives an error).
pub(crate) trait Source {
    /// The file's length.
    fn len(&self) -> u64;
    /// Exactly `buf.len()` bytes at `offset`: `Ok(false)` if the file holds fewer.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<bool>;
}

impl Source for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<bool> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| Some((start, start.checked_add(buf.len())?)))
            .and_then(|(start, end)| self.get(start..end));
        Ok(src.is_some_and(|src| {
            buf.copy_from_slice(src);
            true
        }))
    }
}

/// A file and its length when it was opened.
pub(crate) struct FileSource<'a> {
    pub(crate) file: &'a std::fs::File,
    pub(crate) len: u64,
}

impl Source for FileSource<'_> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<bool> {
        #[cfg(unix)]
        let result = std::os::unix::fs::FileExt::read_exact_at(self.file, buf, offset);
        #[cfg(not(unix))]
        let result = {
            use std::io::{Read, Seek, SeekFrom};
            let mut file = self.file;
            file.seek(SeekFrom::Start(offset))
                .and_then(|_| file.read_exact(buf))
        };
        match result {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// `len` bytes at `offset` into a new buffer, or [`ElfError::Truncated`]. The caller
/// bounds `len`.
fn bytes_at<S: Source + ?Sized>(
    src: &S,
    offset: u64,
    len: u64,
    what: &'static str,
) -> Result<Vec<u8>, Fail> {
    let truncated = ElfError::Truncated { what, offset };
    if offset.checked_add(len).is_none_or(|end| end > src.len()) {
        return Err(truncated.into());
    }
    let mut buf = vec![0u8; usize::try_from(len).map_err(|_| truncated)?];
    if src.read_exact_at(offset, &mut buf).map_err(Fail::Io)? {
        Ok(buf)
    } else {
        Err(truncated.into())
    }
}

/// A structure at `offset`.
fn read_at<T: FromBytes + IntoBytes, S: Source + ?Sized>(
    src: &S,
    offset: u64,
    what: &'static str,
) -> Result<T, Fail> {
    let mut value = T::new_zeroed();
    if src
        .read_exact_at(offset, value.as_mut_bytes())
        .map_err(Fail::Io)?
    {
        Ok(value)
    } else {
        Err(ElfError::Truncated { what, offset }.into())
    }
}

/// Whether `bytes` start with the ELF magic.
pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF")
}

/// The header fields the parser needs, whatever the class.
struct Header {
    class: ElfClass,
    machine: Machine,
    phoff: u64,
    phentsize: u64,
    phnum: u64,
}

fn header<S: Source + ?Sized>(src: &S) -> Result<Header, Fail> {
    let ident: Ident = read_at(src, 0, "ELF identification")?;
    if &ident.magic != b"\x7fELF" {
        return Err(ElfError::BadMagic.into());
    }
    let class = match ident.class {
        1 => ElfClass::Elf32,
        2 => ElfClass::Elf64,
        c => return Err(ElfError::BadClass(c).into()),
    };
    if ident.data != 1 {
        return Err(ElfError::NotLittleEndian(ident.data).into());
    }
    let (e_type, machine, phoff, phentsize, phnum, shoff, shentsize) = match class {
        ElfClass::Elf64 => {
            let h: Ehdr64 = read_at(src, 0, "ELF header")?;
            (
                h.e_type.get(),
                h.machine.get(),
                h.phoff.get(),
                h.phentsize.get(),
                h.phnum.get(),
                h.shoff.get(),
                h.shentsize.get(),
            )
        }
        ElfClass::Elf32 => {
            let h: Ehdr32 = read_at(src, 0, "ELF header")?;
            (
                h.e_type.get(),
                h.machine.get(),
                u64::from(h.phoff.get()),
                h.phentsize.get(),
                h.phnum.get(),
                u64::from(h.shoff.get()),
                h.shentsize.get(),
            )
        }
    };
    if e_type != ET_CORE {
        return Err(ElfError::NotCore(e_type).into());
    }
    let machine = match machine {
        EM_X86_64 => Machine::X86_64,
        EM_386 => Machine::I386,
        m => return Err(ElfError::UnsupportedMachine(m).into()),
    };
    let min_phentsize = match class {
        ElfClass::Elf64 => size_of::<Phdr64>(),
        ElfClass::Elf32 => size_of::<Phdr32>(),
    };
    if usize::from(phentsize) < min_phentsize {
        return Err(ElfError::BadProgramHeaderSize(phentsize).into());
    }
    let phnum = if phnum == PN_XNUM {
        // The real count is in section header 0's sh_info (gABI, "Section Header").
        let min_shentsize = match class {
            ElfClass::Elf64 => size_of::<Shdr64>(),
            ElfClass::Elf32 => size_of::<Shdr32>(),
        };
        if usize::from(shentsize) < min_shentsize {
            return Err(ElfError::BadProgramHeaderCount(u64::from(PN_XNUM)).into());
        }
        match class {
            ElfClass::Elf64 => u64::from(
                read_at::<Shdr64, S>(src, shoff, "section header 0")?
                    .info
                    .get(),
            ),
            ElfClass::Elf32 => u64::from(
                read_at::<Shdr32, S>(src, shoff, "section header 0")?
                    .info
                    .get(),
            ),
        }
    } else {
        u64::from(phnum)
    };
    if phnum == 0 || phnum > MAX_PROGRAM_HEADERS {
        return Err(ElfError::BadProgramHeaderCount(phnum).into());
    }
    // The whole table must be in the file before anything is read or allocated for it.
    let table_len = phnum
        .checked_mul(u64::from(phentsize))
        .ok_or(ElfError::BadProgramHeaderCount(phnum))?;
    if phoff
        .checked_add(table_len)
        .is_none_or(|end| end > src.len())
    {
        return Err(ElfError::Truncated {
            what: "program header table",
            offset: phoff,
        }
        .into());
    }
    Ok(Header {
        class,
        machine,
        phoff,
        phentsize: u64::from(phentsize),
        phnum,
    })
}

/// One program header, whatever the class: (type, offset, vaddr, paddr, filesz, memsz).
fn program_header<S: Source + ?Sized>(
    src: &S,
    h: &Header,
    index: u64,
) -> Result<(u32, LoadSegment), Fail> {
    // In the file: `header` checked the whole table.
    let at = index
        .checked_mul(h.phentsize)
        .and_then(|o| o.checked_add(h.phoff))
        .ok_or(ElfError::BadProgramHeaderCount(h.phnum))?;
    Ok(match h.class {
        ElfClass::Elf64 => {
            let p: Phdr64 = read_at(src, at, "program header")?;
            (
                p.p_type.get(),
                LoadSegment {
                    paddr: p.paddr.get(),
                    vaddr: p.vaddr.get(),
                    offset: p.offset.get(),
                    filesz: p.filesz.get(),
                    memsz: p.memsz.get(),
                },
            )
        }
        ElfClass::Elf32 => {
            let p: Phdr32 = read_at(src, at, "program header")?;
            (
                p.p_type.get(),
                LoadSegment {
                    paddr: p.paddr.get().into(),
                    vaddr: p.vaddr.get().into(),
                    offset: p.offset.get().into(),
                    filesz: p.filesz.get().into(),
                    memsz: p.memsz.get().into(),
                },
            )
        }
    })
}

/// Notes collected from every `PT_NOTE` segment, in file order.
#[derive(Default)]
struct Notes<'a> {
    prstatus: Vec<&'a [u8]>,
    qemu: Vec<&'a [u8]>,
    other: Vec<OtherNote>,
    count: usize,
}

/// The notes of one `PT_NOTE` segment, `data`, which starts at file offset `base`.
fn read_notes<'a>(data: &'a [u8], base: u64, notes: &mut Notes<'a>) -> Result<(), ElfError> {
    let mut pos = 0usize;
    // Each turn consumes at least the 12-byte header: bounded by the segment size.
    while pos < data.len() {
        let offset = base.saturating_add(pos as u64);
        let bad = |why| ElfError::BadNote { offset, why };
        let rest = data.get(pos..).unwrap_or_default();
        if rest.len() < size_of::<Nhdr>() {
            // Trailing bytes too short for a header: padding some writers leave.
            if rest.iter().all(|&b| b == 0) {
                break;
            }
            return Err(bad("note header cut short by the end of its segment"));
        }
        let (nhdr, _) = Nhdr::read_from_prefix(rest).map_err(|_| bad("note header"))?;
        let namesz = nhdr.namesz.get() as usize;
        let descsz = nhdr.descsz.get() as usize;
        let name_at = size_of::<Nhdr>();
        let desc_at = namesz
            .checked_next_multiple_of(4)
            .and_then(|n| n.checked_add(name_at))
            .ok_or(bad("name size overflows"))?;
        let end = desc_at
            .checked_add(descsz)
            .ok_or(bad("descriptor size overflows"))?;
        if end > rest.len() {
            return Err(bad("name or descriptor runs past the end of the segment"));
        }
        let name = name_at
            .checked_add(namesz)
            .and_then(|name_end| rest.get(name_at..name_end))
            .unwrap_or_default();
        let desc = rest.get(desc_at..end).unwrap_or_default();
        notes.count = notes.count.saturating_add(1);
        if notes.count > MAX_NOTES {
            return Err(ElfError::TooManyNotes);
        }
        let name = name.strip_suffix(b"\0").unwrap_or(name);
        match (name, nhdr.n_type.get()) {
            (b"CORE", NT_PRSTATUS) => notes.prstatus.push(desc),
            (b"QEMU", 0) => notes.qemu.push(desc),
            (name, kind) => notes.other.push(OtherNote {
                name: name.get(..MAX_NOTE_NAME).unwrap_or(name).to_vec(),
                name_len: name.len(),
                kind,
                size: nhdr.descsz.get(),
            }),
        }
        if notes.prstatus.len() > MAX_VCPUS || notes.qemu.len() > MAX_VCPUS {
            return Err(ElfError::TooManyVcpus);
        }
        let next = end.checked_next_multiple_of(4).unwrap_or(end);
        pos = pos.saturating_add(next);
    }
    Ok(())
}

fn qemu_state(desc: &[u8], vcpu: usize) -> Result<(QemuCpuState, bool, u32, u32), ElfError> {
    let bad = |why| ElfError::BadQemuCpuState { vcpu, why };
    if desc.len() < 8 {
        return Err(bad("note shorter than its version and size fields"));
    }
    let mut state = QemuCpuState::default();
    let (version, size) = {
        let (head, _) = <[U32; 2]>::read_from_prefix(desc).map_err(|_| bad("header"))?;
        let [version, size] = head;
        (version.get(), size.get())
    };
    if version != QEMU_CPU_STATE_VERSION {
        return Err(bad("unknown version (this reader knows version 1)"));
    }
    let size_usize = size as usize;
    if size_usize > desc.len() {
        return Err(bad("size field larger than the note"));
    }
    if size_usize < QEMU_CPU_STATE_MIN_SIZE {
        return Err(bad(
            "size field smaller than the registers up to CR4 (432 bytes)",
        ));
    }
    let take = size_usize.min(QEMU_CPU_STATE_SIZE);
    let src = desc.get(..take).ok_or(bad("size"))?;
    let dst = state.as_mut_bytes().get_mut(..take).ok_or(bad("size"))?;
    dst.copy_from_slice(src);
    Ok((state, size_usize >= QEMU_CPU_STATE_SIZE, version, size))
}

/// At most this many warnings of each kind (per segment, per vCPU, per overlap) are kept;
/// the rest are counted in one line, so a hostile file with a million short segments or
/// vCPU notes cannot make a million messages.
pub const MAX_WARNINGS_PER_KIND: usize = 16;

/// The most bytes of `PT_NOTE` segments read, over all of them. QEMU writes under a
/// kilobyte per vCPU, Linux a few kilobytes in all; the notes are read into memory, so
/// their size is capped.
pub const MAX_NOTE_BYTES: u64 = 64 << 20;

/// The most bytes of a note's name kept in [`OtherNote::name`].
pub const MAX_NOTE_NAME: usize = 64;

/// Warnings of one kind, capped at [`MAX_WARNINGS_PER_KIND`].
#[derive(Default)]
struct Capped {
    shown: usize,
    omitted: u64,
}

impl Capped {
    fn push(&mut self, warnings: &mut Vec<String>, message: impl FnOnce() -> String) {
        if self.shown < MAX_WARNINGS_PER_KIND {
            self.shown = self.shown.saturating_add(1);
            warnings.push(message());
        } else {
            self.omitted = self.omitted.saturating_add(1);
        }
    }

    fn finish(&self, warnings: &mut Vec<String>, summary: impl FnOnce(u64) -> String) {
        if self.omitted > 0 {
            warnings.push(summary(self.omitted));
        }
    }
}

/// Parses an ELF core file held in `bytes`; see the module documentation.
///
/// # Errors
/// An [`ElfError`] naming what is wrong: not ELF, not a little-endian x86 core file,
/// headers or note segments past the end of the input, segments whose ranges overflow 64
/// bits, notes whose sizes do not fit, counts or sizes over the caps, or a `QEMU`
/// CPU-state note of an unknown version or a bad size.
pub fn parse(bytes: &[u8]) -> Result<ElfCore, ElfError> {
    parse_from(bytes).map_err(|fail| match fail {
        Fail::Elf(e) => e,
        // Bytes in memory cannot fail to read.
        Fail::Io(_) => ElfError::Truncated {
            what: "file",
            offset: 0,
        },
    })
}

/// [`parse`] over any [`Source`].
pub(crate) fn parse_from<S: Source + ?Sized>(src: &S) -> Result<ElfCore, Fail> {
    let h = header(src)?;
    let file_len = src.len();
    let mut loads = Vec::new();
    let mut warnings = Vec::new();
    let mut note_segments = Vec::new();
    let mut short = Capped::default();
    let mut cut = Capped::default();
    let mut cut_count = 0u64;
    let mut cut_bytes = 0u64;
    for index in 0..h.phnum {
        let (p_type, mut seg) = program_header(src, &h, index)?;
        if p_type != PT_LOAD && p_type != PT_NOTE {
            continue;
        }
        let past_end = ElfError::SegmentPastEnd {
            index,
            offset: seg.offset,
            size: seg.filesz,
        };
        let Some(end) = seg.offset.checked_add(seg.filesz) else {
            return Err(past_end.into());
        };
        if p_type == PT_NOTE {
            if end > file_len {
                return Err(past_end.into());
            }
            note_segments.push(seg);
            continue;
        }
        if let Some(n) = seg.filesz.checked_sub(1)
            && seg.paddr.checked_add(n).is_none()
        {
            return Err(ElfError::SegmentAddressOverflow { index }.into());
        }
        if let Some(missing) = seg.memsz.checked_sub(seg.filesz).filter(|&m| m > 0) {
            short.push(&mut warnings, || {
                format!(
                    "segment {index} at {:#x}: {missing:#x} of its {:#x} bytes are not in the file and read as absent",
                    seg.paddr, seg.memsz
                )
            });
        }
        if end > file_len {
            // A dump cut short: keep what the file holds, and say what is lost.
            let kept = file_len.saturating_sub(seg.offset);
            let lost = seg.filesz.saturating_sub(kept);
            cut_count = cut_count.saturating_add(1);
            cut_bytes = cut_bytes.saturating_add(lost);
            cut.push(&mut warnings, || {
                if kept == 0 {
                    format!(
                        "segment {index} at {:#x}: the file is truncated before it; all its {lost:#x} bytes are lost",
                        seg.paddr
                    )
                } else {
                    format!(
                        "segment {index} at {:#x}: the file is truncated {kept:#x} bytes into it; its last {lost:#x} bytes are lost",
                        seg.paddr
                    )
                }
            });
            seg.filesz = kept;
        }
        if seg.filesz > 0 {
            loads.push(seg);
        }
    }
    short.finish(&mut warnings, |n| {
        format!("{n} more segments are shorter in the file than in memory")
    });
    cut.finish(&mut warnings, |n| {
        format!("{n} more segments are cut by the end of the file")
    });
    if cut_count > 1 {
        warnings.push(format!(
            "the file is truncated at {file_len:#x} bytes: {cut_count} segments lose {cut_bytes:#x} bytes in all"
        ));
    }

    // Overlaps, resolved as memory resolves them (the segment that starts first wins).
    let ranges = loads
        .iter()
        .map(|l| MemoryRange {
            start: Pa(l.paddr),
            len: l.filesz,
            offset: l.offset,
        })
        .collect();
    let (_, overlaps) = crate::memory::normalize(ranges, file_len);
    let mut overlap = Capped::default();
    for o in &overlaps {
        overlap.push(&mut warnings, || {
            format!(
                "segments overlap at {:#x}: {:#x} bytes of a later segment are ignored, an earlier one holds them",
                o.start.0, o.len
            )
        });
    }
    overlap.finish(&mut warnings, |n| {
        format!("{n} more overlaps between segments")
    });

    let note_bytes = note_segments
        .iter()
        .fold(0u64, |sum, s| sum.saturating_add(s.filesz));
    if note_bytes > MAX_NOTE_BYTES {
        return Err(ElfError::NotesTooLarge(note_bytes).into());
    }
    let mut note_data = Vec::with_capacity(note_segments.len());
    for seg in &note_segments {
        note_data.push((
            bytes_at(src, seg.offset, seg.filesz, "note segment")?,
            seg.offset,
        ));
    }
    let mut notes = Notes::default();
    for (data, base) in &note_data {
        read_notes(data, *base, &mut notes)?;
    }

    let count = notes.prstatus.len().max(notes.qemu.len());
    if !notes.qemu.is_empty() && notes.qemu.len() != notes.prstatus.len() {
        warnings.push(format!(
            "{} NT_PRSTATUS notes but {} QEMU CPU-state notes; paired by order",
            notes.prstatus.len(),
            notes.qemu.len()
        ));
    }
    let mut unknown_layout = Capped::default();
    let mut vcpus = Vec::with_capacity(count);
    for i in 0..count {
        let pr = notes.prstatus.get(i).copied();
        let from_pr = pr.and_then(registers_from_prstatus);
        if let Some(desc) = pr
            && from_pr.is_none()
        {
            unknown_layout.push(&mut warnings, || {
                format!(
                    "vCPU {i}: NT_PRSTATUS of {} bytes has an unknown layout; ignored",
                    desc.len()
                )
            });
        }
        let pid = from_pr.map(|(_, pid)| pid);
        let vcpu = if let Some(desc) = notes.qemu.get(i) {
            let (state, with_kgs, version, size) = qemu_state(desc, i)?;
            ElfVcpu {
                registers: registers_from_qemu(&state, with_kgs, h.machine),
                source: RegisterSource::QemuCpuState { version, size },
                pid,
            }
        } else {
            ElfVcpu {
                registers: from_pr.map(|(r, _)| r).unwrap_or_default(),
                source: RegisterSource::PrStatus,
                pid,
            }
        };
        vcpus.push(vcpu);
    }
    unknown_layout.finish(&mut warnings, |n| {
        format!("{n} more vCPUs have an NT_PRSTATUS of an unknown layout")
    });
    if loads.is_empty() {
        warnings.push("no PT_LOAD segment holds memory".to_owned());
    }
    Ok(ElfCore {
        class: h.class,
        machine: h.machine,
        loads,
        vcpus,
        other_notes: notes.other,
        warnings,
    })
}
