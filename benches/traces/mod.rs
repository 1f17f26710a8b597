//! Generated traces that behave like real ones: working sets that shift, popularity that changes,
//! recency that predicts the next access better than long-run frequency, sequential runs.
//! Deterministic for a seed. Each imitates one kind of workload (the shapes of the database,
//! storage, CDN and key-value traces in the cache literature: ARC's, LIRS's, Twitter's), not any
//! one trace; the policy is meant to be judged on real traces too (`--trace`).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

use crate::common::scramble;

/// The names of the generated kinds, in column order.
pub const KINDS: [&str; 5] = ["db", "storage", "cdn", "kv", "moving"];

/// `len` accesses of the kind `name` (one of [`KINDS`]), from `seed`.
pub fn generate(name: &str, len: usize, seed: u64) -> Vec<u64> {
    let mut rng =
        SmallRng::seed_from_u64(seed ^ scramble(name.len() as u64 + name.as_bytes()[0] as u64));
    let out = match name {
        "db" => db(&mut rng, len),
        "storage" => storage(&mut rng, len),
        "cdn" => cdn(&mut rng, len),
        "moving" => moving(&mut rng, len),
        _ => kv(&mut rng, len),
    };
    // Each kind in its own key space.
    let space = (KINDS.iter().position(|k| *k == name).unwrap_or(0) as u64 + 8) << 48;
    out.into_iter().map(|k| scramble(space | k)).collect()
}

fn zipf(n: u64, s: f64) -> Zipf<f64> {
    Zipf::new(n as f64, s).unwrap_or_else(|_| unreachable!("n >= 1, s >= 0"))
}

fn draw(z: &Zipf<f64>, rng: &mut SmallRng) -> u64 {
    z.sample(rng) as u64 - 1
}

/// A database buffer pool's page trace: hot index pages; row lookups skewed towards the newest
/// rows of a table that keeps growing (so the hot set drifts); short range scans over the whole
/// table; and reports that reread the pages of a recent scan.
fn db(rng: &mut SmallRng, len: usize) -> Vec<u64> {
    let index = zipf(3_000, 1.0);
    let recent = zipf(60_000, 0.9);
    let mut out = Vec::with_capacity(len + 64);
    let mut last_scan = (0u64, 0u64);
    while out.len() < len {
        let t = out.len() as u64;
        // The table grows by one page every 8 accesses.
        let newest = 200_000 + t / 8;
        let p: f64 = rng.random();
        if p < 0.35 {
            out.push(draw(&index, rng));
        } else if p < 0.75 {
            out.push(1_000_000 + newest.saturating_sub(draw(&recent, rng)));
        } else if p < 0.80 {
            let start = 1_000_000 + rng.random_range(0..newest);
            let n = rng.random_range(8..48);
            last_scan = (start, n);
            out.extend(start..start + n);
        } else if p < 0.83 {
            out.extend(last_scan.0..last_scan.0 + last_scan.1);
        } else {
            // Point lookups of old rows, rarely repeated.
            out.push(1_000_000 + rng.random_range(0..newest));
        }
    }
    out.truncate(len);
    out
}

/// A workstation's block trace: phases that each work on a set of files (read as sequential runs
/// of blocks), half of which carries over to the next phase; rereads of blocks touched moments
/// ago; and a log written sequentially and never read.
fn storage(rng: &mut SmallRng, len: usize) -> Vec<u64> {
    const FILES: usize = 4_000;
    let pick = zipf(FILES as u64, 0.8);
    let mut files: Vec<u64> = (0..FILES as u64).collect();
    let mut next_file = FILES as u64;
    let mut out = Vec::with_capacity(len + 64);
    let mut log = 1u64 << 40;
    let mut next_phase = 150_000;
    while out.len() < len {
        if out.len() >= next_phase {
            next_phase += 150_000;
            // A new phase: half of the files are replaced by new ones.
            for f in files.iter_mut() {
                if rng.random_bool(0.5) {
                    *f = next_file;
                    next_file += 1;
                }
            }
        }
        let p: f64 = rng.random();
        if p < 0.6 {
            let file = files[draw(&pick, rng) as usize];
            let size = 4 + (file * 7919) % 60;
            let start = rng.random_range(0..size);
            let n = rng.random_range(1..=(size - start).min(16));
            out.extend((start..start + n).map(|b| file << 8 | b));
        } else if p < 0.85 && out.len() > 2_000 {
            let back = rng.random_range(1..2_000);
            out.push(out[out.len() - back]);
        } else {
            let n = rng.random_range(1..8);
            out.extend(log..log + n);
            log += n;
        }
    }
    out.truncate(len);
    out
}

/// A CDN's object trace: new objects appear all the time and are most popular while new, their
/// popularity fading with age; a catalogue of evergreen objects with Zipf popularity; and
/// one-hit wonders.
fn cdn(rng: &mut SmallRng, len: usize) -> Vec<u64> {
    let age = zipf(200_000, 1.0);
    let catalogue = zipf(500_000, 0.8);
    let mut born = 0u64;
    let mut wonder = 1u64 << 40;
    (0..len)
        .map(|_| {
            if rng.random_bool(0.04) {
                born += 1;
            }
            let p: f64 = rng.random();
            if p < 0.45 {
                // A recent object, younger ones more likely.
                (1 << 30) + born.saturating_sub(draw(&age, rng))
            } else if p < 0.85 {
                draw(&catalogue, rng)
            } else {
                wonder += 1;
                wonder
            }
        })
        .collect()
}

/// A key-value store's trace: Zipf popularity whose ranking shifts every phase (keys rise and
/// fall); sessions that read their few keys again and again for a short while; and writes of
/// new keys read back soon after.
fn kv(rng: &mut SmallRng, len: usize) -> Vec<u64> {
    let keys = zipf(1_000_000, 0.95);
    let mut out = Vec::with_capacity(len + 64);
    let mut session = 1u64 << 40;
    let phase = 200_000;
    while out.len() < len {
        let shift = (out.len() / phase) as u64 * 7_919;
        let p: f64 = rng.random();
        if p < 0.55 {
            let r = draw(&keys, rng);
            // Within each block of 64 ranks, the phase rotates which key holds which rank.
            out.push(r / 64 * 64 + (r + shift) % 64 + (r / 64 % 3) * shift * 64);
        } else if p < 0.9 {
            // Sessions: a few live ones at a time, each read several times.
            if rng.random_bool(0.08) {
                session += 1;
            }
            let s = session - rng.random_range(0..12).min(session - (1 << 40));
            out.push(s << 4 | rng.random_range(0..4));
        } else if out.len() > 5_000 {
            let back = rng.random_range(1..5_000);
            out.push(out[out.len() - back]);
        } else {
            out.push(rng.random_range(0..1 << 39));
        }
    }
    out.truncate(len);
    out
}

/// A working set that moves on: Zipf popularity (s = 0.8) over 30k keys, 70 % of which give way
/// to fresh keys every 150k accesses (a new day's data, a batch job's next input, a deploy that
/// changes what is read), each fresh key taking the rank of the key it replaces. Recency finds
/// each new set at once; frequency sees the old set's counts until they age.
fn moving(rng: &mut SmallRng, len: usize) -> Vec<u64> {
    let ranks = zipf(30_000, 0.8);
    let mut set: Vec<u64> = (0..30_000).collect();
    let mut fresh = set.len() as u64;
    let mut out = Vec::with_capacity(len + 150_000);
    while out.len() < len {
        for _ in 0..150_000 {
            out.push(set[draw(&ranks, rng) as usize]);
        }
        for key in &mut set {
            if rng.random_bool(0.7) {
                *key = fresh;
                fresh += 1;
            }
        }
    }
    out.truncate(len);
    out
}
