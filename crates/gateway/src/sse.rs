//! Opening a stream: admit it, subscribe it, then serve its socket from a lean task
//! running the hub's writer.
//!
//! A request reaches here from the front's head reader (every HTTP/1 request) or from
//! Pingora's `request_filter` (an HTTP/2 stream). An HTTP/1 connection is then served by
//! [`sse_hub::serve`], which writes the response head, the opening bytes and the events
//! with its own chunked framing; no Pingora state stays attached to it. An HTTP/2 stream
//! is relayed through its Pingora session (see `proxy.rs`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sse_admission::Slot;
use sse_hub::{BodyFraming, Subscription};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::admission::{self, Client, Refusal};
use crate::edge::{ApiError, Connection, Headers, RequestView, Response, Version};
use crate::metrics::Outcome;
use crate::request::parse_events_request;
use crate::state::{Gateway, StreamGuard};

/// How long a new stream waits for its upstream subscriptions to be confirmed.
const UPSTREAM_CONFIRM: Duration = Duration::from_secs(5);

/// What opening a stream needs to know of a request, whichever way it arrived.
pub struct StreamRequest<'a> {
    /// The request.
    pub request: &'a dyn RequestView,
    /// Who sent it.
    pub client: Client,
    /// CORS headers for the response (empty when the origin is not allowed).
    pub cors: Headers,
}

impl std::fmt::Debug for StreamRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamRequest")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl<'a> StreamRequest<'a> {
    /// The stream `request` asks for, from `client`.
    pub fn new(request: &'a dyn RequestView, client: Client, cors: Headers) -> Self {
        Self {
            request,
            client,
            cors,
        }
    }
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

/// Checks, in order (the token bucket was taken by the edge): method, request,
/// credentials, draining, connection caps, topic caps; then subscribes and waits for the
/// upstream subscriptions.
pub async fn admit(gateway: &Arc<Gateway>, req: &StreamRequest<'_>) -> Result<Admitted, Refusal> {
    let request = req.request;
    if request.method() != "GET" {
        return Err(Refusal::bad_request(ApiError::method_not_allowed(
            request.method(),
            "GET",
        )));
    }
    let sse = &gateway.config.sse;
    let events = parse_events_request(
        request.path(),
        request.query(),
        sse.allow_wildcards,
        sse.max_topics_per_connection,
    )
    .map_err(|e| Refusal::bad_request(e.into()))?;
    if let Some(auth) = &gateway.config.auth {
        let cookies = request.header_values("cookie");
        let token = auth.token_from(request.header("authorization"), &cookies, request.query());
        let topics: Vec<&str> = events.topics.iter().map(|t| t.as_str()).collect();
        auth.check_subscribe(token.as_deref(), &topics)
            .map_err(Refusal::denied)?;
    }
    // The header is what EventSource sends on reconnect: it wins over the query.
    let last_event_id = match request.header("last-event-id") {
        Some(v) => Some(String::from_utf8_lossy(v).into_owned()),
        None => events.last_event_id,
    };
    if gateway.is_draining() {
        return Err(Refusal::draining(gateway));
    }
    let slot = gateway
        .caps
        .acquire(req.client.key)
        .map_err(|cap| admission::cap_refusal(gateway, cap))?;
    let sub = gateway
        .hub
        .subscribe(&events.topics, last_event_id.as_deref())
        .map_err(|e| admission::topic_full(gateway, &e))?;
    let guard = gateway.open_stream();
    gateway.hub.wait_upstream(&sub, UPSTREAM_CONFIRM).await;
    if gateway.is_draining() {
        return Err(Refusal::draining(gateway));
    }
    let (head, framing) = match request.version() {
        Version::Http11 => (
            http1_head(&req.cors, Connection::KeepAlive),
            BodyFraming::Chunked,
        ),
        Version::Http10 => (http1_head(&req.cors, Connection::Close), BodyFraming::Raw),
        // The transport writes the head and frames the body.
        Version::Http2 => (Bytes::new(), BodyFraming::Raw),
    };
    Ok(Admitted {
        sub,
        slot,
        guard,
        framing,
        head,
    })
}

/// The HTTP/1 head of a stream: rendered once for the common case without CORS headers
/// and shared by every stream (a stream holds it until its first write).
fn http1_head(cors: &Headers, connection: Connection) -> Bytes {
    static PLAIN: std::sync::LazyLock<[Bytes; 2]> = std::sync::LazyLock::new(|| {
        let head = Response::event_stream(Vec::new());
        [
            Bytes::from(head.to_http1(Connection::KeepAlive)),
            Bytes::from(head.to_http1(Connection::Close)),
        ]
    });
    match (cors.is_empty(), connection) {
        (true, Connection::KeepAlive) => PLAIN[0].clone(),
        (true, Connection::Close) => PLAIN[1].clone(),
        (false, _) => Bytes::from(Response::event_stream(cors.clone()).to_http1(connection)),
    }
}

/// Serves an admitted stream on `io` from a task of its own; `socket` (the connection's
/// place under `limits.max_sockets_per_ip`) is held until it ends.
pub fn spawn<S>(
    gateway: &Arc<Gateway>,
    io: S,
    admitted: Admitted,
    peer: IpAddr,
    socket: Option<Slot>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    gateway.metrics.count(Outcome::Accepted);
    let gateway = gateway.clone();
    tokio::spawn(async move {
        let Admitted {
            sub,
            slot,
            guard,
            framing,
            head,
        } = admitted;
        let started = Instant::now();
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
        drop((slot, guard, socket));
    });
}
