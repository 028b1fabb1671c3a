//! Fan-out spans of sampled messages: one per topic, counting the topic's streams, ended
//! at the last socket write, and ended all the same when a stream never writes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sse_trace::{Exporter, Kind, Parent, Span, SpanContext, SpanRecord, Tracer, Value};
use tokio::io::{AsyncReadExt, DuplexStream};

use super::{hub_with, msg, topic};
use crate::{BodyFraming, Hub, Incoming, StreamControl, StreamReport, WriterConfig, serve};

#[derive(Debug, Default)]
struct Keep(Arc<Mutex<Vec<SpanRecord>>>);

impl Exporter for Keep {
    fn export(&self, span: SpanRecord) {
        self.0.lock().unwrap().push(span);
    }
}

/// A sampled `ingest` span (kept open by the caller) and what is exported.
fn ingest_span() -> (Span, Arc<Mutex<Vec<SpanRecord>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let tracer = Tracer::new(Keep(spans.clone()), 1.0);
    let span = tracer.start("ingest", Kind::Consumer, Some(&SpanContext::random(true)));
    (span, spans)
}

fn traced(data: &str, parent: Parent) -> Incoming {
    Incoming {
        trace: Some(parent),
        ..msg(data)
    }
}

fn fanouts(spans: &Arc<Mutex<Vec<SpanRecord>>>) -> Vec<SpanRecord> {
    let spans = spans.lock().unwrap();
    spans
        .iter()
        .filter(|s| s.name == "fanout")
        .cloned()
        .collect()
}

fn int(span: &SpanRecord, key: &str) -> i64 {
    span.attributes
        .iter()
        .find_map(|(k, v)| match v {
            Value::Int(n) if *k == key => Some(*n),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{key} missing from {span:?}"))
}

fn config() -> WriterConfig {
    WriterConfig {
        client_buffer: 64,
        ..super::writer::config()
    }
}

/// A stream on `name` served by a writer over a pipe of `buffer` bytes.
fn stream(
    hub: &Hub,
    name: &str,
    buffer: usize,
) -> (DuplexStream, tokio::task::JoinHandle<StreamReport>) {
    let (server, client) = tokio::io::duplex(buffer);
    let sub = hub.subscribe(&[topic(name)], None).unwrap();
    let task = tokio::spawn(async move {
        let control = StreamControl::default();
        serve(
            server,
            sub,
            Bytes::new(),
            BodyFraming::Raw,
            &config(),
            &control,
        )
        .await
    });
    (client, task)
}

/// Reads until `needle` has arrived.
async fn read_until(client: &mut DuplexStream, needle: &str) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("the frame arrives")
            .unwrap();
        assert!(n > 0, "stream ended before {needle:?}");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Waits (a few seconds at most) until `n` fan-out spans have ended.
async fn ended(spans: &Arc<Mutex<Vec<SpanRecord>>>, n: usize) -> Vec<SpanRecord> {
    for _ in 0..500 {
        let done = fanouts(spans);
        if done.len() >= n {
            return done;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{n} fan-out spans expected, got {:?}", fanouts(spans));
}

#[tokio::test]
async fn one_fanout_span_per_message_ends_at_the_last_write() {
    let (hub, feed) = hub_with(16, 8);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (mut client, task) = stream(&hub, "orders", 4096);
        read_until(&mut client, ": connected").await;
        clients.push((client, task));
    }
    let (ingest, spans) = ingest_span();
    feed.ingest(&topic("orders"), traced("hello", ingest.parent().unwrap()));
    // Untraced messages around it add nothing.
    feed.ingest(&topic("orders"), msg("plain"));
    for (client, _) in &mut clients {
        read_until(client, "plain").await;
    }
    let done = ended(&spans, 1).await;
    assert_eq!(done.len(), 1, "one span for three streams");
    let span = &done[0];
    assert_eq!(span.parent, Some(ingest.context().span_id));
    assert_eq!(span.context.trace_id, ingest.context().trace_id);
    assert_eq!(int(span, "sse.streams"), 3);
    assert_eq!(int(span, "sse.streams_written"), 3);
    assert_eq!(span.events.len(), 1);
    assert_eq!(span.events[0].name, "last_write");
    assert_eq!(span.end, span.events[0].time, "ends at the last write");
    drop(ingest);
}

#[tokio::test]
async fn a_stream_that_never_writes_the_frame_still_lets_the_span_end() {
    let (hub, feed) = hub_with(16, 8);
    let (mut reader, _task) = stream(&hub, "t", 4096);
    read_until(&mut reader, ": connected").await;
    // A second stream that never drains: its cursor gives its share back when it goes.
    let idle = hub.subscribe(&[topic("t")], None).unwrap();
    let (ingest, spans) = ingest_span();
    feed.ingest(&topic("t"), traced("x", ingest.parent().unwrap()));
    read_until(&mut reader, "data: x").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(fanouts(&spans).is_empty(), "waits for the second stream");
    drop(idle);
    let done = ended(&spans, 1).await;
    assert_eq!(int(&done[0], "sse.streams"), 2);
    assert_eq!(int(&done[0], "sse.streams_written"), 1);

    // A stream whose socket is full owes the frame; it ends owing it.
    let (mut stalled, task) = stream(&hub, "u", 16);
    let mut buf = [0u8; 64];
    let _ = stalled.read(&mut buf).await.unwrap();
    feed.ingest(
        &topic("u"),
        traced(&"y".repeat(200), ingest.parent().unwrap()),
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fanouts(&spans).len(), 1, "the frame is still owed");
    drop(stalled);
    let _ = task.await;
    let done = ended(&spans, 2).await;
    assert_eq!(int(&done[1], "sse.streams"), 1);
    assert_eq!(int(&done[1], "sse.streams_written"), 0);
    assert!(done[1].events.is_empty());
}

#[tokio::test]
async fn a_frame_written_in_pieces_is_written_at_its_last_byte() {
    let (hub, feed) = hub_with(16, 8);
    let (mut client, _task) = stream(&hub, "t", 32);
    read_until(&mut client, ": connected").await;
    let (ingest, spans) = ingest_span();
    feed.ingest(
        &topic("t"),
        traced(&"z".repeat(500), ingest.parent().unwrap()),
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(fanouts(&spans).is_empty(), "not written yet");
    read_until(&mut client, "zzzz\n\n").await;
    let done = ended(&spans, 1).await;
    assert_eq!(int(&done[0], "sse.streams_written"), 1);
}

#[tokio::test]
async fn a_topic_without_streams_ends_its_span_at_once_and_untraced_topics_hold_nothing() {
    let (hub, feed) = hub_with(16, 8);
    let _held = feed.hold(&topic("nobody")).unwrap();
    let (ingest, spans) = ingest_span();
    feed.ingest(&topic("nobody"), traced("x", ingest.parent().unwrap()));
    let done = fanouts(&spans);
    assert_eq!(done.len(), 1);
    assert_eq!(int(&done[0], "sse.streams"), 0);

    let sub = hub.subscribe(&[topic("plain")], None).unwrap();
    feed.ingest(&topic("plain"), msg("x"));
    let t = hub
        .inner
        .topics
        .lock()
        .by_name
        .get("plain")
        .cloned()
        .unwrap();
    assert!(!t.traced.load(std::sync::atomic::Ordering::Relaxed));
    assert!(t.ring.read().iter_from(0).all(|e| e.trace.is_none()));
    assert_eq!(t.readers.load(std::sync::atomic::Ordering::Relaxed), 1);
    drop(sub);
    assert_eq!(t.readers.load(std::sync::atomic::Ordering::Relaxed), 0);
}
