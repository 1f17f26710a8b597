//! What a hold-off costs: the hit path and the miss path of a cache with a hold-off in use,
//! beside the same cache without one (and moka / quick_cache on the hit path), in one run.
//!
//! `cargo bench --bench hold_off` (`-- ROUNDS` to change the 15 rounds). Rounds interleave the
//! subjects (each round starting with the next one), so a loaded machine slows all of them alike; the report gives each subject's median
//! ns/op and its ratio to plain leasecache's median. Single-threaded: the floors add per-call work,
//! not contention.
//!
//! - `hit`: `get` of 16k present keys in a scrambled order.
//! - `miss`: `get_or_lease` + `save_with_lease` of keys never seen, in a cache at capacity (16k),
//!   so every save also evicts. The three miss subjects are caches of their own, filled alike (by
//!   saves, which raise no floor) and fed the same key sequence, so they differ only in their
//!   floors: the policy's state, and with it the work a save does, is the same in all three. (A
//!   subject with another history, or whose saves a live hold-off refuses, measures the policy or
//!   the refusal, not the floors.)
//!   - `hold-off set`: the cache has a 1 s default hold-off and a purge raised one, so every
//!     lease reads its slot's deadline; only that purge's slot carries a live one (1 in 4096).
//!   - `passed deadlines`: the same, but first every slot of the table was purged with a hold-off
//!     that has passed, so the first miss on each slot also reads the clock, and its save clears
//!     the deadline.

mod common;

use leasecache::{Cache, Lookup};
use std::hint::black_box;
use std::time::{Duration, Instant};

const CAPACITY: u64 = 16_384;
const OPS: u64 = 200_000;

type Lc = Cache<u64, u64, ahash::RandomState>;

fn leasecache(hold_off: Option<Duration>) -> Lc {
    let builder = Cache::builder()
        .max_capacity(CAPACITY)
        .hasher(common::hasher());
    match hold_off {
        Some(d) => builder.hold_off(d).build(),
        None => builder.build(),
    }
}

fn per_op(start: Instant) -> f64 {
    start.elapsed().as_nanos() as f64 / OPS as f64
}

fn hits(get: &dyn Fn(u64) -> Option<u64>) -> f64 {
    let start = Instant::now();
    for i in 0..OPS {
        black_box(get(common::scramble(i % CAPACITY)));
    }
    per_op(start)
}

fn misses(cache: &Lc, next: &mut u64) -> f64 {
    let start = Instant::now();
    for _ in 0..OPS {
        let key = common::scramble(*next);
        *next += 1;
        match cache.get_or_lease(&key) {
            Lookup::Hit(v) => {
                black_box(v);
            }
            Lookup::Miss(lease) => {
                let _ = black_box(cache.save_with_lease(key, key, lease));
            }
        }
    }
    per_op(start)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(15);
    let plain = leasecache(None);
    let held = leasecache(Some(Duration::from_secs(1)));
    held.purge_with_hold_off(&u64::MAX, Duration::from_secs(1));
    let miss_subjects = [
        leasecache(None),
        leasecache(Some(Duration::from_secs(1))),
        leasecache(Some(Duration::from_secs(1))),
    ];
    // Every slot gets a deadline that passes at once: the purges below use a zero hold-off.
    for i in 0..(CAPACITY * 64) {
        miss_subjects[2].purge_with_hold_off(&common::scramble(u64::MAX - i), Duration::ZERO);
    }
    for cache in &miss_subjects {
        for i in 0..CAPACITY {
            let k = common::scramble(i);
            let lease = cache.lease(&k);
            let saved = cache
                .save_with_lease(k, k, lease)
                .expect("this cache's lease");
            assert!(
                saved.is_stored(),
                "a fill of a cache with no live hold-off is never refused"
            );
        }
    }
    // A hold-off in use: one slot (u64::MAX's) under a live 1 s deadline.
    miss_subjects[1].purge(&u64::MAX);
    let moka: moka::sync::Cache<u64, u64, ahash::RandomState> = moka::sync::Cache::builder()
        .max_capacity(CAPACITY)
        .build_with_hasher(common::hasher());
    let quick: quick_cache::sync::Cache<u64, u64, quick_cache::UnitWeighter, ahash::RandomState> =
        quick_cache::sync::Cache::with(
            CAPACITY as usize,
            CAPACITY,
            quick_cache::UnitWeighter,
            common::hasher(),
            quick_cache::sync::DefaultLifecycle::default(),
        );
    for i in 0..CAPACITY {
        let k = common::scramble(i);
        plain.insert(k, k);
        held.insert(k, k);
        moka.insert(k, k);
        quick.insert(k, k);
    }
    moka.run_pending_tasks();

    let mut hit: [Vec<f64>; 4] = Default::default();
    let mut miss: [Vec<f64>; 3] = Default::default();
    // The same key sequence for every miss subject.
    let mut next = [1u64 << 40; 3];
    for round in 0..rounds {
        // Each round starts with a different subject, so no subject always runs first.
        for i in 0..4 {
            match (i + round) % 4 {
                0 => hit[0].push(hits(&|k| plain.get(&k))),
                1 => hit[1].push(hits(&|k| held.get(&k))),
                2 => hit[2].push(hits(&|k| moka.get(&k))),
                _ => hit[3].push(hits(&|k| quick.get(&k))),
            }
        }
        for i in 0..3 {
            let which = (i + round) % 3;
            miss[which].push(misses(&miss_subjects[which], &mut next[which]));
        }
    }
    let report = |name: &str, subjects: &[&str], samples: &[Vec<f64>]| {
        let base = median(samples[0].clone());
        for (subject, xs) in subjects.iter().zip(samples) {
            let m = median(xs.clone());
            println!(
                "{name:>20} {subject:<28} {m:>7.1} ns/op  {:>5.3}x",
                m / base
            );
        }
    };
    println!("{rounds} rounds of {OPS} ops, medians; ratio to plain leasecache");
    report(
        "hit",
        &["leasecache", "leasecache+hold-off", "moka", "quick_cache"],
        &hit,
    );
    report(
        "miss",
        &[
            "leasecache",
            "leasecache+hold-off set",
            "leasecache+passed deadlines",
        ],
        &miss,
    );
}
