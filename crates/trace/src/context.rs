//! W3C Trace Context: the ids of a span and the `traceparent` header that carries them.
//!
//! `traceparent: 00-<trace id: 32 hex>-<parent span id: 16 hex>-<flags: 2 hex>`, lowercase
//! hex, bit 0 of the flags = sampled (<https://www.w3.org/TR/trace-context/>). A value
//! that does not parse is ignored as if absent (the specification's rule: a new trace
//! starts here); parsing never panics, whatever the bytes.

use std::fmt;

/// The header (HTTP, NATS) that carries a span context.
pub const TRACEPARENT: &str = "traceparent";

/// Length of a version-00 `traceparent` value.
pub const TRACEPARENT_LEN: usize = 55;

/// A trace id: 16 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 16]);

/// A span id: 8 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId([u8; 8]);

impl TraceId {
    /// The id of these bytes; `None` for all zeros (invalid).
    pub fn from_bytes(bytes: [u8; 16]) -> Option<Self> {
        (bytes != [0; 16]).then_some(Self(bytes))
    }

    /// A random id (never all zero).
    pub fn random() -> Self {
        let n = fastrand::u128(1..);
        Self(n.to_be_bytes())
    }

    /// The bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }
}

impl SpanId {
    /// The id of these bytes; `None` for all zeros (invalid).
    pub fn from_bytes(bytes: [u8; 8]) -> Option<Self> {
        (bytes != [0; 8]).then_some(Self(bytes))
    }

    /// A random id (never all zero).
    pub fn random() -> Self {
        Self(fastrand::u64(1..).to_be_bytes())
    }

    /// The bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let mut buf = [0u8; 32];
    let text = hex_into(bytes, &mut buf);
    f.write_str(text)
}

/// Lowercase hex of `bytes` (at most 16) in `buf`.
fn hex_into<'b>(bytes: &[u8], buf: &'b mut [u8; 32]) -> &'b str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = bytes.len().min(16);
    for (i, b) in bytes.iter().take(n).enumerate() {
        buf[2 * i] = HEX[usize::from(b >> 4)];
        buf[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    // Only ASCII hex digits were written.
    std::str::from_utf8(&buf[..2 * n]).unwrap_or_default()
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// What identifies a span to its children and to other processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace the span belongs to.
    pub trace_id: TraceId,
    /// The span.
    pub span_id: SpanId,
    /// Whether the trace is recorded (the `sampled` flag): children follow it.
    pub sampled: bool,
}

/// Why a `traceparent` value was ignored.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceparentError {
    /// Shorter than 55 bytes, or a version-00 value of another length.
    #[error("a traceparent is 55 characters long")]
    Length,
    /// Version `ff`, which the specification forbids.
    #[error("traceparent version ff is invalid")]
    Version,
    /// Not `vv-<32 hex>-<16 hex>-<2 hex>` in lowercase hex.
    #[error("a traceparent is vv-<32 hex>-<16 hex>-<2 hex>, lowercase")]
    Format,
    /// The trace id is all zeros.
    #[error("the trace id of a traceparent cannot be all zeros")]
    ZeroTraceId,
    /// The parent span id is all zeros.
    #[error("the span id of a traceparent cannot be all zeros")]
    ZeroSpanId,
}

impl SpanContext {
    /// A fresh context with random ids (a new trace).
    pub fn random(sampled: bool) -> Self {
        Self {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            sampled,
        }
    }

    /// Parses a `traceparent` value (surrounding spaces and tabs ignored).
    ///
    /// Version `00` is exactly 55 characters. A later version (`01`–`fe`) is read the
    /// way the specification asks: its first 55 characters as version 00, anything
    /// after them only if it starts with `-`.
    pub fn from_traceparent(value: &[u8]) -> Result<Self, TraceparentError> {
        let value = trim(value);
        if value.len() < TRACEPARENT_LEN {
            return Err(TraceparentError::Length);
        }
        let version = hex_byte(&value[0..2]).ok_or(TraceparentError::Format)?;
        match version {
            0xff => return Err(TraceparentError::Version),
            0x00 if value.len() != TRACEPARENT_LEN => return Err(TraceparentError::Length),
            _ if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' => {
                return Err(TraceparentError::Format);
            }
            _ => {}
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return Err(TraceparentError::Format);
        }
        let mut trace = [0u8; 16];
        hex_bytes(&value[3..35], &mut trace).ok_or(TraceparentError::Format)?;
        let mut span = [0u8; 8];
        hex_bytes(&value[36..52], &mut span).ok_or(TraceparentError::Format)?;
        let flags = hex_byte(&value[53..55]).ok_or(TraceparentError::Format)?;
        Ok(Self {
            trace_id: TraceId::from_bytes(trace).ok_or(TraceparentError::ZeroTraceId)?,
            span_id: SpanId::from_bytes(span).ok_or(TraceparentError::ZeroSpanId)?,
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` value naming this span as the parent (version 00).
    pub fn traceparent(&self) -> Traceparent {
        let mut buf = [0u8; TRACEPARENT_LEN];
        buf[..3].copy_from_slice(b"00-");
        let mut hex = [0u8; 32];
        buf[3..35].copy_from_slice(hex_into(&self.trace_id.0, &mut hex).as_bytes());
        buf[35] = b'-';
        buf[36..52].copy_from_slice(hex_into(&self.span_id.0, &mut hex).as_bytes());
        buf[52] = b'-';
        buf[53..55].copy_from_slice(if self.sampled { b"01" } else { b"00" });
        Traceparent(buf)
    }
}

/// A `traceparent` value, built on the stack.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Traceparent([u8; TRACEPARENT_LEN]);

impl Traceparent {
    /// The value as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII was written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for Traceparent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Traceparent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Traceparent({})", self.as_str())
    }
}

fn trim(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// The value of one lowercase hex digit.
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    match two {
        [hi, lo] => Some(nibble(*hi)? << 4 | nibble(*lo)?),
        _ => None,
    }
}

fn hex_bytes(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != 2 * out.len() {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = hex_byte(pair)?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_specification_example_and_writes_it_back() {
        let ctx = SpanContext::from_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(ctx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.span_id.to_string(), "00f067aa0ba902b7");
        assert!(ctx.sampled);
        assert_eq!(ctx.traceparent().as_str(), VALID);
        let unsampled = VALID.replace("-01", "-00");
        let ctx = SpanContext::from_traceparent(unsampled.as_bytes()).unwrap();
        assert!(!ctx.sampled);
        assert_eq!(ctx.traceparent().as_str(), unsampled);
        // Other flag bits are kept apart from sampling: 0x03 is sampled, 0x02 is not.
        let ctx = SpanContext::from_traceparent(VALID.replace("-01", "-03").as_bytes());
        assert!(ctx.unwrap().sampled);
        let ctx = SpanContext::from_traceparent(VALID.replace("-01", "-02").as_bytes());
        assert!(!ctx.unwrap().sampled);
        // Spaces around the value are not part of it.
        assert!(SpanContext::from_traceparent(format!(" \t{VALID} ").as_bytes()).is_ok());
    }

    #[test]
    fn refuses_invalid_values() {
        use TraceparentError::*;
        let cases: Vec<(String, TraceparentError)> = vec![
            (String::new(), Length),
            (VALID[..54].to_owned(), Length),
            (format!("{VALID}0"), Length),
            (format!("{VALID}-extra"), Length),
            (VALID.replacen("00-", "ff-", 1), Version),
            (VALID.replacen("00-", "0g-", 1), Format),
            (VALID.to_uppercase(), Format),
            (VALID.replacen("4bf9", "4BF9", 1), Format),
            (VALID.replace('-', "_"), Format),
            (
                VALID.replacen("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32), 1),
                ZeroTraceId,
            ),
            (
                VALID.replacen("00f067aa0ba902b7", &"0".repeat(16), 1),
                ZeroSpanId,
            ),
            (VALID.replacen("-01", "-0x", 1), Format),
            // A hyphen moved: the fields have the wrong lengths.
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01".to_owned(),
                Format,
            ),
        ];
        for (value, want) in cases {
            assert_eq!(
                SpanContext::from_traceparent(value.as_bytes()),
                Err(want),
                "{value:?}"
            );
        }
    }

    #[test]
    fn reads_later_versions_as_far_as_it_knows_them() {
        let v1 = VALID.replacen("00-", "01-", 1);
        assert!(
            SpanContext::from_traceparent(v1.as_bytes())
                .unwrap()
                .sampled
        );
        let ctx = SpanContext::from_traceparent(format!("{v1}-what-comes-later").as_bytes());
        assert_eq!(ctx.unwrap().span_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(
            SpanContext::from_traceparent(format!("{v1}x").as_bytes()),
            Err(TraceparentError::Format)
        );
    }

    #[test]
    fn random_ids_are_never_zero_and_round_trip() {
        for _ in 0..1000 {
            let ctx = SpanContext::random(true);
            assert_ne!(ctx.trace_id.to_bytes(), [0; 16]);
            assert_ne!(ctx.span_id.to_bytes(), [0; 8]);
            let back = SpanContext::from_traceparent(ctx.traceparent().as_str().as_bytes());
            assert_eq!(back, Ok(ctx));
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = SpanContext::from_traceparent(&bytes);
        }

        #[test]
        fn never_panics_near_the_valid_form(
            pos in 0usize..55,
            byte in any::<u8>(),
            tail in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            let mut value = VALID.as_bytes().to_vec();
            value[pos] = byte;
            value.extend_from_slice(&tail);
            let _ = SpanContext::from_traceparent(&value);
        }

        #[test]
        fn what_it_writes_it_reads(trace in 1u128.., span in 1u64.., sampled in any::<bool>()) {
            let ctx = SpanContext {
                trace_id: TraceId(trace.to_be_bytes()),
                span_id: SpanId(span.to_be_bytes()),
                sampled,
            };
            prop_assert_eq!(SpanContext::from_traceparent(ctx.traceparent().as_str().as_bytes()), Ok(ctx));
        }
    }
}
