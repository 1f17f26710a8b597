//! Operation throughput, side by side: leasecache, quick_cache, moka and dashmap (unbounded,
//! the ceiling of a concurrent map), in one run, on the same workload, with the same hasher
//! (ahash with fixed seeds).
//!
//! ```text
//! cargo bench --bench ops                       # everything (~6 minutes on 2 cores)
//! cargo bench --bench ops -- get_hit            # one workload
//! python3 benches/support/ratios.py             # ratios to the other caches from the results
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
//! - `write_heavy`: the same keys, 50 % cache-aside reads, 50 % unconditional inserts.

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
        leasecache::Cache::builder()
            .max_capacity(capacity)
            .hasher(common::hasher())
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
        moka::sync::Cache::builder()
            .max_capacity(capacity)
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

/// Runs `op(thread, iters)` on `threads` threads at once and returns the wall time.
fn timed(threads: usize, iters: u64, op: &(dyn Fn(usize, u64) + Sync)) -> Duration {
    if threads == 1 {
        let start = Instant::now();
        op(0, iters);
        return start.elapsed();
    }
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                op(t, iters);
            });
        }
        barrier.wait();
        let start = Instant::now();
        // Leaving the scope joins the workers.
        start
    })
    .elapsed()
}

/// Fresh keys for the miss workload: never handed out twice in a process.
static NEXT_FRESH: AtomicU64 = AtomicU64::new(1 << 50);

/// The streams every workload draws keys from.
struct Keys {
    zipf: Vec<u64>,
}

fn bench_one<V: Value, C: Subject<V>>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    workload: &str,
    threads: usize,
    keys: &Keys,
) {
    let zipf = &keys.zipf;
    let zmask = ZIPF_STREAM as u64 - 1;
    // Each thread starts at its own place in the shared streams.
    let offset = |t: usize| t as u64 * 0x9e37_79b9;
    match workload {
        "get_hit" => {
            let cache = C::build(2 * HIT_KEYS);
            for k in 0..HIT_KEYS {
                cache.insert(common::scramble(k), V::make(k));
            }
            let cursor: Vec<AtomicU64> = (0..threads).map(|_| AtomicU64::new(0)).collect();
            group.bench_function(C::NAME, |b| {
                b.iter_custom(|iters| {
                    timed(threads, iters, &|t, iters| {
                        let mut i = cursor[t].load(Ordering::Relaxed) + offset(t);
                        for _ in 0..iters * BATCH {
                            i += 1;
                            black_box(cache.get(common::scramble(i & (HIT_KEYS - 1))));
                        }
                        cursor[t].store(i - offset(t), Ordering::Relaxed);
                    })
                });
            });
        }
        "miss" => {
            let cache = C::build(MISS_CAPACITY);
            group.bench_function(C::NAME, |b| {
                b.iter_custom(|iters| {
                    timed(threads, iters, &|_, iters| {
                        let n = iters * BATCH;
                        let base = NEXT_FRESH.fetch_add(n, Ordering::Relaxed);
                        for i in base..base + n {
                            black_box(cache.read_through(common::scramble(i)));
                            cache.forget(common::scramble(i.wrapping_sub(MISS_CAPACITY)));
                        }
                    })
                });
            });
        }
        "purge" => {
            let cache = C::build(2 * HIT_KEYS);
            for k in 0..HIT_KEYS {
                cache.insert(common::scramble(k), V::make(k));
            }
            group.bench_function(C::NAME, |b| {
                b.iter_custom(|iters| {
                    timed(threads, iters, &|_, iters| {
                        let n = iters * BATCH;
                        let base = NEXT_FRESH.fetch_add(n, Ordering::Relaxed);
                        for i in base..base + n {
                            cache.purge(common::scramble(i));
                        }
                    })
                });
            });
        }
        "zipf_read_mostly" | "write_heavy" => {
            let writes_every = if workload == "write_heavy" { 2 } else { 50 };
            let cache = C::build(ZIPF_KEYS / 10);
            for &k in zipf.iter().take(ZIPF_STREAM / 2) {
                cache.read_through(k);
            }
            let cursor: Vec<AtomicU64> = (0..threads).map(|_| AtomicU64::new(0)).collect();
            group.bench_function(C::NAME, |b| {
                b.iter_custom(|iters| {
                    timed(threads, iters, &|t, iters| {
                        let mut i = cursor[t].load(Ordering::Relaxed) + offset(t);
                        for _ in 0..iters * BATCH {
                            i += 1;
                            let k = zipf[(i & zmask) as usize];
                            if i % writes_every == 0 {
                                if writes_every == 2 {
                                    cache.insert(k, V::make(k));
                                } else {
                                    cache.purge(k);
                                }
                            } else {
                                black_box(cache.read_through(k));
                            }
                        }
                        cursor[t].store(i - offset(t), Ordering::Relaxed);
                    })
                });
            });
        }
        _ => unreachable!("unknown workload {workload}"),
    }
}

fn bench_value<V: Value>(c: &mut Criterion, keys: &Keys) {
    for workload in [
        "get_hit",
        "miss",
        "purge",
        "zipf_read_mostly",
        "write_heavy",
    ] {
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

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let keys = Keys {
        zipf: common::zipf_keys(ZIPF_KEYS, 1.0, ZIPF_STREAM, 7),
    };
    bench_value::<u64>(&mut c, &keys);
    bench_value::<Arc<[u8; 128]>>(&mut c, &keys);
    c.final_summary();
}
