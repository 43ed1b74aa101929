//! The struct layouts the layer needs, read from BTF once.

use crate::driver::VmiDriver;
use crate::vmi::VmiCore;

use super::LinuxError;
use super::btf::{Btf, BtfStruct};

/// Member offsets (bytes) and sizes of the kernel structs the layer reads.
///
/// Where kernels differ, the field is an `Option` or an enum-like choice:
/// `task_struct.__state` (5.14 on) or `.state`; VMAs in a maple tree (`mm_struct.mm_mt`,
/// 6.1 on) or a list (`mm_struct.mmap`); module memory as `module.mem[]` (6.4 on) or
/// `module.core_layout`/`init_layout`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[allow(missing_docs)] // each field is `struct_member`
pub struct Offsets {
    pub task_struct_size: u64,
    pub task_tasks: u64,
    pub task_pid: u64,
    pub task_tgid: u64,
    pub task_comm: u64,
    pub task_real_parent: u64,
    pub task_group_leader: u64,
    pub task_state: u64,
    pub task_mm: u64,
    pub task_active_mm: u64,
    pub task_signal: u64,
    pub task_thread_node: u64,
    pub task_flags: u64,
    pub signal_thread_head: u64,
    pub mm_pgd: u64,
    /// `mm_struct.mm_mt.ma_root`, 6.1 on.
    pub mm_mt_root: Option<u64>,
    /// `mm_struct.mmap`, before 6.1.
    pub mm_mmap: Option<u64>,
    pub vma_start: u64,
    pub vma_end: u64,
    pub vma_flags: u64,
    pub vma_file: u64,
    /// `vm_area_struct.vm_next`, before 6.1.
    pub vma_next: Option<u64>,
    /// `file.f_path.dentry`.
    pub file_dentry: u64,
    /// `dentry.d_name.name`.
    pub dentry_name: u64,
    pub module_list: u64,
    pub module_name: u64,
    /// `module.mem[]`: offset, element size, count (6.4 on).
    pub module_mem: Option<(u64, u64, u32)>,
    /// `module_memory.base`, `.size`.
    pub module_memory_base: u64,
    pub module_memory_size: u64,
    /// `module.core_layout`, `module.init_layout` (before 6.4).
    pub module_core_layout: Option<u64>,
    pub module_init_layout: Option<u64>,
    /// `module_layout.base`, `.size`.
    pub module_layout_base: u64,
    pub module_layout_size: u64,
    /// `pcpu_hot.current_task` (6.2 to 6.14).
    pub pcpu_hot_current_task: Option<u64>,
    /// `maple_range_64.pivot`, `.slot` and `maple_arange_64.pivot`, `.slot`.
    pub maple_range_pivot: u64,
    pub maple_range_slot: u64,
    pub maple_arange_pivot: u64,
    pub maple_arange_slot: u64,
}

const STRUCTS: [&str; 14] = [
    "task_struct",
    "signal_struct",
    "mm_struct",
    "vm_area_struct",
    "file",
    "path",
    "dentry",
    "qstr",
    "module",
    "module_memory",
    "module_layout",
    "pcpu_hot",
    "maple_range_64",
    "maple_arange_64",
];

impl Offsets {
    /// Reads the layouts from `btf` (one pass for the structs, then one lookup per
    /// member).
    ///
    /// # Errors
    /// [`LinuxError::BtfTypeNotFound`] or [`LinuxError::BtfMemberNotFound`] for a struct
    /// or member every supported kernel has; as [`Btf::member`].
    pub fn from_btf<D: VmiDriver>(core: &VmiCore<D>, btf: &Btf) -> Result<Self, LinuxError> {
        let mut s: [Option<BtfStruct>; 14] = [None; 14];
        btf.structs(core, &STRUCTS, &mut s)?;
        let need = |i: usize| {
            s.get(i)
                .copied()
                .flatten()
                .ok_or(LinuxError::BtfTypeNotFound)
        };
        let [task, signal, mm, vma, file, path, dentry, qstr] = [
            need(0)?,
            need(1)?,
            need(2)?,
            need(3)?,
            need(4)?,
            need(5)?,
            need(6)?,
            need(7)?,
        ];
        let m = |st: BtfStruct, name: &str| btf.member(core, st.id, name).map(|m| m.offset);
        let opt = |st: BtfStruct, name: &str| match btf.member(core, st.id, name) {
            Ok(m) => Ok(Some(m.offset)),
            Err(LinuxError::BtfMemberNotFound) => Ok(None),
            Err(e) => Err(e),
        };
        let state = match opt(task, "__state")? {
            Some(o) => o,
            None => m(task, "state")?,
        };
        let mut o = Self {
            task_struct_size: u64::from(task.size),
            task_tasks: m(task, "tasks")?,
            task_pid: m(task, "pid")?,
            task_tgid: m(task, "tgid")?,
            task_comm: m(task, "comm")?,
            task_real_parent: m(task, "real_parent")?,
            task_group_leader: m(task, "group_leader")?,
            task_state: state,
            task_mm: m(task, "mm")?,
            task_active_mm: m(task, "active_mm")?,
            task_signal: m(task, "signal")?,
            task_thread_node: m(task, "thread_node")?,
            task_flags: m(task, "flags")?,
            signal_thread_head: m(signal, "thread_head")?,
            mm_pgd: m(mm, "pgd")?,
            vma_start: m(vma, "vm_start")?,
            vma_end: m(vma, "vm_end")?,
            vma_flags: m(vma, "vm_flags")?,
            vma_file: m(vma, "vm_file")?,
            vma_next: opt(vma, "vm_next")?,
            file_dentry: m(file, "f_path")?.wrapping_add(m(path, "dentry")?),
            dentry_name: m(dentry, "d_name")?.wrapping_add(m(qstr, "name")?),
            ..Self::default()
        };
        o.mm_mt_root = match opt(mm, "mm_mt")? {
            Some(mt) => {
                let tree = btf.struct_named(core, "maple_tree")?;
                Some(mt.wrapping_add(m(tree, "ma_root")?))
            }
            None => None,
        };
        o.mm_mmap = if o.mm_mt_root.is_none() {
            opt(mm, "mmap")?
        } else {
            None
        };
        if let Some(module) = s.get(8).copied().flatten() {
            o.module_list = m(module, "list")?;
            o.module_name = m(module, "name")?;
            if let (Ok(mem), Some(mm_ty)) = (
                btf.member(core, module.id, "mem"),
                s.get(9).copied().flatten(),
            ) {
                let (_, count) = btf.array_of(core, mem.type_id)?;
                o.module_mem = Some((mem.offset, u64::from(mm_ty.size), count));
                o.module_memory_base = m(mm_ty, "base")?;
                o.module_memory_size = m(mm_ty, "size")?;
            } else if let Some(layout) = s.get(10).copied().flatten() {
                o.module_core_layout = opt(module, "core_layout")?;
                o.module_init_layout = opt(module, "init_layout")?;
                o.module_layout_base = m(layout, "base")?;
                o.module_layout_size = m(layout, "size")?;
            }
        }
        if let Some(hot) = s.get(11).copied().flatten() {
            o.pcpu_hot_current_task = opt(hot, "current_task")?;
        }
        // maple nodes: from BTF when present, else the layout every 64-bit kernel has
        let (rp, rs, ap, asl) = match (s.get(12).copied().flatten(), s.get(13).copied().flatten()) {
            (Some(r), Some(a)) => (m(r, "pivot")?, m(r, "slot")?, m(a, "pivot")?, m(a, "slot")?),
            _ => (8, 128, 8, 80),
        };
        o.maple_range_pivot = rp;
        o.maple_range_slot = rs;
        o.maple_arange_pivot = ap;
        o.maple_arange_slot = asl;
        Ok(o)
    }
}
