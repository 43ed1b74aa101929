//! The crate's one logging shim.
//!
//! Every other module logs through these macros; only this module knows whether the
//! messages go to `defmt`, to `log`, or nowhere. Hot paths (translate, read, event
//! dispatch) do not log at all.

#![allow(unused_macros)]

#[cfg(all(feature = "defmt", feature = "log"))]
compile_error!("the `defmt` and `log` features are mutually exclusive: enable one of them");

macro_rules! log_trace {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        ::defmt::trace!($($arg)*);
        #[cfg(feature = "log")]
        ::log::trace!($($arg)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        { let _ = ($crate::fmt::log_ignore!($($arg)*)); }
    }};
}

macro_rules! log_debug {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        ::defmt::debug!($($arg)*);
        #[cfg(feature = "log")]
        ::log::debug!($($arg)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        { let _ = ($crate::fmt::log_ignore!($($arg)*)); }
    }};
}

macro_rules! log_warn {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        ::defmt::warn!($($arg)*);
        #[cfg(feature = "log")]
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
