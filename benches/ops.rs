//! Operation throughput, side by side: leasecache, quick_cache, moka and dashmap (unbounded,
//! the ceiling of a concurrent map), in one run, on the same workload, with the same hasher
//! (ahash with fixed seeds).
//!
//! ```text
//! cargo bench --bench ops                       # everything (~6 minutes on 2 cores)
//! cargo bench --bench ops -- get_hit            # one workload
//! OPS_CLOCK=cpu cargo bench --bench ops -- --duel # threads' CPU clocks instead of wall time
//! python3 benches/support/ratios.py             # ratios to the other caches from the results
//! cargo bench --bench ops -- --latency          # insert latency tails, side by side
//! OPS_LEASECACHE_TTI=3600 OPS_MOKA_TTI=3600 cargo bench --bench ops -- --duel get_hit  # with TTIs
//! ```
//!
//! Workloads, each at 1 and 2 threads, with `u64` values and `Arc<[u8; 128]>` values; one
//! iteration is a batch of [`BATCH`] operations per thread:
//!
//! - `get_hit`: `get` of keys that are all cached (64k keys, capacity 128k);
//! - `miss`: the full miss path on keys never seen, with the cache at capacity (16k) so every
//!   fill also evicts: leasecache `get_or_lease` + `save_with_lease`, the others `get` + `insert`
//!   (dashmap also removes the key inserted 16k fills earlier, to stay bounded);
//! - `purge`: purge / invalidate / remove of absent keys (most purges in production find nothing);
//! - `zipf_read_mostly`: Zipf (s = 1.0) over 1M keys, capacity 100k: 98 % cache-aside reads
//!   (filled on a miss as above), 2 % purges;
//! - `write_heavy`: the same keys, 50 % cache-aside reads, 50 % unconditional inserts;
//! - `replace`: the replacing-write mix of issue 17: 100k cached keys (capacity 200k), uniform,
//!   50 % `insert` over an existing key, 50 % `get`.

mod common;

use criterion::{BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use leasecache::Lookup;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Operations per thread in one iteration.
const BATCH: u64 = 1024;
/// Keys of the Zipf workloads, and the length of their precomputed key stream.
const ZIPF_KEYS: u64 = 1_000_000;
const ZIPF_STREAM: usize = 1 << 20;
const HIT_KEYS: u64 = 1 << 16;
const MISS_CAPACITY: u64 = 1 << 14;
/// Keys of the `replace` workload, all cached (capacity twice as many).
const REPLACE_KEYS: u64 = 100_000;

/// A cached value type.
trait Value: Clone + Send + Sync + 'static {
    const NAME: &'static str;
    fn make(key: u64) -> Self;
}

impl Value for u64 {
    const NAME: &'static str = "u64";
    fn make(key: u64) -> Self {
        key
    }
}

impl Value for Arc<[u8; 128]> {
    const NAME: &'static str = "arc128";
    fn make(key: u64) -> Self {
        Arc::new([key as u8; 128])
    }
}

/// A cache under test.
trait Subject<V: Value>: Sync + Sized {
    const NAME: &'static str;
    fn build(capacity: u64) -> Self;
    fn get(&self, key: u64) -> Option<V>;
    fn insert(&self, key: u64, value: V);
    /// Cache-aside: the cached value, or a fresh one saved the cache's safest way.
    fn read_through(&self, key: u64) -> V;
    fn purge(&self, key: u64);
    /// Keeps an unbounded map bounded in the miss workload: drops a key inserted long ago.
    fn forget(&self, _key: u64) {}
}

type LeaseCache<V> = leasecache::Cache<u64, V, ahash::RandomState>;
type QuickCache<V> = quick_cache::sync::Cache<
    u64,
    V,
    quick_cache::UnitWeighter,
    ahash::RandomState,
    quick_cache::sync::DefaultLifecycle<u64, V>,
>;
type MokaCache<V> = moka::sync::Cache<u64, V, ahash::RandomState>;
type DashMap<V> = dashmap::DashMap<u64, V, ahash::RandomState>;

impl<V: Value> Subject<V> for LeaseCache<V> {
    const NAME: &'static str = "leasecache";
    fn build(capacity: u64) -> Self {
        let builder = leasecache::Cache::builder()
            .max_capacity(capacity)
            .hasher(common::hasher());
        // `OPS_LEASECACHE_TTI=secs` / `OPS_LEASECACHE_TTL=secs`: the same cache with a time to
        // idle or a time to live (issue 19: what a time to idle costs the hit path).
        let secs = |var: &str| {
            let secs = std::env::var(var).ok()?.parse().ok()?;
            Some(Duration::from_secs(secs))
        };
        let builder = match secs("OPS_LEASECACHE_TTI") {
            Some(tti) => builder.time_to_idle(tti),
            None => builder,
        };
        match secs("OPS_LEASECACHE_TTL") {
            Some(ttl) => builder.time_to_live(ttl),
            None => builder,
        }
        .build()
    }
    fn get(&self, key: u64) -> Option<V> {
        leasecache::Cache::get(self, &key)
    }
    fn insert(&self, key: u64, value: V) {
        leasecache::Cache::insert(self, key, value);
    }
    fn read_through(&self, key: u64) -> V {
        match self.get_or_lease(&key) {
            Lookup::Hit(v) => v,
            Lookup::Miss(lease) => {
                let v = V::make(key);
                let _ = self.save_with_lease(key, v.clone(), lease);
                v
            }
        }
    }
    fn purge(&self, key: u64) {
        leasecache::Cache::purge(self, &key);
    }
}

impl<V: Value> Subject<V> for QuickCache<V> {
    const NAME: &'static str = "quick_cache";
    fn build(capacity: u64) -> Self {
        quick_cache::sync::Cache::with(
            capacity as usize,
            capacity,
            quick_cache::UnitWeighter,
            common::hasher(),
            quick_cache::sync::DefaultLifecycle::default(),
        )
    }
    fn get(&self, key: u64) -> Option<V> {
        quick_cache::sync::Cache::get(self, &key)
    }
    fn insert(&self, key: u64, value: V) {
        quick_cache::sync::Cache::insert(self, key, value);
    }
    fn read_through(&self, key: u64) -> V {
        quick_cache::sync::Cache::get(self, &key).unwrap_or_else(|| {
            let v = V::make(key);
            quick_cache::sync::Cache::insert(self, key, v.clone());
            v
        })
    }
    fn purge(&self, key: u64) {
        self.remove(&key);
    }
}

impl<V: Value> Subject<V> for MokaCache<V> {
    const NAME: &'static str = "moka";
    fn build(capacity: u64) -> Self {
        let builder = moka::sync::Cache::builder().max_capacity(capacity);
        // `OPS_MOKA_TTI=secs`: moka with a time to idle, to compare like with like.
        match std::env::var("OPS_MOKA_TTI")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            Some(secs) => builder.time_to_idle(Duration::from_secs(secs)),
            None => builder,
        }
        .build_with_hasher(common::hasher())
    }
    fn get(&self, key: u64) -> Option<V> {
        moka::sync::Cache::get(self, &key)
    }
    fn insert(&self, key: u64, value: V) {
        moka::sync::Cache::insert(self, key, value);
    }
    fn read_through(&self, key: u64) -> V {
        moka::sync::Cache::get(self, &key).unwrap_or_else(|| {
            let v = V::make(key);
            moka::sync::Cache::insert(self, key, v.clone());
            v
        })
    }
    fn purge(&self, key: u64) {
        self.invalidate(&key);
    }
}

impl<V: Value> Subject<V> for DashMap<V> {
    const NAME: &'static str = "dashmap";
    fn build(capacity: u64) -> Self {
        dashmap::DashMap::with_capacity_and_hasher(capacity as usize, common::hasher())
    }
    fn get(&self, key: u64) -> Option<V> {
        dashmap::DashMap::get(self, &key).map(|r| r.value().clone())
    }
    fn insert(&self, key: u64, value: V) {
        dashmap::DashMap::insert(self, key, value);
    }
    fn read_through(&self, key: u64) -> V {
        if let Some(v) = dashmap::DashMap::get(self, &key) {
            return v.value().clone();
        }
        let v = V::make(key);
        dashmap::DashMap::insert(self, key, v.clone());
        v
    }
    fn purge(&self, key: u64) {
        self.remove(&key);
    }
    fn forget(&self, key: u64) {
        self.remove(&key);
    }
}

/// Runs `op(thread)` on `threads` threads at once and returns the wall time.
fn timed(threads: usize, op: &(dyn Fn(usize) + Sync)) -> Duration {
    if cpu_clock() {
        return timed_on_cpu(threads, op);
    }
    if threads == 1 {
        let start = Instant::now();
        op(0);
        return start.elapsed();
    }
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                op(t);
            });
        }
        barrier.wait();
        // Leaving the scope joins the workers, so the time is taken after the last one ends.
        Instant::now()
    })
    .elapsed()
}

/// Whether `OPS_CLOCK=cpu`: time each thread by its own CPU clock instead of the wall clock. On
/// a box shared with other work (load average 10-15 on 2 cores), wall time measures the
/// scheduler: a 20 ms round was descheduled for most of its length, and same-run ratios moved
/// 30x between rounds. CPU time leaves the preemption out (not the other work's effect on the
/// caches); time spent blocked on a lock is left out too, so 2-thread rows then compare the work
/// done, not the waiting.
fn cpu_clock() -> bool {
    static CPU: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CPU.get_or_init(|| std::env::var("OPS_CLOCK").is_ok_and(|c| c == "cpu"))
}

/// [`timed`] by the threads' CPU clocks: their CPU time, divided by the thread count (so that a
/// time per operation is CPU time per operation per thread, as wall time per operation would be
/// for threads that never wait).
fn timed_on_cpu(threads: usize, op: &(dyn Fn(usize) + Sync)) -> Duration {
    let on_cpu = |t: usize| {
        let clock = || {
            let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
            Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
        };
        let start = clock();
        op(t);
        clock() - start
    };
    if threads == 1 {
        return on_cpu(0);
    }
    let total: Duration = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads).map(|t| s.spawn(move || on_cpu(t))).collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    total / threads as u32
}

/// Fresh keys for the miss workload: never handed out twice in a process.
static NEXT_FRESH: AtomicU64 = AtomicU64::new(1 << 50);

/// The streams every workload draws keys from.
struct Keys {
    zipf: Vec<u64>,
    /// How many Zipf accesses warm a cache before it is measured.
    warm: usize,
}

/// One cache, set up for one workload at one thread count.
struct Prepared<'k, C> {
    cache: C,
    workload: &'static str,
    threads: usize,
    keys: &'k Keys,
    /// Where each thread is in its key stream, carried from one sample to the next.
    cursors: Vec<AtomicU64>,
}

impl<'k, C> Prepared<'k, C> {
    /// Builds and warms the cache the way `workload` needs it.
    fn new<V: Value>(workload: &'static str, threads: usize, keys: &'k Keys) -> Self
    where
        C: Subject<V>,
    {
        let cache = match workload {
            "get_hit" | "purge" => {
                let cache = C::build(2 * HIT_KEYS);
                for k in 0..HIT_KEYS {
                    cache.insert(common::scramble(k), V::make(k));
                }
                cache
            }
            "miss" => C::build(MISS_CAPACITY),
            "replace" => {
                let cache = C::build(2 * REPLACE_KEYS);
                for k in 0..REPLACE_KEYS {
                    cache.insert(common::scramble(k), V::make(k));
                }
                cache
            }
            _ => {
                let cache = C::build(ZIPF_KEYS / 10);
                for &k in keys.zipf.iter().take(keys.warm) {
                    cache.read_through(k);
                }
                cache
            }
        };
        Self {
            cache,
            workload,
            threads,
            keys,
            cursors: (0..threads).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Feeds thread `t`'s next `n` stream positions to `op`; each thread starts at its own place.
    #[inline(always)]
    fn stream(&self, t: usize, n: u64, mut op: impl FnMut(u64)) {
        let offset = t as u64 * 0x9e37_79b9;
        let start = self.cursors[t].load(Ordering::Relaxed);
        for i in start + offset..start + offset + n {
            op(i);
        }
        self.cursors[t].store(start + n, Ordering::Relaxed);
    }

    /// Runs `iters` batches on every thread; returns the wall time.
    fn run<V: Value>(&self, iters: u64) -> Duration
    where
        C: Subject<V>,
    {
        let cache = &self.cache;
        let zipf = &self.keys.zipf;
        let zmask = ZIPF_STREAM as u64 - 1;
        let n = iters * BATCH;
        match self.workload {
            "get_hit" => timed(self.threads, &|t| {
                self.stream(t, n, |i| {
                    black_box(cache.get(common::scramble(i & (HIT_KEYS - 1))));
                });
            }),
            "miss" => timed(self.threads, &|_| {
                let base = NEXT_FRESH.fetch_add(n, Ordering::Relaxed);
                for i in base..base + n {
                    black_box(cache.read_through(common::scramble(i)));
                    cache.forget(common::scramble(i.wrapping_sub(MISS_CAPACITY)));
                }
            }),
            "purge" => timed(self.threads, &|_| {
                let base = NEXT_FRESH.fetch_add(n, Ordering::Relaxed);
                for i in base..base + n {
                    cache.purge(common::scramble(i));
                }
            }),
            "zipf_read_mostly" => timed(self.threads, &|t| {
                self.stream(t, n, |i| {
                    let k = zipf[(i & zmask) as usize];
                    if i % 50 == 0 {
                        cache.purge(k);
                    } else {
                        black_box(cache.read_through(k));
                    }
                });
            }),
            "write_heavy" => timed(self.threads, &|t| {
                self.stream(t, n, |i| {
                    let k = zipf[(i & zmask) as usize];
                    if i % 2 == 0 {
                        cache.insert(k, V::make(k));
                    } else {
                        black_box(cache.read_through(k));
                    }
                });
            }),
            "replace" => timed(self.threads, &|t| {
                self.stream(t, n, |i| {
                    // A multiplicative hash of the position spreads the keys uniformly.
                    let k = common::scramble(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % REPLACE_KEYS);
                    if i % 2 == 0 {
                        cache.insert(k, V::make(k));
                    } else {
                        black_box(cache.get(k));
                    }
                });
            }),
            other => unreachable!("unknown workload {other}"),
        }
    }
}

const WORKLOADS: [&str; 6] = [
    "get_hit",
    "miss",
    "purge",
    "zipf_read_mostly",
    "write_heavy",
    "replace",
];

fn bench_one<V: Value, C: Subject<V>>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    workload: &'static str,
    threads: usize,
    keys: &Keys,
) {
    let prepared = Prepared::<C>::new::<V>(workload, threads, keys);
    group.bench_function(C::NAME, |b| b.iter_custom(|iters| prepared.run::<V>(iters)));
}

fn bench_value<V: Value>(c: &mut Criterion, keys: &Keys) {
    for workload in WORKLOADS {
        for threads in [1, 2] {
            let mut group = c.benchmark_group(format!("{workload}/{}/{threads}t", V::NAME));
            group.throughput(Throughput::Elements(BATCH * threads as u64));
            bench_one::<V, LeaseCache<V>>(&mut group, workload, threads, keys);
            bench_one::<V, QuickCache<V>>(&mut group, workload, threads, keys);
            bench_one::<V, MokaCache<V>>(&mut group, workload, threads, keys);
            bench_one::<V, DashMap<V>>(&mut group, workload, threads, keys);
            group.finish();
        }
    }
}

/// The caches of one duel, each behind `run(iters) -> wall time`.
type Runner<'a> = Box<dyn Fn(u64) -> Duration + 'a>;

fn runner<'a, V: Value, C: Subject<V> + 'a>(
    workload: &'static str,
    threads: usize,
    keys: &'a Keys,
) -> Runner<'a> {
    let prepared = Prepared::<C>::new::<V>(workload, threads, keys);
    Box::new(move |iters| prepared.run::<V>(iters))
}

/// Interleaved A/B rounds: every round times each cache once, so that the machine's noise (other
/// builds on a shared box) lands on all of them alike. Rounds walk through every order of the
/// caches: with a plain rotation each cache always ran right after the same other cache, and the
/// one that followed the cache with the biggest working set started every round with the coldest
/// CPU caches (a bias of up to ~20 % on `get_hit`). Prints the median
/// time per operation of each cache and leasecache's ratio to each.
fn duel_value<V: Value>(keys: &Keys, rounds: usize, filter: &[String]) {
    for workload in WORKLOADS {
        for threads in [1, 2] {
            let id = format!("{workload}/{}/{threads}t", V::NAME);
            if !filter.is_empty() && !filter.iter().any(|f| id.contains(f.as_str())) {
                continue;
            }
            let runners: [Runner<'_>; 4] = [
                runner::<V, LeaseCache<V>>(workload, threads, keys),
                runner::<V, QuickCache<V>>(workload, threads, keys),
                runner::<V, MokaCache<V>>(workload, threads, keys),
                runner::<V, DashMap<V>>(workload, threads, keys),
            ];
            // `OPS_DUEL_ONLY=leasecache` times one cache alone (for a profiler); a comma-separated list
            // times those caches only.
            let only = std::env::var("OPS_DUEL_ONLY").ok();
            let names = ["leasecache", "quick_cache", "moka", "dashmap"];
            let skip = |c: usize| {
                only.as_deref()
                    .is_some_and(|o| !o.split(',').any(|n| n == names[c]))
            };
            // Size a round to about 20 ms of the slowest cache.
            let iters: Vec<u64> = runners
                .iter()
                .enumerate()
                .filter(|(c, _)| !skip(*c))
                .map(|(_, run)| {
                    run(4);
                    let per = run(16).as_secs_f64() / 16.0;
                    ((0.02 / per.max(1e-9)) as u64).clamp(1, 100_000)
                })
                .collect();
            let iters = *iters.iter().min().unwrap_or(&1);
            let mut samples: Vec<Vec<f64>> = vec![Vec::new(); runners.len()];
            for round in 0..rounds {
                for c in nth_permutation::<4>(round) {
                    if skip(c) {
                        samples[c].push(f64::NAN);
                        continue;
                    }
                    let ops = (iters * BATCH * threads as u64) as f64;
                    samples[c].push(runners[c](iters).as_nanos() as f64 / ops);
                }
            }
            let medians: Vec<f64> = samples
                .iter_mut()
                .map(|s| {
                    s.sort_by(f64::total_cmp);
                    s[s.len() / 2]
                })
                .collect();
            // A cache left out by `OPS_DUEL_ONLY` has no median: its cells read `-`.
            let cell = |x: f64, digits: usize| {
                if x.is_nan() {
                    "-".to_string()
                } else {
                    format!("{x:.digits$}")
                }
            };
            print!("| {workload} | {} | {threads} |", V::NAME);
            for m in &medians {
                print!(" {} |", cell(*m, 1));
            }
            for m in &medians[1..] {
                print!(" {} |", cell(medians[0] / m, 2));
            }
            println!();
        }
    }
}

/// The `n`-th (mod `N!`) permutation of `0..N` in lexicographic order.
fn nth_permutation<const N: usize>(n: usize) -> [usize; N] {
    let mut left: Vec<usize> = (0..N).collect();
    let mut n = n % (1..=N).product::<usize>();
    std::array::from_fn(|i| {
        let radix: usize = (1..N - i).product(); // (N - 1 - i)!
        let pick = left.remove(n / radix);
        n %= radix;
        pick
    })
}

fn duel(args: &[String]) {
    let rounds = std::env::var("OPS_DUEL_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(24);
    let filter: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .collect();
    let keys = Keys {
        zipf: common::zipf_keys(ZIPF_KEYS, 1.0, ZIPF_STREAM, 7),
        warm: ZIPF_STREAM / 2,
    };
    println!(
        "Median ns per operation over {rounds} interleaved rounds ({} cores); ratio = leasecache \
         time / other time (below 1: leasecache faster)\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "| workload | values | threads | leasecache ns | quick_cache ns | moka ns | dashmap ns | \
         vs quick_cache | vs moka | vs dashmap |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    duel_value::<u64>(&keys, rounds, &filter);
    duel_value::<Arc<[u8; 128]>>(&keys, rounds, &filter);
}

/// Runs one workload on one cache only, for a fixed number of batches, so that a profiler's
/// counts are that cache's: `--solo <cache> <workload>/<values>/<threads>t <batches>`, e.g.
/// `valgrind --tool=callgrind target/release/deps/ops-<hash> --solo leasecache replace/u64/1t 200`
/// (the Zipf stream is only built for the workloads that use it). Run it with two batch counts
/// and subtract to take the setup out of the counts.
fn solo(args: &[String]) {
    let words: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    let [cache, id, batches] = words[..] else {
        panic!("usage: --solo <cache> <workload>/<values>/<threads>t <batches>");
    };
    let parts: Vec<&str> = id.split('/').collect();
    let [workload, values, threads] = parts[..] else {
        panic!("expected <workload>/<values>/<threads>t, got {id}");
    };
    let workload = WORKLOADS
        .into_iter()
        .find(|w| *w == workload)
        .expect("a known workload");
    let threads: usize = threads
        .trim_end_matches('t')
        .parse()
        .expect("a thread count");
    let batches: u64 = batches.parse().expect("a batch count");
    let zipf_needed = matches!(workload, "zipf_read_mostly" | "write_heavy");
    let keys = Keys {
        zipf: if zipf_needed {
            common::zipf_keys(ZIPF_KEYS, 1.0, ZIPF_STREAM, 7)
        } else {
            vec![0; ZIPF_STREAM]
        },
        warm: ZIPF_STREAM / 2,
    };
    fn go<V: Value>(cache: &str, workload: &'static str, threads: usize, keys: &Keys, n: u64) {
        let run = match cache {
            "leasecache" => runner::<V, LeaseCache<V>>(workload, threads, keys),
            "quick_cache" => runner::<V, QuickCache<V>>(workload, threads, keys),
            "moka" => runner::<V, MokaCache<V>>(workload, threads, keys),
            "dashmap" => runner::<V, DashMap<V>>(workload, threads, keys),
            other => panic!("unknown cache {other}"),
        };
        let took = run(n);
        let ops = (n * BATCH * threads as u64) as f64;
        println!(
            "{cache} {workload}/{}/{threads}t: {n} batches, {:.1} ns/op",
            V::NAME,
            took.as_nanos() as f64 / ops
        );
    }
    match values {
        "u64" => go::<u64>(cache, workload, threads, &keys, batches),
        "arc128" => go::<Arc<[u8; 128]>>(cache, workload, threads, &keys, batches),
        other => panic!("unknown value type {other}"),
    }
}

/// Insert latency, side by side: `--latency [capacity ...]` (default 25,000 and 128,000).
/// One thread; each cache is filled with keys seen once, then runs 29 x capacity accesses, half
/// to a skewed hot set of twice the capacity (a uniform draw cubed), half to fresh keys, and
/// every miss inserts. Each insert is timed alone, so what it prints are the writes' tails: the
/// insert that rebuilds a shard's table, moves a queue or runs a collection, against quick_cache
/// and moka doing the same. `u64` values; wall time (a preempted insert counts too, so run it on
/// an idle box and compare the caches within one run).
fn latency(args: &[String]) {
    let capacities: Vec<u64> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(|a| a.parse().expect("a capacity"))
        .collect();
    let capacities = if capacities.is_empty() {
        vec![25_000, 128_000]
    } else {
        capacities
    };
    println!(
        "Insert latency (ns), one thread, every miss inserts (`--latency`); >100us and >1ms count inserts\n"
    );
    println!("| capacity | cache | inserts | mean | p50 | p99.9 | p99.99 | max | >100us | >1ms |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    fn run<C: Subject<u64>>(capacity: u64) {
        let cache = C::build(capacity);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut fresh = 1u64 << 40;
        let mut took = Vec::with_capacity(capacity as usize * 16);
        for i in 0..capacity * 30 {
            let key = if i >= capacity && next() % 2 == 0 {
                let r = (next() % 1_000_000) as f64 / 1e6;
                (r * r * r * capacity as f64 * 2.0) as u64
            } else {
                fresh += 1;
                fresh
            };
            if cache.get(key).is_none() {
                let start = Instant::now();
                cache.insert(key, key);
                took.push(start.elapsed().as_nanos() as u64);
            }
        }
        let mean = took.iter().sum::<u64>() / took.len() as u64;
        took.sort_unstable();
        let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
        let over = |ns: u64| took.len() - took.partition_point(|&t| t <= ns);
        println!(
            "| {capacity} | {} | {} | {mean} | {} | {} | {} | {} | {} | {} |",
            C::NAME,
            took.len(),
            at(0.5),
            at(0.999),
            at(0.9999),
            took[took.len() - 1],
            over(100_000),
            over(1_000_000),
        );
    }
    for capacity in capacities {
        run::<LeaseCache<u64>>(capacity);
        run::<QuickCache<u64>>(capacity);
        run::<MokaCache<u64>>(capacity);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--latency") {
        latency(&args);
        return;
    }
    if args.iter().any(|a| a == "--duel") {
        duel(&args);
        return;
    }
    if args.iter().any(|a| a == "--solo") {
        solo(&args);
        return;
    }
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    // Without `--bench` (`cargo test --benches`, a debug build) criterion runs every benchmark
    // once; skip the long warm-up too.
    let smoke = !args.iter().any(|a| a == "--bench");
    let keys = Keys {
        zipf: common::zipf_keys(ZIPF_KEYS, 1.0, ZIPF_STREAM, 7),
        warm: if smoke { 4096 } else { ZIPF_STREAM / 2 },
    };
    bench_value::<u64>(&mut c, &keys);
    bench_value::<Arc<[u8; 128]>>(&mut c, &keys);
    c.final_summary();
}
