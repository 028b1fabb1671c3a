//! Every metric of SPEC §4, registered in one registry.
//!
//! Names and label values live here and nowhere else. Labelled counters are created
//! with all their label values at start-up, so scrapes show zeros instead of missing
//! series.

use prometheus::{
    Encoder, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use sse_hub::{HubMetrics, ShardedHistogram, SubscribeError};

/// `sse_connections_total{outcome}` values.
pub const OUTCOMES: [&str; 5] = [
    "accepted",
    "rate_limited",
    "over_capacity",
    "bad_request",
    "unauthorized",
];

/// `sse_events_dropped_total{reason}` values.
pub const DROP_REASONS: [&str; 4] = [
    "slow_consumer",
    "invalid_utf8",
    "invalid_event_type",
    "too_large",
];

/// `sse_admission_rejections_total{reason}` values: why admission refused a request.
pub const REJECTIONS: [&str; 10] = [
    "rate_limited",
    "max_connections",
    "max_connections_per_ip",
    "max_subscribers_per_topic",
    "max_topics",
    "draining",
    "header_timeout",
    "header_too_large",
    "uri_too_long",
    "malformed_request",
];

/// Why admission refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Token bucket empty.
    RateLimited,
    /// `limits.max_connections`.
    MaxConnections,
    /// `limits.max_connections_per_ip`.
    MaxConnectionsPerIp,
    /// `limits.max_subscribers_per_topic`.
    MaxSubscribersPerTopic,
    /// `limits.max_topics`.
    MaxTopics,
    /// Shutting down.
    Draining,
    /// The head did not arrive within `server.header_timeout`.
    HeaderTimeout,
    /// Head over the size or field limit (431).
    HeaderTooLarge,
    /// Request line over the limit (414).
    UriTooLong,
    /// Not an HTTP/1 request (400).
    MalformedRequest,
}

impl Rejection {
    /// Which cap a refused subscription hit.
    pub fn of(e: &SubscribeError) -> Self {
        match e {
            SubscribeError::TooManyTopics { .. } => Self::MaxTopics,
            _ => Self::MaxSubscribersPerTopic,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::MaxConnections => "max_connections",
            Self::MaxConnectionsPerIp => "max_connections_per_ip",
            Self::MaxSubscribersPerTopic => "max_subscribers_per_topic",
            Self::MaxTopics => "max_topics",
            Self::Draining => "draining",
            Self::HeaderTimeout => "header_timeout",
            Self::HeaderTooLarge => "header_too_large",
            Self::UriTooLong => "uri_too_long",
            Self::MalformedRequest => "malformed_request",
        }
    }
}

/// Delivery latency buckets, 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The gateway's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// `sse_connections_active`
    pub connections_active: IntGauge,
    connections_total: IntCounterVec,
    /// `sse_nats_connected`
    pub nats_connected: IntGauge,
    rejections: IntCounterVec,
    /// `sse_rate_limited_clients`: addresses whose token bucket is tracked.
    pub rate_limited_clients: IntGauge,
    /// `sse_clients_with_streams`: addresses holding at least one stream slot.
    pub clients_with_streams: IntGauge,
    /// The handles the hub and its writers update.
    pub hub: HubMetrics,
}

/// How a stream request ended at admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code, reason = "auth is not wired in yet")]
pub enum Outcome {
    /// Streaming.
    Accepted,
    /// Token bucket empty (429).
    RateLimited,
    /// A connection cap or draining (503).
    OverCapacity,
    /// Bad topic, query or method (4xx).
    BadRequest,
    /// Missing or insufficient credentials (401/403).
    Unauthorized,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Accepted => OUTCOMES[0],
            Self::RateLimited => OUTCOMES[1],
            Self::OverCapacity => OUTCOMES[2],
            Self::BadRequest => OUTCOMES[3],
            Self::Unauthorized => OUTCOMES[4],
        }
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };

        let connections_active = gauge("sse_connections_active", "Open SSE streams.")?;
        let connections_total = IntCounterVec::new(
            Opts::new("sse_connections_total", "SSE stream requests by outcome."),
            &["outcome"],
        )?;
        registry.register(Box::new(connections_total.clone()))?;
        for outcome in OUTCOMES {
            connections_total.with_label_values(&[outcome]);
        }
        let dropped = IntCounterVec::new(
            Opts::new(
                "sse_events_dropped_total",
                "Events not delivered, by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(dropped.clone()))?;
        for reason in DROP_REASONS {
            dropped.with_label_values(&[reason]);
        }
        let latency = ShardedHistogram::new(
            HistogramOpts::new(
                "sse_delivery_latency_seconds",
                "Receipt (NATS, or the publisher's time when known) to the event's last byte \
                 taken by the client socket; one sample per delivered event.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .map_err(|e| prometheus::Error::Msg(e.to_string()))?;
        registry.register(Box::new(latency.clone()))?;

        let hub = HubMetrics {
            events_sent: counter("sse_events_sent_total", "Event frames written to clients.")?,
            dropped_slow_consumer: dropped.with_label_values(&[DROP_REASONS[0]]),
            dropped_invalid_utf8: dropped.with_label_values(&[DROP_REASONS[1]]),
            dropped_invalid_event_type: dropped.with_label_values(&[DROP_REASONS[2]]),
            dropped_too_large: dropped.with_label_values(&[DROP_REASONS[3]]),
            slow_consumer_disconnects: counter(
                "sse_slow_consumer_disconnects_total",
                "Clients cut for falling more than client_buffer frames or client_buffer_bytes bytes behind.",
            )?,
            write_timeouts: counter(
                "sse_write_timeout_disconnects_total",
                "Clients cut because their socket accepted nothing for write_timeout.",
            )?,
            topics_active: gauge("sse_topics_active", "Topics with an upstream subscription.")?,
            upstream_messages: counter(
                "sse_upstream_messages_total",
                "Messages received from NATS, each counted once.",
            )?,
            replayed_events: counter(
                "sse_replayed_events_total",
                "Events replayed to resuming clients.",
            )?,
            ring_bytes: gauge("sse_ring_bytes", "Encoded bytes held in all topic rings.")?,
            pending_bytes: gauge(
                "sse_pending_bytes",
                "Bytes owed to streams and not yet taken by their sockets (a frame owed to several streams counts once per stream; it is held once).",
            )?,
            delivery_latency: latency,
        };
        let nats_connected = gauge("sse_nats_connected", "1 while connected to NATS.")?;
        let rejections = IntCounterVec::new(
            Opts::new(
                "sse_admission_rejections_total",
                "Requests refused by admission control, by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(rejections.clone()))?;
        for reason in REJECTIONS {
            rejections.with_label_values(&[reason]);
        }
        let rate_limited_clients = gauge(
            "sse_rate_limited_clients",
            "Client addresses whose token bucket is tracked (pruned when full again).",
        )?;
        let clients_with_streams = gauge(
            "sse_clients_with_streams",
            "Client addresses holding at least one stream.",
        )?;
        Ok(Self {
            registry,
            connections_active,
            connections_total,
            nats_connected,
            rejections,
            rate_limited_clients,
            clients_with_streams,
            hub,
        })
    }

    /// Counts one stream request by outcome.
    pub fn count(&self, outcome: Outcome) {
        self.connections_total
            .with_label_values(&[outcome.label()])
            .inc();
    }

    /// Counts one admission refusal by reason.
    pub fn reject(&self, rejection: Rejection) {
        self.rejections
            .with_label_values(&[rejection.label()])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_spec_metric_is_exposed_from_the_start() {
        let m = Metrics::new().unwrap();
        let text = String::from_utf8(m.render()).unwrap();
        for name in [
            "sse_connections_active",
            "sse_connections_total",
            "sse_events_sent_total",
            "sse_events_dropped_total",
            "sse_slow_consumer_disconnects_total",
            "sse_topics_active",
            "sse_upstream_messages_total",
            "sse_replayed_events_total",
            "sse_nats_connected",
            "sse_delivery_latency_seconds",
            "sse_ring_bytes",
            "sse_pending_bytes",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        for outcome in OUTCOMES {
            assert!(text.contains(&format!("sse_connections_total{{outcome=\"{outcome}\"}} 0")));
        }
        for reason in DROP_REASONS {
            assert!(text.contains(&format!(
                "sse_events_dropped_total{{reason=\"{reason}\"}} 0"
            )));
        }
        for reason in REJECTIONS {
            assert!(text.contains(&format!(
                "sse_admission_rejections_total{{reason=\"{reason}\"}} 0"
            )));
        }
    }

    #[test]
    fn a_full_topic_table_is_its_own_rejection() {
        let too_many = SubscribeError::TooManyTopics { max: 3 };
        assert_eq!(Rejection::of(&too_many).label(), "max_topics");
        let full = SubscribeError::TopicFull {
            topic: sse_hub::TopicName::parse("a", false).unwrap(),
            max: 3,
        };
        assert_eq!(Rejection::of(&full).label(), "max_subscribers_per_topic");
    }
}
