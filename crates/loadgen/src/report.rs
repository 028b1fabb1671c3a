//! What a run measured: the per-process partial results (mergeable: `--procs` children
//! send theirs as JSON), and the final report — a human table and one JSON line.
//!
//! JSON field names are stable and snake_case; fields that could not be measured are
//! `null` (no `--server-pid`, idle mode, nothing delivered …).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Mode, Publisher};
use crate::latency;
use crate::proc_stats::Sample;

/// Delivery counters, summed over connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Messages published to a connection's topic while it was connected, summed.
    pub expected: u64,
    /// New events received in order (`seq` above every one seen before).
    pub delivered: u64,
    /// `expected − delivered` per connection (never negative), summed.
    pub lost: u64,
    /// Sequence numbers skipped (`seq > last + 1`), part of `lost`.
    pub gaps: u64,
    /// Events repeating the last `seq`.
    pub duplicates: u64,
    /// Events with a `seq` below the last one.
    pub out_of_order: u64,
    /// `gateway.reset` frames.
    pub resets: u64,
    /// Events with data not of the `<seq>,<time>` form.
    pub other_events: u64,
    /// Events published before the connection was open (ignored).
    pub stale_events: u64,
}

impl Delivery {
    /// Adds `o` to `self`.
    pub fn add(&mut self, o: &Self) {
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.gaps += o.gaps;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.resets += o.resets;
        self.other_events += o.other_events;
        self.stale_events += o.stale_events;
    }
}

/// What one process's readers measured (a `--procs` child prints this as JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Partial {
    /// Connections this process was to open.
    pub clients: u64,
    /// Connections answered 200.
    pub ok: u64,
    /// Other statuses: status code → connections.
    pub failed_by_status: BTreeMap<String, u64>,
    /// Attempts that got no response head: error kind → connections.
    pub connect_errors: BTreeMap<String, u64>,
    /// Seconds from the first attempt until every attempt was answered (or the timeout).
    pub connect_s: f64,
    /// Connections that were opened after publishing had started.
    pub late_connections: u64,
    /// Connections that ended before the end of the run: reason → connections.
    pub closed_early: BTreeMap<String, u64>,
    /// Delivery counters.
    pub delivery: Delivery,
    /// Socket reads that returned data.
    pub reads: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Latency histogram, µs, as `[value, count]` pairs.
    pub latency_us: Vec<[u64; 2]>,
    /// CPU seconds of this process, whole run.
    pub cpu_total_s: f64,
    /// CPU seconds of this process during the publish phase (publishing and drain).
    pub cpu_publish_s: f64,
    /// Resident memory of this process with its connections open, bytes.
    pub rss_bytes: u64,
}

impl Partial {
    /// Adds another process's results (`--procs`).
    pub fn merge(&mut self, o: &Self) {
        self.clients += o.clients;
        self.ok += o.ok;
        add_map(&mut self.failed_by_status, &o.failed_by_status);
        add_map(&mut self.connect_errors, &o.connect_errors);
        self.connect_s = self.connect_s.max(o.connect_s);
        self.late_connections += o.late_connections;
        add_map(&mut self.closed_early, &o.closed_early);
        self.delivery.add(&o.delivery);
        self.reads += o.reads;
        self.bytes_read += o.bytes_read;
        let mut h = latency::new_histogram();
        latency::add_pairs(&mut h, &self.latency_us);
        latency::add_pairs(&mut h, &o.latency_us);
        self.latency_us = latency::to_pairs(&h);
        self.cpu_total_s += o.cpu_total_s;
        self.cpu_publish_s += o.cpu_publish_s;
        self.rss_bytes += o.rss_bytes;
    }
}

fn add_map(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// What the publisher did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PublishSummary {
    /// Messages handed to the transport (per topic counts add up to this).
    pub published: u64,
    /// Failed publishes: kind (or HTTP status) → messages.
    pub errors: BTreeMap<String, u64>,
    /// Seconds from the first to the last message.
    pub publish_s: f64,
    /// CPU seconds of the publisher thread.
    pub cpu_s: f64,
}

/// Readings of the server process (`--server-pid`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerSamples {
    /// Before any connection.
    pub before: Option<Sample>,
    /// With every connection open (idle: after `--hold`).
    pub connected: Option<Sample>,
    /// At the end (after the drain).
    pub end: Option<Sample>,
}

/// CPU of the generator itself (all its processes).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenCpu {
    /// Whole run, children included.
    pub total_s: f64,
    /// Publish phase (publishing and drain), children included.
    pub publish_s: f64,
}

/// The final report. Serialised as ONE JSON line on stdout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `stream` or `idle`.
    pub mode: String,
    /// `nats`, `http` or `none`.
    pub publisher: String,
    /// Connections asked for.
    pub clients: u64,
    /// Topics.
    pub topics: u64,
    /// Processes reading.
    pub procs: u64,
    /// Reader threads per process.
    pub threads: u64,
    /// Source addresses.
    pub source_addrs: u64,
    /// Connections answered 200.
    pub clients_ok: u64,
    /// Connections not answered 200 (other status or no answer).
    pub clients_failed: u64,
    /// Status code → connections.
    pub failed_by_status: BTreeMap<String, u64>,
    /// Error kind → connections that got no response head.
    pub connect_errors: BTreeMap<String, u64>,
    /// Seconds to open every connection.
    pub connect_s: f64,
    /// `clients_ok / connect_s`.
    pub setup_rate_per_s: f64,
    /// Connections opened after publishing started.
    pub late_connections: u64,
    /// Connections that ended before the end: reason → count.
    pub closed_early: BTreeMap<String, u64>,
    /// Sum of `closed_early`.
    pub closed_early_total: u64,
    /// Asked publish rate, messages/s.
    pub rate: f64,
    /// Asked publish duration, s (idle: the hold time).
    pub duration_s: f64,
    /// Measured publish time, s.
    pub publish_s: f64,
    /// Messages published.
    pub published: u64,
    /// Failed publishes.
    pub publish_errors: u64,
    /// Failed publishes by kind / HTTP status.
    pub publish_errors_by_kind: BTreeMap<String, u64>,
    /// Events expected, summed over connections.
    pub expected: u64,
    /// Events delivered (new, in order).
    pub delivered: u64,
    /// `expected − delivered`, per connection, summed.
    pub loss: u64,
    /// `loss / expected`, percent.
    pub loss_pct: f64,
    /// Skipped sequence numbers (part of `loss`).
    pub gaps: u64,
    /// Repeated events.
    pub duplicates: u64,
    /// Events below the last sequence seen.
    pub out_of_order: u64,
    /// `gateway.reset` frames.
    pub resets: u64,
    /// Events of another form.
    pub other_events: u64,
    /// Events published before their connection was open.
    pub stale_events: u64,
    /// `delivered / publish_s`.
    pub delivered_per_s: f64,
    /// Every k-th event's latency is recorded.
    pub latency_sample: u64,
    /// `--read-coalesce` in ms: readers sleep this long before waiting for data, which
    /// adds up to this much to the latencies.
    pub read_coalesce_ms: f64,
    /// Latencies recorded.
    pub latency_count: u64,
    /// Mean latency, ms.
    pub latency_mean_ms: Option<f64>,
    /// Median latency, ms.
    pub latency_p50_ms: Option<f64>,
    /// 90th percentile, ms.
    pub latency_p90_ms: Option<f64>,
    /// 99th percentile, ms.
    pub latency_p99_ms: Option<f64>,
    /// 99.9th percentile, ms.
    pub latency_p999_ms: Option<f64>,
    /// Maximum, ms.
    pub latency_max_ms: Option<f64>,
    /// Socket reads with data.
    pub reads: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// `delivered / reads`.
    pub events_per_read: f64,
    /// `--server-pid`.
    pub server_pid: Option<u32>,
    /// Server RSS before any connection.
    pub server_rss_before_bytes: Option<u64>,
    /// Server RSS with every connection open (idle: after the hold).
    pub server_rss_connected_bytes: Option<u64>,
    /// Server RSS at the end.
    pub server_rss_end_bytes: Option<u64>,
    /// `(connected − before) / clients_ok`, bytes.
    pub server_rss_per_conn_bytes: Option<f64>,
    /// The same in KiB.
    pub server_rss_per_conn_kib: Option<f64>,
    /// Server CPU seconds during the publish phase (publishing and drain).
    pub server_cpu_publish_s: Option<f64>,
    /// Server CPU µs per delivered event.
    pub server_cpu_us_per_event: Option<f64>,
    /// Generator resident memory (all processes) with the connections open.
    pub gen_rss_bytes: u64,
    /// Generator CPU seconds, whole run, all processes.
    pub gen_cpu_total_s: f64,
    /// Generator CPU seconds during the publish phase, all processes.
    pub gen_cpu_publish_s: f64,
    /// Of which the publisher's.
    pub gen_publisher_cpu_s: f64,
    /// Generator CPU µs per delivered event (publish phase, publisher included).
    pub gen_cpu_us_per_event: Option<f64>,
    /// Reader CPU ns per delivered event (publish phase, publisher excluded).
    pub gen_reader_ns_per_event: Option<f64>,
}

/// Everything [`build`] combines.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// The run's configuration.
    pub cfg: &'a Config,
    /// Readers' results, merged over processes.
    pub readers: &'a Partial,
    /// Publisher's results (stream mode).
    pub publish: Option<&'a PublishSummary>,
    /// Server readings.
    pub server: ServerSamples,
    /// Generator CPU.
    pub gen_cpu: GenCpu,
    /// Generator memory (all processes).
    pub gen_rss_bytes: u64,
}

/// Whether two server readings added up the same processes; warns when not (an nginx
/// worker was replaced during the run: its figures are left out rather than wrong).
fn same_processes(a: &Sample, b: &Sample) -> bool {
    let same = a.processes == b.processes;
    if !same {
        tracing::warn!(
            "the server's processes changed during the run (a worker ended or was \
             replaced): its CPU and memory deltas are not reported"
        );
    }
    same
}

fn per(n: f64, d: f64) -> Option<f64> {
    (d > 0.0 && n.is_finite()).then(|| n / d)
}

/// Builds the report.
pub fn build(i: &Inputs<'_>) -> Report {
    let cfg = i.cfg;
    let r = i.readers;
    let d = &r.delivery;
    let failed: u64 =
        r.failed_by_status.values().sum::<u64>() + r.connect_errors.values().sum::<u64>();
    let mut hist = latency::new_histogram();
    latency::add_pairs(&mut hist, &r.latency_us);
    let lat = (!hist.is_empty()).then(|| latency::summarize(&hist));
    let publish = i.publish.cloned().unwrap_or_default();
    let delivered = d.delivered as f64;
    let s = &i.server;
    let rss_per_conn = match (s.before, s.connected) {
        (Some(b), Some(c)) if r.ok > 0 && same_processes(&b, &c) => {
            Some((c.rss_bytes as f64 - b.rss_bytes as f64) / r.ok as f64)
        }
        _ => None,
    };
    let server_cpu = match (cfg.mode, s.connected, s.end) {
        (Mode::Stream, Some(c), Some(e)) if same_processes(&c, &e) => Some(e.cpu_s - c.cpu_s),
        _ => None,
    };
    let reader_cpu = (i.gen_cpu.publish_s - publish.cpu_s).max(0.0);
    Report {
        mode: cfg.mode.as_str().into(),
        publisher: match (&cfg.publisher, cfg.mode) {
            (Some(Publisher::Nats { .. }), Mode::Stream) => "nats",
            (Some(Publisher::Http { .. }), Mode::Stream) => "http",
            _ => "none",
        }
        .into(),
        clients: cfg.clients as u64,
        topics: cfg.topics as u64,
        procs: cfg.procs as u64,
        threads: cfg.threads as u64,
        source_addrs: u64::from(cfg.source_addrs),
        clients_ok: r.ok,
        clients_failed: failed,
        failed_by_status: r.failed_by_status.clone(),
        connect_errors: r.connect_errors.clone(),
        connect_s: r.connect_s,
        setup_rate_per_s: per(r.ok as f64, r.connect_s).unwrap_or(0.0),
        late_connections: r.late_connections,
        closed_early: r.closed_early.clone(),
        closed_early_total: r.closed_early.values().sum(),
        rate: if cfg.mode == Mode::Stream {
            cfg.rate
        } else {
            0.0
        },
        duration_s: match cfg.mode {
            Mode::Stream => cfg.duration.as_secs_f64(),
            Mode::Idle => cfg.hold.as_secs_f64(),
        },
        publish_s: publish.publish_s,
        published: publish.published,
        publish_errors: publish.errors.values().sum(),
        publish_errors_by_kind: publish.errors.clone(),
        expected: d.expected,
        delivered: d.delivered,
        loss: d.lost,
        loss_pct: per(d.lost as f64 * 100.0, d.expected as f64).unwrap_or(0.0),
        gaps: d.gaps,
        duplicates: d.duplicates,
        out_of_order: d.out_of_order,
        resets: d.resets,
        other_events: d.other_events,
        stale_events: d.stale_events,
        delivered_per_s: per(delivered, publish.publish_s).unwrap_or(0.0),
        latency_sample: cfg.latency_sample,
        read_coalesce_ms: cfg.read_coalesce.as_secs_f64() * 1000.0,
        latency_count: hist.len(),
        latency_mean_ms: lat.map(|l| l.mean_ms),
        latency_p50_ms: lat.map(|l| l.p50_ms),
        latency_p90_ms: lat.map(|l| l.p90_ms),
        latency_p99_ms: lat.map(|l| l.p99_ms),
        latency_p999_ms: lat.map(|l| l.p999_ms),
        latency_max_ms: lat.map(|l| l.max_ms),
        reads: r.reads,
        bytes_read: r.bytes_read,
        events_per_read: per(delivered, r.reads as f64).unwrap_or(0.0),
        server_pid: cfg.server_pid,
        server_rss_before_bytes: s.before.map(|x| x.rss_bytes),
        server_rss_connected_bytes: s.connected.map(|x| x.rss_bytes),
        server_rss_end_bytes: s.end.map(|x| x.rss_bytes),
        server_rss_per_conn_bytes: rss_per_conn,
        server_rss_per_conn_kib: rss_per_conn.map(|b| b / 1024.0),
        server_cpu_publish_s: server_cpu,
        server_cpu_us_per_event: server_cpu.and_then(|c| per(c * 1e6, delivered)),
        gen_rss_bytes: i.gen_rss_bytes,
        gen_cpu_total_s: i.gen_cpu.total_s,
        gen_cpu_publish_s: i.gen_cpu.publish_s,
        gen_publisher_cpu_s: publish.cpu_s,
        gen_cpu_us_per_event: match cfg.mode {
            Mode::Stream => per(i.gen_cpu.publish_s * 1e6, delivered),
            Mode::Idle => None,
        },
        gen_reader_ns_per_event: match cfg.mode {
            Mode::Stream => per(reader_cpu * 1e9, delivered),
            Mode::Idle => None,
        },
    }
}

impl Report {
    /// The report as one JSON line.
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The human table (for stderr).
    pub fn table(&self) -> String {
        let mut t = String::new();
        let opt = |v: Option<f64>, unit: &str, prec: usize| match v {
            Some(v) => format!("{v:.prec$}{unit}"),
            None => "-".to_string(),
        };
        let mib = |b: Option<u64>| opt(b.map(|b| b as f64 / (1024.0 * 1024.0)), " MiB", 1);
        let map = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                String::new()
            } else {
                let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("  ({})", parts.join(", "))
            }
        };
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<26} {v}");
        };
        row(
            "run",
            format!(
                "{} mode, {} clients on {} topics, {} proc(s) x {} thread(s), {} source addr(s)",
                self.mode, self.clients, self.topics, self.procs, self.threads, self.source_addrs
            ),
        );
        row("clients ok", self.clients_ok.to_string());
        row(
            "clients failed",
            format!(
                "{}{}{}",
                self.clients_failed,
                map(&self.failed_by_status),
                map(&self.connect_errors)
            ),
        );
        row(
            "connect time",
            format!(
                "{:.2} s  ({:.0} connections/s)",
                self.connect_s, self.setup_rate_per_s
            ),
        );
        if self.late_connections > 0 {
            row("late connections", self.late_connections.to_string());
        }
        row(
            "closed early",
            format!("{}{}", self.closed_early_total, map(&self.closed_early)),
        );
        if self.mode == Mode::Stream.as_str() {
            row(
                "published",
                format!(
                    "{} via {} in {:.2} s (asked {} msg/s for {:.1} s), errors {}{}",
                    self.published,
                    self.publisher,
                    self.publish_s,
                    self.rate,
                    self.duration_s,
                    self.publish_errors,
                    map(&self.publish_errors_by_kind)
                ),
            );
            row("expected", self.expected.to_string());
            row(
                "delivered",
                format!(
                    "{}  ({:.0} events/s, {:.1} events/read)",
                    self.delivered, self.delivered_per_s, self.events_per_read
                ),
            );
            row(
                "loss",
                format!(
                    "{}  ({:.4} %, gaps {})",
                    self.loss, self.loss_pct, self.gaps
                ),
            );
            row(
                "duplicates / out-of-order",
                format!("{} / {}", self.duplicates, self.out_of_order),
            );
            row(
                "resets / other / stale",
                format!(
                    "{} / {} / {}",
                    self.resets, self.other_events, self.stale_events
                ),
            );
            let mut sample = String::new();
            if self.latency_sample > 1 {
                sample += &format!(", 1 in {} events", self.latency_sample);
            }
            if self.read_coalesce_ms > 0.0 {
                sample += &format!(", read coalescing adds up to {} ms", self.read_coalesce_ms);
            }
            row(
                "latency p50/p90/p99/p999",
                format!(
                    "{} / {} / {} / {}",
                    opt(self.latency_p50_ms, " ms", 2),
                    opt(self.latency_p90_ms, " ms", 2),
                    opt(self.latency_p99_ms, " ms", 2),
                    opt(self.latency_p999_ms, " ms", 2)
                ),
            );
            row(
                "latency max / mean",
                format!(
                    "{} / {}  ({} samples{sample})",
                    opt(self.latency_max_ms, " ms", 2),
                    opt(self.latency_mean_ms, " ms", 2),
                    self.latency_count
                ),
            );
        }
        if let Some(pid) = self.server_pid {
            row(
                "server rss before/conn/end",
                format!(
                    "{} / {} / {}  (pid {pid})",
                    mib(self.server_rss_before_bytes),
                    mib(self.server_rss_connected_bytes),
                    mib(self.server_rss_end_bytes)
                ),
            );
            row(
                "server rss per connection",
                format!(
                    "{}  ({})",
                    opt(self.server_rss_per_conn_bytes, " B", 0),
                    opt(self.server_rss_per_conn_kib, " KiB", 2)
                ),
            );
            if self.mode == Mode::Stream.as_str() {
                row(
                    "server cpu (publish phase)",
                    format!(
                        "{}  ({} per event)",
                        opt(self.server_cpu_publish_s, " s", 2),
                        opt(self.server_cpu_us_per_event, " µs", 3)
                    ),
                );
            }
        }
        row(
            "generator cpu total",
            format!(
                "{:.2} s  (rss {})",
                self.gen_cpu_total_s,
                mib(Some(self.gen_rss_bytes))
            ),
        );
        if self.mode == Mode::Stream.as_str() {
            row(
                "generator cpu (publish)",
                format!(
                    "{:.2} s, publisher {:.2} s  ({} per event; readers {} per event)",
                    self.gen_cpu_publish_s,
                    self.gen_publisher_cpu_s,
                    opt(self.gen_cpu_us_per_event, " µs", 3),
                    opt(self.gen_reader_ns_per_event, " ns", 0)
                ),
            );
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(ok: u64, delivered: u64, lat: &[u64]) -> Partial {
        let mut h = latency::new_histogram();
        for v in lat {
            h.saturating_record(*v);
        }
        Partial {
            clients: ok + 1,
            ok,
            failed_by_status: BTreeMap::from([("503".to_string(), 1)]),
            connect_s: ok as f64,
            delivery: Delivery {
                expected: delivered + 2,
                delivered,
                lost: 2,
                ..Delivery::default()
            },
            reads: delivered / 2,
            latency_us: latency::to_pairs(&h),
            cpu_publish_s: 1.0,
            ..Partial::default()
        }
    }

    #[test]
    fn merge_adds_counters_maxes_times_and_merges_latency() {
        let mut a = partial(10, 100, &[1000, 2000]);
        let b = partial(20, 300, &[3000]);
        a.merge(&b);
        assert_eq!(a.clients, 32);
        assert_eq!(a.ok, 30);
        assert_eq!(a.failed_by_status["503"], 2);
        assert_eq!(a.connect_s, 20.0);
        assert_eq!(a.delivery.delivered, 400);
        assert_eq!(a.delivery.lost, 4);
        assert_eq!(a.cpu_publish_s, 2.0);
        let mut h = latency::new_histogram();
        latency::add_pairs(&mut h, &a.latency_us);
        assert_eq!(h.len(), 3);
        assert_eq!(h.max(), h.highest_equivalent(3000));
    }

    #[test]
    fn partial_json_round_trip() {
        let p = partial(3, 9, &[5]);
        let json = serde_json::to_string(&p).expect("serialise");
        let back: Partial = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, p);
    }
}
