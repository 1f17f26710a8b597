//! Loom models of the lease protocol on the real `Cache` (lead-owned).
//!
//! Run: `RUSTFLAGS="--cfg leasecache_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --profile loom --lib loom`
//!
//! Each model: setup before spawning, at most two spawned threads plus main, at most three
//! operations per thread, a fixed hasher, no clocks or randomness. Assertions are about final
//! states and returned values that *every* interleaving must satisfy, so a single bad
//! interleaving fails the model. The negative control runs the same model as `save_vs_purge`
//! with a deliberately broken check-then-store save and must fail.

use crate::sync::{Arc, AtomicU64, Ordering};
use crate::{Cache, Lookup};
use loom::thread;
use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};

type Hasher = ahash::RandomState;
type TestCache = Cache<u32, u64, Hasher>;

/// One shard, 64 generation slots, a fixed hasher.
pub(super) fn cache(capacity: u64) -> TestCache {
    Cache::builder()
        .max_capacity(capacity)
        .shards(1)
        .lease_slots(64)
        .hasher(Hasher::with_seeds(1, 2, 3, 4))
        .build()
}

/// Runs `body` under loom and reports how many executions it explored.
pub(crate) fn model(name: &str, body: impl Fn() + Sync + Send + 'static) {
    model_with(name, loom::model::Builder::new(), body);
}

/// [`model`] with a builder of the caller's (for models whose setup takes many steps).
pub(crate) fn model_with(
    name: &str,
    builder: loom::model::Builder,
    body: impl Fn() + Sync + Send + 'static,
) {
    let executions = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = executions.clone();
    let started = std::time::Instant::now();
    builder.check(move || {
        counter.fetch_add(1, StdOrdering::Relaxed);
        body();
    });
    eprintln!(
        "loom model {name}: {} executions in {:.2?}",
        executions.load(StdOrdering::Relaxed),
        started.elapsed()
    );
}

const OLD: u64 = 1;
const NEW: u64 = 2;

/// A present key, its lease captured; a save under it races a purge. Whatever the order, the
/// key must end up uncached: a save after the purge is rejected, a save before it is removed.
fn save_vs_purge_body(broken: bool) {
    let cache = Arc::new(cache(4));
    cache.insert(1, OLD);
    let lease = cache.lease(&1);
    let saver = {
        let cache = cache.clone();
        thread::spawn(move || {
            if broken {
                cache.save_check_then_store_broken(1, OLD, lease);
            } else {
                let _ = cache.save_with_lease(1, OLD, lease);
            }
        })
    };
    let purger = {
        let cache = cache.clone();
        thread::spawn(move || cache.purge(&1))
    };
    saver.join().unwrap();
    purger.join().unwrap();
    assert_eq!(cache.get(&1), None, "a stale save landed after the purge");
}

#[test]
fn save_vs_purge() {
    model("save_vs_purge", || save_vs_purge_body(false));
}

/// NEGATIVE CONTROL: check-then-store lets the purge slip between the check and the store.
#[test]
#[should_panic(expected = "a stale save landed after the purge")]
fn negative_control_check_then_store_is_caught() {
    model("negative_control", || save_vs_purge_body(true));
}

/// A save under an old lease races an unconditional insert: the insert's value must win.
#[test]
fn save_vs_insert() {
    model("save_vs_insert", || {
        let cache = Arc::new(cache(4));
        let lease = cache.lease(&1);
        let saver = {
            let cache = cache.clone();
            thread::spawn(move || {
                cache
                    .save_with_lease(1, OLD, lease)
                    .is_ok_and(crate::Saved::is_stored)
            })
        };
        let writer = {
            let cache = cache.clone();
            thread::spawn(move || cache.insert(1, NEW))
        };
        let saved = saver.join().unwrap();
        writer.join().unwrap();
        assert_eq!(cache.get(&1), Some(NEW));
        let stats = cache.stats();
        assert_eq!(stats.saves + stats.stale_rejected, 1);
        assert_eq!(stats.saves == 1, saved);
    });
}

/// The whole protocol: a reader takes a lease, reads the source, saves; a writer updates the
/// source, then purges. The cache may end empty or hold the new version, never the old one.
fn lease_purge_save(absent: bool) {
    let cache = Arc::new(cache(4));
    let source = Arc::new(AtomicU64::new(OLD));
    if !absent {
        cache.insert(1, OLD);
        cache.purge(&1); // cached then purged: the key's generation has moved once already
    }
    let reader = {
        let (cache, source) = (cache.clone(), source.clone());
        thread::spawn(move || {
            let lease = match cache.get_or_lease(&1) {
                Lookup::Hit(v) => return v,
                Lookup::Miss(lease) => lease,
            };
            let row = source.load(Ordering::SeqCst);
            let _ = cache.save_with_lease(1, row, lease);
            row
        })
    };
    let writer = {
        let (cache, source) = (cache.clone(), source.clone());
        thread::spawn(move || {
            source.store(NEW, Ordering::SeqCst);
            cache.purge(&1);
        })
    };
    reader.join().unwrap();
    writer.join().unwrap();
    let cached = cache.get(&1);
    assert!(
        cached.is_none() || cached == Some(NEW),
        "stale row cached: {cached:?}"
    );
}

#[test]
fn lease_purge_save_interleaved() {
    model("lease_purge_save_interleaved", || lease_purge_save(false));
}

/// I4: purging a key that is not cached still fences the lease taken on it.
#[test]
fn purge_of_absent_key_vs_save() {
    model("purge_of_absent_key_vs_save", || lease_purge_save(true));
}

/// Eviction neither revives a fenced lease nor fences a current one (capacity 1: inserting
/// another key evicts key 1).
#[test]
fn save_vs_eviction() {
    model("save_vs_eviction", || {
        let cache = Arc::new(cache(1));
        cache.insert(1, OLD);
        let fenced = cache.lease(&1);
        cache.purge(&1);
        let current = cache.lease(&1);
        let saver = {
            let cache = cache.clone();
            thread::spawn(move || {
                let stale = cache
                    .save_with_lease(1, OLD, fenced)
                    .is_ok_and(crate::Saved::is_stale);
                let fresh = cache
                    .save_with_lease(1, NEW, current)
                    .is_ok_and(crate::Saved::is_stored);
                (stale, fresh)
            })
        };
        let evicter = {
            let cache = cache.clone();
            thread::spawn(move || {
                cache.insert(2, 20);
                cache.insert(3, 30);
            })
        };
        let (stale_rejected, fresh_saved) = saver.join().unwrap();
        evicter.join().unwrap();
        assert!(stale_rejected, "eviction revived a fenced lease");
        assert!(fresh_saved, "eviction fenced a current lease");
        assert_ne!(cache.get(&1), Some(OLD));
        cache.validate();
    });
}

/// Flush fences every lease: a save racing it may land only before it, and is then dropped.
#[test]
fn flush_vs_save() {
    model("flush_vs_save", || {
        let cache = Arc::new(cache(4));
        let lease = cache.lease(&1);
        cache.insert(2, 20);
        let saver = {
            let cache = cache.clone();
            thread::spawn(move || {
                let _ = cache.save_with_lease(1, OLD, lease);
            })
        };
        let flusher = {
            let cache = cache.clone();
            thread::spawn(move || cache.flush())
        };
        saver.join().unwrap();
        flusher.join().unwrap();
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.get(&2), None);
    });
}

/// Two saves with the same lease race a purge on main: both saves may land only before the purge,
/// so the key always ends uncached; without the purge both would be accepted.
#[test]
fn two_saves_with_the_same_lease() {
    model("two_saves_with_the_same_lease", || {
        let cache = Arc::new(cache(4));
        let lease = cache.lease(&1);
        let savers: Vec<_> = [10, 11]
            .into_iter()
            .map(|value| {
                let (cache, lease) = (cache.clone(), lease.clone());
                thread::spawn(move || {
                    cache
                        .save_with_lease(1, value, lease)
                        .is_ok_and(crate::Saved::is_stored)
                })
            })
            .collect();
        cache.purge(&1);
        let saved: Vec<bool> = savers.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(cache.get(&1), None);
        let stats = cache.stats();
        assert_eq!(stats.saves as usize, saved.iter().filter(|s| **s).count());
        assert_eq!(stats.saves + stats.stale_rejected, 2);
    });
}

/// I7: a `get_or_load` that starts after a purge returned never receives the value loaded under
/// a lease taken before the purge, even if it would otherwise join that load.
#[test]
fn get_or_load_leader_vs_purge_vs_late_caller() {
    model("get_or_load_leader_vs_purge_vs_late_caller", || {
        let cache = Arc::new(cache(4));
        let source = Arc::new(AtomicU64::new(OLD));
        let leader = {
            let (cache, source) = (cache.clone(), source.clone());
            thread::spawn(move || {
                cache
                    .get_or_load(1, |_| Ok::<_, ()>(source.load(Ordering::SeqCst)))
                    .unwrap()
            })
        };
        let writer = {
            let (cache, source) = (cache.clone(), source.clone());
            thread::spawn(move || {
                source.store(NEW, Ordering::SeqCst);
                cache.purge(&1);
                // Starts after the purge returned: must see the new row.
                cache
                    .get_or_load(1, |_| Ok::<_, ()>(source.load(Ordering::SeqCst)))
                    .unwrap()
            })
        };
        let led = leader.join().unwrap();
        let late = writer.join().unwrap();
        assert!(led == OLD || led == NEW);
        assert_eq!(late, NEW, "a late caller received a pre-purge load");
        let cached = cache.get(&1);
        assert!(
            cached.is_none() || cached == Some(NEW),
            "stale row cached: {cached:?}"
        );
    });
}

/// A failing leader does not strand its waiter: the waiter retries with its own loader.
#[test]
fn get_or_load_failed_leader_hands_over() {
    model("get_or_load_failed_leader_hands_over", || {
        let cache = Arc::new(cache(4));
        let failing = {
            let cache = cache.clone();
            thread::spawn(move || cache.get_or_load(1, |_| Err::<u64, &str>("db down")))
        };
        let working = {
            let cache = cache.clone();
            thread::spawn(move || cache.get_or_load(1, |_| Ok::<u64, &str>(NEW)))
        };
        let failed = failing.join().unwrap();
        assert_eq!(working.join().unwrap(), Ok(NEW));
        // The failing caller either led (and got its error) or joined the working load.
        assert!(failed == Err("db down") || failed == Ok(NEW));
        assert!(cache.get_or_load(1, |_| Err::<u64, &str>("unused")) == Ok(NEW));
        assert_eq!(cache.shards[0].core.lock().flights.len(), 0);
    });
}
