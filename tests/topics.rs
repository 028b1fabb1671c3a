//! Topics as cheap as streams: rings that cost nothing until used and give memory back,
//! new topics confirmed in batches, topic families on one subscription, linger with many
//! topics. Every test ends by checking that a normal client still streams.

use std::time::Duration;

use tokio::time::Instant;

use crate::support::*;

/// `/events?topic=…&topic=…` for `topics`.
fn events_path(topics: &[String]) -> String {
    let query: Vec<String> = topics.iter().map(|t| format!("topic={t}")).collect();
    format!("/events?{}", query.join("&"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_holds_nothing_until_its_first_event_and_resumes_after_growing_and_shrinking() {
    let nats = NatsServer::start().unwrap();
    // All rings together hold 32 KiB: the other topic's events evict this one's oldest.
    let gw = ready(&nats, |b| {
        b.set("sse", "replay_bytes", "32768")
            .set("sse", "client_buffer_bytes", "32768")
            .set("limits", "max_ring_bytes", "32768")
    })
    .await;
    let _live = open(&gw, "/events/grow").await;
    assert_eq!(metric(&gw, "sse_topics_active", &[]).await, 1.0);
    assert_eq!(
        metric(&gw, "sse_ring_bytes", &[]).await,
        0.0,
        "nothing held yet"
    );
    // The ring grows: 100 small events.
    let mut ids = Vec::new();
    for i in 0..100 {
        let r = post_text(&gw, "/publish/grow", format!("g{i}").as_bytes()).await;
        assert_eq!(r.status, 202, "{}", r.text());
        ids.push(r.json().unwrap()["id"].as_str().unwrap().to_owned());
    }
    let grown = metric(&gw, "sse_ring_bytes", &[]).await;
    assert!(grown > 0.0);
    // And shrinks: 10 events of 3 KB elsewhere push its oldest frames out.
    let big = vec![b'x'; 3000];
    for _ in 0..10 {
        let r = post_text(&gw, "/publish/other", &big).await;
        assert_eq!(r.status, 202, "{}", r.text());
    }
    assert!(metric(&gw, "sse_ring_bytes", &[]).await <= 32768.0);
    // Resuming from an id still held gives exactly what followed it.
    let mut resumed = open_from(&gw, "/events/grow", &ids[95]).await;
    let events = resumed.events(4, WAIT).await.unwrap();
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, ["g96", "g97", "g98", "g99"]);
    // Resuming from an evicted one is told so.
    let mut expired = open_from(&gw, "/events/grow", &ids[0]).await;
    let first = expired.next_event(WAIT).await.unwrap();
    assert_eq!(reset_reason(&first).as_deref(), Some("history_expired"));
    a_normal_client_still_streams(&gw, "grow").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_new_topics_cost_one_confirmation_and_get_what_follows_the_200() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b).await;
    let before = metric(&gw, "sse_upstream_confirmations_total", &[]).await;
    let topics: Vec<String> = (0..16).map(|i| format!("user.{i}")).collect();
    let mut stream = open(&gw, &events_path(&topics)).await;
    let after = metric(&gw, "sse_upstream_confirmations_total", &[]).await;
    assert_eq!(after - before, 1.0, "one round trip for 16 new topics");
    assert_eq!(gateway_subjects(&nats).await.len(), 16);
    // Published right after the 200 head, on every topic: all delivered.
    let client = nats.client().await.unwrap();
    for t in &topics {
        publish(&client, &format!("sse.{t}"), t.clone(), None)
            .await
            .unwrap();
    }
    let mut got: Vec<String> = stream
        .events(16, WAIT)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.data)
        .collect();
    got.sort();
    let mut want = topics.clone();
    want.sort();
    assert_eq!(got, want);
    a_normal_client_still_streams(&gw, "user.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregated_family_holds_one_subscription_and_delivers_exactly_its_topics() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b.set("sse", "aggregate", "[\"user.*\"]")).await;
    // Held from the start, before any stream.
    assert_eq!(gateway_subjects(&nats).await, ["sse.user.*"]);
    let before = metric(&gw, "sse_upstream_confirmations_total", &[]).await;
    let mut one = open(&gw, "/events/user.1").await;
    let mut two = open(&gw, "/events?topic=user.2&topic=orders.1").await;
    // No subscription per user; the topic outside the family has its own.
    assert_eq!(
        gateway_subjects(&nats).await,
        ["sse.orders.1", "sse.user.*"]
    );
    let after = metric(&gw, "sse_upstream_confirmations_total", &[]).await;
    assert_eq!(after - before, 1.0, "only orders.1 needed a round trip");
    let client = nats.client().await.unwrap();
    for (subject, data) in [
        ("sse.user.3", "nobody here"),
        ("sse.user.1", "to one"),
        ("sse.user.2", "to two"),
        ("sse.user.2.deeper", "not the family"),
        ("sse.orders.1", "order"),
        ("sse.user.1", "end"),
        ("sse.user.2", "end"),
    ] {
        publish(&client, subject, data, None).await.unwrap();
    }
    let data = |events: Vec<sse_testkit::Event>| -> Vec<String> {
        events.into_iter().map(|e| e.data).collect()
    };
    // The marker comes last on each stream: nothing else arrived before it.
    assert_eq!(data(one.events(2, WAIT).await.unwrap()), ["to one", "end"]);
    let mut got = data(two.events(3, WAIT).await.unwrap());
    got.sort();
    assert_eq!(got, ["end", "order", "to two"]);
    a_normal_client_still_streams(&gw, "user.9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linger_drops_ten_thousand_lingering_topics_on_time() {
    let nats = NatsServer::start().unwrap();
    let linger = Duration::from_secs(4);
    let gw = ready(&nats, |b| {
        b.set("sse", "topic_linger", "\"4s\"")
            .set("sse", "max_topics_per_connection", "100")
            .set("limits", "max_connections_per_ip", "1000")
            .set("limits", "max_sockets_per_ip", "1000")
    })
    .await;
    let mut streams = Vec::new();
    for s in 0..100 {
        let topics: Vec<String> = (0..100).map(|t| format!("linger.{s}.{t}")).collect();
        streams.push(open(&gw, &events_path(&topics)).await);
    }
    wait_metric(&gw, "sse_topics_active", &[], 10_000.0).await;
    drop(streams);
    let left = Instant::now();
    wait_metric(&gw, "sse_connections_active", &[], 0.0).await;
    // Every topic lingers…
    let lingering = metric(&gw, "sse_topics_active", &[]).await;
    if left.elapsed() < linger {
        assert_eq!(lingering, 10_000.0, "dropped before their linger");
    }
    // …then goes, on time (the sweeper runs at least every second).
    eventually(Duration::from_secs(30), "topics dropped", || async {
        let active = metric(&gw, "sse_topics_active", &[]).await;
        anyhow::ensure!(active == 0.0, "{active} topics still active");
        Ok(())
    })
    .await
    .unwrap();
    let took = left.elapsed();
    assert!(
        took >= linger - Duration::from_millis(500),
        "after {took:?}"
    );
    assert!(took <= linger + Duration::from_secs(8), "after {took:?}");
    eventually(WAIT, "all unsubscribed", || async {
        let left = gateway_subjects(&nats).await.len();
        anyhow::ensure!(left == 0, "{left} subscriptions left");
        Ok(())
    })
    .await
    .unwrap();
    a_normal_client_still_streams(&gw, "after").await;
}
