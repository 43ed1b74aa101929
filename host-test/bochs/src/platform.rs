//! [`BochsPlatform`]: introvisor-ept's [`Platform`] on this machine: one CPU, one vCPU,
//! the VMCS made current by [`hv::enable`], host-physical memory mapped one to one.
//!
//! Every method runs in VMX root operation on the only CPU, between a VM exit and the
//! next entry (or before the first), so the current VMCS is the vCPU's.
//!
//! # The monitor trap under Bochs 2.7
//! Bochs 2.7 (Debian's) reports the monitor trap flag as allowed (bit 27 of the
//! primary controls' allowed-1 half) but never delivers the MTF VM exit after VMRESUME:
//! with the control set, the guest runs on until some other exit (measured: a whole
//! scenario, thousands of instructions; Bochs completed MTF after 2.7, its issues #141
//! and stlintel/Bochs#29). The hypervisor probes for it at the first VM entry
//! ([`BochsPlatform::set_native_mtf`]); without it, [`Control::MonitorTrap`] is carried
//! out with RFLAGS.TF and #DB exiting (SDM Vol. 3A, 18.3.1.4: the single-step trap after
//! one instruction; Vol. 3C, 25.6.3: exception bitmap bit 1), and the #DB exit with BS
//! set (exit qualification bit 14, Table 28-1) is handed to the backend as the MTF exit
//! (reason 37) it asked for ([`BochsPlatform::translate_exit`]). The guest's own TF is
//! kept aside and shown in [`Platform::registers`] while the step lasts.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::time::Duration;

use introvisor::VcpuId;
use introvisor::arch::amd64::{ControlRegister, DescriptorTable, Interrupt, Registers, Segment};
use introvisor_ept::{Control, EptPointer, Hpa, Invept, Platform, PlatformError};

use crate::cpu;
use crate::hv::{self, Caps, pin, proc};
use crate::vcpu::{GPRS, Gprs};
use crate::vmx::{self, field, vmread, vmwrite};

/// The machine's RAM (`megs: 64` in the bochsrc): the host frames the platform maps.
const RAM_SIZE: u64 = 64 * 1024 * 1024;
/// RFLAGS.TF (SDM Vol. 1, 3.4.3.3).
const RFLAGS_TF: u64 = 1 << 8;
/// CR4.VMXE, which must stay set in the guest's real CR4 under VMX (IA32_VMX_CR4_FIXED0)
/// and which the CR4 guest/host mask hides from it.
const CR4_VMXE: u64 = 1 << 13;

/// The platform. It keeps only what the VMCS does not: whether the backend asked for
/// CPUID exits, and the CR2 a #PF injection is to set.
pub struct BochsPlatform {
    /// The capability MSRs, read once VMX is on ([`BochsPlatform::set_caps`]); until
    /// then every control is refused.
    caps: spin::Once<Caps>,
    cpuid_to_backend: AtomicBool,
    /// The CR2 to load before the next VM entry (`u64::MAX`: none). VMX does not switch
    /// CR2 (SDM Vol. 3C, 28.3: it is not part of the guest-state area), so the guest's
    /// CR2 is the CPU's, and the hypervisor writes it before entering.
    pending_cr2: AtomicU64,
    /// Whether the CPU delivers MTF exits itself (see the module docs).
    native_mtf: AtomicBool,
    /// A monitor trap carried out with RFLAGS.TF is in progress.
    tf_step: AtomicBool,
    /// The guest's own RFLAGS.TF while `tf_step` lasts.
    guest_tf: AtomicBool,
    /// Whether the backend asked for #DB exits itself (`Control::Exception(1)`).
    db_wanted: AtomicBool,
}

impl BochsPlatform {
    /// The platform, before VMX is on: a `const fn`, so that the platform (and, once the
    /// backend and the core can be built in a constant, the whole core) can live in a
    /// `static` built at compile time.
    pub const fn new() -> Self {
        Self {
            caps: spin::Once::new(),
            cpuid_to_backend: AtomicBool::new(false),
            pending_cr2: AtomicU64::new(u64::MAX),
            native_mtf: AtomicBool::new(true),
            tf_step: AtomicBool::new(false),
            guest_tf: AtomicBool::new(false),
            db_wanted: AtomicBool::new(false),
        }
    }

    /// Records the capability MSRs [`hv::enable`] read (the first call wins).
    pub fn set_caps(&self, caps: Caps) {
        self.caps.call_once(|| caps);
    }

    /// The capability MSRs (all zero before [`BochsPlatform::set_caps`]: nothing allowed).
    fn caps(&self) -> Caps {
        self.caps.get().copied().unwrap_or_default()
    }

    /// Records whether the CPU delivers MTF exits (the hypervisor's probe at the first VM
    /// entry).
    pub fn set_native_mtf(&self, native: bool) {
        self.native_mtf.store(native, Ordering::Relaxed);
    }

    /// Whether the CPU delivers MTF exits.
    pub fn native_mtf(&self) -> bool {
        self.native_mtf.load(Ordering::Relaxed)
    }

    /// Turns the #DB exit that ends a trap-flag step into the MTF exit the backend asked
    /// for; true if it did. Other exits are left as they are.
    pub fn translate_exit(&self, info: &mut introvisor_ept::ExitInfo) -> bool {
        let db_single_step = info.reason == 0
            && info.interruption_information & 0x8000_07FF == 0x8000_0301 // valid, hardware exception, #DB
            && info.qualification & (1 << 14) != 0; // BS
        if !(self.tf_step.load(Ordering::Relaxed) && db_single_step) {
            return false;
        }
        info.reason = u32::from(introvisor_ept::exit::reason::MONITOR_TRAP_FLAG);
        info.qualification = 0;
        info.interruption_information = 0;
        info.interruption_error_code = 0;
        true
    }

    /// Starts or ends a monitor trap done with RFLAGS.TF and #DB exiting.
    fn trap_flag_step(&self, on: bool) -> Result<(), PlatformError> {
        if on == self.tf_step.load(Ordering::Relaxed) {
            return Ok(());
        }
        let rflags = read(field::GUEST_RFLAGS)?;
        let bitmap = read(field::EXCEPTION_BITMAP)?;
        if on {
            self.guest_tf
                .store(rflags & RFLAGS_TF != 0, Ordering::Relaxed);
            write(field::GUEST_RFLAGS, rflags | RFLAGS_TF)?;
            write(field::EXCEPTION_BITMAP, bitmap | 1 << 1)?;
        } else {
            let tf = if self.guest_tf.load(Ordering::Relaxed) {
                RFLAGS_TF
            } else {
                0
            };
            write(field::GUEST_RFLAGS, (rflags & !RFLAGS_TF) | tf)?;
            if !self.db_wanted.load(Ordering::Relaxed) {
                write(field::EXCEPTION_BITMAP, bitmap & !(1 << 1))?;
            }
            // A step abandoned before its instruction (a held interrupt) may leave the
            // single-step trap pending (BS, bit 14 of the pending debug exceptions, SDM
            // Vol. 3C, 25.4.2): it must not reach the guest.
            let pending = read(field::GUEST_PENDING_DEBUG_EXCEPTIONS)?;
            write(field::GUEST_PENDING_DEBUG_EXCEPTIONS, pending & !(1 << 14))?;
        }
        self.tf_step.store(on, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the backend asked for CPUID exits ([`Control::Cpuid`]).
    pub fn cpuid_to_backend(&self) -> bool {
        self.cpuid_to_backend.load(Ordering::Relaxed)
    }

    /// Loads the CR2 an injected #PF asked for, if any (called just before VM entry).
    pub fn load_pending_cr2(&self) {
        let cr2 = self.pending_cr2.swap(u64::MAX, Ordering::Relaxed);
        if cr2 != u64::MAX {
            // SAFETY: CR2 only records a fault address; the host takes no page faults
            // that would read it.
            unsafe { core::arch::asm!("mov cr2, {}", in(reg) cr2, options(nostack)) }
        }
    }
}

impl BochsPlatform {
    /// RFLAGS as the guest has it: its own TF while a trap-flag step lasts.
    fn guest_rflags(&self, real: u64) -> u64 {
        if self.tf_step.load(Ordering::Relaxed) {
            let tf = if self.guest_tf.load(Ordering::Relaxed) {
                RFLAGS_TF
            } else {
                0
            };
            (real & !RFLAGS_TF) | tf
        } else {
            real
        }
    }
}

fn only_vcpu(vcpu: VcpuId) -> Result<(), PlatformError> {
    if vcpu.0 == 0 {
        Ok(())
    } else {
        Err(PlatformError::NoSuchVcpu(vcpu))
    }
}

fn read(f: u32) -> Result<u64, PlatformError> {
    vmread(f).map_err(|_| PlatformError::Failed("VMREAD"))
}

fn write(f: u32, value: u64) -> Result<(), PlatformError> {
    // SAFETY: the platform writes guest-state and control fields only, with values the
    // backend derived from its own EPT (pool frames, identity mapped) or the guest's state.
    unsafe { vmwrite(f, value) }.map_err(|_| PlatformError::Failed("VMWRITE"))
}

/// Sets or clears `bits` in the 32-bit control `f`, checking the CPU allows it.
fn set_bits(
    f: u32,
    allowed: u64,
    bits: u32,
    on: bool,
    what: &'static str,
) -> Result<(), PlatformError> {
    if on && !hv::allowed1(allowed, bits) {
        return Err(PlatformError::Unsupported(what));
    }
    if !on && (allowed as u32) & bits != 0 {
        return Err(PlatformError::Unsupported(what)); // the CPU forces it on
    }
    let v = read(f)?;
    let v = if on {
        v | u64::from(bits)
    } else {
        v & !u64::from(bits)
    };
    write(f, v)
}

fn segment(sel: u32, base: u32, limit: u32, ar: u32) -> Result<Segment, PlatformError> {
    Ok(Segment {
        selector: read(sel)? as u16,
        base: read(base)?,
        limit: read(limit)? as u32,
        access: read(ar)? as u32,
    })
}

fn set_segment(s: &Segment, sel: u32, base: u32, limit: u32, ar: u32) -> Result<(), PlatformError> {
    write(sel, u64::from(s.selector))?;
    write(base, s.base)?;
    write(limit, u64::from(s.limit))?;
    write(ar, u64::from(s.access))
}

/// The segment fields, in the order of the VMCS's encodings: selector, base, limit,
/// access rights.
const SEGMENTS: [(u32, u32, u32, u32); 8] = [
    (
        field::GUEST_ES,
        field::GUEST_ES_BASE,
        field::GUEST_ES_LIMIT,
        field::GUEST_ES_AR,
    ),
    (
        field::GUEST_CS,
        field::GUEST_CS_BASE,
        field::GUEST_CS_LIMIT,
        field::GUEST_CS_AR,
    ),
    (
        field::GUEST_SS,
        field::GUEST_SS_BASE,
        field::GUEST_SS_LIMIT,
        field::GUEST_SS_AR,
    ),
    (
        field::GUEST_DS,
        field::GUEST_DS_BASE,
        field::GUEST_DS_LIMIT,
        field::GUEST_DS_AR,
    ),
    (
        field::GUEST_FS,
        field::GUEST_FS_BASE,
        field::GUEST_FS_LIMIT,
        field::GUEST_FS_AR,
    ),
    (
        field::GUEST_GS,
        field::GUEST_GS_BASE,
        field::GUEST_GS_LIMIT,
        field::GUEST_GS_AR,
    ),
    (
        field::GUEST_LDTR,
        field::GUEST_LDTR_BASE,
        field::GUEST_LDTR_LIMIT,
        field::GUEST_LDTR_AR,
    ),
    (
        field::GUEST_TR,
        field::GUEST_TR_BASE,
        field::GUEST_TR_LIMIT,
        field::GUEST_TR_AR,
    ),
];

/// A control register as the guest sees it: host-owned bits (set in the mask) from the
/// read shadow (SDM Vol. 3C, 25.6.6).
fn guest_view(real: u64, mask: u64, shadow: u64) -> u64 {
    (real & !mask) | (shadow & mask)
}

// SAFETY: `host_frame` maps the machine's RAM one to one (the host's page tables
// identity-map the first 4 GiB), the frames stay mapped for the program's life, and the
// pool frames (a static array in .bss) are used by nothing but the backend; the guest
// frames are touched otherwise only by the guest (hardware, from Rust's point of view)
// and, before the backend exists, by the hypervisor building the boot tables.
unsafe impl Platform for BochsPlatform {
    fn host_frame(&self, hpa: Hpa) -> Option<NonNull<u8>> {
        if hpa.0 < RAM_SIZE {
            NonNull::new(hpa.frame().0 as *mut u8)
        } else {
            None
        }
    }

    fn invept(&self, scope: Invept) {
        let result = match scope {
            Invept::SingleContext(eptp) => vmx::invept(1, eptp.0),
            Invept::AllContext => vmx::invept(2, 0),
        };
        if let Err(e) = result {
            crate::println!("HV: INVEPT {scope:?} failed: {e}");
        }
    }

    fn shootdown(&self, _scope: Invept) {
        // One CPU: there is no other to ask.
    }

    fn relax(&self, _vcpu: Option<VcpuId>) {
        core::hint::spin_loop();
    }

    fn vcpu_count(&self) -> u16 {
        1
    }

    fn set_eptp(&self, vcpu: VcpuId, eptp: EptPointer) -> Result<(), PlatformError> {
        only_vcpu(vcpu)?;
        write(field::EPT_POINTER, eptp.0)
    }

    fn set_eptp_list_entry(
        &self,
        index: u16,
        eptp: Option<EptPointer>,
    ) -> Result<(), PlatformError> {
        let caps = self.caps();
        if caps.vmfunc & 1 == 0 || !hv::allowed1(caps.proc2, hv::proc2::ENABLE_VMFUNC) {
            return Err(PlatformError::Unsupported("VMFUNC EPTP switching"));
        }
        if index >= 512 {
            return Err(PlatformError::Failed("EPTP list index above 511"));
        }
        let list = core::ptr::addr_of_mut!(hv::EPTP_LIST).cast::<u64>();
        // SAFETY: the list is the hypervisor's 4 KiB frame of 512 entries, `index` < 512;
        // the CPU reads it only at VMFUNC, in guest mode.
        unsafe {
            list.add(usize::from(index))
                .write_volatile(eptp.map_or(0, |e| e.0))
        };
        Ok(())
    }

    fn set_control(&self, vcpu: VcpuId, control: Control, on: bool) -> Result<(), PlatformError> {
        only_vcpu(vcpu)?;
        let c = &self.caps();
        match control {
            Control::MonitorTrap if self.native_mtf() => set_bits(
                field::PROC_BASED_CONTROLS,
                c.proc,
                proc::MONITOR_TRAP_FLAG,
                on,
                "the monitor trap flag",
            ),
            Control::MonitorTrap => self.trap_flag_step(on),
            Control::Exception(1) => {
                self.db_wanted.store(on, Ordering::Relaxed);
                let v = read(field::EXCEPTION_BITMAP)?;
                let on = on || self.tf_step.load(Ordering::Relaxed);
                write(
                    field::EXCEPTION_BITMAP,
                    if on { v | 1 << 1 } else { v & !(1 << 1) },
                )
            }
            Control::Exception(n) if n < 32 => {
                let v = read(field::EXCEPTION_BITMAP)?;
                write(
                    field::EXCEPTION_BITMAP,
                    if on { v | 1 << n } else { v & !(1 << n) },
                )
            }
            Control::Exception(_) => Err(PlatformError::Unsupported("exception vectors above 31")),
            Control::CrWrite(ControlRegister::Cr3) => set_bits(
                field::PROC_BASED_CONTROLS,
                c.proc,
                proc::CR3_LOAD_EXITING,
                on,
                "CR3-load exiting",
            ),
            Control::CrWrite(ControlRegister::Cr0) => {
                // Every bit host-owned: any change exits; the shadow shows the guest its
                // own value.
                let real = read(field::GUEST_CR0)?;
                let shadow = guest_view(
                    real,
                    read(field::CR0_GUEST_HOST_MASK)?,
                    read(field::CR0_READ_SHADOW)?,
                );
                write(field::CR0_READ_SHADOW, shadow)?;
                write(field::CR0_GUEST_HOST_MASK, if on { u64::MAX } else { 0 })
            }
            Control::CrWrite(ControlRegister::Cr4) => {
                let real = read(field::GUEST_CR4)?;
                let shadow = guest_view(
                    real,
                    read(field::CR4_GUEST_HOST_MASK)?,
                    read(field::CR4_READ_SHADOW)?,
                );
                write(field::CR4_READ_SHADOW, shadow)?;
                write(
                    field::CR4_GUEST_HOST_MASK,
                    if on { u64::MAX } else { CR4_VMXE },
                )
            }
            Control::CrWrite(_) => Err(PlatformError::Unsupported(
                "XCR0 exits (XSETBV always exits)",
            )),
            Control::MsrWrite(index) => {
                // The write bitmaps: low MSRs at 2048, high (0xC000_0000..) at 3072
                // (SDM Vol. 3C, 25.6.9).
                let (base, bit) = match index {
                    0..=0x1FFF => (2048, index),
                    0xC000_0000..=0xC000_1FFF => (3072, index - 0xC000_0000),
                    _ => return Err(PlatformError::Unsupported("MSRs outside the bitmaps")),
                };
                let byte = core::ptr::addr_of_mut!(hv::MSR_BITMAP).cast::<u8>();
                // SAFETY: the bitmap is the hypervisor's 4 KiB frame; base + bit / 8 < 4096.
                unsafe {
                    let p = byte.add(base + (bit / 8) as usize);
                    let mask = 1u8 << (bit % 8);
                    p.write_volatile(if on {
                        p.read_volatile() | mask
                    } else {
                        p.read_volatile() & !mask
                    });
                }
                Ok(())
            }
            Control::Cpuid => {
                self.cpuid_to_backend.store(on, Ordering::Relaxed);
                Ok(())
            }
            Control::Io(_) => Err(PlatformError::Unsupported("I/O bitmaps")),
            Control::ExternalInterruptExiting => set_bits(
                field::PIN_BASED_CONTROLS,
                c.pin,
                pin::EXTERNAL_INTERRUPT_EXITING,
                on,
                "external-interrupt exiting",
            ),
            Control::InterruptWindowExiting => set_bits(
                field::PROC_BASED_CONTROLS,
                c.proc,
                proc::INTERRUPT_WINDOW_EXITING,
                on,
                "interrupt-window exiting",
            ),
            _ => Err(PlatformError::Unsupported("this control")),
        }
    }

    fn inject(&self, vcpu: VcpuId, event: Interrupt) -> Result<(), PlatformError> {
        only_vcpu(vcpu)?;
        // The VM-entry interruption-information field (SDM Vol. 3C, 25.8.3, Table 25-17):
        // vector, type in bits 10:8, deliver-error-code in 11, valid in 31.
        let mut info = u64::from(event.vector) | (event.typ as u64) << 8 | 1 << 31;
        if let Some(code) = event.error_code {
            info |= 1 << 11;
            write(field::ENTRY_EXCEPTION_ERROR_CODE, u64::from(code))?;
        }
        if event.typ.is_software() {
            write(
                field::ENTRY_INSTRUCTION_LENGTH,
                u64::from(event.instruction_length),
            )?;
        }
        if let Some(cr2) = event.cr2 {
            self.pending_cr2.store(cr2, Ordering::Relaxed);
        }
        write(field::ENTRY_INTERRUPTION_INFO, info)
    }

    fn registers(&self, vcpu: VcpuId) -> Result<Registers, PlatformError> {
        only_vcpu(vcpu)?;
        let g = GPRS.get();
        let [es, cs, ss, ds, fs, gs, ldtr, tr] = SEGMENTS;
        // SAFETY: these MSRs exist in long mode; VMX does not switch them, so the CPU's
        // values are the guest's.
        let (star, lstar, cstar, sfmask, kgs, pat) = unsafe {
            (
                cpu::rdmsr(0xC000_0081),
                cpu::rdmsr(0xC000_0082),
                cpu::rdmsr(0xC000_0083),
                cpu::rdmsr(0xC000_0084),
                cpu::rdmsr(0xC000_0102),
                cpu::rdmsr(0x277),
            )
        };
        Ok(Registers {
            rax: g.rax,
            rbx: g.rbx,
            rcx: g.rcx,
            rdx: g.rdx,
            rsi: g.rsi,
            rdi: g.rdi,
            rbp: g.rbp,
            rsp: read(field::GUEST_RSP)?,
            r8: g.r8,
            r9: g.r9,
            r10: g.r10,
            r11: g.r11,
            r12: g.r12,
            r13: g.r13,
            r14: g.r14,
            r15: g.r15,
            rip: read(field::GUEST_RIP)?,
            rflags: self.guest_rflags(read(field::GUEST_RFLAGS)?),
            cr0: guest_view(
                read(field::GUEST_CR0)?,
                read(field::CR0_GUEST_HOST_MASK)?,
                read(field::CR0_READ_SHADOW)?,
            ),
            cr2: cpu::cr2(),
            cr3: read(field::GUEST_CR3)?,
            cr4: guest_view(
                read(field::GUEST_CR4)?,
                read(field::CR4_GUEST_HOST_MASK)?,
                read(field::CR4_READ_SHADOW)?,
            ),
            cr8: 0,
            efer: read(field::GUEST_IA32_EFER)?,
            dr0: 0,
            dr1: 0,
            dr2: 0,
            dr3: 0,
            dr6: 0,
            dr7: read(field::GUEST_DR7)?,
            es: segment(es.0, es.1, es.2, es.3)?,
            cs: segment(cs.0, cs.1, cs.2, cs.3)?,
            ss: segment(ss.0, ss.1, ss.2, ss.3)?,
            ds: segment(ds.0, ds.1, ds.2, ds.3)?,
            fs: segment(fs.0, fs.1, fs.2, fs.3)?,
            gs: segment(gs.0, gs.1, gs.2, gs.3)?,
            ldtr: segment(ldtr.0, ldtr.1, ldtr.2, ldtr.3)?,
            tr: segment(tr.0, tr.1, tr.2, tr.3)?,
            gdtr: DescriptorTable {
                base: read(field::GUEST_GDTR_BASE)?,
                limit: read(field::GUEST_GDTR_LIMIT)? as u16,
            },
            idtr: DescriptorTable {
                base: read(field::GUEST_IDTR_BASE)?,
                limit: read(field::GUEST_IDTR_LIMIT)? as u16,
            },
            sysenter_cs: read(field::GUEST_SYSENTER_CS)?,
            sysenter_esp: read(field::GUEST_SYSENTER_ESP)?,
            sysenter_eip: read(field::GUEST_SYSENTER_EIP)?,
            star,
            lstar,
            cstar,
            sfmask,
            fs_base: read(field::GUEST_FS_BASE)?,
            gs_base: read(field::GUEST_GS_BASE)?,
            kernel_gs_base: kgs,
            pat,
        })
    }

    fn set_registers(&self, vcpu: VcpuId, r: &Registers) -> Result<(), PlatformError> {
        only_vcpu(vcpu)?;
        GPRS.set(Gprs {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
        });
        write(field::GUEST_RSP, r.rsp)?;
        write(field::GUEST_RIP, r.rip)?;
        let rflags = if self.tf_step.load(Ordering::Relaxed) {
            self.guest_tf
                .store(r.rflags & RFLAGS_TF != 0, Ordering::Relaxed);
            r.rflags | RFLAGS_TF
        } else {
            r.rflags
        };
        write(field::GUEST_RFLAGS, rflags)?;
        // The guest's values go to the read shadows; the real registers keep the bits VMX
        // requires (CR0.NE, CR4.VMXE: IA32_VMX_CR0/CR4_FIXED0).
        write(field::CR0_READ_SHADOW, r.cr0)?;
        write(field::GUEST_CR0, r.cr0 | (1 << 5))?;
        write(field::GUEST_CR3, r.cr3)?;
        write(field::CR4_READ_SHADOW, r.cr4)?;
        write(field::GUEST_CR4, r.cr4 | CR4_VMXE)?;
        write(field::GUEST_IA32_EFER, r.efer)?;
        write(field::GUEST_DR7, r.dr7)?;
        let [es, cs, ss, ds, fs, gs, ldtr, tr] = SEGMENTS;
        for (s, f) in [
            (&r.es, es),
            (&r.cs, cs),
            (&r.ss, ss),
            (&r.ds, ds),
            (&r.fs, fs),
            (&r.gs, gs),
            (&r.ldtr, ldtr),
            (&r.tr, tr),
        ] {
            set_segment(s, f.0, f.1, f.2, f.3)?;
        }
        write(field::GUEST_GDTR_BASE, r.gdtr.base)?;
        write(field::GUEST_GDTR_LIMIT, u64::from(r.gdtr.limit))?;
        write(field::GUEST_IDTR_BASE, r.idtr.base)?;
        write(field::GUEST_IDTR_LIMIT, u64::from(r.idtr.limit))?;
        write(field::GUEST_SYSENTER_CS, r.sysenter_cs)?;
        write(field::GUEST_SYSENTER_ESP, r.sysenter_esp)?;
        write(field::GUEST_SYSENTER_EIP, r.sysenter_eip)
    }

    fn pause_all(&self) -> Result<(), PlatformError> {
        // One vCPU, and the only CPU runs this: the vCPU is out of guest mode already.
        Ok(())
    }

    fn resume_all(&self) -> Result<(), PlatformError> {
        Ok(())
    }

    fn now(&self) -> Duration {
        // Bochs's TSC counts emulated instructions at the bochsrc's `ips` (50 million a
        // second): 20 ns each, in emulated time.
        Duration::from_nanos(cpu::rdtsc().saturating_mul(20))
    }
}
