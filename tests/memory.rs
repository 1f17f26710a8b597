//! I5: generation bookkeeping does not grow with the number of distinct keys ever purged.
//!
//! Its own test binary, with a single test, so that no other test allocates in the process
//! while resident memory is compared.

use leasecache::Cache;

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[test]
fn i5_purge_flood_on_absent_keys_leaves_memory_flat() {
    let Some(_) = resident_bytes() else {
        eprintln!("SKIP: no /proc/self/status on this platform");
        return;
    };
    let cache: Cache<u64, u64> = Cache::new(10_000);
    // Warm up: allocator pools, the generation table, thread-locals.
    for k in 0..100_000u64 {
        cache.purge(&k);
    }
    let before = resident_bytes().unwrap();
    let keys = 2_000_000u64;
    for k in 0..keys {
        // Distinct absent keys, as a purge-on-write workload produces.
        cache.purge(&(k.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 << 63));
    }
    let after = resident_bytes().unwrap();
    let growth = after.saturating_sub(before);
    // A tombstone per purged key would cost at least 16 bytes each: 32 MB here.
    assert!(
        growth < 4 << 20,
        "resident memory grew by {growth} bytes over {keys} purges of absent keys"
    );
    assert_eq!(cache.entry_count(), 0);
    assert_eq!(cache.stats().purges, 100_000 + keys);
}
