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
//! See the README (below, when rendered) for an example hypervisor.
//!
//! ## Features
//! - `defmt`: `defmt::Format` on the public types, logging through defmt.
//! - `log`: logging through the `log` facade. `defmt` and `log` exclude each other.
//! - `fault-injection`: test-only `EptBackend::skip_shootdown`.

#![no_std]
#![deny(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

#[cfg(test)]
extern crate std;

#[cfg(all(feature = "defmt", feature = "log"))]
compile_error!("the `defmt` and `log` features are mutually exclusive: enable one of them");

mod fmt;

mod backend;
pub mod caps;
mod driver;
pub mod entry;
pub mod error;
mod events;
pub mod exit;
mod hostmem;
pub mod platform;
mod pool;
pub mod table;
mod views;

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
