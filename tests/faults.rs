//! NATS faults: down at start, killed and restarted mid-stream.

use std::time::Duration;

use crate::support::*;

/// Publishes `data` until the stream shows it (the upstream subscription may still be
/// on its way to a server that just came up); returns every event seen until then.
async fn publish_until_seen(
    nats: &NatsServer,
    subject: &str,
    data: &str,
    s: &mut SseStream,
) -> Vec<Event> {
    let client = nats.client().await.unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        publish(&client, subject, data.to_owned(), None)
            .await
            .unwrap();
        while let Ok(Some(item)) = s.next_item(Duration::from_millis(200)).await {
            if let Item::Event(e) = item {
                let done = e.data == data;
                seen.push(e);
                if done {
                    return seen;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{data:?} never arrived: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_nats_and_connects_when_it_appears() {
    let mut nats = NatsServer::start().unwrap();
    nats.kill();
    let gw = gateway(&nats)
        .set("sse", "heartbeat", "\"300ms\"")
        .spawn()
        .await
        .unwrap();
    let health = sse_testkit::http::get(gw.admin_addr(), "/healthz", &[])
        .await
        .unwrap();
    assert_eq!(health.status, 200);
    let ready = sse_testkit::http::get(gw.admin_addr(), "/readyz", &[])
        .await
        .unwrap();
    assert_eq!(ready.status, 503);
    assert_eq!(metric(&gw, "sse_nats_connected", &[]).await, 0.0);

    // Streams are accepted and kept alive meanwhile.
    let mut s = open(&gw, "/events/later").await;
    let mut heartbeats = 0;
    while heartbeats < 2 {
        if let Some(Item::Comment(_)) = s.next_item(WAIT).await.unwrap() {
            heartbeats += 1;
        }
    }

    nats.restart().await.unwrap();
    gw.wait_ready(WAIT).await.unwrap();
    assert_eq!(metric(&gw, "sse_nats_connected", &[]).await, 1.0);
    let seen = publish_until_seen(&nats, "sse.later", "hello", &mut s).await;
    assert!(seen.iter().all(|e| e.data == "hello"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_stream_is_announced_then_events_flow_again() {
    let mut nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b.set("sse", "heartbeat", "\"500ms\"")).await;
    let mut s = open(&gw, "/events/live").await;
    let mut other = open(&gw, "/events?topic=live&topic=also").await;
    let client = nats.client().await.unwrap();
    publish(&client, "sse.live", "before", None).await.unwrap();
    assert_eq!(s.next_event(WAIT).await.unwrap().data, "before");
    assert_eq!(other.next_event(WAIT).await.unwrap().data, "before");

    nats.kill();
    gw.wait_admin_status("/readyz", 503, WAIT).await.unwrap();
    nats.restart().await.unwrap();
    gw.wait_ready(WAIT).await.unwrap();

    for stream in [&mut s, &mut other] {
        let seen = publish_until_seen(&nats, "sse.live", "after", stream).await;
        // One reset per outage, before the first event of the new connection.
        let resets: Vec<_> = seen.iter().filter_map(reset_reason).collect();
        assert_eq!(resets, ["upstream_gap"], "{seen:?}");
        assert_eq!(reset_reason(&seen[0]).as_deref(), Some("upstream_gap"));
        assert!(seen[1..].iter().all(|e| e.data == "after"), "{seen:?}");
    }
}
