//! Topic names and wildcard matching: the grammar lives in `sse-topic`.

pub(crate) use sse_topic::matches;
pub use sse_topic::{MAX_TOPIC_LEN, TopicError, TopicName};
