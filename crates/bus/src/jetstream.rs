//! JetStream-backed topics: one ordered consumer reads the whole stream into the hub,
//! ids are stream sequences, and resumes older than the hub's rings are replayed from
//! the stream.
//!
//! The stream captures `<subject_prefix>.>`. ONE ordered consumer per gateway process
//! reads it from the position the gateway started at, in stream order, and hands every
//! message with its stream sequence to [`Feed::ingest_logged`], which routes it to the
//! active topics it matches. Reading in stream order is what lets a stream over several
//! topics be exact: a single id (a stream sequence) says how far it got on all of them.
//! The ordered consumer recreates itself after a gap or an outage from the last sequence
//! it delivered, so a NATS restart loses nothing.
//!
//! Event ids are `<epoch>-<stream sequence>` where the epoch is the stream's creation
//! time: every gateway instance gives a message the same id, and a stream deleted and
//! recreated gets a new epoch (old ids are then `unknown_id`).
//!
//! ## Replays
//!
//! A resume older than the hub's rings is replayed from the stream with ONE ephemeral
//! consumer, however many topics the resuming stream has. nats-server 2.10 and later
//! take several filter subjects on one consumer: the replay filters on its topics'
//! subjects (unless two of them overlap, which the server refuses). Before 2.10 a
//! consumer has one filter subject: a replay of one topic filters on its subject, a
//! replay of several reads `<prefix>.>` from the resume position and keeps the messages
//! of its topics (wildcards included) itself, which costs reading the other subjects'
//! messages in that range. At most `max_concurrent_replays` replays talk to JetStream
//! at once; the others wait their turn with their stream open (it gets heartbeats).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, StorageType, Stream};
use async_nats::jetstream::{self, Context, ErrorCode};
use futures::StreamExt;
use sse_hub::{
    Epoch, Feed, Incoming, ReplayRequest, ReplaySink, ResetReason, SeamFuture, TopicName,
};
use sse_trace::{Span, TRACEPARENT, Tracer};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::nats::{event_type, subject_for};

/// `[jetstream]` of the configuration.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// Stream name.
    pub stream: String,
    /// Create the stream when it is missing (never changes an existing one).
    pub create: bool,
    /// When created: how long messages are kept.
    pub max_age: Duration,
    /// When created: replicas (3 on a 3-node cluster).
    pub replicas: usize,
    /// Replays reading the stream at once; more wait their turn.
    pub max_concurrent_replays: usize,
}

/// Messages fetched per request while replaying.
const REPLAY_BATCH: usize = 256;
/// The description of replay consumers (visible in the server's consumer list).
pub const REPLAY_CONSUMER: &str = "sse-gateway replay";
/// Messages per pull request of the live consumer.
const LIVE_BATCH: usize = 1024;
/// Idle heartbeat of the live consumer: two missed ones and it is recreated.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Retries of the stream or the consumer after a failure: the first wait, and the
/// longest.
const RETRY: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

/// Waits between retries: from [`RETRY`]`.0`, doubling up to `.1`, each wait a random
/// 50–100 % of that (so that gateways that lost the same server do not come back in
/// step); back to the first after a success.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { next: RETRY.0 }
    }

    /// The last attempt worked: the next failure waits the shortest time again.
    fn reset(&mut self) {
        self.next = RETRY.0;
    }

    /// The next wait (the one after it is longer).
    fn next_wait(&mut self) -> Duration {
        let wait = self.next.mul_f64(0.5 + fastrand::f64() / 2.0);
        self.next = (self.next * 2).min(RETRY.1);
        wait
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.next_wait()).await;
    }
}

/// What the live consumer knows of the stream.
#[derive(Debug)]
struct Log {
    js: Context,
    stream: String,
    prefix: String,
    epoch: Epoch,
    /// The live consumer started after this sequence.
    start: u64,
}

/// A handle to the stream for replays; clone it freely. Replays wait until the stream
/// has been found, and for a turn (at most `max_concurrent_replays` at once).
#[derive(Debug, Clone)]
pub struct JetStreamHistory {
    log: watch::Receiver<Option<Arc<Log>>>,
    turns: Arc<Semaphore>,
}

/// The sending side of [`JetStreamHistory`], owned by the live consumer.
#[derive(Debug)]
pub(crate) struct HistoryWriter(watch::Sender<Option<Arc<Log>>>);

impl HistoryWriter {
    /// `max_concurrent_replays`: replays reading the stream at once (at least 1).
    pub(crate) fn new(max_concurrent_replays: usize) -> (Self, JetStreamHistory) {
        let (tx, rx) = watch::channel(None);
        let turns = Arc::new(Semaphore::new(max_concurrent_replays.max(1)));
        (Self(tx), JetStreamHistory { log: rx, turns })
    }
}

/// The epoch of a stream: its creation time in nanoseconds, base 36.
fn epoch_of(created_nanos: i128) -> Epoch {
    Epoch::from_number(u128::try_from(created_nanos).unwrap_or_default())
}

/// Finds (or creates) the stream, retrying while NATS is unreachable.
async fn ensure_stream(js: &Context, config: &JetStreamConfig, prefix: &str) -> Stream {
    let mut logged = false;
    let mut backoff = Backoff::new();
    loop {
        match js.get_stream(&config.stream).await {
            Ok(stream) => return stream,
            Err(e) => {
                let missing = matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(ref j)
                        if j.error_code() == ErrorCode::STREAM_NOT_FOUND
                );
                if missing && config.create {
                    let wanted = StreamConfig {
                        name: config.stream.clone(),
                        subjects: vec![format!("{prefix}.>")],
                        storage: StorageType::File,
                        discard: DiscardPolicy::Old,
                        max_age: config.max_age,
                        num_replicas: config.replicas,
                        ..StreamConfig::default()
                    };
                    match js.create_stream(wanted).await {
                        Ok(stream) => {
                            tracing::info!(stream = %config.stream, "created the JetStream stream");
                            return stream;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot create the JetStream stream"),
                    }
                } else if missing {
                    tracing::error!(stream = %config.stream, "the JetStream stream does not exist and jetstream.create is false");
                } else if !logged {
                    tracing::warn!(error = %e, "JetStream not reachable yet");
                    logged = true;
                }
            }
        }
        backoff.wait().await;
    }
}

/// Reads the stream into the hub until `shutdown`.
pub(crate) async fn run_live(
    client: Client,
    hub: Feed,
    config: JetStreamConfig,
    prefix: String,
    history: HistoryWriter,
    tracer: Option<Tracer>,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) {
    let js = jetstream::new(client);
    let filter = format!("{prefix}.>");
    let topic_start = prefix.len() + 1;
    let mut backoff = Backoff::new();
    loop {
        let mut stream = tokio::select! {
            () = &mut shutdown => return,
            s = ensure_stream(&js, &config, &prefix) => s,
        };
        let info = match stream.info().await {
            Ok(info) => info.clone(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the stream's state; retrying");
                backoff.wait().await;
                continue;
            }
        };
        if !info.config.subjects.iter().any(|s| s == &filter) {
            tracing::warn!(stream = %config.stream, subjects = ?info.config.subjects, expected = %filter,
                "the stream does not capture every topic subject; topics outside it get no events");
        }
        let epoch = epoch_of(info.created.unix_timestamp_nanos());
        // Resume after what the hub already has when this is a reconnect to the same
        // stream; start at the stream's end otherwise.
        let known = hub.epoch() == epoch && hub.log_position() > 0;
        let start = if known {
            hub.log_position()
        } else {
            info.state.last_sequence
        };
        hub.start_log(epoch.clone(), start);
        history.0.send_replace(Some(Arc::new(Log {
            js: js.clone(),
            stream: config.stream.clone(),
            prefix: prefix.clone(),
            epoch,
            start,
        })));
        // Our own ordered consumer: a plain ephemeral pull consumer from the position
        // after the last message the hub has, recreated from there after any failure
        // (missed heartbeats when its node dies, a reconnect, a deleted consumer). Each
        // position reaches the hub once and in order; nothing is skipped.
        loop {
            let from = hub.log_position() + 1;
            let consumer = stream
                .create_consumer(pull::Config {
                    filter_subject: filter.clone(),
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: from,
                    },
                    ack_policy: AckPolicy::None,
                    inactive_threshold: Duration::from_secs(30),
                    memory_storage: true,
                    num_replicas: 1,
                    ..Default::default()
                })
                .await;
            let messages = match consumer {
                Ok(c) => {
                    c.stream()
                        .max_messages_per_batch(LIVE_BATCH)
                        .heartbeat(HEARTBEAT)
                        .expires(HEARTBEAT * 5)
                        .messages()
                        .await
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create the stream consumer; retrying");
                    break;
                }
            };
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the stream consumer; retrying");
                    break;
                }
            };
            tracing::info!(stream = %config.stream, from, "reading the JetStream stream");
            let mut read = false;
            loop {
                let next = tokio::select! {
                    () = &mut shutdown => return,
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(message)) => {
                        if !read {
                            // The consumer works: a later failure starts the waits over.
                            read = true;
                            backoff.reset();
                        }
                        ingest(&hub, topic_start, tracer.as_ref(), &message);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "the stream consumer failed; recreating it");
                        break;
                    }
                    None => break,
                }
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = backoff.wait() => {}
            }
        }
        backoff.wait().await;
    }
}

/// Hands one message of the stream to the hub. Its delivery latency is measured from
/// the stream's timestamp of it.
fn ingest(hub: &Feed, topic_start: usize, tracer: Option<&Tracer>, message: &jetstream::Message) {
    let Ok(info) = message.info() else {
        return;
    };
    let seq = info.stream_sequence;
    let Some(subject) = message.subject.get(topic_start..) else {
        return;
    };
    let published = published_instant(info.published.unix_timestamp_nanos(), now_unix_nanos());
    let span = crate::trace::ingest_span(
        tracer,
        tracer
            .and(message.headers.as_ref())
            .and_then(|h| h.get(TRACEPARENT))
            .map(|v| v.as_str().as_bytes()),
    )
    .map(|mut span| {
        span.set("messaging.destination.name", message.subject.to_string());
        span.set("sse.stream_sequence", seq);
        span
    });
    let mut msg = incoming(message, published);
    msg.trace = span.as_ref().and_then(Span::parent);
    let outcome = hub.ingest_logged(subject, seq, msg);
    if let Some(span) = span {
        crate::trace::end_ingest(span, subject, message.payload.len(), outcome);
    }
}

/// What the hub takes of a message of the stream (a logged message needs no publish
/// marker: its id is its stream sequence, known to the publisher).
fn incoming(message: &jetstream::Message, received: Instant) -> Incoming {
    Incoming {
        payload: message.payload.clone(),
        event_type: event_type(message.headers.as_ref()),
        received,
        trace: None,
    }
}

/// The moment a message stored at wall-clock `published_nanos` (the stream's
/// timestamp) was published, on this process's monotonic clock: now less its age, an
/// age below zero (the server's clock ahead of ours) counting as zero.
fn published_instant(published_nanos: i128, now_nanos: i128) -> Instant {
    let now = Instant::now();
    let age = u64::try_from(now_nanos.saturating_sub(published_nanos)).unwrap_or(0);
    now.checked_sub(Duration::from_nanos(age)).unwrap_or(now)
}

fn now_unix_nanos() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

impl sse_hub::History for JetStreamHistory {
    fn replay(&self, request: ReplayRequest, sink: ReplaySink) -> SeamFuture {
        Box::pin(self.clone().serve(request, sink))
    }
}

impl JetStreamHistory {
    /// Serves `request` into `sink`: every message of the request's topics after
    /// `after` up to `upto`, in stream order, each once; or one reset when the stream
    /// cannot honour the id. Returns when done or when the stream went away.
    async fn serve(mut self, request: ReplayRequest, sink: ReplaySink) {
        let log = loop {
            if let Some(log) = self.log.borrow_and_update().clone() {
                break log;
            }
            tokio::select! {
                changed = self.log.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(Duration::from_secs(1)) => if sink.is_closed() { return },
            }
        };
        // One turn among `max_concurrent_replays`; given up if the stream goes.
        let _turn = tokio::select! {
            turn = self.turns.clone().acquire_owned() => match turn {
                Ok(turn) => turn,
                Err(_) => return,
            },
            () = sink.closed() => return,
        };
        let upto = request.upto.unwrap_or(log.start);
        if request.epoch != log.epoch.as_str() {
            let _ = sink.reset(ResetReason::UnknownId, upto).await;
            return;
        }
        if let Err(reason) = log.check(request.after, upto).await {
            let _ = sink.reset(reason, upto).await;
            return;
        }
        if request.after < upto
            && let Err(e) = log
                .replay(&request.topics, request.after, upto, &sink)
                .await
        {
            tracing::warn!(error = %e, "replay from JetStream failed; ending the stream's replay with a reset");
            let _ = sink.reset(ResetReason::HistoryExpired, upto).await;
            return;
        }
        // The client's position is confirmed: anything at or below it that this
        // instance has yet to receive live is not sent again.
        let _ = sink.done(request.after).await;
    }
}

impl Log {
    /// Whether every message after `after` is still in the stream.
    async fn check(&self, after: u64, upto: u64) -> Result<(), ResetReason> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|_| ResetReason::HistoryExpired)?;
        let state = stream.cached_info().state.clone();
        if after > upto.max(state.last_sequence) {
            return Err(ResetReason::UnknownId);
        }
        if after + 1 < state.first_sequence {
            return Err(ResetReason::HistoryExpired);
        }
        Ok(())
    }

    /// Sends the topics' messages in `(after, upto]`, in stream order, into `sink`,
    /// read with one consumer.
    async fn replay(
        &self,
        topics: &[TopicName],
        after: u64,
        upto: u64,
        sink: &ReplaySink,
    ) -> Result<(), async_nats::Error> {
        let stream = self.js.get_stream(&self.stream).await?;
        let version = self.js.client().server_info().version;
        let filter = ReplayFilter::choose(server_version(&version), &self.prefix, topics);
        let (filter_subject, filter_subjects) = match &filter {
            ReplayFilter::Subjects(subjects) if subjects.len() == 1 => {
                (subjects[0].clone(), Vec::new())
            }
            ReplayFilter::Subjects(subjects) => (String::new(), subjects.clone()),
            ReplayFilter::Everything(subject) => (subject.clone(), Vec::new()),
        };
        let consumer = stream
            .create_consumer(pull::Config {
                description: Some(REPLAY_CONSUMER.to_owned()),
                filter_subject,
                filter_subjects,
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await?;
        let topic_start = self.prefix.len() + 1;
        let keep = |subject: &str| match &filter {
            ReplayFilter::Subjects(_) => true,
            ReplayFilter::Everything(_) => subject
                .get(topic_start..)
                .is_some_and(|s| topics.iter().any(|t| t.matches(s))),
        };
        let mut source = Source {
            consumer,
            buffered: VecDeque::new(),
            done: false,
        };
        let result = async {
            loop {
                source.refill(upto, &keep, topic_start).await?;
                let Some((seq, topic, msg)) = source.buffered.pop_front() else {
                    return Ok(());
                };
                if sink.message(seq, topic, msg).await.is_err() {
                    return Ok(());
                }
            }
        }
        .await;
        let name = source.consumer.cached_info().name.clone();
        let _ = stream.delete_consumer(&name).await;
        result
    }
}

/// What a replay's consumer filters on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ReplayFilter {
    /// Exactly these subjects: one, or several on a server that takes several.
    Subjects(Vec<String>),
    /// Everything under the prefix; the replay keeps its topics' messages itself.
    Everything(String),
}

impl ReplayFilter {
    /// The filter for a replay of `topics` on a server of `version` (major, minor).
    fn choose(version: (u64, u64), prefix: &str, topics: &[TopicName]) -> Self {
        let subjects = || topics.iter().map(|t| subject_for(prefix, t)).collect();
        match topics {
            [_] => Self::Subjects(subjects()),
            _ if version >= (2, 10) && !any_overlap(topics) => Self::Subjects(subjects()),
            _ => Self::Everything(format!("{prefix}.>")),
        }
    }
}

/// Whether two of `topics` share a subject (a consumer's filter subjects may not).
fn any_overlap(topics: &[TopicName]) -> bool {
    topics
        .iter()
        .enumerate()
        .any(|(i, a)| topics[i + 1..].iter().any(|b| a.overlaps(b)))
}

/// `major.minor` of a server version such as `2.9.10` (`(0, 0)` when unreadable).
fn server_version(version: &str) -> (u64, u64) {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor),
        _ => (0, 0),
    }
}

/// A replay's consumer, fetched in batches.
struct Source {
    consumer: jetstream::consumer::Consumer<pull::Config>,
    /// Sequence, topic (the subject without the prefix), message.
    buffered: VecDeque<(u64, String, Incoming)>,
    done: bool,
}

impl Source {
    /// Fetches the next batch (the messages on subjects `keep` accepts) when the buffer
    /// is empty; done at the first message past `upto` or when nothing more is
    /// available (every message up to `upto` exists).
    async fn refill(
        &mut self,
        upto: u64,
        keep: &impl Fn(&str) -> bool,
        topic_start: usize,
    ) -> Result<(), async_nats::Error> {
        while !self.done && self.buffered.is_empty() {
            let mut batch = self
                .consumer
                .fetch()
                .max_messages(REPLAY_BATCH)
                .messages()
                .await?;
            let mut got = 0;
            while let Some(message) = batch.next().await {
                let message = message?;
                got += 1;
                let Ok(info) = message.info() else {
                    continue;
                };
                let seq = info.stream_sequence;
                if seq > upto {
                    self.done = true;
                    break;
                }
                if keep(&message.subject) {
                    // A replayed message is timed from when it was read back: its
                    // latency is the replay's, not the age of the history it comes from.
                    let topic = message.subject.get(topic_start..).unwrap_or_default();
                    self.buffered.push_back((
                        seq,
                        topic.to_owned(),
                        incoming(&message, Instant::now()),
                    ));
                }
            }
            if got == 0 {
                self.done = true;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn retries_back_off_with_jitter_up_to_a_cap() {
        let mut b = super::Backoff::new();
        let waits: Vec<_> = (0..8).map(|_| b.next_wait()).collect();
        for (i, w) in waits.iter().enumerate() {
            let ceiling = (super::RETRY.0 * 2u32.pow(i as u32)).min(super::RETRY.1);
            assert!(
                *w >= ceiling / 2 && *w <= ceiling,
                "wait {i}: {w:?} vs {ceiling:?}"
            );
        }
        assert!(waits[7] >= super::RETRY.1 / 2, "capped, not reset");
        b.reset();
        assert!(b.next_wait() <= super::RETRY.0);
    }

    use super::*;

    fn topics(names: &[&str]) -> Vec<TopicName> {
        names
            .iter()
            .map(|n| TopicName::parse(n, true).unwrap())
            .collect()
    }

    #[test]
    fn one_consumer_filter_per_replay() {
        let one = topics(&["a.b"]);
        let many = topics(&["a", "b.c"]);
        let overlapping = topics(&["a.*", "a.b"]);
        let subjects =
            |s: &[&str]| ReplayFilter::Subjects(s.iter().map(|s| s.to_string()).collect());
        let everything = ReplayFilter::Everything("sse.>".into());
        // Any server: one topic is its own subject.
        assert_eq!(
            ReplayFilter::choose((2, 9), "sse", &one),
            subjects(&["sse.a.b"])
        );
        // Before 2.10 one filter subject per consumer: everything, kept client-side.
        assert_eq!(ReplayFilter::choose((2, 9), "sse", &many), everything);
        // 2.10 takes several, unless they overlap.
        assert_eq!(
            ReplayFilter::choose((2, 10), "sse", &many),
            subjects(&["sse.a", "sse.b.c"])
        );
        assert_eq!(
            ReplayFilter::choose((2, 11), "sse", &overlapping),
            everything
        );
    }

    #[test]
    fn server_versions() {
        assert_eq!(server_version("2.9.10"), (2, 9));
        assert_eq!(server_version("2.10.0-beta.1"), (2, 10));
        assert_eq!(server_version("v2.11.3"), (2, 11));
        assert_eq!(server_version("garbage"), (0, 0));
        assert!(server_version("2.9.10") < (2, 10));
    }

    #[test]
    fn a_published_timestamp_becomes_an_instant_in_the_past() {
        let now = now_unix_nanos();
        let a = published_instant(now - 2_000_000_000, now);
        let age = Instant::now() - a;
        assert!(
            age >= Duration::from_secs(2) && age < Duration::from_secs(3),
            "{age:?}"
        );
        // The server's clock ahead of ours: no negative age.
        let b = published_instant(now + 5_000_000_000, now);
        assert!(Instant::now() - b < Duration::from_secs(1));
    }
}
