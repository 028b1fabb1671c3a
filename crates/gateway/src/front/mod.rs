//! The public listener's front: the first thing every connection meets.
//!
//! Pingora accepts the connection; this app reads the first request head itself (with a
//! deadline and size limits, see [`head`]) so that streams never carry Pingora's
//! per-request state and hostile clients are cut early. `/events` requests are admitted
//! and handed to a stream task; the gateway's own error answers keep the connection for
//! the next request; anything else is given, with the bytes already read, to Pingora's
//! HTTP proxy ([`crate::proxy::EdgeProxy`]), which serves the rest of the connection.

pub mod head;
pub mod respond;
pub mod rewound;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{ALPN, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;

use self::head::{HeadError, MAX_REQUEST_LINE, RequestHead, read_head};
use self::rewound::Rewound;
use crate::admission::Refusal;
use crate::http_error::ApiError;
use crate::metrics::{Outcome, Rejection};
use crate::proxy::EdgeProxy;
use crate::request::is_events_path;
use crate::sse::{self, StreamRequest, Transport};
use crate::state::Gateway;

/// How long a kept-alive connection may wait for its next request.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// The public listener's application.
pub struct PublicApp {
    gateway: Arc<Gateway>,
    proxy: Arc<HttpProxy<EdgeProxy>>,
}

impl std::fmt::Debug for PublicApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicApp").finish_non_exhaustive()
    }
}

impl PublicApp {
    /// The front for `gateway`, handing other requests to `proxy`.
    pub fn new(gateway: Arc<Gateway>, proxy: Arc<HttpProxy<EdgeProxy>>) -> Self {
        Self { gateway, proxy }
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
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // HTTP/2 over TLS: Pingora's HTTP/2 server takes the whole connection.
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        let header_timeout = gateway.config.server.header_timeout;
        let mut buf = BytesMut::new();
        let mut idle = header_timeout;
        if gateway.config.server.h2c {
            match sniff_h2c(&mut stream, &mut buf, header_timeout).await {
                Some(true) => return self.delegate(stream, buf, shutdown).await,
                Some(false) => {}
                None => return None,
            }
        }
        loop {
            let head = match read_head(&mut stream, &mut buf, idle, header_timeout).await {
                Ok(head) => head,
                Err(HeadError::Closed | HeadError::Idle | HeadError::Io(_)) => return None,
                Err(e) => {
                    self.refuse_head(&mut stream, &e).await;
                    return None;
                }
            };
            idle = KEEPALIVE_IDLE;
            if !is_events_path(head.path()) {
                return self.delegate(stream, buf, shutdown).await;
            }
            let cors = &gateway.config.cors;
            let origin = cors.allowed(head.header("origin"));
            if head.method == "OPTIONS" {
                let headers = origin
                    .map(|o| {
                        cors.preflight_headers(
                            o,
                            "GET, OPTIONS",
                            head.header("access-control-request-headers"),
                        )
                    })
                    .unwrap_or_default();
                let keep = head.keep_alive() && !head.has_body();
                let timeout = gateway.config.sse.write_timeout;
                let sent = respond::write_no_content(&mut stream, &headers, keep, timeout).await;
                if !keep || sent.is_err() {
                    return None;
                }
                buf.advance(head.len);
                continue;
            }
            let cors_headers = origin.map(|o| cors.response_headers(o)).unwrap_or_default();
            let forwarded: Vec<&[u8]> = head.header_values("x-forwarded-for").collect();
            let request = StreamRequest {
                method: &head.method,
                path: head.path(),
                query: head.query(),
                transport: if head.minor_version == 0 {
                    Transport::Http10
                } else {
                    Transport::Http11
                },
                last_event_id: head.header("last-event-id"),
                client: crate::admission::client_ip(gateway, peer, &forwarded),
                cors: cors_headers.clone(),
                authorization: head.header("authorization"),
                cookies: head.header_values("cookie").collect(),
            };
            match sse::admit(gateway, &request).await {
                Ok(admitted) => {
                    match raw_tcp(stream) {
                        Ok(tcp) => sse::spawn(gateway, tcp, admitted, peer),
                        Err(stream) => sse::spawn(gateway, stream, admitted, peer),
                    }
                    return None;
                }
                Err(refusal) => {
                    refusal.count(gateway);
                    let keep = can_continue(&head, &refusal);
                    let timeout = gateway.config.sse.write_timeout;
                    let error = refusal.error.clone().with_headers(cors_headers);
                    let sent = respond::write_error(&mut stream, &error, keep, timeout).await;
                    if !keep || sent.is_err() {
                        return None;
                    }
                    buf.advance(head.len);
                }
            }
        }
    }

    /// Lets the proxy end the connections it keeps alive.
    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.proxy).await;
    }
}

/// The plain TCP socket under a Pingora L4 stream, for a stream that is ours from here
/// on: writes then go straight to tokio's socket instead of through Pingora's boxed
/// stream, its zero-capacity `BufWriter` and its timing bookkeeping. The descriptor is
/// duplicated and Pingora's stream dropped (closing and deregistering only its own
/// descriptor: its `Drop` does not shut the socket down). Anything else (TLS) comes back
/// as it was.
#[allow(unsafe_code)]
fn raw_tcp(stream: Stream) -> Result<tokio::net::TcpStream, Stream> {
    use std::os::fd::{AsRawFd, BorrowedFd};
    let Some(l4) = stream.as_any().downcast_ref::<L4Stream>() else {
        return Err(stream);
    };
    // SAFETY: the descriptor belongs to `stream`, which is alive for this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(l4.as_raw_fd()) };
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
    use tokio::io::AsyncReadExt;
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

/// Whether the connection can serve another request after refusing this one.
fn can_continue(head: &RequestHead, refusal: &Refusal) -> bool {
    head.keep_alive() && !head.has_body() && refusal.outcome != Outcome::RateLimited
}

impl PublicApp {
    /// Answers a request head that could not be read (400/408/414/431) and closes.
    async fn refuse_head(&self, stream: &mut Stream, e: &HeadError) {
        let gateway = &self.gateway;
        let (rejection, error) = match e {
            HeadError::Timeout(_) => (Rejection::HeaderTimeout, ApiError::request_timeout()),
            HeadError::UriTooLong => (
                Rejection::UriTooLong,
                ApiError::uri_too_long(MAX_REQUEST_LINE),
            ),
            HeadError::TooLarge => (
                Rejection::HeaderTooLarge,
                ApiError::headers_too_large(e.to_string()),
            ),
            other => (
                Rejection::MalformedRequest,
                ApiError::malformed(other.to_string()),
            ),
        };
        tracing::debug!(error = %e, "refusing a request head");
        gateway.metrics.count(Outcome::BadRequest);
        gateway.metrics.reject(rejection);
        let timeout = Duration::from_secs(1);
        let _ = respond::write_error(stream, &error, false, timeout).await;
    }

    /// Gives the connection, with the bytes already read, to Pingora's proxy.
    async fn delegate(
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
