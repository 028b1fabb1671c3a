//! SIGHUP: read the configuration file again and apply what can change while streams
//! stay open (protocol §12).
//!
//! The file is read and validated whole, and every new part that can fail to build (the
//! authorizer with its key file, the route pools, the log filter) is built, before
//! anything is applied: an invalid file changes nothing and is counted as
//! `sse_config_reloads_total{result="error"}`. Then each live part is swapped in for the
//! requests after it ([`crate::live::Live`]), limits are set in place, and the heartbeat
//! and `retry:` reach open streams through their shared [`sse_hub::Cadence`]. Keys that
//! need a restart keep their old value and are named in a warning; one line lists what
//! changed (names only: values may be secrets).
//!
//! The keys in force (the started ones, with the live changes since) are what
//! `GET /api/config` shows and what `--check-config --against` compares a new file with.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sse_auth::Authorizer;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{Change, Config, Keys};
use crate::edge::Cors;
use crate::live::Live;
use crate::logging::LogLevel;
use crate::metrics::{Metrics, Reload};
use crate::routes::{self, Routes};
use crate::state::Gateway;

/// The parts a reload changes.
#[derive(Debug)]
pub struct LiveParts {
    /// The public listeners' state: `[cors]`, `[limits]` (admission, stream caps,
    /// `max_publish_bytes`), `sse.heartbeat`, `sse.retry`.
    pub gateway: Arc<Gateway>,
    /// `[auth]`, when on (shared by streams, publishing and tickets).
    pub auth: Option<Live<Authorizer>>,
    /// `[[routes]]`.
    pub routes: Live<Routes>,
    /// `log.level`.
    pub log: LogLevel,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// Keys applied.
    pub applied: Vec<String>,
    /// Keys changed in the file that keep their old value until a restart.
    pub need_restart: Vec<String>,
}

/// Reloads the file it was started with.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    parts: LiveParts,
    /// The keys in force.
    running: Mutex<Keys>,
    metrics: Metrics,
}

impl Reloader {
    /// A reloader of `path`, whose configuration `started` is in force in `parts`.
    pub fn new(path: PathBuf, started: &Config, parts: LiveParts, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            path,
            parts,
            running: Mutex::new(started.keys.clone()),
            metrics,
        })
    }

    /// The keys in force.
    pub fn running(&self) -> Keys {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the file again and applies its live keys; counts and logs the result.
    pub fn reload(&self) {
        match self.try_reload() {
            Ok(done) => {
                self.metrics.reloaded(Reload::Ok);
                if !done.need_restart.is_empty() {
                    tracing::warn!(
                        keys = %done.need_restart.join(", "),
                        "configuration reloaded; these keys changed but keep their old value until a restart"
                    );
                }
                tracing::info!(
                    changed = %if done.applied.is_empty() { "nothing".to_owned() } else { done.applied.join(", ") },
                    "configuration reloaded"
                );
            }
            Err(e) => {
                self.metrics.reloaded(Reload::Error);
                tracing::error!(
                    file = %self.path.display(),
                    error = %format!("{e:#}"),
                    "configuration reload refused; the old configuration stays"
                );
            }
        }
    }

    fn try_reload(&self) -> anyhow::Result<Reloaded> {
        let new = Config::load(&self.path)?;
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let changes = running.changes(&new.keys);
        let changed = |prefix: &str| {
            changes
                .iter()
                .any(|(k, _)| k == prefix || k.starts_with(&format!("{prefix}.")))
        };
        // An [auth] change applies only when all of it can (its kind of key, whether it is
        // on and whether tickets exist are fixed at start).
        let auth_fixed = changes
            .iter()
            .any(|(k, c)| k.starts_with("auth.") && *c == Change::Restart);
        // Everything that can fail, built before anything is applied. The authorizer is
        // built anew on every reload: key files are read again, changed path or not.
        let authorizer = match (&self.parts.auth, &new.auth) {
            (Some(_), Some(config)) if !auth_fixed => {
                Some(Authorizer::new(config.clone()).map_err(|e| anyhow::anyhow!("auth: {e}"))?)
            }
            _ => None,
        };
        let routes = if changed("routes") {
            Some(routes::build(&new.routes)?)
        } else {
            None
        };
        let filter = if changed("log.level") {
            Some(self.parts.log.filter(&new.log_level)?)
        } else {
            None
        };

        // Apply.
        let parts = &self.parts;
        let gateway = &parts.gateway;
        if changed("cors") {
            gateway.cors.replace(Cors::new(
                &new.cors.allowed_origins,
                new.cors.allow_credentials,
            ));
        }
        if let (Some(live), Some(authorizer)) = (&parts.auth, authorizer) {
            live.replace(authorizer);
        }
        if changed("limits") {
            gateway.admission.reconfigure(&new.limits);
            gateway
                .publishing
                .set_max_publish_bytes(new.limits.max_publish_bytes);
        }
        gateway.streams.reconfigure(&new.sse, &new.limits);
        if let Some(routes) = routes {
            routes.start_health_checks();
            // The old set stops checking once its last request lets go of it.
            parts.routes.replace(routes);
        }
        if let Some(filter) = filter {
            parts.log.set(filter);
        }

        let mut done = Reloaded {
            applied: Vec::new(),
            need_restart: Vec::new(),
        };
        for (key, change) in changes {
            let applies = change == Change::Live && !(key.starts_with("auth.") && auth_fixed);
            if applies {
                running.take(&new.keys, &key);
                done.applied.push(key);
            } else {
                done.need_restart.push(key);
            }
        }
        Ok(done)
    }
}

/// Reloads on SIGHUP; starts the health checks of the routes first.
#[derive(Debug)]
pub struct ReloadOnHangup {
    reloader: Arc<Reloader>,
}

impl ReloadOnHangup {
    /// Runs `reloader` on every SIGHUP.
    pub fn new(reloader: Arc<Reloader>) -> Self {
        Self { reloader }
    }
}

#[async_trait]
impl BackgroundService for ReloadOnHangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.reloader.parts.routes.current().start_health_checks();
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGHUP; the configuration cannot be reloaded");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    tracing::info!(file = %self.reloader.path.display(), "SIGHUP: reloading the configuration");
                    self.reloader.reload();
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Makes SIGHUP harmless from now on (its default action ends the process): a reload
/// asked for before the watcher runs is ignored rather than fatal.
pub fn ignore_hangup_until_watched() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    // Tokio's handler stays installed for the life of the process.
    runtime.block_on(async { signal(SignalKind::hangup()).map(drop) })
}
