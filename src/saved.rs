//! The outcome of a save under a lease, shared by every layer.

/// The outcome of a save under a lease: [`Cache::save_with_lease`](crate::Cache::save_with_lease)
/// and [`Cache::save_as_of`](crate::Cache::save_as_of), and (feature `redis`)
/// `RedisStore::save_with_lease`, `save_field_with_lease` and `save_as_of`.
///
/// A stale save is a normal outcome of concurrency, not an error: the value the caller read may
/// be older than a write that completed meanwhile, so it was not cached. Serve it to the caller
/// who loaded it if that is acceptable for a read that overlapped the write, or read again.
/// Errors are kept for what a retry would not fix (a foreign lease, a failed server).
///
/// Exhaustive: these are the only two outcomes, so a `match` needs no `_` arm.
///
/// ```
/// use leasecache::{Cache, Saved};
///
/// let cache: Cache<u32, &str> = Cache::new(10);
/// let lease = cache.lease(&1);
/// cache.insert(1, "new"); // a writer wins the race
/// match cache.save_with_lease(1, "old", lease).expect("our own lease") {
///     Saved::Stored => unreachable!("the insert fenced the lease"),
///     Saved::Stale => {} // serve "old" to this caller only, or read again
/// }
/// assert_eq!(cache.get(&1), Some("new"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Saved {
    /// The value was stored.
    Stored,
    /// The value was not stored: a purge, insert or flush of the key (or of a key sharing its
    /// generation slot) completed after the lease was captured, or one of the key's floors
    /// refused the save (a hold-off, an open write intent, a source position below the key's
    /// floor; see the crate docs, *Consistency*). In Redis also: the key's marker was lost, or
    /// the lease is older than the maximum lease age.
    Stale,
}

impl Saved {
    /// Whether the value was stored.
    pub const fn is_stored(self) -> bool {
        matches!(self, Self::Stored)
    }

    /// Whether the save was refused as stale.
    pub const fn is_stale(self) -> bool {
        matches!(self, Self::Stale)
    }
}
