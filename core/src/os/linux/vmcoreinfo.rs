//! VMCOREINFO: the `KEY=value` lines the kernel keeps in RAM for crash tools
//! (`vmcoreinfo_data`, a page of its own allocated at boot, the text from its first
//! byte: `OSRELEASE=...\nPAGESIZE=...\n...`).
//!
//! Only the keys this layer uses are kept. The text is a claim, not a fact: the caller
//! checks it (see [`LinuxOs::find`](super::LinuxOs::find)) before relying on it.
//!
//! # Contract
//! The scan looks at page starts only (one short read per frame) and the parse at most
//! [`VMCOREINFO_MAX`] bytes; any bytes give `Ok` or `Err`.

use crate::driver::VmiDriver;

use super::LinuxError;
use super::mem::Phys;

/// The most bytes of VMCOREINFO text read (`VMCOREINFO_BYTES` is one page).
pub const VMCOREINFO_MAX: usize = 4096;
/// The longest OSRELEASE kept.
pub const OSRELEASE_MAX: usize = 64;

/// The parsed keys of a VMCOREINFO text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Vmcoreinfo {
    /// Guest-physical address of the text.
    pub pa: u64,
    /// The length of the text in bytes.
    pub len: u32,
    /// `OSRELEASE`, its bytes and length.
    pub osrelease: [u8; OSRELEASE_MAX],
    /// The length of `osrelease`.
    pub osrelease_len: u8,
    /// `KERNELOFFSET` (hex): the KASLR slide.
    pub kerneloffset: Option<u64>,
    /// `NUMBER(phys_base)`.
    pub phys_base: Option<u64>,
    /// `SYMBOL(swapper_pg_dir)` (on x86-64 the address of `init_top_pgt`).
    pub swapper_pg_dir: Option<u64>,
    /// `SYMBOL(init_top_pgt)`.
    pub init_top_pgt: Option<u64>,
    /// `SYMBOL(_stext)`.
    pub stext: Option<u64>,
    /// `NUMBER(pgtable_l5_enabled)`.
    pub pgtable_l5_enabled: Option<u64>,
    /// `SYMBOL(kallsyms_token_table)` (kernels from 6.0).
    pub kallsyms_token_table: Option<u64>,
    /// `SYMBOL(kallsyms_names)`.
    pub kallsyms_names: Option<u64>,
    /// `PAGESIZE`.
    pub page_size: Option<u64>,
}

impl Default for Vmcoreinfo {
    fn default() -> Self {
        Self {
            pa: 0,
            len: 0,
            osrelease: [0; OSRELEASE_MAX],
            osrelease_len: 0,
            kerneloffset: None,
            phys_base: None,
            swapper_pg_dir: None,
            init_top_pgt: None,
            stext: None,
            pgtable_l5_enabled: None,
            kallsyms_token_table: None,
            kallsyms_names: None,
            page_size: None,
        }
    }
}

impl Vmcoreinfo {
    /// OSRELEASE as text.
    pub fn osrelease(&self) -> &str {
        let n = usize::from(self.osrelease_len).min(OSRELEASE_MAX);
        self.osrelease
            .get(..n)
            .and_then(|b| core::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    /// Parses the text `bytes` (up to a NUL or its end).
    ///
    /// # Errors
    /// [`LinuxError::VmcoreinfoInvalid`] if it does not start with `OSRELEASE=` or a
    /// line is not `KEY=value` in printable ASCII.
    pub fn parse(pa: u64, bytes: &[u8]) -> Result<Self, LinuxError> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = bytes.get(..end).unwrap_or(&[]);
        if !text.starts_with(b"OSRELEASE=") {
            return Err(LinuxError::VmcoreinfoInvalid(
                "the text does not start with OSRELEASE=",
            ));
        }
        let mut v = Self {
            pa,
            len: u32::try_from(text.len()).unwrap_or(u32::MAX),
            ..Self::default()
        };
        for line in text.split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            if !line.iter().all(|&b| (0x20..0x7f).contains(&b)) {
                return Err(LinuxError::VmcoreinfoInvalid(
                    "a VMCOREINFO line is not printable ASCII",
                ));
            }
            let Some(eq) = line.iter().position(|&b| b == b'=') else {
                return Err(LinuxError::VmcoreinfoInvalid(
                    "a VMCOREINFO line without '='",
                ));
            };
            let (key, value) = (
                line.get(..eq).unwrap_or(&[]),
                // what follows the '='
                line.get(eq..).and_then(|rest| rest.get(1..)).unwrap_or(&[]),
            );
            let hex = || parse_hex(value);
            let dec = || parse_dec(value);
            match key {
                b"OSRELEASE" => {
                    let n = value.len().min(OSRELEASE_MAX);
                    if let (Some(dst), Some(src)) = (v.osrelease.get_mut(..n), value.get(..n)) {
                        dst.copy_from_slice(src);
                    }
                    v.osrelease_len = n as u8;
                }
                b"KERNELOFFSET" => v.kerneloffset = hex(),
                b"NUMBER(phys_base)" => v.phys_base = dec().or_else(hex),
                b"SYMBOL(swapper_pg_dir)" => v.swapper_pg_dir = hex(),
                b"SYMBOL(init_top_pgt)" => v.init_top_pgt = hex(),
                b"SYMBOL(_stext)" => v.stext = hex(),
                b"NUMBER(pgtable_l5_enabled)" => v.pgtable_l5_enabled = dec(),
                b"SYMBOL(kallsyms_token_table)" => v.kallsyms_token_table = hex(),
                b"SYMBOL(kallsyms_names)" => v.kallsyms_names = hex(),
                b"PAGESIZE" => v.page_size = dec(),
                _ => {}
            }
        }
        if v.osrelease_len == 0 {
            return Err(LinuxError::VmcoreinfoInvalid("an empty OSRELEASE"));
        }
        Ok(v)
    }

    /// Looks at the start of every frame of guest-physical memory for `OSRELEASE=` and
    /// returns every text that parses, in address order, to `visit` until it breaks
    /// (`Some`).
    pub(crate) fn scan<D: VmiDriver, T>(
        phys: &Phys<'_, D>,
        mut visit: impl FnMut(Self) -> Option<T>,
    ) -> Option<T> {
        let mut head = [0u8; 10];
        let mut pa = 0u64;
        while pa < phys.end {
            if phys.read(pa, &mut head).is_ok() && &head == b"OSRELEASE=" {
                let mut buf = [0u8; VMCOREINFO_MAX];
                if phys.read(pa, &mut buf).is_ok()
                    && let Ok(v) = Self::parse(pa, &buf)
                    && let Some(t) = visit(v)
                {
                    return Some(t);
                }
            }
            let Some(next) = pa.checked_add(0x1000) else {
                break;
            };
            pa = next;
        }
        None
    }
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    let s = s.strip_prefix(b"0x").unwrap_or(s);
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v = 0u64;
    for &c in s {
        let d = (c as char).to_digit(16)?;
        v = v.checked_mul(16)?.checked_add(u64::from(d))?;
    }
    Some(v)
}

/// A decimal, optionally negative (`NUMBER(x)` is printed with `%ld`): a negative value
/// as its two's complement.
fn parse_dec(s: &[u8]) -> Option<u64> {
    if let Some(rest) = s.strip_prefix(b"-") {
        let v = parse_dec(rest)?;
        return (v <= 1 << 63).then(|| v.wrapping_neg());
    }
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v = 0u64;
    for &c in s {
        let d = (c as char).to_digit(10)?;
        v = v.checked_mul(10)?.checked_add(u64::from(d))?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_keys_and_refuses_junk() {
        let text = b"OSRELEASE=6.1.0-57-amd64\nPAGESIZE=4096\nSYMBOL(swapper_pg_dir)=ffffffff82a10000\n\
KERNELOFFSET=0\nNUMBER(phys_base)=0\nNUMBER(pgtable_l5_enabled)=1\nSYMBOL(kallsyms_token_table)=ffffffff8232ddd8\n\0junk";
        let v = Vmcoreinfo::parse(0x1000, text).unwrap();
        assert_eq!(v.osrelease(), "6.1.0-57-amd64");
        assert_eq!(v.swapper_pg_dir, Some(0xffff_ffff_82a1_0000));
        assert_eq!(v.kerneloffset, Some(0));
        assert_eq!(v.phys_base, Some(0));
        assert_eq!(v.pgtable_l5_enabled, Some(1));
        assert_eq!(v.page_size, Some(4096));
        assert_eq!(v.kallsyms_token_table, Some(0xffff_ffff_8232_ddd8));
        assert!(matches!(
            Vmcoreinfo::parse(0, b"PAGESIZE=4096\n"),
            Err(LinuxError::VmcoreinfoInvalid(_))
        ));
        assert!(matches!(
            Vmcoreinfo::parse(0, b"OSRELEASE=x\nNOEQUALS\n"),
            Err(LinuxError::VmcoreinfoInvalid(_))
        ));
        assert!(matches!(
            Vmcoreinfo::parse(0, b"OSRELEASE=x\nKEY=\x01\n"),
            Err(LinuxError::VmcoreinfoInvalid(_))
        ));
        assert_eq!(parse_hex(b"fffffffffffffffff"), None);
        assert_eq!(parse_dec(b"99999999999999999999"), None);
        assert_eq!(parse_dec(b"-29360128"), Some(0u64.wrapping_sub(29_360_128)));
        assert_eq!(parse_dec(b"--1"), None);
    }
}
