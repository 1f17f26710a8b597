//! The circuit breaker in front of the Redis tier.
//!
//! Closed: every call goes to Redis; `threshold` consecutive failures open it. Open: calls skip
//! Redis until `cooldown` has passed, then one call is let through as a probe (half-open); its
//! success closes the breaker, its failure opens it for another cooldown. A probe that never
//! reports (its future was dropped) is replaced by another after a cooldown, so the breaker cannot
//! get stuck half-open.
//!
//! Only failures to reach or use Redis are recorded as failures
//! ([`RedisStoreError::is_transient`](crate::redis::RedisStoreError::is_transient): connection,
//! I/O, timeouts, `CLUSTERDOWN`, `TRYAGAIN`, `MASTERDOWN`, `LOADING`). An error *reply* to one
//! call (`WRONGTYPE`, `NOPERM`, `OOM`, a script error) proves the server is up and answering: it
//! is returned to that call and never opens the breaker, so one foreign key under the namespace
//! cannot send every read to the database.

use crate::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_since: Instant },
}

/// What a recorded outcome did to the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    /// The breaker just opened: the caller must stop trusting the L1.
    Opened,
    /// The breaker just closed after being open.
    Closed,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            cooldown,
        }
    }

    /// Whether a call may go to Redis now. While open, lets one probe through per cooldown.
    pub(crate) fn permit(&self) -> bool {
        let mut state = self.state.lock();
        let now = Instant::now();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { probe_since: now };
                true
            }
            State::Open { .. } => false,
            State::HalfOpen { probe_since } if now.duration_since(probe_since) >= self.cooldown => {
                *state = State::HalfOpen { probe_since: now };
                true
            }
            State::HalfOpen { .. } => false,
        }
    }

    /// Whether the breaker is closed (Redis is trusted).
    #[cfg(test)]
    pub(crate) fn is_closed(&self) -> bool {
        matches!(*self.state.lock(), State::Closed { .. })
    }

    /// The state as a number for the metrics gauge: 0 closed, 1 open, 2 half-open (probing).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn state_code(&self) -> u8 {
        match *self.state.lock() {
            State::Closed { .. } => 0,
            State::Open { .. } => 1,
            State::HalfOpen { .. } => 2,
        }
    }

    /// Records a call that reached Redis. `on_close` runs under the breaker's lock if this closes
    /// the breaker, so that it cannot interleave with an `on_open` of a concurrent failure.
    pub(crate) fn success(&self, on_close: impl FnOnce()) -> Transition {
        let mut state = self.state.lock();
        if matches!(*state, State::Closed { failures: 0 }) {
            return Transition::None;
        }
        let was_closed = matches!(*state, State::Closed { .. });
        *state = State::Closed { failures: 0 };
        if was_closed {
            Transition::None
        } else {
            on_close();
            Transition::Closed
        }
    }

    /// Records a call that could not reach Redis. `on_open` runs under the breaker's lock if this
    /// opens the breaker.
    pub(crate) fn failure(&self, on_open: impl FnOnce()) -> Transition {
        let mut state = self.state.lock();
        let until = Instant::now() + self.cooldown;
        match *state {
            State::Closed { failures } if failures + 1 < self.threshold => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                Transition::None
            }
            State::Closed { .. } => {
                *state = State::Open { until };
                on_open();
                Transition::Opened
            }
            State::Open { .. } | State::HalfOpen { .. } => {
                *state = State::Open { until };
                Transition::None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        let b = Breaker::new(2, Duration::ZERO);
        assert!(b.permit());
        assert_eq!(b.failure(|| ()), Transition::None);
        assert_eq!(b.failure(|| ()), Transition::Opened);
        assert!(!b.is_closed());
        // Cooldown zero: the next call is the probe, and only one probe at a time... until the
        // (zero) cooldown lets another through.
        assert!(b.permit());
        assert_eq!(b.failure(|| ()), Transition::None);
        assert!(b.permit());
        assert_eq!(b.success(|| ()), Transition::Closed);
        assert!(b.is_closed());
        assert_eq!(b.success(|| ()), Transition::None);
    }

    #[test]
    fn open_breaker_refuses_until_cooldown() {
        let b = Breaker::new(1, Duration::from_secs(3600));
        assert_eq!(b.failure(|| ()), Transition::Opened);
        assert!(!b.permit());
        assert!(!b.permit());
    }
}
