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
//! Which half a release issues is fixed when the lock is built: a compiler fence if `membarrier`
//! was available then, else a full fence (what a locked instruction costs), which pairs with the
//! full fence a waiter issues instead of `membarrier`. If `membarrier` fails later (a seccomp
//! filter installed since), releases of a lock built with it go on with compiler fences: a waiter
//! whose heavy half failed on such a lock sleeps in bounded naps ([`POLL`]) and looks at the lock
//! after each, so it is never lost, only late.
//!
//! Waiters spin first (as `parking_lot` does), then sleep on `parking_lot_core`'s queues, keyed
//! by the lock's address. The lock is not fair: a thread woken competes with threads arriving,
//! as with `std`'s mutex on Linux. Shard critical sections are short (a write's table and queue
//! changes), and a woken thread spins again before it sleeps again.

// The lock holds the value `lock_api` protects; the guard and the unsafe `unlock` are
// `lock_api`'s contract, and parking is `parking_lot_core`'s (both are `unsafe` to call).
#![allow(unsafe_code)]

use crate::sync::{AtomicU8, AtomicU32, Ordering};

const UNLOCKED: u8 = 0;
const LOCKED: u8 = 1;

/// How long a waiter that could not issue the heavy barrier sleeps before it looks at the lock
/// again (see the module docs).
#[cfg_attr(all(test, leasecache_loom), allow(dead_code))]
const POLL: std::time::Duration = std::time::Duration::from_millis(1);

/// The raw lock (see the module docs); [`crate::sync::ShardMutex`] puts a value behind it.
pub(crate) struct RawShardLock {
    state: AtomicU8,
    /// Whether releases issue a compiler fence as their half (`membarrier` was available when
    /// the lock was built), else a full fence.
    fast: bool,
    /// Threads that registered to sleep on the lock (with the heavy barrier after their
    /// registration) and have not taken it yet; a release with a nonzero count wakes one.
    waiters: AtomicU32,
    /// Loom models only: the model of `parking_lot_core`'s queue for this lock.
    #[cfg(all(test, leasecache_loom))]
    parking: loom_park::Queue,
    /// Loom models only: the negative control, a waiter that skips its half of the fence.
    #[cfg(all(test, leasecache_loom))]
    pub(crate) broken: bool,
    /// Tests only: releases skip their wake, as a release that missed the registration would.
    #[cfg(all(test, not(leasecache_loom)))]
    miss_wakes: std::sync::atomic::AtomicBool,
}

impl RawShardLock {
    /// An unlocked lock whose releases issue a compiler fence if `fast` (pass what
    /// [`crate::sync::init_barriers`] returned), a full fence otherwise.
    #[cfg(not(all(test, leasecache_loom)))]
    pub(crate) const fn new(fast: bool) -> Self {
        Self {
            state: AtomicU8::new(UNLOCKED),
            fast,
            waiters: AtomicU32::new(0),
            #[cfg(test)]
            miss_wakes: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// An unlocked lock (loom's atomics have no `const` constructor). Under loom `fast` means
    /// the model of `membarrier` on both halves (see [`release`](Self::release)); without it,
    /// both halves are `SeqCst` fences.
    #[cfg(all(test, leasecache_loom))]
    pub(crate) fn new(fast: bool) -> Self {
        Self {
            state: AtomicU8::new(UNLOCKED),
            fast,
            waiters: AtomicU32::new(0),
            parking: loom_park::Queue::new(),
            broken: false,
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
        #[cfg(all(test, leasecache_loom))]
        if self.fast {
            // The model of a store that a later `membarrier` orders: an RMW, which reads the
            // barrier's RMW if it comes after it and then sees the registration before it.
            self.state.swap(UNLOCKED, Ordering::AcqRel);
            if self.waiters.load(Ordering::Relaxed) != 0 {
                self.wake_one();
            }
            return;
        }
        // Release: the critical section's writes happen before the next holder's Acquire.
        self.state.store(UNLOCKED, Ordering::Release);
        // The light half: orders the store before the load (a compiler fence where waiters issue
        // `membarrier`, a full fence otherwise).
        crate::sync::light_barrier(self.fast);
        #[cfg(all(test, not(leasecache_loom)))]
        if self.miss_wakes.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if self.waiters.load(Ordering::Relaxed) != 0 {
            self.wake_one();
        }
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
                self.waiters.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            self.sleep(!fenced);
            // Woken (or the nap ended): spin once more before sleeping again, as a woken thread
            // competes with threads that never slept.
            if self.spin() {
                self.waiters.fetch_sub(1, Ordering::Relaxed);
                return;
            }
        }
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

    /// The heavy half of the fence, after the caller registered as a waiter; `false` if only a
    /// full fence of this thread's own was issued (see [`sleep`](Self::sleep)).
    fn heavy_barrier(&self) -> bool {
        #[cfg(all(test, leasecache_loom))]
        {
            if self.broken {
                return true;
            }
            if self.fast {
                // The model of `membarrier`: an RMW on the location releases store to.
                self.state.fetch_add(0, Ordering::AcqRel);
                return true;
            }
            crate::sync::fence(Ordering::SeqCst);
            true
        }
        // On a lock built without `membarrier`, every release issues a full fence, which pairs
        // with the one `heavy_barrier` issued here when it could not issue `membarrier`.
        #[cfg(not(all(test, leasecache_loom)))]
        {
            crate::sync::heavy_barrier() || !self.fast
        }
    }

    /// Sleeps until a release wakes this thread, unless the lock is free by then; with `poll`,
    /// for at most [`POLL`] (a release may have missed the registration, see the module docs).
    fn sleep(&self, poll: bool) {
        let validate = || self.state.load(Ordering::Relaxed) != UNLOCKED;
        #[cfg(not(all(test, leasecache_loom)))]
        {
            let timeout = poll.then(|| std::time::Instant::now() + POLL);
            // SAFETY: `validate` and the callbacks do not panic and call nothing of the parking
            // lot; the key is this lock's address, which no other parking site uses.
            unsafe {
                parking_lot_core::park(
                    self.key(),
                    validate,
                    || {},
                    |_, _| {},
                    parking_lot_core::DEFAULT_PARK_TOKEN,
                    timeout,
                );
            }
        }
        #[cfg(all(test, leasecache_loom))]
        {
            let _ = poll;
            self.parking.park(validate);
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
        self.parking.unpark_one();
    }

    #[cfg(not(all(test, leasecache_loom)))]
    fn key(&self) -> usize {
        self as *const Self as usize
    }

    /// Whether some thread holds the lock (a snapshot).
    #[cfg(all(test, not(leasecache_loom)))]
    pub(crate) fn is_held(&self) -> bool {
        self.state.load(Ordering::Relaxed) != UNLOCKED
    }
}

// SAFETY: `lock` and `try_lock` establish exclusive ownership until `unlock` (Acquire on taking,
// Release on releasing); `GuardNoSend`: a guard is released on the thread that took it, like
// `parking_lot`'s.
#[cfg(not(all(test, leasecache_loom)))]
unsafe impl lock_api::RawMutex for RawShardLock {
    /// A lock whose releases issue full fences; caches build theirs with
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
/// `parking_lot_core` checks it under its bucket's lock); a wake hands a token to one queued
/// sleeper. A sleeper no release wakes blocks forever, which loom reports as a deadlock.
#[cfg(all(test, leasecache_loom))]
mod loom_park {
    use loom::sync::{Condvar, Mutex};

    pub(super) struct Queue {
        /// (sleepers queued, wakes handed out and not yet taken).
        state: Mutex<(usize, usize)>,
        woken: Condvar,
    }

    impl Queue {
        pub(super) fn new() -> Self {
            Self {
                state: Mutex::new((0, 0)),
                woken: Condvar::new(),
            }
        }

        pub(super) fn park(&self, validate: impl FnOnce() -> bool) {
            let mut state = self.state.lock().unwrap();
            if !validate() {
                return;
            }
            state.0 += 1;
            while state.1 == 0 {
                state = self.woken.wait(state).unwrap();
            }
            state.1 -= 1;
            state.0 -= 1;
        }

        pub(super) fn unpark_one(&self) {
            let mut state = self.state.lock().unwrap();
            if state.0 > state.1 {
                state.1 += 1;
                self.woken.notify_all();
            }
        }
    }
}

#[cfg(all(test, not(leasecache_loom)))]
mod tests {
    use super::*;
    use crate::sync::{heavy_barrier, init_barriers, shard_mutex};

    /// Mutual exclusion and visibility under contention: threads add to a plain counter under
    /// the lock, many more times than the spin phase can absorb, so that waiters sleep and are
    /// woken (the count of sleeps is checked).
    #[test]
    fn contended_increments_are_all_counted() {
        let threads = 4;
        let rounds = 20_000;
        let lock = shard_mutex(0u64, init_barriers());
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
    /// has registered (its count is visible), then releases; the waiter must get the lock.
    #[test]
    fn a_sleeping_waiter_is_woken_by_the_release() {
        let lock = RawShardLock::new(init_barriers());
        lock.acquire();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                lock.acquire();
                lock.release();
            });
            // Wait until the waiter has registered (after its spin), so that its wake-up is
            // the release's doing and not its spin's.
            while lock.waiters.load(Ordering::Relaxed) == 0 {
                std::thread::yield_now();
            }
            lock.release();
            waiter.join().unwrap();
        });
        assert!(!lock.is_held());
        assert_eq!(lock.waiters.load(Ordering::Relaxed), 0);
    }

    /// With the heavy barrier failing (a seccomp filter after the first cache) on a lock whose
    /// releases issue compiler fences, a release may miss the waiter's registration: here every
    /// release misses it, and the waiter must still get the lock, by napping and looking again.
    #[test]
    fn a_waiter_whose_barrier_failed_gets_the_lock_that_no_release_woke_it_for() {
        if !init_barriers() {
            eprintln!("SKIPPED: no membarrier here, every release issues a full fence");
            return;
        }
        let lock = RawShardLock::new(true);
        lock.miss_wakes
            .store(true, std::sync::atomic::Ordering::Relaxed);
        lock.acquire();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                crate::sync::FAIL_NEXT_BARRIER.with(|f| f.set(true));
                lock.acquire();
                lock.release();
            });
            while lock.waiters.load(Ordering::Relaxed) == 0 {
                std::thread::yield_now();
            }
            lock.release();
            waiter.join().unwrap();
        });
        assert!(!lock.is_held());
        assert_eq!(lock.waiters.load(Ordering::Relaxed), 0);
        // The simulated failure was consumed by the waiter's barrier, and the real one works.
        assert!(heavy_barrier());
    }
}

/// Loom models of the lock itself (the cache's models run on loom's mutex, `crate::sync`): two
/// threads take a lock that the main thread holds, so that they register and sleep; each adds to
/// a cell under the lock (loom checks every access for exclusion and ordering), and a sleeper that
/// no release wakes deadlocks the model.
#[cfg(all(test, leasecache_loom))]
mod loom_models {
    use super::RawShardLock;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;

    fn body(fast: bool, broken: bool) {
        let mut lock = RawShardLock::new(fast);
        lock.broken = broken;
        // Never dropped: when loom finds a deadlock (the negative control) it unwinds this
        // thread, and dropping loom's objects then panics again (an abort, not a failed model).
        let shared = std::mem::ManuallyDrop::new(Arc::new((lock, UnsafeCell::new(0u32))));
        shared.0.acquire();
        let mut threads = std::mem::ManuallyDrop::new(Vec::new());
        threads.extend((0..2).map(|_| {
            let shared = Arc::clone(&shared);
            loom::thread::spawn(move || {
                shared.0.acquire();
                // SAFETY: under the lock.
                shared.1.with_mut(|n| unsafe { *n += 1 });
                shared.0.release();
            })
        }));
        shared.0.release();
        for t in threads.drain(..) {
            t.join().unwrap();
        }
        shared.0.acquire();
        // SAFETY: under the lock.
        assert_eq!(shared.1.with(|n| unsafe { *n }), 2);
        shared.0.release();
        drop(std::mem::ManuallyDrop::into_inner(shared));
    }

    #[test]
    fn loom_shard_lock_with_full_fences() {
        crate::tests::loom::model("shard_lock_full_fences", || body(false, false));
    }

    #[test]
    fn loom_shard_lock_with_membarrier() {
        crate::tests::loom::model("shard_lock_membarrier", || body(true, false));
    }

    /// Negative controls: a waiter that skips its half of the fence can sleep through the only
    /// release that could wake it, with either kind of release.
    #[test]
    #[should_panic(expected = "deadlock")]
    fn loom_negative_control_no_waiter_barrier_is_caught() {
        crate::tests::loom::model("shard_lock_no_waiter_barrier", || body(true, true));
    }

    #[test]
    #[should_panic(expected = "deadlock")]
    fn loom_negative_control_no_waiter_fence_is_caught() {
        crate::tests::loom::model("shard_lock_no_waiter_fence", || body(false, true));
    }
}
