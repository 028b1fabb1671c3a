//! Process lifecycle: SIGTERM drain, port in use, metrics at start-up.

use std::time::Duration;

use sse_testkit::StreamEnd;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_every_stream_with_retry_and_exits_zero() {
    let nats = NatsServer::start().unwrap();
    let mut gw = ready(&nats, |b| {
        b.set("server", "grace_period", "\"5s\"")
            .set("sse", "retry", "\"1500ms\"")
    })
    .await;
    let mut streams = Vec::new();
    for i in 0..5 {
        let mut s = open(&gw, &format!("/events/t{i}")).await;
        s.next_item(WAIT).await.unwrap();
        streams.push(s);
    }
    gw.terminate();
    for s in &mut streams {
        let items = s.wait_closed(WAIT).await.unwrap();
        // A short, jittered reconnection delay: min(sse.retry, 1 s) ± 50 %.
        assert!(
            items
                .iter()
                .any(|i| matches!(i, Item::Retry(ms) if (500..=1500).contains(ms))),
            "{items:?}"
        );
        assert_eq!(
            s.end(),
            Some(StreamEnd::Terminated),
            "clean end of the chunked body"
        );
    }
    let status = gw.wait_exit(WAIT).await.unwrap();
    assert!(status.success(), "{status:?}\n{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_nothing_open_exits_quickly() {
    let nats = NatsServer::start().unwrap();
    let mut gw = ready(&nats, |b| b.set("server", "grace_period", "\"30s\"")).await;
    gw.terminate();
    // Well before the grace period: nothing to wait for.
    let status = gw.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config =
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    let out = sse_testkit::run_config(bin(), &config, Duration::from_secs(20)).unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.listen"), "{stderr}");
    assert!(stderr.to_lowercase().contains("in use"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spec_metric_is_exposed_at_start_up() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b).await;
    let m = gw.metrics().await.unwrap();
    for name in [
        "sse_connections_active",
        "sse_connections_total",
        "sse_events_sent_total",
        "sse_events_dropped_total",
        "sse_slow_consumer_disconnects_total",
        "sse_topics_active",
        "sse_upstream_messages_total",
        "sse_replayed_events_total",
        "sse_nats_connected",
        "sse_delivery_latency_seconds",
        "sse_ring_bytes",
        "sse_pending_bytes",
        "sse_streams_closed_total",
    ] {
        assert!(m.names().contains(name), "{name} missing");
    }
    for outcome in [
        "accepted",
        "rate_limited",
        "over_capacity",
        "bad_request",
        "unauthorized",
    ] {
        assert_eq!(
            m.get("sse_connections_total", &[("outcome", outcome)]),
            Some(0.0)
        );
    }
    for reason in ["slow_consumer", "invalid_utf8", "too_large"] {
        assert_eq!(
            m.get("sse_events_dropped_total", &[("reason", reason)]),
            Some(0.0)
        );
    }
    assert_eq!(
        m.get(
            "sse_admission_rejections_total",
            &[("reason", "max_topics")]
        ),
        Some(0.0)
    );
    for reason in [
        "client_gone",
        "slow_consumer",
        "write_timeout",
        "token_expired",
        "revoked",
        "shutdown",
    ] {
        assert_eq!(
            m.get("sse_streams_closed_total", &[("reason", reason)]),
            Some(0.0),
            "{reason}"
        );
    }
    // A client that leaves is counted as gone.
    let s = open(&gw, "/events/gone").await;
    drop(s);
    wait_metric(
        &gw,
        "sse_streams_closed_total",
        &[("reason", "client_gone")],
        1.0,
    )
    .await;
    assert_eq!(m.get("sse_ring_bytes", &[]), Some(0.0));
    assert_eq!(m.get("sse_pending_bytes", &[]), Some(0.0));
    assert_eq!(m.get("sse_delivery_latency_seconds_count", &[]), Some(0.0));
    assert_eq!(m.get("sse_nats_connected", &[]), Some(1.0));
    let health = sse_testkit::http::get(gw.admin_addr(), "/healthz", &[])
        .await
        .unwrap();
    assert_eq!(health.status, 200);
}
