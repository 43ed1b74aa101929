//! Development probe: finds the Linux kernel in a dump and prints what it found.
use core::ops::ControlFlow;
use std::time::Instant;

use introvisor::os::linux::{FindHint, LinuxOs};
use introvisor::{VcpuId, VmiCore};
use introvisor_host::dump;

fn main() {
    let path = std::env::args().nth(1).expect("DUMP");
    let (driver, _info) = dump::open(&path).expect("open");
    let core = VmiCore::new(driver);
    let mut scratch = vec![0u8; 1 << 20];
    let t = Instant::now();
    let os = LinuxOs::find(&core, FindHint::default(), &mut scratch);
    println!("find in {:?}", t.elapsed());
    let os = os.unwrap();
    println!("{:#x?}", os.space);
    println!(
        "{} | {:?} {:?} pti={} vmci={:?}",
        os.banner(),
        os.image_found_by,
        os.btf_found_by,
        os.pti,
        matches!(os.vmcoreinfo, introvisor::os::linux::VmcoreinfoUse::Used(_))
    );
    println!("{:?}", os.kallsyms);
    println!("{:?}", os.offsets);
    let mut spinner = None;
    os.tasks(&core, |t| {
        println!(
            "{} {} {} {:?} {:#x} {:?} st={:x}",
            t.pid,
            t.ppid,
            t.comm_str(),
            t.pgd,
            t.mm,
            t.user_pgd,
            t.state
        );
        if t.comm_str() == "sh" {
            spinner = Some(t.task);
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    os.modules_list(&core, |m| {
        println!("mod {} {:?} {}", m.name_str(), m.base, m.size);
        ControlFlow::Continue(())
    })
    .unwrap();
    if let Ok(regs) = core.registers(VcpuId(0)) {
        let cur = os.current_task(&core, &regs);
        println!(
            "current: {:?} cr3={:#x}",
            cur.map(|t| (t.pid, t.comm)),
            regs.cr3
        );
        if let Ok(t) = cur {
            os.vmas(&core, t.task, |v| {
                println!(
                    "{:x}-{:x} {:?} {}",
                    v.start.0,
                    v.end.0,
                    v.access,
                    v.file_name_str()
                );
                ControlFlow::Continue(())
            })
            .unwrap();
        }
    }
}
