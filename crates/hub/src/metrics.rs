//! The counters the hub and its writers update.
//!
//! The hub does not name or register metrics: the binary creates these handles with the
//! names of SPEC §4 and registers them, so every metric name lives in one place. Label
//! values are resolved once here, never per event.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge};

/// Handles to every metric the hub updates.
#[derive(Debug, Clone)]
pub struct HubMetrics {
    /// Event frames (including `gateway.reset` frames) written to client sockets.
    pub events_sent: IntCounter,
    /// Frames a slow client never received because it was cut.
    pub dropped_slow_consumer: IntCounter,
    /// Upstream messages whose payload was not UTF-8.
    pub dropped_invalid_utf8: IntCounter,
    /// Upstream messages whose `Sse-Event` header was not a usable event type.
    pub dropped_invalid_event_type: IntCounter,
    /// Clients cut because they fell more than `client_buffer` frames behind.
    pub slow_consumer_disconnects: IntCounter,
    /// Clients cut because their socket accepted nothing for `write_timeout`.
    pub write_timeouts: IntCounter,
    /// Topics with an upstream subscription.
    pub topics_active: IntGauge,
    /// Messages received from upstream, each counted once.
    pub upstream_messages: IntCounter,
    /// Frames sent to resuming clients from the replay ring.
    pub replayed_events: IntCounter,
    /// Upstream receipt to client socket write, one sample per socket write (the oldest
    /// frame in it).
    pub delivery_latency: Histogram,
}

impl HubMetrics {
    /// Handles that are not registered anywhere: for tests and benchmarks.
    pub fn unregistered() -> Self {
        let counter = |name: &str| IntCounter::new(name, name).unwrap_or_else(|_| unreachable());
        Self {
            events_sent: counter("events_sent"),
            dropped_slow_consumer: counter("dropped_slow_consumer"),
            dropped_invalid_utf8: counter("dropped_invalid_utf8"),
            dropped_invalid_event_type: counter("dropped_invalid_event_type"),
            slow_consumer_disconnects: counter("slow_consumer_disconnects"),
            write_timeouts: counter("write_timeouts"),
            topics_active: IntGauge::new("topics_active", "topics_active")
                .unwrap_or_else(|_| unreachable()),
            upstream_messages: counter("upstream_messages"),
            replayed_events: counter("replayed_events"),
            delivery_latency: Histogram::with_opts(HistogramOpts::new(
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
