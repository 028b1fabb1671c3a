//! `[[routes]]` and `[cors]`: what the HTTP edge serves and to which browsers.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, positive};

/// `[cors]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCors {
    /// Origins allowed to use `/events` and `/publish` from a browser (`"*"`: any).
    pub allowed_origins: Vec<String>,
    /// Allow credentials (cookies) on cross-origin requests.
    pub allow_credentials: bool,
}

/// `[[routes]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
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

/// `[cors]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsSettings {
    /// Origins allowed (`"*"`: any).
    pub allowed_origins: Vec<String>,
    /// Credentials (cookies) allowed, to the origins listed by name.
    pub allow_credentials: bool,
}

/// `[cors]`, validated: origins well formed, no credentials for `"*"`.
pub(super) fn validate_cors(cors: RawCors) -> Result<CorsSettings, ConfigError> {
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
    Ok(CorsSettings {
        allowed_origins: cors.allowed_origins,
        allow_credentials: cors.allow_credentials,
    })
}

/// `[[routes]]`, validated: prefixes distinct and clear of the gateway's own paths.
pub(super) fn validate_routes(routes: Vec<RawRoute>) -> Result<Vec<RouteSettings>, ConfigError> {
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
            for reserved in [
                "/events",
                "/publish",
                "/demo",
                "/tickets",
                "/streams",
                "/client.js",
            ] {
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
