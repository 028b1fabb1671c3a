//! The per-topic ring of encoded frames.
//!
//! Every entry is a frame encoded once ([`Bytes`], shared by every reader) with the hub
//! sequence it was given. Positions count entries ever pushed to this ring, so a reader's
//! cursor is a plain `u64` and "how far behind" is a subtraction. The ring serves both
//! live fan-out (readers copy frames from their cursor onwards) and resume (a cursor is
//! placed after the client's last sequence).

use std::collections::VecDeque;

use bytes::Bytes;
use tokio::time::Instant;

/// One encoded frame.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Hub sequence; strictly increasing along the ring.
    pub seq: u64,
    /// The complete SSE frame, `id:` line to blank line.
    pub frame: Bytes,
    /// When the message reached the gateway (for the delivery latency histogram).
    pub received: Instant,
}

/// A bounded run of the most recent frames of one topic.
#[derive(Debug)]
pub(crate) struct Ring {
    entries: VecDeque<Entry>,
    capacity: usize,
    /// Position of `entries[0]`.
    start_pos: u64,
    /// Every frame of this topic with a sequence above this is in the ring, or was
    /// evicted, in which case this moved up to the evicted sequence.
    complete_after: u64,
}

impl Ring {
    /// An empty ring that holds at most `capacity` frames and knows the topic's history
    /// only after sequence `complete_after`.
    pub fn new(capacity: usize, complete_after: u64) -> Self {
        Self {
            entries: VecDeque::new(),
            capacity: capacity.max(1),
            start_pos: 0,
            complete_after,
        }
    }

    /// Appends a frame, evicting the oldest when full.
    pub fn push(&mut self, entry: Entry) {
        debug_assert!(self.entries.back().is_none_or(|e| e.seq < entry.seq));
        if self.entries.len() == self.capacity
            && let Some(old) = self.entries.pop_front()
        {
            self.start_pos += 1;
            self.complete_after = old.seq;
        }
        self.entries.push_back(entry);
    }

    /// Forgets every frame (the log the ring mirrors was replaced); the topic's history
    /// now starts after `complete_after`. Positions keep counting up.
    pub fn clear(&mut self, complete_after: u64) {
        self.start_pos = self.head_pos();
        self.entries.clear();
        self.complete_after = complete_after;
    }

    /// Position one past the newest entry.
    pub fn head_pos(&self) -> u64 {
        self.start_pos + self.entries.len() as u64
    }

    /// Position of the oldest entry still held.
    pub fn start_pos(&self) -> u64 {
        self.start_pos
    }

    /// Position of the first entry with a sequence above `seq` (the head when none).
    pub fn first_pos_after(&self, seq: u64) -> u64 {
        self.start_pos + self.entries.partition_point(|e| e.seq <= seq) as u64
    }

    /// The smallest last-seen sequence from which a client can be replayed exactly
    /// using at most the newest `window` frames.
    pub fn replay_floor(&self, window: usize) -> u64 {
        let n = self.entries.len();
        if n > window {
            self.complete_after.max(self.entries[n - window - 1].seq)
        } else {
            self.complete_after
        }
    }

    /// The entry at `pos`, if still held.
    #[cfg(test)]
    pub fn get(&self, pos: u64) -> Option<&Entry> {
        let index = pos.checked_sub(self.start_pos)?;
        self.entries.get(usize::try_from(index).ok()?)
    }

    /// Entries from `pos` (clamped to what is held) to the head.
    pub fn iter_from(&self, pos: u64) -> impl Iterator<Item = &Entry> {
        let skip = pos.saturating_sub(self.start_pos);
        self.entries
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
    }

    /// Number of frames held.
    #[cfg(test)]
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
            received: Instant::now(),
        }
    }

    #[test]
    fn evicts_oldest_and_tracks_positions() {
        let mut ring = Ring::new(3, 0);
        for seq in [2, 5, 7, 9] {
            ring.push(entry(seq));
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
        let mut ring = Ring::new(8, 0);
        for seq in [2, 5, 7] {
            ring.push(entry(seq));
        }
        assert_eq!(ring.first_pos_after(0), 0);
        assert_eq!(ring.first_pos_after(2), 1);
        assert_eq!(ring.first_pos_after(3), 1);
        assert_eq!(ring.first_pos_after(7), 3);
        assert_eq!(ring.first_pos_after(100), 3);
    }

    #[test]
    fn replay_floor_respects_window_and_eviction() {
        let mut ring = Ring::new(4, 10);
        assert_eq!(ring.replay_floor(4), 10);
        for seq in [11, 12, 13] {
            ring.push(entry(seq));
        }
        // Everything after 10 is held.
        assert_eq!(ring.replay_floor(4), 10);
        // A window of 2 frames serves only clients that saw 11 or later.
        assert_eq!(ring.replay_floor(2), 11);
        assert_eq!(ring.replay_floor(0), 13);
        for seq in [14, 15] {
            ring.push(entry(seq));
        }
        // 11 was evicted: a client must have seen it.
        assert_eq!(ring.replay_floor(4), 11);
    }
}
