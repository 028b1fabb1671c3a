//! Byte budgets under any interleaving: whatever is published (sizes up to and past the
//! largest frame the budgets allow, on several topics), however readers drain (slow or
//! fast, small or large batches), every reader gets exactly the frames of its topics in
//! publish order — or a prefix of them and is cut — and the rings never hold more than
//! their budgets.

use std::time::Duration;

use bytes::BytesMut;
use proptest::prelude::*;

use super::{decode, msg, topic};
use crate::{Hub, HubConfig, Ingested, Subscription};

#[derive(Debug, Clone)]
enum Op {
    Publish {
        topic: usize,
        size: usize,
    },
    Drain {
        sub: usize,
        frames: usize,
        bytes: usize,
    },
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            3 => (0..3usize, prop_oneof![0..40usize, 0..400usize, 300..700usize])
                .prop_map(|(topic, size)| Op::Publish { topic, size }),
            2 => (0..4usize, 1..8usize, prop_oneof![Just(1usize), 1..2000usize])
                .prop_map(|(sub, frames, bytes)| Op::Drain { sub, frames, bytes }),
        ],
        0..150,
    )
}

#[derive(Debug, Clone)]
struct Budgets {
    window: usize,
    client_buffer: usize,
    replay_bytes: usize,
    max_ring_bytes: u64,
}

fn budgets() -> impl Strategy<Value = Budgets> {
    (1..8usize, 1..8usize, 200..1500usize, 1..4u64).prop_map(
        |(window, client_buffer, replay_bytes, rings)| Budgets {
            window,
            client_buffer,
            replay_bytes,
            max_ring_bytes: replay_bytes as u64 * rings,
        },
    )
}

/// What one reader has seen.
#[derive(Debug, Default)]
struct Reader {
    /// Payloads published to its topics since it subscribed (until it was cut).
    published: Vec<String>,
    /// Payloads it got, in order.
    got: Vec<String>,
    /// Frames it will never get, when it was cut.
    lost: Option<u64>,
}

fn drain(sub: &mut Subscription, reader: &mut Reader, frames: usize, bytes: usize) {
    if reader.lost.is_some() {
        return;
    }
    let mut out = BytesMut::new();
    let d = sub.drain_into(&mut out, frames, bytes);
    if d.lost > 0 {
        // A writer cuts the client here: what it never got is its backlog.
        reader.lost = Some(sub.backlog());
        return;
    }
    let events = decode(&out);
    assert_eq!(events.len(), d.frames);
    reader.got.extend(events.into_iter().map(|e| e.data));
}

/// Every ring within its frame and byte budgets, all of them within the global one, and
/// the hub's total the sum of the rings.
fn check_budgets(hub: &Hub, b: &Budgets) -> Result<(), TestCaseError> {
    let capacity = b.window.max(b.client_buffer);
    let mut total = 0;
    for t in hub.inner.topics.lock().by_name.values() {
        let ring = t.ring.read();
        prop_assert!(ring.len() <= capacity, "{} frames", ring.len());
        prop_assert!(ring.held_bytes() <= b.replay_bytes as u64);
        total += ring.held_bytes();
    }
    prop_assert!(
        total <= b.max_ring_bytes,
        "{total} over {}",
        b.max_ring_bytes
    );
    prop_assert_eq!(hub.ring_bytes(), total);
    prop_assert_eq!(hub.metrics().ring_bytes.get(), total as i64);
    Ok(())
}

proptest! {
    #[test]
    fn readers_get_prefixes_and_rings_stay_within_budgets(ops in ops(), b in budgets()) {
        let ((hub, feed), _) = super::core_hub(HubConfig {
            replay_window: b.window,
            client_buffer: b.client_buffer,
            replay_bytes: b.replay_bytes,
            client_buffer_bytes: b.replay_bytes,
            max_ring_bytes: b.max_ring_bytes,
            topic_linger: Duration::from_secs(30),
            ..HubConfig::default()
        });
        let names = [topic("a"), topic("b"), topic("c")];
        // Readers: a, b, a+b, a+b+c.
        let sets: [&[usize]; 4] = [&[0], &[1], &[0, 1], &[0, 1, 2]];
        let mut subs: Vec<Subscription> = sets
            .iter()
            .map(|set| {
                let topics: Vec<_> = set.iter().map(|&i| names[i].clone()).collect();
                hub.subscribe(&topics, None).unwrap()
            })
            .collect();
        let mut readers: Vec<Reader> = (0..4).map(|_| Reader::default()).collect();
        let mut n = 0;
        for op in ops {
            match op {
                Op::Publish { topic, size } => {
                    n += 1;
                    let payload = format!("{n}:{}", "x\n".repeat(size / 2));
                    match feed.ingest(&names[topic], msg(&payload)) {
                        Ingested::Stored(_) => {
                            for (set, reader) in sets.iter().zip(&mut readers) {
                                if set.contains(&topic) && reader.lost.is_none() {
                                    reader.published.push(payload.clone());
                                }
                            }
                        }
                        Ingested::TooLarge => {
                            prop_assert!(hub.check_frame_size(&payload, None).is_err());
                        }
                        other => prop_assert!(false, "{other:?}"),
                    }
                }
                Op::Drain { sub, frames, bytes } => {
                    drain(&mut subs[sub], &mut readers[sub], frames, bytes);
                }
            }
            check_budgets(&hub, &b)?;
        }
        for (sub, reader) in subs.iter_mut().zip(&mut readers) {
            while reader.lost.is_none() && sub.backlog() > 0 {
                drain(sub, reader, 64, 1 << 20);
            }
        }
        for (i, reader) in readers.iter().enumerate() {
            // Exactly its topics' frames in publish order, or a prefix of them.
            prop_assert!(
                reader.published.starts_with(&reader.got),
                "reader {i} got {:?} of {:?}", reader.got, reader.published
            );
            match reader.lost {
                None => prop_assert_eq!(reader.got.len(), reader.published.len(), "reader {}", i),
                Some(lost) => prop_assert_eq!(
                    reader.got.len() as u64 + lost,
                    reader.published.len() as u64,
                    "reader {}: delivered + lost == published", i
                ),
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_thousand_stalled_streams_hold_one_copy_of_their_frame() {
    use std::task::{Context, Waker};

    use crate::{BodyFraming, Cadence, WriterConfig, writer::Writer};

    let (hub, feed) = super::hub_with(16, 16);
    let t = topic("one");
    let config = WriterConfig {
        cadence: Cadence::new(Duration::from_secs(60), Duration::from_secs(3)),
        write_timeout: Duration::from_secs(60),
        client_buffer: 16,
        client_buffer_bytes: 4 << 20,
        max_write_frames: 16,
        max_write_bytes: 256 * 1024,
        drain_spread: Duration::ZERO,
        drain_retry: Duration::from_secs(1),
    };
    let mut cx = Context::from_waker(Waker::noop());
    let control = crate::StreamControl::default();
    let mut streams = Vec::new();
    for _ in 0..1000 {
        let (server, client) = tokio::io::duplex(1024);
        let sub = hub.subscribe(std::slice::from_ref(&t), None).unwrap();
        let mut writer = Writer::new(server, sub, BodyFraming::Chunked, &config, &control);
        writer.open(b"");
        assert!(writer.poll(&mut cx).is_pending());
        streams.push((writer, client));
    }
    feed.ingest(&t, msg(&"m".repeat(1 << 20)));
    let frame = {
        let topics = hub.inner.topics.lock();
        let ring = topics.by_name["one"].ring.read();
        ring.iter_from(0).last().unwrap().frame.clone()
    };
    let (start, end) = (
        frame.as_ptr() as usize,
        frame.as_ptr() as usize + frame.len(),
    );
    let mut owed = 0;
    for (i, (writer, _)) in streams.iter_mut().enumerate() {
        if i % 64 == 0 {
            // A fresh cooperative budget for the sockets.
            tokio::task::yield_now().await;
        }
        assert!(writer.poll(&mut cx).is_pending());
        let ranges = writer.owed().ranges();
        // The frame's tail, and at most a few bytes of chunk framing: bookkeeping.
        let big: Vec<(usize, usize)> = ranges.iter().copied().filter(|r| r.1 > 16).collect();
        assert_eq!(big.len(), 1, "{ranges:?}");
        assert!(ranges.len() <= 3, "{ranges:?}");
        let (at, len) = big[0];
        assert!(
            at >= start && at + len == end,
            "a reference into the one frame"
        );
        owed += writer.owed().bytes();
    }
    // A million bytes owed a thousand times over, held once.
    assert!(owed > 1000 * ((1 << 20) - 2048), "{owed}");
    assert_eq!(hub.metrics().pending_bytes.get(), owed as i64);
}
