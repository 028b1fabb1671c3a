//! The streaming clients: open `local_clients` SSE connections (ramped, bounded
//! concurrency, bound to a spread of source addresses) and read them until stopped.
//!
//! One task per connection and nothing else per connection: a future of ~390 bytes
//! (counters, the parser with its split-line carry, the socket), no buffer of its own —
//! every read goes into its thread's 64 KiB buffer and is parsed before the task yields,
//! so the buffer is never held across an await. The task waits on the socket's read
//! readiness only; [`Readers::stop`] aborts the tasks, and each task's state hands in
//! its counters when it is dropped, however it ended. Latencies go to the thread's
//! histogram shard ([`crate::latency`]).
//!
//! A burst of reads ends at the first short read, which tells tokio the socket is
//! drained: one `recv` per wake-up, not two (the second would only say `EAGAIN`).
//!
//! ## What a connection expects
//!
//! `base` is the number of messages published to its topic when its response head
//! arrived, `end` the number when it ended (the final count when it lasted to the stop).
//! It expects `end − base` events; events with `seq <= base` are "stale" and ignored.
//! In-process the counts are the publisher's own; in a `--procs` child they come from
//! the parent every 100 ms, so `base` of a connection opened while publishing may lag.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{self, Read as _};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use socket2::SockRef;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest};
use tokio::net::{TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;

use crate::config::Config;
use crate::latency::{Registry, Shard};
use crate::parse::{self, BodyDecoder, EventSink, Progress};
use crate::report::{Delivery, Partial};

/// The per-thread read buffer size.
pub const READ_BUF: usize = 64 * 1024;
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Full reads in a row before a connection yields to the others.
const READS_PER_WAKE: usize = 4;

thread_local! {
    static BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_BUF].into_boxed_slice());
}

/// Messages published per topic so far (shared with the publisher, or fed by the parent).
pub type Counters = Arc<[AtomicU64]>;

/// `topics` zeroed counters.
pub fn new_counters(topics: usize) -> Counters {
    (0..topics).map(|_| AtomicU64::new(0)).collect()
}

/// Nanoseconds since the Unix epoch (the send-time reference of the payloads).
#[inline]
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// State shared by every connection of this process.
#[derive(Debug)]
struct Shared {
    server: SocketAddr,
    /// One request per topic.
    requests: Vec<Box<[u8]>>,
    cfg: Config,
    published: Counters,
    publishing: AtomicBool,
    latency: Registry,
    start: Instant,
    /// Connections not yet answered (or failed).
    unsettled: AtomicUsize,
    settled: Notify,
    /// Nanoseconds after `start` when the last connection settled.
    last_settle_ns: AtomicU64,
    ok: AtomicU64,
    late: AtomicU64,
    /// Connection tasks spawned by the launcher.
    launched: AtomicUsize,
    /// Connection tasks (and not yet launched ones) still alive.
    live: AtomicUsize,
    all_done: Notify,
    outcomes: Mutex<Outcomes>,
    /// To stop the launcher and every connection task.
    aborts: Mutex<Vec<AbortHandle>>,
}

/// Rare, keyed outcomes and the delivery totals.
#[derive(Debug, Default)]
struct Outcomes {
    failed_by_status: BTreeMap<String, u64>,
    connect_errors: BTreeMap<String, u64>,
    closed_early: BTreeMap<String, u64>,
    delivery: Delivery,
}

impl Shared {
    fn settle(&self) {
        let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_settle_ns.fetch_max(ns, Ordering::Relaxed);
        if self.unsettled.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_waiters();
        }
    }

    fn fail(&self, kind: Failure) {
        {
            let mut o = self.outcomes.lock();
            match kind {
                Failure::Status(code) => {
                    *o.failed_by_status.entry(code.to_string()).or_default() += 1
                }
                Failure::Error(name) => *o.connect_errors.entry(name).or_default() += 1,
            }
        }
        self.settle();
    }

    fn task_done(&self) {
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.all_done.notify_waiters();
        }
    }
}

/// Why a connection did not open.
#[derive(Debug)]
enum Failure {
    Status(u16),
    Error(String),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Self::Error(format!("{:?}", e.kind()))
    }
}

/// The connections of this process.
#[derive(Debug)]
pub struct Readers {
    shared: Arc<Shared>,
}

impl Readers {
    /// Starts opening the connections, dealt round-robin over `readers`; returns at
    /// once. Must be called within a tokio runtime (the launcher runs there).
    pub fn start(cfg: &Config, published: Counters, readers: &[Handle]) -> Self {
        let requests = (0..cfg.topics)
            .map(|t| stream_request(&cfg.sub_path_for(t), &cfg.host).into_boxed_slice())
            .collect();
        let n = cfg.local_clients;
        let shared = Arc::new(Shared {
            server: SocketAddr::V4(cfg.server),
            requests,
            cfg: cfg.clone(),
            published,
            publishing: AtomicBool::new(false),
            latency: Registry::new(),
            start: Instant::now(),
            unsettled: AtomicUsize::new(n),
            settled: Notify::new(),
            last_settle_ns: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            late: AtomicU64::new(0),
            launched: AtomicUsize::new(0),
            live: AtomicUsize::new(n),
            all_done: Notify::new(),
            outcomes: Mutex::new(Outcomes::default()),
            aborts: Mutex::new(Vec::with_capacity(n + 1)),
        });
        let launcher = tokio::spawn(launch(Arc::clone(&shared), readers.to_vec()));
        shared.aborts.lock().push(launcher.abort_handle());
        Self { shared }
    }

    /// Waits until every connection is answered (or failed), at most `timeout`;
    /// returns whether they all were.
    pub async fn wait_settled(&self, timeout: Duration) -> bool {
        let s = &self.shared;
        tokio::time::timeout(timeout, until_zero(&s.unsettled, &s.settled))
            .await
            .is_ok()
    }

    /// Connections answered 200 so far.
    pub fn ok(&self) -> u64 {
        self.shared.ok.load(Ordering::Relaxed)
    }

    /// Connections not answered yet.
    pub fn unsettled(&self) -> usize {
        self.shared.unsettled.load(Ordering::Relaxed)
    }

    /// Seconds from the start to the last answer, or to now when some are pending.
    pub fn connect_s(&self) -> f64 {
        if self.unsettled() == 0 {
            self.shared.last_settle_ns.load(Ordering::Relaxed) as f64 / 1e9
        } else {
            self.shared.start.elapsed().as_secs_f64()
        }
    }

    /// From now on, new connections are "late".
    pub fn set_publishing(&self) {
        self.shared.publishing.store(true, Ordering::Relaxed);
    }

    /// Stops every connection (counting the still-open ones against the final published
    /// counts) and returns the results; waits at most `timeout` for the tasks.
    pub async fn stop(self, timeout: Duration) -> Partial {
        let s = &self.shared;
        // Aborting drops each task's future on its own thread; its `ConnTask` guard
        // hands in the counters then.
        let aborts = std::mem::take(&mut *s.aborts.lock());
        for a in &aborts {
            a.abort();
        }
        if tokio::time::timeout(timeout, until_zero(&s.live, &s.all_done))
            .await
            .is_err()
        {
            tracing::warn!(
                "{} connection tasks did not stop in time",
                s.live.load(Ordering::Relaxed)
            );
        }
        let merged = s.latency.merged();
        let o = s.outcomes.lock();
        Partial {
            clients: s.cfg.local_clients as u64,
            ok: s.ok.load(Ordering::Relaxed),
            failed_by_status: o.failed_by_status.clone(),
            connect_errors: o.connect_errors.clone(),
            connect_s: self.connect_s(),
            late_connections: s.late.load(Ordering::Relaxed),
            closed_early: o.closed_early.clone(),
            delivery: o.delivery,
            reads: merged.reads,
            bytes_read: merged.bytes,
            latency_us: crate::latency::to_pairs(&merged.hist),
            ..Partial::default()
        }
    }
}

/// Counts the connections the launcher never started (it was stopped first).
struct NotStarted(Arc<Shared>);

impl Drop for NotStarted {
    fn drop(&mut self) {
        let s = &self.0;
        for _ in s.launched.load(Ordering::Relaxed)..s.cfg.local_clients {
            s.fail(Failure::Error("not_started".into()));
            s.task_done();
        }
    }
}

/// Spawns the connection tasks: ramped, at most `connect_concurrency` attempts at once.
async fn launch(shared: Arc<Shared>, readers: Vec<Handle>) {
    let _rest = NotStarted(Arc::clone(&shared));
    let permits = Arc::new(Semaphore::new(shared.cfg.connect_concurrency));
    for local in 0..shared.cfg.local_clients {
        if let Some(rate) = shared.cfg.ramp_rate {
            let at = shared.start + Duration::from_secs_f64(local as f64 / rate);
            tokio::time::sleep_until(at.into()).await;
        }
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let task = ConnTask {
            shared: Arc::clone(&shared),
            topic: (shared.cfg.client_offset + local) * shared.cfg.topics_per_client
                % shared.cfg.topics,
            local,
            state: TaskState::Connecting,
            conn: Conn {
                base: 0,
                last: 0,
                d: Delivery::default(),
                multi: None,
            },
        };
        let handle = readers[local % readers.len()].spawn(connection(task, local, permit));
        // no await between the spawn and this count: an abort sees them agree
        shared.launched.fetch_add(1, Ordering::Relaxed);
        shared.aborts.lock().push(handle.abort_handle());
    }
}

/// The request that opens a stream on `path`.
fn stream_request(path: &str, host: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
    )
    .into_bytes()
}

/// The request goes out, the head comes back: the stream and the body bytes read with
/// the head.
async fn open(shared: Arc<Shared>, local: usize, topic: usize) -> Opened {
    let socket = TcpSocket::new_v4()?;
    let src = SocketAddrV4::new(shared.cfg.source_for(local), 0);
    socket.bind(SocketAddr::V4(src))?;
    let mut stream = socket.connect(shared.server).await?;
    if shared.cfg.topics_per_client > 1 {
        let client = shared.cfg.client_offset + local;
        let request = stream_request(&shared.cfg.multi_path_for(client), &shared.cfg.host);
        stream.write_all(&request).await?;
    } else if shared.cfg.sub_path.contains("{client}") {
        // A path of its own per connection (fresh per-user topics).
        let client = (shared.cfg.client_offset + local).to_string();
        let request = String::from_utf8_lossy(&shared.requests[topic]).replace("{client}", &client);
        stream.write_all(request.as_bytes()).await?;
    } else {
        stream.write_all(&shared.requests[topic]).await?;
    }
    let mut buf = Vec::with_capacity(4096);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(Failure::Error("eof_before_head".into()));
        }
        match parse::parse_head(&buf) {
            Ok(Some(head)) => {
                let rest = buf.split_off(head.len);
                return Ok((stream, head, rest));
            }
            Ok(None) if buf.len() >= MAX_HEAD => {
                return Err(Failure::Error("head_too_large".into()));
            }
            Ok(None) => {}
            Err(_) => return Err(Failure::Error("bad_head".into())),
        }
    }
}

/// Counters of one connection.
#[derive(Debug)]
struct Conn {
    /// `seq <= base` is stale.
    base: u64,
    /// Highest `seq` seen (starts at `base`).
    last: u64,
    d: Delivery,
    /// With several topics per connection: `base` and `last` per topic.
    multi: Option<Box<Multi>>,
}

/// The topics of a connection that reads several (`--topics-per-client`); a payload's
/// sequence then carries its topic (`topic << 32 | seq`, [`crate::publish::wire_seq`]).
#[derive(Debug)]
struct Multi {
    /// Topic index of the first; the others follow it (mod `topics`).
    first: usize,
    topics: usize,
    /// `(base, last)` per topic, in order.
    marks: Box<[(u64, u64)]>,
}

/// Where a connection task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskState {
    /// Not answered yet.
    Connecting,
    /// Failed to open (already counted).
    Failed,
    /// Open and reading.
    Open,
    /// Ended before the stop.
    Ended(Ending),
}

/// Why an open connection ended before the stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Eof,
    BodyEnd,
    BadChunk,
    Io(io::ErrorKind),
}

impl Ending {
    fn name(self) -> String {
        match self {
            Self::Eof => "eof".into(),
            Self::BodyEnd => "body_end".into(),
            Self::BadChunk => "bad_chunk".into(),
            Self::Io(kind) => format!("{kind:?}"),
        }
    }
}

/// One connection's task state. Its `Drop` does the accounting — the same whether the
/// task ended by itself or was aborted by [`Readers::stop`].
struct ConnTask {
    shared: Arc<Shared>,
    /// Its (first) topic.
    topic: usize,
    /// Its index in this process.
    local: usize,
    state: TaskState,
    conn: Conn,
}

impl Drop for ConnTask {
    fn drop(&mut self) {
        let s = &self.shared;
        match self.state {
            TaskState::Connecting => s.fail(Failure::Error("aborted".into())),
            TaskState::Failed => {}
            TaskState::Open | TaskState::Ended(_) => {
                let c = &mut self.conn;
                c.d.expected = match &c.multi {
                    None => s.published[self.topic]
                        .load(Ordering::Relaxed)
                        .saturating_sub(c.base),
                    Some(m) => (0..m.marks.len())
                        .map(|j| {
                            let end = s.published[(m.first + j) % m.topics].load(Ordering::Relaxed);
                            end.saturating_sub(m.marks[j].0)
                        })
                        .sum(),
                };
                c.d.lost = c.d.expected.saturating_sub(c.d.delivered);
                let mut o = s.outcomes.lock();
                o.delivery.add(&c.d);
                if let TaskState::Ended(why) = self.state {
                    *o.closed_early.entry(why.name()).or_default() += 1;
                }
            }
        }
        s.task_done();
    }
}

/// The parser's sink for one read of one connection.
struct Sink<'a> {
    conn: &'a mut Conn,
    shard: &'a mut Shard,
    now_us: u64,
    sample: u64,
}

impl EventSink for Sink<'_> {
    #[inline]
    fn event(&mut self, seq: u64, sent_ns: u64) {
        let c = &mut *self.conn;
        let (seq, base, last) = match &mut c.multi {
            None => (seq, c.base, &mut c.last),
            Some(m) => {
                let topic = usize::try_from(seq >> 32).unwrap_or(usize::MAX);
                let j = (topic % m.topics + m.topics - m.first) % m.topics;
                let Some((base, last)) = m.marks.get_mut(j) else {
                    c.d.other_events += 1;
                    return;
                };
                (seq & 0xffff_ffff, *base, last)
            }
        };
        if seq <= base {
            c.d.stale_events += 1;
            return;
        }
        if seq > *last {
            c.d.delivered += 1;
            c.d.gaps += seq - *last - 1;
            *last = seq;
        } else if seq == *last {
            c.d.duplicates += 1;
        } else {
            c.d.out_of_order += 1;
        }
        let shard = &mut *self.shard;
        shard.events += 1;
        if self.sample == 1 || shard.events.is_multiple_of(self.sample) {
            shard
                .hist
                .saturating_record(self.now_us.saturating_sub(sent_ns / 1000));
        }
    }

    fn reset(&mut self) {
        self.conn.d.resets += 1;
    }

    fn other(&mut self) {
        self.conn.d.other_events += 1;
    }
}

/// Feeds bytes of the body; `Some` when the body is over.
fn feed(
    shared: &Shared,
    shard: &mut Shard,
    conn: &mut Conn,
    decoder: &mut BodyDecoder,
    data: &[u8],
) -> Option<Ending> {
    let mut sink = Sink {
        conn,
        shard,
        now_us: unix_nanos() / 1000,
        sample: shared.cfg.latency_sample,
    };
    match decoder.feed(data, &mut sink) {
        Ok(Progress::More) => None,
        Ok(Progress::End) => Some(Ending::BodyEnd),
        Err(_) => Some(Ending::BadChunk),
    }
}

/// Reads what the socket holds into the thread's buffer and parses it; `Some` when the
/// connection is over.
fn read_ready(
    shared: &Shared,
    stream: &TcpStream,
    conn: &mut Conn,
    decoder: &mut BodyDecoder,
) -> Option<Ending> {
    let result = stream.try_io(Interest::READABLE, || {
        shared.latency.with_shard(|shard| {
            BUF.with_borrow_mut(|buf| {
                let sock = SockRef::from(stream);
                for _ in 0..READS_PER_WAKE {
                    let n = (&*sock).read(buf)?;
                    if n == 0 {
                        return Ok(Some(Ending::Eof));
                    }
                    shard.reads += 1;
                    shard.bytes += n as u64;
                    if let Some(end) = feed(shared, shard, conn, decoder, &buf[..n]) {
                        return Ok(Some(end));
                    }
                    if n < buf.len() {
                        // Short read: the socket is drained. Say so, so that tokio clears
                        // the readiness now instead of after one more (empty) read; data
                        // arriving meanwhile raises a new readiness event.
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                }
                Ok(None)
            })
        })
    });
    match result {
        Ok(end) => end,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => Some(Ending::Io(e.kind())),
    }
}

/// One connection, from the attempt to the end (or to its abort by [`Readers::stop`]).
async fn connection(mut task: ConnTask, local: usize, permit: OwnedSemaphorePermit) {
    // boxed: the connect phase's state is freed once connected, not kept in every task
    let attempt = Box::pin(tokio::time::timeout(
        task.shared.cfg.connect_timeout,
        open(Arc::clone(&task.shared), local, task.topic),
    ))
    .await;
    drop(permit);
    let Some((stream, mut decoder)) = task.opened(attempt) else {
        return;
    };
    loop {
        if let Err(e) = std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await {
            task.state = TaskState::Ended(Ending::Io(e.kind()));
            return;
        }
        if let Some(end) = read_ready(&task.shared, &stream, &mut task.conn, &mut decoder) {
            task.state = TaskState::Ended(end);
            return;
        }
    }
}

/// What [`open`] returns.
type Opened = Result<(TcpStream, parse::Head, Vec<u8>), Failure>;

impl ConnTask {
    /// Accounts for the outcome of the attempt; the stream and its decoder when open.
    fn opened(
        &mut self,
        attempt: Result<Opened, tokio::time::error::Elapsed>,
    ) -> Option<(TcpStream, BodyDecoder)> {
        let shared = &self.shared;
        let (stream, head, rest) = match attempt {
            Err(_) => {
                self.state = TaskState::Failed;
                shared.fail(Failure::Error("timeout".into()));
                return None;
            }
            Ok(Err(f)) => {
                self.state = TaskState::Failed;
                shared.fail(f);
                return None;
            }
            Ok(Ok(x)) => x,
        };
        if head.status != 200 {
            self.state = TaskState::Failed;
            shared.fail(Failure::Status(head.status));
            return None;
        }
        let base = shared.published[self.topic].load(Ordering::Relaxed);
        self.conn.base = base;
        self.conn.last = base;
        if shared.cfg.topics_per_client > 1 {
            let client = shared.cfg.client_offset + self.local;
            let marks = shared
                .cfg
                .topics_of(client)
                .map(|t| {
                    let base = shared.published[t].load(Ordering::Relaxed);
                    (base, base)
                })
                .collect();
            self.conn.multi = Some(Box::new(Multi {
                first: self.topic,
                topics: shared.cfg.topics,
                marks,
            }));
        }
        if shared.publishing.load(Ordering::Relaxed) {
            shared.late.fetch_add(1, Ordering::Relaxed);
        }
        shared.ok.fetch_add(1, Ordering::Relaxed);
        self.state = TaskState::Open;
        shared.settle();
        let mut decoder = BodyDecoder::new(&head);
        if !rest.is_empty() {
            let conn = &mut self.conn;
            let end = shared
                .latency
                .with_shard(|shard| feed(shared, shard, conn, &mut decoder, &rest));
            if let Some(end) = end {
                self.state = TaskState::Ended(end);
                return None;
            }
        }
        Some((stream, decoder))
    }
}

/// Returns once `counter` is 0; whoever brings it there calls `notify.notify_waiters()`.
async fn until_zero(counter: &AtomicUsize, notify: &Notify) {
    loop {
        // Registered before the check, so a notification between the two is not lost.
        let notified = notify.notified();
        if counter.load(Ordering::Acquire) == 0 {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_is_small() {
        let cfg: Config = serde_json::from_str(
            r#"{"mode":"Idle","server":"127.0.0.1:1","host":"h","base_path":"",
            "sub_path":"/e/{topic}","clients":1,"local_clients":0,"client_offset":0,
            "topics":1,"topics_per_client":1,"topic_prefix":"l","ramp_rate":null,"connect_concurrency":1,
            "connect_timeout":{"secs":1,"nanos":0},"source_first":1,"source_addrs":1,
            "duration":{"secs":1,"nanos":0},"rate":1.0,"publisher":null,"payload_bytes":0,
            "tick":{"secs":0,"nanos":1000000},"drain":{"secs":1,"nanos":0},
            "hold":{"secs":1,"nanos":0},"procs":1,"role":"Single","threads":1,
            "read_coalesce":{"secs":0,"nanos":0},"latency_sample":1,"server_pid":null}"#,
        )
        .expect("config");
        let readers = Readers::start(&cfg, new_counters(1), &[Handle::current()]);
        let permit = Arc::new(Semaphore::new(1))
            .acquire_owned()
            .await
            .expect("permit");
        let task = ConnTask {
            shared: Arc::clone(&readers.shared),
            topic: 0,
            local: 0,
            state: TaskState::Failed,
            conn: Conn {
                base: 0,
                last: 0,
                d: Delivery::default(),
                multi: None,
            },
        };
        // its drop counts a task down: count it in
        readers.shared.live.fetch_add(1, Ordering::Relaxed);
        let fut = connection(task, 0, permit);
        let size = std::mem::size_of_val(&fut);
        drop(fut);
        // ~390 bytes: counters 88, parser 104, socket 40, the rest is the task's own
        assert!(size <= 512, "connection future: {size} bytes");
    }
}
