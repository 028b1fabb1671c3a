//! The `ingest` span of a message from NATS.
//!
//! With tracing on, each message's `traceparent` header is read: a sampled one is
//! continued (a publisher's trace, or this gateway's own `publish` span, which puts the
//! header on what it publishes), an unsampled one is not, and a message without one
//! starts a new trace at the tracer's ratio. A sampled message's span is handed to the
//! hub as the parent of its `fanout` spans ([`sse_hub::Incoming::trace`]). With tracing
//! off (no tracer) nothing here runs: the header is not even looked up.

use sse_hub::Ingested;
use sse_trace::{Kind, Span, SpanContext, Tracer};

/// The `ingest` span of a message whose `traceparent` header is `traceparent`, when it
/// is recorded; `None` (nothing made) when tracing is off or the trace not sampled.
/// Callers look the header up only when there is a tracer.
pub(crate) fn ingest_span(tracer: Option<&Tracer>, traceparent: Option<&[u8]>) -> Option<Span> {
    let tracer = tracer?;
    let parent = traceparent.and_then(|value| SpanContext::from_traceparent(value).ok());
    let mut span = tracer.start_sampled("ingest", Kind::Consumer, parent.as_ref())?;
    span.set("messaging.system", "nats");
    span.set("messaging.operation.type", "receive");
    Some(span)
}

/// Ends an `ingest` span with what the hub did with the message.
pub(crate) fn end_ingest(mut span: Span, topic: &str, payload_len: usize, outcome: Ingested) {
    span.set("sse.topic", topic.to_owned());
    span.set("messaging.message.body.size", payload_len);
    let dropped = match outcome {
        Ingested::Stored(seq) => {
            span.set("sse.seq", seq);
            None
        }
        Ingested::InvalidUtf8 => Some("invalid_utf8"),
        Ingested::InvalidEventType => Some("invalid_event_type"),
        Ingested::TooLarge => Some("too_large"),
        Ingested::NoSuchTopic => Some("no_such_topic"),
        _ => Some("other"),
    };
    if let Some(reason) = dropped {
        span.set("sse.dropped", reason);
    }
    span.end();
}
