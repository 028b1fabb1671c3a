//! The public listener's front: the first thing every connection meets, and the reader
//! of every HTTP/1 request head on it (protocol §9).
//!
//! Pingora accepts the connection; this app counts it against the peer's socket cap
//! (`limits.max_sockets_per_ip`), gives HTTP/2 connections (TLS ALPN `h2`, or the h2c
//! preface) to Pingora's HTTP/2 server, and serves HTTP/1 itself, one request after the
//! other:
//!
//! 1. the head is read under the deadline and the size and framing limits of [`head`]
//!    (the first one within `server.header_timeout` of the connection, later ones within
//!    `server.keepalive_timeout` of the previous response, then `header_timeout`);
//! 2. it passes [`edge::check`] (token bucket, method, path rules);
//! 3. `/events` becomes a stream task that owns the connection from then on; the
//!    gateway's own answers (preflights, 404, the demo page, refusals) are written here and
//!    the connection goes on; the publish API and reverse-proxy routes are handed to
//!    Pingora one request at a time ([`handoff`]), after which the connection comes back
//!    here for the next head — pipelined requests are served in order.

pub mod handoff;
pub mod head;
pub mod rewound;
mod wrapped;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{ALPN, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use sse_admission::Slot;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use self::handoff::{ChunkScanner, OneRequest};
use self::head::{BodyLength, HeadError, RequestHead, read_head};
use self::rewound::Rewound;
use crate::admission::{Client, Refusal};
use crate::edge::{self, ApiError, Connection, Response, Target};
use crate::live::Live;
use crate::metrics::Outcome;
use crate::proxy::EdgeProxy;
use crate::routes::Routes;
use crate::sse::{self, StreamRequest};
use crate::state::Gateway;

/// How long writing one of the front's own answers may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The public listener's application.
pub struct PublicApp {
    gateway: Arc<Gateway>,
    proxy: Arc<HttpProxy<EdgeProxy>>,
    routes: Live<Routes>,
}

impl std::fmt::Debug for PublicApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicApp").finish_non_exhaustive()
    }
}

impl PublicApp {
    /// The front for `gateway`, handing requests it does not answer to `proxy`.
    pub fn new(
        gateway: Arc<Gateway>,
        proxy: Arc<HttpProxy<EdgeProxy>>,
        routes: Live<Routes>,
    ) -> Self {
        Self {
            gateway,
            proxy,
            routes,
        }
    }
}

/// The peer address of an accepted connection.
pub fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    let addr = digest.peer_addr()?;
    addr.as_inet().map(|a| a.ip())
}

#[async_trait]
impl ServerApp for PublicApp {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let gateway = &self.gateway;
        let Some(peer) = peer_ip(&stream) else {
            tracing::debug!("connection without a peer address; closing");
            return None;
        };
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let socket = match gateway.admission.acquire_socket(peer) {
            Ok(slot) => slot,
            Err(refusal) => {
                refusal.count(&gateway.metrics);
                tracing::debug!(%peer, "socket cap reached; refusing the connection");
                if !h2 {
                    let answer = Response::error(&refusal.error);
                    let _ = answer
                        .write_http1(&mut stream, Connection::Close, ANSWER_TIMEOUT)
                        .await;
                }
                return None;
            }
        };
        if h2 {
            // HTTP/2 over TLS: Pingora's HTTP/2 server takes the whole connection; each
            // request passes the same checks in `EdgeProxy::request_filter`.
            let done = ServerApp::process_new(&self.proxy, stream, shutdown).await;
            drop(socket);
            return done;
        }
        let header_timeout = gateway.server.header_timeout;
        let mut buf = BytesMut::new();
        if gateway.server.h2c {
            match sniff_h2c(&mut stream, &mut buf, header_timeout).await {
                Some(true) => {
                    let done = self.serve_h2c(stream, buf, shutdown).await;
                    drop(socket);
                    return done;
                }
                Some(false) => {}
                None => return None,
            }
        }
        let mut connection = Http1 {
            app: self,
            peer,
            socket,
            buf,
            shutdown: shutdown.clone(),
        };
        connection.serve(stream).await;
        None
    }

    /// Lets the proxy end the connections it keeps alive.
    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.proxy).await;
    }
}

impl PublicApp {
    /// Gives an h2c connection, with the preface already read, to Pingora's HTTP/2 server.
    async fn serve_h2c(
        self: &Arc<Self>,
        stream: Stream,
        buf: BytesMut,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream: Stream = if stream.as_any().is::<L4Stream>() {
            match stream.into_any().downcast::<L4Stream>() {
                Ok(mut l4) => {
                    l4.rewind(&buf);
                    l4
                }
                Err(_) => return None,
            }
        } else {
            Box::new(Rewound::new(buf, stream))
        };
        ServerApp::process_new(&self.proxy, stream, shutdown).await
    }
}

/// One HTTP/1 connection, served request after request.
struct Http1<'a> {
    app: &'a Arc<PublicApp>,
    peer: IpAddr,
    /// This connection's place among its peer's sockets; goes with the connection (into
    /// a stream task when it becomes a stream).
    socket: Option<Slot>,
    /// Read from the socket and not yet used: the next head, and what follows it.
    buf: BytesMut,
    shutdown: ShutdownWatch,
}

impl Http1<'_> {
    async fn serve(&mut self, mut stream: Stream) {
        let gateway = &self.app.gateway;
        let server = &gateway.server;
        let mut idle = server.header_timeout;
        let mut first = true;
        loop {
            let read = read_head(&mut stream, &mut self.buf, idle, server.header_timeout);
            let head = if first {
                // The first head is bounded by the header timeout: no need to watch for
                // shutdown (a registration on a channel every connection shares).
                first = false;
                read.await
            } else {
                // A kept-alive connection may idle for long: shutdown ends the wait.
                tokio::select! {
                    head = read => head,
                    _ = self.shutdown.changed() => return,
                }
            };
            let head = match head {
                Ok(head) => head,
                Err(HeadError::Closed | HeadError::Idle | HeadError::Io(_)) => return,
                Err(e) => return refuse_head(gateway, &mut stream, &e).await,
            };
            idle = server.keepalive_timeout;
            let keep_alive = head.keep_alive()
                && !server.keepalive_timeout.is_zero()
                && !gateway.streams.is_draining();
            let client = gateway.admission.client(self.peer, &head);
            let next = match edge::check(&gateway.admission, &head, &client) {
                Err(refusal) => {
                    let (answer, keep) = refused(gateway, &head, &refusal, keep_alive);
                    self.answer(stream, &head, &answer, keep).await
                }
                Ok(()) => {
                    let target = edge::path::target(head.path(), &self.app.routes.current());
                    match self
                        .dispatch(stream, &head, target, client, keep_alive)
                        .await
                    {
                        Some(s) => s,
                        None => return,
                    }
                }
            };
            match next {
                Next::Continue(s) => stream = s,
                Next::Close => return,
            }
        }
    }

    /// Serves one request that passed the checks; `None` when the connection is gone (a
    /// stream took it, or it closed).
    async fn dispatch(
        &mut self,
        stream: Stream,
        head: &RequestHead,
        target: Target,
        client: Client,
        keep_alive: bool,
    ) -> Option<Next> {
        let gateway = &self.app.gateway;
        let cors = gateway.cors.current();
        let cors = &*cors;
        let preflight = head.method == "OPTIONS";
        let answer = match target {
            Target::Events if preflight => edge::preflight(cors, head, "GET, OPTIONS"),
            Target::Publish | Target::Tickets | Target::StreamControl if preflight => {
                edge::preflight(cors, head, "POST, OPTIONS")
            }
            Target::Events => {
                let cors = edge::cors_headers(cors, head);
                let request = StreamRequest::new(head, client, cors.clone());
                match sse::admit(&gateway.streams, &request).await {
                    Ok(admitted) => {
                        let socket = self.socket.take();
                        match raw_tcp(stream) {
                            Ok(tcp) => {
                                sse::spawn(&gateway.streams, tcp, admitted, self.peer, socket)
                            }
                            Err(stream) => {
                                sse::spawn(&gateway.streams, stream, admitted, self.peer, socket);
                            }
                        }
                        return None;
                    }
                    Err(refusal) => {
                        let (answer, keep) = refused(gateway, head, &refusal, keep_alive);
                        return Some(self.answer(stream, head, &answer, keep).await);
                    }
                }
            }
            Target::Publish | Target::Tickets | Target::StreamControl | Target::Route(_) => {
                return self.hand_off(stream, head, keep_alive).await;
            }
            Target::Demo => edge::demo(head),
            Target::Client => edge::client_js(head),
            Target::NotFound => Response::error(&ApiError::not_found(head.path())),
        };
        let keep = keep_alive && !head.has_body();
        Some(self.answer(stream, head, &answer, keep).await)
    }

    /// Writes one of the gateway's own answers; the connection goes on when `keep`.
    async fn answer(
        &mut self,
        mut stream: Stream,
        head: &RequestHead,
        answer: &Response,
        keep: bool,
    ) -> Next {
        let timeout = self.app.gateway.write_timeout.min(ANSWER_TIMEOUT);
        let connection = if keep {
            Connection::KeepAlive
        } else {
            Connection::Close
        };
        let sent = answer
            .clone()
            .for_head(head.method == "HEAD")
            .write_http1(&mut stream, connection, timeout)
            .await;
        if keep && sent.is_ok() {
            self.buf.advance(head.len);
            Next::Continue(stream)
        } else {
            if sent.is_ok() {
                linger(&mut stream).await;
            }
            Next::Close
        }
    }

    /// Hands one request to Pingora (publish API, routes) and takes the connection back.
    async fn hand_off(
        &mut self,
        mut stream: Stream,
        head: &RequestHead,
        keep_alive: bool,
    ) -> Option<Next> {
        let gateway = &self.app.gateway;
        let server = &gateway.server;
        let checked = match head.check_for_proxy() {
            Err(e) => Err(e),
            Ok(()) if head.body == BodyLength::Chunked => {
                self.first_chunk_line(&mut stream, head.len).await
            }
            Ok(()) => Ok(()),
        };
        if let Err(e) = checked {
            let (rejection, error) = ApiError::from_head(&e);
            gateway.metrics.count(Outcome::BadRequest);
            gateway.metrics.reject(rejection);
            tracing::debug!(error = %e, "refusing a request body");
            let sent = Response::error(&error)
                .write_http1(&mut stream, Connection::Close, ANSWER_TIMEOUT)
                .await;
            if sent.is_ok() {
                linger(&mut stream).await;
            }
            return Some(Next::Close);
        }
        let upgrade = head.header("upgrade").is_some()
            && head.header("connection").is_some_and(|c| {
                c.split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
            });
        let buf = std::mem::take(&mut self.buf);
        let one = OneRequest::new(stream, buf, head.len, head.body, upgrade);
        let mut session = ServerSession::new_http1(Box::new(one));
        // Reuse decides whether the connection comes back; the wait for the next request
        // is ours, under our own timeout.
        session.set_keepalive(keep_alive.then(|| server.keepalive_timeout.as_secs().max(1)));
        session.set_read_timeout(Some(server.header_timeout));
        session.set_write_timeout(Some(gateway.write_timeout));
        session.set_total_drain_timeout(Some(server.header_timeout));
        let reused =
            HttpServerApp::process_new_http(&self.app.proxy, session, &self.shutdown).await?;
        let (stream, _) = reused.consume();
        let one = stream.into_any().downcast::<OneRequest>().ok()?;
        let (stream, rest) = one.into_parts();
        self.buf = rest;
        Some(Next::Continue(stream))
    }

    /// Reads until the first chunk-size line of a chunked body is complete and checks it,
    /// so that a body framed the way another parser could read differently is refused
    /// before anything is forwarded.
    async fn first_chunk_line(
        &mut self,
        stream: &mut Stream,
        head_len: usize,
    ) -> Result<(), HeadError> {
        let deadline = Instant::now() + self.app.gateway.server.header_timeout;
        let mut scanner = ChunkScanner::default();
        loop {
            scanner
                .scan(&self.buf[head_len..])
                .map_err(|e| HeadError::Malformed(e.to_string()))?;
            if scanner.first_line_seen() {
                return Ok(());
            }
            self.buf.reserve(1024);
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut self.buf)).await {
                Err(_) => {
                    return Err(HeadError::Timeout(self.app.gateway.server.header_timeout));
                }
                Ok(Ok(0)) => return Err(HeadError::Malformed("the body ended early".into())),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(HeadError::Io(e)),
            }
        }
    }
}

/// What the connection does after a request.
enum Next {
    /// Read the next request on this stream.
    Continue(Stream),
    /// Close.
    Close,
}

/// Counts a refusal; its answer (with the request's CORS headers) and whether the
/// connection may go on after it.
fn refused(
    gateway: &Gateway,
    head: &RequestHead,
    refusal: &Refusal,
    keep_alive: bool,
) -> (Response, bool) {
    refusal.count(&gateway.metrics);
    let keep = keep_alive && !head.has_body() && !refusal.closes();
    let cors = edge::cors_headers(&gateway.cors.current(), head);
    (
        Response::error(&refusal.error.clone().with_headers(cors)),
        keep,
    )
}

/// Answers a request head that could not be read (400/408/414/431) and closes.
async fn refuse_head(gateway: &Gateway, stream: &mut Stream, e: &HeadError) {
    let (rejection, error) = ApiError::from_head(e);
    tracing::debug!(error = %e, "refusing a request head");
    gateway.metrics.count(Outcome::BadRequest);
    gateway.metrics.reject(rejection);
    let sent = Response::error(&error)
        .write_http1(stream, Connection::Close, Duration::from_secs(1))
        .await;
    if sent.is_ok() {
        linger(stream).await;
    }
}

/// Most a closing connection's unread input is drained for, in time and in bytes.
const LINGER: (Duration, usize) = (Duration::from_secs(1), 1024 * 1024);

/// Closes after an answer the client may still be sending into (an oversized head): our
/// side is shut, then its input is read and dropped for a moment, so that closing with
/// unread bytes (which sends a reset) does not destroy the answer before the client has
/// read it.
async fn linger(stream: &mut Stream) {
    use tokio::io::AsyncWriteExt;
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut scratch = [0u8; 16 * 1024];
        let mut drained = 0;
        while drained < LINGER.1 {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER.0, drain).await;
}

/// The plain TCP socket under a Pingora L4 stream, for a stream that is ours from here
/// on: writes then go straight to tokio's socket instead of through Pingora's boxed
/// stream, its zero-capacity `BufWriter` and its timing bookkeeping. The descriptor is
/// checked to be a TCP socket, duplicated, and Pingora's stream dropped (closing and
/// deregistering only its own descriptor: its `Drop` does not shut the socket down).
/// Anything else (TLS, a wrapper) comes back as it was.
#[allow(unsafe_code)]
fn raw_tcp(stream: Stream) -> Result<tokio::net::TcpStream, Stream> {
    use std::os::fd::{AsRawFd, BorrowedFd};
    let Some(l4) = stream.as_any().downcast_ref::<L4Stream>() else {
        return Err(stream);
    };
    let raw = l4.as_raw_fd();
    if raw < 0 {
        return Err(stream);
    }
    // SAFETY: `raw` is the open descriptor of `stream` (checked non-negative above), which
    // is alive for this borrow; nothing closes it meanwhile.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    // One `getsockopt(SO_PROTOCOL)`: TCP, not a Unix socket or anything else.
    let is_tcp = matches!(
        socket2::SockRef::from(&fd).protocol(),
        Ok(Some(p)) if p == socket2::Protocol::TCP
    );
    if !is_tcp {
        return Err(stream);
    }
    let Ok(owned) = fd.try_clone_to_owned() else {
        return Err(stream);
    };
    let std = std::net::TcpStream::from(owned);
    if std.set_nonblocking(true).is_err() {
        return Err(stream);
    }
    match tokio::net::TcpStream::from_std(std) {
        Ok(tcp) => {
            drop(stream);
            Ok(tcp)
        }
        Err(_) => Err(stream),
    }
}

/// The HTTP/2 connection preface a cleartext (h2c) client starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the connection's first bytes into `buf`: `Some(true)` when they are the HTTP/2
/// preface, `Some(false)` for anything else, `None` when the client sent nothing in time.
async fn sniff_h2c(stream: &mut Stream, buf: &mut BytesMut, timeout: Duration) -> Option<bool> {
    let read = async {
        loop {
            let n = buf.len().min(H2_PREFACE.len());
            if buf[..n] != H2_PREFACE[..n] {
                return Some(false);
            }
            if n == H2_PREFACE.len() {
                return Some(true);
            }
            buf.reserve(1024);
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(timeout, read).await.ok().flatten()
}
