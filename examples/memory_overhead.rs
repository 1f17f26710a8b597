//! Resident memory per entry: 1M `u64 -> u64` entries in leasecache, quick_cache, moka and dashmap.
//!
//! ```text
//! cargo run --release --example memory_overhead
//! ```
//!
//! Each cache is measured in its own child process: resident memory (`VmRSS` in
//! `/proc/self/status`, Linux only) before building the cache and after filling it, divided by the
//! entries it holds. Every cache gets a capacity of 1M entries and the same hasher.

use std::process::{Command, ExitCode};

const ENTRIES: u64 = 1_000_000;
const CACHES: [&str; 4] = ["leasecache", "quick_cache", "moka", "dashmap"];

/// Resident memory of this process, in bytes.
fn rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Keys in no particular order (splitmix64's finalizer, a bijection).
fn key(i: u64) -> u64 {
    let mut x = i;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn hasher() -> ahash::RandomState {
    ahash::RandomState::with_seeds(1, 2, 3, 4)
}

/// Fills one cache, prints `name entries bytes`, and keeps the cache alive until then.
fn measure(name: &str) -> Result<(), String> {
    let before = rss().ok_or("cannot read VmRSS from /proc/self/status (Linux only)")?;
    let (entries, after) = match name {
        "leasecache" => {
            let c: leasecache::Cache<u64, u64, _> = leasecache::Cache::builder()
                .max_capacity(ENTRIES)
                .hasher(hasher())
                .build();
            (0..ENTRIES).for_each(|i| c.insert(key(i), i));
            (c.entry_count(), rss())
        }
        "quick_cache" => {
            let c = quick_cache::sync::Cache::<u64, u64, _, _>::with(
                ENTRIES as usize,
                ENTRIES,
                quick_cache::UnitWeighter,
                hasher(),
                quick_cache::sync::DefaultLifecycle::default(),
            );
            (0..ENTRIES).for_each(|i| c.insert(key(i), i));
            (c.len() as u64, rss())
        }
        "moka" => {
            let c = moka::sync::Cache::builder()
                .max_capacity(ENTRIES)
                .build_with_hasher(hasher());
            (0..ENTRIES).for_each(|i| c.insert(key(i), i));
            c.run_pending_tasks();
            (c.entry_count(), rss())
        }
        "dashmap" => {
            let c = dashmap::DashMap::with_hasher(hasher());
            (0..ENTRIES).for_each(|i| {
                c.insert(key(i), i);
            });
            (c.len() as u64, rss())
        }
        _ => return Err(format!("unknown cache {name:?}; one of {CACHES:?}")),
    };
    let after = after.ok_or("cannot read VmRSS")?;
    println!("{name} {entries} {}", after.saturating_sub(before));
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, name] if flag == "--one" => {
            return match measure(name) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("memory_overhead: {e}");
                    ExitCode::from(2)
                }
            };
        }
        [] => {}
        _ => {
            eprintln!("usage: memory_overhead [--one {}]", CACHES.join("|"));
            return ExitCode::from(2);
        }
    }
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("memory_overhead: cannot find this executable to run the measurements");
        return ExitCode::from(2);
    };
    println!("Resident memory for {ENTRIES} u64 -> u64 entries (16 bytes of key and value each)\n");
    println!("| cache | entries held | resident bytes / entry | overhead bytes / entry |");
    println!("|---|---:|---:|---:|");
    for name in CACHES {
        let output = match Command::new(&exe).args(["--one", name]).output() {
            Ok(o) if o.status.success() => o,
            Ok(o) => {
                eprintln!("{name}: {}", String::from_utf8_lossy(&o.stderr).trim());
                return ExitCode::from(1);
            }
            Err(e) => {
                eprintln!("memory_overhead: cannot run {}: {e}", exe.display());
                return ExitCode::from(1);
            }
        };
        let text = String::from_utf8_lossy(&output.stdout);
        let fields: Vec<u64> = text
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        if let [entries, bytes] = fields[..] {
            let per = bytes as f64 / entries.max(1) as f64;
            println!("| {name} | {entries} | {per:.1} | {:.1} |", per - 16.0);
        } else {
            eprintln!("memory_overhead: unexpected output from {name}: {text}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
