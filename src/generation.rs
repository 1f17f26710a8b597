//! Generations and leases: the only place that does arithmetic on generations.
//!
//! Every key maps to one slot of a fixed table of generation counters (see [`crate::Cache`]'s
//! *Consistency* section). A [`Lease`] is a snapshot of that slot taken before the caller reads its
//! source; a save lands only if the slot still holds the same value. Slots only grow, and each is
//! written by one shard under that shard's lock, from that shard's monotonic clock.
//!
//! A write stores its new generation twice: first marked in progress ([`Generation::busy`], bit 0
//! set), then, once its change to the shard's table is published, as is. Readers take no lock, so
//! the mark is what lets one of them tell "this write has not happened" from "this write is half
//! done": a lease is never taken from a marked slot, and a lock-free miss is only trusted if the
//! slot read the same unmarked value before and after the lookup.

use std::fmt;

/// A point in a key's history. Every write that could make a cached value wrong (purge, insert,
/// flush) moves the key's generation to a value it has never held before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(u64);

impl Generation {
    /// The generation every slot starts at.
    pub(crate) const ZERO: Self = Self(0);

    /// A slot's raw value: a generation, or a generation marked in progress.
    pub(crate) const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw counter value (useful for logs and metrics, never for arithmetic).
    pub const fn get(self) -> u64 {
        self.0
    }

    /// This generation marked in progress: what a slot holds while the write that minted it
    /// changes the table.
    pub(crate) const fn busy(self) -> u64 {
        self.0 | 1
    }

    /// Whether a slot's value is marked in progress.
    pub(crate) const fn is_busy(self) -> bool {
        self.0 & 1 != 0
    }
}

/// A per-shard monotonic clock that mints fresh generations. Only ever touched under the shard's
/// write lock.
#[derive(Debug, Default)]
pub(crate) struct GenerationClock(u64);

impl GenerationClock {
    /// A generation strictly greater than every one this clock minted before, and even (bit 0
    /// is the in-progress mark). Saturates instead of wrapping: wrapping would revive old leases.
    /// At the top, writes would stop fencing the leases taken since, so "strictly greater" (and
    /// I1) holds for the first 2^62 writes to a shard: 146 years at a billion writes a second.
    #[inline]
    pub(crate) fn mint(&mut self) -> Generation {
        // Even and at most `u64::MAX - 1` (the largest even value): `saturating_add(2)` and
        // `min(u64::MAX - 1)` in one comparison (two instructions less on every write).
        if self.0 < u64::MAX - 2 {
            self.0 += 2;
        }
        Generation(self.0)
    }
}

/// Permission to save one key's value, captured **before** reading the source.
///
/// A lease is bound to the key it was taken for and to the cache instance that issued it (I8):
/// presenting it to another key or another cache is rejected with
/// [`SaveError::ForeignLease`](crate::SaveError::ForeignLease). It is cheap to clone, `Send`,
/// `Sync` and `'static`, so it can cross threads and `.await` points.
///
/// It names its key by the key's 64-bit hash under the cache's hasher, not by a copy of the key
/// (which would cost an allocation on every miss and require `K: Clone + 'static`). So a lease
/// presented for another key whose hash is the same is accepted: with the default hasher, whose
/// seeds are random, that takes a 64-bit collision; a custom hasher that maps distinct keys to
/// one hash (say, a hash of part of the key) makes them share leases, as it makes them share
/// generations.
///
/// ```
/// use leasecache::{Cache, Lookup};
///
/// let cache: Cache<&str, u32> = Cache::new(100);
/// let lease = match cache.get_or_lease("answer") {
///     Lookup::Hit(_) => unreachable!("empty cache"),
///     Lookup::Miss(lease) => lease,
/// };
/// let value = 42; // read from the database *after* taking the lease
/// assert!(cache.save_with_lease("answer", value, lease).is_ok_and(leasecache::Saved::is_stored));
/// assert_eq!(cache.get("answer"), Some(42));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    cache: u64,
    key_hash: u64,
    generation: Generation,
    /// Captured inside a hold-off window of its key (see [`crate::CacheBuilder::hold_off`]): a
    /// save under it is refused whatever the generation.
    held_off: bool,
}

impl Lease {
    pub(crate) const fn new(cache: u64, key_hash: u64, generation: Generation) -> Self {
        Self {
            cache,
            key_hash,
            generation,
            held_off: false,
        }
    }

    /// This lease, captured inside a hold-off window: no save under it lands.
    pub(crate) const fn held_off(mut self) -> Self {
        self.held_off = true;
        self
    }

    /// Whether this lease was captured inside a hold-off window of its key.
    pub(crate) const fn is_held_off(&self) -> bool {
        self.held_off
    }

    /// The generation this lease was captured at.
    pub const fn generation(&self) -> Generation {
        self.generation
    }

    /// Whether this lease was issued by cache `cache` for the key whose hash is `key_hash`.
    pub(crate) const fn is_for(&self, cache: u64, key_hash: u64) -> bool {
        self.cache == cache && self.key_hash == key_hash
    }

    /// Whether the key's current generation still equals the captured one.
    pub(crate) fn is_current(&self, current: Generation) -> bool {
        self.generation == current
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("cache", &self.cache)
            .field("generation", &self.generation.0)
            .field("held_off", &self.held_off)
            .finish_non_exhaustive()
    }
}

/// The outcome of [`Cache::get_or_lease`](crate::Cache::get_or_lease): the cached value, or a lease
/// to fill the key with after reading the source.
///
/// `L` is the lease type; the Redis tier uses its own. Deliberately exhaustive: a lookup either hits
/// or misses, and matching on both is the point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup<V, L = Lease> {
    /// The key is cached; here is its value.
    Hit(V),
    /// The key is not cached; read the source, then save under this lease.
    Miss(L),
}

impl<V, L> Lookup<V, L> {
    /// The value, if this was a hit.
    pub fn hit(self) -> Option<V> {
        match self {
            Self::Hit(v) => Some(v),
            Self::Miss(_) => None,
        }
    }

    /// The lease, if this was a miss.
    pub fn lease(self) -> Option<L> {
        match self {
            Self::Hit(_) => None,
            Self::Miss(l) => Some(l),
        }
    }

    /// Whether this was a hit.
    pub const fn is_hit(&self) -> bool {
        matches!(self, Self::Hit(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_at_the_top_saturates_and_never_mints_a_marked_generation() {
        let mut clock = GenerationClock(u64::MAX - 5);
        let minted: Vec<u64> = (0..4).map(|_| clock.mint().get()).collect();
        assert_eq!(
            minted,
            [u64::MAX - 3, u64::MAX - 1, u64::MAX - 1, u64::MAX - 1],
            "strictly greater until the top, then stuck there (never wrapping to old values)"
        );
        assert!(!Generation(u64::MAX - 1).is_busy());
    }

    #[test]
    fn minted_generations_grow_and_are_never_marked_but_their_marks_are() {
        let mut clock = GenerationClock::default();
        let mut last = Generation::ZERO;
        for _ in 0..4 {
            let g = clock.mint();
            assert!(g > last && !g.is_busy(), "{g:?} after {last:?}");
            let marked = Generation::from_raw(g.busy());
            assert!(marked.is_busy());
            assert_ne!(
                marked, g,
                "a marked slot does not read as the write's generation"
            );
            last = g;
        }
    }
}
