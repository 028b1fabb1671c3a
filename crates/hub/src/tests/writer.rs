use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, DuplexStream};

use super::{decode, hub_with, msg, topic};
use crate::{BodyFraming, StreamEnd, StreamReport, WriterConfig, serve};

fn config() -> WriterConfig {
    WriterConfig {
        heartbeat: Duration::from_secs(15),
        retry: Duration::from_secs(3),
        write_timeout: Duration::from_secs(10),
        client_buffer: 8,
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
    let (server, client) = tokio::io::duplex(buffer);
    let sub = hub.subscribe(&[topic(name)], None).unwrap();
    let task = tokio::spawn(async move {
        serve(
            server,
            sub,
            Bytes::from_static(b"HEAD\r\n\r\n"),
            BodyFraming::Chunked,
            &config,
        )
        .await
    });
    (client, task)
}

#[tokio::test(start_paused = true)]
async fn opens_with_head_retry_and_comment_in_one_chunk() {
    let hub = hub_with(16, 8);
    let (mut client, _task) = spawn_writer(&hub, "a", 4096, config());
    let got = read_some(&mut client).await;
    assert_eq!(
        got,
        b"HEAD\r\n\r\n19\r\nretry: 3000\n: connected\n\n\r\n".to_vec()
    );
}

#[tokio::test(start_paused = true)]
async fn frames_queued_together_go_out_in_one_chunk() {
    let hub = hub_with(256, 256);
    let t = topic("a");
    let config = WriterConfig {
        client_buffer: 256,
        ..config()
    };
    let (mut client, _task) = spawn_writer(&hub, "a", 1 << 20, config);
    read_some(&mut client).await;
    for i in 0..100 {
        hub.ingest(&t, msg(&format!("e{i}")));
    }
    let body = read_some(&mut client).await;
    let chunks = chunks(&body);
    assert_eq!(chunks.len(), 1, "coalesced into one write");
    let events = decode(&chunks[0]);
    assert_eq!(events.len(), 100);
    assert_eq!(events[99].data, "e99");
    assert_eq!(hub.metrics().events_sent.get(), 100);
    assert_eq!(hub.metrics().delivery_latency.get_sample_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn heartbeat_after_silence() {
    let hub = hub_with(16, 8);
    let (mut client, _task) = spawn_writer(&hub, "a", 4096, config());
    read_some(&mut client).await;
    tokio::time::sleep(Duration::from_secs(14)).await;
    assert!(read_some(&mut client).await.is_empty());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let body = read_some(&mut client).await;
    assert_eq!(chunks(&body), [b": heartbeat\n\n".to_vec()]);
    // Events postpone the next heartbeat.
    tokio::time::sleep(Duration::from_secs(10)).await;
    hub.ingest(&topic("a"), msg("x"));
    read_some(&mut client).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(read_some(&mut client).await.is_empty());
}

#[tokio::test]
async fn a_closed_client_ends_the_stream_and_frees_its_slot() {
    let hub = hub_with(16, 8);
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
    let hub = hub_with(64, 8);
    let t = topic("a");
    let (_client, task) = spawn_writer(&hub, "a", 256, config());
    let mut published = 0;
    while !task.is_finished() && published < 1000 {
        hub.ingest(
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
    let hub = hub_with(64, 1000);
    let t = topic("a");
    let config = WriterConfig {
        client_buffer: 1000,
        ..config()
    };
    let (_client, task) = spawn_writer(&hub, "a", 64, config);
    for _ in 0..5 {
        hub.ingest(&t, msg(&"x".repeat(100)));
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
    let hub = hub_with(16, 8);
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
    let hub = hub_with(64, 64);
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
    hub.ingest(&t, msg("during the drain"));
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
    let hub = hub_with(16, 8);
    let (server, mut client) = tokio::io::duplex(4096);
    let sub = hub.subscribe(&[topic("a")], None).unwrap();
    let cfg = config();
    tokio::spawn(async move { serve(server, sub, Bytes::new(), BodyFraming::Raw, &cfg).await });
    assert_eq!(
        read_some(&mut client).await,
        b"retry: 3000\n: connected\n\n".to_vec()
    );
    hub.ingest(&topic("a"), msg("x"));
    assert_eq!(
        read_some(&mut client).await,
        b"id: t-1\ndata: x\n\n".to_vec()
    );
}

#[tokio::test(start_paused = true)]
async fn a_resume_reset_goes_out_with_the_opening() {
    let hub = hub_with(16, 8);
    let (server, mut client) = tokio::io::duplex(4096);
    let sub = hub.subscribe(&[topic("a")], Some("bogus")).unwrap();
    let cfg = config();
    tokio::spawn(async move { serve(server, sub, Bytes::new(), BodyFraming::Raw, &cfg).await });
    let got = read_some(&mut client).await;
    assert_eq!(
        got,
        b"retry: 3000\n: connected\n\nid: t-0\nevent: gateway.reset\ndata: {\"reason\":\"malformed_id\"}\n\n".to_vec()
    );
    assert_eq!(hub.metrics().events_sent.get(), 1);
}
