//! `sse-loadgen run [options]`: load an SSE server on this machine and report.
//!
//! The human report goes to stderr, ONE JSON line to stdout. Exit status: 0 when the run
//! completed (whatever it measured, loss included), 2 for usage and setup errors.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use sse_loadgen::config::{self, Config, Mode, Publisher, Role};

/// Exit status for usage and setup errors.
const EXIT_SETUP: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "sse-loadgen",
    version,
    about = "Load generator for SSE gateways: many streams, a paced publisher, a report."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Open the connections, publish (or hold them idle), report.
    Run(Box<RunArgs>),
    /// Internal: a reader process of a `--procs` run.
    #[command(hide = true)]
    Child {
        /// The child's configuration, as JSON.
        #[arg(long)]
        config_json: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    /// Publish and measure delivery.
    Stream,
    /// Hold the connections, publish nothing, measure memory.
    Idle,
}

fn duration(s: &str) -> Result<Duration, String> {
    config::parse_duration(s)
}

/// Options of `run`.
#[derive(Debug, Parser)]
struct RunArgs {
    /// Server base URL (loopback only): http://127.0.0.x:PORT[/prefix].
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Subscriber path template; `{topic}` is replaced (Nchan: '/sub/{topic}'), and
    /// `{client}` by the connection's index (topics of its own per connection, e.g.
    /// '/events?topic=user.{client}.0&topic=user.{client}.1').
    #[arg(long, value_name = "TEMPLATE", default_value = "/events/{topic}")]
    sub_path: String,
    /// SSE connections to open.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    clients: usize,
    /// Topics; connection i subscribes to topic i mod K.
    #[arg(long, value_name = "K", default_value_t = 10)]
    topics: usize,
    /// Topics per connection: connection c subscribes to topics c·N … c·N+N−1 (mod
    /// --topics) on one stream (`/events?topic=…&topic=…`, the gateway's form).
    #[arg(long, value_name = "N", default_value_t = 1)]
    topics_per_client: usize,
    /// Topic names are <prefix>.<i>.
    #[arg(long, value_name = "PREFIX", default_value = "load")]
    topic_prefix: String,
    /// Connections opened per second (default: as fast as --connect-concurrency allows).
    #[arg(long, value_name = "CONN_PER_S")]
    ramp_rate: Option<f64>,
    /// Connection attempts in flight at once.
    #[arg(long, value_name = "N", default_value_t = 256)]
    connect_concurrency: usize,
    /// Bound of the connection phase and of each attempt ("30s", "500ms", "2.5").
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = duration)]
    connect_timeout: Duration,
    /// Source addresses 127.0.0.<first> .. 127.0.0.<first+N-1>, round-robin per connection.
    #[arg(long, value_name = "N", default_value_t = 16)]
    source_addrs: u8,
    /// Last octet of the first source address.
    #[arg(long, value_name = "OCTET", default_value_t = 1)]
    source_first: u8,
    /// stream: publish and measure delivery; idle: hold the connections, measure memory.
    #[arg(long, value_enum, default_value_t = ModeArg::Stream)]
    mode: ModeArg,
    /// Publishing time.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Messages per second, all topics together (round-robin over the topics).
    #[arg(long, value_name = "MSG_PER_S", default_value_t = 1000.0)]
    rate: f64,
    /// Publish through NATS core at this URL (the default publisher).
    #[arg(long, value_name = "URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// NATS subjects are <prefix>.<topic>.
    #[arg(long, value_name = "PREFIX", default_value = "sse")]
    subject_prefix: String,
    /// Publish over HTTP instead: POST to this URL template with `{topic}`
    /// (gateway: http://127.0.0.1:8080/publish/{topic}; Nchan: http://127.0.0.1:PORT/pub/{topic}).
    #[arg(long, value_name = "URL_TEMPLATE")]
    publish_http: Option<String>,
    /// Keep-alive connections of the HTTP publisher.
    #[arg(long, value_name = "N", default_value_t = 4)]
    publish_conns: usize,
    /// Requests in flight per HTTP publisher connection: 1 waits for each response before
    /// the next request; 0 pipelines all the requests a tick has for the connection.
    #[arg(long, value_name = "N", default_value_t = 0)]
    publish_inflight: usize,
    /// Pad payloads with 'x' to this many bytes (0: just "<seq>,<send-time-ns>").
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    payload_bytes: usize,
    /// Pacing tick: messages due are published in one burst per tick.
    #[arg(long, value_name = "DUR", default_value = "1ms", value_parser = duration)]
    tick: Duration,
    /// Wait after publishing for events in flight.
    #[arg(long, value_name = "DUR", default_value = "2s", value_parser = duration)]
    drain: Duration,
    /// Idle mode: how long to hold the connections.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = duration)]
    hold: Duration,
    /// Reader processes (children of this one, which publishes).
    #[arg(long, value_name = "P", default_value_t = 1)]
    procs: usize,
    /// Reader threads per process.
    #[arg(long, value_name = "T", default_value_t = 2)]
    threads: usize,
    /// Before a reader thread blocks waiting for data it sleeps this long, so one
    /// wake-up serves more sockets and bytes: less CPU per event, up to this much
    /// added latency (0: off).
    #[arg(long, value_name = "DUR", default_value = "0", value_parser = duration)]
    read_coalesce: Duration,
    /// Record the latency of every k-th event.
    #[arg(long, value_name = "K", default_value_t = 1)]
    latency_sample: u64,
    /// Server process to measure, with its descendants (nginx: the master's pid):
    /// RSS per connection, CPU per event.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
}

impl RunArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let url = config::parse_http_url(&self.url)?;
        // Every generated topic `<prefix>.<i>` is a topic if the prefix is one.
        sse_topic::TopicName::parse(&self.topic_prefix, false).map_err(|e| {
            anyhow::anyhow!("--topic-prefix {:?} is not a topic: {e}", self.topic_prefix)
        })?;
        let publisher = match (self.mode, self.publish_http) {
            (ModeArg::Idle, _) => None,
            (ModeArg::Stream, Some(template)) => {
                let u = config::parse_http_url(&template)?;
                anyhow::ensure!(
                    u.path.contains("{topic}"),
                    "--publish-http must contain {{topic}}"
                );
                Some(Publisher::Http {
                    addr: u.addr,
                    host: u.host,
                    path: u.path,
                    conns: self.publish_conns,
                    inflight: self.publish_inflight,
                })
            }
            (ModeArg::Stream, None) => {
                config::check_nats_url(&self.nats)?;
                Some(Publisher::Nats {
                    url: self.nats,
                    subject_prefix: self.subject_prefix,
                })
            }
        };
        let cfg = Config {
            mode: match self.mode {
                ModeArg::Stream => Mode::Stream,
                ModeArg::Idle => Mode::Idle,
            },
            server: url.addr,
            host: url.host,
            base_path: url.path.trim_end_matches('/').to_string(),
            sub_path: self.sub_path,
            clients: self.clients,
            local_clients: self.clients,
            client_offset: 0,
            topics: self.topics,
            topics_per_client: self.topics_per_client,
            topic_prefix: self.topic_prefix,
            ramp_rate: self.ramp_rate,
            connect_concurrency: self.connect_concurrency,
            connect_timeout: self.connect_timeout,
            source_first: self.source_first,
            source_addrs: self.source_addrs,
            duration: self.duration,
            rate: self.rate,
            publisher,
            payload_bytes: self.payload_bytes,
            tick: self.tick,
            drain: self.drain,
            hold: self.hold,
            procs: self.procs,
            role: if self.procs > 1 {
                Role::Parent
            } else {
                Role::Single
            },
            threads: self.threads,
            read_coalesce: self.read_coalesce,
            latency_sample: self.latency_sample,
            server_pid: self.server_pid,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Cmd::Run(args) => args.into_config().and_then(|cfg| {
            let report = sse_loadgen::run::run(&cfg)?;
            eprint!("{}", report.table());
            println!("{}", report.json_line());
            Ok(())
        }),
        Cmd::Child { config_json } => serde_json::from_str::<Config>(&config_json)
            .map_err(anyhow::Error::from)
            .and_then(|cfg| sse_loadgen::run::run_child(&cfg)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sse-loadgen: {e:#}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}
