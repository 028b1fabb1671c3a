//! For each subscriber: delivered + lost == published to its topics since it subscribed,
//! whatever the interleaving of publishing and reading.

use bytes::BytesMut;
use proptest::prelude::*;

use super::{decode, hub_with, msg, topic};

#[derive(Debug, Clone)]
enum Op {
    Publish(usize),
    Drain { sub: usize, max: usize },
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            3 => (0..3usize).prop_map(Op::Publish),
            2 => (0..4usize, 1..8usize).prop_map(|(sub, max)| Op::Drain { sub, max }),
        ],
        0..200,
    )
}

proptest! {
    #[test]
    fn delivered_plus_lost_equals_published(ops in ops(), capacity in 1..12usize) {
        let (hub, feed) = hub_with(capacity, capacity);
        let names = [topic("a"), topic("b"), topic("c")];
        // Subscribers: a, b, a+b, a+b+c.
        let sets: [&[usize]; 4] = [&[0], &[1], &[0, 1], &[0, 1, 2]];
        let mut subs: Vec<_> = sets
            .iter()
            .map(|set| {
                let topics: Vec<_> = set.iter().map(|&i| names[i].clone()).collect();
                hub.subscribe(&topics, None).unwrap()
            })
            .collect();
        let mut published = [0u64; 4];
        let mut delivered = [0u64; 4];
        let mut lost = [0u64; 4];
        let mut broken = [false; 4];
        let mut last_seq = [0u64; 4];
        let drain = |i: usize, max: usize, sub: &mut crate::Subscription,
                         delivered: &mut [u64; 4], lost: &mut [u64; 4], broken: &mut [bool; 4],
                         last_seq: &mut [u64; 4]| {
            if broken[i] {
                return;
            }
            let mut out = BytesMut::new();
            let d = sub.drain_into(&mut out, max, 1 << 20);
            if d.lost > 0 {
                // A writer cuts the client here: what it never got is what is left.
                lost[i] = sub.backlog();
                broken[i] = true;
                return;
            }
            let events = decode(&out);
            assert_eq!(events.len(), d.frames);
            for e in events {
                let seq: u64 = e.id.as_deref().and_then(|id| id.strip_prefix("t-"))
                    .and_then(|s| s.parse().ok()).unwrap();
                assert!(seq > last_seq[i], "order: {seq} after {}", last_seq[i]);
                last_seq[i] = seq;
                delivered[i] += 1;
            }
        };
        for op in ops {
            match op {
                Op::Publish(t) => {
                    feed.ingest(&names[t], msg("x"));
                    for (i, set) in sets.iter().enumerate() {
                        // A cut subscriber is gone: later frames are not its concern.
                        if set.contains(&t) && !broken[i] {
                            published[i] += 1;
                        }
                    }
                }
                Op::Drain { sub, max } => drain(
                    sub, max, &mut subs[sub], &mut delivered, &mut lost, &mut broken, &mut last_seq,
                ),
            }
        }
        for i in 0..4 {
            while !broken[i] && subs[i].backlog() > 0 {
                drain(i, 64, &mut subs[i], &mut delivered, &mut lost, &mut broken, &mut last_seq);
            }
            prop_assert_eq!(delivered[i] + lost[i], published[i], "subscriber {}", i);
        }
    }
}
