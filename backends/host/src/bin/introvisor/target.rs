//! Opening a dump and choosing the page-table root and paging mode from the vCPU's
//! registers and the options.

use std::ffi::OsString;

use introvisor::arch::amd64::{Paging, PagingMode};
use introvisor::{Pa, VmiCore};

use super::Failure;
use super::args::{Opt, Parsed, count_arg, hex_arg};
use introvisor_host::HostDriver;
use introvisor_host::dump::{DumpInfo, DumpKind};

/// `--format raw|elf|lime`: read the dump as that format, whatever its content.
pub(crate) const FORMAT_OPTION: Opt = Opt {
    name: "format",
    short: None,
    takes_value: true,
};

/// The options of `translate` and `read` that say how to open the dump and walk.
pub(crate) const WALK_OPTIONS: [Opt; 8] = [
    FORMAT_OPTION,
    Opt {
        name: "cr3",
        short: None,
        takes_value: true,
    },
    Opt {
        name: "vcpu",
        short: None,
        takes_value: true,
    },
    Opt {
        name: "paging",
        short: None,
        takes_value: true,
    },
    Opt {
        name: "maxphyaddr",
        short: None,
        takes_value: true,
    },
    Opt {
        name: "nxe",
        short: None,
        takes_value: true,
    },
    Opt {
        name: "pse",
        short: None,
        takes_value: true,
    },
    Opt {
        name: "progress",
        short: None,
        takes_value: false,
    },
];

/// An opened dump with the root and paging to use.
pub(crate) struct Target {
    pub(crate) core: VmiCore<HostDriver>,
    pub(crate) root: Pa,
    pub(crate) paging: Paging,
    /// What was assumed rather than known, for a note on stderr.
    pub(crate) note: Option<&'static str>,
}

/// The name of a paging mode as the options spell it.
pub(crate) fn mode_name(mode: PagingMode) -> &'static str {
    match mode {
        PagingMode::Disabled => "paging off",
        PagingMode::Bits32 => "32-bit paging",
        PagingMode::Pae => "PAE paging",
        PagingMode::Level4 => "4-level paging",
        PagingMode::Level5 => "5-level paging",
    }
}

/// The name of a paging mode as `--paging` spells it (and `--json` writes it).
pub(crate) fn mode_option(mode: PagingMode) -> &'static str {
    match mode {
        PagingMode::Disabled => "off",
        PagingMode::Bits32 => "32",
        PagingMode::Pae => "pae",
        PagingMode::Level4 => "4",
        PagingMode::Level5 => "5",
    }
}

fn parse_mode(text: &str) -> Result<PagingMode, Failure> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "32" | "bits32" => PagingMode::Bits32,
        "pae" => PagingMode::Pae,
        "4" | "level4" => PagingMode::Level4,
        "5" | "level5" => PagingMode::Level5,
        "off" | "none" => PagingMode::Disabled,
        _ => {
            return Err(Failure::usage(format!(
                "unknown paging mode '{text}' (expected 32, pae, 4, 5 or off)"
            )));
        }
    })
}

fn parse_bool(text: &str, name: &str) -> Result<bool, Failure> {
    match text {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(Failure::usage(format!(
            "--{name} takes 0 or 1, not '{text}'"
        ))),
    }
}

/// The format `--format` names, if given.
pub(crate) fn format_choice(opts: &Parsed) -> Result<Option<DumpKind>, Failure> {
    opts.value("format")
        .map(|text| match text.to_ascii_lowercase().as_str() {
            "raw" => Ok(DumpKind::Raw),
            "elf" => Ok(DumpKind::Elf),
            "lime" => Ok(DumpKind::Lime),
            _ => Err(Failure::usage(format!(
                "unknown format '{text}' (expected raw, elf or lime)"
            ))),
        })
        .transpose()
}

/// Opens the dump at `path`, as `kind` if given, else by content.
/// The registers of vCPU `vcpu` of the dump (the first vCPU without `--vcpu`), if the
/// dump records its control registers; an input error for a vCPU the dump does not have.
pub(crate) fn vcpu_registers(
    vcpu: Option<u64>,
    info: &DumpInfo,
) -> Result<Option<introvisor::arch::amd64::Registers>, Failure> {
    let v = match vcpu {
        Some(n) => Some(
            *usize::try_from(n)
                .ok()
                .and_then(|i| info.vcpus.get(i))
                .ok_or_else(|| {
                    Failure::input(format!(
                        "--vcpu {n}: the dump has {} vCPU(s) with registers",
                        info.vcpus.len()
                    ))
                })?,
        ),
        None => info.vcpus.first().copied(),
    };
    Ok(v.filter(|v| v.has_control_registers()).map(|v| v.registers))
}

pub(crate) fn open(
    path: &OsString,
    kind: Option<DumpKind>,
) -> Result<(HostDriver, DumpInfo), Failure> {
    match kind {
        Some(kind) => HostDriver::open_dump_as(path, kind),
        None => HostDriver::open_dump(path),
    }
    .map_err(|e| Failure::input(format!("cannot open the dump {e}")))
}

/// The options that say how to walk, which a physical read (`read --physical`) refuses.
pub(crate) const PAGING_OPTIONS: [&str; 6] = ["cr3", "vcpu", "paging", "maxphyaddr", "nxe", "pse"];

/// Opens the dump for reads of guest-physical memory, which need no root or paging.
pub(crate) fn open_physical(path: &OsString, opts: &Parsed) -> Result<Target, Failure> {
    if let Some(name) = PAGING_OPTIONS.iter().find(|n| opts.flag(n)) {
        return Err(Failure::usage(format!(
            "--{name} does not apply to --physical, which reads without translation"
        )));
    }
    let (driver, _) = open(path, format_choice(opts)?)?;
    Ok(Target {
        core: VmiCore::new(driver),
        root: Pa(0),
        paging: Paging::new(PagingMode::Disabled),
        note: None,
    })
}

/// Opens the dump and resolves root and paging from the vCPU and the options.
pub(crate) fn resolve(path: &OsString, opts: &Parsed) -> Result<Target, Failure> {
    // Check every option before the (possibly slow) open, so usage errors come first.
    let kind = format_choice(opts)?;
    let cr3 = opts.value("cr3").map(|v| hex_arg(v, "CR3")).transpose()?;
    let vcpu = opts
        .value("vcpu")
        .map(|v| count_arg(v, "vCPU number"))
        .transpose()?;
    let mode = opts.value("paging").map(parse_mode).transpose()?;
    let maxphyaddr = opts
        .value("maxphyaddr")
        .map(|v| count_arg(v, "MAXPHYADDR"))
        .transpose()?;
    if let Some(m) = maxphyaddr
        && !(32..=52).contains(&m)
    {
        return Err(Failure::usage(format!(
            "--maxphyaddr must be between 32 and 52, not {m}"
        )));
    }
    let nxe = opts
        .value("nxe")
        .map(|v| parse_bool(v, "nxe"))
        .transpose()?;
    let pse = opts
        .value("pse")
        .map(|v| parse_bool(v, "pse"))
        .transpose()?;

    let (driver, info) = open(path, kind)?;
    let vcpu_regs = vcpu_registers(vcpu, &info)?;

    let mut paging = match &vcpu_regs {
        Some(r) => r.paging(),
        None => Paging::new(PagingMode::Level4),
    };
    // A raw dump (or one without control registers) does not say how its tables are
    // laid out: a 5-level guest walked as 4-level gives wrong answers, not errors.
    let note = (vcpu_regs.is_none() && mode.is_none()).then_some(
        "the dump does not record the paging mode; assuming 4-level paging (give --paging 5 for a 5-level guest, --paging pae or 32 for a 32-bit one)",
    );
    if let Some(m) = mode {
        paging.mode = m;
    }
    if let Some(m) = maxphyaddr {
        paging.max_phys_addr = m as u8;
    }
    if let Some(b) = nxe {
        paging.nxe = b;
    }
    if let Some(b) = pse {
        paging.pse = b;
    }
    let root = match (cr3, &vcpu_regs) {
        (Some(cr3), _) => Pa(cr3),
        (None, Some(r)) => r.translation_root(),
        (None, None) if info.vcpus.is_empty() => {
            return Err(Failure::usage(
                "--cr3 is required: the dump holds no vCPU registers",
            ));
        }
        (None, None) => {
            return Err(Failure::usage(
                "--cr3 is required: the dump's vCPU notes hold no control registers",
            ));
        }
    };
    let core = VmiCore::new(driver).with_paging(paging);
    Ok(Target {
        core,
        root,
        paging,
        note,
    })
}
