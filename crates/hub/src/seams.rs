//! Where a hub's messages come from: the seams between the hub and a bus.
//!
//! A hub is told at construction ([`crate::Hub::new`]) what feeds it, as a [`Source`];
//! it then asks that source for what it needs through the traits below, and the bus
//! answers through the hub's ingest face, [`crate::Feed`]. The hub knows neither NATS
//! nor JetStream: only these calls.
//!
//! ```text
//!   Hub ──open / close (topic), flush─▶ Upstream (core subscriptions)
//!   Hub ──replay (request, sink)────▶ History  (a durable log)
//!   Feed ◀──ingest, ingest_logged, upstream_ready, set_connected, start_log── bus
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::replay::{ReplayRequest, ReplaySink};
use crate::topic::TopicName;

/// A boxed future a seam returns.
pub type SeamFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What feeds a hub; fixed when the hub is made.
#[derive(Clone)]
pub enum Source {
    /// No broker: messages are published into this process
    /// ([`crate::Feed::publish_local`]); every topic is ready at once.
    Local,
    /// One upstream subscription per active topic, made and dropped by the
    /// [`Upstream`]; messages arrive through [`crate::Feed::ingest`]. Ids are the hub's
    /// own sequences; an upstream outage is a gap (`upstream_gap`).
    Core(Arc<dyn Upstream>),
    /// A durable log read in full by the bus ([`crate::Feed::ingest_logged`]): ids are
    /// log positions, an outage loses nothing, and resumes older than the rings are
    /// replayed by the [`History`].
    Log(Arc<dyn History>),
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Local => "Local",
            Self::Core(_) => "Core",
            Self::Log(_) => "Log",
        })
    }
}

/// Subscribes and unsubscribes topics upstream (core subscriptions).
///
/// The hub calls it with its topic table locked, in the order its topics come and go,
/// so the last call for a topic is always the hub's current wish. An implementation must
/// therefore return at once: record the wish and act on it elsewhere; it must not call
/// back into the hub from these methods.
pub trait Upstream: Send + Sync {
    /// `topic` became active (its first stream, or a publish through this process):
    /// subscribe to it. Once every message published from then on will reach the hub,
    /// report it with [`crate::Feed::upstream_ready`]; a stream waits for that (a few
    /// seconds at most) before its response head goes out.
    fn open(&self, topic: &TopicName);

    /// `topic` has had no stream for `topic_linger` and the hub let it go: unsubscribe.
    /// Messages for it that still arrive are ignored ([`crate::Ingested::NoSuchTopic`]).
    fn close(&self, topic: &TopicName);

    /// Ends a burst of [`Upstream::open`] and [`Upstream::close`] calls: the topics of one
    /// stream, of one publish, or of one linger sweep. An implementation may hold the
    /// calls until then and act on them together (one confirmation for all of a stream's
    /// new topics). Called without the topic table locked.
    fn flush(&self) {}
}

/// Replays what the rings no longer hold, from a durable log.
pub trait History: Send + Sync {
    /// Called once per resuming stream whose last id is older than the rings (or could
    /// not be checked yet); the hub runs the returned future on a task of its own.
    ///
    /// The future sends, in log order, every message of `request.topics` after
    /// `request.after` up to the seam (`request.upto`, or the position the live reader
    /// started after when that is `None`) into `sink`, then [`ReplaySink::done`]; or one
    /// [`ReplaySink::reset`] when the log cannot honour the id. It returns when done or
    /// when the stream went away ([`ReplaySink::is_closed`]). The stream writes nothing
    /// live until the replay ends, so the seam has no gap and no duplicate.
    fn replay(&self, request: ReplayRequest, sink: ReplaySink) -> SeamFuture;
}
