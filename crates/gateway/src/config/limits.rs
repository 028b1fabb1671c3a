//! `[limits]`: caps, token buckets, client identity, byte budgets over all rings.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::sse::{MAX_BUDGET_BYTES, SseSettings};
use super::{ConfigError, in_range, invalid};

/// `[limits]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Streams open at once.
    pub max_connections: u64,
    /// Streams open at once per client address.
    pub max_connections_per_ip: u64,
    /// Streams per topic.
    pub max_subscribers_per_topic: u64,
    /// Encoded bytes all topic rings together may hold.
    pub max_ring_bytes: u64,
    /// Active topics (with streams or lingering) at once.
    pub max_topics: u64,
    /// Token bucket refill, tokens per second per client address.
    pub connect_rate_per_ip: u32,
    /// Token bucket size.
    pub connect_burst_per_ip: u32,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    /// TCP connections one peer address may hold open on the public listeners.
    pub max_sockets_per_ip: u64,
    /// IPv6 clients are counted (buckets, caps) by their network of this prefix length.
    pub ipv6_prefix: u8,
    /// Largest `POST /publish` body; unset: 1 MiB less the room NATS headers need.
    pub max_publish_bytes: Option<usize>,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_connections_per_ip: 256,
            max_subscribers_per_topic: 100_000,
            max_ring_bytes: 1024 * 1024 * 1024,
            max_topics: 100_000,
            connect_rate_per_ip: 50,
            connect_burst_per_ip: 100,
            trusted_proxies: Vec::new(),
            max_sockets_per_ip: 1024,
            ipv6_prefix: 64,
            max_publish_bytes: None,
        }
    }
}

/// `[limits]`, validated.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Global stream cap.
    pub max_connections: u64,
    /// Per-address stream cap.
    pub max_connections_per_ip: u64,
    /// Per-topic stream cap.
    pub max_subscribers_per_topic: u64,
    /// Byte budget of all rings.
    pub max_ring_bytes: u64,
    /// Active topics cap.
    pub max_topics: usize,
    /// Token refill per second.
    pub connect_rate_per_ip: u32,
    /// Bucket size.
    pub connect_burst_per_ip: u32,
    /// Trusted proxy networks.
    pub trusted_proxies: Vec<IpNet>,
    /// Open public-listener sockets per peer address.
    pub max_sockets_per_ip: u64,
    /// Prefix length IPv6 clients are keyed by.
    pub ipv6_prefix: u8,
    /// Largest publish body, when configured.
    pub max_publish_bytes: Option<usize>,
}

/// Largest `limits.max_topics` accepted.
const MAX_TOPICS: u64 = 10_000_000;

/// `[limits]`, validated (`max_ring_bytes` against `sse.replay_bytes`).
pub(super) fn validate(limits: RawLimits, sse: &SseSettings) -> Result<LimitSettings, ConfigError> {
    let trusted_proxies = limits
        .trusted_proxies
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    invalid(
                        "limits.trusted_proxies",
                        format!("{s:?} is not an IP network (e.g. 10.0.0.0/8) or address"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LimitSettings {
        max_connections: in_range(
            "limits.max_connections",
            limits.max_connections,
            1,
            u64::MAX,
        )?,
        max_connections_per_ip: in_range(
            "limits.max_connections_per_ip",
            limits.max_connections_per_ip,
            1,
            u64::MAX,
        )?,
        max_subscribers_per_topic: in_range(
            "limits.max_subscribers_per_topic",
            limits.max_subscribers_per_topic,
            1,
            u64::MAX,
        )?,
        max_ring_bytes: in_range(
            "limits.max_ring_bytes",
            limits.max_ring_bytes,
            sse.replay_bytes as u64,
            MAX_BUDGET_BYTES,
        )
        .map_err(|_| {
            invalid(
                "limits.max_ring_bytes",
                format!(
                    "{} must be at least sse.replay_bytes ({}) and at most {MAX_BUDGET_BYTES}",
                    limits.max_ring_bytes, sse.replay_bytes
                ),
            )
        })?,
        max_topics: in_range("limits.max_topics", limits.max_topics, 1, MAX_TOPICS)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))?,
        connect_rate_per_ip: in_range(
            "limits.connect_rate_per_ip",
            limits.connect_rate_per_ip,
            1,
            u32::MAX,
        )?,
        connect_burst_per_ip: in_range(
            "limits.connect_burst_per_ip",
            limits.connect_burst_per_ip,
            1,
            u32::MAX,
        )?,
        trusted_proxies,
        max_sockets_per_ip: in_range(
            "limits.max_sockets_per_ip",
            limits.max_sockets_per_ip,
            1,
            u64::MAX,
        )?,
        ipv6_prefix: in_range("limits.ipv6_prefix", limits.ipv6_prefix, 1, 128)?,
        max_publish_bytes: limits
            .max_publish_bytes
            .map(|n| in_range("limits.max_publish_bytes", n, 1, 64 * 1024 * 1024))
            .transpose()?,
    })
}
