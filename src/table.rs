//! A shard's index: an open-addressing table of `u32` buckets that readers probe without a lock
//! while the shard's writer changes it.
//!
//! A bucket holds a slot index and a tag (the top bits of the key's hash, never zero) packed in
//! one `u32`, so a probe reads one cache line of buckets and touches a slot only when the tag
//! matches: one shift and one comparison a bucket tell a live bucket with this key's tag from
//! everything else (empty and tombstone buckets have tag zero).
//! Linear probing; removal leaves a tombstone, so a probe never stops early at a bucket that
//! used to be in its way (buckets go empty -> live -> tombstone -> live, never back to empty).
//! Every change is a single atomic store, so a reader sees each bucket either before or after it:
//! a key that stays present is always found. Tombstones are reused by later inserts, and when
//! live buckets and tombstones fill three quarters of the table the writer builds a new one,
//! publishes it, and retires the old one (readers still probing it see a consistent earlier
//! state; see `reclaim.rs`).

use crate::sync::{AtomicU32, Ordering};

/// A bucket that never held an entry.
const EMPTY: u32 = 0;
/// Buckets a reader's probe reads at a time.
const GROUP: usize = 4;
/// A bucket whose entry was removed (tag zero, so it matches no key).
const TOMBSTONE: u32 = 1;

/// A table of `2^n` buckets.
pub(crate) struct Table {
    /// `2^n` buckets, `n >= 0`.
    buckets: Box<[AtomicU32]>,
    /// Bits of a bucket that hold the slot index (the low ones); the rest hold the tag.
    index_bits: u32,
    /// `(1 << index_bits) - 1`.
    index_mask: u32,
    /// `32 - index_bits`: a hash's tag is `hash >> 32 >> tag_shift`, with the lowest bit set.
    tag_shift: u32,
}

/// The most slots a table can name: the tag keeps at least one bit.
pub(crate) const MAX_SLOTS: usize = 1 << 31;

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("buckets", &self.buckets.len())
            .field("index_bits", &self.index_bits)
            .finish_non_exhaustive()
    }
}

impl Table {
    /// An empty table of `buckets` (a power of two) buckets, able to name slots below `slots`
    /// (at most [`MAX_SLOTS`]).
    pub(crate) fn new(buckets: usize, slots: usize) -> Self {
        debug_assert!(buckets.is_power_of_two());
        let index_bits = (usize::BITS - slots.saturating_sub(1).leading_zeros()).clamp(1, 31);
        Self {
            buckets: (0..buckets.max(1)).map(|_| AtomicU32::new(EMPTY)).collect(),
            index_bits,
            index_mask: (1 << index_bits) - 1,
            tag_shift: index_bits,
        }
    }

    /// The number of buckets.
    pub(crate) fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// How many buckets (live or tombstones) the writer may use before it builds a new table.
    pub(crate) fn max_used(&self) -> usize {
        self.buckets() / 4 * 3
    }

    /// Whether slot `idx` can be named in this table.
    pub(crate) fn names(&self, idx: u32) -> bool {
        idx >> self.index_bits == 0
    }

    /// The tag of `hash`: its top `32 - index_bits` bits, lowest bit set so that no tag is zero.
    #[inline]
    fn tag(&self, hash: u64) -> u32 {
        ((hash >> 32) as u32 >> self.tag_shift) | 1
    }

    #[inline]
    fn encode(&self, hash: u64, idx: u32) -> u32 {
        (self.tag(hash) << self.index_bits) | idx
    }

    /// The bucket and slot index of the entry for `hash` that `is_key` accepts.
    ///
    /// Lock-free: run by readers inside a read (`ReadGuard`). `is_key` is only asked about slots
    /// whose tag matches. One bucket at a time: on a hit the first bucket is usually the one
    /// (the writer probes four at a time, see [`find_or_vacancy`](Self::find_or_vacancy)).
    #[inline]
    pub(crate) fn find(
        &self,
        hash: u64,
        mut is_key: impl FnMut(u32) -> bool,
    ) -> Option<(usize, u32)> {
        let tag = self.tag(hash);
        let buckets = &*self.buckets;
        // `buckets` is never empty, so `pos & mask` is always in bounds (and the compiler sees it).
        let mask = buckets.len().wrapping_sub(1);
        let mut pos = hash as usize;
        // At most one lap. A key present all along is found before that: its probe runs through
        // live buckets from its home to where it sits, and none of those becomes empty while it
        // is there (see `remove`). So a probe that ends after a lap only misses a key that was
        // absent, or removed, at some point during it.
        let end = pos.wrapping_add(buckets.len());
        while pos != end {
            let at = pos & mask;
            let bucket = buckets.get(at)?;
            // Acquire pairs with the Release stores in `insert` and `replace`: the slot a bucket
            // names was filled before the bucket was written.
            let bucket = bucket.load(Ordering::Acquire);
            if bucket >> self.index_bits == tag {
                if is_key(bucket & self.index_mask) {
                    return Some((at, bucket & self.index_mask));
                }
            } else if bucket == EMPTY {
                return None;
            }
            pos = pos.wrapping_add(1);
        }
        None
    }

    /// The entry for `hash` that `is_key` accepts, as [`find`](Self::find); or, if there is none,
    /// where to insert one (the first empty bucket or tombstone of its probe) and whether that
    /// bucket is empty. Writer only: one probe for "replace or insert".
    #[inline]
    pub(crate) fn find_or_vacancy(
        &self,
        hash: u64,
        is_key: impl FnMut(u32) -> bool,
    ) -> Result<(usize, u32), (usize, bool)> {
        self.probe::<true>(hash, is_key)
    }

    /// [`find`](Self::find), for the writer (four buckets at a time; see `probe`).
    #[inline]
    pub(crate) fn find_for_writer(
        &self,
        hash: u64,
        is_key: impl FnMut(u32) -> bool,
    ) -> Option<(usize, u32)> {
        self.probe::<false>(hash, is_key).ok()
    }

    /// The writer's probe: buckets are read four at a time and compared without a branch each.
    /// The writer mostly probes for keys that are not there (a fill after a miss, a purge of an
    /// absent key), whose probes vary in length, and a branch per bucket mispredicted about once
    /// a probe: a purge of an absent key spent 9.5 ns in it against hashbrown's 3.6 (its SIMD
    /// group match). With `VACANCY`, it also finds where the key would go (`Err`'s position is
    /// meaningless without it).
    #[inline]
    fn probe<const VACANCY: bool>(
        &self,
        hash: u64,
        mut is_key: impl FnMut(u32) -> bool,
    ) -> Result<(usize, u32), (usize, bool)> {
        let tag = self.tag(hash);
        let mask = self.buckets.len() - 1;
        let mut pos = hash as usize;
        let mut vacancy = None;
        // Only the writer stores buckets, and it is the caller: the table cannot change under
        // this probe, and it ends at an empty bucket (there always is one).
        loop {
            // Relaxed: only the writer stores buckets.
            let group: [u32; GROUP] =
                std::array::from_fn(|i| self.buckets[(pos + i) & mask].load(Ordering::Relaxed));
            let (mut matches, mut empty, mut tombstone) = (0u32, 0u32, 0u32);
            for (i, &bucket) in group.iter().enumerate() {
                matches |= u32::from(bucket >> self.index_bits == tag) << i;
                empty |= u32::from(bucket == EMPTY) << i;
                if VACANCY {
                    tombstone |= u32::from(bucket == TOMBSTONE) << i;
                }
            }
            // Only buckets before the first empty one are part of the probe.
            let before_empty = (empty & empty.wrapping_neg()).wrapping_sub(1);
            let mut candidates = matches & before_empty;
            while candidates != 0 {
                let i = candidates.trailing_zeros() as usize;
                let idx = group[i] & self.index_mask;
                if is_key(idx) {
                    return Ok(((pos + i) & mask, idx));
                }
                candidates &= candidates - 1;
            }
            let free = (tombstone & before_empty) | empty;
            if VACANCY && vacancy.is_none() && free != 0 {
                let i = free.trailing_zeros() as usize;
                vacancy = Some(((pos + i) & mask, empty >> i & 1 == 1));
            }
            if empty != 0 {
                return Err(vacancy.unwrap_or((0, true)));
            }
            pos += GROUP;
        }
    }

    /// Adds `idx` for `hash`, whose key is not in the table. Writer only. Returns whether an
    /// empty bucket was used (rather than a tombstone).
    pub(crate) fn insert(&self, hash: u64, idx: u32) -> bool {
        debug_assert!(self.names(idx));
        let mask = self.buckets.len() - 1;
        let mut pos = hash as usize & mask;
        loop {
            // Relaxed: only the writer stores buckets.
            let bucket = self.buckets[pos].load(Ordering::Relaxed);
            if bucket == EMPTY || bucket == TOMBSTONE {
                // Release pairs with the Acquire load in `find`: readers that see the bucket see
                // the slot's contents.
                self.buckets[pos].store(self.encode(hash, idx), Ordering::Release);
                return bucket == EMPTY;
            }
            pos = (pos + 1) & mask;
        }
    }

    /// Points bucket `pos` (found for `hash`, or its vacancy) at slot `idx`. Writer only.
    #[inline]
    pub(crate) fn replace(&self, pos: usize, hash: u64, idx: u32) {
        debug_assert!(self.names(idx));
        // Release pairs with the Acquire load in `find`.
        self.buckets[pos].store(self.encode(hash, idx), Ordering::Release);
    }

    /// Removes the entry in bucket `pos`. Writer only. Returns how many buckets stopped being
    /// used (live or tombstone): 0 when it leaves a tombstone.
    ///
    /// A bucket followed by an empty one becomes empty rather than a tombstone, and so do the
    /// tombstones right before it, since no probe needs to pass them any more: a key's probe runs
    /// through live buckets from its home to where it sits, so a present key always has a
    /// non-empty bucket after every bucket its probe passes. That holds for readers probing at
    /// the same moment too (they only stop earlier for keys that are not there). Without it,
    /// churn fills a table with tombstones that every miss must probe past.
    pub(crate) fn remove(&self, pos: usize) -> usize {
        let mask = self.buckets.len() - 1;
        // Relaxed: only the writer stores buckets.
        if self.buckets[(pos + 1) & mask].load(Ordering::Relaxed) != EMPTY {
            // Release (here and below): a reader that sees the removal sees the generation mark
            // the writer stored before it (`Cache::get_or_lease` validates a lock-free miss
            // against the generation).
            self.buckets[pos].store(TOMBSTONE, Ordering::Release);
            return 0;
        }
        self.buckets[pos].store(EMPTY, Ordering::Release);
        let mut freed = 1;
        let mut before = pos.wrapping_sub(1) & mask;
        while self.buckets[before].load(Ordering::Relaxed) == TOMBSTONE {
            self.buckets[before].store(EMPTY, Ordering::Release);
            freed += 1;
            before = before.wrapping_sub(1) & mask;
        }
        freed
    }

    /// The slot index in every live bucket. Writer only.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn live(&self) -> impl Iterator<Item = u32> + '_ {
        self.buckets.iter().filter_map(move |b| {
            let bucket = b.load(Ordering::Relaxed);
            (bucket >> self.index_bits != 0).then_some(bucket & self.index_mask)
        })
    }
}

#[cfg(all(test, not(leasecache_loom)))]
mod tests {
    use super::*;

    #[test]
    fn finds_what_it_holds_past_tombstones_and_reuses_them() {
        let t = Table::new(8, 100);
        // Four keys with the same home bucket and the same tag.
        for idx in 0..4 {
            assert!(t.insert(3, idx));
        }
        assert_eq!(t.find(3, |i| i == 2), Some((5, 2)));
        assert_eq!(t.remove(4), 0, "slot 1 leaves a tombstone");
        assert_eq!(
            t.find(3, |i| i == 3),
            Some((6, 3)),
            "a tombstone stops no probe"
        );
        assert_eq!(t.find(3, |i| i == 1), None);
        assert!(!t.insert(3, 9), "the tombstone is reused");
        assert_eq!(t.find(3, |i| i == 9), Some((4, 9)));
        t.replace(4, 3, 10);
        assert_eq!(t.find(3, |i| i == 10), Some((4, 10)));
        let mut live: Vec<u32> = t.live().collect();
        live.sort_unstable();
        assert_eq!(live, [0, 2, 3, 10]);
    }

    #[test]
    fn a_missing_key_gets_the_first_tombstone_of_its_probe() {
        let t = Table::new(8, 100);
        for idx in 0..4 {
            t.insert(3, idx); // buckets 3, 4, 5, 6
        }
        assert_eq!(t.find_or_vacancy(3, |i| i == 2), Ok((5, 2)));
        assert_eq!(t.find_or_vacancy(3, |_| false), Err((7, true)));
        t.remove(5);
        t.remove(4);
        assert_eq!(t.find_or_vacancy(3, |_| false), Err((4, false)));
        assert_eq!(
            t.find_or_vacancy(3, |i| i == 3),
            Ok((6, 3)),
            "past the tombstones"
        );
    }

    #[test]
    fn removing_the_end_of_a_run_empties_it_and_the_tombstones_before() {
        let t = Table::new(8, 100);
        for idx in 0..4 {
            t.insert(3, idx); // buckets 3, 4, 5, 6; 7 is empty
        }
        assert_eq!(t.remove(4), 0);
        assert_eq!(t.remove(5), 0);
        assert_eq!(
            t.remove(6),
            3,
            "6 is followed by an empty bucket: 6, 5 and 4 empty out"
        );
        assert_eq!(t.find_or_vacancy(3, |_| false), Err((4, true)));
        assert_eq!(t.find(3, |i| i == 0), Some((3, 0)));
        assert_eq!(t.remove(3), 1);
        assert_eq!(t.live().count(), 0);
    }

    #[test]
    fn tags_skip_other_keys_and_wrap_around() {
        let t = Table::new(4, 10);
        let (a, b) = (3u64 | (1 << 62), 3u64);
        t.insert(a, 1);
        t.insert(b, 2);
        let mut asked = Vec::new();
        assert_eq!(
            t.find(b, |i| {
                asked.push(i);
                i == 2
            }),
            Some((0, 2))
        );
        assert_eq!(
            asked,
            [2],
            "the other key's tag differs: its slot is not read"
        );
    }

    #[test]
    fn index_bits_grow_with_the_slots_and_the_tag_takes_the_rest() {
        assert_eq!(Table::new(16, 16).index_bits, 4);
        assert_eq!(Table::new(16, 17).index_bits, 5);
        assert_eq!(Table::new(16, 1 << 20).index_bits, 20);
        let t = Table::new(16, MAX_SLOTS);
        assert_eq!(t.index_bits, 31);
        let last = (MAX_SLOTS - 1) as u32;
        assert!(t.names(last) && !t.names(last + 1));
        // One tag bit left, always set: the tag only tells live buckets from the rest.
        t.insert(5, last);
        t.insert(5, 0);
        assert_eq!(t.find(5, |i| i == last), Some((5, last)));
        assert_eq!(t.find(5, |i| i == 0), Some((6, 0)));
        t.remove(5);
        assert_eq!(t.find(5, |i| i == 0), Some((6, 0)));
    }
}
