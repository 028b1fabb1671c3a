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
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::ServerSession;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::admission::{self, Refusal};
use crate::cors::Headers;
use crate::http_error::ApiError;
use crate::publish;
use crate::request::is_events_path;
use crate::routes::Routes;
use crate::sse::{self, StreamRequest};
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

    /// `/events` on a connection Pingora kept alive.
    async fn open_stream(&self, session: &mut Session, client: IpAddr) -> Result<bool> {
        let req = session.req_header();
        let method = req.method.as_str().to_owned();
        let path = req.uri.path().to_owned();
        let query = req.uri.query().map(str::to_owned);
        let http10 = req.version == pingora::http::Version::HTTP_10;
        let last_event_id = req
            .headers
            .get("last-event-id")
            .map(|v| v.as_bytes().to_vec());
        let request = StreamRequest {
            method: &method,
            path: &path,
            query: query.as_deref(),
            http10,
            last_event_id: last_event_id.as_deref(),
            client,
            cors: self.cors_headers(session),
        };
        let admitted = match sse::admit(&self.gateway, &request).await {
            Ok(a) => a,
            Err(refusal) => return self.refuse(session, refusal).await,
        };
        match take_http1_stream(session) {
            Some(stream) => sse::spawn(&self.gateway, stream, admitted, client),
            None => {
                drop(admitted);
                let error = ApiError::method_not_allowed("this protocol", "GET over HTTP/1.1");
                return self.refuse(session, Refusal::bad_request(error)).await;
            }
        }
        Ok(true)
    }
}

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
        if publish::is_publish_path(&path) {
            if preflight {
                return self.preflight(session, "POST, OPTIONS").await;
            }
            let cors = self.cors_headers(session);
            return publish::handle(&self.gateway, session, cors).await;
        }
        if let Some(index) = self.routes.index_of(&path) {
            ctx.route = Some(index);
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
