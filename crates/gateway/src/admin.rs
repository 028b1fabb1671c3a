//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and the operator API under
//! `/api/` ([`crate::operator::api`]).

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::http::Method;
use pingora::protocols::http::ServerSession;

use crate::admission::Admission;
use crate::config::Secret;
use crate::edge::{ApiError, Response as Answer};
use crate::metrics::Metrics;
use crate::operator::api::{API_PREFIX, Call, OperatorApi};
use crate::reload::Reloader;
use crate::shutdown::UpgradeRequest;
use crate::sse::Streams;

/// Serves the admin endpoints.
#[derive(Debug)]
pub struct AdminApp {
    metrics: Metrics,
    streams: Arc<Streams>,
    admission: Arc<Admission>,
    /// `admin.token`: what the operator API asks for.
    token: Option<Secret>,
    /// The configuration in force (`GET /api/config`).
    reloader: Arc<Reloader>,
    /// `POST /api/upgrade`.
    upgrade: UpgradeRequest,
}

impl AdminApp {
    /// Endpoints reporting `metrics`, with the gauges read off `streams` and `admission`;
    /// the operator API on `streams`, behind `token` when set.
    pub fn new(
        metrics: Metrics,
        streams: Arc<Streams>,
        admission: Arc<Admission>,
        token: Option<Secret>,
        reloader: Arc<Reloader>,
        upgrade: UpgradeRequest,
    ) -> Self {
        Self {
            metrics,
            streams,
            admission,
            token,
            reloader,
            upgrade,
        }
    }

    /// Refreshes the gauges that are read off other structures.
    fn refresh_gauges(&self) {
        let m = &self.metrics;
        m.rate_limited_clients
            .set(i64::try_from(self.admission.rate_limited_clients()).unwrap_or(i64::MAX));
        m.clients_with_streams
            .set(i64::try_from(self.streams.clients()).unwrap_or(i64::MAX));
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
        if path.starts_with(API_PREFIX) {
            let api = OperatorApi {
                hub: &self.streams.hub,
                registry: &self.streams.registry,
                token: self.token.as_ref(),
                config: &self.reloader,
                upgrade: &self.upgrade,
            };
            return api
                .answer(Call {
                    method: req.method.as_str(),
                    path,
                    query: req.uri.query(),
                    authorization: req.headers.get("authorization").map(|v| v.as_bytes()),
                })
                .for_head(req.method == Method::HEAD)
                .to_http();
        }
        if req.method != Method::GET && req.method != Method::HEAD {
            return error(&ApiError::method_not_allowed(req.method.as_str(), "GET"));
        }
        match path {
            "/metrics" => {
                self.refresh_gauges();
                response(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.render(),
                )
            }
            "/healthz" => response(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                if self.streams.is_ready() {
                    response(200, "text/plain", b"ready\n".to_vec())
                } else if self.streams.is_draining() {
                    response(503, "text/plain", b"draining\n".to_vec())
                } else {
                    response(503, "text/plain", b"not connected to NATS\n".to_vec())
                }
            }
            _ => error(&ApiError::not_found(path)),
        }
    }
}
