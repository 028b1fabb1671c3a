//! `[sse]`: what a stream gets (heartbeat, retry, replay, slow-client budgets).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sse_hub::TopicName;

use super::{ConfigError, in_range, invalid, positive};

/// `[sse]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSse {
    /// Comment after this much silence.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Reconnection delay announced to clients.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
    /// Events kept per topic in memory for resume.
    pub replay_window: usize,
    /// Frames a client may fall behind before the slow-consumer policy cuts it.
    pub client_buffer: usize,
    /// Encoded bytes kept per topic in memory.
    pub replay_bytes: usize,
    /// Bytes a client may fall behind before the slow-consumer policy cuts it.
    pub client_buffer_bytes: usize,
    /// A client whose socket accepts nothing this long is cut.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Topics on one stream.
    pub max_topics_per_connection: usize,
    /// Upstream subscription kept this long after a topic's last client left.
    #[serde(with = "humantime_serde")]
    pub topic_linger: Duration,
    /// Accept `*` and `>` in topics.
    pub allow_wildcards: bool,
    /// Topic families held upstream by one wildcard subscription each.
    pub aggregate: Vec<String>,
    /// Streams announce their id (`gateway.stream`) and take topic changes
    /// (`POST /streams/{id}`).
    pub stream_control: bool,
}

impl Default for RawSse {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_secs(3),
            replay_window: 1024,
            client_buffer: 256,
            replay_bytes: 8 * 1024 * 1024,
            client_buffer_bytes: 4 * 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            max_topics_per_connection: 16,
            topic_linger: Duration::from_secs(30),
            allow_wildcards: false,
            stream_control: false,
            aggregate: Vec::new(),
        }
    }
}

/// `[sse]`, validated.
#[derive(Debug, Clone)]
pub struct SseSettings {
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Reconnection delay.
    pub retry: Duration,
    /// Frames kept per topic for resume.
    pub replay_window: usize,
    /// Slow-consumer threshold in frames.
    pub client_buffer: usize,
    /// Encoded bytes kept per topic.
    pub replay_bytes: usize,
    /// Slow-consumer threshold in bytes.
    pub client_buffer_bytes: usize,
    /// Write timeout.
    pub write_timeout: Duration,
    /// Topics per stream.
    pub max_topics_per_connection: usize,
    /// Linger of idle topics.
    pub topic_linger: Duration,
    /// Wildcards accepted.
    pub allow_wildcards: bool,
    /// Topic families held upstream by one wildcard subscription each (none overlap).
    pub aggregate: Vec<TopicName>,
    /// Live topic changes (protocol §11).
    pub stream_control: bool,
}

/// Largest `replay_window` / `client_buffer` accepted (frames per topic / per client).
const MAX_FRAMES: usize = 1_000_000;
/// Smallest byte budget accepted (per ring, per client).
const MIN_BUDGET_BYTES: usize = 1024;
/// Largest byte budget accepted (1 TiB).
pub(super) const MAX_BUDGET_BYTES: u64 = 1 << 40;

/// [`MAX_BUDGET_BYTES`] as a `usize` (smaller on 32-bit targets).
fn budget_max() -> usize {
    usize::try_from(MAX_BUDGET_BYTES).unwrap_or(usize::MAX)
}

/// `sse.aggregate`: wildcard patterns, no two of which a topic could both match (its
/// messages would arrive twice).
fn families(patterns: &[String]) -> Result<Vec<TopicName>, ConfigError> {
    let mut families: Vec<TopicName> = Vec::with_capacity(patterns.len());
    for text in patterns {
        let family = TopicName::parse(text, true)
            .map_err(|e| invalid("sse.aggregate", format!("{text:?}: {e}")))?;
        if !family.is_wildcard() {
            return Err(invalid(
                "sse.aggregate",
                format!("{text:?} has no wildcard: a family is a pattern such as \"user.*\""),
            ));
        }
        if let Some(other) = families.iter().find(|f| f.overlaps(&family)) {
            return Err(invalid(
                "sse.aggregate",
                format!("{text:?} overlaps {other}: a topic of both would arrive twice"),
            ));
        }
        families.push(family);
    }
    Ok(families)
}

/// `[sse]`, validated.
pub(super) fn validate(sse: RawSse) -> Result<SseSettings, ConfigError> {
    let sse = SseSettings {
        heartbeat: positive("sse.heartbeat", sse.heartbeat)?,
        retry: sse.retry,
        replay_window: in_range("sse.replay_window", sse.replay_window, 0, MAX_FRAMES)?,
        client_buffer: in_range("sse.client_buffer", sse.client_buffer, 1, MAX_FRAMES)?,
        replay_bytes: in_range(
            "sse.replay_bytes",
            sse.replay_bytes,
            MIN_BUDGET_BYTES,
            budget_max(),
        )?,
        client_buffer_bytes: in_range(
            "sse.client_buffer_bytes",
            sse.client_buffer_bytes,
            MIN_BUDGET_BYTES,
            budget_max(),
        )?,
        write_timeout: positive("sse.write_timeout", sse.write_timeout)?,
        max_topics_per_connection: in_range(
            "sse.max_topics_per_connection",
            sse.max_topics_per_connection,
            1,
            1024,
        )?,
        topic_linger: sse.topic_linger,
        allow_wildcards: sse.allow_wildcards,
        aggregate: families(&sse.aggregate)?,
        stream_control: sse.stream_control,
    };
    if u64::try_from(sse.retry.as_millis()).is_err() {
        return Err(invalid("sse.retry", "is too long"));
    }
    Ok(sse)
}
