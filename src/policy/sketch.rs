//! A count-min sketch of 4-bit counters with periodic halving (TinyLFU's "reset").

/// 4-bit saturating counters packed sixteen to a `u64`, in blocks of eight words (one 64-byte
/// cache line). A hash's four counters lie in one block, one in each of the block's four word
/// pairs, so an estimate or an addition touches one cache line rather than four (as Caffeine's
/// sketch does); at 11 counters an entry the sketch of a large cache is far bigger than the CPU's
/// caches, and the miss path makes three sketch operations.
#[derive(Debug)]
pub(crate) struct Sketch {
    /// Not necessarily a power of two blocks: a hash picks its block by multiply-shift.
    table: Box<[Block]>,
    additions: u64,
    sample: u64,
    halvings: u64,
    /// The hash last added and its estimate after the addition, until the next change of the
    /// counts: a miss counts its key and then, when the key faces admission at once (a full cache
    /// whose small queue is empty), estimates it, and this spares that estimate (~40
    /// instructions).
    last: Option<(u64, u8)>,
}

/// Eight words of counters, aligned so that a block is exactly one cache line.
#[derive(Clone, Copy, Debug, Default)]
#[repr(align(64))]
struct Block([u64; WORDS_PER_BLOCK]);

/// Counters per expected entry: 11, i.e. 5.5 bytes an entry, exactly (the block count is not
/// rounded to a power of two, see `place`). With one (the earlier size), admission by the sketch
/// was mostly noise: gating ghost hits through it cost 2-7 pp on every Zipf column of the
/// hit-ratio harness; with eight it won the loop back (+5 pp at 1k and 10k entries). Eight rounded
/// up to a power of two gave caches 8-13 counters an entry depending on their size; 11 exactly
/// gained 0.08 pp at 1k entries on Zipf s = 0.7 (the last column there behind quick_cache) and
/// cost the 10k columns up to 0.11 pp (they had 13), still ahead. 10 lost 0.05 pp of those gains;
/// 16 gained 0.1-0.2 more on Zipf s = 0.7 but would cost 2.5 bytes an entry. Caffeine uses 16.
const COUNTERS_PER_ENTRY: usize = 11;

const WORDS_PER_BLOCK: usize = 8;
const COUNTERS_PER_BLOCK: usize = 16 * WORDS_PER_BLOCK;

/// Additions (that grew a counter) per expected entry between halvings. TinyLFU's 10 ages too
/// fast for low skew: at Zipf s = 0.7 a key at the cache's popularity threshold is seen less than
/// once a period. 14 gained 0.20 pp (1k entries) and 0.35 pp (10k) there on the hit-ratio
/// harness; 16 and up began to lose the loop.
const SAMPLE_PER_ENTRY: u64 = 14;

/// Where a hash's four counters are: its block, and the bits of the hash that pick each
/// counter's word in the block and bit shift in the word (see [`Place::counter`]).
#[derive(Clone, Copy)]
struct Place {
    block: usize,
    bits: u64,
}

impl Place {
    /// The word and bit shift of counter `row` (`0..4`): one word of the row's pair, and one of
    /// its sixteen nibbles. With `row` a loop constant (the loops over rows unroll), the
    /// compiler sees that the word is below `WORDS_PER_BLOCK`, and indexes without a check.
    #[inline(always)]
    fn counter(self, row: usize) -> (usize, u32) {
        let bits = (self.bits >> (row * 8)) as usize;
        (row * 2 + (bits & 1), ((bits >> 1) & 15) as u32 * 4)
    }

    /// Every counter's word and shift.
    #[cfg(test)]
    fn counters(self) -> [(usize, u32); 4] {
        std::array::from_fn(|row| self.counter(row))
    }
}

impl Sketch {
    /// A sketch sized for about `entries` distinct hot keys.
    pub(crate) fn new(entries: usize) -> Self {
        let entries = entries.clamp(2, 1 << 23);
        let blocks = (entries * COUNTERS_PER_ENTRY).div_ceil(COUNTERS_PER_BLOCK);
        Self {
            table: vec![Block::default(); blocks].into_boxed_slice(),
            additions: 0,
            halvings: 0,
            sample: entries.max(16) as u64 * SAMPLE_PER_ENTRY,
            last: None,
        }
    }

    /// Where `hash`'s counters are.
    #[inline]
    fn place(&self, hash: u64) -> Place {
        let h = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let h = h ^ (h >> 32); // the low half, which picks the counters, now depends on all bits
        Place {
            // Multiply-shift: the top half scaled to `0..blocks`, for any block count.
            block: (((h >> 32) * self.table.len() as u64) >> 32) as usize,
            bits: h,
        }
    }

    /// The estimated count of `hash`: the minimum over its four counters.
    #[inline]
    pub(crate) fn estimate(&self, hash: u64) -> u8 {
        match self.last {
            Some((last, estimate)) if last == hash => estimate,
            _ => self.estimate_from_counters(hash),
        }
    }

    /// [`estimate`](Self::estimate), read from the counters.
    #[inline]
    fn estimate_from_counters(&self, hash: u64) -> u8 {
        let place = self.place(hash);
        let block = &self.table[place.block].0;
        let mut min = 15;
        for row in 0..4 {
            let (word, shift) = place.counter(row);
            min = min.min((block[word] >> shift) & 15);
        }
        min as u8
    }

    /// Counts `times` more occurrences of `hash`, by conservative update: each counter is raised
    /// to at most the estimate plus `times`, so a counter that other keys already pushed above
    /// the estimate does not grow (the estimate grows all the same). Less overestimation for the
    /// many one-hit keys a large cache sees: +0.3 pp at 100k entries on Zipf s = 0.7, with the
    /// ghost admission that goes with it (`Shard::admit_ghost`).
    pub(crate) fn add(&mut self, hash: u64, times: u8) {
        if times == 0 {
            return;
        }
        let place = self.place(hash);
        let block = &mut self.table[place.block].0;
        let mut counts = [0; 4];
        for (row, count) in counts.iter_mut().enumerate() {
            let (word, shift) = place.counter(row);
            *count = (block[word] >> shift) & 15;
        }
        let estimate = counts.iter().copied().fold(15, u64::min);
        let target = (estimate + u64::from(times)).min(15);
        for (row, count) in counts.into_iter().enumerate() {
            let (word, shift) = place.counter(row);
            block[word] = (block[word] & !(15 << shift)) | (count.max(target) << shift);
        }
        // The minimum counter is now `target`, and the others are at least that.
        self.last = Some((hash, target as u8));
        if target > estimate {
            self.additions += u64::from(times);
            if self.additions >= self.sample {
                self.halve();
            }
        }
    }

    /// Whether the sketch has been halved at least once, i.e. has seen a full sample of
    /// `14 x entries` additions. Before that its counts are too young to refuse anything by.
    pub(crate) fn warmed(&self) -> bool {
        self.halvings > 0
    }

    /// Ages every counter so that old popularity fades.
    fn halve(&mut self) {
        self.last = None;
        self.halvings += 1;
        for word in self.table.iter_mut().flat_map(|b| b.0.iter_mut()) {
            *word = (*word >> 1) & 0x7777_7777_7777_7777;
        }
        self.additions /= 2;
    }

    /// Counts as warmed up, as after a first halving.
    #[cfg(test)]
    pub(crate) fn warm_for_test(&mut self) {
        self.halvings = self.halvings.max(1);
    }

    /// Clears the counts but stays warmed up.
    #[cfg(test)]
    pub(crate) fn clear_for_test(&mut self) {
        self.table.fill(Block::default());
        self.additions = 0;
        self.last = None;
    }

    pub(crate) fn clear(&mut self) {
        self.table.fill(Block::default());
        self.additions = 0;
        self.halvings = 0;
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The remembered estimate of the last added hash is what the counters say, through
        /// additions of colliding keys, saturation, halvings and clears.
        #[test]
        fn the_last_addition_is_remembered_exactly(
            ops in proptest::collection::vec((0u8..40, 0u64..48, 0u8..4), 1..800),
        ) {
            // A small sketch (one block, halved every 224 additions): 48 keys share its counters,
            // and most runs halve it.
            let mut s = Sketch::new(2);
            for (op, key, times) in ops {
                let hash = key.wrapping_mul(0x2545_F491_4F6C_DD1D);
                match op {
                    0 => s.clear(),
                    1 => s.clear_for_test(),
                    _ => s.add(hash, times),
                }
                for key in 0..48u64 {
                    let hash = key.wrapping_mul(0x2545_F491_4F6C_DD1D);
                    prop_assert_eq!(s.estimate(hash), s.estimate_from_counters(hash));
                }
            }
        }
    }

    #[test]
    fn counts_saturate_and_halve() {
        let mut s = Sketch::new(64);
        for _ in 0..20 {
            s.add(7, 1);
        }
        assert_eq!(s.estimate(7), 15);
        assert_eq!(s.estimate(8), 0);
        s.halve();
        assert_eq!(s.estimate(7), 7);
    }

    #[test]
    fn updates_are_conservative() {
        let mut s = Sketch::new(64);
        for _ in 0..5 {
            s.add(1, 1);
        }
        let heavy = s.place(1);
        let counters_of = |p: Place| p.counters().map(|c| (p.block, c));
        // A key sharing some but not all of key 1's counters.
        let light = (2..u64::MAX)
            .find(|&h| {
                let shared = counters_of(s.place(h))
                    .iter()
                    .filter(|c| counters_of(heavy).contains(c))
                    .count();
                (1..4).contains(&shared)
            })
            .expect("some key shares a counter");
        s.add(light, 1);
        assert_eq!(s.estimate(light), 1);
        // The shared counters were already above the light key's estimate: they stay at 5.
        for (block, (word, shift)) in counters_of(s.place(light)) {
            if counters_of(heavy).contains(&(block, (word, shift))) {
                assert_eq!((s.table[block].0[word] >> shift) & 15, 5);
            }
        }
        assert_eq!(s.estimate(1), 5);
    }

    #[test]
    fn sized_by_entries_without_rounding() {
        // 125,000 entries (a shard of a 1M-entry cache): 1,375,000 counters in 10,743 blocks,
        // where eight an entry rounded up to a power of two took 2^20 counters (8,192 blocks).
        let s = Sketch::new(125_000);
        assert_eq!(s.table.len(), 10_743);
        // Every block is reachable and no hash picks one past the end.
        let mut seen = vec![false; s.table.len()];
        for h in 0..200_000u64 {
            seen[s.place(h.wrapping_mul(0x2545_F491_4F6C_DD1D)).block] = true;
        }
        assert!(seen.iter().all(|&b| b));
        assert_eq!(Sketch::new(2).table.len(), 1);
    }

    #[test]
    fn warms_up_on_the_first_halving_and_clear_starts_over() {
        let mut s = Sketch::new(16);
        assert!(!s.warmed());
        // Distinct keys, so every addition grows a counter: the sample is exactly that many.
        for h in 0..s.sample - 1 {
            s.add(h, 1);
        }
        assert!(!s.warmed());
        s.add(u64::MAX, 1);
        assert!(s.warmed());
        s.clear();
        assert!(!s.warmed());
        assert_eq!(s.estimate(0), 0);
    }

    #[test]
    fn a_keys_counters_share_one_cache_line() {
        assert_eq!(std::mem::size_of::<Block>(), 64);
        assert_eq!(std::mem::align_of::<Block>(), 64);
        let s = Sketch::new(1 << 12);
        for h in [0u64, 1, 0xDEAD_BEEF, u64::MAX] {
            // One counter in each of the block's four word pairs: rows never share a word.
            let pairs = s.place(h).counters().map(|(word, _)| word / 2);
            assert_eq!(pairs, [0, 1, 2, 3]);
        }
    }

    #[test]
    fn periodic_reset_bounds_counts() {
        let mut s = Sketch::new(16);
        for h in 0..10_000u64 {
            s.add(h, 1);
        }
        assert!(s.additions < s.sample);
    }
}
