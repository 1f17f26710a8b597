//! The shard lock: a mutex whose release is a plain store.
//!
//! Every write takes its shard's lock, and under it touches lines at random places: the key's
//! table bucket, its old slot, the slot's queue neighbours, a fresh slot. A mutex released with
//! a locked instruction (`parking_lot`'s `compare_exchange`, `std`'s `swap`) makes the writer wait
//! at the release until every one of those stores has reached its line, because on x86-64 a
//! locked instruction drains the store buffer: measured on the `replace` mix (issue 17), that
//! wait was 3.5-4.5 ns of an operation's 38, and an absent purge's 3 ns of 18. Released with a
//! store, the writer goes on while its stores drain.
//!
//! What the store gives up is the waiter check: a releasing thread must see whether anyone sleeps
//! on the lock, and a load after a store may be answered before the store is visible to others
//! (store-load reordering), so a thread that registered as a waiter just then, and saw the lock
//! still held, could sleep with nobody to wake it. This is the asymmetric fence the reads already
//! use (`crate::sync::light_barrier` / `heavy_barrier`, see `reclaim.rs`), with the roles set by
//! frequency: the releasing thread (every write) issues the light half, a compiler fence; the
//! thread about to sleep (rare: it spun first) issues the heavy half, `membarrier`, which runs a
//! full fence on every CPU running this process. Either the releaser's load sees the waiter's
//! registration, or the waiter's load after its barrier sees the lock released.
//!
//! Where `membarrier` is not available the release swaps the state instead (one locked
//! instruction, what a `parking_lot` release costs) and the waiter's half is a read-modify-write
//! of the state: of two RMWs of one location, one reads the other. A lock is built fast (store and
//! compiler fence) when `membarrier` was available; if `membarrier` fails later (a seccomp filter
//! installed since), the first waiter that finds out switches that lock's releases to the swap,
//! and naps in bounded sleeps ([`POLL`]) in case a release read the old setting: never lost,
//! only late.
//!
//! Waiters spin first (as `parking_lot` does), then register, issue their half, and sleep on
//! `parking_lot_core`'s queues, keyed by the lock's address; a thread pays `membarrier` once per
//! wait that spinning did not end. A thread woken competes with threads arriving; one that loses
//! after a wake asks for fairness, and the next release that finds a sleeper hands it the lock
//! (the state stays held, the sleeper wakes as its holder), so that a thread relocking in a loop
//! cannot keep the sleepers out: `parking_lot` bounds the same with a hand-over every 0.5 ms.

// The lock holds the value `lock_api` protects; the guard and the unsafe `unlock` are
// `lock_api`'s contract, and parking is `parking_lot_core`'s (both are `unsafe` to call).
#![allow(unsafe_code)]

use crate::sync::{AtomicU8, AtomicU32, Ordering};

const UNLOCKED: u8 = 0;
const LOCKED: u8 = 1;

/// Flag: releases issue a compiler fence as their half: `membarrier` was available when the lock
/// was built and no waiter's barrier has failed since. Otherwise releases swap the state (a locked
/// instruction, a full fence on x86-64), and waiters pair with that by a read-modify-write of the
/// state instead of `membarrier`.
const FAST: u8 = 1;
/// Flag: a sleeper was woken and lost the lock to a thread that never slept: the next release
/// that finds a sleeper hands it the lock instead of releasing it.
const FAIR: u8 = 2;

/// How long a waiter that could not issue the heavy barrier on a lock whose releases may still
/// skip the full fence sleeps before it looks at the lock again (see the module docs).
#[cfg_attr(all(test, leasecache_loom), allow(dead_code))]
const POLL: std::time::Duration = std::time::Duration::from_millis(1);

/// The token a release passes to the sleeper it hands the lock to (the lock stays held).
#[cfg(not(all(test, leasecache_loom)))]
const HANDOFF: parking_lot_core::UnparkToken = parking_lot_core::UnparkToken(1);

/// Loom models only: executions in which a release handed the lock over (the relocking model
/// asserts that some did).
#[cfg(all(test, leasecache_loom))]
pub(crate) static HANDED_OVER: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// A negative control of the loom models: one protocol step removed.
#[cfg(all(test, leasecache_loom))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Broken {
    /// The waiter skips its half of the fence.
    NoWaiterBarrier,
    /// The release looks at the waiter count before it releases the lock.
    ReleaseLooksFirst,
}

/// The raw lock (see the module docs); [`crate::sync::ShardMutex`] puts a value behind it.
pub(crate) struct RawShardLock {
    state: AtomicU8,
    /// [`FAST`] and [`FAIR`], in one byte so that a release tests both with one load.
    flags: AtomicU8,
    /// Threads that registered to sleep on the lock (with the heavy barrier after their
    /// registration) and have not taken it yet; a release with a nonzero count wakes one.
    waiters: AtomicU32,
    /// Loom models only: the model of `parking_lot_core`'s queue for this lock.
    #[cfg(all(test, leasecache_loom))]
    parking: loom_park::Queue,
    /// Loom models only: the negative control the model runs, if any.
    #[cfg(all(test, leasecache_loom))]
    pub(crate) broken: Option<Broken>,
    /// Tests only: releases skip their wake, as a release that missed the registration would.
    #[cfg(all(test, not(leasecache_loom)))]
    miss_wakes: std::sync::atomic::AtomicBool,
}

impl RawShardLock {
    /// An unlocked lock whose releases issue a compiler fence if `fast` (pass what
    /// [`crate::sync::init_barriers`] returned), else swap the state.
    #[cfg(not(all(test, leasecache_loom)))]
    pub(crate) const fn new(fast: bool) -> Self {
        Self {
            state: AtomicU8::new(UNLOCKED),
            flags: AtomicU8::new(if fast { FAST } else { 0 }),
            waiters: AtomicU32::new(0),
            #[cfg(test)]
            miss_wakes: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// An unlocked lock (loom's atomics have no `const` constructor). Under loom both kinds of
    /// lock run the swapping release (see [`release`](Self::release)).
    #[cfg(all(test, leasecache_loom))]
    pub(crate) fn new(fast: bool) -> Self {
        Self {
            state: AtomicU8::new(UNLOCKED),
            flags: AtomicU8::new(if fast { FAST } else { 0 }),
            waiters: AtomicU32::new(0),
            parking: loom_park::Queue::new(),
            broken: None,
        }
    }

    /// Takes the lock, waiting for it if another thread holds it.
    #[inline]
    pub(crate) fn acquire(&self) {
        if self
            .state
            .compare_exchange_weak(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.acquire_slow();
        }
    }

    /// Takes the lock if no thread holds it.
    #[inline]
    pub(crate) fn try_acquire(&self) -> bool {
        self.state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Releases the lock, which the caller holds: one store, then a look at the waiter count.
    #[inline]
    pub(crate) fn release(&self) {
        // Relaxed: `FAST` is set when the lock is built, then only cleared, by a waiter whose
        // barrier failed (which then naps, so that a release that still reads it cannot lose
        // that waiter); `FAIR` is a hint set by a sleeper, which a release that misses it wakes
        // anyway.
        let flags = self.flags.load(Ordering::Relaxed);
        if cfg!(not(all(test, leasecache_loom))) && flags == FAST {
            return self.release_unfair(true);
        }
        self.release_slow(flags);
    }

    /// [`release`](Self::release) of a lock that swaps, or that a sleeper asked to hand over.
    #[cold]
    #[inline(never)]
    fn release_slow(&self, flags: u8) {
        if flags & FAIR != 0 {
            if self.hand_over() {
                return;
            }
            // Nobody asleep yet. Kept while a waiter is registered (it is on its way to sleep,
            // and a thread relocking in a loop would keep clearing it before then); dropped once
            // none is (the one that asked took the lock by spinning): left set, it would send
            // every later release here.
            if self.waiters.load(Ordering::Relaxed) == 0 {
                self.flags.fetch_and(!FAIR, Ordering::Relaxed);
            }
        }
        self.release_unfair(cfg!(not(all(test, leasecache_loom))) && flags & FAST != 0);
    }

    /// [`release`](Self::release) without a hand-over, by a store if `fast`, else a swap.
    #[inline]
    fn release_unfair(&self, fast: bool) {
        #[cfg(all(test, leasecache_loom))]
        if self.broken == Some(Broken::ReleaseLooksFirst) {
            let waiters = self.waiters.load(Ordering::Relaxed);
            self.state.swap(UNLOCKED, Ordering::AcqRel);
            if waiters != 0 {
                self.wake_one();
            }
            return;
        }
        if fast {
            // Release: the critical section's writes happen before the next holder's Acquire.
            self.state.store(UNLOCKED, Ordering::Release);
            // The light half: orders the store before the load below for any thread that
            // issues `membarrier` (see the module docs).
            crate::sync::light_barrier(true);
        } else {
            // A read-modify-write: either a waiter's RMW of the state (its half) comes after it
            // in the state's order and sees the lock free, or this one reads that RMW and then
            // sees the waiter's registration (AcqRel). Under loom this is also the model of the
            // store above with `membarrier` (an RMW of the state by the waiter).
            self.state.swap(UNLOCKED, Ordering::AcqRel);
        }
        #[cfg(all(test, not(leasecache_loom)))]
        if self.miss_wakes.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if self.waiters.load(Ordering::Relaxed) != 0 {
            self.wake_one();
        }
    }

    /// Wakes one sleeper as the lock's new holder (the state stays `LOCKED`); `false` if nobody
    /// sleeps.
    fn hand_over(&self) -> bool {
        #[cfg(not(all(test, leasecache_loom)))]
        {
            let mut handed = false;
            // SAFETY: the callback does not panic and calls nothing of the parking lot; the
            // key is this lock's address, which no other parking site uses.
            unsafe {
                parking_lot_core::unpark_one(self.key(), |result| {
                    if result.unparked_threads == 0 {
                        return parking_lot_core::DEFAULT_UNPARK_TOKEN;
                    }
                    handed = true;
                    // Relaxed: a hint; the next sleeper that loses sets it again.
                    self.flags.fetch_and(!FAIR, Ordering::Relaxed);
                    HANDOFF
                });
            }
            handed
        }
        #[cfg(all(test, leasecache_loom))]
        self.parking.unpark_one(true, || {
            HANDED_OVER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.flags.fetch_and(!FAIR, Ordering::Relaxed);
        })
    }

    /// [`acquire`](Self::acquire) when the lock was held: spin, then register and sleep.
    #[cold]
    #[inline(never)]
    fn acquire_slow(&self) {
        if self.spin() {
            return;
        }
        // Registered before the heavy half, so that either a release after it sees the count, or
        // this thread's loads after it see that release (see the module docs).
        self.waiters.fetch_add(1, Ordering::Relaxed);
        let fenced = self.heavy_barrier();
        loop {
            if self.state.load(Ordering::Relaxed) == UNLOCKED && self.try_acquire() {
                break;
            }
            if self.sleep(!fenced) {
                // Handed over by the release that woke this thread.
                break;
            }
            // Woken (or the lock was free at the check, or a nap ended): spin once more, as a
            // thread woken competes with threads that never slept.
            if self.spin() {
                break;
            }
            // Lost after a wake: the next release that finds a sleeper hands it the lock, so
            // that a thread relocking in a loop cannot keep the sleepers out for long.
            self.flags.fetch_or(FAIR, Ordering::Relaxed);
        }
        self.waiters.fetch_sub(1, Ordering::Relaxed);
    }

    /// Spins while that is worth it; `true` if the lock was taken meanwhile.
    fn spin(&self) -> bool {
        #[cfg(not(all(test, leasecache_loom)))]
        {
            let mut spin = parking_lot_core::SpinWait::new();
            loop {
                if self.state.load(Ordering::Relaxed) == UNLOCKED && self.try_acquire() {
                    return true;
                }
                if !spin.spin() {
                    return false;
                }
            }
        }
        // Under loom a spin is one more attempt (loom explores the interleavings a spin waits
        // through anyway).
        #[cfg(all(test, leasecache_loom))]
        self.try_acquire()
    }

    /// The waiter's half of the fence, after it registered; `false` if a release might still
    /// miss the registration (the waiter must then nap, see [`sleep`](Self::sleep)).
    fn heavy_barrier(&self) -> bool {
        #[cfg(all(test, leasecache_loom))]
        if self.broken == Some(Broken::NoWaiterBarrier) {
            return true;
        }
        // Relaxed: see `release`.
        if cfg!(not(all(test, leasecache_loom))) && self.flags.load(Ordering::Relaxed) & FAST != 0 {
            if crate::sync::heavy_barrier() {
                return true;
            }
            // `membarrier` failed (a seccomp filter since the cache was built): releases of
            // this lock swap from now on; those that read `FAST` before it was cleared may still
            // miss the registration, so this waiter naps.
            self.flags.fetch_and(!FAST, Ordering::Relaxed);
            self.state.fetch_add(0, Ordering::AcqRel);
            return false;
        }
        // The pair of the swapping release (see `release_unfair`).
        self.state.fetch_add(0, Ordering::AcqRel);
        true
    }

    /// Sleeps until a release wakes this thread, unless the lock is free by then; with `poll`,
    /// for at most [`POLL`]. Returns whether the release handed this thread the lock.
    fn sleep(&self, poll: bool) -> bool {
        let validate = || self.state.load(Ordering::Relaxed) != UNLOCKED;
        #[cfg(not(all(test, leasecache_loom)))]
        {
            let timeout = poll.then(|| std::time::Instant::now() + POLL);
            // SAFETY: `validate` and the callbacks do not panic and call nothing of the parking
            // lot; the key is this lock's address, which no other parking site uses.
            let result = unsafe {
                parking_lot_core::park(
                    self.key(),
                    validate,
                    || {},
                    |_, _| {},
                    parking_lot_core::DEFAULT_PARK_TOKEN,
                    timeout,
                )
            };
            result == parking_lot_core::ParkResult::Unparked(HANDOFF)
        }
        #[cfg(all(test, leasecache_loom))]
        {
            let _ = poll;
            self.parking.park(validate)
        }
    }

    /// Wakes one sleeping waiter, if there is one.
    #[cold]
    #[inline(never)]
    fn wake_one(&self) {
        #[cfg(not(all(test, leasecache_loom)))]
        // SAFETY: the callback does not panic and calls nothing of the parking lot.
        unsafe {
            parking_lot_core::unpark_one(self.key(), |_| parking_lot_core::DEFAULT_UNPARK_TOKEN);
        }
        #[cfg(all(test, leasecache_loom))]
        self.parking.unpark_one(false, || {});
    }

    #[cfg(not(all(test, leasecache_loom)))]
    fn key(&self) -> usize {
        self as *const Self as usize
    }
}

// SAFETY: `lock` and `try_lock` establish exclusive ownership until `unlock` (Acquire on taking,
// Release on releasing; a hand-over passes ownership through `parking_lot_core`'s queue lock);
// `GuardNoSend`: a guard is released on the thread that took it, like `parking_lot`'s.
#[cfg(not(all(test, leasecache_loom)))]
unsafe impl lock_api::RawMutex for RawShardLock {
    /// A lock whose releases swap the state; caches build theirs with
    /// [`crate::sync::shard_mutex`].
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Self::new(false);

    type GuardMarker = lock_api::GuardNoSend;

    #[inline]
    fn lock(&self) {
        self.acquire();
    }

    #[inline]
    fn try_lock(&self) -> bool {
        self.try_acquire()
    }

    #[inline]
    unsafe fn unlock(&self) {
        self.release();
    }

    #[inline]
    fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) != UNLOCKED
    }
}

/// Loom models only: `parking_lot_core`'s queue for one lock, as a mutex and a condition
/// variable. A sleeper is queued only if `validate` holds under the queue's mutex (as
/// `parking_lot_core` checks it under its bucket's lock); a wake hands a token (plain, or the
/// lock itself) to one queued sleeper. A sleeper no release wakes blocks forever, which loom
/// reports as a deadlock.
#[cfg(all(test, leasecache_loom))]
mod loom_park {
    use loom::sync::{Condvar, Mutex};

    #[derive(Default)]
    struct State {
        queued: usize,
        plain: usize,
        handed: usize,
    }

    pub(super) struct Queue {
        state: Mutex<State>,
        woken: Condvar,
    }

    impl Queue {
        pub(super) fn new() -> Self {
            Self {
                state: Mutex::new(State::default()),
                woken: Condvar::new(),
            }
        }

        /// Whether the wake that ended the sleep handed over the lock.
        pub(super) fn park(&self, validate: impl FnOnce() -> bool) -> bool {
            let mut state = self.state.lock().unwrap();
            if !validate() {
                return false;
            }
            state.queued += 1;
            while state.plain + state.handed == 0 {
                state = self.woken.wait(state).unwrap();
            }
            state.queued -= 1;
            if state.handed > 0 {
                state.handed -= 1;
                true
            } else {
                state.plain -= 1;
                false
            }
        }

        /// Wakes one queued sleeper, handing it the lock if `hand` (then `handed` runs under
        /// the queue's lock, as `parking_lot_core`'s callback does). Whether one was queued.
        pub(super) fn unpark_one(&self, hand: bool, handed: impl FnOnce()) -> bool {
            let mut state = self.state.lock().unwrap();
            if state.queued <= state.plain + state.handed {
                return false;
            }
            if hand {
                handed();
                state.handed += 1;
            } else {
                state.plain += 1;
            }
            self.woken.notify_all();
            true
        }
    }
}

#[cfg(all(test, not(leasecache_loom)))]
mod tests {
    use super::*;
    use crate::sync::{heavy_barrier, init_barriers, shard_mutex};

    /// Mutual exclusion and visibility under contention: threads add to a plain counter under
    /// the lock, with a yield inside now and then, so that waiters find it held past their spin
    /// and sleep; every addition must be counted, with both kinds of release.
    #[test]
    fn contended_increments_are_all_counted() {
        contended_increments(init_barriers());
        contended_increments(false);
    }

    fn contended_increments(fast: bool) {
        let threads = 4;
        let rounds = 20_000;
        let lock = shard_mutex(0u64, fast);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..rounds {
                        let mut n = lock.lock();
                        // A read-modify-write spread over the critical section, with a yield
                        // inside now and then so that others find the lock held and sleep.
                        let v = *n;
                        if v % 64 == 0 {
                            std::thread::yield_now();
                        }
                        *n = v + 1;
                    }
                });
            }
        });
        assert_eq!(*lock.lock(), threads * rounds);
    }

    /// A waiter that sleeps is woken by the release: the holder keeps the lock until the waiter
    /// has registered (its count is visible), then releases; the waiter must get the lock (a
    /// lost wake hangs the test).
    #[test]
    fn a_sleeping_waiter_is_woken_by_the_release() {
        let lock = RawShardLock::new(init_barriers());
        release_to_a_registered_waiter(&lock, || {});
    }

    /// Holds `lock` while a waiter (which first runs `prepare` on its thread) takes it, and
    /// releases it once the waiter has registered (after its spin), so that its wake-up is the
    /// release's doing and not its spin's; then checks that the waiter took and released it.
    fn release_to_a_registered_waiter(lock: &RawShardLock, prepare: impl FnOnce() + Send) {
        lock.acquire();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                prepare();
                lock.acquire();
                lock.release();
            });
            while lock.waiters.load(Ordering::Relaxed) == 0 {
                std::thread::yield_now();
            }
            lock.release();
            waiter.join().unwrap();
        });
        assert!(!lock_api::RawMutex::is_locked(lock));
        assert_eq!(lock.waiters.load(Ordering::Relaxed), 0);
    }

    /// A fairness request that no sleeper takes up is dropped by the next release once no waiter
    /// is registered, so that later releases take the fast path again (left set, it sent every
    /// release through the parking queue).
    #[test]
    fn a_fairness_request_nobody_takes_up_is_dropped() {
        let lock = RawShardLock::new(init_barriers());
        lock.flags.fetch_or(FAIR, Ordering::Relaxed);
        lock.acquire();
        lock.release();
        assert_eq!(lock.flags.load(Ordering::Relaxed) & FAIR, 0);
        assert!(!lock_api::RawMutex::is_locked(&lock));
        lock.acquire();
        lock.release();
        assert!(!lock_api::RawMutex::is_locked(&lock));
    }

    /// With the heavy barrier failing (a seccomp filter after the first cache) on a lock whose
    /// releases issue compiler fences, a release may miss the waiter's registration: here every
    /// release misses it, and the waiter must still get the lock, by napping and looking again.
    #[test]
    fn a_waiter_whose_barrier_failed_gets_the_lock_that_no_release_woke_it_for() {
        if !init_barriers() {
            eprintln!("SKIPPED: no membarrier here, every release swaps the state");
            return;
        }
        let lock = RawShardLock::new(true);
        lock.miss_wakes
            .store(true, std::sync::atomic::Ordering::Relaxed);
        release_to_a_registered_waiter(&lock, || {
            crate::sync::FAIL_NEXT_BARRIER.with(|f| f.set(true));
        });
        // The failure switched this lock's releases to the swap, which pairs without
        // `membarrier`; the simulated failure was consumed, and the real barrier works.
        assert_eq!(lock.flags.load(Ordering::Relaxed) & FAST, 0);
        assert!(heavy_barrier());
    }
}

/// Loom models of the lock itself (the cache's models run on loom's mutex, `crate::sync`): two
/// threads take a lock that the main thread holds, so that they register and sleep; each adds to
/// a cell under the lock (loom checks every access for exclusion and ordering), and a sleeper that
/// no release wakes deadlocks the model. Under loom both kinds of lock run the swapping release:
/// the store-and-`membarrier` pair is modelled by it (an RMW of the state on each side).
#[cfg(all(test, leasecache_loom))]
mod loom_models {
    use super::{Broken, HANDED_OVER, RawShardLock};
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use std::sync::atomic::Ordering;

    /// `relock`: the first thread takes the lock twice, so that it can take it again while the
    /// other sleeps (the hand-over path).
    fn body(broken: Option<Broken>, relock: bool) {
        let mut lock = RawShardLock::new(true);
        lock.broken = broken;
        // Never dropped on a deadlock: loom then unwinds this thread, and dropping loom's
        // objects during that panics again (an abort, not a failed model).
        let shared = std::mem::ManuallyDrop::new(Arc::new((lock, UnsafeCell::new(0u32))));
        shared.0.acquire();
        let mut threads = std::mem::ManuallyDrop::new(Vec::new());
        threads.extend((0..2).map(|t| {
            let shared = Arc::clone(&shared);
            loom::thread::spawn(move || {
                for _ in 0..if relock && t == 0 { 2 } else { 1 } {
                    shared.0.acquire();
                    // SAFETY: under the lock.
                    shared.1.with_mut(|n| unsafe { *n += 1 });
                    shared.0.release();
                }
            })
        }));
        shared.0.release();
        for t in threads.drain(..) {
            t.join().unwrap();
        }
        shared.0.acquire();
        // SAFETY: under the lock.
        assert_eq!(shared.1.with(|n| unsafe { *n }), 2 + u32::from(relock));
        shared.0.release();
        drop(std::mem::ManuallyDrop::into_inner(shared));
    }

    /// A builder that explores one more preemption than the lane's default: these models are
    /// small (a few seconds at 4).
    fn deeper() -> loom::model::Builder {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(4);
        builder
    }

    #[test]
    fn loom_shard_lock() {
        crate::tests::loom::model_with("shard_lock", deeper(), || body(None, false));
    }

    /// A thread that takes the lock again while the other sleeps: the sleeper that loses after
    /// its wake asks for the lock to be handed over, and some executions do hand it over.
    #[test]
    fn loom_shard_lock_relocking() {
        HANDED_OVER.store(0, Ordering::Relaxed);
        crate::tests::loom::model_with("shard_lock_relocking", deeper(), || body(None, true));
        assert!(
            HANDED_OVER.load(Ordering::Relaxed) > 0,
            "no execution handed the lock over"
        );
    }

    /// Negative controls: a waiter that skips its half of the fence, or a release that looks at
    /// the waiter count before it releases, can leave a sleeper that nobody wakes.
    #[test]
    #[should_panic(expected = "deadlock")]
    fn loom_negative_control_no_waiter_barrier_is_caught() {
        crate::tests::loom::model("shard_lock_no_waiter_barrier", || {
            body(Some(Broken::NoWaiterBarrier), false)
        });
    }

    #[test]
    #[should_panic(expected = "deadlock")]
    fn loom_negative_control_release_looking_first_is_caught() {
        crate::tests::loom::model("shard_lock_release_looks_first", || {
            body(Some(Broken::ReleaseLooksFirst), false)
        });
    }
}
