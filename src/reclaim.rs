//! Lock-free reads: how `get` reads a shard that writers change under it, and when a writer may
//! free what it unlinked.
//!
//! Readers take no lock. A writer (under its shard's lock) never changes a slot or a table that a
//! reader can reach: it writes a new slot, publishes it with one atomic store into the table, and
//! *retires* what it unlinked (an old slot, an old table). Retired things are freed only once no
//! reader can still be looking at them. (A value of at most one word that needs no drop, in an
//! entry without a deadline, is the exception: it is replaced in place, with nothing to retire;
//! see `Slot::IN_PLACE`.) That is epoch-based reclamation with an asymmetric fence:
//!
//! - Each cache has an epoch counter. Each thread that reads the cache has a [`Record`] (one per
//!   thread and cache) whose `state` holds the epoch the thread saw when its current or last read
//!   began, and whether it is reading now.
//! - A read ([`Readers::enter`]) loads the epoch, stores `epoch | ACTIVE` into its record, issues
//!   the *light* half of the fence (a compiler fence on Linux), reads, and stores `epoch` back
//!   (inactive). No locked instruction, and the record's cache line is written by its thread only.
//! - A writer batches what it retires ([`Limbo`]), then [advances](Readers::advance) the epoch to
//!   `e`. The batch may be freed once every record either (a) began a read at epoch `e` or later
//!   (that read loaded `e` with Acquire, so it sees the unlinking, which happened before `e` was
//!   published), or (b) is inactive as seen *after* a heavy barrier issued after the advance.
//!   (b) needs the barrier because without it an inactive-looking record may hide an announcement
//!   still sitting in its thread's store buffer; the heavy half of the fence (`membarrier`) makes
//!   every thread's earlier stores visible. Busy readers pass by (a) on their own, so the
//!   barrier, which costs microseconds when other threads are running, is only paid for records
//!   of threads that stopped reading this cache, and one barrier serves every shard's batch
//!   published before it.
//! - A record that no thread owns (its thread exited after its reads) is idle without a barrier:
//!   its owner released it after its last read ended. The registry lock is held while the
//!   records are checked, never across the barrier.
//! - If `membarrier` fails after the cache was built (a seccomp filter installed since), the cache
//!   falls back to fences for good instead of aborting: reads issue full fences from the next
//!   epoch on, and the writer's check, after a `SeqCst` fence of its own, counts an idle-looking
//!   record as idle once its last read began at that epoch or later (a record from before holds
//!   batches back until its thread reads again or exits).
//! - A record still active at an epoch before `e` holds the batch back until it moves on; the
//!   writer never waits for it (retired slots stay allocated and the slab grows instead), so a
//!   thread stuck inside a `K::eq` or `V::clone` of this cache (or preempted inside a read) only
//!   delays reclamation. A shard's writer checks again only once an eighth of a batch more has
//!   been retired (`Shard::collect`), not at its next retirement.
//!
//! The writer's own record needs no barrier: its reads end before its writes in program order,
//! unless it writes from inside a read (a `V::clone` that writes to the same cache), in which case
//! the batch waits for that read to end like any other.
//!
//! # The crates it was measured against (issue 17)
//!
//! Built with `--cfg leasecache_reclaim="epoch"` or `--cfg leasecache_reclaim="seize"`, a read
//! is protected by a `crossbeam-epoch` pin (the global collector) or a `seize` guard instead of
//! the announcement, and a batch's grace period is the crate's: the writer hands the crate a
//! deferred function (crossbeam-epoch) or a retired object (seize) that sets the batch's flag
//! once every read that could see the batch has ended, and frees the batch when it sees the flag
//! (Acquire). Everything else (records for the hit and miss counts, batches, the slab's free
//! list) is the same, so `benches/ops.rs` compares the schemes on the real read and write paths.
//! Only for that comparison: not a supported configuration (BENCHMARKS.md has the numbers and
//! the decision).

#![allow(unsafe_code)]

use crate::sync::{
    AtomicBool, AtomicU64, Mutex, MutexGuard, Ordering, fence, heavy_barrier, light_barrier,
    thread_locals,
};
use crossbeam_utils::CachePadded;
use std::cell::{Cell, RefCell};
use std::sync::Arc;

/// Whether a crate protects reads instead of the hand-written scheme (see the module docs).
const CRATE_SCHEME: bool = cfg!(any(
    leasecache_reclaim = "epoch",
    leasecache_reclaim = "seize"
));

/// The `seize` collector of the comparison build: one for the process, as crossbeam-epoch's
/// global one. Batches of one retired object (a flag per batch of slots, see [`Grace`]).
#[cfg(leasecache_reclaim = "seize")]
fn seize_collector() -> &'static seize::Collector {
    static COLLECTOR: std::sync::OnceLock<seize::Collector> = std::sync::OnceLock::new();
    COLLECTOR.get_or_init(|| seize::Collector::new().batch_size(1))
}

/// The crate's protection of one read in the comparison build.
#[cfg(leasecache_reclaim = "epoch")]
type CratePin = crossbeam_epoch::Guard;
#[cfg(leasecache_reclaim = "seize")]
type CratePin = seize::LocalGuard<'static>;
#[cfg(not(any(leasecache_reclaim = "epoch", leasecache_reclaim = "seize")))]
type CratePin = ();

/// The crate's pin in the comparison build, nothing otherwise.
#[inline(always)]
fn crate_pin_or_unit() -> CratePin {
    #[cfg(any(leasecache_reclaim = "epoch", leasecache_reclaim = "seize"))]
    return crate_pin();
}

#[cfg(any(leasecache_reclaim = "epoch", leasecache_reclaim = "seize"))]
#[inline]
fn crate_pin() -> CratePin {
    #[cfg(leasecache_reclaim = "epoch")]
    return crossbeam_epoch::pin();
    #[cfg(leasecache_reclaim = "seize")]
    return seize_collector().enter();
}

/// The grace period of one batch under a crate's scheme: a flag the crate sets once every read
/// that could see the batch has ended.
#[derive(Debug, Default)]
struct Grace(Option<std::sync::Arc<std::sync::atomic::AtomicBool>>);

impl Grace {
    /// Starts the grace period of a batch whose items were unlinked before this call.
    fn start() -> Self {
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        #[cfg(leasecache_reclaim = "epoch")]
        {
            let set = flag.clone();
            let guard = crossbeam_epoch::pin();
            // Release pairs with the Acquire load in `over`.
            guard.defer(move || set.store(true, std::sync::atomic::Ordering::Release));
            guard.flush();
        }
        #[cfg(leasecache_reclaim = "seize")]
        {
            /// Sets the flag; seize runs it once no read that could see the batch is under way.
            ///
            /// # Safety
            /// `ptr` came from `Box::into_raw` in `start` and is reclaimed once.
            unsafe fn set(
                ptr: *mut std::sync::Arc<std::sync::atomic::AtomicBool>,
                _: &seize::Collector,
            ) {
                // SAFETY: see the function's contract.
                let flag = unsafe { Box::from_raw(ptr) };
                flag.store(true, std::sync::atomic::Ordering::Release);
            }
            let ptr = Box::into_raw(Box::new(flag.clone()));
            // SAFETY: the flag is reachable only through this retired box, which `set` frees.
            unsafe { seize_collector().retire(ptr, set) };
        }
        Self(Some(flag))
    }

    /// seize retires a thread's batch only once it holds an entry for every thread inside a
    /// guard: one more (empty) entry, so that a batch that waits for entries gets them.
    #[cfg(leasecache_reclaim = "seize")]
    fn nudge() {
        let filler = Box::into_raw(Box::new(0u8));
        // SAFETY: nothing else knows the box; `boxed` frees it as the `Box` it is.
        unsafe { seize_collector().retire(filler, seize::reclaim::boxed) };
    }

    /// Whether the grace period is over; nudges the crate's collection when it is not.
    fn over(&self) -> bool {
        let Some(flag) = &self.0 else { return true };
        // Acquire pairs with the Release store of the crate's callback.
        if flag.load(std::sync::atomic::Ordering::Acquire) {
            return true;
        }
        #[cfg(leasecache_reclaim = "epoch")]
        crossbeam_epoch::pin().flush();
        #[cfg(leasecache_reclaim = "seize")]
        Self::nudge();
        flag.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// `Record::state`'s bit 0: the thread is inside a read. The epoch is `state >> 1`.
const ACTIVE: u64 = 1;

/// One thread's view of one cache: its read announcement and its lookup counters, on a cache
/// line that only its owner writes. A record outlives its thread: the next thread to read the
/// cache takes it over, counters and all.
#[derive(Debug, Default)]
pub(crate) struct Record {
    /// `epoch << 1 | ACTIVE` while reading, `epoch << 1` after, for the epoch the last read began
    /// at. Written only by the owning thread.
    state: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    /// The hashes of this thread's sampled lookups, bit 0 replaced by whether the lookup missed,
    /// for the cache's miniature simulations (`policy::MiniSim`): a ring of the last `SAMPLES`, the
    /// newest at `sampled - 1`; a lookup is sampled when its hash has every bit of `sample_mask`
    /// clear (the readers' mask, copied here so that a lookup reads it from the record it writes
    /// anyway; rustc's field order puts it on the counters' line today, which `repr(Rust)` does not
    /// promise). Written only by the owner.
    samples: [AtomicU64; SAMPLES],
    sampled: AtomicU64,
    sample_mask: u64,
    /// Whether a thread owns the record. Set under the registry lock by the thread that claims
    /// it (Acquire), cleared by its owner (Release) when the thread exits, or when the one read
    /// it was claimed for ends: what one owner wrote happens before the next owner's accesses.
    owned: AtomicBool,
}

/// The sampled lookups a record keeps until a writer drains them (see `Readers::drain_samples`):
/// writers drain every few dozen new keys, so a thread loses samples only if it makes more than
/// this many sampled lookups (64 to 32,768 lookups, as the cache samples one in 4 to 2,048) in
/// between: in a cache that hardly misses, where the simulations have little to tell.
#[cfg(not(leasecache_loom))]
const SAMPLES: usize = 16;
#[cfg(leasecache_loom)]
const SAMPLES: usize = 1;

/// The most sampled lookups one drain hands over: a writer replays them through the
/// simulations under its shard's lock, about 1,900 instructions each, so a drain of many
/// threads' records (16 each) would hold it for millions; the rest are dropped, as those a
/// record's ring overwrites are.
const MAX_DRAINED: usize = 64;

/// The mask of a cache that samples nothing: no hash passes it (see [`Record::count`]).
pub(crate) const NO_SAMPLES: u64 = u64::MAX;

impl Record {
    /// Counts a lookup of `hash` that found a live value (`hit`) or not, and samples it if its
    /// hash passes the cache's mask.
    #[inline]
    fn count(&self, hit: bool, hash: u64) {
        Record::bump(if hit { &self.hits } else { &self.misses });
        // `| 1`: a mask of all ones (no sampling) passes no hash, not even zero; a sampling
        // mask's bits are all high.
        if (hash | 1) & self.sample_mask == 0 {
            // Bit 0 carries the miss: the models compare their own misses with the cache's on
            // the same lookups (see `MiniSim::access`).
            self.sample(hash & !1 | u64::from(!hit));
        }
    }

    /// Keeps a sampled lookup's hash in the ring.
    #[inline]
    fn sample(&self, hash: u64) {
        // Relaxed: only the owner writes; Release on the count publishes the hash with it to a
        // drain that reads the count with Acquire (a drain may still read a newer hash in a
        // place the owner has reused meanwhile: a sample out of order, harmless to the models).
        let n = self.sampled.load(Ordering::Relaxed);
        self.samples[n as usize % SAMPLES].store(hash, Ordering::Relaxed);
        self.sampled.store(n + 1, Ordering::Release);
    }

    /// Adds one to a counter only this record's thread writes: a plain load and store, no locked
    /// read-modify-write.
    #[inline]
    fn bump(counter: &AtomicU64) {
        // Relaxed: counters order nothing; the owner is the only writer.
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

/// The readers of one cache: the epoch and one [`Record`] per thread that has read it.
pub(crate) struct Readers {
    /// Unique in the process, never reused: names this `Readers` in `LAST`.
    id: u64,
    /// Whether reads may use a compiler fence as their half of the asymmetric fence (the heavy
    /// half is `membarrier`); a full fence otherwise. Set when the cache is built; cleared, for
    /// good, if a heavy barrier ever fails (see [`Readers::lose_barrier`]).
    fast: AtomicBool,
    /// The epoch from which every read issues a full fence: 0 if reads always did, `u64::MAX`
    /// while they may use a compiler fence, the first epoch published after `fast` was cleared
    /// otherwise. An idle-looking record whose last read began at this epoch or later, checked
    /// after a `SeqCst` fence, is idle: the two fences order its announcement and the check.
    fenced_from: AtomicU64,
    epoch: CachePadded<AtomicU64>,
    /// The highest epoch published before a heavy barrier was issued. `membarrier` is
    /// process-wide, so one barrier serves the batches of every shard whose epoch is at most
    /// this: a cache of 8 shards issues an eighth of the barriers it would per shard.
    barrier_epoch: AtomicU64,
    /// Every record of this cache, owned or not; a record is never removed, so its address is
    /// stable while the `Readers` lives. The lock is taken to claim a record and to check the
    /// records: a writer's check either sees a new record, or that record's thread claims it
    /// after the check and so reads the epoch the writer published before it (see `quiescent`).
    registry: Mutex<Vec<Arc<CachePadded<Record>>>>,
    /// The mask a lookup's hash is sampled by (see [`Record::count`]), `NO_SAMPLES` unless the
    /// cache runs miniature simulations.
    sample_mask: u64,
    /// NEGATIVE CONTROLS, compiled only for the loom models: a deliberately broken protocol.
    /// The models that set it must fail.
    #[cfg(all(test, leasecache_loom))]
    pub(crate) broken: Option<Broken>,
    /// Loom models only: model `membarrier` instead of full fences on both sides (see
    /// [`Readers::model_membarrier`]), so that the barrier path and its sharing between shards
    /// (`barrier_epoch`) are explored.
    #[cfg(all(test, leasecache_loom))]
    membarrier: bool,
}

/// Loom models only: checks that found a batch free thanks to a barrier issued for an earlier
/// check (possibly another shard's), with `membarrier` modelled: the model of barrier sharing
/// asserts that its executions reach this path.
#[cfg(all(test, leasecache_loom))]
pub(crate) static SERVED_BY_ANOTHER_BARRIER: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// A way to break the reclamation protocol (or, for `src/tests/loom_writes.rs`, the write
/// path), for the loom models' negative controls.
#[cfg(all(test, leasecache_loom))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Broken {
    /// Reads do not announce themselves: writers free what they still read.
    UnannouncedReads,
    /// Writers trust a record that looks idle without the heavy barrier: an announcement still
    /// in its thread's store buffer goes unseen.
    NoBarrier,
    /// A barrier covers every batch, also those published after it: a writer skips the barrier
    /// its batch needs because another shard's writer issued one earlier.
    BarrierCoversLaterBatches,
    /// Writes do not detach the load in flight for their key (`Cache::begin_write`): a caller
    /// that starts after a purge returned can join a load that read the source before it.
    NoDetach,
    /// Writes publish their generation unmarked from the start (`Cache::begin_write`): a
    /// lock-free lease taken while the write is under way carries its generation before the
    /// write is visible, and a save under it can land after the write.
    NoBusyMark,
}

thread_locals! {
    /// The record this thread used last and the id of the `Readers` it belongs to: a thread
    /// usually reads one cache many times in a row, and this finds its record with one
    /// thread-local load. It has no destructor, so it stays usable while the thread's other
    /// thread-locals are destroyed; `OWNED`'s destructor empties it before giving the records up.
    static LAST: Cell<(u64, *const Record)> = Cell::new((0, std::ptr::null()));

    /// The records this thread owns, with the ids of their `Readers`.
    static OWNED: Owned = Owned(RefCell::new(Vec::new()));
}

#[cfg(all(test, not(leasecache_loom)))]
std::thread_local! {
    /// Whether the registry could be locked when this thread last issued a heavy barrier.
    static REGISTRY_FREE_AT_BARRIER: Cell<Option<bool>> = const { Cell::new(None) };
}

/// The records a thread owns; released when the thread exits.
struct Owned(RefCell<Vec<(u64, Arc<CachePadded<Record>>)>>);

impl Drop for Owned {
    fn drop(&mut self) {
        // A failing loom model drops its threads' locals while unwinding, outside the model,
        // where loom's atomics cannot be touched.
        #[cfg(all(test, leasecache_loom))]
        if std::thread::panicking() {
            return;
        }
        // Forget the fast path first: a read in a thread-local destructor that runs after this
        // one must not reach a record another thread may own by then (it borrows one for the
        // read instead, see `Readers::record_slow`). (`LAST` is always there outside loom; a
        // loom thread may have destroyed it already, which forgets it too.)
        let _ = LAST.try_with(|last| last.set((0, std::ptr::null())));
        for (_, record) in self.0.get_mut().drain(..) {
            // Release pairs with the Acquire claim of the next owner.
            record.owned.store(false, Ordering::Release);
        }
    }
}

/// A thread's record for one read or one count: its own, or, in a thread whose thread-locals
/// are being destroyed, one borrowed until [`Mine::done`].
#[derive(Clone, Copy)]
struct Mine<'a> {
    record: &'a Record,
    borrowed: bool,
}

impl Mine<'_> {
    /// Gives a borrowed record back.
    #[inline]
    fn done(self) {
        if self.borrowed {
            // Release pairs with the Acquire claim of the next owner.
            self.record.owned.store(false, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers")
            .field("epoch", &self.epoch.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A read in progress on this thread; ends when dropped (also when a `K::eq` or `V::clone` run
/// inside it panics).
#[must_use]
pub(crate) struct ReadGuard<'a> {
    mine: Mine<'a>,
    /// The state to store when the read ends: inactive at its epoch, or, for a read nested in
    /// another one on the same thread, the outer read's (still active) announcement.
    leave: u64,
    /// The crate's protection, in the comparison build (see the module docs); `()` otherwise.
    _pin: CratePin,
    /// A read ends on the thread that began it.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Readers {
    pub(crate) fn new() -> Self {
        let fast = crate::sync::init_barriers();
        Self {
            fast: AtomicBool::new(fast),
            fenced_from: AtomicU64::new(if fast { u64::MAX } else { 0 }),
            id: crate::sync::next_instance_id(),
            epoch: CachePadded::new(AtomicU64::new(0)),
            barrier_epoch: AtomicU64::new(0),
            registry: Mutex::new(Vec::new()),
            sample_mask: NO_SAMPLES,
            #[cfg(all(test, leasecache_loom))]
            broken: None,
            #[cfg(all(test, leasecache_loom))]
            membarrier: false,
        }
    }

    /// Loom models only: from now on the two halves of the asymmetric fence are modelled as
    /// `membarrier` is, instead of as full fences (which make any `SeqCst` fence of a writer act
    /// as a barrier, so the barrier path and `barrier_epoch` were never explored). A read
    /// announces itself with an `AcqRel` swap and no fence; the heavy barrier is an `AcqRel`
    /// read-modify-write of every record. An RMW reads the latest value of the record, so the
    /// writer sees every announcement made before the barrier (as `membarrier` drains every
    /// thread's store buffer); an announcement made after it reads the barrier's RMW, so that
    /// read sees everything the writer stored before the barrier (as the reader's CPU ran a full
    /// fence inside it). Reads between barriers stay unfenced, as with a compiler fence.
    #[cfg(all(test, leasecache_loom))]
    pub(crate) fn model_membarrier(&mut self) {
        self.membarrier = true;
    }

    /// The heavy half of the fence; under loom with [`model_membarrier`](Self::model_membarrier),
    /// its model.
    fn heavy_barrier(&self) -> bool {
        #[cfg(all(test, leasecache_loom))]
        if self.membarrier {
            for record in self.registered().iter() {
                record.state.fetch_add(0, Ordering::AcqRel);
            }
            return true;
        }
        heavy_barrier()
    }

    /// This thread's record.
    #[inline]
    fn record(&self) -> Mine<'_> {
        let (id, record) = LAST.with(Cell::get);
        if id == self.id {
            // SAFETY: `LAST` holds `self.id` only with a pointer to a record of `self` that this
            // thread owns (set in `record_slow`, cleared before the thread gives its records up);
            // ids are never reused, so that `Readers` is `self`, alive for the returned borrow,
            // and its records never move or are freed before it is dropped.
            let record = unsafe { &*record };
            return Mine {
                record,
                borrowed: false,
            };
        }
        self.record_slow()
    }

    #[cold]
    fn record_slow(&self) -> Mine<'_> {
        let own = OWNED.try_with(|owned| {
            let mut owned = owned.0.borrow_mut();
            if let Some((_, record)) = owned.iter().find(|(id, _)| *id == self.id) {
                return Arc::as_ptr(record);
            }
            // Records of caches dropped since then: this thread holds the last reference.
            owned.retain(|(_, record)| Arc::strong_count(record) > 1);
            let record = self.claim();
            let ptr = Arc::as_ptr(&record);
            owned.push((self.id, record));
            ptr
        });
        let (record, borrowed) = match own {
            Ok(record) => (record, false),
            // The thread is exiting and has given its records up: borrow one for this read.
            Err(_) => (Arc::as_ptr(&self.claim()), true),
        };
        // SAFETY: `self.registry` holds a reference to every record of `self` until `self` is
        // dropped, so the record outlives the returned borrow.
        let record: &Record = unsafe { &*record };
        if !borrowed {
            LAST.with(|last| last.set((self.id, record)));
        }
        Mine { record, borrowed }
    }

    /// Claims a record nobody owns, or a new one.
    fn claim(&self) -> Arc<CachePadded<Record>> {
        let mut records = self.registry.lock();
        for record in records.iter() {
            // Under the lock no other thread claims; Acquire pairs with the owner's release.
            if !record.owned.load(Ordering::Relaxed) && !record.owned.swap(true, Ordering::Acquire)
            {
                return record.clone();
            }
        }
        let record = Arc::new(CachePadded::new(Record {
            owned: AtomicBool::new(true),
            sample_mask: self.sample_mask,
            ..Record::default()
        }));
        records.push(record.clone());
        record
    }

    /// This thread's own record, if it has one; never claims.
    fn own(&self) -> Option<*const Record> {
        OWNED
            .try_with(|owned| {
                owned
                    .0
                    .borrow()
                    .iter()
                    .find(|(id, _)| *id == self.id)
                    .map(|(_, record)| &***record as *const Record)
            })
            .ok()
            .flatten()
    }

    /// The records, under the registry lock.
    fn registered(&self) -> Registered<'_> {
        Registered(self.registry.lock())
    }

    /// Begins a read on this thread. Lock-free: a thread-local lookup, a load of the epoch and a
    /// store to this thread's record.
    #[inline]
    pub(crate) fn enter(&self) -> ReadGuard<'_> {
        let mine = self.record();
        if CRATE_SCHEME {
            // The comparison build: the crate protects the read; the record only counts.
            return ReadGuard {
                mine,
                leave: 0,
                _pin: crate_pin_or_unit(),
                _not_send: std::marker::PhantomData,
            };
        }
        let record = mine.record;
        // Relaxed: only this thread writes its record (and it owns it since an Acquire claim).
        let state = record.state.load(Ordering::Relaxed);
        #[cfg(all(test, leasecache_loom))]
        if self.broken == Some(Broken::UnannouncedReads) {
            return ReadGuard {
                mine,
                leave: state,
                _pin: crate_pin_or_unit(),
                _not_send: std::marker::PhantomData,
            };
        }
        // Acquire pairs with the AcqRel `fetch_add` in `advance`: a read that begins at epoch `e`
        // sees every unlinking done before `e` was published.
        let epoch = self.epoch.load(Ordering::Acquire) << 1;
        // A read nested in another one on this thread (a `V::clone` that reads the cache) keeps
        // the outer read's announcement: it stores it again, which changes nothing, and so does
        // its end. Chosen without a branch.
        let (announce, leave) = if state & ACTIVE != 0 {
            (state, state)
        } else {
            (epoch | ACTIVE, epoch)
        };
        // Release: a writer that reads this announcement (Acquire, in `quiescent`) sees every
        // access of this thread's earlier reads as done.
        #[cfg(all(test, leasecache_loom))]
        if self.membarrier {
            // The model of an announcement ordered by `membarrier` (see `model_membarrier`).
            record.state.swap(announce, Ordering::AcqRel);
            return ReadGuard {
                mine,
                leave,
                _pin: crate_pin_or_unit(),
                _not_send: std::marker::PhantomData,
            };
        }
        record.state.store(announce, Ordering::Release);
        // Orders the announcement before the loads of the read, in pair with `heavy_barrier` in
        // `quiescent`. Relaxed: loaded after the epoch (Acquire), so a read that begins at
        // `fenced_from` or later sees `fast` cleared (see `lose_barrier`).
        light_barrier(self.fast());
        ReadGuard {
            mine,
            leave,
            _pin: crate_pin_or_unit(),
            _not_send: std::marker::PhantomData,
        }
    }

    /// Readers whose lookups are sampled by `mask` (see [`Record::count`]).
    pub(crate) fn sampled_by(mut self, mask: u64) -> Self {
        self.sample_mask = mask;
        self
    }

    /// Counts a lookup of `hash` that found a live value (`hit`) or not, for the calling thread.
    pub(crate) fn count(&self, hit: bool, hash: u64) {
        let mine = self.record();
        mine.record.count(hit, hash);
        mine.done();
    }

    /// Appends to `batch` the hashes (bit 0: missed) of every record's sampled lookups since the
    /// last drain (`drained`: each record's count then, in the registry's order, brought up to
    /// date), the last `SAMPLES` of each record at most.
    pub(crate) fn drain_samples(&self, drained: &mut Vec<u64>, batch: &mut Vec<u64>) {
        let records = self.registered();
        drained.resize(records.0.len(), 0);
        for (record, seen) in records.iter().zip(drained.iter_mut()) {
            // Acquire: pairs with `Record::sample`'s Release.
            let sampled = record.sampled.load(Ordering::Acquire);
            // At most `MAX_DRAINED` in all: the writer replays them under its shard's lock.
            let room = MAX_DRAINED.saturating_sub(batch.len()) as u64;
            let from = (*seen).max(sampled.saturating_sub((SAMPLES as u64).min(room)));
            batch.extend(
                (from..sampled)
                    .map(|i| record.samples[i as usize % SAMPLES].load(Ordering::Relaxed)),
            );
            *seen = sampled;
        }
    }

    /// How many records the cache has (owned or not).
    #[cfg(test)]
    pub(crate) fn records(&self) -> usize {
        self.registry.lock().len()
    }

    /// Hits and misses counted so far, summed over threads.
    pub(crate) fn lookups(&self) -> (u64, u64) {
        self.registered().iter().fold((0, 0), |(h, m), r| {
            (
                h + r.hits.load(Ordering::Relaxed),
                m + r.misses.load(Ordering::Relaxed),
            )
        })
    }

    /// Publishes a new epoch, after the caller's unlinking, and returns it.
    pub(crate) fn advance(&self) -> u64 {
        // AcqRel: the Release half publishes the caller's unlinking to every read that begins at
        // the new epoch or a later one (RMWs by other writers continue the release sequence).
        self.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether no read can still see what was unlinked before `epoch` was published (see the
    /// module docs). Issues a heavy barrier when only idle-looking records stand in the way and
    /// no barrier issued since `epoch` was published covers them.
    ///
    /// The registry lock is held for the checks, not across the barrier (which costs
    /// microseconds and would hold up every other shard's check and every thread's first read).
    pub(crate) fn quiescent(&self, epoch: u64) -> bool {
        // Acquire pairs with the Release `fetch_max` below: the barrier that published it was
        // issued before the records are read here.
        let barrier_epoch = self.barrier_epoch.load(Ordering::Acquire);
        let covered = barrier_epoch >= epoch;
        #[cfg(all(test, leasecache_loom))]
        let covered = covered
            || (self.broken == Some(Broken::BarrierCoversLaterBatches) && barrier_epoch > 0);
        // A record added after this check belongs to a thread that takes the registry after it,
        // so after `epoch` was published: that thread's reads begin at `epoch` or later.
        let records = self.registered();
        if covered {
            // Orders this thread's reads of the records after that barrier for the memory model
            // too (`SeqCst` fence rules are about the fencing thread); free next to a barrier.
            fence(Ordering::SeqCst);
        }
        match self.scan(&records, epoch, if covered { 0 } else { u64::MAX }) {
            Scan::Quiescent => {
                #[cfg(all(test, leasecache_loom))]
                if barrier_epoch >= epoch && self.membarrier {
                    SERVED_BY_ANOTHER_BARRIER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                return true;
            }
            Scan::Reading => return false,
            Scan::IdleBehind => {}
        }
        #[cfg(all(test, leasecache_loom))]
        if self.broken == Some(Broken::NoBarrier) {
            return true;
        }
        if self.fast() {
            drop(records);
            // Acquire: the epochs published before this load (and their unlinking) happen before
            // the barrier.
            let published = self.epoch.load(Ordering::Acquire);
            #[cfg(all(test, not(leasecache_loom)))]
            REGISTRY_FREE_AT_BARRIER
                .with(|seen| seen.set(Some(self.registry.try_lock().is_some())));
            if self.heavy_barrier() {
                // Release pairs with the Acquire load above, in later checks by any shard.
                self.barrier_epoch.fetch_max(published, Ordering::Release);
                // After the barrier, a record that still looks idle is idle: a read it begins from
                // now on sees the unlinking. One that became active at an old epoch began before
                // the barrier.
                return self.scan(&self.registered(), epoch, 0) == Scan::Quiescent;
            }
            self.lose_barrier();
            fence(Ordering::SeqCst);
            return self.fenced_scan(&self.registered(), epoch);
        }
        // A fence is cheap: no need to let the registry go for it.
        fence(Ordering::SeqCst);
        self.fenced_scan(&records, epoch)
    }

    /// The check after a `SeqCst` fence of this thread, for reads that issue full fences from
    /// `fenced_from` on: idle records at that epoch or later are idle; older ones wait until
    /// their thread reads again (or exits).
    fn fenced_scan(&self, records: &Registered<'_>, epoch: u64) -> bool {
        // Acquire pairs with the Release store in `lose_barrier`.
        #[cfg(not(all(test, leasecache_loom)))]
        let fenced_from = self.fenced_from.load(Ordering::Acquire);
        // Under loom reads always fence fully (see `fast`).
        #[cfg(all(test, leasecache_loom))]
        let fenced_from = 0;
        self.scan(records, epoch, fenced_from) == Scan::Quiescent
    }

    /// The heavy barrier failed: from now on reads issue full fences, and idle-looking records
    /// count as idle only from the epoch where that holds for every read.
    #[cold]
    fn lose_barrier(&self) {
        // Relaxed: the `advance` below publishes it to every read that begins at its epoch or
        // later (they load `fast` after the epoch, with Acquire).
        if self.fast.swap(false, Ordering::Relaxed) {
            let from = self.advance();
            // Release pairs with the Acquire load in `quiescent`. Until it lands, other writers
            // read `u64::MAX` and treat every idle-looking record as reading: safe.
            self.fenced_from.store(from, Ordering::Release);
        }
    }

    /// Whether records nobody owns are worth checking: they spare a cache that has (or had)
    /// `membarrier` a barrier each; where reads always fence fully, the check would cost more
    /// than the fence it spares (and, under loom, states to explore).
    fn spares_barriers(&self) -> bool {
        // Relaxed: set when the cache is built, then only moved from `u64::MAX` to an epoch.
        !cfg!(all(test, leasecache_loom)) && self.fenced_from.load(Ordering::Relaxed) != 0
    }

    /// Whether reads may use a compiler fence (see the field). Under loom, whether the model of
    /// `membarrier` is on (see [`model_membarrier`](Self::model_membarrier)); else loom models
    /// both halves as `SeqCst` fences, and the flag and its epoch are left out of the models
    /// instead of adding a step to every read and check.
    #[inline]
    fn fast(&self) -> bool {
        #[cfg(all(test, leasecache_loom))]
        return self.membarrier;
        // Relaxed: see `enter` and `lose_barrier`.
        #[cfg(not(all(test, leasecache_loom)))]
        self.fast.load(Ordering::Relaxed)
    }

    /// What the records say about reads that could see what was unlinked before `epoch`. A record
    /// that looks idle is idle if its last read began at `idle_from` or later (a barrier or fence
    /// makes its announcement visible), or if no thread owns it (its owner released it after its
    /// reads ended); otherwise it may hide an announcement still in its thread's store buffer.
    fn scan(&self, records: &Registered<'_>, epoch: u64, idle_from: u64) -> Scan {
        let own = self.own();
        let mut idle_behind = false;
        for record in records.iter() {
            // Acquire pairs with the Release stores in `enter` and `ReadGuard::drop`: what that
            // thread's earlier reads accessed happens before this check.
            let state = record.state.load(Ordering::Acquire);
            if own == Some(record as *const Record) {
                // This thread: its reads ended before this write began, unless this write runs
                // inside one of them.
                if state & ACTIVE != 0 {
                    return Scan::Reading;
                }
            } else if state >> 1 >= epoch {
                // Its latest read began at `epoch` or later: it sees the unlinking.
            } else if state & ACTIVE != 0 {
                // Reading since before `epoch`: it may hold what was unlinked.
                return Scan::Reading;
            } else if state >> 1 >= idle_from {
                // Idle, and a barrier says so.
            } else if self.spares_barriers() && !record.owned.load(Ordering::Acquire) {
                // Acquire pairs with the Release that gave the record up (`Owned::drop`,
                // `Mine::done`): every read of its last owner ended before. No one claims it
                // while the registry is locked.
            } else {
                idle_behind = true;
            }
        }
        if idle_behind {
            Scan::IdleBehind
        } else {
            Scan::Quiescent
        }
    }
}

/// What [`Readers::scan`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    /// No read can see the unlinked items.
    Quiescent,
    /// A read that may see them is under way.
    Reading,
    /// Only threads that look idle, with no barrier to say they are, stand in the way.
    IdleBehind,
}

/// The records of a [`Readers`], with its registry locked.
struct Registered<'a>(MutexGuard<'a, Vec<Arc<CachePadded<Record>>>>);

impl Registered<'_> {
    fn iter(&self) -> impl Iterator<Item = &Record> {
        self.0.iter().map(|record| &***record)
    }
}

impl ReadGuard<'_> {
    /// Ends the read, counting it as a lookup of `hash` that found a live value (`hit`) or not.
    #[inline]
    pub(crate) fn count(self, hit: bool, hash: u64) {
        self.mine.record.count(hit, hash);
    }
}

impl Drop for ReadGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if CRATE_SCHEME {
            self.mine.done();
            return;
        }
        // Release pairs with the Acquire load in `Readers::quiescent`: this read's accesses
        // happen before a writer that sees it ended frees anything.
        self.mine.record.state.store(self.leave, Ordering::Release);
        self.mine.done();
    }
}

/// What a shard's writer retired and may not free yet: a batch waiting for its grace period and
/// the things retired since, which will form the next batch. Two kinds: items (`T`, a shard's
/// slots) that a collection hands to the caller a whole batch at a time, so that it can move them
/// in bulk (one `append` onto a free list, not a pop, a match and a push per item: issue 17), and
/// things (`D`, a shard's replaced tables) that the batch drops itself once its grace period is
/// over.
#[derive(Debug)]
pub(crate) struct Limbo<T, D = ()> {
    pending: Batch<T, D>,
    waiting: Batch<T, D>,
    /// The epoch published after `waiting` was unlinked.
    epoch: u64,
    /// The comparison build's grace period of `waiting` (see the module docs).
    grace: Grace,
}

/// The items and things of one batch.
#[derive(Debug)]
struct Batch<T, D> {
    items: Vec<T>,
    dropped: Vec<D>,
}

impl<T, D> Batch<T, D> {
    fn is_empty(&self) -> bool {
        self.items.is_empty() && self.dropped.is_empty()
    }
}

impl<T, D> Default for Limbo<T, D> {
    fn default() -> Self {
        let batch = || Batch {
            items: Vec::new(),
            dropped: Vec::new(),
        };
        Self {
            pending: batch(),
            waiting: batch(),
            epoch: 0,
            grace: Grace::default(),
        }
    }
}

impl<T, D> Limbo<T, D> {
    /// Retires an item the caller has already made unreachable for new reads; a collection
    /// hands it back once no read can reach it.
    #[inline]
    pub(crate) fn retire(&mut self, item: T) {
        self.pending.items.push(item);
    }

    /// Retires a thing the caller has already made unreachable for new reads; it is dropped
    /// once no read can reach it.
    pub(crate) fn retire_dropped(&mut self, thing: D) {
        self.pending.dropped.push(thing);
    }

    /// Items (not things) retired since the last batch was formed.
    #[inline]
    pub(crate) fn pending(&self) -> usize {
        self.pending.items.len()
    }

    /// Whether nothing is retired and not yet freed.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.waiting.is_empty()
    }

    /// Items and things retired and not yet freed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let batch = |b: &Batch<T, D>| b.items.len() + b.dropped.len();
        batch(&self.pending) + batch(&self.waiting)
    }

    /// Frees the waiting batch if its grace period is over: drops its things and hands its items
    /// to `free`, which must take them all out of the vector (e.g. with `append`). Then, if
    /// nothing is waiting, makes what is pending the next batch and publishes its epoch. If
    /// `free` panics (a user `Drop`), the items it has not taken out stay in the batch, whose
    /// grace period is over, and the next call hands them over again.
    ///
    /// Returns whether a waiting batch was held back: its grace period was not over (a read that
    /// began before its epoch is still going), so nothing was freed.
    pub(crate) fn collect(&mut self, readers: &Readers, free: impl FnOnce(&mut Vec<T>)) -> bool {
        if !self.waiting.is_empty() {
            let over = if CRATE_SCHEME {
                self.grace.over()
            } else {
                readers.quiescent(self.epoch)
            };
            if !over {
                return true;
            }
            self.waiting.dropped.clear();
            free(&mut self.waiting.items);
            debug_assert!(self.waiting.items.is_empty(), "`free` left items behind");
        }
        if !self.pending.is_empty() {
            std::mem::swap(&mut self.pending, &mut self.waiting);
            if CRATE_SCHEME {
                self.grace = Grace::start();
            } else {
                self.epoch = readers.advance();
            }
        }
        false
    }

    /// Every item (not thing), freed or not: for a writer that has exclusive access to
    /// everything (dropping the cache).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.pending.items.iter().chain(self.waiting.items.iter())
    }
}

#[cfg(all(test, not(leasecache_loom)))]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Whether this process has `membarrier`; says so loudly when it has not.
    fn has_membarrier(readers: &Readers) -> bool {
        let fast = readers.fast.load(Ordering::Relaxed);
        if !fast {
            eprintln!("SKIPPED: no membarrier here, reads always issue full fences");
        }
        fast
    }

    /// A thread that has read a cache and stays alive without reading (its record owned and
    /// idle) until dropped; it reads once more on request.
    struct IdleReader {
        requests: mpsc::Sender<()>,
        done: mpsc::Receiver<()>,
    }

    impl IdleReader {
        fn start<'s>(s: &'s std::thread::Scope<'s, '_>, readers: &'s Readers) -> Self {
            let (requests, requested) = mpsc::channel::<()>();
            let (done_tx, done) = mpsc::channel();
            s.spawn(move || {
                drop(readers.enter());
                done_tx.send(()).unwrap();
                while requested.recv().is_ok() {
                    drop(readers.enter());
                    done_tx.send(()).unwrap();
                }
            });
            done.recv().unwrap();
            Self { requests, done }
        }

        fn read(&self) {
            self.requests.send(()).unwrap();
            self.done.recv().unwrap();
        }
    }

    /// A lookup whose hash passes the mask is kept for the simulations, drained once, the last
    /// `SAMPLES` of a thread at most; others are only counted.
    #[test]
    fn sampled_lookups_are_drained_once_and_the_newest_kept() {
        let readers = Readers::new().sampled_by(0xF0);
        for hash in 0..40u64 {
            readers.count(hash % 2 == 0, hash << 4);
        }
        assert_eq!(readers.lookups(), (20, 20));
        let (mut drained, mut batch) = (Vec::new(), Vec::new());
        readers.drain_samples(&mut drained, &mut batch);
        // Hashes 0, 256, 512 pass the mask 0xF0: 0 << 4, 16 << 4 and 32 << 4.
        assert_eq!(batch, [0, 256, 512]);
        batch.clear();
        readers.drain_samples(&mut drained, &mut batch);
        assert!(batch.is_empty());
        // Hits, whose bit 0 the samples clear.
        for hash in 0..(SAMPLES as u64 + 3) {
            readers.count(true, hash << 8 | 1);
        }
        readers.drain_samples(&mut drained, &mut batch);
        let newest: Vec<u64> = (3..SAMPLES as u64 + 3).map(|h| h << 8).collect();
        assert_eq!(batch, newest);
        // Another thread's record is drained too; its lookup missed, so bit 0 is set.
        std::thread::scope(|s| {
            s.spawn(|| readers.count(false, 0));
        });
        batch.clear();
        readers.drain_samples(&mut drained, &mut batch);
        assert_eq!((batch, drained.len()), (vec![1], 2));
    }

    /// One drain hands over at most `MAX_DRAINED` samples, the rest dropped.
    #[test]
    fn a_drain_hands_over_a_bounded_batch() {
        let readers = Readers::new().sampled_by(0xF0);
        // Threads alive at once, each with its own record.
        let threads = MAX_DRAINED / SAMPLES + 2;
        let together = std::sync::Barrier::new(threads);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    (0..SAMPLES as u64).for_each(|h| readers.count(true, h << 8));
                    together.wait();
                });
            }
        });
        assert_eq!(readers.records(), threads);
        let (mut drained, mut batch) = (Vec::new(), Vec::new());
        readers.drain_samples(&mut drained, &mut batch);
        assert_eq!(batch.len(), MAX_DRAINED);
        batch.clear();
        readers.drain_samples(&mut drained, &mut batch);
        assert!(batch.is_empty());
    }

    /// A cache that runs no simulations samples nothing, not even a hash of zero.
    #[test]
    fn readers_without_a_mask_sample_nothing() {
        let readers = Readers::new();
        for hash in 0..1_000u64 {
            readers.count(true, hash);
        }
        let (mut drained, mut batch) = (Vec::new(), Vec::new());
        readers.drain_samples(&mut drained, &mut batch);
        assert!(batch.is_empty());
    }

    #[test]
    fn a_failed_barrier_falls_back_to_fences_without_freeing_early() {
        let readers = Readers::new();
        if !has_membarrier(&readers) {
            return;
        }
        std::thread::scope(|s| {
            let idle = IdleReader::start(s, &readers);
            let mut limbo = Limbo::<u32>::default();
            let mut freed = Vec::new();
            limbo.retire(1u32);
            limbo.collect(&readers, |batch| freed.append(batch)); // forms the batch
            crate::sync::FAIL_NEXT_BARRIER.with(|fail| fail.set(true));
            // The idle reader's announcement might still be in its store buffer, and no barrier
            // says otherwise: the batch waits (before the fix: the process aborted).
            limbo.collect(&readers, |batch| freed.append(batch));
            assert!(freed.is_empty(), "freed past an unverified idle reader");
            assert!(
                !readers.fast.load(Ordering::Relaxed),
                "reads issue full fences from now on"
            );
            // Its next read issues a full fence at an epoch where all reads do: the batch goes.
            idle.read();
            limbo.collect(&readers, |batch| freed.append(batch));
            assert_eq!(freed, [1]);
            // And so do later batches, without a barrier: the idle record is now checked after
            // a fence.
            limbo.retire(2u32);
            limbo.collect(&readers, |batch| freed.append(batch));
            limbo.collect(&readers, |batch| freed.append(batch));
            assert_eq!(freed, [1, 2]);
            assert_eq!(readers.barrier_epoch.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn the_registry_is_not_locked_across_the_barrier() {
        let readers = Readers::new();
        if !has_membarrier(&readers) {
            return;
        }
        std::thread::scope(|s| {
            let _idle = IdleReader::start(s, &readers);
            let mut limbo = Limbo::<u32>::default();
            let mut freed = Vec::new();
            limbo.retire(1u32);
            limbo.collect(&readers, |batch| freed.append(batch));
            REGISTRY_FREE_AT_BARRIER.with(|seen| seen.set(None));
            limbo.collect(&readers, |batch| freed.append(batch));
            assert_eq!(freed, [1]);
            assert_eq!(
                REGISTRY_FREE_AT_BARRIER.with(Cell::get),
                Some(true),
                "the registry was locked while the barrier ran"
            );
        });
    }

    /// A thread that exited gave its record up after its last read: no barrier is needed to
    /// know it is idle.
    #[test]
    fn an_exited_threads_record_needs_no_barrier() {
        let readers = std::sync::Arc::new(Readers::new());
        {
            // `join`, not a scope: a scope may return before the thread's thread-locals are gone.
            let readers = readers.clone();
            std::thread::spawn(move || drop(readers.enter()))
                .join()
                .unwrap();
        }
        let mut limbo = Limbo::<u32>::default();
        let mut freed = Vec::new();
        limbo.retire(1u32);
        limbo.collect(&readers, |batch| freed.append(batch));
        limbo.collect(&readers, |batch| freed.append(batch));
        assert_eq!(freed, [1]);
        assert_eq!(
            readers.barrier_epoch.load(Ordering::Relaxed),
            0,
            "no barrier"
        );
    }

    /// Issue 17, point 2: what protecting one read costs with this module and with the two
    /// crates that could replace it, side by side in one run (interleaved rounds, medians), at
    /// one thread and two. Each read loads one word inside its guard. A measurement, not a check:
    ///
    /// ```text
    /// cargo test --release --lib guard_costs_side_by_side -- --ignored --nocapture
    /// ```
    #[test]
    #[ignore = "a measurement, not a check: run it with --release --ignored --nocapture"]
    fn guard_costs_side_by_side() {
        use std::hint::black_box;
        use std::time::Instant;
        const READS: u64 = 1 << 20;
        const ROUNDS: usize = 15;
        let ours = Readers::new();
        let crossbeam = crossbeam_epoch::Collector::new();
        let seize = seize::Collector::new();
        let word = AtomicU64::new(7);
        let word = &word;
        type Scheme<'a> = (&'static str, Box<dyn Fn() + Sync + 'a>);
        let schemes: [Scheme<'_>; 4] = [
            (
                "leasecache reclaim.rs",
                Box::new(|| {
                    for _ in 0..READS {
                        let guard = ours.enter();
                        black_box(word.load(Ordering::Relaxed));
                        drop(guard);
                    }
                }),
            ),
            (
                "crossbeam-epoch 0.9, global pin()",
                Box::new(|| {
                    for _ in 0..READS {
                        let guard = crossbeam_epoch::pin();
                        black_box(word.load(Ordering::Relaxed));
                        drop(guard);
                    }
                }),
            ),
            (
                "crossbeam-epoch 0.9, own collector",
                Box::new(|| {
                    let handle = crossbeam.register();
                    for _ in 0..READS {
                        let guard = handle.pin();
                        black_box(word.load(Ordering::Relaxed));
                        drop(guard);
                    }
                }),
            ),
            (
                "seize 0.5, enter()",
                Box::new(|| {
                    for _ in 0..READS {
                        let guard = seize.enter();
                        black_box(word.load(Ordering::Relaxed));
                        drop(guard);
                    }
                }),
            ),
        ];
        println!(
            "| scheme | threads | ns per protected read (median of {ROUNDS}) | vs leasecache |"
        );
        println!("|---|---:|---:|---:|");
        for threads in [1, 2] {
            let mut samples = vec![Vec::new(); schemes.len()];
            for round in 0..ROUNDS {
                for i in 0..schemes.len() {
                    // Rotate the order, so no scheme always follows the same one.
                    let c = (i + round) % schemes.len();
                    let run = &schemes[c].1;
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for _ in 0..threads {
                            s.spawn(run);
                        }
                    });
                    samples[c].push(start.elapsed().as_nanos() as f64 / READS as f64);
                }
            }
            let medians: Vec<f64> = samples
                .iter_mut()
                .map(|s| {
                    s.sort_by(f64::total_cmp);
                    s[s.len() / 2]
                })
                .collect();
            for (c, (name, _)) in schemes.iter().enumerate() {
                println!(
                    "| {name} | {threads} | {:.2} | {:.2} |",
                    medians[c],
                    medians[c] / medians[0]
                );
            }
        }
    }

    #[test]
    fn counts_are_exact_per_thread() {
        let readers = Readers::new();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..100_000 {
                        readers.count(true, 1);
                        readers.count(false, 1);
                    }
                });
            }
        });
        assert_eq!(readers.lookups(), (800_000, 800_000));
    }

    #[test]
    fn a_batch_waits_for_a_read_that_began_before_it() {
        let readers = Readers::new();
        let mut limbo = Limbo::<u32>::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let readers = &readers;
            s.spawn(move || {
                let guard = readers.enter();
                tx.send(()).unwrap();
                done_rx.recv().unwrap();
                drop(guard);
                tx.send(()).unwrap();
            });
            rx.recv().unwrap(); // the other thread is reading
            limbo.retire(1u32);
            let mut freed = Vec::new();
            limbo.collect(readers, |batch| freed.append(batch)); // forms the batch
            limbo.collect(readers, |batch| freed.append(batch));
            let freed_under_the_read = freed.clone();
            // Before asserting: a failed assertion must not leave the reader waiting forever.
            done_tx.send(()).unwrap();
            rx.recv().unwrap(); // the read ended
            assert!(
                freed_under_the_read.is_empty(),
                "freed under an active read"
            );
            limbo.collect(readers, |batch| freed.append(batch));
            assert_eq!(freed, [1]);
        });
    }

    #[test]
    fn an_idle_reader_costs_one_barrier_and_then_lets_the_batch_go() {
        let readers = Readers::new();
        if !has_membarrier(&readers) {
            return;
        }
        std::thread::scope(|s| {
            let _idle = IdleReader::start(s, &readers);
            an_idle_reader_costs_one_barrier(&readers);
        });
    }

    fn an_idle_reader_costs_one_barrier(readers: &Readers) {
        let mut limbo = Limbo::<u32>::default();
        limbo.retire(7u32);
        let mut freed = Vec::new();
        limbo.collect(readers, |batch| freed.append(batch));
        assert_eq!(readers.barrier_epoch.load(Ordering::Relaxed), 0);
        limbo.collect(readers, |batch| freed.append(batch));
        assert_eq!(freed, [7]);
        assert_eq!(
            readers.barrier_epoch.load(Ordering::Relaxed),
            1,
            "one barrier"
        );
        // Another shard publishes epoch 2. Its batches up to epoch 1 were published before that
        // barrier and need none of their own (a new one would cover epoch 2); the next batch
        // does.
        assert_eq!(readers.advance(), 2);
        assert!(readers.quiescent(1));
        assert_eq!(
            readers.barrier_epoch.load(Ordering::Relaxed),
            1,
            "no second barrier"
        );
        assert!(readers.quiescent(2));
        assert_eq!(readers.barrier_epoch.load(Ordering::Relaxed), 2);
    }

    /// A batch hands its items back in one call, in the order they were retired, and drops its
    /// things once its grace period is over, not before; things are not counted as pending.
    #[test]
    fn a_batch_hands_its_items_back_at_once_and_drops_its_things() {
        use std::rc::Rc;
        let readers = Readers::new();
        let mut limbo = Limbo::<u32, Rc<()>>::default();
        let thing = Rc::new(());
        limbo.retire(1);
        limbo.retire(2);
        limbo.retire_dropped(thing.clone());
        limbo.retire(3);
        assert_eq!(limbo.pending(), 3);
        assert_eq!(limbo.len(), 4);
        let guard = readers.enter();
        let (mut calls, mut freed) = (0, Vec::new());
        let mut free = |batch: &mut Vec<u32>| {
            calls += 1;
            freed.append(batch);
        };
        assert!(!limbo.collect(&readers, &mut free), "forms the batch");
        assert_eq!(limbo.pending(), 0);
        assert!(limbo.collect(&readers, &mut free), "held back by the read");
        assert_eq!(Rc::strong_count(&thing), 2, "dropped under a read");
        drop(guard);
        assert!(!limbo.collect(&readers, &mut free));
        assert_eq!((calls, &freed[..]), (1, &[1, 2, 3][..]));
        assert_eq!(Rc::strong_count(&thing), 1, "the batch dropped its thing");
        assert_eq!(limbo.len(), 0);
    }

    /// The items a `free` that panicked (a user `Drop`) did not take out are handed over again
    /// by the next collection.
    #[test]
    fn a_panicking_free_leaves_the_rest_for_the_next_collection() {
        let readers = Readers::new();
        let mut limbo = Limbo::<u32>::default();
        for i in 1..=3 {
            limbo.retire(i);
        }
        limbo.collect(&readers, |_| unreachable!("nothing is waiting yet"));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            limbo.collect(&readers, |batch| {
                batch.pop();
                panic!("a user Drop panics");
            })
        }));
        assert!(panicked.is_err());
        assert_eq!(limbo.len(), 2);
        let mut freed = Vec::new();
        limbo.collect(&readers, |batch| freed.append(batch));
        assert_eq!(freed, [1, 2]);
        assert_eq!(limbo.len(), 0);
    }

    #[test]
    fn a_write_inside_a_read_of_the_same_thread_waits_for_it() {
        let readers = Readers::new();
        let mut limbo = Limbo::<u32>::default();
        let guard = readers.enter();
        let nested = readers.enter(); // nested: ends with the outer read
        limbo.retire(3u32);
        let mut freed = Vec::new();
        limbo.collect(&readers, |batch| freed.append(batch));
        drop(nested);
        limbo.collect(&readers, |batch| freed.append(batch));
        assert!(freed.is_empty());
        drop(guard);
        limbo.collect(&readers, |batch| freed.append(batch));
        assert_eq!(freed, [3]);
    }

    #[test]
    fn a_thread_that_exits_hands_its_record_to_the_next() {
        let readers = std::sync::Arc::new(Readers::new());
        for _ in 0..50 {
            // `join`, not a scope: a scope may return before the thread's thread-locals are gone.
            let readers = readers.clone();
            std::thread::spawn(move || readers.count(true, 1))
                .join()
                .unwrap();
        }
        assert_eq!(readers.records(), 1, "one record, reused");
        assert_eq!(readers.lookups(), (50, 0));
        let owned = readers.registry.lock()[0].owned.load(Ordering::Relaxed);
        assert!(!owned, "released by the last thread");
    }

    #[test]
    fn records_of_dropped_caches_are_let_go() {
        std::thread::spawn(|| {
            for _ in 0..100 {
                let readers = Readers::new();
                drop(readers.enter());
            }
            let held = OWNED.with(|owned| owned.0.borrow().len());
            assert!(held <= 1, "{held} records of dropped caches held");
        })
        .join()
        .unwrap();
    }

    /// A read in a thread-local destructor that runs after the thread gave its records up must
    /// not use the record it had: another thread may own it by then.
    #[test]
    fn a_read_in_a_thread_local_destructor_never_shares_a_record() {
        use std::cell::RefCell;
        use std::sync::mpsc::{Sender, channel};
        use std::sync::{Arc, Barrier};

        /// Reads `readers` when destroyed, if `OWNED` was destroyed before it.
        struct Probe {
            readers: Arc<Readers>,
            /// Tells the test that a read is about to be made, then which record it used.
            report: Sender<usize>,
            /// Passed once another thread holds a read.
            go: Arc<Barrier>,
        }
        impl Drop for Probe {
            fn drop(&mut self) {
                if OWNED.try_with(|_| ()).is_ok() {
                    return; // destroyed before the records were given up
                }
                self.report.send(0).unwrap();
                self.go.wait();
                let guard = self.readers.enter();
                let record = guard.mine.record as *const Record as usize;
                drop(guard);
                self.report.send(record).unwrap();
            }
        }
        std::thread_local! {
            static BEFORE: RefCell<Option<Probe>> = const { RefCell::new(None) };
            static AFTER: RefCell<Option<Probe>> = const { RefCell::new(None) };
        }

        let readers = Arc::new(Readers::new());
        let go = Arc::new(Barrier::new(2));
        let (report, reports) = channel();
        let exiting = {
            let (readers, go) = (readers.clone(), go.clone());
            std::thread::spawn(move || {
                let probe = || Probe {
                    readers: readers.clone(),
                    report: report.clone(),
                    go: go.clone(),
                };
                // One probe registered before the thread's records, one after: whatever the
                // order thread-locals are destroyed in, one of them runs after `OWNED`'s.
                BEFORE.with(|p| *p.borrow_mut() = Some(probe()));
                let guard = readers.enter();
                let had = guard.mine.record as *const Record as usize;
                drop(guard);
                AFTER.with(|p| *p.borrow_mut() = Some(probe()));
                had
            })
        };
        assert_eq!(
            reports.recv().unwrap(),
            0,
            "a probe runs after OWNED is gone"
        );
        // The exiting thread has given its record up: another thread claims it and reads.
        let (held_tx, held) = channel();
        let end = Arc::new(Barrier::new(2));
        let other = {
            let (readers, end) = (readers.clone(), end.clone());
            std::thread::spawn(move || {
                let guard = readers.enter();
                held_tx
                    .send(guard.mine.record as *const Record as usize)
                    .unwrap();
                end.wait();
                drop(guard);
            })
        };
        let others = held.recv().unwrap();
        go.wait();
        let teardown = reports.recv().unwrap();
        end.wait();
        let had = exiting.join().unwrap();
        other.join().unwrap();
        assert_eq!(
            others, had,
            "the other thread took over the exiting thread's record"
        );
        assert_ne!(
            teardown, others,
            "a teardown read used a record another thread owns"
        );
        assert_eq!(readers.lookups(), (0, 0));
        let records = readers.registry.lock();
        assert!(records.iter().all(|r| !r.owned.load(Ordering::Relaxed)));
    }
}
