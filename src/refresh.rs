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
//!
//! # Probabilistic early expiration
//!
//! With [`CacheBuilder::refresh_ahead_probabilistic`](crate::CacheBuilder::refresh_ahead_probabilistic)
//! the refresh point is drawn per read (XFetch, Vattani et al., VLDB 2015): a read of an entry
//! `left` before its deadline, past the fixed point, claims the refresh when
//! `delta * beta * -ln(u) >= left` ([`xfetch_due`]), `u` uniform in (0, 1], `delta` the
//! cache's latest load time by its clock (one per cache, not per key: the paper keeps one per
//! key, which would cost every entry 8 bytes). The draw comes from a per-thread generator
//! seeded from the OS's randomness (std's `RandomState`), not a cryptographic one.

use crate::Cache;
use crate::generation::Lease;
use crate::sync::Mutex;
use crate::sync::{AtomicU64, Ordering};
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
    /// XFetch's `beta` and `delta` (`CacheBuilder::refresh_ahead_probabilistic`).
    pub(crate) xfetch: Xfetch,
}

/// Probabilistic early expiration's state: `beta` (`None`: the fixed point) and `delta`, the
/// latest load's duration. Shared by the plain and the tiered cache.
pub(crate) struct Xfetch {
    beta: Option<f64>,
    /// Clock nanoseconds; 0 until a load was timed (the fixed point applies until then).
    delta_ns: AtomicU64,
    /// The uniform draw in (0, 1]; tests replace it.
    pub(crate) draw: fn() -> f64,
}

impl Xfetch {
    pub(crate) fn new(beta: Option<f64>) -> Self {
        Self {
            beta,
            delta_ns: AtomicU64::new(0),
            draw: uniform,
        }
    }

    /// Whether loads should be timed.
    #[inline]
    pub(crate) fn is_on(&self) -> bool {
        self.beta.is_some()
    }

    /// Records a load that took `nanos`.
    pub(crate) fn observe(&self, nanos: u64) {
        if self.is_on() && nanos != 0 {
            // Relaxed: a hint; a read that sees an older delta draws with it.
            self.delta_ns.store(nanos, Ordering::Relaxed);
        }
    }

    /// How long before its deadline an entry becomes due for this read, at most `window`
    /// (the fixed point): `window` itself without XFetch or before a load was timed, else
    /// `min(window, delta * beta * -ln(u))` for a fresh draw `u`.
    pub(crate) fn lead(&self, window: u64) -> u64 {
        let Some(beta) = self.beta else {
            return window;
        };
        // Relaxed: see `observe`.
        let delta = self.delta_ns.load(Ordering::Relaxed);
        if delta == 0 {
            return window;
        }
        let lead = delta as f64 * beta * -(self.draw)().ln();
        if lead >= window as f64 {
            window
        } else {
            lead as u64
        }
    }
}

/// XFetch's trigger: whether a read `left_ns` before the deadline refreshes, with load time
/// `delta_ns`, `beta`, and the draw `u` in (0, 1]: `now - delta * beta * ln(u) >= deadline`.
/// [`Xfetch::lead`] is its closed form (`left <= lead`); the tests check that they agree.
#[cfg(all(test, not(leasecache_loom)))]
pub(crate) fn xfetch_due(left_ns: u64, delta_ns: u64, beta: f64, u: f64) -> bool {
    delta_ns as f64 * beta * -u.ln() >= left_ns as f64
}

/// A uniform draw in (0, 1] from a per-thread SplitMix64 generator.
fn uniform() -> f64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, RandomState};
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(0u8));
    }
    let x = STATE.with(|s| {
        let next = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    });
    // 53 random bits, shifted into (0, 1]: never 0, whose logarithm is infinite.
    ((x >> 11) + 1) as f64 / (1u64 << 53) as f64
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
            xfetch: Xfetch::new(None),
        }
    }

    /// With XFetch's `beta` (`None`: the fixed point).
    pub(crate) fn probabilistic(mut self, beta: Option<f64>) -> Self {
        self.xfetch = Xfetch::new(beta);
        self
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
        if deadline.saturating_sub(now) > self.refresh.xfetch.lead(window)
            || !self.refresh.running.lock().insert(hash)
        {
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
    /// write since the claim) and returns it; on an error returns `current`. `started`: the
    /// clock when the load began (0: not timed).
    fn finish<E>(self, key: K, loaded: Result<V, E>, current: V, started: u64) -> V {
        if started != 0 {
            let took = self.cache.clock_now().saturating_sub(started);
            self.cache.refresh.xfetch.observe(took);
        }
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

    /// The clock now if loads are timed (XFetch), else 0.
    fn load_started(&self) -> u64 {
        if self.cache.refresh.xfetch.is_on() {
            self.cache.clock_now()
        } else {
            0
        }
    }

    /// The refresh, with a synchronous loader.
    pub(crate) fn run<F, E>(self, key: K, current: V, loader: F) -> V
    where
        F: FnOnce(K) -> Result<V, E>,
    {
        let started = self.load_started();
        let loaded = loader(key.clone());
        self.finish(key, loaded, current, started)
    }

    /// The refresh, with an async loader.
    pub(crate) async fn run_async<F, Fut, E>(self, key: K, current: V, loader: F) -> V
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let started = self.load_started();
        let loaded = loader(key.clone()).await;
        self.finish(key, loaded, current, started)
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

    /// A cache whose loads are timed and whose draws are `u = 0.5` (`-ln u = 0.693`).
    fn xfetch_cache(clock: &ManualClock) -> Cache<u32, u32> {
        let mut c: Cache<u32, u32> = Cache::builder()
            .time_to_live(10 * S)
            .refresh_after(6 * S)
            .refresh_ahead_probabilistic(1.0)
            .clock(clock.clone())
            .build();
        c.refresh.xfetch.draw = || 0.5;
        c
    }

    #[test]
    fn xfetch_lead_is_the_trigger_in_closed_form() {
        use super::{Xfetch, xfetch_due};
        let draws: [fn() -> f64; 4] = [|| 1.0, || 0.5, || 0.01, || f64::MIN_POSITIVE];
        for draw in draws {
            for beta in [0.5, 1.0, 3.0] {
                for delta in [1, 1_000, 20_000_000] {
                    let x = Xfetch {
                        draw,
                        ..Xfetch::new(Some(beta))
                    };
                    x.observe(delta);
                    let lead = x.lead(u64::MAX);
                    for left in [1, 999, 1_000, 1_001, 13_862_943, 13_862_944, 1 << 40] {
                        assert_eq!(
                            xfetch_due(left, delta, beta, draw()),
                            left <= lead,
                            "left {left} delta {delta} beta {beta} u {}",
                            draw()
                        );
                    }
                }
            }
        }
        // Capped by the window (the fixed point), and the fixed point without XFetch or
        // before a load was timed.
        let x = Xfetch {
            draw: || f64::MIN_POSITIVE,
            ..Xfetch::new(Some(1.0))
        };
        assert_eq!(x.lead(500), 500, "untimed");
        x.observe(1_000);
        assert_eq!(x.lead(500), 500, "capped");
        assert_eq!(Xfetch::new(None).lead(500), 500);
    }

    #[test]
    fn xfetch_refreshes_a_few_load_times_before_expiry_never_before_the_fixed_point() {
        let clock = ManualClock::new();
        let c = xfetch_cache(&clock);
        let loads = Cell::new(0);
        // The load takes 100 ms by the cache's clock: delta = 100 ms, lead = 69 ms.
        let load = |v: u32| {
            loads.set(loads.get() + 1);
            clock.advance(S / 10);
            Ok::<_, ()>(v)
        };
        assert_eq!(c.get_or_load(1, |_| load(1)), Ok(1));
        // 9.8 s into the 10 s TTL (the first value was stored at 0.1 s): 300 ms left.
        clock.advance(9 * S + 7 * S / 10);
        assert_eq!(
            c.get_or_load(1, |_| load(2)),
            Ok(1),
            "300 ms left: not drawn"
        );
        clock.advance(S / 4);
        assert_eq!(c.get_or_load(1, |_| load(2)), Ok(2), "50 ms left: drawn");
        assert_eq!(loads.get(), 2);
        // Never before the fixed point, whatever the draw.
        let mut c = xfetch_cache(&clock);
        c.refresh.xfetch.draw = || f64::MIN_POSITIVE;
        assert_eq!(c.get_or_load(1, |_| load(1)), Ok(1));
        clock.advance(5 * S);
        assert_eq!(c.get_or_load(1, |_| load(2)), Ok(1), "before refresh_after");
        clock.advance(2 * S);
        assert_eq!(
            c.get_or_load(1, |_| load(2)),
            Ok(2),
            "past it, a tiny u draws"
        );
    }

    #[test]
    fn xfetch_uses_the_fixed_point_until_a_load_is_timed() {
        let clock = ManualClock::new();
        let c = xfetch_cache(&clock);
        // Loads that take no time by the cache's clock leave delta unknown.
        assert_eq!(c.get_or_load(1, |_| Ok::<_, ()>(1)), Ok(1));
        clock.advance(7 * S);
        assert_eq!(c.get_or_load(1, |_| Ok::<_, ()>(2)), Ok(2));
    }

    #[test]
    fn the_draw_is_uniform_in_the_half_open_unit_interval() {
        let draws: Vec<f64> = (0..10_000).map(|_| super::uniform()).collect();
        assert!(draws.iter().all(|&u| u > 0.0 && u <= 1.0));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
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
