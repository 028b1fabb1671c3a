//! JWT auth: 401 / 403 / accepted, from header, cookie or query; public topics; publish.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use sse_testkit::http;

use crate::support::*;

const SECRET: &str = AUTH_SECRET;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn status(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let r = sse_testkit::SseStream::open(gw.addr(), path, headers)
        .await
        .unwrap();
    let status = r.status();
    if status == 200 {
        return (200, serde_json::Value::Null);
    }
    let mut r = r;
    let body = r.body_text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or_default())
}

fn with_auth(b: GatewayBuilder) -> GatewayBuilder {
    b.set("bus", "kind", "\"memory\"")
        .set("auth", "enabled", "true")
        .set("auth", "hs256_secret", &format!("\"{SECRET}\""))
        .set("auth", "public_topics", "[\"news.>\"]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_needs_a_token_covering_every_topic() {
    let gw = with_auth(Gateway::builder(bin()))
        .set("limits", "connect_burst_per_ip", "100000")
        .spawn()
        .await
        .unwrap();
    let good = hs256(json!({"subscribe": ["orders.*"], "exp": now() + 600}));
    let bearer = format!("Bearer {good}");
    assert_eq!(
        status(&gw, "/events/orders.1", &[("Authorization", &bearer)])
            .await
            .0,
        200
    );
    let cookie = format!("theme=dark; sse_token={good}");
    assert_eq!(
        status(&gw, "/events/orders.2", &[("Cookie", &cookie)])
            .await
            .0,
        200
    );
    assert_eq!(
        status(&gw, &format!("/events/orders.3?access_token={good}"), &[])
            .await
            .0,
        200
    );
    // Public topics need nothing.
    assert_eq!(status(&gw, "/events/news.today", &[]).await.0, 200);

    let (code, body) = status(&gw, "/events/orders.1", &[]).await;
    assert_eq!((code, body["error"].as_str()), (401, Some("unauthorized")));
    let forged = hs256(json!({"subscribe": [">"]})).replace('.', ".x");
    assert_eq!(
        status(&gw, &format!("/events/a?access_token={forged}"), &[])
            .await
            .0,
        401
    );
    let expired = hs256(json!({"subscribe": [">"], "exp": now() - 3600}));
    assert_eq!(
        status(&gw, &format!("/events/a?access_token={expired}"), &[])
            .await
            .0,
        401
    );
    // alg: none is refused.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(br#"{"subscribe":[">"]}"#)
    );
    assert_eq!(
        status(&gw, &format!("/events/a?access_token={none}"), &[])
            .await
            .0,
        401
    );
    // A valid token without the topic: 403; several topics need all of them.
    let (code, body) = status(&gw, "/events/users.1", &[("Authorization", &bearer)]).await;
    assert_eq!((code, body["error"].as_str()), (403, Some("forbidden")));
    let (code, _) = status(
        &gw,
        "/events?topic=orders.1&topic=users.1",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(code, 403);
    let m = gw.metrics().await.unwrap();
    assert!(
        m.get("sse_connections_total", &[("outcome", "unauthorized")])
            .unwrap()
            >= 6.0
    );
    // Tokens never appear in the logs.
    assert!(!gw.log().contains(&good), "a token was logged");
}

fn b64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_needs_a_publish_claim() {
    let gw = with_auth(Gateway::builder(bin())).spawn().await.unwrap();
    let reader = hs256(json!({"subscribe": [">"]}));
    let writer = hs256(json!({"publish": ["orders.>"]}));
    let post = |token: Option<String>, topic: &'static str| {
        let addr = gw.addr();
        async move {
            let auth = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| vec![("Authorization", a)])
                .unwrap_or_default();
            http::request(addr, "POST", &format!("/publish/{topic}"), &headers, b"x")
                .await
                .unwrap()
                .status
        }
    };
    assert_eq!(post(None, "orders.1").await, 401);
    assert_eq!(post(Some(reader), "orders.1").await, 403);
    assert_eq!(post(Some(writer.clone()), "users.1").await, 403);
    assert_eq!(
        post(None, "news.x").await,
        401,
        "public topics are read-only"
    );
    assert_eq!(post(Some(writer), "orders.1").await, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_keys() {
    for (alg, private, public) in [
        (Algorithm::RS256, "rs256-private.pem", "rs256-public.pem"),
        (Algorithm::ES256, "es256-private.pem", "es256-public.pem"),
    ] {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../auth/tests/keys/");
        let key = std::fs::read(format!("{dir}{private}")).unwrap();
        let encoding = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&key).unwrap(),
            _ => EncodingKey::from_ec_pem(&key).unwrap(),
        };
        let token = encode(&Header::new(alg), &json!({"subscribe": ["a"]}), &encoding).unwrap();
        let gw = Gateway::builder(bin())
            .set("bus", "kind", "\"memory\"")
            .set("auth", "enabled", "true")
            .set("auth", "public_key_file", &format!("\"{dir}{public}\""))
            .spawn()
            .await
            .unwrap();
        let bearer = format!("Bearer {token}");
        assert_eq!(
            status(&gw, "/events/a", &[("Authorization", &bearer)])
                .await
                .0,
            200,
            "{alg:?}"
        );
        let hs = hs256(json!({"subscribe": ["a"]}));
        let wrong = format!("Bearer {hs}");
        assert_eq!(
            status(&gw, "/events/a", &[("Authorization", &wrong)])
                .await
                .0,
            401,
            "{alg:?}"
        );
    }
}
