//! The SSE body scan: one vectorised search per read for line ends, a first-byte
//! dispatch per line, an event at each blank line.

use memchr::memchr2_iter;

/// Bytes of a read-split line kept for parsing (`data: ` + 20 digits + `,` + 20 digits
/// fits; so does `event: gateway.reset`).
pub const LINE_PREFIX: usize = 48;

/// The event type the gateway uses to announce a gap (protocol §2).
const RESET_EVENT: &[u8] = b"gateway.reset";

/// What the SSE scan reports, one call per dispatched event frame.
pub trait EventSink {
    /// An event whose first data line starts with `<seq>,<send-time-ns>`.
    fn event(&mut self, seq: u64, sent_ns: u64);
    /// An `event: gateway.reset` frame.
    fn reset(&mut self);
    /// Any other event with data (not of our payload form).
    fn other(&mut self);
}

/// Flags of the event frame being read.
const HAS_DATA: u8 = 1;
const PARSED: u8 = 2;
const RESET: u8 = 4;

/// Incremental SSE scanner: finds the lines of whole reads with `memchr`, dispatches an
/// event at each blank line. About 90 bytes of state.
#[derive(Debug, Clone)]
pub struct SseScanner {
    /// Prefix of a line split across feeds.
    carry: [u8; LINE_PREFIX],
    /// Bytes of the split line seen so far (may exceed `LINE_PREFIX`: only the prefix is
    /// kept).
    carry_len: u32,
    /// The previous feed ended with CR: a LF starting the next one belongs to it.
    after_cr: bool,
    /// Flags of the current event frame.
    flags: u8,
    /// `seq` of the current event frame, when `PARSED`.
    seq: u64,
    /// Send time of the current event frame, when `PARSED`.
    sent_ns: u64,
}

impl Default for SseScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl SseScanner {
    /// A scanner at the start of a stream.
    pub const fn new() -> Self {
        Self {
            carry: [0; LINE_PREFIX],
            carry_len: 0,
            after_cr: false,
            flags: 0,
            seq: 0,
            sent_ns: 0,
        }
    }

    /// Scans the next bytes of the body.
    pub fn feed(&mut self, data: &[u8], sink: &mut impl EventSink) {
        let mut pos = 0;
        if self.after_cr && !data.is_empty() {
            self.after_cr = false;
            if data[0] == b'\n' {
                pos = 1;
            }
        }
        // One vectorised pass finds every line end of the read.
        let mut start = pos;
        for i in memchr2_iter(b'\n', b'\r', &data[pos..]) {
            let end = pos + i;
            if end < start {
                // the LF of a CRLF already taken
                continue;
            }
            if self.carry_len == 0 {
                self.line(&data[start..end], sink);
            } else {
                self.push_carry(&data[start..end]);
                let kept = (self.carry_len as usize).min(LINE_PREFIX);
                let line = self.carry;
                self.carry_len = 0;
                self.line(&line[..kept], sink);
            }
            start = end + 1;
            if data[end] == b'\r' {
                match data.get(start) {
                    Some(b'\n') => start += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        if start < data.len() {
            self.push_carry(&data[start..]);
        }
    }

    fn push_carry(&mut self, part: &[u8]) {
        let have = self.carry_len as usize;
        if have < LINE_PREFIX {
            let n = part.len().min(LINE_PREFIX - have);
            self.carry[have..have + n].copy_from_slice(&part[..n]);
        }
        // A line longer than 4 GiB is not ours to care about: saturate.
        self.carry_len = self
            .carry_len
            .saturating_add(u32::try_from(part.len()).unwrap_or(u32::MAX));
    }

    /// One complete line, without its terminator (possibly truncated to the prefix).
    #[inline]
    fn line(&mut self, line: &[u8], sink: &mut impl EventSink) {
        let Some(&first) = line.first() else {
            self.dispatch(sink);
            return;
        };
        match first {
            b'd' => {
                if let Some(value) = field_value(line, b"data")
                    && self.flags & HAS_DATA == 0
                {
                    self.flags |= HAS_DATA;
                    if let Some((seq, sent)) = parse_payload(value) {
                        self.flags |= PARSED;
                        self.seq = seq;
                        self.sent_ns = sent;
                    }
                }
            }
            b'e' => {
                if let Some(value) = field_value(line, b"event") {
                    if value == RESET_EVENT {
                        self.flags |= RESET;
                    } else {
                        self.flags &= !RESET;
                    }
                }
            }
            // comments (`:`), `id:`, `retry:` and unknown fields: nothing to do
            _ => {}
        }
    }

    /// A blank line: like a browser, dispatch only a block that had a data line.
    #[inline]
    fn dispatch(&mut self, sink: &mut impl EventSink) {
        let flags = std::mem::take(&mut self.flags);
        if flags & HAS_DATA == 0 {
            return;
        }
        if flags & RESET != 0 {
            sink.reset();
        } else if flags & PARSED != 0 {
            sink.event(self.seq, self.sent_ns);
        } else {
            sink.other();
        }
    }
}

/// The value of `line` when it is field `name`: `name:value`, `name: value` or `name`.
#[inline]
fn field_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?;
    match rest.split_first() {
        None => Some(rest),
        Some((b':', v)) => Some(v.strip_prefix(b" ").unwrap_or(v)),
        Some(_) => None,
    }
}

/// Parses `<seq>,<send-time-ns>` optionally followed by `,<anything>`.
#[inline]
pub fn parse_payload(value: &[u8]) -> Option<(u64, u64)> {
    let (seq, n) = parse_u64(value)?;
    let rest = value.get(n..)?.strip_prefix(b",")?;
    let (sent, m) = parse_u64(rest)?;
    match rest.get(m) {
        None | Some(b',') => Some((seq, sent)),
        Some(_) => None,
    }
}

/// Leading decimal digits of `s`: value and digit count; `None` when there are none or
/// they overflow.
#[inline]
fn parse_u64(s: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    let mut n = 0;
    // eight digits at a time while all eight are digits (16 at most: 10^16 fits)
    while n < 16 {
        let Some(bytes) = s.get(n..n + 8) else {
            break;
        };
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        let word = u64::from_le_bytes(word);
        if !all_digits8(word) {
            break;
        }
        v = v * 100_000_000 + swar8(word);
        n += 8;
    }
    // then one at a time: 19 digits always fit in a u64
    while n < s.len().min(19) {
        let d = s[n].wrapping_sub(b'0');
        if d > 9 {
            return (n > 0).then_some((v, n));
        }
        v = v * 10 + u64::from(d);
        n += 1;
    }
    match s.get(n).map(|b| b.wrapping_sub(b'0')) {
        Some(d) if d <= 9 => {
            let v = v.checked_mul(10)?.checked_add(u64::from(d))?;
            match s.get(n + 1) {
                Some(b) if b.is_ascii_digit() => None,
                _ => Some((v, n + 1)),
            }
        }
        _ => (n > 0).then_some((v, n)),
    }
}

/// Whether the 8 bytes of `w` are all ASCII digits.
#[inline]
const fn all_digits8(w: u64) -> bool {
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    w & HIGH == ZEROS && w.wrapping_add(0x0606_0606_0606_0606) & HIGH == ZEROS
}

/// The value of 8 ASCII digits loaded little-endian (first digit in the lowest byte).
#[inline]
const fn swar8(w: u64) -> u64 {
    let v = w - 0x3030_3030_3030_3030;
    // each even byte: 10 × digit + next digit
    let v = (v * 10 + (v >> 8)) & 0x00FF_00FF_00FF_00FF;
    // each 32-bit half: 100 × pair + next pair, then combine the halves
    let v = (v * 100 + (v >> 16)) & 0x0000_FFFF_0000_FFFF;
    (v * 10_000 + (v >> 32)) & 0xFFFF_FFFF
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::tests::{GATEWAY_BODY, Rec, gateway_expected};

    fn scan_whole(body: &[u8]) -> Rec {
        let mut rec = Rec::default();
        let mut s = SseScanner::new();
        s.feed(body, &mut rec);
        rec
    }

    #[test]
    fn payload_forms() {
        assert_eq!(parse_payload(b"12,345"), Some((12, 345)));
        assert_eq!(parse_payload(b"12,345,padding"), Some((12, 345)));
        assert_eq!(parse_payload(b"12,345x"), None);
        assert_eq!(parse_payload(b"12"), None);
        assert_eq!(parse_payload(b",1"), None);
        assert_eq!(parse_payload(b"hello"), None);
        assert_eq!(parse_payload(b"99999999999999999999999,1"), None);
        assert_eq!(
            parse_payload(b"18446744073709551615,1"),
            Some((u64::MAX, 1))
        );
    }
    #[test]
    fn integers_of_every_length() {
        let mut n: u64 = 0;
        for len in 1..=20 {
            n = n * 10 + (len % 10);
            let text = n.to_string();
            assert_eq!(parse_u64(text.as_bytes()), Some((n, text.len())), "{text}");
            let tail = format!("{text},9");
            assert_eq!(parse_u64(tail.as_bytes()), Some((n, text.len())), "{tail}");
        }
        assert_eq!(parse_u64(b"12345678"), Some((12_345_678, 8)));
        assert_eq!(parse_u64(b"00000000000000000007x"), Some((7, 20)));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b"184467440737095516150"), None);
        assert_eq!(parse_u64(b"1234567:"), Some((1_234_567, 7)));
        assert_eq!(parse_u64(b"12345678/9"), Some((12_345_678, 8)));
        assert_eq!(parse_u64(b"x1"), None);
        assert_eq!(parse_u64(b""), None);
    }
    #[test]
    fn gateway_stream_in_one_read() {
        assert_eq!(scan_whole(GATEWAY_BODY), gateway_expected());
    }
    #[test]
    fn field_forms_and_line_endings() {
        let body = b"data:1,5\r\n\r\ndata 9,9\n\ndata\n\nevent:gateway.reset\rdata: x\r\r: c\r\ndata: 2,6\r\n\n";
        let rec = scan_whole(body);
        assert_eq!(rec.events, vec![(1, 5), (2, 6)]);
        assert_eq!(rec.resets, 1);
        // `data` with no colon is an empty data line: an event of another form
        assert_eq!(rec.other, 1);
    }
    #[test]
    fn comments_only_dispatch_nothing() {
        assert_eq!(scan_whole(b": a\n\n: b\n\nretry: 10\n\n"), Rec::default());
    }
}
