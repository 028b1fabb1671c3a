//! Tickets (protocol §11): `POST /tickets` exchanges a JWT for a short-lived, single-use
//! ticket, and `GET /events…?ticket=` redeems one instead of a token.
//!
//! The JWT must come in `Authorization: Bearer` or the auth cookie — never the query
//! (the point is to keep JWTs out of URLs). A cookie-only request from another site is
//! refused as for publishing (`403 cross_site`). The answer is `201
//! {"ticket":"…","expires_in":<whole seconds>}` with `Cache-Control: no-store`.
//!
//! Single use: each instance remembers the ids it redeemed until they expire; with
//! `[jetstream] enabled` a redemption is also recorded in the JetStream key-value bucket
//! `<jetstream.stream>_TICKETS` (create-if-absent on the id), so a ticket is good once
//! across all instances. When that bucket cannot be reached the ticket is not used up
//! and the request is `503` (retry). Tickets and tokens are never logged.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use pingora::proxy::Session;
use sse_auth::{Authorizer, Denied, Grant, TICKET_PARAM, TicketClaims, TokenSource};
use sse_bus::TicketLedger;

use crate::admission::Refusal;
use crate::edge::{self, ApiError, Cors, RequestView, Response};
use crate::live::Live;

/// The path of the ticket exchange.
pub const TICKETS_PATH: &str = "/tickets";

/// Issues and redeems tickets.
#[derive(Debug)]
pub struct Tickets {
    auth: Live<Authorizer>,
    /// Ids redeemed on this instance, until their ticket expires.
    spent: Mutex<Spent>,
    /// Redemptions shared with the other instances (JetStream).
    ledger: Option<TicketLedger>,
    /// `Retry-After` of a 503.
    retry_after_secs: u64,
}

#[derive(Debug, Default)]
struct Spent {
    ids: HashMap<[u8; 16], SystemTime>,
    /// Expired ids are forgotten when the set reaches this size.
    sweep_at: usize,
}

/// Below this many remembered ids nothing is swept.
const MIN_SWEEP: usize = 1024;

impl Tickets {
    /// Tickets of `auth` (which has `auth.ticket_secret`), shared through `ledger` when
    /// given.
    pub fn new(
        auth: Live<Authorizer>,
        ledger: Option<TicketLedger>,
        retry_after_secs: u64,
    ) -> Self {
        Self {
            auth,
            spent: Mutex::new(Spent {
                ids: HashMap::new(),
                sweep_at: MIN_SWEEP,
            }),
            ledger,
            retry_after_secs,
        }
    }

    /// Redeems `ticket` for a stream of `topics`: valid, never used before (here or, with
    /// the shared bucket, anywhere), and allowing every topic.
    pub async fn redeem(&self, ticket: &str, topics: &[&str]) -> Result<Grant, Refusal> {
        let claims = self
            .auth
            .current()
            .open_ticket(ticket)
            .map_err(Refusal::denied)?;
        if !self.spend_here(&claims) {
            return Err(Refusal::denied(used()));
        }
        if let Some(ledger) = &self.ledger {
            match ledger.redeem(&claims.id_hex()).await {
                Ok(true) => {}
                Ok(false) => return Err(Refusal::denied(used())),
                Err(e) => {
                    self.unspend_here(&claims);
                    tracing::warn!(error = %e, "cannot check a ticket against the shared bucket");
                    return Err(Refusal::unavailable(ApiError::unavailable(
                        "tickets cannot be checked right now",
                        self.retry_after_secs,
                    )));
                }
            }
        }
        self.auth
            .current()
            .check_subscribe_ticket(&claims, topics)
            .map_err(Refusal::denied)
    }

    /// Records the ticket as used on this instance; false when it already was.
    fn spend_here(&self, claims: &TicketClaims) -> bool {
        let mut spent = self.spent.lock().unwrap_or_else(PoisonError::into_inner);
        if spent.ids.len() >= spent.sweep_at {
            let now = SystemTime::now();
            spent.ids.retain(|_, not_after| *not_after > now);
            spent.sweep_at = (spent.ids.len() * 2).max(MIN_SWEEP);
        }
        match spent.ids.entry(claims.id) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(claims.not_after);
                true
            }
        }
    }

    fn unspend_here(&self, claims: &TicketClaims) {
        self.spent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ids
            .remove(&claims.id);
    }

    /// Answers `POST /tickets`.
    pub async fn handle(&self, cors: &Cors, session: &mut Session) -> pingora::Result<bool> {
        let req = session.req_header();
        let headers = edge::cors_headers(cors, req);
        let answer = match self.issue(cors, req) {
            Ok(answer) => answer,
            Err(error) => Response::error(&error),
        };
        // A body is neither expected nor read: the connection is not worth draining.
        if req.header("content-length").is_some_and(|v| v != b"0")
            || req.header("transfer-encoding").is_some()
        {
            session.set_keepalive(None);
        }
        answer.with_headers(headers).send(session).await?;
        Ok(true)
    }

    fn issue(&self, cors: &Cors, req: &pingora::http::RequestHeader) -> Result<Response, ApiError> {
        if req.method.as_str() != "POST" {
            return Err(ApiError::method_not_allowed(req.method.as_str(), "POST"));
        }
        let cookies: Vec<&[u8]> = req
            .headers
            .get_all("cookie")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let authorization = req.headers.get("authorization").map(|v| v.as_bytes());
        // Never the query: a JWT in a URL is what tickets replace.
        let found = self
            .auth
            .current()
            .token_with_source(authorization, &cookies, None);
        if found
            .as_ref()
            .is_some_and(|(_, source)| *source == TokenSource::Cookie)
            && edge::is_cross_site(cors, req)
        {
            return Err(ApiError::cross_site());
        }
        let token = found.map(|(token, _)| token);
        let ticket = self
            .auth
            .current()
            .issue_ticket(token.as_deref())
            .map_err(|d| ApiError::denied(&d))?;
        Ok(Response::json(
            201,
            &serde_json::json!({
                "ticket": ticket.value,
                "expires_in": ticket.expires_in.as_secs(),
            }),
        )
        .with_header("Cache-Control", "no-store"))
    }
}

fn used() -> Denied {
    // The same words as any other bad ticket: nothing to learn from probing.
    Denied::Unauthorized("the ticket is invalid or was already used".into())
}

/// The ticket of a stream request's query (`?ticket=`), percent-decoded.
pub fn ticket_from(query: Option<&str>) -> Option<Cow<'_, str>> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, value)| key == TICKET_PARAM && !value.is_empty())
        .map(|(_, value)| value)
}
