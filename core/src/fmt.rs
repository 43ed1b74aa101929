//! The crate's one logging shim.
//!
//! Every other module logs through these macros; only this module knows whether the
//! messages go to `defmt`, to `log`, or nowhere. Hot paths (translate, read hits, event
//! dispatch) do not log at all.
//!
//! The features are additive: with both `defmt` and `log` on (as `--all-features` does),
//! **defmt wins** and the `log` facade gets nothing from this crate. A firmware build that
//! asks for defmt wants its compact encoding on the wire, and a host build that only
//! wants `log` has no reason to turn defmt on.
//!
//! A message's arguments must format under both: `{}` and `{:?}` with types that have
//! `Display`/`Debug` and `defmt::Format`.

#![allow(unused_macros)]

macro_rules! log_trace {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        ::defmt::trace!($($arg)*);
        #[cfg(all(feature = "log", not(feature = "defmt")))]
        ::log::trace!($($arg)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        { let _ = ($crate::fmt::log_ignore!($($arg)*)); }
    }};
}

macro_rules! log_debug {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        ::defmt::debug!($($arg)*);
        #[cfg(all(feature = "log", not(feature = "defmt")))]
        ::log::debug!($($arg)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        { let _ = ($crate::fmt::log_ignore!($($arg)*)); }
    }};
}

macro_rules! log_warn {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        ::defmt::warn!($($arg)*);
        #[cfg(all(feature = "log", not(feature = "defmt")))]
        ::log::warn!($($arg)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        { let _ = ($crate::fmt::log_ignore!($($arg)*)); }
    }};
}

/// Evaluates the format arguments without formatting, so that variables used only in
/// log messages do not trigger unused warnings when logging is off.
macro_rules! log_ignore {
    ($fmt:literal $(, $arg:expr)* $(,)?) => {{ $( let _ = &$arg; )* }};
}

#[allow(unused_imports)]
pub(crate) use {log_debug, log_ignore, log_trace, log_warn};
