//! A stream's handle for the world outside its writer: an operator or a token's expiry
//! can end it (with a reason the client is told), its topics can be changed while it
//! streams, and anyone can read how far it got.
//!
//! The writer checks the handle in the polls it makes anyway and arms its one timer for
//! the expiry, so a stream costs no task and no timer more than before.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::Context;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::subscription::Subscription;
use crate::topic::TopicName;

/// Why a stream is ended by the gateway while its client still reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// An operator closed it (protocol §11, `DELETE /api/streams`).
    Revoked = 1,
    /// The token that authorized it reached its `exp`.
    TokenExpired = 2,
}

impl CloseReason {
    /// The reason as the client reads it in `gateway.close` and as metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::TokenExpired => "token_expired",
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Revoked),
            2 => Some(Self::TokenExpired),
            _ => None,
        }
    }
}

/// Shared between a stream's writer and whoever may end or inspect the stream.
#[derive(Debug, Default)]
pub struct StreamControl {
    /// A [`CloseReason`], 0 while none.
    close: AtomicU8,
    /// The writer's task, woken by [`Self::close`].
    waker: AtomicWaker,
    /// When the stream must end with [`CloseReason::TokenExpired`].
    expires_at: Option<Instant>,
    /// Events whose last byte the socket took.
    events_sent: AtomicU64,
    /// Bytes owed to the socket.
    pending_bytes: AtomicU64,
    /// Topic changes for the writer to apply, and whether there are any.
    changes: Mutex<Vec<TopicChange>>,
    has_changes: AtomicBool,
    /// An event sent right after the opening comment (`gateway.stream`).
    opening_event: Option<Bytes>,
}

/// A change of a stream's topics, applied by its writer between two writes.
#[derive(Debug)]
pub(crate) struct TopicChange {
    /// Topics to add: a subscription made for them, positioned when it was made.
    pub add: Option<Subscription>,
    /// Topics to stop reading.
    pub remove: Vec<TopicName>,
    /// Told the stream's topics once the change is applied.
    pub done: oneshot::Sender<Vec<TopicName>>,
}

impl StreamControl {
    /// A handle for a stream that ends at `expires_at` (if set) unless it ends before.
    pub fn new(expires_at: Option<Instant>) -> Self {
        Self {
            expires_at,
            ..Self::default()
        }
    }

    /// The same handle, with an event (a complete frame) the stream sends right after its
    /// opening comment, before anything else.
    pub fn with_opening_event(mut self, frame: Bytes) -> Self {
        self.opening_event = Some(frame);
        self
    }

    /// The event sent right after the opening comment, if any.
    pub fn opening_event(&self) -> Option<&Bytes> {
        self.opening_event.as_ref()
    }

    /// Asks the stream's writer to stop reading `remove` and to take over `add` (a
    /// subscription of the same hub made for the topics to add: what they receive from
    /// the moment it was made reaches the stream). Resolves to the stream's topics once
    /// the change is applied; fails when the stream ended first.
    pub fn change_topics(
        &self,
        add: Option<Subscription>,
        remove: Vec<TopicName>,
    ) -> oneshot::Receiver<Vec<TopicName>> {
        let (done, applied) = oneshot::channel();
        self.changes.lock().push(TopicChange { add, remove, done });
        self.has_changes.store(true, Ordering::Release);
        self.waker.wake();
        applied
    }

    /// The changes waiting for the writer (none without taking the lock or writing to
    /// shared memory, the common case: this runs on every poll of the writer).
    pub(crate) fn take_changes(&self) -> Vec<TopicChange> {
        if !self.has_changes.load(Ordering::Acquire)
            || !self.has_changes.swap(false, Ordering::AcqRel)
        {
            return Vec::new();
        }
        std::mem::take(&mut *self.changes.lock())
    }

    /// Asks the stream to end with `reason`: its client gets `event: gateway.close`, a
    /// `retry:` and the end of the body after what it was already sent. The first reason
    /// given wins; returns whether this call was the one that closed it.
    pub fn close(&self, reason: CloseReason) -> bool {
        let closed = self
            .close
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if closed {
            self.waker.wake();
        }
        closed
    }

    /// Why the stream was asked to end, once it was.
    pub fn closed(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.close.load(Ordering::Acquire))
    }

    /// When the stream ends because its token expires.
    pub fn expires_at(&self) -> Option<Instant> {
        self.expires_at
    }

    /// Events delivered so far (their last byte taken by the socket).
    pub fn events_sent(&self) -> u64 {
        self.events_sent.load(Ordering::Relaxed)
    }

    /// Bytes the socket has not taken yet of what was written for it.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes.load(Ordering::Relaxed)
    }

    /// The close reason, registering the writer's task to be woken by a later one.
    pub(crate) fn poll_closed(&self, cx: &Context<'_>) -> Option<CloseReason> {
        if let Some(reason) = self.closed() {
            return Some(reason);
        }
        self.waker.register(cx.waker());
        // A close between the first check and the registration woke nobody.
        self.closed()
    }

    pub(crate) fn add_events_sent(&self, n: u64) {
        self.events_sent.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set_pending_bytes(&self, n: usize) {
        self.pending_bytes.store(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_wins() {
        let control = StreamControl::new(None);
        assert_eq!(control.closed(), None);
        assert!(control.close(CloseReason::Revoked));
        assert!(!control.close(CloseReason::TokenExpired));
        assert_eq!(control.closed(), Some(CloseReason::Revoked));
    }

    #[test]
    fn close_wakes_the_registered_writer() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        use std::task::{Wake, Waker};

        struct Flag(AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::Release);
            }
        }
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let cx = Context::from_waker(&waker);
        let control = StreamControl::new(None);
        assert_eq!(control.poll_closed(&cx), None);
        control.close(CloseReason::TokenExpired);
        assert!(flag.0.load(Ordering::Acquire));
        assert_eq!(control.poll_closed(&cx), Some(CloseReason::TokenExpired));
    }
}
