//! The NATS adapter against a real nats-server.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::BytesMut;
use prometheus::{IntCounter, IntGauge};
use sse_bus::{NatsBus, NatsBusConfig};
use sse_hub::{Epoch, Hub, HubConfig, HubMetrics, Subscription, TopicName};
use sse_testkit::{NatsServer, eventually, publish};
use tokio::sync::oneshot;

use sse_testkit::WAIT;

struct Setup {
    nats: NatsServer,
    hub: Hub,
    gauge: IntGauge,
    confirmations: IntCounter,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

async fn setup(linger: Duration) -> Setup {
    setup_with(linger, &[]).await
}

/// [`setup`] with topic families aggregated (`sse.aggregate`).
async fn setup_with(linger: Duration, families: &[&str]) -> Setup {
    let nats = NatsServer::start().unwrap();
    let gauge = IntGauge::new("nats_connected", "test").unwrap();
    let confirmations = IntCounter::new("confirmations", "test").unwrap();
    let (source, bus) = NatsBus::prepare(NatsBusConfig {
        servers: NatsBusConfig::parse_servers(&nats.url()).unwrap(),
        subject_prefix: "sse".into(),
        client_name: "sse-bus-test".into(),
        connected_gauge: gauge.clone(),
        confirmations: confirmations.clone(),
        aggregate: families
            .iter()
            .map(|f| TopicName::parse(f, true).unwrap())
            .collect(),
        jetstream: None,
        tracer: None,
    });
    let (hub, feed) = Hub::new(
        HubConfig {
            replay_window: 64,
            client_buffer: 64,
            topic_linger: linger,
            ..HubConfig::default()
        },
        Epoch::new("bus").unwrap(),
        HubMetrics::unregistered(),
        source,
    );
    let bus = bus.attach(feed);
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        bus.run(async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let s = Setup {
        nats,
        hub,
        gauge,
        confirmations,
        stop: Some(stop),
        task,
    };
    wait_connected(&s.hub, true).await;
    s
}

/// Waits until `hub` is connected to NATS (or, with `connected` false, until it has
/// noticed the connection is gone).
async fn wait_connected(hub: &Hub, connected: bool) {
    let what = if connected {
        "connected"
    } else {
        "disconnected"
    };
    eventually(WAIT, what, || {
        let hub = hub.clone();
        async move {
            (hub.is_connected() == connected)
                .then_some(())
                .ok_or_else(|| anyhow::anyhow!("not {what} yet"))
        }
    })
    .await
    .unwrap();
}

fn topic(name: &str) -> TopicName {
    TopicName::parse(name, false).unwrap()
}

async fn subscribe(hub: &Hub, name: &str) -> Subscription {
    let sub = hub.subscribe(&[topic(name)], None).unwrap();
    assert!(
        hub.wait_upstream(&sub, WAIT).await,
        "subscription confirmed"
    );
    sub
}

/// Waits until `sub` has `n` frames and returns them as text.
async fn frames(sub: &mut Subscription, n: usize) -> Vec<sse_framing_events::Event> {
    let mut out = BytesMut::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        sub.drain_into(&mut out, 1024, 1 << 20);
        let events = sse_framing_events::decode(&out);
        if events.len() >= n {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} events",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

mod sse_framing_events {
    pub use sse_testkit::Event;
    pub fn decode(bytes: &[u8]) -> Vec<Event> {
        let mut items = Vec::new();
        sse_framing::Decoder::new().feed(bytes, &mut items).unwrap();
        items
            .into_iter()
            .filter_map(|i| match i {
                sse_testkit::Item::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_the_hub_with_their_event_type() {
    let s = setup(Duration::from_secs(30)).await;
    assert_eq!(s.gauge.get(), 1);
    let mut sub = subscribe(&s.hub, "orders.42").await;
    let client = s.nats.client().await.unwrap();
    publish(&client, "sse.orders.42", "plain", None)
        .await
        .unwrap();
    publish(&client, "sse.orders.42", "typed", Some("created"))
        .await
        .unwrap();
    publish(&client, "sse.orders.42", vec![0xffu8, 0xfe], None)
        .await
        .unwrap();
    publish(&client, "sse.orders.42", "after", None)
        .await
        .unwrap();
    let events = frames(&mut sub, 3).await;
    assert_eq!(events[0].data, "plain");
    assert_eq!(events[0].event, None);
    assert_eq!(events[1].data, "typed");
    assert_eq!(events[1].event.as_deref(), Some("created"));
    assert_eq!(events[2].data, "after");
    let m = s.hub.metrics();
    assert_eq!(m.dropped_invalid_utf8.get(), 1);
    assert_eq!(m.upstream_messages.get(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscription_per_topic_dropped_after_linger() {
    let s = setup(Duration::from_millis(200)).await;
    let a1 = subscribe(&s.hub, "a").await;
    let a2 = subscribe(&s.hub, "a").await;
    let b = subscribe(&s.hub, "b").await;
    // Only topic subscriptions count (a client library's request inbox, `_INBOX.…`,
    // would not be one).
    let topic_subjects = || s.nats.subjects_under("sse.");
    // Confirmed means the server has processed the SUB (a PING answered after it, not
    // only bytes written): its monitoring lists both at once, no waiting.
    assert_eq!(topic_subjects().await.unwrap(), ["sse.a", "sse.b"]);
    drop((a1, a2, b));
    let hub = s.hub.clone();
    let sweeper = tokio::spawn(hub.run_linger_sweeper());
    eventually(WAIT, "subscriptions dropped after linger", || async {
        let subs = topic_subjects().await?;
        subs.is_empty()
            .then_some(())
            .ok_or_else(|| anyhow::anyhow!("still subscribed: {subs:?}"))
    })
    .await
    .unwrap();
    sweeper.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_is_announced_and_streaming_resumes() {
    let mut s = setup(Duration::from_secs(30)).await;
    let mut sub = subscribe(&s.hub, "t").await;
    let client = s.nats.client().await.unwrap();
    publish(&client, "sse.t", "before", None).await.unwrap();
    frames(&mut sub, 1).await;
    s.nats.kill();
    let (hub, gauge) = (s.hub.clone(), s.gauge.clone());
    wait_connected(&hub, false).await;
    assert_eq!(gauge.get(), 0);
    s.nats.restart().await.unwrap();
    wait_connected(&hub, true).await;
    let client = s.nats.client().await.unwrap();
    // The client re-subscribes by itself; publish until a message gets through.
    let mut out = BytesMut::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let all = loop {
        publish(&client, "sse.t", "after", None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        sub.drain_into(&mut out, 1024, 1 << 20);
        let events = sse_framing_events::decode(&out);
        if events.iter().any(|e| e.data == "after") {
            break events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no event after restart: {events:?}"
        );
    };
    let kinds: Vec<String> = all
        .iter()
        .map(|e| e.event.clone().unwrap_or_else(|| e.data.clone()))
        .collect();
    assert_eq!(kinds[0], "gateway.reset", "{kinds:?}");
    assert_eq!(all[0].data, r#"{"reason":"upstream_gap"}"#);
    assert_eq!(kinds[1], "after", "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_new_topics_on_one_stream_cost_one_confirmation() {
    let s = setup(Duration::from_secs(30)).await;
    let before = s.confirmations.get();
    let topics: Vec<TopicName> = (0..16).map(|i| topic(&format!("user.{i}"))).collect();
    let mut sub = s.hub.subscribe(&topics, None).unwrap();
    assert!(s.hub.wait_upstream(&sub, WAIT).await, "confirmed");
    assert_eq!(
        s.confirmations.get() - before,
        1,
        "one round trip for 16 topics"
    );
    // Published right after the confirmation, on every topic: all delivered.
    let client = s.nats.client().await.unwrap();
    for i in 0..16 {
        publish(&client, &format!("sse.user.{i}"), format!("to {i}"), None)
            .await
            .unwrap();
    }
    let mut data: Vec<String> = frames(&mut sub, 16)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    data.sort();
    let mut expected: Vec<String> = (0..16).map(|i| format!("to {i}")).collect();
    expected.sort();
    assert_eq!(data, expected);
    // A second stream on topics already confirmed makes no round trip.
    let again = s.hub.subscribe(&topics[..4], None).unwrap();
    assert!(s.hub.wait_upstream(&again, WAIT).await);
    assert_eq!(s.confirmations.get() - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregated_family_is_one_subscription_demultiplexed_by_subject() {
    let s = setup_with(Duration::from_secs(30), &["user.*"]).await;
    let subjects = || async { s.nats.subjects_under("sse.").await.unwrap() };
    let mut one = subscribe(&s.hub, "user.1").await;
    let mut two = s
        .hub
        .subscribe(&[topic("user.2"), topic("orders.1")], None)
        .unwrap();
    assert!(s.hub.wait_upstream(&two, WAIT).await);
    // One subscription for the family, one for the topic outside it; none per user.
    assert_eq!(subjects().await, ["sse.orders.1", "sse.user.*"]);
    let client = s.nats.client().await.unwrap();
    for (subject, data) in [
        ("sse.user.3", "nobody here"),
        ("sse.user.1", "to one"),
        ("sse.user.2", "to two"),
        ("sse.user.2.deeper", "not the family"),
        ("sse.orders.1", "order"),
    ] {
        publish(&client, subject, data, None).await.unwrap();
    }
    // A marker last on each stream: nothing else arrived before it.
    publish(&client, "sse.user.1", "end", None).await.unwrap();
    publish(&client, "sse.user.2", "end", None).await.unwrap();
    let data = |events: Vec<sse_testkit::Event>| -> Vec<String> {
        events.into_iter().map(|e| e.data).collect()
    };
    assert_eq!(data(frames(&mut one, 2).await), ["to one", "end"]);
    let mut got = data(frames(&mut two, 3).await);
    got.sort();
    assert_eq!(got, ["end", "order", "to two"]);
    // Topics of the family leave without touching the family's subscription.
    drop(one);
    drop(two);
    assert_eq!(
        s.hub
            .sweep(tokio::time::Instant::now() + Duration::from_secs(30)),
        3
    );
    eventually(WAIT, "orders.1 unsubscribed", || async {
        let now = subjects().await;
        (now == ["sse.user.*"])
            .then_some(())
            .ok_or_else(|| anyhow::anyhow!("{now:?}"))
    })
    .await
    .unwrap();
}
