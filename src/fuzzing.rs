//! Fuzzing entry points (placeholder while they are being written).
