//! Test support for black-box tests of `sse-gateway`: real processes, raw sockets,
//! deadlines instead of sleeps.
//!
//! - [`NatsServer`] — a real `nats-server` (JetStream on) on free loopback ports, in its
//!   own temporary directory; `kill`/`restart` for outage tests; `subscriptions()` shows
//!   what the gateway subscribed upstream. Dropping it kills the server.
//! - [`NatsCluster`] — `n` routed `nats-server` nodes with clustered JetStream, ready
//!   once the meta leader is elected; kill/restart single nodes, find which node holds a
//!   named client connection. Dropping it kills every node.
//! - [`Gateway`] — the gateway binary with a rendered config, started and awaited until
//!   admin `/healthz` is 200; SIGTERM/SIGKILL, restart, metrics, log. Dropping it kills
//!   the process.
//! - [`SseStream`] — a raw-TCP SSE client that de-chunks strictly and decodes with
//!   [`sse_framing::Decoder`], exposing status, headers and the exact body bytes.
//! - [`http`] — a one-shot HTTP/1.1 client and [`http::send_raw`] for malformed requests.
//! - [`Metrics`] — a parsed Prometheus scrape.
//! - [`eventually`] — poll until a condition holds, with a deadline and a useful error.
//!
//! Every wait has a deadline ([`DEFAULT_TIMEOUT`] unless given), so a broken gateway
//! fails a test instead of hanging it.
//!
//! ```no_run
//! use std::time::Duration;
//! use sse_testkit::{Gateway, NatsServer, SseStream, publish};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let nats = NatsServer::start()?;
//! // In an integration test: Gateway::builder(env!("CARGO_BIN_EXE_sse-gateway"))
//! let gw = Gateway::builder("target/debug/sse-gateway")
//!     .nats_url(&nats.url())
//!     .spawn()
//!     .await?;
//! gw.wait_ready(Duration::from_secs(10)).await?;
//!
//! let mut stream = SseStream::open(gw.addr(), "/events/orders.42", &[]).await?;
//! assert_eq!(stream.status(), 200);
//! let client = nats.client().await?;
//! publish(&client, "sse.orders.42", "hello", Some("greeting")).await?;
//! let event = stream.next_event(Duration::from_secs(5)).await?;
//! assert_eq!(event.data, "hello");
//! # Ok(()) }
//! ```

pub mod chunked;
pub mod cluster;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod nats;
pub mod sse;
pub mod wait;

pub use cluster::NatsCluster;
pub use gateway::{Gateway, GatewayBuilder, check_config, run_config};
pub use metrics::{Metrics, Sample};
pub use nats::{NatsServer, nats_server_bin};
pub use sse::{SseStream, SseStreamBuilder, StreamEnd};
pub use sse_framing::{Event, Item};
pub use wait::{DEFAULT_TIMEOUT, WAIT, eventually, free_port, free_ports};

use anyhow::Context as _;

/// The NATS header that carries the SSE event type (protocol §3).
pub const SSE_EVENT_HEADER: &str = "Sse-Event";

/// Publishes `payload` to `subject`, with the `Sse-Event` header when `event_type` is
/// given, and flushes so the server has it when this returns.
pub async fn publish(
    client: &async_nats::Client,
    subject: &str,
    payload: impl Into<bytes::Bytes>,
    event_type: Option<&str>,
) -> anyhow::Result<()> {
    let payload = payload.into();
    let subject = subject.to_owned();
    match event_type {
        Some(event_type) => {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(SSE_EVENT_HEADER, event_type);
            client
                .publish_with_headers(subject.clone(), headers, payload)
                .await
        }
        None => client.publish(subject.clone(), payload).await,
    }
    .with_context(|| format!("publish to {subject}"))?;
    tokio::time::timeout(DEFAULT_TIMEOUT, client.flush())
        .await
        .map_err(|_| anyhow::anyhow!("flush after publishing to {subject} timed out"))?
        .with_context(|| format!("flush after publishing to {subject}"))
}
