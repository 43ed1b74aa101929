//! The crate's one logging shim (as the core's): only this module knows whether messages
//! go to `defmt`, to `log`, or nowhere. The exit path does not log. With both features on,
//! defmt wins, as in the core.

#![allow(unused_macros)]

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
pub(crate) use {log_debug, log_ignore, log_warn};
