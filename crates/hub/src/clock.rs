//! The hub's clock for delivery latency: moments as nanoseconds since a base.
//!
//! Every frame carries when its message was received; every delivered event is timed
//! against it. An `Instant` subtraction per delivered event (a timespec difference with
//! its carries and checks) is measurable at millions of events a second, so the hub
//! stores moments as `u64` nanoseconds since its base: a delivery's latency is one
//! integer subtraction. The base lies an hour before the hub was made, so that moments
//! from just before (a JetStream message published before start-up) still count from
//! their own time; older ones count from the base, which puts them past any latency
//! bucket all the same.

use std::time::Duration;

use tokio::time::Instant;

/// Converts moments to and from nanoseconds since a base.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    base: Instant,
}

impl Clock {
    /// A clock whose base is an hour ago (or as far back as the monotonic clock goes).
    pub fn new() -> Self {
        let now = Instant::now();
        let base = now
            .checked_sub(Duration::from_secs(3600))
            .or_else(|| now.checked_sub(Duration::from_secs(1)))
            .unwrap_or(now);
        Self { base }
    }

    /// `t` as nanoseconds since the base (0 before it).
    pub fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Now, as nanoseconds since the base.
    pub fn now(&self) -> u64 {
        self.nanos(Instant::now())
    }

    /// The moment `nanos` after the base.
    #[cfg(test)]
    pub fn instant(&self, nanos: u64) -> Instant {
        self.base + Duration::from_nanos(nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_round_trip_and_differences_are_durations() {
        let clock = Clock::new();
        let a = Instant::now();
        let b = a + Duration::from_micros(1500);
        assert_eq!(clock.nanos(b) - clock.nanos(a), 1_500_000);
        assert_eq!(clock.instant(clock.nanos(a)), a);
        assert_eq!(clock.nanos(clock.instant(0) - Duration::from_secs(1)), 0);
    }
}
