//! What users of moka, quick_cache and Caffeine expect beside the lease core: quiet reads
//! ([`Cache::peek`]), batch lookups ([`Cache::get_many`]), iteration ([`Cache::iter`]) and
//! removal by predicate ([`Cache::retain`]).
//!
//! `retain` is a write: every entry it removes is removed exactly as [`Cache::purge`] removes
//! it, fencing the key's leases and detaching a load in flight in the same critical section
//! (I1, I2, I7). `peek` and `iter` only read, and never return an expired value.

use crate::cache::{Cache, ShardCell};
use crate::iter::Iter;
use crate::listener::RemovalCause;
use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    /// The value of `key`, if cached and not expired, **without counting as an access**
    /// (quick_cache's `peek`): the eviction policy does not see the read, no hit or miss is
    /// counted in [`stats`](Self::stats), and a time to idle is not pushed back. Lock-free, like
    /// [`get`](Self::get).
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, &str> = leasecache::Cache::new(10);
    /// cache.insert(1, "one");
    /// assert_eq!(cache.peek(&1), Some("one"));
    /// assert_eq!(cache.peek(&2), None);
    /// assert_eq!((cache.stats().hits, cache.stats().misses), (0, 0));
    /// ```
    pub fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        let hash = self.hash(key);
        let guard = self.readers.enter();
        self.cell(hash)
            .shared
            .peek(&guard, hash, key, || self.clock_now(), V::clone)
    }

    /// The values of `keys`, in their order: [`get`](Self::get) of each (every one counts as an
    /// access, a hit or a miss). Each lookup is its own: the result is not a snapshot of all the
    /// keys at one instant.
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, &str> = leasecache::Cache::new(10);
    /// cache.insert(1, "one");
    /// cache.insert(3, "three");
    /// assert_eq!(cache.get_many(&[1, 2, 3]), [Some("one"), None, Some("three")]);
    /// ```
    pub fn get_many<'k, Q>(&self, keys: impl IntoIterator<Item = &'k Q>) -> Vec<Option<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + 'k,
        V: Clone,
    {
        keys.into_iter().map(|key| self.get(key)).collect()
    }

    /// The cache's live entries (clones of keys and values), weakly consistent: see [`Iter`]
    /// for exactly what it guarantees. It never yields an expired value and does not count as an
    /// access. Each shard's lock is held while its entries are copied, not while they are
    /// yielded.
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, u32> = leasecache::Cache::new(10);
    /// cache.insert(1, 10);
    /// cache.insert(2, 20);
    /// let mut all: Vec<(u32, u32)> = cache.iter().collect();
    /// all.sort();
    /// assert_eq!(all, [(1, 10), (2, 20)]);
    /// ```
    pub fn iter(&self) -> Iter<'_, K, V, S>
    where
        K: Clone,
        V: Clone,
    {
        Iter::new(self)
    }

    /// Copies the live entries of one shard, with their deadlines, under its lock.
    pub(crate) fn copy_shard(&self, cell: &ShardCell<K, V>) -> Vec<(K, V, u64)>
    where
        K: Clone,
        V: Clone,
    {
        let mut core = cell.core.lock();
        let now = self.clock_now();
        let mut copied = Vec::with_capacity(core.writer.len());
        self.shard(cell, &mut core)
            .for_each_entry(|_, k, v, deadline| {
                if deadline == 0 || deadline > now {
                    copied.push((k.clone(), v.clone(), deadline));
                }
            });
        drop(core);
        copied
    }

    /// Removes every entry for which `keep` returns false (quick_cache's `retain`, moka's
    /// `invalidate_entries_if`, Caffeine's `removeIf` on its map view) and returns how many live
    /// entries it removed.
    ///
    /// **Each removal is a purge**: it fences every outstanding lease on the removed key and
    /// detaches a load in flight for it, atomically with removing the value, so a save under a
    /// lease taken before `retain` removed the key is refused ([`Saved::Stale`]), and a
    /// [`get_or_load`](Self::get_or_load) that starts after `retain` returned never receives a
    /// value loaded before. Keys whose entry `keep` accepts, and keys with no entry, are not
    /// written: their leases stay good.
    ///
    /// Shards are filtered one after another, each atomically under its lock (`keep` runs there:
    /// keep it cheap, and do not call the cache from it). An entry written into a shard the call
    /// has already filtered is not examined. `keep` never sees an expired entry; those are removed
    /// too, as expired (which fences nothing, like an eviction).
    ///
    /// [`Saved::Stale`]: crate::Saved::Stale
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, u32> = leasecache::Cache::new(10);
    /// for k in 0..6 {
    ///     cache.insert(k, k * 10);
    /// }
    /// let lease = cache.lease(&3);
    /// assert_eq!(cache.retain(|_, v| v % 20 == 0), 3); // drops 1, 3 and 5
    /// assert_eq!((cache.get(&2), cache.get(&3)), (Some(20), None));
    /// assert!(cache.save_with_lease(3, 30, lease).unwrap().is_stale()); // fenced
    /// ```
    pub fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) -> usize {
        let mut removed = 0;
        for cell in self.shards.iter() {
            removed += self.retain_shard(cell, &mut keep);
        }
        removed
    }

    fn retain_shard(&self, cell: &ShardCell<K, V>, keep: &mut impl FnMut(&K, &V) -> bool) -> usize {
        let mut core = cell.core.lock();
        let now = self.clock_now();
        // Chosen before anything is removed: `keep` and `Hash` are user code and may panic, and
        // the shard must then be as it was.
        let mut doomed = Vec::new();
        self.shard(cell, &mut core)
            .for_each_entry(|idx, k, v, deadline| {
                let expired = deadline != 0 && deadline <= now;
                if expired || !keep(k, v) {
                    doomed.push((idx, self.hash(k), expired));
                }
            });
        let mut removed = 0;
        for (idx, hash, expired) in doomed {
            if expired {
                // Not a write: an expired value fences nothing (as when eviction removes it).
                self.shard(cell, &mut core)
                    .remove_slot(idx, hash, now, RemovalCause::Expired);
                continue;
            }
            // A purge of the key: mark its generation slot, detach its flight, raise its floors,
            // remove the value, and end the write (as `purge` does, under the same lock).
            let write = self.begin_slot_write(cell, &mut core, hash, idx);
            self.raise_floors(cell, &mut core, hash, self.default_raise());
            core.counts.purges += 1;
            removed += usize::from(self.shard(cell, &mut core).remove_slot(
                idx,
                hash,
                now,
                RemovalCause::Purged,
            ));
            drop(write);
        }
        self.unlock(core);
        removed
    }
}
