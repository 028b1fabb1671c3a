//! One response model, written either as raw HTTP/1.1 bytes (the front's own answers on a
//! connection it reads itself) or through a Pingora session (HTTP/2, and requests handed
//! to the proxy). Every status line, header and body the gateway writes is built here once.

use std::time::Duration;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::cors::Headers;
use super::error::ApiError;

/// What follows the head.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    /// A complete body (possibly empty), sent with its `Content-Length`.
    Full(Bytes),
    /// An event stream: no length; chunked on HTTP/1.1, close-delimited on HTTP/1.0,
    /// framed by the transport on HTTP/2.
    Stream,
}

/// How an HTTP/1 response ends its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// Another request may follow (a stream: chunked body).
    KeepAlive,
    /// The connection closes after this response (a stream: body until close).
    Close,
}

/// A response: status, headers, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Headers,
    body: Body,
    /// Answering a `HEAD` request: the head as for `GET`, no body bytes.
    head_only: bool,
}

impl Response {
    /// An empty response with `status`.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::Full(Bytes::new()),
            head_only: false,
        }
    }

    /// A complete body of `content_type`.
    pub fn with_body(mut self, content_type: &'static str, body: Bytes) -> Self {
        self.headers.push(("Content-Type", content_type.to_owned()));
        self.body = Body::Full(body);
        self
    }

    /// One more header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// More headers.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers.extend(headers);
        self
    }

    /// The answer to a `HEAD` request when `head` is true: no body bytes.
    pub fn for_head(mut self, head: bool) -> Self {
        self.head_only = head;
        self
    }

    /// An error as protocol §2 shapes it: JSON body, `Retry-After`, `Allow`, extra headers.
    pub fn error(e: &ApiError) -> Self {
        let mut r = Self::new(e.status)
            .with_body("application/json", e.body())
            .with_header("Cache-Control", "no-store");
        if let Some(secs) = e.retry_after {
            r = r.with_header("Retry-After", secs.max(1).to_string());
        }
        if let Some(allow) = e.allow {
            r = r.with_header("Allow", allow);
        }
        r.with_headers(e.headers.clone())
    }

    /// A JSON body (`202 {"id": …}` and the like), never cached.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self::json_of(status, value)
    }

    /// A JSON answer serialised straight from `value` (no intermediate JSON tree).
    pub fn json_of(status: u16, value: &impl serde::Serialize) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_else(|e| {
            format!(r#"{{"error":"internal","message":"cannot serialise the answer: {e}"}}"#)
                .into_bytes()
        });
        Self::new(status)
            .with_body("application/json", Bytes::from(body))
            .with_header("Cache-Control", "no-store")
    }

    /// The head of an event stream (protocol §2): `text/event-stream`, no caching, no proxy
    /// buffering, and the CORS headers of the request.
    pub fn event_stream(cors: Headers) -> Self {
        Self {
            status: 200,
            headers: vec![
                ("Content-Type", "text/event-stream".to_owned()),
                ("Cache-Control", "no-cache".to_owned()),
                ("X-Accel-Buffering", "no".to_owned()),
            ],
            body: Body::Stream,
            head_only: false,
        }
        .with_headers(cors)
    }

    /// Whether the status forbids a body and its length header (1xx, 204, 304).
    fn bodiless(&self) -> bool {
        self.status < 200 || self.status == 204 || self.status == 304
    }

    /// The response as HTTP/1.1 bytes, head and body.
    pub fn to_http1(&self, connection: Connection) -> Vec<u8> {
        use std::fmt::Write as _;
        let reason = http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Unknown");
        let mut head = format!("HTTP/1.1 {} {reason}\r\n", self.status);
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let mut body: &[u8] = &[];
        match (&self.body, connection) {
            (Body::Full(b), _) => {
                if !self.bodiless() {
                    let _ = write!(head, "Content-Length: {}\r\n", b.len());
                    if !self.head_only {
                        body = b;
                    }
                }
            }
            (Body::Stream, Connection::KeepAlive) => {
                head.push_str("Transfer-Encoding: chunked\r\n")
            }
            (Body::Stream, Connection::Close) => {}
        }
        head.push_str(match connection {
            Connection::KeepAlive => "Connection: keep-alive\r\n\r\n",
            Connection::Close => "Connection: close\r\n\r\n",
        });
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        out
    }

    /// Writes the whole response on a raw connection, giving up after `timeout` (a
    /// client that reads nothing cannot hold the task).
    pub async fn write_http1<S: AsyncWrite + Unpin>(
        &self,
        io: &mut S,
        connection: Connection,
        timeout: Duration,
    ) -> std::io::Result<()> {
        let bytes = self.to_http1(connection);
        let write = async {
            io.write_all(&bytes).await?;
            io.flush().await
        };
        tokio::time::timeout(timeout, write)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }

    /// The head as Pingora's type (HTTP/2, and answers through the proxy's session).
    pub fn to_pingora(&self) -> pingora::Result<ResponseHeader> {
        let mut head = ResponseHeader::build(self.status, Some(self.headers.len() + 1))?;
        for (name, value) in &self.headers {
            head.append_header(*name, value.as_str())?;
        }
        if let Body::Full(b) = &self.body
            && !self.bodiless()
        {
            head.insert_header("Content-Length", b.len().to_string())?;
        }
        Ok(head)
    }

    /// Writes the response through a Pingora session. An event stream's head only: its
    /// body follows from the caller.
    pub async fn send(&self, session: &mut Session) -> pingora::Result<()> {
        let head = self.to_pingora()?;
        match &self.body {
            Body::Full(b) if !b.is_empty() && !self.head_only && !self.bodiless() => {
                session.write_response_header(Box::new(head), false).await?;
                session.write_response_body(Some(b.clone()), true).await
            }
            Body::Full(_) => session.write_response_header(Box::new(head), true).await,
            Body::Stream => session.write_response_header(Box::new(head), false).await,
        }
    }

    /// As an `http` response (the admin listener's `ServeHttp`).
    pub fn to_http(&self) -> http::Response<Vec<u8>> {
        let mut builder = http::Response::builder().status(self.status);
        for (name, value) in &self.headers {
            builder = builder.header(*name, value.as_str());
        }
        let body = match &self.body {
            Body::Full(b) if !self.head_only => b.to_vec(),
            _ => Vec::new(),
        };
        if !self.bodiless() {
            let len = match &self.body {
                Body::Full(b) => b.len(),
                Body::Stream => 0,
            };
            builder = builder.header("Content-Length", len);
        }
        builder.body(body).unwrap_or_else(|_| {
            let mut fallback = http::Response::new(Vec::new());
            *fallback.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            fallback
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_render_status_headers_and_json() {
        let text =
            String::from_utf8(Response::error(&ApiError::draining(2)).to_http1(Connection::Close))
                .unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nRetry-After: 2\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n\r\n{\"error\":\"draining\""));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }

    #[test]
    fn method_not_allowed_names_the_allowed_methods_everywhere() {
        let r = Response::error(&ApiError::method_not_allowed("POST", "GET"));
        let text = String::from_utf8(r.to_http1(Connection::KeepAlive)).unwrap();
        assert!(text.contains("\r\nAllow: GET\r\n"), "{text}");
        assert_eq!(r.to_http().headers()["allow"], "GET");
        assert_eq!(r.to_pingora().unwrap().headers["allow"], "GET");
    }

    #[test]
    fn streams_are_chunked_or_close_delimited() {
        let r = Response::event_stream(vec![(
            "Access-Control-Allow-Origin",
            "https://a.example".into(),
        )]);
        let chunked = String::from_utf8(r.to_http1(Connection::KeepAlive)).unwrap();
        assert!(chunked.contains("Content-Type: text/event-stream\r\n"));
        assert!(chunked.contains("Cache-Control: no-cache\r\n"));
        assert!(chunked.contains("X-Accel-Buffering: no\r\n"));
        assert!(chunked.contains("Transfer-Encoding: chunked\r\n"));
        assert!(chunked.contains("Access-Control-Allow-Origin: https://a.example\r\n"));
        assert!(!chunked.contains("Content-Length"));
        let closed = String::from_utf8(r.to_http1(Connection::Close)).unwrap();
        assert!(!closed.contains("Transfer-Encoding"));
        assert!(closed.ends_with("Connection: close\r\n\r\n"));
    }

    #[test]
    fn no_content_has_no_length_and_head_has_no_body() {
        let text = String::from_utf8(Response::new(204).to_http1(Connection::KeepAlive)).unwrap();
        assert!(!text.contains("Content-Length"), "{text}");
        let head = Response::new(200)
            .with_body("text/plain", Bytes::from_static(b"hello"))
            .for_head(true);
        let text = String::from_utf8(head.to_http1(Connection::KeepAlive)).unwrap();
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }
}
