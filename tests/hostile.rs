//! The sealed edge (protocol §9): every request on every connection passes the same front.
//! Each test is named for the attack it guards against and ends by checking that a
//! normal client still streams.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::support::*;

// ----- helpers ---------------------------------------------------------------------

/// An embedded-mode gateway (no broker) with roomy buckets, plus `configure`.
async fn memory_gateway(configure: impl FnOnce(GatewayBuilder) -> GatewayBuilder) -> Gateway {
    let b = Gateway::builder(bin())
        .set("bus", "kind", "\"memory\"")
        .set("limits", "connect_rate_per_ip", "100000")
        .set("limits", "connect_burst_per_ip", "100000");
    let gw = configure(b).spawn().await.unwrap();
    gw.wait_ready(WAIT).await.unwrap();
    gw
}

/// A normal client still streams: it opens a stream and receives an event published
/// through the publish API (retrying while a bucket refills or a cap frees).
async fn still_streams(gw: &Gateway) {
    still_streams_as(gw, &[]).await;
}

/// [`still_streams`], publishing with `headers` (a token when auth is on).
async fn still_streams_as(gw: &Gateway, headers: &[(&str, &str)]) {
    let mut s = eventually(WAIT, "a normal stream opens", || async {
        let s = SseStream::open(gw.addr(), "/events/still.ok", &[]).await?;
        anyhow::ensure!(s.status() == 200, "status {}", s.status());
        Ok(s)
    })
    .await
    .unwrap();
    eventually(WAIT, "a publish is accepted", || async {
        let r =
            sse_testkit::http::request(gw.addr(), "POST", "/publish/still.ok", headers, b"fine")
                .await?;
        anyhow::ensure!(r.status == 202, "status {}: {}", r.status, r.text());
        Ok(())
    })
    .await
    .unwrap();
    let event = s.next_event(WAIT).await.unwrap();
    assert_eq!(event.data, "fine");
}

/// Reads one response (head and `Content-Length` body) from `stream`; `None` when the
/// connection closed before a complete head.
async fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(u16, String, Vec<u8>)> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())
                        .flatten()
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let body = buf[end + 4..end + 4 + length].to_vec();
                buf.drain(..end + 4 + length);
                let status = head.split(' ').nth(1)?.parse().ok()?;
                return Some((status, head, body));
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Whether the server closes `stream` within `within` (reads and drops anything sent).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// A raw request on a fresh connection; the response and whether the server then closed.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> (Option<(u16, String, Vec<u8>)>, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let mut buf = Vec::new();
    let response = read_response(&mut stream, &mut buf).await;
    let closed = closed_within(&mut stream, WAIT).await;
    (response, closed)
}

fn json_of(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(body)))
}

/// An upstream that records every byte it receives and answers each request (keeping
/// the connection) with its name and the request head it got.
#[derive(Clone)]
struct Recorder {
    addr: SocketAddr,
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let record = bytes.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let mut got: Vec<u8> = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&got[..end + 4]).into_owned();
                            let length: usize = head
                                .lines()
                                .find_map(|l| {
                                    let (n, v) = l.split_once(':')?;
                                    n.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse().ok())
                                        .flatten()
                                })
                                .unwrap_or(0);
                            if got.len() < end + 4 + length {
                                break;
                            }
                            got.drain(..end + 4 + length);
                            let body = format!("{name}\n{head}");
                            let reply = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if s.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                record.lock().unwrap().extend_from_slice(&chunk[..n]);
                                got.extend_from_slice(&chunk[..n]);
                            }
                        }
                    }
                });
            }
        });
        Self { addr, bytes }
    }

    fn recorded(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }
}

fn route(b: GatewayBuilder, prefix: &str, upstream: &Recorder) -> GatewayBuilder {
    // A TCP health check: it connects and sends nothing, so the recorder records only
    // what the gateway forwards.
    b.raw(&format!(
        "[[routes]]\nprefix = \"{prefix}\"\nupstreams = [\"{}\"]\n",
        upstream.addr
    ))
}

/// Waits until the route's upstream is healthy (a request reaches it).
async fn route_ready(gw: &Gateway, path: &str) {
    eventually(WAIT, "the route's upstream is healthy", || async {
        let r = sse_testkit::http::get(gw.addr(), path, &[]).await?;
        anyhow::ensure!(r.status == 200, "status {}", r.status);
        Ok(())
    })
    .await
    .unwrap();
}

// ----- keep-alive, deadlines, sizes, sockets ---------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_kept_alive_connections_are_closed_after_keepalive_timeout() {
    let gw = memory_gateway(|b| b.set("server", "keepalive_timeout", "\"2s\"")).await;
    let mut tasks = Vec::new();
    for _ in 0..300 {
        let addr = gw.addr();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /nope HTTP/1.1\r\nHost: gw\r\n\r\n")
                .await
                .unwrap();
            let mut buf = Vec::new();
            let (status, head, _) = read_response(&mut s, &mut buf).await.unwrap();
            assert_eq!(status, 404);
            assert!(head.contains("Connection: keep-alive"), "{head}");
            let answered = Instant::now();
            assert!(
                closed_within(&mut s, WAIT).await,
                "still open after {WAIT:?}"
            );
            answered.elapsed()
        }));
    }
    for task in tasks {
        let open_for = task.await.unwrap();
        // Kept for the timeout, not closed at once; closed well before the default 60 s.
        assert!(open_for >= Duration::from_millis(1500), "{open_for:?}");
    }
    still_streams(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_timeout_zero_closes_after_each_response() {
    let gw = memory_gateway(|b| b.set("server", "keepalive_timeout", "\"0s\"")).await;
    let (response, closed) = raw(gw.addr(), b"GET /nope HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    let (status, head, _) = response.unwrap();
    assert_eq!(status, 404);
    assert!(head.contains("Connection: close"), "{head}");
    assert!(closed);
    still_streams(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_dribbled_byte_by_byte_is_cut_at_header_timeout() {
    let gw = memory_gateway(|b| b.set("server", "header_timeout", "\"1s\"")).await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET /nope HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut s, &mut buf).await.unwrap().0, 404);
    // The second head, one byte every 200 ms: 60 bytes would take 12 s.
    let (mut rd, mut wr) = s.into_split();
    let dribble = tokio::spawn(async move {
        for b in b"GET /nope HTTP/1.1\r\nHost: gw\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
        {
            if wr.write_all(&[*b]).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        true
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, rd.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("\"error\":\"request_timeout\""), "{text}");
    // Cut before the dribble could finish.
    assert!(!dribble.await.unwrap(), "the whole slow head was accepted");
    still_streams(&gw).await;
}

/// A head of 600 KB in 200 fields.
fn huge_head() -> Vec<u8> {
    let mut head = b"GET /nope HTTP/1.1\r\nHost: gw\r\n".to_vec();
    for i in 0..200 {
        head.extend_from_slice(format!("X-Big-{i}: {}\r\n", "a".repeat(3000)).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_with_a_600kb_head_gets_431() {
    let gw = memory_gateway(|b| b).await;
    let s = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(b"GET /nope HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    // Written while we read: the gateway answers before it has read it all.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&huge_head()).await;
        wr
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, rd.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    let second = text
        .match_indices("HTTP/1.1 ")
        .nth(1)
        .map(|(i, _)| &text[i..])
        .unwrap_or_else(|| panic!("one answer only: {text}"));
    assert!(text.starts_with("HTTP/1.1 404 "), "{text}");
    assert!(second.starts_with("HTTP/1.1 431 "), "{second}");
    assert!(
        second.contains("\"error\":\"headers_too_large\""),
        "{second}"
    );
    drop(writer.await);
    still_streams(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_600kb_head_over_h2_gets_431_with_the_json_body() {
    let gw = memory_gateway(|b| b).await;
    let h2c = h2c_client();
    let url = format!("http://{}/nope", gw.addr());
    // A first request on the connection, then the huge one on the same connection.
    let first = h2c.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 404);
    let mut huge = h2c.get(&url);
    for i in 0..200 {
        huge = huge.header(format!("x-big-{i}"), "a".repeat(3000));
    }
    let r = huge.send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 431);
    let body = json_of(&r.bytes().await.unwrap());
    assert_eq!(body["error"], "headers_too_large");
    still_streams(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_max_sockets_per_ip_is_answered_503_and_closed() {
    let gw = memory_gateway(|b| {
        b.set("limits", "max_sockets_per_ip", "5")
            .set("server", "header_timeout", "\"60s\"")
    })
    .await;
    // Six idle sockets: whichever is accepted last is over the cap. The five others are
    // silent (no request yet, a long header timeout); the refused one is answered.
    let (tx, mut answers) = tokio::sync::mpsc::channel(6);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(gw.addr()).await.unwrap();
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = Vec::new();
            let answer = read_response(&mut s, &mut buf).await;
            let closed = closed_within(&mut s, WAIT).await;
            let _ = tx.send((answer, closed)).await;
        }));
    }
    let (answer, closed) = tokio::time::timeout(WAIT, answers.recv())
        .await
        .unwrap()
        .unwrap();
    let (status, head, body) = answer.unwrap();
    assert_eq!(status, 503, "{head}");
    let retry: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_eq!(json_of(&body)["error"], "over_capacity");
    assert!(closed, "the refused socket stayed open");
    assert!(
        answers.try_recv().is_err(),
        "more than one socket was refused"
    );
    assert_eq!(
        metric(
            &gw,
            "sse_admission_rejections_total",
            &[("reason", "max_sockets_per_ip")]
        )
        .await,
        1.0
    );
    for task in tasks {
        task.abort();
    }
    still_streams(&gw).await;
}

// ----- framing, pipelining, paths, forwarding --------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_framings_are_refused_and_nothing_is_forwarded() {
    let upstream = Recorder::start("U").await;
    let gw = memory_gateway(|b| route(b, "/api", &upstream)).await;
    for (what, request) in [
        (
            "CL+TE",
            "POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE+CL",
            "POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        ),
        (
            "xchunked",
            "POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE list",
            "POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "doubled TE",
            "POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "CL 3, 3",
            "POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc",
        ),
        (
            "two CLs",
            "POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        ),
        (
            "LF-only chunks",
            "POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
        ),
        (
            "HTTP/1.0 + TE",
            "POST /api/x HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
    ] {
        let (response, closed) = raw(gw.addr(), request.as_bytes()).await;
        let (status, head, body) = response.unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(status, 400, "{what}: {head}");
        assert_eq!(json_of(&body)["error"], "bad_request", "{what}");
        assert!(closed, "{what}: the connection stayed open");
    }
    assert_eq!(upstream.recorded(), "", "something was forwarded");
    // A well-framed chunked body still goes through.
    let (response, _) = raw(
        gw.addr(),
        b"POST /api/ok HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(response.unwrap().0, 200);
    assert!(upstream.recorded().contains("POST /api/ok HTTP/1.1"));
    still_streams(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_after_a_proxied_one_are_served_in_order() {
    let upstream = Recorder::start("U").await;
    let gw = memory_gateway(|b| route(b, "/api", &upstream)).await;
    route_ready(&gw, "/api/warm").await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(
        b"POST /api/first HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
GET /nope HTTP/1.1\r\nHost: h\r\n\r\n\
GET /api/third HTTP/1.1\r\nHost: h\r\n\r\n\
OPTIONS /events/a HTTP/1.1\r\nHost: h\r\n\r\n\
GET /api/fifth HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    while let Some((status, _, body)) = read_response(&mut s, &mut buf).await {
        answers.push((status, String::from_utf8_lossy(&body).into_owned()));
    }
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [200, 404, 200, 204, 200], "{answers:?}");
    assert!(answers[0].1.contains("POST /api/first HTTP/1.1"));
    assert!(answers[2].1.contains("GET /api/third HTTP/1.1"));
    assert!(answers[4].1.contains("GET /api/fifth HTTP/1.1"));
    still_streams(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_preflights_take_tokens_from_the_bucket() {
    let gw = memory_gateway(|b| {
        b.set("limits", "connect_rate_per_ip", "1")
            .set("limits", "connect_burst_per_ip", "100")
    })
    .await;
    let one = b"OPTIONS /events/a HTTP/1.1\r\nHost: h\r\nOrigin: https://a.example\r\n\r\n";
    let many: Vec<u8> = one.repeat(500);
    let s = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&many).await;
        wr
    });
    let mut answers = Vec::new();
    let _ = tokio::time::timeout(WAIT, rd.read_to_end(&mut answers)).await;
    let text = String::from_utf8_lossy(&answers);
    let ok = text.matches("HTTP/1.1 204 ").count();
    let limited = text.matches("HTTP/1.1 429 ").count();
    assert!((100..=103).contains(&ok), "{ok} preflights passed");
    assert_eq!(limited, 1, "a 429 then the connection closes");
    drop(writer.await);
    still_streams(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_cannot_escape_a_route_prefix() {
    let upstream = Recorder::start("U").await;
    let gw = memory_gateway(|b| route(b, "/api/orders", &upstream)).await;
    for path in [
        "/api/orders/../../internal/admin",
        "/api/orders/%2e%2e/%2e%2e/internal/admin",
        "/api/orders/%2E%2e/internal",
        "/api/orders/.%2E/internal",
        "/api/orders/..%2f..%2finternal",
        "/api/orders/..%2F..%2Finternal",
        "/api/orders/..%5c..%5cinternal",
        "/api/orders/a\\b",
        "/api/orders/a%00",
        "/api/orders/./x",
        "/api/orders/..;/internal",
        "/events/..%2fadmin",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
        let (response, _) = raw(gw.addr(), request.as_bytes()).await;
        let (status, head, body) = response.unwrap_or_else(|| panic!("{path}: no answer"));
        assert_eq!(status, 400, "{path}: {head}");
        let code = json_of(&body)["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            code == "bad_path" || code == "bad_request",
            "{path}: {code}"
        );
    }
    // Whole segments only.
    let r = sse_testkit::http::get(gw.addr(), "/api/ordersX/1", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(upstream.recorded(), "", "something was forwarded");
    route_ready(&gw, "/api/orders/1").await;
    assert!(upstream.recorded().contains("GET /api/orders/1 HTTP/1.1"));
    still_streams(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_cannot_forge_forwarding_headers_and_tokens_are_stripped() {
    let upstream = Recorder::start("U").await;
    let gw = memory_gateway(|b| route(b, "/api", &upstream)).await;
    route_ready(&gw, "/api/warm").await;
    let r = sse_testkit::http::get(
        gw.addr(),
        "/api/a?x=1&access%5Ftoken=LEAK1&access_token=LEAK2&%61ccess_token=LEAK3&y=2",
        &[
            ("X-Forwarded-For", "6.6.6.6"),
            ("Forwarded", "for=6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = r.text().to_lowercase();
    assert!(seen.contains("get /api/a?x=1&y=2 http/1.1"), "{seen}");
    assert!(seen.contains("x-forwarded-for: 127.0.0.1\r\n"), "{seen}");
    assert!(!seen.contains("6.6.6.6"), "{seen}");
    assert!(!seen.contains("forwarded: for"), "{seen}");
    assert!(!seen.contains("x-real-ip"), "{seen}");
    assert!(!seen.contains("leak"), "{seen}");
    still_streams(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_gets_itself_appended_to_the_forwarded_chain() {
    let upstream = Recorder::start("U").await;
    let gw = memory_gateway(|b| {
        route(b, "/api", &upstream).set("limits", "trusted_proxies", "[\"127.0.0.1\"]")
    })
    .await;
    route_ready(&gw, "/api/warm").await;
    let r = sse_testkit::http::get(
        gw.addr(),
        "/api/a",
        &[
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Real-IP", "203.0.113.7"),
        ],
    )
    .await
    .unwrap();
    let seen = r.text().to_lowercase();
    assert!(
        seen.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\r\n"),
        "{seen}"
    );
    assert!(seen.contains("x-real-ip: 203.0.113.7"), "{seen}");
    still_streams(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_of_one_prefix_share_a_bucket() {
    // Behind a trusted proxy the forwarded address is the client; IPv6 ones are keyed by
    // their /64 (limits.ipv6_prefix).
    let gw = memory_gateway(|b| {
        b.set("limits", "trusted_proxies", "[\"127.0.0.1\"]")
            .set("limits", "connect_rate_per_ip", "1")
            .set("limits", "connect_burst_per_ip", "2")
    })
    .await;
    let status = |xff: &'static str| {
        let addr = gw.addr();
        async move {
            sse_testkit::http::get(addr, "/nope", &[("X-Forwarded-For", xff)])
                .await
                .unwrap()
                .status
        }
    };
    assert_eq!(status("2001:db8:1:2::1").await, 404);
    assert_eq!(status("2001:db8:1:2:ffff::2").await, 404);
    assert_eq!(
        status("2001:db8:1:2::3").await,
        429,
        "same /64, same bucket"
    );
    assert_eq!(status("2001:db8:1:3::1").await, 404, "another /64");
    still_streams(&gw).await;
}

// ----- publish, CORS, proxy-library errors, logs -----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_over_max_publish_bytes_is_413_not_retryable() {
    let gw = memory_gateway(|b| b.set("limits", "max_publish_bytes", "1000")).await;
    let r = sse_testkit::http::request(gw.addr(), "POST", "/publish/big", &[], &[b'x'; 1001])
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.json().unwrap()["error"], "payload_too_large");
    assert_eq!(r.header("retry-after"), None);
    let r = sse_testkit::http::request(gw.addr(), "POST", "/publish/big", &[], &[b'x'; 1000])
        .await
        .unwrap();
    assert_eq!(r.status, 202);
    still_streams(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_nats_cannot_carry_is_413_by_default() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b).await;
    // Just under 1 MiB: NATS counts the headers too, so this can never be published.
    let body = vec![b'x'; 1_048_536];
    let r = sse_testkit::http::request(gw.addr(), "POST", "/publish/big", &[], &body)
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json().unwrap()["error"], "payload_too_large");
    let body = vec![b'x'; 1024 * 1024 - 1024];
    let r = sse_testkit::http::request(gw.addr(), "POST", "/publish/big", &[], &body)
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let mut s = open(&gw, "/events/nats.ok").await;
    let client = nats.client().await.unwrap();
    publish(&client, "sse.nats.ok", "fine", None).await.unwrap();
    assert_eq!(s.next_event(WAIT).await.unwrap().data, "fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_event_header_means_no_type_and_the_event_is_delivered() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b).await;
    let mut s = open(&gw, "/events/typed").await;
    let client = nats.client().await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Sse-Event", "");
    client
        .publish_with_headers("sse.typed", headers, "untyped".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let event = s.next_event(WAIT).await.unwrap();
    assert_eq!(event.data, "untyped");
    assert_eq!(event.event, None);
    publish(&client, "sse.typed", "typed", Some("kind"))
        .await
        .unwrap();
    let event = s.next_event(WAIT).await.unwrap();
    assert_eq!(event.event.as_deref(), Some("kind"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_any_origin_with_credentials_is_a_configuration_error() {
    let out = sse_testkit::check_config(
        bin(),
        "[cors]\nallowed_origins = [\"*\"]\nallow_credentials = true\n",
    )
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cors.allowed_origins"), "{stderr}");
    assert!(stderr.contains("cors.allow_credentials"), "{stderr}");
}

fn token(claims: serde_json::Value) -> String {
    hs256(claims)
}

fn with_auth(b: GatewayBuilder) -> GatewayBuilder {
    b.set("auth", "enabled", "true")
        .set("auth", "hs256_secret", &format!("\"{AUTH_SECRET}\""))
        .set("auth", "public_topics", "[\"still.>\"]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_only_cross_site_publish_is_refused() {
    let gw = memory_gateway(|b| {
        with_auth(b).set("cors", "allowed_origins", "[\"https://app.example\"]")
    })
    .await;
    let t = token(json!({"publish": [">"]}));
    let cookie = format!("sse_token={t}");
    let bearer = format!("Bearer {t}");
    let post = |headers: Vec<(&'static str, String)>| {
        let addr = gw.addr();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            sse_testkit::http::request(addr, "POST", "/publish/still.x", &h, b"x")
                .await
                .unwrap()
                .status
        }
    };
    let own = format!("http://{}", gw.addr());
    for (headers, want) in [
        (
            vec![
                ("Cookie", cookie.clone()),
                ("Origin", "https://evil.example".to_owned()),
            ],
            403,
        ),
        // Listed for CORS but not for credentials: still refused.
        (
            vec![
                ("Cookie", cookie.clone()),
                ("Origin", "https://app.example".to_owned()),
            ],
            403,
        ),
        (
            vec![
                ("Cookie", cookie.clone()),
                ("Sec-Fetch-Site", "cross-site".to_owned()),
            ],
            403,
        ),
        // Same origin, no browser at all, or a token in the header: fine.
        (vec![("Cookie", cookie.clone()), ("Origin", own)], 202),
        (vec![("Cookie", cookie.clone())], 202),
        (
            vec![
                ("Authorization", bearer.clone()),
                ("Origin", "https://evil.example".to_owned()),
            ],
            202,
        ),
    ] {
        let what = format!("{headers:?}");
        assert_eq!(post(headers).await, want, "{what}");
    }
    still_streams_as(&gw, &[("Authorization", &bearer)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_librarys_own_errors_carry_the_json_body() {
    let upstream = Recorder::start("U").await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = closed.local_addr().unwrap();
    drop(closed);
    let gw = memory_gateway(|b| {
        route(b, "/api", &upstream).raw(&format!(
            "[[routes]]\nprefix = \"/down\"\nupstreams = [\"{down}\"]\n"
        ))
    })
    .await;
    // CONNECT is never tunnelled, over HTTP/1 and HTTP/2 alike.
    let (response, _) = raw(gw.addr(), b"CONNECT /api/x HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let (status, head, body) = response.unwrap();
    assert_eq!(status, 405, "{head}");
    assert!(head.contains("Allow: "), "{head}");
    assert_eq!(json_of(&body)["error"], "method_not_allowed");
    // An upstream that cannot be reached: Pingora's failure, our JSON.
    let r = sse_testkit::http::get(gw.addr(), "/down/x", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json().unwrap()["error"], "bad_gateway");
    // Every status an HTTP/2 client gets from the gateway is JSON too.
    let h2c = h2c_client();
    for (method, path, status) in [("GET", "/nope", 404), ("GET", "/api/a%2Fb", 400)] {
        let r = h2c
            .request(
                method.parse().unwrap(),
                format!("http://{}{path}", gw.addr()),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path}");
        let body = json_of(&r.bytes().await.unwrap());
        assert!(body["error"].is_string());
    }
    still_streams(&gw).await;
}

/// Opens a connection from `source`, sends `bytes`, resets it (SO_LINGER 0) at once.
async fn send_and_reset(addr: SocketAddr, bytes: &[u8], read_first: bool) {
    let socket = TcpSocket::new_v4().unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if read_first {
        let mut buf = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
    }
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_appear_in_any_log_line() {
    let upstream = Recorder::start("U").await;
    let gw = memory_gateway(|b| {
        with_auth(route(b, "/api", &upstream)).env(
            "RUST_LOG",
            "debug,pingora_core=trace,pingora_proxy=trace,h2=trace",
        )
    })
    .await;
    route_ready(&gw, "/api/warm").await;
    let claims = json!({"subscribe": ["secret.>"], "publish": ["secret.>"]});
    let tokens: Vec<String> = (0..10)
        .map(|i| {
            let mut c = claims.clone();
            c["n"] = json!(i);
            token(c)
        })
        .collect();
    let addr = gw.addr();
    // A stream on a kept-alive connection after another request, the token in the query,
    // then a reset.
    let keepalive = format!(
        "GET /nope HTTP/1.1\r\nHost: h\r\n\r\nGET /events/secret.1?access_token={} HTTP/1.1\r\nHost: h\r\n\r\n",
        tokens[0]
    );
    send_and_reset(addr, keepalive.as_bytes(), true).await;
    // The same through a route, with the name percent-encoded, and the cookie and the
    // Authorization header.
    let proxied = format!(
        "GET /api/x?access%5Ftoken={} HTTP/1.1\r\nHost: h\r\nCookie: sse_token={}\r\nAuthorization: Bearer {}\r\n\r\n",
        tokens[1], tokens[2], tokens[3]
    );
    send_and_reset(addr, proxied.as_bytes(), true).await;
    // A publish reset mid-body, a malformed head, an invalid token, a refused request.
    let publish = format!(
        "POST /publish/secret.1?access_token={} HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc",
        tokens[4]
    );
    send_and_reset(addr, publish.as_bytes(), false).await;
    let malformed = format!("GET http://x/?access_token={} HTTP/1.1\r\n\r\n", tokens[5]);
    send_and_reset(addr, malformed.as_bytes(), true).await;
    let wrong = format!("{}x", tokens[6]);
    let r = sse_testkit::http::get(
        addr,
        "/events/secret.1",
        &[("Cookie", &format!("sse_token={wrong}"))],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    // HTTP/2, with the token in the header and in the query.
    let h2c = h2c_client();
    let r = h2c
        .get(format!("http://{addr}/api/y?access_token={}", tokens[7]))
        .header("Authorization", format!("Bearer {}", tokens[8]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = h2c
        .get(format!("http://{addr}/nope?access_token={}", tokens[9]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Streams end and are logged; then nothing in any line holds a token.
    let publisher = format!("Bearer {}", token(json!({"publish": ["still.>"]})));
    still_streams_as(&gw, &[("Authorization", &publisher)]).await;
    eventually(WAIT, "the reset stream is logged", || async {
        anyhow::ensure!(gw.log().contains("stream closed"), "not yet");
        Ok(())
    })
    .await
    .unwrap();
    let log = gw.log();
    assert!(log.contains("DEBUG"), "the gateway did not log at debug");
    for (i, t) in tokens.iter().enumerate() {
        // The signature is the part no other string shares.
        let signature = t.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "token {i} is in the log:\n{log}");
    }
}
