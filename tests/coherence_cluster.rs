//! Fleet coherence on a Redis Cluster (Redis 7 and later: sharded pub/sub). Several
//! `TieredCache` instances in one process, each with its own cluster connection and feed.
//!
//! The oracle (as in `tests/coherence.rs`, in process): the source of truth is a counter per key.
//! The writer bumps it, purges the key through its `TieredCache` and, only after the purge
//! returned `Ok`, records the version as *done*. A reader loads `done` first, then reads the key
//! through its own `TieredCache` (whose loader reads the counter): that read began after the
//! purge of version `done` returned, so a value below it is a stale read. Strict: none.

mod support;

use leasecache::Cache;
use leasecache::redis::{RedisOptions, RedisStore};
use leasecache::tiered::{Coherence, TieredCache};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{RedisCluster, wait_for};

type Tc = TieredCache<String, u64>;

/// Keys the writer cycles through (few, so that readers hit their L1 between purges).
const KEYS: usize = 8;
const WAIT: Duration = Duration::from_secs(20);

fn run<F: Future<Output = ()> + Send + 'static>(test: F) {
    support::run_tokio(2, Duration::from_secs(120), test);
}

/// The cluster's coherence keys and channel for namespace `ns` share this hash tag.
fn coherence_channel(ns: &str) -> String {
    format!("leasecache:{{{ns}}}:coherence")
}

async fn instance(urls: &[String], ns: &str, mode: Coherence) -> Tc {
    instance_with(urls, ns, mode, false).await
}

/// `classic`: classic pub/sub even on Redis 7+ (a test hook: the path of older servers).
async fn instance_with(urls: &[String], ns: &str, mode: Coherence, classic: bool) -> Tc {
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let store = if urls.len() == 1 {
        RedisStore::connect(urls[0], RedisOptions::new(ns)).await
    } else {
        RedisStore::connect_cluster(&urls, RedisOptions::new(ns)).await
    }
    .expect("connect");
    let mut builder = TieredCache::builder(Cache::new(1_000), store);
    if classic {
        builder = builder.test_hook_classic_pubsub();
    }
    let cache: Tc = builder
        .coherence(mode)
        .member_lease(Duration::from_millis(1_000))
        .ping_interval(Duration::from_millis(100))
        .ping_timeout(Duration::from_millis(300))
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .build()
        .expect("build");
    tokio::time::timeout(WAIT, cache.feed_confirmed())
        .await
        .expect("feed confirmed");
    cache
}

/// The source of truth and the versions whose purge returned.
struct Oracle {
    keys: Vec<String>,
    truth: Vec<AtomicU64>,
    done: Vec<AtomicU64>,
    /// Per key: when the purge of each version returned `Ok`.
    returned: Vec<Mutex<BTreeMap<u64, Instant>>>,
    /// The oldest stale read: microseconds since the purge that replaced its value returned.
    max_age_us: AtomicU64,
    /// How long each purge that returned `Ok` took, in microseconds (printed, never asserted).
    latencies_us: Mutex<Vec<u64>>,
    purged: AtomicU64,
    failed: AtomicU64,
    stale: AtomicU64,
    reads: AtomicU64,
    stop: AtomicBool,
}

impl Oracle {
    /// The median purge latency in microseconds.
    fn purge_p50_us(&self) -> u64 {
        let mut l = self.latencies_us.lock().expect("latencies").clone();
        l.sort_unstable();
        l.get(l.len() / 2).copied().unwrap_or(0)
    }

    fn new(keys: Vec<String>) -> Self {
        let zeros = || keys.iter().map(|_| AtomicU64::new(0)).collect();
        Self {
            truth: zeros(),
            done: zeros(),
            returned: keys.iter().map(|_| Mutex::default()).collect(),
            max_age_us: AtomicU64::new(0),
            latencies_us: Mutex::default(),
            keys,
            purged: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }
}

/// `k0`, `k1`, ...: the default keys.
fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("k{i}")).collect()
}

/// Purges through `w`, round robin over the keys, until `purges` returned `Ok` (a failed purge
/// is retried after a pause: during a failover the slot's master is unreachable for a while).
async fn writer(w: Tc, oracle: Arc<Oracle>, purges: u64) -> Tc {
    let mut n = 0usize;
    while oracle.purged.load(Ordering::SeqCst) < purges {
        let i = n % oracle.keys.len();
        n += 1;
        // SeqCst throughout the oracle: a reader's view of `done` must order its read after
        // the purge that `done` records.
        let v = oracle.truth[i].fetch_add(1, Ordering::SeqCst) + 1;
        let started = Instant::now();
        match w.purge(&oracle.keys[i]).await {
            Ok(_) => {
                let took = u64::try_from(started.elapsed().as_micros()).expect("fits");
                oracle.latencies_us.lock().expect("latencies").push(took);
                oracle.returned[i]
                    .lock()
                    .expect("returned")
                    .insert(v, Instant::now());
                oracle.done[i].fetch_max(v, Ordering::SeqCst);
                oracle.purged.fetch_add(1, Ordering::SeqCst);
            }
            // A purge that failed guarantees nothing; it is not recorded as done.
            Err(_) => {
                oracle.failed.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    w
}

/// Reads every key in turn through `r` until told to stop; counts stale reads.
async fn reader(r: Tc, oracle: Arc<Oracle>) -> Tc {
    let mut i = 0;
    while !oracle.stop.load(Ordering::SeqCst) {
        let done = oracle.done[i].load(Ordering::SeqCst);
        let began = Instant::now();
        let o = Arc::clone(&oracle);
        let got = r
            .get_or_load(oracle.keys[i].clone(), move |_| async move {
                Ok::<_, ()>(o.truth[i].load(Ordering::SeqCst))
            })
            .await
            .expect("loader never fails");
        if got < done {
            oracle.stale.fetch_add(1, Ordering::SeqCst);
            // Its age: since the first purge that returned after replacing `got`.
            let replaced = oracle.returned[i]
                .lock()
                .expect("returned")
                .range(got + 1..)
                .next()
                .map(|(_, &at)| at)
                .expect("the replacing purge returned");
            let age =
                u64::try_from(began.saturating_duration_since(replaced).as_micros()).expect("fits");
            oracle.max_age_us.fetch_max(age, Ordering::SeqCst);
        }
        oracle.reads.fetch_add(1, Ordering::Relaxed);
        i = (i + 1) % oracle.keys.len();
        tokio::task::yield_now().await;
    }
    r
}

/// Runs one writer (`purges` purges) and `readers` readers on namespace `ns`; `during` runs on a
/// blocking thread once half the purges returned. Returns the oracle and the readers.
async fn fleet(
    urls: Vec<String>,
    ns: &'static str,
    (mode, classic): (Coherence, bool),
    keys: Vec<String>,
    readers: usize,
    purges: u64,
    during: impl FnOnce() + Send + 'static,
) -> (Arc<Oracle>, Vec<Tc>) {
    let oracle = Arc::new(Oracle::new(keys));
    let w = instance_with(&urls, ns, mode, classic).await;
    let mut rs = Vec::new();
    for _ in 0..readers {
        rs.push(instance_with(&urls, ns, mode, classic).await);
    }
    let reading: Vec<_> = rs
        .into_iter()
        .map(|r| tokio::spawn(reader(r, Arc::clone(&oracle))))
        .collect();
    let writing = tokio::spawn(writer(w, Arc::clone(&oracle), purges));
    let o = Arc::clone(&oracle);
    wait_for("half the purges", || {
        o.purged.load(Ordering::SeqCst) + o.failed.load(Ordering::SeqCst) >= purges / 2
    })
    .await;
    tokio::task::spawn_blocking(during)
        .await
        .expect("fault injection");
    let w = tokio::time::timeout(Duration::from_secs(90), writing)
        .await
        .expect("writer finished")
        .expect("writer task");
    oracle.stop.store(true, Ordering::SeqCst);
    let mut rs = Vec::new();
    for r in reading {
        rs.push(r.await.expect("reader task"));
    }
    drop(w);
    (oracle, rs)
}

/// The index of the node serving the coherence slot of `ns`.
fn coherence_node(cluster: &RedisCluster, ns: &str) -> usize {
    cluster.node_for_key(&format!("leasecache:{{{ns}}}:seq"))
}

/// `PUBSUB SHARDNUMSUB <channel>` on node `i`: how many connections of that node subscribe.
fn shard_subscribers(cluster: &RedisCluster, i: usize, channel: &str) -> u64 {
    let out = cluster.cli(i, &["PUBSUB", "SHARDNUMSUB", channel]);
    out.lines()
        .nth(1)
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Sum over nodes of the pub/sub messages sent over the cluster bus
/// (`cluster_stats_messages_publish_sent`, which classic PUBLISH increments once per peer).
fn bus_publishes(cluster: &RedisCluster) -> u64 {
    (0..cluster.len())
        .map(|i| {
            let info = cluster.cli(i, &["CLUSTER", "INFO"]);
            info.lines()
                .find_map(|l| l.strip_prefix("cluster_stats_messages_publish_sent:"))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// Strict mode on a 3-master cluster: every instance subscribes with SSUBSCRIBE on the master of
/// the coherence slot (and only there), and no read that begins after a purge returned gets the
/// value it replaced, over 1,000 purges.
#[test]
fn sharded_strict_purges_no_stale_read() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    let cluster = Arc::new(cluster);
    let urls = cluster.urls();
    let c = Arc::clone(&cluster);
    run(async move {
        let ns = "shard";
        let channel = coherence_channel(ns);
        let owner = coherence_node(&c, ns);
        let check = Arc::clone(&c);
        let (oracle, readers) = fleet(
            urls,
            ns,
            (Coherence::Strict, false),
            keys(),
            3,
            1_000,
            move || {
                for i in 0..check.len() {
                    let expected = if i == owner { 4 } else { 0 };
                    assert_eq!(
                        shard_subscribers(&check, i, &channel),
                        expected,
                        "node {i}: the writer and 3 readers subscribe on the slot's master only"
                    );
                }
            },
        )
        .await;
        let stale = oracle.stale.load(Ordering::SeqCst);
        let purged = oracle.purged.load(Ordering::SeqCst);
        let hits: u64 = readers.iter().map(|r| r.stats().l1_hits).sum();
        let acked: u64 = readers
            .iter()
            .map(|r| r.stats().invalidations_received)
            .sum();
        eprintln!(
            "sharded: purges ok {purged} (p50 {} us), failed {}, reads {}, L1 hits {hits}, stale {stale}",
            oracle.purge_p50_us(),
            oracle.failed.load(Ordering::SeqCst),
            oracle.reads.load(Ordering::SeqCst)
        );
        assert_eq!(
            stale, 0,
            "Strict: a read after a returned purge got the old value"
        );
        assert_eq!(purged, 1_000, "no purge failed on a healthy cluster");
        assert!(
            hits > 0,
            "the readers served from their L1s (else the test proves nothing)"
        );
        assert!(
            acked >= 3 * 1_000,
            "each reader applied every sequenced invalidation: {acked}"
        );
    });
}

/// Tiered purges travel by SPUBLISH on the coherence slot's shard: nothing crosses the cluster
/// bus (with no replicas, a shard message has nobody to go to), and a plain classic subscriber
/// on another node receives nothing. A bare `RedisStore` purge still broadcasts (the control).
#[test]
fn tiered_purges_are_not_broadcast() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    let urls = cluster.urls();
    let ns = "quiet";
    let owner = coherence_node(&cluster, ns);
    let other = (owner + 1) % cluster.len();
    let other_url = urls[other].clone();
    let cluster = Arc::new(cluster);
    let c = Arc::clone(&cluster);
    run(async move {
        let a = instance(&urls, ns, Coherence::Strict).await;
        let b = instance(&urls, ns, Coherence::Strict).await;
        // A plain subscriber on a node that does not sequence: both channels, classic.
        let client = redis::Client::open(other_url.as_str()).expect("url");
        let mut ps = client.get_async_pubsub().await.expect("pubsub");
        let store_channel = a.l2().invalidation_channel().to_owned();
        ps.subscribe(&[store_channel.as_str(), coherence_channel(ns).as_str()])
            .await
            .expect("subscribe");
        let mut messages = ps.into_on_message();

        b.get_or_load("x".to_owned(), |_| async { Ok::<_, ()>(1) })
            .await
            .expect("load");
        let before = bus_publishes(&c);
        for _ in 0..50 {
            a.purge("x").await.expect("purge");
        }
        wait_for("b applied all 50", || {
            b.stats().invalidations_received >= 50
        })
        .await;
        assert_eq!(b.l1().get("x"), None, "b's L1 dropped x");
        assert_eq!(
            bus_publishes(&c),
            before,
            "a tiered purge sends nothing over the cluster bus"
        );

        // The control: a bare store purge broadcasts, and reaches the plain subscriber.
        a.l2().purge("x").await.expect("bare purge");
        let first = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut messages))
            .await
            .expect("the bare purge's message arrives")
            .expect("stream open");
        assert_eq!(first.get_channel_name(), store_channel);
        assert_eq!(
            first.get_payload_bytes(),
            b"Kx",
            "the first message this subscriber saw is the bare purge's: no tiered purge reached it"
        );
        assert!(
            bus_publishes(&c) > before,
            "the bare purge went over the bus"
        );
    });
}

/// The coherence slot migrates to another master while purges run (CLUSTER SETSLOT IMPORTING /
/// MIGRATING, MIGRATE of its keys, SETSLOT NODE): the old master unsubscribes the feeds
/// (`sunsubscribe`), which flush, find the new master and subscribe there; no read after a
/// returned purge gets the value it replaced.
#[test]
fn feeds_follow_a_migration_of_the_coherence_slot() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    let ns = "moving";
    let urls = cluster.urls();
    let source = coherence_node(&cluster, ns);
    let target = (source + 1) % cluster.len();
    let cluster = Arc::new(cluster);
    let c = Arc::clone(&cluster);
    run(async move {
        let migrate = {
            let c = Arc::clone(&c);
            move || migrate_slot(&c, &format!("leasecache:{{{ns}}}:seq"), source, target)
        };
        let (oracle, readers) = fleet(
            urls,
            ns,
            (Coherence::Strict, false),
            keys(),
            3,
            1_000,
            migrate,
        )
        .await;
        after_moving(&c, ns, &oracle, &readers, source, target).await;
    });
}

/// Moves the slot of `key` from node `from` to node `to`, keys and all, the way
/// `redis-cli --cluster reshard` does.
fn migrate_slot(cluster: &RedisCluster, key: &str, from: usize, to: usize) {
    let slot = cluster.cli(from, &["CLUSTER", "KEYSLOT", key]);
    let from_id = cluster.cli(from, &["CLUSTER", "MYID"]);
    let to_id = cluster.cli(to, &["CLUSTER", "MYID"]);
    let to_port = cluster.ports()[to].to_string();
    assert_eq!(
        cluster.cli(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]),
        "OK"
    );
    assert_eq!(
        cluster.cli(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]),
        "OK"
    );
    loop {
        let keys = cluster.cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if keys.is_empty() {
            break;
        }
        let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
        args.extend(keys);
        let out = cluster.cli(from, &args);
        assert!(out == "OK" || out == "NOKEY", "MIGRATE: {out}");
    }
    for node in [to, from] {
        assert_eq!(
            cluster.cli(node, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]),
            "OK"
        );
    }
    for node in 0..cluster.len() {
        if node != to && node != from {
            let _ = cluster.cli(node, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        }
    }
    cluster.wait_ok();
}

/// Keys of namespace `ns` whose slots are not served by node `avoid`.
fn keys_away_from(cluster: &RedisCluster, ns: &str, avoid: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("k{i}"))
        .filter(|k| cluster.node_for_key(&format!("{ns}:{k}")) != avoid)
        .take(KEYS)
        .collect()
}

/// What a test that moves the coherence slot from node `old` to node `new` checks once the
/// purges are over: no stale read, every reader lost its feed on the old master and subscribed
/// on the new one, the L1s were used.
async fn after_moving(
    c: &RedisCluster,
    ns: &str,
    oracle: &Oracle,
    readers: &[Tc],
    old: usize,
    new: usize,
) {
    let stale = oracle.stale.load(Ordering::SeqCst);
    let purged = oracle.purged.load(Ordering::SeqCst);
    let losses: Vec<u64> = readers.iter().map(|r| r.stats().feed_losses).collect();
    let hits: u64 = readers.iter().map(|r| r.stats().l1_hits).sum();
    eprintln!(
        "purges ok {purged}, failed {}, reads {}, L1 hits {hits}, feed losses {losses:?}, stale {stale}",
        oracle.failed.load(Ordering::SeqCst),
        oracle.reads.load(Ordering::SeqCst)
    );
    assert_eq!(
        stale, 0,
        "Strict: a read after a returned purge got the old value"
    );
    assert_eq!(coherence_node(c, ns), new, "the slot moved");
    assert!(
        losses.iter().all(|&l| l >= 1),
        "every reader lost its subscription on the old master: {losses:?}"
    );
    for r in readers {
        tokio::time::timeout(WAIT, r.feed_confirmed())
            .await
            .expect("re-subscribed");
    }
    // Awaited, not read once: a reader whose feed came back while the failover was still
    // settling may have subscribed through a stale slot map and lose that subscription again
    // (once, on a box loaded by parallel suites, 2 of 3 were on the new master right after every
    // reader's feed was confirmed).
    let channel = coherence_channel(ns);
    let counts = || {
        (
            shard_subscribers(c, new, &channel),
            shard_subscribers(c, old, &channel),
        )
    };
    let deadline = Instant::now() + WAIT;
    let mut seen = counts();
    while !(seen.0 >= 3 && seen.1 == 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = counts();
    }
    let losses: Vec<u64> = readers.iter().map(|r| r.stats().feed_losses).collect();
    assert!(
        seen.0 >= 3,
        "the readers subscribe on the new master: (new, old) {seen:?}, feed losses {losses:?}"
    );
    assert_eq!(seen.1, 0, "none on the old one: feed losses {losses:?}");
    assert!(hits > 0, "the readers served from their L1s");
}

/// A manual failover (`CLUSTER FAILOVER` on a replica of the master that serves the coherence
/// slot) while purges run: the old master turns replica and unsubscribes its shard subscribers,
/// whose feeds follow the slot to the promoted replica. No stale read.
#[test]
fn feeds_follow_a_manual_failover_of_the_coherence_master() {
    let Some(cluster) = RedisCluster::start_replicated(3, 1, &[]) else {
        return;
    };
    let ns = "failover";
    let urls = cluster.urls();
    let old = coherence_node(&cluster, ns);
    let new = cluster.replica_of(old).expect("a replica");
    let cluster = Arc::new(cluster);
    let c = Arc::clone(&cluster);
    run(async move {
        let fail_over = {
            let c = Arc::clone(&c);
            move || {
                assert_eq!(c.cli(new, &["CLUSTER", "FAILOVER"]), "OK");
                assert!(
                    support::wait_until(WAIT, || c.is_master(new) && !c.is_master(old)),
                    "failover did not complete"
                );
                c.wait_ok();
            }
        };
        let (oracle, readers) = fleet(
            urls,
            ns,
            (Coherence::Strict, false),
            keys(),
            3,
            1_000,
            fail_over,
        )
        .await;
        // `fleet` returned: all 1,000 purges returned Ok, so writes recovered after the failover.
        assert!(
            c.is_master(new) && !c.is_master(old),
            "the replica took over"
        );
        after_moving(&c, ns, &oracle, &readers, old, new).await;
    });
}

/// A feed sent to a replica of the coherence slot's master, as a slot map read while a failover
/// settles can send it (Redis 7 accepts `SSUBSCRIBE` on a replica, and the manual failover
/// above once left one reader of three subscribed there), does not stay there: it sees that the
/// node does not serve the slot as master and subscribes on the master.
#[test]
fn a_feed_sent_to_a_replica_subscribes_on_the_master() {
    let Some(cluster) = RedisCluster::start_replicated(3, 1, &[]) else {
        return;
    };
    let ns = "replica";
    let urls: Vec<String> = cluster.urls();
    let master = coherence_node(&cluster, ns);
    let replica = cluster.replica_of(master).expect("a replica");
    let replica_port = cluster.ports()[replica];
    let cluster = Arc::new(cluster);
    let c = Arc::clone(&cluster);
    run(async move {
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        let store = RedisStore::connect_cluster(&urls, RedisOptions::new(ns))
            .await
            .expect("connect");
        let cache: Tc = TieredCache::builder(Cache::new(1_000), store)
            .coherence(Coherence::Strict)
            .member_lease(Duration::from_millis(1_000))
            .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
            .test_hook_first_feed_port(replica_port)
            .build()
            .expect("build");
        tokio::time::timeout(WAIT, cache.feed_confirmed())
            .await
            .expect("feed confirmed");
        // Awaited, not read once: the connection the feed dropped at the replica closes on the
        // runtime, and the replica counts its subscription until it has seen the close. Left
        // subscribed there, the feed never reaches (1, 0).
        let channel = coherence_channel(ns);
        let counts = || {
            (
                shard_subscribers(&c, master, &channel),
                shard_subscribers(&c, replica, &channel),
            )
        };
        let deadline = Instant::now() + WAIT;
        let mut seen = counts();
        while seen != (1, 0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            seen = counts();
        }
        assert_eq!(
            seen,
            (1, 0),
            "(master, replica): the feed subscribes on the master only"
        );
        // ...having tried the replica first (the hook sent it there).
        let stats = c.cli(replica, &["INFO", "commandstats"]);
        assert!(
            stats.contains("cmdstat_ssubscribe:calls="),
            "the replica saw no SSUBSCRIBE: {stats}"
        );
        // And it works there: a purge through it returns (Strict: its own member acknowledges).
        cache.purge("k0").await.expect("purge");
    });
}

/// The master that serves the coherence slot is killed with SIGKILL while purges run; its
/// replica is promoted after the node timeout. Purges fail meanwhile (and are queued), feeds are
/// lost and flush, then follow the slot to the new master. The data keys live on other masters:
/// a purge that a killed master acknowledged but had not replicated would be lost with it (see
/// the tiered module docs), which no cache protocol can see.
#[test]
fn feeds_follow_a_sigkill_failover_of_the_coherence_master() {
    let Some(cluster) = RedisCluster::start_replicated(3, 1, &[]) else {
        return;
    };
    let ns = "killed";
    let urls = cluster.urls();
    let old = coherence_node(&cluster, ns);
    let new = cluster.replica_of(old).expect("a replica");
    let keys = keys_away_from(&cluster, ns, old);
    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    let c = Arc::clone(&cluster);
    run(async move {
        let kill = {
            let c = Arc::clone(&c);
            move || {
                let mut c = c.blocking_lock();
                c.kill9(old);
                assert!(
                    support::wait_until(Duration::from_secs(30), || c.is_master(new)),
                    "the replica was not promoted"
                );
            }
        };
        let (oracle, readers) =
            fleet(urls, ns, (Coherence::Strict, false), keys, 3, 1_000, kill).await;
        let c = c.lock().await;
        assert!(
            c.is_master(new) && !c.is_master(old),
            "the replica took over"
        );
        after_moving(&c, ns, &oracle, &readers, old, new).await;
    });
}

/// One node's cluster bus is black-holed (its announced bus port is a proxy that stops
/// delivering, without closing anything) while purges run: every bus message sent to that node
/// is silently lost. The node keeps sending its own, so the cluster does not even notice (no
/// PFAIL: Redis 7 counts data received on either link of a pair), which is the worst case for
/// classic pub/sub: a subscriber there misses broadcasts forever. Shown by a plain classic
/// subscriber on that node: a PUBLISH made elsewhere during the partition never reaches it (the
/// first message it gets after the bus is restored is a later one). With sharded pub/sub no
/// invalidation travels the bus, so the feeds never notice; purges of keys on the cut-off node
/// still work (clients reach it directly).
fn bus_partition(mode: Coherence, ns: &'static str) -> Option<(Arc<Oracle>, Vec<u64>)> {
    let cluster = RedisCluster::start_with_bus_proxies(3, &[])?;
    let urls = cluster.urls();
    let owner = coherence_node(&cluster, ns);
    let cut = (owner + 1) % cluster.len();
    let cut_url = urls[cut].clone();
    let cluster = Arc::new(cluster);
    let c = Arc::clone(&cluster);
    let result = Arc::new(Mutex::new(None));
    let out = Arc::clone(&result);
    run(async move {
        let probe = format!("probe:{ns}");
        let client = redis::Client::open(cut_url.as_str()).expect("url");
        let mut ps = client.get_async_pubsub().await.expect("pubsub");
        ps.subscribe(&probe).await.expect("subscribe");
        let mut messages = ps.into_on_message();
        let partition = {
            let c = Arc::clone(&c);
            let probe = probe.clone();
            move || {
                c.bus_proxy(cut).black_hole();
                c.cli(owner, &["PUBLISH", &probe, "during"]);
            }
        };
        let (oracle, readers) = fleet(urls, ns, (mode, false), keys(), 3, 1_000, partition).await;
        let losses = readers.iter().map(|r| r.stats().feed_losses).collect();
        // The bus back: the first message published on the owner that reaches the subscriber
        // on the cut-off node is one published after the partition ended.
        c.bus_proxy(cut).forward();
        let deadline = Instant::now() + WAIT;
        let first = loop {
            assert!(Instant::now() < deadline, "the bus never recovered");
            c.cli(owner, &["PUBLISH", &probe, "after"]);
            let next = futures_util::StreamExt::next(&mut messages);
            if let Ok(msg) = tokio::time::timeout(Duration::from_millis(200), next).await {
                break msg.expect("subscriber open");
            }
        };
        assert_eq!(
            first.get_payload_bytes(),
            b"after",
            "the classic message published during the partition was lost"
        );
        *out.lock().expect("result") = Some((oracle, losses));
    });
    result.lock().expect("result").take()
}

/// Strict through a cluster-bus partition: no stale read, no feed noticed anything.
#[test]
fn strict_survives_a_cluster_bus_partition() {
    let Some((oracle, losses)) = bus_partition(Coherence::Strict, "cut") else {
        return;
    };
    eprintln!(
        "purges ok {}, failed {}, reads {}, feed losses {losses:?}, stale {}",
        oracle.purged.load(Ordering::SeqCst),
        oracle.failed.load(Ordering::SeqCst),
        oracle.reads.load(Ordering::SeqCst),
        oracle.stale.load(Ordering::SeqCst)
    );
    assert_eq!(oracle.stale.load(Ordering::SeqCst), 0, "Strict: stale read");
    assert!(
        losses.iter().all(|&l| l == 0),
        "the invalidations do not travel the bus: {losses:?}"
    );
}

/// Bounded(100 ms) through a cluster-bus partition: no stale read older than the bound.
#[test]
fn bounded_survives_a_cluster_bus_partition() {
    let bound = Duration::from_millis(100);
    let Some((oracle, losses)) = bus_partition(Coherence::Bounded(bound), "cutb") else {
        return;
    };
    let max_age = oracle.max_age_us.load(Ordering::SeqCst);
    eprintln!(
        "purges ok {}, reads {}, feed losses {losses:?}, stale {}, oldest {max_age} us",
        oracle.purged.load(Ordering::SeqCst),
        oracle.reads.load(Ordering::SeqCst),
        oracle.stale.load(Ordering::SeqCst)
    );
    assert!(
        max_age <= u64::try_from(bound.as_micros()).expect("fits"),
        "a stale read older than the bound: {max_age} us"
    );
    assert!(
        losses.iter().all(|&l| l == 0),
        "the invalidations do not travel the bus: {losses:?}"
    );
}

/// `PUBSUB NUMSUB <channel>` on node `i`: classic subscribers of that node.
fn classic_subscribers(cluster: &RedisCluster, i: usize, channel: &str) -> u64 {
    let out = cluster.cli(i, &["PUBSUB", "NUMSUB", channel]);
    out.lines()
        .nth(1)
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The classic path (what servers older than 7 get), forced on this server by a test hook:
/// coherence messages by PUBLISH, broadcast over the bus to subscribers on any node; no shard
/// subscription anywhere; the strict oracle at 0 stale. Fewer purges than the sharded tests:
/// each waits for acknowledgements that cross the cluster bus, tens of milliseconds on a loaded
/// machine (the median is printed beside the sharded test's).
#[test]
fn classic_pubsub_strict_purges_no_stale_read() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    let cluster = Arc::new(cluster);
    let urls = cluster.urls();
    let c = Arc::clone(&cluster);
    run(async move {
        let ns = "classic";
        let channel = coherence_channel(ns);
        let check = Arc::clone(&c);
        let (oracle, readers) = fleet(
            urls,
            ns,
            (Coherence::Strict, true),
            keys(),
            3,
            120,
            move || {
                let classic: u64 = (0..check.len())
                    .map(|i| classic_subscribers(&check, i, &channel))
                    .sum();
                let sharded: u64 = (0..check.len())
                    .map(|i| shard_subscribers(&check, i, &channel))
                    .sum();
                assert_eq!(
                    classic, 4,
                    "the writer and 3 readers subscribe with SUBSCRIBE"
                );
                assert_eq!(sharded, 0, "and not with SSUBSCRIBE");
            },
        )
        .await;
        let hits: u64 = readers.iter().map(|r| r.stats().l1_hits).sum();
        eprintln!(
            "classic: purges ok {} (p50 {} us), reads {}, L1 hits {hits}, stale {}",
            oracle.purged.load(Ordering::SeqCst),
            oracle.purge_p50_us(),
            oracle.reads.load(Ordering::SeqCst),
            oracle.stale.load(Ordering::SeqCst)
        );
        assert_eq!(oracle.stale.load(Ordering::SeqCst), 0, "Strict: stale read");
        assert_eq!(oracle.purged.load(Ordering::SeqCst), 120);
        assert!(hits > 0, "the readers served from their L1s");
    });
}
