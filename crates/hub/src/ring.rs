//! The per-topic ring of encoded frames.
//!
//! Every entry is a frame encoded once ([`Bytes`], shared by every reader) with the hub
//! sequence it was given. Positions count entries ever pushed to this ring, so a reader's
//! cursor is a plain `u64` and "how far behind" is a subtraction. Byte offsets do the same
//! for bytes: each entry records the total of the encoded bytes ever pushed up to its end,
//! so "how many bytes behind" is a subtraction too. The ring serves both live fan-out
//! (readers take frames from their cursor onwards) and resume (a cursor is placed after
//! the client's last sequence).
//!
//! The ring itself only appends and drops its oldest entry; what it may hold (frames and
//! bytes per ring, bytes over all rings) is decided by [`crate::budget`].

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::fanout::Fanout;

/// Slots a ring keeps when shrinking.
const MIN_SLOTS: usize = 8;

/// One encoded frame.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Hub sequence; strictly increasing along the ring.
    pub seq: u64,
    /// The complete SSE frame, `id:` line to blank line.
    pub frame: Bytes,
    /// When the message reached the gateway (or was published, when known), on the
    /// hub's [`crate::clock::Clock`]: for the delivery latency histogram.
    pub received: u64,
    /// The fan-out span of a sampled message (`None` for every other frame).
    pub trace: Option<Arc<Fanout>>,
}

/// An entry as the ring holds it.
#[derive(Debug)]
pub(crate) struct Held {
    /// The entry.
    pub entry: Entry,
    /// Encoded bytes pushed to this ring up to the end of this frame.
    pub end: u64,
}

/// A bounded run of the most recent frames of one topic.
#[derive(Debug)]
pub(crate) struct Ring {
    entries: VecDeque<Held>,
    /// Most frames held.
    capacity: usize,
    /// Most encoded bytes held.
    max_bytes: u64,
    /// Position of `entries[0]`.
    start_pos: u64,
    /// Byte offset of the start of `entries[0]` (of the head when empty).
    start_bytes: u64,
    /// Encoded bytes ever pushed: the end offset of the newest entry.
    head_bytes: u64,
    /// Every frame of this topic with a sequence above this is in the ring, or was
    /// evicted, in which case this moved up to the evicted sequence.
    complete_after: u64,
    /// The sequence under which the budget's front index lists this ring (`None`: not
    /// listed). Kept by [`crate::budget`]; at most the sequence of the oldest frame.
    pub indexed: Option<u64>,
}

impl Ring {
    /// An empty ring that holds at most `capacity` frames and `max_bytes` encoded bytes,
    /// and knows the topic's history only after sequence `complete_after`.
    pub fn new(capacity: usize, max_bytes: u64, complete_after: u64) -> Self {
        Self {
            entries: VecDeque::new(),
            capacity: capacity.max(1),
            max_bytes,
            start_pos: 0,
            start_bytes: 0,
            head_bytes: 0,
            complete_after,
            indexed: None,
        }
    }

    /// Appends a frame. The caller then evicts while [`Ring::over_budget`].
    pub fn push(&mut self, entry: Entry) {
        debug_assert!(self.entries.back().is_none_or(|h| h.entry.seq < entry.seq));
        self.head_bytes += entry.frame.len() as u64;
        if self.entries.len() >= self.capacity {
            // Full to its frame cap: one slot more (the caller evicts the oldest right
            // after), not the doubling a growing ring gets.
            self.entries.reserve_exact(1);
        }
        self.entries.push_back(Held {
            entry,
            end: self.head_bytes,
        });
    }

    /// Whether the ring holds more frames or bytes than it may.
    pub fn over_budget(&self) -> bool {
        self.entries.len() > self.capacity || self.held_bytes() > self.max_bytes
    }

    /// Evicts the oldest frame: readers that had not read it have lost it, and resuming
    /// from before it is no longer possible.
    pub fn pop_front(&mut self) -> Option<Entry> {
        let held = self.entries.pop_front()?;
        self.start_pos += 1;
        self.start_bytes = held.end;
        self.complete_after = held.entry.seq;
        self.shrink();
        Some(held.entry)
    }

    /// Gives memory back once the ring holds under a quarter of the slots it grew to
    /// (the byte budgets evicted it down): rings allocate on their first frame, grow
    /// with use and shrink back, so a quiet topic costs no slots.
    fn shrink(&mut self) {
        let len = self.entries.len();
        if self.entries.capacity() > MIN_SLOTS && len < self.entries.capacity() / 4 {
            self.entries.shrink_to((len * 2).max(MIN_SLOTS));
        }
    }

    /// Forgets every frame (the log the ring mirrors was replaced); the topic's history
    /// now starts after `complete_after`. Positions and offsets keep counting up.
    pub fn clear(&mut self, complete_after: u64) -> impl Iterator<Item = Entry> + '_ {
        self.start_pos = self.head_pos();
        self.start_bytes = self.head_bytes;
        self.complete_after = complete_after;
        let entries = std::mem::take(&mut self.entries);
        entries.into_iter().map(|h| h.entry)
    }

    /// Gives back every slot beyond the frames held (the topic went idle).
    pub fn shrink_to_fit(&mut self) {
        self.entries.shrink_to_fit();
    }

    /// Slots allocated for entries (0 until the first frame).
    pub fn slots(&self) -> usize {
        self.entries.capacity()
    }

    /// Sequence of the oldest frame held.
    pub fn front_seq(&self) -> Option<u64> {
        self.entries.front().map(|h| h.entry.seq)
    }

    /// Sequence of the newest entry.
    pub fn back_seq(&self) -> Option<u64> {
        self.entries.back().map(|h| h.entry.seq)
    }

    /// Position one past the newest entry.
    pub fn head_pos(&self) -> u64 {
        self.start_pos + self.entries.len() as u64
    }

    /// Encoded bytes ever pushed (the byte offset one past the newest entry).
    pub fn head_bytes(&self) -> u64 {
        self.head_bytes
    }

    /// Position of the oldest entry still held.
    pub fn start_pos(&self) -> u64 {
        self.start_pos
    }

    /// Encoded bytes held.
    pub fn held_bytes(&self) -> u64 {
        self.head_bytes - self.start_bytes
    }

    /// The byte offset at which the entry at `pos` starts (clamped to what is held).
    pub fn offset_of(&self, pos: u64) -> u64 {
        match pos.checked_sub(self.start_pos) {
            None | Some(0) => self.start_bytes,
            Some(index) => usize::try_from(index - 1)
                .ok()
                .and_then(|i| self.entries.get(i))
                .map_or(self.head_bytes, |h| h.end),
        }
    }

    /// Position of the first entry with a sequence above `seq` (the head when none).
    pub fn first_pos_after(&self, seq: u64) -> u64 {
        self.start_pos + self.entries.partition_point(|h| h.entry.seq <= seq) as u64
    }

    /// The smallest last-seen sequence from which a client can be replayed exactly
    /// using at most the newest `window` frames.
    pub fn replay_floor(&self, window: usize) -> u64 {
        let n = self.entries.len();
        if n > window {
            self.complete_after
                .max(self.entries[n - window - 1].entry.seq)
        } else {
            self.complete_after
        }
    }

    /// The entry at `pos`, if still held.
    pub fn get(&self, pos: u64) -> Option<&Entry> {
        let index = pos.checked_sub(self.start_pos)?;
        self.entries
            .get(usize::try_from(index).ok()?)
            .map(|h| &h.entry)
    }

    /// Entries from `pos` (clamped to what is held) to the head.
    pub fn iter_from(&self, pos: u64) -> impl Iterator<Item = &Entry> {
        let skip = pos.saturating_sub(self.start_pos);
        self.entries
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .map(|h| &h.entry)
    }

    /// Number of frames held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> Entry {
        Entry {
            seq,
            frame: Bytes::from(format!("id: {seq}\ndata: x\n\n")),
            received: 0,
            trace: None,
        }
    }

    fn sized(seq: u64, len: usize) -> Entry {
        Entry {
            seq,
            frame: Bytes::from(vec![b'x'; len]),
            received: 0,
            trace: None,
        }
    }

    /// Pushes and evicts as the budget code does for a ring alone.
    fn push(ring: &mut Ring, entry: Entry) -> Vec<u64> {
        ring.push(entry);
        let mut evicted = Vec::new();
        while ring.over_budget() {
            evicted.extend(ring.pop_front().map(|e| e.seq));
        }
        evicted
    }

    #[test]
    fn evicts_oldest_and_tracks_positions() {
        let mut ring = Ring::new(3, u64::MAX, 0);
        for seq in [2, 5, 7, 9] {
            push(&mut ring, entry(seq));
        }
        assert_eq!(ring.len(), 3);
        assert_eq!(ring.start_pos(), 1);
        assert_eq!(ring.head_pos(), 4);
        assert!(ring.get(0).is_none());
        assert_eq!(ring.get(1).map(|e| e.seq), Some(5));
        assert_eq!(ring.get(3).map(|e| e.seq), Some(9));
        assert!(ring.get(4).is_none());
        let seqs: Vec<u64> = ring.iter_from(2).map(|e| e.seq).collect();
        assert_eq!(seqs, [7, 9]);
        let all: Vec<u64> = ring.iter_from(0).map(|e| e.seq).collect();
        assert_eq!(all, [5, 7, 9]);
    }

    #[test]
    fn first_pos_after_finds_the_resume_point() {
        let mut ring = Ring::new(8, u64::MAX, 0);
        for seq in [2, 5, 7] {
            push(&mut ring, entry(seq));
        }
        assert_eq!(ring.first_pos_after(0), 0);
        assert_eq!(ring.first_pos_after(2), 1);
        assert_eq!(ring.first_pos_after(3), 1);
        assert_eq!(ring.first_pos_after(7), 3);
        assert_eq!(ring.first_pos_after(100), 3);
    }

    #[test]
    fn replay_floor_respects_window_and_eviction() {
        let mut ring = Ring::new(4, u64::MAX, 10);
        assert_eq!(ring.replay_floor(4), 10);
        for seq in [11, 12, 13] {
            push(&mut ring, entry(seq));
        }
        // Everything after 10 is held.
        assert_eq!(ring.replay_floor(4), 10);
        // A window of 2 frames serves only clients that saw 11 or later.
        assert_eq!(ring.replay_floor(2), 11);
        assert_eq!(ring.replay_floor(0), 13);
        for seq in [14, 15] {
            push(&mut ring, entry(seq));
        }
        // 11 was evicted: a client must have seen it.
        assert_eq!(ring.replay_floor(4), 11);
    }

    #[test]
    fn byte_budget_evicts_the_oldest_until_the_new_frame_fits() {
        let mut ring = Ring::new(100, 1000, 0);
        assert!(push(&mut ring, sized(1, 400)).is_empty());
        assert!(push(&mut ring, sized(2, 400)).is_empty());
        assert_eq!(ring.held_bytes(), 800);
        // 300 more would make 1,100: the oldest goes.
        assert_eq!(push(&mut ring, sized(3, 300)), [1]);
        assert_eq!(ring.held_bytes(), 700);
        // A frame of the whole budget leaves only itself.
        assert_eq!(push(&mut ring, sized(4, 1000)), [2, 3]);
        assert_eq!(ring.held_bytes(), 1000);
        assert_eq!(ring.len(), 1);
        // Resuming from before an evicted frame is impossible.
        assert_eq!(ring.replay_floor(100), 3);
    }

    #[test]
    fn a_ring_allocates_on_its_first_frame_grows_and_shrinks_back() {
        let mut ring = Ring::new(1024, 1000 * 16, 0);
        assert_eq!(ring.slots(), 0, "nothing allocated before the first frame");
        for seq in 1..=600 {
            push(&mut ring, sized(seq, 16));
        }
        let grown = ring.slots();
        assert!(grown >= 600, "{grown}");
        // A byte budget that now holds 3 frames: the ring evicts down and gives the
        // slots back.
        ring.max_bytes = 48;
        push(&mut ring, sized(601, 16));
        assert_eq!(ring.len(), 3);
        assert!(ring.slots() <= 16, "{} slots for 3 frames", ring.slots());
        // Positions and resume points survive the shrink.
        assert_eq!(ring.start_pos(), 598);
        assert_eq!(ring.get(598).map(|e| e.seq), Some(599));
        assert_eq!(ring.first_pos_after(600), 600);
        assert_eq!(ring.replay_floor(1024), 598);
        let cleared: Vec<u64> = ring.clear(601).map(|e| e.seq).collect();
        assert_eq!(cleared, [599, 600, 601]);
        assert_eq!(ring.slots(), 0, "a cleared ring holds no slots");
    }

    #[test]
    fn byte_offsets_follow_pushes_and_evictions() {
        let mut ring = Ring::new(2, u64::MAX, 0);
        assert_eq!(ring.offset_of(0), 0);
        push(&mut ring, sized(1, 10));
        push(&mut ring, sized(2, 20));
        assert_eq!(ring.head_bytes(), 30);
        assert_eq!(ring.offset_of(0), 0);
        assert_eq!(ring.offset_of(1), 10);
        assert_eq!(ring.offset_of(2), 30);
        push(&mut ring, sized(3, 5));
        // Position 0 (10 bytes) is gone; the ring starts at offset 10.
        assert_eq!(ring.start_pos(), 1);
        assert_eq!(ring.offset_of(0), 10);
        assert_eq!(ring.offset_of(1), 10);
        assert_eq!(ring.offset_of(2), 30);
        assert_eq!(ring.offset_of(3), 35);
        assert_eq!(ring.offset_of(99), 35);
        assert_eq!(ring.held_bytes(), 25);
        let cleared: Vec<u64> = ring.clear(3).map(|e| e.seq).collect();
        assert_eq!(cleared, [2, 3]);
        assert_eq!((ring.held_bytes(), ring.head_bytes()), (0, 35));
        assert_eq!((ring.start_pos(), ring.head_pos()), (3, 3));
        assert_eq!(ring.offset_of(3), 35);
    }
}
