//! One filler per key across processes: the fill lease and the "fill in progress" outcome.
//!
//! [`RedisStore::get_or_fill`] hands the lease of a missing key to one caller at a time, the
//! *filler*; every other caller learns that a fill is in progress ([`FillLookup::InProgress`])
//! until the filler saves, gives the fill up ([`RedisStore::release_fill`]), a write fences it,
//! or its lease lapses ([`max_lease_age`](super::RedisOptions::max_lease_age) after it was
//! issued: a filler that died is replaced then). The fill lease is an ordinary [`RedisLease`]
//! with every guarantee of one: a purge, insert or flush during the fill fences it (its save is
//! [`Stale`](super::Saved::Stale)) and ends the fill, so the next caller starts a fresh one.
//!
//! The filler is recorded inside the key's marker field, so whatever deletes the marker (every
//! fencing write, TTL, eviction, `FLUSHALL`) ends the fill too; nothing else is stored.
//!
//! [`get_or_lease`](RedisStore::get_or_lease) is unchanged: it hands every caller a lease and
//! never reports a fill in progress (its lease is not recorded as the filler's, but its save
//! ends a fill in progress like any save: the value is there).
//!
//! # Announcements
//!
//! A waiter that listens to the store's [invalidation
//! channel](RedisStore::invalidation_channel) (a [`TieredCache`](crate::tiered::TieredCache)
//! does) asks for the fill's end to be announced: the script then sets a *waiters* flag, and the
//! save (or release) that ends a flagged fill publishes `b"W" + key` on the channel, once. A
//! fill nobody waits for publishes nothing. [`Invalidation::parse`](super::Invalidation::parse)
//! returns `None` for it: it invalidates nothing. An announcement is a hint to read again,
//! never a value: a purge may come between it and the read.
//!
//! # Stale grace (opt-in)
//!
//! With [`RedisOptions::stale_grace`](super::RedisOptions::stale_grace) set, a purge that finds
//! a value keeps a copy of it in the reserved field `!s`, stamped with the purge's server time,
//! for the grace. A caller that opts in ([`RedisStore::get_or_fill_allow_stale`],
//! [`TieredCache::get_or_load_allow_stale`](crate::tiered::TieredCache::get_or_load_allow_stale))
//! and finds the key empty while **another** caller fills it gets that copy as
//! [`MaybeStale::Stale`] instead of [`FillLookup::InProgress`], without waiting. Precisely:
//!
//! - Only the opt-in methods ever return it, always as [`MaybeStale::Stale`]; every other read
//!   ([`get`](RedisStore::get), [`get_or_lease`](RedisStore::get_or_lease),
//!   [`get_or_fill`](RedisStore::get_or_fill), the tiered reads) ignores `!s`.
//! - It is the value the **latest** purge replaced: a purge that finds no value (the key was
//!   already purged, expired or never filled) drops any older copy, and so do `insert` and
//!   `flush`; a save of the key's value drops it (the key is current again). Hold-off and
//!   position purges keep it like plain ones; write intents, `purge_field` and sub-entries
//!   do not touch it.
//! - It is served only while that purge is younger than the reader's grace, by the server's
//!   clock ([`MaybeStale::Stale::replaced_ago`] says how old), only while the key holds no value
//!   and another caller's fill lease is live. The caller that gets the fill lease gets no stale
//!   value: it must load. With no filler, an opt-in caller becomes the filler.
//! - The copy lives in the key's hash for the grace (or as long as the key's floors), then
//!   expires with it; it is never counted as data by purges.
//!
//! Memory: each purge of a present value keeps its copy for the grace. Set the grace shorter
//! than the time a reload may take to matter, such as a few seconds.

use std::sync::LazyLock;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use redis::Value;

use super::conn::Script;
use super::{RedisLease, RedisStore, RedisStoreError, VALUE_FIELD, int_reply};

/// What [`RedisStore::get_or_fill`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FillLookup<V> {
    /// The key is cached; here is its value.
    Hit(V),
    /// The key is not cached and this caller is its filler: read the source, then save under
    /// this lease (or [release](RedisStore::release_fill) it if the read failed).
    Fill(RedisLease),
    /// Another caller is filling the key. Read again when it is done: after an announcement
    /// (see the [module docs](self)) or after a backoff, and no later than `lapses_in`, when the
    /// filler's lease lapses and the next caller takes the fill over.
    InProgress {
        /// How long the current filler's lease has left (rounded up to a millisecond).
        lapses_in: Duration,
    },
}

/// Re-exported from the crate root ([`crate::MaybeStale`]), where the L1's opt-in reads use it
/// too; `leasecache::redis::MaybeStale` stays for existing code.
pub use crate::stale::MaybeStale;

/// How `get_or_lease.lua` hands out leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FillMode {
    /// Every caller gets a lease (plain `get_or_lease`).
    Lease,
    /// One filler at a time; the others get "fill in progress".
    Fill,
    /// As `Fill`, and the fill's end is announced on the invalidation channel.
    FillAnnounced,
    /// As `Fill`, and while another caller fills, the stale grace value if there is one.
    FillAllowStale,
}

impl FillMode {
    pub(crate) fn arg(self) -> &'static [u8] {
        match self {
            Self::Lease => b"0",
            Self::Fill | Self::FillAllowStale => b"1",
            Self::FillAnnounced => b"2",
        }
    }
}

/// The announcement of the end of a fill of `key`.
pub(crate) fn announcement(key: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(key.len() + 1);
    p.push(b'W');
    p.extend_from_slice(key.as_bytes());
    p
}

/// The key of a fill announcement (`None` if `payload` is not one).
pub(crate) fn announced_key(payload: &[u8]) -> Option<&str> {
    std::str::from_utf8(payload.strip_prefix(b"W")?).ok()
}

static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("release_fill.lua")));
static STALE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("stale.lua")));

impl<V: Serialize + DeserializeOwned + Send + Sync + 'static> RedisStore<V> {
    /// The key's value if cached; else, if no other caller is filling it, a lease that makes
    /// this caller its filler; else [`FillLookup::InProgress`]. One round trip. See the [module
    /// docs](self) for what ends a fill.
    ///
    /// Use it instead of [`get_or_lease`](Self::get_or_lease) for hot keys read by many
    /// processes: a purge then costs one source read instead of one per process that missed.
    pub async fn get_or_fill(&self, key: &str) -> Result<FillLookup<V>, RedisStoreError> {
        Ok(self.lookup_mode(key, None, FillMode::Fill).await?.0)
    }

    /// [`get_or_fill`](Self::get_or_fill) for a caller that tolerates a stale value: while
    /// another caller fills the key, the value its latest purge replaced, if that purge is
    /// younger than [`stale_grace`](super::RedisOptions::stale_grace), as
    /// [`FillLookup::Hit`]`(`[`MaybeStale::Stale`]`)`; a cached value is
    /// `Hit(`[`MaybeStale::Fresh`]`)`; otherwise as `get_or_fill` (this caller fills, or
    /// waits). One round trip. See the [module docs](self), *Stale grace*. Without a stale
    /// grace it never returns a stale value.
    pub async fn get_or_fill_allow_stale(
        &self,
        key: &str,
    ) -> Result<FillLookup<MaybeStale<V>>, RedisStoreError> {
        Ok(self
            .lookup_maybe_stale(key, None, FillMode::FillAllowStale)
            .await?
            .0)
    }

    /// The stale grace value of `key` if the key holds no value, another caller fills it and
    /// the grace holds; takes no lease and changes nothing. For the tiered cache's opt-in read.
    pub(crate) async fn stale_while_filled(
        &self,
        key: &str,
    ) -> Result<Option<(V, Duration)>, RedisStoreError> {
        let Some(grace) = self.inner.stale_grace else {
            return Ok(None);
        };
        let grace = u64::try_from(grace.as_micros())
            .unwrap_or(u64::MAX)
            .to_string();
        let lease_ms = super::options::millis(self.inner.max_lease_age).to_string();
        let limit = self.stored_limit().to_string();
        let args: [&[u8]; 3] = [grace.as_bytes(), lease_ms.as_bytes(), limit.as_bytes()];
        let k = self.redis_key(key);
        let reply = self.eval_keys(&STALE, &[&k[..]], &args).await?;
        match &reply {
            Value::Array(items) => match items.as_slice() {
                [Value::Int(0)] => Ok(None),
                [Value::Int(1), v, ago] => match self.decode(super::bytes_of(v)?) {
                    Ok(value) => Ok(Some((value, Duration::from_micros(super::u64_of(ago)?)))),
                    Err(_) => {
                        self.count_unreadable();
                        Ok(None)
                    }
                },
                _ => Err(super::protocol("stale", &reply)),
            },
            _ => Err(super::protocol("stale", &reply)),
        }
    }

    /// Refresh ahead of expiry: the key's fill lease, over its present value, if the key is
    /// due (has at most `due_within` of its TTL left in Redis, checked in the script: another
    /// caller may have refreshed it since it was read) and nobody else fills it; else `None`.
    /// One round trip; reads no value.
    ///
    /// For direct users of the store (a [`TieredCache`](crate::tiered::TieredCache) does this
    /// itself with [`TieredBuilder::refresh_after`](crate::tiered::TieredBuilder::refresh_after)):
    /// call it after a hit on a hot key (for instance on one read in N, or when the value's own
    /// age says so) with `due_within` = TTL − refresh point. With `Some(lease)` this caller
    /// reloads the source and saves with [`save_refreshed`](Self::save_refreshed) (or
    /// [`release_fill`](Self::release_fill) if the load failed: the value stays until its TTL);
    /// every other caller keeps reading the current value meanwhile and gets `None` here. A
    /// purge, insert or flush during the refresh fences the lease like any other: its save is
    /// [`Stale`](super::Saved::Stale). On a key that is absent, the lease is a plain fill.
    pub async fn refresh_lease(
        &self,
        key: &str,
        due_within: Duration,
    ) -> Result<Option<RedisLease>, RedisStoreError> {
        let raw = self
            .lookup_raw_due(key, None, true, FillMode::Fill, Some(due_within))
            .await?;
        match raw {
            super::RawLookup::Miss { lease, .. } => Ok(Some(lease)),
            super::RawLookup::Busy { .. }
            | super::RawLookup::Stale { .. }
            | super::RawLookup::NotDue => Ok(None),
            super::RawLookup::Hit { .. } => Err(RedisStoreError::Protocol(
                "get_or_lease returned a value when told to skip it".into(),
            )),
        }
    }

    /// Saves a refreshed value under a [`refresh_lease`](Self::refresh_lease): as
    /// [`save_with_lease`](Self::save_with_lease), and the key's TTL starts again (if the value
    /// is the key's only entry: sub-entries never outlive their TTL).
    pub async fn save_refreshed(
        &self,
        key: &str,
        value: &V,
        lease: &RedisLease,
    ) -> Result<super::Saved, RedisStoreError> {
        self.save_as(key, None, value, lease, None, true).await
    }

    /// Gives up the fill that `lease` (from [`get_or_fill`](Self::get_or_fill)) holds on `key`,
    /// so that the next caller takes it over at once instead of when the lease lapses; call it
    /// when reading the source failed. Returns whether `lease` was the filler's (`false` if the
    /// fill had already ended: saved, fenced, lapsed or taken over). The lease itself stays
    /// usable until a write fences it.
    pub async fn release_fill(
        &self,
        key: &str,
        lease: &RedisLease,
    ) -> Result<bool, RedisStoreError> {
        if !lease.is_for(&self.inner.namespace, key, None) {
            return Err(RedisStoreError::ForeignLease);
        }
        let (s, us) = lease.issued();
        let (s, us) = (s.to_string(), us.to_string());
        let announce = announcement(key);
        let args: [&[u8]; 6] = [
            VALUE_FIELD.as_bytes(),
            lease.generation().as_bytes(),
            s.as_bytes(),
            us.as_bytes(),
            self.inner.channel.as_bytes(),
            &announce,
        ];
        let k = self.redis_key(key);
        let reply = self.eval_keys(&RELEASE, &[&k[..]], &args).await?;
        Ok(int_reply(&reply)? == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip_and_are_not_invalidations() {
        let p = announcement("user:1");
        assert_eq!(announced_key(&p), Some("user:1"));
        assert_eq!(announced_key(b"Kuser:1"), None);
        assert_eq!(super::super::Invalidation::parse(&p), None);
    }
}
