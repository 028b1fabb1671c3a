//! `Last-Event-ID` / `?last_event_id=`: exact replay, or one reset then live.

use crate::support::*;

async fn publish_n(nats: &NatsServer, subject: &str, from: usize, to: usize) {
    let client = nats.client().await.unwrap();
    for i in from..to {
        publish(&client, subject, format!("e{i}"), None)
            .await
            .unwrap();
    }
}

fn datas(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.data.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_gets_exactly_the_missed_events() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b).await;
    let mut first = open(&gw, "/events/r").await;
    publish_n(&nats, "sse.r", 0, 10).await;
    let seen = first.events(10, WAIT).await.unwrap();
    // The client got e0..e3 and dropped; e4..e9 happened meanwhile.
    let last = seen[3].id.clone().unwrap();
    drop(first);

    let mut by_header = open_from(&gw, "/events/r", &last).await;
    let mut by_query = open(&gw, &format!("/events/r?last_event_id={last}")).await;
    publish_n(&nats, "sse.r", 10, 12).await;
    let want = ["e4", "e5", "e6", "e7", "e8", "e9", "e10", "e11"];
    for s in [&mut by_header, &mut by_query] {
        let events = s.events(8, WAIT).await.unwrap();
        assert_eq!(datas(&events), want);
        assert!(events.iter().all(|e| reset_reason(e).is_none()));
    }
    wait_metric(&gw, "sse_replayed_events_total", &[], 12.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_wins_over_query() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b).await;
    let mut s = open(&gw, "/events/h").await;
    publish_n(&nats, "sse.h", 0, 4).await;
    let seen = s.events(4, WAIT).await.unwrap();
    let (old, newer) = (seen[0].id.clone().unwrap(), seen[2].id.clone().unwrap());
    let mut resumed = open_from(&gw, &format!("/events/h?last_event_id={old}"), &newer).await;
    assert_eq!(datas(&resumed.events(1, WAIT).await.unwrap()), ["e3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_malformed_and_expired_ids_get_one_reset() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b.set("sse", "replay_window", "4")).await;
    let mut keep = open(&gw, "/events/x").await;
    publish_n(&nats, "sse.x", 0, 10).await;
    let seen = keep.events(10, WAIT).await.unwrap();
    let oldest = seen[0].id.clone().unwrap();
    let epoch = oldest.rsplit_once('-').unwrap().0.to_owned();
    for (id, reason) in [
        ("not an id".to_owned(), "malformed_id"),
        ("zzzz-3".to_owned(), "unknown_id"),
        (format!("{epoch}-999999"), "unknown_id"),
        (oldest.clone(), "history_expired"),
    ] {
        let mut s = open_from(&gw, "/events/x", &id).await;
        let first = s.next_event(WAIT).await.unwrap();
        assert_eq!(reset_reason(&first).as_deref(), Some(reason), "{id:?}");
        // Then live events only.
        let client = nats.client().await.unwrap();
        publish(&client, "sse.x", "live", None).await.unwrap();
        let next = s.next_event(WAIT).await.unwrap();
        assert_eq!(next.data, "live", "{id:?}");
        keep.next_event(WAIT).await.unwrap();
    }
}
