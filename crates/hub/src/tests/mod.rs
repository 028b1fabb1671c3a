#![allow(clippy::unwrap_used)]

mod accounting;
mod budgets;
mod durable;
mod hub;
mod writer;

use std::time::Duration;

use bytes::BytesMut;
use sse_framing::{Decoder, Event, Item};
use tokio::time::Instant;

use crate::{Epoch, Hub, HubConfig, HubMetrics, Incoming, Subscription, TopicName};

pub(crate) fn hub_with(replay_window: usize, client_buffer: usize) -> Hub {
    Hub::new(
        HubConfig {
            replay_window,
            client_buffer,
            topic_linger: Duration::from_secs(30),
            ..HubConfig::default()
        },
        Epoch::new("t").unwrap(),
        HubMetrics::unregistered(),
    )
}

pub(crate) fn topic(name: &str) -> TopicName {
    TopicName::parse(name, false).unwrap()
}

pub(crate) fn msg(data: &str) -> Incoming {
    Incoming {
        payload: data.to_owned().into(),
        event_type: None,
        received: Instant::now(),
        publish_marker: None,
    }
}

/// Drains everything `sub` has and decodes it.
pub(crate) fn drain_events(sub: &mut Subscription) -> Vec<Event> {
    let mut out = BytesMut::new();
    loop {
        let before = out.len();
        let d = sub.drain_into(&mut out, 1024, 1 << 20);
        assert_eq!(d.lost, 0, "frames were lost");
        if out.len() == before {
            break;
        }
    }
    decode(&out)
}

pub(crate) fn decode(bytes: &[u8]) -> Vec<Event> {
    let mut items = Vec::new();
    Decoder::new().feed(bytes, &mut items).unwrap();
    items
        .into_iter()
        .filter_map(|i| match i {
            Item::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

pub(crate) fn datas(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.data.as_str()).collect()
}
