//! Stale grace: serving the value a purge just replaced while one caller reloads the key
//! (opt-in, never the default).
//!
//! [`MaybeStale`] is what every opt-in read returns, in every tier: the L1
//! ([`Cache::get_or_load_allow_stale`](crate::Cache::get_or_load_allow_stale) with
//! [`CacheBuilder::stale_grace`](crate::CacheBuilder::stale_grace)), Redis
//! (`RedisStore::get_or_fill_allow_stale` with `RedisOptions::stale_grace`) and the tiered
//! cache (`TieredCache::get_or_load_allow_stale`, which asks its L1 first, then Redis).
//!
//! # The L1 stash
//!
//! A cache built with a stale grace keeps, per shard and under the shard's lock, a small
//! *stash* of the values purges removed: each entry holds the key, the removed value, the
//! generation the purge left in the key's slot, and the purge's time by the cache's clock. The
//! values arrive through the removal route the eviction listener uses (`crate::listener`):
//! the shard copies each removed entry under its lock, and the release of the lock moves the
//! ones removed by a purge into the stash, reading the key's generation while the lock is
//! still held (so it is the purge's own). An opt-in caller that misses, finds another caller
//! loading the key (the single flight) and finds a stash entry gets it as
//! [`MaybeStale::Stale`], in that same critical section, if and only if:
//!
//! - the key's slot still holds the generation the purge left: any later purge, insert or
//!   flush of the key (or of a key sharing its slot: a spurious miss of the stash, never a
//!   wrong value) moves the generation on, so a value older than the one the **latest** purge
//!   replaced is never served. A later purge that removes a value replaces the entry; one
//!   that finds the key empty leaves it unusable.
//! - no value has been stored for the key since: every store of the key (a save, a load's
//!   fill, an insert) drops its stash entry under the same lock, so a value saved after the
//!   purge and then evicted never lets the older value back.
//! - the purge is younger than the grace, by the cache's clock.
//!
//! Eviction, expiry and idleness do not stash (they are not writes: no newer value exists,
//! and the caller may as well wait for the load), nor do replacements (the key holds the new
//! value) or flushes (which empty the stash). Every removal reported as
//! [`RemovalCause::Purged`](crate::RemovalCause::Purged) stashes: `purge`, the hold-off and
//! position purges, write intents and `retain`.
//!
//! Memory is bounded: at most [`STASH_PER_SHARD`] entries per shard (the latest purges of
//! present values; the oldest entry makes room), and entries past the grace are dropped by the
//! next stash write or stale lookup of their shard. With a stale grace, every removal by a
//! purge copies its key and value under the shard's lock (`K::clone`, `V::clone`; the other
//! removals copy nothing unless an eviction listener wants them too): a cache without a grace
//! pays a branch per write and nothing on the hit path.

use crate::generation::Generation;
use std::collections::VecDeque;
use std::time::Duration;

/// The most entries one shard's stash holds.
pub(crate) const STASH_PER_SHARD: usize = 32;

/// A value that may be stale: what the opt-in reads return, in the L1
/// ([`Cache::get_or_load_allow_stale`](crate::Cache::get_or_load_allow_stale), with
/// [`CacheBuilder::stale_grace`](crate::CacheBuilder::stale_grace)), in Redis
/// (`RedisStore::get_or_fill_allow_stale`, with `RedisOptions::stale_grace`) and in the tiered
/// cache (`TieredCache::get_or_load_allow_stale`). Each tier serves the value its key's latest
/// purge replaced, within its grace, while one caller reloads the key; no other read returns it.
/// There is no `Deref` and no accessor that hides the difference: take the value with
/// [`fresh`](Self::fresh) (fresh only) or
/// [`into_value_allowing_stale`](Self::into_value_allowing_stale), or match.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum MaybeStale<V> {
    /// The current value.
    Fresh(V),
    /// The value the key's latest purge replaced, `replaced_ago` before the read (by the clock
    /// of the tier that kept it: the Redis server's, or the L1 cache's own), served while
    /// another caller reloads the key.
    Stale {
        /// The replaced value.
        value: V,
        /// How long before the read the purge replaced it (less than the grace).
        replaced_ago: Duration,
    },
}

impl<V> MaybeStale<V> {
    /// Whether the value is stale.
    pub fn is_stale(&self) -> bool {
        matches!(self, Self::Stale { .. })
    }

    /// The value if fresh, `None` if stale.
    pub fn fresh(self) -> Option<V> {
        match self {
            Self::Fresh(value) => Some(value),
            Self::Stale { .. } => None,
        }
    }

    /// The value, fresh or stale: the caller accepts a stale one.
    pub fn into_value_allowing_stale(self) -> V {
        match self {
            Self::Fresh(value) | Self::Stale { value, .. } => value,
        }
    }

    /// How long ago the stale value was replaced (`None` if fresh).
    pub fn replaced_ago(&self) -> Option<Duration> {
        match self {
            Self::Fresh(_) => None,
            Self::Stale { replaced_ago, .. } => Some(*replaced_ago),
        }
    }
}

/// A cache's stale grace (`CacheBuilder::stale_grace`).
pub(crate) struct Grace<K, V> {
    /// The grace in clock nanoseconds (at least 1).
    pub(crate) nanos: u64,
    /// Copies a removed entry under the shard's lock (see `crate::listener`).
    pub(crate) clone: crate::listener::CloneEntry<K, V>,
}

struct Entry<K, V> {
    hash: u64,
    key: K,
    value: V,
    /// The generation the purge left in the key's slot.
    generation: Generation,
    /// When the purge removed the value (cache clock).
    at: u64,
}

/// One shard's stash, oldest purge first. Lives under the shard's lock.
pub(crate) struct Stash<K, V> {
    entries: VecDeque<Entry<K, V>>,
}

impl<K, V> Default for Stash<K, V> {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
        }
    }
}

impl<K: Eq, V> Stash<K, V> {
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Drops the entries older than `grace` at `now`, oldest first.
    fn prune(&mut self, now: u64, grace: u64) {
        while self
            .entries
            .front()
            .is_some_and(|e| now.saturating_sub(e.at) >= grace)
        {
            self.entries.pop_front();
        }
    }

    fn position<Q>(&self, hash: u64, key: &Q) -> Option<usize>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.entries
            .iter()
            .position(|e| e.hash == hash && e.key.borrow() == key)
    }

    /// Keeps `value`, which a purge at `now` that left `generation` removed from `key`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn keep(
        &mut self,
        hash: u64,
        key: K,
        value: V,
        generation: Generation,
        now: u64,
        grace: u64,
    ) {
        self.prune(now, grace);
        if let Some(i) = self.position(hash, &key) {
            self.entries.remove(i);
        }
        if self.entries.len() >= STASH_PER_SHARD {
            self.entries.pop_front();
        }
        self.entries.push_back(Entry {
            hash,
            key,
            value,
            generation,
            at: now,
        });
    }

    /// Drops `key`'s entry (a value was stored for it).
    #[inline]
    pub(crate) fn forget<Q>(&mut self, hash: u64, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + ?Sized,
    {
        if let Some(i) = self.position(hash, key) {
            self.entries.remove(i);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// `key`'s stashed value and how long ago it was replaced, if its purge left `current` in
    /// the key's slot and is younger than `grace` at `now`.
    pub(crate) fn lookup<Q>(
        &mut self,
        hash: u64,
        key: &Q,
        current: Generation,
        now: u64,
        grace: u64,
    ) -> Option<(&V, Duration)>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.prune(now, grace);
        let entry = &self.entries[self.position(hash, key)?];
        (entry.generation == current).then(|| {
            (
                &entry.value,
                Duration::from_nanos(now.saturating_sub(entry.at)),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G1: Generation = Generation::ZERO;

    #[test]
    fn the_stash_is_bounded_and_forgets_by_age_and_by_key() {
        let mut s: Stash<u32, u32> = Stash::default();
        for k in 0..(STASH_PER_SHARD as u32 + 5) {
            s.keep(u64::from(k), k, k * 10, G1, 10, 100);
        }
        assert_eq!(s.len(), STASH_PER_SHARD, "capped");
        assert!(
            s.lookup(0, &0, G1, 10, 100).is_none(),
            "the oldest made room"
        );
        let last = STASH_PER_SHARD as u32 + 4;
        assert_eq!(
            s.lookup(u64::from(last), &last, G1, 60, 100),
            Some((&(last * 10), Duration::from_nanos(50)))
        );
        s.forget(u64::from(last), &last);
        assert!(s.lookup(u64::from(last), &last, G1, 60, 100).is_none());
        assert!(s.lookup(5, &5, G1, 110, 100).is_none(), "past the grace");
        assert!(s.is_empty(), "pruned by the lookup");
    }

    #[test]
    fn a_second_purge_replaces_the_entry() {
        let mut s: Stash<u32, u32> = Stash::default();
        s.keep(1, 1, 10, G1, 1, 100);
        s.keep(1, 1, 11, G1, 2, 100);
        assert_eq!(s.len(), 1);
        assert_eq!(s.lookup(1, &1, G1, 3, 100).map(|(v, _)| *v), Some(11));
    }
}
