//! The ghost queue: fingerprints of entries recently evicted from the small queue. A miss whose
//! fingerprint is still here was evicted too early, so it gets a second chance in the main queue.
//!
//! Direct-mapped rather than a FIFO: one `u16` fingerprint per slot, overwritten when another
//! hash lands on the slot. That forgets old ghosts in random rather than strict FIFO order, which
//! the hit-ratio harness cannot tell apart, at 2 bytes a slot and no allocation per eviction (a
//! `VecDeque` plus a hash table of counts cost ~25 bytes a ghost and a fifth of the miss path).
//! A 16-bit fingerprint mistakes an unrelated hash for a ghost once in 32,768 lookups; the
//! hit-ratio harness gave the same table to two decimals with 32-bit ones.

#[derive(Debug)]
pub(crate) struct Ghost {
    slots: Box<[u16]>,
    mask: usize,
}

impl Ghost {
    /// A ghost remembering about `capacity` hashes.
    pub(crate) fn new(capacity: usize) -> Self {
        let len = capacity.clamp(16, 1 << 24).next_power_of_two();
        Self {
            slots: vec![0; len].into_boxed_slice(),
            mask: len - 1,
        }
    }

    fn place(&self, hash: u64) -> (usize, u16) {
        // Mixed first, so that weak hashes (tests, identity hashers) still spread. Index from the
        // top bits of the product, fingerprint from bits 16..32 (never 0, which marks empty).
        let mixed = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((mixed >> 40) as usize & self.mask, (mixed >> 16) as u16 | 1)
    }

    /// Whether `hash` was evicted recently.
    pub(crate) fn contains(&self, hash: u64) -> bool {
        let (i, fp) = self.place(hash);
        self.slots[i] == fp
    }

    /// Remembers `hash`.
    pub(crate) fn push(&mut self, hash: u64) {
        let (i, fp) = self.place(hash);
        self.slots[i] = fp;
    }

    /// Forgets `hash` (it came back).
    pub(crate) fn remove(&mut self, hash: u64) {
        let (i, fp) = self.place(hash);
        if self.slots[i] == fp {
            self.slots[i] = 0;
        }
    }

    pub(crate) fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_and_forgets() {
        let mut g = Ghost::new(64);
        let h = 0xDEAD_BEEF_0000_1234;
        assert!(!g.contains(h));
        g.push(h);
        assert!(g.contains(h));
        g.remove(h);
        assert!(!g.contains(h));
    }

    #[test]
    fn a_colliding_hash_overwrites() {
        let mut g = Ghost::new(16);
        let a = 1u64;
        let b = (2..u64::MAX)
            .find(|&h| g.place(h).0 == g.place(a).0)
            .expect("some hash shares the slot");
        g.push(a);
        g.push(b);
        assert!(g.contains(b) && !g.contains(a));
        g.clear();
        assert!(!g.contains(b));
    }
}
