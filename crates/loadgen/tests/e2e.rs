//! End to end: the real `sse-loadgen` binary against an in-process SSE server.

mod support;

use support::mini_server::{MiniServer, Options};
use support::{args, loadgen, u};

/// A process standing in for the server's pid: the tests of this file run in parallel and
/// each starts a generator under the test process, so that process tree keeps changing
/// (and the report leaves out figures of a tree that changed). Killed on drop.
struct StandIn(std::process::Child);

impl StandIn {
    fn start() -> Self {
        Self(
            std::process::Command::new("sleep")
                .arg("120")
                .spawn()
                .expect("`sleep` runs"),
        )
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every field the JSON report promises.
const FIELDS: &[&str] = &[
    "mode",
    "publisher",
    "clients",
    "topics",
    "procs",
    "threads",
    "source_addrs",
    "clients_ok",
    "clients_failed",
    "failed_by_status",
    "connect_errors",
    "connect_s",
    "setup_rate_per_s",
    "late_connections",
    "closed_early",
    "closed_early_total",
    "rate",
    "duration_s",
    "publish_s",
    "published",
    "publish_errors",
    "publish_errors_by_kind",
    "expected",
    "delivered",
    "loss",
    "loss_pct",
    "gaps",
    "duplicates",
    "out_of_order",
    "resets",
    "other_events",
    "stale_events",
    "delivered_per_s",
    "latency_sample",
    "read_coalesce_ms",
    "latency_count",
    "latency_mean_ms",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p99_ms",
    "latency_p999_ms",
    "latency_max_ms",
    "reads",
    "bytes_read",
    "events_per_read",
    "server_pid",
    "server_rss_before_bytes",
    "server_rss_connected_bytes",
    "server_rss_end_bytes",
    "server_rss_per_conn_bytes",
    "server_rss_per_conn_kib",
    "server_cpu_publish_s",
    "server_cpu_us_per_event",
    "gen_rss_bytes",
    "gen_cpu_total_s",
    "gen_cpu_publish_s",
    "gen_publisher_cpu_s",
    "gen_cpu_us_per_event",
    "gen_reader_ns_per_event",
];

fn stream_args(
    server: &MiniServer,
    stand_in: &StandIn,
    clients: &str,
    topics: &str,
    rate: &str,
) -> Vec<String> {
    let pid = stand_in.pid();
    let publish = format!("{}/pub/{{topic}}", server.url());
    args(&[
        ("url", &server.url()),
        ("clients", clients),
        ("topics", topics),
        ("rate", rate),
        ("duration", "1s"),
        ("drain", "2s"),
        ("connect-timeout", "10s"),
        ("source-addrs", "4"),
        ("publish-http", &publish),
        ("publish-conns", "2"),
        ("payload-bytes", "64"),
        ("server-pid", &pid),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_stream_everything_delivered() {
    let server = MiniServer::start(Options::default()).await;
    let (code, r, stderr) =
        loadgen(stream_args(&server, &StandIn::start(), "40", "4", "2000")).await;
    assert_eq!(code, 0, "{stderr}");
    for f in FIELDS {
        assert!(r.get(f).is_some(), "field {f} missing from {r}");
    }
    assert_eq!(r["mode"], "stream");
    assert_eq!(r["publisher"], "http");
    assert_eq!(u(&r, "clients_ok"), 40);
    assert_eq!(u(&r, "clients_failed"), 0);
    assert_eq!(u(&r, "published"), 2000);
    assert_eq!(u(&r, "publish_errors"), 0, "{r}");
    // 500 messages per topic, 10 connections per topic
    assert_eq!(u(&r, "expected"), 20_000);
    assert_eq!(u(&r, "delivered"), 20_000, "{stderr}");
    assert_eq!(u(&r, "loss"), 0);
    assert_eq!(
        u(&r, "gaps") + u(&r, "duplicates") + u(&r, "out_of_order"),
        0
    );
    assert_eq!(u(&r, "latency_count"), 20_000);
    assert!(r["latency_p99_ms"].as_f64().expect("p99") >= 0.0);
    assert!(r["server_rss_per_conn_bytes"].is_number(), "{r}");
    assert!(r["server_cpu_us_per_event"].is_number(), "{r}");
    assert!(stderr.contains("latency p50/p90/p99/p999"), "{stderr}");
    assert_eq!(server.published(), 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_body_like_nchan() {
    let server = MiniServer::start(Options {
        raw_body: true,
        ..Options::default()
    })
    .await;
    let stand_in = StandIn::start();
    let mut a = stream_args(&server, &stand_in, "12", "3", "600");
    a.extend(args(&[
        ("sub-path", "/events/{topic}"),
        ("latency-sample", "3"),
        ("read-coalesce", "200us"),
        ("threads", "1"),
    ]));
    let (code, r, stderr) = loadgen(a).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(u(&r, "clients_ok"), 12);
    assert_eq!(u(&r, "expected"), 600 * 4);
    assert_eq!(u(&r, "delivered"), 600 * 4);
    assert_eq!(u(&r, "latency_sample"), 3);
    assert!(u(&r, "latency_count") <= 800 + 2);
    assert!(stderr.contains("1 in 3 events"), "{stderr}");
    assert_eq!(r["read_coalesce_ms"].as_f64(), Some(0.2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_gaps_and_duplicates_are_counted() {
    let server = MiniServer::start(Options {
        drop_every: Some(10),
        dup_every: Some(7),
        ..Options::default()
    })
    .await;
    let (code, r, stderr) =
        loadgen(stream_args(&server, &StandIn::start(), "10", "5", "1000")).await;
    assert_eq!(code, 0, "{stderr}");
    // 1000 messages, ids 1..=1000: 100 dropped, each missed by the 2 subscribers of its
    // topic; dropped ids are multiples of 10, duplicated ones multiples of 7 but not 70
    assert_eq!(u(&r, "expected"), 2000);
    assert_eq!(u(&r, "loss"), 200, "{r}");
    assert_eq!(u(&r, "delivered"), 1800);
    assert!(u(&r, "gaps") <= 200 && u(&r, "gaps") >= 190, "{r}");
    assert_eq!(u(&r, "duplicates"), (142 - 14) * 2, "{r}");
    assert_eq!(u(&r, "out_of_order"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_publishes_are_not_expected() {
    let server = MiniServer::start(Options {
        fail_publish_every: Some(4),
        ..Options::default()
    })
    .await;
    let (code, r, stderr) = loadgen(stream_args(&server, &StandIn::start(), "6", "3", "800")).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(u(&r, "published"), 800);
    assert_eq!(u(&r, "publish_errors"), 200, "{r}");
    assert_eq!(r["publish_errors_by_kind"]["500"], 200);
    // 600 messages made it, each to the 2 subscribers of its topic
    assert_eq!(u(&r, "expected"), 1200);
    assert_eq!(u(&r, "delivered"), 1200);
    assert_eq!(u(&r, "loss"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_survives_keepalive_limits() {
    // as nginx (Nchan) does after `keepalive_requests`
    let server = MiniServer::start(Options {
        keepalive_requests: Some(37),
        ..Options::default()
    })
    .await;
    let (code, r, stderr) =
        loadgen(stream_args(&server, &StandIn::start(), "4", "2", "1000")).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(u(&r, "publish_errors"), 0, "{r}");
    assert_eq!(u(&r, "expected"), 2000);
    assert_eq!(u(&r, "delivered"), 2000);
    assert_eq!(u(&r, "gaps"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_statuses_and_idle_memory() {
    let server = MiniServer::start(Options::default()).await;
    let stand_in = StandIn::start();
    let pid = stand_in.pid();
    let (code, r, stderr) = loadgen(args(&[
        ("url", &server.url()),
        ("mode", "idle"),
        ("hold", "300ms"),
        ("clients", "20"),
        ("topics", "2"),
        ("server-pid", &pid),
    ]))
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(r["mode"], "idle");
    assert_eq!(r["publisher"], "none");
    assert_eq!(u(&r, "clients_ok"), 20);
    assert_eq!(u(&r, "published"), 0);
    assert!(r["server_rss_connected_bytes"].is_number());
    assert!(r["server_rss_per_conn_kib"].is_number());
    assert!(r["server_cpu_publish_s"].is_null());

    // a 503 topic
    let (code, r, stderr) = loadgen(args(&[
        ("url", &server.url()),
        ("mode", "idle"),
        ("hold", "0"),
        ("clients", "6"),
        ("topic-prefix", "reject"),
    ]))
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(u(&r, "clients_ok"), 0);
    assert_eq!(u(&r, "clients_failed"), 6);
    assert_eq!(r["failed_by_status"]["503"], 6);

    // nobody listening
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = free.local_addr().expect("addr").port();
    drop(free);
    let (code, r, stderr) = loadgen(args(&[
        ("url", &format!("http://127.0.0.1:{port}")),
        ("mode", "idle"),
        ("hold", "0"),
        ("clients", "3"),
    ]))
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(r["connect_errors"]["ConnectionRefused"], 3, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_non_zero() {
    for bad in [
        args(&[("url", "http://10.1.2.3:80")]),
        args(&[("url", "http://127.0.0.1:1"), ("clients", "0")]),
        args(&[("nats", "nats://192.168.0.1:4222")]),
        args(&[("bogus", "1")]),
    ] {
        let (code, r, stderr) = loadgen(bad.clone()).await;
        assert_ne!(code, 0, "{bad:?}: {stderr}");
        assert!(r.is_null());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn procs_children_results_are_merged() {
    let server = MiniServer::start(Options::default()).await;
    let stand_in = StandIn::start();
    let mut a = stream_args(&server, &stand_in, "31", "5", "1000");
    a.extend(args(&[("procs", "3"), ("threads", "1")]));
    let (code, r, stderr) = loadgen(a).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(u(&r, "procs"), 3);
    assert_eq!(u(&r, "clients_ok"), 31);
    // topics get 7, 6, 6, 6, 6 connections; 200 messages each
    assert_eq!(u(&r, "expected"), 31 * 200);
    assert_eq!(u(&r, "delivered"), 31 * 200, "{stderr}");
    assert_eq!(u(&r, "latency_count"), 31 * 200);
    assert_eq!(u(&r, "loss"), 0);
    assert!(r["gen_cpu_total_s"].as_f64().expect("cpu") > 0.0);
    assert!(u(&r, "gen_rss_bytes") > 0);
}
