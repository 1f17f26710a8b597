//! [`Iter`]: the weakly consistent iterator of [`Cache::iter`].

use crate::cache::Cache;
use std::fmt;
use std::hash::{BuildHasher, Hash};

/// An iterator over a [`Cache`]'s live entries, from [`Cache::iter`]: clones of each key and
/// value.
///
/// **Weakly consistent**, shard by shard: when the iterator reaches a shard it copies that
/// shard's live entries under the shard's lock, in one critical section (so what it yields from
/// one shard is a state that shard really had), then yields them without holding any lock.
/// Writes to shards it has already copied, or has not reached yet, may or may not be reflected;
/// no entry is yielded twice, and an entry present and live for the whole iteration is yielded.
///
/// It **never yields an expired value**: an entry is yielded only if its deadline has not passed
/// when [`next`](Iterator::next) returns it (checked against the cache's clock then, not only
/// when the shard was copied). It does not count as an access: no hit or miss is counted and
/// the eviction policy does not see it.
pub struct Iter<'c, K, V, S> {
    cache: &'c Cache<K, V, S>,
    /// The next shard to copy.
    next_shard: usize,
    /// The current shard's copied entries with their deadlines (`0`: none), last first.
    copied: Vec<(K, V, u64)>,
}

impl<'c, K, V, S> Iter<'c, K, V, S> {
    pub(crate) fn new(cache: &'c Cache<K, V, S>) -> Self {
        Self {
            cache,
            next_shard: 0,
            copied: Vec::new(),
        }
    }
}

impl<K, V, S> Iterator for Iter<'_, K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher,
{
    type Item = (K, V);

    fn next(&mut self) -> Option<(K, V)> {
        loop {
            while let Some((key, value, deadline)) = self.copied.pop() {
                if deadline == 0 || deadline > self.cache.clock_now() {
                    return Some((key, value));
                }
            }
            let cell = self.cache.shards.get(self.next_shard)?;
            self.next_shard += 1;
            self.copied = self.cache.copy_shard(cell);
            self.copied.reverse();
        }
    }
}

impl<K, V, S> fmt::Debug for Iter<'_, K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("next_shard", &self.next_shard)
            .field("copied", &self.copied.len())
            .finish_non_exhaustive()
    }
}
