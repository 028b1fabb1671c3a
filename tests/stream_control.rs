//! Live topic changes (protocol §11): with `sse.stream_control` a stream opens with
//! `gateway.stream` (its id and topics) and `POST /streams/{id}` adds and removes topics
//! while it streams, under the rules, caps and credentials of subscribing.

use serde_json::{Value, json};
use sse_testkit::http;

use crate::support::*;

fn controlled(b: GatewayBuilder) -> GatewayBuilder {
    b.set("sse", "stream_control", "true")
}

fn with_auth(b: GatewayBuilder) -> GatewayBuilder {
    auth_on(controlled(b))
}

/// Reads the opening `gateway.stream` event: the stream's id and topics.
async fn opening(s: &mut SseStream) -> (String, Vec<String>) {
    let e = s.next_event(WAIT).await.unwrap();
    assert_eq!(e.event.as_deref(), Some("gateway.stream"), "{e:?}");
    assert_eq!(
        e.id, None,
        "no id: the client's last event id is left alone"
    );
    let v: Value = serde_json::from_str(&e.data).unwrap();
    let id = v["stream"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32, "128 bits in hex");
    let topics = v["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    (id, topics)
}

/// `POST /streams/{id}` with `body` and `headers`.
async fn change(gw: &Gateway, id: &str, body: &Value, headers: &[(&str, &str)]) -> http::Response {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    http::request(
        gw.addr(),
        "POST",
        &format!("/streams/{id}"),
        &all,
        body.to_string().as_bytes(),
    )
    .await
    .unwrap()
}

/// A normal client (which gets `gateway.stream` first) still streams.
async fn a_normal_client_still_streams_controlled(gw: &Gateway, topic: &str) {
    let mut s = open(gw, &format!("/events/{topic}")).await;
    opening(&mut s).await;
    publish(gw, topic, "still here").await;
    assert_eq!(s.next_event(WAIT).await.unwrap().data, "still here");
}

async fn publish(gw: &Gateway, topic: &str, data: &str) -> String {
    let r = post_text(gw, &format!("/publish/{topic}"), data.as_bytes()).await;
    assert_eq!(r.status, 202, "{}", r.text());
    r.json().unwrap()["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_added_and_removed_while_the_stream_streams() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, controlled).await;
    let mut s = open(&gw, "/events/live.a").await;
    let (id, topics) = opening(&mut s).await;
    assert_eq!(topics, ["live.a"]);
    // A topic another client holds: its events before the 200 are not this stream's.
    let mut other = open(&gw, "/events/live.b").await;
    opening(&mut other).await;
    publish(&gw, "live.b", "before").await;
    let r = change(&gw, &id, &json!({"add": ["live.b"]}), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().unwrap(), json!({"topics": ["live.a", "live.b"]}));
    publish(&gw, "live.b", "after").await;
    publish(&gw, "live.a", "a too").await;
    let got = s.events(2, WAIT).await.unwrap();
    let data: Vec<&str> = got.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, ["after", "a too"]);
    // Each event names its topic in a comment (EventSource ignores it).
    let raw = String::from_utf8_lossy(s.raw_body()).into_owned();
    assert!(raw.contains(": topic live.b\ndata: after\n\n"), "{raw}");
    assert!(raw.contains(": topic live.a\ndata: a too\n\n"), "{raw}");
    // A new topic nobody held: subscribed upstream before the 200.
    let r = change(
        &gw,
        &id,
        &json!({"add": ["live.c"], "remove": ["live.a"]}),
        &[],
    )
    .await;
    assert_eq!(r.json().unwrap(), json!({"topics": ["live.b", "live.c"]}));
    let client = nats.client().await.unwrap();
    client
        .publish("sse.live.c", "from nats".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    assert_eq!(s.next_event(WAIT).await.unwrap().data, "from nats");
    // The removed topic is silent: a marker on a kept one comes next.
    publish(&gw, "live.a", "removed").await;
    publish(&gw, "live.b", "marker").await;
    assert_eq!(s.next_event(WAIT).await.unwrap().data, "marker");
    // The operator API shows the stream's topics now.
    let listed = http::get(gw.admin_addr(), "/api/streams?topic=live.c", &[])
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(listed["streams"][0]["id"], id.as_str());
    assert_eq!(listed["streams"][0]["topics"], json!(["live.b", "live.c"]));
    // Adding what it has, removing what it has not: nothing changes.
    let r = change(
        &gw,
        &id,
        &json!({"add": ["live.b"], "remove": ["live.x"]}),
        &[],
    )
    .await;
    assert_eq!(r.json().unwrap(), json!({"topics": ["live.b", "live.c"]}));
    a_normal_client_still_streams_controlled(&gw, "live.after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_reconnect_covers_every_topic_the_stream_had() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, controlled).await;
    let mut s = open(&gw, "/events/res.a").await;
    let (id, _) = opening(&mut s).await;
    assert_eq!(
        change(&gw, &id, &json!({"add": ["res.b"]}), &[])
            .await
            .status,
        200
    );
    publish(&gw, "res.a", "1").await;
    publish(&gw, "res.b", "2").await;
    let seen = s.events(2, WAIT).await.unwrap();
    let last = seen[1].id.clone().unwrap();
    drop(s);
    // Missed while away, on both topics.
    publish(&gw, "res.b", "3").await;
    publish(&gw, "res.a", "4").await;
    let mut back = open_from(&gw, "/events?topic=res.a&topic=res.b", &last).await;
    let (_, topics) = opening(&mut back).await;
    assert_eq!(topics, ["res.a", "res.b"]);
    let replayed = back.events(2, WAIT).await.unwrap();
    let data: Vec<&str> = replayed.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, ["3", "4"]);
    assert!(replayed.iter().all(|e| reset_reason(e).is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_refused_as_subscribing_would_be() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| {
        controlled(b)
            .set("sse", "max_topics_per_connection", "2")
            .set("limits", "max_subscribers_per_topic", "1")
    })
    .await;
    let mut s = open(&gw, "/events/rule.a").await;
    let (id, _) = opening(&mut s).await;
    let unknown = "0123456789abcdef0123456789abcdef";
    assert_eq!(
        change(&gw, unknown, &json!({"add": ["x"]}), &[])
            .await
            .status,
        404
    );
    assert_eq!(
        change(&gw, "nope", &json!({"add": ["x"]}), &[])
            .await
            .status,
        404
    );
    for (body, code) in [
        (json!({"add": ["a..b"]}), "bad_topic"),
        (json!({"add": ["rule.*"]}), "bad_topic"),
        (json!({"add": ["rule.b", "rule.c"]}), "too_many_topics"),
        (json!({"add": "rule.b"}), "bad_body"),
        (json!({"nope": []}), "bad_body"),
    ] {
        let r = change(&gw, &id, &body, &[]).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.json().unwrap()["error"], code, "{body}");
    }
    // A full topic (max_subscribers_per_topic = 1) is 503 with Retry-After.
    let _holder = open(&gw, "/events/rule.full").await;
    let r = change(&gw, &id, &json!({"add": ["rule.full"]}), &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    let r = http::get(gw.addr(), &format!("/streams/{id}"), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    // Nothing changed.
    let r = change(&gw, &id, &json!({}), &[]).await;
    assert_eq!(r.json().unwrap(), json!({"topics": ["rule.a"]}));
    a_normal_client_still_streams_controlled(&gw, "rule.after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_stream_control_there_is_no_opening_event_and_no_changes() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b).await;
    let mut s = open(&gw, "/events/off.a").await;
    publish(&gw, "off.a", "first").await;
    let e = s.next_event(WAIT).await.unwrap();
    assert_eq!((e.event.as_deref(), e.data.as_str()), (None, "first"));
    let id = http::get(gw.admin_addr(), "/api/streams", &[])
        .await
        .unwrap()
        .json()
        .unwrap()["streams"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        change(&gw, &id, &json!({"add": ["off.b"]}), &[])
            .await
            .status,
        404
    );
    a_normal_client_still_streams(&gw, "off.after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_only_the_streams_subject_changes_it_within_its_claims() {
    let gw = with_auth(Gateway::builder(bin()))
        .set("bus", "kind", "\"memory\"")
        .set("limits", "connect_burst_per_ip", "100000")
        .spawn()
        .await
        .unwrap();
    let token = |sub: &str, topics: &[&str]| {
        hs256(json!({"sub": sub, "subscribe": topics, "publish": [">"], "exp": now() + 600}))
    };
    let u1 = token("u1", &["orders.>"]);
    let bearer = |t: &str| format!("Bearer {t}");
    let mut s = SseStream::open(
        gw.addr(),
        "/events/orders.1",
        &[("Authorization", &bearer(&u1))],
    )
    .await
    .unwrap();
    assert_eq!(s.status(), 200);
    let (id, _) = opening(&mut s).await;
    let add = json!({"add": ["orders.2"]});
    assert_eq!(change(&gw, &id, &add, &[]).await.status, 401);
    let u2 = token("u2", &["orders.>"]);
    assert_eq!(
        change(&gw, &id, &add, &[("Authorization", &bearer(&u2))])
            .await
            .status,
        403
    );
    let narrow = token("u1", &["orders.1"]);
    let r = change(&gw, &id, &add, &[("Authorization", &bearer(&narrow))]).await;
    assert_eq!(r.status, 403, "the token must allow the added topic");
    // The cookie works from the gateway's own origin, not from another site.
    let cookie = format!("sse_token={u1}");
    let r = change(
        &gw,
        &id,
        &add,
        &[("Cookie", &cookie), ("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(r.status, 403);
    let r = change(&gw, &id, &add, &[("Authorization", &bearer(&u1))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http::request(
        gw.addr(),
        "POST",
        "/publish/orders.2",
        &[("Authorization", &bearer(&u1))],
        b"two",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202);
    assert_eq!(s.next_event(WAIT).await.unwrap().data, "two");
}
