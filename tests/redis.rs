//! Black-box tests of the Redis tier against real `redis-server` processes (see `support`).
//!
//! Every test starts its own server (or cluster) on a free loopback port; without
//! `redis-server` they print a loud skip, and fail under `LEASECACHE_REQUIRE_REDIS=1`.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use leasecache::Lookup;
use leasecache::redis::{
    Invalidation, JsonCodec, RedisLease, RedisOptions, RedisStore, RedisStoreError, Saved,
};
use support::{RedisCluster, RedisServer};

/// Per-command timeout of every store in these tests: faults must surface within it.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on waiting for a store to recover after a fault.
const RECOVERY: Duration = Duration::from_secs(20);

fn opts(ns: &str) -> RedisOptions {
    RedisOptions::new(ns).command_timeout(TIMEOUT)
}

async fn store(server: &RedisServer, ns: &str) -> RedisStore<String> {
    RedisStore::connect(&server.url(), opts(ns))
        .await
        .expect("connect")
}

async fn lease(store: &RedisStore<String>, key: &str) -> RedisLease {
    match store.get_or_lease(key).await.expect("get_or_lease") {
        Lookup::Miss(l) => l,
        Lookup::Hit(v) => panic!("expected a miss on {key}, got {v:?}"),
    }
}

async fn field_lease(store: &RedisStore<String>, key: &str, field: &str) -> RedisLease {
    match store
        .get_field_or_lease(key, field)
        .await
        .expect("get_field_or_lease")
    {
        Lookup::Miss(l) => l,
        Lookup::Hit(v) => panic!("expected a miss on {key}/{field}, got {v:?}"),
    }
}

/// Polls `op` until it succeeds (bounded by [`RECOVERY`]).
async fn recover<T, F, Fut>(mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RedisStoreError>>,
{
    let deadline = tokio::time::Instant::now() + RECOVERY;
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(
                    e.is_transient(),
                    "non-transient error while recovering: {e}"
                );
                assert!(tokio::time::Instant::now() < deadline, "no recovery: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[test]
fn harness_standalone_start_restart() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    assert_eq!(server.cli(&["PING"]), "PONG");
    assert_eq!(server.cli(&["SET", "k", "v"]), "OK");
    server.kill9();
    assert!(!server.is_up());
    server.restart();
    assert_eq!(
        server.cli(&["GET", "k"]),
        "",
        "no persistence: the key is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_lease_save_hit() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server, "t").await;
    assert_eq!(s.get("k").await.unwrap(), None);
    let l = lease(&s, "k").await;
    assert_eq!(l.key(), "k");
    assert_eq!(
        s.save_with_lease("k", &"v1".into(), &l).await.unwrap(),
        Saved::Stored
    );
    assert_eq!(s.get("k").await.unwrap().as_deref(), Some("v1"));
    assert_eq!(
        s.get_or_lease("k").await.unwrap(),
        Lookup::Hit("v1".to_string())
    );
    // The lease stays valid until a write fences it (a second reader may save the same value).
    assert_eq!(
        s.save_with_lease("k", &"v1".into(), &l).await.unwrap(),
        Saved::Stored
    );
    // Stored under the namespace prefix, as a hash.
    assert_eq!(server.cli(&["TYPE", "t:k"]), "hash");
    assert_eq!(s.namespace(), "t");
    assert_eq!(s.node_urls(), [server.url()]);
    assert_eq!(s.invalidation_channel(), "leasecache:t:invalidations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_writer_fences() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server, "t").await;
    let v = "old".to_string();

    // purge of a present key
    s.insert("a", &"x".into()).await.unwrap();
    s.purge("a").await.unwrap();
    let l = lease(&s, "a").await;
    s.save_with_lease("a", &"x".into(), &l).await.unwrap();
    let l = lease(&s, "b").await;
    s.insert("a", &"y".into()).await.unwrap(); // unrelated key: b's lease survives
    assert!(s.purge("a").await.unwrap(), "a value was removed");
    assert!(!s.purge("a").await.unwrap(), "nothing left to remove");
    assert_eq!(s.save_with_lease("b", &v, &l).await.unwrap(), Saved::Stored);

    // I4: purge of an absent key fences
    let l = lease(&s, "absent").await;
    assert!(!s.purge("absent").await.unwrap());
    assert_eq!(
        s.save_with_lease("absent", &v, &l).await.unwrap(),
        Saved::Stale
    );
    assert_eq!(s.get("absent").await.unwrap(), None);

    // insert fences and its value wins
    let l = lease(&s, "i").await;
    s.insert("i", &"new".into()).await.unwrap();
    assert_eq!(s.save_with_lease("i", &v, &l).await.unwrap(), Saved::Stale);
    assert_eq!(s.get("i").await.unwrap().as_deref(), Some("new"));

    // insert_with_ttl fences
    s.purge("i").await.unwrap();
    let l = lease(&s, "i").await;
    s.insert_with_ttl("i", &"new".into(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(s.save_with_lease("i", &v, &l).await.unwrap(), Saved::Stale);

    // field purge fences the whole key (value lease and other fields' leases)
    let lk = lease(&s, "f").await;
    let lf = field_lease(&s, "f", "other").await;
    assert!(!s.purge_field("f", "one").await.unwrap());
    assert_eq!(s.save_with_lease("f", &v, &lk).await.unwrap(), Saved::Stale);
    assert_eq!(
        s.save_field_with_lease("f", "other", &v, &lf)
            .await
            .unwrap(),
        Saved::Stale
    );

    // flush fences every outstanding lease, including on absent keys
    let l1 = lease(&s, "x1").await;
    let l2 = field_lease(&s, "x2", "g").await;
    s.insert("x3", &"kept?".into()).await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(
        s.save_with_lease("x1", &v, &l1).await.unwrap(),
        Saved::Stale
    );
    assert_eq!(
        s.save_field_with_lease("x2", "g", &v, &l2).await.unwrap(),
        Saved::Stale
    );
    assert_eq!(s.get("x3").await.unwrap(), None);

    // after each fence a fresh lease works again
    let l = lease(&s, "x1").await;
    assert_eq!(
        s.save_with_lease("x1", &v, &l).await.unwrap(),
        Saved::Stored
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_is_namespace_scoped() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = store(&server, "a").await;
    let b = store(&server, "b").await;
    for i in 0..2500 {
        a.insert(&format!("k{i}"), &"v".into()).await.unwrap();
    }
    b.insert("k1", &"b".into()).await.unwrap();
    let lb = lease(&b, "k2").await;
    server.cli(&["SET", "a-not-ours", "1"]);
    a.flush().await.unwrap();
    assert_eq!(
        server.cli(&["DBSIZE"]),
        "3",
        "only b:k1, b:k2's marker and a-not-ours remain"
    );
    assert_eq!(b.get("k1").await.unwrap().as_deref(), Some("b"));
    assert_eq!(
        b.save_with_lease("k2", &"v".into(), &lb).await.unwrap(),
        Saved::Stored
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_bound_to_key_field_and_namespace() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = store(&server, "a").await;
    let a2 = store(&server, "a").await; // another process on the same namespace
    let b = store(&server, "b").await;
    let v = "v".to_string();
    let l = lease(&a, "k").await;
    let lb = lease(&b, "k").await;

    let foreign =
        |r: Result<Saved, RedisStoreError>| matches!(r, Err(RedisStoreError::ForeignLease));
    assert!(foreign(a.save_with_lease("other", &v, &l).await));
    assert!(
        foreign(b.save_with_lease("k", &v, &l).await),
        "another namespace"
    );
    assert!(
        foreign(a.save_with_lease("k", &v, &lb).await),
        "another namespace"
    );
    assert!(
        foreign(a.save_field_with_lease("k", "f", &v, &l).await),
        "key lease for a field"
    );
    let lf = field_lease(&a, "k", "f").await;
    assert!(
        foreign(a.save_with_lease("k", &v, &lf).await),
        "field lease for the key"
    );
    assert!(
        foreign(a.save_field_with_lease("k", "g", &v, &lf).await),
        "another field"
    );
    assert_eq!(a.get("k").await.unwrap(), None, "rejections change nothing");
    assert_eq!(a.list_fields("k").await.unwrap(), Vec::<String>::new());

    // Tokens cross processes; garbled ones are refused with a clear error.
    let token = l.to_token();
    let back = RedisLease::from_token(&token).unwrap();
    assert_eq!(back, l);
    let mut garbled = token.clone();
    garbled.replace_range(10..11, if &token[10..11] == "0" { "1" } else { "0" });
    let err = RedisLease::from_token(&garbled).unwrap_err();
    assert!(matches!(err, RedisStoreError::InvalidLease(_)), "{err}");
    assert!(RedisLease::from_token("garbage").is_err());
    assert_eq!(
        a2.save_with_lease("k", &v, &back).await.unwrap(),
        Saved::Stored
    );
    assert_eq!(
        b.save_with_lease("k", &v, &lb).await.unwrap(),
        Saved::Stored
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server, "t").await;
    let names = ["plain", "!g", "!v", "f:x", ""];
    for name in names {
        let l = field_lease(&s, "k", name).await;
        let v = format!("value of {name}");
        assert_eq!(
            s.save_field_with_lease("k", name, &v, &l).await.unwrap(),
            Saved::Stored
        );
    }
    for name in names {
        assert_eq!(
            s.get_field("k", name).await.unwrap(),
            Some(format!("value of {name}"))
        );
    }
    let listed: HashSet<String> = s.list_fields("k").await.unwrap().into_iter().collect();
    let expected: HashSet<String> = names.iter().map(|n| n.to_string()).collect();
    assert_eq!(listed, expected, "user fields only, internal ones hidden");
    assert_eq!(
        s.get("k").await.unwrap(),
        None,
        "a field named !v is not the key's value"
    );

    // A lease on the key's value is still honoured: user fields cannot touch the marker.
    let lk = lease(&s, "k2").await;
    let lf = field_lease(&s, "k2", "!g").await;
    assert_eq!(
        s.save_field_with_lease("k2", "!g", &"x".into(), &lf)
            .await
            .unwrap(),
        Saved::Stored
    );
    assert_eq!(
        s.save_with_lease("k2", &"val".into(), &lk).await.unwrap(),
        Saved::Stored
    );

    assert!(s.purge_field("k", "plain").await.unwrap());
    assert_eq!(s.get_field("k", "plain").await.unwrap(), None);
    assert_eq!(
        s.get_field("k", "!v").await.unwrap().as_deref(),
        Some("value of !v"),
        "other entries stay"
    );
    assert!(!s.purge_field("k", "plain").await.unwrap());

    // insert replaces the key's whole contents.
    s.insert("k", &"fresh".into()).await.unwrap();
    assert!(s.list_fields("k").await.unwrap().is_empty());
    assert!(!s.get_field_or_lease("k", "!g").await.unwrap().is_hit());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_refused_and_changes_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s: RedisStore<String> = RedisStore::connect(&server.url(), opts("t").max_value_bytes(32))
        .await
        .unwrap();

    // Oversized values send nothing.
    let big = "x".repeat(100);
    let l = lease(&s, "k").await;
    let err = s.save_with_lease("k", &big, &l).await.unwrap_err();
    assert!(
        matches!(err, RedisStoreError::TooLarge { limit: 32, .. }),
        "{err}"
    );
    assert!(matches!(
        s.insert("j", &big).await,
        Err(RedisStoreError::TooLarge { .. })
    ));
    assert_eq!(server.cli(&["EXISTS", "t:j"]), "0");
    assert_eq!(
        s.save_with_lease("k", &"ok".into(), &l).await.unwrap(),
        Saved::Stored
    );

    // A value that fails to decode: `get` reports it; the lease-taking read treats it as a miss
    // whose lease lets the next save replace it (bad data heals), and counts it.
    server.cli(&["HSET", "t:bad", "!v", "\u{ff}\u{ff}\u{ff}\u{ff}\u{ff}"]);
    let err = s.get("bad").await.unwrap_err();
    assert!(matches!(err, RedisStoreError::Decode(_)), "{err}");
    assert_eq!(
        s.unreadable_values(),
        0,
        "get hands out no lease: not counted"
    );
    let heal = lease(&s, "bad").await;
    assert_eq!(s.unreadable_values(), 1);
    assert_eq!(
        s.save_with_lease("bad", &"healed".into(), &heal)
            .await
            .unwrap(),
        Saved::Stored
    );
    assert_eq!(s.get("bad").await.unwrap().as_deref(), Some("healed"));

    // Invalid options are configuration errors, never transient; arguments are input errors.
    for bad in ["", "a:b"] {
        let r = RedisStore::<String>::connect(&server.url(), opts(bad)).await;
        let err = r.unwrap_err();
        assert!(matches!(err, RedisStoreError::Config(_)), "{err}");
        assert!(!err.is_transient());
    }
    for ttl in [Duration::ZERO, Duration::from_secs(u64::MAX)] {
        let r = s.insert_with_ttl("k", &"v".into(), ttl).await;
        assert!(matches!(r, Err(RedisStoreError::InvalidInput(_))));
    }
    let r =
        RedisStore::<String>::connect(&server.url(), opts("t").default_ttl(Duration::ZERO)).await;
    assert!(matches!(r, Err(RedisStoreError::Config(_))));
    assert_eq!(s.get("k").await.unwrap().as_deref(), Some("ok"));

    // A key holding another type is a typed server error for that call, not a transport error.
    server.cli(&["SET", "t:str", "1"]);
    for err in [
        s.get_or_lease("str").await.unwrap_err(),
        s.get("str").await.unwrap_err(),
    ] {
        match &err {
            RedisStoreError::Server(e) => assert_eq!(e.code(), "WRONGTYPE", "{err}"),
            other => panic!("expected a WRONGTYPE server error, got {other:?}"),
        }
        assert!(!err.is_transient(), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_codec_interoperates() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s: RedisStore<Vec<u32>> =
        RedisStore::connect(&server.url(), RedisOptions::new("j").codec(JsonCodec))
            .await
            .unwrap();
    s.insert("k", &vec![1, 2, 3]).await.unwrap();
    // The stored form: the three-byte header (format 0xA1, value version 0), then the JSON.
    let raw = server.cli(&["--no-raw", "HGET", "j:k", "!v"]);
    assert_eq!(raw, "\"\\xa1\\x00\\x00[1,2,3]\"");
    // Another program writes the same header before its JSON.
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("j:other")
        .arg("!v")
        .arg(b"\xa1\x00\x00[4,5]".as_slice())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(s.get("other").await.unwrap(), Some(vec![4, 5]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_and_marker_memory_are_bounded() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let max_age = Duration::from_secs(7);
    let s: RedisStore<String> = RedisStore::connect(
        &server.url(),
        opts("t")
            .max_lease_age(max_age)
            .default_ttl(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    let pttl = |k: &str| server.cli(&["PTTL", k]).parse::<i64>().unwrap();

    // I5: a flood of purges on absent keys allocates nothing.
    for i in 0..2000 {
        assert!(!s.purge(&format!("absent{i}")).await.unwrap());
    }
    assert_eq!(server.cli(&["DBSIZE"]), "0");

    // Markers on empty keys live at most max_lease_age.
    for i in 0..200 {
        lease(&s, &format!("m{i}")).await;
    }
    for i in 0..200 {
        let p = pttl(&format!("t:m{i}"));
        assert!(p > 0 && p <= 7000, "marker PTTL {p}");
    }
    // Saving sets the value's TTL; a later save never extends entries already there.
    let l = lease(&s, "m0").await;
    s.save_with_lease("m0", &"v".into(), &l).await.unwrap();
    assert!(pttl("t:m0") > 7000);
    s.insert_with_ttl("short", &"v".into(), Duration::from_secs(5))
        .await
        .unwrap();
    let lf = field_lease(&s, "short", "f").await;
    s.save_field_with_lease("short", "f", &"w".into(), &lf)
        .await
        .unwrap();
    let p = pttl("t:short");
    assert!(p > 0 && p <= 5000, "PTTL {p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_after_max_lease_age() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s: RedisStore<String> = RedisStore::connect(
        &server.url(),
        opts("t").max_lease_age(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    s.insert("k", &"v".into()).await.unwrap();
    let l = field_lease(&s, "k", "f").await; // the marker lives as long as the value
    // The condition under test is the lease's age itself; nothing else is awaited here.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        s.save_field_with_lease("k", "f", &"w".into(), &l)
            .await
            .unwrap(),
        Saved::Stale
    );
    let l = field_lease(&s, "k", "f").await;
    assert_eq!(
        s.save_field_with_lease("k", "f", &"w".into(), &l)
            .await
            .unwrap(),
        Saved::Stored
    );
}

async fn subscribe(url: &str, channel: &str) -> redis::aio::PubSub {
    let client = redis::Client::open(url).unwrap();
    let mut ps = client.get_async_pubsub().await.unwrap();
    ps.subscribe(channel).await.unwrap();
    ps
}

async fn next_invalidation(
    stream: &mut (impl futures_util::Stream<Item = redis::Msg> + Unpin),
) -> Invalidation {
    let msg = tokio::time::timeout(TIMEOUT, stream.next())
        .await
        .expect("invalidation within the timeout")
        .expect("stream open");
    Invalidation::parse(msg.get_payload_bytes()).expect("well-formed payload")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fence_publishes_an_invalidation() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server, "t").await;
    let mut ps = subscribe(&server.url(), s.invalidation_channel()).await;
    let mut stream = ps.on_message();
    let key = |k: &str| Invalidation::Key(k.to_string());
    s.purge("p").await.unwrap();
    assert_eq!(next_invalidation(&mut stream).await, key("p"));
    s.insert("i:1", &"v".into()).await.unwrap();
    assert_eq!(next_invalidation(&mut stream).await, key("i:1"));
    s.insert_with_ttl("t", &"v".into(), Duration::from_secs(9))
        .await
        .unwrap();
    assert_eq!(next_invalidation(&mut stream).await, key("t"));
    s.purge_field("pf", "f").await.unwrap();
    assert_eq!(next_invalidation(&mut stream).await, key("pf"));
    s.flush().await.unwrap();
    assert_eq!(next_invalidation(&mut stream).await, Invalidation::Flush);
    // Reads and leased saves publish nothing.
    let l = lease(&s, "r").await;
    s.save_with_lease("r", &"v".into(), &l).await.unwrap();
    s.get("r").await.unwrap();
    s.purge("last").await.unwrap();
    assert_eq!(next_invalidation(&mut stream).await, key("last"));
}

// ---------------------------------------------------------------- faults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_and_restart_rejects_old_leases_and_recovers() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let s = store(&server, "t").await;
    s.insert("kept", &"v".into()).await.unwrap();
    let l = lease(&s, "k").await;
    let lf = field_lease(&s, "kept", "f").await;

    server.kill9();
    // While down: errors, bounded by the timeout, no panic.
    let err = s.get("kept").await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        s.save_with_lease("k", &"v".into(), &l)
            .await
            .unwrap_err()
            .is_transient()
    );

    server.restart();
    // Mint new markers first: the old leases must fail against a *present* marker, not only
    // against a missing one.
    let l2 = recover(|| async {
        match s.get_or_lease("k").await? {
            Lookup::Miss(l) => Ok(l),
            Lookup::Hit(v) => panic!("hit after a restart without persistence: {v:?}"),
        }
    })
    .await;
    let lf2 = field_lease(&s, "kept", "f").await;
    assert_ne!(l2.generation(), l.generation(), "a new marker was minted");
    assert_ne!(lf2.generation(), lf.generation());
    let old = "stale".to_string();
    assert_eq!(
        s.save_with_lease("k", &old, &l).await.unwrap(),
        Saved::Stale,
        "marker lost in the restart: the lease must not revive"
    );
    s.insert("kept", &"v".into()).await.unwrap();
    let lf3 = field_lease(&s, "kept", "f").await;
    assert_eq!(
        s.save_field_with_lease("kept", "f", &"stale".into(), &lf)
            .await
            .unwrap(),
        Saved::Stale
    );
    assert_eq!(
        s.save_field_with_lease("kept", "f", &"new".into(), &lf3)
            .await
            .unwrap(),
        Saved::Stored
    );
    assert_eq!(
        s.save_with_lease("k", &"v2".into(), &l2).await.unwrap(),
        Saved::Stored
    );
    assert_eq!(s.get("k").await.unwrap().as_deref(), Some("v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_falls_back_to_eval() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server, "t").await;
    let l = lease(&s, "a").await;
    let stale = lease(&s, "b").await;
    s.purge("b").await.unwrap();
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
    assert_eq!(
        s.save_with_lease("b", &"v".into(), &stale).await.unwrap(),
        Saved::Stale
    );
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
    assert_eq!(
        s.save_with_lease("a", &"v".into(), &l).await.unwrap(),
        Saved::Stored
    );
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
    assert_eq!(s.get_or_lease("a").await.unwrap(), Lookup::Hit("v".into()));
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
    assert!(s.purge("a").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_rejects_outstanding_leases() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server, "t").await;
    let l = lease(&s, "k").await;
    s.insert("h", &"v".into()).await.unwrap();
    let lf = field_lease(&s, "h", "f").await;
    assert_eq!(server.cli(&["FLUSHALL"]), "OK");
    // New markers are minted first, never equal to the lost ones; the old leases fail against
    // them (not only against an absent marker).
    let l2 = lease(&s, "k").await;
    assert_ne!(l2.generation(), l.generation());
    s.insert("h", &"v".into()).await.unwrap();
    let lf2 = field_lease(&s, "h", "f").await;
    assert_ne!(lf2.generation(), lf.generation());
    assert_eq!(
        s.save_with_lease("k", &"v".into(), &l).await.unwrap(),
        Saved::Stale
    );
    assert_eq!(
        s.save_field_with_lease("h", "f", &"v".into(), &lf)
            .await
            .unwrap(),
        Saved::Stale
    );
    assert_eq!(
        s.save_field_with_lease("h", "f", &"v".into(), &lf2)
            .await
            .unwrap(),
        Saved::Stored
    );
    assert_eq!(
        s.save_with_lease("k", &"v".into(), &l2).await.unwrap(),
        Saved::Stored
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_run_at_maxmemory_with_noeviction() {
    let Some(server) = RedisServer::start_with(&[
        "--maxmemory-policy",
        "noeviction",
        "--enable-debug-command",
        "yes",
    ]) else {
        return;
    };
    let s = store(&server, "t").await;
    s.insert("a", &"v".into()).await.unwrap();
    s.insert("b", &"v".into()).await.unwrap();
    s.insert("c", &"v".into()).await.unwrap();
    for i in 0..50 {
        s.insert(&format!("n{i}"), &"v".into()).await.unwrap();
    }
    let la = field_lease(&s, "a", "f").await;
    let lz = lease(&s, "z").await;
    // Fill memory past the limit.
    server.cli(&["DEBUG", "POPULATE", "20000", "junk", "100"]);
    let used: u64 = server
        .cli(&["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO");
    server.cli(&["CONFIG", "SET", "maxmemory", &(used / 2).to_string()]);
    assert!(
        server.cli(&["SET", "x", "y"]).contains("OOM"),
        "server must be out of memory"
    );

    // Allocating operations fail with a clear error...
    let err = s.get_or_lease("fresh").await.unwrap_err();
    assert!(
        matches!(&err, RedisStoreError::Server(e) if e.code() == "OOM"),
        "{err:?}"
    );
    assert!(
        !err.is_transient(),
        "OOM is the server's answer, not an outage"
    );
    // ...but every purge still runs and fences.
    assert!(s.purge("b").await.unwrap());
    assert!(!s.purge("absent").await.unwrap());
    assert!(!s.purge_field("a", "f").await.unwrap());
    assert!(!s.purge_field("z", "f").await.unwrap());
    assert_eq!(
        s.save_field_with_lease("a", "f", &"v".into(), &la)
            .await
            .unwrap(),
        Saved::Stale
    );
    assert_eq!(
        s.save_with_lease("z", &"v".into(), &lz).await.unwrap(),
        Saved::Stale
    );
    // insert on a present key frees before it allocates.
    s.insert("c", &"w".into()).await.unwrap();
    assert_eq!(s.get("c").await.unwrap().as_deref(), Some("w"));
    s.flush().await.unwrap();
    assert_eq!(s.get("a").await.unwrap(), None);

    // Recovery once memory is available again.
    server.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    let l = lease(&s, "fresh").await;
    assert_eq!(
        s.save_with_lease("fresh", &"v".into(), &l).await.unwrap(),
        Saved::Stored
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_recovers_and_never_accepts_stale() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server, "t").await;
    let writer = store(&server, "t").await;
    let ok = lease(&s, "ok").await;
    let stale = lease(&s, "stale").await;
    writer.purge("stale").await.unwrap();
    let killed: u32 = server
        .cli(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
        .parse()
        .unwrap();
    assert!(killed >= 2, "both stores' connections killed ({killed})");
    let v = "v".to_string();
    let saved = recover(|| s.save_with_lease("stale", &v, &stale)).await;
    assert_eq!(saved, Saved::Stale);
    assert_eq!(
        recover(|| s.save_with_lease("ok", &v, &ok)).await,
        Saved::Stored
    );
    assert!(recover(|| writer.purge("ok")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_server_times_out_then_recovers() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s: RedisStore<String> = RedisStore::connect(
        &server.url(),
        opts("t").command_timeout(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let l = lease(&s, "k").await;
    let stale = lease(&s, "s").await;
    s.purge("s").await.unwrap();
    server.pause();
    // Every call returns an error once its timeout passes; the outer bound only guards the test.
    let bounded = Duration::from_secs(10);
    let r = tokio::time::timeout(bounded, s.get("k"))
        .await
        .expect("no hang");
    assert!(r.unwrap_err().is_transient());
    let r = tokio::time::timeout(bounded, s.save_with_lease("s", &"v".into(), &stale))
        .await
        .expect("no hang");
    assert!(r.unwrap_err().is_transient());
    let r = tokio::time::timeout(bounded, s.flush())
        .await
        .expect("no hang");
    assert!(r.unwrap_err().is_transient());
    server.resume();
    let v = "v".to_string();
    // The timed-out stale save may still have run on the server: it was rejected there too.
    assert_eq!(
        recover(|| s.save_with_lease("s", &v, &stale)).await,
        Saved::Stale
    );
    assert_eq!(s.get("s").await.unwrap(), None);
    // The flush may or may not have run; either way the old lease is fenced or still valid,
    // never an error, and the store works again.
    let saved = s.save_with_lease("k", &v, &l).await.unwrap();
    assert!(matches!(saved, Saved::Stored | Saved::Stale));
    let l = lease(&s, "fresh").await;
    assert_eq!(
        s.save_with_lease("fresh", &v, &l).await.unwrap(),
        Saved::Stored
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_a_bounded_error() {
    let port = support::free_port(); // nothing listens here
    let url = format!("redis://127.0.0.1:{port}/");
    let opts = opts("t").command_timeout(Duration::from_millis(500));
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        RedisStore::<String>::connect(&url, opts),
    )
    .await
    .expect("no hang");
    assert!(r.unwrap_err().is_transient());
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        RedisStore::<String>::connect_cluster(&[&url], RedisOptions::new("t")),
    )
    .await
    .expect("no hang");
    assert!(r.is_err());
}

#[test]
fn public_types_are_send_sync_and_cheap_to_share() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync_clone::<RedisStore<String>>();
    assert_send_sync_clone::<RedisLease>();
    assert_send_sync_clone::<RedisOptions>();
    fn assert_error<T: std::error::Error + Send + Sync + 'static>() {}
    assert_error::<RedisStoreError>();
}

// ---------------------------------------------------------------- torture

/// The version oracle: a "database" of per-key versions; writers bump a version then purge
/// (and now and then bump every version then flush);
/// readers fill the cache through leases from two independent stores. A read that starts after a
/// purge of version `w` completed must never see a version below `w`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_oracle_torture_two_stores() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    torture([store(&server, "o").await, store(&server, "o").await], 4).await;
}

/// The same oracle through Redis Cluster, keys spread over the masters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_oracle_torture_cluster() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    let urls = cluster.urls();
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let a = RedisStore::connect_cluster(&refs, opts("o")).await.unwrap();
    let b = RedisStore::connect_cluster(&refs[1..], opts("o"))
        .await
        .unwrap();
    torture([a, b], 6).await;
}

async fn torture(stores: [RedisStore<String>; 2], keys: usize) {
    const READERS: usize = 6;
    const WRITERS: usize = 2;
    const ROUNDS: usize = 300;
    let db: Arc<Vec<AtomicU64>> = Arc::new((0..keys).map(|_| AtomicU64::new(0)).collect());
    let committed: Arc<Vec<AtomicU64>> = Arc::new((0..keys).map(|_| AtomicU64::new(0)).collect());
    let stale_observations = Arc::new(AtomicUsize::new(0));
    let stored = Arc::new(AtomicUsize::new(0));
    let rejected = Arc::new(AtomicUsize::new(0));

    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (s, db, committed) = (stores[w % 2].clone(), db.clone(), committed.clone());
        tasks.push(tokio::spawn(async move {
            for r in 0..ROUNDS {
                if r % 25 == 24 {
                    // Update every row, then flush: fences every outstanding lease.
                    let versions: Vec<u64> = (0..keys)
                        .map(|k| db[k].fetch_add(1, Ordering::SeqCst) + 1)
                        .collect();
                    s.flush().await.unwrap();
                    for (k, v) in versions.into_iter().enumerate() {
                        committed[k].fetch_max(v, Ordering::SeqCst);
                    }
                    continue;
                }
                let k = (r * 7 + w) % keys;
                let version = db[k].fetch_add(1, Ordering::SeqCst) + 1;
                s.purge(&format!("k{k}")).await.unwrap();
                committed[k].fetch_max(version, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        }));
    }
    for rd in 0..READERS {
        let s = stores[rd % 2].clone();
        let (db, committed) = (db.clone(), committed.clone());
        let (bad, stored, rejected) =
            (stale_observations.clone(), stored.clone(), rejected.clone());
        tasks.push(tokio::spawn(async move {
            for r in 0..ROUNDS {
                let k = (r * 3 + rd) % keys;
                let key = format!("k{k}");
                let floor = committed[k].load(Ordering::SeqCst);
                let seen = match s.get_or_lease(&key).await.unwrap() {
                    Lookup::Hit(v) => v.parse::<u64>().unwrap(),
                    Lookup::Miss(lease) => {
                        let v = db[k].load(Ordering::SeqCst);
                        tokio::task::yield_now().await; // widen the race window
                        match s
                            .save_with_lease(&key, &v.to_string(), &lease)
                            .await
                            .unwrap()
                        {
                            Saved::Stored => stored.fetch_add(1, Ordering::Relaxed),
                            _ => rejected.fetch_add(1, Ordering::Relaxed),
                        };
                        v
                    }
                };
                if seen < floor {
                    bad.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("bounded")
            .unwrap();
    }
    // Final check: after all writers finished, every cached value is the latest version.
    for k in 0..keys {
        let latest = db[k].load(Ordering::SeqCst);
        if let Some(v) = stores[0].get(&format!("k{k}")).await.unwrap() {
            assert_eq!(
                v.parse::<u64>().unwrap(),
                latest,
                "k{k} cached a stale version"
            );
        }
    }
    let (st, rj) = (
        stored.load(Ordering::Relaxed),
        rejected.load(Ordering::Relaxed),
    );
    eprintln!("torture: {st} saves stored, {rj} rejected as stale");
    assert!(st > 0, "the fill path was exercised");
    assert_eq!(
        stale_observations.load(Ordering::SeqCst),
        0,
        "stale observations"
    );
}

// ---------------------------------------------------------------- cluster

#[test]
fn harness_cluster_start_restart() {
    let Some(mut cluster) = RedisCluster::start(3) else {
        return;
    };
    assert_eq!(cluster.urls().len(), 3);
    let i = cluster.node_for_key("probe");
    assert_eq!(cluster.cli(i, &["SET", "probe", "1"]), "OK");
    cluster.restart_node(i);
    assert_eq!(cluster.cli(i, &["GET", "probe"]), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_leases_fields_flush_feed_and_node_restart() {
    let Some(mut cluster) = RedisCluster::start(3) else {
        return;
    };
    let urls = cluster.urls();
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let s: RedisStore<String> = RedisStore::connect_cluster(&refs, opts("c")).await.unwrap();
    assert_eq!(s.node_urls(), urls.as_slice());
    let v = "v".to_string();

    // Keys land on every node; fencing works per key.
    let keys: Vec<String> = (0..60).map(|i| format!("key{i}")).collect();
    let mut nodes = HashSet::new();
    for k in &keys {
        let l = lease(&s, k).await;
        assert_eq!(s.save_with_lease(k, &v, &l).await.unwrap(), Saved::Stored);
        nodes.insert(cluster.node_for_key(&format!("c:{k}")));
    }
    assert_eq!(nodes.len(), 3, "keys spread over every master");
    let l = lease(&s, "p").await;
    assert!(!s.purge("p").await.unwrap());
    assert_eq!(s.save_with_lease("p", &v, &l).await.unwrap(), Saved::Stale);
    let lf = field_lease(&s, "key1", "f").await;
    s.purge_field("key1", "g").await.unwrap();
    assert_eq!(
        s.save_field_with_lease("key1", "f", &v, &lf).await.unwrap(),
        Saved::Stale
    );

    // The feed reaches a subscriber on any node; flush covers every master.
    let mut ps = subscribe(&urls[0], s.invalidation_channel()).await;
    let mut stream = ps.on_message();
    let far = keys
        .iter()
        .find(|k| cluster.node_for_key(&format!("c:{k}")) != 0)
        .unwrap()
        .clone();
    s.purge(&far).await.unwrap();
    assert_eq!(
        next_invalidation(&mut stream).await,
        Invalidation::Key(far.clone())
    );
    let outstanding = lease(&s, "o").await;
    s.flush().await.unwrap();
    assert_eq!(next_invalidation(&mut stream).await, Invalidation::Flush);
    for k in &keys {
        assert_eq!(s.get(k).await.unwrap(), None, "{k} survived the flush");
    }
    assert_eq!(
        s.save_with_lease("o", &v, &outstanding).await.unwrap(),
        Saved::Stale
    );
    drop(stream);

    // A node restart loses its markers: outstanding leases there are rejected, then recovery.
    let i = cluster.node_for_key("c:victim");
    let l = lease(&s, "victim").await;
    cluster.kill9(i);
    // While the node is down: a bounded error for its keys (no panic, no hang).
    let r = tokio::time::timeout(Duration::from_secs(15), s.save_with_lease("victim", &v, &l))
        .await
        .expect("no hang");
    let err = r.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    cluster.restart_node(i);
    let saved = recover(|| s.save_with_lease("victim", &v, &l)).await;
    assert_eq!(saved, Saved::Stale);
    let l = recover(|| async {
        match s.get_or_lease("victim").await? {
            Lookup::Miss(l) => Ok(l),
            Lookup::Hit(_) => panic!("empty after restart"),
        }
    })
    .await;
    assert_eq!(
        s.save_with_lease("victim", &v, &l).await.unwrap(),
        Saved::Stored
    );
}
