//! `stale_race --source replica|precommit`: the races a lease cannot see, where the *source*
//! hands a reader data older than a write that already completed.
//!
//! - `replica`: writers update the primary, commit, then purge; readers read a replica that
//!   applies every commit `--lag-us` late. A lease taken after the purge is current, the replica
//!   read is not: leases alone fail checks; a hold-off at least the lag fails none; source
//!   positions (the writer purges as of its commit's position, a reader saves as of the
//!   replica's replay position, read before the row) fail none with no hold-off at all.
//! - `precommit`: writers purge *before* committing (a pre-commit hook), the commit lands
//!   `--lag-us` later; readers read the primary. A reader that misses between the purge and the
//!   commit reads the old row under a fresh lease: leases alone fail; a write intent (opened
//!   before the commit, ended after it) fails none.
//!
//! A check is one write: once the writer's whole write (commit and purge, or intent end) has
//! returned, and in `replica`, once the replica has replayed it (a replica read is old until
//! then, cache or no cache), a read that starts afterwards must not observe an older version. Each scenario runs
//! on the in-process cache and, with `--redis URL` (feature `redis`), on `RedisStore`.

use leasecache::{Cache, Lookup};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scenario {
    Replica,
    PreCommit,
}

impl Scenario {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "replica" => Ok(Self::Replica),
            "precommit" => Ok(Self::PreCommit),
            other => Err(format!(
                "--source wants replica or precommit, got {other:?}"
            )),
        }
    }
}

/// What protects the cache besides its leases.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Guard {
    LeasesAlone,
    HoldOff,
    Positions,
    Intents,
}

impl Guard {
    fn name(self) -> &'static str {
        match self {
            Guard::LeasesAlone => "leases alone",
            Guard::HoldOff => "leases + hold-off = lag",
            Guard::Positions => "leases + source positions",
            Guard::Intents => "leases + write intents",
        }
    }
}

/// The database: a primary (a version per row, a commit position) and a replica that applies
/// each commit `lag` after it landed on the primary.
struct Db {
    rows: Vec<AtomicU64>,
    /// Commits not yet visible on the replica everywhere: (commit time, key, version, position).
    log: Mutex<VecDeque<(Instant, u64, u64, u64)>>,
    /// The replica's rows and replay position (applied from `log` when a reader looks).
    replica: Mutex<(Vec<u64>, u64)>,
    position: AtomicU64,
    lag: Duration,
    latency: Duration,
    reads: AtomicU64,
}

impl Db {
    fn new(keys: usize, lag: Duration, latency: Duration) -> Self {
        Self {
            rows: (0..keys).map(|_| AtomicU64::new(0)).collect(),
            log: Mutex::new(VecDeque::new()),
            replica: Mutex::new((vec![0; keys], 0)),
            position: AtomicU64::new(0),
            lag,
            latency,
            reads: AtomicU64::new(0),
        }
    }

    fn pause(&self, rng: &mut SmallRng) {
        thread::sleep(self.latency.mul_f64(rng.random_range(0.25..0.75)));
    }

    /// Commits a new version of `key`; returns (version, commit position).
    fn commit(&self, key: u64) -> (u64, u64) {
        let mut log = self.log.lock().unwrap();
        let version = self.rows[key as usize].fetch_add(1, Ordering::SeqCst) + 1;
        let position = self.position.fetch_add(1, Ordering::SeqCst) + 1;
        log.push_back((Instant::now(), key, version, position));
        (version, position)
    }

    fn primary(&self, key: u64, rng: &mut SmallRng) -> u64 {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.pause(rng);
        let version = self.rows[key as usize].load(Ordering::SeqCst);
        self.pause(rng);
        version
    }

    /// A replica read: (the replay position, read first, then the row).
    fn replica(&self, key: u64, rng: &mut SmallRng) -> (u64, u64) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.pause(rng);
        let now = Instant::now();
        let mut log = self.log.lock().unwrap();
        let mut replica = self.replica.lock().unwrap();
        while let Some(&(at, k, version, position)) = log.front() {
            if at + self.lag > now {
                break;
            }
            replica.0[k as usize] = version;
            replica.1 = position;
            log.pop_front();
        }
        let (position, version) = (replica.1, replica.0[key as usize]);
        drop((replica, log));
        self.pause(rng);
        (position, version)
    }
}

/// The cache under test: the in-process cache, or a Redis store driven from a runtime.
enum Backend {
    L1(Box<Cache<u64, u64>>),
    #[cfg(feature = "redis")]
    Redis(redis_backend::Store),
}

enum Lease {
    L1(leasecache::Lease),
    #[cfg(feature = "redis")]
    Redis(leasecache::redis::RedisLease),
}

/// An open write intent, ended after the commit.
enum Intent<'a> {
    L1(leasecache::WriteIntent<'a, u64, u64, ahash::RandomState, u64>),
    #[cfg(feature = "redis")]
    Redis(leasecache::redis::RedisWriteIntent<u64>),
}

impl Backend {
    fn lookup(&self, key: u64) -> Result<u64, Lease> {
        match self {
            Backend::L1(c) => match c.get_or_lease(&key) {
                Lookup::Hit(v) => Ok(v),
                Lookup::Miss(l) => Err(Lease::L1(l)),
            },
            #[cfg(feature = "redis")]
            Backend::Redis(s) => s.lookup(key),
        }
    }

    fn save(&self, key: u64, value: u64, lease: Lease, position: Option<u64>) {
        match (self, lease) {
            (Backend::L1(c), Lease::L1(l)) => {
                let _ = match position {
                    Some(p) => c.save_as_of(key, value, l, p),
                    None => c.save_with_lease(key, value, l),
                };
            }
            #[cfg(feature = "redis")]
            (Backend::Redis(s), Lease::Redis(l)) => s.save(key, value, &l, position),
            #[cfg(feature = "redis")]
            _ => unreachable!("a lease from another backend"),
        }
    }

    fn purge(&self, key: u64, position: Option<u64>) {
        match self {
            Backend::L1(c) => {
                match position {
                    Some(p) => c.purge_as_of(&key, p),
                    None => c.purge(&key),
                };
            }
            #[cfg(feature = "redis")]
            Backend::Redis(s) => s.purge(key, position),
        }
    }

    fn begin(&self, key: &'static u64) -> Intent<'_> {
        match self {
            Backend::L1(c) => Intent::L1(c.begin_write(key)),
            #[cfg(feature = "redis")]
            Backend::Redis(s) => Intent::Redis(s.begin(*key)),
        }
    }

    fn end(&self, intent: Intent<'_>) {
        match (self, intent) {
            (Backend::L1(_), Intent::L1(i)) => {
                i.commit();
            }
            #[cfg(feature = "redis")]
            (Backend::Redis(s), Intent::Redis(i)) => s.end(i),
            #[cfg(feature = "redis")]
            _ => unreachable!("an intent from another backend"),
        }
    }
}

/// Keys as `'static` references, for the L1's borrowed intents.
static KEYS: [u64; 64] = {
    let mut keys = [0u64; 64];
    let mut i = 0;
    while i < 64 {
        keys[i] = i as u64;
        i += 1;
    }
    keys
};

struct Mode {
    name: String,
    backend: Backend,
    guard: Guard,
}

/// One run's shared state (see `stale_race`'s `Run`: the same checks).
struct Run<'a> {
    mode: &'a Mode,
    scenario: Scenario,
    db: Db,
    floors: Vec<AtomicU64>,
    stale_checks: Vec<AtomicBool>,
    stale_reads: AtomicU64,
    reads: AtomicU64,
    next_check: AtomicU64,
    checks: u32,
    done: AtomicBool,
}

impl Run<'_> {
    fn read(&self, key: u64, rng: &mut SmallRng) -> u64 {
        let lease = match self.mode.backend.lookup(key) {
            Ok(v) => return v,
            Err(lease) => lease,
        };
        let (position, value) = match self.scenario {
            Scenario::Replica => self.db.replica(key, rng),
            Scenario::PreCommit => (0, self.db.primary(key, rng)),
        };
        let position = (self.mode.guard == Guard::Positions).then_some(position);
        self.mode.backend.save(key, value, lease, position);
        value
    }

    fn reader(&self, seed: u64, keys: u64) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut reads = 0;
        while !self.done.load(Ordering::Relaxed) {
            let key = rng.random_range(0..keys);
            // Acquire pairs with the writer's Release store once its write returned.
            let floor = self.floors[key as usize].load(Ordering::Acquire);
            let (version, check) = (floor >> 32, floor & u64::from(u32::MAX));
            if self.read(key, &mut rng) < version {
                self.stale_reads.fetch_add(1, Ordering::Relaxed);
                self.stale_checks[check as usize - 1].store(true, Ordering::Relaxed);
            }
            reads += 1;
        }
        self.reads.fetch_add(reads, Ordering::Relaxed);
    }

    fn writer(&self, seed: u64, key: u64) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let (latency, lag) = (self.db.latency, self.db.lag);
        loop {
            thread::sleep(latency.mul_f64(rng.random_range(0.5..2.0)) + lag);
            let check = self.next_check.fetch_add(1, Ordering::Relaxed);
            if check >= u64::from(self.checks) {
                return;
            }
            let backend = &self.mode.backend;
            let version = match (self.scenario, self.mode.guard) {
                (Scenario::Replica, guard) => {
                    let (version, position) = self.db.commit(key);
                    backend.purge(key, (guard == Guard::Positions).then_some(position));
                    // Reads of the replica itself are old until it replays the commit; what
                    // is checked is that the cache does not keep serving them after that.
                    thread::sleep(lag);
                    version
                }
                (Scenario::PreCommit, Guard::Intents) => {
                    let intent = backend.begin(&KEYS[key as usize]);
                    thread::sleep(lag); // the rest of the transaction
                    let (version, _) = self.db.commit(key);
                    backend.end(intent);
                    version
                }
                (Scenario::PreCommit, _) => {
                    backend.purge(key, None); // a pre-commit hook
                    thread::sleep(lag);
                    self.db.commit(key).0
                }
            };
            // Release pairs with the readers' Acquire load: the write has returned.
            self.floors[key as usize].store(version << 32 | (check + 1), Ordering::Release);
        }
    }
}

fn run(mode: &Mode, scenario: Scenario, c: &super::Config, lag: Duration) -> (usize, u64, u64) {
    let keys = c.keys.min(KEYS.len());
    let run = Run {
        mode,
        scenario,
        db: Db::new(keys, lag, c.latency),
        floors: (0..keys).map(|_| AtomicU64::new(0)).collect(),
        stale_checks: (0..c.checks).map(|_| AtomicBool::new(false)).collect(),
        stale_reads: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        next_check: AtomicU64::new(0),
        checks: c.checks,
        done: AtomicBool::new(false),
    };
    thread::scope(|s| {
        for r in 0..c.readers {
            let run = &run;
            s.spawn(move || run.reader(r as u64, keys as u64));
        }
        thread::scope(|w| {
            for k in 0..keys {
                let run = &run;
                w.spawn(move || run.writer(1_000_000 + k as u64, k as u64));
            }
        });
        thread::sleep(c.latency * 4 + lag);
        run.done.store(true, Ordering::Relaxed);
    });
    let stale = run
        .stale_checks
        .iter()
        .filter(|c| c.load(Ordering::Relaxed))
        .count();
    (
        stale,
        run.stale_reads.load(Ordering::Relaxed),
        run.db.reads.load(Ordering::Relaxed),
    )
}

fn modes(scenario: Scenario, lag: Duration, redis: Option<&str>) -> Result<Vec<Mode>, String> {
    let guards: &[Guard] = match scenario {
        Scenario::Replica => &[Guard::LeasesAlone, Guard::HoldOff, Guard::Positions],
        Scenario::PreCommit => &[Guard::LeasesAlone, Guard::Intents],
    };
    let mut modes = Vec::new();
    for &guard in guards {
        let builder = Cache::builder().max_capacity(10_000);
        let cache = if guard == Guard::HoldOff {
            builder.hold_off(lag).build()
        } else {
            builder.build()
        };
        modes.push(Mode {
            name: format!("L1: {}", guard.name()),
            backend: Backend::L1(Box::new(cache)),
            guard,
        });
    }
    if let Some(url) = redis {
        #[cfg(feature = "redis")]
        for &guard in guards {
            let hold_off = (guard == Guard::HoldOff).then_some(lag);
            modes.push(Mode {
                name: format!("redis tier: {}", guard.name()),
                backend: Backend::Redis(redis_backend::Store::connect(url, hold_off)?),
                guard,
            });
        }
        #[cfg(not(feature = "redis"))]
        return Err(format!(
            "--redis {url} needs the `redis` feature: \
             cargo run --release --features redis --example stale_race -- --redis {url}"
        ));
    }
    Ok(modes)
}

/// Runs every mode of `scenario` and prints the table.
pub fn main(scenario: Scenario, config: &super::Config, lag: Duration) -> Result<(), String> {
    let modes = modes(scenario, lag, config.redis.as_deref())?;
    println!(
        "stale_race --source {}: {} checks per mode, {} readers, {} hot keys, read latency {} us \
         (+-50%), {} {} us\n",
        match scenario {
            Scenario::Replica => "replica",
            Scenario::PreCommit => "precommit",
        },
        config.checks,
        config.readers,
        config.keys.min(KEYS.len()),
        config.latency.as_micros(),
        match scenario {
            Scenario::Replica => "replica lag",
            Scenario::PreCommit => "purge-to-commit delay",
        },
        lag.as_micros(),
    );
    println!("| mode | stale checks / checks | stale reads | db reads |");
    println!("|---|---:|---:|---:|");
    for mode in &modes {
        eprintln!("{}...", mode.name);
        let (stale, stale_reads, db_reads) = run(mode, scenario, config, lag);
        println!(
            "| {} | {stale} / {} | {stale_reads} | {db_reads} |",
            mode.name, config.checks
        );
        for k in 0..config.keys.min(KEYS.len()) as u64 {
            mode.backend.purge(k, None);
        }
    }
    Ok(())
}

#[cfg(feature = "redis")]
mod redis_backend {
    use super::Lease;
    use leasecache::Lookup;
    use leasecache::redis::{RedisLease, RedisOptions, RedisStore, RedisWriteIntent};
    use std::time::Duration;

    pub(super) struct Store {
        store: RedisStore<u64>,
        runtime: tokio::runtime::Runtime,
    }

    impl Store {
        pub(super) fn connect(url: &str, hold_off: Option<Duration>) -> Result<Self, String> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
            let namespace = format!(
                "stale_race_source_{}_{}",
                std::process::id(),
                rand::random::<u32>()
            );
            let options = RedisOptions::new(namespace);
            let options = match hold_off {
                Some(d) => options.hold_off(d),
                None => options,
            };
            let store = runtime
                .block_on(RedisStore::connect(url, options))
                .map_err(|e| format!("cannot connect: {e}"))?;
            Ok(Self { store, runtime })
        }

        fn key(key: u64) -> String {
            key.to_string()
        }

        pub(super) fn lookup(&self, key: u64) -> Result<u64, Lease> {
            let k = Self::key(key);
            match self.runtime.block_on(self.store.get_or_lease(&k)) {
                Ok(Lookup::Hit(v)) => Ok(v),
                Ok(Lookup::Miss(l)) => Err(Lease::Redis(l)),
                Err(e) => panic!("redis get_or_lease failed: {e}"),
            }
        }

        pub(super) fn save(&self, key: u64, value: u64, lease: &RedisLease, position: Option<u64>) {
            let k = Self::key(key);
            let saved = match position {
                Some(p) => self
                    .runtime
                    .block_on(self.store.save_as_of(&k, &value, lease, p)),
                None => self
                    .runtime
                    .block_on(self.store.save_with_lease(&k, &value, lease)),
            };
            if let Err(e) = saved {
                panic!("redis save failed: {e}");
            }
        }

        pub(super) fn purge(&self, key: u64, position: Option<u64>) {
            let k = Self::key(key);
            let purged = match position {
                Some(p) => self.runtime.block_on(self.store.purge_as_of(&k, p)),
                None => self.runtime.block_on(self.store.purge(&k)),
            };
            if let Err(e) = purged {
                panic!("redis purge failed: {e}");
            }
        }

        pub(super) fn begin(&self, key: u64) -> RedisWriteIntent<u64> {
            let k = Self::key(key);
            match self.runtime.block_on(self.store.begin_write(&k)) {
                Ok(intent) => intent,
                Err(e) => panic!("redis begin_write failed: {e}"),
            }
        }

        pub(super) fn end(&self, intent: RedisWriteIntent<u64>) {
            if let Err(e) = self.runtime.block_on(intent.commit()) {
                panic!("redis intent commit failed: {e}");
            }
        }
    }
}
