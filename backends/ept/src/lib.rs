//! # introvisor-ept
//!
//! The introvisor backend for a hypervisor that owns Intel EPT. The hypervisor implements
//! [`Platform`] (host memory, INVEPT and shootdowns, VMCS controls, registers, pause, a
//! clock), hands over a pool of 4 KiB host frames, and calls
//! [`EptBackend::on_exit`] from its VM-exit handler. The backend builds and owns the EPT
//! hierarchies of a default view and `VIEWS` alternate views, and is an introvisor
//! [`VmiDriver`](introvisor::VmiDriver): a `VmiCore<EptBackend<..>>` reads the guest,
//! changes rights and views, and answers the guest's exits.
//!
//! The crate is `#![no_std]`, allocates nothing (every capacity is a const generic), and
//! denies `unsafe` everywhere but `hostmem`, the one module that touches host memory.
//!
//! The README has a compiled example: a hypervisor implementing [`Platform`], handing
//! over the frame pool and calling the exit entry point.
//!
//! ## Modules, and the rules each writes down
//! - [`platform`]: the [`Platform`] contract (its safety contract, controls as requests).
//! - [`caps`], [`entry`]: the SDM's capability, entry and EPTP encodings.
//! - [`table`]: hierarchies (walk, split, merge), bounded and atomic.
//! - [`views`] (the invalidation rule, as a table), [`events`] (the exit path, the step
//!   state machine that never touches IF, the delivery modes and the full-queue policy).
//! - [`exit`]: what the hypervisor passes in, decoded per the SDM.
//!
//! ## Deadlocks
//! The classic (HyperDbg #182): CPU A holds a lock and sends a shootdown IPI, waiting for
//! every CPU's acknowledgement; CPU B, in its exit handler with interrupts off, spins on
//! A's lock and never takes the IPI. Neither moves. Here:
//! 1. No lock is held across [`Platform::shootdown`]: a change edits the tables under the
//!    state lock, drops it, shoots down, and only then takes the lock again to free
//!    retired frames.
//! 2. No lock is held across a handler call (which may change rights and so shoot down),
//!    and locks are held for a few loads and stores, never while waiting on another CPU.
//! 3. Every busy-wait of the backend (a contended lock, a queued event's response, a full
//!    queue) calls [`Platform::relax`] in each iteration, whose contract is to serve a
//!    shootdown aimed at the waiting CPU. So a CPU waiting inside the backend always
//!    acknowledges, and a shootdown always completes.
//!
//! ## Features
//! - `defmt`: `defmt::Format` on the public types, logging through defmt.
//! - `log`: logging through the `log` facade. With `defmt` also on, defmt wins (as in the
//!   core): the features stay additive.
//! - `fault-injection`: test-only `EptBackend::skip_shootdown`.

#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

#[cfg(test)]
extern crate std;

mod fmt;

mod backend;
pub mod caps;
mod driver;
pub mod entry;
pub mod error;
pub mod events;
pub mod exit;
mod hostmem;
pub mod platform;
mod pool;
pub mod table;
pub mod views;

#[cfg(test)]
mod tests;

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use backend::{
    Config, EptBackend, EptTranslation, ExitAction, FramePool, GuestRegion, InlineHandler,
    MAX_REGIONS, QueueFull, ShootdownSite,
};
pub use caps::EptCapabilities;
pub use driver::EptPage;
pub use entry::{EptEntry, EptFlags, EptPointer, MemoryType};
pub use error::EptError;
pub use events::MONITOR_CAPACITY;
pub use exit::{Exit, ExitInfo};
pub use introvisor;
pub use platform::{Control, Hpa, Invept, Platform, PlatformError};

/// The backend and its page handles are `Sync` for every platform (a platform is
/// `Sync` by its trait bound): one instance serves every CPU. Checked at compile time.
#[allow(dead_code)]
fn assert_sync<P: Platform>() {
    const fn is_sync<T: Sync + ?Sized>() {}
    is_sync::<EptBackend<P>>();
    is_sync::<EptBackend<P, 2, 16, 2, 1>>();
    is_sync::<EptPage>();
}
