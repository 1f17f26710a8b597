//! Stress torture through the public API, with a version oracle.
//!
//! A simulated source holds a version per row. Writers update a row (bump its version) and then
//! purge it or insert the new version, and afterwards publish "the latest version whose write
//! returned" as the row's *floor*. Readers load the floor **before** they start a read, in every
//! read mode (`get_or_lease` + `save_with_lease`, `get_or_load`, `get_or_load_async`), and the
//! value they get must be at least that floor: a smaller one is a stale observation, the bug this
//! crate exists to prevent. Capacity is smaller than the key set and entries live a millisecond,
//! so eviction and expiry run all the time. After quiescence every cached entry must equal its
//! row's current version.
//!
//! The teeth check runs the same oracle over the classic unleased cache-aside path (plain `get`,
//! source read, `insert`) and must catch it serving stale data.
//!
//! Bounded in time: about a second per test by default; `LEASECACHE_STRESS_SECS=<seconds>` runs
//! each test that long instead.

use leasecache::{Cache, Lookup};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long each stress test runs.
fn budget() -> Duration {
    std::env::var("LEASECACHE_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(Duration::from_millis(1000), Duration::from_secs_f64)
}

/// The simulated database: a version per row, and the oracle's floor per row.
struct Source {
    versions: Vec<AtomicU64>,
    /// The latest version whose write (source update, then cache purge or insert) has returned.
    floors: Vec<AtomicU64>,
    /// One writer per row at a time, like a row lock: two unconditional inserts of one row racing
    /// each other could leave the older one cached, which is the writers' problem, not the cache's.
    row_locks: Vec<Mutex<()>>,
}

impl Source {
    fn new(rows: usize) -> Self {
        Self {
            versions: (0..rows).map(|_| AtomicU64::new(1)).collect(),
            floors: (0..rows).map(|_| AtomicU64::new(0)).collect(),
            row_locks: (0..rows).map(|_| Mutex::new(())).collect(),
        }
    }

    fn rows(&self) -> u64 {
        self.versions.len() as u64
    }

    /// Reads a row from the source.
    fn read(&self, row: u64) -> u64 {
        // SeqCst everywhere in the oracle: it must not be the weak link.
        self.versions[row as usize].load(Ordering::SeqCst)
    }

    fn floor(&self, row: u64) -> u64 {
        self.floors[row as usize].load(Ordering::SeqCst)
    }

    /// Updates the row, then purges it (or inserts the new version), then raises the floor.
    fn write(&self, cache: &Cache<u64, u64>, row: u64, insert: bool) {
        let _row = self.row_locks[row as usize].lock().unwrap();
        let version = self.versions[row as usize].fetch_add(1, Ordering::SeqCst) + 1;
        if insert {
            cache.insert(row, version);
        } else {
            cache.purge(&row);
        }
        self.floors[row as usize].fetch_max(version, Ordering::SeqCst);
    }
}

/// What readers saw.
#[derive(Default)]
struct Tally {
    observations: AtomicU64,
    stale: AtomicU64,
    first_stale: Mutex<Option<String>>,
}

impl Tally {
    fn observe(&self, mode: &str, row: u64, floor: u64, value: u64) {
        self.observations.fetch_add(1, Ordering::Relaxed);
        if value < floor {
            self.stale.fetch_add(1, Ordering::Relaxed);
            self.first_stale.lock().unwrap().get_or_insert_with(|| {
                format!("{mode}: row {row} read version {value} after version {floor} was written")
            });
        }
    }
}

/// A small xorshift generator per thread.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Every cached entry equals its row's current version.
fn assert_quiescent(cache: &Cache<u64, u64>, source: &Source) {
    for row in 0..source.rows() {
        if let Some(v) = cache.get(&row) {
            assert_eq!(
                v,
                source.read(row),
                "row {row} is cached stale after quiescence"
            );
        }
    }
}

/// Writers, leased readers, `get_or_load` readers and `get_or_load_async` tasks hammer one cache
/// until `until`. Returns (writes, the readers' tally).
fn torture(
    cache: &Arc<Cache<u64, u64>>,
    source: &Arc<Source>,
    until: Instant,
) -> (u64, Arc<Tally>) {
    let tally = Arc::new(Tally::default());
    let writes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for w in 0..2u64 {
        let (cache, source, writes) = (cache.clone(), source.clone(), writes.clone());
        threads.push(thread::spawn(move || {
            let mut rng = Rng(0x5EED + w);
            while Instant::now() < until {
                let row = rng.below(source.rows());
                source.write(&cache, row, rng.below(4) == 0);
                writes.fetch_add(1, Ordering::Relaxed);
                if rng.below(64) == 0 {
                    cache.flush(); // fences every lease; versions and floors are unchanged
                }
                if rng.below(8) == 0 {
                    thread::yield_now();
                }
            }
        }));
    }
    for r in 0..4u64 {
        let (cache, source, tally) = (cache.clone(), source.clone(), tally.clone());
        threads.push(thread::spawn(move || {
            let mut rng = Rng(0xBEEF + r);
            let leased = r % 2 == 0;
            while Instant::now() < until {
                let row = rng.below(source.rows());
                let floor = source.floor(row);
                let value = if leased {
                    match cache.get_or_lease(&row) {
                        Lookup::Hit(v) => v,
                        Lookup::Miss(lease) => {
                            let v = source.read(row);
                            thread::yield_now(); // widen the read-to-save window
                            let _ = cache.save_with_lease(row, v, lease);
                            v
                        }
                    }
                } else {
                    cache
                        .get_or_load(row, |r| {
                            let v = source.read(r);
                            thread::yield_now();
                            Ok::<_, Infallible>(v)
                        })
                        .unwrap()
                };
                let mode = if leased {
                    "get_or_lease"
                } else {
                    "get_or_load"
                };
                tally.observe(mode, row, floor, value);
            }
        }));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..4u64)
        .map(|t| {
            let (cache, source, tally, stop) =
                (cache.clone(), source.clone(), tally.clone(), stop.clone());
            runtime.spawn(async move {
                let mut rng = Rng(0xA5A5 + t);
                while !stop.load(Ordering::Relaxed) {
                    let row = rng.below(source.rows());
                    let floor = source.floor(row);
                    let loader_source = source.clone();
                    let value = cache
                        .get_or_load_async(row, |r| async move {
                            let v = loader_source.read(r);
                            tokio::task::yield_now().await; // a load that spans a suspension
                            Ok::<_, Infallible>(v)
                        })
                        .await
                        .unwrap();
                    tally.observe("get_or_load_async", row, floor, value);
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    (writes.load(Ordering::Relaxed), tally)
}

#[test]
fn stress_all_read_modes_never_observe_stale_data() {
    let budget = budget();
    // Two configurations, half the budget each: eviction and 1 ms TTL pressure over 16 rows with
    // room for 8, and a roomy cache with no TTL where more reads hit.
    let configs: [(&str, Cache<u64, u64>); 2] = [
        (
            "capacity 8 of 16 rows, ttl 1ms, 2 shards",
            Cache::builder()
                .max_capacity(8)
                .shards(2)
                .time_to_live(Duration::from_millis(1))
                .build(),
        ),
        (
            "capacity 64, no ttl",
            Cache::builder().max_capacity(64).build(),
        ),
    ];
    let mut fenced = 0;
    for (name, cache) in configs {
        let cache = Arc::new(cache);
        let source = Arc::new(Source::new(16));
        let (writes, tally) = torture(&cache, &source, Instant::now() + budget / 2);
        let stats = cache.stats();
        let observations = tally.observations.load(Ordering::Relaxed);
        let stale = tally.stale.load(Ordering::Relaxed);
        eprintln!(
            "stress [{name}]: {writes} writes, {observations} reads checked, {stale} stale; \
             {stats:?}"
        );
        assert_eq!(stale, 0, "{:?}", tally.first_stale.lock().unwrap());
        assert!(
            writes > 0 && observations > 0,
            "the stress test did nothing"
        );
        assert_quiescent(&cache, &source);
        fenced += stats.stale_rejected;
    }
    // The race really happened (and was closed): some saves were rejected as stale.
    assert!(
        fenced > 0,
        "no save was ever fenced: the readers never raced the writers"
    );
}

/// The same oracle must catch the unleased cache-aside path (`get`, source read, `insert`): a
/// reader that read the old row and writes it back after the writer's purge leaves it cached.
#[test]
fn teeth_unleased_reads_are_caught_serving_stale_data() {
    let cache = Arc::new(Cache::<u64, u64>::new(64));
    let source = Arc::new(Source::new(2));
    let tally = Arc::new(Tally::default());
    let found = Arc::new(AtomicBool::new(false));
    // Bounded: stop at the first stale observation or after ten seconds.
    let until = Instant::now() + Duration::from_secs(10).max(budget());
    let mut threads = Vec::new();
    {
        let (cache, source, found) = (cache.clone(), source.clone(), found.clone());
        threads.push(thread::spawn(move || {
            let mut rng = Rng(7);
            while !found.load(Ordering::Relaxed) && Instant::now() < until {
                source.write(&cache, rng.below(source.rows()), false);
                thread::yield_now();
            }
        }));
    }
    for r in 0..3u64 {
        let (cache, source, tally, found) =
            (cache.clone(), source.clone(), tally.clone(), found.clone());
        threads.push(thread::spawn(move || {
            let mut rng = Rng(11 + r);
            while !found.load(Ordering::Relaxed) && Instant::now() < until {
                let row = rng.below(source.rows());
                let floor = source.floor(row);
                let value = match cache.get(&row) {
                    Some(v) => v,
                    None => {
                        let v = source.read(row);
                        for _ in 0..(rng.below(4) + 1) {
                            thread::yield_now(); // the gap between the read and the write-back
                        }
                        cache.insert(row, v); // unleased: nothing fences it
                        v
                    }
                };
                tally.observe("unleased get + insert", row, floor, value);
                if tally.stale.load(Ordering::Relaxed) > 0 {
                    found.store(true, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let stale = tally.stale.load(Ordering::Relaxed);
    eprintln!(
        "teeth: {stale} stale of {} reads: {:?}",
        tally.observations.load(Ordering::Relaxed),
        tally.first_stale.lock().unwrap()
    );
    assert!(stale > 0, "the oracle failed to catch the unleased race");
}

/// A value that knows its key and whether it is alive: dropping it marks it dead, and cloning a
/// dead one fails. A read that cloned a value after its slot was freed, or from a slot refilled
/// with another key's entry, would be caught here.
#[derive(Debug)]
struct Checked {
    key: u64,
    /// Atomic so that the store in `drop` is not optimized away as dead and the load in `clone`
    /// looks at memory another thread may have just changed.
    alive: AtomicU64,
}

const ALIVE: u64 = 0xA11C_E0F1_1FE0_A11C;
const DEAD: u64 = 0xDEAD_DEAD_DEAD_DEAD;

/// `Checked` values alive now (made and not yet dropped).
static LIVE: AtomicI64 = AtomicI64::new(0);

impl Checked {
    fn new(key: u64) -> Self {
        LIVE.fetch_add(1, Ordering::Relaxed);
        Self {
            key,
            alive: AtomicU64::new(ALIVE),
        }
    }
}

impl Clone for Checked {
    fn clone(&self) -> Self {
        let alive = self.alive.load(Ordering::Relaxed);
        assert_eq!(alive, ALIVE, "cloned a dropped value of key {}", self.key);
        Self::new(self.key)
    }
}

impl Drop for Checked {
    fn drop(&mut self) {
        let alive = self.alive.swap(DEAD, Ordering::Relaxed);
        assert_eq!(alive, ALIVE, "dropped a value of key {} twice", self.key);
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Lock-free reads race writers that replace, purge, evict and flush, so that the slots readers
/// find are retired and freed (in batches of 32 in a cache this small) all the time, past busy
/// readers, idle ones (sleeping between reads) and ones whose threads have exited. Every value a
/// read returns must be alive and belong to the key asked for; every value is dropped exactly
/// once, retired ones a batch or two after they were replaced, and the rest with the cache.
#[test]
fn lock_free_reads_never_see_a_freed_or_reused_slot() {
    let cache = Arc::new(
        Cache::<u64, Checked>::builder()
            .max_capacity(16)
            .shards(1)
            .build(),
    );
    let until = Instant::now() + budget();
    let reads = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for w in 0..2u64 {
        let cache = cache.clone();
        threads.push(thread::spawn(move || {
            let mut rng = Rng(0xC0FFEE + w);
            while Instant::now() < until {
                let key = rng.below(64);
                match rng.below(16) {
                    0 => {
                        cache.purge(&key);
                    }
                    1 if w == 0 => cache.flush(),
                    _ => cache.insert(key, Checked::new(key)),
                }
            }
        }));
    }
    // Readers 0 and 1 read all the time; reader 2 sleeps between reads, so that writers find
    // its record idle at an old epoch and take the barrier path to free past it; reader 3 is a
    // series of short-lived threads, whose records are given up and taken over.
    for r in 0..4u64 {
        let (cache, reads) = (cache.clone(), reads.clone());
        threads.push(thread::spawn(move || {
            let mut rng = Rng(0xFACE + r);
            while Instant::now() < until {
                if r == 2 {
                    thread::sleep(Duration::from_micros(200));
                }
                if r == 3 {
                    let cache = cache.clone();
                    let read = thread::spawn(move || cache.get(&0).map(|v| v.key));
                    assert!(matches!(read.join().unwrap(), None | Some(0)));
                }
                let key = rng.below(64);
                let value = match rng.below(3) {
                    0 => cache.get(&key),
                    1 => cache.get_or_lease(&key).hit(),
                    _ => {
                        cache.contains_key(&key);
                        None
                    }
                };
                if let Some(value) = value {
                    assert_eq!(
                        value.key, key,
                        "a read of key {key} returned another key's value"
                    );
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in threads {
        t.join()
            .expect("a reader saw a freed or reused slot, or a writer panicked");
    }
    let stats = cache.stats();
    eprintln!(
        "lock-free reads: {} reads; {stats:?}",
        reads.load(Ordering::Relaxed)
    );
    assert!(
        stats.hits > 0 && stats.evictions > 0 && stats.inserts > 1_000,
        "the test did nothing"
    );
    // With no read under way, a flush drops every value at once: retired ones too.
    cache.flush();
    assert_eq!(LIVE.load(Ordering::Relaxed), 0, "values outlived a flush");
    for key in 0..8 {
        cache.insert(key, Checked::new(key));
    }
    drop(cache);
    assert_eq!(
        LIVE.load(Ordering::Relaxed),
        0,
        "values leaked with the cache"
    );
}
