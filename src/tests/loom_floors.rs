//! Loom model of the one floor a lease reads lock-free: the hold-off deadline (see
//! `crate::floors`). Positions and intents are read only under the shard's lock.
//!
//! Run: `RUSTFLAGS="--cfg leasecache_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --profile loom --lib loom`

use super::loom::model;
use crate::sync::Arc;
use crate::{Cache, ManualClock};
use loom::thread;
use std::time::Duration;

/// A lease races a purge with a hold-off, on a clock that never moves. A lease taken before the
/// purge is fenced by its generation; a lease that sees the purge's generation must see its
/// deadline too (the deadline and the flag that makes leases read it are stored before the
/// generation's Release store, and read after its Acquire load). Either way the save is refused.
#[test]
fn lease_vs_purge_with_hold_off() {
    model("lease_vs_purge_with_hold_off", || {
        let cache: Arc<Cache<u32, u64, ahash::RandomState>> = Arc::new(
            Cache::builder()
                .max_capacity(4)
                .shards(1)
                .lease_slots(64)
                .hasher(ahash::RandomState::with_seeds(1, 2, 3, 4))
                .clock(ManualClock::new())
                .build(),
        );
        let purger = {
            let cache = cache.clone();
            thread::spawn(move || cache.purge_with_hold_off(&1, Duration::from_secs(1)))
        };
        let lease = cache.lease(&1);
        purger.join().unwrap();
        assert!(
            cache
                .save_with_lease(1, 7, lease)
                .is_ok_and(crate::Saved::is_stale),
            "a lease taken inside the hold-off saved"
        );
    });
}
