use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
use serde_json::{Value, json};

use super::*;

const SECRET: &[u8] = b"test-secret-0123456789-abcdefghij";
const RS256_PUBLIC: &[u8] = include_bytes!("../../tests/keys/rs256-public.pem");
const RS256_PRIVATE: &[u8] = include_bytes!("../../tests/keys/rs256-private.pem");
const ES256_PUBLIC: &[u8] = include_bytes!("../../tests/keys/es256-public.pem");
const ES256_PRIVATE: &[u8] = include_bytes!("../../tests/keys/es256-private.pem");

fn hs256(public_topics: &[&str]) -> Authorizer {
    Authorizer::new(AuthConfig {
        key: VerifyKey::Hs256(SECRET.to_vec()),
        cookie: DEFAULT_COOKIE.to_owned(),
        public_topics: public_topics.iter().map(|s| s.to_string()).collect(),
        tickets: None,
    })
    .unwrap()
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    encode(&Header::new(alg), claims, key).unwrap()
}

fn sign_hs(claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET), claims)
}

fn in_an_hour() -> u64 {
    get_current_timestamp() + 3600
}

/// A 401 whose message does not leak the token.
fn assert_unauthorized<T: std::fmt::Debug>(result: Result<T, Denied>, token: &str, needle: &str) {
    match result {
        Err(Denied::Unauthorized(m)) => {
            assert!(m.contains(needle), "{m:?} lacks {needle:?}");
            assert!(token.is_empty() || !m.contains(token), "token leaked: {m}");
        }
        other => panic!("expected 401 ({needle}), got {other:?}"),
    }
}

fn forbidden_message<T: std::fmt::Debug>(result: Result<T, Denied>) -> String {
    match result {
        Err(Denied::Forbidden(m)) => m,
        other => panic!("expected 403, got {other:?}"),
    }
}

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut acc = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            acc |= u32::from(b) << (16 - 8 * i);
        }
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(acc >> (18 - 6 * i)) as usize & 63]));
        }
    }
    out
}

#[test]
fn b64url_helper_matches_known_vectors() {
    assert_eq!(b64url(b"f"), "Zg");
    assert_eq!(b64url(b"fo"), "Zm8");
    assert_eq!(b64url(b"foo"), "Zm9v");
    assert_eq!(b64url(&[0xfb, 0xff, 0xbf]), "-_-_");
}

#[test]
fn hs256_token_is_accepted() {
    let auth = hs256(&[]);
    let token = sign_hs(&json!({
        "subscribe": ["orders.*"],
        "publish": ["orders.>"],
        "exp": in_an_hour(),
    }));
    auth.check_subscribe(Some(&token), &["orders.42"]).unwrap();
    auth.check_publish(Some(&token), "orders.42.items").unwrap();
}

#[test]
fn token_without_exp_is_accepted() {
    let auth = hs256(&[]);
    let token = sign_hs(&json!({"subscribe": [">"]}));
    auth.check_subscribe(Some(&token), &["a.b.c"]).unwrap();
}

#[test]
fn wrong_secret_is_401() {
    let auth = hs256(&[]);
    let other = EncodingKey::from_secret(b"another-secret-0123456789-abcdefgh");
    let token = sign(Algorithm::HS256, &other, &json!({"subscribe": [">"]}));
    assert_unauthorized(
        auth.check_subscribe(Some(&token), &["a"]),
        &token,
        "signature",
    );
    assert_unauthorized(auth.check_publish(Some(&token), "a"), &token, "signature");
}

#[test]
fn tampered_payload_is_401() {
    let auth = hs256(&[]);
    let token = sign_hs(&json!({"subscribe": ["a"]}));
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = b64url(br#"{"subscribe":[">"]}"#);
    parts[1] = &forged;
    let forged = parts.join(".");
    assert_unauthorized(
        auth.check_subscribe(Some(&forged), &["b"]),
        &forged,
        "signature",
    );
}

#[test]
fn expired_token_is_401() {
    let auth = hs256(&[]);
    let exp = get_current_timestamp() - 60;
    let token = sign_hs(&json!({"subscribe": [">"], "exp": exp}));
    assert_unauthorized(
        auth.check_subscribe(Some(&token), &["a"]),
        &token,
        "expired",
    );
}

#[test]
fn leeway_is_small() {
    let auth = hs256(&[]);
    let just_expired = sign_hs(&json!({"subscribe": [">"], "exp": get_current_timestamp() - 1}));
    auth.check_subscribe(Some(&just_expired), &["a"]).unwrap();
    let expired = sign_hs(&json!({
        "subscribe": [">"],
        "exp": get_current_timestamp() - LEEWAY_SECS - 5,
    }));
    assert_unauthorized(
        auth.check_subscribe(Some(&expired), &["a"]),
        &expired,
        "expired",
    );
}

#[test]
fn exp_that_is_not_a_number_is_401() {
    let auth = hs256(&[]);
    let token = sign_hs(&json!({"subscribe": [">"], "exp": "never"}));
    assert_unauthorized(auth.check_subscribe(Some(&token), &["a"]), &token, "exp");
}

#[test]
fn nbf_in_the_future_is_401() {
    let auth = hs256(&[]);
    let token = sign_hs(&json!({"subscribe": [">"], "nbf": in_an_hour()}));
    assert_unauthorized(
        auth.check_subscribe(Some(&token), &["a"]),
        &token,
        "not valid yet",
    );
    let started = sign_hs(&json!({"subscribe": [">"], "nbf": get_current_timestamp() - 10}));
    auth.check_subscribe(Some(&started), &["a"]).unwrap();
}

#[test]
fn alg_none_is_401() {
    let auth = hs256(&[]);
    let payload = b64url(br#"{"subscribe":[">"],"publish":[">"]}"#);
    for header in [
        r#"{"alg":"none"}"#,
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"None"}"#,
        r#"{"alg":"NONE"}"#,
    ] {
        let token = format!("{}.{payload}.", b64url(header.as_bytes()));
        assert_unauthorized(
            auth.check_subscribe(Some(&token), &["a"]),
            &token,
            "algorithm",
        );
        assert_unauthorized(auth.check_publish(Some(&token), "a"), &token, "algorithm");
    }
    // Claiming HS256 with an empty signature does not help either.
    let token = format!("{}.{payload}.", b64url(br#"{"alg":"HS256"}"#));
    assert_unauthorized(auth.check_subscribe(Some(&token), &["a"]), &token, "");
}

#[test]
fn other_hmac_algorithms_are_401() {
    let auth = hs256(&[]);
    let key = EncodingKey::from_secret(SECRET);
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let token = sign(alg, &key, &json!({"subscribe": [">"]}));
        assert_unauthorized(auth.check_subscribe(Some(&token), &["a"]), &token, "HS256");
    }
}

#[test]
fn missing_or_garbage_token_is_401() {
    let auth = hs256(&[]);
    assert_unauthorized(auth.check_subscribe(None, &["a"]), "", "required");
    assert_unauthorized(auth.check_subscribe(Some(""), &["a"]), "", "required");
    assert_unauthorized(auth.check_publish(None, "a"), "", "required");
    for garbage in ["x", "a.b.c", "a.b", "....", "eyJhbGciOiJIUzI1NiJ9.e30"] {
        assert_unauthorized(auth.check_subscribe(Some(garbage), &["a"]), "", "malformed");
    }
    let huge = "a".repeat(MAX_TOKEN_LEN + 1);
    assert_unauthorized(auth.check_subscribe(Some(&huge), &["a"]), "", "too long");
}

#[test]
fn malformed_claims_are_401() {
    let auth = hs256(&[]);
    let token = sign_hs(&json!({"subscribe": "orders.*"}));
    assert_unauthorized(
        auth.check_subscribe(Some(&token), &["orders.1"]),
        &token,
        "claims",
    );
}

#[test]
fn token_without_the_topic_is_403_naming_it() {
    let auth = hs256(&[]);
    let token = sign_hs(&json!({"subscribe": ["orders.*"], "exp": in_an_hour()}));
    let m = forbidden_message(auth.check_subscribe(Some(&token), &["invoices.7"]));
    assert!(m.contains("\"invoices.7\""), "{m}");
    assert!(!m.contains(&token));
    // No claims at all, or empty/null ones, allow nothing.
    for claims in [json!({}), json!({"subscribe": [], "publish": null})] {
        let token = sign_hs(&claims);
        forbidden_message(auth.check_subscribe(Some(&token), &["a"]));
        forbidden_message(auth.check_publish(Some(&token), "a"));
    }
}

#[test]
fn subscribe_and_publish_claims_are_separate() {
    let auth = hs256(&[]);
    let reader = sign_hs(&json!({"subscribe": [">"]}));
    let m = forbidden_message(auth.check_publish(Some(&reader), "orders.1"));
    assert!(
        m.contains("publishing") && m.contains("\"orders.1\""),
        "{m}"
    );
    let writer = sign_hs(&json!({"publish": [">"]}));
    forbidden_message(auth.check_subscribe(Some(&writer), &["orders.1"]));
    auth.check_publish(Some(&writer), "orders.1").unwrap();
}

#[test]
fn several_topics_need_all() {
    let auth = hs256(&[]);
    let token = sign_hs(&json!({"subscribe": ["orders.*", "users.42"]}));
    auth.check_subscribe(Some(&token), &["orders.1", "users.42"])
        .unwrap();
    let m = forbidden_message(
        auth.check_subscribe(Some(&token), &["orders.1", "users.43", "payments.1"]),
    );
    assert!(
        m.contains("\"users.43\""),
        "names the first uncovered topic: {m}"
    );
    auth.check_subscribe(Some(&token), &[]).unwrap();
}

#[test]
fn wildcard_subscriptions_need_a_covering_claim() {
    let auth = hs256(&[]);
    let star = sign_hs(&json!({"subscribe": ["orders.*"]}));
    let tail = sign_hs(&json!({"subscribe": ["orders.>"]}));
    auth.check_subscribe(Some(&star), &["orders.*"]).unwrap();
    auth.check_subscribe(Some(&tail), &["orders.*"]).unwrap();
    auth.check_subscribe(Some(&tail), &["orders.>"]).unwrap();
    forbidden_message(auth.check_subscribe(Some(&star), &["orders.>"]));
    forbidden_message(auth.check_subscribe(Some(&star), &[">"]));
}

#[test]
fn invalid_claim_patterns_and_topics_allow_nothing() {
    let auth = hs256(&[]);
    let token = sign_hs(&json!({"subscribe": ["orders.>.x", "", "orders..1", "a.b"]}));
    forbidden_message(auth.check_subscribe(Some(&token), &["orders.1.x"]));
    auth.check_subscribe(Some(&token), &["a.b"]).unwrap();
    let all = sign_hs(&json!({"subscribe": [">"], "publish": [">"]}));
    forbidden_message(auth.check_subscribe(Some(&all), &["bad..topic"]));
    forbidden_message(auth.check_publish(Some(&all), ""));
}

#[test]
fn public_topics_are_readable_without_a_token_but_not_publishable() {
    let auth = hs256(&["news.>", "status"]);
    auth.check_subscribe(None, &["news.sports", "status"])
        .unwrap();
    auth.check_subscribe(None, &["news.*"]).unwrap();
    // A stale token is not looked at when every topic is public.
    auth.check_subscribe(Some("garbage"), &["news.x"]).unwrap();
    assert_unauthorized(auth.check_publish(None, "news.sports"), "", "required");
    let reader = sign_hs(&json!({"subscribe": [">"]}));
    forbidden_message(auth.check_publish(Some(&reader), "news.sports"));
    // Mixing in a private topic needs a token for that topic only.
    assert_unauthorized(
        auth.check_subscribe(None, &["news.x", "orders.1"]),
        "",
        "required",
    );
    let orders = sign_hs(&json!({"subscribe": ["orders.*"]}));
    auth.check_subscribe(Some(&orders), &["news.x", "orders.1"])
        .unwrap();
    // `>` is not covered by the public `news.>`.
    assert_unauthorized(auth.check_subscribe(None, &["news"]), "", "required");
    assert_unauthorized(auth.check_subscribe(None, &[">"]), "", "required");
}

#[test]
fn rs256_with_a_generated_key() {
    let auth = Authorizer::new(AuthConfig::new(
        VerifyKey::from_public_key_pem(RS256_PUBLIC).unwrap(),
    ))
    .unwrap();
    let key = EncodingKey::from_rsa_pem(RS256_PRIVATE).unwrap();
    let claims = json!({"subscribe": ["orders.*"], "publish": ["orders.>"], "exp": in_an_hour()});
    let token = sign(Algorithm::RS256, &key, &claims);
    auth.check_subscribe(Some(&token), &["orders.1"]).unwrap();
    auth.check_publish(Some(&token), "orders.1.x").unwrap();
    forbidden_message(auth.check_subscribe(Some(&token), &["users.1"]));

    // Other RSA algorithms with the same key are refused.
    for alg in [Algorithm::RS384, Algorithm::PS256] {
        let token = sign(alg, &key, &claims);
        assert_unauthorized(
            auth.check_subscribe(Some(&token), &["orders.1"]),
            &token,
            "RS256",
        );
    }
    // The classic confusion: HS256 "signed" with the public key as the secret.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RS256_PUBLIC),
        &claims,
    );
    assert_unauthorized(
        auth.check_subscribe(Some(&confused), &["orders.1"]),
        &confused,
        "RS256",
    );
    // An ES256 token is refused too.
    let es = sign(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(ES256_PRIVATE).unwrap(),
        &claims,
    );
    assert_unauthorized(auth.check_subscribe(Some(&es), &["orders.1"]), &es, "RS256");
}

#[test]
fn es256_with_a_generated_key() {
    let auth = Authorizer::new(AuthConfig::new(
        VerifyKey::from_public_key_pem(ES256_PUBLIC).unwrap(),
    ))
    .unwrap();
    let key = EncodingKey::from_ec_pem(ES256_PRIVATE).unwrap();
    let claims = json!({"subscribe": ["orders.*"], "exp": in_an_hour()});
    let token = sign(Algorithm::ES256, &key, &claims);
    auth.check_subscribe(Some(&token), &["orders.1"]).unwrap();

    // Flip one character in the middle of the signature.
    let at = token.rfind('.').unwrap() + 20;
    let mut tampered = token.clone();
    let flipped = if &token[at..=at] == "A" { "B" } else { "A" };
    tampered.replace_range(at..=at, flipped);
    assert_unauthorized(
        auth.check_subscribe(Some(&tampered), &["orders.1"]),
        &tampered,
        "",
    );

    let hs = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(ES256_PUBLIC),
        &claims,
    );
    assert_unauthorized(auth.check_subscribe(Some(&hs), &["orders.1"]), &hs, "ES256");
    let rs = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RS256_PRIVATE).unwrap(),
        &claims,
    );
    assert_unauthorized(auth.check_subscribe(Some(&rs), &["orders.1"]), &rs, "ES256");
}

#[test]
fn bad_configs_are_rejected() {
    let bad_pattern = Authorizer::new(AuthConfig {
        public_topics: vec!["news.>".into(), "news.>.x".into()],
        ..AuthConfig::new(VerifyKey::Hs256(SECRET.to_vec()))
    })
    .unwrap_err();
    assert!(
        matches!(&bad_pattern, AuthConfigError::Pattern { pattern, .. } if pattern == "news.>.x"),
        "{bad_pattern:?}"
    );
    assert!(
        bad_pattern.to_string().contains("news.>.x"),
        "{bad_pattern}"
    );

    for cookie in ["", "a b", "a;b", "a=b"] {
        let e = Authorizer::new(AuthConfig {
            cookie: cookie.into(),
            ..AuthConfig::new(VerifyKey::Hs256(SECRET.to_vec()))
        })
        .unwrap_err();
        assert!(matches!(e, AuthConfigError::Cookie(_)), "{cookie:?}: {e:?}");
    }

    let e = Authorizer::new(AuthConfig::new(VerifyKey::Hs256(b"short".to_vec()))).unwrap_err();
    assert!(matches!(e, AuthConfigError::Key(_)), "{e:?}");
    let e = Authorizer::new(AuthConfig::new(VerifyKey::Es256(RS256_PUBLIC.to_vec()))).unwrap_err();
    assert!(matches!(e, AuthConfigError::Key(_)), "{e:?}");
}

#[test]
fn token_from_uses_the_configured_cookie() {
    let auth = Authorizer::new(AuthConfig {
        cookie: "jwt".into(),
        ..AuthConfig::new(VerifyKey::Hs256(SECRET.to_vec()))
    })
    .unwrap();
    let cookies: [&[u8]; 2] = [b"sse_token=wrong", b"x=1; jwt=right"];
    assert_eq!(
        auth.token_from(None, &cookies, None).as_deref(),
        Some("right")
    );
    assert_eq!(
        auth.token_from(Some(b"Bearer header"), &cookies, Some("access_token=q"))
            .as_deref(),
        Some("header")
    );
    assert_eq!(
        auth.token_from(None, &[], Some("access_token=q%2Ex"))
            .as_deref(),
        Some("q.x")
    );
    assert_eq!(auth.token_from(None, &[], None), None);
}

#[test]
fn found_token_round_trips_through_the_checks() {
    let auth = hs256(&[]);
    let token = sign_hs(&json!({"subscribe": ["orders.*"]}));
    let cookie = format!("a=1; sse_token={token}");
    let found = auth.token_from(Some(b"Basic xyz"), &[cookie.as_bytes()], None);
    auth.check_subscribe(found.as_deref(), &["orders.9"])
        .unwrap();
}

#[test]
fn debug_shows_no_secret() {
    let auth = hs256(&["news.>"]);
    let shown = format!("{auth:?}");
    assert!(
        shown.contains("HS256") && shown.contains("news.>"),
        "{shown}"
    );
    assert!(!shown.contains("test-secret"), "{shown}");
    let config = AuthConfig::new(VerifyKey::Hs256(SECRET.to_vec()));
    assert!(!format!("{config:?}").contains("test-secret"));
}

#[test]
fn authorizer_is_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Authorizer>();
}
