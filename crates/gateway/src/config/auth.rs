//! `[auth]`: JWT verification keys, the cookie, public topics.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sse_auth::{AuthConfig, Authorizer, TicketConfig, VerifyKey};

use super::{ConfigError, invalid};

/// `[auth]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// Require tokens (except for public topics).
    pub enabled: bool,
    /// HS256 shared secret (at least 32 bytes).
    pub hs256_secret: Option<String>,
    /// PEM public key for RS256 or ES256.
    pub public_key_file: Option<String>,
    /// Cookie holding the token.
    pub cookie: String,
    /// Topic patterns anyone may read.
    pub public_topics: Vec<String>,
    /// Signs tickets (`POST /tickets`, `?ticket=`); tickets are off without it.
    pub ticket_secret: Option<String>,
    /// How long a ticket is valid.
    #[serde(with = "humantime_serde")]
    pub ticket_ttl: Duration,
}

/// `auth.ticket_ttl` when not set.
pub const DEFAULT_TICKET_TTL: Duration = Duration::from_secs(30);

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            enabled: false,
            hs256_secret: None,
            public_key_file: None,
            cookie: sse_auth::DEFAULT_COOKIE.to_owned(),
            public_topics: Vec::new(),
            ticket_secret: None,
            ticket_ttl: DEFAULT_TICKET_TTL,
        }
    }
}

/// `[auth]`, validated, when auth is on: the key read from its file, and everything the
/// authorizer checks (the secret's length, the cookie name, the public topic patterns)
/// checked by building one, so a bad value is a configuration error naming its key. The
/// edge builds its own from the same settings.
pub(super) fn validate(auth: RawAuth) -> Result<Option<AuthConfig>, ConfigError> {
    if !auth.enabled {
        return Ok(None);
    }
    let key = match (&auth.hs256_secret, &auth.public_key_file) {
        (Some(secret), None) => VerifyKey::Hs256(secret.clone().into_bytes()),
        (None, Some(path)) => {
            let pem = std::fs::read(path).map_err(|e| {
                invalid("auth.public_key_file", format!("cannot read {path:?}: {e}"))
            })?;
            VerifyKey::from_public_key_pem(&pem)
                .map_err(|e| invalid("auth.public_key_file", e.to_string()))?
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                "auth.hs256_secret",
                "set either auth.hs256_secret or auth.public_key_file, not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "auth.enabled",
                "needs auth.hs256_secret or auth.public_key_file",
            ));
        }
    };
    if auth.ticket_ttl.is_zero() {
        return Err(invalid("auth.ticket_ttl", "must be longer than 0"));
    }
    let tickets = auth.ticket_secret.map(|secret| TicketConfig {
        secret: secret.into_bytes(),
        ttl: auth.ticket_ttl,
    });
    let config = AuthConfig {
        key,
        cookie: auth.cookie,
        public_topics: auth.public_topics,
        tickets,
    };
    Authorizer::new(config.clone()).map_err(|e| invalid("auth", e.to_string()))?;
    Ok(Some(config))
}
