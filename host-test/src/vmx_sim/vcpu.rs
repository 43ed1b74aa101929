//! A simulated vCPU: VMCS-like state, an EPT TLB, and the execution of a script of guest
//! instructions through the guest's page tables and the EPT of the current EPTP.
//!
//! # What one instruction does
//! At each instruction boundary, in the SDM's priority order (SDM Vol. 3A §6.9, Table 6-2,
//! and SDM Vol. 3C §26.7): an event injected by VM entry is delivered first; then a
//! pending MTF VM exit (MTF exits take priority over interrupts, SDM Vol. 3C §26.7.2); then
//! an interrupt-window exit, when that control is set and the guest can take an interrupt
//! (RFLAGS.IF = 1, no blocking by STI or MOV SS, SDM Vol. 3C §26.7.5); then a pending
//! external interrupt: a VM exit when external-interrupt exiting is set (whatever RFLAGS.IF,
//! SDM Vol. 3C §26.2; the interrupt is not acknowledged, it stays pending as with
//! "acknowledge interrupt on exit" = 0), or delivery to the guest's handler when IF = 1.
//! A delivered event sets a pending MTF exit when MTF is on (SDM Vol. 3C §26.5.2).
//!
//! Then the instruction at RIP is fetched (execute access through the guest's tables and
//! the EPT); a first byte 0xCC is INT3. Its data access is translated (read or write),
//! and only when every translation succeeded does it take effect. A completed instruction
//! sets a pending MTF exit when MTF is on. A faulting instruction (EPT violation, EPT
//! misconfiguration, #PF or #BP intercepted by the exception bitmap) exits with RIP at the
//! instruction; an intercepted instruction (MOV to CR3, WRMSR, CPUID, I/O) exits without
//! executing, and the hypervisor completes it (see [`Machine::complete_instruction`]).
//!
//! After the exit handler returns, the vCPU continues at its RIP: the same step if RIP
//! still points at it, the next one if the hypervisor advanced RIP past it.
//!
//! # Simplifications (stated, so that nobody relies on them)
//! - Guest accessed and dirty flags are not set by the simulated walk (the tables the tests
//!   build already have them where a guest's would).
//! - A guest #PF or #BP that is not intercepted is recorded as delivered and the
//!   instruction is skipped (its handler is assumed to fix things up and return after it).
//! - A delivered interrupt's handler is one record: it runs no instructions.

use core::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use introvisor::arch::amd64::Registers;

use super::Machine;
use super::ept::{EptFault, Eptp, R, Rights, W, WalkStart, X};
use super::exit::{self, RawExit, reason};
use super::tlb::EptTlb;

/// A general-purpose register an instruction names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gpr {
    /// RAX (register number 0).
    Rax,
    /// RCX (1).
    Rcx,
    /// RDX (2).
    Rdx,
}

/// One guest instruction of a script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insn {
    /// Fetch only.
    Nop,
    /// `mov reg, imm64`.
    Mov(Gpr, u64),
    /// `mov rax, [va]`: reads `size` bytes (1..=8), zero-extended into RAX.
    Load {
        /// The address.
        va: u64,
        /// 1..=8.
        size: u8,
    },
    /// `mov [va], rax`: writes the low `size` bytes of RAX.
    Store {
        /// The address.
        va: u64,
        /// 1..=8.
        size: u8,
    },
    /// `mov cr3, rax`.
    MovCr3,
    /// `wrmsr`: ECX the index, EDX:EAX the value.
    Wrmsr,
    /// `cpuid`: EAX the leaf, ECX the subleaf.
    Cpuid,
    /// `out imm8, al/ax/eax`.
    Out {
        /// The port.
        port: u16,
        /// 1, 2 or 4.
        size: u8,
    },
    /// `in al/ax/eax, imm8`.
    In {
        /// The port.
        port: u16,
        /// 1, 2 or 4.
        size: u8,
    },
    /// `sti`: IF = 1, with blocking by STI for one instruction.
    Sti,
    /// `cli`.
    Cli,
}

/// One instruction at a guest-virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// The instruction's address (RIP when it executes).
    pub rip: u64,
    /// Its length in bytes (fetched with execute access).
    pub len: u8,
    /// What it does.
    pub insn: Insn,
    /// An external interrupt vector asserted when the vCPU first reaches this step.
    pub irq: Option<u8>,
}

impl Step {
    /// A step without an interrupt.
    pub const fn new(rip: u64, len: u8, insn: Insn) -> Self {
        Self {
            rip,
            len,
            insn,
            irq: None,
        }
    }

    /// The same step, with `vector` asserted when the vCPU reaches it.
    pub const fn with_irq(mut self, vector: u8) -> Self {
        self.irq = Some(vector);
        self
    }
}

/// VM-execution controls the simulator honours.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Controls {
    /// Monitor trap flag (SDM Vol. 3C §26.5.2).
    pub mtf: bool,
    /// Exception bitmap: bit n intercepts vector n (SDM Vol. 3C §25.6.3).
    pub exception_bitmap: u32,
    /// CR3-load exiting (SDM Vol. 3C §25.6.2).
    pub cr3_load_exiting: bool,
    /// WRMSR exiting for these MSR indices (the MSR bitmap, SDM Vol. 3C §25.6.9).
    pub msr_write_exiting: Vec<u32>,
    /// I/O exiting for these ports (the I/O bitmaps, SDM Vol. 3C §25.6.4).
    pub io_exiting: Vec<u16>,
    /// Whether CPUID exits reach the backend. (CPUID exits unconditionally in VMX; a
    /// hypervisor that does not forward them emulates them itself, which the simulator
    /// models by executing CPUID in place.)
    pub cpuid_exiting: bool,
    /// External-interrupt exiting (SDM Vol. 3C §25.6.1).
    pub external_interrupt_exiting: bool,
    /// Interrupt-window exiting (SDM Vol. 3C §25.6.2).
    pub interrupt_window_exiting: bool,
}

/// An event VM entry injects (SDM Vol. 3C §27.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Injection {
    /// The vector.
    pub vector: u8,
    /// The interruption type (bits 10:8 of the VM-entry interruption-information field).
    pub typ: u8,
    /// The error code, if one is delivered.
    pub error_code: Option<u32>,
    /// The instruction length, for software interrupts and exceptions.
    pub instruction_length: u8,
}

/// The VMCS of one vCPU, as far as the simulator has one.
#[derive(Clone, Debug, Default)]
pub struct Vmcs {
    /// Guest state.
    pub regs: Registers,
    /// The EPTP in use.
    pub eptp: u64,
    /// The VMFUNC EPTP list (EPTP switching, SDM Vol. 3C §26.5.6.3); empty when unused.
    pub eptp_list: Vec<u64>,
    /// Execution controls.
    pub controls: Controls,
    /// The event the next VM entry injects.
    pub injection: Option<Injection>,
    /// Guest interruptibility state: bit 0 blocking by STI, bit 1 blocking by MOV SS
    /// (SDM Vol. 3C §25.4.2, Table 25-3).
    pub interruptibility: u32,
}

/// What the guest saw and did, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// An instruction completed.
    Retired {
        /// Its address.
        rip: u64,
        /// The EPTP it ran under.
        eptp: u64,
    },
    /// A load read `value` from `va` (host-physical `hpa`).
    Loaded {
        /// The address.
        va: u64,
        /// The value read.
        value: u64,
        /// The EPTP in use.
        eptp: u64,
    },
    /// A store wrote `value` to `va`.
    Stored {
        /// The address.
        va: u64,
        /// The value written.
        value: u64,
        /// The host-physical address written.
        hpa: u64,
        /// The EPTP in use.
        eptp: u64,
    },
    /// The guest's handler for `vector` ran, in the view of `eptp`.
    Delivered {
        /// The vector.
        vector: u8,
        /// Whether it came from VM-entry injection rather than the APIC.
        injected: bool,
        /// The EPTP in use when it ran.
        eptp: u64,
        /// RFLAGS.IF when it was delivered.
        if_flag: bool,
    },
    /// CR3 took a value written by the guest (executed in place, or completed by the
    /// hypervisor).
    Cr3Loaded(u64),
    /// An MSR was written.
    MsrWritten {
        /// The index.
        index: u32,
        /// The value.
        value: u64,
    },
}

/// Why [`Machine::run`] stopped without finishing its script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunError {
    /// More exits than the run allows: the backend and the vCPU are in a loop.
    ExitStorm {
        /// The step the vCPU was at.
        step: usize,
        /// Its last exit.
        last: RawExit,
    },
    /// The EPTP is one VM entry refuses.
    BadEptp(u64),
    /// A walk reached memory outside the host buffer.
    OutsideHostMemory(u64),
    /// RIP points at no step of the script.
    LostRip(u64),
    /// The exit handler asked to stop.
    Stopped,
    /// With [`Machine::strict_page_size`] on: the vCPU used a cached translation whose
    /// page size is not the current leaf's for that address. After a page-size change
    /// without invalidation the TLBs may hold translations of both sizes and which one is
    /// used is unpredictable (SDM Vol. 3A §4.10.2.3, which §29.4 applies to EPT; on some
    /// processors a machine check, per their errata); the simulator stops instead.
    PageSizeConflict {
        /// The guest-physical address.
        gpa: u64,
    },
    /// The backend's exit entry point failed.
    Backend(introvisor_ept::EptError),
}

/// A fault during one instruction.
enum Fault {
    /// A VM exit the hypervisor handles; the instruction did not complete.
    Exit(RawExit),
    /// A guest #PF not intercepted: delivered to the guest.
    GuestPf {
        /// The linear address.
        va: u64,
        /// The error code.
        code: u32,
    },
    /// Stop the run.
    Fatal(RunError),
}

/// The mutable state of a vCPU, behind its lock. The vCPU thread holds the lock while it
/// executes one instruction; everyone else (the platform's controls, shootdowns, pausing)
/// takes it, so they act at an instruction boundary, as an IPI does.
#[derive(Debug, Default)]
pub struct CpuState {
    /// The VMCS.
    pub vmcs: Vmcs,
    /// The EPT TLB.
    pub tlb: EptTlb,
    /// What the guest did.
    pub log: Vec<Observed>,
    /// An MTF VM exit is pending at the next boundary.
    pub mtf_pending: bool,
    /// The step the last exit happened at (for emulation and completion).
    pub current: Option<Step>,
    /// MSR values written by the guest.
    pub msrs: Vec<(u32, u64)>,
}

/// One simulated vCPU.
#[derive(Debug)]
pub struct Vcpu {
    /// Its index.
    pub index: usize,
    state: Mutex<CpuState>,
    /// The APIC's pending external interrupts (IRR), one bit per vector.
    irr: [AtomicU64; 4],
    /// Exits taken.
    pub exits: AtomicU64,
}

impl Vcpu {
    pub(super) fn new(index: usize, vmcs: Vmcs) -> Self {
        Self {
            index,
            state: Mutex::new(CpuState {
                vmcs,
                ..CpuState::default()
            }),
            irr: Default::default(),
            exits: AtomicU64::new(0),
        }
    }

    /// Locks the vCPU's state (waits for the instruction in flight to end).
    pub fn lock(&self) -> MutexGuard<'_, CpuState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asserts external interrupt `vector` (from any thread, at any time).
    pub fn assert_interrupt(&self, vector: u8) {
        let v = usize::from(vector);
        self.irr[v / 64].fetch_or(1 << (v % 64), Ordering::SeqCst);
    }

    /// The highest pending vector.
    pub fn pending_interrupt(&self) -> Option<u8> {
        (0..4).rev().find_map(|i| {
            let w = self.irr[i].load(Ordering::SeqCst);
            (w != 0).then(|| (i * 64 + 63 - w.leading_zeros() as usize) as u8)
        })
    }

    fn acknowledge(&self, vector: u8) {
        let v = usize::from(vector);
        self.irr[v / 64].fetch_and(!(1 << (v % 64)), Ordering::SeqCst);
    }
}

const RFLAGS_IF: u64 = 1 << 9;
const CR0_WP: u64 = 1 << 16;
const CR4_LA57: u64 = 1 << 12;
const CR4_SMEP: u64 = 1 << 20;
const EFER_NXE: u64 = 1 << 11;
const PTE_P: u64 = 1;
const PTE_RW: u64 = 1 << 1;
const PTE_US: u64 = 1 << 2;
const PTE_PS: u64 = 1 << 7;
const PTE_XD: u64 = 1 << 63;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

/// A memory access kind, as bits R/W/X.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    Fetch,
}

impl Access {
    fn ept(self) -> Rights {
        match self {
            Self::Read => R,
            Self::Write => W,
            Self::Fetch => X,
        }
    }
}

/// The translation context of one instruction.
struct Mmu<'a> {
    machine: &'a Machine,
    st: &'a mut CpuState,
    eptp: Eptp,
    /// Ignore EPT rights (emulation): the walk must still translate.
    ignore_rights: bool,
    step: Step,
}

impl Mmu<'_> {
    fn violation(&mut self, gpa: u64, gla: u64, need: Rights, rights: Rights, fin: bool) -> Fault {
        self.st.tlb.invalidate_gpa(self.eptp.root, gpa);
        Fault::Exit(RawExit {
            reason: reason::EPT_VIOLATION,
            qualification: exit::ept_violation_qualification(need, rights, true, fin),
            guest_linear: gla,
            guest_physical: gpa,
            instruction_length: u32::from(self.step.len),
            ..RawExit::default()
        })
    }

    /// Guest-physical to host-physical through the TLB and the EPT.
    fn gpa(&mut self, gpa: u64, need: Rights, gla: u64, fin: bool) -> Result<u64, Fault> {
        let need_check = if self.ignore_rights { 0 } else { need };
        if let Some(c) = self.st.tlb.lookup(self.eptp.root, gpa) {
            if self.machine.strict_page_size.load(Ordering::Relaxed) {
                let path = self.machine.walker.path(&self.machine.mem, &self.eptp, gpa);
                let leaf_shift = path.last().map(|&(level, _, _)| 12 + 9 * (level - 1));
                if path.last().is_some_and(|&(_, _, e)| e & 7 != 0) && leaf_shift != Some(c.shift) {
                    return Err(Fault::Fatal(RunError::PageSizeConflict { gpa }));
                }
            }
            if need_check & !c.rights == 0 {
                return Ok(c.hpa_page | (gpa & 0xfff));
            }
            return Err(self.violation(gpa, gla, need, c.rights, fin));
        }
        let root = self.eptp.root;
        let start = self
            .st
            .tlb
            .lookup_table(root, gpa, self.eptp.levels)
            .unwrap_or(WalkStart {
                table: root,
                level: self.eptp.levels,
                rights: R | W | X,
            });
        let tlb = &mut self.st.tlb;
        let walked = self.machine.walker.walk_from(
            &self.machine.mem,
            &self.eptp,
            gpa,
            need_check,
            start,
            &mut |t| tlb.fill_table(root, gpa, t),
        );
        match walked {
            Ok(leaf) => {
                self.st
                    .tlb
                    .fill(root, gpa, leaf.size_shift, leaf.hpa_page, leaf.rights);
                Ok(leaf.hpa_page | (gpa & 0xfff))
            }
            Err(EptFault::Violation { rights }) => Err(self.violation(gpa, gla, need, rights, fin)),
            Err(EptFault::Misconfig { .. }) => Err(Fault::Exit(RawExit {
                reason: reason::EPT_MISCONFIG,
                guest_physical: gpa,
                ..RawExit::default()
            })),
            Err(EptFault::OutsideHostMemory { hpa }) => {
                Err(Fault::Fatal(RunError::OutsideHostMemory(hpa)))
            }
        }
    }

    /// Guest-virtual to host-physical: the guest's 4- or 5-level tables (SDM Vol. 3A
    /// §4.5), each entry read through the EPT, then the final access.
    fn gva(&mut self, va: u64, access: Access) -> Result<u64, Fault> {
        let regs = &self.st.vmcs.regs;
        let levels: u32 = if regs.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
        let user = regs.ss.dpl() == 3;
        let wp = regs.cr0 & CR0_WP != 0;
        let nxe = regs.efer & EFER_NXE != 0;
        let smep = regs.cr4 & CR4_SMEP != 0;
        let maxphy = self.machine.walker.maxphyaddr;
        let reserved_high = ((1u64 << 52) - 1) & !((1u64 << maxphy) - 1);
        let fetch_bit = if access == Access::Fetch && (nxe || smep) {
            1 << 4
        } else {
            0
        };
        let code_base =
            (if access == Access::Write { 2 } else { 0 }) | (if user { 4 } else { 0 }) | fetch_bit;
        // Canonical check: a non-canonical address is #GP, not modelled: report as #PF-less
        // fatal error would hide bugs, so treat it as a not-present #PF.
        let bits = 12 + 9 * levels;
        let sign = ((va as i64) << (64 - bits)) >> (64 - bits);
        if sign as u64 != va {
            return Err(Fault::GuestPf {
                va,
                code: code_base,
            });
        }
        let mut table = regs.cr3 & PTE_ADDR;
        let (mut rw, mut us, mut xd) = (true, true, false);
        let mut level = levels;
        let leaf_gpa = loop {
            let shift = 12 + 9 * (level - 1);
            let entry_gpa = table + ((va >> shift) & 0x1ff) * 8;
            let hpa = self.gpa(entry_gpa, R, va, false)?;
            let e = self
                .machine
                .mem
                .load_u64(hpa)
                .ok_or(Fault::Fatal(RunError::OutsideHostMemory(hpa)))?;
            if e & PTE_P == 0 {
                return Err(Fault::GuestPf {
                    va,
                    code: code_base,
                });
            }
            let large = e & PTE_PS != 0 && (level == 2 || level == 3);
            let reserved = e & reserved_high != 0
                || (e & PTE_XD != 0 && !nxe)
                || (e & PTE_PS != 0 && level >= 4)
                || (large && level == 2 && e & 0x001f_e000 != 0)
                || (large && level == 3 && e & 0x3fff_e000 != 0);
            if reserved {
                return Err(Fault::GuestPf {
                    va,
                    code: code_base | 1 | 8,
                });
            }
            rw &= e & PTE_RW != 0;
            us &= e & PTE_US != 0;
            xd |= e & PTE_XD != 0;
            if level == 1 || large {
                let mask = (1u64 << shift) - 1;
                let base = if large {
                    e & PTE_ADDR & !mask & !(1 << 12)
                } else {
                    e & PTE_ADDR
                };
                break base | (va & mask);
            }
            table = e & PTE_ADDR;
            level -= 1;
        };
        let denied = match access {
            Access::Read => user && !us,
            Access::Write => (user && !us) || (!rw && (user || wp)),
            Access::Fetch => (user && !us) || (nxe && xd) || (!user && smep && us),
        };
        if denied {
            return Err(Fault::GuestPf {
                va,
                code: code_base | 1,
            });
        }
        self.gpa(leaf_gpa, access.ept(), va, true)
    }

    /// Host-physical addresses of `len` bytes at `va`, split at the 4 KiB boundary.
    fn range(&mut self, va: u64, len: u64, access: Access) -> Result<[(u64, u64); 2], Fault> {
        let first = len.min(4096 - (va & 0xfff));
        let a = self.gva(va, access)?;
        let b = if first < len {
            self.gva(va.wrapping_add(first), access)?
        } else {
            0
        };
        Ok([(a, first), (b, len - first)])
    }
}

/// The outcome of one instruction.
enum Done {
    /// It retired; RIP moves to the next one.
    Retired,
    /// The guest's exception handler took it (not intercepted); the step is skipped.
    GuestException,
}

fn gpr(regs: &mut Registers, r: Gpr) -> &mut u64 {
    match r {
        Gpr::Rax => &mut regs.rax,
        Gpr::Rcx => &mut regs.rcx,
        Gpr::Rdx => &mut regs.rdx,
    }
}

fn io_exit(step: &Step, port: u16, size: u8, input: bool) -> RawExit {
    RawExit {
        reason: reason::IO_INSTRUCTION,
        qualification: exit::io_qualification(port, size, input, false, false) | (1 << 6),
        instruction_length: u32::from(step.len),
        ..RawExit::default()
    }
}

impl Machine {
    fn mmu<'a>(
        &'a self,
        st: &'a mut CpuState,
        step: Step,
        ignore_rights: bool,
    ) -> Result<Mmu<'a>, Fault> {
        let raw = st.vmcs.eptp;
        let eptp = Eptp::decode(raw, self.walker.caps, self.walker.maxphyaddr)
            .ok_or(Fault::Fatal(RunError::BadEptp(raw)))?;
        Ok(Mmu {
            machine: self,
            st,
            eptp,
            ignore_rights,
            step,
        })
    }

    /// Executes one instruction; `Err` with the exit or fault when it does not complete.
    fn execute(&self, st: &mut CpuState, step: Step, ignore_rights: bool) -> Result<Done, Fault> {
        let eptp_raw = st.vmcs.eptp;
        let mut mmu = self.mmu(st, step, ignore_rights)?;
        // Fetch.
        let code = mmu.range(step.rip, u64::from(step.len.max(1)), Access::Fetch);
        let code = match code {
            Ok(c) => c,
            Err(Fault::GuestPf { va, code }) => return self.guest_pf(mmu.st, va, code),
            Err(f) => return Err(f),
        };
        let first = self.mem.load_u8(code[0].0).unwrap_or(0);
        if first == 0xcc {
            let st = mmu.st;
            if st.vmcs.controls.exception_bitmap & (1 << 3) != 0 {
                return Err(Fault::Exit(RawExit {
                    reason: reason::EXCEPTION_OR_NMI,
                    interruption_info: exit::exception_info(
                        3,
                        exit::intr_info::SOFTWARE_EXCEPTION,
                        false,
                    ),
                    instruction_length: 1,
                    ..RawExit::default()
                }));
            }
            let if_flag = st.vmcs.regs.rflags & RFLAGS_IF != 0;
            st.log.push(Observed::Delivered {
                vector: 3,
                injected: false,
                eptp: eptp_raw,
                if_flag,
            });
            return Ok(Done::GuestException);
        }
        match step.insn {
            Insn::Nop => {}
            Insn::Mov(r, v) => *gpr(&mut mmu.st.vmcs.regs, r) = v,
            Insn::Load { va, size } => {
                let size = u64::from(size.clamp(1, 8));
                let parts = match mmu.range(va, size, Access::Read) {
                    Ok(p) => p,
                    Err(Fault::GuestPf { va, code }) => return self.guest_pf(mmu.st, va, code),
                    Err(f) => return Err(f),
                };
                let mut bytes = [0u8; 8];
                let (a, b) = bytes.split_at_mut(parts[0].1 as usize);
                self.mem.read(parts[0].0, a);
                self.mem.read(parts[1].0, &mut b[..parts[1].1 as usize]);
                let value = u64::from_le_bytes(bytes);
                mmu.st.vmcs.regs.rax = value;
                mmu.st.log.push(Observed::Loaded {
                    va,
                    value,
                    eptp: eptp_raw,
                });
            }
            Insn::Store { va, size } => {
                let size = u64::from(size.clamp(1, 8));
                let parts = match mmu.range(va, size, Access::Write) {
                    Ok(p) => p,
                    Err(Fault::GuestPf { va, code }) => return self.guest_pf(mmu.st, va, code),
                    Err(f) => return Err(f),
                };
                let value = mmu.st.vmcs.regs.rax & (u64::MAX >> (64 - 8 * size));
                let bytes = value.to_le_bytes();
                let (a, b) = bytes.split_at(parts[0].1 as usize);
                self.mem.write(parts[0].0, a);
                self.mem.write(parts[1].0, &b[..parts[1].1 as usize]);
                mmu.st.log.push(Observed::Stored {
                    va,
                    value,
                    hpa: parts[0].0,
                    eptp: eptp_raw,
                });
            }
            Insn::MovCr3 => {
                let st = mmu.st;
                if st.vmcs.controls.cr3_load_exiting && !ignore_rights {
                    return Err(Fault::Exit(RawExit {
                        reason: reason::CR_ACCESS,
                        qualification: exit::mov_to_cr_qualification(3, 0),
                        instruction_length: u32::from(step.len),
                        ..RawExit::default()
                    }));
                }
                st.vmcs.regs.cr3 = st.vmcs.regs.rax;
                st.log.push(Observed::Cr3Loaded(st.vmcs.regs.rax));
            }
            Insn::Wrmsr => {
                let st = mmu.st;
                let index = st.vmcs.regs.rcx as u32;
                if st.vmcs.controls.msr_write_exiting.contains(&index) && !ignore_rights {
                    return Err(Fault::Exit(RawExit {
                        reason: reason::WRMSR,
                        instruction_length: u32::from(step.len),
                        ..RawExit::default()
                    }));
                }
                let value = (st.vmcs.regs.rdx << 32) | (st.vmcs.regs.rax & 0xffff_ffff);
                st.msrs.push((index, value));
                st.log.push(Observed::MsrWritten { index, value });
            }
            Insn::Cpuid => {
                let st = mmu.st;
                if st.vmcs.controls.cpuid_exiting && !ignore_rights {
                    return Err(Fault::Exit(RawExit {
                        reason: reason::CPUID,
                        instruction_length: u32::from(step.len),
                        ..RawExit::default()
                    }));
                }
                simulated_cpuid(&mut st.vmcs.regs);
            }
            Insn::Out { port, size } | Insn::In { port, size } => {
                let input = matches!(step.insn, Insn::In { .. });
                if mmu.st.vmcs.controls.io_exiting.contains(&port) && !ignore_rights {
                    return Err(Fault::Exit(io_exit(&step, port, size, input)));
                }
                if input {
                    mmu.st.vmcs.regs.rax = u64::MAX >> (64 - 8 * u64::from(size.clamp(1, 8)));
                }
            }
            Insn::Sti => {
                let st = mmu.st;
                if st.vmcs.regs.rflags & RFLAGS_IF == 0 {
                    st.vmcs.interruptibility |= 1;
                }
                st.vmcs.regs.rflags |= RFLAGS_IF;
            }
            Insn::Cli => mmu.st.vmcs.regs.rflags &= !RFLAGS_IF,
        }
        Ok(Done::Retired)
    }

    fn guest_pf(&self, st: &mut CpuState, va: u64, code: u32) -> Result<Done, Fault> {
        if st.vmcs.controls.exception_bitmap & (1 << 14) != 0 {
            return Err(Fault::Exit(RawExit {
                reason: reason::EXCEPTION_OR_NMI,
                qualification: va,
                interruption_info: exit::exception_info(
                    14,
                    exit::intr_info::HARDWARE_EXCEPTION,
                    true,
                ),
                interruption_error: code,
                ..RawExit::default()
            }));
        }
        st.vmcs.regs.cr2 = va;
        let if_flag = st.vmcs.regs.rflags & RFLAGS_IF != 0;
        st.log.push(Observed::Delivered {
            vector: 14,
            injected: false,
            eptp: st.vmcs.eptp,
            if_flag,
        });
        Ok(Done::GuestException)
    }

    /// The boundary checks before the next instruction; `Some(exit)` for a VM exit.
    fn boundary(&self, vcpu: &Vcpu, st: &mut CpuState) -> Option<RawExit> {
        if let Some(inj) = st.vmcs.injection.take() {
            let if_flag = st.vmcs.regs.rflags & RFLAGS_IF != 0;
            st.log.push(Observed::Delivered {
                vector: inj.vector,
                injected: true,
                eptp: st.vmcs.eptp,
                if_flag,
            });
            // A software exception or interrupt returns after its instruction.
            if inj.typ >= 4 {
                st.vmcs.regs.rip = st
                    .vmcs
                    .regs
                    .rip
                    .wrapping_add(u64::from(inj.instruction_length));
            }
            if st.vmcs.controls.mtf {
                st.mtf_pending = true;
            }
        }
        if st.mtf_pending {
            st.mtf_pending = false;
            return Some(RawExit {
                reason: reason::MONITOR_TRAP_FLAG,
                ..RawExit::default()
            });
        }
        let can_take = st.vmcs.regs.rflags & RFLAGS_IF != 0 && st.vmcs.interruptibility & 3 == 0;
        if st.vmcs.controls.interrupt_window_exiting && can_take {
            return Some(RawExit {
                reason: reason::INTERRUPT_WINDOW,
                ..RawExit::default()
            });
        }
        if let Some(vector) = vcpu.pending_interrupt() {
            if st.vmcs.controls.external_interrupt_exiting {
                return Some(RawExit {
                    reason: reason::EXTERNAL_INTERRUPT,
                    ..RawExit::default()
                });
            }
            if can_take {
                vcpu.acknowledge(vector);
                st.log.push(Observed::Delivered {
                    vector,
                    injected: false,
                    eptp: st.vmcs.eptp,
                    if_flag: true,
                });
                if st.vmcs.controls.mtf {
                    st.mtf_pending = true;
                    return self.boundary(vcpu, st);
                }
            }
        }
        None
    }

    /// Runs `script` on vCPU `index` on the calling thread until the last step retires,
    /// calling `on_exit` for each VM exit with the vCPU's lock released (the exit handler
    /// is the hypervisor: it calls the backend, which calls the platform). At most
    /// `max_exits` exits are taken.
    ///
    /// The calling thread is vCPU `index` for the platform's "current CPU" while it runs.
    ///
    /// # Errors
    /// [`RunError`].
    pub fn run(
        &self,
        index: usize,
        script: &[Step],
        max_exits: u64,
        on_exit: &mut dyn FnMut(&RawExit) -> Result<(), RunError>,
    ) -> Result<(), RunError> {
        let vcpu = &self.vcpus[index];
        let _current = self.enter_vcpu_thread(index);
        let mut cursor = 0usize;
        let mut irq_done = usize::MAX;
        let mut exits = 0u64;
        {
            let mut st = vcpu.lock();
            if let Some(first) = script.first() {
                st.vmcs.regs.rip = first.rip;
            }
        }
        loop {
            self.wait_while_paused();
            let mut st = vcpu.lock();
            if self.is_paused() {
                continue;
            }
            // Where RIP is in the script: each step ends with an implicit jump to the next.
            let rip = st.vmcs.regs.rip;
            if let Some(s) = script.get(cursor)
                && s.rip != rip
            {
                if s.rip.wrapping_add(u64::from(s.len)) == rip {
                    cursor += 1;
                } else if let Some(i) = script.iter().position(|s| s.rip == rip) {
                    cursor = i;
                } else {
                    return Err(RunError::LostRip(rip));
                }
                if let Some(next) = script.get(cursor) {
                    st.vmcs.regs.rip = next.rip;
                }
            }
            if let Some(step) = script.get(cursor)
                && irq_done != cursor
            {
                irq_done = cursor;
                if let Some(v) = step.irq {
                    vcpu.assert_interrupt(v);
                }
            }
            let exit = if let Some(exit) = self.boundary(vcpu, &mut st) {
                Some(exit)
            } else {
                let Some(&step) = script.get(cursor) else {
                    // The script is done once no boundary event is left.
                    return Ok(());
                };
                st.current = Some(step);
                let eptp = st.vmcs.eptp;
                match self.execute(&mut st, step, false) {
                    Ok(done) => {
                        st.vmcs.regs.rip = step.rip.wrapping_add(u64::from(step.len));
                        if !matches!(step.insn, Insn::Sti) {
                            st.vmcs.interruptibility &= !1;
                        }
                        if matches!(done, Done::Retired) {
                            st.log.push(Observed::Retired {
                                rip: step.rip,
                                eptp,
                            });
                        }
                        if st.vmcs.controls.mtf {
                            st.mtf_pending = true;
                        }
                        None
                    }
                    Err(Fault::Exit(e)) => Some(e),
                    Err(Fault::GuestPf { .. }) => None,
                    Err(Fault::Fatal(e)) => return Err(e),
                }
            };
            drop(st);
            if let Some(e) = exit {
                exits += 1;
                vcpu.exits.fetch_add(1, Ordering::Relaxed);
                if exits > max_exits {
                    return Err(RunError::ExitStorm {
                        step: cursor,
                        last: e,
                    });
                }
                on_exit(&e)?;
            }
        }
    }

    /// Completes the instruction the vCPU exited on, as a hypervisor does after an
    /// intercepted MOV to CR3, WRMSR, CPUID or I/O: performs it (unless `deny`) and moves
    /// RIP past it. Call from the exit handler.
    pub fn complete_instruction(&self, index: usize, deny: bool) {
        let vcpu = &self.vcpus[index];
        let mut st = vcpu.lock();
        let Some(step) = st.current else { return };
        if st.vmcs.regs.rip != step.rip {
            return;
        }
        if !deny {
            // Executed with the intercepts bypassed (the hypervisor does it for the guest).
            let _ = self.execute(&mut st, step, true);
        }
        st.vmcs.regs.rip = step.rip.wrapping_add(u64::from(step.len));
    }

    /// Emulates the instruction the vCPU exited on, whatever the EPT rights (translations
    /// must still succeed); `false` if it could not (the vCPU then re-executes it).
    pub fn emulate_instruction(&self, index: usize) -> bool {
        let vcpu = &self.vcpus[index];
        let mut st = vcpu.lock();
        let Some(step) = st.current else { return false };
        if st.vmcs.regs.rip != step.rip {
            return false;
        }
        let eptp = st.vmcs.eptp;
        match self.execute(&mut st, step, true) {
            Ok(_) => {
                st.vmcs.regs.rip = step.rip.wrapping_add(u64::from(step.len));
                st.log.push(Observed::Retired {
                    rip: step.rip,
                    eptp,
                });
                if st.vmcs.controls.mtf {
                    st.mtf_pending = true;
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// What CPUID returns in the simulator: a fixed vendor leaf, the leaf echoed otherwise.
fn simulated_cpuid(regs: &mut Registers) {
    let leaf = regs.rax as u32;
    let sub = regs.rcx as u32;
    let (a, b, c, d) = match leaf {
        0 => (0xd, 0x756e_6547u32, 0x6c65_746eu32, 0x4965_6e69u32),
        _ => (leaf, sub, 0u32, 0u32),
    };
    regs.rax = a.into();
    regs.rbx = b.into();
    regs.rcx = c.into();
    regs.rdx = d.into();
}
