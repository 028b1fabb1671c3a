use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, DuplexStream};

use super::{decode, hub_with, msg, topic};
use crate::writer::Writer;
use std::sync::Arc;

use crate::{
    BodyFraming, Cadence, CloseReason, StreamControl, StreamEnd, StreamReport, WriterConfig, serve,
};

pub(super) fn config() -> WriterConfig {
    WriterConfig {
        cadence: Cadence::new(Duration::from_secs(15), Duration::from_secs(3)),
        write_timeout: Duration::from_secs(10),
        client_buffer: 8,
        client_buffer_bytes: 4 * 1024 * 1024,
        max_write_frames: usize::MAX,
        max_write_bytes: 64 * 1024,
        drain_spread: Duration::ZERO,
        drain_retry: Duration::from_secs(3),
    }
}

/// Reads what is available within a short while (virtual time in paused tests).
async fn read_some(client: &mut DuplexStream) -> Vec<u8> {
    let mut buf = vec![0u8; 64 * 1024];
    match tokio::time::timeout(Duration::from_millis(50), client.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].to_vec(),
        _ => Vec::new(),
    }
}

/// Splits a chunked body into its chunks; the final zero chunk is `b""`.
fn chunks(mut body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let len =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap(), 16).unwrap();
        let data = &body[line_end + 2..line_end + 2 + len];
        assert_eq!(&body[line_end + 2 + len..line_end + 4 + len], b"\r\n");
        out.push(data.to_vec());
        body = &body[line_end + 4 + len..];
    }
    out
}

fn spawn_writer(
    hub: &crate::Hub,
    name: &str,
    buffer: usize,
    config: WriterConfig,
) -> (DuplexStream, tokio::task::JoinHandle<StreamReport>) {
    spawn_controlled(hub, name, buffer, config, Arc::default())
}

/// Serves `sub` on `server` without chunking, from a task of its own.
fn spawn_raw(
    server: DuplexStream,
    sub: crate::Subscription,
    config: WriterConfig,
) -> tokio::task::JoinHandle<StreamReport> {
    tokio::spawn(async move {
        let control = StreamControl::default();
        serve(
            server,
            sub,
            Bytes::new(),
            BodyFraming::Raw,
            &config,
            &control,
        )
        .await
    })
}

/// [`spawn_writer`] with the stream's control handle.
fn spawn_controlled(
    hub: &crate::Hub,
    name: &str,
    buffer: usize,
    config: WriterConfig,
    control: Arc<StreamControl>,
) -> (DuplexStream, tokio::task::JoinHandle<StreamReport>) {
    let (server, client) = tokio::io::duplex(buffer);
    let sub = hub.subscribe(&[topic(name)], None).unwrap();
    let task = tokio::spawn(async move {
        serve(
            server,
            sub,
            Bytes::from_static(b"HEAD\r\n\r\n"),
            BodyFraming::Chunked,
            &config,
            &control,
        )
        .await
    });
    (client, task)
}

#[tokio::test(start_paused = true)]
async fn opens_with_head_retry_and_comment_in_one_chunk() {
    let (hub, _feed) = hub_with(16, 8);
    let (mut client, _task) = spawn_writer(&hub, "a", 4096, config());
    let got = read_some(&mut client).await;
    assert_eq!(
        got,
        b"HEAD\r\n\r\n19\r\nretry: 3000\n: connected\n\n\r\n".to_vec()
    );
}

#[tokio::test(start_paused = true)]
async fn frames_queued_together_go_out_in_one_chunk() {
    let (hub, feed) = hub_with(256, 256);
    let t = topic("a");
    let config = WriterConfig {
        client_buffer: 256,
        ..config()
    };
    let (mut client, _task) = spawn_writer(&hub, "a", 1 << 20, config);
    read_some(&mut client).await;
    for i in 0..100 {
        feed.ingest(&t, msg(&format!("e{i}")));
    }
    let body = read_some(&mut client).await;
    let chunks = chunks(&body);
    assert_eq!(chunks.len(), 1, "coalesced into one write");
    let events = decode(&chunks[0]);
    assert_eq!(events.len(), 100);
    assert_eq!(events[99].data, "e99");
    assert_eq!(hub.metrics().events_sent.get(), 100);
    // One latency observation per delivered event.
    assert_eq!(hub.metrics().delivery_latency.sample_count(), 100);
}

#[tokio::test(start_paused = true)]
async fn heartbeat_after_silence() {
    let (hub, feed) = hub_with(16, 8);
    let (mut client, _task) = spawn_writer(&hub, "a", 4096, config());
    read_some(&mut client).await;
    tokio::time::sleep(Duration::from_secs(14)).await;
    assert!(read_some(&mut client).await.is_empty());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let body = read_some(&mut client).await;
    assert_eq!(chunks(&body), [b": heartbeat\n\n".to_vec()]);
    // Events postpone the next heartbeat.
    tokio::time::sleep(Duration::from_secs(10)).await;
    feed.ingest(&topic("a"), msg("x"));
    read_some(&mut client).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(read_some(&mut client).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_reloaded_cadence_reaches_open_streams() {
    let (hub, _feed) = hub_with(16, 8);
    let config = config();
    let cadence = config.cadence.clone();
    let (mut client, _task) = spawn_writer(&hub, "a", 4096, config);
    read_some(&mut client).await;
    // A shorter heartbeat and a new retry: the open stream's next timer uses the
    // former, its next heartbeat announces the latter, once.
    cadence.set(Duration::from_secs(5), Duration::from_millis(7500));
    tokio::time::sleep(Duration::from_secs(15)).await;
    let body = read_some(&mut client).await;
    assert_eq!(chunks(&body), [b"retry: 7500\n: heartbeat\n\n".to_vec()]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let body = read_some(&mut client).await;
    assert_eq!(chunks(&body), [b": heartbeat\n\n".to_vec()]);
}

#[tokio::test]
async fn a_closed_client_ends_the_stream_and_frees_its_slot() {
    let (hub, _feed) = hub_with(16, 8);
    let (client, task) = spawn_writer(&hub, "a", 4096, config());
    // Without anything to write, the close is noticed from the read side.
    tokio::task::yield_now().await;
    drop(client);
    let report = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(report.end, StreamEnd::ClientClosed), "{report:?}");
    assert_eq!(hub.subscriber_count("a"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_cut_as_slow() {
    let (hub, feed) = hub_with(64, 8);
    let t = topic("a");
    let (_client, task) = spawn_writer(&hub, "a", 256, config());
    let mut published = 0;
    while !task.is_finished() && published < 1000 {
        feed.ingest(
            &t,
            msg(&format!("payload number {published} with some padding")),
        );
        published += 1;
        tokio::task::yield_now().await;
    }
    let report = tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .unwrap()
        .unwrap();
    let StreamEnd::SlowConsumer { dropped } = report.end else {
        panic!("{report:?}");
    };
    assert!(dropped > 8, "{dropped}");
    let m = hub.metrics();
    assert_eq!(m.slow_consumer_disconnects.get(), 1);
    assert_eq!(m.dropped_slow_consumer.get(), dropped);
    assert_eq!(report.frames_sent + dropped, published);
}

#[tokio::test(start_paused = true)]
async fn a_socket_that_accepts_nothing_hits_the_write_timeout() {
    let (hub, feed) = hub_with(64, 1000);
    let t = topic("a");
    let config = WriterConfig {
        client_buffer: 1000,
        ..config()
    };
    let (_client, task) = spawn_writer(&hub, "a", 64, config);
    for _ in 0..5 {
        feed.ingest(&t, msg(&"x".repeat(100)));
    }
    let report = tokio::time::timeout(Duration::from_secs(11), task)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(report.end, StreamEnd::WriteTimeout), "{report:?}");
    assert_eq!(hub.metrics().write_timeouts.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn closing_the_hub_ends_streams_with_retry() {
    let (hub, _feed) = hub_with(16, 8);
    let (mut client, task) = spawn_writer(&hub, "a", 4096, config());
    read_some(&mut client).await;
    hub.close();
    let report = tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(report.end, StreamEnd::Shutdown), "{report:?}");
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    let chunks = chunks(&rest);
    assert_eq!(chunks.len(), 2, "a retry chunk, then the last chunk");
    assert!(chunks[1].is_empty());
    let retry: u64 = std::str::from_utf8(&chunks[0])
        .unwrap()
        .strip_prefix("retry: ")
        .and_then(|r| r.strip_suffix("\n\n"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1500..=4500).contains(&retry),
        "jittered around 3000: {retry}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_drain_spreads_stream_ends_and_keeps_streaming_until_then() {
    let (hub, feed) = hub_with(64, 64);
    let t = topic("a");
    let config = WriterConfig {
        drain_spread: Duration::from_secs(10),
        ..config()
    };
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(spawn_writer(&hub, "a", 1 << 16, config.clone()));
    }
    for (client, _) in &mut clients {
        read_some(client).await;
    }
    hub.close();
    feed.ingest(&t, msg("during the drain"));
    let started = tokio::time::Instant::now();
    // Each stream's end time, taken when its task finishes.
    let timed: Vec<_> = clients
        .into_iter()
        .map(|(client, task)| {
            tokio::spawn(async move {
                let report = task.await.unwrap();
                (client, report, tokio::time::Instant::now())
            })
        })
        .collect();
    let mut ends = Vec::new();
    for t in timed {
        let (mut client, report, ended) = tokio::time::timeout(Duration::from_secs(11), t)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(report.end, StreamEnd::Shutdown), "{report:?}");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        let events = decode(&chunks(&rest).concat());
        assert_eq!(
            events.len(),
            1,
            "the event published during the drain arrives"
        );
        ends.push(ended - started);
    }
    ends.sort();
    // Not all at once: the ends are spread over the drain period.
    assert!(ends[19] - ends[0] > Duration::from_secs(2), "{ends:?}");
}

#[tokio::test(start_paused = true)]
async fn raw_framing_has_no_chunks() {
    let (hub, feed) = hub_with(16, 8);
    let (server, mut client) = tokio::io::duplex(4096);
    let sub = hub.subscribe(&[topic("a")], None).unwrap();
    spawn_raw(server, sub, config());
    assert_eq!(
        read_some(&mut client).await,
        b"retry: 3000\n: connected\n\n".to_vec()
    );
    feed.ingest(&topic("a"), msg("x"));
    assert_eq!(
        read_some(&mut client).await,
        b"id: t-1\ndata: x\n\n".to_vec()
    );
}

#[tokio::test(start_paused = true)]
async fn a_resume_reset_goes_out_with_the_opening() {
    let (hub, _feed) = hub_with(16, 8);
    let (server, mut client) = tokio::io::duplex(4096);
    let sub = hub.subscribe(&[topic("a")], Some("bogus")).unwrap();
    spawn_raw(server, sub, config());
    let got = read_some(&mut client).await;
    assert_eq!(
        got,
        b"retry: 3000\n: connected\n\nid: t-0\nevent: gateway.reset\ndata: {\"reason\":\"malformed_id\"}\n\n".to_vec()
    );
    assert_eq!(hub.metrics().events_sent.get(), 1);
}

/// Polls a writer once with a waker that does nothing.
fn poll_once<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    writer: &mut Writer<'_, S>,
) -> std::task::Poll<StreamReport> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    writer.poll(&mut cx)
}

/// The newest frame of `name`'s ring.
fn newest_frame(hub: &crate::Hub, name: &str) -> Bytes {
    let topics = hub.inner.topics.lock();
    let ring = topics.by_name[name].ring.read();
    ring.iter_from(0).last().unwrap().frame.clone()
}

#[tokio::test(start_paused = true)]
async fn stalled_streams_owe_references_to_the_rings_frames_not_copies() {
    let (hub, feed) = hub_with(16, 16);
    let t = topic("big");
    let config = WriterConfig {
        client_buffer_bytes: 1 << 20,
        ..config()
    };
    let control = StreamControl::default();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let (server, client) = tokio::io::duplex(256);
        let sub = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
        let mut writer = Writer::new(server, sub, BodyFraming::Chunked, &config, &control);
        writer.open(b"HEAD\r\n\r\n");
        assert!(poll_once(&mut writer).is_pending());
        assert!(writer.owed().is_empty(), "the opening fits the socket");
        streams.push((writer, client));
    }
    feed.ingest(&t, msg(&"x".repeat(100_000)));
    let frame = newest_frame(&hub, "big");
    let inside = |(at, len): (usize, usize)| {
        let start = frame.as_ptr() as usize;
        at >= start && at + len <= start + frame.len()
    };
    let mut owed_total = 0;
    for (writer, _) in &mut streams {
        assert!(poll_once(writer).is_pending(), "the socket is full");
        let owed = writer.owed();
        let ranges = owed.ranges();
        // The frame's unwritten tail, then the chunk's CRLF (static, 2 bytes).
        assert_eq!(ranges.len(), 2, "{ranges:?}");
        assert!(inside(ranges[0]), "the owed frame is the ring's own bytes");
        assert!(ranges[0].1 > 99_000, "{ranges:?}");
        assert_eq!(ranges[1].1, 2);
        assert_eq!(owed.events(), 1);
        owed_total += owed.bytes();
    }
    assert_eq!(
        hub.metrics().pending_bytes.get(),
        i64::try_from(owed_total).unwrap(),
        "sse_pending_bytes counts what each stream owes"
    );
    assert_eq!(
        hub.metrics().events_sent.get(),
        0,
        "nothing fully written yet"
    );

    // One client reads everything: its event is delivered when its last byte is taken.
    let (mut writer, mut client) = streams.pop().unwrap();
    let reader = tokio::spawn(async move {
        let mut body = Vec::new();
        let mut buf = vec![0u8; 4096];
        while decode(&chunks_lenient(after_head(&body))).is_empty() {
            let n = client.read(&mut buf).await.unwrap();
            body.extend_from_slice(&buf[..n]);
        }
        body
    });
    for _ in 0..100_000 {
        if reader.is_finished() {
            break;
        }
        assert!(poll_once(&mut writer).is_pending());
        tokio::task::yield_now().await;
    }
    assert!(writer.owed().is_empty());
    let events = decode(&chunks_lenient(after_head(&reader.await.unwrap())));
    assert_eq!(events[0].data.len(), 100_000);
    assert_eq!(hub.metrics().events_sent.get(), 1);
    assert_eq!(hub.metrics().delivery_latency.sample_count(), 1);
    let still_owed: usize = streams.iter().map(|(w, _)| w.owed().bytes()).sum();
    assert_eq!(
        hub.metrics().pending_bytes.get(),
        i64::try_from(still_owed).unwrap()
    );
    drop(streams);
    assert_eq!(
        hub.metrics().pending_bytes.get(),
        0,
        "ended streams owe nothing"
    );
}

/// The body after the test's `HEAD` (whatever has arrived of it).
fn after_head(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"HEAD\r\n\r\n").unwrap_or(&[])
}

#[tokio::test(start_paused = true)]
async fn small_frames_copied_under_the_lock_are_owed_as_references_too() {
    // Small frames are copied into the batch under the ring's lock (no reference count
    // on the common path); when the socket takes only part, the unwritten ones are owed
    // as handles to the ring's frames, found again by position.
    let (hub, feed) = hub_with(256, 256);
    let t = topic("small");
    let config = WriterConfig {
        client_buffer: 256,
        ..config()
    };
    let (server, _client) = tokio::io::duplex(1024);
    let sub = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    let control = StreamControl::default();
    let mut writer = Writer::new(server, sub, BodyFraming::Chunked, &config, &control);
    writer.open(b"HEAD\r\n\r\n");
    assert!(poll_once(&mut writer).is_pending());
    for i in 0..40 {
        feed.ingest(&t, msg(&format!("{i:02}{}", "s".repeat(2000))));
    }
    assert!(poll_once(&mut writer).is_pending());
    let ring: Vec<Bytes> = {
        let topics = hub.inner.topics.lock();
        let ring = topics.by_name["small"].ring.read();
        ring.iter_from(0).map(|e| e.frame.clone()).collect()
    };
    let owed = writer.owed();
    let ranges = owed.ranges();
    // One batch (64 KiB: 32 frames): the partly written frame and those after it, then
    // the chunk's CRLF.
    let n = owed.events();
    assert_eq!(n, 32);
    assert_eq!(ranges.len(), n + 1, "{ranges:?}");
    for (i, &(at, len)) in ranges[..n].iter().enumerate() {
        let frame = &ring[i];
        let start = frame.as_ptr() as usize;
        assert!(
            at >= start && at + len == start + frame.len(),
            "owed segment {i} is the tail of the ring's frame {i}"
        );
    }
    assert_eq!(ranges[n].1, 2);
}

/// The chunk payloads of a chunked body read so far (a partial last chunk ignored).
fn chunks_lenient(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let Ok(len) = usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap(), 16)
        else {
            break;
        };
        if body.len() < line_end + 4 + len {
            break;
        }
        out.extend_from_slice(&body[line_end + 2..line_end + 2 + len]);
        body = &body[line_end + 4 + len..];
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_stalled_client_is_cut_on_client_buffer_bytes() {
    let (hub, feed) = hub_with(1000, 1000);
    let t = topic("a");
    let config = WriterConfig {
        client_buffer: 1000,
        client_buffer_bytes: 10_000,
        ..config()
    };
    let (_client, task) = spawn_writer(&hub, "a", 256, config);
    let payload = "y".repeat(1000);
    let mut published = 0u64;
    while !task.is_finished() && published < 1000 {
        feed.ingest(&t, msg(&payload));
        published += 1;
        tokio::task::yield_now().await;
    }
    let report = tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .unwrap()
        .unwrap();
    let StreamEnd::SlowConsumer { dropped } = report.end else {
        panic!("{report:?}");
    };
    // Far below the 1,000-frame budget: the 10,000-byte one cut it.
    assert!(published < 30, "cut after {published} frames of ~1 KB");
    assert_eq!(report.frames_sent + dropped, published);
    assert_eq!(hub.metrics().write_timeouts.get(), 0);
    assert_eq!(hub.metrics().slow_consumer_disconnects.get(), 1);
    assert_eq!(hub.metrics().pending_bytes.get(), 0);
}

/// A socket with a vectored write (like a TCP stream) over a small duplex.
struct Vectored(DuplexStream);

impl tokio::io::AsyncRead for Vectored {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Vectored {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[tokio::test(start_paused = true)]
async fn owed_bytes_go_out_in_order_through_vectored_writes() {
    let (hub, feed) = hub_with(256, 256);
    let t = topic("v");
    let (server, mut client) = tokio::io::duplex(300);
    let sub = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    let config = WriterConfig {
        client_buffer: 256,
        ..config()
    };
    let task = tokio::spawn(async move {
        serve(
            Vectored(server),
            sub,
            Bytes::from_static(b"HEAD\r\n\r\n"),
            BodyFraming::Chunked,
            &config,
            &StreamControl::default(),
        )
        .await
    });
    for i in 0..50 {
        feed.ingest(&t, msg(&format!("{i}-{}", "z".repeat(i * 37))));
    }
    let mut body = Vec::new();
    let mut buf = vec![0u8; 1000];
    while decode(&chunks_lenient(after_head(&body))).len() < 50 {
        let n = client.read(&mut buf).await.unwrap();
        body.extend_from_slice(&buf[..n]);
    }
    let events = decode(&chunks(after_head(&body)).concat());
    let want: Vec<String> = (0..50)
        .map(|i| format!("{i}-{}", "z".repeat(i * 37)))
        .collect();
    assert_eq!(
        events.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
        want
    );
    assert_eq!(hub.metrics().events_sent.get(), 50);
    assert_eq!(hub.metrics().delivery_latency.sample_count(), 50);
    assert_eq!(hub.metrics().pending_bytes.get(), 0);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_replay_waiting_for_its_turn_does_not_stop_heartbeats() {
    let ((hub, feed), replays) = super::log_hub(crate::HubConfig {
        replay_window: 4,
        client_buffer: 4,
        ..crate::HubConfig::default()
    });
    feed.set_connected(true);
    feed.start_log(crate::Epoch::new("js1").unwrap(), 100);
    let (server, mut client) = tokio::io::duplex(4096);
    let sub = hub.subscribe(&[topic("a")], Some("js1-3")).unwrap();
    // The replay is asked for but never served (it waits for a turn): the stream is open.
    let (_request, _sink) = replays.take().pop().unwrap();
    spawn_raw(server, sub, config());
    assert_eq!(
        read_some(&mut client).await,
        b"retry: 3000\n: connected\n\n".to_vec()
    );
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(read_some(&mut client).await, b": heartbeat\n\n".to_vec());
    }
}

#[tokio::test(start_paused = true)]
async fn a_closed_stream_ends_with_gateway_close_then_retry_and_nothing_after() {
    let (hub, feed) = hub_with(16, 8);
    let control = Arc::new(StreamControl::new(None));
    let (mut client, task) = spawn_controlled(&hub, "a", 4096, config(), control.clone());
    read_some(&mut client).await;
    feed.ingest(&topic("a"), msg("before"));
    assert_eq!(
        chunks(&read_some(&mut client).await),
        vec![b"id: t-1\ndata: before\n\n".to_vec()]
    );
    assert!(control.close(CloseReason::Revoked));
    let report = task.await.unwrap();
    assert!(matches!(report.end, StreamEnd::Revoked), "{:?}", report.end);
    feed.ingest(&topic("a"), msg("after"));
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert_eq!(
        chunks(&rest),
        vec![
            b"event: gateway.close\ndata: {\"reason\":\"revoked\"}\n\nretry: 3000\n\n".to_vec(),
            Vec::new()
        ]
    );
    assert_eq!(control.events_sent(), 1);
    assert_eq!(control.pending_bytes(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_stream_ends_at_its_token_expiry_without_a_task_of_its_own() {
    let (hub, feed) = hub_with(16, 8);
    let expires = tokio::time::Instant::now() + Duration::from_secs(20);
    let control = Arc::new(StreamControl::new(Some(expires)));
    let (mut client, task) = spawn_controlled(&hub, "a", 4096, config(), control.clone());
    read_some(&mut client).await;
    // A heartbeat at 15 s; the stream is still open.
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert_eq!(
        chunks(&read_some(&mut client).await),
        vec![b": heartbeat\n\n".to_vec()]
    );
    feed.ingest(&topic("a"), msg("x"));
    assert_eq!(chunks(&read_some(&mut client).await).len(), 1);
    let report = task.await.unwrap();
    assert!(tokio::time::Instant::now() >= expires);
    assert!(tokio::time::Instant::now() < expires + Duration::from_millis(100));
    assert!(
        matches!(report.end, StreamEnd::TokenExpired),
        "{:?}",
        report.end
    );
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert_eq!(
        chunks(&rest),
        vec![
            b"event: gateway.close\ndata: {\"reason\":\"token_expired\"}\n\nretry: 3000\n\n"
                .to_vec(),
            Vec::new()
        ]
    );
    assert_eq!(control.closed(), Some(CloseReason::TokenExpired));
}

#[tokio::test(start_paused = true)]
async fn a_stream_closed_while_its_socket_is_full_is_still_bounded_by_the_write_timeout() {
    let (hub, feed) = hub_with(64, 64);
    let config = WriterConfig {
        client_buffer: 64,
        ..config()
    };
    let control = Arc::new(StreamControl::new(None));
    let (_client, task) = spawn_controlled(&hub, "a", 64, config, control.clone());
    for i in 0..20 {
        feed.ingest(&topic("a"), msg(&format!("{i:03}{}", "x".repeat(100))));
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(control.pending_bytes() > 0, "the socket is full");
    control.close(CloseReason::Revoked);
    let report = task.await.unwrap();
    assert!(
        matches!(report.end, StreamEnd::WriteTimeout),
        "{:?}",
        report.end
    );
}

#[tokio::test(start_paused = true)]
async fn topics_change_while_the_stream_streams_and_the_opening_event_comes_first() {
    let (hub, feed) = hub_with(16, 8);
    let control = Arc::new(
        StreamControl::new(None)
            .with_opening_event(Bytes::from_static(b"event: gateway.stream\ndata: {}\n\n")),
    );
    let (mut client, _task) = spawn_controlled(&hub, "a", 4096, config(), control.clone());
    let opening = read_some(&mut client).await;
    assert!(
        opening.ends_with(b": connected\n\nevent: gateway.stream\ndata: {}\n\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&opening)
    );
    feed.ingest(&topic("b"), msg("b before"));
    let added = hub.subscribe(&[topic("b")], None).unwrap();
    let topics = control
        .change_topics(Some(added), vec![topic("a")])
        .await
        .unwrap();
    assert_eq!(topics, vec![topic("b")]);
    assert_eq!(hub.subscriber_count("a"), 0, "a was released");
    assert_eq!(hub.subscriber_count("b"), 1);
    feed.ingest(&topic("a"), msg("a after"));
    feed.ingest(&topic("b"), msg("b after"));
    let got = chunks(&read_some(&mut client).await).concat();
    assert_eq!(String::from_utf8_lossy(&got), "id: t-2\ndata: b after\n\n");
    // Adding a topic it reads already changes nothing.
    let again = hub.subscribe(&[topic("b")], None).unwrap();
    let topics = control
        .change_topics(Some(again), Vec::new())
        .await
        .unwrap();
    assert_eq!(topics, vec![topic("b")]);
    assert_eq!(hub.subscriber_count("b"), 1);
}
