//! The operator API on the admin listener (protocol §11), under `/api/`:
//!
//! | call | answer |
//! |---|---|
//! | `GET /api/topics?limit=N` | `{"topics":[{"topic","subscribers","ring_frames","ring_bytes","last_id"}…]}`, most subscribers first (then by name) |
//! | `GET /api/topics/{topic}` | one such object; 404 when the topic is not active |
//! | `GET /api/streams[?topic=|sub=|ip=][&limit=N][&after=ID]` | `{"streams":[{"id","ip","sub","topics","opened_at","events_sent","pending_bytes"}…]}`, by id |
//! | `DELETE /api/streams/{id}[?block=D]` | `{"closed":N}`; 404 for an unknown id |
//! | `DELETE /api/streams?sub=|topic=|ip=…[&block=D]` | `{"closed":N}` |
//! | `POST /api/upgrade` | `202 {"upgrading":true}`: hand the listening sockets to the process started with `--upgrade` (which calls this), then drain and exit |
//! | `GET /api/config` | `{"keys":{"sse.retry":"\"3s\"",…}}`: the configuration in force, every key with its TOML value (secrets as `sha256:` fingerprints), for `--check-config --against` |
//!
//! With `admin.token` set, every call needs `Authorization: Bearer <token>` (else 401).
//! Lists return at most `limit` entries (default [`DEFAULT_LIMIT`], at most
//! [`MAX_LIMIT`]); streams are paged by id: pass the last id of a page as `after` for the
//! next, a page shorter than `limit` is the last. A closed stream gets `event:
//! gateway.close` `{"reason":"revoked"}` and ends. `block` (a duration, `"10m"`) refuses
//! new streams of the `sub` or `ip` closed by for that long (`403 revoked`); closing one
//! stream by id blocks its `sub`, or its address when it has none; a block cannot apply
//! to a topic (400).

use std::net::IpAddr;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use serde::Serialize;
use sse_hub::{CloseReason, Hub, TopicInfo};

use super::registry::{BlockKey, Filter, Registry, StreamEntry, StreamId};
use crate::config::Secret;
use crate::edge::{ApiError, Response};
use crate::reload::Reloader;
use crate::shutdown::UpgradeRequest;

/// Entries per list when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 1000;
/// Most entries per list.
pub const MAX_LIMIT: usize = 10_000;

/// The prefix of every operator call.
pub const API_PREFIX: &str = "/api/";

/// What the operator API reads and acts on.
#[derive(Debug)]
pub struct OperatorApi<'a> {
    /// Topics.
    pub hub: &'a Hub,
    /// Streams and blocks.
    pub registry: &'a Registry,
    /// `admin.token`.
    pub token: Option<&'a Secret>,
    /// The configuration in force (read only for `GET /api/config`).
    pub config: &'a Reloader,
    /// Starts a hand-over to a new process.
    pub upgrade: &'a UpgradeRequest,
}

/// One call: method, path (still percent-encoded), raw query, `Authorization`.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The method.
    pub method: &'a str,
    /// The path, starting with [`API_PREFIX`].
    pub path: &'a str,
    /// The raw query.
    pub query: Option<&'a str>,
    /// The `Authorization` header.
    pub authorization: Option<&'a [u8]>,
}

impl OperatorApi<'_> {
    /// Answers one call.
    pub fn answer(&self, call: Call<'_>) -> Response {
        match self.route(call) {
            Ok(answer) => answer,
            Err(e) => Response::error(&e),
        }
    }

    fn route(&self, call: Call<'_>) -> Result<Response, ApiError> {
        self.authorize(call.authorization)?;
        let rest = call.path.strip_prefix(API_PREFIX).unwrap_or_default();
        let query = Query::parse(call.query)?;
        match (call.method, rest.split_once('/')) {
            ("GET" | "HEAD", None) if rest == "topics" => self.topics(&query),
            ("GET" | "HEAD", Some(("topics", topic))) => self.topic(&decode(topic)?),
            ("GET" | "HEAD", None) if rest == "streams" => self.streams(&query),
            ("DELETE", None) if rest == "streams" => self.close(&query),
            ("DELETE", Some(("streams", id))) => self.close_one(id, &query),
            ("GET" | "HEAD", None) if rest == "config" => Ok(Response::json(
                200,
                &serde_json::json!({ "keys": self.config.running() }),
            )),
            (_, None) if rest == "config" => Err(ApiError::method_not_allowed(call.method, "GET")),
            ("POST", None) if rest == "upgrade" => {
                tracing::info!("POST /api/upgrade: a new process takes the listening sockets over");
                self.upgrade.request();
                Ok(Response::json(
                    202,
                    &serde_json::json!({ "upgrading": true }),
                ))
            }
            (_, None) if rest == "upgrade" => {
                Err(ApiError::method_not_allowed(call.method, "POST"))
            }
            (_, None) if rest == "topics" => Err(ApiError::method_not_allowed(call.method, "GET")),
            (_, Some(("topics", _))) => Err(ApiError::method_not_allowed(call.method, "GET")),
            (_, None) if rest == "streams" => {
                Err(ApiError::method_not_allowed(call.method, "GET, DELETE"))
            }
            (_, Some(("streams", _))) => Err(ApiError::method_not_allowed(call.method, "DELETE")),
            _ => Err(ApiError::not_found(call.path)),
        }
    }

    fn authorize(&self, authorization: Option<&[u8]>) -> Result<(), ApiError> {
        let Some(token) = self.token else {
            return Ok(());
        };
        let given = authorization.and_then(|v| {
            let v = v.trim_ascii();
            let scheme = v.get(..7)?;
            scheme
                .eq_ignore_ascii_case(b"bearer ")
                .then(|| v[7..].trim_ascii())
        });
        match given {
            Some(given) if token.matches(given) => Ok(()),
            Some(_) => Err(ApiError::unauthorized("the admin token is wrong")),
            None => Err(ApiError::unauthorized(
                "the operator API needs Authorization: Bearer <admin.token>",
            )),
        }
    }

    fn topics(&self, query: &Query) -> Result<Response, ApiError> {
        query.only(&["limit"])?;
        let mut topics = self.hub.topics();
        topics.sort_unstable_by(|(a_name, a), (b_name, b)| {
            b.subscribers
                .cmp(&a.subscribers)
                .then_with(|| a_name.as_str().cmp(b_name.as_str()))
        });
        topics.truncate(query.limit()?);
        let topics: Vec<TopicView<'_>> = topics
            .iter()
            .map(|(name, info)| TopicView::of(name.as_str(), info))
            .collect();
        Ok(Response::json_of(200, &TopicList { topics }))
    }

    fn topic(&self, topic: &str) -> Result<Response, ApiError> {
        let info = self
            .hub
            .topic_info(topic)
            .ok_or_else(|| ApiError::not_found_named("topic", topic))?;
        Ok(Response::json_of(200, &TopicView::of(topic, &info)))
    }

    fn streams(&self, query: &Query) -> Result<Response, ApiError> {
        query.only(&["topic", "sub", "ip", "limit", "after"])?;
        let filter = query.filter()?.unwrap_or(Filter::All);
        let after = match query.get("after") {
            None => None,
            Some(id) => Some(
                StreamId::parse(id)
                    .ok_or_else(|| ApiError::bad_request("bad_query", "after: not a stream id"))?,
            ),
        };
        let entries = self.registry.select(&filter, after, query.limit()?);
        let streams: Vec<StreamView> = entries.iter().map(|e| StreamView::of(e)).collect();
        Ok(Response::json_of(200, &StreamList { streams }))
    }

    fn close(&self, query: &Query) -> Result<Response, ApiError> {
        query.only(&["topic", "sub", "ip", "block"])?;
        let Some(filter) = query.filter()? else {
            return Err(ApiError::bad_request(
                "bad_query",
                "name the streams to close: ?sub=, ?topic= or ?ip= (or DELETE /api/streams/{id})",
            ));
        };
        if let Some(period) = query.block()? {
            let key = match &filter {
                Filter::Sub(sub) => BlockKey::Sub(sub.clone()),
                Filter::Ip(ip) => BlockKey::Ip(*ip),
                _ => {
                    return Err(ApiError::bad_request(
                        "bad_query",
                        "block applies to a sub or an ip, not a topic",
                    ));
                }
            };
            self.registry.block(key, period);
        }
        let closed = self.registry.close(&filter, CloseReason::Revoked);
        tracing::info!(?filter, closed, "operator closed streams");
        Ok(Response::json_of(200, &Closed { closed }))
    }

    fn close_one(&self, id: &str, query: &Query) -> Result<Response, ApiError> {
        query.only(&["block"])?;
        let entry = StreamId::parse(id)
            .and_then(|id| self.registry.get(&id))
            .ok_or_else(|| ApiError::not_found_named("stream", id))?;
        if let Some(period) = query.block()? {
            let key = match &entry.sub {
                Some(sub) => BlockKey::Sub(sub.clone()),
                None => BlockKey::Ip(entry.ip),
            };
            self.registry.block(key, period);
        }
        let closed = usize::from(entry.control.close(CloseReason::Revoked));
        tracing::info!(stream = %entry.id, closed, "operator closed a stream");
        Ok(Response::json_of(200, &Closed { closed }))
    }
}

/// `{"topics":[…]}`
#[derive(Serialize)]
struct TopicList<'a> {
    topics: Vec<TopicView<'a>>,
}

/// One topic, as the API shows it.
#[derive(Serialize)]
struct TopicView<'a> {
    topic: &'a str,
    subscribers: usize,
    ring_frames: usize,
    ring_bytes: u64,
    last_id: Option<&'a str>,
}

impl<'a> TopicView<'a> {
    fn of(topic: &'a str, info: &'a TopicInfo) -> Self {
        Self {
            topic,
            subscribers: info.subscribers,
            ring_frames: info.ring_frames,
            ring_bytes: info.ring_bytes,
            last_id: info.last_id.as_deref(),
        }
    }
}

/// `{"streams":[…]}`
#[derive(Serialize)]
struct StreamList {
    streams: Vec<StreamView>,
}

/// One stream, as the API shows it.
#[derive(Serialize)]
struct StreamView {
    id: String,
    ip: String,
    sub: Option<String>,
    topics: Vec<String>,
    opened_at: String,
    events_sent: u64,
    pending_bytes: u64,
}

impl StreamView {
    fn of(e: &StreamEntry) -> Self {
        Self {
            id: e.id.to_string(),
            ip: e.ip.to_string(),
            sub: e.sub.clone(),
            topics: e.topics().iter().map(|t| t.as_str().to_owned()).collect(),
            opened_at: humantime::format_rfc3339_seconds(e.opened_at).to_string(),
            events_sent: e.control.events_sent(),
            pending_bytes: e.control.pending_bytes(),
        }
    }
}

/// `{"closed":N}`
#[derive(Serialize)]
struct Closed {
    closed: usize,
}

fn decode(raw: &str) -> Result<String, ApiError> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request("bad_path", "the path is not UTF-8 once decoded"))
}

/// A call's query, decoded; each key at most once.
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(ApiError::bad_request(
                    "bad_query",
                    format!("{key} given more than once"),
                ));
            }
            pairs.push((key.into_owned(), value.into_owned()));
        }
        Ok(Self(pairs))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Refuses keys this call does not take.
    fn only(&self, keys: &[&str]) -> Result<(), ApiError> {
        match self.0.iter().find(|(k, _)| !keys.contains(&k.as_str())) {
            None => Ok(()),
            Some((k, _)) => Err(ApiError::bad_request(
                "bad_query",
                format!("unknown parameter {k:?} (takes {})", keys.join(", ")),
            )),
        }
    }

    fn limit(&self) -> Result<usize, ApiError> {
        match self.get("limit") {
            None => Ok(DEFAULT_LIMIT),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "bad_query",
                        format!("limit: a whole number from 1 to {MAX_LIMIT}"),
                    )
                }),
        }
    }

    /// The one filter given (`topic`, `sub` or `ip`), if any.
    fn filter(&self) -> Result<Option<Filter>, ApiError> {
        let given: Vec<&(String, String)> = self
            .0
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "topic" | "sub" | "ip"))
            .collect();
        match given.as_slice() {
            [] => Ok(None),
            [(key, value)] => match key.as_str() {
                "topic" => Ok(Some(Filter::Topic(value.clone()))),
                "sub" => Ok(Some(Filter::Sub(value.clone()))),
                _ => value
                    .parse::<IpAddr>()
                    .map(|ip| Some(Filter::Ip(ip)))
                    .map_err(|_| ApiError::bad_request("bad_query", "ip: not an IP address")),
            },
            _ => Err(ApiError::bad_request(
                "bad_query",
                "give one filter: topic, sub or ip",
            )),
        }
    }

    fn block(&self) -> Result<Option<Duration>, ApiError> {
        self.get("block")
            .map(|v| {
                humantime::parse_duration(v)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        ApiError::bad_request("bad_query", "block: a duration such as \"10m\"")
                    })
            })
            .transpose()
    }
}
