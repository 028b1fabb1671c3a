//! Delivery latency histograms: one shard per reader thread, merged at the end.
//!
//! A reader locks its thread's shard once per socket read (uncontended: only the final
//! merge takes it from elsewhere) and records every event of that read into it. Nothing
//! is kept per connection. Values are microseconds, 1 µs ..= 60 s, 3 significant digits;
//! larger values are clamped to 60 s.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Highest trackable latency, µs.
pub const MAX_US: u64 = 60_000_000;

/// A new, empty latency histogram (µs).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant, valid histogram bounds")
}

/// What one reader thread accumulates.
#[derive(Debug)]
pub struct Shard {
    /// Latencies in µs.
    pub hist: Histogram<u64>,
    /// Events seen on this thread (for `--latency-sample`).
    pub events: u64,
    /// Socket reads that returned data.
    pub reads: u64,
    /// Bytes read.
    pub bytes: u64,
}

impl Shard {
    fn new() -> Self {
        Self {
            hist: new_histogram(),
            events: 0,
            reads: 0,
            bytes: 0,
        }
    }
}

/// The shards of one run.
#[derive(Debug)]
pub struct Registry {
    id: u64,
    shards: Mutex<Vec<Arc<Mutex<Shard>>>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's shard, tagged with its registry's id.
    static LOCAL: RefCell<Option<(u64, Arc<Mutex<Shard>>)>> = const { RefCell::new(None) };
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shards: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on the calling thread's shard (created on first use).
    #[inline]
    pub fn with_shard<R>(&self, f: impl FnOnce(&mut Shard) -> R) -> R {
        LOCAL.with(|local| {
            let mut slot = local.borrow_mut();
            let entry = match slot.take() {
                Some(entry) if entry.0 == self.id => slot.insert(entry),
                _ => slot.insert((self.id, self.register())),
            };
            let mut shard = entry.1.lock();
            f(&mut shard)
        })
    }

    fn register(&self) -> Arc<Mutex<Shard>> {
        let shard = Arc::new(Mutex::new(Shard::new()));
        self.shards.lock().push(Arc::clone(&shard));
        shard
    }

    /// All shards added up.
    pub fn merged(&self) -> Shard {
        let mut total = Shard::new();
        for shard in self.shards.lock().iter() {
            let s = shard.lock();
            total.hist.add(&s.hist).expect("same bounds");
            total.events += s.events;
            total.reads += s.reads;
            total.bytes += s.bytes;
        }
        total
    }
}

/// A histogram as `[value, count]` pairs (one per non-empty bucket) for JSON.
pub fn to_pairs(h: &Histogram<u64>) -> Vec<[u64; 2]> {
    h.iter_recorded()
        .map(|v| [v.value_iterated_to(), v.count_at_value()])
        .collect()
}

/// Adds `[value, count]` pairs to `h`.
pub fn add_pairs(h: &mut Histogram<u64>, pairs: &[[u64; 2]]) {
    for [v, n] in pairs {
        h.saturating_record_n(*v, *n);
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

/// Summarises a µs histogram.
pub fn summarize(h: &Histogram<u64>) -> Summary {
    if h.is_empty() {
        return Summary::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Summary {
        count: h.len(),
        mean_ms: h.mean() / 1000.0,
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_and_merge() {
        let mut h = new_histogram();
        for v in [1, 5, 5, 1000, 123_456, MAX_US * 2] {
            h.saturating_record(v);
        }
        let mut back = new_histogram();
        add_pairs(&mut back, &to_pairs(&h));
        assert_eq!(back.len(), h.len());
        assert_eq!(summarize(&back), summarize(&h));
        let s = summarize(&h);
        assert_eq!(s.count, 6);
        assert!((s.p50_ms - 0.005).abs() < 1e-9);
    }

    #[test]
    fn shards_per_thread_are_merged() {
        let reg = Arc::new(Registry::new());
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let reg = Arc::clone(&reg);
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        reg.with_shard(|s| {
                            s.hist.saturating_record(100 * (i + 1));
                            s.reads += 1;
                        });
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        let m = reg.merged();
        assert_eq!(m.hist.len(), 30);
        assert_eq!(m.reads, 30);
        // a second registry on this thread gets its own shard
        let other = Registry::new();
        other.with_shard(|s| s.reads += 1);
        reg.with_shard(|s| s.reads += 1);
        assert_eq!(other.merged().reads, 1);
        assert_eq!(reg.merged().reads, 31);
    }
}
