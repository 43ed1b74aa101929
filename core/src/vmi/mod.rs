//! [`VmiCore`]: reads, writes and translations through the caches, over one driver.
//!
//! One `impl` block per file, each a concern of the core:
//! - `mod.rs`: the struct, its construction and its constants;
//! - `page_cache.rs`: the page (GFN) cache and the physical reads through it;
//! - `translation_cache.rs`: `TranslationCache`, the cache of translations as a type of
//!   its own (the TLB word format, its base and large-page parts, flushes);
//! - `translate.rs`: virtual-to-physical translation, cached and not;
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

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use core::time::Duration;

use crate::addr::Gfn;
use crate::arch::Architecture;
use crate::cache::ShardedLru;
use crate::driver::VmiDriver;

mod amd64;
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

/// Shards of the page cache.
const SHARDS: usize = 8;
/// Entries per shard of the page cache.
const GFN_PER_SHARD: usize = 32;

/// Reads longer than this many pages walk their middle pages without the translation
/// cache ([`VmiCore::read`]).
const SCAN_PAGES: u64 = 16;

/// The compile-time capacity of the page (GFN) cache.
pub const GFN_CACHE_CAPACITY: usize = SHARDS * GFN_PER_SHARD;
/// The compile-time capacity of the translation cache: its base-page part and its
/// large-page part.
pub const V2P_CACHE_CAPACITY: usize = translation_cache::CAPACITY;

/// The introspection core: one driver, a page cache, a translation cache.
///
/// `VmiCore` is `Send + Sync` when its driver and the driver's page handles are: one core
/// serves every vCPU. The page cache is sharded behind spin locks; the translation cache
/// is read without a lock (seqlocks over atomics, see [`Tlb`](crate::cache::Tlb)).
/// Writes through the core keep both caches true; changes the guest makes itself are not
/// seen by the translation cache until it is flushed ([`VmiCore::flush_v2p_cache`], O(1),
/// at each event).
///
/// # Examples
/// The [crate documentation](crate) builds a complete driver over a byte slice and reads
/// a string through a 4-level walk; `introvisor-host` has ready-made drivers.
pub struct VmiCore<D: VmiDriver> {
    driver: D,
    paging: <D::Architecture as Architecture>::Paging,
    gfn_cache: ShardedLru<Gfn, D::Page, SHARDS, GFN_PER_SHARD>,
    gfn_cache_enabled: AtomicBool,
    v2p_cache: TranslationCache<D::Architecture>,
    v2p_cache_enabled: AtomicBool,
    string_limit: AtomicUsize,
    next_gfn: AtomicU64,
    created: Option<Duration>,
}

impl<D: VmiDriver> VmiCore<D> {
    const PAGE_SIZE: u64 = <D::Architecture as Architecture>::PAGE_SIZE;
    const PAGE_SHIFT: u32 = <D::Architecture as Architecture>::PAGE_SHIFT;

    /// A core over `driver`, both caches enabled at full capacity, the architecture's
    /// default paging, and the default string limit.
    pub fn new(driver: D) -> Self {
        let created = driver.now();
        Self {
            driver,
            paging: Default::default(),
            gfn_cache: ShardedLru::new(),
            gfn_cache_enabled: AtomicBool::new(true),
            v2p_cache: TranslationCache::new(),
            v2p_cache_enabled: AtomicBool::new(true),
            string_limit: AtomicUsize::new(DEFAULT_STRING_LENGTH_LIMIT),
            next_gfn: AtomicU64::new(0),
            created,
        }
    }

    /// The driver.
    pub fn driver(&self) -> &D {
        &self.driver
    }
}
