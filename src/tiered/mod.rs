//! The tiered cache: an in-process L1 [`Cache`] in front of a [`RedisStore`], coherent across
//! processes.
//!
//! ```no_run
//! use leasecache::Cache;
//! use leasecache::redis::{RedisOptions, RedisStore};
//! use leasecache::tiered::TieredCache;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // `connect_lazy` never waits for Redis: the cache starts degraded if Redis is down (see
//! // *Redis unreachable*). `RedisStore::connect` instead fails until Redis answers.
//! let l2 = RedisStore::<String>::connect_lazy("redis://127.0.0.1/", RedisOptions::new("users"))?;
//! let cache: TieredCache<u64, String> = TieredCache::new(Cache::new(10_000), l2)?;
//!
//! let name = cache
//!     .get_or_load(7, |id| async move {
//!         Ok::<_, std::io::Error>(format!("row {id}")) // read the database
//!     })
//!     .await?;
//! assert_eq!(name, "row 7");
//!
//! // A writer updates the database, then purges: Redis first, then this L1, then (through the
//! // invalidation feed) every other process's L1.
//! cache.purge(&7).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Keys
//!
//! The L1 is keyed by `K` itself; Redis and the invalidation feed by a string. `K` implements
//! [`TieredKey`]: [`EncodeKey::write_redis_key`] writes it as its Redis key (`7u64` as `"7"`, a
//! `String` as itself), only when Redis is reached, so an L1 hit never encodes or allocates; and
//! [`TieredKey::from_redis_key`] reads one back, for the feed to purge the keys other processes
//! wrote. It is implemented for strings and integers; a struct key implements it by hand (see
//! [`TieredKey`]). Lookups and writes take any `&Q` that `K` borrows as (`get("user:7")` on
//! `String` keys), encoded the same way as `K`.
//!
//! # Read path
//!
//! An L1 hit returns at in-process speed. On an L1 miss the L1 lease is captured *before* the
//! Redis read; a Redis hit fills the L1 under that lease. On a Redis miss the reader also holds a
//! Redis lease: it reads the source, saves to Redis under the Redis lease first, and fills the L1
//! only if the Redis save landed. [`get_or_load`](TieredCache::get_or_load) is single-flight per
//! process (through the L1's [`Cache::get_or_load_async`]).
//!
//! # Cache-aside
//!
//! [`get_or_lease`](TieredCache::get_or_lease) and [`save_with_lease`](TieredCache::save_with_lease)
//! give the tiered cache the cache-aside shape of [`Cache`] and [`RedisStore`]: a hit, or a
//! miss with a [`TieredLease`] under which the caller reads the source and saves; the save
//! returns [`Saved::Stored`] or [`Saved::Stale`]. The lease pairs an L1 lease, captured before
//! Redis is read, with the Redis lease the read returns. The save goes to Redis first under the
//! Redis lease, and fills this L1 under the L1 lease only if Redis stored the value and the L1
//! was in use when the lease was captured, capped by the Redis entry's TTL: the read path of
//! [`get_or_load`](TieredCache::get_or_load), split at the source read. So a purge, insert or
//! flush of the key that completes between the two calls, in any process of the namespace,
//! makes the save `Stale` in both tiers, and no L1 serves the value it replaced. Unlike
//! `get_or_load` it is neither single-flight nor one filler per fleet: every caller that misses
//! reads the source. While the circuit breaker is open, `get_or_lease` does not try Redis and
//! returns a lease that saves nowhere ([`TieredLease::saves_nowhere`]; its save is `Stale`), so
//! cache-aside code keeps serving from the source, as `get_or_load` does.
//!
//! # Hot keys: one filler per fleet
//!
//! On a Redis miss the leader of the L1 flight asks for the key's *fill lease*
//! ([`RedisStore::get_or_fill`](crate::redis::RedisStore::get_or_fill)), which Redis hands to
//! one caller of the whole fleet at a time. Every other process that misses meanwhile waits for
//! that fill instead of reading the source: until the fill's end is announced on the
//! invalidation channel (published by the filler's save only because a waiter asked for it),
//! until an invalidation of the key arrives (a purge voided the fill), or until a backoff poll
//! (25 ms doubling to 500 ms, never past the filler's lapse). Then it reads Redis again; it never
//! takes an announced value on trust. So a purge of a hot key read by N processes costs one
//! source read, not N ([`TieredStats::fill_waits`]).
//!
//! Leases keep every guarantee: a purge during the fill fences the filler's save and ends the
//! fill, so the waiters start a fresh fill and never receive the value the purge replaced. A
//! filler that dies or stalls is replaced when its lease lapses (the store's
//! [`max_lease_age`](crate::redis::RedisOptions::max_lease_age): keep it short where fills are
//! fast, since that is how long waiters wait for a dead filler); one whose load fails gives the
//! fill up at once ([`TieredStats::fill_takeovers`]). A wait is bounded by the lease age per
//! filler. [`TieredBuilder::one_filler`]`(false)` restores one source read per process.
//!
//! **Stale grace (opt-in, never the default).** With the store's
//! [`stale_grace`](crate::redis::RedisOptions::stale_grace), a purge keeps the value it replaced
//! in Redis for the grace; [`get_or_load_allow_stale`](TieredCache::get_or_load_allow_stale)
//! returns it, as [`MaybeStale::Stale`](crate::redis::MaybeStale::Stale), on an L1 miss while
//! another caller of the fleet refills the key, instead of waiting. Every other read never
//! returns it; it is the value the key's latest purge replaced, and only while that purge is
//! younger than the grace (server clock). If the L1 was built with
//! [`CacheBuilder::stale_grace`](crate::CacheBuilder::stale_grace), its stash is asked first
//! (no round trip) while this process reloads the key after finding no value in Redis (an
//! insert reaches the L1s as an invalidation too, and the value it replaced is never served
//! while Redis holds the new one); the L1 never caches a stale value. See
//! [`redis::fill`](crate::redis::fill), *Stale grace*, and
//! [`CacheBuilder::stale_grace`](crate::CacheBuilder::stale_grace).
//!
//! # Refresh ahead of expiry
//!
//! With [`TieredBuilder::refresh_after`], a [`get_or_load`](TieredCache::get_or_load) whose
//! Redis read finds the entry past its refresh point (less than the store's default TTL minus
//! `refresh_after` left) asks for the key's fill lease over the present value. One caller of the
//! fleet gets it: after its flight has returned the current value to every other caller of this
//! process, it runs its loader, saves under the lease (restarting the Redis TTL), fills its L1
//! and returns the new value. Everybody else keeps getting the current value: an L1 entry lives
//! until its Redis entry's refresh point, and while the key is due and another caller refreshes
//! it, for an eighth of the refresh window at a time (a refresh replaces a value that is still
//! current, so no L1 has to drop it when the refresh lands). A write during the refresh fences it
//! (the refreshing caller gets what it loaded, stored nowhere: [`TieredStats::refresh_failures`]);
//! a loader error keeps the current value, which expires at its TTL if refreshes keep failing.
//!
//! Mixed versions: an instance of a version before fill announcements counts the announcement
//! (`W<key>`) as an unreadable message (see *Unreadable messages*). Upgrade every instance, or
//! build the new ones with `one_filler(false)` until then.
//!
//! # Coherence
//!
//! Writes ([`purge`](TieredCache::purge), [`insert`](TieredCache::insert),
//! [`flush`](TieredCache::flush)) go to Redis first (their fencing script publishes nothing,
//! unlike a bare [`RedisStore`]'s: see [`l2`](TieredCache::l2)), then to this L1, then
//! *sequence* the invalidation: one more script on the namespace's coherence keys advances the
//! namespace's sequence and publishes the invalidation with it on the coherence channel
//! (`leasecache:{<namespace>}:coherence`). Every `TieredCache` subscribes, on its own
//! connection, to the coherence channel and to the store's
//! [invalidation channel](RedisStore::invalidation_channel) (where bare stores' writes arrive),
//! and purges (or flushes) its L1 on each message. A purge fences the L1 leases on its key, so
//! an invalidation that overtakes the Redis reply it cancels still rejects the fill.
//!
//! **Pub/sub flavour.** The coherence scripts ask the server that runs them: on Redis 7 and
//! later they publish with `SPUBLISH` (sharded pub/sub: the channel hashes to the coherence
//! keys' slot), on older servers with `PUBLISH`. The feed asks first and subscribes to match:
//! `SSUBSCRIBE` on the master that serves the coherence slot (on a single server, the server),
//! or classic `SUBSCRIBE` on any node. Having joined, it checks the answer again (a failover to a
//! server of another version in between makes it subscribe again). On a cluster a sharded
//! message is delivered by the slot's master to its own subscribers (and replicated to its
//! replicas), never broadcast over the cluster bus, so a purge costs the same on 3 nodes or 300,
//! and a lossy or partitioned bus cannot drop an invalidation. The feed follows the slot: when
//! it migrates, or its master fails over or turns replica, Redis unsubscribes the shard
//! subscribers (`sunsubscribe`) or drops their connection, which is a feed loss (below): the
//! feed flushes its L1, looks up the slot's master again (`CLUSTER NODES`), subscribes there and
//! joins again. A slot map read while a failover settles may name the old master, now a replica,
//! which accepts `SSUBSCRIBE` too; so the feed then asks the node, on its subscribed connection,
//! for the coherence slot's key (`EXISTS`), which only the slot's master answers (a replica
//! answers `MOVED`), and otherwise looks again. While the slot migrates, its old master answers
//! `ASK` once the key has moved: a feed lost then subscribes only when the migration ends (its
//! L1 bypassed meanwhile), not where the coherence messages no longer go. An ACL user must be
//! allowed `EXISTS` on that key (`~leasecache:{<namespace>}:*`), as the coherence scripts' keys.
//!
//! An instance tracks the highest sequence up to which it applied every sequenced invalidation;
//! a gap (a message lost, say, on a cluster bus) or a sequence going backwards (a Redis restart)
//! flushes its L1 at once and is counted in [`TieredStats::sequence_gaps`].
//!
//! Every L1 read (hit or fill) first checks, against the process's coarse monotonic clock, that
//! the instance may serve its L1; a process paused past that point (SIGSTOP, a starved runtime)
//! bypasses its L1 the moment it resumes. What grants that right depends on the mode
//! ([`TieredBuilder::coherence`]):
//!
//! - **[`Coherence::Strict`]** (the default). Each instance holds a *member lease* in Redis
//!   (default 2 s, [`TieredBuilder::member_lease`]), renewed by its feed task, and only while the
//!   feed applies invalidations (a renewal carries the highest contiguous sequence applied, which
//!   is also the acknowledgement writers wait for). An instance serves its L1 until a lease
//!   minus a margin (a tenth, plus one clock tick) after it *sent* its last successful renewal.
//!   A write returns only when every other instance that was a live member has acknowledged its
//!   sequence, or has lapsed by the server's clock, waiting at most the member lease (plus
//!   100 ms); an instance that did neither in time makes the write return
//!   [`TieredError::Unacknowledged`], never silently. A member sends its acknowledgement only to
//!   the writers waiting for it, each on its own channel
//!   (`leasecache:{<namespace>}:coherence:ack:<instance id>`), so a purge costs one message per
//!   instance rather than one per pair of instances (an ACL that limits channels must allow
//!   these too: `&leasecache:{<namespace>}:coherence*`). Mixed versions during an upgrade:
//!   members of versions before these channels broadcast their acknowledgements on the
//!   coherence channel, which writers of this version still read; writers of those versions
//!   receive nothing from members of this version and find their acknowledgements with their
//!   periodic check (every 100 ms), so their writes stay correct but may take up to 100 ms longer
//!   until every instance is upgraded.
//!
//!   Guarantee: once a write returned `Ok` in one process, no instance of the namespace serves
//!   the value it replaced from its L1, as long as the machines' clocks *run at rates* within
//!   the margin of each other (their readings never need to agree). Instances that join later
//!   start with an empty L1 that they use only once they are members.
//!
//! - **[`Coherence::Bounded(d)`](Coherence::Bounded)**. Writes return after Redis and the
//!   sequencing script. Every `d / 4` the feed publishes a token on the coherence channel
//!   (through the node that sequences invalidations) and, when the token comes back through the
//!   subscription, knows that every invalidation sequenced before it was sent has been applied.
//!   An instance serves its L1 until `d` minus a margin after sending the last token that came
//!   back. Guarantee: a read that begins after a write returned gets the value it replaced only
//!   within `d` of that write's return. A stuck consumer, a dead feed task, a black-holed
//!   connection or a lost message can keep an L1 stale for at most `d`.
//!
//! In both modes the L1 is also bypassed while the feed is not *confirmed* (Redis acknowledged
//! the subscription and then answered a PING in subscribed mode, which an ACL refusal would not
//! produce; sharded, the node answered `EXISTS` of the coherence slot's key as its master) and
//! while the circuit breaker is open. Losing the feed (disconnect, a subscriber
//! Redis dropped for falling behind, an unanswered PING) flushes the L1 and bypasses it until
//! the subscription is confirmed (and, in Strict mode, the instance joined) again; an L1 lease
//! captured while the L1 was bypassed never fills it. A feed task that ends for any reason (an
//! abort, a panic, its runtime shutting down) stops the L1 at once.
//!
//! What the guarantees do **not** cover:
//!
//! - Writes made outside a `TieredCache` (a bare [`RedisStore`], `redis-cli`): their
//!   invalidations are delivered best effort, unsequenced, and nobody waits for them.
//! - Redis losing acknowledged writes. Replication is asynchronous, so a failover (or a restart
//!   without fsync) can lose what the old master acknowledged but had not yet sent to the
//!   replica that took over:
//!   - *the purge itself* (on the master of the key's slot): as if it never happened, in Redis
//!     and so in every L1, which may refill with the old value from Redis. No cache protocol can
//!     see this; a purge that must survive a failover needs `WAIT` semantics from Redis, which
//!     this crate does not use. Strict's promise is only as durable as Redis's write.
//!   - *a sequence advance, acknowledgements or membership records* (on the master of the
//!     coherence slot): harmless for the L1s. The failover drops every feed subscribed there
//!     (connection lost or `sunsubscribe`), so every instance flushes its L1 and stops serving
//!     it before it subscribes to the new master and joins again from the sequence found there,
//!     even if that went backwards. A writer waiting for acknowledgements meanwhile returns
//!     once each member has rejoined (its acknowledgement is then the sequence it starts from)
//!     or lapsed; if the sequence went back below the writer's, it cannot tell, and returns
//!     [`TieredError::Unacknowledged`] after the member lease (those members did flush). A sequence that goes backwards under a feed that did *not* lose its subscription
//!     (a restart too quick to notice) is detected as a gap once it has seen a sequence past
//!     its start. A lost membership record is found at the member's next renewal (at most a
//!     quarter lease later), which then flushes its L1 and joins again.
//! - On Redis Cluster, the coherence keys live in one slot (hash tag `{<namespace>}`), so one
//!   master sequences every write of the namespace: while it is unreachable (until its replica
//!   takes over), writes fail after Redis took them (they are queued as pending, see *Writes are
//!   never lost*) and every instance bypasses its L1. On servers older than 7, invalidations use
//!   classic pub/sub, broadcast over the cluster bus to every node; a message the bus drops is
//!   caught as a gap, or (Strict) as a member falling behind, which lapses.
//!
//! Every instance also receives the invalidations of its own writes. Such an echo fences the L1
//! leases on its key again, so a load of that key that starts in the writing process before the
//! echo arrives (typically well under a millisecond) is served but not cached in the L1: the next
//! read fills it from Redis. Safe, and cheap unless one process writes and reads a key in a loop.
//!
//! # Unreadable messages
//!
//! A message on either channel that this version cannot read may be an invalidation in a newer
//! format, so it is never ignored: it is counted ([`TieredStats::unreadable_messages`]), and the
//! L1 is bypassed until 100 ms have passed without another one. The first message of such a
//! burst also flushes the L1 ([`TieredStats::unreadable_flushes`]); the rest cost nothing, since
//! nothing fills a bypassed L1. A flood of garbage therefore costs one flush and a bypassed L1,
//! not a flush per message.
//!
//! An invalidation of a key that does not decode as the cache's key type
//! ([`TieredKey::from_redis_key`] returns `None`: another program's key under the namespace, or
//! a key type that changed) is understood, but names no key of this L1: it flushes the L1 and is
//! counted as an unreadable message, with no bypass.
//!
//! # Redis unreachable
//!
//! After `breaker_threshold` consecutive transient failures (connection, I/O and timeout errors,
//! and `CLUSTERDOWN` / `TRYAGAIN` / `MASTERDOWN` / `LOADING`: [`RedisStoreError::is_transient`])
//! the breaker opens: the L1 is flushed and bypassed (it could miss other processes' purges),
//! `get_or_load` goes straight to the loader (still single-flight), and `get` returns
//! [`TieredError::Unavailable`]. After `breaker_cooldown` one read probes Redis; its success (or
//! any write's) closes the breaker. Other server errors (`WRONGTYPE` from a foreign key under the
//! namespace, `NOPERM`, `OOM`, script errors) never open it: they are returned for that call
//! ([`RedisStoreError::Server`]), and `get_or_load` answers from the loader without caching.
//!
//! **Starting while Redis is down.** Build the cache on
//! [`RedisStore::connect_lazy`](crate::redis::RedisStore::connect_lazy), which returns without
//! contacting the server (only a URL that does not parse, or invalid options, fail it). The cache
//! starts as after an outage: the L1 bypassed, `get_or_load` and `get_with` served by the loader
//! (each read reaches the loader: nothing is cached while Redis is down), `get` failing, writes
//! queued as pending. The store reconnects in the background with backoff and the feed task
//! re-subscribes with backoff ([`reconnect_backoff`](TieredBuilder::reconnect_backoff)); once
//! Redis answers, the breaker closes on the next successful call and the L1 is used again when
//! the feed is confirmed ([`feed_confirmed`](TieredCache::feed_confirmed)), with no action from
//! the caller. [`RedisStore::connect`](crate::redis::RedisStore::connect) instead fails while
//! Redis is unreachable: use it when a service must not start without Redis.
//!
//! # Writes are never lost
//!
//! [`purge`](TieredCache::purge), [`insert`](TieredCache::insert) and
//! [`flush`](TieredCache::flush) always try Redis, even while the breaker is open (this process
//! may have opened it on a blip of its own while Redis serves every other process), and always
//! purge (flush) this process's L1 at once. A write that cannot reach Redis is queued and retried
//! in order, with backoff, until it lands, and the call returns [`TieredError::Pending`]: pending,
//! not done. Only removals are queued (a failed insert as a purge of its key), so a late retry is
//! always safe. The queue is bounded ([`TieredBuilder::pending_capacity`]); when it is full it
//! collapses into one flush of the namespace, and the L1 is bypassed until that lands. Counted in
//! [`TieredStats`] (`pending_writes`, `pending_queued`, `pending_landed`, `pending_collapsed`).
//!
//! # Bad stored data
//!
//! A value in Redis that cannot be used (undecodable, another value version, too large; see
//! the Redis tier's *Bad stored data*) is a miss for `get_or_load`: the loader runs and its value
//! replaces the bad one in Redis and fills the L1 ([`TieredStats::l2_unreadable_values`]). A load
//! whose value is too large for Redis is still returned and may fill the L1 (its L1 lease still
//! guards the fill). [`get`](TieredCache::get) reports such a value as an error.
//!
//! # Changing the value type
//!
//! Old values in Redis outlive a deployment. A new type that the codec cannot decode heals on
//! its own (each such value is a miss that the next load replaces), but postcard, the default
//! codec, is not self-describing: a struct whose fields were reordered or retyped compatibly
//! decodes *silently into wrong values*. When the value type changes, either bump
//! [`RedisOptions::value_version`](crate::redis::RedisOptions::value_version) (values of
//! another version are misses that heal), or move to a versioned namespace (`users.v2`: the old
//! keys expire with their TTL), or use a self-describing codec
//! ([`JsonCodec`](crate::redis::JsonCodec)). Values such as `Arc<T>` need serde's `rc` feature
//! to be serializable at all.
//!
//! # When a purge fails after the database committed
//!
//! The row is already written; the cache must not keep the old value. [`purge`](TieredCache::purge)
//! has done what can be done at once (this L1 is purged) and returns
//! [`TieredError::Pending`]: the purge is queued and retried until it lands (see *Writes are
//! never lost*), and other processes may serve the old value until then. Retrying the purge
//! yourself is safe too (purges are idempotent). With a bare `RedisStore` there is no queue:
//! retry, or accept staleness up to the entry's TTL.
//!
//! # Leases across a slow source
//!
//! A load that took longer than the store's maximum lease age is returned to its caller but saved
//! in neither tier.
//!
//! # Runtime
//!
//! A `TieredCache` must be built inside a tokio runtime: its feed task is spawned there, and is
//! stopped when the cache is dropped. An L1 hit completes without yielding to the runtime (it
//! never awaits): a task that reads hot keys in a loop should yield now and then
//! (`tokio::task::yield_now`), or it starves the other tasks of its worker thread.

mod aside;
mod breaker;
mod coherence;
mod feed;
mod fill;
mod floors;
mod key;

pub use aside::TieredLease;
pub use key::{EncodeKey, TieredKey};

pub use floors::TieredWriteIntent;
#[cfg(feature = "metrics")]
mod metrics;
#[cfg(feature = "metrics")]
pub(crate) use metrics::describe as describe_metrics;
mod pending;

pub use coherence::Coherence;

use crate::Cache;
use crate::redis::{RedisStore, RedisStoreError, Saved};
use crate::stats::Stats;
use crate::sync::{AtomicU8, AtomicU64, Ordering};
use breaker::{Breaker, Transition};
use fill::REFRESH_RETRY;
use serde::{Serialize, de::DeserializeOwned};
use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Bypass reason: the invalidation feed is not confirmed.
const FEED_DOWN: u8 = 1;
/// Bypass reason: the circuit breaker is open.
const BREAKER_OPEN: u8 = 2;
/// Bypass reason: the pending-write queue overflowed into a flush that has not landed yet.
const PENDING_OVERFLOW: u8 = 4;
/// Bypass reason: an unreadable message arrived on a channel less than
/// [`feed::UNREADABLE_HOLD`] ago.
const UNREADABLE: u8 = 8;

/// An L1 [`Cache`] in front of a [`RedisStore`], kept coherent across processes by an
/// invalidation feed. See the [module docs](self).
///
/// Any key type that implements [`TieredKey`] (strings, integers, your own structs): the L1 is
/// keyed by `K` itself, and the key is written as a string ([`EncodeKey`]) only when Redis is
/// reached, so an L1 hit never encodes or allocates.
///
/// Share it between tasks with an `Arc`; dropping the last handle stops its feed task.
pub struct TieredCache<K, V>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    shared: Arc<Shared<K, V>>,
    feed: tokio::task::JoinHandle<()>,
    /// The store as given, for [`l2`](Self::l2): its writes still publish on the invalidation
    /// channel, unlike those of `shared.l2`.
    store: RedisStore<V>,
}

/// The state the cache shares with its feed task.
pub(crate) struct Shared<K, V> {
    l1: Cache<K, V>,
    l2: RedisStore<V>,
    /// Why the L1 is bypassed (`FEED_DOWN | BREAKER_OPEN`), 0 when it is in use. A bit is set
    /// *before* the L1 is flushed, and a reader checks it *after* capturing its L1 lease: a reader
    /// whose lease postdates the flush therefore sees the bit (see `l1_active`).
    bypass: AtomicU8,
    breaker: Breaker,
    counters: Counters,
    #[cfg(feature = "__test-hooks")]
    hook: Option<FillHook>,
    feed_state: watch::Sender<bool>,
    max_lease_age: Duration,
    /// Writes that failed, retried until they land (see `pending.rs`).
    pending: Arc<pending::Pending>,
    coherence: coherence::Coordinator,
    /// Reads waiting for another process's fill (see `fill.rs`).
    fills: fill::Waiters,
    /// Keys Redis had no value for while this process refills them (opt-in stale reads).
    refilling: fill::Refilling,
    /// One filler per key across processes (`TieredBuilder::one_filler`).
    one_filler: bool,
    /// Refresh ahead of expiry (`TieredBuilder::refresh_after`).
    refresh_after: Option<Duration>,
    /// Probabilistic early expiration (`TieredBuilder::refresh_ahead_probabilistic`).
    xfetch: crate::refresh::Xfetch,
}

#[derive(Default)]
struct Counters {
    l2_hits: AtomicU64,
    loads: AtomicU64,
    suppressed_fills: AtomicU64,
    l2_stale: AtomicU64,
    expired_leases: AtomicU64,
    invalidations: AtomicU64,
    feed_losses: AtomicU64,
    bypassed_reads: AtomicU64,
    redis_errors: AtomicU64,
    breaker_opens: AtomicU64,
    sequence_gaps: AtomicU64,
    unacknowledged: AtomicU64,
    unreadable: AtomicU64,
    unreadable_flushes: AtomicU64,
    fill_waits: AtomicU64,
    fill_takeovers: AtomicU64,
    refreshes: AtomicU64,
    refresh_failures: AtomicU64,
    stale_served: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    // Relaxed: counters order nothing.
    counter.fetch_add(1, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Where a test hook runs: after Redis answered, before the L1 fill is attempted.
///
/// Only with the unadvertised `__test-hooks` feature: not part of the public API.
#[doc(hidden)]
#[cfg_attr(not(feature = "__test-hooks"), allow(dead_code))]
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillPoint {
    /// A read found the value in Redis.
    RedisHit,
    /// A load's Redis save returned `Stored`.
    RedisSaved,
}

/// A test hook: an async callback run between "Redis answered" and "L1 fill".
#[doc(hidden)]
#[cfg(feature = "__test-hooks")]
pub type FillHook = Arc<
    dyn Fn(FillPoint, String) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync,
>;

/// A snapshot of a [`TieredCache`]'s counters (approximate while other tasks work).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TieredStats {
    /// Reads answered by the L1.
    pub l1_hits: u64,
    /// Reads answered by Redis after an L1 miss.
    pub l2_hits: u64,
    /// Loader calls (one per single-flight group), including those made while Redis was
    /// unreachable, and the misses of [`get_or_lease`](TieredCache::get_or_lease) (each one a
    /// source read by its caller). Not the same count as `l1.loads`: the L1 counts every single-flight group
    /// it led on an L1 miss, *including the groups Redis answered* (those are also in
    /// `l2_hits`), and none of the loads made while the L1 was bypassed. To know how often the
    /// database was read, use this field.
    pub loads: u64,
    /// L1 fills rejected because a purge, invalidation, insert or flush fenced the L1 lease.
    /// Fills this cache suppressed on purpose (Redis failed, the Redis save was stale, the L1
    /// was bypassed) are not counted. This process's own writes are counted twice over when they
    /// race a fill: once by the local purge, and again when their invalidation comes back
    /// through the feed (every process, the writer included, applies every invalidation it
    /// receives; see `invalidations_received`). A busy key written by this process therefore
    /// shows rejections even without other writers: they cost one uncached read each, never a
    /// stale value.
    pub l1_stale_rejected: u64,
    /// Redis saves rejected because a write fenced the Redis lease (or the lease marker was lost).
    pub l2_stale_rejected: u64,
    /// Loads that outlived the maximum lease age and were saved in neither tier.
    pub expired_leases: u64,
    /// Invalidation messages applied from the feed, including the echoes of this process's own
    /// purges, inserts and flushes (applied again: harmless, and the feed cannot tell them apart).
    pub invalidations_received: u64,
    /// Times the feed was lost (each flushed the L1).
    pub feed_losses: u64,
    /// Reads that bypassed the L1 because the feed was not confirmed or the breaker was open.
    pub bypassed_reads: u64,
    /// Redis calls that failed.
    pub redis_errors: u64,
    /// Times the circuit breaker opened.
    pub breaker_opens: u64,
    /// Values found in Redis that could not be used (undecodable, another value version, too
    /// large) and were treated as misses ([`RedisStore::unreadable_values`]).
    pub l2_unreadable_values: u64,
    /// Writes waiting in the pending queue now (see [`TieredError::Pending`]).
    pub pending_writes: u64,
    /// Writes ever queued after failing to reach Redis.
    pub pending_queued: u64,
    /// Queued writes that landed on a retry.
    pub pending_landed: u64,
    /// Queued writes replaced by one flush of the namespace because the queue was full (not
    /// lost: the flush removes at least what they would have).
    pub pending_collapsed: u64,
    /// Sequenced invalidations found missing or out of order (each flushed the L1).
    pub sequence_gaps: u64,
    /// Writes that returned [`TieredError::Unacknowledged`].
    pub unacknowledged_writes: u64,
    /// Messages on the invalidation or coherence channel that this version cannot read,
    /// including invalidations of a key that does not decode as `K`
    /// ([`TieredKey::from_redis_key`] returned `None`).
    pub unreadable_messages: u64,
    /// L1 flushes those caused: one per burst of unreadable messages (see the
    /// [module docs](self#unreadable-messages)), and one per invalidation of an undecodable key.
    pub unreadable_flushes: u64,
    /// Reads that found another process filling the key in Redis and waited for its fill
    /// instead of reading the source (see the [module docs](self#hot-keys-one-filler-per-fleet)).
    pub fill_waits: u64,
    /// Of those, the reads that then filled the key themselves: the filler's lease lapsed (it
    /// died or stalled), it gave the fill up (its load failed), or a write voided the fill.
    pub fill_takeovers: u64,
    /// Refreshes ahead of expiry that landed in Redis ([`TieredBuilder::refresh_after`]).
    pub refreshes: u64,
    /// Refreshes whose load failed or whose save a write fenced: the entry kept its value (and
    /// its TTL), or was purged.
    pub refresh_failures: u64,
    /// Stale values served by [`get_or_load_allow_stale`](TieredCache::get_or_load_allow_stale)
    /// (from the L1's stash or from Redis); the L1's share is also in `l1.stale_served`.
    pub stale_served: u64,
    /// The L1's own counters.
    pub l1: Stats,
}

impl TieredStats {
    /// The share of lookups answered by a cache tier (the L1 or Redis) rather than the loader:
    /// `(l1_hits + l2_hits) / (l1_hits + l2_hits + loads)`, or 0 before any lookup. Callers that
    /// joined another caller's load count once, with that load.
    pub fn hit_ratio(&self) -> f64 {
        let hits = self.l1_hits + self.l2_hits;
        let total = hits + self.loads;
        if total == 0 {
            0.0
        } else {
            hits as f64 / total as f64
        }
    }
}

/// Why a [`TieredCache`] operation failed.
#[non_exhaustive]
#[derive(Debug)]
pub enum TieredError {
    /// Redis returned an error (the breaker counts connection failures).
    Redis(RedisStoreError),
    /// The circuit breaker is open: Redis was not tried. Only reads ([`TieredCache::get`]) return
    /// it; writes always try Redis.
    Unavailable,
    /// A write (purge, insert or flush) did not reach Redis: it is *pending, not done*. It was
    /// queued and is retried in the background until it lands (a failed insert as a purge of its
    /// key); this process's L1 was purged at once. Other processes keep the old value until it
    /// lands ([`TieredStats::pending_writes`]). The cause is the `source()`.
    Pending(RedisStoreError),
    /// [`TieredBuilder::build`] was called outside a tokio runtime.
    NoRuntime,
    /// [`Coherence::Strict`]: the write took effect in Redis and in this L1, but `instances`
    /// other instances neither acknowledged it nor let their member lease lapse within the
    /// member lease: until they do, they may still serve the value it replaced. The write is not
    /// undone; retry it, or treat its effect on those instances as unknown.
    Unacknowledged {
        /// How many instances did not answer in time.
        instances: usize,
    },
}

impl fmt::Display for TieredError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The cause is `source()`: printed once by whoever walks the chain.
            Self::Redis(_) => f.write_str("redis tier failed"),
            Self::Unavailable => f.write_str("redis tier unavailable: the circuit breaker is open"),
            Self::Pending(_) => f.write_str(
                "redis write failed and is pending: it is retried in the background until it lands",
            ),
            Self::NoRuntime => f.write_str("a TieredCache must be built inside a tokio runtime"),
            Self::Unacknowledged { instances } => write!(
                f,
                "written, but {instances} instance(s) neither acknowledged the invalidation nor \
                 lapsed within the member lease"
            ),
        }
    }
}

impl std::error::Error for TieredError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Redis(e) | Self::Pending(e) => Some(e),
            Self::Unavailable | Self::NoRuntime | Self::Unacknowledged { .. } => None,
        }
    }
}

/// Configures and builds a [`TieredCache`].
///
/// ```no_run
/// use std::time::Duration;
/// use leasecache::{Cache, redis::{RedisOptions, RedisStore}, tiered::{Coherence, TieredCache}};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let l2 = RedisStore::<u64>::connect("redis://127.0.0.1/", RedisOptions::new("counts")).await?;
/// let cache: TieredCache<String, u64> = TieredCache::builder(Cache::new(1_000), l2)
///     .coherence(Coherence::Strict) // the default
///     .member_lease(Duration::from_secs(2))
///     .ping_interval(Duration::from_millis(500))
///     .breaker_threshold(3)
///     .breaker_cooldown(Duration::from_secs(1))
///     .build()?;
/// # Ok(())
/// # }
/// ```
#[must_use]
pub struct TieredBuilder<K, V> {
    l1: Cache<K, V>,
    l2: RedisStore<V>,
    feed: feed::FeedConfig,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    #[cfg(feature = "__test-hooks")]
    hook: Option<FillHook>,
    #[cfg(feature = "__test-hooks")]
    classic_pubsub: bool,
    pending: pending::PendingConfig,
    coherence: Coherence,
    member_lease: Duration,
    one_filler: bool,
    refresh_after: Option<Duration>,
    refresh_beta: Option<f64>,
}

impl<K, V> TieredBuilder<K, V>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// How often the subscriber connection is PINGed to detect a silent feed (default 1 s).
    pub fn ping_interval(mut self, every: Duration) -> Self {
        self.feed.ping_interval = every;
        self
    }

    /// How long a PING may go unanswered before the feed counts as lost (default 1 s).
    pub fn ping_timeout(mut self, timeout: Duration) -> Self {
        self.feed.ping_timeout = timeout;
        self
    }

    /// Delay before the first resubscription attempt after a loss, doubled per failed attempt up
    /// to `max` (defaults 20 ms and 1 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.feed.backoff_min = min;
        self.feed.backoff_max = max.max(min);
        self
    }

    /// What a write guarantees about the other instances' L1s when it returns (default
    /// [`Coherence::Strict`]). See the [module docs](self#coherence).
    pub fn coherence(mut self, mode: Coherence) -> Self {
        self.coherence = mode;
        self
    }

    /// [`Coherence::Strict`]: the member lease (default 2 s, at least 10 ms). An instance whose
    /// feed stops applying invalidations stops serving its L1 within it (less a tenth), and a
    /// write waits at most this long (plus 100 ms) for an instance that neither acknowledges nor
    /// lapses, then returns [`TieredError::Unacknowledged`]. Every instance of a namespace should
    /// use the same lease.
    pub fn member_lease(mut self, lease: Duration) -> Self {
        self.member_lease = lease.max(Duration::from_millis(10));
        self
    }

    /// Whether a missing key is filled by one process of the fleet at a time, the others waiting
    /// for its value (default `true`; see the [module docs](self#hot-keys-one-filler-per-fleet)).
    /// `false` gives every process that misses its own Redis lease and its own source read (one
    /// per process per purge), as before issue 18: for comparisons, or for a fleet in which some
    /// instances run a version that does not understand fill announcements.
    pub fn one_filler(mut self, on: bool) -> Self {
        self.one_filler = on;
        self
    }

    /// Refresh ahead of expiry: a [`get_or_load`](TieredCache::get_or_load) that finds the key's
    /// Redis entry older than `after` (by its TTL left: less than the store's
    /// [`default_ttl`](crate::redis::RedisOptions::default_ttl) minus `after`) reloads it under
    /// a fill lease taken at that moment, one caller in the whole fleet at a time, while every
    /// other reader keeps getting the current value. The refreshing caller pays the load and
    /// gets the new value; the save restarts the entry's TTL in Redis. A write during the
    /// refresh fences it (the refreshed value is stored nowhere), and a refresh that fails
    /// leaves the current value, which still expires at its TTL. L1 entries live at most until
    /// their Redis entry is due, so that a read reaches Redis then. Default: off. An `after` at
    /// or past the default TTL never refreshes. See the [module docs](self#refresh-ahead-of-expiry).
    pub fn refresh_after(mut self, after: Duration) -> Self {
        self.refresh_after = Some(after.max(Duration::from_millis(1)));
        self
    }

    /// Probabilistic early expiration for [`refresh_after`](Self::refresh_after), as
    /// [`CacheBuilder::refresh_ahead_probabilistic`](crate::CacheBuilder::refresh_ahead_probabilistic):
    /// each fill of this process's L1 draws the point at which the entry is next read from
    /// Redis (and asks for the refresh): `delta * beta * -ln(u)` before its Redis deadline, at
    /// most `after`'s fixed point, `delta` being how long this process's latest loader call
    /// took. Each process thus draws its own refresh point; the first one reached refreshes
    /// for the fleet. The L1 absorbs the reads between draws, so there are few draws per
    /// entry: with `beta = 1` the earliest of N processes' points falls less than one load
    /// time before expiry with probability about `0.63^N`, and the key then expires before
    /// the refresh lands; a larger `beta` refreshes earlier. Default: off.
    pub fn refresh_ahead_probabilistic(mut self, beta: f64) -> Self {
        self.refresh_beta = Some(if beta.is_finite() && beta > 0.0 {
            beta
        } else {
            1.0
        });
        self
    }

    /// Consecutive connection failures that open the circuit breaker (default 3, at least 1).
    pub fn breaker_threshold(mut self, failures: u32) -> Self {
        self.breaker_threshold = failures;
        self
    }

    /// How long the open breaker skips Redis before letting a probe through (default 1 s).
    pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.breaker_cooldown = cooldown;
        self
    }

    /// How many failed writes the pending queue holds (default 10 000, at least 1) before it
    /// collapses into one flush of the namespace; see [`TieredError::Pending`].
    pub fn pending_capacity(mut self, writes: usize) -> Self {
        self.pending.capacity = writes;
        self
    }

    /// Delay before retrying a pending write after a failed attempt, doubled per failure up to
    /// `max` (defaults 50 ms and 2 s).
    pub fn pending_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.pending.backoff_min = min;
        self.pending.backoff_max = max.max(min);
        self
    }

    /// TEST HOOK, not for production: `hook` runs after a Redis read hit or a Redis save landed,
    /// before the L1 fill. Tests use it to force interleavings (an invalidation, a purge or a
    /// feed loss between the two). Only with the unadvertised `__test-hooks` feature.
    #[doc(hidden)]
    #[cfg(feature = "__test-hooks")]
    pub fn test_hook_before_l1_fill<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(FillPoint, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hook = Some(Arc::new(move |point, key| Box::pin(hook(point, key))));
        self
    }

    /// TEST HOOK, not for production: coherence messages use classic pub/sub (PUBLISH /
    /// SUBSCRIBE) even on Redis 7 and later, as on older servers, so that path is tested on a
    /// new server. Every instance of the namespace must use it. Only with the unadvertised
    /// `__test-hooks` feature.
    #[doc(hidden)]
    #[cfg(feature = "__test-hooks")]
    pub fn test_hook_classic_pubsub(mut self) -> Self {
        self.classic_pubsub = true;
        self
    }

    /// TEST HOOK, not for production: the feed's first sharded subscription goes to the node at
    /// `port` (on the host of the coherence slot's master) instead of that master, as a slot map
    /// read during a failover could send it; later ones look the master up as usual. Only with
    /// the unadvertised `__test-hooks` feature.
    #[doc(hidden)]
    #[cfg(feature = "__test-hooks")]
    pub fn test_hook_first_feed_port(mut self, port: u16) -> Self {
        self.feed.first_port = Some(port);
        self
    }

    /// Builds the cache and spawns its feed task on the current tokio runtime.
    ///
    /// The L1 is flushed first (it may hold values no feed has kept current) and is bypassed
    /// until the feed is confirmed; see [`TieredCache::feed_confirmed`].
    pub fn build(self) -> Result<TieredCache<K, V>, TieredError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| TieredError::NoRuntime)?;
        self.l1.flush();
        let urls = self.l2.node_urls().to_vec();
        let channel = self.l2.invalidation_channel().to_owned();
        let namespace = self.l2.namespace().to_owned();
        #[allow(unused_mut)] // mutated only by a test hook
        let mut coherence =
            coherence::Coordinator::new(self.coherence, self.member_lease, &namespace);
        #[cfg(feature = "__test-hooks")]
        if self.classic_pubsub {
            coherence.force_classic();
        }
        let shared = Arc::new(Shared {
            max_lease_age: self.l2.max_lease_age(),
            l1: self.l1,
            // Tiered writes sequence their own invalidations (see `cohere`): the fencing scripts
            // need not broadcast another one.
            l2: self.l2.without_broadcast(),
            bypass: AtomicU8::new(FEED_DOWN),
            breaker: Breaker::new(self.breaker_threshold, self.breaker_cooldown),
            counters: Counters::default(),
            #[cfg(feature = "__test-hooks")]
            hook: self.hook,
            feed_state: watch::Sender::new(false),
            pending: Arc::new(pending::Pending::new(self.pending)),
            coherence,
            fills: fill::Waiters::default(),
            refilling: fill::Refilling::default(),
            one_filler: self.one_filler,
            refresh_after: self.refresh_after,
            xfetch: crate::refresh::Xfetch::new(self.refresh_beta),
        });
        // The retry task holds the cache weakly: it ends once the cache is dropped.
        runtime.spawn(pending::run(
            Arc::downgrade(&shared),
            Arc::clone(&shared.pending),
        ));
        let feed = runtime.spawn(feed::run(Arc::clone(&shared), urls, channel, self.feed));
        Ok(TieredCache {
            shared,
            feed,
            store: self.l2,
        })
    }
}

impl<K, V> TieredCache<K, V>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// `l1` in front of `l2`, with default feed and breaker settings. Must be called inside a
    /// tokio runtime.
    pub fn new(l1: Cache<K, V>, l2: RedisStore<V>) -> Result<Self, TieredError> {
        Self::builder(l1, l2).build()
    }

    /// A builder for the feed's timing, the circuit breaker and the pending-write queue.
    pub fn builder(l1: Cache<K, V>, l2: RedisStore<V>) -> TieredBuilder<K, V> {
        TieredBuilder {
            l1,
            l2,
            feed: feed::FeedConfig {
                ping_interval: Duration::from_secs(1),
                ping_timeout: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(2),
                backoff_min: Duration::from_millis(20),
                backoff_max: Duration::from_secs(1),
                #[cfg(feature = "__test-hooks")]
                first_port: None,
            },
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(1),
            #[cfg(feature = "__test-hooks")]
            hook: None,
            #[cfg(feature = "__test-hooks")]
            classic_pubsub: false,
            pending: pending::PendingConfig {
                capacity: 10_000,
                backoff_min: Duration::from_millis(50),
                backoff_max: Duration::from_secs(2),
            },
            coherence: Coherence::Strict,
            member_lease: Duration::from_secs(2),
            one_filler: true,
            refresh_after: None,
            refresh_beta: None,
        }
    }

    /// The value of `key` from the L1 or, on an L1 miss, from Redis (filling the L1 under a lease
    /// captured before the Redis read). `Ok(None)` if neither tier has it. Does not load.
    ///
    /// Takes any `&Q` that `K` borrows as (`get("user:7")` on `String` keys); the key filled in
    /// the L1 is decoded from the Redis key ([`TieredKey::from_redis_key`]).
    ///
    /// Errors: [`TieredError::Unavailable`] while the breaker is open, [`TieredError::Redis`] if
    /// the Redis read failed.
    pub async fn get<Q>(&self, key: &Q) -> Result<Option<V>, TieredError>
    where
        K: Borrow<Q>,
        Q: EncodeKey + Hash + Eq + ?Sized,
    {
        let s = &*self.shared;
        if s.l1_active() {
            if let Some(value) = s.l1.get(key) {
                return Ok(Some(value));
            }
        }
        // The lease first, then the bypass check, then the Redis read (see `l1_active`).
        let lease = s.l1.lease(key);
        let fill = s.l1_active();
        if !fill {
            bump(&s.counters.bypassed_reads);
        }
        if !s.breaker.permit() {
            return Err(TieredError::Unavailable);
        }
        let redis_key = key.to_redis_key();
        match s.l2.get_ttl(&redis_key).await {
            Ok(Some((value, ttl))) => {
                s.redis_ok();
                bump(&s.counters.l2_hits);
                // A key that does not decode (a broken `TieredKey`) is served, never cached.
                if let (true, Some(key)) = (fill, K::from_redis_key(&redis_key)) {
                    s.run_hook(FillPoint::RedisHit, &key).await;
                    // A rejection means a write fenced the lease meanwhile: the value is still the
                    // answer to this read, but must not be cached. The L1 entry dies no later
                    // than the Redis entry.
                    let _ = s.l1.save_with_lease_within(key, value.clone(), lease, ttl);
                }
                Ok(Some(value))
            }
            Ok(None) => {
                s.redis_ok();
                Ok(None)
            }
            Err(e) => Err(s.redis_failed(e)),
        }
    }

    /// The value of `key` from the L1, else from Redis, else from `loader` (saved to Redis under a
    /// Redis lease, then to the L1 under an L1 lease if the Redis save landed).
    ///
    /// Single-flight per process: concurrent callers for the same key wait for one load. A purge
    /// of the key (local, or delivered by the feed) detaches the load: callers that arrive after
    /// it start a fresh one. Redis failures never fail this call: the value then comes from the
    /// loader and is not cached. Only the loader's error is returned.
    pub async fn get_or_load<F, Fut, E>(&self, key: K, loader: F) -> Result<V, E>
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let s = &*self.shared;
        // A refresh this call must run after its flight, if its read triggered one.
        let due = fill::RefreshSlot::new();
        let refresh_key = s.refresh_after.map(|_| key.clone());
        let value = if !s.l1_active() {
            // Not even a hit may be served: the L1 could hold what an unapplied invalidation
            // replaced. `load_through` sees the bypass too and fills nothing.
            s.load_through(key, loader, &due)
                .await
                .map(|(value, _)| value)?
        } else {
            s.l1.get_or_load_async_within(key, |key| s.load_through(key, loader, &due))
                .await?
        };
        match (due.take(), refresh_key) {
            (Some((loader, lease)), Some(key)) => Ok(s.refresh(key, loader, lease, value).await),
            _ => Ok(value),
        }
    }

    /// [`get_or_load`](Self::get_or_load) with a loader that cannot fail (moka's `get_with`
    /// beside `try_get_with`): the value of `key` from the L1, else from Redis, else from
    /// `loader`, saved to both tiers under leases as `get_or_load` does. Single-flight per
    /// process. Redis failures never fail it (the value then comes from the loader and is not
    /// cached), so it also serves while Redis is down.
    pub async fn get_with<F, Fut>(&self, key: K, loader: F) -> V
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = V>,
    {
        let loaded = self
            .get_or_load(key, |k| async move {
                Ok::<V, std::convert::Infallible>(loader(k).await)
            })
            .await;
        match loaded {
            Ok(value) => value,
            Err(never) => match never {},
        }
    }

    /// Stores `value` in Redis unconditionally (fencing every Redis lease on `key` and publishing
    /// an invalidation), then purges `key` from this L1; the next read fills the L1 from Redis.
    ///
    /// Tries Redis even while the breaker is open. If Redis cannot be reached the L1 is purged
    /// anyway and the call returns [`TieredError::Pending`]: a *purge* of the key is queued and
    /// retried until it lands (the value itself is not retried: it could land after a later
    /// write). If the value cannot be stored for another reason (too large, not encodable, a
    /// server error reply such as `OOM`), the key is purged from Redis instead, so that the value
    /// it replaced does not survive, and that error is returned.
    pub async fn insert<Q>(&self, key: &Q, value: &V) -> Result<(), TieredError>
    where
        K: Borrow<Q>,
        Q: EncodeKey + Hash + Eq + ?Sized,
    {
        self.insert_ttl(key, value, None).await
    }

    /// [`insert`](Self::insert) with its own TTL in Redis (1 ms to 10 years) instead of the
    /// store's default. The L1 entry never outlives the Redis entry: the insert purges the key
    /// from this L1, and the read that fills it again takes the Redis entry's remaining TTL as
    /// the L1 entry's deadline (or the L1's own TTL if that is shorter).
    ///
    /// An invalid TTL is refused before anything is sent, and changes nothing in either tier
    /// ([`TieredError::Redis`] of [`RedisStoreError::InvalidInput`]). Otherwise as `insert`.
    pub async fn insert_with_ttl<Q>(
        &self,
        key: &Q,
        value: &V,
        ttl: Duration,
    ) -> Result<(), TieredError>
    where
        K: Borrow<Q>,
        Q: EncodeKey + Hash + Eq + ?Sized,
    {
        self.insert_ttl(key, value, Some(ttl)).await
    }

    async fn insert_ttl<Q>(
        &self,
        l1_key: &Q,
        value: &V,
        ttl: Option<Duration>,
    ) -> Result<(), TieredError>
    where
        K: Borrow<Q>,
        Q: EncodeKey + Hash + Eq + ?Sized,
    {
        let s = &*self.shared;
        let redis_key = l1_key.to_redis_key();
        let key: &str = &redis_key;
        let result = match ttl {
            None => s.l2.insert(key, value).await,
            Some(ttl) => match s.l2.insert_with_ttl(key, value, ttl).await {
                Err(e @ RedisStoreError::InvalidInput(_)) => return Err(TieredError::Redis(e)),
                other => other,
            },
        };
        s.l1.purge(l1_key);
        let error = match result {
            Ok(()) => {
                s.redis_ok();
                return s
                    .cohere(&crate::redis::Invalidation::key_payload(key))
                    .await;
            }
            Err(e) if e.is_transient() => {
                return Err(s.write_failed(e, pending::Op::Purge(key.to_owned())));
            }
            Err(e) => e,
        };
        // Purges free memory only: they run where the insert could not (OOM).
        let purged = s.l2.purge(key).await;
        s.l1.purge(l1_key);
        match purged {
            Ok(_) => Err(s.redis_failed(error)),
            Err(e) => Err(s.write_failed(e, pending::Op::Purge(key.to_owned()))),
        }
    }

    /// Purges `key` from Redis (fencing its Redis leases and publishing an invalidation), then
    /// from this L1. Other processes' L1s purge it when the invalidation reaches their feed.
    ///
    /// Returns whether Redis held a value. Tries Redis even while the breaker is open (a purge
    /// is idempotent). The local L1 is purged in every case. If Redis cannot be reached the
    /// purge is queued and retried until it lands, and the call returns
    /// [`TieredError::Pending`]: pending, not done (other processes keep the old value until it
    /// lands).
    pub async fn purge<Q>(&self, key: &Q) -> Result<bool, TieredError>
    where
        K: Borrow<Q>,
        Q: EncodeKey + Hash + Eq + ?Sized,
    {
        let redis_key = key.to_redis_key();
        self.write_key(&redis_key, self.shared.l2.purge(&redis_key), |s| {
            s.l1.purge(key);
        })
        .await
    }

    /// The write path of every removal of one key (`key` is its Redis key): runs `l2` whatever
    /// the breaker says, then `l1`
    /// whatever happened; on success the write is made coherent across the fleet (see
    /// [`Coherence`]); if Redis cannot be reached a plain purge of `key` is queued and retried
    /// until it lands ([`TieredError::Pending`]; floors meant for Redis are then not raised there).
    async fn write_key<T>(
        &self,
        key: &str,
        l2: impl Future<Output = Result<T, RedisStoreError>>,
        l1: impl FnOnce(&Shared<K, V>),
    ) -> Result<T, TieredError> {
        let s = &*self.shared;
        let result = l2.await;
        l1(s);
        match result {
            Ok(t) => {
                s.redis_ok();
                s.cohere(&crate::redis::Invalidation::key_payload(key))
                    .await?;
                Ok(t)
            }
            Err(e) => Err(s.write_failed(e, pending::Op::Purge(key.to_owned()))),
        }
    }

    /// Flushes the namespace in Redis (publishing a flush), then this L1. Tries Redis even while
    /// the breaker is open; if Redis cannot be reached (including the final publish), the L1 is
    /// flushed anyway and the flush is queued and retried until it lands
    /// ([`TieredError::Pending`]).
    pub async fn flush(&self) -> Result<(), TieredError> {
        let s = &*self.shared;
        let result = s.l2.flush().await;
        s.l1.flush();
        match result {
            Ok(()) => {
                s.redis_ok();
                s.cohere(b"F").await
            }
            Err(e) => Err(s.write_failed(e, pending::Op::Flush)),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TieredStats {
        let s = &*self.shared;
        let c = &s.counters;
        let l1 = s.l1.stats();
        TieredStats {
            l1_hits: l1.hits,
            l2_hits: read(&c.l2_hits),
            loads: read(&c.loads),
            // Fills this cache suppressed on purpose (by purging the key) are not rejections.
            l1_stale_rejected: l1.stale_rejected.saturating_sub(read(&c.suppressed_fills)),
            l2_stale_rejected: read(&c.l2_stale),
            expired_leases: read(&c.expired_leases),
            // Acquire pairs with the Release increment in `apply_invalidation`.
            invalidations_received: c.invalidations.load(Ordering::Acquire),
            feed_losses: read(&c.feed_losses),
            bypassed_reads: read(&c.bypassed_reads),
            redis_errors: read(&c.redis_errors),
            breaker_opens: read(&c.breaker_opens),
            l2_unreadable_values: s.l2.unreadable_values(),
            pending_writes: u64::try_from(s.pending.len()).unwrap_or(u64::MAX),
            pending_queued: s.pending.counts().0,
            pending_landed: s.pending.counts().1,
            pending_collapsed: s.pending.counts().2,
            sequence_gaps: read(&c.sequence_gaps),
            unacknowledged_writes: read(&c.unacknowledged),
            unreadable_messages: read(&c.unreadable),
            unreadable_flushes: read(&c.unreadable_flushes),
            fill_waits: read(&c.fill_waits),
            fill_takeovers: read(&c.fill_takeovers),
            refreshes: read(&c.refreshes),
            refresh_failures: read(&c.refresh_failures),
            stale_served: read(&c.stale_served),
            l1,
        }
    }

    /// Whether the L1 is in use now: the feed is confirmed and the breaker is closed.
    pub fn is_l1_active(&self) -> bool {
        self.shared.l1_active()
    }

    /// Waits until the invalidation feed is confirmed (Redis acknowledged the subscription).
    /// Returns at once if it is. Wrap it in a timeout: it waits for as long as Redis is down.
    pub async fn feed_confirmed(&self) {
        let mut state = self.shared.feed_state.subscribe();
        // The sender lives in `shared`, which `self` keeps alive, so this cannot fail.
        let _ = state.wait_for(|confirmed| *confirmed).await;
    }

    /// The L1, for inspection. Writing to it directly bypasses Redis and the other processes.
    pub fn l1(&self) -> &Cache<K, V> {
        &self.shared.l1
    }

    /// The Redis tier. Writes made through it directly are a bare store's (see the [module
    /// docs](self#coherence)): delivered to the L1s best effort, unsequenced, waited for by
    /// nobody.
    pub fn l2(&self) -> &RedisStore<V> {
        &self.store
    }
}

impl<K, V> Drop for TieredCache<K, V>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn drop(&mut self) {
        self.feed.abort();
        if self.shared.coherence.mode == Coherence::Strict {
            // Best effort, so that writers stop waiting for this instance at once. The feed task
            // stops the L1 when it ends; a leave that never runs costs writers one member lease.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let shared = Arc::clone(&self.shared);
                runtime.spawn(async move {
                    shared.coherence.stop_serving();
                    let _ = shared.coherence.leave(&shared.l2).await;
                });
            }
        }
    }
}

impl<K, V> fmt::Debug for TieredCache<K, V>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCache")
            .field("l1", &self.shared.l1)
            .field("l1_active", &self.is_l1_active())
            .finish_non_exhaustive()
    }
}

impl<K, V> Shared<K, V>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Whether the L1 may be read and filled. Call it *after* capturing the L1 lease a fill will
    /// use: a bypass bit is set before the L1 flush that fences older leases, and the flush's
    /// Release stores of the generation slots pair with the lease's Acquire load, so a lease that
    /// postdates the flush comes with a view of the bit.
    fn l1_active(&self) -> bool {
        // Acquire pairs with the Release read-modify-writes in `set_bypass` / `clear_bypass`.
        self.bypass.load(Ordering::Acquire) == 0 && self.coherence.serving()
    }

    /// Sets a bypass reason, then flushes the L1 (in that order; see `l1_active`).
    fn set_bypass(&self, reason: u8) {
        // Release pairs with the Acquire load in `l1_active`.
        self.bypass.fetch_or(reason, Ordering::Release);
        self.l1.flush();
    }

    fn clear_bypass(&self, reason: u8) {
        // Release pairs with the Acquire load in `l1_active`.
        self.bypass.fetch_and(!reason, Ordering::Release);
    }

    pub(crate) fn feed_confirmed(&self) {
        self.clear_bypass(FEED_DOWN);
        self.feed_state.send_replace(true);
        log_info!(
            channel = self.l2.invalidation_channel(),
            "invalidation feed confirmed: the L1 is in use again"
        );
    }

    pub(crate) fn feed_lost(&self) {
        self.coherence.stop_serving();
        self.set_bypass(FEED_DOWN);
        // The flush above covers whatever an unreadable message may have meant.
        self.clear_bypass(UNREADABLE);
        bump(&self.counters.feed_losses);
        self.feed_state.send_replace(false);
        log_warn!(
            channel = self.l2.invalidation_channel(),
            "invalidation feed lost: L1 flushed and bypassed until the feed is confirmed again"
        );
    }

    /// The feed task ended (aborted, panicked, its runtime shut down): the L1 is never served again.
    pub(crate) fn feed_dead(&self) {
        self.coherence.stop_serving();
        self.set_bypass(FEED_DOWN);
        self.feed_state.send_replace(false);
    }

    /// Applies one message from the invalidation channel. Counted after it took effect, so a
    /// reader that sees the count knows the L1 no longer holds what the message invalidated.
    /// Returns `false` (and applies nothing) if the message is unreadable: the caller must then
    /// call [`unreadable`](Self::unreadable).
    pub(crate) fn apply_invalidation(&self, payload: &[u8]) -> bool {
        match crate::redis::Invalidation::parse(payload) {
            Some(crate::redis::Invalidation::Key(key)) => {
                self.purge_l1_redis_key(&key);
                // A fill this process waits for may have been voided: read again.
                self.fills.wake(&key);
            }
            Some(_) => {
                self.l1.flush();
                self.fills.wake_all();
            }
            None => return false,
        }
        // Release pairs with the Acquire load in `stats`.
        self.counters.invalidations.fetch_add(1, Ordering::Release);
        true
    }

    /// Applies a message of the invalidation channel if it announces the end of a fill (waking
    /// this process's waiters of the key); returns `false` for any other message.
    pub(crate) fn apply_fill_announcement(&self, payload: &[u8]) -> bool {
        match crate::redis::fill_announced_key(payload) {
            Some(key) => {
                self.fills.wake(key);
                true
            }
            None => false,
        }
    }

    /// Purges the key whose Redis key is `key` from the L1, or flushes the L1 if `key` does not
    /// decode as a `K` (another program's key under the namespace, another key type): counted as
    /// an unreadable message, and as one of the flushes those caused.
    pub(crate) fn purge_l1_redis_key(&self, key: &str) {
        match K::from_redis_key(key) {
            Some(key) => {
                self.l1.purge(&key);
            }
            None => {
                bump(&self.counters.unreadable);
                bump(&self.counters.unreadable_flushes);
                self.l1.flush();
            }
        }
    }

    /// An unreadable message arrived: it may be an invalidation in a format this version does not
    /// know, so the L1 must not serve anything it could have invalidated. The first one of a burst
    /// bypasses and flushes the L1; later ones (until the feed calls
    /// [`readable_again`](Self::readable_again)) find it bypassed already and cost nothing: no
    /// fill lands while it is bypassed, so there is nothing more to flush.
    pub(crate) fn unreadable(&self) {
        bump(&self.counters.unreadable);
        // Acquire pairs with the Release read-modify-writes in `set_bypass` / `clear_bypass`.
        if self.bypass.load(Ordering::Acquire) & UNREADABLE == 0 {
            bump(&self.counters.unreadable_flushes);
            self.set_bypass(UNREADABLE);
            log_warn!("unreadable invalidation messages: L1 flushed and bypassed for the burst");
        }
    }

    /// No unreadable message for a while: the L1 may be used again.
    pub(crate) fn readable_again(&self) {
        self.clear_bypass(UNREADABLE);
    }

    fn redis_ok(&self) {
        if self.breaker.success(|| self.clear_bypass(BREAKER_OPEN)) == Transition::Closed {
            log_info!("redis circuit breaker closed: the L1 is in use again");
        }
    }

    fn redis_failed(&self, error: RedisStoreError) -> TieredError {
        bump(&self.counters.redis_errors);
        if error.is_transient() {
            let opened = self.breaker.failure(|| self.set_bypass(BREAKER_OPEN));
            if opened == Transition::Opened {
                bump(&self.counters.breaker_opens);
                log_warn!(
                    error = %error,
                    "redis circuit breaker opened: L1 flushed and bypassed, reads go to the loader"
                );
            }
        }
        TieredError::Redis(error)
    }

    /// A write failed: a transient failure queues `retry` and says the write is pending; any
    /// other error (a server error reply, bad input) is the caller's to handle.
    fn write_failed(&self, error: RedisStoreError, retry: pending::Op) -> TieredError {
        if !error.is_transient() {
            return self.redis_failed(error);
        }
        // Release of the bypass bit happens inside `set_bypass`, under the queue's lock.
        #[cfg(feature = "tracing")]
        let what = retry.clone();
        match self
            .pending
            .push(retry, || self.set_bypass(PENDING_OVERFLOW))
        {
            pending::Pushed::Collapsed => log_error!(
                write = ?what,
                "pending-write queue full: collapsed into one flush of the namespace, L1 bypassed until it lands"
            ),
            pending::Pushed::Queued => log_warn!(
                write = ?what,
                error = %error,
                "redis write failed: queued and retried until it lands"
            ),
        }
        match self.redis_failed(error) {
            TieredError::Redis(e) => TieredError::Pending(e),
            other => other,
        }
    }

    /// The pending queue drained: the L1 may be used again (if nothing else bypasses it).
    pub(crate) fn pending_drained(&self) {
        self.clear_bypass(PENDING_OVERFLOW);
    }

    /// A pending write landed on a retry: Redis is reachable.
    pub(crate) fn pending_landed(&self) {
        self.redis_ok();
    }

    /// A retry of a pending write failed.
    pub(crate) fn pending_retry_failed(&self, error: RedisStoreError) {
        let _ = self.redis_failed(error);
    }

    #[cfg(feature = "__test-hooks")]
    async fn run_hook(&self, point: FillPoint, key: &K) {
        if let Some(hook) = &self.hook {
            hook(point, key.to_redis_key().into_owned()).await;
        }
    }

    /// Without the `__test-hooks` feature there is no hook: nothing to run.
    #[cfg(not(feature = "__test-hooks"))]
    async fn run_hook(&self, _point: FillPoint, _key: &K) {}

    async fn call_loader<F, Fut, E>(&self, key: K, loader: F) -> Result<V, E>
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        bump(&self.counters.loads);
        if !self.xfetch.is_on() {
            return loader(key).await;
        }
        let started = std::time::Instant::now();
        let result = loader(key).await;
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.xfetch.observe(took);
        result
    }

    /// The load behind an L1 flight. Runs after the flight captured its L1 lease; returns the
    /// value the flight's leader saves in the L1 under that lease, after purging the key (which
    /// fences the lease) when the value must not reach the L1: the L1 is bypassed, Redis failed,
    /// the Redis save was stale or the lease expired. The L1 offers no other way to stop a
    /// leader's fill; the purge may also drop a newer fill of the same key, which is safe and
    /// costs one Redis read, on paths that are rare while Redis and the feed are healthy.
    ///
    /// Also returns how long the L1 entry may live at most: the Redis entry's remaining TTL.
    async fn load_through<F, Fut, E>(
        &self,
        key: K,
        loader: F,
        due: &fill::RefreshSlot<F>,
    ) -> Result<(V, Option<Duration>), E>
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let mut fill = self.l1_active();
        if !fill {
            bump(&self.counters.bypassed_reads);
        }
        let mut ttl = None;
        let redis_key = key.to_redis_key();
        let value = if !self.breaker.permit() {
            fill = false;
            self.call_loader(key.clone(), loader).await?
        } else {
            match fill::lookup(self, &redis_key).await {
                Ok(fill::Found::Hit(value, remaining)) => {
                    self.redis_ok();
                    bump(&self.counters.l2_hits);
                    self.run_hook(FillPoint::RedisHit, &key).await;
                    ttl = remaining;
                    match self.refresh_due_in(remaining) {
                        // Due: the caller that gets the refresh lease reloads after its flight
                        // (and fills the L1 then). Everybody else keeps the current value, in
                        // the L1 too but briefly, so that a read asks again soon if the refresh
                        // fails. (A refresh replaces a value that is still current: no L1 must
                        // drop it when it lands.)
                        Some(Duration::ZERO) => {
                            let window = self.refresh_window();
                            match self.l2.refresh_lease(&redis_key, window).await {
                                Ok(Some(lease)) => {
                                    fill = false;
                                    due.put(loader, lease);
                                }
                                _ => ttl = ttl.map(|left| left.min(window / REFRESH_RETRY)),
                            }
                        }
                        Some(in_) => ttl = Some(in_),
                        None => {}
                    }
                    value
                }
                Ok(fill::Found::Fill(lease, asked)) => {
                    self.redis_ok();
                    // Redis has no value: opt-in readers may get the L1 stash's (`Refilling`).
                    let _missing = self
                        .l1
                        .has_stale_grace()
                        .then(|| self.refilling.mark(&redis_key));
                    let value = match self.call_loader(key.clone(), loader).await {
                        Ok(value) => value,
                        Err(e) => {
                            // Let a waiting process take the fill over now, not at the lapse.
                            let _ = self.l2.release_fill(&redis_key, &lease).await;
                            return Err(e);
                        }
                    };
                    if asked.elapsed() > self.max_lease_age {
                        bump(&self.counters.expired_leases);
                        fill = false;
                    } else {
                        match self.l2.save_with_lease(&redis_key, &value, &lease).await {
                            Ok(Saved::Stored) => {
                                self.redis_ok();
                                self.run_hook(FillPoint::RedisSaved, &key).await;
                                ttl = Some(self.l2.default_ttl());
                                if let Some(in_) = self.refresh_due_in(ttl) {
                                    ttl = Some(in_);
                                }
                            }
                            Ok(Saved::Stale) => {
                                bump(&self.counters.l2_stale);
                                fill = false;
                            }
                            // Refused before anything was sent: Redis is fine and the L1 lease
                            // still guards the fill, so the value may be cached here.
                            Err(RedisStoreError::TooLarge { .. }) => {}
                            Err(e) => {
                                self.redis_failed(e);
                                fill = false;
                            }
                        }
                    }
                    value
                }
                Err(e) => {
                    self.redis_failed(e);
                    fill = false;
                    self.call_loader(key.clone(), loader).await?
                }
            }
        };
        if !fill {
            bump(&self.counters.suppressed_fills);
            self.l1.purge(&key);
        }
        Ok((value, ttl))
    }
}

#[cfg(test)]
mod stats_tests {
    use super::TieredStats;

    #[test]
    fn hit_ratio_counts_both_tiers_against_loads() {
        assert_eq!(TieredStats::default().hit_ratio(), 0.0);
        let stats = TieredStats {
            l1_hits: 6,
            l2_hits: 2,
            loads: 2,
            ..TieredStats::default()
        };
        assert!((stats.hit_ratio() - 0.8).abs() < 1e-12);
    }
}
