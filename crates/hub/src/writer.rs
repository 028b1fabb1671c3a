//! The per-client writer: one task per stream, over a plain async byte stream.
//!
//! It writes the opening bytes, then whatever the stream's [`Subscription`] has, many
//! frames per socket write (coalescing), heartbeats after silence and a final `retry:`
//! when the hub closes. In the same poll it watches the socket for the client going away,
//! so a closed client frees its slot at once, not at the next write.
//!
//! ## Slow clients
//!
//! Frames are not queued per client: a client's backlog is its distance behind the
//! topic's ring, plus what it owes its socket from a batch the socket took only part of
//! (held as references to the ring's frames, see [`crate::owed`]). A client whose socket
//! is full (a write is pending) while it is more than `client_buffer` frames or more than
//! `client_buffer_bytes` bytes behind is cut and its unsent frames counted as dropped; a
//! client whose socket accepts nothing for `write_timeout` is cut too. A client that is
//! merely scheduled late, with a socket that still accepts data, catches up in large
//! writes.
//!
//! ## Delivery
//!
//! An event counts as sent (`events_sent`, one latency observation) when its last byte
//! is taken by the socket: the batch's frames at once in the common case, each owed
//! frame when its write completes otherwise. A sampled message's fan-out span learns of
//! the write at the same moment ([`crate::fanout`]); a stream that ends owing the frame
//! gives its share up.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::control::{CloseReason, StreamControl};
use crate::fanout::Claim;
use crate::owed::Owed;
use crate::subscription::{Frames, Subscription};

/// How the body bytes are framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// HTTP/1.1 `Transfer-Encoding: chunked`: one chunk per write, a last chunk at the end.
    Chunked,
    /// Body bytes as they are, the end marked by closing (HTTP/1.0, or a transport that
    /// frames the body itself).
    Raw,
}

/// The heartbeat period and the announced reconnection delay: shared by every writer
/// and changeable while they run (`sse.heartbeat` and `sse.retry` on a configuration
/// reload). A running stream takes a new heartbeat period from its next timer, and
/// announces a new `retry:` with its next heartbeat.
#[derive(Debug, Clone)]
pub struct Cadence(Arc<CadenceNanos>);

#[derive(Debug)]
struct CadenceNanos {
    heartbeat: AtomicU64,
    retry: AtomicU64,
}

impl Cadence {
    /// A heartbeat after `heartbeat` of silence; `retry` announced.
    pub fn new(heartbeat: Duration, retry: Duration) -> Self {
        Self(Arc::new(CadenceNanos {
            heartbeat: AtomicU64::new(nanos(heartbeat)),
            retry: AtomicU64::new(nanos(retry)),
        }))
    }

    /// Changes both for every stream, open ones included.
    pub fn set(&self, heartbeat: Duration, retry: Duration) {
        self.0.heartbeat.store(nanos(heartbeat), Ordering::Relaxed);
        self.0.retry.store(nanos(retry), Ordering::Relaxed);
    }

    /// Silence after which a comment is sent.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_nanos(self.0.heartbeat.load(Ordering::Relaxed))
    }

    /// Reconnection delay announced at the start and at the end of a stream.
    pub fn retry(&self) -> Duration {
        Duration::from_nanos(self.0.retry.load(Ordering::Relaxed))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Settings of the writer, from `[sse]`.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// The heartbeat period and the announced `retry:` (live).
    pub cadence: Cadence,
    /// A socket that accepts nothing for this long is cut.
    pub write_timeout: Duration,
    /// Frames a client may be behind while its socket is full.
    pub client_buffer: usize,
    /// Bytes a client may be behind while its socket is full (owed to its socket and
    /// still in the rings after its cursors).
    pub client_buffer_bytes: usize,
    /// Upper bound on one coalesced write, in frames (at most `client_buffer` is used).
    pub max_write_frames: usize,
    /// Upper bound on one coalesced write, in bytes (at least one frame is written;
    /// `client_buffer_bytes` at most is used).
    pub max_write_bytes: usize,
    /// When the hub closes, each stream ends at a random moment within this, so that
    /// its clients do not all reconnect at once; until then it keeps streaming.
    pub drain_spread: Duration,
    /// The `retry:` sent when a stream ends for shutdown: a short delay, jittered ±50%.
    pub drain_retry: Duration,
}

/// Why a stream ended.
#[non_exhaustive]
#[derive(Debug)]
pub enum StreamEnd {
    /// The client closed its side (or reset the connection).
    ClientClosed,
    /// The hub closed (shutdown): the stream was ended with a final `retry:`.
    Shutdown,
    /// The client fell more than `client_buffer` frames or `client_buffer_bytes` bytes
    /// behind with a full socket.
    SlowConsumer {
        /// Frames it will not get.
        dropped: u64,
    },
    /// The socket accepted nothing for `write_timeout`.
    WriteTimeout,
    /// The client sent more than a few KiB on an event stream.
    UnexpectedInput,
    /// The token that authorized it expired: it was ended with `gateway.close`.
    TokenExpired,
    /// An operator closed it: it was ended with `gateway.close`.
    Revoked,
    /// Writing failed.
    Io(io::Error),
}

/// The outcome of [`serve`].
#[derive(Debug)]
pub struct StreamReport {
    /// Why it ended.
    pub end: StreamEnd,
    /// Event frames written (resets included; comments and heartbeats not).
    pub frames_sent: u64,
    /// Bytes written, head and framing included.
    pub bytes_sent: u64,
    /// The stream's topics.
    pub topics: Vec<crate::TopicName>,
}

/// Bytes a client may send on an event stream before it is cut.
const MAX_INPUT: usize = 16 * 1024;
/// Frames per write loop before yielding to other tasks.
const MAX_ROUNDS: usize = 32;
/// Room kept in front of a chunk for its size line: 8 hex digits and CRLF.
const CHUNK_HEADER_ROOM: usize = 10;
/// A worker thread's scratch buffer is given back when it grew past this.
const MAX_SCRATCH: usize = 4 * 1024 * 1024;
/// Owed bytes copied into the scratch per write (when the socket has no vectored write).
const OWED_COPY: usize = 64 * 1024;
/// Owed segments per vectored write.
const OWED_SLICES: usize = 64;
/// A chunk's end.
const CRLF: &[u8] = b"\r\n";
/// The event type of the frame a stream closed for a reason ends with.
pub const CLOSE_EVENT: &str = "gateway.close";
/// A heartbeat comment as one chunk, and as it is without chunking.
const HEARTBEAT_CHUNKED: &[u8] = b"d\r\n: heartbeat\n\n\r\n";
const HEARTBEAT_RAW: &[u8] = b": heartbeat\n\n";

thread_local! {
    /// Per worker thread: batches are built here and written straight from it.
    static SCRATCH: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
    /// Per worker thread: the frames of the batch being written.
    static BATCH: std::cell::RefCell<Frames> = const { std::cell::RefCell::new(Frames::new()) };
}

/// Serves one stream until it ends: writes `head` (e.g. an HTTP response head) and the
/// opening `retry:` and comment at once, then frames as they come. `control` can end it
/// early (and ends it at its expiry) and reads its progress.
pub async fn serve<S>(
    io: S,
    sub: Subscription,
    head: Bytes,
    framing: BodyFraming,
    config: &WriterConfig,
    control: &StreamControl,
) -> StreamReport
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut writer = Writer::new(io, sub, framing, config, control);
    writer.open(&head);
    std::future::poll_fn(|cx| writer.poll(cx)).await
}

enum Phase {
    Streaming,
    /// The hub is closing; this stream still streams until `close_at`.
    Draining {
        close_at: Instant,
    },
    /// The goodbye is queued; the stream ends with this once it is written.
    Closing(Ending),
}

/// Why a stream says goodbye.
#[derive(Clone, Copy)]
enum Ending {
    /// The hub closed: a short, jittered `retry:`.
    Shutdown,
    /// `gateway.close` with the reason, then the usual `retry:`.
    Closed(CloseReason),
}

pub(crate) struct Writer<'c, S> {
    io: S,
    sub: Subscription,
    framing: BodyFraming,
    config: &'c WriterConfig,
    control: &'c StreamControl,
    /// What the socket has not taken yet, as references.
    owed: Owed,
    timer: Pin<Box<Sleep>>,
    /// The timer holds this task's waker for its current deadline.
    timer_registered: bool,
    last_write: Instant,
    blocked_since: Option<Instant>,
    /// The `retry:` this client was last told.
    announced_retry: Duration,
    phase: Phase,
    input_seen: usize,
    frames_sent: u64,
    bytes_sent: u64,
}

impl<'c, S: AsyncRead + AsyncWrite + Unpin> Writer<'c, S> {
    pub(crate) fn new(
        io: S,
        sub: Subscription,
        framing: BodyFraming,
        config: &'c WriterConfig,
        control: &'c StreamControl,
    ) -> Self {
        let now = Instant::now();
        Self {
            io,
            sub,
            framing,
            config,
            control,
            owed: Owed::default(),
            timer: Box::pin(tokio::time::sleep_until(now + config.cadence.heartbeat())),
            timer_registered: false,
            last_write: now,
            blocked_since: None,
            announced_retry: config.cadence.retry(),
            phase: Phase::Streaming,
            input_seen: 0,
            frames_sent: 0,
            bytes_sent: 0,
        }
    }

    /// Queues the head, the opening `retry:` + comment, and a reset frame if one is owed,
    /// as one piece (one write).
    pub(crate) fn open(&mut self, head: &[u8]) {
        let mut body = BytesMut::with_capacity(64);
        sse_framing::encode_retry(&mut body, millis(self.announced_retry));
        sse_framing::encode_comment(&mut body, "connected");
        body.extend_from_slice(b"\n");
        if let Some(event) = self.control.opening_event() {
            body.extend_from_slice(event);
        }
        let reset = self.sub.take_reset();
        if let Some(reset) = &reset {
            body.extend_from_slice(reset);
        }
        let mut opening = BytesMut::with_capacity(head.len() + body.len() + CHUNK_HEADER_ROOM + 2);
        opening.extend_from_slice(head);
        self.frame_chunk(&mut opening, &body);
        let event = reset.map(|_| self.sub.hub().inner.clock.now());
        self.owe(opening.freeze(), event, None);
    }

    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<StreamReport> {
        // The socket's read side is polled when there is nothing to write (a busy stream
        // learns of a closed client from its next write, which fails at once).
        if !matches!(self.phase, Phase::Closing(_))
            && let Some(reason) = self.must_close(cx)
        {
            self.begin_close(Ending::Closed(reason));
        }
        self.apply_topic_changes();
        for _ in 0..MAX_ROUNDS {
            if matches!(self.phase, Phase::Streaming) && self.sub.is_closing() {
                let spread = self.config.drain_spread.mul_f64(fastrand::f64());
                self.phase = Phase::Draining {
                    close_at: Instant::now() + spread,
                };
            }
            if let Phase::Draining { close_at } = self.phase
                && Instant::now() >= close_at
            {
                self.begin_close(Ending::Shutdown);
            }
            match self.poll_write_owed(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(self.finish(StreamEnd::Io(e))),
                Poll::Ready(Ok(())) => {}
                Poll::Pending => {
                    // Wake up on new frames too: they may make this client a slow one.
                    loop {
                        if let Some(end) = self.check_slow_consumer() {
                            return Poll::Ready(self.finish(end));
                        }
                        if self.sub.poll_pushed(cx).is_pending() {
                            break;
                        }
                    }
                    if let Some(end) = self.poll_input(cx) {
                        return Poll::Ready(self.finish(end));
                    }
                    return self.poll_timer(cx);
                }
            }
            if let Phase::Closing(ending) = self.phase {
                // Everything, the last chunk included, is written.
                let _ = Pin::new(&mut self.io).poll_shutdown(cx);
                let end = match ending {
                    Ending::Shutdown => StreamEnd::Shutdown,
                    Ending::Closed(CloseReason::Revoked) => StreamEnd::Revoked,
                    Ending::Closed(CloseReason::TokenExpired) => StreamEnd::TokenExpired,
                };
                return Poll::Ready(self.finish(end));
            }
            match self.fill(cx) {
                Fill::Frames => continue,
                Fill::Failed(e) => return Poll::Ready(self.finish(StreamEnd::Io(e))),
                Fill::Lost(dropped) => return Poll::Ready(self.cut_slow(dropped)),
                Fill::Idle => {
                    if let Some(end) = self.poll_input(cx) {
                        return Poll::Ready(self.finish(end));
                    }
                    return self.poll_timer(cx);
                }
            }
        }
        // Busy stream: let other tasks run, come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Applies the topic changes asked for through the control (between writes: what is
    /// owed is references to frames, not positions, so nothing owed is affected).
    fn apply_topic_changes(&mut self) {
        for change in self.control.take_changes() {
            self.sub.remove_topics(&change.remove);
            if let Some(add) = change.add {
                self.sub.absorb(add);
            }
            let _ = change.done.send(self.sub.topic_names().cloned().collect());
        }
    }

    /// Whether the stream was closed through its control or its token expired (the
    /// task is woken by a later close).
    fn must_close(&mut self, cx: &Context<'_>) -> Option<CloseReason> {
        if let Some(reason) = self.control.poll_closed(cx) {
            return Some(reason);
        }
        let expired = self
            .control
            .expires_at()
            .is_some_and(|at| Instant::now() >= at);
        if expired && self.control.close(CloseReason::TokenExpired) {
            return Some(CloseReason::TokenExpired);
        }
        self.control.closed()
    }

    /// Reads (and discards) whatever the client sends, to notice it closing.
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Option<StreamEnd> {
        let mut scratch = [0u8; 256];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Pending => return None,
                Poll::Ready(Err(_)) => return Some(StreamEnd::ClientClosed),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    return Some(StreamEnd::ClientClosed);
                }
                Poll::Ready(Ok(())) => {
                    self.input_seen += buf.filled().len();
                    if self.input_seen > MAX_INPUT {
                        return Some(StreamEnd::UnexpectedInput);
                    }
                }
            }
        }
    }

    /// Writes what is owed until nothing is (Ready) or the socket is full (Pending).
    fn poll_write_owed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.owed.is_empty() {
            let result = if self.io.is_write_vectored() {
                let mut slices = [io::IoSlice::new(&[]); OWED_SLICES];
                let n = self.owed.io_slices(&mut slices);
                Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n])
            } else {
                // Copied into the per-thread scratch at write time, a bounded prefix.
                let (io, owed) = (&mut self.io, &self.owed);
                SCRATCH.with(|scratch| {
                    let Ok(mut buf) = scratch.try_borrow_mut() else {
                        // Not reentrant; cannot happen (no await, no callback in between).
                        return Poll::Ready(Err(io::ErrorKind::WouldBlock.into()));
                    };
                    buf.clear();
                    owed.copy_front(&mut buf, OWED_COPY);
                    Pin::new(io).poll_write(cx, &buf)
                })
            };
            match result {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    self.wrote(n);
                    self.settle_owed(n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.blocked_since.get_or_insert_with(Instant::now);
                    return Poll::Pending;
                }
            }
        }
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                self.blocked_since.get_or_insert_with(Instant::now);
                Poll::Pending
            }
        }
    }

    /// The socket took `n` bytes.
    fn wrote(&mut self, n: usize) {
        self.bytes_sent += n as u64;
        self.last_write = Instant::now();
        self.blocked_since = None;
    }

    /// The socket took `n` owed bytes: what they complete is delivered.
    fn settle_owed(&mut self, n: usize) {
        let metrics = self.sub.hub().metrics();
        metrics.pending_bytes.sub(n as i64);
        let now = self.sub.hub().inner.clock.now();
        let mut delivered = 0u64;
        let owed = &mut self.owed;
        metrics.delivery_latency.with_local(|latency| {
            owed.advance(n, |received, claim| {
                latency.observe_nanos(now.saturating_sub(received));
                delivered += 1;
                if let Some(claim) = claim {
                    claim.written(now);
                }
            });
        });
        if delivered > 0 {
            metrics.events_sent.inc_by(delivered);
            self.frames_sent += delivered;
            self.control.add_events_sent(delivered);
        }
        self.control.set_pending_bytes(self.owed.bytes());
    }

    /// Owes `bytes` to the socket, after whatever is owed already (`event`: they end an
    /// event frame received then; `claim`: the stream's share of its fan-out span).
    fn owe(&mut self, bytes: Bytes, event: Option<u64>, claim: Option<Claim>) {
        self.sub
            .hub()
            .metrics()
            .pending_bytes
            .add(bytes.len() as i64);
        self.owed.push(bytes, event, claim);
        self.control.set_pending_bytes(self.owed.bytes());
    }

    /// Moves the next frames from the hub into one batch and writes as much of it as the
    /// socket takes now. The batch is built in a per-thread scratch buffer and written
    /// from there at once; a stream keeps something of its own (references to the
    /// frames) only when its socket is full.
    fn fill(&mut self, cx: &mut Context<'_>) -> Fill {
        debug_assert!(self.owed.is_empty());
        if self.sub.poll_ready(cx).is_pending() {
            return Fill::Idle;
        }
        SCRATCH.with(|scratch| {
            BATCH.with(|batch| {
                let (Ok(mut buf), Ok(mut frames)) =
                    (scratch.try_borrow_mut(), batch.try_borrow_mut())
                else {
                    // Not reentrant; cannot happen (no await, no callback in between).
                    return Fill::Idle;
                };
                frames.clear();
                let fill = self.fill_with(cx, &mut buf, &mut frames);
                frames.clear();
                if buf.capacity() > MAX_SCRATCH {
                    *buf = BytesMut::new();
                }
                fill
            })
        })
    }

    fn fill_with(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut, frames: &mut Frames) -> Fill {
        buf.clear();
        let framed = matches!(self.framing, BodyFraming::Chunked);
        if framed {
            buf.extend_from_slice(&[0; CHUNK_HEADER_ROOM]);
        }
        let drained = self.sub.drain_batch(
            buf,
            frames,
            self.config
                .max_write_frames
                .min(self.config.client_buffer)
                .max(1),
            self.config
                .max_write_bytes
                .min(self.config.client_buffer_bytes),
        );
        if drained.lost > 0 {
            // Everything not yet read is lost to this client, the evicted frames included.
            return Fill::Lost(self.sub.backlog());
        }
        if drained.frames == 0 {
            // Readiness was spurious (or frames above the watermark are still landing).
            cx.waker().wake_by_ref();
            return Fill::Idle;
        }
        // Layout: the chunk-size line (right-aligned in its room), the frames, CRLF.
        let mut start = 0;
        if framed {
            let header = ChunkHeader::new(buf.len() - CHUNK_HEADER_ROOM);
            start = CHUNK_HEADER_ROOM - header.as_bytes().len();
            buf[start..CHUNK_HEADER_ROOM].copy_from_slice(header.as_bytes());
            buf.extend_from_slice(CRLF);
        }
        let mut written = start;
        while written < buf.len() {
            match Pin::new(&mut self.io).poll_write(cx, &buf[written..]) {
                Poll::Ready(Ok(0)) => return Fill::Failed(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    written += n;
                    self.wrote(n);
                }
                Poll::Ready(Err(e)) => return Fill::Failed(e),
                Poll::Pending => {
                    self.blocked_since.get_or_insert_with(Instant::now);
                    break;
                }
            }
        }
        let body_start = if framed { CHUNK_HEADER_ROOM } else { 0 };
        self.settle_batch(buf, body_start, frames, written);
        Fill::Frames
    }

    /// After a batch write that took `buf` up to `written` (`buf` holds the chunk-size
    /// line before `body_start`, then the frames, then the chunk's CRLF): the completed
    /// frames are delivered (and their fan-out claims settled), the rest is owed as
    /// references to the frames.
    fn settle_batch(
        &mut self,
        buf: &BytesMut,
        body_start: usize,
        frames: &mut Frames,
        written: usize,
    ) {
        let metrics = self.sub.hub().metrics();
        let now = self.sub.hub().inner.clock.now();
        // Frames before `complete` are completely written; the next starts at `at`.
        let (complete, mut at) = metrics.delivery_latency.with_local(|latency| {
            let mut at = body_start;
            for (i, mark) in frames.marks.iter().enumerate() {
                if at + mark.len > written {
                    return (i, at);
                }
                latency.observe_nanos(now.saturating_sub(mark.received));
                at += mark.len;
            }
            (frames.marks.len(), at)
        });
        if complete > 0 {
            metrics.events_sent.inc_by(complete as u64);
            self.frames_sent += complete as u64;
            self.control.add_events_sent(complete as u64);
        }
        // Sampled messages written now: their fan-out spans learn it.
        let settled = frames.claims.partition_point(|(i, _)| *i < complete);
        for (_, claim) in frames.claims.drain(..settled) {
            claim.written(now);
        }
        if written == buf.len() {
            return;
        }
        // The socket is full: keep references to what it did not take.
        if written < body_start {
            self.owe(
                Bytes::copy_from_slice(&buf[written..body_start]),
                None,
                None,
            );
        }
        let mut owed = Vec::with_capacity(frames.marks.len() - complete);
        self.sub.handles(frames, complete, |i, handle| {
            let mark = frames.marks[i];
            let skip = written.saturating_sub(at).min(mark.len);
            let bytes = match handle {
                Some(frame) => frame.slice(skip..),
                // Evicted between the drain and now (rare): the bytes from the batch.
                None => Bytes::copy_from_slice(&buf[at + skip..at + mark.len]),
            };
            owed.push((i, bytes, mark.received));
            at += mark.len;
        });
        let mut claims = frames.claims.drain(..).peekable();
        for (i, bytes, received) in owed {
            let claim = claims.next_if(|(at, _)| *at == i).map(|(_, claim)| claim);
            self.owe(bytes, Some(received), claim);
        }
        if matches!(self.framing, BodyFraming::Chunked) {
            let done = written.saturating_sub(at).min(CRLF.len());
            self.owe(Bytes::from_static(&CRLF[done..]), None, None);
        }
    }

    /// With a write pending: cut the client if it is too far behind, in frames or in
    /// bytes (owed to its socket, and in the rings after its cursors).
    fn check_slow_consumer(&mut self) -> Option<StreamEnd> {
        if matches!(self.phase, Phase::Closing(_)) {
            return None;
        }
        let frames = self.sub.backlog() + self.owed.events() as u64;
        let bytes = self.sub.backlog_bytes() + self.owed.bytes() as u64;
        if frames > self.config.client_buffer as u64
            || bytes > self.config.client_buffer_bytes as u64
        {
            return Some(self.slow_end(frames));
        }
        None
    }

    fn cut_slow(&mut self, dropped: u64) -> StreamReport {
        let end = self.slow_end(dropped + self.owed.events() as u64);
        self.finish(end)
    }

    fn slow_end(&mut self, dropped: u64) -> StreamEnd {
        let metrics = self.sub.hub().metrics();
        metrics.slow_consumer_disconnects.inc();
        metrics.dropped_slow_consumer.inc_by(dropped);
        StreamEnd::SlowConsumer { dropped }
    }

    /// Heartbeat, write timeout, the token's expiry and the closing deadline share one
    /// timer.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<StreamReport> {
        loop {
            let heartbeat = self.last_write + self.config.cadence.heartbeat();
            let expiry = self.control.expires_at();
            let deadline = match (&self.phase, self.blocked_since) {
                (_, Some(since)) => since + self.config.write_timeout,
                (Phase::Streaming, None) => heartbeat,
                (Phase::Draining { close_at }, None) => heartbeat.min(*close_at),
                // Closing with nothing blocked cannot wait here; poll() finishes it.
                (Phase::Closing(_), None) => return Poll::Pending,
            };
            let deadline = match (&self.phase, expiry) {
                (Phase::Closing(_), _) | (_, None) => deadline,
                (_, Some(at)) => deadline.min(at),
            };
            // The deadline moves later with every write; re-arming the timer each time
            // would cost a timer-wheel update per write. Only an earlier deadline re-arms
            // it; a timer that fires early is re-armed then.
            if deadline < self.timer.deadline() || self.timer.is_elapsed() {
                self.timer.as_mut().reset(deadline);
                self.timer_registered = false;
            }
            // Registered once per arming: the task's waker does not change.
            if self.timer_registered && !self.timer.is_elapsed() {
                return Poll::Pending;
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                self.timer_registered = true;
                return Poll::Pending;
            }
            self.timer_registered = false;
            if Instant::now() < deadline {
                self.timer.as_mut().reset(deadline);
                continue;
            }
            if let Some(since) = self.blocked_since
                && Instant::now() >= since + self.config.write_timeout
            {
                self.sub.hub().metrics().write_timeouts.inc();
                return Poll::Ready(self.finish(StreamEnd::WriteTimeout));
            }
            if !matches!(self.phase, Phase::Closing(_))
                && expiry.is_some_and(|at| Instant::now() >= at)
            {
                // The token expired: poll() sends the goodbye.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if let Phase::Draining { close_at } = self.phase
                && Instant::now() >= close_at
            {
                // This stream's turn to end: poll() sends the goodbye.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            // Silence for a whole heartbeat: send a comment (after a new `retry:`, when
            // the configuration changed it since this client was told).
            let retry = self.config.cadence.retry();
            if retry == self.announced_retry {
                let heartbeat = match self.framing {
                    BodyFraming::Chunked => HEARTBEAT_CHUNKED,
                    BodyFraming::Raw => HEARTBEAT_RAW,
                };
                self.owe(Bytes::from_static(heartbeat), None, None);
            } else {
                self.announced_retry = retry;
                let mut body = BytesMut::with_capacity(40);
                sse_framing::encode_retry(&mut body, millis(retry));
                sse_framing::encode_comment(&mut body, "heartbeat");
                body.extend_from_slice(b"\n");
                let mut chunk = BytesMut::with_capacity(body.len() + CHUNK_HEADER_ROOM + 2);
                self.frame_chunk(&mut chunk, &body);
                self.owe(chunk.freeze(), None, None);
            }
            match self.poll_write_owed(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(self.finish(StreamEnd::Io(e))),
                Poll::Pending => {}
            }
        }
    }

    /// Queues the goodbye and the end of the body after whatever is pending. On
    /// shutdown the goodbye is a short, jittered `retry:` (clients come back soon, to
    /// another instance, but not all at once); a stream closed for a reason gets
    /// `event: gateway.close` with it first, then the usual `retry:`.
    fn begin_close(&mut self, ending: Ending) {
        self.phase = Phase::Closing(ending);
        let mut body = BytesMut::with_capacity(80);
        let retry = match ending {
            Ending::Shutdown => self.config.drain_retry.mul_f64(0.5 + fastrand::f64()),
            Ending::Closed(reason) => {
                let data = format!(r#"{{"reason":"{}"}}"#, reason.as_str());
                sse_framing::encode_event(&mut body, None, Some(CLOSE_EVENT), &data);
                self.config.cadence.retry()
            }
        };
        sse_framing::encode_retry(&mut body, millis(retry));
        body.extend_from_slice(b"\n");
        let mut goodbye = BytesMut::with_capacity(body.len() + CHUNK_HEADER_ROOM + 7);
        self.frame_chunk(&mut goodbye, &body);
        if let BodyFraming::Chunked = self.framing {
            goodbye.extend_from_slice(b"0\r\n\r\n");
        }
        self.owe(goodbye.freeze(), None, None);
        // A client that stopped reading is still bounded by the write timeout.
    }

    /// Appends `body` to `out` as one chunk (or as is, unframed).
    fn frame_chunk(&self, out: &mut BytesMut, body: &[u8]) {
        if let BodyFraming::Chunked = self.framing {
            out.extend_from_slice(ChunkHeader::new(body.len()).as_bytes());
            out.extend_from_slice(body);
            out.extend_from_slice(CRLF);
        } else {
            out.extend_from_slice(body);
        }
    }

    fn finish(&mut self, end: StreamEnd) -> StreamReport {
        self.forget_owed();
        let end = match end {
            StreamEnd::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                ) =>
            {
                StreamEnd::ClientClosed
            }
            other => other,
        };
        StreamReport {
            end,
            frames_sent: self.frames_sent,
            bytes_sent: self.bytes_sent,
            topics: self.sub.topic_names().cloned().collect(),
        }
    }
}

impl<S> Writer<'_, S> {
    /// What the stream owes its socket (tests).
    #[cfg(test)]
    pub(crate) fn owed(&self) -> &Owed {
        &self.owed
    }

    /// Drops what is owed (the stream ended), out of `sse_pending_bytes`.
    fn forget_owed(&mut self) {
        let owed = std::mem::take(&mut self.owed);
        if owed.bytes() > 0 {
            self.sub
                .hub()
                .metrics()
                .pending_bytes
                .sub(owed.bytes() as i64);
        }
    }
}

impl<S> Drop for Writer<'_, S> {
    fn drop(&mut self) {
        self.forget_owed();
    }
}

enum Fill {
    Frames,
    Failed(io::Error),
    Lost(u64),
    Idle,
}

/// The size line of a chunk, `<hex length>\r\n`, built on the stack.
struct ChunkHeader {
    buf: [u8; 18],
    start: usize,
}

impl ChunkHeader {
    fn new(len: usize) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 18];
        buf[16] = b'\r';
        buf[17] = b'\n';
        let mut start = 16;
        let mut n = len;
        loop {
            start -= 1;
            buf[start] = HEX[n & 0xf];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        Self { buf, start }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
