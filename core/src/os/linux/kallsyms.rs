//! The kernel's own symbol table (`CONFIG_KALLSYMS`), found by content and decoded in
//! place.
//!
//! # The tables
//! `scripts/kallsyms` emits, into `.rodata`, each table at an 8-aligned label:
//! - `kallsyms_num_syms` (u32): the number of symbols `n`;
//! - `kallsyms_names`: `n` entries, each a length and that many token indices; the
//!   length is one byte, or two (low 7 bits first, bit 7 of the first set) for an entry
//!   longer than 127 (kernels from 6.1). An entry expands to the type letter (`T`, `d`,
//!   ...) and the name;
//! - `kallsyms_markers` (u32 each): the offset in `names` of every 256th entry;
//! - `kallsyms_seqs_of_names` (3 bytes each, big-endian): the symbols by name;
//! - `kallsyms_token_table`: 256 NUL-terminated tokens. A byte that occurs in names as
//!   itself is its own token, so the table holds `"0\0" "1\0" ... "9\0"` back to back: the
//!   anchor this module scans for;
//! - `kallsyms_token_index` (u16 each): where each token starts in the token table;
//! - `kallsyms_offsets` (u32 each) and `kallsyms_relative_base` (u64): the addresses.
//!
//! # Supported layouts ([`KallsymsLayout`])
//! - [`KallsymsLayout::OffsetsFirst`] (up to 6.1 mainline): offsets, relative_base,
//!   num_syms, names, markers, token_table, token_index;
//! - [`KallsymsLayout::OffsetsFirstWithSeqs`] (6.2 and 6.3, and stable 6.1 kernels that
//!   took the change, such as Debian 12's): the same with seqs_of_names between markers
//!   and token_table;
//! - [`KallsymsLayout::OffsetsLast`] (6.4 and later, 6.12 among them): num_syms, names,
//!   markers, token_table, token_index, offsets, relative_base, seqs_of_names.
//!
//! The offsets are decoded as [`OffsetEncoding::AbsolutePercpu`]
//! (`CONFIG_KALLSYMS_ABSOLUTE_PERCPU`, x86-64 SMP kernels: a non-negative offset is the
//! address itself, a negative one `relative_base - 1 - offset`) or
//! [`OffsetEncoding::Relative`] (`relative_base + offset`, unsigned), whichever makes the
//! addresses sorted, as `scripts/kallsyms` sorts them.
//!
//! Refused with [`LinuxError::KallsymsUnsupported`]: `kallsyms_addresses` (absolute
//! 64-bit addresses, `CONFIG_KALLSYMS_BASE_RELATIVE=n`), markers of 8 bytes, and any
//! table order other than the three above.
//!
//! # Contract
//! For any guest bytes every function returns `Ok` or `Err`; every scan and every loop
//! is bounded by the constants below; nothing allocates.

use core::ops::ControlFlow;

use crate::driver::VmiDriver;
use crate::vmi::VmiCore;

use super::LinuxError;
use super::cursor::Cursor;
use super::mem::Phys;

/// The most symbols a table may have.
pub const MAX_SYMBOLS: u32 = 1 << 21;
/// The largest token table read (every kernel seen uses about 1 KiB).
pub const TOKEN_TABLE_MAX: usize = 4096;
/// The longest expanded symbol (`KSYM_NAME_LEN` is 512 from 6.1), type letter included.
pub const NAME_MAX: usize = 512;
/// The longest single token accepted.
const TOKEN_MAX: usize = 128;
/// The longest compressed entry (`KSYM_NAME_LEN`).
const ENTRY_MAX: u64 = 512;
/// How far below the token table the markers may start: seqs_of_names (3 bytes a
/// symbol), the markers (4 bytes every 256 symbols) and the alignment between.
const MARKER_WINDOW: u64 = 3 * MAX_SYMBOLS as u64 + 4 * (MAX_SYMBOLS / 256) as u64 + 16;

/// The anchor: tokens `"0"` to `"9"` back to back.
pub(crate) const ANCHOR: &[u8; 20] = b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00";

/// The order of the tables (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum KallsymsLayout {
    /// Up to 6.1: offsets and relative_base before num_syms; no seqs_of_names.
    OffsetsFirst,
    /// 6.2, 6.3 (and stable 6.1 with the backport): as `OffsetsFirst`, seqs_of_names
    /// between markers and token_table.
    OffsetsFirstWithSeqs,
    /// 6.4 and later: offsets, relative_base, seqs_of_names after token_index.
    OffsetsLast,
}

/// How an offset becomes an address (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum OffsetEncoding {
    /// `CONFIG_KALLSYMS_ABSOLUTE_PERCPU`: non-negative = absolute, else `base - 1 - off`.
    AbsolutePercpu,
    /// `base + off`, `off` unsigned.
    Relative,
}

/// The kernel's kallsyms tables, located in guest-physical memory, with the token
/// table copied (at most [`TOKEN_TABLE_MAX`] bytes).
#[derive(Clone)]
pub struct Kallsyms {
    /// The number of symbols.
    pub num_syms: u32,
    /// Guest-physical address of `kallsyms_names`.
    pub names: u64,
    /// Guest-physical address of `kallsyms_markers`.
    pub markers: u64,
    /// Guest-physical address of `kallsyms_seqs_of_names`, if the kernel has one.
    pub seqs_of_names: Option<u64>,
    /// Guest-physical address of `kallsyms_token_table`.
    pub token_table: u64,
    /// Guest-physical address of `kallsyms_token_index`.
    pub token_index: u64,
    /// Guest-physical address of `kallsyms_offsets`.
    pub offsets: u64,
    /// The value of `kallsyms_relative_base`.
    pub relative_base: u64,
    /// The table order.
    pub layout: KallsymsLayout,
    /// The offset encoding.
    pub encoding: OffsetEncoding,
    tokens: [u8; TOKEN_TABLE_MAX],
    tokens_len: usize,
    index: [u16; 256],
}

impl core::fmt::Debug for Kallsyms {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Kallsyms")
            .field("num_syms", &self.num_syms)
            .field("names", &format_args!("{:#x}", self.names))
            .field("markers", &format_args!("{:#x}", self.markers))
            .field("token_table", &format_args!("{:#x}", self.token_table))
            .field("token_index", &format_args!("{:#x}", self.token_index))
            .field("offsets", &format_args!("{:#x}", self.offsets))
            .field("relative_base", &format_args!("{:#x}", self.relative_base))
            .field("layout", &self.layout)
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

/// One decoded symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Symbol<'b> {
    /// Its place in the table (address order).
    pub index: u32,
    /// Its address.
    pub address: u64,
    /// The type letter as `/proc/kallsyms` shows it (`T`, `t`, `D`, `b`, ...).
    pub kind: u8,
    /// The name (bytes as in the table; kernel names are ASCII).
    pub name: &'b [u8],
}

impl Symbol<'_> {
    /// The name as text (`"?"` if it is not UTF-8).
    pub fn name_str(&self) -> &str {
        core::str::from_utf8(self.name).unwrap_or("?")
    }
}

const fn align8(x: u64) -> u64 {
    x.wrapping_add(7) & !7
}

/// Occurrences of [`ANCHOR`] in `bytes`, calling `hit(offset)` for each until it
/// breaks. Skips eight aligned bytes at a time unless they could be part of the anchor.
pub(crate) fn find_anchor(bytes: &[u8], mut hit: impl FnMut(usize) -> ControlFlow<()>) {
    let mut last_reported = usize::MAX;
    // every 8-aligned word of `bytes`, with its offset
    for (i, chunk) in (0..bytes.len()).step_by(8).zip(bytes.chunks_exact(8)) {
        let mut a = [0u8; 8];
        a.copy_from_slice(chunk);
        let v = u64::from_le_bytes(a);
        // every other byte of the anchor is NUL, the others are digits
        if v == 0 || (v & 0xff00_ff00_ff00_ff00 != 0 && v & 0x00ff_00ff_00ff_00ff != 0) {
            continue;
        }
        for p in i.saturating_sub(12)..=i {
            if p == last_reported && last_reported != usize::MAX {
                continue;
            }
            if bytes.get(p..).is_some_and(|rest| rest.starts_with(ANCHOR)) {
                last_reported = p;
                if hit(p).is_break() {
                    return;
                }
            }
        }
    }
}

impl Kallsyms {
    /// Finds the tables by scanning all of guest-physical memory for the token-table
    /// anchor, in address order, and returns the first occurrence whose tables all check
    /// out (token index, markers, names, sorted addresses). Occurrences that fail are
    /// decoys (other copies of digits) and are passed over.
    ///
    /// `scratch` is the scan buffer (64 KiB or more is best; unused when the driver
    /// lends its memory whole).
    ///
    /// # Errors
    /// [`LinuxError::KallsymsNotFound`] if no occurrence checks out; if one got as far
    /// as a valid token table and index, the reason it failed after that instead
    /// ([`LinuxError::KallsymsCorrupt`], [`LinuxError::KallsymsUnsupported`]).
    pub fn find<D: VmiDriver>(core: &VmiCore<D>, scratch: &mut [u8]) -> Result<Self, LinuxError> {
        let phys = Phys::new(core)?;
        Self::find_in(&phys, 0, phys.end, scratch)
    }

    pub(crate) fn find_in<D: VmiDriver>(
        phys: &Phys<'_, D>,
        start: u64,
        end: u64,
        scratch: &mut [u8],
    ) -> Result<Self, LinuxError> {
        let mut best = LinuxError::KallsymsNotFound;
        let found = phys.scan(start, end, scratch, 32, |base, bytes| {
            let mut out = None;
            find_anchor(bytes, |off| {
                let pa = base.wrapping_add(off as u64);
                match Self::at_anchor(phys, pa) {
                    Ok(k) => {
                        out = Some(k);
                        ControlFlow::Break(())
                    }
                    Err(e) => {
                        if !matches!(e, LinuxError::KallsymsNotFound) {
                            best = e;
                        }
                        ControlFlow::Continue(())
                    }
                }
            });
            out
        });
        found.ok_or(best)
    }

    /// Builds the tables from the guest-physical address of the `"0"` token, checking
    /// every table.
    ///
    /// # Errors
    /// [`LinuxError::KallsymsNotFound`] if the token table and index there do not check
    /// out; else as [`Kallsyms::find`].
    pub fn at_digit_token<D: VmiDriver>(core: &VmiCore<D>, pa: u64) -> Result<Self, LinuxError> {
        let phys = Phys::new(core)?;
        Self::at_anchor(&phys, pa)
    }

    pub(crate) fn at_anchor<D: VmiDriver>(
        phys: &Phys<'_, D>,
        anchor: u64,
    ) -> Result<Self, LinuxError> {
        let mut cur = Cursor::new(phys);
        // 1. tokens 0x30..=0xff from the anchor on
        let mut p = anchor;
        for _ in 0x30..=0xffu32 {
            let mut n = 0usize;
            loop {
                let b = cur.byte(p).map_err(|_| LinuxError::KallsymsNotFound)?;
                p = p.wrapping_add(1);
                if b == 0 {
                    break;
                }
                // at most TOKEN_MAX + 1: the check below ends the loop
                n = n.saturating_add(1);
                if n > TOKEN_MAX {
                    return Err(LinuxError::KallsymsNotFound);
                }
            }
            if n == 0 {
                return Err(LinuxError::KallsymsNotFound);
            }
        }
        let tt_tail = p.wrapping_sub(anchor);
        let token_index = align8(p);
        let mut index = [0u16; 256];
        // entry i at byte 2i of the index
        for (slot, off) in index.iter_mut().zip((0..512u64).step_by(2)) {
            *slot = cur
                .u16(token_index.wrapping_add(off))
                .map_err(|_| LinuxError::KallsymsNotFound)?;
        }
        // 2. the index: starts at 0, strictly increasing, "0".."9" two bytes apart,
        //    ending where the table ends
        let i30 = index.get(0x30).copied().unwrap_or(0);
        let ok_digits = index.get(0x30..0x3a).is_some_and(|digits| {
            digits
                .windows(2)
                .all(|w| matches!(w, [a, b] if a.checked_add(2) == Some(*b)))
        });
        let increasing = index.windows(2).all(|w| matches!(w, [a, b] if a < b));
        if index.first() != Some(&0) || !ok_digits || !increasing {
            return Err(LinuxError::KallsymsNotFound);
        }
        let tokens_len = u64::from(i30).wrapping_add(tt_tail);
        let tokens_len = usize::try_from(tokens_len).unwrap_or(usize::MAX);
        if tokens_len > TOKEN_TABLE_MAX {
            return Err(LinuxError::KallsymsUnsupported(
                "the kallsyms token table is larger than TOKEN_TABLE_MAX",
            ));
        }
        let token_table = anchor.wrapping_sub(u64::from(i30));
        let mut tokens = [0u8; TOKEN_TABLE_MAX];
        let dst = tokens
            .get_mut(..tokens_len)
            .ok_or(LinuxError::KallsymsNotFound)?;
        cur.bytes(token_table, dst)
            .map_err(|_| LinuxError::KallsymsNotFound)?;
        // every index entry starts a token: after a NUL (or at 0), not at a NUL
        for &ix in &index {
            let ix = usize::from(ix);
            let starts = ix == 0 || tokens.get(ix.wrapping_sub(1)) == Some(&0);
            if !starts || tokens.get(ix).is_none_or(|&b| b == 0) || ix >= tokens_len {
                return Err(LinuxError::KallsymsNotFound);
            }
        }
        // the table ends with a NUL (an empty table has no last byte)
        if tokens.get(..tokens_len).and_then(<[u8]>::last) != Some(&0) {
            return Err(LinuxError::KallsymsNotFound);
        }
        let mut k = Self {
            num_syms: 0,
            names: 0,
            markers: 0,
            seqs_of_names: None,
            token_table,
            token_index,
            offsets: 0,
            relative_base: 0,
            layout: KallsymsLayout::OffsetsFirst,
            encoding: OffsetEncoding::AbsolutePercpu,
            tokens,
            tokens_len,
            index,
        };
        // 3. markers (and seqs_of_names) before the token table, names before those
        k.locate_names(&mut cur)?;
        // 4. the offsets: before num_syms, or after the token index
        k.locate_offsets(&mut cur)?;
        Ok(k)
    }

    /// Finds markers, seqs_of_names (if any), names and num_syms below the token table.
    fn locate_names<D: VmiDriver>(
        &mut self,
        cur: &mut Cursor<'_, '_, D>,
    ) -> Result<(), LinuxError> {
        let tt = self.token_table;
        if tt & 7 != 0 {
            return Err(LinuxError::KallsymsNotFound);
        }
        // markers start at q (8-aligned, value 0); the table ends at tt, or at the
        // start of seqs_of_names, which ends at tt.
        let lowest = tt.saturating_sub(MARKER_WINDOW);
        let mut q = tt.saturating_sub(8);
        let mut corrupt = None;
        while q >= lowest && q > 16 {
            if cur.u32(q).ok() == Some(0) {
                let m1 = cur.u32(q.wrapping_add(4)).unwrap_or(0);
                if m1 > 256 && u64::from(m1) <= 256 * (ENTRY_MAX + 2) {
                    for (layout, m, n_range) in Self::marker_candidates(q, tt) {
                        match self.try_markers(cur, q, m, n_range, layout) {
                            Ok(()) => return Ok(()),
                            Err(e @ LinuxError::KallsymsCorrupt(_)) => {
                                corrupt.get_or_insert(e);
                            }
                            Err(_) => {}
                        }
                    }
                }
            }
            q = q.wrapping_sub(8);
        }
        if let Some(e) = corrupt {
            return Err(e);
        }
        Err(LinuxError::KallsymsUnsupported(
            "no kallsyms_markers table below the token table in a known order",
        ))
    }

    /// For markers at `q` and the token table at `tt`: the layouts and marker counts that
    /// fit, with the range of symbol counts each allows.
    fn marker_candidates(
        q: u64,
        tt: u64,
    ) -> impl Iterator<Item = (KallsymsLayout, u64, (u64, u64))> {
        let l = tt.wrapping_sub(q);
        // The symbol counts that `m` markers allow: (256(m-1), 256m]; `None` for an `m`
        // so large that they overflow (no table has that many symbols).
        let counts = |m: u64| -> Option<(u64, u64)> {
            let lo = m.checked_sub(1)?.checked_mul(256)?.checked_add(1)?;
            Some((lo, m.checked_mul(256)?))
        };
        // markers right before the token table: align8(q + 4m) == tt
        // (`m <= l / 4`: 4m is at most `l`, no wrapping)
        let direct = [l / 4, (l / 4).wrapping_sub(1)]
            .into_iter()
            .filter(move |&m| m >= 1 && align8(q.wrapping_add(m.wrapping_mul(4))) == tt)
            .filter_map(move |m| Some((KallsymsLayout::OffsetsFirst, m, counts(m)?)));
        // seqs_of_names between: align8(align8(q + 4m) + 3n) == tt, n in (256(m-1), 256m]
        let approx = l / (4 + 768);
        let seqs = (approx.saturating_sub(2)..=approx.saturating_add(2))
            .filter(|&m| m >= 1)
            .filter_map(move |m| {
                // `m <= l / 772 + 2`: 4m is far below 2^64
                let s = align8(q.wrapping_add(m.wrapping_mul(4)));
                let rest = tt.checked_sub(s)?;
                // 3n in (rest - 8, rest]
                let hi = rest / 3;
                let lo = rest.saturating_sub(7).div_ceil(3);
                let (lo_m, hi_m) = counts(m)?;
                let lo = lo.max(lo_m);
                let hi = hi.min(hi_m);
                (lo <= hi).then_some((KallsymsLayout::OffsetsFirstWithSeqs, m, (lo, hi)))
            });
        direct.chain(seqs)
    }

    fn try_markers<D: VmiDriver>(
        &mut self,
        cur: &mut Cursor<'_, '_, D>,
        q: u64,
        m: u64,
        (n_lo, n_hi): (u64, u64),
        layout: KallsymsLayout,
    ) -> Result<(), LinuxError> {
        if m > u64::from(MAX_SYMBOLS / 256) + 1 {
            return Err(LinuxError::KallsymsNotFound);
        }
        // increasing markers, steps of at most 256 maximal entries
        let mut prev = 0u32;
        for i in 1..m {
            // `i < m <= MAX_SYMBOLS / 256 + 1` (checked above): 4i is below 2^16
            let v = cur.u32(q.wrapping_add(i.wrapping_mul(4)))?;
            // not above `prev` (no difference, or zero), or too far above it
            if v.checked_sub(prev)
                .is_none_or(|d| d == 0 || u64::from(d) > 256 * (ENTRY_MAX + 2))
            {
                return Err(LinuxError::KallsymsNotFound);
            }
            prev = v;
        }
        let last = u64::from(prev);
        // names end at q (names_end aligned up to 8 is q); they start 8-aligned, with
        // num_syms 8 bytes below, at least `last` bytes below q
        let top = q
            .checked_sub(align8(last))
            .ok_or(LinuxError::KallsymsNotFound)?;
        let bottom = top.saturating_sub(256 * (ENTRY_MAX + 2) + 8);
        let mut p = top;
        let mut corrupt = None;
        while p >= bottom && p >= 8 {
            let n = u64::from(cur.u32(p.wrapping_sub(8)).unwrap_or(0));
            if n >= n_lo && n <= n_hi && n <= u64::from(MAX_SYMBOLS) {
                let n32 = n as u32;
                let checked = self.check_names(cur, p, n32, q, m);
                if let Err(e @ LinuxError::KallsymsCorrupt(_)) = checked {
                    corrupt.get_or_insert(e);
                }
                if checked.is_ok() {
                    self.names = p;
                    self.markers = q;
                    self.num_syms = n32;
                    self.layout = layout;
                    if layout == KallsymsLayout::OffsetsFirstWithSeqs {
                        // `m <= MAX_SYMBOLS / 256 + 1` (checked above)
                        self.seqs_of_names = Some(align8(q.wrapping_add(m.wrapping_mul(4))));
                    }
                    return Ok(());
                }
            }
            p = p.wrapping_sub(8);
        }
        Err(corrupt.unwrap_or(LinuxError::KallsymsNotFound))
    }

    /// Parses `n` entries from `p`: every 256th at its marker, ending so that the
    /// markers follow (aligned up to 8).
    fn check_names<D: VmiDriver>(
        &self,
        cur: &mut Cursor<'_, '_, D>,
        p: u64,
        n: u32,
        q: u64,
        m: u64,
    ) -> Result<(), LinuxError> {
        let mut off = 0u64;
        for i in 0..n {
            if i % 256 == 0 {
                let want = cur.u32(q.wrapping_add(4 * u64::from(i / 256)))?;
                if u64::from(want) != off {
                    return Err(LinuxError::KallsymsCorrupt(
                        "kallsyms_names disagree with kallsyms_markers",
                    ));
                }
            }
            let (hdr, len) = entry_header(cur, p.wrapping_add(off))?;
            if len == 0 {
                return Err(LinuxError::KallsymsCorrupt("an empty kallsyms_names entry"));
            }
            off = off.wrapping_add(hdr).wrapping_add(len);
            if p.wrapping_add(off) > q {
                return Err(LinuxError::KallsymsCorrupt(
                    "kallsyms_names run into the markers",
                ));
            }
        }
        let _ = m;
        if align8(p.wrapping_add(off)) != q {
            return Err(LinuxError::KallsymsCorrupt(
                "kallsyms_names do not end where the markers start",
            ));
        }
        Ok(())
    }

    /// Finds offsets and relative_base: before num_syms (the older orders) or after
    /// the token index (6.4 on), whichever decodes to sorted kernel addresses.
    fn locate_offsets<D: VmiDriver>(
        &mut self,
        cur: &mut Cursor<'_, '_, D>,
    ) -> Result<(), LinuxError> {
        let n = u64::from(self.num_syms);
        let table = align8(4 * n);
        let mut candidates = [(0u64, 0u64, KallsymsLayout::OffsetsFirst); 2];
        let num_syms_pa = self.names.wrapping_sub(8);
        let rb_first = num_syms_pa.wrapping_sub(8);
        candidates[0] = (rb_first.wrapping_sub(table), rb_first, self.layout);
        let off_last = align8(self.token_index.wrapping_add(512));
        candidates[1] = (
            off_last,
            align8(off_last.wrapping_add(4 * n)),
            KallsymsLayout::OffsetsLast,
        );
        let mut saw_absolute = false;
        for (offsets, rb_pa, layout) in candidates {
            if layout == KallsymsLayout::OffsetsLast
                && self.layout == KallsymsLayout::OffsetsFirstWithSeqs
            {
                continue;
            }
            let Ok(rb) = cur.u64(rb_pa) else { continue };
            if rb >> 47 != 0x1_ffff {
                // the "absolute addresses" table has kernel addresses where the
                // offsets would be: say so rather than "not found"
                if cur.u64(rb_first).is_ok_and(|v| v >> 47 == 0x1_ffff) {
                    saw_absolute = true;
                }
                continue;
            }
            for encoding in [OffsetEncoding::AbsolutePercpu, OffsetEncoding::Relative] {
                if sorted(cur, offsets, self.num_syms, rb, encoding)? {
                    self.offsets = offsets;
                    self.relative_base = rb;
                    self.encoding = encoding;
                    self.layout = layout;
                    if layout == KallsymsLayout::OffsetsLast {
                        self.seqs_of_names = Some(align8(rb_pa.wrapping_add(8)));
                    }
                    return Ok(());
                }
            }
        }
        if saw_absolute {
            return Err(LinuxError::KallsymsUnsupported(
                "kallsyms_addresses (CONFIG_KALLSYMS_BASE_RELATIVE=n) is not supported",
            ));
        }
        Err(LinuxError::KallsymsCorrupt(
            "no kallsyms_offsets table decodes to sorted addresses",
        ))
    }

    /// The address of symbol `index`.
    ///
    /// # Errors
    /// [`LinuxError::SymbolNotFound`] past the end; a read error.
    pub fn address<D: VmiDriver>(&self, core: &VmiCore<D>, index: u32) -> Result<u64, LinuxError> {
        if index >= self.num_syms {
            return Err(LinuxError::SymbolNotFound);
        }
        let phys = Phys::new(core)?;
        let off = phys.u32(self.offsets.wrapping_add(4 * u64::from(index)))?;
        Ok(decode(off, self.relative_base, self.encoding))
    }

    /// Expands the names entry at `pa` into `out`; returns the entry's total size and
    /// the expanded length.
    fn expand<D: VmiDriver>(
        &self,
        cur: &mut Cursor<'_, '_, D>,
        pa: u64,
        out: &mut [u8; NAME_MAX],
    ) -> Result<(u64, usize), LinuxError> {
        let (hdr, len) = entry_header(cur, pa)?;
        let mut n = 0usize;
        for i in 0..len {
            let t = cur.byte(pa.wrapping_add(hdr).wrapping_add(i))?;
            let start = usize::from(self.index.get(usize::from(t)).copied().unwrap_or(0));
            let mut j = start;
            while let Some(&b) = self.tokens.get(j).filter(|_| j < self.tokens_len) {
                if b == 0 {
                    break;
                }
                let slot = out.get_mut(n).ok_or(LinuxError::KallsymsCorrupt(
                    "a symbol name longer than NAME_MAX",
                ))?;
                *slot = b;
                // `n < NAME_MAX` (its slot exists) and `j < tokens_len`: neither saturates
                n = n.saturating_add(1);
                j = j.saturating_add(1);
            }
        }
        if n == 0 {
            return Err(LinuxError::KallsymsCorrupt("a symbol expands to nothing"));
        }
        Ok((hdr.wrapping_add(len), n))
    }

    /// Calls `visit` with every symbol in table (address) order until it breaks.
    ///
    /// # Errors
    /// A read error, or [`LinuxError::KallsymsCorrupt`] for an entry that does not expand.
    pub fn for_each<D: VmiDriver>(
        &self,
        core: &VmiCore<D>,
        mut visit: impl FnMut(&Symbol<'_>) -> ControlFlow<()>,
    ) -> Result<(), LinuxError> {
        let phys = Phys::new(core)?;
        let mut cur = Cursor::new(&phys);
        let mut offs = Cursor::new(&phys);
        let mut buf = [0u8; NAME_MAX];
        let mut pa = self.names;
        for index in 0..self.num_syms {
            let (size, n) = self.expand(&mut cur, pa, &mut buf)?;
            pa = pa.wrapping_add(size);
            let off = offs.u32(self.offsets.wrapping_add(4 * u64::from(index)))?;
            let name = buf.get(1..n).unwrap_or(&[]);
            let sym = Symbol {
                index,
                address: decode(off, self.relative_base, self.encoding),
                kind: buf.first().copied().unwrap_or(b'?'),
                name,
            };
            if visit(&sym).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// The address of the first symbol named `name` (table order).
    ///
    /// # Errors
    /// [`LinuxError::SymbolNotFound`]; as [`Kallsyms::for_each`].
    pub fn lookup<D: VmiDriver>(&self, core: &VmiCore<D>, name: &str) -> Result<u64, LinuxError> {
        let mut out = [None];
        self.lookup_many(core, &[name], &mut out)?;
        out[0].ok_or(LinuxError::SymbolNotFound)
    }

    /// Looks up every name of `names` in one pass; `out[i]` gets the address of the first
    /// symbol named `names[i]`, or `None`. Stops early once all are found.
    ///
    /// # Errors
    /// [`LinuxError::BufferTooSmall`] if `out` is shorter than `names`; as
    /// [`Kallsyms::for_each`].
    pub fn lookup_many<D: VmiDriver>(
        &self,
        core: &VmiCore<D>,
        names: &[&str],
        out: &mut [Option<u64>],
    ) -> Result<(), LinuxError> {
        if out.len() < names.len() {
            return Err(LinuxError::BufferTooSmall);
        }
        let mut left = names.len();
        self.for_each(core, |s| {
            for (name, slot) in names.iter().zip(out.iter_mut()) {
                if slot.is_none() && s.name == name.as_bytes() {
                    *slot = Some(s.address);
                    left = left.saturating_sub(1);
                }
            }
            if left == 0 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
    }

    /// The symbol at or nearest below `address` (the first of several at the same
    /// address), its name copied into `buf`; with the offset of `address` from it.
    ///
    /// # Errors
    /// [`LinuxError::SymbolNotFound`] below the first symbol; as [`Kallsyms::for_each`].
    pub fn symbolize<'b, D: VmiDriver>(
        &self,
        core: &VmiCore<D>,
        address: u64,
        buf: &'b mut [u8; NAME_MAX],
    ) -> Result<(Symbol<'b>, u64), LinuxError> {
        let phys = Phys::new(core)?;
        let mut offs = Cursor::new(&phys);
        let addr_of = |offs: &mut Cursor<'_, '_, D>, i: u32| -> Result<u64, LinuxError> {
            let off = offs.u32(self.offsets.wrapping_add(4 * u64::from(i)))?;
            Ok(decode(off, self.relative_base, self.encoding))
        };
        // the last index with addr <= address
        let (mut lo, mut hi) = (0u32, self.num_syms);
        while lo < hi {
            let mid = lo.midpoint(hi);
            if addr_of(&mut offs, mid)? <= address {
                // `mid < hi`: one more is at most `hi`
                lo = mid.saturating_add(1);
            } else {
                hi = mid;
            }
        }
        let mut index = lo.checked_sub(1).ok_or(LinuxError::SymbolNotFound)?;
        let found = addr_of(&mut offs, index)?;
        while let Some(before) = index.checked_sub(1)
            && addr_of(&mut offs, before)? == found
        {
            index = before;
        }
        // seek: the marker of the block, then skip entries
        let mut cur = Cursor::new(&phys);
        let marker = cur.u32(self.markers.wrapping_add(4 * u64::from(index / 256)))?;
        let mut pa = self.names.wrapping_add(u64::from(marker));
        for _ in 0..index % 256 {
            let (hdr, len) = entry_header(&mut cur, pa)?;
            pa = pa.wrapping_add(hdr).wrapping_add(len);
        }
        let (_, n) = self.expand(&mut cur, pa, buf)?;
        let kind = buf.first().copied().unwrap_or(b'?');
        let name = buf.get(1..n).unwrap_or(&[]);
        Ok((
            Symbol {
                index,
                address: found,
                kind,
                name,
            },
            address.wrapping_sub(found),
        ))
    }
}

/// The header size and compressed length of the names entry at `pa`.
fn entry_header<D: VmiDriver>(
    cur: &mut Cursor<'_, '_, D>,
    pa: u64,
) -> Result<(u64, u64), LinuxError> {
    let b0 = cur.byte(pa)?;
    if b0 & 0x80 == 0 {
        return Ok((1, u64::from(b0)));
    }
    let b1 = cur.byte(pa.wrapping_add(1))?;
    let len = u64::from(b0 & 0x7f) | (u64::from(b1) << 7);
    if len > ENTRY_MAX {
        return Err(LinuxError::KallsymsCorrupt(
            "a kallsyms_names entry longer than KSYM_NAME_LEN",
        ));
    }
    Ok((2, len))
}

fn decode(off: u32, base: u64, encoding: OffsetEncoding) -> u64 {
    match encoding {
        OffsetEncoding::AbsolutePercpu => {
            let s = off as i32;
            if s >= 0 {
                u64::from(off)
            } else {
                base.wrapping_sub(1).wrapping_sub(i64::from(s) as u64)
            }
        }
        OffsetEncoding::Relative => base.wrapping_add(u64::from(off)),
    }
}

/// Whether the `n` offsets at `pa` decode to non-decreasing addresses, most of them at
/// or above `base`.
fn sorted<D: VmiDriver>(
    cur: &mut Cursor<'_, '_, D>,
    pa: u64,
    n: u32,
    base: u64,
    encoding: OffsetEncoding,
) -> Result<bool, LinuxError> {
    let mut prev = 0u64;
    let mut above = 0u32;
    for i in 0..n {
        let Ok(off) = cur.u32(pa.wrapping_add(4 * u64::from(i))) else {
            return Ok(false);
        };
        let a = decode(off, base, encoding);
        if a < prev {
            return Ok(false);
        }
        if a >= base {
            // at most `n`, a u32
            above = above.saturating_add(1);
        }
        prev = a;
    }
    Ok(n > 0 && above >= n / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_candidates_fit_the_gap_and_refuse_overflowing_counts() {
        // 16 bytes between markers and token table: 3 or 4 markers right before it, or
        // one marker and 1..=2 seqs_of_names entries between
        let got: std::vec::Vec<_> = Kallsyms::marker_candidates(0x1000, 0x1010).collect();
        assert_eq!(
            got,
            [
                (KallsymsLayout::OffsetsFirst, 4, (769, 1024)),
                (KallsymsLayout::OffsetsFirst, 3, (513, 768)),
                (KallsymsLayout::OffsetsFirstWithSeqs, 1, (1, 2)),
            ]
        );
        // hostile: a gap of almost 2^64 bytes means 2^62 markers, whose symbol counts
        // (256 a marker) do not fit in 64 bits: no such candidate, and no overflow
        let (q, tt) = (8u64, 0xffff_ffff_ffff_fff8u64);
        let mut seqs = 0;
        for (layout, m, (lo, hi)) in Kallsyms::marker_candidates(q, tt) {
            assert_eq!(layout, KallsymsLayout::OffsetsFirstWithSeqs, "m = {m:#x}");
            assert!(m >= 1 && lo <= hi && hi <= m * 256 && lo > (m - 1) * 256);
            seqs += 1;
        }
        assert!(seqs <= 5);
    }

    #[test]
    fn the_anchor_is_found_up_to_the_last_byte_and_not_when_cut_short() {
        let mut bytes = [0xaau8; 64];
        bytes[44..].copy_from_slice(ANCHOR);
        let mut hits = std::vec::Vec::new();
        find_anchor(&bytes, |p| {
            hits.push(p);
            ControlFlow::Continue(())
        });
        assert_eq!(hits, [44]);
        // the same bytes one short: the anchor's last NUL is missing
        hits.clear();
        find_anchor(&bytes[..63], |p| {
            hits.push(p);
            ControlFlow::Continue(())
        });
        assert!(hits.is_empty(), "{hits:?}");
    }
}
