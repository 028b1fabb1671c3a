//! The tracer: which traces are recorded, and where finished spans go.

use std::fmt;
use std::sync::Arc;

use crate::context::{SpanContext, SpanId};
use crate::span::{Kind, Span, SpanRecord};

/// Where finished, sampled spans go (the binary's OTLP exporter; a test's list).
///
/// Called on whatever thread ended the span — a stream's writer, the bus's read loop —
/// so it must return at once: queue the span in a bounded queue, or drop it when the
/// queue is full. Never block, never wait for the network.
pub trait Exporter: Send + Sync + fmt::Debug {
    /// Takes one finished span.
    fn export(&self, span: SpanRecord);
}

/// Decides which traces are recorded and starts spans; cheap to clone (one `Arc`).
///
/// Sampling is parent-based: a span with a parent follows the parent's `sampled` flag
/// (a publisher's decision, carried in its `traceparent`); a span without one starts a
/// new trace, recorded with probability `sampling_ratio`. An unsampled span costs the
/// decision and nothing else: no allocation, nothing exported.
#[derive(Clone)]
pub struct Tracer {
    inner: Arc<Inner>,
}

struct Inner {
    exporter: Box<dyn Exporter>,
    /// A new trace is recorded when a random `u64` is below this; `u64::MAX` with
    /// `always`.
    threshold: u64,
    always: bool,
}

impl fmt::Debug for Tracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracer")
            .field("exporter", &self.inner.exporter)
            .field("always", &self.inner.always)
            .field("threshold", &self.inner.threshold)
            .finish()
    }
}

impl Tracer {
    /// A tracer recording `sampling_ratio` (clamped to 0.0..=1.0) of the traces it
    /// starts, and every trace a sampled parent asks for, into `exporter`.
    pub fn new(exporter: impl Exporter + 'static, sampling_ratio: f64) -> Self {
        let ratio = if sampling_ratio.is_nan() {
            0.0
        } else {
            sampling_ratio.clamp(0.0, 1.0)
        };
        // 2^64 × ratio; the cast saturates at u64::MAX.
        let threshold = (ratio * 18_446_744_073_709_551_616.0) as u64;
        Self {
            inner: Arc::new(Inner {
                exporter: Box::new(exporter),
                threshold,
                always: ratio >= 1.0,
            }),
        }
    }

    /// Whether a span with this parent (`None`: a new trace) is recorded.
    pub fn samples(&self, parent: Option<&SpanContext>) -> bool {
        match parent {
            Some(parent) => parent.sampled,
            None => self.inner.always || fastrand::u64(..) < self.inner.threshold,
        }
    }

    /// Starts a span under `parent`, a remote context (from a `traceparent`), or a new
    /// trace when `None`. Not sampled, it still has a context to hand on: the parent's
    /// (so the decision travels on), or a fresh unsampled one.
    pub fn start(&self, name: &'static str, kind: Kind, parent: Option<&SpanContext>) -> Span {
        if !self.samples(parent) {
            return Span::unsampled(
                parent
                    .copied()
                    .unwrap_or_else(|| SpanContext::random(false)),
            );
        }
        self.recording(name, kind, parent, true)
    }

    /// [`Tracer::start`] for a span that has nothing to hand on unless it is recorded:
    /// `None` when not sampled, and then nothing at all is made.
    pub fn start_sampled(
        &self,
        name: &'static str,
        kind: Kind,
        parent: Option<&SpanContext>,
    ) -> Option<Span> {
        self.samples(parent)
            .then(|| self.recording(name, kind, parent, true))
    }

    fn recording(
        &self,
        name: &'static str,
        kind: Kind,
        parent: Option<&SpanContext>,
        remote: bool,
    ) -> Span {
        let context = SpanContext {
            trace_id: parent.map_or_else(crate::TraceId::random, |p| p.trace_id),
            span_id: SpanId::random(),
            sampled: true,
        };
        Span::recording(
            self.clone(),
            name,
            kind,
            context,
            parent.map(|p| (p.span_id, remote)),
        )
    }

    pub(crate) fn export(&self, span: SpanRecord) {
        self.inner.exporter.export(span);
    }
}

/// A recorded span under which children are made in this process: the tracer and the
/// span's context. What a sampled message carries into the hub, so that the hub, which
/// knows no tracer, can add its fan-out span to the trace.
#[derive(Debug, Clone)]
pub struct Parent {
    tracer: Tracer,
    context: SpanContext,
}

impl Parent {
    pub(crate) fn new(tracer: Tracer, context: SpanContext) -> Self {
        Self { tracer, context }
    }

    /// The parent's context.
    pub fn context(&self) -> &SpanContext {
        &self.context
    }

    /// Starts a child span now; recorded, since its parent is.
    pub fn child(&self, name: &'static str, kind: Kind) -> Span {
        self.tracer
            .recording(name, kind, Some(&self.context), false)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, Default)]
    struct Collect(Arc<Mutex<Vec<SpanRecord>>>);

    impl Exporter for Collect {
        fn export(&self, span: SpanRecord) {
            self.0.lock().unwrap().push(span);
        }
    }

    fn tracer(ratio: f64) -> (Tracer, Arc<Mutex<Vec<SpanRecord>>>) {
        let spans = Arc::new(Mutex::new(Vec::new()));
        (Tracer::new(Collect(spans.clone()), ratio), spans)
    }

    #[test]
    fn parent_based_sampling_follows_the_parent_whatever_the_ratio() {
        let (never, _) = tracer(0.0);
        let (always, _) = tracer(1.0);
        let sampled = SpanContext::random(true);
        let unsampled = SpanContext::random(false);
        for _ in 0..100 {
            assert!(never.samples(Some(&sampled)));
            assert!(!always.samples(Some(&unsampled)));
            assert!(!never.samples(None));
            assert!(always.samples(None));
        }
    }

    #[test]
    fn a_ratio_samples_about_that_share_of_new_traces() {
        let (t, _) = tracer(0.01);
        let n = (0..100_000).filter(|_| t.samples(None)).count();
        assert!((500..1500).contains(&n), "{n} of 100,000 at 1 %");
        let (nan, _) = tracer(f64::NAN);
        assert!(!nan.samples(None));
    }

    #[test]
    fn children_share_the_trace_and_name_their_parent() {
        let (t, spans) = tracer(0.0);
        let remote = SpanContext::random(true);
        let mut publish = t.start("publish", Kind::Server, Some(&remote));
        assert!(publish.is_recording());
        publish.set("sse.topic", "orders");
        let parent = publish.parent().unwrap();
        let child = parent.child("fanout", Kind::Internal);
        let child_ctx = *child.context();
        child.end();
        let publish_ctx = *publish.context();
        publish.end();
        let spans = spans.lock().unwrap();
        assert_eq!(spans.len(), 2);
        let (fanout, publish) = (&spans[0], &spans[1]);
        assert_eq!(publish.context, publish_ctx);
        assert_eq!(publish.context.trace_id, remote.trace_id);
        assert_eq!(publish.parent, Some(remote.span_id));
        assert!(publish.parent_is_remote);
        assert_eq!(publish.attributes, vec![("sse.topic", "orders".into())]);
        assert_eq!(fanout.context, child_ctx);
        assert_eq!(fanout.parent, Some(publish_ctx.span_id));
        assert!(!fanout.parent_is_remote);
        assert!(fanout.end >= fanout.start);
    }

    #[test]
    fn unsampled_spans_hand_the_decision_on_and_export_nothing() {
        let (t, spans) = tracer(0.0);
        let remote = SpanContext::random(false);
        let mut span = t.start("publish", Kind::Server, Some(&remote));
        assert!(!span.is_recording());
        assert!(span.parent().is_none());
        span.set("ignored", 1u32);
        assert_eq!(*span.context(), remote);
        drop(span);
        let root = t.start("publish", Kind::Server, None);
        assert!(!root.context().sampled);
        assert!(t.start_sampled("ingest", Kind::Consumer, None).is_none());
        drop(root);
        assert!(spans.lock().unwrap().is_empty());
    }
}
