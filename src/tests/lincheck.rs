//! A linearizability checker: the Wing-Gong search with Lowe's memoization, over recorded
//! concurrent histories of `(thread, call, return, t_call, t_return)` events, replayed against
//! the sequential spec (`spec.rs`).
//!
//! A history is linearizable if its operations can be put in one sequence that (a) respects real
//! time: an operation that returned before another was called comes first, and (b) is accepted by
//! the spec, each operation with the result it really returned. The search extends a prefix with
//! any *minimal* operation (one called before every pending operation's return), backtracking on a
//! spec mismatch, and never revisits a (set of linearized operations, spec state) configuration
//! already explored. The cache is linearizable per key when every key has its own lease slot, so
//! [`check_per_key`] splits a history by key (flushes go into every part): P-compositionality,
//! which keeps histories of thousands of operations cheap.
//!
//! Used here on hand-written histories and on real-thread histories, and in `loom_lincheck.rs` on
//! every execution loom explores.

use super::spec::{SaveOutcome, Slots, Spec, SpecLease};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential object the checker replays operations against.
pub(crate) trait Model: Clone + Eq + Hash {
    type Op: Debug;
    type Ret: Debug;
    /// The state after `op` returned `ret`, or `None` if `op` cannot return `ret` here.
    fn step(&self, op: &Self::Op, ret: &Self::Ret) -> Option<Self>;
}

/// One completed operation of a concurrent history. Timestamps come from one counter shared by
/// every thread (a loom atomic under loom), taken just before the call and just after the return.
#[derive(Clone, Debug)]
pub(crate) struct Event<O, R> {
    pub(crate) thread: usize,
    pub(crate) op: O,
    pub(crate) ret: R,
    pub(crate) call: u64,
    pub(crate) returned: u64,
}

/// The checker's verdict.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Linearizable; the indices of the events in a witness order.
    Linearizable(Vec<usize>),
    /// Not linearizable; a description with the longest prefix the search could linearize.
    Violation(String),
    /// The search hit its state budget (never taken as a pass).
    GaveUp,
}

impl Verdict {
    pub(crate) fn is_linearizable(&self) -> bool {
        matches!(self, Self::Linearizable(_))
    }
}

/// A set of event indices.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Self(vec![0; n.div_ceil(64)])
    }
    fn has(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn with(&self, i: usize) -> Self {
        let mut b = self.clone();
        b.0[i / 64] |= 1 << (i % 64);
        b
    }
}

struct Frame<M> {
    done: Bits,
    model: M,
    candidates: Vec<usize>,
    next: usize,
}

/// Most configurations the search explores before giving up.
const BUDGET: usize = 2_000_000;

/// Whether `history` is linearizable with respect to `init`.
pub(crate) fn check<M: Model>(init: &M, history: &[Event<M::Op, M::Ret>]) -> Verdict {
    for e in history {
        assert!(
            e.call < e.returned,
            "an event returned before it was called: {e:?}"
        );
    }
    let n = history.len();
    let mut by_call: Vec<usize> = (0..n).collect();
    by_call.sort_by_key(|&i| history[i].call);
    // A thread runs one operation at a time: its events must not overlap (a recording bug would).
    let mut last_return: BTreeMap<usize, u64> = BTreeMap::new();
    for &i in &by_call {
        let e = &history[i];
        let previous = last_return.insert(e.thread, e.returned).unwrap_or(0);
        assert!(
            previous < e.call,
            "thread {} overlaps itself at {e:?}",
            e.thread
        );
    }
    // The minimal pending events: called before the earliest return among pending events.
    let candidates = |done: &Bits| -> Vec<usize> {
        let earliest_return = by_call
            .iter()
            .filter(|&&i| !done.has(i))
            .map(|&i| history[i].returned)
            .min()
            .unwrap_or(u64::MAX);
        by_call
            .iter()
            .copied()
            .take_while(|&i| history[i].call < earliest_return)
            .filter(|&i| !done.has(i))
            .collect()
    };
    let root = Bits::new(n);
    let mut seen: HashSet<(Bits, M)> = HashSet::new();
    let mut stack = vec![Frame {
        candidates: candidates(&root),
        done: root,
        model: init.clone(),
        next: 0,
    }];
    let mut path: Vec<usize> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    while let Some(top) = stack.last_mut() {
        if path.len() == n {
            return Verdict::Linearizable(path);
        }
        let Some(&i) = top.candidates.get(top.next) else {
            stack.pop();
            path.pop();
            continue;
        };
        top.next += 1;
        let Some(model) = top.model.step(&history[i].op, &history[i].ret) else {
            continue;
        };
        let done = top.done.with(i);
        if !seen.insert((done.clone(), model.clone())) {
            continue;
        }
        if seen.len() > BUDGET {
            return Verdict::GaveUp;
        }
        path.push(i);
        if path.len() > longest.len() {
            longest.clone_from(&path);
        }
        stack.push(Frame {
            candidates: candidates(&done),
            done,
            model,
            next: 0,
        });
    }
    let mut report = format!(
        "not linearizable: {n} events, at most {} linearized.\nlongest linearizable prefix:\n",
        longest.len()
    );
    for &i in &longest {
        report += &format!("  {:?}\n", history[i]);
    }
    report += "the rest (by call time):\n";
    for &i in &by_call {
        if !longest.contains(&i) {
            report += &format!("  {:?}\n", history[i]);
        }
    }
    Verdict::Violation(report)
}

/// Identifies a lease within one history: the save that uses it names the operation that took it.
pub(crate) type LeaseId = u32;

/// An operation on the cache, as recorded in a history.
#[derive(Clone, Debug, PartialEq, Eq)]
// The floor operations are recorded only from real threads, which the loom lane does not build.
#[cfg_attr(leasecache_loom, allow(dead_code))]
pub(crate) enum Op {
    Get(u8),
    /// `get_or_lease`; on a miss the lease is known by this id.
    GetOrLease(u8, LeaseId),
    Lease(u8, LeaseId),
    /// `save_with_lease(key, value, lease)`. Each lease is saved with at most once per history.
    Save(u8, u32, LeaseId),
    Insert(u8, u32),
    Purge(u8),
    Flush,
    /// `save_as_of(key, value, lease, position)`.
    SaveAsOf(u8, u32, LeaseId, u64),
    /// `purge_as_of(key, position)`.
    PurgeAsOf(u8, u64),
    /// `purge_with_hold_off(key, HOLD_OFF_MS)` on a clock that never moves: the key's slot is
    /// held off for the rest of the history.
    PurgeWithHoldOff(u8),
    /// Opens a write intent on the key (its fencing purge returns whether a value was removed).
    BeginWrite(u8),
    /// Commits the intent this thread opened on the key.
    EndWrite(u8),
    /// `retain` with the predicate [`crate::fuzzing::retain_keeps`] of this bit (a write to
    /// every key it removes, atomic in a one-shard cache).
    Retain(u8),
}

/// The hold-off of [`Op::PurgeWithHoldOff`], in the spec's time units (the clock never moves).
pub(crate) const HOLD_OFF_MS: u64 = 1000;

impl Op {
    /// The key the operation is about; `None` for `flush`, which is about every key.
    pub(crate) fn key(&self) -> Option<u8> {
        match *self {
            Op::Get(k)
            | Op::GetOrLease(k, _)
            | Op::Lease(k, _)
            | Op::Save(k, _, _)
            | Op::Insert(k, _)
            | Op::Purge(k)
            | Op::SaveAsOf(k, _, _, _)
            | Op::PurgeAsOf(k, _)
            | Op::PurgeWithHoldOff(k)
            | Op::BeginWrite(k)
            | Op::EndWrite(k) => Some(k),
            Op::Flush | Op::Retain(_) => None,
        }
    }
}

/// What an operation returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ret {
    /// `get`, or `get_or_lease` (`None`: a miss).
    Value(Option<u32>),
    Saved(SaveOutcome),
    Purged(bool),
    /// `retain`: the entries its predicate refused, as it saw them.
    Retained(Vec<(u8, u32)>),
    /// `lease`, `insert`, `flush`.
    Done,
}

/// The spec plus the leases captured so far (by id), which a later save presents.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CacheModel {
    spec: Spec<u8, u32>,
    leases: BTreeMap<LeaseId, SpecLease<u8>>,
    /// The one key of a per-key sub-history (`check_per_key`); `None`: every key.
    focus: Option<u8>,
}

impl CacheModel {
    pub(crate) fn new(spec: Spec<u8, u32>) -> Self {
        Self {
            spec,
            leases: BTreeMap::new(),
            focus: None,
        }
    }
}

impl Model for CacheModel {
    type Op = Op;
    type Ret = Ret;

    fn step(&self, op: &Op, ret: &Ret) -> Option<Self> {
        let mut next = self.clone();
        let ok = match (op, ret) {
            (Op::Get(k), Ret::Value(v)) => next.spec.get(k, v.as_ref()).is_ok(),
            (Op::GetOrLease(k, id), Ret::Value(v)) => match next.spec.get_or_lease(k, v.as_ref()) {
                Ok(lease) => {
                    if let Some(lease) = lease {
                        next.leases.insert(*id, lease);
                    }
                    true
                }
                Err(_) => false,
            },
            (Op::Lease(k, id), Ret::Done) => {
                let lease = next.spec.lease(k);
                next.leases.insert(*id, lease);
                true
            }
            (Op::Save(k, v, id), Ret::Saved(outcome)) => match next.leases.remove(id) {
                // Program order puts the lease first; a save whose lease is not linearized yet
                // cannot be linearized either.
                None => false,
                Some(lease) => next.spec.save(*k, *v, &lease, *outcome).is_ok(),
            },
            (Op::Insert(k, v), Ret::Done) => {
                next.spec.insert(*k, *v);
                true
            }
            (Op::Purge(k), Ret::Purged(removed)) => next.spec.purge(k, *removed).is_ok(),
            (Op::Flush, Ret::Done) => {
                next.spec.flush();
                true
            }
            (Op::SaveAsOf(k, v, id, p), Ret::Saved(outcome)) => match next.leases.remove(id) {
                None => false,
                Some(lease) => next
                    .spec
                    .save_as_of(*k, *v, &lease, Some(*p), *outcome)
                    .is_ok(),
            },
            (Op::PurgeAsOf(k, p), Ret::Purged(removed)) => {
                next.spec.purge_as_of(k, *p, *removed).is_ok()
            }
            (Op::PurgeWithHoldOff(k), Ret::Purged(removed)) => next
                .spec
                .purge_with_hold_off(k, HOLD_OFF_MS, *removed)
                .is_ok(),
            (Op::BeginWrite(k), Ret::Purged(removed)) => next.spec.begin_write(k, *removed).is_ok(),
            (Op::EndWrite(k), Ret::Purged(removed)) => {
                next.spec.end_write(k, true, None, *removed).is_ok()
            }
            (Op::Retain(bit), Ret::Retained(removed)) => {
                let focus = next.focus;
                next.spec
                    .retain(
                        |k, v| crate::fuzzing::retain_keeps(*bit, *k, *v),
                        removed,
                        |k| focus.is_none_or(|f| f == *k),
                    )
                    .is_ok()
            }
            _ => false,
        };
        ok.then_some(next)
    }
}

/// A recorded cache history.
pub(crate) type History = Vec<Event<Op, Ret>>;

/// Checks each key's sub-history separately (every flush belongs to all of them). Sound only when
/// no two keys of the history share a lease slot, which is asserted against `slots`. The witness
/// lists each key's order in turn, so a flush appears once per key.
pub(crate) fn check_per_key(
    init: &CacheModel,
    slots: Slots,
    history: &[Event<Op, Ret>],
) -> Verdict {
    let keys: BTreeSet<u8> = history.iter().filter_map(|e| e.op.key()).collect();
    assert!(
        slots.is_injective_on(keys.iter().copied()),
        "per-key checking needs every key in its own slot"
    );
    let mut witness = Vec::new();
    for key in keys {
        let part: Vec<usize> = (0..history.len())
            .filter(|&i| history[i].op.key().is_none_or(|k| k == key))
            .collect();
        let sub: History = part.iter().map(|&i| history[i].clone()).collect();
        let mut focused = init.clone();
        focused.focus = Some(key);
        match check(&focused, &sub) {
            Verdict::Linearizable(order) => witness.extend(order.into_iter().map(|j| part[j])),
            Verdict::Violation(report) => {
                return Verdict::Violation(format!("key {key}: {report}"));
            }
            Verdict::GaveUp => return Verdict::GaveUp,
        }
    }
    Verdict::Linearizable(witness)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(thread: usize, op: Op, ret: Ret, call: u64, returned: u64) -> Event<Op, Ret> {
        Event {
            thread,
            op,
            ret,
            call,
            returned,
        }
    }

    fn model() -> CacheModel {
        CacheModel::new(Spec::new(SLOTS))
    }

    const SLOTS: Slots = Slots {
        shard_mask: 0,
        slot_mask: 255,
    };

    /// The race this crate exists to close, as a history: the lease is taken, a purge completes,
    /// then a save *begins* and lands, and a later get sees the saved (stale) value.
    #[test]
    fn rejects_a_save_that_landed_after_a_completed_purge() {
        let history = vec![
            ev(0, Op::Lease(1, 0), Ret::Done, 1, 2),
            ev(1, Op::Purge(1), Ret::Purged(false), 3, 4),
            ev(0, Op::Save(1, 10, 0), Ret::Saved(SaveOutcome::Saved), 5, 6),
            ev(1, Op::Get(1), Ret::Value(Some(10)), 7, 8),
        ];
        let verdict = check(&model(), &history);
        assert!(matches!(verdict, Verdict::Violation(_)), "{verdict:?}");
        // Even without the get, the acceptance itself is the violation.
        let verdict = check(&model(), &history[..3]);
        assert!(matches!(verdict, Verdict::Violation(_)), "{verdict:?}");
        assert!(!check_per_key(&model(), SLOTS, &history).is_linearizable());
    }

    /// `retain` is a purge of every key it removes: a save under a lease taken before a retain
    /// that removed the key, landing after it, is a violation; on a key it kept it is fine; and
    /// a retain that claims to have kept what its predicate refuses is caught. Bit 0 keeps odd
    /// values.
    #[test]
    fn retain_fences_the_keys_it_removes_and_no_other() {
        let setup = [
            ev(0, Op::Insert(1, 2), Ret::Done, 1, 2),
            ev(0, Op::Insert(2, 3), Ret::Done, 3, 4),
            ev(0, Op::Lease(1, 0), Ret::Done, 5, 6),
            ev(0, Op::Lease(2, 1), Ret::Done, 7, 8),
        ];
        let retain = ev(1, Op::Retain(0), Ret::Retained(vec![(1, 2)]), 9, 10);
        let stale = ev(0, Op::Save(1, 9, 0), Ret::Saved(SaveOutcome::Saved), 11, 12);
        let kept = ev(0, Op::Save(2, 9, 1), Ret::Saved(SaveOutcome::Saved), 13, 14);
        let mut history = setup.to_vec();
        history.extend([retain.clone(), kept.clone()]);
        assert!(check(&model(), &history).is_linearizable());
        assert!(check_per_key(&model(), SLOTS, &history).is_linearizable());
        history.push(stale);
        assert!(!check(&model(), &history).is_linearizable());
        assert!(!check_per_key(&model(), SLOTS, &history).is_linearizable());
        let mut history = setup.to_vec();
        history.push(ev(1, Op::Retain(0), Ret::Retained(vec![]), 9, 10));
        assert!(!check(&model(), &history).is_linearizable());
        assert!(!check_per_key(&model(), SLOTS, &history).is_linearizable());
    }

    #[test]
    fn accepts_the_same_save_when_the_purge_overlaps_the_lease() {
        // The purge may be linearized before the lease, so the save may land.
        let history = vec![
            ev(0, Op::Lease(1, 0), Ret::Done, 1, 4),
            ev(1, Op::Purge(1), Ret::Purged(false), 2, 3),
            ev(0, Op::Save(1, 10, 0), Ret::Saved(SaveOutcome::Saved), 5, 6),
            ev(1, Op::Get(1), Ret::Value(Some(10)), 7, 8),
        ];
        let verdict = check(&model(), &history);
        let Verdict::Linearizable(order) = verdict else {
            panic!("{verdict:?}")
        };
        assert_eq!(order, vec![1, 0, 2, 3]);
        // And a rejection is fine too when the purge overlaps the save.
        let history = vec![
            ev(0, Op::Lease(1, 0), Ret::Done, 1, 2),
            ev(1, Op::Purge(1), Ret::Purged(false), 3, 6),
            ev(0, Op::Save(1, 10, 0), Ret::Saved(SaveOutcome::Stale), 4, 5),
            ev(1, Op::Get(1), Ret::Value(None), 7, 8),
        ];
        assert!(check(&model(), &history).is_linearizable());
        // ... and so is an acceptance, with the purge then removing the value.
        let history = vec![
            ev(0, Op::Lease(1, 0), Ret::Done, 1, 2),
            ev(1, Op::Purge(1), Ret::Purged(true), 3, 6),
            ev(0, Op::Save(1, 10, 0), Ret::Saved(SaveOutcome::Saved), 4, 5),
            ev(1, Op::Get(1), Ret::Value(None), 7, 8),
        ];
        assert!(check(&model(), &history).is_linearizable());
    }

    #[test]
    fn rejects_a_spurious_rejection_and_a_stale_read() {
        // Nothing wrote key 1 between lease and save: the save must land.
        let history = vec![
            ev(0, Op::Lease(1, 0), Ret::Done, 1, 2),
            ev(1, Op::Purge(2), Ret::Purged(false), 3, 4),
            ev(0, Op::Save(1, 10, 0), Ret::Saved(SaveOutcome::Stale), 5, 6),
        ];
        assert!(!check(&model(), &history).is_linearizable());
        assert!(!check_per_key(&model(), SLOTS, &history).is_linearizable());
        // A read after a completed insert cannot see the value it replaced.
        let history = vec![
            ev(0, Op::Insert(1, 1), Ret::Done, 1, 2),
            ev(0, Op::Insert(1, 2), Ret::Done, 3, 4),
            ev(1, Op::Get(1), Ret::Value(Some(1)), 5, 6),
        ];
        assert!(!check(&model(), &history).is_linearizable());
        // Overlapping the second insert, it can.
        let history = vec![
            ev(0, Op::Insert(1, 1), Ret::Done, 1, 2),
            ev(0, Op::Insert(1, 2), Ret::Done, 3, 6),
            ev(1, Op::Get(1), Ret::Value(Some(1)), 4, 5),
        ];
        assert!(check(&model(), &history).is_linearizable());
    }

    #[test]
    fn a_flush_fences_every_key() {
        let history = vec![
            ev(0, Op::Lease(1, 0), Ret::Done, 1, 2),
            ev(0, Op::Lease(2, 1), Ret::Done, 3, 4),
            ev(1, Op::Flush, Ret::Done, 5, 6),
            ev(0, Op::Save(2, 20, 1), Ret::Saved(SaveOutcome::Stale), 7, 8),
            ev(0, Op::Save(1, 10, 0), Ret::Saved(SaveOutcome::Saved), 9, 10),
        ];
        assert!(!check(&model(), &history).is_linearizable());
        assert!(!check_per_key(&model(), SLOTS, &history).is_linearizable());
        let mut fixed = history.clone();
        fixed[4].ret = Ret::Saved(SaveOutcome::Stale);
        assert!(check(&model(), &fixed).is_linearizable());
        assert!(check_per_key(&model(), SLOTS, &fixed).is_linearizable());
    }

    /// Real-thread recording: std threads and std atomics (the test harness is outside the engine,
    /// and under `leasecache_loom` the engine's primitives only work inside a loom model).
    #[cfg(not(leasecache_loom))]
    mod real_threads {
        use super::*;
        use crate::Lookup;
        use crate::tests::spec::TestHasher;
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::{Arc, Barrier, Mutex};
        use std::time::Duration;

        /// A xorshift generator: deterministic per thread, no dependency.
        struct Rng(u64);
        impl Rng {
            fn next(&mut self) -> u64 {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0
            }
            fn below(&mut self, n: u64) -> u64 {
                self.next() % n
            }
        }

        /// Runs `threads` real threads doing `ops_per_thread` random operations on `keys` keys in a
        /// cache of `capacity` entries, and returns the recorded history.
        fn record(threads: usize, ops_per_thread: usize, keys: u64, capacity: u64) -> History {
            record_with_slots(threads, ops_per_thread, keys, capacity, 256)
        }

        /// [`record`] with a generation table of `lease_slots` slots.
        fn record_with_slots(
            threads: usize,
            ops_per_thread: usize,
            keys: u64,
            capacity: u64,
            lease_slots: usize,
        ) -> History {
            record_inner(threads, ops_per_thread, keys, capacity, lease_slots, false)
        }

        /// [`record_with_slots`], with `floors`: saves as of positions, purges as of positions
        /// or with a hold-off (on a clock that never moves), and write intents join the mix.
        fn record_inner(
            threads: usize,
            ops_per_thread: usize,
            keys: u64,
            capacity: u64,
            lease_slots: usize,
            floors: bool,
        ) -> History {
            let cache: Arc<crate::Cache<u8, u32, TestHasher>> = Arc::new(
                crate::Cache::builder()
                    .hasher(TestHasher)
                    .shards(1)
                    .lease_slots(lease_slots)
                    .max_capacity(capacity)
                    .clock(crate::ManualClock::new())
                    .build(),
            );
            let clock = Arc::new(AtomicU64::new(1));
            let history = Arc::new(Mutex::new(History::new()));
            // Start together, or on two cores each thread may finish before the next one starts.
            let start = Arc::new(Barrier::new(threads));
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (cache, clock, history, start) =
                        (cache.clone(), clock.clone(), history.clone(), start.clone());
                    std::thread::spawn(move || {
                        let mut rng = Rng(0x9E37_79B9 + t as u64 * 7919);
                        start.wait();
                        let mut local = History::new();
                        let mut pending: Option<(u8, LeaseId, crate::Lease)> = None;
                        let mut intent: Option<u8> = None;
                        let raise = crate::floors::Raise::default();
                        for seq in 0..ops_per_thread {
                            // Unique per thread and step, so equal values never hide a stale one.
                            let value = (t * ops_per_thread + seq) as u32;
                            let id = value;
                            let k = rng.below(keys) as u8;
                            // SeqCst: one total order of timestamps across threads.
                            let call = clock.fetch_add(1, Ordering::SeqCst);
                            if seq % 16 == 0 {
                                std::thread::yield_now(); // let the other threads interleave
                            }
                            let roll = rng.below(if floors { 20 } else { 16 });
                            let last = seq + 1 == ops_per_thread;
                            let (op, ret) = match pending.take() {
                                // The intent left open at the end is committed in the last step.
                                kept if last && intent.is_some() => {
                                    pending = kept;
                                    let k = intent.take().unwrap_or_default();
                                    let removed = cache.intent_write(&k, raise, false);
                                    (Op::EndWrite(k), Ret::Purged(removed))
                                }
                                Some((k, id, lease)) if floors && roll < 4 => {
                                    let position = rng.below(8);
                                    let r = cache.save_as_of(k, value, lease, position);
                                    let outcome = SaveOutcome::of(&r);
                                    (Op::SaveAsOf(k, value, id, position), Ret::Saved(outcome))
                                }
                                Some((k, id, lease)) if roll < 10 => {
                                    let r = cache.save_with_lease(k, value, lease);
                                    (Op::Save(k, value, id), Ret::Saved(SaveOutcome::of(&r)))
                                }
                                kept => {
                                    pending = kept;
                                    match roll {
                                        0..=2 => (Op::Get(k), Ret::Value(cache.get(&k))),
                                        3..=5 => {
                                            let found = match cache.get_or_lease(&k) {
                                                Lookup::Hit(v) => Some(v),
                                                Lookup::Miss(lease) => {
                                                    pending = Some((k, id, lease));
                                                    None
                                                }
                                            };
                                            (Op::GetOrLease(k, id), Ret::Value(found))
                                        }
                                        6..=8 => {
                                            pending = Some((k, id, cache.lease(&k)));
                                            (Op::Lease(k, id), Ret::Done)
                                        }
                                        9..=11 => {
                                            cache.insert(k, value);
                                            (Op::Insert(k, value), Ret::Done)
                                        }
                                        12..=14 => (Op::Purge(k), Ret::Purged(cache.purge(&k))),
                                        15 if rng.below(2) == 0 => {
                                            cache.flush();
                                            (Op::Flush, Ret::Done)
                                        }
                                        15 => {
                                            let bit = rng.below(64) as u8;
                                            let mut removed = Vec::new();
                                            cache.retain(|k, v| {
                                                let keep =
                                                    crate::fuzzing::retain_keeps(bit, *k, *v);
                                                if !keep {
                                                    removed.push((*k, *v));
                                                }
                                                keep
                                            });
                                            (Op::Retain(bit), Ret::Retained(removed))
                                        }
                                        16 | 17 => {
                                            let position = rng.below(8);
                                            let removed = cache.purge_as_of(&k, position);
                                            (Op::PurgeAsOf(k, position), Ret::Purged(removed))
                                        }
                                        18 if rng.below(8) == 0 => {
                                            let hold = Duration::from_millis(HOLD_OFF_MS);
                                            let removed = cache.purge_with_hold_off(&k, hold);
                                            (Op::PurgeWithHoldOff(k), Ret::Purged(removed))
                                        }
                                        _ => match intent.take() {
                                            Some(k) => {
                                                let removed = cache.intent_write(&k, raise, false);
                                                (Op::EndWrite(k), Ret::Purged(removed))
                                            }
                                            None => {
                                                intent = Some(k);
                                                let removed = cache.intent_write(&k, raise, true);
                                                (Op::BeginWrite(k), Ret::Purged(removed))
                                            }
                                        },
                                    }
                                }
                            };
                            let returned = clock.fetch_add(1, Ordering::SeqCst);
                            local.push(Event {
                                thread: t,
                                op,
                                ret,
                                call,
                                returned,
                            });
                        }
                        history.lock().unwrap().extend(local);
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            std::mem::take(&mut *history.lock().unwrap())
        }

        /// How many events overlap an event of another thread.
        fn overlaps(history: &History) -> usize {
            let mut by_call: Vec<&Event<Op, Ret>> = history.iter().collect();
            by_call.sort_by_key(|e| e.call);
            let mut hit = vec![false; by_call.len()];
            for i in 0..by_call.len() {
                let a = by_call[i];
                for j in i + 1..by_call.len() {
                    if by_call[j].call > a.returned {
                        break;
                    }
                    if by_call[j].thread != a.thread {
                        (hit[i], hit[j]) = (true, true);
                    }
                }
            }
            hit.into_iter().filter(|&h| h).count()
        }

        /// Real threads, a few thousand operations over a few hot keys: the recorded history must be
        /// linearizable against the spec.
        #[test]
        fn real_thread_histories_are_linearizable() {
            let mut total = 0;
            let mut saves = [0usize; 2];
            let mut overlapping = 0;
            // Three rounds, and more (bounded) until some operations really overlapped: on a busy
            // two-core machine a round can run its threads one after another.
            let mut round = 0;
            while round < 3 || (overlapping == 0 && round < 30) {
                round += 1;
                let history = record(4, 1000, 4, 4);
                total += history.len();
                for e in &history {
                    match e.ret {
                        Ret::Saved(SaveOutcome::Saved) => saves[0] += 1,
                        Ret::Saved(SaveOutcome::Stale) => saves[1] += 1,
                        _ => {}
                    }
                }
                overlapping += overlaps(&history);
                match check_per_key(&model(), SLOTS, &history) {
                    Verdict::Linearizable(order) => {
                        let covered: BTreeSet<usize> = order.into_iter().collect();
                        assert_eq!(covered.len(), history.len());
                    }
                    other => panic!("round {round}: {other:?}"),
                }
            }
            assert_eq!(total, round * 4 * 1000);
            // The histories exercised both save outcomes (so the check had something to decide).
            assert!(
                saves[0] > 0 && saves[1] > 0,
                "saves landed/stale: {saves:?}"
            );
            // ... and really were concurrent: some operations overlapped another thread's.
            assert!(overlapping > 0, "no two operations overlapped");
            eprintln!(
                "lincheck: {total} events checked, {overlapping} overlapping another thread's, \
                 saves landed/stale {saves:?}"
            );
        }

        /// Hold-offs, positions and intents from real threads: every save outcome, including the
        /// refusals only a floor explains, must match the spec.
        #[test]
        fn real_thread_histories_with_floors_are_linearizable() {
            let mut refused_by_floors = 0;
            let mut saved_as_of = 0;
            for round in 0..3 {
                let history = record_inner(4, 600, 4, 4, 256, true);
                match check_per_key(&model(), SLOTS, &history) {
                    Verdict::Linearizable(_) => {}
                    other => panic!("round {round}: {other:?}"),
                }
                saved_as_of += history
                    .iter()
                    .filter(|e| {
                        matches!(
                            (&e.op, &e.ret),
                            (Op::SaveAsOf(..), Ret::Saved(SaveOutcome::Saved))
                        )
                    })
                    .count();
                // Teeth: a spec that ignores floors rejects some of these histories.
                let blind: History = history
                    .iter()
                    .map(|e| {
                        let op = match e.op {
                            Op::SaveAsOf(k, v, id, _) => Op::Save(k, v, id),
                            ref op => op.clone(),
                        };
                        Event { op, ..e.clone() }
                    })
                    .collect();
                refused_by_floors +=
                    usize::from(!check_per_key(&model(), SLOTS, &blind).is_linearizable());
            }
            assert!(saved_as_of > 0, "no save as of a position landed");
            assert!(
                refused_by_floors > 0,
                "no history needed the position floors"
            );
        }

        /// Eviction pressure (capacity 2 for 4 keys): the lossy spec lets a lookup miss at any
        /// time, but a value the spec does not hold, or a wrong save outcome, still fails. Per-key
        /// checking stays sound: evictions caused by other keys are just misses.
        #[test]
        fn real_thread_histories_under_eviction_are_linearizable() {
            let lossy = CacheModel::new(Spec::new(SLOTS).lossy(true));
            for round in 0..2 {
                let history = record(4, 800, 4, 2);
                match check_per_key(&lossy, SLOTS, &history) {
                    Verdict::Linearizable(_) => {}
                    other => panic!("round {round}: {other:?}"),
                }
                // Teeth: the exact spec must notice that this history lost values.
                assert!(
                    !check_per_key(&model(), SLOTS, &history).is_linearizable(),
                    "round {round}: nothing was evicted, so the pressure test tested nothing"
                );
            }
        }

        /// Four keys sharing two slots: keys fence each other, so the history cannot be split by
        /// key; many short whole histories are checked instead, against a spec that knows which
        /// keys share a slot (a rejection it did not predict fails, as does a missed one).
        #[test]
        fn real_thread_histories_with_shared_slots_are_linearizable() {
            let shared = Slots::new(1, 2);
            assert!(!shared.is_injective_on(0u8..4));
            let init = CacheModel::new(Spec::new(shared));
            let per_key = CacheModel::new(Spec::new(SLOTS));
            let mut needed_sharing = 0;
            for round in 0..60 {
                let history = record_with_slots(3, 40, 4, 4, 2);
                match check(&init, &history) {
                    Verdict::Linearizable(_) => {}
                    other => panic!("round {round}: {other:?}"),
                }
                needed_sharing += usize::from(!check(&per_key, &history).is_linearizable());
            }
            // Teeth: some histories had rejections only slot sharing explains.
            assert!(needed_sharing > 0, "no round exercised slot sharing");
        }
    }
}
