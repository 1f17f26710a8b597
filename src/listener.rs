//! Removal notifications: [`RemovalCause`] and the listener a cache is built with
//! ([`CacheBuilder::eviction_listener`](crate::CacheBuilder::eviction_listener)).
//!
//! # What is delivered, where and when
//!
//! Every entry that leaves a [`Cache`](crate::Cache) with a listener is reported once, with its
//! key, its value and why it left. The shard copies the key and value (`K::clone`, `V::clone`)
//! while it holds its lock, at the moment it removes the entry, and the listener is called
//! **after the lock is released, on the thread whose call removed the entry** (the `insert` whose
//! eviction made room, the `purge`, the `flush`, the `retain`...), before that call returns. The
//! listener therefore may call back into the cache without deadlocking.
//!
//! Order: the notifications of one call are delivered in the order the shard removed the entries.
//! Notifications of calls on different threads are not ordered with one another: two threads that
//! write the same key may see their listeners run in the other order than the writes. A
//! notification is delivered *after* the removal is visible: when the listener runs, a lookup no
//! longer returns the removed value (unless something stored it again).
//!
//! Entries that are not reported: values a [`Cache`](crate::Cache) drops without having stored
//! them (a save refused as stale, a value heavier than a whole shard), and entries still held when
//! the cache itself is dropped. A fill that the eviction policy refuses at once is reported as
//! evicted for [`Size`](RemovalCause::Size), as moka does. An expired entry is reported when the
//! shard removes it (a write of its key, eviction reaching it, `retain`), not at its deadline:
//! expired entries are removed lazily. If `K::clone` or `V::clone` panics, that notification is
//! skipped (the removal itself is not undone); a listener that panics unwinds into the caller
//! after the removal is complete, and the notifications after it in the same call are dropped.
//!
//! One exception to "on the removing thread": a write that panics under the lock (your `Hash`,
//! `Eq` or `Drop` panicked) after removing entries leaves their notifications to the next write
//! of that shard, which delivers them on its own thread.
//!
//! Without a listener nothing is copied and no write pays anything but a branch.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// Why an entry left the cache (moka's `RemovalCause`, with the lease cache's own writes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RemovalCause {
    /// Evicted by the eviction policy to keep the cache within its capacity (or refused by it
    /// as the fill that would have overfilled it).
    Size,
    /// Its time to live had run out (its deadline from `time_to_live`, `insert_with_ttl` or an
    /// [`Expiry`](crate::Expiry)).
    Expired,
    /// Removed by [`purge`](crate::Cache::purge) (or another purge: a hold-off purge, a write
    /// intent), or by [`retain`](crate::Cache::retain) because the predicate refused it.
    Purged,
    /// Replaced by a newer value of its key (an `insert`, a save, a load).
    Replaced,
    /// Dropped by [`flush`](crate::Cache::flush).
    Flushed,
}

impl RemovalCause {
    /// Whether the cache removed the entry on its own (size or expiry), as opposed to a write
    /// made by the application (moka's `was_evicted`).
    pub fn was_evicted(self) -> bool {
        matches!(self, Self::Size | Self::Expired)
    }
}

/// What a listener receives: key, value and cause. Shared by the cache's shards.
pub(crate) type ListenerFn<K, V> = Arc<dyn Fn(K, V, RemovalCause) + Send + Sync + 'static>;

/// Copies an entry for a notification under the shard's lock; `None` if a `clone` panicked.
pub(crate) type CloneEntry<K, V> = fn(&K, &V) -> Option<(K, V)>;

/// A removal listener and the copier its shards use.
pub(crate) struct Listener<K, V> {
    pub(crate) listener: ListenerFn<K, V>,
    pub(crate) clone: CloneEntry<K, V>,
}

impl<K, V> Clone for Listener<K, V> {
    fn clone(&self) -> Self {
        Self {
            listener: Arc::clone(&self.listener),
            clone: self.clone,
        }
    }
}

impl<K, V> fmt::Debug for Listener<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Listener")
    }
}

impl<K: Clone, V: Clone> Listener<K, V> {
    pub(crate) fn new(listener: impl Fn(K, V, RemovalCause) + Send + Sync + 'static) -> Self {
        Self {
            listener: Arc::new(listener),
            clone: clone_entry::<K, V>,
        }
    }
}

/// The copier of a [`Listener`], also the stale grace's (`crate::stale`).
pub(crate) fn clone_entry<K: Clone, V: Clone>(key: &K, value: &V) -> Option<(K, V)> {
    // User code under the shard's lock, in the middle of a removal: it must not unwind there.
    catch_unwind(AssertUnwindSafe(|| (key.clone(), value.clone()))).ok()
}

/// Removed entries copied under a shard's lock, delivered after it is released.
pub(crate) type Removed<K, V> = Vec<(K, V, RemovalCause)>;

/// Where a shard copies the entries it removes.
pub(crate) struct Removals<'a, K, V> {
    pub(crate) out: &'a mut Removed<K, V>,
    pub(crate) clone: CloneEntry<K, V>,
    /// Copy only the entries removed by a purge: a stale grace without a listener keeps
    /// nothing else (`crate::stale`), so no other removal pays a copy.
    pub(crate) only_purged: bool,
}

impl<K, V> Removals<'_, K, V> {
    /// Whether an entry removed for `cause` is copied.
    #[inline]
    pub(crate) fn wants(&self, cause: RemovalCause) -> bool {
        !self.only_purged || cause == RemovalCause::Purged
    }
}

impl<K, V> Listener<K, V> {
    /// Calls the listener for every entry of `removed`, in order.
    pub(crate) fn deliver(&self, removed: Removed<K, V>) {
        for (key, value, cause) in removed {
            (self.listener)(key, value, cause);
        }
    }
}
