//! Admission glue: who the client is, its token bucket, and the connection caps, mapped
//! to the HTTP answers of SPEC §2 (429 / 503 with `Retry-After`).

use std::net::IpAddr;

use sse_admission::CapExceeded;

use crate::http_error::ApiError;
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

    /// Counts the refusal.
    pub fn count(&self, gateway: &Gateway) {
        gateway.metrics.count(self.outcome);
        if let Some(r) = self.rejection {
            gateway.metrics.reject(r);
        }
    }
}

/// The client's address: the peer, or the forwarded address when the peer is a
/// trusted proxy.
pub fn client_ip(gateway: &Gateway, peer: IpAddr, forwarded_for: &[&[u8]]) -> IpAddr {
    sse_admission::client_ip(peer, forwarded_for, &gateway.config.limits.trusted_proxies)
}

/// Takes a token from the client's bucket (every request on the public listener).
pub fn check_rate(gateway: &Gateway, client: IpAddr) -> Result<(), Refusal> {
    gateway.rate.check(client).map_err(|limited| Refusal {
        outcome: Outcome::RateLimited,
        rejection: Some(Rejection::RateLimited),
        error: ApiError::rate_limited(limited.retry_after_secs()),
    })
}

/// Maps a cap to its refusal.
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
