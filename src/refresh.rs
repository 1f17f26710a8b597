//! Refresh ahead of expiry for [`Cache`]: see [`CacheBuilder::refresh_after`](crate::CacheBuilder::refresh_after).
//!
//! An entry's age is read from its TTL deadline: with a TTL `ttl` and `refresh_after(after)`, an
//! entry is due once less than `ttl - after` is left before its deadline (an entry written with
//! a shorter TTL is due correspondingly earlier; one with no deadline never is). A
//! [`get_or_load`](Cache::get_or_load) or [`get_or_load_async`](Cache::get_or_load_async) that
//! finds its key due and not already being refreshed *claims* the refresh: it takes a lease at
//! that moment, runs its loader, saves the result under the lease, and returns it. Every other
//! caller meanwhile gets the current value at once. A purge, insert or flush of the key during
//! the refresh fences the lease: the refreshed value is returned to the refreshing caller but
//! stored nowhere. A loader error leaves the entry as it was (the refreshing caller gets the
//! current value): it still expires at its deadline.

use crate::Cache;
use crate::generation::Lease;
use crate::sync::Mutex;
use std::collections::HashSet;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::time::Duration;

/// The refresh settings and the keys being refreshed (by hash: keys sharing a hash share a
/// refresher, which only delays one refresh).
pub(crate) struct Refresh {
    /// How long before its deadline an entry is due, in clock nanoseconds; `None`: off.
    window_ns: Option<u64>,
    running: Mutex<HashSet<u64>>,
}

impl Default for Refresh {
    /// Off.
    fn default() -> Self {
        Self::new(None, None)
    }
}

impl Refresh {
    /// Refresh entries older than `after`, in a cache whose TTL is `ttl` (off without a TTL, or
    /// if `after` is not shorter than it).
    pub(crate) fn new(after: Option<Duration>, ttl: Option<Duration>) -> Self {
        let window = match (after, ttl) {
            (Some(after), Some(ttl)) => ttl.checked_sub(after).filter(|w| !w.is_zero()),
            _ => None,
        };
        Self {
            window_ns: window.map(|w| u64::try_from(w.as_nanos()).unwrap_or(u64::MAX)),
            running: Mutex::new(HashSet::new()),
        }
    }

    /// Whether refresh ahead of expiry is on.
    #[inline]
    pub(crate) fn is_on(&self) -> bool {
        self.window_ns.is_some()
    }
}

/// A claimed refresh of one key: ends (lets another caller claim the key) when dropped.
pub(crate) struct Claim<'a, K, V, S> {
    cache: &'a Cache<K, V, S>,
    hash: u64,
    lease: Lease,
}

impl<K, V, S> Drop for Claim<'_, K, V, S> {
    fn drop(&mut self) {
        self.cache.refresh.running.lock().remove(&self.hash);
    }
}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    /// The refresh of `key` if its entry is live, due, and nobody refreshes it; its lease is
    /// taken here, before the loader reads the source.
    pub(crate) fn refresh_claim(&self, key: &K, hash: u64) -> Option<Claim<'_, K, V, S>> {
        let window = self.refresh.window_ns?;
        let now = self.clock_now();
        let guard = self.readers.enter();
        let deadline = self.cell(hash).shared.deadline_of(&guard, hash, key, now);
        drop(guard);
        let deadline = deadline.filter(|&d| d != 0)?;
        if deadline.saturating_sub(now) > window || !self.refresh.running.lock().insert(hash) {
            return None;
        }
        Some(Claim {
            cache: self,
            hash,
            lease: self.lease_for(self.cell(hash), hash),
        })
    }
}

impl<K, V, S> Claim<'_, K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher,
{
    /// Runs the refresh with a loader's result: saves it under the claim's lease (fenced by any
    /// write since the claim) and returns it; on an error returns `current`.
    fn finish<E>(self, key: K, loaded: Result<V, E>, current: V) -> V {
        match loaded {
            Ok(value) => {
                let _ = self
                    .cache
                    .save_with_lease(key, value.clone(), self.lease.clone());
                value
            }
            Err(_) => current,
        }
    }

    /// The refresh, with a synchronous loader.
    pub(crate) fn run<F, E>(self, key: K, current: V, loader: F) -> V
    where
        F: FnOnce(K) -> Result<V, E>,
    {
        let loaded = loader(key.clone());
        self.finish(key, loaded, current)
    }

    /// The refresh, with an async loader.
    pub(crate) async fn run_async<F, Fut, E>(self, key: K, current: V, loader: F) -> V
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let loaded = loader(key.clone()).await;
        self.finish(key, loaded, current)
    }
}

#[cfg(all(test, not(leasecache_loom)))]
mod tests {
    use crate::{Cache, ManualClock};
    use std::cell::Cell;
    use std::time::Duration;

    const S: Duration = Duration::from_secs(1);

    fn cache(clock: &ManualClock) -> Cache<u32, u32> {
        Cache::builder()
            .time_to_live(10 * S)
            .refresh_after(6 * S)
            .clock(clock.clone())
            .build()
    }

    #[test]
    fn a_due_entry_is_reloaded_once_and_gets_a_fresh_ttl() {
        let clock = ManualClock::new();
        let c = cache(&clock);
        let loads = Cell::new(0);
        let load = |v: u32| {
            loads.set(loads.get() + 1);
            Ok::<_, ()>(v)
        };
        assert_eq!(c.get_or_load(1, |_| load(1)), Ok(1));
        clock.advance(5 * S);
        assert_eq!(c.get_or_load(1, |_| load(2)), Ok(1), "not due yet");
        assert_eq!(loads.get(), 1);
        clock.advance(2 * S);
        // Due: this caller refreshes; a caller arriving during the refresh keeps the current
        // value and loads nothing.
        let v = c.get_or_load(1, |_| {
            assert_eq!(c.get_or_load(1, |_| load(99)), Ok(1), "a second refresher");
            load(2)
        });
        assert_eq!(v, Ok(2));
        assert_eq!(loads.get(), 2);
        assert_eq!(c.get(&1), Some(2));
        // 16 s after the first load, 9 s after the refresh: alive only thanks to the refresh.
        clock.advance(9 * S);
        assert_eq!(c.get(&1), Some(2));
    }

    #[test]
    fn a_failed_refresh_keeps_the_value_until_its_deadline() {
        let clock = ManualClock::new();
        let c = cache(&clock);
        assert_eq!(c.get_or_load(1, |_| Ok::<_, ()>(1)), Ok(1));
        clock.advance(7 * S);
        assert_eq!(c.get_or_load(1, |_| Err(())), Ok(1), "the current value");
        assert_eq!(c.get(&1), Some(1));
        clock.advance(3 * S);
        assert_eq!(c.get(&1), None, "expired at its original deadline");
        assert_eq!(c.get_or_load(1, |_| Err(())), Err(()));
    }

    #[test]
    fn a_purge_during_a_refresh_discards_it() {
        let clock = ManualClock::new();
        let c = cache(&clock);
        assert_eq!(c.get_or_load(1, |_| Ok::<_, ()>(1)), Ok(1));
        clock.advance(7 * S);
        let v = c.get_or_load(1, |_| {
            let loaded = 2; // read the source
            c.purge(&1); // a writer updates the source and purges, meanwhile
            Ok::<_, ()>(loaded)
        });
        assert_eq!(v, Ok(2), "the refreshing caller gets what it loaded");
        assert_eq!(c.get(&1), None, "but it is stored nowhere");
        assert_eq!(c.get_or_load(1, |_| Ok::<_, ()>(3)), Ok(3));
    }

    #[test]
    fn async_loads_refresh_too() {
        let clock = ManualClock::new();
        let c = cache(&clock);
        let load = |v: u32| c.get_or_load_async(1, move |_| async move { Ok::<_, ()>(v) });
        assert_eq!(futures_executor::block_on(load(1)), Ok(1));
        clock.advance(7 * S);
        assert_eq!(futures_executor::block_on(load(2)), Ok(2));
        clock.advance(9 * S);
        assert_eq!(c.get(&1), Some(2));
    }

    #[test]
    fn off_without_a_ttl_or_with_after_past_it() {
        let clock = ManualClock::new();
        for c in [
            Cache::<u32, u32>::builder()
                .refresh_after(S)
                .clock(clock.clone())
                .build(),
            Cache::<u32, u32>::builder()
                .time_to_live(S)
                .refresh_after(2 * S)
                .clock(clock.clone())
                .build(),
        ] {
            assert_eq!(c.get_or_load(1, |_| Ok::<_, ()>(1)), Ok(1));
            clock.advance(S / 2);
            assert_eq!(c.get_or_load(1, |_| Ok::<_, ()>(2)), Ok(1));
        }
    }
}
