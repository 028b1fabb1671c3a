//! What the rings may hold: frames and bytes per ring, bytes over all rings.
//!
//! Every push goes through [`Budget::push`], under the hub's ingest lock. A ring holds at
//! most its frame capacity and `replay_bytes` encoded bytes; all rings together hold at
//! most `max_ring_bytes`. Over the global budget the oldest frames across ALL topics go
//! first. Sequences increase along every ring and across the hub (the hub sequence, or a
//! durable log's position), so the oldest frame held anywhere is the smallest sequence
//! at the front of some ring.
//!
//! ## The front index
//! The budget lists every non-empty ring in an ordered map keyed by `(sequence, topic
//! id)` — the topic id because one `upstream_gap` reset enters many rings under one
//! sequence. A ring is listed when a push makes it non-empty, under its oldest frame's
//! sequence, and unlisted when it is cleared; its own evictions (a busy topic at its
//! frame or byte budget: every push, in steady state) leave its key behind, so the
//! common push touches no map. A key is therefore at most its ring's oldest sequence.
//! Global eviction takes the first key: when it is its ring's oldest sequence, that
//! frame is the oldest anywhere (every other ring's oldest is at least its key, which is
//! at least this one) and goes; when it is stale, the ring is listed again under its
//! true oldest and the next key is taken. The map has one entry per non-empty ring, so
//! its size is bounded by the number of topics, whatever the traffic.
//!
//! A frame held by several rings (a wildcard topic's copy, a shared reset) counts once
//! per ring: the budget over-counts shared memory, never under-counts it.
//!
//! Evicted entries are handed to the caller (`graveyard`) so that the last reference, and
//! with it the free of a large frame (or the end of a sampled message's fan-out span), is
//! dropped after the ingest lock is released.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::hub::Topic;
use crate::ring::{Entry, Ring};

/// The byte accounting of all rings. Lives under the ingest lock.
#[derive(Debug)]
pub(crate) struct Budget {
    /// `limits.max_ring_bytes`.
    max_total: u64,
    /// Encoded bytes held by all rings.
    total: u64,
    /// The oldest frame of each non-empty ring.
    fronts: BTreeMap<(u64, u64), Arc<Topic>>,
}

impl Budget {
    /// No frame held yet; at most `max_total` bytes over all rings.
    pub fn new(max_total: u64) -> Self {
        Self {
            max_total,
            total: 0,
            fronts: BTreeMap::new(),
        }
    }

    /// Encoded bytes held by all rings.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Rings holding at least one frame.
    #[cfg(test)]
    pub fn fronts(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.fronts.keys().copied()
    }

    /// Pushes `entry` into `topic`'s ring, then evicts what the ring's budget and the
    /// global budget require, oldest first.
    pub fn push(&mut self, topic: &Arc<Topic>, entry: Entry, graveyard: &mut Vec<Entry>) {
        let mut ring = topic.ring.write();
        self.total += entry.frame.len() as u64;
        ring.push(entry);
        while ring.over_budget() {
            self.evict_front(&mut ring, graveyard);
        }
        topic.head.store(ring.head_pos(), Ordering::Release);
        topic.head_bytes.store(ring.head_bytes(), Ordering::Release);
        if ring.indexed.is_none()
            && let Some(seq) = ring.front_seq()
        {
            ring.indexed = Some(seq);
            self.fronts.insert((seq, topic.id), topic.clone());
        }
        drop(ring);
        self.enforce_total(graveyard);
    }

    /// Forgets `topic`'s frames: the topic left the hub, or the log it mirrors was
    /// replaced (then its history starts after `complete_after`).
    pub fn clear(&mut self, topic: &Arc<Topic>, complete_after: u64, graveyard: &mut Vec<Entry>) {
        let mut ring = topic.ring.write();
        for entry in ring.clear(complete_after) {
            self.total -= entry.frame.len() as u64;
            graveyard.push(entry);
        }
        topic.head.store(ring.head_pos(), Ordering::Release);
        if let Some(seq) = ring.indexed.take() {
            self.fronts.remove(&(seq, topic.id));
        }
    }

    /// Over the global budget: evicts the oldest frame across all rings until under it.
    fn enforce_total(&mut self, graveyard: &mut Vec<Entry>) {
        while self.total > self.max_total {
            let Some(((key, id), topic)) = self.fronts.pop_first() else {
                break;
            };
            let mut ring = topic.ring.write();
            ring.indexed = None;
            match ring.front_seq() {
                // Listed under its oldest frame: the oldest anywhere.
                Some(seq) if seq == key => self.evict_front(&mut ring, graveyard),
                // A stale key (the ring evicted on its own since): listed again below.
                Some(_) => {}
                None => continue,
            }
            if let Some(seq) = ring.front_seq() {
                ring.indexed = Some(seq);
                drop(ring);
                self.fronts.insert((seq, id), topic);
            }
        }
    }

    fn evict_front(&mut self, ring: &mut Ring, graveyard: &mut Vec<Entry>) {
        if let Some(old) = ring.pop_front() {
            self.total -= old.frame.len() as u64;
            graveyard.push(old);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::tests::topic;

    fn ring_topic(id: u64, name: &str, capacity: usize, max_bytes: u64) -> Arc<Topic> {
        Arc::new(Topic::new(id, topic(name), capacity, max_bytes, 0))
    }

    fn frame(seq: u64, len: usize) -> Entry {
        Entry {
            seq,
            frame: Bytes::from(vec![b'x'; len]),
            received: 0,
            trace: None,
        }
    }

    fn seqs(topic: &Topic) -> Vec<u64> {
        topic.ring.read().iter_from(0).map(|e| e.seq).collect()
    }

    #[test]
    fn the_global_budget_evicts_the_oldest_frame_across_topics() {
        let mut budget = Budget::new(1000);
        let mut graveyard = Vec::new();
        let (a, b, c) = (
            ring_topic(1, "a", 100, 1000),
            ring_topic(2, "b", 100, 1000),
            ring_topic(3, "c", 100, 1000),
        );
        budget.push(&a, frame(1, 300), &mut graveyard);
        budget.push(&b, frame(2, 300), &mut graveyard);
        budget.push(&a, frame(3, 300), &mut graveyard);
        assert_eq!(budget.total(), 900);
        assert!(graveyard.is_empty());
        // 1,200 > 1,000: seq 1 (on a) is the oldest anywhere.
        budget.push(&c, frame(4, 300), &mut graveyard);
        assert_eq!(seqs(&a), [3]);
        assert_eq!(budget.total(), 900);
        // Then seq 2 (on b), and b becomes empty.
        budget.push(&c, frame(5, 300), &mut graveyard);
        assert_eq!(seqs(&b), Vec::<u64>::new());
        assert_eq!(seqs(&c), [4, 5]);
        assert_eq!(graveyard.len(), 2);
        assert_eq!(budget.fronts().collect::<Vec<_>>(), [(3, 1), (4, 3)]);
        // A big frame takes several of the oldest.
        budget.push(&b, frame(6, 900), &mut graveyard);
        assert_eq!(seqs(&a), Vec::<u64>::new());
        assert_eq!(seqs(&c), Vec::<u64>::new());
        assert_eq!(seqs(&b), [6]);
        assert_eq!(budget.total(), 900);
        assert_eq!(budget.fronts().collect::<Vec<_>>(), [(6, 2)]);
    }

    #[test]
    fn a_busy_topic_evicting_locally_leaves_one_front_entry_per_ring() {
        // A quiet topic's old frame and a busy topic that evicts within its own ring:
        // the index holds one entry per ring, however many frames went through.
        let mut budget = Budget::new(60);
        let mut graveyard = Vec::new();
        let quiet = ring_topic(1, "quiet", 10, 1 << 20);
        let busy = ring_topic(2, "busy", 4, 1 << 20);
        budget.push(&quiet, frame(1, 10), &mut graveyard);
        for seq in 2..10_000 {
            budget.push(&busy, frame(seq, 10), &mut graveyard);
            graveyard.clear();
        }
        assert_eq!(budget.fronts().count(), 2, "one entry per non-empty ring");
        assert_eq!(budget.total(), 50);
        // Over the global budget: the quiet topic's frame is the oldest anywhere.
        budget.push(&quiet, frame(10_000, 20), &mut graveyard);
        assert_eq!(seqs(&quiet), [10_000]);
        assert_eq!(budget.total(), 60);
        // Then the busy topic's oldest: its stale key is corrected on the way.
        budget.push(&quiet, frame(10_001, 10), &mut graveyard);
        assert_eq!(seqs(&busy), [9_997, 9_998, 9_999]);
        assert_eq!(seqs(&quiet), [10_000, 10_001]);
        assert_eq!(budget.total(), 60);
        assert_eq!(
            budget.fronts().collect::<Vec<_>>(),
            [(9_997, 2), (10_000, 1)],
            "keys at their rings' oldest frames again"
        );
    }

    #[test]
    fn a_shared_sequence_in_several_rings_is_evicted_ring_by_ring() {
        let mut budget = Budget::new(250);
        let mut graveyard = Vec::new();
        let (a, b) = (ring_topic(1, "a", 10, 1000), ring_topic(2, "b", 10, 1000));
        // One reset frame under seq 1 in both rings.
        budget.push(&a, frame(1, 100), &mut graveyard);
        budget.push(&b, frame(1, 100), &mut graveyard);
        assert_eq!(budget.fronts().collect::<Vec<_>>(), [(1, 1), (1, 2)]);
        budget.push(&a, frame(2, 100), &mut graveyard);
        assert_eq!(budget.total(), 200);
        assert_eq!(seqs(&a), [2]);
        assert_eq!(seqs(&b), [1]);
        assert_eq!(budget.fronts().collect::<Vec<_>>(), [(1, 2), (2, 1)]);
    }

    #[test]
    fn clearing_a_ring_drops_its_bytes_and_its_front() {
        let mut budget = Budget::new(u64::MAX);
        let mut graveyard = Vec::new();
        let (a, b) = (ring_topic(1, "a", 10, 1000), ring_topic(2, "b", 10, 1000));
        budget.push(&a, frame(1, 100), &mut graveyard);
        budget.push(&b, frame(2, 50), &mut graveyard);
        budget.push(&a, frame(3, 100), &mut graveyard);
        budget.clear(&a, 3, &mut graveyard);
        assert_eq!(budget.total(), 50);
        assert_eq!(graveyard.len(), 2);
        assert_eq!(budget.fronts().collect::<Vec<_>>(), [(2, 2)]);
        // The ring keeps counting positions: a reader before the clear has lost frames.
        assert_eq!(a.ring.read().start_pos(), 2);
        // Clearing an empty ring changes nothing.
        budget.clear(&a, 3, &mut graveyard);
        assert_eq!(budget.total(), 50);
    }
}
