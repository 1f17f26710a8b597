//! Read-through with `get_or_load`: single-flight, leased loads from a simulated database.
//!
//! ```text
//! cargo run --release --example read_through
//! ```
//!
//! Eight threads ask for the same cold row at once: one of them reads the database, the others
//! wait for its value. A writer then updates the row and purges the key; the next read loads the
//! new row, never the old one.

use leasecache::Cache;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

/// A database with a slow read.
struct Db {
    rows: Mutex<HashMap<u64, String>>,
    reads: AtomicU64,
}

impl Db {
    fn read(&self, id: u64) -> Result<String, String> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        thread::sleep(Duration::from_millis(20));
        let rows = self
            .rows
            .lock()
            .map_err(|_| "database poisoned".to_string())?;
        rows.get(&id).cloned().ok_or_else(|| format!("no row {id}"))
    }

    fn write(&self, id: u64, row: &str) {
        if let Ok(mut rows) = self.rows.lock() {
            rows.insert(id, row.to_string());
        }
    }
}

fn main() {
    let db = Db {
        rows: Mutex::new(HashMap::from([(7, "Ada v1".to_string())])),
        reads: AtomicU64::new(0),
    };
    let cache: Cache<u64, String> = Cache::new(10_000);

    thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let row = cache.get_or_load(7, |id| db.read(id));
                assert_eq!(row.as_deref(), Ok("Ada v1"));
            });
        }
    });
    println!(
        "8 concurrent readers, {} database read (single flight)",
        db.reads.load(Ordering::Relaxed)
    );

    // A writer: update the source, then purge. The purge fences any load still in flight.
    db.write(7, "Ada v2");
    cache.purge(&7);

    let row = cache.get_or_load(7, |id| db.read(id));
    println!("after the write: {row:?}");
    assert_eq!(row.as_deref(), Ok("Ada v2"));

    // A failing load returns its error and caches nothing.
    let missing = cache.get_or_load(8, |id| db.read(id));
    println!("a missing row: {missing:?}");
    assert!(missing.is_err() && cache.get(&8).is_none());
    println!("stats: {:?}", cache.stats());
}
