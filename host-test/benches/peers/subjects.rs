//! The subjects: introvisor, vmi-rs and memflow, each in the configurations measured.

use introvisor::{AccessContext, Pa, Va, VmiCore, VmiError};
use introvisor_host::HostDriver;

use crate::Subject;
use crate::guest::RAM;

// ----- introvisor ------------------------------------------------------------------------

/// Addresses the introvisor subject hands its batch API at a time.
const BATCH: usize = 64;

/// Which of introvisor's caches are on.
#[derive(Clone, Copy)]
pub(crate) enum Caches {
    /// `VmiCore::new`: translation cache and page cache.
    Default,
    /// The translation cache only: `disable_gfn_cache()`, the recommended configuration for
    /// memory mapped into the process (the driver's `read_physical` is a direct copy).
    NoPageCache,
    /// Neither: every translation is a walk, every table entry a driver read.
    None,
}

pub(crate) struct Introvisor {
    pub(crate) core: VmiCore<HostDriver>,
    pub(crate) root: Pa,
    pub(crate) caches: Caches,
}

impl Introvisor {
    pub(crate) fn new(memory: &[u8], root: Pa, caches: Caches) -> Self {
        let core = VmiCore::new(HostDriver::from_vec(memory.to_vec()));
        match caches {
            Caches::Default => {}
            Caches::NoPageCache => core.disable_gfn_cache(),
            Caches::None => {
                core.disable_gfn_cache();
                core.disable_v2p_cache();
            }
        }
        Self { core, root, caches }
    }
}

impl Subject for Introvisor {
    fn name(&self) -> String {
        match self.caches {
            Caches::Default => "introvisor (both caches)".into(),
            Caches::NoPageCache => "introvisor (TLB, no page cache)".into(),
            Caches::None => "introvisor (no caches)".into(),
        }
    }

    fn flush(&mut self) {
        self.core.flush_v2p_cache();
        self.core.flush_gfn_cache();
    }

    #[inline]
    fn translate(&mut self, va: u64) -> Option<u64> {
        self.core.translate(Va(va), self.root).ok().map(|t| t.pa.0)
    }

    #[inline]
    fn read_u64(&mut self, va: u64) -> Option<u64> {
        self.core
            .read_u64(AccessContext::paging(Va(va), self.root))
            .ok()
    }

    fn read(&mut self, va: u64, buf: &mut [u8]) -> bool {
        self.core
            .read(AccessContext::paging(Va(va), self.root), buf)
            .is_ok()
    }

    #[inline]
    fn read_string(&mut self, va: u64, limit: usize, buf: &mut [u8]) -> Option<usize> {
        self.core
            .read_string_bytes_limited_into(AccessContext::paging(Va(va), self.root), limit, buf)
            .ok()
            .map(<[u8]>::len)
    }

    fn translate_many(&mut self, vas: &[u64], out: &mut [u64]) -> bool {
        let mut batch = [Va(0); BATCH];
        let mut results = [Err(VmiError::NotFound); BATCH];
        for (vas, out) in vas.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
            for (b, va) in batch.iter_mut().zip(vas) {
                *b = Va(*va);
            }
            let n = self
                .core
                .translate_many(&batch[..vas.len()], self.root, &mut results);
            for (o, r) in out.iter_mut().zip(&results[..n]) {
                *o = r.map_or(u64::MAX, |t| t.pa.0);
            }
        }
        true
    }

    fn read_u64_many(&mut self, vas: &[u64], out: &mut [u64]) -> bool {
        let mut batch = [Va(0); BATCH];
        let mut results = [Err(VmiError::NotFound); BATCH];
        for (vas, out) in vas.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
            for (b, va) in batch.iter_mut().zip(vas) {
                *b = Va(*va);
            }
            let n = self
                .core
                .read_u64_many(&batch[..vas.len()], self.root, &mut results);
            for (o, r) in out.iter_mut().zip(&results[..n]) {
                *o = r.unwrap_or(u64::MAX);
            }
        }
        true
    }
}

// ----- vmi-rs ----------------------------------------------------------------------------

/// A minimal in-memory vmi-rs driver: frame `n` is bytes `n * 4096..` of the buffer, lent
/// as a slice (no copy).
pub(crate) struct VmiRsDriver {
    memory: &'static [u8],
}

impl vmi_core::VmiDriver for VmiRsDriver {
    type Architecture = vmi_arch_amd64::Amd64;

    fn info(&self) -> Result<vmi_core::VmiInfo, vmi_core::VmiError> {
        Ok(vmi_core::VmiInfo {
            page_size: 4096,
            page_shift: 12,
            max_gfn: vmi_core::Gfn(RAM / 4096 - 1),
            vcpus: 1,
        })
    }
}

impl vmi_core::VmiRead for VmiRsDriver {
    fn read_page(&self, gfn: vmi_core::Gfn) -> Result<vmi_core::VmiMappedPage, vmi_core::VmiError> {
        let start = usize::try_from(
            gfn.0
                .checked_mul(4096)
                .ok_or(vmi_core::VmiError::OutOfBounds)?,
        )
        .map_err(|_| vmi_core::VmiError::OutOfBounds)?;
        let page = self
            .memory
            .get(start..start + 4096)
            .ok_or(vmi_core::VmiError::OutOfBounds)?;
        Ok(vmi_core::VmiMappedPage::new(page))
    }
}

pub(crate) struct VmiRs {
    pub(crate) core: vmi_core::VmiCore<VmiRsDriver>,
    pub(crate) root: vmi_core::Pa,
    pub(crate) cached: bool,
}

impl VmiRs {
    pub(crate) fn new(memory: &'static [u8], root: Pa, cached: bool) -> Self {
        let mut core = vmi_core::VmiCore::new(VmiRsDriver { memory }).expect("vmi-rs core");
        if !cached {
            core.disable_gfn_cache();
            core.disable_v2p_cache();
        }
        Self {
            core,
            root: vmi_core::Pa(root.0),
            cached,
        }
    }

    #[inline]
    fn ctx(&self, va: u64) -> vmi_core::AccessContext {
        vmi_core::AccessContext::paging(vmi_core::Va(va), self.root)
    }
}

impl Subject for VmiRs {
    fn name(&self) -> String {
        if self.cached {
            "vmi-rs 0.13 (both caches)".into()
        } else {
            "vmi-rs 0.13 (no caches)".into()
        }
    }

    fn flush(&mut self) {
        self.core.flush_v2p_cache();
        self.core.flush_gfn_cache();
    }

    #[inline]
    fn translate(&mut self, va: u64) -> Option<u64> {
        self.core
            .translate_address((vmi_core::Va(va), self.root))
            .ok()
            .map(|pa| pa.0)
    }

    #[inline]
    fn read_u64(&mut self, va: u64) -> Option<u64> {
        self.core.read_u64(self.ctx(va)).ok()
    }

    fn read(&mut self, va: u64, buf: &mut [u8]) -> bool {
        self.core.read(self.ctx(va), buf).is_ok()
    }

    #[inline]
    fn read_string(&mut self, va: u64, limit: usize, buf: &mut [u8]) -> Option<usize> {
        let bytes = self
            .core
            .read_string_bytes_limited(self.ctx(va), limit)
            .ok()?;
        buf.get_mut(..bytes.len())?.copy_from_slice(&bytes);
        Some(bytes.len())
    }
}

// ----- memflow ---------------------------------------------------------------------------

use memflow::architecture::x86::{X86VirtualTranslate, x64};
use memflow::connector::MappedPhysicalMemory;
use memflow::mem::{
    CachedPhysicalMemory, CachedVirtualTranslate, DirectTranslate, MemoryMap, MemoryView,
    VirtualDma, VirtualTranslate,
};
use memflow::types::Address;
use memflow::types::cache::CountCacheValidator;

type Phys = MappedPhysicalMemory<&'static [u8], MemoryMap<&'static [u8]>>;
type CachedDma = VirtualDma<
    CachedPhysicalMemory<'static, Phys, CountCacheValidator>,
    CachedVirtualTranslate<DirectTranslate, CountCacheValidator>,
    X86VirtualTranslate,
>;
type PlainDma = VirtualDma<Phys, DirectTranslate, X86VirtualTranslate>;

/// Entries stay valid for this many operations: the caches never expire during a run,
/// memflow's best case. (Without its `std` feature memflow validates entries by count, 10
/// operations by default; its `std` feature, which would bring a timed validator, does not
/// build without `plugins`.)
const MEMFLOW_VALIDITY: usize = usize::MAX / 4;

fn memflow_phys(memory: &'static [u8]) -> Phys {
    let mut map = MemoryMap::new();
    map.push(Address::NULL, memory);
    MappedPhysicalMemory::with_info(map)
}

pub(crate) enum Memflow {
    Cached {
        dma: Box<CachedDma>,
        memory: &'static [u8],
        root: u64,
    },
    Plain {
        dma: Box<PlainDma>,
    },
}

impl Memflow {
    pub(crate) fn new(memory: &'static [u8], root: Pa, cached: bool) -> Self {
        if cached {
            Self::Cached {
                dma: Box::new(Self::cached_dma(memory, root.0)),
                memory,
                root: root.0,
            }
        } else {
            Self::Plain {
                dma: Box::new(VirtualDma::new(
                    memflow_phys(memory),
                    x64::ARCH,
                    x64::new_translator(Address::from(root.0)),
                )),
            }
        }
    }

    fn cached_dma(memory: &'static [u8], root: u64) -> CachedDma {
        let phys = CachedPhysicalMemory::builder(memflow_phys(memory))
            .arch(x64::ARCH)
            .validator(CountCacheValidator::new(MEMFLOW_VALIDITY))
            .build()
            .expect("memflow page cache");
        let vat = CachedVirtualTranslate::builder(DirectTranslate::new())
            .arch(x64::ARCH)
            .validator(CountCacheValidator::new(MEMFLOW_VALIDITY))
            .build()
            .expect("memflow TLB");
        VirtualDma::with_vat(
            phys,
            x64::ARCH,
            x64::new_translator(Address::from(root)),
            vat,
        )
    }
}

macro_rules! with_dma {
    ($self:ident, $dma:ident => $body:expr) => {
        match $self {
            Memflow::Cached { dma: $dma, .. } => $body,
            Memflow::Plain { dma: $dma } => $body,
        }
    };
}

impl Subject for Memflow {
    fn name(&self) -> String {
        match self {
            Self::Cached { .. } => "memflow 0.2 (both caches)".into(),
            Self::Plain { .. } => "memflow 0.2 (no caches)".into(),
        }
    }

    fn flush(&mut self) {
        if let Self::Cached { dma, memory, root } = self {
            **dma = Self::cached_dma(memory, *root);
        }
    }

    #[inline]
    fn translate(&mut self, va: u64) -> Option<u64> {
        with_dma!(self, dma => dma
            .virt_to_phys(Address::from(va))
            .ok()
            .map(|pa| pa.address().to_umem()))
    }

    #[inline]
    fn read_u64(&mut self, va: u64) -> Option<u64> {
        with_dma!(self, dma => dma.read::<u64>(Address::from(va)).ok())
    }

    fn read(&mut self, va: u64, buf: &mut [u8]) -> bool {
        with_dma!(self, dma => dma.read_raw_into(Address::from(va), buf).is_ok())
    }

    #[inline]
    fn read_string(&mut self, va: u64, limit: usize, buf: &mut [u8]) -> Option<usize> {
        let s = with_dma!(self, dma => dma.read_utf8_lossy(Address::from(va), limit).ok())?;
        buf.get_mut(..s.len())?.copy_from_slice(s.as_bytes());
        Some(s.len())
    }
}
