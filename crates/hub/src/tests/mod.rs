mod accounting;
mod budgets;
mod durable;
mod hub;
mod traces;
mod writer;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use sse_framing::{Decoder, Event, Item};
use tokio::time::Instant;

use crate::{
    Epoch, Feed, History, Hub, HubConfig, HubMetrics, Incoming, ReplayRequest, ReplaySink,
    SeamFuture, Source, Subscription, TopicName, Upstream,
};

/// The one hub construction of the tests: `config` fed by `source`, epoch `t` until a log
/// says otherwise.
pub(crate) fn test_hub(config: HubConfig, source: Source) -> (Hub, Feed) {
    Hub::new(
        config,
        Epoch::new("t").unwrap(),
        HubMetrics::unregistered(),
        source,
    )
}

/// A core hub (its upstream records the hub's wishes) with these ring sizes and the
/// configuration's other defaults.
pub(crate) fn hub_with(replay_window: usize, client_buffer: usize) -> (Hub, Feed) {
    core_hub(HubConfig {
        replay_window,
        client_buffer,
        topic_linger: Duration::from_secs(30),
        ..HubConfig::default()
    })
    .0
}

/// A core hub over `config`, and the wishes its upstream heard.
pub(crate) fn core_hub(config: HubConfig) -> ((Hub, Feed), Arc<Wishes>) {
    let wishes = Arc::new(Wishes::default());
    (test_hub(config, Source::Core(wishes.clone())), wishes)
}

/// An [`Upstream`] that records what the hub asks of it.
#[derive(Debug, Default)]
pub(crate) struct Wishes(Mutex<Vec<(TopicName, bool)>>);

impl Wishes {
    /// The wishes since the last call: `(topic, opened)`.
    pub(crate) fn take(&self) -> Vec<(TopicName, bool)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Upstream for Wishes {
    fn open(&self, topic: &TopicName) {
        self.0.lock().unwrap().push((topic.clone(), true));
    }

    fn close(&self, topic: &TopicName) {
        self.0.lock().unwrap().push((topic.clone(), false));
    }
}

/// A [`History`] that keeps the replays the hub asks for, for the test to serve.
#[derive(Debug, Default)]
pub(crate) struct Replays(Mutex<Vec<(ReplayRequest, ReplaySink)>>);

impl Replays {
    /// The replays asked for since the last call.
    pub(crate) fn take(&self) -> Vec<(ReplayRequest, ReplaySink)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl History for Replays {
    fn replay(&self, request: ReplayRequest, sink: ReplaySink) -> SeamFuture {
        self.0.lock().unwrap().push((request, sink));
        Box::pin(async {})
    }
}

/// A hub fed by a durable log over `config`, and the replays it asks for.
pub(crate) fn log_hub(config: HubConfig) -> ((Hub, Feed), Arc<Replays>) {
    let replays = Arc::new(Replays::default());
    (test_hub(config, Source::Log(replays.clone())), replays)
}

pub(crate) fn topic(name: &str) -> TopicName {
    TopicName::parse(name, false).unwrap()
}

pub(crate) fn msg(data: &str) -> Incoming {
    Incoming {
        payload: data.to_owned().into(),
        event_type: None,
        received: Instant::now(),
        trace: None,
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
