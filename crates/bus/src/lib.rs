//! Bus adapters: where the hub's messages come from.
//!
//! [`NatsBus`] holds ONE core NATS subscription per active topic (subject
//! `<subject_prefix>.<topic>`), or per aggregated topic family, shared by every stream
//! of that topic, and feeds each message to the hub through its [`sse_hub::Feed`]. It
//! serves as the hub's [`sse_hub::Upstream`]: a topic's subscription is made when the
//! hub opens the topic (its first stream; new topics are confirmed in batches) and
//! dropped when the hub closes it after `topic_linger`. The subscriptions live on a
//! connection of the bus's own (`wire`: a few dozen bytes per subscription instead of a
//! client library's channel), made in the background and remade forever; the hub hears
//! of every loss and return of it (`set_connected`), which is how streams learn of
//! upstream gaps. Publishing and JetStream go through async-nats.
//!
//! With JetStream ([`JetStreamConfig`]) the adapter instead reads the whole stream with
//! one ordered consumer, ids are stream sequences, and it serves as the hub's
//! [`sse_hub::History`] ([`JetStreamHistory`]): resumes the rings no longer hold are
//! replayed from the stream. Publishes through this process ([`Publisher`]) are matched
//! with their message coming back here ([`Pending`]).

mod jetstream;
mod nats;
mod publish;
mod tickets;
mod trace;
mod wire;

pub use async_nats::ServerAddr;
pub use jetstream::{JetStreamConfig, JetStreamHistory};
pub use nats::{
    BusError, EVENT_HEADER, NatsBus, NatsBusConfig, PUBLISH_HEADER, Unattached, subject_for,
};
pub use publish::{Pending, PublishError, Publisher};
pub use tickets::{LedgerError, TicketLedger, ticket_bucket};
