//! Slow consumers: a client that stops reading costs at most client_buffer frames and is
//! cut; other clients of the topic get everything.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_cut_while_a_reader_gets_everything() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| {
        b.set("sse", "client_buffer", "16")
            .set("sse", "write_timeout", "\"60s\"")
    })
    .await;
    let stalled = SseStream::builder(gw.addr(), "/events/big")
        .recv_buffer_size(4096)
        .open()
        .await
        .unwrap();
    assert_eq!(stalled.status(), 200);
    let mut reader = open(&gw, "/events/big").await;

    const N: usize = 1500;
    let payload = "x".repeat(8 * 1024);
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let reading = tokio::spawn(async move {
        let mut got = Vec::with_capacity(N);
        while got.len() < N {
            let e = reader.next_event(WAIT).await?;
            got.push(e.id.unwrap_or_default());
            let _ = progress_tx.send(got.len());
        }
        anyhow::Ok((got, reader))
    });
    let client = nats.client().await.unwrap();
    for i in 0..N {
        // Keep the reader close behind: it must never look slow itself.
        progress.wait_for(|&read| read + 8 >= i).await.unwrap();
        publish(&client, "sse.big", payload.clone(), None)
            .await
            .unwrap();
    }
    let (ids, _reader) = reading.await.unwrap().unwrap();
    let mut sorted = ids.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), N, "no duplicates");
    wait_metric(&gw, "sse_slow_consumer_disconnects_total", &[], 1.0).await;
    wait_metric(
        &gw,
        "sse_streams_closed_total",
        &[("reason", "slow_consumer")],
        1.0,
    )
    .await;
    let dropped = metric(
        &gw,
        "sse_events_dropped_total",
        &[("reason", "slow_consumer")],
    )
    .await;
    assert!(dropped > 0.0);
    // The reader is still connected; only the stalled client was cut.
    wait_metric(&gw, "sse_connections_active", &[], 1.0).await;
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_hits_the_write_timeout() {
    let nats = NatsServer::start().unwrap();
    // Budgets far above what is published: only the write timeout can cut it.
    let gw = ready(&nats, |b| {
        b.set("sse", "client_buffer", "100000")
            .set("sse", "client_buffer_bytes", "1073741824")
            .set("sse", "write_timeout", "\"1s\"")
    })
    .await;
    let stalled = SseStream::builder(gw.addr(), "/events/wt")
        .recv_buffer_size(4096)
        .open()
        .await
        .unwrap();
    let client = nats.client().await.unwrap();
    // Enough to fill every socket buffer on the way, then silence.
    let payload = "y".repeat(64 * 1024);
    for _ in 0..160 {
        publish(&client, "sse.wt", payload.clone(), None)
            .await
            .unwrap();
    }
    wait_metric(&gw, "sse_write_timeout_disconnects_total", &[], 1.0).await;
    wait_metric(
        &gw,
        "sse_streams_closed_total",
        &[("reason", "write_timeout")],
        1.0,
    )
    .await;
    wait_metric(&gw, "sse_connections_active", &[], 0.0).await;
    assert_eq!(
        metric(&gw, "sse_slow_consumer_disconnects_total", &[]).await,
        0.0
    );
    drop(stalled);
}
