//! The tiered cache (placeholder while it is being written).
