//! The read-after-write experiment this crate exists for.
//!
//! A simulated database (in process, with a jittered read latency), writer lanes that update a
//! row and then purge its key, and 64 concurrent readers doing cache-aside on the same hot keys.
//! Every write is one *check*: once the writer's purge for version N has returned, a read that
//! starts afterwards must never observe a version older than N. A check fails if any such read
//! (by any reader, or the writer's own verification read before its next write) saw an older row.
//!
//! ```text
//! cargo run --release --example stale_race
//! cargo run --release --example stale_race -- --checks 3000 --readers 32 --latency-us 2000
//! cargo run --release --features redis --example stale_race -- --redis redis://127.0.0.1/
//! ```
//!
//! Modes, all on the same workload:
//!
//! - `plain`: `get`, read the database, `insert`: the classic race, purges cannot prevent it;
//! - `leased`: `get_or_lease`, read, `save_with_lease`: a save that overlapped a purge is refused;
//! - `get_or_load`: leasecache's single-flight read-through, leased;
//! - `moka get_with` and `quick_cache get_or_insert_with`: the same read-through with those
//!   caches, invalidated with their own calls (`invalidate`, `remove`);
//! - `quick_cache get, read, insert`: the plain pattern on quick_cache, for comparison;
//! - with `--redis URL` (feature `redis`): the plain and the leased pattern on
//!   `leasecache::redis::RedisStore`; and `leasecache::tiered::TieredCache` (an L1 over Redis),
//!   `get_or_load` + `purge`: `Coherence::Strict` with one instance and with two standing in for
//!   two processes (the readers split between them, the writer purging through the first, which
//!   waits for the second's acknowledgement), and `Coherence::Bounded(50 ms)` with two (the
//!   purge returns after Redis; the second instance may serve the replaced value for up to
//!   50 ms, so failed checks are expected there).
//!
//! With `--source replica` or `--source precommit`, the races at the source instead (a replica
//! that lags by `--lag-us`, or a purge issued before the commit): leases alone, then with a
//! hold-off, source positions or write intents, on the L1 and (with `--redis`) the Redis tier.
//! See `examples/support/source_races.rs`.
//!
//! ```text
//! cargo run --release --example stale_race -- --source replica --lag-us 20000
//! cargo run --release --features redis --example stale_race -- --source precommit --redis redis://127.0.0.1/
//! ```
//!
//! The table goes to stdout, a progress bar to stderr.

#[path = "support/source_races.rs"]
mod source_races;

use leasecache::{Cache, Lookup};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::convert::Infallible;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: stale_race [--checks N] [--readers N] [--keys N] [--latency-us N] [--redis URL]

  --checks N      read-after-write checks (writes) per mode       [default 1200]
  --readers N     concurrent cache-aside readers                   [default 64]
  --keys N        hot keys, each with its own writer lane          [default 8]
  --latency-us N  mean database read latency, microseconds (+-50%) [default 1000]
  --redis URL     also run the Redis tier and the tiered (L1 over Redis) modes
                  (build with --features redis)
  --source S      run the races at the source instead: replica (readers read a
                  lagging replica) or precommit (writers purge before committing)
  --lag-us N      replica lag / purge-to-commit delay, microseconds   [default 20000]";

/// What the command line asked for.
struct Config {
    checks: u32,
    readers: usize,
    keys: usize,
    latency: Duration,
    redis: Option<String>,
    source: Option<source_races::Scenario>,
    lag: Duration,
}

fn parse_args() -> Result<Config, String> {
    let mut config = Config {
        checks: 1200,
        readers: 64,
        keys: 8,
        latency: Duration::from_micros(1000),
        redis: None,
        source: None,
        lag: Duration::from_micros(20_000),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{flag} wants a positive integer, got {value:?}"))
        };
        match flag.as_str() {
            "--checks" => {
                config.checks = u32::try_from(number()?).map_err(|_| "--checks is too large")?;
            }
            "--readers" => config.readers = number()?.min(4096) as usize,
            "--keys" => config.keys = number()?.min(4096) as usize,
            "--latency-us" => config.latency = Duration::from_micros(number()?.min(1_000_000)),
            "--redis" => config.redis = Some(value),
            "--source" => config.source = Some(source_races::Scenario::parse(&value)?),
            "--lag-us" => config.lag = Duration::from_micros(number()?.min(10_000_000)),
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    Ok(config)
}

/// The database: one versioned row per key. A read takes the snapshot part-way through its
/// latency, like a real query: the row can change before the reply arrives.
struct Db {
    rows: Vec<AtomicU64>,
    latency: Duration,
    reads: AtomicU64,
}

impl Db {
    fn new(keys: usize, latency: Duration) -> Self {
        Self {
            rows: (0..keys).map(|_| AtomicU64::new(0)).collect(),
            latency,
            reads: AtomicU64::new(0),
        }
    }

    fn read(&self, key: u64, rng: &mut SmallRng) -> u64 {
        self.reads.fetch_add(1, Ordering::Relaxed);
        thread::sleep(self.latency.mul_f64(rng.random_range(0.25..0.75)));
        // SeqCst: the snapshot is ordered with the writer's update and purge.
        let version = self.rows[key as usize].load(Ordering::SeqCst);
        thread::sleep(self.latency.mul_f64(rng.random_range(0.25..0.75)));
        version
    }

    fn update(&self, key: u64) -> u64 {
        self.rows[key as usize].fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// A cache under test and the cache-aside read it does.
enum Target {
    Plain(Cache<u64, u64>),
    Leased(Cache<u64, u64>),
    GetOrLoad(Cache<u64, u64>),
    Moka(moka::sync::Cache<u64, u64, ahash::RandomState>),
    Quick(quick_cache::sync::Cache<u64, u64>),
    QuickPlain(quick_cache::sync::Cache<u64, u64>),
    /// Redis with `get`, read, `insert` (an unconditional write).
    #[cfg(feature = "redis")]
    RedisPlain(redis_tier::Tier),
    /// Redis with `get_or_lease`, read, `save_with_lease`.
    #[cfg(feature = "redis")]
    RedisLeased(redis_tier::Tier),
    /// `TieredCache` instances on one namespace: `get_or_load`, `purge` through the first.
    #[cfg(feature = "redis")]
    Tiered(redis_tier::Tiered),
}

impl Target {
    fn all() -> Vec<Target> {
        let cap = 10_000;
        let moka = moka::sync::Cache::builder()
            .max_capacity(cap)
            .build_with_hasher(ahash::RandomState::new());
        vec![
            Target::Plain(Cache::new(cap)),
            Target::Leased(Cache::new(cap)),
            Target::GetOrLoad(Cache::new(cap)),
            Target::Moka(moka),
            Target::Quick(quick_cache::sync::Cache::new(cap as usize)),
            Target::QuickPlain(quick_cache::sync::Cache::new(cap as usize)),
        ]
    }

    fn name(&self) -> &'static str {
        match self {
            Target::Plain(_) => "plain (get, read, insert)",
            Target::Leased(_) => "leased (get_or_lease, save_with_lease)",
            Target::GetOrLoad(_) => "get_or_load",
            Target::Moka(_) => "moka get_with + invalidate",
            Target::Quick(_) => "quick_cache get_or_insert_with + remove",
            Target::QuickPlain(_) => "quick_cache get, read, insert + remove",
            #[cfg(feature = "redis")]
            Target::RedisPlain(_) => "redis tier: get, read, insert + purge",
            #[cfg(feature = "redis")]
            Target::RedisLeased(_) => "redis tier: get_or_lease, save_with_lease",
            #[cfg(feature = "redis")]
            Target::Tiered(t) => t.name(),
        }
    }

    /// One cache-aside read of `key` by reader number `reader` (only the tiered mode uses it).
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    fn read(&self, key: u64, reader: usize, db: &Db, rng: &mut SmallRng) -> u64 {
        match self {
            Target::Plain(c) => c.get(&key).unwrap_or_else(|| {
                let row = db.read(key, rng);
                c.insert(key, row);
                row
            }),
            Target::Leased(c) => match c.get_or_lease(&key) {
                Lookup::Hit(row) => row,
                Lookup::Miss(lease) => {
                    let row = db.read(key, rng);
                    let _ = c.save_with_lease(key, row, lease);
                    row
                }
            },
            Target::GetOrLoad(c) => c
                .get_or_load(key, |k| Ok::<_, Infallible>(db.read(k, rng)))
                .unwrap_or_else(|never| match never {}),
            Target::Moka(c) => c.get_with(key, || db.read(key, rng)),
            Target::Quick(c) => c
                .get_or_insert_with(&key, || Ok::<_, Infallible>(db.read(key, rng)))
                .unwrap_or_else(|never| match never {}),
            Target::QuickPlain(c) => c.get(&key).unwrap_or_else(|| {
                let row = db.read(key, rng);
                c.insert(key, row);
                row
            }),
            #[cfg(feature = "redis")]
            Target::RedisPlain(t) => t.read_plain(key, db, rng),
            #[cfg(feature = "redis")]
            Target::RedisLeased(t) => t.read_leased(key, db, rng),
            #[cfg(feature = "redis")]
            Target::Tiered(t) => t.read(key, reader, db, rng),
        }
    }

    fn invalidate(&self, key: u64) {
        match self {
            Target::Plain(c) | Target::Leased(c) | Target::GetOrLoad(c) => {
                c.purge(&key);
            }
            Target::Moka(c) => c.invalidate(&key),
            Target::Quick(c) | Target::QuickPlain(c) => {
                c.remove(&key);
            }
            #[cfg(feature = "redis")]
            Target::RedisPlain(t) | Target::RedisLeased(t) => t.purge(key),
            #[cfg(feature = "redis")]
            Target::Tiered(t) => t.purge(key),
        }
    }

    /// Called when a read by `reader` was stale (the tiered mode counts them per instance).
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    fn stale_read(&self, reader: usize) {
        #[cfg(feature = "redis")]
        if let Target::Tiered(t) = self {
            t.stale_read(reader);
        }
    }

    /// What the table does not show (failed Redis calls; the tiered cache's counters).
    fn report(&self) -> Option<String> {
        #[cfg(feature = "redis")]
        match self {
            Target::RedisPlain(t) | Target::RedisLeased(t) => return t.report(),
            Target::Tiered(t) => return Some(t.report()),
            _ => {}
        }
        None
    }
}

/// The shared state of one run.
struct Run<'a> {
    target: &'a Target,
    db: Db,
    /// Per key: the latest version whose purge has returned (high 32 bits) and its check id + 1
    /// (low 32 bits; 0 = no write yet).
    floors: Vec<AtomicU64>,
    stale_checks: Vec<AtomicBool>,
    /// Per check: whether any read started after its purge returned.
    covered: Vec<AtomicBool>,
    stale_reads: AtomicU64,
    reads: AtomicU64,
    next_check: AtomicU64,
    checks: u32,
    done: AtomicBool,
}

impl Run<'_> {
    /// One cache-aside read of `key`, checked against the writes whose purge returned before it.
    fn checked_read(&self, key: u64, reader: usize, rng: &mut SmallRng) {
        // Acquire pairs with the writer's Release store after its purge returned.
        let floor = self.floors[key as usize].load(Ordering::Acquire);
        let (version, check) = (floor >> 32, floor & u64::from(u32::MAX));
        if check > 0 {
            self.covered[check as usize - 1].store(true, Ordering::Relaxed);
        }
        let seen = self.target.read(key, reader, &self.db, rng);
        if seen < version {
            self.stale_reads.fetch_add(1, Ordering::Relaxed);
            self.target.stale_read(reader);
            self.stale_checks[check as usize - 1].store(true, Ordering::Relaxed);
        }
    }

    fn reader(&self, reader: usize, keys: u64) {
        let mut rng = SmallRng::seed_from_u64(reader as u64);
        let mut reads = 0;
        while !self.done.load(Ordering::Relaxed) {
            self.checked_read(rng.random_range(0..keys), reader, &mut rng);
            reads += 1;
        }
        self.reads.fetch_add(reads, Ordering::Relaxed);
    }

    /// Writes `key` until the checks run out: a random pause (readers refill meanwhile), then
    /// update the row and purge the key. The readers verify every write.
    fn writer(&self, seed: u64, key: u64) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let latency = self.db.latency;
        loop {
            thread::sleep(latency.mul_f64(rng.random_range(0.5..2.0)));
            let check = self.next_check.fetch_add(1, Ordering::Relaxed);
            if check >= u64::from(self.checks) {
                return;
            }
            let version = self.db.update(key);
            self.target.invalidate(key);
            // Release pairs with the readers' Acquire load: the purge has returned.
            self.floors[key as usize].store(version << 32 | (check + 1), Ordering::Release);
            // Every check is read at least once before the next write to this key replaces it.
            let deadline = Instant::now() + latency * 100;
            while !self.covered[check as usize].load(Ordering::Relaxed) && Instant::now() < deadline
            {
                thread::sleep(Duration::from_micros(20));
            }
        }
    }
}

/// The outcome of one mode.
struct Outcome {
    stale_checks: usize,
    covered: usize,
    stale_reads: u64,
    reads: u64,
    db_reads: u64,
    elapsed: Duration,
    report: Option<String>,
}

fn run(target: &Target, config: &Config, progress: &Progress) -> Outcome {
    let run = Run {
        target,
        db: Db::new(config.keys, config.latency),
        floors: (0..config.keys).map(|_| AtomicU64::new(0)).collect(),
        stale_checks: (0..config.checks).map(|_| AtomicBool::new(false)).collect(),
        covered: (0..config.checks).map(|_| AtomicBool::new(false)).collect(),
        stale_reads: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        next_check: AtomicU64::new(0),
        checks: config.checks,
        done: AtomicBool::new(false),
    };
    let start = Barrier::new(config.readers + 1);
    let started = thread::scope(|s| {
        for r in 0..config.readers {
            let (run, start) = (&run, &start);
            s.spawn(move || {
                start.wait();
                run.reader(r, config.keys as u64);
            });
        }
        start.wait();
        let started = Instant::now();
        thread::scope(|w| {
            for k in 0..config.keys {
                let run = &run;
                w.spawn(move || run.writer(1_000_000 + k as u64, k as u64));
            }
            while !all_checks_issued(&run) {
                progress.show(
                    target.name(),
                    run.next_check.load(Ordering::Relaxed),
                    config.checks,
                );
                thread::sleep(Duration::from_millis(100));
            }
        });
        // Let the readers verify the last writes and finish the loads in flight.
        thread::sleep(config.latency * 4);
        run.done.store(true, Ordering::Relaxed);
        started
    });
    progress.finish(target.name(), config.checks);
    Outcome {
        stale_checks: run
            .stale_checks
            .iter()
            .filter(|c| c.load(Ordering::Relaxed))
            .count(),
        covered: run
            .covered
            .iter()
            .filter(|c| c.load(Ordering::Relaxed))
            .count(),
        stale_reads: run.stale_reads.load(Ordering::Relaxed),
        reads: run.reads.load(Ordering::Relaxed),
        db_reads: run.db.reads.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        report: target.report(),
    }
}

/// Whether every check has been handed out.
fn all_checks_issued(run: &Run<'_>) -> bool {
    run.next_check.load(Ordering::Relaxed) >= u64::from(run.checks)
}

/// A one-line progress bar on stderr (redrawn in place on a terminal, one line per mode otherwise).
struct Progress {
    tty: bool,
}

impl Progress {
    fn show(&self, mode: &str, done: u64, total: u32) {
        if !self.tty {
            return;
        }
        let done = done.min(u64::from(total));
        let filled = (done * 30 / u64::from(total)) as usize;
        eprint!(
            "\r{mode:<42} [{}{}] {done:>5}/{total}",
            "#".repeat(filled),
            ".".repeat(30 - filled)
        );
        let _ = std::io::stderr().flush();
    }

    fn finish(&self, mode: &str, total: u32) {
        if self.tty {
            self.show(mode, u64::from(total), total);
            eprintln!();
        } else {
            eprintln!("{mode}: {total} checks done");
        }
    }
}

fn main() -> ExitCode {
    let config = match parse_args() {
        Ok(config) => config,
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("stale_race: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(scenario) = config.source {
        return match source_races::main(scenario, &config, config.lag) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("stale_race: {message}");
                ExitCode::from(2)
            }
        };
    }
    let progress = Progress {
        tty: std::io::stderr().is_terminal(),
    };
    #[allow(unused_mut)]
    let mut targets = Target::all();
    if let Some(url) = &config.redis {
        #[cfg(feature = "redis")]
        match redis_tier::targets(url) {
            Ok(redis) => targets.extend(redis),
            Err(message) => {
                eprintln!("stale_race: --redis {url}: {message}");
                return ExitCode::from(2);
            }
        }
        #[cfg(not(feature = "redis"))]
        {
            eprintln!(
                "stale_race: --redis {url} needs the `redis` feature: \
                 cargo run --release --features redis --example stale_race -- --redis {url}"
            );
            return ExitCode::from(2);
        }
    }
    let outcomes: Vec<Outcome> = targets.iter().map(|t| run(t, &config, &progress)).collect();
    // Leave nothing behind (the Redis modes write to a server).
    for target in &targets {
        (0..config.keys as u64).for_each(|k| target.invalidate(k));
    }

    println!(
        "stale_race: {} read-after-write checks per mode, {} readers, {} hot keys, \
         database read latency {} us (+-50%), {} cores\n",
        config.checks,
        config.readers,
        config.keys,
        config.latency.as_micros(),
        thread::available_parallelism().map_or(1, |n| n.get()),
    );
    println!("| mode | stale checks / checks | stale % | stale reads | reads/s | db reads |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (target, o) in targets.iter().zip(&outcomes) {
        println!(
            "| {} | {} / {} | {:.2} % | {} | {:.0} | {} |",
            target.name(),
            o.stale_checks,
            config.checks,
            100.0 * o.stale_checks as f64 / f64::from(config.checks),
            o.stale_reads,
            o.reads as f64 / o.elapsed.as_secs_f64(),
            o.db_reads,
        );
    }
    for (target, o) in targets.iter().zip(&outcomes) {
        if o.covered < config.checks as usize {
            println!(
                "note: {}: only {} of {} writes were read after their purge (too few readers?)",
                target.name(),
                o.covered,
                config.checks
            );
        }
    }
    for (target, o) in targets.iter().zip(&outcomes) {
        if let Some(report) = &o.report {
            println!("note: {}: {report}", target.name());
        }
    }
    println!(
        "\nA check is stale when a read that started after the purge of version N had returned \
         observed a version older than N."
    );
    ExitCode::SUCCESS
}

/// The Redis tier modes (feature `redis`): the same experiment against `RedisStore`.
#[cfg(feature = "redis")]
mod redis_tier {
    use super::{Db, Target};
    use leasecache::redis::{RedisOptions, RedisStore};
    use leasecache::tiered::{Coherence, TieredCache};
    use leasecache::{Cache, Lookup};
    use rand::rngs::SmallRng;
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// The staleness bound of the Bounded tiered mode.
    const BOUND: Duration = Duration::from_millis(50);

    /// A store, the runtime that drives it, and the calls that failed.
    pub(super) struct Tier {
        store: RedisStore<u64>,
        runtime: Arc<tokio::runtime::Runtime>,
        errors: AtomicU64,
    }

    /// Tiered caches on one namespace, each with its own L1, Redis connections and invalidation
    /// feed: separate processes, as far as coherence goes. The readers are split between them;
    /// the writer purges through the first.
    pub(super) struct Tiered {
        instances: Vec<TieredCache<String, u64>>,
        mode: Coherence,
        /// Per instance: the stale reads its readers made.
        stale_reads: Vec<AtomicU64>,
        runtime: Arc<tokio::runtime::Runtime>,
        errors: AtomicU64,
    }

    /// Connects the Redis tier modes and the tiered modes (one namespace per mode, unique to this
    /// process).
    pub(super) fn targets(url: &str) -> Result<Vec<Target>, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
        let runtime = Arc::new(runtime);
        let connect = |mode: &str| -> Result<Tier, String> {
            let namespace = format!("stale_race_{}_{mode}", std::process::id());
            let store = runtime
                .block_on(RedisStore::connect(url, RedisOptions::new(namespace)))
                .map_err(|e| format!("cannot connect: {e}"))?;
            Ok(Tier {
                store,
                runtime: Arc::clone(&runtime),
                errors: AtomicU64::new(0),
            })
        };
        let tiered_instance =
            |namespace: &str, mode: Coherence| -> Result<TieredCache<String, u64>, String> {
                runtime.block_on(async {
                    let store = RedisStore::connect(url, RedisOptions::new(namespace))
                        .await
                        .map_err(|e| format!("cannot connect: {e}"))?;
                    // Inside the runtime: the feed task is spawned on it.
                    let cache = TieredCache::builder(Cache::new(10_000), store)
                        .coherence(mode)
                        .build()
                        .map_err(|e| format!("cannot build the tiered cache: {e}"))?;
                    tokio::time::timeout(Duration::from_secs(10), cache.feed_confirmed())
                        .await
                        .map_err(
                            |_| "the tiered cache's invalidation feed was not confirmed in 10 s",
                        )?;
                    Ok(cache)
                })
            };
        let tiered = |instances: usize, mode: Coherence| -> Result<Tiered, String> {
            let tag = match mode {
                Coherence::Strict => "strict",
                _ => "bounded",
            };
            let namespace = format!("stale_race_{}_tiered{instances}{tag}", std::process::id());
            Ok(Tiered {
                instances: (0..instances)
                    .map(|_| tiered_instance(&namespace, mode))
                    .collect::<Result<_, _>>()?,
                mode,
                stale_reads: (0..instances).map(|_| AtomicU64::new(0)).collect(),
                runtime: Arc::clone(&runtime),
                errors: AtomicU64::new(0),
            })
        };
        Ok(vec![
            Target::RedisPlain(connect("plain")?),
            Target::RedisLeased(connect("leased")?),
            Target::Tiered(tiered(1, Coherence::Strict)?),
            Target::Tiered(tiered(2, Coherence::Strict)?),
            Target::Tiered(tiered(2, Coherence::Bounded(BOUND))?),
        ])
    }

    impl Tier {
        fn failed(&self, what: &str, e: impl std::fmt::Display) {
            if self.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!("stale_race: redis {what} failed (further errors not shown): {e}");
            }
        }

        pub(super) fn read_plain(&self, key: u64, db: &Db, rng: &mut SmallRng) -> u64 {
            let k = key.to_string();
            match self.runtime.block_on(self.store.get(&k)) {
                Ok(Some(row)) => row,
                other => {
                    if let Err(e) = other {
                        self.failed("get", e);
                    }
                    let row = db.read(key, rng);
                    if let Err(e) = self.runtime.block_on(self.store.insert(&k, &row)) {
                        self.failed("insert", e);
                    }
                    row
                }
            }
        }

        pub(super) fn read_leased(&self, key: u64, db: &Db, rng: &mut SmallRng) -> u64 {
            let k = key.to_string();
            match self.runtime.block_on(self.store.get_or_lease(&k)) {
                Ok(Lookup::Hit(row)) => row,
                Ok(Lookup::Miss(lease)) => {
                    let row = db.read(key, rng);
                    let saved = self.store.save_with_lease(&k, &row, &lease);
                    if let Err(e) = self.runtime.block_on(saved) {
                        self.failed("save_with_lease", e);
                    }
                    row
                }
                Err(e) => {
                    self.failed("get_or_lease", e);
                    db.read(key, rng)
                }
            }
        }

        pub(super) fn purge(&self, key: u64) {
            if let Err(e) = self.runtime.block_on(self.store.purge(&key.to_string())) {
                self.failed("purge", e);
            }
        }

        pub(super) fn report(&self) -> Option<String> {
            let errors = self.errors.load(Ordering::Relaxed);
            (errors > 0).then(|| format!("{errors} Redis calls failed"))
        }
    }

    impl Tiered {
        pub(super) fn name(&self) -> &'static str {
            match (self.instances.len(), self.mode) {
                (1, Coherence::Strict) => "tiered Strict, 1 instance: get_or_load + purge",
                (_, Coherence::Strict) => "tiered Strict, 2 instances: get_or_load + purge",
                _ => "tiered Bounded(50 ms), 2 instances: get_or_load + purge",
            }
        }

        /// `get_or_load` through the reader's instance (with two: even readers on the first, odd
        /// on the second). Redis failures do not fail it; they show in the counters.
        pub(super) fn read(&self, key: u64, reader: usize, db: &Db, rng: &mut SmallRng) -> u64 {
            let cache = &self.instances[reader % self.instances.len()];
            let load = cache.get_or_load(key.to_string(), move |_| async move {
                Ok::<_, Infallible>(db.read(key, rng))
            });
            self.runtime
                .block_on(load)
                .unwrap_or_else(|never| match never {})
        }

        pub(super) fn stale_read(&self, reader: usize) {
            self.stale_reads[reader % self.instances.len()].fetch_add(1, Ordering::Relaxed);
        }

        /// Purges through the first instance: Redis, then its L1; another instance's L1 is
        /// purged by its invalidation feed.
        pub(super) fn purge(&self, key: u64) {
            let key = key.to_string();
            if let Err(e) = self.runtime.block_on(self.instances[0].purge(&key)) {
                if self.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("stale_race: tiered purge failed (further errors not shown): {e}");
                }
            }
        }

        /// Each instance's stale reads and counters, so a clean result can be told from one that
        /// never used the L1 or Redis.
        pub(super) fn report(&self) -> String {
            let describe = |name: &str, i: usize| {
                let s = self.instances[i].stats();
                format!(
                    "{name}: {} stale reads, {} L1 hits, {} Redis hits, {} loads, \
                     {} invalidations received, \
                     {} L1 / {} Redis stale fills refused, {} bypassed reads, {} feed losses, \
                     {} Redis errors, {} sequence gaps, {} unacknowledged writes",
                    self.stale_reads[i].load(Ordering::Relaxed),
                    s.l1_hits,
                    s.l2_hits,
                    s.loads,
                    s.invalidations_received,
                    s.l1_stale_rejected,
                    s.l2_stale_rejected,
                    s.bypassed_reads,
                    s.feed_losses,
                    s.redis_errors,
                    s.sequence_gaps,
                    s.unacknowledged_writes,
                )
            };
            let mut report = if self.instances.len() == 1 {
                describe("writer and readers", 0)
            } else {
                let a = describe("instance A (writer, even readers)", 0);
                format!("{a}; {}", describe("instance B (odd readers)", 1))
            };
            let failed = self.errors.load(Ordering::Relaxed);
            report.push_str(&format!("; {failed} failed purges"));
            report
        }
    }
}
