//! The reader's per-event cost without I/O: de-chunk and scan 64 KiB reads of gateway
//! frames, counting and recording latencies as a connection does.
//!
//! `cargo bench -p sse-loadgen --bench scan`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sse_loadgen::latency::new_histogram;
use sse_loadgen::parse::{BodyDecoder, Dechunker, EventSink, Framing};

struct Count {
    last: u64,
    delivered: u64,
    hist: hdrhistogram::Histogram<u64>,
    now_us: u64,
}

impl EventSink for Count {
    fn event(&mut self, seq: u64, sent_ns: u64) {
        if seq > self.last {
            self.delivered += 1;
            self.last = seq;
        }
        self.hist
            .saturating_record(self.now_us.saturating_sub(sent_ns / 1000));
    }
    fn reset(&mut self) {}
    fn other(&mut self) {}
}

/// Gateway-like frames (`id:` + one `data:` line), chunked in 4 KiB chunks.
fn body(events: u64) -> Vec<u8> {
    let mut sse = Vec::new();
    for seq in 1..=events {
        let t = 1_764_190_000_000_000_000 + seq * 1000;
        sse.extend_from_slice(
            format!("id: dgw6rms0ij7c-{}\ndata: {seq},{t}\n\n", seq + 100_000).as_bytes(),
        );
    }
    let mut out = Vec::new();
    for c in sse.chunks(4096) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn scan(c: &mut Criterion) {
    const EVENTS: u64 = 10_000;
    let data = body(EVENTS);
    let mut g = c.benchmark_group("scan");
    g.throughput(Throughput::Elements(EVENTS));
    let mut sink = Count {
        last: 0,
        delivered: 0,
        hist: new_histogram(),
        now_us: 1_764_190_000_000_000 + 5_000_000,
    };
    g.bench_function("10k gateway events, 64 KiB reads, chunked", |b| {
        b.iter(|| {
            let mut dec = BodyDecoder::with_framing(Framing::Chunked(Dechunker::new()));
            sink.last = 0;
            sink.delivered = 0;
            for read in data.chunks(64 * 1024) {
                dec.feed(read, &mut sink).expect("valid");
            }
            assert_eq!(sink.delivered, EVENTS);
        })
    });
    g.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);
