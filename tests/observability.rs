//! The `metrics` and `tracing` features: every metric name listed in the `metrics` module docs is
//! reported (read from the docs themselves, so docs and code cannot drift apart), with its kind,
//! its `cache` label and the right values; the operator-facing events are emitted.
//!
//! A debugging recorder (`metrics-util`) is installed per test with `with_local_recorder`; the
//! tracing events are captured by a `fmt` subscriber writing into a buffer, made the default on
//! the test's thread, where a current-thread runtime runs every task.

mod support;

use leasecache::redis::{RedisOptions, RedisStore};
use leasecache::tiered::{TieredCache, TieredError};
use leasecache::{Cache, Lookup};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{RedisServer, wait_for};

/// The metric tables of the `metrics` module docs: `name -> kind`, per table (Cache, RedisStore,
/// TieredCache).
fn documented() -> Vec<BTreeMap<String, MetricKind>> {
    let docs = include_str!("../src/metrics.rs");
    let mut tables = Vec::new();
    let mut current: Option<BTreeMap<String, MetricKind>> = None;
    for line in docs.lines() {
        let Some(row) = line.strip_prefix("//! | `leasecache_") else {
            if let Some(table) = current.take() {
                tables.push(table);
            }
            continue;
        };
        let mut cells = row.split('|');
        let name = format!(
            "leasecache_{}",
            cells.next().unwrap().trim().trim_end_matches('`')
        );
        let kind = match cells.next().unwrap().trim() {
            "counter" => MetricKind::Counter,
            "gauge" => MetricKind::Gauge,
            other => panic!("unknown kind {other} for {name}"),
        };
        current.get_or_insert_with(BTreeMap::new).insert(name, kind);
    }
    assert_eq!(
        tables.len(),
        3,
        "three tables: Cache, RedisStore, TieredCache"
    );
    tables
}

/// `name -> (kind, value)` of every metric labelled `cache = name`; panics on another label.
fn snapshot(recorder: &DebuggingRecorder, cache: &str) -> BTreeMap<String, (MetricKind, f64)> {
    let mut out = BTreeMap::new();
    for (key, _unit, _help, value) in recorder.snapshotter().snapshot().into_vec() {
        let key: CompositeKey = key;
        let labels: Vec<_> = key
            .key()
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        assert_eq!(labels, [("cache".to_owned(), cache.to_owned())], "{key:?}");
        let value = match value {
            DebugValue::Counter(v) => v as f64,
            DebugValue::Gauge(v) => v.into_inner(),
            DebugValue::Histogram(_) => panic!("no histograms are documented: {key:?}"),
        };
        out.insert(key.key().name().to_owned(), (key.kind(), value));
    }
    out
}

fn assert_reports(
    got: &BTreeMap<String, (MetricKind, f64)>,
    tables: &[&BTreeMap<String, MetricKind>],
) {
    let mut expected = BTreeMap::new();
    for table in tables {
        expected.extend(table.iter().map(|(n, k)| (n.clone(), *k)));
    }
    let got_kinds: BTreeMap<_, _> = got.iter().map(|(n, (k, _))| (n.clone(), *k)).collect();
    assert_eq!(
        got_kinds, expected,
        "reported metrics == documented metrics"
    );
}

/// The field names of a `Debug`-printed stats struct (`Name { a: 1, b: 2, .. }`), nested
/// structs left out.
fn fields(debug: &str) -> Vec<String> {
    let body = &debug[debug.find('{').expect("a struct") + 1..];
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            ':' if depth == 0 => {
                let name = body[start..i].trim().trim_start_matches(',').trim();
                out.push(name.to_owned());
            }
            ',' if depth == 0 => start = i + 1,
            _ => {}
        }
    }
    out
}

/// Every counter of `Stats` and `TieredStats` is exported: the metric tables name each field
/// (in parentheses, `` (`field`) ``), so a counter added to a stats struct without a metric fails
/// here.
#[test]
fn every_stats_field_is_documented_as_a_metric() {
    let docs = include_str!("../src/metrics.rs");
    let rows = |prefix: &str| -> String {
        docs.lines()
            .filter(|l| l.starts_with(prefix))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let cache_rows = rows("//! | `leasecache_");
    for field in fields(&format!("{:?}", leasecache::Stats::default())) {
        assert!(
            cache_rows.contains(&format!("(`{field}`)")),
            "Stats::{field} has no metric in src/metrics.rs"
        );
    }
    let tiered_rows = rows("//! | `leasecache_tiered_");
    let stats = format!("{:?}", leasecache::tiered::TieredStats::default());
    let tiered_fields = fields(&stats);
    assert!(tiered_fields.contains(&"fill_waits".to_owned()), "{stats}");
    for field in tiered_fields {
        // The L1's own counters are the `Cache` table (checked above); the Redis tier's
        // unreadable values are its own counter, `leasecache_redis_unreadable_values_total`.
        if field == "l1" {
            continue;
        }
        if field == "l2_unreadable_values" {
            assert!(docs.contains("`leasecache_redis_unreadable_values_total`"));
            continue;
        }
        assert!(
            tiered_rows.contains(&format!("(`{field}`)")),
            "TieredStats::{field} has no metric in src/metrics.rs"
        );
    }
}

#[test]
fn cache_reports_every_documented_metric() {
    let tables = documented();
    let cache: Cache<u64, String> = Cache::new(100);
    cache.insert(1, "one".into());
    assert!(cache.get(&1).is_some());
    let Lookup::Miss(lease) = cache.get_or_lease(&2) else {
        panic!("2 is absent")
    };
    cache.purge(&2);
    assert!(
        cache
            .save_with_lease(2, "stale".into(), lease)
            .is_ok_and(leasecache::Saved::is_stale)
    );

    let recorder = DebuggingRecorder::new();
    metrics::with_local_recorder(&recorder, || {
        leasecache::metrics::describe();
        cache.report_metrics("users");
    });
    let got = snapshot(&recorder, "users");
    assert_reports(&got, &[&tables[0]]);
    assert_eq!(got["leasecache_hits_total"].1, 1.0);
    assert_eq!(got["leasecache_misses_total"].1, 1.0);
    assert_eq!(got["leasecache_inserts_total"].1, 1.0);
    assert_eq!(got["leasecache_purges_total"].1, 1.0);
    assert_eq!(got["leasecache_stale_saves_prevented_total"].1, 1.0);
    assert_eq!(got["leasecache_entries"].1, 1.0);

    // Absolute values: a second report does not add the counts again.
    metrics::with_local_recorder(&recorder, || cache.report_metrics("users"));
    assert_eq!(snapshot(&recorder, "users")["leasecache_hits_total"].1, 1.0);

    // `describe` gave every counter its unit.
    for (key, unit, help, _) in recorder.snapshotter().snapshot().into_vec() {
        if key.kind() == MetricKind::Counter {
            assert_eq!(unit, Some(metrics::Unit::Count), "{key:?}");
            assert!(help.is_some(), "{key:?} is described");
        }
    }
}

/// A `MakeWriter` target: everything the subscriber prints, kept for the assertions.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[test]
fn tiered_reports_every_documented_metric_and_logs_a_lost_redis() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let tables = documented();
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = tracing::subscriber::set_default(subscriber);
    rt.block_on(async {
        let options =
            RedisOptions::new("observability").command_timeout(Duration::from_millis(300));
        let l2 = RedisStore::<u64>::connect(&redis.url(), options)
            .await
            .expect("connect");
        let cache: TieredCache<String, u64> = TieredCache::builder(Cache::new(100), l2)
            .breaker_threshold(1)
            .breaker_cooldown(Duration::from_secs(3600))
            .ping_interval(Duration::from_millis(100))
            .ping_timeout(Duration::from_millis(300))
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
            .build()
            .expect("build");
        tokio::time::timeout(Duration::from_secs(15), cache.feed_confirmed())
            .await
            .expect("feed confirmed");
        let v = cache
            .get_or_load("k".to_owned(), |_| async { Ok::<_, ()>(7) })
            .await
            .unwrap();
        assert_eq!(v, 7);
        assert_eq!(cache.get("k").await.unwrap(), Some(7));

        let recorder = DebuggingRecorder::new();
        metrics::with_local_recorder(&recorder, || cache.report_metrics("tiered"));
        let got = snapshot(&recorder, "tiered");
        assert_reports(&got, &[&tables[0], &tables[1], &tables[2]]);
        assert_eq!(got["leasecache_tiered_loads_total"].1, 1.0);
        assert_eq!(got["leasecache_tiered_l1_hits_total"].1, 1.0);
        assert_eq!(got["leasecache_tiered_feed_confirmed"].1, 1.0);
        assert_eq!(got["leasecache_tiered_breaker_state"].1, 0.0);
        assert_eq!(got["leasecache_tiered_l1_active"].1, 1.0);
        assert_eq!(got["leasecache_tiered_pending_writes"].1, 0.0);
        assert!(
            logs.text().contains("invalidation feed confirmed"),
            "{}",
            logs.text()
        );

        // Redis dies: the purge cannot land (pending), the breaker opens, the feed is lost.
        redis.kill9();
        let purged = cache.purge("k").await;
        assert!(matches!(purged, Err(TieredError::Pending(_))), "{purged:?}");
        wait_for("the feed loss", || cache.stats().feed_losses >= 1).await;

        metrics::with_local_recorder(&recorder, || cache.report_metrics("tiered"));
        let got = snapshot(&recorder, "tiered");
        assert_eq!(got["leasecache_tiered_pending_writes"].1, 1.0);
        assert_eq!(got["leasecache_tiered_pending_queued_total"].1, 1.0);
        assert_ne!(got["leasecache_tiered_breaker_state"].1, 0.0, "not closed");
        assert_eq!(got["leasecache_tiered_breaker_opens_total"].1, 1.0);
        assert_eq!(got["leasecache_tiered_feed_confirmed"].1, 0.0);
        assert_eq!(got["leasecache_tiered_l1_active"].1, 0.0);

        let text = logs.text();
        for (level, event) in [
            ("WARN", "redis circuit breaker opened"),
            (
                "WARN",
                "redis write failed: queued and retried until it lands",
            ),
            ("WARN", "invalidation feed lost"),
        ] {
            let line = text
                .lines()
                .find(|l| l.contains(event))
                .unwrap_or_else(|| panic!("no event {event:?} in:\n{text}"));
            assert!(line.contains(level), "{event:?} at {level}: {line}");
            assert!(line.contains("leasecache"), "target leasecache: {line}");
        }

        // Redis is back: the queued purge lands and the queue drains, which is logged too.
        redis.restart();
        wait_for("the pending purge to land", || {
            cache.stats().pending_writes == 0
        })
        .await;
        wait_for("the drained event", || {
            logs.text().contains("pending writes drained")
        })
        .await;
        // The landed retry proved Redis reachable: the breaker closed, at INFO.
        let text = logs.text();
        let closed = text
            .lines()
            .find(|l| l.contains("redis circuit breaker closed"))
            .unwrap_or_else(|| panic!("no breaker-closed event in:\n{text}"));
        assert!(closed.contains("INFO"), "{closed}");
    });
}
