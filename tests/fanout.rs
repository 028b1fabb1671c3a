//! The hub: many clients, one upstream subscription per topic, linger.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_get_twenty_events_in_order() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b).await;
    let mut streams = Vec::new();
    for _ in 0..200 {
        streams.push(open(&gw, "/events/fan").await);
    }
    let client = nats.client().await.unwrap();
    for i in 0..20 {
        publish(&client, "sse.fan", i.to_string(), None)
            .await
            .unwrap();
    }
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| tokio::spawn(async move { s.events(20, WAIT).await }))
        .collect();
    for reader in readers {
        let events = reader.await.unwrap().unwrap();
        let data: Vec<String> = events.iter().map(|e| e.data.clone()).collect();
        let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        assert_eq!(data, want, "every event once, in order");
    }
    wait_metric(&gw, "sse_upstream_messages_total", &[], 20.0).await;
    wait_metric(&gw, "sse_events_sent_total", &[], 4000.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstream_subscription_for_fifty_clients_and_none_after_linger() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b.set("sse", "topic_linger", "\"500ms\"")).await;
    let mut streams = Vec::new();
    for _ in 0..50 {
        streams.push(open(&gw, "/events/shared").await);
    }
    // Each open stream's topics are subscribed by the time its 200 head is out.
    assert_eq!(gateway_subjects(&nats).await, ["sse.shared"]);
    wait_metric(&gw, "sse_topics_active", &[], 1.0).await;
    wait_metric(&gw, "sse_connections_active", &[], 50.0).await;
    drop(streams);
    wait_metric(&gw, "sse_connections_active", &[], 0.0).await;
    eventually(
        WAIT,
        "upstream subscription dropped after linger",
        || async {
            let subs = gateway_subjects(&nats).await;
            anyhow::ensure!(subs.is_empty(), "still subscribed: {subs:?}");
            Ok(())
        },
    )
    .await
    .unwrap();
    wait_metric(&gw, "sse_topics_active", &[], 0.0).await;
}

/// The server's ids of the subscriptions on `subject`.
async fn subscription_ids(nats: &NatsServer, subject: &str) -> Vec<String> {
    let connz = nats.monitor("/connz?subs=detail").await.unwrap();
    connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| {
            c["subscriptions_list_detail"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter(|s| s["subject"] == subject)
        .map(|s| format!("{}/{}", s["cid"], s["sid"]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_is_kept_while_a_client_returns_within_linger() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b.set("sse", "topic_linger", "\"30s\"")).await;
    let s = open(&gw, "/events/sticky").await;
    let first = subscription_ids(&nats, "sse.sticky").await;
    assert_eq!(first.len(), 1, "{first:?}");
    drop(s);
    wait_metric(&gw, "sse_connections_active", &[], 0.0).await;
    // The client comes back: the same upstream subscription serves it (not a new one),
    // and an event published now reaches it.
    let mut s = open(&gw, "/events/sticky").await;
    assert_eq!(subscription_ids(&nats, "sse.sticky").await, first);
    let client = nats.client().await.unwrap();
    publish(&client, "sse.sticky", "back", None).await.unwrap();
    assert_eq!(s.next_event(WAIT).await.unwrap().data, "back");
    assert_eq!(subscription_ids(&nats, "sse.sticky").await, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_clients_free_their_slots_at_once() {
    let nats = NatsServer::start().unwrap();
    // A long heartbeat: nothing is written, so only reading can notice the close.
    let gw = ready(&nats, |b| b.set("sse", "heartbeat", "\"1h\"")).await;
    let mut streams = Vec::new();
    for i in 0..20 {
        streams.push(open(&gw, &format!("/events/t{}", i % 4)).await);
    }
    wait_metric(&gw, "sse_connections_active", &[], 20.0).await;
    streams.truncate(5);
    wait_metric(&gw, "sse_connections_active", &[], 5.0).await;
    drop(streams);
    wait_metric(&gw, "sse_connections_active", &[], 0.0).await;
}
