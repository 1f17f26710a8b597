//! The invalidation feed: one subscriber connection per [`TieredCache`](super::TieredCache),
//! kept alive by a task on the tokio runtime that built the cache.
//!
//! Each (re)subscription first asks the server that runs the coherence scripts how it publishes
//! (`token.lua` without a token): Redis 7 and later publish coherence messages with `SPUBLISH`.
//! Then the task subscribes on one connection to the store's invalidation channel (bare stores'
//! writes), to the namespace's coherence channel and to the instance's acknowledgement channel:
//!
//! - **Sharded** (Redis 7+): a RESP3 connection to the master that serves the coherence slot
//!   (`CLUSTER NODES` through the store's cluster connection; on a single server, the server),
//!   `SUBSCRIBE` for the store's channel and `SSUBSCRIBE` for the coherence channel and the
//!   instance's acknowledgement channel, each confirmed by its own reply (`MOVED` from a node
//!   that no longer serves the slot fails it), then an `EXISTS` of the slot's key on the same
//!   connection, which a replica answers with `MOVED` (a replica accepts `SSUBSCRIBE`: a feed
//!   sent there by a stale slot map would hear the master only through the cluster bus).
//!   redis-rs 1.2's `PubSub` has no `SSUBSCRIBE`, so this is a multiplexed connection whose
//!   pushes go to a channel. Redis unsubscribes shard subscribers (`sunsubscribe`) when the
//!   slot migrates away or its master turns replica; that push, a disconnect push, or any push a
//!   subscription never sees ends the subscription: a feed loss.
//! - **Classic** (older servers): a RESP2 `PubSub` on the node of the next store URL (classic
//!   messages reach every node's subscribers), proven by a PING answered in subscribed form after
//!   the `SUBSCRIBE` reply (redis-rs does not check that reply).
//!
//! Then it starts from the current sequence: in Strict mode by joining as a member
//! (`join.lua`), in Bounded mode by reading it (`token.lua` without a token); both report again
//! how the server publishes, and a mismatch (a failover between the two questions) means
//! subscribing again. Only then is the feed *confirmed*. It applies every message to the L1 in
//! arrival order: `K<key>` purges the key (which fences its L1 leases, so a fill whose Redis read
//! the purge overtook is rejected), `F` flushes, `#<seq> ...` does the same and advances the
//! applied high-water mark (a gap flushes), `A<id> <w>` (from a member of an earlier version)
//! records another member's acknowledgement for waiting writers, `T<id> <n>` is a Bounded token
//! coming back. On the instance's own acknowledgement channel (subscribed on the same connection,
//! `SSUBSCRIBE` when sharded: it shares the coherence slot), `A<id> <w>` is a member's
//! acknowledgement of a sequence this instance waits for. Anything else is unreadable (see the
//! module docs of [`tiered`](super)).
//!
//! Strict: whenever the mark moved past another instance's write (and every quarter lease
//! anyway) the task sends one acknowledgement-and-renewal (`renew.lua`), one at a time; a mark
//! that moved only past this instance's own writes waits for the quarter-lease renewal, since no
//! writer waits for those; a reply saying the lease had lapsed makes it flush and join again on
//! the same subscription. Bounded: it sends a token every quarter bound and extends the L1's
//! proof when one comes back.
//!
//! A PING every `ping_interval`, answered within `ping_timeout`, proves the connection still
//! delivers. Any loss (the stream ends because the connection dropped, Redis disconnected a
//! subscriber that fell behind its output buffer limit or unsubscribed it, or a PING went
//! unanswered) stops the L1, marks the feed down and flushes the L1, in that order; in Strict
//! mode the task then leaves the membership (best effort) and subscribes again with capped
//! exponential backoff, looking the slot's master up again (sharded) or rotating through the
//! store's node URLs (classic). However the task ends, a guard stops the L1 first.

use super::Shared;
use super::TieredKey;
use super::coherence::{self, Applied, Coherence, Renewed};
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{PushInfo, PushKind, Value};
use serde::{Serialize, de::DeserializeOwned};
use std::future::Future;
use std::hash::Hash;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Timing of the feed task.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FeedConfig {
    pub(crate) ping_interval: Duration,
    pub(crate) ping_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    /// Test hook: the port of the node the first sharded subscription goes to, rather than the
    /// coherence slot's master (same host); see `TieredBuilder::test_hook_first_feed_port`.
    #[cfg(feature = "__test-hooks")]
    pub(crate) first_port: Option<u16>,
}

/// Bounded: tokens tracked while they travel.
const MAX_TOKENS_OUT: usize = 16;

/// How long the L1 stays bypassed after the last unreadable message.
pub(crate) const UNREADABLE_HOLD: Duration = Duration::from_millis(100);

/// Runs the feed until the task is aborted (when its `TieredCache` is dropped).
pub(crate) async fn run<K, V>(
    shared: Arc<Shared<K, V>>,
    urls: Vec<String>,
    channel: String,
    mut config: FeedConfig,
) where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    // Whatever ends this task (an abort, a panic, its runtime shutting down) stops the L1 first.
    let _guard = DeadFeed(&*shared);
    let mut next_url = 0usize;
    let mut backoff = config.backoff_min;
    loop {
        let url = urls.get(next_url % urls.len().max(1)).cloned();
        let subscribed = match url {
            Some(url) => connect(&shared, &url, &channel, &mut config).await,
            None => Err(()),
        };
        match subscribed {
            Ok((mut pinger, mut messages)) => {
                backoff = config.backoff_min;
                let sharded = matches!(messages, Messages::Sharded(_));
                loop {
                    let Some(applied) = start(&shared, sharded).await else {
                        break;
                    };
                    shared.feed_confirmed();
                    let end = pump(
                        &shared,
                        &channel,
                        &mut pinger,
                        &mut messages,
                        config,
                        applied,
                    )
                    .await;
                    shared.feed_lost();
                    if end == End::Lost {
                        break;
                    }
                }
                // Not confirmed again (the subscription is gone, or of the wrong kind): the L1
                // must not be served on a lease this subscription earned.
                shared.coherence.stop_serving();
                if shared.coherence.mode == Coherence::Strict {
                    // Best effort: writers then stop waiting for this instance at once instead of
                    // when its lease runs out. Its L1 is already bypassed and flushed.
                    let _ = shared.coherence.leave(&shared.l2).await;
                }
            }
            Err(()) => next_url = next_url.wrapping_add(1),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

/// Subscribes the way the server that runs the coherence scripts publishes: asks it first
/// (`token.lua` without a token reports it), then subscribes to the store's channel and the
/// coherence channel on one connection, classic (`SUBSCRIBE` both, on the node of `url`) or
/// sharded (`SUBSCRIBE` the store's channel and `SSUBSCRIBE` the coherence channel, on the
/// master that serves the coherence slot). `start` checks the answer again once subscribed.
/// (`config` is mutable for a test hook, spent by the first sharded subscription.)
async fn connect<K, V>(
    shared: &Shared<K, V>,
    url: &str,
    channel: &str,
    config: &mut FeedConfig,
) -> Result<(Pinger, Messages), ()>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let c = &shared.coherence;
    let probe = tokio::time::timeout(config.connect_timeout, c.token(&shared.l2, None));
    let sharded = match probe.await {
        Ok(Ok(start)) => start.sharded,
        _ => return Err(()),
    };
    if !sharded {
        let channels = [channel, &*c.channel, &*c.ack_channel];
        return subscribe(url, &channels, config.connect_timeout).await;
    }
    let owner = tokio::time::timeout(
        config.connect_timeout,
        shared.l2.master_for_key(c.slot_key().as_bytes()),
    );
    #[cfg_attr(not(feature = "__test-hooks"), allow(unused_mut))]
    let mut node = match owner.await {
        Ok(Ok(owner)) => owner,
        _ => return Err(()),
    };
    #[cfg(feature = "__test-hooks")]
    if let (Some(port), Some(node)) = (config.first_port.take(), node.as_mut()) {
        node.1 = port;
    }
    let info = node_info(url, node).ok_or(())?;
    let shard_channels = [&*c.channel, &*c.ack_channel];
    subscribe_sharded(
        info,
        channel,
        &shard_channels,
        c.slot_key(),
        config.connect_timeout,
    )
    .await
}

/// The connection info of `url`, with its address replaced by `node` (same credentials, TLS and
/// database) if given.
fn node_info(url: &str, node: Option<(String, u16)>) -> Option<redis::ConnectionInfo> {
    let info = redis::IntoConnectionInfo::into_connection_info(url).ok()?;
    let Some((host, port)) = node else {
        return Some(info);
    };
    let addr = match info.addr().clone() {
        redis::ConnectionAddr::Tcp(..) => redis::ConnectionAddr::Tcp(host, port),
        redis::ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => redis::ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            tls_params,
        },
        // A cluster is not reached over a Unix socket.
        _ => return None,
    };
    Some(info.set_addr(addr))
}

/// Stops the L1 when the feed task ends, however it ends.
struct DeadFeed<'a, K, V>(&'a Shared<K, V>)
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static;

impl<K, V> Drop for DeadFeed<'_, K, V>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn drop(&mut self) {
        self.0.feed_dead();
    }
}

/// With the subscription confirmed: joins (Strict) or reads the current sequence (Bounded).
/// `None` if Redis did not answer, or if the server that runs the coherence scripts publishes
/// the other way than `sharded` (a failover or an upgrade between the probe and now): then the
/// feed subscribes again.
async fn start<K, V>(shared: &Shared<K, V>, sharded: bool) -> Option<Applied>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let c = &shared.coherence;
    let baseline = match c.mode {
        Coherence::Strict => c.join(&shared.l2).await,
        Coherence::Bounded(_) => c.token(&shared.l2, None).await,
    };
    match baseline {
        Ok(start) if start.sharded == sharded => Some(Applied::start(start.seq)),
        _ => None,
    }
}

/// The receiving half of a subscribed connection.
enum Messages {
    /// Classic pub/sub (RESP2).
    Classic(PubSubStream),
    /// RESP3 pushes: messages, shard messages, and what ends the subscription.
    Sharded(mpsc::UnboundedReceiver<PushInfo>),
}

impl Messages {
    /// The next message's channel and payload; `None` once the subscription is lost: the
    /// connection dropped, or the server unsubscribed this connection (it sends `sunsubscribe`
    /// when the coherence slot migrates away or the node turns replica).
    async fn next(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        match self {
            Self::Classic(stream) => {
                let msg = stream.next().await?;
                Some((
                    msg.get_channel_name().as_bytes().to_vec(),
                    msg.get_payload_bytes().to_vec(),
                ))
            }
            Self::Sharded(rx) => loop {
                let push = rx.recv().await?;
                match push.kind {
                    PushKind::Message | PushKind::SMessage => {
                        let mut data = push.data.into_iter();
                        match (data.next(), data.next()) {
                            (Some(Value::BulkString(name)), Some(Value::BulkString(payload))) => {
                                return Some((name, payload));
                            }
                            // Not something a server sends: treat the stream as broken.
                            _ => return None,
                        }
                    }
                    // Copies of the replies to our own SUBSCRIBE and SSUBSCRIBE.
                    PushKind::Subscribe | PushKind::SSubscribe => {}
                    // Disconnect, (s)unsubscribe, or anything else a subscription never sees.
                    _ => return None,
                }
            },
        }
    }
}

/// The half of a subscribed connection that PINGs it.
enum Pinger {
    Classic(PubSubSink),
    Sharded(MultiplexedConnection),
}

impl Pinger {
    /// Whether a PING was answered, as a subscribed connection answers it.
    async fn ping(&mut self) -> bool {
        match self {
            Self::Classic(sink) => sink
                .ping::<Value>()
                .await
                .is_ok_and(|pong| is_subscribed_pong(&pong)),
            // RESP3 answers a PING in subscribed mode as it does outside it.
            Self::Sharded(conn) => matches!(
                redis::cmd("PING").query_async::<Value>(conn).await,
                Ok(Value::SimpleString(pong)) if pong.eq_ignore_ascii_case("pong")
            ),
        }
    }
}

/// Opens a classic subscriber connection and waits for Redis to acknowledge the subscriptions.
async fn subscribe(
    url: &str,
    channels: &[&str],
    timeout: Duration,
) -> Result<(Pinger, Messages), ()> {
    let connect = async {
        // Always RESP2, whatever the URL asks for: the subscribed-mode PING check below relies
        // on RESP2's `["pong", ""]` reply.
        let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(drop)?;
        let resp2 = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP2);
        let client = redis::Client::open(info.set_redis_settings(resp2)).map_err(drop)?;
        let pubsub = client.get_async_pubsub().await.map_err(drop)?;
        let (mut sink, stream) = pubsub.split();
        // Returns once Redis has replied to SUBSCRIBE, but also when the reply was an error
        // (redis-rs does not look at it: an ACL refusal would pass unnoticed)...
        sink.subscribe(channels).await.map_err(drop)?;
        // ...so prove it: a PING answered after that reply, in the subscribed form, shows the
        // subscription took effect. Every PUBLISH Redis runs from now on reaches this connection.
        let mut pinger = Pinger::Classic(sink);
        if !pinger.ping().await {
            return Err(());
        }
        Ok((pinger, Messages::Classic(stream)))
    };
    tokio::time::timeout(timeout, connect)
        .await
        .unwrap_or(Err(()))
}

/// Opens a RESP3 connection to `node`, `SUBSCRIBE`s `channel` and `SSUBSCRIBE`s each of
/// `shard_channels` (one slot: the coherence channel and this instance's acknowledgement
/// channel), each confirmed by its own reply (an error, such as `MOVED` from a node that no
/// longer serves the slot, or an ACL refusal, fails it). redis-rs 1.2's `PubSub` cannot send
/// `SSUBSCRIBE`, so this is a multiplexed connection whose pushes go to a channel.
///
/// Then `EXISTS slot_key` on the same connection proves that `node` serves the slot as its
/// master. A replica of that master accepts `SSUBSCRIBE` too (Redis 7 serves shard channels on
/// replicas), so a slot map read while a failover settles could leave the feed subscribed on
/// the demoted master: it would hear the coherence messages only after they crossed the cluster
/// bus, a hop the protocol does not watch (renewals and acknowledgements go to the master, so a
/// member cut off from the bus would keep renewing its lease while it heard nothing). A replica
/// answers `MOVED` to a keyed command, which fails the subscription and makes the feed look the
/// master up again; a master that loses the slot later unsubscribes this connection
/// (`sunsubscribe`), which the feed sees as a loss. While the slot migrates, its old master
/// answers `ASK` once the key has moved: the feed subscribes again only once the migration ends.
async fn subscribe_sharded(
    node: redis::ConnectionInfo,
    channel: &str,
    shard_channels: &[&str],
    slot_key: &str,
    timeout: Duration,
) -> Result<(Pinger, Messages), ()> {
    let connect = async {
        let resp3 = node
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = redis::Client::open(node.set_redis_settings(resp3)).map_err(drop)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_push_sender(tx);
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(drop)?;
        let shard = shard_channels
            .iter()
            .map(|name| ("SSUBSCRIBE", *name, PushKind::SSubscribe));
        for (command, name, kind) in
            std::iter::once(("SUBSCRIBE", channel, PushKind::Subscribe)).chain(shard)
        {
            let reply = redis::cmd(command)
                .arg(name)
                .query_async::<Value>(&mut conn)
                .await
                .map_err(drop)?;
            if !matches!(reply, Value::Push { kind: k, .. } if k == kind) {
                return Err(());
            }
        }
        let serves = redis::cmd("EXISTS")
            .arg(slot_key)
            .query_async::<Value>(&mut conn)
            .await
            .map_err(drop)?;
        if !matches!(serves, Value::Int(_)) {
            return Err(());
        }
        Ok((Pinger::Sharded(conn), Messages::Sharded(rx)))
    };
    tokio::time::timeout(timeout, connect)
        .await
        .unwrap_or(Err(()))
}

/// Why `pump` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The subscription is lost: resubscribe.
    Lost,
    /// The subscription is fine but the member lease lapsed on the server: join again.
    Rejoin,
}

type Pending<'a, T> = Option<Pin<Box<dyn Future<Output = T> + Send + 'a>>>;

/// Applies messages until the feed is lost or must rejoin; acknowledges and renews (Strict) or
/// sends tokens (Bounded) as it goes.
async fn pump<K, V>(
    shared: &Shared<K, V>,
    channel: &str,
    pinger: &mut Pinger,
    messages: &mut Messages,
    config: FeedConfig,
    mut applied: Applied,
) -> End
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let c = &shared.coherence;
    let (window, strict) = match c.mode {
        Coherence::Strict => (c.lease, true),
        Coherence::Bounded(d) => (d, false),
    };
    let mut tick = tokio::time::interval((window / 4).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat = pin!(heartbeat(pinger, config));
    // Strict: the acknowledgement in flight; the mark up to which the sequences applied were
    // looked at; whether one of them was another instance's write not yet acknowledged.
    let mut renewal: Pending<'_, Result<Renewed, crate::redis::RedisStoreError>> = None;
    let mut seen = applied.mark;
    let mut owed = false;
    let mut due = true;
    // Bounded: the tokens sent and not yet back (number, coarse ms when sent), oldest first; a
    // slow round trip must not let each token be superseded before it returns.
    let mut tokens: std::collections::VecDeque<(u64, u64)> = std::collections::VecDeque::new();
    let mut sending: Pending<'_, ()> = None;
    let mut next_token = 0u64;
    // When the L1 may be used again after the last unreadable message.
    let mut unreadable_until: Option<tokio::time::Instant> = None;
    loop {
        // The mark moved past another instance's write (whose writer may be waiting): an
        // acknowledgement is owed now. Past this instance's own writes alone, nobody waits: the
        // periodic renewal carries it.
        if strict && applied.mark != seen {
            if !c.only_own(seen, applied.mark) {
                owed = true;
            }
            seen = applied.mark;
        }
        if strict && renewal.is_none() && (due || owed) {
            due = false;
            owed = false;
            renewal = Some(Box::pin(c.renew(&shared.l2, applied.mark)));
        }
        if !strict && sending.is_none() && due {
            due = false;
            next_token += 1;
            let n = next_token;
            if tokens.len() == MAX_TOKENS_OUT {
                tokens.pop_front(); // lost, most likely
            }
            tokens.push_back((n, coherence::coarse_now_ms()));
            sending = Some(Box::pin(async move {
                let _ = c.token(&shared.l2, Some(n)).await;
            }));
        }
        tokio::select! {
            msg = messages.next() => match msg {
                Some((name, payload)) => {
                    let payload = &payload[..];
                    if name == channel.as_bytes() {
                        if shared.apply_fill_announcement(payload) {
                            // The end of a fill this process may wait for (issue 18).
                        } else if !shared.apply_invalidation(payload) {
                            unreadable(shared, &mut unreadable_until);
                        }
                    } else if name == c.channel.as_bytes() {
                        match payload.split_first() {
                            Some((b'#', _)) => {
                                if !shared.apply_sequenced(payload, &mut applied) {
                                    unreadable(shared, &mut unreadable_until);
                                }
                            }
                            // From a member of an earlier version, which broadcasts its acks.
                            Some((b'A', body)) => c.on_ack(body),
                            Some((b'T', body)) => {
                                if let Some(n) = c.own_token(body) {
                                    // Tokens come back in the order sent: older ones are lost.
                                    while let Some(&(sent_n, sent)) = tokens.front() {
                                        if sent_n > n {
                                            break;
                                        }
                                        tokens.pop_front();
                                        if sent_n == n {
                                            c.extend(sent, window);
                                        }
                                    }
                                }
                            }
                            _ => unreadable(shared, &mut unreadable_until),
                        }
                    } else if name == c.ack_channel.as_bytes() {
                        match payload.split_first() {
                            Some((b'A', body)) => c.on_ack(body),
                            _ => unreadable(shared, &mut unreadable_until),
                        }
                    }
                }
                None => return End::Lost,
            },
            () = &mut heartbeat => return End::Lost,
            result = async { renewal.as_mut().expect("guarded").await }, if renewal.is_some() => {
                renewal = None;
                if let Ok(Renewed::Lapsed) = result {
                    return End::Rejoin;
                }
            }
            () = async { sending.as_mut().expect("guarded").await }, if sending.is_some() => {
                sending = None;
            }
            _ = tick.tick() => due = true,
            () = async { tokio::time::sleep_until(unreadable_until.expect("guarded")).await },
                if unreadable_until.is_some() => {
                unreadable_until = None;
                shared.readable_again();
            }
        }
    }
}

/// An unreadable message: bypass (the first of a burst also flushes) until `UNREADABLE_HOLD`
/// after the last one.
fn unreadable<K, V>(shared: &Shared<K, V>, until: &mut Option<tokio::time::Instant>)
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    shared.unreadable();
    *until = Some(tokio::time::Instant::now() + UNREADABLE_HOLD);
}

/// PINGs the subscriber connection every `ping_interval`; returns when one is not answered in
/// time (a silent feed).
async fn heartbeat(pinger: &mut Pinger, config: FeedConfig) {
    loop {
        tokio::time::sleep(config.ping_interval).await;
        match tokio::time::timeout(config.ping_timeout, pinger.ping()).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
    }
}

/// Whether `reply` is the answer to PING on a connection in subscribed mode (RESP2:
/// `["pong", ""]`; outside subscribed mode the answer is `+PONG`).
fn is_subscribed_pong(reply: &Value) -> bool {
    match reply {
        Value::Array(items) => {
            matches!(items.first(), Some(Value::BulkString(kind)) if kind.eq_ignore_ascii_case(b"pong"))
        }
        _ => false,
    }
}
