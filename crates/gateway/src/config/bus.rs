//! `[bus]`, `[nats]` and `[jetstream]`: where events come from.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sse_bus::{JetStreamConfig, NatsBusConfig, ServerAddr};
use sse_topic::TopicName;

use super::{ConfigError, in_range, invalid};

/// `[bus]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBus {
    /// Where events come from.
    pub kind: BusKind,
}

/// `bus.kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// NATS (core subjects or a JetStream stream).
    #[default]
    Nats,
    /// No broker: the publish API feeds the hub inside this process.
    Memory,
}

/// `[nats]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNats {
    /// One server URL or a comma-separated list.
    pub url: String,
    /// Topic `t` is subject `<subject_prefix>.t`.
    pub subject_prefix: String,
}

impl Default for RawNats {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            subject_prefix: "sse".into(),
        }
    }
}

/// `[jetstream]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawJetStream {
    /// Back every topic with a JetStream stream.
    pub enabled: bool,
    /// Stream name.
    pub stream: String,
    /// Create the stream when it is missing.
    pub create: bool,
    /// When the gateway creates the stream: how long it keeps messages.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// When the gateway creates the stream: its replicas.
    pub replicas: usize,
    /// Replays from the stream in flight at once.
    pub max_concurrent_replays: usize,
}

impl Default for RawJetStream {
    fn default() -> Self {
        Self {
            enabled: false,
            stream: "SSE".into(),
            create: true,
            max_age: Duration::from_secs(24 * 3600),
            replicas: 1,
            max_concurrent_replays: 64,
        }
    }
}

/// `[nats]`, validated.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// Servers, in the order given.
    pub servers: Vec<ServerAddr>,
    /// Subject prefix.
    pub subject_prefix: String,
}

/// `[bus]`, `[nats]` and `[jetstream]`, validated: the bus kind, the NATS servers and
/// prefix, and JetStream when enabled.
pub(super) fn validate(
    bus: RawBus,
    nats: RawNats,
    jetstream: RawJetStream,
) -> Result<(BusKind, NatsSettings, Option<JetStreamConfig>), ConfigError> {
    if jetstream.stream.is_empty()
        || jetstream
            .stream
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err(invalid(
            "jetstream.stream",
            format!(
                "{:?} is not a stream name (no spaces, '.', '*', '>', '/')",
                jetstream.stream
            ),
        ));
    }
    let replicas = in_range("jetstream.replicas", jetstream.replicas, 1, 5)?;
    let max_concurrent_replays = in_range(
        "jetstream.max_concurrent_replays",
        jetstream.max_concurrent_replays,
        1,
        10_000,
    )?;
    if jetstream.enabled && bus.kind == BusKind::Memory {
        return Err(invalid(
            "jetstream.enabled",
            "JetStream needs bus.kind = \"nats\"",
        ));
    }
    let jetstream = if jetstream.enabled {
        Some(JetStreamConfig {
            stream: jetstream.stream,
            create: jetstream.create,
            max_age: jetstream.max_age,
            replicas,
            max_concurrent_replays,
        })
    } else {
        None
    };
    let servers =
        NatsBusConfig::parse_servers(&nats.url).map_err(|e| invalid("nats.url", e.to_string()))?;
    TopicName::parse(&nats.subject_prefix, false).map_err(|e| {
        invalid(
            "nats.subject_prefix",
            format!("{:?} is not a subject prefix: {e}", nats.subject_prefix),
        )
    })?;
    Ok((
        bus.kind,
        NatsSettings {
            servers,
            subject_prefix: nats.subject_prefix,
        },
        jetstream,
    ))
}
