//! Fleet coherence: what a tiered write waits for, and when an instance may serve its L1.
//!
//! # The protocol, top-down
//!
//! Every tiered write (`purge`, `insert`, `flush`) runs its fencing script on Redis (through a
//! store handle whose scripts publish nothing, unlike a bare [`RedisStore`]'s), purges the
//! writer's own L1, then runs `publish.lua` on the namespace's *coherence keys* (one hash slot,
//! so one node on a cluster): it advances the namespace's **sequence** and publishes
//! `#<seq> <invalidation>` on the coherence channel, in one script. If that script fails, the
//! write is queued as pending, and its retry runs the fencing script and `publish.lua` again.
//!
//! The coherence channel `leasecache:{<namespace>}:coherence` shares the keys' hash tag. Every
//! script that publishes on it (`publish`, `renew`, `token`) uses `SPUBLISH` when the server
//! running it is Redis 7 or later (`redis.REDIS_VERSION_NUM`), else `PUBLISH`; `join` and
//! `token` report which, and the feed subscribes to match (see `feed.rs`): sharded messages
//! come from the slot's master alone, never over the cluster bus. Each instance's feed
//! subscribes to the coherence channel and to the store's channel (bare stores' writes) on one
//! connection, so the coherence messages reach it in the order that server published them.
//!
//! An instance's feed applies sequenced invalidations in order and tracks `w`, the highest
//! sequence up to which it applied *every* one. A gap (or a sequence going backwards after the
//! instance has seen one past its start, as after a Redis restart) flushes the L1 and is counted:
//! everything the missing messages invalidated was written before the message that revealed the
//! gap, so a flushed L1 refilled from Redis after that point is current, and `w` may jump.
//!
//! **Strict.** Each instance is a *member* with a lease in Redis (`members`: id -> expiry in
//! server milliseconds), judged by two clocks that never need to agree. The server's clock
//! decides when a silent member has lapsed (for writers). The member's own coarse monotonic
//! clock decides when it may serve: a renewal sent at local time `t0` lets it serve until
//! `t0 + lease - margin`, checked on every L1 read, so a process paused past its lease (SIGSTOP,
//! a starved runtime) stops serving the moment it resumes. `t0` precedes the server's receipt,
//! so the member stops first as long as the clocks' *rates* differ by less than the margin.
//!
//! A member joins after its subscription is confirmed (`join.lua` registers it and returns the
//! sequence it starts from, atomically), with an empty L1. The feed task acknowledges `w` with
//! `renew.lua` whenever it advances (one in flight at a time: a high-water mark, so a burst of
//! invalidations costs one round trip), and every `lease / 4` when idle. The ack is stored (the
//! `acks` hash) and sent, as `A<id> <w>`, only to the writers waiting for a sequence this member
//! had not acknowledged before: `publish.lua` records a writer that has members to wait for in
//! `waits` (writer id -> the latest sequence it waits for), and `renew.lua` publishes the ack on
//! the acknowledgement channel of each writer in `waits` above the member's previous ack
//! (`leasecache:{<namespace>}:coherence:ack:<writer id>`, same hash tag, so the same shard;
//! each feed subscribes to its own on the coherence connection). So a purge with `N` instances
//! costs `N` deliveries of the invalidation and `N - 1` acks to the writer, where broadcasting
//! every ack on the coherence channel cost `N + N^2` deliveries and woke every instance once per
//! member. A writer's own ack goes nowhere unless another writer waits. It renews the lease
//! only if `w` covers everything published before the member's previous renewal, so a member
//! that cannot keep up lapses instead of stalling writers; a member whose lease had already
//! lapsed on the server is told so, flushes its L1 and joins again. Only the feed task renews:
//! a dead, stuck or starved feed lets the lease run out.
//!
//! A writer waits, after `publish.lua` returned its sequence `s` and the members that were live
//! then, until each of them has acknowledged `w >= s` (seen through its own feed, on its
//! acknowledgement channel) or has lapsed by the server's clock (asked with `check.lua` when its
//! lease should have run out, and every 100 ms in case this writer's feed is down). The wait is
//! bounded by the member lease; a writer that gives up returns
//! [`TieredError::Unacknowledged`](super::TieredError::Unacknowledged).
//!
//! Mixed versions (a rolling upgrade from before acknowledgement channels): members of the
//! earlier version still broadcast `A<id> <w>` on the coherence channel, and writers of this
//! version still take acks from there; writers of the earlier version do not register in `waits`,
//! so members of this version send them nothing, and they learn of those members' acks from the
//! `acks` hash, which `check.lua` reads every 100 ms: their purges stay correct but wait up to
//! about 100 ms longer until the upgrade is complete. `waits` entries of instances an earlier
//! version forgot are dropped at the next ack that would go to them.
//!
//! **Bounded(d).** Writes do not wait. The feed publishes a token `T<id> <n>` through
//! `token.lua` (on the node that sequences invalidations) every `d / 4`; receiving its own token
//! back, sent at local time `t0`, proves every invalidation sequenced before it was applied, so
//! the instance may serve its L1 until `t0 + d - margin`.
//!
//! Either way, an instance whose feed task ended stops serving at once (a guard in the task),
//! and in any case when its lease or proof runs out.

use super::TieredKey;
use super::{Shared, TieredError, bump};
use crate::redis::{Invalidation, RedisStore, RedisStoreError, Script};
use crate::sync::{AtomicU64, Mutex, Ordering};
use redis::Value;
use serde::{Serialize, de::DeserializeOwned};
use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::pin::pin;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// What a tiered write guarantees about the other instances' L1s when it returns.
///
/// See the [tiered module docs](super#coherence) for the exact guarantees.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Coherence {
    /// A write returns only when every live instance of the namespace has applied its
    /// invalidation, or can no longer serve from its L1 (its member lease lapsed). The default.
    #[default]
    Strict,
    /// A write returns after Redis; an instance serves from its L1 only while it holds proof, no
    /// older than this bound, that it has applied every invalidation published before the proof.
    Bounded(Duration),
}

/// Milliseconds of the process's coarse monotonic clock (a vDSO read of a few nanoseconds on
/// Linux; it advances while the process is stopped). Lags true time by at most one tick
/// ([`coarse_tick_ms`]).
#[cfg(target_os = "linux")]
pub(crate) fn coarse_now_ms() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1000 + nanos / 1_000_000
}

/// The coarse clock's resolution in milliseconds, rounded up.
#[cfg(target_os = "linux")]
pub(crate) fn coarse_tick_ms() -> u64 {
    let ts = rustix::time::clock_getres(rustix::time::ClockId::MonotonicCoarse);
    let nanos = u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0));
    nanos.div_ceil(1_000_000).max(1)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn coarse_now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn coarse_tick_ms() -> u64 {
    1
}

struct Scripts {
    publish: Script,
    check: Script,
    join: Script,
    renew: Script,
    leave: Script,
    token: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            publish: Script::new(include_str!("lua/publish.lua")),
            check: Script::new(include_str!("lua/check.lua")),
            join: Script::new(include_str!("lua/join.lua")),
            renew: Script::new(include_str!("lua/renew.lua")),
            leave: Script::new(include_str!("lua/leave.lua")),
            token: Script::new(include_str!("lua/token.lua")),
        }
    }
}

/// What `renew.lua` answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Renewed {
    /// The lease was renewed from the time the renewal was sent.
    Yes,
    /// Acknowledged but not renewed: the member is behind.
    Behind,
    /// The lease had lapsed on the server: flush and join again.
    Lapsed,
}

/// The coherence state of one [`TieredCache`](super::TieredCache), shared by its operations and
/// its feed task.
pub(crate) struct Coordinator {
    pub(crate) mode: Coherence,
    pub(crate) id: String,
    pub(crate) lease: Duration,
    margin_ms: u64,
    /// Coarse-clock millisecond until which the L1 may be served; 0 = not serving.
    serve_until: AtomicU64,
    pub(crate) channel: String,
    /// `b"1"`: the scripts publish with PUBLISH even on Redis 7+ (a test hook, so that the
    /// classic path of older servers is tested on a new one); `b"0"`: by the server's version.
    classic: &'static [u8],
    seq_key: String,
    members_key: String,
    acks_key: String,
    need_key: String,
    /// Writers waiting for acknowledgements: id -> the latest sequence waited for.
    waits_key: String,
    /// The start of every instance's acknowledgement channel (its id completes it).
    ack_prefix: String,
    /// This instance's acknowledgement channel: where members send the acks it waits for.
    pub(crate) ack_channel: String,
    scripts: Scripts,
    /// The latest acknowledgement seen from each member (from this instance's acknowledgement
    /// channel, or from the coherence channel where members of earlier versions broadcast them).
    acks: Mutex<HashMap<String, u64>>,
    acked: Notify,
    /// Strict: sequences of this instance's own writes not yet passed by its feed (at most
    /// [`MAX_OWN`]). No other writer waits for them, so the feed need not acknowledge them at
    /// once (see [`Coordinator::only_own`]).
    own: Mutex<BTreeSet<u64>>,
}

/// At most this many own sequences are remembered (the feed prunes them as it passes them).
const MAX_OWN: usize = 1024;

/// How often a writer asks Redis directly, in case its own feed does not bring the acks.
const RECHECK: Duration = Duration::from_millis(100);

impl Coordinator {
    pub(crate) fn new(mode: Coherence, lease: Duration, namespace: &str) -> Self {
        let window = match mode {
            Coherence::Strict => lease,
            Coherence::Bounded(d) => d,
        };
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let tag = format!("leasecache:{{{namespace}}}");
        let id = format!("{:016x}", rand::random::<u64>());
        // Starts with the keys' hash tag: a shard channel in their slot (see `renew.lua`).
        let ack_prefix = format!("{tag}:coherence:ack:");
        Self {
            mode,
            ack_channel: format!("{ack_prefix}{id}"),
            ack_prefix,
            id,
            lease,
            // A tenth of the window for clock-rate drift, plus one tick of the coarse clock
            // (whose readings lag true time by up to a tick).
            margin_ms: window_ms / 10 + coarse_tick_ms(),
            serve_until: AtomicU64::new(0),
            // Starts with the keys' hash tag: a shard channel in their slot (see `publish.lua`).
            channel: format!("{tag}:coherence"),
            classic: b"0",
            seq_key: format!("{tag}:seq"),
            members_key: format!("{tag}:members"),
            acks_key: format!("{tag}:acks"),
            need_key: format!("{tag}:need"),
            waits_key: format!("{tag}:waits"),
            scripts: Scripts::new(),
            acks: Mutex::new(HashMap::new()),
            acked: Notify::new(),
            own: Mutex::new(BTreeSet::new()),
        }
    }

    /// Makes every coherence script publish with PUBLISH, whatever the server's version.
    #[cfg(feature = "__test-hooks")]
    pub(crate) fn force_classic(&mut self) {
        self.classic = b"1";
    }

    /// Whether the L1 may be served now (checked on every L1 read, against the clock).
    #[inline]
    pub(crate) fn serving(&self) -> bool {
        // Acquire pairs with the Release stores in `extend` / `stop_serving`.
        coarse_now_ms() < self.serve_until.load(Ordering::Acquire)
    }

    /// Stops serving the L1 until the next renewal or proof.
    pub(crate) fn stop_serving(&self) {
        // Release pairs with the Acquire load in `serving`.
        self.serve_until.store(0, Ordering::Release);
    }

    /// Lets the L1 be served until `window - margin` after `sent` (coarse ms), the local time a
    /// renewal or token was sent.
    pub(crate) fn extend(&self, sent: u64, window: Duration) {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let until = sent.saturating_add(window_ms.saturating_sub(self.margin_ms));
        // Release pairs with the Acquire load in `serving`.
        self.serve_until.fetch_max(until, Ordering::Release);
    }

    async fn eval<V>(
        &self,
        store: &RedisStore<V>,
        script: &Script,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<Value, RedisStoreError>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        store.eval_keys(script, &keys, args).await
    }

    /// Advances the sequence and publishes `invalidation` with it. In Strict mode also returns the
    /// live members (other than this one) and the milliseconds left on their leases.
    pub(crate) async fn publish<V>(
        &self,
        store: &RedisStore<V>,
        invalidation: &[u8],
    ) -> Result<(u64, Vec<(String, u64)>), RedisStoreError>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let strict: &[u8] = if self.mode == Coherence::Strict {
            b"1"
        } else {
            b"0"
        };
        let keys = [
            &*self.seq_key,
            &*self.members_key,
            &*self.acks_key,
            &*self.waits_key,
        ];
        let args = [
            self.channel.as_bytes(),
            invalidation,
            self.id.as_bytes(),
            strict,
            self.classic,
        ];
        let reply = self
            .eval(store, &self.scripts.publish, &keys, &args)
            .await?;
        let items = array(reply)?;
        let (first, rest) = items
            .split_first()
            .ok_or_else(|| protocol("publish returned nothing"))?;
        Ok((int(first)?, pairs(rest)?))
    }

    /// Waits until every member of `pending` acknowledged `seq` or lapsed, at most one member
    /// lease. `Err(n)`: `n` members did neither in time.
    pub(crate) async fn wait_for_acks<V>(
        &self,
        store: &RedisStore<V>,
        seq: u64,
        mut pending: Vec<(String, u64)>,
    ) -> Result<(), usize>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        // `pending`'s lease times were read by the server before this point, so a lapse judged
        // from here is never early. The bound leaves room for the last check's round trip.
        let start = Instant::now();
        let give_up = start + self.lease + RECHECK;
        let mut asked = start;
        loop {
            let mut notified = pin!(self.acked.notified());
            // Registered before the table is read: an ack recorded after this read wakes us.
            notified.as_mut().enable();
            {
                let acks = self.acks.lock();
                pending.retain(|(id, _)| acks.get(id).is_none_or(|&w| w < seq));
            }
            if pending.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= give_up {
                return Err(pending.len());
            }
            // When the first pending lease runs out by the server's clock (plus a millisecond:
            // our clock started after the server's reading), or the periodic recheck.
            let lapse = pending.iter().map(|(_, ms)| *ms).min().unwrap_or(0);
            let due = (asked + Duration::from_millis(lapse + 1))
                .min(now + RECHECK)
                .min(give_up);
            tokio::select! {
                () = notified => continue,
                () = tokio::time::sleep_until(due.into()) => {}
            }
            if Instant::now() >= give_up {
                continue; // one last look at the table above
            }
            // On an error (Redis unreachable) keep waiting on the feed until the bound.
            if let Ok(still) = self.check(store, seq, &pending).await {
                pending = still;
            }
            asked = Instant::now();
        }
    }

    async fn check<V>(
        &self,
        store: &RedisStore<V>,
        seq: u64,
        pending: &[(String, u64)],
    ) -> Result<Vec<(String, u64)>, RedisStoreError>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let seq = seq.to_string();
        let mut args: Vec<&[u8]> = vec![seq.as_bytes()];
        args.extend(pending.iter().map(|(id, _)| id.as_bytes()));
        let keys = [&*self.members_key, &*self.acks_key];
        let reply = self.eval(store, &self.scripts.check, &keys, &args).await?;
        pairs(&array(reply)?)
    }

    /// Registers this instance as a member; returns the sequence it starts from and whether the
    /// server publishes coherence messages as shard messages ([`Start`]).
    pub(crate) async fn join<V>(&self, store: &RedisStore<V>) -> Result<Start, RedisStoreError>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let keys = [
            &*self.seq_key,
            &*self.members_key,
            &*self.acks_key,
            &*self.need_key,
            &*self.waits_key,
        ];
        let lease = self.lease.as_millis().to_string();
        let args = [self.id.as_bytes(), lease.as_bytes(), self.classic];
        let sent = coarse_now_ms();
        let start = Start::parse(self.eval(store, &self.scripts.join, &keys, &args).await?)?;
        self.extend(sent, self.lease);
        Ok(start)
    }

    /// Acknowledges `applied` and renews the lease if the member keeps up.
    pub(crate) async fn renew<V>(
        &self,
        store: &RedisStore<V>,
        applied: u64,
    ) -> Result<Renewed, RedisStoreError>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let keys = [
            &*self.seq_key,
            &*self.members_key,
            &*self.acks_key,
            &*self.need_key,
            &*self.waits_key,
        ];
        let (w, lease) = (applied.to_string(), self.lease.as_millis().to_string());
        let args = [
            self.id.as_bytes(),
            w.as_bytes(),
            lease.as_bytes(),
            self.ack_prefix.as_bytes(),
            self.classic,
        ];
        let sent = coarse_now_ms();
        let reply = self.eval(store, &self.scripts.renew, &keys, &args).await?;
        match reply {
            Value::Int(1) => {
                self.extend(sent, self.lease);
                Ok(Renewed::Yes)
            }
            Value::Int(0) => Ok(Renewed::Behind),
            Value::Int(-1) => Ok(Renewed::Lapsed),
            other => Err(protocol(&format!("renew returned {other:?}"))),
        }
    }

    /// Removes this member, so that no writer waits for it. Call only once the L1 is no longer
    /// served.
    pub(crate) async fn leave<V>(&self, store: &RedisStore<V>) -> Result<(), RedisStoreError>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let keys = [
            &*self.members_key,
            &*self.acks_key,
            &*self.need_key,
            &*self.waits_key,
        ];
        self.eval(store, &self.scripts.leave, &keys, &[self.id.as_bytes()])
            .await
            .map(drop)
    }

    /// Publishes token `n` (none if `n` is `None`) on the coherence channel from the sequencing
    /// node; returns the current sequence and how that node publishes.
    pub(crate) async fn token<V>(
        &self,
        store: &RedisStore<V>,
        n: Option<u64>,
    ) -> Result<Start, RedisStoreError>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let payload = n.map_or_else(String::new, |n| format!("T{} {n}", self.id));
        let args = [self.channel.as_bytes(), payload.as_bytes(), self.classic];
        Start::parse(
            self.eval(store, &self.scripts.token, &[&*self.seq_key], &args)
                .await?,
        )
    }

    /// The key whose hash slot holds every coherence key and the coherence channel.
    pub(crate) fn slot_key(&self) -> &str {
        &self.seq_key
    }

    /// Records an acknowledgement `A<id> <w>` seen on this instance's acknowledgement channel
    /// (or broadcast on the coherence channel by a member of an earlier version); wakes waiting
    /// writers.
    pub(crate) fn on_ack(&self, body: &[u8]) {
        let Some((id, w)) = split_id(body) else {
            return;
        };
        self.acks.lock().insert(id.to_owned(), w);
        self.acked.notify_waiters();
    }

    /// Remembers `seq` as the sequence of one of this instance's own writes.
    pub(crate) fn note_own(&self, seq: u64) {
        let mut own = self.own.lock();
        own.insert(seq);
        if own.len() > MAX_OWN {
            own.pop_first();
        }
    }

    /// Whether every sequence in `(from, to]` is one of this instance's own writes, which no
    /// other writer waits for: the feed may then leave its acknowledgement to the next periodic
    /// renewal. Forgets the own sequences up to `to`. `false` (acknowledge now) when in doubt,
    /// as when the feed applies an own write before the writer has noted its sequence.
    pub(crate) fn only_own(&self, from: u64, to: u64) -> bool {
        let mut own = self.own.lock();
        let all = to > from
            && usize::try_from(to - from).is_ok_and(|n| n <= own.len())
            && (from + 1..=to).all(|s| own.contains(&s));
        *own = own.split_off(&to.saturating_add(1));
        all
    }

    /// Whether `T<id> <n>` (given without the `T`) is this instance's token; its number if so.
    pub(crate) fn own_token(&self, body: &[u8]) -> Option<u64> {
        split_id(body).and_then(|(id, n)| (id == self.id).then_some(n))
    }
}

impl<K, V> Shared<K, V>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Applies a sequenced invalidation (`#<seq> <payload>`) and advances `applied`; a gap flushes
    /// the L1 and is counted. `false` (nothing applied) if the message is unreadable.
    pub(crate) fn apply_sequenced(&self, payload: &[u8], applied: &mut Applied) -> bool {
        let Some((seq, invalidation)) = Invalidation::parse_sequenced(payload) else {
            return false;
        };
        match invalidation {
            Invalidation::Key(key) => self.purge_l1_redis_key(&key),
            _ => self.l1.flush(),
        }
        if applied.step(seq) == Step::Gap {
            bump(&self.counters.sequence_gaps);
            self.l1.flush();
            log_warn!(seq, "invalidations missing or out of order: L1 flushed");
        }
        // Release pairs with the Acquire load in `stats`.
        self.counters.invalidations.fetch_add(1, Ordering::Release);
        true
    }

    /// After a write landed in Redis and in this L1: sequences its invalidation and, in Strict
    /// mode, waits for the other members' acknowledgements or lapses.
    pub(super) async fn cohere(&self, invalidation: &[u8]) -> Result<(), TieredError> {
        let c = &self.coherence;
        let (seq, pending) = match c.publish(&self.l2, invalidation).await {
            Ok(published) => published,
            // The write landed but no other instance was told: a transient failure queues the
            // removal again (its retry sequences the invalidation; see `pending.rs`), so that
            // no L1 keeps the old value for want of a message.
            Err(e) => {
                let retry = match Invalidation::parse(invalidation) {
                    Some(Invalidation::Key(key)) => super::pending::Op::Purge(key),
                    _ => super::pending::Op::Flush,
                };
                return Err(self.write_failed(e, retry));
            }
        };
        if c.mode == Coherence::Strict {
            c.note_own(seq);
        }
        if pending.is_empty() {
            return Ok(());
        }
        c.wait_for_acks(&self.l2, seq, pending)
            .await
            .map_err(|instances| {
                bump(&self.counters.unacknowledged);
                log_warn!(
                    instances,
                    "write not acknowledged by every instance within the member lease"
                );
                TieredError::Unacknowledged { instances }
            })
    }
}

/// `<id> <n>` -> `(id, n)`.
fn split_id(body: &[u8]) -> Option<(&str, u64)> {
    let text = std::str::from_utf8(body).ok()?;
    let (id, n) = text.split_once(' ')?;
    Some((id, n.parse().ok()?))
}

/// What `join.lua` and `token.lua` report: the current sequence, and whether the server that
/// runs the coherence scripts publishes with SPUBLISH (Redis 7 and later) or PUBLISH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Start {
    pub(crate) seq: u64,
    pub(crate) sharded: bool,
}

impl Start {
    fn parse(reply: Value) -> Result<Self, RedisStoreError> {
        match array(reply)?.as_slice() {
            [seq, sharded] => Ok(Self {
                seq: int(seq)?,
                sharded: int(sharded)? == 1,
            }),
            other => Err(protocol(&format!("expected [seq, sharded], got {other:?}"))),
        }
    }
}

/// Where a sequenced invalidation leaves the feed's applied high-water mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The next one: the mark advanced.
    Next,
    /// Published before this instance's starting point: already reflected.
    Old,
    /// Something was lost (or the sequence went backwards): the L1 must be flushed.
    Gap,
}

/// The feed's applied high-water mark: the highest sequence up to which every sequenced
/// invalidation was applied.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Applied {
    pub(crate) mark: u64,
    moved: bool,
}

impl Applied {
    /// Starts from `baseline` (everything up to it is reflected in an empty L1).
    pub(crate) fn start(baseline: u64) -> Self {
        Self {
            mark: baseline,
            moved: false,
        }
    }

    /// Accounts for sequenced invalidation `seq`, already applied to the L1.
    pub(crate) fn step(&mut self, seq: u64) -> Step {
        if seq == self.mark.wrapping_add(1) {
            self.mark = seq;
            self.moved = true;
            Step::Next
        } else if seq <= self.mark && !self.moved {
            // Published between the subscription and the baseline: before our starting point.
            Step::Old
        } else {
            self.mark = seq;
            self.moved = true;
            Step::Gap
        }
    }
}

fn protocol(what: &str) -> RedisStoreError {
    RedisStoreError::Protocol(format!("coherence: {what}"))
}

fn array(v: Value) -> Result<Vec<Value>, RedisStoreError> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(protocol(&format!("expected an array, got {other:?}"))),
    }
}

fn int(v: &Value) -> Result<u64, RedisStoreError> {
    match v {
        Value::Int(i) => u64::try_from(*i).map_err(|_| protocol("negative integer")),
        other => Err(protocol(&format!("expected an integer, got {other:?}"))),
    }
}

/// `[id, ms, id, ms, ...]` -> pairs.
fn pairs(items: &[Value]) -> Result<Vec<(String, u64)>, RedisStoreError> {
    items
        .chunks(2)
        .map(|pair| match pair {
            [Value::BulkString(id), ms] => Ok((String::from_utf8_lossy(id).into_owned(), int(ms)?)),
            _ => Err(protocol("malformed member list")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_mark_advances_only_through_contiguous_sequences() {
        let mut a = Applied::start(10);
        assert_eq!(a.step(9), Step::Old, "published before the baseline");
        assert_eq!(a.step(11), Step::Next);
        assert_eq!(a.step(12), Step::Next);
        assert_eq!(a.mark, 12);
        assert_eq!(a.step(14), Step::Gap, "13 was lost");
        assert_eq!(a.mark, 14);
        assert_eq!(
            a.step(3),
            Step::Gap,
            "the sequence went backwards (restart)"
        );
        assert_eq!(a.step(4), Step::Next);
    }

    #[test]
    fn coarse_clock_moves_forward() {
        let a = coarse_now_ms();
        std::thread::sleep(Duration::from_millis(30));
        assert!(coarse_now_ms() > a);
        assert!(coarse_tick_ms() >= 1);
    }

    #[test]
    fn only_own_sequences_defer_the_acknowledgement() {
        let c = Coordinator::new(Coherence::Strict, Duration::from_secs(2), "own");
        c.note_own(5);
        c.note_own(6);
        assert!(c.only_own(4, 6), "5 and 6 are this instance's own writes");
        assert!(!c.only_own(6, 6), "nothing new");
        c.note_own(8);
        assert!(
            !c.only_own(6, 8),
            "7 came from another writer: acknowledge now"
        );
        c.note_own(9);
        assert!(c.only_own(8, 9));
        c.note_own(3); // noted after the feed passed it (the echo came first)
        c.note_own(11);
        assert!(c.only_own(10, 11), "the stale 3 was forgotten");
        assert!(c.own.lock().is_empty());
    }

    #[test]
    fn acks_and_tokens_parse() {
        assert_eq!(split_id(b"abc 12"), Some(("abc", 12)));
        assert_eq!(split_id(b"abc"), None);
        assert_eq!(split_id(b"abc x"), None);
    }
}
