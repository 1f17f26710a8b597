//! A count-min sketch of 4-bit counters with periodic halving (TinyLFU's "reset").

/// 4-bit saturating counters packed sixteen to a `u64`, in blocks of eight words (one 64-byte
/// cache line). A hash's four counters lie in one block, one in each of the block's four word
/// pairs, so an estimate or an addition touches one cache line rather than four (as Caffeine's
/// sketch does); at 8 counters an entry the sketch of a large cache is far bigger than the CPU's
/// caches, and the miss path makes three sketch operations.
#[derive(Debug)]
pub(crate) struct Sketch {
    table: Box<[u64]>,
    /// Blocks minus one (a power of two minus one).
    block_mask: usize,
    additions: u64,
    sample: u64,
    halvings: u64,
}

/// Counters per expected entry: 8, i.e. 4 bytes an entry. With one (the earlier size), admission
/// by the sketch was mostly noise: gating ghost hits through it cost 2-7 pp on every Zipf column of
/// the hit-ratio harness; with eight it wins the loop back (+5 pp at 1k and 10k entries) at no
/// cost on Zipf. Caffeine uses 16.
const COUNTERS_PER_ENTRY: usize = 8;

const WORDS_PER_BLOCK: usize = 8;

impl Sketch {
    /// A sketch sized for about `entries` distinct hot keys.
    pub(crate) fn new(entries: usize) -> Self {
        let entries = entries.clamp(2, 1 << 23);
        let counters = (entries * COUNTERS_PER_ENTRY).next_power_of_two().max(128);
        let words = counters / 16;
        Self {
            table: vec![0; words].into_boxed_slice(),
            block_mask: words / WORDS_PER_BLOCK - 1,
            additions: 0,
            halvings: 0,
            sample: entries.max(16) as u64 * 10,
        }
    }

    /// The (word, bit shift) of each of `hash`'s four counters.
    #[inline]
    fn counters(&self, hash: u64) -> [(usize, u32); 4] {
        let h = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let h = h ^ (h >> 32); // the low half, which picks the counters, now depends on all bits
        let block = ((h >> 32) as usize & self.block_mask) * WORDS_PER_BLOCK;
        std::array::from_fn(|row| {
            let bits = (h >> (row * 8)) as usize;
            let word = block + row * 2 + (bits & 1);
            (word, ((bits >> 1) & 15) as u32 * 4)
        })
    }

    /// The estimated count of `hash`: the minimum over its four counters.
    pub(crate) fn estimate(&self, hash: u64) -> u8 {
        self.counters(hash)
            .into_iter()
            .map(|(word, shift)| ((self.table[word] >> shift) & 15) as u8)
            .min()
            .unwrap_or(0)
    }

    /// Counts `times` more occurrences of `hash`.
    pub(crate) fn add(&mut self, hash: u64, times: u8) {
        if times == 0 {
            return;
        }
        let mut grew = false;
        for (word, shift) in self.counters(hash) {
            let current = (self.table[word] >> shift) & 15;
            let next = (current + u64::from(times)).min(15);
            if next != current {
                self.table[word] = (self.table[word] & !(15 << shift)) | (next << shift);
                grew = true;
            }
        }
        if grew {
            self.additions += u64::from(times);
            if self.additions >= self.sample {
                self.halve();
            }
        }
    }

    /// Whether the sketch has been halved at least once, i.e. has seen a full sample of
    /// `10 x entries` additions. Before that its counts are too young to refuse anything by.
    pub(crate) fn warmed(&self) -> bool {
        self.halvings > 0
    }

    /// Ages every counter so that old popularity fades.
    fn halve(&mut self) {
        self.halvings += 1;
        for word in self.table.iter_mut() {
            *word = (*word >> 1) & 0x7777_7777_7777_7777;
        }
        self.additions /= 2;
    }

    pub(crate) fn clear(&mut self) {
        self.table.iter_mut().for_each(|w| *w = 0);
        self.additions = 0;
        self.halvings = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let s = Sketch::new(1 << 12);
        for h in [0u64, 1, 0xDEAD_BEEF, u64::MAX] {
            let words = s.counters(h).map(|(word, _)| word);
            let block = words[0] / WORDS_PER_BLOCK;
            assert!(words.iter().all(|w| w / WORDS_PER_BLOCK == block));
            // One counter in each of the block's four word pairs: rows never share a word.
            let pairs: Vec<usize> = words.iter().map(|w| (w % WORDS_PER_BLOCK) / 2).collect();
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
