//! `gateway.toml`: read in two steps.
//!
//! [`RawConfig`] mirrors the file (serde, unknown keys rejected, durations as strings
//! with a unit); [`Config::from_raw`] validates it into typed settings and names the key
//! of every problem. Tests build a [`RawConfig`] in code or from a string.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use sse_bus::{JetStreamConfig, NatsBusConfig, ServerAddr};
use sse_topic::TopicName;

use std::sync::Arc;

use sse_auth::{AuthConfig, Authorizer, VerifyKey};

use crate::edge::Cors;

/// A configuration problem, naming the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type, bad duration).
    #[error("{path}: {message}")]
    Parse {
        /// The path given.
        path: String,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted key, e.g. `sse.client_buffer`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

// ----- the file --------------------------------------------------------------------

/// `gateway.toml` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// `[server]`
    pub server: RawServer,
    /// `[admin]`
    pub admin: RawAdmin,
    /// `[nats]`
    pub nats: RawNats,
    /// `[sse]`
    pub sse: RawSse,
    /// `[limits]`
    pub limits: RawLimits,
    /// `[jetstream]`
    pub jetstream: RawJetStream,
    /// `[bus]`
    pub bus: RawBus,
    /// `[[routes]]`
    pub routes: Vec<RawRoute>,
    /// `[cors]`
    pub cors: RawCors,
    /// `[tls]`: a second public listener with TLS (HTTP/2 by ALPN).
    pub tls: Option<RawTls>,
    /// `[auth]`
    pub auth: RawAuth,
    /// `[log]`
    pub log: RawLog,
}

/// `[log]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// `text` (default) or `json`.
    pub format: LogFormat,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// Require tokens (except for public topics).
    pub enabled: bool,
    /// HS256 shared secret (at least 32 bytes).
    pub hs256_secret: Option<String>,
    /// PEM public key for RS256 or ES256.
    pub public_key_file: Option<String>,
    /// Cookie holding the token.
    pub cookie: String,
    /// Topic patterns anyone may read.
    pub public_topics: Vec<String>,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            enabled: false,
            hs256_secret: None,
            public_key_file: None,
            cookie: sse_auth::DEFAULT_COOKIE.to_owned(),
            public_topics: Vec::new(),
        }
    }
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Address of the TLS listener.
    pub listen: String,
    /// PEM certificate chain.
    pub cert_file: String,
    /// PEM private key.
    pub key_file: String,
}

/// `[cors]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCors {
    /// Origins allowed to use `/events` and `/publish` from a browser (`"*"`: any).
    pub allowed_origins: Vec<String>,
    /// Allow credentials (cookies) on cross-origin requests.
    pub allow_credentials: bool,
}

/// `[[routes]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Path prefix, e.g. `/api/orders`.
    pub prefix: String,
    /// `host:port` of each upstream.
    pub upstreams: Vec<String>,
    /// Path of an HTTP health check (2xx = healthy); a TCP connect check otherwise.
    #[serde(default)]
    pub health_check: Option<String>,
    /// Connect timeout per attempt.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest silence from an upstream while reading its response.
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    pub read_timeout: Duration,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_read_timeout() -> Duration {
    Duration::from_secs(60)
}

/// `[bus]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBus {
    /// Where events come from.
    pub kind: BusKind,
}

/// `bus.kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// NATS (core subjects or a JetStream stream).
    #[default]
    Nats,
    /// No broker: the publish API feeds the hub inside this process.
    Memory,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
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
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub listen: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
        }
    }
}

/// `[nats]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNats {
    /// One server URL or a comma-separated list.
    pub url: String,
    /// Topic `t` is subject `<subject_prefix>.t`.
    pub subject_prefix: String,
}

impl Default for RawNats {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            subject_prefix: "sse".into(),
        }
    }
}

/// `[sse]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSse {
    /// Comment after this much silence.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Reconnection delay announced to clients.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
    /// Events kept per topic in memory for resume.
    pub replay_window: usize,
    /// Frames a client may fall behind before the slow-consumer policy cuts it.
    pub client_buffer: usize,
    /// Encoded bytes kept per topic in memory.
    pub replay_bytes: usize,
    /// Bytes a client may fall behind before the slow-consumer policy cuts it.
    pub client_buffer_bytes: usize,
    /// A client whose socket accepts nothing this long is cut.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Topics on one stream.
    pub max_topics_per_connection: usize,
    /// Upstream subscription kept this long after a topic's last client left.
    #[serde(with = "humantime_serde")]
    pub topic_linger: Duration,
    /// Accept `*` and `>` in topics.
    pub allow_wildcards: bool,
}

impl Default for RawSse {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_secs(3),
            replay_window: 1024,
            client_buffer: 256,
            replay_bytes: 8 * 1024 * 1024,
            client_buffer_bytes: 4 * 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            max_topics_per_connection: 16,
            topic_linger: Duration::from_secs(30),
            allow_wildcards: false,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Streams open at once.
    pub max_connections: u64,
    /// Streams open at once per client address.
    pub max_connections_per_ip: u64,
    /// Streams per topic.
    pub max_subscribers_per_topic: u64,
    /// Encoded bytes all topic rings together may hold.
    pub max_ring_bytes: u64,
    /// Active topics (with streams or lingering) at once.
    pub max_topics: u64,
    /// Token bucket refill, tokens per second per client address.
    pub connect_rate_per_ip: u32,
    /// Token bucket size.
    pub connect_burst_per_ip: u32,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    /// TCP connections one peer address may hold open on the public listeners.
    pub max_sockets_per_ip: u64,
    /// IPv6 clients are counted (buckets, caps) by their network of this prefix length.
    pub ipv6_prefix: u8,
    /// Largest `POST /publish` body; unset: 1 MiB less the room NATS headers need.
    pub max_publish_bytes: Option<usize>,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_connections_per_ip: 256,
            max_subscribers_per_topic: 100_000,
            max_ring_bytes: 1024 * 1024 * 1024,
            max_topics: 100_000,
            connect_rate_per_ip: 50,
            connect_burst_per_ip: 100,
            trusted_proxies: Vec::new(),
            max_sockets_per_ip: 1024,
            ipv6_prefix: 64,
            max_publish_bytes: None,
        }
    }
}

/// `[jetstream]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawJetStream {
    /// Back every topic with a JetStream stream.
    pub enabled: bool,
    /// Stream name.
    pub stream: String,
    /// Create the stream when it is missing.
    pub create: bool,
    /// When the gateway creates the stream: how long it keeps messages.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// When the gateway creates the stream: its replicas.
    pub replicas: usize,
    /// Replays from the stream in flight at once.
    pub max_concurrent_replays: usize,
}

impl Default for RawJetStream {
    fn default() -> Self {
        Self {
            enabled: false,
            stream: "SSE".into(),
            create: true,
            max_age: Duration::from_secs(24 * 3600),
            replicas: 1,
            max_concurrent_replays: 64,
        }
    }
}

impl RawConfig {
    /// Parses TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }
}

// ----- validated settings ----------------------------------------------------------

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`
    pub server: ServerSettings,
    /// `admin.listen`
    pub admin_listen: SocketAddr,
    /// `[nats]`
    pub nats: NatsSettings,
    /// `[sse]`
    pub sse: SseSettings,
    /// `[limits]`
    pub limits: LimitSettings,
    /// `[jetstream]`, when enabled (NATS bus only).
    pub jetstream: Option<JetStreamConfig>,
    /// `bus.kind`.
    pub bus: BusKind,
    /// `[[routes]]`.
    pub routes: Vec<RouteSettings>,
    /// `[cors]`.
    pub cors: Cors,
    /// `[tls]`.
    pub tls: Option<TlsSettingsConfig>,
    /// `[auth]`, when enabled.
    pub auth: Option<Arc<Authorizer>>,
    /// `log.format = "json"`.
    pub log_json: bool,
}

/// A validated `[tls]`.
#[derive(Debug, Clone)]
pub struct TlsSettingsConfig {
    /// Listener address.
    pub listen: SocketAddr,
    /// Certificate chain file.
    pub cert_file: String,
    /// Key file.
    pub key_file: String,
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    /// Path prefix.
    pub prefix: String,
    /// Upstreams.
    pub upstreams: Vec<String>,
    /// HTTP health check path.
    pub health_check: Option<String>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Read timeout.
    pub read_timeout: Duration,
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
}

/// `[nats]`, validated.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// Servers, in the order given.
    pub servers: Vec<ServerAddr>,
    /// Subject prefix.
    pub subject_prefix: String,
}

/// `[sse]`, validated.
#[derive(Debug, Clone)]
pub struct SseSettings {
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Reconnection delay.
    pub retry: Duration,
    /// Frames kept per topic for resume.
    pub replay_window: usize,
    /// Slow-consumer threshold in frames.
    pub client_buffer: usize,
    /// Encoded bytes kept per topic.
    pub replay_bytes: usize,
    /// Slow-consumer threshold in bytes.
    pub client_buffer_bytes: usize,
    /// Write timeout.
    pub write_timeout: Duration,
    /// Topics per stream.
    pub max_topics_per_connection: usize,
    /// Linger of idle topics.
    pub topic_linger: Duration,
    /// Wildcards accepted.
    pub allow_wildcards: bool,
}

/// `[limits]`, validated.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Global stream cap.
    pub max_connections: u64,
    /// Per-address stream cap.
    pub max_connections_per_ip: u64,
    /// Per-topic stream cap.
    pub max_subscribers_per_topic: u64,
    /// Byte budget of all rings.
    pub max_ring_bytes: u64,
    /// Active topics cap.
    pub max_topics: usize,
    /// Token refill per second.
    pub connect_rate_per_ip: u32,
    /// Bucket size.
    pub connect_burst_per_ip: u32,
    /// Trusted proxy networks.
    pub trusted_proxies: Vec<IpNet>,
    /// Open public-listener sockets per peer address.
    pub max_sockets_per_ip: u64,
    /// Prefix length IPv6 clients are keyed by.
    pub ipv6_prefix: u8,
    /// Largest publish body, when configured.
    pub max_publish_bytes: Option<usize>,
}

/// Largest `replay_window` / `client_buffer` accepted (frames per topic / per client).
const MAX_FRAMES: usize = 1_000_000;
/// Largest `limits.max_topics` accepted.
const MAX_TOPICS: u64 = 10_000_000;
/// Smallest byte budget accepted (per ring, per client).
const MIN_BUDGET_BYTES: usize = 1024;
/// Largest byte budget accepted (1 TiB).
const MAX_BUDGET_BYTES: u64 = 1 << 40;

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_raw(RawConfig::parse(&text, &shown)?)
    }

    /// Validates what the file said.
    pub fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        let RawConfig {
            server,
            admin,
            nats,
            sse,
            limits,
            jetstream,
            bus,
            routes,
            cors,
            tls,
            auth,
            log,
        } = raw;
        if jetstream.stream.is_empty()
            || jetstream
                .stream
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
        {
            return Err(invalid(
                "jetstream.stream",
                format!(
                    "{:?} is not a stream name (no spaces, '.', '*', '>', '/')",
                    jetstream.stream
                ),
            ));
        }
        let replicas = in_range("jetstream.replicas", jetstream.replicas, 1, 5)?;
        let max_concurrent_replays = in_range(
            "jetstream.max_concurrent_replays",
            jetstream.max_concurrent_replays,
            1,
            10_000,
        )?;
        if jetstream.enabled && bus.kind == BusKind::Memory {
            return Err(invalid(
                "jetstream.enabled",
                "JetStream needs bus.kind = \"nats\"",
            ));
        }
        let jetstream = if jetstream.enabled {
            Some(JetStreamConfig {
                stream: jetstream.stream,
                create: jetstream.create,
                max_age: jetstream.max_age,
                replicas,
                max_concurrent_replays,
            })
        } else {
            None
        };
        let server = ServerSettings {
            listen: socket_addr("server.listen", &server.listen)?,
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
        let servers = NatsBusConfig::parse_servers(&nats.url)
            .map_err(|e| invalid("nats.url", e.to_string()))?;
        TopicName::parse(&nats.subject_prefix, false).map_err(|e| {
            invalid(
                "nats.subject_prefix",
                format!("{:?} is not a subject prefix: {e}", nats.subject_prefix),
            )
        })?;
        let sse = SseSettings {
            heartbeat: positive("sse.heartbeat", sse.heartbeat)?,
            retry: sse.retry,
            replay_window: in_range("sse.replay_window", sse.replay_window, 0, MAX_FRAMES)?,
            client_buffer: in_range("sse.client_buffer", sse.client_buffer, 1, MAX_FRAMES)?,
            replay_bytes: in_range(
                "sse.replay_bytes",
                sse.replay_bytes,
                MIN_BUDGET_BYTES,
                budget_max(),
            )?,
            client_buffer_bytes: in_range(
                "sse.client_buffer_bytes",
                sse.client_buffer_bytes,
                MIN_BUDGET_BYTES,
                budget_max(),
            )?,
            write_timeout: positive("sse.write_timeout", sse.write_timeout)?,
            max_topics_per_connection: in_range(
                "sse.max_topics_per_connection",
                sse.max_topics_per_connection,
                1,
                1024,
            )?,
            topic_linger: sse.topic_linger,
            allow_wildcards: sse.allow_wildcards,
        };
        if u64::try_from(sse.retry.as_millis()).is_err() {
            return Err(invalid("sse.retry", "is too long"));
        }
        let trusted_proxies = limits
            .trusted_proxies
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        invalid(
                            "limits.trusted_proxies",
                            format!("{s:?} is not an IP network (e.g. 10.0.0.0/8) or address"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let limits = LimitSettings {
            max_connections: in_range(
                "limits.max_connections",
                limits.max_connections,
                1,
                u64::MAX,
            )?,
            max_connections_per_ip: in_range(
                "limits.max_connections_per_ip",
                limits.max_connections_per_ip,
                1,
                u64::MAX,
            )?,
            max_subscribers_per_topic: in_range(
                "limits.max_subscribers_per_topic",
                limits.max_subscribers_per_topic,
                1,
                u64::MAX,
            )?,
            max_ring_bytes: in_range(
                "limits.max_ring_bytes",
                limits.max_ring_bytes,
                sse.replay_bytes as u64,
                MAX_BUDGET_BYTES,
            )
            .map_err(|_| {
                invalid(
                    "limits.max_ring_bytes",
                    format!(
                        "{} must be at least sse.replay_bytes ({}) and at most {MAX_BUDGET_BYTES}",
                        limits.max_ring_bytes, sse.replay_bytes
                    ),
                )
            })?,
            max_topics: in_range("limits.max_topics", limits.max_topics, 1, MAX_TOPICS)
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))?,
            connect_rate_per_ip: in_range(
                "limits.connect_rate_per_ip",
                limits.connect_rate_per_ip,
                1,
                u32::MAX,
            )?,
            connect_burst_per_ip: in_range(
                "limits.connect_burst_per_ip",
                limits.connect_burst_per_ip,
                1,
                u32::MAX,
            )?,
            trusted_proxies,
            max_sockets_per_ip: in_range(
                "limits.max_sockets_per_ip",
                limits.max_sockets_per_ip,
                1,
                u64::MAX,
            )?,
            ipv6_prefix: in_range("limits.ipv6_prefix", limits.ipv6_prefix, 1, 128)?,
            max_publish_bytes: limits
                .max_publish_bytes
                .map(|n| in_range("limits.max_publish_bytes", n, 1, 64 * 1024 * 1024))
                .transpose()?,
        };
        Ok(Self {
            server,
            admin_listen,
            nats: NatsSettings {
                servers,
                subject_prefix: nats.subject_prefix,
            },
            sse,
            limits,
            jetstream,
            bus: bus.kind,
            routes: validate_routes(routes)?,
            cors: validate_cors(&cors)?,
            tls: tls
                .map(|t| -> Result<TlsSettingsConfig, ConfigError> {
                    for (key, path) in [
                        ("tls.cert_file", &t.cert_file),
                        ("tls.key_file", &t.key_file),
                    ] {
                        if std::fs::metadata(path).is_err() {
                            return Err(invalid(key, format!("cannot read {path:?}")));
                        }
                    }
                    Ok(TlsSettingsConfig {
                        listen: socket_addr("tls.listen", &t.listen)?,
                        cert_file: t.cert_file,
                        key_file: t.key_file,
                    })
                })
                .transpose()?,
            auth: validate_auth(auth)?,
            log_json: log.format == LogFormat::Json,
        })
    }
}

fn validate_auth(auth: RawAuth) -> Result<Option<Arc<Authorizer>>, ConfigError> {
    if !auth.enabled {
        return Ok(None);
    }
    let key = match (&auth.hs256_secret, &auth.public_key_file) {
        (Some(secret), None) => VerifyKey::Hs256(secret.clone().into_bytes()),
        (None, Some(path)) => {
            let pem = std::fs::read(path).map_err(|e| {
                invalid("auth.public_key_file", format!("cannot read {path:?}: {e}"))
            })?;
            VerifyKey::from_public_key_pem(&pem)
                .map_err(|e| invalid("auth.public_key_file", e.to_string()))?
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                "auth.hs256_secret",
                "set either auth.hs256_secret or auth.public_key_file, not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "auth.enabled",
                "needs auth.hs256_secret or auth.public_key_file",
            ));
        }
    };
    let config = AuthConfig {
        key,
        cookie: auth.cookie,
        public_topics: auth.public_topics,
    };
    Authorizer::new(config)
        .map(|a| Some(Arc::new(a)))
        .map_err(|e| invalid("auth", e.to_string()))
}

fn validate_cors(cors: &RawCors) -> Result<Cors, ConfigError> {
    if cors.allow_credentials && cors.allowed_origins.iter().any(|o| o == "*") {
        return Err(invalid(
            "cors.allowed_origins",
            "\"*\" cannot be combined with cors.allow_credentials = true: any site could read \
             responses with the user's cookies; list the origins that may send credentials",
        ));
    }
    for origin in &cors.allowed_origins {
        let valid = origin == "*"
            || (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.ends_with('/')
                && !origin.contains(char::is_whitespace);
        if !valid {
            return Err(invalid(
                "cors.allowed_origins",
                format!("{origin:?} is not an origin like \"https://app.example\" (or \"*\")"),
            ));
        }
    }
    Ok(Cors::new(&cors.allowed_origins, cors.allow_credentials))
}

fn validate_routes(routes: Vec<RawRoute>) -> Result<Vec<RouteSettings>, ConfigError> {
    let mut seen: Vec<String> = Vec::new();
    routes
        .into_iter()
        .map(|r| {
            let prefix = r.prefix.trim_end_matches('/').to_owned();
            if !r.prefix.starts_with('/') {
                return Err(invalid(
                    "routes.prefix",
                    format!("{:?} must start with '/'", r.prefix),
                ));
            }
            for reserved in ["/events", "/publish", "/demo"] {
                if prefix == reserved
                    || prefix.starts_with(&format!("{reserved}/"))
                    || prefix.is_empty()
                {
                    return Err(invalid(
                        "routes.prefix",
                        format!("{:?} would hide the gateway's own {reserved}", r.prefix),
                    ));
                }
            }
            if seen.contains(&prefix) {
                return Err(invalid(
                    "routes.prefix",
                    format!("{:?} is configured twice", r.prefix),
                ));
            }
            seen.push(prefix.clone());
            if r.upstreams.is_empty() {
                return Err(invalid(
                    "routes.upstreams",
                    format!("route {prefix}: at least one upstream is needed"),
                ));
            }
            for u in &r.upstreams {
                let ok = u
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !ok {
                    return Err(invalid(
                        "routes.upstreams",
                        format!("route {prefix}: {u:?} is not host:port"),
                    ));
                }
            }
            if let Some(path) = &r.health_check
                && !path.starts_with('/')
            {
                return Err(invalid(
                    "routes.health_check",
                    format!("route {prefix}: {path:?} must be a path starting with '/'"),
                ));
            }
            Ok(RouteSettings {
                prefix,
                upstreams: r.upstreams,
                health_check: r.health_check,
                connect_timeout: positive("routes.connect_timeout", r.connect_timeout)?,
                read_timeout: positive("routes.read_timeout", r.read_timeout)?,
            })
        })
        .collect()
}

/// [`MAX_BUDGET_BYTES`] as a `usize` (smaller on 32-bit targets).
fn budget_max() -> usize {
    usize::try_from(MAX_BUDGET_BYTES).unwrap_or(usize::MAX)
}

fn socket_addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("{value:?} is not an address with a port, e.g. \"0.0.0.0:8080\""),
        )
    })
}

fn positive(key: &'static str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(invalid(key, "must be longer than 0"))
    } else {
        Ok(d)
    }
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if value < min || value > max {
        Err(invalid(
            key,
            format!("{value} is out of range {min}..={max}"),
        ))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, String> {
        RawConfig::parse(text, "test.toml")
            .and_then(Config::from_raw)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_spec_defaults() {
        let c = check("").unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.server.threads, 2);
        assert_eq!(c.server.grace_period, Duration::from_secs(10));
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.nats.subject_prefix, "sse");
        assert_eq!(c.sse.heartbeat, Duration::from_secs(15));
        assert_eq!(c.sse.retry, Duration::from_secs(3));
        assert_eq!(c.sse.replay_window, 1024);
        assert_eq!(c.sse.client_buffer, 256);
        assert_eq!(c.sse.write_timeout, Duration::from_secs(10));
        assert_eq!(c.sse.max_topics_per_connection, 16);
        assert_eq!(c.sse.topic_linger, Duration::from_secs(30));
        assert!(!c.sse.allow_wildcards);
        assert_eq!(c.limits.max_connections, 100_000);
        assert_eq!(c.limits.connect_burst_per_ip, 100);
        assert_eq!(c.sse.replay_bytes, 8_388_608);
        assert_eq!(c.sse.client_buffer_bytes, 4_194_304);
        assert_eq!(c.limits.max_ring_bytes, 1_073_741_824);
        assert_eq!(c.limits.max_topics, 100_000);
    }

    #[test]
    fn byte_budgets_are_checked() {
        let c = check(
            "[sse]\nreplay_bytes = 65536\nclient_buffer_bytes = 32768\n[limits]\nmax_ring_bytes = 65536\n",
        )
        .unwrap();
        assert_eq!(
            (
                c.sse.replay_bytes,
                c.sse.client_buffer_bytes,
                c.limits.max_ring_bytes
            ),
            (65_536, 32_768, 65_536)
        );
        for (text, key) in [
            ("[sse]\nreplay_bytes = 100\n", "sse.replay_bytes"),
            (
                "[sse]\nclient_buffer_bytes = 0\n",
                "sse.client_buffer_bytes",
            ),
            (
                "[sse]\nreplay_bytes = 65536\n[limits]\nmax_ring_bytes = 65535\n",
                "limits.max_ring_bytes",
            ),
        ] {
            let e = check(text).unwrap_err();
            assert!(e.starts_with(key), "{text:?} gave {e}");
        }
        let e =
            check("[sse]\nreplay_bytes = 65536\n[limits]\nmax_ring_bytes = 1024\n").unwrap_err();
        assert!(e.contains("sse.replay_bytes"), "{e}");
    }

    #[test]
    fn the_example_configs_are_valid() {
        check(include_str!("../../../gateway.toml")).unwrap();
        let embedded = check(include_str!("../../../gateway.embedded.toml")).unwrap();
        assert_eq!(embedded.bus, BusKind::Memory);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = check("[sse]\nheartbeats = \"1s\"\n").unwrap_err();
        assert!(e.contains("heartbeats"), "{e}");
        let e = check("[nope]\n").unwrap_err();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn durations_need_a_unit_in_a_string() {
        let e = check("[sse]\nretry = 15\n").unwrap_err();
        assert!(e.contains("retry"), "{e}");
        let e = check("[sse]\nretry = \"15\"\n").unwrap_err();
        assert!(e.contains("retry"), "{e}");
        let c = check("[sse]\nretry = \"250ms\"\nheartbeat = \"1m\"\n").unwrap();
        assert_eq!(c.sse.retry, Duration::from_millis(250));
        assert_eq!(c.sse.heartbeat, Duration::from_secs(60));
    }

    #[test]
    fn invalid_values_name_their_key() {
        for (text, key) in [
            ("[server]\nlisten = \"nope\"\n", "server.listen"),
            ("[server]\nthreads = 0\n", "server.threads"),
            ("[admin]\nlisten = \"0.0.0.0:8080\"\n", "admin.listen"),
            ("[nats]\nurl = \"\"\n", "nats.url"),
            ("[nats]\nsubject_prefix = \"a..b\"\n", "nats.subject_prefix"),
            ("[sse]\nclient_buffer = 0\n", "sse.client_buffer"),
            ("[sse]\nheartbeat = \"0s\"\n", "sse.heartbeat"),
            (
                "[sse]\nmax_topics_per_connection = 0\n",
                "sse.max_topics_per_connection",
            ),
            (
                "[limits]\ntrusted_proxies = [\"x\"]\n",
                "limits.trusted_proxies",
            ),
            ("[limits]\nmax_connections = 0\n", "limits.max_connections"),
            ("[limits]\nmax_topics = 0\n", "limits.max_topics"),
            ("[jetstream]\nstream = \"a.b\"\n", "jetstream.stream"),
            ("[jetstream]\nreplicas = 0\n", "jetstream.replicas"),
            (
                "[jetstream]\nmax_concurrent_replays = 0\n",
                "jetstream.max_concurrent_replays",
            ),
        ] {
            let e = check(text).unwrap_err();
            assert!(e.starts_with(key), "{text:?} gave {e:?}");
        }
    }

    #[test]
    fn routes() {
        let c = check(
            "[[routes]]\nprefix = \"/api/orders/\"\nupstreams = [\"127.0.0.1:8081\", \"localhost:8082\"]\nhealth_check = \"/healthz\"\nread_timeout = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(c.routes[0].prefix, "/api/orders");
        assert_eq!(c.routes[0].read_timeout, Duration::from_secs(5));
        for (text, key) in [
            (
                "[[routes]]\nprefix = \"api\"\nupstreams = [\"a:1\"]\n",
                "routes.prefix",
            ),
            (
                "[[routes]]\nprefix = \"/events\"\nupstreams = [\"a:1\"]\n",
                "routes.prefix",
            ),
            (
                "[[routes]]\nprefix = \"/\"\nupstreams = [\"a:1\"]\n",
                "routes.prefix",
            ),
            (
                "[[routes]]\nprefix = \"/a\"\nupstreams = []\n",
                "routes.upstreams",
            ),
            (
                "[[routes]]\nprefix = \"/a\"\nupstreams = [\"nope\"]\n",
                "routes.upstreams",
            ),
            (
                "[[routes]]\nprefix = \"/a\"\nupstreams = [\"a:1\"]\nhealth_check = \"x\"\n",
                "routes.health_check",
            ),
        ] {
            let e = check(text).unwrap_err();
            assert!(e.starts_with(key), "{text:?} gave {e}");
        }
        let e =
            check("[[routes]]\nprefix = \"/a\"\nupstreams = [\"a:1\"]\nbogus = 1\n").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn bus_kinds() {
        assert_eq!(check("").unwrap().bus, BusKind::Nats);
        assert_eq!(
            check("[bus]\nkind = \"memory\"\n").unwrap().bus,
            BusKind::Memory
        );
        let e = check("[bus]\nkind = \"kafka\"\n").unwrap_err();
        assert!(e.contains("kafka"), "{e}");
        let e = check("[bus]\nkind = \"memory\"\n[jetstream]\nenabled = true\n").unwrap_err();
        assert!(e.starts_with("jetstream.enabled"), "{e}");
    }

    #[test]
    fn nats_url_takes_a_list() {
        let c = check("[nats]\nurl = \"nats://127.0.0.1:4222, nats://127.0.0.1:4223\"\n").unwrap();
        assert_eq!(c.nats.servers.len(), 2);
    }

    #[test]
    fn cors_any_origin_with_credentials_is_refused() {
        let e = check("[cors]\nallowed_origins = [\"*\"]\nallow_credentials = true\n").unwrap_err();
        assert!(e.starts_with("cors.allowed_origins"), "{e}");
        assert!(e.contains("cors.allow_credentials"), "{e}");
        assert!(check("[cors]\nallowed_origins = [\"*\"]\n").is_ok());
        assert!(
            check("[cors]\nallowed_origins = [\"https://a.example\"]\nallow_credentials = true\n")
                .is_ok()
        );
    }

    #[test]
    fn edge_limits_have_their_defaults_and_ranges() {
        let c = check("").unwrap();
        assert_eq!(c.server.keepalive_timeout, Duration::from_secs(60));
        assert_eq!(c.limits.max_sockets_per_ip, 1024);
        assert_eq!(c.limits.ipv6_prefix, 64);
        assert_eq!(c.limits.max_publish_bytes, None);
        let c = check("[server]\nkeepalive_timeout = \"0s\"\n[limits]\nmax_publish_bytes = 1000\n")
            .unwrap();
        assert!(c.server.keepalive_timeout.is_zero());
        assert_eq!(c.limits.max_publish_bytes, Some(1000));
        for (text, key) in [
            ("[limits]\nipv6_prefix = 0\n", "limits.ipv6_prefix"),
            ("[limits]\nipv6_prefix = 129\n", "limits.ipv6_prefix"),
            (
                "[limits]\nmax_sockets_per_ip = 0\n",
                "limits.max_sockets_per_ip",
            ),
            (
                "[limits]\nmax_publish_bytes = 0\n",
                "limits.max_publish_bytes",
            ),
        ] {
            let e = check(text).unwrap_err();
            assert!(e.starts_with(key), "{text:?} gave {e}");
        }
    }

    #[test]
    fn trusted_proxies_take_networks_and_addresses() {
        let c = check("[limits]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\", \"::1\"]\n")
            .unwrap();
        assert_eq!(c.limits.trusted_proxies.len(), 3);
    }
}
