//! The window's size, adapted while the cache runs: by a duel between the cache's shards when it
//! has two or more (see [`Duel`]), else by hill climbing on the hit ratio (as Caffeine's W-TinyLFU
//! does; Einziger et al., "Adaptive Software Cache Management", 2018).
//!
//! The duel (set dueling, as CPU caches choose between insertion policies): half the shards run
//! a window a half-step larger than the cache's base window and half a half-step smaller,
//! swapping every epoch; shard 0 compares the two halves' misses over the same epochs, and the
//! base moves a step towards the half that clearly misses less. It replaced the hill climber for
//! sharded caches because a climber compares samples taken at different times: on traces with
//! phases (every real one tried) a change of workload swamped the effect of its own move, and the
//! window walked at random near zero (the window traced on `cloudphysics.keys` at 500 entries:
//! sample hit ratios of 48 %, 2 %, 4 %, 51 %, 41 %, 1 %, ...; the window stayed at 0-15 of 187).
//! Both halves see a phase at once, so it cancels. Measured (`cargo bench --bench hit_ratio`,
//! BENCHMARKS.md): over 21 columns of the four real-like traces and `cloudphysics.keys`, the mean
//! difference from the best of LRU, moka and quick_cache went from -1.49 to -0.32 points (the
//! worst column, `cloudphysics.keys` at 10k entries, from -3.25 to -3.15); the Zipf, scan and loop
//! columns moved by at most 0.25 points. A fixed window of a quarter of the capacity did a little
//! better on the real-like traces (+0.11 on average) and lost up to 5.7 points on Zipf and loops;
//! ARC's rule (grow on a hit in the small queue's ghost, shrink on one in a main-queue ghost)
//! pinned the window near its bound and lost up to 7.6 points on `cloudphysics.keys`.
//!
//! The window is the part of a shard's capacity that the small queue may hold before its head
//! faces admission: a new key waits there, first in first out, and a hit there sends it on to the
//! main queue without admission. A large window favours recency (a key read again soon after its
//! first miss is kept, whatever the sketch says); a window of zero favours frequency (a new key
//! faces admission at once, which wins on stationary skew, scans and loops). Both the duel and
//! the climber start at zero, and drift back to it whenever a larger window shows no clear gain.
//!
//! The duel rests at zero (no larger half, see `DUEL_REST`) only on evidence gathered once the
//! leader's shard has evicted: until the shard is full no window costs anything, so a verdict
//! for a smaller one is noise. Such a verdict, two epochs into the warm-up of a 50k-entry cache,
//! used to hold the generated `kv` trace at a window of zero for its first 32 epochs, half of
//! its 1M accesses (`cargo bench --bench hit_ratio -- --only-files --realish 1000000 --seed 1`:
//! 50.4 % against LRU's 65.6 %; now 64.5 %). What the duel still misses at 20k-50k entries
//! (BENCHMARKS.md, section 2): around a base of 20-30 % the two halves' windows, 3.1 % apart, turn
//! over in about two epochs, about as often as they swap, so the gain of a larger window that
//! fixed windows show (`storage` at 50k: +2.3 points from 25 % to 50 % on 4M accesses) barely
//! reaches the evidence, and the base stays where its first verdicts left it (or steps down).
//! Longer epochs at large windows, or halves further apart, gained on 4M-access traces and lost
//! on 1M-access ones.
//!
//! The duel notices a change of workload by the cache's hit ratio alone: two epochs in a row
//! that hit well below the recent ones end a rest (`Leader::rest_epoch`) and start the duel over
//! from a window of at least 12.5 % (`Leader::workload_changed`). Its halves at a base of zero
//! (0 and 1.56 %) miss alike on a working set that moves on, so without this the window stayed
//! at zero while each move's new keys faced admission against the old keys' counts (`moving` in
//! `benches/traces` at 20k entries: 60.2-60.8 % at two seeds of three, LRU 81.7 %; now
//! 79.3-79.5 %). The epochs before the leader's shard is full are judged too (a change found
//! then counts once it is full): a cache larger than a working set fills when the set moves on,
//! so the fall of a move began as the shard filled, unseen (`moving` at 50k entries: 10-20
//! points behind LRU for the 150k accesses after it).
//!
//! Without admission the queues are meant to be near LRU, but the main queue is a CLOCK whose
//! entries keep up to three hits: after a move of the working set, the old set's hot keys held a
//! 20k-entry cache's main queue for up to three rounds of the hand (`moving`: 2-4 points behind LRU
//! over the second 50k accesses after each move). So an epoch that begins a fall while no shard
//! admits has every shard's main queue forget its entries' hits but one (see
//! [`Climber::take_forget`]).
//!
//! The duel also decides admission (see [`AdmissionDuel`]) where the window has grown to 12.5 % or
//! more and the cache has eight shards or more: one pair of shards in two runs without it (a
//! candidate leaving the small queue goes to the main queue whatever the sketch says) for a block
//! of five epochs, then the other pair; a verdict for no admission takes a whole cycle and two
//! standard deviations (or the first block alone and six, once the bias the pairs showed while they
//! ran alike is taken off), one for admission 1.5 at any epoch, and an epoch whose hit ratio dips
//! (a move of the working set, in which no admission keeps the new keys at once) does not count
//! (see `ADMISSION_DIP`); either verdict holds for a rest of 64-512 epochs, whatever the epochs
//! after it bring (a smaller window, a rest of the window's duel, a cache that stopped hitting).
//! With no admission the queues are a FIFO and a CLOCK, near LRU, which is what `kv` and `db` want
//! at 20k-50k entries. Measured (`cargo bench --bench hit_ratio -- --only-files --realish 1000000
//! ...`, leasecache alone, against the best of LRU, moka and quick_cache): at seed 42 (20 columns
//! with `cloudphysics.keys`) the mean difference went from +0.115 to +0.175 points, 6 columns at or
//! above the best either way, the worst (`cloudphysics.keys` at 5k) not moved; at seed 1 (16
//! columns) +0.079 -> +0.148, 6 -> 8 columns, worst -1.12 -> -0.99; at seed 7 +0.154 -> +0.154,
//! 6 -> 8, worst -0.96 -> -0.86. Seeds 2, 3, 5: +0.038, +0.005, -0.034 on average (single
//! columns -0.63 to +0.81); the 4M-access traces +0.016 (`storage` 50k +1.84, `kv` 5k -0.68). What
//! the tests cost shows in `cdn` at 50k entries: -0.50 to -0.63 at seeds 2, 3, 5 and on 4M
//! accesses. `cloudphysics.keys` at 500-10k entries and the Zipf, scan and loop traces (seeds 42
//! and 7) did not move: their windows stay below 12.5 %, or their shards run none
//! (`Shard::admits`). The miss path (callgrind, `benches/ops.rs` `miss/u64/1t`) went from 919.7 to
//! 922.6 instructions. Even with admission off from the start wherever the window reaches 12.5 %
//! (no test: an oracle for those columns) `kv` and `db` at 50k entries stay behind LRU at seed 42
//! (65.34 and 48.74 against 65.49 and 48.87).
//!
//! In a cache of 1,024 entries or more (several shards, no weigher), miniature simulations of
//! the shards' policy at seven
//! settings (see `minisim.rs`) are asked once an epoch; when one clearly misses less than the
//! setting nearest the cache's own, the base and the admission verdict jump there
//! (`Leader::jump`) and the duel goes on from it. The duel's steps found `shift` and `tenants`
//! at 5k-20k entries their best window late or never (1.1-1.8 points behind a fixed window it could
//! have chosen, BENCHMARKS.md section 2); with the jumps, 0.65-1.53 points more at 5k.
//!
//! The hill climber, for a cache of one shard:
//!
//! Once a sample of lookups: the climber compares the sample's hit ratio with the last one's.
//! - A clear change (more than one standard deviation of the sampling noise): Caffeine's rule. If
//!   the hit ratio rose, the window moves again the same way, else it turns round; the step
//!   decays by 2 % a sample, and starts over at full size when the hit ratio moves by 5 points
//!   (the workload changed).
//! - No clear change: a window costs main-queue capacity for nothing, so it shrinks by a step;
//!   at zero the climber rests (its step becomes zero) until the hit ratio moves by 5 points,
//!   which wakes it with a quarter step up. Probing again every few quiet samples instead cost the
//!   Zipf and scan columns up to 1.4 points (a probe's sample is a sample with less main queue).
//! - Hardly any entry (under 3 %) was read while it waited in the window: it shrinks by a step,
//!   whatever the hit ratio did (scans, which the hit ratio alone mistakes for a change of
//!   workload).
//!
//! Hits are never counted for the policy: the hit path stays a table lookup. The climber reads
//! the cache's per-thread lookup counters (which `Cache::stats` sums too) every 32 new keys of its
//! shard, and ends a sample when the shard's share of the lookups since the last one reaches
//! `max(4,096, a quarter of its expected entries)`. The hit ratio is the whole cache's; every
//! shard climbs on it, and since every shard sees the same traffic they move alike.
//!
//! Measured on `cargo bench --bench hit_ratio` when the climber sized every cache's window
//! (`dda02a4`, BENCHMARKS-HISTORY.md): the generated real-like traces (`--realish`) and
//! `cloudphysics.keys` gained up to 20 points over a window of zero;
//! the Zipf, scan and loop columns move by at most 0.35 points. Tried and dropped: samples of
//! 2-10 entries' worth of lookups (too slow for 1M-access traces at 20k-50k entries), a per-shard
//! hit ratio (the shard's own misses over its share of lookups: too noisy), a dead band of two
//! standard deviations (the window rarely grew), undoing a failed move and halving the step
//! (lost 1-5 points on the real-like traces), restart steps of 12.5 % (0.2 points worse on the
//! real-like traces on average, 0.56 on the 1k scan column), and a bound of 15/16 (changed no
//! column: the window never reaches 3/4 there).

use super::LARGE_SHARD_ENTRIES;
use super::minisim::{MiniSim, Setting};
use crate::sync::{Arc, AtomicBool, AtomicU64, Ordering};
use crossbeam_utils::CachePadded;

/// The most of a shard's capacity the window may take, in sixteenths: 12 (75 %). A larger window
/// leaves the main queue too little to protect the frequent keys the sketch found.
const MAX_WINDOW_SIXTEENTHS: u64 = 12;

/// A step, when the climber starts or starts over, in 256ths of the capacity: 16 (6.25 %, as
/// Caffeine's).
const RESTART_STEP_256THS: u64 = 16;

/// How much a step shrinks after each clear change smaller than `RESTART_CHANGE`.
const STEP_DECAY: f64 = 0.98;

/// A change of the hit ratio between two samples (as a fraction) from which the workload is taken
/// to have changed, and the step starts over.
const RESTART_CHANGE: f64 = 0.05;

/// The hit ratio of the first sample below which the climber starts at rest.
const MIN_FIRST_PROBE_RATIO: f64 = 0.01;

/// Lookups of a shard per sample: a quarter of its expected entries, and at least `MIN_SAMPLE`.
const SAMPLE_PER_ENTRY_QUARTERS: u64 = 1;
const MIN_SAMPLE: u64 = 4_096;

/// Departures from the window per sample from which their reads are judged, and the share of
/// them (in hundredths) that must have been read for the window to earn its place.
const MIN_DEPARTURES: u32 = 16;
const EARNING_PERCENT: u32 = 3;

/// New keys of a shard between two reads of the lookup counters (a read sums every thread's).
const READ_EVERY: u32 = 32;

/// The duel's windows, in 65,536ths of a shard's capacity: the step between the two halves'
/// windows and the base (2 x 1.56 %), the base's move when the evidence is clear (6.25 %), and its
/// bound (the climber's 75 %). Measured on the real-like traces and `cloudphysics.keys`
/// (`cargo bench --bench hit_ratio`): a base step of 3.1 % moved too slowly for 1M-access traces;
/// a half-step of 0.8 % took too long to gather evidence (the mean gap to the best of the others
/// went from -0.07 to -0.17 points, before the rests below), one of 3.1 % cost the Zipf columns
/// more.
const DUEL_DELTA: u64 = 1_024;
const DUEL_STEP: u64 = 4_096;

/// The most steps the base takes at once: a verdict for a larger window that follows another
/// (with no verdict for a smaller one, and no step down, between them) moves the base two steps.
/// On traces whose best window is far from zero, the base crept up a step every few verdicts and
/// stepped back down for want of a clear one in between (`storage` at 50k entries: 6-19 %, where
/// a fixed half of the capacity hit 2 points more), while on traces with no window to gain it
/// never sees two verdicts for a larger one in a row. Measured (`cargo bench --bench hit_ratio`):
/// the real-like columns gained 0.05-0.16 points on average over four seeds of the traces (worst
/// column -2.06 -> -1.35 points behind the best of LRU, moka and quick_cache at seed 42);
/// `cloudphysics.keys` and the Zipf, scan and loop columns moved by at most 0.04. A fixed step of
/// twice the size gained more on the real-like traces (0.2-0.37) and lost 0.15 on average on
/// `cloudphysics.keys` (0.44 at 10k entries) and up to 0.25 on Zipf; a streak of up to four
/// steps, less than two.
const DUEL_MAX_STREAK: u32 = 2;
const DUEL_MAX_BASE: u64 = 65_536 / 16 * MAX_WINDOW_SIXTEENTHS;

/// The hit ratio of an epoch below which the duel stops, the window at zero, until one hits more:
/// 0.2 %. It starts that way too, until the first epoch's hits. On a stream of keys never seen
/// again (`benches/ops.rs`'s miss path) a window, even for the first epoch, left the small queue
/// holding entries for good, so that a new key joined it and evicted its head instead of being
/// refused before it was published: 1.2-2x the time of the miss path. At 1 % (the climber's
/// `MIN_FIRST_PROBE_RATIO`) `cloudphysics.keys` at 500 entries, whose quiet phases hit 1-2 %, lost
/// 0.6 points.
const DUEL_MIN_RATIO: f64 = 0.002;

/// A duel's epoch, in lookups of a shard: a quarter of its expected entries and at least 2,048,
/// half the climber's least sample, since both halves see the same traffic at once and need not
/// wait out a change of workload.
const DUEL_EPOCH: u64 = 2_048;

/// How clear the evidence must be for the base to move, in standard deviations of the
/// accumulated difference of misses: 2. Moving on every epoch's sign let the base wander on Zipf
/// (1-4 points lost at 1k-10k entries); moving only on one epoch's clear change rarely moved it.
const DUEL_BOUND: f64 = 2.0;

/// How clear the evidence must be, in a duel between large shards (`LARGE_SHARD_ENTRIES` or
/// more), for the base to leave zero: 4 standard deviations. There a window of zero is the
/// probation pool while returns are rare (see `Shard::pool`), and a base above zero turns it off
/// in both halves, so a verdict for it costs more than a step: on Zipf s = 0.9 at 100k entries
/// (`--seed 7`) one taken during the fill, and on Zipf with scans at 100k one taken just before a
/// scan, left the pool off for good (-1.09 and -0.64 points). For the same reason such a duel
/// takes no verdict, and keeps no evidence, before the leader's shard is full. At 3 deviations
/// the first of those lost 0.30. The bound applies whether returns are rare or not, and with
/// `DUEL_PATIENCE` a lead of a few percent no longer leaves zero in large shards (it does in
/// small ones).
const LARGE_LEAVE_BOUND: f64 = 4.0;

/// Shards that duel over the window. Half of a cache's shards run a window a step larger than the
/// cache's base window, half a step smaller, and every epoch they swap. Since hashing spreads the
/// same traffic over both halves at the same time, a change of workload hits both alike, which
/// the hit-ratio climber (one window at a time, samples compared across time) cannot tell from the
/// effect of its own move: on traces with phases it walked at random. The leader (shard 0)
/// compares the halves' misses (new keys, counted by each shard's writer: hits are never counted)
/// over each epoch; two epochs together cancel any bias between the halves (one may hold hotter
/// keys); the evidence accumulates until it clearly favours one side, and the base moves a step
/// that way.
#[derive(Debug)]
pub(crate) struct Duel {
    /// Every shard's new keys and ghost hits so far, each written only by its shard's writer.
    new_keys: Box<[CachePadded<ShardCounts>]>,
    /// The cache's ghost hits per `period` new keys (see [`Climber::cache_returns`]), as last
    /// counted by the leader, plus one (zero: not counted yet).
    returns: AtomicU64,
    /// The duel's state, written by the leader: the epoch (bits 32-63), the count of forgets
    /// (bits 19-31, see [`Climber::take_forget`]), the admission flags
    /// `ADMISSION_OFF` (bit 18) and `ADMISSION_TEST` (bit 17), `RESTING` (bit 16), and the base
    /// window in 65,536ths of a shard's capacity (bits 0-15, at most `DUEL_MAX_BASE`).
    state: AtomicU64,
    /// The miniature simulations that let the leader's base jump (see `minisim.rs`), if the
    /// cache runs them; fed by whichever writer takes the lock (see [`Climber::feed_models`]).
    sim: Option<parking_lot::Mutex<MiniSim>>,
    /// Whether the leader's last epoch hit at least `DUEL_MIN_RATIO`: until then nothing feeds
    /// the simulations (a stream of keys never seen again, `benches/ops.rs`'s miss path, would
    /// pay for models that miss everything too).
    hitting: AtomicBool,
}

impl Duel {
    /// A duel between `shards` shards (none happens with one).
    #[cfg(test)]
    pub(crate) fn new(shards: usize) -> Arc<Self> {
        Self::with_sim(shards, None)
    }

    /// A duel between `shards` shards, with the miniature simulations `sim` if any.
    pub(crate) fn with_sim(shards: usize, sim: Option<MiniSim>) -> Arc<Self> {
        Arc::new(Self {
            sim: sim.map(parking_lot::Mutex::new),
            hitting: AtomicBool::new(false),
            new_keys: (0..shards)
                .map(|_| {
                    CachePadded::new(ShardCounts {
                        new_keys: AtomicU64::new(0),
                        ghost_hits: AtomicU64::new(0),
                    })
                })
                .collect(),
            returns: AtomicU64::new(0),
            // At rest with no window until an epoch shows hits (see `DUEL_MIN_RATIO`).
            state: AtomicU64::new(RESTING),
        })
    }
}

/// A shard's counts in a [`Duel`]: in one cache line, which its writer stores to on every new
/// key anyway.
#[derive(Debug)]
struct ShardCounts {
    new_keys: AtomicU64,
    ghost_hits: AtomicU64,
}

/// What [`Climber::cache_returns`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CacheReturns {
    /// The cache has one shard: the shard's own rate is the cache's.
    Alone,
    /// Not time to take the cache's rate yet (or the leader has not counted it yet).
    Unchanged,
    /// The cache's ghost hits per period of new keys.
    Rate(u32),
}

/// The leader's record of a duel.
#[derive(Debug, Default)]
struct Leader {
    /// Every shard's new keys when the epoch began.
    epoch_start: Vec<u64>,
    /// The evidence on the window: the larger-window half's misses against the smaller's.
    evidence: Evidence,
    /// The duel over admission (see [`AdmissionDuel`]).
    admission: AdmissionDuel,
    /// Epochs left to rest (no duel: every shard runs the base window), and the last rest's
    /// length.
    rest: u32,
    backoff: u32,
    /// Epochs in a row at a base of zero without a verdict.
    unclear: u32,
    /// The hit ratio of the recent epochs, as a moving average that, before the leader's shard
    /// is full, also follows each rise at once (`None` until the first epoch judged; an
    /// admission test's epochs that dip are judged against it too, see [`dipped`](Self::dipped));
    /// the epochs in a row that hit `CHANGE_DROP` less (both see
    /// [`workload_changed`](Self::workload_changed)), and during a rest those that hit
    /// `DUEL_WAKE_DROP` less (see [`rest_epoch`](Self::rest_epoch)).
    recent: Option<f64>,
    falling: u32,
    rest_low: u32,
    /// A change of workload found before the leader's shard was full, for the first epoch after
    /// (see [`workload_changed`](Self::workload_changed)); and whether an epoch of a full shard
    /// was judged since the last epoch of a shard not full.
    change_at_fill: bool,
    judged_full: bool,
    /// Epochs that began a fall (the first of `falling`) while no shard admitted (see
    /// [`Climber::take_forget`]), counted modulo `FORGETS_MASK + 1`.
    forgets: u64,
    /// Whether an epoch has shown hits, so that the duel began.
    started: bool,
    /// Verdicts for a larger window in a row, up to `DUEL_MAX_STREAK`: the next such verdict's
    /// steps.
    streak: u32,
    /// The simulations' epochs when they were last asked (see [`ask`](Self::ask)).
    asked: u64,
}

impl Leader {
    /// What the miniature simulations suggest for a cache at `current` (see `MiniSim::suggest`):
    /// asked only once they have run an epoch since they were last asked (stopped, or slower than
    /// the duel, they would suggest the same jump again on the same evidence), and never for no
    /// admission in a cache with fewer than `ADMISSION_MIN_SHARDS` shards (where the duel never
    /// tests it).
    fn ask(&mut self, duel: &Duel, current: Setting) -> Option<Setting> {
        let sim = duel.sim.as_ref()?.try_lock()?;
        if sim.epochs() == self.asked {
            return None;
        }
        self.asked = sim.epochs();
        let setting = sim.suggest(current)?;
        (setting.admits || duel.new_keys.len() >= ADMISSION_MIN_SHARDS).then_some(setting)
    }

    /// Moves the base to the window of `setting`, whose model missed clearly less than the one
    /// nearest the cache's setting (see `minisim.rs`), and the admission verdict to its own if it
    /// differs (for the first rest); the duel starts over from there: any evidence, rest or
    /// admission test in progress is dropped. Returns the next epoch's base and admission flag.
    fn jump(&mut self, setting: Setting) -> u64 {
        let admission = &mut self.admission;
        if setting.admits == admission.rests_off() {
            admission.backoff = ADMISSION_REST.0;
            (admission.off, admission.rest) = (!setting.admits, ADMISSION_REST.0);
        }
        (admission.epochs, admission.sum, admission.variance) = (0, 0.0, 0.0);
        admission.counted_misses = 0.0;
        self.evidence = Evidence::default();
        (self.rest, self.unclear, self.streak) = (0, 0, 0);
        // A jump needs an epoch that hit: the duel has begun.
        self.started = true;
        let mut base = setting.window.min(DUEL_MAX_BASE);
        if !setting.admits {
            base = base.max(ADMISSION_MIN_BASE);
        }
        let off = if admission.rests_off() {
            ADMISSION_OFF
        } else {
            0
        };
        off | base
    }

    /// Ends an epoch of a rest: one epoch less to rest, or none if the workload changed. A rest is
    /// for a trace on which no window pays, and lasts 32-512 epochs whatever the trace does
    /// meanwhile; a trace whose working set moves on then misses each new one until its keys
    /// outcount the old ones in the sketch, where a window (and, once the window is large enough,
    /// no admission) keeps them at once. So a rest ends when two epochs in a row hit
    /// `DUEL_WAKE_DROP` less than the moving average of the epochs before (counted by
    /// [`workload_changed`](Self::workload_changed); the first low epoch weighs in, so the fall
    /// must be of 8.75 points or more; a change of workload, a larger fall, ends a rest too), and
    /// the duel starts over from its base of zero (the rests' backoff is kept).
    ///
    /// Found on a generated trace whose Zipf working set of 30k keys moves to 70 % fresh keys
    /// every 150k accesses (`moving` in `benches/traces`; BENCHMARKS.md, section 2): a rest that
    /// began at the fill held a 20k-entry cache at no window for 32 epochs, four moves, each of
    /// which cost it 25-40 points for the rest of its phase (60.18 % and 60.81 % at seeds 1 and
    /// 7, LRU 81.7 %); woken, the duel found a larger window within about 7 epochs and no
    /// admission 7 later (68.80 % and 67.56 %; the rule of `CHANGE_DROP` does the rest).
    fn rest_epoch(&mut self) {
        self.evidence.last_difference = None;
        self.rest = if self.rest_low >= DUEL_WAKE_EPOCHS {
            0
        } else {
            self.rest - 1
        };
        if self.rest == 0 {
            self.rest_low = 0;
        }
    }

    /// Whether the workload changed, judged at the end of an epoch that hit `ratio` (during a
    /// rest it also counts the smaller falls that end it, see
    /// [`rest_epoch`](Self::rest_epoch)): the second epoch in a row that hit `CHANGE_DROP` less
    /// than the moving average of the epochs before it (each weighing `CHANGE_WEIGHT`, the first
    /// low epoch among them, so a fall that stays must be of 12.5 points or more). The average then
    /// starts over from `ratio`, so a workload that stays lower is not a change again. The duel
    /// starts over from a base of at least `CHANGE_BASE`, its evidence and streak forgotten; an
    /// admission verdict keeps its rest (starting the admission duel over too cost up to 0.44
    /// points on the 4M-access `moving` trace and found nothing elsewhere). A fall to a hit ratio
    /// near zero (above `DUEL_MIN_RATIO`) counts too: ignoring falls to less than half the average
    /// cost `cloudphysics.keys` at 500 entries 0.44 points, whose phases fall that far.
    ///
    /// Why: at a base of zero the duel's halves run windows of 0 and 1.56 %, which on a working
    /// set that moves on (`moving` in `benches/traces`: 70 % of a 30k-key Zipf set replaced every
    /// 150k accesses) miss alike, so no verdict comes while each move's new keys face TinyLFU
    /// admission against the old keys' counts; it took the duel 20-30 epochs to climb to the
    /// 12.5 % where the admission duel may turn admission off (a 20k-entry cache: 67.6-68.8 %
    /// at seeds 1 and 7, LRU 81.7 %). Started over from 12.5 %, the duels find the new
    /// workload's window, and admission once the admission duel tests again, within a phase
    /// there (79.3-79.5 %), and go back down where the evidence says so. A drop that stays is
    /// rare on stationary traces, whose epochs differ by tenths of a point.
    ///
    /// Before the leader's shard is full (`full` false) the epochs are judged too, but a change
    /// found then waits for the first epoch of a full shard, and the reference follows the hit
    /// ratio up rather than averaging it (a cold cache's hit ratio climbs, and an average would
    /// trail the climb). A cache larger than a working set fills when the workload moves on:
    /// the keys of the new set no longer fit beside the old. So the fall that a move brings
    /// begins as the shard fills, or an epoch before, and was not seen while only a full
    /// shard's epochs were judged: on `moving` (and `shift` of `benches/traces/shapes.py`) at
    /// 50k entries, where the working set is 30k keys, the duel stayed at a base of zero with
    /// admission on through the whole next phase, 10-20 points behind LRU for 150k accesses.
    /// At the first epoch of a full shard with no fall under way the reference starts over
    /// from that epoch, as before: carried over from the climb, it delayed by an epoch the
    /// change at the next move of a cache that filled within the first phase (`moving` at 20k
    /// entries, `--seed 2`: -0.42 points). Measured (BENCHMARKS.md section 2, 308 columns):
    /// `moving` at 50k +1.29 to +4.54 points at five seeds of six (-0.40 at the sixth), `shift`
    /// at 50k +1.76 and +1.66; lower by more than 0.1 only `oltp` at 50k (-0.48, seed 7),
    /// `multi` at 50k (-0.33, seed 11) and `moving` at 50k on 4M accesses (-0.12).
    fn workload_changed(&mut self, ratio: f64, full: bool) -> bool {
        if !full {
            self.judged_full = false;
            if let Some(recent) = self.recent {
                self.recent = Some(recent.max(ratio));
            }
            let changed = self.judge_fall(ratio);
            self.change_at_fill |= changed;
            return false;
        }
        if !self.judged_full {
            self.judged_full = true;
            if self.falling == 0 {
                self.recent = None;
            }
        }
        // Taken first: a held change and one found now are the same change.
        let held = std::mem::take(&mut self.change_at_fill);
        self.judge_fall(ratio) || held
    }

    /// Whether an epoch of an admission test that hit `ratio` over `lookups`, its pairs of shards
    /// without admission missing `off` times and the others `on`, dipped more than
    /// `ADMISSION_DIP` below the recent epochs (the reference of
    /// [`workload_changed`](Self::workload_changed), before it counts this epoch). The test's own
    /// cost is not a dip: the misses the tested pairs (those that do not run as the last verdict
    /// says) made beyond the others' are taken off. (A gain is not added: it raises the hit
    /// ratio, so it hides no dip, only makes one smaller.)
    fn dipped(&self, ratio: f64, off: f64, on: f64, lookups: f64) -> bool {
        let (tested, unchanged) = if self.admission.off {
            (on, off)
        } else {
            (off, on)
        };
        let before = ratio + (tested - unchanged).max(0.0) / lookups;
        self.recent
            .is_some_and(|recent| before + ADMISSION_DIP < recent)
    }

    /// [`workload_changed`](Self::workload_changed)'s rule on one epoch that hit `ratio`.
    fn judge_fall(&mut self, ratio: f64) -> bool {
        let Some(recent) = self.recent else {
            self.recent = Some(ratio);
            return false;
        };
        let fell = |drop: f64| ratio >= DUEL_MIN_RATIO && ratio + drop < recent;
        self.falling = if fell(CHANGE_DROP) {
            self.falling + 1
        } else {
            0
        };
        self.rest_low = if self.rest > 0 && fell(DUEL_WAKE_DROP) {
            self.rest_low + 1
        } else {
            0
        };
        if self.falling >= CHANGE_EPOCHS {
            (self.recent, self.falling) = (Some(ratio), 0);
            return true;
        }
        self.recent = Some(recent + CHANGE_WEIGHT * (ratio - recent));
        false
    }
}

/// How far the hit ratio must fall below the recent epochs' moving average, and for how many
/// epochs in a row, to end a rest (see [`Leader::rest_epoch`]): 7 points, two epochs. First
/// measured against the rest's own average (`cargo bench
/// --bench hit_ratio`, the real-like traces at seeds 42, 1, 7 and 4M accesses, the generated Zipf,
/// scan and loop traces at seeds 42 and 7, and seven generated traces of other shapes at two
/// seeds, BENCHMARKS.md section 2; before the rule of `CHANGE_DROP`): only the moving working
/// sets moved by more than 0.11 points (`moving` at 1k -0.46 at seed 1). Against the best epoch
/// of the rest rather than its average, or after one epoch, it woke on the scans of the Zipf
/// trace at 1k entries (-0.36 to -0.88 points there); 10 points missed the moves at 5k entries.
/// Then moved onto the moving average the change rule keeps (one reference, not two): every
/// column within 0.03 points of the rest's own average but `oltp` at 1k, seed 11, -0.12.
const DUEL_WAKE_DROP: f64 = 0.07;
const DUEL_WAKE_EPOCHS: u32 = 2;

/// A change of workload (see [`Leader::workload_changed`]): two epochs in a row that hit 10 points
/// less than the moving average of the epochs before, each weighing a fifth. Measured (the same
/// traces as `DUEL_WAKE_DROP`, BENCHMARKS.md section 2; against the rest's wake alone): the
/// `moving` columns at 20k entries +2.1, +10.7 and +11.7 points at seeds 42, 1, 7, at 50k +2.5,
/// +0.2 and 0, at 5k +2.8, +0.5, +4.1; `cloudphysics.keys` at 500 entries +0.44; no column of any
/// trace lower by more than 0.13 (`moving` at 5k with 4M accesses) but the range scans of
/// `benches/traces/shapes.py`'s `oltp`, which sometimes fall as far for two epochs (-0.15 to -0.78
/// at 1k-20k entries, against `b840014`). A fall of 7 points gained a little more on `moving` and
/// cost up to 0.36 elsewhere; weights of a tenth and of a third did as well as a fifth or a little
/// worse. Without the rest's own wake (a smaller fall, against the rest's average) the 5k-entry
/// `shift` column lost 1.3 points.
const CHANGE_DROP: f64 = 0.10;
const CHANGE_EPOCHS: u32 = 2;
const CHANGE_WEIGHT: f64 = 0.2;

/// The base the duel starts over from after a change of workload: the least at which it also
/// tests admission (`ADMISSION_MIN_BASE`). From 6.25 % the `moving` columns gained a little
/// less, and `shift` at 5k lost 0.85.
const CHANGE_BASE: u64 = ADMISSION_MIN_BASE;

/// Epochs in a row without a verdict after which, at a base of zero, the duel rests: a window
/// that shows no clear gain costs main-queue capacity for nothing. Without it the Zipf columns
/// lost up to 1.2 points (no verdict ever came, and the larger half's window cost hits); 24
/// epochs lost 0.1 more on the Zipf columns, and gained 0.08 on the real-like ones.
const DUEL_PATIENCE: u32 = 16;

/// Epochs in a row without a verdict after which a base above zero steps down. A window that
/// some verdict found worth its cost is kept longer than no window waits for one: with the base
/// stepping down after `DUEL_PATIENCE` epochs too, the window traced on the real-like traces was
/// a sawtooth (up in two or three verdicts, then a step down every 16 quiet epochs, back to zero,
/// and up again), and spent much of each trace below where it had been found to pay: the duel
/// finds a window at +-1.56 % resolution, where the gain of the last few percent is rarely
/// clear. Measured (`cargo bench --bench hit_ratio`): the real-like columns gained 0.12-0.22
/// points on average over four seeds of the traces (at seed 42 the mean difference from the best
/// of LRU, moka and quick_cache went from -0.14 to +0.08 points, the worst column from -1.35 to
/// -1.14); `cloudphysics.keys` did not move; the Zipf, scan and loop columns moved by at most
/// 0.16 at seed 42 and 0.09 at seed 7. 32 epochs gained two thirds as much; never stepping down
/// cost Zipf s = 1.0 at 10k entries 0.65 points.
const DUEL_WINDOW_PATIENCE: u32 = 64;

/// The first and the longest rest, in epochs; each rest doubles the last (a verdict for a larger
/// window starts over). 16-256 left Zipf s = 1.0 at 10k entries 0.41 points behind the policy
/// before the duel; 32-512, 0.25.
const DUEL_REST: (u32, u32) = (32, 512);

/// The duel's state's flag for a rest.
const RESTING: u64 = 1 << 16;

/// The duel's state's flags for admission: a test (half the shards run without admission, the
/// pair of shards in two that `ADMISSION_OFF` names), or, when not testing, `ADMISSION_OFF`:
/// every shard runs without it (the last verdict).
const ADMISSION_TEST: u64 = 1 << 17;
const ADMISSION_OFF: u64 = 1 << 18;

/// Where the duel's state counts the leader's forgets (see [`Climber::take_forget`]): bits 19-31,
/// so that a shard that reads the state only every few epochs still sees that one happened.
const FORGETS_SHIFT: u32 = 19;
const FORGETS_MASK: u64 = (1 << 13) - 1;

// The count sits between the flags and the epoch.
const _: () =
    assert!(ADMISSION_OFF < 1 << FORGETS_SHIFT && (FORGETS_MASK << FORGETS_SHIFT) >> 32 == 0);

/// Whether the duel's `state` has every shard run without admission: a verdict for no admission,
/// not a test (whose other half admits).
fn no_shard_admits(state: u64) -> bool {
    state & (ADMISSION_TEST | ADMISSION_OFF) == ADMISSION_OFF
}

// The base window (bits 0-15 of the state) stays below the flags.
const _: () = assert!(DUEL_MAX_BASE < RESTING);

/// The base window, in 65,536ths of a shard's capacity, from which the duel also tests admission:
/// 12.5 %. Below it the trace is not recency-heavy enough for a test to pay: the Zipf, scan and
/// loop traces, which need admission, rest at a base of zero and never test. Measured on a
/// variant that tested a quarter of the shards against the rest: from 6.25 % (where `cdn` often
/// sits) the mean over the real-like columns fell by 0.06 points at seeds 42 and 1
/// (`cloudphysics.keys` at 5k -1.0); from 18.75 %, by 0.10 at seed 1 (`kv` at 5k-50k kept
/// admission).
///
/// A test holds the base there until its verdict, whatever the window's duel finds meanwhile: a
/// step below used to end the test and throw its epochs away, and the next test, once the base
/// had climbed back, started from scratch (the first move of `shift` in `benches/traces/shapes.py`
/// at 20k entries: a test five epochs in, 10 deviations clear, ended by a step down; the next
/// found the same nine epochs later). Measured on the 168 columns of `ADMISSION_BLOCK_BOUND`:
/// `moving` at 50k (seed 1) +2.01 points, `shift` at 20k (seed 7) +0.86, `bursty` at 50k (seed
/// 11) +0.53, no other column moved by 0.05.
const ADMISSION_MIN_BASE: u64 = 2 * DUEL_STEP;

/// The fewest shards that test admission: two pairs a side, so that each side holds a larger- and
/// a smaller-window shard twice. With four (a 1k-entry cache on a 2-core box) the 1k columns
/// moved by -0.24 to +0.34 points, -0.06 on average over seeds 42, 1 and 7.
const ADMISSION_MIN_SHARDS: usize = 8;

/// A test's block, in epochs (that do not dip, see `ADMISSION_DIP`): the halves hold that long
/// before they swap, and the first `ADMISSION_SETTLE` epochs of a block, while the main queue still
/// holds what the last block admitted, are not counted. Swapping every epoch, as the window's
/// halves do, measured only the first epoch's effect of admitting everything (more recent keys
/// kept), not the later one (the main queue filled with keys seen once): on `cdn` at 20k entries
/// (`--seed 7`) it found for no admission within three epochs, and the hit ratio then fell from
/// 54 % to 46 % over the rest (50 % with admission). Blocks of 3 and 4 epochs did as well on
/// average, but left the worst column of seed 7 at -1.12 and -1.17 points from the best of the
/// others (5: -0.86); not counting no epoch or two of a block, 0.01-0.02 points less on average.
const ADMISSION_BLOCK: u32 = 5;
const ADMISSION_SETTLE: u32 = 1;

/// How clear the evidence must be, in standard deviations of the counted epochs' difference of
/// misses: for no admission, the duel's 2, and only after whole cycles (a block each way), which
/// cancel any bias between the halves (or after the first block, see `ADMISSION_BLOCK_BOUND`);
/// for admission (the safe side), 1.5 at any epoch, so that a
/// trace that needs it (`cdn`) pays for a short test only. With verdicts only at a cycle's end
/// `cdn` lost up to 1 point at 5k and 20k entries (seed 1), against 0.2-0.3 with the early one;
/// an early bound of 2 or 2.5 did about as well as 1.5 (within 0.015 points on average).
const ADMISSION_BOUND: f64 = DUEL_BOUND;
const ADMISSION_EARLY_BOUND: f64 = 1.5;

/// A verdict for no admission after the first block alone, when its half without admission
/// missed `ADMISSION_BLOCK_BOUND` (6) standard deviations less than the other, once the bias
/// between the two halves is taken off: how much more one half missed than the other,
/// relative to both, while every shard ran alike (a moving average, each epoch weighing
/// `ADMISSION_BIAS_WEIGHT`, over at least `ADMISSION_ALIKE_EPOCHS` epochs; the deviations count
/// the bias's own uncertainty, so a bias seen on few misses takes a larger lead). A whole cycle
/// cancels a bias whatever its size but costs the other half five epochs with admission where
/// none clearly pays: `bursty` of `benches/traces/shapes.py` at 5k entries missed 34 % less
/// without it in the first block, a 33-deviation lead, and sat 10 points below its later hit
/// ratio through the second. Measured (`HIT_RATIO_ONLY=leasecache cargo bench --bench hit_ratio`
/// on the real-like traces at seeds 42, 1, 7 and 4M accesses, `cloudphysics.keys`, the
/// generated Zipf, scan and loop traces at seeds 42 and 7, and the shapes at seeds 7 and 11; 168
/// columns): `bursty` at 5k +0.80 (seed 7), `moving` at 50k +1.14 (seed 42) and +0.39 (4M),
/// `shift` at 20k +0.26 (seed 7) and -0.34 (seed 11), no other column by more than 0.25; mean
/// +0.016. A bound of 4 did the same within 0.12; the same check after two counted epochs
/// gained `bursty` 0.3 more and lost `moving` at 20k on 4M accesses 0.23. The bias is taken off
/// because a pair of shards may hold hotter keys: without it an early verdict (tried at 8
/// deviations, with no bias) let a 30 % bias decide
/// (`an_admission_test_cancels_a_bias_between_its_halves`). Counting the bias's uncertainty
/// changed no column (the leads that decide are 10-34 %); forgetting the bias at a change of
/// workload (the keys each pair holds are others then) cost `moving` at 50k 1.14 points (seed
/// 42), since the first test after a change then waits for the whole cycle; the bias between
/// pairs of hashed shards is small whatever the keys (0.3 % over `bursty`'s first epochs).
const ADMISSION_BLOCK_BOUND: f64 = 6.0;
const ADMISSION_BIAS_WEIGHT: f64 = 0.25;
const ADMISSION_ALIKE_EPOCHS: u32 = 2;

/// How far below the recent epochs' hit ratio (`Leader::dipped`) an epoch of an admission test must
/// fall for the test not to count it: more than 6 points, once the test's own cost is taken off
/// (the misses its tested pairs made beyond the others': without that, a half without admission
/// that cost the cache 6 points would delay the early verdict for admission, which is there to keep
/// such a test short). A dip is a transient (a working set that moves on, say), in which the half
/// without admission keeps the new keys at once and misses far less; the epochs after it, back to
/// the workload's steady state, are what the verdict holds for (64-512 epochs). Counted, one dip
/// decided: `moving` in `benches/traces` at 5k entries, a 30k-key working set that moves every 150k
/// accesses, had a test that straddled a move find for no admission, and the cache ran near LRU
/// through every later phase, 5-6 points below quick_cache there (56 % against 62 %). Such an epoch
/// neither counts nor advances the test's block; the test goes on with the next. Measured
/// (BENCHMARKS.md section 2; `HIT_RATIO_ONLY=leasecache`, 308 columns: the real-like traces at
/// seeds 42, 1, 7, 2, 3, 5 and on 4M accesses at seeds 42, 1, 7, `cloudphysics.keys`, the Zipf,
/// scan and loop traces at seeds 42 and 7, the twelve shapes of `benches/traces/shapes.py` at seeds
/// 7 and 11): `moving` at 5k +0.29 and +0.32 points (seeds 42 and 1), +0.71 and +1.69 on 4M
/// accesses (seeds 42 and 1), at 50k +0.61 and +0.57 (seed 42, 1M and 4M accesses), -0.49 and -0.37
/// (seed 3, seed 1 on 4M accesses); mean +0.011; no other column lower by more than 0.22. A dip of
/// 5 points did the same within 0.01, 8 points lost `multi` at 50k 0.63; leaving out the epoch
/// after a dip too lost `moving` at 5k on 4M accesses 1.5; the test's cost taken off changed no
/// column by more than 0.02 (no test of those traces costs that much).
const ADMISSION_DIP: f64 = 0.06;

/// The cycles after which a test without a verdict ends, keeping the last verdict (admission, at
/// first).
const ADMISSION_CYCLES: u32 = 2;

/// The first and the longest rest after an admission verdict, in epochs; each rest on the same
/// verdict as the last doubles the last, a verdict that turns round starts over. A first rest of
/// 32 epochs did 0.005-0.02 points worse on average (on the quarter-of-the-shards variant).
const ADMISSION_REST: (u32, u32) = (64, 512);

/// The duel over admission: whether a candidate leaving the small queue must pass the sketch's
/// comparison with the main queue's victim (`Shard::admit_to_main`, `Shard::admit_ghost`), or goes
/// to the main queue whatever its counts. With no admission the small queue and the main queue are
/// a FIFO and a CLOCK, close to LRU: what the recency-heavy traces want (`kv`, `db` at 20k-50k
/// entries), and what one-hit wonders (`cdn`, `cloudphysics.keys`) punish. Run by the same shards
/// over the same epochs as the window's duel, across it: one pair of shards in two runs without
/// admission, the other with it, so each half of the window's duel holds as many of each (and the
/// other way round). Unlike the window's, the halves hold for a block of epochs before they swap
/// (see `ADMISSION_BLOCK`). The leader starts a test only while the window's duel runs at a base of
/// at least `ADMISSION_MIN_BASE`, and holds the base there until its verdict; a verdict holds for a
/// rest, as the window's does, even if the epochs after it could not test (see
/// [`end_epoch`](Self::end_epoch)).
#[derive(Debug, Default)]
struct AdmissionDuel {
    /// Epochs of the current test so far (an epoch that dips is not one, see `ADMISSION_DIP`).
    epochs: u32,
    /// The counted epochs' misses of the half without admission less the other's, and the
    /// variance of that difference (misses count as Poisson).
    sum: f64,
    variance: f64,
    /// The last verdict: admission off, for every shard while the duel rests.
    off: bool,
    /// Epochs left to rest, and the last rest's length.
    rest: u32,
    backoff: u32,
    /// The pairs' bias (see `ADMISSION_BLOCK_BOUND`): a moving average of how much more the
    /// first pairs of shards in two missed than the others, relative to both, over the epochs in
    /// which every shard ran alike; its variance (misses count as Poisson); and how many such
    /// epochs it has seen.
    bias: f64,
    bias_variance: f64,
    alike_epochs: u32,
    /// Both halves' misses over the counted epochs of the current test.
    counted_misses: f64,
}

/// An epoch's misses, as the admission duel counts them.
#[derive(Clone, Copy, Debug)]
enum EpochMisses {
    /// A test: the misses of the half without admission and of the half with it.
    Tested { off: f64, on: f64 },
    /// Every shard ran alike: the misses of the first pairs of shards in two and of the others.
    Alike { first: f64, second: f64 },
    /// Nothing to count: the leader's shard is not full, the cache hit (almost) nothing, or the
    /// epoch of a test dipped (see `ADMISSION_DIP`).
    Unknown,
}

impl AdmissionDuel {
    /// Ends an epoch that missed `misses`; `eligible`, whether the next epoch may test. A
    /// verdict holds for its whole rest, eligible or not; otherwise an ineligible epoch ends any
    /// test, every shard admits, and the duel starts over (the pairs' bias is kept). An eligible
    /// epoch with nothing to count (`EpochMisses::Unknown`: in a test, one that dipped) leaves a
    /// test as it is. Returns the next epoch's flags.
    ///
    /// Keeping the verdict through its rest: the two duels feed each other (without admission
    /// the window's duel weighs other costs and often steps its base down), and dropping a
    /// verdict for no admission as soon as the base fell below `ADMISSION_MIN_BASE` cut its rests
    /// short, after which a test from scratch often found the other way. Measured (a review's
    /// trace, then `HIT_RATIO_ONLY=leasecache cargo bench --bench hit_ratio -- --only-files
    /// --realish N --seed S`, seeds 42, 1, 7): every 1M-access column unchanged, the 4M-access
    /// ones (`--capacities 5000,20000,50000`) +0.019, +0.023, +0.099 on average (`kv` 5k +0.56
    /// and 50k +0.49 at seed 7, `db` 50k +0.20 at seed 42; the worst, `kv` 50k -0.01 at seed 1).
    fn end_epoch(&mut self, misses: EpochMisses, eligible: bool) -> u64 {
        if let EpochMisses::Alike { first, second } = misses {
            self.count_bias(first, second);
        }
        if self.rest > 0 {
            self.rest -= 1;
        } else if let (true, EpochMisses::Tested { off, on }) = (eligible, misses) {
            if self.epochs % ADMISSION_BLOCK >= ADMISSION_SETTLE {
                self.sum += off - on;
                self.variance += off + on;
                self.counted_misses += off + on;
            }
            self.epochs += 1;
            let deviation = self.variance.sqrt();
            let verdict = if self.variance > 0.0 && self.sum > ADMISSION_EARLY_BOUND * deviation {
                Some(false)
            } else if self.epochs == ADMISSION_BLOCK && self.first_block_finds_no_admission() {
                Some(true)
            } else if self.epochs % (2 * ADMISSION_BLOCK) != 0 {
                None
            } else if self.sum < -ADMISSION_BOUND * deviation {
                Some(true)
            } else if self.epochs >= 2 * ADMISSION_BLOCK * ADMISSION_CYCLES {
                Some(self.off)
            } else {
                None
            };
            if let Some(off) = verdict {
                self.backoff = if off == self.off {
                    (self.backoff * 2).clamp(ADMISSION_REST.0, ADMISSION_REST.1)
                } else {
                    ADMISSION_REST.0
                };
                (self.off, self.rest) = (off, self.backoff);
                (self.epochs, self.sum, self.variance) = (0, 0.0, 0.0);
                self.counted_misses = 0.0;
            }
        }
        if self.rest == 0 && !eligible {
            *self = Self {
                bias: self.bias,
                bias_variance: self.bias_variance,
                alike_epochs: self.alike_epochs,
                ..Self::default()
            };
            return 0;
        }
        if self.rest > 0 {
            if self.off { ADMISSION_OFF } else { 0 }
        } else if (self.epochs / ADMISSION_BLOCK) % 2 == 1 {
            ADMISSION_TEST | ADMISSION_OFF
        } else {
            ADMISSION_TEST
        }
    }

    /// Whether the duel rests on a verdict for no admission: no shard admits.
    fn rests_off(&self) -> bool {
        self.off && self.rest > 0
    }

    /// Adds an epoch in which every shard ran alike, the first pairs of shards in two missing
    /// `first` and the others `second`, to the moving average of the pairs' bias.
    fn count_bias(&mut self, first: f64, second: f64) {
        let misses = first + second;
        if misses <= 0.0 {
            return;
        }
        // The relative difference, and its variance with Poisson misses on both sides.
        let (relative, variance) = ((first - second) / misses, 1.0 / misses);
        (self.bias, self.bias_variance) = if self.alike_epochs == 0 {
            (relative, variance)
        } else {
            let w = ADMISSION_BIAS_WEIGHT;
            (
                self.bias + w * (relative - self.bias),
                (1.0 - w).powi(2) * self.bias_variance + w.powi(2) * variance,
            )
        };
        self.alike_epochs = self.alike_epochs.saturating_add(1);
    }

    /// Whether the first block, in which the first pairs of shards in two ran without
    /// admission, finds for no admission (see `ADMISSION_BLOCK_BOUND`): they missed clearly less
    /// once the bias they showed while every shard ran alike is taken off, the bias's own
    /// uncertainty counted in.
    fn first_block_finds_no_admission(&self) -> bool {
        let lead = self.sum - self.bias * self.counted_misses;
        let variance = self.variance + self.counted_misses.powi(2) * self.bias_variance;
        self.alike_epochs >= ADMISSION_ALIKE_EPOCHS
            && lead < -ADMISSION_BLOCK_BOUND * variance.sqrt()
    }
}

#[derive(Debug)]
pub(crate) struct Climber {
    /// The window: the weight the small queue may hold before its head faces admission.
    window: u64,
    /// The largest window.
    max_window: u64,
    /// The next move of the window, in units of weight (negative: shrink).
    step: f64,
    /// The size of a step when the climber starts over.
    restart_step: f64,
    /// This shard's lookups per sample.
    sample: u64,
    /// Shards of the cache: this shard's lookups are taken to be the cache's over this.
    shards: u64,
    /// New keys left until the next read of the lookup counters.
    left: u32,
    /// The cache's (hits, lookups) when the current sample began; `None` before the first one.
    start: Option<(u64, u64)>,
    /// The hit ratio of the last sample.
    last_ratio: Option<f64>,
    /// Entries that left the window in this sample, and those among them read while there.
    departures: u32,
    earning: u32,
    /// The cache's duel and this shard's index in it, when the cache has more than one shard: the
    /// duel then sets the window, and the hit-ratio rules above are not used.
    duel: Option<(Arc<Duel>, usize)>,
    /// This shard's new keys so far.
    new_keys: u64,
    /// This shard's ghost hits so far (counted in a duel only).
    ghost_hits: u64,
    /// New keys of this shard left until it next takes the cache's rate of ghost hits.
    returns_left: u64,
    /// The leader's sums of every shard's new keys and ghost hits when it last counted them.
    returns_start: (u64, u64),
    /// The duel's epoch, in this shard's lookups.
    epoch: u64,
    /// Whether the shard has had to evict: until then a window costs nothing.
    full: bool,
    /// Whether the shard is large (see `LARGE_SHARD_ENTRIES`).
    large: bool,
    /// The duel's leader (shard 0) only.
    leader: Leader,
    /// Whether a candidate leaving the small queue faces admission (the duel may turn it off).
    admits: bool,
    /// The leader's count of forgets as this shard last read it, and whether one since is still
    /// to be taken (see [`take_forget`](Self::take_forget)).
    forgets_seen: u64,
    forget: bool,
}

impl Climber {
    /// A climber for a shard of `capacity` units of weight, sized for about `expected_entries`.
    /// The window starts at zero (frequency first) and the first step grows it.
    pub(crate) fn new(capacity: u64, expected_entries: usize) -> Self {
        let restart_step = (capacity.saturating_mul(RESTART_STEP_256THS) / 256).max(1) as f64;
        Self {
            window: 0,
            max_window: capacity / 16 * MAX_WINDOW_SIXTEENTHS
                + capacity % 16 * MAX_WINDOW_SIXTEENTHS / 16,
            step: restart_step,
            restart_step,
            sample: (expected_entries as u64 * SAMPLE_PER_ENTRY_QUARTERS / 4).max(MIN_SAMPLE),
            shards: 1,
            left: READ_EVERY,
            start: None,
            last_ratio: None,
            departures: 0,
            earning: 0,
            duel: None,
            new_keys: 0,
            ghost_hits: 0,
            returns_left: 0,
            returns_start: (0, 0),
            epoch: (expected_entries as u64 / 4).max(DUEL_EPOCH),
            large: expected_entries >= LARGE_SHARD_ENTRIES,
            full: false,
            leader: Leader::default(),
            admits: true,
            forgets_seen: 0,
            forget: false,
        }
    }

    /// Whether the shard's main queue is to forget its entries' hits but one (`Shard::hand_hits`):
    /// once after each epoch whose hit ratio began a fall of `CHANGE_DROP` below the recent
    /// epochs' average while the duel had turned admission off in every shard (the first epoch
    /// of what may become a change of workload, see `Leader::workload_changed`). Without
    /// admission the queues are meant to be near LRU, a fall there is the workload moving on,
    /// and the main queue's CLOCK would keep the old workload's hot keys for up to three rounds
    /// of its hand. Only without admission: with it the main queue's hits are what holds the
    /// frequent keys against scans, whose falls look the same; forgetting at every fall cost the
    /// scans of the generated Zipf trace up to 0.4 points, `shift` at 5k entries 2.4 (shapes,
    /// seed 11) and `moving` at 5k 2.8 (seed 7; BENCHMARKS.md, section 2). Polled by the shard
    /// at each new key. Only a cache of `ADMISSION_MIN_SHARDS` shards or more turns admission
    /// off, so only such a cache forgets.
    #[inline]
    pub(crate) fn take_forget(&mut self) -> bool {
        // (No store unless there is one to take: this runs on every new key.)
        if self.forget {
            self.forget = false;
            true
        } else {
            false
        }
    }

    /// Tells the climber its shard is full (it evicts).
    #[inline]
    pub(crate) fn filled(&mut self) {
        self.full = true;
    }

    /// Makes this shard the `index`th of the duelling shards of `duel` (if there are two or more).
    pub(crate) fn duel(&mut self, duel: &Arc<Duel>, index: usize) {
        if duel.new_keys.len() > 1 && index < duel.new_keys.len() {
            self.duel = Some((Arc::clone(duel), index));
        }
    }

    /// For a shard of a cache of several (a duel): counts a new key, and whether it was a ghost
    /// hit, towards the cache's rate of ghost hits, and every `period / shards` new keys of the
    /// shard returns the cache's ghost hits per `period` new keys over about its last `period`
    /// new keys. The leader (shard 0) sums every shard's counts and publishes the rate; the others
    /// take what it last published. A shard's own rate over `period` of its own new keys spans
    /// `shards` times as many of the cache's, so it follows a change of workload that much later:
    /// on `cloudphysics.keys` at 10k entries (8 shards of 1,250), whose phases alternate within a
    /// few thousand misses, the cache-wide rate gained 0.78 points (`cargo bench --bench
    /// hit_ratio`, BENCHMARKS.md), which is what a single 10k-entry shard gained over 8 with the
    /// same window and no probation pool. A per-shard rate over `period / shards` new keys was
    /// too noisy (-0.5 points there).
    pub(crate) fn cache_returns(&mut self, ghost_hit: bool, period: u32) -> CacheReturns {
        let Some((duel, index)) = &self.duel else {
            return CacheReturns::Alone;
        };
        // Nothing to take before a period's worth of new keys (the leader publishes after half a
        // period of the cache's): no atomic operation at all on a cache's first few misses.
        if self.new_keys < u64::from(period) / self.shards {
            self.ghost_hits += u64::from(ghost_hit);
            return CacheReturns::Unchanged;
        }
        let counts = &duel.new_keys[*index];
        if ghost_hit {
            self.ghost_hits += 1;
            // Only this writer stores here; the leader reads it once a period.
            counts.ghost_hits.store(self.ghost_hits, Ordering::Relaxed);
        }
        if *index == 0 {
            if self.returns_left > 1 {
                self.returns_left -= 1;
                return CacheReturns::Unchanged;
            }
            self.returns_left = (u64::from(period) / self.shards).max(1);
            let (new_keys, ghost_hits) = duel.new_keys.iter().fold((0, 0), |(n, g), c| {
                (
                    n + c.new_keys.load(Ordering::Relaxed),
                    g + c.ghost_hits.load(Ordering::Relaxed),
                )
            });
            let (new_keys0, ghost_hits0) = self.returns_start;
            let new = new_keys.saturating_sub(new_keys0);
            // At least half a period (the others' counts may lag by a few new keys).
            if new >= u64::from(period / 2).max(1) {
                self.returns_start = (new_keys, ghost_hits);
                let rate = (ghost_hits.saturating_sub(ghost_hits0) * u64::from(period) / new)
                    .min(u64::from(period));
                duel.returns.store(rate + 1, Ordering::Relaxed);
            }
        }
        match duel.returns.load(Ordering::Relaxed).checked_sub(1) {
            Some(rate) => CacheReturns::Rate(rate as u32),
            None => CacheReturns::Unchanged,
        }
    }

    /// Tells the climber its shard is one of `shards` (the lookup counters are the whole
    /// cache's, and hashing spreads them evenly).
    pub(crate) fn set_shards(&mut self, shards: usize) {
        self.shards = shards.max(1) as u64;
    }

    /// The window: the weight the small queue may hold before its head faces admission.
    #[inline]
    pub(crate) fn window(&self) -> u64 {
        self.window
    }

    /// Whether a candidate leaving the small queue (or a ghost hit) faces admission: the duel
    /// turns it off where recency predicts better than the sketch (see [`AdmissionDuel`]); a
    /// single shard always admits.
    #[inline]
    pub(crate) fn admits(&self) -> bool {
        self.admits
    }

    /// Counts a new key (a miss that stores a value). Every `READ_EVERY` of them, reads the
    /// cache's lookup counters (`lookups`: hits and misses so far) and, at the end of a sample,
    /// moves the window.
    /// Returns whether it read them: then a writer of a cache that runs miniature simulations
    /// feeds them too (see [`feed_models`](Self::feed_models)).
    #[inline]
    pub(crate) fn new_key(&mut self, lookups: impl FnOnce() -> (u64, u64)) -> bool {
        self.left -= 1;
        if let Some((duel, index)) = &self.duel {
            self.new_keys += 1;
            // Only this writer stores here; the leader reads it once an epoch.
            duel.new_keys[*index]
                .new_keys
                .store(self.new_keys, Ordering::Relaxed);
        }
        if self.left != 0 {
            return false;
        }
        self.left = READ_EVERY;
        if self.duel.is_some() {
            self.read_duel(lookups());
        } else {
            self.read(lookups());
        }
        true
    }

    /// Replays the lookups sampled since the last feed through the cache's miniature
    /// simulations, if it runs them and no other writer is feeding them: `drain` hands them over
    /// (see `Readers::drain_samples`).
    #[cold]
    pub(crate) fn feed_models(&self, drain: impl FnOnce(&mut Vec<u64>, &mut Vec<u64>)) {
        let Some((duel, _)) = &self.duel else {
            return;
        };
        let sim = duel
            .sim
            .as_ref()
            .filter(|_| duel.hitting.load(Ordering::Relaxed));
        if let Some(mut sim) = sim.and_then(|sim| sim.try_lock()) {
            sim.feed(drain);
        }
    }

    /// The duel's `read`: takes this shard's window from the duel's state and, in the leader,
    /// ends the epoch once a shard's share of the lookups since it began reaches `self.epoch`.
    #[cold]
    fn read_duel(&mut self, (hits, misses): (u64, u64)) {
        // Borrowed, not cloned: the `Arc`'s count is shared by every shard's writer.
        let Some((duel, index)) = &self.duel else {
            return;
        };
        let index = *index;
        let state = duel.state.load(Ordering::Relaxed);
        let (epoch, base) = (state >> 32, state & 0xFFFF);
        let resting = state & RESTING != 0;
        let larger = (index as u64 + epoch) % 2 == 0;
        let window = if resting {
            base
        } else if larger {
            base + DUEL_DELTA
        } else {
            base.saturating_sub(DUEL_DELTA)
        };
        self.window = capacity_share(self.max_window, window).min(self.max_window);
        let admission_test = state & ADMISSION_TEST != 0;
        // In a test, the flag says which pair of shards in two runs without admission: pairs (0,
        // 1), (4, 5), ... or (2, 3), (6, 7), ..., one larger- and one smaller-window shard each.
        let phase = usize::from(state & ADMISSION_OFF != 0);
        self.admits = if admission_test {
            (index / 2) % 2 != phase
        } else {
            phase == 0
        };
        let forgets = (state >> FORGETS_SHIFT) & FORGETS_MASK;
        if forgets != self.forgets_seen {
            self.forgets_seen = forgets;
            self.forget = true;
        }
        if index != 0 {
            return;
        }
        let now = hits.wrapping_add(misses);
        let Some((hits0, lookups0)) = self.start else {
            self.start = Some((hits, now));
            self.leader.epoch_start = duel
                .new_keys
                .iter()
                .map(|n| n.new_keys.load(Ordering::Relaxed))
                .collect();
            return;
        };
        if now.saturating_sub(lookups0) / self.shards < self.epoch {
            return;
        }
        self.start = Some((hits, now));
        let (mut larger_misses, mut smaller_misses) = (0.0, 0.0);
        // The misses of the first pairs of shards in two, (0, 1), (4, 5), ..., and of the others.
        let (mut first_pairs, mut other_pairs) = (0.0, 0.0);
        for (i, (n, start)) in duel
            .new_keys
            .iter()
            .zip(self.leader.epoch_start.iter_mut())
            .enumerate()
        {
            let n = n.new_keys.load(Ordering::Relaxed);
            let misses = n.saturating_sub(*start) as f64;
            *start = n;
            if (i as u64 + epoch) % 2 == 0 {
                larger_misses += misses;
            } else {
                smaller_misses += misses;
            }
            if (i / 2) % 2 == 0 {
                first_pairs += misses;
            } else {
                other_pairs += misses;
            }
        }
        let leader = &mut self.leader;
        let mut base = base;
        let ratio = hits.saturating_sub(hits0) as f64 / now.saturating_sub(lookups0).max(1) as f64;
        duel.hitting
            .store(ratio >= DUEL_MIN_RATIO, Ordering::Relaxed);
        let current = Setting {
            window: base,
            admits: !leader.admission.rests_off(),
        };
        let suggested = if ratio >= DUEL_MIN_RATIO && self.full {
            leader.ask(duel, current)
        } else {
            None
        };
        if let Some(setting) = suggested {
            let next = leader.jump(setting);
            duel.state.store(
                (epoch + 1) << 32 | leader.forgets << FORGETS_SHIFT | next,
                Ordering::Relaxed,
            );
            return;
        }
        if !leader.started && ratio >= DUEL_MIN_RATIO {
            // The cache hits: the duel begins, from a base of zero (from 6.25 %,
            // `cloudphysics.keys` gained 0.3-0.6 points at 500-5k entries, and the 100k loop lost
            // 0.8 and Zipf s = 0.9 at 10k 0.4, past issue 15's bound of 0.3 on those columns).
            leader.started = true;
            duel.state.store(
                (epoch + 1) << 32 | leader.forgets << FORGETS_SHIFT,
                Ordering::Relaxed,
            );
            return;
        }
        if ratio < DUEL_MIN_RATIO {
            // The cache hits (almost) nothing: a window would store every miss for nothing (on a
            // stream of keys never seen again, `benches/ops.rs`'s miss path, that cost 1.2-2x the
            // time), so none, and no duel, until it hits.
            base = 0;
            leader.streak = 0;
            leader.rest = leader.rest.max(2);
            leader.evidence = Evidence::default();
        }
        // In a test, the misses of the pairs without admission and of the others (`phase` names
        // the pairs that ran without it).
        let tested = admission_test.then_some(if phase == 0 {
            (first_pairs, other_pairs)
        } else {
            (other_pairs, first_pairs)
        });
        // Judged against the reference before this epoch moves it.
        let dipped = tested.is_some_and(|(off, on)| {
            let lookups = now.saturating_sub(lookups0).max(1) as f64;
            leader.dipped(ratio, off, on, lookups)
        });
        let changed = leader.workload_changed(ratio, self.full);
        if leader.falling == 1 && no_shard_admits(state) {
            // The hit ratio began to fall while no shard admits: the main queues forget the
            // hits of the workload that ended (see `Climber::take_forget`).
            leader.forgets = (leader.forgets + 1) & FORGETS_MASK;
        }
        if changed {
            // The hit ratio fell and stayed down: probe from a window large enough for the
            // admission duel, whatever the evidence so far (gathered on another workload) said.
            base = base.max(CHANGE_BASE);
            (leader.rest, leader.rest_low) = (0, 0);
            leader.unclear = 0;
            leader.streak = 0;
            leader.evidence = Evidence::default();
        } else if leader.rest > 0 {
            leader.rest_epoch();
        } else {
            let larger_bound = if self.large && base == 0 {
                LARGE_LEAVE_BOUND
            } else {
                DUEL_BOUND
            };
            let mut verdict = if !self.full && self.large {
                // No evidence from the fill either (see `LARGE_LEAVE_BOUND`).
                leader.evidence = Evidence::default();
                None
            } else {
                leader
                    .evidence
                    .judge(larger_misses, smaller_misses, larger_bound)
            };
            if !self.full {
                // The leader's shard has not evicted yet, so no window has cost anything: a
                // verdict for a smaller one is noise, and no rest is due. A rest on such a
                // verdict, a few epochs into a 50k-entry cache's warm-up, held `kv` at a window
                // of zero for 32 epochs, half its 1M accesses (50.4 % against LRU's 65.6 % at
                // `--seed 1`).
                verdict = verdict.filter(|&larger| larger);
            }
            leader.unclear = if verdict.is_some() || !self.full {
                0
            } else {
                leader.unclear + 1
            };
            match verdict {
                Some(true) => {
                    base = (base + leader.step_up()).min(DUEL_MAX_BASE);
                    leader.backoff = 0;
                }
                Some(false) if base > 0 => base = base.saturating_sub(leader.step_down()),
                None if base > 0 && leader.unclear >= DUEL_WINDOW_PATIENCE => {
                    base = base.saturating_sub(leader.step_down());
                    leader.unclear = 0;
                }
                _ if base == 0 && (verdict == Some(false) || leader.unclear >= DUEL_PATIENCE) => {
                    // No window is best, or a window shows no clear gain: stop paying for the
                    // larger half's window for a while, longer each time.
                    leader.backoff = (leader.backoff * 2).clamp(DUEL_REST.0, DUEL_REST.1);
                    leader.rest = leader.backoff;
                    leader.unclear = 0;
                    leader.evidence = Evidence::default();
                }
                _ => {}
            }
        }
        if admission_test && self.full && ratio >= DUEL_MIN_RATIO {
            // The admission duel tests across the window's: the base stays where it may go on
            // testing until its verdict (see `ADMISSION_MIN_BASE`).
            base = base.max(ADMISSION_MIN_BASE);
        }
        let resting = if leader.rest > 0 { RESTING } else { 0 };
        // Admission is tested only across a working duel of a large enough window, in a full
        // shard of a cache that hits, with two pairs of shards or more on each side.
        let eligible = resting == 0
            && base >= ADMISSION_MIN_BASE
            && self.full
            && ratio >= DUEL_MIN_RATIO
            && duel.new_keys.len() >= ADMISSION_MIN_SHARDS;
        let misses = if !self.full || ratio < DUEL_MIN_RATIO || dipped {
            EpochMisses::Unknown
        } else if let Some((off, on)) = tested {
            EpochMisses::Tested { off, on }
        } else {
            EpochMisses::Alike {
                first: first_pairs,
                second: other_pairs,
            }
        };
        let admission = leader.admission.end_epoch(misses, eligible);
        duel.state.store(
            (epoch + 1) << 32 | leader.forgets << FORGETS_SHIFT | admission | resting | base,
            Ordering::Relaxed,
        );
    }

    /// Counts an entry that left the window (`read`: with hits while it was there).
    #[inline]
    pub(crate) fn departed(&mut self, read: bool) {
        self.departures += 1;
        self.earning += u32::from(read);
    }

    /// Ends the sample if the cache's `(hits, misses)` count a sample's worth of this shard's
    /// lookups since it began.
    #[cold]
    fn read(&mut self, (hits, misses): (u64, u64)) {
        let now = (hits, hits.wrapping_add(misses));
        let Some((hits0, lookups0)) = self.start else {
            self.start = Some(now);
            return;
        };
        let lookups = now.1.saturating_sub(lookups0);
        // A shard used without a cache counts no lookups, and never climbs.
        if lookups / self.shards >= self.sample {
            self.start = Some(now);
            let ratio = hits.saturating_sub(hits0) as f64 / lookups as f64;
            self.climb(ratio.min(1.0), lookups / self.shards);
        }
    }

    /// Moves the window after a sample whose hit ratio was `ratio`, judging its noise as that of
    /// `lookups` lookups (the shard's share: the cache's ratio is steadier than that, so a change
    /// must be larger to count).
    fn climb(&mut self, ratio: f64, lookups: u64) {
        let (departures, earning) = (self.departures, self.earning);
        (self.departures, self.earning) = (0, 0);
        let Some(last) = self.last_ratio.replace(ratio) else {
            // The first probe, unless the cache hits (almost) nothing: then every miss would be
            // stored for nothing while the window is open (on a stream of keys never seen again
            // that doubled the miss path's cost); a workload that later hits wakes the climber.
            if ratio >= MIN_FIRST_PROBE_RATIO {
                self.move_by(self.step);
            } else {
                self.step = 0.0;
            }
            return;
        };
        if self.window > 0
            && departures >= MIN_DEPARTURES
            && earning * 100 < departures * EARNING_PERCENT
        {
            // Hardly any key was read while it waited in the window: it only costs.
            self.step = -self.step.abs();
            self.move_by(self.step);
            return;
        }
        let change = ratio - last;
        let mean = (ratio + last) / 2.0;
        // The standard deviation of the difference of two samples' ratios, were nothing changed.
        let noise = (2.0 * mean * (1.0 - mean) / lookups as f64).sqrt();
        let amount = if self.step == 0.0 && change.abs() >= RESTART_CHANGE {
            // At rest, and the workload changed: probe a larger window, a quarter step (a whole
            // one cost the scan columns 0.2 points: every scan wakes the climber).
            self.restart_step / 4.0
        } else if change.abs() <= noise {
            // Nothing to tell: back towards zero, or rest there (a step of zero).
            if self.window > 0 {
                -self.step.abs()
            } else {
                0.0
            }
        } else if change >= 0.0 {
            self.step
        } else {
            -self.step
        };
        self.step = if change.abs() >= RESTART_CHANGE {
            self.restart_step.copysign(amount)
        } else {
            amount * STEP_DECAY
        };
        self.move_by(amount);
    }

    fn move_by(&mut self, amount: f64) {
        let window = (self.window as f64 + amount).round();
        self.window = window.clamp(0.0, self.max_window as f64) as u64;
    }

    /// Forgets the measurements (the cache was cleared, so the shard has room again and no
    /// window costs anything until it is full); the window stays.
    pub(crate) fn clear(&mut self) {
        self.full = false;
        self.leader.evidence = Evidence::default();
        self.leader.admission = AdmissionDuel::default();
        (self.leader.recent, self.leader.falling) = (None, 0);
        self.leader.change_at_fill = false;
        self.left = READ_EVERY;
        self.start = None;
        self.last_ratio = None;
        (self.departures, self.earning) = (0, 0);
    }

    /// Whether the shard is large: it expects at least `LARGE_SHARD_ENTRIES` entries. Its
    /// probation pool, its admission's sweep of the main queue's head and its stricter duel
    /// depend on it (see `Shard::pool`).
    #[inline]
    pub(crate) fn large(&self) -> bool {
        self.large
    }

    /// Sets the window, for tests.
    #[cfg(test)]
    pub(crate) fn set_window_for_test(&mut self, window: u64) {
        self.window = window.min(self.max_window);
    }

    /// Has the shard forget its main queue's hits at its next new key, for tests.
    #[cfg(test)]
    pub(crate) fn forget_for_test(&mut self) {
        self.forget = true;
    }

    /// Turns admission on or off, for tests.
    #[cfg(test)]
    pub(crate) fn set_admits_for_test(&mut self, admits: bool) {
        self.admits = admits;
    }

    /// Epochs the cache's miniature simulations have run (`None`: it runs none), for tests.
    #[cfg(test)]
    pub(crate) fn sim_epochs_for_test(&self) -> Option<u64> {
        let (duel, _) = self.duel.as_ref()?;
        Some(duel.sim.as_ref()?.lock().epochs())
    }
}

/// `share` 65,536ths of the capacity of a shard whose largest window is `max_window` (12/16 of
/// its capacity).
fn capacity_share(max_window: u64, share: u64) -> u64 {
    let capacity = max_window as f64 * 16.0 / MAX_WINDOW_SIXTEENTHS as f64;
    (capacity * share as f64 / 65_536.0).round() as u64
}

impl Leader {
    /// The base's move on a verdict for a larger window: one step, or `DUEL_MAX_STREAK` steps
    /// when it follows another such verdict.
    fn step_up(&mut self) -> u64 {
        self.streak = (self.streak + 1).min(DUEL_MAX_STREAK);
        DUEL_STEP * u64::from(self.streak)
    }

    /// The base's move down (one step), which ends a streak of verdicts for a larger window.
    fn step_down(&mut self) -> u64 {
        self.streak = 0;
        DUEL_STEP
    }
}

/// A duel's accumulated evidence: which of two halves of the shards, swapping every epoch, misses
/// less.
#[derive(Debug, Default)]
struct Evidence {
    /// The last epoch's misses of the tested half (the larger window) less the other half's.
    last_difference: Option<f64>,
    /// Accumulated: half the sum of two epochs' differences (the cost of the tested side), and
    /// its variance (misses count as Poisson).
    sum: f64,
    variance: f64,
}

impl Evidence {
    /// Adds an epoch's misses of the tested half and of the other half to the evidence;
    /// `Some(true)` when it now clearly favours the tested side, `Some(false)` the other one (and
    /// the evidence starts over), `None` while unclear.
    fn judge(&mut self, tested_misses: f64, other_misses: f64, larger_bound: f64) -> Option<bool> {
        let difference = tested_misses - other_misses;
        let last = self.last_difference.replace(difference)?;
        // Each half is the tested one in one of the two epochs: its bias cancels.
        self.sum += (difference + last) / 2.0;
        self.variance += (tested_misses + other_misses) / 2.0;
        let deviation = self.variance.sqrt();
        let verdict = if self.sum < -larger_bound * deviation {
            true
        } else if self.sum > DUEL_BOUND * deviation {
            false
        } else {
            return None;
        };
        (self.sum, self.variance) = (0.0, 0.0);
        Some(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duelling_shards_take_the_caches_rate_of_ghost_hits() {
        let duel = Duel::new(2);
        let mut shards: Vec<Climber> = (0..2)
            .map(|i| {
                let mut c = Climber::new(1_000, 1_000);
                c.set_shards(2);
                c.duel(&duel, i);
                c
            })
            .collect();
        // Shard 1's new keys are all ghost hits, shard 0's none: the cache's rate is half.
        let mut last = [None; 2];
        for _ in 0..1_000 {
            for (i, c) in shards.iter_mut().enumerate() {
                if let CacheReturns::Rate(rate) = c.cache_returns(i == 1, 128) {
                    last[i] = Some(rate);
                }
                c.new_key(|| (0, 1));
            }
        }
        for rate in last {
            let rate = rate.expect("every shard took the cache's rate");
            assert!((56..=72).contains(&rate), "{rate} of 128, not about half");
        }
        // A single shard counts its own.
        let mut alone = Climber::new(1_000, 1_000);
        alone.duel(&Duel::new(1), 0);
        assert_eq!(alone.cache_returns(true, 128), CacheReturns::Alone);
    }

    /// Feeds `samples` samples whose hit ratio is `ratio_of(window)`.
    fn run(c: &mut Climber, samples: usize, ratio_of: impl Fn(u64) -> f64) {
        let (mut hits, mut misses) = (0u64, 0u64);
        // A sample's lookups, spread over the four reads that end it.
        let per_read = c.sample.div_ceil(4);
        for _ in 0..samples * 4 {
            let window = c.window();
            for _ in 0..READ_EVERY {
                c.new_key(|| {
                    let h = (ratio_of(window) * per_read as f64) as u64;
                    hits += h;
                    misses += per_read - h;
                    (hits, misses)
                });
            }
        }
    }

    #[test]
    fn grows_while_a_larger_window_pays_up_to_its_bound() {
        let mut c = Climber::new(1_000, 1_000);
        run(&mut c, 40, |w| 0.2 + w as f64 / 2_000.0);
        // At the bound a quiet sample takes a step back, and the next turns round again.
        assert!((700..=750).contains(&c.window()), "window {}", c.window());
        assert_eq!(c.max_window, 750);
    }

    #[test]
    fn settles_near_the_best_window() {
        let mut c = Climber::new(1_000, 1_000);
        // Best at 400, steeply: the window goes there and stays within a few steps of it.
        run(&mut c, 40, |w| 0.5 - (w as f64 - 400.0).abs() / 2_000.0);
        assert!((250..=550).contains(&c.window()), "window {}", c.window());
    }

    #[test]
    fn shrinks_to_zero_and_rests_when_a_window_brings_nothing_clear() {
        let mut c = Climber::new(1_000, 1_000);
        c.set_window_for_test(500);
        // A step changes the hit ratio by less than the noise of a sample.
        run(&mut c, 60, |w| 0.5 - w as f64 / 100_000.0);
        assert_eq!(c.window(), 0);
        run(&mut c, 20, |_| 0.5);
        assert_eq!(c.window(), 0, "a quiet climber at zero rests");
    }

    #[test]
    fn a_window_nobody_reads_shrinks_whatever_the_hit_ratio() {
        let mut c = Climber::new(1_000, 1_000);
        c.set_window_for_test(500);
        c.last_ratio = Some(0.1);
        for _ in 0..100 {
            c.departed(false);
        }
        // The hit ratio rose, yet no key was read in the window.
        c.climb(0.5, 10_000);
        assert!(c.window() < 500);
    }

    #[test]
    fn restarts_when_the_workload_changes() {
        let mut c = Climber::new(1_000, 1_000);
        run(&mut c, 10, |_| 0.5);
        assert_eq!((c.window(), c.step), (0, 0.0), "at rest");
        // The hit ratio drops by 20 points; a window would win them back.
        run(&mut c, 20, |w| 0.3 + w as f64 / 2_000.0);
        assert!(c.window() >= 500, "window {}", c.window());
    }

    #[test]
    fn a_duels_evidence_favours_the_half_that_misses_less() {
        let mut leader = Leader::default();
        // The larger window misses 10 % less, epoch after epoch.
        let verdicts: Vec<_> = (0..20)
            .map(|_| leader.evidence.judge(900.0, 1_000.0, DUEL_BOUND))
            .collect();
        assert_eq!(verdicts[0], None, "one epoch is not evidence");
        assert!(verdicts.contains(&Some(true)), "{verdicts:?}");
        assert!(!verdicts.contains(&Some(false)), "{verdicts:?}");
        let mut leader = Leader::default();
        let verdicts: Vec<_> = (0..20)
            .map(|_| leader.evidence.judge(1_000.0, 900.0, DUEL_BOUND))
            .collect();
        assert!(verdicts.contains(&Some(false)) && !verdicts.contains(&Some(true)));
    }

    #[test]
    fn verdicts_for_a_larger_window_in_a_row_move_the_base_faster_until_one_goes_down() {
        let mut leader = Leader::default();
        let ups: Vec<u64> = (0..3).map(|_| leader.step_up()).collect();
        assert_eq!(ups, [DUEL_STEP, 2 * DUEL_STEP, 2 * DUEL_STEP]);
        assert_eq!(leader.step_down(), DUEL_STEP);
        assert_eq!(leader.step_up(), DUEL_STEP);
    }

    #[test]
    fn a_duel_cancels_a_bias_between_its_halves() {
        // The even shards miss 300 more whatever their window: in alternate epochs they are the
        // larger-window half and the smaller one, and nothing else differs.
        let mut leader = Leader::default();
        for epoch in 0..200 {
            let (larger, smaller) = if epoch % 2 == 0 {
                (1_300.0, 1_000.0)
            } else {
                (1_000.0, 1_300.0)
            };
            assert_eq!(
                leader.evidence.judge(larger, smaller, DUEL_BOUND),
                None,
                "epoch {epoch}"
            );
        }
    }

    /// The two shards of a 64k-entry cache, duelling in `duel`; `full`: both have evicted.
    fn duelling_pair(duel: &Arc<Duel>, full: bool) -> Vec<Climber> {
        duelling_shards(duel, 2, full)
    }

    /// `shards` shards of 64k entries (sized for 4k, not large), duelling in `duel`; `full`: all
    /// have evicted.
    fn duelling_shards(duel: &Arc<Duel>, shards: usize, full: bool) -> Vec<Climber> {
        sized_duelling_shards(duel, shards, 4_096, full)
    }

    /// The same, sized for `expected_entries` each.
    fn sized_duelling_shards(
        duel: &Arc<Duel>,
        shards: usize,
        expected_entries: usize,
        full: bool,
    ) -> Vec<Climber> {
        (0..shards)
            .map(|i| {
                let mut c = Climber::new(65_536, expected_entries);
                c.set_shards(shards);
                c.duel(duel, i);
                if full {
                    c.filled();
                }
                c
            })
            .collect()
    }

    /// Two shards sized for `expected_entries`, full or not, whose larger-window shard misses
    /// `lead` (a fraction; negative: more) less than the other, from a base of `base`: the epochs
    /// until the base moves or, if `rests` count, the duel rests (`None`: not in 400).
    fn epochs_to_verdict(
        expected_entries: usize,
        full: bool,
        base: u64,
        lead: f64,
        rests: bool,
    ) -> Option<u64> {
        let duel = Duel::new(2);
        let mut shards = sized_duelling_shards(&duel, 2, expected_entries, full);
        if base > 0 {
            shards[0].leader.started = true;
            duel.state.store(base, Ordering::Relaxed);
        }
        let (mut hits, mut misses) = (0u64, 0u64);
        let mut owed = [0.0; 2];
        loop {
            let state = duel.state.load(Ordering::Relaxed);
            let rested = rests && state & RESTING != 0;
            if shards[0].leader.started && (state & 0xFFFF != base || rested) {
                return Some(state >> 32);
            }
            if state >> 32 > 400 {
                return None;
            }
            let windows: Vec<u64> = shards.iter().map(Climber::window).collect();
            let larger = windows.iter().copied().max().unwrap_or(0);
            // A miss a shard in turn, `lead` fewer for the larger window (carried over in
            // `owed`), so that an epoch ends with the shards' misses in their proportions.
            for ((shard, window), owed) in shards.iter_mut().zip(windows).zip(&mut owed) {
                *owed += if window == larger && window > 0 {
                    1.0 - lead
                } else {
                    1.0
                };
                while *owed >= 1.0 {
                    *owed -= 1.0;
                    (hits, misses) = (hits + 3, misses + 1);
                    shard.new_key(|| (hits, misses));
                }
            }
        }
    }

    /// Two shards sized for `expected_entries`, full or not, whose larger-window shard misses
    /// `lead` less than the other: the epochs until the base leaves zero.
    fn epochs_to_leave_zero(expected_entries: usize, full: bool, lead: f64) -> Option<u64> {
        epochs_to_verdict(expected_entries, full, 0, lead, false)
    }

    /// Only leaving a window of zero asks large shards for clearer evidence: above zero, or for a
    /// smaller window, they move as soon as other shards do.
    #[test]
    fn a_duel_of_large_shards_is_stricter_only_about_leaving_zero() {
        let above = 4 * DUEL_STEP;
        for (base, lead) in [(above, 0.06), (above, -0.06), (0, -0.06)] {
            let small = epochs_to_verdict(4_096, true, base, lead, true);
            assert!(small.is_some(), "base {base}, lead {lead}");
            assert_eq!(
                epochs_to_verdict(LARGE_SHARD_ENTRIES, true, base, lead, true),
                small,
                "base {base}, lead {lead}"
            );
        }
    }

    /// Large shards leave a window of zero (their probation pool) only on clearer evidence than
    /// others, and not before the leader's shard is full.
    #[test]
    fn a_duel_of_large_shards_leaves_zero_on_clearer_evidence_and_only_once_full() {
        let small = epochs_to_leave_zero(4_096, true, 0.06).expect("small shards leave zero");
        let large = epochs_to_leave_zero(LARGE_SHARD_ENTRIES, true, 0.06)
            .expect("large shards leave zero too");
        // Evidence grows as the square root of the epochs: twice the deviations take about four
        // times as many (a verdict takes two epochs, one a side).
        assert!(
            large >= 2 * small,
            "small shards {small} epochs, large {large}"
        );
        // A lead of 3 % moves small shards, not large ones (see `LARGE_LEAVE_BOUND`).
        assert!(epochs_to_leave_zero(4_096, true, 0.03).is_some());
        assert_eq!(epochs_to_leave_zero(LARGE_SHARD_ENTRIES, true, 0.03), None);
        assert!(epochs_to_leave_zero(4_096, false, 0.3).is_some());
        assert_eq!(epochs_to_leave_zero(LARGE_SHARD_ENTRIES, false, 0.3), None);
    }

    /// Two shards of one cache: their windows differ by two half-steps and swap each epoch, and
    /// the base grows while the shard with the larger window misses less.
    #[test]
    fn duelling_shards_swap_windows_and_the_base_follows_the_winner() {
        let duel = Duel::new(2);
        let mut shards = duelling_pair(&duel, false);
        let (mut hits, mut misses) = (0u64, 0u64);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2_000 {
            // A round of lookups: each shard's misses fall as its window grows.
            for (i, shard) in shards.iter_mut().enumerate() {
                let window = shard.window();
                seen.insert((i, window));
                let new_keys = 64 - window / 1_024;
                for _ in 0..new_keys {
                    // Each new key comes with three hits elsewhere.
                    (hits, misses) = (hits + 3, misses + 1);
                    shard.new_key(|| (hits, misses));
                }
            }
        }
        let base = duel.state.load(Ordering::Relaxed) & 0xFFFF;
        assert!(base >= 2 * DUEL_STEP, "base {base}");
        // Each shard ran with the first duelling epoch's larger window (the capacity is 65,536).
        let first_larger = DUEL_DELTA;
        assert!(
            seen.contains(&(0, first_larger)) && seen.contains(&(1, first_larger)),
            "{seen:?}"
        );
    }

    /// A larger window misses more, but the leader's shard has not evicted yet: the duel goes
    /// on at zero, with no rest, until the shard fills; then it rests.
    #[test]
    fn a_duel_rests_only_once_its_leaders_shard_is_full() {
        let duel = Duel::new(2);
        let mut shards = duelling_pair(&duel, false);
        let (mut hits, mut misses) = (0u64, 0u64);
        let mut round = |shards: &mut [Climber]| {
            for shard in shards.iter_mut() {
                let new_keys = if shard.window() > 0 { 80 } else { 64 };
                for _ in 0..new_keys {
                    (hits, misses) = (hits + 3, misses + 1);
                    shard.new_key(|| (hits, misses));
                }
            }
            duel.state.load(Ordering::Relaxed)
        };
        for _ in 0..2_000 {
            let state = round(&mut shards);
            if state >> 32 > 0 {
                assert_eq!(state & (RESTING | 0xFFFF), 0, "epoch {}", state >> 32);
            }
        }
        shards[0].filled();
        let mut rested = false;
        for _ in 0..2_000 {
            if round(&mut shards) & RESTING != 0 {
                rested = true;
                break;
            }
        }
        assert!(rested, "never rested");
        // A cleared cache has room again: no rest until the leader's shard is full again.
        shards[0].clear();
        shards[0].leader.rest = 0;
        let cleared = duel.state.load(Ordering::Relaxed) >> 32;
        for _ in 0..2_000 {
            let state = round(&mut shards);
            if state >> 32 > cleared + 1 {
                assert_eq!(state & (RESTING | 0xFFFF), 0, "rested after a clear");
            }
        }
        assert!(duel.state.load(Ordering::Relaxed) >> 32 > cleared + 16);
    }

    /// A window that changes nothing, from a base of four steps: the base keeps it longer than
    /// the duel at zero waits for a verdict, then steps down.
    #[test]
    fn a_window_without_verdicts_is_kept_a_while_then_steps_down() {
        let duel = Duel::new(2);
        let mut shards = duelling_pair(&duel, true);
        shards[0].leader.started = true;
        duel.state.store(4 * DUEL_STEP, Ordering::Relaxed);
        let (mut hits, mut misses) = (0u64, 0u64);
        for _ in 0..4_000 {
            // Both halves miss alike, whatever their windows: no verdict ever comes.
            for shard in shards.iter_mut() {
                for _ in 0..64 {
                    (hits, misses) = (hits + 3, misses + 1);
                    shard.new_key(|| (hits, misses));
                }
            }
            let state = duel.state.load(Ordering::Relaxed);
            if state & 0xFFFF != 4 * DUEL_STEP {
                assert_eq!(state & 0xFFFF, 3 * DUEL_STEP, "one step down");
                let epoch = state >> 32;
                assert!(
                    epoch > u64::from(DUEL_PATIENCE) + 1
                        && epoch <= u64::from(DUEL_WINDOW_PATIENCE) + 2,
                    "stepped down at epoch {epoch}"
                );
                return;
            }
        }
        panic!("never stepped down");
    }

    /// A window that changes nothing: the base steps down to zero, and the duel then rests, every
    /// shard at the base (no larger half paying for a window).
    #[test]
    fn a_duel_without_verdicts_steps_down_and_rests() {
        let duel = Duel::new(2);
        let mut shards = duelling_pair(&duel, true);
        let (mut hits, mut misses) = (0u64, 0u64);
        let mut rested = false;
        for _ in 0..4_000 {
            for shard in shards.iter_mut() {
                for _ in 0..64 {
                    (hits, misses) = (hits + 3, misses + 1);
                    shard.new_key(|| (hits, misses));
                }
            }
            let state = duel.state.load(Ordering::Relaxed);
            // (Epoch 0: not begun yet, which is a rest too.)
            if state >> 32 > 0 && state & RESTING != 0 {
                assert_eq!(state & 0xFFFF, 0, "rests only at a base of zero");
                rested = true;
                if shards.iter().all(|c| c.window() == 0) {
                    return;
                }
            }
        }
        panic!(
            "rested {rested}, windows {:?}",
            shards.iter().map(Climber::window).collect::<Vec<_>>()
        );
    }

    /// Feeds each of `shards` 64 new keys (an eighth of an epoch) at hit ratio `ratio`,
    /// whatever their windows, counting the cache's `(hits, misses)` in `counts`; returns the
    /// duel's state after them.
    fn round_at(duel: &Duel, shards: &mut [Climber], counts: &mut (u64, u64), ratio: f64) -> u64 {
        let round_hits = (64.0 * ratio / (1.0 - ratio)) as u64;
        for shard in shards.iter_mut() {
            for i in 0..64 {
                counts.0 += round_hits / 64 + u64::from(i < round_hits % 64);
                counts.1 += 1;
                let now = *counts;
                shard.new_key(|| now);
            }
        }
        duel.state.load(Ordering::Relaxed)
    }

    /// With miniature simulations that clearly favour another setting, and whose model of the
    /// cache's setting misses as the cache does, the leader's first epoch moves the base there;
    /// the same duel without them, or with models that misjudge the cache, is still near zero
    /// after as many epochs.
    #[test]
    fn the_base_jumps_to_the_setting_the_simulations_clearly_favour() {
        use crate::policy::minisim::tests::{NONE_ADMITTING, fed, moving};
        let sim = |times| {
            let mut sim = fed(&moving(20, 3_000));
            sim.calibrate_for_test(NONE_ADMITTING, times);
            sim
        };
        let favoured = sim(1.0)
            .suggest_for_test(NONE_ADMITTING)
            .expect("a clear gain");
        assert!(favoured.window > 2 * DUEL_STEP, "{favoured:?}");
        let ratio = 0.8;
        let run = |sim: Option<MiniSim>| {
            let duel = Duel::with_sim(8, sim);
            let mut shards = duelling_shards(&duel, 8, true);
            let mut counts = (0, 0);
            let mut state = 0;
            while state >> 32 < 3 {
                state = round_at(&duel, &mut shards, &mut counts, ratio);
            }
            state
        };
        let state = run(Some(sim(1.0)));
        assert_eq!(state & 0xFFFF, favoured.window, "{state:#x}");
        assert_eq!(state & ADMISSION_OFF == 0, favoured.admits, "{state:#x}");
        for sim in [None, Some(sim(2.0))] {
            let state = run(sim);
            assert!(state & 0xFFFF <= DUEL_STEP, "{state:#x}");
        }
    }

    /// Simulations that have not run since they were last asked suggest nothing: a cache that
    /// stopped hitting (nothing feeds them then) stays at a window of zero rather than jumping
    /// back to what they favoured each epoch.
    #[test]
    fn simulations_are_asked_once_an_epoch_of_theirs() {
        use crate::policy::minisim::tests::{NONE_ADMITTING, fed, moving};
        let mut sim = fed(&moving(20, 3_000));
        sim.calibrate_for_test(NONE_ADMITTING, 1.0);
        let duel = Duel::with_sim(8, Some(sim));
        let mut shards = duelling_shards(&duel, 8, true);
        let mut counts = (0, 0);
        let mut state = 0;
        while state >> 32 < 3 {
            state = round_at(&duel, &mut shards, &mut counts, 0.8);
        }
        assert!(state & 0xFFFF > DUEL_STEP, "jumped: {state:#x}");
        // The base each epoch once the cache stopped hitting.
        let mut bases = Vec::new();
        while state >> 32 < 20 {
            let next = round_at(&duel, &mut shards, &mut counts, 0.0);
            if next >> 32 != state >> 32 {
                bases.push(next & 0xFFFF);
            }
            state = next;
        }
        assert!(
            bases.len() > 10 && bases.iter().skip(1).all(|&base| base == 0),
            "{bases:?}"
        );
    }

    /// The leader asks the simulations again only once they have run another epoch, and takes
    /// no suggestion to turn admission off in a cache of fewer than eight shards.
    #[test]
    fn the_leader_asks_once_an_epoch_of_the_simulations_and_admits_in_small_caches() {
        use crate::policy::minisim::tests::{LRU_LIKE, NONE_ADMITTING, fed, hashes, moving};
        let mut sim = fed(&moving(20, 3_000));
        sim.calibrate_for_test(NONE_ADMITTING, 1.0);
        let favoured = sim.suggest_for_test(NONE_ADMITTING).expect("a clear gain");
        let duel = Duel::with_sim(8, Some(sim));
        let mut leader = Leader::default();
        assert_eq!(leader.ask(&duel, NONE_ADMITTING), Some(favoured));
        assert_eq!(leader.ask(&duel, NONE_ADMITTING), None);
        let sim = duel.sim.as_ref().unwrap();
        let epochs = sim.lock().epochs();
        let mut more = hashes(1_000_000..);
        while sim.lock().epochs() == epochs {
            sim.lock().access(more.next().unwrap());
        }
        let current = Setting {
            window: favoured.window,
            admits: !favoured.admits,
        };
        let again = sim.lock().suggest_for_test(current);
        assert!(again.is_some());
        sim.lock().calibrate_for_test(current, 1.0);
        assert_eq!(leader.ask(&duel, current), again);
        // No admission is suggested to a cache of eight shards, not of four.
        for (shards, expected) in [(8, Some(LRU_LIKE)), (4, None)] {
            let duel = Duel::with_sim(shards, Some(MiniSim::favouring_for_test(LRU_LIKE)));
            let mut leader = Leader::default();
            assert_eq!(leader.ask(&duel, NONE_ADMITTING), expected);
        }
    }

    /// The simulations are fed only once an epoch has hit: a stream of keys never seen again
    /// pays nothing for them.
    #[test]
    fn the_simulations_are_fed_only_while_the_cache_hits() {
        let duel = Duel::with_sim(8, MiniSim::new(65_536));
        let mut shards = duelling_shards(&duel, 8, true);
        let mut counts = (0, 0);
        let drains = std::cell::Cell::new(0);
        let feed = |shard: &Climber| shard.feed_models(|_, _| drains.set(drains.get() + 1));
        while round_at(&duel, &mut shards, &mut counts, 0.0) >> 32 < 3 {}
        feed(&shards[1]);
        assert_eq!(drains.get(), 0);
        while round_at(&duel, &mut shards, &mut counts, 0.5) >> 32 < 5 {}
        feed(&shards[1]);
        assert_eq!(drains.get(), 1);
    }

    /// A jump takes the simulations' admission verdict too, for a first rest, and drops the
    /// evidence and any test in progress; a jump that keeps the verdict leaves its rest alone.
    #[test]
    fn a_jump_takes_the_admission_verdict_of_the_favoured_setting() {
        use crate::policy::minisim::tests::{LRU_LIKE, NONE_ADMITTING};
        let mut leader = Leader::default();
        leader.admission.epochs = 3;
        (leader.evidence.sum, leader.evidence.variance) = (5.0, 9.0);
        leader.rest = 5;
        assert_eq!(leader.jump(LRU_LIKE), ADMISSION_OFF | LRU_LIKE.window);
        assert!(leader.admission.rests_off());
        assert_eq!(
            (leader.admission.rest, leader.admission.epochs),
            (ADMISSION_REST.0, 0)
        );
        assert_eq!((leader.rest, leader.evidence.sum), (0, 0.0));
        // Admission back on, at a window of zero.
        assert_eq!(leader.jump(NONE_ADMITTING), 0);
        assert!(!leader.admission.rests_off() && leader.admission.rest == ADMISSION_REST.0);
        // Without admission at a smaller window: the base the admission duel needs, at least.
        let small = Setting {
            window: DUEL_STEP,
            admits: false,
        };
        assert_eq!(leader.jump(small), ADMISSION_OFF | ADMISSION_MIN_BASE);
        leader.admission.rest = 7;
        assert_eq!(leader.jump(LRU_LIKE), ADMISSION_OFF | LRU_LIKE.window);
        assert_eq!(leader.admission.rest, 7);
    }

    /// A rest ends once the hit ratio falls `DUEL_WAKE_DROP` below the recent epochs for two
    /// epochs (the working set moved on), not for a smaller fall, however long, nor for one low
    /// epoch; a fall too small to count as a change of workload (see the next test) leaves the
    /// base at zero.
    #[test]
    fn a_rest_ends_when_the_hit_ratio_falls_and_stays_down() {
        let duel = Duel::new(2);
        let mut shards = duelling_pair(&duel, true);
        let mut counts = (0, 0);
        let epoch = |state: u64| state >> 32;
        // No window pays: the duel rests, for 32 epochs.
        let mut state = round_at(&duel, &mut shards, &mut counts, 0.75);
        while epoch(state) == 0 || state & RESTING == 0 {
            state = round_at(&duel, &mut shards, &mut counts, 0.75);
            assert!(epoch(state) < 200, "never rested");
        }
        let rested = epoch(state);
        // Four epochs as before, then ten 5 points lower: the rest goes on.
        while epoch(state) < rested + 14 {
            let ratio = if epoch(state) < rested + 4 {
                0.75
            } else {
                0.70
            };
            state = round_at(&duel, &mut shards, &mut counts, ratio);
            assert_ne!(state & RESTING, 0, "woke at epoch {}", epoch(state));
        }
        // One epoch 15 points lower, then as before: the rest goes on.
        let low = epoch(state);
        while epoch(state) == low {
            state = round_at(&duel, &mut shards, &mut counts, 0.55);
        }
        while epoch(state) < low + 4 {
            state = round_at(&duel, &mut shards, &mut counts, 0.70);
            assert_ne!(state & RESTING, 0, "woke at epoch {}", epoch(state));
        }
        // 10.5 points below the recent epochs (less than a change of workload, the first low
        // epoch weighing in): the duel starts over within the second epoch that sees it (the
        // first may be partly before the fall).
        let fell = epoch(state);
        while state & RESTING != 0 {
            state = round_at(&duel, &mut shards, &mut counts, 0.595);
            assert!(
                epoch(state) <= fell + 3,
                "still resting at epoch {}",
                epoch(state)
            );
        }
        assert!(shards[0].leader.rest == 0 && shards[0].leader.backoff >= DUEL_REST.0);
        // From its base of zero: the halves' windows differ again.
        assert_eq!(state & 0xFFFF, 0);
        round_at(&duel, &mut shards, &mut counts, 0.595);
        assert_ne!(shards[0].window(), shards[1].window());
    }

    /// The hit ratio falls 25 points and stays down: the duel starts over from a base of
    /// `CHANGE_BASE`, rest or not; a fall of 5 points, however long, changes nothing.
    #[test]
    fn a_workload_change_starts_the_duel_over_from_a_large_window() {
        let duel = Duel::new(2);
        let mut shards = duelling_pair(&duel, true);
        let mut counts = (0, 0);
        let (epoch, base) = (|state: u64| state >> 32, |state: u64| state & 0xFFFF);
        let mut state = round_at(&duel, &mut shards, &mut counts, 0.75);
        while epoch(state) < 40 {
            state = round_at(&duel, &mut shards, &mut counts, 0.75);
        }
        // No window pays, so the duel is at a base of zero (resting, by now).
        assert_eq!(base(state), 0);
        while epoch(state) < 80 {
            state = round_at(&duel, &mut shards, &mut counts, 0.70);
            assert_eq!(base(state), 0, "moved at epoch {}", epoch(state));
        }
        let fell = epoch(state);
        while base(state) < CHANGE_BASE {
            state = round_at(&duel, &mut shards, &mut counts, 0.45);
            assert!(
                epoch(state) <= fell + 3,
                "no change found by epoch {}",
                epoch(state)
            );
        }
        assert_eq!((base(state), state & RESTING), (CHANGE_BASE, 0));

        // Until the leader's shard has evicted, no window costs anything, and no fall is a
        // change.
        let duel = Duel::new(2);
        let mut shards = duelling_pair(&duel, false);
        let mut counts = (0, 0);
        for epoch in 0..120 {
            let ratio = if epoch < 40 { 0.75 } else { 0.45 };
            while round_at(&duel, &mut shards, &mut counts, ratio) >> 32 <= epoch {}
        }
        assert_eq!(duel.state.load(Ordering::Relaxed) & 0xFFFF, 0);
    }

    /// What counts as a change of workload: a fall that stays (two epochs), of 12.5 points or
    /// more once the first low epoch has weighed in on the average; not a single low epoch, not
    /// a smaller fall, and not the lower level the workload then keeps.
    #[test]
    fn a_change_of_workload_is_a_fall_that_stays_and_counts_once() {
        let changes = |ratios: &[f64]| {
            let mut leader = Leader::default();
            ratios
                .iter()
                .enumerate()
                .filter(|&(_, &ratio)| leader.workload_changed(ratio, true))
                .map(|(epoch, _)| epoch)
                .collect::<Vec<_>>()
        };
        let steady = [0.75; 20];
        let then = |tail: &[f64]| [&steady[..], tail].concat();
        assert_eq!(
            changes(&then(&[0.45; 20])),
            [21],
            "found once, at its second epoch"
        );
        assert_eq!(changes(&then(&[0.45, 0.75, 0.45, 0.75])), [] as [usize; 0]);
        assert_eq!(changes(&then(&[0.63; 20])), [] as [usize; 0], "12 points");
        assert_eq!(changes(&then(&[0.62; 20])), [21], "13 points");
    }

    /// A change of workload around the fill (see [`Leader::workload_changed`]): a fall that
    /// begins before the leader's shard is full and goes on after is a change, once the shard is
    /// full; one found wholly before counts at the first epoch of a full shard, once; the climb
    /// of a cold cache neither hides a later fall nor delays it.
    #[test]
    fn a_change_of_workload_around_the_fill_counts_once_the_shard_is_full() {
        // `(ratio, full)` per epoch: the epochs at which a change is found.
        let changes = |epochs: &[(f64, bool)]| {
            let mut leader = Leader::default();
            epochs
                .iter()
                .enumerate()
                .filter(|&(_, &(ratio, full))| leader.workload_changed(ratio, full))
                .map(|(epoch, _)| epoch)
                .collect::<Vec<_>>()
        };
        let climb = [0.50, 0.70, 0.80, 0.90, 0.95].map(|r| (r, false));
        let then = |tail: &[(f64, bool)]| [&climb[..], tail].concat();
        assert_eq!(
            changes(&then(&[
                (0.82, false),
                (0.71, true),
                (0.75, true),
                (0.80, true)
            ])),
            [6],
            "a fall from the epoch before the fill: found at its second epoch, the first full one"
        );
        assert_eq!(
            changes(&then(&[
                (0.80, false),
                (0.70, false),
                (0.72, false),
                (0.74, true)
            ])),
            [8],
            "a fall wholly before the fill: found at the first full epoch"
        );
        assert_eq!(
            changes(&then(&[
                (0.97, true),
                (0.96, true),
                (0.80, true),
                (0.78, true)
            ])),
            [8],
            "no fall under way at the fill: judged from the first full epoch, as ever"
        );
        // A climb that ends at the fill: carried over into the full shard's epochs, the
        // reference would trail the next ones, and the fall at the end would count an epoch late.
        let slow = [0.50, 0.70, 0.80].map(|r| (r, false));
        let full = [(0.88, true); 4];
        let fall = [(0.77, true), (0.55, true), (0.60, true)];
        assert_eq!(changes(&[&slow[..], &full, &fall].concat()), [8]);
        // A change held from before the fill, and another fall under way that the first full
        // epoch finds: one change.
        let held_and_found = [
            (0.70, false),
            (0.70, false),
            (0.55, false),
            (0.45, true),
            (0.45, true),
            (0.45, true),
        ];
        assert_eq!(changes(&then(&held_and_found)), [8], "counted once");
        // Never full: no change, whatever the epochs do.
        assert_eq!(
            changes(&then(&[(0.40, false); 10])),
            [] as [usize; 0],
            "not before the fill"
        );
    }

    /// A cleared cache fills again: a change found while it refilled counts at its first full
    /// epoch, not one found before the clear.
    #[test]
    fn a_clear_forgets_a_change_found_before_it() {
        let duel = Duel::new(2);
        let mut shards = duelling_pair(&duel, false);
        let mut counts = (0, 0);
        let (epoch, base) = (|state: u64| state >> 32, |state: u64| state & 0xFFFF);
        let mut state = round_at(&duel, &mut shards, &mut counts, 0.75);
        while epoch(state) < 13 {
            let ratio = if epoch(state) < 10 { 0.75 } else { 0.40 };
            state = round_at(&duel, &mut shards, &mut counts, ratio);
        }
        assert!(shards[0].leader.change_at_fill, "the fall before the fill");
        shards.iter_mut().for_each(Climber::clear);
        shards.iter_mut().for_each(Climber::filled);
        let cleared = epoch(state);
        while epoch(state) < cleared + 4 {
            state = round_at(&duel, &mut shards, &mut counts, 0.40);
            assert_eq!(base(state), 0, "a change before the clear counted");
        }
    }

    /// The duel acts on a fall that began before the leader's shard was full at the first
    /// epochs of a full shard: it starts over from `CHANGE_BASE`.
    #[test]
    fn a_fall_that_begins_before_the_fill_starts_the_duel_over() {
        let duel = Duel::new(2);
        let mut shards = duelling_pair(&duel, false);
        let mut counts = (0, 0);
        let (epoch, base) = (|state: u64| state >> 32, |state: u64| state & 0xFFFF);
        let mut state = round_at(&duel, &mut shards, &mut counts, 0.90);
        while epoch(state) < 10 {
            state = round_at(&duel, &mut shards, &mut counts, 0.90);
        }
        let fell = epoch(state);
        while epoch(state) == fell {
            state = round_at(&duel, &mut shards, &mut counts, 0.65);
        }
        assert_eq!(base(state), 0, "not full: no change acted on");
        shards.iter_mut().for_each(Climber::filled);
        while epoch(state) < fell + 3 {
            state = round_at(&duel, &mut shards, &mut counts, 0.65);
        }
        assert_eq!(base(state), CHANGE_BASE, "found once full");
    }

    /// Two full shards run 40 epochs hitting 75 %, then a workload that hits 50 % for
    /// `low` epochs, then 75 % again, with admission off in every shard (a verdict at rest) or on;
    /// returns how many forgets each shard took.
    fn forgets_taken(admission_off: bool, low: usize) -> [usize; 2] {
        let duel = Duel::new(2);
        let mut shards = duelling_pair(&duel, true);
        if admission_off {
            shards[0].leader.admission = AdmissionDuel {
                off: true,
                rest: 1_000,
                ..AdmissionDuel::default()
            };
        }
        let (mut hits, mut misses) = (0u64, 0u64);
        let mut taken = [0; 2];
        // An epoch is 2,048 lookups of a shard: eight rounds of 64 new keys a shard, each new
        // key with three hits elsewhere (75 %) or one (50 %).
        let epochs = [vec![3; 40], vec![1; low], vec![3; 20]].concat();
        for hits_per_miss in epochs {
            for _ in 0..32 / (hits_per_miss + 1) {
                for (i, shard) in shards.iter_mut().enumerate() {
                    for _ in 0..64 {
                        (hits, misses) = (hits + hits_per_miss, misses + 1);
                        shard.new_key(|| (hits, misses));
                    }
                    taken[i] += usize::from(shard.take_forget());
                }
            }
        }
        taken
    }

    /// A fall of the hit ratio while no shard admits makes every shard forget its main queue's
    /// hits once (the fall's first epoch), whether the fall stays (a change of workload) or not;
    /// with admission on, nothing is forgotten.
    #[test]
    fn a_fall_without_admission_makes_every_shard_forget_once() {
        assert_eq!(forgets_taken(true, 1), [1, 1]);
        assert_eq!(forgets_taken(true, 3), [1, 1]);
        assert_eq!(forgets_taken(false, 3), [0, 0]);
    }

    /// Only a verdict for no admission counts as no shard admitting: in a test, half the shards
    /// admit, whichever half runs without.
    #[test]
    fn no_shard_admits_only_after_a_verdict_for_no_admission() {
        assert!(no_shard_admits(7 << 32 | ADMISSION_OFF | RESTING | 4_096));
        assert!(!no_shard_admits(7 << 32));
        assert!(!no_shard_admits(7 << 32 | ADMISSION_TEST));
        assert!(!no_shard_admits(7 << 32 | ADMISSION_TEST | ADMISSION_OFF));
    }

    /// A stream of keys never seen again: no shard keeps a window (every miss would be stored
    /// for nothing), and none duels, until the cache hits.
    #[test]
    fn a_duel_stops_while_the_cache_hits_nothing() {
        let duel = Duel::new(2);
        let mut shards = duelling_pair(&duel, false);
        let mut misses = 0u64;
        for _ in 0..200 {
            for shard in shards.iter_mut() {
                for _ in 0..64 {
                    misses += 1;
                    shard.new_key(|| (0, misses));
                }
            }
        }
        let state = duel.state.load(Ordering::Relaxed);
        assert_eq!((state & RESTING, state & 0xFFFF), (RESTING, 0));
        assert!(shards.iter().all(|c| c.window() == 0));
    }

    /// Ends two epochs in which all shards ran alike (no test: the base was too small), the
    /// first pairs of shards in two missing `first` and the others `second`.
    fn run_alike(test: &mut AdmissionDuel, (first, second): (f64, f64)) {
        for _ in 0..ADMISSION_ALIKE_EPOCHS {
            assert_eq!(
                test.end_epoch(EpochMisses::Alike { first, second }, false),
                0
            );
        }
    }

    /// Runs a test whose half without admission misses `off` an epoch once it has settled
    /// (twice as much in a block's first epoch, while the main queue still holds what the other
    /// half admitted: not counted), the other 1,000; returns each epoch's phase (whether the
    /// first pairs had admission on) and the flags after the verdict.
    fn run_test(test: &mut AdmissionDuel, off: f64) -> (Vec<bool>, u64) {
        let mut flags = test.end_epoch(EpochMisses::Unknown, true);
        let mut phases = Vec::new();
        while flags & ADMISSION_TEST != 0 {
            let settling = phases.len() % ADMISSION_BLOCK as usize == 0;
            phases.push(flags & ADMISSION_OFF != 0);
            assert!(phases.len() <= 100, "no verdict");
            let off = if settling { 2.0 * off } else { off };
            flags = test.end_epoch(EpochMisses::Tested { off, on: 1_000.0 }, true);
        }
        (phases, flags)
    }

    /// The half without admission misses 10 % less once it has settled: the halves hold for a
    /// block each, and the verdict for no admission comes only once each has had its block (a
    /// whole cycle).
    #[test]
    fn a_small_lead_without_admission_waits_for_a_whole_cycle() {
        let mut test = AdmissionDuel::default();
        run_alike(&mut test, (1_000.0, 1_000.0));
        let (phases, flags) = run_test(&mut test, 900.0);
        let block = ADMISSION_BLOCK as usize;
        assert_eq!(phases.len(), 2 * block, "{phases:?}");
        assert!(phases[..block].iter().all(|&p| !p) && phases[block..].iter().all(|&p| p));
        // Then every shard runs without admission, for a rest.
        assert_eq!(flags, ADMISSION_OFF);
        assert_eq!(test.rest, ADMISSION_REST.0);
        for _ in 1..ADMISSION_REST.0 {
            assert_eq!(test.end_epoch(EpochMisses::Unknown, true), ADMISSION_OFF);
        }
        assert_eq!(
            test.end_epoch(EpochMisses::Unknown, true),
            ADMISSION_TEST,
            "tests again"
        );
    }

    /// The half without admission misses 35 % less: after the first block, if the pairs were
    /// seen to miss alike while they ran alike; else only after the whole cycle. And a lead of
    /// 20 % (9 deviations of the block's misses) against a bias measured on two epochs of 100
    /// misses, which is itself that uncertain, waits for the whole cycle too.
    #[test]
    fn a_clear_lead_without_admission_ends_the_test_after_one_block_once_the_bias_is_known() {
        let block = ADMISSION_BLOCK as usize;
        for (alike, off, epochs) in [
            (Some(1_000.0), 650.0, block),
            (None, 650.0, 2 * block),
            (Some(50.0), 800.0, 2 * block),
        ] {
            let mut test = AdmissionDuel::default();
            if let Some(misses) = alike {
                run_alike(&mut test, (misses, misses));
            }
            let (phases, flags) = run_test(&mut test, off);
            assert_eq!(phases.len(), epochs, "alike {alike:?}: {phases:?}");
            assert_eq!((flags, test.rest), (ADMISSION_OFF, ADMISSION_REST.0));
        }
    }

    /// The half without admission misses 10 % more: the test ends early, for admission.
    #[test]
    fn an_admission_test_ends_early_when_admission_clearly_pays() {
        let mut test = AdmissionDuel::default();
        assert_eq!(test.end_epoch(EpochMisses::Unknown, true), ADMISSION_TEST);
        let mut epochs = 1;
        while test.end_epoch(
            EpochMisses::Tested {
                off: 1_100.0,
                on: 1_000.0,
            },
            true,
        ) & ADMISSION_TEST
            != 0
        {
            epochs += 1;
        }
        assert!(epochs < ADMISSION_BLOCK, "{epochs} epochs");
        assert!(!test.off && test.rest == ADMISSION_REST.0);
    }

    /// One pair of shards misses 300 more whatever it runs (30 %, and 12 deviations over the
    /// first block): a bias that favours no admission in one block and admission in the next.
    /// No verdict for no admission comes of it: the whole cycle cancels it, and the first block
    /// takes off what the pairs showed while they ran alike.
    #[test]
    fn an_admission_test_cancels_a_bias_between_its_halves() {
        let mut test = AdmissionDuel::default();
        run_alike(&mut test, (1_000.0, 1_300.0));
        let mut flags = test.end_epoch(EpochMisses::Unknown, true);
        for epoch in 0..2_000 {
            assert_ne!(flags, ADMISSION_OFF, "epoch {epoch}");
            let misses = if flags & ADMISSION_TEST == 0 {
                EpochMisses::Alike {
                    first: 1_000.0,
                    second: 1_300.0,
                }
            } else if flags & ADMISSION_OFF == 0 {
                // The biased pair has admission.
                EpochMisses::Tested {
                    off: 1_000.0,
                    on: 1_300.0,
                }
            } else {
                EpochMisses::Tested {
                    off: 1_300.0,
                    on: 1_000.0,
                }
            };
            flags = test.end_epoch(misses, true);
        }
    }

    /// A verdict holds for its whole rest even when the window's base falls below
    /// `ADMISSION_MIN_BASE` (an ineligible epoch); once the rest is over, an ineligible epoch
    /// turns admission back on and starts the duel over.
    #[test]
    fn an_admission_verdict_holds_for_its_rest_whatever_the_window_does() {
        let mut test = AdmissionDuel {
            off: true,
            rest: 3,
            backoff: ADMISSION_REST.0,
            ..AdmissionDuel::default()
        };
        for left in [2, 1] {
            assert_eq!(test.end_epoch(EpochMisses::Unknown, false), ADMISSION_OFF);
            assert_eq!(test.rest, left);
        }
        assert_eq!(
            test.end_epoch(EpochMisses::Unknown, false),
            0,
            "admission back on"
        );
        assert!(!test.off && test.backoff == 0, "{test:?}");
        assert_eq!(
            test.end_epoch(EpochMisses::Unknown, true),
            ADMISSION_TEST,
            "a new test"
        );
    }

    /// Two cycles without a verdict keep the last one (admission, at first) and rest on it; a
    /// second verdict like the last doubles the rest, one that turns round starts over.
    #[test]
    fn an_unclear_admission_test_keeps_the_last_verdict_and_repeats_double_the_rest() {
        let mut test = AdmissionDuel::default();
        let mut flags = test.end_epoch(EpochMisses::Unknown, true);
        let mut epochs = 0;
        while test.rest == 0 {
            assert!(
                epochs < 2 * ADMISSION_BLOCK * ADMISSION_CYCLES,
                "no verdict"
            );
            assert_ne!(flags & ADMISSION_TEST, 0, "epoch {epochs}");
            flags = test.end_epoch(
                EpochMisses::Tested {
                    off: 1_000.0,
                    on: 1_000.0,
                },
                true,
            );
            epochs += 1;
        }
        assert_eq!(epochs, 2 * ADMISSION_BLOCK * ADMISSION_CYCLES);
        assert_eq!((test.off, test.rest, flags), (false, ADMISSION_REST.0, 0));
        // No admission, found twice in a row: 64 epochs, then 128.
        let mut rests = Vec::new();
        for _ in 0..2 {
            while test.rest > 0 {
                flags = test.end_epoch(EpochMisses::Unknown, true);
            }
            for epoch in 0.. {
                if test.rest > 0 {
                    break;
                }
                assert!(epoch < 2 * ADMISSION_BLOCK, "no verdict in a cycle");
                let off = if flags & ADMISSION_OFF == 0 {
                    1_000.0
                } else {
                    700.0
                };
                flags = test.end_epoch(EpochMisses::Tested { off, on: 1_000.0 }, true);
            }
            rests.push((test.off, test.rest));
        }
        assert_eq!(
            rests,
            [(true, ADMISSION_REST.0), (true, 2 * ADMISSION_REST.0)]
        );
        // An unclear test now keeps no admission, and doubles the rest again.
        while test.rest > 0 {
            test.end_epoch(EpochMisses::Unknown, true);
        }
        for epoch in 0.. {
            if test.rest > 0 {
                break;
            }
            assert!(epoch < 2 * ADMISSION_BLOCK * ADMISSION_CYCLES, "no verdict");
            test.end_epoch(
                EpochMisses::Tested {
                    off: 1_000.0,
                    on: 1_000.0,
                },
                true,
            );
        }
        assert_eq!((test.off, test.rest), (true, 4 * ADMISSION_REST.0));
    }

    /// The `shards` of a 64k-entry cache, the window's duel at `base`, after `rounds` rounds in
    /// in which each shard misses `READ_EVERY` times if it admits, and every other round if not.
    /// (So each shard takes the duel's state once a round at most, and the leader, which moves
    /// it, goes last: at the end of a round every shard runs as the same state says.)
    fn admission_duel(
        shards: usize,
        base: u64,
        rounds: usize,
        full: bool,
    ) -> (Vec<Climber>, usize) {
        let duel = Duel::new(shards);
        let mut shards = duelling_shards(&duel, shards, full);
        shards[0].leader.started = true;
        duel.state.store(base, Ordering::Relaxed);
        let (mut hits, mut misses) = (0u64, 0u64);
        let mut patterns = std::collections::HashSet::new();
        for round in 0..rounds {
            for shard in shards.iter_mut().rev() {
                let new_keys = if shard.admits() || round % 2 == 0 {
                    READ_EVERY
                } else {
                    0
                };
                for _ in 0..new_keys {
                    (hits, misses) = (hits + 3, misses + 1);
                    shard.new_key(|| (hits, misses));
                }
            }
            patterns.insert(shards.iter().map(Climber::admits).collect::<Vec<_>>());
        }
        // Whenever some shards run without admission and some with it, it is a pair in two.
        let tests: Vec<_> = patterns
            .iter()
            .filter(|p| p.contains(&true) && p.contains(&false))
            .collect();
        for pattern in &tests {
            assert!(
                pattern.chunks(2).all(|pair| pair[0] == pair[1])
                    && pattern.chunks(4).all(|four| four[0] != four[2]),
                "{pattern:?}"
            );
        }
        (shards, tests.len())
    }

    /// Eight shards of a full cache, rounds of lookups in which each misses `misses(index,
    /// admits)` times (at most `READ_EVERY`, so each takes the duel's state once a round): first
    /// `alike` rounds at a base too small to test admission (every shard admits), then at a
    /// quarter of the capacity until every shard runs without admission. Returns the epochs
    /// the test took to find for no admission (`None`: not in 1,000 rounds).
    fn alike_then_test(alike: usize, misses: impl Fn(usize, bool) -> u32) -> Option<u64> {
        let duel = Duel::new(8);
        let mut shards = duelling_shards(&duel, 8, true);
        shards[0].leader.started = true;
        let (mut hits, mut lookups) = (0u64, 0u64);
        let mut round = |shards: &mut [Climber]| {
            for (index, shard) in shards.iter_mut().enumerate().rev() {
                for _ in 0..misses(index, shard.admits()) {
                    (hits, lookups) = (hits + 3, lookups + 1);
                    shard.new_key(|| (hits, lookups));
                }
            }
        };
        for _ in 0..alike {
            round(&mut shards);
            // (Held below the test's base, whatever the window's duel finds.)
            let state = duel.state.load(Ordering::Relaxed);
            duel.state.store(state & !0xFFFF, Ordering::Relaxed);
        }
        assert!(shards[0].leader.admission.alike_epochs >= ADMISSION_ALIKE_EPOCHS);
        // (The window's duel may have gone to rest at zero.)
        shards[0].leader.rest = 0;
        let start = duel.state.load(Ordering::Relaxed) >> 32;
        duel.state
            .store((start << 32) | (4 * DUEL_STEP), Ordering::Relaxed);
        for _ in 0..1_000 {
            round(&mut shards);
            if shards.iter().all(|c| !c.admits()) {
                return Some((duel.state.load(Ordering::Relaxed) >> 32) - start);
            }
        }
        None
    }

    /// Through the cache's shards: a clear lead without admission ends the test after its
    /// first block (the halves' misses in the epochs alike reach it), and a bias between the
    /// pairs seen in those epochs (the first pairs in two miss a quarter less whatever they
    /// run, which in the first block looks like a lead without admission) decides nothing.
    #[test]
    fn shards_measure_their_pairs_bias_while_they_run_alike() {
        let lead = alike_then_test(400, |_, admits| if admits { 24 } else { 12 });
        assert!(
            lead.is_some_and(|epochs| epochs <= u64::from(ADMISSION_BLOCK) + 1),
            "{lead:?}"
        );
        let bias = alike_then_test(400, |index, _| if (index / 2) % 2 == 0 { 24 } else { 32 });
        assert_eq!(bias, None);
    }

    /// The epochs before the leader's shard is full tell nothing of the pairs' bias (no shard
    /// has evicted, whatever it runs): they are not counted as alike, the epochs after are.
    #[test]
    fn the_pairs_bias_is_measured_only_once_the_leaders_shard_is_full() {
        let duel = Duel::new(8);
        let mut shards = duelling_shards(&duel, 8, false);
        shards[0].leader.started = true;
        let (mut hits, mut lookups) = (0u64, 0u64);
        let mut rounds = |shards: &mut [Climber], rounds: usize| {
            for _ in 0..rounds {
                for shard in shards.iter_mut().rev() {
                    for _ in 0..READ_EVERY {
                        (hits, lookups) = (hits + 3, lookups + 1);
                        shard.new_key(|| (hits, lookups));
                    }
                }
            }
        };
        rounds(&mut shards, 400);
        assert!(
            duel.state.load(Ordering::Relaxed) >> 32 > 4,
            "epochs went by"
        );
        assert_eq!(shards[0].leader.admission.alike_epochs, 0);
        shards.iter_mut().for_each(Climber::filled);
        rounds(&mut shards, 400);
        assert!(shards[0].leader.admission.alike_epochs >= ADMISSION_ALIKE_EPOCHS);
    }

    /// Eight shards at the least base that tests admission, where the larger window's half
    /// misses more (the window's duel finds for a smaller one) and no admission misses less:
    /// the base stays until the test's verdict, no admission, and steps down after it.
    #[test]
    fn an_admission_test_holds_the_base_until_its_verdict() {
        let duel = Duel::new(8);
        let mut shards = duelling_shards(&duel, 8, true);
        shards[0].leader.started = true;
        duel.state.store(ADMISSION_MIN_BASE, Ordering::Relaxed);
        let (mut hits, mut misses) = (0u64, 0u64);
        let mut verdict = None;
        for round in 0..5_000 {
            let windows: Vec<u64> = shards.iter().map(Climber::window).collect();
            let largest = windows.iter().copied().max().unwrap_or(0);
            let smallest = windows.iter().copied().min().unwrap_or(0);
            // Backwards, so that the leader takes the state last (see `admission_duel`).
            for (shard, window) in shards.iter_mut().zip(windows).rev() {
                let larger = window == largest && largest > smallest;
                let new_keys = match (shard.admits(), larger) {
                    (true, true) => 32,
                    (true, false) => 24,
                    (false, true) => 16,
                    (false, false) => 8,
                };
                for _ in 0..new_keys {
                    (hits, misses) = (hits + 3, misses + 1);
                    shard.new_key(|| (hits, misses));
                }
            }
            let base = duel.state.load(Ordering::Relaxed) & 0xFFFF;
            if verdict.is_none() && shards.iter().all(|c| !c.admits()) {
                assert_eq!(base, ADMISSION_MIN_BASE, "round {round}");
                verdict = Some(round);
            }
            if verdict.is_some() && base < ADMISSION_MIN_BASE {
                assert!(shards.iter().all(|c| !c.admits()), "the verdict holds");
                return;
            }
        }
        panic!("verdict after round {verdict:?}, then no step down");
    }

    /// Eight shards of a full cache, in rounds of lookups: first every shard alike at a base too
    /// small to test admission (the pairs' bias is measured then), then at 12.5 % or more, where
    /// the admission duel tests. A round adds `hits(test_epoch)` hits, and `READ_EVERY` misses for
    /// each shard that `misses(test_epoch, admits, round)` picks (so that each shard takes the
    /// duel's state at most once a round), where `test_epoch` counts the epochs of the admission
    /// test under way (`None` between tests). Returns the duel's state after each round from the
    /// first test's start until `after` epochs past it.
    fn admission_test_states(
        hits: impl Fn(Option<u64>) -> u64,
        misses: impl Fn(Option<u64>, bool, usize) -> bool,
        after: u64,
    ) -> Vec<u64> {
        let duel = Duel::new(8);
        let mut shards = duelling_shards(&duel, 8, true);
        shards[0].leader.started = true;
        let (mut hit_count, mut miss_count) = (0u64, 0u64);
        let (mut first, mut start, mut was_testing) = (None, 0, false);
        let mut states = Vec::new();
        for round in 0..100_000 {
            let state = duel.state.load(Ordering::Relaxed);
            let epoch = state >> 32;
            if round == 400 {
                // (The window's duel may have gone to rest at zero.)
                shards[0].leader.rest = 0;
            }
            // Below the base that tests admission at first, then at least there (as if the
            // window's duel found it).
            let base = if round < 400 {
                0
            } else {
                (state & 0xFFFF).max(ADMISSION_MIN_BASE)
            };
            duel.state.store(state & !0xFFFF | base, Ordering::Relaxed);
            let testing = state & ADMISSION_TEST != 0;
            if testing && !was_testing {
                start = epoch;
                first = first.or(Some(epoch));
            }
            was_testing = testing;
            let test_epoch = testing.then(|| epoch - start);
            if first.is_some_and(|first| epoch >= first + after) {
                return states;
            }
            hit_count += hits(test_epoch);
            // Backwards, so that the leader takes the state last (see `admission_duel`).
            for shard in shards.iter_mut().rev() {
                if misses(test_epoch, shard.admits(), round) {
                    for _ in 0..READ_EVERY {
                        miss_count += 1;
                        shard.new_key(|| (hit_count, miss_count));
                    }
                }
            }
            if first.is_some() {
                states.push(duel.state.load(Ordering::Relaxed));
            }
        }
        panic!("no admission test in 100,000 rounds");
    }

    /// Each admission test in `states` (from `admission_test_states`) that reached a verdict:
    /// its epochs, and whether admission is off after it.
    fn test_verdicts(states: &[u64]) -> Vec<(u64, bool)> {
        let mut verdicts = Vec::new();
        let mut start = None;
        for &state in states {
            let epoch = state >> 32;
            match (start, state & ADMISSION_TEST != 0) {
                (None, true) => start = Some(epoch),
                (Some(began), false) => {
                    verdicts.push((epoch - began, no_shard_admits(state)));
                    start = None;
                }
                _ => {}
            }
        }
        verdicts
    }

    /// An admission test whose pairs without admission miss an eighth more than the others,
    /// but in its first two counted epochs, which dip (the hit ratio falls from 76 % to 62 % and
    /// stays down two epochs: a change of workload) and in which they miss a quarter as much:
    /// the dips do not count, and the test finds for admission at its first epoch after them.
    /// (Counted, they find for no admission; and the second of them, the one that makes the
    /// change, is judged against the reference from before the change, as the first.)
    #[test]
    fn an_admission_test_leaves_out_the_epochs_that_dip() {
        let dips = |epoch: Option<u64>| matches!(epoch, Some(1 | 2));
        let states = admission_test_states(
            |epoch| if dips(epoch) { 256 } else { 768 },
            |epoch, admits, round| match (dips(epoch), admits) {
                (false, true) => round % 8 != 0,
                (false, false) => true,
                (true, true) => true,
                (true, false) => round % 4 == 0,
            },
            8,
        );
        assert_eq!(test_verdicts(&states), [(4, false)]);
        assert!(states.iter().all(|&state| !no_shard_admits(state)));
    }

    /// An admission test whose pairs without admission cost the cache 8 points of hit ratio (from
    /// 75 % to 67 %): the test's own cost is not a dip, and it finds for admission at its first
    /// counted epoch.
    #[test]
    fn an_admission_tests_own_cost_is_not_a_dip() {
        let states =
            admission_test_states(|_| 384, |_, admits, round| !admits || round % 2 == 0, 4);
        assert_eq!(test_verdicts(&states), [(2, false)]);
    }

    /// The same once a test has found for no admission: in the next test the tested pairs are
    /// those that admit, whose cost (8 points) is not a dip either.
    #[test]
    fn a_test_after_a_verdict_for_no_admission_counts_its_admitting_pairs_cost() {
        let states =
            admission_test_states(|_| 384, |_, admits, round| admits || round % 2 == 0, 120);
        assert_eq!(test_verdicts(&states), [(5, true), (5, true)]);
    }

    /// Eight shards at a window of a quarter of the capacity, where no admission misses less:
    /// after a test, every shard runs without admission.
    #[test]
    fn a_duel_turns_admission_off_where_no_admission_misses_less() {
        let (shards, tests) = admission_duel(8, 4 * DUEL_STEP, 800, true);
        assert_eq!(tests, 2, "both pairs in two ran without admission");
        let admits: Vec<bool> = shards.iter().map(Climber::admits).collect();
        assert_eq!(admits, [false; 8]);
    }

    /// The same at a window below `ADMISSION_MIN_BASE`, or with four shards: no test, and every
    /// shard keeps admission.
    #[test]
    fn a_duel_tests_admission_only_at_a_large_window_with_eight_shards() {
        for (shards, base, full) in [
            (8, ADMISSION_MIN_BASE - DUEL_STEP, true),
            (4, 4 * DUEL_STEP, true),
            // Nor before the leader's shard is full (no window has cost anything yet).
            (8, 4 * DUEL_STEP, false),
        ] {
            let (shards, tests) = admission_duel(shards, base, 800, full);
            assert_eq!(tests, 0);
            assert!(shards.iter().all(Climber::admits));
        }
    }

    /// The mean window over a cache's shards.
    fn mean_window(cache: &crate::Cache<u64, u64, ahash::RandomState>) -> u64 {
        let windows: Vec<u64> = cache
            .shards
            .iter()
            .map(|cell| cell.core.lock().writer.window_for_test())
            .collect();
        windows.iter().sum::<u64>() / windows.len() as u64
    }

    /// Cache-aside: a lookup, and a save on a miss.
    fn replay(cache: &crate::Cache<u64, u64, ahash::RandomState>, keys: impl Iterator<Item = u64>) {
        for k in keys {
            if let crate::Lookup::Miss(lease) = cache.get_or_lease(&k) {
                let _ = cache.save_with_lease(k, k, lease);
            }
        }
    }

    /// A cache's windows grow on a trace where recency predicts the next access (a sliding set
    /// of recent keys, each read a few times and then never again, which admission at once
    /// refuses) and shrink again on one where frequency does (a hot set that needs most of the
    /// main queue, among one-time keys). A fixed window fails one of the two. (With a hot set
    /// the main queue holds whatever the window, the window costs nothing and the duel leaves
    /// it.)
    #[test]
    fn a_caches_window_grows_on_recency_and_shrinks_on_frequency() {
        let cache: crate::Cache<u64, u64, _> = crate::Cache::builder()
            .max_capacity(1_000)
            .hasher(ahash::RandomState::with_seeds(1, 2, 3, 4))
            .build();
        let shard_capacity = 1_000 / cache.shards.len() as u64;
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Recency: the key at time t is one of the 300 newest, t / 2 - (0..300), so each is read
        // about twice, hundreds of accesses apart.
        replay(
            &cache,
            (0..240_000u64).map(|t| (t / 2 + 300) - random() % 300),
        );
        // Most of what 75 keys a shard (300 over 4 shards) need.
        let grown = mean_window(&cache);
        assert_eq!(cache.shards.len(), 4);
        assert!(
            grown >= shard_capacity / 6,
            "window {grown} of {shard_capacity}"
        );
        // Frequency: half the accesses go to 800 hot keys, half to keys never seen again.
        let mut fresh = 1u64 << 40;
        replay(
            &cache,
            (0..480_000u64).map(|t| {
                if t % 2 == 0 {
                    (1 << 50) + random() % 800
                } else {
                    fresh += 1;
                    fresh
                }
            }),
        );
        let shrunk = mean_window(&cache);
        assert!(shrunk <= grown * 2 / 3, "window {shrunk}, was {grown}");
    }

    /// A cache of 4,096 entries in four shards, which runs miniature simulations (of 256
    /// entries, fed one lookup in 16); and the epochs they have run after cache-aside over `keys`.
    fn sim_epochs_after(keys: impl Iterator<Item = u64>) -> u64 {
        let cache: crate::Cache<u64, u64, _> = crate::Cache::builder()
            .max_capacity(4_096)
            .shards(4)
            .hasher(ahash::RandomState::with_seeds(1, 2, 3, 4))
            .build();
        replay(&cache, keys);
        let epochs: Vec<Option<u64>> = cache
            .shards
            .iter()
            .map(|cell| cell.core.lock().writer.sim_epochs_for_test())
            .collect();
        // One simulation, shared by every shard.
        assert!(epochs.iter().all(|&e| e == epochs[0]), "{epochs:?}");
        epochs[0].expect("a cache of several shards and 4,096 entries runs models")
    }

    /// A cache's lookups reach its models: the lookups its readers sample, drained by its
    /// writers as they store new keys. Over 100k lookups of 8k keys (half of them hits), about
    /// 6k are sampled: some twenty epochs of the models.
    #[test]
    fn a_cache_that_hits_feeds_its_sampled_lookups_to_its_models() {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let keys = (0..100_000).map(move |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % 8_192
        });
        let epochs = sim_epochs_after(keys);
        assert!(epochs >= 10, "{epochs} epochs");
    }

    /// A cache that never hits feeds its models nothing (they would miss everything too), however
    /// many of its lookups are sampled.
    #[test]
    fn a_cache_that_never_hits_feeds_its_models_nothing() {
        assert_eq!(sim_epochs_after(0..100_000), 0);
    }
}
