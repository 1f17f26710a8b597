//! A new user's first day with the tiered cache, through the public API only (issue 20): the
//! service starts while Redis is down and recovers on its own when Redis comes up; the
//! infallible `get_with`; per-entry TTL that the L1 entry never outlives; error reports that
//! print each cause once; a bad URL is a configuration error, never transient.
//!
//! Every wait is on a condition, bounded by a deadline that only turns a hang into a failure.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use leasecache::Cache;
use leasecache::redis::{RedisOptions, RedisStore};
use leasecache::tiered::{TieredCache, TieredError};
use support::{RedisServer, free_port};

/// Bounds every wait: long enough for a loaded 2-core CI box, only reached on a failure.
const DEADLINE: Duration = Duration::from_secs(20);

fn opts(ns: &str) -> RedisOptions {
    RedisOptions::new(ns).command_timeout(Duration::from_secs(2))
}

/// A tiered cache on a lazily connected store at `url`, quick to probe and re-subscribe.
fn tiered(url: &str, ns: &str) -> TieredCache<String, String> {
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
    let cache = tiered(&url, "day");
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
    let cache = tiered(&server.url(), "with");
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
    let cache = tiered(&server.url(), "ttl");
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
