//! Every metric of the protocol (§4), registered in one registry.
//!
//! Names and label values live here and nowhere else. Labelled counters are created
//! with all their label values at start-up, so scrapes show zeros instead of missing
//! series.

use prometheus::{
    Encoder, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use sse_hub::{HubMetrics, ShardedHistogram, StreamEnd, SubscribeError};

/// Declares the values of a metric label as an enum: each value is written once, here,
/// and `ALL` lists them for registering every series at start-up.
macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $label:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value.
            pub fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }
    };
}

label_values! {
    /// `sse_connections_total{outcome}`: how a stream request ended at admission.
    Outcome {
        /// Streaming.
        Accepted = "accepted",
        /// Token bucket empty (429).
        RateLimited = "rate_limited",
        /// A connection cap or draining (503).
        OverCapacity = "over_capacity",
        /// Bad topic, query or method (4xx).
        BadRequest = "bad_request",
        /// Missing or insufficient credentials (401/403).
        Unauthorized = "unauthorized",
    }
}

label_values! {
    /// `sse_events_dropped_total{reason}`: why an event was not delivered.
    DropReason {
        /// A client cut for being too far behind never got it.
        SlowConsumer = "slow_consumer",
        /// The payload was not UTF-8.
        InvalidUtf8 = "invalid_utf8",
        /// The `Sse-Event` header was not a usable event type.
        InvalidEventType = "invalid_event_type",
        /// Framed, larger than the byte budgets allow.
        TooLarge = "too_large",
    }
}

label_values! {
    /// `sse_admission_rejections_total{reason}`: why admission refused a request.
    Rejection {
        /// Token bucket empty.
        RateLimited = "rate_limited",
        /// `limits.max_connections`.
        MaxConnections = "max_connections",
        /// `limits.max_connections_per_ip`.
        MaxConnectionsPerIp = "max_connections_per_ip",
        /// `limits.max_sockets_per_ip`: a peer's open connections of any kind.
        MaxSocketsPerIp = "max_sockets_per_ip",
        /// `limits.max_subscribers_per_topic`.
        MaxSubscribersPerTopic = "max_subscribers_per_topic",
        /// `limits.max_topics`.
        MaxTopics = "max_topics",
        /// Shutting down.
        Draining = "draining",
        /// The head did not arrive within `server.header_timeout`.
        HeaderTimeout = "header_timeout",
        /// Head over the size or field limit (431).
        HeaderTooLarge = "header_too_large",
        /// Request line over the limit (414).
        UriTooLong = "uri_too_long",
        /// Not an HTTP/1 request, or ambiguous framing (400).
        MalformedRequest = "malformed_request",
    }
}

label_values! {
    /// `sse_streams_closed_total{reason}`: why an open stream ended.
    Closed {
        /// The client closed it, reset it, or sent what an event stream does not take.
        ClientGone = "client_gone",
        /// Cut for falling too far behind.
        SlowConsumer = "slow_consumer",
        /// Its socket accepted nothing for `sse.write_timeout`.
        WriteTimeout = "write_timeout",
        /// Its token reached `exp`.
        TokenExpired = "token_expired",
        /// An operator closed it.
        Revoked = "revoked",
        /// The gateway shut down.
        Shutdown = "shutdown",
    }
}

label_values! {
    /// `sse_config_reloads_total{result}`: how a SIGHUP reload went.
    Reload {
        /// The file was read and its live keys applied.
        Ok = "ok",
        /// The file was refused whole; the old configuration stays.
        Error = "error",
    }
}

impl Closed {
    /// Why a stream with this end was closed.
    pub fn of(end: &StreamEnd) -> Self {
        match end {
            StreamEnd::SlowConsumer { .. } => Self::SlowConsumer,
            StreamEnd::WriteTimeout => Self::WriteTimeout,
            StreamEnd::TokenExpired => Self::TokenExpired,
            StreamEnd::Revoked => Self::Revoked,
            StreamEnd::Shutdown => Self::Shutdown,
            _ => Self::ClientGone,
        }
    }
}

impl Rejection {
    /// Which cap a refused subscription hit.
    pub fn of(e: &SubscribeError) -> Self {
        match e {
            SubscribeError::TooManyTopics { .. } => Self::MaxTopics,
            _ => Self::MaxSubscribersPerTopic,
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
    /// `sse_upstream_confirmations_total`: round trips made to confirm new core
    /// subscriptions (one per batch of topics).
    pub upstream_confirmations: IntCounter,
    rejections: IntCounterVec,
    streams_closed: IntCounterVec,
    reloads: IntCounterVec,
    /// `sse_rate_limited_clients`: addresses whose token bucket is tracked.
    pub rate_limited_clients: IntGauge,
    /// `sse_clients_with_streams`: addresses holding at least one stream slot.
    pub clients_with_streams: IntGauge,
    /// The handles the hub and its writers update.
    pub hub: HubMetrics,
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
        for outcome in Outcome::ALL {
            connections_total.with_label_values(&[outcome.label()]);
        }
        let dropped = IntCounterVec::new(
            Opts::new(
                "sse_events_dropped_total",
                "Events not delivered, by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(dropped.clone()))?;
        for reason in DropReason::ALL {
            dropped.with_label_values(&[reason.label()]);
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
            dropped_slow_consumer: dropped.with_label_values(&[DropReason::SlowConsumer.label()]),
            dropped_invalid_utf8: dropped.with_label_values(&[DropReason::InvalidUtf8.label()]),
            dropped_invalid_event_type: dropped
                .with_label_values(&[DropReason::InvalidEventType.label()]),
            dropped_too_large: dropped.with_label_values(&[DropReason::TooLarge.label()]),
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
        let upstream_confirmations = counter(
            "sse_upstream_confirmations_total",
            "Round trips to NATS that confirmed new topic subscriptions (one per batch of topics).",
        )?;
        let rejections = IntCounterVec::new(
            Opts::new(
                "sse_admission_rejections_total",
                "Requests refused by admission control, by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(rejections.clone()))?;
        for reason in Rejection::ALL {
            rejections.with_label_values(&[reason.label()]);
        }
        let streams_closed = IntCounterVec::new(
            Opts::new("sse_streams_closed_total", "Streams ended, by reason."),
            &["reason"],
        )?;
        registry.register(Box::new(streams_closed.clone()))?;
        for reason in Closed::ALL {
            streams_closed.with_label_values(&[reason.label()]);
        }
        let reloads = IntCounterVec::new(
            Opts::new(
                "sse_config_reloads_total",
                "Configuration reloads (SIGHUP), by result.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(reloads.clone()))?;
        for result in Reload::ALL {
            reloads.with_label_values(&[result.label()]);
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
            upstream_confirmations,
            rejections,
            streams_closed,
            reloads,
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

    /// Counts one ended stream.
    pub fn closed(&self, end: &StreamEnd) {
        self.streams_closed
            .with_label_values(&[Closed::of(end).label()])
            .inc();
    }

    /// Counts one configuration reload.
    pub fn reloaded(&self, result: Reload) {
        self.reloads.with_label_values(&[result.label()]).inc();
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
            "sse_streams_closed_total",
            "sse_config_reloads_total",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        let zero = |family: &str, label: &str, value: &str| {
            let series = format!("{family}{{{label}=\"{value}\"}} 0");
            assert!(text.contains(&series), "{series} missing");
        };
        for outcome in Outcome::ALL {
            zero("sse_connections_total", "outcome", outcome.label());
        }
        for reason in DropReason::ALL {
            zero("sse_events_dropped_total", "reason", reason.label());
        }
        for reason in Rejection::ALL {
            zero("sse_admission_rejections_total", "reason", reason.label());
        }
        for reason in Closed::ALL {
            zero("sse_streams_closed_total", "reason", reason.label());
        }
        for result in Reload::ALL {
            zero("sse_config_reloads_total", "result", result.label());
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
