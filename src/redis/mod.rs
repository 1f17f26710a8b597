//! The Redis tier: the same lease guarantees on Redis, Valkey and Redis Cluster (feature `redis`).
//!
//! [`RedisStore`] keeps one Redis hash per cache key, named `"<namespace>:<key>"`:
//!
//! | hash field | holds |
//! |---|---|
//! | `!v` | the key's value: a 3-byte header (format byte `0xA1`, then the big-endian [value version](RedisOptions::value_version)), then the codec's bytes |
//! | `f:<name>` | the sub-entry (field) `<name>`, stored like `!v`; a user field always starts with `f:`, so it can never collide with internal state |
//! | `!g` | the key's generation **marker**, present only while a lease may be outstanding; while a [fill](RedisStore::get_or_fill) is in progress, followed by `\|<filler's issue time>\|<waiters flag>` |
//! | `!s` | only with [`stale_grace`](RedisOptions::stale_grace): the value the key's latest purge replaced, `<purge time, server µs>\|<stored value>`, kept for the grace and served only to callers that opt in (see [`fill`], *Stale grace*) |
//!
//! ## Leases on Redis
//!
//! Generations are *minted, not counted*. A miss in [`RedisStore::get_or_lease`] creates the
//! marker if it is absent, with a value never handed out before (server `TIME` in microseconds
//! plus a random 64-bit client nonce), and returns it in the lease, all in one script and one
//! round trip. [`RedisStore::save_with_lease`] stores only if the marker exists and equals the
//! lease (and the lease is younger than the maximum lease age). The lease carries a proof
//! computed from the marker, not the marker itself; see [`RedisLease`] for what a lease token
//! does and does not prove. Every write that fences
//! (`purge`, `insert`, `insert_with_ttl`, `purge_field`, `flush`) **deletes** the marker in the
//! same script as its effect. So anything that destroys a marker (a fencing write, TTL, eviction,
//! `FLUSHALL`, restart, failover) rejects every outstanding lease on that key; nothing can bring
//! the old value back (I1, I3). Purging an absent key fences too (I4): if no marker exists, no
//! outstanding lease can match anything ever again.
//!
//! ## Hot keys
//!
//! [`get_or_lease`](RedisStore::get_or_lease) hands every caller that misses a lease, so N
//! processes that miss a hot key together read the source N times.
//! [`get_or_fill`](RedisStore::get_or_fill) hands the lease to one *filler* at a time and tells
//! the others that a fill is in progress ([`FillLookup::InProgress`]) until the filler saves,
//! [releases](RedisStore::release_fill) the fill, a write fences it, or its lease lapses. See
//! the [`fill`] module for the protocol.
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
//! With a [stale grace](RedisOptions::stale_grace), each purge that removes a value also keeps a
//! copy of it (no larger than what it freed) for the grace.
//!
//! ## Bad stored data
//!
//! A stored value this store cannot use is treated as absent by the lease-taking reads
//! ([`get_or_lease`](RedisStore::get_or_lease), [`get_field_or_lease`](RedisStore::get_field_or_lease)):
//! they hand out a lease, so the next save replaces the value and the key heals at once instead
//! of sending every reader to the source until the TTL runs out. That covers a value the codec
//! cannot decode (a changed value type, a foreign writer), a value without the header or with
//! another [value version](RedisOptions::value_version) (bump it when the type changes in a way
//! the codec would decode silently into wrong values, such as reordered struct fields), and a
//! value larger than [`max_value_bytes`](RedisOptions::max_value_bytes) plus the header. The size
//! is checked inside the script, so an oversized value never crosses the wire. Each such value
//! is counted ([`RedisStore::unreadable_values`]). The plain reads ([`get`](RedisStore::get),
//! [`get_field`](RedisStore::get_field)) have no lease to heal with: they report
//! [`RedisStoreError::Decode`] or [`RedisStoreError::TooLarge`].
//!
//! Other programs that read or write the namespace must use the same header and codec.
//!
//! ## Errors
//!
//! [`RedisStoreError::is_transient`] is true only for failures to reach or use the server
//! (connection, I/O, timeout, `CLUSTERDOWN`, `TRYAGAIN`, `MASTERDOWN`, `LOADING`, a cluster
//! redirect the client could not follow). An error reply to one call (`WRONGTYPE` from a foreign
//! key under the namespace, `NOPERM`, `OOM`, a script error) is [`RedisStoreError::Server`] with
//! the server's code; a configuration mistake (a URL that does not parse, an invalid option) is
//! [`RedisStoreError::Config`], which names the input without its password. Every error's
//! `Display` says only its own layer; the cause is its `source()`.
//!
//! ## Scripts
//!
//! Every script declares and touches exactly one key (cluster-safe, Valkey, Dragonfly), is sent
//! with `EVALSHA` and re-sent with `EVAL` on `NOSCRIPT`. Purge scripts only free memory
//! (`UNLINK`, `HDEL`), and `insert` frees before it allocates, so purges still run at `maxmemory`
//! with `noeviction`; `UNLINK` frees a huge hash in the background instead of blocking the
//! server. [`list_fields`](RedisStore::list_fields) walks the hash with `HSCAN`, names only. Every fencing script `PUBLISH`es on [`RedisStore::invalidation_channel`]
//! atomically with its write ([`Invalidation`] decodes the payload); `flush` publishes once at
//! the end. Writes made by a [`TieredCache`](crate::tiered::TieredCache) are the exception: it
//! sequences and publishes its own invalidations on its coherence channel (see the tiered
//! module's *Coherence*), so its fencing scripts publish nothing here.
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
//!   fenced when it returns `Ok`. In cluster mode it returns `Ok` only if it reached every slot,
//!   keys that migrated while it ran included; during a failover (a master flagged failed still
//!   owns slots) or a layout that keeps changing it fails with a transient error naming what
//!   was not flushed (see [`RedisStore::flush`]).
//! - A failed call ([`RedisStoreError::Redis`], [`RedisStoreError::Timeout`],
//!   [`RedisStoreError::Server`]) may or may not have taken effect; it never panics and never
//!   waits longer than the command timeout per round trip.
//! - A lease saves only the entry (key and field) it was issued for, and only while its issue
//!   time is in the past and within `max_lease_age` by the server's clock; the script checks
//!   both, whatever the token says.
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
pub(crate) use conn::Script;
mod error;
pub mod fill;
mod floors;
mod invalidation;
mod lease;
mod options;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::Value;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Lookup;
use codec::HEADER_LEN;
use conn::{Conn, Scripts};

pub use codec::{Codec, JsonCodec, PostcardCodec};
pub use error::{CodecError, ConfigError, RedisStoreError, ServerError};
pub(crate) use fill::FillMode;
pub(crate) use fill::announced_key as fill_announced_key;
pub use fill::{FillLookup, MaybeStale};
pub use floors::RedisWriteIntent;
pub use invalidation::Invalidation;
pub use lease::RedisLease;
pub use options::RedisOptions;

/// The outcome of a save under a lease: the crate's [`Saved`](crate::Saved), the same in every
/// layer, re-exported here for the Redis tier's users.
pub use crate::saved::Saved;

/// Most scan passes of one `flush` while the cluster's slot layout keeps changing.
const FLUSH_PASSES: usize = 3;

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
    /// Whether fencing writes publish on the invalidation channel (a tiered cache writes through
    /// a handle that does not: it sequences its own invalidations).
    broadcast: bool,
}

impl<V> Clone for RedisStore<V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            broadcast: self.broadcast,
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
    value_version: u16,
    lease_secret: Option<Vec<u8>>,
    timeout: Duration,
    /// The hold-off every purge and insert applies (`RedisOptions::hold_off`).
    hold_off: Option<Duration>,
    /// How long an intent whose writer never ends it refuses saves (`RedisOptions::intent_ttl`).
    intent_ttl: Duration,
    /// Stored values treated as misses: undecodable, another format or version, or too large.
    unreadable: AtomicU64,
    /// How long a purge keeps the value it replaced (`RedisOptions::stale_grace`).
    stale_grace: Option<Duration>,
}

impl<V> Inner<V> {
    /// The stale grace in ms as a script argument ('' for none).
    fn stale_grace_ms_arg(&self) -> String {
        self.stale_grace
            .map_or_else(String::new, |g| options::millis(g).to_string())
    }
}

impl<V: Serialize + DeserializeOwned + Send + Sync + 'static> RedisStore<V> {
    /// Connects to one server (`redis://host:port/db`), reconnecting automatically after
    /// failures. Fails if the options are invalid or the server cannot be reached within the
    /// command timeout.
    pub async fn connect<C: Codec<V>>(
        url: &str,
        options: RedisOptions<C>,
    ) -> Result<Self, RedisStoreError> {
        options
            .validate()
            .map_err(|e| RedisStoreError::Config(ConfigError::new(e)))?;
        let conn = Conn::connect(url, options.command_timeout).await?;
        Ok(Self::with_conn(conn, vec![url.to_owned()], options))
    }

    /// A store on one server (`redis://host:port/db`) that does not need the server to be up:
    /// returns at once, without a round trip, and connects on first use. While the server
    /// cannot be reached every call fails with a transient error
    /// ([`RedisStoreError::is_transient`]) after at most a few connection attempts, each bounded
    /// by the command timeout; after a failure the next connection is attempted in the
    /// background, with exponential backoff, so the store recovers on its own when the server
    /// comes up. A [`TieredCache`](crate::tiered::TieredCache) built on it starts degraded
    /// (reads served by the loader) and recovers with it: see
    /// [Redis unreachable](crate::tiered#redis-unreachable).
    ///
    /// Fails at once, and never transiently, on invalid options or a URL that does not parse
    /// ([`RedisStoreError::Config`], naming the URL without its password), and when called
    /// outside a tokio runtime. Single server only: a cluster client needs a reachable node to
    /// learn the slot map ([`connect_cluster`](Self::connect_cluster)).
    pub fn connect_lazy<C: Codec<V>>(
        url: &str,
        options: RedisOptions<C>,
    ) -> Result<Self, RedisStoreError> {
        options
            .validate()
            .map_err(|e| RedisStoreError::Config(ConfigError::new(e)))?;
        let conn = Conn::connect_lazy(url, options.command_timeout)?;
        Ok(Self::with_conn(conn, vec![url.to_owned()], options))
    }

    /// Connects to a Redis Cluster through any of its nodes (`redis://host:port/`); the slot map
    /// is discovered and followed through resharding and failover.
    pub async fn connect_cluster<C: Codec<V>>(
        urls: &[&str],
        options: RedisOptions<C>,
    ) -> Result<Self, RedisStoreError> {
        options
            .validate()
            .map_err(|e| RedisStoreError::Config(ConfigError::new(e)))?;
        if urls.is_empty() {
            return Err(RedisStoreError::Config(ConfigError::new(
                "no cluster node URL",
            )));
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
                value_version: o.value_version,
                lease_secret: o.lease_secret.map(|s| s.0),
                timeout: o.command_timeout,
                hold_off: o.hold_off,
                intent_ttl: o.intent_ttl,
                unreadable: AtomicU64::new(0),
                stale_grace: o.stale_grace,
            }),
            broadcast: true,
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
        self.save(key, None, value, lease, None).await
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
        if let Some(hold_off) = self.inner.hold_off {
            return self.purge_with_hold_off(key, hold_off).await;
        }
        let payload = Invalidation::key_payload(key);
        let grace = self.inner.stale_grace_ms_arg();
        let args: [&[u8]; 3] = [self.broadcast_channel(), &payload, grace.as_bytes()];
        let reply = self.eval_on(key, Op::Purge, &args).await?;
        Ok(int_reply(&reply)? == 1)
    }

    /// Purges every key of this store's namespace (never `FLUSHDB`), fencing every lease that was
    /// outstanding when it started, then publishes a flush on the invalidation channel. Keys
    /// written while it runs may survive.
    ///
    /// In cluster mode it scans every master and returns `Ok` only if no key of the namespace
    /// that existed when it started can be left anywhere:
    /// - A master flagged failed that still owns slots fails the flush (transient
    ///   [`RedisStoreError::Redis`], whose detail names the master and its slots): its keys live
    ///   on in the replica that takes over. Once a replica took over, the old master owns no
    ///   slots and is skipped. A master that does not answer, or slots no master claims, fail it
    ///   the same way.
    /// - Keys that migrate between masters during the scan are flushed too: every master is
    ///   asked for its own slots and migrations before and after each pass, a master importing
    ///   a slot is scanned again after every other master, and the pass is repeated while the
    ///   layout changed (at most three passes; then the flush fails, naming why).
    ///
    /// A key purged on a master that then dies before replicating the purge can reappear on
    /// the replica that takes over; no flush can see that.
    ///
    /// If the final publish fails the call fails (and other processes' L1s were not told):
    /// retry it; a [`TieredCache`](crate::tiered::TieredCache) does.
    pub async fn flush(&self) -> Result<(), RedisStoreError> {
        let pattern = format!("{}:*", glob_escape(&self.inner.namespace));
        let (conn, timeout) = (&self.inner.conn, self.inner.timeout);
        let (mut nodes, mut layout) = conn.scan_nodes(timeout).await?;
        // A key that migrates between masters while the scan runs may leave a master not yet
        // scanned for one already scanned. So the pass is repeated until the slot layout was the
        // same before and after it, at most FLUSH_PASSES times.
        let mut settled = false;
        for _ in 0..FLUSH_PASSES {
            for node in &nodes {
                self.flush_node(node, &pattern)
                    .await
                    .map_err(|e| node_not_flushed(node, e))?;
                #[cfg(feature = "__test-hooks")]
                test_hooks::after_flush_node(&self.inner.namespace, node);
            }
            let (next_nodes, next_layout) = conn.scan_nodes(timeout).await?;
            if next_layout == layout {
                settled = true;
                break;
            }
            (nodes, layout) = (next_nodes, next_layout);
        }
        if !settled {
            return Err(conn::not_flushed(format!(
                "not flushed: the slot layout changed during each of {FLUSH_PASSES} passes, \
                 so keys that moved between masters may remain"
            )));
        }
        if self.broadcast {
            let mut publish = redis::cmd("PUBLISH");
            publish.arg(&self.inner.channel).arg("F");
            self.inner
                .conn
                .query::<Value>(&publish, self.inner.timeout)
                .await?;
        }
        Ok(())
    }

    /// Purges every key of the namespace that one SCAN of `node` returns, on `node` itself.
    async fn flush_node(
        &self,
        node: &conn::ScanNode,
        pattern: &str,
    ) -> Result<(), RedisStoreError> {
        let (conn, timeout) = (&self.inner.conn, self.inner.timeout);
        let mut cursor = 0;
        loop {
            let (next, keys) = conn.scan_step(node, cursor, pattern, timeout).await?;
            let purges = keys
                .iter()
                .map(|k| conn.purge_at(node, &self.inner.scripts.purge, k, timeout));
            futures_util::future::try_join_all(purges).await?;
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
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
        self.save(key, Some(field), value, lease, None).await
    }

    /// Removes sub-entry `field` of `key` and fences every outstanding lease on the **whole key**
    /// (its value and every sub-entry). Returns whether the sub-entry was removed.
    pub async fn purge_field(&self, key: &str, field: &str) -> Result<bool, RedisStoreError> {
        let f = user_field(field);
        let payload = Invalidation::key_payload(key);
        let args: [&[u8]; 3] = [f.as_bytes(), self.broadcast_channel(), &payload];
        let reply = self.eval_on(key, Op::PurgeField, &args).await?;
        Ok(int_reply(&reply)? == 1)
    }

    /// The names of the key's cached sub-entries (never internal fields), in no particular order.
    ///
    /// Walks the hash with `HSCAN` (one round trip per step of about 1000 fields, names only),
    /// so a huge hash neither blocks the server nor arrives in one reply. A name written by
    /// another program that is not UTF-8 is reported as [`RedisStoreError::NonUtf8Field`]. A
    /// sub-entry saved or purged while the walk runs may or may not be listed.
    pub async fn list_fields(&self, key: &str) -> Result<Vec<String>, RedisStoreError> {
        let mut names = Vec::new();
        let mut cursor = b"0".to_vec();
        loop {
            let args: [&[u8]; 2] = [&cursor, b"1000"];
            let reply = self.eval_on(key, Op::ListFields, &args).await?;
            let Value::Array(items) = reply else {
                return Err(protocol("list_fields", &reply));
            };
            let Some((next, batch)) = items.split_first() else {
                return Err(protocol("list_fields", &Value::Array(items)));
            };
            for name in batch {
                let raw = bytes_of(name)?;
                let raw = raw.strip_prefix(FIELD_PREFIX.as_bytes()).unwrap_or(raw);
                match std::str::from_utf8(raw) {
                    Ok(name) => names.push(name.to_owned()),
                    Err(_) => return Err(RedisStoreError::NonUtf8Field(raw.to_vec())),
                }
            }
            cursor = bytes_of(next)?.to_vec();
            if cursor == b"0" {
                return Ok(names);
            }
        }
    }

    /// How many stored values this store treated as misses because they could not be used:
    /// they did not decode, carried another format or [value
    /// version](RedisOptions::value_version), or were larger than
    /// [`max_value_bytes`](RedisOptions::max_value_bytes) (see *Bad stored data*).
    pub fn unreadable_values(&self) -> u64 {
        // Relaxed: a counter, orders nothing.
        self.inner.unreadable.load(Ordering::Relaxed)
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
    /// Writes made through a [`TieredCache`](crate::tiered::TieredCache) do not publish here
    /// (they travel, sequenced, on its coherence channel); writes through this store, including
    /// [`TieredCache::l2`](crate::tiered::TieredCache::l2), do.
    pub fn invalidation_channel(&self) -> &str {
        &self.inner.channel
    }

    /// How long a lease stays usable.
    pub fn max_lease_age(&self) -> Duration {
        self.inner.max_lease_age
    }

    // ---- internals ----

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
            Op::Get => &s.get,
            Op::ListFields => &s.list_fields,
        };
        let k = self.redis_key(key);
        self.inner
            .conn
            .eval(script, &[&k[..]], args, self.inner.timeout)
            .await
    }

    /// Runs one of another module's scripts on `keys` (EVALSHA, EVAL on `NOSCRIPT`), bounded by
    /// the command timeout.
    pub(crate) async fn eval_keys(
        &self,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<Value, RedisStoreError> {
        self.inner
            .conn
            .eval(script, keys, args, self.inner.timeout)
            .await
    }

    /// A handle on the same store whose fencing writes publish nothing on the invalidation
    /// channel (a tiered cache sequences and delivers its own invalidations; on a cluster a
    /// classic PUBLISH would be broadcast to every node).
    pub(crate) fn without_broadcast(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            broadcast: false,
        }
    }

    /// The channel fencing scripts publish on: empty (publish nothing) without broadcast.
    pub(crate) fn broadcast_channel(&self) -> &[u8] {
        if self.broadcast {
            self.inner.channel.as_bytes()
        } else {
            b""
        }
    }

    /// The master serving the hash slot of raw key `key` (`None` on a single server).
    pub(crate) async fn master_for_key(
        &self,
        key: &[u8],
    ) -> Result<Option<(String, u16)>, RedisStoreError> {
        self.inner
            .conn
            .master_for_key(key, self.inner.timeout)
            .await
    }

    async fn hget(&self, key: &str, field: &str) -> Result<Option<V>, RedisStoreError> {
        Ok(self.hget_ttl(key, field).await?.map(|(value, _)| value))
    }

    /// An entry's value and its key's remaining TTL (`None`: no TTL), if present.
    async fn hget_ttl(
        &self,
        key: &str,
        field: &str,
    ) -> Result<Option<(V, Option<Duration>)>, RedisStoreError> {
        let limit = self.stored_limit().to_string();
        let args: [&[u8]; 2] = [field.as_bytes(), limit.as_bytes()];
        let sent = Instant::now();
        let reply = self.eval_on(key, Op::Get, &args).await?;
        match &reply {
            Value::Array(items) => match items.as_slice() {
                [Value::Int(1), v, ttl] => {
                    Ok(Some((self.decode(bytes_of(v)?)?, ttl_since(ttl, sent)?)))
                }
                [Value::Int(0)] => Ok(None),
                [Value::Int(2), n] => Err(RedisStoreError::TooLarge {
                    size: usize::try_from(u64_of(n)?)
                        .unwrap_or(usize::MAX)
                        .saturating_sub(HEADER_LEN),
                    limit: self.inner.max_value_bytes,
                }),
                _ => Err(protocol("get", &reply)),
            },
            _ => Err(protocol("get", &reply)),
        }
    }

    /// The largest stored value (header included) this store reads.
    fn stored_limit(&self) -> usize {
        self.inner.max_value_bytes.saturating_add(HEADER_LEN)
    }

    /// The value of the entry, else a lease. A value that cannot be used (too large, checked in
    /// the script before it is sent; or undecodable, another format or version) is a miss: the
    /// lease it hands out lets the next save replace it.
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
        self.hget_ttl(key, VALUE_FIELD).await
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
        match self.lookup_mode(key, field, FillMode::Lease).await? {
            (FillLookup::Hit(value), ttl) => Ok((Lookup::Hit(value), ttl)),
            (FillLookup::Fill(lease), _) => Ok((Lookup::Miss(lease), None)),
            (FillLookup::InProgress { .. }, _) => Err(RedisStoreError::Protocol(
                "get_or_lease reported a fill in progress when asked for a lease".into(),
            )),
        }
    }

    /// The entry's value and remaining TTL, else a lease or (in the fill modes) "fill in
    /// progress". A value that cannot be used is a miss (see *Bad stored data*).
    pub(crate) async fn lookup_mode(
        &self,
        key: &str,
        field: Option<&str>,
        mode: FillMode,
    ) -> Result<(FillLookup<V>, Option<Duration>), RedisStoreError> {
        Ok(match self.lookup_maybe_stale(key, field, mode).await? {
            (FillLookup::Hit(MaybeStale::Fresh(value)), ttl) => (FillLookup::Hit(value), ttl),
            (FillLookup::Hit(MaybeStale::Stale { .. }), _) => {
                return Err(RedisStoreError::Protocol(
                    "get_or_lease served a stale value to a caller that did not opt in".into(),
                ));
            }
            (FillLookup::Fill(lease), ttl) => (FillLookup::Fill(lease), ttl),
            (FillLookup::InProgress { lapses_in }, ttl) => {
                (FillLookup::InProgress { lapses_in }, ttl)
            }
        })
    }

    /// [`lookup_mode`](Self::lookup_mode); in [`FillMode::FillAllowStale`], a stale value
    /// while another caller fills (see the `fill` module, *Stale grace*).
    pub(crate) async fn lookup_maybe_stale(
        &self,
        key: &str,
        field: Option<&str>,
        mode: FillMode,
    ) -> Result<(FillLookup<MaybeStale<V>>, Option<Duration>), RedisStoreError> {
        let (reply, ttl) = match self.lookup_raw(key, field, false, mode).await? {
            RawLookup::Hit { value, ttl } => (value, ttl),
            RawLookup::Miss { lease, skipped } => {
                if skipped {
                    self.count_unreadable();
                }
                return Ok((FillLookup::Fill(lease), None));
            }
            RawLookup::Busy { left } => {
                return Ok((FillLookup::InProgress { lapses_in: left }, None));
            }
            RawLookup::Stale { left, value, ago } => {
                return Ok((self.decode_stale(&value, left, ago)?, None));
            }
            RawLookup::NotDue => return Err(not_due()),
        };
        match self.decode(bytes_of(&reply)?) {
            Ok(value) => Ok((FillLookup::Hit(MaybeStale::Fresh(value)), ttl)),
            Err(_) => {
                self.count_unreadable();
                match self.lookup_raw(key, field, true, mode).await? {
                    RawLookup::Miss { lease, .. } => Ok((FillLookup::Fill(lease), None)),
                    RawLookup::Busy { left } => {
                        Ok((FillLookup::InProgress { lapses_in: left }, None))
                    }
                    RawLookup::Stale { left, value, ago } => {
                        Ok((self.decode_stale(&value, left, ago)?, None))
                    }
                    RawLookup::Hit { .. } => Err(RedisStoreError::Protocol(
                        "get_or_lease returned a value when told to skip it".into(),
                    )),
                    RawLookup::NotDue => Err(not_due()),
                }
            }
        }
    }

    /// A stale value as served, or "fill in progress" if it cannot be used.
    fn decode_stale(
        &self,
        value: &Value,
        left: Duration,
        ago: Duration,
    ) -> Result<FillLookup<MaybeStale<V>>, RedisStoreError> {
        Ok(match self.decode(bytes_of(value)?) {
            Ok(value) => FillLookup::Hit(MaybeStale::Stale {
                value,
                replaced_ago: ago,
            }),
            Err(_) => {
                self.count_unreadable();
                FillLookup::InProgress { lapses_in: left }
            }
        })
    }

    fn count_unreadable(&self) {
        // Relaxed: a counter, orders nothing.
        self.inner.unreadable.fetch_add(1, Ordering::Relaxed);
    }

    async fn lookup_raw(
        &self,
        key: &str,
        field: Option<&str>,
        skip_value: bool,
        mode: FillMode,
    ) -> Result<RawLookup, RedisStoreError> {
        self.lookup_raw_due(key, field, skip_value, mode, None)
            .await
    }

    /// `lookup_raw`; with `due_within`, a refresh ahead of expiry that answers
    /// [`RawLookup::NotDue`] if the key has more TTL left than that.
    async fn lookup_raw_due(
        &self,
        key: &str,
        field: Option<&str>,
        skip_value: bool,
        mode: FillMode,
        due_within: Option<Duration>,
    ) -> Result<RawLookup, RedisStoreError> {
        let hash_field = field.map_or_else(|| VALUE_FIELD.to_owned(), user_field);
        let nonce = format!("{:016x}", rand::random::<u64>());
        let marker_ms = options::millis(self.inner.max_lease_age).to_string();
        let limit = self.stored_limit().to_string();
        let due = due_within.map_or_else(String::new, |d| options::millis(d).to_string());
        let grace = match (mode, self.inner.stale_grace) {
            (FillMode::FillAllowStale, Some(g)) => {
                u64::try_from(g.as_micros()).unwrap_or(u64::MAX).to_string()
            }
            _ => String::new(),
        };
        let args: [&[u8]; 8] = [
            hash_field.as_bytes(),
            nonce.as_bytes(),
            marker_ms.as_bytes(),
            limit.as_bytes(),
            if skip_value { b"1" } else { b"0" },
            mode.arg(),
            due.as_bytes(),
            grace.as_bytes(),
        ];
        let sent = Instant::now();
        let reply = self.eval_on(key, Op::GetOrLease, &args).await?;
        let mut items = match reply {
            Value::Array(items) => items,
            other => return Err(protocol("get_or_lease", &other)),
        };
        if let [Value::Int(1), v, ttl] = items.as_mut_slice() {
            let ttl = ttl_since(ttl, sent)?;
            // Moved out, not copied: the hit path decodes straight from the reply.
            let value = std::mem::replace(v, Value::Nil);
            return Ok(RawLookup::Hit { value, ttl });
        }
        if let [Value::Int(5), ms, v, ago] = items.as_mut_slice() {
            let left = Duration::from_millis(u64_of(ms)?);
            let ago = Duration::from_micros(u64_of(ago)?);
            let value = std::mem::replace(v, Value::Nil);
            return Ok(RawLookup::Stale { left, value, ago });
        }
        match items.as_slice() {
            [Value::Int(4)] => Ok(RawLookup::NotDue),
            [Value::Int(3), ms] => Ok(RawLookup::Busy {
                left: Duration::from_millis(u64_of(ms)?),
            }),
            [Value::Int(0), proof, s, us, skipped] => {
                let proof = String::from_utf8(bytes_of(proof)?.to_vec())
                    .map_err(|_| RedisStoreError::Protocol("non-UTF-8 lease proof".into()))?;
                let mut lease = RedisLease::new(
                    &self.inner.namespace,
                    key,
                    field,
                    proof,
                    u64_of(s)?,
                    u64_of(us)?,
                );
                if let Some(secret) = &self.inner.lease_secret {
                    lease = lease.signed(secret);
                }
                Ok(RawLookup::Miss {
                    lease,
                    skipped: u64_of(skipped)? > 0,
                })
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
        position: Option<u64>,
    ) -> Result<Saved, RedisStoreError> {
        self.save_as(key, field, value, lease, position, false)
            .await
    }

    /// `save`; `refresh` restarts the key's TTL (a refresh ahead of expiry, see `fill.rs`).
    async fn save_as(
        &self,
        key: &str,
        field: Option<&str>,
        value: &V,
        lease: &RedisLease,
        position: Option<u64>,
        refresh: bool,
    ) -> Result<Saved, RedisStoreError> {
        if let Some(secret) = &self.inner.lease_secret {
            if !lease.verify(secret) {
                return Err(RedisStoreError::InvalidLease(
                    "not signed with this store's lease secret",
                ));
            }
        }
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
        let position = position.map_or_else(String::new, floors::position_arg);
        let announce = fill::announcement(key);
        let args: [&[u8]; 11] = [
            hash_field.as_bytes(),
            &bytes,
            lease.generation().as_bytes(),
            s.as_bytes(),
            us.as_bytes(),
            max_age_us.as_bytes(),
            ttl.as_bytes(),
            position.as_bytes(),
            self.inner.channel.as_bytes(),
            &announce,
            if refresh { b"1" } else { b"0" },
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
        if self.inner.hold_off.is_some() {
            return self.insert_holding_off(key, &bytes, ttl_ms).await;
        }
        let ttl = ttl_ms.to_string();
        let payload = Invalidation::key_payload(key);
        let args: [&[u8]; 4] = [&bytes, ttl.as_bytes(), self.broadcast_channel(), &payload];
        self.eval_on(key, Op::Insert, &args).await?;
        Ok(())
    }

    /// The stored form of `value`: the header, then the codec's bytes.
    fn encode(&self, value: &V) -> Result<Vec<u8>, RedisStoreError> {
        let body = self
            .inner
            .codec
            .encode(value)
            .map_err(RedisStoreError::Encode)?;
        if body.len() > self.inner.max_value_bytes {
            return Err(RedisStoreError::TooLarge {
                size: body.len(),
                limit: self.inner.max_value_bytes,
            });
        }
        let mut stored = Vec::with_capacity(HEADER_LEN + body.len());
        stored.extend_from_slice(&codec::header(self.inner.value_version));
        stored.extend_from_slice(&body);
        Ok(stored)
    }

    fn decode(&self, stored: &[u8]) -> Result<V, RedisStoreError> {
        let body = codec::strip_header(stored, self.inner.value_version)
            .map_err(RedisStoreError::Decode)?;
        self.inner
            .codec
            .decode(body)
            .map_err(RedisStoreError::Decode)
    }
}

/// What `get_or_lease.lua` answered, before decoding.
enum RawLookup {
    /// The stored bytes and the key's remaining TTL.
    Hit { value: Value, ttl: Option<Duration> },
    Miss {
        lease: RedisLease,
        /// A present value was skipped because it was too large.
        skipped: bool,
    },
    /// Another caller's fill lease has this long left.
    Busy { left: Duration },
    /// As `Busy`, with the value the last purge replaced that long ago (an opted-in caller).
    Stale {
        left: Duration,
        value: Value,
        ago: Duration,
    },
    /// A refresh ahead of expiry found the key not due (another caller refreshed it).
    NotDue,
}

#[derive(Clone, Copy)]
enum Op {
    GetOrLease,
    Save,
    Insert,
    Purge,
    PurgeField,
    Get,
    ListFields,
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

/// A "not due" reply to a lookup that asked no refresh question.
/// A transient failure while flushing cluster master `node`, turned into an error whose detail
/// names the master whose keys were not (all) flushed; other errors are returned as they are.
fn node_not_flushed(node: &conn::ScanNode, e: RedisStoreError) -> RedisStoreError {
    let conn::ScanNode::Master { host, port } = node else {
        return e;
    };
    if !e.is_transient() {
        return e;
    }
    // The cause's own chain (not `e`'s text: the wrapper displays the same words).
    let mut cause = std::error::Error::source(&e);
    let mut why = cause.map_or_else(|| e.to_string(), ToString::to_string);
    cause = cause.and_then(std::error::Error::source);
    while let Some(c) = cause {
        why.push_str(": ");
        why.push_str(&c.to_string());
        cause = c.source();
    }
    conn::not_flushed(format!(
        "not flushed: keys on master {host}:{port} (it failed: {why})"
    ))
}

/// Test-only hooks of `flush` (the unadvertised `__test-hooks` feature).
#[cfg(feature = "__test-hooks")]
pub mod test_hooks {
    use std::sync::Mutex;

    type Hook = Box<dyn FnMut(u16) + Send>;

    static AFTER_FLUSH_NODE: Mutex<Vec<(String, Hook)>> = Mutex::new(Vec::new());

    /// Runs `hook` (blocking the flush; a multi-threaded tokio runtime is required) with the port of each cluster master right after a
    /// `flush` of namespace `namespace` scanned it, until [`clear`] is called for it.
    pub fn set_after_flush_node(namespace: &str, hook: impl FnMut(u16) + Send + 'static) {
        let mut hooks = AFTER_FLUSH_NODE.lock().unwrap_or_else(|e| e.into_inner());
        hooks.push((namespace.to_owned(), Box::new(hook)));
    }

    /// Removes the hooks of namespace `namespace`.
    pub fn clear(namespace: &str) {
        let mut hooks = AFTER_FLUSH_NODE.lock().unwrap_or_else(|e| e.into_inner());
        hooks.retain(|(ns, _)| ns != namespace);
    }

    pub(super) fn after_flush_node(namespace: &str, node: &super::conn::ScanNode) {
        let super::conn::ScanNode::Master { port, .. } = node else {
            return;
        };
        let mut hooks = AFTER_FLUSH_NODE.lock().unwrap_or_else(|e| e.into_inner());
        for (ns, hook) in hooks.iter_mut() {
            if ns == namespace {
                // The hook blocks (it runs redis-cli): let the runtime move its other tasks
                // (the cluster connection's) to another worker meanwhile.
                tokio::task::block_in_place(|| hook(*port));
            }
        }
    }
}

fn not_due() -> RedisStoreError {
    RedisStoreError::Protocol("get_or_lease answered \"not due\" to a plain lookup".into())
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

/// A `PTTL` reply read by a request sent at `sent`, as the TTL left from now: less the time the
/// reply took to arrive, so that an entry capped by it never outlives the Redis entry.
fn ttl_since(v: &Value, sent: Instant) -> Result<Option<Duration>, RedisStoreError> {
    Ok(ttl_of(v)?.map(|ttl| ttl.saturating_sub(sent.elapsed())))
}

/// A `PTTL` reply: `Some(remaining)`, `None` for no TTL (-1), zero for a key gone meanwhile (-2).
fn ttl_of(v: &Value) -> Result<Option<Duration>, RedisStoreError> {
    match v {
        Value::Int(-1) => Ok(None),
        Value::Int(ms) => Ok(Some(Duration::from_millis(u64::try_from(*ms).unwrap_or(0)))),
        other => Err(protocol("PTTL", other)),
    }
}

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
