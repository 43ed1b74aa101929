//! `os::linux` on real Linux guests: what introvisor reads from the dump alone equals
//! what the guest said about itself at dump time.
//!
//! `host-test/real-guest/capture.sh` boots five guests under QEMU (Debian 12's 6.1 and
//! bookworm-backports' 6.12; KASLR on and off; `pti=on`; 4- and 5-level paging), each
//! with two modules of its kernel package loaded, and records from inside the guest,
//! as the last thing before the host stops it: `procstat.txt` (every `/proc/PID/stat`),
//! `modules.txt` (`/proc/modules`), `ksample.txt` (every 500th core-kernel line of
//! `/proc/kallsyms` and some named ones, read with `kptr_restrict=0`), and `maps.txt`
//! (the spinner's `/proc/PID/maps`).
//!
//! For each guest this test finds the kernel twice, once with the vCPU's CR3 and the
//! guest's VMCOREINFO and once from physical memory alone (`ignore_vmcoreinfo`, no CR3),
//! expects the same kernel both times, and then holds against the records:
//! - the process list: the same pids with the same parents; the same names, except that
//!   `/proc` shows a kernel thread's full name where `task_struct.comm` holds its first
//!   15 bytes, and a workqueue worker's name with `-<workqueue>` appended;
//! - the page-table root: the spinner (on the vCPU when it was stopped) has `mm->pgd`
//!   (or, with PTI, its user copy) equal to CR3; every user process a distinct root; every
//!   kernel thread the kernel's; the current task is the spinner;
//! - the module list, name, size and address, in order;
//! - every sampled symbol, address and type;
//! - the spinner's VMAs: start, end, rights, file name.
//!
//! With no capture it prints a SKIP line and passes, unless
//! `INTROVISOR_REQUIRE_REAL_GUEST=1` (set by `.ci/run` when the capture succeeded).

use core::ops::ControlFlow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use introvisor::VmiCore;
use introvisor::arch::amd64::PagingMode;
use introvisor::os::linux::{FindHint, LinuxOs, Task};
use introvisor_host::dump;

const GUESTS: [&str; 5] = ["l4", "l5", "k61-kaslr-pti", "k612-l4", "k612-l5-kaslr-pti"];

fn fixture_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("INTROVISOR_REAL_GUEST_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    Path::new(&home).join(".cache/introvisor/real-guest")
}

/// `/proc/PID/stat` lines: pid -> (ppid, comm). The comm is between the first '(' and
/// the last ')', as it may hold both.
fn parse_procstat(text: &str) -> Result<BTreeMap<u32, (u32, String)>, String> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (open, close) = (line.find('(').ok_or(line)?, line.rfind(')').ok_or(line)?);
        let pid = line[..open]
            .trim()
            .parse::<u32>()
            .map_err(|e| format!("{line}: {e}"))?;
        let rest: Vec<&str> = line[close + 1..].split_whitespace().collect();
        let ppid = rest
            .get(1)
            .ok_or(line)?
            .parse::<u32>()
            .map_err(|e| format!("{line}: {e}"))?;
        out.insert(pid, (ppid, line[open + 1..close].to_string()));
    }
    Ok(out)
}

/// Whether `/proc`'s name for a task is the name `task_struct.comm` holds.
fn same_comm(proc_comm: &str, comm: &str, kernel_thread: bool) -> bool {
    proc_comm == comm
        || (kernel_thread && comm.len() == 15 && proc_comm.starts_with(comm))
        || (kernel_thread
            && comm.starts_with("kworker/")
            && proc_comm.starts_with(&format!("{comm}-")))
}

/// Differences between the tasks read and the guest's `/proc/*/stat`.
fn compare_processes(tasks: &[Task], procstat: &str) -> Result<Vec<String>, String> {
    let proc = parse_procstat(procstat)?;
    let mut problems = Vec::new();
    let ours: BTreeMap<u32, &Task> = tasks.iter().map(|t| (t.pid, t)).collect();
    if ours.len() != tasks.len() {
        problems.push("a pid appears twice in the task list".to_string());
    }
    for (pid, (ppid, comm)) in &proc {
        match ours.get(pid) {
            None => problems.push(format!(
                "pid {pid} ({comm}) is in /proc but not in the task list"
            )),
            Some(t) => {
                if t.ppid != *ppid {
                    problems.push(format!("pid {pid}: ppid {} vs /proc {ppid}", t.ppid));
                }
                if !same_comm(comm, t.comm_str(), t.is_kernel_thread()) {
                    problems.push(format!(
                        "pid {pid}: comm {:?} vs /proc {comm:?}",
                        t.comm_str()
                    ));
                }
            }
        }
    }
    for pid in ours.keys().filter(|p| !proc.contains_key(p)) {
        problems.push(format!("pid {pid} is in the task list but not in /proc"));
    }
    Ok(problems)
}

fn read(dir: &Path, name: &str) -> Result<String, String> {
    std::fs::read_to_string(dir.join(name)).map_err(|e| format!("{name}: {e}"))
}

fn layout_value(layout: &str, key: &str) -> Option<String> {
    layout.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(' '))
            .map(str::to_string)
    })
}

fn check_guest(dir: &Path) -> Result<String, Vec<String>> {
    let fail = |e: String| vec![e];
    let (driver, info) =
        dump::open(dir.join("dump.elf")).map_err(|e| fail(format!("open: {e}")))?;
    let regs = info
        .vcpus
        .first()
        .map(|v| v.registers)
        .ok_or_else(|| fail("no vCPU".into()))?;
    let core = VmiCore::new(driver);
    let mut scratch = vec![0u8; 1 << 20];
    let hint = FindHint {
        cr3: Some(regs.translation_root()),
        mode: Some(regs.paging_mode()),
        ..FindHint::default()
    };
    let os = LinuxOs::find(&core, hint, &mut scratch).map_err(|e| fail(format!("find: {e}")))?;
    let alone = LinuxOs::find(
        &core,
        FindHint {
            ignore_vmcoreinfo: true,
            ..FindHint::default()
        },
        &mut scratch,
    )
    .map_err(|e| fail(format!("find from memory alone: {e}")))?;
    let mut problems = Vec::new();
    if alone.space != os.space {
        problems.push(format!(
            "memory alone found {:?}, with hints {:?}",
            alone.space, os.space
        ));
    }
    let mode = if read(dir, "mode.txt").map_err(fail)?.trim() == "5" {
        PagingMode::Level5
    } else {
        PagingMode::Level4
    };
    if os.space.mode != mode {
        problems.push(format!(
            "paging {:?}, the guest ran {mode:?}",
            os.space.mode
        ));
    }
    let layout = read(dir, "layout.txt").map_err(fail)?;
    let cmdline = layout_value(&layout, "cmdline").unwrap_or_default();
    let uname = layout_value(&layout, "uname").unwrap_or_default();
    if !uname.contains(os.release()) || os.release().is_empty() {
        problems.push(format!("release {:?} not in uname {uname:?}", os.release()));
    }
    let kaslr = !cmdline.contains("nokaslr");
    if kaslr == (os.space.kaslr_slide() == 0) {
        problems.push(format!(
            "KASLR slide {:#x} with cmdline {cmdline:?}",
            os.space.kaslr_slide()
        ));
    }
    if os.pti != cmdline.contains("pti=on") {
        problems.push(format!("pti {} with cmdline {cmdline:?}", os.pti));
    }
    // processes
    let mut tasks = Vec::new();
    if let Err(e) = os.tasks(&core, |t| {
        tasks.push(*t);
        ControlFlow::Continue(())
    }) {
        return Err(fail(format!("tasks: {e}")));
    }
    problems.extend(
        compare_processes(&tasks, &read(dir, "procstat.txt").map_err(fail)?).map_err(fail)?,
    );
    let spinner: u32 = layout_value(&layout, "spinner_pid")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fail("no spinner_pid".into()))?;
    let cr3 = regs.cr3 & 0x000f_ffff_ffff_f000;
    let mut roots = BTreeSet::new();
    for t in &tasks {
        if t.is_kernel_thread() {
            if t.pgd != os.space.root {
                problems.push(format!("kernel thread {} has root {:?}", t.pid, t.pgd));
            }
        } else if !roots.insert(t.pgd) {
            problems.push(format!("pid {}: root {:?} shared", t.pid, t.pgd));
        }
        if t.pid == spinner {
            let root = t.user_pgd.unwrap_or(t.pgd).0;
            if root != cr3 {
                problems.push(format!("spinner {spinner}: root {root:#x}, CR3 {cr3:#x}"));
            }
        }
    }
    match os.current_task(&core, &regs) {
        Ok(t) if t.pid == spinner => {}
        Ok(t) => problems.push(format!(
            "current task {} {}, the spinner is {spinner}",
            t.pid,
            t.comm_str()
        )),
        Err(e) => problems.push(format!("current task: {e}")),
    }
    // modules: "name size refs deps state address"
    let mut mods = Vec::new();
    if let Err(e) = os.modules_list(&core, |m| {
        mods.push(format!("{} {} {:#x}", m.name_str(), m.size, m.base.0));
        ControlFlow::Continue(())
    }) {
        problems.push(format!("modules: {e}"));
    }
    let want_mods: Vec<String> = read(dir, "modules.txt")
        .map_err(fail)?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(format!("{} {} {}", f.first()?, f.get(1)?, f.get(5)?))
        })
        .collect();
    if mods != want_mods || mods.is_empty() {
        problems.push(format!("modules {mods:?}, /proc/modules {want_mods:?}"));
    }
    // symbols
    let mut by_name: HashMap<String, Vec<(u64, char)>> = HashMap::new();
    os.kallsyms
        .for_each(&core, |s| {
            by_name
                .entry(s.name_str().to_string())
                .or_default()
                .push((s.address, s.kind as char));
            ControlFlow::Continue(())
        })
        .map_err(|e| fail(format!("kallsyms: {e}")))?;
    let ksample = read(dir, "ksample.txt").map_err(fail)?;
    let mut sampled = 0;
    for line in ksample.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(a), Some(t), Some(n)) = (f.first(), f.get(1), f.get(2)) else {
            continue;
        };
        let addr = u64::from_str_radix(a, 16).map_err(|e| fail(format!("{line}: {e}")))?;
        let t = t.chars().next().unwrap_or('?');
        sampled += 1;
        if !by_name.get(*n).is_some_and(|v| v.contains(&(addr, t))) {
            problems.push(format!(
                "symbol {n} {t} {addr:#x}: introvisor has {:x?}",
                by_name.get(*n)
            ));
        }
    }
    if sampled < 100 {
        problems.push(format!("only {sampled} sampled symbols"));
    }
    // the spinner's VMAs
    let spin = tasks
        .iter()
        .find(|t| t.pid == spinner)
        .ok_or_else(|| fail("no spinner task".into()))?;
    let mut vmas = Vec::new();
    if let Err(e) = os.vmas(&core, spin.task, |v| {
        let rights: String = [(1, 'r'), (2, 'w'), (4, 'x')]
            .iter()
            .map(|&(bit, c)| if v.flags & bit != 0 { c } else { '-' })
            .chain(core::iter::once(if v.flags & 8 != 0 { 's' } else { 'p' }))
            .collect();
        vmas.push(format!(
            "{:x}-{:x} {rights} {}",
            v.start.0,
            v.end.0,
            v.file_name_str()
        ));
        ControlFlow::Continue(())
    }) {
        problems.push(format!("vmas: {e}"));
    }
    let want_vmas: Vec<String> = read(dir, "maps.txt")
        .map_err(fail)?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (range, perms) = (f.first()?, f.get(1)?);
            let (s, e) = range.split_once('-')?;
            let file = f
                .get(5)
                .filter(|p| p.starts_with('/'))
                .map_or("", |p| p.rsplit('/').next().unwrap_or(""));
            Some(format!(
                "{:x}-{:x} {perms} {file}",
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?
            ))
        })
        .collect();
    if vmas != want_vmas {
        problems.push(format!(
            "VMAs\n  {}\nmaps.txt\n  {}",
            vmas.join("\n  "),
            want_vmas.join("\n  ")
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(format!(
        "{}: {} {} {:?} slide {:#x} pti {} by {:?}: {} processes, {} modules, {sampled} symbols, {} VMAs agree",
        dir.display(),
        os.release(),
        if mode == PagingMode::Level5 {
            "5-level"
        } else {
            "4-level"
        },
        os.kallsyms.layout,
        os.space.kaslr_slide(),
        os.pti,
        os.image_found_by,
        tasks.len(),
        mods.len(),
        vmas.len()
    ))
}

#[test]
fn real_linux_guests_agree_with_their_own_proc() {
    let root = fixture_root();
    let (present, missing): (Vec<_>, Vec<_>) = GUESTS.iter().map(|g| root.join(g)).partition(|d| {
        ["dump.elf", "procstat.txt", "modules.txt", "ksample.txt"]
            .iter()
            .all(|f| d.join(f).is_file())
    });
    let required = std::env::var("INTROVISOR_REQUIRE_REAL_GUEST").is_ok_and(|v| v == "1");
    if !missing.is_empty() {
        assert!(
            !required,
            "INTROVISOR_REQUIRE_REAL_GUEST=1 but these captures are missing: {missing:?} (run host-test/real-guest/capture.sh)"
        );
        println!(
            "SKIP (partly) real_linux_guests_agree_with_their_own_proc: no capture in {missing:?} (run host-test/real-guest/capture.sh; INTROVISOR_REQUIRE_REAL_GUEST=1 makes this a failure)"
        );
    }
    let mut failures = Vec::new();
    for dir in &present {
        match check_guest(dir) {
            Ok(line) => println!("{line}"),
            Err(problems) => {
                failures.push(format!("{}:\n  {}", dir.display(), problems.join("\n  ")))
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ----- the comparison itself ---------------------------------------------------------------

#[test]
fn the_process_comparison_sees_every_kind_of_difference() {
    use introvisor::os::linux::COMM_LEN;
    use introvisor::{Pa, Va};
    let task = |pid: u32, ppid: u32, comm: &str, kthread: bool| {
        let mut c = [0u8; COMM_LEN];
        c[..comm.len()].copy_from_slice(comm.as_bytes());
        Task {
            task: Va(0xffff_8880_0000_0000 + u64::from(pid) * 0x1000),
            pid,
            tgid: pid,
            ppid,
            comm: c,
            state: 1,
            flags: if kthread { 0x0020_0000 } else { 0 },
            mm: if kthread { 0 } else { 0xffff_8880_1000_0000 },
            pgd: Pa(0x1000),
            user_pgd: None,
        }
    };
    let tasks = vec![
        task(1, 0, "init", false),
        task(2, 0, "kthreadd", true),
        task(11, 2, "rcu_tasks_kthre", true),
        task(7, 2, "kworker/0:0H", true),
        task(90, 1, "sh (x)", false),
    ];
    let good = "1 (init) S 0 0 0\n2 (kthreadd) S 0 0\n11 (rcu_tasks_kthread) I 2 0\n7 (kworker/0:0H-events_highpri) I 2 0\n90 (sh (x)) R 1 0\n";
    assert_eq!(
        compare_processes(&tasks, good).unwrap(),
        Vec::<String>::new()
    );
    let cases = [
        (
            "1 (init) S 0 0 0\n2 (kthreadd) S 0 0\n11 (rcu_tasks_kthread) I 2 0\n7 (kworker/0:0H-events_highpri) I 2 0\n",
            "not in /proc",
        ),
        (
            "1 (init) S 0 0 0\n2 (kthreadd) S 0 0\n11 (rcu_tasks_kthread) I 2 0\n7 (kworker/0:0H-events_highpri) I 2 0\n90 (sh (x)) R 1 0\n91 (sleep) S 1\n",
            "not in the task list",
        ),
        (
            "1 (init) S 0 0 0\n2 (kthreadd) S 0 0\n11 (rcu_tasks_kthread) I 2 0\n7 (kworker/0:0H-events_highpri) I 2 0\n90 (sh (x)) R 2 0\n",
            "ppid",
        ),
        (
            "1 (init) S 0 0 0\n2 (kthreadd) S 0 0\n11 (rcu_tasks_kthread) I 2 0\n7 (kworker/0:1) I 2 0\n90 (sh (x)) R 1 0\n",
            "comm",
        ),
        (
            "1 (inix) S 0 0 0\n2 (kthreadd) S 0 0\n11 (rcu_tasks_kthread) I 2 0\n7 (kworker/0:0H-events_highpri) I 2 0\n90 (sh (x)) R 1 0\n",
            "comm",
        ),
    ];
    for (text, what) in cases {
        let p = compare_processes(&tasks, text).unwrap();
        assert!(p.len() == 1 && p[0].contains(what), "{what}: {p:?}");
    }
    assert!(compare_processes(&tasks, "x y z\n").is_err());
    // a user process whose name is 15 bytes must match exactly
    let long = vec![task(5, 1, "a_fifteen_chars", false)];
    assert_eq!(
        compare_processes(&long, "5 (a_fifteen_chars_more) S 1\n")
            .unwrap()
            .len(),
        1
    );
}
