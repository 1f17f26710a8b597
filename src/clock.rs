//! Time for TTLs: the system's monotonic clock, or a manual clock that tests advance by hand.

use crate::sync::{Arc, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A clock you advance by hand, for testing TTL behaviour without sleeping.
///
/// ```
/// use leasecache::{Cache, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let cache: Cache<u32, u32> = Cache::builder()
///     .max_capacity(100)
///     .time_to_live(Duration::from_secs(10))
///     .clock(clock.clone())
///     .build();
/// cache.insert(1, 1);
/// clock.advance(Duration::from_secs(9));
/// assert_eq!(cache.get(&1), Some(1));
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(cache.get(&1), None); // expired entries are never returned
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // Relaxed: the clock orders nothing; readers only compare deadlines with it.
        let _ = self
            .nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(by))
            });
    }
}

/// The time source of one cache. Readings are nanoseconds since the cache was built, plus one, so
/// that `0` can mean "never expires".
#[derive(Clone, Debug)]
pub(crate) enum Clock {
    System(Instant),
    Manual(ManualClock),
}

impl Clock {
    pub(crate) fn system() -> Self {
        Self::System(Instant::now())
    }

    pub(crate) fn now(&self) -> u64 {
        let nanos = match self {
            Self::System(base) => u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Self::Manual(m) => m.nanos.load(Ordering::Relaxed),
        };
        nanos.saturating_add(1)
    }

    /// The deadline `ttl` after the reading `now`; `0` (never) when there is no TTL.
    pub(crate) fn deadline_from(now: u64, ttl: Option<Duration>) -> u64 {
        match ttl {
            None => 0,
            Some(ttl) => now.saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX)),
        }
    }
}
