//! Admission control for sse-gateway: may this request open a stream?
//!
//! Three decisions, each in its own module, taken in this order for every new stream:
//!
//! 1. **Who** — [`client_ip`] names the client: the socket peer, or, behind a trusted
//!    proxy (`limits.trusted_proxies`), the address that proxy forwarded in
//!    `X-Forwarded-For`.
//! 2. **How often** — [`RateLimiter`] holds a token bucket per client address
//!    (`limits.connect_rate_per_ip` tokens a second, `limits.connect_burst_per_ip` deep,
//!    starting full). An empty bucket is [`RateLimited`]: HTTP 429 with
//!    `Retry-After: `[`RateLimited::retry_after_secs`].
//! 3. **How many** — [`Caps`] counts open streams in all (`limits.max_connections`) and
//!    per address (`limits.max_connections_per_ip`). A stream keeps its [`Slot`] while it
//!    is open and gives it back when the slot is dropped. A reached cap is
//!    [`CapExceeded`]: HTTP 503 with `Retry-After`.
//!
//! The crate only decides; it knows neither HTTP nor an async runtime. The gateway maps
//! the decisions to responses and calls [`RateLimiter::prune`] now and then so buckets
//! of departed clients are forgotten.
//!
//! ```
//! use std::net::IpAddr;
//! use std::num::NonZeroU32;
//! use ipnet::IpNet;
//! use sse_admission::{CapExceeded, Caps, RateLimiter, client_ip};
//!
//! let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
//! let rate = RateLimiter::new(NonZeroU32::new(50).unwrap(), NonZeroU32::new(2).unwrap());
//! let caps = Caps::new(100_000, 1);
//!
//! // A request arriving through the load balancer at 10.0.0.2.
//! let peer: IpAddr = "10.0.0.2".parse().unwrap();
//! let client = client_ip(peer, &[b"203.0.113.7"], &trusted);
//! assert_eq!(client, "203.0.113.7".parse::<IpAddr>().unwrap());
//!
//! rate.check(client).expect("buckets start full");
//! let slot = caps.acquire(client).expect("under both caps");
//! assert_eq!(caps.open_for(client), 1);
//!
//! // A second stream from the same client: a token is left, but the per-address cap is not.
//! rate.check(client).expect("burst of 2");
//! assert_eq!(caps.acquire(client).unwrap_err(), CapExceeded::PerIp { max: 1 });
//! // A third attempt at once: the bucket is empty (429, Retry-After: 1).
//! assert_eq!(rate.check(client).unwrap_err().retry_after_secs(), 1);
//!
//! // The stream ends: its slot is released.
//! drop(slot);
//! assert_eq!((caps.open(), caps.tracked_ips()), (0, 0));
//! ```

mod caps;
mod identity;
mod rate;

pub use caps::{CapExceeded, Caps, Slot};
pub use identity::{MAX_HEADER_LEN, MAX_HOPS, client_ip, client_key, is_trusted_peer};
pub use rate::{RateLimited, RateLimiter};

/// The clocks [`RateLimiter`] can run on (re-exported from `governor`), such as
/// [`clock::FakeRelativeClock`] for tests.
pub use governor::clock;
