//! Synthetic Linux guests for the `os::linux` tests: a kernel image with real-format
//! kallsyms tables (token-compressed names, markers, seqs_of_names, per-CPU encoded
//! offsets, in the 6.1 or the 6.12 order), a BTF blob of the structs the layer reads
//! (unnamed members, typedefs, bitfields, functions), a task list, a module list, a
//! maple tree of VMAs, the direct map in large pages, decoys of the anchors, and an
//! optional VMCOREINFO page, all laid out by [`GuestBuilder`] page tables.
//!
//! The layout of every struct is chosen here and recorded in [`Fixture`], so a test can
//! corrupt exactly one thing and expect the named error for it.

use std::collections::BTreeMap;

use introvisor::{Pa, Va};
use introvisor_host::builder::{GuestBuilder, MapFlags, PageSize};

/// The kallsyms table order to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KsLayout {
    /// offsets, relative_base, num_syms, names, markers, token_table, token_index (6.1).
    OffsetsFirst,
    /// As `OffsetsFirst` with seqs_of_names before the token table (6.2, 6.3, Debian 6.1).
    OffsetsFirstWithSeqs,
    /// num_syms, names, markers, token_table, token_index, offsets, relative_base, seqs (6.4+).
    OffsetsLast,
}

/// What to build.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// 4 or 5.
    pub levels: u8,
    /// The kallsyms order.
    pub layout: KsLayout,
    /// KASLR slide of the image (2 MiB multiple).
    pub slide: u64,
    /// Physical address of `_text` (2 MiB multiple).
    pub pa_text: u64,
    /// `page_offset_base`.
    pub page_offset_base: u64,
    /// Modules as `mem[]` (6.4 on) rather than `core_layout`.
    pub module_mem: bool,
    /// `pcpu_hot.current_task` (6.2 on) rather than `current_task`.
    pub pcpu_hot: bool,
    /// Write a (correct) VMCOREINFO page.
    pub vmcoreinfo: bool,
    /// Page-table isolation on (the kernel PGD's user copy maps kernel space).
    pub pti: bool,
    /// Guest memory size.
    pub memory: usize,
    /// `__start_BTF`/`__stop_BTF` in kallsyms; without them the layer must scan, past a
    /// decoy BTF (valid, but without `task_struct`) placed before the real one.
    pub btf_symbols: bool,
}

impl Spec {
    /// A 6.12-like guest: 4-level, KASLR, `mem[]`, `pcpu_hot`, no VMCOREINFO.
    pub fn v612() -> Self {
        Self {
            levels: 4,
            layout: KsLayout::OffsetsLast,
            slide: 0x2e0_0000,
            pa_text: 0x120_0000,
            page_offset_base: 0xffff_9a4d_8000_0000,
            module_mem: true,
            pcpu_hot: true,
            vmcoreinfo: false,
            pti: true,
            memory: 40 << 20,
            btf_symbols: true,
        }
    }

    /// A Debian-6.1-like guest: 5-level, no KASLR, `core_layout`, `current_task`,
    /// VMCOREINFO.
    pub fn v61() -> Self {
        Self {
            levels: 5,
            layout: KsLayout::OffsetsFirstWithSeqs,
            slide: 0,
            pa_text: 0x100_0000,
            page_offset_base: 0xff11_0000_0000_0000,
            module_mem: false,
            pcpu_hot: false,
            vmcoreinfo: true,
            pti: false,
            memory: 40 << 20,
            btf_symbols: true,
        }
    }
}

/// One expected process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedTask {
    /// Its `task_struct`.
    pub task: u64,
    /// pid, tgid, ppid.
    pub pid: u32,
    /// tgid.
    pub tgid: u32,
    /// ppid.
    pub ppid: u32,
    /// comm.
    pub comm: String,
    /// pgd (physical), the kernel's for kernel threads.
    pub pgd: u64,
    /// The node of its `tasks` list entry.
    pub tasks_node: u64,
}

/// A built guest and what it holds.
pub struct Fixture {
    /// Guest memory.
    pub memory: Vec<u8>,
    /// The spec.
    pub spec: Spec,
    /// `_text`.
    pub text: u64,
    /// `_end`.
    pub end: u64,
    /// The kernel PGD (physical), `init_top_pgt`.
    pub root: u64,
    /// Every symbol (address, type, name) in table order.
    pub symbols: Vec<(u64, char, String)>,
    /// Physical addresses of the kallsyms tables.
    pub ks_names: u64,
    /// `kallsyms_markers`.
    pub ks_markers: u64,
    /// `kallsyms_token_table`.
    pub ks_token_table: u64,
    /// `kallsyms_token_index`.
    pub ks_token_index: u64,
    /// `kallsyms_offsets`.
    pub ks_offsets: u64,
    /// The BTF blob (physical) and length.
    pub btf: (u64, u64),
    /// The record of task_struct's unnamed `{ pid; tgid; }` member (physical) and its id.
    pub btf_pid_struct: (u64, u32),
    /// The processes, in list order (init_task not included).
    pub tasks: Vec<ExpectedTask>,
    /// Threads of the process at `tasks[threads.0]`: their pids.
    pub threads: (usize, Vec<u32>),
    /// Modules: name, base, size, in list order.
    pub modules: Vec<(String, u64, u64)>,
    /// VMAs of the process at `tasks[vmas.0]`: start, end, flags, file name.
    pub vmas: (usize, Vec<(u64, u64, u64, String)>),
    /// The task `current_task` points to.
    pub current: u64,
    /// The per-CPU base (`__per_cpu_offset[0]`).
    pub per_cpu: u64,
    /// Member offsets used, for corruption tests.
    pub off: TaskLayout,
}

/// The struct layouts the fixture uses (bytes).
#[derive(Clone, Copy, Debug)]
#[allow(missing_docs)]
pub struct TaskLayout {
    pub task_size: u64,
    pub state: u64,
    pub flags: u64,
    pub tasks: u64,
    pub mm: u64,
    pub active_mm: u64,
    pub pid: u64,
    pub tgid: u64,
    pub real_parent: u64,
    pub group_leader: u64,
    pub thread_node: u64,
    pub comm: u64,
    pub signal: u64,
    pub mm_mt: u64,
    pub mm_pgd: u64,
    pub module_list: u64,
    pub module_name: u64,
}

const TL: TaskLayout = TaskLayout {
    task_size: 0x980,
    state: 0x18,
    flags: 0x2c,
    tasks: 0x490,
    mm: 0x4e0,
    active_mm: 0x4e8,
    pid: 0x5a0,
    tgid: 0x5a4,
    real_parent: 0x5b0,
    group_leader: 0x5c0,
    thread_node: 0x640,
    comm: 0x748,
    signal: 0x7a8,
    mm_mt: 0x40,
    mm_pgd: 0x90,
    module_list: 8,
    module_name: 24,
};

// ----- a little writer ------------------------------------------------------------------

struct Blob(Vec<u8>);

impl Blob {
    fn align(&mut self, a: usize) {
        while !self.0.len().is_multiple_of(a) {
            self.0.push(0);
        }
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn pos(&self) -> u64 {
        self.0.len() as u64
    }
}

// ----- kallsyms ---------------------------------------------------------------------------

/// Compresses like scripts/kallsyms: bytes used in names stand for themselves; unused
/// byte values get the most frequent pairs, repeatedly (so tokens expand to tokens).
fn compress(entries: &[Vec<u8>]) -> (Vec<Vec<u8>>, [Vec<u8>; 256]) {
    let mut data: Vec<Vec<u8>> = entries.to_vec();
    let mut table: [Vec<u8>; 256] = core::array::from_fn(|_| Vec::new());
    let mut used = [false; 256];
    for e in &data {
        for &b in e {
            used[b as usize] = true;
        }
    }
    for c in 0..256 {
        if used[c] {
            table[c] = vec![c as u8];
        }
    }
    for code in 0..256usize {
        if used[code] {
            continue;
        }
        let mut freq: BTreeMap<(u8, u8), usize> = BTreeMap::new();
        for e in &data {
            for w in e.windows(2) {
                *freq.entry((w[0], w[1])).or_default() += 1;
            }
        }
        let Some((&(a, b), &n)) = freq
            .iter()
            .max_by_key(|(k, n)| (**n, core::cmp::Reverse(**k)))
        else {
            break;
        };
        if n < 2 {
            break;
        }
        let mut t = table[a as usize].clone();
        t.extend_from_slice(&table[b as usize]);
        table[code] = t;
        used[code] = true;
        for e in &mut data {
            let mut out = Vec::with_capacity(e.len());
            let mut i = 0;
            while i < e.len() {
                if i + 1 < e.len() && e[i] == a && e[i + 1] == b {
                    out.push(code as u8);
                    i += 2;
                } else {
                    out.push(e[i]);
                    i += 1;
                }
            }
            *e = out;
        }
    }
    // scripts/kallsyms fills unused codes too; give the rest a one-byte token of
    // their own so the index is strictly increasing
    for t in table.iter_mut().filter(|t| t.is_empty()) {
        *t = vec![b'~'];
    }
    (data, table)
}

struct KsOut {
    blob: Vec<u8>,
    names: u64,
    markers: u64,
    token_table: u64,
    token_index: u64,
    offsets: u64,
}

/// Writes the kallsyms tables at `base_va` (8-aligned), symbols sorted by address.
fn kallsyms_tables(syms: &[(u64, char, String)], layout: KsLayout, relative_base: u64) -> KsOut {
    let entries: Vec<Vec<u8>> = syms
        .iter()
        .map(|(_, t, n)| {
            let mut v = vec![*t as u8];
            v.extend_from_slice(n.as_bytes());
            v
        })
        .collect();
    let (compressed, table) = compress(&entries);
    let mut b = Blob(Vec::new());
    let n = syms.len();
    let write_offsets = |b: &mut Blob| -> u64 {
        b.align(8);
        let at = b.pos();
        for (addr, _, _) in syms {
            let off: u32 = if *addr < relative_base {
                *addr as u32 // per-CPU: absolute
            } else {
                (relative_base.wrapping_sub(1).wrapping_sub(*addr)) as i64 as i32 as u32
            };
            b.u32(off);
        }
        b.align(8);
        b.u64(relative_base);
        at
    };
    let write_seqs = |b: &mut Blob| {
        b.align(8);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&x, &y| syms[x].2.cmp(&syms[y].2).then(x.cmp(&y)));
        for i in order {
            b.0.extend_from_slice(&(i as u32).to_be_bytes()[1..]);
        }
    };
    let mut offsets = 0;
    if layout != KsLayout::OffsetsLast {
        offsets = write_offsets(&mut b);
    }
    b.align(8);
    b.u32(n as u32);
    b.align(8);
    let names = b.pos();
    let mut markers = Vec::new();
    let mut off = 0u32;
    for (i, e) in compressed.iter().enumerate() {
        if i % 256 == 0 {
            markers.push(off);
        }
        if e.len() > 127 {
            b.0.push(0x80 | (e.len() & 0x7f) as u8);
            b.0.push((e.len() >> 7) as u8);
            off += 2;
        } else {
            b.0.push(e.len() as u8);
            off += 1;
        }
        b.0.extend_from_slice(e);
        off += e.len() as u32;
    }
    b.align(8);
    let markers_at = b.pos();
    for m in markers {
        b.u32(m);
    }
    if layout == KsLayout::OffsetsFirstWithSeqs {
        write_seqs(&mut b);
    }
    b.align(8);
    let token_table = b.pos();
    let mut index = Vec::new();
    let mut toff = 0u16;
    for t in &table {
        index.push(toff);
        b.0.extend_from_slice(t);
        b.0.push(0);
        toff += t.len() as u16 + 1;
    }
    b.align(8);
    let token_index = b.pos();
    for i in index {
        b.u16(i);
    }
    if layout == KsLayout::OffsetsLast {
        offsets = write_offsets(&mut b);
        write_seqs(&mut b);
    }
    b.align(8);
    KsOut {
        blob: b.0,
        names,
        markers: markers_at,
        token_table,
        token_index,
        offsets,
    }
}

// ----- BTF ---------------------------------------------------------------------------------

struct BtfW {
    types: Blob,
    strs: Vec<u8>,
    next: u32,
}

impl BtfW {
    fn new() -> Self {
        Self {
            types: Blob(Vec::new()),
            strs: vec![0],
            next: 1,
        }
    }
    fn s(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let at = self.strs.len() as u32;
        self.strs.extend_from_slice(name.as_bytes());
        self.strs.push(0);
        at
    }
    fn head(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, size_or_type: u32) -> u32 {
        let n = self.s(name);
        self.types.u32(n);
        self.types
            .u32((kind << 24) | vlen | if kflag { 1 << 31 } else { 0 });
        self.types.u32(size_or_type);
        let id = self.next;
        self.next += 1;
        id
    }
    fn int(&mut self, name: &str, size: u32) -> u32 {
        let id = self.head(name, 1, 0, false, size);
        self.types.u32(size * 8);
        id
    }
    fn ptr(&mut self, to: u32) -> u32 {
        self.head("", 2, 0, false, to)
    }
    fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
        let id = self.head("", 3, 0, false, 0);
        self.types.u32(elem);
        self.types.u32(index);
        self.types.u32(n);
        id
    }
    fn modifier(&mut self, kind: u32, name: &str, to: u32) -> u32 {
        self.head(name, kind, 0, false, to)
    }
    /// members: (name, type, byte offset)
    fn compound(&mut self, kind: u32, name: &str, size: u32, members: &[(&str, u32, u64)]) -> u32 {
        let id = self.head(name, kind, members.len() as u32, false, size);
        for (n, t, off) in members {
            let ns = self.s(n);
            self.types.u32(ns);
            self.types.u32(*t);
            self.types.u32((*off * 8) as u32);
        }
        id
    }
    fn finish(self) -> Vec<u8> {
        let mut out = Blob(Vec::new());
        out.u16(0xeb9f);
        out.0.push(1);
        out.0.push(0);
        out.u32(24);
        out.u32(0);
        out.u32(self.types.0.len() as u32);
        out.u32(self.types.0.len() as u32);
        out.u32(self.strs.len() as u32);
        out.0.extend_from_slice(&self.types.0);
        out.0.extend_from_slice(&self.strs);
        out.0
    }
}

/// The BTF blob, and the offset and id of the unnamed `{ pid; tgid; }` struct's record.
fn btf_blob(spec: &Spec) -> (Vec<u8>, u64, u32) {
    let mut w = BtfW::new();
    let int = w.int("int", 4);
    let uint = w.int("unsigned int", 4);
    let ulong = w.int("long unsigned int", 8);
    let ch = w.int("char", 1);
    let u32t = w.modifier(8, "u32", uint);
    let void_p = w.ptr(0);
    let idx = w.int("__ARRAY_SIZE_TYPE__", 4);
    let comm_t = w.array(ch, idx, 16);
    let name56 = w.array(ch, idx, 56);
    // forward-declared pointers get their ids later; BTF allows forward references
    let lh = w.next; // list_head
    let lh_p = lh + 1;
    w.compound(4, "list_head", 16, &[("next", lh_p, 0), ("prev", lh_p, 8)]);
    w.ptr(lh);
    // a decoy struct named like a member, and a FUNC_PROTO / FUNC
    let proto = w.head("", 13, 1, false, int);
    w.types.u32(0);
    w.types.u32(int);
    w.head("schedule", 12, 0, false, proto);
    // enum with two values
    let e = w.head("task_state", 6, 2, false, 4);
    let _ = e;
    let a = w.s("TASK_RUNNING");
    w.types.u32(a);
    w.types.u32(0);
    let b = w.s("TASK_INTERRUPTIBLE");
    w.types.u32(b);
    w.types.u32(1);
    let task = w.next + 4; // ids below: anon struct for pid/tgid, task ptr, const task ptr, mm ptr
    let task_p = w.ptr(task);
    let const_task = w.modifier(10, "", task);
    let const_task_p = w.ptr(const_task);
    let pidt = w.modifier(8, "pid_t", int);
    assert_eq!(w.next, task);
    let mm = task + 5;
    let signal = task + 10;
    w.compound(
        4,
        "task_struct",
        TL.task_size as u32,
        &[
            ("__state", uint, TL.state),
            ("flags", uint, TL.flags),
            ("tasks", lh, TL.tasks),
            ("mm", mm + 1, TL.mm),
            ("active_mm", mm + 1, TL.active_mm),
            ("", task + 1, TL.pid), // unnamed struct { pid; tgid; }
            ("real_parent", task_p, TL.real_parent),
            ("parent", task_p, TL.real_parent + 8),
            ("group_leader", task_p, TL.group_leader),
            ("thread_node", lh, TL.thread_node),
            ("comm", comm_t, TL.comm),
            ("signal", signal + 1, TL.signal),
        ],
    );
    let anon_off = 24 + w.types.pos();
    let anon_id = w.next;
    w.compound(4, "", 8, &[("pid", pidt, 0), ("tgid", pidt, 4)]);
    let _ = const_task_p;
    // padding ids so mm == task + 5
    w.modifier(9, "", int);
    w.modifier(11, "", void_p);
    w.int("_Bool", 1);
    assert_eq!(w.next, mm);
    // mm_struct { struct { ...; maple_tree mm_mt; ...; pgd; } ; cpu_bitmap }
    let mt = mm + 3;
    w.compound(
        4,
        "mm_struct",
        0x400,
        &[("", mm + 2, 0), ("cpu_bitmap", ulong, 0x3f8)],
    );
    w.ptr(mm);
    w.compound(
        4,
        "",
        0x3f0,
        &[
            ("mm_count", int, 0x38),
            ("mm_mt", mt, TL.mm_mt),
            ("pgd", void_p, TL.mm_pgd),
        ],
    );
    assert_eq!(w.next, mt);
    w.compound(
        4,
        "maple_tree",
        16,
        &[
            ("ma_lock", uint, 0),
            ("ma_flags", uint, 4),
            ("ma_root", void_p, 8),
        ],
    );
    w.head("signal_struct", 7, 0, false, 0); // a FWD before the body: must be skipped
    assert_eq!(w.next, signal);
    w.compound(
        4,
        "signal_struct",
        0x400,
        &[
            ("sigcnt", int, 0),
            ("nr_threads", int, 4),
            ("thread_head", lh, 0x10),
        ],
    );
    w.ptr(signal);
    // VMAs: vm_flags in an unnamed union
    let file = w.next + 4;
    let vma = w.next;
    w.compound(
        4,
        "vm_area_struct",
        0xb0,
        &[
            ("", vma + 1, 0),
            ("vm_mm", void_p, 0x10),
            ("", vma + 2, 0x20),
            ("vm_file", file + 1, 0x70),
        ],
    );
    w.compound(4, "", 16, &[("vm_start", ulong, 0), ("vm_end", ulong, 8)]);
    w.compound(
        5,
        "",
        8,
        &[("vm_flags", ulong, 0), ("__vm_flags", ulong, 0)],
    );
    w.ptr(vma);
    assert_eq!(w.next, file);
    let path = file + 2;
    w.compound(
        4,
        "file",
        0xe8,
        &[("f_mode", uint, 0x14), ("f_path", path, 0x18)],
    );
    w.ptr(file);
    let dentry = path + 1;
    w.compound(
        4,
        "path",
        16,
        &[("mnt", void_p, 0), ("dentry", dentry + 1, 8)],
    );
    w.compound(
        4,
        "dentry",
        0xc0,
        &[("d_flags", uint, 0), ("d_name", dentry + 2, 0x20)],
    );
    w.ptr(dentry);
    let qstr = dentry + 2;
    assert_eq!(w.next, qstr);
    // qstr { union { struct { u32 hash; u32 len; }; u64 hash_len; }; const unsigned char *name; }
    w.compound(4, "qstr", 16, &[("", qstr + 1, 0), ("name", void_p, 8)]);
    w.compound(5, "", 8, &[("", qstr + 2, 0), ("hash_len", ulong, 0)]);
    // a bitfield struct (kind_flag): hash:32, len:32
    let bf = w.head("", 4, 2, true, 8);
    let _ = bf;
    let h = w.s("hash");
    w.types.u32(h);
    w.types.u32(u32t);
    w.types.u32(32 << 24);
    let l = w.s("len");
    w.types.u32(l);
    w.types.u32(u32t);
    w.types.u32((32 << 24) | 32);
    // modules
    if spec.module_mem {
        let mm_ty = w.next;
        w.compound(
            4,
            "module_memory",
            0x50,
            &[("base", void_p, 0), ("size", uint, 8)],
        );
        let arr = w.array(mm_ty, idx, 7);
        w.compound(
            4,
            "module",
            0x500,
            &[
                ("state", int, 0),
                ("list", lh, TL.module_list),
                ("name", name56, TL.module_name),
                ("mem", arr, 0x140),
            ],
        );
    } else {
        let ml = w.next;
        w.compound(
            4,
            "module_layout",
            0x50,
            &[
                ("base", void_p, 0),
                ("size", uint, 8),
                ("text_size", uint, 12),
            ],
        );
        w.compound(
            4,
            "module",
            0x500,
            &[
                ("state", int, 0),
                ("list", lh, TL.module_list),
                ("name", name56, TL.module_name),
                ("core_layout", ml, 0x140),
                ("init_layout", ml, 0x190),
            ],
        );
    }
    if spec.pcpu_hot {
        w.compound(4, "pcpu_hot", 64, &[("", w.next + 1, 0)]);
        w.compound(5, "", 64, &[("", w.next + 1, 0), ("pad", ulong, 0)]);
        w.compound(
            4,
            "",
            64,
            &[("current_task", task_p, 0), ("preempt_count", int, 8)],
        );
    }
    (w.finish(), anon_off, anon_id)
}

// ----- the guest -----------------------------------------------------------------------------

/// Builds the guest.
///
/// # Panics
/// On a spec the builder cannot lay out (a test bug).
pub fn build(spec: Spec) -> Fixture {
    let text = 0xffff_ffff_8100_0000u64 + spec.slide;
    let image_len = 6u64 << 20;
    let end = text + image_len;
    let pa_text = spec.pa_text;
    let pa_of = |va: u64| va - text + pa_text;
    let mut b = GuestBuilder::with_levels(spec.memory, spec.levels);
    // page tables and slab come after the image
    b.set_next_free(Pa(pa_text + image_len));
    for i in 0..3 {
        let flags = if i == 0 {
            MapFlags::KERNEL_TEXT
        } else {
            MapFlags::KERNEL_DATA
        };
        b.map(
            Va(text + (i << 21)),
            Pa(pa_text + (i << 21)),
            PageSize::Size2M,
            flags,
        )
        .unwrap();
    }
    // direct map: 2 MiB pages, the first 2 MiB in 4 KiB pages
    let pob = spec.page_offset_base;
    for p in 0..512u64 {
        b.map(
            Va(pob + (p << 12)),
            Pa(p << 12),
            PageSize::Size4K,
            MapFlags::KERNEL_DATA,
        )
        .unwrap();
    }
    let mut pa = 2u64 << 20;
    while pa < spec.memory as u64 {
        b.map(
            Va(pob + pa),
            Pa(pa),
            PageSize::Size2M,
            MapFlags::KERNEL_DATA,
        )
        .unwrap();
        pa += 2 << 20;
    }
    let dm = |pa: u64| pob + pa;
    // the kernel's data section: fixed places
    let data = text + (4 << 20);
    let init_top_pgt = data;
    let init_task = data + 0x4000;
    let linux_banner = data + 0x6000;
    let modules_head = data + 0x6200;
    let page_offset_base_var = data + 0x6300;
    let per_cpu_offset = data + 0x6400;
    let phys_base_var = data + 0x6500;
    let rodata = text + (2 << 20);
    // symbols: per-CPU ones first (absolute), then text and data
    let mut syms: Vec<(u64, char, String)> = vec![
        (0, 'A', "fixed_percpu_data".into()),
        (0, 'A', "__per_cpu_start".into()),
        (0x1000, 'A', "cpu_debug_store".into()),
        (0x1a000, 'A', "pcpu_hot".into()),
        (0x2ad80, 'A', "current_task".into()),
    ];
    if spec.pcpu_hot {
        syms.retain(|s| s.2 != "current_task");
    } else {
        syms.retain(|s| s.2 != "pcpu_hot");
    }
    syms.push((text, 'T', "_text".into()));
    syms.push((text, 'T', "startup_64".into()));
    syms.push((text, 'T', "_stext".into()));
    for i in 0..700u64 {
        let kind = if i % 3 == 0 { 't' } else { 'T' };
        syms.push((
            text + 0x1000 + i * 0x40,
            kind,
            format!("sys_call_{:03}_handler", i),
        ));
    }
    syms.push((text + 0x20000, 'T', "schedule".into()));
    let long: String = (0..150)
        .map(|i| (b'a' + (i * 7 % 26) as u8) as char)
        .collect();
    syms.push((text + 0x20100, 't', format!("__long_{long}")));
    syms.push((text + 0x20200, 't', "dup_name".into()));
    syms.push((text + 0x20300, 't', "dup_name".into()));
    syms.push((text + 0x1f_0000, 'T', "_etext".into()));
    syms.push((rodata, 'R', "__start_rodata".into()));
    let btf_at = rodata + 0x10_0000;
    let (btf, anon_off, anon_id) = btf_blob(&spec);
    if spec.btf_symbols {
        syms.push((btf_at, 'R', "__start_BTF".into()));
        syms.push((btf_at + btf.len() as u64, 'R', "__stop_BTF".into()));
    }
    syms.push((init_top_pgt, 'D', "init_top_pgt".into()));
    syms.push((init_task, 'D', "init_task".into()));
    syms.push((linux_banner, 'D', "linux_banner".into()));
    syms.push((modules_head, 'd', "modules".into()));
    syms.push((page_offset_base_var, 'D', "page_offset_base".into()));
    syms.push((per_cpu_offset, 'D', "__per_cpu_offset".into()));
    syms.push((phys_base_var, 'D', "phys_base".into()));
    syms.push((end - 0x1000, 'B', "__bss_stop".into()));
    syms.push((end, 'B', "_end".into()));
    syms.sort_by_key(|s| s.0);
    let ks = kallsyms_tables(&syms, spec.layout, text);
    let ks_at = rodata + 0x1000;
    b.write_virtual(Va(ks_at), &ks.blob).unwrap();
    b.write_virtual(Va(btf_at), &btf).unwrap();
    {
        // a decoy: valid BTF (a module's, say) with no task_struct, before the real one
        let mut w = BtfW::new();
        let int = w.int("int", 4);
        w.compound(4, "dummy_priv", 8, &[("refs", int, 0), ("flags", int, 4)]);
        b.write_virtual(Va(btf_at - 0x8000), &w.finish()).unwrap();
    }
    // decoys: a digits run with no index, a "Linux version" string, a BTF-looking header
    b.write_physical(
        Pa(0x30_0000),
        b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00:\x00;\x00",
    )
    .unwrap();
    b.write_physical(Pa(0x30_1000), b"Linux version 0.0.0-decoy (nobody) #1\n\0")
        .unwrap();
    b.write_physical(
        Pa(0x30_2000),
        &[
            0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f,
        ],
    )
    .unwrap();
    b.write_physical(
        Pa(pa_of(rodata) + 0x800),
        b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00",
    )
    .unwrap();
    let release = if spec.module_mem {
        "6.12.0-synthetic"
    } else {
        "6.1.0-synthetic"
    };
    let banner =
        format!("Linux version {release} (builder@fixture) (gcc 12) #1 SMP PREEMPT_DYNAMIC\n\0");
    b.write_virtual(Va(linux_banner), banner.as_bytes())
        .unwrap();
    b.write_virtual(Va(page_offset_base_var), &pob.to_le_bytes())
        .unwrap();
    let phys_base = pa_text.wrapping_sub(text.wrapping_sub(0xffff_ffff_8000_0000));
    b.write_virtual(Va(phys_base_var), &phys_base.to_le_bytes())
        .unwrap();
    // per-CPU area in the direct map
    let pcpu_pa = b.alloc(0x40000, 0x1000).unwrap().0;
    let per_cpu = dm(pcpu_pa);
    b.write_virtual(Va(per_cpu_offset), &per_cpu.to_le_bytes())
        .unwrap();
    // tasks
    let new_task = |b: &mut GuestBuilder| dm(b.alloc(TL.task_size, 64).unwrap().0);
    let w64 =
        |b: &mut GuestBuilder, va: u64, v: u64| b.write_virtual(Va(va), &v.to_le_bytes()).unwrap();
    let w32 =
        |b: &mut GuestBuilder, va: u64, v: u32| b.write_virtual(Va(va), &v.to_le_bytes()).unwrap();
    struct T {
        va: u64,
        pid: u32,
        tgid: u32,
        comm: &'static str,
        mm: Option<usize>,
        kthread: bool,
    }
    let mut ts: Vec<T> = Vec::new();
    ts.push(T {
        va: init_task,
        pid: 0,
        tgid: 0,
        comm: "swapper/0",
        mm: None,
        kthread: true,
    });
    let plan: [(u32, usize, &str, Option<usize>, bool); 7] = [
        (1, 0, "init", Some(0), false),
        (2, 0, "kthreadd", None, true),
        (3, 2, "rcu_gp", None, true),
        (14, 2, "ksoftirqd/0", None, true),
        (85, 1, "sleep", Some(1), false),
        (88, 1, "sh", Some(2), false),
        (110, 88, "sleep", Some(3), false),
    ];
    for (pid, _parent, comm, mm, kthread) in plan {
        let va = new_task(&mut b);
        ts.push(T {
            va,
            pid,
            tgid: pid,
            comm,
            mm,
            kthread,
        });
    }
    // the parent indices above are pids: map to positions
    let pos_of_pid: BTreeMap<u32, usize> = ts.iter().enumerate().map(|(i, t)| (t.pid, i)).collect();
    // mms: a pgd page each (8 KiB with PTI), in the direct map
    let mut mms = Vec::new();
    let kernel_pgd = b.root().0;
    for _ in 0..4 {
        let mm_va = dm(b.alloc(0x400, 64).unwrap().0);
        let pgd_pa = b.alloc(0x2000, 0x2000).unwrap().0;
        // a process PGD shares the kernel half
        let mut upper = vec![0u8; 2048];
        upper.copy_from_slice(
            &b.memory()[(kernel_pgd + 2048) as usize..(kernel_pgd + 4096) as usize],
        );
        b.write_physical(Pa(pgd_pa + 2048), &upper).unwrap();
        w64(&mut b, mm_va + TL.mm_pgd, dm(pgd_pa));
        mms.push((mm_va, pgd_pa));
    }
    // threads of "sh" (pid 88): itself and 2 more (not on the tasks list)
    let sh = pos_of_pid[&88];
    let extra_threads: Vec<(u64, u32)> = vec![(new_task(&mut b), 89), (new_task(&mut b), 90)];
    // signal structs: one per process
    let mut expected = Vec::new();
    for i in 0..ts.len() {
        let t = &ts[i];
        let parent_pid = if i == 0 {
            0
        } else {
            ts[pos_of_pid[&(plan[i - 1].1 as u32)]].pid
        };
        let parent_va = if i == 0 {
            init_task
        } else {
            ts[pos_of_pid[&parent_pid]].va
        };
        let (va, pid, tgid, comm, mm, kthread) = (t.va, t.pid, t.tgid, t.comm, t.mm, t.kthread);
        w32(&mut b, va + TL.pid, pid);
        w32(&mut b, va + TL.tgid, tgid);
        w32(&mut b, va + TL.state, if pid == 88 { 0 } else { 1 });
        w32(
            &mut b,
            va + TL.flags,
            if kthread { 0x0020_8040 } else { 0x0040_0100 },
        );
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm.as_bytes());
        b.write_virtual(Va(va + TL.comm), &c).unwrap();
        w64(&mut b, va + TL.real_parent, parent_va);
        w64(&mut b, va + TL.real_parent + 8, parent_va);
        w64(&mut b, va + TL.group_leader, va);
        let mm_va = mm.map_or(0, |k| mms[k].0);
        w64(&mut b, va + TL.mm, mm_va);
        w64(
            &mut b,
            va + TL.active_mm,
            if mm_va == 0 { mms[0].0 } else { mm_va },
        );
        let sig = dm(b.alloc(0x400, 64).unwrap().0);
        w64(&mut b, va + TL.signal, sig);
        // thread ring: head in signal, nodes in tasks
        let mut ring = vec![va + TL.thread_node];
        if i == sh {
            for &(tv, tpid) in &extra_threads {
                w32(&mut b, tv + TL.pid, tpid);
                w32(&mut b, tv + TL.tgid, 88);
                b.write_virtual(Va(tv + TL.comm), &c).unwrap();
                w64(&mut b, tv + TL.real_parent, parent_va);
                w64(&mut b, tv + TL.group_leader, va);
                w64(&mut b, tv + TL.mm, mm_va);
                w64(&mut b, tv + TL.signal, sig);
                ring.push(tv + TL.thread_node);
            }
        }
        let head = sig + 0x10;
        let mut all = vec![head];
        all.extend(ring);
        for k in 0..all.len() {
            let next = all[(k + 1) % all.len()];
            let prev = all[(k + all.len() - 1) % all.len()];
            w64(&mut b, all[k], next);
            w64(&mut b, all[k] + 8, prev);
        }
        if i > 0 {
            expected.push(ExpectedTask {
                task: va,
                pid,
                tgid,
                ppid: parent_pid,
                comm: comm.to_string(),
                pgd: mm.map_or(kernel_pgd, |k| mms[k].1),
                tasks_node: va + TL.tasks,
            });
        }
    }
    // the tasks ring: init_task first
    let nodes: Vec<u64> = ts.iter().map(|t| t.va + TL.tasks).collect();
    for k in 0..nodes.len() {
        w64(&mut b, nodes[k], nodes[(k + 1) % nodes.len()]);
        w64(
            &mut b,
            nodes[k] + 8,
            nodes[(k + nodes.len() - 1) % nodes.len()],
        );
    }
    // current: "sh"
    let current = ts[sh].va;
    let cur_off = if spec.pcpu_hot { 0x1a000 } else { 0x2ad80 };
    w64(&mut b, per_cpu + cur_off, current);
    // modules in the module area, 4 KiB pages
    let mod_area = 0xffff_ffff_c000_0000u64 + (spec.slide >> 4);
    let mods = [("dummy", 0x6000u64), ("crc_itu_t", 0x3000u64)];
    let mut mod_vas = Vec::new();
    let mut expected_mods = Vec::new();
    let mut next_va = mod_area;
    for (name, size) in mods {
        let text_va = next_va;
        b.map_range(Va(text_va), size, MapFlags::KERNEL_DATA)
            .unwrap();
        let obj = text_va + size - 0x1000;
        let mut nm = [0u8; 56];
        nm[..name.len()].copy_from_slice(name.as_bytes());
        b.write_virtual(Va(obj + TL.module_name), &nm).unwrap();
        let total = if spec.module_mem {
            // mem[0] text, mem[1] data, mem[2] rodata; init ones 0
            let parts = [
                (text_va, 0x2000u32),
                (text_va + 0x2000, 0x1000),
                (text_va + 0x3000, 0x1000),
            ];
            for (k, (base, sz)) in parts.iter().enumerate() {
                let e = obj + 0x140 + k as u64 * 0x50;
                w64(&mut b, e, *base);
                w32(&mut b, e + 8, *sz);
            }
            parts.iter().map(|p| u64::from(p.1)).sum::<u64>()
        } else {
            w64(&mut b, obj + 0x140, text_va);
            w32(&mut b, obj + 0x148, size as u32);
            w64(&mut b, obj + 0x190, 0);
            w32(&mut b, obj + 0x198, 0);
            size
        };
        mod_vas.push(obj + TL.module_list);
        expected_mods.push((name.to_string(), text_va, total));
        next_va += size + 0x1000;
    }
    let ring: Vec<u64> = core::iter::once(modules_head)
        .chain(mod_vas.iter().copied())
        .collect();
    for k in 0..ring.len() {
        w64(&mut b, ring[k], ring[(k + 1) % ring.len()]);
        w64(&mut b, ring[k] + 8, ring[(k + ring.len() - 1) % ring.len()]);
    }
    // VMAs of "sh": a maple tree (arange root, two leaves)
    let sh_mm = mms[2].0;
    let vma_list: Vec<(u64, u64, u64, &str)> = vec![
        (0x40_0000, 0x40_1000, 0x71, "busybox"),
        (0x40_1000, 0x58_5000, 0x75, "busybox"),
        (0x5e_2000, 0x5e_5000, 0x73, "busybox"),
        (0x1cf7_1000, 0x1cf9_3000, 0x73, ""),
        (0x7f58_6406_5000, 0x7f58_6486_6000, 0x73, ""),
        (0x7ffd_8018_e000, 0x7ffd_801a_f000, 0x100173, ""),
    ];
    let mut vma_vas = Vec::new();
    let dentry = dm(b.alloc(0x100, 64).unwrap().0);
    let name_va = dm(b.alloc(16, 8).unwrap().0);
    b.write_virtual(Va(name_va), b"busybox\0").unwrap();
    w64(&mut b, dentry + 0x28, name_va);
    let file = dm(b.alloc(0x100, 64).unwrap().0);
    w64(&mut b, file + 0x18 + 8, dentry);
    for &(s, e, f, n) in &vma_list {
        let v = dm(b.alloc(0xb0, 64).unwrap().0);
        w64(&mut b, v, s);
        w64(&mut b, v + 8, e);
        w64(&mut b, v + 0x20, f);
        w64(&mut b, v + 0x70, if n.is_empty() { 0 } else { file });
        vma_vas.push(v);
    }
    let node = |b: &mut GuestBuilder| dm(b.alloc(256, 256).unwrap().0);
    let leaf1 = node(&mut b);
    let leaf2 = node(&mut b);
    let root = node(&mut b);
    // leaf 1: [0, 0x3fffff] empty, vma0, vma1, gap, vma2, gap, vma3; max 0x1cf92fff
    let l1: Vec<(u64, u64)> = vec![
        (0x3f_ffff, 0),
        (0x40_0fff, vma_vas[0]),
        (0x58_4fff, vma_vas[1]),
        (0x5e_1fff, 0),
        (0x5e_4fff, vma_vas[2]),
        (0x1cf7_0fff, 0),
        (0x1cf9_2fff, vma_vas[3]),
    ];
    let l2: Vec<(u64, u64)> = vec![
        (0x7f58_6406_4fff, 0),
        (0x7f58_6486_5fff, vma_vas[4]),
        (0x7ffd_8018_dfff, 0),
        (0x7ffd_801a_efff, vma_vas[5]),
        (u64::MAX, 0),
    ];
    for (leaf, entries) in [(leaf1, &l1), (leaf2, &l2)] {
        for (k, &(piv, slot)) in entries.iter().enumerate() {
            if k < 15 {
                w64(&mut b, leaf + 8 + 8 * k as u64, piv);
            }
            w64(&mut b, leaf + 128 + 8 * k as u64, slot);
        }
    }
    // arange root: pivots at 8, slots at 80
    w64(&mut b, root + 8, 0x1cf9_2fff);
    w64(&mut b, root + 16, u64::MAX);
    w64(&mut b, root + 80, leaf1 | (1 << 3));
    w64(&mut b, root + 88, leaf2 | (1 << 3));
    w64(&mut b, sh_mm + TL.mm_mt + 8, root | (3 << 3) | 2);
    // VMCOREINFO
    if spec.vmcoreinfo {
        let page = b.alloc(0x1000, 0x1000).unwrap().0;
        let text_s = format!(
            "OSRELEASE={release}\nPAGESIZE=4096\nSYMBOL(init_uts_ns)=ffffffff82bfb000\nSYMBOL(swapper_pg_dir)={init_top_pgt:x}\nSYMBOL(_stext)={text:x}\n\
NUMBER(pgtable_l5_enabled)={}\nKERNELOFFSET={:x}\nNUMBER(phys_base)={}\nSYMBOL(kallsyms_token_table)={:x}\nCRASHTIME=1764579000\n",
            u8::from(spec.levels == 5),
            spec.slide,
            phys_base as i64,
            ks_at + ks.token_table,
        );
        b.write_physical(Pa(page), text_s.as_bytes()).unwrap();
        // a decoy VMCOREINFO that fails its checks, earlier in memory
        b.write_physical(Pa(0x30_3000), b"OSRELEASE=9.9.9\nSYMBOL(swapper_pg_dir)=ffffffff81000000\nSYMBOL(_stext)=ffffffff81000000\nNUMBER(phys_base)=0\nKERNELOFFSET=0\n").unwrap();
    }
    let mut guest = b.finish();
    // init_top_pgt inside the image: a copy of the builder's root (PML4/PML5)
    let root_pa = guest.root.0 as usize;
    let top: Vec<u8> = guest.memory[root_pa..root_pa + 4096].to_vec();
    let itp = pa_of(init_top_pgt) as usize;
    guest.memory[itp..itp + 4096].copy_from_slice(&top);
    if spec.pti {
        // the user copy maps the cpu_entry_area slot (PGD index 508)
        let e = 508 * 8;
        guest.memory[itp + 4096 + e..itp + 4096 + e + 8].copy_from_slice(&top[2048..2056]);
        guest.memory[itp + 4096 + e] |= 1;
    }
    let root = pa_of(init_top_pgt);
    // kernel threads' pgd is init_top_pgt
    for t in &mut expected {
        if t.pgd == kernel_pgd {
            t.pgd = root;
        }
    }
    let vmas = vma_list
        .iter()
        .map(|&(s, e, f, n)| (s, e, f, n.to_string()))
        .collect();
    Fixture {
        memory: guest.memory,
        spec,
        text,
        end,
        root,
        symbols: syms,
        ks_names: pa_of(ks_at + ks.names),
        ks_markers: pa_of(ks_at + ks.markers),
        ks_token_table: pa_of(ks_at + ks.token_table),
        ks_token_index: pa_of(ks_at + ks.token_index),
        ks_offsets: pa_of(ks_at + ks.offsets),
        btf: (pa_of(btf_at), btf.len() as u64),
        btf_pid_struct: (pa_of(btf_at) + anon_off, anon_id),
        tasks: expected,
        threads: (pos_of_pid[&88] - 1, vec![88, 89, 90]),
        modules: expected_mods,
        vmas: (pos_of_pid[&88] - 1, vmas),
        current,
        per_cpu,
        off: TL,
    }
}
