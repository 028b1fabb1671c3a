//! The [`Authorizer`]: verifies tokens and checks their topic claims.

use std::borrow::Cow;
use std::fmt;
use std::time::SystemTime;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::ticket::{Ticket, TicketClaims, TicketConfig, TicketKey};
use crate::token::TokenSource;
use sse_topic::{TopicName, covers};

use crate::{AuthConfigError, VerifyKey, token};

/// Default name of the cookie that may carry the token (`auth.cookie`).
pub const DEFAULT_COOKIE: &str = "sse_token";

/// Clock skew allowed when checking `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 5;

/// Longest token accepted, in bytes; longer ones are 401 without being parsed.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// What the gateway's `[auth]` section says, already read from its files.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// How tokens are verified.
    pub key: VerifyKey,
    /// Name of the cookie that may carry the token (default [`DEFAULT_COOKIE`]).
    pub cookie: String,
    /// Topic patterns anyone may read without a token (never publish to).
    pub public_topics: Vec<String>,
    /// Tickets (`auth.ticket_secret`, `auth.ticket_ttl`); off when `None`.
    pub tickets: Option<TicketConfig>,
}

impl AuthConfig {
    /// A configuration with the default cookie name, no public topics and no tickets.
    pub fn new(key: VerifyKey) -> Self {
        Self {
            key,
            cookie: DEFAULT_COOKIE.to_owned(),
            public_topics: Vec::new(),
            tickets: None,
        }
    }
}

/// Why a request is refused. The message names the problem (and, for
/// [`Denied::Forbidden`], the topic) but never contains the token.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// HTTP 401: a token is needed and missing, or it is malformed, badly signed, expired,
    /// not yet valid, or signed with another algorithm than the configured one.
    #[error("{0}")]
    Unauthorized(String),
    /// HTTP 403: a valid token whose claims do not cover a requested topic.
    #[error("{0}")]
    Forbidden(String),
}

impl Denied {
    /// The human-readable message (the same text as `Display`).
    pub fn message(&self) -> &str {
        match self {
            Denied::Unauthorized(m) | Denied::Forbidden(m) => m,
        }
    }
}

/// The claims this gateway reads; anything else in the token is ignored.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub(crate) struct Claims {
    /// Who the token is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Unix seconds after which the token is not valid. `jsonwebtoken` checks its form
    /// (a number); read leniently here so that its error, naming `exp`, is the one given.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date"
    )]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
}

impl Claims {
    /// What a ticket carries: what subscribing needs, not the right to publish.
    pub(crate) fn for_ticket(&self) -> Self {
        Self {
            publish: None,
            ..self.clone()
        }
    }
}

/// A JWT NumericDate as whole seconds (fractions dropped); anything else as none.
fn numeric_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(match value {
        serde_json::Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        _ => None,
    })
}

/// Who a subscription was allowed for, and until when.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// The token's `sub`, when a token was looked at and had one.
    pub sub: Option<String>,
    /// The token's `exp` (Unix seconds): the stream ends then (protocol §11).
    pub exp: Option<u64>,
}

/// Verifies tokens and decides, per request, which topics they open. Build it once at
/// start-up and share it; every check is synchronous and allocation-light.
pub struct Authorizer {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
    cookie: String,
    public_topics: Vec<String>,
    tickets: Option<TicketKey>,
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorizer")
            .field("algorithm", &self.algorithm)
            .field("cookie", &self.cookie)
            .field("public_topics", &self.public_topics)
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    /// Checks the key (see [`VerifyKey`]), the cookie name and every public topic pattern.
    pub fn new(config: AuthConfig) -> Result<Self, AuthConfigError> {
        install_crypto_provider();
        let AuthConfig {
            key,
            cookie,
            public_topics,
            tickets,
        } = config;
        let tickets = tickets.as_ref().map(TicketKey::new).transpose()?;
        let algorithm = key.algorithm();
        let decoding_key = key.decoding_key()?;
        if cookie.is_empty()
            || !cookie
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
        {
            return Err(AuthConfigError::Cookie(cookie));
        }
        for pattern in &public_topics {
            if let Err(reason) = TopicName::parse(pattern, true) {
                return Err(AuthConfigError::Pattern {
                    pattern: pattern.clone(),
                    reason,
                });
            }
        }

        let mut validation = Validation::new(algorithm);
        validation.required_spec_claims.clear();
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;

        Ok(Self {
            algorithm,
            key: decoding_key,
            validation,
            cookie,
            public_topics,
            tickets,
        })
    }

    /// Finds the token of a request: the `Authorization: Bearer <t>` header first, then the
    /// configured cookie in the `Cookie` header(s), then `access_token` in the raw query
    /// string (percent-decoded). Empty values count as absent. `None` when there is none.
    ///
    /// The token is only found here, not checked: pass it to
    /// [`check_subscribe`](Self::check_subscribe) or [`check_publish`](Self::check_publish).
    pub fn token_from<'a>(
        &self,
        authorization: Option<&'a [u8]>,
        cookies: &[&'a [u8]],
        query: Option<&'a str>,
    ) -> Option<Cow<'a, str>> {
        token::find(&self.cookie, authorization, cookies, query)
    }

    /// [`Authorizer::token_from`], telling where the token was (a cookie is sent by the
    /// browser on its own, also on requests other sites make).
    pub fn token_with_source<'a>(
        &self,
        authorization: Option<&'a [u8]>,
        cookies: &[&'a [u8]],
        query: Option<&'a str>,
    ) -> Option<(Cow<'a, str>, TokenSource)> {
        token::find_with_source(&self.cookie, authorization, cookies, query)
    }

    /// May a client read all of `topics`?
    ///
    /// Topics covered by a public pattern need no token; when every topic is public the
    /// token is not even looked at (a stale cookie does not lock anyone out of public
    /// topics). Otherwise the token must be valid ([`Denied::Unauthorized`]) and its
    /// `subscribe` claim must cover every other topic ([`Denied::Forbidden`] naming the
    /// first that is not). A wildcard topic is covered only by patterns that match
    /// everything it can match. An empty `topics` is allowed.
    ///
    /// The [`Grant`] names the token's `sub` and `exp` when a token was needed.
    pub fn check_subscribe(&self, token: Option<&str>, topics: &[&str]) -> Result<Grant, Denied> {
        if topics.iter().all(|topic| self.is_public(topic)) {
            return Ok(Grant::default());
        }
        let claims = self.verify(token)?;
        self.check_claims(&claims, topics)
    }

    /// [`Authorizer::check_subscribe`] for a ticket whose claims were opened with
    /// [`Authorizer::open_ticket`] (and whose single use the caller made sure of).
    pub fn check_subscribe_ticket(
        &self,
        ticket: &TicketClaims,
        topics: &[&str],
    ) -> Result<Grant, Denied> {
        self.check_claims(&ticket.claims, topics)
    }

    fn check_claims(&self, claims: &Claims, topics: &[&str]) -> Result<Grant, Denied> {
        let allowed = claims.subscribe.as_deref().unwrap_or_default();
        match topics
            .iter()
            .find(|topic| !self.is_public(topic) && !allows(allowed, topic))
        {
            None => Ok(Grant {
                sub: claims.sub.clone(),
                exp: claims.exp,
            }),
            Some(topic) => Err(Denied::Forbidden(format!(
                "the token does not allow subscribing to topic {topic:?}"
            ))),
        }
    }

    /// The `sub` of a valid token (`None` when it has none); 401 when the token is
    /// missing or not valid.
    pub fn subject(&self, token: Option<&str>) -> Result<Option<String>, Denied> {
        Ok(self.verify(token)?.sub)
    }

    /// Whether tickets are on (`auth.ticket_secret` is set).
    pub fn tickets_enabled(&self) -> bool {
        self.tickets.is_some()
    }

    /// A ticket standing for `token` (which must be valid): its claims and `exp`, valid
    /// for `auth.ticket_ttl` at most.
    pub fn issue_ticket(&self, token: Option<&str>) -> Result<Ticket, Denied> {
        let key = self
            .tickets
            .as_ref()
            .ok_or_else(|| unauthorized("tickets are not enabled (auth.ticket_secret)"))?;
        let claims = self.verify(token)?;
        key.issue(&claims, SystemTime::now())
    }

    /// The claims of a ticket this gateway (or one sharing its secret) issued, while it
    /// is valid. Single use is the caller's part: remember [`TicketClaims::id`].
    pub fn open_ticket(&self, ticket: &str) -> Result<TicketClaims, Denied> {
        let key = self
            .tickets
            .as_ref()
            .ok_or_else(|| unauthorized("tickets are not enabled (auth.ticket_secret)"))?;
        key.open(ticket, SystemTime::now())
    }

    /// May a client publish to `topic`? Always needs a valid token whose `publish` claim
    /// covers the topic; public topics are read-only.
    pub fn check_publish(&self, token: Option<&str>, topic: &str) -> Result<(), Denied> {
        let claims = self.verify(token)?;
        if allows(&claims.publish.unwrap_or_default(), topic) {
            Ok(())
        } else {
            Err(Denied::Forbidden(format!(
                "the token does not allow publishing to topic {topic:?}"
            )))
        }
    }

    /// Whether anyone may read `topic` without a token.
    fn is_public(&self, topic: &str) -> bool {
        allows(&self.public_topics, topic)
    }

    /// Verifies the signature, the algorithm and the time claims; returns the claims.
    fn verify(&self, token: Option<&str>) -> Result<Claims, Denied> {
        let token = match token {
            None | Some("") => return Err(unauthorized("a token is required")),
            Some(t) if t.len() > MAX_TOKEN_LEN => {
                return Err(unauthorized("the token is too long"));
            }
            Some(t) => t,
        };
        // Check the header first: it tells an unaccepted algorithm apart from garbage.
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            unauthorized("the token is malformed or names an unsupported algorithm")
        })?;
        if header.alg != self.algorithm {
            return Err(self.wrong_algorithm());
        }
        match jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                ErrorKind::InvalidSignature => unauthorized("the token signature is invalid"),
                ErrorKind::ExpiredSignature => unauthorized("the token has expired"),
                ErrorKind::ImmatureSignature => {
                    unauthorized("the token is not valid yet (nbf is in the future)")
                }
                ErrorKind::InvalidAlgorithm => self.wrong_algorithm(),
                ErrorKind::InvalidClaimFormat(claim) => {
                    unauthorized(format!("the token claim {claim:?} is malformed"))
                }
                ErrorKind::Json(_) => unauthorized(
                    "the token claims are malformed (subscribe and publish must be lists of topic patterns)",
                ),
                _ => unauthorized("the token is malformed"),
            }),
        }
    }

    fn wrong_algorithm(&self) -> Denied {
        unauthorized(format!(
            "the token is not signed with {:?}, the only algorithm accepted",
            self.algorithm
        ))
    }
}

pub(crate) fn unauthorized(message: impl Into<String>) -> Denied {
    Denied::Unauthorized(message.into())
}

/// Whether `s` is a topic pattern (a topic, wildcards allowed).
fn is_pattern(s: &str) -> bool {
    TopicName::parse(s, true).is_ok()
}

/// Whether some valid pattern of `patterns` covers the valid topic `topic`. Invalid claim
/// patterns allow nothing; an invalid topic is allowed by nothing.
fn allows(patterns: &[String], topic: &str) -> bool {
    is_pattern(topic) && patterns.iter().any(|p| is_pattern(p) && covers(p, topic))
}

/// `jsonwebtoken` cannot pick a crypto backend by itself when both of its backend
/// features end up enabled in the build; name ours so verification never panics. A
/// provider installed earlier by someone else is kept.
fn install_crypto_provider() {
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
}

#[cfg(test)]
mod tests;
