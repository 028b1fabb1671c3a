//! The operator API on the admin listener (protocol §11) and `sse-gateway ctl`: topics
//! and streams as they are, closing a user's streams and blocking them.

use std::time::Duration;

use serde_json::{Value, json};
use sse_testkit::http;

use crate::support::*;

const ADMIN_TOKEN: &str = "an-admin-token-for-the-tests";

fn with_admin(b: GatewayBuilder) -> GatewayBuilder {
    b.set("admin", "token", &format!("\"{ADMIN_TOKEN}\""))
}

fn with_auth(b: GatewayBuilder) -> GatewayBuilder {
    auth_on(with_admin(b))
}

/// An operator call with the admin token.
async fn api(gw: &Gateway, method: &str, path: &str) -> http::Response {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    http::request(
        gw.admin_addr(),
        method,
        path,
        &[("Authorization", &bearer)],
        b"",
    )
    .await
    .unwrap()
}

async fn api_json(gw: &Gateway, method: &str, path: &str) -> Value {
    let r = api(gw, method, path).await;
    assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
    r.json().unwrap()
}

/// Opens a stream as `sub` (a token for every `orders` topic).
async fn open_as(gw: &Gateway, sub: &str, path: &str) -> SseStream {
    let jwt = hs256(json!({"sub": sub, "subscribe": ["orders.>"], "exp": now() + 600}));
    SseStream::open(
        gw.addr(),
        path,
        &[("Authorization", &format!("Bearer {jwt}"))],
    )
    .await
    .unwrap()
}

/// Publishes `data` to `topic` through the gateway (a token that may publish anywhere).
async fn publish_as_service(gw: &Gateway, topic: &str, data: &str) -> String {
    let jwt = hs256(json!({"publish": [">"], "exp": now() + 600}));
    let r = http::request(
        gw.addr(),
        "POST",
        &format!("/publish/{topic}"),
        &[("Authorization", &format!("Bearer {jwt}"))],
        data.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    r.json().unwrap()["id"].as_str().unwrap().to_owned()
}

/// The streams the API lists for `query`.
async fn streams(gw: &Gateway, query: &str) -> Vec<Value> {
    let body = api_json(gw, "GET", &format!("/api/streams{query}")).await;
    body["streams"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_api_needs_the_admin_token() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, with_admin).await;
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", "Basic YWRtaW46YWRtaW4=")],
    ] {
        for path in ["/api/topics", "/api/streams", "/api/topics/a"] {
            let r = http::request(gw.admin_addr(), "GET", path, &headers, b"")
                .await
                .unwrap();
            assert_eq!(r.status, 401, "{path} {headers:?}");
            assert_eq!(r.json().unwrap()["error"], "unauthorized");
        }
        let r = http::request(
            gw.admin_addr(),
            "DELETE",
            "/api/streams?ip=127.0.0.1",
            &headers,
            b"",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 401);
    }
    // The other admin endpoints stay open.
    assert_eq!(
        http::get(gw.admin_addr(), "/metrics", &[])
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        api_json(&gw, "GET", "/api/topics").await,
        json!({"topics": []})
    );
    a_normal_client_still_streams(&gw, "after.auth").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_listed_most_subscribers_first_with_their_rings() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, with_admin).await;
    let mut held = Vec::new();
    for (topic, clients) in [("t.b", 1), ("t.a", 3), ("t.c", 2)] {
        for _ in 0..clients {
            held.push(open(&gw, &format!("/events/{topic}")).await);
        }
    }
    let r = post_text(&gw, "/publish/t.a", b"one").await;
    assert_eq!(r.status, 202);
    let r = post_text(&gw, "/publish/t.a", b"two").await;
    let last = r.json().unwrap()["id"].as_str().unwrap().to_owned();
    // held: t.b, then the three of t.a, then the two of t.c.
    for s in &mut held[1..4] {
        s.events(2, WAIT).await.unwrap();
    }
    let body = api_json(&gw, "GET", "/api/topics").await;
    let topics = body["topics"].as_array().unwrap();
    let names: Vec<&str> = topics
        .iter()
        .map(|t| t["topic"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["t.a", "t.c", "t.b"]);
    let a = &topics[0];
    assert_eq!(a["subscribers"], 3);
    assert_eq!(a["ring_frames"], 2);
    assert!(a["ring_bytes"].as_u64().unwrap() > 0);
    assert_eq!(a["last_id"], last.as_str());
    assert_eq!(topics[2]["last_id"], Value::Null);
    assert_eq!(topics[2]["ring_frames"], 0);
    let two = api_json(&gw, "GET", "/api/topics?limit=2").await;
    assert_eq!(two["topics"].as_array().unwrap().len(), 2);
    let one = api_json(&gw, "GET", "/api/topics/t.c").await;
    assert_eq!(one["topic"], "t.c");
    assert_eq!(one["subscribers"], 2);
    assert_eq!(api(&gw, "GET", "/api/topics/t.none").await.status, 404);
    assert_eq!(api(&gw, "GET", "/api/topics?limit=0").await.status, 400);
    assert_eq!(api(&gw, "GET", "/api/topics?bogus=1").await.status, 400);
    assert_eq!(api(&gw, "POST", "/api/topics").await.status, 405);
    // Clients leave: their counts follow.
    held.truncate(4);
    eventually(WAIT, "t.c released", || async {
        let one = api_json(&gw, "GET", "/api/topics/t.c").await;
        anyhow::ensure!(one["subscribers"] == 0, "{one}");
        Ok(())
    })
    .await
    .unwrap();
    a_normal_client_still_streams(&gw, "t.after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_listed_by_filter_and_paged_by_id() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, with_admin).await;
    let mut held = Vec::new();
    for i in 0..5 {
        held.push(open(&gw, &format!("/events?topic=s.all&topic=s.{i}")).await);
    }
    post_text(&gw, "/publish/s.all", b"x").await;
    for s in &mut held {
        s.next_event(WAIT).await.unwrap();
    }
    let all = streams(&gw, "").await;
    assert_eq!(all.len(), 5);
    for s in &all {
        assert_eq!(s["id"].as_str().unwrap().len(), 32);
        assert_eq!(s["ip"], "127.0.0.1");
        assert_eq!(s["sub"], Value::Null);
        assert_eq!(s["topics"].as_array().unwrap().len(), 2);
        assert!(s["opened_at"].as_str().unwrap().ends_with('Z'));
        assert!(s["pending_bytes"].is_u64());
    }
    eventually(WAIT, "events_sent counted", || async {
        let all = streams(&gw, "").await;
        anyhow::ensure!(all.iter().all(|s| s["events_sent"] == 1), "{all:?}");
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(streams(&gw, "?topic=s.3").await.len(), 1);
    assert_eq!(streams(&gw, "?topic=s.all").await.len(), 5);
    assert_eq!(streams(&gw, "?ip=127.0.0.1").await.len(), 5);
    assert_eq!(streams(&gw, "?ip=10.9.9.9").await.len(), 0);
    assert_eq!(streams(&gw, "?sub=nobody").await.len(), 0);
    // Pages of 2 by id cover all 5 once.
    let mut paged = Vec::new();
    let mut after = String::new();
    loop {
        let page = streams(&gw, &format!("?limit=2{after}")).await;
        let Some(last) = page.last() else { break };
        after = format!("&after={}", last["id"].as_str().unwrap());
        paged.extend(page.iter().map(|s| s["id"].as_str().unwrap().to_owned()));
    }
    let mut ids: Vec<String> = all
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(paged, ids);
    assert_eq!(api(&gw, "GET", "/api/streams?ip=a&sub=b").await.status, 400);
    assert_eq!(api(&gw, "GET", "/api/streams?after=nope").await.status, 400);
    a_normal_client_still_streams(&gw, "s.after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicking_a_sub_closes_exactly_its_streams_and_block_refuses_it() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, with_auth).await;
    let mut u1a = open_as(&gw, "u1", "/events/orders.1").await;
    let mut u1b = open_as(&gw, "u1", "/events/orders.2").await;
    let mut u2 = open_as(&gw, "u2", "/events/orders.1").await;
    for s in [&u1a, &u1b, &u2] {
        assert_eq!(s.status(), 200);
    }
    let listed = streams(&gw, "?sub=u1").await;
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|s| s["sub"] == "u1"));
    let closed = api_json(&gw, "DELETE", "/api/streams?sub=u1&block=1m").await;
    assert_eq!(closed, json!({"closed": 2}));
    for s in [&mut u1a, &mut u1b] {
        let items = s.wait_closed(WAIT).await.unwrap();
        let close = items
            .iter()
            .find_map(|i| match i {
                Item::Event(e) => Some(e.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(close.event.as_deref(), Some("gateway.close"));
        assert_eq!(close.data, r#"{"reason":"revoked"}"#);
        assert!(matches!(items.last(), Some(Item::Retry(_))));
    }
    // Blocked: a new stream of u1 is refused 403 revoked; u2 is untouched and streams.
    let mut again = open_as(&gw, "u1", "/events/orders.1").await;
    assert_eq!(again.status(), 403);
    let body: Value = serde_json::from_str(&again.body_text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "revoked");
    publish_as_service(&gw, "orders.1", "for u2").await;
    assert_eq!(u2.next_event(WAIT).await.unwrap().data, "for u2");
    assert_eq!(streams(&gw, "").await.len(), 1);
    wait_metric(
        &gw,
        "sse_streams_closed_total",
        &[("reason", "revoked")],
        2.0,
    )
    .await;
    // Closing one stream by id; an unknown id is 404.
    let id = streams(&gw, "?sub=u2").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        api_json(&gw, "DELETE", &format!("/api/streams/{id}")).await,
        json!({"closed": 1})
    );
    u2.wait_closed(WAIT).await.unwrap();
    assert_eq!(
        api(&gw, "DELETE", &format!("/api/streams/{id}"))
            .await
            .status,
        404
    );
    // Closing needs a filter; blocking a topic means nothing.
    assert_eq!(api(&gw, "DELETE", "/api/streams").await.status, 400);
    assert_eq!(
        api(&gw, "DELETE", "/api/streams?topic=orders.1&block=1m")
            .await
            .status,
        400
    );
    // Public topics, read without a token, are not blocked for u1's address.
    a_normal_client_still_streams_with_auth(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_an_address_refuses_its_streams_until_the_block_ends() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, with_admin).await;
    let mut s = open(&gw, "/events/ip.a").await;
    let closed = api_json(&gw, "DELETE", "/api/streams?ip=127.0.0.1&block=2s").await;
    assert_eq!(closed, json!({"closed": 1}));
    s.wait_closed(WAIT).await.unwrap();
    let refused = SseStream::open(gw.addr(), "/events/ip.a", &[])
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    eventually(Duration::from_secs(10), "the block ends", || async {
        let s = SseStream::open(gw.addr(), "/events/ip.a", &[]).await?;
        anyhow::ensure!(s.status() == 200, "still {}", s.status());
        Ok(())
    })
    .await
    .unwrap();
    a_normal_client_still_streams(&gw, "ip.after").await;
}

/// Runs `sse-gateway ctl --config <gw's file> args…`; its stdout.
fn ctl(gw: &Gateway, args: &[&str]) -> String {
    let out = std::process::Command::new(bin())
        .arg("ctl")
        .arg("--config")
        .arg(gw.config_path())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_prints_what_the_api_returns() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, with_auth).await;
    let mut u1 = open_as(&gw, "u1", "/events/orders.7").await;
    let _u2 = open_as(&gw, "u2", "/events/orders.8").await;
    let api_topics = api_json(&gw, "GET", "/api/topics").await;
    let printed: Value = serde_json::from_str(&ctl(&gw, &["--json", "topics"])).unwrap();
    assert_eq!(printed, api_topics);
    let table = ctl(&gw, &["topics"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("TOPIC"), "{table}");
    assert_eq!(lines.len(), 3, "{table}");
    let listed: Value =
        serde_json::from_str(&ctl(&gw, &["--json", "streams", "--sub", "u1"])).unwrap();
    assert_eq!(listed, api_json(&gw, "GET", "/api/streams?sub=u1").await);
    assert_eq!(listed["streams"].as_array().unwrap().len(), 1);
    let table = ctl(&gw, &["streams", "--sub", "u1"]);
    assert!(
        table.contains(listed["streams"][0]["id"].as_str().unwrap()),
        "{table}"
    );
    assert!(table.contains("orders.7"), "{table}");
    assert_eq!(
        ctl(&gw, &["kick", "--sub", "u1", "--block", "10m"]).trim(),
        "closed 1"
    );
    u1.wait_closed(WAIT).await.unwrap();
    let refused = open_as(&gw, "u1", "/events/orders.7").await;
    assert_eq!(refused.status(), 403);
    // A refusal is a non-zero exit with the API's message.
    let out = std::process::Command::new(bin())
        .args(["ctl", "--config"])
        .arg(gw.config_path())
        .args(["--token", "wrong", "topics"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let _still = open_as(&gw, "u2", "/events/orders.8").await;
    assert_eq!(streams(&gw, "?sub=u2").await.len(), 2);
}
