//! [`HostDriver`]: a [`VmiDriver`] over guest memory held by this process.
//!
//! # Contract
//! Frames and addresses come from guest page tables and dump headers: for any of them,
//! every method returns `Ok` or an error and never panics. A frame that memory holds only
//! in part (a page split between two dump segments with a hole, the last page of memory
//! whose size is not a page multiple) is still lent: its backed bytes read, and a read
//! of a missing byte fails with [`VmiError::OutOfBounds`] naming it.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use core::time::Duration;
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use introvisor::arch::amd64::{Amd64, Registers};
use introvisor::{Gfn, Pa, PageRef, VcpuId, VmiDriver, VmiError, VmiInfo};

use crate::memory::{GuestMemory, MemoryRange};

const PAGE_SIZE: u64 = 4096;
const PAGE_SHIFT: u32 = 12;

/// A handle to one frame of a [`HostDriver`]'s memory: an `Arc` to the memory and, when
/// one range holds the whole frame, its storage offset. Cloning it is one reference-count
/// increment.
#[derive(Clone)]
pub struct HostPage {
    memory: Arc<GuestMemory>,
    /// `Some` when one range holds the whole frame; `None` for a frame assembled from
    /// several ranges, or held only in part.
    offset: Option<u64>,
    gfn: Gfn,
}

impl PageRef for HostPage {
    fn gfn(&self) -> Gfn {
        self.gfn
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VmiError> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > PAGE_SIZE) {
            return Err(VmiError::InvalidArgument("range outside the page"));
        }
        let pa = Pa(self.gfn.0.wrapping_shl(PAGE_SHIFT) | offset);
        match self.offset {
            Some(base) => {
                let at = base.checked_add(offset).ok_or(VmiError::OutOfBounds(pa))?;
                self.memory.read_storage(at, pa, buf)
            }
            None => self.memory.read(pa, buf),
        }
    }
}

/// A driver over guest-physical memory in this process: a buffer, a raw dump file, or
/// (with ranges) any dump format whose memory is a set of file ranges.
///
/// It has no vCPUs that run: `pause` and `resume` succeed and do nothing, registers are
/// those given at construction (from a dump's notes, say), and there are no events.
pub struct HostDriver {
    memory: Arc<GuestMemory>,
    registers: Vec<Registers>,
    allocated: Mutex<BTreeSet<u64>>,
    clock: Instant,
}

impl HostDriver {
    /// A driver over `memory`, with no vCPU registers.
    pub fn new(memory: GuestMemory) -> Self {
        Self {
            memory: Arc::new(memory),
            registers: Vec::new(),
            allocated: Mutex::new(BTreeSet::new()),
            clock: Instant::now(),
        }
    }

    /// A read-only driver over a buffer of guest-physical memory starting at address 0.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        Self::new(GuestMemory::from_vec(bytes))
    }

    /// A writable driver over a buffer of guest-physical memory starting at address 0.
    pub fn from_vec_writable(bytes: Vec<u8>) -> Self {
        Self::new(GuestMemory::from_vec_writable(bytes))
    }

    /// A raw physical memory dump: byte `n` of the file is guest-physical address `n`.
    /// The file is memory-mapped, read-only unless `writable`.
    ///
    /// The dump must not be truncated or rewritten by another process while it is open:
    /// a read past a new, shorter end raises SIGBUS (the caveat of memory-mapped files).
    /// [`HostDriver::open_dump`] reads with `pread` instead and has no such caveat.
    ///
    /// # Errors
    /// The error of opening or mapping the file.
    pub fn open_raw(path: impl AsRef<Path>, writable: bool) -> std::io::Result<Self> {
        Self::open_ranges(path, None, writable)
    }

    /// A dump file whose guest memory is the given file ranges (`None`: the whole file at
    /// address 0). Memory-mapped, read-only unless `writable`.
    ///
    /// # Errors
    /// The error of opening or mapping the file.
    pub fn open_ranges(
        path: impl AsRef<Path>,
        ranges: Option<Vec<MemoryRange>>,
        writable: bool,
    ) -> std::io::Result<Self> {
        let memory = if writable {
            let file = OpenOptions::new().read(true).write(true).open(path)?;
            GuestMemory::map_file_writable(&file, ranges)?
        } else {
            let file = File::open(path)?;
            GuestMemory::map_file(&file, ranges)?
        };
        Ok(Self::new(memory))
    }

    /// Sets the vCPUs' registers (one entry per vCPU).
    pub fn with_registers(mut self, registers: Vec<Registers>) -> Self {
        self.registers = registers;
        self
    }

    /// The memory.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The frames allocated with `allocate_gfn` so far.
    pub fn allocated_gfns(&self) -> Vec<Gfn> {
        self.allocated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|&g| Gfn(g))
            .collect()
    }
}

impl VmiDriver for HostDriver {
    type Architecture = Amd64;
    type Page = HostPage;

    fn info(&self) -> Result<VmiInfo, VmiError> {
        Ok(VmiInfo {
            page_size: PAGE_SIZE,
            page_shift: PAGE_SHIFT,
            max_gfn: Gfn(self.memory.last_address().unwrap_or(0) >> PAGE_SHIFT),
            vcpus: u16::try_from(self.registers.len()).unwrap_or(u16::MAX),
        })
    }

    /// A handle to the frame if memory holds any byte of it.
    ///
    /// # Errors
    /// [`VmiError::GfnNotPresent`] if memory holds no byte of the frame.
    fn read_page(&self, gfn: Gfn) -> Result<HostPage, VmiError> {
        let pa = Pa(gfn
            .0
            .checked_mul(PAGE_SIZE)
            .ok_or(VmiError::GfnNotPresent(gfn))?);
        let offset = match self.memory.storage_offset(pa, PAGE_SIZE) {
            Some(offset) => Some(offset),
            None if self.memory.holds_any(pa, PAGE_SIZE) => None,
            None => return Err(VmiError::GfnNotPresent(gfn)),
        };
        Ok(HostPage {
            memory: Arc::clone(&self.memory),
            offset,
            gfn,
        })
    }

    #[inline(always)]
    fn read_physical(&self, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
        self.memory.read(pa, buf)
    }

    /// Yes: [`GuestMemory::read`] copies from as many adjacent ranges as a read spans,
    /// and fails at the first byte no range holds.
    #[inline]
    fn read_physical_spans_pages(&self) -> bool {
        true
    }

    #[inline]
    fn physical_memory(&self) -> Option<&[u8]> {
        self.memory.as_identity_slice()
    }

    #[inline(always)]
    fn prefetch_physical(&self, pa: Pa) {
        if let Some(memory) = self.memory.as_identity_slice() {
            crate::prefetch::prefetch(memory, pa);
        }
    }

    fn write_physical(&self, pa: Pa, data: &[u8]) -> Result<(), VmiError> {
        self.memory.write(pa, data)
    }

    fn now(&self) -> Option<Duration> {
        Some(self.clock.elapsed())
    }

    fn pause(&self) -> Result<(), VmiError> {
        Ok(())
    }

    fn resume(&self) -> Result<(), VmiError> {
        Ok(())
    }

    fn registers(&self, vcpu: VcpuId) -> Result<Registers, VmiError> {
        self.registers
            .get(usize::from(vcpu.0))
            .copied()
            .ok_or(VmiError::NotFound)
    }

    /// Records the frame as allocated. Memory is not grown: reads of the frame fail as
    /// before. Allocating a frame twice is an error.
    fn allocate_gfn(&self, gfn: Gfn) -> Result<(), VmiError> {
        let mut allocated = self
            .allocated
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !allocated.insert(gfn.0) {
            return Err(VmiError::InvalidArgument("frame already allocated"));
        }
        Ok(())
    }

    fn free_gfn(&self, gfn: Gfn) -> Result<(), VmiError> {
        let mut allocated = self
            .allocated
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if allocated.remove(&gfn.0) {
            Ok(())
        } else {
            Err(VmiError::NotFound)
        }
    }
}
