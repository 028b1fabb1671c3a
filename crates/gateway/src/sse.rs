//! Opening a stream: admit it, subscribe it, then serve its socket from a lean task
//! running the hub's writer.
//!
//! A request reaches here from the front's head reader (every HTTP/1 request) or from
//! Pingora's `request_filter` (an HTTP/2 stream). An HTTP/1 connection is then served by
//! [`sse_hub::serve`], which writes the response head, the opening bytes and the events
//! with its own chunked framing; no Pingora state stays attached to it. An HTTP/2 stream
//! is relayed through its Pingora session (see `proxy.rs`).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sse_admission::{Caps, Slot};
use sse_auth::{Authorizer, Denied, Grant};
use sse_hub::{BodyFraming, Cadence, Hub, StreamControl, Subscription, TopicName, WriterConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::admission::{self, Client, Refusal};
use crate::config::{LimitSettings, SseSettings};
use crate::edge::{ApiError, Connection, Headers, RequestView, Response, Version};
use crate::live::Live;
use crate::metrics::{Metrics, Outcome};
use crate::operator::{Registry, StreamEntry, StreamId};
use crate::request::parse_events_request;
use crate::tickets::{self, Tickets};

/// How long a new stream waits for its upstream subscriptions to be confirmed.
const UPSTREAM_CONFIRM: Duration = Duration::from_secs(5);

/// The event streams: what admits them, what they are served from, how many are open.
#[derive(Debug)]
pub struct Streams {
    /// Topics, rings, fan-out.
    pub hub: Hub,
    /// Settings of every stream writer.
    writer: WriterConfig,
    /// Stream caps (global and per client).
    caps: Arc<Caps>,
    /// Who may read which topics, when `[auth]` is on.
    pub(crate) auth: Option<Live<Authorizer>>,
    /// Tickets, when `auth.ticket_secret` is set.
    tickets: Option<Tickets>,
    /// Every open stream, for the operator API; the blocks it set.
    pub registry: Arc<Registry>,
    /// `sse.allow_wildcards`.
    pub(crate) allow_wildcards: bool,
    /// `sse.max_topics_per_connection`.
    pub(crate) max_topics_per_connection: usize,
    /// `sse.stream_control`: streams announce their id and take topic changes.
    pub(crate) stream_control: bool,
    /// `Retry-After` of a 503.
    pub(crate) retry_after_secs: u64,
    metrics: Metrics,
    /// Set on SIGTERM: no stream is admitted any more.
    draining: AtomicBool,
    /// Streams admitted and not yet ended.
    open: AtomicU64,
    /// Notified when the last open stream ends.
    gone: Notify,
}

impl Streams {
    /// Streams served from `hub` under `[sse]` and `[limits]`; every stream ends within
    /// most of `grace_period` once draining starts.
    pub fn new(
        hub: Hub,
        sse: &SseSettings,
        limits: &LimitSettings,
        grace_period: Duration,
        auth: Option<Live<Authorizer>>,
        tickets: Option<Tickets>,
        metrics: Metrics,
    ) -> Arc<Self> {
        let writer = WriterConfig {
            cadence: Cadence::new(sse.heartbeat, sse.retry),
            write_timeout: sse.write_timeout,
            client_buffer: sse.client_buffer,
            client_buffer_bytes: sse.client_buffer_bytes,
            max_write_frames: sse.client_buffer,
            max_write_bytes: 256 * 1024,
            // Streams end spread over most of the grace period, each told to come back
            // soon (to another instance) but not all at once.
            drain_spread: grace_period.mul_f64(0.75),
            drain_retry: sse.retry.min(Duration::from_secs(1)),
        };
        Arc::new(Self {
            hub,
            writer,
            caps: Caps::new(limits.max_connections, limits.max_connections_per_ip),
            auth,
            tickets,
            registry: Arc::default(),
            allow_wildcards: sse.allow_wildcards,
            max_topics_per_connection: sse.max_topics_per_connection,
            stream_control: sse.stream_control,
            retry_after_secs: retry_after_secs(sse),
            metrics,
            draining: AtomicBool::new(false),
            open: AtomicU64::new(0),
            gone: Notify::new(),
        })
    }

    /// Applies a reloaded configuration's heartbeat, retry and caps: from now on, and
    /// the heartbeat and retry to open streams too (from their next heartbeat). Streams
    /// over a lowered cap stay open.
    pub fn reconfigure(&self, sse: &SseSettings, limits: &LimitSettings) {
        self.writer.cadence.set(sse.heartbeat, sse.retry);
        self.caps
            .set_limits(limits.max_connections, limits.max_connections_per_ip);
        self.hub.set_topic_limits(
            limits.max_topics,
            usize::try_from(limits.max_subscribers_per_topic).unwrap_or(usize::MAX),
        );
    }

    /// Tickets, when `auth.ticket_secret` is set.
    pub fn tickets(&self) -> Option<&Tickets> {
        self.tickets.as_ref()
    }

    /// Whether SIGTERM was received.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stops admitting streams and asks every open one to end.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.hub.close();
    }

    /// Ready: connected upstream and not draining.
    pub fn is_ready(&self) -> bool {
        self.hub.is_connected() && !self.is_draining()
    }

    /// Streams admitted and not yet ended.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Acquire)
    }

    /// Places taken under the stream caps (equal to [`Self::open`] once every admission
    /// in progress has finished).
    pub fn slots(&self) -> u64 {
        self.caps.open()
    }

    /// Clients holding at least one stream.
    pub fn clients(&self) -> usize {
        self.caps.tracked_ips()
    }

    /// Resolves once no stream is open.
    pub async fn all_closed(&self) {
        loop {
            let gone = self.gone.notified();
            let mut gone = std::pin::pin!(gone);
            // Registered before the check, so a release in between is not missed.
            gone.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            gone.await;
        }
    }

    /// Counts an open stream until the guard is dropped.
    fn open_stream(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.metrics.connections_active.inc();
        StreamGuard {
            streams: self.clone(),
        }
    }
}

/// `Retry-After` for 503 answers: the announced reconnection delay, at least 1 s.
pub fn retry_after_secs(sse: &SseSettings) -> u64 {
    sse.retry.as_secs().max(1)
}

/// One open stream, counted (and in `sse_connections_active`) until dropped, on every
/// exit path.
#[derive(Debug)]
struct StreamGuard {
    streams: Arc<Streams>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.streams.metrics.connections_active.dec();
        if self.streams.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.streams.gone.notify_waiters();
        }
    }
}

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
    /// Who it was allowed for, and until when.
    grant: Grant,
    /// The client's address.
    ip: IpAddr,
    sub: Subscription,
    slot: Slot,
    guard: StreamGuard,
    framing: BodyFraming,
    head: Bytes,
}

/// Checks, in order (the token bucket was taken by the edge): method, request,
/// credentials, draining, connection caps, topic caps; then subscribes and waits for the
/// upstream subscriptions.
pub async fn admit(streams: &Arc<Streams>, req: &StreamRequest<'_>) -> Result<Admitted, Refusal> {
    let request = req.request;
    if request.method() != "GET" {
        return Err(Refusal::bad_request(ApiError::method_not_allowed(
            request.method(),
            "GET",
        )));
    }
    let events = parse_events_request(
        request.path(),
        request.query(),
        streams.allow_wildcards,
        streams.max_topics_per_connection,
    )
    .map_err(|e| Refusal::bad_request(e.into()))?;
    let grant = match streams.auth.as_ref().map(Live::current) {
        Some(auth) => {
            let topics: Vec<&str> = events.topics.iter().map(|t| t.as_str()).collect();
            match (tickets::ticket_from(request.query()), &streams.tickets) {
                (Some(ticket), Some(tickets)) => tickets.redeem(&ticket, &topics).await?,
                (Some(_), None) => {
                    return Err(Refusal::denied(Denied::Unauthorized(
                        "tickets are not enabled on this gateway".into(),
                    )));
                }
                (None, _) => {
                    let cookies = request.header_values("cookie");
                    let token =
                        auth.token_from(request.header("authorization"), &cookies, request.query());
                    auth.check_subscribe(token.as_deref(), &topics)
                        .map_err(Refusal::denied)?
                }
            }
        }
        None => Grant::default(),
    };
    // Within the verifier's leeway a token may be past its exp: a stream would end at
    // once, so it is refused instead.
    if grant.exp.is_some_and(|exp| unix_now() >= exp) {
        return Err(Refusal::denied(Denied::Unauthorized(
            "the token has expired".into(),
        )));
    }
    if let Some(remaining) = streams
        .registry
        .blocked(grant.sub.as_deref(), req.client.ip)
    {
        return Err(Refusal::revoked(remaining));
    }
    // The header is what EventSource sends on reconnect: it wins over the query.
    let last_event_id = match request.header("last-event-id") {
        Some(v) => Some(String::from_utf8_lossy(v).into_owned()),
        None => events.last_event_id,
    };
    if streams.is_draining() {
        return Err(Refusal::draining(streams.retry_after_secs));
    }
    let slot = streams
        .caps
        .acquire(req.client.key)
        .map_err(|cap| admission::cap_refusal(streams.retry_after_secs, cap))?;
    let sub = streams
        .hub
        .subscribe(&events.topics, last_event_id.as_deref())
        .map_err(|e| admission::topic_full(streams.retry_after_secs, &e))?;
    let guard = streams.open_stream();
    streams.hub.wait_upstream(&sub, UPSTREAM_CONFIRM).await;
    if streams.is_draining() {
        return Err(Refusal::draining(streams.retry_after_secs));
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
        grant,
        ip: req.client.ip,
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
    streams: &Arc<Streams>,
    io: S,
    admitted: Admitted,
    peer: IpAddr,
    socket: Option<Slot>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    streams.metrics.count(Outcome::Accepted);
    let streams = streams.clone();
    tokio::spawn(async move {
        let Admitted {
            grant,
            ip,
            sub,
            slot,
            guard,
            framing,
            head,
        } = admitted;
        let started = Instant::now();
        let id = StreamId::random();
        let topics: Vec<TopicName> = sub.topic_names().cloned().collect();
        let mut control = StreamControl::new(grant.exp.map(instant_of));
        if streams.stream_control {
            control = control.with_opening_event(stream_event(id, &topics));
        }
        let control = Arc::new(control);
        let listed = streams.registry.register(StreamEntry {
            id,
            ip,
            sub: grant.sub,
            topics: Mutex::new(topics),
            changing: tokio::sync::Mutex::new(()),
            opened_at: SystemTime::now(),
            control: control.clone(),
        });
        let report = sse_hub::serve(io, sub, head, framing, &streams.writer, &control).await;
        drop(listed);
        streams.metrics.closed(&report.end);
        tracing::debug!(
            %peer,
            stream = %id,
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

/// `event: gateway.stream` with the stream's id and topics (protocol §11): no `id:`
/// line, so it leaves the client's last event id alone.
fn stream_event(id: StreamId, topics: &[TopicName]) -> Bytes {
    let names: Vec<&str> = topics.iter().map(TopicName::as_str).collect();
    let data = serde_json::json!({ "stream": id.to_string(), "topics": names }).to_string();
    let mut frame = bytes::BytesMut::new();
    sse_framing::encode_event(&mut frame, None, Some(STREAM_EVENT), &data);
    frame.freeze()
}

/// The event a stream opens with when `sse.stream_control` is on.
pub const STREAM_EVENT: &str = "gateway.stream";

/// Seconds since the Unix epoch now.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The moment, on the runtime's clock, of `exp` (Unix seconds).
fn instant_of(exp: u64) -> Instant {
    let at = UNIX_EPOCH + Duration::from_secs(exp);
    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
    Instant::now() + left
}
