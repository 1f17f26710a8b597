//! Hold-offs, source positions and write intents through the tiered cache: a writer instance
//! raises the floors, a reader instance (another L1 on the same Redis) loads from a source that
//! lags, and nothing it read under a floor is cached in Redis or in either L1.

mod support;

use leasecache::Cache;
use leasecache::redis::{RedisOptions, RedisStore};
use leasecache::tiered::TieredCache;
use std::sync::Arc;
use std::time::Duration;
use support::RedisServer;

type Tc = TieredCache<String, String>;

const WAIT: Duration = Duration::from_secs(15);
const WINDOW: Duration = Duration::from_millis(400);

async fn instance(url: &str, ns: &str) -> Arc<Tc> {
    let store = RedisStore::connect(
        url,
        RedisOptions::new(ns).intent_ttl(Duration::from_secs(30)),
    )
    .await
    .expect("connect to the test redis");
    let cache = TieredCache::builder(Cache::new(1000), store)
        .build()
        .expect("build in a runtime");
    tokio::time::timeout(WAIT, cache.feed_confirmed())
        .await
        .expect("feed confirmed");
    Arc::new(cache)
}

/// Whether `key` is cached anywhere: in Redis or in either instance's L1.
async fn cached(key: &str, a: &Tc, b: &Tc) -> bool {
    a.l2().get(key).await.unwrap().is_some()
        || a.l1().get(key).is_some()
        || b.l1().get(key).is_some()
}

async fn load(cache: &Tc, key: &str, row: &str) -> String {
    let row = row.to_owned();
    cache
        .get_or_load(key.to_owned(), |_| async move { Ok::<_, ()>(row) })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_off_keeps_lagging_reads_out_of_every_tier() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (writer, reader) = (
        instance(&server.url(), "h").await,
        instance(&server.url(), "h").await,
    );
    writer.insert("k", &"old".into()).await.unwrap();
    assert!(writer.purge_with_hold_off("k", WINDOW).await.unwrap());
    assert_eq!(
        load(&reader, "k", "old (lagging replica)").await,
        "old (lagging replica)"
    );
    assert!(
        !cached("k", &writer, &reader).await,
        "a read inside the hold-off was cached"
    );
    tokio::time::sleep(WINDOW).await; // the hold-off runs on Redis's clock
    assert_eq!(load(&reader, "k", "new").await, "new");
    assert_eq!(reader.l2().get("k").await.unwrap().as_deref(), Some("new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_keep_older_reads_out_of_every_tier_without_waiting() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (writer, reader) = (
        instance(&server.url(), "p").await,
        instance(&server.url(), "p").await,
    );
    writer.purge_as_of("k", 10).await.unwrap();
    let lagging = reader
        .get_or_load_as_of("k".to_owned(), |_| async {
            Ok::<_, ()>(("old".to_owned(), 9))
        })
        .await
        .unwrap();
    assert_eq!(lagging, "old");
    assert!(
        !cached("k", &writer, &reader).await,
        "a read at 9 < 10 was cached"
    );
    let current = reader
        .get_or_load_as_of("k".to_owned(), |_| async {
            Ok::<_, ()>(("new".to_owned(), 10))
        })
        .await
        .unwrap();
    assert_eq!(current, "new");
    assert_eq!(reader.l2().get("k").await.unwrap().as_deref(), Some("new"));
    assert_eq!(reader.l1().get("k").as_deref(), Some("new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intent_keeps_reads_out_until_it_ends() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (writer, reader) = (
        instance(&server.url(), "i").await,
        instance(&server.url(), "i").await,
    );
    let intent = writer.begin_write("k").await.unwrap();
    assert_eq!(load(&reader, "k", "old").await, "old");
    assert_eq!(load(&writer, "k", "old").await, "old");
    assert!(
        !cached("k", &writer, &reader).await,
        "a read inside the intent was cached"
    );
    assert!(!intent.commit().await.unwrap());
    assert_eq!(load(&reader, "k", "new").await, "new");
    assert_eq!(reader.l2().get("k").await.unwrap().as_deref(), Some("new"));
    // Dropped without an end: this process's L1 side closes at once (its own saves land again);
    // Redis keeps refusing until the intent lapses.
    let dropped = writer.begin_write("d").await.unwrap();
    drop(dropped);
    let lease = writer.l1().lease("d");
    assert!(
        writer
            .l1()
            .save_with_lease("d".into(), "x".into(), lease)
            .is_ok_and(leasecache::Saved::is_stored)
    );
    assert_eq!(load(&reader, "d", "old").await, "old");
    assert_eq!(
        reader.l2().get("d").await.unwrap(),
        None,
        "saved inside a dropped intent"
    );
}
