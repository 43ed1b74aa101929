//! The core over a driver that implements only the two required methods (`info` and
//! `read_page`) and lends no memory, as a minimal dump or remote backend would: reads
//! go through the page cache (one driver call per frame until it is flushed), or through
//! the default `read_physical` when the cache is off; walks read their tables the same
//! way; and every capability the driver left at its default is `NotSupported` by name.

use core::cell::Cell;
use std::sync::Arc;

use introvisor::arch::Registers as _;
use introvisor::arch::amd64::Amd64;
use introvisor::{
    AccessContext, Architecture, Gfn, Pa, PageRef, PhysRead, Translation, Va, VmiCore, VmiDriver,
    VmiError, VmiInfo,
};
use introvisor_host::builder::{GuestBuilder, MapFlags, PageSize};

const PAGE: usize = 4096;

/// A frame handle: the whole memory and a frame number.
#[derive(Clone)]
struct Frame {
    memory: Arc<Vec<u8>>,
    gfn: Gfn,
}

impl PageRef for Frame {
    fn gfn(&self) -> Gfn {
        self.gfn
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VmiError> {
        let start = self.gfn.0 as usize * PAGE + offset as usize;
        let end = start + buf.len();
        if offset as usize + buf.len() > PAGE {
            return Err(VmiError::InvalidArgument("past the page"));
        }
        buf.copy_from_slice(&self.memory[start..end]);
        Ok(())
    }
}

/// Counts `read_page` calls.
struct Minimal {
    memory: Arc<Vec<u8>>,
    calls: Cell<u32>,
}

impl VmiDriver for Minimal {
    type Architecture = Amd64;
    type Page = Frame;

    fn info(&self) -> Result<VmiInfo, VmiError> {
        Ok(VmiInfo {
            page_size: PAGE as u64,
            page_shift: 12,
            max_gfn: Gfn((self.memory.len() / PAGE) as u64 - 1),
            vcpus: 1,
        })
    }

    fn read_page(&self, gfn: Gfn) -> Result<Frame, VmiError> {
        self.calls.set(self.calls.get() + 1);
        if gfn.0 >= (self.memory.len() / PAGE) as u64 {
            return Err(VmiError::GfnNotPresent(gfn));
        }
        Ok(Frame {
            memory: Arc::clone(&self.memory),
            gfn,
        })
    }
}

const DATA: u64 = 0x7f00_0000_0000;

fn guest() -> (VmiCore<Minimal>, Pa) {
    let mut b = GuestBuilder::new(0x10000);
    b.map_new(Va(DATA), PageSize::Size4K, MapFlags::USER_DATA)
        .unwrap();
    b.write_virtual(Va(DATA), b"two methods\0").unwrap();
    let root = b.root();
    let memory = Arc::new(b.finish().memory);
    let driver = Minimal {
        memory,
        calls: Cell::new(0),
    };
    (VmiCore::new(driver), root)
}

fn calls(core: &VmiCore<Minimal>) -> u32 {
    core.driver().calls.get()
}

#[test]
fn the_page_cache_asks_the_driver_once_per_frame_until_flushed() {
    let (core, _) = guest();
    let core = core.with_gfn_cache(16);
    let ctx = AccessContext::direct(Pa(0x3000));
    let first = core.read_u64(ctx).unwrap();
    assert_eq!(calls(&core), 1);
    assert_eq!(core.read_u64(ctx).unwrap(), first);
    assert_eq!(core.read_u8(AccessContext::direct(Pa(0x3fff))).unwrap(), 0);
    assert_eq!(calls(&core), 1, "a cached frame was asked for again");
    let m = core.gfn_cache_metrics();
    assert_eq!((m.hits, m.misses, m.len), (2, 1, 1));

    core.flush_gfn_cache_entry(Gfn(3));
    core.read_u64(ctx).unwrap();
    assert_eq!(calls(&core), 2, "a flushed frame was served from the cache");

    core.resize_gfn_cache(0);
    core.read_u64(ctx).unwrap();
    core.read_u64(ctx).unwrap();
    assert_eq!(calls(&core), 4, "a page cache of capacity 0 held a frame");

    core.disable_gfn_cache();
    core.enable_gfn_cache();
    core.resize_gfn_cache(16);
    core.read_u64(ctx).unwrap();
    core.read_u64(ctx).unwrap();
    assert_eq!(calls(&core), 5);
}

#[test]
fn without_the_page_cache_every_read_goes_to_the_driver() {
    let (core, _) = guest();
    core.disable_gfn_cache();
    let ctx = AccessContext::direct(Pa(0x2ffc));
    // Eight bytes across a page boundary: two frames, two calls.
    let mut buf = [0u8; 8];
    core.read(ctx, &mut buf).unwrap();
    assert_eq!(calls(&core), 2);
    core.read(ctx, &mut buf).unwrap();
    assert_eq!(calls(&core), 4);
    assert_eq!(core.gfn_cache_metrics().hits, 0);
    assert_eq!(
        core.read_u8(AccessContext::direct(Pa(0x10000))),
        Err(VmiError::GfnNotPresent(Gfn(0x10)))
    );
}

#[test]
fn walks_and_strings_read_through_the_page_cache() {
    let (core, root) = guest();
    let core = core.with_gfn_cache(64).with_v2p_cache(16);
    let ctx = AccessContext::paging(Va(DATA), root);
    assert_eq!(core.read_string(ctx).unwrap(), "two methods");
    let after_first = calls(&core);
    // Four tables and the data frame.
    assert_eq!(after_first, 5);
    assert_eq!(core.read_string(ctx).unwrap(), "two methods");
    assert_eq!(
        calls(&core),
        after_first,
        "a second read asked the driver again"
    );
    let t = core.translate_uncached(Va(DATA + 0x123), root).unwrap();
    assert_eq!(t.page_size, 4096);
    assert_eq!(t.page_base(), Pa(t.pa.0 & !0xfff));
    assert_eq!(
        calls(&core),
        after_first,
        "the walk's tables came from the cache"
    );
}

#[test]
fn capabilities_left_at_their_defaults_are_refused_by_name() {
    let (core, _) = guest();
    let refused = |r: Result<(), VmiError>, name: &'static str| {
        assert_eq!(r, Err(VmiError::NotSupported(name)));
    };
    refused(
        core.write_u32(AccessContext::direct(Pa(0x3000)), 1),
        "write_physical",
    );
    refused(core.pause(), "pause");
    refused(core.resume(), "resume");
    assert!(matches!(
        core.pause_guard(),
        Err(VmiError::NotSupported("pause"))
    ));
    refused(core.allocate_gfn(Gfn(0x20)), "allocate_gfn");
    refused(core.free_gfn(Gfn(0x20)), "free_gfn");
    assert_eq!(
        core.allocate_next_available_gfn(),
        Err(VmiError::NotSupported("allocate_gfn"))
    );
    assert_eq!(
        core.registers(introvisor::VcpuId(0)).err(),
        Some(VmiError::NotSupported("registers"))
    );
    assert_eq!(core.elapsed(), Err(VmiError::NotSupported("clock")));
    assert_eq!(core.info().unwrap().max_gfn, Gfn(15));
}

#[test]
fn the_architecture_helpers_split_addresses_at_the_page() {
    assert_eq!(Amd64::gfn_from_pa(Pa(0x1234_5678)), Gfn(0x12345));
    assert_eq!(Amd64::pa_from_gfn(Gfn(0x12345)), Pa(0x1234_5000));
    assert_eq!(Amd64::page_offset(0xffff_8000_0000_0abc), 0xabc);
    assert_eq!(
        Amd64::va_align_down(Va(0x7fff_ffff_ffff)),
        Va(0x7fff_ffff_f000)
    );
    let t = Translation {
        pa: Pa(0x4020_1234),
        page_size: 2 << 20,
        access: introvisor::MemoryAccess::R,
        user: false,
    };
    assert_eq!(t.page_base(), Pa(0x4020_0000));
    // A reference to memory reads as the memory does.
    let mem = vec![0x11u8; 64];
    let by_ref: &[u8] = &mem;
    assert_eq!((&by_ref).read_u64(Pa(8)), Ok(0x1111_1111_1111_1111));
    assert_eq!((&by_ref).read_u32(Pa(60)), Ok(0x1111_1111));
    assert!((&by_ref).read_u64(Pa(60)).is_err());
    assert_eq!((&by_ref).read_u64_fast(Pa(0)), by_ref.read_u64_fast(Pa(0)));
    // The empty register set of an architecture without registers.
    let none = ();
    assert_eq!(none.instruction_pointer(), Va(0));
    assert_eq!(none.stack_pointer(), Va(0));
    assert_eq!(none.translation_root(), Pa(0));
    assert_eq!(none.address_width(), 8);
}
