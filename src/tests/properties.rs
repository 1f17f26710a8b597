//! The proptest state machine: random operation sequences run against the cache and the
//! sequential spec at once (through [`crate::fuzzing::CacheRun`], the same runner the fuzz target
//! uses); every result and every stale rejection must match exactly, except where eviction
//! legitimately makes the cache forget a value (the spec then allows the miss, nothing else).
//!
//! Actions are weighted; a save picks its lease *by index* among those handed out so far (taken
//! modulo their number), so a shrunk sequence stays meaningful.

// These drive the cache outside any loom model, so they are not built for the loom lane.
#![cfg(not(leasecache_loom))]

use crate::fuzzing::{CacheConfig, CacheOp, run_cache};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// Keys beyond the configured count wrap around; a few out-of-range values exercise that.
fn key() -> impl Strategy<Value = u8> {
    0u8..10
}

fn value() -> impl Strategy<Value = u32> {
    0u32..1000
}

fn op() -> impl Strategy<Value = CacheOp> {
    prop_oneof![
        4 => key().prop_map(CacheOp::Get),
        1 => key().prop_map(CacheOp::ContainsKey),
        4 => key().prop_map(CacheOp::GetOrLease),
        3 => key().prop_map(CacheOp::Lease),
        6 => (any::<u16>(), prop::option::weighted(0.15, key()), value())
            .prop_map(|(lease, key, value)| CacheOp::Save { lease, key, value }),
        1 => (key(), value()).prop_map(|(k, v)| CacheOp::SaveForeignCache(k, v)),
        3 => (key(), value()).prop_map(|(k, v)| CacheOp::Insert(k, v)),
        1 => (key(), value(), 0u8..20).prop_map(|(k, v, t)| CacheOp::InsertWithTtl(k, v, t)),
        3 => key().prop_map(CacheOp::Purge),
        1 => Just(CacheOp::Flush),
        2 => any::<u8>().prop_map(CacheOp::Retain),
        2 => (0u8..8).prop_map(CacheOp::Advance),
        2 => (key(), prop::option::weighted(0.9, value()), any::<bool>())
            .prop_map(|(key, value, asynchronous)| CacheOp::GetOrLoad { key, value, asynchronous }),
        2 => (key(), 0u8..8).prop_map(|(k, ms)| CacheOp::PurgeWithHoldOff(k, ms)),
        2 => (key(), 0u8..20).prop_map(|(k, p)| CacheOp::PurgeAsOf(k, p)),
        3 => (any::<u16>(), value(), 0u8..20)
            .prop_map(|(lease, value, position)| CacheOp::SaveAsOf { lease, value, position }),
        1 => key().prop_map(CacheOp::BeginWrite),
        1 => (any::<u16>(), any::<bool>(), prop::option::of(0u8..20))
            .prop_map(|(intent, commit, position)| CacheOp::EndWrite { intent, commit, position }),
    ]
}

fn ops() -> impl Strategy<Value = Vec<CacheOp>> {
    prop::collection::vec(op(), 1..120)
}

/// 128 cases per configuration by default (proptest is slow in unoptimized builds); set
/// `PROPTEST_CASES` for a longer run.
fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(128);
    Config {
        cases,
        ..Config::default()
    }
}

fn check(config: CacheConfig, ops: &[CacheOp]) -> Result<(), TestCaseError> {
    run_cache(config, ops).map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(config())]

    /// Capacity covers the key set and every key has its own slot: every result matches exactly.
    #[test]
    fn exact(ops in ops()) {
        check(CacheConfig::EXACT, &ops)?;
    }

    /// Eight keys share two slots: a write fences the leases of every key in its slot, and the
    /// spec predicts each such (safe) spurious rejection exactly.
    #[test]
    fn shared_slots(ops in ops()) {
        check(CacheConfig::SHARED_SLOTS, &ops)?;
    }

    /// Four shards, two slots each: flush fences every shard, slots are per shard.
    #[test]
    fn sharded(ops in ops()) {
        check(CacheConfig::SHARDED, &ops)?;
    }

    /// A manual-clock TTL: expired values are never returned, and expiry never revives a lease.
    #[test]
    fn ttl(ops in ops()) {
        check(CacheConfig::TTL, &ops)?;
    }

    /// Capacity by weight over two shards, with a TTL: overweight values are never stored.
    #[test]
    fn weighted(ops in ops()) {
        check(CacheConfig::WEIGHTED, &ops)?;
    }

    /// A default hold-off after every write, on shared slots with a TTL: leases captured inside a
    /// slot's hold-off never save, per-call hold-offs and positions never lower a floor, intents
    /// refuse saves until they end.
    #[test]
    fn hold_off(ops in ops()) {
        check(CacheConfig::HOLD_OFF, &ops)?;
    }

    /// Eviction pressure (capacity 2 for 8 keys) with a TTL: a lookup may miss, but never returns
    /// a value the spec does not hold, and lease outcomes still match exactly.
    #[test]
    fn eviction_pressure(ops in ops()) {
        check(CacheConfig::EVICTING, &ops)?;
    }
}

/// The assumptions the configurations rest on.
#[test]
fn slot_layouts_are_what_the_configs_claim() {
    use crate::fuzzing::spec::Slots;
    assert!(Slots::new(1, 256).is_injective_on(0u8..=255));
    let shared = Slots::new(1, 2);
    assert!(!shared.is_injective_on(0u8..8));
    let sharded = Slots::new(4, 8);
    assert!(!sharded.is_injective_on(0u8..8));
}

/// Two saves with one lease both land while it is current; a purge of an absent key fences it.
#[test]
fn fixed_scenarios() {
    use CacheOp::*;
    let save = |lease, value| Save {
        lease,
        key: None,
        value,
    };
    for config in CacheConfig::ALL {
        check(config, &[Lease(1), save(0, 10), save(0, 11), Get(1)]).unwrap();
        check(config, &[Lease(1), Purge(1), save(0, 10), Get(1)]).unwrap();
        check(config, &[GetOrLease(2), Insert(2, 5), save(0, 9), Get(2)]).unwrap();
        check(config, &[Lease(3), Flush, save(0, 9), Get(3)]).unwrap();
        // `retain` fences the keys it removes (key 2: value 2 lacks bit 0) and no other.
        check(
            config,
            &[
                Insert(1, 1),
                Insert(2, 2),
                Lease(1),
                Lease(2),
                Lease(3),
                Retain(0),
                save(0, 11),
                save(1, 12),
                save(2, 13),
                Get(1),
                Get(2),
                Get(3),
            ],
        )
        .unwrap();
        // Floors: a hold-off outlives its lease, a lower position never lowers the floor, an
        // intent refuses a fresh lease and its end fences it.
        let hold = PurgeWithHoldOff(1, 5);
        check(config, &[hold, Lease(1), Advance(9), save(0, 1), Get(1)]).unwrap();
        let (high, low) = (PurgeAsOf(2, 9), PurgeAsOf(2, 3));
        let save_at = |position| SaveAsOf {
            lease: 0,
            value: 7,
            position,
        };
        check(
            config,
            &[high, low, Lease(2), save_at(8), save_at(9), Get(2)],
        )
        .unwrap();
        let end = EndWrite {
            intent: 0,
            commit: true,
            position: None,
        };
        check(
            config,
            &[BeginWrite(3), Lease(3), save(0, 1), end, save(0, 2), Get(3)],
        )
        .unwrap();
        check(
            config,
            &[
                Lease(4),
                Save {
                    lease: 0,
                    key: Some(5),
                    value: 1,
                },
                SaveForeignCache(4, 2),
                Get(4),
                Get(5),
            ],
        )
        .unwrap();
    }
}
