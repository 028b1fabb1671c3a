//! A latency histogram cheap enough to observe every delivered event.
//!
//! At 20 M deliveries a second, one shared atomic per observation (what
//! [`prometheus::Histogram`] does: several per observation) would bounce cache lines
//! between the writer threads. A [`ShardedHistogram`] gives every thread that observes
//! its own shard: bucket counts and a sum in nanoseconds, each updated by that thread
//! alone with a relaxed load and store (no read-modify-write); the count is the sum of
//! the buckets. A scrape sums the shards into one ordinary Prometheus histogram with the
//! configured buckets.
//!
//! ## Guarantees
//! - Every observation is counted once, in the first bucket whose upper bound it does
//!   not exceed (the `le` rule), as a [`prometheus::Histogram`] would.
//! - Counts only grow: a thread's shard outlives the thread.
//! - `_count` is always the sum of the buckets; a scrape is not atomic across shards or
//!   fields otherwise: it may see an observation in its bucket but not yet in `_sum`
//!   (the next scrape does).
//!
//! A thread finds its shard through a thread-local list keyed by the histogram's id
//! (tests create many hubs, each with its own histogram); entries of dropped
//! histograms are pruned when a thread registers a new one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{HistogramOpts, Opts};

/// Most buckets a [`ShardedHistogram`] may have (besides `+Inf`).
pub const MAX_BUCKETS: usize = 31;

/// A histogram of durations with one single-writer shard per observing thread: every
/// observation is counted once, in the first bucket whose bound it does not exceed; a
/// thread's counts outlive it; a scrape sums the shards (`_count` is the sum of the
/// buckets; `_sum` may lag an observation behind). Cheap to clone; clones are the same
/// histogram.
#[derive(Clone)]
pub struct ShardedHistogram {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    desc: Desc,
    /// Upper bounds in seconds, increasing, without `+Inf`.
    bounds: Vec<f64>,
    /// The same in nanoseconds.
    bounds_nanos: Vec<u64>,
    /// Every shard ever handed to a thread.
    shards: Mutex<Vec<Arc<Shard>>>,
    /// For a thread that cannot use its own shard (re-entered): updated atomically.
    shared: Shard,
}

/// One thread's counts. Aligned so that two shards never share a cache line.
#[repr(align(128))]
struct Shard {
    /// Non-cumulative counts; the last one is `+Inf`.
    buckets: [AtomicU64; MAX_BUCKETS + 1],
    sum_nanos: AtomicU64,
}

impl Shard {
    fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

/// Why a histogram could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistogramError {
    /// The name, help or buckets are invalid for Prometheus.
    #[error(transparent)]
    Prometheus(#[from] prometheus::Error),
    /// More than [`MAX_BUCKETS`] buckets.
    #[error("at most {MAX_BUCKETS} buckets, got {0}")]
    TooManyBuckets(usize),
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A thread's shard of one histogram: the histogram's id, whether it still exists, the
/// shard.
type LocalEntry = (u64, Weak<Inner>, Arc<Shard>);

thread_local! {
    /// This thread's shard of each histogram it observed into.
    static LOCAL: RefCell<Vec<LocalEntry>> = const { RefCell::new(Vec::new()) };
}

impl ShardedHistogram {
    /// A histogram named and described by `opts`, with its buckets (Prometheus's
    /// defaults when none are given). Labels are not supported.
    pub fn new(opts: HistogramOpts) -> Result<Self, HistogramError> {
        let mut bounds = if opts.buckets.is_empty() {
            prometheus::DEFAULT_BUCKETS.to_vec()
        } else {
            opts.buckets.clone()
        };
        if bounds.last().is_some_and(|b| b.is_infinite()) {
            bounds.pop();
        }
        if bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(prometheus::Error::Msg(format!(
                "histogram buckets must be in increasing order: {bounds:?}"
            ))
            .into());
        }
        if bounds.len() > MAX_BUCKETS {
            return Err(HistogramError::TooManyBuckets(bounds.len()));
        }
        let common: Opts = opts.common_opts;
        let desc = Desc::new(common.fq_name(), common.help, Vec::new(), HashMap::new())?;
        let bounds_nanos = bounds.iter().map(|&b| seconds_to_nanos(b)).collect();
        Ok(Self {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                desc,
                bounds,
                bounds_nanos,
                shards: Mutex::new(Vec::new()),
                shared: Shard::new(),
            }),
        })
    }

    /// Observes one duration.
    pub fn observe(&self, d: Duration) {
        self.with_local(|local| local.observe(d));
    }

    /// Runs `f` with this thread's shard, for observing many durations (one lookup).
    pub fn with_local<R>(&self, f: impl FnOnce(&Local<'_>) -> R) -> R {
        let inner = &*self.inner;
        let found = LOCAL.with(|local| {
            let mut list = local.try_borrow_mut().ok()?;
            if let Some((_, _, shard)) = list.iter().find(|(id, ..)| *id == inner.id) {
                return Some(shard.clone());
            }
            list.retain(|(_, alive, _)| alive.strong_count() > 0);
            let shard = Arc::new(Shard::new());
            inner.shards.lock().push(shard.clone());
            list.push((inner.id, Arc::downgrade(&self.inner), shard.clone()));
            Some(shard)
        });
        match &found {
            Some(shard) => f(&Local {
                shard,
                bounds: &inner.bounds_nanos,
                exclusive: true,
            }),
            None => f(&Local {
                shard: &inner.shared,
                bounds: &inner.bounds_nanos,
                exclusive: false,
            }),
        }
    }

    /// Observations so far.
    pub fn sample_count(&self) -> u64 {
        self.totals().count
    }

    /// Sum of the observations so far, in seconds.
    pub fn sample_sum(&self) -> f64 {
        self.totals().sum_nanos as f64 / 1e9
    }

    /// Cumulative counts per upper bound (in seconds), `+Inf` last.
    pub fn cumulative_buckets(&self) -> Vec<(f64, u64)> {
        let totals = self.totals();
        let mut cumulative = 0;
        let mut out = Vec::with_capacity(self.inner.bounds.len() + 1);
        for (i, &bound) in self.inner.bounds.iter().enumerate() {
            cumulative += totals.buckets[i];
            out.push((bound, cumulative));
        }
        out.push((f64::INFINITY, totals.count));
        out
    }

    fn totals(&self) -> Totals {
        let inner = &*self.inner;
        let mut totals = Totals {
            buckets: [0; MAX_BUCKETS + 1],
            count: 0,
            sum_nanos: 0,
        };
        let mut add = |shard: &Shard| {
            for (total, bucket) in totals.buckets.iter_mut().zip(&shard.buckets) {
                let n = bucket.load(Ordering::Relaxed);
                *total += n;
                totals.count += n;
            }
            totals.sum_nanos = totals
                .sum_nanos
                .wrapping_add(shard.sum_nanos.load(Ordering::Relaxed));
        };
        add(&inner.shared);
        for shard in inner.shards.lock().iter() {
            add(shard);
        }
        totals
    }
}

struct Totals {
    buckets: [u64; MAX_BUCKETS + 1],
    count: u64,
    sum_nanos: u64,
}

/// A thread's shard of a [`ShardedHistogram`], from [`ShardedHistogram::with_local`].
pub struct Local<'a> {
    shard: &'a Shard,
    bounds: &'a [u64],
    /// Only this thread writes the shard: plain load + store suffice.
    exclusive: bool,
}

impl Local<'_> {
    /// Observes one duration.
    #[inline]
    pub fn observe(&self, d: Duration) {
        self.observe_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Observes one duration given in nanoseconds.
    #[inline]
    pub fn observe_nanos(&self, nanos: u64) {
        let index = self
            .bounds
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(self.bounds.len());
        self.add(&self.shard.buckets[index], 1);
        self.add(&self.shard.sum_nanos, nanos);
    }

    #[inline]
    fn add(&self, cell: &AtomicU64, by: u64) {
        if self.exclusive {
            cell.store(
                cell.load(Ordering::Relaxed).wrapping_add(by),
                Ordering::Relaxed,
            );
        } else {
            cell.fetch_add(by, Ordering::Relaxed);
        }
    }
}

fn seconds_to_nanos(seconds: f64) -> u64 {
    // Saturating float-to-int conversion; bounds are positive and finite here.
    (seconds * 1e9).round() as u64
}

impl Collector for ShardedHistogram {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.inner.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let buckets = self.cumulative_buckets();
        let mut h = proto::Histogram::default();
        h.set_sample_count(buckets.last().map_or(0, |&(_, n)| n));
        h.set_sample_sum(self.sample_sum());
        h.set_bucket(
            buckets[..buckets.len() - 1]
                .iter()
                .map(|&(bound, count)| {
                    let mut b = proto::Bucket::default();
                    b.set_upper_bound(bound);
                    b.set_cumulative_count(count);
                    b
                })
                .collect(),
        );
        let mut metric = proto::Metric::default();
        metric.set_histogram(h);
        let mut family = MetricFamily::default();
        family.set_name(self.inner.desc.fq_name.clone());
        family.set_help(self.inner.desc.help.clone());
        family.set_field_type(MetricType::HISTOGRAM);
        family.set_metric(vec![metric]);
        vec![family]
    }
}

impl fmt::Debug for ShardedHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedHistogram")
            .field("name", &self.inner.desc.fq_name)
            .field("count", &self.sample_count())
            .finish()
    }
}

impl fmt::Debug for Local<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Local")
            .field("exclusive", &self.exclusive)
            .finish()
    }
}

#[cfg(test)]
mod tests {

    use prometheus::{Histogram, Registry};

    use super::*;

    const BUCKETS: [f64; 16] = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ];

    fn pair(name: &str) -> (ShardedHistogram, Histogram) {
        let opts = HistogramOpts::new(name, "help").buckets(BUCKETS.to_vec());
        (
            ShardedHistogram::new(opts.clone()).unwrap(),
            Histogram::with_opts(opts).unwrap(),
        )
    }

    /// Durations spread over every bucket, bounds themselves included.
    fn samples() -> Vec<Duration> {
        let mut out: Vec<Duration> = BUCKETS
            .iter()
            .map(|&b| Duration::from_secs_f64(b))
            .collect();
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // 0 to ~17 s, log-spread.
            let nanos = 1u64 << (x % 34);
            out.push(Duration::from_nanos(nanos + x % nanos.max(1)));
        }
        out.push(Duration::ZERO);
        out.push(Duration::from_secs(3600));
        out
    }

    fn assert_same(sharded: &ShardedHistogram, plain: &Histogram) {
        let ours = &sharded.collect()[0];
        let theirs = &plain.collect()[0];
        assert_eq!(ours.name(), theirs.name());
        assert_eq!(ours.get_field_type(), theirs.get_field_type());
        let (a, b) = (
            ours.get_metric()[0].get_histogram(),
            theirs.get_metric()[0].get_histogram(),
        );
        assert_eq!(a.get_sample_count(), b.get_sample_count());
        assert!(
            (a.get_sample_sum() - b.get_sample_sum()).abs() < 1e-6 * b.get_sample_sum().max(1.0),
            "{} vs {}",
            a.get_sample_sum(),
            b.get_sample_sum()
        );
        let bounds = |h: &proto::Histogram| -> Vec<(f64, u64)> {
            h.get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect()
        };
        assert_eq!(bounds(a), bounds(b));
    }

    #[test]
    fn counts_sums_and_buckets_match_a_plain_histogram() {
        let (sharded, plain) = pair("same");
        for d in samples() {
            sharded.observe(d);
            plain.observe(d.as_secs_f64());
        }
        assert_same(&sharded, &plain);
    }

    #[test]
    fn observations_from_many_threads_are_all_counted() {
        let (sharded, plain) = pair("threads");
        let samples = samples();
        std::thread::scope(|scope| {
            for chunk in samples.chunks(samples.len() / 4 + 1) {
                let sharded = sharded.clone();
                scope.spawn(move || {
                    sharded.with_local(|local| {
                        for &d in chunk {
                            local.observe(d);
                        }
                    });
                });
            }
        });
        for &d in &samples {
            plain.observe(d.as_secs_f64());
        }
        assert_same(&sharded, &plain);
        // Shards of finished threads are kept.
        assert!(sharded.inner.shards.lock().len() >= 4);
    }

    #[test]
    fn each_histogram_has_its_own_shards_on_a_thread() {
        let (a, _) = pair("a");
        let b = {
            let (b, _) = pair("b");
            b.observe(Duration::from_millis(1));
            b.clone()
        };
        a.observe(Duration::from_millis(1));
        a.observe(Duration::from_millis(2));
        assert_eq!(a.sample_count(), 2);
        assert_eq!(b.sample_count(), 1);
        drop(b);
        // A dropped histogram's entry is pruned when the thread registers another.
        let (c, _) = pair("c");
        c.observe(Duration::ZERO);
        LOCAL.with(|l| {
            let list = l.borrow();
            assert!(list.iter().all(|(_, alive, _)| alive.strong_count() > 0));
        });
    }

    #[test]
    fn a_reentrant_observation_goes_to_the_shared_shard() {
        let (a, _) = pair("reentrant");
        a.with_local(|outer| {
            outer.observe(Duration::from_millis(1));
            // Nested on the same thread: the list is borrowed, the shared shard is used.
            LOCAL.with(|l| {
                let _held = l.borrow_mut();
                a.observe(Duration::from_millis(1));
            });
        });
        assert_eq!(a.sample_count(), 2);
    }

    #[test]
    fn it_registers_and_renders_like_any_histogram() {
        let (sharded, _) = pair("sse_test_latency_seconds");
        let registry = Registry::new();
        registry.register(Box::new(sharded.clone())).unwrap();
        sharded.observe(Duration::from_micros(300));
        let mut text = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut text,
        )
        .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("# TYPE sse_test_latency_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("sse_test_latency_seconds_bucket{le=\"0.00025\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("sse_test_latency_seconds_bucket{le=\"0.0005\"} 1"),
            "{text}"
        );
        assert!(text.contains("sse_test_latency_seconds_count 1"), "{text}");
    }

    #[test]
    fn too_many_or_unordered_buckets_are_refused() {
        let many: Vec<f64> = (1..=40).map(f64::from).collect();
        assert!(matches!(
            ShardedHistogram::new(HistogramOpts::new("x", "x").buckets(many)),
            Err(HistogramError::TooManyBuckets(40))
        ));
        assert!(
            ShardedHistogram::new(HistogramOpts::new("x", "x").buckets(vec![2.0, 1.0])).is_err()
        );
    }
}
