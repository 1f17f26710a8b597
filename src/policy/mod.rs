//! Eviction policy building blocks: S3-FIFO queues live in the shard; this module holds the
//! frequency sketch (admission), the ghost queue (recently evicted hashes) and the climber that
//! sizes the window (`climber.rs`).
//!
//! The policy is S3-FIFO (Yang et al., SOSP 2023) with a small queue whose share of the capacity,
//! the window, adapts while the cache runs (S3-FIFO gives it a fixed 10 %, W-TinyLFU 1 % that
//! Caffeine's hill climber then moves; here the cache's shards duel over it, see `climber.rs`).
//! The window starts at zero, where a new entry faces admission as soon as the shard is full (except that an explicit `insert` is never the victim
//! of its own eviction, so it can be read right back), and grows while a larger one clearly
//! misses less: on traces where recency predicts the next access (databases, storage, CDNs, key-value
//! stores), a new key read again soon after its miss is kept. See `climber.rs` for the rules and
//! `Shard::window` for where the window stays zero. The rest, each measured on the hit-ratio
//! harness (`cargo bench --bench hit_ratio`), with the window at zero:
//! - while the main queue has room, entries leaving the small queue move into it rather than being
//!   dropped, so a cold start or a loop larger than the cache fills the whole capacity; except in
//!   shards of 8,192 entries and up while misses are rarely ghost hits and the duel gives them no
//!   window, where the small queue is a probation pool (in a duel, the pool of the fill lasts until
//!   the shard's first epoch in the larger half, see `Shard::pool`): the keys that filled the shard
//!   without a hit stay in it and leave first, oldest first, each new key joining them at the back,
//!   and an entry moves on to the main queue with a hit, with two counts in the sketch while others
//!   wait behind it, or by the admission below (keys seen once give way to keys seen twice, as
//!   under LFU);
//! - once it is full, a one-hit entry leaving the small queue is admitted only if a TinyLFU-style
//!   count-min sketch (11 counters an entry, in cache-line blocks) says it was requested at least
//!   two counts more than the main queue's next victim (whose unfolded hits count too; in shards
//!   of 8,192 entries and up, the next victim is the first entry without hits to spend);
//! - the sketch ages every 14 additions an entry and updates conservatively (see `sketch.rs`);
//! - the ghost is a direct-mapped table of 16-bit fingerprints (see `ghost.rs`); a ghost hit goes
//!   to the main queue, if misses are rarely ghost hits (Zipf), when it counts at least as much
//!   as that victim (one more in shards of 8,192 entries and up) or before the sketch's first
//!   halving; if they often are (a loop), only on the
//!   small queue's two-count margin (see `Shard::admit_ghost`); else it starts over in the small
//!   queue;
//! - small caches get fewer shards (at least 128 entries each), since each shard runs its own
//!   policy;
//! - the admission above applies unless the shards' duel turns it off: where the window has grown
//!   to 12.5 % or more in a cache of eight shards or more, it tests running without it in half
//!   the shards, and keeps what misses less for a while (see `climber.rs`, `AdmissionDuel`);
//! - in a cache of 1,024 entries or more, with several shards and no weigher, miniature
//!   simulations of this policy at seven settings of window and admission, on a sample of the
//!   lookups, let the duel jump to the setting they clearly favour instead of stepping there
//!   (no admission only with eight shards or more; see `minisim.rs`).
//!
//! Hits never touch the sketch (the hit path stays a lock-free table lookup plus a relaxed store of
//! the entry's 2-bit frequency, beside the lookup counters of the thread's own record, where a
//! sampled lookup, one in 4 to 2,048 up to 1M entries, also leaves its hash, bit 0 replaced by
//! whether it missed, when simulations run); an entry's hits are folded into the sketch when the
//! policy next looks at it.

mod climber;
mod ghost;
mod minisim;
mod sketch;

/// Expected entries from which a shard is large: it compares a candidate with the entry eviction
/// would really take (see `Shard::settle_main_head`), a ghost hit must beat its victim rather
/// than tie (see `Shard::admit_ghost`), while returns are rare and the duel gives it no window its
/// small queue is a probation pool (see `Shard::evict_one`), and so the duel leaves a window of
/// zero only on clearer evidence (see `climber::LARGE_LEAVE_BOUND`).
pub(crate) const LARGE_SHARD_ENTRIES: usize = 8192;

pub(crate) use climber::{CacheReturns, Climber, Duel};
pub(crate) use ghost::Ghost;
pub(crate) use minisim::MiniSim;
pub(crate) use sketch::Sketch;
