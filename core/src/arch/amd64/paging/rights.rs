//! Access rights and page-fault error codes: whether an access through a translation would
//! fault, and the error code the #PF would push (SDM Vol. 3A §4.6 and §4.7).
//!
//! The walk reports the rights combined over every level in a [`Translation`]; this module
//! applies the rules of §4.6.1 to them for one [`Access`], under the control bits of a
//! [`RightsPolicy`] (CR0.WP, CR4.SMEP, CR4.SMAP, RFLAGS.AC). Everything here is `const` and
//! reads no memory except through [`Amd64::translate_access`], which walks first.
//!
//! Not modelled: protection keys (PKRU/PKRS, error-code bit 5), shadow-stack accesses (bit
//! 6), HLAT and SGX; the corresponding [`PfErrorCode`] bits exist for decoding codes that
//! hardware reported, and are never produced here.

use super::{Paging, PagingMode};
use crate::access::MemoryAccess;
use crate::addr::{Pa, Va};
use crate::arch::amd64::Amd64;
use crate::arch::{PhysRead, Translation, WalkStep, fault};
use crate::error::{FaultReason, PageFault, VmiError};

/// What an access does with the bytes it reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AccessKind {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Fetch,
}

/// One access to a linear address, as the rights check sees it (SDM Vol. 3A §4.6).
///
/// `user` is true for a user-mode access: one made at CPL 3 that is not an implicit
/// supervisor-mode access. Accesses to the GDT, LDT, IDT or TSS, and to the task-switch or
/// shadow-stack structures, are supervisor-mode accesses whatever the CPL (§4.6): describe
/// them with `user: false` (and, under SMAP, `ac: false` in the [`RightsPolicy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Access {
    /// Read, write or fetch.
    pub kind: AccessKind,
    /// A user-mode access (CPL 3); supervisor-mode when false.
    pub user: bool,
}

impl Access {
    /// An access of `kind`, user-mode when `user` is set.
    pub const fn new(kind: AccessKind, user: bool) -> Self {
        Self { kind, user }
    }

    /// A user-mode access (CPL 3) of `kind`.
    pub const fn user(kind: AccessKind) -> Self {
        Self { kind, user: true }
    }

    /// A supervisor-mode access (CPL 0 to 2, or implicit) of `kind`.
    pub const fn supervisor(kind: AccessKind) -> Self {
        Self { kind, user: false }
    }
}

/// The control bits that decide supervisor-mode rights (SDM Vol. 3A §4.6.1).
///
/// The default is what every modern OS kernel runs with at the least: CR0.WP = 1, and
/// neither SMEP nor SMAP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RightsPolicy {
    /// CR0.WP (bit 16): supervisor-mode writes honour R/W. When clear, the supervisor may
    /// write any page it may read.
    pub wp: bool,
    /// CR4.SMEP (bit 20): the supervisor may not fetch instructions from user-mode pages.
    pub smep: bool,
    /// CR4.SMAP (bit 21): the supervisor may not read or write user-mode pages, unless
    /// `ac` allows it.
    pub smap: bool,
    /// RFLAGS.AC (bit 18): lifts SMAP for explicit supervisor-mode data accesses. Pass
    /// false for implicit ones, which SMAP always covers.
    pub ac: bool,
}

impl Default for RightsPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl RightsPolicy {
    /// CR0.WP = 1, no SMEP, no SMAP, RFLAGS.AC = 0.
    pub const fn new() -> Self {
        Self {
            wp: true,
            smep: false,
            smap: false,
            ac: false,
        }
    }

    /// The policy of a vCPU, from CR0.WP (bit 16), CR4.SMEP (bit 20), CR4.SMAP (bit 21)
    /// and RFLAGS.AC (bit 18).
    ///
    /// # Examples
    /// ```
    /// use introvisor::arch::amd64::RightsPolicy;
    ///
    /// let p = RightsPolicy::from_registers(0x8005_0033, 0x0030_06f0, 0x0004_0202);
    /// assert!(p.wp && p.smep && p.smap && p.ac);
    /// ```
    pub const fn from_registers(cr0: u64, cr4: u64, rflags: u64) -> Self {
        Self {
            wp: cr0 & (1 << 16) != 0,
            smep: cr4 & (1 << 20) != 0,
            smap: cr4 & (1 << 21) != 0,
            ac: rflags & (1 << 18) != 0,
        }
    }
}

bitflags::bitflags! {
    /// The error code a page fault (#PF, vector 14) pushes (SDM Vol. 3A §4.7, Figure 4-12).
    ///
    /// Unknown bits are kept (`from_bits_retain`), so a code read from hardware round-trips.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct PfErrorCode: u32 {
        /// Bit 0, P: 0 for a not-present entry; 1 for a protection violation or a reserved
        /// bit.
        const PRESENT = 1 << 0;
        /// Bit 1, W/R: the access was a write.
        const WRITE = 1 << 1;
        /// Bit 2, U/S: the access was a user-mode access.
        const USER = 1 << 2;
        /// Bit 3, RSVD: a reserved bit was set in an entry of the walk.
        const RESERVED = 1 << 3;
        /// Bit 4, I/D: the access was an instruction fetch, and CR4.SMEP = 1 or (PAE or
        /// 4/5-level paging with EFER.NXE = 1).
        const INSTRUCTION = 1 << 4;
        /// Bit 5, PK: protection-key violation (not produced by introvisor).
        const PROTECTION_KEY = 1 << 5;
        /// Bit 6, SS: shadow-stack access (not produced by introvisor).
        const SHADOW_STACK = 1 << 6;
        /// Bit 7, HLAT: the fault arose during HLAT paging (not produced by introvisor).
        const HLAT = 1 << 7;
        /// Bit 15, SGX: an SGX access-control violation (not produced by introvisor).
        const SGX = 1 << 15;
    }
}

#[cfg(feature = "defmt")]
#[cfg_attr(docsrs, doc(cfg(feature = "defmt")))]
impl defmt::Format for PfErrorCode {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "PfErrorCode({=u32:#x})", self.bits())
    }
}

impl PfErrorCode {
    /// The bits that describe the access itself: W/R, U/S and I/D (§4.7). P and RSVD
    /// depend on why the access faulted; see [`Paging::check_access`] and
    /// [`Paging::fault_error_code`].
    pub const fn for_access(paging: &Paging, access: Access, rights: RightsPolicy) -> Self {
        let mut code = Self::empty();
        if matches!(access.kind, AccessKind::Write) {
            code = code.union(Self::WRITE);
        }
        if access.user {
            code = code.union(Self::USER);
        }
        let pae_nx = paging.nxe
            && matches!(
                paging.mode,
                PagingMode::Pae | PagingMode::Level4 | PagingMode::Level5
            );
        if matches!(access.kind, AccessKind::Fetch) && (rights.smep || pae_nx) {
            code = code.union(Self::INSTRUCTION);
        }
        code
    }
}

impl Paging {
    /// Whether `access` through `translation` is allowed (SDM Vol. 3A §4.6.1), and if not,
    /// the error code of the page fault it raises (§4.7: P = 1 with the access bits).
    ///
    /// `translation` is what the walk under this paging returned. A user-mode address is
    /// one with U/S = 1 at every level ([`Translation::user`]); the rules are:
    /// - user-mode accesses reach user-mode addresses only: writes need R/W = 1 at every
    ///   level, fetches need XD = 0 at every level (with EFER.NXE = 1);
    /// - supervisor-mode reads and writes of user-mode addresses need SMAP off, or RFLAGS.AC
    ///   set; supervisor-mode writes need R/W = 1 at every level when CR0.WP = 1;
    /// - supervisor-mode fetches need XD = 0 at every level, and under SMEP a
    ///   supervisor-mode address.
    ///
    /// With paging disabled every access is allowed.
    ///
    /// # Errors
    /// The #PF error code when the access would fault.
    ///
    /// # Examples
    /// ```
    /// use introvisor::{MemoryAccess, Pa, Translation};
    /// use introvisor::arch::amd64::{Access, AccessKind, Paging, PfErrorCode, RightsPolicy};
    ///
    /// let paging = Paging::default();
    /// // A read-only, executable kernel page.
    /// let t = Translation { pa: Pa(0x1000), page_size: 4096, access: MemoryAccess::RX, user: false };
    /// let rights = RightsPolicy::new();
    /// assert_eq!(paging.check_access(&t, Access::supervisor(AccessKind::Fetch), rights), Ok(()));
    /// assert_eq!(
    ///     paging.check_access(&t, Access::supervisor(AccessKind::Write), rights),
    ///     Err(PfErrorCode::PRESENT | PfErrorCode::WRITE)
    /// );
    /// assert_eq!(
    ///     paging.check_access(&t, Access::user(AccessKind::Read), rights),
    ///     Err(PfErrorCode::PRESENT | PfErrorCode::USER)
    /// );
    /// ```
    pub const fn check_access(
        &self,
        translation: &Translation,
        access: Access,
        rights: RightsPolicy,
    ) -> Result<(), PfErrorCode> {
        if matches!(self.mode, PagingMode::Disabled) {
            return Ok(());
        }
        let user_page = translation.user;
        let writable = translation.access.contains(MemoryAccess::W);
        let executable = translation.access.contains(MemoryAccess::X);
        let allowed = if access.user {
            user_page
                && match access.kind {
                    AccessKind::Read => true,
                    AccessKind::Write => writable,
                    AccessKind::Fetch => executable,
                }
        } else {
            // SMAP: supervisor data accesses to user-mode addresses need RFLAGS.AC.
            let smap_ok = !user_page || !rights.smap || rights.ac;
            match access.kind {
                AccessKind::Read => smap_ok,
                AccessKind::Write => smap_ok && (!rights.wp || writable),
                AccessKind::Fetch => !(user_page && rights.smep) && executable,
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(PfErrorCode::PRESENT.union(PfErrorCode::for_access(self, access, rights)))
        }
    }

    /// The error code of the page fault that `access` raises when the walk fails with
    /// `fault` (SDM Vol. 3A §4.7): P = 0 for a not-present entry, P = 1 and RSVD = 1 for a
    /// reserved bit, P = 1 for [`FaultReason::AccessDenied`], each with the access bits.
    ///
    /// `None` when the failure is not a page fault: a non-canonical address raises #GP or
    /// #SS, and a table outside guest memory
    /// ([`FaultReason::OutOfMemory`]) has no architectural outcome.
    pub const fn fault_error_code(
        &self,
        fault: &PageFault,
        access: Access,
        rights: RightsPolicy,
    ) -> Option<PfErrorCode> {
        let bits = PfErrorCode::for_access(self, access, rights);
        match fault.reason {
            FaultReason::NotPresent => Some(bits),
            FaultReason::ReservedBit => Some(
                bits.union(PfErrorCode::PRESENT)
                    .union(PfErrorCode::RESERVED),
            ),
            FaultReason::AccessDenied => Some(bits.union(PfErrorCode::PRESENT)),
            FaultReason::NonCanonical | FaultReason::OutOfMemory => None,
        }
    }
}

impl Amd64 {
    /// Translates `va` as `access` would: the walk of
    /// [`Architecture::translate`](crate::Architecture::translate), then
    /// [`Paging::check_access`] on its result.
    ///
    /// # Errors
    /// What the walk returns; and when the rights forbid the access,
    /// [`VmiError::Translation`] with [`FaultReason::AccessDenied`], naming the leaf entry
    /// (its level, address and value). [`Paging::fault_error_code`] gives the #PF error code
    /// of any of these faults.
    ///
    /// # Examples
    /// ```
    /// use introvisor::{FaultReason, Pa, Va, VmiError};
    /// use introvisor::arch::amd64::{Access, AccessKind, Amd64, Paging, PfErrorCode, RightsPolicy};
    ///
    /// // 4-level tables: PML4 at 0, PDPT at 0x1000, PD at 0x2000 with one 2 MiB
    /// // supervisor, read-only page at VA 0.
    /// let mut mem = vec![0u8; 0x3000];
    /// mem[0..8].copy_from_slice(&0x1007u64.to_le_bytes());
    /// mem[0x1000..0x1008].copy_from_slice(&0x2007u64.to_le_bytes());
    /// mem[0x2000..0x2008].copy_from_slice(&0x20_0081u64.to_le_bytes());
    /// let paging = Paging::default();
    /// let rights = RightsPolicy::new();
    ///
    /// let read = Access::supervisor(AccessKind::Read);
    /// let t = Amd64::translate_access(&mem[..], &paging, Va(0x1234), Pa(0), read, rights)?;
    /// assert_eq!(t.pa, Pa(0x20_1234));
    ///
    /// let write = Access::user(AccessKind::Write);
    /// let Err(VmiError::Translation(pf)) =
    ///     Amd64::translate_access(&mem[..], &paging, Va(0x1234), Pa(0), write, rights)
    /// else { panic!("a user write to a supervisor page must fault") };
    /// assert_eq!((pf.reason, pf.level, pf.entry), (FaultReason::AccessDenied, 2, Pa(0x2000)));
    /// assert_eq!(
    ///     paging.fault_error_code(&pf, write, rights),
    ///     Some(PfErrorCode::PRESENT | PfErrorCode::WRITE | PfErrorCode::USER)
    /// );
    /// # Ok::<(), VmiError>(())
    /// ```
    pub fn translate_access(
        mem: &(impl PhysRead + ?Sized),
        paging: &Paging,
        va: Va,
        root: Pa,
        access: Access,
        rights: RightsPolicy,
    ) -> Result<Translation, VmiError> {
        let mut leaf = WalkStep {
            level: 0,
            entry: Pa(0),
            value: 0,
        };
        let translation = super::walk(mem, paging, va, root, |step| leaf = step)?;
        match paging.check_access(&translation, access, rights) {
            Ok(()) => Ok(translation),
            Err(_) => Err(fault(
                va,
                root,
                leaf.level,
                leaf.entry,
                leaf.value,
                FaultReason::AccessDenied,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::walk::tests::{K, level4_fixture, w64};
    use super::*;
    use crate::arch::Architecture;
    use crate::arch::amd64::PagingMode;

    fn t(access: MemoryAccess, user: bool) -> Translation {
        Translation {
            pa: Pa(0x1000),
            page_size: 0x1000,
            access,
            user,
        }
    }

    const P: PfErrorCode = PfErrorCode::PRESENT;
    const W: PfErrorCode = PfErrorCode::WRITE;
    const U: PfErrorCode = PfErrorCode::USER;
    const I: PfErrorCode = PfErrorCode::INSTRUCTION;

    #[test]
    fn rights_user_accesses() {
        let p = Paging::default();
        let r = RightsPolicy::new();
        let read = Access::user(AccessKind::Read);
        let write = Access::user(AccessKind::Write);
        let fetch = Access::user(AccessKind::Fetch);
        // A supervisor page is closed to user mode, whatever its other rights.
        let kpage = t(MemoryAccess::RWX, false);
        assert_eq!(p.check_access(&kpage, read, r), Err(P | U));
        assert_eq!(p.check_access(&kpage, write, r), Err(P | W | U));
        assert_eq!(p.check_access(&kpage, fetch, r), Err(P | U | I));
        // A read-only, non-executable user page.
        let upage = t(MemoryAccess::R, true);
        assert_eq!(p.check_access(&upage, read, r), Ok(()));
        assert_eq!(p.check_access(&upage, write, r), Err(P | W | U));
        assert_eq!(p.check_access(&upage, fetch, r), Err(P | U | I));
        // CR0.WP does not matter to user mode.
        let no_wp = RightsPolicy { wp: false, ..r };
        assert_eq!(p.check_access(&upage, write, no_wp), Err(P | W | U));
        assert_eq!(
            p.check_access(&t(MemoryAccess::RWX, true), write, r),
            Ok(())
        );
        assert_eq!(
            p.check_access(&t(MemoryAccess::RWX, true), fetch, r),
            Ok(())
        );
    }

    #[test]
    fn rights_supervisor_wp_smep_smap() {
        let p = Paging::default();
        let read = Access::supervisor(AccessKind::Read);
        let write = Access::supervisor(AccessKind::Write);
        let fetch = Access::supervisor(AccessKind::Fetch);
        let ro_k = t(MemoryAccess::RX, false);
        let rw_u = t(MemoryAccess::RWX, true);
        let ro_u = t(MemoryAccess::R, true);
        let wp = RightsPolicy::new();
        let no_wp = RightsPolicy { wp: false, ..wp };
        assert_eq!(p.check_access(&ro_k, write, wp), Err(P | W));
        assert_eq!(p.check_access(&ro_k, write, no_wp), Ok(()));
        assert_eq!(p.check_access(&ro_u, write, no_wp), Ok(()));
        assert_eq!(p.check_access(&ro_u, write, wp), Err(P | W));
        assert_eq!(p.check_access(&ro_k, fetch, wp), Ok(()));
        assert_eq!(p.check_access(&ro_u, fetch, wp), Err(P | I), "XD");
        assert_eq!(p.check_access(&rw_u, fetch, wp), Ok(()), "no SMEP");
        let smep = RightsPolicy { smep: true, ..wp };
        assert_eq!(p.check_access(&rw_u, fetch, smep), Err(P | I));
        assert_eq!(p.check_access(&ro_k, fetch, smep), Ok(()));
        assert_eq!(
            p.check_access(&rw_u, read, smep),
            Ok(()),
            "SMEP is fetches only"
        );
        let smap = RightsPolicy { smap: true, ..wp };
        let smap_ac = RightsPolicy { ac: true, ..smap };
        assert_eq!(p.check_access(&rw_u, read, smap), Err(P));
        assert_eq!(p.check_access(&rw_u, write, smap), Err(P | W));
        assert_eq!(p.check_access(&rw_u, read, smap_ac), Ok(()));
        assert_eq!(p.check_access(&rw_u, write, smap_ac), Ok(()));
        assert_eq!(
            p.check_access(&ro_u, write, smap_ac),
            Err(P | W),
            "AC does not lift WP"
        );
        assert_eq!(
            p.check_access(
                &ro_u,
                write,
                RightsPolicy {
                    wp: false,
                    ..smap_ac
                }
            ),
            Ok(())
        );
        assert_eq!(
            p.check_access(&ro_k, read, smap),
            Ok(()),
            "SMAP is user pages only"
        );
        assert_eq!(
            p.check_access(&rw_u, fetch, smap),
            Ok(()),
            "SMAP is data only"
        );
    }

    #[test]
    fn error_code_instruction_bit() {
        let fetch = Access::supervisor(AccessKind::Fetch);
        let r = RightsPolicy::new();
        let smep = RightsPolicy { smep: true, ..r };
        let code = |mode, nxe, rights| {
            PfErrorCode::for_access(&Paging::new(mode).with_nxe(nxe), fetch, rights)
        };
        // I/D: a fetch, and SMEP or (PAE-style entries and NXE) (§4.7).
        assert_eq!(code(PagingMode::Bits32, true, r), PfErrorCode::empty());
        assert_eq!(code(PagingMode::Bits32, true, smep), I);
        assert_eq!(code(PagingMode::Pae, false, r), PfErrorCode::empty());
        assert_eq!(code(PagingMode::Pae, true, r), I);
        assert_eq!(code(PagingMode::Level4, true, r), I);
        assert_eq!(code(PagingMode::Level5, false, smep), I);
        // A 32-bit user fetch from a supervisor page: P|U, no I/D.
        let p32 = Paging::new(PagingMode::Bits32);
        assert_eq!(
            p32.check_access(
                &t(MemoryAccess::RWX, false),
                Access::user(AccessKind::Fetch),
                r
            ),
            Err(P | U)
        );
    }

    #[test]
    fn error_code_of_walk_faults() {
        let p = Paging::default();
        let r = RightsPolicy::new();
        let m = level4_fixture();
        let write = Access::user(AccessKind::Write);
        let fault_of = |va: u64, mem: &[u8]| match Amd64::translate(mem, &p, Va(va), Pa(0x1000)) {
            Err(VmiError::Translation(f)) => f,
            other => panic!("{other:?}"),
        };
        let np = fault_of(0x1000, &m);
        assert_eq!(p.fault_error_code(&np, write, r), Some(W | U));
        let mut bad = m.clone();
        w64(&mut bad, 0x1800, 0x2000 | 0x83);
        let rsvd = fault_of(K, &bad);
        assert_eq!(
            p.fault_error_code(&rsvd, Access::supervisor(AccessKind::Fetch), r),
            Some(P | PfErrorCode::RESERVED | I)
        );
        let nc = fault_of(1 << 47, &m);
        assert_eq!(p.fault_error_code(&nc, write, r), None);
        let oom = fault_of(K, &m[..0x1000]);
        assert_eq!(oom.reason, FaultReason::OutOfMemory);
        assert_eq!(p.fault_error_code(&oom, write, r), None);
    }

    #[test]
    fn translate_access_names_the_leaf() {
        let m = level4_fixture();
        let p = Paging::default();
        let r = RightsPolicy::new();
        // The 2 MiB page is read-only: with CR0.WP, a supervisor write is denied at its PDE.
        let va = K + 3 * 0x20_0000 + 0x10;
        let write = Access::supervisor(AccessKind::Write);
        let err = Amd64::translate_access(&m[..], &p, Va(va), Pa(0x1000), write, r).unwrap_err();
        let f = *err.page_fault().unwrap();
        assert_eq!(
            (f.reason, f.level, f.entry, f.value),
            (FaultReason::AccessDenied, 2, Pa(0x3018), 0x1234_5660_1085)
        );
        assert_eq!(p.fault_error_code(&f, write, r), Some(P | W));
        // The PML4E is supervisor-only, so user mode may not even read.
        let user_read = Access::user(AccessKind::Read);
        let err = Amd64::translate_access(&m[..], &p, Va(va), Pa(0x1000), user_read, r);
        assert_eq!(
            err.unwrap_err().page_fault().unwrap().reason,
            FaultReason::AccessDenied
        );
        let read = Access::supervisor(AccessKind::Read);
        let ok = Amd64::translate_access(&m[..], &p, Va(va), Pa(0x1000), read, r).unwrap();
        assert_eq!(ok.pa, Pa(0x1234_5660_0010));
        // A walk failure comes back unchanged.
        let err = Amd64::translate_access(&m[..], &p, Va(0x1000), Pa(0x1000), read, r);
        assert_eq!(
            err.unwrap_err().page_fault().unwrap().reason,
            FaultReason::NotPresent
        );
    }

    #[test]
    fn rights_policy_from_registers() {
        assert_eq!(
            RightsPolicy::from_registers(0, 0, 0),
            RightsPolicy {
                wp: false,
                smep: false,
                smap: false,
                ac: false
            }
        );
        let p = RightsPolicy::from_registers(1 << 16, 1 << 21, 1 << 18);
        assert!(p.wp && !p.smep && p.smap && p.ac);
        assert_eq!(RightsPolicy::default(), RightsPolicy::new());
    }
}
