//! Pingora's side of the public listener: requests the front did not answer itself —
//! everything that is not `/events`, and every later request on a connection Pingora
//! kept alive. Each is rate limited like the front does; `/events` on such a connection
//! is taken out of Pingora and opened like any stream; `/publish/…` is the publish API;
//! paths under a `[[routes]]` prefix are reverse-proxied to their upstream pool; anything
//! else is a JSON 404.

use std::io::Cursor;
use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::ServerSession;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use tokio::io::AsyncReadExt;

use crate::admission::{self, Refusal};
use crate::cors::Headers;
use crate::http_error::ApiError;
use crate::publish;
use crate::request::is_events_path;
use crate::routes::Routes;
use crate::sse::{self, StreamRequest, Transport};
use crate::state::Gateway;

/// The public listener's request handling inside Pingora.
#[derive(Debug)]
pub struct EdgeProxy {
    gateway: Arc<Gateway>,
    routes: Routes,
}

/// Per request: the route chosen.
#[derive(Debug, Default)]
pub struct RequestCtx {
    route: Option<usize>,
}

impl EdgeProxy {
    /// Handling for `gateway` with `routes`.
    pub fn new(gateway: Arc<Gateway>, routes: Routes) -> Self {
        Self { gateway, routes }
    }

    fn client(&self, session: &Session) -> Option<IpAddr> {
        let peer = session.client_addr()?.as_inet()?.ip();
        let forwarded: Vec<&[u8]> = session
            .req_header()
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        Some(admission::client_ip(&self.gateway, peer, &forwarded))
    }

    async fn refuse(&self, session: &mut Session, refusal: Refusal) -> Result<bool> {
        refusal.count(&self.gateway);
        let cors = self.cors_headers(session);
        refusal.error.with_headers(cors).send(session).await?;
        Ok(true)
    }

    /// CORS headers for a response to this request (empty: origin not allowed).
    fn cors_headers(&self, session: &Session) -> Headers {
        let cors = &self.gateway.config.cors;
        cors.allowed(
            session
                .req_header()
                .headers
                .get("origin")
                .map(|v| v.as_bytes()),
        )
        .map(|o| cors.response_headers(o))
        .unwrap_or_default()
    }

    /// Answers a CORS preflight with 204.
    async fn preflight(&self, session: &mut Session, methods: &'static str) -> Result<bool> {
        let cors = &self.gateway.config.cors;
        let req = session.req_header();
        let headers = cors
            .allowed(req.headers.get("origin").map(|v| v.as_bytes()))
            .map(|o| {
                cors.preflight_headers(
                    o,
                    methods,
                    req.headers
                        .get("access-control-request-headers")
                        .map(|v| v.as_bytes()),
                )
            })
            .unwrap_or_default();
        let mut head = ResponseHeader::build(204, Some(headers.len() + 1))?;
        head.insert_header("Content-Length", "0")?;
        for (name, value) in headers {
            head.insert_header(name, value)?;
        }
        session.write_response_header(Box::new(head), true).await?;
        Ok(true)
    }

    /// `/events` on a connection Pingora kept alive (HTTP/1), or any HTTP/2 stream.
    async fn open_stream(&self, session: &mut Session, client: IpAddr) -> Result<bool> {
        let h2 = session.as_downstream().is_http2();
        let req = session.req_header();
        let method = req.method.as_str().to_owned();
        let path = req.uri.path().to_owned();
        let query = req.uri.query().map(str::to_owned);
        let transport = if h2 {
            Transport::Framed
        } else if req.version == pingora::http::Version::HTTP_10 {
            Transport::Http10
        } else {
            Transport::Http11
        };
        let last_event_id = req
            .headers
            .get("last-event-id")
            .map(|v| v.as_bytes().to_vec());
        let cors = self.cors_headers(session);
        let authorization = req
            .headers
            .get("authorization")
            .map(|v| v.as_bytes().to_vec());
        let cookies: Vec<Vec<u8>> = req
            .headers
            .get_all("cookie")
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect();
        let request = StreamRequest {
            method: &method,
            path: &path,
            query: query.as_deref(),
            transport,
            last_event_id: last_event_id.as_deref(),
            client,
            cors: cors.clone(),
            authorization: authorization.as_deref(),
            cookies: cookies.iter().map(Vec::as_slice).collect(),
        };
        let admitted = match sse::admit(&self.gateway, &request).await {
            Ok(a) => a,
            Err(refusal) => return self.refuse(session, refusal).await,
        };
        if h2 {
            return self.serve_framed(session, admitted, client, cors).await;
        }
        match take_http1_stream(session) {
            Some(stream) => sse::spawn(&self.gateway, stream, admitted, client),
            None => {
                drop(admitted);
                let error = ApiError::method_not_allowed("this protocol", "GET");
                return self.refuse(session, Refusal::bad_request(error)).await;
            }
        }
        Ok(true)
    }

    /// An HTTP/2 stream: Pingora writes the head and frames the body; the hub's writer
    /// runs over an in-process pipe whose bytes are relayed here, until either side ends.
    async fn serve_framed(
        &self,
        session: &mut Session,
        admitted: sse::Admitted,
        client: IpAddr,
        cors: Headers,
    ) -> Result<bool> {
        let mut head = ResponseHeader::build(200, Some(3 + cors.len()))?;
        head.insert_header("Content-Type", "text/event-stream")?;
        head.insert_header("Cache-Control", "no-cache")?;
        head.insert_header("X-Accel-Buffering", "no")?;
        for (name, value) in cors {
            head.insert_header(name, value)?;
        }
        session.write_response_header(Box::new(head), false).await?;
        let (ours, mut theirs) = tokio::io::duplex(RELAY_BUFFER);
        sse::spawn(&self.gateway, ours, admitted, client);
        let mut buf = BytesMut::with_capacity(RELAY_BUFFER);
        loop {
            tokio::select! {
                read = theirs.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let chunk = buf.split().freeze();
                        if session.write_response_body(Some(chunk), false).await.is_err() {
                            return Ok(true);
                        }
                        buf.reserve(RELAY_BUFFER);
                    }
                },
                // The client resets the stream: dropping the pipe ends the writer.
                _ = session.downstream_session.read_body_or_idle(true) => return Ok(true),
            }
        }
        session.write_response_body(None, true).await?;
        Ok(true)
    }
}

/// The browser demo page.
const DEMO_PATH: &str = "/demo";
const DEMO_PAGE: &str = include_str!("../assets/demo.html");

async fn serve_demo(session: &mut Session) -> Result<bool> {
    let body = bytes::Bytes::from_static(DEMO_PAGE.as_bytes());
    let mut head = ResponseHeader::build(200, Some(3))?;
    head.insert_header("Content-Type", "text/html; charset=utf-8")?;
    head.insert_header("Content-Length", body.len().to_string())?;
    head.insert_header("Cache-Control", "no-cache")?;
    session.write_response_header(Box::new(head), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(true)
}

/// Bytes in flight between the writer and an HTTP/2 stream.
const RELAY_BUFFER: usize = 64 * 1024;

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    /// Answers the gateway's own requests (streams, publish, 429, 404); lets routed ones
    /// through to their upstream.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let Some(client) = self.client(session) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no client address",
            ));
        };
        let path = session.req_header().uri.path().to_owned();
        let preflight = session.req_header().method == pingora::http::Method::OPTIONS;
        if is_events_path(&path) {
            if preflight {
                return self.preflight(session, "GET, OPTIONS").await;
            }
            return self.open_stream(session, client).await;
        }
        if let Err(refusal) = admission::check_rate(&self.gateway, client) {
            return self.refuse(session, refusal).await;
        }
        if path == DEMO_PATH {
            return serve_demo(session).await;
        }
        if publish::is_publish_path(&path) {
            if preflight {
                return self.preflight(session, "POST, OPTIONS").await;
            }
            let cors = self.cors_headers(session);
            return publish::handle(&self.gateway, session, cors).await;
        }
        if let Some(index) = self.routes.index_of(&path) {
            ctx.route = Some(index);
            strip_access_token(session)?;
            return Ok(false);
        }
        ApiError::not_found(&path).send(session).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .and_then(|i| self.routes.get(i))
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(404), "no route"))?;
        route.peer().ok_or_else(|| {
            Error::explain(
                ErrorType::ConnectNoRoute,
                format!("no healthy upstream for {}", route.prefix),
            )
        })
    }

    /// Tells the upstream who the client is and how it came in.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(peer) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            let forwarded = match session.req_header().headers.get("x-forwarded-for") {
                Some(v) => format!("{}, {peer}", String::from_utf8_lossy(v.as_bytes())),
                None => peer.to_string(),
            };
            upstream_request.insert_header("X-Forwarded-For", forwarded)?;
        }
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        upstream_request.insert_header("X-Forwarded-Proto", if tls { "https" } else { "http" })?;
        if let Some(host) = session.req_header().headers.get("host").cloned() {
            upstream_request.insert_header("X-Forwarded-Host", host)?;
        }
        Ok(())
    }

    /// Upstream failures as JSON: 504 on timeouts, 502 otherwise.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut Self::CTX,
    ) -> FailToProxy
    where
        Self::CTX: Send + Sync,
    {
        let error = match e.etype() {
            ErrorType::HTTPStatus(404) => ApiError::not_found(session.req_header().uri.path()),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                ApiError::gateway_timeout(format!(
                    "the upstream did not answer in time ({})",
                    e.etype().as_str()
                ))
            }
            _ if e.esource() == &ErrorSource::Downstream => {
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                };
            }
            ErrorType::ConnectNoRoute => {
                ApiError::bad_gateway("no healthy upstream for this route".to_owned())
            }
            _ => ApiError::bad_gateway(format!("the upstream failed: {}", e.etype().as_str())),
        };
        let code = if session.response_written().is_some() {
            // Too late for an error page: the response is under way.
            0
        } else {
            match error.send(session).await {
                Ok(()) => error.status,
                Err(_) => 0,
            }
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

/// Removes `access_token` from the query of a proxied request: the gateway's token is
/// not the upstream's business, and a URL is the kind of thing that ends up in logs.
fn strip_access_token(session: &mut Session) -> Result<()> {
    let uri = &session.req_header().uri;
    let Some(query) = uri.query() else {
        return Ok(());
    };
    if !query
        .split('&')
        .any(|p| p.split('=').next() == Some(sse_auth::QUERY_PARAM))
    {
        return Ok(());
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| p.split('=').next() != Some(sse_auth::QUERY_PARAM))
        .collect();
    let path = uri.path();
    let target = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let uri = target
        .parse()
        .map_err(|_| Error::explain(ErrorType::InternalError, "cannot rewrite the request URI"))?;
    session.req_header_mut().set_uri(uri);
    Ok(())
}

/// Takes the HTTP/1 connection out of Pingora, leaving an inert session behind for
/// Pingora to finish. `None` (and the session untouched) for HTTP/2.
fn take_http1_stream(session: &mut Session) -> Option<pingora::protocols::Stream> {
    if session.as_downstream().is_http2() {
        return None;
    }
    let inert = ServerSession::new_http1(Box::new(Cursor::new(Vec::<u8>::new())));
    match std::mem::replace(&mut *session.downstream_session, inert) {
        ServerSession::H1(v1) => Some(v1.into_inner()),
        other => {
            *session.downstream_session = other;
            None
        }
    }
}
