//! Admission glue: who the client is, its token bucket, the socket and stream caps, mapped
//! to the HTTP answers of protocol §2 and §9 (429 / 503 with `Retry-After`).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use ipnet::IpNet;
use sse_admission::{CapExceeded, Caps, RateLimiter, Slot};

use crate::config::LimitSettings;
use crate::edge::{ApiError, RequestView};
use crate::live::Live;
use crate::metrics::{Metrics, Outcome, Rejection};

/// What the public listeners admit before any request is served: who a client is, its
/// token bucket, its sockets. Built from `[limits]`; shared by the front and Pingora's
/// request filter; a reload changes the rules for the requests after it.
#[derive(Debug)]
pub struct Admission {
    rules: Live<Rules>,
    /// Open public-listener sockets per peer (the counts survive a reload).
    sockets: Arc<Caps>,
    /// `Retry-After` of a 503.
    retry_after_secs: u64,
}

/// The part of [`Admission`] a reload replaces.
#[derive(Debug)]
struct Rules {
    /// Peers whose `X-Forwarded-For` is believed.
    trusted_proxies: Vec<IpNet>,
    /// IPv6 clients are counted by their network of this prefix length.
    ipv6_prefix: u8,
    /// Token buckets per client.
    rate: Arc<RateLimiter>,
    /// `limits.max_sockets_per_ip`, for the message.
    max_sockets_per_ip: u64,
}

impl Rules {
    fn new(limits: &LimitSettings, rate: Arc<RateLimiter>) -> Self {
        Self {
            trusted_proxies: limits.trusted_proxies.clone(),
            ipv6_prefix: limits.ipv6_prefix,
            rate,
            max_sockets_per_ip: limits.max_sockets_per_ip,
        }
    }
}

fn rate_limiter(limits: &LimitSettings) -> Arc<RateLimiter> {
    Arc::new(RateLimiter::new(
        NonZeroU32::new(limits.connect_rate_per_ip).unwrap_or(NonZeroU32::MIN),
        NonZeroU32::new(limits.connect_burst_per_ip).unwrap_or(NonZeroU32::MIN),
    ))
}

impl Admission {
    /// Admission under `limits`; a 503 says to retry after `retry_after_secs`.
    pub fn new(limits: &LimitSettings, retry_after_secs: u64) -> Self {
        Self {
            rules: Live::new(Rules::new(limits, rate_limiter(limits))),
            sockets: Caps::new(u64::MAX, limits.max_sockets_per_ip),
            retry_after_secs,
        }
    }

    /// Applies new `[limits]` to the requests from now on. The token buckets start over
    /// (full) only when the rate or the burst changed; open sockets stay counted.
    pub fn reconfigure(&self, limits: &LimitSettings) {
        let old = self.rules.current();
        let rate = if old.rate.quota() == (limits.connect_rate_per_ip, limits.connect_burst_per_ip)
        {
            old.rate.clone()
        } else {
            rate_limiter(limits)
        };
        self.sockets.set_limits(u64::MAX, limits.max_sockets_per_ip);
        self.rules.replace(Rules::new(limits, rate));
    }

    /// The client of `request`, which came from `peer`.
    pub fn client(&self, peer: IpAddr, request: &dyn RequestView) -> Client {
        let rules = self.rules.current();
        let peer_trusted = sse_admission::is_trusted_peer(peer, &rules.trusted_proxies);
        // Only a trusted proxy's X-Forwarded-For is read (and only then collected).
        let ip = if peer_trusted {
            let forwarded = request.header_values("x-forwarded-for");
            sse_admission::client_ip(peer, &forwarded, &rules.trusted_proxies)
        } else {
            peer.to_canonical()
        };
        Client {
            peer,
            peer_trusted,
            ip,
            key: sse_admission::client_key(ip, rules.ipv6_prefix),
        }
    }

    /// Takes a token from the client's bucket (every request on the public listeners).
    pub fn check_rate(&self, key: IpAddr) -> Result<(), Refusal> {
        self.rules
            .current()
            .rate
            .check(key)
            .map_err(|limited| Refusal {
                outcome: Outcome::RateLimited,
                rejection: Some(Rejection::RateLimited),
                error: ApiError::rate_limited(limited.retry_after_secs()),
            })
    }

    /// A slot among the peer's open sockets (`limits.max_sockets_per_ip`), held for the
    /// connection's life; `None` for trusted proxies, which are exempt.
    pub fn acquire_socket(&self, peer: IpAddr) -> Result<Option<Slot>, Refusal> {
        let rules = self.rules.current();
        if sse_admission::is_trusted_peer(peer, &rules.trusted_proxies) {
            return Ok(None);
        }
        let key = sse_admission::client_key(peer, rules.ipv6_prefix);
        self.sockets.acquire(key).map(Some).map_err(|_| {
            Refusal::over_capacity(
                self.retry_after_secs,
                Rejection::MaxSocketsPerIp,
                format!(
                    "this client already has {} connections open",
                    rules.max_sockets_per_ip
                ),
            )
        })
    }

    /// Forgets clients whose token bucket is full again; how many are kept.
    pub fn prune(&self) -> usize {
        self.rules.current().rate.prune()
    }

    /// Clients with a token bucket.
    pub fn rate_limited_clients(&self) -> usize {
        self.rules.current().rate.tracked()
    }
}

/// A refused request: how it is counted and what the client is told.
#[derive(Debug)]
pub struct Refusal {
    /// `sse_connections_total{outcome}`.
    pub outcome: Outcome,
    /// `sse_admission_rejections_total{reason}`, when admission itself refused.
    pub rejection: Option<Rejection>,
    /// The answer.
    pub error: ApiError,
}

impl Refusal {
    /// A 4xx for a request that is wrong in itself.
    pub fn bad_request(error: ApiError) -> Self {
        Self {
            outcome: Outcome::BadRequest,
            rejection: None,
            error,
        }
    }

    fn over_capacity(retry_after_secs: u64, rejection: Rejection, message: String) -> Self {
        Self {
            outcome: Outcome::OverCapacity,
            rejection: Some(rejection),
            error: ApiError::over_capacity(message, retry_after_secs),
        }
    }

    /// 401 / 403 from the authorizer.
    pub fn denied(denied: sse_auth::Denied) -> Self {
        Self {
            outcome: Outcome::Unauthorized,
            rejection: None,
            error: ApiError::denied(&denied),
        }
    }

    /// 403 `revoked`: an operator blocked this subject or address for `remaining`.
    pub fn revoked(remaining: std::time::Duration) -> Self {
        Self {
            outcome: Outcome::Unauthorized,
            rejection: None,
            error: ApiError::revoked(remaining),
        }
    }

    /// 503: something the request needs is unavailable for now.
    pub fn unavailable(error: ApiError) -> Self {
        Self {
            outcome: Outcome::OverCapacity,
            rejection: None,
            error,
        }
    }

    /// 503: the gateway is shutting down.
    pub fn draining(retry_after_secs: u64) -> Self {
        Self {
            outcome: Outcome::OverCapacity,
            rejection: Some(Rejection::Draining),
            error: ApiError::draining(retry_after_secs),
        }
    }

    /// Whether the connection must close after this answer (a 429 closes: a client
    /// over its rate gets no kept-alive connection to keep trying on).
    pub fn closes(&self) -> bool {
        self.outcome == Outcome::RateLimited
    }

    /// Counts the refusal.
    pub fn count(&self, metrics: &Metrics) {
        metrics.count(self.outcome);
        if let Some(r) = self.rejection {
            metrics.reject(r);
        }
    }
}

/// Who sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The socket's peer.
    pub peer: IpAddr,
    /// Whether the peer is a trusted proxy (`limits.trusted_proxies`).
    pub peer_trusted: bool,
    /// The client: the peer, or the address a trusted proxy forwarded.
    pub ip: IpAddr,
    /// What the client is counted under: its address, or its IPv6 `/ipv6_prefix`.
    pub key: IpAddr,
}

/// Maps a stream cap to its refusal.
pub fn cap_refusal(retry_after_secs: u64, cap: CapExceeded) -> Refusal {
    let (rejection, message) = match cap {
        CapExceeded::Total { max } => (
            Rejection::MaxConnections,
            format!("the gateway already serves {max} streams"),
        ),
        CapExceeded::PerIp { max } => (
            Rejection::MaxConnectionsPerIp,
            format!("this client already has {max} streams open"),
        ),
        other => (Rejection::MaxConnections, other.to_string()),
    };
    Refusal::over_capacity(retry_after_secs, rejection, message)
}

/// Maps a full topic (or a full topic table) to its refusal.
pub fn topic_full(retry_after_secs: u64, e: &sse_hub::SubscribeError) -> Refusal {
    Refusal::over_capacity(retry_after_secs, Rejection::of(e), e.to_string())
}
