//! `sse-gateway ctl`: the operator API from a shell.
//!
//! ```text
//! sse-gateway ctl [--config gateway.toml] [--json] topics [--limit N]
//! sse-gateway ctl topic orders.42
//! sse-gateway ctl streams [--sub u1 | --topic t | --ip a] [--limit N] [--after ID]
//! sse-gateway ctl kick (--id ID | --sub u1 | --topic t | --ip a) [--block 10m]
//! ```
//!
//! The admin address and token come from the configuration file (`admin.listen`,
//! `admin.token`); `--admin` and `--token` override them. Output is a table, or with
//! `--json` the API's JSON as it came. A refusal prints the API's message on stderr and
//! exits non-zero.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::config::Config;

/// `sse-gateway ctl`
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The gateway's configuration file: where its admin listener is, and its token.
    #[arg(long, value_name = "FILE", default_value = "gateway.toml")]
    config: PathBuf,
    /// The admin listener's base URL, instead of `admin.listen` from the file.
    #[arg(long, value_name = "URL")]
    admin: Option<String>,
    /// The admin token, instead of `admin.token` from the file.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

/// What to ask.
#[derive(Debug, clap::Subcommand)]
enum CtlCommand {
    /// Active topics, most subscribers first.
    Topics {
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// One active topic.
    Topic {
        /// Its name.
        name: String,
    },
    /// Open streams, by id.
    Streams {
        #[command(flatten)]
        filter: Selector,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
        /// Those after this stream id (the last of the previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// Close streams (they get `gateway.close` `revoked`), optionally refusing new ones.
    Kick {
        /// One stream.
        #[arg(long, conflicts_with_all = ["sub", "topic", "ip"])]
        id: Option<String>,
        #[command(flatten)]
        filter: Selector,
        /// Refuse new streams of that sub or ip for this long (e.g. `10m`).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        block: Option<Duration>,
    },
}

/// Which streams.
#[derive(Debug, clap::Args)]
#[group(multiple = false)]
struct Selector {
    /// Of this token subject.
    #[arg(long)]
    sub: Option<String>,
    /// Holding this topic.
    #[arg(long)]
    topic: Option<String>,
    /// From this client address.
    #[arg(long)]
    ip: Option<IpAddr>,
}

impl Selector {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(sub) = &self.sub {
            out.push(("sub", sub.clone()));
        }
        if let Some(topic) = &self.topic {
            out.push(("topic", topic.clone()));
        }
        if let Some(ip) = self.ip {
            out.push(("ip", ip.to_string()));
        }
        out
    }
}

/// Runs one ctl command; the exit code says whether the API accepted it.
pub fn main(args: CtlArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sse-gateway ctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: CtlArgs) -> anyhow::Result<()> {
    let (base, token) = target(&args)?;
    let (method, path, query) = request(&args.command);
    let (status, body) = call(&base, token.as_deref(), method, &path, &query)?;
    if !status.is_success() {
        bail!("{status}: {}", message_of(&body));
    }
    if args.json {
        println!("{}", body.trim_end());
        return Ok(());
    }
    let value: Value = serde_json::from_str(&body).context("the answer is not JSON")?;
    print!("{}", table(&args.command, &value));
    Ok(())
}

/// One call to the admin listener at `base`: the status and the body.
pub fn call(
    base: &str,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
    query: &[(&str, String)],
) -> anyhow::Result<(reqwest::StatusCode, String)> {
    let mut url = reqwest::Url::parse(base)
        .with_context(|| format!("{base:?} is not a URL"))?
        .join(path)
        .context("building the URL")?;
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    runtime
        .block_on(async {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?;
            let mut request = client.request(method, url.clone());
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await?;
            let status = response.status();
            Ok::<_, reqwest::Error>((status, response.text().await?))
        })
        .with_context(|| format!("calling {url}"))
}

/// The API's message in an error body (or the body as it is).
pub fn message_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_owned())
}

/// The admin listener of `config` as a base URL.
pub fn admin_url(config: &Config) -> String {
    format!("http://{}/", reachable(config.admin.listen))
}

/// The admin base URL and token: the flags, else the configuration file.
fn target(args: &CtlArgs) -> anyhow::Result<(String, Option<String>)> {
    if let (Some(admin), Some(token)) = (&args.admin, &args.token) {
        return Ok((admin.clone(), Some(token.clone())));
    }
    let config =
        Config::load(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let base = match &args.admin {
        Some(admin) => admin.clone(),
        None => admin_url(&config),
    };
    let token = args
        .token
        .clone()
        .or_else(|| config.admin.token.map(|t| t.expose().to_owned()));
    Ok((base, token))
}

/// Where to reach a listener bound to `addr` (a wildcard address is reached on loopback).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

fn request(command: &CtlCommand) -> (reqwest::Method, String, Vec<(&'static str, String)>) {
    let limit = |limit: &Option<usize>| limit.map(|n| ("limit", n.to_string()));
    match command {
        CtlCommand::Topics { limit: n } => (
            reqwest::Method::GET,
            "api/topics".into(),
            limit(n).into_iter().collect(),
        ),
        CtlCommand::Topic { name } => (
            reqwest::Method::GET,
            format!("api/topics/{}", encode(name)),
            Vec::new(),
        ),
        CtlCommand::Streams {
            filter,
            limit: n,
            after,
        } => {
            let mut query = filter.pairs();
            query.extend(limit(n));
            query.extend(after.clone().map(|a| ("after", a)));
            (reqwest::Method::GET, "api/streams".into(), query)
        }
        CtlCommand::Kick { id, filter, block } => {
            let block = block.map(|d| ("block", humantime::format_duration(d).to_string()));
            match id {
                Some(id) => (
                    reqwest::Method::DELETE,
                    format!("api/streams/{}", encode(id)),
                    block.into_iter().collect(),
                ),
                None => {
                    let mut query = filter.pairs();
                    query.extend(block);
                    (reqwest::Method::DELETE, "api/streams".into(), query)
                }
            }
        }
    }
}

fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The answer as a table (or one line for a kick).
fn table(command: &CtlCommand, value: &Value) -> String {
    const TOPIC_COLUMNS: [&str; 5] = [
        "topic",
        "subscribers",
        "ring_frames",
        "ring_bytes",
        "last_id",
    ];
    const STREAM_COLUMNS: [&str; 7] = [
        "id",
        "ip",
        "sub",
        "topics",
        "opened_at",
        "events_sent",
        "pending_bytes",
    ];
    match command {
        CtlCommand::Topics { .. } => render(&TOPIC_COLUMNS, value["topics"].as_array()),
        CtlCommand::Topic { .. } => render(&TOPIC_COLUMNS, Some(&vec![value.clone()])),
        CtlCommand::Streams { .. } => render(&STREAM_COLUMNS, value["streams"].as_array()),
        CtlCommand::Kick { .. } => format!("closed {}\n", value["closed"]),
    }
}

fn render(columns: &[&str], rows: Option<&Vec<Value>>) -> String {
    let cell = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = rows
        .map(|rows| {
            rows.iter()
                .map(|row| columns.iter().map(|c| cell(&row[*c])).collect())
                .collect()
        })
        .unwrap_or_default();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].len())
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(columns.iter().map(|c| c.to_uppercase()).collect());
    for row in rows {
        line(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns_and_show_missing_values_as_dashes() {
        let value = json!({"streams": [
            {"id": "ab", "ip": "127.0.0.1", "sub": null, "topics": ["a", "b"], "opened_at": "t", "events_sent": 3, "pending_bytes": 0},
        ]});
        let command = CtlCommand::Streams {
            filter: Selector {
                sub: None,
                topic: None,
                ip: None,
            },
            limit: None,
            after: None,
        };
        let text = table(&command, &value);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID  IP         SUB  TOPICS"), "{text}");
        assert!(lines[1].starts_with("ab  127.0.0.1  -    a,b"), "{text}");
    }

    #[test]
    fn wildcard_listeners_are_reached_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:9090".parse().unwrap()).to_string(),
            "127.0.0.1:9090"
        );
        assert_eq!(
            reachable("[::]:9090".parse().unwrap()).to_string(),
            "[::1]:9090"
        );
        assert_eq!(
            reachable("10.1.2.3:9090".parse().unwrap()).to_string(),
            "10.1.2.3:9090"
        );
    }
}
