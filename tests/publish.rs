//! The HTTP publish API and embedded mode.

use sse_testkit::http;

use crate::support::*;

fn memory(b: GatewayBuilder) -> GatewayBuilder {
    b.set("bus", "kind", "\"memory\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_needs_no_broker() {
    // No NATS anywhere: the gateway is ready at once, publish in, SSE out.
    let gw = memory(Gateway::builder(bin()))
        .set("limits", "connect_burst_per_ip", "100000")
        .spawn()
        .await
        .unwrap();
    gw.wait_ready(WAIT).await.unwrap();
    let mut s = open(&gw, "/events/chat").await;
    let r = post_text(&gw, "/publish/chat?event=said", b"hello\nthere").await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json().unwrap()["id"].as_str().unwrap().to_owned();
    let e = s.next_event(WAIT).await.unwrap();
    assert_eq!(e.id.as_deref(), Some(id.as_str()));
    assert_eq!(e.event.as_deref(), Some("said"));
    assert_eq!(e.data, "hello\nthere");
    // Same hub, same resume: published while away, replayed on return.
    drop(s);
    let r2 = post_text(&gw, "/publish/chat", b"missed").await;
    assert_eq!(r2.status, 202);
    let mut back = open_from(&gw, "/events/chat", &id).await;
    assert_eq!(back.next_event(WAIT).await.unwrap().data, "missed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_through_nats_reaches_every_instance_with_the_returned_id() {
    let nats = NatsServer::start().unwrap();
    let a = ready(&nats, |b| b).await;
    let b = ready(&nats, |b| b).await;
    let mut on_a = open(&a, "/events/news").await;
    let mut on_b = open(&b, "/events/news").await;
    let r = post_text(&a, "/publish/news?event=breaking", b"via A").await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json().unwrap()["id"].as_str().unwrap().to_owned();
    let e = on_a.next_event(WAIT).await.unwrap();
    assert_eq!(
        (e.id.as_deref(), e.data.as_str()),
        (Some(id.as_str()), "via A")
    );
    assert_eq!(e.event.as_deref(), Some("breaking"));
    // B delivers it too (with its own core id).
    assert_eq!(on_b.next_event(WAIT).await.unwrap().data, "via A");
    // Publishing to a topic nobody watches here still answers with an id.
    let r = post_text(&a, "/publish/elsewhere", b"x").await;
    assert_eq!(r.status, 202, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_publish_ids_are_the_same_everywhere() {
    let nats = NatsServer::start().unwrap();
    let js = |b: GatewayBuilder| b.set("jetstream", "enabled", "true");
    let a = ready(&nats, js).await;
    let b = ready(&nats, js).await;
    let mut on_b = open(&b, "/events/ledger").await;
    let r = post_text(&a, "/publish/ledger", b"entry").await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json().unwrap()["id"].as_str().unwrap().to_owned();
    let e = on_b.next_event(WAIT).await.unwrap();
    assert_eq!(e.id.as_deref(), Some(id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_publishes_are_4xx_json() {
    let gw = memory(Gateway::builder(bin())).spawn().await.unwrap();
    for (path, body, status, code) in [
        ("/publish/a", &b"\xff\xfe"[..], 400, "invalid_body"),
        ("/publish/a?event=x%0Ay", &b"ok"[..], 400, "bad_event"),
        (
            "/publish/a?event=gateway.reset",
            &b"ok"[..],
            400,
            "bad_event",
        ),
        ("/publish/a.*", &b"ok"[..], 400, "bad_topic"),
        ("/publish/a..b", &b"ok"[..], 400, "bad_topic"),
        ("/publish/", &b"ok"[..], 400, "missing_topic"),
    ] {
        let r = post_text(&gw, path, body).await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert_eq!(r.json().unwrap()["error"], code, "{path}");
    }
    let r = http::get(gw.addr(), "/publish/a", &[]).await.unwrap();
    assert_eq!(r.status, 405);
    let big = vec![b'x'; 1024 * 1024 + 16];
    let r = post_text(&gw, "/publish/a", &big).await;
    assert_eq!(r.status, 413);
}
