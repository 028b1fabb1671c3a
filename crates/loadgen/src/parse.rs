//! Pure, incremental parsing of one SSE response: the HTTP head, `Transfer-Encoding:
//! chunked` de-framing, and the SSE body scan.
//!
//! Built for throughput, not for validation: the body is scanned with `memchr` over whole
//! reads (a vectorised search for line ends, no per-byte state machine), nothing is
//! allocated per event,
//! and only what the load generator needs is extracted — for every event frame the
//! `<seq>,<send-time-ns>` prefix of its first `data:` line, and whether it is a
//! `gateway.reset` frame. Input may be split anywhere: [`Dechunker`] and [`SseScanner`]
//! keep their state between calls.
//!
//! Line breaks are `\n`, `\r\n` and a lone `\r` (one break each), as the SSE spec says.
//! Only the first [`LINE_PREFIX`] bytes of a line that is split across reads are kept:
//! every field this module reads fits in them, the rest of such a line (padding) is
//! skipped without being copied.

mod chunked;
mod head;
mod sse;

pub use chunked::{ChunkError, Dechunker, Progress};
pub use head::{Head, HeadError, parse_head};
pub use sse::{EventSink, LINE_PREFIX, SseScanner, parse_payload};

/// How the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Transfer-Encoding: chunked`.
    Chunked(Dechunker),
    /// Raw bytes up to the end of the connection (HTTP/1.0 style, or Nchan).
    Raw,
}

/// A response body: de-framing plus the SSE scan.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    framing: Framing,
    sse: SseScanner,
}

impl BodyDecoder {
    /// A decoder for a body announced by `head`.
    pub fn new(head: &Head) -> Self {
        Self::with_framing(if head.chunked {
            Framing::Chunked(Dechunker::new())
        } else {
            Framing::Raw
        })
    }

    /// A decoder for a body framed as `framing`.
    pub const fn with_framing(framing: Framing) -> Self {
        Self {
            framing,
            sse: SseScanner::new(),
        }
    }

    /// Feeds the next bytes of the body.
    #[inline]
    pub fn feed(&mut self, data: &[u8], sink: &mut impl EventSink) -> Result<Progress, ChunkError> {
        match &mut self.framing {
            Framing::Raw => {
                self.sse.feed(data, sink);
                Ok(Progress::More)
            }
            Framing::Chunked(d) => {
                let sse = &mut self.sse;
                d.feed(data, |seg| sse.feed(seg, sink))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records what the scan reports.
    #[derive(Debug, Default, PartialEq, Eq)]
    pub(crate) struct Rec {
        pub(crate) events: Vec<(u64, u64)>,
        pub(crate) resets: u32,
        pub(crate) other: u32,
    }

    impl EventSink for Rec {
        fn event(&mut self, seq: u64, sent_ns: u64) {
            self.events.push((seq, sent_ns));
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
        fn other(&mut self) {
            self.other += 1;
        }
    }

    fn chunk(payload: &[u8]) -> Vec<u8> {
        let mut v = format!("{:x}\r\n", payload.len()).into_bytes();
        v.extend_from_slice(payload);
        v.extend_from_slice(b"\r\n");
        v
    }

    /// Feeds `body` cut at `cuts` (sorted offsets) through `dec`.
    fn feed_split(dec: &mut BodyDecoder, body: &[u8], cuts: &[usize]) -> (Rec, Progress) {
        let mut rec = Rec::default();
        let mut last = 0;
        let mut progress = Progress::More;
        for &c in cuts.iter().chain(std::iter::once(&body.len())) {
            let c = c.clamp(last, body.len());
            progress = dec.feed(&body[last..c], &mut rec).expect("valid body");
            last = c;
        }
        (rec, progress)
    }

    pub(crate) const GATEWAY_BODY: &[u8] = b"retry: 3000\n: connected\n\n\
        id: abc-1\ndata: 1,1000\n\n\
        id: abc-2\ndata: 2,2000,xxxxxxxxxx\n\n\
        : heartbeat\n\n\
        id: abc-3\nevent: gateway.reset\ndata: {\"reason\":\"upstream_gap\"}\n\n\
        id: abc-4\nevent: custom\ndata: hello\n\n\
        id: abc-5\ndata: 3,3000\ndata: second line\n\n";

    pub(crate) fn gateway_expected() -> Rec {
        Rec {
            events: vec![(1, 1000), (2, 2000), (3, 3000)],
            resets: 1,
            other: 1,
        }
    }

    #[test]
    fn every_split_point_raw() {
        for cut in 0..=GATEWAY_BODY.len() {
            let mut dec = BodyDecoder::with_framing(Framing::Raw);
            let (rec, _) = feed_split(&mut dec, GATEWAY_BODY, &[cut]);
            assert_eq!(rec, gateway_expected(), "cut at {cut}");
        }
    }

    #[test]
    fn crlf_split_between_cr_and_lf() {
        let body = b"data: 1,2\r\n\r\ndata: 3,4\r\n\r\n";
        for cut in 0..=body.len() {
            let mut dec = BodyDecoder::with_framing(Framing::Raw);
            let (rec, _) = feed_split(&mut dec, body, &[cut]);
            assert_eq!(rec.events, vec![(1, 2), (3, 4)], "cut at {cut}");
        }
    }

    #[test]
    fn long_split_line_keeps_prefix_only() {
        let pad = "p".repeat(5000);
        let body = format!("data: 7,8,{pad}\n\n");
        for cut in [3, 10, 40, 100, 4000] {
            let mut dec = BodyDecoder::with_framing(Framing::Raw);
            let (rec, _) = feed_split(&mut dec, body.as_bytes(), &[cut, cut + 1, cut + 30]);
            assert_eq!(rec.events, vec![(7, 8)], "cut at {cut}");
        }
    }

    #[test]
    fn chunked_body_every_split_point() {
        // frames split across chunks on purpose, and a chunk extension
        let (a, b) = GATEWAY_BODY.split_at(37);
        let mut body = chunk(a);
        body.extend_from_slice(format!("{:X};ext=1\r\n", b.len()).as_bytes());
        body.extend_from_slice(b);
        body.extend_from_slice(b"\r\n0\r\nX-Trailer: 1\r\n\r\n");
        for cut in 0..=body.len() {
            let mut dec = BodyDecoder::with_framing(Framing::Chunked(Dechunker::new()));
            let (rec, progress) = feed_split(&mut dec, &body, &[cut]);
            assert_eq!(rec, gateway_expected(), "cut at {cut}");
            assert_eq!(progress, Progress::End, "cut at {cut}");
        }
    }

    mod props {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        fn frames() -> impl Strategy<Value = Vec<(u64, u64, usize, u8)>> {
            vec(
                (0u64..1_000_000, 0u64..u64::MAX / 2, 0usize..200, 0u8..4),
                0..40,
            )
        }

        proptest! {
            #[test]
            fn any_split_any_chunking(
                frames in frames(),
                chunk_sizes in vec(1usize..300, 1..20),
                mut cuts in vec(0usize..20_000, 0..30),
                crlf in any::<bool>(),
            ) {
                let nl = if crlf { "\r\n" } else { "\n" };
                let mut body = format!("retry: 3000{nl}: connected{nl}{nl}");
                let mut expected = Rec::default();
                for (seq, sent, pad, kind) in &frames {
                    match kind {
                        0 => {
                            body += &format!("id: e-{seq}{nl}data: {seq},{sent},{}{nl}{nl}", "x".repeat(*pad));
                            expected.events.push((*seq, *sent));
                        }
                        1 => {
                            body += &format!("id: e-{seq}{nl}event: gateway.reset{nl}data: {{\"reason\":\"unknown_id\"}}{nl}{nl}");
                            expected.resets += 1;
                        }
                        2 => body += &format!(": heartbeat{nl}"),
                        _ => {
                            body += &format!("data: {seq},{sent}{nl}{nl}");
                            expected.events.push((*seq, *sent));
                        }
                    }
                }
                // chunk it
                let bytes = body.as_bytes();
                let mut framed = Vec::new();
                let mut at = 0;
                let mut i = 0;
                while at < bytes.len() {
                    let n = chunk_sizes[i % chunk_sizes.len()].min(bytes.len() - at);
                    framed.extend_from_slice(&chunk(&bytes[at..at + n]));
                    at += n;
                    i += 1;
                }
                framed.extend_from_slice(b"0\r\n\r\n");
                cuts.sort_unstable();
                let mut dec = BodyDecoder::with_framing(Framing::Chunked(Dechunker::new()));
                let (rec, progress) = feed_split(&mut dec, &framed, &cuts);
                prop_assert_eq!(rec, expected);
                prop_assert_eq!(progress, Progress::End);
            }
        }
    }
}
