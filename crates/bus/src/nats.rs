//! The NATS core adapter.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, Message, ServerAddr, Subscriber};
use futures::StreamExt;
use futures::stream::{AbortHandle, AbortRegistration, Abortable, BoxStream, SelectAll};
use prometheus::{IntCounter, IntGauge};
use sse_hub::{Feed, Incoming, Ingested, Source, TopicName, Upstream};
use sse_trace::{Span, TRACEPARENT, Tracer};
use tokio::sync::{Notify, mpsc, watch};

use crate::jetstream::{HistoryWriter, JetStreamConfig};
use crate::publish::{Pending, Publisher};
use tokio::time::Instant;

/// The NATS header that sets a frame's `event:` field.
pub const EVENT_HEADER: &str = "Sse-Event";

/// The NATS header with which this gateway's publish API recognises its own message
/// when it comes back, to answer with the id it got.
pub const PUBLISH_HEADER: &str = "Sse-Publish-Id";

/// How long putting a new subscription on the wire may take (while disconnected: until
/// the reconnect, which re-sends it) before it is assumed in place anyway.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// Subject of the ordering probe ([`server_caught_up`]): nobody subscribes to it, so the
/// server answers a request to it with a "no responders" status at once.
const PROBE_SUBJECT: &str = "_SSE_GATEWAY.probe";

/// How long the probe may take. A connection that may not publish to [`PROBE_SUBJECT`]
/// never gets an answer; its subscriptions are then taken as confirmed after this.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

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
    /// Counts the round trips made to confirm new core subscriptions (one per batch).
    pub confirmations: IntCounter,
    /// Topic families (wildcard patterns, none overlapping) held by one subscription
    /// each from connect on; the hub's topics of a family get no subscription of their
    /// own. Core subscriptions on plain `nats://` servers only.
    pub aggregate: Vec<TopicName>,
    /// Read topics from a JetStream stream instead of core subscriptions.
    pub jetstream: Option<JetStreamConfig>,
    /// Records an `ingest` span per sampled message (`None`: tracing off, nothing done
    /// per message).
    pub tracer: Option<Tracer>,
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

/// Feeds a hub from NATS: one core subscription per active topic, or the whole
/// JetStream stream.
///
/// Made in two steps, because the hub and the bus each need the other: [`NatsBus::prepare`]
/// gives the [`Source`] to make the hub with, [`Unattached::attach`] the bus once the hub
/// is made.
///
/// ```no_run
/// # fn demo(config: sse_bus::NatsBusConfig, metrics: sse_hub::HubMetrics) {
/// use sse_hub::{Epoch, Hub, HubConfig};
/// let (source, bus) = sse_bus::NatsBus::prepare(config);
/// let (hub, feed) = Hub::new(HubConfig::default(), Epoch::generate(), metrics, source);
/// let bus = bus.attach(feed);
/// let publisher = bus.publisher();
/// # }
/// ```
///
/// Core subscriptions go over a connection of the bus's own on plain `nats://` servers.
/// Otherwise (a `tls://` or WebSocket URL) they are the client library's, and all of
/// them are read by ONE loop, round robin in wake-up order, so messages of different
/// topics reach the hub close to the order the server sent them (NATS
/// itself keeps order per subject; the per-subscription channels of the client lose the
/// order across subjects, which this loop mostly restores).
#[derive(Debug)]
pub struct NatsBus {
    config: NatsBusConfig,
    feed: Feed,
    mode: Mode,
    client: watch::Sender<Option<Client>>,
    /// Publishes through this process waiting for their message to come back.
    pending: Arc<Pending>,
}

/// What a bus serves its hub with.
#[derive(Debug)]
enum Mode {
    /// Core subscriptions, following the hub's wishes.
    Core(Arc<Demand>),
    /// The JetStream stream, and replays from it.
    JetStream(HistoryWriter),
}

/// A bus waiting for the hub it feeds ([`NatsBus::prepare`]).
#[derive(Debug)]
pub struct Unattached {
    config: NatsBusConfig,
    mode: Mode,
}

impl Unattached {
    /// The bus of the hub made with this bus's [`Source`].
    pub fn attach(self, feed: Feed) -> NatsBus {
        NatsBus {
            config: self.config,
            feed,
            mode: self.mode,
            client: watch::channel(None).0,
            pending: Arc::new(Pending::default()),
        }
    }
}

/// The hub's [`Upstream`] for core subscriptions: it records the hub's latest wish per
/// topic (a topic closed and opened again before the read loop looked is simply wanted)
/// and, at the end of each burst, wakes the read loop, which subscribes and unsubscribes.
/// Holds at most one entry per topic the hub knows.
#[derive(Debug, Default)]
pub(crate) struct Demand {
    wishes: Mutex<HashMap<TopicName, bool>>,
    /// Notified when a burst of wishes is complete.
    pub(crate) changed: Notify,
}

impl Demand {
    fn wish(&self, topic: &TopicName, wanted: bool) {
        self.wishes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic.clone(), wanted);
    }

    /// The wishes recorded since the last call.
    pub(crate) fn take(&self) -> Vec<(TopicName, bool)> {
        self.wishes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect()
    }
}

impl Upstream for Demand {
    fn open(&self, topic: &TopicName) {
        self.wish(topic, true);
    }

    fn close(&self, topic: &TopicName) {
        self.wish(topic, false);
    }

    fn flush(&self) {
        self.changed.notify_one();
    }
}

/// What the read loop knows of one topic's subscription.
struct TopicState {
    /// Tells this subscription's generation from a newer one of the same topic.
    generation: u64,
    /// Ends the subscription's stream (dropping it sends UNSUB).
    abort: AbortHandle,
    /// The server has confirmed the subscription.
    confirmed: Arc<AtomicBool>,
}

/// A confirmed subscription on its way into the read loop.
struct NewSubscription {
    topic: TopicName,
    generation: u64,
    subscriber: Subscriber,
    abort: AbortRegistration,
}

/// One item of the merged subscriptions: a message, or the end of a subscription.
type Tagged = (TopicName, u64, Option<Message>);

impl NatsBus {
    /// The source to make the hub with (core subscriptions, or the JetStream stream with
    /// its replays), and the bus to attach to that hub; nothing runs until
    /// [`NatsBus::run`].
    pub fn prepare(config: NatsBusConfig) -> (Source, Unattached) {
        let (source, mode) = match &config.jetstream {
            Some(js) => {
                let (writer, history) = HistoryWriter::new(js.max_concurrent_replays);
                (Source::Log(Arc::new(history)), Mode::JetStream(writer))
            }
            None => {
                let demand = Arc::new(Demand::default());
                (Source::Core(demand.clone()), Mode::Core(demand))
            }
        };
        (source, Unattached { config, mode })
    }

    /// Publishes through this adapter's connection (the publish API).
    pub fn publisher(&self) -> Publisher {
        Publisher::Nats {
            feed: self.feed.clone(),
            client: self.client.subscribe(),
            prefix: self.config.subject_prefix.clone(),
            jetstream: self.config.jetstream.is_some(),
            pending: self.pending.clone(),
        }
    }

    /// Single use of tickets across instances, when the bus reads a JetStream stream:
    /// redeemed in the bucket [`crate::ticket_bucket`] of the stream, whose keys live
    /// `ttl`.
    pub fn ticket_ledger(&self, ttl: Duration) -> Option<crate::TicketLedger> {
        let js = self.config.jetstream.as_ref()?;
        Some(crate::TicketLedger::new(
            self.client.subscribe(),
            crate::ticket_bucket(&js.stream),
            ttl,
        ))
    }

    /// Connects (in the background, retrying forever) and keeps one subscription per
    /// topic the hub wants until `shutdown` resolves; then drains the connection.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), BusError> {
        // Core subscriptions on plain `nats://` servers go over a connection of our own
        // (crate::wire), which then tells the hub of the link's state; otherwise the
        // client library's connection does.
        let wire =
            matches!(self.mode, Mode::Core(_)) && crate::wire::supports(&self.config.servers);
        if !wire && matches!(self.mode, Mode::Core(_)) && !self.config.aggregate.is_empty() {
            tracing::warn!(
                families = ?self.config.aggregate,
                "sse.aggregate needs plain nats:// servers; every topic gets its own subscription"
            );
        }
        let client = self.connect(!wire).await?;
        self.client.send_replace(Some(client.clone()));
        let demand = match self.mode {
            Mode::JetStream(writer) => {
                let js = self.config.jetstream.clone().unwrap_or_else(|| {
                    unreachable!("a JetStream bus is prepared from a JetStream config")
                });
                tokio::pin!(shutdown);
                crate::jetstream::run_live(
                    client.clone(),
                    self.feed,
                    js,
                    self.config.subject_prefix,
                    writer,
                    self.config.tracer,
                    shutdown.as_mut(),
                )
                .await;
                if let Err(e) = tokio::time::timeout(Duration::from_secs(1), client.drain()).await {
                    tracing::debug!(error = %e, "NATS drain did not finish");
                }
                return Ok(());
            }
            Mode::Core(ref demand) => demand.clone(),
        };
        tokio::pin!(shutdown);
        if wire {
            let wire = crate::wire::Wire {
                servers: &self.config.servers,
                prefix: &self.config.subject_prefix,
                families: &self.config.aggregate,
                name: &self.config.client_name,
                feed: &self.feed,
                pending: &self.pending,
                demand: &demand,
                connected: &self.config.connected_gauge,
                confirmations: &self.config.confirmations,
                tracer: self.config.tracer.as_ref(),
            };
            wire.run(shutdown.as_mut()).await;
            if let Err(e) = tokio::time::timeout(Duration::from_secs(1), client.drain()).await {
                tracing::debug!(error = %e, "NATS drain did not finish");
            }
            return Ok(());
        }
        let mut state = ReadLoop {
            bus: &self,
            client: &client,
            topics: HashMap::new(),
            next_generation: 0,
            streams: SelectAll::new(),
            // Bounded: a subscription in flight per topic at most.
            new_subs: mpsc::channel(1024),
        };
        loop {
            // Topics opened before the loop ran are among the first wishes taken.
            let mut batch = Vec::new();
            for (topic, wanted) in demand.take() {
                state.reconcile(topic, wanted, &mut batch);
            }
            if !batch.is_empty() {
                self.config.confirmations.inc();
                tokio::spawn(subscribe(
                    client.clone(),
                    self.feed.clone(),
                    self.config.subject_prefix.clone(),
                    state.new_subs.0.clone(),
                    batch,
                ));
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = demand.changed.notified() => {}
                Some(new) = state.new_subs.1.recv() => state.add(new),
                Some((topic, generation, message)) = state.streams.next(), if !state.streams.is_empty() => {
                    match message {
                        Some(message) => ingest(
                            &self.feed,
                            &self.pending,
                            self.config.tracer.as_ref(),
                            &topic,
                            message,
                        ),
                        None => state.ended(&topic, generation),
                    }
                }
            }
        }
        for (_, t) in state.topics.drain() {
            t.abort.abort();
        }
        drop(state);
        if let Err(e) = tokio::time::timeout(Duration::from_secs(1), client.drain()).await {
            tracing::debug!(error = %e, "NATS drain did not finish");
        }
        Ok(())
    }
    /// Connects the client library's connection (publishing, JetStream, and core
    /// subscriptions when they cannot go over [`crate::wire`]). With `drives_hub` its
    /// state is the hub's link state and the connected gauge.
    async fn connect(&self, drives_hub: bool) -> Result<Client, BusError> {
        let feed = self.feed.clone();
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
                let feed = feed.clone();
                let gauge = gauge.clone();
                async move {
                    if drives_hub {
                        on_event(&feed, &gauge, event);
                    } else {
                        tracing::debug!(%event, "NATS publishing connection");
                    }
                }
            });
        tracing::info!(servers = ?self.config.servers, "connecting to NATS");
        Ok(options.connect(self.config.servers.clone()).await?)
    }
}

struct ReadLoop<'a> {
    bus: &'a NatsBus,
    client: &'a Client,
    topics: HashMap<TopicName, TopicState>,
    next_generation: u64,
    streams: SelectAll<BoxStream<'static, Tagged>>,
    new_subs: (
        mpsc::Sender<NewSubscription>,
        mpsc::Receiver<NewSubscription>,
    ),
}

impl ReadLoop<'_> {
    /// Brings `topic`'s subscription in line with the hub's wish; a new subscription
    /// joins `batch` (subscribed and confirmed together).
    fn reconcile(&mut self, topic: TopicName, wanted: bool, batch: &mut Vec<NewTopic>) {
        let feed = &self.bus.feed;
        match (wanted, self.topics.get(&topic)) {
            (true, Some(t)) => {
                // The hub dropped and re-created the topic while its subscription stayed.
                if t.confirmed.load(Ordering::Acquire) {
                    feed.upstream_ready(&topic);
                }
            }
            (true, None) => {
                self.next_generation += 1;
                let generation = self.next_generation;
                let (abort, registration) = AbortHandle::new_pair();
                let confirmed = Arc::new(AtomicBool::new(false));
                batch.push(NewTopic {
                    topic: topic.clone(),
                    generation,
                    registration,
                    confirmed: confirmed.clone(),
                });
                self.topics.insert(
                    topic,
                    TopicState {
                        generation,
                        abort,
                        confirmed,
                    },
                );
            }
            (false, Some(_)) => {
                if let Some(t) = self.topics.remove(&topic) {
                    tracing::debug!(%topic, "unsubscribing");
                    t.abort.abort();
                }
            }
            (false, None) => {}
        }
    }

    /// Starts reading a confirmed subscription (unless it was given up meanwhile).
    fn add(&mut self, new: NewSubscription) {
        let NewSubscription {
            topic,
            generation,
            subscriber,
            abort,
        } = new;
        let current = self
            .topics
            .get(&topic)
            .is_some_and(|t| t.generation == generation);
        if !current {
            return; // dropping the subscriber unsubscribes
        }
        let end_topic = topic.clone();
        let messages = Abortable::new(subscriber, abort)
            .map(move |m| (topic.clone(), generation, Some(m)))
            .chain(futures::stream::once(async move {
                (end_topic, generation, None)
            }));
        self.streams.push(messages.boxed());
    }

    /// A subscription's stream ended (unsubscribed, or the client closed).
    fn ended(&mut self, topic: &TopicName, generation: u64) {
        if self
            .topics
            .get(topic)
            .is_some_and(|t| t.generation == generation)
        {
            self.topics.remove(topic);
            tracing::warn!(%topic, "subscription ended by the client; re-subscribing");
            let mut batch = Vec::new();
            self.reconcile(topic.clone(), true, &mut batch);
            self.bus.config.confirmations.inc();
            tokio::spawn(subscribe(
                self.client.clone(),
                self.bus.feed.clone(),
                self.bus.config.subject_prefix.clone(),
                self.new_subs.0.clone(),
                batch,
            ));
        }
    }
}

/// Where a new subscription belongs.
struct NewTopic {
    topic: TopicName,
    generation: u64,
    registration: AbortRegistration,
    /// Set once the server confirmed it.
    confirmed: Arc<AtomicBool>,
}

fn on_event(hub: &Feed, gauge: &IntGauge, event: Event) {
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

/// Subscribes a batch of topics, confirms them all with one round trip and hands them to
/// the read loop.
async fn subscribe(
    client: Client,
    hub: Feed,
    prefix: String,
    read_loop: mpsc::Sender<NewSubscription>,
    batch: Vec<NewTopic>,
) {
    let mut made = Vec::with_capacity(batch.len());
    for new in batch {
        let subject = subject_for(&prefix, &new.topic);
        match client.subscribe(subject.clone()).await {
            Ok(subscriber) => {
                tracing::debug!(topic = %new.topic, %subject, "subscribed");
                made.push((new, subscriber));
            }
            Err(e) => tracing::error!(topic = %new.topic, %subject, error = %e, "cannot subscribe"),
        }
    }
    // The SUBs on the wire (while disconnected this waits for the reconnect, which
    // re-sends the SUBs first), then one round trip after them: once answered, the server
    // has processed every SUB and every message published from now on reaches us.
    // Messages arriving meanwhile wait in the subscribers' channels.
    match tokio::time::timeout(CONFIRM_TIMEOUT, client.flush()).await {
        Ok(Ok(())) => {
            if let Err(e) = server_caught_up(&client).await {
                tracing::debug!(topics = made.len(), error = %e, "subscriptions not confirmed");
            }
        }
        Ok(Err(e)) => {
            tracing::debug!(topics = made.len(), error = %e, "subscriptions not confirmed")
        }
        Err(_) => tracing::debug!(topics = made.len(), "subscriptions not confirmed in time"),
    }
    let mut ready = Vec::with_capacity(made.len());
    for (new, subscriber) in made {
        let NewTopic {
            topic,
            generation,
            registration,
            confirmed,
        } = new;
        let handed = NewSubscription {
            topic: topic.clone(),
            generation,
            subscriber,
            abort: registration,
        };
        if read_loop.send(handed).await.is_err() {
            return;
        }
        confirmed.store(true, Ordering::Release);
        ready.push(topic);
    }
    hub.upstream_ready_many(&ready);
}

/// Waits until the server has processed everything `client` sent before this call. A
/// flush only puts bytes on the wire; the server handles one connection's protocol in
/// order, so the answer to a request sent now (nobody listens on [`PROBE_SUBJECT`]: the
/// answer is the server's "no responders") comes after all of it took effect.
async fn server_caught_up(client: &Client) -> Result<(), String> {
    use async_nats::RequestErrorKind;
    match tokio::time::timeout(
        PROBE_TIMEOUT,
        client.request(PROBE_SUBJECT, bytes::Bytes::new()),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
        Ok(Err(e)) => Err(format!("probe request to {PROBE_SUBJECT}: {e}")),
        Err(_) => Err(format!(
            "no answer to the probe request to {PROBE_SUBJECT} within {PROBE_TIMEOUT:?}"
        )),
    }
}

/// The frame's `event:` field, from the [`EVENT_HEADER`] of a message. An empty header
/// means "no type": the message is delivered without an `event:` line.
pub(crate) fn event_type(headers: Option<&async_nats::HeaderMap>) -> Option<String> {
    headers
        .and_then(|h| h.get(EVENT_HEADER))
        .map(|v| v.as_str())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Hands a message to the hub. A message this process published itself (its
/// [`PUBLISH_HEADER`] marker is pending) is timed from its publish, and its publisher is
/// told the sequence it got.
fn ingest(
    feed: &Feed,
    pending: &Pending,
    tracer: Option<&Tracer>,
    topic: &TopicName,
    message: Message,
) {
    let headers = message.headers.as_ref();
    let event_type = event_type(headers);
    let marker: Option<u64> = headers
        .and_then(|h| h.get(PUBLISH_HEADER))
        .and_then(|v| v.as_str().parse().ok());
    let span = crate::trace::ingest_span(
        tracer,
        tracer
            .and(headers)
            .and_then(|h| h.get(TRACEPARENT))
            .map(|v| v.as_str().as_bytes()),
    )
    .map(|mut span| {
        span.set("messaging.destination.name", message.subject.to_string());
        span
    });
    ingest_parts(
        feed,
        pending,
        topic.as_str(),
        message.payload,
        event_type,
        marker,
        span,
    );
}

/// [`ingest`] for a message already taken apart: its payload, its [`EVENT_HEADER`]
/// (empty: no type), its [`PUBLISH_HEADER`] marker and its `ingest` span (when traced).
pub(crate) fn ingest_parts(
    feed: &Feed,
    pending: &Pending,
    topic: &str,
    payload: bytes::Bytes,
    event_type: Option<String>,
    marker: Option<u64>,
    span: Option<Span>,
) {
    let started = marker.and_then(|m| pending.started(m));
    let payload_len = payload.len();
    let outcome = feed.ingest_named(
        topic,
        Incoming {
            payload,
            event_type,
            received: started.unwrap_or_else(Instant::now),
            trace: span.as_ref().and_then(Span::parent),
        },
    );
    if let Some(span) = span {
        crate::trace::end_ingest(span, topic, payload_len, outcome);
    }
    match outcome {
        Ingested::Stored(seq) => {
            if let Some(marker) = marker {
                pending.stored(marker, seq);
            }
        }
        Ingested::NoSuchTopic => {}
        other => tracing::debug!(%topic, ?other, "dropped a message"),
    }
}
