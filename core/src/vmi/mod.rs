//! [`VmiCore`]: reads, writes and translations through the caches, over one driver.
//!
//! One `impl` block per file, each a concern of the core:
//! - `mod.rs`: the struct, its construction and its constants;
//! - `page_cache.rs`: the page (GFN) cache and the physical reads through it;
//! - `translation_cache.rs`: `TranslationCache`, the cache of translations as a type of
//!   its own (the TLB word format, its base and large-page parts, flushes);
//! - `translate.rs`: virtual-to-physical translation, cached and not;
//! - `batch.rs`: batches of translations and reads, their walks interleaved;
//! - `memory.rs`: reads, writes, integers, addresses and structures;
//! - `strings.rs`: NUL-terminated strings, UTF-8 and UTF-16;
//! - `control.rs`: vCPUs, views, event pass-through and [`PauseGuard`];
//! - `amd64.rs`: what only an AMD64 core offers ([`VmiCore::translate_access`]). Impls
//!   that hold for one architecture only live in a file named after it, not in
//!   [`Architecture`] items.
//!
//! # Contract
//! Every method that reads guest data (page tables, strings, structures) returns `Ok` or
//! `Err` for any guest contents: it never panics, never loops without bound (strings stop
//! at the configured length limit, walks at the level count) and never allocates more
//! than the caller asked for (the `alloc` string methods allocate at most the limit).
//!
//! Layer: may import `addr`, `access`, `error`, `cache`, `arch` and `driver`.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;

use crate::addr::Gfn;
use crate::arch::Architecture;
use crate::cache::ClockCache;
use crate::driver::VmiDriver;
use crate::error::VmiError;

mod amd64;
mod batch;
mod control;
mod memory;
mod page_cache;
mod strings;
mod translate;
mod translation_cache;

pub use self::control::PauseGuard;
pub(crate) use self::translation_cache::TranslationCache;

/// The default cap on string reads, in bytes: 64 KiB.
pub const DEFAULT_STRING_LENGTH_LIMIT: usize = 64 * 1024;

/// Reads longer than this many pages walk their middle pages without the translation
/// cache ([`VmiCore::read`]).
const SCAN_PAGES: u64 = 16;

/// The default capacity of the page (GFN) cache, `PAGES` in [`VmiCore`].
pub const GFN_CACHE_CAPACITY: usize = 256;
/// The default capacity of the translation cache, `TLB` in [`VmiCore`]: base and large
/// pages together, a large page being one entry.
pub const V2P_CACHE_CAPACITY: usize = translation_cache::CAPACITY;

/// `start` before the clock has started.
const NOT_STARTED: u64 = u64::MAX;

/// The introspection core: one driver, a page cache, a translation cache.
///
/// `VmiCore` is `Send + Sync` when its driver and the driver's page handles are: one core
/// serves every vCPU. The page cache ([`ClockCache`]) has one spin lock per entry; the
/// translation cache is read without a lock (seqlocks over atomics, see
/// [`Tlb`](crate::cache::Tlb)). Writes through the core keep both caches true; changes the
/// guest makes itself are not seen by the translation cache until it is flushed
/// ([`VmiCore::flush_v2p_cache`], O(1), at each event).
///
/// # Capacities
/// The caller sizes both caches, in entries: `TLB` translations (default
/// [`V2P_CACHE_CAPACITY`], 1,024) and `PAGES` page handles (default
/// [`GFN_CACHE_CAPACITY`], 256). `VmiCore<D>` is the core at the defaults. A capacity of 0
/// is valid and means "no cache": every translation walks, every read goes to the driver.
/// The caches live inside the core, so its size follows them. On x86-64, for a driver
/// whose page handle is 16 bytes (`size_of::<VmiCore<_, TLB, PAGES>>()`, checked by a
/// test):
///
/// | `TLB`, `PAGES`            | bytes  |
/// |---------------------------|--------|
/// | 1,024, 256 (the defaults) | 58,880 |
/// | 1,024, 0                  | 48,640 |
/// | 64, 256                   | 15,616 |
/// | 64, 16                    | 6,016  |
/// | 0, 0                      | 2,560  |
///
/// A translation costs 45 bytes: a 40-byte seqlock slot, and 5 bytes of its set's
/// replacement state, kept per slot because stable Rust cannot size an array `TLB / 4`.
/// A page entry costs 40 bytes with a 16-byte handle (the handle, the frame number, a
/// mark and a lock, padded). Each cache also has 1 KiB of counters, striped over cache
/// lines so that vCPUs counting at once do not share one; with both at 0, that and the
/// driver are most of the core.
///
/// # A core in a static
/// [`VmiCore::new`] (and [`VmiCore::sized`], for other capacities) is a `const fn`: with a
/// driver whose constructor is `const`, the core is built at compile time, in a `static`,
/// and never on a stack:
///
/// ```
/// # use introvisor::{Gfn, PageRef, VmiCore, VmiDriver, VmiError, VmiInfo};
/// # use introvisor::arch::amd64::Amd64;
/// # #[derive(Clone)] struct NoPage;
/// # impl PageRef for NoPage {
/// #     fn gfn(&self) -> Gfn { Gfn(0) }
/// #     fn read(&self, _: u64, _: &mut [u8]) -> Result<(), VmiError> { Ok(()) }
/// # }
/// /// A driver whose constructor is `const` (here: one that has no memory).
/// struct Empty;
/// impl Empty {
///     const fn new() -> Self { Empty }
/// }
/// impl VmiDriver for Empty {
///     type Architecture = Amd64;
///     type Page = NoPage;
///     fn info(&self) -> Result<VmiInfo, VmiError> {
///         Ok(VmiInfo { page_size: 4096, page_shift: 12, max_gfn: Gfn(0), vcpus: 1 })
///     }
///     fn read_page(&self, gfn: Gfn) -> Result<NoPage, VmiError> {
///         Err(VmiError::GfnNotPresent(gfn))
///     }
/// }
///
/// static CORE: VmiCore<Empty> = VmiCore::new(Empty::new());
/// // Smaller caches for firmware: 64 translations, no page cache.
/// static SMALL: VmiCore<Empty, 64, 0> = VmiCore::sized(Empty::new());
///
/// assert_eq!(CORE.v2p_cache_metrics().capacity, 1024);
/// assert_eq!(SMALL.v2p_cache_metrics().capacity, 64);
/// assert_eq!(SMALL.gfn_cache_metrics().capacity, 0);
/// assert!(SMALL.read_page(Gfn(3)).is_err());
/// ```
///
/// Nothing in the constructor reads the driver: the clock behind [`VmiCore::elapsed`]
/// starts at [`VmiCore::start`], or at the first `elapsed` call if `start` was never
/// called.
///
/// A driver that learns its memory at run time (at boot, from a memory map) keeps a
/// `const` constructor with interior mutability: a `spin::Once` or `OnceLock` it fills
/// before the first read, the static core around it unchanged. Or the driver lives in a
/// `static` of its own and the core holds `&'static` to it ([`VmiDriver`] is implemented
/// for references), so the hypervisor keeps using the driver too.
///
/// Build the core this way rather than at run time: `Box::new(VmiCore::new(d))`, a
/// `spin::Once::call_once` or a `MaybeUninit::write` assemble the value on the stack
/// first (about 60 KB at the default capacities), in unoptimised and, as measured,
/// optimised builds alike. Safe Rust has no way to construct in place.
///
/// # Examples
/// The [crate documentation](crate) builds a complete driver over a byte slice and reads
/// a string through a 4-level walk; `introvisor-host` has ready-made drivers.
pub struct VmiCore<
    D: VmiDriver,
    const TLB: usize = V2P_CACHE_CAPACITY,
    const PAGES: usize = GFN_CACHE_CAPACITY,
> {
    driver: D,
    paging: <D::Architecture as Architecture>::Paging,
    /// [`Architecture::root_mask`] of `paging`, kept with it by
    /// [`VmiCore::set_paging`]: the translation cache's key is the root under it.
    root_mask: u64,
    /// [`Architecture::plan`] of `paging`, kept with it likewise.
    plan: <D::Architecture as Architecture>::Plan,
    gfn_cache: ClockCache<Gfn, D::Page, PAGES>,
    gfn_cache_enabled: AtomicBool,
    v2p_cache: TranslationCache<D::Architecture, TLB>,
    v2p_cache_enabled: AtomicBool,
    string_limit: AtomicUsize,
    next_gfn: AtomicU64,
    /// The driver's clock at [`VmiCore::start`], in nanoseconds, or [`NOT_STARTED`].
    start: AtomicU64,
}

impl<D: VmiDriver> VmiCore<D> {
    /// A core over `driver` at the default capacities, both caches enabled, the
    /// architecture's default paging, and the default string limit. For other capacities,
    /// [`VmiCore::sized`] (as `HashMap::new` is for the default hasher only, so that
    /// `VmiCore::new(driver)` needs no type annotation).
    ///
    /// `const`, and reads nothing from the driver: a `static` can hold the core (see
    /// [A core in a static](VmiCore#a-core-in-a-static)).
    pub const fn new(driver: D) -> Self {
        Self::sized(driver)
    }
}

impl<D: VmiDriver, const TLB: usize, const PAGES: usize> VmiCore<D, TLB, PAGES> {
    const PAGE_SIZE: u64 = <D::Architecture as Architecture>::PAGE_SIZE;
    const PAGE_SHIFT: u32 = <D::Architecture as Architecture>::PAGE_SHIFT;

    /// A core over `driver` with the capacities of its type, `TLB` translations and
    /// `PAGES` pages, both caches enabled at full capacity; otherwise as [`VmiCore::new`].
    /// `const`.
    ///
    /// ```
    /// # use introvisor::{Gfn, PageRef, VmiCore, VmiDriver, VmiError, VmiInfo};
    /// # use introvisor::arch::amd64::Amd64;
    /// # #[derive(Clone)] struct NoPage;
    /// # impl PageRef for NoPage {
    /// #     fn gfn(&self) -> Gfn { Gfn(0) }
    /// #     fn read(&self, _: u64, _: &mut [u8]) -> Result<(), VmiError> { Ok(()) }
    /// # }
    /// # struct Empty;
    /// # impl VmiDriver for Empty {
    /// #     type Architecture = Amd64;
    /// #     type Page = NoPage;
    /// #     fn info(&self) -> Result<VmiInfo, VmiError> {
    /// #         Ok(VmiInfo { page_size: 4096, page_shift: 12, max_gfn: Gfn(0), vcpus: 1 })
    /// #     }
    /// #     fn read_page(&self, gfn: Gfn) -> Result<NoPage, VmiError> {
    /// #         Err(VmiError::GfnNotPresent(gfn))
    /// #     }
    /// # }
    /// let core = VmiCore::<_, 128, 32>::sized(Empty);
    /// assert_eq!(core.v2p_cache_metrics().capacity, 128);
    /// assert_eq!(core.gfn_cache_metrics().capacity, 32);
    /// ```
    pub const fn sized(driver: D) -> Self {
        Self {
            driver,
            paging: <D::Architecture as Architecture>::DEFAULT_PAGING,
            root_mask: <D::Architecture as Architecture>::DEFAULT_ROOT_MASK,
            plan: <D::Architecture as Architecture>::DEFAULT_PLAN,
            gfn_cache: ClockCache::new(),
            gfn_cache_enabled: AtomicBool::new(true),
            v2p_cache: TranslationCache::new(),
            v2p_cache_enabled: AtomicBool::new(true),
            string_limit: AtomicUsize::new(DEFAULT_STRING_LENGTH_LIMIT),
            next_gfn: AtomicU64::new(0),
            start: AtomicU64::new(NOT_STARTED),
        }
    }

    /// The driver.
    pub fn driver(&self) -> &D {
        &self.driver
    }

    /// Starts the clock behind [`VmiCore::elapsed`] now, by the driver's clock; a second
    /// call restarts it. [`VmiCore::new`] cannot read the clock (it is `const`), so
    /// without a `start` the clock starts at the first `elapsed` call.
    ///
    /// # Errors
    /// [`VmiError::NotSupported`] when the driver has no clock.
    pub fn start(&self) -> Result<(), VmiError> {
        let now = self.driver.now().ok_or(VmiError::NotSupported("clock"))?;
        self.start.store(nanos(now), Ordering::Relaxed);
        Ok(())
    }

    /// The clock's start, starting it now if it has not started.
    fn started_at(&self, now: Duration) -> Duration {
        let started = self.start.compare_exchange(
            NOT_STARTED,
            nanos(now),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        match started {
            Ok(_) => now,
            Err(start) => Duration::from_nanos(start),
        }
    }
}

/// A duration in whole nanoseconds, saturated below [`NOT_STARTED`].
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).map_or(NOT_STARTED - 1, |n| n.min(NOT_STARTED - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::VmiInfo;
    use crate::arch::amd64::Amd64;
    use crate::driver::PageRef;

    /// A page handle of 16 bytes, as the table documents.
    #[derive(Clone)]
    struct Page16(u64, u64);

    impl PageRef for Page16 {
        fn gfn(&self) -> Gfn {
            Gfn(self.0)
        }
        fn read(&self, _: u64, buf: &mut [u8]) -> Result<(), VmiError> {
            buf.fill(self.1 as u8);
            Ok(())
        }
    }

    struct Fixed;

    impl VmiDriver for Fixed {
        type Architecture = Amd64;
        type Page = Page16;
        fn info(&self) -> Result<VmiInfo, VmiError> {
            Err(VmiError::NotSupported("info"))
        }
        fn read_page(&self, gfn: Gfn) -> Result<Page16, VmiError> {
            Ok(Page16(gfn.0, 0))
        }
    }

    /// The table in [`VmiCore`]'s documentation.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn sizes_match_the_documented_table() {
        use core::mem::size_of;
        assert_eq!(size_of::<Page16>(), 16);
        assert_eq!(size_of::<VmiCore<Fixed>>(), 58_880);
        assert_eq!(size_of::<VmiCore<Fixed, 1024, 256>>(), 58_880);
        assert_eq!(size_of::<VmiCore<Fixed, 1024, 0>>(), 48_640);
        assert_eq!(size_of::<VmiCore<Fixed, 64, 256>>(), 15_616);
        assert_eq!(size_of::<VmiCore<Fixed, 64, 16>>(), 6_016);
        assert_eq!(size_of::<VmiCore<Fixed, 0, 0>>(), 2_560);
    }

    /// A capacity of 0 is "no cache": every translation walks, every page read goes to
    /// the driver, and nothing is stored.
    #[test]
    fn capacity_zero_caches_nothing() {
        let core = VmiCore::<Fixed, 0, 0>::sized(Fixed);
        for _ in 0..3 {
            assert!(core.read_page(Gfn(7)).is_ok());
        }
        let (v2p, gfn) = (core.v2p_cache_metrics(), core.gfn_cache_metrics());
        assert_eq!((v2p.capacity, v2p.len), (0, 0));
        assert_eq!((gfn.capacity, gfn.len, gfn.hits), (0, 0, 0));
    }

    /// A driver whose VM pauses but will not resume.
    #[cfg(all(feature = "log", not(feature = "defmt")))]
    struct Stuck;

    #[cfg(all(feature = "log", not(feature = "defmt")))]
    impl VmiDriver for Stuck {
        type Architecture = Amd64;
        type Page = Page16;
        fn info(&self) -> Result<VmiInfo, VmiError> {
            Err(VmiError::NotSupported("info"))
        }
        fn read_page(&self, gfn: Gfn) -> Result<Page16, VmiError> {
            Ok(Page16(gfn.0, 0))
        }
        fn pause(&self) -> Result<(), VmiError> {
            Ok(())
        }
    }

    #[cfg(all(feature = "log", feature = "defmt"))]
    use std::{string::String, vec::Vec};

    #[cfg(feature = "log")]
    mod logging {
        use std::string::{String, ToString};
        use std::sync::Mutex;
        use std::vec::Vec;

        static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

        struct Capture;

        impl log::Log for Capture {
            fn enabled(&self, _: &log::Metadata<'_>) -> bool {
                true
            }
            fn log(&self, record: &log::Record<'_>) {
                let line = std::format!("{} {}", record.level(), record.args());
                LINES.lock().unwrap().push(line);
            }
            fn flush(&self) {}
        }

        /// Installs the capturing logger (once per test binary) and returns what has been
        /// logged so far that contains `needle`.
        pub(super) fn lines_with(needle: &str) -> Vec<String> {
            static LOGGER: Capture = Capture;
            let _ = log::set_logger(&LOGGER);
            log::set_max_level(log::LevelFilter::Trace);
            let lines = LINES.lock().unwrap();
            lines
                .iter()
                .filter(|l| l.contains(needle))
                .map(ToString::to_string)
                .collect()
        }
    }

    /// With `defmt` on too, defmt wins: the `log` facade hears nothing from the crate.
    #[test]
    #[cfg(all(feature = "log", feature = "defmt"))]
    fn defmt_wins_over_log() {
        let _ = logging::lines_with("");
        let core = VmiCore::<Fixed, 16, 4>::sized(Fixed);
        core.resize_v2p_cache(8);
        core.flush_gfn_cache();
        assert_eq!(
            logging::lines_with("translation cache: resized"),
            Vec::<String>::new()
        );
        assert_eq!(
            logging::lines_with("page cache: flushed"),
            Vec::<String>::new()
        );
    }

    /// What a user would want to know is logged, at the documented levels.
    #[test]
    #[cfg(all(feature = "log", not(feature = "defmt")))]
    fn resizes_evictions_flushes_and_a_failed_resume_are_logged() {
        let _ = logging::lines_with("");
        let core = VmiCore::<Fixed, 16, 4>::sized(Fixed);
        core.resize_v2p_cache(8);
        core.resize_gfn_cache(usize::MAX);
        for gfn in 0..12 {
            assert!(core.read_page(Gfn(gfn)).is_ok());
        }
        core.flush_gfn_cache();
        core.disable_gfn_cache();
        core.enable_gfn_cache();
        let resized = logging::lines_with("translation cache: resized to 8 entries (asked 8");
        assert_eq!(resized.len(), 1, "{resized:?}");
        assert!(resized[0].starts_with("DEBUG"));
        assert_eq!(
            logging::lines_with("page cache: resized to 4 entries").len(),
            1
        );
        // 12 frames through 4 entries: 8 evictions, each at trace.
        let evicted = logging::lines_with("page cache: evicted");
        assert!(evicted.len() >= 8 && evicted.iter().all(|l| l.starts_with("TRACE")));
        assert!(!logging::lines_with("page cache: flushed").is_empty());
        assert!(!logging::lines_with("page cache: disabled").is_empty());
        assert!(!logging::lines_with("page cache: enabled").is_empty());

        let stuck = VmiCore::new(Stuck);
        drop(stuck.pause_guard().expect("pauses"));
        let failed = logging::lines_with("resuming the VM failed");
        assert!(
            failed
                .iter()
                .any(|l| l.starts_with("WARN") && l.contains("resume"))
        );
    }
}
