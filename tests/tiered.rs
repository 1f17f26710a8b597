//! The tiered cache against a real `redis-server`: several `TieredCache` instances, each with its
//! own Redis connections and its own L1, stand in for processes.
//!
//! Every test is bounded in time; waits poll a condition with a deadline, never sleep in place of
//! synchronisation. Latencies are measured and printed, never asserted.

mod support;

use leasecache::Cache;
use leasecache::redis::{RedisOptions, RedisStore};
use leasecache::tiered::{FillPoint, TieredBuilder, TieredCache};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use support::{RedisServer, wait_for};

type Tc = TieredCache<String, u64>;
type Action = Box<dyn FnOnce(FillPoint, String) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// How long any single wait in these tests may take before the test fails.
const WAIT: Duration = Duration::from_secs(15);

async fn store(url: &str, ns: &str) -> RedisStore<u64> {
    RedisStore::connect(url, RedisOptions::new(ns))
        .await
        .expect("connect to the test redis")
}

/// One "process": its own store connection, its own L1, its own feed; ready when returned.
async fn instance(
    url: &str,
    ns: &str,
    configure: impl FnOnce(TieredBuilder<String, u64>) -> TieredBuilder<String, u64>,
) -> Arc<Tc> {
    let builder = TieredCache::builder(Cache::new(10_000), store(url, ns).await)
        .ping_interval(Duration::from_millis(200))
        .ping_timeout(Duration::from_millis(500));
    let cache = configure(builder).build().expect("build in a runtime");
    tokio::time::timeout(WAIT, cache.feed_confirmed())
        .await
        .expect("feed confirmed");
    Arc::new(cache)
}

/// The source of truth: one version counter per key `k{i}`.
struct Source(Vec<AtomicU64>);

impl Source {
    fn new(keys: usize) -> Arc<Self> {
        Arc::new(Self((0..keys).map(|_| AtomicU64::new(1)).collect()))
    }
    fn read(&self, i: usize) -> u64 {
        self.0[i].load(Ordering::SeqCst)
    }
    fn write(&self, i: usize) -> u64 {
        self.0[i].fetch_add(1, Ordering::SeqCst) + 1
    }
}

fn key(i: usize) -> String {
    format!("k{i}")
}

fn index(key: &str) -> usize {
    key[1..].parse().expect("k{i}")
}

fn loader(source: &Arc<Source>) -> impl FnOnce(String) -> std::future::Ready<Result<u64, ()>> {
    let source = Arc::clone(source);
    move |k| std::future::ready(Ok(source.read(index(&k))))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `test` on a 4-thread runtime with an overall deadline.
fn run<F: Future<Output = ()> + Send + 'static>(limit: Duration, test: F) {
    support::run_tokio(4, limit, test);
}

#[test]
fn l1_hits_after_a_fill_and_redis_serves_other_instances() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    run(Duration::from_secs(60), async move {
        let url = server.url();
        let source = Source::new(1);
        let a = instance(&url, "basic", |b| b).await;
        let b = instance(&url, "basic", |b| b).await;

        assert_eq!(a.get_or_load(key(0), loader(&source)).await, Ok(1));
        assert_eq!(a.stats().loads, 1);
        assert_eq!(a.get_or_load(key(0), loader(&source)).await, Ok(1));
        assert_eq!(a.stats().l1_hits, 1, "second read is an L1 hit");

        // B misses its L1, hits Redis, fills its L1.
        assert_eq!(b.get("k0").await.expect("get"), Some(1));
        assert_eq!(b.stats().l2_hits, 1);
        assert_eq!(b.stats().loads, 0);
        assert_eq!(b.l1().get("k0"), Some(1));
        assert_eq!(b.get("nope").await.expect("get"), None);
    });
}

/// A purges; once A's purge returned and B's feed delivered it, B never serves the old value.
/// Also measures delivery latency (purge call -> applied in B's L1).
#[test]
fn cross_instance_purge_is_delivered_and_never_served_stale() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    run(Duration::from_secs(120), async move {
        let url = server.url();
        let source = Source::new(1);
        let a = instance(&url, "coherence", |b| b).await;
        let b = instance(&url, "coherence", |b| b).await;
        let mut latencies = Vec::new();
        let mut before_return = 0;
        for round in 0..300 {
            let v = source.read(0);
            assert_eq!(b.get_or_load(key(0), loader(&source)).await, Ok(v));
            assert_eq!(b.l1().get("k0"), Some(v), "round {round}: B cached it");

            let seen = b.stats().invalidations_received;
            let new = source.write(0);
            let started = Instant::now();
            a.purge("k0").await.expect("purge");
            if b.stats().invalidations_received > seen {
                before_return += 1;
            }
            // Spin (yielding) for precision; bounded.
            let deadline = Instant::now() + WAIT;
            while b.stats().invalidations_received == seen {
                assert!(Instant::now() < deadline, "invalidation never delivered");
                tokio::task::yield_now().await;
            }
            latencies.push(started.elapsed());

            assert_eq!(b.l1().get("k0"), None, "round {round}: B's L1 dropped it");
            assert_eq!(b.get_or_load(key(0), loader(&source)).await, Ok(new));
            assert_eq!(b.get("k0").await.expect("get"), Some(new));
        }
        latencies.sort();
        println!(
            "invalidation delivery latency (purge call -> applied in another instance's L1), {} \
             purges: p50 {:?}, p99 {:?}, max {:?}; delivered before the purge returned: {}",
            latencies.len(),
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            latencies[latencies.len() - 1],
            before_return,
        );
    });
}

/// The version oracle across three instances with concurrent readers and writers.
///
/// A writer bumps a key's version in the source, purges through a random instance, waits until
/// every instance's feed has applied at least as many invalidations as purges had *started* when
/// its purge returned (Redis delivers in publish order, so that includes its own), and only then
/// raises the key's floor. A read that starts after the floor was raised must return at least the
/// floor. After quiescence no L1 and no Redis entry may hold anything but the current version.
#[test]
fn torture_three_instances_zero_stale_observations() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    run(Duration::from_secs(120), async move {
        const KEYS: usize = 6;
        let url = server.url();
        let source = Source::new(KEYS);
        let mut instances = Vec::new();
        for _ in 0..3 {
            instances.push(instance(&url, "torture", |b| b).await);
        }
        let instances = Arc::new(instances);
        let floors: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
        let started_purges = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let stale = Arc::new(AtomicU64::new(0));
        let reads = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();

        for r in 0..12u64 {
            let (instances, source, floors, stop, stale, reads) = (
                Arc::clone(&instances),
                Arc::clone(&source),
                Arc::clone(&floors),
                Arc::clone(&stop),
                Arc::clone(&stale),
                Arc::clone(&reads),
            );
            tasks.push(tokio::spawn(async move {
                let mut n = r;
                while !stop.load(Ordering::SeqCst) {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let i = (n >> 33) as usize % KEYS;
                    let inst = &instances[(n >> 40) as usize % instances.len()];
                    let floor = floors[i].load(Ordering::SeqCst);
                    let got = if (n >> 50) % 4 == 0 {
                        inst.get(&key(i)).await.expect("get")
                    } else {
                        let src = Arc::clone(&source);
                        let slow = (n >> 20) % 3;
                        let v = inst
                            .get_or_load(key(i), move |k| async move {
                                let v = src.read(index(&k));
                                // A slow source widens the race windows.
                                tokio::time::sleep(Duration::from_micros(200 * slow)).await;
                                Ok::<_, ()>(v)
                            })
                            .await
                            .expect("load");
                        Some(v)
                    };
                    reads.fetch_add(1, Ordering::Relaxed);
                    // An L1 hit never yields: let the feed and the writers run.
                    tokio::task::yield_now().await;
                    if let Some(v) = got {
                        if v < floor {
                            stale.fetch_add(1, Ordering::SeqCst);
                            eprintln!("STALE: key {i} read {v} < floor {floor}");
                        }
                    }
                }
            }));
        }
        let writes = Arc::new(AtomicU64::new(0));
        let mut latencies = Vec::new();
        let mut writers = Vec::new();
        for w in 0..3u64 {
            let (instances, source, floors, started_purges, writes) = (
                Arc::clone(&instances),
                Arc::clone(&source),
                Arc::clone(&floors),
                Arc::clone(&started_purges),
                Arc::clone(&writes),
            );
            writers.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut n = w + 100;
                for _ in 0..150 {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let i = (n >> 33) as usize % KEYS;
                    let inst = &instances[(n >> 40) as usize % instances.len()];
                    let v = source.write(i);
                    started_purges.fetch_add(1, Ordering::SeqCst);
                    let t = Instant::now();
                    inst.purge(&key(i)).await.expect("purge");
                    let needed = started_purges.load(Ordering::SeqCst);
                    let deadline = Instant::now() + WAIT;
                    while instances
                        .iter()
                        .any(|c| c.stats().invalidations_received < needed)
                    {
                        assert!(Instant::now() < deadline, "purge never delivered");
                        tokio::time::sleep(Duration::from_micros(100)).await;
                    }
                    lat.push(t.elapsed());
                    floors[i].fetch_max(v, Ordering::SeqCst);
                    writes.fetch_add(1, Ordering::Relaxed);
                }
                lat
            }));
        }
        for w in writers {
            latencies.extend(w.await.expect("writer"));
        }
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.expect("reader");
        }

        // Quiescence: every purge delivered everywhere.
        let total = started_purges.load(Ordering::SeqCst);
        wait_for("all invalidations delivered", || {
            instances
                .iter()
                .all(|c| c.stats().invalidations_received >= total)
        })
        .await;
        let mut stale_entries = 0;
        for (n, inst) in instances.iter().enumerate() {
            for i in 0..KEYS {
                let current = source.read(i);
                if let Some(v) = inst.l1().get(&key(i)) {
                    if v != current {
                        stale_entries += 1;
                        eprintln!("instance {n} L1 holds {v} for k{i}, current {current}");
                    }
                }
            }
        }
        for i in 0..KEYS {
            let current = source.read(i);
            if let Some(v) = instances[0].l2().get(&key(i)).await.expect("redis get") {
                if v != current {
                    stale_entries += 1;
                    eprintln!("Redis holds {v} for k{i}, current {current}");
                }
            }
        }
        latencies.sort();
        let sum = instances.iter().fold((0, 0, 0, 0, 0), |acc, c| {
            let s = c.stats();
            (
                acc.0 + s.l1_hits,
                acc.1 + s.l2_hits,
                acc.2 + s.loads,
                acc.3 + s.l1_stale_rejected,
                acc.4 + s.l2_stale_rejected,
            )
        });
        println!(
            "torture: {} reads, {} writes; l1 hits {}, l2 hits {}, loads {}, stale fills rejected \
             L1 {} / Redis {}; delivery to all 3 instances p50 {:?} p99 {:?}; stale observations \
             {}, stale entries after quiescence {}",
            reads.load(Ordering::Relaxed),
            writes.load(Ordering::Relaxed),
            sum.0,
            sum.1,
            sum.2,
            sum.3,
            sum.4,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            stale.load(Ordering::SeqCst),
            stale_entries
        );
        assert_eq!(stale.load(Ordering::SeqCst), 0, "stale observations");
        assert_eq!(stale_entries, 0, "stale entries after quiescence");
        for c in instances.iter() {
            assert_eq!(
                c.stats().feed_losses,
                0,
                "no feed loss expected in this test"
            );
        }
    });
}

/// A one-shot action the test installs right before the call whose fill it wants to interrupt.
#[derive(Clone, Default)]
struct HookSlot(Arc<Mutex<Option<Action>>>);

impl HookSlot {
    fn set<F, Fut>(&self, f: F)
    where
        F: FnOnce(FillPoint, String) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        *self.0.lock().expect("hook slot") = Some(Box::new(move |p, k| Box::pin(f(p, k))));
    }

    fn install(&self, b: TieredBuilder<String, u64>) -> TieredBuilder<String, u64> {
        let slot = self.clone();
        b.test_hook_before_l1_fill(move |point, key| {
            let action = slot.0.lock().expect("hook slot").take();
            async move {
                if let Some(action) = action {
                    action(point, key).await;
                }
            }
        })
    }

    fn fired(&self) -> bool {
        self.0.lock().expect("hook slot").is_none()
    }
}

async fn wait_stat(what: &str, cache: &Weak<Tc>, cond: impl Fn(&Tc) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let cache = cache.upgrade().expect("instance alive");
        if cond(&cache) {
            return;
        }
        drop(cache);
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Between "Redis save returned" (or "Redis read hit") and "L1 fill": an invalidation, a remote
/// purge, a feed disconnect. The L1 must never keep a value older than the last purge.
#[test]
fn forced_interleavings_between_redis_reply_and_l1_fill() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    run(Duration::from_secs(120), async move {
        let url = server.url();
        let port = server.port();
        let source = Source::new(8);
        let slot = HookSlot::default();
        let a = instance(&url, "hooks", |b| slot.install(b)).await;
        let b = instance(&url, "hooks", |b| b).await;
        let channel = a.l2().invalidation_channel().to_owned();

        // 1. An invalidation injected (published by hand) and applied before the fill.
        for point in [FillPoint::RedisSaved, FillPoint::RedisHit] {
            let i = if point == FillPoint::RedisSaved { 0 } else { 1 };
            if point == FillPoint::RedisHit {
                // Put the value in Redis through B, so that A's read is a Redis hit.
                b.get_or_load(key(i), loader(&source)).await.expect("load");
            }
            let weak = Arc::downgrade(&a);
            let seen = a.stats().invalidations_received;
            let channel = channel.clone();
            slot.set(move |p, k| async move {
                assert_eq!(p, point);
                let payload = format!("K{k}");
                let reply = support::cli_at(port, &["PUBLISH", &channel, &payload]);
                assert_eq!(reply, "2", "both instances subscribed");
                wait_stat("injected invalidation", &weak, |c| {
                    c.stats().invalidations_received > seen
                })
                .await;
            });
            let rejected = a.stats().l1_stale_rejected;
            a.get_or_load(key(i), loader(&source)).await.expect("load");
            assert!(slot.fired());
            assert_eq!(
                a.l1().get(&key(i)),
                None,
                "{point:?}: fill after invalidation"
            );
            assert_eq!(a.stats().l1_stale_rejected, rejected + 1);
        }

        // 2. A remote purge (with a source write) delivered before the fill.
        {
            let i = 2;
            let weak = Arc::downgrade(&a);
            let (b2, src) = (Arc::clone(&b), Arc::clone(&source));
            let seen = a.stats().invalidations_received;
            slot.set(move |_, k| async move {
                src.write(index(&k));
                b2.purge(&k).await.expect("purge");
                wait_stat("remote purge delivered", &weak, |c| {
                    c.stats().invalidations_received > seen
                })
                .await;
            });
            let old = source.read(i);
            assert_eq!(a.get_or_load(key(i), loader(&source)).await, Ok(old));
            assert_eq!(a.l1().get(&key(i)), None, "old value must not be cached");
            assert_eq!(a.get_or_load(key(i), loader(&source)).await, Ok(old + 1));
        }

        // 3. A remote purge whose invalidation may arrive *after* the fill: the fill may land,
        //    but the invalidation removes it; the L1 never keeps it past delivery.
        {
            let i = 3;
            let (b2, src) = (Arc::clone(&b), Arc::clone(&source));
            slot.set(move |_, k| async move {
                src.write(index(&k));
                b2.purge(&k).await.expect("purge");
            });
            let seen = a.stats().invalidations_received;
            let old = source.read(i);
            assert_eq!(a.get_or_load(key(i), loader(&source)).await, Ok(old));
            wait_for("late invalidation", || {
                a.stats().invalidations_received > seen
            })
            .await;
            assert_eq!(a.l1().get(&key(i)), None);
            assert_eq!(a.get_or_load(key(i), loader(&source)).await, Ok(old + 1));
        }

        // 4. The feed disconnected between the Redis save and the L1 fill.
        {
            let i = 4;
            let weak = Arc::downgrade(&a);
            let losses = a.stats().feed_losses;
            slot.set(move |_, _| async move {
                let killed = support::cli_at(port, &["CLIENT", "KILL", "TYPE", "pubsub"]);
                assert_ne!(killed, "0", "subscribers killed");
                wait_stat("feed loss", &weak, |c| c.stats().feed_losses > losses).await;
            });
            let v = source.read(i);
            assert_eq!(a.get_or_load(key(i), loader(&source)).await, Ok(v));
            assert_eq!(a.l1().get(&key(i)), None, "fill after a feed loss");
            tokio::time::timeout(WAIT, a.feed_confirmed())
                .await
                .expect("feed back");
            tokio::time::timeout(WAIT, b.feed_confirmed())
                .await
                .expect("feed back");
            // Coherent again: a purge by B reaches A's L1.
            assert_eq!(a.get_or_load(key(i), loader(&source)).await, Ok(v));
            assert_eq!(a.l1().get(&key(i)), Some(v), "L1 in use again");
            let seen = a.stats().invalidations_received;
            source.write(i);
            b.purge(&key(i)).await.expect("purge");
            wait_for("purge after reconnect", || {
                a.stats().invalidations_received > seen
            })
            .await;
            assert_eq!(a.l1().get(&key(i)), None);
            assert_eq!(a.get_or_load(key(i), loader(&source)).await, Ok(v + 1));
        }
    });
}

/// `CLIENT KILL` of the subscribers, with resubscription refused for a while (ACL): the L1 is
/// flushed, bypassed while the feed is down (reads go to Redis and see other instances' purges),
/// and used again once the subscription is confirmed.
#[test]
fn killed_subscriber_flushes_bypasses_and_recovers() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    run(Duration::from_secs(60), async move {
        let url = server.url();
        let source = Source::new(1);
        let a = instance(&url, "kill", |b| {
            b.reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
        })
        .await;
        let b = instance(&url, "kill", |b| b).await;
        assert_eq!(a.get_or_load(key(0), loader(&source)).await, Ok(1));
        assert_eq!(a.l1().get("k0"), Some(1));

        assert_eq!(
            server.cli(&["ACL", "SETUSER", "default", "-subscribe"]),
            "OK"
        );
        let killed = server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        assert_ne!(killed, "0");
        wait_for("feed loss", || a.stats().feed_losses >= 1).await;
        assert!(!a.is_l1_active());
        assert_eq!(a.l1().entry_count(), 0, "L1 flushed");

        // While the feed is down: B purges after a source write; A's feed cannot tell it, yet A
        // reads the new value because it bypasses its L1.
        source.write(0);
        b.purge("k0").await.expect("purge");
        let before = a.stats();
        assert_eq!(a.get_or_load(key(0), loader(&source)).await, Ok(2));
        assert_eq!(a.get_or_load(key(0), loader(&source)).await, Ok(2));
        let after = a.stats();
        assert_eq!(after.l1_hits, before.l1_hits, "L1 not read while bypassed");
        assert!(after.bypassed_reads >= before.bypassed_reads + 2);
        assert_eq!(a.l1().entry_count(), 0, "L1 not filled while bypassed");
        assert!(!a.is_l1_active(), "resubscription is refused");

        assert_eq!(
            server.cli(&["ACL", "SETUSER", "default", "+subscribe"]),
            "OK"
        );
        tokio::time::timeout(WAIT, a.feed_confirmed())
            .await
            .expect("resubscribed");
        assert!(a.is_l1_active());
        assert_eq!(a.get_or_load(key(0), loader(&source)).await, Ok(2));
        let hits = a.stats().l1_hits;
        assert_eq!(a.get_or_load(key(0), loader(&source)).await, Ok(2));
        assert_eq!(a.stats().l1_hits, hits + 1, "L1 in use again");
    });
}

/// `kill -9` of the server: the breaker opens, loads are served from the source (not cached),
/// purges fail, and everything recovers after a restart.
#[test]
fn server_kill9_opens_breaker_and_recovers_after_restart() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    run(Duration::from_secs(90), async move {
        let url = server.url();
        let source = Source::new(1);
        let a = instance(&url, "kill9", |b| {
            b.breaker_threshold(1)
                .breaker_cooldown(Duration::from_millis(100))
                .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        })
        .await;
        assert_eq!(a.get_or_load(key(0), loader(&source)).await, Ok(1));
        assert_eq!(a.l1().get("k0"), Some(1));

        server.kill9();
        wait_for("feed loss", || a.stats().feed_losses >= 1).await;
        assert_eq!(a.l1().entry_count(), 0);

        source.write(0);
        let loads = a.stats().loads;
        for _ in 0..5 {
            assert_eq!(a.get_or_load(key(0), loader(&source)).await, Ok(2));
        }
        let s = a.stats();
        assert_eq!(s.loads, loads + 5, "every read served by the loader");
        assert!(s.breaker_opens >= 1, "breaker opened: {s:?}");
        assert_eq!(
            a.l1().entry_count(),
            0,
            "nothing cached while Redis is down"
        );
        assert!(a.purge("k0").await.is_err(), "purge reports the outage");
        assert!(!a.is_l1_active());

        server.restart();
        // Reads probe Redis; the breaker closes and the feed resubscribes on their own.
        let deadline = Instant::now() + WAIT;
        loop {
            assert_eq!(a.get_or_load(key(0), loader(&source)).await, Ok(2));
            if a.is_l1_active() && a.l1().get("k0") == Some(2) {
                break;
            }
            assert!(Instant::now() < deadline, "no recovery: {:?}", a.stats());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(a.purge("k0").await.is_ok());
    });
}

/// `FLUSHALL` while a load holds a Redis lease: the save is rejected in Redis (the lease marker
/// is gone) and therefore not filled into the L1; purges keep flowing afterwards.
#[test]
fn flushall_rejects_outstanding_leases_and_keeps_coherence() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    run(Duration::from_secs(60), async move {
        let url = server.url();
        let port = server.port();
        let source = Source::new(2);
        let a = instance(&url, "flushall", |b| b).await;
        let b = instance(&url, "flushall", |b| b).await;

        let stale = a.stats().l2_stale_rejected;
        let v = a
            .get_or_load(key(0), move |_| async move {
                let reply =
                    tokio::task::spawn_blocking(move || support::cli_at(port, &["FLUSHALL"]))
                        .await
                        .expect("cli");
                assert_eq!(reply, "OK");
                Ok::<_, ()>(1)
            })
            .await;
        assert_eq!(v, Ok(1));
        assert_eq!(a.stats().l2_stale_rejected, stale + 1);
        assert_eq!(
            a.l1().get("k0"),
            None,
            "not filled after a rejected Redis save"
        );
        assert_eq!(a.l2().get("k0").await.expect("get"), None);

        // A cached value survives FLUSHALL (it is still the source's value) until a write.
        assert_eq!(a.get_or_load(key(1), loader(&source)).await, Ok(1));
        assert_eq!(server.cli(&["FLUSHALL"]), "OK");
        assert_eq!(a.l1().get("k1"), Some(1));
        let seen = a.stats().invalidations_received;
        source.write(1);
        b.purge("k1").await.expect("purge");
        wait_for("purge after FLUSHALL", || {
            a.stats().invalidations_received > seen
        })
        .await;
        assert_eq!(a.get_or_load(key(1), loader(&source)).await, Ok(2));
    });
}

/// `flush` and `insert` reach other instances' L1s.
#[test]
fn insert_and_flush_invalidate_other_instances() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    run(Duration::from_secs(60), async move {
        let url = server.url();
        let source = Source::new(2);
        let a = instance(&url, "writes", |b| b).await;
        let b = instance(&url, "writes", |b| b).await;
        for i in 0..2 {
            assert_eq!(b.get_or_load(key(i), loader(&source)).await, Ok(1));
        }
        let seen = b.stats().invalidations_received;
        a.insert("k0", &7).await.expect("insert");
        wait_for("insert delivered", || {
            b.stats().invalidations_received > seen
        })
        .await;
        assert_eq!(b.l1().get("k0"), None);
        assert_eq!(b.get("k0").await.expect("get"), Some(7));

        let seen = b.stats().invalidations_received;
        a.flush().await.expect("flush");
        wait_for("flush delivered", || {
            b.stats().invalidations_received > seen
        })
        .await;
        assert_eq!(b.l1().entry_count(), 0);
        assert_eq!(b.get("k1").await.expect("get"), None);
    });
}

/// Dropping a `TieredCache` stops its feed task (its subscriber connection goes away).
#[test]
fn drop_stops_the_feed_task() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let port = server.port();
    run(Duration::from_secs(30), async move {
        let a = instance(&server.url(), "drop", |b| b).await;
        let channel = a.l2().invalidation_channel().to_owned();
        let numsub = support::cli_at(port, &["PUBSUB", "NUMSUB", &channel]);
        assert!(numsub.ends_with('1'), "{numsub}");
        drop(a);
        wait_for("subscriber gone", || {
            support::cli_at(port, &["PUBSUB", "NUMSUB", &channel]).ends_with('0')
        })
        .await;
    });
}

#[test]
fn building_outside_a_runtime_is_an_error() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let l2 = rt.block_on(store(&server.url(), "nort"));
    let err = TieredCache::<String, u64>::new(Cache::new(10), l2).expect_err("no runtime");
    assert!(err.to_string().contains("tokio runtime"));
}

/// On Redis Cluster, each instance subscribes through a different node; purges of keys served by
/// every node reach every instance (classic pub/sub is broadcast across the cluster bus).
#[test]
fn cluster_purges_reach_instances_subscribed_on_other_nodes() {
    let Some(cluster) = support::RedisCluster::start(3) else {
        return;
    };
    run(Duration::from_secs(120), async move {
        const KEYS: usize = 12;
        let urls = cluster.urls();
        let mut reversed = urls.clone();
        reversed.reverse();
        let connect = |urls: Vec<String>| async move {
            let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
            let l2 = RedisStore::connect_cluster(&refs, RedisOptions::new("cl"))
                .await
                .expect("connect cluster");
            let cache: Tc = TieredCache::builder(Cache::new(1_000), l2)
                .build()
                .expect("build");
            tokio::time::timeout(WAIT, cache.feed_confirmed())
                .await
                .expect("feed confirmed");
            Arc::new(cache)
        };
        let a = connect(urls.clone()).await;
        let b = connect(reversed).await;
        let nodes: std::collections::BTreeSet<usize> = (0..KEYS)
            .map(|i| cluster.node_for_key(&format!("cl:{}", key(i))))
            .collect();
        assert_eq!(nodes.len(), 3, "the keys cover every node");

        let source = Source::new(KEYS);
        for i in 0..KEYS {
            assert_eq!(b.get_or_load(key(i), loader(&source)).await, Ok(1));
            assert_eq!(a.get_or_load(key(i), loader(&source)).await, Ok(1));
            assert_eq!(a.stats().loads, 0, "A reads what B saved in Redis");
        }
        for i in 0..KEYS {
            let (seen_a, seen_b) = (
                a.stats().invalidations_received,
                b.stats().invalidations_received,
            );
            source.write(i);
            // Alternate the purging instance.
            let (writer, reader) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
            writer.purge(&key(i)).await.expect("purge");
            wait_for("delivery to both instances", || {
                a.stats().invalidations_received > seen_a
                    && b.stats().invalidations_received > seen_b
            })
            .await;
            assert_eq!(reader.l1().get(&key(i)), None);
            assert_eq!(reader.get_or_load(key(i), loader(&source)).await, Ok(2));
            assert_eq!(writer.get(&key(i)).await.expect("get"), Some(2));
        }
    });
}

/// A load that outlives the maximum lease age is returned but saved in neither tier.
#[test]
fn a_load_older_than_the_max_lease_age_is_saved_nowhere() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    run(Duration::from_secs(30), async move {
        let age = Duration::from_millis(200);
        let l2 = RedisStore::connect(&server.url(), RedisOptions::new("age").max_lease_age(age))
            .await
            .expect("connect");
        let a: Tc = TieredCache::new(Cache::new(100), l2).expect("build");
        tokio::time::timeout(WAIT, a.feed_confirmed())
            .await
            .expect("feed");
        let v = a
            .get_or_load(key(0), move |_| async move {
                // A slow source: the lease captured before this call expires meanwhile.
                tokio::time::sleep(age + Duration::from_millis(100)).await;
                Ok::<_, ()>(9)
            })
            .await;
        assert_eq!(v, Ok(9));
        assert_eq!(a.stats().expired_leases, 1);
        assert_eq!(a.l1().get("k0"), None);
        assert_eq!(a.l2().get("k0").await.expect("get"), None);
        // A prompt load is saved in both.
        assert_eq!(
            a.get_or_load(key(0), |_| async { Ok::<_, ()>(10) }).await,
            Ok(10)
        );
        assert_eq!(a.l1().get("k0"), Some(10));
        assert_eq!(a.l2().get("k0").await.expect("get"), Some(10));
    });
}

/// Single flight per process, and a caller that starts after a purge returned never joins the
/// load that began before it (I7 through both tiers).
#[test]
fn single_flight_and_no_pre_purge_value_after_the_purge() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    run(Duration::from_secs(30), async move {
        let a = instance(&server.url(), "flight", |b| b).await;
        let calls = Arc::new(AtomicU64::new(0));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (entered_tx, entered) = tokio::sync::oneshot::channel::<()>();
        let leader = {
            let (a, calls) = (Arc::clone(&a), Arc::clone(&calls));
            tokio::spawn(async move {
                a.get_or_load(key(0), move |_| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let _ = entered_tx.send(());
                    let _ = released.await;
                    Ok::<_, ()>(1) // read before the purge below
                })
                .await
            })
        };
        entered.await.expect("leader entered its loader");
        // A caller arriving now joins the flight (its loader is never called).
        let joiner = {
            let (a, calls) = (Arc::clone(&a), Arc::clone(&calls));
            tokio::spawn(async move {
                a.get_or_load(key(0), move |_| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ()>(100)
                })
                .await
            })
        };
        wait_for("joiner waiting", || a.l1().stats().misses >= 2).await;
        a.purge("k0").await.expect("purge");
        // After the purge returned: a fresh load, not the leader's pre-purge value.
        let after = a.get_or_load(key(0), |_| async { Ok::<_, ()>(2) }).await;
        assert_eq!(after, Ok(2));
        release.send(()).expect("leader waiting");
        assert_eq!(leader.await.expect("leader"), Ok(1));
        assert_eq!(
            joiner.await.expect("joiner"),
            Ok(1),
            "joined before the purge"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the joiner did not load");
        // The leader's Redis save was rejected, so its fill was suppressed (by purging the key
        // in this L1, which may also drop the newer fill: safe, it costs one Redis read).
        assert_ne!(
            a.l1().get("k0"),
            Some(1),
            "the pre-purge value was not cached"
        );
        assert_eq!(a.l2().get("k0").await.expect("get"), Some(2));
    });
}

/// A subscriber that falls behind: Redis disconnects it once its output buffer passes the
/// `pubsub` limit. The instance counts a feed loss, flushes its L1 and resubscribes.
#[test]
fn subscriber_over_its_output_buffer_limit_is_a_feed_loss() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    run(Duration::from_secs(30), async move {
        let url = server.url();
        let source = Source::new(1);
        let a = instance(&url, "lag", |b| b).await;
        let b = instance(&url, "lag", |b| b).await;
        assert_eq!(b.get_or_load(key(0), loader(&source)).await, Ok(1));
        assert_eq!(b.l1().get("k0"), Some(1));
        let limit = server.cli(&["CONFIG", "GET", "client-output-buffer-limit"]);
        assert_eq!(
            server.cli(&[
                "CONFIG",
                "SET",
                "client-output-buffer-limit",
                "pubsub 64 64 0"
            ]),
            "OK"
        );
        // One invalidation larger than the limit (and than the 16 KiB a client's static reply
        // buffer holds before the limit applies): every subscriber is "behind" at once.
        let long = "x".repeat(64 * 1024);
        a.purge(&long).await.expect("purge");
        wait_for("feed loss", || b.stats().feed_losses >= 1).await;
        assert_eq!(b.l1().get("k0"), None, "L1 flushed on the loss");
        // Restore the limit (the reply lists it as `name value` lines); resubscribe.
        let pubsub_limit = limit
            .lines()
            .find(|l| l.contains("pubsub"))
            .map(|l| l.to_string())
            .unwrap_or_else(|| {
                "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60".into()
            });
        assert_eq!(
            server.cli(&["CONFIG", "SET", "client-output-buffer-limit", &pubsub_limit]),
            "OK"
        );
        tokio::time::timeout(WAIT, b.feed_confirmed())
            .await
            .expect("resubscribed");
        assert_eq!(b.get_or_load(key(0), loader(&source)).await, Ok(1));
        assert_eq!(b.l1().get("k0"), Some(1), "L1 in use again");
    });
}

/// A silent feed (the server stops answering, the connection stays open) is detected by the
/// periodic PING: the L1 is flushed and bypassed until the subscription is confirmed again.
#[test]
fn unanswered_ping_is_a_feed_loss() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    run(Duration::from_secs(30), async move {
        let url = server.url();
        let source = Source::new(1);
        let a = instance(&url, "silent", |b| {
            b.ping_interval(Duration::from_millis(50))
                .ping_timeout(Duration::from_millis(200))
        })
        .await;
        assert_eq!(a.get_or_load(key(0), loader(&source)).await, Ok(1));
        // Every command of every client, PING on the subscriber included, waits out the pause.
        assert_eq!(server.cli(&["CLIENT", "PAUSE", "1500", "ALL"]), "OK");
        wait_for("feed loss", || a.stats().feed_losses >= 1).await;
        assert!(!a.is_l1_active());
        assert_eq!(a.l1().get("k0"), None, "L1 flushed on the loss");
        tokio::time::timeout(WAIT, a.feed_confirmed())
            .await
            .expect("resubscribed after the pause");
        assert!(a.is_l1_active());
    });
}

/// Waits until instance `x` has certainly applied every invalidation published before this call,
/// even if its feed is lost and re-established meanwhile: fills a fresh sentinel key into `x`'s
/// L1, purges it in Redis (not in `x`'s L1) and waits for it to leave `x`'s L1. It leaves either
/// through its own invalidation (delivered after everything published before it) or through a
/// feed-loss flush (after which the L1 holds only what was read from Redis after the loss).
async fn caught_up(x: &Tc, sentinel: String) {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "instance never caught up");
        if !x.is_l1_active() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        x.get_or_load(sentinel.clone(), |_| async { Ok::<_, ()>(0) })
            .await
            .expect("sentinel");
        if x.l1().get(&sentinel).is_none() {
            continue; // not filled (a fence or a loss got in the way): try again
        }
        x.l2().purge(&sentinel).await.expect("sentinel purge");
        while x.l1().get(&sentinel).is_some() {
            assert!(
                Instant::now() < deadline,
                "sentinel invalidation never applied"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        return;
    }
}

/// The version oracle again, with the invalidation feed of every instance killed every 30 ms
/// (`CLIENT KILL TYPE pubsub`): messages are lost, L1s are flushed and bypassed, subscriptions
/// come back. A read that starts after a purge returned and every instance caught up with it
/// (see [`caught_up`]) must not return an older version; after quiescence no L1 and no Redis
/// entry is stale.
#[test]
fn torture_with_feed_kills_zero_stale_observations() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let port = server.port();
    run(Duration::from_secs(120), async move {
        const KEYS: usize = 4;
        let url = server.url();
        let source = Source::new(KEYS);
        let mut instances = Vec::new();
        for _ in 0..3 {
            instances.push(
                instance(&url, "chaos", |b| {
                    b.reconnect_backoff(Duration::from_millis(2), Duration::from_millis(20))
                })
                .await,
            );
        }
        let instances = Arc::new(instances);
        let floors: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let stale = Arc::new(AtomicU64::new(0));
        let reads = Arc::new(AtomicU64::new(0));

        let chaos = {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut kills = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    tokio::task::spawn_blocking(move || {
                        support::cli_at(port, &["CLIENT", "KILL", "TYPE", "pubsub"])
                    })
                    .await
                    .expect("cli");
                    kills += 1;
                }
                kills
            })
        };
        let mut readers = Vec::new();
        for r in 0..9u64 {
            let (instances, source, floors, stop, stale, reads) = (
                Arc::clone(&instances),
                Arc::clone(&source),
                Arc::clone(&floors),
                Arc::clone(&stop),
                Arc::clone(&stale),
                Arc::clone(&reads),
            );
            readers.push(tokio::spawn(async move {
                let mut n = r;
                while !stop.load(Ordering::SeqCst) {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let i = (n >> 33) as usize % KEYS;
                    let inst = &instances[(n >> 40) as usize % instances.len()];
                    let floor = floors[i].load(Ordering::SeqCst);
                    let src = Arc::clone(&source);
                    let v = inst
                        .get_or_load(key(i), move |k| async move {
                            let v = src.read(index(&k));
                            tokio::time::sleep(Duration::from_micros(300)).await;
                            Ok::<_, ()>(v)
                        })
                        .await
                        .expect("load");
                    reads.fetch_add(1, Ordering::Relaxed);
                    if v < floor {
                        stale.fetch_add(1, Ordering::SeqCst);
                        eprintln!("STALE: key {i} read {v} < floor {floor}");
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
        let mut writers = Vec::new();
        for w in 0..2u64 {
            let (instances, source, floors) = (
                Arc::clone(&instances),
                Arc::clone(&source),
                Arc::clone(&floors),
            );
            writers.push(tokio::spawn(async move {
                let mut n = w + 7;
                for round in 0..60 {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let i = (n >> 33) as usize % KEYS;
                    let inst = &instances[(n >> 40) as usize % instances.len()];
                    let v = source.write(i);
                    // While a feed is down the purge still reaches Redis (only subscribers die).
                    inst.purge(&key(i)).await.expect("purge");
                    for (x, cache) in instances.iter().enumerate() {
                        caught_up(cache, format!("s{w}-{round}-{x}")).await;
                    }
                    floors[i].fetch_max(v, Ordering::SeqCst);
                }
            }));
        }
        for w in writers {
            w.await.expect("writer");
        }
        stop.store(true, Ordering::SeqCst);
        for r in readers {
            r.await.expect("reader");
        }
        let kills = chaos.await.expect("chaos");

        for c in instances.iter() {
            tokio::time::timeout(WAIT, c.feed_confirmed())
                .await
                .expect("feed back");
        }
        for (x, c) in instances.iter().enumerate() {
            caught_up(c, format!("final-{x}")).await;
        }
        let mut stale_entries = 0;
        for (n, inst) in instances.iter().enumerate() {
            for i in 0..KEYS {
                let current = source.read(i);
                if let Some(v) = inst.l1().get(&key(i)) {
                    if v != current {
                        stale_entries += 1;
                        eprintln!("instance {n} L1 holds {v} for k{i}, current {current}");
                    }
                }
            }
        }
        for i in 0..KEYS {
            let current = source.read(i);
            if let Some(v) = instances[0].l2().get(&key(i)).await.expect("redis get") {
                if v != current {
                    stale_entries += 1;
                    eprintln!("Redis holds {v} for k{i}, current {current}");
                }
            }
        }
        let (losses, hits, bypassed) = instances.iter().fold((0, 0, 0), |acc, c| {
            let s = c.stats();
            (
                acc.0 + s.feed_losses,
                acc.1 + s.l1_hits,
                acc.2 + s.bypassed_reads,
            )
        });
        println!(
            "torture with feed kills: {kills} kills, {losses} feed losses, {} reads ({hits} L1 \
             hits, {bypassed} bypassed), stale observations {}, stale entries after quiescence \
             {stale_entries}",
            reads.load(Ordering::Relaxed),
            stale.load(Ordering::SeqCst),
        );
        assert!(losses >= 3, "the chaos really cut the feeds");
        assert_eq!(stale.load(Ordering::SeqCst), 0, "stale observations");
        assert_eq!(stale_entries, 0, "stale entries after quiescence");
    });
}

/// Redis Cluster: the node an instance subscribed through dies. On Redis 7 and later that is
/// the master of the namespace's coherence slot (sharded pub/sub). The instance loses its feed,
/// flushes and bypasses its L1, and resubscribes once the slot is served again (here: the node
/// is restarted; with replicas, see `tests/coherence_cluster.rs`), where invalidations
/// published on any node reach it again (classic pub/sub for a bare store's writes crosses the
/// cluster bus). Then the breaker closes and the L1 is used and kept coherent again.
#[test]
fn cluster_subscription_node_killed_resubscribes_when_back() {
    let Some(mut cluster) = support::RedisCluster::start(3) else {
        return;
    };
    // A namespace whose coherence keys (one slot, where the feed subscribes) live on node 0.
    let ns = (0..100)
        .map(|n| format!("clk{n}"))
        .find(|ns| cluster.node_for_key(&format!("leasecache:{{{ns}}}:seq")) == 0)
        .expect("a namespace whose coherence slot is on node 0");
    run(Duration::from_secs(60), async move {
        let urls = cluster.urls();
        let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
        let l2 = RedisStore::connect_cluster(&refs, RedisOptions::new(ns.as_str()))
            .await
            .expect("connect cluster");
        let channel = l2.invalidation_channel().to_owned();
        let a: Tc = TieredCache::builder(Cache::new(1_000), l2)
            .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
            .build()
            .expect("build");
        tokio::time::timeout(WAIT, a.feed_confirmed())
            .await
            .expect("feed confirmed");
        let source = Source::new(12);
        // A key served by a node other than node 0 (where A subscribed).
        let i = (0..12)
            .find(|&i| cluster.node_for_key(&format!("{ns}:{}", key(i))) != 0)
            .expect("some key off node 0");
        assert_eq!(a.get_or_load(key(i), loader(&source)).await, Ok(1));
        assert_eq!(a.l1().get(&key(i)), Some(1));

        cluster.kill9(0);
        wait_for("feed loss", || a.stats().feed_losses >= 1).await;
        assert_eq!(a.l1().get(&key(i)), None, "L1 flushed on the loss");
        assert!(
            !a.is_l1_active(),
            "bypassed while the coherence slot is down"
        );
        let cluster = tokio::task::spawn_blocking(move || {
            cluster.restart_node(0);
            cluster
        })
        .await
        .expect("restart node 0");
        tokio::time::timeout(WAIT, a.feed_confirmed())
            .await
            .expect("resubscribed once the node is back");

        // An invalidation published on each node reaches A through its new subscription.
        for node in 0..3 {
            let seen = a.stats().invalidations_received;
            let payload = format!("K{}", key(i));
            let receivers = cluster.cli(node, &["PUBLISH", &channel, &payload]);
            wait_for("invalidation through the new subscription", || {
                a.stats().invalidations_received > seen
            })
            .await;
            println!("published on node {node}: {receivers} local receiver(s); delivered to A");
        }
        let _cluster = cluster; // kept alive until the end of the test

        // Reads probe Redis until the breaker closes; then the L1 is in use again.
        let deadline = Instant::now() + WAIT;
        loop {
            assert_eq!(a.get_or_load(key(i), loader(&source)).await, Ok(1));
            if a.is_l1_active() && a.l1().get(&key(i)).is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "A never recovered: {:?}",
                a.stats()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A purge by another instance (a real one, through the store) reaches A's L1.
        let l2 = RedisStore::connect_cluster(&refs, RedisOptions::new(ns.as_str()))
            .await
            .expect("connect cluster");
        let b: Tc = TieredCache::new(Cache::new(10), l2).expect("build");
        let seen = a.stats().invalidations_received;
        source.write(i);
        b.purge(&key(i)).await.expect("purge");
        wait_for("purge delivered", || {
            a.stats().invalidations_received > seen
        })
        .await;
        assert_eq!(a.l1().get(&key(i)), None);
        assert_eq!(a.get_or_load(key(i), loader(&source)).await, Ok(2));
    });
}
