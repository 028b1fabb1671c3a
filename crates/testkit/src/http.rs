//! A minimal raw HTTP/1.1 client over `tokio::net::TcpStream`.
//!
//! One request per connection (`Connection: close`), the response head parsed with
//! `httparse`, the body read by `Content-Length`, `Transfer-Encoding: chunked` (strictly,
//! see [`crate::chunked`]) or until EOF. Every request is bounded by
//! [`DEFAULT_TIMEOUT`], so a broken server fails a test instead of hanging it.
//!
//! Also [`send_raw`] for malformed-request tests: the bytes go out exactly as given.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::chunked::ChunkedDecoder;
use crate::wait::DEFAULT_TIMEOUT;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most response header lines accepted.
const MAX_HEADERS: usize = 128;

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header lines in order (names as sent; values lossily decoded as UTF-8).
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked when it was chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body as text (invalid UTF-8 replaced by U+FFFD).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("status {} body is not JSON: {:?}", self.status, self.text()))
    }
}

/// `GET path` with the given extra headers (`Host` and `Connection: close` are added
/// unless given).
pub async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Response> {
    request(addr, "GET", path, headers, &[]).await
}

/// Any request. A non-empty `body`, or a `POST`/`PUT`/`PATCH`, gets a `Content-Length`
/// unless the caller passes one (or `Transfer-Encoding`).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Response> {
    let what = format!("{method} http://{addr}{path}");
    tokio::time::timeout(DEFAULT_TIMEOUT, exchange(addr, method, path, headers, body))
        .await
        .map_err(|_| anyhow::anyhow!("no complete response within {DEFAULT_TIMEOUT:?}"))
        .and_then(|r| r)
        .with_context(|| what)
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Response> {
    let mut stream = TcpStream::connect(addr).await.context("connect")?;
    let mut extra = vec![("Connection", "close")];
    let length = body.len().to_string();
    let wants_length = !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH");
    if wants_length && find_header_str(headers, "transfer-encoding").is_none() {
        extra.push(("Content-Length", &length));
    }
    let mut req = request_head(method, addr, path, &extra, headers);
    req.extend_from_slice(body);
    stream.write_all(&req).await.context("write request")?;

    let mut buf = Vec::new();
    let head = read_head(&mut stream, &mut buf).await?;
    let kind = BodyKind::of(method == "HEAD", &head)?;
    let body = read_body(&mut stream, buf, kind).await?;
    Ok(Response {
        status: head.status,
        headers: head.headers,
        body,
    })
}

/// Writes `bytes` exactly as given, then reads until the server closes the connection
/// or `read_timeout` passes, and returns what was read. A reset connection counts as a
/// close. Only connecting and writing are errors.
pub async fn send_raw(
    addr: SocketAddr,
    bytes: &[u8],
    read_timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    let deadline = Instant::now() + read_timeout;
    let mut stream = tokio::time::timeout(DEFAULT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("connect to {addr} timed out"))?
        .with_context(|| format!("connect to {addr}"))?;
    match tokio::time::timeout(DEFAULT_TIMEOUT, stream.write_all(bytes)).await {
        Ok(Ok(())) => {}
        // The server may close early on garbage; what it answered is still worth reading.
        Ok(Err(e)) if is_reset(&e) => {}
        Ok(Err(e)) => return Err(e).context("write raw request"),
        Err(_) => bail!("writing the raw request timed out"),
    }
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) | Ok(Ok(0)) => return Ok(out),
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) if is_reset(&e) => return Ok(out),
            Ok(Err(e)) => return Err(e).context("read raw response"),
        }
    }
}

pub(crate) fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
}

/// Renders a request head: request line, `Host` (unless given), `defaults` whose names
/// the caller did not give, then the caller's headers, then the empty line.
pub(crate) fn request_head(
    method: &str,
    addr: SocketAddr,
    path: &str,
    defaults: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\n");
    let host = addr.to_string();
    let defaults = std::iter::once(("Host", host.as_str())).chain(defaults.iter().copied());
    for (name, value) in defaults {
        if find_header_str(headers, name).is_none() {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Parses a response head at the start of `buf`: `Ok(None)` when more bytes are needed,
/// else the head and its length in bytes.
pub(crate) fn parse_head(buf: &[u8]) -> anyhow::Result<Option<(Head, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf).context("malformed response head")? {
        httparse::Status::Partial => {
            if buf.len() > MAX_HEAD {
                bail!("response head longer than {MAX_HEAD} bytes");
            }
            Ok(None)
        }
        httparse::Status::Complete(len) => {
            let status = response.code.context("response without status")?;
            let headers = response
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            Ok(Some((Head { status, headers }, len)))
        }
    }
}

/// Reads until a complete response head is in `buf`; on return `buf` holds the bytes
/// after the head (the start of the body). No timeout of its own.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> anyhow::Result<Head> {
    loop {
        if let Some((head, len)) = parse_head(buf)? {
            buf.drain(..len);
            return Ok(head);
        }
        let n = stream.read_buf(buf).await.context("read response head")?;
        if n == 0 {
            bail!(
                "connection closed before a complete response head; got {:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    Chunked,
    Length(u64),
    UntilEof,
}

impl BodyKind {
    /// RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; `Transfer-Encoding` wins over
    /// `Content-Length`; a final coding other than chunked reads until EOF.
    pub(crate) fn of(head_request: bool, head: &Head) -> anyhow::Result<BodyKind> {
        if head_request || head.status < 200 || head.status == 204 || head.status == 304 {
            return Ok(BodyKind::Length(0));
        }
        if let Some(te) = find_header(&head.headers, "transfer-encoding") {
            let last = te.rsplit(',').next().unwrap_or("").trim();
            return Ok(if last.eq_ignore_ascii_case("chunked") {
                BodyKind::Chunked
            } else {
                BodyKind::UntilEof
            });
        }
        let mut length = None;
        for (name, value) in &head.headers {
            if name.eq_ignore_ascii_case("content-length") {
                let v: u64 = value
                    .trim()
                    .parse()
                    .with_context(|| format!("bad Content-Length {value:?}"))?;
                if length.is_some_and(|l| l != v) {
                    bail!("conflicting Content-Length headers");
                }
                length = Some(v);
            }
        }
        Ok(length.map_or(BodyKind::UntilEof, BodyKind::Length))
    }
}

/// Reads a whole body; `buf` holds body bytes already read with the head.
async fn read_body(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    kind: BodyKind,
) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut chunked = ChunkedDecoder::new();
    loop {
        match kind {
            BodyKind::Chunked => {
                chunked.feed(&buf, &mut body)?;
                if chunked.is_done() {
                    return Ok(body);
                }
            }
            BodyKind::Length(len) => {
                body.extend_from_slice(&buf);
                if body.len() as u64 >= len {
                    body.truncate(usize::try_from(len)?);
                    return Ok(body);
                }
            }
            BodyKind::UntilEof => body.extend_from_slice(&buf),
        }
        buf.clear();
        let n = match stream.read_buf(&mut buf).await {
            Ok(n) => n,
            Err(e) if kind == BodyKind::UntilEof && is_reset(&e) => 0,
            Err(e) => return Err(e).context("read response body"),
        };
        if n == 0 {
            return match kind {
                BodyKind::UntilEof => Ok(body),
                BodyKind::Chunked => bail!(
                    "connection closed inside a chunked body after {} bytes",
                    body.len()
                ),
                BodyKind::Length(len) => {
                    bail!("connection closed after {} of {len} body bytes", body.len())
                }
            };
        }
    }
}

pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn find_header_str<'a>(headers: &[(&str, &'a str)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {

    use super::*;
    use tokio::net::TcpListener;

    /// A one-shot server: reads the request head, answers `response`, closes.
    async fn serve_once(response: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                if s.read_buf(&mut req).await.unwrap() == 0 {
                    break;
                }
            }
            s.write_all(response).await.unwrap();
            req
        });
        (addr, task)
    }

    #[tokio::test]
    async fn content_length_body() {
        let (addr, task) =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-A: b\r\n\r\n{\"ok\":true}")
                .await;
        let r = get(addr, "/x?y=1", &[("X-Test", "1")]).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-a"), Some("b"));
        assert_eq!(r.json().unwrap()["ok"], true);
        let req = String::from_utf8(task.await.unwrap()).unwrap();
        assert!(req.starts_with("GET /x?y=1 HTTP/1.1\r\n"), "{req}");
        assert!(req.contains(&format!("Host: {addr}\r\n")), "{req}");
        assert!(req.contains("Connection: close\r\n"), "{req}");
        assert!(req.contains("X-Test: 1\r\n"), "{req}");
    }

    #[tokio::test]
    async fn chunked_body() {
        let (addr, _task) = serve_once(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .await;
        let r = get(addr, "/", &[]).await.unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.text(), "abcde");
    }

    #[tokio::test]
    async fn body_until_eof() {
        let (addr, _task) = serve_once(b"HTTP/1.1 200 OK\r\n\r\nall of it").await;
        assert_eq!(get(addr, "/", &[]).await.unwrap().text(), "all of it");
    }

    #[tokio::test]
    async fn truncated_bodies_are_errors() {
        let (addr, _task) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab").await;
        assert!(get(addr, "/", &[]).await.is_err());
        let (addr, _task) =
            serve_once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab").await;
        assert!(get(addr, "/", &[]).await.is_err());
    }

    #[tokio::test]
    async fn raw_exchange() {
        let (addr, task) = serve_once(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        let out = send_raw(addr, b"GARBAGE\r\n\r\n", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(out, b"HTTP/1.1 400 Bad Request\r\n\r\n");
        assert_eq!(task.await.unwrap(), b"GARBAGE\r\n\r\n");
    }

    #[test]
    fn body_kinds() {
        let head = |status, headers: &[(&str, &str)]| Head {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        };
        let kind = |h: &Head| BodyKind::of(false, h).unwrap();
        assert_eq!(
            kind(&head(204, &[("Content-Length", "3")])),
            BodyKind::Length(0)
        );
        assert_eq!(
            kind(&head(
                200,
                &[
                    ("transfer-encoding", "gzip, chunked"),
                    ("Content-Length", "3")
                ]
            )),
            BodyKind::Chunked
        );
        assert_eq!(
            kind(&head(200, &[("Content-Length", "3")])),
            BodyKind::Length(3)
        );
        assert_eq!(kind(&head(200, &[])), BodyKind::UntilEof);
        assert!(BodyKind::of(false, &head(200, &[("Content-Length", "x")])).is_err());
        assert!(
            BodyKind::of(
                false,
                &head(200, &[("Content-Length", "3"), ("Content-Length", "4")])
            )
            .is_err()
        );
    }

    #[test]
    fn head_parsing() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nA: b").unwrap().is_none());
        let (head, len) = parse_head(b"HTTP/1.1 503 Busy\r\nRetry-After: 1\r\n\r\nbody")
            .unwrap()
            .unwrap();
        assert_eq!(head.status, 503);
        assert_eq!(find_header(&head.headers, "retry-after"), Some("1"));
        assert_eq!(len, b"HTTP/1.1 503 Busy\r\nRetry-After: 1\r\n\r\n".len());
        assert!(parse_head(b"NOT HTTP\r\n\r\n").is_err());
    }
}
