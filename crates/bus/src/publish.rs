//! Publishing through the gateway (the HTTP publish API), answering with the event id.
//!
//! - **Memory bus:** the message goes straight into the hub.
//! - **NATS core:** the message is published to NATS (so every gateway instance delivers
//!   it) with an `Sse-Publish-Id` marker; this gateway holds the topic open while it
//!   waits for its own subscription to bring the message back, and answers with the id
//!   its clients see.
//! - **JetStream:** the stream's acknowledgement carries the sequence: the id is the same
//!   on every instance.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use sse_hub::{Feed, Incoming, Ingested, SubscribeError, TopicName};
use sse_trace::{Span, TRACEPARENT};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::nats::{EVENT_HEADER, PUBLISH_HEADER, subject_for};

/// How long a publish may take end to end.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a publish failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// NATS (or the JetStream stream) is not reachable now.
    #[error("the message bus is not reachable: {0}")]
    Unavailable(String),
    /// The message was not confirmed in time.
    #[error("the message bus did not confirm the message in time")]
    Timeout,
    /// The hub refused the message (payload or event type).
    #[error("the message was refused: {0:?}")]
    Refused(Ingested),
    /// The topic has reached its subscriber cap (core NATS needs a slot to see the id),
    /// or the topic would be one more than `max_topics`.
    #[error("{0}")]
    AtCapacity(#[from] SubscribeError),
    /// The message (payload and headers) is larger than the server's `max_payload`: it can
    /// never be published, retrying is useless.
    #[error("the message is larger than the NATS server accepts")]
    TooLarge,
}

/// Publishes messages; cheap to clone.
#[derive(Debug, Clone)]
pub enum Publisher {
    /// Embedded mode: into this process's hub.
    Memory(Feed),
    /// Through NATS.
    Nats {
        /// The hub this bus feeds, for ids and to hold a topic while its message travels.
        feed: Feed,
        /// The client, once connected.
        client: watch::Receiver<Option<Client>>,
        /// Subject prefix.
        prefix: String,
        /// JetStream mode.
        jetstream: bool,
        /// Core publishes waiting for their message to come back.
        pending: Arc<Pending>,
    },
}

/// Core NATS publishes through this process waiting for their message to come back
/// through this process's own subscription (carrying its [`PUBLISH_HEADER`] marker):
/// then the publisher learns the sequence — the id its clients see — and the message is
/// timed from the publish. One entry per publish in flight, removed when it ends.
#[derive(Debug, Default)]
pub struct Pending {
    waiting: Mutex<HashMap<u64, (oneshot::Sender<u64>, Instant)>>,
}

impl Pending {
    /// Registers a publish of `marker` started at `started`; the receiver gets its
    /// sequence. The registration ends with the returned guard.
    fn expect(self: &Arc<Self>, marker: u64, started: Instant) -> Waiter {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(marker, (tx, started));
        Waiter {
            pending: self.clone(),
            marker,
            rx,
        }
    }

    /// When the publish of `marker` started, if it is this process's and still waiting.
    pub(crate) fn started(&self, marker: u64) -> Option<Instant> {
        self.lock().get(&marker).map(|(_, started)| *started)
    }

    /// The message of `marker` was stored under `seq`.
    pub(crate) fn stored(&self, marker: u64, seq: u64) {
        if let Some((tx, _)) = self.lock().remove(&marker) {
            let _ = tx.send(seq);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (oneshot::Sender<u64>, Instant)>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A publish waiting for its sequence; unregisters when dropped.
struct Waiter {
    pending: Arc<Pending>,
    marker: u64,
    rx: oneshot::Receiver<u64>,
}

impl Waiter {
    /// The sequence the message was stored under, or `None` after `timeout`.
    async fn sequence(&mut self, timeout: Duration) -> Option<u64> {
        tokio::time::timeout(timeout, &mut self.rx).await.ok()?.ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.marker);
    }
}

impl Publisher {
    /// The largest message (payload and headers) the bus accepts, when it says: the NATS
    /// server's `max_payload` once connected; `None` for the memory bus and before.
    pub fn max_payload(&self) -> Option<usize> {
        match self {
            Self::Memory(_) => None,
            Self::Nats { client, .. } => client.borrow().as_ref().map(Client::max_payload),
        }
    }

    /// Publishes `payload` on `topic` with an optional event type; returns the event id.
    ///
    /// The event's delivery latency is measured from this call (with the memory bus and
    /// core NATS; a JetStream message from the stream's timestamp). With `trace` (the
    /// publish request's span, tracing on) the message carries its context: a
    /// `traceparent` header on NATS, so that the `ingest` span continues the trace (or
    /// knows it is not sampled); in embedded mode the hub's `fanout` spans go under it.
    pub async fn publish(
        &self,
        topic: &TopicName,
        payload: Bytes,
        event_type: Option<&str>,
        trace: Option<&Span>,
    ) -> Result<String, PublishError> {
        let started = Instant::now();
        match self {
            Self::Memory(feed) => {
                let msg = Incoming {
                    payload,
                    event_type: event_type.map(str::to_owned),
                    received: started,
                    trace: trace.and_then(Span::parent),
                };
                match feed.publish_local(topic, msg)? {
                    (_, Some(id)) => Ok(id),
                    (outcome, None) => Err(PublishError::Refused(outcome)),
                }
            }
            Self::Nats {
                feed,
                client,
                prefix,
                jetstream,
                pending,
            } => {
                let Some(client) = client.borrow().clone() else {
                    return Err(PublishError::Unavailable("not connected yet".into()));
                };
                if !feed.is_connected() {
                    return Err(PublishError::Unavailable("disconnected".into()));
                }
                let subject = subject_for(prefix, topic);
                let mut headers = HeaderMap::new();
                if let Some(event) = event_type {
                    headers.insert(EVENT_HEADER, event);
                }
                if let Some(span) = trace {
                    headers.insert(TRACEPARENT, span.context().traceparent().as_str());
                }
                if *jetstream {
                    publish_jetstream(feed, client, subject, headers, payload).await
                } else {
                    let message = CoreMessage {
                        subject,
                        headers,
                        payload,
                        started,
                    };
                    publish_core(feed, pending, client, topic, message).await
                }
            }
        }
    }
}

async fn publish_jetstream(
    hub: &Feed,
    client: Client,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<String, PublishError> {
    let js = async_nats::jetstream::new(client);
    let ack = tokio::time::timeout(PUBLISH_TIMEOUT, async {
        js.publish_with_headers(subject, headers, payload)
            .await
            .map_err(from_jetstream)?
            .await
            .map_err(from_jetstream)
    })
    .await
    .map_err(|_| PublishError::Timeout)??;
    Ok(hub.event_id(ack.sequence))
}

/// A message for a core NATS subject, and when the publish API was asked to send it.
struct CoreMessage {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    started: Instant,
}

async fn publish_core(
    feed: &Feed,
    pending: &Arc<Pending>,
    client: Client,
    topic: &TopicName,
    message: CoreMessage,
) -> Result<String, PublishError> {
    let CoreMessage {
        subject,
        mut headers,
        payload,
        started,
    } = message;
    // Hold the topic so this gateway is subscribed and sees the message come back.
    let held = feed.hold(topic)?;
    if !feed.wait_held(&held, PUBLISH_TIMEOUT).await {
        return Err(PublishError::Unavailable(
            "the topic's subscription is not confirmed".into(),
        ));
    }
    let marker = fastrand::u64(..);
    headers.insert(PUBLISH_HEADER, marker.to_string().as_str());
    let mut waiter = pending.expect(marker, started);
    client
        .publish_with_headers(subject, headers, payload)
        .await
        .map_err(|e| match e.kind() {
            async_nats::client::PublishErrorKind::MaxPayloadExceeded => PublishError::TooLarge,
            _ => PublishError::Unavailable(e.to_string()),
        })?;
    let seq = waiter
        .sequence(PUBLISH_TIMEOUT)
        .await
        .ok_or(PublishError::Timeout)?;
    drop(held);
    Ok(feed.event_id(seq))
}

fn from_jetstream(e: async_nats::jetstream::context::PublishError) -> PublishError {
    match e.kind() {
        async_nats::jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
            PublishError::TooLarge
        }
        _ => PublishError::Unavailable(e.to_string()),
    }
}
