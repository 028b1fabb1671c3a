//! `--procs P`: reader processes, so one run holds more connections than one process may
//! have open files.
//!
//! The parent spawns P copies of this binary (`sse-loadgen child --config-json …`), each
//! with its share of the clients, its slice of the source addresses and no publisher,
//! then publishes itself. They talk in JSON lines:
//!
//! ```text
//! child  → parent   {"type":"ready","ok":…,"unsettled":…}   every connection answered
//! parent → child    {"type":"start"}                         publishing begins
//! parent → child    {"type":"progress","published":[…]}     every 100 ms, per topic
//! parent → child    {"type":"stop","published":[…]}         final counts: report now
//! child  → parent   {"type":"report", …Partial…}             then the child exits
//! ```
//!
//! A child whose stdin closes (the parent died) stops and exits.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::config::{Config, Role};
use crate::report::Partial;

/// Parent → child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToChild {
    /// Publishing begins: connections opened from now on are late.
    Start,
    /// Messages published per topic so far.
    Progress {
        /// Per topic.
        published: Vec<u64>,
    },
    /// Final per-topic counts: stop reading, report, exit.
    Stop {
        /// Per topic.
        published: Vec<u64>,
    },
}

/// Child → parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromChild {
    /// Every connection was answered (or the connect timeout passed).
    Ready {
        /// Connections answered 200.
        ok: u64,
        /// Connections still unanswered.
        unsettled: u64,
    },
    /// Final results.
    Report(Box<Partial>),
}

/// The configuration of child `index`: its clients, source addresses and role.
pub fn child_config(cfg: &Config, index: usize) -> Config {
    let p = cfg.procs;
    let per = cfg.clients / p;
    let extra = cfg.clients % p;
    let s = usize::from(cfg.source_addrs);
    let (first, count) = if s >= p {
        (index * s / p, (index + 1) * s / p - index * s / p)
    } else {
        (index % s, 1)
    };
    let mut c = cfg.clone();
    c.role = Role::Child;
    c.publisher = None;
    c.server_pid = None;
    c.local_clients = per + usize::from(index < extra);
    c.client_offset = index * per + index.min(extra);
    // both at most 254: validated
    c.source_first = u8::try_from(usize::from(cfg.source_first) + first).unwrap_or(1);
    c.source_addrs = u8::try_from(count).unwrap_or(1);
    c.connect_concurrency = cfg.connect_concurrency.div_ceil(p);
    c.ramp_rate = cfg.ramp_rate.map(|r| r / p as f64);
    c
}

/// One child process.
#[derive(Debug)]
struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

/// The children of a `--procs` run.
#[derive(Debug)]
pub struct Children {
    kids: Vec<Kid>,
}

impl Children {
    /// Spawns the children.
    pub fn spawn(cfg: &Config) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating this executable")?;
        let mut kids = Vec::with_capacity(cfg.procs);
        for i in 0..cfg.procs {
            let json = serde_json::to_string(&child_config(cfg, i))?;
            let mut child = Command::new(&exe)
                .arg("child")
                .arg("--config-json")
                .arg(json)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("spawning child {i} ({})", exe.display()))?;
            let stdout = child.stdout.take().context("child stdout")?;
            kids.push(Kid {
                stdin: child.stdin.take(),
                lines: BufReader::new(stdout).lines(),
                child,
            });
        }
        Ok(Self { kids })
    }

    /// Waits for every child's `ready` line; returns connections answered 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<u64> {
        let mut ok = 0;
        for (i, kid) in self.kids.iter_mut().enumerate() {
            match tokio::time::timeout(timeout, next_message(&mut kid.lines)).await {
                Ok(Ok(FromChild::Ready { ok: n, .. })) => ok += n,
                Ok(Ok(other)) => bail!("child {i}: expected ready, got {other:?}"),
                Ok(Err(e)) => return Err(e.context(format!("child {i}"))),
                Err(_) => bail!("child {i} was not ready within {timeout:?}"),
            }
        }
        Ok(ok)
    }

    /// Sends `msg` to every child (a child that is gone is skipped).
    pub async fn send(&mut self, msg: &ToChild) {
        let mut line = serde_json::to_string(msg).unwrap_or_default();
        line.push('\n');
        for kid in &mut self.kids {
            if let Some(stdin) = kid.stdin.as_mut()
                && stdin.write_all(line.as_bytes()).await.is_err()
            {
                kid.stdin = None;
            }
        }
    }

    /// Reads every child's report (after [`ToChild::Stop`]) and waits for them to exit.
    pub async fn collect(mut self, timeout: Duration) -> anyhow::Result<Vec<Partial>> {
        let mut parts = Vec::with_capacity(self.kids.len());
        for (i, kid) in self.kids.iter_mut().enumerate() {
            match tokio::time::timeout(timeout, next_message(&mut kid.lines)).await {
                Ok(Ok(FromChild::Report(p))) => parts.push(*p),
                Ok(Ok(other)) => bail!("child {i}: expected report, got {other:?}"),
                Ok(Err(e)) => return Err(e.context(format!("child {i}"))),
                Err(_) => bail!("child {i} did not report within {timeout:?}"),
            }
            kid.stdin = None;
        }
        for kid in &mut self.kids {
            let _ = tokio::time::timeout(timeout, kid.child.wait()).await;
        }
        Ok(parts)
    }
}

async fn next_message(lines: &mut Lines<BufReader<ChildStdout>>) -> anyhow::Result<FromChild> {
    loop {
        let line = lines
            .next_line()
            .await?
            .context("the child exited without a message")?;
        if line.trim().is_empty() {
            continue;
        }
        return serde_json::from_str(&line).with_context(|| format!("bad child line {line:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;

    fn cfg(clients: usize, procs: usize, source_addrs: u8) -> Config {
        Config {
            mode: Mode::Stream,
            server: "127.0.0.1:8080".parse().expect("addr"),
            host: "127.0.0.1:8080".into(),
            base_path: String::new(),
            sub_path: "/events/{topic}".into(),
            clients,
            local_clients: clients,
            client_offset: 0,
            topics: 7,
            topics_per_client: 1,
            topic_prefix: "load".into(),
            ramp_rate: Some(1000.0),
            connect_concurrency: 256,
            connect_timeout: Duration::from_secs(10),
            source_first: 1,
            source_addrs,
            duration: Duration::from_secs(1),
            rate: 10.0,
            publisher: None,
            payload_bytes: 0,
            tick: Duration::from_millis(1),
            drain: Duration::from_secs(1),
            hold: Duration::from_secs(1),
            procs,
            role: Role::Parent,
            threads: 2,
            read_coalesce: Duration::ZERO,
            latency_sample: 1,
            server_pid: Some(1),
        }
    }

    #[test]
    fn several_topics_per_client_follow_on_and_wrap() {
        let mut c = cfg(10, 1, 8);
        c.topics_per_client = 3;
        let topics: Vec<usize> = c.topics_of(2).collect();
        assert_eq!(topics, [6, 0, 1], "client 2 of 7 topics, 3 each");
        assert_eq!(
            c.multi_path_for(0),
            "/events?topic=load.0&topic=load.1&topic=load.2"
        );
        // A payload's sequence carries its topic; a reader takes both back.
        let seq = crate::publish::wire_seq(true, 6, 41);
        assert_eq!((seq >> 32, seq & 0xffff_ffff), (6, 41));
        assert_eq!(crate::publish::wire_seq(false, 6, 41), 41);
        c.topics_per_client = 8;
        assert!(
            c.validate().is_err(),
            "more per client than there are topics"
        );
    }

    #[test]
    fn children_share_clients_and_addresses() {
        let c = cfg(10, 3, 8);
        let kids: Vec<Config> = (0..3).map(|i| child_config(&c, i)).collect();
        assert_eq!(
            kids.iter().map(|k| k.local_clients).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        assert_eq!(
            kids.iter().map(|k| k.client_offset).collect::<Vec<_>>(),
            [0, 4, 7]
        );
        // disjoint, covering 127.0.0.1..=8
        assert_eq!(
            kids.iter()
                .map(|k| (k.source_first, k.source_addrs))
                .collect::<Vec<_>>(),
            [(1, 2), (3, 3), (6, 3)]
        );
        assert!(
            kids.iter()
                .all(|k| k.role == Role::Child && k.publisher.is_none() && k.server_pid.is_none())
        );
        let few = cfg(10, 3, 2);
        assert_eq!(child_config(&few, 2).source_first, 1);
        assert_eq!(child_config(&few, 2).source_addrs, 1);
    }

    #[test]
    fn messages_round_trip() {
        let m = ToChild::Stop {
            published: vec![1, 2],
        };
        let s = serde_json::to_string(&m).expect("json");
        assert_eq!(s, r#"{"type":"stop","published":[1,2]}"#);
        assert_eq!(serde_json::from_str::<ToChild>(&s).expect("parse"), m);
        let r = FromChild::Report(Box::new(Partial {
            ok: 3,
            ..Partial::default()
        }));
        let s = serde_json::to_string(&r).expect("json");
        assert!(s.starts_with(r#"{"type":"report","#));
        assert_eq!(serde_json::from_str::<FromChild>(&s).expect("parse"), r);
    }
}
