//! The window's size, adapted while the cache runs by hill climbing on the hit ratio (as
//! Caffeine's W-TinyLFU does; Einziger et al., "Adaptive Software Cache Management", 2018).
//!
//! The window is the part of a shard's capacity that the small queue may hold before its head
//! faces admission: a new key waits there, first in first out, and a hit there sends it on to the
//! main queue without admission. A large window favours recency (a key read again soon after its
//! first miss is kept, whatever the sketch says); a window of zero favours frequency (a new key
//! faces admission at once, which wins on stationary skew, scans and loops). Zero is where the
//! climber starts and where it drifts back to whenever a larger window shows no clear gain.
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
//! Measured on `cargo bench --bench hit_ratio` (see BENCHMARKS.md): the generated real-like
//! traces (`--realish`) and `cloudphysics.keys` gain up to 20 points over a window of zero;
//! the Zipf, scan and loop columns move by at most 0.35 points. Tried and dropped: samples of
//! 2-10 entries' worth of lookups (too slow for 1M-access traces at 20k-50k entries), a per-shard
//! hit ratio (the shard's own misses over its share of lookups: too noisy), a dead band of two
//! standard deviations (the window rarely grew), undoing a failed move and halving the step
//! (lost 1-5 points on the real-like traces), restart steps of 12.5 % (0.2 points worse on the
//! real-like traces on average, 0.56 on the 1k scan column), and a bound of 15/16 (changed no
//! column: the window never reaches 3/4 there).

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

    /// Counts a new key (a miss that stores a value). Every `READ_EVERY` of them, reads the
    /// cache's lookup counters (`lookups`: hits and misses so far) and, at the end of a sample,
    /// moves the window.
    #[inline]
    pub(crate) fn new_key(&mut self, lookups: impl FnOnce() -> (u64, u64)) {
        self.left -= 1;
        if self.left == 0 {
            self.left = READ_EVERY;
            self.read(lookups());
        }
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

    /// Forgets the measurements (the cache was cleared); the window stays.
    pub(crate) fn clear(&mut self) {
        self.left = READ_EVERY;
        self.start = None;
        self.last_ratio = None;
        (self.departures, self.earning) = (0, 0);
    }

    /// Sets the window, for tests.
    #[cfg(test)]
    pub(crate) fn set_window_for_test(&mut self, window: u64) {
        self.window = window.min(self.max_window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    /// refuses) and shrink again on one where frequency does (a hot set among one-time keys). A
    /// fixed window fails one of the two.
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
        // Frequency: half the accesses go to 300 hot keys, half to keys never seen again.
        let mut fresh = 1u64 << 40;
        replay(
            &cache,
            (0..240_000u64).map(|t| {
                if t % 2 == 0 {
                    (1 << 50) + random() % 300
                } else {
                    fresh += 1;
                    fresh
                }
            }),
        );
        let shrunk = mean_window(&cache);
        assert!(shrunk <= grown / 3, "window {shrunk}, was {grown}");
    }
}
