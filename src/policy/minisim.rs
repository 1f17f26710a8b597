//! Miniature simulations: the shards' policy replayed, at several windows and with admission or
//! without, on a spatial sample of the cache's lookups (SHARDS: Waldspurger et al., "Efficient
//! MRC Construction with SHARDS", FAST 2015; "Cache Modeling and Optimization using Miniature
//! Simulations", USENIX ATC 2017). A key is sampled when its hash has `shift` chosen bits clear,
//! and a cache of `capacity >> shift` entries fed only those keys misses about as often as the
//! whole cache fed every key; so each model below tells, within a few thousand lookups, how a
//! setting the duel has not tried would do, where the duel (see `climber.rs`) gathers that
//! evidence on the live shards, a step of 6.25 % at a time.
//!
//! The duel's leader asks [`MiniSim::suggest`] once an epoch: if a model misses clearly less than
//! the one nearest the cache's own setting (by `MARGIN`, over the recent epochs of the simulation,
//! `DECAY`; by `EARLY_MARGIN` from their second epoch after the fill until `WARM_EPOCHS`), and that
//! nearest model misses about as often as the cache itself on the same sampled lookups
//! (`CALIBRATION`: a sample can misrepresent the whole), the base window jumps there, and so does
//! the admission verdict (`Leader::jump`). The duel goes on from there on its own evidence; the
//! leader asks again once the simulations have run another epoch, so while they keep favouring a
//! setting, a step away from it is jumped back.
//!
//! Each model is a shard's policy as `shard.rs` runs it, on hashes alone: a small FIFO queue of
//! `window` entries whose head, unless it was read, faces TinyLFU admission (two counts over the
//! main queue's victim, with its unspent hits) once the main queue is full; a main queue that is
//! a CLOCK of up to three hits; a ghost (the crate's) of hashes evicted from the small queue,
//! whose return goes to the main queue by the ghost rules of `Shard::admit_ghost`; a sketch (the
//! crate's) fed as a shard feeds its own: each miss, and hits folded in when an entry leaves the
//! small queue or spends a second chance. Left out: what large shards (8,192 entries and up) do
//! otherwise (the probation pool, settling the main queue's head, a ghost hit's extra count),
//! entries promoted for room linked at the main queue's front, the forgets after a fall,
//! weights and deadlines. Faithful is what matters:
//! - models with a plain LRU main queue and admission on one count ranked a large window above
//!   none on loops, where the shards' ghost rules make none best, and cost `zigzag` 2-5 points;
//!   these put `zigzag` at 1k entries at 9.5 % with no window and 6.7 % at 75 %, the shards 9.2 %
//!   and 6.5 %;
//! - one sketch counting every sampled lookup for all the models (a third cheaper) ranked
//!   windows above none on Zipf at 1.2k-3k entries: -0.4 to -2.3 points.
//!
//! What they cost: a sampled lookup replayed through the seven models takes about 1,900
//! instructions (callgrind), paid by the writer that drains the samples (every 32 of its shard's
//! new keys, see `Climber::feed_models`), under its shard's lock (at most `MAX_DRAINED` of them
//! a drain, see `Readers::drain_samples`). One lookup in 16 is sampled at
//! 4k-8k entries, one in 256 at 64k-128k, one in 2,048 at 512k-1M: about 120, 8 and 1
//! instructions a lookup. A lookup itself pays 3 instructions (the mask's test, in
//! `Record::count`), and a sampled one two stores to its thread's record. Nothing is fed while
//! the cache hits (almost) nothing (`DUEL_MIN_RATIO`). Memory: 10-20 KB a model, 80-150 KB a
//! cache, whatever its size (models of 256-511 entries).
//! BENCHMARKS.md, section 2, has the hit ratios.

use super::{Ghost, Sketch};

/// The windows the models run, in 65,536ths of the capacity (as the duel's base), each with
/// admission; and one without admission, at a quarter (where the duel turns admission off, its
/// base is at least 12.5 %).
const WINDOWS: [u64; 6] = [0, 4_096, 8_192, 16_384, 32_768, 49_152];
const NO_ADMISSION_WINDOW: u64 = 16_384;

/// The entries a model holds: from `MIN_MODEL` up to twice it. A cache that would need models of
/// fewer entries, sampling more than one key in four, runs none (see [`MiniSim::new`]). Models of
/// 128-255 entries lost 5-6 points on the loop at 1k and 10k entries of `benches/hit_ratio.rs`: a
/// sample of a loop a little larger than the cache may fit a small model, which then finds that
/// any window does as well as none.
const MIN_MODEL: u64 = 256;

/// The fewest bits of a hash that must be clear for its key to be sampled: 2, one lookup in four
/// or fewer. A cache smaller than `MIN_MODEL << MIN_SHIFT` runs no models.
const MIN_SHIFT: u32 = 2;

/// The lowest bit of a hash the sample looks at: above those that pick a shard and a bucket.
const SAMPLE_BIT: u32 = 40;

/// How each epoch's misses weigh against the ones before: a model's score is its misses over the
/// recent epochs, each epoch's weighing `DECAY` times the next one's. Measured with the first
/// models (a plain LRU main queue, three epochs' warm-up) over the quick suite of BENCHMARKS.md:
/// at 0.5 they followed the phases of `zigzag` (a loop run forward, then back, where no window
/// wins for long) and the base jumped with each (-2.6 to -4.5 points at 1k-5k entries); mean
/// -0.013 points at 0.8, +0.025 at 0.9.
const DECAY: f64 = 0.9;

/// How much fewer misses the best model must score than the one nearest the cache's setting for
/// the base to jump: 5 %. Measured with the first models: at 10 %, mean +0.023 against +0.025.
const MARGIN: f64 = 0.05;

/// Epochs of the models after their fill before a margin of `MARGIN` suffices. Until then the
/// order the models rank in is the fill's as much as the workload's: with a margin of 5 % from
/// the third epoch, `cloudphysics.keys` at 10k entries jumped to a large window in its sixth
/// epoch and lost 2 points, `diurnal` at 20k 1.
const WARM_EPOCHS: u64 = 16;

/// The margin a suggestion needs in the epochs before `WARM_EPOCHS`, from the second one after
/// the fill: 15 %. A setting that wins by that much from the start is the workload's choice, not
/// the fill's: `bursty` at 5k entries (keys reread within a few thousand lookups) hit 24 % in
/// the two epochs after the cache filled, at a window of zero with admission, against 57 %
/// without admission, and waited 16 epochs of the models (five of the duel's) for them. Measured
/// against waiting (BENCHMARKS.md section 2): `bursty` at 5k +0.53 to +1.07 points, `kv` at 5k
/// +0.36 to +0.64; at 10 %, `diurnal` at 20k lost 1.06, and from the first epoch (with the
/// calibration below) `diurnal` at 20k jumped on one epoch's evidence and lost 2.1.
const EARLY_MARGIN: f64 = 0.15;

/// How far the miss ratio of the model nearest the cache's setting may be from the cache's own on
/// the same sampled lookups, both scored alike (`DECAY`), for the models to be trusted: two fifths
/// of it (and of at least 1 %). A sample can misrepresent the whole: of a loop a little larger than
/// the cache, the sampled keys may fit in a model, which then misses almost nothing whatever its
/// window and ranks noise (the loop of `benches/hit_ratio.rs` at 1.1k-8k entries lost 1.1-6.1
/// points to such jumps, none now). The cache's misses ride in bit 0 of each sample
/// (`Record::count`; the models see the hash with bit 0 clear, so two keys whose hashes differ
/// there alone are one key to them, negligible with a hash that spreads its bits); compared with
/// the cache's last epoch instead, the calibration failed right after a move of the working set,
/// when the epoch's misses rise at once and the scores slowly (`moving` at 20k entries jumped three
/// epochs late), which is when a jump pays. Two fifths, not one fifth: on the same lookups a sample
/// of few hot keys still misses unlike the whole (`tenants` at 20k entries held at a window of zero
/// with admission: of the 981 keys sampled one in 64, the cache missed 33 % of their lookups and
/// its model 27 %, while the cache and a full-sized model each miss 27 % of the whole trace), and
/// at a fifth the models were never trusted there (+0.67 points at two fifths, no column lower; at
/// 3/10 +0.13; the loops at 1.1k-8k entries unchanged even at a half).
const CALIBRATION: f64 = 0.4;
const MIN_CALIBRATED: f64 = 0.01;

const NIL: u32 = u32::MAX;
const SMALL: u8 = 0;
const MAIN: u8 = 1;
/// Hits a main-queue entry keeps, as a shard's slot does.
const MAX_FREQ: u8 = 3;

/// Every sampled lookup's miss or hit, replayed through the models.
#[derive(Debug)]
pub(crate) struct MiniSim {
    /// The mask a hash is sampled by: `shift` bits from `SAMPLE_BIT`, all clear.
    mask: u64,
    /// Entries a model holds.
    capacity: usize,
    models: Vec<Model>,
    /// Sampled lookups left in the current epoch (one epoch: `capacity` lookups).
    epoch_left: usize,
    /// Epochs since the first model filled, `None` before; and every epoch so far.
    warm: Option<u64>,
    epochs: u64,
    /// The lookups the scores count, weighed as they are (see `DECAY`).
    lookups: f64,
    /// The sampled lookups of each thread's record drained so far, and the last batch (see
    /// [`feed`](Self::feed)).
    drained: Vec<u64>,
    batch: Vec<u64>,
    /// The cache's own misses among the sampled lookups, this epoch and scored as a model's are
    /// (see `CALIBRATION`).
    cache_misses: u64,
    cache_score: f64,
}

/// What a model runs: a window, and whether its small queue's head faces admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Setting {
    /// In 65,536ths of the capacity.
    pub(crate) window: u64,
    pub(crate) admits: bool,
}

impl MiniSim {
    /// Models for a cache of `capacity` entries, if it is large enough for a sample of one key in
    /// four or fewer to fill models of `MIN_MODEL` entries, and bounded: an unbounded cache
    /// (`u64::MAX`) never evicts, and a sample's bits must fit above `SAMPLE_BIT`.
    pub(crate) fn new(capacity: u64) -> Option<Self> {
        let shift = (capacity / MIN_MODEL).checked_ilog2()?;
        if !(MIN_SHIFT..=64 - SAMPLE_BIT).contains(&shift) {
            return None;
        }
        let capacity = (capacity >> shift) as usize;
        let models = WINDOWS
            .iter()
            .map(|&window| Setting {
                window,
                admits: true,
            })
            .chain(std::iter::once(Setting {
                window: NO_ADMISSION_WINDOW,
                admits: false,
            }))
            .map(|setting| Model::new(capacity, setting))
            .collect();
        Some(Self {
            mask: ((1 << shift) - 1) << SAMPLE_BIT,
            capacity,
            models,
            epoch_left: capacity,
            warm: None,
            epochs: 0,
            lookups: 0.0,
            drained: Vec::new(),
            batch: Vec::new(),
            cache_misses: 0,
            cache_score: 0.0,
        })
    }

    /// The mask a lookup's hash is sampled by: sampled when `hash & mask == 0`.
    pub(crate) fn mask(&self) -> u64 {
        self.mask
    }

    /// Replays the lookups `drain` gives: it is handed each record's count of lookups drained so
    /// far, to bring up to date, and a buffer to fill (see `Readers::drain_samples`).
    pub(crate) fn feed(&mut self, drain: impl FnOnce(&mut Vec<u64>, &mut Vec<u64>)) {
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        drain(&mut self.drained, &mut batch);
        for &hash in &batch {
            self.access(hash);
        }
        self.batch = batch;
    }

    /// Replays one sampled lookup: its hash, whose bit 0 is set if the cache missed (the models
    /// ignore that bit).
    pub(crate) fn access(&mut self, sample: u64) {
        self.cache_misses += sample & 1;
        let hash = sample & !1;
        for model in &mut self.models {
            model.access(hash);
        }
        self.epoch_left -= 1;
        if self.epoch_left > 0 {
            return;
        }
        self.epoch_left = self.capacity;
        self.epochs += 1;
        match &mut self.warm {
            Some(epochs) => *epochs += 1,
            None if self.models[0].len() >= self.capacity => {
                // The fill's misses fall on every model alike: the scores, and the lookups they
                // count, start now.
                self.warm = Some(0);
                for model in &mut self.models {
                    model.misses = 0;
                    model.score = 0.0;
                }
                (self.cache_misses, self.cache_score, self.lookups) = (0, 0.0, 0.0);
                return;
            }
            None => {}
        }
        for model in &mut self.models {
            model.score = model.score * DECAY + model.misses as f64;
            model.misses = 0;
        }
        self.lookups = self.lookups * DECAY + self.capacity as f64;
        self.cache_score = self.cache_score * DECAY + self.cache_misses as f64;
        self.cache_misses = 0;
    }

    /// A setting whose model misses `MARGIN` less than the model nearest `current` (the
    /// cache's base window, and whether its shards admit; `EARLY_MARGIN` less until the models
    /// are warm), if one does once the models have run two epochs past their fill, and that
    /// nearest model misses about as often as the cache itself on the same lookups (see
    /// `CALIBRATION`).
    pub(crate) fn suggest(&self, current: Setting) -> Option<Setting> {
        self.suggest_at(current, self.cache_score / self.lookups.max(1.0))
    }

    /// [`suggest`](Self::suggest) for a cache that missed `misses` of the sampled lookups, scored
    /// as the models' misses are.
    fn suggest_at(&self, current: Setting, misses: f64) -> Option<Setting> {
        let margin = match self.warm {
            None | Some(0 | 1) => return None,
            Some(epochs) if epochs < WARM_EPOCHS => EARLY_MARGIN,
            Some(_) => MARGIN,
        };
        let nearest = self.nearest(current)?;
        let modelled = nearest.score / self.lookups;
        if (modelled - misses).abs() > CALIBRATION * misses.max(MIN_CALIBRATED) {
            return None;
        }
        let best = self
            .models
            .iter()
            .min_by(|a, b| a.score.total_cmp(&b.score))?;
        let clearly = nearest.score > 0.0 && nearest.score - best.score > margin * nearest.score;
        (best.setting != nearest.setting && clearly).then_some(best.setting)
    }

    /// Epochs run so far (one: `capacity` sampled lookups).
    pub(crate) fn epochs(&self) -> u64 {
        self.epochs
    }

    /// The model nearest `current`: the one without admission if the shards do not admit, else
    /// the one with admission whose window is nearest.
    fn nearest(&self, current: Setting) -> Option<&Model> {
        if current.admits {
            self.models
                .iter()
                .filter(|m| m.setting.admits)
                .min_by_key(|m| m.setting.window.abs_diff(current.window))
        } else {
            self.models.iter().find(|m| !m.setting.admits)
        }
    }

    /// [`suggest`](Self::suggest) for a cache that misses as the nearest model does.
    #[cfg(test)]
    pub(crate) fn suggest_for_test(&self, current: Setting) -> Option<Setting> {
        self.suggest_at(current, self.modelled_misses_for_test(current))
    }

    /// The miss ratio of the model nearest `current`.
    #[cfg(test)]
    fn modelled_misses_for_test(&self, current: Setting) -> f64 {
        self.nearest(current)
            .map_or(1.0, |m| m.score / self.lookups)
    }

    /// Tells these simulations that the cache missed `times` as often as the model nearest
    /// `current` on the lookups they have scored.
    #[cfg(test)]
    pub(crate) fn calibrate_for_test(&mut self, current: Setting, times: f64) {
        self.cache_score = times * self.nearest(current).map_or(0.0, |m| m.score);
    }

    /// Warm simulations whose every model misses 10 % of the lookups but the one of
    /// `favoured`, 8 %.
    #[cfg(test)]
    pub(crate) fn favouring_for_test(favoured: Setting) -> Self {
        let mut sim = Self::new(1_024).unwrap();
        (sim.warm, sim.lookups, sim.epochs) = (Some(WARM_EPOCHS), 1_000.0, WARM_EPOCHS + 1);
        sim.cache_score = 100.0;
        for model in &mut sim.models {
            model.score = if model.setting == favoured {
                80.0
            } else {
                100.0
            };
        }
        sim
    }

    /// Each model's score, for tests.
    #[cfg(test)]
    fn scores(&self) -> Vec<(Setting, f64)> {
        self.models.iter().map(|m| (m.setting, m.score)).collect()
    }
}

/// One shard's policy on hashes alone (see the module docs).
#[derive(Debug)]
struct Model {
    setting: Setting,
    /// The window and the main queue's share, in entries.
    window: usize,
    main_capacity: usize,
    table: Table,
    nodes: Vec<Node>,
    free: Vec<u32>,
    /// The small queue and the main queue: head (the next to leave), tail and length.
    queues: [Queue; 2],
    sketch: Sketch,
    ghost: Ghost,
    /// New keys and ghost hits among them, in the current period of `GHOST_RATE_PERIOD`; and
    /// whether ghost hits were rare in the last one (see `Shard::admit_ghost`).
    new_keys: u32,
    ghost_hits: u32,
    returns_rare: bool,
    /// Misses in the current epoch, and the score (see `DECAY`).
    misses: u64,
    score: f64,
}

/// A model's index from hash to node: open addressing with linear probing, on the hashes
/// themselves (the nodes hold them), at most half full; removal shifts the entries after back.
#[derive(Debug)]
struct Table {
    slots: Box<[u32]>,
    /// Bits of a slot index.
    bits: u32,
}

impl Table {
    fn new(entries: usize) -> Self {
        let bits = (2 * entries).next_power_of_two().trailing_zeros();
        Self {
            slots: vec![NIL; 1 << bits].into_boxed_slice(),
            bits,
        }
    }

    /// Where `hash` starts probing: multiply-shift, since the sampled hashes share clear bits.
    fn home(&self, hash: u64) -> usize {
        (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.bits)) as usize
    }

    fn find(&self, nodes: &[Node], hash: u64) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(hash);
        loop {
            match self.slots[i] {
                NIL => return None,
                n if nodes[n as usize].hash == hash => return Some(n),
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn insert(&mut self, nodes: &[Node], n: u32) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(nodes[n as usize].hash);
        while self.slots[i] != NIL {
            i = (i + 1) & mask;
        }
        self.slots[i] = n;
    }

    fn remove(&mut self, nodes: &[Node], hash: u64) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(hash);
        while nodes[self.slots[i] as usize].hash != hash {
            i = (i + 1) & mask;
        }
        // Shift back each entry after the hole that may move into it (its home is not in the
        // stretch between the hole and it), until an empty slot.
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let n = self.slots[j];
            if n == NIL {
                break;
            }
            let home = self.home(nodes[n as usize].hash);
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(i) & mask) {
                self.slots[i] = n;
                i = j;
            }
        }
        self.slots[i] = NIL;
    }
}

#[derive(Clone, Copy, Debug)]
struct Node {
    hash: u64,
    prev: u32,
    next: u32,
    queue: u8,
    freq: u8,
}

#[derive(Clone, Copy, Debug)]
struct Queue {
    head: u32,
    tail: u32,
    len: usize,
}

const EMPTY: Queue = Queue {
    head: NIL,
    tail: NIL,
    len: 0,
};

impl Model {
    fn new(capacity: usize, setting: Setting) -> Self {
        let window = (capacity as u64 * setting.window / 65_536) as usize;
        Self {
            setting,
            window,
            main_capacity: capacity - window,
            table: Table::new(capacity + 1),
            nodes: Vec::with_capacity(capacity + 1),
            free: Vec::new(),
            queues: [EMPTY; 2],
            sketch: Sketch::new(capacity),
            ghost: Ghost::new(capacity),
            new_keys: 0,
            ghost_hits: 0,
            returns_rare: true,
            misses: 0,
            score: 0.0,
        }
    }

    fn len(&self) -> usize {
        self.queues[0].len + self.queues[1].len
    }

    /// A lookup of `hash`.
    fn access(&mut self, hash: u64) {
        if let Some(n) = self.table.find(&self.nodes, hash) {
            let node = &mut self.nodes[n as usize];
            node.freq = (node.freq + 1).min(MAX_FREQ);
            return;
        }
        self.misses += 1;
        self.sketch.add(hash, 1);
        let ghost_hit = self.ghost.contains(hash);
        self.count_new_key(ghost_hit);
        // The main queue's room matters to a shard whose window has just shrunk; a model's
        // window is fixed, and once its ghost holds anything its main queue is full, so here
        // the rule is the shard's, kept, and never decides (no test can tell it is there).
        let queue =
            if ghost_hit && (self.queues[1].len < self.main_capacity || self.admit_ghost(hash)) {
                self.ghost.remove(hash);
                MAIN
            } else {
                SMALL
            };
        let n = match self.free.pop() {
            Some(n) => n,
            None => {
                self.nodes.push(Node {
                    hash,
                    prev: NIL,
                    next: NIL,
                    queue,
                    freq: 0,
                });
                (self.nodes.len() - 1) as u32
            }
        };
        self.nodes[n as usize].hash = hash;
        self.nodes[n as usize].freq = 0;
        self.table.insert(&self.nodes, n);
        self.link_back(queue, n);
        while self.len() > self.window + self.main_capacity {
            self.evict_one();
        }
    }

    /// `Shard::evict_one`, on the model: the small queue's head once it outgrows the window
    /// (to the main queue if read, while the main queue has room, or past admission), else the
    /// main queue's head (CLOCK: one hit spent, and round again). Hits are folded into the
    /// sketch as the shards fold them: a promoted entry's, and each one a second chance spends.
    fn evict_one(&mut self) {
        let small = self.queues[SMALL as usize];
        let from_small = small.len > 0 && (small.len > self.window || self.queues[1].len == 0);
        let queue = if from_small { SMALL } else { MAIN };
        let n = self.queues[queue as usize].head;
        let Node { hash, freq, .. } = self.nodes[n as usize];
        if from_small {
            let promote = freq > 0
                || self.queues[1].len < self.main_capacity
                || !self.setting.admits
                || self.admit_to_main(hash);
            self.unlink(n);
            if promote {
                self.sketch.add(hash, freq);
                self.nodes[n as usize].freq = 0;
                self.link_back(MAIN, n);
                return;
            }
            self.ghost.push(hash);
        } else {
            self.unlink(n);
            if freq > 0 {
                self.sketch.add(hash, 1);
                self.nodes[n as usize].freq = freq - 1;
                self.link_back(MAIN, n);
                return;
            }
        }
        self.table.remove(&self.nodes, hash);
        self.free.push(n);
    }

    /// The counts of `hash` and of the main queue's next victim, with its unspent hits.
    fn counts(&self, hash: u64) -> Option<(u8, u8)> {
        let head = self.queues[MAIN as usize].head;
        (head != NIL).then(|| {
            let victim = &self.nodes[head as usize];
            (
                self.sketch.estimate(hash),
                self.sketch.estimate(victim.hash) + victim.freq,
            )
        })
    }

    /// `Shard::admit_to_main`: two counts over the victim.
    fn admit_to_main(&self, hash: u64) -> bool {
        self.counts(hash)
            .is_none_or(|(candidate, victim)| candidate > victim + 1)
    }

    /// `Shard::admit_ghost`, for a shard that is not large.
    fn admit_ghost(&self, hash: u64) -> bool {
        if !self.setting.admits {
            true
        } else if self.returns_rare {
            !self.sketch.warmed()
                || self
                    .counts(hash)
                    .is_none_or(|(candidate, victim)| candidate >= victim)
        } else {
            self.admit_to_main(hash)
        }
    }

    /// `Shard::count_new_key`, for a shard alone.
    fn count_new_key(&mut self, ghost_hit: bool) {
        self.new_keys += 1;
        self.ghost_hits += u32::from(ghost_hit);
        if self.new_keys == crate::shard::GHOST_RATE_PERIOD {
            self.returns_rare = self.ghost_hits <= crate::shard::RARE_GHOST_HITS;
            (self.new_keys, self.ghost_hits) = (0, 0);
        }
    }

    fn unlink(&mut self, n: u32) {
        let Node {
            prev, next, queue, ..
        } = self.nodes[n as usize];
        let q = &mut self.queues[queue as usize];
        match prev {
            NIL => q.head = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NIL => q.tail = prev,
            x => self.nodes[x as usize].prev = prev,
        }
        q.len -= 1;
    }

    fn link_back(&mut self, queue: u8, n: u32) {
        let q = &mut self.queues[queue as usize];
        let tail = q.tail;
        self.nodes[n as usize].queue = queue;
        self.nodes[n as usize].prev = tail;
        self.nodes[n as usize].next = NIL;
        match tail {
            NIL => q.head = n,
            t => self.nodes[t as usize].next = n,
        }
        q.tail = n;
        q.len += 1;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn hashes(keys: impl Iterator<Item = u64>) -> impl Iterator<Item = u64> {
        // Sampled hashes: the mask's bits clear, the rest spread.
        keys.map(|k| (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 24) & !(0xFFFF << SAMPLE_BIT))
    }

    fn hit_ratio(setting: Setting, capacity: usize, keys: &[u64]) -> f64 {
        let mut model = Model::new(capacity, setting);
        for hash in hashes(keys.iter().copied()) {
            model.access(hash);
        }
        1.0 - model.misses as f64 / keys.len() as f64
    }

    pub(crate) const NONE_ADMITTING: Setting = Setting {
        window: 0,
        admits: true,
    };
    /// A window of a quarter, with admission.
    const QUARTER: Setting = Setting {
        window: 16_384,
        admits: true,
    };
    pub(crate) const LRU_LIKE: Setting = Setting {
        window: NO_ADMISSION_WINDOW,
        admits: false,
    };

    /// A loop over 1.1x the capacity: admission keeps most of it where a queue near LRU keeps
    /// nothing, as in the shards (`a_loop_larger_than_the_shard_keeps_most_of_it`).
    #[test]
    fn a_model_keeps_a_loop_larger_than_itself_only_with_admission() {
        let keys: Vec<u64> = (0..40).flat_map(|_| 0..282).collect();
        let admitting = hit_ratio(NONE_ADMITTING, 256, &keys);
        let lru = hit_ratio(LRU_LIKE, 256, &keys);
        assert!(admitting > 0.6, "{admitting}");
        assert!(lru < 0.05, "{lru}");
    }

    /// A working set that moves on to fresh keys: without admission the new set is kept at once.
    pub(crate) fn moving(phases: u64, per_phase: usize) -> Vec<u64> {
        let mut rng = 7u64;
        let mut keys = Vec::new();
        for phase in 0..phases {
            for _ in 0..per_phase {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                keys.push(phase * 1_000 + rng % 200);
            }
        }
        keys
    }

    #[test]
    fn a_model_without_admission_follows_a_moving_working_set_sooner() {
        let keys = moving(20, 3_000);
        assert!(hit_ratio(LRU_LIKE, 256, &keys) > hit_ratio(NONE_ADMITTING, 256, &keys) + 0.02);
    }

    #[test]
    fn only_bounded_caches_large_enough_for_a_sample_of_one_key_in_four_run_models() {
        assert!(MiniSim::new(1_023).is_none());
        let sim = MiniSim::new(1_024).unwrap();
        assert_eq!((sim.capacity, sim.mask), (256, 3 << SAMPLE_BIT));
        let sim = MiniSim::new(50_000).unwrap();
        assert_eq!((sim.capacity, sim.mask.count_ones()), (50_000 >> 7, 7));
        let largest = (MIN_MODEL << (64 - SAMPLE_BIT + 1)) - 1;
        assert_eq!(MiniSim::new(largest).unwrap().mask, u64::MAX << SAMPLE_BIT);
        assert!(MiniSim::new(largest + 1).is_none());
        assert!(
            MiniSim::new(u64::MAX).is_none(),
            "an unbounded cache never evicts"
        );
    }

    /// Simulations fed `keys`, each a hit in the cache (bit 0 clear).
    pub(crate) fn fed(keys: &[u64]) -> MiniSim {
        let mut sim = MiniSim::new(1_024).unwrap();
        for hash in hashes(keys.iter().copied()) {
            sim.access(hash & !1);
        }
        sim
    }

    #[test]
    fn suggests_nothing_in_the_fill_then_the_setting_that_clearly_misses_less() {
        // The epoch the models filled in.
        let filled = fed(&(0..256).collect::<Vec<_>>());
        assert_eq!(filled.warm, Some(0));
        assert_eq!(filled.suggest_for_test(NONE_ADMITTING), None);
        let sim = fed(&moving(20, 3_000));
        let suggested = sim
            .suggest_for_test(NONE_ADMITTING)
            .expect("a clear gain, once warm");
        let scores = sim.scores();
        let score = |s: Setting| scores.iter().find(|(t, _)| *t == s).unwrap().1;
        assert!(
            score(suggested) < 0.95 * score(NONE_ADMITTING),
            "{scores:?}"
        );
        assert!(scores.iter().all(|&(_, s)| s >= score(suggested)));
        // Already at the best setting: nothing to move to.
        assert_eq!(sim.suggest_for_test(suggested), None);
    }

    #[test]
    fn on_a_loop_the_models_suggest_leaving_a_window_for_none() {
        let keys: Vec<u64> = (0..60).flat_map(|_| 0..282).collect();
        let sim = fed(&keys);
        assert_eq!(sim.suggest_for_test(QUARTER), Some(NONE_ADMITTING));
        assert_eq!(sim.suggest_for_test(NONE_ADMITTING), None);
    }

    /// Looks up `n` keys never seen before, taken from `fresh`.
    fn stream(model: &mut Model, fresh: &mut std::ops::RangeFrom<u64>, n: usize) {
        fresh.take(n).for_each(|key| model.access(key));
    }

    /// Streams fresh keys until `key` leaves the small queue for the main queue.
    fn into_main(model: &mut Model, fresh: &mut std::ops::RangeFrom<u64>, key: u64) {
        while queue_of(model, key) != Some(MAIN) {
            stream(model, fresh, 1);
        }
    }

    /// The main queue is a CLOCK: an entry read there is passed over once by eviction.
    #[test]
    fn a_main_queue_entry_with_a_hit_gets_a_second_chance() {
        let (mut model, mut fresh) = (Model::new(16, LRU_LIKE), 0..);
        let hot = 1 << 50;
        stream(&mut model, &mut fresh, 16);
        model.access(hot);
        // Into the main queue, at its back, twelve entries (its share) behind its head.
        into_main(&mut model, &mut fresh, hot);
        model.access(hot);
        stream(&mut model, &mut fresh, 14);
        assert_eq!(queue_of(&model, hot), Some(MAIN), "passed over once");
        stream(&mut model, &mut fresh, 14);
        assert_eq!(queue_of(&model, hot), None, "its hit spent");
    }

    /// A model with a full main queue of keys seen once, and `key` just missed, alone in its
    /// small queue of four (a window of a quarter of 16).
    fn full_with_new(setting: Setting, key: u64) -> Model {
        let mut model = Model::new(16, setting);
        for fresh in 0..16 {
            model.access(fresh);
        }
        model.access(key);
        model
    }

    /// Where `key` is: its queue, if held.
    fn queue_of(model: &Model, key: u64) -> Option<u8> {
        let n = model.table.find(&model.nodes, key)?;
        Some(model.nodes[n as usize].queue)
    }

    /// Leaving the small queue: unread, a candidate faces admission (and, refused, is
    /// remembered by the ghost) unless the setting has none; read there, it moves on.
    #[test]
    fn a_small_queues_head_moves_on_if_read_or_without_admission_else_faces_it() {
        let key = 1 << 50;
        let push_out = |model: &mut Model| {
            for fresh in 100..104 {
                model.access(fresh);
            }
        };
        let mut refused = full_with_new(QUARTER, key);
        push_out(&mut refused);
        assert_eq!(queue_of(&refused, key), None);
        assert!(refused.ghost.contains(key));
        let mut read = full_with_new(QUARTER, key);
        read.access(key);
        push_out(&mut read);
        assert_eq!(queue_of(&read, key), Some(MAIN));
        let mut lru = full_with_new(LRU_LIKE, key);
        push_out(&mut lru);
        assert_eq!(queue_of(&lru, key), Some(MAIN));
    }

    /// A key the ghost remembers goes straight to the main queue when it returns (while returns
    /// are rare and the sketch is young), and the ghost forgets it.
    #[test]
    fn a_returning_key_goes_to_the_main_queue() {
        let key = 1 << 50;
        let mut model = full_with_new(QUARTER, key);
        for fresh in 100..104 {
            model.access(fresh);
        }
        assert!(model.ghost.contains(key));
        model.access(key);
        assert_eq!(queue_of(&model, key), Some(MAIN));
        assert!(!model.ghost.contains(key));
    }

    /// Admission weighs a candidate against the main queue's victim with the hits the victim
    /// took since the policy last looked at it, as a shard does (`Shard::counts`): a candidate
    /// two counts over an unread victim's sketch count is admitted, but not over the same victim
    /// read once since.
    #[test]
    fn a_victims_unspent_hits_count_against_a_candidate() {
        let key = 1 << 50;
        let admitted = |victim_read: bool| {
            // The main queue holds keys 0-11 from its head; the small queue 13-15, then `key`.
            let mut model = full_with_new(QUARTER, key);
            let victim = model.queues[MAIN as usize].head;
            assert_eq!(model.nodes[victim as usize].hash, 0);
            if victim_read {
                model.access(0);
            }
            model.sketch.add(key, 2);
            assert_eq!(
                (model.sketch.estimate(key), model.sketch.estimate(0)),
                (3, 1)
            );
            // Pushes 13-15 out (refused), then `key`.
            for fresh in 100..104 {
                model.access(fresh);
            }
            queue_of(&model, key) == Some(MAIN)
        };
        assert!(admitted(false), "3 counts against 1");
        assert!(!admitted(true), "3 counts against 1 and a hit");
    }

    /// Whether returns are rare is measured as a shard alone measures it
    /// (`Shard::count_new_key`): over each period of `GHOST_RATE_PERIOD` new keys, rare up to
    /// `RARE_GHOST_HITS` ghost hits among them. While they are rare, a returning key that ties
    /// with the victim goes to the main queue (a return is news); otherwise it needs two counts
    /// over the victim, as from the small queue (`Shard::admit_ghost`, for a shard that is not
    /// large; `ghost_admission_is_lenient_only_while_returns_are_rare` in `shard.rs`).
    #[test]
    fn a_ghost_hit_tying_with_the_victim_is_admitted_only_while_returns_are_rare() {
        use crate::shard::{GHOST_RATE_PERIOD, RARE_GHOST_HITS};
        let (mut model, mut fresh) = (Model::new(64, QUARTER), 0..);
        stream(&mut model, &mut fresh, 65);
        // Counts that may refuse (before its first halving a sketch refuses no return).
        model.sketch.warm_for_test();
        // To the end of the current period, then a period whose first `ghost_hits` keys return.
        let period = |model: &mut Model, fresh: &mut std::ops::RangeFrom<u64>, ghost_hits| {
            stream(model, fresh, (GHOST_RATE_PERIOD - model.new_keys) as usize);
            for i in 0..GHOST_RATE_PERIOD {
                let key = fresh.next().unwrap();
                if i < ghost_hits {
                    model.ghost.push(key);
                }
                model.access(key);
            }
        };
        // Whether a key the ghost remembers, whose miss brings it level with the victim, goes
        // to the main queue.
        let mut candidates = hashes(1 << 20..);
        let mut tie_admitted = |model: &mut Model| {
            let victim = model.counts(0).expect("a full main queue").1;
            // (One the sketch does not count above the victim already.)
            let candidate = candidates
                .by_ref()
                .take(1_000)
                .find(|&c| model.sketch.estimate(c) < victim)
                .expect("a candidate that the victim outcounts");
            while model.sketch.estimate(candidate) + 1 < victim {
                model.sketch.add(candidate, 1);
            }
            assert_eq!(model.counts(candidate), Some((victim - 1, victim)));
            model.ghost.push(candidate);
            model.access(candidate);
            queue_of(model, candidate) == Some(MAIN)
        };
        period(&mut model, &mut fresh, RARE_GHOST_HITS);
        assert!(tie_admitted(&mut model), "{RARE_GHOST_HITS} returns: rare");
        period(&mut model, &mut fresh, RARE_GHOST_HITS + 1);
        assert!(!tie_admitted(&mut model), "one more: common");
        period(&mut model, &mut fresh, 0);
        assert!(tie_admitted(&mut model), "rare again");
    }

    /// A model's sketch counts as a shard's does: the miss, then the hits an entry took in the
    /// small queue when it leaves it, and each hit a second chance spends.
    #[test]
    fn hits_reach_the_sketch_as_they_reach_a_shards() {
        let (mut model, mut fresh) = (Model::new(16, LRU_LIKE), 0..);
        let hot = 1 << 50;
        stream(&mut model, &mut fresh, 16);
        (0..3).for_each(|_| model.access(hot));
        assert_eq!(model.sketch.estimate(hot), 1, "the miss alone so far");
        into_main(&mut model, &mut fresh, hot);
        assert_eq!(model.sketch.estimate(hot), 3, "its two hits, on leaving");
        model.access(hot);
        stream(&mut model, &mut fresh, 14);
        assert_eq!(
            model.sketch.estimate(hot),
            4,
            "the hit a second chance spent"
        );
    }

    /// A model keeps and evicts as a lone shard of its capacity does, one whose window and
    /// admission no climber moves: over cache-aside on a skewed trace whose hot set moves (so
    /// that keys return from the ghost), each lookup hits in both or misses in both, and they
    /// end holding the same keys; at a window of none and of a quarter, with admission and
    /// without.
    #[test]
    fn a_model_keeps_and_evicts_as_a_shard_does() {
        let mut rng = 3u64;
        let keys: Vec<u64> = (0..30_000u64)
            .map(|i| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                // Skewed over 1,500 keys, low ones hottest; the set moves every 10k lookups.
                let u = (rng % 1_000_000) as f64 / 1e6;
                i / 10_000 * 500 + (u * u * u * 1_500.0) as u64
            })
            .collect();
        let id = |hash: &u64| *hash;
        for setting in [NONE_ADMITTING, QUARTER, LRU_LIKE] {
            let mut model = Model::new(256, setting);
            let mut shard = crate::shard::OwnedShard::<u64, u64>::new(256, 256);
            shard
                .writer
                .set_policy_for_test(model.window as u64, setting.admits);
            let (mut hits, mut ghost_hits) = (0, 0);
            for (i, hash) in hashes(keys.iter().copied()).enumerate() {
                let (misses, returning) = (model.misses, model.ghost.contains(hash));
                model.access(hash);
                let hit = shard.get(hash, &hash, || 1).is_some();
                if !hit {
                    shard.view().insert(hash, hash, hash, 1, 0, 1, &id);
                }
                assert_eq!(model.misses == misses, hit, "{setting:?}, lookup {i}");
                hits += u32::from(hit);
                ghost_hits += u32::from(!hit && returning);
            }
            // A trace that tells policies apart: misses, evictions and returns aplenty (without
            // admission, nothing is refused into the ghost).
            assert!((10_000..25_000).contains(&hits), "{setting:?}: {hits} hits");
            assert!(
                ghost_hits > 1_000 || !setting.admits,
                "{setting:?}: {ghost_hits} ghost hits"
            );
            for hash in hashes(0..2_500) {
                assert_eq!(
                    shard.contains(hash, &hash, 1),
                    model.table.find(&model.nodes, hash).is_some(),
                    "{setting:?}"
                );
            }
        }
    }

    /// The table against a set, under inserts and removals that collide (a table of 16 slots
    /// for up to 8 hashes).
    #[test]
    fn the_table_finds_what_it_holds_through_removals() {
        let mut table = Table::new(8);
        assert_eq!(table.slots.len(), 16);
        let mut nodes: Vec<Node> = Vec::new();
        let mut held = std::collections::BTreeMap::new();
        let mut rng = 11u64;
        for _ in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let hash = rng % 24;
            match held.get(&hash) {
                Some(_) => {
                    table.remove(&nodes, hash);
                    held.remove(&hash);
                }
                None if held.len() < 8 => {
                    nodes.push(Node {
                        hash,
                        prev: NIL,
                        next: NIL,
                        queue: SMALL,
                        freq: 0,
                    });
                    let n = (nodes.len() - 1) as u32;
                    table.insert(&nodes, n);
                    held.insert(hash, n);
                }
                None => {}
            }
            for probe in 0..24 {
                assert_eq!(
                    table.find(&nodes, probe),
                    held.get(&probe).copied(),
                    "{probe}"
                );
            }
        }
    }

    /// The best model must miss `MARGIN` less than the nearest to the cache's setting.
    #[test]
    fn only_a_clear_margin_is_suggested() {
        let mut sim = MiniSim::new(1_024).unwrap();
        (sim.warm, sim.lookups) = (Some(WARM_EPOCHS), 1_000.0);
        let with = |sim: &mut MiniSim, best: f64| {
            for model in &mut sim.models {
                model.score = 100.0;
            }
            sim.models[3].score = best;
            sim.suggest_for_test(NONE_ADMITTING)
        };
        assert_eq!(with(&mut sim, 96.0), None);
        assert_eq!(with(&mut sim, 94.0), Some(sim.models[3].setting));
        // The nearest model to a window of 5 % with admission is the one at 6.25 %.
        let near = Setting {
            window: 3_300,
            admits: true,
        };
        sim.models[1].score = 94.0;
        assert_eq!(sim.suggest_for_test(near), None);
        // Before the models are warm, only a margin of 15 %, from the second epoch after the
        // fill.
        sim.warm = Some(WARM_EPOCHS - 1);
        assert_eq!(with(&mut sim, 86.0), None);
        assert_eq!(with(&mut sim, 84.0), Some(sim.models[3].setting));
        sim.warm = Some(2);
        assert_eq!(with(&mut sim, 84.0), Some(sim.models[3].setting));
        for warm in [0, 1] {
            sim.warm = Some(warm);
            assert_eq!(with(&mut sim, 10.0), None);
        }
    }

    /// The cache's misses come with its sampled lookups (bit 0) and are scored as the models'
    /// are: a cache that missed the lookups its nearest model missed is trusted; one that missed
    /// half of them, or none, is not.
    #[test]
    fn the_cache_is_judged_on_the_lookups_its_models_replay() {
        let keys = moving(20, 3_000);
        let replay = |missed: &dyn Fn(&mut Model, u64) -> bool| {
            let mut sim = MiniSim::new(1_024).unwrap();
            let mut cache = Model::new(sim.capacity, NONE_ADMITTING);
            for hash in hashes(keys.iter().copied()) {
                let hash = hash & !1;
                let missed = missed(&mut cache, hash);
                sim.access(hash | u64::from(missed));
            }
            sim
        };
        // A cache that missed one in `every` of the lookups its model missed.
        let missing = |every: u64| {
            let n = std::cell::Cell::new(0);
            replay(&move |cache, hash| {
                let before = cache.misses;
                cache.access(hash);
                n.set(n.get() + u64::from(cache.misses > before));
                cache.misses > before && n.get() % every == 0
            })
        };
        let alike = missing(1);
        assert_eq!(alike.cache_score, alike.models[0].score);
        let expected = alike.suggest_for_test(NONE_ADMITTING);
        assert!(expected.is_some());
        assert_eq!(alike.suggest(NONE_ADMITTING), expected);
        assert_eq!(missing(2).suggest(NONE_ADMITTING), None);
        assert_eq!(replay(&|_, _| false).suggest(NONE_ADMITTING), None);
    }

    /// The models are trusted only while the one nearest the cache's setting misses about as
    /// often as the cache (here 10 % of the lookups).
    #[test]
    fn models_that_misjudge_the_cache_suggest_nothing() {
        let mut sim = MiniSim::new(1_024).unwrap();
        (sim.warm, sim.lookups) = (Some(WARM_EPOCHS), 1_000.0);
        for model in &mut sim.models {
            model.score = 100.0;
        }
        sim.models[3].score = 80.0;
        let favoured = Some(sim.models[3].setting);
        assert_eq!(sim.suggest_at(NONE_ADMITTING, 0.1), favoured);
        assert_eq!(sim.suggest_at(NONE_ADMITTING, 0.16), favoured);
        assert_eq!(sim.suggest_at(NONE_ADMITTING, 0.17), None);
        assert_eq!(sim.suggest_at(NONE_ADMITTING, 0.075), favoured);
        assert_eq!(sim.suggest_at(NONE_ADMITTING, 0.07), None);
        // A cache that hardly misses: within two fifths of 1 %.
        for model in &mut sim.models {
            model.score = 5.0;
        }
        sim.models[3].score = 1.0;
        assert_eq!(
            sim.suggest_at(NONE_ADMITTING, 0.004),
            Some(sim.models[3].setting)
        );
        assert_eq!(sim.suggest_at(NONE_ADMITTING, 0.0), None);
    }

    /// The scores count misses from the epoch after the first model's fill on (the fill's
    /// misses fall on every model alike), each epoch's weighing `DECAY` times the next one's;
    /// and so do the lookups they are a share of, and the cache's misses (bit 0 of a sample).
    #[test]
    fn the_scores_start_after_the_fill_and_decay_each_epoch() {
        // Models of 256 entries: an epoch is 256 lookups. The cache misses as every model does.
        let mut sim = MiniSim::new(1_024).unwrap();
        let epoch = |sim: &mut MiniSim, lookups: &[(std::ops::Range<u64>, bool)]| {
            for (keys, missed) in lookups {
                hashes(keys.clone()).for_each(|hash| sim.access(hash & !1 | u64::from(*missed)));
            }
            let scores: Vec<f64> = sim.scores().iter().map(|&(_, score)| score).collect();
            assert!(scores.iter().all(|&score| score == sim.cache_score));
            (sim.epochs(), scores, sim.lookups)
        };
        // Half the models' entries, each read twice: counted, though the fill is not done.
        let half = epoch(&mut sim, &[(0..128, true), (0..128, false)]);
        assert_eq!(half, (1, vec![128.0; 7], 256.0));
        // The fill: the rest alike; scores and lookups start over.
        let filled = epoch(&mut sim, &[(128..256, true), (128..256, false)]);
        assert_eq!(filled, (2, vec![0.0; 7], 0.0));
        // The same keys: hits in every model, which holds them all.
        assert_eq!(
            epoch(&mut sim, &[(0..256, false)]),
            (3, vec![0.0; 7], 256.0)
        );
        // Fresh keys: misses in every model.
        let decayed = 256.0 * DECAY + 256.0;
        let fresh = epoch(&mut sim, &[(1_000..1_256, true)]);
        assert_eq!(fresh, (4, vec![256.0; 7], decayed));
        let fresh = epoch(&mut sim, &[(2_000..2_256, true)]);
        assert_eq!(fresh, (5, vec![decayed; 7], decayed * DECAY + 256.0));
    }

    #[test]
    fn feed_replays_what_the_drain_hands_over_and_keeps_its_positions() {
        let mut sim = MiniSim::new(1_024).unwrap();
        sim.feed(|drained, batch| {
            assert!(drained.is_empty());
            drained.push(3);
            batch.extend(hashes(0..3));
        });
        sim.feed(|drained, batch| {
            assert_eq!(drained, &[3]);
            assert!(batch.is_empty());
        });
        assert_eq!(sim.models[0].misses, 3);
        assert_eq!(sim.epoch_left, 256 - 3);
    }
}
