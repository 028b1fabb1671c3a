//! `gateway.toml`: read in two steps.
//!
//! [`RawConfig`] mirrors the file (serde, unknown keys rejected, durations as strings
//! with a unit); [`Config::from_raw`] validates it into typed settings and names the key
//! of every problem. Tests build a [`RawConfig`] in code or from a string.
//!
//! One file per part of the file: `server` (`[server]`, `[admin]`, `[tls]`, `[log]`),
//! `sse`, `limits`, `bus` (`[bus]`, `[nats]`, `[jetstream]`), `edge` (`[[routes]]`,
//! `[cors]`), `auth` and `tracing`. A new key is a field of its `Raw*` struct, its
//! default, its check in that file's `validate`, and a row in docs/config.md.

mod auth;
mod bus;
mod edge;
mod keys;
mod limits;
mod server;
mod sse;
mod tracing;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sse_auth::AuthConfig;
use sse_bus::JetStreamConfig;

pub use self::auth::RawAuth;
pub use self::bus::{BusKind, NatsSettings, RawBus, RawJetStream, RawNats};
pub use self::edge::{CorsSettings, RawCors, RawRoute, RouteSettings};
pub use self::keys::{Change, Keys};
pub use self::limits::{LimitSettings, RawLimits};
pub use self::server::{
    AdminSettings, DEFAULT_LOG_LEVEL, RawAdmin, RawLog, RawServer, RawTls, ServerSettings,
    TlsSettings,
};
pub use self::sse::{RawSse, SseSettings};
pub use self::tracing::{RawTracing, TracingSettings};

/// A secret from the file (a token): shown as `<redacted>` by `Debug`, compared in
/// constant time.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for whoever must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is the secret, in time independent of where they differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let secret = self.0.as_bytes();
        let mut diff = u8::from(secret.len() != candidate.len());
        for (i, &b) in secret.iter().enumerate() {
            diff |= b ^ candidate.get(i).copied().unwrap_or(!b);
        }
        diff == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

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

/// `gateway.toml` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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
    /// `[tracing]`
    pub tracing: RawTracing,
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

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`
    pub server: ServerSettings,
    /// `[admin]`
    pub admin: AdminSettings,
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
    pub cors: CorsSettings,
    /// `[tls]`.
    pub tls: Option<TlsSettings>,
    /// `[auth]`, when enabled.
    pub auth: Option<AuthConfig>,
    /// `log.format = "json"`.
    pub log_json: bool,
    /// `log.level`.
    pub log_level: String,
    /// Every key with its value as the file gave it or by default, for telling what a
    /// reload changes.
    pub keys: Keys,
    /// `[tracing]`, when an endpoint is set.
    pub tracing: Option<TracingSettings>,
}

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
        let keys = Keys::of(&raw);
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
            tracing,
        } = raw;
        let (bus, nats, jetstream) = bus::validate(bus, nats, jetstream)?;
        let (server, admin, tls) = server::validate(server, admin, tls)?;
        let sse = sse::validate(sse)?;
        let limits = limits::validate(limits, &sse)?;
        let (log_json, log_level) = server::validate_log(log)?;
        Ok(Self {
            server,
            admin,
            nats,
            sse,
            limits,
            jetstream,
            bus,
            routes: edge::validate_routes(routes)?,
            cors: edge::validate_cors(cors)?,
            tls,
            auth: auth::validate(auth)?,
            log_json,
            log_level,
            keys,
            tracing: tracing::validate(tracing)?,
        })
    }
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
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9090");
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
        check(include_str!("../../../../gateway.toml")).unwrap();
        let embedded = check(include_str!("../../../../gateway.embedded.toml")).unwrap();
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
            ("[sse]\naggregate = [\"user.1\"]\n", "sse.aggregate"),
            ("[sse]\naggregate = [\"user..*\"]\n", "sse.aggregate"),
            (
                "[sse]\naggregate = [\"user.*\", \"user.>\"]\n",
                "sse.aggregate",
            ),
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
    fn aggregate_families_are_patterns_that_do_not_overlap() {
        let c = check("[sse]\naggregate = [\"user.*\", \"doc.>\"]\n").unwrap();
        let families: Vec<&str> = c.sse.aggregate.iter().map(|f| f.as_str()).collect();
        assert_eq!(families, ["user.*", "doc.>"]);
        let e = check("[sse]\naggregate = [\"doc.>\", \"*.1\"]\n").unwrap_err();
        assert!(e.contains("overlaps doc.>"), "{e}");
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
