//! The event types (`event:` field) publishers may set.
//!
//! A usable SSE field value (see [`sse_framing::validate_event_type`]: 1–256 bytes, no
//! line break) that does not start with [`RESERVED_PREFIX`]: `gateway.reset`,
//! `gateway.close` and the like are the gateway's own, so a client can trust them.

use sse_framing::FieldError;

/// Event types starting with this are the gateway's own.
pub const RESERVED_PREFIX: &str = "gateway.";

/// Why an event type cannot be published.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventTypeError {
    /// Not a usable field value.
    #[error("the event type {0}")]
    Field(#[from] FieldError),
    /// In the gateway's namespace.
    #[error("event types starting with \"gateway.\" are reserved for the gateway")]
    Reserved,
}

/// Whether a publisher may set `event` as an event type.
pub fn check_publisher_event_type(event: &str) -> Result<(), EventTypeError> {
    sse_framing::validate_event_type(event)?;
    if event.starts_with(RESERVED_PREFIX) {
        return Err(EventTypeError::Reserved);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishers_use_their_own_types_only() {
        assert!(check_publisher_event_type("order.created").is_ok());
        assert!(check_publisher_event_type("gateway").is_ok());
        assert_eq!(
            check_publisher_event_type("gateway.reset"),
            Err(EventTypeError::Reserved)
        );
        for bad in ["", "a\nb", "a\rb"] {
            assert!(matches!(
                check_publisher_event_type(bad),
                Err(EventTypeError::Field(_))
            ));
        }
        assert!(check_publisher_event_type(&"x".repeat(257)).is_err());
        let e = check_publisher_event_type("a\nb").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the event type contains a line break (CR or LF)"
        );
    }
}
