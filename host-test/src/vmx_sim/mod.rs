//! A simulated VMX machine for the EPT backend: host-physical memory, vCPUs with VMCS-like
//! state and their own EPT TLB, and the platform calls a hypervisor offers.
//!
//! No machine here has VMX, so `introvisor-ept` is proven against this one. It is a second,
//! independent reading of the Intel SDM: [`ept`] decodes EPT entries from the SDM with its
//! own constants, [`vcpu`] walks the guest's page tables (each table's guest-physical
//! address translated through the EPT too, as hardware does) and the EPT of the current
//! EPTP, and [`tlb`] caches guest-physical translations the way a real CPU does, keeping
//! stale ones until INVEPT. A backend that forgets a shootdown therefore lets a vCPU use a
//! stale translation, and a test sees it.
//!
//! # Threads
//! Each vCPU runs its script on its own thread ([`Machine::run`]) and calls the exit
//! handler (the hypervisor, which calls the backend) on that thread. The platform's
//! "current CPU" is the calling thread's vCPU, or none for any other thread (the
//! introspection side). Every vCPU's state is behind its own lock, which the vCPU holds
//! for the length of one instruction and releases across an exit: the platform's controls
//! and shootdowns take it, so they act at an instruction boundary, as an IPI does, and a
//! shootdown returns only when no other vCPU can still use a stale translation.
//!
//! # Counters
//! [`Counters`] counts INVEPTs and shootdowns by kind, so that tests can assert the
//! invalidation each change needed.

pub mod ept;
pub mod exit;
pub mod guest;
pub mod memory;
pub mod platform;
pub mod tlb;
pub mod vcpu;

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

pub use self::ept::{EptWalker, Eptp};
pub use self::exit::RawExit;
pub use self::guest::{Sim, SimConfig};
pub use self::memory::{FRAME, HostMemory};
pub use self::platform::{SimPlatform, carry_out, exit_info, handle_exit};
pub use self::vcpu::{Controls, Gpr, Injection, Insn, Observed, RunError, Step, Vcpu, Vmcs};

/// Invalidations the machine performed, by kind.
#[derive(Debug, Default)]
pub struct Counters {
    /// Single-context INVEPTs on the calling CPU.
    pub invept_single: AtomicU64,
    /// All-context INVEPTs on the calling CPU.
    pub invept_all: AtomicU64,
    /// Shootdowns of one EPTP's context on every other CPU.
    pub shootdown_single: AtomicU64,
    /// Shootdowns of every context on every other CPU.
    pub shootdown_all: AtomicU64,
    /// Pauses of every vCPU.
    pub pauses: AtomicU64,
}

impl Counters {
    /// (single INVEPT, all INVEPT, single shootdown, all shootdown).
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.invept_single.load(Ordering::SeqCst),
            self.invept_all.load(Ordering::SeqCst),
            self.shootdown_single.load(Ordering::SeqCst),
            self.shootdown_all.load(Ordering::SeqCst),
        )
    }

    /// Every shootdown, of either kind.
    pub fn shootdowns(&self) -> u64 {
        self.shootdown_single.load(Ordering::SeqCst) + self.shootdown_all.load(Ordering::SeqCst)
    }
}

static NEXT_MACHINE: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// (machine id, vCPU index) of the vCPU this thread runs, if any.
    static CURRENT: Cell<Option<(u64, usize)>> = const { Cell::new(None) };
}

/// Clears the thread's current vCPU when a run ends.
pub struct CurrentGuard(Option<(u64, usize)>);

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// The simulated machine.
pub struct Machine {
    id: u64,
    /// Host-physical memory.
    pub mem: HostMemory,
    /// The CPU's EPT capabilities and physical-address width.
    pub walker: EptWalker,
    /// The vCPUs.
    pub vcpus: Box<[Vcpu]>,
    /// Invalidation counts.
    pub counters: Counters,
    /// Stop a vCPU that uses a cached translation of another page size than the current
    /// EPT leaf ([`RunError::PageSizeConflict`]). Off by default: while the backend is
    /// between a split and its shootdown a running vCPU legitimately holds one; tests
    /// turn it on when every access they make follows a completed change.
    pub strict_page_size: AtomicBool,
    paused: Mutex<bool>,
    paused_flag: AtomicBool,
    resumed: Condvar,
}

impl Machine {
    /// A machine with `frames` host frames at host-physical `base`, `vcpus` vCPUs that all
    /// start with `vmcs`, and the EPT capabilities `caps` (`IA32_VMX_EPT_VPID_CAP`).
    pub fn new(base: u64, frames: usize, vcpus: usize, caps: u64, vmcs: &Vmcs) -> Self {
        Self {
            id: NEXT_MACHINE.fetch_add(1, Ordering::Relaxed),
            mem: HostMemory::new(base, frames),
            walker: EptWalker {
                caps,
                maxphyaddr: 46,
            },
            vcpus: (0..vcpus).map(|i| Vcpu::new(i, vmcs.clone())).collect(),
            counters: Counters::default(),
            strict_page_size: AtomicBool::new(false),
            paused: Mutex::new(false),
            paused_flag: AtomicBool::new(false),
            resumed: Condvar::new(),
        }
    }

    /// The vCPU the calling thread runs, if it runs one of this machine's.
    pub fn current_vcpu(&self) -> Option<usize> {
        CURRENT
            .with(Cell::get)
            .and_then(|(m, i)| (m == self.id).then_some(i))
    }

    /// Makes the calling thread vCPU `index` until the guard drops.
    pub fn enter_vcpu_thread(&self, index: usize) -> CurrentGuard {
        let old = CURRENT.with(|c| c.replace(Some((self.id, index))));
        CurrentGuard(old)
    }

    /// INVEPT on the calling CPU: single-context for `eptp` (`Some`) or all-context.
    /// The introspection thread has no TLB: the call is counted and does nothing else.
    pub fn invept(&self, eptp: Option<u64>) {
        match eptp {
            Some(_) => self.counters.invept_single.fetch_add(1, Ordering::SeqCst),
            None => self.counters.invept_all.fetch_add(1, Ordering::SeqCst),
        };
        if let Some(i) = self.current_vcpu() {
            let mut st = self.vcpus[i].lock();
            match eptp {
                Some(e) => st.tlb.invalidate_context(e & 0x000f_ffff_ffff_f000),
                None => st.tlb.invalidate_all(),
            }
        }
    }

    /// A shootdown: every vCPU other than the calling one invalidates `eptp`'s context
    /// (`Some`) or every context, before this returns (each at its instruction boundary).
    pub fn shootdown(&self, eptp: Option<u64>) {
        match eptp {
            Some(_) => self
                .counters
                .shootdown_single
                .fetch_add(1, Ordering::SeqCst),
            None => self.counters.shootdown_all.fetch_add(1, Ordering::SeqCst),
        };
        let me = self.current_vcpu();
        for v in self.vcpus.iter().filter(|v| Some(v.index) != me) {
            let mut st = v.lock();
            match eptp {
                Some(e) => st.tlb.invalidate_context(e & 0x000f_ffff_ffff_f000),
                None => st.tlb.invalidate_all(),
            }
        }
    }

    /// Stops every vCPU at its next instruction boundary; returns when none is executing
    /// an instruction. A vCPU in an exit handler stays there until it returns, then waits.
    pub fn pause(&self) {
        self.counters.pauses.fetch_add(1, Ordering::SeqCst);
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.paused_flag.store(true, Ordering::SeqCst);
        let me = self.current_vcpu();
        for v in self.vcpus.iter().filter(|v| Some(v.index) != me) {
            drop(v.lock());
        }
    }

    /// Lets the vCPUs run again.
    pub fn resume(&self) {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.paused_flag.store(false, Ordering::SeqCst);
        self.resumed.notify_all();
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        self.paused_flag.load(Ordering::SeqCst)
    }

    fn wait_while_paused(&self) {
        let mut p = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        while *p {
            p = self.resumed.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Reads guest-virtual memory as vCPU `index` would right now, through its guest
    /// tables and the EPT of its EPTP, bypassing (and not filling) its TLB and ignoring
    /// EPT rights: the tests' view of what a guest load would see.
    pub fn peek_u8(&self, index: usize, va: u64) -> Option<u8> {
        let st = self.vcpus[index].lock();
        let regs = st.vmcs.regs;
        let eptp = Eptp::decode(st.vmcs.eptp, self.walker.caps, self.walker.maxphyaddr)?;
        drop(st);
        let gpa = self.guest_walk(&eptp, &regs, va)?;
        let leaf = self.walker.walk(&self.mem, &eptp, gpa, 0).ok()?;
        self.mem.load_u8(leaf.hpa_page | (gpa & 0xfff))
    }

    /// The guest-physical address of `va` under `regs` (4-level or 5-level tables whose
    /// entries are read through `eptp`), ignoring rights; `None` if unmapped.
    pub fn guest_walk(
        &self,
        eptp: &Eptp,
        regs: &introvisor::arch::amd64::Registers,
        va: u64,
    ) -> Option<u64> {
        let levels: u32 = if regs.cr4 & (1 << 12) != 0 { 5 } else { 4 };
        let mut table = regs.cr3 & 0x000f_ffff_ffff_f000;
        let mut level = levels;
        loop {
            let shift = 12 + 9 * (level - 1);
            let gpa = table + ((va >> shift) & 0x1ff) * 8;
            let leaf = self.walker.walk(&self.mem, eptp, gpa, 0).ok()?;
            let e = self.mem.load_u64(leaf.hpa_page | (gpa & 0xfff))?;
            if e & 1 == 0 {
                return None;
            }
            if level == 1 || (e & 0x80 != 0 && (level == 2 || level == 3)) {
                let mask = (1u64 << shift) - 1;
                let base = e & 0x000f_ffff_ffff_f000 & !mask;
                return Some(base | (va & mask));
            }
            table = e & 0x000f_ffff_ffff_f000;
            level -= 1;
        }
    }
}
