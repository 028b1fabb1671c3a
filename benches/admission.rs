//! Admission: the per-request checks of the public listener.
//!
//! `cargo bench -p sse-admission --bench admission`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;

use criterion::{Criterion, criterion_group, criterion_main};
use ipnet::IpNet;
use sse_admission::{Caps, RateLimiter, client_ip};

fn admission(c: &mut Criterion) {
    let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap_or_else(|e| panic!("{e:?}"))];
    let peer: IpAddr = "10.1.2.3".parse().unwrap_or_else(|e| panic!("{e:?}"));
    let header: &[u8] = b"203.0.113.7, 198.51.100.2, 10.0.0.5";
    c.bench_function("client identity (trusted proxy, 3 hops)", |b| {
        b.iter(|| client_ip(black_box(peer), &[black_box(header)], &trusted))
    });

    let per_second = NonZeroU32::new(1_000_000).unwrap_or(NonZeroU32::MIN);
    let limiter = RateLimiter::new(per_second, per_second);
    let one = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    c.bench_function("token bucket check (one client)", |b| {
        b.iter(|| limiter.check(black_box(one)))
    });
    let mut n = 0u32;
    c.bench_function("token bucket check (new client each time)", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            limiter.check(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff))))
        })
    });

    let caps = Caps::new(u64::MAX, u64::MAX);
    c.bench_function("connection caps: acquire + release", |b| {
        b.iter(|| drop(caps.acquire(black_box(one))))
    });
}

criterion_group!(benches, admission);
criterion_main!(benches);
