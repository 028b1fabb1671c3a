//! `decode(encode(x)) == x`, for any payload, id and event type, however the
//! encoded bytes are split into chunks and however many events are concatenated.

#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use proptest::prelude::*;
use sse_framing::{
    Decoder, Event, Item, encode_comment, encode_event, encode_retry, encoded_event_len,
};

/// One event as the encoder takes it.
#[derive(Debug, Clone)]
struct Input {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// Payloads heavy in line breaks, spaces, colons and non-ASCII text.
fn data() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\r".to_owned()),
        Just("\n".to_owned()),
        Just("\r\n".to_owned()),
        Just(" ".to_owned()),
        Just(":".to_owned()),
        Just("data: ".to_owned()),
        Just("\u{FEFF}".to_owned()),
        "[a-z0-9]{1,4}",
        "[é😀\u{0}\t]{1,3}",
        any::<char>().prop_map(String::from),
    ];
    prop_oneof![
        3 => prop::collection::vec(piece, 0..24).prop_map(|p| p.concat()),
        1 => any::<String>(),
    ]
}

fn id() -> impl Strategy<Value = Option<String>> {
    prop::option::of("[^\r\n\u{0}]{0,12}")
}

fn event_type() -> impl Strategy<Value = Option<String>> {
    prop::option::of("[^\r\n]{1,12}")
}

fn input() -> impl Strategy<Value = Input> {
    (id(), event_type(), data()).prop_map(|(id, event, data)| Input { id, event, data })
}

fn encode(inputs: &[Input]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for x in inputs {
        let before = out.len();
        encode_event(&mut out, x.id.as_deref(), x.event.as_deref(), &x.data);
        assert_eq!(
            out.len() - before,
            encoded_event_len(x.id.as_deref(), x.event.as_deref(), &x.data)
        );
    }
    out.to_vec()
}

/// What a spec-exact decoder should yield for `inputs`, in order.
fn expected(inputs: &[Input]) -> Vec<Item> {
    let mut last_event_id = String::new();
    inputs
        .iter()
        .map(|x| {
            if let Some(id) = &x.id {
                last_event_id.clone_from(id);
            }
            Item::Event(Event {
                id: x.id.clone(),
                last_event_id: last_event_id.clone(),
                event: x.event.clone(),
                data: x.data.replace("\r\n", "\n").replace('\r', "\n"),
            })
        })
        .collect()
}

/// Decodes `bytes` fed in pieces cut at `splits` (indices taken modulo the
/// length, so any list works; repeated cuts give empty chunks).
fn decode_split(bytes: &[u8], splits: &[usize]) -> Vec<Item> {
    let mut cuts: Vec<usize> = splits.iter().map(|s| s % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    let mut start = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        decoder.feed(&bytes[start..cut], &mut out).unwrap();
        start = cut;
    }
    decoder.finish(&mut out);
    out
}

proptest! {
    #[test]
    fn one_event_round_trips(x in input()) {
        let bytes = encode(std::slice::from_ref(&x));
        prop_assert_eq!(decode_split(&bytes, &[]), expected(&[x]));
    }

    #[test]
    fn one_event_round_trips_in_any_chunking(
        x in input(),
        splits in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let bytes = encode(std::slice::from_ref(&x));
        prop_assert_eq!(decode_split(&bytes, &splits), expected(&[x]));
    }

    #[test]
    fn concatenated_events_round_trip_in_order(
        xs in prop::collection::vec(input(), 1..8),
        splits in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let bytes = encode(&xs);
        prop_assert_eq!(decode_split(&bytes, &splits), expected(&xs));
    }

    /// The encoder only writes LF; a server writing CRLF or lone CR, with or
    /// without a leading BOM, must decode the same, including a CRLF or BOM cut
    /// between two chunks.
    #[test]
    fn any_line_ending_decodes_the_same(
        xs in prop::collection::vec(input(), 1..4),
        ending in prop_oneof![Just(&b"\n"[..]), Just(&b"\r\n"[..]), Just(&b"\r"[..])],
        bom in any::<bool>(),
        splits in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let mut bytes = Vec::new();
        if bom {
            bytes.extend_from_slice(b"\xEF\xBB\xBF");
        }
        for &b in &encode(&xs) {
            if b == b'\n' {
                bytes.extend_from_slice(ending);
            } else {
                bytes.push(b);
            }
        }
        prop_assert_eq!(decode_split(&bytes, &splits), expected(&xs));
    }

    #[test]
    fn comments_and_retries_round_trip(
        text in data(),
        millis in any::<u64>(),
        splits in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut out = BytesMut::new();
        encode_comment(&mut out, &text);
        encode_retry(&mut out, millis);
        let mut want: Vec<Item> = text
            .replace("\r\n", "\n")
            .replace('\r', "\n")
            .split('\n')
            .map(|line| Item::Comment(line.to_owned()))
            .collect();
        want.push(Item::Retry(millis));
        prop_assert_eq!(decode_split(&out, &splits), want);
    }
}
