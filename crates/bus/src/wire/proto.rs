//! The NATS client protocol, as far as a subscriber needs it: parsing what the server
//! sends (`INFO`, `MSG`, `HMSG`, `PING`, `PONG`, `+OK`, `-ERR`) and writing what a
//! subscriber sends (`CONNECT`, `SUB`, `UNSUB`, `PING`, `PONG`).
//!
//! The parser is incremental: [`parse`] takes one operation off the front of a buffer
//! when it is complete and leaves the buffer alone when it is not. Payloads are split off
//! the read buffer without copying. Everything the server sends is checked against
//! limits: a control line longer than [`MAX_CONTROL_LINE`] or a payload larger than
//! [`MAX_PAYLOAD`] is a protocol error (the connection is dropped and made again), never
//! an allocation the server chooses.

use bytes::{Buf, Bytes, BytesMut};

/// Longest control line accepted (an `INFO` with a long list of cluster URLs fits).
pub(crate) const MAX_CONTROL_LINE: usize = 64 * 1024;

/// Largest message accepted (the NATS server's own upper bound on `max_payload`).
pub(crate) const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// One operation from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ServerOp {
    /// `INFO {json}`: the JSON text.
    Info(Bytes),
    /// `MSG` or `HMSG`.
    Msg(Msg),
    /// `PING`: answer with `PONG`.
    Ping,
    /// `PONG`: the answer to our oldest unanswered `PING`.
    Pong,
    /// `+OK` (only in verbose mode, which we do not ask for).
    Ok,
    /// `-ERR '…'`: the server's complaint, without the quotes.
    Err(String),
}

/// A message delivered to one of our subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Msg {
    /// The subject it was published to.
    pub subject: Bytes,
    /// The subscription it was delivered to.
    pub sid: u64,
    /// The header block (`NATS/1.0…` to the blank line), when it has one.
    pub headers: Option<Bytes>,
    /// The payload.
    pub payload: Bytes,
}

impl Msg {
    /// The value of header `name` (compared without regard to case), when present.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(self.headers.as_deref()?, name)
    }
}

/// What the server sent that is not the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProtoError {
    /// A control line longer than [`MAX_CONTROL_LINE`].
    #[error("a control line from the server is longer than {MAX_CONTROL_LINE} bytes")]
    LineTooLong,
    /// An operation we do not know, or one with the wrong arguments.
    #[error("unexpected protocol line from the server: {0:?}")]
    Malformed(String),
    /// A payload larger than [`MAX_PAYLOAD`].
    #[error("the server announced a {0}-byte message; at most {MAX_PAYLOAD} are accepted")]
    TooLarge(usize),
}

/// Takes one complete operation off the front of `buf`; `Ok(None)` when `buf` holds only
/// part of one (nothing is consumed then).
pub(crate) fn parse(buf: &mut BytesMut) -> Result<Option<ServerOp>, ProtoError> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n") else {
        if buf.len() > MAX_CONTROL_LINE {
            return Err(ProtoError::LineTooLong);
        }
        return Ok(None);
    };
    if end > MAX_CONTROL_LINE {
        return Err(ProtoError::LineTooLong);
    }
    let line = &buf[..end];
    let op_len = line
        .iter()
        .position(|b| *b == b' ' || *b == b'\t')
        .unwrap_or(line.len());
    let op = &line[..op_len];
    let is = |name: &[u8]| op.eq_ignore_ascii_case(name);
    if is(b"MSG") || is(b"HMSG") {
        return parse_msg(buf, end, is(b"HMSG"));
    }
    let parsed = if is(b"PING") {
        ServerOp::Ping
    } else if is(b"PONG") {
        ServerOp::Pong
    } else if is(b"+OK") {
        ServerOp::Ok
    } else if is(b"-ERR") {
        let text = String::from_utf8_lossy(&line[op_len..]);
        ServerOp::Err(text.trim().trim_matches('\'').to_owned())
    } else if is(b"INFO") {
        let json = Bytes::copy_from_slice(trim(&line[op_len..]));
        ServerOp::Info(json)
    } else {
        return Err(malformed(line));
    };
    buf.advance(end + 2);
    Ok(Some(parsed))
}

/// `MSG <subject> <sid> [reply-to] <#bytes>` or
/// `HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>`, then the bytes and
/// a line end.
fn parse_msg(
    buf: &mut BytesMut,
    end: usize,
    with_headers: bool,
) -> Result<Option<ServerOp>, ProtoError> {
    let line = &buf[..end];
    let mut args = line
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|a| !a.is_empty())
        .skip(1);
    let fields: Vec<&[u8]> = args.by_ref().take(6).collect();
    let numbers = if with_headers { 2 } else { 1 };
    // subject, sid, an optional reply-to, then the sizes.
    if fields.len() < 2 + numbers || fields.len() > 3 + numbers {
        return Err(malformed(line));
    }
    let subject_len = fields[0].len();
    let subject_at = subject_offset(line, fields[0]);
    let sid = number(fields[1]).ok_or_else(|| malformed(line))?;
    let sizes = &fields[fields.len() - numbers..];
    let total = sizes
        .last()
        .and_then(|s| number(s))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| malformed(line))?;
    let header_len = if with_headers {
        let h = number(sizes[0])
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| malformed(line))?;
        if h > total {
            return Err(malformed(line));
        }
        Some(h)
    } else {
        None
    };
    if total > MAX_PAYLOAD {
        return Err(ProtoError::TooLarge(total));
    }
    let needed = end + 2 + total + 2;
    if buf.len() < needed {
        buf.reserve(needed - buf.len());
        return Ok(None);
    }
    if &buf[needed - 2..needed] != b"\r\n" {
        return Err(ProtoError::Malformed(
            "a message's bytes are not followed by a line end".to_owned(),
        ));
    }
    let mut frame = buf.split_to(needed).freeze();
    let subject = frame.slice(subject_at..subject_at + subject_len);
    frame.advance(end + 2);
    frame.truncate(total);
    let headers = header_len.map(|h| frame.split_to(h));
    Ok(Some(ServerOp::Msg(Msg {
        subject,
        sid,
        headers,
        payload: frame,
    })))
}

/// Where `field` (a sub-slice of `line`) starts in `line`.
fn subject_offset(line: &[u8], field: &[u8]) -> usize {
    field.as_ptr() as usize - line.as_ptr() as usize
}

fn number(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 {
        return None;
    }
    text.iter().try_fold(0u64, |n, b| {
        let digit = char::from(*b).to_digit(10)?;
        Some(n * 10 + u64::from(digit))
    })
}

fn trim(text: &[u8]) -> &[u8] {
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len());
    let end = text
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &text[start..end.max(start)]
}

fn malformed(line: &[u8]) -> ProtoError {
    let shown = &line[..line.len().min(120)];
    ProtoError::Malformed(String::from_utf8_lossy(shown).into_owned())
}

/// The value of header `name` in a NATS header block (`NATS/1.0[ status]` line, then
/// `Name: value` lines, then a blank line); the first one when it repeats.
pub(crate) fn header<'a>(block: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(block).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// The `CONNECT` line a subscriber sends (no echo is not asked: the publish API needs its
/// own messages back).
pub(crate) fn connect(name: &str) -> Vec<u8> {
    let json = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "lang": "rust",
        "version": concat!("sse-gateway/", env!("CARGO_PKG_VERSION")),
        "protocol": 1,
        "name": name,
        "headers": true,
        "no_responders": true,
        "echo": true,
    });
    format!("CONNECT {json}\r\n").into_bytes()
}

/// Appends `SUB <subject> <sid>`.
pub(crate) fn sub(out: &mut Vec<u8>, subject: &str, sid: u64) {
    out.extend_from_slice(b"SUB ");
    out.extend_from_slice(subject.as_bytes());
    out.push(b' ');
    out.extend_from_slice(sid.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `UNSUB <sid>`.
pub(crate) fn unsub(out: &mut Vec<u8>, sid: u64) {
    out.extend_from_slice(b"UNSUB ");
    out.extend_from_slice(sid.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `PING`.
pub(crate) const PING: &[u8] = b"PING\r\n";

/// `PONG`.
pub(crate) const PONG: &[u8] = b"PONG\r\n";

/// What a subscriber needs of the server's `INFO`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Info {
    /// The server only talks TLS.
    pub tls_required: bool,
    /// The server supports headers (`HMSG`).
    pub headers: bool,
    /// The server wants credentials.
    pub auth_required: bool,
}

impl Info {
    /// Reads the fields we use from `INFO`'s JSON.
    pub fn parse(json: &[u8]) -> Result<Self, ProtoError> {
        let value: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| ProtoError::Malformed(format!("INFO is not JSON: {e}")))?;
        let flag = |key: &str| {
            value
                .get(key)
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false)
        };
        Ok(Self {
            tls_required: flag("tls_required"),
            headers: flag("headers"),
            auth_required: flag("auth_required"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Vec<ServerOp> {
        let mut buf = BytesMut::from(input);
        let mut ops = Vec::new();
        while let Some(op) = parse(&mut buf).unwrap() {
            ops.push(op);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        ops
    }

    #[test]
    fn parses_control_operations() {
        let ops = parse_all(b"INFO {\"headers\":true} \r\nPING\r\npong\r\n+OK\r\n-ERR 'Unknown Protocol Operation'\r\n");
        assert_eq!(
            ops,
            [
                ServerOp::Info(Bytes::from_static(b"{\"headers\":true}")),
                ServerOp::Ping,
                ServerOp::Pong,
                ServerOp::Ok,
                ServerOp::Err("Unknown Protocol Operation".to_owned()),
            ]
        );
    }

    #[test]
    fn parses_messages_with_and_without_headers_and_reply() {
        let ops = parse_all(
            b"MSG sse.a 7 5\r\nhello\r\nMSG sse.b 8 _INBOX.x 0\r\n\r\nHMSG sse.c 9 29 31\r\nNATS/1.0\r\nSse-Event: tick\r\n\r\nhi\r\n",
        );
        let [ServerOp::Msg(a), ServerOp::Msg(b), ServerOp::Msg(c)] = &ops[..] else {
            panic!("{ops:?}");
        };
        assert_eq!(
            (&a.subject[..], a.sid, &a.payload[..]),
            (&b"sse.a"[..], 7, &b"hello"[..])
        );
        assert_eq!(a.headers, None);
        assert_eq!(
            (&b.subject[..], b.sid, b.payload.len()),
            (&b"sse.b"[..], 8, 0)
        );
        assert_eq!(
            (&c.subject[..], c.sid, &c.payload[..]),
            (&b"sse.c"[..], 9, &b"hi"[..])
        );
        assert_eq!(c.header("sse-event"), Some("tick"));
        assert_eq!(c.header("Sse-Publish-Id"), None);
    }

    #[test]
    fn waits_for_the_rest_of_a_message() {
        let whole = b"MSG sse.a 1 10\r\n0123456789\r\nPING\r\n";
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            let first = parse(&mut buf).unwrap();
            if cut < 28 {
                assert_eq!(first, None, "cut at {cut}");
                assert_eq!(buf.len(), cut, "nothing consumed at {cut}");
            }
            buf.extend_from_slice(&whole[cut..]);
            let mut ops: Vec<ServerOp> = first.into_iter().collect();
            while let Some(op) = parse(&mut buf).unwrap() {
                ops.push(op);
            }
            assert_eq!(ops.len(), 2, "cut at {cut}");
            assert_eq!(ops[1], ServerOp::Ping);
        }
    }

    #[test]
    fn refuses_what_is_not_the_protocol() {
        for bad in [
            &b"HELLO\r\n"[..],
            b"MSG sse.a\r\n",
            b"MSG sse.a x 1\r\n",
            b"MSG sse.a 1 -1\r\n",
            b"HMSG sse.a 1 10 5\r\n",
            b"MSG sse.a 1 2 3 4 5\r\n",
            b"MSG sse.a 1 3\r\nabcXY",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(
                matches!(parse(&mut buf), Err(ProtoError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut big = BytesMut::from(&b"MSG sse.a 1 999999999999\r\n"[..]);
        assert_eq!(parse(&mut big), Err(ProtoError::TooLarge(999_999_999_999)));
        let mut long = BytesMut::from(&vec![b'A'; MAX_CONTROL_LINE + 1][..]);
        assert_eq!(parse(&mut long), Err(ProtoError::LineTooLong));
    }

    #[test]
    fn reads_info_flags() {
        let info = Info::parse(
            br#"{"server_id":"x","headers":true,"tls_required":false,"max_payload":1048576}"#,
        )
        .unwrap();
        assert_eq!(
            info,
            Info {
                tls_required: false,
                headers: true,
                auth_required: false
            }
        );
        assert!(Info::parse(b"not json").is_err());
    }

    #[test]
    fn writes_subscriber_operations() {
        let mut out = Vec::new();
        sub(&mut out, "sse.user.1", 42);
        unsub(&mut out, 42);
        assert_eq!(out, b"SUB sse.user.1 42\r\nUNSUB 42\r\n");
        let connect = String::from_utf8(connect("gw")).unwrap();
        assert!(connect.starts_with("CONNECT {") && connect.ends_with("}\r\n"));
        assert!(connect.contains("\"headers\":true"), "{connect}");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// A message as the server would send it, and what parsing it must give.
    fn message() -> impl Strategy<Value = (Vec<u8>, ServerOp)> {
        (
            "[a-z]{1,8}(\\.[a-z0-9]{1,8}){0,3}",
            1u64..1_000_000,
            proptest::option::of("_INBOX\\.[a-z0-9]{4,10}"),
            proptest::option::of("[A-Za-z0-9 ]{0,20}"),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(subject, sid, reply, event, payload)| {
                let reply = reply.map(|r| format!(" {r}")).unwrap_or_default();
                let mut wire = Vec::new();
                let headers = event.map(|e| format!("NATS/1.0\r\nSse-Event: {e}\r\n\r\n"));
                match &headers {
                    Some(h) => wire.extend_from_slice(
                        format!(
                            "HMSG {subject} {sid}{reply} {} {}\r\n{h}",
                            h.len(),
                            h.len() + payload.len()
                        )
                        .as_bytes(),
                    ),
                    None => wire.extend_from_slice(
                        format!("MSG {subject} {sid}{reply} {}\r\n", payload.len()).as_bytes(),
                    ),
                }
                wire.extend_from_slice(&payload);
                wire.extend_from_slice(b"\r\n");
                let op = ServerOp::Msg(Msg {
                    subject: Bytes::from(subject),
                    sid,
                    headers: headers.map(Bytes::from),
                    payload: Bytes::from(payload),
                });
                (wire, op)
            })
    }

    fn operation() -> impl Strategy<Value = (Vec<u8>, ServerOp)> {
        prop_oneof![
            4 => message(),
            1 => Just((b"PING\r\n".to_vec(), ServerOp::Ping)),
            1 => Just((b"PONG\r\n".to_vec(), ServerOp::Pong)),
            1 => Just((b"INFO {}\r\n".to_vec(), ServerOp::Info(Bytes::from_static(b"{}")))),
        ]
    }

    proptest! {
        /// However the bytes are cut into reads, the operations come out whole, in order,
        /// and nothing is left over.
        #[test]
        fn any_split_gives_the_same_operations(
            ops in proptest::collection::vec(operation(), 1..12),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let wire: Vec<u8> = ops.iter().flat_map(|(w, _)| w.clone()).collect();
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            points.push(wire.len());
            points.sort_unstable();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut from = 0;
            for to in points {
                buf.extend_from_slice(&wire[from..to]);
                from = to;
                while let Some(op) = parse(&mut buf).unwrap() {
                    got.push(op);
                }
            }
            let expected: Vec<ServerOp> = ops.into_iter().map(|(_, op)| op).collect();
            prop_assert_eq!(got, expected);
            prop_assert!(buf.is_empty());
        }

        /// Whatever a (hostile) server sends, parsing returns an operation, asks for more
        /// or fails: it never panics, and never consumes bytes without an operation.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut buf = BytesMut::from(&bytes[..]);
            loop {
                let before = buf.len();
                match parse(&mut buf) {
                    Ok(Some(_)) => prop_assert!(buf.len() < before),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
