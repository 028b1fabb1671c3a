//! Logs: to stderr, text or one JSON object per line, filtered by `log.level` (which a
//! reload changes) unless `RUST_LOG` is set (then it wins, and stays).

use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, Registry, reload};

/// Libraries whose debug and trace lines print request heads (`Authorization`, cookies,
/// targets with `?access_token=`): their logs are capped at `info`, whatever the level
/// says, so no log line holds a secret (protocol §9, "Secrets").
const HEAD_PRINTING_TARGETS: [&str; 4] = ["pingora", "h2", "hyper", "rustls"];

/// Changes what is logged while the process runs.
pub struct LogLevel {
    /// `None` when `RUST_LOG` decides.
    handle: Option<reload::Handle<EnvFilter, Registry>>,
}

impl std::fmt::Debug for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogLevel")
            .field("from_rust_log", &self.handle.is_none())
            .finish()
    }
}

impl LogLevel {
    /// The filter for `directives` (checked when the file was validated).
    pub fn filter(&self, directives: &str) -> anyhow::Result<EnvFilter> {
        EnvFilter::builder()
            .parse(directives)
            .map_err(|e| anyhow::anyhow!("log.level: {e}"))
    }

    /// Logs with `filter` from now on (nothing changes while `RUST_LOG` decides).
    pub fn set(&self, filter: EnvFilter) {
        match &self.handle {
            Some(handle) => {
                if let Err(e) = handle.reload(filter) {
                    tracing::error!(error = %e, "cannot change the log level");
                }
            }
            None => tracing::warn!("log.level changed, but RUST_LOG is set and decides"),
        }
    }
}

/// Installs the logger: `RUST_LOG` when set, else `level` (the file's `log.level`).
pub fn init(json: bool, level: &str) -> LogLevel {
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let filter = if from_env {
        EnvFilter::from_default_env()
    } else {
        EnvFilter::builder()
            .parse(level)
            .unwrap_or_else(|_| EnvFilter::new(crate::config::DEFAULT_LOG_LEVEL))
    };
    let (filter, handle) = reload::Layer::new(filter);
    let no_secrets = tracing_subscriber::filter::filter_fn(|meta| {
        *meta.level() <= tracing::Level::INFO
            || !HEAD_PRINTING_TARGETS
                .iter()
                .any(|t| meta.target().starts_with(t))
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().with_current_span(false).boxed()
    } else {
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed()
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(no_secrets).with_filter(filter))
        .init();
    LogLevel {
        handle: (!from_env).then_some(handle),
    }
}
