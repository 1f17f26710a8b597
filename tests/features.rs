//! Black-box tests of what users of moka, quick_cache and Caffeine expect on `Cache` (issue 19,
//! point 1): the removal listener, `peek`, `get_many`, `get_many_or_load`, `iter`, `retain`, time
//! to idle and `Expiry`. Each removal route has a fencing test: a write that removes a key fences
//! the leases taken before it (I1, I2), and a removal that is not a write (eviction, expiry,
//! idleness) never re-opens a fence that a later write closed (I3, I4).

use leasecache::{Cache, Expiry, Lookup, ManualClock, RemovalCause};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Log = Arc<Mutex<Vec<(u64, u64, RemovalCause)>>>;

/// A cache whose listener records every notification.
fn listened(
    build: impl FnOnce(leasecache::CacheBuilder<u64, u64>) -> Cache<u64, u64>,
) -> (Cache<u64, u64>, Log) {
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    let builder = Cache::builder()
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)));
    (build(builder), log)
}

fn taken(log: &Log) -> Vec<(u64, u64, RemovalCause)> {
    std::mem::take(&mut *log.lock().unwrap())
}

/// Hashes an integer key to `key * odd constant`: distinct keys below 2^16 get distinct lease
/// slots in a cache with `lease_slots(1 << 16)` and one shard, so no test sees a spurious
/// rejection from keys sharing a slot.
#[derive(Clone, Default)]
struct Spread(u64);

impl std::hash::Hasher for Spread {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("u64 keys only")
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Exact = BuildHasherDefault<Spread>;

fn exact_slots() -> leasecache::CacheBuilder<u64, u64, Exact> {
    Cache::builder()
        .hasher(Exact::default())
        .shards(1)
        .lease_slots(1 << 16)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

// ---- removal listener -------------------------------------------------------------------------

#[test]
fn listener_reports_every_cause_with_key_and_value() {
    let clock = ManualClock::new();
    let (cache, log) = listened(|b| b.clock(clock.clone()).build());
    cache.insert(1, 10);
    cache.insert(1, 11);
    assert_eq!(taken(&log), [(1, 10, RemovalCause::Replaced)]);
    assert!(cache.purge(&1));
    assert_eq!(taken(&log), [(1, 11, RemovalCause::Purged)]);
    assert!(!cache.purge(&1), "nothing left to purge");
    assert_eq!(taken(&log), [], "a purge of an absent key removes nothing");

    cache.insert(2, 20);
    cache.insert(3, 30);
    cache.flush();
    let mut flushed = taken(&log);
    flushed.sort_by_key(|e| e.0);
    assert_eq!(
        flushed,
        [
            (2, 20, RemovalCause::Flushed),
            (3, 30, RemovalCause::Flushed)
        ]
    );

    cache.insert_with_ttl(4, 40, secs(1));
    clock.advance(secs(2));
    cache.insert(4, 41); // replaces an expired value: it had expired, it was not replaced
    assert_eq!(taken(&log), [(4, 40, RemovalCause::Expired)]);

    // A save under a lease replaces like an insert.
    let lease = cache.lease(&4);
    assert!(cache.save_with_lease(4, 42, lease).unwrap().is_stored());
    assert_eq!(taken(&log), [(4, 41, RemovalCause::Replaced)]);
}

#[test]
fn listener_reports_every_eviction_for_size() {
    let (cache, log) = listened(|b| b.max_capacity(50).shards(1).build());
    for k in 0..500 {
        cache.insert(k, k * 2);
    }
    let log = taken(&log);
    let stats = cache.stats();
    assert!(stats.evictions >= 450, "{stats:?}");
    assert_eq!(log.len() as u64, stats.evictions);
    let survivors: BTreeSet<u64> = cache.iter().map(|(k, _)| k).collect();
    for (k, v, cause) in &log {
        assert_eq!((*v, *cause), (k * 2, RemovalCause::Size));
        assert!(
            !survivors.contains(k),
            "key {k} reported evicted but still cached"
        );
    }
    assert_eq!(
        survivors.len() + log.len(),
        500,
        "every key is either cached or reported"
    );
}

#[test]
fn listener_runs_outside_the_lock_on_the_removing_thread() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let myself: Arc<std::sync::OnceLock<std::sync::Weak<Cache<u64, u64>>>> = Arc::default();
    let cache: Arc<Cache<u64, u64>> = {
        let (seen, myself) = (Arc::clone(&seen), Arc::clone(&myself));
        Arc::new(
            Cache::builder()
                .shards(1)
                .eviction_listener(move |k, v, cause| {
                    // Calls back into the very shard that removed the entry: with its lock still
                    // held this would deadlock.
                    let cache = myself
                        .get()
                        .and_then(std::sync::Weak::upgrade)
                        .expect("alive");
                    let reread = cache.get(&k);
                    cache.insert(k + 1000, v);
                    let me = std::thread::current().id();
                    seen.lock().unwrap().push((me, k, cause, reread));
                })
                .build(),
        )
    };
    myself.set(Arc::downgrade(&cache)).unwrap();
    cache.insert(1, 1);
    let me = std::thread::current().id();
    cache.purge(&1);
    let other = std::thread::spawn({
        let cache = Arc::clone(&cache);
        move || {
            cache.insert(2, 2);
            cache.insert(2, 3);
            std::thread::current().id()
        }
    })
    .join()
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    // The removal is visible when the listener runs: it no longer reads the old value.
    assert_eq!(
        seen,
        [
            (me, 1, RemovalCause::Purged, None),
            (other, 2, RemovalCause::Replaced, Some(3))
        ]
    );
    assert_eq!(
        cache.get(&1001),
        Some(1),
        "the listener's own insert landed"
    );
}

#[test]
fn without_a_listener_keys_and_values_need_not_be_clone() {
    struct Opaque(u64);
    let cache: Cache<u64, Opaque> = Cache::new(100);
    for k in 0..10 {
        cache.insert(k, Opaque(k));
    }
    cache.retain(|_, v| v.0 % 2 == 0);
    assert!(!cache.contains_key(&1) && cache.contains_key(&2));
}

/// Listener-visible eviction is not a write: it leaves the key's generation where it was, so a
/// lease taken before it is still good when no write came (the value read after the lease is as
/// fresh as any), and a purge after the eviction still fences it (I4: the key is absent).
#[test]
fn eviction_seen_by_the_listener_keeps_fences_closed() {
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    let cache = exact_slots()
        .max_capacity(8)
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .build();
    cache.insert(0, 0);
    let fenced = cache.lease(&0);
    for k in 1..100 {
        cache.insert(k, k);
    }
    assert!(
        taken(&log).contains(&(0, 0, RemovalCause::Size)),
        "key 0 was evicted"
    );
    assert_eq!(cache.peek(&0), None);
    cache.purge(&0);
    assert!(cache.save_with_lease(0, 7, fenced).unwrap().is_stale());
    // Eviction alone never refuses a save: no write of key 500 came between lease and save.
    cache.insert(500, 500);
    let lease = cache.lease(&500);
    for k in 1000..1100 {
        cache.insert(k, k);
    }
    assert!(
        taken(&log)
            .iter()
            .any(|(k, _, c)| *k == 500 && *c == RemovalCause::Size)
    );
    assert!(
        cache.save_with_lease(500, 501, lease).unwrap().is_stored(),
        "eviction is not a write"
    );
}

// ---- peek -------------------------------------------------------------------------------------

#[test]
fn peek_reads_live_values_without_counting() {
    let clock = ManualClock::new();
    let cache: Cache<u64, u64> = Cache::builder().clock(clock.clone()).build();
    cache.insert(1, 10);
    cache.insert_with_ttl(2, 20, secs(5));
    assert_eq!(
        (cache.peek(&1), cache.peek(&2), cache.peek(&3)),
        (Some(10), Some(20), None)
    );
    clock.advance(secs(5));
    assert_eq!(cache.peek(&2), None, "never an expired value");
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (0, 0));
}

// ---- get_many ---------------------------------------------------------------------------------

#[test]
fn get_many_returns_values_in_key_order_and_counts_each_lookup() {
    let cache: Cache<u64, u64> = Cache::new(100);
    cache.insert(1, 10);
    cache.insert(3, 30);
    assert_eq!(
        cache.get_many(&[3, 2, 1, 3]),
        [Some(30), None, Some(10), Some(30)]
    );
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (3, 1));
    let strings: Cache<String, u64> = Cache::new(10);
    strings.insert("a".into(), 1);
    assert_eq!(
        strings.get_many(["a", "b"]),
        [Some(1), None],
        "borrowed keys"
    );
}

// ---- get_many_or_load -------------------------------------------------------------------------

#[test]
fn batch_loader_loads_only_the_missing_keys_in_one_call() {
    let cache: Cache<u64, String> = Cache::new(100);
    cache.insert(2, "cached".into());
    let calls = AtomicUsize::new(0);
    let values = cache
        .get_many_or_load(&[1, 2, 3, 1], |keys| {
            calls.fetch_add(1, Ordering::Relaxed);
            assert_eq!(keys, [1, 3], "each missing key once, in order");
            Ok::<_, ()>(keys.iter().map(|k| format!("row {k}")).collect())
        })
        .unwrap();
    assert_eq!(values, ["row 1", "cached", "row 3", "row 1"]);
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    assert_eq!(cache.get(&3).as_deref(), Some("row 3"));
    // All cached: the loader is not called.
    let values = cache.get_many_or_load(&[1, 3], |_| -> Result<Vec<String>, ()> { unreachable!() });
    assert_eq!(values.unwrap(), ["row 1", "row 3"]);
}

#[test]
fn batch_loader_error_caches_nothing() {
    let cache: Cache<u64, u64> = Cache::new(100);
    let err = cache.get_many_or_load(&[1, 2], |_| Err::<Vec<u64>, _>("db down"));
    assert_eq!(err, Err("db down"));
    assert_eq!(cache.get_many(&[1, 2]), [None, None]);
    // The flights were abandoned, not left pending: a later load runs.
    assert_eq!(cache.get_or_load(1, |_| Ok::<_, ()>(5)), Ok(5));
}

/// Single-flight per key: a `get_or_load` of a key the batch is loading waits for the batch's
/// value instead of loading it again.
#[test]
fn batch_loader_is_single_flight_per_key() {
    let cache: Arc<Cache<u64, u64>> = Arc::new(Cache::new(100));
    let other_loads = Arc::new(AtomicUsize::new(0));
    let mut waiter = None;
    let values = cache
        .get_many_or_load(&[7, 8], |keys| {
            let misses = cache.stats().misses;
            let (c, loads) = (Arc::clone(&cache), Arc::clone(&other_loads));
            waiter = Some(std::thread::spawn(move || {
                c.get_or_load(8, |_| {
                    loads.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, ()>(0)
                })
            }));
            // The other caller has missed: it counts its miss in the critical section where it
            // finds this batch's flight for key 8, which stays registered until we return.
            let t0 = std::time::Instant::now();
            while cache.stats().misses == misses {
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "the other caller never missed"
                );
                std::thread::yield_now();
            }
            Ok::<_, ()>(keys.iter().map(|k| k * 100).collect())
        })
        .unwrap();
    assert_eq!(values, [700, 800]);
    assert_eq!(
        waiter.unwrap().join().unwrap(),
        Ok(800),
        "the waiter got the batch's value"
    );
    assert_eq!(
        other_loads.load(Ordering::Relaxed),
        0,
        "key 8 was loaded once"
    );
}

/// I1/I7 for batches: a purge of a key while the batch loads it fences that key's save; the
/// other keys are saved.
#[test]
fn batch_loader_save_is_fenced_by_a_purge_during_the_load() {
    // Keys 1 and 2 in distinct generation slots: with a random hasher they may share one, and
    // the purge of 2 would then fence 1's save too (a spurious fence, allowed, but not this
    // test's subject).
    let cache = exact_slots().max_capacity(100).build();
    let values = cache
        .get_many_or_load(&[1, 2], |keys| {
            cache.purge(&2); // the source changed after the batch read row 2
            Ok::<_, ()>(keys.to_vec())
        })
        .unwrap();
    assert_eq!(values, [1, 2], "the caller still gets what it read");
    assert_eq!(
        cache.get_many(&[1, 2]),
        [Some(1), None],
        "the fenced value is not cached"
    );
    assert_eq!(cache.stats().stale_rejected, 1);
}

// ---- iter -------------------------------------------------------------------------------------

#[test]
fn iter_yields_every_live_entry_once_and_never_an_expired_one() {
    let clock = ManualClock::new();
    let cache: Cache<u64, u64> = Cache::builder().clock(clock.clone()).shards(4).build();
    for k in 0..100 {
        if k % 10 == 0 {
            cache.insert_with_ttl(k, k, secs(1));
        } else {
            cache.insert(k, k);
        }
    }
    let all: BTreeMap<u64, u64> = cache.iter().collect();
    assert_eq!(all.len(), 100);
    clock.advance(secs(1));
    let live: Vec<(u64, u64)> = cache.iter().collect();
    assert_eq!(live.len(), 90);
    assert!(live.iter().all(|(k, v)| k % 10 != 0 && k == v));
    assert_eq!(
        (cache.stats().hits, cache.stats().misses),
        (0, 0),
        "not an access"
    );
}

/// An entry that expires after its shard was copied but before the iterator reaches it is not
/// yielded: the deadline is checked when `next` returns the entry.
#[test]
fn iter_checks_deadlines_when_it_yields() {
    let clock = ManualClock::new();
    let cache: Cache<u64, u64> = Cache::builder().clock(clock.clone()).shards(1).build();
    for k in 0..10 {
        cache.insert_with_ttl(k, k, secs(1 + k));
    }
    let mut iter = cache.iter();
    let first = iter.next().expect("ten live entries");
    clock.advance(secs(5)); // keys 0..=4 expire (key k at 1 + k seconds)
    let rest: Vec<(u64, u64)> = iter.collect();
    assert!(rest.iter().all(|(k, _)| *k >= 5), "{rest:?}");
    assert_eq!(rest.len(), 9 - (0..5).filter(|k| *k != first.0).count());
}

#[test]
fn iter_is_weakly_consistent_under_concurrent_writes() {
    let cache: Arc<Cache<u64, u64>> = Arc::new(Cache::builder().shards(8).build());
    for k in 0..1000 {
        cache.insert(k, k);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (cache, stop) = (Arc::clone(&cache), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut k = 10_000;
            while !stop.load(Ordering::Relaxed) {
                cache.insert(k, k);
                cache.purge(&(k - 1));
                k += 1;
            }
        })
    };
    for _ in 0..20 {
        let seen: Vec<u64> = cache
            .iter()
            .map(|(k, v)| {
                assert_eq!(k, v);
                k
            })
            .collect();
        let unique: BTreeSet<u64> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "an entry was yielded twice");
        assert!(
            (0..1000).all(|k| unique.contains(&k)),
            "a stable entry was missed"
        );
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
}

// ---- retain -----------------------------------------------------------------------------------

#[test]
fn retain_removes_what_the_predicate_refuses_and_reports_it() {
    let (cache, log) = listened(|b| b.build());
    for k in 0..20 {
        cache.insert(k, k * 10);
    }
    assert_eq!(cache.retain(|k, v| k % 3 == 0 && *v == k * 10), 13);
    let left: BTreeSet<u64> = cache.iter().map(|(k, _)| k).collect();
    assert_eq!(left, (0..20).filter(|k| k % 3 == 0).collect());
    let mut removed = taken(&log);
    removed.sort_by_key(|e| e.0);
    assert_eq!(
        removed,
        (0..20)
            .filter(|k| k % 3 != 0)
            .map(|k| (k, k * 10, RemovalCause::Purged))
            .collect::<Vec<_>>()
    );
    assert_eq!(cache.stats().purges, 13);
}

/// I1/I2 for `retain`: every key it removes is fenced like a purge; keys it keeps, and keys it
/// never saw, are not written.
#[test]
fn retain_fences_every_key_it_removes() {
    let cache = exact_slots().build();
    for k in 0..10 {
        cache.insert(k, k);
    }
    let leases: Vec<_> = (0..12).map(|k| cache.lease(&k)).collect();
    cache.retain(|k, _| *k >= 5);
    for (k, lease) in (0..12).zip(leases) {
        let saved = cache.save_with_lease(k, 100 + k, lease);
        if k < 5 {
            assert!(
                saved.unwrap().is_stale(),
                "key {k} removed by retain must be fenced"
            );
        } else {
            assert!(
                saved.unwrap().is_stored(),
                "key {k} was not removed, its lease stays good"
            );
        }
    }
}

/// I7 for `retain`: a load in flight for a key retain removes is detached; a caller arriving
/// after retain returned loads afresh rather than receiving the old load's value.
#[test]
fn retain_detaches_a_load_in_flight_for_a_removed_key() {
    let clock = ManualClock::new();
    let cache: Arc<Cache<u64, u64>> = Arc::new(Cache::builder().clock(clock.clone()).build());
    // A live value for key 1 while a load for it runs: the load of an expired value's key.
    cache.insert_with_ttl(1, 1, secs(1));
    clock.advance(secs(1));
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let leader = {
        let cache = Arc::clone(&cache);
        std::thread::spawn(move || {
            cache.get_or_load(1, |_| {
                started_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                Ok::<_, ()>(111) // read before the write below
            })
        })
    };
    started_rx.recv().unwrap();
    cache.insert(1, 2); // the source changed; the cache holds the new value
    assert_eq!(cache.retain(|_, v| *v != 2), 1); // and `retain` removes it
    // After retain returned: a fresh load, not the in-flight one.
    assert_eq!(cache.get_or_load(1, |_| Ok::<_, ()>(3)), Ok(3));
    go_tx.send(()).unwrap();
    assert_eq!(leader.join().unwrap(), Ok(111));
    assert_eq!(
        cache.get(&1),
        Some(3),
        "the detached load's stale value was not saved"
    );
}

#[test]
fn retain_removes_expired_entries_without_showing_them() {
    let clock = ManualClock::new();
    let (cache, log) = listened(|b| b.clock(clock.clone()).build());
    cache.insert_with_ttl(1, 1, secs(1));
    cache.insert(2, 2);
    let lease = cache.lease(&1);
    clock.advance(secs(1));
    let mut shown = Vec::new();
    assert_eq!(
        cache.retain(|k, _| {
            shown.push(*k);
            true
        }),
        0
    );
    assert_eq!(shown, [2], "the predicate never sees an expired entry");
    assert_eq!(taken(&log), [(1, 1, RemovalCause::Expired)]);
    assert_eq!(cache.entry_count(), 1);
    // Expiry is not a write: the lease is still good, until a write fences it.
    cache.purge(&1);
    assert!(cache.save_with_lease(1, 9, lease).unwrap().is_stale());
}

// ---- Expiry -----------------------------------------------------------------------------------

struct ByValue;

impl Expiry<u64, u64> for ByValue {
    fn expire_after_create(&self, _: &u64, value: &u64) -> Option<Duration> {
        (*value > 0).then(|| secs(*value))
    }
}

struct UpdateResets;

impl Expiry<u64, u64> for UpdateResets {
    fn expire_after_create(&self, _: &u64, value: &u64) -> Option<Duration> {
        Some(secs(*value))
    }
    fn expire_after_update(&self, _: &u64, value: &u64, _: Option<Duration>) -> Option<Duration> {
        Some(secs(*value))
    }
}

#[test]
fn expiry_sets_each_entrys_ttl_on_create_and_keeps_it_on_update_by_default() {
    let clock = ManualClock::new();
    let cache: Cache<u64, u64> = Cache::builder()
        .clock(clock.clone())
        .expiry(ByValue)
        .build();
    cache.insert(1, 2); // 2 s
    cache.insert(2, 0); // no limit
    cache.insert(3, 10); // 10 s
    clock.advance(secs(1));
    cache.insert(1, 50); // an update keeps what was left: 1 s
    clock.advance(secs(1));
    assert_eq!(cache.get_many(&[1, 2, 3]), [None, Some(0), Some(10)]);
    assert!(
        cache.iter().all(|(k, _)| k != 1),
        "iteration never shows an expired value"
    );
    clock.advance(secs(8));
    assert_eq!(cache.get_many(&[2, 3]), [Some(0), None]);

    let cache: Cache<u64, u64> = Cache::builder()
        .clock(clock.clone())
        .expiry(UpdateResets)
        .build();
    cache.insert(1, 2);
    clock.advance(secs(1));
    cache.insert(1, 5); // reset: 5 s from now
    clock.advance(secs(4));
    assert_eq!(cache.get(&1), Some(5));
    clock.advance(secs(1));
    assert_eq!(cache.get(&1), None);
}

#[test]
fn expiry_never_outlives_the_caches_ttl_and_applies_to_saves_and_loads() {
    let clock = ManualClock::new();
    let cache: Cache<u64, u64> = Cache::builder()
        .clock(clock.clone())
        .time_to_live(secs(3))
        .expiry(ByValue)
        .build();
    cache.insert(1, 100); // expiry says 100 s, the cache 3 s
    let lease = cache.lease(&2);
    assert!(cache.save_with_lease(2, 1, lease).unwrap().is_stored()); // 1 s
    assert_eq!(cache.get_or_load(3, |_| Ok::<_, ()>(2)), Ok(2)); // 2 s
    clock.advance(secs(1));
    assert_eq!(cache.get_many(&[1, 2, 3]), [Some(100), None, Some(2)]);
    clock.advance(secs(2));
    assert_eq!(cache.get_many(&[1, 3]), [None, None]);
}

/// Expiry-driven expiry is not a write, and does not let a later write's fence open.
#[test]
fn expiry_driven_removal_keeps_fences() {
    let clock = ManualClock::new();
    let (cache, log) = listened(|b| b.clock(clock.clone()).expiry(ByValue).build());
    cache.insert(1, 1);
    let lease = cache.lease(&1);
    clock.advance(secs(1));
    cache.insert(1, 7); // a write after the expiry: fences the lease
    assert_eq!(taken(&log), [(1, 1, RemovalCause::Expired)]);
    assert!(cache.save_with_lease(1, 2, lease).unwrap().is_stale());
    assert_eq!(cache.get(&1), Some(7));
}

// ---- time to idle -----------------------------------------------------------------------------

#[test]
fn time_to_idle_expires_entries_not_read_and_keeps_those_read() {
    let clock = ManualClock::new();
    let cache: Cache<u64, u64> = Cache::builder()
        .clock(clock.clone())
        .time_to_idle(secs(8))
        .build();
    cache.insert(1, 1);
    cache.insert(2, 2);
    cache.insert(3, 3);
    for _ in 0..5 {
        clock.advance(secs(6));
        assert_eq!(cache.get(&1), Some(1)); // read every 6 s: stays
        assert!(matches!(cache.get_or_lease(&2), Lookup::Hit(2))); // another hit path
    }
    assert_eq!(cache.peek(&3), None, "not read for 30 s");
    // A peek is not a read: it does not keep an entry alive.
    cache.insert(4, 4);
    clock.advance(secs(6));
    assert_eq!(cache.peek(&4), Some(4));
    clock.advance(secs(2));
    assert_eq!(cache.get(&4), None);
    // An entry read at t lives at least until t + tti * 7 / 8 and at most until t + tti.
    cache.insert(5, 5);
    clock.advance(secs(4));
    assert_eq!(cache.get(&5), Some(5));
    clock.advance(secs(7));
    assert_eq!(cache.peek(&5), Some(5));
    clock.advance(secs(1));
    assert_eq!(cache.peek(&5), None);
}

#[test]
fn time_to_idle_never_extends_past_the_ttl() {
    let clock = ManualClock::new();
    let cache: Cache<u64, u64> = Cache::builder()
        .clock(clock.clone())
        .time_to_idle(secs(4))
        .time_to_live(secs(10))
        .build();
    cache.insert(1, 1);
    for _ in 0..3 {
        clock.advance(secs(3));
        assert_eq!(cache.get(&1), Some(1));
    }
    clock.advance(secs(1)); // 10 s since the insert, 1 s since the last read
    assert_eq!(cache.get(&1), None);
    // Loaded values are idle-timed too.
    assert_eq!(cache.get_or_load(2, |_| Ok::<_, ()>(2)), Ok(2));
    clock.advance(secs(4));
    assert_eq!(cache.peek(&2), None);
}

/// Idle expiry is not a write: a lease taken before it stays as good as it was, and a purge
/// after it still fences (I4).
#[test]
fn idle_expiry_keeps_fences() {
    let clock = ManualClock::new();
    let (cache, log) = listened(|b| b.clock(clock.clone()).time_to_idle(secs(2)).build());
    cache.insert(1, 1);
    let fenced = cache.lease(&1);
    clock.advance(secs(2));
    assert_eq!(cache.get(&1), None);
    cache.purge(&1); // removes the expired entry and fences
    assert_eq!(taken(&log), [(1, 1, RemovalCause::Expired)]);
    assert!(cache.save_with_lease(1, 5, fenced).unwrap().is_stale());
    let lease = cache.lease(&1);
    assert!(cache.save_with_lease(1, 6, lease).unwrap().is_stored());
    assert_eq!(cache.get(&1), Some(6));
}

// ---- stale grace (issue 18, point 2, in the L1) ---------------------------------------------

mod stale_grace {
    use super::{Exact, exact_slots, secs};
    use leasecache::{Cache, ManualClock, MaybeStale};
    use std::cell::Cell;
    use std::future::Future;
    use std::pin::{Pin, pin};
    use std::task::{Context, Poll, Waker};

    fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    /// A cache with a stale grace of `grace` seconds and a manual clock.
    fn graced(grace: u64, clock: &ManualClock) -> Cache<u64, u64, Exact> {
        exact_slots()
            .clock(clock.clone())
            .stale_grace(secs(grace))
            .build()
    }

    /// An opted-in read of key 1, polled once: `Ready(Ok(Stale))` if served stale, `Pending`
    /// if it joined the load in flight (it is dropped then: it leaves the flight alone), and
    /// `Ready(Err)` if it found no load in flight and would have loaded itself.
    fn opt_in(cache: &Cache<u64, u64, Exact>) -> Poll<Result<MaybeStale<u64>, ()>> {
        let read = pin!(cache.get_or_load_allow_stale_async(1, |_| async { Err(()) }));
        poll_once(read)
    }

    /// Whether a plain `get_or_load_async` of key 1, polled once, waits for the load in flight.
    fn plain_waits(cache: &Cache<u64, u64, Exact>) -> bool {
        let read = pin!(cache.get_or_load_async(1, |_| async { Err::<u64, ()>(()) }));
        poll_once(read).is_pending()
    }

    /// The loader of a leader that stays inside its load until `release` is set.
    async fn held(release: &Cell<bool>, value: u64) -> Result<u64, ()> {
        std::future::poll_fn(|_| {
            if release.get() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        Ok(value)
    }

    fn stale(value: u64, ago: u64) -> Poll<Result<MaybeStale<u64>, ()>> {
        Poll::Ready(Ok(MaybeStale::Stale {
            value,
            replaced_ago: secs(ago),
        }))
    }

    #[test]
    fn only_opted_in_callers_get_the_replaced_value_while_one_caller_reloads() {
        let clock = ManualClock::new();
        let cache = graced(5, &clock);
        cache.insert(1, 10);
        assert!(cache.purge(&1));
        clock.advance(secs(1));
        // No load in flight: an opted-in caller loads (fresh), it is never served stale.
        assert_eq!(opt_in(&cache), Poll::Ready(Err(())));
        let release = Cell::new(false);
        let mut leader = pin!(cache.get_or_load_async(1, |_| held(&release, 11)));
        assert!(poll_once(leader.as_mut()).is_pending(), "inside its load");
        assert_eq!(opt_in(&cache), stale(10, 1));
        assert_eq!(opt_in(&cache), stale(10, 1), "as often as asked");
        // Every other read behaves as without a grace.
        assert!(plain_waits(&cache));
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.peek(&1), None);
        assert!(!cache.contains_key(&1));
        release.set(true);
        assert_eq!(poll_once(leader.as_mut()), Poll::Ready(Ok(11)));
        assert_eq!(
            opt_in(&cache),
            Poll::Ready(Ok(MaybeStale::Fresh(11))),
            "a hit is fresh"
        );
        assert_eq!(cache.stats().stale_served, 2);
    }

    #[test]
    fn never_older_than_the_value_the_latest_purge_replaced() {
        let clock = ManualClock::new();
        let cache = graced(60, &clock);
        let release = Cell::new(false);
        // A second purge of a present value replaces the stashed one.
        cache.insert(1, 10);
        cache.purge(&1);
        cache.insert(1, 20);
        cache.purge(&1);
        let mut leader = pin!(cache.get_or_load_async(1, |_| held(&release, 21)));
        assert!(poll_once(leader.as_mut()).is_pending());
        assert_eq!(opt_in(&cache), stale(20, 0));
        // A purge that finds the key empty: the latest purge replaced nothing.
        assert!(!cache.purge(&1));
        let mut second = pin!(cache.get_or_load_async(1, |_| held(&release, 22)));
        assert!(
            poll_once(second.as_mut()).is_pending(),
            "the purge detached the first load"
        );
        assert!(
            opt_in(&cache).is_pending(),
            "joins the load: no stale value"
        );
        release.set(true);
        assert_eq!(poll_once(leader.as_mut()), Poll::Ready(Ok(21)));
        assert_eq!(poll_once(second.as_mut()), Poll::Ready(Ok(22)));
        // An insert ends it too.
        cache.insert(1, 30);
        cache.purge(&1);
        cache.insert(1, 31);
        cache.flush(); // (flush: the key is empty again, and the stash with it)
        release.set(false);
        let mut third = pin!(cache.get_or_load_async(1, |_| held(&release, 32)));
        assert!(poll_once(third.as_mut()).is_pending());
        assert!(opt_in(&cache).is_pending());
        release.set(true);
        assert_eq!(poll_once(third.as_mut()), Poll::Ready(Ok(32)));
    }

    #[test]
    fn a_value_stored_after_the_purge_ends_it_even_once_that_value_is_gone() {
        let clock = ManualClock::new();
        let cache: Cache<u64, u64, Exact> = exact_slots()
            .clock(clock.clone())
            .time_to_live(secs(2))
            .stale_grace(secs(60))
            .build();
        cache.insert(1, 10);
        cache.purge(&1);
        // The reload lands: its value is stored under the purge's generation...
        assert_eq!(cache.get_with(1, |_| 11), 11);
        // ...and expires. Expiry is not a write: the key's generation is still the purge's.
        clock.advance(secs(3));
        assert_eq!(cache.get(&1), None);
        let release = Cell::new(false);
        let mut leader = pin!(cache.get_or_load_async(1, |_| held(&release, 12)));
        assert!(poll_once(leader.as_mut()).is_pending());
        assert!(
            opt_in(&cache).is_pending(),
            "10 is older than 11, which was stored after the purge"
        );
        release.set(true);
        assert_eq!(poll_once(leader.as_mut()), Poll::Ready(Ok(12)));
    }

    #[test]
    fn never_after_the_grace() {
        let clock = ManualClock::new();
        let cache = graced(5, &clock);
        cache.insert(1, 10);
        cache.purge(&1);
        let release = Cell::new(false);
        let mut leader = pin!(cache.get_or_load_async(1, |_| held(&release, 11)));
        assert!(poll_once(leader.as_mut()).is_pending());
        clock.advance(secs(5) - std::time::Duration::from_nanos(1));
        assert!(matches!(
            opt_in(&cache),
            Poll::Ready(Ok(MaybeStale::Stale { value: 10, .. }))
        ));
        clock.advance(std::time::Duration::from_nanos(1));
        assert!(opt_in(&cache).is_pending(), "the grace is over");
        release.set(true);
        assert_eq!(poll_once(leader.as_mut()), Poll::Ready(Ok(11)));
        assert_eq!(cache.stats().stale_served, 1);
    }

    #[test]
    fn eviction_and_expiry_keep_nothing() {
        let clock = ManualClock::new();
        let cache: Cache<u64, u64, Exact> = exact_slots()
            .clock(clock.clone())
            .max_capacity(1)
            .stale_grace(secs(60))
            .build();
        let release = Cell::new(false);
        // Expired, then removed by a purge (reported as expired: nothing to keep).
        cache.insert_with_ttl(1, 10, secs(1));
        clock.advance(secs(2));
        assert!(!cache.purge(&1));
        let mut leader = pin!(cache.get_or_load_async(1, |_| held(&release, 11)));
        assert!(poll_once(leader.as_mut()).is_pending());
        assert!(opt_in(&cache).is_pending());
        release.set(true);
        assert_eq!(poll_once(leader.as_mut()), Poll::Ready(Ok(11)));
        // Evicted for size by another key's insert.
        cache.insert(1, 20);
        cache.insert(2, 2);
        assert_eq!(cache.get(&1), None, "evicted");
        release.set(false);
        let mut leader = pin!(cache.get_or_load_async(1, |_| held(&release, 21)));
        assert!(poll_once(leader.as_mut()).is_pending());
        assert!(opt_in(&cache).is_pending());
        release.set(true);
        assert_eq!(poll_once(leader.as_mut()), Poll::Ready(Ok(21)));
        assert_eq!(cache.stats().stale_served, 0);
    }

    #[test]
    fn without_a_grace_nothing_is_kept() {
        let cache: Cache<u64, u64, Exact> = exact_slots().build();
        cache.insert(1, 10);
        cache.purge(&1);
        let release = Cell::new(false);
        let mut leader = pin!(cache.get_or_load_async(1, |_| held(&release, 11)));
        assert!(poll_once(leader.as_mut()).is_pending());
        assert!(opt_in(&cache).is_pending());
        release.set(true);
        assert_eq!(poll_once(leader.as_mut()), Poll::Ready(Ok(11)));
    }

    /// The stale-read oracle under threads: a caller that did not opt in never reads a value
    /// loaded before a purge that completed before its call; an opted-in caller's stale value
    /// is never older than the one the latest purge replaced.
    #[test]
    fn oracle_under_threads() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
        let cache: Arc<Cache<u64, u64>> = Arc::new(Cache::builder().stale_grace(secs(60)).build());
        let truth = Arc::new(AtomicU64::new(0));
        let purged = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|i| {
                let (cache, truth, purged, done) =
                    (cache.clone(), truth.clone(), purged.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut stale = 0;
                    while !done.load(SeqCst) {
                        let floor = purged.load(SeqCst);
                        let load = |_| {
                            let v = truth.load(SeqCst);
                            std::thread::yield_now();
                            Ok::<_, ()>(v)
                        };
                        if i % 2 == 0 {
                            match cache.get_or_load_allow_stale(1, load).unwrap() {
                                MaybeStale::Fresh(v) => assert!(v >= floor, "{v} < {floor}"),
                                MaybeStale::Stale { value, .. } => {
                                    assert!(value + 1 >= floor, "stale {value} after {floor}");
                                    stale += 1;
                                }
                            }
                        } else {
                            let v = cache.get_or_load(1, load).unwrap();
                            assert!(v >= floor, "{v} read after purge {floor}");
                        }
                    }
                    stale
                })
            })
            .collect();
        for v in 1..=3_000 {
            truth.store(v, SeqCst);
            cache.purge(&1);
            purged.store(v, SeqCst);
            std::thread::yield_now();
        }
        done.store(true, SeqCst);
        let stale: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        assert_eq!(cache.stats().stale_served, stale);
        eprintln!("stale values served: {stale}");
    }

    /// A value that counts its clones.
    #[derive(Debug)]
    struct Counted(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl Clone for Counted {
        fn clone(&self) -> Self {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Self(self.0.clone())
        }
    }

    /// A stale grace without a listener copies only what purges remove: replacing, evicting,
    /// expiring and flushing copy nothing (they keep nothing).
    #[test]
    fn a_grace_alone_copies_only_what_purges_remove() {
        use std::sync::atomic::Ordering::Relaxed;
        let clones = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let clock = ManualClock::new();
        let cache: Cache<u64, Counted> = Cache::builder()
            .max_capacity(64)
            .time_to_live(secs(10))
            .clock(clock.clone())
            .stale_grace(secs(60))
            .build();
        let v = || Counted(clones.clone());
        for k in 0..1_000 {
            cache.insert(k, v()); // evicts past the capacity
        }
        cache.insert(1, v());
        cache.insert(1, v()); // replaces
        clock.advance(secs(11));
        cache.insert(1, v()); // replaces an expired entry
        cache.flush();
        assert_eq!(
            clones.load(Relaxed),
            0,
            "no copy for evictions, replacements or a flush"
        );
        cache.insert(2, v());
        cache.purge(&2);
        assert_eq!(
            clones.load(Relaxed),
            1,
            "a purge copies the value it removes"
        );
    }
}
