//! The encoder: events, comments and `retry` lines appended to a [`BytesMut`].
//!
//! The gateway encodes each event once and shares the frozen `Bytes` with every
//! subscriber, so the encoder favours one exact `reserve` and a handful of
//! `extend_from_slice` calls. A payload without line breaks (the common case)
//! is found with a single `memchr2` scan.
//!
//! ## Line breaks
//!
//! Payload and comment text is split into lines at `\r\n` (one break), a lone
//! `\r` and a lone `\n` (one break each), exactly as a WHATWG decoder splits
//! them. A text with `n` breaks always gives `n + 1` lines, so the empty text
//! gives one empty line and a text ending in a break gives a final empty line.
//! Decoding the result yields the text with every break normalised to `\n`.

use bytes::{BufMut, BytesMut};
use memchr::memchr2;

const ID: &[u8] = b"id: ";
const EVENT: &[u8] = b"event: ";
const DATA: &[u8] = b"data: ";
const COMMENT: &[u8] = b": ";
const RETRY: &[u8] = b"retry: ";

/// Appends one event: `id: <id>\n` (if `Some`), `event: <type>\n` (if `Some`),
/// one `data: <line>\n` per payload line, then the blank line that dispatches it.
///
/// The payload is split at `\r\n` (one break), a lone `\r` and a lone `\n`;
/// `n` breaks give `n + 1` lines, so `""` gives one `data: \n` line and a
/// payload ending in a break gives a final empty one. A decoder therefore
/// yields the payload with every break normalised to `\n`.
///
/// Reserves exactly [`encoded_event_len`] bytes first. The caller guarantees
/// that `id` and `event` contain no CR or LF (see [`validate_id`] and
/// [`validate_event_type`]); this is only checked in debug builds.
///
/// [`validate_id`]: crate::validate_id
/// [`validate_event_type`]: crate::validate_event_type
pub fn encode_event(out: &mut BytesMut, id: Option<&str>, event: Option<&str>, data: &str) {
    debug_assert!(
        id.is_none_or(|s| memchr2(b'\r', b'\n', s.as_bytes()).is_none()),
        "event id contains a line break: {id:?}"
    );
    debug_assert!(
        event.is_none_or(|s| memchr2(b'\r', b'\n', s.as_bytes()).is_none()),
        "event type contains a line break: {event:?}"
    );
    let data = data.as_bytes();
    let head = header_len(id, event);
    if memchr2(b'\r', b'\n', data).is_none() {
        // Fast path: one data line.
        out.reserve(head + DATA.len() + data.len() + 2);
        write_header(out, id, event);
        out.extend_from_slice(DATA);
        out.extend_from_slice(data);
        out.extend_from_slice(b"\n\n");
        return;
    }
    out.reserve(head + prefixed_lines_len(DATA.len(), data) + 1);
    write_header(out, id, event);
    for line in Lines::new(data) {
        out.extend_from_slice(DATA);
        out.extend_from_slice(line);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

/// The exact number of bytes [`encode_event`] appends for these arguments.
pub fn encoded_event_len(id: Option<&str>, event: Option<&str>, data: &str) -> usize {
    header_len(id, event) + prefixed_lines_len(DATA.len(), data.as_bytes()) + 1
}

/// Appends a comment: `: <line>\n` per line of `text` (split like event data).
/// An empty line is written as `:\n`, so the empty text gives `:\n` (a common
/// keep-alive). Comments never dispatch an event and browsers ignore them.
pub fn encode_comment(out: &mut BytesMut, text: &str) {
    let text = text.as_bytes();
    if text.is_empty() {
        out.extend_from_slice(b":\n");
        return;
    }
    let mut len = 0;
    for line in Lines::new(text) {
        len += comment_line_len(line);
    }
    out.reserve(len);
    for line in Lines::new(text) {
        if line.is_empty() {
            out.extend_from_slice(b":\n");
        } else {
            out.extend_from_slice(COMMENT);
            out.extend_from_slice(line);
            out.put_u8(b'\n');
        }
    }
}

/// Appends `retry: <millis>\n`, which sets the client's reconnection delay.
/// Formats the number on the stack; does not allocate beyond `out`.
pub fn encode_retry(out: &mut BytesMut, millis: u64) {
    // u64::MAX has 20 decimal digits.
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut n = millis;
    loop {
        start -= 1;
        // `n % 10` is below 10, so the cast cannot truncate.
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let digits = &digits[start..];
    out.reserve(RETRY.len() + digits.len() + 1);
    out.extend_from_slice(RETRY);
    out.extend_from_slice(digits);
    out.put_u8(b'\n');
}

fn header_len(id: Option<&str>, event: Option<&str>) -> usize {
    id.map_or(0, |s| ID.len() + s.len() + 1) + event.map_or(0, |s| EVENT.len() + s.len() + 1)
}

fn write_header(out: &mut BytesMut, id: Option<&str>, event: Option<&str>) {
    if let Some(id) = id {
        out.extend_from_slice(ID);
        out.extend_from_slice(id.as_bytes());
        out.put_u8(b'\n');
    }
    if let Some(event) = event {
        out.extend_from_slice(EVENT);
        out.extend_from_slice(event.as_bytes());
        out.put_u8(b'\n');
    }
}

/// Length of `text` written as lines of `prefix_len` prefix + line + `\n`.
fn prefixed_lines_len(prefix_len: usize, text: &[u8]) -> usize {
    let mut len = 0;
    for line in Lines::new(text) {
        len += prefix_len + line.len() + 1;
    }
    len
}

fn comment_line_len(line: &[u8]) -> usize {
    if line.is_empty() {
        2
    } else {
        COMMENT.len() + line.len() + 1
    }
}

/// Splits text at `\r\n`, lone `\r` and lone `\n`; `n` breaks give `n + 1`
/// lines (the empty text gives one empty line).
#[derive(Debug)]
struct Lines<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a [u8]) -> Self {
        Self { rest: Some(text) }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        match memchr2(b'\r', b'\n', rest) {
            None => {
                self.rest = None;
                Some(rest)
            }
            Some(i) => {
                let after = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    i + 2
                } else {
                    i + 1
                };
                self.rest = Some(&rest[after..]);
                Some(&rest[..i])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Option<&str>, ev: Option<&str>, data: &str) -> String {
        let mut out = BytesMut::new();
        encode_event(&mut out, id, ev, data);
        assert_eq!(out.len(), encoded_event_len(id, ev, data), "{data:?}");
        String::from_utf8(out.to_vec()).unwrap_or_default()
    }

    fn comment(text: &str) -> String {
        let mut out = BytesMut::new();
        encode_comment(&mut out, text);
        String::from_utf8(out.to_vec()).unwrap_or_default()
    }

    fn retry(millis: u64) -> String {
        let mut out = BytesMut::new();
        encode_retry(&mut out, millis);
        String::from_utf8(out.to_vec()).unwrap_or_default()
    }

    #[test]
    fn single_line() {
        assert_eq!(event(None, None, "hello"), "data: hello\n\n");
    }

    #[test]
    fn multi_line_lf() {
        assert_eq!(
            event(None, None, "a\nb\nc"),
            "data: a\ndata: b\ndata: c\n\n"
        );
    }

    #[test]
    fn crlf_is_one_break() {
        assert_eq!(event(None, None, "a\r\nb"), "data: a\ndata: b\n\n");
    }

    #[test]
    fn lone_cr_is_a_break() {
        assert_eq!(event(None, None, "a\rb"), "data: a\ndata: b\n\n");
    }

    #[test]
    fn lf_cr_is_two_breaks() {
        assert_eq!(event(None, None, "a\n\rb"), "data: a\ndata: \ndata: b\n\n");
    }

    #[test]
    fn mixed_breaks() {
        assert_eq!(
            event(None, None, "a\r\nb\rc\nd"),
            "data: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }

    #[test]
    fn empty_payload() {
        assert_eq!(event(None, None, ""), "data: \n\n");
    }

    #[test]
    fn trailing_newline_gives_final_empty_line() {
        assert_eq!(event(None, None, "a\n"), "data: a\ndata: \n\n");
        assert_eq!(event(None, None, "a\r\n"), "data: a\ndata: \n\n");
        assert_eq!(event(None, None, "\n"), "data: \ndata: \n\n");
    }

    #[test]
    fn leading_space_is_kept_after_the_separator_space() {
        assert_eq!(event(None, None, " a\n  b"), "data:  a\ndata:   b\n\n");
    }

    #[test]
    fn id_and_event_type() {
        assert_eq!(
            event(Some("7"), Some("tick"), "x"),
            "id: 7\nevent: tick\ndata: x\n\n"
        );
        assert_eq!(event(Some("7"), None, "x"), "id: 7\ndata: x\n\n");
        assert_eq!(event(None, Some("tick"), "x"), "event: tick\ndata: x\n\n");
        assert_eq!(event(Some(""), None, "x"), "id: \ndata: x\n\n");
        assert_eq!(
            event(Some("7"), Some("tick"), "x\ny"),
            "id: 7\nevent: tick\ndata: x\ndata: y\n\n"
        );
    }

    #[test]
    fn appends_to_existing_buffer() {
        let mut out = BytesMut::from(&b"prefix"[..]);
        encode_event(&mut out, None, None, "a");
        encode_event(&mut out, None, None, "b\nc");
        assert_eq!(&out[..], b"prefixdata: a\n\ndata: b\ndata: c\n\n");
    }

    #[test]
    fn comments() {
        assert_eq!(comment(""), ":\n");
        assert_eq!(comment("keep-alive"), ": keep-alive\n");
        assert_eq!(comment("a\r\nb\rc\nd"), ": a\n: b\n: c\n: d\n");
        assert_eq!(comment("a\n\nb"), ": a\n:\n: b\n");
        assert_eq!(comment("a\n"), ": a\n:\n");
    }

    #[test]
    fn retries() {
        assert_eq!(retry(0), "retry: 0\n");
        assert_eq!(retry(7), "retry: 7\n");
        assert_eq!(retry(3000), "retry: 3000\n");
        assert_eq!(retry(u64::MAX), "retry: 18446744073709551615\n");
    }

    #[test]
    fn lengths_match_for_awkward_payloads() {
        for data in ["", "\r", "\n", "\r\n", "\n\r", "\r\r\n\n", "é\r\n😀", " : "] {
            event(Some("id"), Some("type"), data);
        }
    }

    #[test]
    fn lines_split_like_the_decoder() {
        fn split(s: &str) -> Vec<&[u8]> {
            Lines::new(s.as_bytes()).collect()
        }
        assert_eq!(split(""), [b""]);
        assert_eq!(split("a"), [b"a"]);
        assert_eq!(split("a\r\n"), [&b"a"[..], b""]);
        assert_eq!(split("\r\r"), [b"", b"", b""]);
    }
}
