//! End to end through a real `nats-server`: the loadgen publishes to `sse.<topic>`, a
//! bridge in the test forwards each message to the in-process SSE server's topic.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt as _;
use support::mini_server::{MiniServer, Options};
use support::{args, loadgen, u};

/// A `nats-server` on a free loopback port, killed on drop.
struct Nats {
    child: Child,
    port: u16,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_nats() -> Nats {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server not found: install it (apt-get install nats-server)");
    let nats = Nats { child, port };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return nats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nats-server did not listen on {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_through_nats() {
    let nats = start_nats().await;
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let server = MiniServer::start(Options::default()).await;
    let client = async_nats::connect(&url).await.expect("connect");
    let mut sub = client.subscribe("sse.>").await.expect("subscribe");
    client.flush().await.expect("flush");
    let bridge = server.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(topic) = msg.subject.as_str().strip_prefix("sse.") {
                bridge.publish(topic, &msg.payload);
            }
        }
    });
    let (code, r, stderr) = loadgen(args(&[
        ("url", &server.url()),
        ("nats", &url),
        ("clients", "20"),
        ("topics", "4"),
        ("rate", "2000"),
        ("duration", "1s"),
        ("drain", "2s"),
    ]))
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(r["publisher"], "nats");
    assert_eq!(u(&r, "published"), 2000);
    assert_eq!(u(&r, "expected"), 2000 * 5);
    assert_eq!(u(&r, "delivered"), 2000 * 5, "{stderr}");
    assert_eq!(u(&r, "loss"), 0);

    // no NATS there: a setup error
    drop(nats);
    let (code, _, stderr) = loadgen(args(&[
        ("url", &server.url()),
        ("nats", &url),
        ("clients", "1"),
    ]))
    .await;
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("NATS"), "{stderr}");
}
