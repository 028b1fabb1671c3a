//! The incremental decoder, following the WHATWG HTML
//! [event stream interpretation] rules exactly. See [`Decoder`].
//!
//! [event stream interpretation]: https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

use memchr::{memchr, memchr2};
use thiserror::Error;

/// Default maximum line length, in bytes, for [`Decoder::new`]: 1 MiB.
pub const DEFAULT_MAX_LINE: usize = 1 << 20;

const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// One decoded item, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A dispatched event.
    Event(Event),
    /// A valid `retry` field: the reconnection delay in milliseconds.
    Retry(u64),
    /// A comment line, without the `:` and one optional following space.
    Comment(String),
}

/// A dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The value of the last `id` field in this event's block, if the block had
    /// one (an `id` containing NUL is ignored, as if absent).
    pub id: Option<String>,
    /// The decoder's last event id at dispatch: what `EventSource.lastEventId`
    /// shows for this event. Persists across blocks until an `id` changes it.
    pub last_event_id: String,
    /// The event type; `None` when the block set none or an empty one
    /// (browsers then dispatch the type `"message"`).
    pub event: Option<String>,
    /// The data lines joined with `\n` (the spec's data buffer without its
    /// final LF).
    pub data: String,
}

/// Why a stream could not be decoded.
#[non_exhaustive]
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A line (without its line break) was longer than `max` bytes.
    #[error("SSE line longer than {max} bytes")]
    LineTooLong {
        /// The configured maximum line length, in bytes.
        max: usize,
    },
}

/// Progress through the optional byte order mark at the start of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bom {
    /// This many leading bytes of the stream matched the BOM so far.
    Pending(u8),
    Done,
}

/// An incremental SSE decoder that follows the WHATWG HTML
/// [event stream interpretation] rules exactly.
///
/// Feed bytes as they arrive, in chunks of any size; complete items are
/// appended to a caller-owned `Vec` in stream order.
///
/// ## What is yielded
///
/// - [`Item::Event`] when a blank line ends a block whose data buffer is not
///   empty (a block with no `data` field dispatches nothing).
/// - [`Item::Retry`] as soon as a `retry` line made of ASCII digits is read.
/// - [`Item::Comment`] for each line starting with `:`.
///
/// ## Line breaks and encoding
///
/// Lines end in `\r\n`, a lone `\r` or a lone `\n`; a `\r` at the end of one
/// chunk and a `\n` at the start of the next are one break. One UTF-8 byte
/// order mark at the start of the stream is skipped. Invalid UTF-8 becomes
/// U+FFFD, as a browser decodes it.
///
/// ## End of stream and errors
///
/// [`Decoder::finish`] discards an incomplete line and an undispatched block
/// (the spec never dispatches at end of file) and readies the decoder for a
/// new stream, keeping the last event id as `EventSource` does on reconnect.
///
/// A line longer than the configured maximum fails with
/// [`DecodeError::LineTooLong`]; the stream is then unusable and every further
/// [`Decoder::feed`] fails the same way until `finish` resets the decoder.
///
/// [event stream interpretation]: https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
#[derive(Debug)]
pub struct Decoder {
    max_line: usize,
    bom: Bom,
    /// The previous chunk ended in `\r`: skip one `\n` at the start of the next.
    pending_cr: bool,
    /// Set by a line-length error; cleared by `finish`.
    failed: bool,
    /// The start of a line whose break has not arrived yet.
    partial: Vec<u8>,
    /// The spec's data buffer: each `data` value followed by LF.
    data: String,
    /// The spec's event type buffer.
    event_type: String,
    /// The spec's last event ID buffer, set by each valid `id` field.
    id_buffer: String,
    /// Whether the current block had a (valid) `id` field.
    block_has_id: bool,
    /// The `EventSource`'s last event ID string: `id_buffer` as of the last
    /// blank line. This is what a client sends as `Last-Event-ID`.
    last_event_id: String,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with the default maximum line length ([`DEFAULT_MAX_LINE`]).
    pub fn new() -> Self {
        Self::with_max_line(DEFAULT_MAX_LINE)
    }

    /// A decoder that rejects lines longer than `max_line` bytes, bounding the
    /// memory one unterminated line can take.
    pub fn with_max_line(max_line: usize) -> Self {
        Self {
            max_line,
            bom: Bom::Pending(0),
            pending_cr: false,
            failed: false,
            partial: Vec::new(),
            data: String::new(),
            event_type: String::new(),
            id_buffer: String::new(),
            block_has_id: false,
            last_event_id: String::new(),
        }
    }

    /// Feeds the next bytes of the stream (any chunking) and appends every item
    /// they complete to `out`.
    ///
    /// On error, items completed before the offending line are already in
    /// `out`; the rest of `input` is dropped and the decoder stays failed until
    /// [`finish`](Self::finish).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<Item>) -> Result<(), DecodeError> {
        if self.failed {
            return Err(self.too_long());
        }
        let mut input = input;
        if input.is_empty() {
            return Ok(());
        }
        if let Bom::Pending(matched) = self.bom {
            match self.skip_bom(matched, input) {
                Some(rest) => input = rest,
                None => return Ok(()),
            }
        }
        if self.pending_cr
            && let Some((&first, rest)) = input.split_first()
        {
            self.pending_cr = false;
            if first == b'\n' {
                input = rest;
            }
        }
        while let Some(i) = memchr2(b'\r', b'\n', input) {
            if self.partial.is_empty() {
                if i > self.max_line {
                    return Err(self.fail());
                }
                self.process_line(&input[..i], out);
            } else {
                if self.partial.len() + i > self.max_line {
                    return Err(self.fail());
                }
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&input[..i]);
                self.process_line(&line, out);
                line.clear();
                self.partial = line;
            }
            let mut next = i + 1;
            if input[i] == b'\r' {
                match input.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
            input = &input[next..];
        }
        if self.partial.len() + input.len() > self.max_line {
            return Err(self.fail());
        }
        self.partial.extend_from_slice(input);
        Ok(())
    }

    /// Ends the stream. Per the spec an incomplete line and an undispatched
    /// block are discarded, so this never appends to `out` (the parameter keeps
    /// `feed`/`finish` symmetric for callers that drain both into one `Vec`).
    ///
    /// Afterwards the decoder is ready for a new stream (a reconnection): a BOM
    /// is skipped again and a failed decoder is usable again. The last event id
    /// — as of the last blank line — is kept, as `EventSource` keeps it.
    pub fn finish(&mut self, out: &mut Vec<Item>) {
        let _ = out;
        self.bom = Bom::Pending(0);
        self.pending_cr = false;
        self.failed = false;
        self.partial.clear();
        self.data.clear();
        self.event_type.clear();
        self.id_buffer.clone_from(&self.last_event_id);
        self.block_has_id = false;
    }

    /// The last event id as of the most recent blank line: what a reconnecting
    /// client sends as `Last-Event-ID` (`EventSource`'s last event ID string).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Matches the start of the stream against the BOM. Returns the input after
    /// the BOM (or all of it, if the stream has none), or `None` when `input`
    /// was entirely consumed by a BOM prefix.
    fn skip_bom<'a>(&mut self, matched: u8, input: &'a [u8]) -> Option<&'a [u8]> {
        let mut n = usize::from(matched);
        let mut used = 0;
        while n < BOM.len() && used < input.len() && input[used] == BOM[n] {
            n += 1;
            used += 1;
        }
        if n == BOM.len() {
            self.bom = Bom::Done;
            return Some(&input[used..]);
        }
        if used == input.len() {
            // `n` is below 3 here.
            self.bom = Bom::Pending(n as u8);
            return None;
        }
        // Not a BOM: the bytes matched so far (no line breaks among them) are
        // the start of the first line.
        self.bom = Bom::Done;
        self.partial.extend_from_slice(&BOM[..n]);
        Some(&input[used..])
    }

    fn fail(&mut self) -> DecodeError {
        self.failed = true;
        self.partial = Vec::new();
        self.too_long()
    }

    fn too_long(&self) -> DecodeError {
        DecodeError::LineTooLong { max: self.max_line }
    }

    /// Processes one complete line (without its break).
    fn process_line(&mut self, line: &[u8], out: &mut Vec<Item>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        let (field, value) = match memchr(b':', line) {
            Some(0) => {
                let text = strip_space(&line[1..]);
                out.push(Item::Comment(String::from_utf8_lossy(text).into_owned()));
                return;
            }
            Some(colon) => (&line[..colon], strip_space(&line[colon + 1..])),
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                // `from_utf8_lossy` borrows when the value is valid UTF-8, so a
                // valid stream is copied once, into the data buffer.
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
            }
            b"event" => {
                self.event_type.clear();
                self.event_type.push_str(&String::from_utf8_lossy(value));
            }
            // An id containing NUL is ignored (falls through to `_`).
            b"id" if memchr(0, value).is_none() => {
                self.id_buffer.clear();
                self.id_buffer.push_str(&String::from_utf8_lossy(value));
                self.block_has_id = true;
            }
            b"retry" => {
                if let Some(millis) = parse_retry(value) {
                    out.push(Item::Retry(millis));
                }
            }
            _ => {}
        }
    }

    /// The blank-line step of the spec's "dispatch the event".
    fn dispatch(&mut self, out: &mut Vec<Item>) {
        if self.last_event_id != self.id_buffer {
            self.last_event_id.clone_from(&self.id_buffer);
        }
        let has_id = std::mem::take(&mut self.block_has_id);
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        let data = self.data.strip_suffix('\n').unwrap_or(&self.data);
        let event = Event {
            id: has_id.then(|| self.id_buffer.clone()),
            last_event_id: self.last_event_id.clone(),
            event: (!self.event_type.is_empty()).then(|| self.event_type.clone()),
            data: data.to_owned(),
        };
        self.data.clear();
        self.event_type.clear();
        out.push(Item::Event(event));
    }
}

/// Drops one leading U+0020 SPACE.
fn strip_space(value: &[u8]) -> &[u8] {
    value.strip_prefix(b" ").unwrap_or(value)
}

/// A `retry` value: only ASCII digits (at least one) that fit in a `u64`.
fn parse_retry(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in value {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

#[cfg(test)]
mod tests;
