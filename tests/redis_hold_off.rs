//! Hold-offs, source positions and write intents on the Redis tier, against a real server started
//! per test. Hold-offs run on the server's clock, so the windows here are short and real; an
//! intent left by a crashed writer is left by a real process that aborts.

mod support;

use std::time::Duration;

use leasecache::Lookup;
use leasecache::redis::{RedisLease, RedisOptions, RedisStore, Saved};
use support::RedisServer;

const TIMEOUT: Duration = Duration::from_secs(2);
const WINDOW: Duration = Duration::from_millis(400);

async fn store_with(server: &RedisServer, options: RedisOptions) -> RedisStore<String> {
    RedisStore::connect(&server.url(), options.command_timeout(TIMEOUT))
        .await
        .expect("connect")
}

async fn lease(store: &RedisStore<String>, key: &str) -> RedisLease {
    match store.get_or_lease(key).await.expect("get_or_lease") {
        Lookup::Miss(l) => l,
        Lookup::Hit(v) => panic!("expected a miss on {key}, got {v:?}"),
    }
}

/// The outcome of a save under a lease taken now.
async fn fresh_save(store: &RedisStore<String>, key: &str) -> Saved {
    let l = lease(store, key).await;
    store.save_with_lease(key, &"v".into(), &l).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_off_refuses_leases_issued_inside_it_even_after_it_ends() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store_with(&server, RedisOptions::new("h")).await;
    s.insert("k", &"old".into()).await.unwrap();
    assert!(s.purge_with_hold_off("k", WINDOW).await.unwrap());
    let inside = lease(&s, "k").await;
    assert_eq!(fresh_save(&s, "k").await, Saved::Stale);
    // The floors keep the hash alive at least as long as the hold-off.
    let pttl: i64 = server.cli(&["PTTL", "h:k"]).parse().unwrap();
    assert!(pttl >= 300, "the hold-off's hash expires in {pttl} ms");
    tokio::time::sleep(WINDOW).await; // the window is server time: let it pass
    let late = s.save_with_lease("k", &"lagging".into(), &inside).await;
    assert_eq!(
        late.unwrap(),
        Saved::Stale,
        "a lease from inside the window landed"
    );
    assert_eq!(fresh_save(&s, "k").await, Saved::Stored);
    assert_eq!(s.get("k").await.unwrap().as_deref(), Some("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_hold_off_covers_purge_and_insert_and_no_write_lowers_it() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store_with(&server, RedisOptions::new("d").hold_off(WINDOW)).await;
    assert!(!s.purge("a").await.unwrap(), "nothing was cached");
    assert_eq!(fresh_save(&s, "a").await, Saved::Stale);
    s.insert("b", &"new".into()).await.unwrap();
    assert_eq!(s.get("b").await.unwrap().as_deref(), Some("new"));
    assert!(
        s.purge("b").await.unwrap(),
        "the insert's value was removed"
    );
    assert_eq!(fresh_save(&s, "b").await, Saved::Stale);

    // A long hold-off, then a shorter one and writes without one: none may lower it.
    let plain = store_with(&server, RedisOptions::new("d")).await;
    plain
        .purge_with_hold_off("c", Duration::from_secs(30))
        .await
        .unwrap();
    plain
        .purge_with_hold_off("c", Duration::from_millis(1))
        .await
        .unwrap();
    plain.purge("c").await.unwrap();
    plain.insert("c", &"x".into()).await.unwrap();
    plain.purge("c").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        fresh_save(&plain, "c").await,
        Saved::Stale,
        "a floor was lowered"
    );

    tokio::time::sleep(WINDOW).await;
    assert_eq!(fresh_save(&s, "a").await, Saved::Stored);
    assert_eq!(fresh_save(&s, "b").await, Saved::Stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_older_than_the_floor_are_refused_exactly_and_never_lowered() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store_with(&server, RedisOptions::new("p")).await;
    // Positions near 2^64: Lua's doubles could not tell these apart; the scripts compare digits.
    let top = u64::MAX - 1;
    s.insert("k", &"old".into()).await.unwrap();
    assert!(s.purge_as_of("k", top).await.unwrap());
    let l = lease(&s, "k").await;
    let save = |p| {
        let (s, l) = (&s, &l);
        async move { s.save_as_of("k", &format!("at {p}"), l, p).await.unwrap() }
    };
    assert_eq!(save(top - 1).await, Saved::Stale);
    assert_eq!(save(top).await, Saved::Stored);
    assert_eq!(save(u64::MAX).await, Saved::Stored);
    // Lower positions and plain writes keep the floor.
    s.purge_as_of("k", 5).await.unwrap();
    s.purge("k").await.unwrap();
    s.insert("k", &"x".into()).await.unwrap();
    s.purge("k").await.unwrap();
    let l = lease(&s, "k").await;
    let stale = s.save_as_of("k", &"y".into(), &l, top - 1).await.unwrap();
    assert_eq!(stale, Saved::Stale, "the floor was lowered");
    // A save that names no position is judged by its lease alone.
    assert_eq!(
        s.save_with_lease("k", &"z".into(), &l).await.unwrap(),
        Saved::Stored
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intent_refuses_saves_until_it_ends_and_fences_at_its_end() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store_with(&server, RedisOptions::new("i")).await;
    s.insert("k", &"before".into()).await.unwrap();
    let before = lease(&s, "other").await; // an unrelated key is untouched throughout
    let intent = s.begin_write("k").await.unwrap();
    assert_eq!(intent.key(), "k");
    assert_eq!(
        s.get("k").await.unwrap(),
        None,
        "the beginning fences like a purge"
    );
    let inside = lease(&s, "k").await;
    assert_eq!(
        s.save_with_lease("k", &"old row".into(), &inside)
            .await
            .unwrap(),
        Saved::Stale
    );
    assert!(!intent.commit_as_of(9).await.unwrap());
    assert_eq!(
        s.save_with_lease("k", &"old row".into(), &inside)
            .await
            .unwrap(),
        Saved::Stale,
        "the end did not fence"
    );
    let after = lease(&s, "k").await;
    assert_eq!(
        s.save_as_of("k", &"x".into(), &after, 8).await.unwrap(),
        Saved::Stale
    );
    assert_eq!(
        s.save_as_of("k", &"new row".into(), &after, 9)
            .await
            .unwrap(),
        Saved::Stored
    );
    assert_eq!(
        s.save_with_lease("other", &"o".into(), &before)
            .await
            .unwrap(),
        Saved::Stored
    );
    // Nested intents: the key stays refused until the last one ends; a rollback ends one.
    let a = s.begin_write("n").await.unwrap();
    let b = s.begin_write("n").await.unwrap();
    a.rollback().await.unwrap();
    assert_eq!(fresh_save(&s, "n").await, Saved::Stale);
    b.commit().await.unwrap();
    assert_eq!(fresh_save(&s, "n").await, Saved::Stored);
}

/// The crashing writer: opens an intent and aborts. Runs only as the child process of the test
/// below (it does nothing when the test harness runs it by itself).
#[tokio::test(flavor = "current_thread")]
async fn child_writer_that_crashes_inside_an_intent() {
    let Ok(url) = std::env::var("LEASECACHE_TEST_CHILD_REDIS") else {
        return;
    };
    let options = RedisOptions::new("c")
        .command_timeout(TIMEOUT)
        .intent_ttl(Duration::from_millis(800));
    let s: RedisStore<String> = RedisStore::connect(&url, options).await.unwrap();
    let intent = s.begin_write("k").await.unwrap();
    std::mem::forget(intent);
    std::process::abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intent_left_by_a_crashed_process_expires() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store_with(&server, RedisOptions::new("c")).await;
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writer_that_crashes_inside_an_intent"])
        .args(["--test-threads", "1"])
        .env("LEASECACHE_TEST_CHILD_REDIS", server.url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child writer was meant to crash");
    let floors = server.cli(&["HGET", "c:k", "!f"]);
    assert!(
        floors.contains(":1:"),
        "the crashed writer left no open intent: {floors:?}"
    );
    let inside = lease(&s, "k").await;
    assert_eq!(
        fresh_save(&s, "k").await,
        Saved::Stale,
        "the intent is open"
    );
    // Wait (bounded) for the intent's deadline on the server's clock.
    let mut landed = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if fresh_save(&s, "k").await == Saved::Stored {
            landed = true;
            break;
        }
    }
    assert!(landed, "the crashed writer's intent never expired");
    // A lease issued while the intent was open stays refused: its read may have been inside
    // the crashed transaction.
    s.purge("k").await.unwrap();
    let l = lease(&s, "k").await;
    assert_eq!(
        s.save_with_lease("k", &"old".into(), &inside)
            .await
            .unwrap(),
        Saved::Stale
    );
    assert_eq!(
        s.save_with_lease("k", &"new".into(), &l).await.unwrap(),
        Saved::Stored
    );
}
