//! The cost of the Redis tier's lease scripts, next to plain `GET`/`SET` through the same client.
//!
//! Starts its own `redis-server` on a free loopback port (skips loudly if none is installed) and
//! measures one round trip each:
//!
//! | id | what |
//! |---|---|
//! | `redis/baseline_get_hit` | `GET` of a present string key |
//! | `redis/baseline_set` | `SET` of a string key |
//! | `redis/get_hit` | [`RedisStore::get`] of a present key (one `HGET` + decode) |
//! | `redis/get_or_lease_hit` | [`RedisStore::get_or_lease`] of a present key (script) |
//! | `redis/get_or_lease_miss` | [`RedisStore::get_or_lease`] of a fresh absent key (script, mints a marker) |
//! | `redis/save` | [`RedisStore::save_with_lease`] under a valid lease (script) |
//!
//! Run: `cargo bench --features redis --bench redis`; the ratios are printed at the end.

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use leasecache::Lookup;
use leasecache::redis::{RedisLease, RedisOptions, RedisStore};

fn main() {
    let Some(server) = support::RedisServer::start() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let url = server.url();
    let value = "x".repeat(64);
    let (store, mut raw) = rt.block_on(async {
        let store: RedisStore<String> = RedisStore::connect(&url, RedisOptions::new("bench"))
            .await
            .expect("connect");
        let client = redis::Client::open(url.as_str()).expect("client");
        let raw = redis::aio::ConnectionManager::new(client)
            .await
            .expect("connect");
        (store, raw)
    });
    let lease: RedisLease = rt.block_on(async {
        store.insert("hit", &value).await.expect("insert");
        redis::cmd("SET")
            .arg("plain")
            .arg(&value)
            .query_async::<()>(&mut raw)
            .await
            .expect("SET");
        match store.get_or_lease("saved").await.expect("lease") {
            Lookup::Miss(l) => l,
            Lookup::Hit(_) => unreachable!("fresh server"),
        }
    });

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = c.benchmark_group("redis");
    group.bench_function("baseline_get_hit", |b| {
        b.iter(|| {
            rt.block_on(async {
                let v: Option<Vec<u8>> = redis::cmd("GET")
                    .arg("plain")
                    .query_async(&mut raw)
                    .await
                    .expect("GET");
                black_box(v)
            })
        })
    });
    group.bench_function("baseline_set", |b| {
        b.iter(|| {
            rt.block_on(async {
                redis::cmd("SET")
                    .arg("plain")
                    .arg(&value)
                    .query_async::<()>(&mut raw)
                    .await
                    .expect("SET")
            })
        })
    });
    group.bench_function("get_hit", |b| {
        b.iter(|| rt.block_on(async { black_box(store.get("hit").await.expect("get")) }))
    });
    group.bench_function("get_or_lease_hit", |b| {
        b.iter(|| {
            rt.block_on(async { black_box(store.get_or_lease("hit").await.expect("lookup")) })
        })
    });
    let mut n = 0u64;
    group.bench_function("get_or_lease_miss", |b| {
        b.iter(|| {
            n += 1;
            let key = format!("miss{n}");
            rt.block_on(async { black_box(store.get_or_lease(&key).await.expect("lookup")) })
        })
    });
    group.bench_function("save", |b| {
        b.iter(|| {
            rt.block_on(async {
                black_box(
                    store
                        .save_with_lease("saved", &value, &lease)
                        .await
                        .expect("save"),
                )
            })
        })
    });
    group.finish();
    c.final_summary();

    // A plain side-by-side of mean round trips, so the ratios need no post-processing.
    let mean = |f: &mut dyn FnMut()| {
        let n = 2000;
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        start.elapsed() / n
    };
    let get = mean(&mut || {
        rt.block_on(async {
            let _: Option<Vec<u8>> = redis::cmd("GET")
                .arg("plain")
                .query_async(&mut raw)
                .await
                .expect("GET");
        })
    });
    let set = mean(&mut || {
        rt.block_on(async {
            redis::cmd("SET")
                .arg("plain")
                .arg(&value)
                .query_async::<()>(&mut raw)
                .await
                .expect("SET");
        })
    });
    let hit = mean(&mut || {
        rt.block_on(async {
            store.get("hit").await.expect("get");
        })
    });
    let mut m = 0u64;
    let miss = mean(&mut || {
        m += 1;
        let key = format!("ratio-miss{m}");
        rt.block_on(async {
            store.get_or_lease(&key).await.expect("lookup");
        })
    });
    let save = mean(&mut || {
        rt.block_on(async {
            store
                .save_with_lease("saved", &value, &lease)
                .await
                .expect("save");
        })
    });
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!("round trip means (2000 each):");
    println!("  GET {get:?}  SET {set:?}");
    println!("  get_hit {hit:?} = {:.2}x GET", ratio(hit, get));
    println!(
        "  get_or_lease_miss {miss:?} = {:.2}x GET",
        ratio(miss, get)
    );
    println!("  save {save:?} = {:.2}x SET", ratio(save, set));
}
