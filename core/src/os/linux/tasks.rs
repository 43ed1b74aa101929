//! The kernel's lists: tasks, threads, modules; the current task; a process's VMAs.

use core::ops::ControlFlow;

use crate::access::MemoryAccess;
use crate::addr::{Pa, Va};
use crate::arch::amd64::{Amd64, Registers};
use crate::driver::VmiDriver;
use crate::vmi::VmiCore;

use super::LinuxError;
use super::find::LinuxOs;
use super::mem::{Kmem, is_kernel_pointer};

/// The most entries a kernel list walk visits before it gives up
/// ([`LinuxError::ListTooLong`]).
pub const MAX_LIST: u64 = 1 << 20;
/// `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;
/// `MODULE_NAME_LEN` on 64-bit.
pub const MODULE_NAME_LEN: usize = 56;
/// The longest VMA file name kept (`d_name`, not the path).
pub const FILE_NAME_MAX: usize = 64;
/// The deepest maple tree walked (`MAPLE_HEIGHT_MAX` is 31).
pub const MAPLE_DEPTH_MAX: usize = 31;
/// `PF_KTHREAD`.
const PF_KTHREAD: u32 = 0x0020_0000;

/// A task (a process, or a thread) as the kernel describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Task {
    /// Its `task_struct`.
    pub task: Va,
    /// `pid` (the thread id).
    pub pid: u32,
    /// `tgid` (the process id).
    pub tgid: u32,
    /// `real_parent->tgid`.
    pub ppid: u32,
    /// `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// `__state` (or `state`).
    pub state: u32,
    /// `flags` (`PF_*`).
    pub flags: u32,
    /// `mm` (0 for a kernel thread).
    pub mm: u64,
    /// The page-table root: `mm->pgd` placed in physical memory, or the kernel's for a
    /// kernel thread.
    pub pgd: Pa,
    /// The user copy of the root with page-table isolation on (`pgd + 4 KiB`), the CR3
    /// the task runs user code under.
    pub user_pgd: Option<Pa>,
}

impl Task {
    /// `comm` as text, up to its NUL (`"?"` if not UTF-8).
    pub fn comm_str(&self) -> &str {
        let n = self.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        self.comm
            .get(..n)
            .and_then(|b| core::str::from_utf8(b).ok())
            .unwrap_or("?")
    }

    /// Whether it is a kernel thread (`PF_KTHREAD`, or no `mm`).
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0 || self.mm == 0
    }
}

/// A loaded module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LinuxModule {
    /// Its `struct module`.
    pub object: Va,
    /// `name`, NUL-padded.
    pub name: [u8; MODULE_NAME_LEN],
    /// Its text base (`mem[MOD_TEXT].base`, or `core_layout.base`), as `/proc/modules`
    /// shows it.
    pub base: Va,
    /// Its size as `/proc/modules` shows it (every `mem[].size`, or `core_layout.size +
    /// init_layout.size`).
    pub size: u64,
}

impl LinuxModule {
    /// The name as text.
    pub fn name_str(&self) -> &str {
        let n = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(MODULE_NAME_LEN);
        self.name
            .get(..n)
            .and_then(|b| core::str::from_utf8(b).ok())
            .unwrap_or("?")
    }
}

/// One VMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Vma {
    /// Its `vm_area_struct`.
    pub object: Va,
    /// `vm_start`.
    pub start: Va,
    /// `vm_end`.
    pub end: Va,
    /// `vm_flags`.
    pub flags: u64,
    /// `VM_READ`, `VM_WRITE`, `VM_EXEC` as rights.
    pub access: MemoryAccess,
    /// `vm_file` (0 for anonymous memory).
    pub file: u64,
    /// The file's `d_name`, NUL-padded (empty for anonymous memory).
    pub file_name: [u8; FILE_NAME_MAX],
}

impl Vma {
    /// The file name as text (empty for anonymous memory).
    pub fn file_name_str(&self) -> &str {
        let n = self
            .file_name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(FILE_NAME_MAX);
        self.file_name
            .get(..n)
            .and_then(|b| core::str::from_utf8(b).ok())
            .unwrap_or("?")
    }
}

/// Walks a `list_head` ring from `head` (not visited itself), calling `visit` with each
/// node's address, bounded by [`MAX_LIST`], with Brent's cycle check: a ring that loops
/// without passing `head` is [`LinuxError::ListCycle`] after at most twice its length.
pub(crate) fn walk_list<D: VmiDriver<Architecture = Amd64>>(
    mem: &Kmem<'_, D>,
    head: u64,
    list: &'static str,
    mut visit: impl FnMut(u64) -> Result<ControlFlow<()>, LinuxError>,
) -> Result<(), LinuxError> {
    let mut node = mem.ptr(head, list)?;
    let mut saved = head;
    let mut power = 1u64;
    let mut lam = 0u64;
    let mut steps = 0u64;
    while node != head {
        if steps >= MAX_LIST {
            return Err(LinuxError::ListTooLong { list });
        }
        // below MAX_LIST: checked above
        steps = steps.saturating_add(1);
        // the node's own link first: a node outside memory is the list's fault
        let next = mem.ptr(node, list)?;
        if visit(node)?.is_break() {
            return Ok(());
        }
        if next == saved {
            return Err(LinuxError::ListCycle { list });
        }
        // at most `steps`: reset to 0 when it reaches `power`
        lam = lam.saturating_add(1);
        if lam == power {
            saved = next;
            power = power.saturating_mul(2);
            lam = 0;
        }
        node = next;
    }
    Ok(())
}

impl LinuxOs {
    /// Reads the task at `task`.
    ///
    /// # Errors
    /// A read error; [`LinuxError::ListPointer`] for a `real_parent` or `mm` that is
    /// not a kernel pointer.
    pub fn task<D: VmiDriver<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        task: Va,
    ) -> Result<Task, LinuxError> {
        let mem = self.kmem(core)?;
        self.task_in(&mem, task.0)
    }

    fn task_in<D: VmiDriver<Architecture = Amd64>>(
        &self,
        mem: &Kmem<'_, D>,
        t: u64,
    ) -> Result<Task, LinuxError> {
        let o = &self.offsets;
        let at = |off: u64| t.wrapping_add(off);
        let pid = mem.u32(at(o.task_pid))?;
        let tgid = mem.u32(at(o.task_tgid))?;
        let mut comm = [0u8; COMM_LEN];
        mem.read(at(o.task_comm), &mut comm)?;
        let state = mem.u32(at(o.task_state))?;
        let flags = mem.u32(at(o.task_flags))?;
        let parent = mem.ptr(at(o.task_real_parent), "real_parent")?;
        let ppid = if parent == t && pid == 0 {
            0
        } else {
            mem.u32(parent.wrapping_add(o.task_tgid))?
        };
        let mm = mem.u64(at(o.task_mm))?;
        let (pgd, user_pgd) = if mm == 0 {
            (self.space.root, None)
        } else {
            if !is_kernel_pointer(mm) {
                return Err(LinuxError::ListPointer {
                    list: "mm",
                    at: Va(mm),
                });
            }
            let pgd_va = mem.ptr(mm.wrapping_add(o.mm_pgd), "mm->pgd")?;
            let pa = Pa(mem.pa(pgd_va)?);
            (pa, self.pti.then_some(Pa(pa.0.wrapping_add(0x1000))))
        };
        Ok(Task {
            task: Va(t),
            pid,
            tgid,
            ppid,
            comm,
            state,
            flags,
            mm,
            pgd,
            user_pgd,
        })
    }

    /// Calls `visit` with every process (thread-group leader) on `init_task.tasks`, in
    /// list order, until it breaks. The idle task (pid 0) is the list's head and is not
    /// visited, as `/proc` does not list it.
    ///
    /// # Errors
    /// [`LinuxError::ListPointer`], [`LinuxError::ListCycle`],
    /// [`LinuxError::ListTooLong`]; a read error.
    pub fn tasks<D: VmiDriver<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        mut visit: impl FnMut(&Task) -> ControlFlow<()>,
    ) -> Result<(), LinuxError> {
        let mem = self.kmem(core)?;
        let head = self.symbols.init_task.wrapping_add(self.offsets.task_tasks);
        walk_list(&mem, head, "tasks", |node| {
            let task = self.task_in(&mem, node.wrapping_sub(self.offsets.task_tasks))?;
            Ok(visit(&task))
        })
    }

    /// Calls `visit` with every thread of the process whose task is `task`
    /// (`signal->thread_head`), until it breaks.
    ///
    /// # Errors
    /// As [`LinuxOs::tasks`].
    pub fn threads_of<D: VmiDriver<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        task: Va,
        mut visit: impl FnMut(&Task) -> ControlFlow<()>,
    ) -> Result<(), LinuxError> {
        let mem = self.kmem(core)?;
        let o = &self.offsets;
        let signal = mem.ptr(task.0.wrapping_add(o.task_signal), "signal")?;
        walk_list(
            &mem,
            signal.wrapping_add(o.signal_thread_head),
            "threads",
            |node| {
                let t = self.task_in(&mem, node.wrapping_sub(o.task_thread_node))?;
                Ok(visit(&t))
            },
        )
    }

    /// The process with `pid` (a tgid).
    ///
    /// # Errors
    /// [`LinuxError::ProcessNotFound`]; as [`LinuxOs::tasks`].
    pub fn process<D: VmiDriver<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        pid: u32,
    ) -> Result<Task, LinuxError> {
        let mut found = None;
        self.tasks(core, |t| {
            if t.pid == pid {
                found = Some(*t);
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        found.ok_or(LinuxError::ProcessNotFound)
    }

    /// Calls `visit` with every module on the `modules` list, until it breaks.
    ///
    /// # Errors
    /// [`LinuxError::KernelNotFound`] if kallsyms has no `modules` or BTF no
    /// `struct module` (a kernel without modules); as [`LinuxOs::tasks`].
    pub fn modules_list<D: VmiDriver<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        mut visit: impl FnMut(&LinuxModule) -> ControlFlow<()>,
    ) -> Result<(), LinuxError> {
        let head = self
            .symbols
            .modules
            .ok_or(LinuxError::KernelNotFound("kallsyms has no `modules`"))?;
        let o = &self.offsets;
        if o.module_mem.is_none() && o.module_core_layout.is_none() {
            return Err(LinuxError::KernelNotFound(
                "BTF has no struct module layout",
            ));
        }
        let mem = self.kmem(core)?;
        walk_list(&mem, head, "modules", |node| {
            let m = node.wrapping_sub(o.module_list);
            let mut name = [0u8; MODULE_NAME_LEN];
            mem.read(m.wrapping_add(o.module_name), &mut name)?;
            let (base, size) = if let Some((mem_off, elem, count)) = o.module_mem {
                let first = m.wrapping_add(mem_off);
                let base = mem.u64(first.wrapping_add(o.module_memory_base))?;
                let mut size = 0u64;
                for i in 0..u64::from(count.min(16)) {
                    let e = first.wrapping_add(i.wrapping_mul(elem));
                    size = size
                        .wrapping_add(u64::from(mem.u32(e.wrapping_add(o.module_memory_size))?));
                }
                (base, size)
            } else {
                let core_l = m.wrapping_add(o.module_core_layout.unwrap_or(0));
                let base = mem.u64(core_l.wrapping_add(o.module_layout_base))?;
                let mut size = u64::from(mem.u32(core_l.wrapping_add(o.module_layout_size))?);
                if let Some(init) = o.module_init_layout {
                    let init_l = m.wrapping_add(init);
                    size = size.wrapping_add(u64::from(
                        mem.u32(init_l.wrapping_add(o.module_layout_size))?,
                    ));
                }
                (base, size)
            };
            Ok(visit(&LinuxModule {
                object: Va(m),
                name,
                base: Va(base),
                size,
            }))
        })
    }

    /// The per-CPU base of the vCPU: GS base when it is a kernel address (kernel mode),
    /// else the swapped-out `KERNEL_GS_BASE` (user mode), else `__per_cpu_offset[0]`
    /// (a dump without those registers: right for a one-vCPU guest only).
    ///
    /// # Errors
    /// [`LinuxError::KernelNotFound`] if none is known; a read error.
    pub fn per_cpu_base<D: VmiDriver<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        registers: &Registers,
    ) -> Result<u64, LinuxError> {
        for base in [registers.gs_base, registers.kernel_gs_base] {
            if base >> 63 != 0 && is_kernel_pointer(base) {
                return Ok(base);
            }
        }
        let pco = self
            .symbols
            .per_cpu_offset
            .ok_or(LinuxError::KernelNotFound("no per-CPU base: GS bases are not kernel addresses and kallsyms has no __per_cpu_offset"))?;
        let mem = self.kmem(core)?;
        mem.u64(pco)
    }

    /// The task running on the vCPU: the per-CPU `current_task` (or
    /// `pcpu_hot.current_task`) at [`LinuxOs::per_cpu_base`].
    ///
    /// # Errors
    /// [`LinuxError::KernelNotFound`] if the kernel has neither symbol; as
    /// [`LinuxOs::task`].
    pub fn current_task<D: VmiDriver<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        registers: &Registers,
    ) -> Result<Task, LinuxError> {
        let off = match (
            self.symbols.current_task,
            self.symbols.pcpu_hot,
            self.offsets.pcpu_hot_current_task,
        ) {
            (Some(ct), _, _) => ct,
            (None, Some(hot), Some(field)) => hot.wrapping_add(field),
            _ => {
                return Err(LinuxError::KernelNotFound(
                    "neither current_task nor pcpu_hot.current_task",
                ));
            }
        };
        let base = self.per_cpu_base(core, registers)?;
        let mem = self.kmem(core)?;
        let task = mem.ptr(base.wrapping_add(off), "current_task")?;
        self.task_in(&mem, task)
    }

    /// Calls `visit` with every VMA of the process whose task is `task`, in address
    /// order, until it breaks: the maple tree `mm->mm_mt` (6.1 on) or the list
    /// `mm->mmap`. A kernel thread has none.
    ///
    /// # Errors
    /// [`LinuxError::MapleTreeCorrupt`] (a node of an unknown type, a tree deeper than
    /// [`MAPLE_DEPTH_MAX`], VMAs out of order); as [`LinuxOs::tasks`].
    pub fn vmas<D: VmiDriver<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        task: Va,
        mut visit: impl FnMut(&Vma) -> ControlFlow<()>,
    ) -> Result<(), LinuxError> {
        let mem = self.kmem(core)?;
        let o = &self.offsets;
        let mm = mem.u64(task.0.wrapping_add(o.task_mm))?;
        if mm == 0 {
            return Ok(());
        }
        if !is_kernel_pointer(mm) {
            return Err(LinuxError::ListPointer {
                list: "mm",
                at: Va(mm),
            });
        }
        let mut last_end = 0u64;
        let mut count = 0u64;
        let mut each = |vma: u64| -> Result<ControlFlow<()>, LinuxError> {
            // at most MAX_LIST + 1: the check below ends the walk
            count = count.saturating_add(1);
            if count > MAX_LIST {
                return Err(LinuxError::ListTooLong { list: "vmas" });
            }
            let v = self.vma_in(&mem, vma)?;
            if v.start.0 >= v.end.0 || v.start.0 < last_end {
                return Err(LinuxError::MapleTreeCorrupt(
                    "VMAs overlap or are out of order",
                ));
            }
            last_end = v.end.0;
            Ok(visit(&v))
        };
        if let Some(root_off) = o.mm_mt_root {
            let root = mem.u64(mm.wrapping_add(root_off))?;
            self.walk_maple(&mem, root, &mut each)
        } else if let (Some(mmap), Some(next)) = (o.mm_mmap, o.vma_next) {
            let mut vma = mem.u64(mm.wrapping_add(mmap))?;
            while vma != 0 {
                if !is_kernel_pointer(vma) {
                    return Err(LinuxError::ListPointer {
                        list: "vmas",
                        at: Va(vma),
                    });
                }
                if each(vma)?.is_break() {
                    break;
                }
                vma = mem.u64(vma.wrapping_add(next))?;
            }
            Ok(())
        } else {
            Err(LinuxError::KernelNotFound(
                "BTF has neither mm_struct.mm_mt nor mm_struct.mmap",
            ))
        }
    }

    fn vma_in<D: VmiDriver<Architecture = Amd64>>(
        &self,
        mem: &Kmem<'_, D>,
        vma: u64,
    ) -> Result<Vma, LinuxError> {
        let o = &self.offsets;
        let start = mem.u64(vma.wrapping_add(o.vma_start))?;
        let end = mem.u64(vma.wrapping_add(o.vma_end))?;
        let flags = mem.u64(vma.wrapping_add(o.vma_flags))?;
        let file = mem.u64(vma.wrapping_add(o.vma_file))?;
        let mut file_name = [0u8; FILE_NAME_MAX];
        if file != 0 {
            let dentry = mem.ptr(file.wrapping_add(o.file_dentry), "vm_file")?;
            let name = mem.u64(dentry.wrapping_add(o.dentry_name))?;
            if is_kernel_pointer(name & !7) {
                // the name may end before the buffer, and its page after it may be
                // unmapped: read what can be read, up to the NUL
                for (i, b) in file_name.iter_mut().enumerate() {
                    let mut one = [0u8; 1];
                    if mem.read(name.wrapping_add(i as u64), &mut one).is_err() || one[0] == 0 {
                        break;
                    }
                    *b = one[0];
                }
                if let Some(last) = file_name.last_mut() {
                    *last = 0;
                }
            }
        }
        let mut access = MemoryAccess::empty();
        if flags & 1 != 0 {
            access |= MemoryAccess::R;
        }
        if flags & 2 != 0 {
            access |= MemoryAccess::W;
        }
        if flags & 4 != 0 {
            access |= MemoryAccess::X;
        }
        Ok(Vma {
            object: Va(vma),
            start: Va(start),
            end: Va(end),
            flags,
            access,
            file,
            file_name,
        })
    }

    /// Depth-first over a maple tree of VMAs (`maple_range_64` and `maple_arange_64`
    /// nodes, 256 bytes; an encoded node pointer has its type in bits 3-6, and the root
    /// pointer in `ma_root` also bit 1), calling
    /// `each` with every non-empty leaf slot in index order.
    fn walk_maple<D: VmiDriver<Architecture = Amd64>>(
        &self,
        mem: &Kmem<'_, D>,
        root: u64,
        each: &mut dyn FnMut(u64) -> Result<ControlFlow<()>, LinuxError>,
    ) -> Result<(), LinuxError> {
        let is_node = |e: u64| e & 3 == 2 && e > 4096;
        if root == 0 {
            return Ok(());
        }
        if !is_node(root) {
            // a single entry at index 0
            if is_kernel_pointer(root) {
                let _ = each(root)?;
            }
            return Ok(());
        }
        // explicit stack: (encoded node, min, max, next slot)
        let mut stack = [(0u64, 0u64, 0u64, 0usize); MAPLE_DEPTH_MAX + 1];
        let mut depth = 0usize;
        stack[0] = (root, 0, u64::MAX, 0);
        let mut nodes = 0u64;
        loop {
            let Some(&(enode, min, max, slot)) = stack.get(depth) else {
                return Err(LinuxError::MapleTreeCorrupt(
                    "maple tree deeper than MAPLE_DEPTH_MAX",
                ));
            };
            let node = enode & !0xff;
            let kind = (enode >> 3) & 0xf;
            let (pivots, slots, nslots, leaf) = match kind {
                1 => (
                    self.offsets.maple_range_pivot,
                    self.offsets.maple_range_slot,
                    16usize,
                    true,
                ),
                2 => (
                    self.offsets.maple_range_pivot,
                    self.offsets.maple_range_slot,
                    16usize,
                    false,
                ),
                3 => (
                    self.offsets.maple_arange_pivot,
                    self.offsets.maple_arange_slot,
                    10usize,
                    false,
                ),
                _ => {
                    return Err(LinuxError::MapleTreeCorrupt(
                        "a maple node of an unknown type",
                    ));
                }
            };
            if !is_kernel_pointer(node) {
                return Err(LinuxError::ListPointer {
                    list: "maple tree",
                    at: Va(node),
                });
            }
            if slot == 0 {
                // at most MAX_LIST + 1: the check below ends the walk
                nodes = nodes.saturating_add(1);
                if nodes > MAX_LIST {
                    return Err(LinuxError::ListTooLong { list: "maple tree" });
                }
            }
            // the next slot in use: its range [lo, hi]
            let mut i = slot;
            let mut lo = min;
            let mut descend = None;
            let mut done = true;
            // The 8-byte word `k` of a node's array at `base`; `k` is a slot number, at
            // most 16 (a resume point is at most `nslots`), so 8k cannot wrap.
            let word = |base: u64, k: usize| {
                node.wrapping_add(base)
                    .wrapping_add((k as u64).wrapping_mul(8))
            };
            if let Some(before) = i.checked_sub(1) {
                lo = mem.u64(word(pivots, before))?.wrapping_add(1);
            }
            while i < nslots {
                // `i < nslots <= 16`: one more does not saturate
                let next = i.saturating_add(1);
                let hi = if next < nslots {
                    mem.u64(word(pivots, i))?
                } else {
                    max
                };
                if i > 0 && hi == 0 {
                    break; // past the node's last entry
                }
                let entry = mem.u64(word(slots, i))?;
                let hi = hi.min(max);
                if entry != 0 {
                    if leaf {
                        if each(entry)?.is_break() {
                            return Ok(());
                        }
                    } else {
                        descend = Some((entry, lo, hi, if hi >= max { nslots } else { next }));
                        done = false;
                        break;
                    }
                }
                if hi >= max {
                    break;
                }
                lo = hi.wrapping_add(1);
                i = next;
            }
            match descend {
                Some((child, clo, chi, resume)) if !done => {
                    // a child is an encoded node without the root bit: its type is
                    // checked when it is visited
                    if let Some(top) = stack.get_mut(depth) {
                        top.3 = resume;
                    }
                    // a stack index: past the stack's end the next line refuses it
                    depth = depth.saturating_add(1);
                    let Some(next) = stack.get_mut(depth) else {
                        return Err(LinuxError::MapleTreeCorrupt(
                            "maple tree deeper than MAPLE_DEPTH_MAX",
                        ));
                    };
                    *next = (child, clo, chi, 0);
                }
                _ => {
                    // back up to the parent; past the root the walk is done
                    let Some(parent) = depth.checked_sub(1) else {
                        return Ok(());
                    };
                    depth = parent;
                }
            }
        }
    }
}
