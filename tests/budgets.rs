//! protocol §10 under hostile load: rings bounded in bytes, stalled readers cut on bytes and
//! sharing what they owe, the process's memory under the promised bound, the topic cap,
//! one JetStream consumer per replay and a cap on replays, and one latency observation
//! per delivered event. Every test ends by checking that a normal client still streams.

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;

use crate::support::*;

const MIB: u64 = 1024 * 1024;

/// Resident and peak resident memory of a process, in bytes, from `/proc`.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"));
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap();
        kib * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn memory_gateway(b: GatewayBuilder) -> GatewayBuilder {
    b.set("bus", "kind", "\"memory\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_bytes_stay_within_replay_bytes_and_an_evicted_id_resets() {
    let replay_bytes = 16 * MIB;
    let gw = memory_gateway(Gateway::builder(bin()))
        .set("limits", "connect_burst_per_ip", "100000")
        .set("sse", "replay_bytes", &replay_bytes.to_string())
        .set("sse", "client_buffer_bytes", &(8 * MIB).to_string())
        .set("limits", "max_ring_bytes", &(32 * MIB).to_string())
        .spawn()
        .await
        .unwrap();
    gw.wait_ready(WAIT).await.unwrap();
    // 1,000,000 newlines: a 7 MB frame once every line is a `data:` line.
    let body = vec![b'\n'; 1_000_000];
    let mut ids = Vec::new();
    for _ in 0..30 {
        let r = post_text(&gw, "/publish/mem1", &body).await;
        assert_eq!(r.status, 202, "{}", r.text());
        ids.push(r.json().unwrap()["id"].as_str().unwrap().to_owned());
        let held = metric(&gw, "sse_ring_bytes", &[]).await;
        assert!(
            held > 0.0 && held <= replay_bytes as f64,
            "sse_ring_bytes {held} over the ring's {replay_bytes}"
        );
    }
    // Two frames fit 16 MiB; resuming from before the second newest is impossible.
    let mut s = open_from(&gw, "/events/mem1", &ids[0]).await;
    let first = s.next_event(WAIT).await.unwrap();
    assert_eq!(reset_reason(&first).as_deref(), Some("history_expired"));
    let mut s = open_from(&gw, "/events/mem1", &ids[28]).await;
    let replayed = s.next_event(WAIT).await.unwrap();
    assert_eq!(replayed.id.as_deref(), Some(ids[29].as_str()));
    assert_eq!(replayed.data.len(), 1_000_000);
    a_normal_client_still_streams(&gw, "mem1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_larger_than_the_budgets_is_refused_up_front_and_dropped_from_nats() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| {
        b.set("sse", "replay_bytes", "65536")
            .set("sse", "client_buffer_bytes", "65536")
    })
    .await;
    let mut s = open(&gw, "/events/big").await;
    // 20,000 newlines are 140,000 bytes framed.
    let r = post_text(&gw, "/publish/big", &vec![b'\n'; 20_000]).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json().unwrap()["error"], "payload_too_large");
    // Straight to NATS: dropped and counted.
    let client = nats.client().await.unwrap();
    publish(&client, "sse.big", "\n".repeat(20_000), None)
        .await
        .unwrap();
    wait_metric(
        &gw,
        "sse_events_dropped_total",
        &[("reason", "too_large")],
        1.0,
    )
    .await;
    publish(&client, "sse.big", "fits", None).await.unwrap();
    assert_eq!(s.next_event(WAIT).await.unwrap().data, "fits");
    a_normal_client_still_streams(&gw, "big").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_are_cut_on_client_buffer_bytes() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| {
        b.set("sse", "client_buffer", "100000")
            .set("sse", "client_buffer_bytes", &MIB.to_string())
            .set("sse", "write_timeout", "\"60s\"")
    })
    .await;
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let s = SseStream::builder(gw.addr(), "/events/bytes")
            .recv_buffer_size(4096)
            .open()
            .await
            .unwrap();
        assert_eq!(s.status(), 200);
        stalled.push(s);
    }
    let mut reader = open(&gw, "/events/bytes").await;
    let client = nats.client().await.unwrap();
    let payload = "b".repeat(64 * 1024);
    // Far fewer frames than client_buffer, far more bytes than client_buffer_bytes (and
    // than the sockets' buffers): only the byte budget can cut them.
    let mut sent = 0;
    while metric(&gw, "sse_slow_consumer_disconnects_total", &[]).await < 3.0 {
        assert!(sent < 1000, "the stalled readers were never cut");
        for _ in 0..16 {
            publish(&client, "sse.bytes", payload.clone(), None)
                .await
                .unwrap();
            sent += 1;
        }
        // The reader keeps up.
        reader.events(16, WAIT).await.unwrap();
    }
    assert_eq!(
        metric(&gw, "sse_write_timeout_disconnects_total", &[]).await,
        0.0
    );
    wait_metric(&gw, "sse_connections_active", &[], 1.0).await;
    wait_metric(&gw, "sse_pending_bytes", &[], 0.0).await;
    drop(stalled);
    a_normal_client_still_streams(&gw, "bytes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_publishes_and_stalled_readers_stay_under_the_memory_bound() {
    const STREAMS: u64 = 40;
    // Budgets that let 40 stalled streams fall 42 MB behind (six 7 MB frames) without
    // being cut.
    let (max_ring, client_buffer_bytes) = (32 * MIB, 64 * MIB);
    let gw = memory_gateway(Gateway::builder(bin()))
        .set("limits", "connect_burst_per_ip", "100000")
        .set("sse", "replay_bytes", &(16 * MIB).to_string())
        .set(
            "sse",
            "client_buffer_bytes",
            &client_buffer_bytes.to_string(),
        )
        .set("limits", "max_ring_bytes", &max_ring.to_string())
        .set("sse", "write_timeout", "\"60s\"")
        .spawn()
        .await
        .unwrap();
    gw.wait_ready(WAIT).await.unwrap();
    let mut stalled = Vec::new();
    for _ in 0..STREAMS {
        let s = SseStream::builder(gw.addr(), "/events/hostile")
            .recv_buffer_size(4096)
            .open()
            .await
            .unwrap();
        assert_eq!(s.status(), 200);
        stalled.push(s);
    }
    wait_metric(&gw, "sse_connections_active", &[], STREAMS as f64).await;
    let (base, _) = memory(gw.pid());
    // Each publish is a 7 MB frame; every stalled stream owes the first one.
    let body = vec![b'\n'; 1_000_000];
    for _ in 0..6 {
        let r = post_text(&gw, "/publish/hostile", &body).await;
        assert_eq!(r.status, 202, "{}", r.text());
    }
    // Each stream owes what its socket did not take of its first frame (the kernel
    // holds a few MB at most): sse_pending_bytes counts it once per stream.
    let owed = eventually(WAIT, "every stalled stream owes its frame", || async {
        let pending = metric(&gw, "sse_pending_bytes", &[]).await;
        anyhow::ensure!(
            pending > (STREAMS * 2_000_000) as f64,
            "sse_pending_bytes {pending}"
        );
        Ok(pending)
    })
    .await
    .unwrap();
    assert_eq!(
        metric(&gw, "sse_connections_active", &[]).await,
        STREAMS as f64,
        "nobody was cut"
    );
    let (_, peak) = memory(gw.pid());
    let promise = max_ring + client_buffer_bytes * STREAMS;
    let grown = peak.saturating_sub(base);
    eprintln!("RSS {base} at rest, peak {peak} (+{grown}); streams owe {owed} bytes in all");
    // §10: under max_ring_bytes + client_buffer_bytes × streams + a fixed base.
    assert!(
        peak < base + promise,
        "peak RSS {peak} over {base} + {promise}"
    );
    // And far under it: the streams owe the ring's frames, held once. A copy per stream
    // would be the `owed` bytes themselves.
    assert!(
        (grown as f64) < owed / 2.0 && grown < 160 * MIB,
        "peak RSS grew {grown} bytes while streams owe {owed}: they do not share"
    );
    drop(stalled);
    wait_metric(&gw, "sse_connections_active", &[], 0.0).await;
    wait_metric(&gw, "sse_pending_bytes", &[], 0.0).await;
    a_normal_client_still_streams(&gw, "hostile").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_topics_answers_503_with_retry_after() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b.set("limits", "max_topics", "2")).await;
    let _a = open(&gw, "/events/a").await;
    let _b = open(&gw, "/events/b").await;
    let refused = SseStream::open(gw.addr(), "/events/c", &[]).await.unwrap();
    assert_eq!(refused.status(), 503);
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    let body: serde_json::Value = serde_json::from_slice(refused.raw_body()).unwrap();
    assert_eq!(body["error"], "over_capacity");
    assert!(body["message"].as_str().unwrap().contains('2'), "{body}");
    wait_metric(
        &gw,
        "sse_admission_rejections_total",
        &[("reason", "max_topics")],
        1.0,
    )
    .await;
    assert_eq!(
        metric(
            &gw,
            "sse_connections_total",
            &[("outcome", "over_capacity")]
        )
        .await,
        1.0
    );
    // Publishing to a new topic would create one too.
    let r = post_text(&gw, "/publish/c", b"x").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    a_normal_client_still_streams(&gw, "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latency_count_grows_by_exactly_the_deliveries() {
    const STREAMS: usize = 5;
    const EVENTS: usize = 20;
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b).await;
    let count = || metric(&gw, "sse_delivery_latency_seconds_count", &[]);
    let before = count().await;
    let sent_before = metric(&gw, "sse_events_sent_total", &[]).await;
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        streams.push(open(&gw, "/events/lat").await);
    }
    let client = nats.client().await.unwrap();
    for i in 0..EVENTS {
        publish(&client, "sse.lat", i.to_string(), None)
            .await
            .unwrap();
    }
    for s in &mut streams {
        s.events(EVENTS, WAIT).await.unwrap();
    }
    let delivered = (STREAMS * EVENTS) as f64;
    // Counted once the socket took the bytes; the writer records right after its write
    // returns, so a client may read them an instant before the count moves: wait for
    // exactly the deliveries (more would never match).
    wait_metric(
        &gw,
        "sse_delivery_latency_seconds_count",
        &[],
        before + delivered,
    )
    .await;
    wait_metric(&gw, "sse_events_sent_total", &[], sent_before + delivered).await;
    assert_eq!(
        count().await - before,
        delivered,
        "no more than the deliveries"
    );
    let m = gw.metrics().await.unwrap();
    assert_eq!(
        m.get("sse_delivery_latency_seconds_bucket", &[("le", "+Inf")]),
        Some(before + delivered)
    );
    drop(streams);
    a_normal_client_still_streams(&gw, "lat").await;
}

/// The topic paths of a stream over `n` topics.
fn many_topics(n: usize) -> String {
    let query: Vec<String> = (0..n).map(|i| format!("topic=t{i}")).collect();
    format!("/events?{}", query.join("&"))
}

/// Counts the replay consumers created on the server, seen by snooping the JetStream
/// API (`$JS.API.CONSUMER.CREATE.…` requests carry the consumer's description).
struct ConsumerCreations {
    client: async_nats::Client,
    requests: async_nats::Subscriber,
    replays: usize,
    all: usize,
}

impl ConsumerCreations {
    async fn watch(nats: &NatsServer) -> Self {
        let client = nats.client().await.unwrap();
        let requests = client.subscribe("$JS.API.CONSUMER.CREATE.>").await.unwrap();
        client.flush().await.unwrap();
        Self {
            client,
            requests,
            replays: 0,
            all: 0,
        }
    }

    /// Takes in every request the server has sent us so far (a round trip on our
    /// connection comes after them).
    async fn update(&mut self) -> (usize, usize) {
        self.client.flush().await.unwrap();
        while let Ok(Some(request)) =
            tokio::time::timeout(Duration::from_millis(1), self.requests.next()).await
        {
            self.all += 1;
            if String::from_utf8_lossy(&request.payload).contains("sse-gateway replay") {
                self.replays += 1;
            }
        }
        (self.replays, self.all)
    }
}

fn jetstream_gateway(b: GatewayBuilder) -> GatewayBuilder {
    b.set("jetstream", "enabled", "true")
        .set("sse", "replay_window", "1")
}

/// Publishes `per_topic` messages to each of `t0..t{topics}` through JetStream.
async fn publish_stored(nats: &NatsServer, topics: usize, per_topic: usize, payload: &str) {
    let js = jetstream::new(nats.client().await.unwrap());
    for round in 0..per_topic {
        for t in 0..topics {
            js.publish(format!("sse.t{t}"), format!("{round}:{payload}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_resume_over_sixteen_topics_uses_one_consumer() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, jetstream_gateway).await;
    let path = many_topics(16);
    let mut first = open(&gw, &path).await;
    publish_stored(&nats, 16, 2, "x").await;
    let seen = first.events(32, WAIT).await.unwrap();
    drop(first);
    let mut creations = ConsumerCreations::watch(&nats).await;
    // Resuming after the first event: 31 events, older than the rings' one-frame window.
    let mut resumed = open_from(&gw, &path, seen[0].id.as_deref().unwrap()).await;
    let replayed = resumed.events(31, WAIT).await.unwrap();
    let ids = |events: &[Event]| -> Vec<String> {
        events.iter().map(|e| e.id.clone().unwrap()).collect()
    };
    assert_eq!(ids(&replayed), ids(&seen[1..]), "exact, in order");
    assert!(replayed.iter().all(|e| reset_reason(e).is_none()));
    let (replays, all) = creations.update().await;
    assert_eq!(
        replays, 1,
        "one consumer for 16 topics ({all} consumers created in all)"
    );
    a_normal_client_still_streams(&gw, "t3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_beyond_max_concurrent_replays_wait_with_their_stream_open() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| {
        jetstream_gateway(b)
            .set("jetstream", "max_concurrent_replays", "1")
            // The first reader may fall behind the 600 publishes: not cut for it.
            .set("sse", "client_buffer", "1000")
            .set("sse", "client_buffer_bytes", &(64 * MIB).to_string())
            .set("sse", "replay_bytes", &(64 * MIB).to_string())
            .set("sse", "heartbeat", "\"1s\"")
            .set("sse", "write_timeout", "\"60s\"")
    })
    .await;
    let mut first = open(&gw, "/events/t0").await;
    // Enough to fill a stalled client's socket and the replay's channel behind it.
    let payload = "p".repeat(16 * 1024);
    publish_stored(&nats, 1, 600, &payload).await;
    let seen = first.events(600, WAIT).await.unwrap();
    drop(first);
    let from = seen[0].id.clone().unwrap();
    let mut creations = ConsumerCreations::watch(&nats).await;
    // This one never reads: its replay blocks with the only turn.
    let holder = SseStream::builder(gw.addr(), "/events/t0")
        .recv_buffer_size(4096)
        .header("Last-Event-ID", &from)
        .open()
        .await
        .unwrap();
    assert_eq!(holder.status(), 200);
    // Polled until the first replay's consumer exists (a deadline, no fixed sleep).
    let deadline = tokio::time::Instant::now() + WAIT;
    while creations.update().await.0 < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first replay never made its consumer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The second waits for its turn: heartbeats, no events, no consumer of its own.
    let mut waiting = open_from(&gw, "/events/t0", &from).await;
    let mut heartbeats = 0;
    while heartbeats < 2 {
        match waiting
            .next_item(WAIT)
            .await
            .unwrap()
            .expect("the stream stays open")
        {
            Item::Comment(c) if c == "heartbeat" => heartbeats += 1,
            Item::Comment(_) | Item::Retry(_) => {}
            Item::Event(e) => panic!("an event before the first replay ended: {:?}", e.id),
        }
    }
    assert_eq!(
        creations.update().await.0,
        1,
        "the second replay has not started"
    );
    // The first stream goes: the second gets its turn and everything.
    drop(holder);
    let replayed = waiting.events(599, WAIT).await.unwrap();
    assert_eq!(replayed[0].id, seen[1].id);
    assert_eq!(replayed[598].id, seen[599].id);
    a_normal_client_still_streams(&gw, "t0").await;
}
