//! The consuming builder behind [`Cache::builder`](crate::Cache::builder).

use crate::cache::{Cache, Layout, Options, Weigher};
use crate::clock::{Clock, ManualClock};
use crate::expiry::Expiry;
use crate::listener::{Listener, RemovalCause, clone_entry};
use crate::stale::Grace;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

/// Builds a [`Cache`] with capacity by weight, a TTL, a custom hasher and other settings.
///
/// ```
/// use leasecache::Cache;
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// struct Row { body: Vec<u8> }
///
/// let cache: Cache<String, Arc<Row>> = Cache::builder()
///     .max_capacity(64 << 20)                              // 64 MiB...
///     .weigher(|_key, row: &Arc<Row>| row.body.len() as u32) // ...of row bodies
///     .time_to_live(Duration::from_secs(300))
///     .build();
/// cache.insert("a".into(), Arc::new(Row { body: vec![0; 1024] }));
/// assert_eq!(cache.weighted_size(), 1024);
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct CacheBuilder<K, V, S = ahash::RandomState> {
    max_capacity: u64,
    weigher: Option<Weigher<K, V>>,
    ttl: Option<Duration>,
    shards: Option<usize>,
    lease_slots: Option<usize>,
    clock: Option<ManualClock>,
    hold_off: Option<Duration>,
    refresh_after: Option<Duration>,
    listener: Option<Listener<K, V>>,
    expiry: Option<Arc<dyn Expiry<K, V>>>,
    tti: Option<Duration>,
    stale: Option<Grace<K, V>>,
    refresh_beta: Option<f64>,
    hasher: S,
    _types: PhantomData<fn(K, V)>,
}

impl<K, V> CacheBuilder<K, V, ahash::RandomState> {
    pub(crate) fn new() -> Self {
        Self {
            max_capacity: u64::MAX,
            weigher: None,
            ttl: None,
            shards: None,
            lease_slots: None,
            clock: None,
            hold_off: None,
            refresh_after: None,
            listener: None,
            expiry: None,
            tti: None,
            stale: None,
            refresh_beta: None,
            hasher: ahash::RandomState::new(),
            _types: PhantomData,
        }
    }
}

impl<K, V, S> CacheBuilder<K, V, S> {
    /// The most the cache holds: entries, or total weight when a [`weigher`](Self::weigher) is set.
    /// Unbounded when not called, except that a shard holds at most 671,088,640 entries whatever
    /// the capacity and the weights (past that it evicts as if full: its index cannot grow).
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, u32> = leasecache::Cache::builder().max_capacity(2).build();
    /// for k in 0..10 {
    ///     cache.insert(k, k);
    /// }
    /// assert!(cache.entry_count() <= 2);
    /// ```
    pub fn max_capacity(mut self, max_capacity: u64) -> Self {
        self.max_capacity = max_capacity;
        self
    }

    /// Weighs each entry (in any unit; the capacity is in the same unit). An entry heavier than
    /// its shard's share of the capacity is not cached; entries of weight 0 count only towards
    /// the per-shard bound on entries (see [`max_capacity`](Self::max_capacity)).
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, String> = leasecache::Cache::builder()
    ///     .max_capacity(1 << 20)
    ///     .weigher(|_k, v: &String| v.len() as u32)
    ///     .build();
    /// cache.insert(1, "four".to_string());
    /// assert_eq!(cache.weighted_size(), 4);
    /// ```
    pub fn weigher(mut self, weigher: impl Fn(&K, &V) -> u32 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Arc::new(weigher));
        self
    }

    /// How long an entry lives after it is written, unless the write gives its own TTL.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let cache: leasecache::Cache<u32, u32> = leasecache::Cache::builder()
    ///     .time_to_live(Duration::from_secs(300))
    ///     .build();
    /// cache.insert(1, 1); // expires in 300 s
    /// cache.insert_with_ttl(2, 2, Duration::from_secs(5)); // expires in 5 s
    /// ```
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How many shards (rounded up to a power of two, at most 4096). By default 4 per core, fewer
    /// for small capacities, so that each shard holds enough entries to evict well. (16 per core
    /// was measured 1.3-1.8x slower on the hit path: more shards, more slabs to miss in.)
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, u32> = leasecache::Cache::builder().shards(64).build();
    /// # cache.insert(1, 1);
    /// ```
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// How many generation slots the lease table has in all (rounded up to a power of two per
    /// shard). Keys sharing a slot fence each other's leases: harmless (a spurious rejection costs
    /// one uncached read) but worth keeping rare. The default is about one slot per four entries of
    /// capacity, at least 64 per shard and at most 65 536 per shard; each slot is 8 bytes. A save
    /// is spuriously rejected when some other key of its slot is written (inserted or purged)
    /// while the lease is out: at 10,000 writes a second spread over a million-entry cache's
    /// 250,000 slots and 1 ms between lease and save, about 4 saves in 100,000.
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, u32> = leasecache::Cache::builder()
    ///     .max_capacity(1_000)
    ///     .lease_slots(1 << 16) // rarer spurious rejections under heavy purging
    ///     .build();
    /// # cache.insert(1, 1);
    /// ```
    pub fn lease_slots(mut self, slots: usize) -> Self {
        self.lease_slots = Some(slots);
        self
    }

    /// Uses a [`ManualClock`] for TTLs instead of the system's monotonic clock (see its example).
    pub fn clock(mut self, clock: ManualClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// A hold-off after every write (WANObjectCache's `HOLDOFF_TTL`): once a purge, insert or
    /// flush of a key completes, saves under leases captured within `hold_off` of it are refused
    /// ([`Saved::Stale`](crate::Saved::Stale), counted in
    /// [`Stats::stale_rejected`](crate::Stats::stale_rejected)), however fresh the lease. A
    /// reader in the window misses, serves what it read, and does not cache it.
    ///
    /// Use it when readers read a source that may lag the writes by up to `hold_off` (an
    /// asynchronous replica): a lease cannot see that lag, a hold-off at least as long as the
    /// lag covers it. Default: none. [`Cache::purge_with_hold_off`](crate::Cache::purge_with_hold_off)
    /// sets one per purge. The deadlines live in a fixed table beside the generations (8 bytes
    /// per lease slot, allocated at build time whether or not a hold-off is used).
    ///
    /// ```
    /// use leasecache::{Cache, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let cache: Cache<u32, &str> = Cache::builder()
    ///     .hold_off(Duration::from_secs(1))
    ///     .clock(clock.clone())
    ///     .build();
    /// cache.purge(&1);
    /// let lease = cache.lease(&1);
    /// assert!(cache.save_with_lease(1, "old", lease).is_ok_and(leasecache::Saved::is_stale)); // inside the hold-off
    /// clock.advance(Duration::from_secs(1));
    /// let lease = cache.lease(&1);
    /// assert!(cache.save_with_lease(1, "new", lease).is_ok_and(leasecache::Saved::is_stored));
    /// ```
    pub fn hold_off(mut self, hold_off: Duration) -> Self {
        self.hold_off = Some(hold_off);
        self
    }

    /// Calls `listener` with the key, the value and the [`RemovalCause`] of every entry that
    /// leaves the cache: evicted for size, expired, purged (also by
    /// [`retain`](Cache::retain)), replaced, or flushed (moka's `eviction_listener`).
    ///
    /// The listener runs **outside the shard's lock, on the thread whose call removed the
    /// entry**, before that call returns, in the order the entries were removed; it may call the
    /// cache. With a listener every removal clones its key and value under the lock (without one
    /// nothing is cloned). See [`RemovalCause`] for exactly what is and is not reported.
    ///
    /// ```
    /// use leasecache::{Cache, RemovalCause};
    /// use std::sync::{Arc, Mutex};
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&seen);
    /// let cache: Cache<u32, &str> = Cache::builder()
    ///     .eviction_listener(move |k, v, cause| log.lock().unwrap().push((k, v, cause)))
    ///     .build();
    /// cache.insert(1, "a");
    /// cache.insert(1, "b");
    /// cache.purge(&1);
    /// assert_eq!(
    ///     *seen.lock().unwrap(),
    ///     [(1, "a", RemovalCause::Replaced), (1, "b", RemovalCause::Purged)]
    /// );
    /// ```
    pub fn eviction_listener(
        mut self,
        listener: impl Fn(K, V, RemovalCause) + Send + Sync + 'static,
    ) -> Self
    where
        K: Clone,
        V: Clone,
    {
        self.listener = Some(Listener::new(listener));
        self
    }

    /// Computes each entry's time to live from the entry itself when it is created or updated
    /// (moka's and Caffeine's `Expiry`). The entry lives for the shorter of what `expiry` returns
    /// and what the cache's [`time_to_live`](Self::time_to_live) (or the write, such as
    /// [`insert_with_ttl`](Cache::insert_with_ttl)) allows; `None` from `expiry` sets no limit of
    /// its own. An expired entry is never returned (see [`Expiry`]).
    ///
    /// ```
    /// use leasecache::{Cache, Expiry, ManualClock};
    /// use std::time::Duration;
    ///
    /// struct ByValue;
    /// impl Expiry<&'static str, u64> for ByValue {
    ///     fn expire_after_create(&self, _: &&'static str, secs: &u64) -> Option<Duration> {
    ///         Some(Duration::from_secs(*secs))
    ///     }
    /// }
    ///
    /// let clock = ManualClock::new();
    /// let cache: Cache<&str, u64> = Cache::builder().clock(clock.clone()).expiry(ByValue).build();
    /// cache.insert("short", 1);
    /// cache.insert("long", 60);
    /// clock.advance(Duration::from_secs(2));
    /// assert_eq!((cache.get("short"), cache.get("long")), (None, Some(60)));
    /// ```
    pub fn expiry(mut self, expiry: impl Expiry<K, V> + 'static) -> Self {
        self.expiry = Some(Arc::new(expiry));
        self
    }

    /// Expires an entry once it has not been read for `tti` (moka's `time_to_idle`, Caffeine's
    /// `expireAfterAccess`). A read that finds the entry ([`get`](Cache::get),
    /// [`get_many`](Cache::get_many), a hit of [`get_or_lease`](Cache::get_or_lease) or of a
    /// load) pushes its deadline back to `tti` from then; [`peek`](Cache::peek),
    /// [`contains_key`](Cache::contains_key) and [`iter`](Cache::iter) do not. The time to live
    /// (and an [`Expiry`]) still bound the entry's whole life: reads never push its deadline past
    /// it.
    ///
    /// To keep hits from writing on every read, a read writes the new deadline only when it
    /// moves it by more than `tti / 8`: an entry last read at `t` expires between
    /// `t + tti * 7 / 8` and `t + tti`. Every entry of a cache with a time to idle has a deadline,
    /// so its hits read the clock; in a cache without one, a hit of an entry without a deadline
    /// runs the same instructions as before time to idle existed.
    ///
    /// Expiring for idleness is not a write: it fences no lease (see [`Expiry`]).
    ///
    /// ```
    /// use leasecache::{Cache, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let cache: Cache<u32, u32> = Cache::builder()
    ///     .clock(clock.clone())
    ///     .time_to_idle(Duration::from_secs(10))
    ///     .build();
    /// cache.insert(1, 1);
    /// clock.advance(Duration::from_secs(8));
    /// assert_eq!(cache.get(&1), Some(1)); // read: idle again from now
    /// clock.advance(Duration::from_secs(8));
    /// assert_eq!(cache.get(&1), Some(1));
    /// clock.advance(Duration::from_secs(10));
    /// assert_eq!(cache.get(&1), None); // 10 s without a read
    /// ```
    pub fn time_to_idle(mut self, tti: Duration) -> Self {
        self.tti = Some(tti);
        self
    }

    /// Uses `hasher` to hash keys (the default is `ahash`, randomly seeded per cache).
    ///
    /// ```
    /// use std::collections::hash_map::RandomState;
    ///
    /// let cache: leasecache::Cache<u32, u32, RandomState> =
    ///     leasecache::Cache::builder().hasher(RandomState::new()).build();
    /// cache.insert(1, 1);
    /// assert_eq!(cache.get(&1), Some(1));
    /// ```
    pub fn hasher<S2>(self, hasher: S2) -> CacheBuilder<K, V, S2> {
        CacheBuilder {
            max_capacity: self.max_capacity,
            weigher: self.weigher,
            ttl: self.ttl,
            shards: self.shards,
            lease_slots: self.lease_slots,
            clock: self.clock,
            hold_off: self.hold_off,
            refresh_after: self.refresh_after,
            listener: self.listener,
            expiry: self.expiry,
            tti: self.tti,
            stale: self.stale,
            refresh_beta: self.refresh_beta,
            hasher,
            _types: PhantomData,
        }
    }

    /// Refresh ahead of expiry: a [`get_or_load`](Cache::get_or_load) (or
    /// [`get_or_load_async`](Cache::get_or_load_async)) that finds its entry older than `after`
    /// reloads it, one caller per key at a time, under a lease taken at that moment, while
    /// every other caller keeps getting the current value at once. The refreshing caller gets
    /// the reloaded value, which replaces the entry with a fresh TTL. A purge, insert or flush
    /// during the refresh fences it (the reloaded value is stored nowhere); a loader error
    /// keeps the current value, which still expires at its deadline. The age is read from the
    /// entry's TTL deadline, so this needs a [`time_to_live`](Self::time_to_live) longer than
    /// `after`; otherwise nothing is refreshed. [`get`](Cache::get) never refreshes (it has no
    /// loader).
    ///
    /// ```
    /// use leasecache::{Cache, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let cache: Cache<u32, &str> = Cache::builder()
    ///     .time_to_live(Duration::from_secs(10))
    ///     .refresh_after(Duration::from_secs(6))
    ///     .clock(clock.clone())
    ///     .build();
    /// assert_eq!(cache.get_with(1, |_| "v1"), "v1");
    /// clock.advance(Duration::from_secs(7)); // older than 6 s: the next load refreshes
    /// assert_eq!(cache.get_with(1, |_| "v2"), "v2");
    /// clock.advance(Duration::from_secs(7)); // 14 s after the first load: the refresh's TTL
    /// assert_eq!(cache.get(&1), Some("v2"));
    /// ```
    pub fn refresh_after(mut self, after: Duration) -> Self {
        self.refresh_after = Some(after);
        self
    }

    /// Probabilistic early expiration for [`refresh_after`](Self::refresh_after) (Vattani et
    /// al., "Optimal Probabilistic Cache Stampede Prevention", VLDB 2015, *XFetch*), so that
    /// many processes reading the same key do not all refresh it at the same instant.
    ///
    /// Without it an entry is refreshed by the first load that finds it past the fixed point
    /// `refresh_after`. With it the fixed point becomes the *earliest* point: from there on,
    /// each [`get_or_load`](Cache::get_or_load) of the entry refreshes it when
    /// `now - delta * beta * ln(u) >= deadline`, with `u` drawn uniformly in (0, 1] per read,
    /// `deadline` the entry's TTL deadline and `delta` how long this cache's latest load took
    /// (by its clock). A read `t` before the deadline therefore refreshes with probability
    /// `exp(-t / (delta * beta))`: a hot key is refreshed a few load times before it expires, at
    /// a different moment in each process, and a key nobody reads is not refreshed at all.
    /// `beta` > 1 favours earlier refreshes, < 1 later ones (the paper's default is 1). Until
    /// the cache has timed a load that took any time by its clock the fixed point applies;
    /// after that, `delta` is the latest such load's duration. Has no effect without
    /// `refresh_after` (loads are still timed: one clock read each). A `beta` that is not a positive finite
    /// number is taken as 1. Default: off.
    ///
    /// ```
    /// use leasecache::Cache;
    /// use std::time::Duration;
    ///
    /// let cache: Cache<u32, String> = Cache::builder()
    ///     .time_to_live(Duration::from_secs(60))
    ///     .refresh_after(Duration::from_secs(30)) // never before 30 s...
    ///     .refresh_ahead_probabilistic(1.0) // ...then a few load times before expiry, at random
    ///     .build();
    /// assert_eq!(cache.get_with(1, |k| format!("row {k}")), "row 1");
    /// ```
    pub fn refresh_ahead_probabilistic(mut self, beta: f64) -> Self {
        self.refresh_beta = Some(if beta.is_finite() && beta > 0.0 {
            beta
        } else {
            1.0
        });
        self
    }

    /// Opt-in stale serving: keeps the value each purge removes for `grace`, for callers of
    /// [`get_or_load_allow_stale`](Cache::get_or_load_allow_stale) (and its async twin) only.
    /// While one caller reloads a purged key, such a caller gets that value at once, typed
    /// [`MaybeStale::Stale`](crate::MaybeStale::Stale), instead of waiting for the load.
    /// Precisely, a stale value is served only to an opted-in caller that misses and finds
    /// another caller loading the key (the single flight; the caller that loads never gets
    /// one), and only:
    ///
    /// - if it is the value the key's **latest** purge removed: a later purge that removes a
    ///   value replaces it; a later purge that finds the key empty, an insert or a flush ends
    ///   it (so does a write to a key sharing its lease slot: a spurious miss of the stale
    ///   value, never a wrong one);
    /// - if no value was stored for the key since that purge (a save, a load's fill, an
    ///   insert): a value saved after the purge and then evicted never lets the older one back;
    /// - while the purge is younger than `grace`, by the cache's clock
    ///   ([`MaybeStale::replaced_ago`](crate::MaybeStale::replaced_ago) says how old).
    ///
    /// No other method ever returns it: `get`, `get_or_load` and the rest behave exactly as
    /// without a grace, and nothing stale is cached. Eviction, expiry and replacement keep
    /// nothing (they are not purges: a newer value exists or the source did not change); every
    /// removal reported as [`RemovalCause::Purged`] keeps its value (`purge`, the hold-off and
    /// position purges, write intents, `retain`). Memory: a per-shard stash of at most 32
    /// values (the latest purges; the oldest makes room), dropped past the grace by the
    /// shard's next purge that removes a value or its next stale lookup (until then they stay,
    /// within the 32); every purge that removes a value copies its key and value under the
    /// shard's lock (`K::clone`, `V::clone`; with an
    /// [`eviction_listener`](Self::eviction_listener), every removal does, as without a grace).
    /// The hit path is unchanged. A zero grace turns it off. Default: off.
    ///
    /// ```
    /// use leasecache::{Cache, MaybeStale};
    /// use std::time::Duration;
    ///
    /// let cache: Cache<u32, &str> = Cache::builder().stale_grace(Duration::from_secs(1)).build();
    /// cache.insert(1, "v1");
    /// cache.purge(&1); // a writer updated the row
    /// let got = cache.get_or_load_allow_stale(1, |_| {
    ///     // While this caller reloads, opt-in callers get the purged value, marked stale...
    ///     std::thread::scope(|s| {
    ///         let other = s.spawn(|| cache.get_or_load_allow_stale(1, |_| Err(())));
    ///         let other = other.join().unwrap();
    ///         assert!(matches!(other, Ok(MaybeStale::Stale { value: "v1", .. })));
    ///     });
    ///     assert_eq!(cache.get(&1), None); // ...and nobody else does
    ///     Ok::<_, ()>("v2")
    /// });
    /// assert_eq!(got, Ok(MaybeStale::Fresh("v2"))); // ...the reloading caller gets the new one
    /// ```
    pub fn stale_grace(mut self, grace: Duration) -> Self
    where
        K: Clone,
        V: Clone,
    {
        self.stale = (!grace.is_zero()).then(|| Grace {
            nanos: u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX),
            clone: clone_entry::<K, V>,
        });
        self
    }

    /// Builds the cache (see the example on [`CacheBuilder`]).
    pub fn build(self) -> Cache<K, V, S>
    where
        K: Hash + Eq,
        S: BuildHasher,
    {
        let layout = self.layout();
        let clock = self.clock.map_or_else(Clock::system, Clock::Manual);
        let options = Options {
            ttl: self.ttl,
            weigher: self.weigher,
            hold_off: self.hold_off,
            listener: self.listener,
            expiry: self.expiry,
            tti: self.tti,
            stale: self.stale,
        };
        let mut cache = Cache::from_parts(layout, self.hasher, clock, options);
        cache.refresh = crate::refresh::Refresh::new(self.refresh_after, self.ttl)
            .probabilistic(self.refresh_beta);
        cache
    }

    fn layout(&self) -> Layout {
        // Fewer shards for small caches: every shard runs its own policy on its share of the
        // keys, and splitting a 1,000-entry cache eight ways rather than four cost 1.4 pp on the
        // hit-ratio harness's loop (Zipf columns within 0.1 pp either way).
        const MIN_ENTRIES_PER_SHARD: u64 = 128;
        let shards = match self.shards {
            Some(n) => n.clamp(1, 4096).next_power_of_two(),
            None => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                let by_cores = (cores * 4).next_power_of_two();
                let by_capacity = (self.max_capacity / MIN_ENTRIES_PER_SHARD).max(1);
                // The largest power of two not above `by_capacity`.
                let by_capacity = 1usize << (63 - by_capacity.leading_zeros()).min(12);
                by_cores.min(by_capacity)
            }
        };
        let per_shard = (self.max_capacity / shards as u64).max(1);
        // The policy's sketch and ghost are sized for the entries a shard is expected to hold. An
        // unbounded cache never evicts; a weighted one holds an unknown number of entries, so its
        // policy memory is capped rather than sized for a capacity counted in bytes.
        let expected_entries_per_shard = if self.max_capacity == u64::MAX {
            64
        } else if self.weigher.is_some() {
            usize::try_from(per_shard)
                .unwrap_or(usize::MAX)
                .min(1 << 14)
        } else {
            usize::try_from(per_shard)
                .unwrap_or(usize::MAX)
                .min(1 << 20)
        };
        let slots_per_shard = match self.lease_slots {
            Some(total) => total.div_ceil(shards),
            None => expected_entries_per_shard.div_ceil(4),
        }
        .clamp(1, 1 << 16)
        .next_power_of_two()
        .max(if self.lease_slots.is_some() { 1 } else { 64 });
        Layout {
            shards,
            capacity: self.max_capacity,
            slots_per_shard,
            expected_entries_per_shard,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_scales_with_capacity() {
        let tiny = CacheBuilder::<u8, u8>::new().max_capacity(1).layout();
        assert_eq!(tiny.shards, 1);
        let small = CacheBuilder::<u8, u8>::new().max_capacity(200).layout();
        assert!(small.shards <= 4);
        let big = CacheBuilder::<u8, u8>::new().max_capacity(1 << 30).layout();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(big.shards, (cores * 4).next_power_of_two());
        assert_eq!(big.slots_per_shard, 1 << 16);
        let custom = CacheBuilder::<u8, u8>::new()
            .shards(3)
            .lease_slots(5)
            .layout();
        assert_eq!((custom.shards, custom.slots_per_shard), (4, 2));
    }
}
