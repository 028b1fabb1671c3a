//! Parsing a subscribe request: `GET /events/{topic}` or `GET /events?topic=a&topic=b`.
//!
//! Topics in the path and the query are percent-decoded before validation (protocol §7);
//! both forms may be combined, duplicates count once. `last_event_id` in the query is
//! the resume point for clients that cannot set the `Last-Event-ID` header; the header
//! wins when both are present. Other query parameters are ignored (cache busters).

use percent_encoding::percent_decode_str;
use sse_topic::{TopicError, TopicName};

/// The path every stream lives under.
pub const EVENTS_PATH: &str = "/events";

/// A parsed subscribe request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsRequest {
    /// Distinct topics, in the order given.
    pub topics: Vec<TopicName>,
    /// `?last_event_id=`, if given.
    pub last_event_id: Option<String>,
}

/// Why a subscribe request is refused (all 400).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No topic at all, or an empty one.
    #[error("no topic given: use /events/{{topic}} or /events?topic=...")]
    NoTopic,
    /// A topic fails validation.
    #[error("invalid topic {topic:?}: {reason}")]
    BadTopic {
        /// The topic as decoded.
        topic: String,
        /// Why.
        reason: TopicError,
    },
    /// More distinct topics than `sse.max_topics_per_connection`.
    #[error("{count} topics requested; at most {max} are allowed on one stream")]
    TooManyTopics {
        /// Topics asked for.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The query cannot be understood.
    #[error("bad query: {0}")]
    BadQuery(String),
}

impl RequestError {
    /// The `error` code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoTopic => "missing_topic",
            Self::BadTopic { .. } => "bad_topic",
            Self::TooManyTopics { .. } => "too_many_topics",
            Self::BadQuery(_) => "bad_query",
        }
    }
}

/// Whether `path` is served by the events handler.
pub fn is_events_path(path: &str) -> bool {
    path == EVENTS_PATH
        || path
            .strip_prefix(EVENTS_PATH)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Parses the path (which [`is_events_path`]) and the raw query of a subscribe request.
pub fn parse_events_request(
    path: &str,
    query: Option<&str>,
    allow_wildcards: bool,
    max_topics: usize,
) -> Result<EventsRequest, RequestError> {
    let mut raw_topics: Vec<String> = Vec::new();
    if let Some(rest) = path
        .strip_prefix(EVENTS_PATH)
        .and_then(|r| r.strip_prefix('/'))
    {
        let decoded = percent_decode_str(rest)
            .decode_utf8()
            .map_err(|_| RequestError::BadQuery("the path is not UTF-8 once decoded".into()))?;
        raw_topics.push(decoded.into_owned());
    }
    let mut last_event_id = None;
    if let Some(query) = query {
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "topic" => raw_topics.push(value.into_owned()),
                "last_event_id" => {
                    let earlier = last_event_id.replace(value.into_owned());
                    if earlier.is_some() {
                        return Err(RequestError::BadQuery(
                            "last_event_id given more than once".into(),
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    if raw_topics.is_empty() {
        return Err(RequestError::NoTopic);
    }
    let mut topics: Vec<TopicName> = Vec::with_capacity(raw_topics.len());
    for raw in raw_topics {
        if raw.is_empty() {
            return Err(RequestError::NoTopic);
        }
        let topic = TopicName::parse(&raw, allow_wildcards)
            .map_err(|reason| RequestError::BadTopic { topic: raw, reason })?;
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    if topics.len() > max_topics {
        return Err(RequestError::TooManyTopics {
            count: topics.len(),
            max: max_topics,
        });
    }
    Ok(EventsRequest {
        topics,
        last_event_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(path: &str, query: Option<&str>) -> Result<Vec<String>, RequestError> {
        parse_events_request(path, query, false, 3)
            .map(|r| r.topics.iter().map(|t| t.to_string()).collect())
    }

    #[test]
    fn routes() {
        assert!(is_events_path("/events"));
        assert!(is_events_path("/events/a"));
        assert!(!is_events_path("/eventsx"));
        assert!(!is_events_path("/event"));
        assert!(!is_events_path("/"));
    }

    #[test]
    fn path_and_query_forms() {
        assert_eq!(parse("/events/orders.42", None).unwrap(), ["orders.42"]);
        assert_eq!(
            parse("/events", Some("topic=a&topic=b")).unwrap(),
            ["a", "b"]
        );
        assert_eq!(
            parse("/events/a", Some("topic=b&_=123")).unwrap(),
            ["a", "b"]
        );
        assert_eq!(parse("/events", Some("topic=a&topic=a")).unwrap(), ["a"]);
    }

    #[test]
    fn percent_decoding_happens_before_validation() {
        assert_eq!(parse("/events/orders%2E42", None).unwrap(), ["orders.42"]);
        assert_eq!(parse("/events", Some("topic=a%2Db")).unwrap(), ["a-b"]);
        assert!(matches!(
            parse("/events/a%20b", None),
            Err(RequestError::BadTopic { .. })
        ));
        assert!(matches!(
            parse("/events/a%2Fb", None),
            Err(RequestError::BadTopic { .. })
        ));
        assert!(matches!(
            parse("/events/%ff", None),
            Err(RequestError::BadQuery(_))
        ));
    }

    #[test]
    fn missing_and_empty_topics() {
        assert_eq!(parse("/events", None), Err(RequestError::NoTopic));
        assert_eq!(parse("/events", Some("x=1")), Err(RequestError::NoTopic));
        assert_eq!(parse("/events", Some("topic=")), Err(RequestError::NoTopic));
        assert_eq!(parse("/events/", None), Err(RequestError::NoTopic));
        assert_eq!(
            parse("/events", Some("topic=a&topic=")),
            Err(RequestError::NoTopic)
        );
    }

    #[test]
    fn limits_and_wildcards() {
        assert_eq!(
            parse("/events", Some("topic=a&topic=b&topic=c&topic=d")),
            Err(RequestError::TooManyTopics { count: 4, max: 3 })
        );
        assert!(matches!(
            parse("/events/a.*", None),
            Err(RequestError::BadTopic {
                reason: TopicError::WildcardNotAllowed,
                ..
            })
        ));
        let r = parse_events_request("/events/a.%3E", None, true, 3).unwrap();
        assert_eq!(r.topics[0].as_str(), "a.>");
    }

    #[test]
    fn last_event_id_from_the_query() {
        let r = parse_events_request("/events/a", Some("last_event_id=e-5"), false, 3).unwrap();
        assert_eq!(r.last_event_id.as_deref(), Some("e-5"));
        assert!(matches!(
            parse_events_request(
                "/events/a",
                Some("last_event_id=1&last_event_id=2"),
                false,
                3
            ),
            Err(RequestError::BadQuery(_))
        ));
    }

    fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec("[A-Za-z0-9_-]{1,8}", 1..4).prop_map(|t| t.join("."))
    }

    proptest! {
        #[test]
        fn never_panics(path in "/events(/[ -~]{0,40})?", query in proptest::option::of("[ -~]{0,80}")) {
            let _ = parse_events_request(&path, query.as_deref(), true, 16);
        }

        #[test]
        fn encoded_topics_come_back(topics in prop::collection::vec(topic_strategy(), 1..5)) {
            let query: String = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(topics.iter().map(|t| ("topic", t)))
                .finish();
            let got = parse_events_request("/events", Some(&query), false, 16).unwrap();
            let mut want: Vec<&String> = Vec::new();
            for t in &topics {
                if !want.contains(&t) {
                    want.push(t);
                }
            }
            let got: Vec<&str> = got.topics.iter().map(|t| t.as_str()).collect();
            prop_assert_eq!(got, want.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        }
    }
}
