//! A stream's view of the hub: one cursor per topic, drained in sequence order.
//!
//! ## Locks
//! A drain never holds a ring's read lock across a large copy, so a topic's readers
//! cannot stall ingest into it (and, through the ingest lock, into every topic). Under
//! one hold it copies at most [`HOLD_COPY`] bytes of frames into the caller's buffer,
//! then lets go and takes the lock again for the next ones; a frame larger than that is
//! not copied under the lock: its handle is cloned (one reference count) and it is
//! copied after the lock is released. Small frames are copied rather than cloned because
//! a copy of a few hundred bytes costs less than a reference count shared by every
//! reader of the frame, which bounces its cache line between cores and allocates the
//! count on a frame's first clone (measured: see `docs/architecture.md`). A stream over
//! several topics clones the handles of its candidates, sorts them in a per-thread
//! buffer and copies after the locks are released.
//!
//! Alongside the bytes a drain records, per frame, when it was received and its length
//! (16 bytes), and once where its frames are (a single topic's are consecutive ring
//! positions), so that a writer can count each event when its last byte is written and,
//! when the socket takes only part of a batch, keep handles to the unwritten frames
//! ([`Subscription::handles`]) instead of a copy. A frame of a sampled message also
//! gives the drain a share of its fan-out span ([`crate::fanout`]), which the writer
//! settles when the frame is written.

use std::cell::RefCell;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::fanout::{Claim, Fanout};
use crate::hub::{Hub, Topic};
use crate::replay::ReplayItem;
use crate::topic::TopicName;

/// One topic of a subscription and how far this stream has read it.
pub(crate) struct Cursor {
    topic: Arc<Topic>,
    /// Ring position of the next frame to read.
    pos: u64,
    /// Ring byte offset of the next frame to read.
    offset: u64,
    waiter: Option<Pin<Box<OwnedNotified>>>,
}

impl Cursor {
    pub(crate) fn new(topic: Arc<Topic>, pos: u64, offset: u64) -> Self {
        topic.readers.fetch_add(1, Ordering::AcqRel);
        Self {
            topic,
            pos,
            offset,
            waiter: None,
        }
    }

    fn pending(&self) -> u64 {
        self.topic
            .head
            .load(Ordering::Acquire)
            .saturating_sub(self.pos)
    }

    fn pending_bytes(&self) -> u64 {
        self.topic
            .head_bytes
            .load(Ordering::Acquire)
            .saturating_sub(self.offset)
    }
}

impl Drop for Cursor {
    /// The stream stops reading the topic: the sampled messages' frames it had not
    /// drained yet will never be written to it, so it gives their fan-out spans its share
    /// back (outside the ring's lock). Nothing to do unless a sampled message ever
    /// entered the ring and the stream is behind.
    fn drop(&mut self) {
        self.topic.readers.fetch_sub(1, Ordering::AcqRel);
        if !self.topic.traced.load(Ordering::Acquire) || self.pending() == 0 {
            return;
        }
        let unread: Vec<Arc<Fanout>> = self
            .topic
            .ring
            .read()
            .iter_from(self.pos)
            .filter_map(|entry| entry.trace.clone())
            .collect();
        for fanout in unread {
            fanout.give_up();
        }
    }
}

/// The frames of one drain, in the order their bytes were appended to the caller's
/// buffer. Reused by the caller: a drain allocates nothing once it is warm.
#[derive(Debug, Default)]
pub(crate) struct Frames {
    /// Per frame: when it was received and its length.
    pub marks: Vec<Mark>,
    /// A handle per frame when the drain kept them (merged drains, replays); empty
    /// otherwise, and the frames are then consecutive positions of one ring.
    handles: Vec<Bytes>,
    /// When `handles` is empty: the cursor and ring position of the first frame.
    first: (u32, u64),
    /// The stream's shares of sampled messages' fan-out spans, by frame index (in
    /// order); empty unless a drained frame carries one.
    pub claims: Vec<(usize, Claim)>,
}

/// One frame of a drain.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    /// When its message reached the gateway (or was published, when known), on the
    /// hub's clock.
    pub received: u64,
    /// Its encoded length.
    pub len: usize,
}

impl Frames {
    /// No frames.
    pub const fn new() -> Self {
        Self {
            marks: Vec::new(),
            handles: Vec::new(),
            first: (0, 0),
            claims: Vec::new(),
        }
    }

    /// Forgets the frames (and gives memory back when it grew large). Claims still
    /// here are given up.
    pub fn clear(&mut self) {
        self.marks.clear();
        self.handles.clear();
        self.claims.clear();
        if self.marks.capacity() > MAX_KEPT {
            *self = Self::default();
        }
    }

    fn push(&mut self, received: u64, len: usize) {
        self.marks.push(Mark { received, len });
    }

    /// Takes a share of `trace` for the frame about to be pushed.
    fn claim(&mut self, trace: Option<&Arc<Fanout>>) {
        if let Some(fanout) = trace {
            self.claims.push((self.marks.len(), fanout.claim()));
        }
    }
}

/// A frame considered by a merged drain.
struct Candidate {
    seq: u64,
    cursor: u32,
    received: u64,
    frame: Bytes,
    trace: Option<Arc<Fanout>>,
}

thread_local! {
    /// Per worker thread: the candidates of merged drains, reused (no allocation per
    /// drain once warm).
    static CANDIDATES: RefCell<Vec<Candidate>> = const { RefCell::new(Vec::new()) };
    /// Per thread: the frame list of [`Subscription::drain_into`].
    static FRAMES: RefCell<Frames> = const { RefCell::new(Frames::new()) };
}

/// A per-thread buffer is given back when it grew past this many entries.
const MAX_KEPT: usize = 64 * 1024;

/// Bytes a drain copies under one hold of a ring's read lock.
pub(crate) const HOLD_COPY: usize = 64 * 1024;

/// What one drain ([`Subscription::drain_into`]) appended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Frames appended.
    pub frames: usize,
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

    /// Durable mode: frames before the rings come from the log, through `rx` (the hub
    /// gave the sending end to its [`crate::History`]).
    pub(crate) fn start_replay(&mut self, rx: mpsc::Receiver<ReplayItem>) {
        self.replay = Some(Replay { rx, peeked: None });
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

    /// Takes over the topics of `other` (a subscription of the same hub, made just now
    /// for topics this stream adds): its cursors join this stream's at the position
    /// they were made at, so the stream gets what those topics receive from then on,
    /// merged in sequence order with the rest. Topics this stream already reads are
    /// released instead.
    pub fn absorb(&mut self, mut other: Subscription) {
        for cursor in std::mem::take(&mut other.cursors) {
            if self
                .cursors
                .iter()
                .any(|c| c.topic.name == cursor.topic.name)
            {
                cursor.topic.release(&self.hub.inner);
            } else {
                self.cursors.push(cursor);
            }
        }
    }

    /// Stops reading `topics` (those it does not read are ignored) and releases them.
    pub fn remove_topics(&mut self, topics: &[TopicName]) {
        let hub = self.hub.clone();
        self.cursors.retain(|c| {
            let keep = !topics.contains(&c.topic.name);
            if !keep {
                c.topic.release(&hub.inner);
            }
            keep
        });
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

    /// Encoded bytes published to this stream's topics and not yet drained.
    pub fn backlog_bytes(&self) -> u64 {
        self.cursors.iter().map(Cursor::pending_bytes).sum()
    }

    /// Appends the next frames, oldest first, until `max_frames` frames or `max_bytes`
    /// bytes have been appended (at least one frame regardless of its size).
    ///
    /// A stream over several topics gets their frames merged in sequence order, and a
    /// frame shared by several topics (one reset for one upstream gap) once.
    pub fn drain_into(
        &mut self,
        out: &mut BytesMut,
        max_frames: usize,
        max_bytes: usize,
    ) -> Drained {
        FRAMES.with(|frames| {
            let Ok(mut frames) = frames.try_borrow_mut() else {
                return self.drain_batch(out, &mut Frames::default(), max_frames, max_bytes);
            };
            let drained = self.drain_batch(out, &mut frames, max_frames, max_bytes);
            frames.clear();
            drained
        })
    }

    /// Like [`Subscription::drain_into`], and records the appended frames in `frames`
    /// (empty on entry).
    pub(crate) fn drain_batch(
        &mut self,
        out: &mut BytesMut,
        frames: &mut Frames,
        max_frames: usize,
        max_bytes: usize,
    ) -> Drained {
        debug_assert!(frames.marks.is_empty() && frames.handles.is_empty());
        if self.replay.is_some() {
            let drained = self.drain_replay(out, frames, max_frames, max_bytes);
            if self.replay.is_some() || drained.frames > 0 {
                return drained;
            }
        }
        let skip = self.skip_through;
        let mut batch = Batch {
            out,
            list: frames,
            max_frames,
            max_bytes,
            frames: 0,
            bytes: 0,
        };
        let lost = match self.cursors.as_mut_slice() {
            [] => 0,
            [one] => drain_one(one, skip, &mut batch),
            many => {
                let watermark = self.hub.inner.watermark.load(Ordering::Acquire);
                drain_merged(many, watermark, skip, &mut batch)
            }
        };
        Drained {
            frames: batch.frames,
            lost,
        }
    }

    /// Calls `each` with a handle to every frame of `frames` from index `from` on (the
    /// socket took only part of a batch: the rest is kept as references), `None` for a
    /// frame evicted from its ring meanwhile.
    pub(crate) fn handles(
        &self,
        frames: &Frames,
        from: usize,
        mut each: impl FnMut(usize, Option<Bytes>),
    ) {
        let n = frames.marks.len();
        if !frames.handles.is_empty() {
            for i in from..n {
                each(i, frames.handles.get(i).cloned());
            }
            return;
        }
        let (cursor, first) = frames.first;
        let Some(c) = self.cursors.get(cursor as usize) else {
            return;
        };
        let ring = c.topic.ring.read();
        for i in from..n {
            each(i, ring.get(first + i as u64).map(|e| e.frame.clone()));
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
    fn drain_replay(
        &mut self,
        out: &mut BytesMut,
        frames: &mut Frames,
        max_frames: usize,
        max_bytes: usize,
    ) -> Drained {
        let mut drained = Drained::default();
        let mut bytes = 0;
        let Some(replay) = self.replay.as_mut() else {
            return drained;
        };
        while drained.frames < max_frames && (drained.frames == 0 || bytes < max_bytes) {
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
                ReplayItem::Message { seq, topic, msg } => {
                    let frame = self.hub.encode_logged(seq, &topic, &msg);
                    if frame.is_some() {
                        self.replayed += 1;
                        self.hub.metrics().replayed_events.inc();
                    }
                    frame.map(|bytes| (bytes, msg.received))
                }
                ReplayItem::Reset { reason, seq } => {
                    Some((self.hub.reset_frame(seq, reason), Instant::now()))
                }
                ReplayItem::Done { after } => {
                    self.skip_through = after;
                    self.replay = None;
                    return drained;
                }
            };
            if let Some((frame, received)) = frame {
                bytes += frame.len();
                drained.frames += 1;
                out.extend_from_slice(&frame);
                frames.push(self.hub.inner.clock.nanos(received), frame.len());
                frames.handles.push(frame);
            }
        }
        drained
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        for c in &self.cursors {
            c.topic.release(&self.hub.inner);
        }
    }
}

/// Whether a drain that has taken `frames` frames of `bytes` bytes may take one more of
/// `len` bytes: at most `max_frames` and `max_bytes`, but always at least one frame.
fn room_for(frames: usize, bytes: usize, len: usize, max_frames: usize, max_bytes: usize) -> bool {
    frames == 0 || (frames < max_frames && bytes + len <= max_bytes)
}

/// What a drain appends to, and how much it has appended.
struct Batch<'a> {
    out: &'a mut BytesMut,
    list: &'a mut Frames,
    max_frames: usize,
    max_bytes: usize,
    frames: usize,
    bytes: usize,
}

impl Batch<'_> {
    fn has_room(&self, len: usize) -> bool {
        room_for(
            self.frames,
            self.bytes,
            len,
            self.max_frames,
            self.max_bytes,
        )
    }

    /// Counts a frame appended (or about to be) to `out`.
    fn push(&mut self, received: u64, len: usize) {
        self.frames += 1;
        self.bytes += len;
        self.list.push(received, len);
    }
}

/// Drains one topic: small frames copied under the lock, at most [`HOLD_COPY`] bytes
/// per hold; a larger frame by handle, copied after the lock is released. Returns the
/// frames lost (evicted before this stream read them).
fn drain_one(c: &mut Cursor, skip: u64, batch: &mut Batch<'_>) -> u64 {
    loop {
        // Counters in locals (registers) for the loop, written back after each hold.
        let (mut pos, mut offset) = (c.pos, c.offset);
        let (mut frames, mut bytes) = (batch.frames, batch.bytes);
        let mut copied = 0;
        let mut large = None;
        let mut more = false;
        {
            let ring = c.topic.ring.read();
            let lost = ring.start_pos().saturating_sub(pos);
            if lost > 0 {
                // Evicted while an earlier hold of this drain copied: hand out what was
                // taken; the next drain reports the loss.
                return if frames > 0 { 0 } else { lost };
            }
            for entry in ring.iter_from(pos) {
                let len = entry.frame.len();
                if !room_for(frames, bytes, len, batch.max_frames, batch.max_bytes) {
                    break;
                }
                if entry.seq > skip {
                    if copied + len > HOLD_COPY {
                        if copied > 0 {
                            // Let ingest in; carry on under a new hold.
                            more = true;
                            break;
                        }
                        // Too large to copy under the lock: by handle, copied below.
                        large = Some(entry.frame.clone());
                    } else {
                        batch.out.extend_from_slice(&entry.frame);
                        copied += len;
                    }
                    if frames == 0 {
                        // Frames after the skipped ones are consecutive positions.
                        batch.list.first = (0, pos);
                    }
                    frames += 1;
                    bytes += len;
                    batch.list.claim(entry.trace.as_ref());
                    batch.list.push(entry.received, len);
                } else if let Some(fanout) = &entry.trace {
                    // The client has it already (a replay said so): never written here.
                    fanout.give_up();
                }
                pos += 1;
                offset += len as u64;
                if large.is_some() {
                    more = true;
                    break;
                }
            }
        }
        (c.pos, c.offset) = (pos, offset);
        (batch.frames, batch.bytes) = (frames, bytes);
        if let Some(frame) = large {
            batch.out.extend_from_slice(&frame);
        }
        if !more {
            return 0;
        }
    }
}

fn drain_merged(cursors: &mut [Cursor], watermark: u64, skip: u64, batch: &mut Batch<'_>) -> u64 {
    CANDIDATES.with(|candidates| match candidates.try_borrow_mut() {
        Ok(mut candidates) => {
            let lost = merge(cursors, watermark, skip, &mut candidates, batch);
            candidates.clear();
            if candidates.capacity() > MAX_KEPT {
                *candidates = Vec::new();
            }
            lost
        }
        // Not reentrant; cannot happen (nothing calls back in between).
        Err(_) => merge(cursors, watermark, skip, &mut Vec::new(), batch),
    })
}

/// Merges the topics' next frames by sequence into `batch`, through `candidates`
/// (empty on entry, reused across drains): handles are cloned under each ring's lock,
/// the bytes copied after. Returns the frames lost.
fn merge(
    cursors: &mut [Cursor],
    watermark: u64,
    skip: u64,
    candidates: &mut Vec<Candidate>,
    batch: &mut Batch<'_>,
) -> u64 {
    // Gather each topic's next frames, only up to the watermark: every frame at or below
    // it is already in its ring, so the merge cannot be overtaken. A topic cannot
    // contribute more than `max_frames` frames or (past its first) `max_bytes` bytes;
    // where a topic's gathering stopped short, no later sequence of another topic may
    // be emitted (the horizon), or the stopped topic's next frame would be skipped.
    let mut lost = 0;
    let mut horizon = u64::MAX;
    for (index, c) in (0u32..).zip(cursors.iter()) {
        let ring = c.topic.ring.read();
        let behind = ring.start_pos().saturating_sub(c.pos);
        if behind > 0 {
            lost += behind;
            continue;
        }
        let (mut frames, mut bytes) = (0, 0);
        for entry in ring.iter_from(c.pos) {
            let len = entry.frame.len();
            if entry.seq > watermark {
                break;
            }
            if !room_for(frames, bytes, len, batch.max_frames, batch.max_bytes) {
                horizon = horizon.min(entry.seq);
                break;
            }
            frames += 1;
            bytes += len;
            candidates.push(Candidate {
                seq: entry.seq,
                cursor: index,
                received: entry.received,
                frame: entry.frame.clone(),
                trace: entry.trace.clone(),
            });
        }
    }
    if lost > 0 {
        return lost;
    }
    candidates.sort_unstable_by_key(|c| (c.seq, c.cursor));
    let mut last_seq = None;
    for candidate in candidates.drain(..) {
        if candidate.seq >= horizon {
            break;
        }
        let len = candidate.frame.len();
        let cursor = &mut cursors[candidate.cursor as usize];
        if candidate.seq <= skip {
            if let Some(fanout) = &candidate.trace {
                fanout.give_up();
            }
            cursor.pos += 1;
            cursor.offset += len as u64;
            continue;
        }
        if last_seq != Some(candidate.seq) {
            if !batch.has_room(len) {
                break;
            }
            batch.out.extend_from_slice(&candidate.frame);
            batch.list.claim(candidate.trace.as_ref());
            batch.push(candidate.received, len);
            batch.list.handles.push(candidate.frame);
            last_seq = Some(candidate.seq);
        } else if let Some(fanout) = &candidate.trace {
            // The same message through another of the stream's topics (a JetStream
            // message matching two of them): written once, counted under the first.
            fanout.give_up();
        }
        cursor.pos += 1;
        cursor.offset += len as u64;
    }
    0
}
