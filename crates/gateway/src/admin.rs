//! The admin listener: `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::http::Method;
use pingora::protocols::http::ServerSession;

use crate::edge::{ApiError, Response as Answer};
use crate::state::Gateway;

/// Serves the admin endpoints.
#[derive(Debug)]
pub struct AdminApp {
    gateway: Arc<Gateway>,
}

impl AdminApp {
    /// Endpoints for `gateway`.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

type Response = http::Response<Vec<u8>>;

fn response(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
    Answer::new(status)
        .with_body(content_type, bytes::Bytes::from(body))
        .with_header("Cache-Control", "no-store")
        .to_http()
}

fn error(e: &ApiError) -> Response {
    Answer::error(e).to_http()
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response {
        let req = session.req_header();
        let path = req.uri.path();
        if req.method != Method::GET && req.method != Method::HEAD {
            return error(&ApiError::method_not_allowed(req.method.as_str(), "GET"));
        }
        match path {
            "/metrics" => {
                self.gateway.refresh_gauges();
                response(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.gateway.metrics.render(),
                )
            }
            "/healthz" => response(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                if self.gateway.is_ready() {
                    response(200, "text/plain", b"ready\n".to_vec())
                } else if self.gateway.is_draining() {
                    response(503, "text/plain", b"draining\n".to_vec())
                } else {
                    response(503, "text/plain", b"not connected to NATS\n".to_vec())
                }
            }
            _ => error(&ApiError::not_found(path)),
        }
    }
}
