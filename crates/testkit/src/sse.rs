//! [`SseStream`]: a raw-TCP Server-Sent Events client that shows everything on the wire.
//!
//! It sends `GET <path> HTTP/1.1` with `Host`, `Accept: text/event-stream` and the
//! caller's headers, parses the response head, de-chunks the body itself (strictly:
//! malformed chunk framing is an error) and feeds the payload into
//! [`sse_framing::Decoder`]. A non-200 answer is not an error: look at
//! [`SseStream::status`] and read the body with [`SseStream::body_text`].
//!
//! ## End of stream
//!
//! [`SseStream::next_item`] returns `None` once the body is over; [`SseStream::end`]
//! then says how it ended: the terminating zero chunk ([`StreamEnd::Terminated`]), EOF
//! where no partial chunk was pending ([`StreamEnd::Eof`]), EOF inside a chunk or before
//! `Content-Length` bytes ([`StreamEnd::Truncated`]) or a reset connection
//! ([`StreamEnd::Reset`]). Tests of a graceful drain assert `Terminated`; tests of a cut
//! slow consumer accept any of them.
//!
//! Dropping the stream closes the connection.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use sse_framing::{Decoder, Event, Item};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::chunked::ChunkedDecoder;
use crate::http::{BodyKind, Head, find_header, is_reset, read_head, request_head};
use crate::wait::DEFAULT_TIMEOUT;

/// How the response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Chunked body ended by its zero-size chunk, or `Content-Length` bytes all read.
    Terminated,
    /// The server closed the connection between chunks (or, without chunking, at all).
    Eof,
    /// The server closed the connection inside a chunk or before `Content-Length` bytes.
    Truncated,
    /// The connection was reset.
    Reset,
}

/// Options for opening an [`SseStream`]; start with [`SseStream::builder`].
#[derive(Debug, Clone)]
pub struct SseStreamBuilder {
    addr: SocketAddr,
    path: String,
    headers: Vec<(String, String)>,
    recv_buffer: Option<u32>,
    timeout: Duration,
}

impl SseStreamBuilder {
    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets `SO_RCVBUF` before connecting — with a few KiB and a test that stops reading,
    /// the server's writes back up quickly ("client that stops reading" tests). The
    /// kernel may round the size up.
    pub fn recv_buffer_size(mut self, bytes: u32) -> Self {
        self.recv_buffer = Some(bytes);
        self
    }

    /// Bound for connecting, sending the request and receiving the response head, and
    /// for [`SseStream::body_text`]. Default [`DEFAULT_TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connects, sends the request and reads the response head.
    pub async fn open(self) -> anyhow::Result<SseStream> {
        let what = format!("SSE GET http://{}{}", self.addr, self.path);
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.open_inner())
            .await
            .map_err(|_| anyhow::anyhow!("no response head within {timeout:?}"))
            .and_then(|r| r)
            .with_context(|| what)
    }

    async fn open_inner(self) -> anyhow::Result<SseStream> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .context("create socket")?;
        if let Some(size) = self.recv_buffer {
            socket
                .set_recv_buffer_size(size)
                .context("set receive buffer size")?;
        }
        let mut stream = socket.connect(self.addr).await.context("connect")?;
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let request = request_head(
            "GET",
            self.addr,
            &self.path,
            &[("Accept", "text/event-stream")],
            &headers,
        );
        stream.write_all(&request).await.context("write request")?;
        let mut leftover = Vec::new();
        let head = read_head(&mut stream, &mut leftover).await?;
        let kind = BodyKind::of(false, &head)?;
        let mut sse = SseStream {
            stream,
            head,
            kind,
            chunks: ChunkedDecoder::new(),
            read_buf: Vec::with_capacity(16 * 1024),
            raw_body: Vec::new(),
            fed: 0,
            decoder: Decoder::new(),
            items: VecDeque::new(),
            end: None,
            decoder_finished: false,
            timeout: self.timeout,
        };
        sse.absorb(&leftover)?;
        Ok(sse)
    }
}

/// A raw-TCP SSE client connection. See the [module docs](self).
#[derive(Debug)]
pub struct SseStream {
    stream: TcpStream,
    head: Head,
    kind: BodyKind,
    chunks: ChunkedDecoder,
    /// Socket bytes not yet de-chunked (only used inside `read_more`).
    read_buf: Vec<u8>,
    /// De-chunked body bytes so far.
    raw_body: Vec<u8>,
    /// How much of `raw_body` went into the SSE decoder.
    fed: usize,
    decoder: Decoder,
    items: VecDeque<Item>,
    end: Option<StreamEnd>,
    decoder_finished: bool,
    timeout: Duration,
}

impl SseStream {
    /// Opens `GET path` with the given extra headers and reads the response head.
    pub async fn open(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<SseStream> {
        headers
            .iter()
            .fold(Self::builder(addr, path), |b, (n, v)| b.header(n, v))
            .open()
            .await
    }

    /// A builder for extra options (receive buffer size, timeout).
    pub fn builder(addr: SocketAddr, path: &str) -> SseStreamBuilder {
        SseStreamBuilder {
            addr,
            path: path.to_owned(),
            headers: Vec::new(),
            recv_buffer: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The response status.
    pub fn status(&self) -> u16 {
        self.head.status
    }

    /// The response header lines in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.head.headers
    }

    /// The first response header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.head.headers, name)
    }

    /// True when the body is `Transfer-Encoding: chunked`.
    pub fn chunked(&self) -> bool {
        self.kind == BodyKind::Chunked
    }

    /// All de-chunked body bytes received so far.
    pub fn raw_body(&self) -> &[u8] {
        &self.raw_body
    }

    /// How the body ended, once it has.
    pub fn end(&self) -> Option<StreamEnd> {
        self.end
    }

    /// The SSE decoder's last event id (what `EventSource.lastEventId` would show).
    pub fn last_event_id(&self) -> &str {
        self.decoder.last_event_id()
    }

    /// The local address of the connection.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.stream.local_addr()?)
    }

    /// Reads the rest of the body (for non-streaming answers such as a 4xx with a JSON
    /// body) and returns the whole body as text. Bounded by the builder's timeout.
    pub async fn body_text(&mut self) -> anyhow::Result<String> {
        let timeout = self.timeout;
        let deadline = Instant::now() + timeout;
        while self.end.is_none() {
            match tokio::time::timeout_at(deadline, self.read_more()).await {
                Ok(r) => r?,
                Err(_) => bail!(
                    "body not complete within {timeout:?}; got {:?}",
                    String::from_utf8_lossy(&self.raw_body)
                ),
            }
        }
        Ok(String::from_utf8_lossy(&self.raw_body).into_owned())
    }

    /// The next SSE item (event, `retry`, comment), or `None` at the end of the stream.
    /// Errors on timeout, broken chunk framing or an undecodable stream.
    pub async fn next_item(&mut self, timeout: Duration) -> anyhow::Result<Option<Item>> {
        match self.item_before(Instant::now() + timeout).await? {
            Some(item) => Ok(item),
            None => bail!(
                "no SSE item within {timeout:?}{}",
                self.context_for_errors()
            ),
        }
    }

    /// The next event, skipping comments and `retry` lines. Errors on timeout and at the
    /// end of the stream.
    pub async fn next_event(&mut self, timeout: Duration) -> anyhow::Result<Event> {
        let mut events = self.events(1, timeout).await?;
        events.pop().context("events(1) returned no event")
    }

    /// The next `n` events (skipping comments and `retry` lines) within `timeout` in all.
    pub async fn events(&mut self, n: usize, timeout: Duration) -> anyhow::Result<Vec<Event>> {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::with_capacity(n);
        let mut skipped = 0usize;
        while events.len() < n {
            let waiting = |events: &[Event]| {
                format!(
                    "waiting for event {} of {n} (got {events:?}, skipped {skipped} non-event items)",
                    events.len() + 1,
                )
            };
            match self.item_before(deadline).await {
                Err(e) => return Err(e.context(waiting(&events))),
                Ok(None) => bail!(
                    "timed out after {timeout:?} {}{}",
                    waiting(&events),
                    self.context_for_errors()
                ),
                Ok(Some(None)) => bail!(
                    "stream ended ({:?}) {}{}",
                    self.end,
                    waiting(&events),
                    self.context_for_errors()
                ),
                Ok(Some(Some(Item::Event(e)))) => events.push(e),
                Ok(Some(Some(_))) => skipped += 1,
            }
        }
        Ok(events)
    }

    /// Reads until the server ends the stream and returns the items seen on the way.
    /// Errors if it is still open after `timeout`.
    pub async fn wait_closed(&mut self, timeout: Duration) -> anyhow::Result<Vec<Item>> {
        let deadline = Instant::now() + timeout;
        let mut items = Vec::new();
        loop {
            match self.item_before(deadline).await? {
                Some(Some(item)) => items.push(item),
                Some(None) => return Ok(items),
                None => bail!(
                    "stream still open after {timeout:?} ({} items seen: {items:?}){}",
                    items.len(),
                    self.context_for_errors()
                ),
            }
        }
    }

    /// `Ok(None)` on timeout, `Ok(Some(None))` at the end of the stream.
    async fn item_before(&mut self, deadline: Instant) -> anyhow::Result<Option<Option<Item>>> {
        loop {
            if self.fed < self.raw_body.len() {
                let mut out = Vec::new();
                self.decoder
                    .feed(&self.raw_body[self.fed..], &mut out)
                    .context("undecodable SSE stream")?;
                self.fed = self.raw_body.len();
                self.items.extend(out);
            }
            if let Some(item) = self.items.pop_front() {
                return Ok(Some(Some(item)));
            }
            if self.end.is_some() {
                if self.decoder_finished {
                    return Ok(Some(None));
                }
                let mut out = Vec::new();
                self.decoder.finish(&mut out);
                self.decoder_finished = true;
                self.items.extend(out);
                continue;
            }
            match tokio::time::timeout_at(deadline, self.read_more()).await {
                Ok(r) => r?,
                Err(_) => return Ok(None),
            }
        }
    }

    /// One socket read (cancel-safe); de-chunks what arrived, or records the end.
    async fn read_more(&mut self) -> anyhow::Result<()> {
        self.read_buf.clear();
        let n = match self.stream.read_buf(&mut self.read_buf).await {
            Ok(n) => n,
            Err(e) if is_reset(&e) => {
                self.end = Some(StreamEnd::Reset);
                return Ok(());
            }
            Err(e) => return Err(e).context("read SSE body"),
        };
        if n == 0 {
            self.end = Some(match self.kind {
                BodyKind::Chunked if self.chunks.at_chunk_boundary() => StreamEnd::Eof,
                BodyKind::UntilEof => StreamEnd::Eof,
                _ => StreamEnd::Truncated,
            });
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.read_buf);
        let result = self.absorb(&bytes);
        self.read_buf = bytes;
        result
    }

    /// De-chunks body bytes into `raw_body`; sets `end` when the body is complete.
    fn absorb(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        if self.end.is_some() {
            return Ok(());
        }
        match self.kind {
            BodyKind::Chunked => {
                self.chunks.feed(bytes, &mut self.raw_body)?;
                if self.chunks.is_done() {
                    self.end = Some(StreamEnd::Terminated);
                }
            }
            BodyKind::Length(len) => {
                let missing = len.saturating_sub(self.raw_body.len() as u64);
                let take = usize::try_from(missing).map_or(bytes.len(), |m| m.min(bytes.len()));
                self.raw_body.extend_from_slice(&bytes[..take]);
                if self.raw_body.len() as u64 >= len {
                    self.end = Some(StreamEnd::Terminated);
                }
            }
            BodyKind::UntilEof => self.raw_body.extend_from_slice(bytes),
        }
        Ok(())
    }

    /// "; status …, N body bytes, tail: …" for error messages.
    fn context_for_errors(&self) -> String {
        let tail_start = self.raw_body.len().saturating_sub(300);
        format!(
            "; status {}, {} body bytes, body tail: {:?}",
            self.head.status,
            self.raw_body.len(),
            String::from_utf8_lossy(&self.raw_body[tail_start..])
        )
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    /// Serves one connection: reads the request head, sends it back through `req_tx`,
    /// then writes each part (flushing between them) and waits for `close` before closing.
    async fn server(
        parts: Vec<&'static [u8]>,
    ) -> (SocketAddr, oneshot::Receiver<String>, oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (req_tx, req_rx) = oneshot::channel();
        let (close_tx, close_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                if s.read_buf(&mut req).await.unwrap() == 0 {
                    return;
                }
            }
            req_tx.send(String::from_utf8(req).unwrap()).unwrap();
            for part in parts {
                s.write_all(part).await.unwrap();
                s.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            let _ = close_rx.await;
        });
        (addr, req_rx, close_tx)
    }

    const HEAD: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn chunked_stream_with_split_frames() {
        let (addr, req, close) = server(vec![
            HEAD,
            b"16\r\nretry: 3000\n: welcome\n\r\n",
            b"d\r\nid: 1\ndata: a\r\n",
            b"2\r\n\n\n\r\n",
            b"11\r\nevent: x\ndata: b\n\r\n1\r\n\n\r\n0\r\n\r\n",
        ])
        .await;
        let mut s = SseStream::open(addr, "/events/t", &[("Last-Event-ID", "0")])
            .await
            .unwrap();
        let req = req.await.unwrap();
        assert!(req.starts_with("GET /events/t HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Accept: text/event-stream\r\n"), "{req}");
        assert!(req.contains("Last-Event-ID: 0\r\n"), "{req}");
        assert_eq!(s.status(), 200);
        assert!(s.chunked());
        assert_eq!(s.header("content-type"), Some("text/event-stream"));

        assert_eq!(s.next_item(T).await.unwrap(), Some(Item::Retry(3000)));
        let e = s.next_event(T).await.unwrap();
        assert_eq!((e.id.as_deref(), e.data.as_str()), (Some("1"), "a"));
        let e = s.next_event(T).await.unwrap();
        assert_eq!((e.event.as_deref(), e.data.as_str()), (Some("x"), "b"));
        assert_eq!(s.next_item(T).await.unwrap(), None);
        assert_eq!(s.end(), Some(StreamEnd::Terminated));
        assert_eq!(
            s.raw_body(),
            b"retry: 3000\n: welcome\nid: 1\ndata: a\n\nevent: x\ndata: b\n\n"
        );
        assert_eq!(s.last_event_id(), "1");
        drop(close);
    }

    #[tokio::test]
    async fn events_and_wait_closed() {
        let (addr, _req, close) = server(vec![
            HEAD,
            b"20\r\ndata: 1\n\n: hb\ndata: 2\n\ndata: 3\n\n\r\n",
        ])
        .await;
        let mut s = SseStream::open(addr, "/", &[]).await.unwrap();
        let events = s.events(2, T).await.unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].data, "2");
        close.send(()).unwrap();
        let rest = s.wait_closed(T).await.unwrap();
        assert!(
            matches!(&rest[..], [Item::Event(e)] if e.data == "3"),
            "{rest:?}"
        );
        assert_eq!(s.end(), Some(StreamEnd::Eof));
    }

    #[tokio::test]
    async fn timeouts_name_what_was_awaited() {
        let (addr, _req, _close) = server(vec![HEAD, b"5\r\n: hb\n\r\n"]).await;
        let mut s = SseStream::open(addr, "/", &[]).await.unwrap();
        let err = format!(
            "{:#}",
            s.next_event(Duration::from_millis(200)).await.unwrap_err()
        );
        assert!(err.contains("event 1 of 1"), "{err}");
        assert!(err.contains("skipped 1"), "{err}");
        let err = format!(
            "{:#}",
            s.wait_closed(Duration::from_millis(100)).await.unwrap_err()
        );
        assert!(err.contains("still open"), "{err}");
    }

    #[tokio::test]
    async fn end_of_stream_is_an_error_for_next_event() {
        let (addr, _req, close) = server(vec![HEAD, b"0\r\n\r\n"]).await;
        let mut s = SseStream::open(addr, "/", &[]).await.unwrap();
        let err = format!("{:#}", s.next_event(T).await.unwrap_err());
        assert!(err.contains("stream ended"), "{err}");
        drop(close);
    }

    #[tokio::test]
    async fn truncated_chunk_is_reported() {
        let (addr, _req, close) = server(vec![HEAD, b"10\r\ndata: x"]).await;
        let mut s = SseStream::open(addr, "/", &[]).await.unwrap();
        close.send(()).unwrap();
        assert!(s.wait_closed(T).await.unwrap().is_empty());
        assert_eq!(s.end(), Some(StreamEnd::Truncated));
    }

    #[tokio::test]
    async fn malformed_chunk_framing_is_an_error() {
        let (addr, _req, _close) = server(vec![HEAD, b"3\r\nabcdef\r\n"]).await;
        let mut s = SseStream::open(addr, "/", &[]).await.unwrap();
        let err = format!("{:#}", s.next_item(T).await.unwrap_err());
        assert!(err.contains("malformed chunked body"), "{err}");
    }

    #[tokio::test]
    async fn unchunked_body_until_eof() {
        let (addr, _req, close) = server(vec![
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: a\n\n",
        ])
        .await;
        let mut s = SseStream::open(addr, "/", &[]).await.unwrap();
        assert!(!s.chunked());
        assert_eq!(s.next_event(T).await.unwrap().data, "a");
        close.send(()).unwrap();
        assert_eq!(s.next_item(T).await.unwrap(), None);
        assert_eq!(s.end(), Some(StreamEnd::Eof));
    }

    #[tokio::test]
    async fn error_status_is_not_an_error() {
        let (addr, _req, _close) = server(vec![
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n",
            b"{\"error\":\"busy\"}\n",
        ])
        .await;
        let mut s = SseStream::builder(addr, "/events/x")
            .recv_buffer_size(4096)
            .timeout(T)
            .open()
            .await
            .unwrap();
        assert_eq!(s.status(), 503);
        assert_eq!(s.header("retry-after"), Some("1"));
        assert_eq!(s.body_text().await.unwrap(), "{\"error\":\"busy\"}\n");
        assert_eq!(s.end(), Some(StreamEnd::Terminated));
    }
}
