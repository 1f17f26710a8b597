//! Per-entry expiry computed from the entry: the [`Expiry`] trait of
//! [`CacheBuilder::expiry`](crate::CacheBuilder::expiry).

use std::time::Duration;

/// Computes an entry's time to live from its key and value when it is written (moka's and
/// Caffeine's `Expiry`).
///
/// Called under the shard's lock, once per write that stores a value (an `insert`, a save under
/// a lease, a load), before anything changes: keep it cheap, and do not call the cache from it.
/// The entry lives for the shorter of what it returns and what the cache's time to live (or the
/// write itself) allows. `None` sets no limit of its own.
///
/// Expiry is not a write: it removes a value without fencing the key's leases, exactly like an
/// eviction (a lease taken before an entry expired is still good for a save, because no write of
/// the source happened; a purge or insert made meanwhile still fences it). An expired value is
/// never returned by any read, `peek` and `iter` included.
pub trait Expiry<K, V>: Send + Sync {
    /// The time to live of a new entry (its key had no live value). The default sets none.
    fn expire_after_create(&self, key: &K, value: &V) -> Option<Duration> {
        let _ = (key, value);
        None
    }

    /// The time to live of a value replacing a live one, given what was left of the old one's
    /// (`None`: it had no deadline). The default keeps the old value's deadline, as moka's does.
    fn expire_after_update(
        &self,
        key: &K,
        value: &V,
        remaining: Option<Duration>,
    ) -> Option<Duration> {
        let _ = (key, value);
        remaining
    }
}
