//! Zero-downtime upgrade (protocol §12): `--upgrade` takes the listening sockets over,
//! the old process drains and exits 0; no connection attempt is refused meanwhile, and
//! on a JetStream topic every client ends with every event exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sse_testkit::http;

use crate::support::*;

/// Events published across the upgrade, one every [`PUBLISH_EVERY`].
const EVENTS: usize = 120;
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
const CLIENTS: usize = 4;

/// A client that reconnects with `Last-Event-ID` whenever its stream ends, until it has
/// `EVENTS` events; returns their data in order and how many streams it took.
async fn resuming_client(addr: std::net::SocketAddr) -> (Vec<String>, usize) {
    let mut data = Vec::new();
    let mut last_id = String::new();
    let mut streams = 0;
    while data.len() < EVENTS {
        let headers: Vec<(&str, &str)> = if last_id.is_empty() {
            Vec::new()
        } else {
            vec![("Last-Event-ID", last_id.as_str())]
        };
        let mut s = match SseStream::open(addr, "/events/up.t", &headers).await {
            Ok(s) if s.status() == 200 => s,
            Ok(s) => panic!("a stream was refused with {}", s.status()),
            Err(e) => panic!("a stream could not connect: {e:#}"),
        };
        streams += 1;
        while data.len() < EVENTS {
            match s.next_item(Duration::from_secs(30)).await {
                Ok(Some(Item::Event(e))) => {
                    if let Some(id) = &e.id {
                        last_id.clone_from(id);
                    }
                    data.push(e.data);
                }
                Ok(Some(_)) => {}
                // Ended (drained): reconnect from the last id, as EventSource would.
                Ok(None) | Err(_) => break,
            }
        }
    }
    (data, streams)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_under_a_connect_loop_refuses_nothing_and_delivers_every_event_once() {
    let nats = NatsServer::start().unwrap();
    let mut gw = ready(&nats, |b| {
        b.set("jetstream", "enabled", "true")
            .set("server", "grace_period", "\"2s\"")
    })
    .await;
    let addr = gw.addr();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(resuming_client(addr)))
        .collect();
    // Every client is subscribed before the first event.
    wait_metric(&gw, "sse_connections_active", &[], CLIENTS as f64).await;

    // Connection attempts in a tight loop, throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let connector = {
        let (stop, attempts) = (stop.clone(), attempts.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                attempts.fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout(
                    Duration::from_secs(10),
                    http::get(addr, "/no-such-path", &[]),
                )
                .await
                {
                    Ok(Ok(r)) if r.status == 404 => {}
                    Ok(Ok(r)) => failures.push(format!("status {}", r.status)),
                    Ok(Err(e)) => failures.push(format!("{e:#}")),
                    Err(_) => failures.push("no answer within 10 s".to_owned()),
                }
            }
            failures
        })
    };

    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let publisher = tokio::spawn(async move {
        for i in 1..=EVENTS {
            let n = i.to_string();
            publish_stored(&js, "sse.up.t", &format!("up-{i}"), &n, WAIT).await;
            tokio::time::sleep(PUBLISH_EVERY).await;
        }
    });

    tokio::time::sleep(Duration::from_secs(1)).await;
    let old_pid = gw.pid();
    gw.upgrade().unwrap();
    let status = gw
        .wait_previous_exit(Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        status.success(),
        "the old process: {status:?}\n{}",
        gw.log()
    );
    assert_ne!(gw.pid(), old_pid);

    publisher.await.unwrap();
    for client in clients {
        let (data, streams) = tokio::time::timeout(Duration::from_secs(60), client)
            .await
            .expect("a client did not get every event")
            .unwrap();
        let want: Vec<String> = (1..=EVENTS).map(|i| i.to_string()).collect();
        assert_eq!(data, want, "every event exactly once, in order");
        assert!(streams >= 2, "the client moved to the new process");
    }
    stop.store(true, Ordering::Relaxed);
    let failures = connector.await.unwrap();
    let attempts = attempts.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {attempts} attempts failed: {failures:?}",
        failures.len()
    );
    assert!(attempts > 100, "the loop ran ({attempts} attempts)");
    let log = gw.log();
    assert!(log.contains("took the listening sockets over"), "{log}");

    // The new process serves, and reloads like any other.
    gw.wait_ready(WAIT).await.unwrap();
    a_normal_client_still_streams(&gw, "after.upgrade").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_with_no_running_gateway_fails_clearly() {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"{}\"\nupgrade_socket = \"{}\"\n[admin]\nlisten = \"{}\"\n",
            free(),
            dir.path().join("upgrade.sock").display(),
            free()
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin())
            .arg("--upgrade")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot ask the running gateway"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_upgrade_request_hands_nothing_over() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let gw = ready(&nats, |b| {
        b.set(
            "server",
            "upgrade_socket",
            &format!("\"{}\"", socket.display()),
        )
    })
    .await;
    let mut stream = open(&gw, "/events/stray").await;

    // SIGQUIT with no new process waiting: logged, and the gateway serves on.
    gw.signal("QUIT");
    eventually(Duration::from_secs(15), "the refusal is logged", || async {
        anyhow::ensure!(gw.log().contains("no hand-over, serving on"));
        Ok(())
    })
    .await
    .unwrap();

    // A socket at the path that belongs to another user gets nothing (as root only:
    // elsewhere a test cannot make a file another user's).
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let chowned = std::process::Command::new("chown")
        .arg("65534")
        .arg(&socket)
        .status()
        .is_ok_and(|s| s.success());
    if chowned {
        let r = http::request(gw.admin_addr(), "POST", "/api/upgrade", &[], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 202, "{}", r.text());
        eventually(WAIT, "the foreign socket is refused", || async {
            anyhow::ensure!(gw.log().contains("not to this process's user"));
            Ok(())
        })
        .await
        .unwrap();
    }
    drop(listener);

    let nc = nats.client().await.unwrap();
    publish(&nc, "sse.stray", "still here", None).await.unwrap();
    assert_eq!(stream.next_event(WAIT).await.unwrap().data, "still here");
    gw.wait_ready(WAIT).await.unwrap();
    a_normal_client_still_streams(&gw, "after.stray").await;
}
