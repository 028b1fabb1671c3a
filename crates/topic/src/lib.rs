//! The topic grammar of sse-gateway, in one place: what a topic is, what a wildcard
//! pattern matches, and which event types a publisher may set. The hub, the authorizer,
//! the gateway and the load generator all ask this crate.
//!
//! - [`TopicName`]: 1–256 bytes of dot-separated tokens of `[A-Za-z0-9_-]`; with wildcards
//!   allowed, `*` (one token) and, last, `>` (one or more). These are the NATS subject
//!   wildcards, so topic `t` maps one-to-one onto subject `<prefix>.t`.
//! - [`covers`]`(p, q)`: every subject pattern `q` can match is matched by `p` — what an
//!   authorizer asks of a claim and a requested topic; for a literal `q` it is plain
//!   matching ([`matches`]).
//! - [`check_publisher_event_type`]: a usable `event:` field value outside the reserved
//!   `gateway.` namespace.
//!
//! ```
//! use sse_topic::{TopicName, TopicError, covers, matches};
//!
//! let topic = TopicName::parse("orders.*", true).unwrap();
//! assert!(topic.is_wildcard());
//! assert!(matches(topic.as_str(), "orders.42"));
//! assert!(covers("orders.>", topic.as_str()));
//! assert!(!covers("orders.*", "orders.>"));
//! assert_eq!(TopicName::parse("orders.*", false), Err(TopicError::WildcardNotAllowed));
//! assert!(sse_topic::check_publisher_event_type("gateway.reset").is_err());
//! ```

mod event;
mod name;
mod pattern;

pub use event::{EventTypeError, RESERVED_PREFIX, check_publisher_event_type};
pub use name::{MAX_TOPIC_LEN, TopicError, TopicName};
pub use pattern::{covers, matches};
