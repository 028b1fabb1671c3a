//! The Pingora glue of a stream: admit it, subscribe it, then hand its socket to a
//! lean task running the hub's writer.
//!
//! After the request is parsed and the subscription is confirmed upstream, the HTTP/1
//! connection is taken out of Pingora (`into_inner()` on its v1 session) and served by
//! [`sse_hub::serve`], which writes the response head, the opening bytes and then the
//! events with its own chunked framing. Pingora's per-request state (buffers, the proxy
//! future) is released at once; a stream then costs its socket, its cursor and its
//! writer task.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::http::Method;
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use sse_hub::BodyFraming;
use tokio::time::Instant;

use crate::http_error::ApiError;
use crate::metrics::Outcome;
use crate::request::parse_events_request;
use crate::state::Gateway;

/// How long a new stream waits for its upstream subscriptions to be confirmed.
const UPSTREAM_CONFIRM: Duration = Duration::from_secs(5);

/// Response head of an HTTP/1.1 stream.
const HEAD_CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: text/event-stream\r\n\
Cache-Control: no-cache\r\n\
X-Accel-Buffering: no\r\n\
Transfer-Encoding: chunked\r\n\
\r\n";

/// Response head for an HTTP/1.0 client: no chunking, the end is the close.
const HEAD_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: text/event-stream\r\n\
Cache-Control: no-cache\r\n\
X-Accel-Buffering: no\r\n\
Connection: close\r\n\
\r\n";

/// Serves `GET /events…`. Always answers (Ok(true)): with an error, or by handing the
/// connection to a stream task.
pub async fn handle(gateway: &Arc<Gateway>, session: &mut Session) -> pingora::Result<bool> {
    match admit(gateway, session).await {
        Ok(()) => Ok(true),
        Err((outcome, error)) => {
            gateway.metrics.count(outcome);
            error.send(session).await?;
            Ok(true)
        }
    }
}

async fn admit(gateway: &Arc<Gateway>, session: &mut Session) -> Result<(), (Outcome, ApiError)> {
    let req = session.req_header();
    if req.method != Method::GET {
        let method = req.method.to_string();
        return Err((
            Outcome::BadRequest,
            ApiError::method_not_allowed(&method, "GET"),
        ));
    }
    let sse = &gateway.config.sse;
    let request = parse_events_request(
        req.uri.path(),
        req.uri.query(),
        sse.allow_wildcards,
        sse.max_topics_per_connection,
    )
    .map_err(|e| (Outcome::BadRequest, ApiError::from(e)))?;
    // The header is what EventSource sends on reconnect: it wins over the query.
    let last_event_id = match req.headers.get("last-event-id") {
        Some(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        None => request.last_event_id,
    };
    let http10 = req.version == pingora::http::Version::HTTP_10;
    if gateway.is_draining() {
        return Err((
            Outcome::OverCapacity,
            ApiError::draining(retry_secs(gateway)),
        ));
    }

    let guard = gateway.open_stream();
    let sub = gateway
        .hub
        .subscribe(&request.topics, last_event_id.as_deref());
    gateway.hub.wait_upstream(&sub, UPSTREAM_CONFIRM).await;
    if gateway.is_draining() {
        return Err((
            Outcome::OverCapacity,
            ApiError::draining(retry_secs(gateway)),
        ));
    }
    let peer = session
        .client_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let Some(stream) = take_http1_stream(session) else {
        // HTTP/2 is not offered on this listener yet, so this is not reached.
        return Err((
            Outcome::BadRequest,
            ApiError::method_not_allowed("this protocol", "GET over HTTP/1.1"),
        ));
    };
    gateway.metrics.count(Outcome::Accepted);
    let (head, framing) = if http10 {
        (HEAD_CLOSE, BodyFraming::Raw)
    } else {
        (HEAD_CHUNKED, BodyFraming::Chunked)
    };
    let gateway = gateway.clone();
    tokio::spawn(async move {
        let _guard = guard;
        let started = Instant::now();
        let topics: Vec<String> = sub.topic_names().map(|t| t.to_string()).collect();
        let report = sse_hub::serve(
            stream,
            sub,
            Bytes::from_static(head),
            framing,
            &gateway.writer,
        )
        .await;
        tracing::debug!(
            %peer,
            ?topics,
            end = ?report.end,
            frames = report.frames_sent,
            bytes = report.bytes_sent,
            secs = started.elapsed().as_secs_f64(),
            "stream closed"
        );
    });
    Ok(())
}

/// Takes the HTTP/1 connection out of Pingora, leaving an inert session behind for
/// Pingora to finish. `None` (and the session untouched) for HTTP/2.
fn take_http1_stream(session: &mut Session) -> Option<pingora::protocols::Stream> {
    if session.as_downstream().is_http2() {
        return None;
    }
    let inert = ServerSession::new_http1(Box::new(Cursor::new(Vec::<u8>::new())));
    match std::mem::replace(&mut *session.downstream_session, inert) {
        ServerSession::H1(v1) => Some(v1.into_inner()),
        other => {
            *session.downstream_session = other;
            None
        }
    }
}

fn retry_secs(gateway: &Gateway) -> u64 {
    gateway.config.sse.retry.as_secs().max(1)
}
