//! The tiered cache's and the Redis tier's part of the `metrics` feature (names and meanings in
//! the [`metrics`](crate::metrics) module docs).

use super::TieredCache;
use super::TieredKey;
use crate::metrics::{report_cache, set_counters, set_gauges};
use crate::redis::RedisStore;
use ::metrics::{Unit, describe_counter, describe_gauge};
use serde::{Serialize, de::DeserializeOwned};
use std::hash::Hash;

/// `(name, description)` of the Redis tier's counters.
const REDIS_COUNTERS: [(&str, &str); 1] = [(
    "leasecache_redis_unreadable_values_total",
    "Stored values treated as misses because they could not be used.",
)];

/// `(name, description)` of the tiered counters.
const TIERED_COUNTERS: [(&str, &str); 23] = [
    (
        "leasecache_tiered_l1_hits_total",
        "Reads answered by the L1.",
    ),
    (
        "leasecache_tiered_l2_hits_total",
        "Reads answered by Redis after an L1 miss.",
    ),
    (
        "leasecache_tiered_loads_total",
        "Loader calls and cache-aside misses: reads of the source.",
    ),
    (
        "leasecache_tiered_l1_stale_fills_prevented_total",
        "L1 fills rejected because a write or invalidation fenced the L1 lease.",
    ),
    (
        "leasecache_tiered_l2_stale_saves_prevented_total",
        "Redis saves rejected because a write fenced the Redis lease.",
    ),
    (
        "leasecache_tiered_expired_leases_total",
        "Loads that outlived the maximum lease age and were saved nowhere.",
    ),
    (
        "leasecache_tiered_invalidations_received_total",
        "Invalidation messages applied from the feed.",
    ),
    (
        "leasecache_tiered_feed_losses_total",
        "Times the invalidation feed was lost (each flushed the L1).",
    ),
    (
        "leasecache_tiered_bypassed_reads_total",
        "Reads that bypassed the L1.",
    ),
    (
        "leasecache_tiered_redis_errors_total",
        "Redis calls that failed.",
    ),
    (
        "leasecache_tiered_breaker_opens_total",
        "Times the circuit breaker opened.",
    ),
    (
        "leasecache_tiered_pending_queued_total",
        "Writes queued after failing to reach Redis.",
    ),
    (
        "leasecache_tiered_pending_landed_total",
        "Queued writes that landed on a retry.",
    ),
    (
        "leasecache_tiered_pending_collapsed_total",
        "Queued writes replaced by one namespace flush because the queue was full.",
    ),
    (
        "leasecache_tiered_sequence_gaps_total",
        "Sequenced invalidations found missing or out of order (each flushed the L1).",
    ),
    (
        "leasecache_tiered_unacknowledged_writes_total",
        "Strict writes that gave up waiting for an instance's acknowledgement.",
    ),
    (
        "leasecache_tiered_unreadable_messages_total",
        "Messages on the invalidation channels that this version cannot read.",
    ),
    (
        "leasecache_tiered_unreadable_flushes_total",
        "L1 flushes caused by unreadable messages (one per burst).",
    ),
    (
        "leasecache_tiered_fill_waits_total",
        "Reads that waited for another process's fill instead of reading the source.",
    ),
    (
        "leasecache_tiered_fill_takeovers_total",
        "Reads that waited for a fill, then filled the key themselves.",
    ),
    (
        "leasecache_tiered_refreshes_total",
        "Refreshes ahead of expiry that landed in Redis.",
    ),
    (
        "leasecache_tiered_refresh_failures_total",
        "Refreshes ahead of expiry whose load failed or whose save a write fenced.",
    ),
    (
        "leasecache_tiered_stale_served_total",
        "Stale values served to callers that opted in (get_or_load_allow_stale).",
    ),
];

/// `(name, description)` of the tiered gauges.
const TIERED_GAUGES: [(&str, &str); 4] = [
    (
        "leasecache_tiered_pending_writes",
        "Writes waiting in the retry queue now.",
    ),
    (
        "leasecache_tiered_breaker_state",
        "Circuit breaker: 0 closed, 1 open, 2 half-open.",
    ),
    (
        "leasecache_tiered_feed_confirmed",
        "1 while the invalidation feed is confirmed, else 0.",
    ),
    (
        "leasecache_tiered_l1_active",
        "1 while the L1 is in use, else 0.",
    ),
];

/// Registers the Redis and tiered descriptions (called by [`crate::metrics::describe`]).
pub(crate) fn describe() {
    for (name, help) in REDIS_COUNTERS.into_iter().chain(TIERED_COUNTERS) {
        describe_counter!(name, Unit::Count, help);
    }
    for (name, help) in TIERED_GAUGES {
        describe_gauge!(name, help);
    }
}

impl<V: Serialize + DeserializeOwned + Send + Sync + 'static> RedisStore<V> {
    /// Publishes this store's counters through the `metrics` facade, labelled `cache = name`
    /// (see [the list](crate::metrics#metric-names)). Call it on your scrape interval. Does not
    /// talk to Redis.
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn report_metrics(&self, name: &str) {
        set_counters(&REDIS_COUNTERS, [self.unreadable_values()], name);
    }
}

impl<K, V> TieredCache<K, V>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Publishes the counters and gauges of this cache, of its L1 and of its Redis tier through
    /// the `metrics` facade, all labelled `cache = name` (see
    /// [the list](crate::metrics#metric-names)): stale fills and saves prevented, breaker state,
    /// feed state and pending writes among them. Call it on your scrape interval. Does not talk
    /// to Redis; takes each L1 shard's lock briefly.
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn report_metrics(&self, name: &str) {
        let s = &*self.shared;
        let stats = self.stats();
        let counters = [
            stats.l1_hits,
            stats.l2_hits,
            stats.loads,
            stats.l1_stale_rejected,
            stats.l2_stale_rejected,
            stats.expired_leases,
            stats.invalidations_received,
            stats.feed_losses,
            stats.bypassed_reads,
            stats.redis_errors,
            stats.breaker_opens,
            stats.pending_queued,
            stats.pending_landed,
            stats.pending_collapsed,
            stats.sequence_gaps,
            stats.unacknowledged_writes,
            stats.unreadable_messages,
            stats.unreadable_flushes,
            stats.fill_waits,
            stats.fill_takeovers,
            stats.refreshes,
            stats.refresh_failures,
            stats.stale_served,
        ];
        set_counters(&TIERED_COUNTERS, counters, name);
        let feed_confirmed = *s.feed_state.borrow();
        let gauges = [
            stats.pending_writes as f64,
            f64::from(s.breaker.state_code()),
            f64::from(u8::from(feed_confirmed)),
            f64::from(u8::from(s.l1_active())),
        ];
        set_gauges(&TIERED_GAUGES, gauges, name);
        // The L1 (its counters from the snapshot just taken) and the L2, under the same name.
        report_cache(&stats.l1, s.l1.entry_count(), s.l1.weighted_size(), name);
        s.l2.report_metrics(name);
    }
}
