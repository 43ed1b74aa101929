//! Script steps and their line-based text format (replay files).
//!
//! # The format
//! One step per line. Blank lines and lines starting with `#` are ignored; a `#` after a
//! step starts a comment too. Numbers are decimal or `0x` hexadecimal, with `_` allowed
//! between digits. Words are separated by spaces or tabs.
//!
//! ```text
//! # Set registers of vCPU 0 (any u64 field of amd64::Registers by name, and
//! # cs_access / ss_access for the segment attributes, which decide CPL and mode).
//! regs 0 cr3=0x1000 rip=0x401000 efer=0xd01 cs_access=0x209b ss_access=0x93
//!
//! # Write bytes (hex pairs) into guest-physical memory.
//! write 0x3000 68656c6c6f00
//!
//! # An event: vCPU, then optionally view=N (move the vCPU to view N first) and
//! # `async` (the vCPU is not paused), then the reason and its fields.
//! event 0 memory gpa=0x3008 gva=0x401008 access=w
//! event 0 interrupt vector=14 type=hardware error=0x2 len=0
//! event 0 breakpoint len=1          # vector 3, software exception
//! event 0 singlestep
//! event 1 view=2 cr register=cr3 old=0x1000 new=0x2000
//! event 0 msr index=0xc0000082 old=0 new=0xffffffff81000000   # old= is optional
//! event 0 cpuid leaf=1 subleaf=0 len=2                        # subleaf 0, len 2 by default
//! event 0 io port=0x3f8 size=1 dir=out
//!
//! # No event within the timeout: wait_for_event returns VmiError::Timeout once.
//! timeout
//! ```
//!
//! Interrupt types: `external`, `nmi`, `hardware`, `software` (INT n), `privileged`
//! (INT1), `software-exception` (INT3, INTO). Access kinds: any of `r`, `w`, `x`.
//!
//! A [`Step`] prints in this format (`Display`), and what it prints parses back to the
//! same step. The parser rejects anything it does not understand (an unknown word, a
//! missing or repeated field, a number out of range) with the line number and the reason;
//! it never panics.

use core::fmt;

use introvisor::arch::amd64::{
    ControlRegister, ControlRegisterEvent, CpuidEvent, EventReason, InterruptEvent, InterruptType,
    IoDirection, IoEvent, MemoryAccessEvent, MsrEvent, Registers,
};
use introvisor::{MemoryAccess, Pa, Va, VcpuId, View, VmiEventFlags};

/// One event of a script, before the driver adds the vCPU's registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScriptedEvent {
    /// The vCPU that takes it.
    pub vcpu: VcpuId,
    /// Move the vCPU to this view before the event (`None`: it stays where it is).
    pub view: Option<View>,
    /// The flags ([`VmiEventFlags::VCPU_PAUSED`] unless the event is asynchronous).
    pub flags: VmiEventFlags,
    /// Why the vCPU stops.
    pub reason: EventReason,
}

impl ScriptedEvent {
    /// A synchronous event of `vcpu` (paused until answered), in its current view.
    pub fn new(vcpu: u16, reason: EventReason) -> Self {
        Self {
            vcpu: VcpuId(vcpu),
            view: None,
            flags: VmiEventFlags::VCPU_PAUSED,
            reason,
        }
    }

    /// The same event, taken in `view`.
    #[must_use]
    pub fn in_view(mut self, view: View) -> Self {
        self.view = Some(view);
        self
    }

    /// The same event, asynchronous (the vCPU is not paused).
    #[must_use]
    pub fn asynchronous(mut self) -> Self {
        self.flags.remove(VmiEventFlags::VCPU_PAUSED);
        self
    }
}

/// One step of a script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Deliver an event.
    Event(ScriptedEvent),
    /// Let one wait time out.
    Timeout,
    /// Set registers of a vCPU: each name is one of [`REGISTER_NAMES`].
    Registers {
        /// The vCPU.
        vcpu: VcpuId,
        /// Register names and values, applied in order.
        values: Vec<(&'static str, u64)>,
    },
    /// Write bytes into guest-physical memory.
    Write {
        /// Where.
        pa: Pa,
        /// What.
        data: Vec<u8>,
    },
}

/// Why a script was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptError {
    /// The line (from 1; 0 when the file itself could not be read).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "script line {}: {}", self.line, self.message)
    }
}

impl core::error::Error for ScriptError {}

macro_rules! u64_registers {
    ($($name:ident),* $(,)?) => {
        /// The register names a `regs` line accepts.
        pub const REGISTER_NAMES: &[&str] = &[$(stringify!($name),)* "cs_access", "ss_access"];

        /// Sets register `name` of `registers` to `value`.
        ///
        /// # Errors
        /// An unknown name, or a value too wide for a 32-bit field.
        pub fn set_register(
            registers: &mut Registers,
            name: &str,
            value: u64,
        ) -> Result<(), String> {
            match name {
                $(stringify!($name) => registers.$name = value,)*
                "cs_access" => registers.cs.access = narrow(value)?,
                "ss_access" => registers.ss.access = narrow(value)?,
                other => return Err(format!("unknown register `{other}`")),
            }
            Ok(())
        }
    };
}

u64_registers!(
    rax,
    rbx,
    rcx,
    rdx,
    rsi,
    rdi,
    rbp,
    rsp,
    r8,
    r9,
    r10,
    r11,
    r12,
    r13,
    r14,
    r15,
    rip,
    rflags,
    cr0,
    cr2,
    cr3,
    cr4,
    cr8,
    efer,
    dr0,
    dr1,
    dr2,
    dr3,
    dr6,
    dr7,
    sysenter_cs,
    sysenter_esp,
    sysenter_eip,
    star,
    lstar,
    cstar,
    sfmask,
    fs_base,
    gs_base,
    kernel_gs_base,
    pat,
);

fn narrow<T: TryFrom<u64>>(value: u64) -> Result<T, String> {
    T::try_from(value).map_err(|_| format!("value {value:#x} out of range"))
}

/// Parses a number: decimal, or hexadecimal after `0x`; `_` may separate digits.
fn number(text: &str) -> Result<u64, String> {
    let clean: String = text.chars().filter(|&c| c != '_').collect();
    let parsed = match clean
        .strip_prefix("0x")
        .or_else(|| clean.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => clean.parse(),
    };
    parsed.map_err(|_| format!("`{text}` is not a number"))
}

/// The `key=value` fields of a line, each to be taken exactly once.
struct Fields<'a> {
    fields: Vec<(&'a str, &'a str)>,
}

impl<'a> Fields<'a> {
    fn new(words: &[&'a str]) -> Result<Self, String> {
        let mut fields: Vec<(&str, &str)> = Vec::new();
        for word in words {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, found `{word}`"))?;
            if fields.iter().any(|(k, _)| *k == key) {
                return Err(format!("`{key}` given twice"));
            }
            fields.push((key, value));
        }
        Ok(Self { fields })
    }

    fn take(&mut self, key: &str) -> Option<&'a str> {
        let index = self.fields.iter().position(|(k, _)| *k == key)?;
        Some(self.fields.swap_remove(index).1)
    }

    fn number(&mut self, key: &str) -> Result<Option<u64>, String> {
        self.take(key).map(number).transpose()
    }

    fn required<T: TryFrom<u64>>(&mut self, key: &str) -> Result<T, String> {
        let value = self
            .number(key)?
            .ok_or_else(|| format!("`{key}=` is missing"))?;
        narrow(value)
    }

    fn optional<T: TryFrom<u64>>(&mut self, key: &str) -> Result<Option<T>, String> {
        self.number(key)?.map(narrow).transpose()
    }

    fn finish(self) -> Result<(), String> {
        match self.fields.first() {
            Some((key, _)) => Err(format!("unknown field `{key}`")),
            None => Ok(()),
        }
    }
}

fn interrupt_type(name: &str) -> Result<InterruptType, String> {
    Ok(match name {
        "external" => InterruptType::External,
        "nmi" => InterruptType::Nmi,
        "hardware" => InterruptType::HardwareException,
        "software" => InterruptType::SoftwareInterrupt,
        "privileged" => InterruptType::PrivilegedSoftwareException,
        "software-exception" => InterruptType::SoftwareException,
        other => return Err(format!("unknown interrupt type `{other}`")),
    })
}

fn interrupt_type_name(typ: InterruptType) -> &'static str {
    match typ {
        InterruptType::External => "external",
        InterruptType::Nmi => "nmi",
        InterruptType::HardwareException => "hardware",
        InterruptType::SoftwareInterrupt => "software",
        InterruptType::PrivilegedSoftwareException => "privileged",
        InterruptType::SoftwareException => "software-exception",
    }
}

fn access(text: &str) -> Result<MemoryAccess, String> {
    let mut access = MemoryAccess::empty();
    for c in text.chars() {
        access |= match c {
            'r' => MemoryAccess::R,
            'w' => MemoryAccess::W,
            'x' => MemoryAccess::X,
            other => return Err(format!("unknown access kind `{other}`")),
        };
    }
    if access.is_empty() {
        return Err("empty access".into());
    }
    Ok(access)
}

fn access_name(access: MemoryAccess) -> String {
    let mut s = String::new();
    for (flag, c) in [
        (MemoryAccess::R, 'r'),
        (MemoryAccess::W, 'w'),
        (MemoryAccess::X, 'x'),
    ] {
        if access.contains(flag) {
            s.push(c);
        }
    }
    s
}

fn control_register(name: &str) -> Result<ControlRegister, String> {
    Ok(match name {
        "cr0" => ControlRegister::Cr0,
        "cr3" => ControlRegister::Cr3,
        "cr4" => ControlRegister::Cr4,
        "xcr0" => ControlRegister::Xcr0,
        other => return Err(format!("unknown control register `{other}`")),
    })
}

fn control_register_name(register: ControlRegister) -> &'static str {
    match register {
        ControlRegister::Cr0 => "cr0",
        ControlRegister::Cr3 => "cr3",
        ControlRegister::Cr4 => "cr4",
        ControlRegister::Xcr0 => "xcr0",
    }
}

fn hex_bytes(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err("hex bytes come in pairs of digits".into());
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            core::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("`{}` is not a hex byte", String::from_utf8_lossy(pair)))
        })
        .collect()
}

fn reason(kind: &str, words: &[&str]) -> Result<EventReason, String> {
    let mut f = Fields::new(words)?;
    let reason = match kind {
        "memory" => EventReason::MemoryAccess(MemoryAccessEvent {
            pa: Pa(f.required("gpa")?),
            va: f.optional("gva")?.map(Va),
            access: access(f.take("access").ok_or("`access=` is missing")?)?,
        }),
        "interrupt" => EventReason::Interrupt(InterruptEvent {
            vector: f.required("vector")?,
            typ: interrupt_type(f.take("type").ok_or("`type=` is missing")?)?,
            error_code: f.optional("error")?,
            instruction_length: f.optional("len")?.unwrap_or(0),
        }),
        "breakpoint" => EventReason::Interrupt(InterruptEvent {
            vector: introvisor::arch::amd64::vector::BP,
            typ: InterruptType::SoftwareException,
            error_code: None,
            instruction_length: f.optional("len")?.unwrap_or(1),
        }),
        "singlestep" => EventReason::Singlestep,
        "cr" => EventReason::WriteControlRegister(ControlRegisterEvent {
            register: control_register(f.take("register").ok_or("`register=` is missing")?)?,
            old: f.required("old")?,
            new: f.required("new")?,
        }),
        "msr" => EventReason::WriteMsr(MsrEvent {
            index: f.required("index")?,
            old: f.optional("old")?,
            new: f.required("new")?,
        }),
        "cpuid" => EventReason::Cpuid(CpuidEvent {
            leaf: f.required("leaf")?,
            subleaf: f.optional("subleaf")?.unwrap_or(0),
            instruction_length: f.optional("len")?.unwrap_or(2),
        }),
        "io" => EventReason::Io(IoEvent {
            port: f.required("port")?,
            size: match f.required::<u8>("size")? {
                size @ (1 | 2 | 4) => size,
                other => return Err(format!("I/O size {other} is not 1, 2 or 4")),
            },
            direction: match f.take("dir").ok_or("`dir=` is missing")? {
                "in" => IoDirection::In,
                "out" => IoDirection::Out,
                other => return Err(format!("unknown direction `{other}`")),
            },
        }),
        other => return Err(format!("unknown event reason `{other}`")),
    };
    f.finish()?;
    Ok(reason)
}

fn vcpu(word: Option<&&str>) -> Result<VcpuId, String> {
    let word = word.ok_or("the vCPU is missing")?;
    Ok(VcpuId(narrow(number(word)?)?))
}

fn line(words: &[&str]) -> Result<Step, String> {
    match words {
        ["timeout"] => Ok(Step::Timeout),
        ["timeout", ..] => Err("`timeout` takes nothing".into()),
        ["regs", rest @ ..] => {
            let vcpu = vcpu(rest.first())?;
            let mut values = Vec::new();
            for word in rest.iter().skip(1) {
                let (name, value) = word
                    .split_once('=')
                    .ok_or_else(|| format!("expected name=value, found `{word}`"))?;
                let canonical = REGISTER_NAMES
                    .iter()
                    .find(|n| **n == name)
                    .ok_or_else(|| format!("unknown register `{name}`"))?;
                let value = number(value)?;
                // Check the width now, so that a bad line fails at parse time.
                set_register(&mut Registers::default(), canonical, value)?;
                values.push((*canonical, value));
            }
            if values.is_empty() {
                return Err("`regs` sets no register".into());
            }
            Ok(Step::Registers { vcpu, values })
        }
        ["write", pa, data] => Ok(Step::Write {
            pa: Pa(number(pa)?),
            data: hex_bytes(data)?,
        }),
        ["write", ..] => Err("expected `write <pa> <hex bytes>`".into()),
        ["event", rest @ ..] => {
            let vcpu = vcpu(rest.first())?;
            let mut view = None;
            let mut flags = VmiEventFlags::VCPU_PAUSED;
            let mut i = 1;
            while let Some(word) = rest.get(i) {
                if let Some(value) = word.strip_prefix("view=") {
                    view = Some(View(narrow(number(value)?)?));
                } else if *word == "async" {
                    flags.remove(VmiEventFlags::VCPU_PAUSED);
                } else {
                    break;
                }
                i += 1;
            }
            let kind = rest.get(i).ok_or("the event reason is missing")?;
            let reason = reason(kind, rest.get(i + 1..).unwrap_or(&[]))?;
            Ok(Step::Event(ScriptedEvent {
                vcpu,
                view,
                flags,
                reason,
            }))
        }
        [other, ..] => Err(format!("unknown step `{other}`")),
        [] => Err("empty line".into()),
    }
}

/// Parses a script.
///
/// # Errors
/// The first line that is not a valid step, with its number and the reason.
pub fn parse_script(text: &str) -> Result<Vec<Step>, ScriptError> {
    let mut steps = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let content = raw.split('#').next().unwrap_or("");
        let words: Vec<&str> = content.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        steps.push(line(&words).map_err(|message| ScriptError {
            line: index + 1,
            message,
        })?);
    }
    Ok(steps)
}

impl fmt::Display for ScriptedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "event {}", self.vcpu.0)?;
        if let Some(view) = self.view {
            write!(f, " view={}", view.0)?;
        }
        if !self.flags.contains(VmiEventFlags::VCPU_PAUSED) {
            f.write_str(" async")?;
        }
        match self.reason {
            EventReason::MemoryAccess(e) => {
                write!(f, " memory gpa={:#x}", e.pa.0)?;
                if let Some(va) = e.va {
                    write!(f, " gva={:#x}", va.0)?;
                }
                write!(f, " access={}", access_name(e.access))
            }
            EventReason::Interrupt(e) => {
                write!(
                    f,
                    " interrupt vector={} type={}",
                    e.vector,
                    interrupt_type_name(e.typ)
                )?;
                if let Some(code) = e.error_code {
                    write!(f, " error={code:#x}")?;
                }
                write!(f, " len={}", e.instruction_length)
            }
            EventReason::Singlestep => f.write_str(" singlestep"),
            EventReason::WriteControlRegister(e) => write!(
                f,
                " cr register={} old={:#x} new={:#x}",
                control_register_name(e.register),
                e.old,
                e.new
            ),
            EventReason::WriteMsr(e) => {
                write!(f, " msr index={:#x}", e.index)?;
                if let Some(old) = e.old {
                    write!(f, " old={old:#x}")?;
                }
                write!(f, " new={:#x}", e.new)
            }
            EventReason::Cpuid(e) => write!(
                f,
                " cpuid leaf={:#x} subleaf={:#x} len={}",
                e.leaf, e.subleaf, e.instruction_length
            ),
            EventReason::Io(e) => write!(
                f,
                " io port={:#x} size={} dir={}",
                e.port,
                e.size,
                match e.direction {
                    IoDirection::In => "in",
                    IoDirection::Out => "out",
                }
            ),
            _ => f.write_str(" # a reason this format does not know"),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Event(event) => event.fmt(f),
            Self::Timeout => f.write_str("timeout"),
            Self::Registers { vcpu, values } => {
                write!(f, "regs {}", vcpu.0)?;
                for (name, value) in values {
                    write!(f, " {name}={value:#x}")?;
                }
                Ok(())
            }
            Self::Write { pa, data } => {
                write!(f, "write {:#x} ", pa.0)?;
                for byte in data {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_hex_bytes() {
        assert_eq!(number("0x1_000"), Ok(0x1000));
        assert_eq!(number("42"), Ok(42));
        assert!(number("0xg").is_err());
        assert!(number("").is_err());
        assert_eq!(hex_bytes("00ff10"), Ok(vec![0, 0xff, 0x10]));
        assert!(hex_bytes("0").is_err());
        assert!(hex_bytes("zz").is_err());
        assert!(hex_bytes("é0").is_err());
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let steps = parse_script("# a comment\n\n  timeout # trailing\n").unwrap();
        assert_eq!(steps, vec![Step::Timeout]);
    }
}
