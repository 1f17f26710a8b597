//! Placeholder while this suite is being written.
