//! Error types. A failed save hands the value back.

use std::fmt;

/// Why [`Cache::save_with_lease`](crate::Cache::save_with_lease) did not store the value. Both
/// variants give the value back ([`SaveError::into_value`]).
///
/// A stale save is a normal outcome of concurrency, not a fault: the value the caller read may be
/// older than a write that completed meanwhile, so it must not be cached. Serve it to the caller
/// who loaded it if that is acceptable for a read that overlapped the write, or read again.
#[non_exhaustive]
pub enum SaveError<V> {
    /// A purge, insert or flush of the key (or of a key sharing its generation slot) completed
    /// after the lease was captured; or one of the key's floors refused the save: the lease was
    /// captured inside a hold-off, a write intent is open on the key, or the save's source
    /// position is below the key's position floor (see the crate docs, *Consistency*).
    Stale {
        /// The value that was not saved.
        value: V,
    },
    /// The lease was issued for another key or by another cache instance.
    ForeignLease {
        /// The value that was not saved.
        value: V,
    },
}

impl<V> SaveError<V> {
    /// Takes the value back.
    ///
    /// ```
    /// use leasecache::Cache;
    ///
    /// let cache: Cache<u32, String> = Cache::new(10);
    /// let lease = cache.lease(&1);
    /// cache.purge(&1); // a writer fences the lease
    /// let err = cache.save_with_lease(1, "old".to_string(), lease).unwrap_err();
    /// assert!(err.is_stale());
    /// assert_eq!(err.into_value(), "old");
    /// ```
    pub fn into_value(self) -> V {
        match self {
            Self::Stale { value } | Self::ForeignLease { value } => value,
        }
    }

    /// Borrows the value that was not saved.
    pub fn value(&self) -> &V {
        match self {
            Self::Stale { value } | Self::ForeignLease { value } => value,
        }
    }

    /// Whether the save was rejected because a write fenced the lease.
    pub const fn is_stale(&self) -> bool {
        matches!(self, Self::Stale { .. })
    }
}

impl<V> fmt::Debug for SaveError<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stale { .. } => f.write_str("SaveError::Stale { .. }"),
            Self::ForeignLease { .. } => f.write_str("SaveError::ForeignLease { .. }"),
        }
    }
}

impl<V> fmt::Display for SaveError<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stale { .. } => {
                f.write_str("stale save rejected: the key was written after the lease was taken")
            }
            Self::ForeignLease { .. } => {
                f.write_str("lease rejected: it was issued for another key or another cache")
            }
        }
    }
}

impl<V> std::error::Error for SaveError<V> {}
