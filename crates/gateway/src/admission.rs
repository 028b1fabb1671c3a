//! Admission glue: who the client is, its token bucket, the socket and stream caps, mapped
//! to the HTTP answers of protocol §2 and §9 (429 / 503 with `Retry-After`).

use std::net::IpAddr;

use sse_admission::{CapExceeded, Slot};

use crate::edge::{ApiError, RequestView};
use crate::metrics::{Outcome, Rejection};
use crate::state::Gateway;

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

    fn over_capacity(gateway: &Gateway, rejection: Rejection, message: String) -> Self {
        Self {
            outcome: Outcome::OverCapacity,
            rejection: Some(rejection),
            error: ApiError::over_capacity(message, gateway.retry_after_secs()),
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

    /// 503: the gateway is shutting down.
    pub fn draining(gateway: &Gateway) -> Self {
        Self {
            outcome: Outcome::OverCapacity,
            rejection: Some(Rejection::Draining),
            error: ApiError::draining(gateway.retry_after_secs()),
        }
    }

    /// Whether the connection must close after this answer (a 429 closes: a client
    /// over its rate gets no kept-alive connection to keep trying on).
    pub fn closes(&self) -> bool {
        self.outcome == Outcome::RateLimited
    }

    /// Counts the refusal.
    pub fn count(&self, gateway: &Gateway) {
        gateway.metrics.count(self.outcome);
        if let Some(r) = self.rejection {
            gateway.metrics.reject(r);
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

impl Client {
    /// The client of `request`, which came from `peer`.
    pub fn of(gateway: &Gateway, peer: IpAddr, request: &dyn RequestView) -> Self {
        let limits = &gateway.config.limits;
        let peer_trusted = sse_admission::is_trusted_peer(peer, &limits.trusted_proxies);
        // Only a trusted proxy's X-Forwarded-For is read (and only then collected).
        let ip = if peer_trusted {
            let forwarded = request.header_values("x-forwarded-for");
            sse_admission::client_ip(peer, &forwarded, &limits.trusted_proxies)
        } else {
            peer.to_canonical()
        };
        Self {
            peer,
            peer_trusted,
            ip,
            key: sse_admission::client_key(ip, limits.ipv6_prefix),
        }
    }
}

/// Takes a token from the client's bucket (every request on the public listeners).
pub fn check_rate(gateway: &Gateway, key: IpAddr) -> Result<(), Refusal> {
    gateway.rate.check(key).map_err(|limited| Refusal {
        outcome: Outcome::RateLimited,
        rejection: Some(Rejection::RateLimited),
        error: ApiError::rate_limited(limited.retry_after_secs()),
    })
}

/// A slot among the peer's open sockets (`limits.max_sockets_per_ip`), held for the
/// connection's life; `None` for trusted proxies, which are exempt.
pub fn acquire_socket(gateway: &Gateway, peer: IpAddr) -> Result<Option<Slot>, Refusal> {
    let limits = &gateway.config.limits;
    if sse_admission::is_trusted_peer(peer, &limits.trusted_proxies) {
        return Ok(None);
    }
    let key = sse_admission::client_key(peer, limits.ipv6_prefix);
    gateway.sockets.acquire(key).map(Some).map_err(|_| {
        Refusal::over_capacity(
            gateway,
            Rejection::MaxSocketsPerIp,
            format!(
                "this client already has {} connections open",
                limits.max_sockets_per_ip
            ),
        )
    })
}

/// Maps a stream cap to its refusal.
pub fn cap_refusal(gateway: &Gateway, cap: CapExceeded) -> Refusal {
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
    Refusal::over_capacity(gateway, rejection, message)
}

/// Maps a full topic (or a full topic table) to its refusal.
pub fn topic_full(gateway: &Gateway, e: &sse_hub::SubscribeError) -> Refusal {
    Refusal::over_capacity(gateway, Rejection::of(e), e.to_string())
}
