//! What a stream still owes its socket, as references.
//!
//! A batch is written from a per-thread scratch buffer at once; when the socket takes
//! only part of it, the stream keeps the unwritten tail as [`Bytes`] handles: the ring's
//! own frames (the first one sliced at the offset reached), a tiny copy of a partly
//! written chunk-size line, a static `\r\n` for a chunk's end, and small control bytes
//! (the response head, a heartbeat, the goodbye). A frame owed to a thousand stalled
//! streams is held once. Later writes copy owed segments into the per-thread scratch at
//! write time, or hand them to a vectored write; never into a buffer of the stream's own.
//!
//! Each segment that ends an event frame carries when the event was received, so the
//! event is counted as delivered (and its latency observed) when its last byte is taken,
//! and, for a sampled message, the stream's share of its fan-out span, settled then (or
//! given up when the stream ends owing it).

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

use crate::fanout::Claim;

/// Segments a stream owes its socket; allocates only while something is owed.
#[derive(Debug, Default)]
pub(crate) struct Owed {
    segments: VecDeque<Segment>,
    bytes: usize,
    events: usize,
}

#[derive(Debug)]
struct Segment {
    bytes: Bytes,
    /// Set when this segment's last byte ends an event frame received then (on the
    /// hub's clock).
    event: Option<u64>,
    /// The stream's share of the frame's fan-out span (a sampled message).
    claim: Option<Claim>,
}

impl Owed {
    /// Nothing owed.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Bytes owed.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Event frames not yet completely written.
    pub fn events(&self) -> usize {
        self.events
    }

    /// Owes `bytes` after everything owed so far; `event` when they end an event frame
    /// (with the stream's `claim` on its fan-out span, for a sampled message).
    pub fn push(&mut self, bytes: Bytes, event: Option<u64>, claim: Option<Claim>) {
        if bytes.is_empty() {
            return;
        }
        self.bytes += bytes.len();
        self.events += usize::from(event.is_some());
        self.segments.push_back(Segment {
            bytes,
            event,
            claim,
        });
    }

    /// The socket took `n` bytes from the front: calls `delivered` with the receipt time
    /// (and the fan-out claim) of each event frame whose last byte is now written. Gives
    /// the queue's memory back once empty.
    pub fn advance(&mut self, mut n: usize, mut delivered: impl FnMut(u64, Option<Claim>)) {
        while n > 0 {
            let Some(front) = self.segments.front_mut() else {
                break;
            };
            let len = front.bytes.len();
            if n < len {
                front.bytes.advance(n);
                self.bytes -= n;
                break;
            }
            n -= len;
            self.bytes -= len;
            if let Some(segment) = self.segments.pop_front()
                && let Some(received) = segment.event
            {
                self.events -= 1;
                delivered(received, segment.claim);
            }
        }
        if self.segments.is_empty() {
            self.segments = VecDeque::new();
        }
    }

    /// The first owed segments as slices for a vectored write; returns how many of
    /// `slices` were filled.
    pub fn io_slices<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut filled = 0;
        for (slot, segment) in slices.iter_mut().zip(&self.segments) {
            *slot = IoSlice::new(&segment.bytes);
            filled += 1;
        }
        filled
    }

    /// Copies the first owed bytes, at most `max`, to the end of `buf`.
    pub fn copy_front(&self, buf: &mut BytesMut, max: usize) {
        let mut left = max;
        for segment in &self.segments {
            if left == 0 {
                break;
            }
            let take = segment.bytes.len().min(left);
            buf.extend_from_slice(&segment.bytes[..take]);
            left -= take;
        }
    }

    /// The owed segments' start addresses and lengths (tests: proves what is shared).
    #[cfg(test)]
    pub fn ranges(&self) -> Vec<(usize, usize)> {
        self.segments
            .iter()
            .map(|s| (s.bytes.as_ptr() as usize, s.bytes.len()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_counts_events_at_their_last_byte() {
        let mut owed = Owed::default();
        let t = 7;
        owed.push(Bytes::from_static(b"5\r\n"), None, None);
        owed.push(Bytes::from_static(b"abc"), Some(t), None);
        owed.push(Bytes::from_static(b"de"), Some(t), None);
        owed.push(Bytes::from_static(b"\r\n"), None, None);
        owed.push(Bytes::new(), Some(t), None);
        assert_eq!((owed.bytes(), owed.events()), (10, 2));
        let mut done = 0;
        owed.advance(5, |_, _| done += 1);
        assert_eq!((owed.bytes(), owed.events(), done), (5, 2, 0));
        owed.advance(1, |_, _| done += 1);
        assert_eq!((owed.bytes(), owed.events(), done), (4, 1, 1));
        let mut buf = BytesMut::new();
        owed.copy_front(&mut buf, 3);
        assert_eq!(&buf[..], b"de\r");
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(owed.io_slices(&mut slices), 2);
        owed.advance(4, |_, _| done += 1);
        assert_eq!((owed.bytes(), owed.events(), done), (0, 0, 2));
        assert!(owed.is_empty());
        assert_eq!(owed.segments.capacity(), 0, "memory given back");
    }
}
