//! The slab: a shard's entries, in slots that never move, so that a reader holding a slot index
//! (found in the table without a lock) can read the slot while the writer adds others.
//!
//! Slots live in segments that double in size and are never freed before the slab; a slot is
//! named by a `u32` index. A slot's key and value sit in `UnsafeCell`s: the writer fills a slot
//! only while no reader can reach it (it is free: never published, or retired and past its grace
//! period), publishes it with a Release store of its index into the table, and drops its contents
//! only after unlinking and retiring it and waiting out the grace period (`reclaim.rs`). The one
//! exception is a value of at most one word that needs no drop (a `u64`), in an entry without a
//! deadline: a replacing write overwrites it in place with one machine move, which readers copy
//! with one move ([`Slot::IN_PLACE`]). The
//! policy's bookkeeping (queue links, weight, state) is in relaxed atomics that only the writer
//! uses, so that it can change them while readers read the key and value next to them; relaxed
//! atomic loads and stores compile to plain moves.

#![allow(unsafe_code)]

use crate::sync::{AtomicPtr, AtomicU8, AtomicU32, AtomicU64, Ordering, UnsafeCell};
use std::mem::MaybeUninit;
use std::ptr;

/// A slot's life, in [`Slot::state`]. A zeroed slot is `FREE`.
pub(crate) const FREE: u8 = 0;
/// Holding an entry in the small queue.
pub(crate) const SMALL: u8 = 1;
/// Holding an entry in the main queue.
pub(crate) const MAIN: u8 = 2;
/// Unlinked and waiting for its grace period; its key and value are still there.
pub(crate) const RETIRED: u8 = 3;
/// The bits of [`Slot::state`] that hold one of the states above.
const QUEUE: u8 = 0b11;
/// A flag in [`Slot::state`]: the entry has a deadline. Set before the slot is published, so a
/// reader that finds the entry looks its deadline up only when it has one.
const TIMED: u8 = 0b100;

/// One entry: 32 bytes for `u64` keys and values, the same as a hash-map-only layout, because the
/// policy's fields fill what alignment would waste anyway.
///
/// `repr(C)`: what a hit reads (key, value, frequency) comes first.
#[repr(C)]
pub(crate) struct Slot<K, V> {
    key: UnsafeCell<MaybeUninit<K>>,
    value: UnsafeCell<MaybeUninit<V>>,
    /// Hits since the policy last looked at the entry: bumped by readers, relaxed (a heuristic).
    pub(crate) freq: AtomicU8,
    /// `FREE`, `SMALL`, `MAIN` or `RETIRED`, and the `TIMED` flag; written by the writer only.
    state: AtomicU8,
    pub(crate) weight: AtomicU32,
    pub(crate) prev: AtomicU32,
    pub(crate) next: AtomicU32,
}

// SAFETY: a slot hands out `&K` and `&V` to readers on other threads (hence `Sync` bounds) and moves
// keys and values between threads (hence `Send`); everything else in it is atomic (`Cache`'s docs
// hold a test that a cache of values that are not `Sync` is not `Sync`).
unsafe impl<K: Send + Sync, V: Send + Sync> Sync for Slot<K, V> {}

impl<K, V> Slot<K, V> {
    /// Whether dropping a slot's entry runs any code. A retired slot whose entry does not may be
    /// reused without [`clear`](Self::clear): [`fill`](Self::fill) overwrites it.
    pub(crate) const NEEDS_DROP: bool = std::mem::needs_drop::<K>() || std::mem::needs_drop::<V>();

    #[cfg(all(test, leasecache_loom))]
    fn empty() -> Self {
        Self {
            key: UnsafeCell::new(MaybeUninit::uninit()),
            value: UnsafeCell::new(MaybeUninit::uninit()),
            freq: AtomicU8::new(0),
            state: AtomicU8::new(FREE),
            weight: AtomicU32::new(0),
            prev: AtomicU32::new(0),
            next: AtomicU32::new(0),
        }
    }

    /// `FREE`, `SMALL`, `MAIN` or `RETIRED`.
    pub(crate) fn state(&self) -> u8 {
        // Relaxed: only the writer writes it.
        self.state.load(Ordering::Relaxed) & QUEUE
    }

    /// Sets the state, keeping the `TIMED` flag. Writer only.
    pub(crate) fn set_state(&self, state: u8) {
        let timed = self.state.load(Ordering::Relaxed) & TIMED;
        self.state.store(timed | state, Ordering::Relaxed);
    }

    /// Marks a linked slot `RETIRED`, keeping the `TIMED` flag. Writer only. `set_state(RETIRED)`
    /// with one instruction less (an `or`, no mask): `RETIRED` sets every bit of `QUEUE`, and no
    /// bit outside `QUEUE` and `TIMED` is ever set (issue 17).
    #[inline]
    pub(crate) fn retire(&self) {
        const { assert!(RETIRED == QUEUE) };
        self.state.store(
            self.state.load(Ordering::Relaxed) | RETIRED,
            Ordering::Relaxed,
        );
    }

    /// Whether the entry has a deadline. Read by readers of a published slot.
    #[inline]
    pub(crate) fn timed(&self) -> bool {
        // Relaxed: set before the slot was published (Release on the table bucket, which the
        // reader loaded with Acquire), and unchanged while it is.
        self.state.load(Ordering::Relaxed) & TIMED != 0
    }

    /// Runs `f` on the key.
    ///
    /// # Safety
    /// The slot holds an entry (it is not `FREE`) that cannot be freed while `f` runs: the caller
    /// found it through the table inside a read (`ReadGuard`), or is the writer.
    #[inline]
    pub(crate) unsafe fn with_key<R>(&self, f: impl FnOnce(&K) -> R) -> R {
        // SAFETY: the caller guarantees the key is initialized and not dropped until `f` returns;
        // the writer only writes a slot's key while no reader can reach the slot.
        self.key.with(|k| f(unsafe { (*k).assume_init_ref() }))
    }

    /// Runs `f` on the value, for the writer: the value itself, which only the writer changes.
    /// Readers use [`read_value`](Self::read_value).
    ///
    /// # Safety
    /// The slot holds an entry, and the caller is the shard's writer (it holds the shard's
    /// lock), or no reader can reach the slot: a reader may run `f` on a value the writer
    /// overwrites in place meanwhile ([`IN_PLACE`](Self::IN_PLACE)), which is a data race.
    #[inline]
    pub(crate) unsafe fn with_value<R>(&self, f: impl FnOnce(&V) -> R) -> R {
        // SAFETY: as in `with_key`.
        self.value.with(|v| f(unsafe { (*v).assume_init_ref() }))
    }

    /// Runs `f` on the value, for a reader that may race the writer: on a copy read in one
    /// machine move when the writer may [`replace_value`](Self::replace_value) in place
    /// ([`IN_PLACE`](Self::IN_PLACE)), else on the value itself (which then never changes while
    /// the slot is published).
    ///
    /// # Safety
    /// As for [`with_key`](Self::with_key).
    #[inline(always)]
    pub(crate) unsafe fn read_value<R>(&self, f: impl FnOnce(&V) -> R) -> R {
        if Self::IN_PLACE {
            // SAFETY: the caller's contract: the slot holds a value, and the writer only writes
            // it whole, in one move (`replace_value`).
            let copy = self
                .value
                .with(|v| unsafe { in_place::load(v.cast::<V>()) });
            // `copy` needs no drop (`IN_PLACE`), so the slot's value and its copy never both
            // drop anything.
            return f(&copy);
        }
        // SAFETY: as in `with_key`.
        unsafe { self.with_value(f) }
    }

    /// Whether a write that replaces a published value overwrites it in place
    /// ([`replace_value`](Self::replace_value)) instead of filling a fresh slot and retiring this
    /// one: for values that need no drop, fit one aligned machine word (1, 2, 4 or 8 bytes, or
    /// none) and can therefore be written and read whole by single moves on x86-64. Such a
    /// write then touches no other slot, no queue link, no table bucket and no reclamation
    /// batch, which is most of what a replacing write of `u64` values cost against quick_cache,
    /// which also overwrites in place (issue 17). Off x86-64 (and on x32), under loom and under
    /// Miri, values are always written into fresh slots.
    pub(crate) const IN_PLACE: bool = in_place::SUPPORTED
        && !std::mem::needs_drop::<V>()
        && matches!(std::mem::size_of::<V>(), 0 | 1 | 2 | 4 | 8)
        && std::mem::align_of::<V>() >= std::mem::size_of::<V>();

    /// Overwrites the published value with `value`, in one machine move, which readers copy
    /// with one move ([`read_value`](Self::read_value)): a reader sees the old value or the new
    /// one, whole. The old value is not dropped (it needs no drop).
    ///
    /// # Safety
    /// [`IN_PLACE`](Self::IN_PLACE) holds, the caller is the shard's writer, and the slot holds
    /// a value.
    #[inline(always)]
    pub(crate) unsafe fn replace_value(&self, value: V) {
        debug_assert!(Self::IN_PLACE);
        // SAFETY: the caller's contract; readers only copy the value with single moves.
        self.value
            .with_mut(|v| unsafe { in_place::store(v.cast::<V>(), &value) });
    }

    /// Stores an entry in a free slot.
    ///
    /// # Safety
    /// The slot is `FREE` (or `RETIRED` with an entry that needs no drop, see
    /// [`NEEDS_DROP`](Self::NEEDS_DROP)) and no reader can reach it (it is not in the table, and
    /// any read that found it before it was retired has ended).
    pub(crate) unsafe fn fill(&self, key: K, value: V, weight: u32, timed: bool) {
        // SAFETY: the caller guarantees exclusive access to the free slot's contents.
        self.key.with_mut(|k| unsafe { (*k).write(key) });
        // SAFETY: as above.
        self.value.with_mut(|v| unsafe { (*v).write(value) });
        self.freq.store(0, Ordering::Relaxed);
        self.weight.store(weight, Ordering::Relaxed);
        let timed = if timed { TIMED } else { 0 };
        self.state.store(timed | FREE, Ordering::Relaxed);
    }

    /// Starts loading the line that the value's first word points to, if it is a pointer: the
    /// memory that dropping an `Arc` or `Box` value touches first (its counts; the allocator's
    /// header just before it, when in the same line), for a writer about to
    /// [`clear`](Self::clear) the slot. Dropping a value retired thousands of writes before is a
    /// cache miss behind a locked decrement (an `Arc`'s), which holds every later load of the
    /// write back: 90 % of the time in `Shard::alloc`, a sixth of the `replace` mix of
    /// `Arc<[u8; 128]>` values and about a third of its writes (perf, issue 17). A hint: nothing
    /// is read as a `V`, so a first word that is not a pointer only prefetches a useless line
    /// (a `String`'s or a `Vec`'s is its capacity with rustc 1.95: no gain there, and no cost
    /// measured). Only for values that need dropping and hold a word; a no-op off x86-64, under
    /// loom and under Miri.
    ///
    /// # Safety
    /// The caller is the shard's writer and no reader can reach the slot (it is free, or retired
    /// and past its grace period): its value's bytes are read, and nothing may write them
    /// meanwhile. They need not hold an entry: they are read as bytes, not as a `V`.
    #[inline(always)]
    pub(crate) unsafe fn prefetch_value_target(&self) {
        if !std::mem::needs_drop::<V>() || std::mem::size_of::<V>() < std::mem::size_of::<usize>() {
            return;
        }
        #[cfg(all(
            target_arch = "x86_64",
            target_pointer_width = "64",
            not(miri),
            not(all(test, leasecache_loom))
        ))]
        self.value.with(|v| {
            // SAFETY: `v` points to the slot's value, at least a word of allocated memory that
            // only the writer touches now (the caller's contract). The assembly reads that word
            // as the machine does, not as a Rust value (uninitialized padding is fine), and
            // `prefetcht0` never faults, whatever the address; nothing is written.
            unsafe {
                std::arch::asm!(
                    "mov {target}, qword ptr [{value}]",
                    "prefetcht0 [{target}]",
                    value = in(reg) v.cast::<u8>(),
                    target = out(reg) _,
                    options(nostack, readonly, preserves_flags),
                );
            }
        });
    }

    /// Drops the entry and marks the slot `FREE`.
    ///
    /// # Safety
    /// The slot holds an entry and no reader can reach it any more (it was retired and its grace
    /// period is over, or the caller has exclusive access to the whole slab).
    pub(crate) unsafe fn clear(&self) {
        // `FREE` first: if a `Drop` below panics, the rest of the entry leaks rather than being
        // dropped twice by the slab's own `Drop`.
        self.state.store(FREE, Ordering::Relaxed);
        // SAFETY: the caller guarantees the contents are initialized and unreachable by readers.
        self.key.with_mut(|k| unsafe { (*k).assume_init_drop() });
        // SAFETY: as above.
        self.value.with_mut(|v| unsafe { (*v).assume_init_drop() });
    }
}

/// Single machine moves of a value of at most one aligned word, which is how readers and the
/// writer share a value the writer replaces in place ([`Slot::IN_PLACE`]). An aligned move of 1,
/// 2, 4 or 8 bytes is single-copy atomic on x86-64, so a reader's copy is never torn; and x86-64
/// orders stores as releases and loads as acquires (each `asm!` block is also a compiler barrier
/// for memory), so a reader that copies a new value that is a reference (a `&'static T`) also
/// sees what it points to, as after a Release store and an Acquire load. Written in
/// assembly rather than with `AtomicU64` and friends, because a value may have padding (an
/// `#[repr(align(8))] struct(u32)`), and reading uninitialized bytes as an integer is undefined
/// behaviour in Rust while the machine just copies them (the same reason as
/// [`Slot::prefetch_value_target`]'s).
mod in_place {
    /// Whether this target has the moves below.
    pub(super) const SUPPORTED: bool = cfg!(all(
        target_arch = "x86_64",
        target_pointer_width = "64",
        not(miri),
        not(all(test, leasecache_loom))
    ));

    /// A copy of the value at `src`, read in one move.
    ///
    /// # Safety
    /// `src` points to a valid, aligned value of a type that `Slot::IN_PLACE` accepts, which
    /// nothing writes meanwhile except by [`store`].
    #[cfg(all(
        target_arch = "x86_64",
        target_pointer_width = "64",
        not(miri),
        not(all(test, leasecache_loom))
    ))]
    #[inline(always)]
    pub(super) unsafe fn load<V>(src: *const V) -> V {
        use std::arch::asm;
        let word: u64;
        // SAFETY: the caller's contract: `src` is valid for its size and aligned to it. The
        // move reads the bytes as the machine does (padding included) into a register.
        unsafe {
            match std::mem::size_of::<V>() {
                8 => asm!(
                    "mov {w}, qword ptr [{src}]",
                    src = in(reg) src, w = out(reg) word,
                    options(nostack, readonly, preserves_flags),
                ),
                4 => asm!(
                    "mov {w:e}, dword ptr [{src}]",
                    src = in(reg) src, w = out(reg) word,
                    options(nostack, readonly, preserves_flags),
                ),
                2 => asm!(
                    "movzx {w:e}, word ptr [{src}]",
                    src = in(reg) src, w = out(reg) word,
                    options(nostack, readonly, preserves_flags),
                ),
                1 => asm!(
                    "movzx {w:e}, byte ptr [{src}]",
                    src = in(reg) src, w = out(reg) word,
                    options(nostack, readonly, preserves_flags),
                ),
                size => {
                    debug_assert_eq!(size, 0);
                    word = 0;
                }
            }
        }
        // SAFETY: the low `size_of::<V>()` bytes of `word` (its first ones: x86-64 is little
        // endian) are those of the valid value at `src`.
        unsafe { std::mem::transmute_copy::<u64, V>(&word) }
    }

    /// [`load`] where values are never replaced in place (`SUPPORTED` is false).
    #[cfg(not(all(
        target_arch = "x86_64",
        target_pointer_width = "64",
        not(miri),
        not(all(test, leasecache_loom))
    )))]
    pub(super) unsafe fn load<V>(_: *const V) -> V {
        unreachable!("values are replaced in place only on x86-64")
    }

    /// Writes `value` over the value at `dst` in one move, without dropping either.
    ///
    /// # Safety
    /// `dst` points to an aligned value of a type that `Slot::IN_PLACE` accepts, which only the
    /// caller writes, and which readers read only by [`load`].
    #[cfg(all(
        target_arch = "x86_64",
        target_pointer_width = "64",
        not(miri),
        not(all(test, leasecache_loom))
    ))]
    #[inline(always)]
    pub(super) unsafe fn store<V>(dst: *mut V, value: &V) {
        use std::arch::asm;
        let (src, dst) = ((value as *const V).cast::<u8>(), dst.cast::<u8>());
        // SAFETY: the caller's contract: both are valid for their size and aligned to it. The
        // moves copy the bytes as the machine does, padding included.
        unsafe {
            match std::mem::size_of::<V>() {
                8 => asm!(
                    "mov {t}, qword ptr [{src}]",
                    "mov qword ptr [{dst}], {t}",
                    src = in(reg) src, dst = in(reg) dst, t = out(reg) _,
                    options(nostack, preserves_flags),
                ),
                4 => asm!(
                    "mov {t:e}, dword ptr [{src}]",
                    "mov dword ptr [{dst}], {t:e}",
                    src = in(reg) src, dst = in(reg) dst, t = out(reg) _,
                    options(nostack, preserves_flags),
                ),
                2 => asm!(
                    "mov {t:x}, word ptr [{src}]",
                    "mov word ptr [{dst}], {t:x}",
                    src = in(reg) src, dst = in(reg) dst, t = out(reg) _,
                    options(nostack, preserves_flags),
                ),
                1 => asm!(
                    "mov {t}, byte ptr [{src}]",
                    "mov byte ptr [{dst}], {t}",
                    src = in(reg) src, dst = in(reg) dst, t = out(reg_byte) _,
                    options(nostack, preserves_flags),
                ),
                size => debug_assert_eq!(size, 0),
            }
        }
    }

    /// [`store`] where values are never replaced in place (`SUPPORTED` is false).
    #[cfg(not(all(
        target_arch = "x86_64",
        target_pointer_width = "64",
        not(miri),
        not(all(test, leasecache_loom))
    )))]
    pub(super) unsafe fn store<V>(_: *mut V, _: &V) {
        unreachable!("values are replaced in place only on x86-64")
    }
}

/// A pointer set once (by the writer) and read by anyone; freed with its owner.
pub(crate) struct Published<T> {
    ptr: AtomicPtr<T>,
}

// SAFETY: it owns a `T` that readers on other threads borrow.
unsafe impl<T: Send + Sync> Sync for Published<T> {}
// SAFETY: it owns a `T`.
unsafe impl<T: Send> Send for Published<T> {}

impl<T> Published<T> {
    pub(crate) fn new() -> Self {
        Self {
            ptr: AtomicPtr::new(ptr::null_mut()),
        }
    }

    #[inline]
    pub(crate) fn get(&self) -> Option<&T> {
        // Acquire pairs with the Release store in `set`: the `T` is initialized.
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: a non-null pointer came from `Box::into_raw` in `set` and is only freed by
        // `Drop`, which needs `&mut self`.
        unsafe { p.as_ref() }
    }

    /// Publishes `value`. Only the writer calls it, and only while nothing is published.
    pub(crate) fn set(&self, value: Box<T>) -> &T {
        debug_assert!(self.ptr.load(Ordering::Relaxed).is_null());
        let p = Box::into_raw(value);
        // Release pairs with the Acquire load in `get`.
        self.ptr.store(p, Ordering::Release);
        // SAFETY: just published from a live box; freed only by `Drop`.
        unsafe { &*p }
    }
}

impl<T> Drop for Published<T> {
    fn drop(&mut self) {
        let p = self.ptr.load(Ordering::Relaxed);
        if !p.is_null() {
            // SAFETY: came from `Box::into_raw` in `set`; `&mut self` means nobody borrows it.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// One segment: its slots and, once any entry of the shard has a deadline, their deadlines (a
/// clock reading; `0` means never).
struct Segment<K, V> {
    slots: Box<[Slot<K, V>]>,
    deadlines: Published<Box<[AtomicU64]>>,
    /// The limits of a time-to-idle shard (`set_limit`), allocated with its first one.
    limits: Published<Box<[AtomicU64]>>,
}

/// The slots of one shard, in segments of `2^first_bits`, `2^first_bits`, `2^(first_bits + 1)`,
/// ... slots, allocated as the writer needs them.
pub(crate) struct Slab<K, V> {
    first_bits: u32,
    /// Segment 0, allocated with the slab (zeroed memory costs nothing until touched) and apart
    /// from the others, so that a hit in it (in most caches, every hit) looks up no segment.
    first: Segment<K, V>,
    /// Segments 1 and up.
    rest: Box<[Published<Segment<K, V>>]>,
}

impl<K, V> Slab<K, V> {
    /// A slab whose first segment holds at least `expected` slots.
    pub(crate) fn new(expected: usize) -> Self {
        let first_bits = expected
            .clamp(16, 1 << 31)
            .next_power_of_two()
            .trailing_zeros();
        Self {
            first_bits,
            first: Segment {
                slots: zeroed_slots(1 << first_bits),
                deadlines: Published::new(),
                limits: Published::new(),
            },
            rest: (1..=32 - first_bits).map(|_| Published::new()).collect(),
        }
    }

    /// Segment `s`, if allocated.
    fn segment(&self, s: usize) -> Option<&Segment<K, V>> {
        match s {
            0 => Some(&self.first),
            s => self.rest.get(s - 1)?.get(),
        }
    }

    /// The number of segments a slab can have.
    fn segments(&self) -> usize {
        self.rest.len() + 1
    }

    /// The segment and offset of slot `idx`.
    #[inline]
    fn locate(&self, idx: u32) -> (usize, usize) {
        let q = idx >> self.first_bits;
        if q == 0 {
            (0, idx as usize)
        } else {
            let s = 32 - q.leading_zeros();
            (
                s as usize,
                (idx - (1 << (self.first_bits + s - 1))) as usize,
            )
        }
    }

    /// The number of slots in segment `s`.
    fn segment_len(&self, s: usize) -> usize {
        1 << (self.first_bits as usize + s.saturating_sub(1))
    }

    /// The segment holding slot `idx`, if allocated, and the slot's offset in it.
    #[inline]
    fn find_segment(&self, idx: u32) -> Option<(&Segment<K, V>, usize)> {
        // The first segment's bounds check is the test for being in it: one comparison on a hit.
        if (idx as usize) < self.first.slots.len() {
            return Some((&self.first, idx as usize));
        }
        let (s, off) = self.locate(idx);
        Some((self.segment(s)?, off))
    }

    /// Slot `idx`, if its segment exists.
    #[inline]
    pub(crate) fn get(&self, idx: u32) -> Option<&Slot<K, V>> {
        let (segment, off) = self.find_segment(idx)?;
        segment.slots.get(off)
    }

    /// Slot `idx`, which the writer knows exists.
    pub(crate) fn slot(&self, idx: u32) -> &Slot<K, V> {
        self.get(idx)
            .expect("the writer only names slots it allocated")
    }

    /// Slot `idx`'s deadline (`0`: none), which counts only while the slot is marked timed.
    #[inline]
    pub(crate) fn deadline(&self, idx: u32) -> u64 {
        let Some((segment, off)) = self.find_segment(idx) else {
            return 0;
        };
        // Relaxed: the deadline was written before the slot was published (Release on the table
        // bucket, which the reader loaded with Acquire).
        segment
            .deadlines
            .get()
            .and_then(|d| d.get(off))
            .map_or(0, |d| d.load(Ordering::Relaxed))
    }

    /// Whether any slot ever had a deadline (then every segment has a deadline array).
    pub(crate) fn has_deadlines(&self) -> bool {
        self.first.deadlines.get().is_some()
    }

    /// Sets slot `idx`'s deadline; the first one allocates every segment's deadline array. Writer
    /// only, before the slot is published. A deadline counts only while its slot is marked timed
    /// (`Slot::fill`), so a reused slot's old deadline needs no reset.
    pub(crate) fn set_deadline(&self, idx: u32, deadline: u64) {
        if !self.has_deadlines() {
            for s in 0..self.segments() {
                if let Some(segment) = self.segment(s) {
                    segment.deadlines.set(zeroed_u64s(self.segment_len(s)));
                }
            }
        }
        let (segment, off) = self.find_segment(idx).expect("allocated");
        let deadlines = segment
            .deadlines
            .get()
            .expect("allocated with the first deadline");
        deadlines[off].store(deadline, Ordering::Relaxed);
    }

    /// Pushes slot `idx`'s deadline to `deadline` if that is later (a read of a time-to-idle
    /// entry). Readers may call it on a slot they found through the table inside a read: the
    /// slot is not reused before the read ends, and a deadline only counts while the slot is
    /// timed, which it stays while it is published.
    pub(crate) fn raise_deadline(&self, idx: u32, deadline: u64) {
        let Some((segment, off)) = self.find_segment(idx) else {
            return;
        };
        if let Some(d) = segment.deadlines.get().and_then(|d| d.get(off)) {
            // Relaxed: what readers and the writer compare with the clock; it orders nothing.
            d.fetch_max(deadline, Ordering::Relaxed);
        }
    }

    /// Whether any slot ever had a limit (then every segment has a limit array).
    pub(crate) fn has_limits(&self) -> bool {
        self.first.limits.get().is_some()
    }

    /// Slot `idx`'s limit (`0`: none): the latest its deadline may be pushed to by reads, in a
    /// time-to-idle shard.
    pub(crate) fn limit(&self, idx: u32) -> u64 {
        let Some((segment, off)) = self.find_segment(idx) else {
            return 0;
        };
        // Relaxed: written before the slot was published, as its deadline.
        segment
            .limits
            .get()
            .and_then(|d| d.get(off))
            .map_or(0, |d| d.load(Ordering::Relaxed))
    }

    /// Sets slot `idx`'s limit; the first one allocates every segment's limit array. Writer
    /// only, before the slot is published; once a shard has limits, every timed entry sets its
    /// own (a reused slot's old limit is not reset otherwise).
    pub(crate) fn set_limit(&self, idx: u32, limit: u64) {
        if !self.has_limits() {
            for s in 0..self.segments() {
                if let Some(segment) = self.segment(s) {
                    segment.limits.set(zeroed_u64s(self.segment_len(s)));
                }
            }
        }
        let (segment, off) = self.find_segment(idx).expect("allocated");
        let limits = segment
            .limits
            .get()
            .expect("allocated with the first limit");
        limits[off].store(limit, Ordering::Relaxed);
    }

    /// The number of slots in the segments allocated so far.
    #[cfg(all(test, not(leasecache_loom)))]
    pub(crate) fn allocated(&self) -> usize {
        (0..self.segments())
            .take_while(|&s| self.segment(s).is_some())
            .map(|s| self.segment_len(s))
            .sum()
    }

    /// Makes sure slot `idx` exists, allocating its segment (and its deadlines, if the shard has
    /// any) if needed. Writer only, in order: the segments before `idx`'s exist (`slots` stops at
    /// the first missing one).
    pub(crate) fn ensure(&self, idx: u32) {
        let (s, _) = self.locate(idx);
        if s == 0 {
            return;
        }
        debug_assert!(s == 1 || self.rest[s - 2].get().is_some());
        // `rest` has a segment for every `u32` index.
        let segment = &self.rest[s - 1];
        if segment.get().is_none() {
            let len = self.segment_len(s);
            let seg = segment.set(Box::new(Segment {
                slots: zeroed_slots(len),
                deadlines: Published::new(),
                limits: Published::new(),
            }));
            if self.has_deadlines() {
                seg.deadlines.set(zeroed_u64s(len));
            }
            if self.has_limits() {
                seg.limits.set(zeroed_u64s(len));
            }
        }
    }

    /// Every allocated slot with its index, for the writer (segments are allocated in order).
    pub(crate) fn slots(&self) -> impl Iterator<Item = (u32, &Slot<K, V>)> {
        std::iter::once(&self.first)
            .chain(self.rest.iter().map_while(Published::get))
            .flat_map(|seg| seg.slots.iter())
            .enumerate()
            .map(|(i, slot)| (i as u32, slot))
    }
}

impl<K, V> Drop for Slab<K, V> {
    fn drop(&mut self) {
        for (_, slot) in self.slots() {
            if slot.state() != FREE {
                // SAFETY: `&mut self`: no reader or writer can reach the slab any more, and a
                // slot that is not `FREE` holds an entry (a free slot still marked `RETIRED`
                // holds one whose drop does nothing, see `Slot::NEEDS_DROP`).
                unsafe { slot.clear() };
            }
        }
    }
}

/// `len` free slots. Zeroed memory is a valid `FREE` slot (uninitialized key and value, zero
/// atomics), and a large zeroed allocation is not resident until touched, so a cache sized for
/// many more entries than it holds does not pay for the slots it never uses.
#[cfg(not(all(test, leasecache_loom)))]
fn zeroed_slots<K, V>(len: usize) -> Box<[Slot<K, V>]> {
    use std::alloc::{Layout, alloc_zeroed, handle_alloc_error};
    let layout = Layout::array::<Slot<K, V>>(len).expect("a segment fits the address space");
    // A slot has atomics, so it is never zero-sized, and `len > 0`: the layout is not empty.
    debug_assert!(layout.size() > 0);
    // SAFETY: `layout` has a non-zero size.
    let ptr = unsafe { alloc_zeroed(layout) }.cast::<Slot<K, V>>();
    if ptr.is_null() {
        handle_alloc_error(layout);
    }
    // SAFETY: `ptr` is a fresh allocation for `len` slots with the layout `Box<[Slot]>` frees
    // with, and every field of `Slot` is valid when all its bytes are zero: `MaybeUninit`
    // contents may be anything, and the atomics are plain integers (`state` zero is `FREE`).
    unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(ptr, len)) }
}

/// Loom's atomics are not plain integers: build each slot.
#[cfg(all(test, leasecache_loom))]
fn zeroed_slots<K, V>(len: usize) -> Box<[Slot<K, V>]> {
    (0..len).map(|_| Slot::empty()).collect()
}

fn zeroed_u64s(len: usize) -> Box<Box<[AtomicU64]>> {
    Box::new((0..len).map(|_| AtomicU64::new(0)).collect())
}

#[cfg(all(test, not(leasecache_loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_u64_slot_is_32_bytes() {
        // The hit path's second cache miss lands on this slot: keep two per cache line.
        assert_eq!(std::mem::size_of::<Slot<u64, u64>>(), 32);
    }

    /// A value's first word is read for `prefetch_value_target` whatever it holds: a pointer, a
    /// null one, a length, padding, an address no process may touch, a non-canonical one. None
    /// of them faults, and the entry is unchanged.
    #[test]
    fn prefetching_a_values_target_takes_any_first_word() {
        fn check<V: Clone + PartialEq + std::fmt::Debug>(value: V) {
            let slab: Slab<u64, V> = Slab::new(16);
            let slot = slab.slot(0);
            // SAFETY: nothing else uses the slab; the slot is filled once, and cleared below.
            unsafe { slot.fill(0, value.clone(), 1, false) };
            // SAFETY: as above.
            unsafe { slot.prefetch_value_target() };
            // SAFETY: filled above.
            unsafe { slot.with_value(|v| assert_eq!(v, &value)) };
            // SAFETY: filled above; nothing else can reach it.
            unsafe { slot.clear() };
        }
        #[derive(Clone, PartialEq, Debug)]
        #[repr(C)]
        struct Word(usize, String);
        #[derive(Clone, PartialEq, Debug)]
        #[repr(C)]
        struct Padded(u8, String);
        for word in [
            0,
            1,
            4096,
            0xffff_8000_0000_0000,
            0x8000_0000_0000_0000,
            usize::MAX,
        ] {
            check(Word(word, "kept".into()));
        }
        check(None::<Box<u64>>);
        check(Some(Box::new(7u64)));
        check(Padded(3, "kept".into()));
    }

    /// Which values a write replaces in place, and that each of them is read back whole,
    /// padding and odd bit patterns included, through a reader's copy.
    #[test]
    fn word_sized_values_without_drop_glue_are_replaced_in_place_and_read_whole() {
        fn check<V: Clone + PartialEq + std::fmt::Debug>(old: V, new: V) {
            assert!(Slot::<u64, V>::IN_PLACE, "{}", std::any::type_name::<V>());
            let slab: Slab<u64, V> = Slab::new(16);
            let slot = slab.slot(3);
            // SAFETY: nothing else uses the slab; the slot is filled once.
            unsafe { slot.fill(0, old.clone(), 1, false) };
            // SAFETY: filled above.
            assert_eq!(unsafe { slot.read_value(V::clone) }, old);
            // SAFETY: `IN_PLACE`; the only writer; filled above.
            unsafe { slot.replace_value(new.clone()) };
            // SAFETY: filled above.
            assert_eq!(unsafe { slot.read_value(V::clone) }, new);
            // SAFETY: as above.
            unsafe { slot.with_value(|v| assert_eq!(v, &new)) };
        }
        #[derive(Clone, PartialEq, Debug)]
        #[repr(C, align(8))]
        struct Padded(u16, u8);
        #[derive(Clone, PartialEq, Debug)]
        struct Unit;
        assert_eq!(Slot::<u64, u64>::IN_PLACE, in_place::SUPPORTED);
        if !in_place::SUPPORTED {
            return;
        }
        check(1u64, u64::MAX);
        check(-1i64, i64::MIN);
        check(1.5f64, f64::NEG_INFINITY);
        check(7u32, 0xdead_beef);
        check('a', char::MAX);
        check(0x1234u16, 0xfedc);
        check(1u8, 255);
        check(false, true);
        check(None, std::num::NonZeroU64::new(5));
        check(Some(&1u8), None::<&'static u8>);
        check(Padded(1, 2), Padded(0xffff, 0xff));
        check((), ());
        check(Unit, Unit);
        // Anything that drops, spans more than a word or may straddle one is written into a
        // fresh slot.
        const {
            assert!(!Slot::<u64, String>::IN_PLACE);
            assert!(!Slot::<u64, Box<u64>>::IN_PLACE);
            assert!(!Slot::<u64, u128>::IN_PLACE);
            assert!(!Slot::<u64, [u8; 8]>::IN_PLACE);
            assert!(!Slot::<u64, (u32, u32)>::IN_PLACE);
            assert!(!Slot::<u64, &'static str>::IN_PLACE);
        }
    }

    /// A reader copying a value the writer overwrites in place, as fast as both can, never sees
    /// a mix of the two values' bytes (with the write split into two 4-byte moves it did, in
    /// every one of 10 runs).
    #[test]
    fn a_value_overwritten_in_place_is_never_read_torn() {
        if !Slot::<u64, u64>::IN_PLACE {
            return;
        }
        use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
        // Reads of each value the reader must make while the writer writes.
        const READS: u64 = 10_000_000;
        let slab: Slab<u64, u64> = Slab::new(16);
        let slot = slab.slot(3);
        // SAFETY: the slot is filled before the threads start, and dropped with the slab.
        unsafe { slot.fill(0, 0, 1, false) };
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut v = 0u64;
                while !done.load(Relaxed) {
                    v = !v;
                    // SAFETY: `IN_PLACE`; this thread is the only writer; the slot is filled.
                    unsafe { slot.replace_value(v) };
                }
            });
            s.spawn(|| {
                let (mut seen, mut torn) = ([0u64; 2], None);
                while torn.is_none() && (seen[0] < READS || seen[1] < READS) {
                    // SAFETY: filled before the threads started.
                    let v = unsafe { slot.read_value(u64::clone) };
                    if v != 0 && v != u64::MAX {
                        torn = Some(v);
                    }
                    seen[usize::from(v != 0)] += 1;
                }
                done.store(true, Relaxed);
                assert_eq!(torn, None, "torn");
            });
        });
    }

    #[test]
    fn retiring_a_slot_keeps_its_timed_flag() {
        let slab: Slab<u64, u64> = Slab::new(16);
        let slot = slab.slot(0);
        for timed in [false, true] {
            for state in [SMALL, MAIN] {
                // SAFETY: nothing else uses the slab; a `u64` entry needs no drop.
                unsafe { slot.fill(1, 1, 1, timed) };
                slot.set_state(state);
                slot.retire();
                assert_eq!((slot.state(), slot.timed()), (RETIRED, timed));
                assert_eq!(slot.state.load(Ordering::Relaxed) & !(QUEUE | TIMED), 0);
            }
        }
    }

    #[test]
    fn segments_double_and_indices_map_onto_them() {
        let slab: Slab<u64, u64> = Slab::new(16);
        assert_eq!(slab.first_bits, 4);
        assert_eq!(slab.locate(0), (0, 0));
        assert_eq!(slab.locate(15), (0, 15));
        assert_eq!(slab.locate(16), (1, 0));
        assert_eq!(slab.locate(31), (1, 15));
        assert_eq!(slab.locate(32), (2, 0));
        assert_eq!(slab.locate(63), (2, 31));
        assert_eq!(slab.locate(u32::MAX), (28, (1 << 31) - 1));
        assert_eq!(slab.segments(), 29);
        assert_eq!(
            slab.allocated(),
            16,
            "the first segment comes with the slab"
        );
        assert!(slab.get(16).is_none());
        for idx in [0, 15, 16, 40, 100] {
            slab.ensure(idx);
            assert!(slab.get(idx).is_some());
        }
        assert_eq!(slab.allocated(), 128);
        assert_eq!(slab.slots().count(), 128);
    }

    #[test]
    fn deadlines_appear_with_the_first_one_and_cover_later_segments() {
        let slab: Slab<u64, u64> = Slab::new(16);
        // Segments allocated before the first deadline get theirs with it, later ones at once.
        slab.ensure(20);
        assert!(!slab.has_deadlines());
        assert_eq!(slab.deadline(3), 0);
        slab.set_deadline(3, 9);
        assert!(slab.has_deadlines());
        assert_eq!((slab.deadline(3), slab.deadline(20)), (9, 0));
        slab.set_deadline(20, 5);
        assert_eq!(slab.deadline(20), 5);
        slab.ensure(40);
        slab.set_deadline(40, 7);
        assert_eq!(slab.deadline(40), 7);
    }

    #[test]
    fn a_reused_slot_starts_with_no_hits_and_no_deadline_flag() {
        let slab: Slab<u64, u64> = Slab::new(16);
        let slot = slab.slot(3);
        // SAFETY: a fresh slot of a slab nothing else can reach.
        unsafe { slot.fill(1, 1, 1, true) };
        slot.freq.store(3, Ordering::Relaxed);
        // SAFETY: filled above; nothing else can reach it.
        unsafe { slot.clear() };
        // SAFETY: cleared above.
        unsafe { slot.fill(2, 2, 1, false) };
        assert_eq!(slot.freq.load(Ordering::Relaxed), 0);
        assert!(!slot.timed());
    }

    #[test]
    fn filled_slots_are_dropped_with_the_slab() {
        let value = std::sync::Arc::new(());
        {
            let slab: Slab<u64, std::sync::Arc<()>> = Slab::new(16);
            // In the first segment and in later ones; linked and retired.
            (0..=100).for_each(|idx| slab.ensure(idx));
            for idx in [0, 20, 100] {
                let slot = slab.slot(idx);
                // SAFETY: a fresh slot of a slab nothing else can reach.
                unsafe { slot.fill(idx.into(), value.clone(), 1, false) };
                slot.set_state(if idx == 20 { RETIRED } else { MAIN });
            }
            assert_eq!(std::sync::Arc::strong_count(&value), 4);
        }
        assert_eq!(std::sync::Arc::strong_count(&value), 1);
    }
}
