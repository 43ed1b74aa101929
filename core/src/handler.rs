//! [`VmiHandler`]: the code that answers events, driven by a
//! [`VmiSession`].

use crate::context::VmiContext;
use crate::driver::VmiDriver;
use crate::event::VmiEventResponse;
use crate::os::VmiOs;
use crate::session::VmiSession;

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
pub trait VmiHandler<D: VmiDriver, O: VmiOs<D>> {
    /// Answers one event. Reads through `ctx` go through the event's address space.
    fn handle_event(&mut self, ctx: VmiContext<'_, D, O>) -> VmiEventResponse<D::Architecture>;

    /// Called when no event came within the session's timeout. Does nothing by default.
    fn handle_timeout(&mut self, session: &VmiSession<'_, D, O>) {
        let _ = session;
    }

    /// Whether the session should stop. Asked before each wait; `false` by default.
    fn finished(&self) -> bool {
        false
    }
}
