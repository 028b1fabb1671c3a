//! SIGTERM: drain, then let Pingora stop. SIGQUIT (or `POST /api/upgrade`): hand the
//! listening sockets to a new process, then drain.
//!
//! Pingora's own SIGTERM handling waits a fixed grace period before stopping runtimes
//! and knows nothing of our detached stream tasks. Instead, this watcher handles the
//! signal first: `/readyz` turns 503 and new streams get 503, every open stream gets a
//! final `retry:` and ends, and once none is left (or `grace_period` has passed) Pingora
//! is told to stop at once. A second signal stops at once.
//!
//! An upgrade goes the other way round: Pingora sends the listening sockets to the new
//! process (`server.upgrade_socket`), both accept for a few seconds, then this process
//! stops accepting, and only then ([`drain_after_handover`], on Pingora's grace-period
//! phase) are its streams ended as on SIGTERM: their clients reconnect, and the only
//! process accepting is the new one. When the last stream has ended the process exits 0.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, broadcast};

use crate::sse::Streams;

/// Asks the running process to hand its listeners over (`POST /api/upgrade`).
#[derive(Debug, Clone, Default)]
pub struct UpgradeRequest(Arc<Notify>);

impl UpgradeRequest {
    /// Starts the hand-over (once; later calls are no-ops).
    pub fn request(&self) {
        self.0.notify_one();
    }

    async fn requested(&self) {
        self.0.notified().await;
    }
}

/// Drains the streams on SIGTERM or SIGINT; hands over on SIGQUIT or an upgrade request.
#[derive(Debug)]
pub struct DrainOnSignal {
    streams: Arc<Streams>,
    /// `server.grace_period`.
    grace: Duration,
    upgrade: UpgradeRequest,
    /// `server.upgrade_socket`.
    upgrade_socket: PathBuf,
}

impl DrainOnSignal {
    /// A watcher that gives `streams` up to `grace` to end, and hands the listeners over
    /// through `upgrade_socket`.
    pub fn new(
        streams: Arc<Streams>,
        grace: Duration,
        upgrade: UpgradeRequest,
        upgrade_socket: PathBuf,
    ) -> Self {
        Self {
            streams,
            grace,
            upgrade,
            upgrade_socket,
        }
    }
}

/// How long a hand-over waits for the new process's socket to appear.
const SOCKET_WAIT: Duration = Duration::from_secs(5);

/// Whether `path` is a Unix socket owned by this process's user, waiting up to
/// [`SOCKET_WAIT`] for it: the listening sockets go only to a process of the same user
/// (another user could otherwise bind the path in a shared directory and ask for them).
async fn new_process_waits_at(path: &Path) -> Result<(), String> {
    let ours = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(|e| format!("cannot tell this process's user: {e}"))?;
    let deadline = Instant::now() + SOCKET_WAIT;
    loop {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() && m.uid() == ours => return Ok(()),
            Ok(m) if m.file_type().is_socket() => {
                return Err(format!(
                    "{} belongs to user {}, not to this process's user {ours}",
                    path.display(),
                    m.uid()
                ));
            }
            Ok(_) => return Err(format!("{} is not a socket", path.display())),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(format!(
                    "no process waits at {} ({e}); start the new one with --upgrade",
                    path.display()
                ));
            }
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for DrainOnSignal {
    async fn recv(&self) -> ShutdownSignal {
        let (mut term, mut int, mut quit) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) {
            (Ok(term), Ok(int), Ok(quit)) => (term, int, quit),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                tracing::error!(error = %e, "cannot install signal handlers; stopping");
                return ShutdownSignal::FastShutdown;
            }
        };
        loop {
            let asked_by = tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM: draining");
                    break;
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT: draining (again to stop at once)");
                    break;
                }
                _ = quit.recv() => "SIGQUIT",
                () = self.upgrade.requested() => "POST /api/upgrade",
            };
            match new_process_waits_at(&self.upgrade_socket).await {
                Ok(()) => {
                    tracing::info!(
                        asked_by,
                        socket = %self.upgrade_socket.display(),
                        "handing the listening sockets to the new process"
                    );
                    return ShutdownSignal::GracefulUpgrade;
                }
                Err(why) => tracing::error!(asked_by, "no hand-over, serving on: {why}"),
            }
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
        // Drained: nothing is left for Pingora's own grace period.
        ShutdownSignal::FastShutdown
    }
}

/// After a hand-over, once this process has stopped accepting (Pingora's grace-period
/// phase), ends every stream as on SIGTERM and exits 0 when none is left (or `grace`
/// has passed). Runs on its own thread, reading Pingora's phases.
pub fn drain_after_handover(
    mut phases: broadcast::Receiver<ExecutionPhase>,
    streams: Arc<Streams>,
    grace: Duration,
) {
    let spawned = std::thread::Builder::new()
        .name("handover-drain".into())
        .spawn(move || {
            loop {
                match phases.blocking_recv() {
                    Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
            tracing::info!(
                open = streams.open(),
                grace = %humantime::format_duration(grace),
                "no longer accepting; ending every stream"
            );
            streams.start_draining();
            let deadline = Instant::now() + grace;
            while streams.open() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            // Let the last goodbyes leave the socket buffers' hands.
            std::thread::sleep(Duration::from_millis(10));
            tracing::info!(open = streams.open(), "handed over; exiting");
            std::process::exit(0);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the hand-over drain; streams end with the process");
    }
}
