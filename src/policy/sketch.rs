//! A count-min sketch of 4-bit counters with periodic halving (TinyLFU's "reset").

/// Four rows of 4-bit saturating counters packed sixteen to a `u64`.
#[derive(Debug)]
pub(crate) struct Sketch {
    table: Box<[u64]>,
    /// `table.len() * 16 - 1`: counters per row minus one, a power of two minus one.
    mask: u64,
    additions: u64,
    sample: u64,
    halvings: u64,
}

/// Counters per expected entry: 8, i.e. 4 bytes an entry. With one (the earlier size), admission
/// by the sketch was mostly noise: gating ghost hits through it cost 2-7 pp on every Zipf column of
/// the hit-ratio harness; with eight it wins the loop back (+5 pp at 1k and 10k entries) at no
/// cost on Zipf. Caffeine uses 16.
const COUNTERS_PER_ENTRY: usize = 8;

const SEEDS: [u64; 4] = [
    0x9E37_79B9_7F4A_7C15,
    0xC2B2_AE3D_27D4_EB4F,
    0x1656_67B1_9E37_79F9,
    0x85EB_CA77_C2B2_AE63,
];

impl Sketch {
    /// A sketch sized for about `entries` distinct hot keys.
    pub(crate) fn new(entries: usize) -> Self {
        let entries = entries.clamp(2, 1 << 23);
        let counters = (entries * COUNTERS_PER_ENTRY).next_power_of_two();
        let words = counters / 16;
        Self {
            table: vec![0; words].into_boxed_slice(),
            mask: counters as u64 - 1,
            additions: 0,
            halvings: 0,
            sample: entries.max(16) as u64 * 10,
        }
    }

    fn index(&self, hash: u64, row: usize) -> (usize, u32) {
        let h = (hash ^ SEEDS[row]).wrapping_mul(SEEDS[(row + 1) & 3]);
        let counter = (h >> 32 ^ h) & self.mask;
        ((counter >> 4) as usize, ((counter & 15) * 4) as u32)
    }

    /// The estimated count of `hash`: the minimum over its four counters.
    pub(crate) fn estimate(&self, hash: u64) -> u8 {
        (0..4)
            .map(|row| {
                let (word, shift) = self.index(hash, row);
                ((self.table[word] >> shift) & 15) as u8
            })
            .min()
            .unwrap_or(0)
    }

    /// Counts `times` more occurrences of `hash`.
    pub(crate) fn add(&mut self, hash: u64, times: u8) {
        if times == 0 {
            return;
        }
        let mut grew = false;
        for row in 0..4 {
            let (word, shift) = self.index(hash, row);
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

    /// Ages every counter so that old popularity fades.
    /// Whether the sketch has been halved at least once, i.e. has seen a full sample of
    /// `10 x entries` additions. Before that its counts are too young to refuse anything by.
    pub(crate) fn warmed(&self) -> bool {
        self.halvings > 0
    }

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
    fn periodic_reset_bounds_counts() {
        let mut s = Sketch::new(16);
        for h in 0..10_000u64 {
            s.add(h, 1);
        }
        assert!(s.additions < s.sample);
    }
}
