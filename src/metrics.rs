//! Publishing the counters through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`), so that any exporter (Prometheus, OpenTelemetry, StatsD, ...) can scrape them.
//!
//! # Design: the application reports, on its own schedule
//!
//! The caches already count everything in cheap per-thread and per-shard counters (the hit path
//! runs no facade call and takes no lock). Nothing is published until the application asks:
//! [`Cache::report_metrics`], `RedisStore::report_metrics`
//! and `TieredCache::report_metrics` take a
//! snapshot and set every metric to its current value (counters with
//! [`Counter::absolute`](::metrics::Counter::absolute), gauges with
//! [`Gauge::set`](::metrics::Gauge::set)). Call them on your scrape or push interval (every few
//! seconds is typical), from a task or thread of your own; a report costs one snapshot (it
//! briefly takes each shard's lock) and a few dozen facade calls. Until the first report after a
//! recorder is installed, the metrics do not exist.
//!
//! Every metric carries one label, `cache`, whose value is the name you pass to the report: give
//! each cache instance its own name. Labels common to the whole process (host, service) belong
//! in the exporter's global labels. [`describe`] registers the descriptions and units below with
//! the installed recorder; call it once after installing it.
//!
//! ```
//! use leasecache::Cache;
//!
//! let users: Cache<u64, String> = Cache::new(10_000);
//! leasecache::metrics::describe();
//! // On every scrape interval (without a recorder installed, the calls do nothing):
//! users.report_metrics("users");
//! ```
//!
//! # Metric names
//!
//! Kinds: *counter* values only grow while the cache lives (they restart at 0 with a new
//! instance, which exporters treat as a counter reset); *gauge* values are levels.
//!
//! [`Cache`] ([`Cache::report_metrics`]; `TieredCache::report_metrics`
//! reports them for its L1 too, under the same `cache` label):
//!
//! | name | kind | unit | meaning ([`Stats`] field) |
//! |---|---|---|---|
//! | `leasecache_hits_total` | counter | count | lookups that found a live value (`hits`) |
//! | `leasecache_misses_total` | counter | count | lookups that found none (`misses`) |
//! | `leasecache_loads_total` | counter | count | loader calls, one per single-flight group (`loads`) |
//! | `leasecache_load_errors_total` | counter | count | loader calls that failed or panicked (`load_errors`) |
//! | `leasecache_inserts_total` | counter | count | unconditional inserts (`inserts`) |
//! | `leasecache_saves_total` | counter | count | saves under a lease that landed (`saves`) |
//! | `leasecache_stale_saves_prevented_total` | counter | count | saves rejected because a write fenced their lease: each one a stale value kept out (`stale_rejected`) |
//! | `leasecache_purges_total` | counter | count | purges, present or absent (`purges`) |
//! | `leasecache_evictions_total` | counter | count | entries evicted for capacity (`evictions`) |
//! | `leasecache_expirations_total` | counter | count | expired entries removed (`expirations`) |
//! | `leasecache_stale_served_total` | counter | count | stale values served to callers that opted in (`get_or_load_allow_stale` with a stale grace) (`stale_served`) |
//! | `leasecache_entries` | gauge | count | entries held, expired ones not yet removed included ([`Cache::entry_count`]) |
//! | `leasecache_weighted_size` | gauge | count | total weight held ([`Cache::weighted_size`]) |
//!
//! `RedisStore` (feature `redis`; also reported by
//! `TieredCache::report_metrics` for its L2):
//!
//! | name | kind | unit | meaning |
//! |---|---|---|---|
//! | `leasecache_redis_unreadable_values_total` | counter | count | stored values treated as misses because they could not be used (`RedisStore::unreadable_values`) |
//!
//! `TieredCache` (feature `redis`;
//! `TieredStats` field in parentheses):
//!
//! | name | kind | unit | meaning |
//! |---|---|---|---|
//! | `leasecache_tiered_l1_hits_total` | counter | count | reads answered by the L1 (`l1_hits`) |
//! | `leasecache_tiered_l2_hits_total` | counter | count | reads answered by Redis after an L1 miss (`l2_hits`) |
//! | `leasecache_tiered_loads_total` | counter | count | loader calls, and `get_or_lease` misses (`loads`) |
//! | `leasecache_tiered_l1_stale_fills_prevented_total` | counter | count | L1 fills rejected because a purge, invalidation, insert or flush fenced the L1 lease (`l1_stale_rejected`) |
//! | `leasecache_tiered_l2_stale_saves_prevented_total` | counter | count | Redis saves rejected because a write fenced the Redis lease (`l2_stale_rejected`) |
//! | `leasecache_tiered_expired_leases_total` | counter | count | loads that outlived the maximum lease age, saved nowhere (`expired_leases`) |
//! | `leasecache_tiered_invalidations_received_total` | counter | count | invalidations applied from the feed (`invalidations_received`) |
//! | `leasecache_tiered_feed_losses_total` | counter | count | times the feed was lost, each flushing the L1 (`feed_losses`) |
//! | `leasecache_tiered_bypassed_reads_total` | counter | count | reads that bypassed the L1 (`bypassed_reads`) |
//! | `leasecache_tiered_redis_errors_total` | counter | count | Redis calls that failed (`redis_errors`) |
//! | `leasecache_tiered_breaker_opens_total` | counter | count | times the circuit breaker opened (`breaker_opens`) |
//! | `leasecache_tiered_pending_queued_total` | counter | count | writes queued after failing to reach Redis (`pending_queued`) |
//! | `leasecache_tiered_pending_landed_total` | counter | count | queued writes that landed on a retry (`pending_landed`) |
//! | `leasecache_tiered_pending_collapsed_total` | counter | count | queued writes replaced by one namespace flush when the queue was full (`pending_collapsed`) |
//! | `leasecache_tiered_sequence_gaps_total` | counter | count | sequenced invalidations found missing or out of order, each of which flushed the L1 (`sequence_gaps`) |
//! | `leasecache_tiered_unacknowledged_writes_total` | counter | count | `Coherence::Strict` writes that returned `TieredError::Unacknowledged` (`unacknowledged_writes`) |
//! | `leasecache_tiered_unreadable_messages_total` | counter | count | messages on the invalidation channels that this version cannot read (`unreadable_messages`) |
//! | `leasecache_tiered_unreadable_flushes_total` | counter | count | L1 flushes those caused, one per burst (`unreadable_flushes`) |
//! | `leasecache_tiered_fill_waits_total` | counter | count | reads that found another process filling the key and waited for its fill instead of reading the source (`fill_waits`) |
//! | `leasecache_tiered_fill_takeovers_total` | counter | count | of those, reads that then filled the key themselves: the filler lapsed, gave up, or a write voided the fill (`fill_takeovers`) |
//! | `leasecache_tiered_refreshes_total` | counter | count | refreshes ahead of expiry that landed in Redis (`refreshes`) |
//! | `leasecache_tiered_refresh_failures_total` | counter | count | refreshes ahead of expiry whose load failed or whose save a write fenced (`refresh_failures`) |
//! | `leasecache_tiered_stale_served_total` | counter | count | stale values served by `get_or_load_allow_stale`, from the L1's stash or from Redis (`stale_served`) |
//! | `leasecache_tiered_pending_writes` | gauge | count | writes waiting in the retry queue now (`pending_writes`) |
//! | `leasecache_tiered_breaker_state` | gauge | - | the circuit breaker: 0 closed, 1 open, 2 half-open (one probe let through) |
//! | `leasecache_tiered_feed_confirmed` | gauge | - | 1 while the invalidation feed is confirmed, else 0 |
//! | `leasecache_tiered_l1_active` | gauge | - | 1 while the L1 is in use (feed confirmed, breaker closed, no collapsed flush pending), else 0 (`TieredCache::is_l1_active`) |

use crate::{Cache, Stats};
use ::metrics::{Unit, counter, describe_counter, describe_gauge, gauge};
use std::hash::{BuildHasher, Hash};

/// The label every metric carries; its value is the name passed to a report.
pub const CACHE_LABEL: &str = "cache";

/// `(name, description)` of the [`Cache`] counters, in [`Stats`] order.
const CACHE_COUNTERS: [(&str, &str); 11] = [
    ("leasecache_hits_total", "Lookups that found a live value."),
    (
        "leasecache_misses_total",
        "Lookups that found no live value.",
    ),
    (
        "leasecache_loads_total",
        "Loader calls (one per single-flight group).",
    ),
    (
        "leasecache_load_errors_total",
        "Loader calls that returned an error or panicked.",
    ),
    ("leasecache_inserts_total", "Unconditional inserts."),
    ("leasecache_saves_total", "Saves under a lease that landed."),
    (
        "leasecache_stale_saves_prevented_total",
        "Saves rejected because a write fenced their lease.",
    ),
    (
        "leasecache_purges_total",
        "Purges, whether or not a value was present.",
    ),
    (
        "leasecache_evictions_total",
        "Entries removed to stay within capacity.",
    ),
    ("leasecache_expirations_total", "Expired entries removed."),
    (
        "leasecache_stale_served_total",
        "Stale values served to callers that opted in (get_or_load_allow_stale).",
    ),
];

/// `(name, description)` of the [`Cache`] gauges.
const CACHE_GAUGES: [(&str, &str); 2] = [
    (
        "leasecache_entries",
        "Entries held, including expired ones not yet removed.",
    ),
    ("leasecache_weighted_size", "Total weight held."),
];

/// Registers the description and unit of every metric this crate reports with the installed
/// recorder. Call it once, after installing the recorder; reports work without it.
pub fn describe() {
    for (name, help) in CACHE_COUNTERS {
        describe_counter!(name, Unit::Count, help);
    }
    for (name, help) in CACHE_GAUGES {
        describe_gauge!(name, Unit::Count, help);
    }
    #[cfg(feature = "redis")]
    crate::tiered::describe_metrics();
}

/// Sets each counter of `table` (`(name, description)` pairs) to its value, labelled `cache`.
pub(crate) fn set_counters<const N: usize>(
    table: &[(&'static str, &'static str); N],
    values: [u64; N],
    cache: &str,
) {
    for ((name, _), value) in table.iter().zip(values) {
        counter!(*name, CACHE_LABEL => cache.to_owned()).absolute(value);
    }
}

/// Sets each gauge of `table` (`(name, description)` pairs) to its value, labelled `cache`.
pub(crate) fn set_gauges<const N: usize>(
    table: &[(&'static str, &'static str); N],
    values: [f64; N],
    cache: &str,
) {
    for ((name, _), value) in table.iter().zip(values) {
        gauge!(*name, CACHE_LABEL => cache.to_owned()).set(value);
    }
}

/// Reports the [`Cache`] metrics: the counters of `stats` and the two size gauges.
pub(crate) fn report_cache(stats: &Stats, entries: u64, weighted_size: u64, cache: &str) {
    let counters = [
        stats.hits,
        stats.misses,
        stats.loads,
        stats.load_errors,
        stats.inserts,
        stats.saves,
        stats.stale_rejected,
        stats.purges,
        stats.evictions,
        stats.expirations,
        stats.stale_served,
    ];
    set_counters(&CACHE_COUNTERS, counters, cache);
    set_gauges(&CACHE_GAUGES, [entries as f64, weighted_size as f64], cache);
}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    /// Publishes this cache's counters and gauges through the `metrics` facade, labelled
    /// `cache = name` (see [the list](crate::metrics#metric-names)). Call it on your scrape
    /// interval; it sets absolute values, so calling it more or less often changes nothing but
    /// freshness. Takes each shard's lock briefly, like [`stats`](Self::stats).
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, u32> = leasecache::Cache::new(10);
    /// cache.insert(1, 1);
    /// cache.report_metrics("numbers"); // a no-op until a recorder is installed
    /// ```
    pub fn report_metrics(&self, name: &str) {
        report_cache(
            &self.stats(),
            self.entry_count(),
            self.weighted_size(),
            name,
        );
    }
}
