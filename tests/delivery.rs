//! Delivery guarantees under faults: N clients × M events published at a steady rate
//! while, in turn, the gateway is killed and restarted, nats-server is killed and
//! restarted, clients move to a second gateway, the gateway is drained, and a cluster
//! node dies. JetStream topics: every client gets exactly 1..=M in order. Core topics:
//! every gap is announced by `gateway.reset`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use sse_testkit::NatsCluster;
use tokio::task::JoinHandle;

use crate::support::*;

const M: u64 = 300;
const CLIENTS: usize = 5;
const EVERY: Duration = Duration::from_millis(10);
const DEADLINE: Duration = Duration::from_secs(60);

fn jetstream_gateway(b: GatewayBuilder) -> GatewayBuilder {
    b.set("jetstream", "enabled", "true")
        .set("sse", "replay_window", "16")
        .set("sse", "retry", "\"200ms\"")
        .set("server", "grace_period", "\"2s\"")
}

/// Publishes 1..=M to `subject` through JetStream at a steady rate; each message is
/// retried with the same `Nats-Msg-Id` until the stream acknowledges it, so it is
/// stored exactly once whatever fails meanwhile.
fn publisher(urls: String, subject: &'static str, progress: Arc<AtomicUsize>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let servers: Vec<async_nats::ServerAddr> =
            urls.split(',').map(|u| u.parse().unwrap()).collect();
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(servers)
            .await
            .unwrap();
        let js = jetstream::new(client);
        for i in 1..=M {
            let value = i.to_string();
            publish_stored(&js, subject, &value, &value, DEADLINE).await;
            progress.store(i as usize, Ordering::Release);
            tokio::time::sleep(EVERY).await;
        }
    })
}

/// What a reading client saw: event values in order, and the resets.
#[derive(Debug, Default)]
struct Seen {
    values: Vec<u64>,
    resets: Vec<(usize, String)>,
    reconnects: usize,
}

/// Reads until it has `M`, reconnecting with `Last-Event-ID` after every end of stream,
/// to `addrs[k % len]` on its k-th connection; hangs up after `hang_up_every` events
/// when given (to move between gateways).
fn reader(
    addrs: Vec<SocketAddr>,
    path: &'static str,
    hang_up_every: Option<usize>,
    opened: Arc<AtomicUsize>,
) -> JoinHandle<Seen> {
    tokio::spawn(async move {
        let mut seen = Seen::default();
        let mut last_id: Option<String> = None;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut k = 0;
        while seen.values.last() != Some(&M) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "reader stuck: {seen:?}"
            );
            let addr = addrs[k % addrs.len()];
            k += 1;
            let headers: Vec<(&str, &str)> = last_id
                .as_deref()
                .map(|id| vec![("Last-Event-ID", id)])
                .unwrap_or_default();
            let mut stream = match SseStream::open(addr, path, &headers).await {
                Ok(s) if s.status() == 200 => s,
                _ => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if seen.reconnects == 0 {
                opened.fetch_add(1, Ordering::AcqRel);
            }
            seen.reconnects += 1;
            let mut in_this = 0;
            while let Ok(Some(item)) = stream.next_item(Duration::from_secs(5)).await {
                let Item::Event(e) = item else { continue };
                last_id = e.id.clone().or(last_id);
                if let Some(reason) = reset_reason(&e) {
                    seen.resets.push((seen.values.len(), reason));
                    continue;
                }
                seen.values.push(e.data.parse().unwrap());
                in_this += 1;
                if seen.values.last() == Some(&M) || hang_up_every.is_some_and(|n| in_this >= n) {
                    break;
                }
            }
        }
        seen
    })
}

fn assert_exactly_once(seen: &Seen) {
    let want: Vec<u64> = (1..=M).collect();
    assert_eq!(
        seen.values, want,
        "exactly 1..=M in order; resets {:?}",
        seen.resets
    );
    assert!(seen.resets.is_empty(), "{:?}", seen.resets);
}

async fn wait_progress(progress: &AtomicUsize, at_least: usize) {
    let p = progress;
    eventually(DEADLINE, "publisher progress", || async {
        anyhow::ensure!(p.load(Ordering::Acquire) >= at_least, "not yet");
        Ok(())
    })
    .await
    .unwrap();
}

/// Starts the readers and returns once every one has its first stream open (so that
/// all of them see the first event).
async fn readers(
    addrs: &[SocketAddr],
    path: &'static str,
    hang_up_every: Option<usize>,
) -> Vec<JoinHandle<Seen>> {
    let opened = Arc::new(AtomicUsize::new(0));
    let readers = (0..CLIENTS)
        .map(|_| reader(addrs.to_vec(), path, hang_up_every, opened.clone()))
        .collect();
    wait_progress(&opened, CLIENTS).await;
    readers
}

async fn all_exactly_once(readers: Vec<JoinHandle<Seen>>) -> Vec<Seen> {
    let mut all = Vec::new();
    for r in readers {
        let seen = r.await.unwrap();
        assert_exactly_once(&seen);
        all.push(seen);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_gateway_killed_and_restarted_loses_nothing() {
    let nats = NatsServer::start().unwrap();
    let mut gw = ready(&nats, jetstream_gateway).await;
    let progress = Arc::new(AtomicUsize::new(0));
    let readers = readers(&[gw.addr()], "/events/orders", None).await;
    let publishing = publisher(nats.url(), "sse.orders", progress.clone());
    wait_progress(&progress, 100).await;
    gw.kill();
    gw.restart().await.unwrap();
    publishing.await.unwrap();
    let seen = all_exactly_once(readers).await;
    assert!(seen.iter().all(|s| s.reconnects >= 2), "they did reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_nats_killed_and_restarted_loses_nothing() {
    let mut nats = NatsServer::start().unwrap();
    let gw = ready(&nats, jetstream_gateway).await;
    let progress = Arc::new(AtomicUsize::new(0));
    let readers = readers(&[gw.addr()], "/events/orders", None).await;
    let publishing = publisher(nats.url(), "sse.orders", progress.clone());
    wait_progress(&progress, 100).await;
    nats.kill();
    gw.wait_admin_status("/readyz", 503, WAIT).await.unwrap();
    nats.restart().await.unwrap();
    publishing.await.unwrap();
    all_exactly_once(readers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_clients_moving_between_two_gateways_lose_nothing() {
    let nats = NatsServer::start().unwrap();
    let a = ready(&nats, jetstream_gateway).await;
    let b = ready(&nats, jetstream_gateway).await;
    let progress = Arc::new(AtomicUsize::new(0));
    // Hang up every 37 events and come back on the other gateway.
    let readers = readers(&[a.addr(), b.addr()], "/events/orders", Some(37)).await;
    let publishing = publisher(nats.url(), "sse.orders", progress.clone());
    publishing.await.unwrap();
    let seen = all_exactly_once(readers).await;
    assert!(seen.iter().all(|s| s.reconnects >= 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_ids_are_the_same_on_every_instance() {
    let nats = NatsServer::start().unwrap();
    let a = ready(&nats, jetstream_gateway).await;
    let b = ready(&nats, jetstream_gateway).await;
    let mut on_a = open(&a, "/events/same").await;
    let mut on_b = open(&b, "/events/same").await;
    let client = nats.client().await.unwrap();
    for i in 0..3 {
        publish(&client, "sse.same", i.to_string(), None)
            .await
            .unwrap();
    }
    let ids = |events: Vec<Event>| {
        events
            .into_iter()
            .map(|e| e.id.unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(on_a.events(3, WAIT).await.unwrap()),
        ids(on_b.events(3, WAIT).await.unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_drain_moves_every_client_to_the_other_instance_without_loss() {
    let nats = NatsServer::start().unwrap();
    let mut a = ready(&nats, jetstream_gateway).await;
    let b = ready(&nats, jetstream_gateway).await;
    let progress = Arc::new(AtomicUsize::new(0));
    // Every reader starts on A and, whenever a stream ends, tries B then A.
    let readers = readers(&[a.addr(), b.addr()], "/events/orders", None).await;
    let publishing = publisher(nats.url(), "sse.orders", progress.clone());
    wait_progress(&progress, 100).await;
    a.terminate();
    let status = a.wait_exit(WAIT).await.unwrap();
    assert!(status.success());
    publishing.await.unwrap();
    all_exactly_once(readers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_resume_beyond_memory_and_expired_history() {
    let nats = NatsServer::start().unwrap();
    // A stream made by the operator, kept as it is (create = false): 20 messages at most.
    let js = jetstream::new(nats.client().await.unwrap());
    js.create_stream(jetstream::stream::Config {
        name: "KEEP20".into(),
        subjects: vec!["sse.>".into()],
        max_messages: 20,
        ..Default::default()
    })
    .await
    .unwrap();
    let gw = ready(&nats, |b| {
        jetstream_gateway(b)
            .set("jetstream", "stream", "\"KEEP20\"")
            .set("jetstream", "create", "false")
            .set("sse", "replay_window", "4")
    })
    .await;
    let mut live = open(&gw, "/events/h").await;
    let client = nats.client().await.unwrap();
    for i in 1..=15 {
        publish(&client, "sse.h", i.to_string(), None)
            .await
            .unwrap();
    }
    let events = live.events(15, WAIT).await.unwrap();
    // From event 5: 6..15 come from the stream (the ring holds only the last 4).
    let mut resumed = open_from(&gw, "/events/h", events[4].id.as_deref().unwrap()).await;
    let got = resumed.events(10, WAIT).await.unwrap();
    let values: Vec<&str> = got.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(
        values,
        ["6", "7", "8", "9", "10", "11", "12", "13", "14", "15"]
    );
    // Push the first events out of the stream (it keeps 20).
    for i in 16..=30 {
        publish(&client, "sse.h", i.to_string(), None)
            .await
            .unwrap();
    }
    live.events(15, WAIT).await.unwrap();
    let mut expired = open_from(&gw, "/events/h", events[0].id.as_deref().unwrap()).await;
    let first = expired.next_event(WAIT).await.unwrap();
    assert_eq!(reset_reason(&first).as_deref(), Some("history_expired"));
    publish(&client, "sse.h", "31", None).await.unwrap();
    assert_eq!(expired.next_event(WAIT).await.unwrap().data, "31");
    // The operator's stream was not changed.
    let info = js
        .get_stream("KEEP20")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    assert_eq!(info.max_messages, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_cluster_node_failure_loses_nothing() {
    let mut cluster = NatsCluster::start(3).await.unwrap();
    let gw = Gateway::builder(bin())
        .nats_url(&cluster.urls())
        .set("limits", "connect_rate_per_ip", "100000")
        .set("limits", "connect_burst_per_ip", "100000")
        .set("jetstream", "replicas", "3");
    let gw = jetstream_gateway(gw).spawn().await.unwrap();
    gw.wait_ready(Duration::from_secs(30)).await.unwrap();
    let progress = Arc::new(AtomicUsize::new(0));
    let readers = readers(&[gw.addr()], "/events/orders", None).await;
    let publishing = publisher(cluster.urls(), "sse.orders", progress.clone());
    wait_progress(&progress, 100).await;
    let node = cluster
        .node_with_client("sse-gateway")
        .await
        .unwrap()
        .expect("the gateway is connected to a node");
    cluster.kill(node);
    publishing.await.unwrap();
    all_exactly_once(readers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_topics_announce_every_gap() {
    let mut nats = NatsServer::start().unwrap();
    let mut gw = ready(&nats, |b| b.set("sse", "retry", "\"200ms\"")).await;
    let client = nats.client().await.unwrap();
    let readers = readers(&[gw.addr()], "/events/core", None).await;
    // Core publishing: no retries; whatever is published while nothing listens is lost.
    let publish_range = |client: async_nats::Client, from: u64, to: u64| async move {
        for i in from..=to {
            let _ = publish(&client, "sse.core", i.to_string(), None).await;
            tokio::time::sleep(EVERY).await;
        }
    };
    wait_metric(&gw, "sse_connections_active", &[], CLIENTS as f64).await;
    publish_range(client.clone(), 1, 100).await;
    gw.kill();
    publish_range(client.clone(), 101, 120).await;
    gw.restart().await.unwrap();
    gw.wait_ready(WAIT).await.unwrap();
    wait_metric(&gw, "sse_connections_active", &[], CLIENTS as f64).await;
    publish_range(client.clone(), 121, 200).await;
    nats.kill();
    gw.wait_admin_status("/readyz", 503, WAIT).await.unwrap();
    nats.restart().await.unwrap();
    gw.wait_ready(WAIT).await.unwrap();
    let client = nats.client().await.unwrap();
    // Until the re-subscription is in place messages may be lost: also announced.
    publish_range(client.clone(), 201, M).await;
    for r in readers {
        let seen = r.await.unwrap();
        // Increasing, no duplicates; every hole has a reset at its place.
        let mut expected_next = 1;
        for (index, value) in seen.values.iter().enumerate() {
            assert!(*value >= expected_next, "duplicate or reorder: {seen:?}");
            if *value > expected_next {
                assert!(
                    seen.resets.iter().any(|(at, _)| *at == index),
                    "unannounced gap before {value}: {seen:?}"
                );
            }
            expected_next = value + 1;
        }
        let reasons: Vec<&str> = seen.resets.iter().map(|(_, r)| r.as_str()).collect();
        assert!(
            reasons.contains(&"unknown_id"),
            "the restart is announced: {reasons:?}"
        );
        assert!(
            reasons.contains(&"upstream_gap"),
            "the NATS restart is announced: {reasons:?}"
        );
    }
}
