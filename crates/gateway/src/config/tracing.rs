//! `[tracing]`: OpenTelemetry traces over OTLP/HTTP (off unless `otlp_endpoint` is set).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, in_range, invalid, positive};

/// Where spans are posted under the endpoint (OTLP/HTTP).
pub const TRACES_PATH: &str = "/v1/traces";

/// `[tracing]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTracing {
    /// Base URL of an OTLP/HTTP receiver (`http://collector:4318`); unset: tracing off.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces (no sampled `traceparent` to follow) that are recorded.
    pub sampling_ratio: f64,
    /// How long one export (a POST of a batch) may take.
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
    /// Finished spans waiting for export; more are dropped.
    pub max_queued_spans: usize,
}

impl Default for RawTracing {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "sse-gateway".to_owned(),
            sampling_ratio: 1.0,
            export_timeout: Duration::from_secs(10),
            max_queued_spans: 4096,
        }
    }
}

/// `[tracing]`, validated; present only when tracing is on.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// Where spans are POSTed: the endpoint with [`TRACES_PATH`].
    pub traces_url: String,
    /// `service.name`.
    pub service_name: String,
    /// 0.0..=1.0.
    pub sampling_ratio: f64,
    /// Per export.
    pub export_timeout: Duration,
    /// Queue bound.
    pub max_queued_spans: usize,
}

/// `[tracing]`, validated: `None` without an endpoint.
pub(super) fn validate(raw: RawTracing) -> Result<Option<TracingSettings>, ConfigError> {
    let sampling_ratio = if raw.sampling_ratio.is_nan() {
        return Err(invalid("tracing.sampling_ratio", "must be a number"));
    } else {
        in_range("tracing.sampling_ratio", raw.sampling_ratio, 0.0, 1.0)?
    };
    let export_timeout = positive("tracing.export_timeout", raw.export_timeout)?;
    let max_queued_spans = in_range(
        "tracing.max_queued_spans",
        raw.max_queued_spans,
        1,
        1_000_000,
    )?;
    let service_name = raw.service_name.trim().to_owned();
    if service_name.is_empty() {
        return Err(invalid("tracing.service_name", "cannot be empty"));
    }
    let Some(endpoint) = raw.otlp_endpoint else {
        return Ok(None);
    };
    Ok(Some(TracingSettings {
        traces_url: traces_url(&endpoint)?,
        service_name,
        sampling_ratio,
        export_timeout,
        max_queued_spans,
    }))
}

/// The URL spans are posted to: `endpoint` (an `http://` or `https://` base URL,
/// e.g. a collector's port 4318) with [`TRACES_PATH`] appended.
fn traces_url(endpoint: &str) -> Result<String, ConfigError> {
    const KEY: &str = "tracing.otlp_endpoint";
    let base = endpoint.trim().trim_end_matches('/');
    let uri: http::Uri = base.parse().map_err(|_| {
        invalid(
            KEY,
            format!("{endpoint:?} is not a URL like \"http://127.0.0.1:4318\""),
        )
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(invalid(
            KEY,
            format!("{endpoint:?} is not an http:// or https:// URL with a host"),
        ));
    }
    if uri.query().is_some() {
        return Err(invalid(KEY, "the endpoint cannot have a query"));
    }
    if base.ends_with(TRACES_PATH) {
        return Err(invalid(
            KEY,
            format!("give the base URL: {TRACES_PATH} is appended (OTLP/HTTP)"),
        ));
    }
    Ok(format!("{base}{TRACES_PATH}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(endpoint: &str) -> RawTracing {
        RawTracing {
            otlp_endpoint: Some(endpoint.to_owned()),
            ..RawTracing::default()
        }
    }

    #[test]
    fn off_without_an_endpoint_and_defaults_otherwise() {
        assert_eq!(validate(RawTracing::default()).unwrap(), None);
        let on = validate(raw("http://127.0.0.1:4318")).unwrap().unwrap();
        assert_eq!(on.traces_url, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(on.service_name, "sse-gateway");
        assert_eq!(on.sampling_ratio, 1.0);
        assert_eq!(on.export_timeout, Duration::from_secs(10));
        assert_eq!(on.max_queued_spans, 4096);
        let path = validate(raw("https://otel.example/prefix/"))
            .unwrap()
            .unwrap();
        assert_eq!(path.traces_url, "https://otel.example/prefix/v1/traces");
    }

    #[test]
    fn each_problem_names_its_key() {
        for (tracing, key) in [
            (raw("127.0.0.1:4318"), "tracing.otlp_endpoint"),
            (raw("grpc://collector:4317"), "tracing.otlp_endpoint"),
            (raw("http://"), "tracing.otlp_endpoint"),
            (raw("http://c:4318/v1/traces"), "tracing.otlp_endpoint"),
            (raw("http://c:4318/?x=1"), "tracing.otlp_endpoint"),
            (
                RawTracing {
                    sampling_ratio: 1.5,
                    ..raw("http://c:4318")
                },
                "tracing.sampling_ratio",
            ),
            (
                RawTracing {
                    sampling_ratio: -0.1,
                    ..RawTracing::default()
                },
                "tracing.sampling_ratio",
            ),
            (
                RawTracing {
                    export_timeout: Duration::ZERO,
                    ..raw("http://c:4318")
                },
                "tracing.export_timeout",
            ),
            (
                RawTracing {
                    max_queued_spans: 0,
                    ..raw("http://c:4318")
                },
                "tracing.max_queued_spans",
            ),
            (
                RawTracing {
                    service_name: " ".into(),
                    ..raw("http://c:4318")
                },
                "tracing.service_name",
            ),
        ] {
            match validate(tracing) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key),
                other => panic!("{key}: {other:?}"),
            }
        }
    }
}
