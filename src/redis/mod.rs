//! The Redis tier: the same lease guarantees on Redis, Valkey and Redis Cluster (feature `redis`).
//!
//! [`RedisStore`] keeps one Redis hash per cache key, named `"<namespace>:<key>"`:
//!
//! | hash field | holds |
//! |---|---|
//! | `!v` | the key's value (codec-encoded) |
//! | `f:<name>` | the sub-entry (field) `<name>`; a user field always starts with `f:`, so it can never collide with internal state |
//! | `!g` | the key's generation **marker**, present only while a lease may be outstanding |
//!
//! ## Leases on Redis
//!
//! Generations are *minted, not counted*. A miss in [`RedisStore::get_or_lease`] creates the
//! marker if it is absent, with a value never handed out before (server `TIME` in microseconds
//! plus a random 64-bit client nonce), and returns it in the lease, all in one script and one
//! round trip. [`RedisStore::save_with_lease`] stores only if the marker exists and equals the
//! lease (and the lease is younger than the maximum lease age). Every write that fences
//! (`purge`, `insert`, `insert_with_ttl`, `purge_field`, `flush`) **deletes** the marker in the
//! same script as its effect. So anything that destroys a marker (a fencing write, TTL, eviction,
//! `FLUSHALL`, restart, failover) rejects every outstanding lease on that key; nothing can bring
//! the old value back (I1, I3). Purging an absent key fences too (I4): if no marker exists, no
//! outstanding lease can match anything ever again.
//!
//! ## Bounded memory (I5)
//!
//! Fencing only deletes, so purges (of present or absent keys, in any number) never allocate.
//! A marker is created only by a miss that hands out a lease. On a key that holds nothing, the
//! marker-only hash expires [`max_lease_age`](RedisOptions::max_lease_age) after the last lease
//! taken on it; on a key that holds data, the marker lives and dies with that data (whose TTL is
//! always set). Bookkeeping beyond the cached data is therefore bounded by *the number of distinct
//! empty keys leased within the last `max_lease_age`*, about 180 bytes each on Redis 7 (10 000
//! marker-only keys measured 1.7 MB), plus one marker field per cached key.
//!
//! ## Scripts
//!
//! Every script declares and touches exactly one key (cluster-safe, Valkey, Dragonfly), is sent
//! with `EVALSHA` and re-sent with `EVAL` on `NOSCRIPT`. Purge scripts only free memory (`DEL`,
//! `HDEL`), and `insert` frees before it allocates, so purges still run at `maxmemory` with
//! `noeviction`. Every fencing script `PUBLISH`es on [`RedisStore::invalidation_channel`]
//! atomically with its write ([`Invalidation`] decodes the payload); `flush` publishes once at
//! the end.
//!
//! ## Consistency
//!
//! - **No stale save.** If a purge, insert, field purge or flush of key K *completes* after a
//!   lease on K was captured, a save under that lease returns [`Saved::Stale`], forever.
//! - A lease older than `max_lease_age` is stale.
//! - Entries of one key share its TTL: a save never extends the lifetime of entries already there.
//! - `insert` replaces the key's whole contents (its value and every sub-entry).
//! - Every single-key operation is atomic. `flush` is atomic per key: it scans the namespace (every
//!   master in cluster mode) and purges key by key; every lease outstanding when it started is
//!   fenced when it returns.
//! - A failed call ([`RedisStoreError::Redis`], [`RedisStoreError::Timeout`]) may or may not have
//!   taken effect; it never panics and never waits longer than the command timeout per round trip.
//!
//! Not guaranteed: that Redis keeps a write it acknowledged. Replication is asynchronous and
//! persistence may lag (`appendfsync everysec`), so a failover or crash can lose the last writes,
//! *including a purge*: a replica promoted before it saw the purge still holds the old value and
//! marker. A lost *marker* only rejects leases; a lost *purge* is as if it never happened. Where
//! that matters, use `min-replicas-to-write` or `WAIT` after writes.
//!
//! ## Blocking
//!
//! No method blocks the calling thread: every operation is `async` and waits at most the command
//! timeout per round trip ([`RedisOptions::command_timeout`]).
//!
//! ## Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), leasecache::redis::RedisStoreError> {
//! use leasecache::Lookup;
//! use leasecache::redis::{RedisOptions, RedisStore, Saved};
//!
//! let store: RedisStore<String> =
//!     RedisStore::connect("redis://127.0.0.1/", RedisOptions::new("users")).await?;
//! let name = match store.get_or_lease("42").await? {
//!     Lookup::Hit(name) => name,
//!     Lookup::Miss(lease) => {
//!         let name = "Ada".to_string(); // read the database *after* taking the lease
//!         if store.save_with_lease("42", &name, &lease).await? == Saved::Stale {
//!             // a writer purged "42" meanwhile: serve `name`, but it was not cached
//!         }
//!         name
//!     }
//! };
//! store.purge("42").await?; // writers: update the database, then purge
//! # let _ = name; Ok(()) }
//! ```

mod codec;
mod conn;
mod error;
mod invalidation;
mod lease;
mod options;

use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Lookup;
use conn::{Conn, Scripts};

pub use codec::{Codec, JsonCodec, PostcardCodec};
pub use error::{CodecError, RedisStoreError};
pub use invalidation::Invalidation;
pub use lease::RedisLease;
pub use options::RedisOptions;

/// The outcome of a save under a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Saved {
    /// The value was stored.
    Stored,
    /// A write fenced the lease (or the key's marker was lost, or the lease is older than the
    /// maximum lease age): the value was not stored. A normal outcome of concurrency; serve the
    /// value to the caller who loaded it if that is acceptable, or read again.
    Stale,
}

/// Hash field of the key's own value.
const VALUE_FIELD: &str = "!v";
/// Prefix of every user sub-entry's hash field.
const FIELD_PREFIX: &str = "f:";

/// A lease-safe cache store on Redis, Valkey or Redis Cluster. See the [module docs](self).
///
/// Cheap to clone (clones share the connection); `Send` and `Sync`. Every method sends one round
/// trip (`flush`: one per scanned batch and key) and fails with [`RedisStoreError::Timeout`] if
/// the server does not answer within the command timeout.
pub struct RedisStore<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for RedisStore<V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<V> std::fmt::Debug for RedisStore<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.inner.namespace)
            // Not the URLs themselves: they may carry passwords.
            .field("nodes", &self.inner.urls.len())
            .finish_non_exhaustive()
    }
}

struct Inner<V> {
    conn: Conn,
    scripts: Scripts,
    codec: Box<dyn Codec<V>>,
    namespace: String,
    channel: String,
    urls: Vec<String>,
    default_ttl_ms: u64,
    max_lease_age: Duration,
    max_value_bytes: usize,
    timeout: Duration,
}

impl<V: Serialize + DeserializeOwned + Send + Sync + 'static> RedisStore<V> {
    /// Connects to one server (`redis://host:port/db`), reconnecting automatically after
    /// failures. Fails if the options are invalid or the server cannot be reached within the
    /// command timeout.
    pub async fn connect<C: Codec<V>>(
        url: &str,
        options: RedisOptions<C>,
    ) -> Result<Self, RedisStoreError> {
        options.validate().map_err(RedisStoreError::InvalidInput)?;
        let conn = Conn::connect(url, options.command_timeout).await?;
        Ok(Self::with_conn(conn, vec![url.to_owned()], options))
    }

    /// Connects to a Redis Cluster through any of its nodes (`redis://host:port/`); the slot map
    /// is discovered and followed through resharding and failover.
    pub async fn connect_cluster<C: Codec<V>>(
        urls: &[&str],
        options: RedisOptions<C>,
    ) -> Result<Self, RedisStoreError> {
        options.validate().map_err(RedisStoreError::InvalidInput)?;
        if urls.is_empty() {
            return Err(RedisStoreError::InvalidInput("no cluster node URL".into()));
        }
        let conn = Conn::connect_cluster(urls, options.command_timeout).await?;
        let urls = urls.iter().map(|u| (*u).to_owned()).collect();
        Ok(Self::with_conn(conn, urls, options))
    }

    fn with_conn<C: Codec<V>>(conn: Conn, urls: Vec<String>, o: RedisOptions<C>) -> Self {
        let channel = format!("leasecache:{}:invalidations", o.namespace);
        Self {
            inner: Arc::new(Inner {
                conn,
                scripts: Scripts::new(),
                codec: Box::new(o.codec),
                namespace: o.namespace,
                channel,
                urls,
                default_ttl_ms: options::millis(o.default_ttl),
                max_lease_age: o.max_lease_age,
                max_value_bytes: o.max_value_bytes,
                timeout: o.command_timeout,
            }),
        }
    }

    /// The key's value, if cached. Never looks at generations (a present value is current).
    pub async fn get(&self, key: &str) -> Result<Option<V>, RedisStoreError> {
        self.hget(key, VALUE_FIELD).await
    }

    /// The key's value if cached, else a lease to save it with after reading the source. One
    /// round trip.
    pub async fn get_or_lease(&self, key: &str) -> Result<Lookup<V, RedisLease>, RedisStoreError> {
        self.lookup(key, None).await
    }

    /// Stores `value` under `key` if no write fenced `lease` since it was captured (atomic
    /// compare-and-save). [`Saved::Stale`] is a normal outcome; an error means the lease is
    /// malformed or foreign, the value is unusable, or the server failed.
    pub async fn save_with_lease(
        &self,
        key: &str,
        value: &V,
        lease: &RedisLease,
    ) -> Result<Saved, RedisStoreError> {
        self.save(key, None, value, lease).await
    }

    /// Stores `value` under `key` unconditionally with the default TTL, replacing the key's
    /// value and sub-entries; fences every outstanding lease on the key.
    pub async fn insert(&self, key: &str, value: &V) -> Result<(), RedisStoreError> {
        self.insert_ms(key, value, self.inner.default_ttl_ms).await
    }

    /// [`insert`](Self::insert) with its own TTL (1 ms to 10 years; rounded up to milliseconds).
    pub async fn insert_with_ttl(
        &self,
        key: &str,
        value: &V,
        ttl: Duration,
    ) -> Result<(), RedisStoreError> {
        options::check_ttl("ttl", ttl).map_err(RedisStoreError::InvalidInput)?;
        self.insert_ms(key, value, options::millis(ttl)).await
    }

    /// Removes the key (its value and every sub-entry) and fences every outstanding lease on it,
    /// whether or not anything was cached. Returns whether a value or sub-entry was removed.
    pub async fn purge(&self, key: &str) -> Result<bool, RedisStoreError> {
        let payload = Invalidation::key_payload(key);
        let args: [&[u8]; 2] = [self.inner.channel.as_bytes(), &payload];
        let reply = self.eval_on(key, Op::Purge, &args).await?;
        Ok(int_reply(&reply)? == 1)
    }

    /// Purges every key of this store's namespace (never `FLUSHDB`), fencing every lease that was
    /// outstanding when it started, then publishes a flush on the invalidation channel. Scans
    /// every master in cluster mode. Keys written while it runs may survive.
    pub async fn flush(&self) -> Result<(), RedisStoreError> {
        let pattern = format!("{}:*", glob_escape(&self.inner.namespace));
        let (conn, timeout) = (&self.inner.conn, self.inner.timeout);
        for node in conn.scan_nodes(timeout).await? {
            let mut cursor = 0;
            loop {
                let (next, keys) = conn.scan_step(&node, cursor, &pattern, timeout).await?;
                let purges = keys.iter().map(|k| {
                    let args: [&[u8]; 2] = [b"", b""];
                    async move {
                        conn.eval(&self.inner.scripts.purge, k, &args, timeout)
                            .await
                    }
                });
                futures_util::future::try_join_all(purges).await?;
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(&self.inner.channel).arg("F");
        self.inner
            .conn
            .query::<Value>(&publish, self.inner.timeout)
            .await?;
        Ok(())
    }

    /// Sub-entry `field` of `key`, if cached.
    pub async fn get_field(&self, key: &str, field: &str) -> Result<Option<V>, RedisStoreError> {
        self.hget(key, &user_field(field)).await
    }

    /// Sub-entry `field` of `key` if cached, else a lease (bound to this key *and* field) to save
    /// it with. One round trip.
    pub async fn get_field_or_lease(
        &self,
        key: &str,
        field: &str,
    ) -> Result<Lookup<V, RedisLease>, RedisStoreError> {
        self.lookup(key, Some(field)).await
    }

    /// Stores sub-entry `field` of `key` if no write to the key fenced `lease` (atomic
    /// compare-and-save). Sub-entries share the key's TTL.
    pub async fn save_field_with_lease(
        &self,
        key: &str,
        field: &str,
        value: &V,
        lease: &RedisLease,
    ) -> Result<Saved, RedisStoreError> {
        self.save(key, Some(field), value, lease).await
    }

    /// Removes sub-entry `field` of `key` and fences every outstanding lease on the **whole key**
    /// (its value and every sub-entry). Returns whether the sub-entry was removed.
    pub async fn purge_field(&self, key: &str, field: &str) -> Result<bool, RedisStoreError> {
        let f = user_field(field);
        let payload = Invalidation::key_payload(key);
        let args: [&[u8]; 3] = [f.as_bytes(), self.inner.channel.as_bytes(), &payload];
        let reply = self.eval_on(key, Op::PurgeField, &args).await?;
        Ok(int_reply(&reply)? == 1)
    }

    /// The names of the key's cached sub-entries (never internal fields), in no particular order.
    pub async fn list_fields(&self, key: &str) -> Result<Vec<String>, RedisStoreError> {
        let mut cmd = redis::cmd("HKEYS");
        cmd.arg(self.redis_key(key));
        let names: Vec<Vec<u8>> = self.inner.conn.query(&cmd, self.inner.timeout).await?;
        Ok(names
            .iter()
            .filter_map(|n| n.strip_prefix(FIELD_PREFIX.as_bytes()))
            .filter_map(|n| std::str::from_utf8(n).ok())
            .map(str::to_owned)
            .collect())
    }

    /// The namespace (key prefix) of this store.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The URL(s) this store was connected with.
    pub fn node_urls(&self) -> &[String] {
        &self.inner.urls
    }

    /// The pub/sub channel every fencing write of this namespace publishes on
    /// (`leasecache:<namespace>:invalidations`); decode messages with [`Invalidation::parse`].
    pub fn invalidation_channel(&self) -> &str {
        &self.inner.channel
    }

    /// How long a lease stays usable.
    pub fn max_lease_age(&self) -> Duration {
        self.inner.max_lease_age
    }

    // ---- internals ----

    /// Sends one command (routed by its first key on a cluster), bounded by the command timeout.
    /// Used by the tiered cache's coherence scripts, which declare several keys of one slot.
    pub(crate) async fn query_value(&self, cmd: &redis::Cmd) -> Result<Value, RedisStoreError> {
        self.inner.conn.query(cmd, self.inner.timeout).await
    }

    fn redis_key(&self, key: &str) -> Vec<u8> {
        let ns = self.inner.namespace.as_bytes();
        let mut k = Vec::with_capacity(ns.len() + 1 + key.len());
        k.extend_from_slice(ns);
        k.push(b':');
        k.extend_from_slice(key.as_bytes());
        k
    }

    async fn eval_on(&self, key: &str, op: Op, args: &[&[u8]]) -> Result<Value, RedisStoreError> {
        let s = &self.inner.scripts;
        let script = match op {
            Op::GetOrLease => &s.get_or_lease,
            Op::Save => &s.save,
            Op::Insert => &s.insert,
            Op::Purge => &s.purge,
            Op::PurgeField => &s.purge_field,
        };
        let k = self.redis_key(key);
        self.inner
            .conn
            .eval(script, &k, args, self.inner.timeout)
            .await
    }

    async fn hget(&self, key: &str, field: &str) -> Result<Option<V>, RedisStoreError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(self.redis_key(key)).arg(field);
        let bytes: Option<Vec<u8>> = self.inner.conn.query(&cmd, self.inner.timeout).await?;
        bytes.map(|b| self.decode(&b)).transpose()
    }

    async fn lookup(
        &self,
        key: &str,
        field: Option<&str>,
    ) -> Result<Lookup<V, RedisLease>, RedisStoreError> {
        Ok(self.lookup_ttl(key, field).await?.0)
    }

    /// [`get_or_lease`](Self::get_or_lease), and on a hit the entry's remaining TTL in Redis
    /// (`None`: it has none), which caps the tiered cache's L1 fill.
    pub(crate) async fn get_or_lease_ttl(
        &self,
        key: &str,
    ) -> Result<(Lookup<V, RedisLease>, Option<Duration>), RedisStoreError> {
        self.lookup_ttl(key, None).await
    }

    /// The key's value and its remaining TTL in Redis (`None`: it has none). One round trip.
    pub(crate) async fn get_ttl(
        &self,
        key: &str,
    ) -> Result<Option<(V, Option<Duration>)>, RedisStoreError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(GET_TTL)
            .arg(1)
            .arg(self.redis_key(key))
            .arg(VALUE_FIELD);
        match self.inner.conn.query(&cmd, self.inner.timeout).await? {
            Value::Array(items) => match items.as_slice() {
                [v, ttl] => Ok(Some((self.decode(bytes_of(v)?)?, ttl_of(ttl)?))),
                _ => Err(protocol("get", &Value::Array(items.clone()))),
            },
            Value::Nil | Value::Boolean(false) => Ok(None),
            other => Err(protocol("get", &other)),
        }
    }

    /// The TTL [`insert`](Self::insert) and a save give an entry.
    pub(crate) fn default_ttl(&self) -> Duration {
        Duration::from_millis(self.inner.default_ttl_ms)
    }

    async fn lookup_ttl(
        &self,
        key: &str,
        field: Option<&str>,
    ) -> Result<(Lookup<V, RedisLease>, Option<Duration>), RedisStoreError> {
        let hash_field = field.map_or_else(|| VALUE_FIELD.to_owned(), user_field);
        let nonce = format!("{:016x}", rand::random::<u64>());
        let marker_ms = options::millis(self.inner.max_lease_age).to_string();
        let args: [&[u8]; 3] = [
            hash_field.as_bytes(),
            nonce.as_bytes(),
            marker_ms.as_bytes(),
        ];
        let reply = self.eval_on(key, Op::GetOrLease, &args).await?;
        let items = match reply {
            Value::Array(items) => items,
            other => return Err(protocol("get_or_lease", &other)),
        };
        match items.as_slice() {
            [Value::Int(1), v, ttl @ ..] => {
                let ttl = ttl.first().map(ttl_of).transpose()?.flatten();
                Ok((Lookup::Hit(self.decode(bytes_of(v)?)?), ttl))
            }
            [Value::Int(0), g, s, us] => {
                let generation = String::from_utf8(bytes_of(g)?.to_vec())
                    .map_err(|_| RedisStoreError::Protocol("non-UTF-8 marker".into()))?;
                let lease = RedisLease::new(
                    &self.inner.namespace,
                    key,
                    field,
                    generation,
                    u64_of(s)?,
                    u64_of(us)?,
                );
                Ok((Lookup::Miss(lease), None))
            }
            _ => Err(protocol("get_or_lease", &Value::Array(items.clone()))),
        }
    }

    async fn save(
        &self,
        key: &str,
        field: Option<&str>,
        value: &V,
        lease: &RedisLease,
    ) -> Result<Saved, RedisStoreError> {
        if !lease.is_for(&self.inner.namespace, key, field) {
            return Err(RedisStoreError::ForeignLease);
        }
        let bytes = self.encode(value)?;
        let hash_field = field.map_or_else(|| VALUE_FIELD.to_owned(), user_field);
        let (s, us) = lease.issued();
        let (s, us) = (s.to_string(), us.to_string());
        let max_age_us = u64::try_from(self.inner.max_lease_age.as_micros())
            .unwrap_or(u64::MAX)
            .to_string();
        let ttl = self.inner.default_ttl_ms.to_string();
        let args: [&[u8]; 7] = [
            hash_field.as_bytes(),
            &bytes,
            lease.generation().as_bytes(),
            s.as_bytes(),
            us.as_bytes(),
            max_age_us.as_bytes(),
            ttl.as_bytes(),
        ];
        let reply = self.eval_on(key, Op::Save, &args).await?;
        Ok(if int_reply(&reply)? == 1 {
            Saved::Stored
        } else {
            Saved::Stale
        })
    }

    async fn insert_ms(&self, key: &str, value: &V, ttl_ms: u64) -> Result<(), RedisStoreError> {
        let bytes = self.encode(value)?;
        let ttl = ttl_ms.to_string();
        let payload = Invalidation::key_payload(key);
        let args: [&[u8]; 4] = [
            &bytes,
            ttl.as_bytes(),
            self.inner.channel.as_bytes(),
            &payload,
        ];
        self.eval_on(key, Op::Insert, &args).await?;
        Ok(())
    }

    fn encode(&self, value: &V) -> Result<Vec<u8>, RedisStoreError> {
        let bytes = self
            .inner
            .codec
            .encode(value)
            .map_err(RedisStoreError::Encode)?;
        if bytes.len() > self.inner.max_value_bytes {
            return Err(RedisStoreError::TooLarge {
                size: bytes.len(),
                limit: self.inner.max_value_bytes,
            });
        }
        Ok(bytes)
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, RedisStoreError> {
        self.inner
            .codec
            .decode(bytes)
            .map_err(RedisStoreError::Decode)
    }
}

#[derive(Clone, Copy)]
enum Op {
    GetOrLease,
    Save,
    Insert,
    Purge,
    PurgeField,
}

fn user_field(field: &str) -> String {
    let mut f = String::with_capacity(FIELD_PREFIX.len() + field.len());
    f.push_str(FIELD_PREFIX);
    f.push_str(field);
    f
}

/// Escapes SCAN `MATCH` glob metacharacters.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn protocol(what: &str, v: &Value) -> RedisStoreError {
    RedisStoreError::Protocol(format!("{what} returned {v:?}"))
}

fn int_reply(v: &Value) -> Result<i64, RedisStoreError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(protocol("script", other)),
    }
}

fn bytes_of(v: &Value) -> Result<&[u8], RedisStoreError> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.as_bytes()),
        other => Err(protocol("script", other)),
    }
}

/// A `PTTL` reply: `Some(remaining)`, `None` for no TTL (-1), zero for a key gone meanwhile (-2).
fn ttl_of(v: &Value) -> Result<Option<Duration>, RedisStoreError> {
    match v {
        Value::Int(-1) => Ok(None),
        Value::Int(ms) => Ok(Some(Duration::from_millis(u64::try_from(*ms).unwrap_or(0)))),
        other => Err(protocol("PTTL", other)),
    }
}

/// `get_ttl`: the value and the key's `PTTL`, read atomically. One declared key.
const GET_TTL: &str = "local v = redis.call('HGET', KEYS[1], ARGV[1]) \
if v then return {v, redis.call('PTTL', KEYS[1])} end return false";

fn u64_of(v: &Value) -> Result<u64, RedisStoreError> {
    match v {
        Value::Int(i) => u64::try_from(*i).map_err(|_| protocol("script", v)),
        other => std::str::from_utf8(bytes_of(other)?)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| protocol("script", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_fields_never_collide_with_internal_fields() {
        for name in ["", "!v", "!g", "v", "g", "f:", "!"] {
            let f = user_field(name);
            assert!(f.starts_with(FIELD_PREFIX));
            assert_ne!(f, VALUE_FIELD);
            assert_ne!(f, "!g");
        }
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
