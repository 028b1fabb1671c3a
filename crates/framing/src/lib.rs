//! The Server-Sent Events wire format: a one-pass encoder and a spec-exact
//! incremental decoder.
//!
//! The gateway encodes each event once into a [`BytesMut`](bytes::BytesMut),
//! freezes it and hands the same `Bytes` to every subscriber. Tests and the load
//! generator read streams back with [`Decoder`], which follows the WHATWG HTML
//! [event stream interpretation] rules, so `decode(encode(x))` round-trips:
//!
//! ```
//! use bytes::BytesMut;
//! use sse_framing::{Decoder, Event, Item, encode_comment, encode_event, encode_retry};
//!
//! // Server side: encode once, share the frozen bytes.
//! let mut buf = BytesMut::new();
//! encode_retry(&mut buf, 2_000);
//! encode_event(&mut buf, Some("42"), Some("price"), "EURUSD\r\n1.0842");
//! encode_comment(&mut buf, "keep-alive");
//! let frame = buf.freeze();
//! assert_eq!(
//!     &frame[..],
//!     b"retry: 2000\nid: 42\nevent: price\ndata: EURUSD\ndata: 1.0842\n\n: keep-alive\n"
//! );
//!
//! // Client side: feed bytes in chunks of any size.
//! let mut decoder = Decoder::new();
//! let mut items = Vec::new();
//! for chunk in frame.chunks(5) {
//!     decoder.feed(chunk, &mut items)?;
//! }
//! decoder.finish(&mut items);
//! assert_eq!(
//!     items,
//!     [
//!         Item::Retry(2_000),
//!         Item::Event(Event {
//!             id: Some("42".into()),
//!             last_event_id: "42".into(),
//!             event: Some("price".into()),
//!             // Every line break comes back as LF.
//!             data: "EURUSD\n1.0842".into(),
//!         }),
//!         Item::Comment("keep-alive".into()),
//!     ]
//! );
//! assert_eq!(decoder.last_event_id(), "42");
//! # Ok::<(), sse_framing::DecodeError>(())
//! ```
//!
//! Publisher-supplied ids and event types must be checked with [`validate_id`]
//! and [`validate_event_type`] before they reach the encoder, which writes them
//! verbatim.
//!
//! [event stream interpretation]: https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

mod decode;
mod encode;
mod field;

pub use decode::{DEFAULT_MAX_LINE, DecodeError, Decoder, Event, Item};
pub use encode::{encode_comment, encode_event, encode_retry, encoded_event_len};
pub use field::{FieldError, MAX_FIELD_LEN, validate_event_type, validate_id};
