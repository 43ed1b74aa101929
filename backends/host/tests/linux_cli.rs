//! `introvisor ps`, `modules`, `symbols`, `maps` and `linux`, run as a user would, on
//! raw dumps of the synthetic Linux guests of `introvisor_host_test::linux_fixture`.

use std::path::PathBuf;
use std::process::Command;

use introvisor_host_test::linux_fixture::{Fixture, Spec, build};

const BIN: &str = env!("CARGO_BIN_EXE_introvisor");

struct Dump(PathBuf);

impl Dump {
    fn new(tag: &str, bytes: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!(
            "introvisor-linux-cli-{}-{tag}.raw",
            std::process::id()
        ));
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Dump {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn fixture(tag: &str) -> (Fixture, Dump) {
    let f = build(Spec::v612());
    let d = Dump::new(tag, &f.memory);
    (f, d)
}

#[test]
fn ps_lists_pid_ppid_comm_pgd_in_list_order() {
    let (f, d) = fixture("ps");
    let (code, out, err) = run(&["ps", d.path()]);
    assert_eq!(code, 0, "{err}");
    let want: String = f
        .tasks
        .iter()
        .map(|t| format!("{} {} {} {:#x}\n", t.pid, t.ppid, t.comm, t.pgd))
        .collect();
    assert_eq!(out, want);
    let (code, json, _) = run(&["ps", d.path(), "--json"]);
    assert_eq!(code, 0);
    assert_eq!(json.lines().count(), f.tasks.len());
    let sh = json
        .lines()
        .find(|l| l.contains("\"comm\":\"sh\""))
        .unwrap();
    assert!(sh.starts_with("{\"pid\":88,\"ppid\":1,"), "{sh}");
    assert!(
        sh.contains("\"kernel_thread\":false") && sh.contains("\"user_pgd\":\"0x"),
        "{sh}"
    );
    // A vCPU the dump does not have is an input error, as for `translate` (it was
    // silently ignored): a raw dump has none.
    for cmd in ["ps", "modules", "linux"] {
        let (code, out, err) = run(&[cmd, d.path(), "--vcpu", "3"]);
        assert_eq!(code, 2, "{cmd}: {err}");
        assert!(
            err.contains("--vcpu 3: the dump has 0 vCPU"),
            "{cmd}: {err}"
        );
        assert!(out.is_empty(), "{cmd}: {out}");
    }
}

#[test]
fn modules_symbols_and_maps() {
    let (f, d) = fixture("mods");
    let (code, out, _) = run(&["modules", d.path()]);
    assert_eq!(code, 0);
    let want: String = f
        .modules
        .iter()
        .map(|(n, b, s)| format!("{n} {b:#x} {s}\n"))
        .collect();
    assert_eq!(out, want);
    let (code, out, err) = run(&["symbols", d.path(), "init_task", "dup_name", "not_a_symbol"]);
    assert_eq!(code, 1, "a missing name is exit 1");
    assert!(err.contains("no symbol named 'not_a_symbol'"), "{err}");
    let want: String = f
        .symbols
        .iter()
        .filter(|s| s.2 == "init_task" || s.2 == "dup_name")
        .map(|(a, t, n)| format!("{a:016x} {t} {n}\n"))
        .collect();
    assert_eq!(out, want);
    assert_eq!(out.lines().count(), 3, "both dup_name");
    let (code, all, _) = run(&["symbols", d.path()]);
    assert_eq!(code, 0);
    assert_eq!(all.lines().count(), f.symbols.len());
    let (code, out, _) = run(&["maps", d.path(), "88"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), f.vmas.1.len());
    assert_eq!(lines[1], "00401000-00585000 r-xp busybox");
    assert_eq!(lines[3], "1cf71000-1cf93000 rw-p ");
    let (code, _, err) = run(&["maps", d.path(), "4242"]);
    assert_eq!(code, 1);
    assert!(err.contains("no process with pid 4242"), "{err}");
    let (code, _, _) = run(&["maps", d.path()]);
    assert_eq!(code, 2, "PID missing: usage");
}

#[test]
fn linux_says_what_was_found_and_how() {
    let (f, d) = fixture("linux");
    let (code, out, err) = run(&["linux", d.path()]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "release: 6.12.0-synthetic\n".to_owned(),
        "paging: 4-level\n".to_owned(),
        format!("kernel_root: {:#x}\n", f.root),
        format!("kaslr_slide: {:#x}\n", f.spec.slide),
        format!("page_offset_base: {:#x}\n", f.spec.page_offset_base),
        "image_found_by: Scan\n".to_owned(),
        "kallsyms_layout: OffsetsLast\n".to_owned(),
        "btf_found_by: Symbols\n".to_owned(),
        "vmcoreinfo: absent\n".to_owned(),
        "pti: true\n".to_owned(),
    ] {
        assert!(out.contains(&want), "missing {want:?} in\n{out}");
    }
    let (code, json, _) = run(&["linux", d.path(), "--json"]);
    assert_eq!(code, 0);
    assert!(
        json.starts_with('{') && json.ends_with("}\n") && json.contains("\"paging\":\"4-level\""),
        "{json}"
    );
}

#[test]
fn a_broken_guest_is_exit_1_with_the_named_error() {
    let (mut f, _) = fixture("broken");
    let node = f.tasks[2].tasks_node - f.spec.page_offset_base;
    let to = f.tasks[1].tasks_node;
    f.memory[node as usize..node as usize + 8].copy_from_slice(&to.to_le_bytes());
    let d = Dump::new("loop", &f.memory);
    let (code, _, err) = run(&["ps", d.path()]);
    assert_eq!(code, 1);
    assert!(err.contains("loops without passing its head"), "{err}");
    let zeros = Dump::new("zeros", &vec![0u8; 8 << 20]);
    let (code, _, err) = run(&["ps", zeros.path()]);
    assert_eq!(code, 1);
    assert!(err.contains("no Linux kernel found"), "{err}");
    let (code, _, _) = run(&["ps", "/nonexistent/dump"]);
    assert_eq!(code, 2);
}

#[test]
fn guest_names_are_escaped_and_the_json_parses() {
    let (mut f, _) = fixture("esc");
    let sh = f.tasks.iter().find(|t| t.comm == "sh").unwrap().task;
    let comm = (sh + f.off.comm - f.spec.page_offset_base) as usize;
    f.memory[comm..comm + 4].copy_from_slice(b"s\x1b]h");
    let d = Dump::new("esc", &f.memory);
    let (code, out, _) = run(&["ps", d.path()]);
    assert_eq!(code, 0);
    assert!(out.contains("88 1 s\\x1b]h 0x"), "{out}");
    assert!(!out.contains('\x1b'));
    for cmd in ["ps", "modules", "linux"] {
        let (code, out, _) = run(&[cmd, d.path(), "--json"]);
        assert_eq!(code, 0);
        for line in out.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{cmd}: {e}: {line}"));
            assert!(v.is_object());
        }
    }
    let (_, out, _) = run(&["ps", d.path(), "--json"]);
    let sh: serde_json::Value =
        serde_json::from_str(out.lines().find(|l| l.contains("\"pid\":88")).unwrap()).unwrap();
    assert_eq!(sh["comm"], "s\u{1b}]h");
    assert_eq!(sh["ppid"], 1);
    let (_, out, _) = run(&["symbols", d.path(), "init_task", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["type"], "D");
    assert!(v["address"].as_str().unwrap().starts_with("0xffffffff8"));
}
