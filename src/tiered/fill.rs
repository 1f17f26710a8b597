//! One filler per key across the fleet, on the tiered read path.
//!
//! On an L1 miss the flight's leader asks Redis with
//! [`get_or_fill`](crate::redis::RedisStore::get_or_fill) in its announced form. If another
//! process is filling the key, the leader waits for the fill to end instead of reading the
//! source: until the fill's announcement (`W<key>` on the invalidation channel, published by the
//! save only because a waiter set the key's waiters flag), an invalidation of the key (a purge
//! voided the fill: read again, and start a fresh fill), or a backoff poll (25 ms, doubling up to
//! 500 ms, and never past the moment the filler's lease lapses, when this process takes the fill
//! over). Then it reads Redis again: an announcement is a hint, never a value. At most one task
//! per process waits per key (the L1's single flight), so a purge of a hot key read by N
//! processes costs one source read and about N Redis reads, not N source reads.
//!
//! [`TieredCache::get_or_load_allow_stale`] adds the opt-in stale grace (see
//! [`crate::redis::fill`], *Stale grace*): on an L1 miss it asks, in this order, the L1's stash
//! (only if the L1 was built with [`CacheBuilder::stale_grace`](crate::CacheBuilder::stale_grace):
//! the value this process's latest purge or invalidation of the key removed, while a caller
//! of this process reloads it, no round trip) and then
//! Redis, without a lease (the value the key's latest purge replaced, while another caller of
//! the fleet refills it). Both sources follow the same rules: the value the latest purge
//! replaced, within the grace of the tier that kept it, while one caller reloads. The L1
//! never caches a stale value.

use super::TieredKey;
use super::{Shared, TieredCache};
use crate::redis::{FillLookup, FillMode, MaybeStale, RedisLease, RedisStoreError};
use crate::sync::Mutex;
use serde::{Serialize, de::DeserializeOwned};
use std::collections::HashMap;
use std::hash::Hash;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// First backoff poll while another process fills.
const FIRST_POLL: Duration = Duration::from_millis(25);
/// Longest backoff poll.
const MAX_POLL: Duration = Duration::from_millis(500);

/// The keys this process waits on, each with the `Notify` its waiters sleep on.
#[derive(Default)]
pub(crate) struct Waiters {
    keys: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Waiters {
    /// Registers interest in `key` until the registration is dropped.
    fn register<'a>(&'a self, key: &'a str) -> Registration<'a> {
        let notify = Arc::clone(self.keys.lock().entry(key.to_owned()).or_default());
        Registration {
            waiters: self,
            key,
            notify,
        }
    }

    /// Wakes the waiters of `key`, if any.
    pub(crate) fn wake(&self, key: &str) {
        if let Some(n) = self.keys.lock().get(key) {
            n.notify_waiters();
        }
    }

    /// Wakes every waiter (a flush).
    pub(crate) fn wake_all(&self) {
        for n in self.keys.lock().values() {
            n.notify_waiters();
        }
    }
}

struct Registration<'a> {
    waiters: &'a Waiters,
    key: &'a str,
    notify: Arc<Notify>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut keys = self.waiters.keys.lock();
        // The map's reference and ours: nobody else waits on the key.
        if Arc::strong_count(&self.notify) == 2 {
            keys.remove(self.key);
        }
    }
}

/// The keys whose value Redis did not have at this process's latest read, while this process
/// reloads them from the source or waits for another process's fill: only then may an opt-in
/// read serve the L1 stash's value (see [`TieredCache::get_or_load_allow_stale`]). Without it, an
/// insert (which reaches the L1s as an invalidation, like a purge, and so feeds their stashes)
/// would let an opt-in caller get the value the insert replaced while Redis holds the new one.
/// Kept only when the L1 has a stale grace.
#[derive(Default)]
pub(crate) struct Refilling {
    keys: Mutex<HashMap<String, usize>>,
}

impl Refilling {
    /// Marks `key` as missing in Redis until the guard is dropped.
    pub(crate) fn mark<'a>(&'a self, key: &'a str) -> RefillGuard<'a> {
        *self.keys.lock().entry(key.to_owned()).or_default() += 1;
        RefillGuard {
            refilling: self,
            key,
        }
    }

    /// Whether a caller of this process found `key` missing in Redis and is still refilling it
    /// or waiting for its fill.
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.keys.lock().contains_key(key)
    }
}

/// See [`Refilling::mark`].
pub(crate) struct RefillGuard<'a> {
    refilling: &'a Refilling,
    key: &'a str,
}

impl Drop for RefillGuard<'_> {
    fn drop(&mut self) {
        let mut keys = self.refilling.keys.lock();
        if let Some(n) = keys.get_mut(self.key) {
            *n -= 1;
            if *n == 0 {
                keys.remove(self.key);
            }
        }
    }
}

/// What Redis gave a tiered read, after any wait for another process's fill.
pub(crate) enum Found<V> {
    /// The value and its remaining TTL in Redis.
    Hit(V, Option<Duration>),
    /// This process fills: the lease, and when it was asked for.
    Fill(RedisLease, Instant),
}

/// The value of `key` from Redis, else the fill lease, waiting while another process fills.
pub(crate) async fn lookup<K, V>(
    shared: &Shared<K, V>,
    key: &str,
) -> Result<Found<V>, RedisStoreError>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let registration = shared.fills.register(key);
    let mut nap = FIRST_POLL;
    let mut waited = false;
    // Set while another process fills the key (Redis has no value): see `Refilling`.
    let mut _missing = None;
    loop {
        // Enabled before the read: an announcement published after the script set the waiters
        // flag cannot be missed.
        let mut notified = pin!(registration.notify.notified());
        notified.as_mut().enable();
        let asked = Instant::now();
        let mode = if shared.one_filler {
            FillMode::FillAnnounced
        } else {
            FillMode::Lease
        };
        match shared.l2.lookup_mode(key, None, mode).await? {
            (FillLookup::Hit(value), ttl) => return Ok(Found::Hit(value, ttl)),
            (FillLookup::Fill(lease), _) => {
                if waited {
                    super::bump(&shared.counters.fill_takeovers);
                }
                return Ok(Found::Fill(lease, asked));
            }
            (FillLookup::InProgress { lapses_in }, _) => {
                if !waited {
                    waited = true;
                    super::bump(&shared.counters.fill_waits);
                    if shared.l1.has_stale_grace() {
                        _missing = Some(shared.refilling.mark(key));
                    }
                }
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep(nap.min(lapses_in)) => {}
                }
                nap = (nap * 2).min(MAX_POLL);
            }
        }
    }
}

/// While a key is due and another caller refreshes it, an L1 entry lives at most the refresh
/// window divided by this.
pub(crate) const REFRESH_RETRY: u32 = 8;

/// The loader and refresh lease a read hands back to its caller when it triggered a refresh
/// ahead of expiry: the caller runs the refresh after its flight, so that the flight's other
/// callers get the current value at once.
pub(crate) struct RefreshSlot<F>(Mutex<Option<(F, RedisLease)>>);

impl<F> RefreshSlot<F> {
    pub(crate) fn new() -> Self {
        Self(Mutex::new(None))
    }

    pub(crate) fn put(&self, loader: F, lease: RedisLease) {
        *self.0.lock() = Some((loader, lease));
    }

    pub(crate) fn take(&self) -> Option<(F, RedisLease)> {
        self.0.lock().take()
    }
}

impl<K, V> Shared<K, V>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// With refresh ahead of expiry on: how long until an entry with `remaining` TTL in Redis
    /// is due (zero: due now). `None` if refresh is off, never fires (`refresh_after` at or past
    /// the default TTL), or the entry has no TTL.
    pub(crate) fn refresh_due_in(&self, remaining: Option<Duration>) -> Option<Duration> {
        let window = self.refresh_window();
        if window.is_zero() {
            return None;
        }
        let remaining = remaining?;
        if remaining <= window {
            return Some(Duration::ZERO);
        }
        // Not due: the L1 entry lives until this process's refresh point, the fixed point
        // (`window` before the deadline) or, with XFetch, a point drawn for this fill (a lead
        // of at most `window`): the L1 absorbs the reads in between, so the draw is made once
        // per fill rather than per read, and each process draws its own. The first read that
        // reaches Redis after it is due (`remaining <= window`).
        let window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        let lead = Duration::from_nanos(self.xfetch.lead(window_ns));
        Some(remaining - lead)
    }

    /// How much TTL an entry has left when it becomes due (zero: refresh never fires).
    pub(crate) fn refresh_window(&self) -> Duration {
        self.refresh_after
            .and_then(|after| self.l2.default_ttl().checked_sub(after))
            .unwrap_or(Duration::ZERO)
    }

    /// Runs a refresh this caller's read triggered: reloads under the refresh lease (and an L1
    /// lease taken before the source read), saves to Redis (restarting its TTL), then fills the
    /// L1 if the Redis save landed. Returns the refreshed value, or `current` if the load failed
    /// (the entry keeps its value until its TTL).
    pub(crate) async fn refresh<F, Fut, E>(
        &self,
        key: K,
        loader: F,
        lease: RedisLease,
        current: V,
    ) -> V
    where
        F: FnOnce(K) -> Fut,
        Fut: std::future::Future<Output = Result<V, E>>,
    {
        let l1_lease = self.l1.lease(&key);
        let value = match self.call_loader(key.clone(), loader).await {
            Ok(value) => value,
            Err(_) => {
                super::bump(&self.counters.refresh_failures);
                // Another process may try now rather than when the lease lapses.
                let _ = self.l2.release_fill(&key.to_redis_key(), &lease).await;
                return current;
            }
        };
        match self
            .l2
            .save_refreshed(&key.to_redis_key(), &value, &lease)
            .await
        {
            Ok(crate::redis::Saved::Stored) => {
                self.redis_ok();
                super::bump(&self.counters.refreshes);
                // The lease first, then the bypass check (see `l1_active`).
                if self.l1_active() {
                    let ttl = self.refresh_due_in(Some(self.l2.default_ttl()));
                    let _ = self
                        .l1
                        .save_with_lease_within(key, value.clone(), l1_lease, ttl);
                }
            }
            Ok(_) => {
                // A write fenced the refresh: the value is stored nowhere.
                super::bump(&self.counters.refresh_failures);
                super::bump(&self.counters.l2_stale);
            }
            Err(e) => {
                super::bump(&self.counters.refresh_failures);
                let _ = self.redis_failed(e);
            }
        }
        value
    }
}

impl<K, V> TieredCache<K, V>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// [`get_or_load`](Self::get_or_load) for a caller that tolerates a stale value: an L1 hit
    /// is [`MaybeStale::Fresh`]; on an L1 miss, if the Redis key holds no value, another caller
    /// (of any process) is refilling it, and the purge that replaced its value is younger than
    /// the store's [`stale_grace`](crate::redis::RedisOptions::stale_grace), that replaced value
    /// is returned as [`MaybeStale::Stale`] at once, without loading or waiting. Before asking
    /// Redis it asks the L1's stash, if the L1 has a
    /// [`stale_grace`](crate::CacheBuilder::stale_grace) and a caller of this process reloads
    /// the key after finding no value in Redis (no round trip): an insert reaches the L1s as an
    /// invalidation, as a purge does, and the value it replaced is never served while Redis holds
    /// the new one. Otherwise it is `get_or_load` (`Fresh`). The L1 never caches a
    /// stale value: see the [module docs](crate::tiered#hot-keys-one-filler-per-fleet).
    /// Counted in [`TieredStats::stale_served`](super::TieredStats::stale_served).
    ///
    /// Costs one Redis round trip more than `get_or_load` on an L1 miss that is not served
    /// stale; skipped while the breaker is not closed or the L1 is bypassed (no stale value is
    /// served then). Callers that do not use this method never get a stale value.
    pub async fn get_or_load_allow_stale<F, Fut, E>(
        &self,
        key: K,
        loader: F,
    ) -> Result<MaybeStale<V>, E>
    where
        F: FnOnce(K) -> Fut,
        Fut: std::future::Future<Output = Result<V, E>>,
    {
        let s = &*self.shared;
        if s.l1_active() {
            if let Some(value) = s.l1.get(&key) {
                return Ok(MaybeStale::Fresh(value));
            }
            // This process found the key missing in Redis and reloads it now (an L1 flight),
            // and the L1's stash has the value the latest purge replaced: no round trip (see
            // `crate::stale`). Without the Redis miss the stash may hold a value an insert
            // replaced (see `Refilling`).
            let redis_key = key.to_redis_key();
            let stashed = if s.l1.has_stale_grace() && s.refilling.contains(&redis_key) {
                s.l1.stale_while_loading(&key)
            } else {
                None
            };
            if let Some((value, replaced_ago)) = stashed {
                super::bump(&s.counters.stale_served);
                return Ok(MaybeStale::Stale {
                    value,
                    replaced_ago,
                });
            }
            // Closed breaker only: a probe is for the real read path.
            if s.breaker.state_code() == 0 {
                match s.l2.stale_while_filled(&redis_key).await {
                    Ok(Some((value, replaced_ago))) => {
                        super::bump(&s.counters.stale_served);
                        return Ok(MaybeStale::Stale {
                            value,
                            replaced_ago,
                        });
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = s.redis_failed(e);
                    }
                }
            }
        }
        self.get_or_load(key, loader).await.map(MaybeStale::Fresh)
    }
}
