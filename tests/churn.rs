//! 10,000 streams through every way a stream can end — client close, client abort
//! (RST), slow-consumer cut, write timeout, shutdown — and every gauge back at 0 (bytes
//! owed to streams and held in rings included).

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

const NORMAL: usize = 8_500;
const ABORTED: usize = 500;
const SLOW: usize = 100;
const TIMED_OUT: usize = 20;
const AT_SHUTDOWN: usize = 880;

/// Opens a stream with a raw socket and waits for its opening comment.
async fn open_raw(addr: SocketAddr, path: &str, small_buffer: bool) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    if small_buffer {
        socket.set_recv_buffer_size(4096).unwrap();
    }
    let mut s = tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect timed out")
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(11).any(|w| w == b": connected") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no opening for {path}: {:?}",
                    String::from_utf8_lossy(&seen)
                )
            })
            .unwrap();
        assert!(
            n > 0,
            "closed before the opening: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"));
    s
}

/// Opens and ends `count` streams, `parallel` at a time.
async fn churn(addr: SocketAddr, count: usize, parallel: usize, abort: bool) {
    let workers: Vec<_> = (0..parallel)
        .map(|w| {
            tokio::spawn(async move {
                for i in (w..count).step_by(parallel) {
                    let s = open_raw(addr, &format!("/events/churn{}", i % 50), false).await;
                    if abort {
                        // SO_LINGER 0: close with a reset.
                        s.set_zero_linger().unwrap();
                    }
                    drop(s);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_through_every_exit_leave_every_gauge_at_zero() {
    let nats = NatsServer::start().unwrap();
    // Byte budgets above what the stalled topic gets: those streams hit the write timeout.
    let mut gw = ready(&nats, |b| {
        b.set("sse", "client_buffer", "8")
            .set("sse", "client_buffer_bytes", "67108864")
            .set("sse", "replay_bytes", "16777216")
            .set("sse", "write_timeout", "\"1s\"")
            .set("sse", "topic_linger", "\"200ms\"")
            .set("sse", "heartbeat", "\"1h\"")
            .set("server", "grace_period", "\"10s\"")
            .set("limits", "max_connections_per_ip", "100000")
    })
    .await;
    let addr = gw.addr();

    // Client close and client abort.
    churn(addr, NORMAL, 32, false).await;
    churn(addr, ABORTED, 32, true).await;

    // Slow consumers: stalled sockets on a topic that gets far more than 8 frames.
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        slow.push(open_raw(addr, "/events/slow", true).await);
    }
    // Write timeouts: stalled sockets on a topic that gets fewer than 8 (large) frames.
    let mut stalled = Vec::new();
    for _ in 0..TIMED_OUT {
        stalled.push(open_raw(addr, "/events/stall", true).await);
    }
    let client = nats.client().await.unwrap();
    for _ in 0..8 {
        publish(&client, "sse.stall", "s".repeat(1024 * 1024), None)
            .await
            .unwrap();
    }
    for _ in 0..300 {
        publish(&client, "sse.slow", "x".repeat(64 * 1024), None)
            .await
            .unwrap();
    }
    wait_metric(&gw, "sse_slow_consumer_disconnects_total", &[], SLOW as f64).await;
    wait_metric(
        &gw,
        "sse_write_timeout_disconnects_total",
        &[],
        TIMED_OUT as f64,
    )
    .await;
    drop((slow, stalled));

    // Every gauge back at 0.
    wait_metric(&gw, "sse_connections_active", &[], 0.0).await;
    wait_metric(&gw, "sse_clients_with_streams", &[], 0.0).await;
    wait_metric(&gw, "sse_topics_active", &[], 0.0).await;
    wait_metric(&gw, "sse_pending_bytes", &[], 0.0).await;
    wait_metric(&gw, "sse_ring_bytes", &[], 0.0).await;

    // Shutdown: the rest end with the gateway.
    let mut open = Vec::new();
    for i in 0..AT_SHUTDOWN {
        open.push(open_raw(addr, &format!("/events/last{}", i % 10), false).await);
    }
    wait_metric(&gw, "sse_connections_active", &[], AT_SHUTDOWN as f64).await;
    let m = gw.metrics().await.unwrap();
    assert_eq!(
        m.get("sse_connections_total", &[("outcome", "accepted")]),
        Some((NORMAL + ABORTED + SLOW + TIMED_OUT + AT_SHUTDOWN) as f64)
    );
    gw.terminate();
    for mut s in open {
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(
            rest.ends_with(b"0\r\n\r\n"),
            "{:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    let status = gw.wait_exit(WAIT).await.unwrap();
    assert!(status.success());
    let log = gw.log();
    let stopped = log
        .lines()
        .find(|l| l.contains("stopped"))
        .unwrap_or_else(|| panic!("no final line in the log:\n{log}"));
    for gauge in ["open_streams=0", "clients_with_streams=0", "stream_slots=0"] {
        assert!(stopped.contains(gauge), "{stopped}");
    }
}
