//! The Redis tier (placeholder while it is being written).
