//! Cache-aside on the tiered cache: [`TieredCache::get_or_lease`] and
//! [`TieredCache::save_with_lease`], the shape of [`Cache`](crate::Cache) and
//! [`RedisStore`](crate::redis::RedisStore), built from the read path of
//! [`get_or_load`](TieredCache::get_or_load) (see the [module docs](super#cache-aside)).

use super::fill::REFRESH_RETRY;
use super::{EncodeKey, FillPoint, Shared, TieredCache, TieredError, TieredKey, bump};
use crate::redis::{RedisLease, RedisStoreError};
use crate::{Lease, Lookup, Saved};
use serde::{Serialize, de::DeserializeOwned};
use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Permission to save one key of a [`TieredCache`] in both tiers, captured by
/// [`TieredCache::get_or_lease`] **before** the caller reads the source; spent by
/// [`TieredCache::save_with_lease`].
///
/// It holds an L1 lease (captured before Redis was read) and, unless the circuit breaker was
/// open, a Redis lease. A purge, insert or flush of the key that completes after it was
/// captured, in this process or in any other process of the namespace, fences it: the save
/// returns [`Saved::Stale`] and stores nothing in either tier.
///
/// A lease taken while the breaker was open holds no Redis lease and *saves nowhere*
/// ([`saves_nowhere`](Self::saves_nowhere)): its save returns [`Saved::Stale`] without
/// contacting Redis, as [`get_or_load`](TieredCache::get_or_load) caches nothing while Redis is
/// unreachable.
///
/// Dropping a lease unused is fine: it holds nothing in Redis but a marker that lapses.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TieredLease {
    l1: Lease,
    /// `None` while the breaker was open: nothing may be saved.
    redis: Option<RedisLease>,
    /// Whether the L1 was in use right after `l1` was captured (see `Shared::l1_active`).
    fill: bool,
    /// When the Redis lease was asked for: a save past the maximum lease age is refused here.
    asked: Instant,
}

impl TieredLease {
    /// Whether this lease was taken while the circuit breaker was open: its save stores nothing
    /// and returns [`Saved::Stale`].
    pub fn saves_nowhere(&self) -> bool {
        self.redis.is_none()
    }
}

impl fmt::Debug for TieredLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The Redis lease's proof is a bearer credential: its own `Debug` leaves it out.
        f.debug_struct("TieredLease")
            .field("redis", &self.redis)
            .field("fills_l1", &self.fill)
            .finish_non_exhaustive()
    }
}

impl<K, V> TieredCache<K, V>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Cache-aside, as [`Cache::get_or_lease`](crate::Cache::get_or_lease) and
    /// [`RedisStore::get_or_lease`](crate::redis::RedisStore::get_or_lease): the value of `key`
    /// from the L1 or, on an L1 miss, from Redis (filling the L1 as [`get`](Self::get) does);
    /// else [`Lookup::Miss`] with a [`TieredLease`] to read the source under and pass to
    /// [`save_with_lease`](Self::save_with_lease).
    ///
    /// The L1 lease is captured before the Redis read, and the Redis lease by the Redis read
    /// itself (one round trip). Not single-flight, and no fill lease: every caller that misses
    /// gets its own lease and reads the source (use [`get_or_load`](Self::get_or_load) for one
    /// source read per process, or per fleet).
    ///
    /// While the circuit breaker is open it does not try Redis: it returns a `Miss` whose lease
    /// [saves nowhere](TieredLease::saves_nowhere), so the same code reads the source and goes
    /// on, and nothing is cached until Redis is back.
    ///
    /// Errors: [`TieredError::Redis`] if the Redis read failed (counted by the breaker), as from
    /// [`get`](Self::get) and `RedisStore::get_or_lease`.
    ///
    /// Counted in [`TieredStats`](super::TieredStats) like a read through `get_or_load`: a hit
    /// in `l1_hits` or `l2_hits`, a miss in `loads` (the caller reads the source), so
    /// [`hit_ratio`](super::TieredStats::hit_ratio) covers both styles.
    ///
    /// ```no_run
    /// use leasecache::{Cache, Lookup, Saved};
    /// use leasecache::redis::{RedisOptions, RedisStore};
    /// use leasecache::tiered::TieredCache;
    ///
    /// # async fn read_row(id: u64) -> String { format!("row {id}") }
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let l2 = RedisStore::<String>::connect_lazy("redis://127.0.0.1/", RedisOptions::new("users"))?;
    /// let cache: TieredCache<u64, String> = TieredCache::new(Cache::new(10_000), l2)?;
    ///
    /// let row = match cache.get_or_lease(&7).await? {
    ///     Lookup::Hit(row) => row,
    ///     Lookup::Miss(lease) => {
    ///         let row = read_row(7).await; // the database
    ///         match cache.save_with_lease(7, &row, lease).await? {
    ///             Saved::Stored => {}
    ///             Saved::Stale => {} // a write overlapped this read: served, not cached
    ///         }
    ///         row
    ///     }
    /// };
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_or_lease<Q>(&self, key: &Q) -> Result<Lookup<V, TieredLease>, TieredError>
    where
        K: Borrow<Q>,
        Q: EncodeKey + Hash + Eq + ?Sized,
    {
        let s = &*self.shared;
        if s.l1_active() {
            if let Some(value) = s.l1.get(key) {
                return Ok(Lookup::Hit(value));
            }
        }
        // The lease first, then the bypass check, then the Redis read (see `l1_active`).
        let l1 = s.l1.lease(key);
        let fill = s.l1_active();
        if !fill {
            bump(&s.counters.bypassed_reads);
        }
        let asked = Instant::now();
        if !s.breaker.permit() {
            // The caller reads the source: a load, as far as `TieredStats` is concerned.
            bump(&s.counters.loads);
            return Ok(Lookup::Miss(TieredLease {
                l1,
                redis: None,
                fill: false,
                asked,
            }));
        }
        let redis_key = key.to_redis_key();
        match s.l2.get_or_lease_ttl(&redis_key).await {
            Ok((Lookup::Hit(value), ttl)) => {
                s.redis_ok();
                bump(&s.counters.l2_hits);
                // A key that does not decode (a broken `TieredKey`) is served, never cached.
                if let (true, Some(key)) = (fill, K::from_redis_key(&redis_key)) {
                    s.run_hook(FillPoint::RedisHit, &key).await;
                    // Rejected if a write fenced the lease meanwhile: still this read's answer,
                    // but not cached. The L1 entry dies no later than the Redis entry (or its
                    // refresh point).
                    let _ =
                        s.l1.save_with_lease_within(key, value.clone(), l1, s.l1_ttl(ttl));
                }
                Ok(Lookup::Hit(value))
            }
            Ok((Lookup::Miss(redis), _)) => {
                s.redis_ok();
                bump(&s.counters.loads);
                Ok(Lookup::Miss(TieredLease {
                    l1,
                    redis: Some(redis),
                    fill,
                    asked,
                }))
            }
            Err(e) => Err(s.redis_failed(e)),
        }
    }

    /// Cache-aside, as [`Cache::save_with_lease`](crate::Cache::save_with_lease) and
    /// [`RedisStore::save_with_lease`](crate::redis::RedisStore::save_with_lease): saves `value`
    /// for `key` under `lease` (from [`get_or_lease`](Self::get_or_lease)) in Redis first,
    /// then in this L1 only if the Redis save landed and the L1 was in use when the lease was
    /// captured. The L1 entry lives at most the Redis entry's TTL (or until its refresh point).
    ///
    /// [`Saved::Stored`]: Redis stored the value (the L1 fill may still be refused, by a write
    /// of this key that reached this process after the Redis save: the next read fills it from
    /// Redis). [`Saved::Stale`], storing nothing in either tier: a purge, insert or flush of the
    /// key completed after the lease was captured (in any process of the namespace), the load
    /// outlived the store's maximum lease age, or the lease [saves nowhere](TieredLease::saves_nowhere)
    /// (the breaker was open). Serve the value to this caller, or read again.
    ///
    /// Errors, storing nothing in either tier: [`TieredError::Redis`] if the save failed (counted
    /// by the breaker when transient), the value cannot be encoded or is too large for the store
    /// ([`RedisStoreError::TooLarge`]), or the lease is another key's
    /// ([`RedisStoreError::ForeignLease`]).
    pub async fn save_with_lease(
        &self,
        key: K,
        value: &V,
        lease: TieredLease,
    ) -> Result<Saved, TieredError> {
        let s = &*self.shared;
        let Some(redis) = lease.redis else {
            return Ok(Saved::Stale);
        };
        let redis_key = key.to_redis_key();
        if lease.asked.elapsed() > s.max_lease_age {
            // Redis would refuse it too; this saves the round trip.
            bump(&s.counters.expired_leases);
            return Ok(Saved::Stale);
        }
        match s.l2.save_with_lease(&redis_key, value, &redis).await {
            Ok(Saved::Stored) => {
                s.redis_ok();
                if lease.fill {
                    s.run_hook(FillPoint::RedisSaved, &key).await;
                    let ttl = s.l1_ttl(Some(s.l2.default_ttl()));
                    // Refused if a write of the key reached this process since the lease was
                    // captured: counted as an L1 stale rejection, and Redis serves the next read.
                    let _ =
                        s.l1.save_with_lease_within(key, value.clone(), lease.l1, ttl);
                }
                Ok(Saved::Stored)
            }
            Ok(Saved::Stale) => {
                bump(&s.counters.l2_stale);
                Ok(Saved::Stale)
            }
            // Refused before anything was sent: not a Redis failure.
            Err(
                e @ (RedisStoreError::ForeignLease
                | RedisStoreError::InvalidLease(_)
                | RedisStoreError::TooLarge { .. }
                | RedisStoreError::Encode(_)),
            ) => Err(TieredError::Redis(e)),
            Err(e) => Err(s.redis_failed(e)),
        }
    }
}

impl<K, V> Shared<K, V>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// How long an L1 fill of an entry with `ttl` left in Redis may live: until the Redis entry
    /// expires or (with refresh ahead of expiry) is due; an entry due already lives an eighth of
    /// the refresh window, as on `get_or_load`'s read path, so that a read asks again soon.
    fn l1_ttl(&self, ttl: Option<Duration>) -> Option<Duration> {
        match self.refresh_due_in(ttl) {
            Some(Duration::ZERO) => ttl.map(|left| left.min(self.refresh_window() / REFRESH_RETRY)),
            Some(due_in) => Some(due_in),
            None => ttl,
        }
    }
}
