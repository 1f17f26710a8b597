//! The one concurrency shim of the crate.
//!
//! Every atomic, lock and shared pointer the engine uses comes from here, so that a loom build
//! (`RUSTFLAGS="--cfg leasecache_loom" cargo test --profile loom --lib loom`) swaps all of them for
//! loom's model-checked versions at once. API differences between `parking_lot`, `std` and `loom`
//! are smoothed here and never at call sites: locks do not poison and return their guards directly.
//!
//! Besides locks and atomics it holds the three things lock-free reads need (see `reclaim.rs`):
//! [`UnsafeCell`] with loom's closure API (loom checks every access to slot contents against the
//! reclamation protocol), thread-locals ([`thread_locals`]: loom runs every modelled thread on one
//! OS thread), and the two halves of an asymmetric fence ([`light_barrier`], [`heavy_barrier`]).

#[cfg(not(all(test, leasecache_loom)))]
mod imp {
    pub(crate) use std::sync::Arc;
    pub(crate) use std::sync::atomic::{
        AtomicBool, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
    };

    /// `std`'s `UnsafeCell` behind loom's closure API, so that loom builds can track every access.
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        #[inline]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }
        #[inline]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }

    /// A mutex that never poisons.
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(parking_lot::Mutex<T>);

    pub(crate) type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(parking_lot::Mutex::new(value))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock()
        }
        #[cfg(test)]
        pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock()
        }
    }

    /// The shard lock (see `lock.rs`): a mutex released by a plain store.
    pub(crate) type ShardMutex<T> = lock_api::Mutex<crate::lock::RawShardLock, T>;

    pub(crate) type ShardGuard<'a, T> = lock_api::MutexGuard<'a, crate::lock::RawShardLock, T>;

    /// A shard lock around `value`; `fast`: what [`init_barriers`](super::init_barriers)
    /// returned (its releases then issue a compiler fence, see `lock.rs`).
    pub(crate) fn shard_mutex<T>(value: T, fast: bool) -> ShardMutex<T> {
        lock_api::Mutex::from_raw(crate::lock::RawShardLock::new(fast), value)
    }

    /// A condition variable paired with [`Mutex`].
    #[derive(Debug, Default)]
    pub(crate) struct Condvar(parking_lot::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Self(parking_lot::Condvar::new())
        }
        pub(crate) fn wait<'a, T>(&self, mut guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.0.wait(&mut guard);
            guard
        }
        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }
}

#[cfg(all(test, leasecache_loom))]
mod imp {
    pub(crate) use loom::cell::UnsafeCell;
    pub(crate) use loom::sync::Arc;
    pub(crate) use loom::sync::atomic::{
        AtomicBool, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
    };
    #[derive(Debug)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    /// Loom's mutex stands for the shard lock in the models of the cache (the shard lock's own
    /// algorithm has models of its own, `lock.rs`).
    pub(crate) type ShardMutex<T> = Mutex<T>;

    pub(crate) type ShardGuard<'a, T> = MutexGuard<'a, T>;

    pub(crate) fn shard_mutex<T>(value: T, _fast: bool) -> ShardMutex<T> {
        Mutex::new(value)
    }

    #[derive(Debug)]
    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Self(loom::sync::Condvar::new())
        }
        pub(crate) fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.0.wait(guard).unwrap_or_else(|e| e.into_inner())
        }
        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }
}

pub(crate) use imp::*;

/// `thread_local!` with `const` initialisers (no lazy-initialisation check on access), or loom's
/// per-modelled-thread version, which runs destructors when a modelled thread ends.
macro_rules! thread_locals {
    ($($(#[$attr:meta])* static $name:ident: $t:ty = $init:expr;)*) => {
        #[cfg(not(all(test, leasecache_loom)))]
        std::thread_local! { $($(#[$attr])* static $name: $t = const { $init };)* }
        #[cfg(all(test, leasecache_loom))]
        loom::thread_local! { $($(#[$attr])* static $name: $t = $init;)* }
    };
}
pub(crate) use thread_locals;

/// The light half of an asymmetric fence: orders the caller's preceding store (a reader's
/// announcement, a shard lock's release, `lock.rs`) before its following loads, in pair with
/// [`heavy_barrier`]. A compiler fence
/// where the heavy side is a process-wide barrier (`fast`, what [`init_barriers`] returned), a
/// full fence otherwise.
#[inline]
pub(crate) fn light_barrier(fast: bool) {
    if fast {
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
    } else {
        fence(Ordering::SeqCst);
    }
}

/// The writer's half of an asymmetric fence. Returns `true` when every thread of the process has
/// executed a full fence since it was called, so a reader's announcement made before that point
/// is visible, and a reader's loads after it see what the caller stored before the call.
///
/// Returns `false` when no process-wide barrier could be issued: the process never had one, or
/// `membarrier` failed after registration succeeded (a seccomp filter installed after the first
/// cache was built). The caller has then only issued a `SeqCst` fence of its own, which pairs with
/// readers' full fences but not with their compiler fences; from then on [`init_barriers`] returns
/// `false` for new caches, and existing ones switch their readers to full fences (see
/// `reclaim.rs`).
pub(crate) fn heavy_barrier() -> bool {
    #[cfg(not(all(test, leasecache_loom)))]
    if membarrier::available() && membarrier::barrier() {
        return true;
    }
    fence(Ordering::SeqCst);
    false
}

/// Registers the process for expedited `membarrier` once, and returns whether the heavy barrier
/// is a process-wide one, so that readers may pass `true` to [`light_barrier`]. When registration
/// fails (old kernels, seccomp filters, other systems) readers must issue full fences. Always
/// `false` under loom, which models both halves as `SeqCst` fences.
pub(crate) fn init_barriers() -> bool {
    #[cfg(not(all(test, leasecache_loom)))]
    {
        // Miri has no `membarrier`: reads there issue full fences.
        #[cfg(not(miri))]
        membarrier::init();
        membarrier::available()
    }
    #[cfg(all(test, leasecache_loom))]
    false
}

#[cfg(all(test, not(leasecache_loom)))]
pub(crate) use membarrier::FAIL_NEXT as FAIL_NEXT_BARRIER;

#[cfg(not(all(test, leasecache_loom)))]
mod membarrier {
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set once, before any cache exists whose readers could rely on it; cleared if a barrier
    /// ever fails.
    static AVAILABLE: AtomicBool = AtomicBool::new(false);

    pub(super) fn available() -> bool {
        // Relaxed: set by `init`, which runs before any cache is built (each reads it then, and
        // whatever publishes the cache to other threads orders this write before). A cache that
        // misses the clearing after a failure finds out at its own first failed barrier.
        AVAILABLE.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    std::thread_local! {
        /// Makes this thread's next barrier fail as if the system call had (a seccomp filter).
        pub(crate) static FAIL_NEXT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Whether the next barrier of this thread was made to fail by a test; clears the request.
    /// (A simulated failure leaves `AVAILABLE` set: the other tests of the process run on.)
    fn simulated_failure() -> bool {
        #[cfg(test)]
        if FAIL_NEXT.with(|fail| fail.replace(false)) {
            return true;
        }
        false
    }

    #[cfg(target_os = "linux")]
    pub(super) fn init() {
        use rustix::thread::{MembarrierCommand, membarrier, membarrier_query};
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let query = membarrier_query();
            let usable = query.contains_command(MembarrierCommand::PrivateExpedited)
                && query.contains_command(MembarrierCommand::RegisterPrivateExpedited)
                && membarrier(MembarrierCommand::RegisterPrivateExpedited).is_ok();
            AVAILABLE.store(usable, Ordering::Relaxed);
        });
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn init() {}

    /// Issues the barrier; `false` if it failed. Registered in `init`, so the documented
    /// failures (not registered, not supported) should not happen, but a seccomp filter installed
    /// since can make the call fail: then no cache built from now on relies on it.
    #[cfg(target_os = "linux")]
    pub(super) fn barrier() -> bool {
        use rustix::thread::{MembarrierCommand, membarrier};
        if simulated_failure() {
            return false;
        }
        if membarrier(MembarrierCommand::PrivateExpedited).is_err() {
            AVAILABLE.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn barrier() -> bool {
        let _ = simulated_failure();
        false
    }
}

/// A process-wide unique identity for each cache instance, so that a lease names its cache (I8).
///
/// Deliberately a plain `std` atomic even under loom: it is taken once per cache at construction,
/// outside any modelled interleaving, and a loom atomic cannot live in a `static`.
pub(crate) fn next_instance_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A process-wide unique, nonzero token for the calling thread (under loom, the modelled thread),
/// never reused: lets a thread recognise a mark it left itself (see `load.rs`).
pub(crate) fn thread_token() -> u64 {
    thread_locals! {
        static TOKEN: std::cell::Cell<u64> = std::cell::Cell::new(0);
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    TOKEN.with(|token| {
        if token.get() == 0 {
            // Deliberately a plain `std` atomic, as in `next_instance_id`: it only hands out
            // distinct numbers.
            token.set(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        }
        token.get()
    })
}
