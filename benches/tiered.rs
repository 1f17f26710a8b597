//! The tiered cache's paths side by side, and invalidation delivery latency.
//!
//! Starts its own `redis-server` on a free loopback port (skips loudly if none is installed):
//!
//! | id | what |
//! |---|---|
//! | `tiered/l1_hit` | [`TieredCache::get`] answered by the L1 (polled once: it is ready at once) |
//! | `tiered/l1_hit_get_or_load` | [`TieredCache::get_or_load`] answered by the L1 |
//! | `tiered/l1_cache_get` | the bare L1 [`Cache::get`] underneath, for reference |
//! | `tiered/l1_hit_via_block_on` | `tiered/l1_hit` inside a tokio `block_on` (executor overhead included) |
//! | `tiered/redis_round_trip` | [`RedisStore::get`] of a present key: what an L1 miss costs at least |
//! | `tiered/l2_hit` | [`TieredCache::get_or_load`] after an L1-only purge: Redis hit + L1 fill |
//! | `tiered/load` | [`TieredCache::get_or_load`] of a purged key: Redis miss, loader, Redis save, L1 fill |
//! | `tiered/invalidation_delivery` | instance A purges; time until instance B's L1 applied it |
//!
//! Run: `cargo bench --features redis --bench tiered`; the ratios are printed at the end.

#[path = "../tests/support/mod.rs"]
mod support;

use criterion::Criterion;
use leasecache::Cache;
use leasecache::redis::{RedisOptions, RedisStore};
use leasecache::tiered::TieredCache;
use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

type Tc = TieredCache<String, String>;

fn main() {
    let Some(server) = support::RedisServer::start() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let url = server.url();
    let (a, b) = rt.block_on(async {
        let make = || async {
            let l2 = RedisStore::connect(&url, RedisOptions::new("bench-tiered"))
                .await
                .expect("connect");
            let cache: Tc = TieredCache::new(Cache::new(100_000), l2).expect("build");
            tokio::time::timeout(Duration::from_secs(10), cache.feed_confirmed())
                .await
                .expect("feed confirmed");
            Arc::new(cache)
        };
        (make().await, make().await)
    });
    let value = "x".repeat(64);
    let load = |v: &String| {
        let v = v.clone();
        move |_k: String| async move { Ok::<_, ()>(v) }
    };
    let hit_key = "hit".to_string();
    rt.block_on(a.get_or_load(hit_key.clone(), load(&value)))
        .expect("load");
    assert_eq!(a.l1().get("hit").as_ref(), Some(&value), "L1 filled");

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("tiered");
    // An L1 hit completes on its first poll: poll it once with a no-op waker, so that the
    // number is the hit path and not an executor's `block_on` machinery (shown separately).
    g.bench_function("l1_hit", |bch| {
        bch.iter(|| poll_once(a.get(black_box("hit"))).expect("get"))
    });
    g.bench_function("l1_hit_get_or_load", |bch| {
        bch.iter(|| {
            poll_once(a.get_or_load(black_box(hit_key.clone()), load(&value))).expect("get")
        })
    });
    g.bench_function("l1_cache_get", |bch| {
        bch.iter(|| a.l1().get(black_box("hit")).expect("hit"))
    });
    g.bench_function("l1_hit_via_block_on", |bch| {
        bch.iter(|| rt.block_on(a.get(black_box("hit"))).expect("get"))
    });
    g.bench_function("redis_round_trip", |bch| {
        bch.iter(|| rt.block_on(a.l2().get(black_box("hit"))).expect("get"))
    });
    g.bench_function("l2_hit", |bch| {
        bch.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                a.l1().purge("hit"); // this L1 only: Redis still has it
                let t = Instant::now();
                black_box(rt.block_on(a.get_or_load(hit_key.clone(), load(&value)))).expect("get");
                total += t.elapsed();
            }
            total
        })
    });
    g.bench_function("load", |bch| {
        let key = "miss".to_string();
        bch.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                rt.block_on(a.purge("miss")).expect("purge");
                let t = Instant::now();
                black_box(rt.block_on(a.get_or_load(key.clone(), load(&value)))).expect("load");
                total += t.elapsed();
            }
            total
        })
    });
    g.bench_function("invalidation_delivery", |bch| {
        bch.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let seen = b.stats().invalidations_received;
                let t = Instant::now();
                rt.block_on(a.purge("delivered")).expect("purge");
                let deadline = t + Duration::from_secs(10);
                while b.stats().invalidations_received == seen {
                    assert!(Instant::now() < deadline, "invalidation not delivered");
                    std::hint::spin_loop();
                }
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
    c.final_summary();
    // Only a real measurement (`cargo bench` passes `--bench`) has fresh estimates to compare.
    if std::env::args().any(|a| a == "--bench") {
        print_ratios();
    }
}

/// Polls `fut` once; panics if it is not ready (an L1 hit always is).
fn poll_once<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("an L1 hit did not complete on its first poll"),
    }
}

/// Reads criterion's estimates back and prints the ratios between the paths.
fn print_ratios() {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "target".into())
        .join("criterion/tiered");
    let mean_ns = |id: &str| -> Option<f64> {
        let text = std::fs::read_to_string(dir.join(id).join("new/estimates.json")).ok()?;
        let at = text.find("\"mean\"")?;
        let rest = &text[at..];
        let p = rest.find("\"point_estimate\":")? + "\"point_estimate\":".len();
        let end = rest[p..].find([',', '}'])?;
        rest[p..p + end].trim().parse().ok()
    };
    let ids = [
        "l1_hit",
        "l1_hit_get_or_load",
        "l1_cache_get",
        "l1_hit_via_block_on",
        "redis_round_trip",
        "l2_hit",
        "load",
        "invalidation_delivery",
    ];
    let means: Vec<Option<f64>> = ids.iter().map(|id| mean_ns(id)).collect();
    let Some(hit) = means[0] else {
        println!("(ratios unavailable: no criterion estimates under {dir:?})");
        return;
    };
    println!("\ntiered: mean time and ratio to an L1 hit");
    for (id, mean) in ids.iter().zip(&means) {
        if let Some(m) = mean {
            println!("  {id:<24} {:>12.0} ns   x{:.0}", m, m / hit);
        }
    }
}
