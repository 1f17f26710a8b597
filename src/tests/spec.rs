//! The sequential specification of the cache's *observable* behaviour: a `BTreeMap` of values
//! plus a generation per lease slot. The proptest state machine (`properties.rs`), the
//! linearizability checker (`lincheck.rs`, `loom_lincheck.rs`) and the fuzz target
//! (`crate::fuzzing`, which includes this file by `#[path]`) all replay operations against it.
//!
//! The spec is written as an *observer*: every operation takes what the real cache returned and
//! answers whether that is allowed, updating the model on the way. That lets one spec serve both
//! exact comparison (capacity at least the key set: every result must match) and eviction pressure
//! (`lossy`: the cache may have dropped any value at any time, so a lookup may miss, but it may
//! never return a value the spec does not hold, and lease outcomes must still match exactly,
//! because eviction does not move generations).
//!
//! Generations are modelled per *slot*, exactly as the cache lays them out: with the fixed
//! [`TestHasher`] the spec computes which keys share a slot, and a write to one of them fences the
//! leases of all of them. Tests that want per-key semantics configure the cache with
//! `.shards(1).lease_slots(1 << 16)` and keys below 2^16, whose slots are all distinct under
//! `TestHasher` (multiplication by an odd constant is a bijection modulo 2^16); tests that want to
//! exercise sharing pick a tiny table and let the spec predict every spurious rejection. Only this
//! file knows how slots are computed, and [`Slots::is_injective_on`] lets a test assert its
//! assumption.

#![allow(dead_code)] // Each user (tests, lincheck, fuzzing) needs a different subset.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::{BuildHasher, Hash, Hasher};

/// A deterministic, injective-on-integers hasher for tests, fuzzing and loom models: the same
/// key hashes the same in every run, so failures reproduce and slots are predictable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct TestHasher;

/// The state behind [`TestHasher`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TestHasherState(u64);

const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

impl TestHasherState {
    fn mix(&mut self, x: u64) {
        // From state 0, one integer hashes to `x * MIX`: a bijection on u64 and on every low-bit
        // window, so distinct small integer keys get distinct slots.
        self.0 = (self.0.rotate_left(29) ^ x).wrapping_mul(MIX);
    }
}

impl Hasher for TestHasherState {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(buf));
        }
    }
    fn write_u8(&mut self, x: u8) {
        self.mix(u64::from(x));
    }
    fn write_u16(&mut self, x: u16) {
        self.mix(u64::from(x));
    }
    fn write_u32(&mut self, x: u32) {
        self.mix(u64::from(x));
    }
    fn write_u64(&mut self, x: u64) {
        self.mix(x);
    }
    fn write_usize(&mut self, x: usize) {
        self.mix(x as u64);
    }
}

impl BuildHasher for TestHasher {
    type Hasher = TestHasherState;
    fn build_hasher(&self) -> TestHasherState {
        TestHasherState::default()
    }
}

/// How the cache under test lays out its generation table, so the spec can tell which keys share
/// a slot. Mirrors `Cache::cell` (shard from hash bits 32..) and `Cache::slot` (low bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Slots {
    /// `shards - 1` (shards is a power of two).
    pub(crate) shard_mask: u64,
    /// `slots_per_shard - 1` (a power of two).
    pub(crate) slot_mask: u64,
}

impl Slots {
    /// The layout a cache built with `.shards(shards).lease_slots(total)` uses (both powers of two).
    pub(crate) fn new(shards: u64, total_slots: u64) -> Self {
        assert!(shards.is_power_of_two() && total_slots.is_power_of_two());
        let per_shard = (total_slots / shards).max(1);
        Self {
            shard_mask: shards - 1,
            slot_mask: per_shard - 1,
        }
    }

    /// The identity of `key`'s slot: (shard, index), packed.
    pub(crate) fn of<K: Hash + ?Sized>(&self, key: &K) -> u64 {
        let hash = TestHasher.hash_one(key);
        (((hash >> 32) & self.shard_mask) << 32) | (hash & self.slot_mask)
    }

    /// Whether every key in `keys` has a slot of its own.
    pub(crate) fn is_injective_on<K: Hash>(&self, keys: impl IntoIterator<Item = K>) -> bool {
        let mut seen = std::collections::BTreeSet::new();
        keys.into_iter().all(|k| seen.insert(self.of(&k)))
    }
}

/// A lease as the spec sees it: the key it was taken for, that key's slot and the slot's
/// generation (with the flush epoch) at capture.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SpecLease<K> {
    pub(crate) key: K,
    /// Whether the lease came from this cache instance (false models a lease from another cache).
    pub(crate) ours: bool,
    slot: u64,
    generation: (u64, u64),
    /// Captured inside a hold-off of its slot: no save under it lands.
    held: bool,
}

/// What `save_with_lease` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum SaveOutcome {
    /// The value was stored.
    Saved,
    /// Rejected: a write fenced the lease.
    Stale,
    /// Rejected: the lease names another key or another cache.
    Foreign,
}

impl SaveOutcome {
    /// The outcome the real cache reported.
    pub(crate) fn of<V>(result: &Result<crate::Saved, crate::SaveError<V>>) -> Self {
        match result {
            Ok(crate::Saved::Stored) => Self::Saved,
            Ok(crate::Saved::Stale) => Self::Stale,
            Err(crate::SaveError::ForeignLease { .. }) => Self::Foreign,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Entry<V> {
    value: V,
    /// Spec time at which the entry expires; `None` means never.
    expires_at: Option<u64>,
}

/// The sequential model. `Hash + Eq` so the linearizability checker can memoize on it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Spec<K: Ord, V> {
    entries: BTreeMap<K, Entry<V>>,
    /// Writes per slot; absent means none yet.
    generations: BTreeMap<u64, u64>,
    /// Flushes so far: a flush fences every slot at once.
    flushes: u64,
    slots: Slots,
    /// Spec time, in the unit the test advances the cache's `ManualClock` by.
    now: u64,
    ttl: Option<u64>,
    /// Eviction pressure: the cache may drop any value at any time.
    lossy: bool,
    /// The hold-off every write applies, in spec time units.
    hold_off: Option<u64>,
    /// Hold-off deadlines per slot (spec time), and the latest one a flush set for every slot.
    held_until: BTreeMap<u64, u64>,
    all_held_until: u64,
    /// The highest source position a write of the slot was made "as of".
    positions: BTreeMap<u64, u64>,
    /// Write intents open on the slot.
    intents: BTreeMap<u64, u32>,
}

/// A mismatch between the cache and the spec, described for a human.
pub(crate) type Verdict = Result<(), String>;

impl<K, V> Spec<K, V>
where
    K: Ord + Clone + Hash + Debug,
    V: Clone + Eq + Debug,
{
    /// An empty spec for a cache laid out as `slots`, with every result compared exactly.
    pub(crate) fn new(slots: Slots) -> Self {
        Self {
            entries: BTreeMap::new(),
            generations: BTreeMap::new(),
            flushes: 0,
            slots,
            now: 0,
            ttl: None,
            lossy: false,
            hold_off: None,
            held_until: BTreeMap::new(),
            all_held_until: 0,
            positions: BTreeMap::new(),
            intents: BTreeMap::new(),
        }
    }

    /// The cache's default hold-off, in spec time units.
    pub(crate) fn hold_off(mut self, hold_off: Option<u64>) -> Self {
        self.hold_off = hold_off;
        self
    }

    /// Whether a lease on `slot` taken now is held off.
    fn is_held(&self, slot: u64) -> bool {
        let deadline = self.held_until.get(&slot).copied().unwrap_or(0);
        self.now < deadline.max(self.all_held_until)
    }

    /// Whether a save to `slot` that passes its lease check lands: no intent is open and the
    /// position (if given) clears the floor.
    fn floors_allow(&self, slot: u64, position: Option<u64>) -> bool {
        self.intents.get(&slot).copied().unwrap_or(0) == 0
            && position.is_none_or(|p| p >= self.positions.get(&slot).copied().unwrap_or(0))
    }

    /// A write of `key` raises its slot's floors: a hold-off of `hold_off`, position `position`.
    fn raise(&mut self, key: &K, hold_off: Option<u64>, position: Option<u64>) {
        let slot = self.slots.of(key);
        if let Some(d) = hold_off {
            let deadline = self.now.saturating_add(d);
            let held = self.held_until.entry(slot).or_insert(0);
            *held = (*held).max(deadline);
        }
        if let Some(p) = position {
            let floor = self.positions.entry(slot).or_insert(0);
            *floor = (*floor).max(p);
        }
    }

    /// Allows the cache to drop values (capacity smaller than the key set).
    pub(crate) fn lossy(mut self, lossy: bool) -> Self {
        self.lossy = lossy;
        self
    }

    /// The cache's default TTL, in spec time units.
    pub(crate) fn ttl(mut self, ttl: Option<u64>) -> Self {
        self.ttl = ttl;
        self
    }

    pub(crate) fn is_lossy(&self) -> bool {
        self.lossy
    }

    /// The live value the spec holds for `key` (in lossy mode: the only value the cache may hold).
    pub(crate) fn value(&self, key: &K) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|e| e.expires_at.is_none_or(|t| self.now < t))
            .map(|e| &e.value)
    }

    fn generation(&self, slot: u64) -> (u64, u64) {
        (
            self.flushes,
            self.generations.get(&slot).copied().unwrap_or(0),
        )
    }

    /// Moves `key`'s slot to a generation it never held.
    fn fence(&mut self, key: &K) {
        *self.generations.entry(self.slots.of(key)).or_insert(0) += 1;
    }

    fn store(&mut self, key: K, value: V) {
        self.store_for(key, value, self.ttl);
    }

    fn store_for(&mut self, key: K, value: V, ttl: Option<u64>) {
        let expires_at = ttl.map(|ttl| self.now.saturating_add(ttl));
        self.entries.insert(key, Entry { value, expires_at });
    }

    /// Drops expired entries (invisible anyway) so equal observable states compare equal.
    fn expire(&mut self) {
        let now = self.now;
        self.entries
            .retain(|_, e| e.expires_at.is_none_or(|t| now < t));
    }

    /// A lookup returned `observed`.
    fn observe_value(&mut self, op: &str, key: &K, observed: Option<&V>) -> Verdict {
        let expected = self.value(key).cloned();
        match (observed, expected) {
            (Some(o), Some(e)) if *o == e => Ok(()),
            (None, None) => Ok(()),
            (None, Some(_)) if self.lossy => {
                // Evicted: it cannot come back without a write, so the spec forgets it too.
                self.entries.remove(key);
                Ok(())
            }
            (o, e) => Err(format!(
                "{op}({key:?}) returned {o:?}, the spec holds {e:?}"
            )),
        }
    }

    /// `get(key)` returned `observed`.
    pub(crate) fn get(&mut self, key: &K, observed: Option<&V>) -> Verdict {
        self.observe_value("get", key, observed)
    }

    /// `contains_key(key)` returned `observed`.
    pub(crate) fn contains_key(&mut self, key: &K, observed: bool) -> Verdict {
        match (observed, self.value(key).is_some()) {
            (true, true) | (false, false) => Ok(()),
            (false, true) if self.lossy => {
                self.entries.remove(key);
                Ok(())
            }
            (o, e) => Err(format!(
                "contains_key({key:?}) returned {o}, the spec says {e}"
            )),
        }
    }

    /// A lease on `key` as it stands now (`lease` never fails, so there is nothing to compare).
    pub(crate) fn lease(&self, key: &K) -> SpecLease<K> {
        let slot = self.slots.of(key);
        SpecLease {
            key: key.clone(),
            ours: true,
            slot,
            generation: self.generation(slot),
            held: self.is_held(slot),
        }
    }

    /// A lease issued by another cache instance (I8): never good here.
    pub(crate) fn foreign_lease(&self, key: &K) -> SpecLease<K> {
        SpecLease {
            ours: false,
            ..self.lease(key)
        }
    }

    /// `get_or_lease(key)` returned a hit with `Some(value)` or a miss with `None`. Returns the
    /// spec's lease on a miss.
    pub(crate) fn get_or_lease(
        &mut self,
        key: &K,
        observed: Option<&V>,
    ) -> Result<Option<SpecLease<K>>, String> {
        self.observe_value("get_or_lease", key, observed)?;
        Ok(observed.is_none().then(|| self.lease(key)))
    }

    /// `save_with_lease(key, value, lease)` reported `observed`.
    pub(crate) fn save(
        &mut self,
        key: K,
        value: V,
        lease: &SpecLease<K>,
        observed: SaveOutcome,
    ) -> Verdict {
        self.save_as_of(key, value, lease, None, observed)
    }

    /// `save_as_of(key, value, lease, position)` (or `save_with_lease` for `None`) reported
    /// `observed`.
    pub(crate) fn save_as_of(
        &mut self,
        key: K,
        value: V,
        lease: &SpecLease<K>,
        position: Option<u64>,
        observed: SaveOutcome,
    ) -> Verdict {
        let expected = if !lease.ours || lease.key != key {
            SaveOutcome::Foreign
        } else if self.generation(lease.slot) != lease.generation
            || lease.held
            || !self.floors_allow(lease.slot, position)
        {
            SaveOutcome::Stale
        } else {
            SaveOutcome::Saved
        };
        if observed != expected {
            return Err(format!(
                "save_with_lease({key:?}, {value:?}) returned {observed:?}, the spec says \
                 {expected:?} (lease {lease:?})"
            ));
        }
        if expected == SaveOutcome::Saved {
            self.store(key, value);
        }
        Ok(())
    }

    /// `insert(key, value)`: stores and fences.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        self.fence(&key);
        self.raise(&key, self.hold_off, None);
        self.store(key, value);
    }

    /// `insert_with_ttl(key, value, ttl)`: stores with its own TTL and fences.
    pub(crate) fn insert_with_ttl(&mut self, key: K, value: V, ttl: u64) {
        self.fence(&key);
        self.raise(&key, self.hold_off, None);
        self.store_for(key, value, Some(ttl));
    }

    /// `purge(key)` returned `observed` (whether a live value was removed).
    pub(crate) fn purge(&mut self, key: &K, observed: bool) -> Verdict {
        self.purge_raising("purge", key, self.hold_off, None, 0, observed)
    }

    /// `purge_with_hold_off(key, hold_off)` returned `observed`.
    pub(crate) fn purge_with_hold_off(
        &mut self,
        key: &K,
        hold_off: u64,
        observed: bool,
    ) -> Verdict {
        self.purge_raising(
            "purge_with_hold_off",
            key,
            Some(hold_off),
            None,
            0,
            observed,
        )
    }

    /// `purge_as_of(key, position)` returned `observed`.
    pub(crate) fn purge_as_of(&mut self, key: &K, position: u64, observed: bool) -> Verdict {
        let hold_off = self.hold_off;
        self.purge_raising("purge_as_of", key, hold_off, Some(position), 0, observed)
    }

    /// `begin_write(key)` (whose fencing purge returned `observed`).
    pub(crate) fn begin_write(&mut self, key: &K, observed: bool) -> Verdict {
        self.purge_raising("begin_write", key, None, None, 1, observed)
    }

    /// The end of an intent on `key` (opened by `begin_write`): a commit (with the default
    /// hold-off, as of `position` if given) or a rollback; its fencing purge returned `observed`.
    pub(crate) fn end_write(
        &mut self,
        key: &K,
        commit: bool,
        position: Option<u64>,
        observed: bool,
    ) -> Verdict {
        let hold_off = if commit { self.hold_off } else { None };
        self.purge_raising("end_write", key, hold_off, position, -1, observed)
    }

    /// A purge of `key` that raises its floors and opens (`intent` 1) or closes (-1) an intent.
    fn purge_raising(
        &mut self,
        op: &str,
        key: &K,
        hold_off: Option<u64>,
        position: Option<u64>,
        intent: i32,
        observed: bool,
    ) -> Verdict {
        let expected = self.value(key).is_some();
        self.fence(key);
        self.raise(key, hold_off, position);
        let slot = self.slots.of(key);
        let open = self.intents.entry(slot).or_insert(0);
        *open = open.saturating_add_signed(intent);
        if *open == 0 {
            self.intents.remove(&slot);
        }
        self.entries.remove(key);
        // Lossy: the value may have been evicted already, so "nothing removed" is allowed.
        if observed == expected || (self.lossy && !observed) {
            Ok(())
        } else {
            Err(format!(
                "{op}({key:?}) returned {observed}, the spec says {expected}"
            ))
        }
    }

    /// `retain(keep)` removed exactly `removed` (each key with the value `keep` was shown), the
    /// cache's predicate being `keep` (a pure function of key and value). Every live entry `keep`
    /// refuses must be among them (in lossy mode it may have been evicted instead), each removal
    /// is a purge (fences and raises the default hold-off, like `purge`), and nothing else may be
    /// removed. `in_scope` says which keys this spec tracks (all of them, or one key's
    /// sub-history in per-key checking): removals of other keys are not its business.
    pub(crate) fn retain(
        &mut self,
        keep: impl Fn(&K, &V) -> bool,
        removed: &[(K, V)],
        in_scope: impl Fn(&K) -> bool,
    ) -> Verdict {
        self.expire();
        for (key, value) in removed.iter().filter(|(k, _)| in_scope(k)) {
            match self.value(key) {
                Some(v) if v == value && !keep(key, value) => {}
                found => {
                    return Err(format!(
                        "retain removed {key:?} = {value:?}, the spec holds {found:?}"
                    ));
                }
            }
        }
        let refused: Vec<K> = self
            .entries
            .iter()
            .filter(|(k, e)| in_scope(k) && !keep(k, &e.value))
            .map(|(k, _)| k.clone())
            .collect();
        for key in refused {
            if removed.iter().any(|(k, _)| *k == key) {
                self.fence(&key);
                self.raise(&key, self.hold_off, None);
                self.entries.remove(&key);
            } else if self.lossy {
                // Evicted before `retain` reached it: gone, and not fenced.
                self.entries.remove(&key);
            } else {
                return Err(format!("retain kept {key:?}, which its predicate refuses"));
            }
        }
        Ok(())
    }

    /// `flush()`: drops everything and fences every lease.
    pub(crate) fn flush(&mut self) {
        self.entries.clear();
        self.flushes += 1;
        if let Some(d) = self.hold_off {
            self.all_held_until = self.all_held_until.max(self.now.saturating_add(d));
        }
    }

    /// The cache's clock moved forward by `by` spec time units.
    pub(crate) fn advance(&mut self, by: u64) {
        self.now = self.now.saturating_add(by);
        self.expire();
    }

    /// `get_or_load(key, loader)` returned `observed`, where the loader (if called) would have
    /// produced `loaded`: `Ok` for a value, `Err` for an error. Sequentially the leader's lease
    /// cannot be fenced, so a miss stores what was loaded, unless the key's floors refuse it (a
    /// hold-off in force or an intent open).
    pub(crate) fn get_or_load(
        &mut self,
        key: &K,
        loaded: Result<V, ()>,
        observed: Result<&V, ()>,
    ) -> Verdict {
        if let Some(v) = self.value(key).cloned() {
            if observed == Ok(&v) {
                if self.lossy && loaded.as_ref() == Ok(&v) {
                    // Ambiguous: a hit, or the value was evicted and the loader stored an equal
                    // one with a fresh deadline. Keep the later of the two deadlines (`None` is
                    // the latest): the spec stays an over-approximation (found by the fuzzer,
                    // twice: first when it kept the old deadline, then when it kept the new one
                    // and that was earlier than an `insert_with_ttl`'s).
                    let fresh = self.ttl.map(|ttl| self.now.saturating_add(ttl));
                    if let Some(entry) = self.entries.get_mut(key) {
                        entry.expires_at = match (entry.expires_at, fresh) {
                            (Some(a), Some(b)) => Some(a.max(b)),
                            _ => None,
                        };
                    }
                }
                return Ok(());
            }
            if !self.lossy {
                return Err(format!(
                    "get_or_load({key:?}) returned {observed:?}, the spec holds {v:?}"
                ));
            }
            // Lossy: the value may have been evicted, in which case the loader ran.
            self.entries.remove(key);
        }
        if observed != loaded.as_ref().map_err(|_| ()) {
            return Err(format!(
                "get_or_load({key:?}) missed and returned {observed:?}, the loader gave {loaded:?}"
            ));
        }
        let slot = self.slots.of(key);
        if let Ok(v) = loaded {
            if !self.is_held(slot) && self.floors_allow(slot, None) {
                self.store(key.clone(), v);
            }
        }
        Ok(())
    }

    /// After a run: `lookup` is what the cache holds for each key the spec knows or `keys` names.
    pub(crate) fn check_contents(
        &mut self,
        keys: impl IntoIterator<Item = K>,
        mut lookup: impl FnMut(&K) -> Option<V>,
    ) -> Verdict {
        for key in keys {
            let got = lookup(&key);
            self.get(&key, got.as_ref())?;
        }
        Ok(())
    }
}
