//! Tickets (protocol §11): a short-lived, single-use stand-in for a JWT in a URL.
//!
//! A client that holds a JWT exchanges it (in a header or the cookie, never the query) for
//! a ticket and opens `EventSource("/events…?ticket=…")`. The ticket is
//!
//! ```text
//! base64url(id ‖ not_after ‖ claims) "." base64url(HMAC-SHA256(secret, id ‖ not_after ‖ claims))
//! ```
//!
//! where `id` is 16 random bytes (128 bits, from the operating system's generator),
//! `not_after` the ticket's end in Unix milliseconds (big-endian u64: the earlier of now +
//! `auth.ticket_ttl` and the JWT's `exp`) and `claims` the JSON of the JWT claims the
//! gateway reads (`sub`, `exp`, `subscribe`). Clients treat it as opaque. Every instance
//! sharing `auth.ticket_secret` accepts it; keeping it single-use is the caller's part
//! ([`TicketClaims::id`] is what to remember until [`TicketClaims::not_after`]).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::authorizer::{Claims, unauthorized};
use crate::{AuthConfigError, Denied};

/// Query parameter that carries a ticket.
pub const TICKET_PARAM: &str = "ticket";

/// Shortest `auth.ticket_secret` accepted, in bytes.
pub const MIN_TICKET_SECRET_LEN: usize = 32;

/// Longest ticket looked at, in bytes (a token's claims fit many times over).
const MAX_TICKET_LEN: usize = 8 * 1024;

/// Bytes of a ticket's id.
const ID_LEN: usize = 16;

/// Bytes before the claims: the id and `not_after`.
const HEADER_LEN: usize = ID_LEN + 8;

/// `auth.ticket_secret` and `auth.ticket_ttl`.
#[derive(Clone)]
pub struct TicketConfig {
    /// Signs and verifies tickets (at least [`MIN_TICKET_SECRET_LEN`] bytes).
    pub secret: Vec<u8>,
    /// How long a ticket is valid after it was issued.
    pub ttl: Duration,
}

impl fmt::Debug for TicketConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketConfig")
            .field("secret", &"<redacted>")
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// A ticket just issued.
#[derive(Clone)]
pub struct Ticket {
    /// The ticket, as the client sends it back.
    pub value: String,
    /// How long it stays valid.
    pub expires_in: Duration,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("value", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// What a valid ticket says.
#[derive(Debug, Clone)]
pub struct TicketClaims {
    /// Identifies the ticket: a second use of the same id must be refused.
    pub id: [u8; ID_LEN],
    /// When it stops being valid (no use needs remembering after this).
    pub not_after: SystemTime,
    /// The claims of the JWT it was issued for.
    pub(crate) claims: Claims,
}

impl TicketClaims {
    /// The id as 32 hexadecimal digits.
    pub fn id_hex(&self) -> String {
        let mut out = String::with_capacity(ID_LEN * 2);
        for b in self.id {
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        out
    }
}

/// Issues and opens tickets.
pub(crate) struct TicketKey {
    key: hmac::Key,
    ttl: Duration,
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKey")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TicketKey {
    pub(crate) fn new(config: &TicketConfig) -> Result<Self, AuthConfigError> {
        if config.secret.len() < MIN_TICKET_SECRET_LEN {
            return Err(AuthConfigError::TicketSecret(config.secret.len()));
        }
        if config.ttl.is_zero() {
            return Err(AuthConfigError::TicketTtl);
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &config.secret),
            ttl: config.ttl,
        })
    }

    /// A ticket for `claims` (verified by the caller), valid until `now + ttl` or the
    /// claims' `exp`, whichever comes first.
    pub(crate) fn issue(&self, claims: &Claims, now: SystemTime) -> Result<Ticket, Denied> {
        let mut not_after = now + self.ttl;
        if let Some(exp) = claims.exp {
            not_after = not_after.min(UNIX_EPOCH + Duration::from_secs(exp));
        }
        let expires_in = not_after
            .duration_since(now)
            .map_err(|_| unauthorized("the token has expired"))?;
        if expires_in.is_zero() {
            return Err(unauthorized("the token has expired"));
        }
        let mut id = [0u8; ID_LEN];
        aws_lc_rs::rand::fill(&mut id)
            .map_err(|_| unauthorized("no randomness available for a ticket"))?;
        let body = serde_json::to_vec(&claims.for_ticket())
            .map_err(|_| unauthorized("the token's claims cannot be put in a ticket"))?;
        let mut payload = Vec::with_capacity(HEADER_LEN + body.len());
        payload.extend_from_slice(&id);
        payload.extend_from_slice(&unix_millis(not_after).to_be_bytes());
        payload.extend_from_slice(&body);
        let tag = hmac::sign(&self.key, &payload);
        let mut value = URL_SAFE_NO_PAD.encode(&payload);
        value.push('.');
        value.push_str(&URL_SAFE_NO_PAD.encode(tag.as_ref()));
        Ok(Ticket { value, expires_in })
    }

    /// The claims of a ticket signed with this key and still valid at `now`. Whether it
    /// was used before is not known here.
    pub(crate) fn open(&self, ticket: &str, now: SystemTime) -> Result<TicketClaims, Denied> {
        let invalid = || unauthorized("the ticket is invalid");
        if ticket.len() > MAX_TICKET_LEN {
            return Err(invalid());
        }
        let (payload, tag) = ticket.split_once('.').ok_or_else(invalid)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| invalid())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| invalid())?;
        hmac::verify(&self.key, &payload, &tag).map_err(|_| invalid())?;
        if payload.len() < HEADER_LEN {
            return Err(invalid());
        }
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&payload[..ID_LEN]);
        let mut millis = [0u8; 8];
        millis.copy_from_slice(&payload[ID_LEN..HEADER_LEN]);
        let not_after = UNIX_EPOCH + Duration::from_millis(u64::from_be_bytes(millis));
        if now >= not_after {
            return Err(unauthorized("the ticket has expired"));
        }
        let claims: Claims =
            serde_json::from_slice(&payload[HEADER_LEN..]).map_err(|_| invalid())?;
        Ok(TicketClaims {
            id,
            not_after,
            claims,
        })
    }
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ttl: Duration) -> TicketKey {
        TicketKey::new(&TicketConfig {
            secret: b"a-ticket-secret-of-32-bytes-or-more".to_vec(),
            ttl,
        })
        .unwrap()
    }

    fn claims(exp: Option<u64>) -> Claims {
        Claims {
            sub: Some("u1".into()),
            exp,
            subscribe: Some(vec!["orders.*".into()]),
            publish: Some(vec!["orders.>".into()]),
        }
    }

    #[test]
    fn a_ticket_carries_the_claims_and_a_fresh_id() {
        let key = key(Duration::from_secs(30));
        let now = SystemTime::now();
        let a = key.issue(&claims(None), now).unwrap();
        let b = key.issue(&claims(None), now).unwrap();
        assert_eq!(a.expires_in, Duration::from_secs(30));
        let opened = key.open(&a.value, now).unwrap();
        assert_eq!(opened.claims.sub.as_deref(), Some("u1"));
        assert_eq!(opened.claims.subscribe, Some(vec!["orders.*".to_string()]));
        // Only what subscribing needs travels.
        assert_eq!(opened.claims.publish, None);
        assert_ne!(opened.id, key.open(&b.value, now).unwrap().id);
        assert_eq!(opened.id_hex().len(), 32);
    }

    #[test]
    fn a_ticket_ends_with_its_ttl_or_the_tokens_exp() {
        let key = key(Duration::from_secs(30));
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t = key.issue(&claims(None), now).unwrap();
        assert!(key.open(&t.value, now + Duration::from_secs(29)).is_ok());
        assert!(key.open(&t.value, now + Duration::from_secs(30)).is_err());
        let soon = key.issue(&claims(Some(1_000_010)), now).unwrap();
        assert_eq!(soon.expires_in, Duration::from_secs(10));
        assert!(
            key.open(&soon.value, now + Duration::from_secs(10))
                .is_err()
        );
        assert!(key.issue(&claims(Some(999_999)), now).is_err());
    }

    #[test]
    fn a_forged_or_garbled_ticket_is_refused() {
        let key = key(Duration::from_secs(30));
        let other = TicketKey::new(&TicketConfig {
            secret: b"another-secret-of-32-bytes-or-more!".to_vec(),
            ttl: Duration::from_secs(30),
        })
        .unwrap();
        let now = SystemTime::now();
        let t = key.issue(&claims(None), now).unwrap();
        assert!(other.open(&t.value, now).is_err());
        let (payload, tag) = t.value.split_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
        bytes[HEADER_LEN + 2] ^= 1;
        let tampered = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(&bytes));
        assert!(key.open(&tampered, now).is_err());
        for garbage in ["", ".", "abc", "a.b", &"x".repeat(MAX_TICKET_LEN + 1)] {
            assert!(key.open(garbage, now).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn short_secrets_and_zero_ttl_are_config_errors() {
        assert!(
            TicketKey::new(&TicketConfig {
                secret: vec![1; 31],
                ttl: Duration::from_secs(1)
            })
            .is_err()
        );
        assert!(
            TicketKey::new(&TicketConfig {
                secret: vec![1; 32],
                ttl: Duration::ZERO
            })
            .is_err()
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_tickets_never_panic(s in "\\PC{0,200}") {
            let _ = key(Duration::from_secs(30)).open(&s, SystemTime::now());
        }
    }
}
