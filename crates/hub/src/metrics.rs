//! The counters the hub and its writers update.
//!
//! The hub does not name or register metrics: the binary creates these handles with the
//! names of protocol §4 and registers them, so every metric name lives in one place. Label
//! values are resolved once here, never per event.

use prometheus::{HistogramOpts, IntCounter, IntGauge};

use crate::histogram::ShardedHistogram;

/// Handles to every metric the hub updates.
#[derive(Debug, Clone)]
pub struct HubMetrics {
    /// Event frames (including `gateway.reset` frames) written to client sockets, each
    /// counted when its last byte is taken by the socket.
    pub events_sent: IntCounter,
    /// Frames a slow client never received because it was cut.
    pub dropped_slow_consumer: IntCounter,
    /// Upstream messages whose payload was not UTF-8.
    pub dropped_invalid_utf8: IntCounter,
    /// Upstream messages whose `Sse-Event` header was not a usable event type.
    pub dropped_invalid_event_type: IntCounter,
    /// Upstream messages whose encoded frame is larger than the hub takes
    /// ([`crate::HubConfig::max_frame_bytes`]).
    pub dropped_too_large: IntCounter,
    /// Clients cut because they fell more than `client_buffer` frames or
    /// `client_buffer_bytes` bytes behind.
    pub slow_consumer_disconnects: IntCounter,
    /// Clients cut because their socket accepted nothing for `write_timeout`.
    pub write_timeouts: IntCounter,
    /// Topics with an upstream subscription.
    pub topics_active: IntGauge,
    /// Messages received from upstream, each counted once.
    pub upstream_messages: IntCounter,
    /// Frames sent to resuming clients from the replay ring.
    pub replayed_events: IntCounter,
    /// Encoded bytes held by all topic rings.
    pub ring_bytes: IntGauge,
    /// Bytes streams owe their sockets (taken from the rings, not yet written): a frame
    /// owed to several streams counts once per stream, though it is held once.
    pub pending_bytes: IntGauge,
    /// Upstream receipt (or the publisher's time, when known) to the moment the event's
    /// last byte is taken by the client socket: one observation per delivered event.
    pub delivery_latency: ShardedHistogram,
}

impl HubMetrics {
    /// Handles that are not registered anywhere: for tests and benchmarks.
    pub fn unregistered() -> Self {
        let counter = |name: &str| IntCounter::new(name, name).unwrap_or_else(|_| unreachable());
        let gauge = |name: &str| IntGauge::new(name, name).unwrap_or_else(|_| unreachable());
        Self {
            events_sent: counter("events_sent"),
            dropped_slow_consumer: counter("dropped_slow_consumer"),
            dropped_invalid_utf8: counter("dropped_invalid_utf8"),
            dropped_invalid_event_type: counter("dropped_invalid_event_type"),
            dropped_too_large: counter("dropped_too_large"),
            slow_consumer_disconnects: counter("slow_consumer_disconnects"),
            write_timeouts: counter("write_timeouts"),
            topics_active: gauge("topics_active"),
            upstream_messages: counter("upstream_messages"),
            replayed_events: counter("replayed_events"),
            ring_bytes: gauge("ring_bytes"),
            pending_bytes: gauge("pending_bytes"),
            delivery_latency: ShardedHistogram::new(HistogramOpts::new(
                "delivery_latency",
                "delivery_latency",
            ))
            .unwrap_or_else(|_| unreachable()),
        }
    }
}

/// Metric construction only fails for invalid names; the names above are constants.
fn unreachable() -> ! {
    panic!("constant metric names are valid")
}
