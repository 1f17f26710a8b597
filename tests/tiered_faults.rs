//! The tiered cache under faults that must lose nothing (issue 14): writes while Redis is
//! unreachable or this process's breaker is open, server errors that must not open the breaker,
//! bad stored data, a feed that never confirms. Real `redis-server` processes (see `support`);
//! several `TieredCache` instances stand in for processes.
//!
//! Waits poll a condition with a deadline; nothing sleeps in place of synchronisation.

mod support;

use leasecache::Cache;
use leasecache::redis::{RedisOptions, RedisStore, RedisStoreError};
use leasecache::tiered::{TieredBuilder, TieredCache, TieredError};
use serde::{Serialize, de::DeserializeOwned};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use support::{RedisServer, wait_for};

/// How long any single wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(15);
/// Command timeout of the stores whose server gets paused: faults surface within it.
const SHORT: Duration = Duration::from_millis(300);

/// One "process". `confirmed`: wait for its feed before returning.
async fn instance<V>(
    url: &str,
    options: RedisOptions,
    confirmed: bool,
    configure: impl FnOnce(TieredBuilder<String, V>) -> TieredBuilder<String, V>,
) -> Arc<TieredCache<String, V>>
where
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let l2 = RedisStore::connect(url, options).await.expect("connect");
    let builder = TieredCache::builder(Cache::new(1_000), l2)
        .ping_interval(Duration::from_millis(200))
        .ping_timeout(Duration::from_millis(500))
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .pending_backoff(Duration::from_millis(10), Duration::from_millis(100));
    let cache = configure(builder).build().expect("build in a runtime");
    if confirmed {
        tokio::time::timeout(WAIT, cache.feed_confirmed())
            .await
            .expect("feed confirmed");
    }
    Arc::new(cache)
}

/// A counting source: `load` returns the current version of the single row.
struct Source {
    version: AtomicU64,
    loads: AtomicU64,
}

impl Source {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            version: AtomicU64::new(1),
            loads: AtomicU64::new(0),
        })
    }
    fn loader(self: &Arc<Self>) -> impl FnOnce(String) -> std::future::Ready<Result<u64, ()>> {
        let me = Arc::clone(self);
        move |_| {
            me.loads.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(me.version.load(Ordering::SeqCst)))
        }
    }
    fn write(&self) -> u64 {
        self.version.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn loads(&self) -> u64 {
        self.loads.load(Ordering::SeqCst)
    }
}

/// Runs `test` on a 2-thread runtime with an overall deadline.
fn run<F: Future<Output = ()> + Send + 'static>(limit: Duration, test: F) {
    support::run_tokio(2, limit, test);
}

#[test]
fn wrongtype_never_opens_the_breaker() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    run(Duration::from_secs(60), async move {
        let source = Source::new();
        let a: Arc<TieredCache<String, u64>> =
            instance(&server.url(), RedisOptions::new("wt"), true, |b| {
                b.breaker_threshold(1)
                    .breaker_cooldown(Duration::from_secs(3600))
            })
            .await;
        assert_eq!(a.get_or_load("good".into(), source.loader()).await, Ok(1));
        assert_eq!(a.l1().get("good"), Some(1));

        // A foreign string key under the namespace, read many times.
        server.cli(&["SET", "wt:foreign", "x"]);
        for _ in 0..5 {
            assert_eq!(
                a.get_or_load("foreign".into(), source.loader()).await,
                Ok(1)
            );
        }
        match a.get("foreign").await {
            Err(TieredError::Redis(RedisStoreError::Server(e))) => {
                assert_eq!(e.code(), "WRONGTYPE")
            }
            other => panic!("expected WRONGTYPE, got {other:?}"),
        }
        let s = a.stats();
        assert_eq!(s.breaker_opens, 0, "{s:?}");
        assert!(a.is_l1_active());
        assert_eq!(a.l1().get("good"), Some(1), "the L1 was not flushed");
        assert_eq!(a.get_or_load("good".into(), source.loader()).await, Ok(1));
        assert_eq!(source.loads(), 6, "one load for good, five for foreign");
    });
}

#[test]
fn unreadable_values_heal_in_the_tiered_path() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    run(Duration::from_secs(60), async move {
        let source = Source::new();
        let a: Arc<TieredCache<String, u64>> =
            instance(&server.url(), RedisOptions::new("bad"), true, |b| b).await;
        let other: Arc<TieredCache<String, u64>> =
            instance(&server.url(), RedisOptions::new("bad"), true, |b| b).await;
        server.cli(&["HSET", "bad:k", "!v", "not ours"]);

        assert_eq!(a.get_or_load("k".into(), source.loader()).await, Ok(1));
        let s = a.stats();
        assert_eq!(s.l2_unreadable_values, 1, "{s:?}");
        assert_eq!(s.breaker_opens, 0);
        assert_eq!(a.l1().get("k"), Some(1), "the healed value fills the L1");
        // Redis was healed: another process reads it without loading.
        assert_eq!(other.get("k").await.unwrap(), Some(1));
        assert_eq!(a.get_or_load("k".into(), source.loader()).await, Ok(1));
        assert_eq!(source.loads(), 1);
    });
}

#[test]
fn a_save_refused_as_too_large_still_serves_and_fills_the_l1() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    run(Duration::from_secs(60), async move {
        let a: Arc<TieredCache<String, String>> = instance(
            &server.url(),
            RedisOptions::new("big").max_value_bytes(8),
            true,
            |b| b,
        )
        .await;
        let big = "a value longer than eight bytes".to_string();
        let v = big.clone();
        let got = a
            .get_or_load("k".into(), move |_| async move { Ok::<_, ()>(v) })
            .await;
        assert_eq!(got.as_ref(), Ok(&big));
        assert_eq!(server.cli(&["HEXISTS", "big:k", "!v"]), "0");
        assert_eq!(a.l1().get("k"), Some(big));
        assert_eq!(a.stats().breaker_opens, 0);
    });
}

#[test]
fn get_never_fills_the_l1_while_the_feed_is_down() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // A user that may do everything but subscribe: the feed never confirms.
    let acl = server.cli(&[
        "ACL",
        "SETUSER",
        "app",
        "on",
        ">pw",
        "~*",
        "&*",
        "+@all",
        "-subscribe",
        "-psubscribe",
        "-ssubscribe",
    ]);
    assert_eq!(acl, "OK");
    let url = format!("redis://app:pw@127.0.0.1:{}/", server.port());
    run(Duration::from_secs(60), async move {
        let a: Arc<TieredCache<String, u64>> =
            instance(&url, RedisOptions::new("nf"), false, |b| b).await;
        a.l2().insert("k", &7).await.unwrap();
        assert!(!a.is_l1_active());
        assert_eq!(a.get("k").await.unwrap(), Some(7));
        assert_eq!(a.get("k").await.unwrap(), Some(7));
        assert!(!a.is_l1_active(), "the feed is still down");
        assert_eq!(a.l1().get("k"), None, "get filled the L1 without a feed");
        let s = a.stats();
        assert!(s.bypassed_reads >= 2, "{s:?}");
        assert_eq!(s.l2_hits, 2);
    });
}

#[test]
fn breaker_open_here_and_redis_up_a_purge_still_lands_for_other_processes() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    run(Duration::from_secs(90), async move {
        let url = server.url();
        let source = Source::new();
        let a: Arc<TieredCache<String, u64>> = instance(
            &url,
            RedisOptions::new("bo").command_timeout(SHORT),
            true,
            |b| {
                b.breaker_threshold(1)
                    .breaker_cooldown(Duration::from_secs(3600))
            },
        )
        .await;
        let b: Arc<TieredCache<String, u64>> =
            instance(&url, RedisOptions::new("bo"), true, |b| b).await;
        assert_eq!(a.get_or_load("k".into(), source.loader()).await, Ok(1));
        assert_eq!(b.get_or_load("k".into(), source.loader()).await, Ok(1));

        // A blip on this side only: one read times out, this process's breaker opens.
        server.pause();
        assert_eq!(a.get_or_load("other".into(), source.loader()).await, Ok(1));
        server.resume();
        assert_eq!(a.stats().breaker_opens, 1);
        assert!(!a.is_l1_active());
        assert!(matches!(a.get("k").await, Err(TieredError::Unavailable)));
        assert_eq!(a.l1().get("k"), None, "the open breaker flushed the L1");

        // The writer updates the source and purges: Redis is up, so the purge lands.
        source.write();
        assert!(a.purge("k").await.expect("purge reaches Redis"));
        assert_eq!(server.cli(&["EXISTS", "bo:k"]), "0");
        // Another process reads the new version once its feed is back.
        tokio::time::timeout(WAIT, b.feed_confirmed())
            .await
            .expect("b's feed confirmed");
        wait_for("b sees the purge", || b.l1().get("k") != Some(1)).await;
        assert_eq!(b.get_or_load("k".into(), source.loader()).await, Ok(2));
        assert_eq!(a.stats().pending_queued, 0, "nothing had to be queued");
    });
}

#[test]
fn failed_writes_are_pending_then_land_in_order() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    run(Duration::from_secs(90), async move {
        let url = server.url();
        let source = Source::new();
        let a: Arc<TieredCache<String, u64>> = instance(
            &url,
            RedisOptions::new("pw").command_timeout(SHORT),
            true,
            |b| b,
        )
        .await;
        assert_eq!(a.get_or_load("k".into(), source.loader()).await, Ok(1));
        a.insert("i", &10).await.unwrap();
        assert_eq!(server.cli(&["EXISTS", "pw:k", "pw:i"]), "2");

        server.pause();
        let err = a.purge("k").await.unwrap_err();
        assert!(matches!(err, TieredError::Pending(_)), "{err:?}");
        assert_eq!(a.l1().get("k"), None, "the L1 is purged at once");
        let chain = format!("{:#}", anyhow::Error::from(err));
        // Each layer once: the tiered cache's, the store's, the I/O cause.
        assert!(
            chain.starts_with(
                "redis write failed and is pending: it is retried in the background until it \
                 lands: redis"
            ),
            "{chain}"
        );
        let parts: Vec<&str> = chain.split(": ").collect();
        assert!(parts.len() >= 3, "{chain}");
        for (i, p) in parts.iter().enumerate() {
            assert!(
                !parts[i + 1..].contains(p),
                "{p:?} printed twice in {chain}"
            );
        }
        let err = a.insert("i", &11).await.unwrap_err();
        assert!(matches!(err, TieredError::Pending(_)), "{err:?}");
        let s = a.stats();
        assert_eq!((s.pending_writes, s.pending_queued), (2, 2), "{s:?}");

        server.resume();
        wait_for("the queue drains", || a.stats().pending_writes == 0).await;
        let s = a.stats();
        assert_eq!(s.pending_landed, 2, "{s:?}");
        assert_eq!(s.pending_collapsed, 0);
        // The purge landed, and the failed insert landed as a purge: neither old value survives.
        assert_eq!(server.cli(&["EXISTS", "pw:k", "pw:i"]), "0");
        source.write();
        assert_eq!(a.get_or_load("k".into(), source.loader()).await, Ok(2));
    });
}

#[test]
fn a_full_pending_queue_collapses_into_a_flush_and_bypasses_the_l1() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    run(Duration::from_secs(90), async move {
        let url = server.url();
        let a: Arc<TieredCache<String, u64>> = instance(
            &url,
            RedisOptions::new("fq").command_timeout(SHORT),
            true,
            |b| b.pending_capacity(2),
        )
        .await;
        for k in ["k0", "k1", "k2", "untouched"] {
            a.insert(k, &1).await.unwrap();
        }
        server.cli(&["SET", "elsewhere", "kept"]);

        server.pause();
        for k in ["k0", "k1", "k2"] {
            let err = a.purge(k).await.unwrap_err();
            assert!(matches!(err, TieredError::Pending(_)), "{err:?}");
        }
        let s = a.stats();
        assert_eq!(s.pending_collapsed, 3, "{s:?}");
        assert_eq!(s.pending_writes, 1, "one flush instead");
        assert!(!a.is_l1_active(), "bypassed until the flush lands");

        server.resume();
        wait_for("the flush lands", || a.stats().pending_writes == 0).await;
        assert_eq!(
            server.cli(&["EXISTS", "fq:k0", "fq:k1", "fq:k2", "fq:untouched"]),
            "0"
        );
        assert_eq!(server.cli(&["GET", "elsewhere"]), "kept", "namespace only");
        tokio::time::timeout(WAIT, a.feed_confirmed())
            .await
            .expect("feed back");
        wait_for("the L1 in use again", || a.is_l1_active()).await;
    });
}
