//! The hub: topics, ingest, subscribe/resume, upstream demand and linger.

use std::cmp::Ordering as By;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::budget::Budget;
use crate::clock::Clock;
use crate::id::{Epoch, IdFormatter, parse_id};
use crate::metrics::HubMetrics;
use crate::replay::{ReplayRequest, ReplaySink};
use crate::ring::Ring;
use crate::seams::Source;
use crate::subscription::{Cursor, Subscription};
use crate::topic::TopicName;

/// The event type of frames the gateway itself emits.
pub const RESET_EVENT: &str = "gateway.reset";

/// Why a client gets a `gateway.reset` frame.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The last event id is older than what the gateway still holds.
    HistoryExpired,
    /// The last event id is from another epoch (an earlier run) or from the future.
    UnknownId,
    /// The last event id is not an id this gateway hands out.
    MalformedId,
    /// Messages may have been lost upstream (NATS reconnect, upstream overflow).
    UpstreamGap,
}

impl ResetReason {
    /// The `reason` value in the frame's JSON data.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HistoryExpired => "history_expired",
            Self::UnknownId => "unknown_id",
            Self::MalformedId => "malformed_id",
            Self::UpstreamGap => "upstream_gap",
        }
    }
}

/// Hub settings, from `[sse]` and `[limits]` of the configuration.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Frames kept per topic for resume.
    pub replay_window: usize,
    /// Frames a client may fall behind while its socket is full before it is cut.
    pub client_buffer: usize,
    /// Encoded bytes a topic's ring may hold (`sse.replay_bytes`).
    pub replay_bytes: usize,
    /// Bytes a client may fall behind while its socket is full before it is cut
    /// (`sse.client_buffer_bytes`).
    pub client_buffer_bytes: usize,
    /// Encoded bytes all rings together may hold (`limits.max_ring_bytes`).
    pub max_ring_bytes: u64,
    /// Active topics (with streams or lingering) at once (`limits.max_topics`).
    pub max_topics: usize,
    /// How long a topic keeps its upstream subscription after its last client left.
    pub topic_linger: Duration,
    /// Streams one topic may have at once.
    pub max_subscribers_per_topic: usize,
    /// Every event frame names its topic in a comment line (`: topic <name>`), which
    /// `EventSource` ignores and a client sharing one stream between several consumers
    /// routes by (`sse.stream_control`).
    pub topic_comments: bool,
}

impl Default for HubConfig {
    /// The defaults of the configuration file (protocol §5 and §10).
    fn default() -> Self {
        Self {
            replay_window: 1024,
            client_buffer: 256,
            replay_bytes: 8 * 1024 * 1024,
            client_buffer_bytes: 4 * 1024 * 1024,
            max_ring_bytes: 1024 * 1024 * 1024,
            max_topics: 100_000,
            topic_linger: Duration::from_secs(30),
            max_subscribers_per_topic: 100_000,
            topic_comments: false,
        }
    }
}

impl HubConfig {
    /// The largest encoded frame the hub takes: one that fits a ring, the rings' total
    /// and a client's byte budget. A larger one could never be held or delivered
    /// without cutting every reader, so it is dropped at ingest.
    pub fn max_frame_bytes(&self) -> usize {
        self.replay_bytes
            .min(self.client_buffer_bytes)
            .min(usize::try_from(self.max_ring_bytes).unwrap_or(usize::MAX))
    }
}

/// Why a stream could not be registered.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// A topic already has `max_subscribers_per_topic` streams.
    #[error("topic {topic} already has {max} subscribers")]
    TopicFull {
        /// The full topic.
        topic: TopicName,
        /// The cap.
        max: usize,
    },
    /// The hub already has `max_topics` active topics and this would add one.
    #[error("the gateway already has {max} active topics")]
    TooManyTopics {
        /// The cap.
        max: usize,
    },
}

/// An event whose encoded frame is larger than the hub takes
/// ([`HubConfig::max_frame_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the event would be {len} bytes once framed (each payload line becomes a \"data: \" line); at most {max} are accepted"
)]
pub struct FrameTooLarge {
    /// The encoded size (counting the longest id the event could get).
    pub len: usize,
    /// The limit.
    pub max: usize,
}

/// A snapshot of one active topic ([`Hub::topic_info`]).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Streams (and publishes in flight) holding it.
    pub subscribers: usize,
    /// Frames in its ring.
    pub ring_frames: usize,
    /// Encoded bytes in its ring.
    pub ring_bytes: u64,
    /// Frame slots its ring has allocated (0 until its first event; shrinks back after
    /// evictions).
    pub ring_slots: usize,
    /// The id of the newest frame in its ring (none while the ring is empty).
    pub last_id: Option<String>,
}

/// A message from upstream, before validation.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Event data; must be UTF-8.
    pub payload: Bytes,
    /// The `Sse-Event` header, if the publisher set one.
    pub event_type: Option<String>,
    /// When the gateway received it, or when it was published when that is known (its
    /// delivery latency is measured from this).
    pub received: Instant,
    /// The sampled trace it belongs to (its `ingest` or `publish` span), if any: the hub
    /// adds a `fanout` span under it for each topic it is stored in (see
    /// `docs/operations.md`, "Tracing with a collector"). `None` costs nothing.
    pub trace: Option<sse_trace::Parent>,
}

/// What [`Hub::ingest`] did with a message.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Stored under this sequence and announced to the topic's readers.
    Stored(u64),
    /// Not UTF-8: dropped and counted.
    InvalidUtf8,
    /// The event type has a line break, is empty or too long, or uses the reserved
    /// `gateway.` prefix: dropped and counted.
    InvalidEventType,
    /// No topic of that name is active (a late message after unsubscribe).
    NoSuchTopic,
    /// Its encoded frame is larger than [`HubConfig::max_frame_bytes`]: dropped and
    /// counted.
    TooLarge,
}

/// The hub's subscriber face: streams subscribe here; operators and shutdown ask it.
/// Cheap to clone; every clone is the same hub. Its ingest face is [`Feed`].
#[derive(Clone, Debug)]
pub struct Hub {
    pub(crate) inner: Arc<Inner>,
}

/// The hub's ingest face: what the bus feeding it calls (messages, the upstream
/// connection's state, confirmations). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Feed {
    pub(crate) hub: Hub,
}

/// The upstream link, as the bus reports it ([`Feed::set_connected`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Link {
    /// Not connected yet.
    Starting = 0,
    /// Connected.
    Up = 1,
    /// Lost after having been up: what is published meanwhile may be lost (core).
    Down = 2,
}

impl Link {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Up,
            2 => Self::Down,
            _ => Self::Starting,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub config: HubConfig,
    /// `max_topics` and `max_subscribers_per_topic` as they are now: a reload changes
    /// them for the next subscription ([`Hub::set_topic_limits`]).
    limits: TopicLimits,
    /// Moments of receipt and delivery as nanoseconds.
    pub clock: Clock,
    pub epoch: RwLock<Epoch>,
    pub metrics: HubMetrics,
    pub topics: Mutex<Topics>,
    /// Topics without streams, by when their linger ends (one entry per topic at most):
    /// the sweeper looks only at what is due, not at every topic.
    pub idle: Mutex<BinaryHeap<Due>>,
    /// Held while a sequence is assigned and its frame pushed, so frames enter the
    /// rings in sequence order; it also guards the rings' byte budget. Nothing slow
    /// happens under it: frames are encoded before, and evicted frames freed after.
    pub ingest: Mutex<IngestState>,
    /// Identifies topics in the budget's front index (names can come back).
    next_topic_id: AtomicU64,
    /// The highest sequence whose frame is in its ring.
    pub watermark: AtomicU64,
    /// What feeds the hub.
    pub source: Source,
    /// A [`Link`].
    pub link: AtomicU8,
    /// A log source: the log position is known and the live reader runs.
    pub log_started: AtomicBool,
    pub closing: AtomicBool,
    /// Bumped when a topic's upstream subscription is confirmed or the connection
    /// state changes; waiters re-check their topics.
    pub readiness: watch::Sender<u64>,
}

/// The caps a reload may change.
#[derive(Debug)]
struct TopicLimits {
    max_topics: AtomicUsize,
    max_subscribers_per_topic: AtomicUsize,
}

/// The active topics, and among them the wildcard ones (for log-mode routing).
#[derive(Debug, Default)]
pub(crate) struct Topics {
    pub by_name: HashMap<TopicName, Arc<Topic>>,
    pub wildcards: Vec<Arc<Topic>>,
}

impl Topics {
    fn insert(&mut self, topic: Arc<Topic>) {
        if topic.name.is_wildcard() {
            self.wildcards.push(topic.clone());
        }
        self.by_name.insert(topic.name.clone(), topic);
    }

    /// Every topic a message on `subject` (a topic name without wildcards) belongs to.
    pub fn matching(&self, subject: &str) -> Vec<Arc<Topic>> {
        let mut found: Vec<Arc<Topic>> = self.by_name.get(subject).cloned().into_iter().collect();
        found.extend(
            self.wildcards
                .iter()
                .filter(|t| crate::topic::matches(t.name.as_str(), subject))
                .cloned(),
        );
        found
    }
}

/// Where an idle-queue entry's topic stands ([`Topic::linger`]).
enum Linger {
    /// Without streams for `topic_linger`: to be dropped.
    Over,
    /// Left again later: its linger now ends then.
    Until(Instant),
    /// Has streams again.
    Taken,
}

/// A topic whose linger ends at `at` unless it is taken again meanwhile.
#[derive(Debug)]
pub(crate) struct Due {
    at: Instant,
    topic: Arc<Topic>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == By::Equal
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<By> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    /// The earliest first out of a (max-)heap.
    fn cmp(&self, other: &Self) -> By {
        other
            .at
            .cmp(&self.at)
            .then_with(|| other.topic.id.cmp(&self.topic.id))
    }
}

#[derive(Debug)]
pub(crate) struct IngestState {
    pub seq: u64,
    pub ids: IdFormatter,
    pub budget: Budget,
}

/// One active topic.
#[derive(Debug)]
pub(crate) struct Topic {
    /// Unique in this hub, never reused.
    pub id: u64,
    pub name: TopicName,
    pub ring: RwLock<Ring>,
    /// Mirror of the ring's head position, for lock-free "anything new?" checks.
    pub head: AtomicU64,
    /// Mirror of the ring's head byte offset, for lock-free "how many bytes behind?".
    pub head_bytes: AtomicU64,
    /// Set under the ingest lock when the hub let the topic go: nothing is pushed into
    /// it any more.
    pub retired: AtomicBool,
    pub notify: Arc<Notify>,
    /// A reset frame is owed to readers before the next upstream frame.
    pub gap_pending: AtomicBool,
    /// Streams reading the topic (cursors on it): a sampled message's fan-out waits for
    /// these.
    pub readers: AtomicU32,
    /// A sampled message's frame has entered the ring: a stream leaving with frames
    /// unread gives its share of their fan-out spans back.
    pub traced: AtomicBool,
    pub meta: Mutex<TopicMeta>,
}

#[derive(Debug)]
pub(crate) struct TopicMeta {
    pub subscribers: usize,
    pub idle_since: Option<Instant>,
    pub upstream_ready: bool,
    /// The topic has an entry in the hub's idle queue.
    pub queued: bool,
}

impl TopicMeta {
    /// Without streams for at least `linger` at `now`.
    fn expired(&self, now: Instant, linger: Duration) -> bool {
        self.subscribers == 0
            && self
                .idle_since
                .is_some_and(|since| now.saturating_duration_since(since) >= linger)
    }
}

impl Topic {
    pub(crate) fn new(
        id: u64,
        name: TopicName,
        capacity: usize,
        max_bytes: u64,
        complete_after: u64,
    ) -> Self {
        Self {
            id,
            name,
            ring: RwLock::new(Ring::new(capacity, max_bytes, complete_after)),
            head: AtomicU64::new(0),
            head_bytes: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            notify: Arc::new(Notify::new()),
            gap_pending: AtomicBool::new(false),
            readers: AtomicU32::new(0),
            traced: AtomicBool::new(false),
            meta: Mutex::new(TopicMeta {
                subscribers: 0,
                idle_since: None,
                upstream_ready: false,
                queued: false,
            }),
        }
    }

    /// Where the topic's linger stands at `now`, for the sweeper. A topic taken again
    /// leaves the idle queue (its next release queues it anew).
    fn linger(&self, now: Instant, linger: Duration) -> Linger {
        let mut meta = self.meta.lock();
        if meta.expired(now, linger) {
            return Linger::Over;
        }
        match (meta.subscribers, meta.idle_since) {
            (0, Some(since)) => Linger::Until(since + linger),
            _ => {
                meta.queued = false;
                Linger::Taken
            }
        }
    }

    /// Releases one subscriber slot (called when a subscription ends); the last one
    /// starts the topic's linger.
    pub(crate) fn release(self: &Arc<Self>, hub: &Inner) {
        let since = {
            let mut meta = self.meta.lock();
            meta.subscribers = meta.subscribers.saturating_sub(1);
            if meta.subscribers > 0 {
                return;
            }
            let now = Instant::now();
            meta.idle_since = Some(now);
            // Already queued: the sweeper finds the new idle time when that entry is due.
            if std::mem::replace(&mut meta.queued, true) {
                None
            } else {
                Some(now)
            }
        };
        // Idle: the ring keeps its frames (for resumes) but gives back spare slots.
        self.ring.write().shrink_to_fit();
        let Some(since) = since else {
            return;
        };
        hub.idle.lock().push(Due {
            at: since + hub.config.topic_linger,
            topic: self.clone(),
        });
    }
}

/// The outcome of matching a `Last-Event-ID` against the hub.
enum Resume {
    Live,
    From(u64),
    /// Durable mode: older than the rings (or not checkable yet): from the log.
    FromLog {
        epoch: String,
        after: u64,
    },
    Reset(ResetReason),
}

impl Inner {
    /// Whether topics are backed by a durable log.
    pub(crate) fn durable(&self) -> bool {
        matches!(self.source, Source::Log(_))
    }

    pub(crate) fn link(&self) -> Link {
        Link::from_u8(self.link.load(Ordering::Acquire))
    }
}

impl Hub {
    /// A hub fed by `source`, whose ids carry `epoch`: its subscriber face and its ingest
    /// face (give the [`Feed`] to the bus behind `source`).
    pub fn new(
        config: HubConfig,
        epoch: Epoch,
        metrics: HubMetrics,
        source: Source,
    ) -> (Hub, Feed) {
        let ids = IdFormatter::new(&epoch);
        let budget = Budget::new(config.max_ring_bytes);
        // Without a broker there is nothing to wait for.
        let link = if matches!(source, Source::Local) {
            Link::Up
        } else {
            Link::Starting
        };
        let limits = TopicLimits {
            max_topics: AtomicUsize::new(config.max_topics),
            max_subscribers_per_topic: AtomicUsize::new(config.max_subscribers_per_topic),
        };
        let hub = Self {
            inner: Arc::new(Inner {
                config,
                limits,
                clock: Clock::new(),
                epoch: RwLock::new(epoch),
                metrics,
                topics: Mutex::new(Topics::default()),
                idle: Mutex::new(BinaryHeap::new()),
                ingest: Mutex::new(IngestState {
                    seq: 0,
                    ids,
                    budget,
                }),
                next_topic_id: AtomicU64::new(1),
                watermark: AtomicU64::new(0),
                source,
                link: AtomicU8::new(link as u8),
                log_started: AtomicBool::new(false),
                closing: AtomicBool::new(false),
                readiness: watch::channel(0).0,
            }),
        };
        let feed = Feed { hub: hub.clone() };
        (hub, feed)
    }

    /// The epoch of this hub's ids.
    pub fn epoch(&self) -> Epoch {
        self.inner.epoch.read().clone()
    }

    /// Changes `max_topics` and `max_subscribers_per_topic` for the subscriptions made
    /// from now on; topics and streams over the new caps stay (a configuration reload).
    pub fn set_topic_limits(&self, max_topics: usize, max_subscribers_per_topic: usize) {
        let limits = &self.inner.limits;
        limits.max_topics.store(max_topics, Ordering::Relaxed);
        limits
            .max_subscribers_per_topic
            .store(max_subscribers_per_topic, Ordering::Relaxed);
    }

    /// The hub's settings as it was built (the topic caps may have changed since; see
    /// [`Hub::set_topic_limits`]).
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// The hub's metric handles.
    pub fn metrics(&self) -> &HubMetrics {
        &self.inner.metrics
    }

    /// Number of topics that currently want an upstream subscription.
    pub fn topic_count(&self) -> usize {
        self.inner.topics.lock().by_name.len()
    }

    /// Number of subscribers of `topic` (0 when it is not active).
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.inner
            .topics
            .lock()
            .by_name
            .get(topic)
            .map_or(0, |t| t.meta.lock().subscribers)
    }

    /// What `topic` holds now, when it is active.
    pub fn topic_info(&self, topic: &str) -> Option<TopicInfo> {
        let topic = self.inner.topics.lock().by_name.get(topic)?.clone();
        Some(self.info_of(&topic, &mut IdFormatter::new(&self.epoch())))
    }

    /// Every active topic and what it holds. The topic table is locked only to copy
    /// out references; each topic is then read under its own locks, one at a time.
    pub fn topics(&self) -> Vec<(TopicName, TopicInfo)> {
        let topics: Vec<Arc<Topic>> = self.inner.topics.lock().by_name.values().cloned().collect();
        let mut ids = IdFormatter::new(&self.epoch());
        topics
            .iter()
            .map(|topic| (topic.name.clone(), self.info_of(topic, &mut ids)))
            .collect()
    }

    fn info_of(&self, topic: &Topic, ids: &mut IdFormatter) -> TopicInfo {
        let subscribers = topic.meta.lock().subscribers;
        let ring = topic.ring.read();
        TopicInfo {
            subscribers,
            ring_frames: ring.len(),
            ring_bytes: ring.held_bytes(),
            ring_slots: ring.slots(),
            last_id: ring.back_seq().map(|seq| ids.format(seq).to_owned()),
        }
    }

    // ----- subscribing -------------------------------------------------------------

    /// Registers a stream for `topics`, resuming after `last_event_id` when given.
    ///
    /// The returned [`Subscription`] is positioned: at the live edge, after the client's
    /// last event (its replay is then pending in the rings), or at the live edge behind a
    /// `gateway.reset` frame when the id cannot be honoured. Dropping it releases the
    /// topics; a topic without subscribers lingers for `topic_linger`.
    pub fn subscribe(
        &self,
        topics: &[TopicName],
        last_event_id: Option<&str>,
    ) -> Result<Subscription, SubscribeError> {
        let inner = &self.inner;
        let mut unique: Vec<TopicName> = Vec::with_capacity(topics.len());
        for t in topics {
            if !unique.contains(t) {
                unique.push(t.clone());
            }
        }
        let mut handles: Vec<Arc<Topic>> = Vec::with_capacity(unique.len());
        for t in &unique {
            match self.acquire(t) {
                Ok(topic) => handles.push(topic),
                Err(e) => {
                    for taken in &handles {
                        taken.release(inner);
                    }
                    self.flush_upstream();
                    return Err(e);
                }
            }
        }
        // All of the stream's new topics are confirmed together.
        self.flush_upstream();

        // Every frame up to the watermark is in its ring; the positions below are
        // computed against it so that all topics of the stream agree.
        let watermark = inner.watermark.load(Ordering::Acquire);
        let durable = inner.durable();
        let epoch = self.epoch();
        let window = inner.config.replay_window;
        let in_rings = |seq: u64| {
            handles
                .iter()
                .all(|t| seq >= t.ring.read().replay_floor(window))
        };
        let resume = match last_event_id.map(|text| (text, parse_id(text))) {
            None => Resume::Live,
            Some((_, None)) => Resume::Reset(ResetReason::MalformedId),
            Some((_, Some(id))) if durable => {
                let started = inner.log_started.load(Ordering::Acquire);
                if started && id.epoch == epoch.as_str() && id.seq <= watermark && in_rings(id.seq)
                {
                    Resume::From(id.seq)
                } else {
                    // The log knows (or will, once reachable) whether it still holds
                    // everything after this id.
                    Resume::FromLog {
                        epoch: id.epoch.to_owned(),
                        after: id.seq,
                    }
                }
            }
            Some((_, Some(id))) if id.epoch != epoch.as_str() || id.seq > watermark => {
                Resume::Reset(ResetReason::UnknownId)
            }
            Some((_, Some(id))) if !in_rings(id.seq) => Resume::Reset(ResetReason::HistoryExpired),
            Some((_, Some(id))) => Resume::From(id.seq),
        };
        let after = match resume {
            Resume::From(seq) => seq,
            Resume::Live | Resume::Reset(_) | Resume::FromLog { .. } => watermark,
        };
        let mut replayed = 0;
        let cursors: Vec<Cursor> = handles
            .into_iter()
            .map(|topic| {
                let (pos, offset) = {
                    let ring = topic.ring.read();
                    let pos = ring.first_pos_after(after);
                    if matches!(resume, Resume::From(_)) {
                        // Frames above the watermark are live, not replayed.
                        replayed += ring.first_pos_after(watermark) - pos;
                    }
                    (pos, ring.offset_of(pos))
                };
                Cursor::new(topic, pos, offset)
            })
            .collect();
        inner.metrics.replayed_events.inc_by(replayed);
        let reset = match resume {
            Resume::Reset(reason) => Some(self.reset_frame(watermark, reason)),
            Resume::Live | Resume::From(_) | Resume::FromLog { .. } => None,
        };
        let mut sub = Subscription::new(self.clone(), cursors, reset, replayed);
        if let (Resume::FromLog { epoch, after }, Source::Log(history)) = (resume, &inner.source) {
            let request = ReplayRequest {
                topics: unique,
                epoch,
                after,
                upto: inner
                    .log_started
                    .load(Ordering::Acquire)
                    .then_some(watermark),
            };
            // The stream waits for the replay before its live frames; the log serves it
            // on a task of its own.
            let (sink, rx) = ReplaySink::channel();
            sub.start_replay(rx);
            tokio::spawn(history.replay(request, sink));
        }
        Ok(sub)
    }

    /// Takes a slot on `name` for the length of a publish (ignoring the subscriber cap).
    pub(crate) fn acquire_for_publish(
        &self,
        name: &TopicName,
    ) -> Result<Arc<Topic>, SubscribeError> {
        if let Some(topic) = self.inner.topics.lock().by_name.get(name) {
            let mut meta = topic.meta.lock();
            meta.subscribers += 1;
            meta.idle_since = None;
            return Ok(topic.clone());
        }
        let topic = self.acquire(name);
        self.flush_upstream();
        topic
    }

    /// Tells the upstream a burst of opens and closes is complete ([`crate::Upstream::flush`]).
    fn flush_upstream(&self) {
        if let Source::Core(upstream) = &self.inner.source {
            upstream.flush();
        }
    }

    /// Gets or creates `name` and takes one subscriber slot on it.
    fn acquire(&self, name: &TopicName) -> Result<Arc<Topic>, SubscribeError> {
        let inner = &self.inner;
        let max = inner
            .limits
            .max_subscribers_per_topic
            .load(Ordering::Relaxed);
        let max_topics = inner.limits.max_topics.load(Ordering::Relaxed);
        let mut topics = inner.topics.lock();
        if let Some(topic) = topics.by_name.get(name) {
            let mut meta = topic.meta.lock();
            if meta.subscribers >= max {
                return Err(SubscribeError::TopicFull {
                    topic: name.clone(),
                    max,
                });
            }
            meta.subscribers += 1;
            meta.idle_since = None;
            return Ok(topic.clone());
        }
        if max == 0 {
            return Err(SubscribeError::TopicFull {
                topic: name.clone(),
                max,
            });
        }
        if topics.by_name.len() >= max_topics {
            return Err(SubscribeError::TooManyTopics { max: max_topics });
        }
        // A new topic knows nothing published before now. With core subscriptions not
        // even at the current watermark (its own upstream subscription is only being
        // made): resuming on it from any existing id is refused. A durable log's live
        // consumer reads every subject, so after the watermark nothing is missed.
        let watermark = inner.watermark.load(Ordering::Acquire);
        let complete_after = if inner.durable() {
            watermark
        } else {
            watermark + 1
        };
        // Live readers need `client_buffer` frames, resumes `replay_window`.
        let capacity = inner.config.replay_window.max(inner.config.client_buffer);
        let topic = Arc::new(Topic::new(
            inner.next_topic_id.fetch_add(1, Ordering::Relaxed),
            name.clone(),
            capacity,
            inner.config.replay_bytes as u64,
            complete_after,
        ));
        topic.meta.lock().subscribers = 1;
        if matches!(inner.source, Source::Core(_)) && inner.link() == Link::Down {
            // Opened during an outage: its readers get the gap when the link is back.
            topic.gap_pending.store(true, Ordering::Release);
        }
        topics.insert(topic.clone());
        inner.metrics.topics_active.set(topics.by_name.len() as i64);
        // Under the topic table's lock: the upstream hears of topics in the order they
        // come and go.
        if let Source::Core(upstream) = &inner.source {
            upstream.open(name);
        }
        drop(topics);
        Ok(topic)
    }

    /// Waits until every topic of `sub` has a confirmed upstream subscription, the
    /// upstream is disconnected (streams are then accepted and kept alive), or `timeout`
    /// passes. Returns whether the subscriptions were confirmed.
    pub async fn wait_upstream(&self, sub: &Subscription, timeout: Duration) -> bool {
        let topics: Vec<Arc<Topic>> = sub.topics().cloned().collect();
        self.wait_ready(&topics, timeout).await
    }

    /// [`Hub::wait_upstream`] for `topics`.
    pub(crate) async fn wait_ready(&self, topics: &[Arc<Topic>], timeout: Duration) -> bool {
        let mut changes = self.inner.readiness.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            if self.inner.link() != Link::Up {
                return false;
            }
            let ready = match self.inner.source {
                Source::Local => true,
                // One reader reads every subject of the log.
                Source::Log(_) => self.inner.log_started.load(Ordering::Acquire),
                Source::Core(_) => topics.iter().all(|t| t.meta.lock().upstream_ready),
            };
            if ready {
                return true;
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    // ----- linger and shutdown -----------------------------------------------------

    /// Drops topics that have had no subscriber for `topic_linger`. Returns how many.
    ///
    /// Looks only at the idle queue's entries that are due (a topic taken again since
    /// its entry was made is skipped, one idle again is queued for its new time), so a
    /// sweep costs what expires, not what is active.
    pub fn sweep(&self, now: Instant) -> usize {
        let inner = &self.inner;
        let linger = inner.config.topic_linger;
        let mut due: Vec<Arc<Topic>> = Vec::new();
        let mut later: Vec<Due> = Vec::new();
        {
            let mut idle = inner.idle.lock();
            while idle.peek().is_some_and(|d| d.at <= now) {
                let Some(Due { topic, .. }) = idle.pop() else {
                    break;
                };
                match topic.linger(now, linger) {
                    Linger::Over => due.push(topic),
                    Linger::Until(at) => later.push(Due { at, topic }),
                    Linger::Taken => {}
                }
            }
            idle.extend(later.drain(..));
        }
        if due.is_empty() {
            return 0;
        }
        let mut removed: Vec<Arc<Topic>> = Vec::with_capacity(due.len());
        {
            let mut topics = inner.topics.lock();
            for topic in due {
                // Taken (and maybe left) again between the two locks?
                match topic.linger(now, linger) {
                    Linger::Over => {
                        if topics
                            .by_name
                            .get(&topic.name)
                            .is_some_and(|t| Arc::ptr_eq(t, &topic))
                        {
                            topics.by_name.remove(&topic.name);
                            removed.push(topic);
                        }
                    }
                    Linger::Until(at) => later.push(Due { at, topic }),
                    Linger::Taken => {}
                }
            }
            if removed.iter().any(|t| t.name.is_wildcard()) {
                topics
                    .wildcards
                    .retain(|t| !removed.iter().any(|r| Arc::ptr_eq(r, t)));
            }
            if topics.by_name.capacity() > 64
                && topics.by_name.len() < topics.by_name.capacity() / 4
            {
                let len = topics.by_name.len();
                topics.by_name.shrink_to(len * 2);
            }
            inner.metrics.topics_active.set(topics.by_name.len() as i64);
            if let Source::Core(upstream) = &inner.source {
                for topic in &removed {
                    tracing::debug!(topic = %topic.name, "topic idle past linger; dropping its upstream subscription");
                    upstream.close(&topic.name);
                }
            }
        }
        if !later.is_empty() {
            inner.idle.lock().extend(later);
        }
        if !removed.is_empty() {
            self.flush_upstream();
            self.retire(&removed);
        }
        removed.len()
    }

    /// Runs [`Hub::sweep`] periodically until the hub closes.
    pub async fn run_linger_sweeper(self) {
        let period = (self.inner.config.topic_linger / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sweep(Instant::now());
        }
    }

    /// Asks every stream to end: their writers send a final `retry:` and close. New
    /// subscriptions made afterwards end at once.
    pub fn close(&self) {
        self.inner.closing.store(true, Ordering::Release);
        for topic in self.all_topics() {
            topic.notify.notify_waiters();
        }
    }

    /// Whether [`Hub::close`] was called.
    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }
}
