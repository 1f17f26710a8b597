//! Lock-free reads: how `get` reads a shard that writers change under it, and when a writer may
//! free what it unlinked.
//!
//! Readers take no lock. A writer (under its shard's lock) never changes a slot or a table that a
//! reader can reach: it writes a new slot, publishes it with one atomic store into the table, and
//! *retires* what it unlinked (an old slot, an old table). Retired things are freed only once no
//! reader can still be looking at them. That is epoch-based reclamation with an asymmetric fence:
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
//! - A record still active at an epoch before `e` holds the batch back until it moves on; the
//!   writer never waits for it (retired slots stay allocated and the slab grows instead), so a
//!   thread stuck inside a `K::eq` or `V::clone` of this cache only delays reclamation.
//!
//! The writer's own record needs no barrier: its reads end before its writes in program order,
//! unless it writes from inside a read (a `V::clone` that writes to the same cache), in which case
//! the batch waits for that read to end like any other.

#![allow(unsafe_code)]

use crate::sync::{AtomicU64, Mutex, Ordering, PerThread, fence, heavy_barrier, light_barrier};
use crossbeam_utils::CachePadded;

/// `Record::state`'s bit 0: the thread is inside a read. The epoch is `state >> 1`.
const ACTIVE: u64 = 1;

/// One thread's view of one cache: its read announcement and its lookup counters, on a cache
/// line that only that thread writes.
#[derive(Debug, Default)]
pub(crate) struct Record {
    /// `epoch << 1 | ACTIVE` while reading, `epoch << 1` after, for the epoch the last read began
    /// at. Written only by the owning thread.
    state: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Record {
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
    #[cfg_attr(all(test, leasecache_loom), allow(dead_code))]
    id: u64,
    /// Whether reads may use a compiler fence as their half of the asymmetric fence (the heavy
    /// half is `membarrier`); a full fence otherwise. Fixed when the cache is built.
    fast_barrier: bool,
    epoch: CachePadded<AtomicU64>,
    /// The highest epoch published before a heavy barrier was issued. `membarrier` is
    /// process-wide, so one barrier serves the batches of every shard whose epoch is at most
    /// this: a cache of 8 shards issues an eighth of the barriers it would per shard.
    barrier_epoch: AtomicU64,
    records: PerThread<CachePadded<Record>>,
    /// Taken to add a record and to check the records: a writer's check either sees a new
    /// record, or that record's thread takes it after the check and so reads the epoch the
    /// writer published before it (see `quiescent`).
    registry: Mutex<()>,
    /// NEGATIVE CONTROLS, compiled only for the loom models: a deliberately broken protocol.
    /// The models that set it must fail.
    #[cfg(all(test, leasecache_loom))]
    pub(crate) broken: Option<Broken>,
}

/// A way to break the reclamation protocol, for the loom models' negative controls.
#[cfg(all(test, leasecache_loom))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Broken {
    /// Reads do not announce themselves: writers free what they still read.
    UnannouncedReads,
    /// Writers trust a record that looks idle without the heavy barrier: an announcement still
    /// in its thread's store buffer goes unseen.
    NoBarrier,
}

#[cfg(not(all(test, leasecache_loom)))]
std::thread_local! {
    /// The record this thread used last and the id of the `Readers` it belongs to: a thread
    /// usually reads one cache many times in a row, and this finds its record with one
    /// thread-local load instead of a per-object thread-local lookup.
    static LAST: std::cell::Cell<(u64, *const Record)> =
        const { std::cell::Cell::new((0, std::ptr::null())) };
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
    record: &'a Record,
    /// The state to store when the read ends: inactive at its epoch, or, for a read nested in
    /// another one on the same thread, the outer read's (still active) announcement.
    leave: u64,
}

impl Readers {
    pub(crate) fn new() -> Self {
        Self {
            fast_barrier: crate::sync::init_barriers(),
            id: crate::sync::next_instance_id(),
            epoch: CachePadded::new(AtomicU64::new(0)),
            barrier_epoch: AtomicU64::new(0),
            records: PerThread::new(),
            registry: Mutex::new(()),
            #[cfg(all(test, leasecache_loom))]
            broken: None,
        }
    }

    /// This thread's record.
    #[inline]
    fn record(&self) -> &Record {
        #[cfg(not(all(test, leasecache_loom)))]
        {
            let (id, record) = LAST.with(std::cell::Cell::get);
            if id == self.id {
                // SAFETY: `LAST` holds `self.id` only with a pointer to this thread's record in
                // `self.records` (set below); ids are never reused, so that `Readers` is `self`,
                // alive for the returned borrow, and a record never moves or is freed before the
                // `Readers` is dropped.
                return unsafe { &*record };
            }
        }
        self.record_slow()
    }

    #[cold]
    fn record_slow(&self) -> &Record {
        let record: &Record = match self.records.get() {
            Some(record) => record,
            None => {
                // Once per thread and cache; see `registry`.
                let _registry = self.registry.lock();
                self.records.get_or_default()
            }
        };
        #[cfg(not(all(test, leasecache_loom)))]
        LAST.with(|last| last.set((self.id, record)));
        record
    }

    /// Begins a read on this thread. Lock-free: a thread-local lookup, a load of the epoch and a
    /// store to this thread's record.
    #[inline]
    pub(crate) fn enter(&self) -> ReadGuard<'_> {
        let record = self.record();
        // Relaxed: only this thread writes its record.
        let state = record.state.load(Ordering::Relaxed);
        #[cfg(all(test, leasecache_loom))]
        if self.broken == Some(Broken::UnannouncedReads) {
            return ReadGuard {
                record,
                leave: state,
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
        record.state.store(announce, Ordering::Release);
        // Orders the announcement before the loads of the read, in pair with `heavy_barrier` in
        // `quiescent`.
        light_barrier(self.fast_barrier);
        ReadGuard { record, leave }
    }

    /// Counts a lookup that found a live value, for the calling thread.
    pub(crate) fn hit(&self) {
        Record::bump(&self.record().hits);
    }

    /// Counts a lookup that found no live value, for the calling thread.
    pub(crate) fn miss(&self) {
        Record::bump(&self.record().misses);
    }

    /// Hits and misses counted so far, summed over threads.
    pub(crate) fn lookups(&self) -> (u64, u64) {
        self.records.iter().fold((0, 0), |(h, m), r| {
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
    pub(crate) fn quiescent(&self, epoch: u64) -> bool {
        // A record added after this check belongs to a thread that takes the registry after it,
        // so after `epoch` was published: that thread's reads begin at `epoch` or later.
        let _registry = self.registry.lock();
        // Acquire pairs with the Release `fetch_max` below: the barrier that published it was
        // issued before the records are read here.
        let covered = self.barrier_epoch.load(Ordering::Acquire) >= epoch;
        if covered {
            // Orders this thread's reads of the records after that barrier for the memory model
            // too (`SeqCst` fence rules are about the fencing thread); free next to a barrier.
            fence(Ordering::SeqCst);
        }
        match self.scan(epoch, covered) {
            Scan::Quiescent => return true,
            Scan::Reading => return false,
            Scan::IdleBehind => {}
        }
        #[cfg(all(test, leasecache_loom))]
        if self.broken == Some(Broken::NoBarrier) {
            return true;
        }
        // Acquire: the epochs published before this load (and their unlinking) happen before the
        // barrier.
        let published = self.epoch.load(Ordering::Acquire);
        heavy_barrier();
        // Release pairs with the Acquire load above, in later checks by any shard.
        self.barrier_epoch.fetch_max(published, Ordering::Release);
        // After the barrier, a record that still looks idle is idle: a read it begins from now on
        // sees the unlinking. One that became active at an old epoch began before the barrier.
        self.scan(epoch, true) == Scan::Quiescent
    }

    /// What the records say about reads that could see what was unlinked before `epoch`, where
    /// `idle_is_idle` says whether a barrier issued since then makes an idle-looking record idle.
    fn scan(&self, epoch: u64, idle_is_idle: bool) -> Scan {
        let own = self.records.get().map(|r| &**r as *const Record);
        let mut idle_behind = false;
        for record in self.records.iter() {
            // Acquire pairs with the Release stores in `enter` and `ReadGuard::drop`: what that
            // thread's earlier reads accessed happens before this check.
            let state = record.state.load(Ordering::Acquire);
            if own == Some(&**record as *const Record) {
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
            } else if !idle_is_idle {
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

impl ReadGuard<'_> {
    /// Ends the read, counting it as a lookup that found a live value (`hit`) or not.
    #[inline]
    pub(crate) fn count(self, hit: bool) {
        Record::bump(if hit {
            &self.record.hits
        } else {
            &self.record.misses
        });
    }
}

impl Drop for ReadGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        // Release pairs with the Acquire load in `Readers::quiescent`: this read's accesses
        // happen before a writer that sees it ended frees anything.
        self.record.state.store(self.leave, Ordering::Release);
    }
}

/// What a shard's writer retired and may not free yet: a batch waiting for its grace period and
/// the items retired since, which will form the next batch.
#[derive(Debug)]
pub(crate) struct Limbo<T> {
    pending: Vec<T>,
    waiting: Vec<T>,
    /// The epoch published after `waiting` was unlinked.
    epoch: u64,
}

impl<T> Default for Limbo<T> {
    fn default() -> Self {
        Self {
            pending: Vec::new(),
            waiting: Vec::new(),
            epoch: 0,
        }
    }
}

impl<T> Limbo<T> {
    /// Retires an item the caller has already made unreachable for new reads.
    pub(crate) fn retire(&mut self, item: T) {
        self.pending.push(item);
    }

    /// Items retired since the last batch was formed.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Items retired and not yet freed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pending.len() + self.waiting.len()
    }

    /// Frees the waiting batch through `free` if its grace period is over, then, if nothing is
    /// waiting, makes the pending items the next batch and publishes its epoch.
    pub(crate) fn collect(&mut self, readers: &Readers, free: impl FnMut(T)) {
        if !self.waiting.is_empty() {
            if !readers.quiescent(self.epoch) {
                return;
            }
            self.waiting.drain(..).for_each(free);
        }
        if !self.pending.is_empty() {
            std::mem::swap(&mut self.pending, &mut self.waiting);
            self.epoch = readers.advance();
        }
    }

    /// Every item, freed or not: for a writer that has exclusive access to everything (dropping
    /// the cache).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.pending.iter().chain(self.waiting.iter())
    }
}

#[cfg(all(test, not(leasecache_loom)))]
mod tests {
    use super::*;

    #[test]
    fn counts_are_exact_per_thread() {
        let readers = Readers::new();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..100_000 {
                        readers.hit();
                        readers.miss();
                    }
                });
            }
        });
        assert_eq!(readers.lookups(), (800_000, 800_000));
    }

    #[test]
    fn a_batch_waits_for_a_read_that_began_before_it() {
        let readers = Readers::new();
        let mut limbo = Limbo::default();
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
            limbo.collect(readers, |i| freed.push(i)); // forms the batch
            limbo.collect(readers, |i| freed.push(i));
            assert!(freed.is_empty(), "freed under an active read");
            done_tx.send(()).unwrap();
            rx.recv().unwrap(); // the read ended
            limbo.collect(readers, |i| freed.push(i));
            assert_eq!(freed, [1]);
        });
    }

    #[test]
    fn an_idle_reader_costs_one_barrier_and_then_lets_the_batch_go() {
        let readers = Readers::new();
        std::thread::scope(|s| {
            s.spawn(|| drop(readers.enter())).join().unwrap();
        });
        let mut limbo = Limbo::default();
        limbo.retire(7u32);
        let mut freed = Vec::new();
        limbo.collect(&readers, |i| freed.push(i));
        assert_eq!(readers.barrier_epoch.load(Ordering::Relaxed), 0);
        limbo.collect(&readers, |i| freed.push(i));
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

    #[test]
    fn a_write_inside_a_read_of_the_same_thread_waits_for_it() {
        let readers = Readers::new();
        let mut limbo = Limbo::default();
        let guard = readers.enter();
        let nested = readers.enter(); // nested: ends with the outer read
        limbo.retire(3u32);
        let mut freed = Vec::new();
        limbo.collect(&readers, |i| freed.push(i));
        drop(nested);
        limbo.collect(&readers, |i| freed.push(i));
        assert!(freed.is_empty());
        drop(guard);
        limbo.collect(&readers, |i| freed.push(i));
        assert_eq!(freed, [3]);
    }
}
