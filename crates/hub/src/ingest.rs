//! Ingest: upstream messages into the rings, and what the upstream connection's state
//! means for the streams.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::hub::{Hub, Incoming, IngestState, Ingested, RESET_EVENT, ResetReason, Topic};
use crate::id::{Epoch, IdFormatter};
use crate::ring::Entry;
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

    // ----- ingest ------------------------------------------------------------------

    /// Validates, encodes once and stores an upstream message for `topic`, then wakes
    /// the topic's readers.
    pub fn ingest(&self, topic: &TopicName, msg: Incoming) -> Ingested {
        let inner = &self.inner;
        inner.metrics.upstream_messages.inc();
        let data = match self.validate(&msg) {
            Ok(data) => data,
            Err(outcome) => return outcome,
        };
        let Some(topic) = inner.topics.lock().by_name.get(topic).cloned() else {
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
            let frame = encode_event(&mut ingest.ids, seq, msg.event_type.as_deref(), data);
            topic.push(Entry {
                seq,
                frame,
                received: msg.received,
            });
            if let Some(marker) = msg.publish_marker {
                self.published(marker, seq);
            }
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

    pub(crate) fn all_topics(&self) -> Vec<Arc<Topic>> {
        self.inner.topics.lock().by_name.values().cloned().collect()
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
    pub(crate) fn reset_frame(&self, seq: u64, reason: ResetReason) -> Bytes {
        let mut ids = IdFormatter::new(&self.epoch());
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
        if inner.config.durable {
            // A durable log's consumer resumes where it stopped: nothing is lost.
        } else if connected {
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

    /// Durable mode: the last log position read (0 before the log started).
    pub fn log_position(&self) -> u64 {
        self.inner.watermark.load(Ordering::Acquire)
    }

    /// Embedded mode: there is no upstream; every topic is ready and the hub counts as
    /// connected. Messages arrive through [`Hub::publish_local`].
    pub fn set_local(&self) {
        self.inner.local.store(true, Ordering::Release);
        self.inner.connected.store(true, Ordering::Release);
        self.inner.ever_connected.store(true, Ordering::Release);
        self.inner.readiness.send_modify(|v| *v += 1);
    }

    /// Whether the upstream connection is up.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    /// Records that `topic`'s upstream subscription is in place: messages published from
    /// now on reach the hub.
    pub fn upstream_ready(&self, topic: &TopicName) {
        if let Some(t) = self.inner.topics.lock().by_name.get(topic) {
            t.meta.lock().upstream_ready = true;
        }
        self.inner.readiness.send_modify(|v| *v += 1);
    }

    // ----- publishing through this gateway --------------------------------------------

    /// Registers a publish through this gateway: the returned receiver gets the sequence
    /// its message (carrying `marker`) is stored under, when it comes back from upstream.
    pub fn expect_publish(&self, marker: u64) -> PublishWaiter {
        let (tx, rx) = oneshot::channel();
        self.inner.publishes.lock().insert(marker, tx);
        PublishWaiter {
            hub: self.clone(),
            marker,
            rx,
        }
    }

    fn published(&self, marker: u64, seq: u64) {
        if let Some(tx) = self.inner.publishes.lock().remove(&marker) {
            let _ = tx.send(seq);
        }
    }

    /// Embedded mode: stores a message published to this process directly, creating the
    /// topic if needed (it then lingers like any topic, so a client resuming soon after
    /// still gets the message). Returns what happened and, when stored, the event id.
    pub fn publish_local(&self, topic: &TopicName, msg: Incoming) -> (Ingested, Option<String>) {
        let held = match self.acquire_for_publish(topic) {
            Ok(t) => t,
            Err(_) => return (Ingested::NoSuchTopic, None),
        };
        let outcome = self.ingest(topic, msg);
        held.release();
        let id = match outcome {
            Ingested::Stored(seq) => Some(self.event_id(seq)),
            _ => None,
        };
        (outcome, id)
    }

    /// The event id of sequence `seq` in this hub's epoch.
    pub fn event_id(&self, seq: u64) -> String {
        IdFormatter::new(&self.epoch()).format(seq).to_owned()
    }

    // ----- durable log -------------------------------------------------------------

    /// Durable mode: the live consumer starts reading the log after position
    /// `last_seq`, whose ids carry `epoch`. Streams opened before see everything after
    /// it; resumes older than it are replayed from the log.
    pub fn start_log(&self, epoch: Epoch, last_seq: u64) {
        let inner = &self.inner;
        {
            let mut ingest = inner.ingest.lock();
            let changed = *inner.epoch.read() != epoch;
            if changed {
                tracing::info!(%epoch, last_seq, "event ids follow the log");
                ingest.ids = IdFormatter::new(&epoch);
                *inner.epoch.write() = epoch;
                for topic in self.all_topics() {
                    topic.restart_ring(last_seq);
                }
            }
            if changed || last_seq > ingest.seq {
                ingest.seq = last_seq;
                inner.watermark.store(last_seq, Ordering::Release);
            }
        }
        inner.log_started.store(true, Ordering::Release);
        inner.readiness.send_modify(|v| *v += 1);
    }

    /// Durable mode: the message at log position `seq`, published on `subject` (a topic
    /// name without wildcards), goes into every active topic it matches — wildcard
    /// topics included — encoded once with id `<epoch>-<seq>`.
    pub fn ingest_logged(&self, subject: &str, seq: u64, msg: Incoming) -> Ingested {
        let inner = &self.inner;
        inner.metrics.upstream_messages.inc();
        let valid = self.validate(&msg);
        let topics = inner.topics.lock().matching(subject);
        let mut ingest = inner.ingest.lock();
        if seq <= ingest.seq {
            // Already seen (a consumer redelivered after recovering).
            return Ingested::NoSuchTopic;
        }
        ingest.seq = seq;
        let outcome = match valid {
            Err(outcome) => outcome,
            Ok(_) if topics.is_empty() => Ingested::NoSuchTopic,
            Ok(data) => {
                let frame = encode_event(&mut ingest.ids, seq, msg.event_type.as_deref(), data);
                for topic in &topics {
                    topic.push(Entry {
                        seq,
                        frame: frame.clone(),
                        received: msg.received,
                    });
                }
                Ingested::Stored(seq)
            }
        };
        // Positions without a frame still move the watermark: new streams start after
        // them and resumes from them are exact.
        inner.watermark.store(seq, Ordering::Release);
        drop(ingest);
        if let Ingested::Stored(_) = outcome {
            for topic in &topics {
                topic.notify.notify_waiters();
            }
        }
        outcome
    }

    /// Encodes a frame of this hub's epoch (replays from a durable log).
    pub fn encode_logged(&self, seq: u64, msg: &Incoming) -> Option<Bytes> {
        let data = std::str::from_utf8(&msg.payload).ok()?;
        if msg
            .event_type
            .as_deref()
            .is_some_and(|e| !is_publisher_event_type(e))
        {
            return None;
        }
        let mut ids = IdFormatter::new(&self.epoch());
        Some(encode_event(&mut ids, seq, msg.event_type.as_deref(), data))
    }
}

/// Whether a publisher may use `event` as an event type.
fn is_publisher_event_type(event: &str) -> bool {
    sse_topic::check_publisher_event_type(event).is_ok()
}

/// One event frame: `id: <epoch>-<seq>`, optional `event:`, `data:` lines.
pub(crate) fn encode_event(
    ids: &mut IdFormatter,
    seq: u64,
    event: Option<&str>,
    data: &str,
) -> Bytes {
    let id = ids.format(seq);
    let mut frame = BytesMut::with_capacity(sse_framing::encoded_event_len(Some(id), event, data));
    sse_framing::encode_event(&mut frame, Some(id), event, data);
    frame.freeze()
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

/// A publish through this gateway waiting for its message's sequence; unregisters when
/// dropped.
#[derive(Debug)]
pub struct PublishWaiter {
    hub: Hub,
    marker: u64,
    rx: oneshot::Receiver<u64>,
}

impl PublishWaiter {
    /// The sequence the message was stored under, or `None` after `timeout`.
    pub async fn sequence(mut self, timeout: std::time::Duration) -> Option<u64> {
        tokio::time::timeout(timeout, &mut self.rx).await.ok()?.ok()
    }
}

impl Drop for PublishWaiter {
    fn drop(&mut self) {
        self.hub.inner.publishes.lock().remove(&self.marker);
    }
}
