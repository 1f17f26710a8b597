//! Cheap statistics: per-shard counters, summed only when asked for.

use crate::sync::{AtomicU64, Ordering};
use crossbeam_utils::CachePadded;

/// A snapshot of a cache's counters, summed over its shards by [`Cache::stats`](crate::Cache::stats).
///
/// Counters are updated with relaxed atomics per shard, so a snapshot taken while other threads
/// work is approximate, never torn into nonsense: each field is a count that really happened.
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

/// Hit and miss counters, striped by thread rather than by shard: the hit path then writes a
/// cache line only its own thread writes, instead of one every thread's lookups of that shard
/// write (which cost the 2-thread hit path a cross-core transfer per lookup).
#[derive(Debug)]
pub(crate) struct LookupCounters {
    stripes: Box<[CachePadded<Stripe>]>,
}

#[derive(Debug, Default)]
struct Stripe {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl LookupCounters {
    pub(crate) fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            stripes: (0..(cores * 2).next_power_of_two())
                .map(|_| CachePadded::new(Stripe::default()))
                .collect(),
        }
    }

    #[inline]
    fn stripe(&self) -> &Stripe {
        &self.stripes[crate::sync::thread_stripe() & (self.stripes.len() - 1)]
    }

    #[inline]
    pub(crate) fn hit(&self) {
        Counters::bump(&self.stripe().hits);
    }

    #[inline]
    pub(crate) fn miss(&self) {
        Counters::bump(&self.stripe().misses);
    }

    pub(crate) fn add_to(&self, stats: &mut Stats) {
        for stripe in self.stripes.iter() {
            stats.hits += stripe.hits.load(Ordering::Relaxed);
            stats.misses += stripe.misses.load(Ordering::Relaxed);
        }
    }
}

/// The write-path counters of one shard (bumped next to a write lock the shard takes anyway).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) loads: AtomicU64,
    pub(crate) load_errors: AtomicU64,
    pub(crate) inserts: AtomicU64,
    pub(crate) saves: AtomicU64,
    pub(crate) stale_rejected: AtomicU64,
    pub(crate) purges: AtomicU64,
}

impl Counters {
    /// Relaxed: counters order nothing.
    #[inline]
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_to(&self, stats: &mut Stats) {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        stats.loads += read(&self.loads);
        stats.load_errors += read(&self.load_errors);
        stats.inserts += read(&self.inserts);
        stats.saves += read(&self.saves);
        stats.stale_rejected += read(&self.stale_rejected);
        stats.purges += read(&self.purges);
    }
}
