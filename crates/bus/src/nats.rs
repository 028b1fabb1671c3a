//! The NATS core adapter.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, ServerAddr};
use futures::StreamExt;
use prometheus::IntGauge;
use sse_hub::{Hub, Incoming, Ingested, TopicName};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The NATS header that sets a frame's `event:` field.
pub const EVENT_HEADER: &str = "Sse-Event";

/// How long confirming a new subscription with the server (a PING round trip) may take
/// before it is assumed in place anyway.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// What the adapter needs to know, from `[nats]`.
#[derive(Debug, Clone)]
pub struct NatsBusConfig {
    /// Servers to connect to (several for a cluster).
    pub servers: Vec<ServerAddr>,
    /// Topic `t` is subject `<subject_prefix>.t`.
    pub subject_prefix: String,
    /// Client name shown by the server's monitoring.
    pub client_name: String,
    /// Gauge set to 1 while connected, 0 otherwise.
    pub connected_gauge: IntGauge,
}

/// Errors of the NATS adapter.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A server address in `nats.url` does not parse.
    #[error("invalid NATS server address {addr:?}: {reason}")]
    InvalidServer {
        /// The address as written.
        addr: String,
        /// What the parser said.
        reason: String,
    },
    /// `nats.url` lists no server.
    #[error("no NATS server address given")]
    NoServers,
    /// The client could not be set up (not a connection failure: those are retried).
    #[error("cannot set up the NATS client: {0}")]
    Connect(#[from] async_nats::ConnectError),
}

impl NatsBusConfig {
    /// Parses `nats.url`: one address or a comma-separated list.
    pub fn parse_servers(urls: &str) -> Result<Vec<ServerAddr>, BusError> {
        let servers = urls
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|addr| {
                addr.parse::<ServerAddr>()
                    .map_err(|e| BusError::InvalidServer {
                        addr: addr.to_owned(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if servers.is_empty() {
            return Err(BusError::NoServers);
        }
        Ok(servers)
    }
}

/// The subject of `topic` under `prefix`.
pub fn subject_for(prefix: &str, topic: &TopicName) -> String {
    format!("{prefix}.{topic}")
}

/// Feeds a [`Hub`] from NATS core subjects.
#[derive(Debug)]
pub struct NatsBus {
    config: NatsBusConfig,
    hub: Hub,
}

/// One topic's subscription task.
struct TopicTask {
    task: JoinHandle<()>,
    /// The server has confirmed the subscription.
    confirmed: Arc<AtomicBool>,
}

impl NatsBus {
    /// An adapter for `hub`; nothing happens until [`NatsBus::run`].
    pub fn new(config: NatsBusConfig, hub: Hub) -> Self {
        Self { config, hub }
    }

    /// Connects (in the background, retrying forever) and keeps one subscription per
    /// topic the hub wants until `shutdown` resolves; then drains the connection.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), BusError> {
        let client = self.connect().await?;
        let mut topics: HashMap<TopicName, TopicTask> = HashMap::new();
        for topic in self.hub.wanted_topics() {
            self.reconcile(&client, &mut topics, topic);
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = self.hub.demand_changed() => {
                    for topic in self.hub.take_demand_changes() {
                        self.reconcile(&client, &mut topics, topic);
                    }
                }
            }
        }
        for (_, t) in topics.drain() {
            t.task.abort();
        }
        if let Err(e) = tokio::time::timeout(Duration::from_secs(1), client.drain()).await {
            tracing::debug!(error = %e, "NATS drain did not finish");
        }
        Ok(())
    }

    async fn connect(&self) -> Result<Client, BusError> {
        let hub = self.hub.clone();
        let gauge = self.config.connected_gauge.clone();
        let options = ConnectOptions::new()
            .name(&self.config.client_name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempts| {
                // 0, 100, 200 … ms, at most 2 s: back quickly after a restart.
                Duration::from_millis((attempts as u64 * 100).min(2_000))
            })
            .event_callback(move |event| {
                let hub = hub.clone();
                let gauge = gauge.clone();
                async move { on_event(&hub, &gauge, event) }
            });
        tracing::info!(servers = ?self.config.servers, "connecting to NATS");
        Ok(options.connect(self.config.servers.clone()).await?)
    }

    /// Brings `topic`'s subscription in line with what the hub wants now.
    fn reconcile(
        &self,
        client: &Client,
        topics: &mut HashMap<TopicName, TopicTask>,
        topic: TopicName,
    ) {
        let wanted = self.hub.wants(&topic);
        match (wanted, topics.get(&topic)) {
            (true, Some(t)) if !t.task.is_finished() => {
                // The hub dropped and re-created the topic while its subscription stayed.
                if t.confirmed.load(Ordering::Acquire) {
                    self.hub.upstream_ready(&topic);
                }
            }
            (true, _) => {
                let confirmed = Arc::new(AtomicBool::new(false));
                let subject = subject_for(&self.config.subject_prefix, &topic);
                let task = tokio::spawn(run_topic(
                    client.clone(),
                    self.hub.clone(),
                    topic.clone(),
                    subject,
                    confirmed.clone(),
                ));
                topics.insert(topic, TopicTask { task, confirmed });
            }
            (false, Some(_)) => {
                if let Some(t) = topics.remove(&topic) {
                    tracing::debug!(%topic, "unsubscribing");
                    // Dropping the subscriber sends UNSUB.
                    t.task.abort();
                }
            }
            (false, None) => {}
        }
    }
}

fn on_event(hub: &Hub, gauge: &IntGauge, event: Event) {
    match event {
        Event::Connected => {
            tracing::info!("connected to NATS");
            gauge.set(1);
            hub.set_connected(true);
        }
        Event::Disconnected | Event::Closed => {
            tracing::warn!(%event, "lost the NATS connection; streams stay open, topics get upstream_gap");
            gauge.set(0);
            hub.set_connected(false);
        }
        Event::SlowConsumer(sid) => {
            tracing::warn!(
                sid,
                "NATS client dropped messages for a slow subscription; announcing a gap"
            );
            hub.upstream_gap();
        }
        other => tracing::warn!(event = %other, "NATS"),
    }
}

/// Subscribes `subject`, confirms it with the server, then ingests until aborted.
async fn run_topic(
    client: Client,
    hub: Hub,
    topic: TopicName,
    subject: String,
    confirmed: Arc<AtomicBool>,
) {
    let mut subscriber = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%topic, %subject, error = %e, "cannot subscribe");
            return;
        }
    };
    tracing::debug!(%topic, %subject, "subscribed");
    // A PING round trip: once answered, the server has processed the SUB and every
    // message published from now on reaches us. While disconnected this waits for the
    // reconnect, which re-sends the SUB first.
    match tokio::time::timeout(CONFIRM_TIMEOUT, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%topic, error = %e, "subscription not confirmed"),
        Err(_) => tracing::debug!(%topic, "subscription not confirmed in time"),
    }
    confirmed.store(true, Ordering::Release);
    hub.upstream_ready(&topic);
    while let Some(message) = subscriber.next().await {
        let event_type = message
            .headers
            .as_ref()
            .and_then(|h| h.get(EVENT_HEADER))
            .map(|v| v.as_str().to_owned());
        let outcome = hub.ingest(
            &topic,
            Incoming {
                payload: message.payload,
                event_type,
                received: Instant::now(),
            },
        );
        match outcome {
            Ingested::Stored(_) | Ingested::NoSuchTopic => {}
            Ingested::InvalidUtf8 => {
                tracing::debug!(%topic, "dropped a message: payload is not UTF-8");
            }
            other => tracing::debug!(%topic, ?other, "dropped a message"),
        }
    }
}
