//! The `fanout` span of a sampled message: one per topic it is stored in, never one per
//! stream.
//!
//! A message that carries a sampled trace ([`crate::Incoming::trace`]) gets a [`Fanout`]
//! when it is stored: the span starts then, under the message's `ingest` span, and counts
//! the streams reading the topic at that moment. The ring entry holds it; each stream
//! that drains the frame takes a [`Claim`] on it, which it gives back once the frame's
//! last byte is written to its socket (the write's time becomes the span's `last_write`),
//! or drops without writing (the stream was cut, the client left). A stream that ends
//! before even draining the frame gives its share back when its cursor goes
//! ([`crate::subscription`]).
//!
//! The span ends when every counted stream has written or given up — at the last write
//! when all wrote — and at the latest when the last holder lets go of it (the frame left
//! the ring and no stream still owes it), so a span always ends, whatever its streams
//! do. Messages without a sampled trace carry `None`: nothing here is made for them.
//!
//! Attributes: `sse.topic`, `sse.streams` (streams reading the topic when the message
//! was stored), `sse.streams_written` (of those, how many had it written when the span
//! ended); the event `last_write` marks the last socket write.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use sse_trace::{Kind, Parent, Span};

use crate::clock::Clock;

/// The fan-out of one sampled message on one topic.
pub(crate) struct Fanout {
    /// Taken by whoever ends it.
    span: Mutex<Option<Span>>,
    /// The moment the span started on the hub's clock, to date writes.
    started: u64,
    started_wall: SystemTime,
    /// Counted streams that have neither written the frame nor given up.
    remaining: AtomicU32,
    /// Streams that wrote it.
    written: AtomicU32,
    /// The latest write, on the hub's clock (0: none yet).
    last_write: AtomicU64,
}

impl fmt::Debug for Fanout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fanout")
            .field("remaining", &self.remaining.load(Ordering::Relaxed))
            .field("written", &self.written.load(Ordering::Relaxed))
            .finish()
    }
}

impl Fanout {
    /// Starts the fan-out span of a message stored in `topic`, read by `streams`
    /// streams, under `parent`. `None` when there is no stream to wait for: the span is
    /// then ended at once.
    pub fn start(parent: &Parent, topic: &str, streams: u32, clock: Clock) -> Option<Arc<Self>> {
        let mut span = parent.child("fanout", Kind::Internal);
        span.set("sse.topic", topic.to_owned());
        span.set("sse.streams", streams);
        if streams == 0 {
            span.set("sse.streams_written", 0u32);
            span.end();
            return None;
        }
        let started_wall = span.start_time().unwrap_or_else(SystemTime::now);
        Some(Arc::new(Self {
            span: Mutex::new(Some(span)),
            started: clock.now(),
            started_wall,
            remaining: AtomicU32::new(streams),
            written: AtomicU32::new(0),
            last_write: AtomicU64::new(0),
        }))
    }

    /// A stream takes its share (it drained the frame).
    pub fn claim(self: &Arc<Self>) -> Claim {
        Claim(Some(self.clone()))
    }

    /// A counted stream will never write the frame (it ended before draining it, or
    /// skipped it).
    pub fn give_up(&self) {
        self.settle(None);
    }

    /// One share is settled; the last one ends the span (at the write, when it is one).
    fn settle(&self, wrote_at: Option<u64>) {
        if let Some(at) = wrote_at {
            self.last_write.fetch_max(at, Ordering::Relaxed);
            self.written.fetch_add(1, Ordering::Relaxed);
        }
        let last = self
            .remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        // More settlements than counted streams (a resuming stream replaying the frame,
        // or a stream that joined as it was stored) change nothing once it ended.
        if last == Ok(1) {
            let end = wrote_at.map_or_else(SystemTime::now, |at| self.wall(at));
            self.end(end);
        }
    }

    /// The wall-clock time of `at` on the hub's clock.
    fn wall(&self, at: u64) -> SystemTime {
        self.started_wall + Duration::from_nanos(at.saturating_sub(self.started))
    }

    fn end(&self, at: SystemTime) {
        let Some(mut span) = self.span.lock().take() else {
            return;
        };
        span.set("sse.streams_written", self.written.load(Ordering::Acquire));
        let last = self.last_write.load(Ordering::Acquire);
        if last > 0 {
            span.add_event("last_write", self.wall(last));
        }
        span.end_at(at);
    }
}

impl Drop for Fanout {
    /// Nobody holds the frame any more: the span ends now, however many streams wrote.
    fn drop(&mut self) {
        self.end(SystemTime::now());
    }
}

/// One stream's share of a [`Fanout`], taken when it drained the frame: given back by
/// [`Claim::written`] once the frame's last byte is written, or, dropped unwritten, as
/// given up.
#[derive(Debug)]
pub(crate) struct Claim(Option<Arc<Fanout>>);

impl Claim {
    /// The frame's last byte was written to the stream's socket at `now` (hub clock).
    pub fn written(mut self, now: u64) {
        if let Some(fanout) = self.0.take() {
            fanout.settle(Some(now));
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(fanout) = self.0.take() {
            fanout.settle(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use sse_trace::{Exporter, SpanContext, SpanRecord, Tracer, Value};

    use super::*;

    #[derive(Debug, Default)]
    struct Keep(Arc<StdMutex<Vec<SpanRecord>>>);

    impl Exporter for Keep {
        fn export(&self, span: SpanRecord) {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(span);
        }
    }

    /// The parent of the fan-out spans, and the fan-out spans exported.
    fn parent() -> (Parent, Arc<StdMutex<Vec<SpanRecord>>>) {
        let spans = Arc::new(StdMutex::new(Vec::new()));
        let tracer = Tracer::new(Keep(spans.clone()), 1.0);
        let ingest = tracer.start("ingest", Kind::Consumer, Some(&SpanContext::random(true)));
        let parent = ingest.parent().unwrap_or_else(|| unreachable!("sampled"));
        (parent, spans)
    }

    fn int(span: &SpanRecord, key: &str) -> Option<i64> {
        span.attributes.iter().find_map(|(k, v)| match v {
            Value::Int(n) if *k == key => Some(*n),
            _ => None,
        })
    }

    /// The fan-out spans ended so far.
    fn ended(spans: &Arc<StdMutex<Vec<SpanRecord>>>) -> Vec<SpanRecord> {
        let spans = spans.lock().unwrap_or_else(|e| e.into_inner());
        spans
            .iter()
            .filter(|s| s.name == "fanout")
            .cloned()
            .collect()
    }

    #[test]
    fn ends_at_the_last_write_of_the_counted_streams() {
        let (parent, spans) = parent();
        let clock = Clock::new();
        let fanout = Fanout::start(&parent, "orders", 3, clock).unwrap();
        let claims: Vec<Claim> = (0..3).map(|_| fanout.claim()).collect();
        let t0 = clock.now();
        let mut at = t0;
        for claim in claims {
            at += 1_000_000;
            claim.written(at);
            if at < t0 + 3_000_000 {
                assert!(ended(&spans).is_empty(), "not before the last write");
            }
        }
        let done = ended(&spans);
        assert_eq!(done.len(), 1);
        let span = &done[0];
        assert_eq!(span.parent, Some(parent.context().span_id));
        assert_eq!(int(span, "sse.streams"), Some(3));
        assert_eq!(int(span, "sse.streams_written"), Some(3));
        assert_eq!(span.events.len(), 1);
        assert_eq!(span.events[0].name, "last_write");
        assert_eq!(span.events[0].time, span.end);
        let took = span.end.duration_since(span.start).unwrap_or_default();
        assert!(took >= Duration::from_millis(3), "{took:?}");
        drop(fanout);
        assert_eq!(ended(&spans).len(), 1, "ended once");
    }

    #[test]
    fn streams_that_give_up_or_never_come_still_let_it_end() {
        let (parent, spans) = parent();
        let clock = Clock::new();
        // Two counted streams: one writes, one is cut before writing (its claim drops).
        let fanout = Fanout::start(&parent, "t", 2, clock).unwrap();
        fanout.claim().written(clock.now());
        drop(fanout.claim());
        assert_eq!(ended(&spans).len(), 1);
        assert_eq!(int(&ended(&spans)[0], "sse.streams_written"), Some(1));
        // Extra settlements after the end change nothing.
        fanout.claim().written(clock.now());
        fanout.give_up();
        drop(fanout);
        assert_eq!(ended(&spans).len(), 1);

        // Three counted streams, only one ever drains it: the span ends when the ring
        // and the last claim let go.
        let fanout = Fanout::start(&parent, "t", 3, clock).unwrap();
        let claim = fanout.claim();
        drop(fanout);
        assert_eq!(ended(&spans).len(), 1, "a claim still holds it");
        claim.written(clock.now());
        let spans = ended(&spans);
        assert_eq!(spans.len(), 2);
        assert_eq!(int(&spans[1], "sse.streams"), Some(3));
        assert_eq!(int(&spans[1], "sse.streams_written"), Some(1));
    }

    #[test]
    fn no_stream_ends_it_at_once() {
        let (parent, spans) = parent();
        assert!(Fanout::start(&parent, "t", 0, Clock::new()).is_none());
        let spans = ended(&spans);
        assert_eq!(spans.len(), 1);
        assert_eq!(int(&spans[0], "sse.streams"), Some(0));
        assert!(spans[0].events.is_empty());
    }
}
