#![allow(clippy::unwrap_used)]
//! The hub: ingest, fan-out to many subscribers, replay lookup, the writer's coalescing
//! over a real loopback socket, and topic isolation (ingest into a cold topic while
//! 10,000 streams drain a hot one).
//!
//! `cargo bench -p sse-hub --bench hub`

use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sse_hub::{
    BodyFraming, Cadence, Epoch, Feed, Hub, HubConfig, HubMetrics, Incoming, Source, StreamControl,
    TopicName, WriterConfig, serve,
};
use sse_trace::{Exporter, Kind, Span, SpanRecord, Tracer};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// An embedded hub (no broker): its subscriber and ingest faces.
fn hub(replay_window: usize, client_buffer: usize) -> (Hub, Feed) {
    Hub::new(
        HubConfig {
            replay_window,
            client_buffer,
            topic_linger: Duration::from_secs(30),
            ..HubConfig::default()
        },
        Epoch::new("bench").unwrap_or_else(|e| panic!("{e}")),
        HubMetrics::unregistered(),
        Source::Local,
    )
}

fn topic(name: &str) -> TopicName {
    TopicName::parse(name, false).unwrap_or_else(|e| panic!("{e}"))
}

fn message() -> Incoming {
    Incoming {
        payload: Bytes::from_static(br#"{"order":42,"status":"paid"}"#),
        event_type: None,
        received: Instant::now(),
        trace: None,
    }
}

/// A span exporter that drops every span (the cost of recording, not of sending).
#[derive(Debug)]
struct Discard;

impl Exporter for Discard {
    fn export(&self, span: SpanRecord) {
        black_box(span);
    }
}

/// One event published to a topic with 10,000 subscribers, each draining it.
fn fan_out(c: &mut Criterion) {
    let (hub, feed) = hub(1024, 256);
    let t = topic("fan");
    let mut subs: Vec<_> = (0..10_000)
        .map(|_| hub.subscribe(std::slice::from_ref(&t), None).unwrap())
        .collect();
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut group = c.benchmark_group("fan-out");
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("1 event to 10,000 subscribers", |b| {
        b.iter(|| {
            feed.ingest(&t, message());
            for sub in &mut subs {
                out.clear();
                black_box(sub.drain_into(&mut out, 256, 256 * 1024));
            }
        })
    });
    // The same with tracing on (`[tracing]`), exporter discarding: every event sampled
    // (a fan-out span, a claim per stream) and 1 % sampled (the rest untraced, as off).
    for (name, ratio) in [
        ("1 event to 10,000 subscribers, traced (100 %)", 1.0),
        ("1 event to 10,000 subscribers, traced (1 %)", 0.01),
    ] {
        let tracer = Tracer::new(Discard, ratio);
        group.bench_function(name, |b| {
            b.iter(|| {
                let ingest = tracer.start_sampled("ingest", Kind::Consumer, None);
                feed.ingest(
                    &t,
                    Incoming {
                        trace: ingest.as_ref().and_then(Span::parent),
                        ..message()
                    },
                );
                for sub in &mut subs {
                    out.clear();
                    black_box(sub.drain_into(&mut out, 256, 256 * 1024));
                }
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(1));
    group.bench_function("validate + encode + push", |b| {
        b.iter(|| feed.ingest(&t, message()))
    });
    // What an instance pays for a family message of a topic nobody here holds
    // (`sse.aggregate`), with 99,000 topics active.
    let _held: Vec<_> = (0..99_000)
        .map(|i| hub.subscribe(&[topic(&format!("user.{i}"))], None).unwrap())
        .collect();
    group.bench_function("a family message for a topic not held here", |b| {
        b.iter(|| black_box(feed.ingest_named("user.not-here", message())))
    });
    group.finish();
}

/// Placing a resuming stream's cursor in a full ring.
fn replay_lookup(c: &mut Criterion) {
    let (hub, feed) = hub(1024, 256);
    let t = topic("replay");
    let _keep = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    for _ in 0..5000 {
        feed.ingest(&t, message());
    }
    c.bench_function("replay lookup (1024-frame ring)", |b| {
        b.iter(|| {
            let sub = hub
                .subscribe(std::slice::from_ref(&t), Some(black_box("bench-4500")))
                .unwrap();
            sub.replayed()
        })
    });
}

/// N events already in the ring, written to one client over TCP loopback: coalesced
/// (up to 256 frames per write) against one write per event.
fn coalescing(c: &mut Criterion) {
    const EVENTS: usize = 100_000;
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group("writer");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(10);
    for (name, batch) in [
        ("coalesced (256 frames/write)", 256),
        ("one write per event", 1),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let (hub, feed) = hub(EVENTS, EVENTS);
                    let t = topic("w");
                    let sub = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
                    for _ in 0..EVENTS {
                        feed.ingest(&t, message());
                    }
                    (hub, sub)
                },
                |(hub, sub)| {
                    runtime.block_on(async move {
                        let listener = TcpListener::bind("127.0.0.1:0").await?;
                        let addr = listener.local_addr()?;
                        let client = tokio::spawn(async move {
                            let mut s = TcpStream::connect(addr).await?;
                            let mut buf = vec![0u8; 256 * 1024];
                            let mut total = 0usize;
                            // Frames end in a blank line; count "\n\n" across reads.
                            let mut frames = 0usize;
                            let mut last_newline_at = usize::MAX - 1;
                            while frames < EVENTS + 1 {
                                let n = s.read(&mut buf).await?;
                                if n == 0 {
                                    break;
                                }
                                for i in memchr::memchr_iter(b'\n', &buf[..n]) {
                                    if last_newline_at.wrapping_add(1) == total + i {
                                        frames += 1;
                                    }
                                    last_newline_at = total + i;
                                }
                                total += n;
                            }
                            std::io::Result::Ok(total)
                        });
                        let (server, _) = listener.accept().await?;
                        let config = WriterConfig {
                            cadence: Cadence::new(Duration::from_secs(60), Duration::from_secs(3)),
                            write_timeout: Duration::from_secs(10),
                            client_buffer: EVENTS,
                            client_buffer_bytes: usize::MAX,
                            max_write_frames: batch,
                            max_write_bytes: 256 * 1024,
                            drain_spread: Duration::ZERO,
                            drain_retry: Duration::from_secs(3),
                        };
                        let writer = tokio::spawn(async move {
                            serve(
                                server,
                                sub,
                                Bytes::new(),
                                BodyFraming::Raw,
                                &config,
                                &StreamControl::default(),
                            )
                            .await
                        });
                        let read = client.await??;
                        hub.close();
                        writer.abort();
                        std::io::Result::Ok(read)
                    })
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// A socket that takes every byte at once and never has anything to read.
struct Sink;

impl tokio::io::AsyncRead for Sink {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

impl tokio::io::AsyncWrite for Sink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Topic isolation: the rate of ingest into a cold topic (this thread) while 10,000
/// streams drain a hot topic into sinks, against the same ingest with the hot topic idle.
/// Goal: the busy rate at least 0.8 of the idle one.
///
/// On two cores: the streams' writer tasks run on a one-thread runtime (one core), this
/// thread ingests on the other, and a third, mostly sleeping thread publishes 4,000
/// events/s to the hot topic (40 M deliveries/s). The hot publisher takes the ingest lock
/// and the hot ring's write lock while the readers on the runtime's thread take its read
/// lock: what the cold ingest may wait for is what the readers hold. A control ingests
/// into a separate hub meanwhile (no lock in common): the difference between it and the
/// idle case is what busy neighbours cost any thread on this machine (caches, memory,
/// a virtual CPU's siblings), not the hub's locks.
fn isolation(c: &mut Criterion) {
    const STREAMS: usize = 10_000;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let (hub, feed) = hub(1024, 256);
    let (hot, cold) = (topic("hot"), topic("cold"));
    let _cold_reader = hub.subscribe(std::slice::from_ref(&cold), None).unwrap();
    let (other, other_feed) = self::hub(1024, 256);
    let _other_reader = other.subscribe(std::slice::from_ref(&cold), None).unwrap();
    let config: &'static WriterConfig = Box::leak(Box::new(WriterConfig {
        cadence: Cadence::new(Duration::from_secs(600), Duration::from_secs(3)),
        write_timeout: Duration::from_secs(600),
        client_buffer: 256,
        client_buffer_bytes: 4 << 20,
        max_write_frames: 256,
        max_write_bytes: 256 * 1024,
        drain_spread: Duration::ZERO,
        drain_retry: Duration::from_secs(1),
    }));
    for _ in 0..STREAMS {
        let sub = hub.subscribe(std::slice::from_ref(&hot), None).unwrap();
        runtime.spawn(async move {
            serve(
                Sink,
                sub,
                Bytes::new(),
                BodyFraming::Chunked,
                config,
                &StreamControl::default(),
            )
            .await
        });
    }
    let busy = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (feed, hot, busy, stop) = (feed.clone(), hot.clone(), busy.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
                if busy.load(Ordering::Relaxed) {
                    for _ in 0..4 {
                        feed.ingest(&hot, message());
                    }
                }
            }
        })
    };
    let mut group = c.benchmark_group("isolation");
    group.throughput(Throughput::Elements(1));
    for (name, hot_busy, into) in [
        ("cold ingest, hot topic idle", false, &feed),
        (
            "cold ingest, 10,000 streams draining a hot topic",
            true,
            &feed,
        ),
        (
            "control: another hub's ingest, hot topic draining",
            true,
            &other_feed,
        ),
    ] {
        busy.store(hot_busy, Ordering::Relaxed);
        let sent = hub.metrics().events_sent.get();
        let started = std::time::Instant::now();
        group.bench_function(name, |b| b.iter(|| into.ingest(&cold, message())));
        let rate =
            (hub.metrics().events_sent.get() - sent) as f64 / started.elapsed().as_secs_f64();
        eprintln!("  (hot topic deliveries meanwhile: {rate:.0}/s)");
    }
    stop.store(true, Ordering::Relaxed);
    let _ = publisher.join();
    group.finish();
    hub.close();
    runtime.shutdown_background();
}

criterion_group!(benches, fan_out, replay_lookup, coalescing, isolation);
criterion_main!(benches);
