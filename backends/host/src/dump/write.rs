//! Writes LiME images ([`write_lime`]) and ELF core files in the layout QEMU's `dump-guest-memory` uses: for fixtures and
//! tests (a guest built with [`GuestBuilder`](crate::builder::GuestBuilder), saved the
//! way QEMU would save a real one), and for tools that cut a dump down.
//!
//! The file is ELF64, `ET_CORE`, `EM_X86_64` when vCPU 0 is in IA-32e mode (EFER.LMA) and
//! `EM_386` otherwise, as QEMU decides. It holds one `PT_NOTE` segment (a `CORE`/
//! `NT_PRSTATUS` note per vCPU, then a `QEMU` note per vCPU with a 440-byte
//! `QEMUCPUState`), then one `PT_LOAD` segment per memory run. As in QEMU, EFER and CR8
//! are not written: a reader derives EFER (see [`derive_efer`](super::elf::derive_efer)).

use std::io::{self, Write};

use introvisor::arch::amd64::{Registers, Segment};
use zerocopy::IntoBytes;
use zerocopy::byteorder::little_endian::{U16, U32, U64};

use super::elf::{
    EM_386, EM_X86_64, ET_CORE, Ehdr64, NT_PRSTATUS, Nhdr, PRSTATUS_X86_64_PID,
    PRSTATUS_X86_64_REGS, PRSTATUS_X86_64_SIZE, PT_LOAD, PT_NOTE, Phdr64, QEMU_CPU_STATE_SIZE,
    QEMU_CPU_STATE_VERSION, QemuCpuState, QemuSegment, UserRegs64, qemu_segment_flags,
};

/// One run of guest-physical memory to write.
#[derive(Clone, Copy, Debug)]
pub struct Run<'a> {
    /// Its guest-physical address.
    pub paddr: u64,
    /// Its bytes.
    pub bytes: &'a [u8],
}

/// A sum or product that does not fit: the error of a layout too large to write.
fn too_large() -> io::Error {
    io::Error::other("the core file's layout overflows 64 bits")
}

fn note(name: &[u8], kind: u32, desc: &[u8]) -> io::Result<Vec<u8>> {
    let namesz = u32::try_from(name.len())
        .ok()
        .and_then(|n| n.checked_add(1))
        .ok_or_else(too_large)?;
    let descsz = u32::try_from(desc.len()).map_err(|_| too_large())?;
    let mut out = Vec::new();
    let header = Nhdr {
        namesz: U32::new(namesz),
        descsz: U32::new(descsz),
        n_type: U32::new(kind),
    };
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name);
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(desc);
    out.resize(out.len().next_multiple_of(4), 0);
    Ok(out)
}

fn qemu_seg(s: &Segment) -> QemuSegment {
    QemuSegment {
        selector: U32::new(u32::from(s.selector)),
        limit: U32::new(s.limit),
        flags: U32::new(qemu_segment_flags(s)),
        pad: U32::new(0),
        base: U64::new(s.base),
    }
}

/// The `QEMU` note descriptor of a vCPU.
fn qemu_note(r: &Registers) -> Vec<u8> {
    let table = |base: u64, limit: u16| QemuSegment {
        limit: U32::new(u32::from(limit)),
        base: U64::new(base),
        ..QemuSegment::default()
    };
    let s = QemuCpuState {
        version: U32::new(QEMU_CPU_STATE_VERSION),
        size: U32::new(QEMU_CPU_STATE_SIZE as u32),
        rax: U64::new(r.rax),
        rbx: U64::new(r.rbx),
        rcx: U64::new(r.rcx),
        rdx: U64::new(r.rdx),
        rsi: U64::new(r.rsi),
        rdi: U64::new(r.rdi),
        rsp: U64::new(r.rsp),
        rbp: U64::new(r.rbp),
        r8: U64::new(r.r8),
        r9: U64::new(r.r9),
        r10: U64::new(r.r10),
        r11: U64::new(r.r11),
        r12: U64::new(r.r12),
        r13: U64::new(r.r13),
        r14: U64::new(r.r14),
        r15: U64::new(r.r15),
        rip: U64::new(r.rip),
        rflags: U64::new(r.rflags),
        cs: qemu_seg(&r.cs),
        ds: qemu_seg(&r.ds),
        es: qemu_seg(&r.es),
        fs: qemu_seg(&r.fs),
        gs: qemu_seg(&r.gs),
        ss: qemu_seg(&r.ss),
        ldt: qemu_seg(&r.ldtr),
        tr: qemu_seg(&r.tr),
        gdt: table(r.gdtr.base, r.gdtr.limit),
        idt: table(r.idtr.base, r.idtr.limit),
        cr: [r.cr0, 0, r.cr2, r.cr3, r.cr4].map(U64::new),
        kernel_gs_base: U64::new(r.kernel_gs_base),
    };
    s.as_bytes().to_vec()
}

/// The `NT_PRSTATUS` descriptor of a vCPU (x86-64 layout), `pid` in `pr_pid`.
fn prstatus_note(r: &Registers, pid: u32) -> Vec<u8> {
    let regs = UserRegs64 {
        r15: U64::new(r.r15),
        r14: U64::new(r.r14),
        r13: U64::new(r.r13),
        r12: U64::new(r.r12),
        rbp: U64::new(r.rbp),
        rbx: U64::new(r.rbx),
        r11: U64::new(r.r11),
        r10: U64::new(r.r10),
        r9: U64::new(r.r9),
        r8: U64::new(r.r8),
        rax: U64::new(r.rax),
        rcx: U64::new(r.rcx),
        rdx: U64::new(r.rdx),
        rsi: U64::new(r.rsi),
        rdi: U64::new(r.rdi),
        orig_rax: U64::new(0),
        rip: U64::new(r.rip),
        cs: U64::new(r.cs.selector.into()),
        eflags: U64::new(r.rflags),
        rsp: U64::new(r.rsp),
        ss: U64::new(r.ss.selector.into()),
        fs_base: U64::new(r.fs.base),
        gs_base: U64::new(r.gs.base),
        ds: U64::new(r.ds.selector.into()),
        es: U64::new(r.es.selector.into()),
        fs: U64::new(r.fs.selector.into()),
        gs: U64::new(r.gs.selector.into()),
    };
    let mut desc = vec![0u8; PRSTATUS_X86_64_SIZE];
    // Both fields lie inside the 336-byte descriptor (pr_pid at 32, pr_reg at 112, 216
    // bytes long): the `get_mut`s cannot fail.
    if let Some(at) = desc
        .get_mut(PRSTATUS_X86_64_PID..)
        .and_then(|d| d.get_mut(..4))
    {
        at.copy_from_slice(&pid.to_le_bytes());
    }
    let regs = regs.as_bytes();
    if let Some(at) = desc
        .get_mut(PRSTATUS_X86_64_REGS..)
        .and_then(|d| d.get_mut(..regs.len()))
    {
        at.copy_from_slice(regs);
    }
    desc
}

/// Writes an ELF64 core file of `memory` (one `PT_LOAD` per run, in order) and `vcpus`
/// (one pair of notes each) to `out`; returns the number of bytes written.
///
/// # Errors
/// The error of writing to `out`.
pub fn write_qemu_elf(
    out: &mut impl Write,
    memory: &[Run<'_>],
    vcpus: &[Registers],
) -> io::Result<u64> {
    let mut notes = Vec::new();
    for (r, pid) in vcpus.iter().zip(1u32..) {
        notes.extend(note(b"CORE", NT_PRSTATUS, &prstatus_note(r, pid))?);
    }
    for r in vcpus {
        notes.extend(note(b"QEMU", 0, &qemu_note(r))?);
    }
    let long_mode = vcpus.first().is_some_and(|r| r.efer & (1 << 10) != 0);
    let ehsize = size_of::<Ehdr64>() as u64;
    let phentsize = size_of::<Phdr64>() as u64;
    let phnum = (memory.len() as u64).checked_add(1).ok_or_else(too_large)?;
    let mut offset = phnum
        .checked_mul(phentsize)
        .and_then(|t| t.checked_add(ehsize))
        .ok_or_else(too_large)?;
    let header = Ehdr64 {
        ident: *b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0",
        e_type: U16::new(ET_CORE),
        machine: U16::new(if long_mode { EM_X86_64 } else { EM_386 }),
        version: U32::new(1),
        entry: U64::new(0),
        phoff: U64::new(ehsize),
        shoff: U64::new(0),
        flags: U32::new(0),
        ehsize: U16::new(ehsize as u16),
        phentsize: U16::new(phentsize as u16),
        phnum: U16::new(u16::try_from(phnum).map_err(|_| io::Error::other("too many runs"))?),
        shentsize: U16::new(0),
        shnum: U16::new(0),
        shstrndx: U16::new(0),
    };
    out.write_all(header.as_bytes())?;
    let note_header = Phdr64 {
        p_type: U32::new(PT_NOTE),
        flags: U32::new(0),
        offset: U64::new(offset),
        vaddr: U64::new(0),
        paddr: U64::new(0),
        filesz: U64::new(notes.len() as u64),
        memsz: U64::new(notes.len() as u64),
        align: U64::new(0),
    };
    out.write_all(note_header.as_bytes())?;
    offset = offset
        .checked_add(notes.len() as u64)
        .ok_or_else(too_large)?;
    for run in memory {
        let len = run.bytes.len() as u64;
        let load = Phdr64 {
            p_type: U32::new(PT_LOAD),
            flags: U32::new(0),
            offset: U64::new(offset),
            vaddr: U64::new(0),
            paddr: U64::new(run.paddr),
            filesz: U64::new(len),
            memsz: U64::new(len),
            align: U64::new(0),
        };
        out.write_all(load.as_bytes())?;
        offset = offset.checked_add(len).ok_or_else(too_large)?;
    }
    out.write_all(&notes)?;
    for run in memory {
        out.write_all(run.bytes)?;
    }
    Ok(offset)
}

/// Writes a LiME image: for each run, a version-1 range header (`s_addr` = `paddr`,
/// `e_addr` = its last byte's address) and the run's bytes (see [`lime`](super::lime)).
/// Runs must be non-empty; their order is kept.
///
/// # Errors
/// The writer's error; `InvalidInput` for an empty run or one whose end overflows.
pub fn write_lime(out: &mut dyn Write, runs: &[Run<'_>]) -> io::Result<()> {
    for run in runs {
        let last = (run.bytes.len() as u64)
            .checked_sub(1)
            .and_then(|n| run.paddr.checked_add(n))
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "empty or overflowing run")
            })?;
        out.write_all(&super::lime::LIME_MAGIC.to_le_bytes())?;
        out.write_all(&super::lime::LIME_VERSION.to_le_bytes())?;
        out.write_all(&run.paddr.to_le_bytes())?;
        out.write_all(&last.to_le_bytes())?;
        out.write_all(&[0; 8])?;
        out.write_all(run.bytes)?;
    }
    Ok(())
}
