//! Ingest: upstream messages into the rings, and what the upstream connection's state
//! means for the streams.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Buf, Bytes, BytesMut};

use crate::fanout::Fanout;
use crate::hub::{
    Feed, FrameTooLarge, Hub, Incoming, IngestState, Ingested, Link, RESET_EVENT, ResetReason,
    SubscribeError, Topic,
};
use crate::id::{Epoch, IdFormatter};
use crate::ring::Entry;
use crate::seams::Source;
use crate::topic::TopicName;

impl Hub {
    /// Checks a message before anything is stored: the payload must be UTF-8, the event
    /// type a usable SSE field not in the reserved `gateway.` namespace.
    fn validate<'m>(&self, msg: &'m Incoming) -> Result<&'m str, Ingested> {
        let metrics = &self.inner.metrics;
        let Ok(data) = std::str::from_utf8(&msg.payload) else {
            metrics.dropped_invalid_utf8.inc();
            return Err(Ingested::InvalidUtf8);
        };
        if let Some(event) = msg.event_type.as_deref()
            && !is_publisher_event_type(event)
        {
            metrics.dropped_invalid_event_type.inc();
            return Err(Ingested::InvalidEventType);
        }
        Ok(data)
    }

    /// Whether an event with this data and type fits the hub's budgets once framed
    /// ([`crate::HubConfig::max_frame_bytes`]); computed without encoding, counting the
    /// longest id any event can get. The publish API asks before publishing (413).
    pub fn check_frame_size(
        &self,
        data: &str,
        event_type: Option<&str>,
    ) -> Result<usize, FrameTooLarge> {
        // The longest topic comment the frame may get.
        let comment = if self.inner.config.topic_comments {
            TOPIC_COMMENT.len() + sse_topic::MAX_TOPIC_LEN + 1
        } else {
            0
        };
        self.frame_size(comment + sse_framing::encoded_event_len(None, event_type, data))
    }

    /// The topic comment of a frame of `topic`, when frames carry one.
    fn topic_comment<'t>(&self, topic: &'t str) -> Option<&'t str> {
        self.inner.config.topic_comments.then_some(topic)
    }

    /// The largest size a frame of `body` bytes (all but the id line) can have, if the
    /// hub takes it.
    fn frame_size(&self, body: usize) -> Result<usize, FrameTooLarge> {
        let len = body + MAX_ID_LINE;
        let max = self.inner.config.max_frame_bytes();
        if len > max {
            Err(FrameTooLarge { len, max })
        } else {
            Ok(len)
        }
    }

    /// Checks a validated message's frame size and, when it is large, encodes it (all
    /// but its `id:` line) now, outside the ingest lock; `None` (counted and logged)
    /// when it is larger than the hub takes.
    fn prepare(&self, topic: &str, msg: &Incoming, data: &str, seq_hint: u64) -> Option<Prepared> {
        let event = msg.event_type.as_deref();
        let comment = self.topic_comment(topic);
        let body = comment_len(comment) + sse_framing::encoded_event_len(None, event, data);
        if let Err(e) = self.frame_size(body) {
            self.inner.metrics.dropped_too_large.inc();
            tracing::debug!(
                topic,
                len = e.len,
                max = e.max,
                "dropped a message too large for the budgets"
            );
            return None;
        }
        if body < ENCODE_BEFORE_LOCK {
            return Some(Prepared::Small);
        }
        let epoch_len = self.inner.epoch.read().as_str().len();
        Some(Prepared::Large(Unnumbered::encode(
            epoch_len, seq_hint, body, comment, event, data,
        )))
    }

    pub(crate) fn all_topics(&self) -> Vec<Arc<Topic>> {
        self.inner.topics.lock().by_name.values().cloned().collect()
    }

    /// Pushes ONE reset frame, under one sequence, into each of `topics` (only those
    /// owing one when `owed_only`), so a stream over several of them gets one reset per
    /// cause.
    fn push_gaps(&self, topics: Vec<Arc<Topic>>, owed_only: bool) {
        let inner = &self.inner;
        let mut woken = Vec::new();
        let mut graveyard = Graveyard::take();
        {
            let mut ingest = inner.ingest.lock();
            let mut entry = None;
            for topic in topics {
                let owed = topic.gap_pending.swap(false, Ordering::AcqRel);
                if (owed_only && !owed) || topic.retired.load(Ordering::Acquire) {
                    continue;
                }
                let entry = entry
                    .get_or_insert_with(|| {
                        ingest.reset_entry(ResetReason::UpstreamGap, inner.clock.now())
                    })
                    .clone();
                ingest.budget.push(&topic, entry, &mut graveyard);
                woken.push(topic);
            }
            inner.metrics.ring_bytes.set(gauge(ingest.budget.total()));
            inner.watermark.store(ingest.seq, Ordering::Release);
        }
        graveyard.bury();
        for topic in woken {
            topic.notify.notify_waiters();
        }
    }

    /// Starts the fan-out span of a sampled message stored in `topic`, waiting for the
    /// streams reading it now (`None`: no stream, the span already ended).
    fn start_fanout(&self, parent: &sse_trace::Parent, topic: &Topic) -> Option<Arc<Fanout>> {
        let streams = topic.readers.load(Ordering::Acquire);
        let fanout = Fanout::start(parent, topic.name.as_str(), streams, self.inner.clock)?;
        topic.traced.store(true, Ordering::Release);
        Some(fanout)
    }

    /// The frame that tells a client its history could not be honoured; its id is the
    /// position the client's stream continues from.
    pub(crate) fn reset_frame(&self, seq: u64, reason: ResetReason) -> Bytes {
        let mut ids = IdFormatter::new(&self.epoch());
        encode_reset(ids.format(seq), reason)
    }

    /// Whether the upstream connection is up (always, without a broker).
    pub fn is_connected(&self) -> bool {
        self.inner.link() == Link::Up
    }

    // ----- publishing through this gateway --------------------------------------------

    // ----- durable log -------------------------------------------------------------

    /// Forgets the rings of topics the hub let go: their bytes leave the budget now, and
    /// a message still on its way to one of them is not stored.
    pub(crate) fn retire(&self, topics: &[Arc<Topic>]) {
        let mut graveyard = Graveyard::take();
        {
            let mut ingest = self.inner.ingest.lock();
            for topic in topics {
                topic.retired.store(true, Ordering::Release);
                ingest.budget.clear(topic, 0, &mut graveyard);
            }
            self.inner
                .metrics
                .ring_bytes
                .set(gauge(ingest.budget.total()));
        }
        graveyard.bury();
    }

    /// Encoded bytes held by all rings (`sse_ring_bytes`).
    pub fn ring_bytes(&self) -> u64 {
        self.inner.ingest.lock().budget.total()
    }

    /// Encodes a frame of this hub's epoch for `topic` (replays from a durable log).
    pub(crate) fn encode_logged(&self, seq: u64, topic: &str, msg: &Incoming) -> Option<Bytes> {
        let data = std::str::from_utf8(&msg.payload).ok()?;
        if msg
            .event_type
            .as_deref()
            .is_some_and(|e| !is_publisher_event_type(e))
        {
            return None;
        }
        let mut ids = IdFormatter::new(&self.epoch());
        let comment = self.topic_comment(topic);
        Some(encode_event(
            &mut ids,
            seq,
            comment,
            msg.event_type.as_deref(),
            data,
        ))
    }
}

impl Feed {
    /// Validates, encodes once and stores an upstream message for `topic`, then wakes
    /// the topic's readers.
    pub fn ingest(&self, topic: &TopicName, msg: Incoming) -> Ingested {
        self.ingest_named(topic.as_str(), msg)
    }

    /// [`Feed::ingest`] by the topic's name as text (a message of a topic family, named
    /// by its subject): a name no active topic has is [`Ingested::NoSuchTopic`].
    pub fn ingest_named(&self, topic: &str, msg: Incoming) -> Ingested {
        let inner = &self.hub.inner;
        inner.metrics.upstream_messages.inc();
        let data = match self.hub.validate(&msg) {
            Ok(data) => data,
            Err(outcome) => return outcome,
        };
        let Some(topic) = inner.topics.lock().by_name.get(topic).cloned() else {
            return Ingested::NoSuchTopic;
        };
        let seq_hint = inner.watermark.load(Ordering::Acquire) + 1;
        let Some(body) = self.hub.prepare(topic.name.as_str(), &msg, data, seq_hint) else {
            return Ingested::TooLarge;
        };
        if topic.gap_pending.load(Ordering::Acquire) {
            // The first message after an outage: its reset frame goes first.
            self.hub.push_gaps(self.hub.all_topics(), true);
        }
        let received = inner.clock.nanos(msg.received);
        // A sampled message's fan-out span starts now (made outside the lock).
        let mut trace = msg
            .trace
            .as_ref()
            .and_then(|parent| self.hub.start_fanout(parent, &topic));
        let mut graveyard = Graveyard::take();
        let seq = {
            let mut ingest = inner.ingest.lock();
            if topic.retired.load(Ordering::Acquire) {
                return Ingested::NoSuchTopic;
            }
            ingest.seq += 1;
            let seq = ingest.seq;
            let comment = self.hub.topic_comment(topic.name.as_str());
            let frame = body.frame(&mut ingest.ids, seq, comment, &msg, data);
            let entry = Entry {
                seq,
                frame,
                received,
                trace: trace.take(),
            };
            ingest.budget.push(&topic, entry, &mut graveyard);
            inner.metrics.ring_bytes.set(gauge(ingest.budget.total()));
            inner.watermark.store(seq, Ordering::Release);
            seq
        };
        graveyard.bury();
        topic.notify.notify_waiters();
        Ingested::Stored(seq)
    }

    /// Puts a `gateway.reset` `upstream_gap` frame into every active topic now (upstream
    /// reported lost messages, e.g. a slow-consumer drop inside the NATS client).
    pub fn upstream_gap(&self) {
        self.hub.push_gaps(self.hub.all_topics(), false);
    }

    /// Records whether the upstream (NATS) connection is up.
    ///
    /// Losing it puts one `upstream_gap` reset into every active topic at once; topics
    /// opened while it is down get theirs when it is back (or before their first
    /// message, whichever comes first). Clients thus see the reset before any event of
    /// the new connection.
    pub fn set_connected(&self, connected: bool) {
        let inner = &self.hub.inner;
        let now = if connected { Link::Up } else { Link::Down };
        let was = Link::from_u8(inner.link.swap(now as u8, Ordering::AcqRel));
        match (&inner.source, was, now) {
            // A durable log's reader resumes where it stopped: nothing is lost. Without
            // a broker there is no connection to lose.
            (Source::Log(_) | Source::Local, ..) => {}
            // Topics opened during the outage owe their readers a reset.
            (Source::Core(_), _, Link::Up) => self.hub.push_gaps(self.hub.all_topics(), true),
            // Whatever is published until the new connection is up may be lost: say so
            // now, ahead of any message of the new connection.
            (Source::Core(_), Link::Up, _) => self.hub.push_gaps(self.hub.all_topics(), false),
            (Source::Core(_), ..) => {}
        }
        inner.readiness.send_modify(|v| *v += 1);
    }

    /// Durable mode: the last log position read (0 before the log started).
    pub fn log_position(&self) -> u64 {
        self.hub.inner.watermark.load(Ordering::Acquire)
    }

    /// Records that `topic`'s upstream subscription is in place: messages published from
    /// now on reach the hub.
    pub fn upstream_ready(&self, topic: &TopicName) {
        self.upstream_ready_many(std::slice::from_ref(topic));
    }

    /// [`Feed::upstream_ready`] for several topics at once (one confirmation round trip
    /// covered them all): their waiting streams are woken once.
    pub fn upstream_ready_many(&self, topics: &[TopicName]) {
        {
            let table = self.hub.inner.topics.lock();
            for topic in topics {
                if let Some(t) = table.by_name.get(topic) {
                    t.meta.lock().upstream_ready = true;
                }
            }
        }
        self.hub.inner.readiness.send_modify(|v| *v += 1);
    }

    /// Embedded mode: stores a message published to this process directly, creating the
    /// topic if needed (it then lingers like any topic, so a client resuming soon after
    /// still gets the message). Returns what happened and, when stored, the event id.
    /// Creating the topic counts against `max_topics`.
    pub fn publish_local(
        &self,
        topic: &TopicName,
        msg: Incoming,
    ) -> Result<(Ingested, Option<String>), SubscribeError> {
        let held = self.hold(topic)?;
        let outcome = self.ingest(topic, msg);
        drop(held);
        let id = match outcome {
            Ingested::Stored(seq) => Some(self.event_id(seq)),
            _ => None,
        };
        Ok((outcome, id))
    }

    /// Keeps `topic` active (creating it, counted against `max_topics`, not against its
    /// subscriber cap) while the returned guard lives: a publish through this process
    /// holds it until its message comes back from upstream.
    pub fn hold(&self, topic: &TopicName) -> Result<Held, SubscribeError> {
        Ok(Held {
            topic: self.hub.acquire_for_publish(topic)?,
            hub: self.hub.clone(),
        })
    }

    /// Waits until `held`'s upstream subscription is confirmed (see
    /// [`Hub::wait_upstream`]); `false` when the upstream is down or after `timeout`.
    pub async fn wait_held(&self, held: &Held, timeout: std::time::Duration) -> bool {
        self.hub
            .wait_ready(std::slice::from_ref(&held.topic), timeout)
            .await
    }

    /// The epoch of this hub's ids.
    pub fn epoch(&self) -> Epoch {
        self.hub.epoch()
    }

    /// Whether the upstream connection is up (always, without a broker).
    pub fn is_connected(&self) -> bool {
        self.hub.is_connected()
    }

    /// The event id of sequence `seq` in this hub's epoch.
    pub fn event_id(&self, seq: u64) -> String {
        IdFormatter::new(&self.hub.epoch()).format(seq).to_owned()
    }

    /// Durable mode: the live consumer starts reading the log after position
    /// `last_seq`, whose ids carry `epoch`. Streams opened before see everything after
    /// it; resumes older than it are replayed from the log.
    pub fn start_log(&self, epoch: Epoch, last_seq: u64) {
        let inner = &self.hub.inner;
        let mut graveyard = Graveyard::take();
        {
            let mut ingest = inner.ingest.lock();
            let changed = *inner.epoch.read() != epoch;
            if changed {
                tracing::info!(%epoch, last_seq, "event ids follow the log");
                ingest.ids = IdFormatter::new(&epoch);
                *inner.epoch.write() = epoch;
                for topic in self.hub.all_topics() {
                    ingest.budget.clear(&topic, last_seq, &mut graveyard);
                }
                inner.metrics.ring_bytes.set(gauge(ingest.budget.total()));
            }
            if changed || last_seq > ingest.seq {
                ingest.seq = last_seq;
                inner.watermark.store(last_seq, Ordering::Release);
            }
        }
        graveyard.bury();
        inner.log_started.store(true, Ordering::Release);
        inner.readiness.send_modify(|v| *v += 1);
    }

    /// Durable mode: the message at log position `seq`, published on `subject` (a topic
    /// name without wildcards), goes into every active topic it matches — wildcard
    /// topics included — encoded once with id `<epoch>-<seq>`.
    pub fn ingest_logged(&self, subject: &str, seq: u64, msg: Incoming) -> Ingested {
        let inner = &self.hub.inner;
        inner.metrics.upstream_messages.inc();
        let topics = inner.topics.lock().matching(subject);
        let body = match self.hub.validate(&msg) {
            Err(outcome) => Err(outcome),
            Ok(_) if topics.is_empty() => Err(Ingested::NoSuchTopic),
            Ok(data) => self
                .hub
                .prepare(subject, &msg, data, seq)
                .map(|body| (body, data))
                .ok_or(Ingested::TooLarge),
        };
        // Sampled: one fan-out span per topic, started outside the lock.
        let mut traces = match (&msg.trace, &body) {
            (Some(parent), Ok(_)) => topics
                .iter()
                .map(|topic| self.hub.start_fanout(parent, topic))
                .collect(),
            _ => Vec::new(),
        };
        let mut graveyard = Graveyard::take();
        let mut ingest = inner.ingest.lock();
        if seq <= ingest.seq {
            // Already seen (a consumer redelivered after recovering).
            return Ingested::NoSuchTopic;
        }
        ingest.seq = seq;
        let outcome = match body {
            Err(outcome) => outcome,
            Ok((body, data)) => {
                let comment = self.hub.topic_comment(subject);
                let frame = body.frame(&mut ingest.ids, seq, comment, &msg, data);
                for (i, topic) in topics.iter().enumerate() {
                    if topic.retired.load(Ordering::Acquire) {
                        continue;
                    }
                    let entry = Entry {
                        seq,
                        frame: frame.clone(),
                        received: inner.clock.nanos(msg.received),
                        trace: traces.get_mut(i).and_then(Option::take),
                    };
                    ingest.budget.push(topic, entry, &mut graveyard);
                }
                inner.metrics.ring_bytes.set(gauge(ingest.budget.total()));
                Ingested::Stored(seq)
            }
        };
        // Positions without a frame still move the watermark: new streams start after
        // them and resumes from them are exact.
        inner.watermark.store(seq, Ordering::Release);
        drop(ingest);
        graveyard.bury();
        if let Ingested::Stored(_) = outcome {
            for topic in &topics {
                topic.notify.notify_waiters();
            }
        }
        outcome
    }
}

/// A topic kept active by [`Feed::hold`]; released when dropped.
#[derive(Debug)]
pub struct Held {
    topic: Arc<Topic>,
    hub: Hub,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.topic.release(&self.hub.inner);
    }
}

/// Whether a publisher may use `event` as an event type.
fn is_publisher_event_type(event: &str) -> bool {
    sse_topic::check_publisher_event_type(event).is_ok()
}

/// The comment line naming a frame's topic: `: topic <name>`.
const TOPIC_COMMENT: &str = ": topic ";

fn comment_len(topic: Option<&str>) -> usize {
    topic.map_or(0, |t| TOPIC_COMMENT.len() + t.len() + 1)
}

/// Appends `: topic <name>` when there is a topic to name.
fn put_topic_comment(out: &mut BytesMut, topic: Option<&str>) {
    if let Some(topic) = topic {
        out.extend_from_slice(TOPIC_COMMENT.as_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.extend_from_slice(b"\n");
    }
}

/// One event frame: `id: <epoch>-<seq>`, the topic comment when given, optional
/// `event:`, `data:` lines.
pub(crate) fn encode_event(
    ids: &mut IdFormatter,
    seq: u64,
    topic: Option<&str>,
    event: Option<&str>,
    data: &str,
) -> Bytes {
    let id = ids.format(seq);
    let len = "id: ".len() + id.len() + 1 + comment_len(topic);
    let mut frame =
        BytesMut::with_capacity(len + sse_framing::encoded_event_len(None, event, data));
    frame.extend_from_slice(b"id: ");
    frame.extend_from_slice(id.as_bytes());
    frame.extend_from_slice(b"\n");
    put_topic_comment(&mut frame, topic);
    sse_framing::encode_event(&mut frame, None, event, data);
    frame.freeze()
}

/// Length of `id: <epoch>-<seq>\n` for an epoch of `epoch_len` bytes.
fn id_line_len(epoch_len: usize, seq: u64) -> usize {
    "id: ".len() + epoch_len + 1 + decimal_digits(seq) + 1
}

fn decimal_digits(mut n: u64) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

/// The longest `id:` line: the longest epoch, `-`, the longest sequence.
const MAX_ID_LINE: usize = "id: ".len() + crate::id::MAX_EPOCH_LEN + 1 + 20 + 1;

/// Frames from this size up are encoded before the ingest lock is taken, smaller ones
/// under it (encoding a few hundred bytes costs less than numbering a frame afterwards).
const ENCODE_BEFORE_LOCK: usize = 16 * 1024;

/// A message's frame, ready to be numbered under the ingest lock.
enum Prepared {
    /// Encoded under the lock; `body` bytes after the id line.
    Small,
    /// Encoded already.
    Large(Unnumbered),
}

impl Prepared {
    /// The frame of sequence `seq` (naming `topic` in a comment when given).
    fn frame(
        self,
        ids: &mut IdFormatter,
        seq: u64,
        topic: Option<&str>,
        msg: &Incoming,
        data: &str,
    ) -> Bytes {
        match self {
            Self::Small => encode_event(ids, seq, topic, msg.event_type.as_deref(), data),
            Self::Large(unnumbered) => unnumbered.number(ids, seq),
        }
    }
}

/// An event frame encoded before its sequence is known (outside the ingest lock):
/// everything after the `id:` line, with room in front for that line sized for the
/// expected sequence. Numbering it under the lock writes a few bytes.
struct Unnumbered {
    buf: BytesMut,
    room: usize,
}

impl Unnumbered {
    /// `len` is the comment's length plus `encoded_event_len(None, event, data)`.
    fn encode(
        epoch_len: usize,
        seq_hint: u64,
        len: usize,
        topic: Option<&str>,
        event: Option<&str>,
        data: &str,
    ) -> Self {
        let room = id_line_len(epoch_len, seq_hint);
        let mut buf = BytesMut::with_capacity(room + len);
        buf.resize(room, 0);
        put_topic_comment(&mut buf, topic);
        sse_framing::encode_event(&mut buf, None, event, data);
        Self { buf, room }
    }

    /// The frame with `id: <epoch>-<seq>` in front. `encode_event` writes the id line
    /// first, so this is byte for byte what encoding with the id gives.
    fn number(self, ids: &mut IdFormatter, seq: u64) -> Bytes {
        let Self { mut buf, room } = self;
        let id = ids.format(seq);
        let line = "id: ".len() + id.len() + 1;
        if line > room {
            // The sequence grew a digit (or the epoch changed) since the hint: rare.
            let mut frame = BytesMut::with_capacity(line + buf.len() - room);
            frame.extend_from_slice(b"id: ");
            frame.extend_from_slice(id.as_bytes());
            frame.extend_from_slice(b"\n");
            frame.extend_from_slice(&buf[room..]);
            return frame.freeze();
        }
        let start = room - line;
        buf[start..start + 4].copy_from_slice(b"id: ");
        buf[start + 4..room - 1].copy_from_slice(id.as_bytes());
        buf[room - 1] = b'\n';
        buf.advance(start);
        buf.freeze()
    }
}

/// Entries evicted under the ingest lock, freed once it is released (a large frame's
/// memory, a sampled message's unfinished fan-out span). A per-thread vector, reused:
/// the bus's read loop ingests on one thread.
struct Graveyard(Vec<Entry>);

thread_local! {
    static GRAVEYARD: std::cell::Cell<Vec<Entry>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Graveyard {
    fn take() -> Self {
        Self(GRAVEYARD.take())
    }

    /// Drops the frames (outside the lock) and gives the vector back to the thread.
    fn bury(self) {
        drop(self);
    }
}

impl std::ops::Deref for Graveyard {
    type Target = Vec<Entry>;
    fn deref(&self) -> &Vec<Entry> {
        &self.0
    }
}

impl std::ops::DerefMut for Graveyard {
    fn deref_mut(&mut self) -> &mut Vec<Entry> {
        &mut self.0
    }
}

impl Drop for Graveyard {
    fn drop(&mut self) {
        let mut frames = std::mem::take(&mut self.0);
        frames.clear();
        if frames.capacity() <= 1024 {
            GRAVEYARD.set(frames);
        }
    }
}

/// A byte count as a gauge value.
fn gauge(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

impl IngestState {
    fn reset_entry(&mut self, reason: ResetReason, received: u64) -> Entry {
        self.seq += 1;
        let seq = self.seq;
        Entry {
            seq,
            frame: encode_reset(self.ids.format(seq), reason),
            received,
            trace: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_numbered_after_encoding_is_the_frame_encoded_with_its_id() {
        let epoch = Epoch::new("k3j9").unwrap();
        let data = "line one\r\nline two\n".repeat(2000);
        for topic in [None, Some("orders.42")] {
            for (hint, seq) in [(42, 42), (99, 100), (1000, 7), (1, u64::MAX)] {
                let mut ids = IdFormatter::new(&epoch);
                let body =
                    comment_len(topic) + sse_framing::encoded_event_len(None, Some("kind"), &data);
                let unnumbered = Unnumbered::encode(
                    epoch.as_str().len(),
                    hint,
                    body,
                    topic,
                    Some("kind"),
                    &data,
                );
                let numbered = unnumbered.number(&mut ids, seq);
                let direct = encode_event(&mut ids, seq, topic, Some("kind"), &data);
                assert_eq!(numbered, direct, "hint {hint}, seq {seq}, {topic:?}");
                assert_eq!(
                    direct.len(),
                    body + "id: k3j9-\n".len() + seq.to_string().len()
                );
            }
        }
        let mut ids = IdFormatter::new(&epoch);
        assert_eq!(
            &encode_event(&mut ids, 5, Some("orders.42"), None, "x")[..],
            b"id: k3j9-5\n: topic orders.42\ndata: x\n\n"
        );
    }
}
