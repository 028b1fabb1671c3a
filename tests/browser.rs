//! The demo page (`GET /demo`) in a real headless Chromium, driven over WebDriver by a
//! `chromedriver` this test starts: the browser's own `EventSource` subscribes to a
//! JetStream topic, the gateway is SIGKILLed and restarted, and the browser's automatic
//! reconnect (with `Last-Event-ID`) gets exactly what it missed — nothing lost, nothing
//! twice, no `gateway.reset`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian: `apt-get install -y
//! chromium chromium-driver`; `.ci/run` installs them), or `$CHROMIUM_BIN` and
//! `$CHROMEDRIVER_BIN`.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use sse_testkit::{free_port, http};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::support::*;

/// Bound for every wait of this test.
const DEADLINE: Duration = Duration::from_secs(30);
const TOPIC: &str = "browser.t";
const SUBJECT: &str = "sse.browser.t";

/// Chromium's flags: headless, as root, on a machine without network or GPU.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
];

const INSTALL_HINT: &str = "the browser test needs Chromium and its WebDriver: \
     `apt-get install -y chromium chromium-driver` (Debian; `.ci/run` does it), \
     or point $CHROMIUM_BIN and $CHROMEDRIVER_BIN at them";

/// `$env_var`, else `default`; panics with the install hint when it does not exist.
fn binary(env_var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env_var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.is_file(),
        "{} not found: {INSTALL_HINT}",
        path.display()
    );
    path
}

/// A `chromedriver` child process on a free loopback port, in its own process group
/// with the browsers it starts; dropping it kills that group and deletes its directory.
struct ChromeDriver {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl ChromeDriver {
    /// Starts chromedriver and waits until its `/status` answers; tries another port when
    /// the one picked was taken meanwhile.
    async fn start() -> anyhow::Result<ChromeDriver> {
        let bin = binary("CHROMEDRIVER_BIN", "/usr/bin/chromedriver");
        let mut last_error = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("sse-browser-test-")
                .tempdir()?;
            let port = free_port();
            let log = File::create(dir.path().join("chromedriver.log"))?;
            let child = {
                use std::os::unix::process::CommandExt as _;
                Command::new(&bin)
                    .arg(format!("--port={port}"))
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .process_group(0)
                    .spawn()
                    .with_context(|| format!("start {}", bin.display()))?
            };
            let mut driver = ChromeDriver { child, port, dir };
            match driver.wait_ready().await {
                Ok(()) => return Ok(driver),
                Err(e) => last_error = Some(e.context(driver.log())),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("chromedriver exited: {status}");
            }
            if let Ok(r) = http::get(addr, "/status", &[]).await
                && r.status == 200
            {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "chromedriver not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new browser session: headless Chromium with a fresh profile.
    async fn browser(&self) -> anyhow::Result<Client> {
        let chromium = binary("CHROMIUM_BIN", "/usr/bin/chromium");
        let profile = self.dir.path().join("profile");
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = serde_json::json!({
            "goog:chromeOptions": { "binary": chromium, "args": args },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        let url = format!("http://127.0.0.1:{}", self.port);
        tokio::time::timeout(
            DEADLINE,
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&url),
        )
        .await
        .context("starting Chromium timed out")?
        .with_context(|| format!("start Chromium through chromedriver; log:\n{}", self.log()))
    }

    fn log(&self) -> String {
        let path = self.dir.path().join("chromedriver.log");
        tail(&std::fs::read_to_string(&path).unwrap_or_default())
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The group holds chromedriver and the Chromium processes it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last few thousand bytes of a log.
fn tail(log: &str) -> String {
    let mut start = log.len().saturating_sub(4000);
    while !log.is_char_boundary(start) {
        start += 1;
    }
    log[start..].to_owned()
}

/// What the page exposes as `window.sseDemo`.
#[derive(Debug, Deserialize)]
struct Page {
    opens: u64,
    errors: u64,
    state: String,
    url: String,
    resets: Vec<serde_json::Value>,
    received: Vec<Received>,
}

#[derive(Debug, Deserialize)]
struct Received {
    id: String,
    event: String,
    data: String,
}

impl Page {
    fn data(&self) -> Vec<&str> {
        self.received.iter().map(|e| e.data.as_str()).collect()
    }
}

async fn page(browser: &Client) -> anyhow::Result<Page> {
    let state = browser
        .execute("return window.sseDemo ?? null;", Vec::new())
        .await?;
    anyhow::ensure!(!state.is_null(), "window.sseDemo is not there yet");
    Ok(serde_json::from_value(state)?)
}

/// Polls the page until `done` holds; fails after [`DEADLINE`] with the page's state and
/// the gateway's log.
async fn wait_page(
    browser: &Client,
    gw: &Gateway,
    what: &str,
    done: impl Fn(&Page) -> bool,
) -> Page {
    // The last state read, for the failure message (the last attempt may be cut short).
    let last = std::sync::Mutex::new(String::from("<never read>"));
    eventually(DEADLINE, what, || async {
        let page = page(browser).await?;
        *last.lock().unwrap() = format!("{page:?}");
        anyhow::ensure!(done(&page), "not yet");
        Ok(page)
    })
    .await
    .with_context(|| {
        let page = last.lock().unwrap();
        format!("page: {page}\ngateway log:\n{}", tail(&gw.log()))
    })
    .unwrap()
}

/// Publishes `i` through JetStream, stored once (see `support::publish_stored`).
async fn publish_i(js: &jetstream::Context, i: u32) {
    publish_stored(
        js,
        SUBJECT,
        &format!("browser-{i}"),
        &i.to_string(),
        DEADLINE,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_reconnects_after_gateway_restart_and_misses_nothing() {
    let nats = NatsServer::start().unwrap();
    let mut gw = ready(&nats, |b| {
        b.set("jetstream", "enabled", "true")
            .set("sse", "retry", "\"300ms\"")
    })
    .await;
    let js = jetstream::new(nats.client().await.unwrap());
    let driver = ChromeDriver::start().await.unwrap();
    let browser = driver.browser().await.unwrap();

    let url = format!("http://{}/demo?topics={TOPIC}&autostart=1", gw.addr());
    browser.goto(&url).await.unwrap();
    wait_page(&browser, &gw, "the page's stream to open", |p| p.opens >= 1).await;

    for i in 1..=10 {
        publish_i(&js, i).await;
    }
    wait_page(&browser, &gw, "events 1..=10", |p| p.received.len() >= 10).await;

    // Down: the browser's reconnects are refused while 11..=15 are stored in the stream.
    gw.kill();
    for i in 11..=15 {
        publish_i(&js, i).await;
    }
    gw.restart().await.unwrap();
    for i in 16..=20 {
        publish_i(&js, i).await;
    }
    let page = wait_page(&browser, &gw, "events 1..=20", |p| p.received.len() >= 20).await;

    let want: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    assert_eq!(page.data(), want, "exactly 1..=20 in order: {page:?}");
    assert!(page.resets.is_empty(), "no gateway.reset: {page:?}");
    assert!(
        page.received
            .iter()
            .all(|e| e.event == "message" && !e.id.is_empty()),
        "{page:?}"
    );
    assert!(page.opens >= 2, "the browser reconnected: {page:?}");
    assert!(page.errors >= 1, "the page saw the gateway go: {page:?}");
    assert_eq!(page.state, "open", "{page:?}");
    // The same EventSource throughout: the browser resumed with its Last-Event-ID
    // header, not the page with a new stream and `?last_event_id=`.
    assert_eq!(page.url, format!("/events?topic={TOPIC}"), "{page:?}");
    // 11..=15 came from the new process's replay of the stream, asked for by the
    // browser's Last-Event-ID.
    let replayed = metric(&gw, "sse_replayed_events_total", &[]).await;
    assert!(replayed >= 5.0, "replayed {replayed}");

    browser.close().await.unwrap();
}

/// What the page knows of its tickets and the gateway's closes.
#[derive(Debug, Deserialize)]
struct TicketState {
    tickets: u64,
    closes: Vec<Received>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_streams_through_tickets_and_renews_at_token_expiry_without_loss() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| {
        b.set("jetstream", "enabled", "true")
            .set("sse", "retry", "\"300ms\"")
            .set("auth", "enabled", "true")
            .set("auth", "hs256_secret", &format!("\"{AUTH_SECRET}\""))
            .set(
                "auth",
                "ticket_secret",
                "\"a-ticket-secret-for-the-browser-test\"",
            )
    })
    .await;
    let js = jetstream::new(nats.client().await.unwrap());
    let driver = ChromeDriver::start().await.unwrap();
    let browser = driver.browser().await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let short = hs256(serde_json::json!({"subscribe": [TOPIC], "exp": now + 3}));
    let long = hs256(serde_json::json!({"subscribe": [TOPIC], "exp": now + 600}));

    let url = format!("http://{}/demo?topics={TOPIC}", gw.addr());
    browser.goto(&url).await.unwrap();
    wait_page(&browser, &gw, "the page", |_| true).await;
    let set_token = "document.getElementById('token').value = arguments[0];";
    browser
        .execute(set_token, vec![serde_json::json!(short)])
        .await
        .unwrap();
    browser
        .execute("document.getElementById('connect').click();", Vec::new())
        .await
        .unwrap();
    let page = wait_page(&browser, &gw, "the stream to open", |p| p.opens >= 1).await;
    assert!(page.url.contains("ticket=…"), "a ticket, elided: {page:?}");
    assert!(!page.url.contains("access_token"), "{page:?}");
    for i in 1..=5 {
        publish_i(&js, i).await;
    }
    wait_page(&browser, &gw, "events 1..=5", |p| p.received.len() >= 5).await;
    // The user logs in again before the first token runs out: the page renews with it.
    browser
        .execute(set_token, vec![serde_json::json!(long)])
        .await
        .unwrap();
    for i in 6..=40 {
        publish_i(&js, i).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = wait_page(&browser, &gw, "events 1..=40", |p| {
        p.data().iter().filter(|d| !d.starts_with('{')).count() >= 40
    })
    .await;
    let data: Vec<&str> = page
        .received
        .iter()
        .filter(|e| e.event == "message")
        .map(|e| e.data.as_str())
        .collect();
    let want: Vec<String> = (1..=40).map(|i| i.to_string()).collect();
    assert_eq!(data, want, "exactly 1..=40 in order: {page:?}");
    assert!(page.resets.is_empty(), "{page:?}");
    let tickets: TicketState = serde_json::from_value(
        browser
            .execute("return window.sseDemo;", Vec::new())
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(tickets.tickets >= 2, "a second ticket: {tickets:?}");
    assert_eq!(tickets.closes.len(), 1, "{tickets:?}");
    assert_eq!(tickets.closes[0].data, r#"{"reason":"token_expired"}"#);
    assert_eq!(page.state, "open", "{page:?}");
    let log = gw.log();
    assert!(
        !log.contains(&short) && !log.contains(&long),
        "tokens stay out of logs"
    );
    browser.close().await.unwrap();
}
