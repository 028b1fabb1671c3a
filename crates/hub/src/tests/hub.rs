use bytes::BytesMut;
use tokio::time::Instant;

use super::{datas, decode, drain_events, hub_with, msg, topic};
use crate::{HubConfig, Incoming, Ingested};

#[test]
fn live_events_in_order_with_ids() {
    let (hub, feed) = hub_with(16, 8);
    let t = topic("orders");
    let mut sub = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    for i in 1..=3 {
        assert_eq!(feed.ingest(&t, msg(&format!("e{i}"))), Ingested::Stored(i));
    }
    let events = drain_events(&mut sub);
    assert_eq!(datas(&events), ["e1", "e2", "e3"]);
    let ids: Vec<_> = events.iter().map(|e| e.id.clone().unwrap()).collect();
    assert_eq!(ids, ["t-1", "t-2", "t-3"]);
    assert_eq!(hub.metrics().upstream_messages.get(), 3);
}

#[test]
fn events_before_subscribing_are_not_live() {
    let (hub, feed) = hub_with(16, 8);
    let t = topic("orders");
    let _first = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    feed.ingest(&t, msg("old"));
    let mut late = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    feed.ingest(&t, msg("new"));
    assert_eq!(datas(&drain_events(&mut late)), ["new"]);
}

#[test]
fn event_type_and_multiline_payload() {
    let (hub, feed) = hub_with(16, 8);
    let t = topic("orders");
    let mut sub = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    feed.ingest(
        &t,
        Incoming {
            event_type: Some("created".into()),
            ..msg("a\r\nb\rc\nd")
        },
    );
    let mut out = BytesMut::new();
    sub.drain_into(&mut out, 10, 1024);
    assert_eq!(
        &out[..],
        b"id: t-1\nevent: created\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
    );
}

#[test]
fn invalid_payloads_and_event_types_are_dropped_and_counted() {
    let (hub, feed) = hub_with(16, 8);
    let t = topic("orders");
    let mut sub = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    let bad_utf8 = Incoming {
        payload: vec![0xff, 0xfe].into(),
        ..msg("")
    };
    assert_eq!(feed.ingest(&t, bad_utf8), Ingested::InvalidUtf8);
    for bad in ["a\nb", "", "gateway.reset"] {
        let m = Incoming {
            event_type: Some(bad.into()),
            ..msg("x")
        };
        assert_eq!(feed.ingest(&t, m), Ingested::InvalidEventType, "{bad:?}");
    }
    feed.ingest(&t, msg("ok"));
    assert_eq!(datas(&drain_events(&mut sub)), ["ok"]);
    let m = hub.metrics();
    assert_eq!(m.dropped_invalid_utf8.get(), 1);
    assert_eq!(m.dropped_invalid_event_type.get(), 3);
    assert_eq!(m.upstream_messages.get(), 5);
}

#[test]
fn resume_replays_exactly_the_missed_events() {
    let (hub, feed) = hub_with(16, 8);
    let t = topic("orders");
    let _keep = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    for i in 1..=10 {
        feed.ingest(&t, msg(&format!("e{i}")));
    }
    let mut resumed = hub
        .subscribe(std::slice::from_ref(&t), Some("t-6"))
        .unwrap();
    assert!(resumed.take_reset().is_none());
    assert_eq!(resumed.replayed(), 4);
    feed.ingest(&t, msg("e11"));
    assert_eq!(
        datas(&drain_events(&mut resumed)),
        ["e7", "e8", "e9", "e10", "e11"]
    );
    assert_eq!(hub.metrics().replayed_events.get(), 4);

    // Resuming from the newest id replays nothing and misses nothing.
    let mut current = hub
        .subscribe(std::slice::from_ref(&t), Some("t-11"))
        .unwrap();
    assert!(current.take_reset().is_none());
    feed.ingest(&t, msg("e12"));
    assert_eq!(datas(&drain_events(&mut current)), ["e12"]);
}

fn reset_reason(sub: &mut crate::Subscription) -> Option<String> {
    let frame = sub.take_reset()?;
    let events = decode(&frame);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.as_deref(), Some("gateway.reset"));
    let data = &events[0].data;
    let reason = data.strip_prefix(r#"{"reason":""#)?.strip_suffix(r#""}"#)?;
    Some(reason.to_owned())
}

#[test]
fn ids_that_cannot_be_honoured_get_one_reset_then_live() {
    let (hub, feed) = hub_with(4, 2);
    let t = topic("orders");
    let _keep = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    for i in 1..=10 {
        feed.ingest(&t, msg(&format!("e{i}")));
    }
    let cases = [
        ("garbage", "malformed_id"),
        ("", "malformed_id"),
        ("other-3", "unknown_id"),
        ("t-99", "unknown_id"),
        ("t-2", "history_expired"),
        ("t-5", "history_expired"),
    ];
    for (id, reason) in cases {
        let mut sub = hub.subscribe(std::slice::from_ref(&t), Some(id)).unwrap();
        assert_eq!(reset_reason(&mut sub).as_deref(), Some(reason), "{id:?}");
        feed.ingest(&t, msg("live"));
        assert_eq!(datas(&drain_events(&mut sub)), ["live"], "{id:?}");
    }
    // The newest `replay_window` (4) frames are t-13..t-16: t-12 is the oldest
    // honoured id.
    let mut sub = hub
        .subscribe(std::slice::from_ref(&t), Some("t-12"))
        .unwrap();
    assert_eq!(reset_reason(&mut sub), None);
    assert_eq!(drain_events(&mut sub).len(), 4);
}

#[test]
fn reset_frame_id_continues_the_stream() {
    let (hub, feed) = hub_with(4, 2);
    let t = topic("orders");
    let _keep = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    feed.ingest(&t, msg("a"));
    let mut sub = hub
        .subscribe(std::slice::from_ref(&t), Some("zzz-1"))
        .unwrap();
    let reset = decode(&sub.take_reset().unwrap());
    assert_eq!(reset[0].id.as_deref(), Some("t-1"));
    // Resuming from the reset's id misses nothing.
    feed.ingest(&t, msg("b"));
    let mut again = hub
        .subscribe(std::slice::from_ref(&t), Some("t-1"))
        .unwrap();
    assert!(again.take_reset().is_none());
    assert_eq!(datas(&drain_events(&mut again)), ["b"]);
}

#[test]
fn a_new_topic_cannot_resume() {
    let (hub, feed) = hub_with(16, 8);
    let a = topic("a");
    let _keep = hub.subscribe(std::slice::from_ref(&a), None).unwrap();
    feed.ingest(&a, msg("x"));
    let mut sub = hub.subscribe(&[topic("fresh")], Some("t-1")).unwrap();
    assert_eq!(reset_reason(&mut sub).as_deref(), Some("history_expired"));
}

#[test]
fn several_topics_merge_in_sequence_order() {
    let (hub, feed) = hub_with(64, 8);
    let (a, b, c) = (topic("a"), topic("b"), topic("c"));
    let mut sub = hub
        .subscribe(&[a.clone(), b.clone(), c.clone()], None)
        .unwrap();
    let order = [&a, &b, &b, &c, &a, &c, &b, &a];
    for (i, t) in order.iter().enumerate() {
        feed.ingest(t, msg(&format!("{t}{i}")));
    }
    let events = drain_events(&mut sub);
    assert_eq!(
        datas(&events),
        ["a0", "b1", "b2", "c3", "a4", "c5", "b6", "a7"]
    );
    // Resume the multi-topic stream from its 4th event.
    let mut resumed = hub.subscribe(&[a, b, c], Some("t-4")).unwrap();
    assert_eq!(datas(&drain_events(&mut resumed)), ["a4", "c5", "b6", "a7"]);
}

#[test]
fn duplicate_topics_count_once() {
    let (hub, feed) = hub_with(16, 8);
    let t = topic("a");
    let mut sub = hub.subscribe(&[t.clone(), t.clone()], None).unwrap();
    assert_eq!(hub.subscriber_count("a"), 1);
    feed.ingest(&t, msg("x"));
    assert_eq!(datas(&drain_events(&mut sub)), ["x"]);
}

#[test]
fn upstream_gap_is_one_reset_per_outage() {
    let (hub, feed) = hub_with(16, 8);
    feed.set_connected(true);
    let (a, b) = (topic("a"), topic("b"));
    let mut both = hub.subscribe(&[a.clone(), b.clone()], None).unwrap();
    let mut only_a = hub.subscribe(std::slice::from_ref(&a), None).unwrap();
    feed.ingest(&a, msg("before"));
    feed.set_connected(false);
    feed.set_connected(true);
    feed.ingest(&b, msg("after"));
    for sub in [&mut both, &mut only_a] {
        let events = drain_events(sub);
        let kinds: Vec<_> = events
            .iter()
            .map(|e| e.event.clone().unwrap_or_else(|| e.data.clone()))
            .collect();
        let expected: &[&str] = if sub.topic_names().count() == 2 {
            &["before", "gateway.reset", "after"]
        } else {
            &["before", "gateway.reset"]
        };
        assert_eq!(kinds, expected);
    }
}

#[test]
fn topics_opened_during_an_outage_get_a_reset_before_new_messages() {
    let (hub, feed) = hub_with(16, 8);
    feed.set_connected(true);
    feed.set_connected(false);
    let t = topic("late");
    let mut sub = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    feed.set_connected(true);
    feed.ingest(&t, msg("new"));
    let events = drain_events(&mut sub);
    assert_eq!(events[0].event.as_deref(), Some("gateway.reset"));
    assert_eq!(events[0].data, r#"{"reason":"upstream_gap"}"#);
    assert_eq!(events[1].data, "new");
}

#[test]
fn streams_opened_before_the_first_connection_get_no_reset() {
    let (hub, feed) = hub_with(16, 8);
    let t = topic("early");
    let mut sub = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    feed.set_connected(true);
    feed.ingest(&t, msg("first"));
    assert_eq!(datas(&drain_events(&mut sub)), ["first"]);
}

#[test]
fn topics_linger_then_leave_and_ask_to_unsubscribe() {
    let ((hub, feed), wishes) = super::core_hub(HubConfig {
        topic_linger: std::time::Duration::from_secs(30),
        ..HubConfig::default()
    });
    let t = topic("a");
    let sub = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    assert_eq!(wishes.take(), [(t.clone(), true)], "opened upstream");
    assert_eq!(hub.metrics().topics_active.get(), 1);
    drop(sub);
    assert_eq!(hub.subscriber_count("a"), 0);
    assert_eq!(hub.sweep(Instant::now()), 0, "lingers");
    assert!(wishes.take().is_empty());
    let later = Instant::now() + hub.config().topic_linger;
    assert_eq!(hub.sweep(later), 1);
    assert_eq!(wishes.take(), [(t.clone(), false)], "closed upstream");
    assert_eq!(hub.metrics().topics_active.get(), 0);
    // A late message for it is ignored.
    assert_eq!(feed.ingest(&t, msg("late")), Ingested::NoSuchTopic);
}

#[test]
fn a_returning_subscriber_cancels_the_linger() {
    let ((hub, _feed), wishes) = super::core_hub(HubConfig::default());
    let t = topic("a");
    drop(hub.subscribe(std::slice::from_ref(&t), None).unwrap());
    let _back = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    let later = Instant::now() + hub.config().topic_linger * 2;
    assert_eq!(hub.sweep(later), 0);
    assert_eq!(wishes.take(), [(t, true)], "opened once, never closed");
}

#[test]
fn a_reader_overtaken_by_the_ring_is_told_what_it_lost() {
    let (hub, feed) = hub_with(4, 4);
    let t = topic("a");
    let mut sub = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    for i in 0..10 {
        feed.ingest(&t, msg(&i.to_string()));
    }
    assert_eq!(sub.backlog(), 10);
    let mut out = BytesMut::new();
    let d = sub.drain_into(&mut out, 100, 1 << 20);
    assert_eq!(d.lost, 6);
    assert_eq!(d.frames, 0);
}

#[test]
fn drain_respects_frame_and_byte_limits() {
    let (hub, feed) = hub_with(64, 64);
    let t = topic("a");
    let mut sub = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    for i in 0..20 {
        feed.ingest(&t, msg(&format!("{i:02}")));
    }
    let mut out = BytesMut::new();
    assert_eq!(sub.drain_into(&mut out, 5, 1 << 20).frames, 5);
    let frame_len = out.len() / 5;
    out.clear();
    // A byte limit below one frame still yields one frame.
    assert_eq!(sub.drain_into(&mut out, 100, 1).frames, 1);
    out.clear();
    assert_eq!(sub.drain_into(&mut out, 100, 3 * frame_len).frames, 3);
    assert_eq!(sub.backlog(), 11);
}

#[test]
fn closing_wakes_every_subscriber() {
    let (hub, _feed) = hub_with(16, 8);
    let t = topic("a");
    let mut sub = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    assert!(sub.poll_ready(&mut cx).is_pending());
    hub.close();
    assert!(sub.poll_pushed(&mut cx).is_ready());
    assert!(sub.is_closing());
}

#[test]
fn a_full_topic_table_refuses_new_topics_lingering_ones_included() {
    let ((hub, feed), _) = super::core_hub(HubConfig {
        max_topics: 2,
        ..HubConfig::default()
    });
    let (a, b, c) = (topic("a"), topic("b"), topic("c"));
    let _a = hub.subscribe(std::slice::from_ref(&a), None).unwrap();
    // `b` has no stream left but lingers: it still counts.
    drop(hub.subscribe(std::slice::from_ref(&b), None).unwrap());
    let err = hub.subscribe(&[a.clone(), c.clone()], None).unwrap_err();
    assert_eq!(err, crate::SubscribeError::TooManyTopics { max: 2 });
    assert_eq!(hub.subscriber_count("a"), 1, "what it took is given back");
    assert!(matches!(
        feed.publish_local(&c, msg("x")),
        Err(crate::SubscribeError::TooManyTopics { max: 2 })
    ));
    // Known topics are still open to streams and publishes.
    assert!(hub.subscribe(std::slice::from_ref(&b), None).is_ok());
    assert!(matches!(
        feed.publish_local(&a, msg("x")),
        Ok((Ingested::Stored(_), _))
    ));
    // Once `b` is gone, there is room again.
    assert_eq!(hub.sweep(Instant::now() + hub.config().topic_linger), 1);
    assert!(hub.subscribe(std::slice::from_ref(&c), None).is_ok());
}

#[test]
fn a_full_topic_refuses_and_releases_what_it_took() {
    let ((hub, _feed), _) = super::core_hub(HubConfig {
        max_subscribers_per_topic: 2,
        ..HubConfig::default()
    });
    let (a, b) = (topic("a"), topic("b"));
    let _one = hub.subscribe(std::slice::from_ref(&b), None).unwrap();
    let _two = hub.subscribe(std::slice::from_ref(&b), None).unwrap();
    // `a` is taken first, then `b` is full: `a` must be given back.
    let err = hub.subscribe(&[a.clone(), b.clone()], None).unwrap_err();
    assert_eq!(
        err,
        crate::SubscribeError::TopicFull {
            topic: b.clone(),
            max: 2
        }
    );
    assert_eq!(hub.subscriber_count("a"), 0);
    assert_eq!(hub.subscriber_count("b"), 2);
    drop(_one);
    assert!(hub.subscribe(&[a, b], None).is_ok());
}

#[test]
fn a_topic_holds_no_ring_slots_until_its_first_event() {
    let (hub, feed) = hub_with(1024, 256);
    let t = topic("user.1");
    let mut sub = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
    let info = hub.topic_info("user.1").unwrap();
    assert_eq!(
        (info.ring_frames, info.ring_bytes, info.ring_slots),
        (0, 0, 0)
    );
    assert_eq!(info.last_id, None);
    feed.ingest(&t, msg("first"));
    let info = hub.topic_info("user.1").unwrap();
    assert_eq!(info.ring_frames, 1);
    assert_eq!(info.last_id.as_deref(), Some("t-1"));
    let listed = hub.topics();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].0.as_str(), &listed[0].1), ("user.1", &info));
    assert!(info.ring_slots >= 1 && info.ring_slots < 64, "{info:?}");
    assert_eq!(datas(&drain_events(&mut sub)), ["first"]);
    for i in 0..20 {
        feed.ingest(&t, msg(&i.to_string()));
    }
    assert!(
        hub.topic_info("user.1").unwrap().ring_slots > 21,
        "grown by doubling"
    );
    // Idle: the frames stay for resumes, the spare slots go.
    drop(sub);
    let info = hub.topic_info("user.1").unwrap();
    assert_eq!((info.ring_frames, info.ring_slots), (21, 21), "{info:?}");
}

#[test]
fn linger_drops_ten_thousand_idle_topics_on_time_and_keeps_the_taken_ones() {
    let ((hub, _feed), wishes) = super::core_hub(HubConfig {
        topic_linger: std::time::Duration::from_secs(30),
        ..HubConfig::default()
    });
    let names: Vec<_> = (0..10_000).map(|i| topic(&format!("user.{i}"))).collect();
    for chunk in names.chunks(16) {
        drop(hub.subscribe(chunk, None).unwrap());
    }
    assert_eq!(wishes.take().len(), 10_000);
    // Taken again: stays. Left again later: lingers from then.
    let kept = hub.subscribe(&names[..1], None).unwrap();
    let start = Instant::now();
    let linger = hub.config().topic_linger;
    assert_eq!(hub.sweep(start), 0, "all linger");
    assert_eq!(hub.sweep(start + linger), 9_999, "dropped on time");
    assert_eq!(hub.metrics().topics_active.get(), 1);
    assert_eq!(wishes.take().len(), 9_999, "each unsubscribed");
    drop(kept);
    let left = Instant::now();
    assert_eq!(hub.sweep(left + linger / 2), 0);
    assert_eq!(hub.sweep(left + linger), 1);
    assert_eq!(hub.topic_count(), 0);
}

#[test]
fn a_topic_left_taken_and_left_again_lingers_from_the_last_leave() {
    let ((hub, _feed), _wishes) = super::core_hub(HubConfig::default());
    let t = topic("a");
    let linger = hub.config().topic_linger;
    drop(hub.subscribe(std::slice::from_ref(&t), None).unwrap());
    // Two distinct moments for the two leaves (not a synchronisation).
    std::thread::sleep(std::time::Duration::from_millis(2));
    let before_second = Instant::now();
    // Taken and left again: its queue entry (due a linger after the first leave) is
    // stale when it comes up.
    drop(hub.subscribe(std::slice::from_ref(&t), None).unwrap());
    let nearly = before_second + linger - std::time::Duration::from_millis(1);
    assert_eq!(hub.sweep(nearly), 0);
    assert_eq!(hub.topic_count(), 1, "requeued, not dropped early");
    assert_eq!(hub.sweep(Instant::now() + linger), 1);
    assert_eq!(hub.topic_count(), 0);
}

/// What an idle topic's hub entry is made of (docs/architecture.md, memory per topic,
/// itemises it): kept small on purpose.
#[test]
fn an_idle_topic_entry_stays_small() {
    use std::mem::size_of;
    let topic = size_of::<crate::hub::Topic>();
    let ring = size_of::<crate::ring::Ring>();
    let notify = size_of::<tokio::sync::Notify>();
    println!("Topic {topic} B (Ring {ring} B), Notify {notify} B");
    assert!(topic <= 320, "Topic is {topic} bytes");
}
