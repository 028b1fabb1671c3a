//! The background service that runs the bus (the NATS adapter, or nothing in embedded
//! mode), the linger sweeper and the token-bucket pruner, on a runtime of its own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sse_bus::NatsBus;
use sse_hub::Hub;

use crate::admission::Admission;

/// Runs the bus and housekeeping until shutdown.
#[derive(Debug)]
pub struct UpstreamService {
    hub: Hub,
    admission: Arc<Admission>,
    /// Taken by `start`, which Pingora calls once. `None` in embedded mode.
    bus: Mutex<Option<NatsBus>>,
}

impl UpstreamService {
    /// The service running `bus` (`None`: embedded mode, no broker), `hub`'s linger
    /// sweeper and the pruner of `admission`'s token buckets.
    pub fn new(hub: Hub, admission: Arc<Admission>, bus: Option<NatsBus>) -> Self {
        Self {
            hub,
            admission,
            bus: Mutex::new(bus),
        }
    }
}

#[async_trait]
impl BackgroundService for UpstreamService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let bus = self.bus.lock().ok().and_then(|mut b| b.take());
        let sweeper = tokio::spawn(self.hub.clone().run_linger_sweeper());
        let pruner = tokio::spawn(prune_rate_limiter(self.admission.clone()));
        let stopped = async move {
            let _ = shutdown.changed().await;
        };
        match bus {
            Some(bus) => {
                if let Err(e) = bus.run(stopped).await {
                    tracing::error!(error = %e, "the NATS adapter stopped");
                }
            }
            None => stopped.await,
        }
        sweeper.abort();
        pruner.abort();
    }
}

/// How often idle token buckets are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Forgets clients whose token bucket is full again, so the keyed state stays bounded
/// however many addresses come by.
async fn prune_rate_limiter(admission: Arc<Admission>) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let kept = admission.prune();
        tracing::trace!(kept, "pruned idle token buckets");
    }
}
