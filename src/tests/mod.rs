//! In-crate tests: the sequential spec, property tests, the linearizability checker and the loom
//! models. Each file is owned by one piece of work; see its header.

mod lincheck;
#[cfg(leasecache_loom)]
pub(crate) mod loom;
#[cfg(leasecache_loom)]
mod loom_floors;
#[cfg(leasecache_loom)]
mod loom_lincheck;
#[cfg(leasecache_loom)]
mod loom_reads;
#[cfg(leasecache_loom)]
mod loom_writes;
mod properties;
mod spec;
