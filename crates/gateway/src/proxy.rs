//! Pingora's side of the public listener: every HTTP/2 stream, and the HTTP/1 requests
//! the front hands over one at a time (the publish API and reverse-proxy routes).
//!
//! An HTTP/2 request passes here the checks the front applies to HTTP/1 heads — the size
//! limits ([`head::check_limits`]) and [`edge::check`] (token bucket, method, path) — then
//! the same dispatch: `/events` opens a stream relayed over the HTTP/2 stream, `/publish/…`
//! is the publish API, paths under a `[[routes]]` prefix are reverse-proxied to their
//! upstream pool with the forwarding headers of [`edge::forward`], anything else is a
//! JSON 404. Every error Pingora itself would answer goes through `fail_to_proxy` and gets
//! the JSON body; Pingora's error log names a request by method and path only
//! (`request_summary`): a query may hold a token.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};
use tokio::io::AsyncReadExt;

use crate::admission::{Client, Refusal};
use crate::edge::{self, ApiError, RequestView, Response, Target};
use crate::front::head;
use crate::live::Live;
use crate::metrics::Outcome;
use crate::publish;
use crate::routes::{Route, Routes};
use crate::sse::{self, StreamRequest};
use crate::state::Gateway;
use crate::stream_control;

/// The public listener's request handling inside Pingora.
#[derive(Debug)]
pub struct EdgeProxy {
    gateway: Arc<Gateway>,
    routes: Live<Routes>,
}

/// Per request: who sent it and the route chosen.
#[derive(Debug, Default)]
pub struct RequestCtx {
    client: Option<Client>,
    route: Option<Arc<Route>>,
}

impl EdgeProxy {
    /// Handling for `gateway` with `routes`.
    pub fn new(gateway: Arc<Gateway>, routes: Live<Routes>) -> Self {
        Self { gateway, routes }
    }

    /// Counts a refusal and answers it.
    async fn refuse(&self, session: &mut Session, refusal: Refusal) -> Result<bool> {
        refusal.count(&self.gateway.metrics);
        let cors = edge::cors_headers(&self.gateway.cors.current(), session.req_header());
        Response::error(&refusal.error.with_headers(cors))
            .send(session)
            .await?;
        Ok(true)
    }

    /// `/events` over HTTP/2: Pingora writes the head and frames the body; the hub's
    /// writer runs over an in-process pipe whose bytes are relayed here, until either
    /// side ends.
    async fn open_stream(&self, session: &mut Session, client: Client) -> Result<bool> {
        let cors = edge::cors_headers(&self.gateway.cors.current(), session.req_header());
        let admitted = {
            let request = StreamRequest::new(session.req_header(), client, cors.clone());
            sse::admit(&self.gateway.streams, &request).await
        };
        let admitted = match admitted {
            Ok(a) => a,
            Err(refusal) => return self.refuse(session, refusal).await,
        };
        Response::event_stream(cors).send(session).await?;
        let (ours, mut theirs) = tokio::io::duplex(RELAY_BUFFER);
        sse::spawn(&self.gateway.streams, ours, admitted, client.peer, None);
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

/// Bytes in flight between the writer and an HTTP/2 stream.
const RELAY_BUFFER: usize = 64 * 1024;

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    /// Checks HTTP/2 requests as the front checks HTTP/1 heads, then serves the gateway's
    /// own requests (streams, publish, demo, 404) and lets routed ones through.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let gateway = &self.gateway;
        let Some(peer) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no client address",
            ));
        };
        let client = gateway.admission.client(peer, session.req_header());
        ctx.client = Some(client);
        if session.as_downstream().is_http2() {
            // HTTP/1 heads were checked by the front before the hand-over.
            if let Err(e) = head::check_limits(session.req_header()) {
                let (rejection, error) = ApiError::from_head(&e);
                let refusal = Refusal {
                    outcome: Outcome::BadRequest,
                    rejection: Some(rejection),
                    error,
                };
                return self.refuse(session, refusal).await;
            }
            if let Err(refusal) = edge::check(&gateway.admission, session.req_header(), &client) {
                return self.refuse(session, refusal).await;
            }
        }
        let req = session.req_header();
        let preflight = req.method() == "OPTIONS";
        let cors = gateway.cors.current();
        let cors = &*cors;
        let routes = self.routes.current();
        match edge::path::target(req.path(), &routes) {
            Target::Events if preflight => {
                edge::preflight(cors, req, "GET, OPTIONS")
                    .send(session)
                    .await?;
                Ok(true)
            }
            Target::Publish | Target::Tickets | Target::StreamControl if preflight => {
                edge::preflight(cors, req, "POST, OPTIONS")
                    .send(session)
                    .await?;
                Ok(true)
            }
            Target::Events => self.open_stream(session, client).await,
            Target::Publish => publish::handle(&gateway.publishing, cors, session).await,
            Target::StreamControl => stream_control::handle(&gateway.streams, cors, session).await,
            Target::Tickets => match gateway.streams.tickets() {
                Some(tickets) => tickets.handle(cors, session).await,
                None => {
                    Response::error(&ApiError::not_found(req.path()))
                        .send(session)
                        .await?;
                    Ok(true)
                }
            },
            Target::Demo => {
                edge::demo(req).send(session).await?;
                Ok(true)
            }
            Target::Client => {
                edge::client_js(req).send(session).await?;
                Ok(true)
            }
            Target::Route(index) => {
                ctx.route = routes.get(index).cloned();
                Ok(false)
            }
            Target::NotFound => {
                Response::error(&ApiError::not_found(req.path()))
                    .send(session)
                    .await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(404), "no route"))?;
        route.peer().ok_or_else(|| {
            Error::explain(
                ErrorType::ConnectNoRoute,
                format!("no healthy upstream for {}", route.prefix),
            )
        })
    }

    /// Tells the upstream who the client is and how it came in (protocol §9, "Forwarding").
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let Some(client) = ctx.client else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no client for a proxied request",
            ));
        };
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        edge::forward::prepare(upstream_request, client.peer, client.peer_trusted, tls)
    }

    /// Every failure Pingora would answer itself gets the JSON body (502/504 for the
    /// upstream, 4xx for the request); nothing when the client is gone or a response is
    /// already under way.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut Self::CTX,
    ) -> FailToProxy
    where
        Self::CTX: Send + Sync,
    {
        let error = ApiError::from_proxy(e, session.req_header().path());
        let code = match error {
            Some(error) if session.response_written().is_none() => {
                match Response::error(&error).send(session).await {
                    Ok(()) => error.status,
                    Err(_) => 0,
                }
            }
            _ => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Names a request in Pingora's error log: method and path, never the query (which
    /// may hold a token) nor any header.
    fn request_summary(&self, session: &Session, _ctx: &Self::CTX) -> String {
        let req = session.req_header();
        format!("{} {}", req.method(), req.path())
    }
}
