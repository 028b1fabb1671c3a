//! Shared helpers for the black-box tests.

use std::time::Duration;

use sse_testkit::http;

pub use sse_testkit::{
    Event, Gateway, GatewayBuilder, Item, NatsServer, SseStream, eventually, publish,
};

pub use sse_testkit::WAIT;

/// The gateway binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sse-gateway")
}

/// A builder for a gateway on `nats`. Token buckets are made roomy: every test connects
/// from 127.0.0.1 and most are not about rate limiting (those set their own limits).
pub fn gateway(nats: &NatsServer) -> GatewayBuilder {
    Gateway::builder(bin())
        .nats_url(&nats.url())
        .set("limits", "connect_rate_per_ip", "100000")
        .set("limits", "connect_burst_per_ip", "100000")
}

/// A running gateway on a running NATS, ready.
pub async fn ready(
    nats: &NatsServer,
    configure: impl FnOnce(GatewayBuilder) -> GatewayBuilder,
) -> Gateway {
    let gw = configure(gateway(nats)).spawn().await.unwrap();
    gw.wait_ready(WAIT).await.unwrap();
    gw
}

/// Opens a stream and checks it was accepted.
pub async fn open(gw: &Gateway, path: &str) -> SseStream {
    let stream = SseStream::open(gw.addr(), path, &[]).await.unwrap();
    assert_eq!(stream.status(), 200, "{path}: {}", gw.log());
    stream
}

/// Opens a stream with a `Last-Event-ID` header.
pub async fn open_from(gw: &Gateway, path: &str, last_event_id: &str) -> SseStream {
    let stream = SseStream::open(gw.addr(), path, &[("Last-Event-ID", last_event_id)])
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    stream
}

/// The value of one metric series, 0 when absent.
pub async fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    gw.metrics().await.unwrap().get(name, labels).unwrap_or(0.0)
}

/// Waits until a metric reaches `want`.
pub async fn wait_metric(gw: &Gateway, name: &str, labels: &[(&str, &str)], want: f64) {
    let what = format!("{name}{labels:?} == {want}");
    eventually(WAIT, &what, || async {
        let got = gw.metrics().await?.get(name, labels).unwrap_or(0.0);
        anyhow::ensure!(got == want, "{name} is {got}");
        Ok(())
    })
    .await
    .unwrap();
}

/// `gateway.reset` reason of an event, if it is one.
pub fn reset_reason(e: &Event) -> Option<String> {
    if e.event.as_deref() != Some("gateway.reset") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&e.data).ok()?;
    v["reason"].as_str().map(str::to_owned)
}

/// Publishes `payload` to `subject` through JetStream with `Nats-Msg-Id: msg_id`, retried
/// until the stream acknowledges it: stored exactly once, whatever fails meanwhile.
pub async fn publish_stored(
    js: &async_nats::jetstream::Context,
    subject: &str,
    msg_id: &str,
    payload: &str,
    within: Duration,
) {
    eventually(within, &format!("message {msg_id} stored"), || async {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        let ack = js
            .publish_with_headers(subject.to_owned(), headers, payload.to_owned().into())
            .await?;
        tokio::time::timeout(Duration::from_secs(2), ack).await??;
        Ok(())
    })
    .await
    .unwrap();
}

/// Seconds since the Unix epoch now (for `exp` claims).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `[auth]` on with [`AUTH_SECRET`] (HS256); `news.>` is public.
pub fn auth_on(b: GatewayBuilder) -> GatewayBuilder {
    b.set("auth", "enabled", "true")
        .set("auth", "hs256_secret", &format!("\"{AUTH_SECRET}\""))
        .set("auth", "public_topics", "[\"news.>\"]")
}

/// With auth on: a client reading the public `news.check` gets what a service with a
/// publishing token sends there.
pub async fn a_normal_client_still_streams_with_auth(gw: &Gateway) {
    a_normal_client_still_streams_with_key(gw, AUTH_SECRET).await;
}

/// [`a_normal_client_still_streams_with_auth`] for a gateway whose HS256 key is `secret`.
pub async fn a_normal_client_still_streams_with_key(gw: &Gateway, secret: &str) {
    let jwt = hs256_with(
        secret,
        serde_json::json!({"publish": [">"], "exp": now() + 600}),
    );
    let mut s = open(gw, "/events/news.check").await;
    let r = http::request(
        gw.addr(),
        "POST",
        "/publish/news.check",
        &[("Authorization", &format!("Bearer {jwt}"))],
        b"still here",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let e = loop {
        let e = s.next_event(WAIT).await.unwrap();
        if e.event.as_deref() != Some("gateway.stream") {
            break e;
        }
    };
    assert_eq!(e.data, "still here");
}

/// The HS256 secret of the black-box tests' `[auth]`.
pub const AUTH_SECRET: &str = "an-hs256-secret-for-the-black-box-tests";

/// A token signed with [`AUTH_SECRET`].
pub fn hs256(claims: serde_json::Value) -> String {
    hs256_with(AUTH_SECRET, claims)
}

/// A token signed with `secret`.
pub fn hs256_with(secret: &str, claims: serde_json::Value) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// An HTTP/2 client speaking cleartext HTTP/2 with prior knowledge (h2c).
pub fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

/// `POST` of a `text/plain` body (the publish API) to `gw`'s public listener.
pub async fn post_text(gw: &Gateway, path: &str, body: &[u8]) -> http::Response {
    http::request(
        gw.addr(),
        "POST",
        path,
        &[("Content-Type", "text/plain")],
        body,
    )
    .await
    .unwrap()
}

/// A normal client opens a stream on `topic`, a message is published through the
/// publish API, and the client gets it.
pub async fn a_normal_client_still_streams(gw: &Gateway, topic: &str) {
    let mut s = open(gw, &format!("/events/{topic}")).await;
    let r = post_text(gw, &format!("/publish/{topic}"), b"still here").await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(s.next_event(WAIT).await.unwrap().data, "still here");
}

/// The gateway's topic subscriptions on `nats` (its `sse.` subjects), sorted.
pub async fn gateway_subjects(nats: &NatsServer) -> Vec<String> {
    nats.subjects_under("sse.").await.unwrap()
}

/// Reads an SSE response body until it contains `needle`.
pub async fn read_until(resp: &mut reqwest::Response, needle: &str) -> String {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !text.contains(needle) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {text:?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("stream ended before {needle:?}: {text:?}"));
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}
