//! Single-flight read-through loading, for threads and for async code.
//!
//! The first caller that misses a key becomes its *leader*: it registers a flight in the shard,
//! captures a lease in the same critical section, and runs its loader. Callers that miss while the
//! flight is registered *join* it and receive the leader's value. A purge, insert or flush of the
//! key *detaches* the flight (removes it from the table) atomically with fencing the lease, so a
//! caller that arrives after the write returned starts a fresh load (I7), and the leader's save is
//! rejected as stale. If the leader fails (error, panic, or its future is dropped) the flight is
//! abandoned and its waiters retry, one of them becoming the new leader with its own loader.

use crate::cache::Cache;
use crate::generation::Lease;
use crate::shard::Admit;
use crate::stats::Counters;
use crate::sync::{Arc, Condvar, Mutex};
use hashbrown::HashTable;
use std::borrow::Borrow;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The flights registered in one shard, found by key. Lives under the shard's lock.
pub(crate) struct FlightTable<K, V> {
    table: HashTable<(u64, K, Arc<Flight<V>>)>,
}

impl<K, V> Default for FlightTable<K, V> {
    fn default() -> Self {
        Self {
            table: HashTable::new(),
        }
    }
}

impl<K: Eq, V> FlightTable<K, V> {
    fn find(&self, hash: u64, key: &K) -> Option<&Arc<Flight<V>>> {
        self.table
            .find(hash, |(h, k, _)| *h == hash && k == key)
            .map(|(_, _, f)| f)
    }

    fn register(&mut self, hash: u64, key: K, flight: Arc<Flight<V>>) {
        self.table
            .insert_unique(hash, (hash, key, flight), |(h, _, _)| *h);
    }

    /// Unregisters `flight` if it is still the registered flight for its key.
    fn unregister(&mut self, hash: u64, flight: &Arc<Flight<V>>) {
        if let Ok(entry) = self
            .table
            .find_entry(hash, |(_, _, f)| Arc::ptr_eq(f, flight))
        {
            entry.remove();
        }
    }

    /// Detaches the flight for `key`, if any: later callers will not join it.
    pub(crate) fn detach<Q>(&mut self, hash: u64, key: &Q)
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        if let Ok(entry) = self
            .table
            .find_entry(hash, |(h, k, _)| *h == hash && k.borrow() == key)
        {
            entry.remove();
        }
    }

    pub(crate) fn detach_all(&mut self) {
        self.table.clear();
    }

    #[cfg(all(test, leasecache_loom))]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

enum Outcome<V> {
    Pending,
    Done(V),
    Abandoned,
}

struct FlightState<V> {
    outcome: Outcome<V>,
    /// Async waiters, by waiter id so that a re-polled future replaces its waker.
    wakers: Vec<(u64, Waker)>,
    next_waiter: u64,
}

/// One load in progress, shared by its leader and its waiters.
pub(crate) struct Flight<V> {
    state: Mutex<FlightState<V>>,
    done: Condvar,
}

impl<V: Clone> Flight<V> {
    fn new() -> Self {
        Self {
            state: Mutex::new(FlightState {
                outcome: Outcome::Pending,
                wakers: Vec::new(),
                next_waiter: 0,
            }),
            done: Condvar::new(),
        }
    }

    fn complete(&self, outcome: Outcome<V>) {
        let wakers = {
            let mut state = self.state.lock();
            state.outcome = outcome;
            std::mem::take(&mut state.wakers)
        };
        self.done.notify_all();
        wakers.into_iter().for_each(|(_, w)| w.wake());
    }

    /// Blocks until the leader finishes: `Some(value)`, or `None` if it gave up.
    fn wait(&self) -> Option<V> {
        let mut state = self.state.lock();
        loop {
            match &state.outcome {
                Outcome::Pending => state = self.done.wait(state),
                Outcome::Done(v) => return Some(v.clone()),
                Outcome::Abandoned => return None,
            }
        }
    }

    fn poll_wait(&self, waiter: &mut Option<u64>, cx: &mut Context<'_>) -> Poll<Option<V>> {
        let mut state = self.state.lock();
        match &state.outcome {
            Outcome::Done(v) => Poll::Ready(Some(v.clone())),
            Outcome::Abandoned => Poll::Ready(None),
            Outcome::Pending => {
                let id = *waiter.get_or_insert_with(|| {
                    state.next_waiter += 1;
                    state.next_waiter
                });
                match state.wakers.iter_mut().find(|(w, _)| *w == id) {
                    Some((_, waker)) => waker.clone_from(cx.waker()),
                    None => state.wakers.push((id, cx.waker().clone())),
                }
                Poll::Pending
            }
        }
    }

    fn forget_waiter(&self, waiter: u64) {
        self.state.lock().wakers.retain(|(w, _)| *w != waiter);
    }
}

/// A future that waits for a flight; deregisters its waker when dropped.
struct WaitFlight<'a, V: Clone> {
    flight: &'a Flight<V>,
    waiter: Option<u64>,
}

impl<V: Clone> Future for WaitFlight<'_, V> {
    type Output = Option<V>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<V>> {
        let this = self.get_mut();
        this.flight.poll_wait(&mut this.waiter, cx)
    }
}

impl<V: Clone> Drop for WaitFlight<'_, V> {
    fn drop(&mut self) {
        if let Some(id) = self.waiter {
            self.flight.forget_waiter(id);
        }
    }
}

enum Begin<V> {
    Hit(V),
    Join(Arc<Flight<V>>),
    Lead(Arc<Flight<V>>, Lease),
}

/// The leader's obligation to finish its flight. If it is dropped unfinished (the loader returned
/// an error or panicked, or the async caller dropped its future), the flight is abandoned so that
/// its waiters retry instead of hanging.
struct Leader<'a, K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
    V: Clone,
{
    cache: &'a Cache<K, V, S>,
    hash: u64,
    flight: Arc<Flight<V>>,
    finished: bool,
}

impl<'a, K, V, S> Leader<'a, K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
    V: Clone,
{
    fn new(cache: &'a Cache<K, V, S>, hash: u64, flight: Arc<Flight<V>>) -> Self {
        Self {
            cache,
            hash,
            flight,
            finished: false,
        }
    }

    /// Saves the loaded value under the lease, unregisters the flight and hands the result to the
    /// waiters, all in one critical section for the save and the unregistration.
    fn finish<E>(
        mut self,
        key: K,
        result: Result<V, E>,
        lease: Lease,
        max_ttl: Option<Duration>,
    ) -> Result<V, E> {
        let cache = self.cache;
        let cell = cache.cell(self.hash);
        let value = match result {
            Ok(value) => value,
            Err(e) => {
                Counters::bump(&cell.counters.load_errors);
                return Err(e); // `Drop` abandons the flight.
            }
        };
        let weight = cache.weigh(&key, &value);
        let (now, expires_at) = cache.write_times(cache.ttl_within(max_ttl));
        let mut core = cell.core.lock();
        core.flights.unregister(self.hash, &self.flight);
        if cache.save_allowed(cell, &core, &lease, self.hash, None) {
            core.counts.saves += 1;
            cache.store(
                cell,
                &mut core,
                Admit::Policy,
                self.hash,
                key,
                value.clone(),
                weight,
                expires_at,
                now,
            );
        } else {
            core.counts.stale_rejected += 1;
        }
        drop(core);
        self.finished = true;
        self.flight.complete(Outcome::Done(value.clone()));
        Ok(value)
    }
}

impl<K, V, S> Drop for Leader<'_, K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
    V: Clone,
{
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let cell = self.cache.cell(self.hash);
        if std::thread::panicking() {
            Counters::bump(&cell.counters.load_errors);
        }
        cell.core.lock().flights.unregister(self.hash, &self.flight);
        self.flight.complete(Outcome::Abandoned);
    }
}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher,
{
    /// Hit, join the flight in progress, or register a new flight and lead it.
    fn begin_load(&self, key: &K, hash: u64) -> Begin<V> {
        let cell = self.cell(hash);
        let now = || self.clock_now();
        let guard = self.readers.enter();
        if let Some(v) = cell.shared.get(&guard, hash, key, now, V::clone) {
            guard.count(true);
            return Begin::Hit(v);
        }
        drop(guard);
        let mut core = cell.core.lock();
        if let Some(v) = self.shard(cell, &mut core).get(hash, key, now, V::clone) {
            drop(core);
            self.readers.hit();
            return Begin::Hit(v);
        }
        self.readers.miss();
        if let Some(flight) = core.flights.find(hash, key) {
            return Begin::Join(Arc::clone(flight));
        }
        let flight = Arc::new(Flight::new());
        core.flights
            .register(hash, key.clone(), Arc::clone(&flight));
        // Captured in the same critical section that registered the flight: a write that detaches
        // the flight also fences this lease.
        let lease = self.lease_locked(cell, hash);
        drop(core);
        Counters::bump(&cell.counters.loads);
        Begin::Lead(flight, lease)
    }

    /// The cached value of `key`, or the value `loader` reads from the source, saved under a lease.
    ///
    /// Single-flight: while one caller loads a key, other callers of `get_or_load` for that key
    /// wait for its value (this call blocks the calling thread while it waits or loads). A purge,
    /// insert or flush of the key during the load detaches it: callers that arrive after the write
    /// returned start a fresh load and never receive the value read before it, and that value is
    /// not cached. If the loader returns an error, its caller gets the error; if it panics, the
    /// panic reaches its caller. Either way the waiters do not hang: one of them retries with its
    /// own loader.
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, String> = leasecache::Cache::new(100);
    /// let v = cache.get_or_load(7, |k| Ok::<_, std::io::Error>(format!("row {k}")));
    /// assert_eq!(v.unwrap(), "row 7");
    /// assert_eq!(cache.get(&7).as_deref(), Some("row 7"));
    /// ```
    pub fn get_or_load<F, E>(&self, key: K, loader: F) -> Result<V, E>
    where
        F: FnOnce(&K) -> Result<V, E>,
    {
        let hash = self.hash(&key);
        loop {
            match self.begin_load(&key, hash) {
                Begin::Hit(v) => return Ok(v),
                Begin::Join(flight) => {
                    if let Some(v) = flight.wait() {
                        return Ok(v);
                    }
                }
                Begin::Lead(flight, lease) => {
                    let leader = Leader::new(self, hash, flight);
                    let result = loader(&key);
                    return leader.finish(key, result, lease, None);
                }
            }
        }
    }

    /// [`get_or_load`](Self::get_or_load) for async code. The loader receives its own clone of
    /// the key and returns a future.
    ///
    /// Runtime-agnostic (no executor is assumed) and cancellation-safe: dropping the leading
    /// future hands the load to a waiter, and dropping a waiting future leaves the load alone.
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, String> = leasecache::Cache::new(100);
    /// let v = futures_executor::block_on(cache.get_or_load_async(7, |k| async move {
    ///     Ok::<_, std::io::Error>(format!("row {k}"))
    /// }));
    /// assert_eq!(v.unwrap(), "row 7");
    /// ```
    pub async fn get_or_load_async<F, Fut, E>(&self, key: K, loader: F) -> Result<V, E>
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        self.get_or_load_async_within(key, |k| async move { Ok((loader(k).await?, None)) })
            .await
    }

    /// [`get_or_load_async`](Self::get_or_load_async) whose loader also says how long the value
    /// may live at most (the entry gets the shorter of that and the cache's TTL).
    pub(crate) async fn get_or_load_async_within<F, Fut, E>(
        &self,
        key: K,
        loader: F,
    ) -> Result<V, E>
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<(V, Option<Duration>), E>>,
    {
        let hash = self.hash(&key);
        loop {
            match self.begin_load(&key, hash) {
                Begin::Hit(v) => return Ok(v),
                Begin::Join(flight) => {
                    let waiting = WaitFlight {
                        flight: &flight,
                        waiter: None,
                    };
                    if let Some(v) = waiting.await {
                        return Ok(v);
                    }
                }
                Begin::Lead(flight, lease) => {
                    let leader = Leader::new(self, hash, flight);
                    let result = loader(key.clone()).await;
                    let (result, max_ttl) = match result {
                        Ok((value, max_ttl)) => (Ok(value), max_ttl),
                        Err(e) => (Err(e), None),
                    };
                    return leader.finish(key, result, lease, max_ttl);
                }
            }
        }
    }
}
