//! `RedisStore::flush` on a real Redis Cluster while a master fails over and while a slot
//! migrates between masters.
//!
//! The contract checked: a flush either returns `Ok`, and then no key of the namespace that
//! existed when it started is left on any master (the promoted replica included) nor readable
//! through the store, or it returns a transient error that names what was not flushed. A
//! `TieredCache` on the cluster: once its flush returned `Ok`, no instance serves an old value.
//!
//! The failure or migration is injected at a chosen point of the scan by the `__test-hooks`
//! flush hook (run after each master is scanned), so each test reaches the same state every run;
//! the outcome is asserted, never timing.

mod support;

use leasecache::Cache;
use leasecache::redis::{RedisOptions, RedisStore, test_hooks};
use leasecache::tiered::TieredCache;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{RedisCluster, wait_until};

type Store = RedisStore<String>;

/// Keys per test: enough that every master holds many.
const KEYS: usize = 600;
/// How long a test waits for a failover or for the flush to succeed again.
const WAIT: Duration = Duration::from_secs(40);

fn run<F: std::future::Future<Output = ()> + Send + 'static>(test: F) {
    support::run_tokio(2, Duration::from_secs(180), test);
}

async fn store(urls: &[String], ns: &str) -> Store {
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    RedisStore::connect_cluster(&urls, RedisOptions::new(ns))
        .await
        .expect("connect")
}

fn key(i: usize) -> String {
    format!("k{i}")
}

async fn fill(s: &Store, keys: &[String]) {
    for chunk in keys.chunks(100) {
        let writes = chunk
            .iter()
            .map(|k| async move { s.insert(k, &format!("old-{k}")).await });
        for r in futures_util::future::join_all(writes).await {
            r.expect("insert");
        }
    }
}

/// How many keys of namespace `ns` node `i` holds (0 for a dead node).
fn keys_on(c: &RedisCluster, i: usize, ns: &str) -> usize {
    let script = "return #redis.call('KEYS', ARGV[1])";
    c.cli(i, &["EVAL", script, "0", &format!("{ns}:*")])
        .parse()
        .unwrap_or(0)
}

/// Whether every node but `dead` reports a healthy cluster with every slot served.
fn settled_without(c: &RedisCluster, dead: usize) -> bool {
    (0..c.len()).filter(|&i| i != dead).all(|i| {
        let info = c.cli(i, &["CLUSTER", "INFO"]);
        info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
    })
}

/// The contract after a flush returned `Ok`, on the servers: no key of `ns` on any live master
/// (the promoted replica included).
fn assert_no_key_left(c: &RedisCluster, dead: Option<usize>, ns: &str) {
    for i in 0..c.len() {
        if Some(i) == dead || !c.is_master(i) {
            continue;
        }
        assert_eq!(keys_on(c, i, ns), 0, "node {i} still holds keys of {ns}");
    }
}

/// The contract after a flush returned `Ok`, through the store: no key readable.
async fn assert_none_readable(s: &Store, keys: &[String]) {
    for k in keys {
        let mut v = s.get(k).await;
        // Right after a failover the client may still be refreshing its slot map.
        let deadline = Instant::now() + WAIT;
        while v.is_err() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            v = s.get(k).await;
        }
        assert_eq!(v.expect("get"), None, "{k} is still readable");
    }
}

/// Retries `flush` until it returns `Ok`; every failure on the way must be transient and say
/// what was not flushed. Returns how many attempts failed.
async fn flush_until_ok(s: &Store) -> usize {
    let deadline = Instant::now() + WAIT;
    let mut failures = 0;
    loop {
        match s.flush().await {
            Ok(()) => return failures,
            Err(e) => {
                assert!(e.is_transient(), "flush failed for good: {e:?}");
                failures += 1;
                eprintln!("flush attempt {failures} failed: {e:?}");
                assert!(
                    Instant::now() < deadline,
                    "flush kept failing: {}",
                    support::report_with_each_cause_once(e)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A master is killed and flagged failed, and its replica is not allowed to take over (the
/// cluster keeps serving the other slots: `cluster-require-full-coverage no`). Its keys live on
/// in the replica, so the flush must not return `Ok`: it fails naming the failed master. Once
/// the replica took over (CLUSTER FAILOVER TAKEOVER) the keys are still there (the error was
/// true), and a flush then succeeds and leaves none.
#[test]
fn flush_fails_while_a_failed_master_still_owns_slots() {
    let Some(cluster) =
        RedisCluster::start_replicated(3, 1, &["--cluster-require-full-coverage", "no"])
    else {
        return;
    };
    let ns = "failedowner";
    let dead = cluster.node_for_key(&format!("{ns}:{}", key(0)));
    let heir = cluster.replica_of(dead).expect("a replica");
    assert_eq!(
        cluster.cli(
            heir,
            &["CONFIG", "SET", "cluster-replica-no-failover", "yes"]
        ),
        "OK"
    );
    let dead_port = cluster.ports()[dead];
    let urls = cluster.urls();
    let cluster = Arc::new(Mutex::new(cluster));
    run(async move {
        let s = store(&urls, ns).await;
        let keys: Vec<String> = (0..KEYS).map(key).collect();
        fill(&s, &keys).await;
        {
            let mut c = cluster.lock().unwrap();
            assert!(keys_on(&c, dead, ns) > 0, "the master to kill holds keys");
            c.kill9(dead);
            let flagged = wait_until(WAIT, || {
                (0..c.len()).filter(|&i| i != dead).all(|i| {
                    c.cli(i, &["CLUSTER", "NODES"]).lines().any(|l| {
                        l.contains(&format!(":{dead_port}@")) && l.contains("master,fail ")
                    })
                })
            });
            assert!(flagged, "the killed master was not flagged failed");
            assert!(!c.is_master(heir), "the replica must not have taken over");
        }
        let err = s
            .flush()
            .await
            .expect_err("a failed master still owns slots: flush must not return Ok");
        assert!(err.is_transient(), "{err:?}");
        let report = support::report_with_each_cause_once(err);
        assert!(
            report.contains(&format!(":{dead_port}")) && report.contains("not flushed"),
            "the error names the master not flushed: {report}"
        );
        {
            let c = cluster.lock().unwrap();
            assert_eq!(c.cli(heir, &["CLUSTER", "FAILOVER", "TAKEOVER"]), "OK");
            assert!(
                wait_until(WAIT, || c.is_master(heir) && settled_without(&c, dead)),
                "the replica did not take over"
            );
            assert!(
                keys_on(&c, heir, ns) > 0,
                "the keys the failed flush named survived in the replica"
            );
        }
        flush_until_ok(&s).await;
        assert_no_key_left(&cluster.lock().unwrap(), Some(dead), ns);
        assert_none_readable(&s, &keys).await;
    });
}

/// Kills (SIGKILL) a master that the flush has not scanned yet, right after it scanned the first
/// one, and retries the flush until it returns `Ok` while the cluster fails over on its own. Every
/// failed attempt is transient; after `Ok` (and once the failover settled) no key is left on any
/// master, the promoted replica included.
#[test]
fn flush_during_a_sigkill_failover_leaves_no_key_after_ok() {
    let Some(cluster) = RedisCluster::start_replicated(3, 1, &[]) else {
        return;
    };
    let ns = "sigkill";
    let urls = cluster.urls();
    let ports = cluster.ports();
    let cluster = Arc::new(Mutex::new(cluster));
    let killed = Arc::new(Mutex::new(None::<usize>));
    run(async move {
        let s = store(&urls, ns).await;
        let keys: Vec<String> = (0..KEYS).map(key).collect();
        fill(&s, &keys).await;
        kill_second_master_during_flush(ns, &cluster, &ports, &killed, None);
        let failures = flush_until_ok(&s).await;
        test_hooks::clear(ns);
        let dead = killed.lock().unwrap().expect("a master was killed");
        assert!(
            failures >= 1,
            "the flush that lost a master mid-scan failed"
        );
        {
            let c = cluster.lock().unwrap();
            assert!(
                wait_until(WAIT, || settled_without(&c, dead)),
                "the cluster did not fail over"
            );
            assert_no_key_left(&c, Some(dead), ns);
        }
        assert_none_readable(&s, &keys).await;
    });
}

/// Installs a hook that kills, right after the first master of the first flush was scanned,
/// another master that holds keys of `ns` (and is not `spare`), recording it in `killed`.
fn kill_second_master_during_flush(
    ns: &str,
    cluster: &Arc<Mutex<RedisCluster>>,
    ports: &[u16],
    killed: &Arc<Mutex<Option<usize>>>,
    spare: Option<usize>,
) {
    let (c, k, ports, name) = (
        Arc::clone(cluster),
        Arc::clone(killed),
        ports.to_vec(),
        ns.to_owned(),
    );
    test_hooks::set_after_flush_node(ns, move |port| {
        let mut killed = k.lock().unwrap();
        if killed.is_some() {
            return;
        }
        let mut c = c.lock().unwrap();
        let scanned = ports.iter().position(|&p| p == port).expect("a known port");
        let victim = (0..c.len())
            .find(|&i| {
                i != scanned && Some(i) != spare && c.is_master(i) && keys_on(&c, i, &name) > 0
            })
            .expect("an unscanned master with keys");
        c.kill9(victim);
        *killed = Some(victim);
    });
}

/// The same failover under a `TieredCache` fleet: two instances serve every key from their L1
/// ("old"), one flushes while a master dies mid-scan, retrying until `Ok`. Then neither
/// instance serves an old value: every read loads the new one.
#[test]
fn tiered_flush_during_a_failover_serves_no_old_value_after_ok() {
    let Some(cluster) = RedisCluster::start_replicated(3, 1, &[]) else {
        return;
    };
    let ns = "tieredkill";
    let urls = cluster.urls();
    let ports = cluster.ports();
    // The coherence channel's master stays up: this test is about the data keys.
    let coherence = cluster.node_for_key(&format!("leasecache:{{{ns}}}:seq"));
    let cluster = Arc::new(Mutex::new(cluster));
    let killed = Arc::new(Mutex::new(None::<usize>));
    run(async move {
        let keys: Vec<String> = (0..200).map(key).collect();
        let mut fleet = Vec::new();
        for _ in 0..2 {
            let tc: TieredCache<String, String> =
                TieredCache::builder(Cache::new(10_000), store(&urls, ns).await)
                    .build()
                    .expect("tiered cache");
            tokio::time::timeout(WAIT, tc.feed_confirmed())
                .await
                .expect("feed confirmed");
            fleet.push(tc);
        }
        for tc in &fleet {
            for k in &keys {
                let v = tc
                    .get_or_load(k.clone(), |k| async move {
                        Ok::<_, Infallible>(format!("old-{k}"))
                    })
                    .await
                    .unwrap();
                assert_eq!(v, format!("old-{k}"));
            }
        }
        kill_second_master_during_flush(ns, &cluster, &ports, &killed, Some(coherence));
        let deadline = Instant::now() + WAIT;
        let mut failures = 0;
        while let Err(e) = fleet[0].flush().await {
            failures += 1;
            assert!(
                Instant::now() < deadline,
                "tiered flush kept failing: {e:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        test_hooks::clear(ns);
        assert!(
            failures >= 1,
            "the flush that lost a master mid-scan failed"
        );
        let dead = killed.lock().unwrap().expect("a master was killed");
        {
            let c = cluster.lock().unwrap();
            assert!(
                wait_until(WAIT, || settled_without(&c, dead)),
                "the cluster did not fail over"
            );
        }
        for (n, tc) in fleet.iter().enumerate() {
            for k in &keys {
                let v = tc
                    .get_or_load(k.clone(), |k| async move {
                        Ok::<_, Infallible>(format!("new-{k}"))
                    })
                    .await
                    .unwrap();
                assert_eq!(v, format!("new-{k}"), "instance {n} served an old value");
            }
        }
    });
}

/// Hash tags (one per master) whose slots node `i` serves, so that keys `{tag}:n` all live in
/// one slot of that master.
fn tag_on(c: &RedisCluster, i: usize) -> String {
    (0..)
        .map(|n| format!("t{n}"))
        .find(|t| c.node_for_key(t) == i)
        .expect("a tag")
}

/// Right after the flush scanned its first master X, the keys of a slot of a master Y that
/// it has not scanned yet migrate to X. `complete`: the migration also ends (the slot now
/// belongs to X); otherwise it stays in flight (only X and Y show it, in their own `CLUSTER
/// NODES` lines) until the flush returned. The flush returns `Ok`, and (once the migration
/// ended) none of the migrated keys is left.
fn migrate_during_flush(ns: &'static str, complete: bool) {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    let urls = cluster.urls();
    let ports = cluster.ports();
    let tags: Vec<String> = (0..3).map(|i| tag_on(&cluster, i)).collect();
    let cluster = Arc::new(cluster);
    let moved = Arc::new(Mutex::new(None::<(String, usize)>));
    run(async move {
        let s = store(&urls, ns).await;
        let keys: Vec<String> = tags
            .iter()
            .flat_map(|t| (0..200).map(move |n| format!("{{{t}}}:{n}")))
            .chain((0..300).map(key))
            .collect();
        fill(&s, &keys).await;
        {
            let (c, m, ports) = (Arc::clone(&cluster), Arc::clone(&moved), ports.clone());
            test_hooks::set_after_flush_node(ns, move |port| {
                let mut m = m.lock().unwrap();
                if m.is_some() {
                    return;
                }
                let to = ports.iter().position(|&p| p == port).expect("a known port");
                let from = (to + 1) % c.len();
                let slot = c.cli(
                    from,
                    &["CLUSTER", "KEYSLOT", &format!("{{{}}}", tags[from])],
                );
                assert!(
                    c.cli(from, &["CLUSTER", "COUNTKEYSINSLOT", &slot]) != "0",
                    "the slot to move holds keys"
                );
                c.start_migration(&slot, from, to);
                if complete {
                    c.end_migration(&slot, to);
                }
                *m = Some((slot, to));
            });
        }
        let result = s.flush().await;
        test_hooks::clear(ns);
        let (slot, to) = moved.lock().unwrap().clone().expect("a slot moved");
        if !complete {
            cluster.end_migration(&slot, to);
        }
        // The layout changed during the first pass (and is stable after the second): the
        // flush rescans and succeeds.
        if let Err(e) = result {
            panic!("flush failed: {}", support::report_with_each_cause_once(e));
        }
        assert_eq!(
            cluster.cli(to, &["CLUSTER", "COUNTKEYSINSLOT", &slot]),
            "0",
            "a migrated key survived the flush"
        );
        assert_no_key_left(&cluster, None, ns);
        assert_none_readable(&s, &keys).await;
    });
}

#[test]
fn a_slot_migrating_during_the_scan_is_flushed() {
    migrate_during_flush("migrating", false);
}

#[test]
fn a_slot_migrated_during_the_scan_is_flushed() {
    migrate_during_flush("migrated", true);
}
