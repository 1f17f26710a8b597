//! Hot keys across the fleet (issue 18): one filler per key across processes.
//!
//! The cross-process tests re-execute this binary as children (see `support::process`), each
//! with its own `TieredCache` on one `redis-server` started by the test. The source of truth is
//! a Redis counter (`truth`); every loader call increments `loads` (per round where it matters),
//! so the number of source reads is counted across processes.

mod support;

use leasecache::Cache;
use leasecache::redis::{FillLookup, MaybeStale, RedisOptions, RedisStore, Saved};
use leasecache::tiered::TieredCache;
use redis::AsyncCommands;
use std::time::{Duration, Instant};
use support::RedisServer;
use support::process::{self, Proc};

type Tc = TieredCache<String, u64>;

/// Namespace of every test here.
const NS: &str = "hk";
/// The hot key, and its Redis hash.
const HOT: &str = "hot";
const HOT_HASH: &str = "hk:hot";
/// How long a child may run.
const CHILD_LIMIT: Duration = Duration::from_secs(60);
/// The simulated latency of one source read: long enough that the processes' misses overlap.
const SOURCE_LATENCY: Duration = Duration::from_millis(200);

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child needs {name}"))
}

fn env_u64(name: &str) -> u64 {
    env(name).parse().expect("integer")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn plain(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("plain connection")
}

async fn store(url: &str, lease_age_ms: u64) -> RedisStore<u64> {
    let options = RedisOptions::new(NS).max_lease_age(Duration::from_millis(lease_age_ms));
    RedisStore::connect(url, options).await.expect("connect")
}

async fn tiered(url: &str, lease_age_ms: u64) -> Tc {
    let cache: Tc = TieredCache::builder(Cache::new(1_000), store(url, lease_age_ms).await)
        .member_lease(Duration::from_millis(500))
        .ping_interval(Duration::from_millis(100))
        .ping_timeout(Duration::from_millis(300))
        .build()
        .expect("build");
    tokio::time::timeout(CHILD_LIMIT, cache.feed_confirmed())
        .await
        .expect("feed confirmed");
    cache
}

/// Polls a Redis counter until it reaches `at_least` (a condition with a deadline).
async fn wait_counter(r: &mut redis::aio::MultiplexedConnection, key: &str, at_least: u64) {
    let deadline = Instant::now() + CHILD_LIMIT;
    loop {
        let v: Option<u64> = r.get(key).await.expect("GET");
        if v.unwrap_or(0) >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {key} >= {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Whether a process waits for the fill of the hot key (the waiters flag in its marker field).
async fn someone_waits(r: &mut redis::aio::MultiplexedConnection) -> bool {
    let g: Option<String> = r.hget(HOT_HASH, "!g").await.expect("HGET !g");
    g.is_some_and(|g| g.ends_with("|1"))
}

/// A loader that counts itself in `loads_key`, reads the truth, and takes `SOURCE_LATENCY`.
async fn counted_load(mut r: redis::aio::MultiplexedConnection, loads_key: String) -> u64 {
    let _: u64 = r.incr(&loads_key, 1).await.expect("INCR loads");
    let v: Option<u64> = r.get("truth").await.expect("GET truth");
    tokio::time::sleep(SOURCE_LATENCY).await;
    v.unwrap_or(0)
}

// ---- children ----

/// `rounds` times: wait for the round to open, read the hot key, check it against the round.
fn child_rounds() {
    let (url, rounds) = (env("LC_URL"), env_u64("LC_ROUNDS"));
    runtime().block_on(async move {
        let mut r = plain(&url).await;
        let cache = tiered(&url, 30_000).await;
        let _: u64 = r.incr("ready", 1).await.expect("INCR ready");
        let mut wrong = 0;
        for round in 1..=rounds {
            wait_counter(&mut r, "round", round).await;
            let conn = r.clone();
            let got = cache
                .get_or_load(HOT.to_owned(), |_| async move {
                    Ok::<_, std::convert::Infallible>(
                        counted_load(conn, format!("loads:{round}")).await,
                    )
                })
                .await
                .expect("infallible");
            if got != round {
                eprintln!("round {round}: got {got}");
                wrong += 1;
            }
            let _: u64 = r.incr(format!("arrived:{round}"), 1).await.expect("INCR");
        }
        let s = cache.stats();
        process::report(&[
            ("wrong", wrong),
            ("fill_waits", s.fill_waits),
            ("fill_takeovers", s.fill_takeovers),
            ("loads", s.loads),
        ]);
    });
}

/// A filler that takes the fill and never finishes its load (it is SIGKILLed meanwhile).
fn child_stuck_filler() {
    let url = env("LC_URL");
    runtime().block_on(async move {
        let mut r = plain(&url).await;
        let cache = tiered(&url, env_u64("LC_LEASE_AGE_MS")).await;
        let _ = cache
            .get_or_load(HOT.to_owned(), |_| async move {
                let _: u64 = r.incr("loads", 1).await.expect("INCR loads");
                let _: () = r.set("filling", 1).await.expect("SET filling");
                std::future::pending::<Result<u64, std::convert::Infallible>>().await
            })
            .await;
        unreachable!("the stuck filler's load never ends");
    });
}

/// A filler whose load reads the truth, then holds its value until the test says `release`.
fn child_slow_filler() {
    let url = env("LC_URL");
    runtime().block_on(async move {
        let mut r = plain(&url).await;
        let cache = tiered(&url, 30_000).await;
        let got = cache
            .get_or_load(HOT.to_owned(), |_| async move {
                let _: u64 = r.incr("loads", 1).await.expect("INCR loads");
                let v: Option<u64> = r.get("truth").await.expect("GET truth");
                let _: () = r.set("filling", 1).await.expect("SET filling");
                wait_counter(&mut r, "release", 1).await;
                Ok::<_, std::convert::Infallible>(v.unwrap_or(0))
            })
            .await
            .expect("infallible");
        let s = cache.stats();
        process::report(&[("got", got), ("l2_stale", s.l2_stale_rejected)]);
    });
}

/// A reader that arrives while another process fills: counts its own load, if it makes one.
fn child_waiter() {
    let url = env("LC_URL");
    runtime().block_on(async move {
        let mut r = plain(&url).await;
        let cache = tiered(&url, env_u64("LC_LEASE_AGE_MS")).await;
        let _: u64 = r.incr("started", 1).await.expect("INCR started");
        let conn = r.clone();
        let got = cache
            .get_or_load(HOT.to_owned(), |_| async move {
                Ok::<_, std::convert::Infallible>(counted_load(conn, "loads".into()).await)
            })
            .await
            .expect("infallible");
        let s = cache.stats();
        process::report(&[
            ("got", got),
            ("fill_waits", s.fill_waits),
            ("fill_takeovers", s.fill_takeovers),
            ("loads", s.loads),
        ]);
    });
}

/// Runs this process's role if it is a child; `true` if it was one.
fn run_child() -> bool {
    match process::role().as_deref() {
        None => return false,
        Some("rounds") => child_rounds(),
        Some("stuck_filler") => child_stuck_filler(),
        Some("slow_filler") => child_slow_filler(),
        Some("waiter") => child_waiter(),
        Some(other) => panic!("unknown role {other}"),
    }
    true
}

fn sync_conn(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .expect("url")
        .get_connection()
        .expect("parent connection")
}

fn counter(conn: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("GET")
        .arg(key)
        .query::<Option<u64>>(conn)
        .expect("GET")
        .unwrap_or(0)
}

fn set(conn: &mut redis::Connection, key: &str, value: u64) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query(conn)
        .expect("SET");
}

fn wait_sync(conn: &mut redis::Connection, key: &str, at_least: u64) {
    assert!(
        support::wait_until(CHILD_LIMIT, || counter(conn, key) >= at_least),
        "timed out waiting for {key} >= {at_least}"
    );
}

// ---- cross-process tests ----

#[test]
fn one_load_per_purge_across_three_processes() {
    let test = "one_load_per_purge_across_three_processes";
    if run_child() {
        return;
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    const CHILDREN: u64 = 3;
    const ROUNDS: u64 = 5;
    let env = vec![("LC_URL", url.clone()), ("LC_ROUNDS", ROUNDS.to_string())];
    let children: Vec<Proc> = (0..CHILDREN)
        .map(|_| Proc::spawn(test, "rounds", &env))
        .collect();
    let mut conn = sync_conn(&url);
    wait_sync(&mut conn, "ready", CHILDREN);
    let rt = runtime();
    // The writer: a TieredCache too, so that each purge returns once every child's L1 dropped
    // the key (Strict coherence); the children then all miss.
    let writer = rt.block_on(tiered(&url, 30_000));
    for round in 1..=ROUNDS {
        set(&mut conn, "truth", round);
        rt.block_on(writer.purge(HOT)).expect("purge");
        set(&mut conn, "round", round);
        wait_sync(&mut conn, &format!("arrived:{round}"), CHILDREN);
        assert_eq!(
            counter(&mut conn, &format!("loads:{round}")),
            1,
            "round {round}: source reads across {CHILDREN} processes for one purge"
        );
    }
    let mut waits = 0;
    for child in children {
        let (status, report) = child.finish(CHILD_LIMIT);
        assert!(status.success(), "child failed: {report:?}");
        assert_eq!(
            report["wrong"], 0,
            "a child read a value other than the truth"
        );
        waits += report["fill_waits"];
    }
    // 2 of 3 processes wait in each round: the fills really overlapped.
    assert!(
        waits >= ROUNDS,
        "the children never waited for another's fill: {waits}"
    );
}

#[test]
fn a_sigkilled_filler_is_replaced_after_its_lease() {
    let test = "a_sigkilled_filler_is_replaced_after_its_lease";
    if run_child() {
        return;
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let env = vec![("LC_URL", url.clone()), ("LC_LEASE_AGE_MS", "1000".into())];
    let mut conn = sync_conn(&url);
    set(&mut conn, "truth", 7);
    let mut filler = Proc::spawn(test, "stuck_filler", &env);
    wait_sync(&mut conn, "filling", 1);
    let waiter = Proc::spawn(test, "waiter", &env);
    // The waiter is waiting once it set the waiters flag in the key's marker.
    let rt = runtime();
    let mut r = rt.block_on(plain(&url));
    assert!(
        support::wait_until(CHILD_LIMIT, || rt.block_on(someone_waits(&mut r))),
        "the second process never waited for the fill"
    );
    filler.kill9();
    let (status, report) = waiter.finish(CHILD_LIMIT);
    assert!(status.success(), "waiter failed: {report:?}");
    assert_eq!(report["got"], 7);
    assert_eq!(report["fill_waits"], 1, "{report:?}");
    assert_eq!(
        report["fill_takeovers"], 1,
        "the waiter took the fill over: {report:?}"
    );
    assert_eq!(
        counter(&mut conn, "loads"),
        2,
        "the dead filler's load and the takeover's"
    );
    let cached = rt.block_on(async {
        let s = store(&url, 1000).await;
        s.get(HOT).await.expect("get")
    });
    assert_eq!(cached, Some(7), "the takeover's value is in Redis");
}

#[test]
fn a_purge_during_a_fill_sends_waiters_to_a_fresh_fill() {
    let test = "a_purge_during_a_fill_sends_waiters_to_a_fresh_fill";
    if run_child() {
        return;
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let env = vec![("LC_URL", url.clone()), ("LC_LEASE_AGE_MS", "30000".into())];
    let mut conn = sync_conn(&url);
    set(&mut conn, "truth", 1);
    let filler = Proc::spawn(test, "slow_filler", &env);
    wait_sync(&mut conn, "filling", 1);
    let waiters: Vec<Proc> = (0..2).map(|_| Proc::spawn(test, "waiter", &env)).collect();
    wait_sync(&mut conn, "started", 2);
    let rt = runtime();
    let mut r = rt.block_on(plain(&url));
    assert!(
        support::wait_until(CHILD_LIMIT, || rt.block_on(someone_waits(&mut r))),
        "nobody waited for the fill"
    );
    // The writer: update the source, purge (a bare store: its invalidation still reaches the
    // children's feeds), then let the filler finish with the value it read before the purge.
    set(&mut conn, "truth", 2);
    rt.block_on(async {
        let s = store(&url, 30_000).await;
        s.purge(HOT).await.expect("purge");
    });
    set(&mut conn, "release", 1);
    let (status, f) = filler.finish(CHILD_LIMIT);
    assert!(status.success(), "filler failed: {f:?}");
    assert_eq!(f["got"], 1, "the filler read before the purge");
    assert_eq!(f["l2_stale"], 1, "the purge fenced the filler's save");
    for w in waiters {
        let (status, report) = w.finish(CHILD_LIMIT);
        assert!(status.success(), "waiter failed: {report:?}");
        assert_eq!(
            report["got"], 2,
            "a waiter got the value the purge replaced: {report:?}"
        );
    }
    assert_eq!(
        counter(&mut conn, "loads"),
        2,
        "the fenced fill and exactly one fresh fill"
    );
    let cached = rt.block_on(async { store(&url, 30_000).await.get(HOT).await.expect("get") });
    assert_eq!(cached, Some(2));
}

// ---- the store's fill outcome, in one process ----

#[test]
fn store_hands_the_fill_to_one_caller_and_every_end_releases_it() {
    if run_child() {
        return;
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    support::run_tokio(2, CHILD_LIMIT, async move {
        let s = store(&url, 30_000).await;
        let lease = match s.get_or_fill("k").await.expect("fill") {
            FillLookup::Fill(lease) => lease,
            other => panic!("first caller must fill: {other:?}"),
        };
        // Every other caller is told a fill is in progress, for at most the lease age.
        match s.get_or_fill("k").await.expect("fill") {
            FillLookup::InProgress { lapses_in } => {
                assert!(lapses_in <= Duration::from_secs(30) && lapses_in > Duration::ZERO)
            }
            other => panic!("second caller must wait: {other:?}"),
        }
        // The plain lease API is unchanged: it still hands out a lease.
        assert!(!s.get_or_lease("k").await.expect("lease").is_hit());
        // The filler's save ends the fill: the value is there.
        assert_eq!(
            s.save_with_lease("k", &1, &lease).await.unwrap(),
            Saved::Stored
        );
        assert_eq!(s.get_or_fill("k").await.unwrap(), FillLookup::Hit(1));

        // A purge during a fill fences it and ends it: the next caller fills afresh.
        s.purge("k").await.unwrap();
        let stale = s.get_or_fill("k").await.unwrap();
        let FillLookup::Fill(stale) = stale else {
            panic!("after a purge the next caller fills: {stale:?}")
        };
        s.purge("k").await.unwrap();
        let fresh = s.get_or_fill("k").await.unwrap();
        let FillLookup::Fill(fresh) = fresh else {
            panic!("a purge during a fill ends it: {fresh:?}")
        };
        assert_eq!(
            s.save_with_lease("k", &9, &stale).await.unwrap(),
            Saved::Stale
        );
        assert!(matches!(
            s.get_or_fill("k").await.unwrap(),
            FillLookup::InProgress { .. }
        ));

        // A release hands the fill to the next caller at once; the released lease still saves.
        assert!(s.release_fill("k", &fresh).await.unwrap());
        assert!(!s.release_fill("k", &fresh).await.unwrap(), "released once");
        let FillLookup::Fill(next) = s.get_or_fill("k").await.unwrap() else {
            panic!("a released fill goes to the next caller")
        };
        assert!(
            !s.release_fill("k", &fresh).await.unwrap(),
            "not the filler any more"
        );
        assert_eq!(
            s.save_with_lease("k", &3, &fresh).await.unwrap(),
            Saved::Stored
        );
        assert_eq!(
            s.save_with_lease("k", &4, &next).await.unwrap(),
            Saved::Stored
        );
        assert_eq!(s.get("k").await.unwrap(), Some(4));
    });
}

#[test]
fn store_fill_lapses_with_the_lease_age() {
    if run_child() {
        return;
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    support::run_tokio(2, CHILD_LIMIT, async move {
        let s = store(&url, 300).await;
        let FillLookup::Fill(dead) = s.get_or_fill("k").await.unwrap() else {
            panic!("first caller fills")
        };
        let taken = Instant::now();
        // Poll until the fill lapses (a condition with a deadline; the lapse is the server's).
        let next = loop {
            match s.get_or_fill("k").await.unwrap() {
                FillLookup::Fill(lease) => break lease,
                FillLookup::InProgress { lapses_in } => {
                    assert!(lapses_in <= Duration::from_millis(300));
                    tokio::time::sleep(lapses_in).await;
                }
                other => panic!("{other:?}"),
            }
            assert!(taken.elapsed() < CHILD_LIMIT, "the fill never lapsed");
        };
        // The lapsed filler could not save anyway (its lease is too old); the new one can.
        assert_eq!(
            s.save_with_lease("k", &1, &dead).await.unwrap(),
            Saved::Stale
        );
        assert_eq!(
            s.save_with_lease("k", &2, &next).await.unwrap(),
            Saved::Stored
        );
        assert_eq!(s.get("k").await.unwrap(), Some(2));
    });
}

// ---- refresh ahead of expiry (tiered) ----

/// A tiered cache with refresh ahead of expiry.
async fn refreshing(url: &str, ttl_ms: u64, after_ms: u64) -> Tc {
    let options = RedisOptions::new(NS).default_ttl(Duration::from_millis(ttl_ms));
    let store = RedisStore::connect(url, options).await.expect("connect");
    let cache: Tc = TieredCache::builder(Cache::new(1_000), store)
        .refresh_after(Duration::from_millis(after_ms))
        .build()
        .expect("build");
    tokio::time::timeout(CHILD_LIMIT, cache.feed_confirmed())
        .await
        .expect("feed confirmed");
    cache
}

/// Reads the hot key; a load records whether Redis still held the value when it began.
async fn logged_read(
    c: &Tc,
    truth: std::sync::Arc<std::sync::atomic::AtomicU64>,
    loads: std::sync::Arc<std::sync::Mutex<Vec<bool>>>,
    mut r: redis::aio::MultiplexedConnection,
) -> Result<u64, std::convert::Infallible> {
    c.get_or_load(HOT.to_owned(), move |_| async move {
        let present: bool = r.hexists(HOT_HASH, "!v").await.expect("HEXISTS");
        loads.lock().unwrap().push(present);
        Ok(truth.load(std::sync::atomic::Ordering::SeqCst))
    })
    .await
}

#[test]
fn refresh_ahead_reloads_once_per_fleet_while_readers_keep_the_value() {
    if run_child() {
        return;
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    support::run_tokio(2, CHILD_LIMIT, async move {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
        let a = refreshing(&url, 1_500, 300).await;
        let b = refreshing(&url, 1_500, 300).await;
        let truth = Arc::new(AtomicU64::new(1));
        // Per load: whether Redis still held the value when the load began (a refresh ahead
        // of expiry), or not (a miss).
        let loads = Arc::new(std::sync::Mutex::new(Vec::<bool>::new()));
        let r = plain(&url).await;
        let read = |c| logged_read(c, Arc::clone(&truth), Arc::clone(&loads), r.clone());
        assert_eq!(read(&a).await.unwrap(), 1);
        truth.store(2, SeqCst);
        let deadline = Instant::now() + CHILD_LIMIT;
        let (mut a_new, mut b_new) = (false, false);
        while !(a_new && b_new) {
            assert!(Instant::now() < deadline, "never refreshed");
            for (c, new) in [(&a, &mut a_new), (&b, &mut b_new)] {
                let v = read(c).await.unwrap();
                assert!(v == 1 || v == 2, "{v}");
                *new |= v == 2;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let loads = loads.lock().unwrap().clone();
        assert_eq!(
            loads,
            [false, true],
            "one miss, then one refresh while the value was there"
        );
        let refreshes = a.stats().refreshes + b.stats().refreshes;
        assert_eq!(refreshes, 1);
        assert_eq!(a.l2().get(HOT).await.unwrap(), Some(2));
    });
}

#[test]
fn a_failing_refresh_keeps_the_value_until_its_ttl() {
    if run_child() {
        return;
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    support::run_tokio(2, CHILD_LIMIT, async move {
        let a = refreshing(&url, 800, 200).await;
        let v = a
            .get_or_load(HOT.to_owned(), |_| async { Ok::<u64, String>(1) })
            .await;
        assert_eq!(v, Ok(1));
        let deadline = Instant::now() + CHILD_LIMIT;
        let mut kept_after_failure = 0;
        loop {
            assert!(Instant::now() < deadline, "the entry never expired");
            let failures_before = a.stats().refresh_failures;
            match a
                .get_or_load(HOT.to_owned(), |_| async {
                    Err::<u64, _>("source down".to_owned())
                })
                .await
            {
                Ok(v) => {
                    assert_eq!(v, 1, "only the loaded value exists");
                    if failures_before > 0 {
                        kept_after_failure += 1;
                    }
                }
                // Expired at its TTL: the miss's load failed.
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(a.stats().refresh_failures >= 1, "a refresh was tried");
        assert!(
            kept_after_failure >= 1,
            "the value was served after a failed refresh"
        );
        assert_eq!(a.l2().get(HOT).await.unwrap(), None, "gone at its TTL");
    });
}

#[test]
fn a_purge_during_a_refresh_discards_it() {
    if run_child() {
        return;
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    support::run_tokio(2, CHILD_LIMIT, async move {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
        let a = Arc::new(refreshing(&url, 2_000, 100).await);
        let truth = Arc::new(AtomicU64::new(1));
        let t = Arc::clone(&truth);
        let v = a
            .get_or_load(HOT.to_owned(), |_| async move {
                Ok::<_, std::convert::Infallible>(t.load(SeqCst))
            })
            .await;
        assert_eq!(v, Ok(1));
        truth.store(2, SeqCst);
        let started = Arc::new(tokio::sync::Notify::new());
        let release = Arc::new(tokio::sync::Notify::new());
        let refresher = {
            let (a, truth) = (Arc::clone(&a), Arc::clone(&truth));
            let (started, release) = (Arc::clone(&started), Arc::clone(&release));
            tokio::spawn(async move {
                // Read until a read triggers the refresh; its load reads the source, then
                // holds the value until released.
                loop {
                    let (truth, started, release) = (
                        Arc::clone(&truth),
                        Arc::clone(&started),
                        Arc::clone(&release),
                    );
                    let called = Arc::new(AtomicU64::new(0));
                    let c = Arc::clone(&called);
                    let v = a
                        .get_or_load(HOT.to_owned(), move |_| async move {
                            c.store(1, SeqCst);
                            let v = truth.load(SeqCst);
                            started.notify_one();
                            release.notified().await;
                            Ok::<_, std::convert::Infallible>(v)
                        })
                        .await
                        .unwrap();
                    if called.load(SeqCst) == 1 {
                        return v;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        started.notified().await;
        // The writer: the source changes, then the key is purged, while the refresh loads.
        truth.store(3, SeqCst);
        a.purge(HOT).await.expect("purge");
        release.notify_one();
        assert_eq!(
            refresher.await.unwrap(),
            2,
            "the refreshing caller gets what it loaded"
        );
        let s = a.stats();
        assert_eq!((s.refreshes, s.refresh_failures), (0, 1), "{s:?}");
        assert_eq!(
            a.l2().get(HOT).await.unwrap(),
            None,
            "the fenced refresh stored nothing"
        );
        let t = Arc::clone(&truth);
        let v = a
            .get_or_load(HOT.to_owned(), |_| async move {
                Ok::<_, std::convert::Infallible>(t.load(SeqCst))
            })
            .await;
        assert_eq!(v, Ok(3), "never the value the purge replaced");
    });
}

#[test]
fn a_filler_whose_load_fails_hands_the_fill_over_at_once() {
    if run_child() {
        return;
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    support::run_tokio(2, CHILD_LIMIT, async move {
        use std::sync::Arc;
        // A lease age far past the test's limit: only the release can hand the fill over.
        let a = Arc::new(tiered(&url, 600_000).await);
        let b = Arc::new(tiered(&url, 600_000).await);
        let started = Arc::new(tokio::sync::Notify::new());
        let release = Arc::new(tokio::sync::Notify::new());
        let filler = {
            let (a, started, release) =
                (Arc::clone(&a), Arc::clone(&started), Arc::clone(&release));
            tokio::spawn(async move {
                a.get_or_load(HOT.to_owned(), |_| async move {
                    started.notify_one();
                    release.notified().await;
                    Err::<u64, _>("source down")
                })
                .await
            })
        };
        started.notified().await;
        let waiter = {
            let b = Arc::clone(&b);
            tokio::spawn(async move {
                b.get_or_load(HOT.to_owned(), |_| async { Ok::<u64, &str>(5) })
                    .await
            })
        };
        let mut r = plain(&url).await;
        let deadline = Instant::now() + CHILD_LIMIT;
        while !someone_waits(&mut r).await {
            assert!(Instant::now() < deadline, "b never waited");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        release.notify_one();
        assert_eq!(filler.await.unwrap(), Err("source down"));
        assert_eq!(waiter.await.unwrap(), Ok(5));
        let s = b.stats();
        assert_eq!(
            (s.fill_waits, s.fill_takeovers, s.loads),
            (1, 1, 1),
            "{s:?}"
        );
    });
}

// ---- the stale grace (opt-in) ----

/// A store that keeps the value a purge replaces for `grace_ms`.
async fn grace_store(url: &str, lease_age_ms: u64, grace_ms: u64) -> RedisStore<u64> {
    let options = RedisOptions::new(NS)
        .max_lease_age(Duration::from_millis(lease_age_ms))
        .stale_grace(Duration::from_millis(grace_ms));
    RedisStore::connect(url, options).await.expect("connect")
}

/// The lease of a caller that must become the filler.
async fn take_fill(s: &RedisStore<u64>, key: &str) -> leasecache::redis::RedisLease {
    match s.get_or_fill(key).await.expect("fill") {
        FillLookup::Fill(lease) => lease,
        other => panic!("this caller must fill: {other:?}"),
    }
}

/// What an opted-in caller gets while another fills: the stale value, else `None`.
async fn stale_of(s: &RedisStore<u64>, key: &str) -> Option<(u64, Duration)> {
    match s.get_or_fill_allow_stale(key).await.expect("allow stale") {
        FillLookup::Hit(MaybeStale::Stale {
            value,
            replaced_ago,
        }) => Some((value, replaced_ago)),
        FillLookup::InProgress { .. } => None,
        other => panic!("another caller fills: {other:?}"),
    }
}

#[test]
fn stale_grace_serves_the_last_replaced_value_only_to_callers_that_opt_in() {
    if run_child() {
        return;
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    support::run_tokio(2, CHILD_LIMIT, async move {
        let grace = Duration::from_secs(30);
        let s = grace_store(&url, 30_000, 30_000).await;
        let no_grace = store(&url, 30_000).await;
        s.insert("k", &1).await.unwrap();
        assert_eq!(
            s.get_or_fill_allow_stale("k").await.unwrap(),
            FillLookup::Hit(MaybeStale::Fresh(1))
        );
        assert!(s.purge("k").await.unwrap(), "the value was removed");
        // The grace copy is not data: a second purge removes nothing (and drops the copy).
        // With no filler, an opted-in caller is the filler: it gets the lease, not the value.
        let lease = match s.get_or_fill_allow_stale("k").await.unwrap() {
            FillLookup::Fill(lease) => lease,
            other => panic!("no filler: this caller must fill: {other:?}"),
        };
        // Callers that did not opt in never see the replaced value.
        assert!(matches!(
            s.get_or_fill("k").await.unwrap(),
            FillLookup::InProgress { .. }
        ));
        assert!(!s.get_or_lease("k").await.unwrap().is_hit());
        assert_eq!(s.get("k").await.unwrap(), None);
        // A store without a grace never serves it, even when asked.
        assert_eq!(stale_of(&no_grace, "k").await, None);
        // An opted-in caller gets it, marked stale: it cannot be taken for a fresh value.
        let got = s.get_or_fill_allow_stale("k").await.unwrap();
        let FillLookup::Hit(maybe) = got else {
            panic!("stale value expected: {got:?}")
        };
        assert!(maybe.is_stale());
        assert!(maybe.replaced_ago().is_some_and(|ago| ago < grace));
        assert_eq!(maybe.clone().fresh(), None);
        assert_eq!(maybe.into_value_allowing_stale(), 1);

        // The filler's save ends the grace: the value is current again.
        assert_eq!(
            s.save_with_lease("k", &2, &lease).await.unwrap(),
            Saved::Stored
        );
        assert_eq!(
            s.get_or_fill_allow_stale("k").await.unwrap(),
            FillLookup::Hit(MaybeStale::Fresh(2))
        );
        let mut r = plain(&url).await;
        let copy: bool = r.hexists("hk:k", "!s").await.unwrap();
        assert!(!copy, "a save drops the grace copy");

        // The next purge keeps the value it replaced (2), never an older one (1).
        assert!(s.purge("k").await.unwrap());
        let _filler = take_fill(&s, "k").await;
        assert_eq!(stale_of(&s, "k").await.map(|(v, _)| v), Some(2));

        // An insert replaces the copy with nothing (the key holds a value); its purge keeps 3.
        s.insert("k", &3).await.unwrap();
        assert!(s.purge("k").await.unwrap());
        let _filler = take_fill(&s, "k").await;
        assert_eq!(stale_of(&s, "k").await.map(|(v, _)| v), Some(3));

        // A purge that finds no value (the grace copy is not a value) drops the copy: the
        // latest purge replaced nothing, so nothing is served.
        assert!(
            !s.purge("k").await.unwrap(),
            "the copy does not count as data"
        );
        let _filler = take_fill(&s, "k").await;
        assert_eq!(stale_of(&s, "k").await, None);
        let copy: bool = r.hexists("hk:k", "!s").await.unwrap();
        assert!(!copy);

        // Purges through the floors script (a hold-off) keep the copy the same way.
        let held = RedisStore::<u64>::connect(
            &url,
            RedisOptions::new(NS)
                .max_lease_age(Duration::from_secs(30))
                .stale_grace(grace)
                .hold_off(Duration::from_millis(1)),
        )
        .await
        .unwrap();
        held.insert("h", &7).await.unwrap();
        assert!(held.purge("h").await.unwrap());
        assert!(
            !held.purge("h").await.unwrap(),
            "the copy does not count as data"
        );
        held.insert("h", &8).await.unwrap();
        assert!(held.purge("h").await.unwrap());
        let _filler = take_fill(&held, "h").await;
        assert_eq!(stale_of(&held, "h").await.map(|(v, _)| v), Some(8));
        assert!(matches!(
            held.get_or_fill("h").await.unwrap(),
            FillLookup::InProgress { .. }
        ));
    });
}

#[test]
fn stale_grace_is_never_served_after_it_ends() {
    if run_child() {
        return;
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    support::run_tokio(2, CHILD_LIMIT, async move {
        let grace = Duration::from_millis(300);
        let s = grace_store(&url, 30_000, 300).await;
        s.insert("k", &1).await.unwrap();
        s.purge("k").await.unwrap();
        let _filler = take_fill(&s, "k").await;
        // Poll until the grace ends (the server's clock decides); every serving is within it.
        let deadline = Instant::now() + CHILD_LIMIT;
        let mut served = 0;
        while let Some((value, ago)) = stale_of(&s, "k").await {
            assert_eq!(value, 1);
            assert!(
                ago < grace,
                "served {ago:?} after the purge, grace {grace:?}"
            );
            served += 1;
            assert!(Instant::now() < deadline, "the grace never ended");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(served > 0, "served within the grace at first");
        // Once ended, never again (the filler still fills).
        for _ in 0..5 {
            assert_eq!(stale_of(&s, "k").await, None);
        }
    });
}

#[test]
fn stale_oracle_callers_that_did_not_opt_in_never_read_a_replaced_value() {
    if run_child() {
        return;
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    support::run_tokio(2, CHILD_LIMIT, async move {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
        let s = grace_store(&url, 30_000, 10_000).await;
        // `truth` is the source; `purged` the latest version whose purge has completed.
        let truth = Arc::new(AtomicU64::new(0));
        let purged = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let stale_served = Arc::new(AtomicU64::new(0));
        let mut readers = Vec::new();
        for i in 0..8 {
            let (s, truth, purged, done, stale_served) = (
                s.clone(),
                truth.clone(),
                purged.clone(),
                done.clone(),
                stale_served.clone(),
            );
            readers.push(tokio::spawn(async move {
                let opted_in = i % 2 == 0;
                while !done.load(SeqCst) {
                    let floor = purged.load(SeqCst);
                    let got = if opted_in {
                        s.get_or_fill_allow_stale("k").await.unwrap()
                    } else {
                        match s.get_or_fill("k").await.unwrap() {
                            FillLookup::Hit(v) => FillLookup::Hit(MaybeStale::Fresh(v)),
                            FillLookup::Fill(l) => FillLookup::Fill(l),
                            FillLookup::InProgress { lapses_in } => {
                                FillLookup::InProgress { lapses_in }
                            }
                            other => panic!("{other:?}"),
                        }
                    };
                    match got {
                        FillLookup::Hit(MaybeStale::Fresh(v)) => {
                            assert!(v >= floor, "fresh {v} read after purge {floor}")
                        }
                        FillLookup::Hit(MaybeStale::Stale { value, .. }) => {
                            assert!(opted_in, "a stale value for a caller that did not opt in");
                            // The value the latest purge replaced was loaded after the
                            // purge before it.
                            assert!(value + 1 >= floor, "stale {value} after purge {floor}");
                            stale_served.fetch_add(1, SeqCst);
                        }
                        FillLookup::Fill(lease) => {
                            let v = truth.load(SeqCst);
                            tokio::task::yield_now().await;
                            s.save_with_lease("k", &v, &lease).await.unwrap();
                        }
                        FillLookup::InProgress { .. } => tokio::task::yield_now().await,
                        other => panic!("{other:?}"),
                    }
                }
            }));
        }
        for v in 1..=300 {
            truth.store(v, SeqCst);
            s.purge("k").await.unwrap();
            purged.store(v, SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        done.store(true, SeqCst);
        for r in readers {
            r.await.unwrap();
        }
        eprintln!("stale values served: {}", stale_served.load(SeqCst));
    });
}

#[test]
fn tiered_allow_stale_serves_the_replaced_value_from_redis_without_loading() {
    if run_child() {
        return;
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    support::run_tokio(2, CHILD_LIMIT, async move {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
        let cache: Tc =
            TieredCache::builder(Cache::new(1_000), grace_store(&url, 30_000, 30_000).await)
                .build()
                .expect("build");
        tokio::time::timeout(CHILD_LIMIT, cache.feed_confirmed())
            .await
            .expect("feed confirmed");
        let other = grace_store(&url, 30_000, 30_000).await;
        let loads = Arc::new(AtomicU64::new(0));
        let load = |v: u64| {
            let loads = loads.clone();
            move |_| async move {
                loads.fetch_add(1, SeqCst);
                Ok::<_, std::convert::Infallible>(v)
            }
        };
        let k = HOT.to_owned();
        assert_eq!(
            cache
                .get_or_load_allow_stale(k.clone(), load(1))
                .await
                .unwrap(),
            MaybeStale::Fresh(1)
        );
        // An L1 hit is fresh.
        assert_eq!(
            cache
                .get_or_load_allow_stale(k.clone(), load(9))
                .await
                .unwrap(),
            MaybeStale::Fresh(1)
        );
        cache.purge(&k).await.unwrap();
        // Another process fills: this one gets the replaced value, marked, without loading.
        let lease = take_fill(&other, HOT).await;
        let got = cache
            .get_or_load_allow_stale(k.clone(), load(9))
            .await
            .unwrap();
        assert!(matches!(got, MaybeStale::Stale { value: 1, .. }), "{got:?}");
        assert_eq!(loads.load(SeqCst), 1);
        // Nothing stale reached the L1.
        assert_eq!(cache.l1().get(&k), None);
        assert_eq!(
            other.save_with_lease(HOT, &2, &lease).await.unwrap(),
            Saved::Stored
        );
        assert_eq!(
            cache
                .get_or_load_allow_stale(k.clone(), load(9))
                .await
                .unwrap(),
            MaybeStale::Fresh(2)
        );
        assert_eq!(loads.load(SeqCst), 1, "the fill's value came from Redis");
        // With no filler, the opted-in caller loads (fresh) like get_or_load.
        cache.purge(&k).await.unwrap();
        assert_eq!(
            cache
                .get_or_load_allow_stale(k.clone(), load(3))
                .await
                .unwrap(),
            MaybeStale::Fresh(3)
        );
        assert_eq!(loads.load(SeqCst), 2);
    });
}

#[test]
fn tiered_allow_stale_asks_the_l1_stash_first_while_this_process_reloads() {
    if run_child() {
        return;
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    support::run_tokio(2, CHILD_LIMIT, async move {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
        // The L1 keeps what purges remove; Redis keeps nothing (no stale grace there).
        let l1 = Cache::builder()
            .max_capacity(1_000)
            .stale_grace(Duration::from_secs(30))
            .build();
        let cache: Arc<Tc> = Arc::new(
            TieredCache::builder(l1, store(&url, 30_000).await)
                .build()
                .expect("build"),
        );
        tokio::time::timeout(CHILD_LIMIT, cache.feed_confirmed())
            .await
            .expect("feed confirmed");
        let loads = Arc::new(AtomicU64::new(0));
        let k = HOT.to_owned();
        let first = cache
            .get_or_load_allow_stale(k.clone(), |_| async { Ok::<_, ()>(1) })
            .await;
        assert_eq!(first, Ok(MaybeStale::Fresh(1)));
        // Another process's purge (a direct purge of the store): this process learns it from
        // the feed, once, and its L1 keeps the value the purge removed. (A purge made by this
        // `TieredCache` reaches its own L1 twice, directly and as the feed's echo: the echo
        // finds the key empty and, as any purge that replaces nothing, ends the L1's copy; the
        // writer's process is then served by Redis's own grace, if the store has one.)
        let before = cache.stats().invalidations_received;
        cache.l2().purge(HOT).await.unwrap();
        let deadline = Instant::now() + CHILD_LIMIT;
        while cache.stats().invalidations_received == before {
            assert!(
                Instant::now() < deadline,
                "the purge's invalidation never arrived"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(cache.l1().get(&k), None);
        // A caller of this process reloads, held inside its loader.
        let (entered_tx, entered) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let leader = {
            let (cache, k, loads) = (cache.clone(), k.clone(), loads.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load(k, |_| async move {
                        loads.fetch_add(1, SeqCst);
                        entered_tx.send(()).unwrap();
                        released.await.unwrap();
                        Ok::<_, ()>(2)
                    })
                    .await
            })
        };
        entered.await.unwrap();
        let got = cache
            .get_or_load_allow_stale(k.clone(), |_| async { Err::<u64, ()>(()) })
            .await;
        assert!(
            matches!(got, Ok(MaybeStale::Stale { value: 1, .. })),
            "{got:?}"
        );
        assert_eq!(cache.l1().get(&k), None, "nothing stale reached the L1");
        let stats = cache.stats();
        assert_eq!((stats.stale_served, stats.l1.stale_served), (1, 1));
        release.send(()).unwrap();
        assert_eq!(leader.await.unwrap(), Ok(2));
        let after = cache
            .get_or_load_allow_stale(k.clone(), |_| async { Err::<u64, ()>(()) })
            .await;
        assert_eq!(after, Ok(MaybeStale::Fresh(2)));
        assert_eq!(loads.load(SeqCst), 1);
    });
}

// ---- refresh ahead of expiry, for direct users of the store ----

#[test]
fn store_refresh_lease_goes_to_one_caller_of_a_due_key_and_a_purge_fences_it() {
    if run_child() {
        return;
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    support::run_tokio(2, CHILD_LIMIT, async move {
        let s = RedisStore::<u64>::connect(
            &url,
            RedisOptions::new(NS)
                .default_ttl(Duration::from_secs(60))
                .max_lease_age(Duration::from_secs(30)),
        )
        .await
        .unwrap();
        let mut r = plain(&url).await;
        s.insert_with_ttl("k", &1, Duration::from_secs(20))
            .await
            .unwrap();
        // 20 s left: not due within 1 s.
        assert!(
            s.refresh_lease("k", Duration::from_secs(1))
                .await
                .unwrap()
                .is_none()
        );
        // Due within 30 s: one caller gets the lease, the others do not.
        let lease = s.refresh_lease("k", Duration::from_secs(30)).await.unwrap();
        let lease = lease.expect("due: this caller refreshes");
        assert!(
            s.refresh_lease("k", Duration::from_secs(30))
                .await
                .unwrap()
                .is_none()
        );
        // Readers keep the current value meanwhile.
        assert_eq!(s.get("k").await.unwrap(), Some(1));
        assert_eq!(s.get_or_fill("k").await.unwrap(), FillLookup::Hit(1));
        // The refreshed value lands and the TTL starts again (the default 60 s, past the 20 s
        // the key had).
        assert_eq!(
            s.save_refreshed("k", &2, &lease).await.unwrap(),
            Saved::Stored
        );
        assert_eq!(s.get("k").await.unwrap(), Some(2));
        let pttl: i64 = r.pttl("hk:k").await.unwrap();
        assert!(pttl > 20_000, "TTL restarted: {pttl} ms");

        // A failed reload gives the refresh up: the next due caller gets it, the value stays.
        let lease = s
            .refresh_lease("k", Duration::from_secs(120))
            .await
            .unwrap()
            .unwrap();
        assert!(s.release_fill("k", &lease).await.unwrap());
        assert_eq!(s.get("k").await.unwrap(), Some(2));
        let lease = s
            .refresh_lease("k", Duration::from_secs(120))
            .await
            .unwrap();
        let lease = lease.expect("the released refresh goes to the next caller");

        // A purge during the refresh fences it: the refreshed value is stored nowhere.
        s.purge("k").await.unwrap();
        assert_eq!(
            s.save_refreshed("k", &3, &lease).await.unwrap(),
            Saved::Stale
        );
        assert_eq!(s.get("k").await.unwrap(), None);
    });
}

/// The L1's stash serves an opt-in caller only while Redis has no value for the key: an insert
/// (which reaches every L1 as an invalidation, as a purge does, and so feeds its stash) or a
/// purge followed by another process's refill must not let an opt-in caller get the replaced
/// value while Redis holds the newer one. The leader of this process is held after its Redis
/// hit, before its L1 fill, so the L1 still misses when the opt-in caller asks.
#[cfg(feature = "__test-hooks")]
#[test]
fn tiered_allow_stale_never_serves_the_l1_stash_while_redis_holds_a_newer_value() {
    use leasecache::tiered::FillPoint;
    use std::future::Future;
    use std::sync::{Arc, Mutex};
    type Hold = Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::sync::oneshot::Receiver<()>,
    )>;
    if run_child() {
        return;
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    support::run_tokio(2, CHILD_LIMIT, async move {
        let l1 = Cache::builder()
            .max_capacity(1_000)
            .stale_grace(Duration::from_secs(30))
            .build();
        let hold: Arc<Mutex<Hold>> = Arc::new(Mutex::new(None));
        let hook_hold = hold.clone();
        let cache: Arc<Tc> = Arc::new(
            TieredCache::builder(l1, store(&url, 30_000).await)
                .test_hook_before_l1_fill(move |point, _key| {
                    let held = hook_hold.lock().unwrap().take();
                    async move {
                        if let Some((entered, release)) = held {
                            assert_eq!(point, FillPoint::RedisHit);
                            entered.send(()).unwrap();
                            release.await.unwrap();
                        }
                    }
                })
                .build()
                .expect("build"),
        );
        tokio::time::timeout(CHILD_LIMIT, cache.feed_confirmed())
            .await
            .expect("feed confirmed");
        let k = HOT.to_owned();
        let other = store(&url, 30_000).await;
        let wait_invalidation = |before: u64| {
            let cache = cache.clone();
            async move {
                let deadline = Instant::now() + CHILD_LIMIT;
                while cache.stats().invalidations_received == before {
                    assert!(Instant::now() < deadline, "the invalidation never arrived");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        assert_eq!(
            cache
                .get_or_load(k.clone(), |_| async { Ok::<_, ()>(1) })
                .await,
            Ok(1)
        );
        // Round 1: another process inserts 3. Round 2: it purges, then refills with 4.
        for (round, newer) in [(1, 3u64), (2, 4)] {
            let before = cache.stats().invalidations_received;
            if round == 1 {
                other.insert(HOT, &newer).await.unwrap();
            } else {
                other.purge(HOT).await.unwrap();
                wait_invalidation(before).await;
                let FillLookup::Fill(lease) = other.get_or_fill(HOT).await.unwrap() else {
                    panic!("the purged key is a miss");
                };
                let saved = other.save_with_lease(HOT, &newer, &lease).await.unwrap();
                assert_eq!(saved, Saved::Stored);
            }
            wait_invalidation(before).await;
            let (entered_tx, entered) = tokio::sync::oneshot::channel();
            let (release, released) = tokio::sync::oneshot::channel();
            *hold.lock().unwrap() = Some((entered_tx, released));
            let leader = {
                let (cache, k) = (cache.clone(), k.clone());
                tokio::spawn(
                    async move { cache.get_or_load(k, |_| async { Ok::<_, ()>(99) }).await },
                )
            };
            entered.await.unwrap();
            assert_eq!(other.get(HOT).await.unwrap(), Some(newer));
            // One poll while the leader is held: the L1 and its stash are asked before the
            // first await, so a stash value would be returned by this poll.
            let read = cache.get_or_load_allow_stale(k.clone(), |_| async { Err::<u64, ()>(()) });
            let mut read = std::pin::pin!(read);
            let first =
                std::future::poll_fn(|cx| std::task::Poll::Ready(read.as_mut().poll(cx))).await;
            assert!(
                first.is_pending(),
                "round {round}: a replaced value was served while Redis held {newer}: {first:?}"
            );
            release.send(()).unwrap();
            assert_eq!(leader.await.unwrap(), Ok(newer));
            assert_eq!(read.await, Ok(MaybeStale::Fresh(newer)), "round {round}");
        }
        assert_eq!(cache.stats().stale_served, 0);
    });
}
