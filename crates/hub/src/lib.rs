//! The hub of sse-gateway: topics, replay rings, fan-out and resume.
//!
//! A hub has two faces, made together by [`Hub::new`]: the [`Hub`] that streams
//! subscribe to, and the [`Feed`] the bus feeding it calls. Messages enter through
//! [`Feed::ingest`]; each is validated, given the next hub sequence, encoded ONCE into an
//! SSE frame (`id:`, optional `event:`, `data:` lines) and pushed into its topic's ring, a
//! bounded run of recent frames shared by every stream of the topic. A stream is a
//! [`Subscription`] (one cursor per topic) served by [`serve`], which copies frames from
//! the rings into its socket writes (and, while a socket is full, keeps references to the
//! frames it still owes, not copies). The hub knows neither NATS nor HTTP: it asks its
//! [`Source`] — an [`Upstream`] to (un)subscribe topics, or a [`History`] to replay from a
//! durable log — through the traits of [`seams`], and the gateway hands `serve` a byte
//! stream.
//!
//! ```
//! use std::time::Duration;
//! use sse_hub::{Epoch, Hub, HubConfig, HubMetrics, Incoming, Source, TopicName};
//!
//! let (hub, feed) = Hub::new(
//!     HubConfig {
//!         replay_window: 16,
//!         client_buffer: 8,
//!         topic_linger: Duration::from_secs(30),
//!         ..HubConfig::default()
//!     },
//!     Epoch::new("doc").unwrap(),
//!     HubMetrics::unregistered(),
//!     Source::Local,
//! );
//! let topic = TopicName::parse("orders.42", false).unwrap();
//! let mut sub = hub.subscribe(&[topic.clone()], None).unwrap();
//! feed.ingest(&topic, Incoming {
//!     payload: "hello".into(),
//!     event_type: None,
//!     received: tokio::time::Instant::now(),
//!     trace: None,
//! });
//! let mut out = bytes::BytesMut::new();
//! sub.drain_into(&mut out, 64, 64 * 1024);
//! assert_eq!(&out[..], b"id: doc-1\ndata: hello\n\n");
//! ```
//!
//! # Guarantees
//!
//! ## Ordering
//! Sequences are assigned under one lock and frames enter their rings in sequence order,
//! so a stream sees each topic's frames in upstream arrival order. A stream over several
//! topics gets their frames merged in sequence order, so one id says how far it got on
//! all of them.
//!
//! ## Slow subscribers
//! Nothing is queued per subscriber: the ring is shared, and a subscriber's backlog is its
//! distance behind the ring's head, in frames and in encoded bytes, plus what its socket
//! has not taken of the last batch — held as references to the rings' frames, never as a
//! copy. While its socket is full, a subscriber more than `client_buffer` frames or
//! `client_buffer_bytes` bytes behind is cut and its unsent frames are counted as
//! dropped; a socket that accepts nothing for `write_timeout` is cut too. A subscriber
//! whose unread frames left the ring (the budgets evicted them) is cut the same way.
//! Publishing never waits for a subscriber.
//!
//! ## Replay window
//! A ring holds at most `max(replay_window, client_buffer)` frames and `replay_bytes`
//! encoded bytes; all rings together at most `max_ring_bytes` (the oldest frames across
//! topics go first). A `Last-Event-ID` is honoured when every frame after it, on every
//! topic of the stream, is still held and among the newest `replay_window` frames of its
//! ring; the stream then gets exactly those frames, in order, then live ones. Otherwise
//! the stream starts with one `gateway.reset` frame (`history_expired`, `unknown_id` or
//! `malformed_id`) and goes live — never a silent gap. A topic created now knows nothing
//! of the past, so resuming on it is `history_expired`.
//!
//! ## Memory
//! Whatever is published and however clients read, the hub holds at most
//! `max_ring_bytes` of frames in its rings, and a stream at most `client_buffer_bytes`
//! behind (the frames it still owes are the rings' own, shared by every stream that owes
//! them), so a process serving `n` streams stays under
//! `max_ring_bytes + client_buffer_bytes × n` plus a fixed base (protocol §10). Sizes are
//! encoded sizes. A message whose frame is larger than [`HubConfig::max_frame_bytes`] is
//! dropped at ingest ([`Ingested::TooLarge`]; see [`Hub::check_frame_size`]). At most
//! `max_topics` topics are active.
//!
//! ## Delivery latency
//! Every delivered event is one observation of [`HubMetrics::delivery_latency`], made when
//! its last byte is taken by the socket, counting from [`Incoming::received`] (which the
//! bus sets to the publish time when it knows it).
//!
//! ## Traces
//! A message that carries a sampled trace ([`Incoming::trace`]) gets one `fanout` span per
//! topic it is stored in — never one per stream — counting the streams reading the topic
//! at that moment, and ending when each of them has had the frame written to its socket
//! (the last write is its `last_write` event) or will never have it (cut, gone); at the
//! latest when the frame has left the ring and no stream still owes it. A message
//! without one carries `None`, and nothing is made for it.
//!
//! ## Upstream gaps
//! When the upstream connection drops, every active topic gets one `gateway.reset`
//! `upstream_gap` frame at once (one sequence shared by all topics, so a stream over
//! several topics sees it once); topics opened during the outage get theirs when the
//! connection is back, before any message of the new connection.
//!
//! ## Closing
//! [`Hub::close`] asks every writer to send a final `retry:` and end its stream. One
//! stream is ended through its [`StreamControl`] (an operator's close, or the expiry of
//! the token that authorized it): `event: gateway.close` with the reason, a `retry:`,
//! the end.

mod budget;
mod clock;
mod control;
mod fanout;
mod histogram;
mod hub;
mod id;
mod ingest;
mod metrics;
mod owed;
mod replay;
mod ring;
pub mod seams;
mod subscription;
mod topic;
mod writer;

#[cfg(test)]
mod tests;

pub use control::{CloseReason, StreamControl};
pub use histogram::{HistogramError, Local, MAX_BUCKETS, ShardedHistogram};
pub use hub::{
    Feed, FrameTooLarge, Hub, HubConfig, Incoming, Ingested, RESET_EVENT, ResetReason,
    SubscribeError, TopicInfo,
};
pub use id::{Epoch, EpochError, IdFormatter, ParsedId, parse_id};
pub use ingest::Held;
pub use metrics::HubMetrics;
pub use replay::{ReplayItem, ReplayRequest, ReplaySink, StreamGone};
pub use seams::{History, SeamFuture, Source, Upstream};
pub use subscription::{Drained, Subscription};
pub use topic::{MAX_TOPIC_LEN, TopicError, TopicName};
pub use writer::{BodyFraming, CLOSE_EVENT, Cadence, StreamEnd, StreamReport, WriterConfig, serve};
