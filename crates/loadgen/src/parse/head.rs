//! The HTTP/1.x response head.

/// A parsed HTTP response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// `Transfer-Encoding: chunked` was announced.
    pub chunked: bool,
    /// `Content-Length`, when present.
    pub content_length: Option<u64>,
    /// `Connection: close`, or HTTP/1.0 without `Connection: keep-alive`: the server
    /// reads no further request on this connection.
    pub close: bool,
    /// Length of the head in bytes, the blank line included; the body starts here.
    pub len: usize,
}

/// The bytes received are not an HTTP/1.x response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadError(pub String);

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed response head: {}", self.0)
    }
}

impl std::error::Error for HeadError {}

/// Parses a response head from the start of `buf`: `Ok(None)` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HeadError(e.to_string())),
    };
    let status = resp.code.ok_or_else(|| HeadError("no status".into()))?;
    let mut chunked = false;
    let mut content_length = None;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding decides whether the body is chunked.
            chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .map(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
                .unwrap_or(false);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            content_length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
    }
    Ok(Some(Head {
        status,
        chunked,
        content_length,
        close,
        len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_chunked_and_length() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: gzip, Chunked\r\n\r\nrest";
        let h = parse_head(raw).expect("valid").expect("complete");
        assert_eq!(h.status, 200);
        assert!(h.chunked);
        assert!(!h.close);
        assert_eq!(&raw[h.len..], b"rest");
        assert_eq!(parse_head(&raw[..20]), Ok(None));
        let h = parse_head(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 12\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(
            (h.status, h.chunked, h.content_length),
            (503, false, Some(12))
        );
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }
}
