//! Bus adapters: where the hub's messages come from.
//!
//! [`NatsBus`] holds ONE core NATS subscription per active topic (subject
//! `<subject_prefix>.<topic>`), shared by every stream of that topic, and feeds each
//! message to [`sse_hub::Hub::ingest`]. It follows the hub's demand: a topic's
//! subscription is made when its first stream arrives and dropped when the hub lets the
//! topic go after `topic_linger`. The connection is made in the background and remade
//! forever; the hub hears of every loss and return of it (`set_connected`), which is
//! how streams learn of upstream gaps.

mod nats;

pub use async_nats::ServerAddr;
pub use nats::{BusError, EVENT_HEADER, NatsBus, NatsBusConfig, subject_for};
