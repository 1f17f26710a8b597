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
//! | `tiered/coarse_clock` | the coarse monotonic clock read every L1 read makes (Linux) |
//! | `tiered/instant_now` | `Instant::now()`, for reference |
//!
//! Then, outside criterion, **purge latency across processes**: this binary re-executes itself
//! as 0, 1 or 3 member processes (each a `TieredCache` on the namespace, doing nothing but
//! following the feed), and times 2,000 purges from this process in `Coherence::Strict` and
//! `Coherence::Bounded(50 ms)`: p50 / p99 per mode and instance count, and Strict's p50 over
//! Bounded's. Also, from the server's `INFO commandstats` over the timed purges: the messages
//! published per purge (PUBLISH + SPUBLISH calls, most from inside scripts) and the scripts run
//! per purge (EVALSHA + EVAL calls), whoever sent them.
//!
//! Run: `cargo bench --features redis --bench tiered`; the ratios are printed at the end.
//! `LEASECACHE_BENCH_PURGES_ONLY=1 cargo bench --features redis --bench tiered` prints only the
//! purge-latency table.

#[path = "../tests/support/mod.rs"]
mod support;

use criterion::Criterion;
use leasecache::Cache;
use leasecache::redis::{RedisOptions, RedisStore};
use leasecache::tiered::{Coherence, TieredCache};
use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

type Tc = TieredCache<String, String>;

fn main() {
    if support::process::role().as_deref() == Some("member") {
        member();
        return;
    }
    let Some(server) = support::RedisServer::start() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let url = server.url();
    // `LEASECACHE_BENCH_PURGES_ONLY=1`: only the purge-latency table (quick to iterate on).
    if std::env::var_os("LEASECACHE_BENCH_PURGES_ONLY").is_some() {
        purge_latency(&rt, &url);
        return;
    }
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
    #[cfg(target_os = "linux")]
    g.bench_function("coarse_clock", |bch| {
        bch.iter(|| {
            black_box(rustix::time::clock_gettime(
                rustix::time::ClockId::MonotonicCoarse,
            ))
        })
    });
    g.bench_function("instant_now", |bch| bch.iter(|| black_box(Instant::now())));
    g.finish();
    c.final_summary();
    drop((a, b));
    // Only a real measurement (`cargo bench` passes `--bench`) has fresh estimates to compare.
    if std::env::args().any(|a| a == "--bench") {
        print_ratios();
        purge_latency(&rt, &url);
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
        "coarse_clock",
        "instant_now",
    ];
    let means: Vec<Option<f64>> = ids.iter().map(|id| mean_ns(id)).collect();
    let Some(hit) = means[0] else {
        println!("(ratios unavailable: no criterion estimates under {dir:?})");
        return;
    };
    println!("\ntiered: mean time and ratio to an L1 hit");
    for (id, mean) in ids.iter().zip(&means) {
        if let Some(m) = mean {
            println!("  {id:<24} {:>12.0} ns   x{:.2}", m, m / hit);
        }
    }
    if let Some(bare) = means[2] {
        println!(
            "  l1_hit / l1_cache_get (the coherence checks on the hit path): x{:.2}",
            hit / bare
        );
    }
}

/// A member process: one `TieredCache` following the feed until it is killed.
fn member() {
    let url = std::env::var("LC_URL").expect("LC_URL");
    let ns = std::env::var("LC_NS").expect("LC_NS");
    let bounded = std::env::var("LC_BOUNDED").is_ok();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let l2 = RedisStore::connect(&url, RedisOptions::new(ns))
            .await
            .expect("connect");
        let mode = if bounded {
            Coherence::Bounded(Duration::from_millis(50))
        } else {
            Coherence::Strict
        };
        let cache: Tc = TieredCache::builder(Cache::new(1_000), l2)
            .coherence(mode)
            .build()
            .expect("build");
        cache.feed_confirmed().await;
        let mut r = redis::Client::open(url.as_str())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let _: u64 = redis::cmd("INCR")
            .arg("bench:ready")
            .query_async(&mut r)
            .await
            .expect("INCR");
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    });
}

/// Purge p50 / p99 from this process with 1, 2 and 4 instances (this one and member processes),
/// Strict and Bounded.
fn purge_latency(rt: &tokio::runtime::Runtime, url: &str) {
    const PURGES: usize = 2_000;
    println!("\npurge latency across processes ({PURGES} purges each; this process purges)");
    println!(
        "| instances | Strict p50 | Strict p99 | Bounded(50 ms) p50 | Bounded p99 | Strict p50 / Bounded p50 | Strict msgs / purge | Strict scripts / purge | Bounded msgs / purge |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (round, instances) in [1usize, 2, 4].into_iter().enumerate() {
        let mut row = Vec::new();
        for bounded in [false, true] {
            let ns = format!("bench-purge-{round}-{bounded}");
            let mut env = vec![("LC_URL", url.to_owned()), ("LC_NS", ns.clone())];
            if bounded {
                env.push(("LC_BOUNDED", "1".to_owned()));
            }
            let mut conn = redis::Client::open(url)
                .expect("url")
                .get_connection()
                .expect("connect");
            let _: () = redis::cmd("SET")
                .arg("bench:ready")
                .arg(0)
                .query(&mut conn)
                .expect("SET");
            let members: Vec<support::process::Proc> = (1..instances)
                .map(|_| support::process::Proc::spawn("member", "member", &env))
                .collect();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let ready: usize = redis::cmd("GET")
                    .arg("bench:ready")
                    .query(&mut conn)
                    .expect("GET");
                if ready == instances - 1 {
                    break;
                }
                assert!(Instant::now() < deadline, "members not ready");
                std::thread::sleep(Duration::from_millis(5));
            }
            let lat = rt.block_on(async {
                let l2 = RedisStore::connect(url, RedisOptions::new(ns))
                    .await
                    .expect("connect");
                let mode = if bounded {
                    Coherence::Bounded(Duration::from_millis(50))
                } else {
                    Coherence::Strict
                };
                let cache: Tc = TieredCache::builder(Cache::new(1_000), l2)
                    .coherence(mode)
                    .build()
                    .expect("build");
                cache.feed_confirmed().await;
                for i in 0..200 {
                    cache
                        .purge(&format!("k{}", i % 64))
                        .await
                        .expect("warm-up purge");
                }
                let before = command_calls(url);
                let mut lat = Vec::with_capacity(PURGES);
                for i in 0..PURGES {
                    let t = Instant::now();
                    cache.purge(&format!("k{}", i % 64)).await.expect("purge");
                    lat.push(t.elapsed());
                }
                let after = command_calls(url);
                let per = |n: u64| n as f64 / PURGES as f64;
                (lat, per(after.0 - before.0), per(after.1 - before.1))
            });
            drop(members); // SIGKILL
            let (mut lat, msgs, scripts) = lat;
            lat.sort();
            let at = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
            row.push((at(0.5), at(0.99), msgs, scripts));
        }
        let (s, b) = (row[0], row[1]);
        println!(
            "| {instances} | {:.0} us | {:.0} us | {:.0} us | {:.0} us | x{:.2} | {:.2} | {:.2} | {:.2} |",
            s.0.as_secs_f64() * 1e6,
            s.1.as_secs_f64() * 1e6,
            b.0.as_secs_f64() * 1e6,
            b.1.as_secs_f64() * 1e6,
            s.0.as_secs_f64() / b.0.as_secs_f64(),
            s.2,
            s.3,
            b.2,
        );
    }
}

/// `(PUBLISH + SPUBLISH calls, EVALSHA + EVAL calls)` so far, from the server's
/// `INFO commandstats` (calls made inside scripts included).
fn command_calls(url: &str) -> (u64, u64) {
    let mut conn = redis::Client::open(url)
        .expect("url")
        .get_connection()
        .expect("connect");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .expect("INFO");
    let calls = |name: &str| -> u64 {
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    };
    (
        calls("publish") + calls("spublish"),
        calls("evalsha") + calls("eval"),
    )
}
