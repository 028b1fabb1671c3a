//! One run, start to finish, in each role: single process, `--procs` parent, child.
//!
//! ```text
//! server sample "before" → publisher connects → connections open (≤ connect timeout)
//!   → server sample "connected" ─ stream: publish for --duration, drain --drain
//!                               └ idle:   hold --hold (the "connected" sample is taken after it)
//!   → server sample "end" → stop the readers → report
//! ```

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::AsyncBufReadExt as _;

use crate::config::{Config, Mode, Role};
use crate::connect::{Counters, Readers, new_counters};
use crate::pool::ReaderPool;
use crate::proc_stats::{self, Sample};
use crate::procs::{Children, FromChild, ToChild};
use crate::publish::PublisherThread;
use crate::report::{self, GenCpu, Inputs, Partial, PublishSummary, Report, ServerSamples};

/// How long stopped readers get to hand in their counters.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a parent tells its children the published counts.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Raises the soft open-file limit to the hard one; returns the limit now in force.
pub fn raise_nofile() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("could not raise the open-file limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// The server (with its descendants: nginx workers) now.
fn server_sample(cfg: &Config) -> Option<Sample> {
    let pid = cfg.server_pid?;
    match proc_stats::sample_tree(pid) {
        Ok((s, _)) => Some(s),
        Err(e) => {
            tracing::warn!("cannot read /proc/{pid}: {e}");
            None
        }
    }
}

fn self_sample(children: bool) -> Sample {
    proc_stats::sample_self(children).unwrap_or(Sample {
        rss_bytes: 0,
        cpu_s: 0.0,
        processes: 0,
    })
}

fn check_files(cfg: &Config, limit: u64) {
    let per_proc = cfg.clients.div_ceil(cfg.procs) as u64;
    if per_proc + 64 > limit {
        tracing::warn!(
            "{per_proc} connections per process but only {limit} open files allowed: \
             use --procs to spread them"
        );
    }
}

/// The control runtime (waits, timers, child I/O); the readers have their own threads.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")
}

/// Runs a single-process or parent run and returns its report.
pub fn run(cfg: &Config) -> anyhow::Result<Report> {
    cfg.validate()?;
    let limit = raise_nofile();
    check_files(cfg, limit);
    match cfg.role {
        Role::Single => run_single(cfg),
        Role::Parent => run_parent(cfg),
        Role::Child => anyhow::bail!("run() is not for children: use run_child()"),
    }
}

fn run_single(cfg: &Config) -> anyhow::Result<Report> {
    let rt = runtime()?;
    let pool = ReaderPool::new(cfg.threads, cfg.read_coalesce)?;
    let before = server_sample(cfg);
    let counters = new_counters(cfg.topics);
    let publisher = match cfg.mode {
        Mode::Stream => Some(PublisherThread::spawn(cfg, counters.clone())?),
        Mode::Idle => None,
    };
    rt.block_on(async {
        let readers = Readers::start(cfg, counters.clone(), pool.handles());
        if !readers.wait_settled(cfg.connect_timeout).await {
            tracing::warn!(
                "connect timeout: {} connections still pending",
                readers.unsettled()
            );
        }
        let measured = measure(cfg, publisher, async |publisher| {
            readers.set_publishing();
            publisher.run().await
        })
        .await?;
        let rss_bytes = self_sample(false).rss_bytes; // with every connection open
        let readers = readers.stop(STOP_TIMEOUT).await;
        let me = self_sample(false);
        Ok(finish(
            cfg, &readers, before, measured, me.cpu_s, 0.0, rss_bytes,
        ))
    })
}

/// What the measured phase gives.
struct Measured {
    /// The server with every connection open.
    connected: Option<Sample>,
    /// The server after the drain (idle: the same as `connected`).
    end: Option<Sample>,
    /// The publisher's summary (stream mode).
    publish: Option<PublishSummary>,
    /// This process's CPU seconds while publishing and draining.
    cpu_publish_s: f64,
}

/// The measured phase, connections open. Stream mode: the server sampled, then
/// `publish` (which starts the readers' publishing phase and runs the publisher), the
/// drain, the server sampled again. Idle mode: the hold, then the server sampled.
async fn measure(
    cfg: &Config,
    publisher: Option<PublisherThread>,
    publish: impl AsyncFnOnce(PublisherThread) -> anyhow::Result<PublishSummary>,
) -> anyhow::Result<Measured> {
    let Some(publisher) = publisher else {
        tokio::time::sleep(cfg.hold).await;
        let connected = server_sample(cfg);
        return Ok(Measured {
            connected,
            end: connected,
            publish: None,
            cpu_publish_s: 0.0,
        });
    };
    let connected = server_sample(cfg);
    let cpu0 = self_sample(false).cpu_s;
    let summary = publish(publisher).await?;
    tokio::time::sleep(cfg.drain).await;
    Ok(Measured {
        connected,
        end: server_sample(cfg),
        publish: Some(summary),
        cpu_publish_s: self_sample(false).cpu_s - cpu0,
    })
}

/// The report, from the readers' results, the server readings and the generator's CPU
/// (`total_s`, and publish-phase CPU of reader processes beyond this one's).
fn finish(
    cfg: &Config,
    readers: &Partial,
    before: Option<Sample>,
    measured: Measured,
    total_s: f64,
    other_publish_s: f64,
    gen_rss_bytes: u64,
) -> Report {
    report::build(&Inputs {
        cfg,
        readers,
        publish: measured.publish.as_ref(),
        server: ServerSamples {
            before,
            connected: measured.connected,
            end: measured.end,
        },
        gen_cpu: GenCpu {
            total_s,
            publish_s: measured.cpu_publish_s + other_publish_s,
        },
        gen_rss_bytes,
    })
}

fn snapshot(counters: &Counters) -> Vec<u64> {
    counters.iter().map(|c| c.load(Ordering::Relaxed)).collect()
}

fn run_parent(cfg: &Config) -> anyhow::Result<Report> {
    let rt = runtime()?;
    let before = server_sample(cfg);
    let counters = new_counters(cfg.topics);
    let publisher = match cfg.mode {
        Mode::Stream => Some(PublisherThread::spawn(cfg, counters.clone())?),
        Mode::Idle => None,
    };
    rt.block_on(async {
        let mut children = Children::spawn(cfg)?;
        let ready_within = cfg.connect_timeout + Duration::from_secs(30);
        children.wait_ready(ready_within).await?;
        let measured = measure(cfg, publisher, async |publisher| {
            children.send(&ToChild::Start).await;
            let run = publisher.run();
            tokio::pin!(run);
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            let summary = loop {
                tokio::select! {
                    r = &mut run => break r?,
                    _ = tick.tick() => {
                        children.send(&ToChild::Progress { published: snapshot(&counters) }).await;
                    }
                }
            };
            children
                .send(&ToChild::Progress {
                    published: snapshot(&counters),
                })
                .await;
            Ok(summary)
        })
        .await?;
        children
            .send(&ToChild::Stop {
                published: snapshot(&counters),
            })
            .await;
        let parts = children.collect(STOP_TIMEOUT).await?;
        let mut merged = Partial::default();
        for p in &parts {
            merged.merge(p);
        }
        // children have been waited for: their CPU is in ours
        let me = self_sample(true);
        let own_rss = self_sample(false).rss_bytes;
        Ok(finish(
            cfg,
            &merged,
            before,
            measured,
            me.cpu_s,
            merged.cpu_publish_s,
            own_rss + merged.rss_bytes,
        ))
    })
}

/// Runs a `--procs` child: reads its orders on stdin, writes JSON lines on stdout.
pub fn run_child(cfg: &Config) -> anyhow::Result<()> {
    raise_nofile();
    let rt = runtime()?;
    let pool = ReaderPool::new(cfg.threads, cfg.read_coalesce)?;
    rt.block_on(async {
        let counters = new_counters(cfg.topics);
        let readers = Readers::start(cfg, counters.clone(), pool.handles());
        let started = Instant::now();
        readers.wait_settled(cfg.connect_timeout).await;
        emit(&FromChild::Ready {
            ok: readers.ok(),
            unsettled: readers.unsettled() as u64,
        });
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut publish_cpu0 = None;
        let store = |published: &[u64]| {
            for (c, v) in counters.iter().zip(published) {
                c.fetch_max(*v, Ordering::Relaxed);
            }
        };
        loop {
            let Ok(Some(line)) = lines.next_line().await else {
                break; // the parent is gone: stop
            };
            match serde_json::from_str::<ToChild>(&line) {
                Ok(ToChild::Start) => {
                    readers.set_publishing();
                    publish_cpu0 = Some(self_sample(false).cpu_s);
                }
                Ok(ToChild::Progress { published }) => store(&published),
                Ok(ToChild::Stop { published }) => {
                    store(&published);
                    break;
                }
                Err(e) => tracing::warn!("bad line from the parent {line:?}: {e}"),
            }
        }
        let at_stop = self_sample(false);
        let mut part = readers.stop(STOP_TIMEOUT).await;
        part.cpu_total_s = self_sample(false).cpu_s;
        part.cpu_publish_s = publish_cpu0.map_or(0.0, |c0| at_stop.cpu_s - c0);
        part.rss_bytes = at_stop.rss_bytes;
        tracing::debug!("child done after {:?}", started.elapsed());
        emit(&FromChild::Report(Box::new(part)));
        Ok(())
    })
}

fn emit(msg: &FromChild) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, msg);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}
