//! protocol §2/§3/§7: URLs, response head, first bytes, frames, heartbeats, errors.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_head_and_first_bytes() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b.set("sse", "retry", "\"2500ms\"")).await;
    let mut s = open(&gw, "/events/orders.42").await;
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.header("cache-control"), Some("no-cache"));
    assert_eq!(s.header("x-accel-buffering"), Some("no"));
    assert!(s.chunked(), "HTTP/1.1 streams are chunked");
    assert_eq!(s.header("content-length"), None);
    // The opening arrives before any event exists.
    assert_eq!(s.next_item(WAIT).await.unwrap(), Some(Item::Retry(2500)));
    assert!(matches!(
        s.next_item(WAIT).await.unwrap(),
        Some(Item::Comment(_))
    ));
    let body = String::from_utf8(s.raw_body().to_vec()).unwrap();
    let mut lines = body.lines();
    assert_eq!(lines.next(), Some("retry: 2500"));
    assert!(lines.next().unwrap().starts_with(':'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_frames_with_ids_types_and_multiline_data() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b).await;
    let mut s = open(&gw, "/events/orders.42").await;
    let client = nats.client().await.unwrap();
    publish(&client, "sse.orders.42", "one line", None)
        .await
        .unwrap();
    publish(&client, "sse.orders.42", "a\r\nb\rc\nd", Some("created"))
        .await
        .unwrap();
    publish(&client, "sse.orders.42", "", None).await.unwrap();
    publish(&client, "sse.orders.42", "last", None)
        .await
        .unwrap();
    let events = s.events(4, WAIT).await.unwrap();
    assert_eq!(events[0].data, "one line");
    assert_eq!(events[0].event, None);
    assert_eq!(events[1].data, "a\nb\nc\nd");
    assert_eq!(events[1].event.as_deref(), Some("created"));
    // An empty payload is one empty data line: EventSource fires it with data "".
    assert_eq!(events[2].data, "");
    assert_eq!(events[3].data, "last");
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_deref().unwrap()).collect();
    let mut distinct = ids.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "{ids:?}");
    let body = String::from_utf8(s.raw_body().to_vec()).unwrap();
    assert!(
        body.contains("event: created\ndata: a\ndata: b\ndata: c\ndata: d\n\n"),
        "{body:?}"
    );
    assert!(
        body.contains("\ndata: \n\n"),
        "empty payload frame: {body:?}"
    );
    // Every frame: id line first.
    for frame in body.split("\n\n").filter(|f| f.contains("data:")) {
        assert!(frame.starts_with("id: "), "{frame:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_topics_on_one_stream() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b).await;
    let mut s = open(&gw, "/events?topic=a&topic=b.c").await;
    let client = nats.client().await.unwrap();
    publish(&client, "sse.a", "1", None).await.unwrap();
    publish(&client, "sse.b.c", "2", None).await.unwrap();
    publish(&client, "sse.other", "x", None).await.unwrap();
    publish(&client, "sse.a", "3", None).await.unwrap();
    let events = s.events(3, WAIT).await.unwrap();
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, ["1", "2", "3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_after_silence() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b.set("sse", "heartbeat", "\"300ms\"")).await;
    let mut s = open(&gw, "/events/quiet").await;
    let mut comments = 0;
    while comments < 3 {
        match s.next_item(WAIT).await.unwrap() {
            Some(Item::Comment(_)) => comments += 1,
            Some(Item::Retry(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_dropped_and_counted() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b).await;
    let mut s = open(&gw, "/events/bin").await;
    let client = nats.client().await.unwrap();
    publish(&client, "sse.bin", vec![0xc3u8, 0x28], None)
        .await
        .unwrap();
    publish(&client, "sse.bin", "valid", None).await.unwrap();
    assert_eq!(s.next_event(WAIT).await.unwrap().data, "valid");
    wait_metric(
        &gw,
        "sse_events_dropped_total",
        &[("reason", "invalid_utf8")],
        1.0,
    )
    .await;
    wait_metric(&gw, "sse_upstream_messages_total", &[], 2.0).await;
}

async fn error(gw: &Gateway, path: &str) -> (u16, serde_json::Value) {
    let r = sse_testkit::http::get(gw.addr(), path, &[]).await.unwrap();
    assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
    (r.status, r.json().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b.set("sse", "max_topics_per_connection", "2")).await;
    for (path, status, code) in [
        ("/events", 400, "missing_topic"),
        ("/events?topic=", 400, "missing_topic"),
        ("/events/", 400, "missing_topic"),
        ("/events/a..b", 400, "bad_topic"),
        ("/events/a%20b", 400, "bad_topic"),
        ("/events/orders.*", 400, "bad_topic"),
        (&format!("/events/{}", "x".repeat(257)), 400, "bad_topic"),
        ("/events?topic=a&topic=b&topic=c", 400, "too_many_topics"),
        ("/nowhere", 404, "not_found"),
    ] {
        let (got, body) = error(&gw, path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["error"], code, "{path}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Percent-encoded topics are decoded before validation.
    let s = open(&gw, "/events/orders%2E42").await;
    drop(s);
    wait_metric(
        &gw,
        "sse_connections_total",
        &[("outcome", "bad_request")],
        8.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_when_enabled() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b.set("sse", "allow_wildcards", "true")).await;
    let mut s = open(&gw, "/events/orders.*").await;
    let client = nats.client().await.unwrap();
    publish(&client, "sse.orders.1", "one", None).await.unwrap();
    publish(&client, "sse.orders.1.x", "deeper", None)
        .await
        .unwrap();
    publish(&client, "sse.orders.2", "two", None).await.unwrap();
    let events = s.events(2, WAIT).await.unwrap();
    assert_eq!(events[0].data, "one");
    assert_eq!(events[1].data, "two");
}
