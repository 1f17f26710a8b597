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
///
/// The first thread to use a stripe owns it and counts with a plain load and store (no locked
/// read-modify-write on the hit path: nothing else writes its counters, so no update is lost).
/// Threads whose stripe another thread owns count in the stripe's shared counters with
/// `fetch_add`, so the counts stay exact with any number of threads.
#[derive(Debug)]
pub(crate) struct LookupCounters {
    stripes: Box<[CachePadded<Stripe>]>,
}

#[derive(Debug, Default)]
struct Stripe {
    /// `thread_stripe() + 1` of the owning thread; 0 while unowned.
    owner: AtomicU64,
    owned: Pair,
    shared: Pair,
}

#[derive(Debug, Default)]
struct Pair {
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
    fn count(&self, pick: impl Fn(&Pair) -> &AtomicU64) {
        let me = crate::sync::thread_stripe();
        let stripe = &self.stripes[me & (self.stripes.len() - 1)];
        let me = me as u64 + 1;
        // Loom runs its threads on one OS thread, so `thread_stripe` cannot tell them apart:
        // models always take the shared path.
        if cfg!(not(leasecache_loom)) {
            // Relaxed: ownership only says who may write `owned`, and a thread reads back its own
            // claim (program order).
            let owner = stripe.owner.load(Ordering::Relaxed);
            if owner == me
                || (owner == 0
                    && stripe
                        .owner
                        .compare_exchange(0, me, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok())
            {
                let counter = pick(&stripe.owned);
                counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                return;
            }
        }
        Counters::bump(pick(&stripe.shared));
    }

    #[inline]
    pub(crate) fn hit(&self) {
        self.count(|p| &p.hits);
    }

    #[inline]
    pub(crate) fn miss(&self) {
        self.count(|p| &p.misses);
    }

    pub(crate) fn add_to(&self, stats: &mut Stats) {
        for stripe in self.stripes.iter() {
            for pair in [&stripe.owned, &stripe.shared] {
                stats.hits += pair.hits.load(Ordering::Relaxed);
                stats.misses += pair.misses.load(Ordering::Relaxed);
            }
        }
    }
}

/// The load counters of one shard (bumped outside its lock, where a load begins or fails).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) loads: AtomicU64,
    pub(crate) load_errors: AtomicU64,
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
    }
}

/// The write-path counters of one shard: plain integers inside the shard's lock-protected core,
/// counted under the write lock that every write takes anyway (an atomic add after the unlock
/// cost the miss path a locked instruction per save).
#[derive(Debug, Default)]
pub(crate) struct WriteCounts {
    pub(crate) inserts: u64,
    pub(crate) saves: u64,
    pub(crate) stale_rejected: u64,
    pub(crate) purges: u64,
}

impl WriteCounts {
    pub(crate) fn add_to(&self, stats: &mut Stats) {
        stats.inserts += self.inserts;
        stats.saves += self.saves;
        stats.stale_rejected += self.stale_rejected;
        stats.purges += self.purges;
    }
}

#[cfg(all(test, not(leasecache_loom)))]
mod tests {
    use super::*;

    #[test]
    fn counts_are_exact_with_more_threads_than_stripes() {
        let counters = LookupCounters::new();
        let threads = counters.stripes.len() * 3;
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..100_000 {
                        counters.hit();
                        counters.miss();
                    }
                });
            }
        });
        let mut stats = Stats::default();
        counters.add_to(&mut stats);
        let expected = threads as u64 * 100_000;
        assert_eq!((stats.hits, stats.misses), (expected, expected));
    }
}
