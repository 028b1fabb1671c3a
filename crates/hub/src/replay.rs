//! Replays from a durable log: resumes older than the rings.
//!
//! In durable mode a `Last-Event-ID` the rings cannot serve becomes a
//! [`ReplayRequest`]. The stream's [`Subscription`](crate::Subscription) holds the receiving
//! end of a bounded channel; whoever knows the log (the bus) takes the request with
//! [`Subscription::take_replay`](crate::Subscription::take_replay) and sends, in sequence
//! order, every message of the stream's topics after `after` up to `upto`, or one reset
//! when the log cannot honour the id, then drops the [`ReplaySink`]. The stream writes
//! those frames first and then carries on from its rings, which start right after
//! `upto`: no gap and no duplicate at the seam. The channel's bound is what a replay may
//! hold in memory per stream; a replay that outpaces its client waits.

use tokio::sync::mpsc;

use crate::hub::{Incoming, ResetReason};
use crate::topic::TopicName;

/// Frames a replay may have in flight per stream.
pub(crate) const REPLAY_BUFFER: usize = 256;

/// What a stream needs replayed from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    /// The stream's topics (wildcards included).
    pub topics: Vec<TopicName>,
    /// The epoch of the client's last id: the log decides whether it is its own.
    pub epoch: String,
    /// Replay messages after this position …
    pub after: u64,
    /// … up to and including this one. `None`: the log's live consumer had not started
    /// when the stream was opened; replay up to the position it starts after (see
    /// [`crate::Hub::start_log`]).
    pub upto: Option<u64>,
}

/// One item of a replay.
#[derive(Debug)]
pub enum ReplayItem {
    /// A message at a log position.
    Message {
        /// Log position (the event id's sequence).
        seq: u64,
        /// The topic it was published to (its subject without the prefix).
        topic: String,
        /// The message.
        msg: Incoming,
    },
    /// Everything after `after` was sent: live frames at or below `after` (which a
    /// lagging instance may still be about to receive) are skipped.
    Done {
        /// The client's last position, now confirmed by the log.
        after: u64,
    },
    /// The id cannot be honoured; the stream continues live from `seq`.
    Reset {
        /// Why.
        reason: ResetReason,
        /// The position the stream continues after (the reset frame's id).
        seq: u64,
    },
}

/// The sending end of a replay. Dropping it ends the replay.
#[derive(Debug)]
pub struct ReplaySink {
    tx: mpsc::Sender<ReplayItem>,
}

/// The stream went away; stop replaying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stream of this replay has ended")]
pub struct StreamGone;

impl ReplaySink {
    pub(crate) fn channel() -> (Self, mpsc::Receiver<ReplayItem>) {
        let (tx, rx) = mpsc::channel(REPLAY_BUFFER);
        (Self { tx }, rx)
    }

    /// Sends the message at `seq`, published to `topic` (waits while the stream is
    /// behind).
    pub async fn message(&self, seq: u64, topic: String, msg: Incoming) -> Result<(), StreamGone> {
        self.tx
            .send(ReplayItem::Message { seq, topic, msg })
            .await
            .map_err(|_| StreamGone)
    }

    /// Ends the replay: every message after `after` up to the seam was sent.
    pub async fn done(self, after: u64) -> Result<(), StreamGone> {
        self.tx
            .send(ReplayItem::Done { after })
            .await
            .map_err(|_| StreamGone)
    }

    /// Tells the stream its id cannot be honoured; it continues after `seq`.
    pub async fn reset(self, reason: ResetReason, seq: u64) -> Result<(), StreamGone> {
        self.tx
            .send(ReplayItem::Reset { reason, seq })
            .await
            .map_err(|_| StreamGone)
    }

    /// Whether the stream is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves when the stream is gone.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }
}
