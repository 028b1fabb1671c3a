//! The operator's view and hand (protocol §11): the registry of open streams and blocks,
//! the HTTP API on the admin listener, and `sse-gateway ctl`, its command-line client.

pub mod api;
pub mod ctl;
mod registry;

pub use registry::{Registry, StreamEntry, StreamId};
