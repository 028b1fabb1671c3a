//! Token lifecycle (protocol §11): a stream ends at its token's `exp` with
//! `gateway.close`, a fresh token resumes it with nothing lost, and tickets stand in for
//! JWTs in URLs — once, within their lifetime, on every instance sharing the secret.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use serde_json::json;
use sse_testkit::http;
use tokio::time::Instant;

use crate::support::*;

/// The ticket secret of these tests.
const TICKET_SECRET: &str = "a-ticket-secret-for-the-black-box-tests";

fn with_tickets(b: GatewayBuilder) -> GatewayBuilder {
    auth_on(b)
        .set("auth", "ticket_secret", &format!("\"{TICKET_SECRET}\""))
        .set("sse", "retry", "\"200ms\"")
        .env("RUST_LOG", "debug")
}

fn memory(b: GatewayBuilder) -> GatewayBuilder {
    b.set("bus", "kind", "\"memory\"")
        .set("limits", "connect_burst_per_ip", "100000")
}

fn jetstream_on(b: GatewayBuilder) -> GatewayBuilder {
    b.set("jetstream", "enabled", "true")
}

/// A token for `sub` reading `topics` until `exp`.
fn token(sub: &str, topics: &[&str], exp: u64) -> String {
    hs256(json!({"sub": sub, "subscribe": topics, "publish": [">"], "exp": exp}))
}

async fn open_with(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> SseStream {
    SseStream::open(gw.addr(), path, headers).await.unwrap()
}

/// `POST /tickets` with `headers`.
async fn post_ticket(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> http::Response {
    http::request(gw.addr(), "POST", path, headers, b"")
        .await
        .unwrap()
}

/// A ticket for `jwt`, taken from `gw`.
async fn ticket(gw: &Gateway, jwt: &str) -> String {
    let r = post_ticket(
        gw,
        "/tickets",
        &[("Authorization", &format!("Bearer {jwt}"))],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let body = r.json().unwrap();
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!((1..=30).contains(&expires_in), "{body}");
    body["ticket"].as_str().unwrap().to_owned()
}

/// The close frame, the `retry:` and the end: what a stream ended for `reason` shows
/// after its last event.
fn assert_closed_for(items: &[Item], reason: &str) {
    let events: Vec<&Event> = items
        .iter()
        .filter_map(|i| match i {
            Item::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    let close = events.last().expect("a close event");
    assert_eq!(close.event.as_deref(), Some("gateway.close"), "{items:?}");
    assert_eq!(close.id, None, "the close frame carries no id");
    let data: serde_json::Value = serde_json::from_str(&close.data).unwrap();
    assert_eq!(data, json!({"reason": reason}));
    assert!(
        matches!(items.last(), Some(Item::Retry(_))),
        "retry: comes last: {items:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_at_its_token_exp_with_gateway_close_and_nothing_after() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, with_tickets).await;
    let exp = now() + 2;
    let jwt = token("u1", &["orders.1"], exp);
    let mut s = open_with(
        &gw,
        "/events/orders.1",
        &[("Authorization", &format!("Bearer {jwt}"))],
    )
    .await;
    assert_eq!(s.status(), 200);
    let client = async_nats::connect(nats.url()).await.unwrap();
    client
        .publish("sse.orders.1", "before".into())
        .await
        .unwrap();
    assert_eq!(s.next_event(WAIT).await.unwrap().data, "before");
    let items = s.wait_closed(WAIT).await.unwrap();
    assert!(now() >= exp, "not before exp");
    assert_closed_for(&items, "token_expired");
    assert_eq!(s.end(), Some(sse_testkit::StreamEnd::Terminated));
    wait_metric(
        &gw,
        "sse_streams_closed_total",
        &[("reason", "token_expired")],
        1.0,
    )
    .await;
    // A ticket carries the token's exp: its stream ends then too.
    let exp = now() + 2;
    let t = ticket(&gw, &token("u1", &["orders.1"], exp)).await;
    let mut s = open_with(&gw, &format!("/events/orders.1?ticket={t}"), &[]).await;
    assert_eq!(s.status(), 200);
    let items = s.wait_closed(WAIT).await.unwrap();
    assert!(now() >= exp);
    assert_closed_for(&items, "token_expired");
    a_normal_client_still_streams_with_auth(&gw).await;
}

/// Publishes 1..=n to `subject`, one every 10 ms; `progress` holds the last one sent.
fn publish_numbers(
    nats: &NatsServer,
    subject: &'static str,
    n: u64,
    stored: bool,
    progress: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let url = nats.url();
    tokio::spawn(async move {
        let client = async_nats::connect(url).await.unwrap();
        let js = jetstream::new(client.clone());
        for i in 1..=n {
            let value = i.to_string();
            if stored {
                publish_stored(&js, subject, &value, &value, WAIT).await;
            } else {
                client.publish(subject, value.clone().into()).await.unwrap();
            }
            progress.store(i, Ordering::Release);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        client.flush().await.unwrap();
    })
}

/// Opens `path` with a token for `topic` that expires in 2 s (or less), resuming after
/// `last_id` when given.
async fn open_briefly(gw: &Gateway, path: &str, topic: &str, last_id: Option<&str>) -> SseStream {
    let jwt = token("u1", &[topic], now() + 2);
    let bearer = format!("Bearer {jwt}");
    let mut headers = vec![("Authorization", bearer.as_str())];
    if let Some(id) = last_id {
        headers.push(("Last-Event-ID", id));
    }
    let s = open_with(gw, path, &headers).await;
    assert_eq!(s.status(), 200);
    s
}

/// Reads `first` (opened with [`open_briefly`] before anything was published) and, each
/// time its token expires, `path` again with a fresh token and the last id, until it has
/// `n` events; returns their values and how many streams ended with `token_expired`.
async fn read_renewing(
    gw: &Gateway,
    first: SseStream,
    path: &str,
    topic: &str,
    n: u64,
) -> (Vec<u64>, usize) {
    let mut values = Vec::new();
    let mut last_id: Option<String> = None;
    let mut expiries = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next = Some(first);
    while values.last() != Some(&n) {
        assert!(Instant::now() < deadline, "stuck at {values:?}");
        let mut s = match next.take() {
            Some(s) => s,
            None => open_briefly(gw, path, topic, last_id.as_deref()).await,
        };
        while let Ok(Some(item)) = s.next_item(Duration::from_secs(5)).await {
            let Item::Event(e) = item else { continue };
            if e.event.as_deref() == Some("gateway.close") {
                expiries += 1;
                continue;
            }
            assert_eq!(reset_reason(&e), None, "no gap to announce");
            last_id = e.id.clone().or(last_id);
            values.push(e.data.parse().unwrap());
            if values.last() == Some(&n) {
                break;
            }
        }
    }
    (values, expiries)
}

async fn resume_with_a_fresh_token_loses_nothing(jetstream: bool) {
    const N: u64 = 400;
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| {
        let b = with_tickets(b);
        if jetstream { jetstream_on(b) } else { b }
    })
    .await;
    // The stream is open (and its topic subscribed) before the first event goes out.
    let mut first = open_with(
        &gw,
        "/events/renew",
        &[(
            "Authorization",
            &format!("Bearer {}", token("u1", &["renew"], now() + 600)),
        )],
    )
    .await;
    assert_eq!(first.status(), 200);
    let renewing = open_briefly(&gw, "/events/renew", "renew", None).await;
    let progress = Arc::new(AtomicU64::new(0));
    let publishing = publish_numbers(&nats, "sse.renew", N, jetstream, progress);
    let (values, expiries) = read_renewing(&gw, renewing, "/events/renew", "renew", N).await;
    publishing.await.unwrap();
    assert_eq!(
        values,
        (1..=N).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(expiries >= 1, "the tokens did expire mid-stream");
    assert_eq!(
        first.events(N as usize, WAIT).await.unwrap().len(),
        N as usize
    );
    a_normal_client_still_streams_with_auth(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_a_fresh_token_loses_nothing_on_a_core_topic() {
    resume_with_a_fresh_token_loses_nothing(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_a_fresh_token_loses_nothing_on_a_jetstream_topic() {
    resume_with_a_fresh_token_loses_nothing(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_opens_one_stream_once_and_never_reaches_a_log() {
    let gw = with_tickets(memory(Gateway::builder(bin())))
        .set("auth", "ticket_ttl", "\"2s\"")
        .spawn()
        .await
        .unwrap();
    let jwt = token("u1", &["orders.*"], now() + 600);
    let t = ticket(&gw, &jwt).await;
    let mut s = open_with(&gw, &format!("/events/orders.1?ticket={t}"), &[]).await;
    assert_eq!(s.status(), 200, "{}", gw.log());
    // Used: refused, on any topic.
    let again = open_with(&gw, &format!("/events/orders.1?ticket={t}"), &[]).await;
    assert_eq!(again.status(), 401);
    // The ticket carries the token's claims: nothing beyond them.
    let t2 = ticket(&gw, &jwt).await;
    let other = open_with(&gw, &format!("/events/invoices.1?ticket={t2}"), &[]).await;
    assert_eq!(other.status(), 403);
    // A forged or garbled ticket.
    let mut forged = ticket(&gw, &jwt).await;
    forged.insert(3, 'x');
    let bad = open_with(&gw, &format!("/events/orders.1?ticket={forged}"), &[]).await;
    assert_eq!(bad.status(), 401);
    // After its lifetime: refused though never used.
    let late = ticket(&gw, &jwt).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let expired = open_with(&gw, &format!("/events/orders.1?ticket={late}"), &[]).await;
    assert_eq!(expired.status(), 401);
    // The first stream streams.
    let r = http::request(
        gw.addr(),
        "POST",
        "/publish/orders.1",
        &[("Authorization", &format!("Bearer {jwt}"))],
        b"hello",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202);
    assert_eq!(s.next_event(WAIT).await.unwrap().data, "hello");
    drop(s);
    eventually(WAIT, "the stream's debug line", || async {
        anyhow::ensure!(gw.log().contains("stream closed"), "not yet");
        Ok(())
    })
    .await
    .unwrap();
    let log = gw.log();
    for secret in [jwt.as_str(), t.as_str(), t2.as_str(), late.as_str()] {
        assert!(!log.contains(secret), "a token or ticket reached the log");
        // Neither does any piece of it long enough to matter.
        assert!(!log.contains(&secret[secret.len() - 24..]));
    }
    a_normal_client_still_streams_with_auth(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_are_made_from_a_valid_jwt_in_a_header_or_cookie_only() {
    let gw = with_tickets(memory(Gateway::builder(bin())))
        .set("cors", "allowed_origins", "[\"https://app.example\"]")
        .spawn()
        .await
        .unwrap();
    let jwt = token("u1", &["orders.*"], now() + 600);
    // Only in the query: refused (a JWT in a URL is what tickets replace).
    let r = post_ticket(&gw, &format!("/tickets?access_token={jwt}"), &[]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json().unwrap()["error"], "unauthorized");
    // From an expired JWT.
    let old = token("u1", &["orders.*"], now() - 3600);
    let r = post_ticket(
        &gw,
        "/tickets",
        &[("Authorization", &format!("Bearer {old}"))],
    )
    .await;
    assert_eq!(r.status, 401);
    // From the cookie, same site: fine; another site with only the cookie: refused.
    let cookie = format!("sse_token={jwt}");
    let r = post_ticket(
        &gw,
        "/tickets",
        &[
            ("Cookie", &cookie),
            ("Origin", &format!("http://{}", gw.addr())),
        ],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = post_ticket(
        &gw,
        "/tickets",
        &[("Cookie", &cookie), ("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(r.status, 403);
    // CORS applies: the preflight and the answer name an allowed origin.
    let r = http::request(
        gw.addr(),
        "OPTIONS",
        "/tickets",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "authorization"),
        ],
        b"",
    )
    .await
    .unwrap();
    assert!(r.status < 300, "{}", r.status);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let r = post_ticket(
        &gw,
        "/tickets",
        &[
            ("Authorization", &format!("Bearer {jwt}")),
            ("Origin", "https://app.example"),
        ],
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    // GET is not the exchange.
    let r = http::get(gw.addr(), "/tickets", &[]).await.unwrap();
    assert_eq!(r.status, 405);
    a_normal_client_still_streams_with_auth(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_is_single_use_across_instances_sharing_jetstream() {
    let nats = NatsServer::start().unwrap();
    let a = ready(&nats, |b| jetstream_on(with_tickets(b))).await;
    let b = ready(&nats, |b| jetstream_on(with_tickets(b))).await;
    let jwt = token("u1", &["orders.*"], now() + 600);
    // Made on one, good on the other (the secret is shared) …
    let t = ticket(&a, &jwt).await;
    let s = open_with(&b, &format!("/events/orders.1?ticket={t}"), &[]).await;
    assert_eq!(s.status(), 200, "{}", b.log());
    // … once: not again there, nor on the instance that made it.
    for gw in [&a, &b] {
        let again = open_with(gw, &format!("/events/orders.1?ticket={t}"), &[]).await;
        assert_eq!(again.status(), 401);
    }
    a_normal_client_still_streams_with_auth(&a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_tickets_work_once_and_a_stream_ends_at_its_tokens_exp() {
    let gw = with_tickets(memory(Gateway::builder(bin())))
        .spawn()
        .await
        .unwrap();
    let h2 = h2c_client();
    let jwt = token("u1", &["orders.*"], now() + 2);
    let r = h2
        .post(format!("http://{}/tickets", gw.addr()))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 201);
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let ticket = body["ticket"].as_str().unwrap().to_owned();
    let url = format!("http://{}/events/orders.1?ticket={ticket}", gw.addr());
    let mut stream = h2.get(&url).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    read_until(&mut stream, ": connected").await;
    let again = h2.get(&url).send().await.unwrap();
    assert_eq!(
        again.status(),
        401,
        "a ticket is good once, over HTTP/2 too"
    );
    let text = read_until(&mut stream, "retry:").await;
    assert!(
        text.contains("event: gateway.close\ndata: {\"reason\":\"token_expired\"}\n\n"),
        "{text:?}"
    );
    // Then the body ends, with nothing more than the rest of the `retry:` line.
    let mut rest = String::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, stream.chunk())
        .await
        .expect("the body ends")
        .unwrap()
    {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!rest.contains("data:"), "{rest:?}");
    a_normal_client_still_streams_with_auth(&gw).await;
}
