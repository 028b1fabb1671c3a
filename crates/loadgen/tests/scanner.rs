//! The load generator's SSE scanner against `sse-framing`'s spec-exact decoder: for any
//! stream of lines (fields, comments, blank lines; LF, CR or CRLF endings) cut into any
//! reads, the scanner reports the same events, classified the same way, as the decoder
//! dispatches.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use sse_framing::{Decoder, Item};
use sse_loadgen::parse::{EventSink, SseScanner, parse_payload};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Event(u64, u64),
    Reset,
    Other,
}

#[derive(Default)]
struct Rec(Vec<Seen>);

impl EventSink for Rec {
    fn event(&mut self, seq: u64, sent_ns: u64) {
        self.0.push(Seen::Event(seq, sent_ns));
    }
    fn reset(&mut self) {
        self.0.push(Seen::Reset);
    }
    fn other(&mut self) {
        self.0.push(Seen::Other);
    }
}

/// How the scanner must classify an event the decoder dispatched.
fn classify(event: &sse_framing::Event) -> Seen {
    if event.event.as_deref() == Some("gateway.reset") {
        return Seen::Reset;
    }
    let first_line = event.data.split('\n').next().unwrap_or_default();
    match parse_payload(first_line.as_bytes()) {
        Some((seq, sent)) => Seen::Event(seq, sent),
        None => Seen::Other,
    }
}

/// One line of an event stream, without its ending.
fn line() -> impl Strategy<Value = String> {
    let payload = (
        0u64..1_000_000,
        0u64..u64::MAX / 2,
        proptest::option::of("[a-z,]{0,8}"),
    )
        .prop_map(|(seq, sent, tail)| match tail {
            Some(t) => format!("{seq},{sent},{t}"),
            None => format!("{seq},{sent}"),
        });
    prop_oneof![
        3 => payload.clone().prop_map(|p| format!("data: {p}")),
        1 => payload.prop_map(|p| format!("data:{p}")),
        2 => "[ -~]{0,60}".prop_map(|v| format!("data: {v}")),
        1 => Just("data".to_owned()),
        1 => Just("event: gateway.reset".to_owned()),
        1 => "[a-z.]{0,12}".prop_map(|v| format!("event: {v}")),
        1 => "[a-z0-9-]{0,12}".prop_map(|v| format!("id: {v}")),
        1 => "[0-9]{1,5}".prop_map(|v| format!("retry: {v}")),
        1 => "[ -~]{0,30}".prop_map(|v| format!(":{v}")),
        1 => "[a-z]{1,6}(: [a-z]{0,6})?",
        3 => Just(String::new()),
    ]
}

fn ending() -> impl Strategy<Value = &'static str> {
    prop_oneof![4 => Just("\n"), 1 => Just("\r"), 2 => Just("\r\n")]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn the_scanner_sees_what_the_decoder_dispatches(
        lines in prop::collection::vec((line(), ending()), 0..60),
        cuts in prop::collection::vec(1usize..40, 0..30),
    ) {
        let mut body = String::new();
        for (l, e) in &lines {
            body.push_str(l);
            body.push_str(e);
        }
        // A trailing blank line dispatches whatever is pending, for both.
        body.push_str("\n\n");
        let bytes = body.as_bytes();

        let mut decoder = Decoder::new();
        let mut items = Vec::new();
        decoder.feed(bytes, &mut items).unwrap();
        let want: Vec<Seen> = items
            .iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some(classify(e)),
                _ => None,
            })
            .collect();

        let mut scanner = SseScanner::new();
        let mut rec = Rec::default();
        let mut at = 0;
        for cut in cuts {
            let end = (at + cut).min(bytes.len());
            scanner.feed(&bytes[at..end], &mut rec);
            at = end;
        }
        scanner.feed(&bytes[at..], &mut rec);
        prop_assert_eq!(rec.0, want, "body {:?}", body);
    }
}
