//! What every part of the running gateway shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::num::NonZeroU32;

use sse_admission::{Caps, RateLimiter};
use sse_bus::Publisher;
use sse_hub::{Hub, WriterConfig};
use tokio::sync::Notify;

use crate::config::Config;
use crate::metrics::Metrics;

/// The running gateway's shared state.
#[derive(Debug)]
pub struct Gateway {
    /// Validated configuration.
    pub config: Config,
    /// The hub.
    pub hub: Hub,
    /// Metrics.
    pub metrics: Metrics,
    /// Settings of every stream writer.
    pub writer: WriterConfig,
    /// Token buckets per client address.
    pub rate: RateLimiter,
    /// Stream caps (global and per client address).
    pub caps: Arc<Caps>,
    /// Open public-listener sockets per peer address (`limits.max_sockets_per_ip`).
    pub sockets: Arc<Caps>,
    /// The publish API's way out.
    pub publisher: Publisher,
    draining: AtomicBool,
    /// Notified when the last stream ends.
    streams_gone: Notify,
}

impl Gateway {
    /// Shared state for `config`, `hub` and `metrics`.
    pub fn new(config: Config, hub: Hub, publisher: Publisher, metrics: Metrics) -> Arc<Self> {
        let writer = WriterConfig {
            heartbeat: config.sse.heartbeat,
            retry: config.sse.retry,
            write_timeout: config.sse.write_timeout,
            client_buffer: config.sse.client_buffer,
            client_buffer_bytes: config.sse.client_buffer_bytes,
            max_write_frames: config.sse.client_buffer,
            max_write_bytes: 256 * 1024,
            // Streams end spread over most of the grace period, each told to come back
            // soon (to another instance) but not all at once.
            drain_spread: config.server.grace_period.mul_f64(0.75),
            drain_retry: config.sse.retry.min(Duration::from_secs(1)),
        };
        let limits = &config.limits;
        let rate = RateLimiter::new(
            NonZeroU32::new(limits.connect_rate_per_ip).unwrap_or(NonZeroU32::MIN),
            NonZeroU32::new(limits.connect_burst_per_ip).unwrap_or(NonZeroU32::MIN),
        );
        let caps = Caps::new(limits.max_connections, limits.max_connections_per_ip);
        let sockets = Caps::new(u64::MAX, limits.max_sockets_per_ip);
        Arc::new(Self {
            publisher,
            rate,
            caps,
            sockets,
            config,
            hub,
            metrics,
            writer,
            draining: AtomicBool::new(false),
            streams_gone: Notify::new(),
        })
    }

    /// `Retry-After` for 503 answers: the announced reconnection delay, at least 1 s.
    pub fn retry_after_secs(&self) -> u64 {
        self.config.sse.retry.as_secs().max(1)
    }

    /// Refreshes the gauges that are read off other structures.
    pub fn refresh_gauges(&self) {
        let m = &self.metrics;
        m.rate_limited_clients
            .set(i64::try_from(self.rate.tracked()).unwrap_or(i64::MAX));
        m.clients_with_streams
            .set(i64::try_from(self.caps.tracked_ips()).unwrap_or(i64::MAX));
    }

    /// Whether SIGTERM was received.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stops admitting streams and asks every open one to end.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.hub.close();
    }

    /// Ready: connected upstream and not draining.
    pub fn is_ready(&self) -> bool {
        self.hub.is_connected() && !self.is_draining()
    }

    /// Open streams.
    pub fn open_streams(&self) -> i64 {
        self.metrics.connections_active.get()
    }

    /// Resolves once no stream is open.
    pub async fn all_streams_closed(&self) {
        loop {
            let gone = self.streams_gone.notified();
            let mut gone = std::pin::pin!(gone);
            // Registered before the check, so a release in between is not missed.
            gone.as_mut().enable();
            if self.open_streams() <= 0 {
                return;
            }
            gone.await;
        }
    }

    /// Counts an open stream until the guard is dropped.
    pub fn open_stream(self: &Arc<Self>) -> StreamGuard {
        self.metrics.connections_active.inc();
        StreamGuard {
            gateway: self.clone(),
        }
    }
}

/// One open stream in `sse_connections_active`; released on every exit path.
#[derive(Debug)]
pub struct StreamGuard {
    gateway: Arc<Gateway>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.gateway.metrics.connections_active.dec();
        if self.gateway.open_streams() <= 0 {
            self.gateway.streams_gone.notify_waiters();
        }
    }
}
