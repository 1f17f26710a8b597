//! Loom models of the write path (issue 17): single-flight under a purge with three parties,
//! the busy mark that makes a lock-free lease wait for a write under way, retirement by
//! eviction, by expiry or by a table rebuild racing a lock-free read, and the barrier one
//! shard's writer issues serving another shard's batch while a reader that went idle comes
//! back. Each protocol step the models lean on has a negative control that removes it and must
//! fail.
//!
//! Run: `RUSTFLAGS="--cfg leasecache_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --profile loom --lib loom`

use super::loom::{cache, model, model_with};
use crate::reclaim::Broken;
use crate::sync::{Arc, AtomicU64, Ordering};
use crate::{Cache, Lookup};
use loom::thread;

const OLD: u64 = 1;
const NEW: u64 = 2;
const NEWER: u64 = 3;

/// Three parties on one key: two callers of `get_or_load` (whichever comes first leads, the
/// other joins or hits) and a purger (main) that updates the source, purges, then loads the key
/// itself. The purger's own load starts after its purge returned, so it must see the new row
/// (I7), and no old row may stay cached. A caller that joined before the purge may get either.
fn load_load_purge(broken: Option<Broken>) {
    let mut cache = cache(4);
    cache.readers.broken = broken;
    let cache = Arc::new(cache);
    let source = Arc::new(AtomicU64::new(OLD));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (cache, source) = (cache.clone(), source.clone());
            thread::spawn(move || {
                cache
                    .get_or_load(1, |_| Ok::<_, ()>(source.load(Ordering::SeqCst)))
                    .unwrap()
            })
        })
        .collect();
    source.store(NEW, Ordering::SeqCst);
    cache.purge(&1);
    let late = cache
        .get_or_load(1, |_| Ok::<_, ()>(source.load(Ordering::SeqCst)))
        .unwrap();
    for caller in callers {
        let got = caller.join().unwrap();
        assert!(got == OLD || got == NEW);
    }
    assert_eq!(
        late, NEW,
        "a load started after the purge got the row read before it"
    );
    let cached = cache.get(&1);
    assert!(
        cached.is_none() || cached == Some(NEW),
        "stale row cached: {cached:?}"
    );
}

#[test]
fn get_or_load_joiner_leader_and_purger() {
    model("get_or_load_joiner_leader_and_purger", || {
        load_load_purge(None)
    });
}

/// NEGATIVE CONTROL: a purge that does not detach the flight lets the purger's own load join it.
#[test]
#[should_panic(expected = "a load started after the purge got the row read before it")]
fn negative_control_no_detach_is_caught() {
    model("negative_control_no_detach", || {
        load_load_purge(Some(Broken::NoDetach))
    });
}

/// A reader misses, takes its lease lock-free and saves what it then reads from the source,
/// while a writer updates the source and inserts the new row. Whatever the order, the new row
/// stays cached: a lease taken while the insert is under way waits for it (busy mark), so it
/// either is fenced by the insert or is taken after it and reads the new row.
fn lease_during_insert(broken: Option<Broken>) {
    let mut cache = cache(4);
    cache.readers.broken = broken;
    let cache = Arc::new(cache);
    let source = Arc::new(AtomicU64::new(OLD));
    let reader = {
        let (cache, source) = (cache.clone(), source.clone());
        thread::spawn(move || match cache.get_or_lease(&1) {
            Lookup::Hit(v) => assert_eq!(v, NEW),
            Lookup::Miss(lease) => {
                let row = source.load(Ordering::SeqCst);
                let _ = cache.save_with_lease(1, row, lease);
            }
        })
    };
    source.store(NEW, Ordering::SeqCst);
    cache.insert(1, NEW);
    reader.join().unwrap();
    assert_eq!(
        cache.get(&1),
        Some(NEW),
        "a save under a lease taken during the insert landed after it"
    );
}

#[test]
fn a_lease_taken_during_an_insert_waits_for_it() {
    model("a_lease_taken_during_an_insert_waits_for_it", || {
        lease_during_insert(None)
    });
}

/// NEGATIVE CONTROL: without the busy mark, the lease carries the insert's generation before
/// the row is visible, and the old row read under it is saved over the new one.
#[test]
#[should_panic(expected = "a save under a lease taken during the insert landed after it")]
fn negative_control_no_busy_mark_is_caught() {
    model("negative_control_no_busy_mark", || {
        lease_during_insert(Some(Broken::NoBusyMark))
    });
}

/// A one-entry cache: a reader gets key 1 while a writer's inserts of new keys evict (each
/// eviction retires a slot, and under loom a batch of one is freed by the next write); key 1
/// goes first, or, if the read promoted it, key 2. The read
/// returns key 1's value or nothing, and never reads a freed slot (loom's `UnsafeCell` checks).
#[test]
fn lock_free_get_vs_eviction() {
    model("lock_free_get_vs_eviction", || {
        let cache: Arc<Cache<u32, u64, _>> = Arc::new(cache(1));
        cache.insert(1, 10);
        let reader = {
            let cache = cache.clone();
            thread::spawn(move || cache.get(&1))
        };
        for k in 2..4 {
            cache.insert(k, u64::from(k));
        }
        let read = reader.join().unwrap();
        assert!(matches!(read, None | Some(10)), "a read returned {read:?}");
        assert!(
            cache.entry_count() <= 1,
            "eviction kept the cache at capacity"
        );
        assert_eq!(cache.get(&3), Some(3), "an explicit insert is kept");
        cache.validate();
    });
}

/// A reader looks up a key that is not cached while a writer's inserts rebuild the table: the
/// miss is a miss in the old table or the new one, and the old table is freed only after.
#[test]
fn lock_free_miss_vs_table_rebuild() {
    // The setup (eleven inserts into a fresh table) takes more than loom's default 1,000
    // branches; it runs before any thread is spawned, so it adds no interleavings.
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 20_000;
    model_with("lock_free_miss_vs_table_rebuild", builder, || {
        let cache = Arc::new(cache(32));
        // 16 buckets, rebuilt when a 12th is used.
        for k in 0..11 {
            cache.insert(k, u64::from(k));
        }
        let reader = {
            let cache = cache.clone();
            thread::spawn(move || cache.get(&20))
        };
        cache.insert(11, 11); // the 12th bucket: the next insert rebuilds
        cache.insert(12, 12); // rebuild: the old table is retired
        cache.insert(5, 50); // a replacement's retirement frees the old table
        assert_eq!(reader.join().unwrap(), None);
        assert_eq!(cache.get(&5), Some(50));
        cache.validate();
    });
}

/// A one-entry cache whose entry has expired (a manual clock, moved before the threads start): a
/// reader gets it while a writer's inserts make eviction reach it, remove it as expired and free
/// its slot. The read returns nothing (an expired entry is never returned) and never reads a
/// freed slot.
fn get_vs_expiry(broken: Option<Broken>) {
    let clock = crate::ManualClock::new();
    let mut cache: Cache<u32, u64, _> = Cache::builder()
        .max_capacity(1)
        .shards(1)
        .lease_slots(64)
        .hasher(ahash::RandomState::with_seeds(1, 2, 3, 4))
        .time_to_live(std::time::Duration::from_secs(1))
        .clock(clock.clone())
        .build();
    cache.readers.broken = broken;
    let cache = Arc::new(cache);
    cache.insert(1, 10);
    clock.advance(std::time::Duration::from_secs(2));
    let reader = {
        let cache = cache.clone();
        thread::spawn(move || cache.get(&1))
    };
    for k in 2..4 {
        cache.insert(k, u64::from(k));
    }
    assert_eq!(
        reader.join().unwrap(),
        None,
        "an expired entry was returned"
    );
    assert!(
        cache.stats().expirations >= 1,
        "eviction removed it as expired"
    );
    cache.validate();
}

#[test]
fn lock_free_get_vs_expiry() {
    model("lock_free_get_vs_expiry", || get_vs_expiry(None));
}

/// NEGATIVE CONTROL: reads that do not announce themselves let the expired entry's slot be freed
/// under them (loom's `UnsafeCell` reports the conflicting access).
#[test]
#[should_panic]
fn negative_control_unannounced_read_vs_expiry_is_caught() {
    model("negative_control_unannounced_read_vs_expiry", || {
        get_vs_expiry(Some(Broken::UnannouncedReads))
    });
}

/// Two shards, a writer each, and a reader that read once before the writers started (its
/// record idle at an old epoch: "gone idle") and reads again while they write ("comes back").
/// Each writer replaces its key twice; under loom a batch is one slot, so the second replacement
/// asks whether the first one's old slot may be freed, and the idle record stands in the way
/// until a barrier says it is idle. `membarrier` is modelled (see `Readers::model_membarrier`),
/// so one writer's barrier may serve the other's batch (`barrier_epoch`) when its batch was
/// published before that barrier, and must not when it was published after. The returning read
/// gets the old value or a new one, and never reads a freed slot (loom's `UnsafeCell` checks).
fn two_shards_share_barriers(broken: Option<Broken>) {
    let mut cache: Cache<u32, u64, _> = Cache::builder()
        .max_capacity(8)
        .shards(2)
        .lease_slots(64)
        .hasher(ahash::RandomState::with_seeds(1, 2, 3, 4))
        .build();
    cache.readers.broken = broken;
    cache.readers.model_membarrier();
    // One key in each shard.
    let shard = |cache: &Cache<u32, u64, _>, k: u32| (cache.hash(&k) >> 32) & 1;
    let a = 1;
    let b = (2..64)
        .find(|&k| shard(&cache, k) != shard(&cache, a))
        .expect("a key in the other shard");
    let cache = Arc::new(cache);
    cache.insert(a, OLD);
    cache.insert(b, OLD);
    // The reader (main) reads, then goes idle at epoch 0 while the writers start.
    assert_eq!(cache.get(&a), Some(OLD));
    let writers: Vec<_> = [a, b]
        .into_iter()
        .map(|k| {
            let cache = cache.clone();
            thread::spawn(move || {
                cache.insert(k, NEW);
                cache.insert(k, NEWER);
            })
        })
        .collect();
    // It comes back: a read of the second writer's key while both write.
    let read = cache.get(&b);
    assert!(
        matches!(read, Some(OLD | NEW | NEWER)),
        "the returning read got {read:?}"
    );
    for writer in writers {
        writer.join().unwrap();
    }
    assert_eq!(cache.get(&a), Some(NEWER));
    assert_eq!(cache.get(&b), Some(NEWER));
    cache.validate();
}

#[test]
fn barriers_shared_by_two_shards_vs_a_returning_reader() {
    use crate::reclaim::SERVED_BY_ANOTHER_BARRIER as SERVED;
    let before = SERVED.load(std::sync::atomic::Ordering::Relaxed);
    model(
        "barriers_shared_by_two_shards_vs_a_returning_reader",
        || two_shards_share_barriers(None),
    );
    assert!(
        SERVED.load(std::sync::atomic::Ordering::Relaxed) > before,
        "no execution freed a batch under a barrier issued for an earlier check"
    );
}

/// NEGATIVE CONTROL: a barrier that counts for batches published after it lets the second shard
/// free a slot that the returning reader, whose announcement that shard's writer has not seen,
/// still reads.
#[test]
#[should_panic]
fn negative_control_barrier_covering_later_batches_is_caught() {
    model("negative_control_barrier_covering_later_batches", || {
        two_shards_share_barriers(Some(Broken::BarrierCoversLaterBatches))
    });
}
