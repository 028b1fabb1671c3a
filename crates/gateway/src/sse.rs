//! Opening a stream: admit it, subscribe it, then serve its socket from a lean task
//! running the hub's writer.
//!
//! A request reaches here from the public listener's own head reader (the common case:
//! the first request of a connection) or from Pingora's `request_filter` (a later request
//! on a connection Pingora kept alive). Either way the HTTP/1 connection is then served by
//! [`sse_hub::serve`], which writes the response head, the opening bytes and the events
//! with its own chunked framing; no Pingora state stays attached to it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sse_admission::Slot;
use sse_hub::{BodyFraming, Subscription};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::admission::{self, Refusal};
use crate::cors::Headers;
use crate::http_error::ApiError;
use crate::metrics::Outcome;
use crate::request::parse_events_request;
use crate::state::{Gateway, StreamGuard};

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

/// What opening a stream needs to know of a request, whichever way it arrived.
#[derive(Debug)]
pub struct StreamRequest<'a> {
    /// Request method.
    pub method: &'a str,
    /// Path, still percent-encoded.
    pub path: &'a str,
    /// Raw query.
    pub query: Option<&'a str>,
    /// How the response goes out.
    pub transport: Transport,
    /// The `Last-Event-ID` header.
    pub last_event_id: Option<&'a [u8]>,
    /// The client's address (after trusted proxies).
    pub client: IpAddr,
    /// CORS headers for the response (empty when the origin is not allowed).
    pub cors: Headers,
    /// Where a token may be: the `Authorization` header …
    pub authorization: Option<&'a [u8]>,
    /// … and the `Cookie` headers (and `access_token` in the query).
    pub cookies: Vec<&'a [u8]>,
}

/// How a stream's response is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP/1.1: our head, chunked body.
    Http11,
    /// HTTP/1.0: our head, body until close.
    Http10,
    /// Pingora writes the head and frames the body (HTTP/2): body bytes only.
    Framed,
}

/// A stream that passed admission: everything it holds is released when it ends.
#[derive(Debug)]
pub struct Admitted {
    sub: Subscription,
    slot: Slot,
    guard: StreamGuard,
    framing: BodyFraming,
    head: Bytes,
}

/// Checks, in order: token bucket, method, request, draining, connection caps, topic
/// caps; then subscribes and waits for the upstream subscriptions.
pub async fn admit(gateway: &Arc<Gateway>, req: &StreamRequest<'_>) -> Result<Admitted, Refusal> {
    admission::check_rate(gateway, req.client)?;
    if req.method != "GET" {
        return Err(Refusal::bad_request(ApiError::method_not_allowed(
            req.method, "GET",
        )));
    }
    let sse = &gateway.config.sse;
    let request = parse_events_request(
        req.path,
        req.query,
        sse.allow_wildcards,
        sse.max_topics_per_connection,
    )
    .map_err(|e| Refusal::bad_request(e.into()))?;
    if let Some(auth) = &gateway.config.auth {
        let token = auth.token_from(req.authorization, &req.cookies, req.query);
        let topics: Vec<&str> = request.topics.iter().map(|t| t.as_str()).collect();
        auth.check_subscribe(token.as_deref(), &topics)
            .map_err(Refusal::denied)?;
    }
    // The header is what EventSource sends on reconnect: it wins over the query.
    let last_event_id = match req.last_event_id {
        Some(v) => Some(String::from_utf8_lossy(v).into_owned()),
        None => request.last_event_id,
    };
    if gateway.is_draining() {
        return Err(Refusal::draining(gateway));
    }
    let slot = gateway
        .caps
        .acquire(req.client)
        .map_err(|cap| admission::cap_refusal(gateway, cap))?;
    let sub = gateway
        .hub
        .subscribe(&request.topics, last_event_id.as_deref())
        .map_err(|e| admission::topic_full(gateway, &e))?;
    let guard = gateway.open_stream();
    gateway.hub.wait_upstream(&sub, UPSTREAM_CONFIRM).await;
    if gateway.is_draining() {
        return Err(Refusal::draining(gateway));
    }
    let (head, framing) = match req.transport {
        Transport::Http11 => (with_headers(HEAD_CHUNKED, &req.cors), BodyFraming::Chunked),
        Transport::Http10 => (with_headers(HEAD_CLOSE, &req.cors), BodyFraming::Raw),
        Transport::Framed => (Bytes::new(), BodyFraming::Raw),
    };
    Ok(Admitted {
        sub,
        slot,
        guard,
        framing,
        head,
    })
}

/// A response head with `extra` headers added before its blank line.
fn with_headers(head: &'static [u8], extra: &Headers) -> Bytes {
    if extra.is_empty() {
        return Bytes::from_static(head);
    }
    let mut out = head[..head.len() - 2].to_vec();
    for (name, value) in extra {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// Serves an admitted stream on `io` from a task of its own.
pub fn spawn<S>(gateway: &Arc<Gateway>, io: S, admitted: Admitted, peer: IpAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    gateway.metrics.count(Outcome::Accepted);
    let gateway = gateway.clone();
    tokio::spawn(async move {
        let Admitted {
            mut sub,
            slot,
            guard,
            framing,
            head,
        } = admitted;
        let started = Instant::now();
        if let Some((request, sink)) = sub.take_replay() {
            // Older than the rings: from JetStream, ahead of the live frames.
            if let Some(history) = gateway.history.get() {
                tokio::spawn(history.clone().replay(request, sink));
            }
        }
        let report = sse_hub::serve(io, sub, head, framing, &gateway.writer).await;
        tracing::debug!(
            %peer,
            topics = ?report.topics,
            end = ?report.end,
            frames = report.frames_sent,
            bytes = report.bytes_sent,
            secs = started.elapsed().as_secs_f64(),
            "stream closed"
        );
        drop((slot, guard));
    });
}
