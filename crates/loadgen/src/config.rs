//! The validated configuration of one run, apart from command-line parsing (`main.rs`).
//!
//! Every target must be on the loopback network (`127.0.0.0/8`): this tool only ever
//! loads a server on the same machine.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};

/// What the run does once the connections are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Publish for `duration` at `rate`, then drain and report delivery.
    Stream,
    /// Hold the connections open for `hold`, publish nothing, report memory.
    Idle,
}

impl Mode {
    /// Name used on the command line and in the report.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::Idle => "idle",
        }
    }
}

/// Where the messages go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Publisher {
    /// NATS core: subject `<subject_prefix>.<topic>`.
    Nats {
        /// `nats://127.0.0.1:4222`.
        url: String,
        /// Subject prefix (`sse`).
        subject_prefix: String,
    },
    /// HTTP `POST` to a URL template with `{topic}`, over `conns` keep-alive connections.
    Http {
        /// Target of the connections.
        addr: SocketAddrV4,
        /// `Host` header value.
        host: String,
        /// Path template holding `{topic}`.
        path: String,
        /// Connections (each topic always goes through the same one: order is kept).
        conns: usize,
        /// Requests in flight per connection (0: a tick's requests pipelined at once).
        inflight: usize,
    },
}

/// This process's part in a `--procs` run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Everything in one process.
    Single,
    /// Spawns `procs` children that read, publishes itself, merges.
    Parent,
    /// A reader spawned by a parent: JSON lines on stdin/stdout.
    Child,
}

/// A validated run configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Stream or idle.
    pub mode: Mode,
    /// The server (`127.0.0.x:port`).
    pub server: SocketAddrV4,
    /// `Host` header value.
    pub host: String,
    /// Path prefix of `--url` (without trailing `/`), put before `sub_path`.
    pub base_path: String,
    /// Subscriber path template with `{topic}`.
    pub sub_path: String,
    /// Connections of the whole run.
    pub clients: usize,
    /// Connections of this process (`clients` unless a child).
    pub local_clients: usize,
    /// Global index of this process's first connection (children).
    pub client_offset: usize,
    /// Topics.
    pub topics: usize,
    /// Topics per connection (one stream with several `topic=`).
    pub topics_per_client: usize,
    /// Topic names are `<topic_prefix>.<i>`.
    pub topic_prefix: String,
    /// Connections opened per second, `None` = as fast as `connect_concurrency` allows.
    pub ramp_rate: Option<f64>,
    /// Connection attempts in flight at once.
    pub connect_concurrency: usize,
    /// Bound of the connection phase (and of each attempt).
    pub connect_timeout: Duration,
    /// Last octet of the first source address.
    pub source_first: u8,
    /// Source addresses used (`127.0.0.<first>` … `127.0.0.<first+n-1>`).
    pub source_addrs: u8,
    /// Publishing time.
    pub duration: Duration,
    /// Messages per second, all topics together.
    pub rate: f64,
    /// Publisher (`None` in children and in idle mode).
    pub publisher: Option<Publisher>,
    /// Payload length (padded with `x`); the `<seq>,<time>` prefix is never cut.
    pub payload_bytes: usize,
    /// Pacing tick.
    pub tick: Duration,
    /// Wait after publishing for events in flight.
    pub drain: Duration,
    /// Idle mode: how long connections are held.
    pub hold: Duration,
    /// Processes (1 = no children).
    pub procs: usize,
    /// This process's role.
    pub role: Role,
    /// Reader threads.
    pub threads: usize,
    /// Sleep before a reader thread blocks for readiness (0: none).
    pub read_coalesce: Duration,
    /// Record every k-th event's latency.
    pub latency_sample: u64,
    /// Server process to measure.
    pub server_pid: Option<u32>,
}

impl Config {
    /// Topic `i`'s name.
    pub fn topic_name(&self, i: usize) -> String {
        format!("{}.{i}", self.topic_prefix)
    }

    /// The request path of topic `i`'s subscribers.
    pub fn sub_path_for(&self, i: usize) -> String {
        format!(
            "{}{}",
            self.base_path,
            self.sub_path.replace("{topic}", &self.topic_name(i))
        )
    }

    /// The topics of global connection `client`, first to last.
    pub fn topics_of(&self, client: usize) -> impl Iterator<Item = usize> + '_ {
        let k = self.topics_per_client;
        (0..k).map(move |j| (client * k + j) % self.topics)
    }

    /// The request path of global connection `client` when it reads several topics.
    pub fn multi_path_for(&self, client: usize) -> String {
        let query: Vec<String> = self
            .topics_of(client)
            .map(|t| format!("topic={}", self.topic_name(t)))
            .collect();
        format!("{}/events?{}", self.base_path, query.join("&"))
    }

    /// Source address of this process's `local`-th connection.
    pub fn source_for(&self, local: usize) -> Ipv4Addr {
        let n = usize::from(self.source_addrs.max(1));
        // at most 254, checked by `validate`
        let octet = usize::from(self.source_first) + local % n;
        Ipv4Addr::new(127, 0, 0, u8::try_from(octet).unwrap_or(1))
    }

    /// Checks the invariants the rest of the crate relies on.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(self.clients > 0, "--clients must be > 0");
        ensure!(self.topics > 0, "--topics must be > 0");
        ensure!(
            (1..=self.topics).contains(&self.topics_per_client),
            "--topics-per-client must be between 1 and --topics"
        );
        ensure!(
            self.connect_concurrency > 0,
            "--connect-concurrency must be > 0"
        );
        ensure!(self.threads > 0, "--threads must be > 0");
        ensure!(self.procs > 0, "--procs must be > 0");
        ensure!(self.latency_sample > 0, "--latency-sample must be > 0");
        ensure!(
            self.rate >= 0.0 && self.rate.is_finite(),
            "--rate must be >= 0"
        );
        ensure!(!self.tick.is_zero(), "--tick must be > 0");
        if let Some(r) = self.ramp_rate {
            ensure!(r > 0.0 && r.is_finite(), "--ramp-rate must be > 0");
        }
        ensure!(self.source_first >= 1, "--source-first must be >= 1");
        ensure!(self.source_addrs >= 1, "--source-addrs must be >= 1");
        ensure!(
            u16::from(self.source_first) + u16::from(self.source_addrs) - 1 <= 254,
            "source addresses must stay within 127.0.0.1..127.0.0.254"
        );
        ensure!(
            self.sub_path.starts_with('/'),
            "--sub-path must start with '/'"
        );
        if let Some(Publisher::Http { conns, .. }) = &self.publisher {
            ensure!(*conns > 0, "--publish-conns must be > 0");
        }
        Ok(())
    }
}

/// An `http://host:port[/path]` URL on the loopback network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Address to connect to.
    pub addr: SocketAddrV4,
    /// `Host` header value (as written in the URL).
    pub host: String,
    /// Path, `""` when the URL has none.
    pub path: String,
}

/// Parses an `http://` URL whose host is `localhost` or a `127.x.y.z` address.
pub fn parse_http_url(url: &str) -> anyhow::Result<HttpUrl> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let addr = parse_loopback(authority, 80).with_context(|| format!("in URL {url}"))?;
    Ok(HttpUrl {
        addr,
        host: authority.to_string(),
        path: path.to_string(),
    })
}

/// Checks that a `nats://host:port` URL targets the loopback network.
pub fn check_nats_url(url: &str) -> anyhow::Result<()> {
    for one in url.split(',') {
        let one = one.trim();
        let rest = one.strip_prefix("nats://").unwrap_or(one);
        // drop credentials
        let rest = rest.rsplit('@').next().unwrap_or(rest);
        let authority = rest.split('/').next().unwrap_or(rest);
        parse_loopback(authority, 4222).with_context(|| format!("in NATS URL {one}"))?;
    }
    Ok(())
}

fn parse_loopback(authority: &str, default_port: u16) -> anyhow::Result<SocketAddrV4> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .with_context(|| format!("bad port {p:?}"))?,
        ),
        None => (authority, default_port),
    };
    let ip = if host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST
    } else {
        host.parse::<Ipv4Addr>()
            .with_context(|| format!("host {host:?} must be an IPv4 address or localhost"))?
    };
    if !ip.is_loopback() {
        bail!("{ip} is not a loopback address: only 127.0.0.0/8 may be targeted");
    }
    Ok(SocketAddrV4::new(ip, port))
}

/// Parses a duration: `"10s"`, `"250ms"`, `"2m"` or a bare number of seconds (`"1.5"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_http_url("http://127.0.0.1:8080").expect("valid");
        assert_eq!(u.addr, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(u.path, "");
        let u = parse_http_url("http://localhost:81/base").expect("valid");
        assert_eq!(u.addr.port(), 81);
        assert_eq!(u.path, "/base");
        assert!(parse_http_url("http://10.0.0.1:80").is_err());
        assert!(parse_http_url("http://example.com").is_err());
        assert!(parse_http_url("https://127.0.0.1").is_err());
        assert!(check_nats_url("nats://127.0.0.1:4222").is_ok());
        assert!(check_nats_url("nats://u:p@localhost:4222, nats://127.0.0.2:4223").is_ok());
        assert!(check_nats_url("nats://192.168.1.1:4222").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }
}
