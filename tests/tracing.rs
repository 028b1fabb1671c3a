//! OpenTelemetry traces (protocol §12, `[tracing]`): spans exported over OTLP/HTTP with
//! JSON bodies to a receiver in the test — publish → ingest → fanout under the
//! publisher's trace, a NATS publisher's `traceparent` continued, nothing when not
//! sampled.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use sse_testkit::http;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// An OTLP/HTTP receiver: keeps the JSON body of every `POST /v1/traces`, answers 200.
struct Collector {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve_otlp(socket, kept.clone()));
            }
        });
        Collector { addr, bodies, task }
    }

    fn endpoint(&self) -> String {
        format!("\"http://{}\"", self.addr)
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<SpanSeen> {
        let bodies = self.bodies.lock().unwrap();
        let mut spans = Vec::new();
        for body in bodies.iter() {
            for resource in body["resourceSpans"].as_array().into_iter().flatten() {
                let service = attributes(&resource["resource"]["attributes"])
                    .remove("service.name")
                    .unwrap_or_default();
                for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                    for span in scope["spans"].as_array().into_iter().flatten() {
                        spans.push(SpanSeen {
                            service: service.clone(),
                            name: span["name"].as_str().unwrap_or_default().to_owned(),
                            trace_id: span["traceId"].as_str().unwrap_or_default().to_owned(),
                            span_id: span["spanId"].as_str().unwrap_or_default().to_owned(),
                            parent: span["parentSpanId"].as_str().unwrap_or_default().to_owned(),
                            attributes: attributes(&span["attributes"]),
                            events: span["events"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|e| e["name"].as_str().map(str::to_owned))
                                .collect(),
                        });
                    }
                }
            }
        }
        spans
    }

    /// Waits until the spans of `trace` named `names` have all arrived; returns them by
    /// name.
    async fn trace(&self, trace: &str, names: &[&str]) -> HashMap<String, SpanSeen> {
        let what = format!("spans {names:?} of trace {trace}");
        eventually(WAIT, &what, || async {
            let found: HashMap<String, SpanSeen> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace)
                .map(|s| (s.name.clone(), s))
                .collect();
            for name in names {
                anyhow::ensure!(found.contains_key(*name), "no {name} yet: {found:?}");
            }
            Ok(found)
        })
        .await
        .unwrap()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, Clone)]
struct SpanSeen {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: HashMap<String, String>,
    events: Vec<String>,
}

/// OTLP/JSON attributes as text (`intValue` may be a string or a number).
fn attributes(list: &Value) -> HashMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let key = kv["key"].as_str()?.to_owned();
            let value = &kv["value"];
            let text = match (&value["stringValue"], &value["intValue"]) {
                (Value::String(s), _) => s.clone(),
                (_, Value::String(n)) => n.clone(),
                (_, Value::Number(n)) => n.to_string(),
                _ => value.to_string(),
            };
            Some((key, text))
        })
        .collect()
}

/// One keep-alive HTTP/1.1 connection of the receiver.
async fn serve_otlp(mut socket: TcpStream, bodies: Arc<Mutex<Vec<Value>>>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 65536];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..head_end + length).skip(head_end).collect();
        let ok = head.starts_with("POST /v1/traces ");
        if ok && let Ok(json) = serde_json::from_slice(&body) {
            bodies.lock().unwrap().push(json);
        }
        let answer: &[u8] = if ok {
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        } else {
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
        };
        if socket.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// A publisher's trace: its id and the span the gateway's spans hang under.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PUBLISHER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str, flags: &str) -> String {
    format!("00-{trace}-{PUBLISHER_SPAN}-{flags}")
}

/// A gateway on `nats` exporting to `collector` with `extra` TOML in `[tracing]`.
async fn traced(
    nats: &NatsServer,
    collector: &Collector,
    extra: &str,
    configure: impl FnOnce(GatewayBuilder) -> GatewayBuilder,
) -> Gateway {
    let tracing = format!(
        "[tracing]\notlp_endpoint = {}\n{extra}\n",
        collector.endpoint()
    );
    ready(nats, |b| configure(b.raw(&tracing))).await
}

async fn publish_traced(gw: &Gateway, topic: &str, traceparent: &str, body: &[u8]) {
    let r = http::request(
        gw.addr(),
        "POST",
        &format!("/publish/{topic}"),
        &[("traceparent", traceparent), ("Content-Type", "text/plain")],
        body,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
}

/// `POST /publish` with a sampled traceparent: publish → ingest → fanout, all in the
/// publisher's trace, the fan-out counting the topic's three streams.
async fn publish_ingest_fanout(configure: impl FnOnce(GatewayBuilder) -> GatewayBuilder) {
    let nats = NatsServer::start().unwrap();
    let collector = Collector::start().await;
    let gw = traced(
        &nats,
        &collector,
        "service_name = \"gateway-under-test\"\nsampling_ratio = 0.0",
        configure,
    )
    .await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(open(&gw, "/events/traced.orders").await);
    }
    publish_traced(&gw, "traced.orders", &traceparent(TRACE, "01"), b"hello").await;
    for s in &mut streams {
        assert_eq!(s.next_event(WAIT).await.unwrap().data, "hello");
    }
    let spans = collector
        .trace(TRACE, &["publish", "ingest", "fanout"])
        .await;
    let (publish, ingest, fanout) = (&spans["publish"], &spans["ingest"], &spans["fanout"]);
    assert_eq!(publish.parent, PUBLISHER_SPAN, "{publish:?}");
    assert_eq!(ingest.parent, publish.span_id, "{ingest:?}");
    assert_eq!(fanout.parent, ingest.span_id, "{fanout:?}");
    for span in [publish, ingest, fanout] {
        assert_eq!(span.service, "gateway-under-test");
    }
    assert_eq!(publish.attributes["sse.topic"], "traced.orders");
    assert_eq!(publish.attributes["http.response.status_code"], "202");
    assert_eq!(ingest.attributes["sse.topic"], "traced.orders");
    assert_eq!(
        ingest.attributes["messaging.destination.name"],
        "sse.traced.orders"
    );
    assert_eq!(fanout.attributes["sse.streams"], "3");
    assert_eq!(fanout.attributes["sse.streams_written"], "3");
    assert_eq!(fanout.events, ["last_write"]);
    // One fan-out span for the three streams, never one per client.
    let per_trace = collector
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == TRACE)
        .count();
    assert_eq!(per_trace, 3);
    a_normal_client_still_streams(&gw, "traced.after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_with_a_traceparent_is_traced_through_ingest_and_fanout() {
    publish_ingest_fanout(|b| b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_publish_is_traced_the_same_way() {
    publish_ingest_fanout(|b| b.set("jetstream", "enabled", "true")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_on_a_nats_message_is_continued() {
    let nats = NatsServer::start().unwrap();
    let collector = Collector::start().await;
    let gw = traced(&nats, &collector, "sampling_ratio = 0.0", |b| b).await;
    let mut s = open(&gw, "/events/traced.direct").await;
    let client = nats.client().await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", traceparent(TRACE, "01").as_str());
    client
        .publish_with_headers("sse.traced.direct", headers, "from nats".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    assert_eq!(s.next_event(WAIT).await.unwrap().data, "from nats");
    let spans = collector.trace(TRACE, &["ingest", "fanout"]).await;
    assert!(!spans.contains_key("publish"));
    assert_eq!(spans["ingest"].parent, PUBLISHER_SPAN);
    assert_eq!(spans["fanout"].parent, spans["ingest"].span_id);
    assert_eq!(spans["fanout"].attributes["sse.streams"], "1");
    assert_eq!(spans["ingest"].service, "sse-gateway");
    a_normal_client_still_streams(&gw, "traced.after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_exported_for_traces_that_are_not_sampled() {
    let nats = NatsServer::start().unwrap();
    let collector = Collector::start().await;
    let gw = traced(&nats, &collector, "sampling_ratio = 0.0", |b| b).await;
    let mut s = open(&gw, "/events/quiet").await;
    // No traceparent at a ratio of 0; a publisher's unsampled one, over HTTP and NATS.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    assert_eq!(post_text(&gw, "/publish/quiet", b"one").await.status, 202);
    publish_traced(&gw, "quiet", &traceparent(unsampled, "00"), b"two").await;
    let client = nats.client().await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", traceparent(unsampled, "00").as_str());
    client
        .publish_with_headers("sse.quiet", headers, "three".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    for want in ["one", "two", "three"] {
        assert_eq!(s.next_event(WAIT).await.unwrap().data, want);
    }
    // A sampled message after them: the export queue is in order, so once its spans are
    // in, anything the others had produced would be too.
    publish_traced(&gw, "quiet", &traceparent(TRACE, "01"), b"sentinel").await;
    assert_eq!(s.next_event(WAIT).await.unwrap().data, "sentinel");
    collector
        .trace(TRACE, &["publish", "ingest", "fanout"])
        .await;
    let others: Vec<SpanSeen> = collector
        .spans()
        .into_iter()
        .filter(|s| s.trace_id != TRACE)
        .collect();
    assert!(others.is_empty(), "{others:?}");
    a_normal_client_still_streams(&gw, "traced.after").await;
}
