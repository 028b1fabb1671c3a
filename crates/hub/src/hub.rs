//! The hub: topics, ingest, subscribe/resume, upstream demand and linger.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::id::{Epoch, IdFormatter, parse_id};
use crate::metrics::HubMetrics;
use crate::ring::{Entry, Ring};
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

/// Hub settings, from `[sse]` of the configuration.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Frames kept per topic for resume.
    pub replay_window: usize,
    /// Frames a client may fall behind while its socket is full before it is cut.
    pub client_buffer: usize,
    /// How long a topic keeps its upstream subscription after its last client left.
    pub topic_linger: Duration,
    /// Streams one topic may have at once.
    pub max_subscribers_per_topic: usize,
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
}

/// A message from upstream, before validation.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Event data; must be UTF-8.
    pub payload: Bytes,
    /// The `Sse-Event` header, if the publisher set one.
    pub event_type: Option<String>,
    /// When the gateway received it.
    pub received: Instant,
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
}

/// The hub. Cheap to clone; every clone is the same hub.
#[derive(Clone, Debug)]
pub struct Hub {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub config: HubConfig,
    pub epoch: Epoch,
    pub metrics: HubMetrics,
    topics: Mutex<HashMap<TopicName, Arc<Topic>>>,
    /// Held while a sequence is assigned and its frame pushed, so frames enter the
    /// rings in sequence order.
    ingest: Mutex<IngestState>,
    /// The highest sequence whose frame is in its ring.
    pub watermark: AtomicU64,
    connected: AtomicBool,
    ever_connected: AtomicBool,
    pub closing: AtomicBool,
    demand: Mutex<HashSet<TopicName>>,
    demand_notify: Notify,
    /// Bumped when a topic's upstream subscription is confirmed or the connection
    /// state changes; waiters re-check their topics.
    readiness: watch::Sender<u64>,
}

#[derive(Debug)]
struct IngestState {
    seq: u64,
    ids: IdFormatter,
}

/// One active topic.
#[derive(Debug)]
pub(crate) struct Topic {
    pub name: TopicName,
    pub ring: RwLock<Ring>,
    /// Mirror of the ring's head position, for lock-free "anything new?" checks.
    pub head: AtomicU64,
    pub notify: Arc<Notify>,
    /// A reset frame is owed to readers before the next upstream frame.
    gap_pending: AtomicBool,
    meta: Mutex<TopicMeta>,
}

#[derive(Debug)]
struct TopicMeta {
    subscribers: usize,
    idle_since: Option<Instant>,
    upstream_ready: bool,
}

impl Topic {
    fn new(name: TopicName, capacity: usize, complete_after: u64) -> Self {
        Self {
            name,
            ring: RwLock::new(Ring::new(capacity, complete_after)),
            head: AtomicU64::new(0),
            notify: Arc::new(Notify::new()),
            gap_pending: AtomicBool::new(false),
            meta: Mutex::new(TopicMeta {
                subscribers: 0,
                idle_since: None,
                upstream_ready: false,
            }),
        }
    }

    fn push(&self, entry: Entry) {
        let mut ring = self.ring.write();
        ring.push(entry);
        self.head.store(ring.head_pos(), Ordering::Release);
    }

    /// Releases one subscriber slot (called when a subscription ends).
    pub(crate) fn release(&self) {
        let mut meta = self.meta.lock();
        meta.subscribers = meta.subscribers.saturating_sub(1);
        if meta.subscribers == 0 {
            meta.idle_since = Some(Instant::now());
        }
    }
}

/// The outcome of matching a `Last-Event-ID` against the hub.
enum Resume {
    Live,
    From(u64),
    Reset(ResetReason),
}

impl Hub {
    /// A hub whose ids carry `epoch`.
    pub fn new(config: HubConfig, epoch: Epoch, metrics: HubMetrics) -> Self {
        let ids = IdFormatter::new(&epoch);
        Self {
            inner: Arc::new(Inner {
                config,
                epoch,
                metrics,
                topics: Mutex::new(HashMap::new()),
                ingest: Mutex::new(IngestState { seq: 0, ids }),
                watermark: AtomicU64::new(0),
                connected: AtomicBool::new(false),
                ever_connected: AtomicBool::new(false),
                closing: AtomicBool::new(false),
                demand: Mutex::new(HashSet::new()),
                demand_notify: Notify::new(),
                readiness: watch::channel(0).0,
            }),
        }
    }

    /// The epoch of this hub's ids.
    pub fn epoch(&self) -> &Epoch {
        &self.inner.epoch
    }

    /// The hub's settings.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// The hub's metric handles.
    pub fn metrics(&self) -> &HubMetrics {
        &self.inner.metrics
    }

    /// Number of topics that currently want an upstream subscription.
    pub fn topic_count(&self) -> usize {
        self.inner.topics.lock().len()
    }

    /// Number of subscribers of `topic` (0 when it is not active).
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.inner
            .topics
            .lock()
            .get(topic)
            .map_or(0, |t| t.meta.lock().subscribers)
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
                        taken.release();
                    }
                    return Err(e);
                }
            }
        }

        // Every frame up to the watermark is in its ring; the positions below are
        // computed against it so that all topics of the stream agree.
        let watermark = inner.watermark.load(Ordering::Acquire);
        let mut resume = match last_event_id {
            None => Resume::Live,
            Some(text) => match parse_id(text) {
                None => Resume::Reset(ResetReason::MalformedId),
                Some(id) if id.epoch != inner.epoch.as_str() || id.seq > watermark => {
                    Resume::Reset(ResetReason::UnknownId)
                }
                Some(id) => Resume::From(id.seq),
            },
        };
        if let Resume::From(seq) = resume {
            let window = inner.config.replay_window;
            if handles
                .iter()
                .any(|t| seq < t.ring.read().replay_floor(window))
            {
                resume = Resume::Reset(ResetReason::HistoryExpired);
            }
        }
        let after = match resume {
            Resume::From(seq) => seq,
            Resume::Live | Resume::Reset(_) => watermark,
        };
        let mut replayed = 0;
        let cursors = handles
            .into_iter()
            .map(|topic| {
                let pos = {
                    let ring = topic.ring.read();
                    let pos = ring.first_pos_after(after);
                    if matches!(resume, Resume::From(_)) {
                        // Frames above the watermark are live, not replayed.
                        replayed += ring.first_pos_after(watermark) - pos;
                    }
                    pos
                };
                Cursor::new(topic, pos)
            })
            .collect();
        inner.metrics.replayed_events.inc_by(replayed);
        let reset = match resume {
            Resume::Reset(reason) => Some(self.reset_frame(watermark, reason)),
            Resume::Live | Resume::From(_) => None,
        };
        Ok(Subscription::new(self.clone(), cursors, reset, replayed))
    }

    /// Gets or creates `name` and takes one subscriber slot on it.
    fn acquire(&self, name: &TopicName) -> Result<Arc<Topic>, SubscribeError> {
        let inner = &self.inner;
        let max = inner.config.max_subscribers_per_topic;
        let mut topics = inner.topics.lock();
        if let Some(topic) = topics.get(name) {
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
        // A new topic knows nothing published before now, not even at the current
        // watermark: resuming on it from any existing id must be refused.
        let complete_after = inner.watermark.load(Ordering::Acquire) + 1;
        let capacity = inner.config.replay_window.max(inner.config.client_buffer);
        let topic = Arc::new(Topic::new(name.clone(), capacity, complete_after));
        topic.meta.lock().subscribers = 1;
        if !inner.connected.load(Ordering::Acquire) && inner.ever_connected.load(Ordering::Acquire)
        {
            topic.gap_pending.store(true, Ordering::Release);
        }
        topics.insert(name.clone(), topic.clone());
        inner.metrics.topics_active.set(topics.len() as i64);
        drop(topics);
        self.mark_demand(name);
        Ok(topic)
    }

    /// Waits until every topic of `sub` has a confirmed upstream subscription, the
    /// upstream is disconnected (streams are then accepted and kept alive), or `timeout`
    /// passes. Returns whether the subscriptions were confirmed.
    pub async fn wait_upstream(&self, sub: &Subscription, timeout: Duration) -> bool {
        let mut changes = self.inner.readiness.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            if !self.inner.connected.load(Ordering::Acquire) {
                return false;
            }
            if sub.topics().all(|t| t.meta.lock().upstream_ready) {
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

    // ----- ingest ------------------------------------------------------------------

    /// Validates, encodes once and stores an upstream message for `topic`, then wakes
    /// the topic's readers.
    pub fn ingest(&self, topic: &TopicName, msg: Incoming) -> Ingested {
        let inner = &self.inner;
        let metrics = &inner.metrics;
        metrics.upstream_messages.inc();
        let Ok(data) = std::str::from_utf8(&msg.payload) else {
            metrics.dropped_invalid_utf8.inc();
            return Ingested::InvalidUtf8;
        };
        if let Some(event) = msg.event_type.as_deref()
            && (sse_framing::validate_event_type(event).is_err() || event.starts_with("gateway."))
        {
            metrics.dropped_invalid_event_type.inc();
            return Ingested::InvalidEventType;
        }
        let Some(topic) = inner.topics.lock().get(topic).cloned() else {
            return Ingested::NoSuchTopic;
        };
        if topic.gap_pending.load(Ordering::Acquire) {
            // The first message after an outage: its reset frame goes first.
            self.push_gaps(self.all_topics(), true);
        }
        let seq = {
            let mut ingest = inner.ingest.lock();
            ingest.seq += 1;
            let seq = ingest.seq;
            let id = ingest.ids.format(seq);
            let mut frame = BytesMut::with_capacity(sse_framing::encoded_event_len(
                Some(id),
                msg.event_type.as_deref(),
                data,
            ));
            sse_framing::encode_event(&mut frame, Some(id), msg.event_type.as_deref(), data);
            topic.push(Entry {
                seq,
                frame: frame.freeze(),
                received: msg.received,
            });
            inner.watermark.store(seq, Ordering::Release);
            seq
        };
        topic.notify.notify_waiters();
        Ingested::Stored(seq)
    }

    /// Puts a `gateway.reset` `upstream_gap` frame into every active topic now (upstream
    /// reported lost messages, e.g. a slow-consumer drop inside the NATS client).
    pub fn upstream_gap(&self) {
        self.push_gaps(self.all_topics(), false);
    }

    fn all_topics(&self) -> Vec<Arc<Topic>> {
        self.inner.topics.lock().values().cloned().collect()
    }

    /// Pushes ONE reset frame, under one sequence, into each of `topics` (only those
    /// owing one when `owed_only`), so a stream over several of them gets one reset per
    /// cause.
    fn push_gaps(&self, topics: Vec<Arc<Topic>>, owed_only: bool) {
        let inner = &self.inner;
        let mut woken = Vec::new();
        {
            let mut ingest = inner.ingest.lock();
            let mut entry = None;
            for topic in topics {
                let owed = topic.gap_pending.swap(false, Ordering::AcqRel);
                if owed_only && !owed {
                    continue;
                }
                let entry = entry.get_or_insert_with(|| {
                    ingest.reset_entry(ResetReason::UpstreamGap, Instant::now())
                });
                topic.push(entry.clone());
                woken.push(topic);
            }
            inner.watermark.store(ingest.seq, Ordering::Release);
        }
        for topic in woken {
            topic.notify.notify_waiters();
        }
    }

    /// The frame that tells a client its history could not be honoured; its id is the
    /// position the client's stream continues from.
    fn reset_frame(&self, seq: u64, reason: ResetReason) -> Bytes {
        let mut ids = IdFormatter::new(&self.inner.epoch);
        encode_reset(ids.format(seq), reason)
    }

    // ----- upstream connection -----------------------------------------------------

    /// Records whether the upstream (NATS) connection is up.
    ///
    /// Losing it puts one `upstream_gap` reset into every active topic at once; topics
    /// opened while it is down get theirs when it is back (or before their first
    /// message, whichever comes first). Clients thus see the reset before any event of
    /// the new connection.
    pub fn set_connected(&self, connected: bool) {
        let inner = &self.inner;
        let was = inner.connected.swap(connected, Ordering::AcqRel);
        if connected {
            inner.ever_connected.store(true, Ordering::Release);
            // Topics opened during the outage owe their readers a reset.
            self.push_gaps(self.all_topics(), true);
        } else if was {
            // Whatever is published until the new connection is up may be lost: say so
            // now, ahead of any message of the new connection.
            self.push_gaps(self.all_topics(), false);
        }
        inner.readiness.send_modify(|v| *v += 1);
    }

    /// Whether the upstream connection is up.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    /// Records that `topic`'s upstream subscription is in place: messages published from
    /// now on reach the hub.
    pub fn upstream_ready(&self, topic: &TopicName) {
        if let Some(t) = self.inner.topics.lock().get(topic) {
            t.meta.lock().upstream_ready = true;
        }
        self.inner.readiness.send_modify(|v| *v += 1);
    }

    // ----- upstream demand ---------------------------------------------------------

    fn mark_demand(&self, topic: &TopicName) {
        self.inner.demand.lock().insert(topic.clone());
        self.inner.demand_notify.notify_one();
    }

    /// Resolves when [`Hub::take_demand_changes`] has something to return.
    pub async fn demand_changed(&self) {
        self.inner.demand_notify.notified().await;
    }

    /// Topics whose wish for an upstream subscription may have changed since the last
    /// call; ask [`Hub::wants`] for the current wish of each.
    pub fn take_demand_changes(&self) -> Vec<TopicName> {
        self.inner.demand.lock().drain().collect()
    }

    /// Whether `topic` wants an upstream subscription now.
    pub fn wants(&self, topic: &TopicName) -> bool {
        self.inner.topics.lock().contains_key(topic)
    }

    /// Every topic that wants an upstream subscription now.
    pub fn wanted_topics(&self) -> Vec<TopicName> {
        self.inner.topics.lock().keys().cloned().collect()
    }

    // ----- linger and shutdown -----------------------------------------------------

    /// Drops topics that have had no subscriber for `topic_linger`. Returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let inner = &self.inner;
        let linger = inner.config.topic_linger;
        let mut removed = Vec::new();
        {
            let mut topics = inner.topics.lock();
            topics.retain(|name, topic| {
                let meta = topic.meta.lock();
                let expired = meta.subscribers == 0
                    && meta
                        .idle_since
                        .is_some_and(|since| now.duration_since(since) >= linger);
                if expired {
                    removed.push(name.clone());
                }
                !expired
            });
            inner.metrics.topics_active.set(topics.len() as i64);
        }
        for name in &removed {
            tracing::debug!(topic = %name, "topic idle past linger; dropping its upstream subscription");
            self.mark_demand(name);
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
        let topics: Vec<Arc<Topic>> = self.inner.topics.lock().values().cloned().collect();
        for topic in topics {
            topic.notify.notify_waiters();
        }
    }

    /// Whether [`Hub::close`] was called.
    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }
}

impl IngestState {
    fn reset_entry(&mut self, reason: ResetReason, received: Instant) -> Entry {
        self.seq += 1;
        let seq = self.seq;
        Entry {
            seq,
            frame: encode_reset(self.ids.format(seq), reason),
            received,
        }
    }
}

fn encode_reset(id: &str, reason: ResetReason) -> Bytes {
    let data = format!(r#"{{"reason":"{}"}}"#, reason.as_str());
    let mut frame = BytesMut::with_capacity(sse_framing::encoded_event_len(
        Some(id),
        Some(RESET_EVENT),
        &data,
    ));
    sse_framing::encode_event(&mut frame, Some(id), Some(RESET_EVENT), &data);
    frame.freeze()
}
