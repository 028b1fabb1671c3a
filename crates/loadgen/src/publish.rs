//! The paced publisher: `rate` messages/s in total, round-robin over the topics, for
//! `duration`, through NATS core or HTTP `POST`.
//!
//! It runs on a thread of its own (a current-thread tokio runtime), so the readers never
//! delay it. Pacing: every `tick` (1 ms) it sends what is due since the start
//! (`elapsed × rate`, so a late tick catches up) as one burst, then flushes once.
//!
//! Payload: `<seq>,<send-time-ns>[,xxx…]` — `seq` counts 1, 2, 3 … per topic, the time is
//! nanoseconds since the Unix epoch taken just before the message is handed to the
//! transport, and `x` pads it to `--payload-bytes`. A topic's published counter is raised
//! before its message is sent, so a reader never expects less than was sent, and lowered
//! again when the publish fails (an HTTP status other than 2xx, a broken connection), so
//! readers do not expect what was never published.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, Publisher};
use crate::connect::{Counters, unix_nanos};
use crate::parse::{self, Dechunker, Progress};
use crate::proc_stats;
use crate::report::PublishSummary;

/// Appends a payload to `out`.
pub fn write_payload(out: &mut impl bytes::BufMut, seq: u64, sent_ns: u64, pad_to: usize) {
    let mut a = itoa::Buffer::new();
    let mut b = itoa::Buffer::new();
    let seq = a.format(seq).as_bytes();
    let sent = b.format(sent_ns).as_bytes();
    out.put_slice(seq);
    out.put_u8(b',');
    out.put_slice(sent);
    let len = seq.len() + 1 + sent.len();
    if pad_to > len + 1 {
        out.put_u8(b',');
        out.put_bytes(b'x', pad_to - len - 1);
    }
}

/// What the pacing loop needs.
#[derive(Debug, Clone)]
struct Plan {
    rate: f64,
    duration: Duration,
    tick: Duration,
    topics: usize,
    payload_bytes: usize,
    /// Several topics per connection: a payload's sequence carries its topic.
    tag_topic: bool,
}

/// The sequence a payload carries: with several topics per connection
/// (`--topics-per-client`), `topic << 32 | seq`, so that a reader tells its topics apart.
pub fn wire_seq(tag_topic: bool, topic: usize, seq: u64) -> u64 {
    if tag_topic {
        ((topic as u64) << 32) | (seq & 0xffff_ffff)
    } else {
        seq
    }
}

/// A publisher thread, connected and waiting for [`PublisherThread::run`].
#[derive(Debug)]
pub struct PublisherThread {
    start: Option<oneshot::Sender<()>>,
    done: oneshot::Receiver<PublishSummary>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PublisherThread {
    /// Starts the thread and connects; fails when the transport cannot be reached.
    pub fn spawn(cfg: &Config, published: Counters) -> anyhow::Result<Self> {
        let target = cfg
            .publisher
            .clone()
            .context("stream mode needs a publisher (--nats or --publish-http)")?;
        let plan = Plan {
            rate: cfg.rate,
            duration: cfg.duration,
            tick: cfg.tick,
            topics: cfg.topics,
            payload_bytes: cfg.payload_bytes,
            tag_topic: cfg.topics_per_client > 1,
        };
        let names: Vec<String> = (0..cfg.topics).map(|t| cfg.topic_name(t)).collect();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let (start_tx, start_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("publisher".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let mut sink = match Sink::connect(&target, &names, &plan, &published).await {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    if start_rx.await.is_err() {
                        return;
                    }
                    let summary = pace(&mut sink, &plan, &published).await;
                    let _ = done_tx.send(summary);
                });
            })
            .context("spawning the publisher thread")?;
        ready_rx
            .recv()
            .context("the publisher thread ended while connecting")??;
        Ok(Self {
            start: Some(start_tx),
            done: done_rx,
            thread: Some(thread),
        })
    }

    /// Publishes for the configured duration; returns what was done.
    pub async fn run(mut self) -> anyhow::Result<PublishSummary> {
        if let Some(start) = self.start.take() {
            let _ = start.send(());
        }
        let summary = (&mut self.done)
            .await
            .context("the publisher thread ended early")?;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        Ok(summary)
    }
}

/// The pacing loop.
async fn pace(sink: &mut Sink, plan: &Plan, published: &Counters) -> PublishSummary {
    let cpu0 = proc_stats::thread_cpu_s().unwrap_or(0.0);
    let total = (plan.rate * plan.duration.as_secs_f64()).round() as u64;
    let mut seqs = vec![0u64; plan.topics];
    let mut interval = tokio::time::interval(plan.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut last_send = start;
    let mut topic = 0;
    while sent < total {
        interval.tick().await;
        let due = ((start.elapsed().as_secs_f64() * plan.rate) as u64).min(total);
        if due == sent {
            continue;
        }
        while sent < due {
            seqs[topic] += 1;
            published[topic].fetch_add(1, Ordering::Relaxed);
            sink.send(topic, wire_seq(plan.tag_topic, topic, seqs[topic]))
                .await;
            sent += 1;
            topic += 1;
            if topic == plan.topics {
                topic = 0;
            }
        }
        sink.flush().await;
        last_send = Instant::now();
    }
    let errors = sink.finish().await;
    PublishSummary {
        published: sent,
        errors,
        publish_s: last_send.duration_since(start).as_secs_f64(),
        cpu_s: proc_stats::thread_cpu_s().unwrap_or(0.0) - cpu0,
    }
}

/// A transport.
enum Sink {
    Nats(NatsSink),
    Http(HttpSink),
    /// Records `(topic, seq)` (tests).
    #[cfg(test)]
    Record(Vec<(usize, u64)>),
}

impl Sink {
    async fn connect(
        target: &Publisher,
        names: &[String],
        plan: &Plan,
        published: &Counters,
    ) -> anyhow::Result<Self> {
        Ok(match target {
            Publisher::Nats {
                url,
                subject_prefix,
            } => Self::Nats(NatsSink::connect(url, subject_prefix, names, plan, published).await?),
            Publisher::Http {
                addr,
                host,
                path,
                conns,
                inflight,
            } => {
                let paths = names
                    .iter()
                    .map(|n| path.replace("{topic}", n))
                    .collect::<Vec<_>>();
                Self::Http(
                    HttpSink::connect(*addr, host, paths, (*conns, *inflight), plan, published)
                        .await?,
                )
            }
        })
    }

    async fn send(&mut self, topic: usize, seq: u64) {
        match self {
            Self::Nats(s) => s.send(topic, seq).await,
            Self::Http(s) => s.send(topic, seq),
            #[cfg(test)]
            Self::Record(v) => v.push((topic, seq)),
        }
    }

    async fn flush(&mut self) {
        match self {
            Self::Nats(s) => s.flush().await,
            Self::Http(s) => s.flush(),
            #[cfg(test)]
            Self::Record(_) => {}
        }
    }

    async fn finish(&mut self) -> BTreeMap<String, u64> {
        match self {
            Self::Nats(s) => {
                s.flush().await;
                std::mem::take(&mut s.errors)
            }
            Self::Http(s) => s.finish().await,
            #[cfg(test)]
            Self::Record(_) => BTreeMap::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// NATS
// ---------------------------------------------------------------------------------------

struct NatsSink {
    client: async_nats::Client,
    published: Counters,
    subjects: Vec<async_nats::Subject>,
    buf: BytesMut,
    pad_to: usize,
    errors: BTreeMap<String, u64>,
}

impl NatsSink {
    async fn connect(
        url: &str,
        prefix: &str,
        names: &[String],
        plan: &Plan,
        published: &Counters,
    ) -> anyhow::Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .client_capacity(65_536)
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .with_context(|| format!("connecting to NATS at {url}"))?;
        Ok(Self {
            client,
            published: published.clone(),
            subjects: names
                .iter()
                .map(|n| async_nats::Subject::from(format!("{prefix}.{n}")))
                .collect(),
            buf: BytesMut::with_capacity(64 * 1024),
            pad_to: plan.payload_bytes,
            errors: BTreeMap::new(),
        })
    }

    async fn send(&mut self, topic: usize, seq: u64) {
        if self.buf.capacity() - self.buf.len() < self.pad_to + 64 {
            self.buf.reserve((self.pad_to + 64) * 256);
        }
        write_payload(&mut self.buf, seq, unix_nanos(), self.pad_to);
        let payload: Bytes = self.buf.split().freeze();
        if self
            .client
            .publish(self.subjects[topic].clone(), payload)
            .await
            .is_err()
        {
            *self.errors.entry("nats_publish".into()).or_default() += 1;
            self.published[topic].fetch_sub(1, Ordering::Relaxed);
        }
    }

    async fn flush(&mut self) {
        if self.client.flush().await.is_err() {
            *self.errors.entry("nats_flush".into()).or_default() += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

/// Messages of one tick for one connection: `(topic, seq)`.
type Batch = Vec<(u32, u64)>;

struct HttpSink {
    conns: Vec<mpsc::UnboundedSender<Batch>>,
    pending: Vec<Batch>,
    tasks: Vec<tokio::task::JoinHandle<BTreeMap<String, u64>>>,
}

impl HttpSink {
    async fn connect(
        addr: SocketAddrV4,
        host: &str,
        paths: Vec<String>,
        (n, inflight): (usize, usize),
        plan: &Plan,
        published: &Counters,
    ) -> anyhow::Result<Self> {
        let heads: Arc<[Box<[u8]>]> = paths
            .iter()
            .map(|p| {
                format!(
                    "POST {p} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\nContent-Length: "
                )
                .into_bytes()
                .into_boxed_slice()
            })
            .collect();
        let mut conns = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let stream = TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to the HTTP publish target {addr}"))?;
            let (tx, rx) = mpsc::unbounded_channel();
            let conn = HttpConn {
                addr,
                stream: Some(stream),
                heads: Arc::clone(&heads),
                inflight,
                pad_to: plan.payload_bytes,
                out: Vec::with_capacity(64 * 1024),
                inbuf: Vec::with_capacity(64 * 1024),
                errors: BTreeMap::new(),
                published: published.clone(),
            };
            conns.push(tx);
            tasks.push(tokio::spawn(conn.serve(rx)));
        }
        Ok(Self {
            pending: vec![Vec::new(); n],
            conns,
            tasks,
        })
    }

    fn send(&mut self, topic: usize, seq: u64) {
        // a topic always goes through the same connection: its order is kept
        let c = topic % self.conns.len();
        self.pending[c].push((u32::try_from(topic).unwrap_or(u32::MAX), seq));
    }

    fn flush(&mut self) {
        for (tx, batch) in self.conns.iter().zip(self.pending.iter_mut()) {
            if !batch.is_empty() {
                let _ = tx.send(std::mem::take(batch));
            }
        }
    }

    async fn finish(&mut self) -> BTreeMap<String, u64> {
        self.flush();
        self.conns.clear();
        let mut errors = BTreeMap::new();
        for t in self.tasks.drain(..) {
            if let Ok(e) = t.await {
                for (k, v) in e {
                    *errors.entry(k).or_default() += v;
                }
            }
        }
        errors
    }
}

/// One keep-alive publishing connection: writes each batch as pipelined requests (at
/// most `inflight` at a time, 0: all), then reads their responses.
struct HttpConn {
    addr: SocketAddrV4,
    stream: Option<TcpStream>,
    heads: Arc<[Box<[u8]>]>,
    inflight: usize,
    pad_to: usize,
    out: Vec<u8>,
    inbuf: Vec<u8>,
    errors: BTreeMap<String, u64>,
    published: Counters,
}

impl HttpConn {
    async fn serve(mut self, mut rx: mpsc::UnboundedReceiver<Batch>) -> BTreeMap<String, u64> {
        let mut payload = Vec::with_capacity(self.pad_to + 64);
        let mut starts = Vec::new();
        while let Some(mut batch) = rx.recv().await {
            // catch up: everything queued goes out in one write
            while let Ok(more) = rx.try_recv() {
                batch.extend(more);
            }
            self.out.clear();
            starts.clear();
            for &(topic, seq) in &batch {
                starts.push(self.out.len());
                payload.clear();
                write_payload(&mut payload, seq, unix_nanos(), self.pad_to);
                let mut len = itoa::Buffer::new();
                self.out.extend_from_slice(&self.heads[topic as usize]);
                self.out
                    .extend_from_slice(len.format(payload.len()).as_bytes());
                self.out.extend_from_slice(b"\r\n\r\n");
                self.out.extend_from_slice(&payload);
            }
            self.exchange(&batch, &starts).await;
        }
        self.errors
    }

    /// Writes `self.out` (the requests of `batch`, the i-th starting at `starts[i]`)
    /// and reads their responses. A response saying `Connection: close` (nginx does after
    /// `keepalive_requests`) means the requests after it were not read: they are sent
    /// again on a new connection. A failed message is counted, and taken back from its
    /// topic's published count: readers do not expect it.
    async fn exchange(&mut self, batch: &[(u32, u64)], starts: &[usize]) {
        let mut next = 0;
        let mut reconnects = 0;
        while next < batch.len() {
            if self.stream.is_none() {
                match TcpStream::connect(self.addr).await {
                    Ok(s) => self.stream = Some(s),
                    Err(e) => {
                        return self.failed(format!("connect_{:?}", e.kind()), &batch[next..]);
                    }
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                return;
            };
            let window = match self.inflight {
                0 => batch.len(),
                n => (next + n).min(batch.len()),
            };
            let end = starts.get(window).copied().unwrap_or(self.out.len());
            if let Err(e) = stream.write_all(&self.out[starts[next]..end]).await {
                self.stream = None;
                return self.failed(format!("write_{:?}", e.kind()), &batch[next..]);
            }
            while next < window {
                let topic = batch[next].0 as usize;
                match read_response(stream, &mut self.inbuf).await {
                    Ok((status, close)) => {
                        next += 1;
                        if !(200..300).contains(&status) {
                            bump(&mut self.errors, status.to_string(), 1);
                            self.published[topic].fetch_sub(1, Ordering::Relaxed);
                        }
                        if close {
                            self.stream = None;
                            self.inbuf.clear();
                            break;
                        }
                    }
                    Err(kind) => {
                        self.stream = None;
                        self.inbuf.clear();
                        return self.failed(kind, &batch[next..]);
                    }
                }
            }
            if self.stream.is_some() {
                // The window was answered; the next one goes on this connection.
                continue;
            }
            reconnects += 1;
            if reconnects > 1000 {
                return self.failed("too_many_reconnects".into(), &batch[next..]);
            }
        }
    }

    fn failed(&mut self, kind: String, lost: &[(u32, u64)]) {
        bump(&mut self.errors, kind, lost.len() as u64);
        for &(topic, _) in lost {
            self.published[topic as usize].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn bump(errors: &mut BTreeMap<String, u64>, kind: String, n: u64) {
    *errors.entry(kind).or_default() += n;
}

/// Reads one response (head and body) from `stream`, `buf` holding what was read ahead.
/// Returns the status and whether the server closes the connection after it.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u16, bool), String> {
    let head = loop {
        match parse::parse_head(buf) {
            Ok(Some(h)) => break h,
            Ok(None) => {}
            Err(_) => return Err("bad_response".into()),
        }
        fill(stream, buf).await?;
    };
    buf.drain(..head.len);
    if head.chunked {
        let mut d = Dechunker::new();
        loop {
            match d.feed_counted(buf, |_| {}) {
                Ok((Progress::End, used)) => {
                    buf.drain(..used);
                    break;
                }
                Ok((Progress::More, used)) => {
                    buf.drain(..used);
                }
                Err(_) => return Err("bad_chunked_response".into()),
            }
            fill(stream, buf).await?;
        }
    } else if let Some(len) = head.content_length {
        let len = usize::try_from(len).map_err(|_| "huge_response".to_string())?;
        while buf.len() < len {
            fill(stream, buf).await?;
        }
        buf.drain(..len);
    }
    Ok((head.status, head.close))
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    buf.reserve(16 * 1024);
    match stream.read_buf(buf).await {
        Ok(0) => Err("closed".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("read_{:?}", e.kind())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::new_counters;

    async fn paced(rate: f64, duration: Duration, topics: usize) -> (Vec<(usize, u64)>, Duration) {
        let plan = Plan {
            rate,
            duration,
            tick: Duration::from_millis(1),
            topics,
            payload_bytes: 0,
            tag_topic: false,
        };
        let counters = new_counters(topics);
        let mut sink = Sink::Record(Vec::new());
        let t0 = Instant::now();
        let summary = pace(&mut sink, &plan, &counters).await;
        let took = t0.elapsed();
        let Sink::Record(sent) = sink else {
            unreachable!("a recording sink")
        };
        assert_eq!(summary.published, sent.len() as u64);
        let per_topic: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        assert_eq!(per_topic, sent.len() as u64);
        (sent, took)
    }

    #[tokio::test]
    async fn paces_round_robin_with_per_topic_sequences() {
        let (sent, took) = paced(1000.0, Duration::from_millis(300), 3).await;
        assert_eq!(sent.len(), 300);
        assert!(took >= Duration::from_millis(290), "{took:?}");
        for (i, (topic, seq)) in sent.iter().enumerate() {
            assert_eq!(*topic, i % 3);
            assert_eq!(*seq, (i / 3) as u64 + 1);
        }
    }

    #[tokio::test]
    async fn low_rates_are_not_rounded_up_to_one_per_tick() {
        let (sent, took) = paced(20.0, Duration::from_millis(500), 2).await;
        assert_eq!(sent.len(), 10);
        assert!(took >= Duration::from_millis(490), "{took:?}");
    }

    #[test]
    fn payload_padding() {
        let mut v = Vec::new();
        write_payload(&mut v, 12, 345, 0);
        assert_eq!(v, b"12,345");
        v.clear();
        write_payload(&mut v, 12, 345, 10);
        assert_eq!(v, b"12,345,xxx");
        assert_eq!(parse::parse_payload(&v), Some((12, 345)));
        v.clear();
        write_payload(&mut v, 12, 345, 7);
        assert_eq!(v, b"12,345");
    }
}
