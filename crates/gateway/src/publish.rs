//! `POST /publish/{topic}`: body = event data (UTF-8), optional `?event=<type>`; answers
//! `202 {"id": "<event id>"}` — the id this gateway's clients see for the event.
//!
//! Size: a body over `limits.max_publish_bytes` is `413 payload_too_large` (checked on
//! `Content-Length` before anything is read, and again while reading); by default the
//! limit is 1 MiB less [`HEADER_ROOM`], and never more than the NATS server's
//! `max_payload` less that room, so a body that can never fit is never a retryable 503.
//!
//! Traces (`[tracing]` on): each request is a `publish` span, continuing the request's
//! `traceparent` when it has one (else a new trace, sampled at `tracing.sampling_ratio`);
//! the NATS message carries the span's context in its own `traceparent`, so the
//! `ingest` span of every gateway that receives it continues the same trace.
//!
//! Cross-site requests: a token taken from the auth cookie is honoured only for requests
//! from this gateway's own origin or an origin listed in `cors.allowed_origins` with
//! `cors.allow_credentials = true`; a browser attaches cookies to requests any site makes
//! (a form POST needs no preflight), so anything else is `403` (send the token in
//! `Authorization` instead).

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use percent_encoding::percent_decode_str;
use pingora::proxy::Session;
use sse_auth::Authorizer;
use sse_bus::{PublishError, Publisher};
use sse_hub::Hub;
use sse_topic::TopicName;
use sse_trace::{Kind, Span, SpanContext, TRACEPARENT, Tracer};

use crate::edge::{self, ApiError, Cors, RequestView, Response};
use crate::live::Live;
use crate::metrics::{Metrics, Outcome};

/// The publish API: where a body goes, how large it may be, who may send it.
#[derive(Debug)]
pub struct Publishing {
    /// The way out (NATS, or the hub in embedded mode).
    publisher: Publisher,
    /// Checks that a framed event fits the byte budgets.
    hub: Hub,
    /// `limits.max_publish_bytes`, or the default (a reload may change it).
    max_publish_bytes: AtomicUsize,
    /// Who may publish where, when `[auth]` is on.
    auth: Option<Live<Authorizer>>,
    /// `Retry-After` of a 503.
    retry_after_secs: u64,
    metrics: Metrics,
    /// Tracing on: each request is a `publish` span.
    tracer: Option<Tracer>,
}

impl Publishing {
    /// Publishing through `publisher`; bodies up to `max_publish_bytes` (`None`: the
    /// default), checked against `hub`'s budgets; requests traced with `tracer`.
    pub fn new(
        publisher: Publisher,
        hub: Hub,
        max_publish_bytes: Option<usize>,
        auth: Option<Live<Authorizer>>,
        retry_after_secs: u64,
        metrics: Metrics,
        tracer: Option<Tracer>,
    ) -> Self {
        Self {
            publisher,
            hub,
            max_publish_bytes: AtomicUsize::new(max_publish_bytes.unwrap_or(DEFAULT_MAX_BODY)),
            auth,
            retry_after_secs,
            metrics,
            tracer,
        }
    }

    /// Bodies up to `max_publish_bytes` (`None`: the default) from now on.
    pub fn set_max_publish_bytes(&self, max_publish_bytes: Option<usize>) {
        self.max_publish_bytes.store(
            max_publish_bytes.unwrap_or(DEFAULT_MAX_BODY),
            Ordering::Relaxed,
        );
    }

    /// The largest body accepted now: the configured limit (or the default), never more
    /// than the bus can carry.
    pub fn max_body(&self) -> usize {
        let bus = self
            .publisher
            .max_payload()
            .map(|max| max.saturating_sub(HEADER_ROOM));
        let configured = self.max_publish_bytes.load(Ordering::Relaxed);
        bus.map_or(configured, |bus| configured.min(bus))
    }
}

/// The path prefix of the publish API.
pub const PUBLISH_PATH: &str = "/publish/";

/// Room kept for the headers of the NATS message carrying a body (`Sse-Event` with a
/// 256-byte type, `Sse-Publish-Id`, a trace context, the header preamble).
pub const HEADER_ROOM: usize = 1024;

/// The default `limits.max_publish_bytes`: 1 MiB less [`HEADER_ROOM`].
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024 - HEADER_ROOM;

/// Whether `path` is the publish API's.
pub fn is_publish_path(path: &str) -> bool {
    path.starts_with(PUBLISH_PATH) || path == "/publish"
}

/// What a valid publish request asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct PublishRequest {
    /// Where.
    pub topic: TopicName,
    /// `?event=`.
    pub event: Option<String>,
}

/// Validates the path and query of a publish request.
pub fn parse(path: &str, query: Option<&str>) -> Result<PublishRequest, ApiError> {
    let raw = path.strip_prefix(PUBLISH_PATH).unwrap_or_default();
    let topic = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("bad_topic", "the topic is not UTF-8 once decoded"))?;
    if topic.is_empty() {
        return Err(ApiError::bad_request(
            "missing_topic",
            "no topic given: POST /publish/{topic}",
        ));
    }
    let topic = TopicName::parse(&topic, false)
        .map_err(|e| ApiError::bad_request("bad_topic", format!("invalid topic {topic:?}: {e}")))?;
    let mut event = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if key == "event" {
            sse_topic::check_publisher_event_type(&value)
                .map_err(|e| ApiError::bad_request("bad_event", e.to_string()))?;
            event = Some(value.into_owned());
        }
    }
    Ok(PublishRequest { topic, event })
}

/// Serves a publish request; always answers.
pub async fn handle(
    publishing: &Publishing,
    cors: &Cors,
    session: &mut Session,
) -> pingora::Result<bool> {
    let headers = edge::cors_headers(cors, session.req_header());
    let mut span = publishing
        .tracer
        .as_ref()
        .map(|tracer| publish_span(tracer, session.req_header()));
    let answer = match publish(publishing, cors, session, span.as_mut()).await {
        Ok(id) => {
            if let Some(span) = span.as_mut().filter(|s| s.is_recording()) {
                span.set("sse.event_id", id.clone());
                span.set("http.response.status_code", 202u32);
            }
            Response::json(202, &serde_json::json!({ "id": id }))
        }
        Err(error) => {
            if matches!(error.status, 401 | 403) {
                publishing.metrics.count(Outcome::Unauthorized);
            }
            if let Some(span) = span.as_mut().filter(|s| s.is_recording()) {
                span.set("http.response.status_code", u32::from(error.status));
                span.set_error(error.code);
            }
            // The body may be unread: the connection is not worth draining.
            session.set_keepalive(None);
            Response::error(&error)
        }
    };
    answer.with_headers(headers).send(session).await?;
    Ok(true)
}

/// The `publish` span of a request: under its `traceparent` when it has a valid one.
fn publish_span(tracer: &Tracer, req: &pingora::http::RequestHeader) -> Span {
    let parent = req
        .headers
        .get(TRACEPARENT)
        .and_then(|v| SpanContext::from_traceparent(v.as_bytes()).ok());
    let mut span = tracer.start("publish", Kind::Server, parent.as_ref());
    span.set("http.request.method", "POST");
    span
}

async fn publish(
    publishing: &Publishing,
    cors: &Cors,
    session: &mut Session,
    mut span: Option<&mut Span>,
) -> Result<String, ApiError> {
    let req = session.req_header();
    if req.method() != "POST" {
        return Err(ApiError::method_not_allowed(req.method(), "POST"));
    }
    let request = parse(req.path(), req.query())?;
    if let Some(span) = span.as_mut().filter(|s| s.is_recording()) {
        span.set("sse.topic", request.topic.to_string());
    }
    if let Some(auth) = publishing.auth.as_ref().map(Live::current) {
        let cookies = req.header_values("cookie");
        let found = auth.token_with_source(req.header("authorization"), &cookies, req.query());
        if found
            .as_ref()
            .is_some_and(|(_, source)| *source == sse_auth::TokenSource::Cookie)
            && edge::is_cross_site(cors, req)
        {
            return Err(ApiError::cross_site());
        }
        let token = found.map(|(token, _)| token);
        auth.check_publish(token.as_deref(), request.topic.as_str())
            .map_err(|d| ApiError::denied(&d))?;
    }
    let max = publishing.max_body();
    let declared = req
        .header("content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ApiError::payload_too_large(max));
    }
    let body = read_body(session, max).await?;
    if let Some(span) = span.as_mut() {
        span.set("messaging.message.body.size", body.len());
    }
    let Ok(data) = std::str::from_utf8(&body) else {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the body (event data) must be UTF-8",
        ));
    };
    // Framed, the event must fit the hub's byte budgets (protocol §10), or it is never held.
    if let Err(e) = publishing
        .hub
        .check_frame_size(data, request.event.as_deref())
    {
        return Err(ApiError {
            message: e.to_string(),
            ..ApiError::payload_too_large(e.max)
        });
    }
    publishing
        .publisher
        .publish(
            &request.topic,
            body,
            request.event.as_deref(),
            span.as_deref(),
        )
        .await
        .map_err(|e| match e {
            PublishError::Timeout => ApiError::gateway_timeout(e.to_string()),
            PublishError::Refused(_) => ApiError::bad_request("refused", e.to_string()),
            PublishError::TooLarge => ApiError::payload_too_large(max),
            other => ApiError::unavailable(other.to_string(), publishing.retry_after_secs),
        })
}

pub(crate) async fn read_body(session: &mut Session, max: usize) -> Result<Bytes, ApiError> {
    let mut body = BytesMut::new();
    loop {
        let chunk = session.read_request_body().await.map_err(|e| {
            ApiError::bad_request(
                "bad_body",
                format!("cannot read the body: {}", e.etype().as_str()),
            )
        })?;
        let Some(chunk) = chunk else {
            return Ok(body.freeze());
        };
        if body.len() + chunk.len() > max {
            return Err(ApiError::payload_too_large(max));
        }
        body.extend_from_slice(&chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_topic_and_event() {
        let r = parse("/publish/orders.42", Some("event=created")).unwrap();
        assert_eq!(r.topic.as_str(), "orders.42");
        assert_eq!(r.event.as_deref(), Some("created"));
        assert_eq!(parse("/publish/a%2Eb", None).unwrap().topic.as_str(), "a.b");
    }

    #[test]
    fn refuses_bad_requests() {
        for (path, query, code) in [
            ("/publish/", None, "missing_topic"),
            ("/publish", None, "missing_topic"),
            ("/publish/a..b", None, "bad_topic"),
            ("/publish/orders.*", None, "bad_topic"),
            ("/publish/a", Some("event=gateway.reset"), "bad_event"),
            ("/publish/a", Some("event=a%0Ab"), "bad_event"),
            ("/publish/a", Some("event="), "bad_event"),
        ] {
            let e = parse(path, query).unwrap_err();
            assert_eq!(e.code, code, "{path} {query:?}");
            assert_eq!(e.status, 400);
        }
    }
}
