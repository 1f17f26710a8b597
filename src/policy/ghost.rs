//! The ghost queue: hashes of entries recently evicted from the small queue. A miss whose hash is
//! still here was evicted too early, so its next insertion goes straight to the main queue.

use hashbrown::HashTable;
use std::collections::VecDeque;

#[derive(Debug, Default)]
pub(crate) struct Ghost {
    /// Hashes in eviction order; may contain a hash several times.
    order: VecDeque<u64>,
    /// How many times each hash occurs in `order`.
    counts: HashTable<(u64, u32)>,
}

impl Ghost {
    /// Whether `hash` was evicted recently.
    pub(crate) fn contains(&self, hash: u64) -> bool {
        self.counts.find(hash, |&(h, _)| h == hash).is_some()
    }

    /// Remembers `hash`, forgetting the oldest hashes beyond `capacity`.
    pub(crate) fn push(&mut self, hash: u64, capacity: usize) {
        if capacity == 0 {
            return;
        }
        while self.order.len() >= capacity {
            self.pop_oldest();
        }
        self.order.push_back(hash);
        match self.counts.find_mut(hash, |&(h, _)| h == hash) {
            Some((_, n)) => *n += 1,
            None => {
                self.counts.insert_unique(hash, (hash, 1), |&(h, _)| h);
            }
        }
    }

    fn pop_oldest(&mut self) {
        let Some(hash) = self.order.pop_front() else {
            return;
        };
        if let Ok(entry) = self.counts.find_entry(hash, |&(h, _)| h == hash) {
            if entry.get().1 > 1 {
                entry.into_mut().1 -= 1;
            } else {
                entry.remove();
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    pub(crate) fn clear(&mut self) {
        self.order.clear();
        self.counts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_oldest_beyond_capacity() {
        let mut g = Ghost::default();
        for h in 0..5 {
            g.push(h, 3);
        }
        assert!(!g.contains(0) && !g.contains(1));
        assert!(g.contains(2) && g.contains(3) && g.contains(4));
        assert_eq!(g.len(), 3);
    }

    #[test]
    fn repeated_hash_survives_until_last_copy_leaves() {
        let mut g = Ghost::default();
        g.push(1, 2);
        g.push(1, 2);
        g.push(2, 2);
        assert!(g.contains(1));
        g.push(3, 2);
        assert!(!g.contains(1));
    }
}
