//! Helpers shared by the benchmarks: seeded key streams and resident-memory readings.
#![allow(dead_code)]

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Zipf};

/// `len` keys drawn from a Zipf distribution with exponent `s` over `n` keys, from `seed`.
///
/// Rank r (1 = most popular) becomes key `scramble(r)`, so popularity does not follow key order.
pub fn zipf_keys(n: u64, s: f64, len: usize, seed: u64) -> Vec<u64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    match Zipf::new(n as f64, s) {
        Ok(zipf) => (0..len)
            .map(|_| scramble(zipf.sample(&mut rng) as u64))
            .collect(),
        // Only reachable with n < 1 or s < 0, which the benchmarks never ask for.
        Err(_) => Vec::new(),
    }
}

/// A bijection on `u64` (splitmix64's finalizer), so distinct ranks stay distinct keys.
pub fn scramble(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The hasher every cache under test uses: ahash with fixed seeds, so runs are comparable.
pub fn hasher() -> ahash::RandomState {
    ahash::RandomState::with_seeds(0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344)
}
