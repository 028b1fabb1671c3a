//! CORS, HTTP/2 (h2c and TLS with ALPN h2), the demo page.

use reqwest::Version;

use crate::support::*;

fn memory(b: GatewayBuilder) -> GatewayBuilder {
    b.set("bus", "kind", "\"memory\"")
        .set("limits", "connect_burst_per_ip", "100000")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_and_responses_echo_allowed_origins_only() {
    let gw = memory(Gateway::builder(bin()))
        .set("cors", "allowed_origins", "[\"https://app.example\"]")
        .set("cors", "allow_credentials", "true")
        .spawn()
        .await
        .unwrap();
    for (path, method) in [("/events/a", "GET"), ("/publish/a", "POST")] {
        let r = sse_testkit::http::request(
            gw.addr(),
            "OPTIONS",
            path,
            &[
                ("Origin", "https://app.example"),
                ("Access-Control-Request-Method", method),
                ("Access-Control-Request-Headers", "last-event-id"),
            ],
            b"",
        )
        .await
        .unwrap();
        assert!((200..300).contains(&r.status), "{path}: {}", r.status);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://app.example")
        );
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert!(
            r.header("access-control-allow-methods")
                .is_some_and(|m| m.contains(method))
        );
        let other = sse_testkit::http::request(
            gw.addr(),
            "OPTIONS",
            path,
            &[
                ("Origin", "https://evil.example"),
                ("Access-Control-Request-Method", method),
            ],
            b"",
        )
        .await
        .unwrap();
        assert!((200..300).contains(&other.status));
        assert_eq!(other.header("access-control-allow-origin"), None);
    }
    let s = SseStream::open(gw.addr(), "/events/a", &[("Origin", "https://app.example")])
        .await
        .unwrap();
    assert_eq!(
        s.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let s = SseStream::open(
        gw.addr(),
        "/events/a",
        &[("Origin", "https://evil.example")],
    )
    .await
    .unwrap();
    assert_eq!(s.status(), 200);
    assert_eq!(s.header("access-control-allow-origin"), None);
    let r = sse_testkit::http::request(
        gw.addr(),
        "POST",
        "/publish/a",
        &[("Origin", "https://app.example")],
        b"x",
    )
    .await
    .unwrap();
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_over_h2c_and_tls_h2() {
    let dir = tempfile_dir();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls_port = sse_testkit::free_port();
    let gw = memory(Gateway::builder(bin()))
        .raw(&format!(
            "[tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert_path.display(),
            key_path.display()
        ))
        .spawn()
        .await
        .unwrap();

    let h2c = h2c_client();
    let tls = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let mut over_h2c = h2c
        .get(format!("http://{}/events/h2", gw.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(over_h2c.version(), Version::HTTP_2);
    assert_eq!(over_h2c.status(), 200);
    assert_eq!(
        over_h2c.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut over_tls = tls
        .get(format!("https://127.0.0.1:{tls_port}/events/h2"))
        .send()
        .await
        .unwrap();
    assert_eq!(over_tls.version(), Version::HTTP_2, "ALPN picked h2");
    read_until(&mut over_h2c, ": connected").await;
    read_until(&mut over_tls, ": connected").await;
    // Publish over HTTP/2 too.
    let r = h2c
        .post(format!("http://{}/publish/h2", gw.addr()))
        .body("over two")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    read_until(&mut over_h2c, "data: over two").await;
    read_until(&mut over_tls, "data: over two").await;
    // A stream the client drops frees its slot.
    drop((over_h2c, over_tls));
    wait_metric(&gw, "sse_connections_active", &[], 0.0).await;
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sse-edge-{}-{}",
        std::process::id(),
        sse_testkit::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_is_served() {
    let gw = memory(Gateway::builder(bin())).spawn().await.unwrap();
    let r = sse_testkit::http::get(gw.addr(), "/demo", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html"))
    );
    assert!(r.text().contains("EventSource"));
}
