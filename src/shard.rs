//! One shard of the cache: a lock-free index ([`Table`]) over a slab of slots that never move
//! ([`Slab`]), read without a lock, and the writer's side: S3-FIFO queues threaded through the
//! slots, TTL deadlines, and what was retired and may not be freed yet (`reclaim.rs`).
//!
//! Three pieces:
//! - [`Shared`]: what readers use (the table pointer and the slab). [`Shared::get`] is the hit
//!   path; it runs inside a read (`ReadGuard`) and takes no lock.
//! - [`Writer`]: the policy's state (queues, free slots, ghost, sketch, counters, retired items).
//!   It lives under the shard's lock and has no threads or locks of its own.
//! - [`Shard`]: a writer's view of both, built under the lock; every change goes through it. A
//!   change never writes a slot or table a reader can reach: a new or replaced entry gets a fresh
//!   slot, published by one atomic store into the table, and the old slot is retired. The one
//!   exception is a value of at most one word that needs no drop (a `u64`) in an entry without a
//!   deadline, which a replacing write overwrites in place with one machine move, read by readers
//!   with one move (`Slot::IN_PLACE`, `Shard::replace_in_place`).
//!
//! Generations do not live here. A shard neither reads nor writes the generation table; what it
//! removes (evictions, expirations) never needs to fence anything, because a lease is checked
//! against the key's slot in the generation table, which only writes move (see `cache.rs`).

#![allow(unsafe_code)]

use crate::listener::{RemovalCause, Removals};
use crate::policy::{CacheReturns, Climber, Duel, Ghost, Sketch};
use crate::reclaim::{Limbo, ReadGuard, Readers};
#[cfg(any(test, fuzzing))]
use crate::slab::{FREE, RETIRED};
use crate::slab::{MAIN, SMALL, Slab, Slot};
use crate::sync::{Arc, AtomicPtr, Ordering};
use crate::table::{MIN_BUCKETS, Probe, Published as PublishedTable, Table};
use std::borrow::Borrow;
use std::ptr::NonNull;

/// What the cache's listing, predicate and quiet-read features add (peek, iteration, `retain`,
/// removal notifications); a child module, so that it may use the shard's private parts.
#[path = "shard_features.rs"]
mod features;

const NIL: u32 = u32::MAX;
/// The highest slot index a shard hands out (a table bucket keeps one bit for its tag).
const MAX_SLOT: u32 = (crate::table::MAX_SLOTS - 1) as u32;
/// The saturation point of an entry's access counter (S3-FIFO uses two bits).
const MAX_FREQ: u8 = 3;
/// New keys per measurement of how often misses are ghost hits (see `Shard::admit_ghost`): the
/// cache's new keys when it has several shards (`policy::Climber::cache_returns`), else the shard's.
pub(crate) const GHOST_RATE_PERIOD: u32 = 128;
/// Ghost hits per period up to which returning keys count as rare: 30 % of the new keys. At 20 %
/// the 100k-entry Zipf columns lost 0.05 pp; at 40 % the loop at 1k entries lost 0.28 pp.
pub(crate) const RARE_GHOST_HITS: u32 = GHOST_RATE_PERIOD * 3 / 10;
/// The most entries a shard holds, whatever their weights (an unbounded cache, or entries of
/// weight 0): five eighths of the largest table, the most a rebuild leaves live. Past it the
/// table could not grow, rebuilds could not get under three quarters, and once no bucket was
/// left empty the writer's probe would never end; the shard evicts as if full instead.
const MAX_ENTRIES: usize = crate::table::MAX_BUCKETS / 8 * 5;
const _: () = assert!(MAX_ENTRIES + 1 < crate::table::MAX_BUCKETS / 4 * 3);

/// A table replaced by a rebuild, owned by the writer until its grace period is over.
#[derive(Debug)]
pub(crate) struct RetiredTable(NonNull<Table>);

// SAFETY: it owns a `Table` (which is `Send + Sync`); the writer hands it from one lock holder to
// the next.
unsafe impl Send for RetiredTable {}

impl Drop for RetiredTable {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::into_raw` when the table was published; it is
        // dropped only when its grace period is over (or the whole shard is dropped), so no read
        // still uses it.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// The part of a shard that readers use without a lock.
pub(crate) struct Shared<K, V> {
    /// Never null. Replaced (and the old table retired) only by the writer.
    table: AtomicPtr<Table>,
    /// What readers probe: the current table's buckets and size, in one word.
    probe: PublishedTable,
    slab: Slab<K, V>,
}

impl<K, V> Shared<K, V> {
    /// An empty shard's shared part, with a first slab segment that holds `expected_entries` and
    /// the retired entries of two batches (slots beyond the first segment cost a segment lookup on
    /// every access; at 2,048 entries a shard they held a third of a churning shard's entries).
    pub(crate) fn new(expected_entries: usize) -> Self {
        let slab = Slab::new(expected_entries + 2 * retire_batch(expected_entries));
        let table = Box::new(Table::new(MIN_BUCKETS));
        Self {
            probe: PublishedTable::new(&table),
            table: AtomicPtr::new(Box::into_raw(table)),
            slab,
        }
    }

    /// Starts loading `hash`'s home bucket, for a writer about to take the lock (a hint).
    // Writers prefetch outside loom only (see `Cache::prefetch_for_write`).
    #[cfg_attr(all(test, leasecache_loom), allow(dead_code))]
    #[inline]
    pub(crate) fn prefetch(&self, hash: u64) {
        self.probe.load().prefetch(hash);
    }

    /// The table bucket and slot of `key`, for the writer of this shard, whose [`Writer`] (only
    /// reachable under the shard's lock) `_w` shows it is. Needs no [`Shard`] view: a purge
    /// builds one only if the key is there, and most purges find nothing (I4; issue 17).
    #[inline]
    pub(crate) fn find_locked<Q>(&self, _w: &Writer, hash: u64, key: &Q) -> Option<(usize, u32)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        // Relaxed: only the writer, which holds the lock, stores the pointer.
        let table = self.table.load(Ordering::Relaxed);
        // SAFETY: never null; a table is freed only by the writer (`collect`, after a `rebuild`
        // replaced it), which is the caller, and the reference does not outlive this call.
        let table = unsafe { &*table };
        table.find_for_writer(hash, |idx| {
            self.slab.get(idx).is_some_and(|s| {
                // SAFETY: the writer; every slot the table names holds an entry.
                unsafe { s.with_key(|k| k.borrow() == key) }
            })
        })
    }

    /// The current table, for a read: it stays allocated while `_guard` lives (a table is freed
    /// only after it was replaced and every read that began before the replacement has ended).
    #[inline]
    fn table(&self, _guard: &ReadGuard<'_>) -> Probe {
        self.probe.load()
    }

    /// The live value of `key` mapped through `f`, recording the access for the eviction policy.
    /// `now` is only called when the entry has a deadline. Lock-free.
    ///
    /// This and what it calls on a hit (`get_touching`, `lookup_touching`, `find`,
    /// `Probe::find`) are always inlined, so that `Cache::get` is one function: with `#[inline]`
    /// alone, the benchmark binary kept one of them as a call, a different one from build to
    /// build. The cache itself calls `get_touching`, for its time to idle.
    #[cfg(any(test, fuzzing))]
    #[inline(always)]
    pub(crate) fn get<Q, R>(
        &self,
        guard: &ReadGuard<'_>,
        hash: u64,
        key: &Q,
        now: impl FnOnce() -> u64,
        f: impl FnOnce(&V) -> R,
    ) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.get_touching(guard, hash, key, now, || 0, f)
    }

    /// The deadline of `key`'s entry (0: it has none), if present and live at `now`, without
    /// recording an access. Lock-free. For refresh ahead of expiry (`crate::refresh`).
    pub(crate) fn deadline_of<Q>(
        &self,
        guard: &ReadGuard<'_>,
        hash: u64,
        key: &Q,
        now: u64,
    ) -> Option<u64>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        // SAFETY: the probe was loaded inside `guard`'s read, which outlives the call.
        let (idx, slot) = unsafe { self.find(self.table(guard), hash, key) }?;
        if self.expired(idx, slot, || now) {
            return None;
        }
        Some(if slot.timed() {
            self.slab.deadline(idx)
        } else {
            0
        })
    }

    /// Whether `key` has a live value, without recording an access. Lock-free.
    pub(crate) fn contains<Q>(&self, guard: &ReadGuard<'_>, hash: u64, key: &Q, now: u64) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        // SAFETY: the probe was loaded inside `guard`'s read, which outlives the call.
        unsafe { self.find(self.table(guard), hash, key) }
            .is_some_and(|(idx, slot)| !self.expired(idx, slot, || now))
    }

    /// The slot holding `key` in `table`, with its index.
    ///
    /// # Safety
    /// The caller is inside a read in which `table` was loaded, or is the writer: then the table
    /// is not freed before the call returns, and every slot it names holds an entry that is not
    /// freed before the caller is done (slots are filled before they are published, and freed
    /// only after being unlinked and waiting out every read that began before).
    #[inline(always)]
    unsafe fn find<'t, Q>(
        &'t self,
        table: Probe,
        hash: u64,
        key: &Q,
    ) -> Option<(u32, &'t Slot<K, V>)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let mut found = None;
        let is_key = |idx| {
            let Some(slot) = self.slab.get(idx) else {
                return false;
            };
            // SAFETY: a slot named by the table holds an entry that outlives this call (see above).
            let matches = unsafe { slot.with_key(|k| k.borrow() == key) };
            if matches {
                found = Some(slot);
            }
            matches
        };
        // SAFETY: the caller's contract.
        let (_, idx) = unsafe { table.find(hash, is_key) }?;
        Some((idx, found?))
    }

    /// Whether the entry in slot `idx` has a deadline the clock has reached; `now` is only called
    /// when it has one.
    #[inline]
    fn expired(&self, idx: u32, slot: &Slot<K, V>, now: impl FnOnce() -> u64) -> bool {
        if !slot.timed() {
            return false;
        }
        let deadline = self.slab.deadline(idx);
        deadline != 0 && deadline <= now()
    }
}

impl<K, V> Drop for Shared<K, V> {
    fn drop(&mut self) {
        // SAFETY: the current table came from `Box::into_raw`; `&mut self` means no read uses it.
        drop(unsafe { Box::from_raw(self.table.load(Ordering::Relaxed)) });
    }
}

/// A doubly linked FIFO threaded through the slab by index.
#[derive(Clone, Copy, Debug)]
struct List {
    head: u32,
    tail: u32,
    len: usize,
    weight: u64,
}

impl Default for List {
    fn default() -> Self {
        Self {
            head: NIL,
            tail: NIL,
            len: 0,
            weight: 0,
        }
    }
}

/// Whether the entry an insert stores may be the one its own eviction removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// A fill: the policy decides.
    Policy,
    /// An explicit write: kept through its own insert.
    Keep,
}

/// What [`Shard::remove`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Removed {
    /// A live value was removed.
    Live,
    /// An expired value was removed (it could not have been returned anyway).
    Expired,
    /// Nothing was there.
    Absent,
}

/// The writer's state of one shard; lives under the shard's lock. Not generic: everything about
/// keys and values is in the slab.
#[derive(Debug)]
pub(crate) struct Writer {
    /// Freed slots, reused before new ones: empty (`FREE`), or holding an entry whose drop does
    /// nothing (`RETIRED`, see `collect`).
    free: Vec<u32>,
    /// Retired slots past their grace period whose entries are still to be dropped: reused first,
    /// each dropped by the write that reuses it, and the rest at the next collection (see
    /// `collect`).
    dirty: Vec<u32>,
    /// Slots handed out so far: the next new slot's index.
    next_slot: u32,
    small: List,
    main: List,
    ghost: Ghost,
    sketch: Sketch,
    /// The window's size (see `policy::climber`).
    climber: Climber,
    /// Visits of the CLOCK hand to the main queue's head that leave the entry at most one hit
    /// (see `hand_hits`).
    forget_left: usize,
    capacity: u64,
    /// [`MAX_ENTRIES`], lower in tests.
    max_entries: usize,
    pub(crate) evictions: u64,
    /// `evictions` when the shard was last cleared: the shard has evicted since (its fill is
    /// over) once `evictions` passes it (see `only_for_room`).
    evictions_at_clear: u64,
    pub(crate) expirations: u64,
    /// New keys and ghost hits among them in the current period of `GHOST_RATE_PERIOD` new keys.
    new_keys: u32,
    ghost_hits: u32,
    /// Whether ghost hits were rare in the last full period.
    returns_rare: bool,
    /// Ghost hits in the last full period.
    last_ghost_hits: u32,
    /// Buckets of the current table that are live or tombstones.
    used: usize,
    /// Retired slots (handed back a batch at a time) and tables (dropped by their batch).
    limbo: Limbo<u32, RetiredTable>,
    /// Retired slots that make a batch (see `reclaim.rs`).
    batch: usize,
    /// How many pending retired items the next collection waits for: a batch, or, after a
    /// collection that found the waiting batch still held back by a read, what was pending then
    /// plus an eighth of a batch (see `Shard::collect`).
    collect_at: usize,
    /// Writes since the last collection that replaced a value in place (`Slot::IN_PLACE`),
    /// retiring nothing: they count towards `collect_at` as retirements do, so that what was
    /// retired before is freed (and its entries dropped) while the only writes are such
    /// replaces.
    unretired: usize,
    /// Collections that found the waiting batch held back (tests only).
    #[cfg(test)]
    held_back: usize,
}

impl Writer {
    /// A shard's writer state for at most `capacity` units of weight, sized for about
    /// `expected_entries`.
    pub(crate) fn new(capacity: u64, expected_entries: usize) -> Self {
        Self {
            free: Vec::new(),
            dirty: Vec::new(),
            next_slot: 0,
            small: List::default(),
            main: List::default(),
            ghost: Ghost::new(expected_entries),
            sketch: Sketch::new(expected_entries),
            climber: Climber::new(capacity, expected_entries),
            forget_left: 0,
            capacity,
            max_entries: MAX_ENTRIES,
            evictions: 0,
            evictions_at_clear: 0,
            expirations: 0,
            new_keys: 0,
            ghost_hits: 0,
            returns_rare: false,
            last_ghost_hits: 0,
            used: 0,
            limbo: Limbo::default(),
            batch: retire_batch(expected_entries),
            collect_at: retire_batch(expected_entries),
            unretired: 0,
            #[cfg(test)]
            held_back: 0,
        }
    }

    /// Tells the window's climber that this shard is the `index`th of `shards`, which duel
    /// through `duel` (see `policy::climber`).
    pub(crate) fn one_of(mut self, shards: usize, index: usize, duel: &Arc<Duel>) -> Self {
        self.climber.set_shards(shards);
        self.climber.duel(duel, index);
        self
    }

    /// The climber's window (see `policy::climber`).
    #[cfg(test)]
    pub(crate) fn window_for_test(&self) -> u64 {
        self.climber.window()
    }

    /// Epochs the cache's miniature simulations have run (see `policy::climber`).
    #[cfg(test)]
    pub(crate) fn sim_epochs_for_test(&self) -> Option<u64> {
        self.climber.sim_epochs_for_test()
    }

    /// Sets the window and whether the shard admits, for tests (a shard used without a cache
    /// never climbs: they stay).
    #[cfg(test)]
    pub(crate) fn set_policy_for_test(&mut self, window: u64, admits: bool) {
        self.climber.set_window_for_test(window);
        self.climber.set_admits_for_test(admits);
    }

    /// Entries held, including expired ones not yet removed.
    pub(crate) fn len(&self) -> usize {
        self.small.len + self.main.len
    }

    /// Total weight held, including expired entries not yet removed.
    pub(crate) fn weight(&self) -> u64 {
        self.small.weight + self.main.weight
    }

    fn list_mut(&mut self, state: u8) -> &mut List {
        if state == SMALL {
            &mut self.small
        } else {
            &mut self.main
        }
    }
}

/// Retired items per batch: each batch costs a pass over the cache's per-thread records and, when
/// a thread that stopped reading is among them, a process-wide barrier (microseconds), so batches
/// are large; retired slots keep their memory until freed, so they are a small part of the shard.
/// Loom models need reclamation to happen within a few operations.
fn retire_batch(expected_entries: usize) -> usize {
    if cfg!(all(test, leasecache_loom)) {
        1
    } else {
        (expected_entries / 32).clamp(32, 1024)
    }
}

/// Retirements between two tries of a collection whose waiting batch a read held back (see
/// `Shard::collect`): an eighth of a batch, at least one (under loom, every retirement).
fn retry_step(batch: usize) -> usize {
    (batch / 8).max(1)
}

/// Whether a collection drops every entry it frees at once (and so touches its slot) instead of
/// leaving it to the write that reuses the slot (see `Shard::collect`). Under loom it does: the
/// models catch a slot freed before its grace period is over by that access racing a read's
/// (their negative controls, e.g. a read that does not announce itself, fail that way), and a
/// deferred drop would hide such a bug until a write reused the slot, which few models reach.
/// Dropping later than the grace period allows is always as safe as dropping when it ends: nothing
/// publishes a freed slot again before `fill`.
const DROP_AT_COLLECTION: bool = cfg!(all(test, leasecache_loom));

/// Starts loading `slot`'s line (a hint; not under loom, see `Cache::prefetch_for_write`).
#[inline(always)]
fn prefetch_slot<K, V>(slot: &Slot<K, V>) {
    #[cfg(not(all(test, leasecache_loom)))]
    crate::table::prefetch(slot);
    #[cfg(all(test, leasecache_loom))]
    let _ = slot;
}

/// Where the writer found a key: its table bucket, its slot's index and its slot.
type Found<'a, K, V> = (usize, u32, &'a Slot<K, V>);

/// A slot in a queue, with its neighbours' indices (`NIL` at an end) and slots, as the writer
/// looked them up (`Shard::linked`): unlinking or replacing it touches all three.
struct Linked<'a, K, V> {
    idx: u32,
    slot: &'a Slot<K, V>,
    prev: (u32, Option<&'a Slot<K, V>>),
    next: (u32, Option<&'a Slot<K, V>>),
}

impl<K, V> Linked<'_, K, V> {
    /// Starts loading the neighbours' lines, for a write replacing this entry: it rewrites their
    /// links last, right before the lock is released, and the release waits for those stores
    /// (two random lines). Fetched now, they arrive while the write fills its new slot (issue
    /// 17). The slot's own line is loaded already (its key was just compared). Not under loom
    /// (`prefetch_slot`).
    #[inline(always)]
    fn prefetch_neighbours(&self) {
        for neighbour in [self.prev.1, self.next.1].into_iter().flatten() {
            prefetch_slot(neighbour);
        }
    }
}

/// A writer's view of one shard, built under the shard's lock: every change goes through it.
pub(crate) struct Shard<'a, K, V> {
    shared: &'a Shared<K, V>,
    w: &'a mut Writer,
    readers: &'a Readers,
    /// Where removed entries are copied for a removal listener (`crate::listener`), if any.
    removals: Option<Removals<'a, K, V>>,
    /// The limit a time-to-idle entry stored through this view gets (`features::set_limit`).
    limit: Option<u64>,
}

impl<'a, K, V> Shard<'a, K, V>
where
    K: Eq,
{
    /// The view of a shard whose lock the caller holds (`w` lives under it).
    pub(crate) fn new(shared: &'a Shared<K, V>, w: &'a mut Writer, readers: &'a Readers) -> Self {
        Self {
            shared,
            w,
            readers,
            removals: None,
            limit: None,
        }
    }

    /// The current table. Not held across [`rebuild`](Self::rebuild) or [`collect`](Self::collect).
    fn table(&self) -> &'a Table {
        // Relaxed: only this writer stores the pointer.
        let table = self.shared.table.load(Ordering::Relaxed);
        // SAFETY: never null; a table is freed only by `collect` after `rebuild` replaced it, and
        // callers do not keep the reference across either.
        unsafe { &*table }
    }

    fn slot(&self, idx: u32) -> &'a Slot<K, V> {
        self.shared.slab.slot(idx)
    }

    /// The hash of the key in slot `idx`, which holds an entry.
    fn hash_at(&self, idx: u32, hash_of: &impl Fn(&K) -> u64) -> u64 {
        // SAFETY: the writer reads a slot it knows holds an entry; only the writer frees slots.
        unsafe { self.slot(idx).with_key(hash_of) }
    }

    /// The table bucket and slot of `key`.
    fn find<Q>(&self, hash: u64, key: &Q) -> Option<(usize, u32)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.table().find_for_writer(hash, self.holds(key))
    }

    /// The bucket, slot index and slot of `key` (the slot as the key comparison looked it up: a
    /// replacing write needs it next), or the bucket to insert it in and whether that is empty.
    /// Always inlined into `insert_as`, its one caller: left to the heuristics, it became a call
    /// of its own (with a frame) once `Cache::store` was inlined into the writes (issue 17).
    #[inline(always)]
    fn find_or_vacancy(&self, hash: u64, key: &K) -> Result<Found<'a, K, V>, (usize, bool)> {
        let slab = &self.shared.slab;
        let mut found = None;
        let probe = self.table().find_or_vacancy(hash, |idx| {
            found = slab.get(idx).filter(|s| {
                // SAFETY: the writer; every slot the table names holds an entry.
                unsafe { s.with_key(|k| k == key) }
            });
            found.is_some()
        });
        probe.map(|(pos, idx)| (pos, idx, found.unwrap_or_else(|| self.slot(idx))))
    }

    /// Whether the slot a bucket names holds `key`, for the writer's probes.
    fn holds<'k, Q>(&self, key: &'k Q) -> impl FnMut(u32) -> bool + use<'a, 'k, K, V, Q>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let slab = &self.shared.slab;
        move |idx| {
            slab.get(idx).is_some_and(|s| {
                // SAFETY: the writer; every slot the table names holds an entry.
                unsafe { s.with_key(|k| k.borrow() == key) }
            })
        }
    }

    /// Whether slot `idx` has a deadline the clock has reached. `now` is only called when the
    /// slot has a deadline.
    fn is_expired(&self, idx: u32, now: impl FnOnce() -> u64) -> bool {
        self.shared.expired(idx, self.slot(idx), now)
    }

    /// [`insert_as`](Self::insert_as) for a fill, as the unit tests write it.
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert(
        &mut self,
        hash: u64,
        key: K,
        value: V,
        weight: u32,
        expires_at: u64,
        now: u64,
        hash_of: &impl Fn(&K) -> u64,
    ) -> bool {
        let admit = Admit::Policy;
        self.insert_as(admit, hash, key, value, weight, expires_at, now, hash_of)
    }

    /// Stores `value` under `key`, replacing any previous value, then evicts until the shard fits
    /// its capacity. A value heavier than the whole shard is not stored (and any old value of the
    /// key is removed). Returns whether the value is stored when the call returns.
    ///
    /// `admit` says whether the eviction this insert makes may remove the entry it stores. A fill
    /// ([`Admit::Policy`]: a save under a lease, a load) leaves it to the policy, and in a full
    /// shard a new key with no history is usually refused at once (the small queue reserves no
    /// capacity). An explicit write ([`Admit::Keep`]: `Cache::insert`) never is, so a `get` right
    /// after finds it (later writes may evict it as the policy decides); without that, a
    /// write-through insert of a new key into a full cache was refused by admission before the
    /// caller could read it back.
    ///
    /// The entry goes into a fresh slot, published by one store into the table; a replaced entry's
    /// slot is retired. A value of at most a word that needs no drop replaces an entry without a
    /// deadline in place instead (see [`replace_in_place`](Self::replace_in_place)). `hash_of`
    /// must be the hash function `hash` came from: eviction and table rebuilds use it to hash the
    /// keys of other entries.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert_as(
        &mut self,
        admit: Admit,
        hash: u64,
        key: K,
        value: V,
        weight: u32,
        expires_at: u64,
        now: u64,
        hash_of: &impl Fn(&K) -> u64,
    ) -> bool {
        if u64::from(weight) > self.w.capacity {
            self.w.sketch.add(hash, 1);
            if let Some((pos, idx)) = self.find(hash, &key) {
                self.notify(idx, RemovalCause::Replaced);
                self.remove_at(pos, idx);
            }
            return false;
        }
        // Everything that may rebuild the table (and run the caller's `Hash`, which may panic)
        // happens before the key is looked up, so its bucket stays where it is found, and before
        // a slot is taken.
        self.ensure_room(hash_of);
        // Two tails, each with only what it needs live across the rest of the write: a replacing
        // write carries the old slot and its neighbours (looked up once, for the prefetch and
        // the relinking), a new key its queue and vacancy.
        let (pos, empty) = match self.find_or_vacancy(hash, &key) {
            Ok((pos, old, old_slot)) => {
                if Slot::<K, V>::IN_PLACE && expires_at == 0 && !old_slot.timed() {
                    return self
                        .replace_in_place(admit, old, old_slot, value, weight, now, hash_of);
                }
                let old = self.linked_at(old, old_slot);
                return self.replace_linked(
                    admit, pos, old, key, value, weight, expires_at, now, hash_of,
                );
            }
            Err(vacancy) => vacancy,
        };
        self.w.sketch.add(hash, 1);
        // A ghost hit goes to the main queue if there is room or it passes the ghost admission;
        // otherwise it starts over in the small queue.
        let ghost_hit = self.w.ghost.contains(hash);
        self.count_new_key(ghost_hit);
        let readers = self.readers;
        if self.w.climber.new_key(|| readers.lookups()) {
            self.w
                .climber
                .feed_models(|drained, batch| readers.drain_samples(drained, batch));
        }
        if self.w.climber.take_forget() {
            self.w.forget_left = self.w.main.len;
        }
        let state = if ghost_hit
            && (self.w.main.weight + u64::from(weight) <= self.main_capacity()
                || self.admit_ghost(hash, hash_of))
        {
            self.w.ghost.remove(hash);
            MAIN
        } else if admit == Admit::Policy && self.faces_admission_at_once(weight, expires_at, now) {
            // What `evict_one` decides for it at the head of the small queue, alone.
            if !self.promotes_from_small(hash, weight, 0, false, now, hash_of) {
                // Refused: exactly what storing it in the small queue and evicting it again
                // would have done, without publishing an entry no read would see.
                self.w.ghost.push(hash);
                self.w.evictions += 1;
                self.notify_entry(&key, &value, RemovalCause::Size);
                return false;
            }
            MAIN
        } else {
            SMALL
        };
        let Some((idx, new_slot)) = self.alloc_filled(key, value, weight, expires_at) else {
            return false;
        };
        self.table().replace(pos, hash, idx);
        self.w.used += usize::from(empty);
        self.link_back(state, idx);
        self.fit(admit, idx, new_slot, now, hash_of)
    }

    /// The rest of [`insert_as`](Self::insert_as) for a key whose entry is in `old`, found at
    /// table bucket `pos`. Always inlined: as a call of its own (ten arguments) a replacing
    /// write took 303.7 instructions an operation of the `replace` mix instead of 284.1.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn replace_linked(
        &mut self,
        admit: Admit,
        pos: usize,
        old: Linked<'a, K, V>,
        key: K,
        value: V,
        weight: u32,
        expires_at: u64,
        now: u64,
        hash_of: &impl Fn(&K) -> u64,
    ) -> bool {
        old.prefetch_neighbours();
        // A replacing write leaves the sketch alone: the key is cached, its hits are in its
        // slot's counter (which the new slot inherits), and the sketch's line is one more random
        // miss per write (issue 17). Only a new key is counted.
        let Some((idx, new_slot)) = self.alloc_filled(key, value, weight, expires_at) else {
            // No slot for the new value (`MAX_SLOT` slots are allocated or retired): the write
            // still happened, so the old value must go.
            self.notify_replaced(old.idx, now);
            self.remove_at(pos, old.idx);
            return false;
        };
        // The new slot takes the old one's place in its queue, with its hits.
        let old_slot = old.slot;
        let state = old_slot.state();
        new_slot
            .freq
            .store(old_slot.freq.load(Ordering::Relaxed), Ordering::Relaxed);
        let old_weight = old_slot.weight.load(Ordering::Relaxed);
        self.swap_links(&old, (idx, new_slot), state);
        let list = self.w.list_mut(state);
        list.weight = list.weight - u64::from(old_weight) + u64::from(weight);
        self.table().repoint(pos, old.idx, idx);
        self.notify_replaced(old.idx, now);
        // `retire_slot`, with the slot at hand.
        old_slot.retire();
        self.w.limbo.retire(old.idx);
        self.collect_if_batch();
        self.fit(admit, idx, new_slot, now, hash_of)
    }

    /// The rest of [`insert_as`](Self::insert_as) for a key whose entry is in slot `idx`, when
    /// the new value may overwrite the old one where it is ([`Slot::IN_PLACE`]: a value of at
    /// most a word that needs no drop, such as a `u64`) and neither has a deadline: the slot keeps
    /// its key, its place in its queue, its hits and its bucket, and only its value and weight
    /// change. A reader sees the old value or the new one, as when a fresh slot replaces the old
    /// one in the table; the write has already fenced the key's leases either way. Without it, a
    /// replacing `u64` write filled a fresh slot, relinked both queue neighbours, repointed the
    /// bucket and retired the old slot: 1.4x quick_cache's time at one thread (issue 17).
    /// Deadlines are left to the general path, which keeps a slot's deadline fixed while it is
    /// published.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn replace_in_place(
        &mut self,
        admit: Admit,
        idx: u32,
        slot: &'a Slot<K, V>,
        value: V,
        weight: u32,
        now: u64,
        hash_of: &impl Fn(&K) -> u64,
    ) -> bool {
        // The listener, if any, gets the old value before it is overwritten.
        self.notify_replaced(idx, now);
        let old_weight = slot.weight.load(Ordering::Relaxed);
        let list = self.w.list_mut(slot.state());
        list.weight = list.weight - u64::from(old_weight) + u64::from(weight);
        slot.weight.store(weight, Ordering::Relaxed);
        // SAFETY: `IN_PLACE`; the writer; the slot holds this key's entry.
        unsafe { slot.replace_value(value) };
        // Nothing retired, but the write counts for the next collection as a retirement would
        // (see `Writer::unretired`): with none, a batch retired before these writes (by a
        // flush, evictions, purges) waited for the next retiring write, however far off, and
        // so did the drop of its keys.
        self.w.unretired += 1;
        if self.w.limbo.pending() + self.w.unretired >= self.w.collect_at {
            self.collect_after_in_place();
        }
        self.fit(admit, idx, slot, now, hash_of)
    }

    /// A free slot holding the entry, not yet in a queue or the table; `None` past `MAX_SLOT`
    /// slots (see [`alloc`](Self::alloc)).
    #[inline(always)]
    fn alloc_filled(
        &mut self,
        key: K,
        value: V,
        weight: u32,
        expires_at: u64,
    ) -> Option<(u32, &'a Slot<K, V>)> {
        let idx = self.alloc()?;
        // Looked up once: the slab's segment table is behind a shared reference that every
        // relaxed store below could alias, so each `self.slot(..)` reloaded it (issue 17).
        let new_slot = self.slot(idx);
        // SAFETY: a slot from `alloc` is free and unreachable by readers.
        unsafe { new_slot.fill(key, value, weight, expires_at != 0) };
        if expires_at != 0 {
            self.shared.slab.set_deadline(idx, expires_at);
            self.record_limit(idx);
        }
        Some((idx, new_slot))
    }

    /// The end of an insert that stored slot `idx`: evicts until the shard fits its capacity and
    /// says whether the entry is still stored.
    #[inline(always)]
    fn fit(
        &mut self,
        admit: Admit,
        idx: u32,
        new_slot: &Slot<K, V>,
        now: u64,
        hash_of: &impl Fn(&K) -> u64,
    ) -> bool {
        if self.w.weight() > self.w.capacity || self.w.len() > self.w.max_entries {
            let keep = if admit == Admit::Keep { idx } else { NIL };
            self.evict_until_fits(now, keep, hash_of);
            // Eviction retires slots but never reuses them within an insert, so a slot still in
            // a queue holds this entry.
            return matches!(new_slot.state(), SMALL | MAIN);
        }
        // Nothing evicted: the entry is in the queue its caller linked it into (reading its
        // state back cost a replacing write five instructions, issue 17).
        debug_assert!(matches!(new_slot.state(), SMALL | MAIN));
        true
    }

    /// Slot `idx`, which is in a queue, with its queue neighbours, each looked up once.
    #[inline(always)]
    fn linked(&self, idx: u32) -> Linked<'a, K, V> {
        self.linked_at(idx, self.slot(idx))
    }

    /// [`linked`](Self::linked) of slot `idx`, which is `slot`.
    #[inline(always)]
    fn linked_at(&self, idx: u32, slot: &'a Slot<K, V>) -> Linked<'a, K, V> {
        let (prev, next) = (
            slot.prev.load(Ordering::Relaxed),
            slot.next.load(Ordering::Relaxed),
        );
        Linked {
            idx,
            slot,
            prev: (prev, (prev != NIL).then(|| self.slot(prev))),
            next: (next, (next != NIL).then(|| self.slot(next))),
        }
    }

    /// Whether a new entry of `weight` would be the first candidate of the eviction its own
    /// insert makes: it would enter an empty small queue of a shard it overfills (the small queue
    /// reserves no capacity), and its deadline would not have passed. `evict_one` would then take
    /// it from the small queue's head at once, with no room in the main queue and (a probation
    /// pool being empty) no one behind it: promoted if it passes admission, else dropped.
    fn faces_admission_at_once(&self, weight: u32, expires_at: u64, now: u64) -> bool {
        self.w.small.len == 0
            && u64::from(weight) > self.window()
            && self.w.weight() + u64::from(weight) > self.w.capacity
            && (expires_at == 0 || expires_at > now)
    }

    /// Whether the small queue's head, of `weight` and with `freq` hits since the policy last
    /// looked at it, goes to the main queue when eviction reaches it (`others_waiting`: other
    /// entries are behind it in the small queue). The small queue is a probation pool (see
    /// `evict_one`) or drains into the main queue while there is room; else admission decides,
    /// unless the duel has turned it off (`admits`): then every candidate goes.
    /// Used by `evict_one`, and by `insert_as` for a new entry that would be that head at once.
    fn promotes_from_small(
        &mut self,
        hash: u64,
        weight: u32,
        freq: u8,
        others_waiting: bool,
        now: u64,
        hash_of: &impl Fn(&K) -> u64,
    ) -> bool {
        let pool = self.pool();
        if freq > 0
            || if pool {
                others_waiting && self.w.sketch.estimate(hash) >= 2
            } else {
                self.w.main.weight + u64::from(weight) <= self.main_capacity()
            }
            || !self.admits()
        {
            return true;
        }
        if self.w.climber.large() {
            self.settle_main_head(now, hash_of);
        }
        self.admit_to_main(hash, hash_of)
    }

    /// A free slot: a freed one, or the next new one, allocating its segment (`ensure_room` made
    /// the table able to name it). `None` past `MAX_SLOT` slots.
    fn alloc(&mut self) -> Option<u32> {
        // (Only values that need dropping go to `dirty`; for the others this compiles away.)
        if let Some(idx) = Slot::<K, V>::NEEDS_DROP
            .then(|| self.w.dirty.pop())
            .flatten()
        {
            // The next write drops the entry of the next slot in `dirty`, whose line the write
            // before this one prefetched (unless a collection has just refilled `dirty`: then
            // this read waits for the line, once a batch): start loading what its value points
            // to (see `Slot::prefetch_value_target`), and the line of the slot after it.
            let dirty = &self.w.dirty;
            if let Some(&next) = dirty.last() {
                // SAFETY: the writer; a slot in `dirty` is retired and past its grace period.
                unsafe { self.slot(next).prefetch_value_target() };
            }
            if let Some(&after) = dirty.len().checked_sub(2).map(|i| &dirty[i]) {
                prefetch_slot(self.slot(after));
            }
            // Free before the entry's `Drop` runs: if it panics, the slot (which `Slot::clear`
            // marks `FREE` first) stays free rather than lost, and nothing has changed yet.
            self.w.free.push(idx);
            // SAFETY: retired (unlinked from the table and the queues) and past its grace period:
            // no read can reach it.
            unsafe { self.slot(idx).clear() };
            return self.w.free.pop();
        }
        if let Some(idx) = self.w.free.pop() {
            // The next write to this shard fills the next free slot: start loading it now (freed
            // thousands of writes ago, it is cold), so that its miss does not stall that write.
            if let Some(&next) = self.w.free.last() {
                prefetch_slot(self.slot(next));
            }
            return Some(idx);
        }
        let idx = self.w.next_slot;
        if idx > MAX_SLOT {
            return None;
        }
        self.shared.slab.ensure(idx);
        debug_assert!(self.table().names(idx));
        self.w.next_slot += 1;
        Some(idx)
    }

    /// Rebuilds the table ahead of an insert that may need a new bucket and a new slot: when one
    /// more bucket would fill it past three quarters (counting tombstones), larger if the entries
    /// need it, else the same size without tombstones; and when it cannot name the next new slot.
    fn ensure_room(&mut self, hash_of: &impl Fn(&K) -> u64) {
        let table = self.table();
        let names_next = !self.w.free.is_empty()
            || (Slot::<K, V>::NEEDS_DROP && !self.w.dirty.is_empty())
            || self.w.next_slot > MAX_SLOT
            || table.names(self.w.next_slot);
        if self.w.used < table.max_used() && names_next {
            return;
        }
        // After a rebuild at most 5/8 of the buckets are live, so tombstones have at least an
        // eighth of the table to fill before the next one.
        let buckets = ((self.w.len() + 1) * 8 / 5 + 1)
            .next_power_of_two()
            .max(MIN_BUCKETS);
        self.rebuild(buckets, hash_of);
    }

    /// Replaces the table with a new one of `buckets` buckets holding the same entries, and
    /// retires the old one.
    fn rebuild(&mut self, buckets: usize, hash_of: &impl Fn(&K) -> u64) {
        // A table names slots below twice its buckets: enough for every slot handed out and the
        // next one.
        let buckets = buckets.max(Table::buckets_to_name(self.w.next_slot as usize + 1));
        let new = Box::new(Table::new(buckets));
        // The entries are the linked slots: walking the slab in order reads them sequentially,
        // where walking the old table's buckets read them at random (a rebuild of a 2,048-entry
        // shard took ~15 ns per insert in a stream of misses; with the walk in slab order, less).
        let live = self.shared.slab.slots().take(self.w.next_slot as usize);
        for (idx, slot) in live.filter(|(_, slot)| matches!(slot.state(), SMALL | MAIN)) {
            // SAFETY: the writer; a linked slot holds an entry.
            new.insert_fresh(unsafe { slot.with_key(hash_of) }, idx);
        }
        self.w.used = self.w.len();
        let old = self.publish(new);
        self.retire_table(old);
    }

    /// Makes `new` the shard's table and returns the old one, for the caller to retire.
    fn publish(&mut self, new: Box<Table>) -> NonNull<Table> {
        self.shared.probe.publish(&new);
        // The old table is taken from the atomic, whose pointer came from `Box::into_raw` and
        // may free it, not from a shared reference to it (`self.table()`), which may not.
        // Relaxed: only the writer loads the table pointer (readers use `probe`).
        let old = self
            .shared
            .table
            .swap(Box::into_raw(new), Ordering::Relaxed);
        NonNull::new(old).expect("a shard's table pointer is never null")
    }

    /// Removes `key`. Inlined into the purge: most purges find nothing (I4), and a probe that
    /// finds nothing is a group or two of buckets, which two calls and their frames made about a
    /// third of (issue 17); the removal itself stays out of line.
    #[inline]
    pub(crate) fn remove<Q>(&mut self, hash: u64, key: &Q, now: u64) -> Removed
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        match self.table().find_for_writer(hash, self.holds(key)) {
            None => Removed::Absent,
            Some((pos, idx)) => self.remove_found(pos, idx, now),
        }
    }

    /// Removes the entry in slot `idx`, found at table bucket `pos` (by
    /// [`Shared::find_locked`]).
    #[inline(never)]
    pub(crate) fn remove_found(&mut self, pos: usize, idx: u32, now: u64) -> Removed {
        let expired = self.notify_removal(idx, now, RemovalCause::Purged);
        self.remove_at(pos, idx);
        if expired {
            Removed::Expired
        } else {
            Removed::Live
        }
    }

    /// Drops every entry and the policy's memory of past accesses: a new empty table is published
    /// and every entry retired.
    pub(crate) fn clear(&mut self) {
        // The same size: slots handed out before keep their numbers.
        let old = self.publish(Box::new(Table::new(self.table().buckets())));
        self.w.used = 0;
        // The shard is empty and consistent before any entry is dropped: every entry is unlinked
        // and retired first, and only then collected (which runs the entries' `Drop`). A `Drop`
        // that panicked while the queues still named retired slots left the shard hashing
        // dropped keys and dropping them twice.
        let queues = [
            std::mem::take(&mut self.w.small),
            std::mem::take(&mut self.w.main),
        ];
        for list in queues {
            let mut idx = list.head;
            while idx != NIL {
                let next = self.slot(idx).next.load(Ordering::Relaxed);
                self.notify(idx, RemovalCause::Flushed);
                self.defer_slot(idx);
                idx = next;
            }
        }
        self.w.ghost.clear();
        self.w.sketch.clear();
        self.w.climber.clear();
        // (The entries a forget was for are gone.)
        self.w.forget_left = 0;
        (self.w.new_keys, self.w.ghost_hits, self.w.returns_rare) = (0, 0, false);
        self.w.last_ghost_hits = 0;
        // The refill is a fill: its small queue drains to the main queue's back, in order.
        self.w.evictions_at_clear = self.w.evictions;
        // With the entries, which then go in the same batch when no read stands in the way.
        self.retire_table(old);
        // A flush drops what it freed now, not when writes reuse the slots (see `collect`).
        self.drop_dirty();
    }

    /// The weight the small queue may hold before its head faces admission: the climber's window
    /// (see `policy::climber`), except none while seven in eight misses are ghost hits (a loop
    /// larger than the cache, where a window is capacity the loop cannot use: a climbing window
    /// cost the loop at 100k entries 4-30 points; at one in two, a recency trace whose keys come
    /// back once never got one). A window of zero in a large shard while returns are rare is the
    /// probation pool (see [`pool`](Self::pool)); when the pool ran in every large shard, a small
    /// window instead cost Zipf s = 0.7 at 100k entries 3.8 points (keys that waited in it passed
    /// to the main queue without admission).
    fn window(&self) -> u64 {
        if self.w.last_ghost_hits > GHOST_RATE_PERIOD / 8 * 7 {
            0
        } else {
            self.w.climber.window()
        }
    }

    /// Whether the small queue is a probation pool (see `evict_one`): in a large shard while
    /// returns are rare and the duel gives the shard no window. The pool used to run whatever
    /// the duel found, its window and its verdicts on admission ignored, which left the real-like
    /// traces at 128k entries (shards of 16,000 on a 2-core box) 3.9-10.2 points behind the best
    /// of LRU, moka and quick_cache, now 0-0.94 (BENCHMARKS.md section 2).
    ///
    /// In a duel the larger half's window is above zero every other epoch, so the pool of keys
    /// that filled the shard lasts until its first such epoch, when it moves to the main queue
    /// for the room there, in one eviction (work in proportion to the pool, under the shard's
    /// lock, once); after that a shard's pool is what new keys add to it in an epoch at zero.
    fn pool(&self) -> bool {
        self.w.climber.large() && self.w.returns_rare && self.w.climber.window() == 0
    }

    /// Whether candidates face admission: unless the duel has turned it off (see
    /// `policy::climber`) in a shard that runs a window. Where `window` holds none (a probation
    /// pool, a loop), admission stays: the duel's evidence came from shards with windows, and
    /// without this rule the large shards of a 100k-entry cache lost 0.22 points on Zipf s = 0.9
    /// at `--seed 7` (`cargo bench --bench hit_ratio -- --seed 7`).
    fn admits(&self) -> bool {
        self.w.climber.admits() || self.window() == 0
    }

    /// What the main queue may hold: the capacity less the window.
    fn main_capacity(&self) -> u64 {
        self.w.capacity.saturating_sub(self.window())
    }

    /// Counts a new key for the ghost-hit rate that `admit_ghost` adapts to.
    fn count_new_key(&mut self, ghost_hit: bool) {
        // In a cache of several shards, the cache's rate (see `Climber::cache_returns`).
        match self.w.climber.cache_returns(ghost_hit, GHOST_RATE_PERIOD) {
            CacheReturns::Alone => {}
            CacheReturns::Unchanged => return,
            CacheReturns::Rate(ghost_hits) => {
                self.w.returns_rare = ghost_hits <= RARE_GHOST_HITS;
                self.w.last_ghost_hits = ghost_hits;
                return;
            }
        }
        self.w.new_keys += 1;
        self.w.ghost_hits += u32::from(ghost_hit);
        if self.w.new_keys == GHOST_RATE_PERIOD {
            self.w.returns_rare = self.w.ghost_hits <= RARE_GHOST_HITS;
            self.w.last_ghost_hits = self.w.ghost_hits;
            (self.w.new_keys, self.w.ghost_hits) = (0, 0);
        }
    }

    /// Evicts until the shard fits its capacity and holds at most `max_entries` entries, never
    /// choosing the entry at index `keep` (`NIL` for none).
    ///
    /// Out of line, and called only when the shard is over: a write that replaces a value of the
    /// same weight, or fills a shard with room, evicts nothing, and the eviction inlined into
    /// `insert_as` cost every write registers (spills across the whole function).
    #[inline(never)]
    fn evict_until_fits(&mut self, now: u64, keep: u32, hash_of: &impl Fn(&K) -> u64) {
        self.w.climber.filled();
        while (self.w.weight() > self.w.capacity || self.w.len() > self.w.max_entries)
            && self.evict_one(now, keep, hash_of)
        {}
    }

    /// Removes one entry chosen by S3-FIFO (see `policy`). Returns false when the shard is empty.
    ///
    /// The small queue has no capacity of its own: once the shard is full, a new entry faces
    /// admission within the insert that brought it. A reserved window holds the latest misses,
    /// which a loop larger than the cache never reads again before they leave, so it is capacity
    /// lost: 1 entry of a 250-entry shard (0.5 %, rounded up) cost 0.36 pp on the hit-ratio
    /// harness's loop at 1k entries and 6 of 1,250 cost 0.45 pp at 10k, which is what the loop
    /// trailed moka by. On Zipf the window was worth at most 0.12 pp (s = 0.7).
    ///
    /// In a large shard while returns are rare and its window is zero (see `pool`, and there for
    /// how long the pool of the fill lasts in a duel), the small queue is a probation pool instead:
    /// its entries do not move into the main queue for the room there, so the keys that filled the
    /// shard without a hit wait in it, oldest first, and each new key joins them at the back rather
    /// than facing admission at once. An entry leaves the pool for the main queue with a hit, with
    /// two counts in the sketch while others wait behind it, or by admission; else it is evicted,
    /// oldest first. Nothing refills the pool, so the keys seen once hold the capacity until keys
    /// seen twice take it over, as under LFU (which, measured with exact counts, hits 94.39 % on
    /// the harness's Zipf s = 1.2 at 100k entries; quick_cache 94.38 %). With the room rule those
    /// keys stayed in the main queue until the CLOCK hand reached them, and new keys were refused
    /// meanwhile: Zipf s = 1.2 at 100k entries (12,500 a shard) went 94.333 -> 94.390 %, s = 1.0
    /// 80.137 -> 80.205, s = 0.9 68.201 -> 68.248, s = 0.7 43.310 -> 43.346, scans 63.644 ->
    /// 63.768, the loop 88.376 -> 88.229 (without the rare-returns condition, 86.011). In every
    /// shard (1k and 10k entries too), it cost the loop at 1k 0.004 pp, which put it behind moka.
    ///
    /// The entry at index `keep` is looked past: alone in the small queue (as a new entry
    /// usually is, since nothing stays there) eviction takes from the main queue instead; at the
    /// head of a queue with others in it, it moves to that queue's tail. Returns false when
    /// nothing but `keep` is left.
    fn evict_one(&mut self, now: u64, keep: u32, hash_of: &impl Fn(&K) -> u64) -> bool {
        loop {
            let (small, main) = (self.w.small, self.w.main);
            // The small queue's head leaves first once the queue outgrows the window, or when
            // the main queue has nothing else to give.
            let from_small = small.len > 0
                && !(small.head == keep && small.len == 1)
                && (small.weight > self.window()
                    || main.len == 0
                    || (main.head == keep && main.len == 1));
            let (state, idx) = if from_small {
                (SMALL, small.head)
            } else {
                (MAIN, self.w.main.head)
            };
            if idx == NIL {
                return false;
            }
            if idx == keep {
                if self.w.list_mut(state).len < 2 {
                    return false;
                }
                self.unlink(idx);
                self.link_back(state, idx);
                continue;
            }
            let slot = self.slot(idx);
            let hash = self.hash_at(idx, hash_of);
            let (weight, mut freq) = (
                slot.weight.load(Ordering::Relaxed),
                slot.freq.load(Ordering::Relaxed),
            );
            if !from_small {
                freq = self.hand_hits(freq);
            }
            if self.is_expired(idx, || now) {
                self.notify(idx, RemovalCause::Expired);
                self.remove_hashed(idx, hash);
                self.w.expirations += 1;
                return true;
            }
            // Decided before `idx` is unlinked: admission runs the caller's `Hash` on other keys,
            // and if it panics the entry must still be in its queue.
            let promote = from_small
                && self.promotes_from_small(hash, weight, freq, small.len > 1, now, hash_of);
            let at_front = promote && freq == 0 && self.only_for_room(weight);
            self.unlink(idx);
            if from_small {
                if self.w.climber.window() > 0 {
                    self.w.climber.departed(freq > 0);
                }
                if promote {
                    self.w.sketch.add(hash, freq);
                    slot.freq.store(0, Ordering::Relaxed);
                    if at_front {
                        self.link_front(MAIN, idx);
                    } else {
                        self.link_back(MAIN, idx);
                    }
                    continue;
                }
                self.w.ghost.push(hash);
            } else if freq > 0 {
                self.second_chance(idx, hash, freq);
                continue;
            }
            self.notify(idx, RemovalCause::Size);
            self.drop_unlinked(idx, hash);
            self.w.evictions += 1;
            return true;
        }
    }

    /// Whether a small-queue head of `weight` without hits that `promotes_from_small` sends to
    /// the main queue goes there only for the room it has, and so joins the main queue at its
    /// head, next to be evicted, rather than at its back: once the shard has evicted (the fill is
    /// over: then the whole small queue drains into the main queue, oldest first), while
    /// admission is on (without it the queues are meant to be near LRU) and the window is 3.1 %
    /// of the capacity or more, outside a probation pool.
    ///
    /// Where that room comes from: the duel's halves swap every epoch (see `policy::climber`),
    /// and a shard whose window shrinks by 3.1 % moved as many of its small queue's oldest
    /// entries, never read, into the main queue with no admission, where at the back they held
    /// capacity for a whole CLOCK round (the main queue of a 50k-entry cache turns over about
    /// twice in a 1M-access trace); the shard's next larger window then evicted as many entries
    /// from the main queue's head, read or not. Traced on `cdn` at 50k entries (`cargo bench
    /// --bench hit_ratio -- --realish 1000000`): 84,740 entries left the small queue for the
    /// main queue unread (81,974 of them still with admission made impossible: room, not
    /// admission) over 430,146 misses; quick_cache 0.7 (a replay of its policy hit the same
    /// 57.48 %) lets only entries read in its cold queue, and ghost hits, into its hot queue,
    /// and its extra hits were objects read five times or more, again after 100k accesses or
    /// more, that this cache had evicted. At the head, the next larger window evicts them first:
    /// `cdn` at 20k and 50k entries +0.25 to +0.73 points at seeds 42, 1 and 7. Below a window
    /// of 3.1 % (the duel at rest, halves of 0 and 1.56 %) it made the larger half cheaper and
    /// the duel climbed on stationary skew (Zipf s = 0.7 at 10k entries -1.7 points); with
    /// admission off, `kv` at 50k entries lost up to 0.2.
    fn only_for_room(&self, weight: u32) -> bool {
        // (A probation pool runs no window, so the window's bound leaves it out.)
        self.w.evictions > self.w.evictions_at_clear
            && self.admits()
            && self.window() * 32 >= self.w.capacity
            && self.w.main.weight + u64::from(weight) <= self.main_capacity()
    }

    /// Gives the main queue's head a [`second_chance`](Self::second_chance) while it has hits to
    /// spend, as `evict_one` would, so that its head is the entry that evicting from it would
    /// take: one without hits since the policy last looked, or an expired one. Admission then
    /// weighs a candidate against that entry rather than against a hot one that would have
    /// survived anyway. Only in large shards: at 12,500 entries a shard (100k-entry caches) it
    /// gained 0.08 pp on Zipf s = 0.9, 0.05 on s = 1.0 and 0.02 on scans; at 250-1,250 (1k and
    /// 10k entries) it lost 0.3-1.3 pp on every Zipf column, being too lenient there.
    fn settle_main_head(&mut self, now: u64, hash_of: &impl Fn(&K) -> u64) {
        loop {
            let idx = self.w.main.head;
            if idx == NIL || self.is_expired(idx, || now) {
                return;
            }
            // (An entry without hits stays the head, and counts as a visit only when the hand
            // takes it.)
            let freq = self.slot(idx).freq.load(Ordering::Relaxed);
            if freq == 0 {
                return;
            }
            let freq = self.hand_hits(freq);
            let hash = self.hash_at(idx, hash_of);
            self.unlink(idx);
            self.second_chance(idx, hash, freq);
        }
    }

    /// The hits the CLOCK hand counts for the main queue's head, which has `freq`: all of them,
    /// but at most one for the entries that were in the main queue when the duel last reported
    /// a fall of the hit ratio without admission (`Climber::take_forget`). Their hits were earned
    /// on the workload that just ended: each spends its second chance at this visit, so the ones
    /// the new workload does not read leave at the hand's next round, as under LRU, rather than
    /// after up to `MAX_FREQ` rounds. Applied as the hand passes rather than by a walk over the
    /// queue at the fall (no pause under the lock): the first `forget_left` visits after a forget
    /// are to about those entries, in order. About: an entry removed meanwhile, or moved past
    /// uncounted as `keep`, lets one newer entry be capped instead, and the shard takes the
    /// forget at its first new key after reading the duel's state (every `READ_EVERY` new keys),
    /// not at the epoch's end; none of which changes more than a few entries of a round.
    ///
    /// Found on a working set that moves on (`moving` in `benches/traces`; 70 % of a 30k-key
    /// Zipf set replaced every 150k accesses): with admission off, the old set's hot keys (three
    /// hits each) held the main queue of a 20k-entry cache for up to three of the hand's rounds,
    /// each about 100k accesses there, so the cache trailed LRU by 2-4 points (up to 5.2 over
    /// 10k accesses) over the second 50k accesses after every move. Measured (BENCHMARKS.md,
    /// section 2): `moving` and `shift` at 20k entries +0.11 to +0.51 points over seeds and
    /// lengths, 50k +0.12 to +0.29, no other column lower by more than 0.11. Forgetting every hit
    /// instead gained twice as much there and cost the `storage` trace at 50k entries 0.2-0.3.
    fn hand_hits(&mut self, freq: u8) -> u8 {
        if self.w.forget_left == 0 {
            return freq;
        }
        self.w.forget_left -= 1;
        freq.min(1)
    }

    /// CLOCK's second chance for an unlinked main-queue entry with hits left (`freq > 0`): one
    /// hit is folded into the sketch and spent, and the entry goes to the back of the main queue.
    fn second_chance(&mut self, idx: u32, hash: u64, freq: u8) {
        self.w.sketch.add(hash, 1);
        self.slot(idx).freq.store(freq - 1, Ordering::Relaxed);
        self.link_back(MAIN, idx);
    }

    /// TinyLFU admission from the small queue: whether `hash` was requested clearly more often
    /// than the main queue's next victim, so that taking its place is likely to pay. "Clearly":
    /// by two counts. A candidate was just counted for the miss that brought it in and the victim
    /// not yet for its current round, so by one count they are even; admitting on that margin let
    /// a loop slightly larger than the cache churn the main queue (19-64 % hits at some
    /// capacities, against 90 %; `shard::tests::a_loop_larger_than_the_shard_keeps_most_of_it`).
    fn admit_to_main(&self, hash: u64, hash_of: &impl Fn(&K) -> u64) -> bool {
        self.counts(hash, hash_of)
            .is_none_or(|(candidate, victim)| candidate > victim + 1)
    }

    /// Admission for a ghost hit (a key evicted from the small queue that came back): every one
    /// while the duel has turned admission off (`admits`), else by how often misses are
    /// ghost hits (over the last `GHOST_RATE_PERIOD` new keys):
    /// - rarely (Zipf: 0.5-16 % on the hit-ratio harness): a return is news, so a tie with the
    ///   victim admits (its return was just counted), and so does anything before the sketch's
    ///   first halving, which lets a big cache warm up as fast as without admission (without the
    ///   waiver, 100k-entry Zipf columns lost ~1 pp). Ties gained 0.2-0.7 pp at Zipf s = 0.7 in
    ///   shards of 250-1,250 entries; in large ones (12,500) they cost 0.23 pp there and 0.02 on
    ///   s = 0.9 and the loop 0.14, so a large shard's ghost hit must count one more than the
    ///   victim;
    /// - often (a loop larger than the cache: every key that misses comes back): returns are no
    ///   news and every key counts about the same, so admission takes two counts more than the
    ///   victim, as from the small queue, and is never waived. Ties or the waiver there churn the
    ///   main queue (the waiver alone cost the loop 0.1 pp at 10k entries, ties 0.8-2 pp; with
    ///   conservative sketch updates a one-count margin still lost 0.3-0.5 pp).
    fn admit_ghost(&self, hash: u64, hash_of: &impl Fn(&K) -> u64) -> bool {
        if !self.admits() {
            true
        } else if self.w.returns_rare {
            !self.w.sketch.warmed()
                || self
                    .counts(hash, hash_of)
                    .is_none_or(|(candidate, victim)| {
                        candidate >= victim + u8::from(self.w.climber.large())
                    })
        } else {
            self.admit_to_main(hash, hash_of)
        }
    }

    /// The counts of `hash` and of the main queue's next victim (`None` when the main queue is
    /// empty). The victim's hits since the policy last looked at it are not in the sketch yet, so
    /// they count too.
    fn counts(&self, hash: u64, hash_of: &impl Fn(&K) -> u64) -> Option<(u8, u8)> {
        let head = self.w.main.head;
        if head == NIL {
            return None;
        }
        let victim = self.w.sketch.estimate(self.hash_at(head, hash_of))
            + self.slot(head).freq.load(Ordering::Relaxed);
        Some((self.w.sketch.estimate(hash), victim))
    }

    /// Links `idx` at the head of queue `state`: the entry its eviction takes next.
    fn link_front(&mut self, state: u8, idx: u32) {
        let head = self.w.list_mut(state).head;
        let slot = self.slot(idx);
        slot.set_state(state);
        slot.prev.store(NIL, Ordering::Relaxed);
        slot.next.store(head, Ordering::Relaxed);
        if head != NIL {
            self.slot(head).prev.store(idx, Ordering::Relaxed);
        }
        let weight = u64::from(slot.weight.load(Ordering::Relaxed));
        let list = self.w.list_mut(state);
        if list.tail == NIL {
            list.tail = idx;
        }
        list.head = idx;
        list.len += 1;
        list.weight += weight;
    }

    fn link_back(&mut self, state: u8, idx: u32) {
        let tail = self.w.list_mut(state).tail;
        let slot = self.slot(idx);
        slot.set_state(state);
        slot.prev.store(tail, Ordering::Relaxed);
        slot.next.store(NIL, Ordering::Relaxed);
        if tail != NIL {
            self.slot(tail).next.store(idx, Ordering::Relaxed);
        }
        let weight = u64::from(slot.weight.load(Ordering::Relaxed));
        let list = self.w.list_mut(state);
        if list.head == NIL {
            list.head = idx;
        }
        list.tail = idx;
        list.len += 1;
        list.weight += weight;
    }

    fn unlink(&mut self, idx: u32) {
        let linked = self.linked(idx);
        let state = linked.slot.state();
        let weight = u64::from(linked.slot.weight.load(Ordering::Relaxed));
        self.splice(state, &linked, (linked.next.0, linked.prev.0));
        let list = self.w.list_mut(state);
        list.len -= 1;
        list.weight -= weight;
    }

    /// Puts slot `new` where slot `old` is in queue `state` (weights are the caller's business).
    /// Takes each slot looked up already, `old` with its neighbours.
    fn swap_links(
        &mut self,
        old: &Linked<'a, K, V>,
        (new, new_slot): (u32, &Slot<K, V>),
        state: u8,
    ) {
        new_slot.set_state(state);
        new_slot.prev.store(old.prev.0, Ordering::Relaxed);
        new_slot.next.store(old.next.0, Ordering::Relaxed);
        self.splice(state, old, (new, new));
    }

    /// Points the neighbours of `linked` (in queue `state`) past it: the previous one's next link
    /// (or the head) to `after`, the next one's back link (or the tail) to `before`.
    fn splice(&mut self, state: u8, linked: &Linked<'a, K, V>, (after, before): (u32, u32)) {
        if let Some(prev) = linked.prev.1 {
            prev.next.store(after, Ordering::Relaxed);
        }
        if let Some(next) = linked.next.1 {
            next.prev.store(before, Ordering::Relaxed);
        }
        let list = self.w.list_mut(state);
        if list.head == linked.idx {
            list.head = after;
        }
        if list.tail == linked.idx {
            list.tail = before;
        }
    }

    /// Unlinks and retires the entry in slot `idx`, found at table bucket `pos`.
    fn remove_at(&mut self, pos: usize, idx: u32) {
        self.unlink(idx);
        self.w.used -= self.table().remove(pos);
        self.retire_slot(idx);
    }

    /// Unlinks and retires a linked entry whose key hashes to `hash`.
    fn remove_hashed(&mut self, idx: u32, hash: u64) {
        self.unlink(idx);
        self.drop_unlinked(idx, hash);
    }

    /// Takes an unlinked entry whose key hashes to `hash` out of the table and retires its slot.
    fn drop_unlinked(&mut self, idx: u32, hash: u64) {
        let table = self.table();
        // `hash` was recomputed from the key: a `Hash` that does not give the same hash as when
        // the entry was stored (a logic error of the caller's) puts its bucket elsewhere, and a
        // bucket must never outlive its slot, so the whole table is searched then.
        let pos = table
            .find_for_writer(hash, |i| i == idx)
            .map(|(pos, _)| pos)
            .or_else(|| table.position_of(idx));
        if let Some(pos) = pos {
            self.w.used -= table.remove(pos);
        }
        self.retire_slot(idx);
    }

    fn retire_slot(&mut self, idx: u32) {
        self.defer_slot(idx);
        self.collect_if_batch();
    }

    /// Marks an unlinked slot retired and queues it for reclamation, without collecting: runs no
    /// user code.
    fn defer_slot(&mut self, idx: u32) {
        self.slot(idx).retire();
        self.w.limbo.retire(idx);
    }

    /// Retires a table the shard no longer uses and frees it right away if no read can be in
    /// it: a table is as large as thousands of slots, and rebuilds are rare (the table doubled,
    /// or an eighth of it became tombstones), so it does not wait for a batch of slots to gather.
    /// (Waiting, a cache filled without reads kept every table it outgrew: 4 bytes an entry.)
    fn retire_table(&mut self, table: NonNull<Table>) {
        self.w.limbo.retire_dropped(RetiredTable(table));
        // The first forms a batch with the table and publishes its epoch, the second frees it if
        // no read began before that.
        self.collect();
        self.collect();
    }

    /// Once a batch of retired items has gathered, frees what is past its grace period.
    #[inline]
    fn collect_if_batch(&mut self) {
        if self.w.limbo.pending() >= self.w.collect_at {
            self.collect();
        }
    }

    /// [`collect`](Self::collect) once in-place writes have made a batch: unless nothing is
    /// retired or waiting to be dropped, when there is nothing to free (and a collection would
    /// read every reader's record for nothing).
    #[cold]
    #[inline(never)]
    fn collect_after_in_place(&mut self) {
        if self.w.limbo.is_empty() && self.w.dirty.is_empty() {
            self.w.unretired = 0;
        } else {
            self.collect();
        }
    }

    /// Frees what no read can reach any more: a slot's entry is dropped and the slot reused.
    ///
    /// A batch of retired slots is freed thousands of writes after it was retired, so touching
    /// its slots here was a cache miss per replacing write (callgrind's cache model: 0.73 a write
    /// on the `replace` mix), and dropping a batch of values at once freed hundreds of
    /// allocations in a row, which overflowed the allocator's per-thread cache (glibc keeps 7 a
    /// size): the frees took its slow path, and so did the allocations of the next values
    /// (~100 instructions a write of `Arc<[u8; 128]>`). So the slots are not touched here:
    /// - a slot whose key and value have no drop glue (`u64`s) goes to the free list as it is,
    ///   still marked `RETIRED` (`fill` overwrites its plain bytes);
    /// - any other goes to `dirty`, and the write that reuses it drops its entry first (`alloc`):
    ///   one free beside each allocation. What no write reused by the next collection is dropped
    ///   then (with prefetching): an entry is dropped at most one batch later than before.
    ///
    /// A collection that finds the waiting batch held back by a read that began before its epoch
    /// (a reader preempted inside `get`, or running a slow `V::clone`) frees nothing, and the
    /// next one is tried only once an eighth of a batch more has been retired, not at the next
    /// retirement: each try locks the registry and reads every thread's record (a line other
    /// threads write), and on a loaded box, with a reader descheduled for milliseconds, retrying
    /// at every write made 12-27x as many collections as batches (`replace` `u64`, 2 threads;
    /// issue 17). The retired items wait either way: once the read ends, the waiting batch is
    /// freed at the next try, at most an eighth of a batch of retirements later (a whole batch
    /// later, the writes in between took 5,000-30,000 more fresh, cold slots in 2M writes), and
    /// what was retired meanwhile forms the next batch. This holds whether or not anything is
    /// pending: a table retired by a flush or a rebuild forms a batch of its own (see
    /// `retire_table`), and held back with nothing pending it is tried again a step later too.
    ///
    /// Under loom a collection drops what it frees at once (`DROP_AT_COLLECTION`). Out of line:
    /// it runs once a batch, and up to eight times a batch while a read holds one back.
    #[inline(never)]
    fn collect(&mut self) {
        self.w.unretired = 0;
        self.drop_dirty();
        let (slab, free, dirty) = (&self.shared.slab, &mut self.w.free, &mut self.w.dirty);
        // The batch's slots move in bulk (a pop, a match and a push per slot cost 13.7
        // instructions a replacing write, issue 17); its tables are dropped by the batch.
        let held_back = self.w.limbo.collect(self.readers, |slots| {
            if DROP_AT_COLLECTION {
                while let Some(idx) = slots.pop() {
                    // As `drop_dirty` does.
                    free.push(idx);
                    // SAFETY: retired (unlinked from the table and the queues) and past its
                    // grace period: no read can reach it.
                    unsafe { slab.slot(idx).clear() };
                }
            } else if Slot::<K, V>::NEEDS_DROP {
                dirty.append(slots);
            } else {
                free.append(slots);
            }
        });
        // Held back: tried again an eighth of a batch later. Else the pending items formed the
        // next batch (or there were none), which is tried once a batch more has been retired.
        // `pending` counts slots, not tables: a retired table is pending only from its
        // `retire_table`, which collects at once, to the next collection, so between two
        // collections counting it or not moves both sides of the check alike.
        self.w.collect_at = if held_back {
            self.w.limbo.pending() + retry_step(self.w.batch)
        } else {
            self.w.batch
        };
        #[cfg(test)]
        {
            self.w.held_back += usize::from(held_back);
        }
    }

    /// Drops the entries of every slot in `dirty` and frees the slots.
    #[inline(never)]
    fn drop_dirty(&mut self) {
        /// How many slots ahead of the one being dropped are prefetched.
        const AHEAD: usize = 8;
        let (slab, free, dirty) = (&self.shared.slab, &mut self.w.free, &mut self.w.dirty);
        for &idx in dirty.iter().rev().take(AHEAD) {
            prefetch_slot(slab.slot(idx));
        }
        while let Some(idx) = dirty.pop() {
            if let Some(ahead) = dirty.len().checked_sub(AHEAD) {
                prefetch_slot(slab.slot(dirty[ahead]));
            }
            // Half as far ahead, what its value points to: by then the slot's line has had four
            // drops' time to arrive (the first four drops get no such prefetch).
            if let Some(near) = dirty.len().checked_sub(AHEAD / 2) {
                // SAFETY: the writer; a slot in `dirty` is retired and past its grace period.
                unsafe { slab.slot(dirty[near]).prefetch_value_target() };
            }
            // Free before the entry's `Drop` runs: if it panics, the slot (which `Slot::clear`
            // marks `FREE` first) is reused rather than lost; the rest of its entry leaks, and
            // the slots not reached yet stay in `dirty`.
            free.push(idx);
            // SAFETY: retired (unlinked from the table and the queues) and past its grace
            // period: no read can reach it.
            unsafe { slab.slot(idx).clear() };
        }
    }

    /// Checks every structural invariant; panics with a description of the first one broken.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn validate(&self, hash_of: &impl Fn(&K) -> u64) {
        let mut seen = 0usize;
        for (state, list) in [(SMALL, self.w.small), (MAIN, self.w.main)] {
            let (mut idx, mut prev, mut len, mut weight) = (list.head, NIL, 0usize, 0u64);
            while idx != NIL {
                let slot = self.slot(idx);
                assert_eq!(slot.state(), state, "slot {idx} is in the wrong queue");
                assert_eq!(
                    slot.prev.load(Ordering::Relaxed),
                    prev,
                    "slot {idx} has a broken back link"
                );
                let found = self.slot(idx).weight.load(Ordering::Relaxed);
                let hash = self.hash_at(idx, hash_of);
                // SAFETY: the writer; the slot holds an entry.
                let reachable = unsafe { slot.with_key(|k| self.find(hash, k)) };
                assert_eq!(
                    reachable.map(|(_, i)| i),
                    Some(idx),
                    "slot {idx} is not reachable through the table"
                );
                len += 1;
                weight += u64::from(found);
                prev = idx;
                idx = slot.next.load(Ordering::Relaxed);
            }
            assert_eq!(list.tail, prev, "queue {state} tail is wrong");
            assert_eq!(list.len, len, "queue {state} length is wrong");
            assert_eq!(list.weight, weight, "queue {state} weight is wrong");
            seen += len;
        }
        let table = self.table();
        assert_eq!(
            self.shared.probe.load(),
            Probe::of(table),
            "readers probe another table than the writer's"
        );
        assert_eq!(table.live().count(), seen, "table and queues disagree");
        assert!(
            self.w.used >= seen && self.w.used < table.buckets(),
            "used count is wrong"
        );
        let retired: Vec<u32> = self.w.limbo.iter().copied().collect();
        for &i in &retired {
            assert_eq!(
                self.slot(i).state(),
                RETIRED,
                "retired slot {i} is not marked so"
            );
        }
        for &i in &self.w.dirty {
            assert_eq!(
                self.slot(i).state(),
                RETIRED,
                "slot {i} to drop is not marked retired"
            );
        }
        for &i in &self.w.free {
            // A slot whose contents need no drop is freed without being touched (`collect`).
            let state = self.slot(i).state();
            assert!(
                state == FREE || (state == RETIRED && !Slot::<K, V>::NEEDS_DROP),
                "free slot {i} holds something"
            );
        }
        let handed_out = self.w.next_slot as usize;
        assert_eq!(
            handed_out,
            seen + retired.len() + self.w.free.len() + self.w.dirty.len(),
            "slots are lost or counted twice"
        );
        assert!(self.w.weight() <= self.w.capacity, "shard is over capacity");
    }
}

impl<K, V> std::fmt::Debug for Shard<'_, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("len", &self.w.len())
            .field("weight", &self.w.weight())
            .field("capacity", &self.w.capacity)
            .finish_non_exhaustive()
    }
}

/// A shard with readers of its own, for single-threaded use by the unit tests and the fuzz
/// targets: reads go through a `ReadGuard` as the cache's do.
#[cfg(any(test, fuzzing))]
pub(crate) struct OwnedShard<K, V> {
    shared: Shared<K, V>,
    pub(crate) writer: Writer,
    readers: Readers,
}

#[cfg(any(test, fuzzing))]
impl<K: Eq, V> OwnedShard<K, V> {
    pub(crate) fn new(capacity: u64, expected_entries: usize) -> Self {
        Self {
            shared: Shared::new(expected_entries),
            writer: Writer::new(capacity, expected_entries),
            readers: Readers::new(),
        }
    }

    /// The writer's view.
    pub(crate) fn view(&mut self) -> Shard<'_, K, V> {
        Shard::new(&self.shared, &mut self.writer, &self.readers)
    }

    /// A read, as `Cache::get` makes it.
    pub(crate) fn get<Q>(&self, hash: u64, key: &Q, now: impl FnOnce() -> u64) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
        V: Clone,
    {
        let guard = self.readers.enter();
        self.shared.get(&guard, hash, key, now, V::clone)
    }

    /// A read that records no access, as `Cache::contains_key` makes it.
    pub(crate) fn contains<Q>(&self, hash: u64, key: &Q, now: u64) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let guard = self.readers.enter();
        self.shared.contains(&guard, hash, key, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestShard = OwnedShard<u64, u64>;

    /// The shard tests use each `u64` key as its own hash.
    fn id(k: &u64) -> u64 {
        *k
    }

    /// A multiplicative hash that spreads small keys over the table.
    fn mix(k: &u64) -> u64 {
        k.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// A full shard of keys `0..capacity`, each read often enough to be in the main queue: a new
    /// key has no reason to be admitted.
    fn popular(capacity: u64) -> TestShard {
        let mut s = TestShard::new(capacity, capacity as usize);
        for _ in 0..4 {
            for k in 0..capacity {
                if s.get(mix(&k), &k, || 1).is_none() {
                    s.view().insert(mix(&k), k, k, 1, 0, 1, &mix);
                }
            }
        }
        s
    }

    fn filled(capacity: u64, keys: impl IntoIterator<Item = u64>) -> TestShard {
        let mut s = TestShard::new(capacity, capacity as usize);
        for k in keys {
            let mut v = s.view();
            v.insert(k, k, k * 10, 1, 0, 1, &id);
            v.validate(&id);
        }
        s
    }

    /// The hit ratio of cache-aside over a loop of 1.1x `capacity` keys, over rounds 40-59 of 60.
    fn loop_hit_ratio(capacity: u64) -> f64 {
        let hash = |k: &u64| k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (k >> 7);
        let mut s = TestShard::new(capacity, capacity as usize);
        let keys = capacity * 11 / 10;
        let (mut hits, mut lookups) = (0u64, 0u64);
        for round in 0..60 {
            for k in 0..keys {
                let hit = s.get(hash(&k), &k, || 1).is_some();
                if !hit {
                    s.view().insert(hash(&k), k, k, 1, 0, 1, &hash);
                }
                if round >= 40 {
                    lookups += 1;
                    hits += u64::from(hit);
                }
            }
        }
        s.view().validate(&hash);
        hits as f64 / lookups as f64
    }

    #[test]
    fn deadlines_are_only_allocated_once_used_and_follow_slot_reuse() {
        let mut s = TestShard::new(4, 4);
        s.view().insert(1, 1, 1, 1, 0, 1, &id);
        assert!(!s.shared.slab.has_deadlines());
        s.view().insert(2, 2, 2, 1, 9, 1, &id);
        assert!(s.shared.slab.has_deadlines());
        let (_, timed) = s.view().find(2, &2).unwrap();
        assert_eq!(s.view().remove(2, &2, 1), Removed::Live);
        // Churn until key 2's slot is freed, then make it the next one handed out.
        let mut k = 10;
        while !s.writer.free.contains(&timed) {
            assert!(s.view().insert_as(Admit::Keep, k, k, k, 1, 0, 1, &id));
            k += 1;
        }
        let at = s.writer.free.iter().position(|&i| i == timed).unwrap();
        let last = s.writer.free.len() - 1;
        s.writer.free.swap(at, last);
        assert!(s.view().insert_as(Admit::Keep, 7, 7, 7, 1, 0, 1, &id));
        assert_eq!(s.view().find(7, &7).map(|(_, i)| i), Some(timed));
        // Its old deadline (9) counts neither for readers nor for the writer.
        assert_eq!(s.get(7, &7, || 100), Some(7));
        assert_eq!(s.view().remove(7, &7, 100), Removed::Live);
        s.view().validate(&id);
    }

    #[test]
    fn insert_get_remove() {
        let mut s = filled(10, 0..5);
        assert_eq!(s.get(3, &3, || 1), Some(30));
        assert_eq!(s.view().remove(3, &3, 1), Removed::Live);
        assert_eq!(s.view().remove(3, &3, 1), Removed::Absent);
        assert_eq!(s.get(3, &3, || 1), None);
        assert_eq!(s.writer.len(), 4);
        s.view().validate(&id);
    }

    #[test]
    fn a_replaced_value_takes_the_old_ones_place_and_hits() {
        let mut s = filled(10, 0..5);
        assert_eq!(s.get(2, &2, || 1), Some(20));
        assert!(s.view().insert(2, 2, 21, 1, 0, 1, &id));
        assert_eq!(s.get(2, &2, || 1), Some(21));
        let v = s.view();
        v.validate(&id);
        // Same queue position (third of five) and the hit it had before.
        let (_, idx) = v.find(2, &2).unwrap();
        assert_eq!(v.slot(idx).freq.load(Ordering::Relaxed), 2);
        let mut order = Vec::new();
        let mut i = v.w.small.head;
        while i != NIL {
            order.push(v.hash_at(i, &id));
            i = v.slot(i).next.load(Ordering::Relaxed);
        }
        assert_eq!(order, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_word_sized_value_is_replaced_in_place_unless_a_deadline_is_involved() {
        #[cfg(all(
            target_arch = "x86_64",
            target_pointer_width = "64",
            not(miri),
            not(leasecache_loom)
        ))]
        const {
            assert!(Slot::<u64, u64>::IN_PLACE)
        };
        let mut s = filled(10, 0..5);
        assert_eq!(s.get(2, &2, || 1), Some(20));
        let (_, before) = s.view().find(2, &2).unwrap();
        let next_slot = s.writer.next_slot;
        // A new weight too: the queue's weight follows it.
        assert!(s.view().insert(2, 2, 21, 3, 0, 1, &id));
        assert_eq!(s.get(2, &2, || 1), Some(21));
        let v = s.view();
        v.validate(&id);
        let (_, after) = v.find(2, &2).unwrap();
        let in_place = Slot::<u64, u64>::IN_PLACE;
        assert_eq!(after == before, in_place, "the same slot iff in place");
        assert_eq!(v.w.limbo.len(), usize::from(!in_place), "retired nothing");
        assert_eq!(v.w.next_slot, next_slot + u32::from(!in_place));
        assert_eq!(v.slot(after).weight.load(Ordering::Relaxed), 3);
        assert_eq!(v.w.small.weight, 7);
        assert_eq!(v.slot(after).freq.load(Ordering::Relaxed), 2);
        // A deadline on either side takes a fresh slot: a published slot's deadline never moves.
        let mut v = s.view();
        assert!(v.insert(3, 3, 31, 1, 9, 1, &id));
        let (_, timed) = v.find(3, &3).unwrap();
        assert!(v.insert(3, 3, 32, 1, 0, 1, &id));
        let (_, untimed) = v.find(3, &3).unwrap();
        assert_ne!(timed, untimed);
        assert!(v.insert(3, 3, 33, 1, 9, 1, &id));
        assert_ne!(v.find(3, &3).unwrap().1, untimed);
        v.validate(&id);
        assert_eq!(s.get(3, &3, || 1), Some(33));
        // A value that is not a word with no drop glue always takes a fresh slot.
        const { assert!(!Slot::<u64, u128>::IN_PLACE && !Slot::<u64, std::sync::Arc<u8>>::IN_PLACE) };
    }

    #[test]
    fn word_values_replaced_in_place_under_concurrent_reads_are_read_whole_and_in_order() {
        // One writer replaces each key's value in place with ever larger versions, both halves
        // equal; readers on other threads must see each value whole and never go back.
        const KEYS: u64 = 8;
        const VERSIONS: u64 = 100_000;
        let cache: crate::Cache<u64, u64> =
            crate::Cache::builder().max_capacity(64).shards(1).build();
        let value = |k: u64, version: u64| {
            let low = (version * KEYS + k) & 0xffff_ffff;
            low << 32 | low
        };
        for k in 0..KEYS {
            cache.insert(k, value(k, 0));
        }
        std::thread::scope(|s| {
            let cache = &cache;
            s.spawn(move || {
                for version in 1..=VERSIONS {
                    for k in 0..KEYS {
                        cache.insert(k, value(k, version));
                    }
                }
            });
            for _ in 0..2 {
                s.spawn(move || {
                    let mut seen = [0u64; KEYS as usize];
                    while seen[KEYS as usize - 1] >> 32 != value(KEYS - 1, VERSIONS) >> 32 {
                        for k in 0..KEYS {
                            let v = cache.get(&k).expect("never evicted");
                            assert_eq!(v >> 32, v & 0xffff_ffff, "torn value {v:#x}");
                            assert_eq!((v & 0xffff_ffff) % KEYS, k, "another key's value");
                            assert!(v >= seen[k as usize], "went back: {v:#x}");
                            seen[k as usize] = v;
                        }
                    }
                });
            }
        });
    }

    #[test]
    fn retired_slots_are_freed_in_batches_and_reused() {
        // Every value shares one `Arc`: its count is the number of values not yet dropped.
        let value = std::sync::Arc::new(());
        let mut s = OwnedShard::<u64, std::sync::Arc<()>>::new(64, 64);
        let batch = s.writer.batch as u64;
        for k in 0..64 + 3 * batch {
            s.view().insert(k % 64, k % 64, value.clone(), 1, 0, 1, &id);
        }
        s.view().validate(&id);
        // Every replacement retired a slot; all but the last batch or two were freed and reused,
        // and their values dropped, except those freed by the last collection and not reused yet.
        let waiting = s.writer.limbo.len();
        assert!(waiting <= 2 * batch as usize);
        assert!(s.writer.dirty.len() <= batch as usize);
        assert!((s.writer.next_slot as u64) < 64 + 3 * batch);
        assert_eq!(
            std::sync::Arc::strong_count(&value),
            1 + 64 + waiting + s.writer.dirty.len()
        );
        drop(s);
        assert_eq!(std::sync::Arc::strong_count(&value), 1);
    }

    /// Fills `s` with keys 0..64, then runs `write` on it while another thread is inside a read
    /// that began before it; the read ends when `write` returns.
    fn full_shard_written_during_a_read<V: From<u64> + Send + Sync>(
        s: &mut OwnedShard<u64, V>,
        write: impl FnOnce(Shard<'_, u64, V>),
    ) {
        for k in 0..64 {
            s.view().insert(k, k, k.into(), 1, 0, 1, &id);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|scope| {
            let readers = &s.readers;
            scope.spawn(move || {
                let guard = readers.enter();
                tx.send(()).unwrap();
                done_rx.recv().unwrap();
                drop(guard);
            });
            rx.recv().unwrap(); // the other thread is reading
            write(Shard::new(&s.shared, &mut s.writer, &s.readers));
            done_tx.send(()).unwrap();
        });
    }

    #[test]
    fn a_batch_held_back_by_a_read_is_tried_again_an_eighth_of_a_batch_later() {
        // `u128` values: each replacing write retires a slot (a `u64` is replaced in place).
        let mut s = OwnedShard::<u64, u128>::new(64, 64);
        let batch = s.writer.batch;
        let step = retry_step(batch);
        assert_eq!((batch, step), (32, 4));
        // The first batch forms after the read began, so the read holds it back.
        full_shard_written_during_a_read(&mut s, |mut v| {
            for k in 0..5 * batch as u64 {
                v.insert(k % 64, k % 64, k.into(), 1, 0, 1, &id);
            }
        });
        // The batch formed at the 32nd retirement, was first tried at the 64th, then every 4th up
        // to the 160th: 25 tries (at every retirement, it was 97).
        let held_back = s.writer.held_back;
        assert_eq!(held_back, (4 * batch - batch) / step + 1);
        assert!(s.writer.free.is_empty());
        // The read ended: the next try, a step later, frees the batch.
        for k in 0..step as u64 {
            s.view().insert(k % 64, k % 64, k.into(), 1, 0, 1, &id);
        }
        assert_eq!(s.writer.held_back, held_back);
        assert_eq!(s.writer.free.len(), batch);
        s.view().validate(&id);
    }

    #[test]
    fn a_flush_held_back_by_a_read_is_tried_again_an_eighth_of_a_batch_later() {
        // A flush retires every entry and the table, which `retire_table` makes a batch at once:
        // held back by a read with nothing else pending, it used to wait for a whole batch more
        // of retirements, which an emptied shard may not see for a long time.
        // `u128` values: each replacing write retires a slot (a `u64` is replaced in place).
        let mut s = OwnedShard::<u64, u128>::new(64, 64);
        let step = retry_step(s.writer.batch);
        full_shard_written_during_a_read(&mut s, |mut v| v.clear());
        // The 64 entries and the old table wait for the read that began before them.
        assert_eq!(s.writer.limbo.len(), 65);
        // The read ended. A step of retirements (replacing writes of new keys) later, they are freed.
        for k in 0..step as u64 {
            s.view().insert(100 + k, 100 + k, k.into(), 1, 0, 1, &id);
        }
        for k in 0..step as u64 {
            s.view().insert(100 + k, 100 + k, k.into(), 1, 0, 1, &id);
        }
        assert!(
            s.writer.limbo.len() <= step,
            "{} still waiting",
            s.writer.limbo.len()
        );
        s.view().validate(&id);
    }

    #[test]
    fn a_flush_held_back_by_a_read_is_freed_by_in_place_writes_too() {
        // The same, the writes after the read replacing `u64` values in place, which retire
        // nothing: they count towards the next collection as retirements would.
        let mut s = OwnedShard::<u64, u64>::new(64, 64);
        let step = retry_step(s.writer.batch);
        full_shard_written_during_a_read(&mut s, |mut v| v.clear());
        assert_eq!(s.writer.limbo.len(), 65);
        s.view().insert(100, 100, 0, 1, 0, 1, &id);
        for k in 0..2 * step as u64 {
            s.view().insert(100, 100, k, 1, 0, 1, &id);
        }
        assert_eq!(s.writer.next_slot, 65, "replaced in place");
        assert!(
            s.writer.limbo.is_empty(),
            "{} still waiting",
            s.writer.limbo.len()
        );
        s.view().validate(&id);
    }

    #[test]
    fn keys_retired_before_in_place_writes_are_dropped_during_them() {
        // Keys with drop glue, `u64` values: purged entries wait in limbo, then in `dirty`; a
        // stream of in-place replaces (no retirements, no slot reused) must still drop them.
        type Key = (u64, std::sync::Arc<()>);
        let tracker = std::sync::Arc::new(());
        let hash = |k: &Key| k.0;
        let mut s = OwnedShard::<Key, u64>::new(64, 64);
        let batch = s.writer.batch as u64;
        for k in 0..32 {
            s.view().insert(k, (k, tracker.clone()), k, 1, 0, 1, &hash);
        }
        let kept = (1000, std::sync::Arc::new(()));
        s.view().insert(1000, kept.clone(), 0, 1, 0, 1, &hash);
        for k in 0..32 {
            let key = (k, std::sync::Arc::new(()));
            assert_eq!(s.view().remove(k, &key, 1), Removed::Live);
        }
        assert_eq!(
            std::sync::Arc::strong_count(&tracker),
            33,
            "retired, not dropped yet"
        );
        let next_slot = s.writer.next_slot;
        for v in 0..4 * batch {
            s.view().insert(1000, kept.clone(), v, 1, 0, 1, &hash);
        }
        assert_eq!(s.writer.next_slot, next_slot, "replaced in place");
        assert_eq!(
            std::sync::Arc::strong_count(&tracker),
            1,
            "the purged keys were dropped"
        );
        assert_eq!(s.get(1000, &kept, || 1), Some(4 * batch - 1));
        s.view().validate(&hash);
    }

    #[test]
    fn a_freed_entry_is_dropped_by_the_write_that_reuses_its_slot() {
        // One free beside each allocation (issue 17): a batch of frees at once overflowed the
        // allocator's per-thread cache. Every value shares one `Arc`: its count is the number of
        // values not yet dropped.
        let value = std::sync::Arc::new(());
        let mut s = OwnedShard::<u64, std::sync::Arc<()>>::new(64, 64);
        let batch = s.writer.batch;
        let mut k = 0;
        while s.writer.dirty.is_empty() {
            s.view().insert(k % 64, k % 64, value.clone(), 1, 0, 1, &id);
            k += 1;
        }
        assert_eq!(s.writer.dirty.len(), batch, "a whole batch was freed");
        for _ in 0..batch - 1 {
            let dirty = s.writer.dirty.len();
            s.view().insert(k % 64, k % 64, value.clone(), 1, 0, 1, &id);
            k += 1;
            // The write took a slot to reuse, dropped its old entry and retired the replaced one.
            assert_eq!(s.writer.dirty.len(), dirty - 1);
            assert_eq!(
                std::sync::Arc::strong_count(&value),
                1 + 64 + s.writer.limbo.len() + s.writer.dirty.len()
            );
            s.view().validate(&id);
        }
    }

    #[test]
    fn freed_entries_no_write_reuses_are_dropped_by_the_next_collection() {
        let value = std::sync::Arc::new(());
        let mut s = OwnedShard::<u64, std::sync::Arc<()>>::new(1 << 20, 64);
        let batch = s.writer.batch as u64;
        for k in 0..4 * batch {
            s.view().insert(k, k, value.clone(), 1, 0, 1, &id);
        }
        // Removals retire slots and reuse none: the first collections leave their batches to
        // drop, and each later one drops what the one before it left.
        for k in 0..4 * batch {
            assert_eq!(s.view().remove(k, &k, 1), Removed::Live);
            let left = s.writer.limbo.len() + s.writer.dirty.len();
            assert!(s.writer.dirty.len() <= batch as usize);
            assert_eq!(
                std::sync::Arc::strong_count(&value),
                1 + (4 * batch - k - 1) as usize + left
            );
        }
        s.view().validate(&id);
        // A flush drops everything it can free at once.
        s.view().clear();
        assert!(s.writer.dirty.is_empty());
        assert_eq!(
            std::sync::Arc::strong_count(&value),
            1 + s.writer.limbo.len()
        );
    }

    #[test]
    fn values_with_drop_glue_replaced_under_concurrent_reads_are_read_whole_and_dropped_once() {
        // Freed entries are dropped by the write that reuses their slot (`alloc`), while readers
        // run on other threads: a slot dropped or refilled under a reader would show up as a
        // value of another key or a torn one, and a drop run twice or never in the count.
        use std::sync::atomic::AtomicI64;
        static LIVE: AtomicI64 = AtomicI64::new(0);
        struct Counted([u64; 4]);
        impl Counted {
            fn new(v: u64) -> Self {
                LIVE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Self([v; 4])
            }
        }
        impl Clone for Counted {
            fn clone(&self) -> Self {
                LIVE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Self(self.0)
            }
        }
        impl Drop for Counted {
            fn drop(&mut self) {
                LIVE.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        const KEYS: u64 = 64;
        {
            let cache: crate::Cache<u64, Counted> =
                crate::Cache::builder().max_capacity(256).shards(1).build();
            std::thread::scope(|s| {
                for w in 0..2u64 {
                    let cache = &cache;
                    s.spawn(move || {
                        for i in 0..20_000u64 {
                            let k = (i * 7 + w) % KEYS;
                            if i % 16 == 0 {
                                cache.purge(&k);
                            } else {
                                cache.insert(k, Counted::new(k + KEYS * i));
                            }
                        }
                    });
                }
                for _ in 0..2 {
                    let cache = &cache;
                    s.spawn(move || {
                        for i in 0..40_000u64 {
                            let k = i % KEYS;
                            if let Some(v) = cache.get(&k) {
                                assert!(v.0.iter().all(|&x| x == v.0[0]), "torn value {:?}", v.0);
                                assert_eq!(v.0[0] % KEYS, k, "another key's value for {k}");
                            }
                        }
                    });
                }
            });
        }
        assert_eq!(
            LIVE.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "drops != values"
        );
    }

    #[test]
    fn slots_of_entries_without_drop_glue_are_freed_untouched_and_reused() {
        // `u128` values: no drop glue, and too wide to be replaced in place.
        let mut s = OwnedShard::<u64, u128>::new(64, 64);
        let batch = s.writer.batch as u64;
        for k in 0..64 + 3 * batch {
            s.view().insert(k % 64, k % 64, k.into(), 1, 0, 1, &id);
        }
        assert!(s.writer.dirty.is_empty(), "nothing to drop");
        assert!(!s.writer.free.is_empty());
        // Freed without being touched: still marked retired (validate accepts it).
        let free = s.writer.free.clone();
        let v = s.view();
        for i in free {
            assert_eq!(v.slot(i).state(), RETIRED);
        }
        v.validate(&id);
        assert!(
            (s.writer.next_slot as u64) < 64 + 3 * batch,
            "slots are reused"
        );
        for k in 0..64 {
            // The last value written to key `k`.
            let last = (64 + 3 * batch - 1 - k) / 64 * 64 + k;
            assert_eq!(s.get(k, &k, || 1), Some(last.into()));
        }
    }

    #[test]
    fn tables_grow_and_drop_their_tombstones() {
        let mut s = TestShard::new(10_000, 10_000);
        let hash = mix;
        for k in 0..5_000 {
            s.view().insert(hash(&k), k, k, 1, 0, 1, &hash);
        }
        let buckets = s.view().table().buckets();
        assert!(
            buckets >= 5_000 * 4 / 3,
            "{buckets} buckets for 5,000 entries"
        );
        for round in 0..4u64 {
            for k in 0..5_000 {
                let k = k + round * 5_000;
                assert_eq!(s.view().remove(hash(&k), &k, 1), Removed::Live);
                let k = k + 5_000;
                s.view().insert(hash(&k), k, k, 1, 0, 1, &hash);
            }
            s.view().validate(&hash);
        }
        assert_eq!(
            s.view().table().buckets(),
            buckets,
            "churn alone does not grow the table"
        );
        for k in 20_000..25_000 {
            assert_eq!(s.get(hash(&k), &k, || 1), Some(k));
        }
    }

    /// Small enough for Miri (`cargo +nightly miri test --lib -- shard::tests::small_`), which
    /// checks that a replaced table is freed through the pointer that owns it: one derived from
    /// a shared reference to the table (as `publish` once took it) may not free it.
    #[test]
    fn small_rebuilds_free_each_replaced_table_once() {
        let hash = mix;
        let mut s = TestShard::new(64, 8);
        for k in 0..40 {
            s.view().insert(hash(&k), k, k, 1, 0, 1, &hash);
        }
        assert!(s.view().table().buckets() >= 64, "the table was rebuilt");
        assert_eq!(s.writer.limbo.len(), 0, "every replaced table was freed");
        // Under a read, the next replaced table waits for it.
        let guard = s.readers.enter();
        Shard::new(&s.shared, &mut s.writer, &s.readers).clear();
        assert_eq!(
            s.writer.limbo.len(),
            40 + 1,
            "the entries and the table wait"
        );
        drop(guard);
        s.view().clear();
        assert_eq!(s.writer.limbo.len(), 0);
        s.view().validate(&hash);
    }

    #[test]
    fn tables_outgrown_without_reads_are_freed_at_once() {
        // Filling a cache nobody reads yet rebuilds its table a dozen times; each old table
        // must go when it is replaced, not wait for a batch of retired slots that never comes.
        let hash = mix;
        let mut s = TestShard::new(100_000, 100_000);
        for k in 0..50_000 {
            s.view().insert(hash(&k), k, k, 1, 0, 1, &hash);
        }
        assert!(s.view().table().buckets() >= 65_536);
        assert_eq!(s.writer.limbo.len(), 0, "outgrown tables are kept");
        // With a read under way, the replaced table waits for it, then goes with the next one.
        let guard = s.readers.enter();
        let mut v = Shard::new(&s.shared, &mut s.writer, &s.readers);
        for k in 50_000..100_000 {
            v.insert(hash(&k), k, k, 1, 0, 1, &hash);
        }
        assert_eq!(v.w.limbo.len(), 1, "a table freed under a read");
        drop(guard);
        s.view().clear();
        assert_eq!(s.writer.limbo.len(), 0);
    }

    #[test]
    fn a_fill_refused_by_admission_is_never_published() {
        // A full shard of popular keys: a new key that enters an empty small queue is refused.
        let hash = mix;
        let mut s = popular(64);
        // The first new key goes through the small queue: the keys there move to the main
        // queue and it is refused after them, leaving the small queue empty.
        assert!(!s.view().insert(hash(&999), 999, 999, 1, 0, 1, &hash));
        assert_eq!(s.writer.small.len, 0);
        let (slots, retired, evictions) =
            (s.writer.next_slot, s.writer.limbo.len(), s.writer.evictions);
        for k in 1000..1100 {
            assert!(!s.view().insert(hash(&k), k, k, 1, 0, 1, &hash));
            assert!(
                s.writer.ghost.contains(hash(&k)),
                "a refused key is remembered"
            );
        }
        // No slot was taken, nothing was retired, and each refusal counts as an eviction.
        assert_eq!(s.writer.next_slot, slots);
        assert_eq!(s.writer.limbo.len(), retired);
        assert_eq!(s.writer.evictions, evictions + 100);
        s.view().validate(&hash);
        // A fill already past its deadline is no refusal but an expiration, as eviction would
        // count it, and its key is not remembered as evicted.
        let expirations = s.writer.expirations;
        assert!(!s.view().insert(hash(&1500), 1500, 0, 1, 5, 5, &hash));
        assert_eq!(s.writer.expirations, expirations + 1);
        assert_eq!(s.writer.evictions, evictions + 100);
        assert!(!s.writer.ghost.contains(hash(&1500)));
        // An explicit write of the same kind of key is stored all the same.
        assert!(
            s.view()
                .insert_as(Admit::Keep, hash(&2000), 2000, 0, 1, 0, 1, &hash)
        );
    }

    /// With admission off (the duel's verdict on a recency-heavy trace, see
    /// `policy::climber::AdmissionDuel`) and a window, what admission refuses goes to the main
    /// queue: keys leaving the small queue of a full shard of popular keys, and a ghost hit that
    /// counts less than the victim. With no window (a probation pool, a loop) admission stays.
    #[test]
    fn without_admission_new_keys_and_ghost_hits_enter_the_main_queue() {
        let hash = mix;
        let mut s = popular(64);
        assert!(!s.view().insert(hash(&999), 999, 999, 1, 0, 1, &hash));
        s.writer.climber.set_admits_for_test(false);
        assert!(!s.view().admit_ghost(hash(&999), &hash), "no window");
        s.writer.climber.set_window_for_test(8);
        assert!(s.view().admit_ghost(hash(&999), &hash));
        // Twice the window: the first eight left the small queue for the main queue.
        for k in 1000..1016 {
            assert!(s.view().insert(hash(&k), k, k, 1, 0, 1, &hash));
        }
        for k in 1000..1016 {
            assert!(s.get(hash(&k), &k, || 1).is_some(), "key {k}");
        }
        s.view().validate(&hash);
    }

    /// Without admission, a workload that moves on: a full shard holds 64 keys of the old
    /// workload, the last 32 in its main queue with three hits; the new one reads 48 keys of its
    /// own a round and brings 4 more never read again. How many of the old workload's 32 popular
    /// keys are left after `rounds` rounds, with or without a forget (`hand_hits`) as the new
    /// workload begins; and the visits the forget has left then.
    fn popular_left_after(rounds: u64, forget: bool) -> (usize, usize) {
        let hash = mix;
        let mut s = popular(64);
        // The fill is over (a new key was refused): the popular keys are in the main queue,
        // oldest first, where three more reads give the newer half three hits.
        assert!(!s.view().insert(hash(&999), 999, 999, 1, 0, 1, &hash));
        for _ in 0..3 {
            for k in 32..64 {
                assert!(s.get(hash(&k), &k, || 1).is_some());
            }
        }
        s.writer.climber.set_admits_for_test(false);
        s.writer.climber.set_window_for_test(8);
        if forget {
            s.writer.climber.forget_for_test();
        }
        let mut once = 10_000;
        for _ in 0..rounds {
            for k in 1000..1048 {
                if s.get(hash(&k), &k, || 1).is_none() {
                    s.view().insert(hash(&k), k, k, 1, 0, 1, &hash);
                }
            }
            for k in once..once + 4 {
                s.view().insert(hash(&k), k, k, 1, 0, 1, &hash);
            }
            once += 4;
        }
        s.view().validate(&hash);
        let left = (32..64).filter(|k| s.get(hash(k), k, || 1).is_some());
        (left.count(), s.writer.forget_left)
    }

    /// A forget leaves each entry of the main queue at most one hit, so the old workload's
    /// popular keys leave as under LRU, rather than after up to three rounds of the CLOCK hand.
    #[test]
    fn a_forget_lets_the_old_workloads_keys_go_as_under_lru() {
        // LRU would evict the 32 keys never read again and 20 of the popular ones in the first
        // round (52 misses), and 4 more in the second.
        assert_eq!(popular_left_after(2, true).0, 8);
        let without = popular_left_after(2, false).0;
        assert_eq!(without, 32, "every popular key had hits to spend");
        // The forget is spent once the hand has passed the old entries.
        assert_eq!(popular_left_after(4, true), (0, 0));
    }

    /// Settling the main queue's head (admission's look at its true victim) is a visit of the
    /// CLOCK hand too: with a forget pending, the head it passes keeps one hit, not three.
    #[test]
    fn settling_the_main_queues_head_spends_a_pending_forget() {
        let settled_hits = |forget: bool| {
            let hash = mix;
            let mut s = popular(64);
            // The fill is over: keys 0..64 in the main queue, oldest first, key 0 with three
            // hits at its head.
            assert!(!s.view().insert(hash(&999), 999, 999, 1, 0, 1, &hash));
            for _ in 0..3 {
                assert!(s.get(hash(&0), &0, || 1).is_some());
            }
            if forget {
                s.writer.forget_left = s.writer.main.len;
            }
            let mut v = s.view();
            v.settle_main_head(1, &hash);
            // Key 0 spent a hit and went to the back; key 1, without hits, is the head.
            let tail = v.w.main.tail;
            (v.slot(tail).freq.load(Ordering::Relaxed), v.w.forget_left)
        };
        assert_eq!(settled_hits(true), (0, 63));
        assert_eq!(settled_hits(false), (2, 0));
    }

    /// A forget not yet spent when the shard is cleared is dropped with the entries it was for.
    #[test]
    fn a_clear_drops_a_pending_forget() {
        let hash = mix;
        let mut s = popular(64);
        // The fill ends (its keys move to the main queue), then the forget is taken.
        assert!(!s.view().insert(hash(&999), 999, 999, 1, 0, 1, &hash));
        s.writer.climber.forget_for_test();
        assert!(!s.view().insert(hash(&998), 998, 998, 1, 0, 1, &hash));
        assert_eq!(s.writer.forget_left, 64);
        s.view().clear();
        assert_eq!(s.writer.forget_left, 0);
    }

    /// A full shard of popular keys whose window goes from `large` to `small` and back, with
    /// admission on or off: whether the four never-read keys that the shrink moved to the main
    /// queue for its room were the ones the regrowth evicted, every popular key staying.
    fn room_moves_evicted_first(large: u64, small: u64, admits: bool) -> bool {
        let hash = mix;
        let mut s = popular(64);
        // The fill is over: a new key was refused.
        assert!(!s.view().insert(hash(&999), 999, 999, 1, 0, 1, &hash));
        s.writer.climber.set_admits_for_test(admits);
        // The larger window: new keys wait in the small queue, the main queue makes room.
        s.writer.climber.set_window_for_test(large);
        for k in 1000..1000 + large {
            assert!(s.view().insert(hash(&k), k, k, 1, 0, 1, &hash));
        }
        assert_eq!(s.writer.small.len as u64, large);
        // The smaller window: the small queue's oldest, never read, go to the main queue for
        // the room there.
        s.writer.climber.set_window_for_test(small);
        s.view().insert(hash(&2000), 2000, 2000, 1, 0, 1, &hash);
        assert!((1000..1004).all(|k| s.contains(hash(&k), &k, 1)));
        let popular: Vec<u64> = (0..64).filter(|k| s.contains(hash(k), k, 1)).collect();
        // The larger window again: the main queue makes room for four new keys.
        s.writer.climber.set_window_for_test(large);
        for k in 3000..3004 {
            s.view().insert(hash(&k), k, k, 1, 0, 1, &hash);
        }
        s.view().validate(&hash);
        (1000..1004).all(|k| !s.contains(hash(&k), &k, 1))
            && popular.iter().all(|k| s.contains(hash(k), k, 1))
    }

    #[test]
    fn entries_moved_to_the_main_queue_only_for_its_room_are_evicted_first() {
        assert!(room_moves_evicted_first(8, 4, true));
        // Not below a window of 3.1 % (2 of 64), nor without admission: at the back.
        assert!(!room_moves_evicted_first(5, 1, true));
        assert!(!room_moves_evicted_first(8, 4, false));
    }

    /// The keys of the main queue, from its head (the next to be evicted).
    fn main_keys(s: &mut TestShard) -> Vec<u64> {
        let v = s.view();
        let mut keys = Vec::new();
        let mut idx = v.w.main.head;
        while idx != NIL {
            let slot = v.slot(idx);
            // SAFETY: the writer; a linked slot holds an entry.
            keys.push(unsafe { slot.with_key(|k| *k) });
            idx = slot.next.load(Ordering::Relaxed);
        }
        keys
    }

    /// A full shard of 64 popular keys (the fill over: a new key was refused), with a window of 8
    /// holding keys 1000-1007, oldest first.
    fn eight_in_a_window() -> TestShard {
        let mut s = popular(64);
        assert!(!s.view().insert(mix(&999), 999, 999, 1, 0, 1, &mix));
        s.writer.climber.set_window_for_test(8);
        for k in 1000..1008 {
            assert!(s.view().insert(mix(&k), k, k, 1, 0, 1, &mix));
        }
        s
    }

    /// An entry read while it waited in the small queue goes to the main queue for its hits, not
    /// only for room: it joins the back, the unread ones moved with it the head.
    #[test]
    fn a_small_queue_entry_read_there_joins_the_main_queues_back() {
        let hash = mix;
        let mut s = eight_in_a_window();
        assert!(s.get(hash(&1000), &1000, || 1).is_some());
        s.writer.climber.set_window_for_test(4);
        s.view().insert(hash(&2000), 2000, 2000, 1, 0, 1, &hash);
        s.view().validate(&hash);
        let main = main_keys(&mut s);
        assert!((1001..1008).contains(&main[0]), "{main:?}");
        assert_eq!(main.last(), Some(&1000), "{main:?}");
    }

    /// A small-queue head that admission takes when the main queue has no room goes there on
    /// its counts, not for room: it joins the back.
    #[test]
    fn a_candidate_admitted_by_its_counts_joins_the_main_queues_back() {
        let hash = mix;
        let mut s = eight_in_a_window();
        // The head counts more than any victim, and the main queue is full.
        s.writer.sketch.add(hash(&1000), 15);
        let main_capacity = s.view().main_capacity();
        assert_eq!(s.writer.main.weight, main_capacity);
        s.view().insert(hash(&2000), 2000, 2000, 1, 0, 1, &hash);
        s.view().validate(&hash);
        let main = main_keys(&mut s);
        assert_eq!(main.last(), Some(&1000), "{main:?}");
    }

    /// A refill after `clear` is a fill like the first: when it first evicts, its small queue
    /// drains into the main queue's back, oldest first, not to its head for room (the shard's
    /// eviction count, which `clear` keeps, once said the fill was over).
    #[test]
    fn a_refill_after_clear_drains_the_small_queue_to_the_main_queues_back() {
        let hash = mix;
        let mut s = TestShard::new(64, 64);
        s.writer.climber.set_window_for_test(8);
        let fill = |s: &mut TestShard| {
            for k in 1000..1065 {
                s.view().insert(hash(&k), k, k, 1, 0, 1, &hash);
            }
            s.view().validate(&hash);
            main_keys(s)
        };
        let first = fill(&mut s);
        assert!(first.len() > 32 && first.is_sorted(), "{first:?}");
        s.view().clear();
        assert_eq!(fill(&mut s), first);
    }

    #[test]
    fn clear_retires_everything_and_keeps_working() {
        let mut s = filled(16, 0..16);
        // Under a read, the entries wait: none is freed, and the value read stays intact.
        let guard = s.readers.enter();
        let value = s.shared.get(&guard, 3, &3, || 1, |v| v as *const u64);
        Shard::new(&s.shared, &mut s.writer, &s.readers).clear();
        assert!(s.writer.free.is_empty(), "freed under a read");
        assert_eq!(
            s.writer.limbo.len(),
            16 + 1,
            "the entries and the table wait"
        );
        // SAFETY: the slot is retired but not freed while `guard` lives.
        assert_eq!(value.map(|v| unsafe { *v }), Some(30));
        drop(guard);
        s.view().clear();
        assert_eq!((s.writer.limbo.len(), s.writer.free.len()), (0, 16));
        s.view().validate(&id);
        assert_eq!((s.writer.len(), s.get(3, &3, || 1)), (0, None));
        for k in 0..16 {
            s.view().insert(k, k, k, 1, 0, 1, &id);
        }
        s.view().validate(&id);
        assert_eq!(s.get(3, &3, || 1), Some(3));
    }

    #[test]
    fn stays_within_capacity_under_churn() {
        let s = filled(16, 0..10_000);
        assert_eq!(s.writer.len(), 16);
        assert!(s.writer.evictions >= 10_000 - 16);
    }

    #[test]
    fn frequently_used_entries_survive_a_scan() {
        let mut s = filled(100, 0..50);
        for _ in 0..3 {
            for k in 0..50 {
                assert!(s.get(k, &k, || 1).is_some());
            }
        }
        // Ten scans of twice the capacity each, the hot keys read between them (an LRU keeps none
        // of them through a scan). A hot set left unread for many times the capacity would
        // rightly age out of the frequency sketch, so the hot keys stay in use here.
        for burst in 0..10u64 {
            for k in 1000 + burst * 200..1200 + burst * 200 {
                s.view().insert(k, k, k, 1, 0, 1, &id);
            }
            s.view().validate(&id);
            let kept = (0..50).filter(|k| s.get(*k, k, || 1).is_some()).count();
            assert!(
                kept >= 45,
                "only {kept} of 50 hot keys survived scan {burst}"
            );
        }
    }

    /// 8,193 keys into a large shard of 8,192 while returns are common, so the small queue drains
    /// into the main queue: it holds 0..8192 in order, and the last key was refused.
    fn large_shard_with_a_full_main_queue() -> TestShard {
        let mut s = TestShard::new(8192, 8192);
        for k in 0..8192 {
            s.view().insert(k, k, 0, 1, 0, 1, &id);
        }
        s.writer.returns_rare = false;
        s.view().insert(8192, 8192, 0, 1, 0, 1, &id);
        assert_eq!((s.writer.main.len, s.writer.small.len), (8192, 0));
        s
    }

    #[test]
    fn a_large_shard_weighs_a_candidate_against_the_entry_it_would_evict() {
        let mut s = large_shard_with_a_full_main_queue();
        let candidate = 100_000;
        // The head (key 0) is hot and was hit since; key 1 behind it is as cold as they come.
        s.writer.sketch.add(0, 4);
        assert!(s.get(0, &0, || 1).is_some());
        s.writer.sketch.add(candidate, 2);
        // The candidate (3 with this miss) loses to key 0 (5 + 1 hit) but beats key 1 (1) by
        // the two-count margin, and key 1 is what evicting from the main queue takes.
        s.view().insert(candidate, candidate, 0, 1, 0, 1, &id);
        s.view().validate(&id);
        assert!(s.contains(candidate, &candidate, 1));
        assert!(s.contains(0, &0, 1));
        assert!(!s.contains(1, &1, 1));
    }

    #[test]
    fn a_large_shards_ghost_hit_must_beat_its_victim() {
        // Key 8192 is a ghost.
        let mut s = large_shard_with_a_full_main_queue();
        assert!(!s.contains(8192, &8192, 1));
        s.writer.sketch.warm_for_test();
        s.writer.returns_rare = true;
        // Key 0 (the victim) counts 2, and so does key 8192 once its return is counted: a tie.
        s.writer.sketch.add(0, 1);
        assert_eq!(s.writer.sketch.estimate(0), 2);
        assert_eq!(s.writer.sketch.estimate(8192), 1);
        s.view().insert(8192, 8192, 0, 1, 0, 1, &id);
        s.view().validate(&id);
        assert!(!s.contains(8192, &8192, 1));
        assert!(s.contains(0, &0, 1));
    }

    #[test]
    fn a_large_shards_keys_seen_once_make_a_pool_that_new_keys_pass_through() {
        // A large shard filled with keys never read again (no returns: they are rare), but for
        // key 200, read once; then 300 new keys.
        let mut s = TestShard::new(8192, 8192);
        for k in 0..8192 {
            s.view().insert(k, k, 0, 1, 0, 1, &id);
        }
        assert!(s.get(200, &200, || 1).is_some());
        for k in 8192..8492 {
            s.view().insert(k, k, 0, 1, 0, 1, &id);
        }
        s.view().validate(&id);
        assert!(s.writer.returns_rare);
        // Key 0 was admitted into the empty main queue, and key 200 moved there for its hit;
        // keys 1..=301 but 200 left, oldest first, one for each new key.
        assert!(s.contains(0, &0, 1) && s.contains(200, &200, 1));
        assert!(
            (1..=301)
                .filter(|&k| k != 200)
                .all(|k| !s.contains(k, &k, 1))
        );
        assert!((302..8492).all(|k| s.contains(k, &k, 1)));
        assert_eq!(s.writer.main.len, 2);
        // A key the sketch counted twice (say it was seen before, its ghost lost) goes ahead of
        // those behind it: key 302 moves to the main queue and key 303 leaves for the next key.
        s.writer.sketch.add(302, 1);
        s.view().insert(9000, 9000, 0, 1, 0, 1, &id);
        s.view().validate(&id);
        assert!(s.contains(302, &302, 1) && !s.contains(303, &303, 1));
        assert!(s.contains(9000, &9000, 1));
        assert_eq!(s.writer.main.len, 3);
    }

    /// The same shard given a window by the duel (an eighth of it) runs that window instead of
    /// the pool: the keys that filled it move on to the main queue for the room there, and new
    /// keys face admission at the small queue's head.
    #[test]
    fn a_large_shard_with_a_window_runs_it_rather_than_a_pool() {
        let mut s = TestShard::new(8192, 8192);
        s.writer.climber.set_window_for_test(1024);
        for k in 0..8492 {
            s.view().insert(k, k, 0, 1, 0, 1, &id);
        }
        s.view().validate(&id);
        assert!(s.writer.returns_rare);
        assert!(!s.view().pool());
        assert_eq!((s.writer.main.len, s.writer.small.len), (7168, 1024));
    }

    #[test]
    fn a_loop_larger_than_the_shard_keeps_most_of_it() {
        // Cache-aside over a loop of 1.1x the capacity: an LRU or FIFO hits nothing; the best
        // static choice hits 1/1.1 = 90.9 %. Ghost hits that skipped admission held 82-87 %;
        // admitting on a one-count margin collapsed to 19.5 % at capacities 100 and 300.
        for capacity in [50u64, 64, 100, 128, 200, 300, 1000] {
            let ratio = loop_hit_ratio(capacity);
            assert!(
                ratio > 0.88,
                "capacity {capacity}: {:.1} % hits",
                100.0 * ratio
            );
        }
    }

    #[test]
    fn a_loop_larger_than_the_shard_uses_all_of_its_capacity() {
        // Cache-aside over a loop of 1.1x the capacity keeps at best `capacity` keys, hitting
        // capacity / keys = 90.9 % at 100 entries. A small queue with capacity of its own holds
        // the newest miss, which the loop does not read again before it leaves: with one slot
        // wasted at most 99 / 110 = 90.0 %. Half a slot's worth of churn is tolerated.
        for capacity in [100u64, 128, 200, 250] {
            let keys = capacity * 11 / 10;
            let ratio = loop_hit_ratio(capacity);
            let best = capacity as f64 / keys as f64;
            assert!(
                ratio > (capacity as f64 - 0.5) / keys as f64,
                "capacity {capacity}: {:.2} % hits, best {:.2} %",
                100.0 * ratio,
                100.0 * best
            );
        }
    }

    #[test]
    fn ghost_admission_is_lenient_only_while_returns_are_rare() {
        // One more key than fits: the shard fills its main queue.
        let mut s = filled(64, 0..65);
        let candidate = 1u64 << 50;
        let mut k = 1u64 << 40;
        // Admitted at a tie and a one-count lead when returns are rare, at neither when common.
        for lead in [0u8, 1] {
            // A warmed-up sketch (so the waiver plays no part) that has not seen the candidate.
            s.writer.sketch.clear_for_test();
            while !s.writer.sketch.warmed() {
                k += 1;
                s.writer.sketch.add(k, 1);
            }
            let victim = s
                .view()
                .counts(candidate, &id)
                .expect("main queue is full")
                .1;
            while s.writer.sketch.estimate(candidate) < victim + lead {
                s.writer.sketch.add(candidate, 1);
            }
            assert_eq!(
                s.view().counts(candidate, &id),
                Some((victim + lead, victim))
            );
            for returns_common in [false, true] {
                // One period of new keys, ghost hits or not.
                (s.writer.new_keys, s.writer.ghost_hits) = (0, 0);
                let mut v = s.view();
                for _ in 0..GHOST_RATE_PERIOD {
                    k += 1;
                    if returns_common {
                        v.w.ghost.push(k);
                    }
                    let ghost_hit = v.w.ghost.contains(k);
                    v.count_new_key(ghost_hit);
                }
                assert_eq!(v.w.returns_rare, !returns_common);
                assert_eq!(
                    v.admit_ghost(candidate, &id),
                    !returns_common,
                    "lead {lead}, returns common: {returns_common}"
                );
            }
        }
    }

    #[test]
    fn an_explicit_write_survives_its_own_insert() {
        let hash = mix;
        let mut s = popular(8);
        for k in 100..120 {
            assert!(
                s.view()
                    .insert_as(Admit::Keep, hash(&k), k, k, 1, 0, 1, &hash),
                "key {k}"
            );
            assert_eq!(s.get(hash(&k), &k, || 1), Some(k));
            s.view().validate(&hash);
        }
        // A heavy write pushes out as many others as it must, never itself.
        assert!(
            s.view()
                .insert_as(Admit::Keep, hash(&500), 500, 500, 8, 0, 1, &hash)
        );
        assert_eq!(
            (s.writer.len(), s.get(hash(&500), &500, || 1)),
            (1, Some(500))
        );
        // An existing key at the head of a queue with others behind it, rewritten heavier.
        let mut s = TestShard::new(4, 4);
        for k in 0..4 {
            s.view().insert(hash(&k), k, k, 1, 0, 1, &hash);
        }
        assert!(
            s.view()
                .insert_as(Admit::Keep, hash(&0), 0, 0, 3, 0, 1, &hash)
        );
        s.view().validate(&hash);
        assert_eq!(s.get(hash(&0), &0, || 1), Some(0));
    }

    #[test]
    fn expired_entries_are_invisible_and_evicted_whatever_their_hits() {
        let mut s = TestShard::new(2, 2);
        s.view().insert(1, 1, 1, 1, 5, 1, &id);
        s.view().insert(2, 2, 2, 1, 0, 1, &id);
        assert_eq!(s.get(1, &1, || 4), Some(1));
        assert_eq!(s.get(1, &1, || 5), None);
        s.view().insert(3, 3, 3, 1, 0, 6, &id);
        s.view().validate(&id);
        assert_eq!(s.writer.expirations, 1);
        assert_eq!(s.get(2, &2, || 6), Some(2));
        assert_eq!(s.get(3, &3, || 6), Some(3));
    }

    #[test]
    fn overweight_value_is_not_stored_and_removes_the_old_one() {
        let mut s = TestShard::new(10, 10);
        assert!(s.view().insert(1, 1, 1, 3, 0, 1, &id));
        assert!(!s.view().insert(1, 1, 2, 11, 0, 1, &id));
        assert_eq!(s.get(1, &1, || 1), None);
        s.view().validate(&id);
    }

    #[test]
    fn weights_are_accounted() {
        let mut s = TestShard::new(10, 10);
        s.view().insert(1, 1, 1, 4, 0, 1, &id);
        s.view().insert(2, 2, 2, 4, 0, 1, &id);
        s.view().insert(1, 1, 1, 6, 0, 1, &id); // replacing changes the weight
        s.view().validate(&id);
        assert_eq!((s.writer.len(), s.writer.weight()), (2, 10));
        s.view().insert(3, 3, 3, 1, 0, 1, &id); // 11 > 10: something must go
        s.view().validate(&id);
        assert!(s.writer.weight() <= 10);
    }

    /// A `Hash` that gives another hash than when an entry was stored is the caller's bug, but it
    /// must not leave a bucket naming a slot that eviction freed.
    #[test]
    fn an_entry_whose_key_hashes_differently_now_still_leaves_the_table() {
        let hash = mix;
        let fickle = |k: &u64| hash(k) ^ 0x5555_5555_0000_0000;
        let mut s = TestShard::new(8, 8);
        for k in 0..64 {
            // Explicit writes: stored whatever admission says, so eviction makes room.
            let mut v = s.view();
            v.insert_as(Admit::Keep, hash(&k), k, k, 1, 0, 1, &fickle);
            assert_eq!(
                v.table().live().count(),
                v.w.len(),
                "a bucket names a slot that is not an entry"
            );
        }
    }

    /// A shard holds at most `max_entries` entries whatever their weights (an unbounded shard,
    /// entries of weight 0), so its table stops growing: the largest table can only take so many
    /// (see `MAX_ENTRIES`). An explicit insert past the bound still stays readable.
    #[test]
    fn a_shard_holds_at_most_max_entries_whatever_the_weights() {
        let hash = mix;
        let mut s = TestShard::new(u64::MAX, 64);
        s.writer.max_entries = 40;
        for k in 0..500u64 {
            let (admit, weight) = if k % 3 == 0 {
                (Admit::Keep, 0)
            } else {
                (Admit::Policy, 1)
            };
            s.view()
                .insert_as(admit, hash(&k), k, k, weight, 0, 1, &hash);
            assert!(
                s.writer.len() <= 40,
                "{} entries after key {k}",
                s.writer.len()
            );
            if admit == Admit::Keep {
                assert_eq!(s.get(hash(&k), &k, || 1), Some(k));
            }
        }
        s.view().validate(&hash);
        assert_eq!(s.writer.len(), 40);
        assert!(
            s.view().table().buckets() <= 128,
            "the table grew past 41 entries' needs"
        );
    }

    /// User code runs inside the writer: a value whose `Drop` panics, at any of the drops a clear
    /// makes, leaves an empty shard whose structure holds, which drops no entry twice and takes
    /// and evicts entries again. (The shard holds more than two retire batches: a clear that
    /// collected as it went dropped entries while its queues still named them.)
    #[test]
    fn a_drop_that_panics_anywhere_in_a_clear_leaves_an_empty_valid_shard() {
        use std::cell::{Cell, RefCell};
        use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
        thread_local! {
            static DROPPED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
            /// The drop, counted from 1, that panics (0: none).
            static PANIC_AT: Cell<usize> = const { Cell::new(0) };
        }
        struct Loud(u64);
        impl Drop for Loud {
            fn drop(&mut self) {
                let n = DROPPED.with(|d| {
                    let mut d = d.borrow_mut();
                    d.push(self.0);
                    d.len()
                });
                if PANIC_AT.get() == n {
                    // Not `panic!`: no message from the panic hook.
                    resume_unwind(Box::new(n));
                }
            }
        }
        let hash = mix;
        let capacity = 150;
        assert!(capacity as usize > 2 * retire_batch(capacity as usize));
        let mut nth = 1;
        loop {
            DROPPED.with(|d| d.borrow_mut().clear());
            let mut s = OwnedShard::<u64, Loud>::new(capacity, capacity as usize);
            for k in 0..capacity {
                s.view()
                    .insert_as(Admit::Keep, hash(&k), k, Loud(k), 1, 0, 1, &hash);
            }
            PANIC_AT.set(nth);
            let panicked = catch_unwind(AssertUnwindSafe(|| s.view().clear())).is_err();
            PANIC_AT.set(0);
            s.view().validate(&hash);
            assert_eq!(
                s.writer.len(),
                0,
                "the clear left entries (drop {nth} panicked)"
            );
            // Keys the clear dropped, and more than fit: the shard stores and evicts again.
            for k in 0..3 * capacity {
                s.view()
                    .insert_as(Admit::Keep, hash(&k), k, Loud(k + 1000), 1, 0, 1, &hash);
            }
            s.view().validate(&hash);
            drop(s);
            let mut dropped = DROPPED.with(|d| d.borrow().clone());
            let all = dropped.len();
            dropped.sort_unstable();
            dropped.dedup();
            assert_eq!(
                dropped.len(),
                all,
                "a value was dropped twice (drop {nth} panicked)"
            );
            if !panicked {
                break;
            }
            nth += 1;
        }
        assert!(
            nth > capacity as usize / 2,
            "the clear dropped {} values",
            nth - 1
        );
    }

    /// User code runs inside the writer: a `Hash` that panics at any of its calls during an insert
    /// (admission, eviction, table rebuilds) leaves a shard whose structure holds, and the next
    /// insert brings it back within capacity.
    #[test]
    fn a_hash_that_panics_anywhere_in_an_insert_leaves_the_shard_valid() {
        use std::cell::Cell;
        use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
        let hash = mix;
        // Popular keys in the main queue and keys seen once in the small queue, in a small and
        // a large shard (eviction and admission); or a young table one bucket short of a rebuild.
        let evicting = |capacity: u64| {
            let mut s = popular(capacity);
            for k in capacity..capacity + capacity / 8 {
                // Explicit writes: stored whatever admission says.
                s.view()
                    .insert_as(Admit::Keep, hash(&k), k, k, 1, 0, 1, &hash);
            }
            s
        };
        let rebuilding = || {
            let mut s = TestShard::new(64, 64);
            for k in 0..12 {
                s.view().insert(hash(&k), k, k, 1, 0, 1, &hash);
            }
            assert_eq!(s.view().table().buckets(), MIN_BUCKETS);
            s
        };
        let setups: [&dyn Fn() -> TestShard; 3] = [
            &|| evicting(64),
            &|| evicting(crate::policy::LARGE_SHARD_ENTRIES as u64),
            &rebuilding,
        ];
        for setup in setups {
            // The `nth` call to `Hash` panics, for every call the inserts make.
            let mut nth = 1;
            loop {
                let mut s = setup();
                let calls = Cell::new(0);
                let panicky = |k: &u64| {
                    calls.set(calls.get() + 1);
                    if calls.get() == nth {
                        // Not `panic!`: no message from the panic hook.
                        resume_unwind(Box::new(nth));
                    }
                    hash(k)
                };
                let mut panicked = false;
                for key in (1u64 << 40)..(1 << 40) + 4 {
                    let insert = || {
                        s.view()
                            .insert_as(Admit::Keep, hash(&key), key, key, 1, 0, 1, &panicky)
                    };
                    panicked |= catch_unwind(AssertUnwindSafe(insert)).is_err();
                }
                s.view().insert(hash(&7), 7, 7, 1, 0, 1, &hash);
                s.view().validate(&hash);
                if !panicked {
                    break;
                }
                nth += 1;
            }
            assert!(nth > 4, "the inserts called `Hash` {} times", nth - 1);
        }
    }
}
