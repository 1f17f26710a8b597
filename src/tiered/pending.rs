//! Writes that did not reach Redis, kept and retried until they land.
//!
//! A [`TieredCache`](super::TieredCache) write ([`purge`](super::TieredCache::purge),
//! [`insert`](super::TieredCache::insert), [`flush`](super::TieredCache::flush)) always tries
//! Redis, whatever the circuit breaker says: purges are idempotent, and one skipped would leave
//! Redis and every other process's L1 holding the old value for the whole Redis TTL. One that
//! fails is queued here, and the call returns [`TieredError::Pending`](super::TieredError::Pending):
//! pending, not done.
//!
//! Only removals are queued: a failed purge as itself, a failed insert as a *purge* of its key
//! (retrying the insert itself could land after a later write and bring an older value back; a
//! purge only costs a miss), a failed flush as a flush. Removals commute with every other write
//! in effect (they can only make Redis hold less), so a retry that lands late is always safe, and
//! new writes never wait behind the queue.
//!
//! One task retries the queue front to back: each operation until it lands, with exponential
//! backoff between failed attempts (`backoff_min` doubling to `backoff_max`). A landed purge
//! (or flush) also purges this process's L1 again, since an L1 read may have refilled the key
//! from Redis's old value meanwhile; then its invalidation is sequenced and published on the
//! coherence channel (`publish.lua`, as for any tiered write, but without waiting for
//! acknowledgements), which is how other processes learn it. An operation counts as landed
//! only once both ran.
//!
//! The queue is bounded (`capacity` operations; a key already queued is not queued twice). When a
//! new operation would overflow it, the whole queue is replaced by one flush of the namespace,
//! which removes at least everything the queued operations would have: nothing is lost, the
//! replaced operations are counted as *collapsed*, and the L1 is bypassed (and flushed) until the
//! queue has drained, since the flush may take a while to land. Operations still queued when the
//! cache is dropped are lost with it.

use super::Shared;
use super::TieredKey;
use crate::redis::RedisStoreError;
use crate::sync::Mutex;
use serde::{Serialize, de::DeserializeOwned};
use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// A removal waiting to be retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Purge this key.
    Purge(String),
    /// Flush the namespace.
    Flush,
}

/// How the retry task paces itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingConfig {
    pub(crate) capacity: usize,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
}

/// What [`Pending::push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued (or already queued).
    Queued,
    /// The queue was full: it now holds one flush instead; the L1 must be bypassed until it
    /// drains.
    Collapsed,
}

#[derive(Default)]
struct Queue {
    ops: VecDeque<Op>,
    /// Keys with a queued purge (deduplication).
    keys: HashSet<String>,
    /// A flush is queued.
    flush: bool,
}

/// The bounded queue of removals, shared by the cache and its retry task.
pub(crate) struct Pending {
    queue: Mutex<Queue>,
    wake: Notify,
    config: PendingConfig,
    queued: AtomicU64,
    landed: AtomicU64,
    collapsed: AtomicU64,
}

impl Pending {
    pub(crate) fn new(config: PendingConfig) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            config: PendingConfig {
                capacity: config.capacity.max(1),
                ..config
            },
            queued: AtomicU64::new(0),
            landed: AtomicU64::new(0),
            collapsed: AtomicU64::new(0),
        }
    }

    /// Queues `op` behind every operation already queued and wakes the retry task.
    /// `on_collapse` runs under the queue's lock if the queue collapsed into a flush, so that it
    /// cannot interleave with the `on_drained` of the queue draining.
    pub(crate) fn push(&self, op: Op, on_collapse: impl FnOnce()) -> Pushed {
        let pushed = {
            let mut q = self.queue.lock();
            match &op {
                Op::Flush if q.flush => return Pushed::Queued,
                Op::Purge(key) if q.flush || q.keys.contains(key) => return Pushed::Queued,
                _ => {}
            }
            // Relaxed: counters order nothing.
            self.queued.fetch_add(1, Ordering::Relaxed);
            if q.ops.len() >= self.config.capacity {
                let replaced = u64::try_from(q.ops.len()).unwrap_or(u64::MAX) + 1;
                self.collapsed.fetch_add(replaced, Ordering::Relaxed);
                q.ops.clear();
                q.keys.clear();
                q.ops.push_back(Op::Flush);
                q.flush = true;
                on_collapse();
                Pushed::Collapsed
            } else {
                match &op {
                    Op::Purge(key) => {
                        q.keys.insert(key.clone());
                    }
                    Op::Flush => q.flush = true,
                }
                q.ops.push_back(op);
                Pushed::Queued
            }
        };
        self.wake.notify_one();
        pushed
    }

    /// The operation at the front, if any (left in place until it lands).
    fn front(&self) -> Option<Op> {
        self.queue.lock().ops.front().cloned()
    }

    /// Removes `op` from the front after it landed. Returns whether the queue is now empty;
    /// `on_drained` runs under the queue's lock if it is.
    fn landed(&self, op: &Op, on_drained: impl FnOnce()) -> bool {
        let mut q = self.queue.lock();
        // The front may have been replaced by a collapse meanwhile; then `op` is gone already.
        if q.ops.front() == Some(op) {
            q.ops.pop_front();
            match op {
                Op::Purge(key) => {
                    q.keys.remove(key);
                }
                Op::Flush => q.flush = false,
            }
            self.landed.fetch_add(1, Ordering::Relaxed);
        }
        let empty = q.ops.is_empty();
        if empty {
            on_drained();
        }
        empty
    }

    /// Operations waiting now.
    pub(crate) fn len(&self) -> usize {
        self.queue.lock().ops.len()
    }

    /// Operations ever queued, landed from the queue, and replaced by a collapse into a flush.
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        (
            self.queued.load(Ordering::Relaxed),
            self.landed.load(Ordering::Relaxed),
            self.collapsed.load(Ordering::Relaxed),
        )
    }
}

/// Retries the queue of `shared` until the cache is dropped (its `Shared` is gone).
pub(crate) async fn run<K, V>(shared: Weak<Shared<K, V>>, pending: std::sync::Arc<Pending>)
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let config = pending.config;
    let mut backoff = config.backoff_min;
    loop {
        let Some(op) = pending.front() else {
            // Woken by a push; the timeout only lets the task notice that the cache is gone.
            let _ = tokio::time::timeout(config.backoff_max, pending.wake.notified()).await;
            if shared.strong_count() == 0 {
                return;
            }
            continue;
        };
        let Some(s) = shared.upgrade() else {
            return;
        };
        match attempt(&s, &op).await {
            Ok(()) => {
                backoff = config.backoff_min;
                if pending.landed(&op, || s.pending_drained()) {
                    log_info!("pending writes drained: every failed write has landed in redis");
                }
            }
            Err(e) => {
                s.pending_retry_failed(e);
                drop(s);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.backoff_max);
            }
        }
    }
}

/// One attempt at `op`; on success the local L1 is purged (or flushed) again.
async fn attempt<K, V>(s: &Shared<K, V>, op: &Op) -> Result<(), RedisStoreError>
where
    K: TieredKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let invalidation = match op {
        Op::Purge(key) => {
            s.l2.purge(key).await?;
            s.purge_l1_redis_key(key);
            crate::redis::Invalidation::key_payload(key)
        }
        Op::Flush => {
            s.l2.flush().await?;
            s.l1.flush();
            b"F".to_vec()
        }
    };
    // The other processes learn it from the sequenced invalidation (the fencing scripts of a
    // tiered cache publish none); nobody waits for their acknowledgements. If it fails, the
    // whole removal is retried (it is idempotent).
    s.coherence.publish(&s.l2, &invalidation).await?;
    s.pending_landed();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(capacity: usize) -> Pending {
        Pending::new(PendingConfig {
            capacity,
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(2),
        })
    }

    #[test]
    fn keeps_order_deduplicates_and_collapses_into_a_flush() {
        let p = pending(3);
        assert_eq!(p.push(Op::Purge("a".into()), || ()), Pushed::Queued);
        assert_eq!(p.push(Op::Purge("b".into()), || ()), Pushed::Queued);
        assert_eq!(p.push(Op::Purge("a".into()), || ()), Pushed::Queued);
        assert_eq!(p.len(), 2, "a key is queued once");
        assert_eq!(p.front(), Some(Op::Purge("a".into())));
        assert!(!p.landed(&Op::Purge("a".into()), || ()));
        assert_eq!(p.front(), Some(Op::Purge("b".into())));
        assert_eq!(p.push(Op::Purge("a".into()), || ()), Pushed::Queued);
        assert_eq!(p.push(Op::Purge("c".into()), || ()), Pushed::Queued);
        assert_eq!(p.len(), 3);
        // Full: the fourth collapses everything into one flush.
        assert_eq!(p.push(Op::Purge("d".into()), || ()), Pushed::Collapsed);
        assert_eq!(p.len(), 1);
        assert_eq!(p.front(), Some(Op::Flush));
        assert_eq!(p.counts().2, 4, "b, a, c and d were replaced");
        // A purge behind a queued flush adds nothing; a stale front report changes nothing.
        assert_eq!(p.push(Op::Purge("e".into()), || ()), Pushed::Queued);
        assert_eq!(p.len(), 1);
        assert!(!p.landed(&Op::Purge("b".into()), || panic!("not drained")));
        assert_eq!(p.len(), 1);
        let mut drained = false;
        assert!(p.landed(&Op::Flush, || drained = true));
        assert!(drained);
        assert_eq!(p.front(), None);
        assert_eq!(p.counts().1, 2, "a and the flush landed");
    }
}
