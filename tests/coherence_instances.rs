//! Coherence machinery seen from one process: sequence gaps, unreadable messages, writers that
//! give up, dead feed tasks, late joiners, L1 lifetimes capped by Redis. The multi-process proofs
//! are in `tests/coherence.rs`.

mod support;

use leasecache::Cache;
use leasecache::redis::{RedisOptions, RedisStore};
use leasecache::tiered::{Coherence, TieredBuilder, TieredCache, TieredError};
use std::future::Future;
use std::time::{Duration, Instant};
use support::{RedisServer, wait_for};

type Tc = TieredCache<String, u64>;

const WAIT: Duration = Duration::from_secs(15);

async fn instance(
    url: &str,
    ns: &str,
    configure: impl FnOnce(TieredBuilder<String, u64>) -> TieredBuilder<String, u64>,
) -> Tc {
    let store = RedisStore::connect(url, RedisOptions::new(ns))
        .await
        .expect("connect");
    let builder = TieredCache::builder(Cache::new(1_000), store)
        .ping_interval(Duration::from_millis(200))
        .ping_timeout(Duration::from_millis(500));
    let cache = configure(builder).build().expect("build");
    tokio::time::timeout(WAIT, cache.feed_confirmed())
        .await
        .expect("feed confirmed");
    wait_for("L1 active", || cache.is_l1_active()).await;
    cache
}

async fn fill(c: &Tc, key: &str, value: u64) {
    let got = c
        .get_or_load(key.to_owned(), |_| async move { Ok::<_, ()>(value) })
        .await;
    assert_eq!(got, Ok(value));
    assert_eq!(c.l1().get(key), Some(value), "{key} is in the L1");
}

/// A sequenced invalidation that skips sequences (as a message lost on a cluster bus would)
/// flushes the L1 at once and is counted; the next in order is not a gap.
/// Runs `test` on a 2-thread runtime, for at most a minute.
fn run<F: Future<Output = ()> + Send + 'static>(test: F) {
    support::run_tokio(2, Duration::from_secs(60), test);
}

#[test]
fn a_sequence_gap_flushes_the_l1_and_is_counted() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    run(async move {
        let a = instance(&url, "gap", |b| b).await;
        let b = instance(&url, "gap", |b| b).await;
        fill(&a, "x", 1).await;
        fill(&a, "y", 1).await;
        // In order: B's purge of "y" is sequence n; A applies it without a gap.
        b.purge("y").await.expect("purge");
        assert_eq!(
            a.l1().get("y"),
            None,
            "Strict: applied before the purge returned"
        );
        assert_eq!(a.stats().sequence_gaps, 0);
        assert_eq!(a.l1().get("x"), Some(1));
        // Sequence n + 5 arrives for another key: n + 1 ..= n + 4 were lost.
        let seq = server.cli(&["GET", "leasecache:{gap}:seq"]);
        let next: u64 = seq.trim().parse::<u64>().expect("sequence") + 5;
        // Redis 7 and later: a shard channel in the coherence keys' slot.
        let channel = "leasecache:{gap}:coherence";
        server.cli(&["SPUBLISH", channel, &format!("#{next} Kunrelated")]);
        wait_for("gap detected", || a.stats().sequence_gaps == 1).await;
        assert_eq!(a.l1().get("x"), None, "the gap flushed the L1");
        // The mark jumped to the gap's sequence: the next write is in order again.
        fill(&a, "x", 1).await; // from Redis again
        server.cli(&["SET", "leasecache:{gap}:seq", &next.to_string()]);
        b.purge("z").await.expect("purge");
        assert_eq!(a.stats().sequence_gaps, 1, "no second gap");
        assert_eq!(
            a.l1().get("x"),
            Some(1),
            "an in-order purge of another key keeps x"
        );
    });
}

/// A burst of unreadable messages: each counted, one flush, the L1 bypassed meanwhile and used
/// again once the burst is over.
#[test]
fn unreadable_messages_are_counted_and_flush_once_per_burst() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    run(async move {
        let a = instance(&url, "junk", |b| b).await;
        fill(&a, "x", 1).await;
        let channel = a.l2().invalidation_channel().to_owned();
        // One round trip for the whole burst, so it lands well inside the hold time.
        let mut script =
            String::from("for i = 1, 50 do redis.call('PUBLISH', KEYS[1], '?junk') end");
        script.push_str(" return 1");
        server.cli(&["EVAL", &script, "1", &channel]);
        wait_for("all counted", || a.stats().unreadable_messages == 50).await;
        assert_eq!(a.stats().unreadable_flushes, 1, "{:?}", a.stats());
        assert_eq!(a.l1().get("x"), None, "flushed");
        wait_for("L1 active again", || a.is_l1_active()).await;
        fill(&a, "x", 1).await; // from Redis, into the L1 again
        assert_eq!(
            a.stats().invalidations_received,
            0,
            "junk is not an invalidation"
        );
    });
}

/// Strict: a member that holds a live lease but never acknowledges (registered by hand, as a
/// process that renews without applying would look) makes the write give up after the member
/// lease and say so.
#[test]
fn a_writer_that_gives_up_says_so() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    run(async move {
        let lease = Duration::from_millis(200);
        let a = instance(&url, "mute", |b| b.member_lease(lease)).await;
        server.cli(&[
            "ZADD",
            "leasecache:{mute}:members",
            "99999999999999",
            "mute-member",
        ]);
        let started = Instant::now();
        let err = a.purge("k").await.expect_err("a member never acknowledged");
        assert!(
            matches!(err, TieredError::Unacknowledged { instances: 1 }),
            "{err:?}"
        );
        assert!(err.to_string().contains("1 instance"), "{err}");
        assert_eq!(a.stats().unacknowledged_writes, 1);
        println!("gave up after {:?} (lease {lease:?})", started.elapsed());
        // Once it is gone, writes return Ok again.
        server.cli(&["ZREM", "leasecache:{mute}:members", "mute-member"]);
        a.purge("k").await.expect("nobody to wait for");
    });
}

/// Strict: a member whose lease ran out on the server is not waited for: the write returns Ok.
#[test]
fn a_lapsed_member_is_not_waited_for() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    run(async move {
        let a = instance(&url, "lapsed", |b| b).await;
        // Expired (score in the past, server milliseconds).
        server.cli(&["ZADD", "leasecache:{lapsed}:members", "1", "gone"]);
        a.purge("k").await.expect("the lapsed member is skipped");
        assert_eq!(a.stats().unacknowledged_writes, 0);
    });
}

/// A feed task that ended (here: its runtime shut down) stops the L1 at once: nothing is
/// served from it, even a value planted there.
#[test]
fn a_dead_feed_task_bypasses_the_l1() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let feed_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let a = feed_rt.block_on(instance(&url, "dead", |b| b));
    assert!(a.is_l1_active());
    drop(feed_rt); // the feed task is dropped with its runtime
    assert!(!a.is_l1_active(), "the L1 stopped with its feed");
    a.l1().insert("k".to_owned(), 7); // planted after the stop: must not be served
    let other = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let got = other.block_on(a.get_or_load("k".to_owned(), |_| async { Ok::<_, ()>(8) }));
    assert_eq!(got, Ok(8), "the planted L1 value was not served");
    drop(a);
}

/// Bounded: an instance serves its L1 only while its token proof is fresh, and a write returns
/// without waiting for anyone (a never-acknowledging member is ignored).
#[test]
fn bounded_writes_do_not_wait_and_the_l1_is_served_with_a_fresh_proof() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    run(async move {
        let bound = Coherence::Bounded(Duration::from_millis(200));
        let a = instance(&url, "bnd", |b| b.coherence(bound)).await;
        let b = instance(&url, "bnd", |b| b.coherence(bound)).await;
        server.cli(&[
            "ZADD",
            "leasecache:{bnd}:members",
            "99999999999999",
            "mute-member",
        ]);
        fill(&a, "x", 1).await;
        b.purge("x")
            .await
            .expect("Bounded does not wait for members");
        wait_for("invalidation applied", || a.l1().get("x").is_none()).await;
        // Proofs keep coming: the L1 stays in use well past the bound.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(a.is_l1_active(), "tokens renewed the proof");
        assert_eq!(a.stats().unacknowledged_writes, 0);
    });
}

/// A late joiner starts with an empty L1 and does not serve it before it is a member.
#[test]
fn a_late_joiner_starts_empty() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    run(async move {
        let store = RedisStore::connect(&url, RedisOptions::new("late"))
            .await
            .expect("connect");
        let l1 = Cache::new(100);
        l1.insert("k".to_owned(), 1); // whatever the L1 held before
        // Redis paused: the feed cannot join before the assertions below (on a loaded machine
        // it otherwise may, between `build` and them).
        server.pause();
        let a: Tc = TieredCache::builder(l1, store).build().expect("build");
        assert!(!a.is_l1_active(), "not a member yet");
        assert_eq!(a.l1().get("k"), None, "started empty");
        server.resume();
        tokio::time::timeout(WAIT, a.feed_confirmed())
            .await
            .expect("joined");
        let members = server.cli(&["ZCARD", "leasecache:{late}:members"]);
        assert_eq!(members.trim(), "1");
        drop(a);
        wait_for("left on drop", || {
            server.cli(&["ZCARD", "leasecache:{late}:members"]).trim() == "0"
        })
        .await;
    });
}

/// An L1 fill never outlives its Redis entry: a value inserted in Redis with a short TTL leaves
/// the L1 no later than it leaves Redis, through `get` and through `get_or_load`.
#[test]
fn an_l1_entry_never_outlives_its_redis_entry() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    run(async move {
        let a = instance(&url, "ttl", |b| b).await;
        let ttl = Duration::from_millis(300);
        a.l2().insert_with_ttl("g", &1, ttl).await.expect("insert");
        a.l2().insert_with_ttl("l", &2, ttl).await.expect("insert");
        // The inserts' own invalidations reach this instance first (else they could fence the
        // fills below).
        wait_for("inserts' invalidations", || {
            a.stats().invalidations_received == 2
        })
        .await;
        assert_eq!(a.get("g").await.expect("get"), Some(1));
        let got = a
            .get_or_load("l".to_owned(), |_| async { Ok::<_, ()>(99) })
            .await;
        assert_eq!(got, Ok(2), "from Redis");
        assert_eq!(a.l1().get("g"), Some(1), "filled");
        assert_eq!(a.l1().get("l"), Some(2), "filled");
        // Once Redis no longer has them, neither does the L1 (no invalidation is published for
        // an expiry).
        for key in ["g", "l"] {
            let redis_key = format!("ttl:{key}");
            wait_for("Redis expired the key", || {
                server.cli(&["EXISTS", &redis_key]).trim() == "0"
            })
            .await;
            assert_eq!(a.l1().get(key), None, "{key} outlived its Redis entry");
        }
        assert_eq!(
            a.stats().invalidations_received,
            2,
            "an expiry publishes nothing"
        );
    });
}

/// A raw RESP3 subscriber (SSUBSCRIBE, the way the feed subscribes on Redis 7+), collecting the
/// payloads it receives per channel.
struct Listener {
    conn: redis::aio::MultiplexedConnection,
    rx: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    got: Vec<(String, String)>,
}

impl Listener {
    async fn connect(url: &str) -> Self {
        let info = redis::IntoConnectionInfo::into_connection_info(url).expect("url");
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(resp3)).expect("client");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let config = redis::AsyncConnectionConfig::new().set_push_sender(tx);
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect");
        Self {
            conn,
            rx,
            got: Vec::new(),
        }
    }

    async fn ssubscribe(&mut self, channel: &str) {
        let _: redis::Value = redis::cmd("SSUBSCRIBE")
            .arg(channel)
            .query_async(&mut self.conn)
            .await
            .expect("SSUBSCRIBE");
    }

    /// Takes in every message received so far.
    fn drain(&mut self) {
        while let Ok(push) = self.rx.try_recv() {
            if push.kind != redis::PushKind::SMessage {
                continue;
            }
            if let [redis::Value::BulkString(ch), redis::Value::BulkString(p)] = &push.data[..] {
                self.got.push((
                    String::from_utf8_lossy(ch).into_owned(),
                    String::from_utf8_lossy(p).into_owned(),
                ));
            }
        }
    }

    /// Publishes a marker on `marker` (which this listener subscribed, in the coherence slot)
    /// and waits until it comes back: every message the server published before it is then in.
    async fn settle(&mut self, server: &RedisServer, marker: &str, n: usize) {
        server.cli(&["SPUBLISH", marker, &format!("mark{n}")]);
        let want = format!("mark{n}");
        let deadline = Instant::now() + WAIT;
        loop {
            self.drain();
            if self.got.iter().any(|(ch, p)| ch == marker && *p == want) {
                return;
            }
            assert!(Instant::now() < deadline, "marker {n} not received");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn on(&self, channel: &str) -> Vec<&str> {
        self.got
            .iter()
            .filter(|(ch, _)| ch == channel)
            .map(|(_, p)| p.as_str())
            .collect()
    }
}

/// Strict acknowledgements travel only to the writer waiting for them, on its own channel: the
/// coherence channel, which every instance receives, carries the sequenced invalidations and no
/// acknowledgements (a member's ack used to be broadcast there, so every purge woke every
/// instance once per member), and an instance that is not waiting receives none.
#[test]
fn acknowledgements_go_only_to_the_waiting_writer() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    run(async move {
        let ns = "acks";
        let coherence = format!("leasecache:{{{ns}}}:coherence");
        let marker = format!("leasecache:{{{ns}}}:test-marker");
        let writer = instance(&url, ns, |b| b).await;
        let b = instance(&url, ns, |b| b).await;
        let c = instance(&url, ns, |b| b).await;
        let members = server.cli(&["ZRANGE", &format!("leasecache:{{{ns}}}:members"), "0", "-1"]);
        let ids: Vec<String> = members.split_whitespace().map(str::to_owned).collect();
        assert_eq!(ids.len(), 3, "three members: {members}");
        let mut l = Listener::connect(&url).await;
        l.ssubscribe(&coherence).await;
        l.ssubscribe(&marker).await;
        // One purge, to learn the writer's id: the only one waiting.
        writer.purge("k").await.expect("purge");
        let waits = server.cli(&["ZRANGE", &format!("leasecache:{{{ns}}}:waits"), "0", "-1"]);
        let writer_id = waits.trim().to_owned();
        assert!(ids.contains(&writer_id), "the writer waited: {waits:?}");
        let ack_channel = |id: &str| format!("leasecache:{{{ns}}}:coherence:ack:{id}");
        for id in &ids {
            l.ssubscribe(&ack_channel(id)).await;
        }
        l.settle(&server, &marker, 0).await;
        l.got.clear();
        const PURGES: usize = 20;
        for i in 0..PURGES {
            writer.purge(&format!("k{i}")).await.expect("purge");
        }
        // Every ack the writer waited for was published before its purge returned.
        l.settle(&server, &marker, 1).await;
        let broadcast = l.on(&coherence);
        assert_eq!(
            broadcast.iter().filter(|p| p.starts_with('#')).count(),
            PURGES,
            "every purge sequenced on the coherence channel: {broadcast:?}"
        );
        assert!(
            broadcast.iter().all(|p| p.starts_with('#')),
            "no acknowledgement on the coherence channel: {broadcast:?}"
        );
        let last: u64 = server
            .cli(&["GET", &format!("leasecache:{{{ns}}}:seq")])
            .trim()
            .parse()
            .expect("sequence");
        let to_writer = l.on(&ack_channel(&writer_id));
        for id in ids.iter().filter(|id| **id != writer_id) {
            let acked = to_writer
                .iter()
                .filter_map(|p| p.strip_prefix(&format!("A{id} ")))
                .filter_map(|w| w.parse::<u64>().ok())
                .max();
            assert_eq!(
                acked,
                Some(last),
                "member {id} acknowledged the last purge to the writer: {to_writer:?}"
            );
        }
        for id in ids.iter().filter(|id| **id != writer_id) {
            assert!(
                l.on(&ack_channel(id)).is_empty(),
                "an instance that waits for nothing receives no acknowledgement"
            );
        }
        drop((b, c));
    });
}

/// Mixed versions: a member of an earlier version broadcasts its acknowledgement `A<id> <w>` on
/// the coherence channel; a writer of this version still takes it (else it would wait until that
/// member's lease ran out and return `Unacknowledged`).
#[test]
fn a_writer_takes_acknowledgements_broadcast_by_an_earlier_version() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    run(async move {
        let ns = "oldacks";
        let tag = format!("leasecache:{{{ns}}}");
        let writer = instance(&url, ns, |b| b).await;
        // An old member with a lease far in the future (server ms) that never acks in the hash.
        let seq: u64 = server
            .cli(&["GET", &format!("{tag}:seq")])
            .trim()
            .parse()
            .unwrap_or(0);
        server.cli(&["ZADD", &format!("{tag}:members"), "99999999999999", "old"]);
        server.cli(&["HSET", &format!("{tag}:acks"), "old", &seq.to_string()]);
        let purge = tokio::spawn(async move { writer.purge("k").await });
        let next = seq + 1;
        wait_for("the purge sequenced", || {
            server.cli(&["GET", &format!("{tag}:seq")]).trim() == next.to_string()
        })
        .await;
        server.cli(&[
            "SPUBLISH",
            &format!("{tag}:coherence"),
            &format!("Aold {next}"),
        ]);
        let purged = purge.await.expect("task");
        assert!(purged.is_ok(), "the broadcast ack was taken: {purged:?}");
    });
}

/// Mixed versions: a writer of an earlier version does not register as waiting, so members of
/// this version send it no acknowledgement; they still record it in the acks hash, which that
/// writer's periodic check reads.
#[test]
fn members_record_acknowledgements_for_writers_that_did_not_register() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    run(async move {
        let ns = "oldwriter";
        let tag = format!("leasecache:{{{ns}}}");
        let member = instance(&url, ns, |b| b).await;
        let id = server
            .cli(&["ZRANGE", &format!("{tag}:members"), "0", "-1"])
            .trim()
            .to_owned();
        // What an earlier version's publish.lua does: advance and publish, nothing else.
        let next: u64 = server
            .cli(&["INCR", &format!("{tag}:seq")])
            .trim()
            .parse()
            .expect("sequence");
        server.cli(&[
            "SPUBLISH",
            &format!("{tag}:coherence"),
            &format!("#{next} Kk"),
        ]);
        wait_for("the member acknowledged in the hash", || {
            server.cli(&["HGET", &format!("{tag}:acks"), &id]).trim() == next.to_string()
        })
        .await;
        assert_eq!(member.stats().sequence_gaps, 0);
    });
}
