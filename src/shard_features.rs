//! The shard's side of `Cache::peek`, `Cache::iter`, `Cache::retain`, per-entry expiry and
//! removal notifications (`crate::listener`). Kept apart from `shard.rs`: these are new entry
//! points over the same structures, and the only hooks in the write path are the
//! [`Shard::notify`] calls next to each removal.

#![allow(unsafe_code)]

use super::{MAIN, MAX_FREQ, NIL, SMALL, Shard, Shared};
use crate::listener::{RemovalCause, Removals};
use crate::reclaim::ReadGuard;
use crate::sync::Ordering;
use crate::table::Probe;
use std::borrow::Borrow;

impl<K, V> Shared<K, V> {
    /// The live value of `key` mapped through `f`, **without** recording an access (no frequency
    /// bump: the eviction policy does not see it). Lock-free.
    #[inline]
    pub(crate) fn peek<Q, R>(
        &self,
        guard: &ReadGuard<'_>,
        hash: u64,
        key: &Q,
        now: impl FnOnce() -> u64,
        f: impl FnOnce(&V) -> R,
    ) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        // SAFETY: the probe was loaded inside `guard`'s read, which outlives the call.
        let (idx, slot) = unsafe { self.find(self.table(guard), hash, key) }?;
        if self.expired(idx, slot, now) {
            return None;
        }
        // SAFETY: found through the table inside a read.
        Some(unsafe { slot.read_value(f) })
    }

    /// The live value of `key` mapped through `f`, recording the access, as
    /// [`get`](Self::get) does; a read that finds a timed entry also pushes its deadline back by
    /// the time to idle `tti()` returns (nanoseconds, `0`: none), up to the entry's limit. An
    /// entry without a deadline costs what it costs in [`get`](Self::get): `tti` and the clock
    /// are not called.
    ///
    /// The deadline is written only when a read would push it back by more than an eighth of
    /// the time to idle, so that a hot entry is not written on every hit: an entry read at `t`
    /// lives at least until `t + tti * 7 / 8`, and at most until `t + tti` unless read again.
    #[inline(always)]
    pub(crate) fn get_touching<Q, R>(
        &self,
        guard: &ReadGuard<'_>,
        hash: u64,
        key: &Q,
        now: impl FnOnce() -> u64,
        tti: impl FnOnce() -> u64,
        f: impl FnOnce(&V) -> R,
    ) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        // SAFETY: the probe was loaded inside `guard`'s read, which outlives the call.
        unsafe { self.lookup_touching(self.table(guard), hash, key, now, tti, f) }
    }

    /// [`get_touching`](Self::get_touching) in `table`.
    ///
    /// # Safety
    /// As for [`find`](Self::find).
    #[inline(always)]
    unsafe fn lookup_touching<Q, R>(
        &self,
        table: Probe,
        hash: u64,
        key: &Q,
        now: impl FnOnce() -> u64,
        tti: impl FnOnce() -> u64,
        f: impl FnOnce(&V) -> R,
    ) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        // SAFETY: the caller's contract.
        let (idx, slot) = unsafe { self.find(table, hash, key) }?;
        if slot.timed() {
            let now = now();
            let deadline = self.slab.deadline(idx);
            if deadline != 0 && deadline <= now {
                return None;
            }
            let tti = tti();
            if tti != 0 {
                self.touch(idx, now, tti);
            }
        }
        // What `read_live` does past its deadline check. Relaxed: a heuristic for the policy.
        let freq = slot.freq.load(Ordering::Relaxed);
        if freq < MAX_FREQ {
            slot.freq.store(freq + 1, Ordering::Relaxed);
        }
        // SAFETY: found through the table inside a read, or by the writer (the caller's contract).
        Some(unsafe { slot.read_value(f) })
    }

    /// Pushes the deadline of the live, timed entry in slot `idx` to `now + tti` (capped by its
    /// limit) when that moves it by more than `tti / 8`.
    #[cold]
    #[inline(never)]
    fn touch(&self, idx: u32, now: u64, tti: u64) {
        let mut want = now.saturating_add(tti);
        let limit = self.slab.limit(idx);
        if limit != 0 {
            want = want.min(limit);
        }
        if want > self.slab.deadline(idx).saturating_add(tti / 8) {
            self.slab.raise_deadline(idx, want);
        }
    }

    /// Runs `f` on the key of slot `idx`, which must hold an entry linked in a queue. `_writer`,
    /// this shard's writer state, shows that the caller holds the shard's lock (it lives under
    /// it), so the entry cannot be freed while `f` runs.
    pub(crate) fn with_linked_key<R>(
        &self,
        _writer: &super::Writer,
        idx: u32,
        f: impl FnOnce(&K) -> R,
    ) -> R {
        let slot = self.slab.slot(idx);
        assert!(
            matches!(slot.state(), SMALL | MAIN),
            "slot {idx} holds no entry"
        );
        // SAFETY: the writer (see above); a linked slot holds an entry.
        unsafe { slot.with_key(f) }
    }
}

impl<'a, K, V> Shard<'a, K, V>
where
    K: Eq,
{
    /// Copies every entry this view removes into `removals` (for a removal listener).
    pub(crate) fn with_removals(mut self, removals: Option<Removals<'a, K, V>>) -> Self {
        self.removals = removals;
        self
    }

    /// Gives the entry the next insert stores through this view the limit `limit` (`0`: none):
    /// the latest a read may push its deadline to, in a time-to-idle cache.
    pub(crate) fn with_limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Stores this view's limit for the timed entry just put in slot `idx`, if it has one.
    #[inline]
    pub(super) fn record_limit(&mut self, idx: u32) {
        if let Some(limit) = self.limit {
            self.shared.slab.set_limit(idx, limit);
        }
    }

    /// Reports the entry in slot `idx` (about to be removed by a purge or `retain`) as removed for
    /// `cause`, or as `Expired` (and counts it) if its deadline has passed at `now`. Returns
    /// whether it had expired.
    #[inline]
    pub(super) fn notify_removal(&mut self, idx: u32, now: u64, cause: RemovalCause) -> bool {
        let expired = self.is_expired(idx, || now);
        self.notify(
            idx,
            if expired {
                RemovalCause::Expired
            } else {
                cause
            },
        );
        self.w.expirations += u64::from(expired);
        expired
    }

    /// Reports the entry in slot `idx` (about to be removed) as removed for `cause`, if this view
    /// has a listener. Never unwinds (the copier catches panics) and changes nothing.
    #[inline]
    pub(super) fn notify(&mut self, idx: u32, cause: RemovalCause) {
        if let Some(removals) = self.removals.as_mut().filter(|r| r.wants(cause)) {
            let slot = self.shared.slab.slot(idx);
            // SAFETY: the writer; the slot holds an entry until it is retired and collected.
            let copy = unsafe { slot.with_key(|k| slot.with_value(|v| (removals.clone)(k, v))) };
            if let Some((key, value)) = copy {
                removals.out.push((key, value, cause));
            }
        }
    }

    /// [`notify`](Self::notify) for an entry replaced by a write of its key: `Expired` if its
    /// deadline had passed (it could not have been read any more), else `Replaced`.
    ///
    /// Always inlined, the rest out of line: every replacing write calls it, and most caches have
    /// no listener; left to the heuristics it was a call of its own for that one test (6
    /// instructions a replacing write, issue 17).
    #[inline(always)]
    pub(super) fn notify_replaced(&mut self, idx: u32, now: u64) {
        // Neither cause is a purge: nothing to copy for a stale grace alone.
        if self.removals.as_ref().is_some_and(|r| !r.only_purged) {
            self.notify_replaced_to_listener(idx, now);
        }
    }

    /// [`notify_replaced`](Self::notify_replaced) in a cache with a removal listener.
    #[cold]
    #[inline(never)]
    fn notify_replaced_to_listener(&mut self, idx: u32, now: u64) {
        let cause = if self.is_expired(idx, || now) {
            RemovalCause::Expired
        } else {
            RemovalCause::Replaced
        };
        self.notify(idx, cause);
    }

    /// Reports an entry that was never stored (a fill refused at once) as removed for `cause`.
    #[inline]
    pub(super) fn notify_entry(&mut self, key: &K, value: &V, cause: RemovalCause) {
        if let Some(removals) = self.removals.as_mut().filter(|r| r.wants(cause)) {
            if let Some((key, value)) = (removals.clone)(key, value) {
                removals.out.push((key, value, cause));
            }
        }
    }

    /// [`Shared::get_touching`] for a caller holding the lock.
    pub(crate) fn get_touching<Q, R>(
        &self,
        hash: u64,
        key: &Q,
        now: impl FnOnce() -> u64,
        tti: impl FnOnce() -> u64,
        f: impl FnOnce(&V) -> R,
    ) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        // SAFETY: the writer; the table is its current one.
        unsafe {
            self.shared
                .lookup_touching(Probe::of(self.table()), hash, key, now, tti, f)
        }
    }

    /// Runs `f` on every entry held, live or expired, with its slot index and its deadline
    /// (`0`: none), small queue first, each queue from its oldest entry.
    pub(crate) fn for_each_entry(&self, mut f: impl FnMut(u32, &K, &V, u64)) {
        for list in [self.w.small, self.w.main] {
            let mut idx = list.head;
            while idx != NIL {
                let slot = self.slot(idx);
                let deadline = if slot.timed() {
                    self.shared.slab.deadline(idx)
                } else {
                    0
                };
                // SAFETY: the writer; a linked slot holds an entry.
                unsafe { slot.with_key(|k| slot.with_value(|v| f(idx, k, v, deadline))) };
                idx = slot.next.load(Ordering::Relaxed);
            }
        }
    }

    /// Removes the entry in slot `idx`, whose key hashes to `hash`, reporting it as `cause` (or
    /// as `Expired` if its deadline has passed at `now`). Returns whether it was live.
    pub(crate) fn remove_slot(
        &mut self,
        idx: u32,
        hash: u64,
        now: u64,
        cause: RemovalCause,
    ) -> bool {
        debug_assert!(matches!(self.slot(idx).state(), SMALL | MAIN));
        let expired = self.notify_removal(idx, now, cause);
        self.remove_hashed(idx, hash);
        !expired
    }

    /// The deadline of `key`'s entry (`Some(0)`: it has none), or `None` if it has no entry or
    /// its deadline has passed at `now`.
    pub(crate) fn deadline_of<Q>(&self, hash: u64, key: &Q, now: u64) -> Option<u64>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let (_, idx) = self.find(hash, key)?;
        if self.is_expired(idx, || now) {
            return None;
        }
        Some(if self.slot(idx).timed() {
            self.shared.slab.deadline(idx)
        } else {
            0
        })
    }
}

#[cfg(all(test, not(leasecache_loom)))]
mod tests {
    use super::super::OwnedShard;
    use crate::listener::{RemovalCause, Removals};
    use crate::sync::Ordering;

    fn id(k: &u64) -> u64 {
        *k
    }

    fn listening<'a>(
        s: &'a mut OwnedShard<u64, u64>,
        out: &'a mut crate::listener::Removed<u64, u64>,
    ) -> crate::shard::Shard<'a, u64, u64> {
        let clone = |k: &u64, v: &u64| Some((*k, *v));
        s.view().with_removals(Some(Removals {
            out,
            clone,
            only_purged: false,
        }))
    }

    fn freq(s: &mut OwnedShard<u64, u64>, key: u64) -> u8 {
        let v = s.view();
        let (_, idx) = v.find(key, &key).expect("cached");
        v.slot(idx).freq.load(Ordering::Relaxed)
    }

    /// `peek` leaves the access count the eviction policy reads alone; `get` bumps it.
    #[test]
    fn peek_records_no_access() {
        let mut s = OwnedShard::<u64, u64>::new(8, 8);
        assert!(s.view().insert(1, 1, 10, 1, 0, 1, &id));
        let guard = s.readers.enter();
        assert_eq!(s.shared.peek(&guard, 1, &1, || 1, |v| *v), Some(10));
        assert_eq!(s.shared.peek(&guard, 2, &2, || 1, |v| *v), None);
        drop(guard);
        assert_eq!(freq(&mut s, 1), 0);
        assert_eq!(s.get(1, &1, || 1), Some(10));
        assert_eq!(freq(&mut s, 1), 1, "control: a get is an access");
    }

    /// A read of a time-to-idle entry pushes its deadline back, never past its limit, and only
    /// when that moves it by more than an eighth of the time to idle.
    #[test]
    fn touching_moves_deadlines_within_limits() {
        let mut s = OwnedShard::<u64, u64>::new(8, 8);
        assert!(s.view().with_limit(0).insert(1, 1, 1, 1, 100, 1, &id));
        assert!(s.view().with_limit(150).insert(2, 2, 2, 1, 100, 1, &id));
        let deadline = |s: &OwnedShard<u64, u64>, key: u64| {
            let guard = s.readers.enter();
            // SAFETY: inside a read.
            let found = unsafe { s.shared.find(s.shared.table(&guard), key, &key) };
            let (idx, _) = found.expect("cached");
            s.shared.slab.deadline(idx)
        };
        let read = |s: &OwnedShard<u64, u64>, key: u64, now: u64| {
            let guard = s.readers.enter();
            s.shared
                .get_touching(&guard, key, &key, || now, || 100, |v| *v)
        };
        assert_eq!(read(&s, 1, 10), Some(1));
        assert_eq!(
            deadline(&s, 1),
            100,
            "10 + 100 moves it by less than 100 / 8"
        );
        assert_eq!(read(&s, 1, 13), Some(1));
        assert_eq!(deadline(&s, 1), 113);
        assert_eq!(read(&s, 2, 90), Some(2));
        assert_eq!(deadline(&s, 2), 150, "capped by the limit");
        assert_eq!(read(&s, 2, 150), None, "expired at its limit");
        assert_eq!(read(&s, 1, 113), None);
    }

    /// A value replaced in place (`Slot::IN_PLACE`: a `u64`, no deadline) is reported before it
    /// is overwritten.
    #[test]
    fn a_value_replaced_in_place_is_reported_with_its_old_value() {
        let mut out = Vec::new();
        let mut s = OwnedShard::<u64, u64>::new(2, 2);
        listening(&mut s, &mut out).insert(1, 1, 10, 1, 0, 1, &id);
        listening(&mut s, &mut out).insert(1, 1, 11, 1, 0, 1, &id);
        assert_eq!(out, [(1, 10, RemovalCause::Replaced)]);
        assert_eq!(s.get(1, &1, || 1), Some(11));
    }

    /// Every removal route of a shard reports its entry with its cause, before the entry goes.
    #[test]
    fn each_removal_route_notifies_with_its_cause() {
        let mut out = Vec::new();
        let mut s = OwnedShard::<u64, u64>::new(2, 2);
        listening(&mut s, &mut out).insert(1, 1, 10, 1, 5, 1, &id);
        listening(&mut s, &mut out).insert(1, 1, 11, 1, 5, 1, &id);
        assert_eq!(out, [(1, 10, RemovalCause::Replaced)]);
        out.clear();
        listening(&mut s, &mut out).insert(2, 2, 20, 1, 0, 1, &id);
        listening(&mut s, &mut out).insert(3, 3, 30, 1, 0, 6, &id);
        assert_eq!(
            out,
            [(1, 11, RemovalCause::Expired)],
            "evicted past its deadline"
        );
        out.clear();
        assert_eq!(
            listening(&mut s, &mut out).remove(2, &2, 6),
            crate::shard::Removed::Live
        );
        listening(&mut s, &mut out).clear();
        assert_eq!(
            out,
            [
                (2, 20, RemovalCause::Purged),
                (3, 30, RemovalCause::Flushed)
            ]
        );
    }
}
