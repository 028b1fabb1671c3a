//! Durable mode: ids are log positions, outages lose nothing, old resumes come from the
//! log through a replay feed.

use std::time::Duration;

use std::sync::Arc;

use super::{Replays, datas, drain_events, log_hub, msg, topic};
use crate::{Epoch, Feed, Hub, HubConfig, Ingested, ResetReason};

/// A hub on a log whose reader has not started, and the replays it asks for.
fn durable_hub(replay_window: usize) -> (Hub, Feed, Arc<Replays>) {
    let ((hub, feed), replays) = log_hub(HubConfig {
        replay_window,
        client_buffer: replay_window,
        topic_linger: Duration::from_secs(30),
        max_subscribers_per_topic: 1000,
        ..HubConfig::default()
    });
    (hub, feed, replays)
}

/// The same with the log read from after `last_seq`.
fn started(replay_window: usize, last_seq: u64) -> (Hub, Feed, Arc<Replays>) {
    let (hub, feed, replays) = durable_hub(replay_window);
    feed.set_connected(true);
    feed.start_log(Epoch::new("js1").unwrap(), last_seq);
    (hub, feed, replays)
}

#[test]
fn ids_are_log_positions_and_wildcards_match() {
    let (hub, feed, _) = durable_hub(16);
    feed.start_log(Epoch::new("js1").unwrap(), 100);
    let exact = topic("orders.1");
    let pattern = crate::TopicName::parse("orders.*", true).unwrap();
    let mut one = hub.subscribe(std::slice::from_ref(&exact), None).unwrap();
    let mut both = hub.subscribe(&[exact, pattern], None).unwrap();
    assert_eq!(
        feed.ingest_logged("orders.1", 101, msg("a")),
        Ingested::Stored(101)
    );
    assert_eq!(
        feed.ingest_logged("other", 102, msg("x")),
        Ingested::NoSuchTopic
    );
    assert_eq!(
        feed.ingest_logged("orders.2", 105, msg("b")),
        Ingested::Stored(105)
    );
    // A redelivered position is ignored.
    assert_eq!(
        feed.ingest_logged("orders.1", 105, msg("dup")),
        Ingested::NoSuchTopic
    );
    let ids = |events: &[sse_framing::Event]| -> Vec<String> {
        events.iter().map(|e| e.id.clone().unwrap()).collect()
    };
    assert_eq!(ids(&drain_events(&mut one)), ["js1-101"]);
    // Matching both of its topics, "a" comes once.
    assert_eq!(ids(&drain_events(&mut both)), ["js1-101", "js1-105"]);
}

#[test]
fn an_outage_is_no_gap() {
    let (hub, feed, _replays) = started(16, 0);
    let t = topic("a");
    let mut sub = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    feed.ingest_logged("a", 1, msg("1"));
    feed.set_connected(false);
    feed.set_connected(true);
    feed.ingest_logged("a", 2, msg("2"));
    assert_eq!(datas(&drain_events(&mut sub)), ["1", "2"]);
}

#[test]
fn recent_resumes_come_from_the_rings() {
    let (hub, feed, replays) = started(16, 0);
    let t = topic("a");
    let _keep = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    for seq in 1..=10 {
        feed.ingest_logged("a", seq, msg(&seq.to_string()));
    }
    let mut sub = hub
        .subscribe(std::slice::from_ref(&t), Some("js1-7"))
        .unwrap();
    assert!(replays.take().is_empty());
    assert_eq!(datas(&drain_events(&mut sub)), ["8", "9", "10"]);
}

#[tokio::test]
async fn old_resumes_are_replayed_from_the_log_then_go_live_at_the_seam() {
    let (hub, feed, replays) = started(4, 0);
    let t = topic("a");
    let _keep = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    for seq in 1..=10 {
        feed.ingest_logged("a", seq, msg(&seq.to_string()));
    }
    let mut sub = hub
        .subscribe(std::slice::from_ref(&t), Some("js1-2"))
        .unwrap();
    let (request, sink) = replays.take().pop().unwrap();
    assert_eq!(request.after, 2);
    assert_eq!(request.upto, Some(10));
    assert_eq!(request.epoch, "js1");
    assert!(replays.take().is_empty(), "asked once");
    // Live frames arrive during the replay; they wait behind it.
    feed.ingest_logged("a", 11, msg("11"));
    let feeder = tokio::spawn(async move {
        for seq in 3..=10 {
            sink.message(seq, "t".into(), msg(&seq.to_string()))
                .await
                .unwrap();
        }
    });
    feeder.await.unwrap();
    let want: Vec<String> = (3..=11).map(|s| s.to_string()).collect();
    assert_eq!(datas(&drain_events(&mut sub)), want);
    assert!(!sub.is_replaying());
    assert_eq!(hub.metrics().replayed_events.get(), 8);
}

#[tokio::test]
async fn a_log_reset_is_one_frame_then_live() {
    let (hub, feed, replays) = started(4, 50);
    let t = topic("a");
    let mut sub = hub
        .subscribe(std::slice::from_ref(&t), Some("old-3"))
        .unwrap();
    let (request, sink) = replays.take().pop().unwrap();
    assert_eq!(request.epoch, "old");
    sink.reset(ResetReason::UnknownId, 50).await.unwrap();
    feed.ingest_logged("a", 51, msg("live"));
    let events = drain_events(&mut sub);
    assert_eq!(events[0].event.as_deref(), Some("gateway.reset"));
    assert_eq!(events[0].id.as_deref(), Some("js1-50"));
    assert_eq!(events[0].data, r#"{"reason":"unknown_id"}"#);
    assert_eq!(events[1].data, "live");
}

#[tokio::test]
async fn streams_opened_before_the_log_starts_replay_up_to_its_start() {
    let (hub, feed, replays) = durable_hub(16);
    let t = topic("a");
    let mut sub = hub
        .subscribe(std::slice::from_ref(&t), Some("js1-5"))
        .unwrap();
    let (request, sink) = replays.take().pop().unwrap();
    assert_eq!(request.upto, None, "not known yet");
    feed.set_connected(true);
    feed.start_log(Epoch::new("js1").unwrap(), 7);
    feed.ingest_logged("a", 8, msg("8"));
    for seq in 6..=7 {
        sink.message(seq, "t".into(), msg(&seq.to_string()))
            .await
            .unwrap();
    }
    drop(sink);
    assert_eq!(datas(&drain_events(&mut sub)), ["6", "7", "8"]);
}

#[tokio::test]
async fn a_client_ahead_of_a_lagging_instance_gets_nothing_twice() {
    // This instance has read the log up to 5; the client already saw 8 elsewhere.
    let (hub, feed, replays) = started(16, 5);
    let t = topic("a");
    let mut sub = hub
        .subscribe(std::slice::from_ref(&t), Some("js1-8"))
        .unwrap();
    let (request, sink) = replays.take().pop().unwrap();
    assert_eq!((request.after, request.upto), (8, Some(5)));
    sink.done(8).await.unwrap();
    for seq in 6..=9 {
        feed.ingest_logged("a", seq, msg(&seq.to_string()));
    }
    assert_eq!(datas(&drain_events(&mut sub)), ["9"]);
}
