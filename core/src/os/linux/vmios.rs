//! [`LinuxOs`] as a [`VmiOs`].

use core::ops::ControlFlow;

use crate::access::AccessContext;
use crate::addr::{Pa, Va};
use crate::arch::amd64::{Amd64, Registers};
use crate::driver::VmiDriver;
use crate::error::VmiError;
use crate::os::{
    Module, Process, ProcessId, ProcessObject, Region, RegionKind, Thread, ThreadId, ThreadObject,
    VmiOs,
};
use crate::vmi::VmiCore;

use super::LinuxError;
use super::find::LinuxOs;
use super::tasks::{COMM_LEN, MODULE_NAME_LEN, Task};

fn copy_name(src: &[u8], buf: &mut [u8]) -> usize {
    let n = src.iter().position(|&b| b == 0).unwrap_or(src.len());
    let n = n.min(buf.len());
    if let (Some(dst), Some(src)) = (buf.get_mut(..n), src.get(..n)) {
        dst.copy_from_slice(src);
    }
    // cut at a char boundary so the bytes stay UTF-8 when they were
    let mut n = n;
    while let Some(shorter) = n.checked_sub(1)
        && buf
            .get(..n)
            .is_some_and(|b| core::str::from_utf8(b).is_err())
    {
        n = shorter;
    }
    n
}

impl LinuxOs {
    fn process_of(&self, t: &Task) -> Process {
        Process {
            object: ProcessObject(t.task),
            id: ProcessId(t.tgid),
            root: t.pgd,
        }
    }

    fn leader<D: VmiDriver<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        t: &Task,
    ) -> Result<Task, LinuxError> {
        let mem = self.kmem(core)?;
        let leader = mem.ptr(
            t.task.0.wrapping_add(self.offsets.task_group_leader),
            "group_leader",
        )?;
        self.task(core, Va(leader))
    }
}

impl<D: VmiDriver<Architecture = Amd64>> VmiOs<D> for LinuxOs {
    fn kernel_image_base(&self, _: &VmiCore<D>, _: &Registers) -> Result<Va, VmiError> {
        Ok(self.space.text)
    }

    fn processes(
        &self,
        core: &VmiCore<D>,
        _: &Registers,
        visit: &mut dyn FnMut(Process) -> ControlFlow<()>,
    ) -> Result<(), VmiError> {
        Ok(self.tasks(core, |t| visit(self.process_of(t)))?)
    }

    fn process_name(
        &self,
        core: &VmiCore<D>,
        _: &Registers,
        process: ProcessObject,
        buf: &mut [u8],
    ) -> Result<usize, VmiError> {
        let mut comm = [0u8; COMM_LEN];
        let mem = self.kmem(core)?;
        mem.read(process.0.0.wrapping_add(self.offsets.task_comm), &mut comm)?;
        Ok(copy_name(&comm, buf))
    }

    fn threads(
        &self,
        core: &VmiCore<D>,
        _: &Registers,
        process: ProcessObject,
        visit: &mut dyn FnMut(Thread) -> ControlFlow<()>,
    ) -> Result<(), VmiError> {
        Ok(self.threads_of(core, process.0, |t| {
            visit(Thread {
                object: ThreadObject(t.task),
                id: ThreadId(t.pid),
                process,
            })
        })?)
    }

    fn modules(
        &self,
        core: &VmiCore<D>,
        _: &Registers,
        visit: &mut dyn FnMut(Module) -> ControlFlow<()>,
    ) -> Result<(), VmiError> {
        Ok(self.modules_list(core, |m| {
            visit(Module {
                object: m.object,
                base: m.base,
                size: m.size,
            })
        })?)
    }

    fn module_name(
        &self,
        core: &VmiCore<D>,
        _: &Registers,
        module: &Module,
        buf: &mut [u8],
    ) -> Result<usize, VmiError> {
        let mut name = [0u8; MODULE_NAME_LEN];
        let mem = self.kmem(core)?;
        mem.read(
            module.object.0.wrapping_add(self.offsets.module_name),
            &mut name,
        )?;
        Ok(copy_name(&name, buf))
    }

    fn regions(
        &self,
        core: &VmiCore<D>,
        _: &Registers,
        process: ProcessObject,
        visit: &mut dyn FnMut(Region) -> ControlFlow<()>,
    ) -> Result<(), VmiError> {
        Ok(self.vmas(core, process.0, |v| {
            let kind = match (v.file != 0, v.flags & 4 != 0) {
                (false, _) => RegionKind::Private,
                (true, true) => RegionKind::Image,
                (true, false) => RegionKind::File,
            };
            visit(Region {
                start: v.start,
                end: v.end,
                access: v.access,
                kind,
            })
        })?)
    }

    fn current_process(
        &self,
        core: &VmiCore<D>,
        registers: &Registers,
    ) -> Result<Process, VmiError> {
        let t = self.current_task(core, registers)?;
        let leader = self.leader(core, &t)?;
        Ok(self.process_of(&leader))
    }

    fn current_thread(&self, core: &VmiCore<D>, registers: &Registers) -> Result<Thread, VmiError> {
        let t = self.current_task(core, registers)?;
        let leader = self.leader(core, &t)?;
        Ok(Thread {
            object: ThreadObject(t.task),
            id: ThreadId(t.pid),
            process: ProcessObject(leader.task),
        })
    }

    /// System V AMD64: `rdi`, `rsi`, `rdx`, `rcx`, `r8`, `r9`, then the stack above the
    /// return address (`[rsp + 8 * (index - 5)]`), read under the vCPU's CR3.
    fn function_argument(
        &self,
        core: &VmiCore<D>,
        registers: &Registers,
        index: u64,
    ) -> Result<u64, VmiError> {
        let r = registers;
        Ok(match index {
            0 => r.rdi,
            1 => r.rsi,
            2 => r.rdx,
            3 => r.rcx,
            4 => r.r8,
            5 => r.r9,
            n => {
                let off = n
                    .checked_sub(5)
                    .and_then(|k| k.checked_mul(8))
                    .ok_or(VmiError::InvalidArgument("argument index"))?;
                core.read_u64(AccessContext::paging(
                    Va(r.rsp.wrapping_add(off)),
                    Pa(r.cr3),
                ))?
            }
        })
    }

    fn function_return_value(
        &self,
        _: &VmiCore<D>,
        registers: &Registers,
    ) -> Result<u64, VmiError> {
        Ok(registers.rax)
    }

    /// Linux x86-64 system calls: `rdi`, `rsi`, `rdx`, `r10`, `r8`, `r9`.
    fn syscall_argument(
        &self,
        _: &VmiCore<D>,
        registers: &Registers,
        index: u64,
    ) -> Result<u64, VmiError> {
        let r = registers;
        Ok(match index {
            0 => r.rdi,
            1 => r.rsi,
            2 => r.rdx,
            3 => r.r10,
            4 => r.r8,
            5 => r.r9,
            _ => {
                return Err(VmiError::InvalidArgument(
                    "Linux system calls take at most 6 arguments",
                ));
            }
        })
    }
}
