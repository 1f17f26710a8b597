//! `Cache<K, V, S>`: shard routing, the generation table, and the public operations.

use crate::clock::Clock;
use crate::error::SaveError;
use crate::expiry::Expiry;
use crate::floors::{HoldOffs, LockedFloors, Raise};
use crate::generation::{Generation, GenerationClock, Lease, Lookup};
use crate::listener::{CloneEntry, Listener, RemovalCause, Removals, Removed};
use crate::load::FlightTable;
use crate::reclaim::Readers;
use crate::saved::Saved;
use crate::shard::{Admit, Shard, Shared, Writer};
use crate::stale::{Grace, Stash};
use crate::stats::{Counters, Stats, WriteCounts};
use crate::sync::{AtomicBool, AtomicU64, Ordering, ShardGuard, ShardMutex, shard_mutex};
use crossbeam_utils::CachePadded;
use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc as StdArc;
use std::time::Duration;

pub(crate) type Weigher<K, V> = StdArc<dyn Fn(&K, &V) -> u32 + Send + Sync + 'static>;

/// A bounded, concurrent, leased cache. See the [crate docs](crate) for a tour.
///
/// `Cache` is `Send + Sync`; share it between threads with an `Arc`. Every method takes `&self`.
/// Lookups hand out clones of values from other threads' inserts, so keys and values must be
/// `Send + Sync` for the cache to be shared:
///
/// ```compile_fail
/// fn shared<T: Sync>(_: &T) {}
/// let cache: leasecache::Cache<u64, std::cell::Cell<u64>> = leasecache::Cache::new(10);
/// shared(&cache); // error: `Cell<u64>` cannot be shared between threads safely
/// ```
///
/// ```
/// use leasecache::{Cache, Lookup};
///
/// let cache: Cache<String, String> = Cache::new(10_000);
/// let key = "user:7".to_string();
/// let value = match cache.get_or_lease(&key) {
///     Lookup::Hit(v) => v,
///     Lookup::Miss(lease) => {
///         let row = "Ada".to_string(); // read the database *after* taking the lease
///         // A purge that completed meanwhile rejects this save: the row may be old.
///         let _ = cache.save_with_lease(key.clone(), row.clone(), lease);
///         row
///     }
/// };
/// assert_eq!(value, "Ada");
/// ```
pub struct Cache<K, V, S = ahash::RandomState> {
    pub(crate) shards: Box<[CachePadded<ShardCell<K, V>>]>,
    slot_mask: usize,
    hasher: S,
    id: u64,
    clock: Clock,
    ttl: Option<Duration>,
    weigher: Option<Weigher<K, V>>,
    /// Per-thread read announcements and hit/miss counters.
    pub(crate) readers: Readers,
    /// Whether any entry may carry a deadline. Until one does, writes skip reading the clock.
    ttl_in_use: AtomicBool,
    /// The hold-off every write applies (`CacheBuilder::hold_off`).
    hold_off: Option<Duration>,
    /// Whether any write has raised a hold-off. Until one has, leases skip reading deadlines.
    hold_offs_in_use: AtomicBool,
    /// Refresh ahead of expiry (`CacheBuilder::refresh_after`, see `crate::refresh`).
    pub(crate) refresh: crate::refresh::Refresh,
    /// The removal listener (`CacheBuilder::removal_listener`).
    pub(crate) listener: Option<Listener<K, V>>,
    /// The per-entry expiry policy (`CacheBuilder::expiry`).
    expiry: Option<StdArc<dyn Expiry<K, V>>>,
    /// The time to idle in nanoseconds, `0` for none (`CacheBuilder::time_to_idle`).
    tti: u64,
    /// The stale grace (`CacheBuilder::stale_grace`, see `crate::stale`).
    stale: Option<Grace<K, V>>,
    /// How a write copies what it removes, for the removal listener or the stale grace (the
    /// listener's if both): fixed at build time, so a write does not work it out again.
    removal_clone: Option<CloneEntry<K, V>>,
    /// Whether a store needs none of the per-entry options (no expiry policy, no time to idle,
    /// no stale grace): fixed at build time, one branch on every write (issue 17).
    plain_stores: bool,
}

/// What a builder sets besides the layout, the hasher and the clock.
pub(crate) struct Options<K, V> {
    pub(crate) ttl: Option<Duration>,
    pub(crate) weigher: Option<Weigher<K, V>>,
    pub(crate) hold_off: Option<Duration>,
    pub(crate) listener: Option<Listener<K, V>>,
    pub(crate) expiry: Option<StdArc<dyn Expiry<K, V>>>,
    pub(crate) tti: Option<Duration>,
    pub(crate) stale: Option<Grace<K, V>>,
}
/// A write in progress on generation slots (one key's, or a whole shard's for a flush), under
/// the shard's lock: [`begin`](Self::begin) marks them busy with the write's generation, and
/// dropping the mark stores that generation unmarked, also when the write unwinds (user code runs
/// inside it: `K::eq`, `Hash`, values' `Drop`), so that a panic leaves no slot marked busy (which
/// would send every later lease of it to the shard's lock). Drop it before the lock's guard.
#[must_use]
pub(crate) struct WriteMark<'c> {
    slots: &'c [AtomicU64],
    generation: Generation,
}

impl<'c> WriteMark<'c> {
    #[inline]
    fn begin(slots: &'c [AtomicU64], generation: Generation) -> Self {
        for slot in slots {
            // Relaxed: ordered before the table change by that change's Release stores, so a
            // reader that sees the change sees the mark (or the final value).
            slot.store(generation.busy(), Ordering::Relaxed);
        }
        Self { slots, generation }
    }
}

impl Drop for WriteMark<'_> {
    #[inline]
    fn drop(&mut self) {
        for slot in self.slots {
            // Release pairs with the Acquire load in `generation_now`.
            slot.store(self.generation.get(), Ordering::Release);
        }
    }
}

/// One shard: what readers use without a lock, the writers' lock-protected core, its part of the
/// generation table and its counters.
///
/// In this order (`repr(C)`): what reads load lock-free first, so that `shared` sits at the
/// cell's start (at another offset every `get` paid an instruction or two to reach it), then the
/// core on lines of its own, then the counters loads bump.
#[repr(C)]
pub(crate) struct ShardCell<K, V> {
    pub(crate) shared: Shared<K, V>,
    /// The generation slots this shard owns. Read lock-free by `lease`; written only under
    /// `core`'s lock, from `core.clock`, so each slot only grows.
    generations: Box<[AtomicU64]>,
    /// The hold-off deadline of each generation slot (see `crate::floors`).
    pub(crate) hold_offs: HoldOffs,
    /// On lines of its own: every write stores to the lock word and the core, and a reader on
    /// another core loads `shared` (the published table) on every `get`. Unpadded, the lock and
    /// the core's first fields shared a line with the table's published probe word, so each
    /// write to a shard evicted that line from the other cores' caches (issue 17).
    pub(crate) core: CachePadded<ShardMutex<Core<K, V>>>,
    pub(crate) counters: Counters,
}

/// In this order (`repr(C)`): what every write touches besides the queues (the generation clock,
/// the empty-table test of the loads in flight, the counts) right after the lock word, in its
/// 64-byte line, so that an absent purge touches one line of the core instead of three (the lock,
/// and the clock and counts past the writer's 600 bytes) when shards pass between cores.
#[repr(C)]
pub(crate) struct Core<K, V> {
    clock: GenerationClock,
    pub(crate) flights: FlightTable<K, V>,
    pub(crate) counts: WriteCounts,
    pub(crate) writer: Writer,
    /// Position floors and open write intents per generation slot (see `crate::floors`).
    pub(crate) floors: LockedFloors,
    /// Entries removed under the lock, for the removal listener (see `crate::listener`); empty
    /// whenever the lock is free.
    pub(crate) removed: Removed<K, V>,
    /// Values purges removed, for opt-in stale reads (see `crate::stale`); empty without a
    /// stale grace.
    pub(crate) stash: Stash<K, V>,
}

/// The sizes a builder settled on.
pub(crate) struct Layout {
    pub(crate) shards: usize,
    pub(crate) capacity: u64,
    pub(crate) slots_per_shard: usize,
    pub(crate) expected_entries_per_shard: usize,
}

impl<K, V> Cache<K, V, ahash::RandomState>
where
    K: Hash + Eq,
{
    /// A cache holding at most `max_entries` entries, with no TTL.
    ///
    /// ```
    /// let cache: leasecache::Cache<u64, u64> = leasecache::Cache::new(100_000);
    /// cache.insert(1, 2);
    /// assert_eq!(cache.get(&1), Some(2));
    /// ```
    pub fn new(max_entries: u64) -> Self {
        Self::builder().max_capacity(max_entries).build()
    }

    /// A builder for capacity by weight, TTLs, a custom hasher and the other knobs.
    pub fn builder() -> crate::CacheBuilder<K, V> {
        crate::CacheBuilder::new()
    }
}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    pub(crate) fn from_parts(
        layout: Layout,
        hasher: S,
        clock: Clock,
        options: Options<K, V>,
    ) -> Self {
        let Options {
            ttl,
            weigher,
            hold_off,
            listener,
            expiry,
            tti,
            stale,
        } = options;
        let n = layout.shards;
        debug_assert!(n.is_power_of_two() && layout.slots_per_shard.is_power_of_two());
        // Miniature simulations (see `policy::minisim`) for a cache of several shards whose
        // capacity counts entries; the models know no weights.
        let sim = (n > 1 && weigher.is_none())
            .then(|| crate::policy::MiniSim::new(layout.capacity))
            .flatten();
        let sample_mask = sim
            .as_ref()
            .map_or(crate::reclaim::NO_SAMPLES, |sim| sim.mask());
        let duel = crate::policy::Duel::with_sim(n, sim);
        // Whether `membarrier` is there: the shard locks' releases then need no full fence.
        let fast = crate::sync::init_barriers();
        let shards = (0..n)
            .map(|i| {
                let capacity =
                    layout.capacity / n as u64 + u64::from((i as u64) < layout.capacity % n as u64);
                CachePadded::new(ShardCell {
                    shared: Shared::new(layout.expected_entries_per_shard),
                    core: CachePadded::new(shard_mutex(
                        Core {
                            writer: Writer::new(capacity, layout.expected_entries_per_shard)
                                .one_of(n, i, &duel),
                            clock: GenerationClock::default(),
                            flights: FlightTable::default(),
                            counts: WriteCounts::default(),
                            floors: LockedFloors::default(),
                            removed: Vec::new(),
                            stash: Stash::default(),
                        },
                        fast,
                    )),
                    generations: (0..layout.slots_per_shard)
                        .map(|_| AtomicU64::new(Generation::ZERO.get()))
                        .collect(),
                    hold_offs: HoldOffs::new(layout.slots_per_shard),
                    counters: Counters::default(),
                })
            })
            .collect();
        Self {
            shards,
            slot_mask: layout.slots_per_shard - 1,
            hasher,
            id: crate::sync::next_instance_id(),
            clock,
            ttl_in_use: AtomicBool::new(ttl.is_some() || expiry.is_some() || tti.is_some()),
            ttl,
            weigher,
            readers: Readers::new().sampled_by(sample_mask),
            hold_off,
            hold_offs_in_use: AtomicBool::new(false),
            refresh: crate::refresh::Refresh::default(),
            tti: tti.map_or(0, |t| {
                u64::try_from(t.as_nanos()).unwrap_or(u64::MAX).max(1)
            }),
            removal_clone: match (&listener, &stale) {
                (Some(l), _) => Some(l.clone),
                (None, Some(s)) => Some(s.clone),
                (None, None) => None,
            },
            plain_stores: expiry.is_none() && tti.is_none() && stale.is_none(),
            listener,
            expiry,
            stale,
        }
    }

    /// The time to idle in nanoseconds (`0`: none), for reads that find a timed entry.
    #[inline]
    pub(crate) fn tti_nanos(&self) -> u64 {
        self.tti
    }

    /// This cache instance's id (leases carry it, I8).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The index of `hash`'s generation slot (and floors) within its shard.
    #[inline]
    pub(crate) fn slot_index(&self, hash: u64) -> usize {
        hash as usize & self.slot_mask
    }

    /// The hold-off every write applies, if the cache has one.
    pub(crate) fn default_hold_off(&self) -> Option<Duration> {
        self.hold_off
    }

    /// Whether a write has ever raised a hold-off deadline.
    #[inline]
    pub(crate) fn hold_offs_in_use(&self) -> bool {
        // Relaxed: set before the first deadline is raised, inside a write whose Release store of
        // its generation publishes both to a lease that Acquire-loaded that generation.
        self.hold_offs_in_use.load(Ordering::Relaxed)
    }

    pub(crate) fn set_hold_offs_in_use(&self) {
        if !self.hold_offs_in_use() {
            self.hold_offs_in_use.store(true, Ordering::Relaxed);
        }
    }

    /// The writer's view of `cell`'s shard, for a caller holding its lock (`core`).
    #[inline]
    pub(crate) fn shard<'a>(
        &'a self,
        cell: &'a ShardCell<K, V>,
        core: &'a mut Core<K, V>,
    ) -> Shard<'a, K, V> {
        let removals = self.removal_clone.map(|clone| Removals {
            out: &mut core.removed,
            clone,
            only_purged: self.listener.is_none(),
        });
        Shard::new(&cell.shared, &mut core.writer, &self.readers).with_removals(removals)
    }

    /// Releases a shard's lock, then hands what the write removed to the removal listener, on
    /// this thread (see `crate::listener`).
    /// With a stale grace, the values purges removed go to the shard's stash first, under the
    /// lock (see `crate::stale`). Always inlined: the common case (no listener, no grace) is a
    /// branch and an unlock on every write; the rest is out of line.
    #[inline(always)]
    pub(crate) fn unlock(&self, core: ShardGuard<'_, Core<K, V>>) {
        // One test: a removal listener or a stale grace is what sets `removal_clone`.
        if self.removal_clone.is_none() {
            return drop(core);
        }
        self.unlock_with_removals(core);
    }

    /// [`unlock`](Self::unlock) for a cache with a removal listener or a stale grace.
    #[inline(never)]
    fn unlock_with_removals(&self, mut core: ShardGuard<'_, Core<K, V>>) {
        let mut removed = std::mem::take(&mut core.removed);
        if let Some(grace) = &self.stale {
            self.stash_purged(grace, &mut core, &mut removed);
        }
        drop(core);
        if let Some(listener) = &self.listener {
            listener.deliver(removed);
        }
    }

    /// Moves (or, for a listener, copies) the values of `removed` that purges removed into
    /// the stash of the shard whose lock `core` is, with the generation each purge left.
    #[cold]
    fn stash_purged(
        &self,
        grace: &Grace<K, V>,
        core: &mut Core<K, V>,
        removed: &mut Removed<K, V>,
    ) {
        if !removed.iter().any(|(_, _, c)| *c == RemovalCause::Purged) {
            return;
        }
        let now = self.clock.now();
        let keep = |core: &mut Core<K, V>, key: K, value: V| {
            let hash = self.hash(&key);
            // Relaxed: every store to this slot happens under the lock the caller holds; the
            // purge's write mark is dropped, so this is the generation the purge left.
            let generation =
                Generation::from_raw(self.slot(self.cell(hash), hash).load(Ordering::Relaxed));
            core.stash
                .keep(hash, key, value, generation, now, grace.nanos);
        };
        if self.listener.is_some() {
            for (key, value, cause) in removed.iter() {
                if *cause == RemovalCause::Purged {
                    if let Some((key, value)) = (grace.clone)(key, value) {
                        keep(core, key, value);
                    }
                }
            }
        } else {
            for (key, value, cause) in removed.drain(..) {
                if cause == RemovalCause::Purged {
                    keep(core, key, value);
                }
            }
        }
    }

    /// `key`'s stashed value and its age, for an opt-in caller holding the shard's lock that
    /// found the key loading (see `crate::stale`); counts the serve.
    pub(crate) fn stale_locked<Q>(
        &self,
        cell: &ShardCell<K, V>,
        core: &mut Core<K, V>,
        hash: u64,
        key: &Q,
    ) -> Option<(V, Duration)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
        V: Clone,
    {
        let grace = self.stale.as_ref()?;
        if core.stash.is_empty() {
            return None;
        }
        // Relaxed: every store to this slot happens under the lock the caller holds.
        let current = Generation::from_raw(self.slot(cell, hash).load(Ordering::Relaxed));
        let (value, ago) = core
            .stash
            .lookup(hash, key, current, self.clock.now(), grace.nanos)?;
        let found = (value.clone(), ago);
        Counters::bump(&cell.counters.stale_served);
        Some(found)
    }

    /// Whether the cache has a stale grace.
    #[cfg(feature = "redis")]
    pub(crate) fn has_stale_grace(&self) -> bool {
        self.stale.is_some()
    }

    #[inline]
    pub(crate) fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    #[inline]
    pub(crate) fn cell(&self, hash: u64) -> &ShardCell<K, V> {
        // Shards are picked from bits 32.. of the hash: hashbrown uses the top 7 bits and the low
        // bits inside a shard, and the generation slot uses the low bits.
        &self.shards[(hash >> 32) as usize & (self.shards.len() - 1)]
    }

    #[inline]
    fn slot<'a>(&self, cell: &'a ShardCell<K, V>, hash: u64) -> &'a AtomicU64 {
        &cell.generations[self.slot_index(hash)]
    }

    /// `hash`'s generation as its slot stands now, lock-free; `None` while a write is changing it.
    #[inline]
    fn generation_now(&self, cell: &ShardCell<K, V>, hash: u64) -> Option<Generation> {
        // Acquire pairs with the Release store in `WriteMark::drop`: a reader that sees a write's
        // generation sees its change to the table, and every write the writing thread made before
        // it (the source update).
        let generation = Generation::from_raw(self.slot(cell, hash).load(Ordering::Acquire));
        (!generation.is_busy()).then_some(generation)
    }

    /// The lease for `hash`. Lock-free unless a write to a key of its slot is under way, in which
    /// case it waits for that write (on the shard's lock) and takes the generation it leaves.
    #[inline]
    pub(crate) fn lease_for(&self, cell: &ShardCell<K, V>, hash: u64) -> Lease {
        match self.generation_now(cell, hash) {
            Some(generation) => self.floored_lease(cell, hash, generation),
            None => {
                let _core = cell.core.lock();
                self.lease_locked(cell, hash)
            }
        }
    }

    /// The lease for `hash`, for a caller holding the shard's lock (no write is half done).
    pub(crate) fn lease_locked(&self, cell: &ShardCell<K, V>, hash: u64) -> Lease {
        // Relaxed: every store to this slot happens under the lock the caller holds.
        let generation = Generation::from_raw(self.slot(cell, hash).load(Ordering::Relaxed));
        debug_assert!(!generation.is_busy());
        self.floored_lease(cell, hash, generation)
    }

    /// Begins a write of `key`: moves `hash`'s generation to a value its slot never held, marked
    /// in progress, and detaches any load in flight for `key`. Must be called with the shard's
    /// lock held, before the write changes the table; the returned mark ends the write when it is
    /// dropped, which must be under the same lock (declare it after the lock's guard).
    pub(crate) fn begin_key_write<'c, Q>(
        &self,
        cell: &'c ShardCell<K, V>,
        core: &mut Core<K, V>,
        hash: u64,
        key: &Q,
    ) -> WriteMark<'c>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.begin_write_at(self.slot(cell, hash), core, hash, key)
    }

    /// [`begin_key_write`](Self::begin_key_write) with `hash`'s generation slot already looked
    /// up (`self.slot(cell, hash)`): a write looks it up once, for its prefetch and its mark.
    #[inline]
    fn begin_write_at<'c, Q>(
        &self,
        slot: &'c AtomicU64,
        core: &mut Core<K, V>,
        hash: u64,
        key: &Q,
    ) -> WriteMark<'c>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let mark = WriteMark::begin(std::slice::from_ref(slot), core.clock.mint());
        #[cfg(all(test, leasecache_loom))]
        if self.readers.broken == Some(crate::reclaim::Broken::NoBusyMark) {
            slot.store(mark.generation.get(), Ordering::Relaxed);
        }
        #[cfg(all(test, leasecache_loom))]
        if self.readers.broken == Some(crate::reclaim::Broken::NoDetach) {
            return mark;
        }
        // After the mark exists: `K::eq` may panic, and the write must still end.
        core.flights.detach(hash, key);
        mark
    }

    /// [`begin_key_write`](Self::begin_key_write) of the key whose entry is in slot `idx` of
    /// `cell`'s table (a write that found the entry by walking the shard, like `retain`).
    pub(crate) fn begin_slot_write<'c>(
        &self,
        cell: &'c ShardCell<K, V>,
        core: &mut Core<K, V>,
        hash: u64,
        idx: u32,
    ) -> WriteMark<'c> {
        let mark = WriteMark::begin(
            std::slice::from_ref(self.slot(cell, hash)),
            core.clock.mint(),
        );
        let Core {
            writer, flights, ..
        } = core;
        // After the mark exists: `K::eq` may panic, and the write must still end.
        cell.shared
            .with_linked_key(writer, idx, |k| flights.detach(hash, k));
        mark
    }

    /// Starts loading what a write of `hash` touches first, its generation slot and its home
    /// bucket, before the caller takes the shard's lock: both are at random places, and their
    /// misses then overlap the lock's acquisition instead of following one another under it.
    #[inline]
    pub(crate) fn prefetch_for_write(&self, cell: &ShardCell<K, V>, hash: u64) {
        self.prefetch_write_at(cell, self.slot(cell, hash), hash);
    }

    /// [`prefetch_for_write`](Self::prefetch_for_write) with `hash`'s generation slot at hand.
    #[inline]
    fn prefetch_write_at(&self, cell: &ShardCell<K, V>, slot: &AtomicU64, hash: u64) {
        // Not under loom: the probe's load would be one more step for every model to explore.
        #[cfg(not(all(test, leasecache_loom)))]
        {
            crate::table::prefetch(slot);
            cell.shared.prefetch(hash);
        }
        #[cfg(all(test, leasecache_loom))]
        let _ = (cell, slot, hash);
    }

    /// Whether `lease` is still good for `hash`. Call with the shard's lock held.
    pub(crate) fn lease_is_current(
        &self,
        cell: &ShardCell<K, V>,
        lease: &Lease,
        hash: u64,
    ) -> bool {
        // Relaxed: every store to this slot happens under the lock the caller holds.
        let current = Generation::from_raw(self.slot(cell, hash).load(Ordering::Relaxed));
        lease.is_current(current)
    }

    /// Stores an entry in `cell`'s shard (whose lock the caller holds), letting eviction and table
    /// rebuilds re-hash other keys with this cache's hasher. Returns whether the value is stored.
    ///
    /// Inlined: in a cache built without an expiry policy, a time to idle or a stale grace (fixed
    /// at build time) this is one branch before the shard's insert, where a call of its own cost
    /// every write a frame and nine arguments passed twice (issue 17). The rest is out of line.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn store(
        &self,
        cell: &ShardCell<K, V>,
        core: &mut Core<K, V>,
        admit: Admit,
        hash: u64,
        key: K,
        value: V,
        weight: u32,
        expires_at: u64,
        now: u64,
    ) -> bool {
        if self.plain_stores {
            // Without a stale grace the stash is always empty.
            debug_assert!(core.stash.is_empty());
            let hash_of = |k: &K| self.hash(k);
            return self
                .shard(cell, core)
                .insert_as(admit, hash, key, value, weight, expires_at, now, &hash_of);
        }
        self.store_with_options(cell, core, admit, hash, key, value, weight, expires_at, now)
    }

    /// [`store`](Self::store) in a cache with an expiry policy, a time to idle or a stale grace.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn store_with_options(
        &self,
        cell: &ShardCell<K, V>,
        core: &mut Core<K, V>,
        admit: Admit,
        hash: u64,
        key: K,
        value: V,
        weight: u32,
        expires_at: u64,
        now: u64,
    ) -> bool {
        if !core.stash.is_empty() {
            // The key is current again: its stashed value must never come back (`crate::stale`).
            core.stash.forget(hash, &key);
        }
        let hash_of = |k: &K| self.hash(k);
        let expires_at = match &self.expiry {
            None => expires_at,
            Some(expiry) => {
                self.expiry_deadline(cell, core, &**expiry, hash, &key, &value, expires_at, now)
            }
        };
        if self.tti != 0 {
            // Idle from now, never past what the TTL and the expiry allow (the entry's limit).
            let idle = now.saturating_add(self.tti);
            let deadline = if expires_at == 0 {
                idle
            } else {
                idle.min(expires_at)
            };
            return self
                .shard(cell, core)
                .with_limit(expires_at)
                .insert_as(admit, hash, key, value, weight, deadline, now, &hash_of);
        }
        self.shard(cell, core)
            .insert_as(admit, hash, key, value, weight, expires_at, now, &hash_of)
    }

    /// The deadline of an entry about to be stored, by the cache's [`Expiry`]: the one it computes
    /// for a new entry or an update of a live one, or `expires_at` (what the cache's TTL and the
    /// write allow) if that is sooner. Runs user code under the shard's lock, before any change.
    #[allow(clippy::too_many_arguments)]
    #[cold]
    fn expiry_deadline(
        &self,
        cell: &ShardCell<K, V>,
        core: &mut Core<K, V>,
        expiry: &dyn Expiry<K, V>,
        hash: u64,
        key: &K,
        value: &V,
        expires_at: u64,
        now: u64,
    ) -> u64 {
        // `now` is read whenever a cache has an expiry (`ttl_in_use` is set from the start).
        debug_assert!(now != 0);
        let ttl = match self.shard(cell, core).deadline_of(hash, key, now) {
            None => expiry.expire_after_create(key, value),
            Some(deadline) => {
                let remaining = (deadline != 0).then(|| Duration::from_nanos(deadline - now));
                expiry.expire_after_update(key, value, remaining)
            }
        };
        match Clock::deadline_from(now, ttl) {
            0 => expires_at,
            own if expires_at == 0 => own,
            own => own.min(expires_at),
        }
    }

    /// What every write raises besides the generation: the cache's default hold-off.
    #[inline]
    pub(crate) fn default_raise(&self) -> Raise {
        Raise {
            hold_off: self.hold_off,
            position: None,
        }
    }

    pub(crate) fn weigh(&self, key: &K, value: &V) -> u32 {
        self.weigher.as_ref().map_or(1, |w| w(key, value))
    }

    /// The clock, for reads that meet an entry with a deadline.
    pub(crate) fn clock_now(&self) -> u64 {
        self.clock.now()
    }

    /// The clock reading a write needs (to expire entries while it evicts) and the deadline of an
    /// entry it writes with `ttl`. While no entry can carry a deadline, the clock is not read:
    /// `now = 0` expires nothing, which is exact when nothing has a deadline.
    pub(crate) fn write_times(&self, ttl: Option<Duration>) -> (u64, u64) {
        if ttl.is_some() && !self.ttl_in_use.load(Ordering::Relaxed) {
            // Relaxed: a racing writer that still reads `false` only skips expiring entries.
            self.ttl_in_use.store(true, Ordering::Relaxed);
        }
        if !self.ttl_in_use.load(Ordering::Relaxed) {
            return (0, 0);
        }
        let now = self.clock.now();
        (now, Clock::deadline_from(now, ttl))
    }

    /// The cache's TTL, shortened to `max_ttl` if that is shorter.
    pub(crate) fn ttl_within(&self, max_ttl: Option<Duration>) -> Option<Duration> {
        match (self.ttl, max_ttl) {
            (Some(own), Some(max)) => Some(own.min(max)),
            (own, max) => own.or(max),
        }
    }

    /// The value of `key`, if cached and not expired.
    ///
    /// This is the hit path, lock-free: a lookup in one shard's table with no locked instruction
    /// (see the crate docs, *Lock-free reads*). It never looks at generations: a present value is
    /// current, because every write removes or replaces it atomically with fencing its leases.
    ///
    /// ```
    /// let cache: leasecache::Cache<String, u32> = leasecache::Cache::new(10);
    /// cache.insert("a".to_string(), 1);
    /// assert_eq!(cache.get("a"), Some(1)); // borrowed lookups, as with std maps
    /// assert_eq!(cache.get("b"), None);
    /// ```
    #[inline]
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        let hash = self.hash(key);
        let cell = self.cell(hash);
        let guard = self.readers.enter();
        let value = cell.shared.get_touching(
            &guard,
            hash,
            key,
            || self.clock.now(),
            || self.tti,
            V::clone,
        );
        guard.count(value.is_some(), hash);
        value
    }

    /// Whether `key` has a live value. Does not count as an access.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let guard = self.readers.enter();
        self.cell(hash)
            .shared
            .contains(&guard, hash, key, self.clock.now())
    }

    /// The value of `key` if cached, else a lease to fill it with: one lookup.
    ///
    /// On a miss, read the source *after* this call returns and save what you read with
    /// [`save_with_lease`](Self::save_with_lease).
    ///
    /// ```
    /// use leasecache::{Cache, Lookup};
    ///
    /// let cache: Cache<u32, &str> = Cache::new(10);
    /// let Lookup::Miss(lease) = cache.get_or_lease(&1) else { unreachable!() };
    /// assert_eq!(cache.save_with_lease(1, "one", lease).unwrap(), leasecache::Saved::Stored);
    /// assert_eq!(cache.get_or_lease(&1), Lookup::Hit("one"));
    /// ```
    pub fn get_or_lease<Q>(&self, key: &Q) -> Lookup<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        let hash = self.hash(key);
        let cell = self.cell(hash);
        let now = || self.clock.now();
        let guard = self.readers.enter();
        let tti = || self.tti;
        if let Some(value) = cell
            .shared
            .get_touching(&guard, hash, key, now, tti, V::clone)
        {
            guard.count(true, hash);
            return Lookup::Hit(value);
        }
        // A miss: look again between two readings of the key's generation (a hit never reads it:
        // reading it first cost hits 1.2 ns and saved misses 3). The miss is a miss at generation
        // `before` if the slot held `before`, unmarked, around the whole second lookup: a write
        // marks the slot before it changes the table, so a lookup that saw any part of a write
        // sees its mark or its new generation after. (Saves and evictions leave generations
        // alone: a miss then is a miss before the save or after the eviction, at that same
        // generation.) The second lookup reads buckets the first one just loaded.
        if let Some(before) = self.generation_now(cell, hash) {
            if let Some(value) = cell
                .shared
                .get_touching(&guard, hash, key, now, tti, V::clone)
            {
                guard.count(true, hash);
                return Lookup::Hit(value);
            }
            // The lookup's table and bucket loads are Acquire: the slot load below comes after them.
            if self.generation_now(cell, hash) == Some(before) {
                guard.count(false, hash);
                return Lookup::Miss(self.floored_lease(cell, hash, before));
            }
        }
        drop(guard);
        // A write was under way: look again under the shard's lock, where none is.
        let mut core = cell.core.lock();
        let found = self
            .shard(cell, &mut core)
            .get_touching(hash, key, now, tti, V::clone);
        let lookup = match found {
            Some(value) => Lookup::Hit(value),
            None => Lookup::Miss(self.lease_locked(cell, hash)),
        };
        drop(core);
        self.readers.count(lookup.is_hit(), hash);
        lookup
    }

    /// A lease on `key`, whether or not it is cached: one atomic load, lock-free.
    ///
    /// Take it **before** reading the source. Any purge, insert or flush of `key` that completes
    /// after this call fences the lease.
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, u32> = leasecache::Cache::new(10);
    /// let lease = cache.lease(&7);
    /// let row = 70; // read the database
    /// assert!(cache.save_with_lease(7, row, lease).is_ok_and(leasecache::Saved::is_stored));
    /// ```
    #[inline]
    pub fn lease<Q>(&self, key: &Q) -> Lease
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        self.lease_for(self.cell(hash), hash)
    }

    /// Saves `value` for `key` if no purge, insert or flush of `key` completed since `lease` was
    /// captured ([`Saved::Stored`]); otherwise drops it and returns [`Saved::Stale`]. A lease
    /// issued for another key or by another cache is rejected with [`SaveError::ForeignLease`].
    ///
    /// `Saved::Stored` means the save was not stale. It is a fill, which the eviction policy may decline: in a
    /// full cache a key with no history of requests is usually not kept (admission compares its
    /// request count with the entry it would displace), and the next lookup misses again until the
    /// key has been asked for often enough. Use [`insert`](Self::insert) for a value that must be
    /// readable right away.
    /// A lease may be used more than once while it is current: every value saved under it was read
    /// after it was captured and before any write that would fence it, so each is as fresh as the
    /// other. The entry gets the cache's default TTL.
    ///
    /// ```
    /// use leasecache::{Cache, Saved};
    ///
    /// let cache: Cache<u32, &str> = Cache::new(10);
    /// let lease = cache.lease(&1);
    /// cache.insert(1, "new"); // a writer wins the race
    /// assert_eq!(cache.save_with_lease(1, "old", lease), Ok(Saved::Stale));
    /// assert_eq!(cache.get(&1), Some("new"));
    /// ```
    ///
    /// Returns [`Saved::Stale`] (and drops the value) if a write fenced the lease or a floor
    /// refused the save: clone the value first if the caller still needs it. The only error is a
    /// lease issued for another key or by another cache ([`SaveError::ForeignLease`], which hands
    /// the value back).
    pub fn save_with_lease(&self, key: K, value: V, lease: Lease) -> Result<Saved, SaveError<V>> {
        self.save_inner(key, value, lease, None, None)
    }

    /// [`save_with_lease`](Self::save_with_lease), the entry living at most `max_ttl` (and at
    /// most the cache's own TTL). The tiered cache caps an L1 fill by its Redis entry's TTL.
    #[cfg(feature = "redis")]
    pub(crate) fn save_with_lease_within(
        &self,
        key: K,
        value: V,
        lease: Lease,
        max_ttl: Option<Duration>,
    ) -> Result<Saved, SaveError<V>> {
        self.save_inner(key, value, lease, None, max_ttl)
    }

    /// A save under `lease`, of a value read at source position `position` if given, the entry
    /// living at most `max_ttl` (and at most the cache's own TTL).
    pub(crate) fn save_inner(
        &self,
        key: K,
        value: V,
        lease: Lease,
        position: Option<u64>,
        max_ttl: Option<Duration>,
    ) -> Result<Saved, SaveError<V>> {
        let hash = self.hash(&key);
        if !lease.is_for(self.id, hash) {
            return Err(SaveError::ForeignLease { value });
        }
        let cell = self.cell(hash);
        let weight = self.weigh(&key, &value);
        let (now, expires_at) = self.write_times(self.ttl_within(max_ttl));
        let mut core = cell.core.lock();
        if !self.save_allowed(cell, &core, &lease, hash, position) {
            core.counts.stale_rejected += 1;
            drop(core);
            return Ok(Saved::Stale);
        }
        self.store(
            cell,
            &mut core,
            Admit::Policy,
            hash,
            key,
            value,
            weight,
            expires_at,
            now,
        );
        core.counts.saves += 1;
        self.unlock(core);
        Ok(Saved::Stored)
    }

    /// Stores `value` unconditionally (with the cache's default TTL) and fences every outstanding
    /// lease on `key`: use it when you *write* the source and want the cache to hold the new value.
    /// Even in a full cache the insert's own eviction never removes the value, so a `get` right
    /// after it finds the value (unless its TTL has run out or another write evicted it
    /// meanwhile); a value heavier than a whole shard is not stored.
    ///
    /// Over a stored key, which of the two equal keys the cache keeps is not specified (a value of
    /// at most one word that needs no drop, such as a `u32`, is overwritten in place under the
    /// stored key; other values are stored with `key`): keys that compare equal should be
    /// interchangeable, as for `HashMap::insert`, which keeps the stored one.
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, u32> = leasecache::Cache::new(10);
    /// let lease = cache.lease(&1);
    /// cache.insert(1, 2);
    /// assert_eq!(cache.get(&1), Some(2));
    /// assert!(cache.save_with_lease(1, 1, lease).is_ok_and(leasecache::Saved::is_stale)); // the older read is fenced
    /// ```
    pub fn insert(&self, key: K, value: V) {
        self.insert_inner(key, value, self.ttl);
    }

    /// [`insert`](Self::insert) with a TTL for this entry, overriding the cache's default.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let cache: leasecache::Cache<u32, u32> = leasecache::Cache::new(10);
    /// cache.insert_with_ttl(1, 2, Duration::from_secs(60));
    /// assert_eq!(cache.get(&1), Some(2));
    /// ```
    pub fn insert_with_ttl(&self, key: K, value: V, ttl: Duration) {
        self.insert_inner(key, value, Some(ttl));
    }

    fn insert_inner(&self, key: K, value: V, ttl: Option<Duration>) {
        let hash = self.hash(&key);
        let cell = self.cell(hash);
        let weight = self.weigh(&key, &value);
        let (now, expires_at) = self.write_times(ttl);
        let slot = self.slot(cell, hash);
        self.prefetch_write_at(cell, slot, hash);
        let mut core = cell.core.lock();
        let write = self.begin_write_at(slot, &mut core, hash, &key);
        self.raise_floors(cell, &mut core, hash, self.default_raise());
        self.store(
            cell,
            &mut core,
            Admit::Keep,
            hash,
            key,
            value,
            weight,
            expires_at,
            now,
        );
        drop(write);
        core.counts.inserts += 1;
        self.unlock(core);
    }

    /// Removes `key` and fences every outstanding lease on it, **whether or not it was cached**
    /// (most purges hit absent keys, and their leases must still be fenced). Returns whether a live
    /// value was removed.
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, u32> = leasecache::Cache::new(10);
    /// let lease = cache.lease(&1);
    /// assert!(!cache.purge(&1)); // nothing was cached...
    /// assert!(cache.save_with_lease(1, 1, lease).is_ok_and(leasecache::Saved::is_stale)); // ...but the lease is fenced
    /// ```
    pub fn purge<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.hold_off.is_some() {
            return self.end_write_of(key, self.default_raise(), None);
        }
        // `end_write_of` with no floors to raise and no intent, each lookup made once: most
        // purges find nothing (I4), and for them the probe is all the shard does (issue 17).
        let hash = self.hash(key);
        let cell = self.cell(hash);
        let slot = self.slot(cell, hash);
        self.prefetch_write_at(cell, slot, hash);
        let mut core = cell.core.lock();
        let write = self.begin_write_at(slot, &mut core, hash, key);
        core.counts.purges += 1;
        let removed = match cell.shared.find_locked(&core.writer, hash, key) {
            None => crate::shard::Removed::Absent,
            // The clock is read only for a purge that finds an entry (it may have expired).
            Some((pos, idx)) => {
                let (now, _) = self.write_times(None);
                self.shard(cell, &mut core).remove_found(pos, idx, now)
            }
        };
        drop(write);
        self.unlock(core);
        removed == crate::shard::Removed::Live
    }

    /// Drops every entry and fences every outstanding lease.
    ///
    /// Shards are flushed one after another, each atomically: when `flush` returns, every lease
    /// captured before it was called is fenced and every value cached before it was called is gone.
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, u32> = leasecache::Cache::new(10);
    /// cache.insert(1, 1);
    /// let lease = cache.lease(&2);
    /// cache.flush();
    /// assert_eq!(cache.get(&1), None);
    /// assert!(cache.save_with_lease(2, 2, lease).is_ok_and(leasecache::Saved::is_stale));
    /// ```
    pub fn flush(&self) {
        for cell in self.shards.iter() {
            let mut core = cell.core.lock();
            self.flush_shard(cell, &mut core);
            self.unlock(core);
        }
    }

    fn flush_shard(&self, cell: &ShardCell<K, V>, core: &mut ShardGuard<'_, Core<K, V>>) {
        // A write to every key of the shard (see `begin_write`).
        let write = WriteMark::begin(&cell.generations, core.clock.mint());
        core.flights.detach_all();
        core.stash.clear();
        self.shard(cell, core).clear();
        if self.hold_off.is_some() {
            self.raise_floors_slow(cell, core, None, self.default_raise());
        }
        drop(write);
    }

    /// Entries held, including expired ones not yet removed (they are removed lazily, when their
    /// key is written or eviction reaches them, and are never returned).
    pub fn entry_count(&self) -> u64 {
        self.shards
            .iter()
            .map(|c| c.core.lock().writer.len() as u64)
            .sum()
    }

    /// Total weight held (equal to [`entry_count`](Self::entry_count) without a weigher).
    pub fn weighted_size(&self) -> u64 {
        self.shards
            .iter()
            .map(|c| c.core.lock().writer.weight())
            .sum()
    }

    /// A snapshot of the counters, summed over shards.
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, u32> = leasecache::Cache::new(10);
    /// cache.insert(1, 1);
    /// cache.get(&1);
    /// cache.get(&2);
    /// let stats = cache.stats();
    /// assert_eq!((stats.hits, stats.misses, stats.inserts), (1, 1, 1));
    /// ```
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        (stats.hits, stats.misses) = self.readers.lookups();
        for cell in self.shards.iter() {
            cell.counters.add_to(&mut stats);
            let core = cell.core.lock();
            core.counts.add_to(&mut stats);
            stats.evictions += core.writer.evictions;
            stats.expirations += core.writer.expirations;
        }
        stats
    }

    /// Checks every shard's structural invariants.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn validate(&self) {
        for cell in self.shards.iter() {
            let mut core = cell.core.lock();
            self.shard(cell, &mut core).validate(&|k| self.hash(k));
        }
    }

    /// NEGATIVE CONTROL, compiled only for the loom models: the classic check-then-store bug. It
    /// checks the lease under one lock acquisition and stores under another, so a purge can slip in
    /// between. The loom model that runs it must fail.
    #[cfg(all(test, leasecache_loom))]
    pub(crate) fn save_check_then_store_broken(&self, key: K, value: V, lease: Lease) -> bool {
        let hash = self.hash(&key);
        let cell = self.cell(hash);
        let current = {
            let _core = cell.core.lock();
            Generation::from_raw(self.slot(cell, hash).load(Ordering::Acquire))
        };
        if !lease.is_current(current) {
            return false;
        }
        let weight = self.weigh(&key, &value);
        let mut core = cell.core.lock();
        self.store(
            cell,
            &mut core,
            Admit::Policy,
            hash,
            key,
            value,
            weight,
            0,
            1,
        );
        true
    }
}

impl<K, V, S> fmt::Debug for Cache<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("entry_count", &self.entry_count())
            .field("weighted_size", &self.weighted_size())
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 64-byte lines `len` bytes at `offset` touch.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn lines(offset: usize, len: usize) -> std::ops::Range<usize> {
        offset / 64..(offset + len).div_ceil(64)
    }

    // The two layout tests below assume 64-byte lines, which crossbeam's `CachePadded` (128 bytes
    // on these targets) covers; on others its padding can be smaller than the hardware's line.
    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn the_shard_lock_and_core_share_no_line_with_what_readers_load() {
        type Cell = ShardCell<u64, u64>;
        let core = lines(
            std::mem::offset_of!(Cell, core),
            std::mem::size_of::<CachePadded<ShardMutex<Core<u64, u64>>>>(),
        );
        let shared = lines(
            std::mem::offset_of!(Cell, shared),
            std::mem::size_of::<Shared<u64, u64>>(),
        );
        let generations = lines(
            std::mem::offset_of!(Cell, generations),
            std::mem::size_of::<Box<[AtomicU64]>>(),
        );
        let counters = lines(
            std::mem::offset_of!(Cell, counters),
            std::mem::size_of::<Counters>(),
        );
        // Cells are padded to whole lines (`Cache::shards`), so offsets are line-aligned.
        assert_eq!(std::mem::align_of::<CachePadded<Cell>>() % 64, 0);
        for lock_free in [shared.clone(), generations.clone(), counters.clone()] {
            assert!(
                lock_free.end <= core.start || core.end <= lock_free.start,
                "{lock_free:?} overlaps {core:?}"
            );
        }
        // Loads bump the counters without the lock; reads never write.
        for reads in [shared, generations] {
            assert!(reads.end <= counters.start || counters.end <= reads.start);
        }
        assert_eq!(std::mem::offset_of!(Cell, shared), 0);
    }

    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn what_an_absent_purge_touches_in_the_core_is_in_the_lock_words_line() {
        let cache: Cache<u64, u64> = Cache::new(10);
        let cell = &cache.shards[0];
        let lock = &*cell.core as *const ShardMutex<Core<u64, u64>> as usize;
        let core = cell.core.lock();
        let end = |field: usize, len: usize| field + len - lock;
        assert!(end(&core.clock as *const _ as usize, 8) <= 64);
        assert!(
            end(
                &core.flights as *const _ as usize,
                size_of::<FlightTable<u64, u64>>()
            ) <= 64
        );
        assert!(end(&core.counts.purges as *const _ as usize, 8) <= 64);
        assert!(end(&core.counts.inserts as *const _ as usize, 8) <= 64);
        // The lock word is in the padded mutex's first line (`parking_lot` puts it first).
        assert!(&*core as *const Core<u64, u64> as usize - lock < 64);
        drop(core);
    }
}
