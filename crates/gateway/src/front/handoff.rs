//! Handing ONE request to Pingora and taking the connection back.
//!
//! The front reads every request head itself; a request Pingora serves (the publish API,
//! a reverse-proxy route) is handed over on a [`OneRequest`] stream, which yields exactly
//! that request's bytes — its head, then its body as the head frames it — and nothing
//! after: Pingora can never read (and drop, or misparse) the next pipelined request, and
//! a malformed chunked body ends the request instead of leaking into the next one. When
//! Pingora is done and the connection may be reused, [`OneRequest::into_parts`] gives the
//! front the socket and whatever was read past the request, and the front reads the next
//! head under its own deadline and limits.
//!
//! Chunked bodies are scanned strictly (RFC 9112 §7.1): hex sizes with optional
//! extensions, CRLF line ends only (a bare LF is an error), bounded line and trailer
//! lengths.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use pingora::protocols::{Peek, Stream};
use tokio::io::{AsyncRead, ReadBuf};

use super::head::BodyLength;

/// Longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Most trailer bytes accepted after the last chunk.
const MAX_TRAILERS: usize = 8 * 1024;
/// Bytes read ahead past a finished request (the next one's start) at most.
const MAX_AHEAD: usize = 64 * 1024;

/// A connection that yields one request's bytes.
#[derive(Debug)]
pub struct OneRequest {
    inner: Stream,
    /// Read from `inner` and not yet handed on: this request's bytes first, then the
    /// start of the next request.
    buf: BytesMut,
    /// Head bytes still to hand on.
    head_left: usize,
    body: Body,
}

#[derive(Debug)]
enum Body {
    /// This many body bytes still to hand on.
    Length(u64),
    /// A chunked body, scanned as it passes.
    Chunked(ChunkScanner),
    /// Everything, for good (an upgrade: the connection is a tunnel from now on).
    Tunnel,
}

impl OneRequest {
    /// `inner` with `buf` already read from it: a head of `head_len` bytes at its front,
    /// framed as `body`; `upgrade` when the request asks to switch protocols (its
    /// connection then never comes back).
    pub fn new(
        inner: Stream,
        buf: BytesMut,
        head_len: usize,
        body: BodyLength,
        upgrade: bool,
    ) -> Self {
        let body = match body {
            _ if upgrade => Body::Tunnel,
            BodyLength::Empty => Body::Length(0),
            BodyLength::Length(n) => Body::Length(n),
            BodyLength::Chunked => Body::Chunked(ChunkScanner::default()),
        };
        Self {
            inner,
            buf,
            head_left: head_len,
            body,
        }
    }

    /// The connection and the bytes read past the request. Only meaningful once Pingora
    /// finished the request and handed the stream back for reuse.
    pub fn into_parts(self) -> (Stream, BytesMut) {
        (self.inner, self.buf)
    }

    /// Whether every byte of the request was handed on.
    fn done(&self) -> bool {
        self.head_left == 0
            && match &self.body {
                Body::Length(n) => *n == 0,
                Body::Chunked(scanner) => scanner.is_done(),
                Body::Tunnel => false,
            }
    }

    /// How many bytes at the front of `buf` belong to the request and may go now.
    fn ready(&mut self) -> io::Result<usize> {
        if self.head_left > 0 {
            return Ok(self.head_left.min(self.buf.len()));
        }
        Ok(match &mut self.body {
            Body::Length(n) => usize::try_from(*n)
                .unwrap_or(usize::MAX)
                .min(self.buf.len()),
            Body::Chunked(scanner) => scanner.scan(&self.buf)?,
            Body::Tunnel => self.buf.len(),
        })
    }

    /// Records that `n` bytes went to the reader.
    fn consumed(&mut self, n: usize) {
        let from_head = n.min(self.head_left);
        self.head_left -= from_head;
        let body = (n - from_head) as u64;
        match &mut self.body {
            Body::Length(left) => *left = left.saturating_sub(body),
            Body::Chunked(scanner) => scanner.handed(n - from_head),
            Body::Tunnel => {}
        }
        self.buf.advance(n);
    }
}

impl AsyncRead for OneRequest {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let ready = this.ready()?;
            if ready > 0 {
                let n = ready.min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.consumed(n);
                return Poll::Ready(Ok(()));
            }
            if this.done() && !this.buf.is_empty() {
                // The next request is waiting: not Pingora's to read.
                return Poll::Pending;
            }
            if this.buf.len() >= MAX_AHEAD {
                return Poll::Pending;
            }
            // Read on: more of the request, or (after it) the client closing.
            let mut chunk = [0u8; 8 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // End of stream: the reader sees it (an incomplete request fails).
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => this.buf.extend_from_slice(read.filled()),
            }
        }
    }
}

super::wrapped::forward_to_inner!(OneRequest);

impl Peek for OneRequest {}

/// Where a chunked body ends, found strictly as its bytes pass.
#[derive(Debug, Default)]
pub struct ChunkScanner {
    state: ChunkState,
    /// Bytes of `scan`'s input already scanned but not yet handed on.
    scanned: usize,
    /// Length of the current size line or of the trailers so far.
    line: usize,
    /// Whether the first size line is complete.
    first_line_seen: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// In a chunk-size line: `digits` hex digits read, `value` so far, in an extension.
    #[default]
    Size,
    SizeDigits {
        value: u64,
        digits: u8,
        extension: bool,
    },
    /// After the size line's CR.
    SizeLf {
        value: u64,
    },
    /// `left` data bytes of the current chunk remain.
    Data {
        left: u64,
    },
    /// After a chunk's data: its CR, then its LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line or of the final CRLF.
    LineStart,
    /// In a trailer line.
    Trailer,
    /// After a trailer line's CR.
    TrailerLf,
    /// After the final CR.
    FinalLf,
    /// The body is complete.
    Done,
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed chunked body: {what}"),
    )
}

impl ChunkScanner {
    /// Whether the whole body (last chunk, trailers, final CRLF) went by.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done && self.scanned == 0
    }

    /// Whether the first chunk-size line is complete (and was well-formed).
    pub fn first_line_seen(&self) -> bool {
        self.first_line_seen
    }

    /// Scans `input` (the unsent bytes, starting where the last handed byte ended) and
    /// returns how many of them belong to the body. A framing error fails.
    pub fn scan(&mut self, input: &[u8]) -> io::Result<usize> {
        while self.scanned < input.len() && self.state != ChunkState::Done {
            let rest = &input[self.scanned..];
            if let ChunkState::Data { left } = self.state {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                self.scanned += take;
                let left = left - take as u64;
                self.state = if left == 0 {
                    ChunkState::DataCr
                } else {
                    ChunkState::Data { left }
                };
                continue;
            }
            self.step(rest[0])?;
            self.scanned += 1;
        }
        Ok(self.scanned)
    }

    /// `n` scanned bytes were handed on.
    pub fn handed(&mut self, n: usize) {
        self.scanned = self.scanned.saturating_sub(n);
    }

    fn step(&mut self, b: u8) -> io::Result<()> {
        use ChunkState::*;
        self.state = match self.state {
            Size => match hex(b) {
                Some(d) => {
                    self.line = 1;
                    SizeDigits {
                        value: u64::from(d),
                        digits: 1,
                        extension: false,
                    }
                }
                None => return Err(malformed("a chunk size must start with a hex digit")),
            },
            SizeDigits {
                value,
                digits,
                extension,
            } => {
                self.line += 1;
                if self.line > MAX_CHUNK_LINE {
                    return Err(malformed("chunk-size line too long"));
                }
                match (b, extension, hex(b)) {
                    (b'\r', _, _) => SizeLf { value },
                    (b'\n', _, _) => return Err(malformed("bare LF after a chunk size")),
                    (_, false, Some(d)) => {
                        if digits >= 15 {
                            return Err(malformed("chunk size too large"));
                        }
                        SizeDigits {
                            value: value * 16 + u64::from(d),
                            digits: digits + 1,
                            extension,
                        }
                    }
                    (b';', _, _) | (b' ' | b'\t', false, _) => SizeDigits {
                        value,
                        digits,
                        extension: true,
                    },
                    (_, true, _) if b != 0 => SizeDigits {
                        value,
                        digits,
                        extension,
                    },
                    _ => return Err(malformed("bad byte in a chunk-size line")),
                }
            }
            SizeLf { value } => {
                if b != b'\n' {
                    return Err(malformed("CR without LF after a chunk size"));
                }
                self.first_line_seen = true;
                if value == 0 {
                    self.line = 0;
                    LineStart
                } else {
                    Data { left: value }
                }
            }
            Data { .. } => unreachable_data(),
            DataCr => match b {
                b'\r' => DataLf,
                _ => return Err(malformed("chunk data not followed by CRLF")),
            },
            DataLf => match b {
                b'\n' => Size,
                _ => return Err(malformed("chunk data not followed by CRLF")),
            },
            LineStart => match b {
                b'\r' => FinalLf,
                b'\n' => return Err(malformed("bare LF at the end of the body")),
                _ => self.trailer_byte()?,
            },
            Trailer => match b {
                b'\r' => TrailerLf,
                b'\n' => return Err(malformed("bare LF in a trailer")),
                _ => self.trailer_byte()?,
            },
            TrailerLf => match b {
                b'\n' => LineStart,
                _ => return Err(malformed("CR without LF in a trailer")),
            },
            FinalLf => match b {
                b'\n' => Done,
                _ => return Err(malformed("CR without LF at the end of the body")),
            },
            Done => Done,
        };
        Ok(())
    }

    fn trailer_byte(&mut self) -> io::Result<ChunkState> {
        self.line += 1;
        if self.line > MAX_TRAILERS {
            return Err(malformed("trailers too long"));
        }
        Ok(ChunkState::Trailer)
    }
}

/// `Data` is consumed in bulk by [`ChunkScanner::scan`], never byte by byte.
fn unreachable_data() -> ChunkState {
    ChunkState::Data { left: 0 }
}

fn hex(b: u8) -> Option<u8> {
    // A hex digit is below 16: the cast cannot truncate.
    char::from(b).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn scan_all(body: &[u8]) -> io::Result<usize> {
        let mut s = ChunkScanner::default();
        let n = s.scan(body)?;
        s.handed(n);
        assert!(s.is_done() || n == body.len());
        Ok(n)
    }

    #[test]
    fn strict_chunked_bodies() {
        let good = b"3\r\nabc\r\n10;ext=1\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        assert_eq!(scan_all(good).unwrap(), good.len() - 4);
        assert_eq!(scan_all(b"0\r\n\r\n").unwrap(), 5);
        for bad in [
            &b"3\nabc\n0\n\n"[..],
            b"3\r\nabc\n0\r\n\r\n",
            b"3\r\nabcd\r\n",
            b"x\r\n",
            b"0\r\n\n",
            b"0\r\nX: 1\n\r\n",
            b"3\rabc",
            b"ffffffffffffffffff\r\n",
        ] {
            assert!(scan_all(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn scanning_in_pieces_finds_the_same_end() {
        let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        for split in 1..body.len() {
            let mut s = ChunkScanner::default();
            let mut buf = BytesMut::from(&body[..split]);
            let mut handed = 0;
            let n = s.scan(&buf).unwrap();
            buf.advance(n);
            s.handed(n);
            handed += n;
            buf.extend_from_slice(&body[split..]);
            let n = s.scan(&buf).unwrap();
            s.handed(n);
            handed += n;
            assert!(s.is_done(), "split at {split}");
            assert_eq!(
                handed,
                body.len() - "GET / HTTP/1.1\r\n".len(),
                "split at {split}"
            );
        }
    }

    #[tokio::test]
    async fn pingora_reads_one_request_and_the_next_stays_behind() {
        let first = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        let second = b"GET /b HTTP/1.1\r\n\r\n";
        let mut wire = first.to_vec();
        wire.extend_from_slice(second);
        let head_len = first.len() - 3;
        // Half of the wire was already read by the front; the rest is on the socket.
        let (already, later) = wire.split_at(head_len + 1);
        let inner: Stream = Box::new(std::io::Cursor::new(later.to_vec()));
        let mut one = OneRequest::new(
            inner,
            BytesMut::from(already),
            head_len,
            BodyLength::Length(3),
            false,
        );
        let mut got = vec![0u8; first.len()];
        one.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..], &first[..]);
        let (_, rest) = one.into_parts();
        assert!(second.starts_with(&rest), "{rest:?}");
    }
}
