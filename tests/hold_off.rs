//! Hold-offs, source positions and write intents on the in-process cache, through the public API,
//! with the manual clock wherever time matters.

use leasecache::{Cache, ManualClock};
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

fn cache_with(clock: &ManualClock, hold_off: Option<Duration>) -> Cache<u32, &'static str> {
    let builder = Cache::builder().max_capacity(1000).clock(clock.clone());
    match hold_off {
        Some(d) => builder.hold_off(d).build(),
        None => builder.build(),
    }
}

/// Whether a save under a lease taken now lands.
fn fresh_save_lands(cache: &Cache<u32, &'static str>, key: u32) -> bool {
    let lease = cache.lease(&key);
    cache
        .save_with_lease(key, "v", lease)
        .is_ok_and(leasecache::Saved::is_stored)
}

#[test]
fn the_default_hold_off_refuses_saves_after_every_kind_of_write_until_it_ends() {
    let clock = ManualClock::new();
    let cache = cache_with(&clock, Some(10 * SEC));
    type Write = fn(&Cache<u32, &'static str>);
    let writes: [(&str, Write); 4] = [
        ("purge", |c| {
            c.purge(&1);
        }),
        ("insert", |c| c.insert(1, "new")),
        ("insert_with_ttl", |c| {
            c.insert_with_ttl(1, "new", 100 * SEC)
        }),
        ("flush", |c| c.flush()),
    ];
    for (name, write) in writes {
        write(&cache);
        cache.purge(&1); // an insert leaves a value; make the key a miss again, same hold-off
        let rejected_before = cache.stats().stale_rejected;
        assert!(
            !fresh_save_lands(&cache, 1),
            "{name}: saved inside the hold-off"
        );
        assert_eq!(cache.stats().stale_rejected, rejected_before + 1, "{name}");
        clock.advance(9 * SEC);
        assert!(!fresh_save_lands(&cache, 1), "{name}: saved at 9 s of 10");
        clock.advance(SEC);
        assert!(
            fresh_save_lands(&cache, 1),
            "{name}: refused after the hold-off"
        );
        assert_eq!(cache.get(&1), Some("v"));
    }
    // Without a hold-off, a lease taken after the purge is good at once (today's behaviour).
    let plain = cache_with(&clock, None);
    plain.purge(&1);
    assert!(fresh_save_lands(&plain, 1));
}

#[test]
fn a_flush_holds_off_every_key() {
    let clock = ManualClock::new();
    let cache = cache_with(&clock, Some(SEC));
    cache.flush();
    for key in 0..50 {
        assert!(!fresh_save_lands(&cache, key), "key {key}");
    }
    clock.advance(SEC);
    for key in 0..50 {
        assert!(fresh_save_lands(&cache, key), "key {key}");
    }
}

#[test]
fn a_lease_taken_inside_the_window_stays_refused_after_it() {
    // The replica-lag race: the reader's lease is fresh, its read is old, and it saves late.
    let clock = ManualClock::new();
    let cache = cache_with(&clock, None);
    cache.purge_with_hold_off(&1, 5 * SEC);
    let inside = cache.lease(&1);
    clock.advance(60 * SEC);
    let saved = cache.save_with_lease(1, "read from a lagging replica", inside);
    assert!(saved.unwrap().is_stale());
    assert_eq!(cache.get(&1), None);
    assert!(fresh_save_lands(&cache, 1));
}

#[test]
fn per_call_hold_offs_never_lower_a_floor() {
    let clock = ManualClock::new();
    let cache = cache_with(&clock, None);
    cache.purge_with_hold_off(&1, 10 * SEC);
    cache.purge_with_hold_off(&1, SEC); // shorter, later: must not end the first one early
    cache.purge(&1); // no hold-off at all: must not end it either
    clock.advance(2 * SEC);
    assert!(
        !fresh_save_lands(&cache, 1),
        "a shorter hold-off lowered the floor"
    );
    clock.advance(8 * SEC);
    assert!(fresh_save_lands(&cache, 1));
    // Once a deadline has passed (and a save cleared it), a new hold-off applies in full.
    cache.purge_with_hold_off(&1, 3 * SEC);
    clock.advance(2 * SEC);
    assert!(!fresh_save_lands(&cache, 1));
    clock.advance(SEC);
    assert!(fresh_save_lands(&cache, 1));
}

#[test]
fn a_hold_off_still_fences_like_a_purge_and_reads_still_hit_values_written_later() {
    let clock = ManualClock::new();
    let cache = cache_with(&clock, None);
    let before = cache.lease(&1);
    clock.advance(SEC);
    cache.insert(1, "old");
    assert!(cache.purge_with_hold_off(&1, 5 * SEC), "the value was live");
    assert_eq!(cache.get(&1), None);
    clock.advance(10 * SEC);
    // After the hold-off the lease taken before the purge is still fenced (I1).
    assert!(
        cache
            .save_with_lease(1, "older", before)
            .is_ok_and(leasecache::Saved::is_stale)
    );
    // An insert inside a hold-off is the writer's own value: readers see it at once.
    cache.purge_with_hold_off(&1, 5 * SEC);
    cache.insert(1, "written");
    assert_eq!(cache.get(&1), Some("written"));
}

#[test]
fn get_or_load_inside_a_hold_off_serves_the_loaded_value_without_caching_it() {
    let clock = ManualClock::new();
    let cache: Cache<u32, String> = Cache::builder().hold_off(SEC).clock(clock.clone()).build();
    cache.purge(&1);
    let loaded = cache.get_or_load(1, |_| Ok::<_, ()>("row".to_string()));
    assert_eq!(loaded.unwrap(), "row");
    assert_eq!(cache.get(&1), None, "cached inside the hold-off");
    clock.advance(SEC);
    let loaded = cache.get_or_load(1, |_| Ok::<_, ()>("row".to_string()));
    assert_eq!(loaded.unwrap(), "row");
    assert_eq!(cache.get(&1).as_deref(), Some("row"));
}

#[test]
fn a_position_older_than_the_floor_is_refused_equal_or_newer_accepted() {
    let cache: Cache<u32, &'static str> = Cache::new(100);
    cache.purge_as_of(&1, 100);
    let lease = cache.lease(&1);
    let rejected = cache.stats().stale_rejected;
    assert!(
        cache
            .save_as_of(1, "old", lease.clone(), 99)
            .unwrap()
            .is_stale()
    );
    assert_eq!(cache.stats().stale_rejected, rejected + 1);
    assert_eq!(cache.get(&1), None);
    assert!(
        cache
            .save_as_of(1, "equal", lease.clone(), 100)
            .is_ok_and(leasecache::Saved::is_stored)
    );
    assert_eq!(cache.get(&1), Some("equal"));
    assert!(
        cache
            .save_as_of(1, "newer", lease, 101)
            .is_ok_and(leasecache::Saved::is_stored)
    );
    assert_eq!(cache.get(&1), Some("newer"));
    // A fresh position does not revive a fenced lease.
    let fenced = cache.lease(&1);
    cache.purge_as_of(&1, 200);
    assert!(
        cache
            .save_as_of(1, "x", fenced, u64::MAX)
            .is_ok_and(leasecache::Saved::is_stale)
    );
}

#[test]
fn positions_never_lower_a_floor() {
    let cache: Cache<u32, &'static str> = Cache::new(100);
    cache.purge_as_of(&1, 500);
    cache.purge_as_of(&1, 10); // a late, lower position (another writer's older commit)
    let lease = cache.lease(&1);
    assert!(
        cache
            .save_as_of(1, "read at 499", lease.clone(), 499)
            .is_ok_and(leasecache::Saved::is_stale)
    );
    assert!(
        cache
            .save_as_of(1, "read at 500", lease, 500)
            .is_ok_and(leasecache::Saved::is_stored)
    );
    // A plain purge keeps the floor too.
    cache.purge(&1);
    let lease = cache.lease(&1);
    assert!(
        cache
            .save_as_of(1, "read at 499", lease, 499)
            .is_ok_and(leasecache::Saved::is_stale)
    );
}

#[test]
fn positions_need_no_hold_off_and_no_waiting() {
    // A replica that replayed past the write's position is fresh at once; one that did not is
    // refused however long after the purge it saves.
    let clock = ManualClock::new();
    let cache = cache_with(&clock, None);
    cache.purge_as_of(&7, 1_000);
    let lease = cache.lease(&7);
    clock.advance(3600 * SEC);
    assert!(
        cache
            .save_as_of(7, "lagging", lease.clone(), 999)
            .is_ok_and(leasecache::Saved::is_stale)
    );
    assert!(
        cache
            .save_as_of(7, "caught up", lease, 1_000)
            .is_ok_and(leasecache::Saved::is_stored)
    );
}

#[test]
fn an_intent_refuses_saves_until_it_ends_and_fences_at_its_end() {
    let cache: Cache<u32, &'static str> = Cache::new(100);
    cache.insert(1, "before");
    let before = cache.lease(&1);
    let intent = cache.begin_write(&1);
    // Beginning fences like a purge.
    assert_eq!(cache.get(&1), None);
    assert!(
        cache
            .save_with_lease(1, "x", before)
            .is_ok_and(leasecache::Saved::is_stale)
    );
    // Inside: every save is refused, whatever its lease or position.
    let inside = cache.lease(&1);
    assert!(
        cache
            .save_with_lease(1, "uncommitted's old row", inside.clone())
            .is_ok_and(leasecache::Saved::is_stale)
    );
    assert!(
        cache
            .save_as_of(1, "x", inside.clone(), u64::MAX)
            .is_ok_and(leasecache::Saved::is_stale)
    );
    let loaded = cache.get_or_load(1, |_| Ok::<_, ()>("old row"));
    assert_eq!(loaded.unwrap(), "old row");
    assert_eq!(cache.get(&1), None, "get_or_load cached inside an intent");
    assert!(!intent.commit(), "nothing was cached to remove");
    // The end fences the leases taken inside.
    assert!(
        cache
            .save_with_lease(1, "x", inside)
            .is_ok_and(leasecache::Saved::is_stale)
    );
    assert!(fresh_save_lands(&cache, 1));
}

#[test]
fn intents_end_by_rollback_by_drop_and_nest() {
    let cache: Cache<u32, &'static str> = Cache::new(100);
    let outer = cache.begin_write(&1);
    let inner = cache.begin_write(&1);
    inner.rollback();
    assert!(
        !fresh_save_lands(&cache, 1),
        "the outer intent is still open"
    );
    let inside = cache.lease(&1);
    drop(outer);
    assert!(
        cache
            .save_with_lease(1, "x", inside)
            .is_ok_and(leasecache::Saved::is_stale),
        "drop did not fence"
    );
    assert!(fresh_save_lands(&cache, 1));
}

#[test]
fn an_intent_commit_applies_the_hold_off_and_the_position() {
    let clock = ManualClock::new();
    let cache = cache_with(&clock, Some(SEC));
    let intent = cache.begin_write(&1);
    clock.advance(10 * SEC); // a long transaction: the begin's own hold-off has passed
    assert!(!fresh_save_lands(&cache, 1), "the intent refuses");
    intent.commit_as_of(42);
    assert!(
        !fresh_save_lands(&cache, 1),
        "the commit's hold-off refuses"
    );
    clock.advance(SEC);
    let lease = cache.lease(&1);
    assert!(
        cache
            .save_as_of(1, "v", lease.clone(), 41)
            .is_ok_and(leasecache::Saved::is_stale)
    );
    assert!(
        cache
            .save_as_of(1, "v", lease, 42)
            .is_ok_and(leasecache::Saved::is_stored)
    );
    // A rollback applies no hold-off.
    cache.begin_write(&2).rollback();
    assert!(fresh_save_lands(&cache, 2));
}
