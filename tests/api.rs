//! Black-box tests of every public operation and of invariants I1-I8 (DESIGN.md §2), through the
//! public API only. Each test says which invariant it guards; each would fail if it broke.

use leasecache::{Cache, Lookup, ManualClock, SaveError};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::mpsc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

fn cache(capacity: u64) -> Cache<u64, String> {
    Cache::new(capacity)
}

fn lease_on_miss<V: Clone>(cache: &Cache<u64, V>, key: u64) -> leasecache::Lease {
    match cache.get_or_lease(&key) {
        Lookup::Miss(lease) => lease,
        Lookup::Hit(_) => panic!("key {key} unexpectedly cached"),
    }
}

/// Spins (yielding, never sleeping) until `done` holds; panics after a generous bound.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..50_000_000u64 {
        if done() {
            return;
        }
        std::thread::yield_now();
    }
    panic!("timed out waiting until {what}");
}

#[test]
fn miss_lease_save_hit() {
    let c = cache(100);
    let lease = lease_on_miss(&c, 1);
    assert_eq!(
        c.save_with_lease(1, "one".into(), lease).unwrap(),
        leasecache::Saved::Stored
    );
    assert_eq!(c.get(&1).as_deref(), Some("one"));
    assert_eq!(c.get_or_lease(&1), Lookup::Hit("one".to_string()));
    assert_eq!(c.entry_count(), 1);
}

#[test]
fn i1_save_after_purge_of_present_key_is_rejected() {
    let c = cache(100);
    c.insert(1, "v1".into());
    let lease = c.lease(&1);
    assert!(c.purge(&1));
    let saved = c.save_with_lease(1, "v1".into(), lease);
    assert_eq!(saved, Ok(leasecache::Saved::Stale));
    assert_eq!(c.get(&1), None);
    assert_eq!(c.stats().stale_rejected, 1);
}

#[test]
fn i1_rejection_is_forever() {
    let c = cache(4);
    let lease = lease_on_miss(&c, 1);
    c.purge(&1);
    // Anything that does not fence: saves under fresh leases, evictions, expiry-free churn.
    for k in 0..1_000 {
        let l = c.lease(&k);
        let _ = c.save_with_lease(k, "x".into(), l);
    }
    let fresh = c.lease(&1);
    assert_eq!(
        c.save_with_lease(1, "fresh".into(), fresh).unwrap(),
        leasecache::Saved::Stored
    );
    c.purge(&1);
    assert!(
        c.save_with_lease(1, "old".into(), lease)
            .unwrap()
            .is_stale()
    );
}

#[test]
fn i2_insert_fences_outstanding_leases() {
    let c = cache(100);
    let lease = lease_on_miss(&c, 1);
    c.insert(1, "new".into());
    assert!(
        c.save_with_lease(1, "old".into(), lease)
            .is_ok_and(leasecache::Saved::is_stale)
    );
    assert_eq!(c.get(&1).as_deref(), Some("new"));
}

#[test]
fn i2_insert_with_ttl_fences_outstanding_leases() {
    let c = cache(100);
    let lease = lease_on_miss(&c, 1);
    c.insert_with_ttl(1, "new".into(), Duration::from_secs(60));
    assert!(
        c.save_with_lease(1, "old".into(), lease)
            .is_ok_and(leasecache::Saved::is_stale)
    );
}

#[test]
fn i2_flush_fences_every_lease_and_drops_everything() {
    let c = cache(100);
    let leases: Vec<_> = (0..50).map(|k| (k, c.lease(&k))).collect();
    for k in 100..150 {
        c.insert(k, "x".into());
    }
    c.flush();
    assert_eq!(c.entry_count(), 0);
    for (k, lease) in leases {
        assert!(
            c.save_with_lease(k, "old".into(), lease)
                .is_ok_and(leasecache::Saved::is_stale),
            "key {k}"
        );
    }
    for k in 100..150 {
        assert_eq!(c.get(&k), None);
    }
}

#[test]
fn i3_no_aba_after_eviction_churn_between_capture_and_save() {
    let c = cache(2);
    c.insert(1, "v1".into());
    let before_purge = c.lease(&1);
    c.purge(&1);
    // Churn: key 1 is saved again and evicted many times; its generation must never return to
    // the value the old lease holds.
    for round in 0..200u64 {
        let l = c.lease(&1);
        assert_ne!(l.generation(), before_purge.generation());
        let _ = c.save_with_lease(1, format!("r{round}"), l);
        c.insert(1000 + round, "evict".into());
        c.insert(2000 + round, "evict".into());
    }
    assert!(c.stats().evictions > 0);
    assert!(
        c.save_with_lease(1, "v1".into(), before_purge)
            .is_ok_and(leasecache::Saved::is_stale)
    );
}

#[test]
fn i3_eviction_does_not_fence_a_current_lease() {
    // The flip side of I3: eviction is not a write, so it must not cost a spurious rejection.
    // Enough generation slots that the keys below do not share one.
    let c = Cache::<u64, String>::builder()
        .max_capacity(1)
        .lease_slots(1 << 16)
        .build();
    c.insert(1, "a".into());
    let lease1 = c.lease(&1);
    for k in 2..10 {
        let l = c.lease(&k);
        let _ = c.save_with_lease(k, "evicting".into(), l); // saves do not fence
    }
    assert!(c.stats().evictions >= 1);
    assert_eq!(
        c.save_with_lease(1, "a2".into(), lease1).unwrap(),
        leasecache::Saved::Stored
    );
}

#[test]
fn i3_generations_only_grow_across_purge_and_flush() {
    let c = cache(10);
    let mut last = c.lease(&7).generation();
    for i in 0..100 {
        if i % 10 == 0 {
            c.flush();
        } else {
            c.purge(&7);
        }
        let now = c.lease(&7).generation();
        assert!(now > last, "generation went from {last:?} to {now:?}");
        last = now;
    }
}

#[test]
fn i4_purge_of_absent_key_fences() {
    let c = cache(100);
    let lease = lease_on_miss(&c, 42);
    assert!(!c.purge(&42), "nothing was cached");
    assert!(
        c.save_with_lease(42, "old".into(), lease)
            .is_ok_and(leasecache::Saved::is_stale)
    );
    assert_eq!(c.stats().purges, 1);
}

#[test]
fn i5_purging_absent_keys_leaves_no_entries() {
    // The memory side of I5 (resident memory stays flat) is measured in tests/memory.rs.
    let c = cache(1000);
    for k in 0..100_000 {
        assert!(!c.purge(&k));
    }
    assert_eq!((c.entry_count(), c.weighted_size()), (0, 0));
}

#[test]
fn i6_hit_path_ignores_generations() {
    // One generation slot for every key: a write to key 2 fences leases on key 1 (a spurious but
    // safe rejection), yet key 1's cached value stays visible: `get` never looks at generations.
    let c = Cache::<u64, String>::builder()
        .max_capacity(100)
        .shards(1)
        .lease_slots(1)
        .build();
    let lease = c.lease(&1);
    assert_eq!(
        c.save_with_lease(1, "one".into(), lease).unwrap(),
        leasecache::Saved::Stored
    );
    let lease = c.lease(&1);
    c.purge(&2);
    assert_eq!(c.get(&1).as_deref(), Some("one"));
    assert!(
        c.save_with_lease(1, "again".into(), lease)
            .is_ok_and(leasecache::Saved::is_stale)
    );
}

#[test]
fn i8_lease_for_another_key_is_rejected() {
    let c = cache(100);
    let lease = c.lease(&1);
    let err = c.save_with_lease(2, "x".into(), lease).unwrap_err();
    assert!(matches!(err, SaveError::ForeignLease { .. }));
    assert_eq!(err.into_value(), "x");
    assert_eq!(c.get(&2), None);
}

#[test]
fn i8_lease_from_another_cache_is_rejected() {
    let a = cache(100);
    let b = cache(100);
    // Both caches are fresh: their generations are equal numbers, which must not be enough.
    let lease = a.lease(&1);
    assert_eq!(lease.generation(), b.lease(&1).generation());
    assert!(matches!(
        b.save_with_lease(1, "x".into(), lease),
        Err(SaveError::ForeignLease { .. })
    ));
    assert_eq!(b.get(&1), None);
}

#[test]
fn lease_and_cache_are_thread_safe() {
    fn assert_send_sync_static<T: Send + Sync + 'static>() {}
    assert_send_sync_static::<leasecache::Lease>();
    assert_send_sync_static::<Cache<String, Arc<Vec<u8>>>>();
}

#[test]
fn borrowed_lookups() {
    let c: Cache<String, u32> = Cache::new(10);
    c.insert("a".to_string(), 1);
    assert_eq!(c.get("a"), Some(1));
    assert!(c.contains_key("a"));
    assert!(c.get_or_lease("a").is_hit());
    let lease = c.lease("b");
    assert_eq!(
        c.save_with_lease("b".to_string(), 2, lease).unwrap(),
        leasecache::Saved::Stored
    );
    assert!(c.purge("a"));
    assert!(!c.contains_key("a"));
}

#[test]
fn ttl_entries_expire_and_are_never_returned() {
    let clock = ManualClock::new();
    let c: Cache<u64, String> = Cache::builder()
        .max_capacity(100)
        .time_to_live(Duration::from_secs(10))
        .clock(clock.clone())
        .build();
    c.insert(1, "default ttl".into());
    c.insert_with_ttl(2, "long ttl".into(), Duration::from_secs(100));
    let lease = lease_on_miss(&c, 3);
    assert_eq!(
        c.save_with_lease(3, "saved".into(), lease).unwrap(),
        leasecache::Saved::Stored
    );
    clock.advance(Duration::from_secs(10));
    assert_eq!(c.get(&1), None);
    assert_eq!(c.get(&3), None, "saves get the default TTL");
    assert_eq!(c.get(&2).as_deref(), Some("long ttl"));
    assert!(!c.purge(&1), "an expired value is not a live value");
    // An expired key is a miss, and can be refilled under a lease.
    let lease = lease_on_miss(&c, 3);
    assert_eq!(
        c.save_with_lease(3, "refilled".into(), lease).unwrap(),
        leasecache::Saved::Stored
    );
    assert_eq!(c.get(&3).as_deref(), Some("refilled"));
    assert!(c.stats().expirations >= 1);
}

#[test]
fn eviction_removes_an_expired_entry_whatever_its_hits() {
    let clock = ManualClock::new();
    let c: Cache<u64, u64> = Cache::builder()
        .max_capacity(2)
        .shards(1)
        .clock(clock.clone())
        .build();
    c.insert_with_ttl(1, 1, Duration::from_secs(1));
    for _ in 0..3 {
        assert_eq!(c.get(&1), Some(1)); // a hot entry: the policy would keep it...
    }
    c.insert(2, 2);
    clock.advance(Duration::from_secs(2)); // ...but it expired
    c.insert(3, 3);
    // Had eviction kept the hot but expired entry, one of the live ones would have gone.
    assert_eq!((c.get(&2), c.get(&3)), (Some(2), Some(3)));
    assert_eq!(c.stats().expirations, 1);
}

#[test]
fn capacity_by_entries_and_by_weight() {
    let c = cache(100);
    for k in 0..10_000 {
        c.insert(k, "x".into());
    }
    assert!(c.entry_count() <= 100);
    assert!(c.stats().evictions >= 9_900);

    let w: Cache<u64, Vec<u8>> = Cache::builder()
        .max_capacity(1_000)
        .shards(1)
        .weigher(|_k, v: &Vec<u8>| v.len() as u32)
        .build();
    for k in 0..100 {
        w.insert(k, vec![0; 64]);
    }
    assert!(w.weighted_size() <= 1_000);
    assert!(w.entry_count() <= 1_000 / 64);
    w.insert(1_000, vec![0; 2_000]); // heavier than the whole cache: not stored
    assert_eq!(w.get(&1_000), None);
}

#[test]
fn zero_capacity_stores_nothing_but_still_fences() {
    let c = cache(0);
    let lease = c.lease(&1);
    assert_eq!(
        c.save_with_lease(1, "x".into(), lease).unwrap(),
        leasecache::Saved::Stored
    );
    assert_eq!(c.get(&1), None);
    let lease = c.lease(&1);
    c.insert(1, "y".into());
    assert!(
        c.save_with_lease(1, "x".into(), lease)
            .is_ok_and(leasecache::Saved::is_stale)
    );
}

#[test]
fn get_or_load_loads_once_then_hits() {
    let c = cache(100);
    let mut calls = 0;
    for _ in 0..3 {
        let v = c.get_or_load(5, |k| {
            calls += 1;
            Ok::<_, ()>(format!("row {k}"))
        });
        assert_eq!(v.unwrap(), "row 5");
    }
    assert_eq!(calls, 1);
    let s = c.stats();
    assert_eq!((s.loads, s.saves, s.hits, s.misses), (1, 1, 2, 1));
}

#[test]
fn get_or_load_error_reaches_its_caller_and_nothing_is_cached() {
    let c = cache(100);
    assert_eq!(
        c.get_or_load(1, |_| Err::<String, _>("db down")),
        Err("db down")
    );
    assert_eq!(c.get(&1), None);
    assert_eq!(c.stats().load_errors, 1);
    assert_eq!(
        c.get_or_load(1, |_| Ok::<_, ()>("ok".to_string())).unwrap(),
        "ok"
    );
}

/// Starts a `get_or_load` leader whose loader blocks until released; returns the release handle
/// and the leader's thread.
fn blocked_leader(
    c: &Arc<Cache<u64, String>>,
    key: u64,
    result: Result<String, &'static str>,
    panic: bool,
) -> (
    mpsc::Sender<()>,
    std::thread::JoinHandle<Result<String, &'static str>>,
) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let c2 = c.clone();
    let leader = std::thread::spawn(move || {
        c2.get_or_load(key, |_| {
            entered_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            if panic {
                panic!("loader panicked");
            }
            result
        })
    });
    entered_rx.recv().unwrap();
    (release_tx, leader)
}

#[test]
fn i7_caller_after_purge_never_gets_the_pre_purge_load() {
    let c = Arc::new(cache(100));
    let (release, leader) = blocked_leader(&c, 1, Ok("old".into()), false);
    // A write completes while the load is in flight...
    c.purge(&1);
    // ...so a caller starting now must run its own load, not join the detached one (had it
    // joined, it would receive "old" once the leader is released).
    let c2 = c.clone();
    let late = std::thread::spawn(move || c2.get_or_load(1, |_| Ok::<_, &str>("new".to_string())));
    wait_until("the late caller looked the key up", || {
        c.stats().misses == 2
    });
    release.send(()).unwrap();
    assert_eq!(late.join().unwrap().unwrap(), "new");
    assert_eq!(
        leader.join().unwrap().unwrap(),
        "old",
        "the leader's own call overlapped"
    );
    // The detached load's save was rejected: the cache holds the post-purge value.
    assert_eq!(c.get(&1).as_deref(), Some("new"));
    assert!(c.stats().stale_rejected >= 1);
}

#[test]
fn i7_insert_during_load_detaches_it() {
    let c = Arc::new(cache(100));
    let (release, leader) = blocked_leader(&c, 1, Ok("old".into()), false);
    c.insert(1, "written".into());
    release.send(()).unwrap();
    leader.join().unwrap().unwrap();
    assert_eq!(c.get(&1).as_deref(), Some("written"));
}

#[test]
fn waiters_share_the_leaders_value() {
    let c = Arc::new(cache(100));
    let (release, leader) = blocked_leader(&c, 1, Ok("shared".into()), false);
    let c2 = c.clone();
    let waiter = std::thread::spawn(move || {
        c2.get_or_load(1, |_| -> Result<String, &str> {
            panic!("the waiter must not load")
        })
    });
    wait_until("the waiter joined", || c.stats().misses == 2);
    release.send(()).unwrap();
    assert_eq!(leader.join().unwrap().unwrap(), "shared");
    assert_eq!(waiter.join().unwrap().unwrap(), "shared");
    assert_eq!(c.stats().loads, 1);
}

#[test]
fn failed_leader_hands_the_load_to_a_waiter() {
    let c = Arc::new(cache(100));
    let (release, leader) = blocked_leader(&c, 1, Err("db down"), false);
    let c2 = c.clone();
    let waiter =
        std::thread::spawn(move || c2.get_or_load(1, |_| Ok::<_, &str>("retried".to_string())));
    wait_until("the waiter joined", || c.stats().misses == 2);
    release.send(()).unwrap();
    assert_eq!(leader.join().unwrap(), Err("db down"));
    assert_eq!(waiter.join().unwrap().unwrap(), "retried");
    assert_eq!(c.stats().loads, 2);
}

#[test]
fn panicking_loader_reaches_its_caller_and_a_waiter_retries() {
    let c = Arc::new(cache(100));
    let (release, leader) = blocked_leader(&c, 1, Ok("never".into()), true);
    let c2 = c.clone();
    let waiter =
        std::thread::spawn(move || c2.get_or_load(1, |_| Ok::<_, &str>("retried".to_string())));
    wait_until("the waiter joined", || c.stats().misses == 2);
    release.send(()).unwrap();
    assert!(
        leader.join().is_err(),
        "the panic reaches the leader's caller"
    );
    assert_eq!(waiter.join().unwrap().unwrap(), "retried");
    assert_eq!(c.stats().load_errors, 1);
}

#[test]
fn async_get_or_load_single_flight_and_hit() {
    let c = cache(100);
    let v = futures_executor::block_on(
        c.get_or_load_async(3, |k| async move { Ok::<_, ()>(format!("row {k}")) }),
    );
    assert_eq!(v.unwrap(), "row 3");
    let again = futures_executor::block_on(
        c.get_or_load_async(3, |_| async { Err::<String, _>("must not load") }),
    );
    assert_eq!(again.unwrap(), "row 3");
}

#[test]
fn dropping_the_leading_future_hands_the_load_to_a_waiter() {
    let c = Arc::new(cache(100));
    // The leader: polled once, so it registers the flight and awaits a loader that never ends.
    let mut leading =
        Box::pin(c.get_or_load_async(1, |_| std::future::pending::<Result<String, ()>>()));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(leading.as_mut().poll(&mut cx).is_pending());
    let c2 = c.clone();
    let waiter = std::thread::spawn(move || {
        futures_executor::block_on(
            c2.get_or_load_async(1, |_| async { Ok::<_, ()>("from the waiter".to_string()) }),
        )
    });
    wait_until("the waiter joined", || c.stats().misses == 2);
    drop(leading); // cancellation
    assert_eq!(waiter.join().unwrap().unwrap(), "from the waiter");
    assert_eq!(c.get(&1).as_deref(), Some("from the waiter"));
}

#[test]
fn dropping_a_waiting_future_leaves_the_load_alone() {
    let c = Arc::new(cache(100));
    let (release, leader) = blocked_leader(&c, 1, Ok("value".into()), false);
    {
        let mut waiting = pin!(c.get_or_load_async(1, |_| async { Err::<String, &str>("no") }));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(waiting.as_mut().poll(&mut cx), Poll::Pending));
    } // dropped while waiting
    release.send(()).unwrap();
    assert_eq!(leader.join().unwrap().unwrap(), "value");
    assert_eq!(c.get(&1).as_deref(), Some("value"));
}

#[test]
fn stats_count_what_happened() {
    let c = cache(100);
    c.insert(1, "a".into());
    c.get(&1);
    c.get(&2);
    let l = c.lease(&3);
    assert_eq!(
        c.save_with_lease(3, "c".into(), l).unwrap(),
        leasecache::Saved::Stored
    );
    let l = c.lease(&3);
    c.purge(&3);
    let _ = c.save_with_lease(3, "c".into(), l);
    let s = c.stats();
    assert_eq!(
        (
            s.hits,
            s.misses,
            s.inserts,
            s.saves,
            s.stale_rejected,
            s.purges
        ),
        (1, 1, 1, 1, 1, 1)
    );
    assert!((s.hit_ratio() - 0.5).abs() < f64::EPSILON);
}

#[test]
fn an_insert_into_a_full_cache_is_readable_right_away() {
    // A write-through `insert` says "cache this": even when the cache is full and the key is new
    // (so the policy has no reason to prefer it), the next `get` finds it.
    let c = cache(100);
    for round in 0..3 {
        for k in 0..100 {
            c.insert(k, format!("hot {k}"));
            assert!(c.get(&k).is_some());
        }
        for k in 0..1000 {
            let key = 1_000_000 * (round + 1) + k;
            c.insert(key, "new".to_string());
            assert_eq!(
                c.get(&key).as_deref(),
                Some("new"),
                "round {round}, key {key}"
            );
        }
    }
}

/// A key whose `Eq` panics on demand (on this thread only).
#[derive(Debug)]
struct Touchy(u64);

impl std::hash::Hash for Touchy {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

std::thread_local! {
    static EQ_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl PartialEq for Touchy {
    fn eq(&self, other: &Self) -> bool {
        if EQ_PANICS.with(std::cell::Cell::get) {
            // Not `panic!`: no message from the panic hook.
            std::panic::resume_unwind(Box::new("K::eq"));
        }
        self.0 == other.0
    }
}

impl Eq for Touchy {}

/// I4 and I1 when user code unwinds inside a write: a purge whose `K::eq` panics still fenced the
/// leases taken before it, and leaves no write half done: later leases, saves and reads work.
#[test]
fn i4_a_purge_that_panics_in_key_eq_still_fences_and_leaves_leases_working() {
    let cache: Cache<Touchy, u64> = Cache::new(100);
    cache.insert(Touchy(1), 1);
    let before = cache.lease(&Touchy(1));
    EQ_PANICS.with(|p| p.set(true));
    let purge = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cache.purge(&Touchy(1))));
    EQ_PANICS.with(|p| p.set(false));
    assert!(purge.is_err(), "K::eq was not called");
    assert!(
        matches!(
            cache.save_with_lease(Touchy(1), 0, before),
            Ok(leasecache::Saved::Stale)
        ),
        "a lease from before the purge was not fenced"
    );
    let lease = cache.lease(&Touchy(1));
    assert_eq!(
        cache.save_with_lease(Touchy(1), 2, lease).unwrap(),
        leasecache::Saved::Stored
    );
    assert_eq!(cache.get(&Touchy(1)), Some(2));
    match cache.get_or_lease(&Touchy(3)) {
        Lookup::Miss(lease) => {
            assert_eq!(
                cache.save_with_lease(Touchy(3), 3, lease).unwrap(),
                leasecache::Saved::Stored
            );
        }
        Lookup::Hit(_) => panic!("never stored"),
    }
    assert_eq!(cache.get(&Touchy(3)), Some(3));
}
