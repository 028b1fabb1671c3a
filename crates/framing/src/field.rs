//! Validation of the `id` and `event` field values a publisher supplies.
//!
//! The encoder writes these values verbatim after `id: ` / `event: `, so a value
//! containing a line break would end the field early and inject arbitrary SSE
//! lines into every subscriber's stream. Validate once at the edge (when an
//! event is published), then encode without further checks.

use thiserror::Error;

/// Maximum length, in bytes, of an event id or event type.
pub const MAX_FIELD_LEN: usize = 256;

/// Why an `id` or `event` value cannot be put on the wire.
///
/// The messages are written to follow the field's name, as in
/// `"event type {err}"` → `event type contains a NUL character`.
#[non_exhaustive]
#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum FieldError {
    /// The value contains CR or LF, which would end the SSE line early.
    #[error("contains a line break (CR or LF)")]
    LineBreak,
    /// The value contains U+0000; browsers ignore an `id` field containing NUL.
    #[error("contains a NUL character")]
    Nul,
    /// The value is empty where a non-empty one is required.
    #[error("is empty")]
    Empty,
    /// The value is longer than `max` bytes.
    #[error("is longer than {max} bytes")]
    TooLong {
        /// The limit that was exceeded, in bytes.
        max: usize,
    },
}

/// Checks an event type (the `event:` field): non-empty, at most
/// [`MAX_FIELD_LEN`] bytes, no CR or LF.
///
/// An empty type is rejected because on the wire it means the same as no type
/// at all (browsers dispatch it as `"message"`); publish without a type instead.
pub fn validate_event_type(s: &str) -> Result<(), FieldError> {
    if s.is_empty() {
        return Err(FieldError::Empty);
    }
    check_len(s)?;
    check_line_break(s)
}

/// Checks an event id (the `id:` field): at most [`MAX_FIELD_LEN`] bytes, no
/// CR, LF or NUL. The empty id is allowed (it resets the client's last event id).
pub fn validate_id(s: &str) -> Result<(), FieldError> {
    check_len(s)?;
    check_line_break(s)?;
    if memchr::memchr(0, s.as_bytes()).is_some() {
        return Err(FieldError::Nul);
    }
    Ok(())
}

fn check_len(s: &str) -> Result<(), FieldError> {
    if s.len() > MAX_FIELD_LEN {
        return Err(FieldError::TooLong { max: MAX_FIELD_LEN });
    }
    Ok(())
}

fn check_line_break(s: &str) -> Result<(), FieldError> {
    if memchr::memchr2(b'\r', b'\n', s.as_bytes()).is_some() {
        return Err(FieldError::LineBreak);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_accepts_ordinary_names() {
        assert_eq!(validate_event_type("message"), Ok(()));
        assert_eq!(validate_event_type("price update: é"), Ok(()));
        assert_eq!(validate_event_type(&"x".repeat(MAX_FIELD_LEN)), Ok(()));
    }

    #[test]
    fn event_type_errors() {
        assert_eq!(validate_event_type(""), Err(FieldError::Empty));
        assert_eq!(validate_event_type("a\nb"), Err(FieldError::LineBreak));
        assert_eq!(validate_event_type("a\rb"), Err(FieldError::LineBreak));
        assert_eq!(validate_event_type("ab\r\n"), Err(FieldError::LineBreak));
        assert_eq!(
            validate_event_type(&"x".repeat(MAX_FIELD_LEN + 1)),
            Err(FieldError::TooLong { max: MAX_FIELD_LEN })
        );
    }

    #[test]
    fn event_type_may_contain_nul() {
        // NUL is harmless in an event type; only ids are ignored by browsers.
        assert_eq!(validate_event_type("a\0b"), Ok(()));
    }

    #[test]
    fn id_accepts_empty_and_ordinary_values() {
        assert_eq!(validate_id(""), Ok(()));
        assert_eq!(validate_id("42"), Ok(()));
        assert_eq!(validate_id("stream-7:1234 é"), Ok(()));
        assert_eq!(validate_id(&"9".repeat(MAX_FIELD_LEN)), Ok(()));
    }

    #[test]
    fn id_errors() {
        assert_eq!(validate_id("1\n"), Err(FieldError::LineBreak));
        assert_eq!(validate_id("\r1"), Err(FieldError::LineBreak));
        assert_eq!(validate_id("1\0x"), Err(FieldError::Nul));
        assert_eq!(
            validate_id(&"9".repeat(MAX_FIELD_LEN + 1)),
            Err(FieldError::TooLong { max: MAX_FIELD_LEN })
        );
    }

    #[test]
    fn messages_name_the_problem() {
        assert_eq!(
            FieldError::LineBreak.to_string(),
            "contains a line break (CR or LF)"
        );
        assert_eq!(FieldError::Nul.to_string(), "contains a NUL character");
        assert_eq!(FieldError::Empty.to_string(), "is empty");
        assert_eq!(
            FieldError::TooLong { max: 256 }.to_string(),
            "is longer than 256 bytes"
        );
    }
}
