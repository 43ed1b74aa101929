//! [`VmiSession`]: a core joined to an OS layer, and the event loop that drives a
//! [`VmiHandler`].
//!
//! # The loop
//! [`VmiSession::handle`] waits for events with a timeout and hands each one to the
//! handler, until the handler says it is finished or an error other than a timeout ends
//! it. Then it cleans up, whatever the outcome: the driver's state is reset (monitors,
//! views, caches), and events the guest raised before that are answered by the handler
//! with the VM paused, so no vCPU is left waiting for a response.
//!
//! The loop allocates nothing and uses no `Box`: the handler is borrowed, the context
//! lives on the stack, and the driver receives the callback as `&mut dyn FnMut`.
//!
//! # Files
//! - `mod.rs`: [`VmiSession`] and [`VmiHandler`] (one module: the loop and what it drives);
//! - `context.rs`: [`VmiContext`] and [`VmiOsContext`], what a handler holds for one event;
//! - `prober.rs`: [`VmiProber`] and [`PageFaults`], reads that record their page faults;
//! - `amd64.rs`: what only an AMD64 session offers
//!   ([`VmiContext::inject_page_fault`]). Impls for one architecture on the generic
//!   session types live in a file named after it, not in `Architecture` items.
//!
//! Layer: the top one; may import every other module.

use core::time::Duration;

use crate::driver::{VmiDriver, VmiEventResponse};
use crate::error::VmiError;
use crate::os::VmiOs;
use crate::vmi::{GFN_CACHE_CAPACITY, V2P_CACHE_CAPACITY, VmiCore};

mod amd64;
mod context;
mod prober;

pub use self::context::{VmiContext, VmiOsContext};
pub use self::prober::{PageFaults, Probed, VmiProber};

/// How long [`VmiSession::handle`] waits for each event before calling
/// [`VmiHandler::handle_timeout`]: 5 seconds.
pub const DEFAULT_EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A core and an OS layer, together: the place to run handlers from.
///
/// The session borrows both, so several sessions (one per thread, say) can share one
/// core; it is `Send` and `Sync` when the core and the OS layer are `Sync`.
pub struct VmiSession<
    'a,
    D: VmiDriver,
    O: VmiOs<D, TLB, PAGES>,
    const TLB: usize = V2P_CACHE_CAPACITY,
    const PAGES: usize = GFN_CACHE_CAPACITY,
> {
    core: &'a VmiCore<D, TLB, PAGES>,
    os: &'a O,
    flush_v2p_per_event: bool,
}

impl<D: VmiDriver, O: VmiOs<D, TLB, PAGES>, const TLB: usize, const PAGES: usize> Clone
    for VmiSession<'_, D, O, TLB, PAGES>
{
    fn clone(&self) -> Self {
        *self
    }
}

impl<D: VmiDriver, O: VmiOs<D, TLB, PAGES>, const TLB: usize, const PAGES: usize> Copy
    for VmiSession<'_, D, O, TLB, PAGES>
{
}

impl<'a, D: VmiDriver, O: VmiOs<D, TLB, PAGES>, const TLB: usize, const PAGES: usize>
    VmiSession<'a, D, O, TLB, PAGES>
{
    /// A session over `core` and `os`. The translation cache is flushed at each event
    /// (O(1)), since the guest may have changed its page tables while it ran.
    pub fn new(core: &'a VmiCore<D, TLB, PAGES>, os: &'a O) -> Self {
        Self {
            core,
            os,
            flush_v2p_per_event: true,
        }
    }

    /// Whether to flush the translation cache at each event (the default). Turn it off
    /// only when the guest's page tables cannot change between events (a paused guest,
    /// a replay).
    #[must_use]
    pub fn with_v2p_flush_per_event(mut self, flush: bool) -> Self {
        self.flush_v2p_per_event = flush;
        self
    }

    /// The core.
    pub fn core(&self) -> &'a VmiCore<D, TLB, PAGES> {
        self.core
    }

    /// The OS layer.
    pub fn os(&self) -> &'a O {
        self.os
    }

    /// Waits up to `timeout` for events and answers each with `handler`.
    ///
    /// # Errors
    /// [`VmiError::Timeout`] when none came; otherwise as the driver's
    /// [`VmiDriver::wait_for_event`].
    pub fn wait_for_event<H: VmiHandler<D, O, TLB, PAGES>>(
        &self,
        timeout: Duration,
        handler: &mut H,
    ) -> Result<(), VmiError> {
        let (core, os, flush) = (self.core, self.os, self.flush_v2p_per_event);
        core.wait_for_event(timeout, |event| {
            if flush {
                core.flush_v2p_cache();
            }
            handler.handle_event(VmiContext::new(core, os, event))
        })
    }

    /// Runs `handler` until it is finished, waiting [`DEFAULT_EVENT_TIMEOUT`] for each
    /// event, then cleans up (see the [module documentation](self)).
    ///
    /// # Errors
    /// The first error other than a timeout, from the loop or from the clean-up.
    pub fn handle<H: VmiHandler<D, O, TLB, PAGES>>(&self, handler: &mut H) -> Result<(), VmiError> {
        self.handle_with_timeout(DEFAULT_EVENT_TIMEOUT, handler)
    }

    /// [`VmiSession::handle`] with another timeout per event.
    ///
    /// # Errors
    /// As [`VmiSession::handle`].
    pub fn handle_with_timeout<H: VmiHandler<D, O, TLB, PAGES>>(
        &self,
        timeout: Duration,
        handler: &mut H,
    ) -> Result<(), VmiError> {
        let mut result = Ok(());
        while !handler.finished() {
            match self.wait_for_event(timeout, handler) {
                Ok(()) => {}
                Err(VmiError::Timeout) => handler.handle_timeout(self),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let cleanup = self.clean_up(handler);
        result.and(cleanup)
    }

    /// Resets the driver's state, then answers the events still pending with the VM
    /// paused. Capabilities the driver lacks (pause, a pending count) are skipped.
    fn clean_up<H: VmiHandler<D, O, TLB, PAGES>>(&self, handler: &mut H) -> Result<(), VmiError> {
        let reset = supported(self.core.reset_state());
        let paused = match self.core.pause() {
            Ok(()) => true,
            Err(VmiError::NotSupported(_)) => false,
            Err(e) => return reset.and(Err(e)),
        };
        let mut drain = Ok(());
        match self.core.events_pending() {
            // Bounded by the count seen now: the VM is paused, so no new event should
            // come, and a driver that keeps producing them cannot hold the loop.
            Ok(pending) => {
                for _ in 0..pending {
                    match self.wait_for_event(Duration::ZERO, handler) {
                        Ok(()) => {}
                        Err(VmiError::Timeout) => break,
                        Err(e) => {
                            drain = Err(e);
                            break;
                        }
                    }
                }
            }
            Err(VmiError::NotSupported(_)) => {}
            Err(e) => drain = Err(e),
        }
        let resume = if paused { self.core.resume() } else { Ok(()) };
        reset.and(drain).and(resume)
    }
}

/// `Ok` for a capability the driver does not have.
fn supported(result: Result<(), VmiError>) -> Result<(), VmiError> {
    match result {
        Err(VmiError::NotSupported(_)) => Ok(()),
        other => other,
    }
}

/// Answers events, and says when it has seen enough.
///
/// [`VmiSession::handle`] runs the loop: while [`VmiHandler::finished`] is false it waits
/// for an event and calls [`VmiHandler::handle_event`] with a [`VmiContext`], or
/// [`VmiHandler::handle_timeout`] when none came in time. A handler is plain state: it
/// may hold fixed-capacity sets of page faults, counters, the views it created; nothing
/// in the loop needs it to allocate.
///
/// ```
/// use introvisor::{VmiContext, VmiDriver, VmiEventResponse, VmiHandler, VmiOs};
///
/// /// Counts events and stops after `limit`.
/// struct Counter { seen: u32, limit: u32 }
///
/// impl<D: VmiDriver, O: VmiOs<D>> VmiHandler<D, O> for Counter {
///     fn handle_event(&mut self, _ctx: VmiContext<'_, D, O>) -> VmiEventResponse<D::Architecture> {
///         self.seen += 1;
///         VmiEventResponse::continue_()
///     }
///
///     fn finished(&self) -> bool {
///         self.seen >= self.limit
///     }
/// }
/// ```
pub trait VmiHandler<
    D: VmiDriver,
    O: VmiOs<D, TLB, PAGES>,
    const TLB: usize = V2P_CACHE_CAPACITY,
    const PAGES: usize = GFN_CACHE_CAPACITY,
>
{
    /// Answers one event. Reads through `ctx` go through the event's address space.
    fn handle_event(
        &mut self,
        ctx: VmiContext<'_, D, O, TLB, PAGES>,
    ) -> VmiEventResponse<D::Architecture>;

    /// Called when no event came within the session's timeout. Does nothing by default.
    fn handle_timeout(&mut self, session: &VmiSession<'_, D, O, TLB, PAGES>) {
        let _ = session;
    }

    /// Whether the session should stop. Asked before each wait; `false` by default.
    fn finished(&self) -> bool {
        false
    }
}
