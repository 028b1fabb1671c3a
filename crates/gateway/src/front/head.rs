//! Reading an HTTP/1 request head with a deadline and size limits.
//!
//! The public listener reads every connection's first request head itself: a client
//! must send it within `server.header_timeout` of its first byte (slowloris), the request
//! line may not exceed [`MAX_REQUEST_LINE`] (414) and the whole head [`MAX_HEAD`] or
//! [`MAX_HEADERS`] headers (431). Malformed heads are 400. Bytes read past the head stay
//! in the buffer for whoever handles the request next.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// Longest request line (method, target, version) accepted.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Longest request head accepted.
pub const MAX_HEAD: usize = 32 * 1024;
/// Most header fields accepted.
pub const MAX_HEADERS: usize = 100;

/// A parsed request head. Header names are lower-case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Request method, as sent.
    pub method: String,
    /// Request target, as sent (origin form: path and query).
    pub target: String,
    /// Minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub minor_version: u8,
    /// Header fields in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes of the head, blank line included.
    pub len: usize,
}

impl RequestHead {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Every value of header `name` (lower-case), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The path part of the target.
    pub fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(self.target.as_str(), |(p, _)| p)
    }

    /// The query part of the target, if any.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// Whether the request carries a body (the connection cannot simply be reused
    /// without reading it).
    pub fn has_body(&self) -> bool {
        self.header("transfer-encoding").is_some()
            || self
                .header("content-length")
                .is_some_and(|v| v.iter().any(|&b| b != b'0' && !b.is_ascii_whitespace()))
    }

    /// Whether the client allows another request on this connection.
    pub fn keep_alive(&self) -> bool {
        let connection = self.header("connection").map(|v| v.to_ascii_lowercase());
        let has = |token: &[u8]| {
            connection
                .as_deref()
                .is_some_and(|c| c.split(|&b| b == b',').any(|t| t.trim_ascii() == token))
        };
        if self.minor_version == 0 {
            has(b"keep-alive")
        } else {
            !has(b"close")
        }
    }
}

/// Why no request head could be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The client closed (or sent nothing) before a request began.
    #[error("connection closed before a request")]
    Closed,
    /// The client went quiet between requests.
    #[error("idle connection")]
    Idle,
    /// The head did not arrive within the header timeout.
    #[error("the request head did not arrive within {0:?}")]
    Timeout(Duration),
    /// The request line is longer than [`MAX_REQUEST_LINE`].
    #[error("the request line is longer than {MAX_REQUEST_LINE} bytes")]
    UriTooLong,
    /// The head is longer than [`MAX_HEAD`] or has more than [`MAX_HEADERS`] fields.
    #[error("the request head is larger than {MAX_HEAD} bytes or {MAX_HEADERS} fields")]
    TooLarge,
    /// Not an HTTP/1 request head.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The socket failed.
    #[error("reading the request failed: {0}")]
    Io(#[from] io::Error),
}

/// Reads one request head into `buf` (which may already hold the start of it).
///
/// Waits up to `idle` for the first byte, then up to `header_timeout` for the rest. On
/// success the head's bytes are at the front of `buf`, followed by anything read past it.
pub async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    idle: Duration,
    header_timeout: Duration,
) -> Result<RequestHead, HeadError> {
    if buf.is_empty() {
        match tokio::time::timeout(idle, read_more(io, buf)).await {
            Err(_) => return Err(HeadError::Idle),
            Ok(Ok(0)) => return Err(HeadError::Closed),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(HeadError::Io(e)),
        }
    }
    let deadline = Instant::now() + header_timeout;
    loop {
        if let Some(head) = parse(buf)? {
            return Ok(head);
        }
        match tokio::time::timeout_at(deadline, read_more(io, buf)).await {
            Err(_) => return Err(HeadError::Timeout(header_timeout)),
            Ok(Ok(0)) => {
                return Err(HeadError::Malformed(
                    "connection closed in the middle of the request head".into(),
                ));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(HeadError::Io(e)),
        }
    }
}

async fn read_more<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 512 {
        buf.reserve(buf.len().clamp(1024, 8 * 1024));
    }
    io.read_buf(buf).await
}

/// Parses a complete head at the front of `buf`; `None` when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    // Clients may send empty lines before a request (RFC 9112 §2.2).
    let skip = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let start = &buf[skip..];
    let line_end = memchr::memchr(b'\n', start);
    if line_end.map_or(start.len(), |e| e) > MAX_REQUEST_LINE {
        return Err(HeadError::UriTooLong);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let parsed = req.parse(start).map_err(|e| match e {
        httparse::Error::TooManyHeaders => HeadError::TooLarge,
        other => HeadError::Malformed(other.to_string()),
    });
    match parsed? {
        httparse::Status::Partial => {
            if buf.len() >= MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            // A head never contains a NUL: fail fast on binary garbage.
            if memchr::memchr(0, start).is_some() {
                return Err(HeadError::Malformed("NUL byte in the request head".into()));
            }
            Ok(None)
        }
        httparse::Status::Complete(len) => {
            let len = skip + len;
            if len > MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            let (Some(method), Some(target), Some(minor_version)) =
                (req.method, req.path, req.version)
            else {
                return Err(HeadError::Malformed("incomplete request line".into()));
            };
            if !target.starts_with('/') {
                return Err(HeadError::Malformed(format!(
                    "request target {target:?} is not a path"
                )));
            }
            let headers = req
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                .collect();
            Ok(Some(RequestHead {
                method: method.to_owned(),
                target: target.to_owned(),
                minor_version,
                headers,
                len,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn head(text: &str) -> RequestHead {
        parse(text.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn parses_a_get() {
        let h = head("GET /events/a?topic=b HTTP/1.1\r\nHost: x\r\nLast-Event-ID: e-1\r\n\r\nrest");
        assert_eq!(h.method, "GET");
        assert_eq!(h.path(), "/events/a");
        assert_eq!(h.query(), Some("topic=b"));
        assert_eq!(h.minor_version, 1);
        assert_eq!(h.header("last-event-id"), Some(&b"e-1"[..]));
        assert_eq!(
            h.len,
            "GET /events/a?topic=b HTTP/1.1\r\nHost: x\r\nLast-Event-ID: e-1\r\n\r\n".len()
        );
        assert!(h.keep_alive());
        assert!(!h.has_body());
    }

    #[test]
    fn partial_heads_need_more() {
        assert!(parse(b"GET /events/a HTTP/1.1\r\nHost:").unwrap().is_none());
        assert!(parse(b"").unwrap().is_none());
        assert!(parse(b"\r\n").unwrap().is_none());
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive());
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive());
        assert!(head("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n").has_body());
        assert!(!head("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").has_body());
    }

    #[test]
    fn limits() {
        let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_REQUEST_LINE));
        assert!(matches!(
            parse(long_line.as_bytes()),
            Err(HeadError::UriTooLong)
        ));
        let no_end = format!("GET /{}", "a".repeat(MAX_REQUEST_LINE));
        assert!(matches!(
            parse(no_end.as_bytes()),
            Err(HeadError::UriTooLong)
        ));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(parse(big.as_bytes()), Err(HeadError::TooLarge)));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse(many.as_bytes()), Err(HeadError::TooLarge)));
    }

    #[test]
    fn malformed() {
        for bad in [
            "GET\r\n\r\n",
            "GET / HTTP/9.9\r\n\r\n",
            "G\0T / HTTP/1.1\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad.as_bytes()), Err(HeadError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_dribbling_client_hits_the_deadline() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for b in b"GET / HTTP/1.1\r\n" {
                if client.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client
        });
        let mut buf = BytesMut::new();
        let started = Instant::now();
        let r = read_head(
            &mut server,
            &mut buf,
            Duration::from_secs(1),
            Duration::from_millis(100),
        )
        .await;
        assert!(matches!(r, Err(HeadError::Timeout(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(writer);
    }

    proptest! {
        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn valid_heads_parse(path in "/[a-zA-Z0-9._~%/-]{0,60}", query in proptest::option::of("[a-z0-9=&%]{0,40}"),
                             headers in prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,20}", "[ -~]{0,40}"), 0..10)) {
            let target = match &query { Some(q) => format!("{path}?{q}"), None => path.clone() };
            let mut text = format!("GET {target} HTTP/1.1\r\n");
            for (n, v) in &headers {
                text.push_str(&format!("{n}: {}\r\n", v.trim()));
            }
            text.push_str("\r\n");
            let h = parse(text.as_bytes()).unwrap().unwrap();
            prop_assert_eq!(h.len, text.len());
            prop_assert_eq!(h.path(), path.as_str());
            prop_assert_eq!(h.headers.len(), headers.len());
        }
    }
}
