//! The thundering herd on one hot key, across real processes (issue 18).
//!
//! 4 reader processes x 16 tasks read one hot key through `TieredCache::get_or_load`, each task
//! every 2 ms; the source read takes 20 ms. A writer (this process) bumps the source and purges
//! the key every 50 ms. Run twice in one go, side by side: with one filler per key across the
//! fleet (the default) and with `one_filler(false)` (every process that misses reads the source:
//! the behaviour before issue 18). Prints source reads per purge (mean and max), and the readers'
//! latency p50/p99 overall and for reads that began within 10 ms after a purge began. A third
//! row: one filler per fleet, with `RedisOptions::stale_grace(1 s)` and readers that opt in
//! (`get_or_load_allow_stale`): while one caller refills, the others get the replaced value,
//! marked stale (counted in the last column). A fourth row: the stale grace in the L1 instead
//! (`CacheBuilder::stale_grace(1 s)` on each reader's L1, no grace in Redis): a reader process
//! learns the purge from the feed, its L1 keeps the replaced value, and while one of its tasks
//! refills the key the others get that value from the L1, with no round trip.
//!
//! Then the expiry side: no purges, the hot key has a 1 s TTL in Redis, with and without
//! `refresh_after(600 ms)`, and with `refresh_after` made probabilistic
//! (`refresh_ahead_probabilistic(1.0)`, XFetch): source reads per second, reads slower than
//! 5 ms, p99 and p99.9.
//!
//! ```text
//! cargo run --release --features redis --example herd              # starts its own redis-server
//! cargo run --release --features redis --example herd -- --url redis://127.0.0.1:7777/ --secs 10
//! cargo run --release --features redis --example herd -- --beta 3   # XFetch's beta (default 1)
//! ```
//!
//! Readers and writer share one machine's wall clock, which places each read against the purges.

use leasecache::Cache;
use leasecache::redis::{RedisOptions, RedisStore};
use leasecache::tiered::TieredCache;
use redis::AsyncCommands;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type Tc = TieredCache<String, u64>;

const PROCESSES: usize = 4;
const TASKS: usize = 16;
const PURGE_EVERY: Duration = Duration::from_millis(50);
const SOURCE_LATENCY: Duration = Duration::from_millis(20);
const READ_EVERY: Duration = Duration::from_millis(2);
/// Reads that began this soon after a purge began are "around the purge".
const AROUND: u64 = 10_000;
const HOT: &str = "hot";

fn now_us() -> u64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    u64::try_from(d.as_micros()).expect("fits")
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

/// Redis TTL of the hot key on the expiry side.
const EXPIRY_TTL: Duration = Duration::from_secs(1);
const REFRESH_AFTER: Duration = Duration::from_millis(600);
/// Reads slower than this waited for a load.
const SLOW_NS: u64 = 5_000_000;

/// How one side of the comparison runs.
#[derive(Clone, Copy)]
struct Side {
    one_filler: bool,
    /// Purge every `PURGE_EVERY` (else: let the key expire).
    purge: bool,
    refresh: bool,
    /// A stale grace in Redis, and readers that opt in to it.
    stale: bool,
    /// A stale grace in each reader's L1, and readers that opt in to it.
    l1_stale: bool,
    /// `refresh_after` made probabilistic (XFetch).
    xfetch: bool,
}

/// The stale grace of the side that uses one.
const STALE_GRACE: Duration = Duration::from_secs(1);

impl Side {
    fn env(self) -> String {
        format!(
            "{}{}{}{}{}{}",
            u8::from(self.one_filler),
            u8::from(self.purge),
            u8::from(self.refresh),
            u8::from(self.stale),
            u8::from(self.l1_stale),
            u8::from(self.xfetch)
        )
    }

    fn from_env(s: &str) -> Self {
        let b = s.as_bytes();
        Self {
            one_filler: b[0] == b'1',
            purge: b[1] == b'1',
            refresh: b[2] == b'1',
            stale: b[3] == b'1',
            l1_stale: b[4] == b'1',
            xfetch: b[5] == b'1',
        }
    }

    /// Whether the readers opt in to stale values.
    fn opt_in(self) -> bool {
        self.stale || self.l1_stale
    }
}

async fn cache(url: &str, ns: &str, side: Side) -> Tc {
    let mut options = RedisOptions::new(ns);
    if !side.purge {
        options = options.default_ttl(EXPIRY_TTL);
    }
    if side.stale {
        options = options.stale_grace(STALE_GRACE);
    }
    let store = RedisStore::connect(url, options).await.expect("connect");
    let mut l1 = Cache::builder().max_capacity(1_000);
    if side.l1_stale {
        l1 = l1.stale_grace(STALE_GRACE);
    }
    let mut builder = TieredCache::builder(l1.build(), store).one_filler(side.one_filler);
    if side.refresh {
        builder = builder.refresh_after(REFRESH_AFTER);
    }
    if side.xfetch {
        builder = builder.refresh_ahead_probabilistic(beta());
    }
    let cache: Tc = builder.build().expect("inside a runtime");
    tokio::time::timeout(Duration::from_secs(10), cache.feed_confirmed())
        .await
        .expect("feed confirmed");
    cache
}

/// XFetch's `beta` for the probabilistic side (`--beta`, passed to the readers as `HERD_BETA`).
fn beta() -> f64 {
    std::env::var("HERD_BETA")
        .ok()
        .or_else(|| arg("--beta"))
        .and_then(|b| b.parse().ok())
        .unwrap_or(1.0)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One reader process: `TASKS` tasks read the hot key until the writer says stop.
async fn reader(url: String, ns: String, side: Side) {
    let mut r = conn(&url).await;
    let cache = Arc::new(cache(&url, &ns, side).await);
    let _: u64 = r.incr("ready", 1).await.expect("INCR");
    let stop = Arc::new(AtomicBool::new(false));
    let stale_served = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (cache, stop, r) = (Arc::clone(&cache), Arc::clone(&stop), r.clone());
            let stale_served = Arc::clone(&stale_served);
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut tick = tokio::time::interval(READ_EVERY);
                // Relaxed: a flag polled in a loop; it orders nothing else.
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let began = now_us();
                    let t = Instant::now();
                    let mut c = r.clone();
                    let load = |_| async move {
                        let v: u64 = c.get("truth").await?;
                        let _: u64 = c.incr(format!("loads:{v}"), 1).await?;
                        tokio::time::sleep(SOURCE_LATENCY).await;
                        Ok::<_, redis::RedisError>(v)
                    };
                    if side.opt_in() {
                        let got = cache.get_or_load_allow_stale(HOT.to_owned(), load).await;
                        if got.is_ok_and(|v| v.is_stale()) {
                            // Relaxed: a counter.
                            stale_served.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        let _ = cache.get_or_load(HOT.to_owned(), load).await;
                    }
                    samples.push((began, u64::try_from(t.elapsed().as_nanos()).unwrap_or(0)));
                }
                samples
            })
        })
        .collect();
    loop {
        let s: Option<u64> = r.get("stop").await.expect("GET stop");
        if s.is_some() {
            stop.store(true, Ordering::Relaxed);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.expect("task"));
    }
    let purges: Vec<u64> = r.lrange("purges", 0, -1).await.expect("LRANGE");
    let mut all: Vec<u64> = samples.iter().map(|&(_, l)| l).collect();
    let mut around: Vec<u64> = samples
        .iter()
        .filter(|&&(began, _)| {
            // The latest purge that began at or before this read.
            let i = purges.partition_point(|&p| p <= began);
            i > 0 && began - purges[i - 1] <= AROUND
        })
        .map(|&(_, l)| l)
        .collect();
    all.sort_unstable();
    around.sort_unstable();
    let s = cache.stats();
    println!(
        "HERD reads={} p50={} p99={} p999={} slow={} around={} around_p50={} around_p99={} fill_waits={} takeovers={} refreshes={} stale={}",
        all.len(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 0.999),
        all.iter().filter(|&&l| l > SLOW_NS).count(),
        around.len(),
        percentile(&around, 0.5),
        percentile(&around, 0.99),
        s.fill_waits,
        s.fill_takeovers,
        s.refreshes,
        stale_served.load(Ordering::Relaxed)
    );
}

/// Starts a throwaway `redis-server` on a free port.
fn start_redis() -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server (or pass --url)");
    let url = format!("redis://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .is_err()
    {
        assert!(Instant::now() < deadline, "redis-server did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, url)
}

/// One side of the comparison: returns (purges, source reads, most for one version, readers'
/// lines).
async fn round(url: &str, ns: &str, side: Side, secs: u64) -> (u64, u64, u64, Vec<String>) {
    let mut r = conn(url).await;
    let _: () = redis::cmd("FLUSHDB")
        .query_async(&mut r)
        .await
        .expect("FLUSHDB");
    let _: () = r.set("truth", 0u64).await.expect("SET");
    let exe = std::env::current_exe().expect("exe");
    let children: Vec<Child> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .env("HERD_ROLE", "reader")
                .env("HERD_URL", url)
                .env("HERD_NS", ns)
                .env("HERD_SIDE", side.env())
                .env("HERD_BETA", beta().to_string())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn reader")
        })
        .collect();
    let writer = cache(url, ns, side).await;
    while r
        .get::<_, Option<usize>>("ready")
        .await
        .expect("GET")
        .unwrap_or(0)
        < PROCESSES
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Warm up: the key cached everywhere.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tick = tokio::time::interval(PURGE_EVERY);
    let mut purges = 0u64;
    while side.purge && Instant::now() < end {
        tick.tick().await;
        // The source changes, then the cache is purged (the purge's start is what readers see).
        let _: u64 = r.incr("truth", 1).await.expect("INCR");
        let _: u64 = r.rpush("purges", now_us()).await.expect("RPUSH");
        writer.purge(HOT).await.expect("purge");
        purges += 1;
    }
    if !side.purge {
        tokio::time::sleep_until(end.into()).await;
    }
    // Let the last fill finish before stopping the readers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _: () = r.set("stop", 1).await.expect("SET stop");
    let mut lines = Vec::new();
    for child in children {
        let out = child.wait_with_output().expect("reader");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        lines.extend(
            text.lines()
                .filter(|l| l.starts_with("HERD"))
                .map(str::to_owned),
        );
    }
    // Source reads per purge: the loads of each version of the source, versions 1..=purges
    // (the expiry side: of version 0, the only one).
    let mut max = 0;
    let mut total = 0;
    for v in (if side.purge { 1 } else { 0 })..=purges {
        let n: Option<u64> = r.get(format!("loads:{v}")).await.expect("GET");
        let n = n.unwrap_or(0);
        max = max.max(n);
        total += n;
    }
    (purges, total, max, lines)
}

fn worst(lines: &[String], f: &str) -> u64 {
    lines.iter().map(|l| field(l, f)).max().unwrap_or(0)
}

fn median(lines: &[String], f: &str) -> u64 {
    let mut v: Vec<u64> = lines.iter().map(|l| field(l, f)).collect();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var("HERD_ROLE").is_ok() {
        let var = |n: &str| std::env::var(n).expect("reader env");
        rt.block_on(reader(
            var("HERD_URL"),
            var("HERD_NS"),
            Side::from_env(&var("HERD_SIDE")),
        ));
        return;
    }
    let secs: u64 = arg("--secs").and_then(|s| s.parse().ok()).unwrap_or(5);
    let (mut server, url) = match arg("--url") {
        Some(url) => (None, url),
        None => {
            let (child, url) = start_redis();
            (Some(child), url)
        }
    };
    println!(
        "{PROCESSES} processes x {TASKS} tasks, one read per task every {READ_EVERY:?}, source \
         read {SOURCE_LATENCY:?}, purge every {PURGE_EVERY:?}, {secs} s per side"
    );
    let us = |ns: u64| ns as f64 / 1000.0;
    println!(
        "| filler | purges | loads/purge (mean) | max | p50 us | p99 us | around-purge p50 us | around-purge p99 us | waits | stale served |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, one_filler, stale, l1_stale) in [
        ("per process (before)", false, false, false),
        ("one per fleet", true, false, false),
        (
            "one per fleet, Redis stale grace (opt-in)",
            true,
            true,
            false,
        ),
        ("one per fleet, L1 stale grace (opt-in)", true, false, true),
    ] {
        let side = Side {
            one_filler,
            purge: true,
            refresh: false,
            stale,
            l1_stale,
            xfetch: false,
        };
        let (purges, total, max, lines) = rt.block_on(round(&url, "herd", side, secs));
        let mean = total as f64 / purges.max(1) as f64;
        let waits: u64 = lines.iter().map(|l| field(l, "fill_waits")).sum();
        let stale: u64 = lines.iter().map(|l| field(l, "stale")).sum();
        println!(
            "| {name} | {purges} | {mean:.2} | {max} | {:.1} | {:.1} | {:.1} | {:.1} | {waits} | {stale} |",
            us(median(&lines, "p50")),
            us(worst(&lines, "p99")),
            us(median(&lines, "around_p50")),
            us(worst(&lines, "around_p99")),
        );
    }
    println!("(p50: median over the processes; p99: worst process)");
    println!();
    println!(
        "expiry: TTL {EXPIRY_TTL:?} in Redis, no purges; refresh_after {REFRESH_AFTER:?} or none; \
         probabilistic: beta {}",
        beta()
    );
    println!(
        "| refresh | source reads/s | reads > 5 ms | of reads | p50 us | p99 us | p99.9 us | refreshes |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, refresh, xfetch) in [
        ("none (expire, then miss)", false, false),
        ("refresh_after", true, false),
        ("refresh_after, probabilistic", true, true),
    ] {
        let side = Side {
            one_filler: true,
            purge: false,
            refresh,
            stale: false,
            l1_stale: false,
            xfetch,
        };
        let (_, total, _, lines) = rt.block_on(round(&url, "herd", side, secs));
        let sum = |f: &str| lines.iter().map(|l| field(l, f)).sum::<u64>();
        println!(
            "| {name} | {:.1} | {} | {} | {:.1} | {:.1} | {:.1} | {} |",
            total as f64 / secs as f64,
            sum("slow"),
            sum("reads"),
            us(median(&lines, "p50")),
            us(worst(&lines, "p99")),
            us(worst(&lines, "p999")),
            sum("refreshes"),
        );
    }
    if let Some(server) = server.as_mut() {
        let _ = server.kill();
        let _ = server.wait();
    }
}
