//! # leasecache
//!
//! An in-process cache that closes the cache-aside **stale-save race** with leases, and (feature
//! `redis`) the same guarantee on Redis and across processes.
//!
//! ## The race
//!
//! A reader misses, reads the database, and saves what it read. A writer updates the database,
//! then purges the key. If the reader read the old row just before the write and saves it just
//! after the purge, the cache serves the old row until the next write. Purging alone cannot
//! prevent it; under 64 concurrent readers it hit 1.7 % of read-after-write checks in production.
//!
//! ## Usage
//!
//! ```
//! use leasecache::{Cache, Lookup, Saved};
//!
//! let cache: Cache<u64, String> = Cache::new(100_000);
//! # let db_read = |id: u64| format!("row {id}");
//! // Cache-aside with a lease: capture it on the miss, *before* reading the source.
//! let row = match cache.get_or_lease(&7) {
//!     Lookup::Hit(row) => row,
//!     Lookup::Miss(lease) => {
//!         let row = db_read(7);
//!         // Stale (not cached) if a purge, insert or flush of key 7 completed since the lease
//!         // was taken: the row we read may be older than that write.
//!         match cache.save_with_lease(7, row.clone(), lease).expect("this cache's lease") {
//!             Saved::Stored | Saved::Stale => row,
//!         }
//!     }
//! };
//! assert_eq!(row, "row 7");
//!
//! // Writers update the source, then purge: this fences every outstanding lease on the key.
//! cache.purge(&7);
//!
//! // Or let the cache do it: read-through, single-flight, leased. The loader gets the key.
//! let row = cache.get_or_load(7, |id| Ok::<_, std::io::Error>(db_read(id))).unwrap();
//! assert_eq!(row, "row 7");
//! ```
//!
//! The three layers share these shapes: `get_or_lease` returns a [`Lookup`], `save_with_lease`
//! returns [`Saved::Stored`] or [`Saved::Stale`] (a stale save is never an error), every loader
//! receives the key by value, and `get` / `purge` take the key by reference. With feature
//! `redis`, the tiered cache (this cache in front of Redis) takes keys of any type that
//! implements `tiered::TieredKey` (strings, integers, your own structs, which say how they are
//! written as a Redis key), and starts while Redis is down:
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use leasecache::{Cache, redis::{RedisOptions, RedisStore}, tiered::TieredCache};
//! # async fn read_user(id: u64) -> Result<String, std::io::Error> { Ok(format!("user {id}")) }
//!
//! // Returns without contacting Redis: until Redis answers, reads are served by the loader
//! // (uncached) and writes are queued; then the cache recovers on its own.
//! let l2 = RedisStore::<String>::connect_lazy("redis://127.0.0.1/", RedisOptions::new("users"))?;
//! let cache: TieredCache<u64, String> = TieredCache::new(Cache::new(10_000), l2)?;
//! let user = cache.get_or_load(7, read_user).await?; // Redis key "7"; an L1 hit never encodes it
//! cache.purge(&7).await?; // after the database update: Redis, this L1, then every other L1
//! # let _ = user;
//! # Ok(())
//! # }
//! ```
//!
//! ## Leases
//!
//! Every key maps to a *generation*: one slot of a fixed table of 64-bit counters owned by the
//! key's shard. A [`Lease`] is a snapshot of that slot. [`Cache::purge`], [`Cache::insert`] and
//! [`Cache::flush`] move the slot to a value it has never held (from the shard's monotonic clock)
//! in the same critical section as their effect on the entry; [`Cache::save_with_lease`] compares
//! the slot with the lease in the same critical section as its store. Reading the slot is one
//! atomic load, so [`Cache::lease`] is lock-free (a write marks the slot while it changes the
//! shard, and a lease taken at that moment waits for the write to finish, so that a lease never
//! runs ahead of what a lookup sees). The table has a fixed size, so purging any number of absent
//! keys costs no memory; keys that share a slot fence each other, which can only reject a save
//! spuriously (one extra uncached read), never accept a stale one.
//!
//! ## Lock-free reads
//!
//! [`Cache::get`], [`Cache::contains_key`] and the hits of [`Cache::get_or_lease`] and
//! [`Cache::get_or_load`] take no lock and execute no locked instruction: a thread-local lookup,
//! a probe of the shard's table, and two plain stores that announce the read to writers (in a
//! per-thread record of the cache, claimed under a short lock at the thread's first read of it
//! and handed to another thread when the thread exits). Writes
//! take a per-shard lock and never change anything a read can reach: a new or replaced value goes
//! into a fresh slot, published by one atomic store (except that a value of at most one word that
//! needs no drop, such as a `u64`, in an entry without a deadline, is overwritten where it is, by
//! one machine move that a read sees whole or not at all, on x86-64), and what a write unlinks (a
//! replaced, purged
//! or evicted entry, an outgrown table) is *retired*. Retired entries are dropped in batches (up
//! to 1,024 per shard) once no read that could see them is still running, which is
//! epoch-based reclamation: each thread's announcement says which epoch its read began at, and a
//! batch waits for every thread to have begun a read after it, or to be idle. Telling an idle
//! thread from one whose announcement is still in its CPU's store buffer takes a process-wide
//! barrier (Linux `membarrier`, a few microseconds), which busy readers and exited threads make
//! unnecessary; where `membarrier` is not available, or stops working after the cache was built
//! (a seccomp filter installed since), reads issue a full fence instead.
//!
//! What this means for you:
//! - a value is **not dropped by the call that removes it** (`purge`, `insert` over it, eviction,
//!   `flush`) but a little later, by a later write to its shard, once no read can be cloning it;
//! - a thread that stalls inside a `K::eq` or `V::clone` of a read delays dropping retired
//!   entries of that cache (the cache then holds more than its capacity in retired entries); it
//!   never blocks a writer.
//!
//! The protocol is checked by loom models, including negative controls that loom must catch
//! (reads that do not announce themselves; a writer that trusts an idle-looking thread without
//! the barrier), and by a stress test whose values mark themselves dead when dropped. The
//! in-place overwrite is machine code that loom cannot model: it is checked by tests of readers
//! racing a writer (torn or out-of-order values) and by the stress, linearizability and fuzz
//! tests, whose values are such words.
//!
//! ## Consistency
//!
//! Exactly what is guaranteed, for one `Cache` instance:
//!
//! - **No stale save (I1).** If a purge, insert or flush of key K *completes* before
//!   `save_with_lease(K, _, lease)` begins, and `lease` was captured before that write began,
//!   the save is rejected, forever: slots only grow, so no later event revives the lease.
//! - **Every writer fences (I2), present or absent (I4).** `purge`, `insert`, `insert_with_ttl`
//!   and `flush` fence, whether or not the key was cached.
//! - **No ABA (I3).** A slot never returns to an earlier value: not after eviction, expiry, purge
//!   of an absent key or flush.
//! - **Bounded bookkeeping (I5).** Generation state is a fixed table sized at build time.
//! - **The hit path is a lookup (I6).** A present, unexpired value is current; `get` never reads
//!   generations and takes no lock. Expired values are never returned.
//! - **Single-flight never leaks pre-write data forward (I7).** A `get_or_load` that starts after a
//!   purge, insert or flush of its key *returned* never receives a value loaded under a lease
//!   taken before that write. Callers that joined the load before the write may receive it: their
//!   calls overlapped the write.
//! - **Leases are bound (I8)** to their key and their cache instance.
//! - Every operation on a single key is linearizable. `flush` is linearizable per key (shards are
//!   flushed one after another).
//!
//! ### When the source itself hands out old data
//!
//! A lease proves that no write *to the cache* came between the lease and the save. It cannot see
//! a source that returns data older than a write that already completed: an asynchronous replica
//! that has not replayed the commit, or a purge issued before the commit (a pre-commit hook). Three
//! opt-in floors close those races; each is kept per generation slot in fixed tables (bounded
//! memory, I5), raised only by writes, and never lowered (no ABA: a later, shorter hold-off or a
//! lower position leaves the floor where it was):
//!
//! - **Hold-off** ([`CacheBuilder::hold_off`] for every write, [`Cache::purge_with_hold_off`] per
//!   purge). A save under a lease captured before the hold-off of the last write of its key ended
//!   is refused ([`Saved::Stale`], counted in [`Stats::stale_rejected`]), even after the
//!   window, however fresh the lease. *Assumes* every read the saved value came from reflects
//!   every write committed at least the hold-off before it (a replica lag bound): a reader whose
//!   lease is younger than that read after the write. A reader inside the window misses and
//!   serves what it read, uncached. Deadlines are read on the cache's clock (injectable with
//!   [`ManualClock`]).
//! - **Source positions** ([`Cache::purge_as_of`], [`Cache::save_as_of`]). A save "as of" a
//!   position lower than the highest position its key was purged "as of" is refused, however
//!   fresh its lease; equal or higher is accepted. Exact and without waiting. *Assumes* positions
//!   are totally ordered as `u64`s across every source the readers read (one primary's WAL LSN,
//!   binlog position or operation time), and that a reader's position is read no later than its
//!   value (it claims no more than the read saw). A save that names no position is judged by its
//!   lease and hold-off alone.
//! - **Write intents** ([`Cache::begin_write`]). While an intent on a key is open, every save to
//!   it is refused; its beginning and its end ([`WriteIntent::commit`], `rollback` or drop) each
//!   fence like a purge. *Assumes* the intent ends after the source's commit (or rollback).
//!
//! The Redis tier (`RedisStore::{purge_with_hold_off, purge_as_of, save_as_of, begin_write}`,
//! `RedisOptions::{hold_off, intent_ttl}`) keeps the same floors in the key's hash beside its
//! marker, checked atomically with it; hold-offs run on the server's clock. Two differences: an
//! intent whose writer dies lapses after `intent_ttl` (leases issued while it was open stay
//! refused), and a floor lives as long as its hash (at least the maximum lease age, and until
//! its hold-off and intents end), so a position floor covers sources lagging a write by less
//! than the maximum lease age, and `flush` raises no hold-off. `TieredCache` raises the floors in
//! Redis and in its own L1; every other L1 fills only through Redis, whose floors guard it.
//!
//! Not guaranteed: that a saved value stays cached (capacity and TTL may evict it at any time, and
//! in a full cache the policy usually declines a fill for a key with no history of requests), or
//! that a save is accepted (a write to a key sharing its slot rejects it; retrying costs one read).
//! An unconditional [`Cache::insert`] is never evicted by its own insert, so a `get` right after
//! it finds the value.
//!
//! ## Capacity, eviction and TTL
//!
//! Capacity is counted in entries, or in any unit a [`CacheBuilder::weigher`] returns. Eviction
//! is S3-FIFO (a probationary FIFO whose share adapts to the workload, a main FIFO with
//! reinsertion, a ghost of recently evicted keys) with TinyLFU-style admission into the main queue, for
//! returning ghosts too: scan-resistant, frequency-aware and loop-resistant, at or ahead of the
//! better of moka and quick_cache on 17 of the 18 Zipf, scan and loop traces of the hit-ratio
//! harness and 0.02 points behind in the 18th (see `BENCHMARKS.md`). TTLs are per cache ([`CacheBuilder::time_to_live`]) or
//! per entry ([`Cache::insert_with_ttl`]); an expired entry is never returned. It is removed lazily: when its
//! key is written or purged, or when eviction reaches it in queue order (then whatever its hits).
//! Until then it counts towards capacity and [`Cache::entry_count`].
//!
//! ## Hot keys
//!
//! A purge or an expiry of a key that many callers read sends them all to the source at once.
//! In one process, `get_or_load` is single-flight. Across processes, `TieredCache::get_or_load`
//! hands the fill to one process of the fleet (`RedisStore::get_or_fill`, bounded by the lease
//! age, so a dead filler is replaced); the others wait for its value, announced on the feed,
//! and never take a value a purge voided. [`CacheBuilder::refresh_after`] (and
//! `TieredBuilder::refresh_after`; `RedisStore::refresh_lease` for direct users of the Redis
//! tier) reloads an entry ahead of its expiry, one caller at a time,
//! while every other caller keeps the current value; a write during the refresh fences it.
//! Measured with `examples/herd.rs` (4 processes x 16 tasks on one hot key, a purge every 50 ms,
//! a shared and loaded box, see `BENCHMARKS.md`): 4.6-5.9 source reads per purge with one filler
//! per process, 1.00 (never more than 1) with one per fleet; on expiry, `refresh_after` took the
//! readers' p99.9 from 22 ms (a source read) to 0.66 ms, p99 within 1.3x of the hit path's.
//! Callers that tolerate a stale value opt in with `TieredCache::get_or_load_allow_stale` (or
//! `RedisStore::get_or_fill_allow_stale`) and `RedisOptions::stale_grace`: while one caller
//! refills a purged key they get the value the purge replaced, for the grace, typed
//! `MaybeStale::Stale` so it cannot pass for a fresh one; nobody else ever sees it. In one
//! herd run (`--secs 4`, one shared and loaded 2-core box, a single run) the readers that began
//! within 10 ms of a purge had a median latency of 0.33 ms with a 1 s grace against 22.4 ms
//! without (they waited for the 20 ms source read), still 1.00 source read per purge; the p99
//! stays about one source read (the filler's own callers, and reads that come before anyone
//! holds the fill, still wait).
//!
//! The same opt-in exists in the L1 and for a plain cache: [`CacheBuilder::stale_grace`] keeps
//! the value each purge removes, and [`Cache::get_or_load_allow_stale`] (and
//! [`Cache::get_or_load_allow_stale_async`]) returns it as [`MaybeStale::Stale`] while another
//! caller reloads the key: never a value older than the one the latest purge replaced, never
//! after the grace, never once a value was stored for the key again; eviction and expiry keep
//! nothing; at most 32 values per shard; `get` and every other method never see it
//! ([`Stats::stale_served`] counts the serves). `TieredCache::get_or_load_allow_stale` asks the
//! L1 first, with no round trip. In the herd (`--secs 4`, four runs on a shared box) the readers
//! around a purge had a median of 0.1-0.2 us with the L1's grace against 0.29-0.33 ms with
//! Redis's, and the readers' overall p99 fell from a source read (22 ms) to 2.1-3.2 us; only
//! the one task per process that leads the reload waits.
//! [`CacheBuilder::refresh_ahead_probabilistic`] (and `TieredBuilder`'s) makes `refresh_after`
//! the earliest point of a probabilistic one (XFetch, Vattani et al. 2015: a read `t` before
//! expiry refreshes with probability `exp(-t / (delta * beta))`), so that processes do not
//! all refresh at once; in the herd it cut source reads from 2.0/s to 1.8/s at the same p99,
//! and with `beta = 1` sometimes refreshed too late (see `BENCHMARKS.md`, section 6).
//!
//! ## What moka, quick_cache and Caffeine users look for
//!
//! | you know | here | guarantee |
//! |---|---|---|
//! | moka `eviction_listener`, quick_cache `Lifecycle` | [`CacheBuilder::eviction_listener`], with a [`RemovalCause`] (`Size`, `Expired`, `Purged`, `Replaced`, `Flushed`) | called once per removed entry, **after the shard's lock is released, on the thread whose call removed it**, in removal order; the removal is visible when it runs |
//! | `iter` | [`Cache::iter`] | weakly consistent: each shard copied atomically under its lock when reached; **never yields an expired value** (deadline rechecked when yielded); not an access |
//! | quick_cache `retain`, moka `invalidate_entries_if` | [`Cache::retain`] | **every removal is a purge**: fences the key's leases and detaches its load (I1, I2, I7); shards one after another, each atomically |
//! | quick_cache `peek` | [`Cache::peek`] | lock-free; no policy update, no hit or miss counted, no idle time reset |
//! | Caffeine `getAll` | [`Cache::get_many`], [`Cache::get_many_or_load`] | one loader call for the missing keys, single-flight **per key** with `get_or_load` |
//! | moka `time_to_idle`, Caffeine `expireAfterAccess` | [`CacheBuilder::time_to_idle`] | a read pushes the deadline back (written only when it moves by more than `tti / 8`); never past the TTL |
//! | moka / Caffeine `Expiry` | [`CacheBuilder::expiry`] with an [`Expiry`] | TTL computed from the entry on create and update, never longer than the cache's TTL |
//!
//! Expiry, idleness and eviction are not writes: they remove a value without fencing its key's
//! leases (no write of the source happened, so a value read under an earlier lease is still as
//! fresh as any; a purge or insert made after the removal still fences it, I3 and I4).
//!
//! ## Blocking
//!
//! `get` and `contains_key` never block, except at a thread's first read of a cache: claiming its
//! record takes a lock that writers also hold while they check the records (never across a
//! `membarrier` call). `lease` blocks only while a write to a key sharing its generation slot is
//! half done (briefly, on that shard's lock). Every other method may block the calling thread
//! briefly on a shard lock. `get_or_load` also *blocks the calling thread while it waits for or
//! runs a load*; use `get_or_load_async` in async code, which never blocks on a load.
//!
//! A shard lock is released by one plain store, so that a write does not wait at its release for
//! its stores to reach memory. A thread that finds the lock held spins briefly, then sleeps; before
//! it sleeps it issues `membarrier` (the same barrier as above, a few microseconds, once per
//! sleep), which is what lets releases skip the locked instruction that would otherwise tell them
//! whether anyone sleeps. Where `membarrier` is not available each release swaps the lock's
//! state instead (one locked instruction, as other mutexes release). A thread woken from its sleep
//! competes with threads arriving; if it loses, the next release hands it the lock, so a thread
//! relocking in a loop cannot keep a sleeper out.
//!
//! Keys and values are dropped by a later write to their shard, on that writer's thread and under
//! its shard's lock: a `Drop` of a key or value must not call into the same cache, which could
//! deadlock. The same holds for a key's `Hash` and `Eq`, which writes run under the lock, and for a
//! value's `Clone` (a lookup that meets a half-done write finishes under the lock). A panic in your
//! `Hash`, `Eq`, `Drop` or weigher propagates to the caller and leaves the cache usable and
//! memory-safe: the operation may be half done (an entry not removed, a shard over capacity until
//! its next write) and some entries may be leaked, never dropped twice; a write that panics has
//! still fenced its key's leases.
//!
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | *(none)* | the in-process [`Cache`] |
//! | `redis` | `leasecache::redis::RedisStore`: the same leases on Redis, Valkey and Redis Cluster (minted generation markers, single-key Lua scripts, sub-entries, an invalidation feed); `leasecache::tiered::TieredCache`: this cache in front of a `RedisStore`, coherent across processes (`Coherence::Strict` member leases and acknowledged purges, or `Coherence::Bounded` staleness; sequenced invalidation feed, L1 bypass on feed loss, circuit breaker) |
//! | `metrics` | `Cache::report_metrics` (and `RedisStore::report_metrics`, `TieredCache::report_metrics` with `redis`): the counters and gauges through the [`metrics`](https://docs.rs/metrics) facade; see `leasecache::metrics` for every name |
//! | `tracing` | [`tracing`](https://docs.rs/tracing) events for what an operator must hear about; see *Observability* |
//!
//! ## Observability
//!
//! **Metrics** (feature `metrics`). Nothing is counted twice and the hit path calls no facade:
//! the caches keep their cheap per-thread and per-shard counters, and your application publishes
//! them on its scrape interval with `report_metrics(name)`, which sets absolute counter values and
//! gauges labelled `cache = name`. The full list of names, kinds, units and labels is in the
//! `leasecache::metrics` module docs (stale saves prevented, breaker state, feed state and pending
//! writes among them).
//!
//! **Logs** (feature `tracing`, target `leasecache`; without the feature the calls compile to
//! nothing). Events, all from the tiered cache; nothing is logged per read or per write that
//! succeeds:
//!
//! | level | event | fields |
//! |---|---|---|
//! | WARN | the circuit breaker opened (L1 flushed and bypassed, reads go to the loader) | `error` |
//! | INFO | the circuit breaker closed (the L1 is in use again) | |
//! | WARN | the invalidation feed was lost (L1 flushed and bypassed until it is confirmed) | `channel` |
//! | INFO | the invalidation feed was confirmed (at start and after each loss) | `channel` |
//! | WARN | unreadable invalidation messages arrived (L1 flushed once per burst) | |
//! | WARN | a sequenced invalidation was missing or out of order (L1 flushed) | `seq` |
//! | WARN | a Strict write gave up waiting for instances that neither acknowledged nor lapsed | `instances` |
//! | WARN | a write could not reach Redis and was queued for retry (pending, not done) | `write`, `error` |
//! | ERROR | the pending-write queue was full and collapsed into one flush of the namespace (L1 bypassed until it lands) | `write` |
//! | INFO | the pending-write queue drained: every failed write has landed | |
#![cfg_attr(docsrs, feature(doc_cfg))]

// First: the logging macros are visible in every module declared after it.
#[macro_use]
mod log;

mod builder;
mod cache;
mod clock;
mod entries;
mod error;
mod expiry;
mod floors;
mod generation;
mod iter;
mod listener;
mod load;
mod lock;
mod policy;
mod reclaim;
mod refresh;
mod saved;
mod shard;
mod slab;
mod stale;
mod stats;
mod sync;
mod table;

#[cfg(test)]
mod tests;

#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod tiered;

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use builder::CacheBuilder;
pub use cache::Cache;
pub use clock::ManualClock;
pub use error::SaveError;
pub use expiry::Expiry;
pub use floors::WriteIntent;
pub use generation::{Generation, Lease, Lookup};
pub use iter::Iter;
pub use listener::RemovalCause;
pub use saved::Saved;
pub use stale::MaybeStale;
pub use stats::Stats;
