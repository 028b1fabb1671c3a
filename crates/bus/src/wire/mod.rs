//! Core subscriptions on a connection of the gateway's own.
//!
//! A NATS client library gives every subscription its own channel (async-nats: a block of
//! 32 message slots, ≈ 6 KB, allocated up front), which makes a topic cost more than a
//! stream. Here every subscription is an entry in two maps (≈ 100 bytes) and all of them
//! share one connection and one read buffer: messages are parsed where they are read and
//! handed to the hub in the order the server sent them.
//!
//! New subscriptions are confirmed in batches: the `SUB`s of everything the hub opened
//! since the last look go out together, followed by one `PING`; the server handles a
//! connection's protocol in order, so its `PONG` means every one of those `SUB`s is in
//! place and whatever is published from then on reaches us. A stream opening 16 new
//! topics (or a burst of streams opening many) waits one round trip, not sixteen.
//!
//! Topic families (`sse.aggregate`, e.g. `user.*`) are held by one wildcard subscription
//! each, made with the connection and kept: a topic of a family costs the bus nothing,
//! is ready as soon as its family is, and its messages are told apart by subject (those
//! of topics nobody here holds are dropped by the hub at a hash lookup).
//!
//! Only plain `nats://` servers are spoken to this way; with `tls://` or WebSocket URLs
//! the bus keeps one client-library subscription per topic ([`crate::nats`]).

pub(crate) mod proto;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_nats::ServerAddr;
use bytes::BytesMut;
use prometheus::{IntCounter, IntGauge};
use sse_hub::{Feed, TopicName};
use sse_trace::{TRACEPARENT, Tracer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::nats::{Demand, EVENT_HEADER, PUBLISH_HEADER, ingest_parts, subject_for};
use crate::publish::Pending;
use proto::{Info, Msg, ServerOp};

/// How long connecting, the server's `INFO` and the answer to `CONNECT` may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often an idle connection is checked with a `PING`; two unanswered in a row and
/// the connection is taken as dead.
const PING_INTERVAL: Duration = Duration::from_secs(20);

/// How long writing to the server may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether every server of `servers` can be spoken to by this module.
pub(crate) fn supports(servers: &[ServerAddr]) -> bool {
    servers.iter().all(|s| s.scheme() == "nats")
}

/// What the subscriber connection needs.
#[derive(Debug)]
pub(crate) struct Wire<'a> {
    pub servers: &'a [ServerAddr],
    pub prefix: &'a str,
    pub families: &'a [TopicName],
    pub name: &'a str,
    pub feed: &'a Feed,
    pub pending: &'a Pending,
    pub demand: &'a Demand,
    pub connected: &'a IntGauge,
    pub confirmations: &'a IntCounter,
    /// Tracing on: each message's `ingest` span, when sampled.
    pub tracer: Option<&'a Tracer>,
}

/// One topic's subscription.
#[derive(Debug)]
struct Sub {
    sid: u64,
    /// The server confirmed it on the current connection.
    confirmed: bool,
}

/// The subscriptions the hub wants, kept across connections (a new connection sends
/// them all again).
#[derive(Debug, Default)]
struct Subs {
    by_topic: HashMap<TopicName, Sub>,
    by_sid: HashMap<u64, TopicName>,
    next_sid: u64,
    /// Per family of [`Wire::families`] (its sid is its index + 1, below every topic's):
    /// confirmed on this connection, and the topics waiting for that.
    families: Vec<FamilyState>,
}

#[derive(Debug, Default)]
struct FamilyState {
    confirmed: bool,
    waiting: Vec<TopicName>,
}

/// What a `PONG` confirms.
#[derive(Debug)]
enum Confirm {
    /// The connection's first round trip: everything wanted is subscribed again.
    Up,
    Topic(TopicName),
    Family(usize),
}

/// Why a connection ended.
enum End {
    Shutdown,
    Lost(String),
}

/// One connection's protocol state.
struct Session {
    /// Bytes to send.
    out: Vec<u8>,
    /// Per `PING` sent and not answered yet, in order: when it was sent and what its
    /// `PONG` confirms.
    awaiting: VecDeque<(Instant, Vec<Confirm>)>,
    /// The first round trip came back: the hub was told the link is up.
    up: bool,
}

impl Wire<'_> {
    /// Keeps the hub's subscriptions on a connection, remaking it forever, until
    /// `shutdown` resolves.
    pub async fn run(&self, mut shutdown: Pin<&mut impl Future<Output = ()>>) {
        let mut subs = Subs {
            // Families take sids 1 ..= n; topics the ones after.
            next_sid: self.families.len() as u64,
            families: self
                .families
                .iter()
                .map(|_| FamilyState::default())
                .collect(),
            ..Subs::default()
        };
        let mut attempt: usize = 0;
        let mut was_up = false;
        loop {
            let server = &self.servers[attempt % self.servers.len().max(1)];
            let end = tokio::select! {
                () = &mut shutdown => End::Shutdown,
                end = self.session(server, &mut subs, &mut was_up, attempt) => end,
            };
            match end {
                End::Shutdown => break,
                End::Lost(reason) => {
                    if was_up {
                        tracing::warn!(server = %server.as_url_str(), %reason, "lost the NATS subscriber connection; streams stay open, topics get upstream_gap");
                        self.connected.set(0);
                        self.feed.set_connected(false);
                        was_up = false;
                        attempt = 0;
                    } else if attempt.is_multiple_of(20) {
                        tracing::warn!(server = %server.as_url_str(), %reason, attempt, "cannot connect the NATS subscriber connection; retrying");
                    } else {
                        tracing::debug!(server = %server.as_url_str(), %reason, attempt, "NATS subscriber connection failed");
                    }
                }
            }
            // 0, 100, 200 … ms, at most 2 s: back quickly after a restart.
            let delay = Duration::from_millis((attempt as u64 * 100).min(2_000));
            attempt += 1;
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        self.connected.set(0);
    }

    /// Connects to `server`, subscribes everything wanted, and serves the connection
    /// until it fails.
    async fn session(
        &self,
        server: &ServerAddr,
        subs: &mut Subs,
        was_up: &mut bool,
        attempt: usize,
    ) -> End {
        let (stream, mut buf) =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(server)).await {
                Ok(Ok(connected)) => connected,
                Ok(Err(reason)) => return End::Lost(reason),
                Err(_) => return End::Lost(format!("no handshake within {HANDSHAKE_TIMEOUT:?}")),
            };
        let (mut reader, mut writer) = stream.into_split();
        tracing::info!(server = %server.as_url_str(), attempt, topics = subs.by_topic.len(), "NATS subscriber connection up");

        let mut session = Session {
            out: Vec::new(),
            awaiting: VecDeque::new(),
            up: false,
        };
        // The families, and everything wanted, go out again, confirmed by one round trip;
        // the link counts as up (readiness, new streams waiting for confirmations) only
        // once they are in place.
        let mut again: Vec<Confirm> =
            Vec::with_capacity(1 + self.families.len() + subs.by_topic.len());
        again.push(Confirm::Up);
        for (i, family) in self.families.iter().enumerate() {
            subs.families[i].confirmed = false;
            proto::sub(
                &mut session.out,
                &subject_for(self.prefix, family),
                i as u64 + 1,
            );
            again.push(Confirm::Family(i));
        }
        for (topic, sub) in &mut subs.by_topic {
            sub.confirmed = false;
            proto::sub(&mut session.out, &subject_for(self.prefix, topic), sub.sid);
            again.push(Confirm::Topic(topic.clone()));
        }
        session.confirm(again, self.confirmations);
        // What the hub asked for before this connection; later, when it says so.
        self.reconcile(subs, &mut session);
        let mut keepalive =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
        loop {
            if !session.out.is_empty() {
                let out = std::mem::take(&mut session.out);
                match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return End::Lost(format!("write: {e}")),
                    Err(_) => return End::Lost(format!("write blocked for {WRITE_TIMEOUT:?}")),
                }
            }
            tokio::select! {
                read = reader.read_buf(&mut buf) => match read {
                    Ok(0) => return End::Lost("the server closed the connection".to_owned()),
                    Ok(_) => {
                        let served = self.serve(&mut buf, subs, &mut session);
                        *was_up |= session.up;
                        if let Err(reason) = served {
                            return End::Lost(reason);
                        }
                    }
                    Err(e) => return End::Lost(format!("read: {e}")),
                },
                () = self.demand.changed.notified() => self.reconcile(subs, &mut session),
                _ = keepalive.tick() => {
                    // The oldest PING unanswered for a whole interval: the server or the
                    // path to it is gone.
                    if let Some((sent, _)) = session.awaiting.front()
                        && sent.elapsed() >= PING_INTERVAL
                    {
                        return End::Lost(format!("no PONG for {PING_INTERVAL:?}"));
                    }
                    session.out.extend_from_slice(proto::PING);
                    session.awaiting.push_back((Instant::now(), Vec::new()));
                }
            }
        }
    }

    /// TCP connect, the server's `INFO`, our `CONNECT`, and a `PING` answered.
    async fn handshake(&self, server: &ServerAddr) -> Result<(TcpStream, BytesMut), String> {
        let mut stream = TcpStream::connect((server.host(), server.port()))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let info = match read_op(&mut stream, &mut buf).await? {
            ServerOp::Info(json) => Info::parse(&json).map_err(|e| e.to_string())?,
            other => return Err(format!("expected INFO, got {other:?}")),
        };
        if info.tls_required {
            return Err("the server requires TLS: give nats.url as tls://…".to_owned());
        }
        if !info.headers {
            return Err(
                "the server does not support headers (NATS 2.2 or later is needed)".to_owned(),
            );
        }
        let mut hello = proto::connect(self.name);
        hello.extend_from_slice(proto::PING);
        stream
            .write_all(&hello)
            .await
            .map_err(|e| format!("write: {e}"))?;
        loop {
            match read_op(&mut stream, &mut buf).await? {
                ServerOp::Pong => return Ok((stream, buf)),
                ServerOp::Err(text) => return Err(format!("the server refused CONNECT: {text}")),
                ServerOp::Ping => stream
                    .write_all(proto::PONG)
                    .await
                    .map_err(|e| format!("write: {e}"))?,
                ServerOp::Info(_) | ServerOp::Ok | ServerOp::Msg(_) => {}
            }
        }
    }

    /// Brings the subscriptions in line with the hub's wishes: `SUB`s for new topics
    /// (confirmed together by one `PING`), `UNSUB`s for dropped ones.
    fn reconcile(&self, subs: &mut Subs, session: &mut Session) {
        let wishes = self.demand.take();
        if wishes.is_empty() {
            return;
        }
        let mut new: Vec<Confirm> = Vec::new();
        let mut ready: Vec<TopicName> = Vec::new();
        for (topic, wanted) in wishes {
            if let Some(i) = self.family_of(&topic) {
                // Its family's subscription serves it; nothing to drop when it goes.
                if wanted {
                    let family = &mut subs.families[i];
                    if family.confirmed {
                        ready.push(topic);
                    } else {
                        family.waiting.push(topic);
                    }
                }
                continue;
            }
            match (wanted, subs.by_topic.get(&topic)) {
                // The hub dropped and re-made the topic while its subscription stayed.
                (true, Some(sub)) => {
                    if sub.confirmed {
                        ready.push(topic);
                    }
                }
                (true, None) => {
                    subs.next_sid += 1;
                    let sid = subs.next_sid;
                    proto::sub(&mut session.out, &subject_for(self.prefix, &topic), sid);
                    subs.by_sid.insert(sid, topic.clone());
                    subs.by_topic.insert(
                        topic.clone(),
                        Sub {
                            sid,
                            confirmed: false,
                        },
                    );
                    new.push(Confirm::Topic(topic));
                }
                (false, Some(_)) => {
                    if let Some(sub) = subs.by_topic.remove(&topic) {
                        tracing::debug!(%topic, "unsubscribing");
                        subs.by_sid.remove(&sub.sid);
                        proto::unsub(&mut session.out, sub.sid);
                    }
                }
                (false, None) => {}
            }
        }
        if !ready.is_empty() {
            self.feed.upstream_ready_many(&ready);
        }
        session.confirm(new, self.confirmations);
        // Maps shrink back after a wave of topics left.
        if subs.by_topic.capacity() > 64 && subs.by_topic.len() < subs.by_topic.capacity() / 4 {
            subs.by_topic.shrink_to(subs.by_topic.len() * 2);
            subs.by_sid.shrink_to(subs.by_sid.len() * 2);
        }
    }

    /// Handles every complete operation in `buf`.
    fn serve(
        &self,
        buf: &mut BytesMut,
        subs: &mut Subs,
        session: &mut Session,
    ) -> Result<(), String> {
        loop {
            let op = match proto::parse(buf) {
                Ok(Some(op)) => op,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            };
            match op {
                ServerOp::Msg(msg) => self.deliver(subs, msg),
                ServerOp::Ping => session.out.extend_from_slice(proto::PONG),
                ServerOp::Pong => {
                    let confirms = session
                        .awaiting
                        .pop_front()
                        .map(|(_, confirms)| confirms)
                        .unwrap_or_default();
                    let mut confirmed = Vec::with_capacity(confirms.len());
                    for confirm in confirms {
                        match confirm {
                            Confirm::Topic(topic) => {
                                if let Some(sub) = subs.by_topic.get_mut(&topic) {
                                    sub.confirmed = true;
                                    confirmed.push(topic);
                                }
                            }
                            Confirm::Up => {
                                session.up = true;
                                self.connected.set(1);
                                self.feed.set_connected(true);
                            }
                            Confirm::Family(i) => {
                                if let Some(family) = subs.families.get_mut(i) {
                                    family.confirmed = true;
                                    confirmed.append(&mut family.waiting);
                                }
                            }
                        }
                    }
                    if !confirmed.is_empty() {
                        self.feed.upstream_ready_many(&confirmed);
                    }
                }
                ServerOp::Err(text) => {
                    tracing::warn!(error = %text, "NATS server error on the subscriber connection")
                }
                ServerOp::Info(_) | ServerOp::Ok => {}
            }
        }
    }

    /// The family `topic` belongs to (wildcard topics never belong to one: they keep a
    /// subscription of their own).
    fn family_of(&self, topic: &TopicName) -> Option<usize> {
        if topic.is_wildcard() {
            return None;
        }
        self.families.iter().position(|f| f.matches(topic.as_str()))
    }

    /// Hands a message to the hub under the topic of its subscription, or, for a
    /// family's, under the topic its subject names.
    fn deliver(&self, subs: &Subs, msg: Msg) {
        let topic = if msg.sid <= self.families.len() as u64 {
            std::str::from_utf8(&msg.subject)
                .ok()
                .and_then(|s| s.strip_prefix(self.prefix))
                .and_then(|s| s.strip_prefix('.'))
        } else {
            // None: a message for a subscription just dropped (the hub let it go).
            subs.by_sid.get(&msg.sid).map(TopicName::as_str)
        };
        let Some(topic) = topic else {
            return;
        };
        let event_type = msg
            .header(EVENT_HEADER)
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let marker = msg.header(PUBLISH_HEADER).and_then(|v| v.parse().ok());
        let span = crate::trace::ingest_span(
            self.tracer,
            self.tracer
                .and_then(|_| msg.header(TRACEPARENT))
                .map(str::as_bytes),
        )
        .map(|mut span| {
            let subject = String::from_utf8_lossy(&msg.subject).into_owned();
            span.set("messaging.destination.name", subject);
            span
        });
        ingest_parts(
            self.feed,
            self.pending,
            topic,
            msg.payload,
            event_type,
            marker,
            span,
        );
    }
}

impl Session {
    /// Sends a `PING` whose `PONG` confirms `topics` (none: nothing to confirm).
    fn confirm(&mut self, topics: Vec<Confirm>, counter: &IntCounter) {
        if topics.is_empty() {
            return;
        }
        self.out.extend_from_slice(proto::PING);
        self.awaiting.push_back((Instant::now(), topics));
        counter.inc();
    }
}

/// Reads until one operation is complete (the handshake only).
async fn read_op(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<ServerOp, String> {
    loop {
        if let Some(op) = proto::parse(buf).map_err(|e| e.to_string())? {
            return Ok(op);
        }
        if stream
            .read_buf(buf)
            .await
            .map_err(|e| format!("read: {e}"))?
            == 0
        {
            return Err("the server closed the connection".to_owned());
        }
    }
}
