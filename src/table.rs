//! A shard's index: an open-addressing table of `u32` buckets that readers probe without a lock
//! while the shard's writer changes it.
//!
//! A bucket holds a slot index and a tag (the top bits of the key's hash, never zero) packed in
//! one `u32`, so a probe reads one cache line of buckets and touches a slot only when the tag
//! matches. For a reader, one `xor` with the key's tagged word and one comparison tell a live
//! bucket with this key's tag from everything else (empty and tombstone buckets have tag zero)
//! and give its slot; it looks at the home bucket and the next one together ([`Probe::find`]).
//! Linear probing; removal leaves a tombstone, so a probe never stops early at a bucket that
//! used to be in its way, except at the end of a run, where no probe needs to pass (see
//! [`Table::remove`]). Every change is a single atomic store, so a reader sees each bucket either
//! before or after it: a key that stays present is always found. Tombstones are reused by later inserts, and when
//! live buckets and tombstones fill three quarters of the table the writer builds a new one,
//! publishes it, and retires the old one (readers still probing it see a consistent earlier
//! state; see `reclaim.rs`).

#![allow(unsafe_code)]

use crate::sync::{AtomicU32, AtomicUsize, Ordering};

/// A bucket that never held an entry.
const EMPTY: u32 = 0;
/// Buckets the writer's probe reads at a time.
const GROUP: usize = 4;
/// A bucket whose entry was removed (tag zero, so it matches no key).
const TOMBSTONE: u32 = 1;
/// Buckets in a line: the table is an array of 64-byte lines.
const LINE: usize = 16;
/// The smallest table.
pub(crate) const MIN_BUCKETS: usize = LINE;
/// The low bits of a [`Probe`] word that hold `log2` of the bucket count.
const LOG2_MASK: usize = 63;

/// Sixteen buckets, one cache line, aligned so that a pointer to the first line has its low six
/// bits free.
#[repr(align(64))]
struct Line([AtomicU32; LINE]);

/// A table of `2^n` buckets, `n >= 4`, able to name slots below twice that.
pub(crate) struct Table {
    lines: Box<[Line]>,
    /// `log2` of the bucket count.
    log2: u32,
    /// [`max_used`](Self::max_used), worked out once: every insert compares with it (four
    /// instructions less a write, issue 17).
    max_used: usize,
    /// The bits of a bucket that hold the slot index (`index_mask(log2)`), and the bucket count
    /// less one: what every writer's probe masks with, worked out once (three instructions
    /// less an absent purge, issue 17).
    index_mask: u32,
    mask: usize,
    /// `index_mask + 1`, the tag's lowest bit, which every tag has (see [`tagged`]): kept, so
    /// that a writer's tag is an `and` and an `or` (issue 17).
    tag_bit: u32,
}

/// The most slots a table can name: the tag keeps at least one bit.
pub(crate) const MAX_SLOTS: usize = 1 << 31;

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("buckets", &self.buckets())
            .finish_non_exhaustive()
    }
}

/// The bits of a bucket that hold the slot index, in a table of `2^log2` buckets (`log2 <= 30`):
/// it names slots below twice the bucket count; the bits above are the tag (at least one).
#[inline]
const fn index_mask(log2: u32) -> u32 {
    (2 << log2) - 1
}

/// The most buckets a table has: its slot indices keep one bit for the tag.
const MAX_LOG2: u32 = 30;
/// [`MAX_LOG2`] as a bucket count.
pub(crate) const MAX_BUCKETS: usize = 1 << MAX_LOG2;

// A line is sixteen buckets and nothing else, so the buckets of a table are one contiguous
// array of `AtomicU32` (readers index it directly). Not so under loom, whose atomics are larger.
#[cfg(not(all(test, leasecache_loom)))]
const _: () = assert!(std::mem::size_of::<Line>() == LINE * std::mem::size_of::<u32>());

/// `hash`'s tag in place, over a slot index of zero, in a table whose slot indices are the bits
/// of `index_mask`. The tag is the bits of the hash's upper half above the index, with its lowest
/// bit set so that a live bucket is never `EMPTY` or a `TOMBSTONE` (live buckets are those above
/// `index_mask`). The live bucket of slot `idx` is `tagged(..) | idx`, and a bucket `b` is a live
/// bucket with this tag exactly when `b ^ tagged(..) <= index_mask`, which is then its slot
/// index: one `xor` gives both.
#[inline]
const fn tagged(hash: u64, index_mask: u32) -> u32 {
    ((hash >> 32) as u32 & !index_mask) | (index_mask + 1)
}

/// A writer's group of buckets as three masks (bit `i` for bucket `i`): the buckets that name a
/// slot of `tagged`'s tag (their bits above `index_mask` are the tag's; `tagged` has none below),
/// the empty ones and the tombstones. With SSE2: three compares and three mask extractions, where
/// the scalar version took ~40 instructions.
#[inline(always)]
fn masks(group: &[u32; GROUP], index_mask: u32, tagged: u32) -> (u32, u32, u32) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_and_si128, _mm_castsi128_ps, _mm_cmpeq_epi32, _mm_loadu_si128,
            _mm_movemask_ps, _mm_set1_epi32,
        };
        const { assert!(GROUP == 4) };
        // SAFETY: SSE2 is part of x86-64 (the intrinsics are only unsafe outside a function
        // that enables it), and `group` is four `u32`s, 16 readable bytes (an unaligned load).
        unsafe {
            let v = _mm_loadu_si128(group.as_ptr().cast::<__m128i>());
            let tag = _mm_and_si128(v, _mm_set1_epi32(!index_mask as i32));
            let matches = _mm_cmpeq_epi32(tag, _mm_set1_epi32(tagged as i32));
            let empty = _mm_cmpeq_epi32(v, _mm_set1_epi32(EMPTY as i32));
            let tombstone = _mm_cmpeq_epi32(v, _mm_set1_epi32(TOMBSTONE as i32));
            (
                _mm_movemask_ps(_mm_castsi128_ps(matches)) as u32,
                _mm_movemask_ps(_mm_castsi128_ps(empty)) as u32,
                _mm_movemask_ps(_mm_castsi128_ps(tombstone)) as u32,
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let bits =
            |f: &dyn Fn(u32) -> bool| (0..GROUP).fold(0, |m, i| m | u32::from(f(group[i])) << i);
        (
            bits(&|b| b & !index_mask == tagged),
            bits(&|b| b == EMPTY),
            bits(&|b| b == TOMBSTONE),
        )
    }
}

/// What a reader needs of a table, in one word: the address of its first line (64-byte aligned)
/// with `log2` of its bucket count in the six low bits. Readers load it from the shard in one
/// atomic load and reach the bucket without going through the table's header: one dependent
/// load less on every lookup (measured: ~1 ns a hit, 8 % of a `get`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Probe(usize);

impl Probe {
    /// The word to publish for `table`.
    pub(crate) fn of(table: &Table) -> Self {
        let lines = table.lines.as_ptr() as usize;
        debug_assert_eq!(lines & LOG2_MASK, 0);
        Self(lines | table.log2 as usize)
    }

    /// The bucket and slot index of the entry for `hash` that `is_key` accepts.
    ///
    /// The home bucket and the next one are read first and the candidate chosen between them
    /// without a branch. In linear probing at load 1/2 (a table's load after a rebuild; it is
    /// rebuilt at 3/4) 76 % of the keys sit in their home bucket and 90 % in one of the first
    /// two: a branch on "the home bucket matches" goes the other way on a quarter of the hits,
    /// too often to predict, and a hit's time fell from 13.1-13.6 to 10.2-10.6 ns without it
    /// (`get` of 64k cached `u64` keys, one thread; quick_cache 14.9-15.7 in the same runs).
    /// Past those two buckets, one at a time.
    ///
    /// # Safety
    /// `self` is [`Probe::of`] a table that is not freed before this returns: the caller loaded
    /// it inside a read (`ReadGuard`) from the shard that publishes it, or is the writer.
    #[inline(always)]
    pub(crate) unsafe fn find(
        self,
        hash: u64,
        mut is_key: impl FnMut(u32) -> bool,
    ) -> Option<(usize, u32)> {
        let lines = (self.0 & !LOG2_MASK) as *const Line;
        let log2 = (self.0 & LOG2_MASK) as u32;
        let index_mask = index_mask(log2);
        let mask = (index_mask >> 1) as usize;
        let tagged = tagged(hash, index_mask);
        // Acquire pairs with the Release stores in `replace` (and a new table's publication):
        // the slot a bucket names was filled before the bucket was written.
        // SAFETY: `lines` holds `mask + 1` buckets (the caller's contract), and
        // `pos & mask <= mask`.
        let load = |pos: usize| unsafe { Self::bucket(lines, pos & mask) }.load(Ordering::Acquire);
        let home = hash as usize;
        let (first, second) = (load(home), load(home.wrapping_add(1)));
        // A bucket read holding the key is a witness that the key was present then, whatever was
        // read before it, so taking the second bucket needs no look at what the first one holds.
        let (at, idx) = if first ^ tagged <= index_mask {
            (home, first ^ tagged)
        } else {
            (home.wrapping_add(1), second ^ tagged)
        };
        if idx <= index_mask && is_key(idx) {
            return Some((at & mask, idx));
        }
        if first == EMPTY {
            return None;
        }
        // The first bucket was looked at; the probe goes on from the second (looked at again if
        // the first one's tag matched another key's). At most one lap. A key present all along
        // is found before that: its probe runs through live buckets from its home to where it
        // sits, and none of those becomes empty while it is there (see `remove`). So a probe
        // that ends after a lap only misses a key that was absent, or removed, at some point
        // during it.
        let mut pos = home.wrapping_add(1);
        let end = home.wrapping_add(mask + 1);
        while pos != end {
            let bucket = load(pos);
            let idx = bucket ^ tagged;
            if idx <= index_mask {
                if is_key(idx) {
                    return Some((pos & mask, idx));
                }
            } else if bucket == EMPTY {
                return None;
            }
            pos = pos.wrapping_add(1);
        }
        None
    }
}

impl Probe {
    /// Starts loading the line of `hash`'s home bucket into the cache, for a writer about to
    /// take the shard's lock: the miss overlaps the lock's acquisition instead of following it.
    /// A hint only: it reads nothing, so the table may even be replaced meanwhile.
    // Writers prefetch outside loom only (see `Cache::prefetch_for_write`).
    #[cfg_attr(all(test, leasecache_loom), allow(dead_code))]
    #[inline]
    pub(crate) fn prefetch(self, hash: u64) {
        let lines = (self.0 & !LOG2_MASK) as *const Line;
        // The bucket count less one (`index_mask >> 1`, one instruction less).
        let mask = (1usize << (self.0 & LOG2_MASK)) - 1;
        // Not dereferenced: a pointer computed with `wrapping_add` needs no live table.
        prefetch(lines.cast::<u32>().wrapping_add(hash as usize & mask));
    }
}

/// Starts loading the line at `p` into the cache; a hint, which never faults and reads nothing
/// (a no-op off x86-64).
// Writers prefetch outside loom only (see `Cache::prefetch_for_write`).
#[cfg_attr(all(test, leasecache_loom), allow(dead_code))]
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` only hints the cache (it never faults, whatever the address, and
    // reads nothing the program sees); SSE is part of x86-64. (Safe to call from Rust 1.87 on.)
    #[allow(unused_unsafe)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

impl Probe {
    /// Bucket `at` of the table whose first line is `lines`.
    ///
    /// # Safety
    /// `lines` is the first line of a live table of more than `at` buckets.
    #[inline]
    unsafe fn bucket<'a>(lines: *const Line, at: usize) -> &'a AtomicU32 {
        // The buckets are one contiguous array (see the assertion on `Line`'s size).
        #[cfg(not(all(test, leasecache_loom)))]
        // SAFETY: `at` is in bounds of the table's allocation, which is `[Line]` with no padding,
        // i.e. an array of `AtomicU32`; the caller keeps the table alive.
        return unsafe { &*lines.cast::<AtomicU32>().add(at) };
        #[cfg(all(test, leasecache_loom))]
        // SAFETY: as above, by line.
        return unsafe { &(*lines.add(at / LINE)).0[at % LINE] };
    }
}

/// Where the shard publishes its table's [`Probe`].
#[derive(Debug)]
pub(crate) struct Published(AtomicUsize);

impl Published {
    pub(crate) fn new(table: &Table) -> Self {
        Self(AtomicUsize::new(Probe::of(table).0))
    }

    /// The current table, for a read.
    #[inline]
    pub(crate) fn load(&self) -> Probe {
        // Acquire pairs with the Release store in `publish`: the table's buckets are initialized.
        Probe(self.0.load(Ordering::Acquire))
    }

    /// Makes `table` the one readers probe. Writer only.
    pub(crate) fn publish(&self, table: &Table) {
        // Release pairs with the Acquire load in `load`.
        self.0.store(Probe::of(table).0, Ordering::Release);
    }
}

impl Table {
    /// An empty table of `buckets` (a power of two, at least [`MIN_BUCKETS`]) buckets; it can
    /// name slots below `2 * buckets` (at most [`MAX_SLOTS`]).
    pub(crate) fn new(buckets: usize) -> Self {
        debug_assert!(buckets.is_power_of_two());
        let buckets = buckets.clamp(MIN_BUCKETS, 1 << MAX_LOG2);
        Self {
            lines: (0..buckets / LINE)
                .map(|_| Line(std::array::from_fn(|_| AtomicU32::new(EMPTY))))
                .collect(),
            log2: buckets.trailing_zeros(),
            max_used: buckets / 4 * 3,
            index_mask: index_mask(buckets.trailing_zeros()),
            mask: buckets - 1,
            tag_bit: index_mask(buckets.trailing_zeros()) + 1,
        }
    }

    /// The fewest buckets a table needs to name slots below `slots`.
    pub(crate) fn buckets_to_name(slots: usize) -> usize {
        slots.div_ceil(2).next_power_of_two().max(MIN_BUCKETS)
    }

    /// The number of buckets.
    pub(crate) fn buckets(&self) -> usize {
        1 << self.log2
    }

    /// How many buckets (live or tombstones) the writer may use before it builds a new table.
    pub(crate) fn max_used(&self) -> usize {
        self.max_used
    }

    fn index_mask(&self) -> u32 {
        self.index_mask
    }

    /// Whether slot `idx` can be named in this table.
    pub(crate) fn names(&self, idx: u32) -> bool {
        idx <= self.index_mask()
    }

    #[inline]
    fn encode(&self, hash: u64, idx: u32) -> u32 {
        self.tagged(hash) | idx
    }

    /// [`tagged`] in this table, from the masks it keeps.
    #[inline(always)]
    fn tagged(&self, hash: u64) -> u32 {
        ((hash >> 32) as u32 & !self.index_mask) | self.tag_bit
    }

    #[inline]
    fn bucket(&self, pos: usize) -> &AtomicU32 {
        &self.lines[pos / LINE].0[pos % LINE]
    }

    /// [`Probe::find`] on this table: safe for the writer, which owns it (tests use it to check
    /// the readers' probe against the writer's).
    #[cfg(all(test, not(leasecache_loom)))]
    pub(crate) fn find(&self, hash: u64, is_key: impl FnMut(u32) -> bool) -> Option<(usize, u32)> {
        // SAFETY: the probe is of `self`, borrowed for the whole call.
        unsafe { Probe::of(self).find(hash, is_key) }
    }

    /// The entry for `hash` that `is_key` accepts, as [`Probe::find`]; or, if there is none,
    /// where to insert one (the first empty bucket or tombstone of its probe) and whether that
    /// bucket is empty. Writer only: one probe for "replace or insert".
    #[inline]
    pub(crate) fn find_or_vacancy(
        &self,
        hash: u64,
        is_key: impl FnMut(u32) -> bool,
    ) -> Result<(usize, u32), (usize, bool)> {
        self.probe::<true>(hash, is_key)
    }

    /// [`Probe::find`], for the writer (four buckets at a time; see `probe`).
    #[inline]
    pub(crate) fn find_for_writer(
        &self,
        hash: u64,
        is_key: impl FnMut(u32) -> bool,
    ) -> Option<(usize, u32)> {
        self.probe::<false>(hash, is_key).ok()
    }

    /// The writer's probe: buckets are read four at a time and compared without a branch each
    /// (an insert tests its home bucket alone first).
    /// The writer mostly probes for keys that are not there (a fill after a miss, a purge of an
    /// absent key), whose probes vary in length, and a branch per bucket mispredicted about once
    /// a probe: a purge of an absent key spent 9.5 ns in it against hashbrown's 3.6 (its SIMD
    /// group match). With `VACANCY`, it also finds where the key would go (`Err`'s position is
    /// meaningless without it). Always inlined: each writer path (insert, purge, remove) has it
    /// once, and left to the heuristics it became a call with a frame of its own (issue 17).
    #[inline(always)]
    fn probe<const VACANCY: bool>(
        &self,
        hash: u64,
        mut is_key: impl FnMut(u32) -> bool,
    ) -> Result<(usize, u32), (usize, bool)> {
        let index_mask = self.index_mask();
        let tagged = self.tagged(hash);
        let mask = self.mask;
        let home = hash as usize & mask;
        // With `VACANCY` (an insert), the home bucket alone first: a replacing write usually
        // finds its key there, and skips the group's masks and the loop (replace `u64` 309.6 ->
        // 294.6 instructions an operation, issue 17). Not for an empty home bucket, nor in the
        // other probes: whether the home bucket is empty is a coin toss for an absent key, and
        // the branch on it made absent purges slower (1.12 -> 1.34x quick_cache's time) with
        // fewer instructions (171.3 -> 152.8).
        if VACANCY {
            // SAFETY: `home` is masked to the table's buckets, and the caller borrows the table.
            let bucket = unsafe { Probe::bucket(self.lines.as_ptr(), home) };
            // Relaxed: only the writer stores buckets, and it is the caller.
            let idx = bucket.load(Ordering::Relaxed) ^ tagged;
            if idx <= index_mask && is_key(idx) {
                return Ok((home, idx));
            }
        }
        // Groups are aligned (four buckets of one line, one bounds check and no wrapping inside
        // a group: unaligned groups cost ~90 instructions each, and a purge of an absent key
        // ~150 in this probe, against hashbrown's ~40). The home group's buckets before the
        // home bucket are not part of the probe; the probe visits them last if it wraps.
        let mut start = home & !(GROUP - 1);
        // The buckets of the group that are part of the probe: from the home bucket in the
        // first, all of them after (a mask kept from one group to the next, not a shift by a
        // position that is zero after the first: two instructions less a group, issue 17).
        let mut probed = u32::MAX << (home - start);
        let mut vacancy = None;
        // Only the writer stores buckets, and it is the caller: the table cannot change under
        // this probe, and it ends at an empty bucket (there always is one).
        loop {
            // SAFETY: `start` is a multiple of `GROUP` masked to the table's buckets.
            let group = unsafe { self.group(start) };
            let (matches, empty, tombstone) = masks(&group, index_mask, tagged);
            let tombstone = if VACANCY { tombstone } else { 0 };
            let (matches, empty, tombstone) =
                (matches & probed, empty & probed, tombstone & probed);
            // Only buckets before the first empty one are part of the probe.
            let before_empty = (empty & empty.wrapping_neg()).wrapping_sub(1);
            let mut candidates = matches & before_empty;
            while candidates != 0 {
                let i = candidates.trailing_zeros() as usize;
                // Read from the table again, not from `group`: indexing the array by a variable
                // kept it on the stack, a store and a load on every group (issue 17).
                // SAFETY: a bucket of the group, in the table (see `group`).
                let bucket = unsafe { Probe::bucket(self.lines.as_ptr(), start + i) };
                // Relaxed: only the writer stores buckets, and it is the caller.
                let idx = bucket.load(Ordering::Relaxed) ^ tagged;
                if is_key(idx) {
                    return Ok((start + i, idx));
                }
                candidates &= candidates - 1;
            }
            // The first of them is the vacancy (tombstones past the first empty bucket come
            // after it).
            let free = tombstone | empty;
            if VACANCY && vacancy.is_none() && free != 0 {
                let i = free.trailing_zeros() as usize;
                vacancy = Some((start + i, empty >> i & 1 == 1));
            }
            if empty != 0 {
                return Err(vacancy.unwrap_or((0, true)));
            }
            start = (start + GROUP) & mask;
            probed = u32::MAX;
        }
    }

    /// The `GROUP` buckets from `start`, for the writer.
    ///
    /// # Safety
    /// `start` is a multiple of `GROUP` below the bucket count (a multiple of `LINE`, so the
    /// group ends inside the table): unchecked, the bounds check of every group cost four
    /// instructions (issue 17).
    #[inline(always)]
    unsafe fn group(&self, start: usize) -> [u32; GROUP] {
        const { assert!(LINE % GROUP == 0) };
        debug_assert!(start % GROUP == 0 && start < self.buckets());
        // One plain 16-byte read (four atomic loads were four moves and a copy through the
        // stack). No data race: the writer is the only thread that stores buckets, and it is
        // the caller; readers only load them.
        #[cfg(not(all(test, leasecache_loom)))]
        // SAFETY: the buckets are one contiguous array of `AtomicU32` (see `Probe::bucket`), of
        // which `start..start + GROUP` is in bounds (the caller's contract); `AtomicU32` has the
        // size, alignment and bit validity of `u32`; the buckets are not written while this
        // reads them (above).
        return unsafe {
            std::ptr::read(
                self.lines
                    .as_ptr()
                    .cast::<AtomicU32>()
                    .add(start)
                    .cast::<[u32; GROUP]>(),
            )
        };
        // Relaxed: only the writer stores buckets.
        #[cfg(all(test, leasecache_loom))]
        std::array::from_fn(|i| self.bucket(start + i).load(Ordering::Relaxed))
    }

    /// The bucket that names slot `idx`, found by reading every bucket. Writer only: for an entry
    /// whose key no longer hashes to where it was put (see `Shard::drop_unlinked`).
    #[cold]
    pub(crate) fn position_of(&self, idx: u32) -> Option<usize> {
        let index_mask = self.index_mask();
        (0..self.buckets()).find(|&pos| {
            // Relaxed: only the writer stores buckets.
            let bucket = self.bucket(pos).load(Ordering::Relaxed);
            // Live buckets have a tag, which is never zero.
            bucket > index_mask && bucket & index_mask == idx
        })
    }

    /// Adds `idx` for `hash` to a table no reader can see yet (a rebuild's), whose key is not in
    /// it and which has no tombstones.
    pub(crate) fn insert_fresh(&self, hash: u64, idx: u32) {
        debug_assert!(self.names(idx));
        let mask = self.mask;
        let mut pos = hash as usize & mask;
        // Relaxed (here and below): the table's publication orders these stores for readers.
        while self.bucket(pos).load(Ordering::Relaxed) != EMPTY {
            pos = (pos + 1) & mask;
        }
        self.bucket(pos)
            .store(self.encode(hash, idx), Ordering::Relaxed);
    }

    /// Points bucket `pos` (found for `hash`, or its vacancy) at slot `idx`. Writer only.
    #[inline]
    pub(crate) fn replace(&self, pos: usize, hash: u64, idx: u32) {
        debug_assert!(self.names(idx) && pos < self.buckets());
        // Masked rather than bounds-checked: the check cost every write three instructions
        // (issue 17).
        // SAFETY: masked to the table's buckets; `&self` keeps the table alive.
        let bucket = unsafe { Probe::bucket(self.lines.as_ptr(), pos & self.mask) };
        // Release pairs with the Acquire load in `find`.
        bucket.store(self.tagged(hash) | idx, Ordering::Release);
    }

    /// Points live bucket `pos`, which names slot `old`, at slot `idx` instead, keeping its tag.
    /// Writer only. What [`replace`](Self::replace) does for a key already present, from the
    /// bucket rather than the hash: `tagged(..) | old` has no tag bits among the index bits, so
    /// `^ old ^ idx` gives `tagged(..) | idx` without the table's index mask (six instructions
    /// less a replacing write, issue 17).
    #[inline]
    pub(crate) fn repoint(&self, pos: usize, old: u32, idx: u32) {
        debug_assert!(self.names(idx) && pos < self.buckets());
        // SAFETY: masked to the table's buckets; `&self` keeps the table alive.
        let bucket = unsafe { Probe::bucket(self.lines.as_ptr(), pos & self.mask) };
        // Relaxed: only the writer stores buckets, so this reads its own last store.
        let live = bucket.load(Ordering::Relaxed);
        debug_assert!(
            live > self.index_mask && live & self.index_mask == old,
            "bucket {pos} does not name slot {old}"
        );
        // Release pairs with the Acquire load in `find`.
        bucket.store(live ^ old ^ idx, Ordering::Release);
    }

    /// Removes the entry in bucket `pos`. Writer only. Returns how many buckets stopped being
    /// used (live or tombstone): 0 when it leaves a tombstone.
    ///
    /// A bucket followed by an empty one becomes empty rather than a tombstone, and so do the
    /// tombstones right before it, since no probe needs to pass them any more: a key's probe runs
    /// through live buckets from its home to where it sits, so a present key always has a
    /// non-empty bucket after every bucket its probe passes. That holds for readers probing at
    /// the same moment too (they only stop earlier for keys that are not there). Without it,
    /// churn fills a table with tombstones that every miss must probe past.
    pub(crate) fn remove(&self, pos: usize) -> usize {
        let mask = self.mask;
        // Relaxed: only the writer stores buckets.
        if self.bucket((pos + 1) & mask).load(Ordering::Relaxed) != EMPTY {
            // Release (here and below): a reader that sees the removal sees the generation mark
            // the writer stored before it (`Cache::get_or_lease` validates a lock-free miss
            // against the generation).
            self.bucket(pos).store(TOMBSTONE, Ordering::Release);
            return 0;
        }
        self.bucket(pos).store(EMPTY, Ordering::Release);
        let mut freed = 1;
        let mut before = pos.wrapping_sub(1) & mask;
        while self.bucket(before).load(Ordering::Relaxed) == TOMBSTONE {
            self.bucket(before).store(EMPTY, Ordering::Release);
            freed += 1;
            before = before.wrapping_sub(1) & mask;
        }
        freed
    }

    /// The slot index in every live bucket. Writer only.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn live(&self) -> impl Iterator<Item = u32> + '_ {
        let index_mask = self.index_mask();
        self.lines
            .iter()
            .flat_map(|line| line.0.iter())
            .filter_map(move |b| {
                let bucket = b.load(Ordering::Relaxed);
                (bucket > index_mask).then_some(bucket & index_mask)
            })
    }
}

#[cfg(all(test, not(leasecache_loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_masks_and_threshold_a_table_keeps_agree_with_its_size() {
        for log2 in 4..=20 {
            let buckets = 1usize << log2;
            let t = Table::new(buckets);
            assert_eq!(t.buckets(), buckets);
            assert_eq!(t.mask, buckets - 1);
            assert_eq!(t.index_mask(), index_mask(log2));
            assert_eq!(t.max_used(), buckets / 4 * 3);
            for hash in [0, u64::MAX, 0x9e37_79b9_7f4a_7c15, 1 << 63, 1 << 32] {
                assert_eq!(t.tagged(hash), tagged(hash, index_mask(log2)));
            }
            // The probe word's prefetch masks the same way.
            let p = Probe::of(&t);
            assert_eq!((1usize << (p.0 & LOG2_MASK)) - 1, t.mask);
        }
    }

    /// Adds `idx` for `hash` as the writer does: at the vacancy of its probe. Returns whether an
    /// empty bucket was used (rather than a tombstone).
    fn add(t: &Table, hash: u64, idx: u32) -> bool {
        let (pos, empty) = t.find_or_vacancy(hash, |_| false).unwrap_err();
        t.replace(pos, hash, idx);
        empty
    }

    #[test]
    fn finds_what_it_holds_past_tombstones_and_reuses_them() {
        let t = Table::new(16);
        // Four keys with the same home bucket and the same tag.
        for idx in 0..4 {
            assert!(add(&t, 3, idx));
        }
        assert_eq!(t.find(3, |i| i == 2), Some((5, 2)));
        assert_eq!(t.remove(4), 0, "slot 1 leaves a tombstone");
        assert_eq!(
            t.find(3, |i| i == 3),
            Some((6, 3)),
            "a tombstone stops no probe"
        );
        assert_eq!(t.find(3, |i| i == 1), None);
        assert!(!add(&t, 3, 9), "the tombstone is reused");
        assert_eq!(t.find(3, |i| i == 9), Some((4, 9)));
        t.replace(4, 3, 10);
        assert_eq!(t.find(3, |i| i == 10), Some((4, 10)));
        let mut live: Vec<u32> = t.live().collect();
        live.sort_unstable();
        assert_eq!(live, [0, 2, 3, 10]);
    }

    #[test]
    fn a_missing_key_gets_the_first_tombstone_of_its_probe() {
        let t = Table::new(16);
        for idx in 0..4 {
            add(&t, 3, idx); // buckets 3, 4, 5, 6
        }
        assert_eq!(t.find_or_vacancy(3, |i| i == 2), Ok((5, 2)));
        assert_eq!(t.find_or_vacancy(3, |_| false), Err((7, true)));
        t.remove(5);
        t.remove(4);
        assert_eq!(t.find_or_vacancy(3, |_| false), Err((4, false)));
        assert_eq!(
            t.find_or_vacancy(3, |i| i == 3),
            Ok((6, 3)),
            "past the tombstones"
        );
    }

    #[test]
    fn a_probe_starts_at_its_home_bucket_inside_its_group() {
        // The writer reads aligned groups of four buckets; those of the home group before the
        // home bucket are not part of the probe, whatever they hold.
        let t = Table::new(16);
        add(&t, 4, 0); // bucket 4
        add(&t, 4, 1); // bucket 5
        assert_eq!(t.remove(4), 0, "a tombstone at 4, before bucket 5");
        assert_eq!(
            t.find_or_vacancy(5, |_| false),
            Err((6, true)),
            "a key at home 5 is never put at 4, where its readers would not look"
        );
        add(&t, 5 | 1 << 60, 2);
        assert_eq!(t.find_for_writer(5 | 1 << 60, |i| i == 2), Some((6, 2)));
        // A probe that wraps around reaches the home group's first buckets last.
        let full = Table::new(16);
        for idx in 0..15 {
            add(&full, 1, idx); // buckets 1..=15, and 0 is the last empty one
        }
        assert_eq!(full.find_or_vacancy(1, |_| false), Err((0, true)));
        assert_eq!(full.find_for_writer(1, |i| i == 14), Some((15, 14)));
    }

    #[test]
    fn removing_the_end_of_a_run_empties_it_and_the_tombstones_before() {
        let t = Table::new(16);
        for idx in 0..4 {
            add(&t, 3, idx); // buckets 3, 4, 5, 6; 7 is empty
        }
        assert_eq!(t.remove(4), 0);
        assert_eq!(t.remove(5), 0);
        assert_eq!(
            t.remove(6),
            3,
            "6 is followed by an empty bucket: 6, 5 and 4 empty out"
        );
        assert_eq!(t.find_or_vacancy(3, |_| false), Err((4, true)));
        assert_eq!(t.find(3, |i| i == 0), Some((3, 0)));
        assert_eq!(t.remove(3), 1);
        assert_eq!(t.live().count(), 0);
    }

    #[test]
    fn probes_take_any_hash() {
        // Hashes near `u64::MAX` (an identity hasher's `u64::MAX`) must not overflow a probe; the
        // three share a tag and run into each other from bucket 15, wrapping to 0 and 1.
        let t = Table::new(16);
        for (idx, hash) in [u64::MAX, u64::MAX - 16, u64::MAX - 32]
            .into_iter()
            .enumerate()
        {
            let idx = idx as u32;
            assert!(add(&t, hash, idx));
            let at = (15 + idx as usize) % 16;
            assert_eq!(t.find_for_writer(hash, |i| i == idx), Some((at, idx)));
            assert_eq!(t.find(hash, |i| i == idx), Some((at, idx)));
        }
    }

    proptest! {
        /// A live bucket is the tag (the hash's upper bits above the `log2 + 1` index bits, lowest
        /// bit set) over the slot index; the match (`xor` with `tagged`, compared with the index
        /// mask) accepts exactly the buckets of keys with the same tag, yields their slot index,
        /// and never accepts an empty bucket or a tombstone.
        #[test]
        fn a_bucket_matches_its_keys_tagged_word_and_nothing_else(
            log2 in 4u32..=MAX_LOG2,
            hash: u64,
            other: u64,
            idx: u32,
        ) {
            let (bits, mask) = (log2 + 1, index_mask(log2));
            let tag = |h: u64| ((h >> 32) as u32 >> bits) | 1;
            let idx = idx & mask;
            let bucket = (tag(hash) << bits) | idx;
            prop_assert_eq!(tagged(hash, mask) | idx, bucket);
            prop_assert!(bucket > mask, "a live bucket is above the index mask");
            prop_assert_eq!(bucket ^ tagged(hash, mask), idx);
            prop_assert_eq!(bucket ^ tagged(other, mask) <= mask, tag(other) == tag(hash));
            for free in [EMPTY, TOMBSTONE] {
                prop_assert!(free ^ tagged(hash, mask) > mask);
            }
        }

        /// The readers' probe and the writer's agree on any sequence of inserts, replacements and
        /// removals (with tombstones and emptied runs), for present and absent keys.
        #[test]
        fn the_readers_probe_agrees_with_the_writers(
            ops in proptest::collection::vec((0u8..4, 0u64..24), 1..200),
        ) {
            let t = Table::new(16);
            // Keys 0..24 with hashes that crowd a few home buckets and share tags.
            let hash = |k: u64| (k % 5) | ((k % 3) << 40);
            let mut present = std::collections::HashMap::new();
            for (op, k) in ops {
                // A slot index no present key uses (a table of 16 buckets names 32).
                let next = (0..32).find(|i| !present.values().any(|v| v == i)).unwrap();
                let found = t.find_or_vacancy(hash(k), |i| present.get(&k) == Some(&i));
                match (op, found) {
                    (0, Err(_)) if present.len() < 12 => {
                        add(&t, hash(k), next);
                        present.insert(k, next);
                    }
                    (1, Ok((pos, _))) => {
                        t.replace(pos, hash(k), next);
                        present.insert(k, next);
                    }
                    (2, Ok((pos, _))) => {
                        t.remove(pos);
                        present.remove(&k);
                    }
                    (3, Ok((pos, old))) => {
                        t.repoint(pos, old, next);
                        present.insert(k, next);
                    }
                    _ => {}
                }
                for k in 0..24 {
                    let is_key = |i| present.get(&k) == Some(&i);
                    let writer = t.find_for_writer(hash(k), is_key);
                    prop_assert_eq!(t.find(hash(k), is_key), writer);
                    prop_assert_eq!(writer.map(|(_, i)| i), present.get(&k).copied());
                }
            }
        }
    }

    /// Repointing a live bucket at another slot stores what `replace` would for its hash.
    #[test]
    fn repoint_keeps_the_tag() {
        for log2 in [4, 9, 20] {
            let t = Table::new(1 << log2);
            let max = index_mask(log2);
            for (hash, old, idx) in [
                (u64::MAX, 0, max),
                (0x1234_5678_9abc_def0, max, 0),
                (7, 5, 6),
            ] {
                let pos = t.find_or_vacancy(hash, |_| false).unwrap_err().0;
                t.replace(pos, hash, old);
                t.repoint(pos, old, idx);
                assert_eq!(t.bucket(pos).load(Ordering::Relaxed), t.encode(hash, idx));
                assert_eq!(t.find(hash, |i| i == idx).map(|(p, _)| p), Some(pos));
                t.remove(pos);
            }
        }
    }

    #[test]
    fn tags_skip_other_keys_and_wrap_around() {
        let t = Table::new(16);
        let (a, b) = (15u64 | (1 << 62), 15u64);
        add(&t, a, 1);
        add(&t, b, 2);
        let mut asked = Vec::new();
        assert_eq!(
            t.find(b, |i| {
                asked.push(i);
                i == 2
            }),
            Some((0, 2))
        );
        assert_eq!(
            asked,
            [2],
            "the other key's tag differs: its slot is not read"
        );
    }

    #[test]
    fn a_table_names_slots_below_twice_its_buckets_and_the_tag_takes_the_rest() {
        let t = Table::new(16);
        assert!(t.names(31) && !t.names(32));
        assert_eq!(Table::buckets_to_name(32), 16);
        assert_eq!(Table::buckets_to_name(33), 32);
        assert_eq!(Table::buckets_to_name(1), MIN_BUCKETS);
        assert_eq!(
            (index_mask(4), index_mask(20), index_mask(MAX_LOG2)),
            ((1 << 5) - 1, (1 << 21) - 1, (1 << 31) - 1)
        );
        assert_eq!((1usize << MAX_LOG2) * 2, MAX_SLOTS);
        // The largest table keeps one tag bit, always set: the tag then only tells live buckets
        // from the rest.
        let largest = index_mask(MAX_LOG2);
        assert_eq!(tagged(u64::MAX, largest), 1 << 31);
        assert_eq!(tagged(0, largest), 1 << 31);
        // A probe word carries the table's size.
        let big = Table::new(1 << 10);
        let probe = Probe::of(&big);
        assert_eq!(probe.0 & LOG2_MASK, 10);
        add(&big, 7, 1000);
        // SAFETY: `big` lives for the whole call.
        let found = unsafe { probe.find(7, |i| i == 1000) };
        assert_eq!(found, Some((7, 1000)));
    }
}
