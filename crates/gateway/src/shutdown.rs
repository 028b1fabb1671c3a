//! SIGTERM: drain, then let Pingora stop.
//!
//! Pingora's own SIGTERM handling waits a fixed grace period before stopping runtimes
//! and knows nothing of our detached stream tasks. Instead, this watcher handles the
//! signal first: `/readyz` turns 503 and new streams get 503, every open stream gets a
//! final `retry:` and ends, and once none is left (or `grace_period` has passed) Pingora
//! is told to stop with no grace of its own. A second signal stops at once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{SignalKind, signal};

use crate::sse::Streams;

/// Drains the streams on SIGTERM or SIGINT.
#[derive(Debug)]
pub struct DrainOnSignal {
    streams: Arc<Streams>,
    /// `server.grace_period`.
    grace: Duration,
}

impl DrainOnSignal {
    /// A watcher that gives `streams` up to `grace` to end.
    pub fn new(streams: Arc<Streams>, grace: Duration) -> Self {
        Self { streams, grace }
    }
}

#[async_trait]
impl ShutdownSignalWatch for DrainOnSignal {
    async fn recv(&self) -> ShutdownSignal {
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => (term, int),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot install signal handlers; stopping");
                return ShutdownSignal::FastShutdown;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining (again to stop at once)"),
        }
        let grace = self.grace;
        self.streams.start_draining();
        let open = self.streams.open();
        tracing::info!(open, grace = %humantime::format_duration(grace), "ending every stream");
        tokio::select! {
            () = self.streams.all_closed() => {
                tracing::info!("every stream ended; stopping");
            }
            () = tokio::time::sleep(grace) => {
                tracing::warn!(
                    open = self.streams.open(),
                    "grace period over; closing the streams left"
                );
            }
            _ = term.recv() => tracing::warn!("second SIGTERM: stopping now"),
            _ = int.recv() => tracing::warn!("second SIGINT: stopping now"),
        }
        // Let the last goodbyes leave the socket buffers' hands.
        tokio::time::sleep(Duration::from_millis(10)).await;
        ShutdownSignal::GracefulTerminate
    }
}
