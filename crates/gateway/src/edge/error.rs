//! The one place where errors become HTTP answers: status, `Retry-After`, `Allow` and the
//! JSON body `{"error":"<code>","message":"<human text>"}` of protocol §2.
//!
//! Every refusal the gateway writes — from its own front, from a handler, or on behalf of
//! the proxy library (`fail_to_proxy`) — is an [`ApiError`] built here and rendered by
//! [`super::Response::error`]. Messages never quote a request target or header value
//! verbatim: a query may hold a token (protocol §9, "Secrets").

use bytes::Bytes;
use pingora::{ErrorSource, ErrorType};

use crate::front::head::{HeadError, MAX_HEAD, MAX_HEADERS, MAX_REQUEST_LINE};
use crate::metrics::Rejection;
use crate::request::RequestError;

/// An error answer to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable code.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// Seconds for `Retry-After` (whole, at least 1).
    pub retry_after: Option<u64>,
    /// Methods for `Allow` (405).
    pub allow: Option<&'static str>,
    /// More headers (CORS).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            allow: None,
            headers: Vec::new(),
        }
    }

    /// The same error with more headers.
    pub fn with_headers(mut self, headers: Vec<(&'static str, String)>) -> Self {
        self.headers.extend(headers);
        self
    }

    /// 404: nothing is served at `path`.
    pub fn not_found(path: &str) -> Self {
        Self::new(404, "not_found", format!("no route for {path}"))
    }

    /// 405: only `allow` is served here.
    pub fn method_not_allowed(method: &str, allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(
                405,
                "method_not_allowed",
                format!("{method} is not allowed here; use {allow}"),
            )
        }
    }

    /// 429: the client's token bucket is empty.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(
                429,
                "rate_limited",
                format!("too many requests from this client; retry in {retry_after_secs} s"),
            )
        }
    }

    /// 503: a connection cap is reached.
    pub fn over_capacity(message: String, retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(503, "over_capacity", message)
        }
    }

    /// 400 with a specific code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    /// 400 `bad_path`: a path no route may see (dot segments, encoded separators, NUL).
    pub fn bad_path(message: impl Into<String>) -> Self {
        Self::new(400, "bad_path", message)
    }

    /// 413: the body is larger than `max` bytes.
    pub fn payload_too_large(max: usize) -> Self {
        Self::new(
            413,
            "payload_too_large",
            format!("the body is larger than {max} bytes"),
        )
    }

    /// 503: a dependency is unavailable.
    pub fn unavailable(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(503, "unavailable", message)
        }
    }

    /// 403 `revoked`: an operator closed this user's (or address's) streams and refuses
    /// new ones for `remaining` more.
    pub fn revoked(remaining: std::time::Duration) -> Self {
        let secs = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
        Self::new(
            403,
            "revoked",
            format!("streams are refused for this client for another {secs} s"),
        )
    }

    /// 502: the upstream failed.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(502, "bad_gateway", message)
    }

    /// 504: a dependency did not answer in time.
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(504, "gateway_timeout", message)
    }

    /// 500: something failed inside the gateway.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal_error", message)
    }

    /// 401 (no or invalid token) or 403 (the token does not cover a topic).
    pub fn denied(denied: &sse_auth::Denied) -> Self {
        match denied {
            sse_auth::Denied::Forbidden(message) => Self::new(403, "forbidden", message.clone()),
            other => Self::new(401, "unauthorized", other.message().to_owned()),
        }
    }

    /// 401 with `message` (the operator API's own credentials).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, "unauthorized", message)
    }

    /// 404: no `what` of that name (the operator API).
    pub fn not_found_named(what: &str, name: &str) -> Self {
        Self::new(404, "not_found", format!("no active {what} {name:?}"))
    }

    /// 403: a request made by another site with the browser's cookie.
    pub fn cross_site() -> Self {
        Self::new(
            403,
            "forbidden",
            "a cross-site request may not use the auth cookie; send the token in the Authorization header",
        )
    }

    /// 503: the gateway is shutting down.
    pub fn draining(retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(
                503,
                "draining",
                "the gateway is shutting down; reconnect elsewhere",
            )
        }
    }

    /// A request head that could not be read (400/408/414/431), and how it is counted.
    pub fn from_head(e: &HeadError) -> (Rejection, Self) {
        match e {
            HeadError::Timeout(_) => (
                Rejection::HeaderTimeout,
                Self::new(
                    408,
                    "request_timeout",
                    "the request head did not arrive in time",
                ),
            ),
            HeadError::UriTooLong => (
                Rejection::UriTooLong,
                Self::new(
                    414,
                    "uri_too_long",
                    format!("the request line is longer than {MAX_REQUEST_LINE} bytes"),
                ),
            ),
            HeadError::TooLarge => (
                Rejection::HeaderTooLarge,
                Self::new(
                    431,
                    "headers_too_large",
                    format!(
                        "the request head is larger than {MAX_HEAD} bytes or has more than {MAX_HEADERS} fields"
                    ),
                ),
            ),
            other => (
                Rejection::MalformedRequest,
                Self::new(400, "bad_request", other.to_string()),
            ),
        }
    }

    /// The answer for a proxy-library error (`fail_to_proxy`), or `None` when the client's
    /// connection is already gone and nothing can be written.
    pub fn from_proxy(e: &pingora::Error, path: &str) -> Option<Self> {
        let error = match e.etype() {
            ErrorType::HTTPStatus(404) => Self::not_found(path),
            ErrorType::HTTPStatus(code) => {
                let code = *code;
                let reason = http::StatusCode::from_u16(code)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("error");
                Self::new(code, "error", reason.to_ascii_lowercase())
            }
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() != &ErrorSource::Downstream =>
            {
                Self::gateway_timeout(format!(
                    "the upstream did not answer in time ({})",
                    e.etype().as_str()
                ))
            }
            ErrorType::ConnectNoRoute => {
                Self::bad_gateway("no healthy upstream for this route".to_owned())
            }
            _ => match e.esource() {
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError
                    | ErrorType::ReadError
                    | ErrorType::ConnectionClosed
                    | ErrorType::WriteTimedout => return None,
                    ErrorType::ReadTimedout => Self::new(
                        408,
                        "request_timeout",
                        "the request body did not arrive in time",
                    ),
                    other => Self::bad_request(
                        "bad_request",
                        format!("the request could not be read ({})", other.as_str()),
                    ),
                },
                ErrorSource::Upstream => {
                    Self::bad_gateway(format!("the upstream failed: {}", e.etype().as_str()))
                }
                ErrorSource::Internal | ErrorSource::Unset => {
                    Self::internal(format!("the request failed: {}", e.etype().as_str()))
                }
            },
        };
        Some(error)
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        let body = serde_json::json!({ "error": self.code, "message": self.message });
        Bytes::from(body.to_string())
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        Self::new(400, e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_the_spec_json() {
        let e = ApiError::from(RequestError::NoTopic);
        assert_eq!(e.status, 400);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"], "missing_topic");
        assert!(v["message"].as_str().unwrap().contains("topic"));
        assert_eq!(ApiError::draining(0).retry_after, Some(1));
        assert_eq!(ApiError::not_found("/x").status, 404);
    }

    #[test]
    fn head_errors_map_to_their_status() {
        use std::time::Duration;
        for (e, status) in [
            (HeadError::Timeout(Duration::from_secs(1)), 408),
            (HeadError::UriTooLong, 414),
            (HeadError::TooLarge, 431),
            (HeadError::Malformed("x".into()), 400),
            (HeadError::Framing("x"), 400),
        ] {
            assert_eq!(ApiError::from_head(&e).1.status, status, "{e:?}");
        }
    }

    #[test]
    fn proxy_errors_are_json_or_nothing() {
        let mut upstream = pingora::Error::explain(ErrorType::ReadTimedout, "x");
        upstream.as_up();
        assert_eq!(ApiError::from_proxy(&upstream, "/a").unwrap().status, 504);
        let mut gone = pingora::Error::explain(ErrorType::WriteError, "x");
        gone.as_down();
        assert!(ApiError::from_proxy(&gone, "/a").is_none());
        let mut bad = pingora::Error::explain(ErrorType::InvalidHTTPHeader, "x");
        bad.as_down();
        assert_eq!(ApiError::from_proxy(&bad, "/a").unwrap().status, 400);
        let status = pingora::Error::explain(ErrorType::HTTPStatus(405), "x");
        let e = ApiError::from_proxy(&status, "/a").unwrap();
        assert_eq!((e.status, e.code), (405, "error"));
    }
}
