//! A token bucket per client address, for the rate of new streams.
//!
//! Each address gets its own bucket of `burst` tokens, refilled at `per_second` tokens a
//! second; opening a stream takes one. A bucket starts full, so a new client may open
//! `burst` streams at once. Buckets live in governor's keyed (DashMap) store: one entry
//! per address seen, until [`RateLimiter::prune`] forgets those whose bucket is full
//! again — such an entry is indistinguishable from no entry, so pruning never changes a
//! decision. Call `prune` periodically to keep memory bounded by the addresses active
//! within about one bucket refill time.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::Quota;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;

type Keyed<C> = governor::RateLimiter<
    IpAddr,
    DefaultKeyedStateStore<IpAddr>,
    C,
    NoOpMiddleware<<C as Clock>::Instant>,
>;

/// Per-address token buckets.
///
/// Addresses are keyed in canonical form: an IPv4-mapped IPv6 address shares the bucket
/// of its IPv4 address.
pub struct RateLimiter<C: Clock = DefaultClock> {
    inner: Keyed<C>,
    per_second: NonZeroU32,
    burst: NonZeroU32,
}

impl RateLimiter {
    /// Buckets of `burst` tokens refilled at `per_second` tokens a second, on the default
    /// (monotonic) clock.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self::with_clock(per_second, burst, DefaultClock::default())
    }
}

impl<C: Clock> RateLimiter<C> {
    /// Like [`RateLimiter::new`], reading time from `clock` (tests use
    /// [`FakeRelativeClock`](governor::clock::FakeRelativeClock)).
    pub fn with_clock(per_second: NonZeroU32, burst: NonZeroU32, clock: C) -> Self {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Self {
            inner: governor::RateLimiter::dashmap_with_clock(quota, clock),
            per_second,
            burst,
        }
    }

    /// Takes one token for `ip`. `Err` carries how long until a token is available.
    pub fn check(&self, ip: IpAddr) -> Result<(), RateLimited> {
        self.inner
            .check_key(&ip.to_canonical())
            .map_err(|not_until| RateLimited {
                wait: not_until.wait_time_from(self.inner.clock().now()),
            })
    }

    /// Forgets clients whose bucket is full again (governor's `retain_recent`, then
    /// `shrink_to_fit`); returns how many addresses remain tracked.
    pub fn prune(&self) -> usize {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
        self.inner.len()
    }

    /// Tokens a second and bucket size, as built.
    pub fn quota(&self) -> (u32, u32) {
        (self.per_second.get(), self.burst.get())
    }

    /// Addresses with a bucket held now.
    pub fn tracked(&self) -> usize {
        self.inner.len()
    }
}

impl<C: Clock> fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("per_second", &self.per_second)
            .field("burst", &self.burst)
            .field("tracked", &self.tracked())
            .finish_non_exhaustive()
    }
}

/// A refused [`RateLimiter::check`]: the client's bucket is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// How long until the bucket holds a token again.
    pub wait: Duration,
}

impl RateLimited {
    /// Whole seconds for `Retry-After`: `wait` rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let up = u64::from(self.wait.subsec_nanos() > 0);
        self.wait.as_secs().saturating_add(up).max(1)
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "too many new connections from this address; retry in {} s",
            self.retry_after_secs()
        )
    }
}

impl std::error::Error for RateLimited {}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::net::Ipv4Addr;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limiter(per_second: u32, burst: u32) -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(nz(per_second), nz(burst), clock.clone());
        (limiter, clock)
    }

    #[test]
    fn starts_full_then_refuses_with_the_wait() {
        let (rl, _clock) = limiter(2, 5);
        let a = ip("192.0.2.1");
        for _ in 0..5 {
            assert_eq!(rl.check(a), Ok(()));
        }
        let refused = rl.check(a).unwrap_err();
        assert_eq!(refused.wait, Duration::from_millis(500));
        assert_eq!(refused.retry_after_secs(), 1);
    }

    #[test]
    fn refills_as_time_passes() {
        let (rl, clock) = limiter(1, 2);
        let a = ip("192.0.2.1");
        rl.check(a).unwrap();
        rl.check(a).unwrap();
        assert_eq!(rl.check(a).unwrap_err().wait, Duration::from_secs(1));

        clock.advance(Duration::from_millis(400));
        assert_eq!(rl.check(a).unwrap_err().wait, Duration::from_millis(600));

        clock.advance(Duration::from_millis(600));
        assert_eq!(rl.check(a), Ok(()));
        assert!(rl.check(a).is_err());

        // Long idle refills the whole bucket, no more.
        clock.advance(Duration::from_secs(60));
        assert_eq!(rl.check(a), Ok(()));
        assert_eq!(rl.check(a), Ok(()));
        assert!(rl.check(a).is_err());
    }

    #[test]
    fn each_address_has_its_own_bucket() {
        let (rl, _clock) = limiter(1, 1);
        rl.check(ip("192.0.2.1")).unwrap();
        assert!(rl.check(ip("192.0.2.1")).is_err());
        assert_eq!(rl.check(ip("192.0.2.2")), Ok(()));
        assert_eq!(rl.check(ip("2001:db8::1")), Ok(()));
        // The mapped form is the same client as its IPv4 address.
        assert!(rl.check(ip("::ffff:192.0.2.1")).is_err());
        assert_eq!(rl.tracked(), 3);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let secs = |wait: Duration| RateLimited { wait }.retry_after_secs();
        assert_eq!(secs(Duration::ZERO), 1);
        assert_eq!(secs(Duration::from_millis(200)), 1);
        assert_eq!(secs(Duration::from_secs(1)), 1);
        assert_eq!(secs(Duration::from_millis(1010)), 2);
        assert_eq!(secs(Duration::from_nanos(2_000_000_001)), 3);
        assert_eq!(secs(Duration::MAX), u64::MAX);
    }

    #[test]
    fn keyed_state_stays_bounded() {
        let (per_second, burst) = (10, 20);
        let (rl, clock) = limiter(per_second, burst);
        // A million distinct addresses (the 10.0.0.0/8 range and beyond).
        for n in 0..1_000_000u32 {
            rl.check(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)))
                .unwrap();
        }
        assert_eq!(rl.tracked(), 1_000_000);
        // Nothing is full again yet: nothing may be forgotten.
        assert_eq!(rl.prune(), 1_000_000);

        // Past burst / rate every bucket is full again.
        clock.advance(Duration::from_secs(u64::from(burst / per_second) + 1));
        let recent = [ip("192.0.2.1"), ip("2001:db8::1")];
        for a in recent {
            rl.check(a).unwrap();
        }
        assert_eq!(rl.prune(), recent.len());
        assert_eq!(rl.tracked(), recent.len());

        // A pruned address starts again with a full bucket.
        for _ in 0..burst {
            rl.check(ip("10.0.0.0")).unwrap();
        }
        assert!(rl.check(ip("10.0.0.0")).is_err());

        clock.advance(Duration::from_secs(60));
        assert_eq!(rl.prune(), 0);
    }

    #[test]
    fn debug_shows_the_quota() {
        let (rl, _clock) = limiter(3, 4);
        let text = format!("{rl:?}");
        assert!(text.contains("per_second: 3"), "{text}");
        assert!(text.contains("burst: 4"), "{text}");
    }
}
