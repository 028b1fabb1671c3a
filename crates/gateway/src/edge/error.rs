//! The one place where errors become HTTP responses: status, `Retry-After` and the
//! JSON body `{"error":"<code>","message":"<human text>"}` of SPEC §2.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

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

    /// 413: the body is too large.
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

    /// 502: the upstream failed.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(502, "bad_gateway", message)
    }

    /// 504: a dependency did not answer in time.
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(504, "gateway_timeout", message)
    }

    /// 408: the request head did not arrive in time.
    pub fn request_timeout() -> Self {
        Self::new(
            408,
            "request_timeout",
            "the request head did not arrive in time",
        )
    }

    /// 414: the request line is too long.
    pub fn uri_too_long(max: usize) -> Self {
        Self::new(
            414,
            "uri_too_long",
            format!("the request line is longer than {max} bytes"),
        )
    }

    /// 431: the request head is too large.
    pub fn headers_too_large(message: String) -> Self {
        Self::new(431, "headers_too_large", message)
    }

    /// 400: not an HTTP/1 request.
    pub fn malformed(message: String) -> Self {
        Self::new(400, "bad_request", message)
    }

    /// 401 (no or invalid token) or 403 (the token does not cover a topic).
    pub fn denied(denied: &sse_auth::Denied) -> Self {
        match denied {
            sse_auth::Denied::Forbidden(message) => Self::new(403, "forbidden", message.clone()),
            other => Self::new(401, "unauthorized", other.message().to_owned()),
        }
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

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        let body = serde_json::json!({ "error": self.code, "message": self.message });
        Bytes::from(body.to_string())
    }

    /// Writes the whole response.
    pub async fn send(&self, session: &mut Session) -> pingora::Result<()> {
        let body = self.body();
        let mut head = ResponseHeader::build(self.status, Some(5))?;
        head.insert_header("Content-Type", "application/json")?;
        head.insert_header("Content-Length", body.len().to_string())?;
        head.insert_header("Cache-Control", "no-store")?;
        if let Some(secs) = self.retry_after {
            head.insert_header("Retry-After", secs.max(1).to_string())?;
        }
        if let Some(allow) = self.allow {
            head.insert_header("Allow", allow)?;
        }
        for (name, value) in &self.headers {
            head.insert_header(*name, value.as_str())?;
        }
        session.write_response_header(Box::new(head), false).await?;
        session.write_response_body(Some(body), true).await
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        Self::new(400, e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
}
