//! Bus adapters: where the hub's messages come from.
//!
//! [`NatsBus`] holds ONE core NATS subscription per active topic (subject
//! `<subject_prefix>.<topic>`), shared by every stream of that topic, and feeds each
//! message to [`sse_hub::Hub::ingest`]. It follows the hub's demand: a topic's
//! subscription is made when its first stream arrives and dropped when the hub lets the
//! topic go after `topic_linger`. The connection is made in the background and remade
//! forever; the hub hears of every loss and return of it (`set_connected`), which is
//! how streams learn of upstream gaps.
//!
//! With JetStream ([`JetStreamConfig`]) the adapter instead reads the whole stream with
//! one ordered consumer, ids are stream sequences, and [`History`] replays resumes the
//! hub's rings no longer hold.

mod jetstream;
mod nats;
mod publish;

pub use async_nats::ServerAddr;
pub use jetstream::{History, JetStreamConfig};
pub use nats::{BusError, EVENT_HEADER, NatsBus, NatsBusConfig, PUBLISH_HEADER, subject_for};
pub use publish::{PublishError, Publisher};
