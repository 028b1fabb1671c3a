//! Publishing through the gateway (the HTTP publish API), answering with the event id.
//!
//! - **Memory bus:** the message goes straight into the hub.
//! - **NATS core:** the message is published to NATS (so every gateway instance delivers
//!   it) with an `Sse-Publish-Id` marker; this gateway holds the topic open while it
//!   waits for its own subscription to bring the message back, and answers with the id
//!   its clients see.
//! - **JetStream:** the stream's acknowledgement carries the sequence: the id is the same
//!   on every instance.

use std::time::Duration;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use sse_hub::{Hub, Incoming, Ingested, SubscribeError, TopicName};
use tokio::sync::watch;
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
    Memory(Hub),
    /// Through NATS.
    Nats {
        /// The hub, for ids.
        hub: Hub,
        /// The client, once connected.
        client: watch::Receiver<Option<Client>>,
        /// Subject prefix.
        prefix: String,
        /// JetStream mode.
        jetstream: bool,
    },
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
    /// core NATS; a JetStream message from the stream's timestamp).
    pub async fn publish(
        &self,
        topic: &TopicName,
        payload: Bytes,
        event_type: Option<&str>,
    ) -> Result<String, PublishError> {
        let started = Instant::now();
        match self {
            Self::Memory(hub) => {
                let msg = Incoming {
                    payload,
                    event_type: event_type.map(str::to_owned),
                    received: started,
                    publish_marker: None,
                };
                match hub.publish_local(topic, msg)? {
                    (_, Some(id)) => Ok(id),
                    (outcome, None) => Err(PublishError::Refused(outcome)),
                }
            }
            Self::Nats {
                hub,
                client,
                prefix,
                jetstream,
            } => {
                let Some(client) = client.borrow().clone() else {
                    return Err(PublishError::Unavailable("not connected yet".into()));
                };
                if !hub.is_connected() {
                    return Err(PublishError::Unavailable("disconnected".into()));
                }
                let subject = subject_for(prefix, topic);
                let mut headers = HeaderMap::new();
                if let Some(event) = event_type {
                    headers.insert(EVENT_HEADER, event);
                }
                if *jetstream {
                    publish_jetstream(hub, client, subject, headers, payload).await
                } else {
                    let message = CoreMessage {
                        subject,
                        headers,
                        payload,
                        started,
                    };
                    publish_core(hub, client, topic, message).await
                }
            }
        }
    }
}

async fn publish_jetstream(
    hub: &Hub,
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
    hub: &Hub,
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
    let probe = hub.subscribe(std::slice::from_ref(topic), None)?;
    if !hub.wait_upstream(&probe, PUBLISH_TIMEOUT).await {
        return Err(PublishError::Unavailable(
            "the topic's subscription is not confirmed".into(),
        ));
    }
    let marker = fastrand::u64(..);
    headers.insert(PUBLISH_HEADER, marker.to_string().as_str());
    let waiter = hub.expect_publish(marker, started);
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
    drop(probe);
    Ok(hub.event_id(seq))
}

fn from_jetstream(e: async_nats::jetstream::context::PublishError) -> PublishError {
    match e.kind() {
        async_nats::jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
            PublishError::TooLarge
        }
        _ => PublishError::Unavailable(e.to_string()),
    }
}
