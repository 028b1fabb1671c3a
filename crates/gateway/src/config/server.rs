//! `[server]`, `[admin]`, `[tls]` and `[log]`: listeners, timeouts, logs.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret, in_range, invalid, positive, socket_addr};

/// `[server]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// Public listener.
    pub listen: String,
    /// Worker threads of the public listener.
    pub threads: usize,
    /// SIGTERM: streams are ended within this.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// A request head must arrive within this of its first byte (slowloris).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A kept-alive connection with no request in progress is closed after this.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Accept cleartext HTTP/2 (prior knowledge) on the public listener.
    pub h2c: bool,
    /// The Unix socket through which `--upgrade` takes the listening sockets over;
    /// default: `sse-gateway-<port of server.listen>.upgrade.sock` in the temp directory.
    pub upgrade_socket: Option<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            threads: 2,
            grace_period: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            h2c: true,
            upgrade_socket: None,
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`, the operator API).
    pub listen: String,
    /// Bearer token every operator API call (`/api/…`) must carry.
    pub token: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
            token: None,
        }
    }
}

/// `[admin]`, validated.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// `admin.listen`
    pub listen: SocketAddr,
    /// `admin.token`: the operator API needs `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Address of the TLS listener.
    pub listen: String,
    /// PEM certificate chain.
    pub cert_file: String,
    /// PEM private key.
    pub key_file: String,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// What is logged: a level (`info`) or `RUST_LOG`-style directives
    /// (`info,sse_gateway=debug`). `RUST_LOG`, when set, wins.
    pub level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: DEFAULT_LOG_LEVEL.to_owned(),
        }
    }
}

/// `log.level` by default: our lines at info, Pingora's own at warn.
pub const DEFAULT_LOG_LEVEL: &str = "info,pingora_core=warn,pingora_proxy=warn";

/// `[log]`, validated: whether lines are JSON, and the level directives.
pub fn validate_log(raw: RawLog) -> Result<(bool, String), ConfigError> {
    let level = raw.level.trim().to_owned();
    if level.is_empty() {
        return Err(invalid("log.level", "is empty; say e.g. \"info\""));
    }
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&level) {
        return Err(invalid(
            "log.level",
            format!("{level:?} is not a level or a list of directives: {e}"),
        ));
    }
    Ok((raw.format == LogFormat::Json, level))
}

/// `log.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[server]`, validated.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Public listener.
    pub listen: SocketAddr,
    /// Worker threads.
    pub threads: usize,
    /// Drain deadline on SIGTERM.
    pub grace_period: Duration,
    /// Deadline for a request head.
    pub header_timeout: Duration,
    /// Idle time allowed between requests on a kept-alive connection (0: no keep-alive).
    pub keepalive_timeout: Duration,
    /// Cleartext HTTP/2 accepted.
    pub h2c: bool,
    /// Where `--upgrade` receives the listening sockets.
    pub upgrade_socket: String,
}

/// A validated `[tls]`.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Listener address.
    pub listen: SocketAddr,
    /// Certificate chain file.
    pub cert_file: String,
    /// Key file.
    pub key_file: String,
}

/// `[server]`, `[admin]` and `[tls]`, validated: the server, the admin listener, the TLS
/// listener.
pub(super) fn validate(
    server: RawServer,
    admin: RawAdmin,
    tls: Option<RawTls>,
) -> Result<(ServerSettings, AdminSettings, Option<TlsSettings>), ConfigError> {
    let listen = socket_addr("server.listen", &server.listen)?;
    let upgrade_socket = match server.upgrade_socket {
        Some(path) if path.trim().is_empty() => {
            return Err(invalid("server.upgrade_socket", "is empty"));
        }
        Some(path) => path,
        None => std::env::temp_dir()
            .join(format!("sse-gateway-{}.upgrade.sock", listen.port()))
            .display()
            .to_string(),
    };
    let server = ServerSettings {
        listen,
        upgrade_socket,
        threads: in_range("server.threads", server.threads, 1, 1024)?,
        grace_period: server.grace_period,
        header_timeout: positive("server.header_timeout", server.header_timeout)?,
        keepalive_timeout: server.keepalive_timeout,
        h2c: server.h2c,
    };
    let admin_listen = socket_addr("admin.listen", &admin.listen)?;
    if admin_listen == server.listen {
        return Err(invalid(
            "admin.listen",
            format!("must differ from server.listen ({})", server.listen),
        ));
    }
    let token = match admin.token {
        None => None,
        Some(t) if t.is_empty() || t.bytes().any(|b| !b.is_ascii_graphic()) => {
            return Err(invalid(
                "admin.token",
                "must be non-empty printable ASCII without spaces (it is sent as a bearer token)",
            ));
        }
        Some(t) => Some(Secret::new(t)),
    };
    let admin = AdminSettings {
        listen: admin_listen,
        token,
    };
    let tls = tls
        .map(|t| -> Result<TlsSettings, ConfigError> {
            for (key, path) in [
                ("tls.cert_file", &t.cert_file),
                ("tls.key_file", &t.key_file),
            ] {
                if std::fs::metadata(path).is_err() {
                    return Err(invalid(key, format!("cannot read {path:?}")));
                }
            }
            Ok(TlsSettings {
                listen: socket_addr("tls.listen", &t.listen)?,
                cert_file: t.cert_file,
                key_file: t.key_file,
            })
        })
        .transpose()?;
    Ok((server, admin, tls))
}
