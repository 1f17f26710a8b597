//! Configuration of a [`RedisStore`](super::RedisStore).

use std::time::Duration;

use super::codec::PostcardCodec;

/// How a [`RedisStore`](super::RedisStore) names, encodes and expires its entries. A consuming
/// builder; every setter has a sensible default. `C` is the codec's type
/// ([`PostcardCodec`] unless [`codec`](Self::codec) picks another).
///
/// ```
/// use std::time::Duration;
/// use leasecache::redis::{JsonCodec, RedisOptions};
///
/// let options = RedisOptions::new("users")
///     .default_ttl(Duration::from_secs(600))
///     .max_lease_age(Duration::from_secs(10))
///     .max_value_bytes(64 * 1024)
///     .command_timeout(Duration::from_millis(500))
///     .codec(JsonCodec);
/// assert_eq!(options.namespace_str(), "users");
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct RedisOptions<C = PostcardCodec> {
    pub(crate) namespace: String,
    pub(crate) default_ttl: Duration,
    pub(crate) max_lease_age: Duration,
    pub(crate) max_value_bytes: usize,
    pub(crate) command_timeout: Duration,
    pub(crate) codec: C,
    pub(crate) hold_off: Option<Duration>,
    pub(crate) intent_ttl: Duration,
    pub(crate) value_version: u16,
    pub(crate) lease_secret: Option<LeaseSecret>,
    pub(crate) stale_grace: Option<Duration>,
}

/// A lease secret; its `Debug` never prints it.
#[derive(Clone)]
pub(crate) struct LeaseSecret(pub(crate) Vec<u8>);

impl std::fmt::Debug for LeaseSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseSecret(***)")
    }
}

impl RedisOptions {
    /// Options for the namespace `namespace`: every Redis key of the store is
    /// `"<namespace>:<key>"`. A namespace is 1 to 128 bytes and contains no `:`: with one,
    /// namespaces `app` and `app:users` would share Redis keys (`app` + key `users:1` and
    /// `app:users` + key `1` are both `app:users:1`) and a flush of `app` would empty `app:users`.
    /// Use another separator inside the namespace (`app.users`, `app/users`); the Redis keys then
    /// read `app.users:1`.
    ///
    /// Defaults: TTL 1 hour, maximum lease age 30 s, values up to 1 MiB encoded, command timeout
    /// 5 s, [`PostcardCodec`].
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            default_ttl: Duration::from_secs(3600),
            max_lease_age: Duration::from_secs(30),
            max_value_bytes: 1 << 20,
            command_timeout: Duration::from_secs(5),
            codec: PostcardCodec,
            hold_off: None,
            intent_ttl: Duration::from_secs(60),
            value_version: 0,
            lease_secret: None,
            stale_grace: None,
        }
    }
}

impl<C> RedisOptions<C> {
    /// The TTL of values saved by `save_with_lease`, `save_field_with_lease` and `insert`.
    /// Rounded up to whole milliseconds; 1 ms to 10 years.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// How long a lease stays usable. A save under an older lease is
    /// [`Stale`](super::Saved::Stale). It is also the lifetime of a marker on a key that holds no
    /// value, which bounds the tier's bookkeeping memory (see the module docs).
    pub fn max_lease_age(mut self, age: Duration) -> Self {
        self.max_lease_age = age;
        self
    }

    /// The largest encoded value a save or insert accepts; larger ones fail with
    /// [`TooLarge`](super::RedisStoreError::TooLarge) and send nothing.
    pub fn max_value_bytes(mut self, limit: usize) -> Self {
        self.max_value_bytes = limit;
        self
    }

    /// How long one operation (including connecting) may wait for the server before failing with
    /// [`Timeout`](super::RedisStoreError::Timeout).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// A hold-off after every purge and insert (as [`CacheBuilder::hold_off`](crate::CacheBuilder::hold_off)):
    /// saves under leases issued (by the server's clock) before it ends are refused. Default:
    /// none. It is kept in the key's hash, which lives at least until it ends. `flush` applies
    /// none (it purges the keys it finds; an absent key has no hash to hold a deadline).
    pub fn hold_off(mut self, hold_off: Duration) -> Self {
        self.hold_off = Some(hold_off);
        self
    }

    /// How long a write intent ([`RedisStore::begin_write`](super::RedisStore::begin_write))
    /// whose writer never ends it (it crashed) keeps refusing saves: after that, saves under
    /// leases issued later land again. Default: 60 s. Make it longer than your longest write
    /// transaction.
    pub fn intent_ttl(mut self, ttl: Duration) -> Self {
        self.intent_ttl = ttl;
        self
    }

    /// The codec that turns values into bytes (default [`PostcardCodec`]).
    pub fn codec<D>(self, codec: D) -> RedisOptions<D> {
        RedisOptions {
            namespace: self.namespace,
            default_ttl: self.default_ttl,
            max_lease_age: self.max_lease_age,
            max_value_bytes: self.max_value_bytes,
            command_timeout: self.command_timeout,
            codec,
            hold_off: self.hold_off,
            intent_ttl: self.intent_ttl,
            value_version: self.value_version,
            lease_secret: self.lease_secret,
            stale_grace: self.stale_grace,
        }
    }

    /// Signs every lease this store issues with `secret` (HMAC-SHA256, at least 16 bytes), and
    /// refuses any lease without a valid signature before sending anything. Every store that
    /// accepts the leases of another must have the same secret. See
    /// [`RedisLease`](super::RedisLease), *What a token proves*.
    pub fn lease_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.lease_secret = Some(LeaseSecret(secret.into()));
        self
    }

    /// The schema version written into every stored value's header (default 0). Change it when
    /// the value type changes in a way the codec cannot tell (postcard decodes a struct whose
    /// fields were reordered silently into wrong values): a value stored under another version
    /// is then treated like one that does not decode, a miss that hands out a lease, so the
    /// next save replaces it (see the module docs, *Bad stored data*). Processes with the old
    /// and the new version can share the namespace during a rolling deploy; each replaces the
    /// other's values, so expect more loads until it completes (or use a new namespace).
    pub fn value_version(mut self, version: u16) -> Self {
        self.value_version = version;
        self
    }

    /// Keeps the value a purge replaces for `grace`, so that callers that opted in to stale
    /// values ([`RedisStore::get_or_fill_allow_stale`](super::RedisStore::get_or_fill_allow_stale),
    /// [`TieredCache::get_or_load_allow_stale`](crate::tiered::TieredCache::get_or_load_allow_stale))
    /// get it, marked [`MaybeStale::Stale`](super::MaybeStale::Stale), while another caller
    /// refills the key, instead of waiting. Default: none (nothing is kept, and the opt-in
    /// methods behave like their plain forms). Every other read ignores it. The copy costs the
    /// value's memory for `grace` after each purge that found a value. See the [`fill`](super::fill)
    /// module, *Stale grace*, for exactly what is served. 1 ms to 10 years.
    ///
    /// Turn it on only once every process sharing the namespace runs a version that knows the
    /// grace copy: an older version's save counts the copy as an entry of the key and would let
    /// the value it saves expire with the copy (early, never stale).
    pub fn stale_grace(mut self, grace: Duration) -> Self {
        self.stale_grace = Some(grace);
        self
    }

    /// The namespace these options name.
    pub fn namespace_str(&self) -> &str {
        &self.namespace
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        let ns = &self.namespace;
        if ns.is_empty() || ns.len() > 128 {
            return Err(format!("namespace {ns:?} must be 1 to 128 bytes"));
        }
        if ns.contains(':') {
            let suggestion = ns.replace(':', ".");
            return Err(format!(
                "namespace {ns:?} contains ':', the separator between namespace and key: \
                 namespaces {ns:?} and {:?} would share Redis keys and a flush of one would \
                 empty the other; use another separator, such as {suggestion:?}",
                ns.split(':').next().unwrap_or_default()
            ));
        }
        check_ttl("default_ttl", self.default_ttl)?;
        check_ttl("max_lease_age", self.max_lease_age)?;
        check_ttl("intent_ttl", self.intent_ttl)?;
        if let Some(hold_off) = self.hold_off {
            check_ttl("hold_off", hold_off)?;
        }
        if let Some(grace) = self.stale_grace {
            check_ttl("stale_grace", grace)?;
        }
        if self.lease_secret.as_ref().is_some_and(|s| s.0.len() < 16) {
            return Err("lease_secret must be at least 16 bytes".into());
        }
        if self.command_timeout.is_zero() {
            return Err("command_timeout must be positive".into());
        }
        Ok(())
    }
}

/// The longest TTL or lease age accepted (ten years).
pub(crate) const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A TTL must be between 1 ms and [`MAX_TTL`].
pub(crate) fn check_ttl(what: &str, d: Duration) -> Result<(), String> {
    if d < Duration::from_millis(1) || d > MAX_TTL {
        return Err(format!(
            "{what} must be between 1 ms and 10 years, not {d:?}"
        ));
    }
    Ok(())
}

/// Whole milliseconds, rounded up, at least 1.
pub(crate) fn millis(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}
