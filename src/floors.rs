//! Floors a save must clear besides its lease: hold-off deadlines, source positions and write
//! intents. They close the races a lease cannot see, where the *source* hands a reader old data
//! after the write: a replica that has not replayed the commit yet, or a purge issued before the
//! commit.
//!
//! Every floor lives beside the generation, one per generation slot, in tables fixed at build
//! time (so purging any number of keys costs no memory, I5). Keys sharing a slot share its floors,
//! which can only refuse a save spuriously. Every floor is raised by a write of a key of its slot,
//! under the shard's lock, *while the write holds the slot marked busy*: a lease that sees the
//! write's generation sees its floors too. Floors only rise (a later, shorter hold-off or a lower
//! position never lowers one: that would revive leases, an ABA).
//!
//! - **Hold-off deadline** (lock-free, one `AtomicU64` per slot, a reading of the cache's clock;
//!   `0` for none). A lease captured before its slot's deadline is marked held off, and no save
//!   under it lands. It is the only floor a lease reads: the other two are checked at save time,
//!   under the lock. A lease reads it only once some write in the cache carried a hold-off
//!   (`hold_offs_in_use`), and reads the clock only while its slot has a deadline; a save that
//!   finds its slot's deadline past clears it (a past deadline refuses nothing, so clearing it
//!   lowers no floor), so misses on that slot stop reading the clock.
//! - **Position floor** (under the lock): the highest source position a write was made "as of".
//!   A save "as of" a lower position is refused, however fresh its lease. A save that names no
//!   position is judged by its lease and hold-off alone.
//! - **Open write intents** (under the lock): while one is open on a slot, every save to it is
//!   refused. Its beginning and its end each fence like a purge.
//!
//! The two locked tables are allocated at their first use, so a cache that never uses positions
//! or intents pays nothing for them.

use crate::cache::{Cache, Core, ShardCell};
use crate::clock::Clock;
use crate::error::SaveError;
use crate::generation::{Generation, Lease};
use crate::saved::Saved;
use crate::shard::Removed;
use crate::sync::{AtomicU64, Ordering};
use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::time::Duration;

/// One hold-off deadline per generation slot of a shard.
pub(crate) struct HoldOffs(Box<[AtomicU64]>);

impl HoldOffs {
    pub(crate) fn new(slots: usize) -> Self {
        Self((0..slots).map(|_| AtomicU64::new(0)).collect())
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Slot `i`'s deadline (0: none). Relaxed: a lease reads it after its Acquire load of the
    /// generation, which pairs with the Release store that ends the write that raised it.
    #[inline]
    pub(crate) fn deadline(&self, i: usize) -> u64 {
        self.0[i].load(Ordering::Relaxed)
    }

    /// Raises slot `i`'s deadline to at least `deadline`. Under the shard's lock, inside a write.
    fn raise(&self, i: usize, deadline: u64) {
        // Relaxed: published by the write's Release store of its generation (see `deadline`).
        if self.0[i].load(Ordering::Relaxed) < deadline {
            self.0[i].store(deadline, Ordering::Relaxed);
        }
    }

    /// Clears slot `i`'s deadline if it has passed at `now`. Under the shard's lock.
    fn clear_if_passed(&self, i: usize, now: u64) {
        let deadline = self.0[i].load(Ordering::Relaxed);
        if deadline != 0 && deadline <= now {
            // Relaxed: a lease that reads 0 was captured after `now`, past the deadline, where
            // the deadline would not have held it off either.
            self.0[i].store(0, Ordering::Relaxed);
        }
    }
}

/// The floors read only under the shard's lock: position floors and open intents per slot, each
/// table allocated at its first use.
#[derive(Debug, Default)]
pub(crate) struct LockedFloors {
    positions: Box<[u64]>,
    intents: Box<[u32]>,
}

impl LockedFloors {
    fn position(&self, i: usize) -> u64 {
        self.positions.get(i).copied().unwrap_or(0)
    }

    fn raise_position(&mut self, i: usize, slots: usize, position: u64) {
        if self.positions.is_empty() {
            self.positions = vec![0; slots].into_boxed_slice();
        }
        let floor = &mut self.positions[i];
        *floor = (*floor).max(position);
    }

    fn intents(&self, i: usize) -> u32 {
        self.intents.get(i).copied().unwrap_or(0)
    }

    fn open_intent(&mut self, i: usize, slots: usize) {
        if self.intents.is_empty() {
            self.intents = vec![0; slots].into_boxed_slice();
        }
        // Saturating: four billion intents open on one slot keep it refusing saves, which is safe.
        self.intents[i] = self.intents[i].saturating_add(1);
    }

    /// The sizes of the position and intent tables (0 until first used).
    #[cfg(all(test, not(leasecache_loom)))]
    pub(crate) fn table_sizes(&self) -> (usize, usize) {
        (self.positions.len(), self.intents.len())
    }

    fn close_intent(&mut self, i: usize) {
        if let Some(n) = self.intents.get_mut(i) {
            *n = n.saturating_sub(1);
        }
    }
}

/// What a write raises besides the generation.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Raise {
    pub(crate) hold_off: Option<Duration>,
    pub(crate) position: Option<u64>,
}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    /// The lease at `generation` for `hash`, held off if its slot's hold-off has not passed.
    /// The caller loaded `generation` with Acquire (or holds the shard's lock).
    #[inline]
    pub(crate) fn floored_lease(
        &self,
        cell: &ShardCell<K, V>,
        hash: u64,
        generation: Generation,
    ) -> Lease {
        let lease = Lease::new(self.id(), hash, generation);
        if self.hold_offs_in_use() && self.held_off_now(cell, hash) {
            lease.held_off()
        } else {
            lease
        }
    }

    /// Whether `hash`'s slot is inside a hold-off now. Inlined into the miss path: one load of
    /// the slot's deadline, and the clock only while the slot has one (the lease itself never
    /// crosses a call, which cost every miss ~30 instructions of copying).
    #[inline]
    fn held_off_now(&self, cell: &ShardCell<K, V>, hash: u64) -> bool {
        let deadline = cell.hold_offs.deadline(self.slot_index(hash));
        deadline != 0 && self.clock_before(deadline)
    }

    /// Whether the clock reads before `deadline`. Out of line: most slots carry no deadline, and
    /// a save that finds its slot's deadline past clears it.
    #[cold]
    #[inline(never)]
    fn clock_before(&self, deadline: u64) -> bool {
        self.clock_now() < deadline
    }

    /// Raises `hash`'s floors for a write in progress on its slot (between the write's mark and
    /// its end, under the shard's lock).
    #[inline]
    pub(crate) fn raise_floors(
        &self,
        cell: &ShardCell<K, V>,
        core: &mut Core<K, V>,
        hash: u64,
        raise: Raise,
    ) {
        if raise.hold_off.is_none() && raise.position.is_none() {
            return;
        }
        self.raise_floors_slow(cell, core, Some(self.slot_index(hash)), raise);
    }

    /// Raises the floors of slot `slot`, or of every slot of the shard (a flush).
    pub(crate) fn raise_floors_slow(
        &self,
        cell: &ShardCell<K, V>,
        core: &mut Core<K, V>,
        slot: Option<usize>,
        raise: Raise,
    ) {
        let slots = cell.hold_offs.len();
        let all = 0..slots;
        let range = slot.map_or(all, |i| i..i + 1);
        if let Some(hold_off) = raise.hold_off {
            self.set_hold_offs_in_use();
            let deadline = Clock::deadline_from(self.clock_now(), Some(hold_off));
            for i in range.clone() {
                cell.hold_offs.raise(i, deadline);
            }
        }
        if let Some(position) = raise.position {
            for i in range {
                core.floors.raise_position(i, slots, position);
            }
        }
    }

    /// Whether a save under `lease` at source position `position` may land for `hash`: the lease
    /// is current, was not captured inside a hold-off, no intent is open on the slot, and the
    /// position (if given) is at least the slot's position floor. Call with the shard's lock held.
    pub(crate) fn save_allowed(
        &self,
        cell: &ShardCell<K, V>,
        core: &Core<K, V>,
        lease: &Lease,
        hash: u64,
        position: Option<u64>,
    ) -> bool {
        if !self.lease_is_current(cell, lease, hash) || lease.is_held_off() {
            return false;
        }
        let i = self.slot_index(hash);
        if core.floors.intents(i) > 0 || position.is_some_and(|p| p < core.floors.position(i)) {
            return false;
        }
        if self.hold_offs_in_use() && cell.hold_offs.deadline(i) != 0 {
            cell.hold_offs.clear_if_passed(i, self.clock_now());
        }
        true
    }

    /// The write that opens (`open`) or closes an intent on `key`'s slot: what
    /// [`begin_write`](Self::begin_write) and [`WriteIntent`]'s end do.
    pub(crate) fn intent_write<Q>(&self, key: &Q, raise: Raise, open: bool) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.end_write_of(key, raise, Some(open))
    }

    /// One write of `key` that removes its value, fences its leases, raises its floors and opens
    /// (`Some(true)`) or closes (`Some(false)`) an intent on its slot. Returns whether a live value
    /// was removed.
    /// [`purge`](Self::purge) is this write with the cache's default floors and no intent.
    #[inline]
    pub(crate) fn end_write_of<Q>(&self, key: &Q, raise: Raise, intent: Option<bool>) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let cell = self.cell(hash);
        let (now, _) = self.write_times(None);
        self.prefetch_for_write(cell, hash);
        let mut core = cell.core.lock();
        let write = self.begin_key_write(cell, &mut core, hash, key);
        core.counts.purges += 1;
        let removed = self.shard(cell, &mut core).remove(hash, key, now);
        self.raise_floors(cell, &mut core, hash, raise);
        let i = self.slot_index(hash);
        match intent {
            Some(true) => core.floors.open_intent(i, cell.hold_offs.len()),
            Some(false) => core.floors.close_intent(i),
            None => {}
        }
        drop(write);
        self.unlock(core);
        removed == Removed::Live
    }

    /// [`purge`](Self::purge) followed by a hold-off of `hold_off`: saves under leases captured
    /// before the hold-off ends are refused ([`Saved::Stale`](crate::Saved::Stale)), however fresh the lease. Use
    /// it when readers may read a source that lags the write (a replica) by up to `hold_off`.
    /// It replaces the cache's default hold-off for this purge, and never shortens a hold-off
    /// already in force on the key. Returns whether a live value was removed.
    ///
    /// ```
    /// use leasecache::{Cache, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let cache: Cache<u32, &str> = Cache::builder().clock(clock.clone()).build();
    /// cache.purge_with_hold_off(&1, Duration::from_secs(5));
    /// let lease = cache.lease(&1); // a fresh lease, but the replica may not have the write yet
    /// assert!(cache.save_with_lease(1, "maybe old", lease).unwrap().is_stale());
    /// clock.advance(Duration::from_secs(5));
    /// let lease = cache.lease(&1); // after the hold-off: the replica has replayed the write
    /// assert!(cache.save_with_lease(1, "new", lease).is_ok_and(leasecache::Saved::is_stored));
    /// ```
    pub fn purge_with_hold_off<Q>(&self, key: &Q, hold_off: Duration) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.end_write_of(
            key,
            Raise {
                hold_off: Some(hold_off),
                position: None,
            },
            None,
        )
    }

    /// [`purge`](Self::purge) "as of" source position `position`: the position of the source's
    /// history at or after the write's commit (PostgreSQL's `pg_current_wal_lsn()` read after
    /// the commit, a MySQL binlog position, a MongoDB operation time). A later
    /// [`save_as_of`](Self::save_as_of) whose read position is lower is refused, however fresh
    /// its lease. Positions are opaque to the cache; they must be totally ordered as `u64`s, and
    /// a key's position floor never goes down. Applies the cache's default hold-off too.
    /// Returns whether a live value was removed.
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, &str> = leasecache::Cache::new(10);
    /// cache.purge_as_of(&1, 120); // the write committed at position 120
    /// let lease = cache.lease(&1);
    /// // A replica that had replayed up to 110 when we read it: older than the write.
    /// assert!(cache.save_as_of(1, "old", lease.clone(), 110).unwrap().is_stale());
    /// assert!(cache.save_as_of(1, "new", lease, 120).is_ok_and(leasecache::Saved::is_stored));
    /// ```
    pub fn purge_as_of<Q>(&self, key: &Q, position: u64) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.end_write_of(
            key,
            Raise {
                hold_off: self.default_hold_off(),
                position: Some(position),
            },
            None,
        )
    }

    /// [`save_with_lease`](Self::save_with_lease) for a value read at source position `position`
    /// (PostgreSQL's `pg_last_wal_replay_lsn()` on the replica, read in the same snapshot as the
    /// value or *before* it: a position that claims more than the read saw defeats the check).
    /// Refused with [`Saved::Stale`](crate::Saved::Stale) if `position` is lower than the key's position floor,
    /// even with a current lease; equal or higher is accepted.
    pub fn save_as_of(
        &self,
        key: K,
        value: V,
        lease: Lease,
        position: u64,
    ) -> Result<Saved, SaveError<V>> {
        self.save_inner(key, value, lease, Some(position), None)
    }

    /// Opens a write intent on `key`, for a writer that cannot purge after its commit: purge
    /// inside the transaction with this, and end the intent after the commit (or the rollback).
    /// Beginning fences `key` like a purge; until the intent ends, every save to `key` is refused
    /// (whatever its lease); its end fences again, so no value read while the transaction was
    /// open is ever cached. Intents on one key nest. Dropping the intent ends it as
    /// [`WriteIntent::commit`] does.
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, &str> = leasecache::Cache::new(10);
    /// let intent = cache.begin_write(&1); // in a pre-commit hook
    /// let lease = cache.lease(&1); // a reader misses before the commit...
    /// assert!(cache.save_with_lease(1, "uncommitted's old row", lease).is_ok_and(leasecache::Saved::is_stale)); // ...refused
    /// intent.commit(); // after the commit
    /// let lease = cache.lease(&1);
    /// assert!(cache.save_with_lease(1, "new row", lease).is_ok_and(leasecache::Saved::is_stored));
    /// ```
    pub fn begin_write<'a, Q>(&'a self, key: &'a Q) -> WriteIntent<'a, K, V, S, Q>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.intent_write(key, Raise::default(), true);
        WriteIntent {
            cache: self,
            key,
            ended: false,
        }
    }
}

/// An open write intent on one key, from [`Cache::begin_write`]. Saves to the key are refused
/// until it ends; ending it ([`commit`](Self::commit), [`commit_as_of`](Self::commit_as_of),
/// [`rollback`](Self::rollback) or drop) fences the key again.
#[must_use = "an intent ends (and fences) when it is dropped: keep it until the commit"]
pub struct WriteIntent<'a, K, V, S, Q>
where
    K: Hash + Eq + Borrow<Q>,
    S: BuildHasher,
    Q: Hash + Eq + ?Sized,
{
    cache: &'a Cache<K, V, S>,
    key: &'a Q,
    ended: bool,
}

impl<K, V, S, Q> WriteIntent<'_, K, V, S, Q>
where
    K: Hash + Eq + Borrow<Q>,
    S: BuildHasher,
    Q: Hash + Eq + ?Sized,
{
    /// Ends the intent after the source committed: removes the key's value, fences its leases
    /// and applies the cache's default hold-off. Returns whether a live value was removed (one
    /// stored by an `insert` during the intent).
    pub fn commit(mut self) -> bool {
        self.end(self.cache.default_hold_off(), None)
    }

    /// [`commit`](Self::commit) "as of" the source position of the commit (see
    /// [`Cache::purge_as_of`]).
    pub fn commit_as_of(mut self, position: u64) -> bool {
        self.end(self.cache.default_hold_off(), Some(position))
    }

    /// Ends the intent after the source rolled back: fences the key (a value read meanwhile was
    /// read while the write was open) but applies no hold-off.
    pub fn rollback(mut self) -> bool {
        self.end(None, None)
    }

    fn end(&mut self, hold_off: Option<Duration>, position: Option<u64>) -> bool {
        self.ended = true;
        self.cache
            .intent_write(self.key, Raise { hold_off, position }, false)
    }
}

impl<K, V, S, Q> Drop for WriteIntent<'_, K, V, S, Q>
where
    K: Hash + Eq + Borrow<Q>,
    S: BuildHasher,
    Q: Hash + Eq + ?Sized,
{
    fn drop(&mut self) {
        if !self.ended {
            self.end(self.cache.default_hold_off(), None);
        }
    }
}

impl<K, V, S, Q> fmt::Debug for WriteIntent<'_, K, V, S, Q>
where
    K: Hash + Eq + Borrow<Q>,
    S: BuildHasher,
    Q: Hash + Eq + ?Sized,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteIntent")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(leasecache_loom)))]
mod tests {
    use crate::Cache;
    use std::time::Duration;

    /// I5 for the floors: however many distinct keys are purged with hold-offs, positions and
    /// intents, every shard's floor tables keep the size of its generation table.
    #[test]
    fn floors_stay_the_size_of_the_generation_table() {
        let cache: Cache<u64, u64> = Cache::builder()
            .shards(2)
            .lease_slots(64)
            .max_capacity(10)
            .build();
        for key in 0..20_000u64 {
            cache.purge_with_hold_off(&key, Duration::from_secs(1));
            cache.purge_as_of(&key, key);
            cache.intent_write(&key, Default::default(), true);
            cache.intent_write(&key, Default::default(), false);
        }
        for cell in cache.shards.iter() {
            let core = cell.core.lock();
            assert_eq!(cell.hold_offs.len(), 32);
            assert_eq!(core.floors.table_sizes(), (32, 32));
        }
        assert_eq!(cache.entry_count(), 0);
    }
}
