//! Reverse-proxy routes: round robin over healthy upstreams, health checks, timeouts,
//! forwarded headers, JSON 502/504, upstream SSE streamed through unbuffered.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::support::*;

/// A tiny upstream: `/healthz` is 200; every other path answers with its name and the
/// request head it received (so tests can see forwarded headers).
pub(crate) async fn upstream(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&got).into_owned();
                let body = format!("{name}\n{head}");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    (addr, task)
}

fn routed(
    b: GatewayBuilder,
    prefix: &str,
    upstreams: &[SocketAddr],
    extra: &str,
) -> GatewayBuilder {
    let list: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    b.raw(&format!(
        "[[routes]]\nprefix = \"{prefix}\"\nupstreams = [{}]\n{extra}\n",
        list.join(", ")
    ))
}

async fn get_body(gw: &Gateway, path: &str) -> (u16, String) {
    let r = sse_testkit::http::get(gw.addr(), path, &[("X-Forwarded-For", "203.0.113.9")])
        .await
        .unwrap();
    (r.status, r.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_healthy_upstreams_and_a_dead_one_is_taken_out() {
    let nats = NatsServer::start().unwrap();
    let (a, _a) = upstream("A").await;
    let (b, b_task) = upstream("B").await;
    let gw = ready(&nats, |g| {
        routed(g, "/api", &[a, b], "health_check = \"/healthz\"")
    })
    .await;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let (status, body) = get_body(&gw, "/api/orders/1?x=1").await;
        assert_eq!(status, 200, "{body}");
        seen.push(body.lines().next().unwrap_or_default().to_owned());
        // The upstream sees the path unchanged and who the client is: the peer, not
        // what an untrusted client claims (protocol §9, "Forwarding").
        assert!(body.contains("GET /api/orders/1?x=1 HTTP/1.1"), "{body}");
        assert!(
            body.to_lowercase()
                .contains("x-forwarded-for: 127.0.0.1\r\n"),
            "{body}"
        );
        assert!(!body.contains("203.0.113.9"), "{body}");
        assert!(
            body.to_lowercase().contains("x-forwarded-proto: http"),
            "{body}"
        );
    }
    assert!(
        seen.contains(&"A".to_owned()) && seen.contains(&"B".to_owned()),
        "{seen:?}"
    );

    // B dies; the health check takes it out and every request goes to A.
    b_task.abort();
    let _ = b_task.await;
    eventually(WAIT, "only A answers", || async {
        for _ in 0..10 {
            let (status, body) = get_body(&gw, "/api/x").await;
            anyhow::ensure!(status == 200 && body.starts_with('A'), "{status} {body}");
        }
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_json_502_and_504() {
    let nats = NatsServer::start().unwrap();
    let dead: SocketAddr = format!("127.0.0.1:{}", sse_testkit::free_port())
        .parse()
        .unwrap();
    // An upstream that accepts but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let gw = ready(&nats, |g| {
        let g = routed(g, "/dead", &[dead], "");
        routed(g, "/slow", &[silent_addr], "read_timeout = \"300ms\"")
    })
    .await;
    let r = sse_testkit::http::get(gw.addr(), "/dead/x", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.json().unwrap()["error"], "bad_gateway");
    let r = sse_testkit::http::get(gw.addr(), "/slow/x", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.json().unwrap()["error"], "gateway_timeout");
    // Routes are rate limited like everything else.
    let r = sse_testkit::http::get(gw.addr(), "/nowhere", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_event_stream_is_relayed_without_buffering() {
    let nats = NatsServer::start().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let release = Arc::new(Notify::new());
    let hold = release.clone();
    let _upstream = tokio::spawn(async move {
        // Health checks connect too: serve the first connection that sends a request.
        let mut buf = vec![0u8; 4096];
        let mut s = loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            if matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                break s;
            }
        };
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
        let first = "data: first\n\n";
        let _ = s
            .write_all(format!("{head}{:x}\r\n{first}\r\n", first.len()).as_bytes())
            .await;
        // The second frame only after the client has seen the first.
        hold.notified().await;
        let second = "data: second\n\n";
        let _ = s
            .write_all(format!("{:x}\r\n{second}\r\n0\r\n\r\n", second.len()).as_bytes())
            .await;
    });
    let gw = ready(&nats, |g| routed(g, "/upstream-sse", &[addr], "")).await;
    let mut s = open(&gw, "/upstream-sse/stream").await;
    let first = s.next_event(WAIT).await.unwrap();
    assert_eq!(first.data, "first");
    release.notify_one();
    let second = s.next_event(WAIT).await.unwrap();
    assert_eq!(second.data, "second");
}
