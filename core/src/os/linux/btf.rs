//! The kernel's BTF (`CONFIG_DEBUG_INFO_BTF`), between `__start_BTF` and `__stop_BTF`,
//! read in place as a stream.
//!
//! # Format
//! A 24-byte header (`magic` 0xeB9F, `version` 1, `flags`, `hdr_len`, `type_off`,
//! `type_len`, `str_off`, `str_len`, the offsets counted from the end of the header),
//! a type section of variable-length records and a string section. Each record is
//! `name_off`, `info` (`vlen` in bits 0-15, `kind` in bits 24-28, `kind_flag` in bit 31)
//! and `size`/`type`, then data whose length the kind and `vlen` give. Type ids count
//! the records from 1 (0 is `void`).
//!
//! # Bounded memory
//! Nothing is copied but a sparse index: the place of every `stride`-th record, at most
//! 256 of them (the stride doubles as the section grows), so a type is found by id
//! after at most `stride` records.
//!
//! # Contract
//! For any bytes: `Ok` or `Err`, never a panic; every read lies inside the section it
//! belongs to (checked against the header's lengths and the span given), every loop is
//! bounded by the section's length or by [`MAX_DEPTH`].

use crate::driver::VmiDriver;
use crate::vmi::VmiCore;

use super::LinuxError;
use super::cursor::Cursor;
use super::mem::Phys;

/// The BTF magic, as the first two bytes read little-endian.
pub const BTF_MAGIC: u16 = 0xeb9f;
/// How deep the lookups follow unnamed members and type modifiers.
pub const MAX_DEPTH: u32 = 16;
/// The most members one member lookup visits, through every unnamed member it enters
/// (the kernel's largest search, `task_struct`'s, visits a few hundred).
pub const MEMBER_BUDGET: u32 = 1 << 16;
const INDEX_SLOTS: usize = 256;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FLOAT: u32 = 16;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// The bytes after a record's 12-byte head, by kind (`None` for an unknown kind).
fn extra_len(kind: u32, vlen: u16) -> Option<u64> {
    // `vlen` is 16 bits: 12 * vlen is at most 786 420, far from wrapping.
    let vlen = u64::from(vlen);
    Some(match kind {
        1 | 14 | 17 => 4,                            // INT, VAR, DECL_TAG
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0, // PTR, FWD, modifiers, FUNC, FLOAT, TYPE_TAG
        3 => 12,                                     // ARRAY
        4 | 5 | 15 | 19 => vlen.wrapping_mul(12),    // STRUCT, UNION, DATASEC, ENUM64
        6 | 13 => vlen.wrapping_mul(8),              // ENUM, FUNC_PROTO
        _ => return None,
    })
}

/// The state of one member lookup: the readers and the members it may still visit.
struct Search<'c, 'p, 'a, D: VmiDriver> {
    cur: &'c mut Cursor<'p, 'a, D>,
    names: &'c mut Cursor<'p, 'a, D>,
    budget: u32,
}

/// One type record's head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    name_off: u32,
    info: u32,
    size_or_type: u32,
    /// Offset of the record in the type section.
    at: u64,
}

impl Record {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(&self) -> u16 {
        (self.info & 0xffff) as u16
    }
    fn kind_flag(&self) -> bool {
        self.info >> 31 != 0
    }
    fn len(&self) -> Option<u64> {
        extra_len(self.kind(), self.vlen()).map(|e| e.wrapping_add(12))
    }
}

/// A struct or union found by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BtfStruct {
    /// Its type id.
    pub id: u32,
    /// Its size in bytes.
    pub size: u32,
}

/// A member found by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BtfMember {
    /// Its offset in bytes from the start of the struct asked about (through any
    /// unnamed members it lies in).
    pub offset: u64,
    /// Its type id.
    pub type_id: u32,
}

/// The kernel's BTF, located in guest-physical memory.
#[derive(Clone, Debug)]
pub struct Btf {
    /// Guest-physical address of the header.
    pub start: u64,
    /// Total length (header and both sections).
    pub len: u64,
    /// The number of types (ids `1..=num_types`).
    pub num_types: u32,
    types: u64,
    types_len: u64,
    strs: u64,
    strs_len: u64,
    stride: u32,
    index: [u32; INDEX_SLOTS],
}

impl Btf {
    /// Reads the BTF whose header is at `pa`, at most `span` bytes long in all, and
    /// checks every record (one pass over the type section).
    ///
    /// # Errors
    /// [`LinuxError::BtfNotFound`] for a header that is not BTF's; [`LinuxError::BtfCorrupt`]
    /// for sections outside the span or a record that is malformed or runs past its
    /// section; a read error.
    pub fn at<D: VmiDriver>(core: &VmiCore<D>, pa: u64, span: u64) -> Result<Self, LinuxError> {
        let phys = Phys::new(core)?;
        Self::at_phys(&phys, pa, span)
    }

    pub(crate) fn at_phys<D: VmiDriver>(
        phys: &Phys<'_, D>,
        pa: u64,
        span: u64,
    ) -> Result<Self, LinuxError> {
        let mut cur = Cursor::new(phys);
        let mut h = [0u8; 24];
        cur.bytes(pa, &mut h)?;
        let word = |i: usize| -> u32 {
            let mut b = [0u8; 4];
            if let Some(s) = h.get(i..).and_then(|rest| rest.get(..4)) {
                b.copy_from_slice(s);
            }
            u32::from_le_bytes(b)
        };
        let magic = u16::from_le_bytes([h[0], h[1]]);
        if magic != BTF_MAGIC || h[2] != 1 {
            return Err(LinuxError::BtfNotFound);
        }
        let hdr_len = u64::from(word(4));
        let (type_off, type_len) = (u64::from(word(8)), u64::from(word(12)));
        let (str_off, str_len) = (u64::from(word(16)), u64::from(word(20)));
        if !(24..=4096).contains(&hdr_len) {
            return Err(LinuxError::BtfCorrupt("BTF header length out of range"));
        }
        let end = |off: u64, len: u64| hdr_len.checked_add(off)?.checked_add(len);
        let (Some(type_end), Some(str_end)) = (end(type_off, type_len), end(str_off, str_len))
        else {
            return Err(LinuxError::BtfCorrupt("BTF section bounds overflow"));
        };
        let len = type_end.max(str_end);
        if len > span || type_off & 3 != 0 {
            return Err(LinuxError::BtfCorrupt(
                "BTF sections lie outside the BTF span",
            ));
        }
        let sections_overlap = type_off < str_off.saturating_add(str_len)
            && str_off < type_end.saturating_sub(hdr_len);
        if sections_overlap && type_len > 0 && str_len > 0 {
            return Err(LinuxError::BtfCorrupt(
                "BTF type and string sections overlap",
            ));
        }
        let mut btf = Self {
            start: pa,
            len,
            num_types: 0,
            types: pa.wrapping_add(hdr_len).wrapping_add(type_off),
            types_len: type_len,
            strs: pa.wrapping_add(hdr_len).wrapping_add(str_off),
            strs_len: str_len,
            stride: 1,
            index: [0; INDEX_SLOTS],
        };
        // one pass: count, check, index
        let mut off = 0u64;
        let mut id = 0u32;
        let mut used = 0usize;
        while off < type_len {
            // `ordinal` is this record's id less one: its place in the type section.
            let ordinal = id;
            id = id
                .checked_add(1)
                .ok_or(LinuxError::BtfCorrupt("too many BTF types"))?;
            let r = btf.record(&mut cur, off)?;
            if u64::from(r.name_off) >= str_len.max(1) {
                return Err(LinuxError::BtfCorrupt(
                    "a BTF name offset outside the string section",
                ));
            }
            if ordinal.is_multiple_of(btf.stride) {
                if used == INDEX_SLOTS {
                    // keep every other entry, double the stride
                    for (i, from) in (0..INDEX_SLOTS).step_by(2).enumerate() {
                        let v = btf.index.get(from).copied().unwrap_or(0);
                        if let Some(slot) = btf.index.get_mut(i) {
                            *slot = v;
                        }
                    }
                    used = INDEX_SLOTS / 2;
                    btf.stride = btf.stride.saturating_mul(2);
                }
                if ordinal.is_multiple_of(btf.stride)
                    && let Some(slot) = btf.index.get_mut(used)
                {
                    *slot = u32::try_from(off).unwrap_or(u32::MAX);
                    // Below INDEX_SLOTS: the slot at `used` exists.
                    used = used.saturating_add(1);
                }
            }
            off = off.wrapping_add(r.len().unwrap_or(12));
        }
        if off != type_len {
            return Err(LinuxError::BtfCorrupt(
                "the last BTF record runs past the type section",
            ));
        }
        btf.num_types = id;
        Ok(btf)
    }

    /// The record at `off` of the type section, checked to lie inside it.
    fn record<D: VmiDriver>(
        &self,
        cur: &mut Cursor<'_, '_, D>,
        off: u64,
    ) -> Result<Record, LinuxError> {
        if off.checked_add(12).is_none_or(|e| e > self.types_len) {
            return Err(LinuxError::BtfCorrupt(
                "a BTF record runs past the type section",
            ));
        }
        let at = self.types.wrapping_add(off);
        let r = Record {
            name_off: cur.u32(at)?,
            info: cur.u32(at.wrapping_add(4))?,
            size_or_type: cur.u32(at.wrapping_add(8))?,
            at: off,
        };
        let len = r
            .len()
            .ok_or(LinuxError::BtfCorrupt("an unknown BTF kind"))?;
        if off.checked_add(len).is_none_or(|e| e > self.types_len) {
            return Err(LinuxError::BtfCorrupt(
                "a BTF record runs past the type section",
            ));
        }
        Ok(r)
    }

    /// The record of type `id`.
    fn by_id<D: VmiDriver>(
        &self,
        cur: &mut Cursor<'_, '_, D>,
        id: u32,
    ) -> Result<Record, LinuxError> {
        const OUT_OF_RANGE: LinuxError = LinuxError::BtfCorrupt("a BTF type id out of range");
        // Ids count from 1: id 0 (`void`) has no record.
        let ordinal = id
            .checked_sub(1)
            .filter(|_| id <= self.num_types)
            .ok_or(OUT_OF_RANGE)?;
        // The stride starts at 1 and only doubles (saturating): never zero.
        let k = ordinal.checked_div(self.stride).ok_or(OUT_OF_RANGE)?;
        let mut off = u64::from(*self.index.get(k as usize).ok_or(OUT_OF_RANGE)?);
        for _ in 0..ordinal.checked_rem(self.stride).ok_or(OUT_OF_RANGE)? {
            let r = self.record(cur, off)?;
            off = off.wrapping_add(r.len().unwrap_or(12));
        }
        self.record(cur, off)
    }

    /// Whether the string at `name_off` equals `name`.
    fn name_is<D: VmiDriver>(
        &self,
        cur: &mut Cursor<'_, '_, D>,
        name_off: u32,
        name: &[u8],
    ) -> Result<bool, LinuxError> {
        let start = u64::from(name_off);
        let n = name.len() as u64;
        if start.checked_add(n).is_none_or(|e| e >= self.strs_len) {
            return Ok(false);
        }
        for (i, &want) in name.iter().enumerate() {
            if cur.byte(self.strs.wrapping_add(start).wrapping_add(i as u64))? != want {
                return Ok(false);
            }
        }
        Ok(cur.byte(self.strs.wrapping_add(start).wrapping_add(n))? == 0)
    }

    /// Finds the structs or unions named `names[i]` in one pass, into `out[i]` (the
    /// first with that name and a body, skipping forward declarations).
    ///
    /// # Errors
    /// [`LinuxError::BufferTooSmall`] if `out` is shorter than `names`; a read error.
    pub fn structs<D: VmiDriver>(
        &self,
        core: &VmiCore<D>,
        names: &[&str],
        out: &mut [Option<BtfStruct>],
    ) -> Result<(), LinuxError> {
        if out.len() < names.len() {
            return Err(LinuxError::BufferTooSmall);
        }
        let phys = Phys::new(core)?;
        let mut cur = Cursor::new(&phys);
        let mut names_cur = Cursor::new(&phys);
        let mut left = names
            .iter()
            .zip(out.iter())
            .filter(|(_, o)| o.is_none())
            .count();
        let mut off = 0u64;
        let mut id = 0u32;
        while off < self.types_len && left > 0 {
            let r = self.record(&mut cur, off)?;
            id = id.wrapping_add(1);
            off = off.wrapping_add(r.len().unwrap_or(12));
            if !matches!(r.kind(), KIND_STRUCT | KIND_UNION) || r.name_off == 0 {
                continue;
            }
            for (name, slot) in names.iter().zip(out.iter_mut()) {
                if slot.is_none() && self.name_is(&mut names_cur, r.name_off, name.as_bytes())? {
                    *slot = Some(BtfStruct {
                        id,
                        size: r.size_or_type,
                    });
                    left = left.saturating_sub(1);
                }
            }
        }
        Ok(())
    }

    /// The struct or union named `name`.
    ///
    /// # Errors
    /// [`LinuxError::BtfTypeNotFound`]; as [`Btf::structs`].
    pub fn struct_named<D: VmiDriver>(
        &self,
        core: &VmiCore<D>,
        name: &str,
    ) -> Result<BtfStruct, LinuxError> {
        let mut out = [None];
        self.structs(core, &[name], &mut out)?;
        out[0].ok_or(LinuxError::BtfTypeNotFound)
    }

    /// The member `name` of struct or union `id`, looked for in its named members and
    /// then inside its unnamed struct and union members, depth first, at most
    /// [`MAX_DEPTH`] deep.
    ///
    /// # Errors
    /// [`LinuxError::BtfMemberNotFound`]; [`LinuxError::BtfCorrupt`] if `id` is not a
    /// struct or union; a read error.
    pub fn member<D: VmiDriver>(
        &self,
        core: &VmiCore<D>,
        id: u32,
        name: &str,
    ) -> Result<BtfMember, LinuxError> {
        let phys = Phys::new(core)?;
        let mut cur = Cursor::new(&phys);
        let mut names_cur = Cursor::new(&phys);
        let r = self.by_id(&mut cur, id)?;
        if !matches!(r.kind(), KIND_STRUCT | KIND_UNION) {
            return Err(LinuxError::BtfCorrupt(
                "a member asked of a BTF type that is not a struct",
            ));
        }
        let mut search = Search {
            cur: &mut cur,
            names: &mut names_cur,
            budget: MEMBER_BUDGET,
        };
        self.member_in(&mut search, r, name.as_bytes(), 0, 0)?
            .ok_or(LinuxError::BtfMemberNotFound)
    }

    fn member_in<D: VmiDriver>(
        &self,
        search: &mut Search<'_, '_, '_, D>,
        r: Record,
        name: &[u8],
        base: u64,
        depth: u32,
    ) -> Result<Option<BtfMember>, LinuxError> {
        if depth > MAX_DEPTH {
            return Err(LinuxError::BtfCorrupt("BTF unnamed members nest too deep"));
        }
        let members = self.types.wrapping_add(r.at).wrapping_add(12);
        for i in 0..u64::from(r.vlen()) {
            search.budget = search.budget.checked_sub(1).ok_or(LinuxError::BtfCorrupt(
                "a BTF member search visits more than MEMBER_BUDGET members",
            ))?;
            // `i` is below `vlen` (16 bits), and `record` checked that the 12-byte members
            // lie inside the type section: the product is at most 786 408.
            let m = members.wrapping_add(i.wrapping_mul(12));
            let cur = &mut *search.cur;
            let (m_name, m_type, m_off) = (
                cur.u32(m)?,
                cur.u32(m.wrapping_add(4))?,
                cur.u32(m.wrapping_add(8))?,
            );
            let bits = if r.kind_flag() {
                m_off & 0x00ff_ffff
            } else {
                m_off
            };
            let offset = base.wrapping_add(u64::from(bits) / 8);
            if m_name != 0 {
                if self.name_is(search.names, m_name, name)? {
                    return Ok(Some(BtfMember {
                        offset,
                        type_id: m_type,
                    }));
                }
                continue;
            }
            let inner = self.resolve(search.cur, m_type)?;
            if matches!(inner.kind(), KIND_STRUCT | KIND_UNION)
                && let Some(found) =
                    self.member_in(search, inner, name, offset, depth.saturating_add(1))?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The record of `id` with typedefs, `const`, `volatile`, `restrict` and type tags
    /// followed.
    fn resolve<D: VmiDriver>(
        &self,
        cur: &mut Cursor<'_, '_, D>,
        id: u32,
    ) -> Result<Record, LinuxError> {
        let mut r = self.by_id(cur, id)?;
        for _ in 0..MAX_DEPTH {
            match r.kind() {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    r = self.by_id(cur, r.size_or_type)?;
                }
                _ => return Ok(r),
            }
        }
        Err(LinuxError::BtfCorrupt("BTF type modifiers nest too deep"))
    }

    /// The size in bytes of type `id` (pointers 8, arrays their element size times count).
    ///
    /// # Errors
    /// [`LinuxError::BtfCorrupt`] for a type without a size (void, functions) or a chain
    /// deeper than [`MAX_DEPTH`]; a read error.
    pub fn size_of<D: VmiDriver>(&self, core: &VmiCore<D>, id: u32) -> Result<u64, LinuxError> {
        let phys = Phys::new(core)?;
        let mut cur = Cursor::new(&phys);
        let mut id = id;
        let mut mult = 1u64;
        for _ in 0..MAX_DEPTH {
            let r = self.resolve(&mut cur, id)?;
            match r.kind() {
                KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                    return Ok(mult.saturating_mul(u64::from(r.size_or_type)));
                }
                KIND_PTR => return Ok(mult.saturating_mul(8)),
                KIND_ARRAY => {
                    let a = self.types.wrapping_add(r.at).wrapping_add(12);
                    id = cur.u32(a)?;
                    mult = mult.saturating_mul(u64::from(cur.u32(a.wrapping_add(8))?));
                }
                _ => return Err(LinuxError::BtfCorrupt("a BTF type without a size")),
            }
        }
        Err(LinuxError::BtfCorrupt("BTF arrays nest too deep"))
    }

    /// For an array type `id` (modifiers followed): its element type and count.
    ///
    /// # Errors
    /// [`LinuxError::BtfCorrupt`] if it is not an array; a read error.
    pub fn array_of<D: VmiDriver>(
        &self,
        core: &VmiCore<D>,
        id: u32,
    ) -> Result<(u32, u32), LinuxError> {
        let phys = Phys::new(core)?;
        let mut cur = Cursor::new(&phys);
        let r = self.resolve(&mut cur, id)?;
        if r.kind() != KIND_ARRAY {
            return Err(LinuxError::BtfCorrupt("an array expected in BTF"));
        }
        let a = self.types.wrapping_add(r.at).wrapping_add(12);
        Ok((cur.u32(a)?, cur.u32(a.wrapping_add(8))?))
    }

    /// Struct `s`'s member `m`: its offset.
    ///
    /// # Errors
    /// As [`Btf::struct_named`] and [`Btf::member`].
    pub fn offset_of<D: VmiDriver>(
        &self,
        core: &VmiCore<D>,
        s: &str,
        m: &str,
    ) -> Result<u64, LinuxError> {
        let st = self.struct_named(core, s)?;
        Ok(self.member(core, st.id, m)?.offset)
    }
}
