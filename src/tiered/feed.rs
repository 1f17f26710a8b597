//! The invalidation feed: one subscriber connection per [`TieredCache`](super::TieredCache),
//! kept alive by a task on the tokio runtime that built the cache.
//!
//! The task subscribes to the store's invalidation channel and to the namespace's coherence
//! channel on one connection, and proves the subscription with a PING answered in subscribed
//! form. Then it starts from the current sequence: in Strict mode by joining as a member
//! (`join.lua`), in Bounded mode by reading it (`token.lua` without a token); only then is the
//! feed *confirmed*. It applies every message to the L1 in arrival order: `K<key>` purges the key
//! (which fences its L1 leases, so a fill whose Redis read the purge overtook is rejected), `F`
//! flushes, `#<seq> ...` does the same and advances the applied high-water mark (a gap flushes),
//! `A<id> <w>` records another member's acknowledgement for waiting writers, `T<id> <n>` is a
//! Bounded token coming back. Anything else is unreadable (see the module docs of
//! [`tiered`](super)).
//!
//! Strict: whenever the mark moved (and every quarter lease when idle) the task sends one
//! acknowledgement-and-renewal (`renew.lua`), one at a time; a reply saying the lease had lapsed
//! makes it flush and join again on the same subscription. Bounded: it sends a token every
//! quarter bound and extends the L1's proof when one comes back.
//!
//! A PING every `ping_interval`, answered within `ping_timeout`, proves the connection still
//! delivers. Any loss (the stream ends because the connection dropped or Redis disconnected a
//! subscriber that fell behind its output buffer limit, or a PING went unanswered) stops the L1,
//! marks the feed down and flushes the L1, in that order; in Strict mode the task then leaves the
//! membership (best effort) and reconnects with capped exponential backoff, rotating through the
//! store's node URLs (on Redis Cluster, classic pub/sub reaches the subscribers of every node, so
//! any node will do). However the task ends, a guard stops the L1 first.

use super::Shared;
use super::TieredKey;
use super::coherence::{self, Applied, Coherence, Renewed};
use futures_util::StreamExt;
use redis::Value;
use redis::aio::{PubSubSink, PubSubStream};
use serde::{Serialize, de::DeserializeOwned};
use std::future::Future;
use std::hash::Hash;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

/// Timing of the feed task.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FeedConfig {
    pub(crate) ping_interval: Duration,
    pub(crate) ping_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
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
    config: FeedConfig,
) where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    // Whatever ends this task (an abort, a panic, its runtime shutting down) stops the L1 first.
    let _guard = DeadFeed(&*shared);
    let coherence = shared.coherence.channel.clone();
    let mut next_url = 0usize;
    let mut backoff = config.backoff_min;
    loop {
        let url = urls.get(next_url % urls.len().max(1)).cloned();
        let subscribed = match url {
            Some(url) => subscribe(&url, &[&channel, &coherence], config.connect_timeout).await,
            None => Err(()),
        };
        match subscribed {
            Ok((mut sink, mut stream)) => {
                backoff = config.backoff_min;
                loop {
                    let Some(applied) = start(&shared).await else {
                        break;
                    };
                    shared.feed_confirmed();
                    let end =
                        pump(&shared, &channel, &mut sink, &mut stream, config, applied).await;
                    shared.feed_lost();
                    if end == End::Lost {
                        break;
                    }
                }
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
/// `None` if Redis did not answer.
async fn start<K, V>(shared: &Shared<K, V>) -> Option<Applied>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let c = &shared.coherence;
    let baseline = match c.mode {
        Coherence::Strict => c.join(&shared.l2).await,
        Coherence::Bounded(_) => c.token(&shared.l2, None).await,
    };
    baseline.ok().map(Applied::start)
}

/// Opens a subscriber connection and waits for Redis to acknowledge the subscriptions.
async fn subscribe(
    url: &str,
    channels: &[&str],
    timeout: Duration,
) -> Result<(PubSubSink, PubSubStream), ()> {
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
        let pong = sink.ping::<Value>().await.map_err(drop)?;
        if !is_subscribed_pong(&pong) {
            return Err(());
        }
        Ok((sink, stream))
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
    sink: &mut PubSubSink,
    stream: &mut PubSubStream,
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
    let mut heartbeat = pin!(heartbeat(sink, config));
    // Strict: the acknowledgement in flight and the mark it carries; the last mark acknowledged.
    let mut renewal: Pending<'_, Result<Renewed, crate::redis::RedisStoreError>> = None;
    let mut acked = None::<u64>;
    let mut due = true;
    // Bounded: the tokens sent and not yet back (number, coarse ms when sent), oldest first; a
    // slow round trip must not let each token be superseded before it returns.
    let mut tokens: std::collections::VecDeque<(u64, u64)> = std::collections::VecDeque::new();
    let mut sending: Pending<'_, ()> = None;
    let mut next_token = 0u64;
    // When the L1 may be used again after the last unreadable message.
    let mut unreadable_until: Option<tokio::time::Instant> = None;
    loop {
        if strict && renewal.is_none() && (due || acked != Some(applied.mark)) {
            due = false;
            acked = Some(applied.mark);
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
            msg = stream.next() => match msg {
                Some(msg) => {
                    let name = msg.get_channel_name();
                    let payload = msg.get_payload_bytes();
                    if name == channel {
                        if !shared.apply_invalidation(payload) {
                            unreadable(shared, &mut unreadable_until);
                        }
                    } else if name == c.channel {
                        match payload.split_first() {
                            Some((b'#', _)) => {
                                if !shared.apply_sequenced(payload, &mut applied) {
                                    unreadable(shared, &mut unreadable_until);
                                }
                            }
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
async fn heartbeat(sink: &mut PubSubSink, config: FeedConfig) {
    loop {
        tokio::time::sleep(config.ping_interval).await;
        let ping = sink.ping::<Value>();
        match tokio::time::timeout(config.ping_timeout, ping).await {
            Ok(Ok(pong)) if is_subscribed_pong(&pong) => {}
            Ok(_) | Err(_) => return,
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
