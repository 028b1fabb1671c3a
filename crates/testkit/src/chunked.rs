//! A strict, incremental decoder for HTTP/1.1 `Transfer-Encoding: chunked` bodies.
//!
//! Pure (no I/O), so the raw HTTP and SSE clients share it and it is unit-tested on its
//! own. "Strict" means the framing a conforming server sends and nothing else:
//!
//! - a chunk-size line is one or more hex digits, optionally followed by chunk extensions
//!   (`;name=value`, skipped), and ends with CRLF — a bare LF is an error;
//! - chunk data is followed by exactly CRLF;
//! - the zero-size chunk is followed by optional trailer lines and an empty line (CRLF).
//!
//! Input may arrive split at any byte; [`ChunkedDecoder::feed`] keeps its state between
//! calls.

use std::fmt;

/// Longest chunk-size or trailer line accepted, in bytes, CRLF included.
const MAX_LINE: usize = 4096;

/// Malformed chunked framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkError {
    /// Offset in the encoded (framed) body where the problem was found.
    pub offset: u64,
    /// What was wrong.
    pub reason: String,
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed chunked body at byte {}: {}",
            self.offset, self.reason
        )
    }
}

impl std::error::Error for ChunkError {}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line (bytes so far, without the final LF).
    Size(Vec<u8>),
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// After chunk data: expecting CR.
    DataCr,
    /// After chunk data and CR: expecting LF.
    DataLf,
    /// After the last chunk: reading trailer lines until an empty one.
    Trailer(Vec<u8>),
    /// The terminating empty line was read.
    Done,
}

/// Incremental de-chunker. Feed it framed bytes; it appends the payload bytes to `out`.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Framed bytes consumed so far (for error offsets).
    offset: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body.
    pub fn new() -> Self {
        Self {
            state: State::Size(Vec::new()),
            offset: 0,
        }
    }

    /// True once the terminating zero chunk and the final empty line were read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// True when the decoder stands between two chunks (an EOF here loses no partial
    /// chunk, though the terminating zero chunk is still missing).
    pub fn at_chunk_boundary(&self) -> bool {
        matches!(&self.state, State::Size(line) if line.is_empty())
    }

    /// Decodes `input`, appending payload bytes to `out`. Returns how many bytes of
    /// `input` were consumed: all of them, unless the body ended ([`Self::is_done`]) inside
    /// `input`, in which case the rest belongs to whatever follows the body.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match &mut self.state {
                State::Done => break,
                State::Data(remaining) => {
                    let available = input.len() - i;
                    let take = usize::try_from(*remaining).map_or(available, |r| r.min(available));
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        self.state = State::DataCr;
                    }
                }
                State::DataCr => {
                    if input[i] != b'\r' {
                        return Err(self.error(i, "chunk data not followed by CRLF"));
                    }
                    i += 1;
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if input[i] != b'\n' {
                        return Err(self.error(i, "chunk data not followed by CRLF"));
                    }
                    i += 1;
                    self.state = State::Size(Vec::new());
                }
                State::Size(line) | State::Trailer(line) => {
                    let rest = &input[i..];
                    let Some(lf) = memchr::memchr(b'\n', rest) else {
                        line.extend_from_slice(rest);
                        i = input.len();
                        if line.len() > MAX_LINE {
                            return Err(self.error(i, "line too long"));
                        }
                        continue;
                    };
                    line.extend_from_slice(&rest[..lf]);
                    i += lf + 1;
                    if line.len() + 1 > MAX_LINE {
                        return Err(self.error(i, "line too long"));
                    }
                    if line.pop() != Some(b'\r') {
                        return Err(self.error(i, "line ends with a bare LF, not CRLF"));
                    }
                    let line = std::mem::take(line);
                    self.state = match self.state {
                        State::Size(_) => match parse_size(&line) {
                            Ok(0) => State::Trailer(Vec::new()),
                            Ok(n) => State::Data(n),
                            Err(reason) => return Err(self.error(i, &reason)),
                        },
                        _ if line.is_empty() => State::Done,
                        _ => State::Trailer(Vec::new()),
                    };
                }
            }
        }
        self.offset += i as u64;
        Ok(i)
    }

    fn error(&self, at: usize, reason: &str) -> ChunkError {
        ChunkError {
            offset: self.offset + at as u64,
            reason: reason.to_owned(),
        }
    }
}

/// Parses a chunk-size line (without CRLF): hex digits, then optional `;extensions`.
fn parse_size(line: &[u8]) -> Result<u64, String> {
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!(
            "chunk size is not hex: {:?}",
            String::from_utf8_lossy(line)
        ));
    }
    let rest_ok = rest.is_empty() || {
        let after_ws = rest.iter().position(|b| !matches!(b, b' ' | b'\t'));
        after_ws.is_some_and(|p| rest[p] == b';')
    };
    if !rest_ok {
        return Err(format!(
            "junk after chunk size: {:?}",
            String::from_utf8_lossy(line)
        ));
    }
    let text = std::str::from_utf8(digits).map_err(|e| e.to_string())?;
    u64::from_str_radix(text, 16).map_err(|_| format!("chunk size {text:?} overflows"))
}

/// De-chunks a complete framed body in one go. Returns the payload and whether the body
/// was complete (terminating chunk and final CRLF seen); bytes after the end are ignored.
pub fn dechunk(framed: &[u8]) -> Result<(Vec<u8>, bool), ChunkError> {
    let mut decoder = ChunkedDecoder::new();
    let mut out = Vec::new();
    decoder.feed(framed, &mut out)?;
    Ok((out, decoder.is_done()))
}

#[cfg(test)]
mod tests {

    use super::*;

    const BODY: &[u8] =
        b"5\r\nhello\r\n7;ext=1\r\n, world\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n";
    const PAYLOAD: &[u8] = b"hello, world0123456789abcdef";

    #[test]
    fn whole_body() {
        assert_eq!(dechunk(BODY).unwrap(), (PAYLOAD.to_vec(), true));
    }

    #[test]
    fn every_split_point() {
        for split in 0..=BODY.len() {
            let mut d = ChunkedDecoder::new();
            let mut out = Vec::new();
            assert_eq!(d.feed(&BODY[..split], &mut out).unwrap(), split);
            assert_eq!(
                d.feed(&BODY[split..], &mut out).unwrap(),
                BODY.len() - split
            );
            assert!(d.is_done(), "split at {split}");
            assert_eq!(out, PAYLOAD, "split at {split}");
        }
    }

    #[test]
    fn byte_by_byte() {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        for b in BODY {
            d.feed(std::slice::from_ref(b), &mut out).unwrap();
        }
        assert!(d.is_done());
        assert_eq!(out, PAYLOAD);
    }

    #[test]
    fn stops_at_end_of_body() {
        let mut input = b"3\r\nabc\r\n0\r\n\r\n".to_vec();
        let body_len = input.len();
        input.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        assert_eq!(d.feed(&input, &mut out).unwrap(), body_len);
        assert!(d.is_done());
        assert_eq!(out, b"abc");
    }

    #[test]
    fn incomplete_body_is_not_done() {
        let (out, done) = dechunk(b"3\r\nabc\r\n").unwrap();
        assert_eq!(out, b"abc");
        assert!(!done);
        let mut d = ChunkedDecoder::new();
        d.feed(b"3\r\nabc\r\n", &mut Vec::new()).unwrap();
        assert!(d.at_chunk_boundary());
        d.feed(b"4\r\nab", &mut Vec::new()).unwrap();
        assert!(!d.at_chunk_boundary());
    }

    #[test]
    fn upper_case_hex_and_whitespace_before_extension() {
        assert_eq!(
            dechunk(b"A \t;x\r\n0123456789\r\n0\r\n\r\n").unwrap(),
            (b"0123456789".to_vec(), true)
        );
    }

    #[test]
    fn rejects_malformed_framing() {
        let cases: &[&[u8]] = &[
            b"zz\r\nabc\r\n",         // not hex
            b"\r\n",                  // empty size
            b"3\nabc\r\n",            // bare LF after size
            b"3\r\nabcd\r\n",         // data longer than size
            b"3\r\nabc\n",            // bare LF after data
            b"3 x\r\nabc\r\n",        // junk after size
            b"-3\r\nabc\r\n",         // sign
            b"0x3\r\nabc\r\n",        // 0x prefix
            b"11111111111111111\r\n", // u64 overflow
            b"0\r\nTrailer: x\n\r\n", // bare LF in trailer
        ];
        for case in cases {
            assert!(
                dechunk(case).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn error_offset_points_into_the_framed_input() {
        let mut d = ChunkedDecoder::new();
        d.feed(b"3\r\nabc", &mut Vec::new()).unwrap();
        let err = d.feed(b"XY", &mut Vec::new()).unwrap_err();
        assert_eq!(err.offset, 6);
        assert!(err.to_string().contains("CRLF"), "{err}");
    }

    #[test]
    fn rejects_overlong_size_line() {
        let mut line = vec![b'1'; 2];
        line.extend(std::iter::repeat_n(b' ', MAX_LINE));
        assert!(dechunk(&line).is_err());
    }
}
