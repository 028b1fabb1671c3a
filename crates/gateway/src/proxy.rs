//! The public listener: a Pingora proxy service whose `request_filter` answers
//! `/events` itself. Every other path is a JSON 404 (no routes are configured).

use std::sync::Arc;

use async_trait::async_trait;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};

use crate::http_error::ApiError;
use crate::request::is_events_path;
use crate::sse;
use crate::state::Gateway;

/// The public listener's request handling.
#[derive(Debug)]
pub struct EdgeProxy {
    gateway: Arc<Gateway>,
}

impl EdgeProxy {
    /// Handling for `gateway`.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    /// Streams and errors are answered here; nothing reaches `upstream_peer`.
    async fn request_filter(&self, session: &mut Session, _ctx: &mut Self::CTX) -> Result<bool> {
        let path = session.req_header().uri.path().to_owned();
        if is_events_path(&path) {
            return sse::handle(&self.gateway, session).await;
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
