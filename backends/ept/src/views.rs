//! Rights, views, remapped and shadow frames: the operations behind the `VmiDriver`
//! methods, and the invalidation each one needs.
//!
//! # The invalidation rule
//! A CPU caches guest-physical mappings (and combined mappings, and paging-structure
//! entries) derived from an EPTP until an INVEPT covering that EPTP runs on it (SDM
//! Vol. 3C §29.4). What a change needs follows from what a stale entry can do:
//!
//! | change | stale entry lets a CPU | invalidation |
//! |---|---|---|
//! | loosen rights (add R/W/X) | fault on an access now allowed: a *spurious* EPT violation | none; the violation itself invalidates the faulting mapping (§29.4.3.1 "EPT violations"), and the exit path, seeing the current rights allow the access, runs INVEPT single-context on that CPU and resumes with **no event** |
//! | map a hole (`allocate_gfn`) | fault as above | none, as above |
//! | tighten rights (remove any) | access what it may no longer | shootdown ([`ShootdownSite::Tighten`]) |
//! | remap a frame (`change_view_gfn`) | read or write the old frame | shootdown ([`ShootdownSite::Remap`]) |
//! | undo a remap (`reset_view_gfn`) | read or write the shadow frame | shootdown ([`ShootdownSite::ResetRemap`]) |
//! | split a large leaf | hold the old 2 MiB/1 GiB translation next to the new 4 KiB ones for the same addresses: after a change of the page size that maps a 4 KiB range, the TLBs may hold a translation of each size, an access may use either, and which one may vary from one execution to the next (SDM Vol. 3A §4.10.2.3, which Vol. 3C §29.4 applies to guest-physical mappings; Vol. 3A §4.10.4.2 asks for an invalidation after such a change; on some processors, for executable pages, a machine check: Intel's iTLB multihit, CVE-2018-12207). So even a loosening split is not left to spurious violations: nothing guarantees that the stale large entry faults rather than being used | shootdown ([`ShootdownSite::Split`]) |
//! | merge a table into a large leaf | walk through the freed table once the pool reuses it | shootdown ([`ShootdownSite::Merge`]), and the table goes back to the pool only after it |
//! | destroy a view | walk its freed tables | every vCPU in it is moved to the default view first, then shootdown ([`ShootdownSite::DestroyView`]), then its tables are freed |
//! | unmap a shadow frame (`free_gfn`) | reach the freed frame | shootdown ([`ShootdownSite::FreeShadow`]), then the frame is freed |
//!
//! Every site is needed: `host-test`'s `stale_translation` removes one at a time (feature
//! `fault-injection`) and a simulated vCPU's access goes stale. For the split the
//! simulator cannot show a wrong value (§4.10.2.3 allows either translation); its strict
//! page-size mode stops the vCPU at the first use of a cached translation of another size
//! than the current leaf instead.
//!
//! A shootdown is [`Platform::invept`] on the calling CPU plus [`Platform::shootdown`] for
//! every other one, single-context for the view's EPTP when the CPU has it, all-context
//! otherwise. One change may need several reasons at once (a split that tightens); one
//! shootdown serves them all, and the test-only switch removes one reason's request.
//!
//! # Pool exhaustion
//! Every operation counts the frames it needs (a split of a 1 GiB leaf down to 4 KiB
//! takes two; a new view, as many tables as the default view has; a shadow frame, itself
//! plus the tables missing on its path in each view) before it writes a single entry: a
//! pool with fewer is [`EptError::PoolExhausted`] with every table as it was. At the
//! `VmiDriver` boundary that is [`VmiError::OutOfFrames`](introvisor::VmiError::OutOfFrames),
//! distinct from [`VmiError::CapacityExceeded`](introvisor::VmiError::CapacityExceeded)
//! (every view slot or monitor slot in use).

use introvisor::{Gfn, MemoryAccess, Pa, View};

use crate::backend::{EptBackend, ShootdownSite, ViewInfo, site};
use crate::entry::{EptEntry, EptFlags, EptPointer, MemoryType, check_access};
use crate::error::EptError;
use crate::hostmem::{FramePtr, write_entry};
use crate::platform::{Control, Hpa, Platform};
use crate::pool::Usage;
use crate::table::{Step, Tables};

/// The guest-physical address of `gfn`, when it has one.
fn gpa_of(gfn: Gfn) -> Result<u64, EptError> {
    gfn.0
        .checked_mul(4096)
        .ok_or(EptError::OutsideGuestMemory(Pa(u64::MAX)))
}

/// Frames retired by one operation, freed after its shootdown (a split-merge chain
/// retires at most two tables).
type Retired = heapless::Vec<Hpa, 4>;

impl<P: Platform, const VIEWS: usize, const FRAMES: usize, const VCPUS: usize, const QUEUE: usize>
    EptBackend<P, VIEWS, FRAMES, VCPUS, QUEUE>
{
    /// The rights of `gfn` in `view`.
    ///
    /// # Errors
    /// [`EptError::NoSuchView`]; [`EptError::OutsideGuestMemory`].
    pub fn access(&self, view: View, gfn: Gfn) -> Result<MemoryAccess, EptError> {
        let gpa = gpa_of(gfn)?;
        self.translate(view, Pa(gpa)).map(|t| t.access)
    }

    /// Gives `gfn` the rights `access` in `view`, splitting a large leaf if `gfn` is one
    /// 4 KiB frame of it and merging its table back when all 512 entries agree again;
    /// then the invalidation the change needs (module docs).
    ///
    /// # Errors
    /// [`EptError::WriteWithoutRead`], [`EptError::WriteExecuteWithoutRead`],
    /// [`EptError::ExecuteOnlyUnsupported`] (nothing written); [`EptError::NoSuchView`];
    /// [`EptError::OutsideGuestMemory`]; [`EptError::PoolExhausted`] (tables unchanged).
    pub fn set_access(&self, view: View, gfn: Gfn, access: MemoryAccess) -> Result<(), EptError> {
        check_access(access, self.caps)?;
        let gpa = gpa_of(gfn)?;
        self.rewrite_leaf(view, gpa, |leaf, _| {
            let old = leaf.access();
            let tightened = !access.contains(old);
            Ok((
                leaf.with_access(access),
                if tightened {
                    site(ShootdownSite::Tighten)
                } else {
                    0
                },
            ))
        })
    }

    /// Rewrites the 4 KiB leaf of `gpa` in `view` with `change(old_leaf, default_hpa)`,
    /// which returns the new leaf and the shootdown sites it needs; splits first (with
    /// frames reserved), merges after, shoots down once, frees retired tables after.
    fn rewrite_leaf(
        &self,
        view: View,
        gpa: u64,
        change: impl FnOnce(EptEntry, Option<Hpa>) -> Result<(EptEntry, u8), EptError>,
    ) -> Result<(), EptError> {
        let mut retired = Retired::new();
        let (eptp, sites) = {
            let mut state = self.lock(&self.state, None);
            let (root, eptp) = self.view_of(&state, view)?;
            let default_root = state.default_root;
            let mut t = self.tables(&mut state);
            let default_hpa = t
                .leaf(default_root, gpa)?
                .map(|l| Tables::<P, FRAMES>::hpa_of(l, gpa));
            let leaf = t
                .leaf(root, gpa)?
                .ok_or(EptError::OutsideGuestMemory(Pa(gpa)))?;
            let old_4k = EptEntry(leaf.entry.0 & !EptFlags::LARGE_PAGE.bits())
                .with_address(Tables::<P, FRAMES>::hpa_of(leaf, gpa));
            let (new_4k, mut sites) = change(old_4k, default_hpa)?;
            if new_4k == old_4k {
                return Ok(());
            }
            // A leaf's level is 1 or more: one less never saturates.
            if t.pool.available() < usize::from(leaf.level.saturating_sub(1)) {
                return Err(EptError::PoolExhausted);
            }
            let mut cur = leaf;
            while cur.level > 1 {
                t.split(cur)?;
                sites |= site(ShootdownSite::Split);
                cur = t
                    .leaf(root, gpa)?
                    .ok_or(EptError::OutsideGuestMemory(Pa(gpa)))?;
            }
            write_entry(&self.platform, cur.table, cur.index, new_4k)?;
            self.merge_up(&mut t, root, gpa, &mut retired, &mut sites)?;
            (eptp, sites)
        };
        self.shootdown(Some(eptp), sites);
        self.release(&retired);
        Ok(())
    }

    /// Merges the tables above `gpa`'s leaf while they can be.
    fn merge_up(
        &self,
        t: &mut Tables<'_, P, FRAMES>,
        root: Hpa,
        gpa: u64,
        retired: &mut Retired,
        sites: &mut u8,
    ) -> Result<(), EptError> {
        for level in 2..=3u8 {
            let path = t.walk(root, gpa)?;
            let Some(parent) = path.at(level) else {
                return Ok(());
            };
            match t.try_merge(parent)? {
                Some(table) => {
                    // At most two merges (2 MiB, then 1 GiB): the vector has room.
                    let _ = retired.push(table);
                    *sites |= site(ShootdownSite::Merge);
                }
                None => return Ok(()),
            }
        }
        Ok(())
    }

    /// Frees frames retired before a shootdown that has now run.
    fn release(&self, retired: &[Hpa]) {
        if retired.is_empty() {
            return;
        }
        let mut state = self.lock(&self.state, None);
        for &hpa in retired {
            state.pool.release(hpa);
        }
    }

    /// Creates a view: a copy of the default view with every frame's rights set to
    /// `default_access`. No invalidation: no CPU has used its EPTP yet.
    ///
    /// # Errors
    /// As [`check_access`]; [`EptError::ViewLimit`]; [`EptError::PoolExhausted`] (nothing
    /// taken); a platform error setting the EPTP list.
    pub fn create(&self, default_access: MemoryAccess) -> Result<View, EptError> {
        check_access(default_access, self.caps)?;
        let (view, eptp) = {
            let mut state = self.lock(&self.state, None);
            let slot = state
                .views
                .iter()
                .position(Option::is_none)
                .ok_or(EptError::ViewLimit)?;
            // Alternate view `n` lives in slot `n - 1`. `slot` indexes an array, so the
            // sum does not wrap; a view number past `u16::MAX` is no view.
            let view = slot
                .checked_add(1)
                .and_then(|n| u16::try_from(n).ok())
                .map(View)
                .ok_or(EptError::ViewLimit)?;
            let default_root = state.default_root;
            let mut t = self.tables(&mut state);
            let root = t.copy(default_root, Some(default_access))?;
            let eptp = EptPointer::try_new(
                root,
                self.levels,
                self.table_memory_type,
                self.accessed_dirty,
                self.caps,
            )?;
            if let Some(s) = state.views.get_mut(slot) {
                *s = Some(ViewInfo {
                    root,
                    eptp,
                    default_access,
                });
            }
            (view, eptp)
        };
        if self.eptp_list {
            self.platform.set_eptp_list_entry(view.0, Some(eptp))?;
        }
        Ok(view)
    }

    /// Destroys an alternate view: every vCPU in it (or stepping through it) goes to the
    /// default view first, then the shootdown, then its tables go back to the pool.
    ///
    /// # Errors
    /// [`EptError::DefaultView`]; [`EptError::NoSuchView`]; a platform error moving a vCPU
    /// (the view is gone, its tables are freed after the shootdown all the same).
    pub fn destroy(&self, view: View) -> Result<(), EptError> {
        // Alternate view `n` lives in slot `n - 1`; view 0 is the default view.
        let Some(slot) = usize::from(view.0).checked_sub(1) else {
            return Err(EptError::DefaultView);
        };
        let info = {
            let mut state = self.lock(&self.state, None);
            state
                .views
                .get_mut(slot)
                .and_then(Option::take)
                .ok_or(EptError::NoSuchView(view))?
        };
        let mut result = Ok(());
        for v in 0..self.vcpu_count {
            let vcpu = introvisor::VcpuId(v);
            let Ok(slot) = self.vcpu_slot(vcpu) else {
                continue;
            };
            let mut s = self.lock(slot, None);
            let mut moved = false;
            if let Some(step) = s.step
                && (step.view == view || step.home == view)
            {
                // The step is abandoned: back to its home view (or the default), the
                // controls it turned on off again.
                s.step = None;
                s.view = if step.home == view {
                    View(0)
                } else {
                    step.home
                };
                moved = true;
                let mtf = s.singlestep;
                let r1 = self.platform.set_control(vcpu, Control::MonitorTrap, mtf);
                let r2 = if step.holding {
                    self.platform
                        .set_control(vcpu, Control::ExternalInterruptExiting, false)
                } else {
                    Ok(())
                };
                result = result
                    .and(r1.map_err(EptError::from))
                    .and(r2.map_err(EptError::from));
            }
            if s.redo
                .is_some_and(|r| r.step.view == view || r.step.home == view)
            {
                s.redo = None;
            }
            if s.view == view {
                s.view = View(0);
                moved = true;
            }
            if moved {
                let eptp = match self.eptp(s.view) {
                    Ok(e) => e,
                    Err(_) => self.default_eptp,
                };
                if let Err(e) = self.platform.set_eptp(vcpu, eptp) {
                    result = result.and(Err(e.into()));
                }
            }
        }
        if self.eptp_list {
            let _ = self.platform.set_eptp_list_entry(view.0, None);
        }
        self.shootdown(Some(info.eptp), site(ShootdownSite::DestroyView));
        let mut state = self.lock(&self.state, None);
        let mut t = self.tables(&mut state);
        t.free_all(info.root).and(result)
    }

    /// Switches every vCPU to `view` (a vCPU in the middle of a step goes there when the
    /// step ends).
    ///
    /// # Errors
    /// [`EptError::NoSuchView`]; a platform error.
    pub fn switch_all(&self, view: View) -> Result<(), EptError> {
        let eptp = self.eptp(view)?;
        for v in 0..self.vcpu_count {
            let vcpu = introvisor::VcpuId(v);
            let slot = self.vcpu_slot(vcpu)?;
            let mut s = self.lock(slot, None);
            if let Some(step) = s.step.as_mut() {
                step.home = view;
                continue;
            }
            s.view = view;
            self.platform.set_eptp(vcpu, eptp)?;
        }
        Ok(())
    }

    /// Maps `old_gfn` in the alternate `view` to the host frame behind `new_gfn` in the
    /// default view, with `old_gfn`'s rights in `view` (Xen's altp2m remap).
    ///
    /// # Errors
    /// [`EptError::DefaultView`] (the default view is never remapped);
    /// [`EptError::NoSuchView`]; [`EptError::OutsideGuestMemory`] for either frame;
    /// [`EptError::PoolExhausted`] (tables unchanged).
    pub fn remap(&self, view: View, old_gfn: Gfn, new_gfn: Gfn) -> Result<(), EptError> {
        if view.0 == 0 {
            return Err(EptError::DefaultView);
        }
        let new_gpa = gpa_of(new_gfn)?;
        let target = self.translate(View(0), Pa(new_gpa))?.hpa;
        self.rewrite_leaf(view, gpa_of(old_gfn)?, |leaf, _| {
            Ok((leaf.with_address(target), site(ShootdownSite::Remap)))
        })
    }

    /// Maps `gfn` in the alternate `view` back to its own frame.
    ///
    /// # Errors
    /// [`EptError::DefaultView`]; [`EptError::NoSuchView`];
    /// [`EptError::OutsideGuestMemory`]; [`EptError::PoolExhausted`].
    pub fn unmap_remap(&self, view: View, gfn: Gfn) -> Result<(), EptError> {
        if view.0 == 0 {
            return Err(EptError::DefaultView);
        }
        let gpa = gpa_of(gfn)?;
        self.rewrite_leaf(view, gpa, |leaf, default_hpa| {
            let own = default_hpa.ok_or(EptError::OutsideGuestMemory(Pa(gpa)))?;
            Ok((leaf.with_address(own), site(ShootdownSite::ResetRemap)))
        })
    }

    /// Backs `gfn` (above guest memory) with a zeroed shadow frame from the pool, mapped
    /// in every view: read-write-execute in the default view, with each alternate view's
    /// default rights there. No invalidation: a hole becomes a mapping (loosening).
    ///
    /// It takes the shadow frame plus, in each view, the tables missing on the way to
    /// `gfn`'s 4 KiB leaf (up to `levels - 1` per view for a `gfn` far from anything
    /// mapped, none next to another shadow frame); it is refused only when the pool holds
    /// fewer than that.
    ///
    /// # Errors
    /// [`EptError::GfnInUse`] for a frame at or below [`EptBackend::max_gfn`] or already
    /// backed in any view; [`EptError::BeyondWalkReach`]; [`EptError::PoolExhausted`]
    /// (nothing taken, nothing written).
    pub fn allocate_shadow(&self, gfn: Gfn) -> Result<Hpa, EptError> {
        if gfn.0 <= self.max_gfn {
            return Err(EptError::GfnInUse(gfn));
        }
        let gpa = gpa_of(gfn)?;
        if gpa >= crate::table::reach(self.levels) {
            return Err(EptError::BeyondWalkReach(Pa(gpa)));
        }
        let mut state = self.lock(&self.state, None);
        let default_root = state.default_root;
        let views = state.views;
        let mut t = self.tables(&mut state);
        // What the operation takes: the shadow frame, and in each view the tables missing
        // between the hole the walk ends in and the 4 KiB leaf (none where a neighbour's
        // mapping built them already). Counted, and every view checked for a clash,
        // before anything is taken or written.
        let mut need = 1usize;
        for root in core::iter::once(default_root).chain(views.iter().flatten().map(|v| v.root)) {
            let tables = t
                .tables_to_map(root, gpa, 1)?
                .ok_or(EptError::GfnInUse(gfn))?;
            need = need.saturating_add(tables);
        }
        if t.pool.available() < need {
            return Err(EptError::PoolExhausted);
        }
        let frame = t
            .pool
            .allocate(Usage::Shadow)
            .ok_or(EptError::PoolExhausted)?;
        FramePtr::of(&self.platform, frame)?.zero();
        let leaf = |access| {
            EptEntry::try_leaf(
                frame,
                1,
                access,
                MemoryType::WriteBack,
                EptFlags::empty(),
                self.caps,
            )
        };
        t.map(default_root, gpa, 1, leaf(MemoryAccess::RWX)?)?;
        for v in views.iter().flatten() {
            t.map(v.root, gpa, 1, leaf(v.default_access)?)?;
        }
        Ok(frame)
    }

    /// Unmaps the shadow frame at `gfn` from every view (and every remap onto it goes
    /// back to its own frame), shoots down, then frees the frame.
    ///
    /// # Errors
    /// [`EptError::NotShadowFrame`] for a frame `allocate_gfn` did not give.
    pub fn free_shadow(&self, gfn: Gfn) -> Result<(), EptError> {
        let gpa = gpa_of(gfn)?;
        let frame = {
            let mut state = self.lock(&self.state, None);
            let default_root = state.default_root;
            let views = state.views;
            let t = self.tables(&mut state);
            let leaf = t
                .leaf(default_root, gpa)
                .ok()
                .flatten()
                .filter(|l| l.level == 1 && gfn.0 > self.max_gfn)
                .ok_or(EptError::NotShadowFrame(gfn))?;
            let frame = leaf.entry.address();
            if t.pool.usage(frame) != Some(Usage::Shadow) {
                return Err(EptError::NotShadowFrame(gfn));
            }
            write_entry(&self.platform, leaf.table, leaf.index, EptEntry::EMPTY)?;
            for v in views.iter().flatten() {
                if let Some(l) = t.leaf(v.root, gpa)? {
                    write_entry(&self.platform, l.table, l.index, EptEntry::EMPTY)?;
                }
                // Remaps onto the shadow frame go back to their own frames (rewritten in
                // place: the visit does not descend into leaves).
                let tables = &t;
                let mut visit = |at: u64, step: Step| {
                    if step.level == 1 && step.entry.address() == frame {
                        let own = tables
                            .leaf(default_root, at)?
                            .map(|l| Tables::<P, FRAMES>::hpa_of(l, at));
                        let fixed = match own {
                            Some(hpa) => step.entry.with_address(hpa),
                            None => EptEntry::EMPTY,
                        };
                        write_entry(&self.platform, step.table, step.index, fixed)?;
                    }
                    Ok(())
                };
                t.visit(v.root, &mut visit)?;
            }
            t.pool.retire(frame);
            frame
        };
        self.shootdown(None, site(ShootdownSite::FreeShadow));
        self.release(&[frame]);
        Ok(())
    }

    /// Checks every view's hierarchy: each mapped entry is well-formed (no
    /// misconfiguration: W needs R, X alone needs the capability, no reserved memory
    /// type, large leaves only where the capabilities allow, aligned), each table is a
    /// pool frame tagged as a table and referenced exactly once, each leaf maps guest
    /// memory or a shadow frame, and no pool frame is left in limbo.
    ///
    /// # Errors
    /// The first inconsistency, as the [`EptError`] that names it
    /// ([`EptError::Overlap`] for a table referenced twice or a leaked table).
    pub fn verify(&self) -> Result<(), EptError> {
        let mut state = self.lock(&self.state, None);
        let mut roots = heapless::Vec::<Hpa, 64>::new();
        let _ = roots.push(state.default_root);
        for v in state.views.iter().flatten() {
            roots.push(v.root).map_err(|_| EptError::CapacityExceeded)?;
        }
        let regions = state.regions.clone();
        let t = self.tables(&mut state);
        let mut tables_seen = roots.len();
        for &root in &roots {
            if t.pool.usage(root) != Some(Usage::Table) {
                return Err(EptError::HostFrameUnmapped(root));
            }
            let mut visit = |gpa: u64, step: Step| -> Result<(), EptError> {
                let e = step.entry;
                if !crate::table::is_leaf(e, step.level) {
                    if t.pool.usage(e.address()) != Some(Usage::Table) {
                        return Err(EptError::HostFrameUnmapped(e.address()));
                    }
                    if e.access() != MemoryAccess::RWX {
                        return Err(EptError::InvalidExitInformation("table entry without RWX"));
                    }
                    // At most the pool's frames: never saturates.
                    tables_seen = tables_seen.saturating_add(1);
                    return Ok(());
                }
                check_access(e.access(), self.caps)?;
                MemoryType::from_bits(e.memory_type_bits())?;
                if step.level > 1 && !self.caps.leaf_at(step.level) {
                    return Err(EptError::LargePageUnsupported(step.level));
                }
                let size = crate::table::level_size(step.level);
                // A level's size is a power of two from 4 KiB: one less cannot wrap.
                if e.address().0 & size.wrapping_sub(1) != 0 {
                    return Err(EptError::Misaligned(e.address()));
                }
                let hpa = e.address().0;
                let in_guest = regions.iter().any(|r| {
                    // `[hpa, hpa + size)` inside `[r.hpa, r.hpa + r.size)`, without sums.
                    hpa.checked_sub(r.hpa.0)
                        .and_then(|offset| r.size.checked_sub(offset))
                        .is_some_and(|room| size <= room)
                });
                let shadow = step.level == 1 && t.pool.usage(e.address()) == Some(Usage::Shadow);
                if !in_guest && !shadow {
                    return Err(EptError::OutsideGuestMemory(Pa(gpa)));
                }
                Ok(())
            };
            t.visit(root, &mut visit)?;
        }
        let (_, tables, _, limbo) = t.pool.census();
        if tables != tables_seen || limbo != 0 {
            return Err(EptError::Overlap);
        }
        Ok(())
    }
}
