//! Traces of sse-gateway: the W3C trace context, and the spans the gateway records for
//! one event's path — `publish` (the publish API), `ingest` (a message from the bus),
//! `fanout` (a topic's hand-out to its streams) — never one per client.
//!
//! The crate knows no exporter and no network: a [`Tracer`] decides which traces are
//! recorded (parent-based: a `traceparent`'s `sampled` flag is followed; a new trace is
//! recorded with the configured ratio) and hands each finished, sampled span to an
//! [`Exporter`] the binary provides (OTLP/HTTP there). The hub and the bus depend on it
//! alone, so they never see OpenTelemetry's SDK.
//!
//! Costs: with no tracer (tracing off) callers hold `Option<Tracer>` = `None` and do
//! nothing per message. With one, an unsampled span is its sampling decision: no
//! allocation, nothing exported.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use sse_trace::{Exporter, Kind, SpanContext, SpanRecord, Tracer};
//!
//! #[derive(Debug, Default)]
//! struct Keep(Arc<Mutex<Vec<SpanRecord>>>);
//! impl Exporter for Keep {
//!     fn export(&self, span: SpanRecord) {
//!         self.0.lock().unwrap().push(span);
//!     }
//! }
//!
//! let spans = Arc::new(Mutex::new(Vec::new()));
//! let tracer = Tracer::new(Keep(spans.clone()), 0.01);
//! // A publisher's traceparent, sampled: followed whatever the ratio.
//! let remote = SpanContext::from_traceparent(
//!     b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
//! )
//! .unwrap();
//! let mut ingest = tracer.start("ingest", Kind::Consumer, Some(&remote));
//! ingest.set("sse.topic", "orders.42");
//! // The hub is handed the parent and adds its child.
//! let fanout = ingest.parent().unwrap().child("fanout", Kind::Internal);
//! fanout.end();
//! ingest.end();
//! let spans = spans.lock().unwrap();
//! assert_eq!(spans.len(), 2);
//! assert!(spans.iter().all(|s| s.context.trace_id == remote.trace_id));
//! assert_eq!(spans[0].parent, Some(spans[1].context.span_id));
//! ```

mod context;
mod span;
mod tracer;

pub use context::{
    SpanContext, SpanId, TRACEPARENT, TRACEPARENT_LEN, TraceId, Traceparent, TraceparentError,
};
pub use span::{Event, Kind, Span, SpanRecord, Value};
pub use tracer::{Exporter, Parent, Tracer};
