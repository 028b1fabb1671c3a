//! `sse-gateway`: fans NATS messages out to Server-Sent Events clients.
//!
//! ```text
//! sse-gateway --config gateway.toml             run (SIGHUP reloads the file)
//! sse-gateway --upgrade --config gateway.toml   take over from the running process
//! sse-gateway --check-config gateway.toml       validate and exit
//!     [--against http://127.0.0.1:9090]         … and compare with a running gateway
//! sse-gateway ctl topics                         ask the operator API (see operator::ctl)
//! ```
//!
//! Wiring: one Pingora server with four services: the public listener ([`front`] reads
//! each connection's first request, streams go to [`sse`], the rest to Pingora's proxy
//! in [`proxy`]), the admin listener ([`admin`]), a background service running the
//! NATS adapter and housekeeping ([`upstream`]) and one reloading the configuration on
//! SIGHUP ([`reload`]). Shutdown and upgrade are ours ([`shutdown`]).

mod admin;
mod admission;
mod config;
mod edge;
mod front;
mod live;
mod logging;
mod metrics;
mod operator;
mod otlp;
mod preflight;
mod proxy;
mod publish;
mod reload;
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
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use sse_auth::Authorizer;
use sse_bus::{NatsBus, NatsBusConfig, Publisher};
use sse_hub::{Epoch, Hub, HubConfig, Source};

use crate::admission::Admission;
use crate::config::{BusKind, Config};
use crate::edge::Cors;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::publish::Publishing;
use crate::reload::{LiveParts, ReloadOnHangup, Reloader};
use crate::shutdown::UpgradeRequest;
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
    /// With --check-config: compare the file with the configuration in force in the
    /// gateway whose admin listener is at URL, and say which changed keys a reload
    /// (SIGHUP) applies and which need a restart.
    #[arg(long, value_name = "URL", requires = "check_config")]
    against: Option<String>,
    /// The admin token for --against (default: admin.token of the file checked).
    #[arg(long, value_name = "TOKEN", requires = "against")]
    token: Option<String>,
    /// Take over the listening sockets of the gateway running with this configuration
    /// (through server.upgrade_socket); it then drains its streams and exits.
    #[arg(long, requires = "config")]
    upgrade: bool,
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
        return check_config(&path, cli.against.as_deref(), cli.token);
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
    let log = logging::init(config.log_json, &config.log_level);
    match run(config, path, log, cli.upgrade) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sse-gateway: {e:#}");
            ExitCode::from(EXIT_STARTUP)
        }
    }
}

/// `--check-config FILE [--against URL]`: validates the file; with `--against`, lists
/// the keys that differ from the running gateway's, by how they would apply.
fn check_config(path: &std::path::Path, against: Option<&str>, token: Option<String>) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sse-gateway: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    println!("{}: configuration is valid", path.display());
    let Some(base) = against else {
        return ExitCode::SUCCESS;
    };
    let token = token.or_else(|| config.admin.token.as_ref().map(|t| t.expose().to_owned()));
    let running = operator::ctl::call(
        base,
        token.as_deref(),
        reqwest::Method::GET,
        "api/config",
        &[],
    )
    .and_then(|(status, body)| {
        anyhow::ensure!(
            status.is_success(),
            "{status}: {}",
            operator::ctl::message_of(&body)
        );
        #[derive(serde::Deserialize)]
        struct Running {
            keys: config::Keys,
        }
        let running: Running =
            serde_json::from_str(&body).context("the answer is not the configuration")?;
        Ok(running.keys)
    });
    let running = match running {
        Ok(keys) => keys,
        Err(e) => {
            eprintln!("sse-gateway: cannot read the running configuration: {e:#}");
            return ExitCode::from(EXIT_STARTUP);
        }
    };
    let changes = running.changes(&config.keys);
    let (live, restart): (Vec<_>, Vec<_>) = changes
        .into_iter()
        .partition(|(_, change)| *change == config::Change::Live);
    let names = |keys: Vec<(String, config::Change)>| {
        keys.into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if live.is_empty() && restart.is_empty() {
        println!("the same as the configuration running at {base}");
    }
    if !live.is_empty() {
        println!("a reload (SIGHUP) applies: {}", names(live));
    }
    if !restart.is_empty() {
        println!(
            "need a restart or an upgrade (a reload keeps the old value): {}",
            names(restart)
        );
    }
    ExitCode::SUCCESS
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

fn run(config: Config, path: PathBuf, log: logging::LogLevel, upgrade: bool) -> anyhow::Result<()> {
    preflight::raise_open_file_limit();
    // An upgrade takes the running process's listeners: their ports are taken.
    if !upgrade {
        preflight::check_bindable("server.listen", config.server.listen)?;
        preflight::check_bindable("admin.listen", config.admin.listen)?;
    }
    reload::ignore_hangup_until_watched().context("installing the SIGHUP handler")?;

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
    let auth = match &config.auth {
        Some(auth) => Some(Live::new(
            Authorizer::new(auth.clone()).context("building the authorizer")?,
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
        cors: Live::new(Cors::new(
            &config.cors.allowed_origins,
            config.cors.allow_credentials,
        )),
        admission: admission.clone(),
        streams: streams.clone(),
        publishing: Publishing::new(
            publisher,
            hub.clone(),
            config.limits.max_publish_bytes,
            auth.clone(),
            retry_after,
            metrics.clone(),
            tracer,
        ),
        metrics: metrics.clone(),
    });
    let server_conf = &config.server;

    let conf = ServerConf {
        threads: server_conf.threads,
        // SIGTERM drains before Pingora hears of it and then stops at once; this grace
        // period is the one after an upgrade's hand-over, in which this process drains
        // (see shutdown.rs) and exits as soon as it is done.
        grace_period_seconds: Some(server_conf.grace_period.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: server_conf.upgrade_socket.clone(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    if upgrade {
        ask_for_the_listeners(&config);
    }
    server.bootstrap();
    if upgrade {
        tracing::info!(socket = %server_conf.upgrade_socket, "took the listening sockets over");
    }
    shutdown::drain_after_handover(
        server.watch_execution_phase(),
        streams.clone(),
        config.server.grace_period,
    );

    let routes = Live::new(routes::build(&config.routes)?);
    let mut proxy = HttpProxy::new(
        proxy::EdgeProxy::new(gateway.clone(), routes.clone()),
        server.configuration.clone(),
    );
    proxy.handle_init_modules();
    proxy.server_options = Some(http_server_options(&config.server));
    proxy.h2_options = Some(h2_options());
    let front = front::PublicApp::new(gateway.clone(), Arc::new(proxy), routes.clone());
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
    let upgrade_request = UpgradeRequest::default();
    let reloader = Reloader::new(
        path,
        &config,
        LiveParts {
            gateway: gateway.clone(),
            auth,
            routes,
            log,
        },
        metrics.clone(),
    );
    let mut admin = Service::new(
        "admin".to_owned(),
        admin::AdminApp::new(
            metrics,
            streams.clone(),
            admission.clone(),
            config.admin.token.clone(),
            reloader.clone(),
            upgrade_request.clone(),
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

    let mut reloading = background_service("reload", ReloadOnHangup::new(reloader));
    reloading.threads = Some(1);

    server.add_service(public);
    server.add_service(admin);
    server.add_service(upstream);
    server.add_service(reloading);
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
            upgrade_request,
            PathBuf::from(&config.server.upgrade_socket),
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

/// `--upgrade`: asks the running gateway (at this configuration's admin listener) to send
/// its listening sockets, from a thread, while [`Server::bootstrap`] waits for them on
/// `server.upgrade_socket` (both sides retry for a few seconds, so the order does not
/// matter). A refusal is logged; the bootstrap then fails and the process exits.
fn ask_for_the_listeners(config: &Config) {
    let base = operator::ctl::admin_url(config);
    let token = config.admin.token.as_ref().map(|t| t.expose().to_owned());
    let asked = std::thread::Builder::new()
        .name("upgrade-ask".into())
        .spawn(move || {
            match operator::ctl::call(&base, token.as_deref(), reqwest::Method::POST, "api/upgrade", &[]) {
                Ok((status, _)) if status.is_success() => {
                    tracing::info!(admin = %base, "the running gateway is handing its listeners over");
                }
                Ok((status, body)) => tracing::error!(
                    admin = %base,
                    %status,
                    message = %operator::ctl::message_of(&body),
                    "the running gateway refused the upgrade"
                ),
                Err(e) => tracing::error!(
                    admin = %base,
                    error = %format!("{e:#}"),
                    "cannot ask the running gateway for its listeners"
                ),
            }
        });
    if let Err(e) = asked {
        tracing::error!(error = %e, "cannot ask the running gateway for its listeners");
    }
}
