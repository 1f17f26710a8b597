//! Hold-offs, source positions and write intents on Redis: the floors of the in-process cache
//! (see `crate::floors`), kept in the key's hash beside the marker, in the reserved field `!f`,
//! and checked by the save script in the same atomic step as the marker.
//!
//! - A hold-off is a deadline on the **server's** clock (`TIME`, microseconds); a lease records
//!   when the server issued it, and a save under a lease issued before the deadline is refused.
//! - A position floor is the highest position the key was purged "as of", written as 20 decimal
//!   digits so that the script compares `u64`s exactly (Lua numbers are doubles).
//! - An intent is a count of open intents and the latest of their deadlines (now plus
//!   [`RedisOptions::intent_ttl`](super::RedisOptions::intent_ttl)). While it counts any open,
//!   a save under a lease issued before that deadline is refused; ending an intent fences the key
//!   (new marker) and counts it down. An intent whose writer crashed is never ended: it stops
//!   refusing at its deadline, and leases issued while it was open stay refused (they were issued
//!   before the deadline), so no value read inside the transaction is ever cached.
//!
//! Every write keeps the floors (purge, insert and `flush` carry `!f` over), and the hash lives at
//! least the maximum lease age after a floor was raised, and until its hold-off and open intents'
//! deadlines pass. Floors are raised with a maximum, never lowered. The guarantees, and the one
//! difference from the in-process cache: a floor lost with its hash (TTL, eviction, `FLUSHALL`,
//! restart, failover) no longer refuses saves under leases issued *after* the loss; leases issued
//! before it are refused anyway (their marker is gone too). So a position floor covers readers
//! whose source lags a write by less than the maximum lease age.

use std::time::Duration;

use redis::Value;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Invalidation, RedisLease, RedisStore, RedisStoreError, Saved, int_reply, options};

/// A position as the scripts compare it: 20 decimal digits, so string order is numeric order.
pub(super) fn position_arg(position: u64) -> String {
    format!("{position:020}")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// What one run of the floors script does besides fencing.
#[derive(Clone, Copy)]
enum Mode<'a> {
    Purge,
    Insert { value: &'a [u8], ttl_ms: u64 },
    Begin,
    End,
}

impl<V: Serialize + DeserializeOwned + Send + Sync + 'static> RedisStore<V> {
    /// One fencing write of `key` that raises its floors; returns whether a value or sub-entry
    /// was removed.
    async fn write_floors(
        &self,
        key: &str,
        mode: Mode<'_>,
        hold_off: Option<Duration>,
        position: Option<u64>,
    ) -> Result<bool, RedisStoreError> {
        let inner = &self.inner;
        let (name, value, ttl_ms): (&[u8], &[u8], u64) = match mode {
            Mode::Purge => (b"purge", b"", 0),
            Mode::Insert { value, ttl_ms } => (b"insert", value, ttl_ms),
            Mode::Begin => (b"begin", b"", 0),
            Mode::End => (b"end", b"", 0),
        };
        let hold_off = hold_off.map_or(0, micros).to_string();
        let position = position.map_or_else(String::new, position_arg);
        let intent_us = micros(inner.intent_ttl).to_string();
        let keep_ms = options::millis(inner.max_lease_age).to_string();
        let payload = Invalidation::key_payload(key);
        let ttl = ttl_ms.to_string();
        let grace = inner.stale_grace_ms_arg();
        let args: [&[u8]; 10] = [
            name,
            hold_off.as_bytes(),
            position.as_bytes(),
            intent_us.as_bytes(),
            keep_ms.as_bytes(),
            self.broadcast_channel(),
            &payload,
            value,
            ttl.as_bytes(),
            grace.as_bytes(),
        ];
        let k = self.redis_key(key);
        let reply: Value = inner
            .conn
            .eval(&inner.scripts.floors, &[&k[..]], &args, inner.timeout)
            .await?;
        Ok(int_reply(&reply)? == 1)
    }

    /// `insert` with the store's default hold-off.
    pub(super) async fn insert_holding_off(
        &self,
        key: &str,
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<(), RedisStoreError> {
        let mode = Mode::Insert { value, ttl_ms };
        self.write_floors(key, mode, self.inner.hold_off, None)
            .await
            .map(drop)
    }

    /// [`purge`](Self::purge) followed by a hold-off: saves under leases the server issues before
    /// `hold_off` has passed (on its clock) are refused, however fresh the lease. Never shortens
    /// a hold-off in force. Returns whether a value or sub-entry was removed.
    pub async fn purge_with_hold_off(
        &self,
        key: &str,
        hold_off: Duration,
    ) -> Result<bool, RedisStoreError> {
        options::check_ttl("hold_off", hold_off).map_err(RedisStoreError::InvalidInput)?;
        self.write_floors(key, Mode::Purge, Some(hold_off), None)
            .await
    }

    /// [`purge`](Self::purge) "as of" source position `position` (see
    /// [`Cache::purge_as_of`](crate::Cache::purge_as_of)): a later
    /// [`save_as_of`](Self::save_as_of) at a lower position is refused. Applies the store's
    /// default hold-off too.
    pub async fn purge_as_of(&self, key: &str, position: u64) -> Result<bool, RedisStoreError> {
        self.write_floors(key, Mode::Purge, self.inner.hold_off, Some(position))
            .await
    }

    /// [`save_with_lease`](Self::save_with_lease) of a value read at source position `position`:
    /// [`Saved::Stale`] if `position` is below the key's position floor, even under a current
    /// lease.
    pub async fn save_as_of(
        &self,
        key: &str,
        value: &V,
        lease: &RedisLease,
        position: u64,
    ) -> Result<Saved, RedisStoreError> {
        self.save(key, None, value, lease, Some(position)).await
    }

    /// Opens a write intent on `key` (see [`Cache::begin_write`](crate::Cache::begin_write)):
    /// fences the key, and refuses every save to it until the intent ends (then fences again) or,
    /// if its writer never ends it, until [`RedisOptions::intent_ttl`](super::RedisOptions::intent_ttl)
    /// has passed. End it with [`RedisWriteIntent::commit`] or [`RedisWriteIntent::rollback`];
    /// dropping it sends nothing (the intent then lapses at its deadline).
    pub async fn begin_write(&self, key: &str) -> Result<RedisWriteIntent<V>, RedisStoreError> {
        self.write_floors(key, Mode::Begin, None, None).await?;
        Ok(RedisWriteIntent {
            store: self.clone(),
            key: key.to_owned(),
        })
    }
}

/// An open write intent on one key of a [`RedisStore`], from [`RedisStore::begin_write`].
#[must_use = "an intent left alone refuses saves to its key until it lapses"]
#[derive(Debug)]
pub struct RedisWriteIntent<V> {
    store: RedisStore<V>,
    key: String,
}

impl<V: Serialize + DeserializeOwned + Send + Sync + 'static> RedisWriteIntent<V> {
    /// The key the intent is on.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Ends the intent after the source committed: fences the key, applies the store's default
    /// hold-off and counts the intent down. Returns whether a value or sub-entry was removed.
    pub async fn commit(self) -> Result<bool, RedisStoreError> {
        let hold_off = self.store.inner.hold_off;
        self.store
            .write_floors(&self.key, Mode::End, hold_off, None)
            .await
    }

    /// [`commit`](Self::commit) "as of" the commit's source position.
    pub async fn commit_as_of(self, position: u64) -> Result<bool, RedisStoreError> {
        let hold_off = self.store.inner.hold_off;
        self.store
            .write_floors(&self.key, Mode::End, hold_off, Some(position))
            .await
    }

    /// Ends the intent after the source rolled back: fences the key, no hold-off.
    pub async fn rollback(self) -> Result<bool, RedisStoreError> {
        self.store
            .write_floors(&self.key, Mode::End, None, None)
            .await
    }
}
