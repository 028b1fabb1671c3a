//! Pingora's side of the public listener: requests the front did not answer itself —
//! everything that is not `/events`, and every later request on a connection Pingora
//! kept alive. Each is rate limited like the front does; `/events` on such a connection
//! is taken out of Pingora and opened like any stream; every other path is a JSON 404
//! (no routes are configured).

use std::io::Cursor;
use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::prelude::HttpPeer;
use pingora::protocols::http::ServerSession;
use pingora::proxy::{ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};

use crate::admission::{self, Refusal};
use crate::http_error::ApiError;
use crate::publish;
use crate::request::is_events_path;
use crate::sse::{self, StreamRequest};
use crate::state::Gateway;

/// The public listener's request handling inside Pingora.
#[derive(Debug)]
pub struct EdgeProxy {
    gateway: Arc<Gateway>,
}

impl EdgeProxy {
    /// Handling for `gateway`.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
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
        refusal.error.send(session).await?;
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
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    /// Answers every request: streams, 429, 404.
    async fn request_filter(&self, session: &mut Session, _ctx: &mut Self::CTX) -> Result<bool> {
        let Some(client) = self.client(session) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no client address",
            ));
        };
        let path = session.req_header().uri.path().to_owned();
        if is_events_path(&path) {
            return self.open_stream(session, client).await;
        }
        if let Err(refusal) = admission::check_rate(&self.gateway, client) {
            return self.refuse(session, refusal).await;
        }
        if publish::is_publish_path(&path) {
            return publish::handle(&self.gateway, session).await;
        }
        ApiError::not_found(&path).send(session).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        Err(Error::explain(
            ErrorType::HTTPStatus(404),
            "no upstream route is configured",
        ))
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
