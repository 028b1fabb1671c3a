//! Live topic changes (protocol §11): with `sse.stream_control`, every stream opens with
//! `event: gateway.stream` `{"stream":"<id>","topics":[…]}` and `POST /streams/{id}`
//! with `{"add":[…],"remove":[…]}` changes its topics while it streams.
//!
//! Adding needs what subscribing needs: the topic rules (`sse.allow_wildcards`), the
//! caps (`sse.max_topics_per_connection` for the stream's new set,
//! `limits.max_subscribers_per_topic`, `limits.max_topics`) and, with auth on, a token
//! allowing every added topic. With auth on, a stream opened with a token (it has a
//! `sub`) takes changes only from a token with that `sub`, removals included; a stream
//! opened without one (public topics) takes public topics from anyone holding its id.
//! The token comes in `Authorization` or the auth cookie (the cookie not from another
//! site), never the query.
//!
//! The 200 goes out once the added topics are subscribed upstream and the stream's
//! writer has taken them over: everything published to them after the 200 reaches the
//! stream; a removed topic's events stop. Changes to one stream are applied one at a
//! time. An unknown id (or a stream that ended meanwhile) is 404.

use std::sync::Arc;
use std::time::Duration;

use pingora::proxy::Session;
use serde::Deserialize;
use sse_auth::TokenSource;
use sse_topic::TopicName;

use crate::admission;
use crate::edge::{self, ApiError, Cors, RequestView, Response};
use crate::live::Live;
use crate::operator::StreamId;
use crate::publish::read_body;
use crate::sse::Streams;

/// The path prefix of stream control.
pub const STREAMS_PATH: &str = "/streams/";

/// Largest body accepted.
const MAX_BODY: usize = 64 * 1024;

/// How long a change waits for its topics' upstream subscriptions.
const UPSTREAM_CONFIRM: Duration = Duration::from_secs(5);

/// How long a change waits for the stream's writer to apply it.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `path` is stream control's.
pub fn is_stream_control_path(path: &str) -> bool {
    path.starts_with(STREAMS_PATH)
}

/// What a change asks for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeRequest {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// Serves `POST /streams/{id}`; always answers.
pub async fn handle(
    streams: &Arc<Streams>,
    cors: &Cors,
    session: &mut Session,
) -> pingora::Result<bool> {
    let headers = edge::cors_headers(cors, session.req_header());
    let answer = match change(streams, cors, session).await {
        Ok(topics) => {
            let names: Vec<&str> = topics.iter().map(TopicName::as_str).collect();
            Response::json(200, &serde_json::json!({ "topics": names }))
                .with_header("Cache-Control", "no-store")
        }
        Err(error) => {
            // The body may be unread: the connection is not worth draining.
            session.set_keepalive(None);
            Response::error(&error)
        }
    };
    answer.with_headers(headers).send(session).await?;
    Ok(true)
}

async fn change(
    streams: &Arc<Streams>,
    cors: &Cors,
    session: &mut Session,
) -> Result<Vec<TopicName>, ApiError> {
    let req = session.req_header();
    if req.method() != "POST" {
        return Err(ApiError::method_not_allowed(req.method(), "POST"));
    }
    let raw_id = req.path().strip_prefix(STREAMS_PATH).unwrap_or_default();
    let not_found = || ApiError::not_found_named("stream", "with that id");
    if !streams.stream_control {
        return Err(ApiError::not_found(req.path()));
    }
    let entry = StreamId::parse(raw_id)
        .and_then(|id| streams.registry.get(&id))
        .ok_or_else(not_found)?;
    // Credentials first: nothing about the request is worth reading without them.
    let token = match streams.auth.as_ref().map(Live::current) {
        None => None,
        Some(auth) => {
            let cookies = req.header_values("cookie");
            let found = auth.token_with_source(req.header("authorization"), &cookies, None);
            if found
                .as_ref()
                .is_some_and(|(_, source)| *source == TokenSource::Cookie)
                && edge::is_cross_site(cors, req)
            {
                return Err(ApiError::cross_site());
            }
            let token = found.map(|(token, _)| token.into_owned());
            if let Some(sub) = &entry.sub {
                let subject = auth
                    .subject(token.as_deref())
                    .map_err(|d| ApiError::denied(&d))?;
                if subject.as_deref() != Some(sub.as_str()) {
                    return Err(ApiError::denied(&sse_auth::Denied::Forbidden(
                        "the token is not for this stream's subject".into(),
                    )));
                }
            }
            token
        }
    };
    let body = read_body(session, MAX_BODY).await?;
    let request: ChangeRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "bad_body",
            format!("the body must be {{\"add\":[topics],\"remove\":[topics]}}: {e}"),
        )
    })?;
    let parse = |list: &[String]| -> Result<Vec<TopicName>, ApiError> {
        let mut out: Vec<TopicName> = Vec::with_capacity(list.len());
        for raw in list {
            let topic = TopicName::parse(raw, streams.allow_wildcards).map_err(|e| {
                ApiError::bad_request("bad_topic", format!("invalid topic {raw:?}: {e}"))
            })?;
            if !out.contains(&topic) {
                out.push(topic);
            }
        }
        Ok(out)
    };
    let add = parse(&request.add)?;
    let remove = parse(&request.remove)?;

    // One change at a time per stream: each sees the topics the previous one left.
    let _turn = entry.changing.lock().await;
    let current = entry.topics();
    let add: Vec<TopicName> = add
        .into_iter()
        .filter(|t| !current.contains(t) || remove.contains(t))
        .collect();
    let remove: Vec<TopicName> = remove.into_iter().filter(|t| current.contains(t)).collect();
    let kept = current.iter().filter(|t| !remove.contains(t)).count();
    let total = kept + add.len();
    if total > streams.max_topics_per_connection {
        return Err(ApiError::bad_request(
            "too_many_topics",
            format!(
                "the stream would have {total} topics; at most {} are allowed",
                streams.max_topics_per_connection
            ),
        ));
    }
    if let Some(auth) = streams.auth.as_ref().map(Live::current) {
        let names: Vec<&str> = add.iter().map(TopicName::as_str).collect();
        auth.check_subscribe(token.as_deref(), &names)
            .map_err(|d| ApiError::denied(&d))?;
    }
    let added = if add.is_empty() {
        None
    } else {
        let sub = streams
            .hub
            .subscribe(&add, None)
            .map_err(|e| admission::topic_full(streams.retry_after_secs, &e).error)?;
        streams.hub.wait_upstream(&sub, UPSTREAM_CONFIRM).await;
        Some(sub)
    };
    let applied = entry.control.change_topics(added, remove);
    let topics = tokio::time::timeout(APPLY_TIMEOUT, applied)
        .await
        .map_err(|_| {
            ApiError::unavailable(
                "the stream did not take the change in time",
                streams.retry_after_secs,
            )
        })?
        .map_err(|_| not_found())?;
    entry.set_topics(topics.clone());
    tracing::debug!(stream = %entry.id, topics = topics.len(), "stream topics changed");
    Ok(topics)
}
