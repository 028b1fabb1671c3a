//! `Transfer-Encoding: chunked` de-framing, handing out the payload as slices of the
//! input: no copy. A chunk-size or CRLF line is read byte by byte (a few bytes per
//! chunk), chunk data is handed out whole.

/// Malformed chunked framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed chunked body: {}", self.0)
    }
}

impl std::error::Error for ChunkError {}

/// Whether a body goes on after the bytes fed so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More body may follow.
    More,
    /// The body is complete (the last chunk and its trailer were read).
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// In a chunk-size line: value so far, hex digits seen, inside an extension.
    Size { value: u64, digits: u8, ext: bool },
    /// After the CR of a chunk-size line.
    SizeLf { value: u64 },
    /// Inside chunk data.
    Data { remaining: u64 },
    /// After chunk data: expecting CR (or a lenient bare LF).
    DataCr,
    /// After chunk data and CR: expecting LF.
    DataLf,
    /// After the last chunk, at the start of a trailer line (or the final blank line).
    TrailerStart,
    /// After the CR of what may be the final blank line.
    TrailerCr,
    /// Inside a trailer line, skipped up to its LF.
    TrailerLine,
    /// The body is complete.
    Done,
}

/// Incremental `Transfer-Encoding: chunked` de-framer that hands out the payload as
/// slices of the input: no copy. Lenient where it costs nothing (a bare LF is accepted
/// where CRLF belongs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dechunker {
    state: ChunkState,
}

impl Default for Dechunker {
    fn default() -> Self {
        Self::new()
    }
}

impl Dechunker {
    /// A de-framer at the start of a body.
    pub const fn new() -> Self {
        Self {
            state: ChunkState::Size {
                value: 0,
                digits: 0,
                ext: false,
            },
        }
    }

    /// Feeds framed bytes; every run of payload bytes is passed to `out` in order.
    /// Bytes after the end of the body are ignored.
    #[inline]
    pub fn feed<'a>(
        &mut self,
        data: &'a [u8],
        out: impl FnMut(&'a [u8]),
    ) -> Result<Progress, ChunkError> {
        self.feed_counted(data, out).map(|(p, _)| p)
    }

    /// [`Dechunker::feed`] that also says how many bytes of `data` were used: all of
    /// them, or up to the end of the body.
    pub fn feed_counted<'a>(
        &mut self,
        data: &'a [u8],
        mut out: impl FnMut(&'a [u8]),
    ) -> Result<(Progress, usize), ChunkError> {
        let mut pos = 0;
        while pos < data.len() {
            match self.state {
                ChunkState::Data { remaining } => {
                    let avail = data.len() - pos;
                    let take = usize::try_from(remaining).map_or(avail, |r| r.min(avail));
                    out(&data[pos..pos + take]);
                    pos += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data { remaining: left }
                    };
                }
                ChunkState::Size { value, digits, ext } => {
                    let b = data[pos];
                    pos += 1;
                    match b {
                        b'\r' if digits == 0 => return Err(ChunkError("empty chunk size")),
                        b'\r' => self.state = ChunkState::SizeLf { value },
                        b'\n' => self.size_line_done(value, digits)?,
                        _ if ext => {}
                        b';' | b' ' | b'\t' => {
                            self.state = ChunkState::Size {
                                value,
                                digits,
                                ext: true,
                            }
                        }
                        _ => {
                            let d = hex(b).ok_or(ChunkError("bad chunk-size digit"))?;
                            if digits >= 15 {
                                return Err(ChunkError("chunk size too large"));
                            }
                            self.state = ChunkState::Size {
                                value: value << 4 | u64::from(d),
                                digits: digits + 1,
                                ext,
                            };
                        }
                    }
                }
                ChunkState::SizeLf { value } => {
                    if data[pos] != b'\n' {
                        return Err(ChunkError("CR without LF after chunk size"));
                    }
                    pos += 1;
                    self.size_line_done(value, 1)?;
                }
                ChunkState::DataCr => {
                    let b = data[pos];
                    pos += 1;
                    self.state = match b {
                        b'\r' => ChunkState::DataLf,
                        b'\n' => Self::size_start(),
                        _ => return Err(ChunkError("chunk data not followed by CRLF")),
                    };
                }
                ChunkState::DataLf => {
                    if data[pos] != b'\n' {
                        return Err(ChunkError("chunk data not followed by CRLF"));
                    }
                    pos += 1;
                    self.state = Self::size_start();
                }
                ChunkState::TrailerStart => {
                    let b = data[pos];
                    pos += 1;
                    self.state = match b {
                        b'\r' => ChunkState::TrailerCr,
                        b'\n' => return Ok(self.finish(pos)),
                        _ => ChunkState::TrailerLine,
                    };
                }
                ChunkState::TrailerCr => {
                    if data[pos] != b'\n' {
                        return Err(ChunkError("CR without LF after the last chunk"));
                    }
                    return Ok(self.finish(pos + 1));
                }
                ChunkState::TrailerLine => match memchr::memchr(b'\n', &data[pos..]) {
                    Some(i) => {
                        pos += i + 1;
                        self.state = ChunkState::TrailerStart;
                    }
                    None => pos = data.len(),
                },
                ChunkState::Done => return Ok((Progress::End, pos)),
            }
        }
        let progress = if self.state == ChunkState::Done {
            Progress::End
        } else {
            Progress::More
        };
        Ok((progress, pos))
    }

    fn finish(&mut self, used: usize) -> (Progress, usize) {
        self.state = ChunkState::Done;
        (Progress::End, used)
    }

    const fn size_start() -> ChunkState {
        ChunkState::Size {
            value: 0,
            digits: 0,
            ext: false,
        }
    }

    fn size_line_done(&mut self, value: u64, digits: u8) -> Result<(), ChunkError> {
        if digits == 0 {
            return Err(ChunkError("empty chunk size"));
        }
        self.state = if value == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data { remaining: value }
        };
        Ok(())
    }
}

fn hex(b: u8) -> Option<u8> {
    // A hex digit is below 16: the cast cannot truncate.
    char::from(b).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_end_without_trailer_and_bare_lf() {
        let mut d = Dechunker::new();
        let mut out = Vec::new();
        let p = d
            .feed(b"3\nabc\n0\r\n\r\nignored", |s| out.extend_from_slice(s))
            .expect("valid");
        assert_eq!(p, Progress::End);
        assert_eq!(out, b"abc");
    }
    #[test]
    fn chunked_errors() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"3\r\nabcX",
            b"3\rX",
            b"1234567890123456\r\n",
        ] {
            let mut d = Dechunker::new();
            assert!(d.feed(bad, |_| {}).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn counts_the_bytes_of_the_body() {
        let mut d = Dechunker::new();
        let framed = b"2\r\nab\r\n0\r\n\r\nHTTP/1.1 200 OK";
        assert_eq!(d.feed_counted(framed, |_| {}), Ok((Progress::End, 12)));
        let mut d = Dechunker::new();
        assert_eq!(
            d.feed_counted(&framed[..9], |_| {}),
            Ok((Progress::More, 9))
        );
        assert_eq!(d.feed_counted(&framed[9..], |_| {}), Ok((Progress::End, 3)));
    }
}
