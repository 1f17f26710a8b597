//! The logging shim: `tracing` events behind the `tracing` feature, nothing without it.
//!
//! Call sites write `log_warn!(field = value, "message")` in `tracing`'s syntax. With the feature
//! each macro is the matching `tracing` macro with the target `leasecache`; without it the
//! macro expands to nothing, so the arguments are never evaluated and cost nothing. Only events an
//! operator acts on go through here (see the crate docs, *Logs*): nothing on the hit path.

// Builds without the Redis tier emit no event at all.
#![allow(unused_macros)]

#[cfg(feature = "tracing")]
macro_rules! log_error {
    ($($arg:tt)*) => { ::tracing::error!(target: "leasecache", $($arg)*) };
}

#[cfg(feature = "tracing")]
macro_rules! log_warn {
    ($($arg:tt)*) => { ::tracing::warn!(target: "leasecache", $($arg)*) };
}

#[cfg(feature = "tracing")]
macro_rules! log_info {
    ($($arg:tt)*) => { ::tracing::info!(target: "leasecache", $($arg)*) };
}

#[cfg(feature = "tracing")]
macro_rules! log_debug {
    ($($arg:tt)*) => { ::tracing::debug!(target: "leasecache", $($arg)*) };
}

#[cfg(not(feature = "tracing"))]
macro_rules! log_error {
    ($($arg:tt)*) => {{}};
}

#[cfg(not(feature = "tracing"))]
macro_rules! log_warn {
    ($($arg:tt)*) => {{}};
}

#[cfg(not(feature = "tracing"))]
macro_rules! log_info {
    ($($arg:tt)*) => {{}};
}

#[cfg(not(feature = "tracing"))]
macro_rules! log_debug {
    ($($arg:tt)*) => {{}};
}
