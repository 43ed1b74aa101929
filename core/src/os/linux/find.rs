//! Finding the kernel in guest-physical memory: [`LinuxOs::find`].

use crate::addr::{Pa, Va};
use crate::arch::amd64::{Amd64, Paging, PagingMode};
use crate::driver::VmiDriver;
use crate::vmi::VmiCore;

use super::LinuxError;
use super::btf::{BTF_MAGIC, Btf};
use super::kallsyms::Kallsyms;
use super::mem::{KernelSpace, Kmem, Phys, START_KERNEL, START_KERNEL_MAP};
use super::offsets::Offsets;
use super::vmcoreinfo::Vmcoreinfo;

/// The longest `linux_banner` kept.
pub const BANNER_MAX: usize = 256;
/// The largest kernel image (`_text.._end`) accepted.
pub const IMAGE_MAX: u64 = 1 << 30;
/// The largest BTF accepted.
pub const BTF_MAX: u64 = 64 << 20;

/// What the caller knows about the guest, if anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FindHint {
    /// A CR3 of the guest (any process's, with PCID bits or not).
    pub cr3: Option<Pa>,
    /// The paging mode the guest runs in, if known (from CR4.LA57).
    pub mode: Option<PagingMode>,
    /// Do not use VMCOREINFO even if the guest has one.
    pub ignore_vmcoreinfo: bool,
}

/// How the image's physical place was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ImageFoundBy {
    /// VMCOREINFO's `NUMBER(phys_base)`, checked.
    Vmcoreinfo,
    /// Translating `_text` through the CR3 given.
    Cr3,
    /// Trying each 2 MiB-aligned place below the kallsyms tables: the one where
    /// `init_top_pgt` maps `_text` onto itself and `linux_banner` reads "Linux version".
    Scan,
}

/// Where the BTF was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum BtfFoundBy {
    /// `__start_BTF`..`__stop_BTF` from kallsyms.
    Symbols,
    /// A scan of the kernel image for the BTF magic (the first header whose types
    /// include `task_struct`).
    Scan,
}

/// VMCOREINFO as found and judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum VmcoreinfoUse {
    /// None in the guest (at a page start), or not looked for.
    Absent,
    /// Found, every claim checked held, and used.
    Used(Vmcoreinfo),
    /// Found but a claim failed; the reason.
    Rejected(Vmcoreinfo, LinuxError),
}

/// Kernel symbols the layer uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[allow(missing_docs)] // each is the symbol of that name
pub struct KernelSymbols {
    pub text: u64,
    pub end: u64,
    pub init_top_pgt: u64,
    pub init_task: u64,
    pub linux_banner: u64,
    pub modules: Option<u64>,
    pub page_offset_base: Option<u64>,
    pub current_task: Option<u64>,
    pub pcpu_hot: Option<u64>,
    pub per_cpu_offset: Option<u64>,
    pub start_btf: Option<u64>,
    pub stop_btf: Option<u64>,
}

const SYMBOL_NAMES: [&str; 12] = [
    "_text",
    "_end",
    "init_top_pgt",
    "init_task",
    "linux_banner",
    "modules",
    "page_offset_base",
    "current_task",
    "pcpu_hot",
    "__per_cpu_offset",
    "__start_BTF",
    "__stop_BTF",
];

/// A Linux guest's kernel, found: the OS layer.
#[derive(Clone, Debug)]
pub struct LinuxOs {
    /// The kernel's address space.
    pub space: KernelSpace,
    /// The symbol table.
    pub kallsyms: Kallsyms,
    /// The type information.
    pub btf: Btf,
    /// The struct layouts.
    pub offsets: Offsets,
    /// The symbols used.
    pub symbols: KernelSymbols,
    /// How the image was placed.
    pub image_found_by: ImageFoundBy,
    /// How the BTF was found.
    pub btf_found_by: BtfFoundBy,
    /// VMCOREINFO, and whether it was used.
    pub vmcoreinfo: VmcoreinfoUse,
    /// Whether page-table isolation is on (the kernel PGD's user copy maps the entry
    /// area).
    pub pti: bool,
    banner: [u8; BANNER_MAX],
    banner_len: usize,
}

impl LinuxOs {
    /// `linux_banner`: "Linux version ..." up to its newline.
    pub fn banner(&self) -> &str {
        self.banner
            .get(..self.banner_len)
            .and_then(|b| core::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    /// The release ("6.1.0-57-amd64"): the banner's third word.
    pub fn release(&self) -> &str {
        self.banner().split(' ').nth(2).unwrap_or("")
    }

    /// Finds the kernel in guest-physical memory.
    ///
    /// 1. VMCOREINFO: each text at a page start that parses is judged: its
    ///    `SYMBOL(swapper_pg_dir)` placed by `NUMBER(phys_base)` must be a page table
    ///    that maps `SYMBOL(_stext)` onto its own place, and `KERNELOFFSET` must put
    ///    `_stext` within 16 MiB above `__START_KERNEL`. One that holds gives the
    ///    kallsyms token table's place (`SYMBOL(kallsyms_token_table)`).
    /// 2. kallsyms: there, else by scanning all memory ([`Kallsyms::find`]).
    /// 3. The image's place: from VMCOREINFO, else the CR3 of `hint`, else the 2 MiB
    ///    candidates (see [`ImageFoundBy::Scan`]); 4- or 5-level paging is the mode in
    ///    which `init_top_pgt` maps `_text` (the hint's mode first).
    /// 4. `page_offset_base` (the variable, else the mode's default), checked to map
    ///    `_text`'s frame; BTF; the struct layouts.
    /// 5. VMCOREINFO's OSRELEASE must equal the release in `linux_banner`, and its
    ///    symbols kallsyms's; if not, it is rejected and step 2 on is redone without it.
    ///
    /// # Errors
    /// The first step that fails, by name: [`LinuxError::KallsymsNotFound`] and the other
    /// kallsyms errors, [`LinuxError::KernelNotFound`], [`LinuxError::BtfNotFound`],
    /// [`LinuxError::BtfCorrupt`], ...
    pub fn find<D: VmiDriver<Architecture = Amd64>>(
        core: &VmiCore<D>,
        hint: FindHint,
        scratch: &mut [u8],
    ) -> Result<Self, LinuxError> {
        let phys = Phys::new(core)?;
        let mut first_rejected = None;
        if !hint.ignore_vmcoreinfo {
            let mut attempt = None;
            let _ = Vmcoreinfo::scan(&phys, |v| match precheck(&phys, &v) {
                Ok(()) => {
                    attempt = Some(v);
                    Some(())
                }
                Err(e) => {
                    first_rejected.get_or_insert((v, e));
                    None
                }
            });
            if let Some(v) = attempt {
                match Self::find_with(core, &phys, hint, Some(&v), scratch) {
                    Ok(mut os) => {
                        match judge(&os, &v) {
                            Ok(()) => os.vmcoreinfo = VmcoreinfoUse::Used(v),
                            Err(e) => {
                                let mut os = Self::find_with(core, &phys, hint, None, scratch)?;
                                os.vmcoreinfo = VmcoreinfoUse::Rejected(v, e);
                                return Ok(os);
                            }
                        }
                        return Ok(os);
                    }
                    Err(e) => {
                        first_rejected = Some((v, e));
                    }
                }
            }
        }
        let mut os = Self::find_with(core, &phys, hint, None, scratch)?;
        if let Some((v, e)) = first_rejected {
            os.vmcoreinfo = VmcoreinfoUse::Rejected(v, e);
        }
        Ok(os)
    }

    fn find_with<D: VmiDriver<Architecture = Amd64>>(
        core: &VmiCore<D>,
        phys: &Phys<'_, D>,
        hint: FindHint,
        vmci: Option<&Vmcoreinfo>,
        scratch: &mut [u8],
    ) -> Result<Self, LinuxError> {
        // 2. kallsyms
        let via_vmci = vmci.and_then(|v| {
            let pb = v.phys_base?;
            let tt = v
                .kallsyms_token_table?
                .wrapping_sub(START_KERNEL_MAP)
                .wrapping_add(pb);
            Kallsyms::find_in(phys, tt, tt.saturating_add(0x1000), scratch).ok()
        });
        let kallsyms = match via_vmci {
            Some(k) => k,
            None => Kallsyms::find_in(phys, 0, phys.end, scratch)?,
        };
        let mut found = [None; 12];
        kallsyms.lookup_many(core, &SYMBOL_NAMES, &mut found)?;
        let need = |i: usize, what: &'static str| {
            found
                .get(i)
                .copied()
                .flatten()
                .ok_or(LinuxError::KernelNotFound(what))
        };
        let get = |i: usize| found.get(i).copied().flatten();
        let symbols = KernelSymbols {
            text: need(0, "kallsyms has no _text")?,
            end: need(1, "kallsyms has no _end")?,
            init_top_pgt: need(2, "kallsyms has no init_top_pgt")?,
            init_task: need(3, "kallsyms has no init_task")?,
            linux_banner: need(4, "kallsyms has no linux_banner")?,
            modules: get(5),
            page_offset_base: get(6),
            current_task: get(7),
            pcpu_hot: get(8),
            per_cpu_offset: get(9),
            start_btf: get(10),
            stop_btf: get(11),
        };
        let image_len = symbols.end.wrapping_sub(symbols.text);
        if symbols.end <= symbols.text || image_len > IMAGE_MAX {
            return Err(LinuxError::KernelNotFound(
                "_end is not above _text within IMAGE_MAX",
            ));
        }
        // 3. the image's physical place and the paging mode
        let modes = match hint.mode {
            Some(PagingMode::Level5) => [PagingMode::Level5, PagingMode::Level4],
            _ => [PagingMode::Level4, PagingMode::Level5],
        };
        let mut placed: Option<(u64, PagingMode, ImageFoundBy)> = None;
        let maps_text = |pa_text: u64| -> Option<PagingMode> {
            let root = symbols
                .init_top_pgt
                .wrapping_sub(symbols.text)
                .wrapping_add(pa_text);
            if root & 0xfff != 0 || root >= phys.end {
                return None;
            }
            modes.into_iter().find(|&mode| {
                core.translate_with(&Paging::new(mode), Va(symbols.text), Pa(root), |_| {})
                    .is_ok_and(|t| t.pa.0 == pa_text)
            })
        };
        let banner_at = |pa_text: u64| -> bool {
            let mut b = [0u8; 14];
            phys.read(
                symbols
                    .linux_banner
                    .wrapping_sub(symbols.text)
                    .wrapping_add(pa_text),
                &mut b,
            )
            .is_ok()
                && &b == b"Linux version "
        };
        if let Some(pb) = vmci.and_then(|v| v.phys_base) {
            let pa_text = symbols.text.wrapping_sub(START_KERNEL_MAP).wrapping_add(pb);
            if let Some(mode) = maps_text(pa_text).filter(|_| banner_at(pa_text)) {
                placed = Some((pa_text, mode, ImageFoundBy::Vmcoreinfo));
            }
        }
        if placed.is_none()
            && let Some(cr3) = hint.cr3
        {
            for mode in modes {
                let paging = Paging::new(mode);
                let root = Pa(paging.root_table(cr3).0);
                if let Ok(t) = core.translate_with(&paging, Va(symbols.text), root, |_| {})
                    && maps_text(t.pa.0) == Some(mode)
                    && banner_at(t.pa.0)
                {
                    placed = Some((t.pa.0, mode, ImageFoundBy::Cr3));
                    break;
                }
            }
        }
        if placed.is_none() {
            // _text lies below the token table by less than the image's length, on a
            // 2 MiB boundary (CONFIG_PHYSICAL_ALIGN on x86-64 is a multiple of 2 MiB)
            let hi = kallsyms.token_table & !0x1f_ffff;
            let lo = kallsyms.token_table.saturating_sub(image_len);
            let mut pa = hi;
            loop {
                if banner_at(pa)
                    && let Some(mode) = maps_text(pa)
                {
                    placed = Some((pa, mode, ImageFoundBy::Scan));
                    break;
                }
                if pa < lo.saturating_add(0x20_0000) {
                    break;
                }
                // below 2 MiB there is no lower boundary to try
                let Some(below) = pa.checked_sub(0x20_0000) else {
                    break;
                };
                pa = below;
            }
        }
        let (pa_text, mode, image_found_by) = placed.ok_or(LinuxError::KernelNotFound(
            "no place of the image where init_top_pgt maps _text and linux_banner reads",
        ))?;
        let image_delta = symbols.text.wrapping_sub(pa_text);
        let root = Pa(symbols.init_top_pgt.wrapping_sub(image_delta));
        let mut space = KernelSpace {
            root,
            mode,
            text: Va(symbols.text),
            end: Va(symbols.end),
            image_delta,
            page_offset_base: 0,
            phys_end: phys.end,
        };
        // 4. page_offset_base
        let default_pob = match mode {
            PagingMode::Level5 => 0xff11_0000_0000_0000,
            _ => 0xffff_8880_0000_0000,
        };
        let pob_var = symbols
            .page_offset_base
            .and_then(|va| phys.u64(va.wrapping_sub(image_delta)).ok());
        let maps_direct = |pob: u64| {
            core.translate_with(
                &Paging::new(mode),
                Va(pob.wrapping_add(pa_text)),
                root,
                |_| {},
            )
            .is_ok_and(|t| t.pa.0 == pa_text)
        };
        space.page_offset_base = [pob_var, Some(default_pob)]
            .into_iter()
            .flatten()
            .find(|&p| maps_direct(p))
            .ok_or(LinuxError::KernelNotFound(
                "page_offset_base does not map the image's frames",
            ))?;
        // BTF
        let (btf, btf_found_by) = match (symbols.start_btf, symbols.stop_btf) {
            (Some(start), Some(stop)) if stop > start => (
                Btf::at_phys(
                    phys,
                    start.wrapping_sub(image_delta),
                    // `stop > start`: the difference, not zero
                    stop.saturating_sub(start).min(BTF_MAX),
                )?,
                BtfFoundBy::Symbols,
            ),
            _ => (
                scan_btf(core, phys, pa_text, image_len, scratch)?,
                BtfFoundBy::Scan,
            ),
        };
        let offsets = Offsets::from_btf(core, &btf)?;
        // banner
        let mut banner = [0u8; BANNER_MAX];
        phys.read(symbols.linux_banner.wrapping_sub(image_delta), &mut banner)?;
        let banner_len = banner
            .iter()
            .position(|&b| b == 0 || b == b'\n')
            .unwrap_or(BANNER_MAX);
        // PTI: the user copy of the kernel PGD (the second 4 KiB) maps kernel space
        let mut pti = false;
        // entries 256..512 of that page: 0x800..0x1000 into it, 0x1800..0x2000 from the root
        for off in (0x1800..0x2000u64).step_by(8) {
            if phys.u64(root.0.wrapping_add(off)).is_ok_and(|e| e & 1 != 0) {
                pti = true;
                break;
            }
        }
        Ok(Self {
            space,
            kallsyms,
            btf,
            offsets,
            symbols,
            image_found_by,
            btf_found_by,
            vmcoreinfo: VmcoreinfoUse::Absent,
            pti,
            banner,
            banner_len,
        })
    }

    pub(crate) fn kmem<'a, D: VmiDriver<Architecture = Amd64>>(
        &self,
        core: &'a VmiCore<D>,
    ) -> Result<Kmem<'a, D>, LinuxError> {
        Kmem::new(core, self.space)
    }
}

/// The claims of a VMCOREINFO that can be checked before kallsyms is known.
fn precheck<D: VmiDriver<Architecture = Amd64>>(
    phys: &Phys<'_, D>,
    v: &Vmcoreinfo,
) -> Result<(), LinuxError> {
    let pb = v
        .phys_base
        .ok_or(LinuxError::VmcoreinfoInvalid("no NUMBER(phys_base)"))?;
    let pgd = v
        .swapper_pg_dir
        .or(v.init_top_pgt)
        .ok_or(LinuxError::VmcoreinfoInvalid("no SYMBOL(swapper_pg_dir)"))?;
    let stext = v
        .stext
        .ok_or(LinuxError::VmcoreinfoInvalid("no SYMBOL(_stext)"))?;
    let off = v
        .kerneloffset
        .ok_or(LinuxError::VmcoreinfoInvalid("no KERNELOFFSET"))?;
    let rel = stext.wrapping_sub(off).wrapping_sub(START_KERNEL);
    if rel >= 16 << 20 {
        return Err(LinuxError::VmcoreinfoInvalid(
            "KERNELOFFSET does not place _stext above __START_KERNEL",
        ));
    }
    let root = pgd.wrapping_sub(START_KERNEL_MAP).wrapping_add(pb);
    let want = stext.wrapping_sub(START_KERNEL_MAP).wrapping_add(pb);
    let mode = match v.pgtable_l5_enabled {
        Some(1) => PagingMode::Level5,
        _ => PagingMode::Level4,
    };
    let ok = root & 0xfff == 0
        && root < phys.end
        && phys
            .core
            .translate_with(&Paging::new(mode), Va(stext), Pa(root), |_| {})
            .is_ok_and(|t| t.pa.0 == want);
    if !ok {
        return Err(LinuxError::VmcoreinfoInvalid(
            "SYMBOL(swapper_pg_dir) placed by NUMBER(phys_base) does not map SYMBOL(_stext)",
        ));
    }
    Ok(())
}

/// The claims checked against what was found.
fn judge(os: &LinuxOs, v: &Vmcoreinfo) -> Result<(), LinuxError> {
    if v.osrelease() != os.release() {
        return Err(LinuxError::VmcoreinfoInvalid(
            "OSRELEASE differs from linux_banner's release",
        ));
    }
    if v.swapper_pg_dir.or(v.init_top_pgt) != Some(os.symbols.init_top_pgt) {
        return Err(LinuxError::VmcoreinfoInvalid(
            "SYMBOL(swapper_pg_dir) differs from kallsyms's init_top_pgt",
        ));
    }
    if v.kerneloffset != Some(os.space.kaslr_slide()) {
        return Err(LinuxError::VmcoreinfoInvalid(
            "KERNELOFFSET differs from _text - __START_KERNEL",
        ));
    }
    if v.phys_base != Some(os.space.phys_base()) {
        return Err(LinuxError::VmcoreinfoInvalid(
            "NUMBER(phys_base) differs from the image's place",
        ));
    }
    let l5 = os.space.mode == PagingMode::Level5;
    if v.pgtable_l5_enabled.is_some_and(|x| (x == 1) != l5) {
        return Err(LinuxError::VmcoreinfoInvalid(
            "NUMBER(pgtable_l5_enabled) differs from the paging found",
        ));
    }
    Ok(())
}

/// The first BTF header in the image whose types include `task_struct`.
fn scan_btf<D: VmiDriver>(
    core: &VmiCore<D>,
    phys: &Phys<'_, D>,
    pa_text: u64,
    image_len: u64,
    scratch: &mut [u8],
) -> Result<Btf, LinuxError> {
    let end = pa_text.saturating_add(image_len);
    let magic = BTF_MAGIC.to_le_bytes();
    let found = phys.scan(pa_text, end, scratch, 8, |base, bytes| {
        // every 4-aligned word of the chunk, with its offset
        for (i, w) in (0..bytes.len()).step_by(4).zip(bytes.chunks_exact(4)) {
            if w == [magic[0], magic[1], 1, 0] {
                let pa = base.wrapping_add(i as u64);
                if let Ok(btf) = Btf::at_phys(phys, pa, BTF_MAX.min(end.saturating_sub(pa)))
                    && btf.struct_named(core, "task_struct").is_ok()
                {
                    return Some(btf);
                }
            }
        }
        None
    });
    found.ok_or(LinuxError::BtfNotFound)
}
