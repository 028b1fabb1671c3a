//! What the public listeners share: one part per concern, each built from its section of
//! the configuration by the module that uses it. The configuration itself is not kept:
//! after start-up nothing reads it.
//!
//! | part | built by | from | used by |
//! |---|---|---|---|
//! | [`ServerSettings`] | `config` | `[server]` | the front (deadlines, keep-alive), Pingora's sessions |
//! | [`Cors`] | `edge::cors` | `[cors]` | every answer |
//! | [`Admission`] | `admission` | `[limits]` | every request: client identity, token buckets, sockets |
//! | [`Streams`] | `sse` | `[sse]`, `[limits]`, the hub | `/events`; the admin listener and shutdown read its count |
//! | [`Publishing`] | `publish` | `[limits]`, the bus's publisher | `POST /publish` |
//!
//! The admin listener, the upstream service and the SIGTERM watcher take only the parts
//! they need.

use std::sync::Arc;
use std::time::Duration;

use crate::admission::Admission;
use crate::config::ServerSettings;
use crate::edge::Cors;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::publish::Publishing;
use crate::sse::Streams;

/// The public listeners' shared state.
#[derive(Debug)]
pub struct Gateway {
    /// `[server]`: deadlines and keep-alive of every connection.
    pub server: ServerSettings,
    /// `sse.write_timeout`: how long any write to a client may stall, answers included.
    pub write_timeout: Duration,
    /// Which browsers may read answers.
    pub cors: Live<Cors>,
    /// Client identity, token buckets, the sockets cap.
    pub admission: Arc<Admission>,
    /// Event streams.
    pub streams: Arc<Streams>,
    /// The publish API.
    pub publishing: Publishing,
    /// Metrics.
    pub metrics: Metrics,
}
