//! `sse-gateway`: fans NATS messages out to Server-Sent Events clients.
//!
//! ```text
//! sse-gateway --config gateway.toml         run
//! sse-gateway --check-config gateway.toml   validate and exit
//! sse-gateway ctl topics                     ask the operator API (see operator::ctl)
//! ```
//!
//! Wiring: one Pingora server with three services: the public listener ([`front`] reads
//! each connection's first request, streams go to [`sse`], the rest to Pingora's proxy
//! in [`proxy`]), the admin listener ([`admin`]) and a background service running the
//! NATS adapter and housekeeping ([`upstream`]). Shutdown is ours ([`shutdown`]).

mod admin;
mod admission;
mod config;
mod edge;
mod front;
mod metrics;
mod operator;
mod otlp;
mod preflight;
mod proxy;
mod publish;
mod request;
mod routes;
mod shutdown;
mod sse;
mod state;
mod stream_control;
mod tickets;
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use pingora::apps::HttpServerOptions;
use pingora::listeners::ListenerConfig;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::background_service;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use sse_auth::Authorizer;
use sse_bus::{NatsBus, NatsBusConfig, Publisher};
use sse_hub::{Epoch, Hub, HubConfig, Source};

use crate::admission::Admission;
use crate::config::{BusKind, Config};
use crate::edge::Cors;
use crate::metrics::Metrics;
use crate::publish::Publishing;
use crate::sse::Streams;
use crate::state::Gateway;
use crate::tickets::Tickets;

/// Exit status for configuration errors.
const EXIT_CONFIG: u8 = 2;
/// Exit status for start-up failures (port in use, …).
const EXIT_STARTUP: u8 = 1;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "sse-gateway",
    version,
    about = "Fans NATS messages out to Server-Sent Events clients."
)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["config", "check_config"])))]
#[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Run with this configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate this configuration file and exit (0 when valid).
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Commands other than running the gateway.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Calls the operator API of a running gateway (topics, streams, kick).
    Ctl(operator::ctl::CtlArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Ctl(args)) = cli.command {
        return operator::ctl::main(args);
    }
    if let Some(path) = cli.check_config {
        return match Config::load(&path) {
            Ok(_) => {
                println!("{}: configuration is valid", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sse-gateway: invalid configuration: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    let Some(path) = cli.config else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sse-gateway: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing(config.log_json);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sse-gateway: {e:#}");
            ExitCode::from(EXIT_STARTUP)
        }
    }
}

/// Pingora opens listeners on its own threads and panics there when one cannot be bound
/// (the port was free at the preflight check and taken since): the process would go on
/// without it. Exit instead, non-zero, with the reason.
fn exit_if_a_listener_fails() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("Failed to build listeners") {
            eprintln!("sse-gateway: cannot listen: {message}");
            std::process::exit(i32::from(EXIT_STARTUP));
        }
    }));
}

/// Libraries whose debug and trace lines print request heads (`Authorization`, cookies,
/// targets with `?access_token=`): their logs are capped at `info`, whatever `RUST_LOG`
/// says, so no log line holds a secret (protocol §9, "Secrets").
const HEAD_PRINTING_TARGETS: [&str; 4] = ["pingora", "h2", "hyper", "rustls"];

/// Logs to stderr, filtered by `RUST_LOG` (default `info`, Pingora's own at `warn`);
/// one JSON object per line with `log.format = "json"`.
fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn"));
    let no_secrets = tracing_subscriber::filter::filter_fn(|meta| {
        *meta.level() <= tracing::Level::INFO
            || !HEAD_PRINTING_TARGETS
                .iter()
                .any(|t| meta.target().starts_with(t))
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().with_current_span(false).boxed()
    } else {
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed()
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(no_secrets).with_filter(filter))
        .init();
}

/// Pingora's HTTP server options: h2c as configured; `CONNECT` let through to
/// `request_filter` (which refuses it with the JSON body, where Pingora would answer a
/// bare 405); idle HTTP/2 connections closed after `server.keepalive_timeout`.
fn http_server_options(server: &config::ServerSettings) -> HttpServerOptions {
    let mut options = HttpServerOptions::default();
    options.h2c = server.h2c;
    options.allow_connect_method_proxying = true;
    options.h2_idle_timeout = Some(server.keepalive_timeout.max(Duration::from_millis(1)));
    options
}

/// Decoded HTTP/2 header lists are accepted up to this size, so that a head over the
/// front's 32 KiB limit reaches `request_filter` and gets the JSON 431 (the `h2` crate
/// answers a bare 431 beyond it).
const H2_MAX_HEADER_LIST: u32 = 1024 * 1024;

fn h2_options() -> pingora::protocols::http::v2::server::H2Options {
    let mut options = pingora::protocols::http::v2::server::default_h2_options();
    options.max_header_list_size(H2_MAX_HEADER_LIST);
    options
}

fn run(config: Config) -> anyhow::Result<()> {
    preflight::raise_open_file_limit();
    preflight::check_bindable("server.listen", config.server.listen)?;
    preflight::check_bindable("admin.listen", config.admin.listen)?;

    let metrics = Metrics::new().context("registering metrics")?;
    // Traces when `[tracing]` names an endpoint; without one nothing is done per message.
    let traces = config
        .tracing
        .as_ref()
        .map(otlp::Traces::start)
        .transpose()?;
    let tracer = traces.as_ref().map(|t| t.tracer().clone());
    let hub_config = HubConfig {
        replay_window: config.sse.replay_window,
        client_buffer: config.sse.client_buffer,
        replay_bytes: config.sse.replay_bytes,
        client_buffer_bytes: config.sse.client_buffer_bytes,
        max_ring_bytes: config.limits.max_ring_bytes,
        max_topics: config.limits.max_topics,
        topic_linger: config.sse.topic_linger,
        max_subscribers_per_topic: usize::try_from(config.limits.max_subscribers_per_topic)
            .unwrap_or(usize::MAX),
        // A client sharing one stream between tabs routes events by their topic.
        topic_comments: config.sse.stream_control,
    };
    // With JetStream the ids follow the stream (its epoch is set once it is found).
    let epoch = if config.jetstream.is_some() {
        Epoch::new("pending").unwrap_or_else(|_| Epoch::generate())
    } else {
        Epoch::generate()
    };
    // The hub and what feeds it: the bus is prepared first (it gives the hub its source),
    // then attached to the hub's ingest face.
    let (hub, bus, publisher) = match config.bus {
        BusKind::Memory => {
            let (hub, feed) = Hub::new(hub_config, epoch, metrics.hub.clone(), Source::Local);
            (hub, None, Publisher::Memory(feed))
        }
        BusKind::Nats => {
            let (source, bus) = NatsBus::prepare(NatsBusConfig {
                servers: config.nats.servers.clone(),
                subject_prefix: config.nats.subject_prefix.clone(),
                client_name: format!("sse-gateway {}", std::process::id()),
                connected_gauge: metrics.nats_connected.clone(),
                confirmations: metrics.upstream_confirmations.clone(),
                aggregate: config.sse.aggregate.clone(),
                jetstream: config.jetstream.clone(),
                tracer: tracer.clone(),
            });
            let (hub, feed) = Hub::new(hub_config, epoch, metrics.hub.clone(), source);
            let bus = bus.attach(feed);
            let publisher = bus.publisher();
            (hub, Some(bus), publisher)
        }
    };
    if config.jetstream.is_none() {
        tracing::info!(epoch = %hub.epoch(), "event ids of this run carry this epoch");
    }
    // The runtime objects, each built by the module that uses it.
    let ticket_ttl = config
        .auth
        .as_ref()
        .and_then(|a| a.tickets.as_ref())
        .map(|t| t.ttl);
    let auth = match config.auth {
        Some(auth) => Some(Arc::new(
            Authorizer::new(auth).context("building the authorizer")?,
        )),
        None => None,
    };
    let retry_after = sse::retry_after_secs(&config.sse);
    let tickets = match (&auth, ticket_ttl) {
        (Some(auth), Some(ttl)) => Some(Tickets::new(
            auth.clone(),
            bus.as_ref().and_then(|b| b.ticket_ledger(ttl)),
            retry_after,
        )),
        _ => None,
    };
    let streams = Streams::new(
        hub.clone(),
        &config.sse,
        &config.limits,
        config.server.grace_period,
        auth.clone(),
        tickets,
        metrics.clone(),
    );
    let admission = Arc::new(Admission::new(&config.limits, retry_after));
    let gateway = Arc::new(Gateway {
        server: config.server.clone(),
        write_timeout: config.sse.write_timeout,
        cors: Cors::new(&config.cors.allowed_origins, config.cors.allow_credentials),
        admission: admission.clone(),
        streams: streams.clone(),
        publishing: Publishing::new(
            publisher,
            hub.clone(),
            config.limits.max_publish_bytes,
            auth,
            retry_after,
            metrics.clone(),
            tracer,
        ),
        metrics: metrics.clone(),
    });
    let server_conf = &config.server;

    let conf = ServerConf {
        threads: server_conf.threads,
        // Draining is done before Pingora hears of the signal (see shutdown.rs).
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let (routes, health_checks) = routes::build(&config.routes)?;
    let routes = Arc::new(routes);
    let mut proxy = HttpProxy::new(
        proxy::EdgeProxy::new(gateway.clone(), routes.clone()),
        server.configuration.clone(),
    );
    proxy.handle_init_modules();
    proxy.server_options = Some(http_server_options(&config.server));
    proxy.h2_options = Some(h2_options());
    let front = front::PublicApp::new(gateway.clone(), Arc::new(proxy), routes);
    let mut public = Service::new("public".to_owned(), front);
    // No per-connection L4 buffers: the front reads request heads into its own small
    // buffer and streams write whole batches, so Pingora's 64 KiB read buffer per
    // accepted connection would only cost memory (see docs/architecture.md).
    public.add_listener(
        ListenerConfig::tcp(server_conf.listen.to_string())
            .l4_buffer(L4BufferSettings::unbuffered()),
    );
    if let Some(tls) = &config.tls {
        preflight::check_bindable("tls.listen", tls.listen)?;
        let mut settings = TlsSettings::intermediate(&tls.cert_file, &tls.key_file)
            .map_err(|e| anyhow::anyhow!("tls: cannot load the certificate or key: {e}"))?;
        settings.enable_h2();
        public.add_listener(ListenerConfig::tcp(tls.listen.to_string()).tls(settings));
    }
    let mut admin = Service::new(
        "admin".to_owned(),
        admin::AdminApp::new(
            metrics,
            streams.clone(),
            admission.clone(),
            config.admin.token.clone(),
        ),
    );
    admin.add_tcp(&config.admin.listen.to_string());
    admin.threads = Some(1);
    let mut upstream = background_service(
        "upstream",
        upstream::UpstreamService::new(hub, admission, bus),
    );
    // One thread is plenty for the NATS client and housekeeping; the cores are for streams.
    upstream.threads = Some(1);

    server.add_service(public);
    server.add_service(admin);
    server.add_service(upstream);
    for check in health_checks {
        server.add_service(check);
    }
    tracing::info!(
        listen = %server_conf.listen,
        admin = %config.admin.listen,
        "sse-gateway starting"
    );
    exit_if_a_listener_fails();
    server.run(RunArgs {
        shutdown_signal: Box::new(shutdown::DrainOnSignal::new(
            streams.clone(),
            config.server.grace_period,
        )),
    });
    tracing::info!(
        open_streams = streams.open(),
        clients_with_streams = streams.clients(),
        stream_slots = streams.slots(),
        "stopped"
    );
    if let Some(traces) = traces {
        traces.shutdown();
    }
    Ok(())
}
