//! Decoder cases, most taken from the WHATWG spec's examples.

use super::*;

/// Decodes `input` fed in one chunk, then in chunks of every size from 1 to 7,
/// asserting that chunking does not change the result.
fn decode(input: &[u8]) -> Vec<Item> {
    let whole = decode_chunks(&[input]);
    for size in 1..=7 {
        let chunks: Vec<&[u8]> = input.chunks(size).collect();
        assert_eq!(decode_chunks(&chunks), whole, "chunk size {size}");
    }
    whole
}

fn decode_chunks(chunks: &[&[u8]]) -> Vec<Item> {
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    for chunk in chunks {
        decoder.feed(chunk, &mut out).unwrap();
    }
    decoder.finish(&mut out);
    out
}

fn data(data: &str) -> Item {
    Item::Event(Event {
        data: data.to_owned(),
        ..Event::default()
    })
}

fn event(id: Option<&str>, last_event_id: &str, ty: Option<&str>, data: &str) -> Item {
    Item::Event(Event {
        id: id.map(str::to_owned),
        last_event_id: last_event_id.to_owned(),
        event: ty.map(str::to_owned),
        data: data.to_owned(),
    })
}

fn comment(text: &str) -> Item {
    Item::Comment(text.to_owned())
}

#[test]
fn spec_stock_ticker_example() {
    // "data: YHOO / data: +2 / data: 10" is one event with three lines.
    assert_eq!(
        decode(b"data: YHOO\ndata: +2\ndata: 10\n\n"),
        [data("YHOO\n+2\n10")]
    );
}

#[test]
fn spec_example_with_ids() {
    let stream = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n";
    assert_eq!(
        decode(stream),
        [
            comment("test stream"),
            event(Some("1"), "1", None, "first event"),
            // A bare `id` line resets the last event id to the empty string.
            event(Some(""), "", None, "second event"),
            // The third block has no blank line after it: never dispatched.
        ]
    );
}

#[test]
fn spec_example_third_event_keeps_one_leading_space() {
    assert_eq!(decode(b"data:  third event\n\n"), [data(" third event")]);
}

#[test]
fn spec_example_empty_data_lines() {
    // Blocks: "data" → "", "data\ndata" → "\n", and a last "data:" that the
    // end of the stream discards.
    assert_eq!(
        decode(b"data\n\ndata\ndata\n\ndata:"),
        [data(""), data("\n")]
    );
}

#[test]
fn spec_example_space_after_colon_is_optional() {
    assert_eq!(
        decode(b"data:test\n\ndata: test\n\n"),
        [data("test"), data("test")]
    );
}

#[test]
fn only_one_space_is_stripped() {
    assert_eq!(decode(b"data:   x \n\n"), [data("  x ")]);
    assert_eq!(decode(b"data:\tx\n\n"), [data("\tx")]);
}

#[test]
fn value_may_contain_colons() {
    assert_eq!(decode(b"data: a: b:c\n\n"), [data("a: b:c")]);
}

#[test]
fn all_three_line_breaks() {
    assert_eq!(decode(b"data: a\r\n\r\n"), [data("a")]);
    assert_eq!(decode(b"data: a\r\r"), [data("a")]);
    assert_eq!(
        decode(b"data: a\rdata: b\r\ndata: c\n\n"),
        [data("a\nb\nc")]
    );
    // LF then CR is two breaks: the CR ends an empty line, which dispatches.
    assert_eq!(decode(b"data: a\n\rdata: b\n\n"), [data("a"), data("b")]);
}

#[test]
fn cr_and_lf_split_across_feeds_are_one_break() {
    let expected = [data("a\nb")];
    assert_eq!(
        decode_chunks(&[b"data: a\r", b"\ndata: b\r\n\r\n"]),
        expected
    );
    assert_eq!(
        decode_chunks(&[b"data: a\r", b"", b"\ndata: b\n\n"]),
        expected
    );
    // A CR ending a chunk followed by a CR starting the next is two breaks.
    assert_eq!(
        decode_chunks(&[b"data: a\r", b"\rdata: b\n\n"]),
        [data("a"), data("b")]
    );
}

#[test]
fn event_type() {
    assert_eq!(
        decode(b"event: add\ndata: 1\n\ndata: 2\n\n"),
        [event(None, "", Some("add"), "1"), data("2")]
    );
    // The last `event` field of a block wins; an empty type means "message".
    assert_eq!(
        decode(b"event: a\nevent: b\ndata: x\n\nevent:\ndata: y\n\n"),
        [event(None, "", Some("b"), "x"), data("y")]
    );
}

#[test]
fn last_event_id_persists_across_blocks() {
    assert_eq!(
        decode(b"id: 5\ndata: a\n\ndata: b\n\nid: 6\ndata: c\n\n"),
        [
            event(Some("5"), "5", None, "a"),
            event(None, "5", None, "b"),
            event(Some("6"), "6", None, "c"),
        ]
    );
}

#[test]
fn id_without_data_updates_last_event_id_but_dispatches_nothing() {
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    decoder.feed(b"id: 9\n\ndata: x\n\n", &mut out).unwrap();
    assert_eq!(out, [event(None, "9", None, "x")]);
    assert_eq!(decoder.last_event_id(), "9");
}

#[test]
fn id_with_nul_is_ignored() {
    assert_eq!(
        decode(b"id: 1\n\nid: 2\0\ndata: x\n\n"),
        [event(None, "1", None, "x")]
    );
}

#[test]
fn event_without_data_is_not_dispatched() {
    assert_eq!(decode(b"event: ping\n\ndata: x\n\n"), [data("x")]);
    assert_eq!(decode(b"id: 1\nevent: ping\n\n\n\n"), []);
}

#[test]
fn eof_discards_incomplete_event() {
    assert_eq!(decode(b"data: a\n\ndata: b\n"), [data("a")]);
    assert_eq!(decode(b"data: a\n\ndata: b"), [data("a")]);
    // An unterminated last line is not a line: not even a retry or comment.
    assert_eq!(decode(b"retry: 5"), []);
    assert_eq!(decode(b": hi"), []);
}

#[test]
fn retry() {
    assert_eq!(decode(b"retry: 3000\n"), [Item::Retry(3000)]);
    assert_eq!(decode(b"retry:0\n"), [Item::Retry(0)]);
    assert_eq!(
        decode(b"retry: 18446744073709551615\n"),
        [Item::Retry(u64::MAX)]
    );
}

#[test]
fn retry_that_is_not_only_digits_is_ignored() {
    for line in [
        &b"retry: 1s\n"[..],
        b"retry: -1\n",
        b"retry: +1\n",
        b"retry: 1.5\n",
        b"retry:  1\n",
        b"retry: 1 \n",
        b"retry:\n",
        b"retry\n",
        b"retry: \xD9\xA1\n", // ARABIC-INDIC DIGIT ONE is not an ASCII digit
        b"retry: 18446744073709551616\n",
    ] {
        assert_eq!(decode(line), [], "{:?}", String::from_utf8_lossy(line));
    }
}

#[test]
fn retry_is_yielded_in_stream_order() {
    assert_eq!(
        decode(b"data: a\nretry: 10\n\n"),
        [Item::Retry(10), data("a")]
    );
}

#[test]
fn comments() {
    assert_eq!(
        decode(b":\n: \n:  two\n:x:y\n"),
        [comment(""), comment(""), comment(" two"), comment("x:y")]
    );
    // Comments do not interrupt a block.
    assert_eq!(
        decode(b"data: a\n: keep-alive\ndata: b\n\n"),
        [comment("keep-alive"), data("a\nb")]
    );
}

#[test]
fn unknown_fields_are_ignored() {
    assert_eq!(
        decode(b"foo: bar\nData: x\ndata : y\nevent\ndata: z\n\n"),
        [data("z")]
    );
}

#[test]
fn field_without_colon_has_empty_value() {
    assert_eq!(decode(b"data\ndata\n\n"), [data("\n")]);
    assert_eq!(decode(b"event: a\nevent\ndata: x\n\n"), [data("x")]);
}

#[test]
fn bom_is_stripped_once_at_stream_start() {
    assert_eq!(decode(b"\xEF\xBB\xBFdata: x\n\n"), [data("x")]);
    // Only one: a second BOM is part of the first line's field name.
    assert_eq!(decode(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\n"), []);
    // Not at the start: an ordinary (unknown) field name.
    assert_eq!(decode(b"\n\xEF\xBB\xBFdata: x\n\n"), []);
    assert_eq!(decode(b"data: \xEF\xBB\xBFx\n\n"), [data("\u{FEFF}x")]);
}

#[test]
fn bom_prefix_that_is_not_a_bom_is_content() {
    // The prefix EF BB followed by something else is invalid UTF-8 in a field
    // name: the line is an unknown field, but its break still counts.
    assert_eq!(decode(b"\xEF\xBB\ndata: x\n\n"), [data("x")]);
    assert_eq!(decode(b"\xEF\xBB:c\ndata: x\n\n"), [data("x")]);
    assert_eq!(decode(b"\xEFdata: x\n\n"), []);
}

#[test]
fn invalid_utf8_becomes_replacement_characters() {
    assert_eq!(
        decode(b"data: a\xFFb\xE2\x82\n\n"),
        [data("a\u{FFFD}b\u{FFFD}")]
    );
    assert_eq!(decode(b":\xC3\n"), [comment("\u{FFFD}")]);
    // A multi-byte character split across chunks survives.
    assert_eq!(
        decode_chunks(&[b"data: \xC3", b"\xA9\n\n"]),
        [data("\u{E9}")]
    );
}

#[test]
fn empty_and_blank_input() {
    assert_eq!(decode(b""), []);
    assert_eq!(decode(b"\n\n\r\n\r"), []);
}

#[test]
fn line_too_long() {
    let mut decoder = Decoder::with_max_line(8);
    let mut out = Vec::new();
    decoder.feed(b"data: 12\n\n", &mut out).unwrap();
    assert_eq!(out, [data("12")]);
    let err = decoder.feed(b"data: 123\n\n", &mut out).unwrap_err();
    assert_eq!(err, DecodeError::LineTooLong { max: 8 });
    assert_eq!(err.to_string(), "SSE line longer than 8 bytes");
    // Sticky until finish.
    assert_eq!(
        decoder.feed(b"\n", &mut out),
        Err(DecodeError::LineTooLong { max: 8 })
    );
    decoder.finish(&mut out);
    decoder.feed(b"data: 3\n\n", &mut out).unwrap();
    assert_eq!(out, [data("12"), data("3")]);
}

#[test]
fn line_too_long_across_feeds() {
    let mut decoder = Decoder::with_max_line(8);
    let mut out = Vec::new();
    decoder.feed(b"data:", &mut out).unwrap();
    decoder.feed(b" 12", &mut out).unwrap();
    assert!(decoder.feed(b"3", &mut out).is_err());

    let mut decoder = Decoder::with_max_line(8);
    decoder.feed(b"data:", &mut out).unwrap();
    assert!(decoder.feed(b" 123\n", &mut out).is_err());
    assert!(out.is_empty());
}

#[test]
fn items_before_an_error_are_kept() {
    let mut decoder = Decoder::with_max_line(8);
    let mut out = Vec::new();
    assert!(
        decoder
            .feed(b"data: a\n\ndata: 1234567\n", &mut out)
            .is_err()
    );
    assert_eq!(out, [data("a")]);
}

#[test]
fn finish_resets_for_a_reconnection_and_keeps_last_event_id() {
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    decoder
        .feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n", &mut out)
        .unwrap();
    decoder.finish(&mut out);
    assert_eq!(out, [event(Some("1"), "1", None, "a")]);
    // The id of the undispatched block never reached the event source.
    assert_eq!(decoder.last_event_id(), "1");

    // The new stream may start with a BOM and inherits the last event id.
    out.clear();
    decoder.feed(b"\xEF\xBB\xBFdata: c\n\n", &mut out).unwrap();
    assert_eq!(out, [event(None, "1", None, "c")]);
}

#[test]
fn finish_forgets_a_pending_cr() {
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    decoder.feed(b"data: a\r", &mut out).unwrap();
    decoder.finish(&mut out);
    // A leading LF of the next stream is a blank line, not the tail of a CRLF.
    decoder.feed(b"\ndata: b\n\n", &mut out).unwrap();
    assert_eq!(out, [data("b")]);
}

#[test]
fn default_is_new() {
    let decoder = Decoder::default();
    assert_eq!(decoder.max_line, DEFAULT_MAX_LINE);
    assert_eq!(decoder.last_event_id(), "");
}
