//! A new user's first day with the tiered cache, through the public API only (issue 20): the
//! service starts while Redis is down and recovers on its own when Redis comes up; the
//! infallible `get_with`; per-entry TTL that the L1 entry never outlives; error reports that
//! print each cause once; a bad URL is a configuration error, never transient; `u64` and struct
//! keys on the tiered cache; the same cache-aside shape on `Cache`, `RedisStore` and
//! `TieredCache`.
//!
//! Every wait is on a condition, bounded by a deadline that only turns a hang into a failure.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use leasecache::redis::{RedisOptions, RedisStore};
use leasecache::tiered::{EncodeKey, TieredCache, TieredError, TieredKey};
use leasecache::{Cache, Lookup, Saved};
use support::{RedisServer, free_port};

/// Bounds every wait: long enough for a loaded 2-core CI box, only reached on a failure.
const DEADLINE: Duration = Duration::from_secs(20);

fn opts(ns: &str) -> RedisOptions {
    RedisOptions::new(ns).command_timeout(Duration::from_secs(2))
}

/// A tiered cache on a lazily connected store at `url`, quick to probe and re-subscribe.
fn tiered<K: TieredKey>(url: &str, ns: &str) -> TieredCache<K, String> {
    let l2 = RedisStore::<String>::connect_lazy(url, opts(ns)).expect("a valid URL never fails");
    TieredCache::builder(Cache::new(1_000), l2)
        .breaker_cooldown(Duration::from_millis(50))
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .build()
        .expect("inside a runtime")
}

/// Polls `cond` (an async check) until it holds; panics with `what` after [`DEADLINE`].
async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn counting_loader(
    calls: &Arc<AtomicUsize>,
) -> impl FnOnce(String) -> std::future::Ready<Result<String, std::io::Error>> {
    let calls = Arc::clone(calls);
    move |k| {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(format!("row {k}")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_redis_is_down_and_recovers_when_it_comes_up() {
    if !support::redis_available("first_day::starts_while_redis_is_down") {
        return;
    }
    // Nothing listens on this port yet.
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let cache = tiered::<String>(&url, "day");
    assert!(!cache.is_l1_active(), "starts with the L1 bypassed");

    // Degraded: every read is answered by the loader, and nothing is cached.
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let v = cache
            .get_or_load("u1".into(), counting_loader(&calls))
            .await;
        assert_eq!(v.unwrap(), "row u1");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3, "no tier cached anything");
    assert_eq!(
        cache
            .get_with("u2".into(), |k| async move { format!("row {k}") })
            .await,
        "row u2"
    );
    assert!(
        cache.stats().redis_errors > 0,
        "Redis was tried: {:?}",
        cache.stats()
    );
    // A write while Redis is down is pending, not lost, and its report prints each cause once.
    let err = cache.purge("u1").await.unwrap_err();
    assert!(matches!(err, TieredError::Pending(_)), "{err:?}");
    let chain = support::report_with_each_cause_once(err);
    assert!(
        chain.starts_with("redis write failed and is pending"),
        "{chain}"
    );

    // Redis comes up on the port the cache was pointed at: the cache recovers on its own.
    let Some(_server) = RedisServer::start_on(port) else {
        return;
    };
    tokio::time::timeout(DEADLINE, cache.feed_confirmed())
        .await
        .expect("the feed confirms once Redis is up");
    // The store reconnects, the breaker closes, and a load lands in Redis.
    wait_for("a loaded value cached in Redis", || async {
        let _ = cache
            .get_or_load("u3".into(), counting_loader(&calls))
            .await;
        cache.l2().get("u3").await.ok().flatten().as_deref() == Some("row u3")
    })
    .await;
    wait_for("the L1 in use again", || async { cache.is_l1_active() }).await;
    // Now a read is answered by a tier, not the loader.
    let before = calls.load(Ordering::SeqCst);
    for _ in 0..3 {
        let v = cache
            .get_or_load("u3".into(), counting_loader(&calls))
            .await;
        assert_eq!(v.unwrap(), "row u3");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "served from the cache"
    );
    assert!(cache.l1().get("u3").is_some(), "the L1 holds it again");
    // The pending purge queued while Redis was down has landed.
    wait_for("the pending purge landed", || async {
        cache.stats().pending_writes == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_with_loads_once_then_serves_from_the_cache() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let cache = tiered::<String>(&server.url(), "with");
    tokio::time::timeout(DEADLINE, cache.feed_confirmed())
        .await
        .expect("feed");
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let calls = Arc::clone(&calls);
        let v = cache
            .get_with("k".into(), |k| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                format!("row {k}")
            })
            .await;
        assert_eq!(v, "row k");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one load, then hits");
    assert_eq!(cache.l2().get("k").await.unwrap().as_deref(), Some("row k"));
    // The plain cache has the same convenience.
    let l1: Cache<u32, String> = Cache::new(10);
    assert_eq!(l1.get_with(7, |k| format!("row {k}")), "row 7");
    assert_eq!(l1.get_with(7, |_| unreachable!("cached")), "row 7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_with_ttl_the_l1_entry_never_outlives_the_redis_entry() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let cache = tiered::<String>(&server.url(), "ttl");
    tokio::time::timeout(DEADLINE, cache.feed_confirmed())
        .await
        .expect("feed");

    // An invalid TTL changes nothing in either tier.
    cache.insert("k", &"old".to_string()).await.unwrap();
    let err = cache
        .insert_with_ttl("k", &"new".to_string(), Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, TieredError::Redis(_)), "{err:?}");
    assert_eq!(cache.l2().get("k").await.unwrap().as_deref(), Some("old"));

    // A short TTL, far shorter than the store's default: the read fills the L1 from Redis.
    cache
        .insert_with_ttl("k", &"short".to_string(), Duration::from_millis(300))
        .await
        .unwrap();
    wait_for("the L1 filled from Redis", || async {
        cache.get("k").await.unwrap().as_deref() == Some("short") && cache.l1().get("k").is_some()
    })
    .await;
    // Once the Redis entry expired, the L1 entry is gone too.
    wait_for("the Redis entry expired", || async {
        cache.l2().get("k").await.unwrap().is_none()
    })
    .await;
    assert_eq!(cache.l1().get("k"), None, "the L1 entry outlived Redis");
    assert_eq!(cache.get("k").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_url_is_a_configuration_error_and_a_failure_prints_each_cause_once() {
    // A typo is never transient, names the URL (without its password), and fails at once,
    // also for the lazy store.
    for url in [
        "http://127.0.0.1:6379/",
        "redis://u:hunter2@127.0.0.1:99999/",
    ] {
        let err = RedisStore::<String>::connect_lazy(url, opts("cfg")).unwrap_err();
        assert!(err.is_config(), "{url}: {err:?}");
        assert!(!err.is_transient(), "{url}");
        let chain = support::report_with_each_cause_once(err);
        assert!(chain.contains("127.0.0.1:"), "URL not named: {chain}");
        assert!(!chain.contains("hunter2"), "password leaked: {chain}");
    }
    // A store whose server is down fails transiently, and says so once.
    let store = RedisStore::<String>::connect_lazy(
        &format!("redis://127.0.0.1:{}/", free_port()),
        opts("x"),
    )
    .unwrap();
    let err = store.get("k").await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let chain = support::report_with_each_cause_once(err);
    assert!(
        chain.starts_with("redis is unreachable or unavailable"),
        "{chain}"
    );
}

/// A struct key, as a user writes it: two integers, encoded as `tenant/order`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct OrderKey {
    tenant: u32,
    order: u64,
}

/// How many times an `OrderKey` was encoded (only the struct-key test uses `OrderKey`).
static ORDER_KEY_ENCODES: AtomicUsize = AtomicUsize::new(0);

impl EncodeKey for OrderKey {
    fn write_redis_key(&self, out: &mut String) {
        use std::fmt::Write as _;
        ORDER_KEY_ENCODES.fetch_add(1, Ordering::SeqCst);
        let _ = write!(out, "{}/{}", self.tenant, self.order);
    }
}

impl TieredKey for OrderKey {
    fn from_redis_key(s: &str) -> Option<Self> {
        let (tenant, order) = s.split_once('/')?;
        Some(OrderKey {
            tenant: tenant.parse().ok()?,
            order: order.parse().ok()?,
        })
    }
}

/// Two instances of one namespace (two processes, as far as the feed is concerned), both serving.
async fn pair<K: TieredKey>(server: &RedisServer, ns: &str) -> [TieredCache<K, String>; 2] {
    let pair = [tiered(&server.url(), ns), tiered(&server.url(), ns)];
    for cache in &pair {
        tokio::time::timeout(DEADLINE, cache.feed_confirmed())
            .await
            .expect("feed");
        wait_for("the L1 in use", || async { cache.is_l1_active() }).await;
    }
    pair
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_u64_keyed_tiered_cache_stores_decimal_keys_and_decodes_other_processes_purges() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let [a, b] = pair::<u64>(&server, "u64").await;

    // The loader gets the key itself, a u64; Redis holds the value under "7".
    let calls = Arc::new(AtomicUsize::new(0));
    let load = |calls: &Arc<AtomicUsize>| {
        let calls = Arc::clone(calls);
        move |id: u64| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, std::io::Error>(format!("row {}", id + 1)))
        }
    };
    assert_eq!(a.get_or_load(7, load(&calls)).await.unwrap(), "row 8");
    assert_eq!(a.l2().get("7").await.unwrap().as_deref(), Some("row 8"));
    wait_for("an L1 hit on 7", || async {
        a.get_or_load(7, load(&calls)).await.unwrap() == "row 8" && a.l1().get(&7).is_some()
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one load, then the tiers");

    // Another process's purge reaches this L1 as "7", decoded back to the key 7.
    let unreadable = a.stats().unreadable_messages;
    assert!(b.purge(&7).await.unwrap(), "Redis held a value");
    wait_for("a's L1 dropped 7", || async { a.l1().get(&7).is_none() }).await;
    assert_eq!(a.stats().unreadable_messages, unreadable, "7 decoded");
    assert_eq!(a.get(&7).await.unwrap(), None);

    // Writes take the key by reference, like `get`.
    b.insert(&8, &"eight".to_string()).await.unwrap();
    assert_eq!(a.get(&8).await.unwrap().as_deref(), Some("eight"));
    wait_for("a's L1 holds 8", || async {
        a.get(&8).await.unwrap().is_some() && a.l1().get(&8).is_some()
    })
    .await;

    // A key under the namespace that no u64 writes (a bare store's write): the invalidation
    // cannot name an L1 key, so the L1 is flushed, and the message counted as unreadable.
    let bare = RedisStore::<String>::connect(&server.url(), opts("u64"))
        .await
        .unwrap();
    bare.purge("user:x").await.unwrap();
    wait_for("a's L1 flushed", || async { a.l1().get(&8).is_none() }).await;
    assert!(
        a.stats().unreadable_messages > unreadable,
        "{:?}",
        a.stats()
    );
    // ...and the cache goes on: the next read fills the L1 again.
    wait_for("a's L1 holds 8 again", || async {
        a.get(&8).await.unwrap().is_some() && a.l1().get(&8).is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_struct_keyed_tiered_cache_round_trips_its_key_through_redis_and_the_feed() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let [a, b] = pair::<OrderKey>(&server, "orders").await;
    let key = OrderKey {
        tenant: 3,
        order: 42,
    };

    let row = a
        .get_or_load(key.clone(), |k| async move {
            Ok::<_, std::io::Error>(format!("order {} of tenant {}", k.order, k.tenant))
        })
        .await
        .unwrap();
    assert_eq!(row, "order 42 of tenant 3");
    assert_eq!(a.l2().get("3/42").await.unwrap(), Some(row.clone()));
    // `get` on a Redis hit fills the L1 under the key decoded from "3/42".
    assert_eq!(b.get(&key).await.unwrap(), Some(row.clone()));
    wait_for("b's L1 holds the order", || async {
        b.get(&key).await.unwrap().is_some() && b.l1().get(&key).is_some()
    })
    .await;

    // L1 hits never encode the key (nor allocate for it): only a trip to Redis does.
    let encodes = ORDER_KEY_ENCODES.load(Ordering::SeqCst);
    let hits = b.stats().l1_hits;
    for _ in 0..100 {
        assert_eq!(b.get(&key).await.unwrap(), Some(row.clone()));
        let loaded = b
            .get_or_load(key.clone(), |_| async { unreachable!("cached") })
            .await;
        assert_eq!(loaded.unwrap_or_else(|()| unreachable!()), row);
    }
    assert_eq!(b.stats().l1_hits, hits + 200, "every read was an L1 hit");
    assert_eq!(
        ORDER_KEY_ENCODES.load(Ordering::SeqCst),
        encodes,
        "a hit encoded the key"
    );

    // A writer in process a: its invalidation names "3/42", which b decodes to purge its L1.
    a.insert(&key, &"updated".to_string()).await.unwrap();
    wait_for("b's L1 dropped the order", || async {
        b.l1().get(&key).is_none()
    })
    .await;
    assert_eq!(b.get(&key).await.unwrap().as_deref(), Some("updated"));
    assert_eq!(b.stats().unreadable_messages, 0, "{:?}", b.stats());
}

/// How a cache-aside reader reports its save, in every layer: two outcomes, no `_` arm.
fn outcome(saved: Saved) -> &'static str {
    match saved {
        Saved::Stored => "stored",
        Saved::Stale => "stale",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_cache_aside_shape_on_cache_redis_store_and_tiered_cache() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let read_row = |id: u64| format!("row {id}");

    // Cache-aside with a lease. In process: a miss gives a lease; a write fences it; the save is
    // `Ok(Saved::Stale)`; a fresh lease saves `Ok(Saved::Stored)`.
    let l1: Cache<u64, String> = Cache::new(100);
    let Lookup::Miss(lease) = l1.get_or_lease(&7) else {
        panic!("empty cache")
    };
    l1.purge(&7); // a writer wins the race
    assert_eq!(
        outcome(l1.save_with_lease(7, read_row(7), lease).unwrap()),
        "stale"
    );
    let Lookup::Miss(lease) = l1.get_or_lease(&7) else {
        panic!("nothing was stored")
    };
    assert_eq!(
        outcome(l1.save_with_lease(7, read_row(7), lease).unwrap()),
        "stored"
    );
    assert_eq!(l1.get_or_lease(&7), Lookup::Hit(read_row(7)));

    // The same lines on Redis (string keys, borrowed values, awaited).
    let l2 = RedisStore::<String>::connect(&server.url(), opts("shape"))
        .await
        .unwrap();
    let Lookup::Miss(lease) = l2.get_or_lease("7").await.unwrap() else {
        panic!("empty namespace")
    };
    l2.purge("7").await.unwrap(); // a writer wins the race
    assert_eq!(
        outcome(l2.save_with_lease("7", &read_row(7), &lease).await.unwrap()),
        "stale"
    );
    let Lookup::Miss(lease) = l2.get_or_lease("7").await.unwrap() else {
        panic!("nothing was stored")
    };
    assert_eq!(
        outcome(l2.save_with_lease("7", &read_row(7), &lease).await.unwrap()),
        "stored"
    );
    assert_eq!(
        l2.get_or_lease("7").await.unwrap(),
        Lookup::Hit(read_row(7))
    );

    // The same lines on the tiered cache (keys by reference in lookups, owned in saves like
    // `Cache`, borrowed values like `RedisStore`, awaited).
    let tiered_cache: TieredCache<u64, String> = tiered(&server.url(), "shape-tiered");
    tokio::time::timeout(DEADLINE, tiered_cache.feed_confirmed())
        .await
        .expect("feed");
    wait_for("the L1 in use", || async { tiered_cache.is_l1_active() }).await;
    let Lookup::Miss(lease) = tiered_cache.get_or_lease(&7).await.unwrap() else {
        panic!("empty namespace")
    };
    let applied = tiered_cache.stats().invalidations_received;
    tiered_cache.purge(&7).await.unwrap(); // a writer wins the race
    assert_eq!(
        outcome(
            tiered_cache
                .save_with_lease(7, &read_row(7), lease)
                .await
                .unwrap()
        ),
        "stale"
    );
    // The purge's echo (every instance receives its own writes) would fence an L1 lease taken
    // before it arrives: wait for it, so that the next save fills the L1.
    echoed(&tiered_cache, applied).await;
    let Lookup::Miss(lease) = tiered_cache.get_or_lease(&7).await.unwrap() else {
        panic!("nothing was stored")
    };
    assert_eq!(
        outcome(
            tiered_cache
                .save_with_lease(7, &read_row(7), lease)
                .await
                .unwrap()
        ),
        "stored"
    );
    assert_eq!(
        tiered_cache.get_or_lease(&7).await.unwrap(),
        Lookup::Hit(read_row(7))
    );
    // Counted as `get_or_load` counts: each miss a source read, so `hit_ratio` covers both.
    let stats = tiered_cache.stats();
    assert_eq!(stats.loads, 2, "two misses: {stats:?}");
    assert_eq!(stats.l1_hits + stats.l2_hits, 1, "one hit: {stats:?}");
    // Stored in both tiers: Redis under "7", the L1 under 7.
    assert_eq!(tiered_cache.l2().get("7").await.unwrap(), Some(read_row(7)));
    assert_eq!(tiered_cache.l1().get(&7), Some(read_row(7)));
    assert!(tiered_cache.purge(&7).await.unwrap(), "Redis held 7");

    // Read-through, then a writer's purge: the loader gets the key by value in every layer, and
    // `purge` takes it by reference.
    let sync = l1.get_or_load(8, |id| Ok::<_, std::io::Error>(read_row(id)));
    let in_async = l1
        .get_or_load_async(9, |id| async move { Ok::<_, std::io::Error>(read_row(id)) })
        .await;
    let tiered_row = tiered_cache
        .get_or_load(8, |id| async move { Ok::<_, std::io::Error>(read_row(id)) })
        .await;
    assert_eq!(sync.unwrap(), "row 8");
    assert_eq!(in_async.unwrap(), "row 9");
    assert_eq!(tiered_row.unwrap(), "row 8");
    assert_eq!(l1.get_with(10, read_row), "row 10");
    assert_eq!(
        tiered_cache
            .get_with(10, |id| async move { read_row(id) })
            .await,
        "row 10"
    );

    assert!(l1.purge(&8), "the L1 held 8");
    assert!(tiered_cache.purge(&8).await.unwrap(), "Redis held 8");
    assert!(l2.purge("7").await.unwrap(), "Redis held 7");
    assert_eq!(l1.get(&8), None);
    assert_eq!(tiered_cache.get(&8).await.unwrap(), None);
    assert_eq!(l2.get("7").await.unwrap(), None);
}

/// Waits until `cache` applied an invalidation past the `applied` it had counted: the echo of a
/// purge it made itself, which fences the L1 leases captured before it arrives.
async fn echoed<K: TieredKey>(cache: &TieredCache<K, String>, applied: u64) {
    wait_for("the purge applied here", || async {
        cache.stats().invalidations_received > applied
    })
    .await;
}

/// The database of the fencing test: one row, its version bumped by every update.
struct Row(std::sync::Mutex<u32>);

impl Row {
    fn read(&self) -> String {
        format!("v{}", self.0.lock().unwrap())
    }
    fn update(&self) {
        *self.0.lock().unwrap() += 1;
    }
}

/// A cache-aside reader's lease is fenced by a writer's purge between its `get_or_lease` and its
/// `save_with_lease`, whether the writer is this instance or another one: the save is `Stale`,
/// neither tier stores the old row, and no L1 ever serves it. Another instance's insert and
/// flush fence it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_between_get_or_lease_and_save_fences_the_save_in_every_instance() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let [a, b] = pair::<u64>(&server, "aside-fence").await;
    let db = Row(std::sync::Mutex::new(1));

    for (writer, name) in [(&a, "this instance"), (&b, "another instance")] {
        // The reader (a) misses and reads the row...
        let Lookup::Miss(lease) = a.get_or_lease(&1).await.unwrap() else {
            panic!("{name}: the key was purged")
        };
        assert!(!lease.saves_nowhere(), "{name}: the breaker is closed");
        let old = db.read();
        // ...a writer updates it and purges (Strict: returns once every other instance applied
        // it)...
        let applied = a.stats().invalidations_received;
        db.update();
        writer.purge(&1).await.unwrap();
        echoed(&a, applied).await;
        // ...so the reader's save is stale, and stores the old row nowhere.
        assert_eq!(
            a.save_with_lease(1, &old, lease).await.unwrap(),
            Saved::Stale,
            "{name}"
        );
        assert_eq!(a.l1().get(&1), None, "{name}: a's L1");
        assert_eq!(b.l1().get(&1), None, "{name}: b's L1");
        assert_eq!(a.l2().get("1").await.unwrap(), None, "{name}: Redis");
        for cache in [&a, &b] {
            assert!(
                matches!(cache.get_or_lease(&1).await.unwrap(), Lookup::Miss(_)),
                "{name}: nobody serves {old}"
            );
        }

        // A fresh lease saves the current row in both tiers; both instances serve it, the
        // reader from its L1.
        let Lookup::Miss(lease) = a.get_or_lease(&1).await.unwrap() else {
            panic!("{name}: nothing was stored")
        };
        let new = db.read();
        assert_ne!(new, old);
        assert_eq!(
            a.save_with_lease(1, &new, lease).await.unwrap(),
            Saved::Stored,
            "{name}"
        );
        assert_eq!(a.l1().get(&1).as_ref(), Some(&new), "{name}: a's L1 filled");
        assert_eq!(b.get(&1).await.unwrap().as_ref(), Some(&new), "{name}");

        // The writer's next update purges it everywhere before the next round.
        let applied = a.stats().invalidations_received;
        db.update();
        writer.purge(&1).await.unwrap();
        echoed(&a, applied).await;
        assert_eq!(a.l1().get(&1), None, "{name}: a's L1 after the purge");
        assert_eq!(b.l1().get(&1), None, "{name}: b's L1 after the purge");
    }

    // Another instance's insert and flush fence the lease as its purge does: the insert's value
    // is what both instances read afterwards, never the reader's.
    let Lookup::Miss(lease) = a.get_or_lease(&1).await.unwrap() else {
        panic!("purged")
    };
    b.insert(&1, &"inserted".to_string()).await.unwrap();
    assert_eq!(
        a.save_with_lease(1, &db.read(), lease).await.unwrap(),
        Saved::Stale
    );
    for cache in [&a, &b] {
        assert_eq!(
            cache.get_or_lease(&1).await.unwrap(),
            Lookup::Hit("inserted".to_string())
        );
    }
    let Lookup::Miss(lease) = a.get_or_lease(&2).await.unwrap() else {
        panic!("never written")
    };
    b.flush().await.unwrap();
    assert_eq!(
        a.save_with_lease(2, &db.read(), lease).await.unwrap(),
        Saved::Stale
    );
    assert_eq!(a.l2().get("2").await.unwrap(), None);
    assert_eq!(a.l1().get(&2), None);
    assert!(a.stats().l2_stale_rejected >= 4, "{:?}", a.stats());
}

/// With Redis down the breaker opens; then `get_or_lease` does not try Redis and hands out a
/// lease that saves nowhere, so cache-aside code keeps serving from the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_breaker_open_get_or_lease_gives_a_lease_that_saves_nowhere() {
    let url = format!("redis://127.0.0.1:{}/", free_port());
    let cache: TieredCache<u64, String> = tiered(&url, "aside-down");

    // The first reads reach for Redis and fail (each counted by the breaker)...
    let mut failures = 0;
    let lease = loop {
        match cache.get_or_lease(&1).await {
            Err(TieredError::Redis(_)) => failures += 1,
            Ok(Lookup::Miss(lease)) if lease.saves_nowhere() => break lease,
            other => panic!("{other:?}"),
        }
        assert!(failures <= 100, "the breaker never opened");
    };
    // ...until the breaker opens (threshold 3).
    assert!(
        failures >= 3,
        "{failures} failures before the breaker opened"
    );
    assert!(cache.stats().breaker_opens >= 1, "{:?}", cache.stats());
    assert_eq!(cache.stats().loads, 1, "the miss: {:?}", cache.stats());
    let errors = cache.stats().redis_errors;
    assert_eq!(
        cache
            .save_with_lease(1, &"row 1".to_string(), lease)
            .await
            .unwrap(),
        Saved::Stale
    );
    assert_eq!(cache.stats().redis_errors, errors, "Redis was not tried");
    assert_eq!(cache.l1().get(&1), None);
}

/// The narrowest window: another instance's purge lands after the reader's Redis save and before
/// its L1 fill (forced by the unadvertised test hook). The save did land in Redis (`Stored`),
/// the purge removed it there, and the reader's L1 refuses the fill: no tier serves the old row.
#[cfg(feature = "__test-hooks")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_between_the_redis_save_and_the_l1_fill_keeps_the_old_value_out_of_the_l1() {
    use leasecache::tiered::FillPoint;
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicBool;

    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let writer: Arc<OnceLock<TieredCache<u64, String>>> = Arc::default();
    let armed = Arc::new(AtomicBool::new(false));
    let purged = Arc::new(AtomicBool::new(false));
    let (w, arm, done) = (Arc::clone(&writer), Arc::clone(&armed), Arc::clone(&purged));
    let l2 = RedisStore::<String>::connect_lazy(&url, opts("aside-hook")).unwrap();
    let a: TieredCache<u64, String> = TieredCache::builder(Cache::new(100), l2)
        .test_hook_before_l1_fill(move |point, key| {
            let fire = point == FillPoint::RedisSaved && arm.swap(false, Ordering::SeqCst);
            let (w, done) = (Arc::clone(&w), Arc::clone(&done));
            async move {
                if fire {
                    let writer = w
                        .get()
                        .expect("the writer is built before the hook is armed");
                    let id: u64 = key.parse().unwrap();
                    // Strict: returns once the reader's feed applied the invalidation.
                    writer.purge(&id).await.unwrap();
                    done.store(true, Ordering::SeqCst);
                }
            }
        })
        .build()
        .unwrap();
    assert!(writer.set(tiered(&url, "aside-hook")).is_ok());
    let b = writer.get().unwrap();
    for cache in [&a, b] {
        tokio::time::timeout(DEADLINE, cache.feed_confirmed())
            .await
            .expect("feed");
        wait_for("the L1 in use", || async { cache.is_l1_active() }).await;
    }

    let Lookup::Miss(lease) = a.get_or_lease(&1).await.unwrap() else {
        panic!("empty namespace")
    };
    armed.store(true, Ordering::SeqCst);
    let saved = a
        .save_with_lease(1, &"old".to_string(), lease)
        .await
        .unwrap();
    assert!(purged.load(Ordering::SeqCst), "the hook purged");
    assert_eq!(saved, Saved::Stored, "Redis took the save before the purge");
    assert_eq!(a.l1().get(&1), None, "the L1 refused the fill");
    assert_eq!(a.l2().get("1").await.unwrap(), None, "the purge removed it");
    assert!(matches!(a.get_or_lease(&1).await.unwrap(), Lookup::Miss(_)));
    assert!(matches!(b.get_or_lease(&1).await.unwrap(), Lookup::Miss(_)));
    assert!(a.stats().l1_stale_rejected >= 1, "{:?}", a.stats());
}
