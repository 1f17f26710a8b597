//! The invalidation feed: one subscriber connection per [`TieredCache`](super::TieredCache),
//! kept alive by a task on the tokio runtime that built the cache.
//!
//! The task subscribes to the store's invalidation channel, marks the feed *confirmed* once Redis
//! has acknowledged the subscription, and applies every message to the L1: `K<key>` purges the
//! key (which fences its L1 leases, so a fill whose Redis read the purge overtook is rejected),
//! `F` flushes. A message it cannot parse also flushes: it can only be an invalidation in a
//! format this version does not know. A PING every `ping_interval`, answered within
//! `ping_timeout`, proves the connection still delivers.
//!
//! Any loss (the stream ends because the connection dropped or Redis disconnected a subscriber
//! that fell behind its output buffer limit, or a PING went unanswered) marks the feed down and
//! flushes the L1, in that order, then reconnects with capped exponential backoff, rotating
//! through the store's node URLs (on Redis Cluster, classic pub/sub reaches the subscribers of
//! every node, so any node will do).

use super::Shared;
use futures_util::StreamExt;
use redis::Value;
use redis::aio::{PubSubSink, PubSubStream};
use serde::{Serialize, de::DeserializeOwned};
use std::borrow::Borrow;
use std::hash::Hash;
use std::pin::pin;
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

/// Runs the feed until the task is aborted (when its `TieredCache` is dropped).
pub(crate) async fn run<K, V>(
    shared: Arc<Shared<K, V>>,
    urls: Vec<String>,
    channel: String,
    config: FeedConfig,
) where
    K: Borrow<str> + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let mut next_url = 0usize;
    let mut backoff = config.backoff_min;
    loop {
        let url = urls.get(next_url % urls.len().max(1)).cloned();
        let subscribed = match url {
            Some(url) => subscribe(&url, &channel, config.connect_timeout).await,
            None => Err(()),
        };
        match subscribed {
            Ok((mut sink, mut stream)) => {
                backoff = config.backoff_min;
                shared.feed_confirmed();
                pump(&shared, &channel, &mut sink, &mut stream, config).await;
                shared.feed_lost();
            }
            Err(()) => next_url = next_url.wrapping_add(1),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

/// Opens a subscriber connection and waits for Redis to acknowledge the subscription.
async fn subscribe(
    url: &str,
    channel: &str,
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
        sink.subscribe(channel).await.map_err(drop)?;
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

/// Applies messages until the feed is lost.
async fn pump<K, V>(
    shared: &Shared<K, V>,
    channel: &str,
    sink: &mut PubSubSink,
    stream: &mut PubSubStream,
    config: FeedConfig,
) where
    K: Borrow<str> + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let mut heartbeat = pin!(heartbeat(sink, config));
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) if msg.get_channel_name() == channel => {
                    shared.apply_invalidation(msg.get_payload_bytes());
                }
                Some(_) => {}
                None => return,
            },
            () = &mut heartbeat => return,
        }
    }
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
