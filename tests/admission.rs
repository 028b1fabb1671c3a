//! Admission control: token buckets, connection caps, client identity, hostile clients.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

/// Sends one request from `source` (a loopback address) and returns its status and
/// headers (the connection is closed by us right after the head).
async fn request_from(
    source: IpAddr,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        got.extend_from_slice(&buf[..n]);
        if n == 0 || got.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn localhost() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

fn retry_after(head: &str) -> Option<u64> {
    head.lines()
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_bucket_gets_429_with_retry_after() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| {
        b.set("limits", "connect_rate_per_ip", "1")
            .set("limits", "connect_burst_per_ip", "3")
    })
    .await;
    // Buckets start full: the burst passes (any path: streams and other requests).
    let s1 = open(&gw, "/events/a").await;
    let (status, _) = request_from(localhost(), gw.addr(), "/nowhere", &[]).await;
    assert_eq!(status, 404);
    let s2 = open(&gw, "/events/a").await;
    let r = sse_testkit::http::get(gw.addr(), "/events/a", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 429);
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(secs >= 1, "{secs}");
    assert_eq!(r.json().unwrap()["error"], "rate_limited");
    let (status, head) = request_from(localhost(), gw.addr(), "/nowhere", &[]).await;
    assert_eq!(status, 429);
    assert!(retry_after(&head).is_some_and(|s| s >= 1), "{head}");
    wait_metric(
        &gw,
        "sse_connections_total",
        &[("outcome", "rate_limited")],
        2.0,
    )
    .await;
    drop((s1, s2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fourth_stream_from_one_address_gets_503_when_the_cap_is_3() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b.set("limits", "max_connections_per_ip", "3")).await;
    let mut streams = Vec::new();
    for i in 0..3 {
        streams.push(open(&gw, &format!("/events/t{i}")).await);
    }
    let r = sse_testkit::http::get(gw.addr(), "/events/t9", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(r.json().unwrap()["error"], "over_capacity");
    // Another address is not affected.
    let (status, _) =
        request_from("127.0.0.2".parse().unwrap(), gw.addr(), "/events/t9", &[]).await;
    assert_eq!(status, 200);
    // A slot comes back when a stream ends.
    streams.pop();
    wait_metric(&gw, "sse_connections_active", &[], 2.0).await;
    streams.push(open(&gw, "/events/t9").await);
    wait_metric(
        &gw,
        "sse_connections_total",
        &[("outcome", "over_capacity")],
        1.0,
    )
    .await;
    wait_metric(
        &gw,
        "sse_admission_rejections_total",
        &[("reason", "max_connections_per_ip")],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sixth_stream_gets_503_when_the_global_cap_is_5() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b.set("limits", "max_connections", "5")).await;
    let mut streams = Vec::new();
    for i in 0..5 {
        streams.push(open(&gw, &format!("/events/t{i}")).await);
    }
    for source in ["127.0.0.1", "127.0.0.3"] {
        let (status, head) =
            request_from(source.parse().unwrap(), gw.addr(), "/events/x", &[]).await;
        assert_eq!(status, 503, "{head}");
        assert!(retry_after(&head).is_some_and(|s| s >= 1), "{head}");
    }
    drop(streams);
    wait_metric(&gw, "sse_connections_active", &[], 0.0).await;
    wait_metric(&gw, "sse_clients_with_streams", &[], 0.0).await;
    let _again = open(&gw, "/events/x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_topic_gets_503_other_topics_do_not() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b.set("limits", "max_subscribers_per_topic", "2")).await;
    let _a = open(&gw, "/events/hot").await;
    let _b = open(&gw, "/events/hot").await;
    let r = sse_testkit::http::get(gw.addr(), "/events?topic=cold&topic=hot", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    let _c = open(&gw, "/events/cold").await;
    wait_metric(&gw, "sse_connections_active", &[], 3.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| {
        b.set("limits", "connect_rate_per_ip", "1")
            .set("limits", "connect_burst_per_ip", "1")
            .set("limits", "trusted_proxies", "[\"127.0.0.1/32\"]")
    })
    .await;
    let proxy = localhost();
    let xff = |ip: &'static str| [("X-Forwarded-For", ip)];
    // Behind the trusted proxy every forwarded address has its own bucket.
    for client in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
        let (status, _) = request_from(proxy, gw.addr(), "/nowhere", &xff(client)).await;
        assert_eq!(status, 404, "{client}: first request passes");
    }
    let (status, _) = request_from(proxy, gw.addr(), "/nowhere", &xff("10.0.0.1")).await;
    assert_eq!(status, 429, "10.0.0.1 spent its token");
    // A hop list: the right-most untrusted address is the client.
    let (status, _) = request_from(
        proxy,
        gw.addr(),
        "/nowhere",
        &[("X-Forwarded-For", "10.0.0.1, 10.0.0.4")],
    )
    .await;
    assert_eq!(status, 404, "10.0.0.4 is a new client");
    // From an untrusted peer the header is ignored: spoofing does not buy buckets.
    let untrusted: IpAddr = "127.0.0.5".parse().unwrap();
    let (status, _) = request_from(untrusted, gw.addr(), "/nowhere", &xff("10.9.9.1")).await;
    assert_eq!(status, 404);
    let (status, _) = request_from(untrusted, gw.addr(), "/nowhere", &xff("10.9.9.2")).await;
    assert_eq!(status, 429, "the peer address is the key");
    let (status, _) = request_from(untrusted, gw.addr(), "/nowhere", &xff("not an ip")).await;
    assert_eq!(status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_within_the_header_timeout() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b.set("server", "header_timeout", "\"1s\"")).await;
    let mut slow = TcpStream::connect(gw.addr()).await.unwrap();
    let started = tokio::time::Instant::now();
    let request = b"GET /events/a HTTP/1.1\r\nHost: gw\r\nX-Slow: 1234567890\r\n\r\n";
    let mut cut = false;
    for byte in request {
        if slow.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        // One byte every 200 ms: the whole head would take ~12 s.
        let mut probe = [0u8; 512];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), slow.read(&mut probe)).await
        {
            let text = String::from_utf8_lossy(&probe[..n]);
            assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
            cut = true;
            break;
        }
    }
    let took = started.elapsed();
    assert!(cut, "the slow client was never cut");
    assert!(took < Duration::from_secs(5), "cut after {took:?}");
    // The gateway still serves everyone else.
    let _fine = open(&gw, "/events/a").await;
    wait_metric(
        &gw,
        "sse_admission_rejections_total",
        &[("reason", "header_timeout")],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_lines_and_heads_are_refused() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b).await;
    let long_target = format!("/events/{}", "a".repeat(9000));
    let (status, _) = request_from(localhost(), gw.addr(), &long_target, &[]).await;
    assert_eq!(status, 414);
    let big = "b".repeat(40 * 1024);
    let (status, head) =
        request_from(localhost(), gw.addr(), "/events/a", &[("X-Big", &big)]).await;
    assert_eq!(status, 431, "{head}");
    let _fine = open(&gw, "/events/a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_malformed_requests_leave_the_gateway_serving() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b).await;
    let garbage: [&[u8]; 5] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"FOO BAR BAZ\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"\0\0\0\0\0\0\0\0",
    ];
    let addr = gw.addr();
    let workers: Vec<_> = (0..20)
        .map(|w| {
            tokio::spawn(async move {
                let mut answered = 0;
                for i in 0..500 {
                    let bytes = garbage[(w + i) % garbage.len()];
                    let reply = sse_testkit::http::send_raw(addr, bytes, Duration::from_secs(10))
                        .await
                        .unwrap();
                    if reply.starts_with(b"HTTP/1.1 400") {
                        answered += 1;
                    }
                }
                answered
            })
        })
        .collect();
    let mut answered = 0;
    for w in workers {
        answered += w.await.unwrap();
    }
    assert_eq!(answered, 10_000, "every malformed request gets a 400");
    let mut s = open(&gw, "/events/ok").await;
    let client = nats.client().await.unwrap();
    publish(&client, "sse.ok", "still here", None)
        .await
        .unwrap();
    assert_eq!(s.next_event(WAIT).await.unwrap().data, "still here");
    wait_metric(&gw, "sse_connections_active", &[], 1.0).await;
}
