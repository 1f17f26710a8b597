//! Error types. A failed save hands the value back.

use std::fmt;

/// Why [`Cache::save_with_lease`](crate::Cache::save_with_lease) (or
/// [`save_as_of`](crate::Cache::save_as_of)) failed: the lease was issued for another key or by
/// another cache instance, a mistake in the caller's code that no retry fixes. The value is handed
/// back ([`SaveError::into_value`]).
///
/// A *stale* save is not an error: it is [`Ok(Saved::Stale)`](crate::Saved::Stale), in this cache
/// as in the Redis tier.
#[non_exhaustive]
pub enum SaveError<V> {
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
    /// let err = cache.save_with_lease(2, "row 2".to_string(), lease).unwrap_err(); // not key 2's
    /// assert_eq!(err.into_value(), "row 2");
    /// ```
    pub fn into_value(self) -> V {
        match self {
            Self::ForeignLease { value } => value,
        }
    }

    /// Borrows the value that was not saved.
    pub fn value(&self) -> &V {
        match self {
            Self::ForeignLease { value } => value,
        }
    }
}

impl<V> fmt::Debug for SaveError<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ForeignLease { .. } => f.write_str("SaveError::ForeignLease { .. }"),
        }
    }
}

/// Compares the variants and the values handed back.
impl<V: PartialEq> PartialEq for SaveError<V> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::ForeignLease { value: a }, Self::ForeignLease { value: b }) => a == b,
        }
    }
}

impl<V: Eq> Eq for SaveError<V> {}

impl<V> fmt::Display for SaveError<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ForeignLease { .. } => {
                f.write_str("lease rejected: it was issued for another key or another cache")
            }
        }
    }
}

impl<V> std::error::Error for SaveError<V> {}
