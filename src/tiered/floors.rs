//! Hold-offs, source positions and write intents on the tiered cache: each write raises the
//! floors in Redis (which every process's fills go through) and in this process's L1.
//!
//! Other processes learn the write through the invalidation feed as a plain purge of their L1.
//! That is enough: an L1 is filled only with a value Redis held (current, since Redis refuses
//! saves below its floors) or after a save to Redis landed, so Redis's floors guard every L1.

use std::borrow::Borrow;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{EncodeKey, Shared, TieredCache, TieredError, TieredKey, bump};
use crate::Lookup;
use crate::floors::Raise;
use crate::redis::{RedisWriteIntent, Saved};

impl<K, V> TieredCache<K, V>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// [`purge`](Self::purge) with a hold-off, in Redis
    /// ([`RedisStore::purge_with_hold_off`](crate::redis::RedisStore::purge_with_hold_off)) and in
    /// this L1 ([`Cache::purge_with_hold_off`](crate::Cache::purge_with_hold_off)). Other
    /// processes purge their L1 when the invalidation reaches them; Redis's hold-off refuses
    /// their loads' saves, so their L1s are never filled with what those loads read.
    pub async fn purge_with_hold_off<Q>(
        &self,
        key: &Q,
        hold_off: Duration,
    ) -> Result<bool, TieredError>
    where
        K: Borrow<Q>,
        Q: EncodeKey + Hash + Eq + ?Sized,
    {
        let redis_key = key.to_redis_key();
        self.write_key(
            &redis_key,
            self.shared.l2.purge_with_hold_off(&redis_key, hold_off),
            |s| {
                s.l1.purge_with_hold_off(key, hold_off);
            },
        )
        .await
    }

    /// [`purge`](Self::purge) "as of" a source position, in Redis and in this L1 (see
    /// [`Cache::purge_as_of`](crate::Cache::purge_as_of)).
    pub async fn purge_as_of<Q>(&self, key: &Q, position: u64) -> Result<bool, TieredError>
    where
        K: Borrow<Q>,
        Q: EncodeKey + Hash + Eq + ?Sized,
    {
        let redis_key = key.to_redis_key();
        let l2 = self.shared.l2.purge_as_of(&redis_key, position);
        self.write_key(&redis_key, l2, |s| {
            s.l1.purge_as_of(key, position);
        })
        .await
    }

    /// [`get_or_load`](Self::get_or_load) for a loader that also returns the source position it
    /// read at: the value is saved to Redis with
    /// [`save_as_of`](crate::redis::RedisStore::save_as_of), and to this L1 (as of the same
    /// position) only if the Redis save landed. Not single-flight: each caller that misses both
    /// tiers calls its loader. Redis failures never fail this call; only the loader's error is
    /// returned.
    pub async fn get_or_load_as_of<F, Fut, E>(&self, key: K, loader: F) -> Result<V, E>
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<(V, u64), E>>,
    {
        let s = &*self.shared;
        if s.l1_active() {
            if let Some(value) = s.l1.get(&key) {
                return Ok(value);
            }
        }
        // The L1 lease before the bypass check and the Redis read (see `TieredCache::get`).
        let l1_lease = s.l1.lease(&key);
        let fill = s.l1_active();
        if !fill {
            bump(&s.counters.bypassed_reads);
        }
        if !s.breaker.permit() {
            bump(&s.counters.loads);
            return loader(key).await.map(|(value, _)| value);
        }
        let redis_key = key.to_redis_key().into_owned();
        match s.l2.get_or_lease_ttl(&redis_key).await {
            Ok((Lookup::Hit(value), ttl)) => {
                s.redis_ok();
                bump(&s.counters.l2_hits);
                if fill {
                    // The L1 entry dies no later than the Redis entry.
                    let _ =
                        s.l1.save_with_lease_within(key, value.clone(), l1_lease, ttl);
                }
                Ok(value)
            }
            Ok((Lookup::Miss(lease), _)) => {
                s.redis_ok();
                bump(&s.counters.loads);
                let (value, position) = loader(key.clone()).await?;
                match s.l2.save_as_of(&redis_key, &value, &lease, position).await {
                    Ok(Saved::Stored) => {
                        s.redis_ok();
                        if fill {
                            let ttl = Some(s.l2.default_ttl());
                            let _ =
                                s.l1.save_inner(key, value.clone(), l1_lease, Some(position), ttl);
                        }
                    }
                    Ok(Saved::Stale) => bump(&s.counters.l2_stale),
                    Err(e) => {
                        s.redis_failed(e);
                    }
                }
                Ok(value)
            }
            Err(e) => {
                s.redis_failed(e);
                bump(&s.counters.loads);
                loader(key).await.map(|(value, _)| value)
            }
        }
    }

    /// Opens a write intent on `key` in Redis
    /// ([`RedisStore::begin_write`](crate::redis::RedisStore::begin_write), which lapses if this
    /// process dies) and in this L1. Saves to `key` are refused in every process until it ends.
    ///
    /// The intent keeps its own `K`, decoded from the Redis key: a key whose
    /// [`TieredKey::from_redis_key`] does not invert its encoding is refused before anything is
    /// sent ([`TieredError::Redis`] of
    /// [`RedisStoreError::InvalidInput`](crate::redis::RedisStoreError::InvalidInput)).
    pub async fn begin_write<Q>(&self, key: &Q) -> Result<TieredWriteIntent<K, V>, TieredError>
    where
        K: Borrow<Q>,
        Q: EncodeKey + Hash + Eq + ?Sized,
    {
        let redis_key = key.to_redis_key().into_owned();
        let Some(l1_key) = K::from_redis_key(&redis_key) else {
            return Err(TieredError::Redis(
                crate::redis::RedisStoreError::InvalidInput(format!(
                    "key {redis_key:?} does not decode as the cache's key type"
                )),
            ));
        };
        let l2 = self
            .write_key(&redis_key, self.shared.l2.begin_write(&redis_key), |s| {
                s.l1.intent_write(key, Raise::default(), true);
            })
            .await;
        match l2 {
            Ok(l2) => Ok(TieredWriteIntent {
                shared: Arc::clone(&self.shared),
                l2: Some(l2),
                key: l1_key,
                redis_key,
                l1_open: true,
            }),
            Err(e) => {
                // The L1 intent was opened whatever Redis answered: close it again.
                self.shared.l1.intent_write(key, Raise::default(), false);
                Err(e)
            }
        }
    }
}

/// An open write intent on one key of a [`TieredCache`], from [`TieredCache::begin_write`].
/// Dropping it without ending it closes the L1 side at once and lets the Redis side lapse.
#[must_use = "an intent left alone refuses saves to its key until it lapses"]
pub struct TieredWriteIntent<K, V>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    shared: Arc<Shared<K, V>>,
    l2: Option<RedisWriteIntent<V>>,
    key: K,
    redis_key: String,
    l1_open: bool,
}

impl<K, V> TieredWriteIntent<K, V>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Ends the intent after the source committed, in Redis and then in this L1 (each fences
    /// the key again and applies its default hold-off).
    pub async fn commit(self) -> Result<bool, TieredError> {
        self.end(true, None).await
    }

    /// [`commit`](Self::commit) "as of" the commit's source position.
    pub async fn commit_as_of(self, position: u64) -> Result<bool, TieredError> {
        self.end(true, Some(position)).await
    }

    /// Ends the intent after the source rolled back (fences, no hold-off).
    pub async fn rollback(self) -> Result<bool, TieredError> {
        self.end(false, None).await
    }

    async fn end(mut self, commit: bool, position: Option<u64>) -> Result<bool, TieredError> {
        let l2 = self.l2.take();
        let result = match (l2, commit, position) {
            (Some(i), true, Some(p)) => i.commit_as_of(p).await,
            (Some(i), true, None) => i.commit().await,
            (Some(i), false, _) => i.rollback().await,
            (None, _, _) => Ok(false),
        };
        let hold_off = if commit {
            self.shared.l1.default_hold_off()
        } else {
            None
        };
        self.close_l1(Raise { hold_off, position });
        let s = &*self.shared;
        match result {
            Ok(removed) => {
                s.redis_ok();
                s.cohere(&crate::redis::Invalidation::key_payload(&self.redis_key))
                    .await?;
                Ok(removed)
            }
            Err(e) => Err(s.write_failed(e, super::pending::Op::Purge(self.redis_key.clone()))),
        }
    }

    fn close_l1(&mut self, raise: Raise) {
        if std::mem::take(&mut self.l1_open) {
            self.shared.l1.intent_write(&self.key, raise, false);
        }
    }
}

impl<K, V> Drop for TieredWriteIntent<K, V>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn drop(&mut self) {
        // Dropped without an end: close the L1 side (as a commit would, without a position); the
        // Redis side lapses at its deadline.
        let hold_off = self.shared.l1.default_hold_off();
        self.close_l1(Raise {
            hold_off,
            position: None,
        });
    }
}

impl<K, V> std::fmt::Debug for TieredWriteIntent<K, V>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredWriteIntent")
            .field("key", &self.redis_key)
            .finish_non_exhaustive()
    }
}
