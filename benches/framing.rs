//! Encoding and decoding SSE frames.
//!
//! `cargo bench -p sse-framing --bench framing`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sse_framing::{Decoder, encode_event, encoded_event_len};

fn encode(c: &mut Criterion) {
    let small = r#"{"order":42,"status":"paid"}"#.to_owned();
    let kib = "x".repeat(1024);
    let multi = "line one\nline two\r\nline three\rline four\n".repeat(8);
    let mut group = c.benchmark_group("encode");
    for (name, data) in [("small", &small), ("1KiB", &kib), ("multiline", &multi)] {
        group.throughput(Throughput::Elements(1));
        group.bench_function(name, |b| {
            b.iter(|| {
                let id = black_box("k3j9x2ab-123456");
                let mut out = BytesMut::with_capacity(encoded_event_len(Some(id), None, data));
                encode_event(&mut out, Some(id), None, black_box(data));
                out.freeze()
            })
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut stream = BytesMut::new();
    for i in 0..1000 {
        encode_event(
            &mut stream,
            Some(&format!("k3j9x2ab-{i}")),
            None,
            r#"{"order":42,"status":"paid","padding":"........................................"}"#,
        );
    }
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("1000 events, 16 KiB reads", |b| {
        b.iter(|| {
            let mut decoder = Decoder::new();
            let mut items = Vec::with_capacity(1000);
            for chunk in stream.chunks(16 * 1024) {
                decoder.feed(black_box(chunk), &mut items).ok();
            }
            items.len()
        })
    });
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
