//! How a [`TieredCache`](super::TieredCache) key becomes its Redis key, and back.
//!
//! The L1 is keyed by `K` itself: an L1 hit hashes and compares `K` (or a borrowed form `Q`),
//! and never encodes anything. A key is encoded only when Redis is reached (an L1 miss, a write),
//! into the string that is its key in Redis and in invalidation messages. The invalidation feed
//! decodes the keys it receives to purge them from the L1.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::hash::Hash;
use std::sync::Arc;

/// Writes a key (or a borrowed form of one, such as `str` for `String` keys) as its Redis key.
///
/// The lookup half of [`TieredKey`]: [`TieredCache::get`](super::TieredCache::get),
/// [`purge`](super::TieredCache::purge) and [`insert`](super::TieredCache::insert) take any
/// `&Q` that `K` borrows as, like a `HashMap`, and `Q` must encode exactly as the `K` it stands
/// for: for every `k: K`, `k.borrow()` writes the same string as `k` (as `Hash` and `Eq` must
/// agree across `Borrow`).
///
/// Implemented for `str`, `String`, `Box<str>`, `Arc<str>` (the string itself), and the integer
/// types `u8` to `u128`, `usize`, `i8` to `i128`, `isize` (decimal). For a struct key, see
/// [`TieredKey`].
pub trait EncodeKey {
    /// Appends this key's Redis key to `out`. Must be deterministic: the same key always writes
    /// the same string, in every process and every version that shares the namespace. Two keys
    /// that are not equal must write different strings.
    fn write_redis_key(&self, out: &mut String);

    /// This key's Redis key. The default writes into a new `String`; string types override it to
    /// borrow themselves. There is no reason to override it otherwise.
    fn to_redis_key(&self) -> Cow<'_, str> {
        let mut out = String::new();
        self.write_redis_key(&mut out);
        Cow::Owned(out)
    }
}

/// A key type of a [`TieredCache`](super::TieredCache): hashable and comparable for the L1, and
/// written as a string for Redis ([`EncodeKey`]) and read back from one (the invalidation feed
/// decodes the keys other processes purged).
///
/// `from_redis_key` must invert `write_redis_key`: for every key `k`,
/// `from_redis_key(&k.to_redis_key()) == Some(k)`. It returns `None` for a string that no key of
/// this type writes (another program's key under the namespace, a key of another version):
/// the feed then flushes the whole L1 instead of purging one key, and counts the message in
/// [`TieredStats::unreadable_messages`](super::TieredStats::unreadable_messages). Safe, but a
/// flush per such message, so keep one key type per namespace.
///
/// A struct key implements both halves by hand:
///
/// ```
/// use std::fmt::Write as _;
/// use leasecache::tiered::{EncodeKey, TieredKey};
///
/// #[derive(Clone, Debug, Hash, PartialEq, Eq)]
/// struct OrderKey {
///     tenant: u32,
///     order: u64,
/// }
///
/// impl EncodeKey for OrderKey {
///     fn write_redis_key(&self, out: &mut String) {
///         // Integers never contain '/', so the encoding is unambiguous.
///         let _ = write!(out, "{}/{}", self.tenant, self.order);
///     }
/// }
///
/// impl TieredKey for OrderKey {
///     fn from_redis_key(s: &str) -> Option<Self> {
///         let (tenant, order) = s.split_once('/')?;
///         Some(OrderKey { tenant: tenant.parse().ok()?, order: order.parse().ok()? })
///     }
/// }
///
/// let key = OrderKey { tenant: 3, order: 42 };
/// assert_eq!(key.to_redis_key(), "3/42");
/// assert_eq!(OrderKey::from_redis_key("3/42"), Some(key));
/// assert_eq!(OrderKey::from_redis_key("user:7"), None);
/// ```
pub trait TieredKey: EncodeKey + Hash + Eq + Clone + Send + Sync + 'static {
    /// The key whose Redis key is `s`, or `None` if no key of this type writes `s`.
    fn from_redis_key(s: &str) -> Option<Self>;
}

impl EncodeKey for str {
    fn write_redis_key(&self, out: &mut String) {
        out.push_str(self);
    }

    fn to_redis_key(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

/// The string types: encoded as themselves, and decoded from any string.
macro_rules! string_keys {
    ($($t:ty),*) => {$(
        impl EncodeKey for $t {
            fn write_redis_key(&self, out: &mut String) {
                out.push_str(self);
            }

            fn to_redis_key(&self) -> Cow<'_, str> {
                Cow::Borrowed(self)
            }
        }

        impl TieredKey for $t {
            fn from_redis_key(s: &str) -> Option<Self> {
                Some(s.into())
            }
        }
    )*};
}

string_keys!(String, Box<str>, Arc<str>);

/// The integer types: decimal, decoded with `str::parse`.
macro_rules! integer_keys {
    ($($t:ty),*) => {$(
        impl EncodeKey for $t {
            fn write_redis_key(&self, out: &mut String) {
                // Writing to a `String` cannot fail.
                let _ = write!(out, "{self}");
            }
        }

        impl TieredKey for $t {
            fn from_redis_key(s: &str) -> Option<Self> {
                s.parse().ok()
            }
        }
    )*};
}

integer_keys!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize
);

#[cfg(test)]
mod tests {
    use super::{EncodeKey, TieredKey};
    use std::sync::Arc;

    fn round_trip<K: TieredKey + std::fmt::Debug>(key: K, encoded: &str) {
        assert_eq!(key.to_redis_key(), encoded);
        let mut out = String::from("prefix:");
        key.write_redis_key(&mut out);
        assert_eq!(out, format!("prefix:{encoded}"), "appends, never replaces");
        assert_eq!(K::from_redis_key(encoded), Some(key));
    }

    #[test]
    fn built_in_keys_round_trip() {
        round_trip(String::from("user:7"), "user:7");
        round_trip(Box::<str>::from("a b"), "a b");
        round_trip(Arc::<str>::from(""), "");
        round_trip(7u8, "7");
        round_trip(u64::MAX, "18446744073709551615");
        round_trip(u128::MAX, "340282366920938463463374607431768211455");
        round_trip(-5i32, "-5");
        round_trip(i128::MIN, "-170141183460469231731687303715884105728");
        round_trip(0usize, "0");
        assert_eq!("abc".to_redis_key(), "abc");
    }

    #[test]
    fn strings_borrow_and_integers_refuse_foreign_keys() {
        assert!(matches!(
            String::from("k").to_redis_key(),
            std::borrow::Cow::Borrowed("k")
        ));
        assert_eq!(u64::from_redis_key("user:7"), None);
        assert_eq!(u8::from_redis_key("256"), None);
        assert_eq!(i64::from_redis_key(""), None);
    }
}
