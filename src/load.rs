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
use crate::stale::MaybeStale;
use crate::stats::Counters;
use crate::sync::{Arc, AtomicU64, Condvar, Mutex, Ordering, thread_token};
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
    /// Inlined: every write detaches, and flights are rare, so the common case is one test of the
    /// table's length in the write itself; the probe is out of line.
    #[inline]
    pub(crate) fn detach<Q>(&mut self, hash: u64, key: &Q)
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        if !self.table.is_empty() {
            self.detach_probed(hash, key);
        }
    }

    #[inline(never)]
    fn detach_probed<Q>(&mut self, hash: u64, key: &Q)
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
    /// The [`thread_token`] of the thread running the leader's loader right now (a sync loader
    /// from start to end, an async one for each poll), 0 otherwise. A caller on that thread that
    /// finds the flight is inside the loader: waiting for the flight would wait for itself.
    loading_on: AtomicU64,
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
            loading_on: AtomicU64::new(0),
        }
    }

    /// Runs `f` as (a part of) the leader's load, on the calling thread.
    fn loading<R>(&self, f: impl FnOnce() -> R) -> R {
        // Relaxed, here and in `runs_here`: a thread only compares the mark with its own token,
        // and only it writes that token (it sees its own writes in program order).
        self.loading_on.store(thread_token(), Ordering::Relaxed);
        let result = f();
        self.loading_on.store(0, Ordering::Relaxed);
        result
    }

    /// Whether the calling thread is inside this flight's loader.
    fn runs_here(&self) -> bool {
        self.loading_on.load(Ordering::Relaxed) == thread_token()
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

/// Runs `f` as the load of every flight of `flights` (a batch loader), on the calling thread.
fn loading_all<V: Clone, R>(flights: &[&Flight<V>], f: impl FnOnce() -> R) -> R {
    // Relaxed: as in `Flight::loading`.
    let token = thread_token();
    for flight in flights {
        flight.loading_on.store(token, Ordering::Relaxed);
    }
    let result = f();
    for flight in flights {
        flight.loading_on.store(0, Ordering::Relaxed);
    }
    result
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
    /// Another caller loads the key, and an opt-in caller gets the value its latest purge
    /// replaced (see `crate::stale`).
    Stale(V, Duration),
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
    /// The clock when the load began, if loads are timed (XFetch, `crate::refresh`); else 0.
    started: u64,
}

impl<'a, K, V, S> Leader<'a, K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
    V: Clone,
{
    fn new(cache: &'a Cache<K, V, S>, hash: u64, flight: Arc<Flight<V>>) -> Self {
        let started = if cache.refresh.xfetch.is_on() {
            cache.clock_now()
        } else {
            0
        };
        Self {
            cache,
            hash,
            flight,
            finished: false,
            started,
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
        if self.started != 0 {
            let took = cache.clock_now().saturating_sub(self.started);
            cache.refresh.xfetch.observe(took);
        }
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
        cache.unlock(core);
        // Cloned before the flight counts as finished: a `V::clone` that panics here leaves it
        // unfinished, and `Drop` abandons it so that its waiters retry instead of hanging.
        let for_waiters = value.clone();
        self.finished = true;
        self.flight.complete(Outcome::Done(for_waiters));
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
        self.begin_load_as(key, hash, false)
    }

    /// [`begin_load`](Self::begin_load); with `allow_stale`, a caller that would join a flight
    /// gets the key's stashed value instead if there is a usable one (`crate::stale`), found in
    /// the critical section that found the flight.
    fn begin_load_as(&self, key: &K, hash: u64, allow_stale: bool) -> Begin<V> {
        let cell = self.cell(hash);
        let now = || self.clock_now();
        let tti = || self.tti_nanos();
        let guard = self.readers.enter();
        if let Some(v) = cell
            .shared
            .get_touching(&guard, hash, key, now, tti, V::clone)
        {
            guard.count(true, hash);
            return Begin::Hit(v);
        }
        drop(guard);
        let mut core = cell.core.lock();
        if let Some(v) = self
            .shard(cell, &mut core)
            .get_touching(hash, key, now, tti, V::clone)
        {
            drop(core);
            self.readers.count(true, hash);
            return Begin::Hit(v);
        }
        self.readers.count(false, hash);
        let flight = Arc::new(Flight::new());
        match core.flights.find(hash, key) {
            // A loader that loads its own key, on the thread that runs it: it would wait for
            // itself forever. It loads on its own instead, in a flight nobody can join.
            Some(joined) if joined.runs_here() => {}
            Some(joined) => {
                let joined = Arc::clone(joined);
                if allow_stale {
                    if let Some((value, ago)) = self.stale_locked(cell, &mut core, hash, key) {
                        return Begin::Stale(value, ago);
                    }
                }
                return Begin::Join(joined);
            }
            None => core
                .flights
                .register(hash, key.clone(), Arc::clone(&flight)),
        }
        // Captured in the same critical section that registered the flight: a write that detaches
        // the flight also fences this lease.
        let lease = self.lease_locked(cell, hash);
        drop(core);
        Counters::bump(&cell.counters.loads);
        Begin::Lead(flight, lease)
    }

    /// The cached value of `key`, or the value `loader` reads from the source, saved under a lease.
    /// The loader receives its own clone of the key (as in every layer's loaders).
    ///
    /// Single-flight: while one caller loads a key, other callers of `get_or_load` for that key
    /// wait for its value (this call blocks the calling thread while it waits or loads). A purge,
    /// insert or flush of the key during the load detaches it: callers that arrive after the write
    /// returned start a fresh load and never receive the value read before it, and that value is
    /// not cached. If the loader returns an error, its caller gets the error; if it panics, the
    /// panic reaches its caller. Either way the waiters do not hang: one of them retries with its
    /// own loader (also when the leader's value cannot be handed to them because its `V::clone`
    /// panics).
    ///
    /// A loader that itself calls `get_or_load` for the key it is loading does not wait for its
    /// own load (that would never end): the inner call runs its loader on its own, outside
    /// single-flight, and saves under its own lease.
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, String> = leasecache::Cache::new(100);
    /// let v = cache.get_or_load(7, |k| Ok::<_, std::io::Error>(format!("row {k}")));
    /// assert_eq!(v.unwrap(), "row 7");
    /// assert_eq!(cache.get(&7).as_deref(), Some("row 7"));
    /// ```
    pub fn get_or_load<F, E>(&self, key: K, loader: F) -> Result<V, E>
    where
        F: FnOnce(K) -> Result<V, E>,
    {
        let hash = self.hash(&key);
        loop {
            match self.begin_load(&key, hash) {
                Begin::Hit(v) | Begin::Stale(v, _) => match self.refresh_claim(&key, hash) {
                    Some(claim) => return Ok(claim.run(key, v, loader)),
                    None => return Ok(v),
                },
                Begin::Join(flight) => {
                    if let Some(v) = flight.wait() {
                        return Ok(v);
                    }
                }
                Begin::Lead(flight, lease) => {
                    let leader = Leader::new(self, hash, flight);
                    let result = leader.flight.loading(|| loader(key.clone()));
                    return leader.finish(key, result, lease, None);
                }
            }
        }
    }

    /// The values of `keys`, in their order, loading the ones not cached **with one call of
    /// `loader` for all of them** (Caffeine's `getAll(keys, loader)`), each saved under its own
    /// lease.
    ///
    /// Single-flight per key, exactly as [`get_or_load`](Self::get_or_load): a key another caller
    /// is loading already is not loaded again (this call waits for that load's value), and a
    /// `get_or_load` of one of the keys this call loads waits for this call's value. A purge,
    /// insert or flush of a key during the load fences that key's save and detaches its flight,
    /// as for `get_or_load` (I1, I7): callers that arrive after the write never receive the
    /// value loaded before it.
    ///
    /// `loader` receives the keys to load (those not cached and not being loaded, in the order
    /// of `keys`) and returns one value per key, in the same order. It is not called when every
    /// key is cached or being loaded by others. If another caller's load of a key fails or is
    /// abandoned, this call loads that key on its own with `loader` (a call with that one key).
    /// If `loader` returns an error, so does this call: the values it would have loaded are not
    /// cached, and callers waiting for them retry with their own loaders.
    ///
    /// # Panics
    ///
    /// If `loader` returns another number of values than it was given keys (the flights it led
    /// are abandoned first, so nobody waits for them).
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, String> = leasecache::Cache::new(100);
    /// cache.insert(2, "cached".to_string());
    /// let values = cache.get_many_or_load(&[1, 2, 3], |missing| {
    ///     assert_eq!(missing, [1, 3]); // one round trip for both
    ///     Ok::<_, std::io::Error>(missing.iter().map(|k| format!("row {k}")).collect())
    /// });
    /// assert_eq!(values.unwrap(), ["row 1", "cached", "row 3"]);
    /// assert_eq!(cache.get(&3).as_deref(), Some("row 3"));
    /// ```
    pub fn get_many_or_load<F, E>(&self, keys: &[K], mut loader: F) -> Result<Vec<V>, E>
    where
        F: FnMut(&[K]) -> Result<Vec<V>, E>,
    {
        let mut values: Vec<Option<V>> = Vec::with_capacity(keys.len());
        let mut joined = Vec::new();
        let mut led = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let hash = self.hash(key);
            match self.begin_load(key, hash) {
                Begin::Hit(v) | Begin::Stale(v, _) => values.push(Some(v)),
                Begin::Join(flight) => {
                    values.push(None);
                    joined.push((i, flight));
                }
                Begin::Lead(flight, lease) => {
                    values.push(None);
                    led.push((i, Leader::new(self, hash, flight), lease));
                }
            }
        }
        // The loads this call leads are finished before it waits for anyone else's: two batches
        // that each lead a key the other waits for then both make progress.
        if !led.is_empty() {
            let to_load: Vec<K> = led.iter().map(|(i, _, _)| keys[*i].clone()).collect();
            let flights: Vec<&Flight<V>> = led.iter().map(|(_, l, _)| &*l.flight).collect();
            let loaded = loading_all(&flights, || loader(&to_load))?;
            drop(flights);
            assert_eq!(
                loaded.len(),
                to_load.len(),
                "the batch loader returned {} values for {} keys",
                loaded.len(),
                to_load.len()
            );
            for ((i, leader, lease), value) in led.into_iter().zip(loaded) {
                let value = leader.finish(keys[i].clone(), Ok::<V, E>(value), lease, None)?;
                values[i] = Some(value);
            }
        }
        for (i, flight) in joined {
            let value = match flight.wait() {
                Some(v) => v,
                None => self.get_or_load(keys[i].clone(), |k| {
                    let mut one = loader(std::slice::from_ref(&k))?;
                    assert_eq!(
                        one.len(),
                        1,
                        "the batch loader returned {} values for 1 key",
                        one.len()
                    );
                    Ok(one.pop().expect("one value"))
                })?,
            };
            values[i] = Some(value);
        }
        Ok(values
            .into_iter()
            .map(|v| v.expect("every key has its value"))
            .collect())
    }

    /// [`get_or_load`](Self::get_or_load) with a loader that cannot fail (moka's `get_with`
    /// beside `try_get_with`). Same single-flight and lease guarantees.
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, String> = leasecache::Cache::new(100);
    /// assert_eq!(cache.get_with(7, |k| format!("row {k}")), "row 7");
    /// assert_eq!(cache.get(&7).as_deref(), Some("row 7"));
    /// ```
    pub fn get_with<F>(&self, key: K, loader: F) -> V
    where
        F: FnOnce(K) -> V,
    {
        match self.get_or_load(key, |k| Ok::<V, std::convert::Infallible>(loader(k))) {
            Ok(value) => value,
            Err(never) => match never {},
        }
    }

    /// [`get_or_load`](Self::get_or_load) for async code. The loader receives its own clone of
    /// the key and returns a future.
    ///
    /// Runtime-agnostic (no executor is assumed) and cancellation-safe: dropping the leading
    /// future hands the load to a waiter, and dropping a waiting future leaves the load alone.
    /// A loader future that awaits `get_or_load_async` for its own key does not wait for itself:
    /// as with [`get_or_load`](Self::get_or_load), the inner call loads on its own.
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
        if self.refresh.is_on() {
            let hash = self.hash(&key);
            if let Some(claim) = self.refresh_claim(&key, hash) {
                if let Some(current) = self.get(&key) {
                    return Ok(claim.run_async(key, current, loader).await);
                }
            }
        }
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
        match self.load_async_as(key, loader, false).await? {
            MaybeStale::Fresh(value) | MaybeStale::Stale { value, .. } => Ok(value),
        }
    }

    /// The async single-flight loop; with `allow_stale`, a caller that would wait for another
    /// caller's load may get the key's stashed value instead.
    async fn load_async_as<F, Fut, E>(
        &self,
        key: K,
        loader: F,
        allow_stale: bool,
    ) -> Result<MaybeStale<V>, E>
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<(V, Option<Duration>), E>>,
    {
        let hash = self.hash(&key);
        loop {
            match self.begin_load_as(&key, hash, allow_stale) {
                Begin::Hit(v) => return Ok(MaybeStale::Fresh(v)),
                Begin::Stale(value, replaced_ago) => {
                    return Ok(MaybeStale::Stale {
                        value,
                        replaced_ago,
                    });
                }
                Begin::Join(flight) => {
                    let waiting = WaitFlight {
                        flight: &flight,
                        waiter: None,
                    };
                    if let Some(v) = waiting.await {
                        return Ok(MaybeStale::Fresh(v));
                    }
                }
                Begin::Lead(flight, lease) => {
                    let leader = Leader::new(self, hash, flight);
                    let mut load = std::pin::pin!(loader(key.clone()));
                    let result =
                        std::future::poll_fn(|cx| leader.flight.loading(|| load.as_mut().poll(cx)))
                            .await;
                    let (result, max_ttl) = match result {
                        Ok((value, max_ttl)) => (Ok(value), max_ttl),
                        Err(e) => (Err(e), None),
                    };
                    return leader
                        .finish(key, result, lease, max_ttl)
                        .map(MaybeStale::Fresh);
                }
            }
        }
    }

    /// [`get_or_load`](Self::get_or_load) for a caller that tolerates a stale value: while
    /// another caller loads `key` after a purge removed its value, this call returns that value
    /// at once as [`MaybeStale::Stale`] (with how long ago the purge was, by the cache's clock)
    /// instead of waiting, if the cache has a [`stale_grace`](crate::CacheBuilder::stale_grace)
    /// and the purge is younger than it. Otherwise it is `get_or_load`, its value
    /// [`MaybeStale::Fresh`]: a hit, a wait for the load in flight, or this caller's own load
    /// (the caller that loads never gets a stale value).
    ///
    /// What it may return is exactly: never a value older than the one the key's latest purge
    /// replaced, never after the grace, never once a value was stored for the key since (see
    /// [`CacheBuilder::stale_grace`](crate::CacheBuilder::stale_grace)). A stale value is
    /// never cached and never returned by any other method. Blocks the calling thread like `get_or_load` when it
    /// waits or loads; serving a stale value does not block but on the shard's lock. Counted in
    /// [`Stats::stale_served`](crate::Stats::stale_served).
    ///
    /// ```
    /// use leasecache::{Cache, MaybeStale};
    ///
    /// // Without a stale grace it is `get_or_load`, wrapped.
    /// let cache: Cache<u32, String> = Cache::new(100);
    /// let v = cache.get_or_load_allow_stale(7, |k| Ok::<_, ()>(format!("row {k}")));
    /// assert_eq!(v, Ok(MaybeStale::Fresh("row 7".to_string())));
    /// ```
    pub fn get_or_load_allow_stale<F, E>(&self, key: K, loader: F) -> Result<MaybeStale<V>, E>
    where
        F: FnOnce(K) -> Result<V, E>,
    {
        let hash = self.hash(&key);
        loop {
            match self.begin_load_as(&key, hash, true) {
                Begin::Hit(v) => {
                    return Ok(MaybeStale::Fresh(match self.refresh_claim(&key, hash) {
                        Some(claim) => claim.run(key, v, loader),
                        None => v,
                    }));
                }
                Begin::Stale(value, replaced_ago) => {
                    return Ok(MaybeStale::Stale {
                        value,
                        replaced_ago,
                    });
                }
                Begin::Join(flight) => {
                    if let Some(v) = flight.wait() {
                        return Ok(MaybeStale::Fresh(v));
                    }
                }
                Begin::Lead(flight, lease) => {
                    let leader = Leader::new(self, hash, flight);
                    let result = leader.flight.loading(|| loader(key.clone()));
                    return leader
                        .finish(key, result, lease, None)
                        .map(MaybeStale::Fresh);
                }
            }
        }
    }

    /// [`get_or_load_allow_stale`](Self::get_or_load_allow_stale) for async code, as
    /// [`get_or_load_async`](Self::get_or_load_async) is `get_or_load`'s: same rules, and it
    /// never blocks on a load.
    ///
    /// ```
    /// let cache: leasecache::Cache<u32, String> = leasecache::Cache::new(100);
    /// let v = futures_executor::block_on(cache.get_or_load_allow_stale_async(7, |k| async move {
    ///     Ok::<_, ()>(format!("row {k}"))
    /// }));
    /// assert_eq!(v.unwrap().fresh().as_deref(), Some("row 7"));
    /// ```
    pub async fn get_or_load_allow_stale_async<F, Fut, E>(
        &self,
        key: K,
        loader: F,
    ) -> Result<MaybeStale<V>, E>
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        if self.refresh.is_on() {
            let hash = self.hash(&key);
            if let Some(claim) = self.refresh_claim(&key, hash) {
                if let Some(current) = self.get(&key) {
                    return Ok(MaybeStale::Fresh(
                        claim.run_async(key, current, loader).await,
                    ));
                }
            }
        }
        self.load_async_as(key, |k| async move { Ok((loader(k).await?, None)) }, true)
            .await
    }

    /// For the tiered cache's opt-in reads: `key`'s stashed value, if another caller of this
    /// process loads it now (an L1 flight) and the stash has a usable one (`crate::stale`).
    #[cfg(feature = "redis")]
    pub(crate) fn stale_while_loading(&self, key: &K) -> Option<(V, Duration)> {
        if !self.has_stale_grace() {
            return None;
        }
        let hash = self.hash(key);
        let cell = self.cell(hash);
        let mut core = cell.core.lock();
        let loading = core
            .flights
            .find(hash, key)
            .is_some_and(|flight| !flight.runs_here());
        if loading {
            self.stale_locked(cell, &mut core, hash, key)
        } else {
            None
        }
    }
}

#[cfg(all(test, not(leasecache_loom)))]
mod tests {
    use crate::Cache;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, mpsc};
    use std::time::Duration;

    /// How long a call may take before the test calls it a deadlock (a guard against hanging the
    /// suite, not a timing assertion: the calls below return at once when they work).
    const HUNG: Duration = Duration::from_secs(30);

    /// Runs `f` on its own thread and returns its result, or fails the test if it never returns.
    fn returns<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(f()).unwrap());
        rx.recv_timeout(HUNG)
            .unwrap_or_else(|_| panic!("{what} never returned"))
    }

    /// A value whose clone panics once, when the shared countdown goes from 1 to 0.
    #[derive(Debug)]
    struct Fragile(Arc<AtomicUsize>);

    impl Clone for Fragile {
        fn clone(&self) -> Self {
            if self.0.fetch_sub(1, Ordering::Relaxed) == 1 {
                panic!("V::clone panicked");
            }
            Fragile(self.0.clone())
        }
    }

    #[test]
    fn a_panicking_clone_of_the_leaders_value_does_not_hang_its_waiters() {
        let cache: Arc<Cache<u32, Fragile>> = Arc::new(Cache::new(100));
        let (entered_tx, entered) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let leader = {
            let cache = cache.clone();
            std::thread::spawn(move || {
                cache.get_or_load(1, |_| {
                    entered_tx.send(()).unwrap();
                    released.recv().unwrap();
                    // The first clone (saving it) works, the second (for the waiters) panics.
                    Ok::<_, ()>(Fragile(Arc::new(AtomicUsize::new(2))))
                })
            })
        };
        entered.recv().unwrap();
        let waiter = {
            let cache = cache.clone();
            std::thread::spawn(move || {
                cache.get_or_load(1, |_| Ok::<_, ()>(Fragile(Arc::new(AtomicUsize::new(0)))))
            })
        };
        // The waiter looked the key up (and joined the flight, which it cannot leave).
        while cache.stats().misses < 2 {
            std::thread::yield_now();
        }
        release.send(()).unwrap();
        assert!(
            leader.join().is_err(),
            "the clone's panic reaches the leader"
        );
        let got = returns("the waiter", move || waiter.join());
        assert!(got.unwrap().is_ok(), "the waiter retried and got a value");
    }

    #[test]
    fn a_loader_that_loads_its_own_key_does_not_wait_for_itself() {
        let cache: Arc<Cache<u32, String>> = Arc::new(Cache::new(100));
        let c = cache.clone();
        let outer: Result<String, ()> = returns("the nested get_or_load", move || {
            c.get_or_load(1, |_| {
                let inner = c.get_or_load(1, |_| Ok::<_, ()>("inner".to_string()))?;
                Ok(format!("outer over {inner}"))
            })
        });
        assert_eq!(outer.unwrap(), "outer over inner");
        assert_eq!(cache.get(&1).as_deref(), Some("outer over inner"));
        assert_eq!(cache.stats().loads, 2, "the inner call loaded on its own");
    }

    #[test]
    fn an_async_loader_that_loads_its_own_key_does_not_wait_for_itself() {
        let cache: Arc<Cache<u32, String>> = Arc::new(Cache::new(100));
        let c = cache.clone();
        let outer: Result<String, ()> = returns("the nested get_or_load_async", move || {
            futures_executor::block_on(c.get_or_load_async(1, |_| async {
                let inner = c
                    .get_or_load_async(1, |_| async { Ok::<_, ()>("inner".to_string()) })
                    .await?;
                Ok(format!("outer over {inner}"))
            }))
        });
        assert_eq!(outer.unwrap(), "outer over inner");
        assert_eq!(cache.stats().loads, 2, "the inner call loaded on its own");
    }

    /// Two tasks of one thread, the second looking the key up while the first is suspended
    /// inside its loader: it joins the flight (the thread is not inside the loader then).
    #[test]
    fn a_task_on_the_leaders_thread_still_joins_its_flight() {
        use std::cell::Cell;
        use std::future::Future;
        use std::task::{Context, Poll, Waker};

        let cache: Cache<u32, String> = Cache::new(100);
        let ready = Cell::new(false);
        let mut cx = Context::from_waker(Waker::noop());
        let mut leader = std::pin::pin!(cache.get_or_load_async(1, |_| async {
            std::future::poll_fn(|_| {
                if ready.get() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            Ok::<_, ()>("led".to_string())
        }));
        assert!(
            leader.as_mut().poll(&mut cx).is_pending(),
            "suspended in its loader"
        );
        let mut joiner = std::pin::pin!(
            cache.get_or_load_async(1, |_| async { Ok::<_, ()>("own".to_string()) })
        );
        assert!(
            joiner.as_mut().poll(&mut cx).is_pending(),
            "joined the flight"
        );
        ready.set(true);
        assert_eq!(
            leader.as_mut().poll(&mut cx),
            Poll::Ready(Ok("led".to_string()))
        );
        assert_eq!(
            joiner.as_mut().poll(&mut cx),
            Poll::Ready(Ok("led".to_string()))
        );
        assert_eq!(cache.stats().loads, 1);
    }
}
