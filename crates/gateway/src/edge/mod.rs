//! The HTTP edge: what every request on the public listeners passes, and how every answer
//! is written, whichever way the request came in (protocol §9).
//!
//! Two readers parse requests: the front's own head reader for every HTTP/1 request on
//! every connection ([`crate::front`]), and Pingora for HTTP/2 streams. Both hand the
//! request, as a [`RequestView`], to the same [`check`] (token bucket, method, path
//! rules), the same dispatch ([`path::target`]) and the same builders of answers
//! ([`Response`], [`ApiError`], [`preflight`]); a [`Response`] is then written as raw
//! HTTP/1 bytes or through a Pingora session. So each status, SSE, CORS or error header
//! is written in one place.
//!
//! ```text
//!  HTTP/1 connection ──front: head (deadline, sizes, framing)──┐
//!                                                             ├─ check ─ target ─┬─ events  → stream task
//!  HTTP/2 stream ─────Pingora: request_filter (sizes)─────────┘                  ├─ publish, routes → Pingora session
//!                                                                                └─ 404, demo, preflight, errors → Response
//! ```

pub mod cors;
pub mod error;
pub mod forward;
pub mod path;
pub mod response;
pub mod view;

pub use self::cors::{Cors, Headers, is_cross_site};
pub use self::error::ApiError;
pub use self::path::Target;
pub use self::response::{Connection, Response};
pub use self::view::{RequestView, Version};

use crate::admission::{Admission, Client, Refusal};

/// Every method a route may carry; the `Allow` of a refused `CONNECT`.
const PROXIED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// The checks every request passes before anything serves it, in order: the client's
/// token bucket (preflights included), a method the gateway serves (`CONNECT` is never
/// tunnelled), and a path no route can be tricked with ([`path::check`]). Head sizes and
/// deadlines are checked by whichever reader parsed the head.
pub fn check(
    admission: &Admission,
    request: &dyn RequestView,
    client: &Client,
) -> Result<(), Refusal> {
    admission.check_rate(client.key)?;
    if request.method() == "CONNECT" {
        return Err(Refusal::bad_request(ApiError::method_not_allowed(
            "CONNECT",
            PROXIED_METHODS,
        )));
    }
    path::check(request.path()).map_err(Refusal::bad_request)?;
    Ok(())
}

/// The CORS headers for an actual response to `request` (none when its origin is not
/// allowed).
pub fn cors_headers(cors: &Cors, request: &dyn RequestView) -> Headers {
    cors.allowed(request.header("origin"))
        .map(|origin| cors.response_headers(origin))
        .unwrap_or_default()
}

/// The answer to a CORS preflight (`OPTIONS`) for a resource serving `methods`: 204, with
/// the CORS headers when the origin is allowed.
pub fn preflight(cors: &Cors, request: &dyn RequestView, methods: &'static str) -> Response {
    let headers = cors
        .allowed(request.header("origin"))
        .map(|origin| {
            cors.preflight_headers(
                origin,
                methods,
                request.header("access-control-request-headers"),
            )
        })
        .unwrap_or_default();
    Response::new(204).with_headers(headers)
}

/// The demo page (`GET`/`HEAD /demo`).
pub fn demo(request: &dyn RequestView) -> Response {
    const PAGE: &str = include_str!("../../assets/demo.html");
    asset(request, "text/html; charset=utf-8", PAGE)
}

/// The JavaScript client (`GET`/`HEAD /client.js`): the ES module of `clients/js`, as
/// it is in the repository (plain JavaScript, no build step), also the script of the
/// SharedWorker it starts.
pub fn client_js(request: &dyn RequestView) -> Response {
    const MODULE: &str = include_str!("../../../../clients/js/sse-gateway.js");
    asset(request, "text/javascript; charset=utf-8", MODULE)
}

fn asset(request: &dyn RequestView, content_type: &'static str, body: &'static str) -> Response {
    match request.method() {
        "GET" | "HEAD" => Response::new(200)
            .with_body(content_type, bytes::Bytes::from_static(body.as_bytes()))
            .with_header("Cache-Control", "no-cache")
            .for_head(request.method() == "HEAD"),
        other => Response::error(&ApiError::method_not_allowed(other, "GET, HEAD")),
    }
}
