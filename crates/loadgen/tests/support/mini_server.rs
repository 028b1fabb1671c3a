//! A tiny SSE server: `GET /events/{topic}` streams, `POST /pub/{topic}` publishes (and
//! `publish()` does the same in-process, for the NATS bridge). Frames are written in
//! batches — one write (one chunk) with every frame queued — as the gateway does.
//!
//! Knobs to check the accounting: drop every k-th published message, send every k-th
//! twice, answer topics starting with `reject` with 503, or send a raw (not chunked)
//! body as Nchan may.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// Server behaviour.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// `Transfer-Encoding: chunked` (else a raw body up to the close).
    pub raw_body: bool,
    /// Drop every k-th published message (global publish order).
    pub drop_every: Option<u64>,
    /// Send every k-th published message twice.
    pub dup_every: Option<u64>,
    /// Answer every k-th `POST /pub/…` with 500 and publish nothing.
    pub fail_publish_every: Option<u64>,
    /// Like nginx's `keepalive_requests`: the k-th request of a connection is answered
    /// with `Connection: close`, then the connection is closed (unread requests dropped).
    pub keepalive_requests: Option<u64>,
}

#[derive(Debug)]
struct State {
    opts: Options,
    topics: Mutex<HashMap<String, broadcast::Sender<Bytes>>>,
    next_id: AtomicU64,
    posts: AtomicU64,
}

impl State {
    fn sender(&self, topic: &str) -> broadcast::Sender<Bytes> {
        self.topics
            .lock()
            .entry(topic.to_string())
            .or_insert_with(|| broadcast::channel(1 << 16).0)
            .clone()
    }

    fn publish(&self, topic: &str, data: &[u8]) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        if self.opts.drop_every.is_some_and(|k| id.is_multiple_of(k)) {
            return;
        }
        let mut frame = format!("id: t-{id}\ndata: ").into_bytes();
        frame.extend_from_slice(data);
        frame.extend_from_slice(b"\n\n");
        let frame = Bytes::from(frame);
        let tx = self.sender(topic);
        let _ = tx.send(frame.clone());
        if self.opts.dup_every.is_some_and(|k| id.is_multiple_of(k)) {
            let _ = tx.send(frame);
        }
    }
}

/// A running server (stops with the test runtime).
#[derive(Debug, Clone)]
pub struct MiniServer {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl MiniServer {
    /// Starts a server on a free port of 127.0.0.1.
    pub async fn start(opts: Options) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            opts,
            topics: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            posts: AtomicU64::new(0),
        });
        let st = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(Arc::clone(&st), sock));
            }
        });
        Self { addr, state }
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Publishes in-process (as a NATS bridge would).
    #[allow(dead_code)] // not every test binary uses it
    pub fn publish(&self, topic: &str, data: &[u8]) {
        self.state.publish(topic, data);
    }

    /// Messages published so far (dropped ones included).
    #[allow(dead_code)] // not every test binary uses it
    pub fn published(&self) -> u64 {
        self.state.next_id.load(Ordering::Relaxed)
    }
}

async fn serve(state: Arc<State>, mut sock: TcpStream) {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut served = 0u64;
    loop {
        served += 1;
        let last = state.opts.keepalive_requests == Some(served);
        // one request head (requests may be pipelined)
        let (method, path, body_len, head_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let len = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                        .unwrap_or(0usize);
                    break (
                        req.method.unwrap_or("").to_string(),
                        req.path.unwrap_or("").to_string(),
                        len,
                        n,
                    );
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return,
            }
            match sock.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        while buf.len() < head_len + body_len {
            match sock.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let body: Vec<u8> = buf[head_len..head_len + body_len].to_vec();
        buf.drain(..head_len + body_len);
        match (
            method.as_str(),
            path.strip_prefix("/events/"),
            path.strip_prefix("/pub/"),
        ) {
            ("GET", Some(topic), _) => return stream(state, sock, topic).await,
            ("POST", _, Some(topic)) => {
                let n = state.posts.fetch_add(1, Ordering::Relaxed) + 1;
                let resp: &[u8] = if state
                    .opts
                    .fail_publish_every
                    .is_some_and(|k| n.is_multiple_of(k))
                {
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops"
                } else if last {
                    state.publish(topic, &body);
                    b"HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
                } else {
                    state.publish(topic, &body);
                    b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n{\"id\":1}\r\n0\r\n\r\n"
                };
                if sock.write_all(resp).await.is_err() || last {
                    return;
                }
            }
            _ => {
                let _ = sock
                    .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    .await;
                return;
            }
        }
    }
}

async fn stream(state: Arc<State>, mut sock: TcpStream, topic: &str) {
    if topic.starts_with("reject") {
        let _ = sock
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 2\r\n\r\n{}")
            .await;
        return;
    }
    // subscribe before the head goes out: what is published after it is delivered
    let mut rx = state.sender(topic).subscribe();
    let chunked = !state.opts.raw_body;
    let head: &[u8] = if chunked {
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
    } else {
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    };
    let mut out = head.to_vec();
    frame_into(&mut out, b"retry: 3000\n: connected\n\n", chunked);
    if sock.write_all(&out).await.is_err() {
        return;
    }
    let mut batch = Vec::with_capacity(64 * 1024);
    loop {
        batch.clear();
        match rx.recv().await {
            Ok(f) => batch.extend_from_slice(&f),
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        }
        while batch.len() < 60 * 1024 {
            match rx.try_recv() {
                Ok(f) => batch.extend_from_slice(&f),
                Err(_) => break,
            }
        }
        out.clear();
        frame_into(&mut out, &batch, chunked);
        if sock.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn frame_into(out: &mut Vec<u8>, payload: &[u8], chunked: bool) {
    if chunked {
        out.extend_from_slice(format!("{:x}\r\n", payload.len()).as_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(payload);
    }
}
