//! The core as a hypervisor or firmware embeds it: in a `static` built at compile time,
//! read through on a 32 KiB stack; with caches sized by the caller (0 = none);
//! over a driver it shares (`&D`, `Arc<D>`), whose every method the wrapper forwards.

use core::sync::atomic::{AtomicU32, Ordering};
use core::time::Duration;
use std::sync::Arc;
use std::sync::OnceLock;

use introvisor::arch::amd64::{Amd64, EventMonitor, EventReason, Interrupt, Registers};
use introvisor::{
    AccessContext, FaultReason, Gfn, MemoryAccess, NoOs, Pa, PageRef, Va, VcpuId, View, VmiContext,
    VmiCore, VmiDriver, VmiError, VmiEvent, VmiEventFlags, VmiInfo, VmiSession,
};

// ----- a guest in static data, page tables built at compile time -------------------------

const PAGE: usize = 4096;
const FRAMES: usize = 8;

/// Present, writable; user; page size (a large page); execute-disable.
const P_W: u64 = 0x3;
const US: u64 = 0x4;
const PS: u64 = 0x80;
const XD: u64 = 1 << 63;

/// Stores `value` little-endian at `at` (const: the guest is built by the compiler).
const fn put(mut mem: [u8; FRAMES * PAGE], at: usize, value: u64) -> [u8; FRAMES * PAGE] {
    let bytes = value.to_le_bytes();
    let mut i = 0;
    while i < 8 {
        mem[at + i] = bytes[i];
        i += 1;
    }
    mem
}

const fn put_bytes(mut mem: [u8; FRAMES * PAGE], at: usize, s: &[u8]) -> [u8; FRAMES * PAGE] {
    let mut i = 0;
    while i < s.len() {
        mem[at + i] = s[i];
        i += 1;
    }
    mem
}

/// PML4 at 0x0, PDPT at 0x1000, PD at 0x2000, PT at 0x3000. VA 0x7000 maps PA 0x4000
/// (kernel data), VA 0x8000 maps PA 0x5000 (user, no-execute), VA 0x9000 maps PA 0x4000
/// again (an alias), VA 0xa000 is a hole (not present); PD entry 1 is a 2 MiB page at PA
/// 0x20_0000, outside the guest's memory.
const fn guest() -> [u8; FRAMES * PAGE] {
    let mut m = [0u8; FRAMES * PAGE];
    m = put(m, 0, 0x1000 | P_W | US);
    m = put(m, 0x1000, 0x2000 | P_W | US);
    m = put(m, 0x2000, 0x3000 | P_W | US);
    m = put(m, 0x2000 + 8, 0x20_0000 | P_W | PS);
    m = put(m, 0x3000 + 7 * 8, 0x4000 | P_W);
    m = put(m, 0x3000 + 8 * 8, 0x5000 | P_W | US | XD);
    m = put(m, 0x3000 + 9 * 8, 0x4000 | 0x1);
    m = put_bytes(m, 0x4000 + 0xff0, b"static core\0");
    m = put(m, 0x5000 + 0x18, 0xdead_beef_0bad_f00d);
    m
}

static GUEST: [u8; FRAMES * PAGE] = guest();
const ROOT: Pa = Pa(0);

/// A driver over memory in static data, with a `const` constructor.
struct StaticRam(&'static [u8]);

impl StaticRam {
    const fn new(memory: &'static [u8]) -> Self {
        Self(memory)
    }
}

#[derive(Clone)]
struct StaticPage(&'static [u8], Gfn);

impl PageRef for StaticPage {
    fn gfn(&self) -> Gfn {
        self.1
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VmiError> {
        let start = usize::try_from(offset).map_err(|_| VmiError::InvalidArgument("offset"))?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.0.get(start..end))
            .ok_or(VmiError::InvalidArgument("range outside the page"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl VmiDriver for StaticRam {
    type Architecture = Amd64;
    type Page = StaticPage;
    fn info(&self) -> Result<VmiInfo, VmiError> {
        Ok(VmiInfo {
            page_size: PAGE as u64,
            page_shift: 12,
            max_gfn: Gfn((self.0.len() / PAGE) as u64 - 1),
            vcpus: 1,
        })
    }
    fn read_page(&self, gfn: Gfn) -> Result<StaticPage, VmiError> {
        let start = usize::try_from(gfn.0)
            .ok()
            .and_then(|n| n.checked_mul(PAGE))
            .ok_or(VmiError::GfnNotPresent(gfn))?;
        let page = start
            .checked_add(PAGE)
            .and_then(|end| self.0.get(start..end))
            .ok_or(VmiError::GfnNotPresent(gfn))?;
        Ok(StaticPage(page, gfn))
    }
}

/// Built by the compiler: no stack, no allocation, no `Once`.
static CORE: VmiCore<StaticRam> = VmiCore::new(StaticRam::new(&GUEST));
/// Firmware-sized: 16 translations, 8 pages.
static SMALL: VmiCore<StaticRam, 16, 8> = VmiCore::sized(StaticRam::new(&GUEST));
/// No caches at all.
static BARE: VmiCore<StaticRam, 0, 0> = VmiCore::sized(StaticRam::new(&GUEST));

/// Reads through a core the way an exit handler would, and checks every answer.
fn read_through_driver<D: VmiDriver<Architecture = Amd64>, const TLB: usize, const PAGES: usize>(
    core: &VmiCore<D, TLB, PAGES>,
) {
    let mut buf = [0u8; 32];
    let ctx = AccessContext::paging(Va(0x7ff0), ROOT);
    assert_eq!(core.read_string_into(ctx, &mut buf), Ok("static core"));
    assert_eq!(
        core.translate_address((Va(0x7ff3), ROOT).into()),
        Ok(Pa(0x4ff3))
    );
    let user = core.translate(Va(0x8018), ROOT).expect("mapped");
    assert_eq!(
        (user.pa, user.user, user.access),
        (Pa(0x5018), true, MemoryAccess::RW)
    );
    assert_eq!(
        core.read_u64(AccessContext::paging(Va(0x8018), ROOT)),
        Ok(0xdead_beef_0bad_f00d)
    );
    // The read-only alias reads the same bytes as the writable mapping.
    let alias = core.translate(Va(0x9ff0), ROOT).expect("mapped");
    assert_eq!((alias.pa, alias.access), (Pa(0x4ff0), MemoryAccess::RX));
    // The hole faults at the PT; the large page maps memory the driver does not have.
    match core.translate(Va(0xa000), ROOT) {
        Err(VmiError::Translation(f)) => {
            assert_eq!((f.level, f.reason), (1, FaultReason::NotPresent));
        }
        other => panic!("the hole translated: {other:?}"),
    }
    let large = core.translate(Va(0x20_1234), ROOT).expect("a 2 MiB leaf");
    assert_eq!((large.pa, large.page_size), (Pa(0x20_1234), 0x20_0000));
    assert!(
        core.read_u64(AccessContext::paging(Va(0x20_1234), ROOT))
            .is_err()
    );
}

fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(32 * 1024)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("the 32 KiB thread finished");
}

#[test]
fn static_cores_read_on_a_32k_stack() {
    on_small_stack(|| {
        read_through_driver(&CORE);
        read_through_driver(&SMALL);
        read_through_driver(&BARE);
        // The caches are the sizes the types say, and 0 caches nothing.
        assert_eq!(CORE.v2p_cache_metrics().capacity, 1024);
        assert_eq!(CORE.gfn_cache_metrics().capacity, 256);
        assert_eq!(SMALL.v2p_cache_metrics().capacity, 16);
        assert_eq!(SMALL.gfn_cache_metrics().capacity, 8);
        let (v2p, gfn) = (BARE.v2p_cache_metrics(), BARE.gfn_cache_metrics());
        assert_eq!((v2p.capacity, v2p.len, gfn.capacity, gfn.len), (0, 0, 0, 0));
        assert!(SMALL.v2p_cache_metrics().len > 0);
    });
}

/// A driver that learns its memory at run time (at boot) keeps a `const` constructor:
/// the static core around it is built by the compiler, the memory set before the first
/// read, all on the 32 KiB stack.
struct BootRam(OnceLock<&'static [u8]>);

impl VmiDriver for BootRam {
    type Architecture = Amd64;
    type Page = StaticPage;
    fn info(&self) -> Result<VmiInfo, VmiError> {
        let memory = self
            .0
            .get()
            .ok_or(VmiError::NotSupported("memory not set yet"))?;
        StaticRam(memory).info()
    }
    fn read_page(&self, gfn: Gfn) -> Result<StaticPage, VmiError> {
        let memory = self.0.get().ok_or(VmiError::GfnNotPresent(gfn))?;
        StaticRam(memory).read_page(gfn)
    }
}

static BOOT: VmiCore<BootRam> = VmiCore::new(BootRam(OnceLock::new()));

#[test]
fn a_static_core_over_memory_found_at_boot() {
    on_small_stack(|| {
        let ctx = AccessContext::paging(Va(0x7ff0), ROOT);
        assert!(BOOT.read_u64(ctx).is_err(), "read before the memory is set");
        // Memory the "firmware" found at run time: a copy of the guest, on the heap.
        let found: &'static [u8] = Vec::leak(GUEST.to_vec());
        assert!(BOOT.driver().0.set(found).is_ok());
        // The failed read cached nothing: the walk now succeeds, without a flush.
        read_through_driver(&BOOT);
    });
}

/// A small core serves the session types too: its capacities are part of their types.
#[test]
fn a_small_core_runs_a_context() {
    let registers = Registers {
        cr3: ROOT.0,
        ..Registers::default()
    };
    let event = VmiEvent::<Amd64>::new(
        VcpuId(0),
        None,
        VmiEventFlags::empty(),
        registers,
        EventReason::Singlestep,
    );
    let ctx: VmiContext<'_, StaticRam, NoOs, 16, 8> = VmiContext::new(&SMALL, &NoOs, &event);
    let mut buf = [0u8; 16];
    let s = ctx
        .core()
        .read_string_into(AccessContext::paging(Va(0x7ff0), ROOT), &mut buf);
    assert_eq!(s, Ok("static core"));
    assert_eq!(ctx.translate(Va(0x8000)).map(|t| t.pa), Ok(Pa(0x5000)));
    let session = VmiSession::new(&SMALL, &NoOs);
    assert_eq!(session.core().gfn_cache_metrics().capacity, 8);
}

/// `elapsed` starts at `start`, or at its own first call: the const constructor reads no
/// clock.
#[test]
fn the_clock_starts_at_start_or_first_use() {
    let driver = Counting::default();
    driver.clock_ms.store(1_000, Ordering::Relaxed);
    let core = VmiCore::new(&driver);
    assert_eq!(driver.calls(Method::Now), 0, "construction read the clock");
    driver.clock_ms.store(5_000, Ordering::Relaxed);
    assert_eq!(core.elapsed(), Ok(Duration::ZERO));
    driver.clock_ms.store(5_250, Ordering::Relaxed);
    assert_eq!(core.elapsed(), Ok(Duration::from_millis(250)));
    core.start().expect("a clock");
    driver.clock_ms.store(6_000, Ordering::Relaxed);
    assert_eq!(core.elapsed(), Ok(Duration::from_millis(750)));
    let clockless = VmiCore::new(StaticRam::new(&GUEST));
    assert_eq!(clockless.start(), Err(VmiError::NotSupported("clock")));
    assert_eq!(clockless.elapsed(), Err(VmiError::NotSupported("clock")));
}

// ----- drivers by reference and shared ---------------------------------------------------

/// Every method of `VmiDriver`, provided ones included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Info,
    ReadPage,
    ReadPhysical,
    PhysicalMemory,
    WritePhysical,
    Now,
    Pause,
    Resume,
    Registers,
    SetRegisters,
    MemoryAccess,
    SetMemoryAccess,
    AllocateGfn,
    FreeGfn,
    DefaultView,
    CreateView,
    DestroyView,
    SwitchToView,
    ChangeViewGfn,
    ResetViewGfn,
    MonitorEnable,
    MonitorDisable,
    InjectInterrupt,
    EventsPending,
    EventProcessingOverhead,
    WaitForEvent,
    ResetState,
}

const METHODS: usize = Method::ResetState as usize + 1;

/// A driver that overrides every method, counts each call, and answers with a value that
/// no default gives (a default answers `NotSupported` or `None`).
#[derive(Default)]
struct Counting {
    calls: [AtomicU32; METHODS],
    clock_ms: AtomicU32,
}

impl Counting {
    fn hit(&self, m: Method) {
        self.calls[m as usize].fetch_add(1, Ordering::Relaxed);
    }
    fn calls(&self, m: Method) -> u32 {
        self.calls[m as usize].load(Ordering::Relaxed)
    }
    fn total(&self) -> u32 {
        self.calls.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

impl VmiDriver for Counting {
    type Architecture = Amd64;
    type Page = StaticPage;
    fn info(&self) -> Result<VmiInfo, VmiError> {
        self.hit(Method::Info);
        StaticRam(&GUEST).info()
    }
    fn read_page(&self, gfn: Gfn) -> Result<StaticPage, VmiError> {
        self.hit(Method::ReadPage);
        StaticRam(&GUEST).read_page(gfn)
    }
    /// Copies from the guest without a page handle (the default would take one).
    fn read_physical(&self, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
        self.hit(Method::ReadPhysical);
        let start = usize::try_from(pa.0).map_err(|_| VmiError::InvalidArgument("pa"))?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| GUEST.get(start..end))
            .ok_or(VmiError::GfnNotPresent(Gfn(pa.0 >> 12)))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn physical_memory(&self) -> Option<&[u8]> {
        self.hit(Method::PhysicalMemory);
        Some(&GUEST)
    }
    fn write_physical(&self, _: Pa, _: &[u8]) -> Result<(), VmiError> {
        self.hit(Method::WritePhysical);
        Ok(())
    }
    fn now(&self) -> Option<Duration> {
        self.hit(Method::Now);
        Some(Duration::from_millis(
            self.clock_ms.load(Ordering::Relaxed).into(),
        ))
    }
    fn pause(&self) -> Result<(), VmiError> {
        self.hit(Method::Pause);
        Ok(())
    }
    fn resume(&self) -> Result<(), VmiError> {
        self.hit(Method::Resume);
        Ok(())
    }
    fn registers(&self, _: VcpuId) -> Result<Registers, VmiError> {
        self.hit(Method::Registers);
        Ok(Registers {
            cr3: 0x1234_5000,
            ..Registers::default()
        })
    }
    fn set_registers(&self, _: VcpuId, _: Registers) -> Result<(), VmiError> {
        self.hit(Method::SetRegisters);
        Ok(())
    }
    fn memory_access(&self, _: Gfn, _: View) -> Result<MemoryAccess, VmiError> {
        self.hit(Method::MemoryAccess);
        Ok(MemoryAccess::RX)
    }
    fn set_memory_access(&self, _: Gfn, _: View, _: MemoryAccess) -> Result<(), VmiError> {
        self.hit(Method::SetMemoryAccess);
        Ok(())
    }
    fn allocate_gfn(&self, _: Gfn) -> Result<(), VmiError> {
        self.hit(Method::AllocateGfn);
        Ok(())
    }
    fn free_gfn(&self, _: Gfn) -> Result<(), VmiError> {
        self.hit(Method::FreeGfn);
        Ok(())
    }
    fn default_view(&self) -> Result<View, VmiError> {
        self.hit(Method::DefaultView);
        Ok(View(0))
    }
    fn create_view(&self, _: MemoryAccess) -> Result<View, VmiError> {
        self.hit(Method::CreateView);
        Ok(View(7))
    }
    fn destroy_view(&self, _: View) -> Result<(), VmiError> {
        self.hit(Method::DestroyView);
        Ok(())
    }
    fn switch_to_view(&self, _: View) -> Result<(), VmiError> {
        self.hit(Method::SwitchToView);
        Ok(())
    }
    fn change_view_gfn(&self, _: View, _: Gfn, _: Gfn) -> Result<(), VmiError> {
        self.hit(Method::ChangeViewGfn);
        Ok(())
    }
    fn reset_view_gfn(&self, _: View, _: Gfn) -> Result<(), VmiError> {
        self.hit(Method::ResetViewGfn);
        Ok(())
    }
    fn monitor_enable(&self, _: EventMonitor) -> Result<(), VmiError> {
        self.hit(Method::MonitorEnable);
        Ok(())
    }
    fn monitor_disable(&self, _: EventMonitor) -> Result<(), VmiError> {
        self.hit(Method::MonitorDisable);
        Ok(())
    }
    fn inject_interrupt(&self, _: VcpuId, _: Interrupt) -> Result<(), VmiError> {
        self.hit(Method::InjectInterrupt);
        Ok(())
    }
    fn events_pending(&self) -> Result<usize, VmiError> {
        self.hit(Method::EventsPending);
        Ok(3)
    }
    fn event_processing_overhead(&self) -> Result<Duration, VmiError> {
        self.hit(Method::EventProcessingOverhead);
        Ok(Duration::from_micros(9))
    }
    fn wait_for_event(
        &self,
        _: Duration,
        _: &mut introvisor::driver::EventHandler<'_, Amd64>,
    ) -> Result<(), VmiError> {
        self.hit(Method::WaitForEvent);
        Ok(())
    }
    fn reset_state(&self) -> Result<(), VmiError> {
        self.hit(Method::ResetState);
        Ok(())
    }
}

/// Calls each method once through `d`, checks the answer is the counting driver's own,
/// and that exactly that method of `inner` was called once more.
fn each_method_once<W: VmiDriver<Architecture = Amd64, Page = StaticPage>>(
    w: &W,
    inner: &Counting,
) {
    let check = |m: Method, call: &dyn Fn() -> bool| {
        let (before, total) = (inner.calls(m), inner.total());
        assert!(call(), "{m:?} did not answer as the driver does");
        assert_eq!(inner.calls(m), before + 1, "{m:?} was not forwarded");
        assert_eq!(inner.total(), total + 1, "{m:?} called something else too");
    };
    check(Method::Info, &|| {
        w.info().is_ok_and(|i| i.max_gfn == Gfn(7))
    });
    check(Method::ReadPage, &|| {
        w.read_page(Gfn(4)).is_ok_and(|p| p.gfn() == Gfn(4))
    });
    check(Method::ReadPhysical, &|| {
        let mut b = [0u8; 4];
        w.read_physical(Pa(0x4ff0), &mut b).is_ok() && &b == b"stat"
    });
    check(Method::PhysicalMemory, &|| {
        w.physical_memory().is_some_and(|m| m.len() == GUEST.len())
    });
    check(Method::WritePhysical, &|| {
        w.write_physical(Pa(0), &[1]).is_ok()
    });
    check(Method::Now, &|| w.now().is_some());
    check(Method::Pause, &|| w.pause().is_ok());
    check(Method::Resume, &|| w.resume().is_ok());
    check(Method::Registers, &|| {
        w.registers(VcpuId(0)).is_ok_and(|r| r.cr3 == 0x1234_5000)
    });
    check(Method::SetRegisters, &|| {
        w.set_registers(VcpuId(0), Registers::default()).is_ok()
    });
    check(Method::MemoryAccess, &|| {
        w.memory_access(Gfn(1), View(0)) == Ok(MemoryAccess::RX)
    });
    check(Method::SetMemoryAccess, &|| {
        w.set_memory_access(Gfn(1), View(0), MemoryAccess::R)
            .is_ok()
    });
    check(Method::AllocateGfn, &|| w.allocate_gfn(Gfn(9)).is_ok());
    check(Method::FreeGfn, &|| w.free_gfn(Gfn(9)).is_ok());
    check(Method::DefaultView, &|| w.default_view() == Ok(View(0)));
    check(Method::CreateView, &|| {
        w.create_view(MemoryAccess::RWX) == Ok(View(7))
    });
    check(Method::DestroyView, &|| w.destroy_view(View(7)).is_ok());
    check(Method::SwitchToView, &|| w.switch_to_view(View(7)).is_ok());
    check(Method::ChangeViewGfn, &|| {
        w.change_view_gfn(View(7), Gfn(1), Gfn(2)).is_ok()
    });
    check(Method::ResetViewGfn, &|| {
        w.reset_view_gfn(View(7), Gfn(1)).is_ok()
    });
    check(Method::MonitorEnable, &|| {
        w.monitor_enable(EventMonitor::Msr(0xc000_0080)).is_ok()
    });
    check(Method::MonitorDisable, &|| {
        w.monitor_disable(EventMonitor::Msr(0xc000_0080)).is_ok()
    });
    check(Method::InjectInterrupt, &|| {
        w.inject_interrupt(VcpuId(0), Interrupt::exception(3, None))
            .is_ok()
    });
    check(Method::EventsPending, &|| w.events_pending() == Ok(3));
    check(Method::EventProcessingOverhead, &|| {
        w.event_processing_overhead() == Ok(Duration::from_micros(9))
    });
    check(Method::WaitForEvent, &|| {
        w.wait_for_event(Duration::ZERO, &mut |_| {
            introvisor::VmiEventResponse::continue_()
        })
        .is_ok()
    });
    check(Method::ResetState, &|| w.reset_state().is_ok());
}

#[test]
fn references_and_arcs_forward_every_method() {
    let driver = Counting::default();
    each_method_once(&&driver, &driver);
    // Through a reference to a reference, and to a trait object.
    each_method_once(&&&driver, &driver);
    let dynamic: &dyn VmiDriver<Architecture = Amd64, Page = StaticPage> = &driver;
    each_method_once(&dynamic, &driver);
    for m in 0..METHODS {
        assert_eq!(driver.calls[m].load(Ordering::Relaxed), 3, "method {m}");
    }

    let shared = Arc::new(Counting::default());
    each_method_once(&Arc::clone(&shared), &shared);
    assert!(shared.calls.iter().all(|c| c.load(Ordering::Relaxed) == 1));
}

/// One driver serves a core and the code around it: the core over `&DRIVER`, and two cores
/// over one `Arc`.
#[test]
fn one_driver_serves_a_core_and_its_host() {
    static DRIVER: StaticRam = StaticRam::new(&GUEST);
    static BY_REF: VmiCore<&StaticRam> = VmiCore::new(&DRIVER);
    let mut buf = [0u8; 16];
    let ctx = AccessContext::paging(Va(0x7ff0), ROOT);
    assert_eq!(BY_REF.read_string_into(ctx, &mut buf), Ok("static core"));
    assert!(
        DRIVER.read_page(Gfn(4)).is_ok(),
        "the host still has the driver"
    );

    let shared = Arc::new(Counting::default());
    let a = VmiCore::new(Arc::clone(&shared));
    let b = VmiCore::<_, 0, 0>::sized(Arc::clone(&shared));
    // The counting driver lends its memory, so reads take `physical_memory`.
    assert_eq!(
        a.read_u64(AccessContext::paging(Va(0x8018), ROOT)),
        Ok(0xdead_beef_0bad_f00d)
    );
    assert_eq!(
        b.read_u64(AccessContext::paging(Va(0x8018), ROOT)),
        Ok(0xdead_beef_0bad_f00d)
    );
    assert!(shared.calls(Method::PhysicalMemory) >= 2);
    assert_eq!(Arc::strong_count(&shared), 3);
}
