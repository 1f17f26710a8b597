//! Loom models of the lock-free read path (lead-owned): reads racing the writes that retire and
//! free what they read (`reclaim.rs`), and a table rebuild.
//!
//! Run: `RUSTFLAGS="--cfg leasecache_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --profile loom --lib loom`
//!
//! Under loom a shard frees retired slots in batches of one, so two writes in a model are enough
//! for the first one's old slot to be freed. Slot contents live in loom's `UnsafeCell`, which
//! fails the model if a slot is freed (written) while a read of it is not ordered before that:
//! what a use-after-free would be in a real run. Two negative controls break the protocol (reads
//! that skip their announcement; a writer that trusts an idle-looking record without the heavy
//! barrier) and must be caught. Loom models both halves of the asymmetric fence as `SeqCst`
//! fences, which order exactly what `membarrier` and a compiler fence order between them.
//!
//! What loom cannot see, for that reason: whether a check skipped the barrier because an earlier
//! one covers it (`barrier_epoch`; `reclaim::tests::an_idle_reader_costs_one_barrier...` checks
//! the bookkeeping), and whether the reader's epoch load needs to be Acquire (under loom its
//! fence orders it anyway; outside loom that fence is a compiler fence, and Acquire is needed).

use super::loom::{cache, model, model_with};
use crate::reclaim::Broken;
use crate::sync::Arc;
use loom::thread;

/// A reader gets key 1 while a writer replaces its value three times: each replacement retires
/// the previous slot, and the later ones free it once no read can see it. The read returns one of
/// the values, never a freed one.
fn get_vs_replacements(broken: Option<Broken>) {
    let mut cache = cache(4);
    cache.readers.broken = broken;
    cache.insert(1, 10);
    let cache = Arc::new(cache);
    let reader = {
        let cache = cache.clone();
        thread::spawn(move || cache.get(&1))
    };
    let writer = {
        let cache = cache.clone();
        thread::spawn(move || {
            for value in [11, 12, 13] {
                cache.insert(1, value);
            }
        })
    };
    let read = reader.join().unwrap();
    writer.join().unwrap();
    assert!(matches!(read, Some(10..=13)), "the read returned {read:?}");
    assert_eq!(cache.get(&1), Some(13));
    cache.validate();
}

#[test]
fn lock_free_get_vs_replacements() {
    model("lock_free_get_vs_replacements", || {
        get_vs_replacements(None)
    });
}

/// NEGATIVE CONTROL: reads that do not announce themselves let the writer free a slot under them.
#[test]
#[should_panic(expected = "Causality violation")]
fn negative_control_unannounced_read_is_caught() {
    model("negative_control_unannounced_read", || {
        get_vs_replacements(Some(Broken::UnannouncedReads))
    });
}

/// NEGATIVE CONTROL: a writer that takes an idle-looking record at its word, with no barrier,
/// misses an announcement made just before and frees the slot that read is about to clone.
#[test]
#[should_panic(expected = "Causality violation")]
fn negative_control_no_barrier_is_caught() {
    model("negative_control_no_barrier", || {
        get_vs_replacements(Some(Broken::NoBarrier))
    });
}

/// A reader that misses, then takes the lease lock-free, races a purge and a re-insert: a lease
/// it gets is either fenced by the writes or taken after them, and the value it read is current.
#[test]
fn get_or_lease_vs_purge_and_insert() {
    model("get_or_lease_vs_purge_and_insert", || {
        let cache = Arc::new(cache(4));
        cache.insert(1, 10);
        let reader = {
            let cache = cache.clone();
            thread::spawn(move || match cache.get_or_lease(&1) {
                crate::Lookup::Hit(v) => {
                    assert!(v == 10 || v == 11, "read {v}");
                    true
                }
                crate::Lookup::Miss(lease) => cache
                    .save_with_lease(1, 99, lease)
                    .is_ok_and(crate::Saved::is_stored),
            })
        };
        let writer = {
            let cache = cache.clone();
            thread::spawn(move || {
                cache.purge(&1);
                cache.insert(1, 11);
            })
        };
        reader.join().unwrap();
        writer.join().unwrap();
        // The miss happened between the purge and the insert; the insert fenced its lease.
        assert_eq!(cache.get(&1), Some(11));
    });
}

/// The race this crate exists for, on the lock-free lease: a reader misses, takes its lease
/// without a lock and reads the source; a writer updates the source and purges. A lease taken
/// before the purge must be fenced by it (nothing follows the purge to hide a missing fence), so
/// a save that lands saved the new row.
#[test]
fn a_lock_free_lease_taken_before_a_purge_is_fenced() {
    model("a_lock_free_lease_taken_before_a_purge_is_fenced", || {
        let cache = Arc::new(cache(4));
        let source = Arc::new(crate::sync::AtomicU64::new(1));
        let reader = {
            let (cache, source) = (cache.clone(), source.clone());
            thread::spawn(move || match cache.get_or_lease(&1) {
                crate::Lookup::Hit(_) => unreachable!("nothing is cached"),
                crate::Lookup::Miss(lease) => {
                    let row = source.load(crate::sync::Ordering::SeqCst);
                    let _ = cache.save_with_lease(1, row, lease);
                }
            })
        };
        source.store(2, crate::sync::Ordering::SeqCst);
        cache.purge(&1);
        reader.join().unwrap();
        assert!(
            matches!(cache.get(&1), None | Some(2)),
            "the old row was saved after the purge"
        );
    });
}

/// A reader looks a key up while a writer's inserts make the table grow: the key, present all
/// along, is found in the old table or the new one, and the old one is freed only after.
#[test]
fn get_vs_table_rebuild() {
    // The setup alone (eleven inserts into a fresh table) takes more than loom's default 1,000
    // branches; it runs before any thread is spawned, so it adds no interleavings.
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 20_000;
    model_with("get_vs_table_rebuild", builder, || {
        let cache = Arc::new(cache(32));
        // 16 buckets, rebuilt when a 12th is used.
        for k in 0..11 {
            cache.insert(k, u64::from(k));
        }
        let reader = {
            let cache = cache.clone();
            thread::spawn(move || cache.get(&0))
        };
        let writer = {
            let cache = cache.clone();
            thread::spawn(move || {
                cache.insert(11, 11); // the 12th bucket: the next insert rebuilds
                cache.insert(12, 12); // rebuild: the old table is retired
                cache.insert(5, 50); // a replacement's retirement frees the old table
            })
        };
        assert_eq!(reader.join().unwrap(), Some(0));
        writer.join().unwrap();
        assert_eq!(cache.get(&5), Some(50));
        cache.validate();
    });
}

/// A reader thread ends and gives its record up, and another reader, running at the same time,
/// takes it over (with the state and counts the first one left) while a writer replaces and
/// frees: the second read is protected like any other, and the counts stay exact. Only the
/// record's ownership flag orders the two readers. (Only some executions hand the record over;
/// the model checks that some do.)
#[test]
fn a_record_handed_to_the_next_thread_protects_its_reads() {
    static HANDED_OVER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    model(
        "a_record_handed_to_the_next_thread_protects_its_reads",
        || {
            let cache = Arc::new(cache(4));
            cache.insert(1, 10);
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    let cache = cache.clone();
                    thread::spawn(move || cache.get(&1))
                })
                .collect();
            let writer = {
                let cache = cache.clone();
                thread::spawn(move || {
                    for value in [11, 12] {
                        cache.insert(1, value);
                    }
                })
            };
            for reader in readers {
                let read = reader.join().unwrap();
                assert!(matches!(read, Some(10..=12)), "a read returned {read:?}");
            }
            writer.join().unwrap();
            assert_eq!(cache.stats().hits, 2);
            if cache.readers.records() == 1 {
                HANDED_OVER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        },
    );
    assert!(
        HANDED_OVER.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "never handed over"
    );
}
