//! Cheap statistics: per-shard counters, summed only when asked for.

use crate::sync::{AtomicU64, Ordering};

/// A snapshot of a cache's counters, summed over its shards by [`Cache::stats`](crate::Cache::stats).
///
/// Hits and misses are counted per thread (each thread writes only its own counters), the other
/// counters per shard; a snapshot taken while other threads work is approximate, never torn into
/// nonsense: each field is a count that really happened.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lookups (`get`, `get_or_lease`, `get_or_load`) that found a live value.
    pub hits: u64,
    /// Lookups that found no live value.
    pub misses: u64,
    /// Loader calls made by `get_or_load` / `get_or_load_async` (one per single-flight group).
    pub loads: u64,
    /// Loader calls that returned an error or panicked.
    pub load_errors: u64,
    /// Unconditional inserts.
    pub inserts: u64,
    /// Saves under a lease that landed.
    pub saves: u64,
    /// Saves under a lease that were rejected because a write fenced the lease.
    pub stale_rejected: u64,
    /// Purges, whether or not a value was present.
    pub purges: u64,
    /// Entries removed to stay within capacity.
    pub evictions: u64,
    /// Expired entries removed.
    pub expirations: u64,
    /// Stale values served to callers that opted in
    /// ([`Cache::get_or_load_allow_stale`](crate::Cache::get_or_load_allow_stale), with
    /// [`CacheBuilder::stale_grace`](crate::CacheBuilder::stale_grace)).
    pub stale_served: u64,
}

impl Stats {
    /// `hits / (hits + misses)`, or 0 when there were no lookups.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// The load counters of one shard (bumped outside its lock, where a load begins or fails).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) loads: AtomicU64,
    pub(crate) load_errors: AtomicU64,
    pub(crate) stale_served: AtomicU64,
}

impl Counters {
    /// Relaxed: counters order nothing.
    #[inline]
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_to(&self, stats: &mut Stats) {
        stats.loads += self.loads.load(Ordering::Relaxed);
        stats.load_errors += self.load_errors.load(Ordering::Relaxed);
        stats.stale_served += self.stale_served.load(Ordering::Relaxed);
    }
}

/// The write-path counters of one shard: plain integers inside the shard's lock-protected core,
/// counted under the write lock that every write takes anyway (an atomic add after the unlock
/// cost the miss path a locked instruction per save).
///
/// `repr(C)`, the counts of inserts and purges first: they sit in the lock word's line (see
/// `Core`).
#[derive(Debug, Default)]
#[repr(C)]
pub(crate) struct WriteCounts {
    pub(crate) inserts: u64,
    pub(crate) purges: u64,
    pub(crate) saves: u64,
    pub(crate) stale_rejected: u64,
}

impl WriteCounts {
    pub(crate) fn add_to(&self, stats: &mut Stats) {
        stats.inserts += self.inserts;
        stats.saves += self.saves;
        stats.stale_rejected += self.stale_rejected;
        stats.purges += self.purges;
    }
}
