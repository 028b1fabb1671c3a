//! Reading an HTTP/1 request head with a deadline, size limits and framing rules.
//!
//! The public listener reads every request head on every connection itself: a client
//! must send it within `server.header_timeout` of its first byte (slowloris), the request
//! line may not exceed [`MAX_REQUEST_LINE`] (414) and the whole head [`MAX_HEAD`] or
//! [`MAX_HEADERS`] headers (431). Malformed heads are 400, and so are heads whose body
//! framing two parsers could read differently (protocol §9, "Request framing"): both
//! `Content-Length` and `Transfer-Encoding`, more than one `Content-Length` value (even
//! equal ones), a `Transfer-Encoding` other than `chunked`, or one on HTTP/1.0. A head the
//! `http` crate would refuse (Pingora's own parser) is refused here, so a request handed
//! on is never answered by a library without the JSON body. Bytes read past the head stay
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
    /// How the body that follows is framed.
    pub body: BodyLength,
}

/// The body of a request, as its head frames it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No body (no framing header, or `Content-Length: 0`).
    Empty,
    /// `Content-Length: n`, n > 0.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl RequestHead {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
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

    /// Checks what Pingora's reader checks beyond this one's (target and method as the
    /// `http` crate reads them), for a request about to be handed to it: its refusal
    /// would have no JSON body. Only handed-over requests pay for it (it copies).
    pub fn check_for_proxy(&self) -> Result<(), HeadError> {
        if http::Uri::try_from(self.target.as_str()).is_err() {
            return Err(HeadError::Malformed(
                "the request target has characters a URI cannot hold".into(),
            ));
        }
        if http::Method::from_bytes(self.method.as_bytes()).is_err() {
            return Err(HeadError::Malformed("the method is not a token".into()));
        }
        Ok(())
    }

    /// Whether the request carries a body (the connection cannot simply be reused
    /// without reading it).
    pub fn has_body(&self) -> bool {
        self.body != BodyLength::Empty
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
    /// The body framing is ambiguous or unsupported (request smuggling).
    #[error("refused request framing: {0}")]
    Framing(&'static str),
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
            // Never quote the target: its query may hold a token.
            if !target.starts_with('/') {
                return Err(HeadError::Malformed(
                    "the request target is not a path (origin form)".into(),
                ));
            }
            let mut headers = Vec::with_capacity(req.headers.len());
            for h in req.headers.iter() {
                // The `http` crate's rule for a header value (checked without copying).
                if !h.value.iter().all(|&b| b >= 32 && b != 127 || b == b'\t') {
                    return Err(HeadError::Malformed(format!(
                        "header {:?} has a value with control characters",
                        h.name
                    )));
                }
                headers.push((h.name.to_ascii_lowercase(), h.value.to_vec()));
            }
            // As Pingora's own reader refuses (its answer would have no JSON body).
            let mut hosts = headers.iter().filter(|(n, _)| n == "host");
            if let (Some((_, host)), more) = (hosts.next(), hosts.next()) {
                if more.is_some() {
                    return Err(HeadError::Malformed("more than one Host header".into()));
                }
                if host.contains(&b'@') {
                    return Err(HeadError::Malformed("userinfo in the Host header".into()));
                }
            }
            let body = framing(&headers, minor_version)?;
            Ok(Some(RequestHead {
                method: method.to_owned(),
                target: target.to_owned(),
                minor_version,
                headers,
                len,
                body,
            }))
        }
    }
}

/// The body framing of a head, under the rules of protocol §9.
fn framing(headers: &[(String, Vec<u8>)], minor_version: u8) -> Result<BodyLength, HeadError> {
    let (mut length, mut lengths) = (None, 0);
    let (mut coding, mut codings) = (None, 0);
    for (name, value) in headers {
        match name.as_str() {
            "content-length" => {
                length.get_or_insert(value.as_slice());
                lengths += 1;
            }
            "transfer-encoding" => {
                coding.get_or_insert(value.as_slice());
                codings += 1;
            }
            _ => {}
        }
    }
    match (length, coding) {
        (None, None) => Ok(BodyLength::Empty),
        (Some(_), Some(_)) => Err(HeadError::Framing(
            "both Content-Length and Transfer-Encoding",
        )),
        (None, Some(_)) if codings > 1 => {
            Err(HeadError::Framing("more than one Transfer-Encoding"))
        }
        (None, Some(_)) if minor_version == 0 => Err(HeadError::Framing(
            "Transfer-Encoding on an HTTP/1.0 request",
        )),
        (None, Some(coding)) if coding.trim_ascii().eq_ignore_ascii_case(b"chunked") => {
            Ok(BodyLength::Chunked)
        }
        (None, Some(_)) => Err(HeadError::Framing("a Transfer-Encoding other than chunked")),
        (Some(_), None) if lengths > 1 => Err(HeadError::Framing("more than one Content-Length")),
        (Some(length), None) => {
            let digits = length.trim_ascii();
            if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::Framing(
                    "Content-Length is not one decimal number",
                ));
            }
            let n = digits
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            Ok(if n == 0 {
                BodyLength::Empty
            } else {
                BodyLength::Length(n)
            })
        }
    }
}

/// The size limits of an HTTP/1 head, applied to a head another reader parsed (HTTP/2):
/// request line over [`MAX_REQUEST_LINE`] is [`HeadError::UriTooLong`], more than
/// [`MAX_HEADERS`] fields or over [`MAX_HEAD`] bytes (counted as HTTP/1 would carry them)
/// is [`HeadError::TooLarge`].
pub fn check_limits(req: &pingora::http::RequestHeader) -> Result<(), HeadError> {
    let target = req.uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method.as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    if line > MAX_REQUEST_LINE {
        return Err(HeadError::UriTooLong);
    }
    if req.headers.len() > MAX_HEADERS {
        return Err(HeadError::TooLarge);
    }
    let fields: usize = req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + 2 + v.len() + 2)
        .sum();
    if line + fields + 2 > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn ambiguous_framing_is_refused() {
        for (framing, version) in [
            ("Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", "1.1"),
            ("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", "1.1"),
            ("Transfer-Encoding: xchunked\r\n", "1.1"),
            ("Transfer-Encoding: gzip, chunked\r\n", "1.1"),
            ("Transfer-Encoding: chunked, chunked\r\n", "1.1"),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "1.1",
            ),
            ("Content-Length: 3, 3\r\n", "1.1"),
            ("Content-Length: 3\r\nContent-Length: 3\r\n", "1.1"),
            ("Content-Length: 3\r\nContent-Length: 4\r\n", "1.1"),
            ("Content-Length: +3\r\n", "1.1"),
            ("Content-Length: -1\r\n", "1.1"),
            ("Content-Length: 0x3\r\n", "1.1"),
            ("Content-Length: \r\n", "1.1"),
            ("Transfer-Encoding: chunked\r\n", "1.0"),
        ] {
            let text = format!("POST /x HTTP/{version}\r\nHost: h\r\n{framing}\r\n");
            assert!(
                matches!(parse(text.as_bytes()), Err(HeadError::Framing(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn plain_framing_is_read() {
        assert_eq!(head("GET / HTTP/1.1\r\n\r\n").body, BodyLength::Empty);
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").body,
            BodyLength::Empty
        );
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length:  12 \r\n\r\n").body,
            BodyLength::Length(12)
        );
        assert_eq!(
            head("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").body,
            BodyLength::Chunked
        );
    }

    #[test]
    fn what_pingora_would_refuse_is_refused_here() {
        // Checked only for requests handed to Pingora: a target the `http` crate refuses.
        let odd = head("GET /a{b} HTTP/1.1\r\n\r\n");
        if http::Uri::try_from(odd.target.as_str()).is_err() {
            assert!(odd.check_for_proxy().is_err());
        }
        assert!(
            head("GET /a?b=c HTTP/1.1\r\n\r\n")
                .check_for_proxy()
                .is_ok()
        );
        for bad in [
            "GET /a\x7fb HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        // Messages never quote the target (its query may hold a token).
        let e = parse(b"GET http://x/?access_token=SECRET HTTP/1.1\r\n\r\n").unwrap_err();
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }

    #[test]
    fn h2_heads_get_the_same_limits() {
        let mut req = pingora::http::RequestHeader::build("GET", b"/a", None).unwrap();
        assert!(check_limits(&req).is_ok());
        req.append_header("x-big", "a".repeat(MAX_HEAD)).unwrap();
        assert!(matches!(check_limits(&req), Err(HeadError::TooLarge)));
        let mut many = pingora::http::RequestHeader::build("GET", b"/a", None).unwrap();
        for i in 0..=MAX_HEADERS {
            many.append_header(format!("x-{i}"), "1").unwrap();
        }
        assert!(matches!(check_limits(&many), Err(HeadError::TooLarge)));
        let long = format!("/{}", "a".repeat(MAX_REQUEST_LINE));
        let req = pingora::http::RequestHeader::build("GET", long.as_bytes(), None).unwrap();
        assert!(matches!(check_limits(&req), Err(HeadError::UriTooLong)));
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
