//! Hit-ratio harness: replays access traces through leasecache, moka and quick_cache
//! (single-threaded cache-aside: look up, on a miss insert) and prints markdown tables of hit
//! ratios, one per capacity, with reference rows: plain LRU, Belady's MIN (the offline optimum:
//! evict whichever of the cached keys and the missed key is next used farthest) and the "best
//! fixed set in hindsight".
//!
//! ```text
//! cargo bench --bench hit_ratio                          # full run (a few minutes on 2 cores)
//! cargo bench --bench hit_ratio -- --quick               # CI smoke (or HIT_RATIO_QUICK=1)
//! cargo bench --bench hit_ratio -- --trace keys.txt      # also replay a trace, one key per line
//! cargo bench --bench hit_ratio -- --only-files --realish 1000000 \
//!     --capacities 1000,5000,20000,50000                 # the generated real-like traces only
//! ```
//!
//! Under `cargo test --benches` (no `--bench` argument) it runs a small smoke test instead.
//!
//! Traces are generated from a fixed seed: Zipf with s = 0.7, 0.9, 1.0, 1.2 over 1M keys; a
//! Zipf (s = 1.0) hot set polluted by one-time scans (after every 16 x capacity hot accesses, a scan
//! of 4 x capacity keys never seen again); and a loop over 1.1 x capacity keys. Each cache counts its
//! own hits: leasecache through `get_or_lease` (+ `save_with_lease` on a miss), the others through
//! `get` (+ `insert` on a miss). "Best fixed set" counts the hits of a cache that statically held the
//! capacity's worth of most frequent keys of the trace (a reference, not an upper bound: an adaptive
//! cache can beat it when popularity shifts).

mod common;
mod traces;

use leasecache::{Cache, Lookup};
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

const USAGE: &str = "\
usage: hit_ratio [--quick] [--accesses N] [--keys N] [--seed N] [--capacities A,B,..] [--trace FILE]..

  --quick           CI smoke: 300k accesses, capacities 1000,10000 (also HIT_RATIO_QUICK=1)
  --accesses N      accesses per generated trace                  [default 4000000]
  --keys N          Zipf key space                                [default 1000000]
  --seed N          seed of the generated traces                  [default 42]
  --capacities LIST capacities in entries, comma separated        [default 1000,10000,100000]
  --trace FILE      also replay FILE (one key per line; integers are used as is, other lines
                    are hashed); may be repeated
  --realish N       also replay the generated real-like traces (db, storage, cdn, kv, moving; see
                    benches/traces), N accesses each
  --only-files      replay only the --trace files and --realish traces (no Zipf, scan, loop)
  --write-traces D  write the --realish traces to directory D (one key per line) and exit

  HIT_RATIO_ONLY=leasecache replays one cache only (label prefix: leasecache, moka, quick_cache)";

struct Config {
    accesses: usize,
    keys: u64,
    seed: u64,
    capacities: Vec<u64>,
    files: Vec<String>,
    realish: usize,
    only_files: bool,
    write_traces: Option<String>,
}

fn parse_args() -> Result<Config, String> {
    let quick = std::env::var("HIT_RATIO_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let mut config = Config {
        accesses: 4_000_000,
        keys: 1_000_000,
        seed: 42,
        capacities: vec![1_000, 10_000, 100_000],
        files: Vec::new(),
        realish: 0,
        only_files: false,
        write_traces: None,
    };
    let quick_config = |c: &mut Config| {
        c.accesses = 300_000;
        c.capacities = vec![1_000, 10_000];
    };
    if quick {
        quick_config(&mut config);
    }
    // `cargo bench` passes `--bench`; without it (`cargo test --benches`, a debug build) run a
    // seconds-long smoke test instead of the full tables.
    if !std::env::args().any(|a| a == "--bench") {
        config.accesses = 20_000;
        config.keys = 100_000;
        config.capacities = vec![100, 1_000];
    }
    let positive = |flag: &str, v: &str| {
        v.parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} wants a positive integer, got {v:?}"))
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            // Passed by `cargo bench`.
            "--bench" => {}
            "-h" | "--help" => return Err(String::new()),
            "--quick" => quick_config(&mut config),
            "--accesses" => config.accesses = positive(&flag, &value()?)?.min(1 << 32) as usize,
            "--keys" => config.keys = positive(&flag, &value()?)?,
            "--seed" => {
                let v = value()?;
                config.seed = v
                    .parse()
                    .map_err(|_| format!("--seed wants an integer, got {v:?}"))?;
            }
            "--capacities" => {
                config.capacities = value()?
                    .split(',')
                    .map(|c| positive("--capacities", c.trim()))
                    .collect::<Result<_, _>>()?;
            }
            "--trace" => config.files.push(value()?),
            "--realish" => config.realish = positive(&flag, &value()?)?.min(1 << 32) as usize,
            "--only-files" => config.only_files = true,
            "--write-traces" => config.write_traces = Some(value()?),
            // Filters and flags that cargo or criterion may pass to every bench.
            other if !other.starts_with('-') => {}
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    Ok(config)
}

/// One column of a table: a named trace.
struct Column {
    name: String,
    trace: Arc<Vec<u64>>,
}

fn read_trace(path: &str) -> Result<Vec<u64>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let hasher = common::hasher();
    let keys: Vec<u64> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().unwrap_or_else(|_| hasher.hash_one(l)))
        .collect();
    if keys.is_empty() {
        return Err(format!("{path} holds no keys"));
    }
    Ok(keys)
}

/// The columns for one capacity: the shared Zipf and file traces plus the capacity-sized ones.
fn columns(config: &Config, shared: &[Column], capacity: u64) -> Vec<Column> {
    let mut columns: Vec<Column> = shared
        .iter()
        .map(|c| Column {
            name: c.name.clone(),
            trace: Arc::clone(&c.trace),
        })
        .collect();
    if config.only_files {
        return columns;
    }
    // Zipf hot set with one-time scans.
    let hot = common::zipf_keys(config.keys, 1.0, config.accesses, config.seed ^ 0x5ca4);
    let (block, scan) = (16 * capacity as usize, 4 * capacity as usize);
    let mut trace = Vec::with_capacity(config.accesses + scan);
    let mut next_scan_key = 1u64 << 40;
    for chunk in hot.chunks(block) {
        trace.extend_from_slice(chunk);
        if trace.len() >= config.accesses {
            break;
        }
        trace.extend((0..scan as u64).map(|i| common::scramble(next_scan_key + i)));
        next_scan_key += scan as u64;
    }
    trace.truncate(config.accesses);
    columns.insert(
        4.min(columns.len()),
        Column {
            name: "zipf 1.0 + scans".into(),
            trace: Arc::new(trace),
        },
    );
    // A loop slightly larger than the cache.
    let len = (capacity + capacity / 10) as usize;
    let trace = (0..config.accesses)
        .map(|i| common::scramble((1u64 << 41) + (i % len) as u64))
        .collect();
    columns.insert(
        5.min(columns.len()),
        Column {
            name: "loop 1.1x".into(),
            trace: Arc::new(trace),
        },
    );
    columns
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    LeaseCache,
    Moka,
    QuickCache,
    Lru,
    Belady,
    BestFixed,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Moka,
        Kind::LeaseCache,
        Kind::QuickCache,
        Kind::Lru,
        Kind::Belady,
        Kind::BestFixed,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::LeaseCache => "leasecache",
            Kind::Moka => "moka 0.12",
            Kind::QuickCache => "quick_cache 0.7",
            Kind::Lru => "LRU",
            Kind::Belady => "Belady MIN (offline optimum)",
            Kind::BestFixed => "best fixed set (hindsight)",
        }
    }
}

/// Hits of `kind` with `capacity` entries over `trace`.
fn hits(kind: Kind, capacity: u64, trace: &[u64]) -> u64 {
    let mut hits = 0;
    match kind {
        Kind::LeaseCache => {
            let cache: Cache<u64, u64, _> = Cache::builder()
                .max_capacity(capacity)
                .hasher(common::hasher())
                .build();
            for &k in trace {
                match cache.get_or_lease(&k) {
                    Lookup::Hit(_) => hits += 1,
                    Lookup::Miss(lease) => {
                        let _ = cache.save_with_lease(k, k, lease);
                    }
                }
            }
        }
        Kind::Moka => {
            let cache = moka::sync::Cache::builder()
                .max_capacity(capacity)
                .build_with_hasher(common::hasher());
            for &k in trace {
                if cache.get(&k).is_some() {
                    hits += 1;
                } else {
                    cache.insert(k, k);
                }
            }
        }
        Kind::QuickCache => {
            let cache = quick_cache::sync::Cache::<u64, u64, _, _>::with(
                capacity as usize,
                capacity,
                quick_cache::UnitWeighter,
                common::hasher(),
                quick_cache::sync::DefaultLifecycle::default(),
            );
            for &k in trace {
                if cache.get(&k).is_some() {
                    hits += 1;
                } else {
                    cache.insert(k, k);
                }
            }
        }
        Kind::Lru => hits = lru(capacity as usize, trace),
        Kind::Belady => hits = belady(capacity as usize, trace),
        Kind::BestFixed => {
            let mut counts: HashMap<u64, u64, _> =
                HashMap::with_capacity_and_hasher(trace.len() / 4, common::hasher());
            for &k in trace {
                *counts.entry(k).or_insert(0) += 1;
            }
            let mut counts: Vec<u64> = counts.into_values().collect();
            counts.sort_unstable_by(|a, b| b.cmp(a));
            hits = counts.iter().take(capacity as usize).sum();
        }
    }
    hits
}

/// Hits of a plain LRU cache of `capacity` entries (the recency reference).
fn lru(capacity: usize, trace: &[u64]) -> u64 {
    // Last use of each cached key, and the cached keys by last use.
    let mut last: HashMap<u64, usize, _> =
        HashMap::with_capacity_and_hasher(capacity + 1, common::hasher());
    let mut by_age = BTreeMap::new();
    let mut hits = 0;
    for (t, &k) in trace.iter().enumerate() {
        if let Some(old) = last.insert(k, t) {
            hits += 1;
            by_age.remove(&old);
        } else if last.len() > capacity {
            if let Some((_, victim)) = by_age.pop_first() {
                last.remove(&victim);
            }
        }
        by_age.insert(t, k);
    }
    hits
}

/// Hits of Belady's MIN (offline optimum with demand fetching): on a miss into a full cache,
/// evict whichever of the cached keys and the missed key is next used farthest in the future.
fn belady(capacity: usize, trace: &[u64]) -> u64 {
    let mut next = vec![usize::MAX; trace.len()];
    let mut seen: HashMap<u64, usize, _> =
        HashMap::with_capacity_and_hasher(trace.len() / 4, common::hasher());
    for (t, &k) in trace.iter().enumerate().rev() {
        next[t] = seen.insert(k, t).unwrap_or(usize::MAX);
    }
    // The cached keys' next uses; the heap holds (next use, key), stale pairs skipped lazily.
    let mut cached: HashMap<u64, usize, _> =
        HashMap::with_capacity_and_hasher(capacity + 1, common::hasher());
    let mut heap = BinaryHeap::new();
    let mut hits = 0;
    for (t, &k) in trace.iter().enumerate() {
        if cached.insert(k, next[t]).is_some() {
            hits += 1;
        }
        heap.push((next[t], k));
        while cached.len() > capacity {
            let Some((when, victim)) = heap.pop() else {
                break;
            };
            if cached.get(&victim) == Some(&when) {
                cached.remove(&victim);
            }
        }
        if heap.len() > 4 * capacity + 64 {
            // Drop the stale pairs.
            heap = cached.iter().map(|(&k, &when)| (when, k)).collect();
        }
    }
    hits
}

fn main() -> ExitCode {
    let config = match parse_args() {
        Ok(config) => config,
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("hit_ratio: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    if let Some(dir) = &config.write_traces {
        for name in traces::KINDS {
            let trace = traces::generate(name, config.realish.max(1), config.seed);
            let mut text = String::with_capacity(trace.len() * 21);
            for k in trace {
                let _ = writeln!(text, "{k}");
            }
            let path = format!("{dir}/{name}.keys");
            if let Err(e) = std::fs::write(&path, text) {
                eprintln!("hit_ratio: cannot write {path}: {e}");
                return ExitCode::from(2);
            }
        }
        return ExitCode::SUCCESS;
    }
    let zipfs: &[f64] = if config.only_files {
        &[]
    } else {
        &[0.7, 0.9, 1.0, 1.2]
    };
    let mut shared: Vec<Column> = zipfs
        .iter()
        .copied()
        .enumerate()
        .map(|(i, s)| Column {
            name: format!("zipf {s:.1}"),
            trace: Arc::new(common::zipf_keys(
                config.keys,
                s,
                config.accesses,
                config.seed + i as u64,
            )),
        })
        .collect();
    if config.realish > 0 {
        for name in traces::KINDS {
            shared.push(Column {
                name: name.to_string(),
                trace: Arc::new(traces::generate(name, config.realish, config.seed)),
            });
        }
    }
    for path in &config.files {
        match read_trace(path) {
            Ok(trace) => shared.push(Column {
                name: path.rsplit('/').next().unwrap_or(path).to_string(),
                trace: Arc::new(trace),
            }),
            Err(message) => {
                eprintln!("hit_ratio: {message}");
                return ExitCode::from(2);
            }
        }
    }
    let tables: Vec<(u64, Vec<Column>)> = config
        .capacities
        .iter()
        .map(|&c| (c, columns(&config, &shared, c)))
        .collect();

    // Every (capacity, column, cache) is one job; moka's are the slowest, so they go first.
    // `HIT_RATIO_ONLY=leasecache` replays one cache only (for tuning: the others' columns are
    // deterministic for a given seed and trace length).
    let only = std::env::var("HIT_RATIO_ONLY").ok();
    let replayed = |kind: Kind| only.as_deref().is_none_or(|o| kind.label().starts_with(o));
    // The comparison row and the verdict need leasecache and both others.
    let compared = [Kind::LeaseCache, Kind::Moka, Kind::QuickCache]
        .into_iter()
        .all(replayed);
    let jobs: Vec<(usize, usize, Kind)> = Kind::ALL
        .iter()
        .filter(|&&kind| replayed(kind))
        .flat_map(|&kind| {
            tables
                .iter()
                .enumerate()
                .flat_map(move |(t, (_, cols))| (0..cols.len()).map(move |c| (t, c, kind)))
        })
        .collect();
    let results = Mutex::new(HashMap::new());
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(t, c, kind)) = jobs.get(i) else {
                        return;
                    };
                    let (capacity, cols) = &tables[t];
                    let hits = hits(kind, *capacity, &cols[c].trace);
                    let ratio = hits as f64 / cols[c].trace.len() as f64;
                    eprintln!(
                        "[{:>3}/{}] {:>7.1}s  capacity {capacity:>7}  {:<18} {:<27} {:6.2} %",
                        i + 1,
                        jobs.len(),
                        started.elapsed().as_secs_f64(),
                        cols[c].name,
                        kind.label(),
                        100.0 * ratio
                    );
                    if let Ok(mut results) = results.lock() {
                        results.insert((t, c, kind), ratio);
                    }
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_default();

    let mut out = String::new();
    let mut losses = Vec::new();
    let _ = writeln!(
        out,
        "Hit ratios (%), single-threaded cache-aside, {} accesses per generated trace, \
         Zipf over {} keys, seed {}.\n",
        config.accesses, config.keys, config.seed
    );
    for (t, (capacity, cols)) in tables.iter().enumerate() {
        let _ = writeln!(out, "**capacity {capacity} entries**\n");
        let _ = write!(out, "| cache |");
        for col in cols {
            let _ = write!(out, " {} |", col.name);
        }
        let _ = write!(out, "\n|---|");
        for _ in cols {
            let _ = write!(out, "---:|");
        }
        out.push('\n');
        let ratio = |c: usize, kind: Kind| results.get(&(t, c, kind)).copied().unwrap_or(f64::NAN);
        for kind in [
            Kind::LeaseCache,
            Kind::Moka,
            Kind::QuickCache,
            Kind::Lru,
            Kind::Belady,
            Kind::BestFixed,
        ] {
            if !replayed(kind) {
                continue;
            }
            let _ = write!(out, "| {} |", kind.label());
            for c in 0..cols.len() {
                let _ = write!(out, " {:.2} |", 100.0 * ratio(c, kind));
            }
            out.push('\n');
        }
        if !compared {
            out.push('\n');
            continue;
        }
        let _ = write!(out, "| leasecache - best of moka, quick_cache, LRU (pp) |");
        for (c, col) in cols.iter().enumerate() {
            let mut others = ratio(c, Kind::Moka).max(ratio(c, Kind::QuickCache));
            if replayed(Kind::Lru) {
                others = others.max(ratio(c, Kind::Lru));
            }
            let delta = 100.0 * (ratio(c, Kind::LeaseCache) - others);
            let _ = write!(out, " {delta:+.2} |");
            if delta < 0.0 {
                losses.push(format!("capacity {capacity}, {}: {delta:+.2} pp", col.name));
            }
        }
        out.push_str("\n\n");
    }
    if !compared {
        out.push_str("(a partial replay, `HIT_RATIO_ONLY`: no comparison.)\n");
    } else if losses.is_empty() {
        out.push_str("leasecache is at least the best of the others in every column.\n");
    } else {
        let _ = writeln!(
            out,
            "leasecache trails the best of the others in: {}.",
            losses.join("; ")
        );
    }
    let _ = writeln!(
        out,
        "\n({} cores, {:.0} s)",
        workers,
        started.elapsed().as_secs_f64()
    );
    print!("{out}");
    ExitCode::SUCCESS
}
