//! JWT authorization for sse-gateway (protocol §6 "Auth"): may this request read these topics,
//! or publish to that one?
//!
//! The gateway builds one [`Authorizer`] from its `[auth]` section and, per request,
//!
//! 1. finds the token with [`Authorizer::token_from`]: the `Authorization: Bearer` header,
//!    else the cookie `auth.cookie` (default `sse_token`), else `?access_token=`;
//! 2. asks [`Authorizer::check_subscribe`] (for `GET /events`) or
//!    [`Authorizer::check_publish`] (for `POST /publish/{topic}`);
//!    A `?ticket=` (protocol §11) is opened with [`Authorizer::open_ticket`] and checked
//!    with [`Authorizer::check_subscribe_ticket`]; tickets are issued by
//!    [`Authorizer::issue_ticket`] (see the `ticket` module for their form);
//! 3. maps a refusal to its status: [`Denied::Unauthorized`] is 401, [`Denied::Forbidden`]
//!    is 403. The crate knows no HTTP; it only decides.
//!
//! ## Verification
//!
//! Exactly one algorithm is accepted, the one of the configured [`VerifyKey`]: HS256 with
//! a shared secret, or RS256 / ES256 with a PEM public key. A token naming any other
//! algorithm — `none`, HS256 when RS256 is configured, RS384, … — is 401 before any
//! signature is looked at. `exp` is honoured when present (tokens without it are
//! accepted), as is `nbf`, both with [`LEEWAY_SECS`] of clock skew. `aud`, `iss` and `sub`
//! are not checked.
//!
//! ## Claims
//!
//! ```json
//! {"subscribe": ["orders.*", "users.42"], "publish": ["orders.>"], "exp": 1767225600}
//! ```
//!
//! Both lists are optional; a missing one allows nothing. Their entries are topic patterns
//! with the wildcards of protocol §2: `*` is exactly one token, a last `>` one or more. A
//! requested topic may itself be a wildcard subscription; it is allowed only when one
//! claim pattern matches every subject it can match: `orders.*` is covered by `orders.*`,
//! `orders.>` or `>`; `orders.>` by `orders.>` or `>` but not by `orders.*`. A request for
//! several topics needs every one allowed. Entries that are not valid patterns allow
//! nothing.
//!
//! `auth.public_topics` are patterns anyone may read without a token — never publish to.
//!
//! ## Secrets
//!
//! Tokens never appear in a [`Denied`] message, and the `Debug` output of [`VerifyKey`],
//! [`AuthConfig`] and [`Authorizer`] never shows the HS256 secret.
//!
//! ```
//! use jsonwebtoken::{EncodingKey, Header, encode};
//! use sse_auth::{AuthConfig, Authorizer, Denied, VerifyKey};
//!
//! let secret = b"an-hs256-secret-of-at-least-32-bytes".to_vec();
//! let auth = Authorizer::new(AuthConfig {
//!     public_topics: vec!["news.>".into()],
//!     ..AuthConfig::new(VerifyKey::Hs256(secret.clone()))
//! })?;
//!
//! // A publishing service issues a token (normally elsewhere, with an `exp`).
//! let claims = serde_json::json!({"subscribe": ["orders.*"], "publish": ["orders.>"]});
//! let token = encode(&Header::default(), &claims, &EncodingKey::from_secret(&secret))?;
//!
//! // A browser sends it as a cookie next to another one.
//! let cookie = format!("theme=dark; sse_token={token}");
//! let found = auth.token_from(None, &[cookie.as_bytes()], Some("topic=orders.42"));
//! assert_eq!(found.as_deref(), Some(token.as_str()));
//!
//! auth.check_subscribe(found.as_deref(), &["orders.42", "news.today"])?;
//! auth.check_subscribe(found.as_deref(), &["orders.*"])?; // a covered wildcard
//! auth.check_publish(found.as_deref(), "orders.42.shipped")?;
//!
//! // Public topics need no token, but cannot be published to without one.
//! auth.check_subscribe(None, &["news.today"])?;
//! assert!(matches!(auth.check_publish(None, "news.today"), Err(Denied::Unauthorized(_))));
//! // A valid token that does not cover a topic is 403, naming the topic.
//! let denied = auth.check_subscribe(found.as_deref(), &["orders.>"]).unwrap_err();
//! assert_eq!(
//!     denied,
//!     Denied::Forbidden(r#"the token does not allow subscribing to topic "orders.>""#.into())
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod authorizer;
mod key;
mod ticket;
mod token;

pub use authorizer::{
    AuthConfig, Authorizer, DEFAULT_COOKIE, Denied, Grant, LEEWAY_SECS, MAX_TOKEN_LEN,
};
pub use key::{MIN_HS256_SECRET_LEN, VerifyKey};
pub use ticket::{MIN_TICKET_SECRET_LEN, TICKET_PARAM, Ticket, TicketClaims, TicketConfig};
pub use token::{QUERY_PARAM, TokenSource, strip_from_query};

/// Why an [`AuthConfig`] cannot be used. Messages never contain key material.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    /// The key is unusable: unreadable PEM, a private key or certificate, an RSA key
    /// outside 2048–8192 bits, an EC key not on P-256, an HS256 secret shorter than
    /// [`MIN_HS256_SECRET_LEN`] bytes, or a key of the other type than its variant says.
    #[error("auth key: {0}")]
    Key(String),
    /// An `auth.public_topics` entry is not a topic pattern.
    #[error("auth.public_topics: {pattern:?} is not a valid topic pattern: {reason}")]
    Pattern {
        /// The rejected entry.
        pattern: String,
        /// What is wrong with it.
        reason: sse_topic::TopicError,
    },
    /// `auth.cookie` is empty or holds characters a cookie name cannot have.
    #[error("auth.cookie: {0:?} is not a valid cookie name")]
    Cookie(String),
    /// `auth.ticket_secret` is shorter than [`MIN_TICKET_SECRET_LEN`] bytes.
    #[error("auth.ticket_secret: must be at least {MIN_TICKET_SECRET_LEN} bytes, got {0} bytes")]
    TicketSecret(usize),
    /// `auth.ticket_ttl` is zero.
    #[error("auth.ticket_ttl: must be more than zero")]
    TicketTtl,
}
