//! Two "processes" (two `TieredCache` instances with their own connections) over one Redis:
//! read-through, an L1 hit, a cross-process purge delivered by the invalidation feed.
//!
//! ```text
//! redis-server --port 7777 --save '' &      # a throwaway server
//! cargo run --example tiered --features redis -- redis://127.0.0.1:7777/
//! ```

use leasecache::Cache;
use leasecache::redis::{RedisOptions, RedisStore};
use leasecache::tiered::TieredCache;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

type Tc = TieredCache<String, String>;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: cargo run --example tiered --features redis -- <redis-url>");
        eprintln!("e.g.:  redis-server --port 7777 --save '' &");
        eprintln!("       cargo run --example tiered --features redis -- redis://127.0.0.1:7777/");
        eprintln!("(it writes and purges keys under the namespace \"example-tiered\")");
        return;
    };
    let connect = || async {
        let options = RedisOptions::new("example-tiered").command_timeout(Duration::from_secs(1));
        RedisStore::<String>::connect(&url, options).await
    };
    let (l2_a, l2_b) = match (connect().await, connect().await) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("cannot reach Redis at {url}: {e}");
            eprintln!(
                "start a throwaway server (redis-server --port 7777 --save '') and pass its URL"
            );
            return;
        }
    };
    let a: Tc = TieredCache::new(Cache::new(1_000), l2_a).expect("inside a tokio runtime");
    let b: Tc = TieredCache::new(Cache::new(1_000), l2_b).expect("inside a tokio runtime");
    for (name, cache) in [("A", &a), ("B", &b)] {
        if tokio::time::timeout(Duration::from_secs(5), cache.feed_confirmed())
            .await
            .is_err()
        {
            eprintln!("instance {name}: the invalidation feed did not subscribe within 5 s");
            return;
        }
    }

    // The "database": one row whose version a writer bumps.
    let db = Arc::new(AtomicU64::new(1));
    let read_db = |db: &Arc<AtomicU64>| {
        let db = Arc::clone(db);
        move |id: String| async move {
            Ok::<_, std::convert::Infallible>(format!("{id} v{}", db.load(Ordering::SeqCst)))
        }
    };
    let key = "user:7".to_string();
    // Start clean. Every instance receives its own writes' invalidations too; wait for A's own
    // echo, or it would fence (and so leave uncached) the load below that starts before it lands.
    let seen = a.stats().invalidations_received;
    let _ = a.purge(&key).await;
    let started = Instant::now();
    while a.stats().invalidations_received == seen && started.elapsed() < Duration::from_secs(5) {
        tokio::task::yield_now().await;
    }

    let v = a.get_or_load(key.clone(), read_db(&db)).await.unwrap();
    println!(
        "A get_or_load -> {v:?}   (L1 miss, Redis miss: loaded, saved to Redis, then to A's L1)"
    );
    let v = a.get_or_load(key.clone(), read_db(&db)).await.unwrap();
    println!("A get_or_load -> {v:?}   (L1 hit)");
    let v = b.get_or_load(key.clone(), read_db(&db)).await.unwrap();
    println!("B get_or_load -> {v:?}   (B's L1 miss, Redis hit: filled into B's L1)");

    // A writer updates the database, then purges through A: Redis first, then A's L1; the purge
    // script publishes the key, and B's feed purges B's L1.
    db.fetch_add(1, Ordering::SeqCst);
    let seen = b.stats().invalidations_received;
    let started = Instant::now();
    a.purge(&key).await.expect("purge");
    while b.stats().invalidations_received == seen {
        if started.elapsed() > Duration::from_secs(5) {
            eprintln!("B's feed did not deliver the purge within 5 s");
            return;
        }
        tokio::task::yield_now().await;
    }
    println!(
        "A purged {key:?}; B's feed applied it {:?} after the purge call",
        started.elapsed()
    );
    let v = b.get_or_load(key.clone(), read_db(&db)).await.unwrap();
    println!("B get_or_load -> {v:?}   (the new row: never the old one after delivery)");

    for (name, cache) in [("A", &a), ("B", &b)] {
        let s = cache.stats();
        println!(
            "{name}: L1 hits {}, Redis hits {}, loads {}, invalidations received {}, stale fills \
             rejected L1 {} / Redis {}",
            s.l1_hits,
            s.l2_hits,
            s.loads,
            s.invalidations_received,
            s.l1_stale_rejected,
            s.l2_stale_rejected
        );
    }
}
