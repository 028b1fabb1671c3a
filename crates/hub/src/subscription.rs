//! A stream's view of the hub: one cursor per topic, drained in sequence order.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::hub::{Hub, Topic};
use crate::replay::{ReplayItem, ReplayRequest, ReplaySink};
use crate::topic::TopicName;

/// One topic of a subscription and how far this stream has read it.
pub(crate) struct Cursor {
    topic: Arc<Topic>,
    pos: u64,
    waiter: Option<Pin<Box<OwnedNotified>>>,
}

impl Cursor {
    pub(crate) fn new(topic: Arc<Topic>, pos: u64) -> Self {
        Self {
            topic,
            pos,
            waiter: None,
        }
    }

    fn pending(&self) -> u64 {
        self.topic
            .head
            .load(Ordering::Acquire)
            .saturating_sub(self.pos)
    }
}

/// What one [`Subscription::drain_into`] call appended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Frames appended.
    pub frames: usize,
    /// When the oldest appended frame reached the gateway.
    pub oldest: Option<Instant>,
    /// Frames that left the ring before this stream read them: the stream is broken and
    /// must be cut.
    pub lost: u64,
}

/// A stream's registration with the hub.
///
/// Created by [`Hub::subscribe`]; frames are read with [`Subscription::drain_into`] in
/// sequence order. Dropping it releases the stream's topics.
pub struct Subscription {
    hub: Hub,
    cursors: Vec<Cursor>,
    reset: Option<Bytes>,
    replayed: u64,
    replay: Option<Replay>,
    /// Frames at or below this sequence are not for this stream (a replay confirmed the
    /// client already has them; this instance may still be receiving them).
    skip_through: u64,
}

/// A replay from the durable log in progress: drained before the rings.
struct Replay {
    /// Until taken by whoever serves it.
    request: Option<(ReplayRequest, ReplaySink)>,
    rx: mpsc::Receiver<ReplayItem>,
    peeked: Option<ReplayItem>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("topics", &self.topic_names().collect::<Vec<_>>())
            .field("backlog", &self.backlog())
            .field("replayed", &self.replayed)
            .field("replaying", &self.replay.is_some())
            .finish()
    }
}

impl Subscription {
    pub(crate) fn new(hub: Hub, cursors: Vec<Cursor>, reset: Option<Bytes>, replayed: u64) -> Self {
        Self {
            hub,
            cursors,
            reset,
            replayed,
            replay: None,
            skip_through: 0,
        }
    }

    /// Durable mode: frames before the rings come from the log.
    pub(crate) fn start_replay(&mut self, request: ReplayRequest) {
        let (sink, rx) = ReplaySink::channel();
        self.replay = Some(Replay {
            request: Some((request, sink)),
            rx,
            peeked: None,
        });
    }

    /// The replay this stream needs from the durable log, if any, with the sink to send
    /// it into. Returned once; until it is served the stream waits before its live
    /// frames.
    pub fn take_replay(&mut self) -> Option<(ReplayRequest, ReplaySink)> {
        self.replay.as_mut()?.request.take()
    }

    /// Whether a replay from the log is still in progress.
    pub fn is_replaying(&self) -> bool {
        self.replay.is_some()
    }

    pub(crate) fn topics(&self) -> impl Iterator<Item = &Arc<Topic>> {
        self.cursors.iter().map(|c| &c.topic)
    }

    /// The topics of this stream.
    pub fn topic_names(&self) -> impl Iterator<Item = &TopicName> {
        self.cursors.iter().map(|c| &c.topic.name)
    }

    /// The hub this subscription belongs to.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The `gateway.reset` frame owed before anything else, if the stream's last event
    /// id could not be honoured. Returned once.
    pub fn take_reset(&mut self) -> Option<Bytes> {
        self.reset.take()
    }

    /// Frames scheduled for replay when the subscription was made.
    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    /// Frames published to this stream's topics and not yet drained.
    pub fn backlog(&self) -> u64 {
        self.cursors.iter().map(Cursor::pending).sum()
    }

    /// Appends the next frames, oldest first, until `max_frames` frames or `max_bytes`
    /// bytes (at least one frame fits regardless) have been appended.
    ///
    /// A stream over several topics gets their frames merged in sequence order, and a
    /// frame shared by several topics (one reset for one upstream gap) once.
    pub fn drain_into(
        &mut self,
        out: &mut BytesMut,
        max_frames: usize,
        max_bytes: usize,
    ) -> Drained {
        if self.replay.is_some() {
            let drained = self.drain_replay(out, max_frames, max_bytes);
            if self.replay.is_some() || drained.frames > 0 {
                return drained;
            }
        }
        let skip = self.skip_through;
        match self.cursors.as_mut_slice() {
            [] => Drained::default(),
            [one] => drain_one(one, skip, out, max_frames, max_bytes),
            many => {
                let watermark = self.hub.inner.watermark.load(Ordering::Acquire);
                drain_merged(many, watermark, skip, out, max_frames, max_bytes)
            }
        }
    }

    /// Ready when a frame may be available; registers for a wake-up otherwise (closing
    /// the hub wakes every stream too). Spurious readiness is possible; drain and poll
    /// again.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(replay) = &mut self.replay {
            // Live frames wait until the replay is done.
            if replay.peeked.is_some() {
                return Poll::Ready(());
            }
            return match replay.rx.poll_recv(cx) {
                Poll::Ready(item) => {
                    replay.peeked = item;
                    Poll::Ready(())
                }
                Poll::Pending => Poll::Pending,
            };
        }
        if self.has_work() {
            return Poll::Ready(());
        }
        if self.poll_pushed(cx).is_ready() {
            return Poll::Ready(());
        }
        // Re-check after registering: a frame pushed in between is not missed.
        if self.has_work() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Ready when a frame was pushed to one of the topics (or the hub started closing)
    /// since the last call; registers for a wake-up on the next push otherwise. Unlike
    /// [`Subscription::poll_ready`] it ignores frames already waiting: a writer whose
    /// socket is full uses it to re-check how far behind it is.
    pub fn poll_pushed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut pushed = false;
        for c in &mut self.cursors {
            let waiter = c.waiter.get_or_insert_with(|| {
                let mut waiter = Box::pin(c.topic.notify.clone().notified_owned());
                waiter.as_mut().enable();
                waiter
            });
            if waiter.as_mut().poll(cx).is_ready() {
                c.waiter = None;
                pushed = true;
            }
        }
        if pushed {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn has_work(&self) -> bool {
        self.cursors.iter().any(|c| c.pending() > 0)
    }

    /// Whether the hub asked every stream to end.
    pub fn is_closing(&self) -> bool {
        self.hub.is_closing()
    }
}

impl Subscription {
    /// Frames from the replay in progress; ends the replay when its sender is done.
    fn drain_replay(&mut self, out: &mut BytesMut, max_frames: usize, max_bytes: usize) -> Drained {
        let mut drained = Drained::default();
        let start = out.len();
        let Some(replay) = self.replay.as_mut() else {
            return drained;
        };
        while drained.frames < max_frames && (drained.frames == 0 || out.len() - start < max_bytes)
        {
            let item = match replay.peeked.take() {
                Some(item) => item,
                None => match replay.rx.try_recv() {
                    Ok(item) => item,
                    Err(mpsc::error::TryRecvError::Empty) => return drained,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.replay = None;
                        return drained;
                    }
                },
            };
            let frame = match item {
                ReplayItem::Message { seq, msg } => {
                    let frame = self.hub.encode_logged(seq, &msg);
                    drained.oldest.get_or_insert(msg.received);
                    if frame.is_some() {
                        self.replayed += 1;
                        self.hub.metrics().replayed_events.inc();
                    }
                    frame
                }
                ReplayItem::Reset { reason, seq } => Some(self.hub.reset_frame(seq, reason)),
                ReplayItem::Done { after } => {
                    self.skip_through = after;
                    self.replay = None;
                    return drained;
                }
            };
            if let Some(frame) = frame {
                out.extend_from_slice(&frame);
                drained.frames += 1;
            }
        }
        drained
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        for c in &self.cursors {
            c.topic.release();
        }
    }
}

fn drain_one(
    c: &mut Cursor,
    skip: u64,
    out: &mut BytesMut,
    max_frames: usize,
    max_bytes: usize,
) -> Drained {
    let ring = c.topic.ring.read();
    let mut drained = Drained {
        lost: ring.start_pos().saturating_sub(c.pos),
        ..Drained::default()
    };
    if drained.lost > 0 {
        return drained;
    }
    let start = out.len();
    let mut advanced = 0;
    for entry in ring.iter_from(c.pos) {
        if drained.frames == max_frames || (drained.frames > 0 && out.len() - start >= max_bytes) {
            break;
        }
        advanced += 1;
        if entry.seq <= skip {
            continue;
        }
        out.extend_from_slice(&entry.frame);
        drained.oldest.get_or_insert(entry.received);
        drained.frames += 1;
    }
    c.pos += advanced;
    drained
}

fn drain_merged(
    cursors: &mut [Cursor],
    watermark: u64,
    skip: u64,
    out: &mut BytesMut,
    max_frames: usize,
    max_bytes: usize,
) -> Drained {
    // Gather up to `max_frames` candidates per topic, only up to the watermark: every
    // frame at or below it is already in its ring, so the merge cannot be overtaken.
    let mut candidates: Vec<(u64, usize, Bytes, Instant)> = Vec::new();
    let mut drained = Drained::default();
    for (index, c) in cursors.iter().enumerate() {
        let ring = c.topic.ring.read();
        let lost = ring.start_pos().saturating_sub(c.pos);
        if lost > 0 {
            drained.lost += lost;
            continue;
        }
        candidates.extend(
            ring.iter_from(c.pos)
                .take_while(|e| e.seq <= watermark)
                .take(max_frames)
                .map(|e| (e.seq, index, e.frame.clone(), e.received)),
        );
    }
    if drained.lost > 0 {
        return drained;
    }
    candidates.sort_unstable_by_key(|&(seq, index, ..)| (seq, index));
    let start = out.len();
    let mut last_seq = None;
    for (seq, index, frame, received) in candidates {
        if seq <= skip {
            cursors[index].pos += 1;
            continue;
        }
        if last_seq != Some(seq) {
            if drained.frames == max_frames
                || (drained.frames > 0 && out.len() - start >= max_bytes)
            {
                break;
            }
            out.extend_from_slice(&frame);
            drained.oldest = Some(drained.oldest.map_or(received, |o| o.min(received)));
            drained.frames += 1;
            last_seq = Some(seq);
        }
        cursors[index].pos += 1;
    }
    drained
}
