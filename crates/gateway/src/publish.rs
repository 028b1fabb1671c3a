//! `POST /publish/{topic}`: body = event data (UTF-8), optional `?event=<type>`; answers
//! `202 {"id": "<event id>"}` — the id this gateway's clients see for the event.

use bytes::{Bytes, BytesMut};
use percent_encoding::percent_decode_str;
use pingora::http::{Method, ResponseHeader};
use pingora::proxy::Session;
use sse_bus::PublishError;
use sse_hub::TopicName;

use crate::cors::Headers;
use crate::http_error::ApiError;
use crate::metrics::Outcome;
use crate::state::Gateway;

/// The path prefix of the publish API.
pub const PUBLISH_PATH: &str = "/publish/";

/// Largest body accepted.
pub const MAX_BODY: usize = 1024 * 1024;

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
            if value.starts_with("gateway.") {
                return Err(ApiError::bad_request(
                    "bad_event",
                    "event types starting with \"gateway.\" are reserved for the gateway",
                ));
            }
            check_event_type(&value)?;
            event = Some(value.into_owned());
        }
    }
    Ok(PublishRequest { topic, event })
}

fn check_event_type(event: &str) -> Result<(), ApiError> {
    if event.is_empty() || event.len() > 256 || event.contains(['\r', '\n']) {
        return Err(ApiError::bad_request(
            "bad_event",
            "the event type must be 1-256 bytes without CR or LF",
        ));
    }
    Ok(())
}

/// Serves a publish request; always answers.
pub async fn handle(
    gateway: &Gateway,
    session: &mut Session,
    cors: Headers,
) -> pingora::Result<bool> {
    match publish(gateway, session).await {
        Ok(id) => {
            let body = Bytes::from(serde_json::json!({ "id": id }).to_string());
            let mut head = ResponseHeader::build(202, Some(4 + cors.len()))?;
            head.insert_header("Content-Type", "application/json")?;
            head.insert_header("Content-Length", body.len().to_string())?;
            head.insert_header("Cache-Control", "no-store")?;
            for (name, value) in cors {
                head.insert_header(name, value)?;
            }
            session.write_response_header(Box::new(head), false).await?;
            session.write_response_body(Some(body), true).await?;
        }
        Err(error) => {
            if matches!(error.status, 401 | 403) {
                gateway.metrics.count(Outcome::Unauthorized);
            }
            error.with_headers(cors).send(session).await?;
        }
    }
    Ok(true)
}

async fn publish(gateway: &Gateway, session: &mut Session) -> Result<String, ApiError> {
    let req = session.req_header();
    if req.method != Method::POST {
        return Err(ApiError::method_not_allowed(req.method.as_str(), "POST"));
    }
    let request = parse(req.uri.path(), req.uri.query())?;
    if let Some(auth) = &gateway.config.auth {
        let cookies: Vec<&[u8]> = req
            .headers
            .get_all("cookie")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let token = auth.token_from(
            req.headers.get("authorization").map(|v| v.as_bytes()),
            &cookies,
            req.uri.query(),
        );
        auth.check_publish(token.as_deref(), request.topic.as_str())
            .map_err(|d| ApiError::denied(&d))?;
    }
    let body = read_body(session).await?;
    let Ok(data) = std::str::from_utf8(&body) else {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the body (event data) must be UTF-8",
        ));
    };
    // Framed, the event must fit the hub's byte budgets (SPEC §10), or it is never held.
    if let Err(e) = gateway.hub.check_frame_size(data, request.event.as_deref()) {
        return Err(ApiError {
            message: e.to_string(),
            ..ApiError::payload_too_large(e.max)
        });
    }
    let Some(publisher) = gateway.publisher.get() else {
        return Err(ApiError::unavailable("the message bus is starting", 1));
    };
    publisher
        .publish(&request.topic, body, request.event.as_deref())
        .await
        .map_err(|e| match e {
            PublishError::Timeout => ApiError::gateway_timeout(e.to_string()),
            PublishError::Refused(_) => ApiError::bad_request("refused", e.to_string()),
            other => ApiError::unavailable(other.to_string(), gateway.retry_after_secs()),
        })
}

async fn read_body(session: &mut Session) -> Result<Bytes, ApiError> {
    let mut body = BytesMut::new();
    loop {
        let chunk = session
            .read_request_body()
            .await
            .map_err(|e| ApiError::bad_request("bad_body", format!("cannot read the body: {e}")))?;
        let Some(chunk) = chunk else {
            return Ok(body.freeze());
        };
        if body.len() + chunk.len() > MAX_BODY {
            return Err(ApiError::payload_too_large(MAX_BODY));
        }
        body.extend_from_slice(&chunk);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
